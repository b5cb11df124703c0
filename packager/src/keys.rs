//! minisign keys: generate a key pair, load a secret key (with its password),
//! and make prehashed (`ED`) minisign signatures.
//!
//! Key files are real minisign files in both directions: `slipway-pack
//! keygen` writes what the stock `minisign` reads, and [`SecretKeyFile`] reads
//! keys written by `minisign -G` (encrypted) or `minisign -G -W` (not).
//!
//! Signing is done here rather than through `minisign::sign`, which can only
//! hash a reader it owns: the packager computes the BLAKE2b-512 prehash of an
//! archive in the same pass that writes it ([`Prehasher`]), then signs the
//! digest with [`SigningKey::sign_prehashed`], producing byte for byte the
//! signature format minisign produces (Ed25519 over the prehash; a global
//! signature over signature ‖ trusted comment). Ed25519 signing is
//! deterministic (RFC 8032), so the same key, data and comment always give
//! the same `.minisig`.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
pub use slipway_formats::signature::Prehasher;
use slipway_formats::{KeyId, PublicKey, MAX_SIGNATURE_BYTES};

use crate::error::{PackError, Result};
use slipway_fs::durable;

/// The environment variable holding the secret key's password.
pub const PASSWORD_ENV: &str = "SLIPWAY_KEY_PASSWORD";

/// The key name `keygen` uses when none is given.
pub const DEFAULT_KEY_NAME: &str = "slipway";

/// The largest secret key file read (a minisign key is under 300 bytes).
const MAX_KEY_FILE_BYTES: u64 = 4096;

/// Byte layout of a decoded minisign secret key: sig_alg(2) kdf_alg(2)
/// chk_alg(2) salt(32) opslimit(8) memlimit(8) keynum(8) sk(64) chk(32).
const SK_LEN: usize = 158;
const SK_KDF: std::ops::Range<usize> = 2..4;
const SK_KEYNUM: std::ops::Range<usize> = 54..62;
const SK_SECRET: std::ops::Range<usize> = 62..126;
const SK_CHK: std::ops::Range<usize> = 126..158;

/// A minisign secret key file, read but not yet decrypted.
pub struct SecretKeyFile {
    path: PathBuf,
    text: String,
    raw: Vec<u8>,
    encrypted: bool,
}

impl SecretKeyFile {
    /// Reads and checks the shape of a minisign secret key file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = match slipway_fs::read_text_capped(path, MAX_KEY_FILE_BYTES) {
            Ok(text) => text,
            Err(slipway_fs::ReadError::TooLarge { .. }) => {
                return Err(PackError::key(
                    path,
                    "file is too large to be a minisign secret key",
                ))
            }
            Err(e) => return Err(e.into()),
        };
        Self::parse(path, text)
    }

    /// Checks the shape of a minisign secret key held in memory; `path` only
    /// names it in messages.
    pub fn parse(path: &Path, text: String) -> Result<Self> {
        let not_a_key = |why: &str| {
            PackError::key(
                path,
                format!("not a minisign secret key ({why}); pass the .key file written by `slipway-pack keygen` or `minisign -G`"),
            )
        };
        let mut lines = text.lines();
        match lines.next() {
            Some(l) if l.starts_with("untrusted comment:") => {}
            _ => return Err(not_a_key("no \"untrusted comment:\" line")),
        }
        let encoded = lines.next().ok_or_else(|| not_a_key("no key line"))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| not_a_key("the key line is not base64"))?;
        if bytes.len() != SK_LEN || &bytes[0..2] != b"Ed" {
            return Err(not_a_key("wrong length or algorithm"));
        }
        let encrypted = match &bytes[SK_KDF] {
            [0, 0] => false,
            b"Sc" => true,
            _ => return Err(not_a_key("unknown key encryption algorithm")),
        };
        Ok(SecretKeyFile {
            path: path.to_path_buf(),
            text,
            raw: bytes,
            encrypted,
        })
    }

    /// Whether the key needs a password.
    pub fn is_encrypted(&self) -> bool {
        self.encrypted
    }

    /// The key file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Decrypts the key (with `password` when it is encrypted) and returns a
    /// key ready to sign. A wrong password is an error that says so.
    pub fn unlock(self, password: Option<&str>) -> Result<SigningKey> {
        let boxed = minisign::SecretKeyBox::from_string(&self.text)
            .map_err(|e| PackError::key(&self.path, e.to_string()))?;
        let secret = if self.encrypted {
            let password = password.ok_or_else(|| {
                PackError::key(
                    &self.path,
                    format!("the key is encrypted; set {PASSWORD_ENV} to its password (or run on a terminal to be asked)"),
                )
            })?;
            minisign::SecretKey::from_box(boxed, Some(password.to_string())).map_err(|e| {
                let message = match e.kind() {
                    minisign::ErrorKind::Verify => {
                        format!("wrong password for this key (check {PASSWORD_ENV})")
                    }
                    _ => format!("cannot decrypt the key: {e}"),
                };
                PackError::key(&self.path, message)
            })?
        } else if self.raw[SK_CHK].iter().all(|&b| b == 0) {
            // The stock `minisign -G -W` writes unencrypted keys with an
            // all-zero checksum, which the minisign crate calls corrupted.
            // The Ed25519 pair check in `from_parts` still catches a
            // damaged secret.
            return SigningKey::from_parts(&self.path, &self.raw[SK_KEYNUM], &self.raw[SK_SECRET]);
        } else {
            minisign::SecretKey::from_unencrypted_box(boxed).map_err(|e| {
                PackError::key(&self.path, format!("corrupted unencrypted key: {e}"))
            })?
        };
        let raw = secret.to_bytes();
        if raw.len() != SK_LEN {
            return Err(PackError::key(&self.path, "unexpected decoded key length"));
        }
        SigningKey::from_parts(&self.path, &raw[SK_KEYNUM], &raw[SK_SECRET])
    }
}

/// A decrypted minisign secret key, ready to sign.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    keynum: [u8; 8],
    public: PublicKey,
    path: PathBuf,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({}, {})", self.key_id(), self.path.display())
    }
}

impl SigningKey {
    /// Reads and decrypts a secret key file in one step. `password` is used
    /// only when the key is encrypted.
    pub fn load(path: &Path, password: Option<&str>) -> Result<Self> {
        SecretKeyFile::read(path)?.unlock(password)
    }

    fn from_parts(path: &Path, keynum: &[u8], secret: &[u8]) -> Result<Self> {
        // minisign's Ed25519 secret key is libsodium's: seed ‖ public key.
        let (seed, pk) = secret.split_at(32);
        let pair = Ed25519KeyPair::from_seed_and_public_key(seed, pk).map_err(|e| {
            PackError::key(
                path,
                format!(
                    "the key's secret and public halves do not match ({e}); the file is corrupted"
                ),
            )
        })?;
        let mut id = [0u8; 8];
        id.copy_from_slice(keynum);
        let mut public_bin = Vec::with_capacity(42);
        public_bin.extend_from_slice(b"Ed");
        public_bin.extend_from_slice(&id);
        public_bin.extend_from_slice(pair.public_key().as_ref());
        let public =
            PublicKey::from_base64(&base64::engine::general_purpose::STANDARD.encode(&public_bin))
                .map_err(|e| PackError::key(path, e.to_string()))?;
        Ok(SigningKey {
            pair,
            keynum: id,
            public,
            path: path.to_path_buf(),
        })
    }

    /// The key id, as minisign prints it.
    pub fn key_id(&self) -> KeyId {
        KeyId(self.keynum)
    }

    /// The matching public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The file the key was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Signs data whose BLAKE2b-512 prehash the caller computed (with
    /// [`Prehasher`]) and returns the text of a `.minisig` file carrying
    /// `trusted_comment`. LF line endings, no trailing whitespace.
    pub fn sign_prehashed(&self, prehash: &[u8; 64], trusted_comment: &str) -> Result<String> {
        if trusted_comment.contains(['\n', '\r']) {
            return Err(PackError::Usage(format!(
                "trusted comment {trusted_comment:?} contains a line break"
            )));
        }
        let signature = self.pair.sign(prehash);
        let mut sig_line = Vec::with_capacity(74);
        sig_line.extend_from_slice(b"ED");
        sig_line.extend_from_slice(&self.keynum);
        sig_line.extend_from_slice(signature.as_ref());
        let mut global_input = Vec::with_capacity(64 + trusted_comment.len());
        global_input.extend_from_slice(signature.as_ref());
        global_input.extend_from_slice(trusted_comment.as_bytes());
        let global = self.pair.sign(&global_input);
        let b64 = &base64::engine::general_purpose::STANDARD;
        let text = format!(
            "untrusted comment: signature from slipway-pack secret key {}\n{}\ntrusted comment: {}\n{}\n",
            self.key_id(),
            b64.encode(&sig_line),
            trusted_comment,
            b64.encode(global.as_ref()),
        );
        if text.len() > MAX_SIGNATURE_BYTES as usize {
            return Err(PackError::Usage(format!(
                "trusted comment is too long: the signature would be {} bytes, readers accept {MAX_SIGNATURE_BYTES}",
                text.len()
            )));
        }
        Ok(text)
    }

    /// Signs bytes held in memory (channel indexes, small files).
    pub fn sign_bytes(&self, data: &[u8], trusted_comment: &str) -> Result<String> {
        let mut pre = Prehasher::new();
        pre.update(data);
        self.sign_prehashed(&pre.finalize(), trusted_comment)
    }
}

/// What `keygen` wrote.
#[derive(Debug)]
pub struct GeneratedKey {
    pub secret_path: PathBuf,
    pub public_path: PathBuf,
    pub public: PublicKey,
}

/// Generates a minisign key pair and writes `DIR/NAME.key` (mode 0600,
/// created exclusively unless `force`) and `DIR/NAME.pub`. The secret key is
/// encrypted with `password`, or written unencrypted when it is `None`.
/// Nothing is left behind on error.
pub fn generate_key(
    out_dir: &Path,
    name: &str,
    password: Option<&str>,
    force: bool,
) -> Result<GeneratedKey> {
    validate_key_name(name)?;
    let secret_path = out_dir.join(format!("{name}.key"));
    let public_path = out_dir.join(format!("{name}.pub"));
    if !force {
        for p in [&secret_path, &public_path] {
            if fs::symlink_metadata(p).is_ok() {
                return Err(PackError::key(
                    p,
                    "already exists; pass --force to replace it (signatures made with the old key will no longer match the new one)",
                ));
            }
        }
    }
    durable::create_dirs(out_dir).map_err(PackError::io("create directory", out_dir))?;
    let (secret_text, public_b64) = match password {
        Some(pw) => {
            if pw.is_empty() {
                return Err(PackError::Usage(format!(
                    "the key password is empty; set {PASSWORD_ENV} to a password or pass --unencrypted"
                )));
            }
            let pair = minisign::KeyPair::generate_encrypted_keypair(Some(pw.to_string()))
                .map_err(|e| PackError::key(&secret_path, format!("cannot generate: {e}")))?;
            let boxed = pair
                .sk
                .to_box(Some("minisign encrypted secret key"))
                .map_err(|e| PackError::key(&secret_path, e.to_string()))?;
            (boxed.into_string(), pair.pk.to_base64())
        }
        None => {
            let pair = minisign::KeyPair::generate_unencrypted_keypair()
                .map_err(|e| PackError::key(&secret_path, format!("cannot generate: {e}")))?;
            let boxed = pair
                .sk
                .to_box(Some("minisign unencrypted secret key"))
                .map_err(|e| PackError::key(&secret_path, e.to_string()))?;
            (boxed.into_string(), pair.pk.to_base64())
        }
    };
    let public = PublicKey::from_base64(&public_b64)
        .map_err(|e| PackError::key(&public_path, e.to_string()))?;
    write_key_file(&secret_path, secret_text.as_bytes(), 0o600, force)?;
    if let Err(e) = write_key_file(&public_path, public.to_pub_file().as_bytes(), 0o644, force) {
        // Best effort: a secret key without its public half is of no use.
        let _ = fs::remove_file(&secret_path);
        return Err(e);
    }
    durable::fsync_dir(out_dir).map_err(PackError::io("fsync directory", out_dir))?;
    Ok(GeneratedKey {
        secret_path,
        public_path,
        public,
    })
}

fn validate_key_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(PackError::Usage(format!(
            "key name {name:?} must be 1-64 characters of A-Z, a-z, 0-9, '.', '_', '-', not starting with '.'"
        )))
    }
}

fn write_key_file(path: &Path, bytes: &[u8], mode: u32, force: bool) -> Result<()> {
    if force {
        // Replace atomically: a temporary file (mode 0600), then rename.
        let dir = durable::parent_dir(path);
        let mut temp =
            durable::temp_file_in(dir).map_err(PackError::io("create a temporary file in", dir))?;
        temp.write_all(bytes)
            .map_err(PackError::io("write", temp.path()))?;
        std::fs::set_permissions(
            temp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(mode),
        )
        .map_err(PackError::io("set permissions of", temp.path()))?;
        temp.as_file()
            .sync_all()
            .map_err(PackError::io("fsync", temp.path()))?;
        temp.persist(path)
            .map_err(|e| PackError::io("write", path)(e.error))?;
        return Ok(());
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(PackError::io("create", path))?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(PackError::io("write", path));
    if written.is_err() {
        let _ = fs::remove_file(path);
    }
    written
}

/// The password for a secret key: `SLIPWAY_KEY_PASSWORD` if set and not
/// empty, else a prompt on the terminal (twice when `confirm`, for a new
/// key), else an error saying what to set.
pub fn password_from_env_or_prompt(what: &str, confirm: bool) -> Result<String> {
    if let Ok(pw) = std::env::var(PASSWORD_ENV) {
        if !pw.is_empty() {
            return Ok(pw);
        }
    }
    if !std::io::stdin().is_terminal() {
        let extra = if confirm {
            ", or pass --unencrypted for a key without a password"
        } else {
            ""
        };
        return Err(PackError::Usage(format!(
            "{what} needs a password and there is no terminal to ask on: set {PASSWORD_ENV}{extra}"
        )));
    }
    let prompt_err = |e: std::io::Error| PackError::Usage(format!("cannot read the password: {e}"));
    let first = rpassword::prompt_password(format!("Password for {what}: ")).map_err(prompt_err)?;
    if confirm {
        let again = rpassword::prompt_password("Password (again): ").map_err(prompt_err)?;
        if again != first {
            return Err(PackError::Usage("the passwords do not match".into()));
        }
        if first.is_empty() {
            return Err(PackError::Usage(
                "empty password; pass --unencrypted for a key without a password".into(),
            ));
        }
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_formats::{SignatureFile, TrustedKeys};

    #[test]
    fn signatures_verify_with_the_formats_crate_and_minisign() {
        let dir = tempfile::tempdir().expect("tempdir");
        let generated = generate_key(dir.path(), "k", None, false).expect("keygen");
        let key = SigningKey::load(&generated.secret_path, None).expect("load");
        assert_eq!(key.key_id(), generated.public.id());
        let text = key
            .sign_bytes(b"hello", "slipway-release\tapp:x")
            .expect("sign");
        assert!(text.lines().all(|l| l == l.trim_end()));
        let sig = SignatureFile::parse(&text).expect("parse");
        let keys = TrustedKeys::new(vec![generated.public.clone()]);
        sig.verify_bytes(&keys, b"hello").expect("verifies");
        assert!(sig.verify_bytes(&keys, b"hellO").is_err());
        assert_eq!(sig.trusted_comment(), "slipway-release\tapp:x");

        // The minisign crate's own verifier agrees.
        let pk = minisign::PublicKey::from_base64(generated.public.to_base64()).expect("pk");
        let sigbox = minisign::SignatureBox::from_string(&text).expect("box");
        minisign::verify(
            &pk,
            &sigbox,
            std::io::Cursor::new(b"hello"),
            true,
            false,
            false,
        )
        .expect("minisign verifies");
        // Deterministic: same key, data and comment give the same file.
        assert_eq!(
            key.sign_bytes(b"hello", "slipway-release\tapp:x")
                .expect("sign"),
            text
        );
    }

    #[test]
    fn encrypted_keys_need_the_right_password() {
        let dir = tempfile::tempdir().expect("tempdir");
        let generated = generate_key(dir.path(), "k", Some("pw"), false).expect("keygen");
        let mode = fs::metadata(&generated.secret_path)
            .expect("meta")
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let file = SecretKeyFile::read(&generated.secret_path).expect("read");
        assert!(file.is_encrypted());
        let err = SigningKey::load(&generated.secret_path, None).expect_err("no password");
        assert!(err.to_string().contains(PASSWORD_ENV), "{err}");
        let err = SigningKey::load(&generated.secret_path, Some("nope")).expect_err("wrong");
        assert!(err.to_string().contains("wrong password"), "{err}");
        let key = SigningKey::load(&generated.secret_path, Some("pw")).expect("right");
        assert_eq!(key.public_key().to_base64(), generated.public.to_base64());
    }

    #[test]
    fn keygen_refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        generate_key(dir.path(), "k", None, false).expect("first");
        let err = generate_key(dir.path(), "k", None, false).expect_err("second");
        assert!(err.to_string().contains("--force"), "{err}");
        let again = generate_key(dir.path(), "k", None, true).expect("forced");
        let key = SigningKey::load(&again.secret_path, None).expect("load");
        assert_eq!(key.key_id(), again.public.id());
        assert!(generate_key(dir.path(), "../evil", None, false).is_err());
    }

    #[test]
    fn garbage_is_not_a_key() {
        let p = Path::new("bogus.key");
        for text in ["", "untrusted comment: x\n!!!\n", "hello\nworld\n"] {
            let err = SecretKeyFile::parse(p, text.to_string())
                .err()
                .expect("refused");
            assert!(err.to_string().contains("bogus.key"), "{err}");
        }
    }
}

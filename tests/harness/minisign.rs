//! Thin wrappers over the stock `minisign` CLI (Debian package `minisign`),
//! the reference our own signing and verifying must agree with.
//!
//! Passwords: when stdin is not a terminal, minisign reads the password as
//! one line from stdin: `-G` reads it twice (password, then confirmation),
//! `-S` once. An empty line is an empty password, not "no password"; a key
//! without a password is made with `-W` and then asks for nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::run::{run, run_with_input, OutputExt};

/// Deadline for one minisign call (key derivation takes about a second).
const TIMEOUT: Duration = Duration::from_secs(60);

/// File names [`generate_keypair`] writes into its directory.
pub const SECRET_KEY_FILE: &str = "minisign.key";
/// See [`SECRET_KEY_FILE`].
pub const PUBLIC_KEY_FILE: &str = "minisign.pub";

fn minisign() -> Command {
    Command::new("minisign")
}

fn password_lines(password: Option<&str>, times: usize) -> Option<Vec<u8>> {
    password.map(|p| format!("{p}\n").repeat(times).into_bytes())
}

/// Generates a key pair as `dir/minisign.key` and `dir/minisign.pub`
/// (`minisign -G`), encrypted with `password`, or unencrypted (`-W`) when
/// `None`. Returns `(secret_key_path, public_key_path)`. Refuses to overwrite
/// existing files.
pub fn generate_keypair(dir: &Path, password: Option<&str>) -> Result<(PathBuf, PathBuf)> {
    let secret = dir.join(SECRET_KEY_FILE);
    let public = dir.join(PUBLIC_KEY_FILE);
    for path in [&secret, &public] {
        if path.exists() {
            bail!("{} already exists; use a fresh directory", path.display());
        }
    }
    let mut cmd = minisign();
    cmd.arg("-G").arg("-s").arg(&secret).arg("-p").arg(&public);
    if password.is_none() {
        cmd.arg("-W");
    }
    run_with_input(cmd, password_lines(password, 2).as_deref(), TIMEOUT)?
        .checked(format!("minisign -G into {}", dir.display()))?;
    Ok((secret, public))
}

/// Signs `file` (prehashed, the default) with `minisign -S`, writing
/// `FILE.minisig` with the given trusted comment. Returns the signature path.
pub fn sign(
    secret: &Path,
    file: &Path,
    password: Option<&str>,
    trusted_comment: &str,
) -> Result<PathBuf> {
    sign_with(secret, file, password, Some(trusted_comment), false)
}

/// Signs `file` with a legacy, non-prehashed signature (`minisign -S -l`),
/// which slipway refuses by name (it cannot be checked in a stream). A `None` comment
/// lets minisign write its default (timestamp and file name).
pub fn sign_legacy(
    secret: &Path,
    file: &Path,
    password: Option<&str>,
    trusted_comment: Option<&str>,
) -> Result<PathBuf> {
    sign_with(secret, file, password, trusted_comment, true)
}

fn sign_with(
    secret: &Path,
    file: &Path,
    password: Option<&str>,
    trusted_comment: Option<&str>,
    legacy: bool,
) -> Result<PathBuf> {
    let signature = signature_path(file);
    let mut cmd = minisign();
    cmd.arg("-S")
        .arg("-s")
        .arg(secret)
        .arg("-m")
        .arg(file)
        .arg("-x")
        .arg(&signature);
    if legacy {
        cmd.arg("-l");
    }
    if let Some(comment) = trusted_comment {
        cmd.arg("-t").arg(comment);
    }
    run_with_input(cmd, password_lines(password, 1).as_deref(), TIMEOUT)?.checked(format!(
        "minisign -S of {} with {}",
        file.display(),
        secret.display()
    ))?;
    Ok(signature)
}

/// `FILE.minisig`, where minisign puts and looks for the signature of FILE.
pub fn signature_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_os_string();
    name.push(".minisig");
    PathBuf::from(name)
}

/// `minisign -Vm FILE -p PUBLIC` against `FILE.minisig`. The output is
/// returned whatever the verdict (check `status`); an error means minisign
/// could not run.
pub fn verify(public: &Path, file: &Path) -> Result<Output> {
    verify_signature(public, file, &signature_path(file))
}

/// Like [`verify`], with the signature read from `signature`.
pub fn verify_signature(public: &Path, file: &Path, signature: &Path) -> Result<Output> {
    let mut cmd = minisign();
    cmd.arg("-V")
        .arg("-m")
        .arg(file)
        .arg("-x")
        .arg(signature)
        .arg("-p")
        .arg(public);
    run(cmd, TIMEOUT)
}

/// Like [`verify`], with the public key given as its base64 text
/// (`minisign -P RW...`), the way the host's configuration carries it.
pub fn verify_with_key_text(public_key: &str, file: &Path) -> Result<Output> {
    let mut cmd = minisign();
    cmd.arg("-V")
        .arg("-m")
        .arg(file)
        .arg("-x")
        .arg(signature_path(file))
        .arg("-P")
        .arg(public_key);
    run(cmd, TIMEOUT)
}

/// The base64 key line (`RW...`) of a minisign public key file, as used in
/// `public_keys = [...]`.
pub fn public_key_text(public: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(public).with_context(|| format!("reading {}", public.display()))?;
    text.lines()
        .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
        .map(|l| l.trim().to_string())
        .with_context(|| format!("{} holds no public key line", public.display()))
}

/// The trusted comment of a signature file (the text after
/// `trusted comment: `).
pub fn trusted_comment(signature: &Path) -> Result<String> {
    let text = std::fs::read_to_string(signature)
        .with_context(|| format!("reading {}", signature.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("trusted comment: "))
        .map(str::to_string)
        .with_context(|| format!("{} has no trusted comment line", signature.display()))
}

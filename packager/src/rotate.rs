//! `slipway-pack rotate-key`: introduce a new release key to every host
//! that trusts the current one (SPEC §6).
//!
//! ```text
//! <repo>/keys/rotation-<NEWKEYID>.json          the statement
//! <repo>/keys/rotation-<NEWKEYID>.json.minisig  signed by the current key
//! <repo>/keys/<NEWKEYID>.pub, <OLDKEYID>.pub    informational
//! ```
//!
//! After a rotation, releases and indexes are signed with the new key. A
//! host that meets an index signed by it fetches the statement named after
//! its id, checks it with a key it already trusts and trusts the new key
//! from then on ([`slipway_formats::rotation`]). `publish`, `yank` and
//! `refresh` with the new key extend an index the old key signed, because
//! this repository's statement says the old key introduced the new one.

use std::path::PathBuf;

use slipway_formats::channel::Timestamp;
use slipway_formats::rotation::{verify_rotation, KeyRotation, MAX_ROTATION_CHAIN};
use slipway_formats::{KeyId, PublicKey, TrustedKeys, MAX_METADATA_BYTES, MAX_SIGNATURE_BYTES};

use crate::error::{PackError, Result};
use crate::keys::SigningKey;
use crate::repo::Repo;
use slipway_fs::durable;
use slipway_fs::{read_capped, read_text_capped};

/// What `rotate-key` wrote.
#[derive(Debug, Clone)]
pub struct RotationWritten {
    pub statement: KeyRotation,
    /// `keys/rotation-<NEWKEYID>.json`.
    pub path: PathBuf,
    /// Its signature.
    pub signature: PathBuf,
}

/// Writes a statement, signed by `key`, that introduces `new_key` for
/// `app` (default: the app of the repository's channel indexes, which must
/// verify with `key` or a key it introduced). `now` defaults to the
/// system clock.
pub fn rotate_key(
    repo: &Repo,
    key: &SigningKey,
    new_key: &PublicKey,
    app: Option<&str>,
    now: Option<Timestamp>,
) -> Result<RotationWritten> {
    if new_key.id() == key.key_id() {
        return Err(PackError::Usage(format!(
            "the new key {} is the signing key itself; generate a new key pair with `slipway-pack keygen`",
            new_key.id()
        )));
    }
    let app = match app {
        Some(a) => a.to_string(),
        None => repository_app(repo, key)?,
    };
    let now = now.unwrap_or(Timestamp(time::OffsetDateTime::now_utc()));
    let statement = KeyRotation::new(&app, new_key, key.key_id(), now);
    // The same checks a host runs, before anything is written.
    let bytes = statement.to_bytes();
    KeyRotation::parse(&bytes).map_err(|e| PackError::Usage(format!("--app {app:?}: {e}")))?;
    let signature = key.sign_bytes(&bytes, &statement.comment().to_string())?;
    let own = TrustedKeys::new(vec![key.public_key().clone()]);
    verify_rotation(&bytes, &signature, &own, new_key.id(), Some(&app)).map_err(|e| {
        PackError::Usage(format!(
            "the statement does not verify as hosts would check it: {e}"
        ))
    })?;
    let dir = repo.keys_dir();
    durable::create_dirs(&dir).map_err(PackError::io("create directory", &dir))?;
    let path = dir.join(KeyRotation::file_name(new_key.id()));
    let sig_path = dir.join(KeyRotation::signature_file_name(new_key.id()));
    durable::write_atomic_mode(&path, &bytes, durable::PUBLISHED_MODE)
        .map_err(PackError::io("write", &path))?;
    durable::write_atomic_mode(&sig_path, signature.as_bytes(), durable::PUBLISHED_MODE)
        .map_err(PackError::io("write", &sig_path))?;
    repo.ensure_public_key(key)?;
    let new_pub = dir.join(format!("{}.pub", new_key.id()));
    if std::fs::symlink_metadata(&new_pub).is_err() {
        durable::write_atomic_mode(
            &new_pub,
            new_key.to_pub_file().as_bytes(),
            durable::PUBLISHED_MODE,
        )
        .map_err(PackError::io("write", &new_pub))?;
    }
    Ok(RotationWritten {
        statement,
        path,
        signature: sig_path,
    })
}

/// The app of the repository's channel indexes.
fn repository_app(repo: &Repo, key: &SigningKey) -> Result<String> {
    let keys = signing_keys(repo, key);
    let mut apps = Vec::new();
    for channel in repo.channels()? {
        if let Some(signed) = repo.read_channel(&channel, &keys)? {
            if !apps.contains(&signed.index.app) {
                apps.push(signed.index.app);
            }
        }
    }
    match apps.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(PackError::Usage(format!(
            "{} has no channel index to take the app name from; pass --app NAME",
            repo.root().display()
        ))),
        _ => Err(PackError::Usage(format!(
            "{} holds channels of several apps ({}); pass --app NAME",
            repo.root().display(),
            apps.join(", ")
        ))),
    }
}

/// The keys whose signatures a command signing with `key` accepts on the
/// repository's current indexes: `key` itself, and every key that
/// introduced it through a valid rotation statement in this repository
/// (transitively), whose public key is in `keys/<KEYID>.pub`.
pub fn signing_keys(repo: &Repo, key: &SigningKey) -> TrustedKeys {
    let mut keys = TrustedKeys::new(vec![key.public_key().clone()]);
    let mut wanted = key.key_id();
    for _ in 0..MAX_ROTATION_CHAIN {
        match introducer_of(repo, wanted) {
            Some(introducer) => {
                wanted = introducer.id();
                if keys.find(wanted).is_some() {
                    break;
                }
                keys.add(introducer);
            }
            None => break,
        }
    }
    keys
}

/// The key that introduced `key` in this repository, if its statement
/// verifies with the public key the repository holds for it.
fn introducer_of(repo: &Repo, key: KeyId) -> Option<PublicKey> {
    let dir = repo.keys_dir();
    let bytes = read_capped(&dir.join(KeyRotation::file_name(key)), MAX_METADATA_BYTES).ok()?;
    let sig = read_text_capped(
        &dir.join(KeyRotation::signature_file_name(key)),
        MAX_SIGNATURE_BYTES,
    )
    .ok()?;
    let statement = KeyRotation::parse(&bytes).ok()?;
    let pub_text = read_text_capped(
        &dir.join(format!("{}.pub", statement.introduced_by)),
        MAX_METADATA_BYTES,
    )
    .ok()?;
    let introducer = PublicKey::parse(&pub_text).ok()?;
    let keys = TrustedKeys::new(vec![introducer.clone()]);
    verify_rotation(&bytes, &sig, &keys, key, None).ok()?;
    Some(introducer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::generate_key;

    fn key(dir: &std::path::Path, name: &str) -> SigningKey {
        let generated = generate_key(dir, name, None, false).expect("keygen");
        SigningKey::load(&generated.secret_path, None).expect("load")
    }

    #[test]
    fn a_statement_links_the_new_key_to_the_one_that_signed_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = key(dir.path(), "old");
        let new = key(dir.path(), "new");
        let repo = Repo::new(dir.path().join("repo"));
        // No channel to take the app from: --app is needed.
        assert!(matches!(
            rotate_key(&repo, &old, new.public_key(), None, None),
            Err(PackError::Usage(_))
        ));
        assert!(rotate_key(&repo, &old, old.public_key(), Some("bot"), None).is_err());
        let written = rotate_key(&repo, &old, new.public_key(), Some("bot"), None).expect("rotate");
        assert_eq!(written.statement.introduced_by, old.key_id().to_string());
        let bytes = std::fs::read(&written.path).expect("statement");
        let sig = std::fs::read_to_string(&written.signature).expect("signature");
        let trusted = TrustedKeys::new(vec![old.public_key().clone()]);
        let verified =
            verify_rotation(&bytes, &sig, &trusted, new.key_id(), Some("bot")).expect("verifies");
        assert_eq!(verified.new_key.id(), new.key_id());
        // Signing with the new key accepts indexes the old key signed.
        let keys = signing_keys(&repo, &new);
        assert!(keys.find(old.key_id()).is_some());
        assert!(keys.find(new.key_id()).is_some());
        // Another key gets no such link.
        let other = key(dir.path(), "other");
        assert_eq!(signing_keys(&repo, &other).keys().len(), 1);
    }
}

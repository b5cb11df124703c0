//! Offline bundles made by `slipway-pack bundle`, as a directory or a tar
//! file (SPEC §5 `install SOURCE`, the seed's open question 1).
//!
//! A bundle directory has the layout of a repository (`channels/`,
//! `releases/`, and `deltas/` when it carries any), so after the checks
//! here it is installed exactly like one: the channel index and every
//! archive are verified with the host's own trusted keys, with the same
//! freshness, rollback and extraction rules as online (SPEC §6: local
//! sources get the checks remote ones get), and a delta the index lists
//! from the running release is taken from `deltas/` as from a repository
//! ([`crate::delta`]).
//!
//! What this module adds is the bundle's own integrity, checked before
//! anything in it is used:
//!
//! - [`check_bundle`]: `SHA256SUMS` lists every file of the bundle; every
//!   file under `channels/`, `releases/`, `deltas/` and `keys/` (and
//!   `README.txt`) must be listed, a regular file (never a symlink) and
//!   match its checksum, and every listed file must exist. When the bundle carries
//!   `SHA256SUMS.minisig`, it must be a signature over the list by a key
//!   this host trusts. A directory without `SHA256SUMS` is a plain
//!   repository and is left to the index and archive checks.
//! - [`unpack_bundle_tar`]: a `.tar` bundle is unpacked into a fresh
//!   scratch directory first, accepting only directories and regular
//!   files under one top directory, with names a bundle can have and sizes
//!   within [`max_member_bytes`] (checked from the header, before a byte of
//!   the member is written); then it is checked as a directory.
//!
//! `keys/` in a bundle is informational (the operator compares it with the
//! host's configuration): nothing here ever adds a trusted key, but a
//! changed key file is still refused, since it is a file of the bundle
//! that does not match the list.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use slipway_formats::bundle::{
    check_bundle_path, max_member_bytes, BundleSums, SumsError, BUNDLE_COMMENT, BUNDLE_DIRS,
    MAX_SUMS_BYTES, README_FILE, SUMS_FILE, SUMS_SIGNATURE_FILE,
};
use slipway_formats::signature::{SignatureError, TrustedComment};
use slipway_formats::{KeyId, SignatureFile, TrustedKeys, MAX_SIGNATURE_BYTES};
use slipway_fs::ReadError;
use thiserror::Error;

/// The most entries a bundle tar may hold.
pub const MAX_TAR_ENTRIES: usize = 10_000;

/// Why a bundle was refused. Every variant names the file.
#[derive(Debug, Error)]
pub enum BundleError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is larger than {max} bytes; refused without reading further")]
    TooLarge { path: PathBuf, max: u64 },
    #[error("{path} is malformed: {source}")]
    Sums { path: PathBuf, source: SumsError },
    #[error("{path}: {source}; the checksum list was changed after the bundle was made, or it was signed by a key this host does not trust")]
    Signature {
        path: PathBuf,
        source: SignatureError,
    },
    #[error("{path}: the signed comment {comment:?} is not a slipway bundle comment")]
    Comment { path: PathBuf, comment: String },
    #[error("{path} is listed in SHA256SUMS but missing from the bundle")]
    Missing { path: PathBuf },
    #[error(
        "{path} is not listed in SHA256SUMS: a file was added to the bundle after it was made"
    )]
    Unlisted { path: PathBuf },
    #[error("{path} is not a regular file (a symlink or something else); a bundle holds only regular files")]
    NotRegular { path: PathBuf },
    #[error("{path} does not match SHA256SUMS (sha256 {found}, listed {expected}): the file was changed after the bundle was made, or damaged in the copy")]
    Mismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("bundle tar {path}: entry {entry:?}: {reason}")]
    TarEntry {
        path: PathBuf,
        entry: String,
        reason: String,
    },
    #[error("bundle tar {path}: {reason}")]
    Tar { path: PathBuf, reason: String },
    #[error("cannot unpack bundle tar {path} into {dir}: {source}")]
    Unpack {
        path: PathBuf,
        dir: PathBuf,
        source: io::Error,
    },
}

impl BundleError {
    /// What the operator should do, for the `hint:` line.
    pub fn hint(&self) -> &'static str {
        match self {
            BundleError::Read { .. } | BundleError::Unpack { .. } => {
                "check the path, its permissions and free space; nothing was installed"
            }
            _ => "nothing was installed; copy the bundle again from its source, or make a new one with `slipway-pack bundle`",
        }
    }
}

/// A bundle whose checksum list verified.
#[derive(Debug, Clone)]
pub struct BundleCheck {
    /// Files listed and checked.
    pub files: usize,
    /// The key that signed `SHA256SUMS`, when it was signed.
    pub signed_by: Option<KeyId>,
}

/// Whether `path` looks like a bundle tar: a regular file named `*.tar`.
pub fn is_bundle_tar(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "tar") && path.is_file()
}

/// Checks the bundle at `dir` (see the module documentation); `Ok(None)`
/// when `dir` has no `SHA256SUMS` (a plain repository).
pub fn check_bundle(dir: &Path, keys: &TrustedKeys) -> Result<Option<BundleCheck>, BundleError> {
    let sums_path = dir.join(SUMS_FILE);
    let Some(sums_bytes) =
        slipway_fs::read_capped_optional(&sums_path, MAX_SUMS_BYTES).map_err(bundle_read_error)?
    else {
        return Ok(None);
    };
    let sig_path = dir.join(SUMS_SIGNATURE_FILE);
    let signed_by = match slipway_fs::read_capped_optional(&sig_path, MAX_SIGNATURE_BYTES)
        .map_err(bundle_read_error)?
    {
        None => None,
        Some(sig_bytes) => {
            let sig_err = |source| BundleError::Signature {
                path: sig_path.clone(),
                source,
            };
            let text = String::from_utf8(sig_bytes).map_err(|_| {
                sig_err(SignatureError::Malformed(
                    "the signature file is not UTF-8 text".into(),
                ))
            })?;
            let sig = SignatureFile::parse(&text).map_err(sig_err)?;
            let key = sig.verify_bytes(keys, &sums_bytes).map_err(sig_err)?;
            let comment = sig.trusted_comment();
            if TrustedComment::parse(comment).map_or(true, |c| c.kind != BUNDLE_COMMENT) {
                return Err(BundleError::Comment {
                    path: sig_path.clone(),
                    comment: comment.to_string(),
                });
            }
            Some(key.id())
        }
    };
    let sums = BundleSums::parse(&sums_bytes).map_err(|source| BundleError::Sums {
        path: sums_path.clone(),
        source,
    })?;

    // Every file in the bundle's directories must be listed.
    let mut present = BTreeSet::new();
    if fs::symlink_metadata(dir.join(README_FILE)).is_ok() {
        present.insert(README_FILE.to_string());
    }
    for sub in BUNDLE_DIRS {
        let sub_path = dir.join(sub);
        let meta = match fs::symlink_metadata(&sub_path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(BundleError::Read {
                    path: sub_path,
                    source,
                })
            }
        };
        if !meta.is_dir() {
            return Err(BundleError::NotRegular { path: sub_path });
        }
        let read = fs::read_dir(&sub_path).map_err(|source| BundleError::Read {
            path: sub_path.clone(),
            source,
        })?;
        for item in read {
            let item = item.map_err(|source| BundleError::Read {
                path: sub_path.clone(),
                source,
            })?;
            let name = item.file_name().to_string_lossy().into_owned();
            present.insert(format!("{sub}/{name}"));
        }
    }
    for rel in &present {
        if sums.get(rel).is_none() {
            return Err(BundleError::Unlisted {
                path: dir.join(rel),
            });
        }
    }
    // Every listed file must be there, regular, and match.
    for (rel, expected) in sums.iter() {
        let path = dir.join(rel);
        if !present.contains(rel) {
            return Err(BundleError::Missing { path });
        }
        let found = sha256_of_regular(&path)?;
        if &found != expected {
            return Err(BundleError::Mismatch {
                path,
                expected: hex::encode(expected),
                found: hex::encode(found),
            });
        }
    }
    Ok(Some(BundleCheck {
        files: sums.len(),
        signed_by,
    }))
}

/// A shared reader's error as a bundle error (the same words for the same
/// file whichever check read it).
fn bundle_read_error(e: ReadError) -> BundleError {
    match e {
        ReadError::TooLarge { path, max } => BundleError::TooLarge { path, max },
        ReadError::NotRegular { path, .. } => BundleError::NotRegular { path },
        ReadError::NotFound { path } => BundleError::Read {
            path,
            source: io::ErrorKind::NotFound.into(),
        },
        ReadError::Io { path, source } => BundleError::Read { path, source },
        ReadError::NotText { path } => BundleError::Read {
            path,
            source: io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"),
        },
    }
}

fn sha256_of_regular(path: &Path) -> Result<[u8; 32], BundleError> {
    let mut file = slipway_fs::open_regular(path).map_err(bundle_read_error)?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(|source| BundleError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
    }
    Ok(sha.finalize().into())
}

/// Unpacks the bundle tar `path` into a fresh directory under `scratch`
/// and returns that directory (removed when dropped) and the bundle
/// directory inside it.
///
/// Only directories and regular files are accepted, all under one top
/// directory, at most [`MAX_TAR_ENTRIES`] of them, with the names a bundle
/// has (`README.txt`, `SHA256SUMS`, `SHA256SUMS.minisig` and files directly
/// under `channels/`, `releases/`, `deltas/` (delta names only), `keys/`),
/// each no larger than
/// [`max_member_bytes`] allows and than the rest of the file can hold. Files are created with
/// `O_EXCL | O_NOFOLLOW`, so nothing is written outside the new directory.
/// The result is then checked with [`check_bundle`] like any bundle.
pub fn unpack_bundle_tar(
    path: &Path,
    scratch: &Path,
) -> Result<(tempfile::TempDir, PathBuf), BundleError> {
    let tmp = tempfile::Builder::new()
        .prefix("slipway-bundle-")
        .tempdir_in(scratch)
        .map_err(|source| BundleError::Unpack {
            path: path.to_path_buf(),
            dir: scratch.to_path_buf(),
            source,
        })?;
    let file = slipway_fs::open_regular(path).map_err(bundle_read_error)?;
    let tar_len = file
        .metadata()
        .map_err(|source| BundleError::Read {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let mut archive = tar::Archive::new(file);
    let entries = archive.entries().map_err(|e| BundleError::Tar {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut top: Option<String> = None;
    let mut count = 0usize;
    for entry in entries {
        let mut entry = entry.map_err(|e| BundleError::Tar {
            path: path.to_path_buf(),
            reason: format!("unreadable entry: {e}"),
        })?;
        count += 1;
        if count > MAX_TAR_ENTRIES {
            return Err(BundleError::Tar {
                path: path.to_path_buf(),
                reason: format!("more than {MAX_TAR_ENTRIES} entries"),
            });
        }
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let refuse = |reason: &str| BundleError::TarEntry {
            path: path.to_path_buf(),
            entry: name.clone(),
            reason: reason.to_string(),
        };
        let text = std::str::from_utf8(&raw).map_err(|_| refuse("the name is not UTF-8"))?;
        let kind = entry.header().entry_type();
        let is_dir = kind.is_dir();
        if !is_dir && !kind.is_file() {
            return Err(refuse(
                "only directories and regular files belong in a bundle (no links, devices or special files)",
            ));
        }
        let clean = text.strip_suffix('/').unwrap_or(text);
        slipway_formats::path::validate_entry_path(clean).map_err(|e| refuse(&e.to_string()))?;
        let (first, rest) = match clean.split_once('/') {
            Some((f, r)) => (f, Some(r)),
            None => (clean, None),
        };
        match &top {
            None => top = Some(first.to_string()),
            Some(t) if t == first => {}
            Some(t) => return Err(refuse(&format!("outside the bundle's top directory {t:?}"))),
        }
        let allowed = match (is_dir, rest) {
            (true, None) => true,
            (true, Some(r)) => BUNDLE_DIRS.contains(&r),
            (false, None) => false,
            (false, Some(r)) => {
                r == SUMS_FILE || r == SUMS_SIGNATURE_FILE || check_bundle_path(r).is_ok()
            }
        };
        if !allowed {
            return Err(refuse("not a name a bundle has"));
        }
        // Sizes are bounded before a byte is written: each member by what
        // its format allows, and every member by what the file can hold (a
        // header claiming more is a lie).
        let size = entry.size();
        if !is_dir {
            let rel = rest.unwrap_or_default();
            if let Some(max) = max_member_bytes(rel).filter(|max| size > *max) {
                return Err(refuse(&format!(
                    "it is {size} bytes, over the {max} bytes a bundle's {rel} may have; refused before anything was written"
                )));
            }
            if size > tar_len.saturating_sub(entry.raw_file_position()) {
                return Err(refuse(&format!(
                    "its header claims {size} bytes, more than the rest of the {tar_len}-byte bundle file holds"
                )));
            }
        }
        let dest = tmp.path().join(clean);
        let unpack_err = |source| BundleError::Unpack {
            path: path.to_path_buf(),
            dir: tmp.path().to_path_buf(),
            source,
        };
        if is_dir {
            match fs::create_dir(&dest) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(refuse("duplicate entry"))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(refuse("its parent directory comes later in the tar"))
                }
                Err(e) => return Err(unpack_err(e)),
            }
        } else {
            let mut out = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&dest)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::AlreadyExists => refuse("duplicate entry"),
                    io::ErrorKind::NotFound => {
                        refuse("its parent directory is not in the tar before it")
                    }
                    _ => unpack_err(e),
                })?;
            let copied = io::copy(&mut (&mut entry).take(size), &mut out).map_err(unpack_err)?;
            if copied != size {
                return Err(refuse("the bundle file ends inside this entry"));
            }
        }
    }
    let Some(top) = top else {
        return Err(BundleError::Tar {
            path: path.to_path_buf(),
            reason: "the tar is empty".into(),
        });
    };
    let dir = tmp.path().join(top);
    Ok((tmp, dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: &[(&str, tar::EntryType, &[u8])]) -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("b.tar");
        let mut builder = tar::Builder::new(fs::File::create(&path).expect("create"));
        for (name, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            if *kind == tar::EntryType::Symlink {
                h.set_link_name("../../etc/passwd").expect("link");
                h.set_size(0);
            }
            let bytes = name.as_bytes();
            if bytes.len() > h.as_old().name.len() {
                // A delta's name: a GNU long-name entry, as the packager writes.
                builder.append_data(&mut h, name, *data).expect("append");
                continue;
            }
            // Raw names, so hostile ones get through the builder.
            h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            h.set_cksum();
            builder.append(&h, *data).expect("append");
        }
        builder.finish().expect("finish");
        (tmp, path)
    }

    #[test]
    fn unpacks_a_well_formed_bundle_tar() {
        use tar::EntryType::{Directory as D, Regular as F};
        let delta = delta_member();
        let (tmp, path) = tar_with(&[
            ("b/", D, b""),
            ("b/README.txt", F, b"hi"),
            ("b/channels/", D, b""),
            ("b/channels/stable.json", F, b"{}"),
            ("b/deltas/", D, b""),
            (&delta, F, b"delta"),
            ("b/SHA256SUMS", F, b"x"),
        ]);
        let (scratch, dir) = unpack_bundle_tar(&path, tmp.path()).expect("unpack");
        assert_eq!(dir, scratch.path().join("b"));
        assert_eq!(
            fs::read(dir.join("channels/stable.json")).expect("read"),
            b"{}"
        );
        assert_eq!(
            fs::read(dir.join(delta.trim_start_matches("b/"))).expect("read"),
            b"delta"
        );
    }

    /// `b/deltas/<from-hex>-<to-hex>.tar.zst` for two made-up releases.
    fn delta_member() -> String {
        let (from, to) = (
            slipway_formats::ReleaseId::of_bytes(b"from"),
            slipway_formats::ReleaseId::of_bytes(b"to"),
        );
        format!("b/{}", slipway_formats::delta::delta_rel_path(&from, &to))
    }

    /// A member whose header claims more than the file holds is refused
    /// from the header, before its bytes are copied.
    #[test]
    fn refuses_a_member_larger_than_the_bundle_file() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("b.tar");
        let mut builder = tar::Builder::new(fs::File::create(&path).expect("create"));
        for (name, kind, size) in [
            ("b/", tar::EntryType::Directory, 0u64),
            ("b/releases/", tar::EntryType::Directory, 0),
            ("b/releases/x.tar.zst", tar::EntryType::Regular, 1 << 40),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(kind);
            h.set_mode(0o644);
            h.set_size(size);
            h.set_path(name).expect("name");
            h.set_cksum();
            builder.append(&h, &b"tiny"[..0]).expect("append");
        }
        builder.finish().expect("finish");
        drop(builder);
        let scratch = tmp.path().join("scratch");
        fs::create_dir(&scratch).expect("mkdir");
        let err = unpack_bundle_tar(&path, &scratch).expect_err("a lying header");
        assert!(err.to_string().contains("more than the rest"), "{err}");
        assert_eq!(fs::read_dir(&scratch).expect("ls").count(), 0);
    }

    #[test]
    fn refuses_hostile_bundle_tars_without_writing_outside() {
        use tar::EntryType::{Directory as D, Regular as F, Symlink as L};
        let delta_link = delta_member();
        let cases: Vec<Vec<(&str, tar::EntryType, &[u8])>> = vec![
            vec![("b/", D, b""), ("b/../evil", F, b"x")],
            vec![("/etc/evil", F, b"x")],
            vec![
                ("b/", D, b""),
                ("b/channels/", D, b""),
                ("b/channels/x", L, b""),
            ],
            vec![("b/", D, b""), ("c/README.txt", F, b"x")],
            vec![("b/", D, b""), ("b/bin/", D, b"")],
            vec![("b/", D, b""), ("b/run.sh", F, b"x")],
            vec![
                ("b/", D, b""),
                ("b/README.txt", F, b"x"),
                ("b/README.txt", F, b"y"),
            ],
            vec![("b/channels/x.json", F, b"x")],
            // deltas/ holds only names a delta (or its signature) has.
            vec![
                ("b/", D, b""),
                ("b/deltas/", D, b""),
                ("b/deltas/notes.txt", F, b"x"),
            ],
            vec![
                ("b/", D, b""),
                ("b/deltas/", D, b""),
                ("b/deltas/x/", D, b""),
            ],
            vec![("b/", D, b""), ("b/deltas/", D, b""), (&delta_link, L, b"")],
            vec![],
        ];
        for case in cases {
            let (tmp, path) = tar_with(&case);
            let scratch = tmp.path().join("scratch");
            fs::create_dir(&scratch).expect("mkdir");
            let err = unpack_bundle_tar(&path, &scratch).expect_err(&format!("{case:?}"));
            assert!(!err.to_string().is_empty());
            assert!(!tmp.path().join("evil").exists());
            // The scratch directory is removed with the error.
            assert_eq!(fs::read_dir(&scratch).expect("ls").count(), 0, "{case:?}");
        }
    }
}

//! `slipway-pack inspect` and `diff`: what a release holds and what changed
//! between two, read from the manifests (the first entry of each archive,
//! so only a few KiB are decompressed). Neither checks a signature: use
//! `verify` for that.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use slipway_formats::archive::read_manifest_entry;
use slipway_formats::delta::parse_delta_file_name;
pub use slipway_formats::diff::{diff_manifests, ManifestDiff};
use slipway_formats::{EntryType, Manifest, ReleaseId, SignatureFile, MAX_SIGNATURE_BYTES};

use crate::build::BUFFER_SIZE;
use crate::error::{PackError, Result};
use crate::repo::signature_path_of;

/// Reads the manifest of an archive (unauthenticated), by the hosts' rules
/// for the first entry (`slipway_formats::archive::read_manifest_entry`).
pub fn read_manifest(path: &Path) -> Result<Manifest> {
    let file = slipway_fs::open_regular(path)?;
    let bytes = read_manifest_entry(file).map_err(|e| {
        let delta = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_delta_file_name);
        match delta {
            Some((from, _)) => PackError::verify(
                path,
                format!("{e}: it is named like a delta, which is compressed against the release it starts from ({from}) and cannot be read without it; inspect the release archives instead"),
            ),
            None => PackError::verify(path, e.to_string()),
        }
    })?;
    Manifest::parse(&bytes).map_err(|e| PackError::verify(path, e.to_string()))
}

/// What `inspect` shows about an archive.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// `sha256:` of the file as it is (not checked against its name).
    pub id: ReleaseId,
    pub path: PathBuf,
    pub size: u64,
    pub manifest: Manifest,
    /// The key id and trusted comment of the `.minisig` beside it, if any,
    /// NOT verified.
    pub signature: Option<(String, String)>,
}

impl Inspection {
    /// Regular files, directories and symlinks, counted.
    pub fn counts(&self) -> (usize, usize, usize) {
        let count = |k: EntryType| self.manifest.files.iter().filter(|e| e.kind == k).count();
        (
            count(EntryType::File),
            count(EntryType::Dir),
            count(EntryType::Symlink),
        )
    }
}

/// Reads an archive's manifest and hashes the file.
pub fn inspect(path: &Path) -> Result<Inspection> {
    let manifest = read_manifest(path)?;
    let mut file = slipway_fs::open_regular(path)?;
    let mut sha = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; BUFFER_SIZE];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(PackError::io("read", path)(e)),
        };
        sha.update(&buf[..n]);
        size += n as u64;
    }
    let signature = slipway_fs::read_capped_optional(&signature_path_of(path), MAX_SIGNATURE_BYTES)
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|t| SignatureFile::parse(&t).ok())
        .map(|s| (s.key_id().to_string(), s.trusted_comment().to_string()));
    Ok(Inspection {
        id: ReleaseId::from_digest(sha.finalize().into()),
        path: path.to_path_buf(),
        size,
        manifest,
        signature,
    })
}

/// The file-level differences between two archives' manifests (the same
/// diff the installer shows before it switches).
pub fn diff_archives(old: &Path, new: &Path) -> Result<ManifestDiff> {
    Ok(diff_manifests(&read_manifest(old)?, &read_manifest(new)?))
}

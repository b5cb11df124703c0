//! `slipway-pack inspect` and `diff`: what a release holds and what changed
//! between two, read from the manifests (the first entry of each archive,
//! so only a few KiB are decompressed). Neither checks a signature: use
//! `verify` for that.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use slipway_formats::{
    EntryType, FileEntry, Hooks, Manifest, ReleaseId, SignatureFile, Version, MAX_SIGNATURE_BYTES,
};

use crate::build::BUFFER_SIZE;
use crate::error::{PackError, Result};
use crate::repo::{read_capped, signature_path_of};
use crate::verify::{open_tar, read_manifest_entry};

/// Reads the manifest of an archive (unauthenticated).
pub fn read_manifest(path: &Path) -> Result<Manifest> {
    let mut archive = open_tar(path)?;
    let mut entries = archive
        .entries()
        .map_err(|e| PackError::verify(path, format!("cannot read the tar stream: {e}")))?;
    read_manifest_entry(path, entries.next())
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
    let mut file = File::open(path).map_err(PackError::io("open", path))?;
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
    let signature = read_capped(&signature_path_of(path), MAX_SIGNATURE_BYTES)
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

/// One path present in both releases but different.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangedEntry {
    pub path: String,
    /// What differs: `type`, `content`, `mode`, `target`.
    pub changes: Vec<&'static str>,
}

/// A change of a scalar between the two releases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change<T> {
    pub old: T,
    pub new: T,
}

/// File-level difference between two releases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestDiff {
    pub app: Change<String>,
    pub version: Change<Version>,
    pub channel: Change<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<ChangedEntry>,
    /// Set when `schema_version` or `schema_min_compatible` differ.
    pub schema_version: Option<Change<u32>>,
    pub schema_min_compatible: Option<Change<u32>>,
    /// Set when the hooks differ.
    pub hooks: Option<Change<Hooks>>,
    /// Total file bytes.
    pub bytes: Change<u64>,
}

impl ManifestDiff {
    /// Whether the payloads are identical (metadata aside).
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Compares two manifests entry by entry.
pub fn diff_manifests(old: &Manifest, new: &Manifest) -> ManifestDiff {
    let old_map: BTreeMap<&str, &FileEntry> =
        old.files.iter().map(|e| (e.path.as_str(), e)).collect();
    let new_map: BTreeMap<&str, &FileEntry> =
        new.files.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut added = Vec::new();
    let mut changed = Vec::new();
    for (path, n) in &new_map {
        match old_map.get(path) {
            None => added.push(path.to_string()),
            Some(o) => {
                let mut changes = Vec::new();
                if o.kind != n.kind {
                    changes.push("type");
                } else {
                    if o.sha256 != n.sha256 || o.size != n.size {
                        changes.push("content");
                    }
                    if o.target != n.target {
                        changes.push("target");
                    }
                }
                if o.mode != n.mode {
                    changes.push("mode");
                }
                if !changes.is_empty() {
                    changed.push(ChangedEntry {
                        path: path.to_string(),
                        changes,
                    });
                }
            }
        }
    }
    let removed = old_map
        .keys()
        .filter(|p| !new_map.contains_key(*p))
        .map(|p| p.to_string())
        .collect();
    let change = |a: u32, b: u32| (a != b).then_some(Change { old: a, new: b });
    ManifestDiff {
        app: Change {
            old: old.app.clone(),
            new: new.app.clone(),
        },
        version: Change {
            old: old.version.clone(),
            new: new.version.clone(),
        },
        channel: Change {
            old: old.channel.clone(),
            new: new.channel.clone(),
        },
        added,
        removed,
        changed,
        schema_version: change(old.schema_version, new.schema_version),
        schema_min_compatible: change(old.schema_min_compatible, new.schema_min_compatible),
        hooks: (old.hooks != new.hooks).then(|| Change {
            old: old.hooks.clone(),
            new: new.hooks.clone(),
        }),
        bytes: Change {
            old: old.total_size(),
            new: new.total_size(),
        },
    }
}

/// Reads both archives' manifests and compares them.
pub fn diff_archives(old: &Path, new: &Path) -> Result<ManifestDiff> {
    Ok(diff_manifests(&read_manifest(old)?, &read_manifest(new)?))
}

//! `slipway-pack verify`: checks an archive or a whole repository the way a
//! host would, without writing anything.
//!
//! An archive is checked by the same code `slipway install` runs, from
//! `slipway_formats::archive`, on one open descriptor read twice, both
//! times streaming with bounded buffers: [`verify_release`] checks that its
//! SHA-256 equals the id in its file name, that its `.minisig` is a
//! prehashed signature by a trusted key whose release comment names this
//! id and the manifest's app, version and channel; only then (the bytes
//! being authentic) [`check_release_contents`] decompresses it and checks
//! every tar entry one to one against the manifest by the hosts' entry
//! policy (path, type, mode, mtime, owner, size, link target, content
//! hash, decompression budget, zstd window), and that the second read gave
//! the verified bytes. Unauthenticated bytes are never parsed.

use std::path::{Path, PathBuf};

use serde::Serialize;
use slipway_formats::archive::{
    check_release_contents, verify_release, ArchiveError, Expectations,
};
use slipway_formats::channel::Timestamp;
use slipway_formats::{KeyId, Manifest, ReleaseId, TrustedKeys, MAX_SIGNATURE_BYTES};

use crate::delta::ListedDelta;
use crate::error::{PackError, Result};
use crate::repo::{archive_id_from_name, signature_path_of, Repo};
use slipway_fs::{open_regular, read_capped_optional};

/// An archive whose hash, signature and contents all checked out.
#[derive(Debug, Clone, Serialize)]
pub struct VerifiedArchive {
    pub id: ReleaseId,
    pub path: PathBuf,
    /// Archive size in bytes.
    pub size: u64,
    /// The key that signed it.
    #[serde(serialize_with = "serialize_display")]
    pub key_id: KeyId,
    /// The signed trusted comment.
    pub trusted_comment: String,
    #[serde(skip)]
    pub manifest: Manifest,
}

fn serialize_display<T: std::fmt::Display, S: serde::Serializer>(
    v: &T,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Verifies one archive (`<hex>.tar.zst`, its `.minisig` beside it) with
/// `keys`, as a host does: hash = name, prehashed signature by a trusted
/// key, trusted comment consistent with the id and the manifest, every
/// entry as the manifest says.
pub fn verify_archive(path: &Path, keys: &TrustedKeys) -> Result<VerifiedArchive> {
    let id = archive_id_from_name(path)?;
    let sig_path = signature_path_of(path);
    let sig_bytes = read_capped_optional(&sig_path, MAX_SIGNATURE_BYTES)?.ok_or_else(|| {
        PackError::verify(
            &sig_path,
            "missing: every archive needs its .minisig beside it",
        )
    })?;
    let sig_text = String::from_utf8(sig_bytes)
        .map_err(|_| PackError::verify(&sig_path, "signature file is not UTF-8"))?;

    let mut file = open_regular(path)?;
    let expect = Expectations {
        id: Some(id),
        ..Expectations::default()
    };
    let release = verify_release(&mut file, &sig_text, keys, &expect).map_err(|e| match e {
        ArchiveError::Signature(_) | ArchiveError::Comment { .. } => {
            PackError::verify(&sig_path, e.to_string())
        }
        ArchiveError::IdMismatch { found, .. } => PackError::verify(
            path,
            format!("sha256 of the file is {found}, but its name says {id}: the archive is corrupted or was altered; fetch or build it again"),
        ),
        _ => PackError::verify(path, e.to_string()),
    })?;
    check_release_contents(&mut file, &release)
        .map_err(|e| PackError::verify(path, e.to_string()))?;
    Ok(VerifiedArchive {
        id,
        path: path.to_path_buf(),
        size: release.size,
        key_id: release.signer,
        trusted_comment: release.comment.to_string(),
        manifest: release.manifest,
    })
}

/// A channel index that verified, with the releases it lists.
#[derive(Debug, Clone, Serialize)]
pub struct VerifiedChannel {
    pub channel: String,
    pub app: String,
    pub version: u64,
    pub expires: Timestamp,
    #[serde(serialize_with = "serialize_display")]
    pub key_id: KeyId,
    pub releases: usize,
}

/// The outcome of verifying a repository: what verified, and every problem
/// found (the repository is good when `problems` is empty).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepoReport {
    pub channels: Vec<VerifiedChannel>,
    pub archives: Vec<VerifiedArchive>,
    /// The deltas the indexes list that verified
    /// ([`crate::delta::check_listed_delta`]), as repository paths.
    pub deltas: Vec<String>,
    pub problems: Vec<String>,
}

/// Verifies every channel index of a repository (signature, format, trusted
/// comment, not expired at `now`) and every archive listed in one (as
/// [`verify_archive`], plus the index's size, version, app, channel and
/// schema version against the archive), and every delta listed for a
/// release as a host verifies it before its walk. A listed delta whose
/// file is missing, or whose base archive the repository no longer holds
/// (so it cannot be checked), is a problem too. Problems are collected,
/// not stopped at.
pub fn verify_repo(repo: &Repo, keys: &TrustedKeys, now: Timestamp) -> Result<RepoReport> {
    let mut report = RepoReport::default();
    let channels = repo.channels()?;
    if channels.is_empty() {
        report.problems.push(format!(
            "{}: no channel index; publish a release first",
            repo.channels_dir().display()
        ));
    }
    let mut seen: Vec<ReleaseId> = Vec::new();
    let mut bases = crate::delta::BaseManifests::default();
    for channel in channels {
        let signed = match repo.read_channel(&channel, keys) {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                report.problems.push(e.to_string());
                continue;
            }
        };
        let index = &signed.index;
        if index.is_expired(now) {
            report.problems.push(format!(
                "{}: expired at {}; hosts refuse it: run `slipway-pack refresh --channel {channel}`",
                signed.path.display(),
                index.expires
            ));
        }
        report.channels.push(VerifiedChannel {
            channel: channel.clone(),
            app: index.app.clone(),
            version: index.version,
            expires: index.expires,
            key_id: signed.key_id,
            releases: index.releases.len(),
        });
        for release in &index.releases {
            let path = repo.archive_path(&release.id);
            let verified = match verify_archive(&path, keys) {
                Ok(v) => v,
                Err(e) => {
                    report.problems.push(format!(
                        "channel {channel:?} release {}: {e}",
                        release.version
                    ));
                    continue;
                }
            };
            let m = &verified.manifest;
            let mismatch = if verified.size != release.size {
                Some(format!(
                    "size {} in the index, {} on disk",
                    release.size, verified.size
                ))
            } else if m.version != release.version {
                Some(format!(
                    "version {} in the index, {} in the manifest",
                    release.version, m.version
                ))
            } else if m.schema_version != release.schema_version {
                Some(format!(
                    "schema_version {} in the index, {} in the manifest",
                    release.schema_version, m.schema_version
                ))
            } else if m.app != index.app || m.channel != index.channel {
                Some(format!(
                    "built for {}/{}, listed in {}/{}",
                    m.app, m.channel, index.app, index.channel
                ))
            } else {
                None
            };
            if let Some(m) = mismatch {
                report
                    .problems
                    .push(format!("channel {channel:?} release {}: {m}", release.id));
                continue;
            }
            if !seen.contains(&verified.id) {
                seen.push(verified.id);
                report.archives.push(verified);
            }
            for delta in &release.deltas {
                let rel = slipway_formats::delta::delta_rel_path(&delta.from, &release.id);
                let problem = match crate::delta::check_listed_delta(
                    repo, keys, index, release, delta, &mut bases,
                ) {
                    Ok(ListedDelta::Verified) => {
                        if !report.deltas.contains(&rel) {
                            report.deltas.push(rel);
                        }
                        continue;
                    }
                    Ok(ListedDelta::Missing(path)) => format!(
                        "{} or its .minisig is missing (hosts that run {} take the full archive); `slipway-pack delta` writes it again",
                        path.display(),
                        delta.from.short()
                    ),
                    Ok(ListedDelta::NoBase) => format!(
                        "{rel} cannot be checked: the repository no longer holds the archive of {}, the release it starts from",
                        delta.from
                    ),
                    Err(e) => e.to_string(),
                };
                report.problems.push(format!(
                    "channel {channel:?} release {}: delta from {}: {problem}",
                    release.version,
                    delta.from.short()
                ));
            }
        }
    }
    Ok(report)
}

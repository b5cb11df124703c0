//! `slipway-pack verify`: checks an archive or a whole repository the way a
//! host would, without writing anything.
//!
//! An archive is read twice, both times streaming with bounded buffers:
//! first to check that its SHA-256 equals the id in its file name and that
//! its `.minisig` is a prehashed signature by a trusted key, and only then
//! (the bytes being authentic) to decompress it and check every tar entry
//! one to one against the manifest: path, type, mode, size, content hash,
//! link target, mtime and owner. Unauthenticated bytes are never parsed.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use slipway_formats::channel::Timestamp;
use slipway_formats::signature::{check_release_comment, check_release_manifest};
use slipway_formats::{
    EntryType, FileEntry, KeyId, Manifest, ReleaseId, SignatureFile, TrustedKeys, MANIFEST_PATH,
    MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES,
};

use crate::build::BUFFER_SIZE;
use crate::error::{PackError, Result};
use crate::repo::{archive_id_from_name, signature_path_of, Repo};
use slipway_fs::{open_regular, read_capped_optional};

/// The largest zstd window accepted (128 MiB), as on hosts.
pub const WINDOW_LOG_MAX: u32 = 27;

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
/// `keys`: hash = name, prehashed signature by a trusted key, trusted comment
/// consistent with the id and the manifest, every entry as the manifest says.
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
    let sig =
        SignatureFile::parse(&sig_text).map_err(|e| PackError::verify(&sig_path, e.to_string()))?;
    if !sig.is_prehashed() {
        return Err(PackError::verify(
            &sig_path,
            "is a legacy (non-prehashed) minisign signature, which slipway refuses; re-sign the archive with slipway-pack or a current minisign without -l",
        ));
    }
    let mut check = sig
        .start_check(keys)
        .map_err(|e| PackError::verify(&sig_path, e.to_string()))?;

    let mut file = open_regular(path)?;
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
        check.update(&buf[..n]);
        size += n as u64;
    }
    let actual = ReleaseId::from_digest(sha.finalize().into());
    if actual != id {
        return Err(PackError::verify(
            path,
            format!("sha256 of the file is {actual}, but its name says {id}: the archive is corrupted or was altered; fetch or build it again"),
        ));
    }
    let key = check
        .finish()
        .map_err(|e| PackError::verify(path, e.to_string()))?;
    let key_id = key.id();

    // The release comment rules are slipway_formats::signature's, the ones
    // a host applies.
    let comment_text = sig.trusted_comment().to_string();
    let comment = check_release_comment(&comment_text, &id)
        .map_err(|e| PackError::verify(&sig_path, e.to_string()))?;

    let manifest = check_contents(path)?;
    check_release_manifest(&comment, &id, &manifest)
        .map_err(|e| PackError::verify(path, e.to_string()))?;
    Ok(VerifiedArchive {
        id,
        path: path.to_path_buf(),
        size,
        key_id,
        trusted_comment: comment_text,
        manifest,
    })
}

/// Opens the tar stream of a `.tar.zst` archive with the hosts' window limit.
pub(crate) fn open_tar(
    path: &Path,
) -> Result<tar::Archive<zstd::stream::read::Decoder<'static, io::BufReader<File>>>> {
    let file = open_regular(path)?;
    let mut decoder =
        zstd::stream::read::Decoder::new(file).map_err(PackError::io("decompress", path))?;
    decoder
        .window_log_max(WINDOW_LOG_MAX)
        .map_err(PackError::io("decompress", path))?;
    Ok(tar::Archive::new(decoder))
}

/// Reads the manifest from the first entry of a tar stream.
pub(crate) fn read_manifest_entry<R: Read>(
    path: &Path,
    entry: Option<io::Result<tar::Entry<'_, R>>>,
) -> Result<Manifest> {
    let bad = |m: String| PackError::verify(path, m);
    let mut entry = entry
        .ok_or_else(|| bad("the archive is empty".into()))?
        .map_err(|e| {
            bad(format!(
                "not a slipway release archive (zstd-compressed tar): cannot read the first entry: {e}"
            ))
        })?;
    let name = entry.path_bytes().into_owned();
    if name != MANIFEST_PATH.as_bytes() || entry.header().entry_type() != tar::EntryType::Regular {
        return Err(bad(format!(
            "the first entry is {:?}, not the file {MANIFEST_PATH}: not a slipway release",
            String::from_utf8_lossy(&name)
        )));
    }
    if entry.size() > MAX_MANIFEST_BYTES {
        return Err(bad(format!(
            "the manifest is {} bytes, over the {MAX_MANIFEST_BYTES} accepted",
            entry.size()
        )));
    }
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    (&mut entry)
        .take(MAX_MANIFEST_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(format!("cannot read the manifest: {e}")))?;
    Manifest::parse(&bytes).map_err(|e| bad(e.to_string()))
}

/// Streams the archive and checks every entry against its manifest.
fn check_contents(path: &Path) -> Result<Manifest> {
    let bad = |m: String| PackError::verify(path, m);
    let mut archive = open_tar(path)?;
    let mut entries = archive
        .entries()
        .map_err(|e| bad(format!("cannot read the tar stream: {e}")))?;
    let manifest = read_manifest_entry(path, entries.next())?;
    let mut buf = vec![0u8; BUFFER_SIZE];
    let mut expected = manifest.files.iter();
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("cannot read the tar stream: {e}")))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(want) = expected.next() else {
            return Err(bad(format!("entry {name:?} is not in the manifest")));
        };
        check_entry(&mut entry, want, manifest.created, &mut buf)
            .map_err(|m| bad(format!("entry {name:?}: {m}")))?;
    }
    if let Some(missing) = expected.next() {
        return Err(bad(format!(
            "entry {:?} is in the manifest but not in the archive",
            missing.path
        )));
    }
    // Past the end-of-archive blocks: only zero padding, then the end of the
    // zstd frame, whose checksum the decoder verifies as it reaches it.
    let mut rest = archive.into_inner();
    let mut trailing = 0u64;
    loop {
        let n = match rest.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(bad(format!(
                    "cannot decompress the end of the archive: {e}"
                )))
            }
        };
        trailing += n as u64;
        if buf[..n].iter().any(|&b| b != 0) || trailing > 1024 * 1024 {
            return Err(bad("data after the end of the tar archive".into()));
        }
    }
    Ok(manifest)
}

fn check_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    want: &FileEntry,
    mtime: u64,
    buf: &mut [u8],
) -> std::result::Result<(), String> {
    if entry.path_bytes().as_ref() != want.path.as_bytes() {
        return Err(format!(
            "found where the manifest lists {:?} (order or name differs)",
            want.path
        ));
    }
    let header = entry.header();
    let kind = match header.entry_type() {
        tar::EntryType::Regular => EntryType::File,
        tar::EntryType::Directory => EntryType::Dir,
        tar::EntryType::Symlink => EntryType::Symlink,
        other => return Err(format!("type {other:?} is not allowed in a release")),
    };
    if kind != want.kind {
        return Err(format!(
            "is a {kind} in the archive, a {} in the manifest",
            want.kind
        ));
    }
    let mode = header.mode().map_err(|e| e.to_string())? & 0o7777;
    if mode != want.mode.0 {
        return Err(format!(
            "mode {mode:04o}, the manifest says {:04o}",
            want.mode.0
        ));
    }
    let header_mtime = header.mtime().map_err(|e| e.to_string())?;
    if header_mtime != mtime {
        return Err(format!(
            "mtime {header_mtime}, the manifest's created is {mtime}"
        ));
    }
    if header.uid().map_err(|e| e.to_string())? != 0
        || header.gid().map_err(|e| e.to_string())? != 0
    {
        return Err("owner is not uid/gid 0".into());
    }
    let link = entry.link_name_bytes().map(|l| l.into_owned());
    match (&want.target, link) {
        (Some(t), Some(l)) if t.as_bytes() == l.as_slice() => {}
        (None, None) => {}
        (None, Some(l)) if l.is_empty() => {}
        (want_target, found) => {
            return Err(format!(
                "link target {:?}, the manifest says {want_target:?}",
                found.map(|l| String::from_utf8_lossy(&l).into_owned())
            ))
        }
    }
    let size = entry.size();
    if size != want.size.unwrap_or(0) {
        return Err(format!(
            "size {size}, the manifest says {}",
            want.size.unwrap_or(0)
        ));
    }
    if kind == EntryType::File {
        let mut sha = Sha256::new();
        let mut read = 0u64;
        loop {
            let n = match entry.read(buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("cannot read: {e}")),
            };
            sha.update(&buf[..n]);
            read += n as u64;
        }
        if read != size {
            return Err(format!("holds {read} bytes, its header says {size}"));
        }
        let digest = hex::encode(sha.finalize());
        if Some(digest.as_str()) != want.sha256.as_deref() {
            return Err(format!(
                "sha256 {digest}, the manifest says {}",
                want.sha256.as_deref().unwrap_or("none")
            ));
        }
    }
    Ok(())
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
    pub problems: Vec<String>,
}

/// Verifies every channel index of a repository (signature, format, trusted
/// comment, not expired at `now`) and every archive listed in one (as
/// [`verify_archive`], plus the index's size, version, app, channel and
/// schema version against the archive). Problems are collected, not
/// stopped at.
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
        }
    }
    Ok(report)
}

//! Deltas on the host: when the channel index offers a delta from the
//! release this host runs to the release it is about to install, fetch
//! that instead of the full archive (SPEC §4 steps 3–5; the format is in
//! [`slipway_formats::delta`]).
//!
//! The delta path is an optimisation that never weakens a check:
//!
//! - it is taken only when the index (signed) lists a delta whose `from`
//!   is the running release's id, and the running release has a manifest;
//! - the delta is fetched like an archive ([`crate::fetch::fetch_release`]:
//!   resumable, capped at the size the index signs), then verified by
//!   [`slipway_formats::delta::verify_delta`]: the listed SHA-256, a
//!   prehashed signature by a trusted key, a `slipway-delta` comment whose
//!   `from` is the running release and whose `to` is the release the index
//!   offers, and the new manifest, decompressed against the running
//!   release's `slipway/manifest.json` and equal to the SHA-256 the
//!   comment signs;
//! - staging ([`crate::stage`]) then walks every entry it carries and
//!   hashes it by the entry policy every archive goes through, its second
//!   frame decompressed against the running release's old versions of the
//!   changed files ([`DeltaBase`], read without following a symlink), and
//!   takes each file the delta leaves out from the running release:
//!   hardlinked when its identity record still holds, else copied and
//!   hashed against the new manifest. An extra entry, a tampered payload,
//!   a file left out that the base does not have, or a base file that
//!   changed on this host fails staging; the staging directory is removed
//!   as after any refused archive. The delta is decompressed once: walking
//!   it before staging as well cost a tenth of a 1% update of a
//!   20,000-file release and proved nothing staging does not.
//!
//! A directory source (a repository, an offline bundle) holds the delta
//! in its own `deltas/`, read in place; a listed delta whose file is not
//! there (a bundle made with `--no-deltas`) is a debug line, not a warning.
//! Any failure on that path (no delta listed, a download error, a refusal,
//! a base file that changed) is logged in one line and the transaction
//! falls back to the full archive in the same run. `slipway install
//! <delta file>` (a USB stick) has no full archive to fall back to: a
//! refused delta is refused like a hostile archive.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use slipway_formats::delta::{
    delta_file_name, delta_rel_path, delta_signature_file_name, is_delta_comment, verify_delta,
    BaseContents, DeltaExpectations,
};
use slipway_formats::{
    EntryType, FileEntry, Manifest, ReleaseId, TrustedKeys, MAX_SIGNATURE_BYTES,
};

use crate::fetch::{Downloaded, HttpClient};
use crate::source::{Candidate, RemoteArchive};
use crate::verify::{VerifiedArchive, VerifyError};

/// A delta the channel index lists for the candidate release, and where
/// it is (or will be, once fetched).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaCandidate {
    /// The release it starts from.
    pub from: ReleaseId,
    /// The delta file (in the repository, or in `downloads/` for HTTP).
    pub archive: PathBuf,
    pub signature: PathBuf,
    /// The size and SHA-256 the signed index gives.
    pub size: u64,
    pub sha256: ReleaseId,
    /// For an HTTP repository: fetch from here first.
    pub remote: Option<RemoteArchive>,
}

impl DeltaCandidate {
    /// The candidates for every delta the index lists with release `to`:
    /// `dir` is the repository directory (`None` for HTTP, where `base`
    /// is its URL and the files go to `downloads`).
    pub fn listed(
        to: &ReleaseId,
        deltas: &[slipway_formats::channel::ChannelDelta],
        location: &dyn Fn(&str) -> String,
        dir: Option<&Path>,
        downloads: &Path,
    ) -> Vec<DeltaCandidate> {
        deltas
            .iter()
            .map(|d| {
                let rel = delta_rel_path(&d.from, to);
                let sig_rel = format!("{rel}.minisig");
                let (archive, signature, remote) = match dir {
                    Some(dir) => (dir.join(&rel), dir.join(&sig_rel), None),
                    None => (
                        downloads.join(delta_file_name(&d.from, to)),
                        downloads.join(delta_signature_file_name(&d.from, to)),
                        Some(RemoteArchive {
                            url: location(&rel),
                            signature_url: location(&sig_rel),
                            size: d.size,
                        }),
                    ),
                };
                DeltaCandidate {
                    from: d.from,
                    archive,
                    signature,
                    size: d.size,
                    sha256: d.sha256,
                    remote,
                }
            })
            .collect()
    }

    /// Removes a fetched delta and its signature (HTTP only).
    pub fn discard_download(&self) {
        if self.remote.is_some() {
            let _ = fs::remove_file(&self.archive);
            let _ = fs::remove_file(&self.signature);
        }
    }
}

/// The release this host runs, as a delta's base: its id, directory and
/// manifest.
#[derive(Debug, Clone, Copy)]
pub struct Running<'a> {
    pub id: ReleaseId,
    pub dir: &'a Path,
    pub manifest: &'a Manifest,
    /// Its `slipway/manifest.json`, byte for byte as read.
    pub manifest_bytes: &'a [u8],
}

/// A delta fetched, verified and walked: ready to stage.
#[derive(Debug)]
pub struct AcquiredDelta {
    pub verified: VerifiedArchive,
    pub candidate: DeltaCandidate,
    /// Bytes received over the network (0 for a directory source).
    pub fetched: u64,
}

/// Why the delta path was not taken; the caller logs it and fetches the
/// full archive.
#[derive(Debug)]
pub enum NotTaken {
    /// The index lists the delta, but a directory source does not hold
    /// its file: an offline bundle made with `--no-deltas`, or a
    /// repository copied without `deltas/`. Expected, so not a warning.
    Absent(PathBuf),
    /// The delta could not be fetched, or it was refused.
    Failed(String),
}

/// Fetches (HTTP), verifies and walks the delta from `running` to the
/// candidate release, if the index lists one. `Ok(None)`: none listed.
pub fn acquire(
    candidate: &Candidate,
    running: Running<'_>,
    client: Option<&HttpClient>,
) -> Result<Option<AcquiredDelta>, NotTaken> {
    let Some(to) = candidate.listed.as_ref().map(|r| r.id) else {
        return Ok(None);
    };
    let Some(delta) = candidate.deltas.iter().find(|d| d.from == running.id) else {
        return Ok(None);
    };
    let fetched = match (&delta.remote, client) {
        (Some(remote), Some(client)) => {
            match crate::fetch::fetch_release(client, remote, &delta.archive, &delta.signature) {
                Ok(Downloaded { fetched, .. }) => fetched,
                Err(e) => {
                    delta.discard_download();
                    return Err(NotTaken::Failed(format!(
                        "cannot download {}: {e}",
                        remote.url
                    )));
                }
            }
        }
        (Some(remote), None) => {
            return Err(NotTaken::Failed(format!(
                "{} needs an HTTP client",
                remote.url
            )))
        }
        (None, _) => {
            // Only a file that is not there at all is "absent": anything
            // else at that path (a symlink, a directory) goes on to be
            // refused by the checks below.
            if let Err(e) = fs::symlink_metadata(&delta.archive) {
                if e.kind() == io::ErrorKind::NotFound {
                    return Err(NotTaken::Absent(delta.archive.clone()));
                }
            }
            0
        }
    };
    let expect = DeltaExpectations {
        app: candidate.expect.app.clone(),
        channel: candidate.expect.channel.clone(),
        from: Some(running.id),
        to: Some(to),
        size: Some(delta.size),
        sha256: Some(delta.sha256),
    };
    let verified = verify_delta_file(
        &delta.archive,
        &delta.signature,
        &candidate.keys,
        &expect,
        running.manifest_bytes,
    )
    .map_err(|e| match e {
        // Its message already names the delta and says "refused".
        VerifyError::Delta { .. } => {
            delta.discard_download();
            NotTaken::Failed(e.to_string())
        }
        other => {
            delta.discard_download();
            NotTaken::Failed(format!(
                "delta {} refused: {other}",
                delta.archive.display()
            ))
        }
    })?;
    Ok(Some(AcquiredDelta {
        verified,
        candidate: delta.clone(),
        fetched,
    }))
}

/// Verifies a local archive given to `slipway install`: a delta if its
/// signature says so (then it must start from `running`; staging walks
/// and proves its entries), else a release, exactly as before.
pub fn verify_local(
    candidate: &Candidate,
    running: Option<Running<'_>>,
) -> Result<VerifiedArchive, VerifyError> {
    let comment = slipway_fs::read_text_capped(&candidate.signature, MAX_SIGNATURE_BYTES)
        .ok()
        .and_then(|t| {
            slipway_formats::SignatureFile::parse(&t)
                .ok()
                .map(|s| s.trusted_comment().to_string())
        });
    if !comment.as_deref().is_some_and(is_delta_comment) {
        return crate::verify::verify_archive(
            &candidate.archive,
            &candidate.signature,
            &candidate.keys,
            &candidate.expect,
        );
    }
    let Some(running) = running else {
        return Err(VerifyError::Delta {
            path: candidate.archive.clone(),
            reason: "it is a delta, and this host runs no release to apply it to; install the full release archive".into(),
        });
    };
    let expect = DeltaExpectations {
        app: candidate.expect.app.clone(),
        channel: candidate.expect.channel.clone(),
        from: Some(running.id),
        to: None,
        size: None,
        sha256: None,
    };
    verify_delta_file(
        &candidate.archive,
        &candidate.signature,
        &candidate.keys,
        &expect,
        running.manifest_bytes,
    )
}

/// [`verify_delta`] on the delta file, opened and named like an archive;
/// `base_manifest` is the running release's manifest, byte for byte.
fn verify_delta_file(
    archive: &Path,
    signature: &Path,
    keys: &TrustedKeys,
    expect: &DeltaExpectations,
    base_manifest: &[u8],
) -> Result<VerifiedArchive, VerifyError> {
    crate::verify::verify_with(archive, signature, |file, sig| {
        verify_delta(file, sig, keys, expect, base_manifest)
    })
}

/// The running release as a delta's base: its manifest, and its files by
/// path (the reference a delta's second frame is decompressed against)
/// and by content digest (the files a delta leaves out, when they cannot
/// be hardlinked).
#[derive(Debug)]
pub struct DeltaBase<'a> {
    dir: &'a Path,
    manifest: &'a Manifest,
    manifest_bytes: &'a [u8],
    /// Content digest → the manifest path of one file with it.
    by_digest: HashMap<&'a str, &'a str>,
}

impl<'a> DeltaBase<'a> {
    /// The running release in `running.dir`, as its manifest lists it.
    pub fn of_release(running: Running<'a>) -> DeltaBase<'a> {
        let mut by_digest = HashMap::with_capacity(running.manifest.files.len());
        for e in &running.manifest.files {
            if let (EntryType::File, Some(sha)) = (e.kind, &e.sha256) {
                by_digest.entry(sha.as_str()).or_insert(e.path.as_str());
            }
        }
        DeltaBase {
            dir: running.dir,
            manifest: running.manifest,
            manifest_bytes: running.manifest_bytes,
            by_digest,
        }
    }

    /// What a delta's frames are decompressed against.
    pub fn frames(&self) -> slipway_formats::delta::DeltaBase<'_> {
        slipway_formats::delta::DeltaBase {
            manifest: self.manifest,
            manifest_bytes: self.manifest_bytes,
            contents: self,
        }
    }

    /// Opens the base's copy of `entry`'s content (no symlink followed,
    /// regular files only), capped at the entry's size and counted, so a
    /// copy cut short is noticed ([`BaseContent::complete`]). The content
    /// is not trusted: the caller hashes it against `entry`'s digest.
    pub fn open(&self, entry: &FileEntry) -> io::Result<BaseContent> {
        let sha = entry.sha256.as_deref().unwrap_or_default();
        let path = self
            .by_digest
            .get(sha)
            .map(|rel| self.dir.join(rel))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "the running release has no file with sha256 {sha} for {:?}",
                        entry.path
                    ),
                )
            })?;
        let file = slipway_fs::open_regular(&path).map_err(|e| io::Error::other(e.to_string()))?;
        Ok(BaseContent {
            file: file.take(entry.size.unwrap_or(0)),
            path,
        })
    }
}

/// The base's files for a delta's second frame: `entry.path` under the
/// release directory, every component opened without following a symlink,
/// so nothing outside the directory is ever read. What it holds is not
/// trusted: a file that differs decompresses to bytes the entry's hash
/// refuses.
impl BaseContents for DeltaBase<'_> {
    fn open_file(&self, entry: &FileEntry) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(open_beneath(self.dir, &entry.path)?))
    }
}

/// Opens the regular file `rel` (a manifest path: no `..`, no empty
/// component) under the directory `root`, each directory on the way with
/// `O_DIRECTORY | O_NOFOLLOW` and the file itself with
/// [`slipway_fs::open_regular_at`].
fn open_beneath(root: &Path, rel: &str) -> io::Result<fs::File> {
    use rustix::fs::{Mode, OFlags, CWD};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let (parents, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    let mut dir = rustix::fs::openat(CWD, root, flags, Mode::empty())?;
    for part in parents.split('/').filter(|p| !p.is_empty()) {
        dir = rustix::fs::openat(&dir, part, flags, Mode::empty())?;
    }
    slipway_fs::open_regular_at(&dir, Path::new(name), &root.join(rel))
        .map_err(|e| io::Error::other(e.to_string()))
}

/// A base file's content, read up to the new entry's size
/// ([`Read`] through [`std::io::Take`]).
pub struct BaseContent {
    file: io::Take<fs::File>,
    pub path: PathBuf,
}

impl BaseContent {
    /// Whether every byte the entry needs was read.
    pub fn complete(&self) -> bool {
        self.file.limit() == 0
    }
}

impl Read for BaseContent {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

/// [`acquire`] for the transaction: says on stderr which way the release
/// comes (`-v`: the bytes), and turns every failure of the delta path into
/// one warning line and `None`, so the caller takes the full archive.
pub fn take(
    log: &crate::transaction::Log,
    candidate: &Candidate,
    running: Option<Running<'_>>,
    client: Option<&HttpClient>,
) -> Option<AcquiredDelta> {
    let running = running?;
    let full = candidate.listed.as_ref().map_or(0, |r| r.size);
    match acquire(candidate, running, client) {
        Ok(Some(acquired)) => {
            log.info(format!(
                "using the delta from the running release {} ({} bytes; the full archive is {full})",
                running.id.short(),
                acquired.candidate.size
            ));
            log.debug(format!(
                "delta: {} bytes fetched, {} bytes for the full archive",
                acquired.fetched, full
            ));
            Some(acquired)
        }
        Ok(None) => {
            if !candidate.deltas.is_empty() {
                log.debug(format!(
                    "no delta listed from the running release {}; fetching the full archive",
                    running.id.short()
                ));
            }
            None
        }
        Err(NotTaken::Absent(path)) => {
            log.debug(format!(
                "the delta from the running release {} is listed but {} is not there (a bundle made with --no-deltas?); taking the full archive",
                running.id.short(),
                path.display()
            ));
            None
        }
        Err(NotTaken::Failed(why)) => {
            log.warn(format!("{why}; taking the full archive instead"));
            None
        }
    }
}

//! Step 5 of the transaction: unpack a verified release into
//! `releases/<version>-<id12>`, checking every entry against the manifest
//! while writing it.
//!
//! [`stage_release`] reads from the descriptor [`crate::verify`] checked and
//! unpacks into a fresh `releases/.staging-<id12>-<pid>` directory. The
//! reading and checking are [`slipway_formats::archive::walk_release`]'s,
//! the walk `slipway-pack verify` runs too: the file is read again through
//! the keyed BLAKE3 the verification computed
//! ([`Recheck`](slipway_formats::archive::Recheck)), so an archive
//! rewritten between verify and stage is refused; it is decompressed with
//! the zstd window limit and a decompression budget; and every tar entry
//! must be exactly the manifest's, one to one and in order (path, type,
//! mode, mtime, owner, size, symlink target), with everything SPEC §6 lists
//! refused by name. This module is the walk's [`EntrySink`]: it creates
//! what the walk accepted, files with `O_EXCL | O_NOFOLLOW` under
//! directories this run created, so nothing is ever written outside the
//! staging directory.
//!
//! Five threads share the work, each fed through a bounded queue of
//! recycled buffers: the walk's own decompressing thread; this one, which
//! walks and checks the entries and queues what to create; one creates the
//! directories, symlinks and files; one hashes the file contents it wrote
//! (every file's digest is compared, with
//! [`slipway_formats::archive::check_file_digest`], before staging succeeds,
//! and the error of the earliest entry is reported, as if all were done in
//! line); and, with [`SyncMode::Filesystem`], one runs a `syncfs(2)` every
//! 128 MiB written so that writeback overlaps the unpacking instead of all
//! waiting for the final syncfs.
//!
//! On success the tree is made read-only, made durable and renamed into
//! place. On any error the staging directory is removed: a refused release
//! leaves nothing behind but the error the caller logs.

use std::collections::HashMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use sha2::{Digest, Sha256};
use slipway_formats::archive::{
    check_file_digest, walk_delta, walk_release, EntryError, EntrySink, SinkError, VerifiedRelease,
    WalkError,
};
use slipway_formats::path::PathError;
use slipway_formats::{EntryType, FileEntry, Manifest, ReleaseId, MANIFEST_PATH};
use thiserror::Error;

use crate::diff::verify_installed;
use crate::durable;
use crate::identity::{DirCursor, FileIdentity};
use crate::layout::Layout;
use crate::verify::{VerifiedArchive, ZSTD_WINDOW_LOG_MAX};

/// How the staged tree is made durable before it is renamed into place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// One `syncfs(2)` of the file system holding `releases/`, after the whole
    /// tree is written and made read-only. Flushes every file and directory in
    /// one journal commit; much faster than one `fsync` per file for trees of
    /// many small files, at the cost of also flushing unrelated dirty data on
    /// that file system.
    #[default]
    Filesystem,
    /// `fsync(2)` of every file as it is closed and of every directory at the
    /// end.
    PerFile,
}

/// Knobs of [`stage_release_with`]. [`stage_release`] uses the defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct StageOptions<'a> {
    pub sync: SyncMode,
    /// The running release, to hardlink unchanged files from.
    pub link_from: Option<&'a LinkSource>,
    /// For a delta archive: the running release it starts from, whose
    /// manifest and files its frames are decompressed against, and where
    /// the files it leaves out are copied from when they cannot be linked
    /// from `link_from`.
    pub delta_base: Option<&'a crate::delta::DeltaBase<'a>>,
    /// The host whose identity records ([`crate::identity`]) staging
    /// writes for the new release and carries over for releases whose
    /// files it linked; `None` (a scratch stage) writes none.
    pub records: Option<&'a Layout>,
}

/// The files of the running release that staging may hardlink instead of
/// writing: every regular file with an identity record, by content digest
/// and mode. A file is linked only if its identity is the recorded one (so
/// its content is still the one its manifest entry, verified when that
/// release was staged, says), and only if it has the manifest's mode: a
/// shared inode is never chmodded. "Is the recorded one" is an `lstat`
/// right before the link, unless this run's clean-tree rule has just
/// proven the whole tree against the record ([`LinkSource::vouched`]);
/// either way an `lstat` right after the link must find the same inode,
/// size, mode and mtime.
#[derive(Debug, Default)]
pub struct LinkSource {
    /// The running release's directory.
    dir: PathBuf,
    /// Digest → for each read-only mode, the release-relative path of one
    /// file with that digest and mode, and its recorded identity.
    by_content: HashMap<String, Vec<(u32, String, FileIdentity)>>,
    /// Set when this run's clean-tree rule, under the transaction lock,
    /// has just found every path of the running release as its identity
    /// record says ([`crate::clean::check_release`]): then the record is
    /// what is on disk, and the `lstat` before each link would only repeat
    /// that check.
    vouched: bool,
}

impl LinkSource {
    /// The linkable files of the release in `dir`, or `None` when it has no
    /// usable identity record (then everything is written).
    pub fn of_release(layout: &Layout, dir: &Path, manifest: &Manifest) -> Option<LinkSource> {
        let identities = crate::identity::file_identities(layout, dir, manifest)?;
        let mut by_content: HashMap<String, Vec<(u32, String, FileIdentity)>> =
            HashMap::with_capacity(manifest.files.len());
        for (e, id) in manifest.files.iter().zip(&identities) {
            let (EntryType::File, Some(sha)) = (e.kind, e.sha256.as_ref()) else {
                continue;
            };
            if let Some(id) = id {
                let mode = read_only(e.mode.0);
                let files = by_content.entry(sha.clone()).or_default();
                if !files.iter().any(|(m, _, _)| *m == mode) {
                    files.push((mode, e.path.clone(), *id));
                }
            }
        }
        Some(LinkSource {
            dir: dir.to_path_buf(),
            by_content,
            vouched: false,
        })
    }

    /// Marks the running release as just proven clean against its record
    /// by this run ([`LinkSource::vouched`]), or no longer so (something
    /// changed under a stage that used it).
    pub fn set_vouched(&mut self, vouched: bool) {
        self.vouched = vouched;
    }

    /// How many files could be linked.
    pub fn len(&self) -> usize {
        self.by_content.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_content.is_empty()
    }

    /// The file to link for `entry`, if one has its content and mode and is
    /// still as recorded.
    /// `cursor` is a [`DirCursor`] under the running release.
    fn source_for(
        &self,
        entry: &FileEntry,
        cursor: &mut DirCursor,
    ) -> Option<(String, FileIdentity)> {
        let sha = entry.sha256.as_ref()?;
        let mode = read_only(entry.mode.0);
        let (_, path, recorded) = self
            .by_content
            .get(sha.as_str())?
            .iter()
            .find(|(m, _, _)| *m == mode)?;
        if recorded.size != entry.size.unwrap_or(0) {
            return None;
        }
        if self.vouched {
            return Some((path.clone(), *recorded));
        }
        let now = cursor.identity(path).ok()?;
        (now == *recorded).then(|| (path.clone(), now))
    }
}

/// What a stage hardlinked from the running release.
#[derive(Debug, Default)]
pub struct Linked {
    /// Identity before → after of every inode linked (the latest after,
    /// when one inode was linked to several entries): each link moves the
    /// inode's ctime.
    pub inodes: HashMap<FileIdentity, FileIdentity>,
    /// Every linked entry (its index in the manifest) with the identity
    /// its source had before.
    pub entries: Vec<(usize, FileIdentity)>,
}

impl Linked {
    /// The identity each linked path has now (its inode's after the last
    /// link): what the new release's record says without an `lstat`.
    /// By manifest entry index (`None`: not linked).
    fn identities(&self, manifest: &Manifest) -> Vec<Option<FileIdentity>> {
        let mut known = vec![None; manifest.files.len()];
        for (index, before) in &self.entries {
            if let Some(slot) = known.get_mut(*index) {
                *slot = self.inodes.get(before).copied();
            }
        }
        known
    }
}

/// Why a release could not be staged. Every refusal names the release and,
/// where there is one, the entry; the staging directory is gone by the time
/// the caller sees the error.
#[derive(Debug, Error)]
pub enum StageError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("release {id} is not a readable zstd-compressed tar: {reason}; delete the archive and fetch it again")]
    Corrupt { id: ReleaseId, reason: String },
    #[error("release {id}: zstd window larger than 2^{ZSTD_WINDOW_LOG_MAX} bytes; refused to bound memory (rebuild it with slipway-pack)")]
    WindowTooLarge { id: ReleaseId },
    #[error("release {id}: decompressed data runs past {limit} bytes (near entry {near:?}), more than its manifest accounts for: a decompression bomb or a corrupt archive; refused")]
    DecompressionBomb {
        id: ReleaseId,
        limit: u64,
        near: String,
    },
    #[error("release {id}: the first entry is {found:?}, not {MANIFEST_PATH}; refused")]
    FirstEntryNotManifest { id: ReleaseId, found: String },
    #[error("release {id}: {MANIFEST_PATH} in the archive differs from the manifest that was verified; the archive changed under us, fetch it again")]
    ManifestChanged { id: ReleaseId },
    #[error("release {id}: entry path {path:?} is not UTF-8; refused")]
    NonUtf8Path { id: ReleaseId, path: String },
    #[error("release {id}: entry refused: {source}")]
    BadPath { id: ReleaseId, source: PathError },
    #[error("release {id}: entry {path:?} is a {kind}; only regular files, directories and symlinks are allowed; refused")]
    ForbiddenType {
        id: ReleaseId,
        path: String,
        kind: String,
    },
    #[error("release {id}: entry {path:?} has mode {mode:04o}, which is {what}; refused")]
    ForbiddenMode {
        id: ReleaseId,
        path: String,
        mode: u32,
        what: &'static str,
    },
    #[error("release {id}: entry {path:?} appears twice; refused")]
    Duplicate { id: ReleaseId, path: String },
    #[error("release {id}: entry {path:?} is not in the manifest; refused")]
    NotInManifest { id: ReleaseId, path: String },
    #[error(
        "release {id}: the manifest lists {path:?} but the archive does not have it there; refused"
    )]
    Missing { id: ReleaseId, path: String },
    #[error("release {id}: entry {path:?} is a {found} but the manifest says {expected}; refused")]
    TypeMismatch {
        id: ReleaseId,
        path: String,
        expected: EntryType,
        found: String,
    },
    #[error("release {id}: entry {path:?} has mode {found:04o} but the manifest says {expected:04o}; refused")]
    ModeMismatch {
        id: ReleaseId,
        path: String,
        expected: u32,
        found: u32,
    },
    #[error("release {id}: entry {path:?} has mtime {found} but the manifest's created is {expected}; refused (build releases with slipway-pack)")]
    MtimeMismatch {
        id: ReleaseId,
        path: String,
        expected: u64,
        found: u64,
    },
    #[error("release {id}: entry {path:?} is owned by uid {uid} gid {gid}, not 0 and 0; refused (build releases with slipway-pack)")]
    OwnerNotRoot {
        id: ReleaseId,
        path: String,
        uid: u64,
        gid: u64,
    },
    #[error(
        "release {id}: entry {path:?} is {found} bytes but the manifest says {expected}; refused"
    )]
    SizeMismatch {
        id: ReleaseId,
        path: String,
        expected: u64,
        found: u64,
    },
    #[error(
        "release {id}: entry {path:?} has sha256 {found} but the manifest says {expected}; refused"
    )]
    HashMismatch {
        id: ReleaseId,
        path: String,
        expected: String,
        found: String,
    },
    #[error("release {id}: symlink {path:?} points to {found:?} but the manifest says {expected:?}; refused")]
    TargetMismatch {
        id: ReleaseId,
        path: String,
        expected: String,
        found: String,
    },
    #[error("release {id}: non-zero data after the end of the tar stream; refused")]
    TrailingData { id: ReleaseId },
    #[error("archive {path} changed after it was verified (its bytes are no longer those of release {id}); refused, fetch it again")]
    ArchiveChanged { path: PathBuf, id: ReleaseId },
    #[error("release {id}: the delta leaves out {path:?}, but the running release has no file with sha256 {sha256} and mode {mode:04o}; refused")]
    NotInBase {
        id: ReleaseId,
        path: String,
        sha256: String,
        mode: u32,
    },
    #[error("release {id}: the delta starts from release {base}, and staging was given no base release to take the files it leaves out from")]
    NoDeltaBase { id: ReleaseId, base: ReleaseId },
    #[error("release {id}: {path:?}, left out of the delta, cannot be taken from the running release ({from}): {source}")]
    BaseFile {
        id: ReleaseId,
        path: String,
        from: PathBuf,
        source: io::Error,
    },
    #[error("{cause}; and the staging directory {staging} could not be removed: {source} (remove it by hand)")]
    Cleanup {
        staging: PathBuf,
        source: io::Error,
        cause: Box<StageError>,
    },
}

/// Stages a verified release with the default [`StageOptions`]; see
/// [`stage_release_with`].
pub fn stage_release(
    verified: &mut VerifiedArchive,
    releases_dir: &Path,
) -> Result<PathBuf, StageError> {
    stage_release_with(verified, releases_dir, StageOptions::default())
}

/// Unpacks `verified` into `releases_dir/<version>-<id12>` and returns that
/// directory (SPEC §4 step 5, §6).
///
/// `releases_dir` must exist. If the release directory already exists and
/// matches the manifest, it is reused as is; otherwise it is replaced by a
/// freshly staged tree (atomically when the file system supports
/// `RENAME_EXCHANGE`). The release directory is read-only (files 0444 or
/// 0555, directories 0555) and durable when this returns, and `verified.file`
/// is rewound to offset 0 whatever the outcome.
pub fn stage_release_with(
    verified: &mut VerifiedArchive,
    releases_dir: &Path,
    options: StageOptions<'_>,
) -> Result<PathBuf, StageError> {
    let name = verified
        .release
        .manifest
        .release_dir_name(&verified.release.id);
    stage_release_into(verified, releases_dir, &name, options)
}

/// [`stage_release_with`] into `releases_dir/<dir_name>` rather than the
/// release's own `<version>-<id12>`: `install --force` of the running
/// release stages a clean copy beside the running one
/// ([`crate::layout::Layout::fresh_release_dir`]). `dir_name` is one path
/// component.
pub fn stage_release_into(
    verified: &mut VerifiedArchive,
    releases_dir: &Path,
    dir_name: &str,
    options: StageOptions<'_>,
) -> Result<PathBuf, StageError> {
    let result = stage_inner(verified, releases_dir, dir_name, options);
    // Best effort: a later reader of the same descriptor starts from 0.
    let _ = verified.file.seek(SeekFrom::Start(0));
    result
}

fn stage_inner(
    verified: &mut VerifiedArchive,
    releases_dir: &Path,
    dir_name: &str,
    options: StageOptions<'_>,
) -> Result<PathBuf, StageError> {
    let id = verified.release.id;
    let final_dir = releases_dir.join(dir_name);
    if dir_name.is_empty() || dir_name.starts_with('.') || dir_name.contains('/') {
        return Err(StageError::Io {
            action: "stage into",
            path: final_dir,
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "a release directory name is one component, not hidden",
            ),
        });
    }
    let meta =
        fs::metadata(releases_dir).map_err(io_at("use the releases directory", releases_dir))?;
    if !meta.is_dir() {
        return Err(StageError::Io {
            action: "use the releases directory",
            path: releases_dir.to_path_buf(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        });
    }

    let existing = fs::symlink_metadata(&final_dir).ok();
    if existing.as_ref().is_some_and(|m| m.is_dir()) && is_clean(&final_dir, verified) {
        if let Some(layout) = options.records {
            record_identities(
                layout,
                &final_dir,
                &verified.release.manifest,
                &Linked::default(),
            );
        }
        return Ok(final_dir);
    }

    let staging = releases_dir.join(format!(".staging-{}-{}", id.short(), std::process::id()));
    durable::remove_tree(&staging)
        .map_err(io_at("remove the stale staging directory", &staging))?;
    DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(io_at("create the staging directory", &staging))?;

    // Opened before anything is written, so that its syncfs reports every
    // writeback error from here on.
    let staged = File::open(&staging)
        .map_err(io_at("open", &staging))
        .and_then(|root| {
            let linked = unpack(verified, &staging, options)?;
            seal(&staging, &root, &verified.release.manifest, options)?;
            Ok(linked)
        })
        .and_then(|linked| {
            move_into_place(&staging, &final_dir, existing.is_some(), releases_dir)?;
            Ok(linked)
        });
    match staged {
        Ok(linked) => {
            if let Some(layout) = options.records {
                record_identities(layout, &final_dir, &verified.release.manifest, &linked);
            }
            Ok(final_dir)
        }
        Err(cause) => match durable::remove_tree(&staging) {
            Ok(()) => Err(cause),
            Err(source) => Err(StageError::Cleanup {
                staging,
                source,
                cause: Box::new(cause),
            }),
        },
    }
}

/// Records the identity of every file of the release just staged in
/// `final_dir`, and carries the ctime this run's links gave to shared
/// inodes over to the records of the releases they came from
/// ([`crate::identity::carry_over_records`]). Best effort: a release
/// without a record, or with a stale one, is only checked by a full
/// re-hash, so a failure here costs time, never safety.
fn record_identities(layout: &Layout, final_dir: &Path, manifest: &Manifest, linked: &Linked) {
    let _ = crate::identity::carry_over_records(layout, Some(final_dir), &linked.inodes);
    match crate::identity::take(final_dir, manifest, &linked.identities(manifest)) {
        Ok(record) => {
            if crate::identity::save_encoded(layout, final_dir, &record).is_err() {
                let _ = crate::identity::remove(layout, final_dir);
            }
        }
        Err(_) => {
            let _ = crate::identity::remove(layout, final_dir);
        }
    }
}

/// Maps an I/O error to [`StageError::Io`] naming what was done to which path.
fn io_at(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StageError {
    let path = path.to_path_buf();
    move |source| StageError::Io {
        action,
        path,
        source,
    }
}

/// Whether an existing release directory already holds exactly this release.
fn is_clean(dir: &Path, verified: &VerifiedArchive) -> bool {
    let manifest_same = slipway_fs::read_capped(
        &dir.join(MANIFEST_PATH),
        slipway_formats::MAX_MANIFEST_BYTES,
    )
    .map(|bytes| bytes == verified.release.manifest_bytes)
    .unwrap_or(false);
    manifest_same
        && verify_installed(dir, &verified.release.manifest)
            .map(|drift| drift.is_empty())
            .unwrap_or(false)
}

/// Unpacks and checks every entry into `staging`, reading the verified
/// descriptor from its start ([`check_and_write`]).
fn unpack(
    verified: &mut VerifiedArchive,
    staging: &Path,
    options: StageOptions<'_>,
) -> Result<Linked, StageError> {
    let archive = verified.path.clone();
    verified
        .file
        .seek(SeekFrom::Start(0))
        .map_err(io_at("rewind the archive", &archive))?;
    check_and_write(
        &mut verified.file,
        &verified.release,
        &archive,
        staging,
        options,
    )
}

/// A refusal of the shared entry policy, as a [`StageError`] naming the
/// release (and `archive`, for errors reading it).
fn refused(id: ReleaseId, archive: &Path, e: EntryError) -> StageError {
    match e {
        EntryError::Read(source) => io_at("read the archive", archive)(source),
        EntryError::ArchiveChanged => StageError::ArchiveChanged {
            path: archive.to_path_buf(),
            id,
        },
        EntryError::Corrupt { reason } => StageError::Corrupt { id, reason },
        EntryError::WindowTooLarge => StageError::WindowTooLarge { id },
        EntryError::DecompressionBomb { limit, near } => {
            StageError::DecompressionBomb { id, limit, near }
        }
        EntryError::FirstEntryNotManifest { found } => {
            StageError::FirstEntryNotManifest { id, found }
        }
        EntryError::ManifestChanged => StageError::ManifestChanged { id },
        EntryError::NonUtf8Path { path } => StageError::NonUtf8Path { id, path },
        EntryError::BadPath(source) => StageError::BadPath { id, source },
        EntryError::ForbiddenType { path, kind } => StageError::ForbiddenType { id, path, kind },
        EntryError::ForbiddenMode { path, mode, what } => StageError::ForbiddenMode {
            id,
            path,
            mode,
            what,
        },
        EntryError::Duplicate { path } => StageError::Duplicate { id, path },
        EntryError::NotInManifest { path } => StageError::NotInManifest { id, path },
        EntryError::Missing { path } => StageError::Missing { id, path },
        EntryError::TypeMismatch {
            path,
            expected,
            found,
        } => StageError::TypeMismatch {
            id,
            path,
            expected,
            found,
        },
        EntryError::ModeMismatch {
            path,
            expected,
            found,
        } => StageError::ModeMismatch {
            id,
            path,
            expected,
            found,
        },
        EntryError::MtimeMismatch {
            path,
            expected,
            found,
        } => StageError::MtimeMismatch {
            id,
            path,
            expected,
            found,
        },
        EntryError::OwnerNotRoot { path, uid, gid } => {
            StageError::OwnerNotRoot { id, path, uid, gid }
        }
        EntryError::SizeMismatch {
            path,
            expected,
            found,
        } => StageError::SizeMismatch {
            id,
            path,
            expected,
            found,
        },
        EntryError::HashMismatch {
            path,
            expected,
            found,
        } => StageError::HashMismatch {
            id,
            path,
            expected,
            found,
        },
        EntryError::TargetMismatch {
            path,
            expected,
            found,
        } => StageError::TargetMismatch {
            id,
            path,
            expected,
            found,
        },
        EntryError::TrailingData => StageError::TrailingData { id },
        EntryError::NotInBase { path, sha256, mode } => StageError::NotInBase {
            id,
            path,
            sha256,
            mode,
        },
    }
}

/// The parsing thread hands file contents and creation orders to the
/// writing thread in batches whose buffer is this big; the hashing thread
/// gets each batch after it is written.
const BATCH_BYTES: usize = 1024 * 1024;
/// A batch is also shipped once it holds this many orders, so that a run
/// of directories, symlinks or empty files does not wait for 1 MiB of data.
const BATCH_OPS: usize = 4096;
/// Batches in all (one being filled, the others queued for or being
/// written or hashed): bounds that memory to `BATCHES` × `BATCH_BYTES`.
const BATCHES: usize = 4;

/// The checking side: [`walk_release`] reads, decompresses and checks the
/// tar entries against the manifest, and this thread, as its [`EntrySink`]
/// ([`Writer`]), queues what to create in batches. Two threads carry them
/// out in order: the writing thread creates the directories, symlinks and
/// files under `staging` ([`write_batches`]), then the hashing thread
/// hashes the file contents from the same buffers ([`hash_batches`]). So
/// decompressing, parsing, the kernel's file creation and hashing overlap.
/// Every content hash is compared before this returns, and of the errors
/// the two threads found, the one for the earliest entry is reported (a
/// hash mismatch first if both concern the same entry), as if everything
/// had been done in line.
fn check_and_write(
    file: &mut File,
    release: &VerifiedRelease,
    archive: &Path,
    staging: &Path,
    options: StageOptions<'_>,
) -> Result<Linked, StageError> {
    let id = release.id;
    let manifest = &release.manifest;
    let failed = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (batch_tx, batch_rx) = mpsc::sync_channel::<Batch>(BATCHES);
        let (written_tx, written_rx) = mpsc::sync_channel::<Batch>(BATCHES);
        let (free_tx, free_rx) = mpsc::sync_channel::<Batch>(BATCHES);
        for _ in 1..BATCHES {
            let _ = free_tx.try_send(Batch::new());
        }
        let failed = &failed;
        let (nudge, write_back) = match options.sync {
            SyncMode::Filesystem => {
                let dir = File::open(staging).map_err(io_at("open", staging))?;
                let (nudge, nudges) = mpsc::sync_channel::<()>(1);
                (
                    Some(nudge),
                    Some(scope.spawn(move || write_back(&dir, nudges))),
                )
            }
            SyncMode::PerFile => (None, None),
        };
        let files = FileWriter {
            staging,
            manifest,
            sync: options.sync,
            nudge,
            unsynced: 0,
            open: None,
            linker: options.link_from.map(|l| Linker {
                staging,
                manifest,
                sync: options.sync,
                root: l.dir.as_path(),
                cursors: None,
                linked: Linked::default(),
            }),
            helper: None,
            pending: Vec::new(),
            last_parent: String::new(),
            helpers_turn: false,
        };
        let writer_thread = scope.spawn(move || write_batches(files, batch_rx, written_tx, failed));
        let hasher = scope.spawn(move || hash_batches(manifest, written_rx, free_tx, failed));
        let mut writer = Writer {
            staging,
            batch: Batch::new(),
            batches: Some(batch_tx),
            free_batches: free_rx,
            failed,
            sync: options.sync,
            link_from: options.link_from,
            link_cursor: None,
            drain: Vec::new(),
            delta_base: options.delta_base,
            id,
        };
        let walked = match (release.base, options.delta_base) {
            (None, _) => walk_release(&mut *file, release, &mut writer),
            (Some(_), Some(base)) => walk_delta(&mut *file, release, &base.frames(), &mut writer),
            (Some(base), None) => Err(WalkError::Sink(StageError::NoDeltaBase { id, base })),
        };
        // The last, partly filled batch; then the threads see the end.
        let shipped = writer.ship();
        drop(writer);
        let (write_failure, linked) = writer_thread.join().map_err(|_| hashing_stopped(staging))?;
        let mismatch = hasher
            .join()
            .map_err(|_| hashing_stopped(staging))?
            .map(|(i, e)| (i, refused(id, archive, e)));
        let synced = write_back.map(|t| t.join());
        if let Some(e) = earliest(mismatch, write_failure) {
            return Err(e);
        }
        walked.map_err(|e| match e {
            WalkError::Entry(e) => refused(id, archive, e),
            WalkError::Sink(e) => e,
        })?;
        shipped?;
        let sync_error = |source| io_at("syncfs the file system holding", staging)(source);
        match synced {
            Some(Ok(Err(e))) => return Err(sync_error(e)),
            Some(Err(_)) => return Err(sync_error(io::Error::other("the thread panicked"))),
            Some(Ok(Ok(()))) | None => {}
        }
        Ok(linked)
    })
}

/// Of a hash mismatch and a write failure, each with its entry, the one of
/// the earlier entry; the mismatch if both are of the same entry.
fn earliest(
    mismatch: Option<(usize, StageError)>,
    write_failure: Option<(usize, StageError)>,
) -> Option<StageError> {
    match (mismatch, write_failure) {
        (Some((i, m)), Some((j, w))) => Some(if i <= j { m } else { w }),
        (Some((_, e)), None) | (None, Some((_, e))) => Some(e),
        (None, None) => None,
    }
}

/// With [`SyncMode::Filesystem`], the writing thread nudges the write-back
/// thread after every this many bytes of file content.
const WRITEBACK_EVERY: u64 = 128 * 1024 * 1024;

/// The write-back thread: a `syncfs(2)` of the file system holding `dir`
/// whenever nudged, so that writeback overlaps unpacking and the final
/// syncfs in [`seal`] has little left to wait for. Its first error is
/// returned (a later syncfs on another descriptor reports it too, but this
/// one has seen it).
fn write_back(dir: &File, nudges: mpsc::Receiver<()>) -> io::Result<()> {
    for () in nudges {
        rustix::fs::syncfs(dir).map_err(|e| io::Error::from_raw_os_error(e.raw_os_error()))?;
    }
    Ok(())
}

fn hashing_stopped(staging: &Path) -> StageError {
    StageError::Io {
        action: "write and hash the files under",
        path: staging.to_path_buf(),
        source: io::Error::other("the writing or hashing thread stopped"),
    }
}

/// A batch of creation orders and the file contents they refer to, passed
/// from the parsing thread to the writing thread, then to the hashing
/// thread, then back.
struct Batch {
    /// Always `BATCH_BYTES` long (zeroed once, at allocation).
    buf: Vec<u8>,
    filled: usize,
    ops: Vec<Op>,
    /// The files `Op::Link` orders link from (relative to the running
    /// release), with their identity when the order was queued.
    sources: Vec<(String, FileIdentity)>,
}

/// One order of a [`Batch`]; `usize`s are manifest entry indexes.
enum Op {
    /// Create the directory.
    Dir(usize),
    /// Create the symlink.
    Symlink(usize),
    /// Create the file; the `Data` that follow are its contents.
    Open(usize),
    /// `buf[start..end]` is the next content of the open file.
    Data { start: usize, end: usize },
    /// The open file is complete: give it its mode, hash it.
    Close(usize),
    /// Hardlink the file from `Batch::sources[source]`, whose identity
    /// was checked against its record when this order was queued.
    Link { index: usize, source: usize },
}

impl Batch {
    fn new() -> Batch {
        Batch {
            buf: vec![0u8; BATCH_BYTES],
            filled: 0,
            ops: Vec::new(),
            sources: Vec::new(),
        }
    }

    fn clear(&mut self) {
        self.filled = 0;
        self.ops.clear();
        self.sources.clear();
    }
}

/// The hashing thread: hashes each file's content from the batches (after
/// the writing thread wrote it) and compares the digest with the manifest
/// at its end ([`check_file_digest`]). Returns the first mismatch with its
/// entry, and raises `failed` so the other threads stop early; drains the
/// queue to its end either way, so the threads before it never find it
/// closed.
fn hash_batches(
    manifest: &Manifest,
    batches: mpsc::Receiver<Batch>,
    free: mpsc::SyncSender<Batch>,
    failed: &AtomicBool,
) -> Option<(usize, EntryError)> {
    let mut sha = Sha256::new();
    let mut mismatch = None;
    for mut batch in batches {
        if mismatch.is_none() {
            for op in &batch.ops {
                match *op {
                    Op::Data { start, end } => sha.update(&batch.buf[start..end]),
                    Op::Close(i) => {
                        let digest = std::mem::take(&mut sha).finalize();
                        if let Err(e) = check_file_digest(&manifest.files[i], &digest) {
                            mismatch = Some((i, e));
                            failed.store(true, Ordering::Relaxed);
                            break;
                        }
                    }
                    Op::Dir(_) | Op::Symlink(_) | Op::Open(_) | Op::Link { .. } => {}
                }
            }
        }
        batch.clear();
        let _ = free.try_send(batch);
    }
    mismatch
}

/// The writing thread's state: the file being written, and how much was
/// written since the last write-back nudge.
struct FileWriter<'a> {
    staging: &'a Path,
    manifest: &'a Manifest,
    sync: SyncMode,
    /// To the write-back thread ([`SyncMode::Filesystem`] only).
    nudge: Option<mpsc::SyncSender<()>>,
    /// File content written since the last nudge.
    unsynced: u64,
    /// The file `Data` goes to, with its path and entry.
    open: Option<(File, PathBuf, usize)>,
    /// Carries out `Op::Link` orders (`None`: nothing is linked).
    linker: Option<Linker<'a>>,
    /// The linking thread's queue, and the orders not yet sent to it
    /// ([`FileWriter::share_link`]).
    helper: Option<mpsc::SyncSender<Vec<LinkOrder>>>,
    pending: Vec<LinkOrder>,
    /// The parent directory of the last link, and whose turn its links
    /// are: links alternate between the threads by directory, so that the
    /// two rarely wait on the same directory's lock.
    last_parent: String,
    helpers_turn: bool,
}

/// One hardlink to make: entry `index` from `from_rel` under the running
/// release, whose identity was `before` ([`Batch::sources`]).
struct LinkOrder {
    index: usize,
    from_rel: String,
    before: FileIdentity,
}

/// Orders sent to the linking thread at a time.
const LINK_ORDERS: usize = 256;

/// Makes hardlinks from the running release into the staging directory,
/// proving each: the writing thread has one and the linking thread
/// ([`link_orders`]) another, each with its own directory cursors.
struct Linker<'a> {
    staging: &'a Path,
    manifest: &'a Manifest,
    sync: SyncMode,
    /// The running release's directory, which link sources are relative
    /// to, with a cursor under it and one under `staging` (both opened at
    /// the first link).
    root: &'a Path,
    cursors: Option<(DirCursor, DirCursor)>,
    /// What this linker linked.
    linked: Linked,
}

/// The linking thread: makes every link of the orders it is sent, until
/// the queue closes. Returns its first failure with its entry (after which
/// it raises `failed` and only drains the queue), and what it linked.
fn link_orders(
    mut linker: Linker<'_>,
    orders: mpsc::Receiver<Vec<LinkOrder>>,
    failed: &AtomicBool,
) -> (Option<(usize, StageError)>, Linked) {
    let mut error = None;
    for chunk in orders {
        if error.is_some() {
            continue;
        }
        for order in chunk {
            if let Err(e) = linker.link(order.index, &order.from_rel, &order.before) {
                error = Some(e);
                failed.store(true, Ordering::Relaxed);
                break;
            }
        }
    }
    (error, linker.linked)
}

impl Linked {
    /// Adds what another linker linked. An inode linked by both keeps the
    /// later `after` (the greater ctime: links only move it forward).
    fn merge(&mut self, other: Linked) {
        for (before, after) in other.inodes {
            self.inodes
                .entry(before)
                .and_modify(|mine| {
                    if (after.ctime, after.ctime_ns) > (mine.ctime, mine.ctime_ns) {
                        *mine = after;
                    }
                })
                .or_insert(after);
        }
        self.entries.extend(other.entries);
    }
}

/// The writing thread: carries out every order of every batch, in order,
/// then passes the batch on to the hashing thread. After the first error
/// (returned with its entry) it raises `failed` and passes the rest on
/// emptied, so nothing waits on it.
fn write_batches(
    mut files: FileWriter<'_>,
    batches: mpsc::Receiver<Batch>,
    to_hash: mpsc::SyncSender<Batch>,
    failed: &AtomicBool,
) -> (Option<(usize, StageError)>, Linked) {
    let Some(linker) = files.linker.as_ref() else {
        return write_all_batches(files, batches, to_hash, failed);
    };
    let staging = linker.staging;
    let helper = Linker {
        cursors: None,
        linked: Linked::default(),
        ..*linker
    };
    std::thread::scope(|scope| {
        let (orders, queued) = mpsc::sync_channel::<Vec<LinkOrder>>(4);
        files.helper = Some(orders);
        let helper = scope.spawn(move || link_orders(helper, queued, failed));
        let (error, mut linked) = write_all_batches(files, batches, to_hash, failed);
        let (helper_error, helper_linked) = match helper.join() {
            Ok(done) => done,
            Err(_) => (Some((0, hashing_stopped(staging))), Linked::default()),
        };
        linked.merge(helper_linked);
        let error = match (error, helper_error) {
            (Some((i, e)), Some((j, f))) => Some(if i <= j { (i, e) } else { (j, f) }),
            (Some(e), None) | (None, Some(e)) => Some(e),
            (None, None) => None,
        };
        (error, linked)
    })
}

/// [`write_batches`]'s loop; the links it shares go to the linking thread
/// through `files.helper`, which is closed when this returns.
fn write_all_batches(
    mut files: FileWriter<'_>,
    batches: mpsc::Receiver<Batch>,
    to_hash: mpsc::SyncSender<Batch>,
    failed: &AtomicBool,
) -> (Option<(usize, StageError)>, Linked) {
    let mut error = None;
    for mut batch in batches {
        if error.is_some() {
            batch.clear();
        } else {
            let failed_at =
                batch
                    .ops
                    .iter()
                    .position(|op| match files.apply(op, &batch.buf, &batch.sources) {
                        Ok(()) => false,
                        Err(e) => {
                            error = Some(e);
                            true
                        }
                    });
            if let Some(k) = failed_at {
                failed.store(true, Ordering::Relaxed);
                // The hashing thread still checks every file completed
                // before the failure, and nothing after it.
                batch.ops.truncate(k);
            }
        }
        if to_hash.send(batch).is_err() {
            break;
        }
    }
    if error.is_none() {
        files.flush_links();
    }
    drop(files.helper.take());
    let linked = files.linker.map(|l| l.linked).unwrap_or_default();
    (error, linked)
}

impl FileWriter<'_> {
    fn apply(
        &mut self,
        op: &Op,
        buf: &[u8],
        sources: &[(String, FileIdentity)],
    ) -> Result<(), (usize, StageError)> {
        let entry_io = |i: usize, action: &'static str, path: &Path| {
            let to_error = io_at(action, path);
            move |source| (i, to_error(source))
        };
        match *op {
            Op::Dir(i) => {
                let path = self.staging.join(&self.manifest.files[i].path);
                DirBuilder::new()
                    .mode(0o755)
                    .create(&path)
                    .map_err(entry_io(i, "create directory", &path))
            }
            Op::Symlink(i) => {
                let entry = &self.manifest.files[i];
                let path = self.staging.join(&entry.path);
                let target = entry.target.as_deref().unwrap_or_default();
                std::os::unix::fs::symlink(target, &path).map_err(entry_io(
                    i,
                    "create symlink",
                    &path,
                ))
            }
            Op::Open(i) => {
                let path = self.staging.join(&self.manifest.files[i].path);
                let file = create_file(&path).map_err(entry_io(i, "create", &path))?;
                self.open = Some((file, path, i));
                Ok(())
            }
            Op::Data { start, end } => match &mut self.open {
                Some((file, path, i)) => file
                    .write_all(&buf[start..end])
                    .map_err(entry_io(*i, "write", path)),
                None => Ok(()),
            },
            Op::Link { index, source } => {
                let (Some((from_rel, before)), Some(linker)) =
                    (sources.get(source), self.linker.as_mut())
                else {
                    return Err((index, hashing_stopped(self.staging)));
                };
                let parent = self.manifest.files[index]
                    .path
                    .rsplit_once('/')
                    .map_or("", |(parent, _)| parent);
                if parent != self.last_parent {
                    self.last_parent.clear();
                    self.last_parent.push_str(parent);
                    self.helpers_turn = !self.helpers_turn && self.helper.is_some();
                }
                if self.helpers_turn {
                    self.pending.push(LinkOrder {
                        index,
                        from_rel: from_rel.clone(),
                        before: *before,
                    });
                    if self.pending.len() >= LINK_ORDERS {
                        self.flush_links();
                    }
                    return Ok(());
                }
                linker.link(index, from_rel, before)
            }
            Op::Close(i) => {
                let Some((file, path, _)) = self.open.take() else {
                    return Ok(());
                };
                let entry = &self.manifest.files[i];
                finish_file(file, &path, entry.mode.0, self.sync).map_err(|e| (i, e))?;
                self.unsynced += entry.size.unwrap_or(0);
                if self.unsynced >= WRITEBACK_EVERY {
                    self.unsynced = 0;
                    if let Some(nudge) = &self.nudge {
                        // Still syncing: the next nudge will do.
                        let _ = nudge.try_send(());
                    }
                }
                Ok(())
            }
        }
    }
}

impl FileWriter<'_> {
    /// Sends the links queued for the linking thread. Their directories
    /// exist: this thread created them, in archive order, before it came
    /// to the links. A closed queue means the linking thread failed; its
    /// error is reported when it is joined.
    fn flush_links(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let orders = std::mem::take(&mut self.pending);
        if let Some(helper) = &self.helper {
            let _ = helper.send(orders);
        }
    }
}

impl Linker<'_> {
    /// Hardlinks `from_rel` of the running release in `root` to `rel` in
    /// the staging directory, each looked up from its parent directory.
    fn link_at(&mut self, root: &Path, from_rel: &str, rel: &str) -> io::Result<()> {
        if crate::fault::refused("link") {
            return Err(io::Error::from_raw_os_error(
                rustix::io::Errno::XDEV.raw_os_error(),
            ));
        }
        if self.cursors.is_none() {
            self.cursors = Some((DirCursor::open(root)?, DirCursor::open(self.staging)?));
        }
        let Some((from_dirs, to_dirs)) = self.cursors.as_mut() else {
            return Err(io::Error::other("no open directory"));
        };
        let (from_dir, from_name) = from_dirs.locate(from_rel)?;
        let (to_dir, to_name) = to_dirs.locate(rel)?;
        rustix::fs::linkat(
            from_dir,
            from_name,
            to_dir,
            to_name,
            rustix::fs::AtFlags::empty(),
        )?;
        Ok(())
    }

    /// Hardlinks entry `index` from `from_rel` (whose identity was
    /// `before`), or copies it when the file system refuses the link, then
    /// proves the source is still the same file: same inode, size, mode
    /// and mtime as `before` (a link moves only its ctime).
    fn link(
        &mut self,
        index: usize,
        from_rel: &str,
        before: &FileIdentity,
    ) -> Result<(), (usize, StageError)> {
        let entry_io = |action: &'static str, path: &Path| {
            let to_error = io_at(action, path);
            move |source| (index, to_error(source))
        };
        let rel = &self.manifest.files[index].path;
        let root = self.root;
        let from = || root.join(from_rel);
        let linked = match self.link_at(root, from_rel, rel) {
            Ok(()) => true,
            // A file system or a policy that refuses the link (EXDEV,
            // EMLINK, EPERM under protected_hardlinks): the same bytes,
            // copied, with the entry's mode.
            Err(_) => {
                let path = self.staging.join(rel);
                copy_unchanged(&from(), &path, self.manifest.files[index].mode.0, self.sync)
                    .map_err(|e| (index, e))?;
                false
            }
        };
        let after = match self.cursors.as_mut() {
            Some((from_dirs, _)) => from_dirs.identity(from_rel),
            None => FileIdentity::of_path(&from()),
        }
        .map_err(entry_io("stat", &from()))?;
        if !before.same_but_ctime(&after) {
            return Err((
                index,
                StageError::Io {
                    action: "hardlink",
                    path: from(),
                    source: io::Error::other(
                        "the running release's file changed while it was linked; \
                         run `slipway verify` and try again",
                    ),
                },
            ));
        }
        if !linked {
            return Ok(());
        }
        if self.linked.entries.is_empty() {
            crate::fault::at_point("hardlink");
        }
        self.linked.inodes.insert(*before, after);
        self.linked.entries.push((index, *before));
        Ok(())
    }
}

/// Copies an unchanged file of the running release (its identity still the
/// recorded one, so its bytes are the manifest's) when it cannot be linked.
fn copy_unchanged(from: &Path, to: &Path, mode: u32, sync: SyncMode) -> Result<(), StageError> {
    let mut src = File::open(from).map_err(io_at("open", from))?;
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(io_at("create", to))?;
    io::copy(&mut src, &mut dst).map_err(io_at("copy into", to))?;
    finish_file(dst, to, mode, sync)
}

/// Gives a written file its final read-only mode (independent of the
/// umask) and, in per-file mode, fsyncs it.
fn finish_file(file: File, path: &Path, mode: u32, sync: SyncMode) -> Result<(), StageError> {
    file.set_permissions(fs::Permissions::from_mode(read_only(mode)))
        .map_err(io_at("set the mode of", path))?;
    if sync == SyncMode::PerFile {
        file.sync_all().map_err(io_at("fsync", path))?;
    }
    Ok(())
}

/// The walking thread's side, the [`EntrySink`] of [`walk_release`]:
/// queues what to create in batches.
struct Writer<'a> {
    staging: &'a Path,
    /// The batch being filled.
    batch: Batch,
    /// To the writing thread (`None` once closed).
    batches: Option<mpsc::SyncSender<Batch>>,
    /// Batches the hashing thread is done with.
    free_batches: mpsc::Receiver<Batch>,
    /// Raised by the writing or hashing thread at the first error.
    failed: &'a AtomicBool,
    sync: SyncMode,
    /// The running release's files, to link instead of write.
    link_from: Option<&'a LinkSource>,
    /// Looks them up ([`LinkSource::dir`]); opened at the first lookup.
    link_cursor: Option<DirCursor>,
    /// Where the archive's bytes of a linked file are read to and dropped.
    drain: Vec<u8>,
    /// For a delta: the running release's files by digest.
    delta_base: Option<&'a crate::delta::DeltaBase<'a>>,
    id: ReleaseId,
}

impl EntrySink for Writer<'_> {
    type Error = StageError;

    /// Writes `slipway/manifest.json` (the walk compared it with the
    /// verified manifest). It is the first entry, so it is written here,
    /// before any batch.
    fn manifest(&mut self, bytes: &[u8]) -> Result<(), StageError> {
        let dir = self.staging.join("slipway");
        DirBuilder::new()
            .mode(0o755)
            .create(&dir)
            .map_err(io_at("create directory", &dir))?;
        let path = self.staging.join(MANIFEST_PATH);
        let mut file = create_file(&path).map_err(io_at("create", &path))?;
        file.write_all(bytes).map_err(io_at("write", &path))?;
        finish_file(file, &path, 0o644, self.sync)
    }

    fn entry(
        &mut self,
        index: usize,
        expected: &FileEntry,
        content: &mut impl Read,
    ) -> Result<(), SinkError<StageError>> {
        match expected.kind {
            EntryType::Dir => self.push(Op::Dir(index))?,
            EntryType::Symlink => self.push(Op::Symlink(index))?,
            EntryType::File => match self.link_source(expected) {
                Some((from, identity)) => {
                    self.link_file(expected, index, from, identity, content)?
                }
                None => self.write_file(expected, index, content)?,
            },
        }
        Ok(())
    }

    /// A file the delta leaves out: hardlinked from the running release
    /// when its identity record still holds (as for an unchanged file of a
    /// full archive), else copied from the running release's file with its
    /// digest and hashed against the manifest like any written file.
    fn omitted(&mut self, index: usize, expected: &FileEntry) -> Result<(), SinkError<StageError>> {
        if let Some((from, identity)) = self.link_source(expected) {
            return Ok(self.queue_link(index, from, identity)?);
        }
        let id = self.id;
        let base_error = |from: PathBuf, source: io::Error| StageError::BaseFile {
            id,
            path: expected.path.clone(),
            from,
            source,
        };
        let Some(base) = self.delta_base else {
            return Err(SinkError::Sink(base_error(
                PathBuf::new(),
                io::Error::other("no base release"),
            )));
        };
        let mut content = base
            .open(expected)
            .map_err(|e| SinkError::Sink(base_error(PathBuf::new(), e)))?;
        self.write_file(expected, index, &mut content)
            .map_err(|e| match e {
                SinkError::Read(e) => SinkError::Sink(base_error(content.path.clone(), e)),
                other => other,
            })?;
        if !content.complete() {
            return Err(SinkError::Sink(base_error(
                content.path.clone(),
                io::Error::other("it is shorter than the new manifest says"),
            )));
        }
        Ok(())
    }

    fn stopped(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

impl Writer<'_> {
    /// The running release's file to link for `expected`
    /// ([`LinkSource::source_for`]).
    fn link_source(&mut self, expected: &FileEntry) -> Option<(String, FileIdentity)> {
        let link_from = self.link_from?;
        if self.link_cursor.is_none() {
            self.link_cursor = DirCursor::open(&link_from.dir).ok();
        }
        link_from.source_for(expected, self.link_cursor.as_mut()?)
    }

    /// Passes the batch to the writing thread and takes a free one.
    fn ship(&mut self) -> Result<(), StageError> {
        let stopped = || hashing_stopped(self.staging);
        if self.batch.ops.is_empty() {
            self.batch.filled = 0;
            return Ok(());
        }
        let next = self.free_batches.recv().map_err(|_| stopped())?;
        let full = std::mem::replace(&mut self.batch, next);
        match &self.batches {
            Some(batches) => batches.send(full).map_err(|_| stopped()),
            None => Err(stopped()),
        }
    }

    /// Queues an order, shipping the batch first if it holds enough.
    fn push(&mut self, op: Op) -> Result<(), StageError> {
        if self.batch.ops.len() >= BATCH_OPS {
            self.ship()?;
        }
        self.batch.ops.push(op);
        Ok(())
    }

    /// Queues a hardlink of `from` (checked just now: its identity is the
    /// recorded one, so its content is the manifest's) for a file whose
    /// digest and mode are unchanged. The archive's bytes of the file are
    /// still read, for the walk verifies the stream as a whole, but they
    /// are neither written nor hashed: the linked content is proven by the
    /// running release's manifest entry, which has this digest.
    fn link_file(
        &mut self,
        expected: &FileEntry,
        index: usize,
        from: String,
        identity: FileIdentity,
        content: &mut impl Read,
    ) -> Result<(), SinkError<StageError>> {
        let size = expected.size.unwrap_or(0);
        if self.drain.is_empty() {
            self.drain = vec![0u8; 256 * 1024];
        }
        let mut read: u64 = 0;
        while read < size {
            let want = self
                .drain
                .len()
                .min(usize::try_from(size - read).unwrap_or(usize::MAX));
            let n = match content.read(&mut self.drain[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(SinkError::Read(e)),
            };
            read += n as u64;
        }
        if read < size {
            // Cut short: the walk reports it.
            return Ok(());
        }
        self.queue_link(index, from, identity)?;
        Ok(())
    }

    /// Queues the hardlink order of [`Writer::link_file`], for a file
    /// whose content the archive holds (already drained) or leaves out.
    fn queue_link(
        &mut self,
        index: usize,
        from: String,
        identity: FileIdentity,
    ) -> Result<(), StageError> {
        // The order and its source go in one batch.
        if self.batch.ops.len() >= BATCH_OPS {
            self.ship()?;
        }
        self.batch.sources.push((from, identity));
        let source = self.batch.sources.len() - 1;
        self.batch.ops.push(Op::Link { index, source });
        Ok(())
    }

    /// Reads a file's content from the archive into the batch, for the
    /// writing thread to write and the hashing thread to hash. A file cut
    /// short is never closed, so never hashed: the walk reports its size.
    fn write_file(
        &mut self,
        expected: &FileEntry,
        index: usize,
        content: &mut impl Read,
    ) -> Result<(), SinkError<StageError>> {
        let size = expected.size.unwrap_or(0);
        self.push(Op::Open(index))?;
        let mut read: u64 = 0;
        while read < size {
            // The data and the order that refers to it go in one batch.
            if self.batch.filled == BATCH_BYTES || self.batch.ops.len() >= BATCH_OPS {
                self.ship()?;
            }
            let start = self.batch.filled;
            let room = &mut self.batch.buf[start..];
            let want = room
                .len()
                .min(usize::try_from(size - read).unwrap_or(usize::MAX));
            let n = match content.read(&mut room[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(SinkError::Read(e)),
            };
            self.batch.filled += n;
            self.batch.ops.push(Op::Data {
                start,
                end: start + n,
            });
            read += n as u64;
        }
        if read == size {
            self.push(Op::Close(index))?;
        }
        Ok(())
    }
}

/// The installed mode for a manifest mode: write bits dropped.
fn read_only(mode: u32) -> u32 {
    mode & 0o555
}

/// Creates a new file: never an existing one (`O_EXCL`), never through a
/// symlink (`O_NOFOLLOW`).
fn create_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

/// Every directory of a completely staged tree, children before parents,
/// the staging directory itself last: `slipway/` and the manifest's
/// directories, which staging created one to one.
fn staged_dirs(staging: &Path, manifest: &Manifest) -> Vec<PathBuf> {
    let listed = manifest
        .files
        .iter()
        .filter(|e| e.kind == EntryType::Dir)
        .map(|e| staging.join(&e.path));
    let mut dirs: Vec<PathBuf> = std::iter::once(staging.join("slipway"))
        .chain(listed)
        .collect();
    dirs.reverse();
    dirs.push(staging.to_path_buf());
    dirs
}

/// Makes the staged tree read-only and durable.
fn seal(
    staging: &Path,
    root: &File,
    manifest: &Manifest,
    options: StageOptions,
) -> Result<(), StageError> {
    let dirs = staged_dirs(staging, manifest);
    let sealed = fs::Permissions::from_mode(0o555);
    for dir in &dirs {
        fs::set_permissions(dir, sealed.clone()).map_err(io_at("make read-only", dir))?;
    }
    match options.sync {
        SyncMode::Filesystem => {
            rustix::fs::syncfs(root)
                .map_err(|e| io::Error::from_raw_os_error(e.raw_os_error()))
                .map_err(io_at("syncfs the file system holding", staging))?;
        }
        SyncMode::PerFile => {
            for dir in &dirs {
                durable::fsync_dir(dir).map_err(io_at("fsync", dir))?;
            }
        }
    }
    Ok(())
}

/// Renames the staged tree to its final name and fsyncs `releases/`. An
/// existing (unclean) release directory is swapped out atomically where the
/// file system allows it, then removed.
fn move_into_place(
    staging: &Path,
    final_dir: &Path,
    replace: bool,
    releases_dir: &Path,
) -> Result<(), StageError> {
    let mut swapped = false;
    if replace {
        swapped = rustix::fs::renameat_with(
            rustix::fs::CWD,
            staging,
            rustix::fs::CWD,
            final_dir,
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .is_ok();
        if swapped {
            // The old tree now sits at the staging name.
            durable::remove_tree(staging)
                .map_err(io_at("remove the replaced release", final_dir))?;
        } else {
            durable::remove_tree(final_dir)
                .map_err(io_at("remove the unclean release", final_dir))?;
        }
    }
    if !swapped {
        fs::rename(staging, final_dir).map_err(io_at("rename the staged release to", final_dir))?;
    }
    durable::fsync_dir(releases_dir).map_err(io_at("fsync", releases_dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_formats::manifest::MANIFEST_FORMAT;
    use slipway_formats::Hooks;

    fn manifest(files: Vec<FileEntry>) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            app: "bot".into(),
            version: "1.0.0".parse().unwrap(),
            channel: "stable".into(),
            created: 0,
            source: None,
            schema_version: 0,
            schema_min_compatible: 0,
            hooks: Hooks::default(),
            runtime_paths: Vec::new(),
            probation: false,
            files,
        }
    }

    fn io_error(action: &'static str) -> StageError {
        StageError::Io {
            action,
            path: PathBuf::from("x"),
            source: io::Error::other("x"),
        }
    }

    /// The writing thread stops at its first failure but still passes on
    /// every order before it, so the hashing thread checks the files that
    /// were completed first, and their mismatch is the error reported.
    #[test]
    fn files_completed_before_a_write_failure_are_still_hashed() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("app")).unwrap();
        let sha_of_x = hex::encode(Sha256::digest(b"x"));
        let m = manifest(vec![
            FileEntry::dir("app"),
            FileEntry::file("app/a", false, 3, hex::encode([0u8; 32])),
            FileEntry::file("app/missing/b", false, 1, sha_of_x),
        ]);
        let mut batch = Batch::new();
        batch.buf[..4].copy_from_slice(b"abcx");
        batch.filled = 4;
        batch.ops = vec![
            Op::Open(1),
            Op::Data { start: 0, end: 3 },
            Op::Close(1),
            Op::Open(2),
            Op::Data { start: 3, end: 4 },
            Op::Close(2),
        ];
        let failed = AtomicBool::new(false);
        let (batch_tx, batch_rx) = mpsc::sync_channel(1);
        let (written_tx, written_rx) = mpsc::sync_channel(1);
        let (free_tx, _free_rx) = mpsc::sync_channel(1);
        batch_tx.send(batch).unwrap();
        drop(batch_tx);
        let files = FileWriter {
            staging: dir.path(),
            manifest: &m,
            sync: SyncMode::Filesystem,
            nudge: None,
            unsynced: 0,
            open: None,
            linker: None,
            helper: None,
            pending: Vec::new(),
            last_parent: String::new(),
            helpers_turn: false,
        };
        let (i, e) = write_batches(files, batch_rx, written_tx, &failed)
            .0
            .expect("write failure");
        assert_eq!(i, 2);
        assert!(
            matches!(
                e,
                StageError::Io {
                    action: "create",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(failed.load(Ordering::Relaxed));
        assert_eq!(fs::read(dir.path().join("app/a")).unwrap(), b"abc");
        let (i, e) = hash_batches(&m, written_rx, free_tx, &failed).expect("mismatch");
        assert_eq!(i, 1);
        assert!(
            matches!(&e, EntryError::HashMismatch { path, .. } if path == "app/a"),
            "{e:?}"
        );
    }

    #[test]
    fn the_earliest_entry_error_is_reported() {
        let pick = |m: Option<usize>, w: Option<usize>| {
            let mismatch = m.map(|i| (i, io_error("mismatch")));
            let write = w.map(|i| (i, io_error("write")));
            match earliest(mismatch, write) {
                Some(StageError::Io { action, .. }) => Some(action),
                _ => None,
            }
        };
        assert_eq!(pick(Some(1), Some(2)), Some("mismatch"));
        assert_eq!(pick(Some(3), Some(2)), Some("write"));
        assert_eq!(pick(Some(2), Some(2)), Some("mismatch"));
        assert_eq!(pick(None, Some(2)), Some("write"));
        assert_eq!(pick(Some(2), None), Some("mismatch"));
        assert_eq!(pick(None, None), None);
    }
}

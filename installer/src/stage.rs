//! Step 5 of the transaction: unpack a verified release into
//! `releases/<version>-<id12>`, checking every entry against the manifest
//! while writing it.
//!
//! [`stage_release`] reads from the descriptor [`crate::verify`] checked and
//! unpacks into a fresh `releases/.staging-<id12>-<pid>` directory. It walks
//! the tar entries itself (the tar crate's `unpack` skips `..` entries
//! silently, strips leading `/`, never checks symlink targets and writes
//! unknown types as files) and requires them to be exactly the manifest's
//! entries, one to one and in order: same path, type, mode, size, content hash
//! and symlink target. Everything SPEC §6 lists is refused with the entry
//! named. Files are created with `O_EXCL | O_NOFOLLOW` under directories this
//! run created, so nothing is ever written outside the staging directory.
//!
//! The compressed bytes are hashed again as they are read, with the keyed
//! BLAKE3 the verification computed over the bytes it checked
//! ([`Recheck`]): an archive rewritten between verify and stage is refused.
//!
//! Four threads share the work, each fed through a bounded queue of
//! recycled buffers: one reads, re-hashes and decompresses, this one
//! parses, checks and writes, one hashes what was written
//! (every file's digest is compared before staging succeeds, and a mismatch
//! is reported ahead of any later error), and, with [`SyncMode::Filesystem`],
//! one runs a `syncfs(2)` every 128 MiB written so that writeback overlaps
//! the unpacking instead of all waiting for the final syncfs. Decompressed bytes are counted against what the manifest
//! allows, so a decompression bomb stops at the limit, and at every point the
//! tar reader may buffer at most a header's worth of data.
//!
//! On success the tree is made read-only, made durable and renamed into
//! place. On any error the staging directory is removed: a refused release
//! leaves nothing behind but the error the caller logs.

use std::cell::Cell;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use sha2::{Digest, Sha256};
use slipway_formats::path::{validate_entry_path, PathError, MAX_PATH_BYTES};
use slipway_formats::{EntryType, FileEntry, Manifest, ReleaseId, MANIFEST_PATH};
use thiserror::Error;

use crate::diff::verify_installed;
use crate::durable;
use crate::verify::{
    describe_tar_type, is_window_error, Recheck, VerifiedArchive, ZSTD_WINDOW_LOG_MAX,
};

/// The copy buffer, and the compressed read buffer.
const BUFFER: usize = 256 * 1024;

/// Decompressed bytes the tar reader may consume for one entry's headers
/// (the 512-byte header, PAX and GNU long-name records, padding) on top of
/// the longest path and link target the manifest lists.
const HEADER_ALLOWANCE: u64 = 16 * 1024;

/// Slack on the whole-archive decompression limit (end-of-archive blocks,
/// record padding).
const TOTAL_SLACK: u64 = 1024 * 1024;

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
pub struct StageOptions {
    pub sync: SyncMode,
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
    options: StageOptions,
) -> Result<PathBuf, StageError> {
    let result = stage_inner(verified, releases_dir, options);
    // Best effort: a later reader of the same descriptor starts from 0.
    let _ = verified.file.seek(SeekFrom::Start(0));
    result
}

fn stage_inner(
    verified: &mut VerifiedArchive,
    releases_dir: &Path,
    options: StageOptions,
) -> Result<PathBuf, StageError> {
    let id = verified.id;
    let final_dir = releases_dir.join(verified.manifest.release_dir_name(&id));
    let meta = fs::metadata(releases_dir).map_err(|source| StageError::Io {
        action: "use the releases directory",
        path: releases_dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(StageError::Io {
            action: "use the releases directory",
            path: releases_dir.to_path_buf(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        });
    }

    let existing = fs::symlink_metadata(&final_dir).ok();
    if existing.as_ref().is_some_and(|m| m.is_dir()) && is_clean(&final_dir, verified) {
        return Ok(final_dir);
    }

    let staging = releases_dir.join(format!(".staging-{}-{}", id.short(), std::process::id()));
    let io_at = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| StageError::Io {
            action,
            path,
            source,
        }
    };
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
            let dirs = unpack(verified, &staging, options)?;
            seal(&staging, &root, &dirs, options)
        })
        .and_then(|()| move_into_place(&staging, &final_dir, existing.is_some(), releases_dir));
    match staged {
        Ok(()) => Ok(final_dir),
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

/// Whether an existing release directory already holds exactly this release.
fn is_clean(dir: &Path, verified: &VerifiedArchive) -> bool {
    let manifest_same = fs::read(dir.join(MANIFEST_PATH))
        .map(|bytes| bytes == verified.manifest_bytes)
        .unwrap_or(false);
    manifest_same
        && verify_installed(dir, &verified.manifest)
            .map(|drift| drift.is_empty())
            .unwrap_or(false)
}

/// Counts decompressed bytes and refuses to hand out more than `limit`.
struct Budget {
    used: Cell<u64>,
    limit: Cell<u64>,
    total: u64,
    tripped: Cell<bool>,
}

impl Budget {
    /// Allows `more` bytes past what has been used so far, never past the
    /// whole-archive total.
    fn allow(&self, more: u64) {
        self.limit
            .set(self.used.get().saturating_add(more).min(self.total));
    }
}

struct BudgetReader<R> {
    inner: R,
    budget: Rc<Budget>,
}

impl<R: Read> Read for BudgetReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let b = &self.budget;
        let left = b.limit.get().saturating_sub(b.used.get());
        if left == 0 {
            // One probe byte tells a stream that ends here from one that goes on.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    b.tripped.set(true);
                    Err(io::Error::other("decompressed data exceeds the limit"))
                }
            };
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        b.used.set(b.used.get() + n as u64);
        Ok(n)
    }
}

/// Hashes every byte read from the archive file with the verification's
/// keyed BLAKE3 ([`Recheck`]), in line: at several GB/s it costs a fraction
/// of decompressing.
struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The most decompressed bytes a release may produce: its files, its
/// manifest, five blocks per entry (header, PAX header and record, padding,
/// spare), the length of every path and target twice over (long PAX
/// records), and slack.
fn decompression_limit(manifest: &Manifest, manifest_len: u64) -> u64 {
    let entries = manifest.files.len() as u64 + 1;
    let names = manifest
        .files
        .iter()
        .map(|e| e.path.len() as u64 + e.target.as_ref().map_or(0, |t| t.len() as u64))
        .fold(0u64, u64::saturating_add);
    manifest
        .total_size()
        .saturating_add(manifest_len)
        .saturating_add((entries + 4).saturating_mul(5 * 512))
        .saturating_add(names.saturating_mul(2))
        .saturating_add(TOTAL_SLACK)
}

/// Unpacks and checks every entry into `staging`; returns the directories
/// created, parents before children.
///
/// One thread reads, re-hashes ([`Recheck`]) and decompresses the archive;
/// this one parses, checks and writes
/// ([`check_and_write`]). They meet in a bounded channel, so at most
/// [`CHUNKS_IN_FLIGHT`] chunks are ever held.
fn unpack(
    verified: &mut VerifiedArchive,
    staging: &Path,
    options: StageOptions,
) -> Result<Vec<PathBuf>, StageError> {
    let id = verified.id;
    let archive_path = verified.path.clone();
    verified
        .file
        .seek(SeekFrom::Start(0))
        .map_err(|source| StageError::Io {
            action: "rewind the archive",
            path: archive_path.clone(),
            source,
        })?;
    let file = &mut verified.file;
    let recheck = &verified.recheck;
    let manifest = &verified.manifest;
    let manifest_bytes = &verified.manifest_bytes;
    std::thread::scope(|scope| {
        let (chunks, chunk_rx) = mpsc::sync_channel(CHUNKS_IN_FLIGHT);
        let (spare_tx, spares) = mpsc::channel();
        let producer = scope.spawn(move || decompress(file, recheck, &chunks, &spares));
        let reader = ChannelReader {
            chunks: chunk_rx,
            chunk: Vec::new(),
            pos: 0,
            spares: spare_tx,
            failed: false,
        };
        // The reader is dropped when this returns, which stops the producer
        // early if the archive was refused half way.
        let checked = check_and_write(reader, id, manifest, manifest_bytes, staging, options);
        let produced = producer.join();
        let dirs = checked?;
        let same = match produced {
            Ok(Ok(Some(same))) => same,
            Ok(Ok(None)) => {
                return Err(StageError::Corrupt {
                    id,
                    reason: "decompression stopped early".into(),
                })
            }
            Ok(Err(source)) => {
                return Err(StageError::Io {
                    action: "read the archive",
                    path: archive_path,
                    source,
                })
            }
            Err(_) => {
                return Err(StageError::Corrupt {
                    id,
                    reason: "the decompression thread panicked".into(),
                })
            }
        };
        if !same {
            return Err(StageError::ArchiveChanged {
                path: archive_path,
                id,
            });
        }
        Ok(dirs)
    })
}

/// Decompressed chunks buffered between the two threads.
const CHUNKS_IN_FLIGHT: usize = 4;

/// The decompressing side: reads the whole file through the keyed hash,
/// decompresses it and sends the output in chunks. Returns whether the
/// file's bytes are the verified ones, `None` if the consumer stopped
/// listening or decoding failed (the error went down the channel), or an
/// error reading the file after the stream.
fn decompress(
    file: &mut File,
    recheck: &Recheck,
    chunks: &mpsc::SyncSender<io::Result<Vec<u8>>>,
    spares: &mpsc::Receiver<Vec<u8>>,
) -> io::Result<Option<bool>> {
    let hashing = HashingReader {
        inner: file,
        hasher: recheck.hasher(),
    };
    let hasher = decompress_from(hashing, chunks, spares)?;
    Ok(hasher.map(|h| recheck.matches(&h)))
}

/// Decompresses everything `hashing` reads and sends it on; then reads the
/// file to its end (through the hash) and returns the hash of the whole
/// file. Returns `None` if the consumer stopped listening or decoding
/// failed (the error went down the channel).
fn decompress_from(
    hashing: HashingReader<&mut File>,
    chunks: &mpsc::SyncSender<io::Result<Vec<u8>>>,
    spares: &mpsc::Receiver<Vec<u8>>,
) -> io::Result<Option<blake3::Hasher>> {
    let buffered = BufReader::with_capacity(BUFFER, hashing);
    let mut decoder = match zstd::stream::read::Decoder::with_buffer(buffered) {
        Ok(d) => d,
        Err(e) => {
            let _ = chunks.send(Err(e));
            return Ok(None);
        }
    };
    if let Err(e) = decoder.window_log_max(ZSTD_WINDOW_LOG_MAX) {
        let _ = chunks.send(Err(e));
        return Ok(None);
    }
    loop {
        let mut chunk = spares.try_recv().unwrap_or_default();
        chunk.resize(BUFFER, 0);
        let mut filled = 0;
        while filled < chunk.len() {
            match decoder.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = chunks.send(Err(e));
                    return Ok(None);
                }
            }
        }
        if filled == 0 {
            break;
        }
        chunk.truncate(filled);
        if chunks.send(Ok(chunk)).is_err() {
            return Ok(None);
        }
    }
    // Whatever zstd did not need (nothing, for a well-formed file) is hashed too.
    let mut hashing = decoder.into_inner().into_inner();
    let mut sink = vec![0u8; 64 * 1024];
    loop {
        match hashing.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(hashing.hasher))
}

/// The consuming side of the channel, as a reader. Emptied chunks go back
/// to the producer for reuse.
struct ChannelReader {
    chunks: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
    spares: mpsc::Sender<Vec<u8>>,
    failed: bool,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::other("decompression failed earlier"));
        }
        while self.pos == self.chunk.len() {
            let used = std::mem::take(&mut self.chunk);
            if used.capacity() > 0 {
                let _ = self.spares.send(used);
            }
            self.pos = 0;
            match self.chunks.recv() {
                Ok(Ok(chunk)) => self.chunk = chunk,
                Ok(Err(e)) => {
                    self.failed = true;
                    return Err(e);
                }
                // The producer is done: end of the decompressed stream.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// File contents are hashed on their own thread, from staging buffers of
/// this size that the writer fills, writes out and passes on.
const HASH_STAGE: usize = 1024 * 1024;
/// Staging buffers in all (one being filled, the others queued for or being
/// hashed): bounds that memory to `HASH_STAGES` × `HASH_STAGE`.
const HASH_STAGES: usize = 3;

/// The checking side: walks the tar entries, checks each against the
/// manifest and writes it under `staging`, while a second thread hashes
/// what was written. Every content hash is compared before this returns;
/// a mismatch is reported ahead of any later error, as if the entries had
/// been hashed in line.
fn check_and_write(
    reader: ChannelReader,
    id: ReleaseId,
    manifest: &Manifest,
    manifest_bytes: &[u8],
    staging: &Path,
    options: StageOptions,
) -> Result<Vec<PathBuf>, StageError> {
    let hash_failed = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (stage_tx, stage_rx) = mpsc::sync_channel::<HashStage>(HASH_STAGES);
        let (free_tx, free_rx) = mpsc::sync_channel::<HashStage>(HASH_STAGES);
        for _ in 1..HASH_STAGES {
            let _ = free_tx.try_send(HashStage::new());
        }
        let failed = &hash_failed;
        let hasher = scope.spawn(move || hash_files(id, manifest, stage_rx, free_tx, failed));
        let (nudge, write_back) = match options.sync {
            SyncMode::Filesystem => {
                let dir = File::open(staging).map_err(|source| StageError::Io {
                    action: "open",
                    path: staging.to_path_buf(),
                    source,
                })?;
                let (nudge, nudges) = mpsc::sync_channel::<()>(1);
                (
                    Some(nudge),
                    Some(scope.spawn(move || write_back(&dir, nudges))),
                )
            }
            SyncMode::PerFile => (None, None),
        };
        let mut writer = Writer {
            id,
            staging,
            stage: HashStage::new(),
            stages: Some(stage_tx),
            free_stages: free_rx,
            hash_failed: &hash_failed,
            sync: options.sync,
            nudge,
            unsynced: 0,
            dirs: Vec::new(),
        };
        let walked = walk_entries(reader, id, manifest, manifest_bytes, &mut writer);
        // The last, partly filled buffer; then the hasher sees the end.
        let shipped = writer.ship_stage();
        let Writer {
            dirs,
            stages,
            nudge,
            ..
        } = writer;
        drop(stages);
        drop(nudge);
        let mismatch = hasher.join().map_err(|_| hashing_stopped(staging))?;
        let synced = write_back.map(|t| t.join());
        if let Some(mismatch) = mismatch {
            return Err(mismatch);
        }
        walked?;
        shipped.map_err(|e| e.or_read(|_| hashing_stopped(staging)))?;
        let sync_error = |source| StageError::Io {
            action: "syncfs the file system holding",
            path: staging.to_path_buf(),
            source,
        };
        match synced {
            Some(Ok(Err(e))) => return Err(sync_error(e)),
            Some(Err(_)) => return Err(sync_error(io::Error::other("the thread panicked"))),
            Some(Ok(Ok(()))) | None => {}
        }
        Ok(dirs)
    })
}

/// With [`SyncMode::Filesystem`], the writer nudges the write-back thread
/// after every this many bytes of file content.
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
        action: "hash the files written under",
        path: staging.to_path_buf(),
        source: io::Error::other("the hashing thread stopped"),
    }
}

/// Walks the tar entries, checks each against the manifest and hands it to
/// `writer`.
fn walk_entries(
    reader: ChannelReader,
    id: ReleaseId,
    manifest: &Manifest,
    manifest_bytes: &[u8],
    writer: &mut Writer<'_>,
) -> Result<(), StageError> {
    let longest_name = manifest
        .files
        .iter()
        .map(|e| e.target.as_ref().map_or(0, String::len))
        .max()
        .unwrap_or(0) as u64
        + MAX_PATH_BYTES as u64;
    let header_allowance = HEADER_ALLOWANCE + 2 * longest_name;
    let total = decompression_limit(manifest, manifest_bytes.len() as u64);
    let budget = Rc::new(Budget {
        used: Cell::new(0),
        limit: Cell::new(0),
        total,
        tripped: Cell::new(false),
    });
    budget.allow(header_allowance);

    let mut tar = tar::Archive::new(BudgetReader {
        inner: reader,
        budget: Rc::clone(&budget),
    });

    let mut near = String::from("(start of archive)");
    let read_error = |e: io::Error, near: &str| {
        if budget.tripped.get() {
            StageError::DecompressionBomb {
                id,
                limit: total,
                near: near.to_string(),
            }
        } else if is_window_error(&e) {
            StageError::WindowTooLarge { id }
        } else {
            StageError::Corrupt {
                id,
                reason: format!("{e} (near entry {near:?})"),
            }
        }
    };

    let mut next = 0usize;
    let mut seen_manifest = false;
    {
        let mut entries = tar.entries().map_err(|e| read_error(e, &near))?;
        loop {
            let mut entry = match entries.next() {
                None => break,
                Some(Ok(entry)) => entry,
                Some(Err(e)) => return Err(read_error(e, &near)),
            };
            let header_kind = entry.header().entry_type();
            let raw_path = entry.path_bytes().into_owned();
            near = String::from_utf8_lossy(&raw_path).into_owned();

            if !seen_manifest {
                if raw_path != MANIFEST_PATH.as_bytes() {
                    return Err(StageError::FirstEntryNotManifest { id, found: near });
                }
                if header_kind != tar::EntryType::Regular
                    || entry.size() != manifest_bytes.len() as u64
                {
                    return Err(StageError::ManifestChanged { id });
                }
                check_header_mode(id, &near, entry.header(), EntryType::File)?;
                budget.allow(entry.size() + header_allowance);
                writer
                    .write_manifest(&mut entry, manifest_bytes)
                    .map_err(|e| e.or_read(|e| read_error(e, &near)))?;
                seen_manifest = true;
                budget.allow(header_allowance);
                continue;
            }

            let path = checked_path(id, &raw_path, header_kind)?;
            let kind = allowed_type(id, path, header_kind)?;
            refuse_sparse_pax(id, path, &mut entry)?;
            let mode = check_header_mode(id, path, entry.header(), kind)?;
            let expected = match manifest.files.get(next) {
                Some(e) if e.path == path => e,
                other => return Err(misplaced(id, manifest, path, other)),
            };
            next += 1;
            compare_header(id, expected, kind, mode, &entry)?;

            budget.allow(entry.size() + header_allowance);
            writer
                .write_entry(expected, next - 1, &mut entry)
                .map_err(|e| e.or_read(|e| read_error(e, &near)))?;
            budget.allow(header_allowance);
            if writer.hash_failed.load(Ordering::Relaxed) {
                // The caller reports the mismatch; nothing after it counts.
                return Ok(());
            }
        }
    }
    if !seen_manifest {
        return Err(StageError::FirstEntryNotManifest {
            id,
            found: "(no entry at all)".to_string(),
        });
    }
    if let Some(missing) = manifest.files.get(next) {
        return Err(StageError::Missing {
            id,
            path: missing.path.clone(),
        });
    }

    // Whatever follows the end-of-archive blocks must be zeros (record
    // padding), within the same budget.
    budget.allow(u64::MAX);
    let mut rest = tar.into_inner();
    near = "(end of archive)".to_string();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match rest.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(e, &near)),
        };
        if buf[..n].iter().any(|&b| b != 0) {
            return Err(StageError::TrailingData { id });
        }
    }
    Ok(())
}

/// An entry's path as the manifest would spell it: UTF-8, one trailing `/`
/// dropped from directories, and valid by the path rules.
fn checked_path(id: ReleaseId, raw: &[u8], kind: tar::EntryType) -> Result<&str, StageError> {
    let text = std::str::from_utf8(raw).map_err(|_| StageError::NonUtf8Path {
        id,
        path: String::from_utf8_lossy(raw).into_owned(),
    })?;
    let text = match text.strip_suffix('/') {
        Some(stripped) if kind == tar::EntryType::Directory => stripped,
        _ => text,
    };
    validate_entry_path(text).map_err(|source| StageError::BadPath { id, source })?;
    Ok(text)
}

/// Maps a tar type to a manifest type, refusing everything else.
fn allowed_type(id: ReleaseId, path: &str, kind: tar::EntryType) -> Result<EntryType, StageError> {
    match kind {
        tar::EntryType::Regular => Ok(EntryType::File),
        tar::EntryType::Directory => Ok(EntryType::Dir),
        tar::EntryType::Symlink => Ok(EntryType::Symlink),
        other => Err(StageError::ForbiddenType {
            id,
            path: path.to_string(),
            kind: describe_tar_type(other),
        }),
    }
}

/// PAX-format sparse files look like regular files with `GNU.sparse.*`
/// records; the tar crate does not expand them, so refuse them by name.
fn refuse_sparse_pax<R: Read>(
    id: ReleaseId,
    path: &str,
    entry: &mut tar::Entry<'_, R>,
) -> Result<(), StageError> {
    let sparse = match entry.pax_extensions() {
        Ok(Some(exts)) => exts
            .filter_map(Result::ok)
            .any(|ext| ext.key_bytes().starts_with(b"GNU.sparse")),
        _ => false,
    };
    if sparse {
        return Err(StageError::ForbiddenType {
            id,
            path: path.to_string(),
            kind: "GNU sparse file (PAX)".to_string(),
        });
    }
    Ok(())
}

/// Reads the header's permission bits and refuses the dangerous ones by name.
fn check_header_mode(
    id: ReleaseId,
    path: &str,
    header: &tar::Header,
    kind: EntryType,
) -> Result<u32, StageError> {
    let mode = header.mode().map_err(|e| StageError::Corrupt {
        id,
        reason: format!("entry {path:?}: {e}"),
    })? & 0o7777;
    let what = if mode & 0o4000 != 0 {
        Some("setuid")
    } else if mode & 0o2000 != 0 {
        Some("setgid")
    } else if mode & 0o1000 != 0 {
        Some("sticky")
    } else if kind == EntryType::Symlink {
        // A symlink's permission bits mean nothing on Linux (always 0777).
        None
    } else if mode & 0o002 != 0 {
        Some("world-writable")
    } else if mode & 0o020 != 0 {
        Some("group-writable")
    } else {
        None
    };
    match what {
        Some(what) => Err(StageError::ForbiddenMode {
            id,
            path: path.to_string(),
            mode,
            what,
        }),
        None => Ok(mode),
    }
}

/// The error for an entry that is not the next one the manifest lists.
fn misplaced(
    id: ReleaseId,
    manifest: &Manifest,
    path: &str,
    expected: Option<&FileEntry>,
) -> StageError {
    if path == MANIFEST_PATH {
        return StageError::Duplicate {
            id,
            path: path.to_string(),
        };
    }
    let listed = manifest.entry(path).is_some();
    let already_passed = match expected {
        Some(e) => path.as_bytes() < e.path.as_bytes(),
        None => true,
    };
    if listed && already_passed {
        StageError::Duplicate {
            id,
            path: path.to_string(),
        }
    } else if !listed {
        StageError::NotInManifest {
            id,
            path: path.to_string(),
        }
    } else {
        StageError::Missing {
            id,
            path: expected.map(|e| e.path.clone()).unwrap_or_default(),
        }
    }
}

/// Compares an entry's header with its manifest entry: type, mode, size and
/// symlink target.
fn compare_header<R: Read>(
    id: ReleaseId,
    expected: &FileEntry,
    kind: EntryType,
    mode: u32,
    entry: &tar::Entry<'_, R>,
) -> Result<(), StageError> {
    let path = || expected.path.clone();
    if kind != expected.kind {
        return Err(StageError::TypeMismatch {
            id,
            path: path(),
            expected: expected.kind,
            found: kind.to_string(),
        });
    }
    if kind != EntryType::Symlink && mode != expected.mode.0 {
        return Err(StageError::ModeMismatch {
            id,
            path: path(),
            expected: expected.mode.0,
            found: mode,
        });
    }
    let size = entry.size();
    let expected_size = expected.size.unwrap_or(0);
    if size != expected_size {
        return Err(StageError::SizeMismatch {
            id,
            path: path(),
            expected: expected_size,
            found: size,
        });
    }
    if kind == EntryType::Symlink {
        let found = entry.link_name_bytes().unwrap_or_default();
        let wanted = expected.target.as_deref().unwrap_or_default();
        if found.as_ref() != wanted.as_bytes() {
            return Err(StageError::TargetMismatch {
                id,
                path: path(),
                expected: wanted.to_string(),
                found: String::from_utf8_lossy(&found).into_owned(),
            });
        }
    }
    Ok(())
}

/// A failure while writing an entry: either reading the archive (mapped by
/// the caller, who knows about the budget) or a refusal / local I/O error.
enum WriteError {
    Read(io::Error),
    Stage(StageError),
}

impl WriteError {
    fn or_read(self, map: impl FnOnce(io::Error) -> StageError) -> StageError {
        match self {
            WriteError::Read(e) => map(e),
            WriteError::Stage(e) => e,
        }
    }
}

impl From<StageError> for WriteError {
    fn from(e: StageError) -> Self {
        WriteError::Stage(e)
    }
}

/// A staging buffer of file contents on its way to the hashing thread:
/// `buf[..filled]`, described by `spans`.
struct HashStage {
    /// Always `HASH_STAGE` long (zeroed once, at allocation).
    buf: Vec<u8>,
    filled: usize,
    spans: Vec<Span>,
}

/// Part of a [`HashStage`].
enum Span {
    /// `buf[start..end]` is the next content of the current file.
    Data { start: usize, end: usize },
    /// The file that is manifest entry `i` is complete.
    End(usize),
}

impl HashStage {
    fn new() -> HashStage {
        HashStage {
            buf: vec![0u8; HASH_STAGE],
            filled: 0,
            spans: Vec::new(),
        }
    }
}

/// The hashing thread: hashes each file's content from the staging buffers
/// and compares the digest with the manifest at its end. Returns the first
/// mismatch, and raises `failed` so the writer stops early; drains the
/// queue to its end either way, so the writer never finds it closed.
fn hash_files(
    id: ReleaseId,
    manifest: &Manifest,
    stages: mpsc::Receiver<HashStage>,
    free: mpsc::SyncSender<HashStage>,
    failed: &AtomicBool,
) -> Option<StageError> {
    let mut sha = Sha256::new();
    let mut mismatch = None;
    for mut stage in stages {
        if mismatch.is_none() {
            for span in &stage.spans {
                match *span {
                    Span::Data { start, end } => sha.update(&stage.buf[start..end]),
                    Span::End(i) => {
                        let found = hex::encode(std::mem::take(&mut sha).finalize());
                        let expected = &manifest.files[i];
                        let wanted = expected.sha256.as_deref().unwrap_or_default();
                        if found != wanted {
                            mismatch = Some(StageError::HashMismatch {
                                id,
                                path: expected.path.clone(),
                                expected: wanted.to_string(),
                                found,
                            });
                            failed.store(true, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            }
        }
        stage.filled = 0;
        stage.spans.clear();
        let _ = free.try_send(stage);
    }
    mismatch
}

/// Creates entries under the staging directory.
struct Writer<'a> {
    id: ReleaseId,
    staging: &'a Path,
    /// File contents read and written, not yet passed to the hashing thread.
    stage: HashStage,
    /// To the hashing thread (`None` once closed).
    stages: Option<mpsc::SyncSender<HashStage>>,
    /// Buffers the hashing thread is done with.
    free_stages: mpsc::Receiver<HashStage>,
    /// Raised by the hashing thread at the first mismatch.
    hash_failed: &'a AtomicBool,
    sync: SyncMode,
    /// To the write-back thread ([`SyncMode::Filesystem`] only).
    nudge: Option<mpsc::SyncSender<()>>,
    /// File content written since the last nudge.
    unsynced: u64,
    /// Every directory created, parents first, to seal at the end.
    dirs: Vec<PathBuf>,
}

impl Writer<'_> {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> WriteError {
        let path = path.to_path_buf();
        move |source| {
            WriteError::Stage(StageError::Io {
                action,
                path,
                source,
            })
        }
    }

    /// Writes `slipway/manifest.json`, which must be byte-identical to the
    /// verified manifest.
    fn write_manifest(&mut self, entry: &mut impl Read, verified: &[u8]) -> Result<(), WriteError> {
        let mut bytes = Vec::with_capacity(verified.len());
        entry
            .take(verified.len() as u64)
            .read_to_end(&mut bytes)
            .map_err(WriteError::Read)?;
        if bytes != verified {
            return Err(StageError::ManifestChanged { id: self.id }.into());
        }
        let dir = self.staging.join("slipway");
        DirBuilder::new()
            .mode(0o755)
            .create(&dir)
            .map_err(Self::io("create directory", &dir))?;
        self.dirs.push(dir);
        let path = self.staging.join(MANIFEST_PATH);
        let mut file = create_file(&path).map_err(Self::io("create", &path))?;
        file.write_all(&bytes).map_err(Self::io("write", &path))?;
        self.finish_file(file, &path, 0o644)
    }

    /// Passes the staged contents to the hashing thread and takes a free
    /// buffer.
    fn ship_stage(&mut self) -> Result<(), WriteError> {
        let stopped = || WriteError::Stage(hashing_stopped(self.staging));
        if self.stage.spans.is_empty() {
            self.stage.filled = 0;
            return Ok(());
        }
        let next = self.free_stages.recv().map_err(|_| stopped())?;
        let full = std::mem::replace(&mut self.stage, next);
        match &self.stages {
            Some(stages) => stages.send(full).map_err(|_| stopped()),
            None => Err(stopped()),
        }
    }

    fn write_entry(
        &mut self,
        expected: &FileEntry,
        index: usize,
        entry: &mut impl Read,
    ) -> Result<(), WriteError> {
        let path = self.staging.join(&expected.path);
        match expected.kind {
            EntryType::Dir => {
                DirBuilder::new()
                    .mode(0o755)
                    .create(&path)
                    .map_err(Self::io("create directory", &path))?;
                self.dirs.push(path);
                Ok(())
            }
            EntryType::Symlink => {
                let target = expected.target.as_deref().unwrap_or_default();
                std::os::unix::fs::symlink(target, &path).map_err(Self::io("create symlink", &path))
            }
            EntryType::File => self.write_file(expected, index, entry, &path),
        }
    }

    /// Copies a file's content from the archive into a new file, through
    /// the staging buffer: its bytes are hashed on the hashing thread.
    fn write_file(
        &mut self,
        expected: &FileEntry,
        index: usize,
        entry: &mut impl Read,
        path: &Path,
    ) -> Result<(), WriteError> {
        let size = expected.size.unwrap_or(0);
        let mut file = create_file(path).map_err(Self::io("create", path))?;
        let mut written: u64 = 0;
        while written < size {
            if self.stage.filled == HASH_STAGE {
                self.ship_stage()?;
            }
            let start = self.stage.filled;
            let room = &mut self.stage.buf[start..];
            let want = room
                .len()
                .min(usize::try_from(size - written).unwrap_or(usize::MAX));
            let n = match entry.read(&mut room[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(WriteError::Read(e)),
            };
            file.write_all(&room[..n])
                .map_err(Self::io("write", path))?;
            self.stage.filled += n;
            self.stage.spans.push(Span::Data {
                start,
                end: start + n,
            });
            written += n as u64;
        }
        if written != size {
            return Err(StageError::SizeMismatch {
                id: self.id,
                path: expected.path.clone(),
                expected: size,
                found: written,
            }
            .into());
        }
        self.stage.spans.push(Span::End(index));
        self.unsynced += size;
        if self.unsynced >= WRITEBACK_EVERY {
            self.unsynced = 0;
            if let Some(nudge) = &self.nudge {
                // Still syncing: the next nudge will do.
                let _ = nudge.try_send(());
            }
        }
        self.finish_file(file, path, expected.mode.0)
    }

    /// Gives a written file its final read-only mode (independent of the
    /// umask) and, in per-file mode, fsyncs it.
    fn finish_file(&mut self, file: File, path: &Path, mode: u32) -> Result<(), WriteError> {
        file.set_permissions(fs::Permissions::from_mode(read_only(mode)))
            .map_err(Self::io("set the mode of", path))?;
        if self.sync == SyncMode::PerFile {
            file.sync_all().map_err(Self::io("fsync", path))?;
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

/// Makes the staged tree read-only and durable.
fn seal(
    staging: &Path,
    root: &File,
    dirs: &[PathBuf],
    options: StageOptions,
) -> Result<(), StageError> {
    let io_at = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| StageError::Io {
            action,
            path,
            source,
        }
    };
    let sealed = fs::Permissions::from_mode(0o555);
    for dir in dirs.iter().rev().map(PathBuf::as_path).chain([staging]) {
        fs::set_permissions(dir, sealed.clone()).map_err(io_at("make read-only", dir))?;
    }
    match options.sync {
        SyncMode::Filesystem => {
            rustix::fs::syncfs(root)
                .map_err(|e| io::Error::from_raw_os_error(e.raw_os_error()))
                .map_err(io_at("syncfs the file system holding", staging))?;
        }
        SyncMode::PerFile => {
            for dir in dirs.iter().rev().map(PathBuf::as_path).chain([staging]) {
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
    let io_at = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| StageError::Io {
            action,
            path,
            source,
        }
    };
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

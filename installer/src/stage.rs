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
//! Five threads share the work, each fed through a bounded queue of
//! recycled buffers: one reads, re-hashes and decompresses; this one parses
//! and checks every entry and queues what to create; one creates the
//! directories, symlinks and files; one hashes the file contents it wrote
//! (every file's digest is compared before staging succeeds, and the error
//! of the earliest entry is reported, as if all were done in line); and,
//! with [`SyncMode::Filesystem`], one runs a `syncfs(2)` every 128 MiB
//! written so that writeback overlaps the unpacking instead of all waiting
//! for the final syncfs. Decompressed bytes are counted against what the manifest
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

/// The compressed read buffer.
const BUFFER: usize = 256 * 1024;
/// Decompressed bytes are handed from the decompressing thread to the
/// parsing one in chunks this big: large enough that the two threads meet
/// (and wake each other) a thousand times per GiB, not four thousand.
const CHUNK: usize = 1024 * 1024;

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
            unpack(verified, &staging, options)?;
            seal(&staging, &root, &verified.manifest, options)
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

/// Unpacks and checks every entry into `staging`.
///
/// One thread reads, re-hashes ([`Recheck`]) and decompresses the archive;
/// this one parses, checks and writes
/// ([`check_and_write`]). They meet in a bounded channel, so at most
/// [`CHUNKS_IN_FLIGHT`] chunks are ever held.
fn unpack(
    verified: &mut VerifiedArchive,
    staging: &Path,
    options: StageOptions,
) -> Result<(), StageError> {
    let id = verified.id;
    let archive_path = verified.path.clone();
    verified
        .file
        .seek(SeekFrom::Start(0))
        .map_err(io_at("rewind the archive", &archive_path))?;
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
        checked?;
        let same = match produced {
            Ok(Ok(Some(same))) => same,
            Ok(Ok(None)) => {
                return Err(StageError::Corrupt {
                    id,
                    reason: "decompression stopped early".into(),
                })
            }
            Ok(Err(source)) => return Err(io_at("read the archive", &archive_path)(source)),
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
        Ok(())
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
        chunk.resize(CHUNK, 0);
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

/// The checking side: walks the tar entries and checks each against the
/// manifest on this thread, which queues what to create in batches. Two
/// threads carry them out in order: the writing thread creates the
/// directories, symlinks and files under `staging` ([`write_batches`]),
/// then the hashing thread hashes the file contents from the same buffers
/// ([`hash_batches`]). So parsing, the kernel's file creation and hashing
/// overlap. Every content hash is compared before this returns, and of the
/// errors the two threads found, the one for the earliest entry is
/// reported (a hash mismatch first if both concern the same entry), as if
/// everything had been done in line.
fn check_and_write(
    reader: ChannelReader,
    id: ReleaseId,
    manifest: &Manifest,
    manifest_bytes: &[u8],
    staging: &Path,
    options: StageOptions,
) -> Result<(), StageError> {
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
        };
        let writer_thread = scope.spawn(move || write_batches(files, batch_rx, written_tx, failed));
        let hasher = scope.spawn(move || hash_batches(id, manifest, written_rx, free_tx, failed));
        let mut writer = Writer {
            id,
            staging,
            batch: Batch::new(),
            batches: Some(batch_tx),
            free_batches: free_rx,
            failed,
            sync: options.sync,
        };
        let walked = walk_entries(reader, id, manifest, manifest_bytes, &mut writer);
        // The last, partly filled batch; then the threads see the end.
        let shipped = writer.ship();
        drop(writer);
        let write_failure = writer_thread.join().map_err(|_| hashing_stopped(staging))?;
        let mismatch = hasher.join().map_err(|_| hashing_stopped(staging))?;
        let synced = write_back.map(|t| t.join());
        if let Some(e) = earliest(mismatch, write_failure) {
            return Err(e);
        }
        walked?;
        shipped.map_err(|e| e.or_read(|_| hashing_stopped(staging)))?;
        let sync_error = |source| io_at("syncfs the file system holding", staging)(source);
        match synced {
            Some(Ok(Err(e))) => return Err(sync_error(e)),
            Some(Err(_)) => return Err(sync_error(io::Error::other("the thread panicked"))),
            Some(Ok(Ok(()))) | None => {}
        }
        Ok(())
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
            if writer.failed.load(Ordering::Relaxed) {
                // The caller reports what failed; nothing after it counts.
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

/// A batch of creation orders and the file contents they refer to, passed
/// from the parsing thread to the writing thread, then to the hashing
/// thread, then back.
struct Batch {
    /// Always `BATCH_BYTES` long (zeroed once, at allocation).
    buf: Vec<u8>,
    filled: usize,
    ops: Vec<Op>,
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
}

impl Batch {
    fn new() -> Batch {
        Batch {
            buf: vec![0u8; BATCH_BYTES],
            filled: 0,
            ops: Vec::new(),
        }
    }

    fn clear(&mut self) {
        self.filled = 0;
        self.ops.clear();
    }
}

/// The hashing thread: hashes each file's content from the batches (after
/// the writing thread wrote it) and compares the digest with the manifest
/// at its end. Returns the first mismatch with its entry, and raises
/// `failed` so the other threads stop early; drains the queue to its end
/// either way, so the threads before it never find it closed.
fn hash_batches(
    id: ReleaseId,
    manifest: &Manifest,
    batches: mpsc::Receiver<Batch>,
    free: mpsc::SyncSender<Batch>,
    failed: &AtomicBool,
) -> Option<(usize, StageError)> {
    let mut sha = Sha256::new();
    let mut mismatch = None;
    for mut batch in batches {
        if mismatch.is_none() {
            for op in &batch.ops {
                match *op {
                    Op::Data { start, end } => sha.update(&batch.buf[start..end]),
                    Op::Close(i) => {
                        let found = hex::encode(std::mem::take(&mut sha).finalize());
                        let expected = &manifest.files[i];
                        let wanted = expected.sha256.as_deref().unwrap_or_default();
                        if found != wanted {
                            mismatch = Some((
                                i,
                                StageError::HashMismatch {
                                    id,
                                    path: expected.path.clone(),
                                    expected: wanted.to_string(),
                                    found,
                                },
                            ));
                            failed.store(true, Ordering::Relaxed);
                            break;
                        }
                    }
                    Op::Dir(_) | Op::Symlink(_) | Op::Open(_) => {}
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
) -> Option<(usize, StageError)> {
    let mut error = None;
    for mut batch in batches {
        if error.is_some() {
            batch.clear();
        } else {
            let failed_at = batch
                .ops
                .iter()
                .position(|op| match files.apply(op, &batch.buf) {
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
    error
}

impl FileWriter<'_> {
    fn apply(&mut self, op: &Op, buf: &[u8]) -> Result<(), (usize, StageError)> {
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

/// The parsing thread's side: queues what to create in batches.
struct Writer<'a> {
    id: ReleaseId,
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
}

impl Writer<'_> {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> WriteError {
        let to_error = io_at(action, path);
        move |source| WriteError::Stage(to_error(source))
    }

    /// Writes `slipway/manifest.json`, which must be byte-identical to the
    /// verified manifest. It is the first entry, so it is written here,
    /// before any batch.
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
        let path = self.staging.join(MANIFEST_PATH);
        let mut file = create_file(&path).map_err(Self::io("create", &path))?;
        file.write_all(&bytes).map_err(Self::io("write", &path))?;
        finish_file(file, &path, 0o644, self.sync).map_err(WriteError::Stage)
    }

    /// Passes the batch to the writing thread and takes a free one.
    fn ship(&mut self) -> Result<(), WriteError> {
        let stopped = || WriteError::Stage(hashing_stopped(self.staging));
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
    fn push(&mut self, op: Op) -> Result<(), WriteError> {
        if self.batch.ops.len() >= BATCH_OPS {
            self.ship()?;
        }
        self.batch.ops.push(op);
        Ok(())
    }

    fn write_entry(
        &mut self,
        expected: &FileEntry,
        index: usize,
        entry: &mut impl Read,
    ) -> Result<(), WriteError> {
        match expected.kind {
            EntryType::Dir => self.push(Op::Dir(index)),
            EntryType::Symlink => self.push(Op::Symlink(index)),
            EntryType::File => self.write_file(expected, index, entry),
        }
    }

    /// Reads a file's content from the archive into the batch, for the
    /// writing thread to write and the hashing thread to hash.
    fn write_file(
        &mut self,
        expected: &FileEntry,
        index: usize,
        entry: &mut impl Read,
    ) -> Result<(), WriteError> {
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
            let n = match entry.read(&mut room[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(WriteError::Read(e)),
            };
            self.batch.filled += n;
            self.batch.ops.push(Op::Data {
                start,
                end: start + n,
            });
            read += n as u64;
        }
        if read != size {
            return Err(StageError::SizeMismatch {
                id: self.id,
                path: expected.path.clone(),
                expected: size,
                found: read,
            }
            .into());
        }
        self.push(Op::Close(index))
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
        };
        let (i, e) = write_batches(files, batch_rx, written_tx, &failed).expect("write failure");
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
        let id = ReleaseId::of_bytes(b"release");
        let (i, e) = hash_batches(id, &m, written_rx, free_tx, &failed).expect("mismatch");
        assert_eq!(i, 1);
        assert!(
            matches!(&e, StageError::HashMismatch { path, .. } if path == "app/a"),
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

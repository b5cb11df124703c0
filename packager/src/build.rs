//! `slipway-pack build`: a source tree in, a signed, content-addressed,
//! reproducible release archive out.
//!
//! The build runs in two passes over the tree, with bounded memory whatever
//! its size:
//!
//! 1. **Plan** ([`plan_release`]): walk the tree ([`crate::source_tree`]),
//!    hash every file (SHA-256, 256 KiB buffers, in parallel) and build the
//!    [`Manifest`], which must pass [`Manifest::validate`]. Nothing is
//!    written yet, so a refused entry leaves no trace.
//! 2. **Write** ([`write_archive`]): stream the tar (manifest first, then
//!    every entry sorted bytewise by path) through a multithreaded zstd
//!    encoder into a temporary file in `REPO/releases/`, while an output
//!    thread writes the compressed bytes and computes their SHA-256 (the
//!    release id) and BLAKE2b-512 minisign prehash. Every file is hashed
//!    again, on another thread, from the very bytes given to zstd: a file
//!    that changed since the plan fails the build. (Comparing metadata
//!    instead would not be sound: a write through a shared mapping need not
//!    touch mtime or ctime, and timestamps are coarser than writes.) That
//!    second hash is BLAKE3, which pass 1 computes beside the SHA-256: as
//!    collision resistant, at several times SHA-256's speed.
//!
//! Then the prehash is signed, and the archive and its `.minisig` are
//! renamed into place as `<sha256>.tar.zst(.minisig)` after an fsync.
//!
//! # The archive format (SPEC §1)
//!
//! POSIX ustar headers, with a PAX extended header (named `././@PaxHeader`)
//! only for an entry whose path or link target does not fit, or whose size
//! needs more than 11 octal digits. Every header has mtime = the manifest's
//! `created` (`SOURCE_DATE_EPOCH`, else 0), uid/gid 0, empty user and group
//! names, and the manifest's mode: 0644 or 0755 for files (0755 iff any x
//! bit was set), 0755 for directories, 0777 for symlinks. Entry names are
//! exactly the manifest's paths (directories carry no trailing `/`), so a
//! reader compares header and manifest byte for byte. The archive ends with
//! two zero blocks. zstd runs in multithreaded mode even with one worker,
//! level 3, with a content checksum: its output is the same for any worker
//! count, so the archive depends only on the tree, the arguments and the
//! libzstd version pinned in `Cargo.lock`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use sha2::{Digest, Sha256};
use slipway_formats::manifest::{validate_argv, validate_name, MANIFEST_FORMAT, MODE_FILE};
use slipway_formats::signature::TrustedComment;
use slipway_formats::{
    FileEntry, Hooks, Manifest, ReleaseId, RuntimePaths, SourceInfo, Version, MANIFEST_PATH,
};

use crate::error::{PackError, Result};
use crate::keys::{Prehasher, SigningKey};
use crate::repo::Repo;
use crate::source_tree::{
    self, Excludes, SourceConfig, SourceEntry, SourceKind, SourceLayout, CONFIG_FILE,
};
use slipway_fs::durable;

/// Size of every read and copy buffer.
pub const BUFFER_SIZE: usize = 256 * 1024;
/// The zstd level of every archive.
pub const ZSTD_LEVEL: i32 = 3;
/// The most zstd workers (and hashing threads) used by default.
pub const MAX_WORKERS: u32 = 4;
/// zstd workers beyond the CPU count by default (see [`default_workers`]).
const EXTRA_WORKERS: u32 = 1;
/// The largest value a ustar numeric field of 11 octal digits holds.
const USTAR_MAX: u64 = 0o77777777777;
const BLOCK: usize = 512;

/// What to build. [`BuildOptions::new`] gives the defaults; command-line
/// flags map one to one onto the fields and override `slipway.toml`.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The source tree (see [`crate::source_tree`] for the layout rule).
    pub source_dir: PathBuf,
    /// The release repository; the archive goes to `releases/` inside it.
    pub out_repo: PathBuf,
    /// The app name; else `app` from `slipway.toml`. Both given must match.
    pub app: Option<String>,
    /// The release version; else derived from `tag`.
    pub version: Option<Version>,
    /// The git tag `vX.Y.Z`, recorded in the manifest's `source`.
    pub tag: Option<String>,
    /// The git commit, recorded in the manifest's `source`.
    pub commit: Option<String>,
    /// The channel; else `channel` from `slipway.toml`; else `stable`.
    pub channel: Option<String>,
    /// A schema directory used instead of `SOURCE_DIR/schema`.
    pub schema_dir: Option<PathBuf>,
    /// Overrides `[schema] version`.
    pub schema_version: Option<u32>,
    /// Overrides `[schema] min_compatible`.
    pub schema_min_compatible: Option<u32>,
    /// Extra exclude globs, added to `slipway.toml`'s and `.slipwayignore`'s.
    pub excludes: Vec<String>,
    /// The mtime of every entry and the manifest's `created`.
    pub source_date_epoch: u64,
    /// zstd worker threads; `None` is [`default_workers`]. The output does
    /// not depend on it.
    pub zstd_workers: Option<u32>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

impl BuildOptions {
    /// Options for building `source_dir` into the repository `out_repo`, with
    /// everything else taken from `slipway.toml` or the defaults.
    pub fn new(source_dir: impl Into<PathBuf>, out_repo: impl Into<PathBuf>) -> Self {
        BuildOptions {
            source_dir: source_dir.into(),
            out_repo: out_repo.into(),
            app: None,
            version: None,
            tag: None,
            commit: None,
            channel: None,
            schema_dir: None,
            schema_version: None,
            schema_min_compatible: None,
            excludes: Vec::new(),
            source_date_epoch: 0,
            zstd_workers: None,
            progress: false,
        }
    }
}

/// A release planned from a source tree: its manifest, and for every entry
/// where its content comes from. Produced by [`plan_release`], consumed by
/// [`write_archive`].
#[derive(Debug, Clone)]
pub struct ReleasePlan {
    pub manifest: Manifest,
    /// One per manifest entry, in the same order.
    pub sources: Vec<PathBuf>,
    /// One per manifest entry: the BLAKE3 of a regular file's content as
    /// pass 1 read it (zeros for the others), which pass 2 checks.
    pub rechecks: Vec<[u8; 32]>,
}

/// A release written to a repository.
#[derive(Debug, Clone, Serialize)]
pub struct BuiltRelease {
    pub id: ReleaseId,
    pub app: String,
    pub version: Version,
    pub channel: String,
    /// `REPO/releases/<hex>.tar.zst`.
    pub archive: PathBuf,
    /// `REPO/releases/<hex>.tar.zst.minisig`.
    pub signature: PathBuf,
    /// Archive size in bytes.
    pub size: u64,
    /// Number of regular files.
    pub files: usize,
    /// Total size of the regular files.
    pub bytes: u64,
    pub schema_version: u32,
    #[serde(skip)]
    pub manifest: Manifest,
}

/// Builds, signs and writes a release into `opts.out_repo` (see the module
/// docs). On error nothing is left in the repository but the directories.
pub fn build_release(opts: &BuildOptions, key: &SigningKey) -> Result<BuiltRelease> {
    let plan = plan_release(opts)?;
    let repo = Repo::new(&opts.out_repo);
    let releases = repo.releases_dir();
    durable::create_dirs(&releases).map_err(PackError::io("create directory", &releases))?;
    let mut temp = durable::temp_file_in(&releases)
        .map_err(PackError::io("create a temporary file in", &releases))?;
    let workers = opts.zstd_workers.unwrap_or_else(default_workers);
    let written =
        write_archive(&plan, temp.as_file_mut(), workers, opts.progress).map_err(|e| match e {
            ArchiveError::Source(e) => e,
            ArchiveError::Output(io) => PackError::io("write the archive", temp.path())(io),
        })?;
    let id = ReleaseId::from_digest(written.sha256);
    let m = &plan.manifest;
    let comment =
        TrustedComment::for_release(&m.app, &m.version.to_string(), &m.channel, &id).to_string();
    let signature_text = key.sign_prehashed(&written.prehash, &comment)?;
    let mut sig_temp = durable::temp_file_in(&releases)
        .map_err(PackError::io("create a temporary file in", &releases))?;
    sig_temp
        .write_all(signature_text.as_bytes())
        .map_err(PackError::io("write", sig_temp.path()))?;
    let archive = repo.archive_path(&id);
    let signature = repo.signature_path(&id);
    refuse_other_signature(&signature, &signature_text, &id)?;
    durable::persist(temp, &archive, durable::PUBLISHED_MODE)
        .map_err(PackError::io("write", &archive))?;
    if let Err(e) = durable::persist(sig_temp, &signature, durable::PUBLISHED_MODE)
        .map_err(PackError::io("write", &signature))
    {
        let _ = std::fs::remove_file(&archive);
        return Err(e);
    }
    durable::fsync_dir(&releases).map_err(PackError::io("fsync directory", &releases))?;
    let files = m.files.iter().filter(|e| e.size.is_some()).count();
    Ok(BuiltRelease {
        id,
        app: m.app.clone(),
        version: m.version.clone(),
        channel: m.channel.clone(),
        archive,
        signature,
        size: written.size,
        files,
        bytes: m.total_size(),
        schema_version: m.schema_version,
        manifest: plan.manifest,
    })
}

/// A rebuild of an archive already in the repository gives the same bytes
/// and, with the same key, the same signature. A different signature means
/// another key: replacing it could break an index that lists the release,
/// so it is refused.
fn refuse_other_signature(path: &Path, new_text: &str, id: &ReleaseId) -> Result<()> {
    match slipway_fs::read_text_capped(path, slipway_formats::MAX_SIGNATURE_BYTES) {
        Ok(existing) if existing != new_text => {
            let by = slipway_formats::SignatureFile::parse(&existing)
                .map(|s| format!("key {}", s.key_id()))
                .unwrap_or_else(|_| "an unreadable signature".to_string());
            Err(PackError::Release {
                id: *id,
                message: format!(
                    "is already in {} signed by {by}; build into another directory, or remove the old archive and signature if they are not published",
                    durable::parent_dir(path).display()
                ),
            })
        }
        _ => Ok(()),
    }
}

/// min(available parallelism + 1, [`MAX_WORKERS`]).
///
/// One zstd worker more than there are CPUs: a worker that finishes a job
/// waits while the packer reads the next 2 MiB of small files; with a spare
/// worker another job is ready to run on that CPU meanwhile. On a 2-CPU
/// machine 3 workers build the benchmark tree ~5-8% faster than 2, for
/// ~3 MiB more memory (docs/benchmarks.md).
pub fn default_workers() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
        .saturating_add(EXTRA_WORKERS)
        .clamp(1, MAX_WORKERS)
}

/// Pass 1: reads `slipway.toml` and `.slipwayignore`, resolves the options
/// against them, walks and hashes the tree, and returns the validated
/// manifest. Writes nothing.
pub fn plan_release(opts: &BuildOptions) -> Result<ReleasePlan> {
    if opts.source_date_epoch > USTAR_MAX {
        return Err(PackError::Usage(format!(
            "SOURCE_DATE_EPOCH {} is beyond what a tar header holds ({USTAR_MAX})",
            opts.source_date_epoch
        )));
    }
    let config_path = opts.source_dir.join(CONFIG_FILE);
    let config = SourceConfig::load(&opts.source_dir)?;
    let app = match (&opts.app, &config.app) {
        (Some(flag), Some(file)) if flag != file => {
            return Err(PackError::Config {
                path: config_path,
                message: format!("app = {file:?} does not match --app {flag}; fix one of them"),
            })
        }
        (Some(a), _) | (None, Some(a)) => a.clone(),
        (None, None) => {
            return Err(PackError::Usage(format!(
                "no app name: pass --app NAME or set app = \"NAME\" in {}",
                config_path.display()
            )))
        }
    };
    validate_name(&app).map_err(|r| match &opts.app {
        Some(_) => PackError::Usage(format!("--app: {r}")),
        None => PackError::Config {
            path: config_path.clone(),
            message: format!("app: {r}"),
        },
    })?;
    let channel = opts
        .channel
        .clone()
        .or_else(|| config.channel.clone())
        .unwrap_or_else(|| "stable".to_string());
    validate_name(&channel).map_err(|r| PackError::Usage(format!("channel name: {r}")))?;
    let version = resolve_version(opts.version.as_ref(), opts.tag.as_deref())?;
    let schema_version = opts.schema_version.or(config.schema.version).unwrap_or(0);
    let schema_min_compatible = opts
        .schema_min_compatible
        .or(config.schema.min_compatible)
        .unwrap_or(schema_version);
    if schema_min_compatible > schema_version {
        return Err(PackError::Config {
            path: config_path,
            message: format!(
                "schema min_compatible {schema_min_compatible} is above schema version {schema_version} (from slipway.toml or --schema-version / --schema-min-compatible)"
            ),
        });
    }
    for (name, hook) in [
        ("check", &config.hooks.check),
        ("migrate", &config.hooks.migrate),
    ] {
        if let Some(argv) = hook {
            validate_argv(argv).map_err(|reason| PackError::Config {
                path: config_path.clone(),
                message: format!("[hooks] {name}: {reason}"),
            })?;
        }
    }
    RuntimePaths::new(&config.runtime_paths).map_err(|e| PackError::Config {
        path: config_path.clone(),
        message: format!("runtime_paths: {e}"),
    })?;
    let source = (opts.commit.is_some() || opts.tag.is_some()).then(|| SourceInfo {
        commit: opts.commit.clone(),
        tag: opts.tag.clone(),
    });

    let mut patterns = config.build.exclude.clone();
    patterns.extend(source_tree::read_ignore_file(&opts.source_dir)?);
    patterns.extend(opts.excludes.iter().cloned());
    let excludes = Excludes::new(&patterns, &config_path)?;
    let layout = SourceLayout::detect(&opts.source_dir, opts.schema_dir.as_deref())?;
    let entries =
        source_tree::collect_entries(&layout, &excludes, std::slice::from_ref(&opts.out_repo))?;

    let workers = opts.zstd_workers.unwrap_or_else(default_workers);
    let hashes = hash_files(&entries, workers as usize, opts.progress)?;
    let mut files = Vec::with_capacity(entries.len());
    let mut sources = Vec::with_capacity(entries.len());
    let mut rechecks = Vec::with_capacity(entries.len());
    for (entry, hash) in entries.into_iter().zip(hashes) {
        rechecks.push(hash.map_or([0u8; 32], |h| h.blake3));
        files.push(match (&entry.kind, hash) {
            (SourceKind::Dir, _) => FileEntry::dir(&entry.path),
            (SourceKind::File { executable }, Some(h)) => {
                FileEntry::file(&entry.path, *executable, h.size, hex::encode(h.sha256))
            }
            (SourceKind::Symlink { target }, _) => FileEntry::symlink(&entry.path, target),
            (SourceKind::File { .. }, None) => {
                return Err(PackError::refused(&entry.source, "file was not hashed"))
            }
        });
        sources.push(entry.source);
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        app,
        version,
        channel,
        created: opts.source_date_epoch,
        source,
        schema_version,
        schema_min_compatible,
        hooks: Hooks {
            check: config.hooks.check.clone(),
            migrate: config.hooks.migrate.clone(),
        },
        runtime_paths: config.runtime_paths.clone(),
        probation: config.health.probation.unwrap_or(false),
        files,
    };
    manifest.validate().map_err(|e| PackError::Refused {
        path: opts.source_dir.clone(),
        reason: format!("the release would be refused by every host: {e}"),
    })?;
    Ok(ReleasePlan {
        manifest,
        sources,
        rechecks,
    })
}

fn resolve_version(version: Option<&Version>, tag: Option<&str>) -> Result<Version> {
    let from_tag = tag
        .map(|t| Version::from_tag(t).map_err(|e| PackError::Usage(e.to_string())))
        .transpose()?;
    match (version, from_tag) {
        (Some(v), Some(t)) if *v != t => Err(PackError::Usage(format!(
            "--version {v} does not match --tag {} ; pass one or make them agree",
            tag.unwrap_or_default()
        ))),
        (Some(v), _) => Ok(v.clone()),
        (None, Some(t)) => Ok(t),
        (None, None) => Err(PackError::Usage(
            "no version: pass --version X.Y.Z or --tag vX.Y.Z".into(),
        )),
    }
}

/// Opens a file of the source tree with [`slipway_fs::open_regular`]: it
/// must still be a regular file, and a symlink or FIFO swapped in since the
/// walk is neither followed nor waited on.
fn open_source_file(path: &Path) -> Result<File> {
    slipway_fs::open_regular(path).map_err(|e| match e {
        slipway_fs::ReadError::NotRegular { .. } => PackError::refused(
            path,
            "changed type during the build (no longer a regular file); rebuild from a quiet tree",
        ),
        other => other.into(),
    })
}

/// What pass 1 learns of a regular file.
#[derive(Debug, Clone, Copy)]
struct FileHash {
    size: u64,
    /// For the manifest.
    sha256: [u8; 32],
    /// For pass 2's check that the file did not change.
    blake3: [u8; 32],
}

/// Hashes every regular file of `entries` with `workers` threads; returns a
/// [`FileHash`] per entry (None for dirs and symlinks). On error, the
/// failing entry first in path order is reported.
fn hash_files(
    entries: &[SourceEntry],
    workers: usize,
    progress: bool,
) -> Result<Vec<Option<FileHash>>> {
    let file_indices: Vec<usize> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e.kind, SourceKind::File { .. }))
        .map(|(i, _)| i)
        .collect();
    let bar = progress_bar(progress, file_indices.len() as u64, "hashing", "files");
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let results: Mutex<Vec<(usize, Result<FileHash>)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..workers.max(1) {
            scope.spawn(|| {
                let mut buf = vec![0u8; BUFFER_SIZE];
                let mut local = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&i) = file_indices.get(k) else { break };
                    let result = hash_file(&entries[i].source, &mut buf);
                    if result.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    local.push((i, result));
                    bar.inc(1);
                }
                // A poisoned lock means another worker panicked; the scope
                // re-raises that panic, so losing this batch is harmless.
                if let Ok(mut all) = results.lock() {
                    all.extend(local);
                }
            });
        }
    });
    bar.finish_and_clear();
    let mut all = results
        .into_inner()
        .map_err(|_| PackError::Usage("a hashing thread panicked".into()))?;
    all.sort_by_key(|(i, _)| *i);
    let mut out: Vec<Option<FileHash>> = vec![None; entries.len()];
    for (i, result) in all {
        out[i] = Some(result?);
    }
    Ok(out)
}

fn hash_file(path: &Path, buf: &mut [u8]) -> Result<FileHash> {
    let mut file = open_source_file(path)?;
    let mut hasher = Sha256::new();
    let mut recheck = blake3::Hasher::new();
    let mut size = 0u64;
    loop {
        let n = match file.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(PackError::io("read", path)(e)),
        };
        hasher.update(&buf[..n]);
        recheck.update(&buf[..n]);
        size += n as u64;
    }
    Ok(FileHash {
        size,
        sha256: hasher.finalize().into(),
        blake3: recheck.finalize().into(),
    })
}

fn progress_bar(enabled: bool, len: u64, what: &'static str, unit: &str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let template = if unit == "bytes" {
        "{prefix:>8} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}"
    } else {
        "{prefix:>8} [{bar:30}] {pos}/{len} files"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(what);
    bar
}

/// Why writing an archive failed: a source file (named), or the output.
#[derive(Debug)]
pub enum ArchiveError {
    Source(PackError),
    Output(io::Error),
}

impl From<io::Error> for ArchiveError {
    fn from(e: io::Error) -> Self {
        ArchiveError::Output(e)
    }
}

/// What [`write_archive`] wrote: the archive's digests and size.
#[derive(Debug, Clone, Copy)]
pub struct WrittenArchive {
    /// SHA-256 of the compressed bytes: the release id.
    pub sha256: [u8; 32],
    /// BLAKE2b-512 of the compressed bytes: what the signature signs.
    pub prehash: [u8; 64],
    /// Compressed size.
    pub size: u64,
}

/// The zstd job size: fixed (rather than zstd's default of 4 windows, 8 MiB
/// at level 3) so that memory stays small with any worker count; the output
/// depends on it, never on the number of workers. Larger jobs save little
/// CPU (under 2% of zstd's instructions at 8 MiB, measured with callgrind)
/// for much more memory: zstd's buffers scale with job size × workers
/// (+78 MiB peak RSS for 8 MiB jobs with 2 workers).
pub const ZSTD_JOB_SIZE: u32 = 2 * 1024 * 1024;

/// The tar stream is assembled in staging buffers of this size: headers are
/// copied in, file contents are read straight into them, and each full
/// buffer is handed to zstd in one call and then to the re-hashing thread.
const STAGE_SIZE: usize = 512 * 1024;
/// Staging buffers in all: one being filled, the others queued for or being
/// re-hashed. Bounds that memory to `STAGES` × `STAGE_SIZE`.
const STAGES: usize = 4;
/// Compressed output is collected, written and hashed in buffers this big.
const OUTPUT_SIZE: usize = 512 * 1024;
/// Output buffers in all: one being filled by zstd, the others queued for
/// or being written and hashed.
const OUTPUT_BUFFERS: usize = 4;
/// The output thread asks for the archive written so far to be flushed to
/// disk (on another thread) every this many bytes, so that the final fsync
/// has little left to wait for.
const WRITEBACK_EVERY: u64 = 64 * 1024 * 1024;

/// Pass 2: writes the archive of `plan` to `out` (see the module docs for
/// the format), re-hashing every file as it is copied, and fsyncs `out`.
/// Output bytes are identical for any `zstd_workers` ≥ 1.
///
/// The calling thread assembles the tar stream in 512 KiB staging buffers
/// (file contents are read straight into them, never zero-filled again) and
/// feeds each to zstd in one call. Three threads work beside it and the zstd workers, each fed through
/// a bounded queue of recycled buffers, so memory stays flat:
///
/// - the re-hashing thread hashes every file's bytes, from the very buffers
///   zstd was given, and compares each digest with pass 1's;
/// - the output thread writes the compressed bytes to `out` and hashes them
///   (SHA-256, the release id, and the BLAKE2b minisign prehash);
/// - the write-back thread flushes what is already written to disk every
///   64 MiB, so that the final fsync does not wait for the whole archive.
pub fn write_archive(
    plan: &ReleasePlan,
    out: &mut File,
    zstd_workers: u32,
    progress: bool,
) -> Result<WrittenArchive, ArchiveError> {
    use zstd::stream::raw::CParameter;
    let mut encoder = zstd::stream::raw::Encoder::new(ZSTD_LEVEL)?;
    encoder.set_parameter(CParameter::NbWorkers(zstd_workers.max(1)))?;
    encoder.set_parameter(CParameter::JobSize(ZSTD_JOB_SIZE))?;
    encoder.set_parameter(CParameter::ChecksumFlag(true))?;
    encoder.set_parameter(CParameter::ContentSizeFlag(false))?;
    let changed_file = AtomicBool::new(false);
    let output_failed = AtomicBool::new(false);
    let out: &File = out;
    let written = std::thread::scope(|scope| {
        let (stage_tx, stage_rx) = sync_channel::<Stage>(STAGES);
        let (free_stage_tx, free_stages) = sync_channel::<Stage>(STAGES);
        let (output_tx, output_rx) = sync_channel::<Vec<u8>>(OUTPUT_BUFFERS);
        let (free_output_tx, free_outputs) = sync_channel::<Vec<u8>>(OUTPUT_BUFFERS);
        let (kick_tx, kick_rx) = sync_channel::<()>(1);
        for _ in 1..STAGES {
            let _ = free_stage_tx.try_send(Stage::new());
        }
        for _ in 1..OUTPUT_BUFFERS {
            let _ = free_output_tx.try_send(Vec::with_capacity(OUTPUT_SIZE));
        }
        let changed_flag = &changed_file;
        let rechecks = &plan.rechecks;
        let rehasher =
            scope.spawn(move || rehash_files(rechecks, stage_rx, free_stage_tx, changed_flag));
        let write_back = scope.spawn(move || write_back(out, kick_rx));
        let failed = &output_failed;
        let writer =
            scope.spawn(move || write_output(out, output_rx, free_output_tx, kick_tx, failed));
        let mut packer = Packer {
            encoder,
            stage: Stage::new(),
            free_stages,
            stages: stage_tx,
            output: Vec::with_capacity(OUTPUT_SIZE),
            free_outputs,
            outputs: output_tx,
        };
        let packed = write_entries(plan, &mut packer, &changed_file, &output_failed, progress)
            .and_then(|()| packer.finish().map_err(ArchiveError::Output));
        drop(packer);
        let mismatch = rehasher.join();
        let output = writer.join();
        let synced = write_back.join();
        let mismatch =
            mismatch.map_err(|_| io::Error::other("the file re-hashing thread panicked"))?;
        let output = output.map_err(|_| io::Error::other("the output thread panicked"))?;
        let synced = synced.map_err(|_| io::Error::other("the write-back thread panicked"))?;
        // A changed file explains any later failure, so it is reported first;
        // then an output error, which explains a packer that stopped early.
        if let Some(i) = mismatch {
            return Err(changed(&plan.sources[i], "changed"));
        }
        let (sha256, prehash, size) = output?;
        synced?;
        packed?;
        Ok(WrittenArchive {
            sha256,
            prehash,
            size,
        })
    })?;
    out.sync_all()?;
    Ok(written)
}

/// Writes the manifest and every entry's header and content into `tar`.
fn write_entries(
    plan: &ReleasePlan,
    tar: &mut Packer,
    changed_file: &AtomicBool,
    output_failed: &AtomicBool,
    progress: bool,
) -> Result<(), ArchiveError> {
    let manifest = &plan.manifest;
    let mtime = manifest.created;
    let manifest_bytes = manifest.to_bytes();
    write_header(
        tar,
        MANIFEST_PATH,
        tar::EntryType::Regular,
        MODE_FILE,
        manifest_bytes.len() as u64,
        None,
        mtime,
    )?;
    tar.write_all(&manifest_bytes)?;
    write_padding(tar, manifest_bytes.len() as u64)?;

    let bar = progress_bar(progress, manifest.total_size(), "packing", "bytes");
    for (i, (entry, source)) in manifest.files.iter().zip(&plan.sources).enumerate() {
        let kind = match entry.kind {
            slipway_formats::EntryType::File => tar::EntryType::Regular,
            slipway_formats::EntryType::Dir => tar::EntryType::Directory,
            slipway_formats::EntryType::Symlink => tar::EntryType::Symlink,
        };
        let size = entry.size.unwrap_or(0);
        write_header(
            tar,
            &entry.path,
            kind,
            entry.mode.0,
            size,
            entry.target.as_deref(),
            mtime,
        )?;
        if entry.kind == slipway_formats::EntryType::File {
            tar.copy_file(source, size, i, &bar)?;
            write_padding(tar, size)?;
            // The re-hashing thread found a difference (it names the file),
            // or the output thread failed (it has the error): stop early.
            if changed_file.load(Ordering::Relaxed) || output_failed.load(Ordering::Relaxed) {
                break;
            }
        }
    }
    bar.finish_and_clear();
    tar.write_all(&[0u8; 2 * BLOCK])?;
    Ok(())
}

fn changed(path: &Path, what: &str) -> ArchiveError {
    ArchiveError::Source(PackError::refused(
        path,
        format!("{what} since it was hashed; rebuild from a tree nothing writes to"),
    ))
}

/// A staging buffer: `buf[..filled]` is tar stream not yet compressed, and
/// `spans` says which of it is file content, for the re-hashing thread.
struct Stage {
    /// Always `STAGE_SIZE` long (zeroed once, at allocation).
    buf: Vec<u8>,
    filled: usize,
    spans: Vec<Span>,
}

/// Part of a staging buffer, for the re-hashing thread.
enum Span {
    /// `buf[start..end]` is the next content of the current file.
    Data { start: usize, end: usize },
    /// Manifest entry `i` (a regular file) is complete.
    End(usize),
}

impl Stage {
    fn new() -> Stage {
        Stage {
            buf: vec![0u8; STAGE_SIZE],
            filled: 0,
            spans: Vec::new(),
        }
    }
}

/// The calling thread's side of pass 2: builds the tar stream in staging
/// buffers, compresses each full one, and passes the compressed bytes on.
struct Packer {
    encoder: zstd::stream::raw::Encoder<'static>,
    stage: Stage,
    free_stages: Receiver<Stage>,
    stages: SyncSender<Stage>,
    output: Vec<u8>,
    free_outputs: Receiver<Vec<u8>>,
    outputs: SyncSender<Vec<u8>>,
}

fn stopped(what: &str) -> io::Error {
    io::Error::other(format!("the {what} thread stopped early"))
}

impl Packer {
    /// Compresses the staged bytes, hands the buffer to the re-hashing
    /// thread and takes a free one.
    fn flush_stage(&mut self) -> io::Result<()> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        let staged = &self.stage.buf[..self.stage.filled];
        let mut input = InBuffer::around(staged);
        while input.pos() < staged.len() {
            ship_if_full(&mut self.output, &self.free_outputs, &self.outputs)?;
            let pos = self.output.len();
            let mut output = OutBuffer::around_pos(&mut self.output, pos);
            self.encoder.run(&mut input, &mut output)?;
        }
        let next = self
            .free_stages
            .recv()
            .map_err(|_| stopped("file re-hashing"))?;
        let full = std::mem::replace(&mut self.stage, next);
        self.stages
            .send(full)
            .map_err(|_| stopped("file re-hashing"))
    }

    /// Compresses what is staged, ends the zstd frame and ships the rest.
    fn finish(&mut self) -> io::Result<()> {
        use zstd::stream::raw::{Operation, OutBuffer};
        self.flush_stage()?;
        loop {
            ship_if_full(&mut self.output, &self.free_outputs, &self.outputs)?;
            let pos = self.output.len();
            let mut output = OutBuffer::around_pos(&mut self.output, pos);
            if self.encoder.finish(&mut output, true)? == 0 {
                break;
            }
        }
        let last = std::mem::take(&mut self.output);
        self.outputs.send(last).map_err(|_| stopped("output"))
    }

    /// Room left in the staging buffer, flushing it first if it is full.
    fn room(&mut self) -> io::Result<&mut [u8]> {
        if self.stage.filled == STAGE_SIZE {
            self.flush_stage()?;
        }
        Ok(&mut self.stage.buf[self.stage.filled..])
    }

    /// Reads a file into the tar stream, marking its bytes for the
    /// re-hashing thread; a size different from the plan's fails at once.
    fn copy_file(
        &mut self,
        path: &Path,
        size: u64,
        entry: usize,
        bar: &ProgressBar,
    ) -> Result<(), ArchiveError> {
        let mut file = open_source_file(path).map_err(ArchiveError::Source)?;
        let mut copied = 0u64;
        loop {
            // One byte more than is left: a read past the planned size
            // means the file grew.
            let left = usize::try_from(size - copied).unwrap_or(usize::MAX);
            let room = self.room()?;
            let want = room.len().min(left.saturating_add(1));
            let n = match file.read(&mut room[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ArchiveError::Source(PackError::io("read", path)(e))),
            };
            if n > left {
                return Err(changed(path, "grew"));
            }
            let start = self.stage.filled;
            self.stage.filled += n;
            self.stage.spans.push(Span::Data {
                start,
                end: start + n,
            });
            copied += n as u64;
            bar.inc(n as u64);
        }
        if copied != size {
            return Err(changed(path, "shrank"));
        }
        self.stage.spans.push(Span::End(entry));
        Ok(())
    }
}

/// Ships `output` to the output thread once it is full, taking a free one.
fn ship_if_full(
    output: &mut Vec<u8>,
    free: &Receiver<Vec<u8>>,
    to: &SyncSender<Vec<u8>>,
) -> io::Result<()> {
    if output.len() < output.capacity() {
        return Ok(());
    }
    let next = free.recv().map_err(|_| stopped("output"))?;
    to.send(std::mem::replace(output, next))
        .map_err(|_| stopped("output"))
}

/// Tar headers and padding go into the staging buffer through `Write`.
impl Write for Packer {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let room = self.room()?;
        let n = room.len().min(bytes.len());
        room[..n].copy_from_slice(&bytes[..n]);
        self.stage.filled += n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The re-hashing thread: hashes each file's content from the staging
/// buffers and compares the digest with pass 1's at its end; returns the
/// first entry that differs, and raises `changed` so the packer stops
/// early.
fn rehash_files(
    rechecks: &[[u8; 32]],
    stages: Receiver<Stage>,
    free: SyncSender<Stage>,
    changed: &AtomicBool,
) -> Option<usize> {
    let mut hasher = blake3::Hasher::new();
    let mut first_changed = None;
    // Drain the queue to its end even after a difference, so the packer
    // never sees a closed queue and reports the changed file rather than
    // a broken pipe.
    for mut stage in stages {
        if first_changed.is_none() {
            for span in &stage.spans {
                match *span {
                    Span::Data { start, end } => {
                        hasher.update(&stage.buf[start..end]);
                    }
                    Span::End(i) => {
                        let digest: [u8; 32] = hasher.finalize().into();
                        hasher.reset();
                        if rechecks.get(i) != Some(&digest) {
                            first_changed = Some(i);
                            changed.store(true, Ordering::Relaxed);
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
    first_changed
}

/// The output thread: writes the compressed bytes to `out` and computes
/// their SHA-256 (the release id), BLAKE2b-512 (the minisign prehash) and
/// count. Every [`WRITEBACK_EVERY`] bytes it nudges the write-back thread.
/// After a write error it raises `failed` and drains the queue.
fn write_output(
    mut out: &File,
    chunks: Receiver<Vec<u8>>,
    free: SyncSender<Vec<u8>>,
    kick: SyncSender<()>,
    failed: &AtomicBool,
) -> io::Result<([u8; 32], [u8; 64], u64)> {
    let mut sha = Sha256::new();
    let mut prehash = Prehasher::new();
    let mut size = 0u64;
    let mut unsynced = 0u64;
    let mut error = None;
    for mut buf in chunks {
        if error.is_none() {
            match out.write_all(&buf) {
                Ok(()) => {
                    sha.update(&buf);
                    prehash.update(&buf);
                    size += buf.len() as u64;
                    unsynced += buf.len() as u64;
                    if unsynced >= WRITEBACK_EVERY {
                        unsynced = 0;
                        // Busy syncing: the next nudge will do.
                        let _ = kick.try_send(());
                    }
                }
                Err(e) => {
                    error = Some(e);
                    failed.store(true, Ordering::Relaxed);
                }
            }
        }
        buf.clear();
        let _ = free.try_send(buf);
    }
    match error {
        Some(e) => Err(e),
        None => Ok((sha.finalize().into(), prehash.finalize(), size)),
    }
}

/// The write-back thread: flushes the archive's data written so far to disk
/// whenever nudged, so that writeback overlaps compression. Its first error
/// is returned (the final fsync might not see it again).
fn write_back(out: &File, kicks: Receiver<()>) -> io::Result<()> {
    for () in kicks {
        out.sync_data()?;
    }
    Ok(())
}

pub(crate) fn write_padding(out: &mut impl Write, size: u64) -> io::Result<()> {
    let rem = (size % BLOCK as u64) as usize;
    if rem != 0 {
        out.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
    }
    Ok(())
}

/// Writes one ustar header, preceded by a PAX extended header when the path,
/// link target or size does not fit the ustar fields.
pub(crate) fn write_header(
    out: &mut impl Write,
    path: &str,
    kind: tar::EntryType,
    mode: u32,
    size: u64,
    link: Option<&str>,
    mtime: u64,
) -> io::Result<()> {
    let mut pax: Vec<(&str, String)> = Vec::new();
    let mut header = base_header(mode, mtime);
    header.set_entry_type(kind);
    let fits = header.set_path(path).is_ok() && header.path_bytes().as_ref() == path.as_bytes();
    if !fits {
        pax.push(("path", path.to_string()));
        set_name_raw(&mut header, path.as_bytes());
    }
    if let Some(target) = link {
        if target.len() <= 100 {
            header.set_link_name_literal(target)?;
        } else {
            pax.push(("linkpath", target.to_string()));
            header.set_link_name_literal(&target.as_bytes()[..100])?;
        }
    }
    if size > USTAR_MAX {
        pax.push(("size", size.to_string()));
    }
    header.set_size(size);
    header.set_cksum();
    if !pax.is_empty() {
        let records = pax_records(&pax);
        let mut x = base_header(MODE_FILE, mtime);
        x.set_entry_type(tar::EntryType::XHeader);
        set_name_raw(&mut x, b"././@PaxHeader");
        x.set_size(records.len() as u64);
        x.set_cksum();
        out.write_all(x.as_bytes())?;
        out.write_all(&records)?;
        write_padding(out, records.len() as u64)?;
    }
    out.write_all(header.as_bytes())
}

/// Sets the ustar name field to (at most the first 100 bytes of) `name`,
/// with an empty prefix: the fallback that PAX-aware readers ignore.
fn set_name_raw(header: &mut tar::Header, name: &[u8]) {
    let field = &mut header.as_old_mut().name;
    *field = [0u8; 100];
    let n = name.len().min(100);
    field[..n].copy_from_slice(&name[..n]);
    if let Some(ustar) = header.as_ustar_mut() {
        ustar.prefix = [0u8; 155];
    }
}

fn base_header(mode: u32, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    if let Some(ustar) = h.as_ustar_mut() {
        ustar.set_device_major(0);
        ustar.set_device_minor(0);
    }
    h
}

/// PAX records `"<len> <key>=<value>\n"`, where `<len>` counts itself.
fn pax_records(pairs: &[(&str, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in pairs {
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        while len.to_string().len() + body.len() != len {
            len = len.to_string().len() + body.len();
        }
        out.extend_from_slice(format!("{len}{body}").as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_count_themselves() {
        let r = pax_records(&[("path", "a".repeat(200))]);
        let text = String::from_utf8(r.clone()).expect("utf8");
        let (len, _) = text.split_once(' ').expect("space");
        assert_eq!(len.parse::<usize>().expect("len"), r.len());
        for v in ["", "x", &"y".repeat(90), &"z".repeat(994)] {
            let r = pax_records(&[("k", v.to_string())]);
            let text = String::from_utf8(r.clone()).expect("utf8");
            let (len, _) = text.split_once(' ').expect("space");
            assert_eq!(len.parse::<usize>().expect("len"), r.len(), "{v:?}");
        }
    }

    #[test]
    fn versions_come_from_flags_or_tags() {
        let v: Version = "1.2.3".parse().expect("v");
        assert_eq!(resolve_version(Some(&v), None).expect("v"), v);
        assert_eq!(resolve_version(None, Some("v1.2.3")).expect("tag"), v);
        assert!(resolve_version(Some(&v), Some("v1.2.4")).is_err());
        assert!(resolve_version(None, Some("1.2.3")).is_err());
        assert!(resolve_version(None, None).is_err());
    }
}

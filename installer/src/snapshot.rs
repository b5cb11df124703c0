//! Persistence snapshots (SPEC §4 step 7, the seed's "pre-flight snapshot"):
//! ask the app to save, copy the persistence directory to
//! `<root>/backups/<stamp>/`, and, when an update is flipped back and the
//! data changed, put that copy back.
//!
//! The persistence's top-level `meta/` directory is slipway's output
//! (`version.json`, `update_state.json`), so it is never copied into a
//! snapshot, never part of a digest, and never rewound by a restore.
//!
//! A snapshot on disk:
//!
//! ```text
//! backups/<stamp>/data/            the tree: files (content, mode, times),
//!                                  directories, symlinks (not followed);
//!                                  owners too when slipway runs as root
//! backups/<stamp>/snapshot.json    digest, counts, source path
//! ```
//!
//! It is written under `backups/<stamp>.partial/`, fsynced, then renamed, so
//! a `backups/<stamp>/` directory is always complete. Sockets, FIFOs and
//! devices are runtime objects, not data: they are skipped (and listed in
//! `snapshot.json`), and ignored by [`tree_digest`].

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::config::ServiceConfig;
use crate::durable::{fsync_dir, remove_tree, write_json_atomic};
use crate::health::{control_agent, control_post};
use crate::hooks::{self, HookError};

/// The directory inside a snapshot that holds the copied tree.
pub const DATA_DIR: &str = "data";
/// The record inside a snapshot.
pub const RECORD_FILE: &str = "snapshot.json";
/// The persistence's top-level directory that belongs to slipway.
pub const META_DIR: &str = "meta";
/// Suffix of a snapshot being written.
const PARTIAL_SUFFIX: &str = ".partial";
/// Sibling of the persistence directory holding the copy being restored.
const RESTORE_SUFFIX: &str = ".slipway-restore";
/// Sibling of the persistence directory holding the replaced tree.
const OLD_SUFFIX: &str = ".slipway-old";
/// Copy buffer: bounded memory whatever the file size.
const BUF_SIZE: usize = 256 * 1024;

/// Why a snapshot could not be taken, read or restored.
#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error(
        "cannot ask the app to save before the snapshot: {0}; fix service.save or run it by hand"
    )]
    SaveCommand(#[source] HookError),
    #[error("cannot ask the app to save before the snapshot: POST {url}: {reason}; is the app running? fix service.save_url")]
    SaveUrl { url: String, reason: String },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the persistence path {} is not a directory; fix paths.persistence", path.display())]
    NotADirectory { path: PathBuf },
    #[error("snapshot {} already exists; take the snapshot under a new name", dir.display())]
    Exists { dir: PathBuf },
    #[error("snapshot name {stamp:?} is not a plain file name")]
    BadStamp { stamp: String },
    #[error("snapshot {} cannot be used: {message}; restore from another snapshot in the same backups directory", dir.display())]
    Corrupt { dir: PathBuf, message: String },
    #[error("snapshot {} is damaged: its data digests to {actual} but it recorded {expected}; nothing was changed; restore from another snapshot", dir.display())]
    Damaged {
        dir: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("restored {} but it digests to {actual}, not the snapshot's {expected}; run the restore again, or copy {} by hand", persistence.display(), snapshot.display())]
    RestoreMismatch {
        persistence: PathBuf,
        snapshot: PathBuf,
        expected: String,
        actual: String,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io {
        action,
        path,
        source,
    }
}

/// A persistence snapshot, as the journal records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// `backups/<stamp>`.
    pub dir: PathBuf,
    /// [`tree_digest`] of the data at the time of the snapshot.
    pub digest: String,
    /// Regular files copied.
    pub files: u64,
    /// Bytes of file content copied.
    pub bytes: u64,
}

/// `snapshot.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotRecord {
    format: u32,
    digest: String,
    files: u64,
    bytes: u64,
    dirs: u64,
    symlinks: u64,
    /// The persistence directory that was copied.
    source: PathBuf,
    /// The persistence directory did not exist: this is an empty tree.
    source_missing: bool,
    /// Sockets, FIFOs and devices that were not copied (relative paths).
    skipped: Vec<String>,
    /// Seconds since the epoch, for ordering.
    created_unix: u64,
}

/// Asks the app to persist now, before the snapshot: `POST save_url` (2xx)
/// when set, else the `save` command run in `cwd` (the running release's
/// `app/`, so `python3 -m bot.save` imports), within `timeout`. Nothing
/// configured: nothing to do.
pub fn request_save(
    cfg: &ServiceConfig,
    cwd: &Path,
    timeout: Duration,
) -> Result<(), SnapshotError> {
    if let Some(url) = cfg
        .save_url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())
    {
        let agent = control_agent(timeout);
        let (status, body) =
            control_post(&agent, url).map_err(|reason| SnapshotError::SaveUrl {
                url: url.to_string(),
                reason,
            })?;
        if !(200..300).contains(&status) {
            let body: String = body.trim().chars().take(200).collect();
            return Err(SnapshotError::SaveUrl {
                url: url.to_string(),
                reason: format!("answered {status} {body}"),
            });
        }
        return Ok(());
    }
    if !cfg.save.is_empty() {
        hooks::run_command(&cfg.save, cwd, &[], timeout).map_err(SnapshotError::SaveCommand)?;
    }
    Ok(())
}

/// Copies the persistence tree (without its top-level `meta/`) to
/// `backups_dir/<stamp>/` and returns what was recorded.
///
/// Written under `<stamp>.partial` (a leftover from a crash is removed
/// first), fsynced file by file and directory by directory, then renamed
/// into place and `backups_dir` fsynced. A `<stamp>` that already exists is
/// an error ([`SnapshotError::Exists`]): a snapshot is never overwritten.
/// A missing persistence directory
/// gives a snapshot of an empty tree (recorded as `source_missing`).
/// Entries that vanish while being copied (an app's temp files) are skipped.
pub fn take_snapshot(
    persistence: &Path,
    backups_dir: &Path,
    stamp: &str,
) -> Result<Snapshot, SnapshotError> {
    if stamp.is_empty()
        || stamp.starts_with('.')
        || stamp.contains('/')
        || stamp.contains('\0')
        || stamp.ends_with(PARTIAL_SUFFIX)
    {
        return Err(SnapshotError::BadStamp {
            stamp: stamp.to_string(),
        });
    }
    fs::create_dir_all(backups_dir).map_err(io_error("create", backups_dir))?;
    let final_dir = backups_dir.join(stamp);
    let partial = backups_dir.join(format!("{stamp}{PARTIAL_SUFFIX}"));
    remove_tree(&partial).map_err(io_error("remove the leftover", &partial))?;
    if exists(&final_dir)? {
        return Err(SnapshotError::Exists { dir: final_dir });
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&partial)
        .map_err(io_error("create", &partial))?;
    let data = partial.join(DATA_DIR);
    // A snapshot that cannot be completed (the disk filled up, the app
    // removed a directory under it) takes its partial copy with it at once:
    // nothing else is written before the room is given back.
    let result = (|| {
        let (stats, source_missing) = match fs::metadata(persistence) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&data)
                    .map_err(io_error("create", &data))?;
                fsync_dir(&data).map_err(io_error("fsync", &data))?;
                (TreeStats::empty(), true)
            }
            Err(e) => return Err(io_error("read", persistence)(e)),
            Ok(m) if !m.is_dir() => {
                return Err(SnapshotError::NotADirectory {
                    path: persistence.to_path_buf(),
                })
            }
            Ok(m) => (copy_tree(persistence, &data, &m)?, false),
        };

        let record = SnapshotRecord {
            format: 1,
            digest: stats.digest.clone(),
            files: stats.files,
            bytes: stats.bytes,
            dirs: stats.dirs,
            symlinks: stats.symlinks,
            source: persistence.to_path_buf(),
            source_missing,
            skipped: stats.skipped.clone(),
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        let record_path = partial.join(RECORD_FILE);
        write_json_atomic(&record_path, &record).map_err(io_error("write", &record_path))?;
        fs::rename(&partial, &final_dir).map_err(io_error("rename into place", &partial))?;
        fsync_dir(backups_dir).map_err(io_error("fsync", backups_dir))?;
        Ok(stats)
    })();
    let stats = match result {
        Ok(stats) => stats,
        Err(e) => {
            let _ = remove_tree(&partial);
            let _ = fsync_dir(backups_dir);
            return Err(e);
        }
    };
    Ok(Snapshot {
        dir: final_dir,
        digest: stats.digest,
        files: stats.files,
        bytes: stats.bytes,
    })
}

/// Reads the snapshot in `dir` (`backups/<stamp>`).
pub fn load_snapshot(dir: &Path) -> Result<Snapshot, SnapshotError> {
    let corrupt = |message: String| SnapshotError::Corrupt {
        dir: dir.to_path_buf(),
        message,
    };
    let path = dir.join(RECORD_FILE);
    let text = fs::read_to_string(&path)
        .map_err(|e| corrupt(format!("cannot read {}: {e}", path.display())))?;
    let record: SnapshotRecord = serde_json::from_str(&text)
        .map_err(|e| corrupt(format!("{} is not valid: {e}", path.display())))?;
    if !dir.join(DATA_DIR).is_dir() {
        return Err(corrupt(format!(
            "{} is missing",
            dir.join(DATA_DIR).display()
        )));
    }
    Ok(Snapshot {
        dir: dir.to_path_buf(),
        digest: record.digest,
        files: record.files,
        bytes: record.bytes,
    })
}

/// The complete snapshots in `backups_dir`, newest first. Unfinished
/// (`.partial`) and unreadable directories are left out; a missing
/// `backups_dir` has none.
pub fn list_snapshots(backups_dir: &Path) -> Vec<Snapshot> {
    let Ok(entries) = fs::read_dir(backups_dir) else {
        return Vec::new();
    };
    let mut found: Vec<(u64, PathBuf, Snapshot)> = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name.as_bytes().ends_with(PARTIAL_SUFFIX.as_bytes()) || !path.is_dir() {
            continue;
        }
        let created = fs::read_to_string(path.join(RECORD_FILE))
            .ok()
            .and_then(|t| serde_json::from_str::<SnapshotRecord>(&t).ok())
            .map(|r| r.created_unix);
        if let (Some(created), Ok(snapshot)) = (created, load_snapshot(&path)) {
            found.push((created, path, snapshot));
        }
    }
    found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
    found.into_iter().map(|(_, _, s)| s).collect()
}

/// SHA-256 over the sorted entries of `dir` (path, type, mode, size, and the
/// content's SHA-256 or the link target), without the top-level `meta/`.
/// Equal digests mean equal data; a missing `dir` digests as an empty tree.
pub fn tree_digest(dir: &Path) -> Result<String, SnapshotError> {
    match fs::metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(TreeHasher::new().finish()),
        Err(e) => return Err(io_error("read", dir)(e)),
        Ok(m) if !m.is_dir() => {
            return Err(SnapshotError::NotADirectory {
                path: dir.to_path_buf(),
            })
        }
        Ok(_) => {}
    }
    let mut hasher = TreeHasher::new();
    let mut buf = vec![0u8; BUF_SIZE];
    walk(dir, |path, rel, meta| {
        let ft = meta.file_type();
        if ft.is_dir() {
            hasher.entry(rel, b'd', meta.mode(), 0, &[]);
        } else if ft.is_symlink() {
            match fs::read_link(path) {
                Ok(target) => hasher.entry(rel, b'l', 0, 0, target.as_os_str().as_bytes()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("read the symlink", path)(e)),
            }
        } else if ft.is_file() {
            let Some(mut file) = open_nofollow(path)? else {
                return Ok(());
            };
            let (hash, size) =
                hash_stream(&mut file, None, &mut buf).map_err(io_error("read", path))?;
            hasher.entry(rel, b'f', meta.mode(), size, &hash);
        }
        Ok(())
    })?;
    Ok(hasher.finish())
}

/// How long ago the newest regular file under `persistence` (not counting
/// `meta/`) was modified: the "persistence save is fresh" rule. `None` when
/// there is no such file or no persistence directory. A modification time in
/// the future counts as now.
pub fn newest_save_age(persistence: &Path) -> Result<Option<Duration>, SnapshotError> {
    if let Err(e) = fs::metadata(persistence) {
        if e.kind() == io::ErrorKind::NotFound {
            return Ok(None);
        }
        return Err(io_error("read", persistence)(e));
    }
    let mut newest: Option<SystemTime> = None;
    walk(persistence, |_, _, meta| {
        if meta.file_type().is_file() {
            if let Ok(m) = meta.modified() {
                newest = Some(newest.map_or(m, |n| n.max(m)));
            }
        }
        Ok(())
    })?;
    Ok(newest.map(|m| {
        SystemTime::now()
            .duration_since(m)
            .unwrap_or(Duration::ZERO)
    }))
}

/// Puts the snapshot's data back as `persistence`, keeping the current
/// `meta/` (slipway's outputs are never rewound) and the directory's own
/// mode and owner. Crash-safe and idempotent: after a crash at any point,
/// running it again finishes the job. Afterwards `tree_digest(persistence)
/// == snapshot.digest`.
///
/// With P = the persistence directory, R = `P.slipway-restore`, O =
/// `P.slipway-old` (siblings, so renames stay on one file system):
///
/// 0. If P and O both exist, a previous run crashed after step 3 (or O is
///    stale): move `O/meta` into P if P has none, remove O. If P now digests
///    as the snapshot, the restore is done.
/// 1. Remove any R; copy the snapshot's data into R (verifying the digest as
///    it copies: a damaged snapshot fails here, with nothing changed);
///    fsync. A copy that fails (no room) removes R. *Crash: P untouched, R
///    partial; a re-run recopies R.*
/// 2. Rename P → O (when P exists); fsync the parent. *Crash: no P, O and a
///    complete R; a re-run recopies R and goes on.*
/// 3. Rename R → P; fsync the parent. *Crash: P (restored, no meta) and O
///    (with meta): step 0 finishes.*
/// 4. Rename `O/meta` → `P/meta`; fsync P. *Crash: P complete, O without
///    meta: step 0 removes O.*
/// 5. Remove O; fsync the parent. *Crash: O partly removed: step 0 again.*
///
/// The service must not be writing to P meanwhile: stop it first (or keep it
/// quiesced), and start it afterwards.
pub fn restore_snapshot(snapshot: &Snapshot, persistence: &Path) -> Result<(), SnapshotError> {
    let source = snapshot.dir.join(DATA_DIR);
    let source_meta = fs::metadata(&source).map_err(|e| SnapshotError::Corrupt {
        dir: snapshot.dir.clone(),
        message: format!("cannot read {}: {e}", source.display()),
    })?;
    let p = resolve_symlinks(persistence)?;
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(name) = p.file_name().map(|n| n.to_os_string()) else {
        return Err(SnapshotError::NotADirectory { path: p });
    };
    let sibling = |suffix: &str| {
        let mut n = name.clone();
        n.push(suffix);
        parent.join(n)
    };
    let r = sibling(RESTORE_SUFFIX);
    let o = sibling(OLD_SUFFIX);
    let fsync_parent = || fsync_dir(&parent).map_err(io_error("fsync", &parent));

    // Step 0: finish an interrupted run.
    if exists(&p)? && exists(&o)? {
        carry_meta(&o, &p)?;
        remove_tree(&o).map_err(io_error("remove", &o))?;
        fsync_parent()?;
        if tree_digest(&p)? == snapshot.digest {
            remove_tree(&r).map_err(io_error("remove", &r))?;
            return fsync_parent();
        }
    }

    // Step 1: the restore copy, with the current directory's mode and owner.
    let top = if exists(&p)? {
        fs::metadata(&p).map_err(io_error("read", &p))?
    } else if exists(&o)? {
        fs::metadata(&o).map_err(io_error("read", &o))?
    } else {
        source_meta.clone()
    };
    remove_tree(&r).map_err(io_error("remove the leftover", &r))?;
    let stats = match copy_tree(&source, &r, &top) {
        Ok(stats) => stats,
        Err(e) => {
            // A copy that cannot be completed (the disk is full) gives its
            // room back at once; the next run copies again from the start.
            let _ = remove_tree(&r);
            let _ = fsync_dir(&parent);
            return Err(e);
        }
    };
    if stats.digest != snapshot.digest {
        remove_tree(&r).map_err(io_error("remove", &r))?;
        return Err(SnapshotError::Damaged {
            dir: snapshot.dir.clone(),
            expected: snapshot.digest.clone(),
            actual: stats.digest,
        });
    }
    fsync_parent()?;

    // Step 2: move the live tree aside.
    if exists(&p)? {
        fs::rename(&p, &o).map_err(io_error("move aside", &p))?;
        fsync_parent()?;
    }

    // Step 3: the switch.
    fs::rename(&r, &p).map_err(io_error("rename into place", &r))?;
    fsync_parent()?;

    // Step 4: slipway's outputs stay current.
    carry_meta(&o, &p)?;

    // Step 5.
    remove_tree(&o).map_err(io_error("remove", &o))?;
    fsync_parent()?;

    let actual = tree_digest(&p)?;
    if actual != snapshot.digest {
        return Err(SnapshotError::RestoreMismatch {
            persistence: p,
            snapshot: snapshot.dir.clone(),
            expected: snapshot.digest.clone(),
            actual,
        });
    }
    Ok(())
}

/// Moves `old/meta` to `new/meta` unless `new` already has one; fsyncs `new`.
fn carry_meta(old: &Path, new: &Path) -> Result<(), SnapshotError> {
    let from = old.join(META_DIR);
    let to = new.join(META_DIR);
    if exists(&from)? && !exists(&to)? {
        fs::rename(&from, &to).map_err(io_error("move", &from))?;
        fsync_dir(new).map_err(io_error("fsync", new))?;
    }
    Ok(())
}

fn exists(path: &Path) -> Result<bool, SnapshotError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error("read", path)(e)),
    }
}

/// When the persistence path is a symlink (to a data volume), the restore
/// works on the directory it points to, so the link stays a link.
fn resolve_symlinks(path: &Path) -> Result<PathBuf, SnapshotError> {
    let mut p = path.to_path_buf();
    for _ in 0..16 {
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs::read_link(&p).map_err(io_error("read the symlink", &p))?;
                p = match p.parent() {
                    Some(dir) => dir.join(target),
                    None => target,
                };
            }
            _ => return Ok(p),
        }
    }
    Err(SnapshotError::Io {
        action: "resolve",
        path: path.to_path_buf(),
        source: io::Error::other("too many levels of symbolic links"),
    })
}

/// What a walk over a tree found.
struct TreeStats {
    digest: String,
    files: u64,
    bytes: u64,
    dirs: u64,
    symlinks: u64,
    skipped: Vec<String>,
}

impl TreeStats {
    fn empty() -> TreeStats {
        TreeStats {
            digest: TreeHasher::new().finish(),
            files: 0,
            bytes: 0,
            dirs: 0,
            symlinks: 0,
            skipped: Vec::new(),
        }
    }
}

/// The tree digest: one length-prefixed record per entry, in walk order.
struct TreeHasher(Sha256);

impl TreeHasher {
    fn new() -> TreeHasher {
        let mut h = Sha256::new();
        h.update(b"slipway-tree-v1\0");
        TreeHasher(h)
    }

    fn field(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
    }

    fn entry(&mut self, rel: &Path, kind: u8, mode: u32, size: u64, payload: &[u8]) {
        self.field(rel.as_os_str().as_bytes());
        self.0.update([kind]);
        self.0.update((mode & 0o7777).to_be_bytes());
        self.0.update(size.to_be_bytes());
        self.field(payload);
    }

    fn finish(self) -> String {
        format!("sha256:{}", hex::encode(self.0.finalize()))
    }
}

/// Visits every entry under `root` (not `root` itself) in sorted order,
/// depth first, directories before their contents, without following
/// symlinks and without the top-level `meta/`. Entries that vanish during
/// the walk are skipped.
fn walk(
    root: &Path,
    mut visit: impl FnMut(&Path, &Path, &Metadata) -> Result<(), SnapshotError>,
) -> Result<(), SnapshotError> {
    let walker = walkdir::WalkDir::new(root)
        .follow_links(false)
        .follow_root_links(true)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| !(e.depth() == 1 && e.file_name() == META_DIR));
    for entry in walker {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                let path = e.path().unwrap_or(root).to_path_buf();
                match e.into_io_error() {
                    Some(io) if io.kind() == io::ErrorKind::NotFound => continue,
                    Some(io) => return Err(io_error("read", &path)(io)),
                    None => {
                        return Err(io_error("walk", &path)(io::Error::other(
                            "file system loop",
                        )))
                    }
                }
            }
        };
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) => match e.into_io_error() {
                Some(io) if io.kind() == io::ErrorKind::NotFound => continue,
                Some(io) => return Err(io_error("read", entry.path())(io)),
                None => continue,
            },
        };
        let rel = entry.path().strip_prefix(root).unwrap_or(entry.path());
        visit(entry.path(), rel, &meta)?;
    }
    Ok(())
}

/// Opens a regular file without following a symlink; `None` if it vanished.
fn open_nofollow(path: &Path) -> Result<Option<File>, SnapshotError> {
    match OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
    {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("open", path)(e)),
    }
}

/// Reads `src` to the end, hashing it and, if given, writing it to `dst`.
fn hash_stream(
    src: &mut File,
    mut dst: Option<&mut File>,
    buf: &mut [u8],
) -> io::Result<([u8; 32], u64)> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        let n = match src.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        if let Some(d) = dst.as_deref_mut() {
            d.write_all(&buf[..n])?;
        }
        size += n as u64;
    }
    Ok((hasher.finalize().into(), size))
}

fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn timestamps(meta: &Metadata) -> rustix::fs::Timestamps {
    rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: meta.atime(),
            tv_nsec: meta.atime_nsec() as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: meta.mtime(),
            tv_nsec: meta.mtime_nsec() as _,
        },
    }
}

/// Gives an open file or directory `meta`'s owner (as root), mode and times,
/// then fsyncs it.
fn finish_inode(
    file: &File,
    path: &Path,
    meta: &Metadata,
    as_root: bool,
) -> Result<(), SnapshotError> {
    if as_root {
        // Before the mode: chown clears setuid/setgid bits.
        std::os::unix::fs::fchown(file, Some(meta.uid()), Some(meta.gid()))
            .map_err(io_error("chown", path))?;
    }
    file.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(io_error("chmod", path))?;
    rustix::fs::futimens(file, &timestamps(meta))
        .map_err(|e| io_error("set the times of", path)(e.into()))?;
    file.sync_all().map_err(io_error("fsync", path))
}

/// Copies the tree under `src` (without its top-level `meta/`) to the new
/// directory `dst`, which gets `top`'s owner and mode; returns the counts and
/// the digest of what was written (equal to `tree_digest(dst)`).
fn copy_tree(src: &Path, dst: &Path, top: &Metadata) -> Result<TreeStats, SnapshotError> {
    let as_root = running_as_root();
    fs::DirBuilder::new()
        .mode(0o700)
        .create(dst)
        .map_err(io_error("create", dst))?;
    let mut hasher = TreeHasher::new();
    let mut stats = TreeStats::empty();
    let mut buf = vec![0u8; BUF_SIZE];
    // Directories get their final mode, owner and times once their contents
    // are written (a read-only source directory must stay writable until
    // then), deepest first.
    let mut dirs: Vec<(PathBuf, Metadata)> = vec![(dst.to_path_buf(), top.clone())];

    walk(src, |path, rel, meta| {
        let target = dst.join(rel);
        let ft = meta.file_type();
        if ft.is_dir() {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&target)
                .map_err(io_error("create", &target))?;
            hasher.entry(rel, b'd', meta.mode(), 0, &[]);
            stats.dirs += 1;
            dirs.push((target, meta.clone()));
        } else if ft.is_symlink() {
            let link = match fs::read_link(path) {
                Ok(l) => l,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io_error("read the symlink", path)(e)),
            };
            std::os::unix::fs::symlink(&link, &target)
                .map_err(io_error("create the symlink", &target))?;
            if as_root {
                std::os::unix::fs::lchown(&target, Some(meta.uid()), Some(meta.gid()))
                    .map_err(io_error("chown", &target))?;
            }
            rustix::fs::utimensat(
                rustix::fs::CWD,
                &target,
                &timestamps(meta),
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io_error("set the times of", &target)(e.into()))?;
            hasher.entry(rel, b'l', 0, 0, link.as_os_str().as_bytes());
            stats.symlinks += 1;
        } else if ft.is_file() {
            let Some(mut input) = open_nofollow(path)? else {
                return Ok(());
            };
            // The mode and times of the file actually opened.
            let meta = input.metadata().map_err(io_error("read", path))?;
            let mut output = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&target)
                .map_err(io_error("create", &target))?;
            let (hash, size) = hash_stream(&mut input, Some(&mut output), &mut buf)
                .map_err(io_error("copy", path))?;
            finish_inode(&output, &target, &meta, as_root)?;
            hasher.entry(rel, b'f', meta.mode(), size, &hash);
            stats.files += 1;
            stats.bytes += size;
        } else {
            stats.skipped.push(rel.to_string_lossy().into_owned());
        }
        Ok(())
    })?;

    for (dir, meta) in dirs.iter().rev() {
        let handle = File::open(dir).map_err(io_error("open", dir))?;
        finish_inode(&handle, dir, meta, as_root)?;
    }
    stats.digest = hasher.finish();
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_covers_content_mode_type_and_names_but_not_meta() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("p");
        fs::create_dir_all(p.join("sub")).expect("mkdir");
        fs::write(p.join("sub/a"), b"one").expect("write");
        let d0 = tree_digest(&p).expect("digest");
        assert_eq!(d0, tree_digest(&p).expect("digest"), "stable");

        fs::create_dir_all(p.join("meta")).expect("mkdir");
        fs::write(p.join("meta/version.json"), b"{}").expect("write");
        assert_eq!(d0, tree_digest(&p).expect("digest"), "meta/ is not data");

        fs::write(p.join("sub/a"), b"two").expect("write");
        let d1 = tree_digest(&p).expect("digest");
        assert_ne!(d0, d1, "content");

        fs::set_permissions(p.join("sub/a"), fs::Permissions::from_mode(0o600)).expect("chmod");
        let d2 = tree_digest(&p).expect("digest");
        assert_ne!(d1, d2, "mode");

        std::os::unix::fs::symlink("a", p.join("sub/link")).expect("symlink");
        let d3 = tree_digest(&p).expect("digest");
        assert_ne!(d2, d3, "symlink");

        // A nested meta/ is data.
        fs::create_dir(p.join("sub/meta")).expect("mkdir");
        assert_ne!(d3, tree_digest(&p).expect("digest"), "nested meta");

        assert_eq!(
            tree_digest(&dir.path().join("missing")).expect("missing"),
            TreeStats::empty().digest
        );
    }

    #[test]
    fn bad_stamps_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        for stamp in ["", "../x", ".hidden", "a/b", "x.partial"] {
            assert!(
                matches!(
                    take_snapshot(dir.path(), &dir.path().join("backups"), stamp),
                    Err(SnapshotError::BadStamp { .. })
                ),
                "{stamp}"
            );
        }
    }

    #[test]
    fn a_damaged_snapshot_is_refused_before_anything_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("p");
        fs::create_dir(&p).expect("mkdir");
        fs::write(p.join("state.json"), b"{\"trades\":1}").expect("write");
        let snap = take_snapshot(&p, &dir.path().join("backups"), "s1").expect("snapshot");
        fs::write(snap.dir.join("data/state.json"), b"{\"trades\":666}").expect("tamper");
        fs::write(p.join("state.json"), b"{\"trades\":2}").expect("write");
        let err = restore_snapshot(&snap, &p).expect_err("damaged");
        assert!(matches!(err, SnapshotError::Damaged { .. }), "{err}");
        assert_eq!(
            fs::read(p.join("state.json")).expect("read"),
            b"{\"trades\":2}"
        );
        assert!(!dir.path().join("p.slipway-restore").exists());
    }
}

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
//!
//! The app is untrusted and may swap anything in its persistence directory
//! for a symlink while slipway works on it: every walk, copy, rename and
//! removal there goes through directory descriptors and never resolves a
//! symlink ([`crate::app_dir`]). A link is copied as a link; a directory
//! swapped for a link mid-walk is either seen as the link or, once opened,
//! read as the directory it was.

use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::app_dir::{self, AppDirError, Dir, Visit};
use crate::config::ServiceConfig;
use crate::durable::{fsync_dir, remove_tree, write_json_atomic};
use crate::health::{control_agent, control_post};
use crate::hooks::{self, HookError};

/// The directory inside a snapshot that holds the copied tree.
pub const DATA_DIR: &str = "data";
/// The record inside a snapshot.
pub const RECORD_FILE: &str = "snapshot.json";
/// The persistence's top-level directory that belongs to slipway.
pub const META_DIR: &str = app_dir::META_DIR;
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
    #[error("there is no complete snapshot {name:?} in {}; `slipway backups` lists them", dir.display())]
    NotFound { name: String, dir: PathBuf },
    #[error("snapshot {} cannot be used: {message}; restore from another snapshot in the same backups directory", dir.display())]
    Corrupt { dir: PathBuf, message: String },
    #[error("snapshot {} is damaged: its data digests to {actual} but it recorded {expected}; nothing was changed; restore from another snapshot", dir.display())]
    Damaged {
        dir: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("the restore copy {} was replaced while slipway wrote it (by the app?); nothing was switched; stop the app and restore again", path.display())]
    CopySwapped { path: PathBuf },
    #[error(transparent)]
    AppDir(#[from] AppDirError),
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
    /// Which release and schema the data belonged to, and why it was
    /// taken (absent in snapshots from before these were recorded).
    #[serde(default)]
    about: SnapshotAbout,
}

/// What a snapshot is of, for `slipway backups` and the journal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotAbout {
    /// Why it was taken: `pre-update` (before the data step of an update or
    /// a rollback; taken again as `<txn>-paused` after the quiesce when
    /// the app saved), `pre-restore` (the same, before `slipway restore`),
    /// `kept-aside` (the data a flip back or a restore replaced), `manual`;
    /// `paused` in snapshots of earlier versions.
    pub reason: String,
    /// The release that wrote the data (the one running when it was taken).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Its directory under `releases/` (`<version>-<id12>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// The data's schema version, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<u32>,
}

/// A snapshot as `slipway backups` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    /// Its name under `backups/` (what `slipway restore` takes).
    pub name: String,
    pub dir: PathBuf,
    /// Seconds since the epoch.
    pub created_unix: u64,
    pub files: u64,
    pub bytes: u64,
    pub digest: String,
    #[serde(flatten)]
    pub about: SnapshotAbout,
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
    take_snapshot_about(persistence, backups_dir, stamp, &SnapshotAbout::default())
}

/// [`take_snapshot`], recording which release and schema the data belongs
/// to and why the snapshot was taken.
pub fn take_snapshot_about(
    persistence: &Path,
    backups_dir: &Path,
    stamp: &str,
    about: &SnapshotAbout,
) -> Result<Snapshot, SnapshotError> {
    if !is_plain_name(stamp) {
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
    // A snapshot that cannot be completed (the disk filled up, the app
    // removed a directory under it) takes its partial copy with it at once:
    // nothing else is written before the room is given back.
    let result = (|| {
        let partial_dir = Dir::open_trusted(&partial)?;
        let (stats, source_missing) = match app_dir::open_persistence(persistence)? {
            None => {
                let data = partial_dir.ensure_dir(OsStr::new(DATA_DIR), 0o755, None)?;
                data.sync()?;
                (TreeStats::empty(), true)
            }
            Some(source) => {
                let top = source.metadata()?;
                let (stats, _) = copy_tree(&source, &partial_dir, OsStr::new(DATA_DIR), &top)?;
                (stats, false)
            }
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
            about: about.clone(),
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

/// Every complete snapshot in `backups_dir` with its record, newest first.
pub fn list_snapshot_infos(backups_dir: &Path) -> Vec<SnapshotInfo> {
    let Ok(entries) = fs::read_dir(backups_dir) else {
        return Vec::new();
    };
    let mut found: Vec<SnapshotInfo> = entries
        .flatten()
        .filter_map(|entry| read_info(&entry.path(), &entry.file_name().to_string_lossy()))
        .collect();
    found.sort_by(|a, b| {
        b.created_unix
            .cmp(&a.created_unix)
            .then_with(|| b.name.cmp(&a.name))
    });
    found
}

/// The snapshot `dir` (named `name`) with its record, when it is complete:
/// a real directory (not a link, not `.partial`) with a readable
/// `snapshot.json` and a `data/` directory.
fn read_info(dir: &Path, name: &str) -> Option<SnapshotInfo> {
    if name.ends_with(PARTIAL_SUFFIX) || name.starts_with('.') {
        return None;
    }
    if !fs::symlink_metadata(dir).ok()?.is_dir() {
        return None;
    }
    let record = fs::read_to_string(dir.join(RECORD_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<SnapshotRecord>(&t).ok())?;
    if !fs::symlink_metadata(dir.join(DATA_DIR)).ok()?.is_dir() {
        return None;
    }
    Some(SnapshotInfo {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        created_unix: record.created_unix,
        files: record.files,
        bytes: record.bytes,
        digest: record.digest,
        about: record.about,
    })
}

/// The complete snapshot called `name` in `backups_dir` (what `slipway
/// restore NAME` takes): [`SnapshotError::BadStamp`] for a name that is not
/// a plain file name, [`SnapshotError::NotFound`] when there is no complete
/// snapshot of that name.
pub fn find_snapshot(backups_dir: &Path, name: &str) -> Result<SnapshotInfo, SnapshotError> {
    if !is_plain_name(name) {
        return Err(SnapshotError::BadStamp {
            stamp: name.to_string(),
        });
    }
    read_info(&backups_dir.join(name), name).ok_or_else(|| SnapshotError::NotFound {
        name: name.to_string(),
        dir: backups_dir.to_path_buf(),
    })
}

/// The newest of `newest_first` that holds data written by the release in
/// `releases/<release_dir>` (or another copy of the same `version`) at a
/// schema in `schemas`: the data that release can run on again. What
/// `slipway rollback --restore-data` restores, and what `gc` keeps for it.
/// A snapshot that does not record its release and schema never matches.
pub fn newest_data_of<'a>(
    newest_first: &'a [SnapshotInfo],
    release_dir: &str,
    version: &str,
    schemas: std::ops::RangeInclusive<u32>,
) -> Option<&'a SnapshotInfo> {
    newest_first.iter().find(|s| {
        let same_release = s.about.release.as_deref() == Some(release_dir)
            || s.about.version.as_deref() == Some(version);
        same_release && s.about.schema.is_some_and(|v| schemas.contains(&v))
    })
}

/// A name that stays one entry of `backups/`.
fn is_plain_name(name: &str) -> bool {
    !(name.is_empty()
        || name.starts_with('.')
        || name.contains('/')
        || name.contains('\0')
        || name.ends_with(PARTIAL_SUFFIX))
}

/// SHA-256 over the sorted entries of `dir` (path, type, mode, size, and the
/// content's SHA-256 or the link target), without the top-level `meta/`.
/// Equal digests mean equal data; a missing `dir` digests as an empty tree.
/// `dir` is the persistence directory, opened as [`app_dir::open_persistence`]
/// does: nothing under it is followed.
pub fn tree_digest(dir: &Path) -> Result<String, SnapshotError> {
    match app_dir::open_persistence(dir)? {
        None => Ok(TreeHasher::new().finish()),
        Some(top) => digest_dir(&top),
    }
}

/// [`tree_digest`] of an open directory.
fn digest_dir(top: &Dir) -> Result<String, SnapshotError> {
    let mut hasher = TreeHasher::new();
    let mut buf = vec![0u8; BUF_SIZE];
    app_dir::walk(top, &[META_DIR], &mut |e, visit| {
        match visit {
            Visit::Enter(_) => hasher.entry(e.rel, b'd', e.meta.mode(), 0, &[]),
            Visit::Symlink(target) => hasher.entry(e.rel, b'l', 0, 0, target.as_bytes()),
            Visit::File => {
                let Some(mut file) = e.parent.open_file(e.name)? else {
                    return Ok(());
                };
                let meta = file.metadata().map_err(io_error("read", e.rel))?;
                let (hash, size) = hash_stream(&mut file, None, &mut buf)
                    .map_err(io_error("read", &e.parent.path().join(e.name)))?;
                hasher.entry(e.rel, b'f', meta.mode(), size, &hash);
            }
            Visit::Leave(_) | Visit::Special => {}
        }
        Ok::<(), SnapshotError>(())
    })?;
    Ok(hasher.finish())
}

/// How long ago the newest regular file under `persistence` (not counting
/// `meta/`) was modified: the "persistence save is fresh" rule. `None` when
/// there is no such file or no persistence directory. A modification time in
/// the future counts as now.
pub fn newest_save_age(persistence: &Path) -> Result<Option<Duration>, SnapshotError> {
    let Some(top) = app_dir::open_persistence(persistence)? else {
        return Ok(None);
    };
    let mut newest: Option<SystemTime> = None;
    app_dir::walk(&top, &[META_DIR], &mut |e, visit| {
        if let Visit::File = visit {
            if let Ok(m) = e.meta.modified() {
                newest = Some(newest.map_or(m, |n| n.max(m)));
            }
        }
        Ok::<(), SnapshotError>(())
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
///
/// P's parent may be the app's to write: everything is done by name in the
/// parent's descriptor, R is written only through descriptors of the
/// directories created here, and before step 2 and after step 3 the name
/// must still be the copy just written, else [`SnapshotError::CopySwapped`]
/// (before step 2: nothing switched). A P that the app replaced with a
/// symlink is refused ([`AppDirError::UntrustedLink`]).
pub fn restore_snapshot(snapshot: &Snapshot, persistence: &Path) -> Result<(), SnapshotError> {
    let source_path = snapshot.dir.join(DATA_DIR);
    let corrupt = |e: &dyn std::fmt::Display| SnapshotError::Corrupt {
        dir: snapshot.dir.clone(),
        message: format!("cannot read {}: {e}", source_path.display()),
    };
    let source = Dir::open_trusted(&source_path).map_err(|e| corrupt(&e))?;
    let source_meta = source.metadata().map_err(|e| corrupt(&e))?;
    // The parent, reached without an untrusted link (an operator's link to
    // a data volume is followed, so the link stays a link); everything
    // below works by name in it, so P, R and O stay where they were.
    let Some(loc) = app_dir::locate(persistence, true)? else {
        return Err(SnapshotError::NotADirectory {
            path: persistence.to_path_buf(),
        });
    };
    let parent = &loc.parent;
    let p = loc.name.clone();
    let sibling = |suffix: &str| {
        let mut n = p.clone();
        n.push(suffix);
        n
    };
    let (r, o) = (sibling(RESTORE_SUFFIX), sibling(OLD_SUFFIX));
    let exists = |name: &OsStr| -> Result<bool, SnapshotError> {
        Ok(parent.entry_metadata(name)?.is_some())
    };

    // Step 0: finish an interrupted run.
    if exists(&p)? && exists(&o)? {
        carry_meta(parent, &o, &p)?;
        parent.remove_tree(&o)?;
        parent.sync()?;
        if digest_dir(&open_dir(parent, &p)?)? == snapshot.digest {
            parent.remove_tree(&r)?;
            return Ok(parent.sync()?);
        }
    }

    // Step 1: the restore copy, with the current directory's mode and owner.
    let top = match (parent.entry_metadata(&p)?, parent.entry_metadata(&o)?) {
        (Some(m), _) | (None, Some(m)) if m.is_dir() => m,
        (None, None) => source_meta.clone(),
        _ => return Err(SnapshotError::NotADirectory { path: loc.path() }),
    };
    parent.remove_tree(&r)?;
    let (stats, copy) = match copy_tree(&source, parent, &r, &top) {
        Ok(done) => done,
        Err(e) => {
            // A copy that cannot be completed (the disk is full) gives its
            // room back at once; the next run copies again from the start.
            let _ = parent.remove_tree(&r);
            let _ = parent.sync();
            return Err(e);
        }
    };
    if stats.digest != snapshot.digest {
        parent.remove_tree(&r)?;
        return Err(SnapshotError::Damaged {
            dir: snapshot.dir.clone(),
            expected: snapshot.digest.clone(),
            actual: stats.digest,
        });
    }
    parent.sync()?;
    // The parent may be the app's to write: R must still be the copy just
    // written, not something swapped in under its name.
    let copy_meta = copy.metadata()?;
    let is_copy = |name: &OsStr| -> Result<bool, SnapshotError> {
        Ok(parent
            .entry_metadata(name)?
            .is_some_and(|m| app_dir::same_inode(&m, &copy_meta)))
    };
    if !is_copy(&r)? {
        parent.remove_tree(&r)?;
        return Err(SnapshotError::CopySwapped {
            path: parent.path().join(&r),
        });
    }

    // Step 2: move the live tree aside.
    if exists(&p)? {
        parent.rename(&p, parent, &o)?;
        parent.sync()?;
    }
    // The crash tests' window with no persistence directory at all.
    crate::fault::at_point("restore-moved-aside");

    // Step 3: the switch.
    parent.rename(&r, parent, &p)?;
    parent.sync()?;
    if !is_copy(&p)? {
        return Err(SnapshotError::CopySwapped {
            path: parent.path().join(&r),
        });
    }

    // Step 4: slipway's outputs stay current.
    carry_meta(parent, &o, &p)?;

    // Step 5.
    parent.remove_tree(&o)?;
    parent.sync()?;

    let actual = digest_dir(&open_dir(parent, &p)?)?;
    if actual != snapshot.digest {
        return Err(SnapshotError::RestoreMismatch {
            persistence: loc.path(),
            snapshot: snapshot.dir.clone(),
            expected: snapshot.digest.clone(),
            actual,
        });
    }
    Ok(())
}

/// The directory `name` in `parent`, which must exist.
fn open_dir(parent: &Dir, name: &OsStr) -> Result<Dir, SnapshotError> {
    parent
        .open_dir(name)?
        .ok_or_else(|| SnapshotError::NotADirectory {
            path: parent.path().join(name),
        })
}

/// Moves `old/meta` to `new/meta` (both in `parent`) unless `new` already
/// has one; fsyncs `new`. The entry is moved whatever it is, never followed.
fn carry_meta(parent: &Dir, old: &OsStr, new: &OsStr) -> Result<(), SnapshotError> {
    let Some(old) = parent.open_dir(old)? else {
        return Ok(());
    };
    let new = open_dir(parent, new)?;
    let meta = OsStr::new(META_DIR);
    if old.entry_metadata(meta)?.is_some() && new.entry_metadata(meta)?.is_none() {
        old.rename(meta, &new, meta)?;
        new.sync()?;
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
/// directory `name` in `dest`, which gets `top`'s owner and mode; returns the
/// counts and the digest of what was written (equal to its [`tree_digest`])
/// and the new directory, open.
///
/// Both sides are reached only through directory descriptors: a link in
/// `src` is copied as a link, and the copy is written into the directory
/// created here whatever its name comes to point at.
fn copy_tree(
    src: &Dir,
    dest: &Dir,
    name: &OsStr,
    top: &Metadata,
) -> Result<(TreeStats, Dir), SnapshotError> {
    let as_root = running_as_root();
    match rustix::fs::mkdirat(dest, name, rustix::fs::Mode::from_raw_mode(0o700)) {
        Ok(()) => {}
        Err(e) => return Err(io_error("create", &dest.path().join(name))(e.into())),
    }
    let root = open_dir(dest, name)?;
    let mut hasher = TreeHasher::new();
    let mut stats = TreeStats::empty();
    let mut buf = vec![0u8; BUF_SIZE];
    // The directories being written, innermost last. Each gets its final
    // mode, owner and times once its contents are written (a read-only
    // source directory must stay writable until then).
    let mut open: Vec<(Dir, Metadata)> = Vec::new();

    app_dir::walk(src, &[META_DIR], &mut |e, visit| {
        let into = open.last().map_or(&root, |(d, _)| d);
        let target = into.path().join(e.name);
        match visit {
            Visit::Enter(_) => {
                rustix::fs::mkdirat(into, e.name, rustix::fs::Mode::from_raw_mode(0o700))
                    .map_err(|err| io_error("create", &target)(err.into()))?;
                let dir = open_dir(into, e.name)?;
                hasher.entry(e.rel, b'd', e.meta.mode(), 0, &[]);
                stats.dirs += 1;
                open.push((dir, e.meta.clone()));
            }
            Visit::Leave(_) => {
                if let Some((dir, meta)) = open.pop() {
                    finish_inode(dir.file(), dir.path(), &meta, as_root)?;
                }
            }
            Visit::Symlink(link) => {
                rustix::fs::symlinkat(link, into, e.name)
                    .map_err(|err| io_error("create the symlink", &target)(err.into()))?;
                if as_root {
                    rustix::fs::chownat(
                        into,
                        e.name,
                        Some(rustix::fs::Uid::from_raw(e.meta.uid())),
                        Some(rustix::fs::Gid::from_raw(e.meta.gid())),
                        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(|err| io_error("chown", &target)(err.into()))?;
                }
                rustix::fs::utimensat(
                    into,
                    e.name,
                    &timestamps(e.meta),
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|err| io_error("set the times of", &target)(err.into()))?;
                hasher.entry(e.rel, b'l', 0, 0, link.as_bytes());
                stats.symlinks += 1;
            }
            Visit::File => {
                let Some(mut input) = e.parent.open_file(e.name)? else {
                    return Ok(());
                };
                // The mode and times of the file actually opened.
                let source = e.parent.path().join(e.name);
                let meta = input.metadata().map_err(io_error("read", &source))?;
                let mut output = into.create_file(e.name, 0o600)?;
                let (hash, size) = hash_stream(&mut input, Some(&mut output), &mut buf)
                    .map_err(io_error("copy", &source))?;
                finish_inode(&output, &target, &meta, as_root)?;
                hasher.entry(e.rel, b'f', meta.mode(), size, &hash);
                stats.files += 1;
                stats.bytes += size;
            }
            Visit::Special => stats.skipped.push(e.rel.to_string_lossy().into_owned()),
        }
        Ok::<(), SnapshotError>(())
    })?;

    finish_inode(root.file(), root.path(), top, as_root)?;
    stats.digest = hasher.finish();
    Ok((stats, root))
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
    fn backups_are_found_by_name_and_by_the_release_and_schema_of_their_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("p");
        fs::create_dir(&p).expect("mkdir");
        let backups = dir.path().join("backups");
        let about = |release: &str, version: &str, schema: Option<u32>| SnapshotAbout {
            reason: "pre-update".into(),
            version: Some(version.into()),
            release: Some(release.into()),
            schema,
        };
        take_snapshot_about(&p, &backups, "s1", &about("1.0.0-aaa", "1.0.0", Some(1))).expect("s1");
        take_snapshot_about(&p, &backups, "s2", &about("2.0.0-bbb", "2.0.0", Some(2))).expect("s2");
        take_snapshot(&p, &backups, "s3").expect("s3, recording nothing");
        fs::create_dir_all(backups.join("s4.partial/data")).expect("partial");

        assert_eq!(find_snapshot(&backups, "s1").expect("s1").name, "s1");
        for bad in ["../p", ".s1", "", "s4.partial"] {
            assert!(
                matches!(
                    find_snapshot(&backups, bad),
                    Err(SnapshotError::BadStamp { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            find_snapshot(&backups, "nope"),
            Err(SnapshotError::NotFound { .. })
        ));

        let infos = list_snapshot_infos(&backups);
        assert_eq!(infos.len(), 3, "{infos:?}");
        let of = |dir: &str, version: &str, schemas| {
            newest_data_of(&infos, dir, version, schemas).map(|s| s.name.clone())
        };
        assert_eq!(of("1.0.0-aaa", "1.0.0", 1..=1), Some("s1".into()));
        // Another copy of the same version matches by version.
        assert_eq!(of("1.0.0-ccc", "1.0.0", 1..=1), Some("s1".into()));
        // Data at a schema the release does not read never matches.
        assert_eq!(of("1.0.0-aaa", "1.0.0", 2..=3), None);
        assert_eq!(of("3.0.0-ddd", "3.0.0", 1..=3), None);
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

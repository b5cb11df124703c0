//! Step 15, collect: remove what no transaction needs any more.
//!
//! - `releases/`: keeps `keep_releases` release directories in all. The
//!   targets of `current` and `previous` and anything `protected` are always
//!   kept and count first; the newest others (by staged time) fill the rest.
//!   Leftover `.staging-*` directories are removed: the caller holds the
//!   transaction lock, so no stage is in flight and any staging directory is
//!   the debris of a killed run.
//! - `backups/`: removes `*.partial` snapshots (killed mid-archive) and keeps
//!   `keep_snapshots` snapshots in all, whatever they were taken for
//!   (`pre-update`, `paused`, `pre-restore`, `kept-aside`, ...): protected
//!   ones first, then the newest by the time their record says they were
//!   taken (by name when two agree; an entry without a readable record is
//!   the oldest).
//! - `downloads/`: removes entries older than [`DOWNLOAD_MAX_AGE`].
//! - `state/` and the root: removes temporary files a killed atomic write
//!   left behind (`.<name>.tmp.<pid>`, `.<name>.link.<pid>`), and the
//!   identity records (`state/releases/*.stat`) of releases no longer there.
//!
//! Releases share the inodes of unchanged files (staging hardlinks them):
//! removing one only unlinks its directory entries, never truncates or
//! chmods a file, so the releases kept are untouched; the ctime those
//! unlinks move is carried over to their identity records
//! ([`crate::identity::remove_release_tree`]).
//!
//! Nothing is followed through a symlink: entries are judged by their own
//! metadata, a symlink is removed as a link, and a top-level directory that
//! is itself a symlink is refused. Removal is best effort: every candidate is
//! tried, and the failures are returned together with what was done.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use thiserror::Error;

use crate::durable;
use crate::layout::Layout;

/// Downloads older than this are removed (a resumable partial download is
/// resumed well within it).
pub const DOWNLOAD_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The prefix of a release being staged in `releases/`.
pub const STAGING_PREFIX: &str = ".staging-";
/// The suffix of a snapshot being written in `backups/`.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// What [`collect`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub removed_releases: Vec<PathBuf>,
    pub removed_snapshots: Vec<PathBuf>,
    pub removed_downloads: Vec<PathBuf>,
    /// Temporary files of killed atomic writes.
    pub removed_temp_files: Vec<PathBuf>,
    /// Release directories and snapshots kept.
    pub kept: Vec<PathBuf>,
}

/// One path that could not be removed.
#[derive(Debug)]
pub struct RemoveFailure {
    pub path: PathBuf,
    pub source: io::Error,
}

/// Why collection did not finish.
#[derive(Debug, Error)]
pub enum GcError {
    #[error(
        "cannot list {path}: {source}; check that slipway runs as the owner of the install root"
    )]
    List { path: PathBuf, source: io::Error },
    #[error("{path} is a symlink; slipway only collects inside its root and never follows links out of it: make it a directory")]
    Symlink { path: PathBuf },
    #[error(
        "could not remove {} path(s), first {}: {}; fix the permissions and run `slipway gc` again",
        .failures.len(),
        .failures.first().map_or_else(String::new, |f| f.path.display().to_string()),
        .failures.first().map_or_else(String::new, |f| f.source.to_string())
    )]
    Remove {
        failures: Vec<RemoveFailure>,
        /// What was removed and kept despite the failures.
        report: Box<GcReport>,
    },
}

/// Collects garbage under `layout` (see the module docs). Call it with the
/// transaction lock held. `protected` holds paths (absolute, or relative to
/// the root) the journal still needs or a pending update lives in; a release
/// or snapshot that contains one, or lies inside one, is kept.
pub fn collect(
    layout: &Layout,
    keep_releases: usize,
    keep_snapshots: usize,
    protected: &[PathBuf],
) -> Result<GcReport, GcError> {
    collect_at(
        layout,
        keep_releases,
        keep_snapshots,
        protected,
        SystemTime::now(),
    )
}

/// [`collect`] with "now" given, for the download age.
pub fn collect_at(
    layout: &Layout,
    keep_releases: usize,
    keep_snapshots: usize,
    protected: &[PathBuf],
    now: SystemTime,
) -> Result<GcReport, GcError> {
    let root = layout.root();
    let mut pinned: Vec<PathBuf> = protected.iter().map(|p| normalize(root, p)).collect();
    for link in [layout.current_link(), layout.previous_link()] {
        if let Ok(Some(target)) = durable::read_link_opt(&link) {
            pinned.push(normalize(root, &target));
        }
    }
    let is_pinned = |p: &Path| pinned.iter().any(|q| q.starts_with(p) || p.starts_with(q));

    let mut report = GcReport::default();
    let mut doomed: Vec<(PathBuf, Bucket)> = Vec::new();

    // releases/
    let mut releases = Vec::new();
    for (path, name, meta) in list(&layout.releases_dir())? {
        if !meta.is_dir() {
            continue;
        }
        if name.starts_with(STAGING_PREFIX) {
            if !is_pinned(&path) {
                doomed.push((path, Bucket::Release));
            }
        } else if !name.starts_with('.') {
            let staged = staged_time(&path, &meta);
            releases.push((path, staged, name));
        }
    }
    releases.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.2.cmp(&a.2)));
    keep_newest(
        releases.into_iter().map(|(p, _, _)| p).collect(),
        keep_releases,
        &is_pinned,
        &mut report.kept,
        &mut doomed,
        Bucket::Release,
    );

    // backups/
    let mut snapshots = Vec::new();
    for (path, name, _) in list(&layout.backups_dir())? {
        if name.ends_with(PARTIAL_SUFFIX) && !is_pinned(&path) {
            doomed.push((path, Bucket::Snapshot));
        } else if !name.starts_with('.') {
            snapshots.push((path, name));
        }
    }
    let taken: std::collections::HashMap<String, u64> =
        crate::snapshot::list_snapshot_infos(&layout.backups_dir())
            .into_iter()
            .map(|i| (i.name, i.created_unix))
            .collect();
    let when = |name: &String| taken.get(name).copied().unwrap_or(0);
    snapshots.sort_by(|a, b| when(&b.1).cmp(&when(&a.1)).then_with(|| b.1.cmp(&a.1)));
    keep_newest(
        snapshots.into_iter().map(|(p, _)| p).collect(),
        keep_snapshots,
        &is_pinned,
        &mut report.kept,
        &mut doomed,
        Bucket::Snapshot,
    );

    // downloads/
    for (path, _, meta) in list(&layout.downloads_dir())? {
        let old = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age > DOWNLOAD_MAX_AGE);
        if old && !is_pinned(&path) {
            doomed.push((path, Bucket::Download));
        }
    }

    // Temporary files of killed atomic writes (the lock is held: none is live).
    for dir in [root.to_path_buf(), layout.state_dir()] {
        for (path, name, meta) in list(&dir)? {
            if !meta.is_dir() && is_durable_temp(&name) {
                doomed.push((path, Bucket::Temp));
            }
        }
    }

    let mut failures = Vec::new();
    for (path, bucket) in doomed {
        let removed = match bucket {
            // Files shared with the releases kept are unlinked here, never
            // truncated or chmodded; their identity records follow.
            Bucket::Release => crate::identity::remove_release_tree(layout, &path),
            _ => durable::remove_tree(&path),
        };
        match removed {
            Ok(()) => match bucket {
                Bucket::Release => report.removed_releases.push(path),
                Bucket::Snapshot => report.removed_snapshots.push(path),
                Bucket::Download => report.removed_downloads.push(path),
                Bucket::Temp => report.removed_temp_files.push(path),
            },
            Err(source) => failures.push(RemoveFailure { path, source }),
        }
    }
    // Identity records of releases removed by other means.
    if let Err(source) = crate::identity::remove_orphans(layout) {
        failures.push(RemoveFailure {
            path: crate::identity::records_dir(layout),
            source,
        });
    }
    for dir in [
        layout.releases_dir(),
        layout.backups_dir(),
        layout.downloads_dir(),
    ] {
        if dir.is_dir() {
            if let Err(source) = durable::fsync_dir(&dir) {
                failures.push(RemoveFailure { path: dir, source });
            }
        }
    }
    if failures.is_empty() {
        Ok(report)
    } else {
        Err(GcError::Remove {
            failures,
            report: Box::new(report),
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum Bucket {
    Release,
    Snapshot,
    Download,
    Temp,
}

/// Keeps the pinned entries of `newest_first`, then the newest others until
/// `keep` are kept in all; the rest are doomed.
fn keep_newest(
    newest_first: Vec<PathBuf>,
    keep: usize,
    is_pinned: &dyn Fn(&Path) -> bool,
    kept: &mut Vec<PathBuf>,
    doomed: &mut Vec<(PathBuf, Bucket)>,
    bucket: Bucket,
) {
    let (pinned, others): (Vec<_>, Vec<_>) = newest_first.into_iter().partition(|p| is_pinned(p));
    let room = keep.saturating_sub(pinned.len());
    kept.extend(pinned);
    for (i, p) in others.into_iter().enumerate() {
        if i < room {
            kept.push(p);
        } else {
            doomed.push((p, bucket));
        }
    }
}

/// The entries of `dir` with their own (not followed) metadata; nothing when
/// `dir` does not exist; an error when it is a symlink.
fn list(dir: &Path) -> Result<Vec<(PathBuf, String, fs::Metadata)>, GcError> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(GcError::List {
                path: dir.to_path_buf(),
                source,
            })
        }
        Ok(m) if m.file_type().is_symlink() => {
            return Err(GcError::Symlink {
                path: dir.to_path_buf(),
            })
        }
        Ok(_) => {}
    }
    let list_err = |source| GcError::List {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(list_err)? {
        let entry = entry.map_err(list_err)?;
        let meta = match fs::symlink_metadata(entry.path()) {
            Ok(m) => m,
            // Removed under us: nothing to collect.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(list_err(e)),
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        out.push((entry.path(), name, meta));
    }
    Ok(out)
}

/// When a release was staged: the mtime of its `slipway/manifest.json`,
/// else of the directory itself.
fn staged_time(dir: &Path, meta: &fs::Metadata) -> SystemTime {
    fs::symlink_metadata(dir.join(slipway_formats::MANIFEST_PATH))
        .ok()
        .filter(|m| m.is_file())
        .and_then(|m| m.modified().ok())
        .or_else(|| meta.modified().ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// `.<name>.tmp.<pid>` or `.<name>.link.<pid>`: what `durable` writes before
/// its rename.
fn is_durable_temp(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    let Some((head, pid)) = rest.rsplit_once('.') else {
        return false;
    };
    !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit())
        && pid != std::process::id().to_string()
        && (head.ends_with(".tmp") || head.ends_with(".link"))
        && head.len() > ".tmp".len()
}

/// `p` made absolute against `root` and cleaned of `.` and `..` without
/// touching the file system (link targets are relative to the root).
fn normalize(root: &Path, p: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_recognised_narrowly() {
        assert!(is_durable_temp(".host.json.tmp.1234"));
        assert!(is_durable_temp(".current.link.9"));
        assert!(!is_durable_temp("host.json"));
        assert!(!is_durable_temp(".tmp.12"));
        assert!(!is_durable_temp(".host.json.tmp.12a"));
        assert!(!is_durable_temp(".host.json.bak.12"));
    }

    #[test]
    fn normalize_resolves_relative_targets() {
        let root = Path::new("/opt/bot");
        assert_eq!(
            normalize(root, Path::new("releases/1.0.0-abc")),
            PathBuf::from("/opt/bot/releases/1.0.0-abc")
        );
        assert_eq!(
            normalize(root, Path::new("./releases/../releases/x")),
            PathBuf::from("/opt/bot/releases/x")
        );
    }
}

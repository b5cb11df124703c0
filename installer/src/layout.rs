//! The on-host layout of SPEC §3, in one place.
//!
//! ```text
//! <root>/releases/<version>-<id12>/   unpacked releases, read-only after staging
//! <root>/releases/<version>-<id12>-rN/ a clean copy of the running release (`install --force`)
//! <root>/current  -> releases/...      the release the service runs
//! <root>/previous -> releases/...      the flip-back target
//! <root>/downloads/                    partial downloads, resumable
//! <root>/backups/<timestamp>/          persistence snapshots
//! <root>/state/                        slipway's own state (never in persistence)
//! <root>/state/index-cache/<channel>.json   the last accepted HTTP channel index
//! ```
//!
//! Every other module asks this one for a path, so the layout is read in one
//! file and changed in one file.

use std::path::{Path, PathBuf};

use slipway_formats::{Manifest, ReleaseId};

/// The most copies of one release [`Layout::fresh_release_dir`] names.
pub const MAX_RELEASE_COPIES: usize = 100;

/// The paths under one install root.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout under `root` (nothing is created).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `releases/`: one directory per staged release.
    pub fn releases_dir(&self) -> PathBuf {
        self.root.join("releases")
    }

    /// The directory a release is staged to: `releases/<version>-<id12>`.
    pub fn release_dir(&self, manifest: &Manifest, id: &ReleaseId) -> PathBuf {
        self.releases_dir().join(manifest.release_dir_name(id))
    }

    /// A directory name under `releases/` that does not exist yet for a
    /// clean copy of a release: `<version>-<id12>` when free, else
    /// `<version>-<id12>-r2`, `-r3`, ... (`install --force` of the running
    /// release stages one beside the running copy). `None` when every name up
    /// to [`MAX_RELEASE_COPIES`] is taken (`slipway gc` frees them).
    pub fn fresh_release_dir(&self, manifest: &Manifest, id: &ReleaseId) -> Option<PathBuf> {
        fresh_name(&self.releases_dir(), &manifest.release_dir_name(id))
    }

    /// The `current` symlink.
    pub fn current_link(&self) -> PathBuf {
        self.root.join("current")
    }

    /// The `previous` symlink.
    pub fn previous_link(&self) -> PathBuf {
        self.root.join("previous")
    }

    /// `downloads/`: partial and complete downloads.
    pub fn downloads_dir(&self) -> PathBuf {
        self.root.join("downloads")
    }

    /// `backups/`: persistence snapshots, one directory per transaction.
    pub fn backups_dir(&self) -> PathBuf {
        self.root.join("backups")
    }

    /// `state/`: slipway's own state.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    /// The lock every transaction holds.
    pub fn lock_file(&self) -> PathBuf {
        self.state_dir().join("lock")
    }

    /// The journal of the transaction in flight (absent when none is).
    pub fn journal_file(&self) -> PathBuf {
        self.state_dir().join("journal.json")
    }

    /// The ledger of the children a run started ([`crate::children`]).
    pub fn children_dir(&self) -> PathBuf {
        self.state_dir().join("children")
    }

    /// Space set aside when a transaction begins for its journal writes
    /// ([`crate::reserve`]).
    pub fn journal_reserve_file(&self) -> PathBuf {
        self.state_dir().join("reserve.journal")
    }

    /// Space set aside when a transaction begins for a flip back's restore
    /// copy of the persistence ([`crate::reserve`]).
    pub fn restore_reserve_file(&self) -> PathBuf {
        self.state_dir().join("reserve.restore")
    }

    /// Counters, bad list, enabled flag, pending update.
    pub fn host_state_file(&self) -> PathBuf {
        self.state_dir().join("host.json")
    }

    /// Per-channel trust state (anti-rollback, anti-freeze).
    pub fn trust_file(&self) -> PathBuf {
        self.state_dir().join("trust.json")
    }

    /// The HTTP channel index cache (conditional GET).
    pub fn index_cache_dir(&self) -> PathBuf {
        self.state_dir().join("index-cache")
    }

    /// The cached copy of `channel`'s index (see [`crate::source::IndexCache`]).
    pub fn index_cache_file(&self, channel: &str) -> PathBuf {
        self.index_cache_dir().join(format!("{channel}.json"))
    }

    /// One JSON line per attempt.
    pub fn history_file(&self) -> PathBuf {
        self.state_dir().join("history.jsonl")
    }

    /// The banner the app's dashboard shows.
    pub fn banner_file(&self) -> PathBuf {
        self.state_dir().join("banner.txt")
    }

    /// Prometheus textfile-collector metrics.
    pub fn metrics_file(&self) -> PathBuf {
        self.state_dir().join("slipway.prom")
    }

    /// Whether the root and every layout directory that exists may be
    /// trusted, in the manner of sshd's StrictModes: a real directory (not
    /// a symlink), owned by root or by the user slipway runs as, writable by
    /// nobody else. slipway runs as root: a directory another user can
    /// write, or a symlink, would let that user steer root's writes and
    /// deletions (a planted journal naming any directory, a release or a
    /// snapshot written through a link).
    pub fn check_safe(&self) -> Result<(), UnsafeDir> {
        let euid = rustix::process::geteuid().as_raw();
        let mut dirs = vec![self.root.clone()];
        dirs.extend(self.dirs());
        dirs.push(self.index_cache_dir());
        dirs.push(self.children_dir());
        for dir in dirs {
            let meta = match std::fs::symlink_metadata(&dir) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(UnsafeDir {
                        dir,
                        problem: format!("cannot be inspected ({e})"),
                        fix: "check the permissions of its parent".into(),
                    })
                }
            };
            let ft = meta.file_type();
            if ft.is_symlink() {
                return Err(UnsafeDir {
                    problem: "a symlink".into(),
                    fix: format!(
                        "replace it with a real directory (`rm {0} && mkdir -m 755 {0}`), or point paths.root at the real location",
                        dir.display()
                    ),
                    dir,
                });
            }
            if !ft.is_dir() {
                return Err(UnsafeDir {
                    problem: "not a directory".into(),
                    fix: format!("move it away; slipway creates {} itself", dir.display()),
                    dir,
                });
            }
            use std::os::unix::fs::MetadataExt;
            if meta.uid() != 0 && meta.uid() != euid {
                return Err(UnsafeDir {
                    problem: format!(
                        "owned by uid {}, not by root or the updater (uid {euid})",
                        meta.uid()
                    ),
                    fix: format!("`chown root:root {}`", dir.display()),
                    dir,
                });
            }
            if meta.mode() & 0o022 != 0 {
                return Err(UnsafeDir {
                    problem: format!(
                        "writable by group or others (mode {:o})",
                        meta.mode() & 0o7777
                    ),
                    fix: format!("`chmod go-w {}`", dir.display()),
                    dir,
                });
            }
        }
        Ok(())
    }

    /// Every directory slipway creates under the root.
    pub fn dirs(&self) -> [PathBuf; 4] {
        [
            self.releases_dir(),
            self.downloads_dir(),
            self.backups_dir(),
            self.state_dir(),
        ]
    }
}

/// A directory of the layout that slipway refuses to trust
/// ([`Layout::check_safe`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} is {problem}; slipway runs as root and trusts only directories that are real, owned by root (or the updater's user) and writable by nobody else; fix: {fix}", dir.display())]
pub struct UnsafeDir {
    pub dir: PathBuf,
    pub problem: String,
    pub fix: String,
}

/// The first of `dir/base`, `dir/base-r2`, ... up to [`MAX_RELEASE_COPIES`]
/// that does not exist (a dangling symlink counts as existing).
fn fresh_name(dir: &Path, base: &str) -> Option<PathBuf> {
    (1..=MAX_RELEASE_COPIES)
        .map(|n| match n {
            1 => dir.join(base),
            n => dir.join(format!("{base}-r{n}")),
        })
        .find(|p| {
            matches!(std::fs::symlink_metadata(p), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_release_name_skips_every_existing_copy() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let base = "2.0.0-0123456789ab";
        assert_eq!(fresh_name(dir, base), Some(dir.join(base)));
        std::fs::create_dir(dir.join(base)).expect("mkdir");
        assert_eq!(fresh_name(dir, base), Some(dir.join(format!("{base}-r2"))));
        std::os::unix::fs::symlink("nowhere", dir.join(format!("{base}-r2"))).expect("link");
        assert_eq!(fresh_name(dir, base), Some(dir.join(format!("{base}-r3"))));
        // The first copy gone: its name is free again.
        std::fs::remove_dir(dir.join(base)).expect("rmdir");
        assert_eq!(fresh_name(dir, base), Some(dir.join(base)));
        std::fs::create_dir(dir.join(base)).expect("mkdir");
        for n in 3..=MAX_RELEASE_COPIES {
            std::fs::create_dir(dir.join(format!("{base}-r{n}"))).expect("mkdir");
        }
        assert_eq!(fresh_name(dir, base), None);
    }
}

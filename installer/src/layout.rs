//! The on-host layout of SPEC §3, in one place.
//!
//! ```text
//! <root>/releases/<version>-<id12>/   unpacked releases, read-only after staging
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

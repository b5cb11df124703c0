//! What each file of a staged release was when slipway last proved its
//! content: the identity record of a release,
//! `<root>/state/releases/<release-dir>.stat`.
//!
//! A [`TreeRecord`] maps every regular file of a release (its
//! `slipway/manifest.json` included) to its [`FileIdentity`]: device,
//! inode, size, mode, mtime and ctime, as `lstat(2)` gave them right after
//! the content was proven against the signed manifest (at staging, or by a
//! full re-hash). A file whose identity is still the recorded one has not
//! been written, truncated, replaced or chmodded since: any of these moves
//! its ctime, which only the kernel sets (see docs/transaction.md, "The
//! clean-tree rule", for what this does and does not catch). So the
//! clean-tree rule ([`crate::clean`]) re-hashes only the files whose
//! identity differs, and staging ([`crate::stage`]) hardlinks a running
//! release's file only when its identity is the recorded one.
//!
//! slipway's own link and unlink of a shared inode (a hardlinked stage, a
//! `gc` of a release that shares files) move that inode's ctime too. They
//! are followed by [`Records::carry_over`], which moves a record from the
//! identity seen just before to the one seen just after, for records that
//! held exactly the "before" identity; a record that was already stale
//! stays stale, so a change made earlier is never laundered.
//!
//! The records are written like every state file: temp file, fsync,
//! rename, fsync of the directory. A missing, unreadable or foreign record
//! is no record: the release is then checked by a full re-hash.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use slipway_formats::{EntryType, Manifest, MANIFEST_PATH};

use crate::durable;
use crate::layout::Layout;

/// The record format this slipway writes and reads.
pub const RECORD_FORMAT: u32 = 1;

/// The suffix of a record file in `state/releases/`.
pub const RECORD_SUFFIX: &str = ".stat";

/// Records larger than this are not read (about 40 times the largest
/// manifest's file count at ~130 bytes an entry).
const MAX_RECORD_BYTES: u64 = 64 * 1024 * 1024;

/// What `lstat(2)` says about one file, as far as it tells whether the
/// file changed: any write, truncation or `chmod` moves `ctime`; a rename
/// over it changes `ino`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// Permission and type bits (`st_mode`).
    pub mode: u32,
    pub mtime: i64,
    pub mtime_ns: i64,
    pub ctime: i64,
    pub ctime_ns: i64,
}

impl FileIdentity {
    /// The identity of the file `meta` was read from (`symlink_metadata`).
    pub fn of(meta: &fs::Metadata) -> FileIdentity {
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mode: meta.mode(),
            mtime: meta.mtime(),
            mtime_ns: meta.mtime_nsec(),
            ctime: meta.ctime(),
            ctime_ns: meta.ctime_nsec(),
        }
    }

    /// The identity of `path`, not following a symlink.
    pub fn of_path(path: &Path) -> io::Result<FileIdentity> {
        fs::symlink_metadata(path).map(|m| FileIdentity::of(&m))
    }

    /// Whether `after` is this file after a change of its link count only:
    /// the same inode, size, mode and mtime, whatever its ctime.
    pub fn same_but_ctime(&self, after: &FileIdentity) -> bool {
        FileIdentity {
            ctime: after.ctime,
            ctime_ns: after.ctime_ns,
            ..*self
        } == *after
    }
}

/// The identity record of one release directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeRecord {
    pub format: u32,
    /// Release-relative path of every regular file, the manifest included.
    pub files: BTreeMap<String, FileIdentity>,
}

impl TreeRecord {
    /// The recorded identity of `path`, if any.
    pub fn get(&self, path: &str) -> Option<&FileIdentity> {
        self.files.get(path)
    }

    /// Whether the release's `slipway/manifest.json` is still the file the
    /// record was taken with: a record is only trusted with its manifest.
    pub fn manifest_unchanged(&self, dir: &Path) -> bool {
        let now = FileIdentity::of_path(&dir.join(MANIFEST_PATH)).ok();
        now.is_some() && self.get(MANIFEST_PATH) == now.as_ref()
    }
}

/// `<root>/state/releases/`.
pub fn records_dir(layout: &Layout) -> PathBuf {
    layout.state_dir().join("releases")
}

/// Where the record of the release in `release_dir` lives.
pub fn record_file(layout: &Layout, release_dir: &Path) -> Option<PathBuf> {
    let name = release_dir.file_name()?.to_str()?;
    Some(records_dir(layout).join(format!("{name}{RECORD_SUFFIX}")))
}

/// Takes the record of a release whose files were all just proven against
/// `manifest`: the identity of every listed regular file and of the
/// manifest. An error is an `lstat` failure (the tree is not as staged).
pub fn take(dir: &Path, manifest: &Manifest) -> io::Result<TreeRecord> {
    let mut files = BTreeMap::new();
    let listed = manifest
        .files
        .iter()
        .filter(|e| e.kind == EntryType::File)
        .map(|e| e.path.as_str());
    for path in std::iter::once(MANIFEST_PATH).chain(listed) {
        let meta = fs::symlink_metadata(dir.join(path))?;
        if !meta.file_type().is_file() {
            return Err(io::Error::other(format!(
                "{} is not a regular file",
                dir.join(path).display()
            )));
        }
        files.insert(path.to_string(), FileIdentity::of(&meta));
    }
    Ok(TreeRecord {
        format: RECORD_FORMAT,
        files,
    })
}

/// Loads the record of the release in `release_dir`; `None` when there is
/// none or it cannot be used (unreadable, another format).
pub fn load(layout: &Layout, release_dir: &Path) -> Option<TreeRecord> {
    load_file(&record_file(layout, release_dir)?)
}

fn load_file(path: &Path) -> Option<TreeRecord> {
    let bytes = slipway_fs::read_capped(path, MAX_RECORD_BYTES).ok()?;
    serde_json::from_slice::<TreeRecord>(&bytes)
        .ok()
        .filter(|r| r.format == RECORD_FORMAT)
}

/// Writes the record of the release in `release_dir`, atomically and
/// durably.
pub fn save(layout: &Layout, release_dir: &Path, record: &TreeRecord) -> io::Result<()> {
    let path = record_file(layout, release_dir)
        .ok_or_else(|| io::Error::other("a release directory has a UTF-8 name"))?;
    durable::create_dirs(&records_dir(layout))?;
    let mut bytes = serde_json::to_vec(record).map_err(io::Error::other)?;
    bytes.push(b'\n');
    durable::write_atomic(&path, &bytes)
}

/// Removes the record of the release in `release_dir`, if any.
pub fn remove(layout: &Layout, release_dir: &Path) -> io::Result<()> {
    let Some(path) = record_file(layout, release_dir) else {
        return Ok(());
    };
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes the records of release directories that no longer exist.
pub fn remove_orphans(layout: &Layout) -> io::Result<Vec<PathBuf>> {
    let dir = records_dir(layout);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let releases = layout.releases_dir();
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(release) = name.strip_suffix(RECORD_SUFFIX) else {
            continue;
        };
        if fs::symlink_metadata(releases.join(release)).is_err() {
            fs::remove_file(entry.path())?;
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

/// Removes the release tree `dir` (unlinking its files: a file another
/// release still links is never truncated or chmodded, only its directory
/// entry here goes), then carries the ctime the unlinks gave to inodes
/// shared with other releases over to their records, and removes the
/// record of `dir`.
pub fn remove_release_tree(layout: &Layout, dir: &Path) -> io::Result<()> {
    let mut others = Records::load_all(layout, Some(dir));
    let recorded = others.paths_by_identity();
    let mut shared: Vec<(FileIdentity, PathBuf)> = Vec::new();
    if !recorded.is_empty() {
        for entry in walkdir::WalkDir::new(dir).follow_links(false) {
            let Ok(entry) = entry else { continue };
            if !entry.file_type().is_file() {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.nlink() < 2 {
                continue;
            }
            let before = FileIdentity::of(&meta);
            if let Some(path) = recorded.get(&before) {
                shared.push((before, path.clone()));
            }
        }
    }
    durable::remove_tree(dir)?;
    let changes: HashMap<FileIdentity, FileIdentity> = shared
        .into_iter()
        .filter_map(|(before, path)| Some((before, FileIdentity::of_path(&path).ok()?)))
        .collect();
    others.carry_over(&changes);
    others.save_changed(layout)?;
    remove(layout, dir)
}

/// Every record on the host, to follow slipway's own changes of link counts
/// ([`Records::carry_over`]).
#[derive(Debug, Default)]
pub struct Records {
    records: Vec<(PathBuf, TreeRecord, bool)>,
}

impl Records {
    /// Loads the records of every release directory under `releases/` but
    /// `except` (a release being removed or staged).
    pub fn load_all(layout: &Layout, except: Option<&Path>) -> Records {
        let mut records = Vec::new();
        let except_name = except.and_then(Path::file_name);
        if let Ok(entries) = fs::read_dir(layout.releases_dir()) {
            for entry in entries.flatten() {
                let dir = entry.path();
                if except_name.is_some_and(|n| Some(n) == dir.file_name()) {
                    continue;
                }
                if let Some(r) = load(layout, &dir) {
                    records.push((dir, r, false));
                }
            }
        }
        Records { records }
    }

    /// For every recorded identity, the path (release dir joined with the
    /// file) of one file recorded with it.
    pub fn paths_by_identity(&self) -> HashMap<FileIdentity, PathBuf> {
        let mut paths = HashMap::new();
        for (dir, r, _) in &self.records {
            for (p, id) in &r.files {
                paths.entry(*id).or_insert_with(|| dir.join(p));
            }
        }
        paths
    }

    /// For every `before → after` pair: every recorded file whose identity
    /// was exactly `before` is recorded as `after`. Only a change of the
    /// ctime is carried over (see the module docs).
    pub fn carry_over(&mut self, changes: &HashMap<FileIdentity, FileIdentity>) {
        if changes.is_empty() {
            return;
        }
        for (_, record, changed) in &mut self.records {
            for id in record.files.values_mut() {
                if let Some(after) = changes.get(id) {
                    if id.same_but_ctime(after) {
                        *id = *after;
                        *changed = true;
                    }
                }
            }
        }
    }

    /// Writes every record that [`Records::carry_over`] changed.
    pub fn save_changed(&self, layout: &Layout) -> io::Result<()> {
        for (dir, record, changed) in &self.records {
            if *changed {
                save(layout, dir, record)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_ctime_change_is_carried_over() {
        let a = FileIdentity {
            dev: 1,
            ino: 2,
            size: 3,
            mode: 0o100444,
            mtime: 4,
            mtime_ns: 5,
            ctime: 6,
            ctime_ns: 7,
        };
        let relinked = FileIdentity { ctime: 9, ..a };
        let rewritten = FileIdentity {
            ctime: 9,
            mtime: 9,
            ..a
        };
        assert!(a.same_but_ctime(&relinked));
        assert!(!a.same_but_ctime(&rewritten));
        let mut files = BTreeMap::new();
        files.insert("app/x".to_string(), a);
        let mut records = Records {
            records: vec![(
                PathBuf::from("r"),
                TreeRecord {
                    format: RECORD_FORMAT,
                    files,
                },
                false,
            )],
        };
        records.carry_over(&HashMap::from([(a, rewritten)]));
        assert_eq!(records.records[0].1.files["app/x"], a);
        records.carry_over(&HashMap::from([(a, relinked)]));
        assert_eq!(records.records[0].1.files["app/x"], relinked);
        assert!(records.records[0].2);
    }
}

//! What changes between two releases, entry by entry, from their manifests
//! alone.
//!
//! [`diff_manifests`] is what `slipway check` and `slipway-pack diff` print:
//! the entries added, removed and changed (and how: content, mode, type or
//! symlink target), how many stayed the same, and whether the persistence
//! schema moves (which decides whether the `migrate` hook runs). It reads no
//! file: two manifests are enough, because a manifest pins every byte of its
//! release by hash.

use std::fmt;

use serde::Serialize;

use crate::manifest::{EntryType, FileEntry, Manifest, Mode};
use crate::version::Version;

/// An entry present in only one of the two releases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffEntry {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: EntryType,
    /// Size in bytes (files only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

impl DiffEntry {
    fn of(entry: &FileEntry) -> Self {
        DiffEntry {
            path: entry.path.clone(),
            kind: entry.kind,
            size: entry.size,
        }
    }
}

/// One way an entry present in both releases changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "what", rename_all = "lowercase")]
pub enum Change {
    /// A file's bytes differ (its sha256, and perhaps its size).
    Content { old_size: u64, new_size: u64 },
    /// The permission mode differs (e.g. a file became executable).
    Mode { old: Mode, new: Mode },
    /// The entry changed kind (a file became a directory, ...). When the type
    /// changes, no other change is reported for the entry.
    Type { old: EntryType, new: EntryType },
    /// A symlink points somewhere else.
    Target { old: String, new: String },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Content { old_size, new_size } if old_size == new_size => {
                write!(f, "content, {new_size} bytes")
            }
            Change::Content { old_size, new_size } => {
                write!(f, "content, {old_size} -> {new_size} bytes")
            }
            Change::Mode { old, new } => write!(f, "mode {:04o} -> {:04o}", old.0, new.0),
            Change::Type { old, new } => write!(f, "type {old} -> {new}"),
            Change::Target { old, new } => write!(f, "target {old:?} -> {new:?}"),
        }
    }
}

/// An entry present in both releases whose content, mode, type or target differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangedEntry {
    pub path: String,
    pub changes: Vec<Change>,
}

/// How the persistence schema moves between the two releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SchemaChange {
    pub old_version: u32,
    pub new_version: u32,
    pub old_min_compatible: u32,
    pub new_min_compatible: u32,
}

impl SchemaChange {
    /// Whether installing the new release runs its `migrate` hook (its schema
    /// is above the old release's).
    pub fn migrates(&self) -> bool {
        self.new_version > self.old_version
    }
}

/// The difference between two manifests: what installing `new` over `old`
/// changes in the release tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestDiff {
    pub app: String,
    pub old_version: Version,
    pub new_version: Version,
    /// Entries only in the new release, in path order.
    pub added: Vec<DiffEntry>,
    /// Entries only in the old release, in path order.
    pub removed: Vec<DiffEntry>,
    /// Entries in both whose content, mode, type or target differs, in path order.
    pub changed: Vec<ChangedEntry>,
    /// Entries identical in both.
    pub unchanged_count: usize,
    /// Present when `schema_version` or `schema_min_compatible` differ.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<SchemaChange>,
    /// Whether the release's `check` or `migrate` hooks differ.
    pub hooks_changed: bool,
}

impl ManifestDiff {
    /// Whether the two release trees are identical (the schema and hooks may
    /// still differ; see [`ManifestDiff::schema`]).
    pub fn tree_unchanged(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// Bytes of file content the new release brings that the old one does not
    /// have at the same path: the added files plus the changed ones.
    pub fn new_bytes(&self) -> u64 {
        let added = self.added.iter().filter_map(|e| e.size);
        let changed = self.changed.iter().flat_map(|c| {
            c.changes.iter().filter_map(|ch| match ch {
                Change::Content { new_size, .. } => Some(*new_size),
                _ => None,
            })
        });
        added.chain(changed).fold(0u64, u64::saturating_add)
    }
}

/// Compares two manifests entry by entry. Both are sorted by path (a
/// [`Manifest::validate`] rule), so this is one merge pass.
pub fn diff_manifests(old: &Manifest, new: &Manifest) -> ManifestDiff {
    let mut added = Vec::new();
    let mut removed = Vec::new();
    let mut changed = Vec::new();
    let mut unchanged_count = 0;

    let mut olds = old.files.iter().peekable();
    let mut news = new.files.iter().peekable();
    loop {
        match (olds.peek(), news.peek()) {
            (None, None) => break,
            (Some(o), None) => {
                removed.push(DiffEntry::of(o));
                olds.next();
            }
            (None, Some(n)) => {
                added.push(DiffEntry::of(n));
                news.next();
            }
            (Some(o), Some(n)) => match o.path.as_bytes().cmp(n.path.as_bytes()) {
                std::cmp::Ordering::Less => {
                    removed.push(DiffEntry::of(o));
                    olds.next();
                }
                std::cmp::Ordering::Greater => {
                    added.push(DiffEntry::of(n));
                    news.next();
                }
                std::cmp::Ordering::Equal => {
                    let changes = entry_changes(o, n);
                    if changes.is_empty() {
                        unchanged_count += 1;
                    } else {
                        changed.push(ChangedEntry {
                            path: n.path.clone(),
                            changes,
                        });
                    }
                    olds.next();
                    news.next();
                }
            },
        }
    }

    let schema = (old.schema_version != new.schema_version
        || old.schema_min_compatible != new.schema_min_compatible)
        .then_some(SchemaChange {
            old_version: old.schema_version,
            new_version: new.schema_version,
            old_min_compatible: old.schema_min_compatible,
            new_min_compatible: new.schema_min_compatible,
        });

    ManifestDiff {
        app: new.app.clone(),
        old_version: old.version.clone(),
        new_version: new.version.clone(),
        added,
        removed,
        changed,
        unchanged_count,
        schema,
        hooks_changed: old.hooks != new.hooks,
    }
}

/// The changes between two entries at the same path.
fn entry_changes(old: &FileEntry, new: &FileEntry) -> Vec<Change> {
    if old.kind != new.kind {
        return vec![Change::Type {
            old: old.kind,
            new: new.kind,
        }];
    }
    let mut changes = Vec::new();
    if old.sha256 != new.sha256 || old.size != new.size {
        changes.push(Change::Content {
            old_size: old.size.unwrap_or(0),
            new_size: new.size.unwrap_or(0),
        });
    }
    if old.mode != new.mode {
        changes.push(Change::Mode {
            old: old.mode,
            new: new.mode,
        });
    }
    if old.target != new.target {
        changes.push(Change::Target {
            old: old.target.clone().unwrap_or_default(),
            new: new.target.clone().unwrap_or_default(),
        });
    }
    changes
}

impl fmt::Display for ManifestDiff {
    /// A human summary: one headline, the schema move if any, then one line
    /// per added (`+`), removed (`-`) and changed (`~`) entry.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} {} -> {}: {} added, {} removed, {} changed, {} unchanged",
            self.app,
            self.old_version,
            self.new_version,
            self.added.len(),
            self.removed.len(),
            self.changed.len(),
            self.unchanged_count
        )?;
        if let Some(s) = &self.schema {
            write!(f, "schema {} -> {}", s.old_version, s.new_version)?;
            if s.old_min_compatible != s.new_min_compatible {
                write!(
                    f,
                    " (reads data from schema {} -> {})",
                    s.old_min_compatible, s.new_min_compatible
                )?;
            }
            if s.migrates() {
                f.write_str(": the migrate hook runs")?;
            }
            writeln!(f)?;
        }
        if self.hooks_changed {
            writeln!(f, "hooks changed")?;
        }
        for e in &self.added {
            match (e.kind, e.size) {
                (EntryType::File, Some(size)) => writeln!(f, "+ {} ({size} bytes)", e.path)?,
                (kind, _) => writeln!(f, "+ {} ({kind})", e.path)?,
            }
        }
        for e in &self.removed {
            writeln!(f, "- {}", e.path)?;
        }
        for c in &self.changed {
            let what = c
                .changes
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            writeln!(f, "~ {} ({what})", c.path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Hooks, MANIFEST_FORMAT, MODE_EXEC};

    fn manifest(version: &str, files: Vec<FileEntry>) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            app: "bot".into(),
            version: version.parse().expect("version"),
            channel: "stable".into(),
            created: 0,
            source: None,
            schema_version: 2,
            schema_min_compatible: 1,
            hooks: Hooks::default(),
            runtime_paths: Vec::new(),
            probation: false,
            files,
        }
    }

    fn h(c: char) -> String {
        c.to_string().repeat(64)
    }

    fn old() -> Manifest {
        manifest(
            "1.0.0",
            vec![
                FileEntry::dir("app"),
                FileEntry::file("app/a.py", false, 10, h('a')),
                FileEntry::file("app/b.py", false, 20, h('b')),
                FileEntry::symlink("app/link", "a.py"),
                FileEntry::file("app/run", false, 5, h('c')),
                FileEntry::file("app/same.py", false, 7, h('d')),
                FileEntry::file("app/zz", false, 1, h('e')),
            ],
        )
    }

    fn new() -> Manifest {
        manifest(
            "1.1.0",
            vec![
                FileEntry::dir("app"),
                FileEntry::file("app/a.py", false, 12, h('f')),
                FileEntry::symlink("app/link", "same.py"),
                FileEntry::file("app/new.py", false, 30, h('1')),
                FileEntry::file("app/run", true, 5, h('c')),
                FileEntry::file("app/same.py", false, 7, h('d')),
                FileEntry::dir("app/zz"),
            ],
        )
    }

    #[test]
    fn identical_manifests_have_no_changes() {
        let d = diff_manifests(&old(), &old());
        assert!(d.tree_unchanged());
        assert_eq!(d.unchanged_count, old().files.len());
        assert_eq!(d.schema, None);
        assert!(!d.hooks_changed);
        assert_eq!(d.new_bytes(), 0);
    }

    #[test]
    fn reports_each_kind_of_change() {
        let d = diff_manifests(&old(), &new());
        let paths = |v: &[DiffEntry]| v.iter().map(|e| e.path.clone()).collect::<Vec<_>>();
        assert_eq!(paths(&d.added), vec!["app/new.py"]);
        assert_eq!(paths(&d.removed), vec!["app/b.py"]);
        assert_eq!(d.unchanged_count, 2, "app and app/same.py");
        let changed: Vec<(&str, &[Change])> = d
            .changed
            .iter()
            .map(|c| (c.path.as_str(), c.changes.as_slice()))
            .collect();
        assert_eq!(
            changed,
            vec![
                (
                    "app/a.py",
                    &[Change::Content {
                        old_size: 10,
                        new_size: 12
                    }][..]
                ),
                (
                    "app/link",
                    &[Change::Target {
                        old: "a.py".into(),
                        new: "same.py".into()
                    }][..]
                ),
                (
                    "app/run",
                    &[Change::Mode {
                        old: Mode(0o644),
                        new: Mode(MODE_EXEC)
                    }][..]
                ),
                (
                    "app/zz",
                    &[Change::Type {
                        old: EntryType::File,
                        new: EntryType::Dir
                    }][..]
                ),
            ]
        );
        assert_eq!(d.new_bytes(), 30 + 12);
    }

    #[test]
    fn schema_and_hook_moves_are_reported() {
        let mut n = new();
        n.schema_version = 3;
        n.hooks.migrate = Some(vec!["python3".into(), "migrate.py".into()]);
        let d = diff_manifests(&old(), &n);
        let s = d.schema.expect("schema change");
        assert!(s.migrates());
        assert_eq!((s.old_version, s.new_version), (2, 3));
        assert!(d.hooks_changed);
        let text = d.to_string();
        assert!(
            text.contains("schema 2 -> 3: the migrate hook runs"),
            "{text}"
        );
        assert!(text.contains("hooks changed"), "{text}");
    }

    #[test]
    fn summary_names_every_entry() {
        let text = diff_manifests(&old(), &new()).to_string();
        assert!(
            text.starts_with("bot 1.0.0 -> 1.1.0: 1 added, 1 removed, 4 changed, 2 unchanged\n"),
            "{text}"
        );
        for line in [
            "+ app/new.py (30 bytes)",
            "- app/b.py",
            "~ app/a.py (content, 10 -> 12 bytes)",
            "~ app/link (target \"a.py\" -> \"same.py\")",
            "~ app/run (mode 0644 -> 0755)",
            "~ app/zz (type file -> dir)",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn serializes_for_json_output() {
        let v = serde_json::to_value(diff_manifests(&old(), &new())).expect("json");
        assert_eq!(v["added"][0]["path"], "app/new.py");
        assert_eq!(v["added"][0]["type"], "file");
        assert_eq!(v["changed"][2]["changes"][0]["what"], "mode");
        assert_eq!(v["changed"][2]["changes"][0]["new"], "0755");
        assert_eq!(v["old_version"], "1.0.0");
        assert_eq!(v["unchanged_count"], 2);
        assert!(v.get("schema").is_none());
    }

    #[test]
    fn everything_added_from_an_empty_release() {
        let empty = manifest("0.1.0", vec![]);
        let d = diff_manifests(&empty, &new());
        assert_eq!(d.added.len(), new().files.len());
        assert!(d.removed.is_empty() && d.changed.is_empty());
        let back = diff_manifests(&new(), &empty);
        assert_eq!(back.removed.len(), new().files.len());
    }
}

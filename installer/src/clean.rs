//! The clean-tree rule: does a release directory still hold what its
//! manifest says (SPEC §4 step 2, the tarball world's dirty git tree)?
//!
//! Two depths, one comparison ([`crate::diff::check_tree`]):
//!
//! - **quick** (the update's default, `slipway verify --quick`): when the
//!   release's whole-tree identity record ([`crate::identity`]) still
//!   matches every path of the tree (one `fstatat` each), the tree is
//!   clean and nothing is read or listed. Otherwise the record vouches
//!   for the content of every file whose `lstat` identity (device, inode,
//!   size, mode, mtime, ctime) is still the recorded one; only the others
//!   are read and hashed, and types, modes, symlink targets, missing paths
//!   and stray paths are checked in full, the release's `runtime_paths`
//!   still excusing stray paths.
//! - **deep** (`slipway verify`, `[update] deep_clean_check = true`):
//!   every file is read and hashed.
//!
//! A release without a usable record (staged by an older slipway, or whose
//! `slipway/manifest.json` is not the file the record was taken with) gets
//! the deep check. When the caller may write ([`CleanRule::record`]), the
//! files a check hashed and found intact are recorded, with the identity
//! they had before they were read and still have after, so the next check
//! of an untouched tree hashes nothing; a check that found the tree clean
//! records the whole tree, so the next one lists nothing either. A dirty
//! file is never recorded.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use slipway_formats::{EntryType, Manifest, MANIFEST_PATH};

use crate::diff::{check_tree, Drift};
use crate::identity::{self, FileIdentity, TreeRecord, RECORD_FORMAT};
use crate::layout::Layout;
use crate::transaction::Log;

/// How the clean-tree rule runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct CleanRule {
    /// Hash every file, whatever the record says.
    pub deep: bool,
    /// Write the record of what was proven (under the transaction lock
    /// only; read-only commands leave it as it is).
    pub record: bool,
    /// Where `-v` prints the rule's timing.
    pub log: Option<Log>,
}

/// What the clean-tree rule found.
#[derive(Debug, Default)]
pub struct CleanCheck {
    /// Every difference from the manifest, in path order; empty when clean.
    pub drift: Vec<Drift>,
    /// Regular files the manifest lists.
    pub files: usize,
    /// Of them, how many were read and hashed.
    pub hashed: usize,
    /// Whether an identity record was used.
    pub used_record: bool,
    /// Whether the whole-tree record alone answered (nothing read or
    /// listed).
    pub whole_tree: bool,
    /// Whether a record was written.
    pub recorded: bool,
    pub elapsed: Duration,
}

/// Checks the release in `dir` against `manifest` (see the module docs).
/// An `Err` is an I/O failure other than "not found": the tree could not
/// be checked. A failure to write the record is only logged: the check
/// itself stands.
pub fn check_release(
    layout: &Layout,
    dir: &Path,
    manifest: &Manifest,
    rule: CleanRule,
) -> io::Result<CleanCheck> {
    let started = Instant::now();
    let files = || {
        manifest
            .files
            .iter()
            .filter(|e| e.kind == EntryType::File)
            .count()
    };
    if !rule.deep && identity::record_vouches_for_tree(layout, dir).is_some() {
        let check = CleanCheck {
            files: files(),
            used_record: true,
            whole_tree: true,
            elapsed: started.elapsed(),
            ..CleanCheck::default()
        };
        log_check(&check, dir, rule);
        return Ok(check);
    }
    let record = if rule.deep {
        None
    } else {
        identity::load(layout, dir).filter(|r| r.manifest_unchanged(dir))
    };
    let used_record = record.is_some();
    let checked = check_tree(dir, manifest, record.as_ref())?;
    let mut recorded = false;
    if rule.record {
        let wrote = if checked.drift.is_empty() {
            remember_tree(layout, dir, record.as_ref(), &checked)
        } else if !checked.proven.is_empty() || record.is_none() {
            remember(layout, dir, record, &checked.proven)
        } else {
            Ok(false)
        };
        match wrote {
            Ok(wrote) => recorded = wrote,
            Err(e) => {
                if let Some(log) = rule.log {
                    log.warn(format!(
                        "cannot record the file identities of {}: {e}; the next check hashes \
                         every file again",
                        dir.display()
                    ));
                }
            }
        }
    }
    let check = CleanCheck {
        drift: checked.drift,
        files: files(),
        hashed: checked.hashed,
        used_record,
        whole_tree: false,
        recorded,
        elapsed: started.elapsed(),
    };
    log_check(&check, dir, rule);
    Ok(check)
}

/// The `-v` line of a check.
fn log_check(check: &CleanCheck, dir: &Path, rule: CleanRule) {
    if let Some(log) = rule.log {
        log.debug(format!(
            "clean-tree rule on {}: {} ms, {} of {} files hashed ({}){}{}",
            dir.display(),
            check.elapsed.as_millis(),
            check.hashed,
            check.files,
            if rule.deep {
                "deep check"
            } else if check.whole_tree {
                "every path still as its whole-tree identity record says; nothing read or listed"
            } else if check.used_record {
                "the others vouched for by their identity record"
            } else {
                "no identity record: full re-hash"
            },
            if check.drift.is_empty() {
                ", clean"
            } else {
                ", dirty"
            },
            if check.recorded {
                "; identities recorded"
            } else {
                ""
            },
        ));
    }
}

/// After a check that found the tree clean: records the whole tree as it
/// was seen, if the files the check hashed still have the identity they
/// had before they were read (else only what still holds, as
/// [`remember`]). Writes nothing when the record already says it all.
fn remember_tree(
    layout: &Layout,
    dir: &Path,
    record: Option<&TreeRecord>,
    checked: &crate::diff::TreeCheck,
) -> io::Result<bool> {
    let unchanged = checked
        .proven
        .iter()
        .all(|(path, before)| FileIdentity::of_path(&dir.join(path)).ok().as_ref() == Some(before));
    if !unchanged {
        return remember(layout, dir, record.cloned(), &checked.proven);
    }
    let whole = TreeRecord {
        format: RECORD_FORMAT,
        whole_tree: true,
        files: checked.seen.iter().cloned().collect(),
    };
    if record == Some(&whole) {
        return Ok(false);
    }
    identity::save(layout, dir, &whole)?;
    Ok(true)
}
/// Adds the files just proven to the record (a fresh one, with the
/// manifest's identity, when there was none) if they still have the
/// identity they had before they were read. Returns whether it wrote.
fn remember(
    layout: &Layout,
    dir: &Path,
    record: Option<TreeRecord>,
    proven: &[(String, FileIdentity)],
) -> io::Result<bool> {
    let mut record = match record {
        // What was proven is no longer the whole tree.
        Some(r) => TreeRecord {
            whole_tree: false,
            ..r
        },
        None => {
            let manifest = FileIdentity::of_path(&dir.join(MANIFEST_PATH))?;
            let mut fresh = TreeRecord::default();
            fresh.files.insert(MANIFEST_PATH.to_string(), manifest);
            fresh
        }
    };
    for (path, before) in proven {
        if FileIdentity::of_path(&dir.join(path)).ok().as_ref() == Some(before) {
            record.files.insert(path.clone(), *before);
        }
    }
    identity::save(layout, dir, &record)?;
    Ok(true)
}

//! The clean-tree rule: does a release directory still hold what its
//! manifest says (SPEC §4 step 2, the tarball world's dirty git tree)?
//!
//! Two depths, one comparison ([`crate::diff::check_tree`]):
//!
//! - **quick** (the update's default, `slipway verify --quick`): the
//!   release's identity record ([`crate::identity`]) vouches for the
//!   content of every file whose `lstat` identity (device, inode, size,
//!   mode, mtime, ctime) is still the recorded one; only the others are
//!   read and hashed. Types, modes, symlink targets, missing paths and
//!   stray paths are checked in full every time, and the release's
//!   `runtime_paths` still excuse stray paths.
//! - **deep** (`slipway verify`, `[update] deep_clean_check = true`):
//!   every file is read and hashed.
//!
//! A release without a usable record (staged by an older slipway, or whose
//! `slipway/manifest.json` is not the file the record was taken with) gets
//! the deep check. When the caller may write ([`CleanRule::record`]), the
//! files a check hashed and found intact are recorded, with the identity
//! they had before they were read and still have after, so the next check
//! of an untouched tree hashes nothing. A dirty file is never recorded.

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
    let record = if rule.deep {
        None
    } else {
        identity::load(layout, dir).filter(|r| r.manifest_unchanged(dir))
    };
    let used_record = record.is_some();
    let checked = check_tree(dir, manifest, record.as_ref())?;
    let mut recorded = false;
    if rule.record && (!checked.proven.is_empty() || record.is_none()) {
        match remember(layout, dir, record, &checked.proven) {
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
    let files = manifest
        .files
        .iter()
        .filter(|e| e.kind == EntryType::File)
        .count();
    let check = CleanCheck {
        drift: checked.drift,
        files,
        hashed: checked.hashed,
        used_record,
        recorded,
        elapsed: started.elapsed(),
    };
    if let Some(log) = rule.log {
        log.debug(format!(
            "clean-tree rule on {}: {} ms, {} of {} files hashed ({}){}{}",
            dir.display(),
            check.elapsed.as_millis(),
            check.hashed,
            check.files,
            if rule.deep {
                "deep check"
            } else if used_record {
                "the others vouched for by their identity record"
            } else {
                "no identity record: full re-hash"
            },
            if check.drift.is_empty() {
                ", clean"
            } else {
                ", dirty"
            },
            if recorded {
                "; identities recorded"
            } else {
                ""
            },
        ));
    }
    Ok(check)
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
        Some(r) => r,
        None => {
            let manifest = FileIdentity::of_path(&dir.join(MANIFEST_PATH))?;
            let mut fresh = TreeRecord {
                format: RECORD_FORMAT,
                files: Default::default(),
            };
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

//! The journal of the transaction in flight: `<root>/state/journal.json`.
//!
//! The transaction is an explicit state machine (SPEC §4). Before a step
//! starts, the journal naming that step is written durably (temp file,
//! fsync, rename, fsync of `state/`), so that a run killed at any instant
//! leaves a journal saying which step was about to run or running, and what
//! the transaction had done so far: the staged release, the links before
//! the switch, the persistence snapshot, whether the app was quiesced.
//! `slipway recover` reads it and decides by step, never by guessing from
//! the file system (see `docs/transaction.md` for the table). When the
//! transaction ends, the journal is removed durably.
//!
//! The journal is slipway's own state: it lives under `<root>/state/`,
//! never in the persistence directory, so restoring a snapshot never
//! rewinds it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use slipway_formats::channel::Timestamp;
use slipway_formats::{ReleaseId, Version};
use thiserror::Error;

use crate::durable;
use crate::failure_model::Cause;
use crate::layout::Layout;
use crate::snapshot::Snapshot;

/// The journal format this slipway writes and reads.
pub const JOURNAL_FORMAT: u32 = 1;

/// The steps of a transaction, in the order they run. The step recorded in
/// the journal is the one about to run (or running when the process died).
///
/// `Fetch` runs only for an HTTP source, before `Verify`; a journal written
/// by a later slipway with a step this one does not know is refused with a
/// clear message rather than misread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Step {
    /// Download the archive and its signature into `downloads/` (HTTP
    /// sources), resuming a partial download.
    Fetch,
    /// Check the archive (or the staged tree, for `apply` and `rollback`).
    Verify,
    /// Unpack into `releases/.staging-*`, then rename into `releases/`.
    Stage,
    /// Run the release's and the host's checks in the staged directory.
    Check,
    /// Ask the app to persist now.
    Save,
    /// Archive the persistence directory into `backups/<txn>/`.
    Snapshot,
    /// Ask the app to pause its work loops and wait for the acknowledgement.
    Quiesce,
    /// Run the release's migrate hook when its schema is above the data's;
    /// or, when the journal names a backup (`restore_from`), copy it over
    /// the data instead.
    Migrate,
    /// `previous` → old current, `current` → the new release.
    Switch,
    /// Restart the service.
    Restart,
    /// Wait for the service to be up and healthy.
    HealthGate,
    /// The new release is healthy: record it everywhere.
    Commit,
    /// The new release failed: put the old one back.
    FlipBack,
    /// History, dashboard files, journald, metrics.
    Report,
    /// Remove old releases and snapshots.
    Collect,
}

/// What undoes a step: the action a run that fails in the step takes, and
/// the one `slipway recover` takes after a run that died in it. One table
/// for both ([`Step::undo`]), so the forward path and recovery cannot drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Undo {
    /// Only the transaction's own files exist: remove its staging
    /// directories, the release it staged and its snapshots. The service
    /// was not touched. (A partial download stays for the next run.)
    Discard,
    /// The app may be paused and the migrate hook may have written: restore
    /// the snapshot if the data no longer matches it, resume the app, then
    /// [`Undo::Discard`] (the snapshot is kept until `gc`).
    RestoreAndResume,
    /// The links may point at the new release and the service may run it:
    /// stop the service, put both links back, restore the snapshot if the
    /// data changed, start the old release through the manager and
    /// health-gate it.
    FlipBack,
    /// The outcome was decided and journaled: finish recording it (commit,
    /// report, collect); nothing is undone.
    Finish,
}

impl Step {
    /// How this step is undone (see [`Undo`]). Exhaustive: a new step does
    /// not compile until it says how it is undone.
    pub fn undo(self) -> Undo {
        match self {
            Step::Fetch | Step::Verify | Step::Stage | Step::Check | Step::Save => Undo::Discard,
            // A snapshot only adds files under backups/: removing them
            // (the `.partial` first) is the whole undo.
            Step::Snapshot => Undo::Discard,
            // Quiesce: the app may have paused. Migrate: the hook may have
            // written (its orphans are killed before this runs).
            Step::Quiesce | Step::Migrate => Undo::RestoreAndResume,
            Step::Switch | Step::Restart | Step::HealthGate | Step::FlipBack => Undo::FlipBack,
            Step::Commit | Step::Report | Step::Collect => Undo::Finish,
        }
    }

    /// Whether, when a run is in this step, the app may be paused by it.
    pub fn app_may_be_paused(self) -> bool {
        matches!(self.undo(), Undo::RestoreAndResume | Undo::FlipBack)
    }

    /// Every step, in order.
    pub const ALL: [Step; 15] = [
        Step::Fetch,
        Step::Verify,
        Step::Stage,
        Step::Check,
        Step::Save,
        Step::Snapshot,
        Step::Quiesce,
        Step::Migrate,
        Step::Switch,
        Step::Restart,
        Step::HealthGate,
        Step::Commit,
        Step::FlipBack,
        Step::Report,
        Step::Collect,
    ];

    /// The step's name, as written in the journal and accepted by
    /// `SLIPWAY_FAULT_AFTER`.
    pub fn name(self) -> &'static str {
        match self {
            Step::Fetch => "Fetch",
            Step::Verify => "Verify",
            Step::Stage => "Stage",
            Step::Check => "Check",
            Step::Save => "Save",
            Step::Snapshot => "Snapshot",
            Step::Quiesce => "Quiesce",
            Step::Migrate => "Migrate",
            Step::Switch => "Switch",
            Step::Restart => "Restart",
            Step::HealthGate => "HealthGate",
            Step::Commit => "Commit",
            Step::FlipBack => "FlipBack",
            Step::Report => "Report",
            Step::Collect => "Collect",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Step {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Step::ALL
            .into_iter()
            .find(|step| step.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!(
                    "{s:?} is not a transaction step (one of {})",
                    Step::ALL.map(Step::name).join(", ")
                )
            })
    }
}

/// What a transaction does (the journal's `op`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// `slipway install SOURCE`.
    #[default]
    Install,
    /// `slipway update` (by hand or `--auto`).
    Update,
    /// `slipway apply`: finish an update staged with `auto_restart = false`.
    Apply,
    /// `slipway rollback`: back to `previous`.
    Rollback,
    /// `slipway restore BACKUP`: the running release stays, its data is
    /// replaced by a snapshot from `backups/`.
    Restore,
    /// `slipway check`: discovery and verification only; never journaled.
    Check,
}

impl Operation {
    /// The name in the journal, the history and messages.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Install => "install",
            Operation::Update => "update",
            Operation::Apply => "apply",
            Operation::Rollback => "rollback",
            Operation::Restore => "restore",
            Operation::Check => "check",
        }
    }

    /// Whether a failure of the target release puts it on the bad list
    /// (a rollback's target is the operator's choice, never bad-listed; a
    /// restore installs no release at all).
    pub fn installs_new_release(self) -> bool {
        !matches!(self, Operation::Rollback | Operation::Restore)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The result a transaction decided on at `Commit` or `FlipBack`, kept so
/// that a run killed during `Report` reports the same thing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// `updated`, `rolled_back` or `failed` (AttemptResult's names).
    pub result: slipway_formats::state::AttemptResult,
    pub message: String,
    /// When the attempt is recorded in host state, at this instant (used to
    /// recognise it when a killed run already recorded it).
    pub at: Timestamp,
    /// Why (the row of the failure table); absent in journals written
    /// before causes existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
}

/// `<root>/state/journal.json`: one transaction in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    pub format: u32,
    /// The transaction id: a UTC timestamp and the pid, also the name of
    /// its snapshot in `backups/`.
    pub txn: String,
    pub op: Operation,
    /// The step about to run, or running.
    pub step: Step,
    pub started_at: Timestamp,
    /// `slipway update --auto` (the timer).
    pub auto: bool,
    /// The release being installed (or rolled back to), once known.
    pub release_id: Option<ReleaseId>,
    pub version: Option<Version>,
    /// Its directory under `releases/`, once known.
    pub release_dir: Option<PathBuf>,
    /// Whether this transaction created `release_dir` (so an abandoned
    /// transaction removes it); false when it reused a staged one.
    pub staged_here: bool,
    /// `current`'s target when the transaction started (as stored).
    pub old_release: Option<PathBuf>,
    /// `previous`'s target when the transaction started (as stored).
    pub old_previous: Option<PathBuf>,
    /// The running version when the transaction started.
    pub from_version: Option<Version>,
    /// The data's schema when the transaction started, and the release's.
    pub schema_from: Option<u32>,
    pub schema_to: Option<u32>,
    pub snapshot: Option<Snapshot>,
    /// The backup that step `Migrate` copies over the data instead of
    /// running the migrate hook: `slipway restore BACKUP`, and `slipway
    /// rollback --restore-data` across a migration. `snapshot` stays the
    /// transaction's own copy of the data before it, which every undo
    /// puts back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<Snapshot>,
    /// The migrate hook ran (or started), or the restore of `restore_from`.
    pub data_changed: bool,
    /// The app acknowledged a quiesce and was not resumed or restarted since.
    pub quiesced: bool,
    /// Why the health gate (or the restart) failed, once it did.
    pub failure: Option<String>,
    /// Whose fault that was (the row of the failure table), so that a
    /// recovery of the flip back records it the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_cause: Option<Cause>,
    /// What `Commit` or `FlipBack` decided.
    pub decision: Option<Decision>,
    /// [`crate::snapshot::tree_digest`] of the data as the new release
    /// found it: at the switch (after the migration, the app paused), or,
    /// under probation, right after the restart (the old release has
    /// stopped, the new one starts paused and writes nothing). A flip back
    /// that finds the data still so knows the new release wrote nothing it
    /// must keep aside.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found_digest: Option<String>,
}

impl Journal {
    /// A fresh journal at step `Verify`.
    pub fn new(txn: String, op: Operation, started_at: Timestamp, auto: bool) -> Journal {
        Journal {
            format: JOURNAL_FORMAT,
            txn,
            op,
            step: Step::Verify,
            started_at,
            auto,
            release_id: None,
            version: None,
            release_dir: None,
            staged_here: false,
            old_release: None,
            old_previous: None,
            from_version: None,
            schema_from: None,
            schema_to: None,
            snapshot: None,
            restore_from: None,
            data_changed: false,
            quiesced: false,
            failure: None,
            failure_cause: None,
            decision: None,
            found_digest: None,
        }
    }
}

/// Why the journal could not be read or written.
#[derive(Debug, Error)]
pub enum JournalError {
    #[error("cannot write the transaction journal {path}: {source}; check free space and permissions of {}, then run `slipway recover`", .path.parent().unwrap_or(Path::new(".")).display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read the transaction journal {path}: {source}")]
    Read {
        path: PathBuf,
        source: slipway_fs::ReadError,
    },
    #[error("the transaction journal {path} is unreadable ({message}); it was written by a newer slipway or damaged: inspect it, run the slipway that wrote it, or move it away and check `current`, `previous` and the service by hand")]
    Corrupt { path: PathBuf, message: String },
    #[error("cannot remove the transaction journal {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
}

/// A transaction id: `YYYYMMDDTHHMMSSZ-<pid>`, sortable and unique per run.
pub fn new_txn_id(now: Timestamp) -> String {
    let t = now.0.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z-{}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        std::process::id()
    )
}

/// Records `journal` durably (its `step` is the one about to run), then
/// gives the crash tests their chance ([`crate::fault::after_journal`]).
pub fn record(layout: &Layout, journal: &Journal) -> Result<(), JournalError> {
    let path = layout.journal_file();
    let write = || {
        durable::create_dirs(&layout.state_dir())
            .and_then(|()| durable::write_json_atomic(&path, journal))
    };
    match write() {
        Ok(()) => {}
        // The disk filled up since the transaction began: the room set
        // aside for exactly this (crate::reserve) is given back, once.
        Err(e)
            if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error())
                && crate::reserve::free_journal_room(layout) =>
        {
            write().map_err(|source| JournalError::Write {
                path: path.clone(),
                source,
            })?
        }
        Err(source) => return Err(JournalError::Write { path, source }),
    }
    crate::fault::after_journal(journal.step);
    Ok(())
}

/// Reads the journal of a transaction in flight, `None` when there is none.
pub fn load(layout: &Layout) -> Result<Option<Journal>, JournalError> {
    let path = layout.journal_file();
    // Capped and never through a symlink, FIFO or device: the journal
    // decides what `recover` undoes.
    let bytes = match slipway_fs::read_capped(&path, crate::source::MAX_STATE_BYTES) {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(source) => return Err(JournalError::Read { path, source }),
    };
    let journal: Journal = serde_json::from_slice(&bytes).map_err(|e| JournalError::Corrupt {
        path: path.clone(),
        message: e.to_string(),
    })?;
    if let Err(message) = check_paths(layout, &journal) {
        return Err(JournalError::Corrupt { path, message });
    }
    if journal.format != JOURNAL_FORMAT {
        return Err(JournalError::Corrupt {
            path,
            message: format!(
                "format {} (this slipway reads format {JOURNAL_FORMAT})",
                journal.format
            ),
        });
    }
    Ok(Some(journal))
}

/// Whether every path and name in `j` stays where the transaction could
/// have put it: the transaction id is one [`new_txn_id`] makes (an empty or
/// odd id would match other snapshots by prefix), the release directories
/// lie under `releases/` and the snapshot under `backups/`, with no `..`.
/// A journal that fails this was not written by slipway, and recovery
/// touches nothing on its word.
pub fn check_paths(layout: &Layout, j: &Journal) -> Result<(), String> {
    if !valid_txn_id(&j.txn) {
        return Err(format!(
            "transaction id {:?} is not one slipway makes",
            j.txn
        ));
    }
    let under = |p: &Path, dir: &Path, what: &str| -> Result<(), String> {
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            layout.root().join(p)
        };
        let clean = p.components().all(|c| {
            !matches!(
                c,
                std::path::Component::ParentDir | std::path::Component::CurDir
            )
        });
        if clean && p.starts_with(dir) && p != dir {
            Ok(())
        } else {
            Err(format!(
                "{what} {} lies outside {}",
                p.display(),
                dir.display()
            ))
        }
    };
    let releases = layout.releases_dir();
    if let Some(d) = &j.release_dir {
        under(d, &releases, "release_dir")?;
    }
    if let Some(d) = &j.old_release {
        under(d, &releases, "old_release")?;
    }
    if let Some(d) = &j.old_previous {
        under(d, &releases, "old_previous")?;
    }
    if let Some(s) = &j.snapshot {
        under(&s.dir, &layout.backups_dir(), "snapshot")?;
    }
    if let Some(s) = &j.restore_from {
        under(&s.dir, &layout.backups_dir(), "restore_from")?;
    }
    Ok(())
}

/// `YYYYMMDDTHHMMSSZ-<pid>`, as [`new_txn_id`] writes it.
fn valid_txn_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() > 17
        && b.len() <= 32
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
        && b[16] == b'-'
        && b[17..].iter().all(u8::is_ascii_digit)
}

/// Removes the journal durably: the transaction is over (and so is the
/// room set aside for it).
pub fn finish(layout: &Layout) -> Result<(), JournalError> {
    crate::reserve::release(layout);
    let path = layout.journal_file();
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(JournalError::Remove { path, source }),
    }
    durable::fsync_dir(&layout.state_dir()).map_err(|source| JournalError::Remove { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_round_trip_by_name_and_keep_their_order() {
        for (i, step) in Step::ALL.iter().enumerate() {
            assert_eq!(step.name().parse::<Step>(), Ok(*step));
            let json = serde_json::to_string(step).expect("json");
            assert_eq!(json, format!("\"{}\"", step.name()));
            if i > 0 {
                assert!(Step::ALL[i - 1] < *step);
            }
        }
        assert_eq!("fetch".parse::<Step>(), Ok(Step::Fetch));
        assert!(Step::Fetch < Step::Verify);
        assert!("Download".parse::<Step>().is_err());
    }

    #[test]
    fn every_step_is_undone_by_what_it_may_have_changed() {
        use std::collections::BTreeSet;
        // ALL lists every step exactly once (the match in `undo` is
        // exhaustive, so every step has an undo).
        assert_eq!(
            Step::ALL.iter().collect::<BTreeSet<_>>().len(),
            Step::ALL.len()
        );
        for step in Step::ALL {
            let undo = step.undo();
            // Nothing before the app is asked to pause needs more than a
            // discard; from the switch on the links must come back; once
            // decided, nothing is undone.
            match step {
                Step::Fetch
                | Step::Verify
                | Step::Stage
                | Step::Check
                | Step::Save
                | Step::Snapshot => {
                    assert_eq!(undo, Undo::Discard, "{step}")
                }
                Step::Quiesce | Step::Migrate => assert_eq!(undo, Undo::RestoreAndResume, "{step}"),
                Step::Switch | Step::Restart | Step::HealthGate | Step::FlipBack => {
                    assert_eq!(undo, Undo::FlipBack, "{step}")
                }
                Step::Commit | Step::Report | Step::Collect => {
                    assert_eq!(undo, Undo::Finish, "{step}")
                }
            }
        }
        for op in [
            Operation::Install,
            Operation::Update,
            Operation::Apply,
            Operation::Rollback,
            Operation::Restore,
        ] {
            let json = serde_json::to_string(&op).expect("json");
            assert_eq!(json, format!("\"{}\"", op.name()));
        }
    }

    #[test]
    fn a_planted_journal_naming_paths_outside_the_root_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path());
        let now = Timestamp::parse("2026-03-01T10:20:30Z").expect("time");
        let good = Journal::new(new_txn_id(now), Operation::Install, now, false);
        assert_eq!(check_paths(&layout, &good), Ok(()));
        let mut empty_txn = good.clone();
        empty_txn.txn = String::new();
        let mut outside = good.clone();
        outside.release_dir = Some("/etc".into());
        let mut dotdot = good.clone();
        dotdot.release_dir = Some(layout.releases_dir().join("../state"));
        let mut old = good.clone();
        old.old_release = Some("../../etc".into());
        let mut backup = good.clone();
        backup.restore_from = Some(Snapshot {
            dir: layout.root().join("state"),
            digest: String::new(),
            files: 0,
            bytes: 0,
        });
        for bad in [empty_txn, outside, dotdot, old, backup] {
            record(&layout, &bad).expect("record");
            assert!(
                matches!(load(&layout), Err(JournalError::Corrupt { .. })),
                "{bad:?}"
            );
        }
        let mut fine = good.clone();
        fine.release_dir = Some(layout.releases_dir().join("1.0.0-abc"));
        fine.old_release = Some("releases/0.9.0-def".into());
        record(&layout, &fine).expect("record");
        assert_eq!(load(&layout).expect("load"), Some(fine));
    }

    #[test]
    fn record_load_finish() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path());
        assert_eq!(load(&layout).expect("none"), None);
        let now = Timestamp::parse("2026-03-01T10:20:30Z").expect("time");
        let mut j = Journal::new(new_txn_id(now), Operation::Install, now, false);
        assert!(j.txn.starts_with("20260301T102030Z-"));
        j.step = Step::Switch;
        j.old_release = Some("releases/1.0.0-abc".into());
        record(&layout, &j).expect("record");
        assert_eq!(load(&layout).expect("load"), Some(j));
        finish(&layout).expect("finish");
        assert_eq!(load(&layout).expect("gone"), None);
        finish(&layout).expect("finish twice");
        std::fs::write(layout.journal_file(), b"{\"format\": 9}").expect("write");
        assert!(matches!(load(&layout), Err(JournalError::Corrupt { .. })));
    }
}

//! The update transaction (SPEC §4 steps 2 and 4–15) as an explicit state
//! machine, and its recovery.
//!
//! Every step is recorded in the journal ([`crate::journal`]) before it
//! starts. The steps, in order:
//!
//! ```text
//! (Fetch →) Verify → Stage → Check → Save → Snapshot → Quiesce → Migrate → Switch
//!        → Restart → HealthGate → Commit → Report → Collect
//!                              ↘ FlipBack → Report → Collect
//! ```
//!
//! - `Fetch` (HTTP sources only) downloads the archive and its signature
//!   into `downloads/`, resuming a partial download; a failure leaves the
//!   partial file for the next run and exits 1.
//! - Before `Quiesce` the service is untouched: a failure removes what the
//!   transaction staged and exits 1.
//! - From `Quiesce` on the app is paused: a failure before the switch
//!   restores the persistence snapshot if the data changed and resumes the
//!   app (exit 1).
//! - A failed restart or health gate flips back: `current` and `previous`
//!   are put back, the snapshot is restored if the data changed, the old
//!   release is restarted and health-gated, the release goes on the bad
//!   list, the failure is counted and a critical alert is sent (exit 3).
//! - `auto_restart = false` stops after `Check` and records a pending
//!   update; [`apply`] finishes it from `Save` on.
//!
//! [`recover`] reads a journal left by a killed run and finishes or undoes
//! the transaction by its step (see `docs/transaction.md`).
//!
//! Every function here expects the caller to hold the transaction lock.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use slipway_formats::channel::Timestamp;
use slipway_formats::diff::{diff_manifests, ManifestDiff};
use slipway_formats::manifest::ManifestError;
use slipway_formats::state::AttemptResult;
use slipway_formats::{
    Manifest, ManifestHead, ReleaseId, Version, MANIFEST_PATH, MAX_MANIFEST_BYTES,
};
use thiserror::Error;

use crate::app_user::AppUser;
use crate::config::Config;
use crate::diff::verify_installed;
use crate::durable;
use crate::eligibility::{check_eligibility, EligibilityInput, Ineligible};
use crate::failure_model::{self, Cause};
use crate::fetch::{self, HttpClient};
use crate::gc;
use crate::health::{health_gate, HealthPolicy};
use crate::hooks;
use crate::journal::{self, Decision, Journal, JournalError, Operation, Step, Undo};
use crate::layout::Layout;
use crate::probation;
use crate::quiesce::{self, QuiesceMethod, ResumeMethod};
use crate::report;
use crate::service::Service;
use crate::snapshot::{self, Snapshot};
use crate::source::Candidate;
use crate::stage;
use crate::state::{Attempt, Clock, HostState, Pending, StateError};
use crate::switch::{self, SwitchError};
use crate::verify::{self, VerifiedArchive};
use crate::Exit;

mod outcome;
mod preview;
mod query;
mod recover;
mod restore;
mod undo;

pub use outcome::{Failure, InstallOptions, Outcome, TxnError};
pub use preview::{preview, Preview};
pub use query::{
    data_schema, read_installed, read_installed_head, records_file, running_release,
    running_summary, Installed, InstalledHead, ReleaseRecord, ReleaseRecords, RunningSummary,
};
pub use recover::recover;
use restore::*;
pub use restore::{check_restore, gc_protected, restore, RestorePlan};
use undo::*;

// ---------------------------------------------------------------------------
// What a transaction needs and what it returns
// ---------------------------------------------------------------------------

/// How chatty progress messages on stderr are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

/// Progress and diagnostics on stderr (results go to stdout).
#[derive(Debug, Clone, Copy)]
pub struct Log {
    pub verbosity: Verbosity,
}

impl Log {
    /// A step or decision an operator watching the run wants to see.
    pub fn info(&self, msg: impl AsRef<str>) {
        if self.verbosity >= Verbosity::Normal {
            eprintln!("slipway: {}", msg.as_ref());
        }
    }

    /// Detail for `--verbose`: timings, paths, command output.
    pub fn debug(&self, msg: impl AsRef<str>) {
        if self.verbosity >= Verbosity::Verbose {
            eprintln!("slipway: debug: {}", msg.as_ref());
        }
    }

    /// Something went wrong but the run goes on; shown unless `--quiet`.
    pub fn warn(&self, msg: impl AsRef<str>) {
        if self.verbosity >= Verbosity::Normal {
            eprintln!("slipway: warning: {}", msg.as_ref());
        }
    }

    /// `--quiet`: nothing on success.
    pub fn is_quiet(&self) -> bool {
        self.verbosity == Verbosity::Quiet
    }
}

/// Everything a transaction works with on this host.
pub struct Host<'a> {
    pub config: &'a Config,
    pub layout: Layout,
    pub service: Service,
    pub clock: &'a dyn Clock,
    pub log: Log,
    /// The service's user, found on first use ([`Host::app_user`]).
    app_user: std::cell::OnceCell<Result<AppUser, String>>,
}

impl<'a> Host<'a> {
    /// The host described by `config`.
    pub fn new(config: &'a Config, clock: &'a dyn Clock, log: Log) -> Host<'a> {
        Host {
            config,
            layout: Layout::new(&config.paths.root),
            service: Service::from_config(&config.service),
            clock,
            log,
            app_user: std::cell::OnceCell::new(),
        }
    }

    fn persistence(&self) -> &Path {
        &self.config.paths.persistence
    }

    /// The user the app's hooks run as and its directories belong to
    /// ([`AppUser::of_service`]), looked up once per run.
    pub fn app_user(&self) -> Result<&AppUser, Failure> {
        self.app_user
            .get_or_init(|| {
                AppUser::of_service(&self.config.service, &self.service).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|why| {
                Failure::new(
                    "cannot tell which user the app's hooks run as",
                    why,
                    "set [service] user and group in the configuration",
                )
            })
    }
}

/// The room an update of `manifest` needs on the root's file system for
/// the disk-space rule, besides what [`Txn::begin`] sets aside for the
/// journal and a restore ([`crate::reserve`]): the unpacked release, and
/// two copies of the persistence (the snapshot, and the paused snapshot,
/// which is written beside it before the first one goes).
fn room_needed(manifest: &Manifest, persistence: &Path) -> u64 {
    manifest
        .total_size()
        .saturating_add(crate::reserve::copy_room(persistence).saturating_mul(2))
}

/// Where the service's own commands (save, quiesce, resume) run: the
/// running release's `app/`, so `python3 -m bot.save` imports.
fn app_cwd(layout: &Layout, running: Option<&Path>) -> PathBuf {
    let dir = running
        .map(Path::to_path_buf)
        .unwrap_or_else(|| layout.root().to_path_buf());
    let app = dir.join("app");
    if app.is_dir() {
        app
    } else if dir.is_dir() {
        dir
    } else {
        PathBuf::from("/")
    }
}

/// The environment hooks get (SPEC §4 steps 6 and 9). Python bytecode is
/// redirected to `pycache` (a throwaway directory): a release tree is
/// read-only and verified against its manifest, and a check such as
/// `python3 -m compileall` run as root would otherwise write into it.
fn hook_env(
    release_dir: &Path,
    manifest: &Manifest,
    persistence: &Path,
    schema: Option<(u32, u32)>,
    pycache: &Path,
) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "SLIPWAY_RELEASE_DIR".to_string(),
            release_dir.display().to_string(),
        ),
        ("SLIPWAY_VERSION".to_string(), manifest.version.to_string()),
        (
            "SLIPWAY_PERSISTENCE".to_string(),
            persistence.display().to_string(),
        ),
        ("PYTHONDONTWRITEBYTECODE".to_string(), "1".to_string()),
        (
            "PYTHONPYCACHEPREFIX".to_string(),
            pycache.display().to_string(),
        ),
    ];
    if let Some((from, to)) = schema {
        env.push(("SLIPWAY_SCHEMA_FROM".to_string(), from.to_string()));
        env.push(("SLIPWAY_SCHEMA_TO".to_string(), to.to_string()));
    }
    env
}

/// The persistence directory exists before a new release first starts,
/// created (when missing) for the service's user: a service that runs as
/// its own user cannot create it under a root-owned parent.
fn ensure_app_dirs(host: &Host) -> Result<(), Failure> {
    let path = host.persistence();
    let cannot = |e: crate::app_dir::AppDirError| {
        Failure::new(
            format!("cannot create the persistence directory {}", path.display()),
            e,
            "check paths.persistence and the permissions of its parent",
        )
    };
    if crate::app_dir::open_persistence(path)
        .map_err(cannot)?
        .is_some()
    {
        return Ok(());
    }
    let user = host.app_user()?;
    crate::app_dir::ensure_persistence(path, Some(user)).map_err(cannot)?;
    host.log.info(format!(
        "created {} for the service's user {}",
        path.display(),
        user.name
    ));
    Ok(())
}

/// How many transactions' hook output is kept under `state/hook-output/`.
pub const KEEP_HOOK_OUTPUT: usize = 10;

/// `<root>/state/hook-output/<txn>/`, where this transaction's hooks keep
/// their whole output (named in a failure's message). Only the newest
/// [`KEEP_HOOK_OUTPUT`] transactions' directories are kept.
fn hook_log_dir(host: &Host, txn: &str) -> PathBuf {
    let base = host.layout.state_dir().join("hook-output");
    if let Ok(entries) = std::fs::read_dir(&base) {
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.as_str() != txn)
            .collect();
        // Transaction ids sort by time.
        names.sort();
        let excess = names.len().saturating_sub(KEEP_HOOK_OUTPUT - 1);
        for old in &names[..excess] {
            let _ = durable::remove_tree(&base.join(old));
        }
    }
    base.join(txn)
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

fn us(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

// ---------------------------------------------------------------------------
// The transaction
// ---------------------------------------------------------------------------

/// The release a transaction switches to.
#[derive(Debug, Clone)]
struct Target {
    dir: PathBuf,
    manifest: Manifest,
    id: Option<ReleaseId>,
    /// A clean copy of the running release (`install --force`): the switch
    /// replaces `current` and leaves `previous` on the release before.
    reinstall: bool,
}

/// A transaction in flight: the journal and what it has learned so far.
struct Txn<'h, 'a> {
    host: &'h Host<'a>,
    journal: Journal,
    started: Instant,
    running: Option<Installed>,
    switch_latency: Option<Duration>,
    flip_back_latency: Option<Duration>,
    /// Whether the service was up when the transaction reached `Save`.
    service_was_running: bool,
}

impl<'h, 'a> Txn<'h, 'a> {
    /// Starts a transaction: reads the links and the running release and
    /// records `first` (`Fetch` for an HTTP source, else `Verify`).
    fn begin(
        host: &'h Host<'a>,
        op: Operation,
        auto: bool,
        first: Step,
    ) -> Result<Self, Box<Outcome>> {
        let now = host.clock.now();
        let mut journal = Journal::new(journal::new_txn_id(now), op, now, auto);
        journal.step = first;
        let fail = |f: Failure| {
            let mut o = Outcome::of_cause(op.name(), Cause::HostBeforeService, f.why.clone());
            o.failure = Some(f);
            Box::new(o)
        };
        let links = switch::read_links(&host.layout).map_err(|e| {
            fail(Failure::new(
                "cannot read the links",
                e,
                "check the install root",
            ))
        })?;
        let running = running_release(&host.layout).map_err(fail)?;
        journal.old_release = links.current;
        journal.old_previous = links.previous;
        journal.from_version = running.as_ref().map(|r| r.manifest.version.clone());
        journal.schema_from =
            data_schema(host.persistence(), running.as_ref().map(|r| &r.manifest)).map_err(fail)?;
        let txn = Txn {
            host,
            journal,
            started: Instant::now(),
            running,
            switch_latency: None,
            flip_back_latency: None,
            service_was_running: false,
        };
        // Before the first write of the transaction: the room its journal
        // and a flip back's restore copy will need (crate::reserve).
        // Two copies: the data a flip back replaces is kept aside first.
        match crate::reserve::set_aside(
            &host.layout,
            crate::reserve::copy_room(host.persistence()).saturating_mul(2),
        ) {
            Ok(()) => {}
            Err(crate::reserve::ReserveError::Unsupported) => host
                .log
                .debug("this file system cannot preallocate: no room set aside for the journal and a restore"),
            Err(e) => {
                let mut o = Outcome::of_cause(
                    op.name(),
                    Cause::Ineligible,
                    format!("skipped ({}): {e}", crate::eligibility::RULE_DISK_SPACE),
                );
                o.rule = Some(crate::eligibility::RULE_DISK_SPACE.to_string());
                o.failure = Some(Failure::new(
                    "update skipped",
                    e,
                    "free some space (`slipway gc` removes old releases and snapshots); nothing was touched",
                ));
                return Err(Box::new(o));
            }
        }
        txn.record_now(first).map_err(|e| {
            fail(Failure::new(
                "cannot start the transaction",
                e,
                "check free space and permissions of the state directory",
            ))
        })?;
        Ok(txn)
    }

    fn layout(&self) -> &Layout {
        &self.host.layout
    }

    fn log(&self) -> Log {
        self.host.log
    }

    fn record_now(&self, step: Step) -> Result<(), JournalError> {
        let mut j = self.journal.clone();
        j.step = step;
        journal::record(&self.host.layout, &j)
    }

    /// Records `step` as the one about to run. If the journal cannot be
    /// written (even after giving back its reserved room), the step that was
    /// running is undone as far as the app is concerned (data restored if
    /// the migration touched it, app resumed) before the error goes up: the
    /// journal on disk still names that step, so `recover` finishes the rest.
    fn enter(&mut self, step: Step) -> Result<(), TxnError> {
        let mut next = self.journal.clone();
        next.step = step;
        if let Err(e) = journal::record(&self.host.layout, &next) {
            if self.journal.step.undo() == Undo::RestoreAndResume {
                if let Err(undo) = undo_step(self.host, &self.journal) {
                    self.host.log.warn(format!("{undo}"));
                }
            }
            return Err(e.into());
        }
        self.journal = next;
        self.host.log.debug(format!(
            "txn {}: step {step} ({} ms in)",
            self.journal.txn,
            ms(self.started.elapsed())
        ));
        Ok(())
    }

    fn outcome(&self, cause: Cause, message: impl Into<String>) -> Outcome {
        let mut o = Outcome::of_cause(self.journal.op.name(), cause, message);
        o.from_version = self.journal.from_version.clone();
        o.version = self.journal.version.clone();
        o.release_id = self.journal.release_id;
        o.switch_us = self.switch_latency.map(us);
        o.flip_back_us = self.flip_back_latency.map(us);
        o.duration_ms = ms(self.started.elapsed());
        o.snapshot = self.journal.snapshot.as_ref().map(|s| s.dir.clone());
        o
    }

    fn attempt(&self, cause: Cause, message: &str, at: Timestamp) -> Attempt {
        Attempt {
            op: self.journal.op.name().to_string(),
            at,
            result: cause.result(),
            from_version: self.journal.from_version.clone(),
            version: self.journal.version.clone(),
            release_id: self.journal.release_id,
            message: message.to_string(),
            duration_ms: ms(self.started.elapsed()),
            cause: Some(cause),
            auto: self.journal.auto,
        }
    }

    /// Ends a transaction that did not reach `Commit`/`FlipBack` (refused,
    /// failed before the switch, skipped, up to date, ready): records and
    /// reports the attempt by its `cause` (which decides what it counts
    /// toward and whether the release is bad-listed) and removes the journal.
    fn conclude(
        self,
        cause: Cause,
        message: String,
        failure: Option<Failure>,
    ) -> Result<Outcome, TxnError> {
        let at = self.host.clock.now();
        let attempt = self.attempt(cause, &message, at);
        let reason = failure.as_ref().map(|f| f.why.clone());
        record_and_report(self.host, attempt, reason)?;
        journal::finish(self.layout())?;
        let mut o = self.outcome(cause, message);
        o.failure = failure;
        Ok(o)
    }

    /// Ends a transaction whose current step failed: the step's undo
    /// ([`Step::undo`], the same one `recover` runs after a crash in it),
    /// then the failure is recorded and the journal removed. If the undo
    /// itself fails, the journal stays and the next run recovers.
    fn abort(self, cause: Cause, failure: Failure) -> Result<Outcome, TxnError> {
        undo_step(self.host, &self.journal)?;
        self.fail(cause, failure)
    }

    fn fail(self, cause: Cause, failure: Failure) -> Result<Outcome, TxnError> {
        let message = format!("{}: {}", failure.what, failure.why);
        self.conclude(cause, message, Some(failure))
    }

    /// Removes the release directory this transaction staged, unless
    /// something still points at it.
    fn discard_staged(&self) {
        if self.journal.staged_here {
            if let Some(dir) = &self.journal.release_dir {
                discard_release_dir(self.host, dir);
            }
        }
    }
}

/// Records an attempt that ended before a transaction began (discovery:
/// up to date, skipped, a refused channel index) and reports it.
pub fn record_attempt(host: &Host, attempt: Attempt) -> Result<(), TxnError> {
    record_and_report(host, attempt, None)
}

/// Records `attempt` in the host state (unless it is already the last one
/// recorded: a killed run may have got that far) and reports it. Its
/// [`Cause`] decides what it counts toward and whether the release it
/// tried goes on the bad list (with `bad_reason`, else the message), never
/// for a `rollback`, whose target is the operator's choice.
fn record_and_report(
    host: &Host,
    attempt: Attempt,
    bad_reason: Option<String>,
) -> Result<(), TxnError> {
    let mut state = HostState::load_at(&host.layout, host.clock.now())?;
    let cause = attempt.cause();
    let operators_choice = [Operation::Rollback, Operation::Restore]
        .iter()
        .any(|op| op.name() == attempt.op);
    if cause.bad_lists() && !operators_choice {
        if let (Some(id), Some(version)) = (attempt.release_id, attempt.version.clone()) {
            let reason = bad_reason.unwrap_or_else(|| attempt.message.clone());
            state.mark_bad(
                id,
                version,
                format!("{}: {reason}", cause.label()),
                attempt.at,
            );
        }
    }
    let already = state.last_attempt.as_ref().is_some_and(|a| {
        a.at == attempt.at
            && a.op == attempt.op
            && a.result == attempt.result
            && a.release_id == attempt.release_id
            && a.message == attempt.message
    });
    if !already {
        state.record(attempt.clone(), host.config.update.max_failures_per_day);
    }
    state.save(&host.layout)?;
    report_with_current(host, &state, &attempt);
    Ok(())
}

/// Reports `attempt` with whatever `current` now points at, from the
/// release records where they know it (no manifest is read).
fn report_with_current(host: &Host, state: &HostState, attempt: &Attempt) {
    let records = ReleaseRecords::load(&host.layout);
    let running = running_summary(&host.layout).ok().flatten();
    let previous_version = switch::read_links(&host.layout)
        .ok()
        .and_then(|l| l.previous)
        .map(|t| switch::resolve_target(&host.layout, &t))
        .and_then(|d| query::summary_of(&host.layout, &records, &d).ok())
        .map(|r| r.facts.version);
    let current = running.as_ref().and_then(|r| {
        Some(report::Current {
            release: r.facts.clone(),
            id: r.id?,
            dir: &r.dir,
            installed_at: r.installed_at.unwrap_or(attempt.at),
            previous_version: previous_version.clone(),
        })
    });
    let owner = host.app_user().ok();
    if let Err(e) =
        report::report_attempt(&host.layout, host.config, state, attempt, current, owner)
    {
        host.log.warn(format!("reporting the attempt: {e}"));
    }
}

/// Installs the release `candidate` names (`slipway install`, `slipway
/// update`): SPEC §4 steps 2 and 4–15.
pub fn install(
    host: &Host,
    candidate: &Candidate,
    opts: &InstallOptions,
) -> Result<Outcome, TxnError> {
    let first = if candidate.remote.is_some() {
        Step::Fetch
    } else {
        Step::Verify
    };
    let mut t = match Txn::begin(host, opts.op, opts.auto, first) {
        Ok(t) => t,
        Err(o) => return Ok(*o),
    };
    let log = t.log();
    // A delta from the running release, when the index lists one.
    let mut delta = None;

    // Step 3: Fetch (HTTP sources; recorded by begin).
    if let Some(remote) = &candidate.remote {
        if let Some(listed) = &candidate.listed {
            t.journal.release_id = Some(listed.id);
            t.journal.version = Some(listed.version.clone());
            // So that a run killed mid-download is recovered by name.
            t.enter(Step::Fetch)?;
        }
        let client = match HttpClient::from_config(
            &host.config.update,
            log.verbosity >= Verbosity::Normal,
        ) {
            Ok(c) => c,
            Err(e) => {
                return t.fail(
                    Cause::HostBeforeService,
                    Failure::new(
                        "cannot set up the HTTP client",
                        e,
                        "fix update.token_file in the configuration",
                    ),
                )
            }
        };
        delta = crate::delta::take(&log, candidate, delta_running(&t), Some(&client));
        if delta.is_none() {
            if let Err((cause, f)) = fetch_full(&log, &client, remote, candidate) {
                return t.fail(cause, f);
            }
        }
        t.enter(Step::Verify)?;
    } else if candidate.listed.is_some() {
        delta = crate::delta::take(&log, candidate, delta_running(&t), None);
    }

    // Step 4: Verify (a delta taken above is verified already; staging walks it).
    let delta_used = delta.as_ref().map(|d| d.candidate.clone());
    let verifying = match delta {
        Some(acquired) => Ok(acquired.verified),
        None => {
            log.info(format!("verifying {}", candidate.archive.display()));
            verify_candidate(candidate, delta_running(&t))
        }
    };
    let mut verified = match verifying {
        Ok(v) => v,
        Err(e) => {
            discard_download(host, candidate);
            let what = match &candidate.remote {
                Some(r) => format!("release {} refused", r.url),
                None => format!("release {} refused", candidate.archive.display()),
            };
            return t.fail(
                failure_model::of_verify_error(&e),
                Failure::new(
                    what,
                    e,
                    "nothing was installed; check the source and the trusted keys",
                ),
            );
        }
    };
    let id = verified.release.id;
    t.journal.release_id = Some(id);
    t.journal.version = Some(verified.release.manifest.version.clone());
    t.journal.schema_to = Some(verified.release.manifest.schema_version);
    let mut release_dir = host.layout.release_dir(&verified.release.manifest, &id);
    let name = format!(
        "{} {} ({})",
        verified.release.manifest.app,
        verified.release.manifest.version,
        id.short()
    );
    log.debug(format!(
        "verified {name}, signed by key {}",
        verified.release.signer
    ));

    let reinstall = t
        .running
        .as_ref()
        .is_some_and(|r| r.dir == release_dir || r.id == Some(id));
    if reinstall {
        if !opts.force {
            let msg = format!(
                "{name} is already running; nothing to do (`--force` reinstalls a clean copy of it)"
            );
            return t.conclude(Cause::UpToDate, msg, None);
        }
        // The running copy may have been changed; a fresh directory beside
        // it gets a clean one, switched to like any release.
        match host
            .layout
            .fresh_release_dir(&verified.release.manifest, &id)
        {
            Some(dir) => release_dir = dir,
            None => {
                return t.fail(
                    Cause::HostBeforeService,
                    Failure::new(
                        format!("cannot reinstall {name}"),
                        format!(
                            "{} copies of it are already in {}",
                            crate::layout::MAX_RELEASE_COPIES,
                            host.layout.releases_dir().display()
                        ),
                        "run `slipway gc` to remove the ones nothing points at, then try again",
                    ),
                )
            }
        }
        log.info(format!(
            "{name} is running; reinstalling a clean copy of it into {}",
            release_dir.display()
        ));
    }
    let state = HostState::load_at(&host.layout, host.clock.now())?;
    if !opts.force {
        if let Some(bad) = state.bad(&id) {
            let msg = format!(
                "{name} is on this host's bad list since {} ({}); it is never retried automatically",
                bad.at, bad.reason
            );
            let f = Failure::new(
                format!("release {name} refused"),
                format!("it is on this host's bad list since {} ({})", bad.at, bad.reason),
                "fix the release and publish a new version, or retry this one with `slipway install --force`",
            );
            let mut o = t.conclude(Cause::BadListed, msg, Some(f))?;
            o.rule = Some("bad_release".into());
            return Ok(o);
        }
    }
    // A reinstall of the running release is neither an upgrade nor a
    // downgrade: only the app and data schema rules apply.
    if let Err(e) = verify::check_upgrade(
        &verified.release.manifest,
        t.running.as_ref().map(|r| &r.manifest),
        t.journal.schema_from,
        opts.allow_downgrade || reinstall,
    ) {
        let cause = failure_model::of_verify_error(&e);
        let hint = match cause {
            Cause::Downgrade => "nothing was changed; pass --allow-downgrade to install it anyway",
            _ => "nothing was changed",
        };
        return t.fail(
            cause,
            Failure::new(format!("release {name} refused"), e, hint),
        );
    }
    // Step 2: Eligibility, now that the sizes are known.
    if let Err(ineligible) = eligibility(host, &t, &state, &verified.release.manifest, opts) {
        return skipped(t, ineligible);
    }

    // Step 5: Stage.
    t.journal.staged_here = !release_dir.exists();
    t.journal.release_dir = Some(release_dir.clone());
    t.enter(Step::Stage)?;
    log.info(format!("staging {name}"));
    if let Err(e) = durable::create_dirs(&host.layout.releases_dir()) {
        return t.fail(
            Cause::HostBeforeService,
            Failure::new(
                "cannot create the releases directory",
                e,
                "check permissions of the install root",
            ),
        );
    }
    let dir_name = release_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unchanged files are hardlinked from the running release (never into
    // a reinstall, which is a fresh copy of the running one).
    let mut link_from = t
        .running
        .as_ref()
        .filter(|_| !reinstall)
        .and_then(|r| stage::LinkSource::of_release(&host.layout, &r.dir, &r.manifest));
    if let Some(source) = link_from.as_mut() {
        // Without --force, eligibility's clean-tree rule has just proven
        // the running release against its record, under the lock.
        source.set_vouched(!opts.force);
    }
    log.debug(format!(
        "{} files of the running release may be hardlinked",
        link_from.as_ref().map_or(0, stage::LinkSource::len)
    ));
    let delta_base = delta_running(&t)
        .filter(|_| verified.release.base.is_some())
        .map(crate::delta::DeltaBase::of_release);
    let mut staging = stage::stage_release_into(
        &mut verified,
        &host.layout.releases_dir(),
        &dir_name,
        stage::StageOptions {
            link_from: link_from.as_ref(),
            records: Some(&host.layout),
            delta_base: delta_base.as_ref(),
            ..Default::default()
        },
    );
    if let (Err(e), Some(used)) = (&staging, &delta_used) {
        // Staging walks the delta: a hostile delta, or a base file that
        // changed under us, is refused here. The full archive, fetched and
        // verified as if no delta were listed.
        log.warn(format!(
            "delta {} refused while staging ({e}); taking the full archive instead",
            used.archive.display()
        ));
        t.discard_staged();
        used.discard_download();
        if let Some(source) = link_from.as_mut() {
            // Something may have changed since the clean-tree rule ran:
            // every link is checked before it is made.
            source.set_vouched(false);
        }
        match full_after_delta(host, &log, candidate) {
            Ok(full) => verified = full,
            Err((cause, f)) => return t.fail(cause, f),
        }
        staging = stage::stage_release_into(
            &mut verified,
            &host.layout.releases_dir(),
            &dir_name,
            stage::StageOptions {
                link_from: link_from.as_ref(),
                records: Some(&host.layout),
                ..Default::default()
            },
        );
    }
    if let Some(used) = &delta_used {
        used.discard_download();
    }
    let staged = match staging {
        Ok(dir) => dir,
        Err(e) => {
            t.discard_staged();
            let cause = failure_model::of_stage_error(&e);
            let hint = if cause == Cause::ArchiveRefused {
                "nothing was installed; the release archive is damaged or hostile"
            } else {
                "nothing was installed; check free space and permissions of the install root"
            };
            return t.fail(
                cause,
                Failure::new(format!("release {name} refused while unpacking"), e, hint),
            );
        }
    };
    let now = host.clock.now();
    ReleaseRecords::update(&host.layout, &staged, |old| {
        Some(ReleaseRecord {
            id,
            app: Some(verified.release.manifest.app.clone()),
            channel: Some(verified.release.manifest.channel.clone()),
            schema_version: Some(verified.release.manifest.schema_version),
            version: verified.release.manifest.version.clone(),
            staged_at: old.as_ref().map_or(now, |o| o.staged_at),
            installed_at: old.and_then(|o| o.installed_at),
        })
    })?;
    let target = Target {
        dir: staged,
        // Moved, not cloned: the archive is done with (20,000 entries).
        manifest: verified.release.manifest,
        id: Some(id),
        reinstall,
    };
    drop(verified.file);
    // The staged tree is the durable result: the download is not needed.
    discard_download(host, candidate);

    // Step 6: Check.
    t.enter(Step::Check)?;
    if let Some((cause, failure)) = run_checks(&t, &target)? {
        return t.fail(cause, failure);
    }

    if !host.config.update.auto_restart {
        return make_pending(t, &target);
    }
    from_save(t, &target)
}

/// Removes a fetched archive and its signature from `downloads/` (HTTP
/// sources only): after a refusal, so the next run fetches afresh, and
/// after staging, when the release directory holds it all.
fn discard_download(host: &Host, candidate: &Candidate) {
    if candidate.remote.is_none() {
        return;
    }
    for path in [&candidate.archive, &candidate.signature] {
        if let Err(e) = std::fs::remove_file(path) {
            if e.kind() != io::ErrorKind::NotFound {
                host.log
                    .warn(format!("cannot remove {}: {e}", path.display()));
            }
        }
    }
}

/// The running release as a delta's base, when its id is known.
fn delta_running<'t>(t: &'t Txn) -> Option<crate::delta::Running<'t>> {
    let r = t.running.as_ref()?;
    Some(crate::delta::Running {
        id: r.id?,
        dir: &r.dir,
        manifest: &r.manifest,
        manifest_bytes: &r.manifest_bytes,
    })
}

/// Step 4 for an archive that was not taken as a listed delta: a local
/// file may be a delta from the running release ([`crate::delta::verify_local`]).
fn verify_candidate(
    candidate: &Candidate,
    running: Option<crate::delta::Running<'_>>,
) -> Result<verify::VerifiedArchive, verify::VerifyError> {
    if candidate.listed.is_none() {
        return crate::delta::verify_local(candidate, running);
    }
    verify::verify_archive(
        &candidate.archive,
        &candidate.signature,
        &candidate.keys,
        &candidate.expect,
    )
}

/// Step 3 for the full archive (SPEC §4): the resumable, capped download.
fn fetch_full(
    log: &Log,
    client: &HttpClient,
    remote: &crate::source::RemoteArchive,
    candidate: &Candidate,
) -> Result<(), (Cause, Failure)> {
    log.info(format!("downloading {}", remote.url));
    match fetch::fetch_release(client, remote, &candidate.archive, &candidate.signature) {
        Ok(d) => log.debug(format!(
            "{} bytes fetched{}{}",
            d.fetched,
            if d.resumed_from > 0 {
                format!(", resumed from byte {}", d.resumed_from)
            } else {
                String::new()
            },
            if d.reused {
                ", a complete earlier download reused"
            } else {
                ""
            }
        )),
        Err(e) => {
            let cause = failure_model::of_fetch_error(&e);
            let f = Failure::new(
                format!("cannot download release {}", remote.url),
                e,
                "nothing was installed; the next run resumes the download",
            );
            return Err((cause, f));
        }
    }
    Ok(())
}

/// The full archive after the delta failed at staging: fetched (HTTP) and
/// verified exactly as when no delta is listed.
fn full_after_delta(
    host: &Host,
    log: &Log,
    candidate: &Candidate,
) -> Result<verify::VerifiedArchive, (Cause, Failure)> {
    if let Some(remote) = &candidate.remote {
        let client =
            HttpClient::from_config(&host.config.update, log.verbosity >= Verbosity::Normal)
                .map_err(|e| {
                    (
                        Cause::HostBeforeService,
                        Failure::new(
                            "cannot set up the HTTP client",
                            e,
                            "fix update.token_file in the configuration",
                        ),
                    )
                })?;
        fetch_full(log, &client, remote, candidate)?;
    }
    log.info(format!("verifying {}", candidate.archive.display()));
    verify_candidate(candidate, None).map_err(|e| {
        discard_download(host, candidate);
        (
            failure_model::of_verify_error(&e),
            Failure::new(
                format!("release {} refused", candidate.archive.display()),
                e,
                "nothing was installed; check the source and the trusted keys",
            ),
        )
    })
}

/// The eligibility rules of SPEC §4 step 2 for this release.
fn eligibility(
    host: &Host,
    t: &Txn,
    state: &HostState,
    manifest: &Manifest,
    opts: &InstallOptions,
) -> Result<(), Ineligible> {
    let needed = room_needed(manifest, host.persistence());
    let running = if opts.force {
        None
    } else {
        t.running.as_ref().map(|r| (r.dir.as_path(), &r.manifest))
    };
    check_eligibility(&EligibilityInput {
        config: host.config,
        layout: &host.layout,
        state,
        running,
        needed_bytes: needed,
        auto: opts.auto,
        now: host.clock.now(),
        clean: crate::clean::CleanRule {
            deep: host.config.update.deep_clean_check,
            record: true,
            log: Some(host.log),
        },
    })
}

fn skipped(t: Txn, ineligible: Ineligible) -> Result<Outcome, TxnError> {
    let msg = format!("skipped ({}): {}", ineligible.rule, ineligible.reason);
    let f = Failure::new(
        "update skipped",
        format!("{} ({})", ineligible.reason, ineligible.rule),
        "nothing was touched",
    );
    let mut o = t.conclude(ineligible.cause(), msg, Some(f))?;
    o.rule = Some(ineligible.rule.to_string());
    Ok(o)
}

/// Step 6: the release's check hook and the host's checks, in the staged
/// directory. A failure ends the transaction with the service untouched:
/// [`Cause::CheckFailed`] (the release goes on the bad list when the
/// attempt is recorded), or a host fault when a check could not be run.
fn run_checks(t: &Txn, target: &Target) -> Result<Option<(Cause, Failure)>, TxnError> {
    let host = t.host;
    let release_check = target.manifest.hooks.check.as_deref();
    if release_check.is_none() && host.config.hooks.check.is_empty() {
        return Ok(None);
    }
    let user = match host.app_user() {
        Ok(user) => user,
        Err(failure) => {
            t.discard_staged();
            return Ok(Some((Cause::HostBeforeService, failure)));
        }
    };
    host.log.info(format!(
        "running checks in {} as {}",
        target.dir.display(),
        user.name
    ));
    let pycache = hooks::hook_scratch_dir(user);
    let env = hook_env(
        &target.dir,
        &target.manifest,
        host.persistence(),
        None,
        pycache
            .as_ref()
            .map_or(Path::new("/nonexistent"), |d| d.path()),
    );
    let timeout = Duration::from_secs(host.config.hooks.timeout_seconds);
    let logs = hook_log_dir(host, &t.journal.txn);
    match hooks::run_checks(
        &target.dir,
        release_check,
        &host.config.hooks.check,
        &env,
        timeout,
        user,
        Some(&logs),
    ) {
        Ok(outputs) => {
            for o in outputs {
                host.log
                    .debug(format!("check passed in {} ms", ms(o.duration)));
            }
            Ok(None)
        }
        Err(e) => {
            let version = target.manifest.version.clone();
            let cause =
                failure_model::of_hook_error(&e, Cause::CheckFailed, Cause::HostBeforeService);
            t.discard_staged();
            let (what, hint) = if cause == Cause::CheckFailed {
                (
                    format!("{} {} failed its checks", target.manifest.app, version),
                    "the service was not touched; the release is on the bad list (`slipway install --force` retries it)",
                )
            } else {
                (
                    format!(
                        "cannot run the checks of {} {}",
                        target.manifest.app, version
                    ),
                    "the service was not touched and the release is not blamed; fix the host",
                )
            };
            Ok(Some((cause, Failure::new(what, e, hint))))
        }
    }
}

/// `auto_restart = false`: the release is staged and checked; record it as
/// pending for `slipway apply`.
fn make_pending(t: Txn, target: &Target) -> Result<Outcome, TxnError> {
    let host = t.host;
    let Some(id) = target.id else {
        return t.fail(
            Cause::HostBeforeService,
            Failure::new(
                "cannot record the pending update",
                "the release id is unknown",
                "install it again",
            ),
        );
    };
    let mut state = HostState::load_at(&host.layout, host.clock.now())?;
    state.pending = Some(Pending {
        release_id: id,
        version: target.manifest.version.clone(),
        dir: target.dir.clone(),
        staged_at: host.clock.now(),
    });
    state.save(&host.layout)?;
    let msg = format!(
        "update ready: {} {} is staged and checked; run `slipway apply` to switch to it (auto_restart = false)",
        target.manifest.app, target.manifest.version
    );
    t.conclude(Cause::Ready, msg, None)
}

/// `slipway apply`: finishes an update staged with `auto_restart = false`,
/// from `Save` on, after checking the staged tree again.
pub fn apply(host: &Host) -> Result<Outcome, TxnError> {
    let state = HostState::load_at(&host.layout, host.clock.now())?;
    let Some(pending) = state.pending.clone() else {
        return Ok(Outcome::of_cause(
            "apply",
            Cause::UpToDate,
            "no update is pending; nothing to apply",
        ));
    };
    let mut t = match Txn::begin(host, Operation::Apply, false, Step::Verify) {
        Ok(t) => t,
        Err(o) => return Ok(*o),
    };
    t.journal.release_id = Some(pending.release_id);
    t.journal.version = Some(pending.version.clone());
    t.journal.release_dir = Some(pending.dir.clone());
    let installed = match read_installed(&host.layout, &pending.dir) {
        Ok(i) => i,
        Err(f) => return clear_pending_and_fail(t, Cause::HostBeforeService, f),
    };
    t.journal.schema_to = Some(installed.manifest.schema_version);
    match verify_installed(&pending.dir, &installed.manifest) {
        Ok(drift) if drift.is_empty() => {}
        Ok(drift) => {
            let f = Failure::new(
                format!(
                    "the staged release {} changed since it was checked",
                    pending.dir.display()
                ),
                crate::diff::describe_drift(&drift),
                "run `slipway update` (or `slipway install`) again to stage it afresh",
            );
            return clear_pending_and_fail(t, Cause::HostBeforeService, f);
        }
        Err(e) => {
            return t.fail(
                Cause::HostBeforeService,
                Failure::new(
                    format!("cannot check the staged release {}", pending.dir.display()),
                    e,
                    "check the permissions of the install root",
                ),
            )
        }
    }
    if let Err(e) = verify::check_upgrade(
        &installed.manifest,
        t.running.as_ref().map(|r| &r.manifest),
        t.journal.schema_from,
        false,
    ) {
        return clear_pending_and_fail(
            t,
            failure_model::of_verify_error(&e),
            Failure::new(
                "the pending update no longer applies",
                e,
                "run `slipway update` again",
            ),
        );
    }
    let opts = InstallOptions {
        op: Operation::Apply,
        ..InstallOptions::default()
    };
    if let Err(ineligible) = eligibility(host, &t, &state, &installed.manifest, &opts) {
        return skipped(t, ineligible);
    }
    let reinstall = t
        .running
        .as_ref()
        .is_some_and(|r| r.id == Some(pending.release_id) && r.dir != pending.dir);
    let target = Target {
        dir: pending.dir,
        manifest: installed.manifest,
        id: Some(pending.release_id),
        reinstall,
    };
    from_save(t, &target)
}

fn clear_pending_and_fail(t: Txn, cause: Cause, f: Failure) -> Result<Outcome, TxnError> {
    let mut state = HostState::load_at(&t.host.layout, t.host.clock.now())?;
    state.pending = None;
    state.save(&t.host.layout)?;
    t.fail(cause, f)
}

/// `slipway rollback`: back to `previous` with the same snapshot, quiesce,
/// restart and health gate as an update. The release rolled back from goes
/// on the bad list (so auto-update does not reinstall it); on failure the
/// links flip forward again and the command exits 1.
///
/// When `previous` cannot read the data (a rollback across a migration),
/// it is refused, unless `restore_data`: then the newest backup of data
/// `previous` wrote, at a schema it reads, is restored in step `Migrate`
/// (the data rolled back from stays in the transaction's own snapshot).
pub fn rollback(host: &Host, restore_data: bool) -> Result<Outcome, TxnError> {
    let links = switch::read_links(&host.layout)?;
    let Some(prev) = links.previous.clone() else {
        // Nothing was tried: not recorded, no cause.
        let mut o = Outcome::new(
            "rollback",
            AttemptResult::Failed,
            Exit::Failed,
            "there is no previous release to roll back to",
        );
        o.failure = Some(Failure::new(
            "cannot roll back",
            format!("{} does not exist", host.layout.previous_link().display()),
            "install the release you want with `slipway install --allow-downgrade SOURCE`",
        ));
        return Ok(o);
    };
    let mut t = match Txn::begin(host, Operation::Rollback, false, Step::Verify) {
        Ok(t) => t,
        Err(o) => return Ok(*o),
    };
    let dir = switch::resolve_target(&host.layout, &prev);
    let installed = match read_installed(&host.layout, &dir) {
        Ok(i) => i,
        Err(f) => return t.fail(Cause::HostBeforeService, f),
    };
    t.journal.release_id = installed.id;
    t.journal.version = Some(installed.manifest.version.clone());
    t.journal.release_dir = Some(dir.clone());
    t.journal.schema_to = Some(installed.manifest.schema_version);
    match verify_installed(&dir, &installed.manifest) {
        Ok(drift) if drift.is_empty() => {}
        Ok(drift) => {
            return t.fail(
                Cause::HostBeforeService,
                Failure::new(
                    format!(
                        "the previous release {} no longer matches its manifest",
                        dir.display()
                    ),
                    crate::diff::describe_drift(&drift),
                    "reinstall it with `slipway install --allow-downgrade --force SOURCE`",
                ),
            );
        }
        Err(e) => {
            return t.fail(
                Cause::HostBeforeService,
                Failure::new(
                    format!("cannot check the previous release {}", dir.display()),
                    e,
                    "check the permissions of the install root",
                ),
            )
        }
    }
    if let Err(e) = verify::check_upgrade(
        &installed.manifest,
        t.running.as_ref().map(|r| &r.manifest),
        t.journal.schema_from,
        true,
    ) {
        let across_migration = matches!(
            e,
            verify::VerifyError::DataTooNew { .. } | verify::VerifyError::DataTooOld { .. }
        );
        let backup = across_migration
            .then(|| backup_for_rollback(host, &dir, &installed.manifest.head()))
            .flatten();
        match backup {
            Some(backup) if restore_data => {
                t.host.log.info(format!(
                    "the data is at schema {}, which {} cannot read: its data from {} will be restored",
                    t.journal.schema_from.map_or_else(|| "?".to_string(), |s| s.to_string()),
                    installed.manifest.version,
                    backup.dir.display()
                ));
                t.journal.restore_from = Some(backup);
            }
            _ => {
                let what = format!("cannot roll back to {}", installed.manifest.version);
                let hint = match (&backup, restore_data, across_migration) {
                    (Some(b), _, _) => format!(
                        "nothing was changed; `slipway rollback --restore-data` rolls back with the data of {} from backup {} (what was written since is kept in a new backup)",
                        installed.manifest.version,
                        b.dir.display()
                    ),
                    (None, true, true) => format!(
                        "nothing was changed; --restore-data needs a backup of data {} wrote at a schema it reads ({} to {}), and backups/ holds none (`slipway backups` lists them): ship a fix forward instead",
                        installed.manifest.version,
                        installed.manifest.schema_min_compatible,
                        installed.manifest.schema_version
                    ),
                    (None, false, true) => format!(
                        "nothing was changed; no backup of data {} wrote is left for `slipway rollback --restore-data` (`slipway backups` lists them): ship a fix forward instead",
                        installed.manifest.version
                    ),
                    (None, _, false) => "nothing was changed".to_string(),
                };
                return t.fail(
                    failure_model::of_verify_error(&e),
                    Failure::new(what, e, hint),
                );
            }
        }
    } else if restore_data {
        t.host.log.info(format!(
            "{} reads the data as it is: no backup to restore (`slipway restore` puts one back by name)",
            installed.manifest.version
        ));
    }
    let target = Target {
        dir,
        manifest: installed.manifest,
        id: installed.id,
        reinstall: false,
    };
    from_save(t, &target)
}

/// Steps 7–15, shared by install, apply and rollback.
fn from_save(mut t: Txn, target: &Target) -> Result<Outcome, TxnError> {
    let host = t.host;
    let log = t.log();
    let cfg = host.config;
    let running_dir = t.running.as_ref().map(|r| r.dir.clone());
    let cwd = app_cwd(&host.layout, running_dir.as_deref());
    let name = format!("{} {}", target.manifest.app, target.manifest.version);

    // Step 7a: Save.
    t.enter(Step::Save)?;
    t.service_was_running = match host.service.status() {
        Ok(s) => s.is_running(),
        Err(e) => {
            log.warn(format!("cannot read the service state: {e}"));
            false
        }
    };
    if t.service_was_running {
        log.info("asking the app to save");
        let timeout = Duration::from_secs(cfg.service.save_timeout_seconds);
        if let Err(e) = snapshot::request_save(&cfg.service, &cwd, timeout) {
            return t.abort(Cause::HostBeforeService, Failure::new(
                "the app did not save before the update",
                e,
                "the service was not touched; check that it runs and that service.save / save_url work",
            ));
        }
    } else {
        log.debug(format!(
            "{} is not running: no save, no quiesce",
            host.service.describe()
        ));
    }

    // Step 7b: Snapshot.
    t.enter(Step::Snapshot)?;
    log.info(format!("snapshotting {}", host.persistence().display()));
    let snap = match snapshot::take_snapshot_about(
        host.persistence(),
        &host.layout.backups_dir(),
        &t.journal.txn,
        &running_data_about(&t.journal, snapshot_reason(t.journal.op)),
    ) {
        Ok(s) => s,
        Err(e) => {
            return t.abort(
                Cause::HostBeforeService,
                Failure::new(
                    "cannot snapshot the persistence",
                    e,
                    "the service was not touched; check free space in the install root",
                ),
            );
        }
    };
    log.debug(format!(
        "snapshot {}: {} files, {} bytes",
        snap.dir.display(),
        snap.files,
        snap.bytes
    ));
    t.journal.snapshot = Some(snap);

    // Step 8: Quiesce.
    t.enter(Step::Quiesce)?;
    let quiesce_method = match QuiesceMethod::from_config(&cfg.service) {
        Ok(m) => m,
        Err(e) => {
            return t.abort(
                Cause::HostBeforeService,
                Failure::new(
                    "the quiesce configuration is invalid",
                    e,
                    "fix [service] quiesce_* in the configuration",
                ),
            );
        }
    };
    if t.service_was_running && quiesce_method != QuiesceMethod::None {
        log.info(format!("quiescing the app ({})", quiesce_method.describe()));
        let timeout = Duration::from_secs(cfg.service.quiesce_timeout_seconds);
        match quiesce::quiesce_in(&quiesce_method, &host.service, timeout, &cwd) {
            Ok(ack) => {
                log.info(format!(
                    "quiesce acknowledged in {} ms ({} {})",
                    ack.duration_ms, ack.method, ack.target
                ));
                t.journal.quiesced = true;
                if let Some(failure) = refresh_snapshot(&mut t)? {
                    return t.abort(Cause::HostServicePaused, failure);
                }
            }
            Err(e) => {
                // It may have half-paused: the undo resumes it either way.
                return t.abort(Cause::HostServicePaused, Failure::new(
                    "the app did not acknowledge the quiesce",
                    e,
                    "the service was not restarted and was asked to resume; check the app and service.quiesce_*",
                ));
            }
        }
    }

    // Step 9: Migrate, or restore the backup the journal names instead
    // (`restore`, `rollback --restore-data`).
    let schema_from = t.journal.schema_from;
    let schema_to = target.manifest.schema_version;
    let restore_from = t.journal.restore_from.clone();
    let migrate = match (schema_from, &target.manifest.hooks.migrate) {
        _ if restore_from.is_some() => None,
        (Some(from), Some(argv)) if schema_to > from => Some((from, argv.clone())),
        (Some(from), None) if schema_to > from => {
            log.warn(format!(
                "{name} raises the data schema from {from} to {schema_to} but has no migrate hook; the app must migrate on start"
            ));
            None
        }
        _ => None,
    };
    t.journal.data_changed = migrate.is_some() || restore_from.is_some();
    t.enter(Step::Migrate)?;
    // The host's, not the release's: the app is paused by now.
    if let Err(failure) = ensure_app_dirs(host) {
        return t.abort(Cause::HostServicePaused, failure);
    }
    if let Some(backup) = &restore_from {
        if let Err(failure) = restore_backup(host, backup) {
            return t.abort(Cause::HostServicePaused, failure);
        }
    } else if let Some((from, argv)) = migrate {
        let user = match host.app_user() {
            Ok(user) => user,
            Err(failure) => return t.abort(Cause::HostServicePaused, failure),
        };
        log.info(format!(
            "migrating the data from schema {from} to {schema_to} as {}",
            user.name
        ));
        let pycache = hooks::hook_scratch_dir(user);
        let env = hook_env(
            &target.dir,
            &target.manifest,
            host.persistence(),
            Some((from, schema_to)),
            pycache
                .as_ref()
                .map_or(Path::new("/nonexistent"), |d| d.path()),
        );
        let timeout = Duration::from_secs(cfg.hooks.timeout_seconds);
        let log = hook_log_dir(host, &t.journal.txn).join("migrate.log");
        if let Err(e) = hooks::run_hook(&argv, &target.dir, &env, timeout, user, Some(&log)) {
            let cause =
                failure_model::of_hook_error(&e, Cause::MigrateFailed, Cause::HostServicePaused);
            // Bad-listed before the undo: if the restore fails, the journal
            // stays and recovery records the run, but this release must
            // not be retried whatever happens.
            if let (Some(id), true) = (
                target.id,
                cause.bad_lists() && t.journal.op.installs_new_release(),
            ) {
                let mut state = HostState::load_at(&host.layout, host.clock.now())?;
                state.mark_bad(
                    id,
                    target.manifest.version.clone(),
                    format!("{}: {e}", cause.label()),
                    host.clock.now(),
                );
                state.save(&host.layout)?;
            }
            let hint = if cause.bad_lists() {
                "the data was restored from the snapshot and the app resumed; fix the migration (the release is on the bad list)"
            } else {
                "the data was restored from the snapshot and the app resumed; the release is not blamed: fix the host"
            };
            return t.abort(
                cause,
                Failure::new(format!("the migrate hook of {name} failed"), e, hint),
            );
        }
    }

    // Step 10: Switch (a restore keeps the release it runs). The data as
    // the new release finds it: what a flip back may replace without
    // keeping it aside.
    t.journal.found_digest = if t.journal.data_changed {
        snapshot::tree_digest(host.persistence()).ok()
    } else {
        t.journal.snapshot.as_ref().map(|s| s.digest.clone())
    };
    if t.journal.op != Operation::Restore {
        t.enter(Step::Switch)?;
        let switched = if target.reinstall {
            switch::replace_current(&host.layout, &target.dir)
        } else {
            switch::switch_to(&host.layout, &target.dir)
        };
        match switched {
            Ok(timing) => {
                t.switch_latency = Some(timing.current_swap);
                log.info(format!(
                    "switched current to {} in {} µs (rename; the directory fsync took {} µs more)",
                    target.dir.display(),
                    us(timing.current_swap),
                    us(timing.fsync)
                ));
            }
            Err(e) => {
                // The undo of Switch is the flip back: links back, data back if
                // it changed, the old release restarted (unpaused) and gated.
                return t.abort(Cause::HostServicePaused, Failure::new(
                    "cannot switch to the new release",
                    e,
                    "the old release is still current; check the install root's permissions and free space",
                ));
            }
        }
    }

    // Step 11: Restart, under probation when the release asks for it and
    // the host can resume it: told by meta/probation.json to start paused.
    t.enter(Step::Restart)?;
    let on_probation = match probation::applies(cfg, &target.manifest) {
        Ok(on) => on,
        Err(why) => {
            log.warn(why);
            false
        }
    };
    if on_probation {
        let file = probation::ProbationFile {
            version: target.manifest.version.to_string(),
            release: target
                .dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            since: host.clock.now(),
        };
        if let Err(e) = probation::begin(cfg, host.app_user().ok(), &file) {
            return flip_back(
                t,
                target,
                Cause::HostAfterSwitch,
                format!(
                    "cannot write {} to start the release under probation: {e}",
                    probation::path(cfg).display()
                ),
            );
        }
        log.info(format!(
            "starting {} under probation: paused until the health gate passes",
            target.manifest.version
        ));
    }
    log.info(format!("restarting {}", host.service.describe()));
    if let Err(e) = host.service.restart() {
        // The restart command (or systemctl) is the host's: a release that
        // does not start shows up in the health gate instead.
        return flip_back(
            t,
            target,
            Cause::HostAfterSwitch,
            format!("restart failed: {e}"),
        );
    }
    t.journal.quiesced = false;
    if on_probation {
        // The old release has stopped (its way out may tidy the data: a
        // pause marker); the new one starts paused and may write nothing.
        t.journal.found_digest = snapshot::tree_digest(host.persistence()).ok();
    }
    let baseline = host.service.status().ok().map(|s| s.restarts);

    // Step 12: Health gate.
    t.enter(Step::HealthGate)?;
    let mut policy = HealthPolicy::for_host(cfg, Some(target.manifest.version.to_string()));
    if on_probation {
        policy = policy.on_probation(Duration::from_secs(cfg.health.probation_min_seconds));
    }
    log.info("waiting for the health gate");
    match health_gate(&host.service, baseline, &policy) {
        Ok(report) => log.debug(format!(
            "healthy after {} polls in {} ms",
            report.polls,
            ms(report.elapsed)
        )),
        Err(e) => return flip_back(t, target, failure_model::of_health_error(&e), e.to_string()),
    }
    if on_probation {
        // Passed while paused: only now may it trade. A release that cannot
        // be resumed never trades: it is flipped back like an unhealthy one.
        if let Err(e) = end_probation(host) {
            return flip_back(t, target, Cause::Unhealthy, e);
        }
        log.info("probation passed: the release was resumed and trades");
    }

    // Step 13: Commit.
    commit(t, target)
}

/// Ends a passed probation: removes `meta/probation.json` (so that a later
/// restart starts the release live), then resumes the app through the
/// quiesce contract.
fn end_probation(host: &Host) -> Result<(), String> {
    let cfg = host.config;
    probation::end(cfg).map_err(|e| {
        format!(
            "cannot remove {} after probation: {e}",
            probation::path(cfg).display()
        )
    })?;
    let method = ResumeMethod::from_config(&cfg.service)
        .map_err(|e| format!("cannot resume the app after probation: {e}"))?;
    let cwd = app_cwd(
        &host.layout,
        switch::current_dir(&host.layout).ok().flatten().as_deref(),
    );
    let timeout = Duration::from_secs(cfg.service.quiesce_timeout_seconds);
    quiesce::resume_in(&method, &host.service, timeout, &cwd)
        .map_err(|e| format!("it passed the gate paused but did not resume: {e}"))
}

/// After the quiesce acknowledged: if the app wrote since the snapshot (it
/// saves when it pauses), snapshot again, so that a flip back restores the
/// data exactly as the app left it when it paused and loses nothing.
///
/// `Some(failure)` when that cannot be done (the disk is full, the data
/// cannot be read): the caller aborts, which resumes the app. Going on would
/// leave a flip back only the earlier snapshot, without what the app saved
/// when it paused. The failed copy has already removed its `.partial`.
fn refresh_snapshot(t: &mut Txn) -> Result<Option<Failure>, TxnError> {
    let host = t.host;
    let Some(old) = t.journal.snapshot.clone() else {
        return Ok(None);
    };
    let hint = "the app was resumed and nothing was changed; free space in the install root \
                (`slipway gc` removes old releases and snapshots) or fix the cause above, \
                then run the update again";
    let digest = match snapshot::tree_digest(host.persistence()) {
        Ok(d) => d,
        Err(e) => {
            return Ok(Some(Failure::new(
                "cannot read the paused data to snapshot it again",
                e,
                hint,
            )))
        }
    };
    if digest == old.digest {
        return Ok(None);
    }
    let stamp = format!("{}-paused", t.journal.txn);
    let fresh = match snapshot::take_snapshot_about(
        host.persistence(),
        &host.layout.backups_dir(),
        &stamp,
        &running_data_about(&t.journal, snapshot_reason(t.journal.op)),
    ) {
        Ok(fresh) => fresh,
        Err(e) => {
            return Ok(Some(Failure::new(
                "cannot snapshot the paused data",
                e,
                hint,
            )))
        }
    };
    t.journal.snapshot = Some(fresh);
    // The journal must name the new snapshot before the old one goes.
    let step = t.journal.step;
    t.enter(step)?;
    if let Err(e) = durable::remove_tree(&old.dir) {
        host.log
            .warn(format!("cannot remove {}: {e}", old.dir.display()));
    }
    host.log
        .debug("data changed while quiescing: snapshot taken again");
    Ok(None)
}

/// What a snapshot of the data before this transaction's migration is of:
/// the release running when it began, at the data's schema then.
fn running_data_about(j: &Journal, reason: &str) -> snapshot::SnapshotAbout {
    snapshot::SnapshotAbout {
        reason: reason.to_string(),
        version: j.from_version.as_ref().map(|v| v.to_string()),
        release: j
            .old_release
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned()),
        schema: j.schema_from,
    }
}

/// Step 13, success: the new release is healthy.
fn commit(mut t: Txn, target: &Target) -> Result<Outcome, TxnError> {
    let host = t.host;
    let now = host.clock.now();
    let message = if let Some(m) = restored_message(&t.journal, target, ms(t.started.elapsed())) {
        m
    } else if target.reinstall {
        format!(
            "reinstalled {} {} from its archive into {} ({} ms; switch {} µs)",
            target.manifest.app,
            target.manifest.version,
            target.dir.display(),
            ms(t.started.elapsed()),
            t.switch_latency.map_or(0, us)
        )
    } else {
        format!(
            "updated {} {} → {} ({} ms; switch {} µs)",
            target.manifest.app,
            t.journal
                .from_version
                .as_ref()
                .map_or_else(|| "(none)".to_string(), |v| v.to_string()),
            target.manifest.version,
            ms(t.started.elapsed()),
            t.switch_latency.map_or(0, us)
        )
    };
    t.journal.decision = Some(Decision {
        result: AttemptResult::Updated,
        message: message.clone(),
        at: now,
        cause: Some(Cause::Updated),
    });
    t.enter(Step::Commit)?;
    finish_commit(host, &t.journal)?;
    t.enter(Step::Report)?;
    report_decision(host, &t.journal, ms(t.started.elapsed()))?;
    t.enter(Step::Collect)?;
    collect(host);
    journal::finish(&host.layout)?;
    // The result line is the caller's to print (once).
    Ok(t.outcome(Cause::Updated, message))
}

/// The idempotent part of a commit: clear the pending update, take the
/// release off the bad list (`--force`), stamp its install time. For a
/// rollback, the release rolled back from goes on the bad list.
fn finish_commit(host: &Host, j: &Journal) -> Result<(), TxnError> {
    if j.op == Operation::Restore {
        // The release it ran stays as it was: nothing to record.
        return Ok(());
    }
    let now = j.decision.as_ref().map_or(host.clock.now(), |d| d.at);
    let mut state = HostState::load_at(&host.layout, now)?;
    if let Some(id) = j.release_id {
        if state.pending.as_ref().is_some_and(|p| p.release_id == id) {
            state.pending = None;
        }
        // Installing with --force, or rolling back to it, says the
        // operator trusts this release again.
        state.clear_bad(&id);
    }
    if j.op == Operation::Rollback {
        if let Some(old) = &j.old_release {
            let old_dir = switch::resolve_target(&host.layout, old);
            if let Ok(inst) = read_installed_head(&host.layout, &old_dir) {
                if let Some(id) = inst.id {
                    state.mark_bad(
                        id,
                        inst.head.version,
                        "rolled back by the operator (`slipway rollback`)",
                        now,
                    );
                }
            }
        }
    }
    state.save(&host.layout)?;
    if let Some(dir) = &j.release_dir {
        ReleaseRecords::update(&host.layout, dir, |old| {
            old.map(|mut r| {
                r.installed_at = Some(now);
                r
            })
        })?;
    }
    enable_after_first_install(host, j);
    Ok(())
}

/// The first install (no release before it) enables the unit, so that the
/// service comes back after a reboot, unless `[service] enable_on_install`
/// is false. Enabling is not part of the release: a failure (a polkit rule
/// that allows only restarts) is a warning with the command that fixes it.
fn enable_after_first_install(host: &Host, j: &Journal) {
    if j.old_release.is_some() || !host.config.service.enable_on_install {
        return;
    }
    match host.service.enable() {
        Ok(true) => host.log.info(format!(
            "enabled {}: it starts at boot ([service] enable_on_install)",
            host.service.describe()
        )),
        Ok(false) => {}
        Err(e) => host.log.warn(format!(
            "{e}; the service will not start at boot until `systemctl enable {}` is run",
            host.config.service.unit
        )),
    }
}

/// Step 14 for a decided transaction: record the attempt (once) and report.
fn report_decision(host: &Host, j: &Journal, duration_ms: u64) -> Result<(), TxnError> {
    let Some(decision) = &j.decision else {
        return Ok(());
    };
    let attempt = Attempt {
        op: j.op.name().to_string(),
        at: decision.at,
        result: decision.result,
        from_version: j.from_version.clone(),
        version: j.version.clone(),
        release_id: j.release_id,
        message: decision.message.clone(),
        duration_ms,
        cause: Some(
            decision
                .cause
                .unwrap_or_else(|| Cause::of_legacy_result(decision.result)),
        ),
        auto: j.auto,
    };
    record_and_report(host, attempt, j.failure.clone())
}

/// Step 15: keep the newest releases and snapshots.
fn collect(host: &Host) {
    let protected = gc_protected(host);
    let cfg = &host.config.update;
    match gc::collect(
        &host.layout,
        cfg.keep_releases as usize,
        cfg.keep_snapshots as usize,
        &protected,
    ) {
        Ok(r) => host.log.debug(format!(
            "collected {} releases, {} snapshots",
            r.removed_releases.len(),
            r.removed_snapshots.len()
        )),
        Err(e) => host.log.warn(format!("collecting old releases: {e}")),
    }
}

/// Step 13, failure: put the old release back. `cause` says whose fault
/// the failure was; when the old release is not healthy either, the host
/// is blamed instead of the release ([`Cause::HostAfterSwitch`]), since two
/// releases failing the same gate say more about the host than about the
/// new one.
fn flip_back(
    mut t: Txn,
    target: &Target,
    cause: Cause,
    reason: String,
) -> Result<Outcome, TxnError> {
    let host = t.host;
    let rolled_back_op = t.journal.op.installs_new_release();
    let cause = if rolled_back_op {
        cause
    } else {
        Cause::RollbackUnhealthy
    };
    host.log.warn(format!(
        "{} {} is unhealthy: {reason}; flipping back",
        target.manifest.app, target.manifest.version
    ));
    t.journal.failure = Some(reason.clone());
    t.journal.failure_cause = Some(cause);
    t.enter(Step::FlipBack)?;
    let result = flip_back_actions(host, &t.journal)?;
    t.flip_back_latency = result.latency;
    let cause = blame_after_flip_back(cause, result.old_unhealthy.is_some());
    let (message, failure) = flip_back_message(&t.journal, cause, &reason, &result);
    t.journal.decision = Some(Decision {
        result: cause.result(),
        message: message.clone(),
        at: host.clock.now(),
        cause: Some(cause),
    });
    t.enter(Step::Report)?;
    report_decision(host, &t.journal, ms(t.started.elapsed()))?;
    t.enter(Step::Collect)?;
    collect(host);
    journal::finish(&host.layout)?;
    let mut o = t.outcome(cause, message);
    o.critical = result.old_unhealthy.is_some();
    o.failure = Some(failure);
    Ok(o)
}

/// A failure after the switch was the release's only if the old release
/// came back healthy.
fn blame_after_flip_back(cause: Cause, old_unhealthy: bool) -> Cause {
    if old_unhealthy && cause.bad_lists() {
        Cause::HostAfterSwitch
    } else {
        cause
    }
}

/// The result line and the error of a flip back (also for `recover`).
fn flip_back_message(
    j: &Journal,
    cause: Cause,
    reason: &str,
    result: &FlippedBack,
) -> (String, Failure) {
    if j.op == Operation::Restore {
        return restore_flip_back_message(j, reason, result);
    }
    let version = j
        .version
        .as_ref()
        .map_or_else(|| "the release".to_string(), |v| v.to_string());
    let old = j
        .from_version
        .as_ref()
        .map_or_else(|| "nothing (first install)".to_string(), |v| v.to_string());
    let mut message = if cause == Cause::RollbackUnhealthy {
        format!("rollback to {version} failed ({reason}); flipped forward to {old} again")
    } else {
        format!("{version} failed after the switch ({reason}); flipped back to {old}")
    };
    if cause.bad_lists() {
        let id = j.release_id.map_or_else(|| "it".to_string(), |i| i.short());
        message.push_str(&format!(" and put {id} on the bad list"));
    } else if cause == Cause::HostAfterSwitch {
        message.push_str("; a host fault, so the release is not bad-listed");
    }
    if let Some(kept) = &result.data.kept_aside {
        message.push_str(&format!(
            "; the data restored from the snapshot; what {version} wrote is kept in {}",
            kept.display()
        ));
    } else if result.data.left {
        message.push_str(&format!("; the data {version} wrote was kept in place"));
    }
    if let Some(problem) = &result.old_unhealthy {
        message.push_str(&format!(
            "; CRITICAL: the old release is not healthy either: {problem}"
        ));
    }
    let what = if cause == Cause::RollbackUnhealthy {
        "the rollback failed".to_string()
    } else {
        format!("{version} failed after the switch and was rolled back")
    };
    let hint = if result.old_unhealthy.is_some() {
        "the service needs attention now: see `slipway status` and the service's log"
    } else if cause == Cause::RollbackUnhealthy {
        "the release you rolled back from runs again; see `slipway status`"
    } else if cause.bad_lists() {
        "the old release runs again; fix the release and publish a new version (`slipway install --force` retries this one)"
    } else {
        "the old release runs again; fix the host (the restart command or the service), then run the update again"
    };
    (message.clone(), Failure::new(what, message, hint))
}

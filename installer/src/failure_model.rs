//! The failure model: every way a run can end, as a [`Cause`], and what each
//! one does to the host's budgets and its bad list.
//!
//! One table decides it all (`docs/transaction.md`, *How a run ends*, is the
//! same table, checked against this code by a test):
//!
//! - **The bad list is for faults of a release only**: a failed check or
//!   migrate hook, unhealthy after the switch, a crash loop
//!   ([`Cause::bad_lists`]). A release on the bad list is never retried
//!   automatically, so nothing the host did wrong may put one there.
//! - **The failure budget** (`max_failures_per_day`, which disables
//!   auto-update when it is used up) counts the faults of a release and the
//!   faults that disturbed the service: a host fault after the app was
//!   paused or restarted ([`Cause::counts_as_failure`]). Refusals of what a
//!   source offers (an expired or replayed index, a corrupt copy, a
//!   downgrade), the network, eligibility rules, host faults before the app
//!   was touched, the operator's own refusals and recovery never count:
//!   they cannot be fixed by not trying, and an expiry must never switch a
//!   fleet off.
//! - **The attempt budget** (`max_attempts_per_day`) counts runs that tried
//!   to change the host ([`Cause::counts_as_attempt`]), and only automatic
//!   ones (`update --auto`): an operator at the keyboard never uses up the
//!   timer's attempts.
//! - Each cause has one exit code ([`Cause::exit`]) and one journald
//!   priority ([`Cause::priority`]).
//!
//! The `of_*` functions classify the errors of each step, so that the code
//! that records an attempt never decides this for itself.

use std::fmt;

use serde::{Deserialize, Serialize};
use slipway_formats::state::AttemptResult;

use crate::fetch::FetchError;
use crate::health::HealthError;
use crate::hooks::HookError;
use crate::source::SourceError;
use crate::stage::StageError;
use crate::verify::VerifyError;
use crate::Exit;

/// Why a run ended the way it did: one row of the failure table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    // ---- done, or nothing to do --------------------------------------
    /// The new release is running and healthy (also a successful `apply`
    /// and `rollback`).
    Updated,
    /// Nothing newer to install.
    UpToDate,
    /// The only newer releases offered are on this host's bad list.
    NewerOnBadList,
    /// Staged and checked, waiting for `slipway apply` (`auto_restart = false`).
    Ready,

    // ---- refusals of what a source offers ----------------------------
    /// The channel index has expired (a freeze attack, or a publisher who
    /// did not refresh it).
    IndexExpired,
    /// The channel index is older than one this host already accepted.
    IndexReplayed,
    /// The channel index is not signed by a trusted key (a foreign key, a
    /// bad signature, a wrong signed comment), or is malformed or for
    /// another app or channel.
    IndexUntrusted,
    /// The source cannot be used: the index or the archive is missing
    /// (404), the path is not a repository, access is denied.
    SourceUnusable,
    /// An offline bundle's files do not match its signed checksums.
    BundleCorrupt,
    /// The archive was refused: its hash, signature, size, manifest or an
    /// entry does not check (a corrupt copy or a hostile archive).
    ArchiveRefused,
    /// An older release (or the running one) without `--allow-downgrade`.
    Downgrade,
    /// The data's schema is newer than the release reads: a rollback past
    /// a migration.
    DataTooNew,
    /// The release is on this host's bad list (`install` without `--force`).
    BadListed,

    // ---- the network ---------------------------------------------------
    /// DNS, a refused connection, a timeout, HTTP 5xx/429: try again later.
    Network,

    // ---- policy ----------------------------------------------------------
    /// Auto-update is off: configuration, `slipway disable`, or the failure
    /// budget.
    Disabled,
    /// Another eligibility rule said no (attempts, dirty release, stale
    /// save, disk space).
    Ineligible,

    // ---- faults of a release ------------------------------------------
    /// The release's check hook (or a host check run on it) failed.
    CheckFailed,
    /// The release's migrate hook failed; the data was restored.
    MigrateFailed,
    /// Switched, and the release did not pass the health gate.
    Unhealthy,
    /// Switched, and the release crash-loops.
    CrashLoop,

    // ---- faults of the host ---------------------------------------------
    /// The host failed before the app was touched: a read-only or full
    /// persistence, the app did not save, a hook command that cannot start.
    HostBeforeService,
    /// The host failed after the app was paused, before the switch: the
    /// app did not acknowledge the quiesce, the paused snapshot could not
    /// be written, the switch failed. The app was resumed.
    HostServicePaused,
    /// The host failed after the switch: the restart command failed or
    /// hung, or the old release is not healthy either. Flipped back.
    HostAfterSwitch,
    /// `slipway rollback`: the previous release did not come up; flipped
    /// forward again.
    RollbackUnhealthy,

    // ---- the operator and recovery --------------------------------------
    /// `--interactive`: the operator answered no.
    Declined,
    /// `slipway recover` finished or undid a run that was killed.
    Recovered,
}

impl Cause {
    /// Every cause, in the order of the table.
    pub const ALL: [Cause; 26] = [
        Cause::Updated,
        Cause::UpToDate,
        Cause::NewerOnBadList,
        Cause::Ready,
        Cause::IndexExpired,
        Cause::IndexReplayed,
        Cause::IndexUntrusted,
        Cause::SourceUnusable,
        Cause::BundleCorrupt,
        Cause::ArchiveRefused,
        Cause::Downgrade,
        Cause::DataTooNew,
        Cause::BadListed,
        Cause::Network,
        Cause::Disabled,
        Cause::Ineligible,
        Cause::CheckFailed,
        Cause::MigrateFailed,
        Cause::Unhealthy,
        Cause::CrashLoop,
        Cause::HostBeforeService,
        Cause::HostServicePaused,
        Cause::HostAfterSwitch,
        Cause::RollbackUnhealthy,
        Cause::Declined,
        Cause::Recovered,
    ];

    /// The name in `history.jsonl`, `--json` and journald's `SLIPWAY_CAUSE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Updated => "updated",
            Cause::UpToDate => "up_to_date",
            Cause::NewerOnBadList => "newer_on_bad_list",
            Cause::Ready => "ready",
            Cause::IndexExpired => "index_expired",
            Cause::IndexReplayed => "index_replayed",
            Cause::IndexUntrusted => "index_untrusted",
            Cause::SourceUnusable => "source_unusable",
            Cause::BundleCorrupt => "bundle_corrupt",
            Cause::ArchiveRefused => "archive_refused",
            Cause::Downgrade => "downgrade",
            Cause::DataTooNew => "data_too_new",
            Cause::BadListed => "bad_listed",
            Cause::Network => "network",
            Cause::Disabled => "disabled",
            Cause::Ineligible => "ineligible",
            Cause::CheckFailed => "check_failed",
            Cause::MigrateFailed => "migrate_failed",
            Cause::Unhealthy => "unhealthy",
            Cause::CrashLoop => "crash_loop",
            Cause::HostBeforeService => "host_before_service",
            Cause::HostServicePaused => "host_service_paused",
            Cause::HostAfterSwitch => "host_after_switch",
            Cause::RollbackUnhealthy => "rollback_unhealthy",
            Cause::Declined => "declined",
            Cause::Recovered => "recovered",
        }
    }

    /// A few words for the banner: what happened, not the whole story.
    pub fn label(self) -> &'static str {
        match self {
            Cause::Updated => "updated",
            Cause::UpToDate => "up to date",
            Cause::NewerOnBadList => "newer release on the bad list",
            Cause::Ready => "staged, waiting for `slipway apply`",
            Cause::IndexExpired => "channel index expired",
            Cause::IndexReplayed => "old channel index replayed",
            Cause::IndexUntrusted => "channel index not trusted",
            Cause::SourceUnusable => "source unusable",
            Cause::BundleCorrupt => "offline bundle corrupt",
            Cause::ArchiveRefused => "archive refused",
            Cause::Downgrade => "downgrade refused",
            Cause::DataTooNew => "data schema too new",
            Cause::BadListed => "on the bad list",
            Cause::Network => "network error",
            Cause::Disabled => "auto-update off",
            Cause::Ineligible => "not eligible",
            Cause::CheckFailed => "check failed",
            Cause::MigrateFailed => "migration failed",
            Cause::Unhealthy => "unhealthy",
            Cause::CrashLoop => "crash loop",
            Cause::HostBeforeService => "host fault, app untouched",
            Cause::HostServicePaused => "host fault, app resumed",
            Cause::HostAfterSwitch => "host fault after the switch",
            Cause::RollbackUnhealthy => "previous release unhealthy",
            Cause::Declined => "declined",
            Cause::Recovered => "interrupted run recovered",
        }
    }

    /// The result every report shows for this cause.
    pub fn result(self) -> AttemptResult {
        match self {
            Cause::Updated => AttemptResult::Updated,
            Cause::UpToDate | Cause::NewerOnBadList => AttemptResult::UpToDate,
            Cause::Ready => AttemptResult::Ready,
            Cause::IndexExpired
            | Cause::IndexReplayed
            | Cause::IndexUntrusted
            | Cause::SourceUnusable
            | Cause::BundleCorrupt
            | Cause::ArchiveRefused
            | Cause::Downgrade
            | Cause::DataTooNew => AttemptResult::Refused,
            Cause::BadListed | Cause::Disabled | Cause::Ineligible | Cause::Declined => {
                AttemptResult::Skipped
            }
            Cause::Network
            | Cause::CheckFailed
            | Cause::MigrateFailed
            | Cause::HostBeforeService
            | Cause::HostServicePaused
            | Cause::RollbackUnhealthy => AttemptResult::Failed,
            Cause::Unhealthy | Cause::CrashLoop | Cause::HostAfterSwitch => {
                AttemptResult::RolledBack
            }
            Cause::Recovered => AttemptResult::Recovered,
        }
    }

    /// Whether the release this run tried goes on the host's bad list: only
    /// for a fault of the release itself, and only when the run installs a
    /// new release (a `rollback`'s target is the operator's choice).
    pub fn bad_lists(self) -> bool {
        matches!(
            self,
            Cause::CheckFailed | Cause::MigrateFailed | Cause::Unhealthy | Cause::CrashLoop
        )
    }

    /// Whether the run counts toward `max_failures_per_day` (whichever way
    /// it was started): a fault of a release, or a host fault that disturbed
    /// the service.
    pub fn counts_as_failure(self) -> bool {
        self.bad_lists()
            || matches!(
                self,
                Cause::HostServicePaused | Cause::HostAfterSwitch | Cause::RollbackUnhealthy
            )
    }

    /// Whether the run tried to change the host, and so counts toward
    /// `max_attempts_per_day` when it was automatic (`update --auto`;
    /// [`HostState::record`](crate::state::HostState::record) checks that).
    /// A recovery counts when the run it finished or undid was automatic.
    pub fn counts_as_attempt(self) -> bool {
        matches!(
            self,
            Cause::Updated
                | Cause::Ready
                | Cause::CheckFailed
                | Cause::MigrateFailed
                | Cause::Unhealthy
                | Cause::CrashLoop
                | Cause::HostBeforeService
                | Cause::HostServicePaused
                | Cause::HostAfterSwitch
                | Cause::RollbackUnhealthy
                | Cause::Recovered
        )
    }

    /// Whether the service was switched and flipped back (the seed's
    /// critical alert).
    pub fn flipped_back(self) -> bool {
        matches!(
            self,
            Cause::Unhealthy | Cause::CrashLoop | Cause::HostAfterSwitch | Cause::RollbackUnhealthy
        )
    }

    /// The process's exit code (`Recovered` exits 1 instead when the old
    /// release is not healthy afterwards: see `docs/transaction.md`).
    pub fn exit(self) -> Exit {
        match self {
            Cause::Updated
            | Cause::UpToDate
            | Cause::NewerOnBadList
            | Cause::Ready
            | Cause::Recovered => Exit::Done,
            Cause::IndexExpired
            | Cause::IndexReplayed
            | Cause::IndexUntrusted
            | Cause::SourceUnusable
            | Cause::BundleCorrupt
            | Cause::ArchiveRefused
            | Cause::Downgrade
            | Cause::DataTooNew
            | Cause::Network
            | Cause::CheckFailed
            | Cause::MigrateFailed
            | Cause::HostBeforeService
            | Cause::HostServicePaused
            | Cause::RollbackUnhealthy => Exit::Failed,
            Cause::Unhealthy | Cause::CrashLoop | Cause::HostAfterSwitch => Exit::RolledBack,
            Cause::BadListed | Cause::Disabled | Cause::Ineligible | Cause::Declined => {
                Exit::Skipped
            }
        }
    }

    /// The journald `PRIORITY` (syslog levels: 2 critical, 3 error, 4
    /// warning, 5 notice, 6 info). A flip back is critical (the seed's
    /// "emit critical alert"); what may be an attack or needs a human soon
    /// is an error; what fixes itself or waits for the publisher is a
    /// warning. The report raises it to a warning when updates have stalled
    /// or the index expires soon.
    pub fn priority(self) -> u8 {
        match self {
            Cause::Unhealthy
            | Cause::CrashLoop
            | Cause::HostAfterSwitch
            | Cause::RollbackUnhealthy => 2,
            Cause::IndexReplayed
            | Cause::IndexUntrusted
            | Cause::BundleCorrupt
            | Cause::ArchiveRefused
            | Cause::CheckFailed
            | Cause::MigrateFailed
            | Cause::HostBeforeService
            | Cause::HostServicePaused => 3,
            Cause::IndexExpired
            | Cause::SourceUnusable
            | Cause::Downgrade
            | Cause::DataTooNew
            | Cause::Network
            | Cause::Recovered => 4,
            Cause::Updated
            | Cause::NewerOnBadList
            | Cause::Ready
            | Cause::BadListed
            | Cause::Disabled
            | Cause::Ineligible => 5,
            Cause::UpToDate | Cause::Declined => 6,
        }
    }

    /// Whether this ending shows that automatic updates are where they
    /// should be (nothing newer, or the newest installed): it ends a stall.
    pub fn ends_stall(self) -> bool {
        matches!(self, Cause::Updated | Cause::UpToDate)
    }

    /// Whether this ending leaves an offered release uninstalled: the stall
    /// clock starts (if it is not running already). A declined run and a
    /// recovery say nothing either way.
    pub fn stalls(self) -> bool {
        !self.ends_stall() && !matches!(self, Cause::Declined | Cause::Recovered)
    }

    /// The cause of a result recorded before causes existed (an old
    /// `history.jsonl` line): the closest row, counted as it was then.
    pub fn of_legacy_result(result: AttemptResult) -> Cause {
        match result {
            AttemptResult::Updated => Cause::Updated,
            AttemptResult::UpToDate => Cause::UpToDate,
            AttemptResult::Skipped => Cause::Ineligible,
            AttemptResult::Failed => Cause::CheckFailed,
            AttemptResult::RolledBack => Cause::Unhealthy,
            AttemptResult::Ready => Cause::Ready,
            AttemptResult::Refused => Cause::ArchiveRefused,
            AttemptResult::Recovered => Cause::Recovered,
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------
// Classifying the errors of each step
// ---------------------------------------------------------------------------

/// A channel index or repository that could not be used (discovery).
pub fn of_source_error(e: &SourceError) -> Cause {
    match e {
        SourceError::Expired { .. } => Cause::IndexExpired,
        SourceError::Rollback { .. } => Cause::IndexReplayed,
        SourceError::Signature { .. }
        | SourceError::UntrustedKey { .. }
        | SourceError::Comment { .. }
        | SourceError::Index { .. }
        | SourceError::TooLarge { .. }
        | SourceError::NotRegular { .. } => Cause::IndexUntrusted,
        SourceError::BadUrl { .. }
        | SourceError::NotFound { .. }
        | SourceError::Unrecognized { .. }
        | SourceError::Read { .. }
        | SourceError::Missing { .. } => Cause::SourceUnusable,
        SourceError::Fetch { source, .. } => of_fetch_error(source),
        // The clock and slipway's own trust state are the host's.
        SourceError::ClockWentBack { .. }
        | SourceError::TrustCorrupt { .. }
        | SourceError::TrustWrite { .. } => Cause::HostBeforeService,
    }
}

/// A download (of an index or an archive) that failed.
pub fn of_fetch_error(e: &FetchError) -> Cause {
    if e.is_transient() {
        return Cause::Network;
    }
    match e {
        FetchError::TooLarge { .. } | FetchError::SizeMismatch { .. } => Cause::ArchiveRefused,
        // Writing into downloads/, or reading the token file.
        FetchError::Local { .. } | FetchError::Token { .. } => Cause::HostBeforeService,
        _ => Cause::SourceUnusable,
    }
}

/// An archive that did not verify, or a release refused against what runs.
pub fn of_verify_error(e: &VerifyError) -> Cause {
    match e {
        VerifyError::Downgrade { .. } | VerifyError::AlreadyInstalled { .. } => Cause::Downgrade,
        VerifyError::DataTooNew { .. } => Cause::DataTooNew,
        _ => Cause::ArchiveRefused,
    }
}

/// Unpacking a verified archive failed: a hostile or damaged archive, or
/// the host's disk.
pub fn of_stage_error(e: &StageError) -> Cause {
    match e {
        StageError::Io { .. } | StageError::Cleanup { .. } => Cause::HostBeforeService,
        _ => Cause::ArchiveRefused,
    }
}

/// A hook (check or migrate) failed: `release_fault` when the command ran
/// and failed or hung (the release's fault), `host_fault` when it could not
/// be run at all (a program missing from the host, an I/O error).
pub fn of_hook_error(e: &HookError, release_fault: Cause, host_fault: Cause) -> Cause {
    match e {
        HookError::Failed { .. } | HookError::Timeout { .. } => release_fault,
        HookError::EmptyArgv | HookError::Spawn { .. } | HookError::Io { .. } => host_fault,
    }
}

/// The health gate failed after the switch.
pub fn of_health_error(e: &HealthError) -> Cause {
    match e {
        HealthError::Unhealthy { .. } => Cause::Unhealthy,
        HealthError::CrashLooping { .. } => Cause::CrashLoop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row of the table: bad-lists, counts as failure, counts as an
    /// attempt (of an automatic run), exit code, journald priority.
    fn row(c: Cause) -> (bool, bool, bool, i32, u8) {
        (
            c.bad_lists(),
            c.counts_as_failure(),
            c.counts_as_attempt(),
            c.exit() as i32,
            c.priority(),
        )
    }

    // One test per row of the failure table in docs/transaction.md.

    #[test]
    fn updated_counts_only_as_an_attempt() {
        assert_eq!(row(Cause::Updated), (false, false, true, 0, 5));
        assert_eq!(Cause::Updated.result(), AttemptResult::Updated);
    }

    #[test]
    fn up_to_date_counts_nothing_and_is_quiet() {
        assert_eq!(row(Cause::UpToDate), (false, false, false, 0, 6));
        assert!(Cause::UpToDate.ends_stall());
    }

    #[test]
    fn a_newer_release_on_the_bad_list_counts_nothing_but_stalls() {
        assert_eq!(row(Cause::NewerOnBadList), (false, false, false, 0, 5));
        assert_eq!(Cause::NewerOnBadList.result(), AttemptResult::UpToDate);
        assert!(Cause::NewerOnBadList.stalls());
    }

    #[test]
    fn ready_counts_as_an_attempt() {
        assert_eq!(row(Cause::Ready), (false, false, true, 0, 5));
    }

    #[test]
    fn an_expired_index_is_a_refusal_and_never_a_failure() {
        assert_eq!(row(Cause::IndexExpired), (false, false, false, 1, 4));
        assert_eq!(Cause::IndexExpired.result(), AttemptResult::Refused);
    }

    #[test]
    fn a_replayed_index_is_a_refusal_reported_as_an_error() {
        assert_eq!(row(Cause::IndexReplayed), (false, false, false, 1, 3));
    }

    #[test]
    fn a_foreign_key_index_is_a_refusal_reported_as_an_error() {
        assert_eq!(row(Cause::IndexUntrusted), (false, false, false, 1, 3));
    }

    #[test]
    fn an_unusable_source_is_a_refusal() {
        assert_eq!(row(Cause::SourceUnusable), (false, false, false, 1, 4));
    }

    #[test]
    fn a_corrupt_bundle_copy_is_a_refusal() {
        assert_eq!(row(Cause::BundleCorrupt), (false, false, false, 1, 3));
    }

    #[test]
    fn a_refused_archive_is_not_bad_listed() {
        assert_eq!(row(Cause::ArchiveRefused), (false, false, false, 1, 3));
    }

    #[test]
    fn a_refused_downgrade_counts_nothing() {
        assert_eq!(row(Cause::Downgrade), (false, false, false, 1, 4));
    }

    #[test]
    fn a_refused_rollback_past_a_migration_counts_nothing() {
        assert_eq!(row(Cause::DataTooNew), (false, false, false, 1, 4));
    }

    #[test]
    fn a_bad_listed_release_is_skipped() {
        assert_eq!(row(Cause::BadListed), (false, false, false, 4, 5));
        assert_eq!(Cause::BadListed.result(), AttemptResult::Skipped);
    }

    #[test]
    fn a_network_error_counts_nothing() {
        assert_eq!(row(Cause::Network), (false, false, false, 1, 4));
    }

    #[test]
    fn auto_update_off_is_skipped() {
        assert_eq!(row(Cause::Disabled), (false, false, false, 4, 5));
    }

    #[test]
    fn another_eligibility_rule_is_skipped() {
        assert_eq!(row(Cause::Ineligible), (false, false, false, 4, 5));
    }

    #[test]
    fn a_failed_check_bad_lists_and_counts() {
        assert_eq!(row(Cause::CheckFailed), (true, true, true, 1, 3));
    }

    #[test]
    fn a_failed_migration_bad_lists_and_counts() {
        assert_eq!(row(Cause::MigrateFailed), (true, true, true, 1, 3));
    }

    #[test]
    fn unhealthy_after_the_switch_bad_lists_and_is_critical() {
        assert_eq!(row(Cause::Unhealthy), (true, true, true, 3, 2));
        assert!(Cause::Unhealthy.flipped_back());
    }

    #[test]
    fn a_crash_loop_bad_lists_and_is_critical() {
        assert_eq!(row(Cause::CrashLoop), (true, true, true, 3, 2));
    }

    #[test]
    fn a_host_fault_before_the_service_was_touched_is_no_failure() {
        assert_eq!(row(Cause::HostBeforeService), (false, false, true, 1, 3));
    }

    #[test]
    fn a_host_fault_while_the_app_was_paused_counts_but_never_bad_lists() {
        assert_eq!(row(Cause::HostServicePaused), (false, true, true, 1, 3));
    }

    #[test]
    fn a_host_fault_after_the_switch_counts_but_never_bad_lists() {
        assert_eq!(row(Cause::HostAfterSwitch), (false, true, true, 3, 2));
        assert_eq!(Cause::HostAfterSwitch.result(), AttemptResult::RolledBack);
    }

    #[test]
    fn a_failed_rollback_counts_but_never_bad_lists() {
        assert_eq!(row(Cause::RollbackUnhealthy), (false, true, true, 1, 2));
    }

    #[test]
    fn a_declined_interactive_run_counts_nothing() {
        assert_eq!(row(Cause::Declined), (false, false, false, 4, 6));
        assert!(!Cause::Declined.stalls() && !Cause::Declined.ends_stall());
    }

    #[test]
    fn a_recovered_run_is_not_a_failure() {
        assert_eq!(row(Cause::Recovered), (false, false, true, 0, 4));
        assert_eq!(Cause::Recovered.result(), AttemptResult::Recovered);
    }

    #[test]
    fn names_match_serde_and_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for c in Cause::ALL {
            let json = serde_json::to_string(&c).expect("serialize");
            assert_eq!(json, format!("\"{}\"", c.as_str()));
            assert!(seen.insert(c.as_str()), "{c} twice");
        }
    }

    #[test]
    fn the_table_in_docs_transaction_md_matches_the_code() {
        let doc = include_str!("../../docs/transaction.md");
        for c in Cause::ALL {
            let (bad, failure, attempt, exit, priority) = row(c);
            let yes = |b: bool| if b { "yes" } else { "no" };
            let cells = format!(
                "| `{}` | {} | {} | {} | {exit} | {priority} |",
                c.as_str(),
                yes(bad),
                yes(failure),
                yes(attempt)
            );
            assert!(
                doc.lines().any(|l| l.contains(&cells)),
                "docs/transaction.md has no row ending `{cells}`"
            );
        }
    }

    #[test]
    fn source_errors_are_classified_by_what_went_wrong() {
        use slipway_formats::channel::Timestamp;
        let t = Timestamp::parse("2026-03-01T00:00:00Z").expect("time");
        let expired = SourceError::Expired {
            location: "x".into(),
            expires: t,
            now: t,
        };
        assert_eq!(of_source_error(&expired), Cause::IndexExpired);
        let replayed = SourceError::Rollback {
            location: "x".into(),
            key: "bot/stable".into(),
            found: 1,
            highest: 2,
        };
        assert_eq!(of_source_error(&replayed), Cause::IndexReplayed);
        let clock = SourceError::ClockWentBack {
            key: "bot/stable".into(),
            now: t,
            latest: t,
        };
        assert_eq!(of_source_error(&clock), Cause::HostBeforeService);
        let down = SourceError::Fetch {
            what: "channel index",
            source: FetchError::Status {
                url: "u".into(),
                status: 503,
                reason: String::new(),
                hint: "",
            },
        };
        assert_eq!(of_source_error(&down), Cause::Network);
        let missing = SourceError::Fetch {
            what: "channel index",
            source: FetchError::Status {
                url: "u".into(),
                status: 404,
                reason: String::new(),
                hint: "",
            },
        };
        assert_eq!(of_source_error(&missing), Cause::SourceUnusable);
    }

    #[test]
    fn a_hook_that_cannot_start_is_the_hosts_fault() {
        let spawn = HookError::Spawn {
            program: "python3".into(),
            cwd: "/".into(),
            source: std::io::ErrorKind::NotFound.into(),
        };
        assert_eq!(
            of_hook_error(&spawn, Cause::CheckFailed, Cause::HostBeforeService),
            Cause::HostBeforeService
        );
    }
}

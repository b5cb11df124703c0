//! The host's own state: `<root>/state/host.json`.
//!
//! Daily attempt and failure counters, the self-disable switch, the bad list
//! (releases never retried automatically), the last attempt and success, and
//! an update staged for `slipway apply`. It lives under `<root>/state/`,
//! never inside the persistence directory, so restoring a persistence
//! snapshot can never rewind the failure count or forget a bad release.
//!
//! The transaction loads it once, [`HostState::roll_day`]s it to today,
//! checks eligibility against it, [`HostState::record`]s the attempt and
//! [`HostState::save`]s it, always under the transaction lock. Every save is
//! an atomic, durable replace ([`durable::write_json_atomic`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use slipway_formats::channel::Timestamp;
use slipway_formats::state::AttemptResult;
use slipway_formats::{ReleaseId, Version};
use thiserror::Error;
use time::OffsetDateTime;

use crate::durable;
use crate::failure_model::Cause;
use crate::layout::Layout;

/// Who disabled auto-update: the operator (`slipway disable`).
pub const DISABLED_BY_OPERATOR: &str = "operator";
/// Who disabled auto-update: slipway itself, after too many failures in a day.
pub const DISABLED_BY_FAILURES: &str = "failures";

/// Why the host state could not be read or written.
#[derive(Debug, Error)]
pub enum StateError {
    #[error("cannot read host state: {source}; check the permissions of {path}")]
    Read {
        path: PathBuf,
        source: slipway_fs::ReadError,
    },
    #[error(
        "host state {path} is corrupt ({message}); move it away (`mv {path} {path}.corrupt`) \
         and run again: slipway then starts with empty counters, auto-update enabled and \
         an empty bad list"
    )]
    Corrupt { path: PathBuf, message: String },
    #[error("cannot write host state {path}: {source}; check free space and permissions")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Auto-update is off until `slipway enable`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disabled {
    pub at: Timestamp,
    pub reason: String,
    /// [`DISABLED_BY_OPERATOR`] or [`DISABLED_BY_FAILURES`].
    pub by: String,
}

/// A release that failed on this host and is never retried automatically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BadRelease {
    pub id: ReleaseId,
    pub version: Version,
    pub at: Timestamp,
    pub reason: String,
}

/// One attempt, as kept in `host.json` and appended to the history.
///
/// Unknown fields are tolerated so that a history written by a newer slipway
/// stays readable by an older one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// `install`, `update`, `rollback`, `apply` or `recover`.
    pub op: String,
    /// When the attempt finished.
    pub at: Timestamp,
    pub result: AttemptResult,
    /// The version running before the attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<Version>,
    /// The version the attempt tried to install.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Version>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_id: Option<ReleaseId>,
    /// One human sentence: what happened, or why it was skipped.
    pub message: String,
    pub duration_ms: u64,
    /// Why the run ended this way: the row of the failure table that
    /// decides what it counts toward ([`Cause`]). Absent in entries written
    /// before causes existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
    /// `update --auto` (the timer), the only runs that use up
    /// `max_attempts_per_day`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto: bool,
}

impl Attempt {
    /// The row of the failure table this attempt belongs to (for an entry
    /// written before causes existed, the closest one).
    pub fn cause(&self) -> Cause {
        self.cause
            .unwrap_or_else(|| Cause::of_legacy_result(self.result))
    }
}

/// An update staged with `auto_restart = false`, waiting for `slipway apply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pending {
    pub release_id: ReleaseId,
    pub version: Version,
    /// The staged release directory.
    pub dir: PathBuf,
    pub staged_at: Timestamp,
}

/// Since when automatic updates have not reached the newest release a
/// source offers (any reason: a refusal, an expiry, a skip, a failure,
/// auto-update off), and the latest reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blocked {
    pub since: Timestamp,
    pub cause: Cause,
    /// The latest attempt's message.
    pub reason: String,
}

/// The channel index this host last accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldIndex {
    pub channel: String,
    pub version: u64,
    pub expires: Timestamp,
    /// The newest release it lists (yanked or not), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest: Option<Version>,
}

/// `<root>/state/host.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostState {
    /// The UTC day (`YYYY-MM-DD`) the counters are for.
    pub day: String,
    /// Automatic runs today that tried to change the host
    /// ([`Cause::counts_as_attempt`]).
    pub attempts_today: u32,
    /// Runs today whose cause counts as a failure
    /// ([`Cause::counts_as_failure`]).
    pub failures_today: u32,
    /// Set: auto-update is off until `slipway enable`.
    pub disabled: Option<Disabled>,
    pub bad_releases: Vec<BadRelease>,
    pub last_attempt: Option<Attempt>,
    /// The last attempt whose result was [`AttemptResult::Updated`].
    pub last_success: Option<Attempt>,
    pub pending: Option<Pending>,
    /// Set while updates do not reach what the source offers
    /// (`[update] stalled_after_hours` turns it into a warning).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked: Option<Blocked>,
    /// The channel index last accepted (for its expiry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<HeldIndex>,
}

/// What `slipway enable` changed, so that it can say so.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enabled {
    /// The switch that was turned off, if any.
    pub was: Option<Disabled>,
    /// Today's failure count before it was reset; `None` when it was left
    /// alone.
    pub failures_reset: Option<u32>,
}

impl HostState {
    /// Reads `host.json`. A missing file is a fresh host ([`Default`]); an
    /// unreadable or corrupt one is an error naming the file and the fix.
    pub fn load(layout: &Layout) -> Result<HostState, StateError> {
        let path = layout.host_state_file();
        let bytes = match slipway_fs::read_capped(&path, crate::source::MAX_STATE_BYTES) {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Ok(HostState::default()),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
            path,
            message: e.to_string(),
        })
    }

    /// [`HostState::load`], then [`HostState::roll_day`] to the UTC day of `now`.
    pub fn load_at(layout: &Layout, now: Timestamp) -> Result<HostState, StateError> {
        let mut state = Self::load(layout)?;
        state.roll_day(&today(now));
        Ok(state)
    }

    /// Replaces `host.json` atomically and durably, creating `state/` if needed.
    pub fn save(&self, layout: &Layout) -> Result<(), StateError> {
        let path = layout.host_state_file();
        let write = || {
            durable::create_dirs(&layout.state_dir())?;
            durable::write_json_atomic(&path, self)
        };
        write().map_err(|source| StateError::Write {
            path: path.clone(),
            source,
        })
    }

    /// Starts new counters when `today` is not the day they are for. The
    /// disabled flag, bad list and pending update are kept: only an operator
    /// clears those.
    pub fn roll_day(&mut self, today: &str) {
        if self.day != today {
            self.day = today.to_string();
            self.attempts_today = 0;
            self.failures_today = 0;
        }
    }

    /// The bad-list entry for `id`, if the release failed here before.
    pub fn bad(&self, id: &ReleaseId) -> Option<&BadRelease> {
        self.bad_releases.iter().find(|b| &b.id == id)
    }

    /// Adds `id` to the bad list (once: a second failure keeps the first entry).
    pub fn mark_bad(
        &mut self,
        id: ReleaseId,
        version: Version,
        reason: impl Into<String>,
        at: Timestamp,
    ) {
        if self.bad(&id).is_none() {
            self.bad_releases.push(BadRelease {
                id,
                version,
                at,
                reason: reason.into(),
            });
        }
    }

    /// Removes `id` from the bad list (an operator forgives a release after
    /// fixing the host); returns the entry that was removed.
    pub fn clear_bad(&mut self, id: &ReleaseId) -> Option<BadRelease> {
        let pos = self.bad_releases.iter().position(|b| &b.id == id)?;
        Some(self.bad_releases.remove(pos))
    }

    /// Counts `attempt` by its [`Cause`] and remembers it.
    ///
    /// The counters first roll to the attempt's UTC day. An automatic run
    /// whose cause [counts as an attempt](Cause::counts_as_attempt) adds to
    /// `attempts_today`; a cause that [counts as a
    /// failure](Cause::counts_as_failure) adds to `failures_today`, whoever
    /// ran it. When a failure brings `failures_today` to
    /// `max_failures_per_day`, auto-update disables itself (the seed's
    /// "repeated failures: disable auto-update and require manual
    /// intervention") until `slipway enable`. An operator's own `disable` is
    /// never overwritten. The stall clock ([`HostState::blocked`]) starts at
    /// the first attempt that leaves an offered release uninstalled and
    /// stops at the first that is up to date or updated.
    pub fn record(&mut self, attempt: Attempt, max_failures_per_day: u32) {
        self.roll_day(&today(attempt.at));
        let cause = attempt.cause();
        if cause.counts_as_attempt() && attempt.auto {
            self.attempts_today = self.attempts_today.saturating_add(1);
        }
        if cause.counts_as_failure() {
            self.failures_today = self.failures_today.saturating_add(1);
            if self.failures_today >= max_failures_per_day && self.disabled.is_none() {
                self.disabled = Some(Disabled {
                    at: attempt.at,
                    reason: format!(
                        "{} today (max_failures_per_day = {})",
                        plural(self.failures_today, "failed update", "failed updates"),
                        max_failures_per_day
                    ),
                    by: DISABLED_BY_FAILURES.to_string(),
                });
            }
        }
        if cause.ends_stall() {
            self.blocked = None;
        } else if cause.stalls() {
            let since = self.blocked.as_ref().map_or(attempt.at, |b| b.since);
            self.blocked = Some(Blocked {
                since,
                cause,
                reason: attempt.message.clone(),
            });
        }
        if attempt.result == AttemptResult::Updated {
            self.last_success = Some(attempt.clone());
        }
        self.last_attempt = Some(attempt);
    }

    /// `slipway enable`: auto-update back on. Today's failure count is
    /// reset only when it alone would keep auto-update off (it has reached
    /// `max_failures_per_day`), and the returned [`Enabled`] says so.
    pub fn enable(&mut self, max_failures_per_day: u32) -> Enabled {
        let was = self.disabled.take();
        let failures_reset = (self.failures_today >= max_failures_per_day
            && self.failures_today > 0)
            .then(|| std::mem::take(&mut self.failures_today));
        Enabled {
            was,
            failures_reset,
        }
    }

    /// `slipway disable`: auto-update off until `slipway enable`.
    pub fn disable(&mut self, reason: impl Into<String>, at: Timestamp) {
        self.disabled = Some(Disabled {
            at,
            reason: reason.into(),
            by: DISABLED_BY_OPERATOR.to_string(),
        });
    }
}

/// `1 minute`, `2 minutes`: a count and its noun, in the right number.
pub fn plural(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A duration in the largest whole unit that fits: `45 seconds`, `1 minute`,
/// `3 hours`, `2 days`.
pub fn human_duration(secs: u64) -> String {
    match secs {
        0..=59 => plural(secs, "second", "seconds"),
        60..=3599 => plural(secs / 60, "minute", "minutes"),
        3600..=172_799 => plural(secs / 3600, "hour", "hours"),
        _ => plural(secs / 86_400, "day", "days"),
    }
}

/// The UTC day of `now`, `YYYY-MM-DD`: the key of the daily counters.
pub fn today(now: Timestamp) -> String {
    let date = now.0.to_offset(time::UtcOffset::UTC).date();
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// Where "now" comes from: the system clock, or a fixed instant in tests of
/// day rollover, expiry and save age.
pub trait Clock {
    fn now(&self) -> Timestamp;
}

/// The system clock, in whole seconds (UTC).
///
/// Test-only: when slipway is built with the `fault-injection` feature, the
/// `SLIPWAY_TEST_NOW` environment variable (an RFC 3339 time) replaces the
/// system time, so end-to-end tests can cross midnight or age a save. A
/// release build ignores the variable.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        #[cfg(feature = "fault-injection")]
        if let Some(t) = std::env::var("SLIPWAY_TEST_NOW")
            .ok()
            .and_then(|v| Timestamp::parse(v.trim()).ok())
        {
            return t;
        }
        let now = OffsetDateTime::now_utc();
        // Nanosecond 0 is always valid; keep the precise time if it were not.
        Timestamp(now.replace_nanosecond(0).unwrap_or(now))
    }
}

/// A clock that always says the same instant.
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub Timestamp);

impl Clock for FixedClock {
    fn now(&self) -> Timestamp {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        Timestamp::parse(s).expect("time")
    }

    #[test]
    fn today_is_the_utc_date() {
        assert_eq!(today(at("2026-03-01T23:30:00-02:00")), "2026-03-02");
        assert_eq!(today(at("2026-03-01T00:00:00Z")), "2026-03-01");
    }

    fn attempt(cause: Cause, auto: bool, at_: &str) -> Attempt {
        Attempt {
            op: "update".into(),
            at: at(at_),
            result: cause.result(),
            from_version: None,
            version: None,
            release_id: None,
            message: cause.label().into(),
            duration_ms: 1,
            cause: Some(cause),
            auto,
        }
    }

    #[test]
    fn only_automatic_runs_use_up_the_attempts() {
        let mut s = HostState::default();
        s.record(attempt(Cause::Updated, false, "2026-03-01T10:00:00Z"), 2);
        s.record(
            attempt(Cause::CheckFailed, false, "2026-03-01T10:10:00Z"),
            2,
        );
        assert_eq!((s.attempts_today, s.failures_today), (0, 1));
        s.record(attempt(Cause::Updated, true, "2026-03-01T11:00:00Z"), 2);
        assert_eq!((s.attempts_today, s.failures_today), (1, 1));
    }

    #[test]
    fn refusals_and_the_network_never_disable_auto_update() {
        let mut s = HostState::default();
        for (i, cause) in [
            Cause::IndexExpired,
            Cause::IndexExpired,
            Cause::IndexReplayed,
            Cause::IndexUntrusted,
            Cause::BundleCorrupt,
            Cause::Downgrade,
            Cause::DataTooNew,
            Cause::Network,
            Cause::HostBeforeService,
            Cause::Recovered,
        ]
        .into_iter()
        .enumerate()
        {
            s.record(attempt(cause, true, &format!("2026-03-01T1{i}:00:00Z")), 1);
        }
        assert_eq!(s.failures_today, 0);
        assert!(s.disabled.is_none());
    }

    #[test]
    fn the_stall_clock_starts_at_the_first_block_and_stops_when_up_to_date() {
        let mut s = HostState::default();
        s.record(attempt(Cause::UpToDate, true, "2026-03-01T09:00:00Z"), 2);
        assert!(s.blocked.is_none());
        s.record(
            attempt(Cause::IndexExpired, true, "2026-03-01T10:00:00Z"),
            2,
        );
        s.record(attempt(Cause::Disabled, true, "2026-03-01T11:00:00Z"), 2);
        let b = s.blocked.clone().expect("blocked");
        assert_eq!(b.since, at("2026-03-01T10:00:00Z"));
        assert_eq!(b.cause, Cause::Disabled);
        // A declined run or a recovery says nothing either way.
        s.record(attempt(Cause::Declined, false, "2026-03-01T11:30:00Z"), 2);
        s.record(attempt(Cause::Recovered, false, "2026-03-01T11:40:00Z"), 2);
        assert_eq!(s.blocked.as_ref().map(|b| b.since), Some(b.since));
        s.record(attempt(Cause::UpToDate, true, "2026-03-01T12:00:00Z"), 2);
        assert!(s.blocked.is_none());
    }

    #[test]
    fn enable_resets_the_failures_only_when_they_alone_keep_it_off() {
        let mut s = HostState::default();
        s.record(attempt(Cause::CheckFailed, true, "2026-03-01T10:00:00Z"), 3);
        s.disable("maintenance", at("2026-03-01T10:30:00Z"));
        let changed = s.enable(3);
        assert_eq!(changed.failures_reset, None);
        assert_eq!(s.failures_today, 1, "counters left alone");
        assert_eq!(changed.was.map(|d| d.by), Some(DISABLED_BY_OPERATOR.into()));
        s.record(attempt(Cause::Unhealthy, true, "2026-03-01T11:00:00Z"), 2);
        assert!(s.disabled.is_some());
        let changed = s.enable(2);
        assert_eq!(changed.failures_reset, Some(2));
        assert_eq!(s.failures_today, 0);
    }

    #[test]
    fn plurals_and_durations_read_right() {
        assert_eq!(plural(1u32, "minute", "minutes"), "1 minute");
        assert_eq!(plural(2u32, "minute", "minutes"), "2 minutes");
        assert_eq!(human_duration(1), "1 second");
        assert_eq!(human_duration(60), "1 minute");
        assert_eq!(human_duration(3 * 3600 + 5), "3 hours");
        assert_eq!(human_duration(26 * 3600), "26 hours");
        assert_eq!(human_duration(3 * 86_400), "3 days");
    }

    #[test]
    fn operator_disable_is_not_overwritten_by_failures() {
        let mut s = HostState::default();
        s.disable("maintenance", at("2026-03-01T10:00:00Z"));
        let failed = Attempt {
            op: "update".into(),
            at: at("2026-03-01T11:00:00Z"),
            result: AttemptResult::Failed,
            from_version: None,
            version: None,
            release_id: None,
            message: "x".into(),
            duration_ms: 1,
            cause: Some(Cause::CheckFailed),
            auto: false,
        };
        s.record(failed, 1);
        assert_eq!(
            s.disabled.as_ref().map(|d| d.by.as_str()),
            Some(DISABLED_BY_OPERATOR)
        );
    }
}

//! Files slipway writes on a host: its own trust state, and the two files it
//! writes for the app's dashboard (`<persistence>/meta/version.json` and
//! `update_state.json`). The installer owns when they are written; this
//! module owns what they say, so the app and other tools can read them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::channel::Timestamp;
use crate::id::ReleaseId;
use crate::version::Version;

/// What the host remembers of a channel to refuse rollback and freeze
/// attacks (SPEC §6): the highest index version and the latest time seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelTrust {
    pub highest_index_version: u64,
    pub latest_time_seen: Timestamp,
}

/// A release key a host learned from a key rotation statement
/// ([`crate::rotation`]). It is trusted only while the key that introduced
/// it is: the installer recomputes that from the configured keys on every
/// run, so removing a key from the configuration also drops what it
/// introduced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearnedKey {
    /// The public key, base64 (`RW...`).
    pub key: String,
    /// Its id, as minisign displays it.
    pub key_id: String,
    /// The id of the key that signed the rotation statement.
    pub introduced_by: String,
    /// The app the statement was for.
    pub app: String,
    /// When this host verified the statement.
    pub learned_at: Timestamp,
}

/// `<root>/state/trust.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustState {
    /// Per `<app>/<channel>`.
    pub channels: BTreeMap<String, ChannelTrust>,
    /// Keys introduced by rotation statements, in the order learned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learned_keys: Vec<LearnedKey>,
}

/// The outcome of one update attempt, as reported everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptResult {
    /// The new release is running and healthy.
    Updated,
    /// Nothing newer to install.
    UpToDate,
    /// Not attempted: an eligibility rule said no (the reason is alongside).
    Skipped,
    /// Failed before the switch; the old release kept running untouched.
    Failed,
    /// Switched, found unhealthy, and flipped back to the old release.
    RolledBack,
    /// Staged and checked, waiting for `slipway apply` (auto_restart = false).
    Ready,
    /// What the source offered was refused (an expired or replayed channel
    /// index, a corrupt copy, a downgrade); nothing was touched.
    Refused,
    /// `slipway recover` finished or undid a run that was killed; the
    /// message says what it did.
    Recovered,
}

impl AttemptResult {
    /// Every result, in a fixed order (for one-hot metrics and docs).
    pub const ALL: [AttemptResult; 8] = [
        AttemptResult::Updated,
        AttemptResult::UpToDate,
        AttemptResult::Skipped,
        AttemptResult::Failed,
        AttemptResult::RolledBack,
        AttemptResult::Ready,
        AttemptResult::Refused,
        AttemptResult::Recovered,
    ];

    /// The name used in every file, metric label and journal field:
    /// the same snake_case string serde writes.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptResult::Updated => "updated",
            AttemptResult::UpToDate => "up_to_date",
            AttemptResult::Skipped => "skipped",
            AttemptResult::Failed => "failed",
            AttemptResult::RolledBack => "rolled_back",
            AttemptResult::Ready => "ready",
            AttemptResult::Refused => "refused",
            AttemptResult::Recovered => "recovered",
        }
    }
}

impl std::fmt::Display for AttemptResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `<persistence>/meta/version.json`: what runs now, for the app's dashboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionFile {
    pub app: String,
    pub version: Version,
    pub release_id: ReleaseId,
    pub channel: String,
    pub schema_version: u32,
    pub installed_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<Version>,
}

/// `<persistence>/meta/update_state.json`: the seed's "persisted state with
/// last run, result, failure count", rewritten after every attempt so the
/// app's dashboard can show what the updater did last and whether it is
/// still allowed to act. A copy for readers: slipway's own counters live in
/// `<root>/state/host.json` and are never read back from here.
///
/// Readers should ignore fields they do not know; new fields may be added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStateFile {
    /// When the last attempt (of any result) finished.
    pub last_run: Timestamp,
    /// What ran: `install`, `update`, `rollback`, `apply` or `recover`.
    pub last_op: String,
    pub last_result: AttemptResult,
    /// The version the last attempt tried to install, if it got that far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_version: Option<Version>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_release_id: Option<ReleaseId>,
    /// One human sentence: what happened, or why the attempt was skipped.
    pub message: String,
    /// When an update last succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<Timestamp>,
    /// Counters for the UTC day `day`.
    pub day: String,
    pub attempts_today: u32,
    pub failures_today: u32,
    /// False when the configuration turns auto-update off or it disabled
    /// itself after repeated failures (see `disabled_reason`).
    pub auto_update_enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// A staged update waiting for `slipway apply`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_ready: Option<Version>,
    /// The version running now, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<Version>,
    /// Releases this host will never retry automatically.
    #[serde(default)]
    pub bad_releases: Vec<ReleaseId>,
    /// Why the last attempt ended so (the installer's failure table, e.g.
    /// `index_expired`, `unhealthy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_cause: Option<String>,
    /// Since when automatic updates have not installed the newest release
    /// offered, when that has lasted longer than `stalled_after_hours`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalled_since: Option<Timestamp>,
    /// When the channel index this host holds expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_expires: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_result_names_match_serde() {
        for r in AttemptResult::ALL {
            let json = serde_json::to_string(&r).expect("serialize");
            assert_eq!(json, format!("\"{}\"", r.as_str()));
        }
    }

    #[test]
    fn update_state_file_round_trips_and_tolerates_new_fields() {
        let file = UpdateStateFile {
            last_run: Timestamp::parse("2026-01-02T03:04:05Z").expect("time"),
            last_op: "update".into(),
            last_result: AttemptResult::RolledBack,
            last_version: Some(Version::new(1, 2, 0)),
            last_release_id: Some(ReleaseId::of_bytes(b"x")),
            message: "health check failed".into(),
            last_success: None,
            day: "2026-01-02".into(),
            attempts_today: 1,
            failures_today: 1,
            auto_update_enabled: true,
            disabled_reason: None,
            update_ready: None,
            current_version: Some(Version::new(1, 1, 0)),
            bad_releases: vec![ReleaseId::of_bytes(b"x")],
            last_cause: Some("unhealthy".into()),
            stalled_since: None,
            index_expires: None,
        };
        let mut value = serde_json::to_value(&file).expect("serialize");
        assert_eq!(value["last_result"], "rolled_back");
        value["added_later"] = serde_json::Value::Bool(true);
        let back: UpdateStateFile = serde_json::from_value(value).expect("parse");
        assert_eq!(back, file);
    }
}

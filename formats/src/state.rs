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

/// `<root>/state/trust.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustState {
    /// Per `<app>/<channel>`.
    pub channels: BTreeMap<String, ChannelTrust>,
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

//! Files slipway writes on a host: its own trust state, and the two files it
//! writes for the app's dashboard (`<persistence>/meta/version.json` and
//! `update_state.json`). The installer owns when they are written; this
//! module owns what they say, so the app and other tools can read them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::channel::{ChannelIndex, Timestamp};
use crate::id::ReleaseId;
use crate::signature::{KeyId, PublicKey, TrustedKeys};
use crate::version::Version;

/// What the host remembers of a channel to refuse rollback and freeze
/// attacks (SPEC §6): the highest index version and the latest signed time
/// seen. Both are taken from signed indexes only, never from the local
/// clock, so a clock that was wrong for one poll cannot lock a host out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelTrust {
    pub highest_index_version: u64,
    /// The latest `published` time of an index accepted for this channel,
    /// as the publisher signed it: the host's clock must not be earlier.
    /// `None` until an index that carries `published` is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_signed_time: Option<Timestamp>,
    /// What slipway wrote before the floor was signed: the *local* clock
    /// at the last accepted poll. Read so that such a file still parses,
    /// never used (one wrong clock there froze every later update) and
    /// never written again.
    #[serde(default, rename = "latest_time_seen", skip_serializing)]
    pub unsigned_time_seen: Option<Timestamp>,
}

impl ChannelTrust {
    /// Takes in an index that passed every check: the highest version and
    /// the latest signed time only ever grow, and only by what `index` says.
    pub fn advance(&mut self, index: &ChannelIndex) {
        self.highest_index_version = self.highest_index_version.max(index.version);
        self.latest_signed_time = self.latest_signed_time.max(index.published);
        self.unsigned_time_seen = None;
    }
}

/// A release key a host learned from a key rotation statement
/// ([`crate::rotation`]). It is trusted only while the key that introduced
/// it is: [`TrustState::trusted_keys`] recomputes that from the configured
/// keys on every run, so removing a key from the configuration also drops
/// what it introduced.
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
    /// When this host verified the statement (for people; nothing is
    /// decided by it).
    pub learned_at: Timestamp,
}

/// A key this host trusted once and does not any more: removed from
/// `[update] public_keys`, listed in `[update] revoked_keys`, or learned
/// through a key that was. A rotation statement never brings it back; only
/// listing it in `public_keys` again does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetiredKey {
    /// The key id, as minisign displays it.
    pub key_id: String,
    /// Why, in words: "removed from update.public_keys", ...
    pub reason: String,
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
    /// The ids of the keys `[update] public_keys` listed when this file was
    /// last written: a key that disappears from the configuration is
    /// retired on the next run ([`TrustState::reconcile_keys`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configured_keys: Vec<String>,
    /// Keys never learned again from a rotation statement.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_keys: Vec<RetiredKey>,
}

impl TrustState {
    /// Why `key` may not be learned from a rotation statement, if it is
    /// retired.
    pub fn retired(&self, key: KeyId) -> Option<&RetiredKey> {
        let id = key.to_string();
        self.retired_keys.iter().find(|r| r.key_id == id)
    }

    /// The keys this host trusts: the configured ones that are not retired,
    /// and every learned key that is not retired and whose introducer is
    /// trusted (transitively, so a chain A → B → C holds while A is
    /// configured).
    pub fn trusted_keys(&self, configured: &TrustedKeys) -> TrustedKeys {
        let mut keys = TrustedKeys::new(
            configured
                .keys()
                .iter()
                .filter(|k| self.retired(k.id()).is_none())
                .cloned()
                .collect(),
        );
        loop {
            let before = keys.keys().len();
            for learned in &self.learned_keys {
                let Ok(key) = PublicKey::from_base64(&learned.key) else {
                    continue;
                };
                if key.id().to_string() != learned.key_id || self.retired(key.id()).is_some() {
                    continue;
                }
                let trusted_introducer = keys
                    .keys()
                    .iter()
                    .any(|k| k.id().to_string() == learned.introduced_by);
                if trusted_introducer {
                    keys.add(key);
                }
            }
            if keys.keys().len() == before {
                return keys;
            }
        }
    }

    /// Brings the key history in line with the configuration of this run,
    /// and returns the keys it retired now:
    ///
    /// - a key listed in `configured` is not retired (listing it again is
    ///   how an operator trusts a retired key again), unless `revoked`
    ///   lists it too;
    /// - a key in `revoked` is retired;
    /// - a key listed in `configured_keys` last time and not now is retired;
    /// - a learned key no longer trusted (its introducer was removed or
    ///   retired) is retired.
    ///
    /// Pure: the caller writes the state back only when it may.
    pub fn reconcile_keys(
        &mut self,
        configured: &TrustedKeys,
        revoked: &[KeyId],
    ) -> Vec<RetiredKey> {
        let revoked: Vec<String> = revoked.iter().map(KeyId::to_string).collect();
        let listed: Vec<String> = configured
            .keys()
            .iter()
            .map(|k| k.id().to_string())
            .collect();
        self.retired_keys
            .retain(|r| !listed.contains(&r.key_id) || revoked.contains(&r.key_id));
        let mut newly = Vec::new();
        let mut retire = |state: &mut TrustState, key_id: &str, reason: String| {
            if state.retired_keys.iter().any(|r| r.key_id == key_id) {
                return;
            }
            let r = RetiredKey {
                key_id: key_id.to_string(),
                reason,
            };
            state.retired_keys.push(r.clone());
            newly.push(r);
        };
        for id in &revoked {
            retire(self, id, "listed in update.revoked_keys".into());
        }
        let trusted: Vec<String> = self
            .trusted_keys(configured)
            .keys()
            .iter()
            .map(|k| k.id().to_string())
            .collect();
        for id in self.configured_keys.clone() {
            if !trusted.contains(&id) {
                retire(self, &id, "removed from update.public_keys".into());
            }
        }
        for learned in self.learned_keys.clone() {
            if !trusted.contains(&learned.key_id) {
                retire(
                    self,
                    &learned.key_id,
                    format!(
                        "learned from a rotation statement by key {}, which this host no longer trusts",
                        learned.introduced_by
                    ),
                );
            }
        }
        let mut listed = listed;
        listed.sort();
        listed.dedup();
        self.configured_keys = listed;
        newly
    }
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

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse(s).expect("time")
    }

    /// `n` distinct public keys (one real key with its id bytes changed).
    fn keys(n: u8) -> Vec<PublicKey> {
        use base64::Engine;
        let engine = base64::engine::general_purpose::STANDARD;
        let raw = engine
            .decode("RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3")
            .expect("base64");
        (0..n)
            .map(|i| {
                let mut b = raw.clone();
                b[2] = i;
                PublicKey::from_base64(&engine.encode(&b)).expect("key")
            })
            .collect()
    }

    fn learned(key: &PublicKey, by: &PublicKey) -> LearnedKey {
        LearnedKey {
            key: key.to_base64().to_string(),
            key_id: key.id().to_string(),
            introduced_by: by.id().to_string(),
            app: "bot".into(),
            learned_at: ts("2026-01-01T00:00:00Z"),
        }
    }

    fn trusts(state: &TrustState, configured: &[&PublicKey], key: &PublicKey) -> bool {
        let configured = TrustedKeys::new(configured.iter().map(|k| (*k).clone()).collect());
        state.trusted_keys(&configured).find(key.id()).is_some()
    }

    #[test]
    fn a_trust_file_written_from_the_local_clock_parses_and_its_time_is_dropped() {
        // What slipway wrote before: the local clock, here 20 days ahead.
        let old = r#"{"channels":{"bot/stable":{"highest_index_version":4,"latest_time_seen":"2026-02-20T00:00:00Z"}}}"#;
        let mut state: TrustState = serde_json::from_str(old).expect("parse");
        let channel = state.channels.get_mut("bot/stable").expect("channel");
        assert_eq!(channel.latest_signed_time, None);
        let mut index = ChannelIndex::new("bot", "stable", ts("2026-03-01T00:00:00Z"));
        index.version = 5;
        index.published = Some(ts("2026-01-31T00:00:00Z"));
        channel.advance(&index);
        let json = serde_json::to_string(&state).expect("json");
        assert!(!json.contains("latest_time_seen"), "{json}");
        assert!(
            json.contains(r#""latest_signed_time":"2026-01-31T00:00:00Z""#),
            "{json}"
        );
    }

    #[test]
    fn channel_trust_advances_only_by_signed_fields_and_never_goes_down() {
        let mut t = ChannelTrust::default();
        let mut index = ChannelIndex::new("bot", "stable", ts("2026-03-01T00:00:00Z"));
        index.version = 7;
        index.published = Some(ts("2026-02-01T00:00:00Z"));
        t.advance(&index);
        assert_eq!(t.highest_index_version, 7);
        assert_eq!(t.latest_signed_time, Some(ts("2026-02-01T00:00:00Z")));
        // An older index, or one without a signed time, moves nothing back.
        index.version = 3;
        index.published = Some(ts("2026-01-01T00:00:00Z"));
        t.advance(&index);
        index.published = None;
        t.advance(&index);
        assert_eq!(t.highest_index_version, 7);
        assert_eq!(t.latest_signed_time, Some(ts("2026-02-01T00:00:00Z")));
    }

    #[test]
    fn a_key_removed_from_the_configuration_is_retired_and_never_trusted_through_a_statement() {
        let k = keys(2);
        let (a, b) = (&k[0], &k[1]);
        let mut state = TrustState::default();
        let both = TrustedKeys::new(vec![a.clone(), b.clone()]);
        assert!(state.reconcile_keys(&both, &[]).is_empty());
        // A is removed; an old statement B -> A is learned (as before the fix).
        let only_b = TrustedKeys::new(vec![b.clone()]);
        let retired = state.reconcile_keys(&only_b, &[]);
        assert_eq!(retired.len(), 1);
        assert_eq!(retired[0].key_id, a.id().to_string());
        assert!(retired[0]
            .reason
            .contains("removed from update.public_keys"));
        state.learned_keys.push(learned(a, b));
        assert!(state.retired(a.id()).is_some());
        assert!(!trusts(&state, &[b], a), "a retired key is not trusted");
        assert!(state.reconcile_keys(&only_b, &[]).is_empty(), "idempotent");
        // Listing A again is what trusts it again.
        state.reconcile_keys(&both, &[]);
        assert!(state.retired(a.id()).is_none());
        assert!(trusts(&state, &[a, b], a));
    }

    #[test]
    fn a_revoked_key_stays_retired_when_the_revocation_is_dropped() {
        let k = keys(2);
        let (a, b) = (&k[0], &k[1]);
        let only_b = TrustedKeys::new(vec![b.clone()]);
        let mut state = TrustState {
            learned_keys: vec![learned(a, b)],
            ..TrustState::default()
        };
        state.reconcile_keys(&only_b, &[]);
        assert!(trusts(&state, &[b], a), "B introduced A");
        let retired = state.reconcile_keys(&only_b, &[a.id()]);
        assert!(retired[0].reason.contains("revoked_keys"), "{retired:?}");
        assert!(!trusts(&state, &[b], a));
        state.reconcile_keys(&only_b, &[]);
        assert!(state.retired(a.id()).is_some());
        // Revoked and listed: the revocation wins.
        let both = TrustedKeys::new(vec![a.clone(), b.clone()]);
        state.reconcile_keys(&both, &[a.id()]);
        assert!(!trusts(&state, &[a, b], a));
    }

    #[test]
    fn what_a_removed_key_introduced_is_retired_with_it_through_the_chain() {
        let k = keys(4);
        let (a, b, c, d) = (&k[0], &k[1], &k[2], &k[3]);
        let mut state = TrustState {
            learned_keys: vec![learned(b, a), learned(c, b)],
            ..TrustState::default()
        };
        let only_a = TrustedKeys::new(vec![a.clone()]);
        state.reconcile_keys(&only_a, &[]);
        assert!(trusts(&state, &[a], c), "A -> B -> C");
        let only_d = TrustedKeys::new(vec![d.clone()]);
        let retired: Vec<String> = state
            .reconcile_keys(&only_d, &[])
            .into_iter()
            .map(|r| r.key_id)
            .collect();
        assert_eq!(
            retired,
            [a.id().to_string(), b.id().to_string(), c.id().to_string()]
        );
        // Even with A listed again, B and C come back only by being listed.
        state.reconcile_keys(&only_a, &[]);
        assert!(trusts(&state, &[a], a));
        assert!(!trusts(&state, &[a], b) && !trusts(&state, &[a], c));
    }

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

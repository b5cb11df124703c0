//! `channels/<channel>.json`: the signed list of a channel's releases.
//!
//! The index is what a host polls. Its `version` only grows and its `expires`
//! bounds how long a copy stays valid, so a mirror or attacker can neither
//! serve an older index (rollback) nor keep serving a stale one (freeze): the
//! installer compares both against the trust state it keeps per channel.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::id::ReleaseId;
use crate::manifest::validate_name;
use crate::signature::{
    KeyId, SignatureError, SignatureFile, TrustedComment, TrustedKeys, CHANNEL_COMMENT,
};
use crate::version::Version;

/// The channel index format this crate reads and writes.
pub const CHANNEL_FORMAT: u32 = 1;
/// The `type` field of a channel index.
pub const CHANNEL_TYPE: &str = "channel-index";

/// Why a channel index was refused.
#[derive(Debug, Error)]
pub enum ChannelError {
    #[error("channel index is not valid JSON: {0}")]
    Json(String),
    #[error("channel index has type {found:?}, expected \"channel-index\"")]
    WrongType { found: String },
    #[error("channel index format {found} is not supported (this slipway reads format {CHANNEL_FORMAT}); upgrade slipway")]
    UnsupportedFormat { found: u64 },
    #[error("channel index does not match format {CHANNEL_FORMAT}: {0}")]
    Schema(String),
    #[error("channel index field {field}: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("channel index is for app {found:?}, this host runs {expected:?}")]
    WrongApp { expected: String, found: String },
    #[error("channel index is for channel {found:?}, this host follows {expected:?}")]
    WrongChannel { expected: String, found: String },
    #[error("channel index releases are not newest first: {prev} is listed before {next}")]
    NotNewestFirst { prev: Version, next: Version },
    #[error("channel index lists release {0} twice")]
    DuplicateId(ReleaseId),
    #[error("channel index release {version}: rollout {rollout} is above 100 percent")]
    Rollout { version: Version, rollout: u8 },
    #[error("channel index release {version}: {reason}")]
    Delta { version: Version, reason: String },
}

/// Why a channel index failed authentication ([`authenticate_index`]).
#[derive(Debug, Error)]
pub enum IndexAuthError {
    /// The signature is malformed, by an unknown key, or does not verify.
    #[error("{0}")]
    Signature(#[from] SignatureError),
    /// The signed comment is not the one `slipway-pack publish` writes for
    /// this index.
    #[error("the signed comment {comment:?} {reason}")]
    Comment { comment: String, reason: String },
    /// The bytes are signed but not a valid index.
    #[error("{0}")]
    Index(#[from] ChannelError),
}

/// A channel index whose signature and comment verified.
#[derive(Debug, Clone)]
pub struct AuthenticatedIndex {
    pub index: ChannelIndex,
    /// The key that signed it.
    pub signer: KeyId,
}

/// Authenticates a channel index from its exact bytes and its `.minisig`
/// text: a prehashed minisign signature by a key in `keys` over the bytes,
/// a `slipway-channel` trusted comment, a strict parse, and the comment
/// exactly [`TrustedComment::for_channel`] of the index's app, channel and
/// version ([`TrustedComment::require`]).
///
/// The one implementation both binaries run: `slipway` before it looks at
/// freshness and identity, `slipway-pack` before it extends or verifies an
/// index. Which app and channel the caller wanted, expiry and rollback are
/// the caller's checks.
pub fn authenticate_index(
    bytes: &[u8],
    signature: &str,
    keys: &TrustedKeys,
) -> Result<AuthenticatedIndex, IndexAuthError> {
    let sig = SignatureFile::parse(signature)?;
    let signer = sig.verify_bytes(keys, bytes)?.id();
    let comment_text = sig.trusted_comment();
    let comment_err = |reason: String| IndexAuthError::Comment {
        comment: comment_text.to_string(),
        reason,
    };
    let comment = TrustedComment::parse(comment_text)
        .map_err(|e| comment_err(format!("is malformed ({e})")))?;
    if comment.kind != CHANNEL_COMMENT {
        return Err(comment_err(format!(
            "is of kind {:?}, not {CHANNEL_COMMENT:?}",
            comment.kind
        )));
    }
    let index = ChannelIndex::parse(bytes)?;
    let expected = TrustedComment::for_channel(&index.app, &index.channel, index.version);
    comment
        .require(&expected, "the index")
        .map_err(|m| comment_err(m.reason))?;
    Ok(AuthenticatedIndex { index, signer })
}

/// An RFC 3339 instant, as written in indexes and state files.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub OffsetDateTime);

impl Timestamp {
    /// Seconds since the epoch.
    pub fn unix(&self) -> i64 {
        self.0.unix_timestamp()
    }

    /// From seconds since the epoch (UTC); `None` if out of range.
    pub fn from_unix(secs: i64) -> Option<Self> {
        OffsetDateTime::from_unix_timestamp(secs)
            .ok()
            .map(Timestamp)
    }

    /// Parses an RFC 3339 string.
    pub fn parse(s: &str) -> Result<Self, String> {
        OffsetDateTime::parse(s, &Rfc3339)
            .map(Timestamp)
            .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.to_offset(time::UtcOffset::UTC).format(&Rfc3339) {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "@{}", self.0.unix_timestamp()),
        }
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One release as listed in a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelRelease {
    pub version: Version,
    pub id: ReleaseId,
    /// Archive size in bytes: the download is capped at it.
    pub size: u64,
    pub schema_version: u32,
    #[serde(default)]
    pub yanked: bool,
    /// Percent of hosts that take this release (SPEC §7).
    #[serde(default = "full_rollout")]
    pub rollout: u8,
    #[serde(default)]
    pub notes: String,
    /// Delta archives that turn an older release into this one
    /// (`deltas/<from-hex>-<to-hex>.tar.zst`, see docs/formats.md). Absent
    /// from indexes written before deltas existed, and from releases
    /// published with `--deltas 0`: such an entry is byte for byte what an
    /// older slipway wrote.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deltas: Vec<ChannelDelta>,
}

/// The most deltas one release may list: `publish --deltas K` writes K.
pub const MAX_DELTAS_PER_RELEASE: usize = 16;

/// A delta archive as a channel index lists it. The index is signed, so
/// its size (the download's cap) and digest are authenticated before a
/// byte of the delta is fetched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelDelta {
    /// The release the delta starts from: a host uses it only when it runs
    /// exactly that release.
    pub from: ReleaseId,
    /// The delta file's size in bytes: the download is capped at it.
    pub size: u64,
    /// The SHA-256 of the delta file, spelled like a release id.
    pub sha256: ReleaseId,
}

fn full_rollout() -> u8 {
    100
}

/// `channels/<channel>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelIndex {
    #[serde(rename = "type")]
    pub kind: String,
    pub format: u32,
    pub app: String,
    pub channel: String,
    /// Grows by one with every publish or yank; a host refuses a lower one.
    pub version: u64,
    /// When `slipway-pack` signed this index, by the publisher's clock: the
    /// signed time a host's clock is checked against, and the only time
    /// that moves a host's trust state (see `docs/trust.md`). Absent from
    /// indexes signed before the field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<Timestamp>,
    /// A host refuses the index after this instant.
    pub expires: Timestamp,
    /// Newest first.
    pub releases: Vec<ChannelRelease>,
}

impl ChannelIndex {
    /// An empty index, as `publish` starts a new channel.
    pub fn new(app: &str, channel: &str, expires: Timestamp) -> Self {
        ChannelIndex {
            kind: CHANNEL_TYPE.to_string(),
            format: CHANNEL_FORMAT,
            app: app.to_string(),
            channel: channel.to_string(),
            version: 0,
            published: None,
            expires,
            releases: Vec::new(),
        }
    }

    /// Parses and validates an index, straight into its types. When the
    /// strict parse fails, type and format are looked at first, so each
    /// gets its own clear message.
    pub fn parse(bytes: &[u8]) -> Result<ChannelIndex, ChannelError> {
        let index: ChannelIndex = match serde_json::from_slice(bytes) {
            Ok(i) => i,
            Err(strict) => return Err(Self::diagnose(bytes, strict)),
        };
        if index.kind != CHANNEL_TYPE {
            return Err(ChannelError::WrongType {
                found: index.kind.clone(),
            });
        }
        if index.format != CHANNEL_FORMAT {
            return Err(ChannelError::UnsupportedFormat {
                found: u64::from(index.format),
            });
        }
        index.validate()?;
        Ok(index)
    }

    /// Why `bytes` are not an index of this format, `strict` being the
    /// strict parse's complaint.
    fn diagnose(bytes: &[u8], strict: serde_json::Error) -> ChannelError {
        #[derive(Deserialize)]
        struct Head {
            #[serde(default, rename = "type")]
            kind: Option<serde_json::Value>,
            #[serde(default)]
            format: Option<serde_json::Value>,
        }
        let head: Head = match serde_json::from_slice(bytes) {
            Ok(h) => h,
            Err(e) => return ChannelError::Json(e.to_string()),
        };
        let kind = head
            .kind
            .as_ref()
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        if kind != CHANNEL_TYPE {
            return ChannelError::WrongType {
                found: kind.to_string(),
            };
        }
        let format = head
            .format
            .as_ref()
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        if format != u64::from(CHANNEL_FORMAT) {
            return ChannelError::UnsupportedFormat { found: format };
        }
        ChannelError::Schema(strict.to_string())
    }

    /// Canonical bytes: pretty JSON and a trailing newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// The rules an index satisfies on its own.
    pub fn validate(&self) -> Result<(), ChannelError> {
        if self.kind != CHANNEL_TYPE {
            return Err(ChannelError::WrongType {
                found: self.kind.clone(),
            });
        }
        if self.format != CHANNEL_FORMAT {
            return Err(ChannelError::UnsupportedFormat {
                found: u64::from(self.format),
            });
        }
        validate_name(&self.app).map_err(|reason| ChannelError::Field {
            field: "app",
            reason,
        })?;
        validate_name(&self.channel).map_err(|reason| ChannelError::Field {
            field: "channel",
            reason,
        })?;
        if let Some(published) = self.published {
            if published >= self.expires {
                return Err(ChannelError::Field {
                    field: "published",
                    reason: format!(
                        "{published} is not before the index's expiry {}",
                        self.expires
                    ),
                });
            }
        }
        let mut ids = HashSet::new();
        for release in &self.releases {
            if !ids.insert(release.id) {
                return Err(ChannelError::DuplicateId(release.id));
            }
            if release.rollout > 100 {
                return Err(ChannelError::Rollout {
                    version: release.version.clone(),
                    rollout: release.rollout,
                });
            }
            validate_deltas(release)?;
        }
        for pair in self.releases.windows(2) {
            if pair[0].version <= pair[1].version {
                return Err(ChannelError::NotNewestFirst {
                    prev: pair[0].version.clone(),
                    next: pair[1].version.clone(),
                });
            }
        }
        Ok(())
    }

    /// The delta listed with `to` that starts from `from`, if any.
    pub fn delta(&self, to: &ReleaseId, from: &ReleaseId) -> Option<&ChannelDelta> {
        self.release(to)?.deltas.iter().find(|d| &d.from == from)
    }

    /// Refuses an index meant for another app or channel.
    pub fn check_identity(&self, app: &str, channel: &str) -> Result<(), ChannelError> {
        if self.app != app {
            return Err(ChannelError::WrongApp {
                expected: app.to_string(),
                found: self.app.clone(),
            });
        }
        if self.channel != channel {
            return Err(ChannelError::WrongChannel {
                expected: channel.to_string(),
                found: self.channel.clone(),
            });
        }
        Ok(())
    }

    /// Whether the index has expired at `now`.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        now >= self.expires
    }

    /// The release with this id, if listed.
    pub fn release(&self, id: &ReleaseId) -> Option<&ChannelRelease> {
        self.releases.iter().find(|r| &r.id == id)
    }

    /// Adds a release in its place (newest first). Refuses a version already
    /// listed with another id: a version names one release forever.
    pub fn insert_release(&mut self, release: ChannelRelease) -> Result<(), String> {
        if let Some(existing) = self.releases.iter().find(|r| r.version == release.version) {
            if existing.id == release.id {
                return Ok(());
            }
            return Err(format!(
                "version {} is already published as {}; publish a new version instead",
                release.version, existing.id
            ));
        }
        let at = self
            .releases
            .iter()
            .position(|r| r.version < release.version)
            .unwrap_or(self.releases.len());
        self.releases.insert(at, release);
        Ok(())
    }
}

/// A release's delta list: at most [`MAX_DELTAS_PER_RELEASE`], each from
/// another release than itself, no base twice.
fn validate_deltas(release: &ChannelRelease) -> Result<(), ChannelError> {
    let refuse = |reason: String| ChannelError::Delta {
        version: release.version.clone(),
        reason,
    };
    if release.deltas.len() > MAX_DELTAS_PER_RELEASE {
        return Err(refuse(format!(
            "lists {} deltas, more than {MAX_DELTAS_PER_RELEASE}",
            release.deltas.len()
        )));
    }
    let mut bases = HashSet::new();
    for delta in &release.deltas {
        if delta.from == release.id {
            return Err(refuse(format!(
                "lists a delta from itself ({})",
                delta.from
            )));
        }
        if !bases.insert(delta.from) {
            return Err(refuse(format!("lists two deltas from {}", delta.from)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(v: &str, seed: &[u8]) -> ChannelRelease {
        ChannelRelease {
            version: v.parse().expect("version"),
            id: ReleaseId::of_bytes(seed),
            size: 10,
            schema_version: 1,
            yanked: false,
            rollout: 100,
            notes: String::new(),
            deltas: Vec::new(),
        }
    }

    fn sample() -> ChannelIndex {
        let mut idx = ChannelIndex::new(
            "bot",
            "stable",
            Timestamp::parse("2030-01-01T00:00:00Z").expect("time"),
        );
        idx.version = 3;
        idx.insert_release(release("1.0.0", b"a")).expect("insert");
        idx.insert_release(release("1.2.0", b"c")).expect("insert");
        idx.insert_release(release("1.1.0", b"b")).expect("insert");
        idx
    }

    #[test]
    fn keeps_newest_first_and_round_trips() {
        let idx = sample();
        let versions: Vec<String> = idx.releases.iter().map(|r| r.version.to_string()).collect();
        assert_eq!(versions, ["1.2.0", "1.1.0", "1.0.0"]);
        assert_eq!(ChannelIndex::parse(&idx.to_bytes()).expect("parse"), idx);
    }

    #[test]
    fn refuses_wrong_type_app_channel_and_order() {
        let mut idx = sample();
        idx.kind = "manifest".into();
        assert!(matches!(
            ChannelIndex::parse(&idx.to_bytes()),
            Err(ChannelError::WrongType { .. })
        ));
        let idx = sample();
        assert!(matches!(
            idx.check_identity("other", "stable"),
            Err(ChannelError::WrongApp { .. })
        ));
        assert!(matches!(
            idx.check_identity("bot", "beta"),
            Err(ChannelError::WrongChannel { .. })
        ));
        let mut idx = sample();
        idx.releases.swap(0, 1);
        assert!(matches!(
            idx.validate(),
            Err(ChannelError::NotNewestFirst { .. })
        ));
        let mut idx = sample();
        assert!(idx.insert_release(release("1.1.0", b"other")).is_err());
    }

    #[test]
    fn published_is_optional_signed_and_before_expiry() {
        let mut idx = sample();
        let bytes = idx.to_bytes();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("published"),
            "an index without the field is written as before"
        );
        idx.published = Some(Timestamp::parse("2029-12-01T00:00:00Z").expect("t"));
        let text = String::from_utf8(idx.to_bytes()).expect("utf-8");
        assert!(
            text.contains("\"published\": \"2029-12-01T00:00:00Z\""),
            "{text}"
        );
        assert_eq!(ChannelIndex::parse(text.as_bytes()).expect("parse"), idx);
        idx.published = Some(idx.expires);
        assert!(matches!(
            ChannelIndex::parse(&idx.to_bytes()),
            Err(ChannelError::Field {
                field: "published",
                ..
            })
        ));
    }

    #[test]
    fn deltas_are_optional_bounded_and_never_from_the_release_itself() {
        let mut idx = sample();
        assert!(
            !String::from_utf8_lossy(&idx.to_bytes()).contains("deltas"),
            "a release without deltas is written as before"
        );
        let to = idx.releases[0].id;
        let from = idx.releases[1].id;
        idx.releases[0].deltas.push(ChannelDelta {
            from,
            size: 42,
            sha256: ReleaseId::of_bytes(b"delta"),
        });
        let parsed = ChannelIndex::parse(&idx.to_bytes()).expect("parse");
        assert_eq!(parsed, idx);
        assert_eq!(parsed.delta(&to, &from).map(|d| d.size), Some(42));
        assert!(parsed.delta(&to, &to).is_none());

        let mut twice = idx.clone();
        let again = twice.releases[0].deltas[0].clone();
        twice.releases[0].deltas.push(again);
        assert!(matches!(twice.validate(), Err(ChannelError::Delta { .. })));
        let mut itself = idx.clone();
        itself.releases[0].deltas[0].from = to;
        assert!(matches!(itself.validate(), Err(ChannelError::Delta { .. })));
        let mut many = idx.clone();
        many.releases[0].deltas = (0..=MAX_DELTAS_PER_RELEASE)
            .map(|i| ChannelDelta {
                from: ReleaseId::of_bytes(&i.to_le_bytes()),
                size: 1,
                sha256: ReleaseId::of_bytes(b"d"),
            })
            .collect();
        assert!(matches!(many.validate(), Err(ChannelError::Delta { .. })));
        let text = String::from_utf8(idx.to_bytes())
            .expect("utf-8")
            .replace("\"size\": 42,", "\"size\": 42, \"extra\": 1,");
        assert!(matches!(
            ChannelIndex::parse(text.as_bytes()),
            Err(ChannelError::Schema(_))
        ));
    }

    #[test]
    fn expiry_is_a_strict_instant() {
        let idx = sample();
        assert!(!idx.is_expired(Timestamp::parse("2029-12-31T23:59:59Z").expect("t")));
        assert!(idx.is_expired(Timestamp::parse("2030-01-01T00:00:00Z").expect("t")));
    }
}

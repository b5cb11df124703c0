//! Where a release comes from (SPEC §4 step 1, Discover): the `SOURCE` of
//! `slipway install SOURCE`, or `[update] source` for `slipway update`.
//!
//! - [`Source::Archive`]: one release archive `X.tar.zst` with its detached
//!   signature `X.tar.zst.minisig` beside it (a file copied to a USB stick).
//! - [`Source::Repo`]: a release repository on a local path or mount point
//!   (`releases/`, `channels/<channel>.json(.minisig)`), or an offline bundle
//!   made by `slipway-pack bundle`, which has the same layout.
//!
//! HTTP(S) repositories arrive in a later version as a third variant
//! (`Http { url }`): it will fetch `channels/<channel>.json` with a
//! conditional GET and download the archive into `downloads/` (the Fetch
//! step), then hand the same [`Candidate`] to the transaction. Everything
//! after discovery is the same for every source: local sources get exactly
//! the checks remote ones get (SPEC §6).
//!
//! For a repository, discovery reads the channel index (capped at
//! [`MAX_METADATA_BYTES`]), verifies its minisign signature against the
//! trusted keys and its trusted comment (`slipway-channel`, with app,
//! channel and index version matching the index), parses it strictly,
//! checks app and channel, refuses an expired index (unless
//! `--allow-expired`), an index version lower than the highest seen for
//! the channel (rollback), and a clock earlier than the latest time seen
//! (a clock set back to revive an expired index). The per-channel trust
//! state lives in `<root>/state/trust.json` and is only advanced after an
//! index passed all of this.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use slipway_formats::channel::{ChannelError, Timestamp};
use slipway_formats::signature::{SignatureError, TrustedComment, CHANNEL_COMMENT};
use slipway_formats::state::{ChannelTrust, TrustState};
use slipway_formats::{
    ChannelIndex, ChannelRelease, KeyId, SignatureFile, TrustedKeys, Version, MAX_METADATA_BYTES,
    MAX_SIGNATURE_BYTES,
};
use thiserror::Error;

use crate::durable;
use crate::layout::Layout;
use crate::state::HostState;
use crate::verify::Expectations;

/// Why a source could not be used or its channel index was refused.
#[derive(Debug, Error)]
pub enum SourceError {
    #[error("{url}: HTTP sources arrive in a later version; mount or copy the repo and point update.source at it (or pass the path to `slipway install`)")]
    Http { url: String },
    #[error("{path} does not exist; give a release archive (X.tar.zst with X.tar.zst.minisig beside it), a release repository or an offline bundle")]
    NotFound { path: PathBuf },
    #[error("{path} is neither a release archive (*.tar.zst) nor a release repository or offline bundle (no channels/ directory in it)")]
    Unrecognized { path: PathBuf },
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{what} {path} is larger than {max} bytes; refused without reading further")]
    TooLarge {
        what: &'static str,
        path: PathBuf,
        max: u64,
    },
    #[error("channel index {path}: signature {signature}: {source}")]
    Signature {
        path: PathBuf,
        signature: PathBuf,
        source: SignatureError,
    },
    #[error("channel index {path}: the signed comment {comment:?} {reason}; the index was not signed by `slipway-pack publish` for this channel and is refused")]
    Comment {
        path: PathBuf,
        comment: String,
        reason: String,
    },
    #[error("channel index {path}: {source}")]
    Index { path: PathBuf, source: ChannelError },
    #[error("channel index {path} expired at {expires} (now {now}); the publisher must re-publish it (`slipway-pack publish` refreshes the expiry), or pass --allow-expired to accept it once")]
    Expired {
        path: PathBuf,
        expires: Timestamp,
        now: Timestamp,
    },
    #[error("channel index {path} has version {found}, lower than version {highest} this host already saw for {key}: an old index is being replayed (rollback attack) or the repository was restored from an old copy; refused")]
    Rollback {
        path: PathBuf,
        key: String,
        found: u64,
        highest: u64,
    },
    #[error("the clock says {now}, earlier than {latest}, a time this host already saw for {key}; fix the clock (timedatectl / NTP) before updating: an index's expiry cannot be trusted with a clock that went back")]
    ClockWentBack {
        key: String,
        now: Timestamp,
        latest: Timestamp,
    },
    #[error("trust state {path} is corrupt ({message}); it guards against replayed indexes: restore it from a backup, or delete it to trust the next valid index")]
    TrustCorrupt { path: PathBuf, message: String },
    #[error("cannot write trust state {path}: {source}; check free space and permissions")]
    TrustWrite { path: PathBuf, source: io::Error },
}

/// A release source, as given on the command line or in `[update] source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// One archive and the signature beside it.
    Archive {
        archive: PathBuf,
        signature: PathBuf,
    },
    /// A repository or offline bundle: `channels/` and `releases/`.
    Repo { dir: PathBuf },
}

impl Source {
    /// Recognises a source: an `http(s)://` URL (refused for now), an
    /// existing directory with a `channels/` directory (repository or
    /// bundle), or an existing file (an archive; its signature is
    /// `<file>.minisig`).
    pub fn parse(spec: &str) -> Result<Source, SourceError> {
        let lower = spec.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            return Err(SourceError::Http {
                url: spec.to_string(),
            });
        }
        let path = PathBuf::from(spec);
        let meta = std::fs::metadata(&path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => SourceError::NotFound { path: path.clone() },
            _ => SourceError::Read {
                what: "source",
                path: path.clone(),
                source,
            },
        })?;
        if meta.is_dir() {
            if path.join("channels").is_dir() {
                return Ok(Source::Repo { dir: path });
            }
            return Err(SourceError::Unrecognized { path });
        }
        if meta.is_file() {
            let mut sig = path.clone().into_os_string();
            sig.push(".minisig");
            return Ok(Source::Archive {
                signature: PathBuf::from(sig),
                archive: path,
            });
        }
        Err(SourceError::Unrecognized { path })
    }

    /// For messages: `archive X` or `repository X`.
    pub fn describe(&self) -> String {
        match self {
            Source::Archive { archive, .. } => format!("archive {}", archive.display()),
            Source::Repo { dir } => format!("repository {}", dir.display()),
        }
    }
}

/// A channel index that passed every check of SPEC §6.
#[derive(Debug, Clone)]
pub struct VerifiedIndex {
    pub index: ChannelIndex,
    pub path: PathBuf,
    pub signer: KeyId,
}

/// A release chosen for installation: where its archive is and what the
/// verifier must find in it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub archive: PathBuf,
    pub signature: PathBuf,
    pub expect: Expectations,
    /// The release's entry in the channel index (repository sources).
    pub listed: Option<ChannelRelease>,
}

/// What discovery found in a repository.
#[derive(Debug, Clone)]
pub enum Discovery {
    /// A release to install.
    Candidate(Box<Candidate>),
    /// Nothing newer to install; `skipped` says why each newer release was
    /// passed over (yanked, bad, outside the rollout).
    UpToDate {
        newest: Option<Version>,
        skipped: Vec<String>,
    },
}

/// What the host knows when it picks a release.
#[derive(Debug, Clone)]
pub struct Selection<'a> {
    /// The running release's version (`None` on a first install).
    pub running: Option<&'a Version>,
    pub state: &'a HostState,
    /// This host's stable id for the rollout bucket (`None`: unknown, so
    /// only fully rolled-out releases are taken).
    pub machine_id: Option<&'a str>,
    pub canary: bool,
    /// `--force`: the bad list does not apply.
    pub force: bool,
}

/// `<dir>/channels/<channel>.json` and its signature.
pub fn index_paths(dir: &Path, channel: &str) -> (PathBuf, PathBuf) {
    let index = dir.join("channels").join(format!("{channel}.json"));
    let mut sig = index.clone().into_os_string();
    sig.push(".minisig");
    (index, PathBuf::from(sig))
}

/// Reads at most `max` bytes of `path`; a longer file is an error.
pub fn read_capped(path: &Path, max: u64, what: &'static str) -> Result<Vec<u8>, SourceError> {
    let read_err = |source| SourceError::Read {
        what,
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > max {
        return Err(SourceError::TooLarge {
            what,
            path: path.to_path_buf(),
            max,
        });
    }
    Ok(bytes)
}

/// Reads and authenticates `channels/<channel>.json` of a repository: the
/// signature by a trusted key over the exact bytes, a `slipway-channel`
/// trusted comment whose app, channel and version equal the index's, a
/// strict parse, and the identity check (`app` is the running app, or
/// `None` on a first install, when the index names it). Freshness is
/// checked separately by [`check_freshness`].
pub fn read_index(
    dir: &Path,
    channel: &str,
    app: Option<&str>,
    keys: &TrustedKeys,
) -> Result<VerifiedIndex, SourceError> {
    let (path, sig_path) = index_paths(dir, channel);
    let bytes = read_capped(&path, MAX_METADATA_BYTES, "channel index")?;
    let sig_bytes = read_capped(&sig_path, MAX_SIGNATURE_BYTES, "channel index signature")?;
    let sig_err = |source| SourceError::Signature {
        path: path.clone(),
        signature: sig_path.clone(),
        source,
    };
    let sig_text = String::from_utf8(sig_bytes).map_err(|_| {
        sig_err(SignatureError::Malformed(
            "the signature file is not UTF-8 text".into(),
        ))
    })?;
    let signature = SignatureFile::parse(&sig_text).map_err(sig_err)?;
    let signer = signature.verify_bytes(keys, &bytes).map_err(sig_err)?.id();
    let comment_text = signature.trusted_comment().to_string();
    let comment_err = |reason: String| SourceError::Comment {
        path: path.clone(),
        comment: comment_text.clone(),
        reason,
    };
    let comment = TrustedComment::parse(&comment_text)
        .map_err(|e| comment_err(format!("is malformed ({e})")))?;
    if comment.kind != CHANNEL_COMMENT {
        return Err(comment_err(format!(
            "is of kind {:?}, not {CHANNEL_COMMENT:?}",
            comment.kind
        )));
    }
    let index = ChannelIndex::parse(&bytes).map_err(|source| SourceError::Index {
        path: path.clone(),
        source,
    })?;
    let signed_version = index.version.to_string();
    for (field, value) in [
        ("app", index.app.as_str()),
        ("channel", index.channel.as_str()),
        ("version", signed_version.as_str()),
    ] {
        let signed = comment
            .field(field)
            .map_err(|_| comment_err(format!("has no {field} field")))?;
        if signed != value {
            return Err(comment_err(format!(
                "says {field} {signed:?} but the index says {value:?}"
            )));
        }
    }
    let app = app.unwrap_or(index.app.as_str()).to_string();
    index
        .check_identity(&app, channel)
        .map_err(|source| SourceError::Index {
            path: path.clone(),
            source,
        })?;
    Ok(VerifiedIndex {
        index,
        path,
        signer,
    })
}

/// The trust-state key of a channel: `<app>/<channel>`.
pub fn trust_key(app: &str, channel: &str) -> String {
    format!("{app}/{channel}")
}

/// Refuses an expired index (unless `allow_expired`), an index version below
/// the highest seen, and a clock earlier than the latest time seen.
pub fn check_freshness(
    verified: &VerifiedIndex,
    trust: &TrustState,
    now: Timestamp,
    allow_expired: bool,
) -> Result<(), SourceError> {
    let index = &verified.index;
    let key = trust_key(&index.app, &index.channel);
    if let Some(seen) = trust.channels.get(&key) {
        if now < seen.latest_time_seen {
            return Err(SourceError::ClockWentBack {
                key,
                now,
                latest: seen.latest_time_seen,
            });
        }
        if index.version < seen.highest_index_version {
            return Err(SourceError::Rollback {
                path: verified.path.clone(),
                key,
                found: index.version,
                highest: seen.highest_index_version,
            });
        }
    }
    if index.is_expired(now) && !allow_expired {
        return Err(SourceError::Expired {
            path: verified.path.clone(),
            expires: index.expires,
            now,
        });
    }
    Ok(())
}

/// Advances the trust state after an index passed [`check_freshness`]: the
/// highest index version and the latest time seen only ever grow.
pub fn advance_trust(trust: &mut TrustState, verified: &VerifiedIndex, now: Timestamp) {
    let index = &verified.index;
    let entry = trust
        .channels
        .entry(trust_key(&index.app, &index.channel))
        .or_insert(ChannelTrust {
            highest_index_version: index.version,
            latest_time_seen: now,
        });
    entry.highest_index_version = entry.highest_index_version.max(index.version);
    entry.latest_time_seen = entry.latest_time_seen.max(now);
}

/// Loads `<root>/state/trust.json` (empty when absent).
pub fn load_trust(layout: &Layout) -> Result<TrustState, SourceError> {
    let path = layout.trust_file();
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| SourceError::TrustCorrupt {
            path,
            message: e.to_string(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(TrustState::default()),
        Err(source) => Err(SourceError::Read {
            what: "trust state",
            path,
            source,
        }),
    }
}

/// Writes `<root>/state/trust.json` durably.
pub fn save_trust(layout: &Layout, trust: &TrustState) -> Result<(), SourceError> {
    let path = layout.trust_file();
    durable::create_dirs(&layout.state_dir())
        .and_then(|()| durable::write_json_atomic(&path, trust))
        .map_err(|source| SourceError::TrustWrite { path, source })
}

/// This host's id for the rollout bucket: `[update] machine_id`, else
/// `/etc/machine-id`. `None` when neither exists.
pub fn machine_id(configured: Option<&str>) -> Option<String> {
    if let Some(id) = configured.map(str::trim).filter(|s| !s.is_empty()) {
        return Some(id.to_string());
    }
    std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Picks the newest release that is not yanked, not on the bad list (unless
/// forced), inside this host's rollout share, and newer than the running
/// one. The reasons newer releases were passed over come back with
/// [`Discovery::UpToDate`].
pub fn select_release<'i>(
    index: &'i ChannelIndex,
    sel: &Selection<'_>,
) -> (Option<&'i ChannelRelease>, Vec<String>) {
    let mut skipped = Vec::new();
    for release in &index.releases {
        if let Some(running) = sel.running {
            if &release.version <= running {
                break;
            }
        }
        let name = format!("{} ({})", release.version, release.id.short());
        if release.yanked {
            skipped.push(format!("{name} is yanked"));
            continue;
        }
        if !sel.force {
            if let Some(bad) = sel.state.bad(&release.id) {
                skipped.push(format!(
                    "{name} is on this host's bad list ({}); `slipway install --force` retries it",
                    bad.reason
                ));
                continue;
            }
        }
        let taken = match sel.machine_id {
            Some(m) => {
                slipway_formats::rollout::takes_release(m, &release.id, release.rollout, sel.canary)
            }
            None => sel.canary || release.rollout >= 100,
        };
        if !taken {
            skipped.push(format!(
                "{name} is rolled out to {}% of hosts and this host is not among them yet",
                release.rollout
            ));
            continue;
        }
        return (Some(release), skipped);
    }
    (None, skipped)
}

/// The candidate for a release listed in a repository's index.
pub fn listed_candidate(dir: &Path, index: &ChannelIndex, release: &ChannelRelease) -> Candidate {
    let releases = dir.join("releases");
    Candidate {
        archive: releases.join(release.id.archive_file_name()),
        signature: releases.join(release.id.signature_file_name()),
        expect: Expectations {
            app: Some(index.app.clone()),
            channel: Some(index.channel.clone()),
            id: Some(release.id),
            max_size: Some(release.size),
        },
        listed: Some(release.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_formats::ReleaseId;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse(s).expect("time")
    }

    fn release(v: &str, seed: &[u8], rollout: u8) -> ChannelRelease {
        ChannelRelease {
            version: v.parse().expect("version"),
            id: ReleaseId::of_bytes(seed),
            size: 1,
            schema_version: 1,
            yanked: false,
            rollout,
            notes: String::new(),
        }
    }

    fn index() -> ChannelIndex {
        let mut idx = ChannelIndex::new("bot", "stable", ts("2030-01-01T00:00:00Z"));
        idx.version = 5;
        for r in [
            release("1.0.0", b"a", 100),
            release("1.1.0", b"b", 100),
            release("1.2.0", b"c", 100),
            release("1.3.0", b"d", 0),
        ] {
            idx.insert_release(r).expect("insert");
        }
        idx
    }

    #[test]
    fn parse_recognises_urls_archives_and_repos() {
        assert!(matches!(
            Source::parse("https://releases.example.com/bot"),
            Err(SourceError::Http { .. })
        ));
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            Source::parse(&dir.path().join("nope").to_string_lossy()),
            Err(SourceError::NotFound { .. })
        ));
        assert!(matches!(
            Source::parse(&dir.path().to_string_lossy()),
            Err(SourceError::Unrecognized { .. })
        ));
        std::fs::create_dir(dir.path().join("channels")).expect("mkdir");
        assert_eq!(
            Source::parse(&dir.path().to_string_lossy()).expect("repo"),
            Source::Repo {
                dir: dir.path().to_path_buf()
            }
        );
        let a = dir.path().join("x.tar.zst");
        std::fs::write(&a, b"x").expect("write");
        match Source::parse(&a.to_string_lossy()).expect("archive") {
            Source::Archive { signature, .. } => {
                assert_eq!(signature, dir.path().join("x.tar.zst.minisig"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn selection_skips_yanked_bad_and_out_of_rollout_releases() {
        let mut idx = index();
        idx.releases[1].yanked = true; // 1.2.0
        let mut state = HostState::default();
        let running: Version = "1.0.0".parse().expect("v");
        let sel = Selection {
            running: Some(&running),
            state: &state,
            machine_id: Some("host-a"),
            canary: false,
            force: false,
        };
        let (pick, skipped) = select_release(&idx, &sel);
        assert_eq!(pick.map(|r| r.version.to_string()), Some("1.1.0".into()));
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        state.mark_bad(
            ReleaseId::of_bytes(b"b"),
            "1.1.0".parse().expect("v"),
            "health",
            ts("2026-01-01T00:00:00Z"),
        );
        let sel = Selection {
            running: Some(&running),
            state: &state,
            machine_id: Some("host-a"),
            canary: false,
            force: false,
        };
        assert!(select_release(&idx, &sel).0.is_none());
        let forced = Selection {
            force: true,
            ..sel.clone()
        };
        assert!(select_release(&idx, &forced).0.is_some());
        let canary = Selection {
            canary: true,
            ..sel
        };
        assert_eq!(
            select_release(&idx, &canary)
                .0
                .map(|r| r.version.to_string()),
            Some("1.3.0".into())
        );
    }

    #[test]
    fn freshness_refuses_expired_replayed_and_clock_rollback() {
        let verified = VerifiedIndex {
            index: index(),
            path: PathBuf::from("channels/stable.json"),
            signer: KeyId([0; 8]),
        };
        let mut trust = TrustState::default();
        let now = ts("2026-01-01T00:00:00Z");
        check_freshness(&verified, &trust, now, false).expect("fresh");
        advance_trust(&mut trust, &verified, now);
        // Same version again is fine.
        check_freshness(&verified, &trust, now, false).expect("equal version");
        let mut old = verified.clone();
        old.index.version = 4;
        assert!(matches!(
            check_freshness(&old, &trust, now, false),
            Err(SourceError::Rollback { .. })
        ));
        assert!(matches!(
            check_freshness(&verified, &trust, ts("2025-12-31T00:00:00Z"), false),
            Err(SourceError::ClockWentBack { .. })
        ));
        let late = ts("2031-01-01T00:00:00Z");
        assert!(matches!(
            check_freshness(&verified, &trust, late, false),
            Err(SourceError::Expired { .. })
        ));
        check_freshness(&verified, &trust, late, true).expect("allowed");
        // Trust never goes down.
        advance_trust(&mut trust, &old, now);
        assert_eq!(trust.channels["bot/stable"].highest_index_version, 5);
    }
}

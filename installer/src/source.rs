//! Where a release comes from (SPEC §4 step 1, Discover): the `SOURCE` of
//! `slipway install SOURCE`, or `[update] source` for `slipway update`.
//!
//! - [`Source::Archive`]: one release archive `X.tar.zst` with its detached
//!   signature `X.tar.zst.minisig` beside it (a file copied to a USB stick).
//! - [`Source::Repo`]: a release repository on a local path or mount point
//!   (`releases/`, `channels/<channel>.json(.minisig)`, `keys/`), or an
//!   offline bundle made by `slipway-pack bundle`, which has the same layout.
//! - [`Source::Http`]: the same repository served over `https://` or
//!   `http://` (any static server, object store or CDN).
//!
//! A repository is read through a [`Repository`], whose two backends only
//! differ in how bytes arrive: read from a file (capped), or fetched with
//! the [`HttpClient`] (capped, the channel index with a conditional GET).
//! After the bytes arrive there is one code path, so a local source gets
//! exactly the checks a remote one gets (SPEC §6):
//!
//! 1. the channel index (capped at [`MAX_METADATA_BYTES`]) must carry a
//!    minisign signature by a trusted key over its exact bytes, with a
//!    `slipway-channel` trusted comment naming the index's app, channel and
//!    version; an index signed by an unknown key is accepted only when
//!    `keys/rotation-<KEYID>.json` introduces that key and is signed by a
//!    trusted one ([`slipway_formats::rotation`]);
//! 2. a strict parse, then the identity check: this host's app and channel;
//! 3. freshness against the per-channel trust state: an index version lower
//!    than the highest seen is a rollback, an expired index a freeze (unless
//!    `--allow-expired`), a clock earlier than the latest signed time seen
//!    (the `published` time of this index or of one accepted before, less
//!    [`CLOCK_SKEW_ALLOWANCE`]) is refused;
//! 4. the release picked is the newest that is not yanked, not on this
//!    host's bad list, inside this host's rollout share and newer than the
//!    running one; its id and signed size bound the archive's verification.
//!
//! The trust state (`<root>/state/trust.json`: highest index version and
//! latest signed time per channel, the keys learned from rotation
//! statements, and the keys retired) and the HTTP index cache
//! (`<root>/state/index-cache/`) are only written after an index passed all
//! of this, and only by commands that hold the lock
//! ([`ReadOptions::persist`]). The trust state moves only on signed data:
//! the local clock is compared with it, never written into it, so a clock
//! that was wrong for one poll cannot lock the host out.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use slipway_formats::channel::{
    authenticate_index, AuthenticatedIndex, ChannelError, IndexAuthError, Timestamp,
};
use slipway_formats::rotation::{verify_rotation, KeyRotation, RotationError, MAX_ROTATION_CHAIN};
use slipway_formats::signature::SignatureError;
use slipway_formats::state::{LearnedKey, RetiredKey, TrustState};
use slipway_formats::{
    ChannelIndex, ChannelRelease, KeyId, TrustedKeys, Version, MAX_METADATA_BYTES,
    MAX_SIGNATURE_BYTES,
};
use slipway_fs::ReadError;
use thiserror::Error;

use crate::durable;
use crate::fetch::{join_url, FetchError, HttpClient, Metadata, Validators};
use crate::layout::Layout;
use crate::state::HostState;
use crate::verify::Expectations;

/// Why a source could not be used or its channel index was refused.
#[derive(Debug, Error)]
pub enum SourceError {
    #[error("{url} is not a usable repository URL: {reason}")]
    BadUrl { url: String, reason: String },
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
    #[error("{what}: {source}")]
    NotRegular {
        what: &'static str,
        source: ReadError,
    },
    #[error("{what}: {source}")]
    Fetch {
        what: &'static str,
        source: FetchError,
    },
    #[error("{what} {location} is missing; check update.source and update.channel")]
    Missing {
        what: &'static str,
        location: String,
    },
    #[error("channel index {location}: signature {signature}: {source}")]
    Signature {
        location: String,
        signature: String,
        source: SignatureError,
    },
    #[error("channel index {location} is signed by key {key_id}, which this host does not trust (trusted: {trusted}), and no valid rotation statement introduces it ({reason}); if the key is yours, add it to update.public_keys, else the repository was tampered with")]
    UntrustedKey {
        location: String,
        key_id: KeyId,
        trusted: String,
        reason: String,
    },
    #[error("channel index {location}: the signed comment {comment:?} {reason}; the index was not signed by `slipway-pack publish` for this channel and is refused")]
    Comment {
        location: String,
        comment: String,
        reason: String,
    },
    #[error("channel index {location}: {source}")]
    Index {
        location: String,
        source: ChannelError,
    },
    #[error("channel index {location} expired at {expires} (now {now}); the publisher must re-publish it (`slipway-pack refresh` or `publish` renews the expiry), or pass --allow-expired to accept it once")]
    Expired {
        location: String,
        expires: Timestamp,
        now: Timestamp,
    },
    #[error("channel index {location} has version {found}, lower than version {highest} this host already saw for {key}: an old index is being replayed (rollback attack) or the repository was restored from an old copy; refused")]
    Rollback {
        location: String,
        key: String,
        found: u64,
        highest: u64,
    },
    #[error("the clock says {now}, earlier than {latest}, when the publisher signed an index of {key} that this host has seen; fix the clock (timedatectl / NTP) before updating: an index's expiry cannot be trusted with a clock that went back")]
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

impl SourceError {
    /// Whether this is the network's passing state (see
    /// [`FetchError::is_transient`]), not a refusal.
    pub fn is_transient(&self) -> bool {
        matches!(self, SourceError::Fetch { source, .. } if source.is_transient())
    }
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
    /// A repository served over HTTP(S); `base` has no trailing slash.
    Http { base: String },
}

impl Source {
    /// Recognises a source: an `http(s)://` URL (a repository), an existing
    /// directory with a `channels/` directory (repository or bundle), or an
    /// existing file (an archive; its signature is `<file>.minisig`).
    pub fn parse(spec: &str) -> Result<Source, SourceError> {
        let lower = spec.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            return parse_url(spec);
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

    /// For messages: `archive X`, `repository X` or `repository URL`.
    pub fn describe(&self) -> String {
        match self {
            Source::Archive { archive, .. } => format!("archive {}", archive.display()),
            Source::Repo { dir } => format!("repository {}", dir.display()),
            Source::Http { base } => format!("repository {base}"),
        }
    }
}

fn parse_url(spec: &str) -> Result<Source, SourceError> {
    let (scheme, rest) = spec.split_once("://").unwrap_or((spec, ""));
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // Never repeat credentials someone put in the URL.
    let shown = match host.rsplit_once('@') {
        Some((_, after)) => format!("{scheme}://***@{after}{}", &rest[host.len()..]),
        None => spec.to_string(),
    };
    let bad = |reason: &str| SourceError::BadUrl {
        url: shown.clone(),
        reason: reason.to_string(),
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if rest.contains(['?', '#']) {
        return Err(bad(
            "a repository URL has no query or fragment: give the directory that holds channels/ and releases/",
        ));
    }
    if host.contains('@') {
        return Err(bad(
            "credentials in the URL would be logged; put a read-only token in update.token_file instead",
        ));
    }
    if spec
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(bad("it contains whitespace"));
    }
    Ok(Source::Http {
        base: spec.trim_end_matches('/').to_string(),
    })
}

/// Where a repository's files are read from. Both backends hand the same
/// bytes to the same checks.
#[derive(Debug, Clone, Copy)]
pub enum Repository<'a> {
    /// A directory: a repository copy, a mount point or an offline bundle.
    Dir(&'a Path),
    /// A repository over HTTP(S).
    Http {
        base: &'a str,
        client: &'a HttpClient,
    },
}

impl Repository<'_> {
    /// Where `rel` (a path inside the repository) is, for messages: a path
    /// or a URL.
    pub fn location(&self, rel: &str) -> String {
        match self {
            Repository::Dir(dir) => dir.join(rel).display().to_string(),
            Repository::Http { base, .. } => join_url(base, rel),
        }
    }

    /// Reads `rel`, capped at `max` bytes; `Ok(None)` when it does not exist.
    fn read_optional(
        &self,
        rel: &str,
        max: u64,
        what: &'static str,
    ) -> Result<Option<Vec<u8>>, SourceError> {
        match self {
            Repository::Dir(dir) => {
                let path = dir.join(rel);
                match read_capped(&path, max, what) {
                    Err(SourceError::Read { source, .. })
                        if source.kind() == io::ErrorKind::NotFound =>
                    {
                        Ok(None)
                    }
                    other => other.map(Some),
                }
            }
            Repository::Http { base, client } => {
                match client.get_metadata(&join_url(base, rel), max, None) {
                    Ok(Metadata::Fetched { bytes, .. }) => Ok(Some(bytes)),
                    Ok(Metadata::NotModified) => Ok(None),
                    Err(e) if e.is_not_found() => Ok(None),
                    Err(source) => Err(SourceError::Fetch { what, source }),
                }
            }
        }
    }

    /// Reads `rel`, capped at `max` bytes; a missing file is an error.
    fn read(&self, rel: &str, max: u64, what: &'static str) -> Result<Vec<u8>, SourceError> {
        match self {
            Repository::Dir(dir) => read_capped(&dir.join(rel), max, what),
            Repository::Http { base, client } => {
                match client.get_metadata(&join_url(base, rel), max, None) {
                    Ok(Metadata::Fetched { bytes, .. }) => Ok(bytes),
                    Ok(Metadata::NotModified) => Err(SourceError::Missing {
                        what,
                        location: self.location(rel),
                    }),
                    Err(source) => Err(SourceError::Fetch { what, source }),
                }
            }
        }
    }
}

/// A channel index that passed every check of SPEC §6.
#[derive(Debug, Clone)]
pub struct VerifiedIndex {
    pub index: ChannelIndex,
    /// Where it was read: a path or a URL.
    pub location: String,
    pub signer: KeyId,
}

/// Where a listed archive is fetched from over HTTP (the Fetch step).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteArchive {
    pub url: String,
    pub signature_url: String,
    /// The size the signed index gives: the download's cap.
    pub size: u64,
}

/// A release chosen for installation: where its archive is (or will be,
/// once fetched), what the verifier must find in it, and the keys it is
/// verified with.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub archive: PathBuf,
    pub signature: PathBuf,
    pub expect: Expectations,
    /// The release's entry in the channel index (repository sources).
    pub listed: Option<ChannelRelease>,
    /// The configured keys and those learned from rotation statements.
    pub keys: TrustedKeys,
    /// For an HTTP repository: fetch `archive` and `signature` from here
    /// first (SPEC §4 step 3).
    pub remote: Option<RemoteArchive>,
    /// The deltas the index lists to this release ([`crate::delta`]).
    pub deltas: Vec<crate::delta::DeltaCandidate>,
}

impl Candidate {
    /// The same candidate, fetched into `dir` instead (a read-only command
    /// downloads into a temporary directory, never into `downloads/`).
    pub fn fetched_into(&self, dir: &Path) -> Candidate {
        let mut c = self.clone();
        if let Some(name) = self.archive.file_name() {
            c.archive = dir.join(name);
        }
        if let Some(name) = self.signature.file_name() {
            c.signature = dir.join(name);
        }
        c
    }
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

/// `channels/<channel>.json` and its signature, relative to a repository.
pub fn index_rel_paths(channel: &str) -> (String, String) {
    let index = format!("channels/{channel}.json");
    let sig = format!("{index}.minisig");
    (index, sig)
}

/// `<dir>/channels/<channel>.json` and its signature.
pub fn index_paths(dir: &Path, channel: &str) -> (PathBuf, PathBuf) {
    let (index, sig) = index_rel_paths(channel);
    (dir.join(index), dir.join(sig))
}

/// Reads at most `max` bytes of the regular file `path` with
/// [`slipway_fs::read_capped`] (no symlink, no FIFO or device, never
/// blocking), naming it `what` in errors.
pub fn read_capped(path: &Path, max: u64, what: &'static str) -> Result<Vec<u8>, SourceError> {
    slipway_fs::read_capped(path, max).map_err(|e| match e {
        ReadError::NotFound { path } => SourceError::Read {
            what,
            path,
            source: io::ErrorKind::NotFound.into(),
        },
        ReadError::TooLarge { path, max } => SourceError::TooLarge { what, path, max },
        ReadError::Io { path, source } => SourceError::Read { what, path, source },
        other => SourceError::NotRegular {
            what,
            source: other,
        },
    })
}

/// The largest trust state (`trust.json`) read: it grows by one entry per
/// channel and per learned key.
pub const MAX_STATE_BYTES: u64 = 4 * 1024 * 1024;

/// Authenticates a channel index from its bytes and its signature's with
/// [`authenticate_index`] (the check `slipway-pack verify` runs too: the
/// signature by a key in `keys` over the exact bytes, a strict parse, and a
/// `slipway-channel` trusted comment that is exactly the index's app,
/// channel and version), then the identity check (`app` is the running app, or
/// `None` on a first install, when the index names it). `location` and
/// `sig_location` name where the bytes came from. Freshness is checked
/// separately by [`check_freshness`].
pub fn verify_index(
    bytes: &[u8],
    sig_bytes: &[u8],
    location: &str,
    sig_location: &str,
    channel: &str,
    app: Option<&str>,
    keys: &TrustedKeys,
) -> Result<VerifiedIndex, SourceError> {
    let sig_err = |source| SourceError::Signature {
        location: location.to_string(),
        signature: sig_location.to_string(),
        source,
    };
    let sig_text = std::str::from_utf8(sig_bytes).map_err(|_| {
        sig_err(SignatureError::Malformed(
            "the signature file is not UTF-8 text".into(),
        ))
    })?;
    let AuthenticatedIndex { index, signer } =
        authenticate_index(bytes, sig_text, keys).map_err(|e| match e {
            IndexAuthError::Signature(source) => sig_err(source),
            IndexAuthError::Comment { comment, reason } => SourceError::Comment {
                location: location.to_string(),
                comment,
                reason,
            },
            IndexAuthError::Index(source) => SourceError::Index {
                location: location.to_string(),
                source,
            },
        })?;
    let app = app.unwrap_or(index.app.as_str()).to_string();
    index
        .check_identity(&app, channel)
        .map_err(|source| SourceError::Index {
            location: location.to_string(),
            source,
        })?;
    Ok(VerifiedIndex {
        index,
        location: location.to_string(),
        signer,
    })
}

/// Reads and authenticates `channels/<channel>.json` of a local repository
/// with `keys` only (no rotation, no trust state): see [`verify_index`].
pub fn read_index(
    dir: &Path,
    channel: &str,
    app: Option<&str>,
    keys: &TrustedKeys,
) -> Result<VerifiedIndex, SourceError> {
    let (path, sig_path) = index_paths(dir, channel);
    let bytes = read_capped(&path, MAX_METADATA_BYTES, "channel index")?;
    let sig_bytes = read_capped(&sig_path, MAX_SIGNATURE_BYTES, "channel index signature")?;
    verify_index(
        &bytes,
        &sig_bytes,
        &path.display().to_string(),
        &sig_path.display().to_string(),
        channel,
        app,
        keys,
    )
}

/// The trust-state key of a channel: `<app>/<channel>`.
pub fn trust_key(app: &str, channel: &str) -> String {
    format!("{app}/{channel}")
}

/// How far the clock may be behind a signed `published` time before it is
/// taken to be wrong: the publisher's and the host's clocks are never quite
/// the same, and a host that polls just after a publish must not refuse it.
pub const CLOCK_SKEW_ALLOWANCE: time::Duration = time::Duration::hours(1);

/// Refuses an expired index (unless `allow_expired`), an index version below
/// the highest seen, and a clock earlier than the latest signed time seen
/// (this index's `published` or that of an index accepted before, less
/// [`CLOCK_SKEW_ALLOWANCE`]). `now` is only compared, never kept.
pub fn check_freshness(
    verified: &VerifiedIndex,
    trust: &TrustState,
    now: Timestamp,
    allow_expired: bool,
) -> Result<(), SourceError> {
    let index = &verified.index;
    let key = trust_key(&index.app, &index.channel);
    let seen = trust.channels.get(&key);
    let floor = seen.and_then(|s| s.latest_signed_time).max(index.published);
    if let Some(latest) = floor {
        if now.0 < latest.0 - CLOCK_SKEW_ALLOWANCE {
            return Err(SourceError::ClockWentBack { key, now, latest });
        }
    }
    if let Some(seen) = seen {
        if index.version < seen.highest_index_version {
            return Err(SourceError::Rollback {
                location: verified.location.clone(),
                key,
                found: index.version,
                highest: seen.highest_index_version,
            });
        }
    }
    if index.is_expired(now) && !allow_expired {
        return Err(SourceError::Expired {
            location: verified.location.clone(),
            expires: index.expires,
            now,
        });
    }
    Ok(())
}

/// Advances the trust state after an index passed [`check_freshness`]: the
/// highest index version and the latest signed time only ever grow, and
/// only by what the signed index says. There is no clock parameter on
/// purpose.
pub fn advance_trust(trust: &mut TrustState, verified: &VerifiedIndex) {
    let index = &verified.index;
    trust
        .channels
        .entry(trust_key(&index.app, &index.channel))
        .or_default()
        .advance(index);
}

/// Loads `<root>/state/trust.json` (empty when absent).
pub fn load_trust(layout: &Layout) -> Result<TrustState, SourceError> {
    let path = layout.trust_file();
    match read_capped(&path, MAX_STATE_BYTES, "trust state") {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| SourceError::TrustCorrupt {
            path,
            message: e.to_string(),
        }),
        Err(SourceError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            Ok(TrustState::default())
        }
        Err(e) => Err(e),
    }
}

/// Writes `<root>/state/trust.json` durably.
pub fn save_trust(layout: &Layout, trust: &TrustState) -> Result<(), SourceError> {
    let path = layout.trust_file();
    durable::create_dirs(&layout.state_dir())
        .and_then(|()| durable::write_json_atomic(&path, trust))
        .map_err(|source| SourceError::TrustWrite { path, source })
}

/// The keys a host trusts now, with the key history brought in line with
/// this run's configuration first ([`TrustState::reconcile_keys`]): the
/// configured keys, and every learned key whose introducer is trusted
/// (transitively), less every retired key. A learned key whose introducer
/// was removed from the configuration is not trusted any more.
pub fn effective_keys(
    configured: &TrustedKeys,
    revoked: &[KeyId],
    trust: &mut TrustState,
) -> (TrustedKeys, Vec<RetiredKey>) {
    let retired = trust.reconcile_keys(configured, revoked);
    (trust.trusted_keys(configured), retired)
}

/// The keys to verify an archive with when there is no channel to read
/// (`slipway install X.tar.zst`): the configured ones and those learned,
/// less the retired ones.
pub fn trusted_keys_for_archives(
    configured: &TrustedKeys,
    revoked: &[KeyId],
    layout: &Layout,
) -> Result<TrustedKeys, SourceError> {
    Ok(effective_keys(configured, revoked, &mut load_trust(layout)?).0)
}

/// `<root>/state/index-cache/<channel>.json`: the last channel index that
/// passed every check, with its signature and the server's validators, so
/// the next poll is a conditional GET and a `304` re-verifies this copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexCache {
    /// The index URL the copy came from; another URL does not use it.
    pub url: String,
    #[serde(flatten)]
    pub validators: Validators,
    /// The index's exact bytes (UTF-8 JSON, as served).
    pub index: String,
    /// The `.minisig` text.
    pub signature: String,
}

fn load_cache(layout: &Layout, channel: &str, url: &str) -> Option<IndexCache> {
    // The cache holds one index and its signature, JSON-escaped.
    let cap = 2 * (MAX_METADATA_BYTES + MAX_SIGNATURE_BYTES) + 64 * 1024;
    let bytes = slipway_fs::read_capped(&layout.index_cache_file(channel), cap).ok()?;
    let cache: IndexCache = serde_json::from_slice(&bytes).ok()?;
    let usable = cache.url == url
        && (cache.validators.etag.is_some() || cache.validators.last_modified.is_some());
    usable.then_some(cache)
}

/// A channel index's bytes and its signature's, and how they arrived.
struct RawIndex {
    bytes: Vec<u8>,
    signature: Vec<u8>,
    location: String,
    sig_location: String,
    /// A fresh copy to cache once it is accepted (HTTP, `200`).
    cache: Option<IndexCache>,
    not_modified: bool,
}

fn fetch_index(repo: &Repository, layout: &Layout, channel: &str) -> Result<RawIndex, SourceError> {
    let (rel, sig_rel) = index_rel_paths(channel);
    let location = repo.location(&rel);
    let sig_location = repo.location(&sig_rel);
    match repo {
        Repository::Dir(_) => Ok(RawIndex {
            bytes: repo.read(&rel, MAX_METADATA_BYTES, "channel index")?,
            signature: repo.read(&sig_rel, MAX_SIGNATURE_BYTES, "channel index signature")?,
            location,
            sig_location,
            cache: None,
            not_modified: false,
        }),
        Repository::Http { client, .. } => {
            let cached = load_cache(layout, channel, &location);
            let fetched = client
                .get_metadata(
                    &location,
                    MAX_METADATA_BYTES,
                    cached.as_ref().map(|c| &c.validators),
                )
                .map_err(|source| SourceError::Fetch {
                    what: "channel index",
                    source,
                })?;
            match (fetched, cached) {
                (Metadata::NotModified, Some(cache)) => Ok(RawIndex {
                    bytes: cache.index.into_bytes(),
                    signature: cache.signature.into_bytes(),
                    location,
                    sig_location,
                    cache: None,
                    not_modified: true,
                }),
                (Metadata::NotModified, None) => Err(SourceError::Missing {
                    what: "channel index",
                    location,
                }),
                (Metadata::Fetched { bytes, validators }, _) => {
                    let signature =
                        repo.read(&sig_rel, MAX_SIGNATURE_BYTES, "channel index signature")?;
                    let cache = match (
                        String::from_utf8(bytes.clone()),
                        String::from_utf8(signature.clone()),
                    ) {
                        (Ok(index), Ok(sig))
                            if validators.etag.is_some() || validators.last_modified.is_some() =>
                        {
                            Some(IndexCache {
                                url: location.clone(),
                                validators,
                                index,
                                signature: sig,
                            })
                        }
                        _ => None,
                    };
                    Ok(RawIndex {
                        bytes,
                        signature,
                        location,
                        sig_location,
                        cache,
                        not_modified: false,
                    })
                }
            }
        }
    }
}

/// What [`read_channel`] needs to know.
#[derive(Debug, Clone)]
pub struct ReadOptions<'a> {
    pub layout: &'a Layout,
    pub channel: &'a str,
    /// The app this host runs (`None` on a first install).
    pub app: Option<&'a str>,
    /// `[update] public_keys`.
    pub configured_keys: &'a TrustedKeys,
    /// `[update] revoked_keys`.
    pub revoked_keys: &'a [KeyId],
    pub now: Timestamp,
    /// `--allow-expired`: accept an expired index (never a lower version).
    pub allow_expired: bool,
    /// Write the trust state, learned keys and the index cache (commands
    /// that hold the lock); read-only commands never write.
    pub persist: bool,
}

/// A channel index read from a repository and accepted.
#[derive(Debug, Clone)]
pub struct ChannelRead {
    pub verified: VerifiedIndex,
    /// The keys to verify the chosen archive with: the configured ones and
    /// every key learned from rotation statements.
    pub keys: TrustedKeys,
    /// The server answered `304 Not Modified`; the cached copy was checked.
    pub not_modified: bool,
    /// Keys learned from rotation statements on this read.
    pub learned: Vec<LearnedKey>,
    /// Keys retired on this read: no longer listed, revoked, or introduced
    /// by one of those.
    pub retired: Vec<RetiredKey>,
}

/// Reads `channels/<channel>.json` from `repo` and runs every check of
/// SPEC §6 on it (see the module docs), learning keys from rotation
/// statements when the index is signed by a key this host does not trust
/// yet. With `opts.persist`, the trust state advances, learned keys are
/// kept and a freshly fetched index is cached, all only after every check
/// passed; a refused index changes nothing. Keys the configuration no
/// longer trusts are retired in the trust state first, whatever the index.
pub fn read_channel(repo: &Repository, opts: &ReadOptions) -> Result<ChannelRead, SourceError> {
    let mut trust = load_trust(opts.layout)?;
    let before = trust.clone();
    let (mut keys, retired) = effective_keys(opts.configured_keys, opts.revoked_keys, &mut trust);
    if opts.persist && trust != before {
        // The configuration changed which keys are trusted: that is kept
        // whatever the repository serves, so a revocation holds even if
        // every index until it is dropped from the configuration is refused.
        save_trust(opts.layout, &trust)?;
    }
    let mut raw = fetch_index(repo, opts.layout, opts.channel)?;
    let mut learned = Vec::new();
    let verified = match authenticate(repo, &raw, &mut keys, &trust, opts, &mut learned) {
        // The index and its signature are two reads: a publish that lands
        // between them gives a new index with the old signature (or the
        // reverse). Read the pair again, once, before refusing it.
        Err(e) if !raw.not_modified && is_torn_pair(&e) => {
            std::thread::sleep(TORN_PAIR_PAUSE);
            raw = fetch_index(repo, opts.layout, opts.channel)?;
            learned.clear();
            authenticate(repo, &raw, &mut keys, &trust, opts, &mut learned)?
        }
        other => other?,
    };
    check_freshness(&verified, &trust, opts.now, opts.allow_expired)?;
    if opts.persist {
        advance_trust(&mut trust, &verified);
        for key in &learned {
            if !trust.learned_keys.iter().any(|k| k.key_id == key.key_id) {
                trust.learned_keys.push(key.clone());
            }
        }
        save_trust(opts.layout, &trust)?;
        if let Some(cache) = &raw.cache {
            let path = opts.layout.index_cache_file(opts.channel);
            durable::create_dirs(&opts.layout.index_cache_dir())
                .and_then(|()| durable::write_json_atomic(&path, cache))
                .map_err(|source| SourceError::TrustWrite { path, source })?;
        }
    }
    Ok(ChannelRead {
        verified,
        keys,
        not_modified: raw.not_modified,
        learned,
        retired,
    })
}

/// How long to wait before reading an index and signature pair again that
/// did not match: a publish writes the two within milliseconds.
const TORN_PAIR_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);

/// Whether `e` is what a pair read across a publish gives: a signature
/// that does not match the bytes, or a signed comment for another version.
fn is_torn_pair(e: &SourceError) -> bool {
    matches!(
        e,
        SourceError::Signature {
            source: SignatureError::Invalid { .. },
            ..
        } | SourceError::Comment { .. }
    )
}

/// Verifies a channel index's bytes against its signature with `keys`,
/// learning keys from rotation statements when it is signed by one this
/// host does not trust yet.
fn authenticate(
    repo: &Repository,
    raw: &RawIndex,
    keys: &mut TrustedKeys,
    trust: &TrustState,
    opts: &ReadOptions,
    learned: &mut Vec<LearnedKey>,
) -> Result<VerifiedIndex, SourceError> {
    let verify = |keys: &TrustedKeys| {
        verify_index(
            &raw.bytes,
            &raw.signature,
            &raw.location,
            &raw.sig_location,
            opts.channel,
            opts.app,
            keys,
        )
    };
    match verify(keys) {
        Err(SourceError::Signature {
            source: SignatureError::UnknownKey { key_id, trusted },
            ..
        }) => match learn_key(repo, key_id, keys, trust, opts, learned, 0) {
            Ok(()) => verify(keys),
            Err(LearnError::Refused(reason)) => Err(SourceError::UntrustedKey {
                location: raw.location.clone(),
                key_id,
                trusted,
                reason,
            }),
            Err(LearnError::Source(e)) => Err(e),
        },
        other => other,
    }
}

enum LearnError {
    /// The statement is missing or does not verify: the key stays unknown.
    Refused(String),
    /// The repository could not be read (network, I/O).
    Source(SourceError),
}

/// Learns `key_id` from `keys/rotation-<key_id>.json`, following the chain
/// of introducers back to a trusted key (at most [`MAX_ROTATION_CHAIN`]).
/// A retired key is never learned, whoever vouches for it: nothing is even
/// fetched for it.
fn learn_key(
    repo: &Repository,
    key_id: KeyId,
    keys: &mut TrustedKeys,
    trust: &TrustState,
    opts: &ReadOptions,
    learned: &mut Vec<LearnedKey>,
    depth: usize,
) -> Result<(), LearnError> {
    if let Some(retired) = trust.retired(key_id) {
        return Err(LearnError::Refused(format!(
            "key {key_id} is retired on this host ({}), and a retired key is never learned again from a rotation statement; list it in update.public_keys only if you trust it again",
            retired.reason
        )));
    }
    if depth >= MAX_ROTATION_CHAIN {
        return Err(LearnError::Refused(format!(
            "the chain of rotation statements is longer than {MAX_ROTATION_CHAIN}"
        )));
    }
    let rel = format!("keys/{}", KeyRotation::file_name(key_id));
    let sig_rel = format!("keys/{}", KeyRotation::signature_file_name(key_id));
    let location = repo.location(&rel);
    let Some(bytes) = repo
        .read_optional(&rel, MAX_METADATA_BYTES, "key rotation statement")
        .map_err(LearnError::Source)?
    else {
        return Err(LearnError::Refused(format!("there is no {location}")));
    };
    let Some(sig) = repo
        .read_optional(&sig_rel, MAX_SIGNATURE_BYTES, "key rotation signature")
        .map_err(LearnError::Source)?
    else {
        return Err(LearnError::Refused(format!(
            "{location} has no signature beside it"
        )));
    };
    let sig_text = String::from_utf8(sig)
        .map_err(|_| LearnError::Refused(format!("the signature of {location} is not text")))?;
    let verified = match verify_rotation(&bytes, &sig_text, keys, key_id, opts.app) {
        Ok(v) => v,
        Err(RotationError::Signature(SignatureError::UnknownKey { key_id: intro, .. }))
            if intro != key_id =>
        {
            learn_key(repo, intro, keys, trust, opts, learned, depth + 1).map_err(|e| match e {
                LearnError::Refused(reason) => LearnError::Refused(format!(
                    "{location} is signed by key {intro}, which is not trusted either: {reason}"
                )),
                other => other,
            })?;
            verify_rotation(&bytes, &sig_text, keys, key_id, opts.app)
                .map_err(|e| LearnError::Refused(format!("{location}: {e}")))?
        }
        Err(e) => return Err(LearnError::Refused(format!("{location}: {e}"))),
    };
    keys.add(verified.new_key.clone());
    learned.push(LearnedKey {
        key: verified.new_key.to_base64().to_string(),
        key_id: verified.new_key.id().to_string(),
        introduced_by: verified.introduced_by.to_string(),
        app: verified.statement.app.clone(),
        learned_at: opts.now,
    });
    Ok(())
}

/// This host's id for the rollout bucket: `[update] machine_id`, else
/// `/etc/machine-id`. `None` when neither exists.
pub fn machine_id(configured: Option<&str>) -> Option<String> {
    if let Some(id) = configured.map(str::trim).filter(|s| !s.is_empty()) {
        return Some(id.to_string());
    }
    slipway_fs::read_text_capped(Path::new("/etc/machine-id"), 4096)
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
            let bucket = sel.machine_id.map_or_else(
                || "this host has no machine id".to_string(),
                |m| {
                    format!(
                        "this host's bucket is {:.2}%",
                        f64::from(slipway_formats::rollout::bucket(m, &release.id)) / 100.0
                    )
                },
            );
            skipped.push(format!(
                "{name} is not in rollout for this host yet (rolled out to {}% of hosts; {bucket}; `canary = true` takes every release)",
                release.rollout
            ));
            continue;
        }
        return (Some(release), skipped);
    }
    (None, skipped)
}

/// The candidate for a release listed in a repository's index: in the
/// repository itself for a directory, to be fetched into `downloads` for
/// HTTP.
pub fn listed_candidate(
    repo: &Repository,
    index: &ChannelIndex,
    release: &ChannelRelease,
    keys: &TrustedKeys,
    downloads: &Path,
) -> Candidate {
    let archive_rel = format!("releases/{}", release.id.archive_file_name());
    let sig_rel = format!("releases/{}", release.id.signature_file_name());
    let (archive, signature, remote) = match repo {
        Repository::Dir(dir) => (dir.join(&archive_rel), dir.join(&sig_rel), None),
        Repository::Http { .. } => (
            downloads.join(release.id.archive_file_name()),
            downloads.join(release.id.signature_file_name()),
            Some(RemoteArchive {
                url: repo.location(&archive_rel),
                signature_url: repo.location(&sig_rel),
                size: release.size,
            }),
        ),
    };
    let location = |rel: &str| repo.location(rel);
    let dir = match repo {
        Repository::Dir(dir) => Some(*dir),
        Repository::Http { .. } => None,
    };
    let deltas = crate::delta::DeltaCandidate::listed(
        &release.id,
        &release.deltas,
        &location,
        dir,
        downloads,
    );
    Candidate {
        archive,
        signature,
        expect: Expectations {
            app: Some(index.app.clone()),
            channel: Some(index.channel.clone()),
            id: Some(release.id),
            max_size: Some(release.size),
        },
        listed: Some(release.clone()),
        keys: keys.clone(),
        remote,
        deltas,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_formats::{PublicKey, ReleaseId};

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
            deltas: Vec::new(),
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
        assert_eq!(
            Source::parse("https://releases.example.com/bot/").expect("url"),
            Source::Http {
                base: "https://releases.example.com/bot".into()
            }
        );
        for bad in [
            "https://",
            "https://user:pw@host/repo",
            "http://host/repo?x=1",
        ] {
            assert!(
                matches!(Source::parse(bad), Err(SourceError::BadUrl { .. })),
                "{bad}"
            );
        }
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
        let mut verified = VerifiedIndex {
            index: index(),
            location: "channels/stable.json".into(),
            signer: KeyId([0; 8]),
        };
        verified.index.published = Some(ts("2026-01-01T00:00:00Z"));
        let mut trust = TrustState::default();
        let now = ts("2026-01-01T00:10:00Z");
        check_freshness(&verified, &trust, now, false).expect("fresh");
        advance_trust(&mut trust, &verified);
        // Same version again is fine.
        check_freshness(&verified, &trust, now, false).expect("equal version");
        let mut old = verified.clone();
        old.index.version = 4;
        assert!(matches!(
            check_freshness(&old, &trust, now, false),
            Err(SourceError::Rollback { .. })
        ));
        // A clock behind the signed time, beyond the allowance; within it
        // is the publisher's and the host's clocks differing a little.
        assert!(matches!(
            check_freshness(&verified, &trust, ts("2025-12-31T00:00:00Z"), false),
            Err(SourceError::ClockWentBack { .. })
        ));
        check_freshness(&verified, &trust, ts("2025-12-31T23:30:00Z"), false)
            .expect("within the allowance");
        // The index's own signed time counts before it was ever accepted.
        assert!(matches!(
            check_freshness(
                &verified,
                &TrustState::default(),
                ts("1970-01-02T00:00:00Z"),
                false
            ),
            Err(SourceError::ClockWentBack { .. })
        ));
        let late = ts("2031-01-01T00:00:00Z");
        assert!(matches!(
            check_freshness(&verified, &trust, late, false),
            Err(SourceError::Expired { .. })
        ));
        check_freshness(&verified, &trust, late, true).expect("allowed");
        // Trust never goes down.
        advance_trust(&mut trust, &old);
        assert_eq!(trust.channels["bot/stable"].highest_index_version, 5);
    }

    #[test]
    fn a_clock_far_ahead_for_one_poll_moves_no_trust_state() {
        let mut verified = VerifiedIndex {
            index: index(),
            location: "channels/stable.json".into(),
            signer: KeyId([0; 8]),
        };
        verified.index.published = Some(ts("2026-01-01T00:00:00Z"));
        verified.index.expires = ts("2026-01-31T00:00:00Z");
        let mut trust = TrustState::default();
        let ahead = ts("2026-01-21T00:00:00Z");
        check_freshness(&verified, &trust, ahead, false).expect("valid 20 days ahead");
        advance_trust(&mut trust, &verified);
        // The clock is right again, and the publisher signs a newer index.
        let right = ts("2026-01-02T00:00:00Z");
        let mut newer = verified.clone();
        newer.index.version += 1;
        newer.index.published = Some(ts("2026-01-01T23:00:00Z"));
        check_freshness(&newer, &trust, right, false).expect("accepted at the right time");
        // What slipway wrote before (the local clock, 20 days ahead) is
        // read and ignored.
        let old: TrustState = serde_json::from_str(
            r#"{"channels":{"bot/stable":{"highest_index_version":5,"latest_time_seen":"2026-01-21T00:00:00Z"}}}"#,
        )
        .expect("old trust.json");
        check_freshness(&newer, &old, right, false).expect("the old local time is ignored");
    }

    #[test]
    fn learned_keys_are_trusted_only_through_a_trusted_introducer() {
        const A: &str = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";
        let a = PublicKey::from_base64(A).expect("a");
        // A second key: the same bytes with another key id.
        let mut raw = base64_decode(A);
        raw[2] ^= 0xff;
        let b = PublicKey::from_base64(&base64_encode(&raw)).expect("b");
        let learned = |key: &PublicKey, by: &PublicKey| LearnedKey {
            key: key.to_base64().to_string(),
            key_id: key.id().to_string(),
            introduced_by: by.id().to_string(),
            app: "bot".into(),
            learned_at: ts("2026-01-01T00:00:00Z"),
        };
        let mut trust = TrustState {
            learned_keys: vec![learned(&b, &a)],
            ..TrustState::default()
        };
        let with_a = TrustedKeys::new(vec![a.clone()]);
        let (keys, _) = effective_keys(&with_a, &[], &mut trust);
        assert!(keys.find(b.id()).is_some());
        // Removing A from the configuration drops what A introduced.
        let without_a = TrustedKeys::default();
        let (keys, retired) = effective_keys(&without_a, &[], &mut trust);
        assert!(keys.find(b.id()).is_none());
        assert_eq!(retired.len(), 2, "{retired:?}");
    }

    fn base64_decode(s: &str) -> Vec<u8> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .expect("base64")
    }

    fn base64_encode(b: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(b)
    }
}

//! The release repository (SPEC §2) and the commands that change it:
//! `publish`, `yank`, `refresh`.
//!
//! ```text
//! <repo>/releases/<sha256>.tar.zst(.minisig)
//! <repo>/channels/<channel>.json(.minisig)
//! <repo>/keys/<KEYID>.pub
//! ```
//!
//! Every change to a channel index verifies the current index with the
//! signing key's own public key first (an index signed by another key is
//! never silently extended), bumps `version` by one, sets `expires`, signs
//! the new index and writes the index and its signature with temp file,
//! fsync, rename, fsync of the directory.

use std::fs;
use std::io::Read;

use slipway_fs::{open_regular, read_capped_optional};
use std::path::{Path, PathBuf};
use std::time::Duration;

use slipway_formats::channel::{authenticate_index, AuthenticatedIndex, IndexAuthError, Timestamp};
use slipway_formats::manifest::validate_name;
use slipway_formats::signature::TrustedComment;
use slipway_formats::{
    ChannelIndex, ChannelRelease, KeyId, ReleaseId, TrustedKeys, MAX_METADATA_BYTES,
    MAX_SIGNATURE_BYTES,
};

use crate::error::{PackError, Result};
use crate::keys::SigningKey;
use crate::verify::{verify_archive, VerifiedArchive};
use slipway_fs::durable;

/// The default lifetime of a freshly signed channel index.
pub const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(30 * 24 * 3600);

/// A release repository rooted at a directory.
#[derive(Debug, Clone)]
pub struct Repo {
    root: PathBuf,
}

impl Repo {
    /// The repository at `root` (which may not exist yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Repo { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<repo>/releases`.
    pub fn releases_dir(&self) -> PathBuf {
        self.root.join("releases")
    }

    /// `<repo>/channels`.
    pub fn channels_dir(&self) -> PathBuf {
        self.root.join("channels")
    }

    /// `<repo>/keys`.
    pub fn keys_dir(&self) -> PathBuf {
        self.root.join("keys")
    }

    /// `<repo>/releases/<hex>.tar.zst`.
    pub fn archive_path(&self, id: &ReleaseId) -> PathBuf {
        self.releases_dir().join(id.archive_file_name())
    }

    /// `<repo>/releases/<hex>.tar.zst.minisig`.
    pub fn signature_path(&self, id: &ReleaseId) -> PathBuf {
        self.releases_dir().join(id.signature_file_name())
    }

    /// `<repo>/channels/<channel>.json`.
    pub fn channel_path(&self, channel: &str) -> PathBuf {
        self.channels_dir().join(format!("{channel}.json"))
    }

    /// `<repo>/channels/<channel>.json.minisig`.
    pub fn channel_signature_path(&self, channel: &str) -> PathBuf {
        self.channels_dir().join(format!("{channel}.json.minisig"))
    }

    /// The channels that have an index, sorted.
    pub fn channels(&self) -> Result<Vec<String>> {
        let dir = self.channels_dir();
        let read = match fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(PackError::io("list", &dir)(e)),
        };
        let mut out = Vec::new();
        for item in read {
            let item = item.map_err(PackError::io("list", &dir))?;
            if let Some(name) = item
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
            {
                out.push(name.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Reads and verifies `channels/<channel>.json`: its signature by one of
    /// `keys`, its format, its app and channel, and that the signed trusted
    /// comment names the same app, channel and version. `Ok(None)` when the
    /// channel has no index yet.
    pub fn read_channel(&self, channel: &str, keys: &TrustedKeys) -> Result<Option<SignedIndex>> {
        validate_name(channel).map_err(|r| PackError::channel(channel, r))?;
        let path = self.channel_path(channel);
        let Some(bytes) = read_capped_optional(&path, MAX_METADATA_BYTES)? else {
            return Ok(None);
        };
        let sig_path = self.channel_signature_path(channel);
        let sig_text = read_capped_optional(&sig_path, MAX_SIGNATURE_BYTES)?.ok_or_else(|| {
            PackError::verify(
                &sig_path,
                "missing: the channel index has no signature beside it",
            )
        })?;
        let sig_text = String::from_utf8(sig_text)
            .map_err(|_| PackError::verify(&sig_path, "signature file is not UTF-8"))?;
        // The same authentication a host runs (slipway_formats::channel).
        let AuthenticatedIndex { index, signer } = authenticate_index(&bytes, &sig_text, keys)
            .map_err(|e| match e {
                IndexAuthError::Comment { .. } => PackError::verify(&sig_path, e.to_string()),
                other => PackError::verify(&path, other.to_string()),
            })?;
        let key_id = signer;
        if index.channel != channel {
            return Err(PackError::verify(
                &path,
                format!(
                    "the index is for channel {:?}, but the file is named for {channel:?}",
                    index.channel
                ),
            ));
        }
        Ok(Some(SignedIndex {
            index,
            key_id,
            path,
        }))
    }

    /// Signs `index` and writes it and its signature into `channels/`.
    pub fn write_channel(&self, key: &SigningKey, index: &ChannelIndex) -> Result<PathBuf> {
        index
            .validate()
            .map_err(|e| PackError::channel(&index.channel, e.to_string()))?;
        let bytes = index.to_bytes();
        if bytes.len() as u64 > MAX_METADATA_BYTES {
            return Err(PackError::channel(
                &index.channel,
                format!(
                    "the index would be {} bytes, over the {MAX_METADATA_BYTES} hosts accept; publish with --keep N to list only the newest N releases",
                    bytes.len()
                ),
            ));
        }
        let signature = sign_channel_index(key, index)?;
        let dir = self.channels_dir();
        durable::create_dirs(&dir).map_err(PackError::io("create directory", &dir))?;
        let path = self.channel_path(&index.channel);
        let sig_path = self.channel_signature_path(&index.channel);
        // Both files are complete and fsynced before either is renamed, so the
        // window in which a reader sees a mismatched pair is two renames wide
        // (and a mismatched pair fails verification rather than misleads).
        let mut temp = durable::temp_file_in(&dir)
            .map_err(PackError::io("create a temporary file in", &dir))?;
        std::io::Write::write_all(&mut temp, &bytes)
            .map_err(PackError::io("write", temp.path()))?;
        let mut sig_temp = durable::temp_file_in(&dir)
            .map_err(PackError::io("create a temporary file in", &dir))?;
        std::io::Write::write_all(&mut sig_temp, signature.as_bytes())
            .map_err(PackError::io("write", sig_temp.path()))?;
        durable::persist(temp, &path, durable::PUBLISHED_MODE)
            .map_err(PackError::io("write", &path))?;
        durable::persist(sig_temp, &sig_path, durable::PUBLISHED_MODE)
            .map_err(PackError::io("write", &sig_path))?;
        durable::fsync_dir(&dir).map_err(PackError::io("fsync directory", &dir))?;
        Ok(path)
    }

    /// Writes `keys/<KEYID>.pub` for `key` unless it is there already.
    pub fn ensure_public_key(&self, key: &SigningKey) -> Result<PathBuf> {
        let dir = self.keys_dir();
        let path = dir.join(format!("{}.pub", key.key_id()));
        if fs::symlink_metadata(&path).is_err() {
            durable::create_dirs(&dir).map_err(PackError::io("create directory", &dir))?;
            durable::write_atomic_mode(
                &path,
                key.public_key().to_pub_file().as_bytes(),
                durable::PUBLISHED_MODE,
            )
            .map_err(PackError::io("write", &path))?;
        }
        Ok(path)
    }

    /// Resolves a RELEASE argument: a release id (`sha256:<hex>`), bare hex,
    /// or the path of an archive. An archive outside this repository is
    /// verified with `keys` and copied (with its signature) into `releases/`.
    pub fn resolve_release(&self, arg: &str, keys: &TrustedKeys) -> Result<ReleaseId> {
        if let Ok(id) = ReleaseId::parse_loose(arg) {
            if self.archive_path(&id).exists() {
                return Ok(id);
            }
            if !Path::new(arg).exists() {
                return Err(PackError::Release {
                    id,
                    message: format!(
                        "no archive at {}; build it with --out {} or pass the archive's path",
                        self.archive_path(&id).display(),
                        self.root.display()
                    ),
                });
            }
        }
        let path = Path::new(arg);
        if !path.is_file() {
            return Err(PackError::Usage(format!(
                "{arg:?} is neither a release id (sha256:<hex>) nor an archive file"
            )));
        }
        let id = archive_id_from_name(path)?;
        let inside = match (
            fs::canonicalize(durable::parent_dir(path)),
            fs::canonicalize(self.releases_dir()),
        ) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if !inside {
            self.import_archive(path, keys)?;
        }
        Ok(id)
    }

    /// Verifies the archive at `path` (named `<hex>.tar.zst`, signature
    /// beside it) with `keys` and copies both into `releases/`.
    pub fn import_archive(&self, path: &Path, keys: &TrustedKeys) -> Result<VerifiedArchive> {
        let verified = verify_archive(path, keys)?;
        let dir = self.releases_dir();
        durable::create_dirs(&dir).map_err(PackError::io("create directory", &dir))?;
        let sig_src = signature_path_of(path);
        for (src, dst) in [
            (path.to_path_buf(), self.archive_path(&verified.id)),
            (sig_src, self.signature_path(&verified.id)),
        ] {
            let mut temp = durable::temp_file_in(&dir)
                .map_err(PackError::io("create a temporary file in", &dir))?;
            let mut input = open_regular(&src)?;
            std::io::copy(&mut input, temp.as_file_mut()).map_err(PackError::io("copy", &src))?;
            durable::persist(temp, &dst, durable::PUBLISHED_MODE)
                .map_err(PackError::io("write", &dst))?;
        }
        durable::fsync_dir(&dir).map_err(PackError::io("fsync directory", &dir))?;
        Ok(verified)
    }
}

impl Repo {
    /// Signs an arbitrary file as the release archive of `app` `version`
    /// `channel` and adds it to `releases/` under its sha256 name, with the
    /// same trusted comment `build` writes. Nothing about the contents is
    /// checked: this is for tests that need hostile archives signed by a
    /// trusted key (an attacker who holds the key, or a packager bug), so
    /// that the installer's own checks are what refuses them.
    pub fn add_signed_archive(
        &self,
        key: &SigningKey,
        source: &Path,
        app: &str,
        version: &str,
        channel: &str,
    ) -> Result<ReleaseId> {
        use sha2::Digest;
        let dir = self.releases_dir();
        durable::create_dirs(&dir).map_err(PackError::io("create directory", &dir))?;
        let mut temp = durable::temp_file_in(&dir)
            .map_err(PackError::io("create a temporary file in", &dir))?;
        let mut input = open_regular(source)?;
        let mut sha = sha2::Sha256::new();
        let mut prehash = crate::keys::Prehasher::new();
        let mut buf = vec![0u8; crate::build::BUFFER_SIZE];
        loop {
            let n = input
                .read(&mut buf)
                .map_err(PackError::io("read", source))?;
            if n == 0 {
                break;
            }
            sha.update(&buf[..n]);
            prehash.update(&buf[..n]);
            std::io::Write::write_all(&mut temp, &buf[..n])
                .map_err(PackError::io("write", temp.path()))?;
        }
        let id = ReleaseId::from_digest(sha.finalize().into());
        let comment = TrustedComment::for_release(app, version, channel, &id).to_string();
        let signature = key.sign_prehashed(&prehash.finalize(), &comment)?;
        let mut sig_temp = durable::temp_file_in(&dir)
            .map_err(PackError::io("create a temporary file in", &dir))?;
        std::io::Write::write_all(&mut sig_temp, signature.as_bytes())
            .map_err(PackError::io("write", sig_temp.path()))?;
        durable::persist(temp, &self.archive_path(&id), durable::PUBLISHED_MODE)
            .map_err(PackError::io("write", &self.archive_path(&id)))?;
        durable::persist(sig_temp, &self.signature_path(&id), durable::PUBLISHED_MODE)
            .map_err(PackError::io("write", &self.signature_path(&id)))?;
        durable::fsync_dir(&dir).map_err(PackError::io("fsync directory", &dir))?;
        Ok(id)
    }
}

/// A channel index whose signature verified.
#[derive(Debug, Clone)]
pub struct SignedIndex {
    pub index: ChannelIndex,
    /// The key that signed it.
    pub key_id: KeyId,
    pub path: PathBuf,
}

/// The text of the `.minisig` of a channel index, with the trusted comment
/// [`TrustedComment::for_channel`].
pub fn sign_channel_index(key: &SigningKey, index: &ChannelIndex) -> Result<String> {
    let comment =
        TrustedComment::for_channel(&index.app, &index.channel, index.version).to_string();
    key.sign_bytes(&index.to_bytes(), &comment)
}

/// `<archive>.minisig`.
pub fn signature_path_of(archive: &Path) -> PathBuf {
    let mut name = archive.as_os_str().to_os_string();
    name.push(".minisig");
    PathBuf::from(name)
}

/// The release id an archive's file name claims: `<hex>.tar.zst`.
pub fn archive_id_from_name(path: &Path) -> Result<ReleaseId> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    name.strip_suffix(".tar.zst")
        .and_then(|hex| ReleaseId::parse_loose(hex).ok())
        .ok_or_else(|| {
            PackError::verify(
                path,
                "an archive's file name must be <sha256 hex>.tar.zst, as `slipway-pack build` writes it",
            )
        })
}

/// How `publish`, `yank` and `refresh` sign the new index.
#[derive(Debug, Clone)]
pub struct IndexOptions {
    /// The channel to change.
    pub channel: String,
    /// `expires` = now + this.
    pub expires_in: Duration,
    /// "now"; `None` is the system clock. Tests pass a fixed instant.
    pub now: Option<Timestamp>,
}

impl IndexOptions {
    /// The defaults: expires in [`DEFAULT_EXPIRES_IN`], the system clock.
    pub fn new(channel: impl Into<String>) -> Self {
        IndexOptions {
            channel: channel.into(),
            expires_in: DEFAULT_EXPIRES_IN,
            now: None,
        }
    }

    /// The signing time, in whole seconds: the index's `published`.
    fn now(&self) -> Timestamp {
        self.now.unwrap_or_else(|| {
            let now = time::OffsetDateTime::now_utc();
            Timestamp(now.replace_nanosecond(0).unwrap_or(now))
        })
    }

    /// Stamps a new index: `published` now, `expires` now + `expires_in`.
    fn stamp(&self, index: &mut ChannelIndex) -> Result<()> {
        let now = self.now();
        index.expires = self.expires_after(now)?;
        index.published = Some(now);
        Ok(())
    }

    fn expires(&self) -> Result<Timestamp> {
        self.expires_after(self.now())
    }

    fn expires_after(&self, now: Timestamp) -> Result<Timestamp> {
        time::Duration::try_from(self.expires_in)
            .ok()
            .and_then(|d| now.0.checked_add(d))
            .map(Timestamp)
            .ok_or_else(|| {
                PackError::Usage(format!(
                    "--expires-in {:?} is out of range",
                    self.expires_in
                ))
            })
    }
}

/// What `publish`, `yank` or `refresh` did.
#[derive(Debug, Clone)]
pub struct IndexUpdate {
    /// The index as written (or as found, when nothing changed).
    pub index: ChannelIndex,
    /// `channels/<channel>.json`.
    pub path: PathBuf,
    /// Whether a new index was signed and written.
    pub changed: bool,
    /// The release concerned (none for `refresh`).
    pub release: Option<ChannelRelease>,
    /// The deltas `publish` wrote for the release.
    pub deltas: Vec<crate::delta::BuiltDelta>,
    /// Deltas `publish` could not write, each with why (the release is
    /// published without them: a host then takes the full archive).
    pub delta_notes: Vec<String>,
}

/// What to publish.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub index: IndexOptions,
    /// Percent of hosts that take the release (SPEC §7).
    pub rollout: u8,
    /// Release notes; `None` keeps the notes of an already listed release.
    pub notes: Option<String>,
    /// List only the newest `keep` releases afterwards (their archives stay
    /// in `releases/`); `None` keeps them all.
    pub keep: Option<usize>,
    /// Write deltas to the release from each of the newest `deltas` older
    /// releases the channel lists, and list them with it; 0 writes none.
    pub deltas: usize,
}

/// How many older releases `publish` makes deltas from by default.
pub const DEFAULT_DELTAS: usize = 3;

impl PublishOptions {
    /// Full rollout, no notes, the default expiry.
    pub fn new(channel: impl Into<String>) -> Self {
        PublishOptions {
            index: IndexOptions::new(channel),
            rollout: 100,
            notes: None,
            keep: None,
            deltas: DEFAULT_DELTAS,
        }
    }
}

fn own_key(key: &SigningKey) -> TrustedKeys {
    TrustedKeys::new(vec![key.public_key().clone()])
}

/// Reads the current index with the signing key's own public key (or a key
/// that introduced it, see [`crate::rotate`]), with a message that says
/// what to do when another key signed it.
fn read_own_index(repo: &Repo, key: &SigningKey, channel: &str) -> Result<Option<ChannelIndex>> {
    repo.read_channel(channel, &crate::rotate::signing_keys(repo, key))
        .map(|o| o.map(|s| s.index))
        .map_err(|e| match e {
            PackError::Verify { path, message } => PackError::Verify {
                path,
                message: format!(
                    "{message}; the current index must verify with the signing key {} before it is extended (sign with the key that signed it, or move the old index away to start the channel afresh)",
                    key.key_id()
                ),
            },
            other => other,
        })
}

/// Adds a release to a channel (or updates the rollout and notes of one
/// already listed), bumps the index version and re-signs the index.
///
/// The release is verified in full first (hash, signature by `key`, every
/// entry against its manifest), its manifest must name this channel, and
/// its app must be the index's app. A version already listed with other
/// content is refused, and so is republishing a yanked release.
pub fn publish(
    repo: &Repo,
    key: &SigningKey,
    release: &str,
    opts: &PublishOptions,
) -> Result<IndexUpdate> {
    let channel = opts.index.channel.as_str();
    validate_name(channel).map_err(|r| PackError::channel(channel, r))?;
    if opts.rollout > 100 {
        return Err(PackError::Usage(format!(
            "--rollout {} is above 100 percent",
            opts.rollout
        )));
    }
    let keys = own_key(key);
    let id = repo.resolve_release(release, &keys)?;
    let archive = repo.archive_path(&id);
    let verified = verify_archive(&archive, &keys)?;
    let manifest = &verified.manifest;
    if manifest.channel != channel {
        return Err(PackError::Release {
            id,
            message: format!(
                "was built for channel {:?}, not {channel:?}; rebuild it with --channel {channel}",
                manifest.channel
            ),
        });
    }
    let expires = opts.index.expires()?;
    let mut index = match read_own_index(repo, key, channel)? {
        Some(index) => index,
        None => ChannelIndex::new(&manifest.app, channel, expires),
    };
    if index.app != manifest.app {
        return Err(PackError::Release {
            id,
            message: format!(
                "is a release of app {:?}, but channel {channel:?} in {} is for app {:?}",
                manifest.app,
                repo.root().display(),
                index.app
            ),
        });
    }
    let entry = if let Some(existing) = index.releases.iter_mut().find(|r| r.id == id) {
        if existing.yanked {
            return Err(PackError::Release {
                id,
                message: format!(
                    "is yanked from channel {channel:?}; publish a new version instead"
                ),
            });
        }
        existing.rollout = opts.rollout;
        if let Some(notes) = &opts.notes {
            existing.notes = notes.clone();
        }
        existing.clone()
    } else {
        let entry = ChannelRelease {
            version: manifest.version.clone(),
            id,
            size: verified.size,
            schema_version: manifest.schema_version,
            yanked: false,
            rollout: opts.rollout,
            notes: opts.notes.clone().unwrap_or_default(),
            deltas: Vec::new(),
        };
        index
            .insert_release(entry.clone())
            .map_err(|m| PackError::channel(channel, m))?;
        entry
    };
    if let Some(keep) = opts.keep {
        if keep == 0 {
            return Err(PackError::Usage("--keep must be at least 1".into()));
        }
        index.releases.truncate(keep);
        if index.release(&id).is_none() {
            return Err(PackError::Release {
                id,
                message: format!(
                    "is older than the newest {keep} releases of channel {channel:?}, so --keep {keep} would drop it at once"
                ),
            });
        }
    }
    let (deltas, delta_notes) = publish_deltas(repo, key, &mut index, &id, opts.deltas);
    let entry = index.release(&id).cloned().unwrap_or(entry);
    index.version += 1;
    opts.index.stamp(&mut index)?;
    let path = repo.write_channel(key, &index)?;
    repo.ensure_public_key(key)?;
    Ok(IndexUpdate {
        index,
        path,
        changed: true,
        release: Some(entry),
        deltas,
        delta_notes,
    })
}

/// Writes the deltas to release `id` from each of the `count` newest
/// releases listed below it, and lists them with it (replacing what it
/// listed). A delta that cannot be written (an older archive no longer in
/// `releases/`, say) is left out with a note: hosts then take the full
/// archive.
fn publish_deltas(
    repo: &Repo,
    key: &SigningKey,
    index: &mut ChannelIndex,
    id: &ReleaseId,
    count: usize,
) -> (Vec<crate::delta::BuiltDelta>, Vec<String>) {
    let Some(at) = index.releases.iter().position(|r| r.id == *id) else {
        return (Vec::new(), Vec::new());
    };
    let bases: Vec<ReleaseId> = index.releases[at + 1..]
        .iter()
        .take(count.min(slipway_formats::channel::MAX_DELTAS_PER_RELEASE))
        .map(|r| r.id)
        .collect();
    let mut built = Vec::new();
    let mut notes = Vec::new();
    for from in bases {
        match crate::delta::make_delta(repo, key, &from, id) {
            Ok(delta) => built.push(delta),
            Err(e) => notes.push(format!("no delta from {from}: {e}")),
        }
    }
    index.releases[at].deltas = built
        .iter()
        .map(|d| slipway_formats::channel::ChannelDelta {
            from: d.from,
            size: d.size,
            sha256: d.sha256,
        })
        .collect();
    (built, notes)
}

/// Marks a listed release yanked (hosts never install it again), bumps the
/// index version and re-signs. A release already yanked changes nothing.
pub fn yank(
    repo: &Repo,
    key: &SigningKey,
    id: &ReleaseId,
    opts: &IndexOptions,
) -> Result<IndexUpdate> {
    let channel = opts.channel.as_str();
    let mut index = read_own_index(repo, key, channel)?.ok_or_else(|| {
        PackError::channel(
            channel,
            format!(
                "no index at {}; nothing to yank",
                repo.channel_path(channel).display()
            ),
        )
    })?;
    let listed: Vec<String> = index
        .releases
        .iter()
        .map(|r| format!("{} {}", r.version, r.id.short()))
        .collect();
    let Some(release) = index.releases.iter_mut().find(|r| r.id == *id) else {
        return Err(PackError::Release {
            id: *id,
            message: format!(
                "is not listed in channel {channel:?} (listed: {})",
                if listed.is_empty() {
                    "none".to_string()
                } else {
                    listed.join(", ")
                }
            ),
        });
    };
    if release.yanked {
        let release = release.clone();
        return Ok(IndexUpdate {
            path: repo.channel_path(channel),
            index,
            changed: false,
            release: Some(release),
            deltas: Vec::new(),
            delta_notes: Vec::new(),
        });
    }
    release.yanked = true;
    let release = release.clone();
    index.version += 1;
    opts.stamp(&mut index)?;
    let path = repo.write_channel(key, &index)?;
    Ok(IndexUpdate {
        index,
        path,
        changed: true,
        release: Some(release),
        deltas: Vec::new(),
        delta_notes: Vec::new(),
    })
}

/// Re-signs a channel's index with a new expiry and version + 1, changing
/// nothing else: what a scheduled job runs so that hosts never see an
/// expired index.
pub fn refresh(repo: &Repo, key: &SigningKey, opts: &IndexOptions) -> Result<IndexUpdate> {
    let channel = opts.channel.as_str();
    let mut index = read_own_index(repo, key, channel)?.ok_or_else(|| {
        PackError::channel(
            channel,
            format!(
                "no index at {}; publish a release first",
                repo.channel_path(channel).display()
            ),
        )
    })?;
    index.version += 1;
    opts.stamp(&mut index)?;
    let path = repo.write_channel(key, &index)?;
    Ok(IndexUpdate {
        index,
        path,
        changed: true,
        release: None,
        deltas: Vec::new(),
        delta_notes: Vec::new(),
    })
}

/// Parses a duration such as `30d`, `12h`, `90m`, `3600s` or `2w`.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let bad = || {
        PackError::Usage(format!(
            "{text:?} is not a duration; use a number and a unit: s, m, h, d or w (e.g. 30d, 12h)"
        ))
    };
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = t.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    let total = n.checked_mul(secs).ok_or_else(bad)?;
    if total == 0 {
        return Err(PackError::Usage(format!(
            "{text:?}: an index must not expire at once"
        )));
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("30d").expect("d"),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(
            parse_duration("12h").expect("h"),
            Duration::from_secs(12 * 3600)
        );
        assert_eq!(
            parse_duration("2w").expect("w"),
            Duration::from_secs(14 * 86_400)
        );
        for bad in [
            "",
            "d",
            "30",
            "30x",
            "-1d",
            "0s",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn signed_arbitrary_archives_verify_as_signatures_only() {
        let tmp = tempfile::tempdir().expect("tmp");
        let generated = crate::keys::generate_key(tmp.path(), "k", None, false).expect("key");
        let key = SigningKey::load(&generated.secret_path, None).expect("load");
        let junk = tmp.path().join("junk");
        fs::write(&junk, b"not a tar").expect("write");
        let repo = Repo::new(tmp.path().join("repo"));
        let id = repo
            .add_signed_archive(&key, &junk, "bot", "9.9.9", "stable")
            .expect("signed");
        assert_eq!(id, ReleaseId::of_bytes(b"not a tar"));
        let sig = slipway_formats::SignatureFile::parse(
            &fs::read_to_string(repo.signature_path(&id)).expect("sig"),
        )
        .expect("parse");
        let keys = own_key(&key);
        sig.verify_bytes(&keys, b"not a tar")
            .expect("signature verifies");
        assert!(sig.trusted_comment().contains("version:9.9.9"));
        // The full check refuses it: the bytes are not a release.
        let err = verify_archive(&repo.archive_path(&id), &keys).expect_err("not a release");
        assert!(err.to_string().contains(&id.hex()), "{err}");
    }

    #[test]
    fn archive_names_carry_the_id() {
        let id = ReleaseId::of_bytes(b"x");
        let p = PathBuf::from("/r/releases").join(id.archive_file_name());
        assert_eq!(archive_id_from_name(&p).expect("id"), id);
        assert!(archive_id_from_name(Path::new("/r/bot.tar.zst")).is_err());
        assert_eq!(
            signature_path_of(&p),
            PathBuf::from("/r/releases").join(id.signature_file_name())
        );
    }
}

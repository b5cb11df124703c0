//! `slipway-pack bundle`: an offline bundle for an air-gapped host (the
//! seed's open question 1), as one directory or one tar file.
//!
//! A bundle is a release repository cut down to one channel (see
//! [`slipway_formats::bundle`] for the layout): the channel index and its
//! signature, the releases a host would pick from it with their
//! signatures, the deltas the index lists to those releases (unless
//! `--no-deltas`), the public key that signed them, a plain-text
//! `README.txt` for the operator (key fingerprint, the two commands to
//! run), and a `SHA256SUMS` over all of it, signed with `--key` when one
//! is given.
//!
//! Nothing is copied unverified: the index must verify with the trusted
//! keys (`--pubkey`, else the repository's `keys/`), every release that
//! goes in is verified in full (hash, signature, every entry) and must
//! match its index entry, and every delta is verified as a host verifies
//! it before its walk ([`verify_delta`]: the size and SHA-256 the index
//! lists, a delta signature by a trusted key for exactly its two
//! releases, the manifest inside). A listed delta the repository does not
//! hold is left out with a warning: a host that runs its base then takes
//! the full archive. The bundle is written into a temporary
//! directory beside the destination and renamed into place at the end, so
//! an interrupted run never leaves a half bundle under the final name.
//!
//! Trust never comes from the bundle: `keys/` is there for the operator to
//! compare with the host's `update.public_keys`, and a host checks the
//! index and the archives with its own configured keys, exactly as online.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use slipway_formats::bundle::{
    bundle_comment, BundleSums, README_FILE, SUMS_FILE, SUMS_SIGNATURE_FILE,
};
use slipway_formats::channel::{ChannelDelta, Timestamp};
use slipway_formats::delta::{delta_rel_path, DELTAS_DIR};

use crate::delta::{check_listed_delta, BaseManifests, ListedDelta};
use slipway_formats::manifest::validate_name;
use slipway_formats::{ChannelIndex, ChannelRelease, KeyId, PublicKey, ReleaseId, TrustedKeys};

use crate::build::BUFFER_SIZE;
use crate::error::{PackError, Result};
use crate::keys::SigningKey;
use crate::repo::Repo;
use crate::verify::verify_archive;
use slipway_fs::durable;

/// An index that expires sooner than this gets a warning: the bundle may
/// sit in a drawer before it reaches the host.
const EXPIRY_WARNING: time::Duration = time::Duration::days(7);

/// What to put into a bundle.
#[derive(Debug, Clone)]
pub struct BundleOptions {
    /// The channel whose index goes in.
    pub channel: String,
    /// The bundle directory, or with `tar` the `.tar` file, to create.
    pub out: PathBuf,
    /// Every release the index lists that is not yanked, instead of the
    /// newest ones a host would pick.
    pub all: bool,
    /// Write one tar file instead of a directory.
    pub tar: bool,
    /// Carry the deltas the index lists to the chosen releases (the
    /// default); `false`: releases only (`--no-deltas`).
    pub deltas: bool,
    /// Keys the index and the archives must verify with; `None`: the
    /// public keys in the repository's `keys/` (and `--key`'s own).
    pub trusted: Option<TrustedKeys>,
    /// "now", for the expiry warning and the README; `None`: the system clock.
    pub now: Option<Timestamp>,
}

impl BundleOptions {
    /// The newest releases of `channel`, as a directory at `out`.
    pub fn new(channel: impl Into<String>, out: impl Into<PathBuf>) -> Self {
        BundleOptions {
            channel: channel.into(),
            out: out.into(),
            all: false,
            tar: false,
            deltas: true,
            trusted: None,
            now: None,
        }
    }
}

/// One release in a bundle.
#[derive(Debug, Clone, Serialize)]
pub struct BundledRelease {
    pub version: String,
    pub id: String,
    pub size: u64,
    pub rollout: u8,
}

/// One delta in a bundle: `deltas/<from-hex>-<to-hex>.tar.zst`.
#[derive(Debug, Clone, Serialize)]
pub struct BundledDelta {
    pub from: String,
    /// The base release's version, when the index still lists it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_version: Option<String>,
    pub to: String,
    pub to_version: String,
    /// The delta file's size in bytes.
    pub size: u64,
    /// The full archive's size, for comparison.
    pub full_size: u64,
}

/// What [`make_bundle`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct BundleReport {
    /// The bundle directory or tar file.
    pub path: PathBuf,
    /// The name the operator sees on the stick (directory name or tar stem).
    pub name: String,
    pub tar: bool,
    pub app: String,
    pub channel: String,
    pub index_version: u64,
    pub expires: Timestamp,
    /// The key that signed the index: its id and base64 public key.
    pub key_id: String,
    pub public_key: String,
    pub releases: Vec<BundledRelease>,
    /// The deltas it carries (none with `--no-deltas`).
    pub deltas: Vec<BundledDelta>,
    /// Files listed in `SHA256SUMS`.
    pub files: usize,
    /// Whether `SHA256SUMS.minisig` was written.
    pub signed: bool,
    /// The SHA-256 of the tar file (tar bundles only), to compare after a copy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tar_sha256: Option<String>,
    /// Things the operator should know (an index about to expire).
    pub warnings: Vec<String>,
}

/// The public keys in `<repo>/keys/*.pub`.
pub fn repo_keys(repo: &Repo) -> Result<Vec<PublicKey>> {
    let dir = repo.keys_dir();
    let read = match fs::read_dir(&dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(PackError::io("list", &dir)(e)),
    };
    let mut paths = Vec::new();
    for item in read {
        let path = item.map_err(PackError::io("list", &dir))?.path();
        if path.extension().is_some_and(|e| e == "pub") {
            paths.push(path);
        }
    }
    paths.sort();
    let mut keys = Vec::new();
    for path in paths {
        let text = slipway_fs::read_text_capped(&path, slipway_formats::MAX_METADATA_BYTES)?;
        keys.push(PublicKey::parse(&text).map_err(|e| PackError::key(&path, e.to_string()))?);
    }
    Ok(keys)
}

/// A file for a bundle's `keys/`.
enum KeyFile {
    /// A regular file of the repository's `keys/`.
    Copied(PathBuf),
    /// A public key file written from the key itself.
    Generated(String),
}

/// The regular files of `<repo>/keys/` that belong in a bundle: public keys
/// (`*.pub`) and key rotation statements (`rotation-*`), by file name.
fn repo_key_files(repo: &Repo) -> Result<Vec<(String, KeyFile)>> {
    let dir = repo.keys_dir();
    let read = match fs::read_dir(&dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(PackError::io("list", &dir)(e)),
    };
    let mut out = Vec::new();
    for item in read {
        let item = item.map_err(PackError::io("list", &dir))?;
        let Some(name) = item.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let wanted = name.ends_with(".pub") || name.starts_with("rotation-");
        let regular = fs::symlink_metadata(item.path()).is_ok_and(|m| m.is_file());
        if wanted
            && regular
            && slipway_formats::bundle::check_bundle_path(&format!("keys/{name}")).is_ok()
        {
            out.push((name, KeyFile::Copied(item.path())));
        }
    }
    Ok(out)
}

/// The releases a bundle carries: with `all`, every release that is not
/// yanked; else the newest release that is not yanked and, when that one
/// is only partly rolled out, every older one down to the newest fully
/// rolled-out release, so that a host outside the rollout still finds the
/// release it would pick.
pub fn select_releases(releases: &[ChannelRelease], all: bool) -> Vec<&ChannelRelease> {
    let mut out = Vec::new();
    for r in releases.iter().filter(|r| !r.yanked) {
        out.push(r);
        if !all && r.rollout >= 100 {
            break;
        }
    }
    out
}

/// Writes an offline bundle of `opts.channel` from `repo`; see the module
/// documentation. With `key`, `SHA256SUMS` is signed (it need not be the
/// key that signed the index, but a host only accepts it if it trusts it).
pub fn make_bundle(
    repo: &Repo,
    opts: &BundleOptions,
    key: Option<&SigningKey>,
) -> Result<BundleReport> {
    let channel = opts.channel.as_str();
    validate_name(channel).map_err(|r| PackError::channel(channel, r))?;
    let now = opts
        .now
        .unwrap_or(Timestamp(time::OffsetDateTime::now_utc()));

    let keys = match &opts.trusted {
        Some(k) => k.clone(),
        None => {
            let mut k = TrustedKeys::new(repo_keys(repo)?);
            if let Some(key) = key {
                k.add(key.public_key().clone());
            }
            k
        }
    };
    if keys.is_empty() {
        return Err(PackError::Usage(format!(
            "no public key to verify channel {channel:?} with: {} has no .pub files; pass --pubkey",
            repo.keys_dir().display()
        )));
    }
    let signed = repo.read_channel(channel, &keys)?.ok_or_else(|| {
        PackError::channel(
            channel,
            format!(
                "no index at {}; publish a release first",
                repo.channel_path(channel).display()
            ),
        )
    })?;
    let index = &signed.index;
    let signer = keys
        .find(signed.key_id)
        .cloned()
        .ok_or_else(|| PackError::verify(&signed.path, "the signing key vanished"))?;

    let chosen = select_releases(&index.releases, opts.all);
    if chosen.is_empty() {
        return Err(PackError::channel(
            channel,
            "lists no release that is not yanked; nothing to bundle",
        ));
    }
    for release in &chosen {
        let archive = repo.archive_path(&release.id);
        let verified = verify_archive(&archive, &keys)?;
        let m = &verified.manifest;
        if verified.size != release.size
            || m.version != release.version
            || m.app != index.app
            || m.channel != index.channel
        {
            return Err(PackError::Release {
                id: release.id,
                message: format!(
                    "does not match its entry in {}: the index says {} {} bytes, the archive is {}/{} {} {} bytes; run `slipway-pack verify --repo`",
                    signed.path.display(),
                    release.version,
                    release.size,
                    m.app,
                    m.channel,
                    m.version,
                    verified.size
                ),
            });
        }
    }

    let mut warnings = Vec::new();
    let deltas = if opts.deltas {
        select_deltas(repo, index, &chosen, &keys, &mut warnings)?
    } else {
        Vec::new()
    };
    if index.is_expired(now) {
        warnings.push(format!(
            "the channel index expired at {}: hosts refuse it unless `slipway install --allow-expired`; run `slipway-pack refresh --channel {channel}` and bundle again",
            index.expires
        ));
    } else if index.expires.0 - now.0 < EXPIRY_WARNING {
        warnings.push(format!(
            "the channel index expires at {}, in less than 7 days: a host that gets the bundle later refuses it (or needs --allow-expired); `slipway-pack refresh --channel {channel}` first",
            index.expires
        ));
    }

    let (final_path, name) = destination(&opts.out, opts.tar)?;
    let parent = durable::parent_dir(&final_path).to_path_buf();
    durable::create_dirs(&parent).map_err(PackError::io("create directory", &parent))?;
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{name}.tmp-"))
        .tempdir_in(&parent)
        .map_err(PackError::io("create a temporary directory in", &parent))?;
    let dir = staging.path();

    let mut sums = BundleSums::new();
    let copy = |sums: &mut BundleSums, src: &Path, rel: &str| -> Result<()> {
        let digest = copy_hashed(src, &dir.join(rel))?;
        sums.insert(rel, digest)
            .map_err(|m| PackError::verify(src, m))
    };
    let (index_path, index_sig) = (
        repo.channel_path(channel),
        repo.channel_signature_path(channel),
    );
    let mut dirs = vec!["channels", "releases", "keys"];
    if !deltas.is_empty() {
        dirs.push(DELTAS_DIR);
    }
    for d in &dirs {
        fs::create_dir(dir.join(d)).map_err(PackError::io("create directory", dir.join(d)))?;
    }
    copy(&mut sums, &index_path, &format!("channels/{channel}.json"))?;
    copy(
        &mut sums,
        &index_sig,
        &format!("channels/{channel}.json.minisig"),
    )?;
    for release in &chosen {
        copy(
            &mut sums,
            &repo.archive_path(&release.id),
            &format!("releases/{}", release.id.archive_file_name()),
        )?;
        copy(
            &mut sums,
            &repo.signature_path(&release.id),
            &format!("releases/{}", release.id.signature_file_name()),
        )?;
    }
    for (to, delta) in &deltas {
        let rel = delta_rel_path(&delta.from, to);
        let src = repo.root().join(&rel);
        let digest = copy_hashed(&src, &dir.join(&rel))?;
        // The bytes copied are the bytes verified: a file replaced in the
        // repository since then does not slip in.
        if digest != *delta.sha256.digest() {
            return Err(PackError::verify(
                &src,
                format!(
                    "changed while the bundle was made: its sha256 is now {}, the index lists {}; run `slipway-pack bundle` again",
                    hex::encode(digest),
                    delta.sha256
                ),
            ));
        }
        sums.insert(&rel, digest)
            .map_err(|m| PackError::verify(&src, m))?;
        let sig_rel = format!("{rel}.minisig");
        copy(&mut sums, &repo.root().join(&sig_rel), &sig_rel)?;
    }
    // keys/: the repository's public keys and key rotation statements (a
    // host that trusts an older key needs the statement that introduces
    // the newer one), and the public keys of the index and bundle signers.
    let mut key_files = repo_key_files(repo)?;
    for k in std::iter::once(&signer).chain(key.map(SigningKey::public_key)) {
        let name = format!("{}.pub", k.id());
        if !key_files.iter().any(|(n, _)| *n == name) {
            key_files.push((name, KeyFile::Generated(k.to_pub_file())));
        }
    }
    key_files.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, file) in &key_files {
        let rel = format!("keys/{name}");
        match file {
            KeyFile::Copied(src) => copy(&mut sums, src, &rel)?,
            KeyFile::Generated(text) => {
                write_new(&dir.join(&rel), text.as_bytes())?;
                sums.insert(&rel, Sha256::digest(text.as_bytes()).into())
                    .map_err(PackError::Usage)?;
            }
        }
    }

    let releases: Vec<BundledRelease> = chosen
        .iter()
        .map(|r| BundledRelease {
            version: r.version.to_string(),
            id: r.id.to_string(),
            size: r.size,
            rollout: r.rollout,
        })
        .collect();
    let version_of = |id: &ReleaseId| {
        index
            .releases
            .iter()
            .find(|r| r.id == *id)
            .map(|r| r.version.to_string())
    };
    let deltas: Vec<BundledDelta> = deltas
        .iter()
        .map(|(to, d)| BundledDelta {
            from: d.from.to_string(),
            from_version: version_of(&d.from),
            to: to.to_string(),
            to_version: version_of(to).unwrap_or_default(),
            size: d.size,
            full_size: index
                .releases
                .iter()
                .find(|r| r.id == *to)
                .map_or(0, |r| r.size),
        })
        .collect();
    let readme = readme_text(&ReadmeInput {
        name: &name,
        tar: opts.tar,
        app: &index.app,
        channel,
        index_version: index.version,
        expires: index.expires,
        made: now,
        signer: &signer,
        sums_key: key.map(|k| k.key_id()),
        releases: &releases,
        deltas: &deltas,
    });
    write_new(&dir.join(README_FILE), readme.as_bytes())?;
    sums.insert(README_FILE, Sha256::digest(readme.as_bytes()).into())
        .map_err(PackError::Usage)?;

    let sums_bytes = sums.to_bytes();
    write_new(&dir.join(SUMS_FILE), &sums_bytes)?;
    if let Some(k) = key {
        let comment = bundle_comment(&index.app, channel, index.version).to_string();
        let sig = k.sign_bytes(&sums_bytes, &comment)?;
        write_new(&dir.join(SUMS_SIGNATURE_FILE), sig.as_bytes())?;
    }
    for d in dirs.iter().chain(&["."]) {
        durable::fsync_dir(&dir.join(d)).map_err(PackError::io("fsync directory", &dir.join(d)))?;
    }

    let tar_sha256 = if opts.tar {
        Some(write_tar(dir, &name, &final_path, now)?)
    } else {
        let kept = staging.keep();
        fs::rename(&kept, &final_path).map_err(|e| {
            let _ = fs::remove_dir_all(&kept);
            PackError::io("rename the finished bundle to", &final_path)(e)
        })?;
        None
    };
    durable::fsync_dir(&parent).map_err(PackError::io("fsync directory", &parent))?;

    Ok(BundleReport {
        path: final_path,
        name,
        tar: opts.tar,
        app: index.app.clone(),
        channel: channel.to_string(),
        index_version: index.version,
        expires: index.expires,
        key_id: signer.id().to_string(),
        public_key: signer.to_base64().to_string(),
        releases,
        deltas,
        files: sums.len(),
        signed: key.is_some(),
        tar_sha256,
        warnings,
    })
}

/// The deltas the index lists to the `chosen` releases that the repository
/// holds, each verified as a host verifies it before its walk: the size and
/// SHA-256 the index lists, a `slipway-delta` signature by a key in `keys`
/// for exactly its two releases, the app and channel of the index, the
/// manifest inside (its first frame decompressed against the manifest of
/// the base release, whose archive in `releases/` is verified for it). A
/// listed delta whose file is missing, or whose base release's archive the
/// repository no longer holds, is left out with a warning; one that is
/// there but does not verify stops the bundle (make it again with
/// `slipway-pack delta`, or bundle with `--no-deltas`).
fn select_deltas<'i>(
    repo: &Repo,
    index: &'i ChannelIndex,
    chosen: &[&'i ChannelRelease],
    keys: &TrustedKeys,
    warnings: &mut Vec<String>,
) -> Result<Vec<(ReleaseId, &'i ChannelDelta)>> {
    let mut out = Vec::new();
    let mut bases = BaseManifests::default();
    for release in chosen {
        for delta in &release.deltas {
            match check_listed_delta(repo, keys, index, release, delta, &mut bases) {
                Ok(ListedDelta::Verified) => out.push((release.id, delta)),
                Ok(ListedDelta::Missing(path)) => warnings.push(format!(
                    "the index lists the delta from {} to {} {}, but {} or its .minisig is missing: left out of the bundle (a host that runs {} takes the full archive); `slipway-pack delta` writes it again",
                    delta.from,
                    release.version,
                    release.id,
                    path.display(),
                    delta.from.short()
                )),
                Ok(ListedDelta::NoBase) => warnings.push(format!(
                    "the index lists the delta from {} to {} {}, but the repository no longer holds the archive of {} that it starts from, without which it cannot be checked: left out of the bundle (a host that runs {} takes the full archive)",
                    delta.from,
                    release.version,
                    release.id,
                    delta.from,
                    delta.from.short()
                )),
                Err(PackError::Verify { path, message }) => {
                    return Err(PackError::verify(
                        &path,
                        format!(
                            "{message}; write it again with `slipway-pack delta`, or bundle with --no-deltas"
                        ),
                    ))
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(out)
}

/// The final path and the bundle's name; refuses to overwrite anything.
fn destination(out: &Path, tar: bool) -> Result<(PathBuf, String)> {
    let file_name = out
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .ok_or_else(|| {
            PackError::Usage(format!(
                "--out {}: give the path of the bundle to create, e.g. /media/usb/bot-1.4.0",
                out.display()
            ))
        })?;
    let name = if tar {
        file_name.strip_suffix(".tar").ok_or_else(|| {
            PackError::Usage(format!(
                "--out {} with --tar: the file name must end in .tar",
                out.display()
            ))
        })?
    } else {
        file_name
    };
    if name.is_empty() || name.starts_with('.') || name.contains(char::is_whitespace) {
        return Err(PackError::Usage(format!(
            "--out {}: the bundle's name {name:?} must not be empty, start with '.' or hold spaces (operators type it)",
            out.display()
        )));
    }
    if fs::symlink_metadata(out).is_ok() {
        return Err(PackError::Usage(format!(
            "{} already exists; remove it or choose another --out",
            out.display()
        )));
    }
    Ok((out.to_path_buf(), name.to_string()))
}

/// Copies `src` to the new file `dst` (mode 0644), fsynced, returning the
/// SHA-256 of what was written.
fn copy_hashed(src: &Path, dst: &Path) -> Result<[u8; 32]> {
    let mut input = slipway_fs::open_regular(src)?;
    let mut output = new_file(dst)?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; BUFFER_SIZE];
    loop {
        let n = input.read(&mut buf).map_err(PackError::io("read", src))?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        output
            .write_all(&buf[..n])
            .map_err(PackError::io("write", dst))?;
    }
    output.sync_all().map_err(PackError::io("fsync", dst))?;
    Ok(sha.finalize().into())
}

fn new_file(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(durable::PUBLISHED_MODE)
        .open(path)
        .map_err(PackError::io("create", path))
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = new_file(path)?;
    f.write_all(bytes).map_err(PackError::io("write", path))?;
    f.sync_all().map_err(PackError::io("fsync", path))
}

/// Writes the staged bundle `dir` as a tar file at `out` with every entry
/// under `<name>/`, sorted, owned by 0:0, modes 0755/0644, mtime `now`;
/// returns the tar file's SHA-256 (hex).
fn write_tar(dir: &Path, name: &str, out: &Path, now: Timestamp) -> Result<String> {
    let parent = durable::parent_dir(out);
    let temp = durable::temp_file_in(parent)
        .map_err(PackError::io("create a temporary file in", parent))?;
    let mtime = u64::try_from(now.unix()).unwrap_or(0);
    let mut builder = tar::Builder::new(temp);
    let mut entries: Vec<(String, PathBuf, bool)> = vec![(name.to_string(), dir.into(), true)];
    for entry in walkdir::WalkDir::new(dir).min_depth(1).sort_by_file_name() {
        let entry = entry.map_err(|e| PackError::io("list", dir)(e.into()))?;
        let rel = entry
            .path()
            .strip_prefix(dir)
            .map_err(|_| PackError::verify(entry.path(), "outside the bundle"))?;
        let rel = rel
            .to_str()
            .ok_or_else(|| PackError::verify(entry.path(), "file name is not UTF-8"))?;
        entries.push((
            format!("{name}/{rel}"),
            entry.path().to_path_buf(),
            entry.file_type().is_dir(),
        ));
    }
    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    for (path, src, is_dir) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(mtime);
        if is_dir {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder
                .append_data(&mut header, format!("{path}/"), std::io::empty())
                .map_err(PackError::io("write", out))?;
        } else {
            let file = slipway_fs::open_regular(&src)?;
            let len = file.metadata().map_err(PackError::io("stat", &src))?.len();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_size(len);
            builder
                .append_data(&mut header, &path, file)
                .map_err(PackError::io("write", out))?;
        }
    }
    let temp = builder.into_inner().map_err(PackError::io("finish", out))?;
    let mut sha = Sha256::new();
    let mut reader = File::open(temp.path()).map_err(PackError::io("read", temp.path()))?;
    let mut buf = vec![0u8; BUFFER_SIZE];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(PackError::io("read", temp.path()))?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
    }
    durable::persist(temp, out, durable::PUBLISHED_MODE).map_err(PackError::io("write", out))?;
    Ok(hex::encode(sha.finalize()))
}

struct ReadmeInput<'a> {
    name: &'a str,
    tar: bool,
    app: &'a str,
    channel: &'a str,
    index_version: u64,
    expires: Timestamp,
    made: Timestamp,
    signer: &'a PublicKey,
    sums_key: Option<KeyId>,
    releases: &'a [BundledRelease],
    deltas: &'a [BundledDelta],
}

/// The bundle's `README.txt`: plain text an operator reads on the stick.
fn readme_text(r: &ReadmeInput<'_>) -> String {
    let mut t = String::new();
    let mut line = |s: &str| {
        t.push_str(s);
        t.push('\n');
    };
    line(&format!(
        "slipway offline bundle: {} (channel {})",
        r.app, r.channel
    ));
    line("");
    line("Releases in this bundle (newest first):");
    for rel in r.releases {
        line(&format!(
            "  {}  {}  {} bytes{}",
            rel.version,
            rel.id,
            rel.size,
            if rel.rollout < 100 {
                format!("  (rolled out to {}% of hosts)", rel.rollout)
            } else {
                String::new()
            }
        ));
    }
    if !r.deltas.is_empty() {
        line("Deltas (a host that runs the release on the left installs the one on");
        line("the right from the delta and the files it already has; any other host");
        line("uses the full archive):");
        for d in r.deltas {
            line(&format!(
                "  {} -> {}  {} bytes (full archive {} bytes)",
                d.from_version.as_deref().unwrap_or(&d.from),
                d.to_version,
                d.size,
                d.full_size
            ));
        }
    }
    line(&format!(
        "Channel index version {}, expires {}. Made {}.",
        r.index_version, r.expires, r.made
    ));
    line("");
    line("Signing key. The host must ALREADY trust it: compare it with");
    line("update.public_keys in /etc/slipway/update.toml before you install.");
    line("A bundle never adds trust; keys/ here is for this comparison only.");
    line(&format!("  key id:      {}", r.signer.id()));
    line(&format!("  public key:  {}", r.signer.to_base64()));
    line("");
    let target = if r.tar {
        format!("/media/usb/{}.tar", r.name)
    } else {
        format!("/media/usb/{}", r.name)
    };
    line("On the host, with the bundle copied or mounted at /media/usb:");
    line("");
    line(&format!("  slipway install {target}"));
    line("  slipway status");
    line("");
    line("`slipway install` checks everything it checks online: the index");
    line("signature and expiry, each archive's sha256 and signature, every file");
    line("against the release manifest, plus SHA256SUMS over this whole bundle.");
    line("A changed file anywhere in the bundle is refused and nothing is installed.");
    line("");
    line("To check the copy by hand:");
    if r.tar {
        line(&format!(
            "  tar -xf {}.tar && cd {} && sha256sum -c SHA256SUMS",
            r.name, r.name
        ));
    } else {
        line(&format!("  cd {} && sha256sum -c SHA256SUMS", r.name));
    }
    if let Some(k) = r.sums_key {
        line(&format!(
            "  minisign -Vm SHA256SUMS -p keys/{k}.pub      (SHA256SUMS is signed by key {k})"
        ));
    } else {
        line("  (SHA256SUMS is not signed: the index and the archives carry the signatures)");
    }
    line("");
    line("See docs/air-gapped.md for the USB and scp walk-throughs.");
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_formats::ReleaseId;

    fn rel(v: &str, rollout: u8, yanked: bool) -> ChannelRelease {
        ChannelRelease {
            deltas: Vec::new(),
            version: v.parse().expect("version"),
            id: ReleaseId::of_bytes(v.as_bytes()),
            size: 1,
            schema_version: 1,
            yanked,
            rollout,
            notes: String::new(),
        }
    }

    #[test]
    fn selection_takes_the_newest_down_to_a_full_rollout() {
        let list = vec![
            rel("4.0.0", 100, true),
            rel("3.0.0", 20, false),
            rel("2.0.0", 100, false),
            rel("1.0.0", 100, false),
        ];
        let names = |v: Vec<&ChannelRelease>| -> Vec<String> {
            v.iter().map(|r| r.version.to_string()).collect()
        };
        assert_eq!(names(select_releases(&list, false)), ["3.0.0", "2.0.0"]);
        assert_eq!(
            names(select_releases(&list, true)),
            ["3.0.0", "2.0.0", "1.0.0"]
        );
        assert!(select_releases(&[rel("1.0.0", 100, true)], false).is_empty());
    }

    #[test]
    fn destination_refuses_existing_and_odd_names() {
        let tmp = tempfile::tempdir().expect("tmp");
        assert!(destination(tmp.path(), false).is_err(), "exists");
        assert!(destination(&tmp.path().join("b.tar"), true).is_ok());
        assert!(destination(&tmp.path().join("b"), true).is_err(), "no .tar");
        assert!(destination(&tmp.path().join(".b"), false).is_err());
        assert!(destination(&tmp.path().join("a b"), false).is_err());
        let (p, name) = destination(&tmp.path().join("bot-1.0.0"), false).expect("ok");
        assert_eq!(name, "bot-1.0.0");
        assert_eq!(p, tmp.path().join("bot-1.0.0"));
    }
}

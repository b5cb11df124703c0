//! `slipway-pack delta`: a signed delta archive from one release of a
//! repository to another, `deltas/<from-hex>-<to-hex>.tar.zst(.minisig)`
//! (the format is in `slipway_formats::delta` and docs/formats.md).
//!
//! Both releases are verified first, with the signing key's own public
//! key (or a key that introduced it): the base for its manifest, the new
//! one in full, by the walk hosts run. The base archive is walked too, as
//! far as the last file of the second frame's reference
//! ([`reference_files`]), each of those files hashed against the base
//! manifest. The delta is written from the new release's walk: frame A,
//! the new manifest's tar entry against the base manifest's bytes; frame
//! B, every other entry of the new release except the regular files whose
//! digest and mode the base lists, against the reference, each file's
//! content hashed again on the way through. The tar headers are those of
//! a release, and compression is single-threaded at a fixed level with
//! fixed parameters, so the same two releases always give the same delta
//! bytes.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use serde::Serialize;
use sha2::{Digest, Sha256};
use slipway_formats::archive::{
    check_file_digest, verify_release, walk_release, BaseFiles, EntrySink, Expectations, SinkError,
    VerifiedRelease, WalkError, ZSTD_WINDOW_LOG_MAX,
};
use slipway_formats::delta::{
    delta_file_name, delta_rel_path, delta_signature_file_name, reference_files, verify_delta,
    DeltaExpectations, DELTAS_DIR,
};
use slipway_formats::manifest::MODE_FILE;
use slipway_formats::signature::TrustedComment;
use slipway_formats::{EntryType, FileEntry, ReleaseId, TrustedKeys, MANIFEST_PATH};
use slipway_fs::{durable, open_regular, read_text_capped};

use crate::build::{write_header, write_padding, BUFFER_SIZE};
use crate::error::{PackError, Result};
use crate::keys::{Prehasher, SigningKey};
use crate::repo::Repo;

/// A delta written to a repository.
#[derive(Debug, Clone, Serialize)]
pub struct BuiltDelta {
    pub from: ReleaseId,
    pub to: ReleaseId,
    /// `REPO/deltas/<from-hex>-<to-hex>.tar.zst`.
    pub path: PathBuf,
    /// Its `.minisig`.
    pub signature: PathBuf,
    /// The delta file's size in bytes.
    pub size: u64,
    /// The delta file's SHA-256.
    pub sha256: ReleaseId,
    /// The new release's archive size, for comparison.
    pub full_size: u64,
    /// Regular files the delta carries.
    pub files: usize,
    /// Their total size.
    pub bytes: u64,
    /// Regular files left out (the base has them).
    pub omitted: usize,
    /// The compressed size of frame A (the new manifest's entry).
    pub manifest_frame: u64,
    /// The compressed size of frame B (every other entry).
    pub files_frame: u64,
    /// The size of frame B's reference (base contents of changed files).
    pub reference: u64,
}

/// The zstd level of both frames of a delta.
pub const DELTA_ZSTD_LEVEL: i32 = 9;

/// Whether a delta's frames use zstd's long-distance matching (with a
/// reference prefix, matches lie a whole reference back).
const DELTA_LONG_MATCHING: bool = true;

/// The smallest zstd window log zstd accepts.
const ZSTD_WINDOW_LOG_MIN: u32 = 10;

/// `REPO/deltas/`.
pub fn deltas_dir(repo: &Repo) -> PathBuf {
    repo.root().join(DELTAS_DIR)
}

/// Writes and signs the delta from release `from` to release `to`, both
/// archives in `repo/releases/` (see the module docs). The two must be
/// releases of the same app and channel, and distinct.
pub fn make_delta(
    repo: &Repo,
    key: &SigningKey,
    from: &ReleaseId,
    to: &ReleaseId,
) -> Result<BuiltDelta> {
    if from == to {
        return Err(PackError::Usage(format!(
            "--from and --to are the same release {to}; a delta goes from one release to another"
        )));
    }
    let keys = crate::rotate::signing_keys(repo, key);
    let (base, mut base_file) = verify_listed(repo, &keys, from)?;
    let (new, mut new_file) = verify_listed(repo, &keys, to)?;
    let (b, n) = (&base.manifest, &new.manifest);
    if b.app != n.app || b.channel != n.channel {
        return Err(PackError::Release {
            id: *to,
            message: format!(
                "is {} on channel {:?}, but {from} is {} on channel {:?}: a delta joins two releases of one app and channel",
                n.app, n.channel, b.app, b.channel
            ),
        });
    }
    let reference = base_reference(&mut base_file, &base, n)?;

    let dir = deltas_dir(repo);
    durable::create_dirs(&dir).map_err(PackError::io("create directory", &dir))?;
    let mut temp =
        durable::temp_file_in(&dir).map_err(PackError::io("create a temporary file in", &dir))?;
    let temp_path = temp.path().to_path_buf();
    let (written, counts) = write_delta(temp.as_file_mut(), &mut new_file, &new, &base, &reference)
        .map_err(|e| match e {
            DeltaWriteError::Pack(e) => e,
            DeltaWriteError::Output(e) => PackError::io("write the delta", &temp_path)(e),
        })?;
    let comment = TrustedComment::for_delta(
        &n.app,
        &n.version.to_string(),
        &n.channel,
        from,
        to,
        &ReleaseId::of_bytes(&new.manifest_bytes),
    );
    let signature_text = key.sign_prehashed(&written.prehash, &comment.to_string())?;
    let path = dir.join(delta_file_name(from, to));
    let signature = dir.join(delta_signature_file_name(from, to));
    let mut sig_temp =
        durable::temp_file_in(&dir).map_err(PackError::io("create a temporary file in", &dir))?;
    sig_temp
        .write_all(signature_text.as_bytes())
        .map_err(PackError::io("write", sig_temp.path()))?;
    durable::persist(temp, &path, durable::PUBLISHED_MODE)
        .map_err(PackError::io("write", &path))?;
    if let Err(e) = durable::persist(sig_temp, &signature, durable::PUBLISHED_MODE)
        .map_err(PackError::io("write", &signature))
    {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    durable::fsync_dir(&dir).map_err(PackError::io("fsync directory", &dir))?;
    Ok(BuiltDelta {
        from: *from,
        to: *to,
        path,
        signature,
        size: written.size,
        sha256: ReleaseId::from_digest(written.sha256),
        full_size: new.size,
        files: counts.files,
        bytes: counts.bytes,
        omitted: counts.omitted,
        manifest_frame: written.manifest_frame,
        files_frame: written.size - written.manifest_frame,
        reference: reference.len() as u64,
    })
}

/// Verifies `releases/<id>.tar.zst` with `keys` (first pass only: the
/// content is checked by the walk that reads it) and returns it open.
fn verify_listed(
    repo: &Repo,
    keys: &TrustedKeys,
    id: &ReleaseId,
) -> Result<(VerifiedRelease, File)> {
    let path = repo.archive_path(id);
    let sig_path = repo.signature_path(id);
    let mut file = open_regular(&path)?;
    let sig = read_text_capped(&sig_path, slipway_formats::MAX_SIGNATURE_BYTES)?;
    let expect = Expectations {
        id: Some(*id),
        ..Expectations::default()
    };
    let release = verify_release(&mut file, &sig, keys, &expect)
        .map_err(|e| PackError::verify(&path, e.to_string()))?;
    Ok((release, file))
}

enum DeltaWriteError {
    Pack(PackError),
    Output(io::Error),
}

impl From<io::Error> for DeltaWriteError {
    fn from(e: io::Error) -> Self {
        DeltaWriteError::Output(e)
    }
}

/// What the compressed output hashed to.
struct Written {
    sha256: [u8; 32],
    prehash: [u8; 64],
    size: u64,
    /// Of `size`, frame A's.
    manifest_frame: u64,
}

#[derive(Default)]
struct Counts {
    files: usize,
    bytes: u64,
    omitted: usize,
}

/// The reference prefix of frame B of the delta from `base` (open as
/// `archive`) to `new`: the contents of [`reference_files`], read from the
/// base archive by the walk hosts run and each hashed against the base
/// manifest. The walk stops after the last of them.
fn base_reference(
    archive: &mut File,
    base: &VerifiedRelease,
    new: &slipway_formats::Manifest,
) -> Result<Vec<u8>> {
    let wanted: Vec<String> = reference_files(new, &base.manifest)
        .into_iter()
        .map(|e| e.path.clone())
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let mut sink = ReferenceReader {
        wanted,
        next: 0,
        reference: Vec::new(),
        buf: vec![0u8; BUFFER_SIZE],
    };
    walk_release(&mut *archive, base, &mut sink).map_err(|e| match e {
        WalkError::Entry(e) => PackError::Release {
            id: base.id,
            message: format!("refused while reading it for the delta: {e}"),
        },
        WalkError::Sink(e) => e,
    })?;
    if sink.next != sink.wanted.len() {
        return Err(PackError::Release {
            id: base.id,
            message: format!(
                "ends before {:?}, which its manifest lists",
                sink.wanted[sink.next]
            ),
        });
    }
    Ok(sink.reference)
}

/// The walk's sink that collects the reference: the wanted files' content,
/// in order; every other entry is read past.
struct ReferenceReader {
    /// Paths, in manifest order.
    wanted: Vec<String>,
    next: usize,
    reference: Vec<u8>,
    buf: Vec<u8>,
}

impl EntrySink for ReferenceReader {
    type Error = PackError;

    fn manifest(&mut self, _bytes: &[u8]) -> Result<()> {
        Ok(())
    }

    fn entry(
        &mut self,
        _index: usize,
        expected: &FileEntry,
        content: &mut impl Read,
    ) -> std::result::Result<(), SinkError<PackError>> {
        let keep = self.wanted.get(self.next) == Some(&expected.path);
        let mut sha = Sha256::new();
        loop {
            let n = match content.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(SinkError::Read(e)),
            };
            if keep {
                sha.update(&self.buf[..n]);
                self.reference.extend_from_slice(&self.buf[..n]);
            }
        }
        if keep {
            check_file_digest(expected, &sha.finalize()).map_err(|e| {
                SinkError::Sink(PackError::Refused {
                    path: PathBuf::from(&expected.path),
                    reason: e.to_string(),
                })
            })?;
            self.next += 1;
        }
        Ok(())
    }

    /// Every wanted file is read: the rest of the base is not needed.
    fn stopped(&self) -> bool {
        self.next == self.wanted.len()
    }
}

/// A zstd encoder for one frame of a delta, compressed against `prefix` as
/// a raw reference prefix (`zstd --patch-from`): single-threaded at
/// [`DELTA_ZSTD_LEVEL`], with the content size (`len`, the exact number of
/// bytes that will be written), long-distance matching, and a window that
/// covers the prefix and the content (at most 2^[`ZSTD_WINDOW_LOG_MAX`],
/// the hosts' limit); without a prefix, the level's own window. No zstd
/// checksum: what a frame decompresses to is checked by SHA-256 against
/// the signed manifest (frame A whole, frame B entry by entry), and a
/// checksum would refuse a wrong base before that check could say which
/// file differs. The same input gives the same bytes.
fn frame_encoder<'p, W: Write>(
    out: W,
    prefix: &'p [u8],
    len: u64,
) -> io::Result<zstd::stream::write::Encoder<'p, W>> {
    let mut encoder = zstd::stream::write::Encoder::with_ref_prefix(out, DELTA_ZSTD_LEVEL, prefix)?;
    encoder.include_checksum(false)?;
    encoder.include_contentsize(true)?;
    encoder.set_pledged_src_size(Some(len))?;
    if !prefix.is_empty() {
        encoder.window_log(window_log(prefix.len() as u64 + len))?;
        encoder.long_distance_matching(DELTA_LONG_MATCHING)?;
    }
    Ok(encoder)
}

/// The smallest window log whose window holds `span` bytes, within zstd's
/// bounds and the hosts' limit.
fn window_log(span: u64) -> u32 {
    let bits = u64::BITS - span.saturating_sub(1).leading_zeros();
    bits.clamp(ZSTD_WINDOW_LOG_MIN, ZSTD_WINDOW_LOG_MAX)
}

/// The two frames of a delta from an uncompressed tar stream: `manifest`,
/// the tar bytes of its first entry, against `base_manifest`; `rest`, the
/// rest of the stream, against `reference` (what [`make_delta`] writes,
/// for tests that build deltas of their own).
pub fn compress_delta(
    manifest: &[u8],
    rest: &[u8],
    base_manifest: &[u8],
    reference: &[u8],
) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    for (tar, prefix) in [(manifest, base_manifest), (rest, reference)] {
        let mut frame = frame_encoder(&mut out, prefix, tar.len() as u64)?;
        frame.write_all(tar)?;
        frame.finish()?;
    }
    Ok(out)
}

/// The tar bytes of a delta's first entry: the manifest `bytes`.
fn manifest_entry(bytes: &[u8], mtime: u64) -> io::Result<Vec<u8>> {
    let size = bytes.len() as u64;
    let mut entry = Vec::with_capacity(bytes.len() + 2 * 512);
    write_header(
        &mut entry,
        MANIFEST_PATH,
        tar::EntryType::Regular,
        MODE_FILE,
        size,
        None,
        mtime,
    )?;
    entry.extend_from_slice(bytes);
    write_padding(&mut entry, size)?;
    Ok(entry)
}

/// The length of frame B's tar stream: the header and padded content of
/// every entry of `new` but the files `left_out` has, and the two
/// end-of-archive blocks.
fn files_tar_len(new: &slipway_formats::Manifest, left_out: &BaseFiles<'_>) -> io::Result<u64> {
    let mut headers = Counter(0);
    let mut len = 1024u64;
    for e in new.files.iter().filter(|e| !left_out.has(e)) {
        let size = e.size.unwrap_or(0);
        write_header(
            &mut headers,
            &e.path,
            tar_type(e.kind),
            e.mode.0,
            size,
            e.target.as_deref(),
            0,
        )?;
        len += size.div_ceil(512) * 512;
    }
    Ok(len + headers.0)
}

/// Counts what is written to it.
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0 += bytes.len() as u64;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn tar_type(kind: EntryType) -> tar::EntryType {
    match kind {
        EntryType::File => tar::EntryType::Regular,
        EntryType::Dir => tar::EntryType::Directory,
        EntryType::Symlink => tar::EntryType::Symlink,
    }
}

/// Streams the delta of `new` (open as `archive`) against `base` into
/// `out`: frame A, the manifest's entry against the base manifest; frame
/// B, the tar the walk's sink writes, against `reference`; hashed
/// (SHA-256, minisign's BLAKE2b) as it is written.
fn write_delta(
    out: &mut File,
    archive: &mut File,
    new: &VerifiedRelease,
    base: &VerifiedRelease,
    reference: &[u8],
) -> std::result::Result<(Written, Counts), DeltaWriteError> {
    let mut hashing = HashingWriter {
        inner: &mut *out,
        sha: Sha256::new(),
        prehash: Prehasher::new(),
        size: 0,
    };
    let mtime = new.manifest.created;
    let entry = manifest_entry(&new.manifest_bytes, mtime)?;
    let mut frame = frame_encoder(&mut hashing, &base.manifest_bytes, entry.len() as u64)?;
    frame.write_all(&entry)?;
    frame.finish()?;
    let manifest_frame = hashing.size;

    let left_out = BaseFiles::of(&base.manifest);
    let len = files_tar_len(&new.manifest, &left_out)?;
    let mut sink = DeltaWriter {
        tar: frame_encoder(&mut hashing, reference, len)?,
        base: left_out,
        mtime,
        buf: vec![0u8; BUFFER_SIZE],
        counts: Counts::default(),
    };
    walk_release(&mut *archive, new, &mut sink).map_err(|e| match e {
        WalkError::Entry(e) => DeltaWriteError::Pack(PackError::Release {
            id: new.id,
            message: format!("refused while reading it for the delta: {e}"),
        }),
        WalkError::Sink(e) => e,
    })?;
    let DeltaWriter {
        mut tar, counts, ..
    } = sink;
    tar.write_all(&[0u8; 1024])?;
    tar.finish()?;
    let written = Written {
        sha256: hashing.sha.finalize().into(),
        prehash: hashing.prehash.finalize(),
        size: hashing.size,
        manifest_frame,
    };
    out.sync_all()?;
    Ok((written, counts))
}

/// The walk's sink that writes the delta's tar stream.
struct DeltaWriter<'b, W: Write> {
    tar: W,
    base: BaseFiles<'b>,
    mtime: u64,
    buf: Vec<u8>,
    counts: Counts,
}

impl<W: Write> EntrySink for DeltaWriter<'_, W> {
    type Error = DeltaWriteError;

    /// Frame A, written before the walk, holds the manifest.
    fn manifest(&mut self, _bytes: &[u8]) -> std::result::Result<(), DeltaWriteError> {
        Ok(())
    }

    fn entry(
        &mut self,
        _index: usize,
        expected: &FileEntry,
        content: &mut impl Read,
    ) -> std::result::Result<(), SinkError<DeltaWriteError>> {
        let leave_out = self.base.has(expected);
        let size = expected.size.unwrap_or(0);
        if !leave_out {
            write_header(
                &mut self.tar,
                &expected.path,
                tar_type(expected.kind),
                expected.mode.0,
                size,
                expected.target.as_deref(),
                self.mtime,
            )
            .map_err(|e| SinkError::Sink(e.into()))?;
        }
        let mut sha = Sha256::new();
        let mut read = 0u64;
        loop {
            let n = match content.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(SinkError::Read(e)),
            };
            sha.update(&self.buf[..n]);
            if !leave_out {
                self.tar
                    .write_all(&self.buf[..n])
                    .map_err(|e| SinkError::Sink(e.into()))?;
            }
            read += n as u64;
        }
        if expected.kind != EntryType::File {
            return Ok(());
        }
        check_file_digest(expected, &sha.finalize()).map_err(|e| {
            SinkError::Sink(DeltaWriteError::Pack(PackError::Refused {
                path: PathBuf::from(&expected.path),
                reason: e.to_string(),
            }))
        })?;
        if leave_out {
            self.counts.omitted += 1;
        } else {
            write_padding(&mut self.tar, read).map_err(|e| SinkError::Sink(e.into()))?;
            self.counts.files += 1;
            self.counts.bytes += size;
        }
        Ok(())
    }
}

/// Hashes what zstd writes on its way to the file.
struct HashingWriter<'a> {
    inner: &'a mut File,
    sha: Sha256,
    prehash: Prehasher,
    size: u64,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(bytes)?;
        self.sha.update(&bytes[..n]);
        self.prehash.update(&bytes[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The verified manifest bytes of base releases, by id (`None`: the
/// repository holds no archive for it), read once per base.
pub type BaseManifests = std::collections::HashMap<ReleaseId, Option<Vec<u8>>>;

/// What [`check_listed_delta`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListedDelta {
    /// The delta verified as a host verifies it before its walk.
    Verified,
    /// The delta file or its `.minisig` (this path) is not in the
    /// repository: a host that runs its base takes the full archive.
    Missing(PathBuf),
    /// The repository no longer holds the archive of the release the delta
    /// starts from, without whose manifest the delta cannot be checked.
    NoBase,
}

/// Checks a delta a channel index lists for `release`, as a host verifies
/// it before its walk: the size and SHA-256 the index lists, a
/// `slipway-delta` signature by a key in `keys` for exactly its two
/// releases, the index's app and channel, and the manifest inside (its
/// first frame decompressed against the manifest of the base release,
/// whose archive in `releases/` is verified for it and kept in `bases`).
/// A delta that is there and does not verify is a [`PackError::Verify`]
/// naming it and the release it is listed for.
pub fn check_listed_delta(
    repo: &Repo,
    keys: &TrustedKeys,
    index: &slipway_formats::channel::ChannelIndex,
    release: &slipway_formats::channel::ChannelRelease,
    delta: &slipway_formats::channel::ChannelDelta,
    bases: &mut BaseManifests,
) -> Result<ListedDelta> {
    let rel = delta_rel_path(&delta.from, &release.id);
    let path = repo.root().join(&rel);
    let sig_path = repo.root().join(format!("{rel}.minisig"));
    let missing = |p: &std::path::Path| matches!(std::fs::symlink_metadata(p), Err(e) if e.kind() == io::ErrorKind::NotFound);
    if missing(&path) || missing(&sig_path) {
        return Ok(ListedDelta::Missing(path));
    }
    let base = match bases.entry(delta.from) {
        std::collections::hash_map::Entry::Occupied(known) => known.into_mut(),
        std::collections::hash_map::Entry::Vacant(slot) => {
            slot.insert(base_manifest(repo, keys, &delta.from)?)
        }
    };
    let Some(base_manifest) = base else {
        return Ok(ListedDelta::NoBase);
    };
    let signature = read_text_capped(&sig_path, slipway_formats::MAX_SIGNATURE_BYTES)?;
    let mut file = open_regular(&path)?;
    let expect = DeltaExpectations {
        app: Some(index.app.clone()),
        channel: Some(index.channel.clone()),
        from: Some(delta.from),
        to: Some(release.id),
        size: Some(delta.size),
        sha256: Some(delta.sha256),
    };
    verify_delta(&mut file, &signature, keys, &expect, base_manifest).map_err(|e| {
        PackError::verify(
            &path,
            format!(
                "{e} (the index lists it for release {} {})",
                release.version, release.id
            ),
        )
    })?;
    Ok(ListedDelta::Verified)
}

/// The manifest bytes of release `id`, from its archive in `releases/`
/// verified with `keys` (hash, signature, manifest); `None` when the
/// repository holds no archive or signature for it.
fn base_manifest(repo: &Repo, keys: &TrustedKeys, id: &ReleaseId) -> Result<Option<Vec<u8>>> {
    let path = repo.archive_path(id);
    let sig_path = repo.signature_path(id);
    let missing = |p: &std::path::Path| matches!(std::fs::symlink_metadata(p), Err(e) if e.kind() == io::ErrorKind::NotFound);
    if missing(&path) || missing(&sig_path) {
        return Ok(None);
    }
    let signature = read_text_capped(&sig_path, slipway_formats::MAX_SIGNATURE_BYTES)?;
    let mut file = open_regular(&path)?;
    let expect = Expectations {
        id: Some(*id),
        ..Expectations::default()
    };
    let base = verify_release(&mut file, &signature, keys, &expect)
        .map_err(|e| PackError::verify(&path, e.to_string()))?;
    Ok(Some(base.manifest_bytes))
}

//! `slipway-pack delta`: a signed delta archive from one release of a
//! repository to another, `deltas/<from-hex>-<to-hex>.tar.zst(.minisig)`
//! (the format is in `slipway_formats::delta` and docs/formats.md).
//!
//! Both releases are verified first, with the signing key's own public
//! key (or a key that introduced it): the base for its manifest, the new
//! one in full, by the walk hosts run. The delta is written from that
//! walk: the new manifest, then every entry of the new release except the
//! regular files whose digest and mode the base lists, each file's content
//! hashed again on the way through. The tar headers, zstd level, job size
//! and checksum are those of a release, so the same two releases always
//! give the same delta bytes.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use serde::Serialize;
use sha2::{Digest, Sha256};
use slipway_formats::archive::{
    check_file_digest, verify_release, walk_release, BaseFiles, EntrySink, Expectations, SinkError,
    VerifiedRelease, WalkError,
};
use slipway_formats::delta::{delta_file_name, delta_signature_file_name, DELTAS_DIR};
use slipway_formats::manifest::MODE_FILE;
use slipway_formats::signature::TrustedComment;
use slipway_formats::{EntryType, FileEntry, ReleaseId, TrustedKeys, MANIFEST_PATH};
use slipway_fs::{durable, open_regular, read_text_capped};

use crate::build::{write_header, write_padding, BUFFER_SIZE, ZSTD_JOB_SIZE, ZSTD_LEVEL};
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
}

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
    let (base, _) = verify_listed(repo, &keys, from)?;
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

    let dir = deltas_dir(repo);
    durable::create_dirs(&dir).map_err(PackError::io("create directory", &dir))?;
    let mut temp =
        durable::temp_file_in(&dir).map_err(PackError::io("create a temporary file in", &dir))?;
    let temp_path = temp.path().to_path_buf();
    let (written, counts) =
        write_delta(temp.as_file_mut(), &mut new_file, &new, &base).map_err(|e| match e {
            DeltaWriteError::Pack(e) => e,
            DeltaWriteError::Output(e) => PackError::io("write the delta", &temp_path)(e),
        })?;
    let comment = TrustedComment::for_delta(&n.app, &n.version.to_string(), &n.channel, from, to);
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
}

#[derive(Default)]
struct Counts {
    files: usize,
    bytes: u64,
    omitted: usize,
}

/// Streams the delta of `new` (open as `archive`) against `base` into
/// `out`: zstd with a release's parameters over the tar the walk's sink
/// writes, hashed (SHA-256, minisign's BLAKE2b) as it is written.
fn write_delta(
    out: &mut File,
    archive: &mut File,
    new: &VerifiedRelease,
    base: &VerifiedRelease,
) -> std::result::Result<(Written, Counts), DeltaWriteError> {
    use zstd::stream::raw::CParameter;
    let hashing = HashingWriter {
        inner: &mut *out,
        sha: Sha256::new(),
        prehash: Prehasher::new(),
        size: 0,
    };
    let mut encoder = zstd::stream::write::Encoder::new(hashing, ZSTD_LEVEL)?;
    // Multithreaded mode with one worker: the same frame format releases
    // use, whatever the machine.
    encoder.multithread(1)?;
    encoder.set_parameter(CParameter::JobSize(ZSTD_JOB_SIZE))?;
    encoder.include_checksum(true)?;
    encoder.include_contentsize(false)?;
    let mut sink = DeltaWriter {
        tar: encoder,
        base: BaseFiles::of(&base.manifest),
        mtime: new.manifest.created,
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
    let hashing = tar.finish()?;
    let written = Written {
        sha256: hashing.sha.finalize().into(),
        prehash: hashing.prehash.finalize(),
        size: hashing.size,
    };
    out.sync_all()?;
    Ok((written, counts))
}

/// The walk's sink that writes the delta's tar stream.
struct DeltaWriter<W: Write> {
    tar: W,
    base: BaseFiles,
    mtime: u64,
    buf: Vec<u8>,
    counts: Counts,
}

impl<W: Write> EntrySink for DeltaWriter<W> {
    type Error = DeltaWriteError;

    fn manifest(&mut self, bytes: &[u8]) -> std::result::Result<(), DeltaWriteError> {
        let size = bytes.len() as u64;
        write_header(
            &mut self.tar,
            MANIFEST_PATH,
            tar::EntryType::Regular,
            MODE_FILE,
            size,
            None,
            self.mtime,
        )?;
        self.tar.write_all(bytes)?;
        write_padding(&mut self.tar, size)?;
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
            let kind = match expected.kind {
                EntryType::File => tar::EntryType::Regular,
                EntryType::Dir => tar::EntryType::Directory,
                EntryType::Symlink => tar::EntryType::Symlink,
            };
            write_header(
                &mut self.tar,
                &expected.path,
                kind,
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

//! The first pass over a release archive: is it the release it claims to
//! be, signed by a trusted key, and does it start with a valid manifest?

use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::sync::mpsc;

use sha2::{Digest, Sha256};
use thiserror::Error;

use super::{decoder, describe_tar_type, is_window_error};
use crate::manifest::ManifestError;
use crate::signature::{
    check_release_comment, check_release_manifest, ReleaseCommentError, SignatureError,
    TrustedComment,
};
use crate::MAX_MANIFEST_BYTES;
use crate::{KeyId, Manifest, ReleaseId, SignatureFile, TrustedKeys, MANIFEST_PATH};

/// The read buffer of the verifying pass.
const READ_BUFFER: usize = 256 * 1024;

/// Decompressed bytes allowed before the manifest's own bytes: room for its
/// tar header and any PAX or GNU long-name header in front of it.
const MANIFEST_HEADER_ALLOWANCE: u64 = 64 * 1024;

/// What the caller already knows about the release it is about to verify.
/// Every field given is checked; `None` skips that check.
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    /// The app this host runs (`[update]` is for one app).
    pub app: Option<String>,
    /// The channel this host follows.
    pub channel: Option<String>,
    /// The release id the channel index, the operator or the archive's file
    /// name named.
    pub id: Option<ReleaseId>,
    /// The signed size from the channel index: a longer file is refused
    /// without reading past the cap; with `id` set (a listed release) the
    /// size is exact and a shorter file is refused too.
    pub max_size: Option<u64>,
}

/// A release archive whose id, signature and manifest checked out: a
/// full release ([`verify_release`]) or a delta ([`crate::delta::verify_delta`]).
#[derive(Debug)]
pub struct VerifiedRelease {
    /// The release id: the archive's SHA-256 for a full release; for a
    /// delta, the release it produces (the `to` of its signed comment).
    pub id: ReleaseId,
    /// For a delta, the release it starts from (its signed `from`): walk it
    /// with [`super::walk_delta`] and that release's manifest. `None` for a
    /// full release.
    pub base: Option<ReleaseId>,
    pub manifest: Manifest,
    /// The manifest exactly as it appears in the archive.
    pub manifest_bytes: Vec<u8>,
    /// The archive's (or delta's) size in bytes.
    pub size: u64,
    /// The trusted key that signed it.
    pub signer: KeyId,
    /// The signed trusted comment (kind `slipway-release` or `slipway-delta`).
    pub comment: TrustedComment,
    /// A keyed hash of the bytes that were verified, to prove that a later
    /// read of the same descriptor gives the same bytes.
    pub recheck: Recheck,
}

/// Proof that a second read of an archive gives the bytes the first read
/// verified, even if whoever can write the file (a USB stick, a user who
/// owns it, a FUSE file system) changes it in between: keyed BLAKE3 of every
/// byte, under a key drawn at random for this verification and never shown
/// to anyone. Without the key nobody can make other bytes hash the same,
/// and BLAKE3 runs at several GB/s, so the second read costs a small
/// fraction of the SHA-256 that establishes the release id.
pub struct Recheck {
    key: [u8; 32],
    mac: blake3::Hash,
}

impl Recheck {
    /// A hasher for the second read.
    pub fn hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.key)
    }

    /// Whether the second read, hashed with [`Recheck::hasher`], saw the
    /// verified bytes (compared in constant time).
    pub fn matches(&self, reread: &blake3::Hasher) -> bool {
        reread.finalize() == self.mac
    }
}

impl std::fmt::Debug for Recheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recheck { .. }")
    }
}

/// A fresh random key for [`Recheck`].
fn recheck_key() -> io::Result<[u8; 32]> {
    use ring::rand::SecureRandom;
    let mut key = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| io::Error::other("the system's random number generator failed"))?;
    Ok(key)
}

/// Why an archive was refused by [`verify_release`]. The caller names the
/// archive and signature files.
#[derive(Debug, Error)]
pub enum ArchiveError {
    #[error("cannot read the archive: {0}")]
    Read(io::Error),
    #[error("the archive is larger than the {max} bytes it was announced with; refused without being read further")]
    TooLarge { max: u64 },
    #[error("the archive is {found} bytes, but the signed channel index says {expected}: it is truncated or another file")]
    SizeMismatch { expected: u64, found: u64 },
    #[error("{0}")]
    Signature(SignatureError),
    #[error(
        "the archive is {found}, not the expected {expected}: it is corrupt or another release"
    )]
    IdMismatch {
        expected: ReleaseId,
        found: ReleaseId,
    },
    #[error("{source}")]
    Comment {
        id: ReleaseId,
        /// The signed comment as it is in the signature.
        comment: String,
        source: Box<ReleaseCommentError>,
    },
    #[error("release {id} is for app {found:?}, not {expected:?}")]
    WrongApp {
        id: ReleaseId,
        expected: String,
        found: String,
    },
    #[error("release {id} is on channel {found:?}, not {expected:?}")]
    WrongChannel {
        id: ReleaseId,
        expected: String,
        found: String,
    },
    #[error("release {id}: {source}")]
    ManifestEntry {
        id: ReleaseId,
        source: ManifestEntryError,
    },
    #[error("release {id}: {source}")]
    Manifest {
        id: ReleaseId,
        source: ManifestError,
    },
    /// A delta's signed comment or listing does not hold.
    #[error("{0}")]
    Delta(crate::delta::DeltaError),
}

/// Why the first tar entry is not a manifest ([`read_manifest_entry`]).
#[derive(Debug, Error)]
pub enum ManifestEntryError {
    #[error("zstd window larger than 2^{} bytes; refused to bound memory (rebuild it with slipway-pack)", super::ZSTD_WINDOW_LOG_MAX)]
    WindowTooLarge,
    #[error("not a readable zstd-compressed tar: {0}")]
    Corrupt(String),
    #[error("the first entry is {found:?}, not {MANIFEST_PATH}")]
    NotFirst { found: String },
    #[error("{MANIFEST_PATH} is a {kind} entry, not a regular file")]
    NotFile { kind: String },
    #[error("{MANIFEST_PATH} is {size} bytes, over the {MAX_MANIFEST_BYTES}-byte limit")]
    TooLarge { size: u64 },
}

/// Verifies a release archive and its detached signature (SPEC §4 step 4,
/// §6 "Archive"), reading the archive exactly once for the hashes.
///
/// `archive` is the open archive file, positioned anywhere; `signature` the
/// text of its `.minisig`. In order: the size against `expect.max_size`;
/// the signature must be a prehashed one by a key in `keys`; one pass over
/// the archive computes its SHA-256, the minisign check and the
/// [`Recheck`], stopping at `expect.max_size`; the id must equal
/// `expect.id`; the signature must verify and its trusted comment must be a
/// `slipway-release` comment naming this id (and `expect.app`); then the
/// first tar entry must be `slipway/manifest.json`, a strict manifest whose
/// app, version and channel are exactly the signed ones (and whose channel
/// is `expect.channel`).
///
/// On success `archive` is rewound to offset 0: hand it to
/// [`super::walk_release`], never reopen the file by path.
pub fn verify_release<R: Read + Seek>(
    archive: &mut R,
    signature: &str,
    keys: &TrustedKeys,
    expect: &Expectations,
) -> Result<VerifiedRelease, ArchiveError> {
    let exact = expect.id.is_some();
    let authentic = authenticate(archive, signature, keys, expect.max_size, exact, expect.id)?;
    let id = authentic.digest;

    let comment_error = |comment: String| {
        move |source| ArchiveError::Comment {
            id,
            comment,
            source: Box::new(source),
        }
    };
    let comment = check_release_comment(&authentic.comment_text, &id)
        .map_err(comment_error(authentic.comment_text.clone()))?;
    check_signed_app(&comment, &id, expect.app.as_deref())?;
    let (manifest, manifest_bytes) = read_signed_manifest(archive, &id)?;
    check_release_manifest(&comment, &id, &manifest).map_err(comment_error(comment.to_string()))?;
    check_channel(&manifest, &id, expect.channel.as_deref())?;
    archive
        .seek(SeekFrom::Start(0))
        .map_err(ArchiveError::Read)?;
    Ok(VerifiedRelease {
        id,
        base: None,
        manifest,
        manifest_bytes,
        size: authentic.size,
        signer: authentic.signer,
        comment,
        recheck: authentic.recheck,
    })
}

/// What the first pass over a signed archive established: its digest,
/// its size, who signed it and what the signed comment says (not yet
/// interpreted).
pub(crate) struct Authentic {
    pub(crate) digest: ReleaseId,
    pub(crate) size: u64,
    pub(crate) signer: KeyId,
    pub(crate) comment_text: String,
    pub(crate) recheck: Recheck,
}

/// The first pass shared by releases and deltas: the size against
/// `max_size` (exact when `exact`), a prehashed signature by a key in
/// `keys`, one streaming pass computing SHA-256, minisign's prehash and the
/// [`Recheck`], the digest against `expected_digest`, then the signature.
pub(crate) fn authenticate<R: Read + Seek>(
    archive: &mut R,
    signature: &str,
    keys: &TrustedKeys,
    max_size: Option<u64>,
    exact: bool,
    expected_digest: Option<ReleaseId>,
) -> Result<Authentic, ArchiveError> {
    if let Some(max) = max_size {
        let len = archive.seek(SeekFrom::End(0)).map_err(ArchiveError::Read)?;
        if len > max {
            return Err(ArchiveError::TooLarge { max });
        }
        // A listed archive's size is exact: the index signed it.
        if exact && len < max {
            return Err(ArchiveError::SizeMismatch {
                expected: max,
                found: len,
            });
        }
    }
    archive
        .seek(SeekFrom::Start(0))
        .map_err(ArchiveError::Read)?;

    let sig = SignatureFile::parse(signature).map_err(ArchiveError::Signature)?;
    // Legacy signatures and unknown keys are refused here, before the
    // archive is read at all.
    let mut check = sig.start_check(keys).map_err(ArchiveError::Signature)?;

    let recheck_key = recheck_key().map_err(ArchiveError::Read)?;
    // SHA-256 and the keyed BLAKE3 here, minisign's BLAKE2b on a second
    // thread: the hashes of one pass overlap instead of adding up.
    let (streamed, check) = std::thread::scope(|scope| {
        let (chunks, chunk_rx) = mpsc::sync_channel::<Vec<u8>>(4);
        let (spare_tx, spares) = mpsc::channel::<Vec<u8>>();
        let checker = scope.spawn(move || {
            for chunk in chunk_rx {
                check.update(&chunk);
                let _ = spare_tx.send(chunk);
            }
            check
        });
        let streamed = hash_stream(archive, &chunks, &spares, max_size, &recheck_key);
        drop(chunks);
        (streamed, checker.join())
    });
    let (sha, mac, size) = streamed?;
    let check = check.map_err(|_| {
        ArchiveError::Read(io::Error::other("the signature-checking thread panicked"))
    })?;
    let digest = ReleaseId::from_digest(sha.finalize().into());
    if let Some(expected) = expected_digest {
        if expected != digest {
            return Err(ArchiveError::IdMismatch {
                expected,
                found: digest,
            });
        }
    }
    let signer = check.finish().map_err(ArchiveError::Signature)?.id();
    Ok(Authentic {
        digest,
        size,
        signer,
        comment_text: sig.trusted_comment().to_string(),
        recheck: Recheck {
            key: recheck_key,
            mac,
        },
    })
}

/// The signed comment's `app` against the app the caller expects.
pub(crate) fn check_signed_app(
    comment: &TrustedComment,
    id: &ReleaseId,
    app: Option<&str>,
) -> Result<(), ArchiveError> {
    let signed_app = comment.field("app").map_err(ArchiveError::Signature)?;
    if let Some(app) = app {
        if app != signed_app {
            return Err(ArchiveError::WrongApp {
                id: *id,
                expected: app.to_string(),
                found: signed_app.to_string(),
            });
        }
    }
    Ok(())
}

/// The manifest's channel against the channel the caller expects.
pub(crate) fn check_channel(
    manifest: &Manifest,
    id: &ReleaseId,
    channel: Option<&str>,
) -> Result<(), ArchiveError> {
    if let Some(channel) = channel {
        if channel != manifest.channel {
            return Err(ArchiveError::WrongChannel {
                id: *id,
                expected: channel.to_string(),
                found: manifest.channel.clone(),
            });
        }
    }
    Ok(())
}

/// The first tar entry of an authenticated archive, parsed strictly.
fn read_signed_manifest<R: Read + Seek>(
    archive: &mut R,
    id: &ReleaseId,
) -> Result<(Manifest, Vec<u8>), ArchiveError> {
    let id = *id;
    archive
        .seek(SeekFrom::Start(0))
        .map_err(ArchiveError::Read)?;
    let manifest_bytes = read_manifest_entry(&mut *archive)
        .map_err(|source| ArchiveError::ManifestEntry { id, source })?;
    let manifest =
        Manifest::parse(&manifest_bytes).map_err(|source| ArchiveError::Manifest { id, source })?;
    Ok((manifest, manifest_bytes))
}

/// Reads the whole archive once, hashing it with SHA-256 and keyed BLAKE3
/// and passing every chunk to `chunks` (the signature check), and returns
/// the hashes and the size.
fn hash_stream(
    archive: &mut impl Read,
    chunks: &mpsc::SyncSender<Vec<u8>>,
    spares: &mpsc::Receiver<Vec<u8>>,
    max_size: Option<u64>,
    recheck_key: &[u8; 32],
) -> Result<(Sha256, blake3::Hash, u64), ArchiveError> {
    let mut sha = Sha256::new();
    let mut mac = blake3::Hasher::new_keyed(recheck_key);
    let mut size: u64 = 0;
    loop {
        let mut buf = spares.try_recv().unwrap_or_default();
        buf.resize(READ_BUFFER, 0);
        let n = match archive.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ArchiveError::Read(e)),
        };
        size += n as u64;
        if let Some(max) = max_size.filter(|max| size > *max) {
            return Err(ArchiveError::TooLarge { max });
        }
        buf.truncate(n);
        sha.update(&buf);
        mac.update(&buf);
        if chunks.send(buf).is_err() {
            return Err(ArchiveError::Read(io::Error::other(
                "the signature-checking thread stopped",
            )));
        }
    }
    Ok((sha, mac.finalize(), size))
}

/// Decompresses just enough of a compressed release to read its first
/// entry, which must be the regular file `slipway/manifest.json` of at most
/// [`MAX_MANIFEST_BYTES`], and returns its bytes (not parsed). Decompressed
/// output is capped, so a hostile stream cannot make the tar reader buffer
/// more than the manifest limit; the zstd window is limited.
///
/// [`verify_release`] calls it once the bytes are authentic; `slipway-pack
/// inspect` calls it on an archive it does not authenticate.
pub fn read_manifest_entry(compressed: impl Read) -> Result<Vec<u8>, ManifestEntryError> {
    read_manifest_entry_with(compressed, None)
}

/// [`read_manifest_entry`] of a stream whose first zstd frame was
/// compressed against `prefix` (a delta's frame A, against its base's
/// manifest): only that frame is read.
pub(crate) fn read_manifest_entry_with(
    compressed: impl Read,
    prefix: Option<&[u8]>,
) -> Result<Vec<u8>, ManifestEntryError> {
    let decode_err = |e: io::Error| {
        if is_window_error(&e) {
            ManifestEntryError::WindowTooLarge
        } else {
            ManifestEntryError::Corrupt(e.to_string())
        }
    };
    let decoder = decoder(BufReader::new(compressed), prefix).map_err(decode_err)?;
    let cap = MAX_MANIFEST_BYTES + MANIFEST_HEADER_ALLOWANCE;
    let bounded = CappedReader {
        inner: decoder,
        left: cap,
    };
    let mut tar = tar::Archive::new(bounded);
    let mut entries = tar.entries().map_err(decode_err)?;
    let mut entry = match entries.next() {
        Some(Ok(entry)) => entry,
        Some(Err(e)) => return Err(decode_err(e)),
        None => {
            return Err(ManifestEntryError::NotFirst {
                found: "(no entry at all)".to_string(),
            })
        }
    };
    let found = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    if found != MANIFEST_PATH {
        return Err(ManifestEntryError::NotFirst { found });
    }
    let kind = entry.header().entry_type();
    if kind != tar::EntryType::Regular {
        return Err(ManifestEntryError::NotFile {
            kind: describe_tar_type(kind),
        });
    }
    let size = entry.size();
    if size > MAX_MANIFEST_BYTES {
        return Err(ManifestEntryError::TooLarge { size });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    (&mut entry)
        .take(size)
        .read_to_end(&mut bytes)
        .map_err(decode_err)?;
    if bytes.len() as u64 != size {
        return Err(ManifestEntryError::Corrupt(format!(
            "{MANIFEST_PATH} is cut short: {} of {size} bytes",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// A reader that fails once more than `left` bytes have been read through it.
struct CappedReader<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // One probe byte past the cap tells a stream that ends exactly at
            // the cap from one that goes on.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other(
                    "decompressed data runs past the limit for the manifest",
                )),
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
impl Recheck {
    /// The recheck a verification of exactly `bytes` would have made.
    pub(crate) fn of(bytes: &[u8]) -> Recheck {
        let key = [7u8; 32];
        Recheck {
            key,
            mac: blake3::keyed_hash(&key, bytes),
        }
    }
}

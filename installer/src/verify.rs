//! Step 4 of the transaction: verify a release archive before anything of it
//! is unpacked.
//!
//! [`verify_archive`] opens the archive once and reads it in one streaming
//! pass that computes the release id (SHA-256 of the file), feeds the minisign
//! check and enforces the size cap. Only when the signature holds, and its
//! trusted comment names this very id, does it decompress the first tar entry:
//! the manifest, parsed strictly. The open file is handed on in the returned
//! [`VerifiedArchive`], so [`crate::stage`] unpacks from the descriptor that
//! was verified, not from a path that could have been swapped since.
//!
//! [`check_upgrade`] is the rest of step 4: the version order, the app, and
//! whether the new code can read the host's data.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use sha2::{Digest, Sha256};
use slipway_formats::manifest::ManifestError;
use slipway_formats::signature::{
    check_release_comment, check_release_manifest, ReleaseCommentError, SignatureError,
    TrustedComment,
};
use slipway_formats::{
    KeyId, Manifest, ReleaseId, SignatureFile, TrustedKeys, Version, MANIFEST_PATH,
    MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES,
};
use slipway_fs::ReadError;
use thiserror::Error;

/// The read buffer of the verifying pass.
const READ_BUFFER: usize = 256 * 1024;

/// The largest zstd window accepted, as a power of two (128 MiB): it bounds
/// the decoder's memory. Releases are compressed with far smaller windows.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 27;

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
    /// The release id the channel index (or the operator) named.
    pub id: Option<ReleaseId>,
    /// The signed size from the channel index: a longer file is refused
    /// without reading past the cap; with `id` set (a listed release) the
    /// size is exact and a shorter file is refused too.
    pub max_size: Option<u64>,
}

/// An archive whose id, signature and manifest have been checked.
///
/// `file` is the descriptor that was read, rewound to offset 0: stage from
/// it, never reopen `path`; and check what is read again with `recheck`.
#[derive(Debug)]
pub struct VerifiedArchive {
    pub id: ReleaseId,
    pub manifest: Manifest,
    /// The manifest exactly as it appears in the archive.
    pub manifest_bytes: Vec<u8>,
    /// The archive's size in bytes.
    pub size: u64,
    /// The trusted key that signed it.
    pub signer: KeyId,
    /// The signed trusted comment (kind `slipway-release`).
    pub comment: TrustedComment,
    pub file: File,
    pub path: PathBuf,
    /// A keyed hash of the bytes that were verified, to prove that a later
    /// read of `file` gives the same bytes.
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

/// Why a release was refused at step 4. Each variant names the archive,
/// signature or release id, and the message says what to do.
#[derive(Debug, Error)]
pub enum VerifyError {
    #[error("cannot open archive {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path} is a {kind}, not a regular file; refusing to read it as an archive")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("cannot read archive {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("archive {path} is larger than the {max} bytes it was announced with; it was refused without being read further: fetch it again")]
    TooLarge { path: PathBuf, max: u64 },
    #[error("archive {path} is {found} bytes, but the signed channel index says {expected}: it is truncated or another file; delete it and fetch again, or re-publish the release")]
    SizeMismatch {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("cannot read signature {path}: {source} (the .minisig must sit beside the archive)")]
    SignatureRead { path: PathBuf, source: io::Error },
    #[error(
        "signature {path} is over {MAX_SIGNATURE_BYTES} bytes; it is not a minisign signature"
    )]
    SignatureTooLarge { path: PathBuf },
    #[error("signature {path} for archive {archive}: {source}")]
    Signature {
        path: PathBuf,
        archive: PathBuf,
        source: SignatureError,
    },
    #[error("archive {path} is {found}, not the expected {expected}: it is corrupt or another release; delete it and fetch again")]
    IdMismatch {
        path: PathBuf,
        expected: ReleaseId,
        found: ReleaseId,
    },
    #[error("signature {path} has trusted comment {comment:?}, which is not a slipway release comment; sign releases with slipway-pack")]
    NotReleaseComment { path: PathBuf, comment: String },
    #[error("signature {path} is for release {signed}, but archive {archive} is {actual}: the signature belongs to another archive")]
    SignedForAnotherArchive {
        path: PathBuf,
        archive: PathBuf,
        signed: String,
        actual: ReleaseId,
    },
    #[error(
        "release {id} is for app {found:?}, but this host runs {expected:?}; check [update] source"
    )]
    WrongApp {
        id: ReleaseId,
        expected: String,
        found: String,
    },
    #[error("release {id} is on channel {found:?}, but this host follows {expected:?}; check [update] channel")]
    WrongChannel {
        id: ReleaseId,
        expected: String,
        found: String,
    },
    #[error("release {id}: the manifest says {field} {manifest:?} but the signature says {signed:?}; the archive was built or signed wrongly and is refused")]
    ManifestDisagrees {
        id: ReleaseId,
        field: String,
        manifest: String,
        signed: String,
    },
    #[error("release {id} ({path}): zstd window larger than 2^{ZSTD_WINDOW_LOG_MAX} bytes; refused to bound memory (rebuild it with slipway-pack)")]
    WindowTooLarge { path: PathBuf, id: ReleaseId },
    #[error("release {id} ({path}) is not a readable zstd-compressed tar: {reason}")]
    Corrupt {
        path: PathBuf,
        id: ReleaseId,
        reason: String,
    },
    #[error("release {id}: the first entry is {found:?}, not {MANIFEST_PATH}; refused")]
    ManifestNotFirst { id: ReleaseId, found: String },
    #[error("release {id}: {MANIFEST_PATH} is a {kind} entry, not a regular file; refused")]
    ManifestNotFile { id: ReleaseId, kind: String },
    #[error("release {id}: {MANIFEST_PATH} is {size} bytes, over the {MAX_MANIFEST_BYTES}-byte limit; refused")]
    ManifestTooLarge { id: ReleaseId, size: u64 },
    #[error("release {id}: {source}")]
    Manifest {
        id: ReleaseId,
        source: ManifestError,
    },
    #[error("{app} {version} is already installed")]
    AlreadyInstalled { app: String, version: Version },
    #[error("{app} {new} is older than the running {running}; pass --allow-downgrade to install it anyway")]
    Downgrade {
        app: String,
        running: Version,
        new: Version,
    },
    #[error(
        "release is for app {new:?} but the running release is {running:?}; one host runs one app"
    )]
    AppChanged { running: String, new: String },
    #[error("{app} {version} reads data schemas {min} to {max}, but the data is at schema {data}, newer than it understands; refused whatever the flags (install a release that reads schema {data}, or restore a snapshot taken before the migration)")]
    DataTooNew {
        app: String,
        version: Version,
        data: u32,
        min: u32,
        max: u32,
    },
    #[error("{app} {version} reads data schemas {min} to {max} and has no migrate hook, but the data is at schema {data}; install a release that migrates from schema {data} first")]
    DataTooOld {
        app: String,
        version: Version,
        data: u32,
        min: u32,
        max: u32,
    },
}

/// Verifies a release archive and its detached signature (SPEC §4 step 4,
/// §6 "Archive"), reading the archive file exactly once for the hashes.
///
/// In order: the archive is opened (`O_NOFOLLOW`, regular files only); the
/// signature is read (capped) and must be a prehashed signature by a key in
/// `keys`; one pass over the archive computes its SHA-256 and the minisign
/// check, stopping at `expect.max_size`; the id must equal `expect.id`; the
/// signature must verify and its trusted comment must be a `slipway-release`
/// comment naming this id; then the first tar entry must be
/// `slipway/manifest.json`, a strict manifest whose app, version and channel
/// equal the signed ones (and `expect`'s).
///
/// Nothing is written anywhere. On success the returned archive's `file` is
/// rewound to offset 0.
pub fn verify_archive(
    archive: &Path,
    signature: &Path,
    keys: &TrustedKeys,
    expect: &Expectations,
) -> Result<VerifiedArchive, VerifyError> {
    let mut file = match slipway_fs::open_regular(archive) {
        Ok(f) => f,
        // A symlink is never followed: the open itself fails (ELOOP).
        Err(ReadError::NotRegular {
            path,
            kind: "symlink",
        }) => {
            return Err(VerifyError::Open {
                path,
                source: io::Error::from_raw_os_error(rustix::io::Errno::LOOP.raw_os_error()),
            })
        }
        Err(ReadError::NotRegular { path, kind }) => {
            return Err(VerifyError::NotRegular { path, kind })
        }
        Err(ReadError::NotFound { path }) => {
            return Err(VerifyError::Open {
                path,
                source: io::ErrorKind::NotFound.into(),
            })
        }
        Err(e) => {
            return Err(VerifyError::Open {
                path: archive.to_path_buf(),
                source: io::Error::other(e.to_string()),
            })
        }
    };
    let read_err = |source| VerifyError::Read {
        path: archive.to_path_buf(),
        source,
    };
    if let Some(max) = expect.max_size {
        let len = file.metadata().map_err(read_err)?.len();
        if len > max {
            return Err(VerifyError::TooLarge {
                path: archive.to_path_buf(),
                max,
            });
        }
        // A listed release's size is exact: the index signed it.
        if expect.id.is_some() && len < max {
            return Err(VerifyError::SizeMismatch {
                path: archive.to_path_buf(),
                expected: max,
                found: len,
            });
        }
    }

    let sig_text = read_signature(signature)?;
    let sig_err = |source| VerifyError::Signature {
        path: signature.to_path_buf(),
        archive: archive.to_path_buf(),
        source,
    };
    let sig = SignatureFile::parse(&sig_text).map_err(sig_err)?;
    // Legacy signatures and unknown keys are refused here, before the
    // archive is read at all.
    let mut check = sig.start_check(keys).map_err(sig_err)?;

    let recheck_key = recheck_key().map_err(read_err)?;
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
        let streamed = hash_stream(&mut file, &chunks, &spares, expect.max_size, &recheck_key);
        drop(chunks);
        (streamed, checker.join())
    });
    let (sha, mac, size) = match streamed {
        Ok(done) => done,
        Err(Streamed::TooLarge(max)) => {
            return Err(VerifyError::TooLarge {
                path: archive.to_path_buf(),
                max,
            })
        }
        Err(Streamed::Io(e)) => return Err(read_err(e)),
    };
    let check =
        check.map_err(|_| read_err(io::Error::other("the signature-checking thread panicked")))?;
    let id = ReleaseId::from_digest(sha.finalize().into());
    if let Some(expected) = expect.id {
        if expected != id {
            return Err(VerifyError::IdMismatch {
                path: archive.to_path_buf(),
                expected,
                found: id,
            });
        }
    }
    let signer = check.finish().map_err(sig_err)?.id();

    // The release comment rules are slipway_formats::signature's, shared
    // with `slipway-pack verify`.
    let comment = check_release_comment(sig.trusted_comment(), &id).map_err(|e| match e {
        ReleaseCommentError::ForAnotherArchive { signed, actual } => {
            VerifyError::SignedForAnotherArchive {
                path: signature.to_path_buf(),
                archive: archive.to_path_buf(),
                signed,
                actual,
            }
        }
        _ => VerifyError::NotReleaseComment {
            path: signature.to_path_buf(),
            comment: sig.trusted_comment().to_string(),
        },
    })?;
    let field = |name: &str| comment.field(name).map_err(sig_err);
    let signed_app = field("app")?;
    if let Some(app) = &expect.app {
        if app != signed_app {
            return Err(VerifyError::WrongApp {
                id,
                expected: app.clone(),
                found: signed_app.to_string(),
            });
        }
    }

    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let manifest_bytes = read_manifest_entry(&mut file, archive, id)?;
    let manifest =
        Manifest::parse(&manifest_bytes).map_err(|source| VerifyError::Manifest { id, source })?;
    check_release_manifest(&comment, &id, &manifest).map_err(|e| match e {
        ReleaseCommentError::ManifestDisagrees {
            field,
            manifest,
            signed,
        } => VerifyError::ManifestDisagrees {
            id,
            field,
            manifest,
            signed,
        },
        _ => VerifyError::NotReleaseComment {
            path: signature.to_path_buf(),
            comment: comment.to_string(),
        },
    })?;
    if let Some(channel) = &expect.channel {
        if channel != &manifest.channel {
            return Err(VerifyError::WrongChannel {
                id,
                expected: channel.clone(),
                found: manifest.channel.clone(),
            });
        }
    }

    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    Ok(VerifiedArchive {
        id,
        manifest,
        manifest_bytes,
        size,
        signer,
        comment,
        file,
        path: archive.to_path_buf(),
        recheck: Recheck {
            key: recheck_key,
            mac,
        },
    })
}

/// Why the hashing pass stopped.
enum Streamed {
    TooLarge(u64),
    Io(io::Error),
}

/// Reads the whole file once, hashing it with SHA-256 and keyed BLAKE3
/// and passing every chunk to `chunks` (the signature check), and returns
/// the hashes and the size.
fn hash_stream(
    file: &mut File,
    chunks: &mpsc::SyncSender<Vec<u8>>,
    spares: &mpsc::Receiver<Vec<u8>>,
    max_size: Option<u64>,
    recheck_key: &[u8; 32],
) -> Result<(Sha256, blake3::Hash, u64), Streamed> {
    let mut sha = Sha256::new();
    let mut mac = blake3::Hasher::new_keyed(recheck_key);
    let mut size: u64 = 0;
    loop {
        let mut buf = spares.try_recv().unwrap_or_default();
        buf.resize(READ_BUFFER, 0);
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Streamed::Io(e)),
        };
        size += n as u64;
        if let Some(max) = max_size.filter(|max| size > *max) {
            return Err(Streamed::TooLarge(max));
        }
        buf.truncate(n);
        sha.update(&buf);
        mac.update(&buf);
        if chunks.send(buf).is_err() {
            return Err(Streamed::Io(io::Error::other(
                "the signature-checking thread stopped",
            )));
        }
    }
    Ok((sha, mac.finalize(), size))
}

/// Reads a `.minisig` file, refusing special files and anything over
/// [`MAX_SIGNATURE_BYTES`].
fn read_signature(path: &Path) -> Result<String, VerifyError> {
    let io_err = |source| VerifyError::SignatureRead {
        path: path.to_path_buf(),
        source,
    };
    match slipway_fs::read_text_capped(path, MAX_SIGNATURE_BYTES) {
        Ok(text) => Ok(text),
        Err(ReadError::TooLarge { path, .. }) => Err(VerifyError::SignatureTooLarge { path }),
        Err(ReadError::NotFound { .. }) => Err(io_err(io::ErrorKind::NotFound.into())),
        Err(ReadError::Io { source, .. }) => Err(io_err(source)),
        Err(ReadError::NotRegular { kind, .. }) => Err(io_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("it is a {kind}, not a regular file"),
        ))),
        Err(ReadError::NotText { .. }) => Err(io_err(io::Error::new(
            io::ErrorKind::InvalidData,
            "it is not UTF-8 text",
        ))),
    }
}

/// Decompresses just enough of the archive to read its first entry, which
/// must be the manifest, and returns its bytes. Decompressed output is capped
/// so that a hostile stream cannot make the tar reader buffer more than the
/// manifest limit.
fn read_manifest_entry(
    file: &mut File,
    path: &Path,
    id: ReleaseId,
) -> Result<Vec<u8>, VerifyError> {
    let decode_err = |e: io::Error| {
        if is_window_error(&e) {
            VerifyError::WindowTooLarge {
                path: path.to_path_buf(),
                id,
            }
        } else {
            VerifyError::Corrupt {
                path: path.to_path_buf(),
                id,
                reason: e.to_string(),
            }
        }
    };
    let mut decoder = zstd::stream::read::Decoder::new(&mut *file).map_err(decode_err)?;
    decoder
        .window_log_max(ZSTD_WINDOW_LOG_MAX)
        .map_err(decode_err)?;
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
            return Err(VerifyError::ManifestNotFirst {
                id,
                found: "(no entry at all)".to_string(),
            })
        }
    };
    let found = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    if found != MANIFEST_PATH {
        return Err(VerifyError::ManifestNotFirst { id, found });
    }
    let kind = entry.header().entry_type();
    if kind != tar::EntryType::Regular {
        return Err(VerifyError::ManifestNotFile {
            id,
            kind: describe_tar_type(kind),
        });
    }
    let size = entry.size();
    if size > MAX_MANIFEST_BYTES {
        return Err(VerifyError::ManifestTooLarge { id, size });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    (&mut entry)
        .take(size)
        .read_to_end(&mut bytes)
        .map_err(decode_err)?;
    if bytes.len() as u64 != size {
        return Err(VerifyError::Corrupt {
            path: path.to_path_buf(),
            id,
            reason: format!(
                "{MANIFEST_PATH} is cut short: {} of {size} bytes",
                bytes.len()
            ),
        });
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

/// Whether a decoding error is zstd refusing a window over the limit.
pub(crate) fn is_window_error(e: &io::Error) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    text.contains("window") || text.contains("too much memory")
}

/// A tar entry type in words, for messages.
pub(crate) fn describe_tar_type(kind: tar::EntryType) -> String {
    match kind {
        tar::EntryType::Regular => "regular file".into(),
        tar::EntryType::Directory => "directory".into(),
        tar::EntryType::Symlink => "symlink".into(),
        tar::EntryType::Link => "hard link".into(),
        tar::EntryType::Char => "character device".into(),
        tar::EntryType::Block => "block device".into(),
        tar::EntryType::Fifo => "FIFO".into(),
        tar::EntryType::Continuous => "contiguous file".into(),
        tar::EntryType::GNUSparse => "GNU sparse file".into(),
        tar::EntryType::XGlobalHeader => "PAX global header".into(),
        tar::EntryType::XHeader => "PAX extended header".into(),
        tar::EntryType::GNULongName => "GNU long name header".into(),
        tar::EntryType::GNULongLink => "GNU long link header".into(),
        other => format!("unknown type {:?}", char::from(other.as_byte())),
    }
}

/// Checks that `new` may replace `running` on this host (SPEC §4 step 4):
///
/// - the same app;
/// - a newer version: an equal version is [`VerifyError::AlreadyInstalled`],
///   an older one [`VerifyError::Downgrade`]; `allow_downgrade` lifts both;
/// - when the data's schema is known, the new release must be able to take
///   it (the one meaning of `schema_min_compatible`, docs/configuration.md:
///   the oldest data schema the release's *code* reads as it is):
///   - data newer than `schema_version` is refused whatever
///     `allow_downgrade` says: running code on data it does not understand
///     is how data gets destroyed;
///   - data from `schema_min_compatible` to `schema_version` is taken (the
///     migrate hook, if any, brings it up to `schema_version` first);
///   - older data is taken only by a release with a migrate hook, which
///     migrates it to `schema_version` before the code ever reads it;
///     without one it is refused.
pub fn check_upgrade(
    new: &Manifest,
    running: Option<&Manifest>,
    data_schema: Option<u32>,
    allow_downgrade: bool,
) -> Result<(), VerifyError> {
    if let Some(running) = running {
        if running.app != new.app {
            return Err(VerifyError::AppChanged {
                running: running.app.clone(),
                new: new.app.clone(),
            });
        }
        if !allow_downgrade {
            match new.version.cmp(&running.version) {
                std::cmp::Ordering::Greater => {}
                std::cmp::Ordering::Equal => {
                    return Err(VerifyError::AlreadyInstalled {
                        app: new.app.clone(),
                        version: new.version.clone(),
                    })
                }
                std::cmp::Ordering::Less => {
                    return Err(VerifyError::Downgrade {
                        app: new.app.clone(),
                        running: running.version.clone(),
                        new: new.version.clone(),
                    })
                }
            }
        }
    }
    if let Some(data) = data_schema {
        let (min, max) = (new.schema_min_compatible, new.schema_version);
        if data > max {
            return Err(VerifyError::DataTooNew {
                app: new.app.clone(),
                version: new.version.clone(),
                data,
                min,
                max,
            });
        }
        if data < min && new.hooks.migrate.is_none() {
            return Err(VerifyError::DataTooOld {
                app: new.app.clone(),
                version: new.version.clone(),
                data,
                min,
                max,
            });
        }
    }
    Ok(())
}

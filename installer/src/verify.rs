//! Step 4 of the transaction: verify a release archive before anything of it
//! is unpacked.
//!
//! [`verify_archive`] opens the archive (no symlink, regular file only) and
//! its `.minisig` (capped) and hands both to
//! [`slipway_formats::archive::verify_release`], the check `slipway-pack
//! verify` runs too: one streaming pass computes the release id (SHA-256 of
//! the file), feeds the minisign check and enforces the size cap; only when
//! the signature holds, and its trusted comment names this very id, is the
//! first tar entry decompressed: the manifest, parsed strictly. The open
//! file is handed on in the returned [`VerifiedArchive`], so
//! [`crate::stage`] unpacks from the descriptor that was verified, not from
//! a path that could have been swapped since.
//!
//! [`check_upgrade`] is the rest of step 4: the version order, the app, and
//! whether the new code can read the host's data.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use slipway_formats::archive::{verify_release, ArchiveError, ManifestEntryError, VerifiedRelease};
pub use slipway_formats::archive::{Expectations, Recheck, ZSTD_WINDOW_LOG_MAX};
use slipway_formats::manifest::ManifestError;
use slipway_formats::signature::{ReleaseCommentError, SignatureError};
use slipway_formats::{
    Manifest, ReleaseId, TrustedKeys, Version, MANIFEST_PATH, MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
};
use slipway_fs::ReadError;
use thiserror::Error;

/// An archive whose id, signature and manifest have been checked.
///
/// `file` is the descriptor that was read, rewound to offset 0: stage from
/// it, never reopen `path`; what is read again is checked against
/// `release.recheck`.
#[derive(Debug)]
pub struct VerifiedArchive {
    /// What was verified: id, manifest, size, signer, signed comment.
    pub release: VerifiedRelease,
    pub file: File,
    pub path: PathBuf,
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
    #[error("delta {path} refused: {reason}")]
    Delta { path: PathBuf, reason: String },
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
/// §6 "Archive") with [`verify_release`], reading the archive file exactly
/// once for the hashes.
///
/// The archive is opened `O_NOFOLLOW`, regular files only; the signature is
/// read capped. Nothing is written anywhere. On success the returned
/// archive's `file` is rewound to offset 0.
pub fn verify_archive(
    archive: &Path,
    signature: &Path,
    keys: &TrustedKeys,
    expect: &Expectations,
) -> Result<VerifiedArchive, VerifyError> {
    verify_with(archive, signature, |file, sig| {
        verify_release(file, sig, keys, expect)
    })
}

/// Opens `archive` (no symlink, regular file only) and reads `signature`
/// (capped), then runs `check` (a release's or a delta's first pass) on
/// them, naming both files in a refusal.
pub(crate) fn verify_with(
    archive: &Path,
    signature: &Path,
    check: impl FnOnce(&mut File, &str) -> Result<VerifiedRelease, ArchiveError>,
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
    let sig_text = read_signature(signature)?;
    let release = check(&mut file, &sig_text).map_err(|e| refusal(e, archive, signature))?;
    Ok(VerifiedArchive {
        release,
        file,
        path: archive.to_path_buf(),
    })
}

/// Names the archive and signature files in a refusal of [`verify_release`].
fn refusal(e: ArchiveError, archive: &Path, signature: &Path) -> VerifyError {
    let path = archive.to_path_buf();
    match e {
        ArchiveError::Read(source) => VerifyError::Read { path, source },
        ArchiveError::TooLarge { max } => VerifyError::TooLarge { path, max },
        ArchiveError::SizeMismatch { expected, found } => VerifyError::SizeMismatch {
            path,
            expected,
            found,
        },
        ArchiveError::Signature(source) => VerifyError::Signature {
            path: signature.to_path_buf(),
            archive: path,
            source,
        },
        ArchiveError::IdMismatch { expected, found } => VerifyError::IdMismatch {
            path,
            expected,
            found,
        },
        ArchiveError::Comment {
            id,
            comment,
            source,
        } => match *source {
            ReleaseCommentError::ForAnotherArchive { signed, actual } => {
                VerifyError::SignedForAnotherArchive {
                    path: signature.to_path_buf(),
                    archive: path,
                    signed,
                    actual,
                }
            }
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
            ReleaseCommentError::NotRelease { .. } => VerifyError::NotReleaseComment {
                path: signature.to_path_buf(),
                comment,
            },
        },
        ArchiveError::WrongApp {
            id,
            expected,
            found,
        } => VerifyError::WrongApp {
            id,
            expected,
            found,
        },
        ArchiveError::WrongChannel {
            id,
            expected,
            found,
        } => VerifyError::WrongChannel {
            id,
            expected,
            found,
        },
        ArchiveError::ManifestEntry { id, source } => match source {
            ManifestEntryError::WindowTooLarge => VerifyError::WindowTooLarge { path, id },
            ManifestEntryError::Corrupt(reason) => VerifyError::Corrupt { path, id, reason },
            ManifestEntryError::NotFirst { found } => VerifyError::ManifestNotFirst { id, found },
            ManifestEntryError::NotFile { kind } => VerifyError::ManifestNotFile { id, kind },
            ManifestEntryError::TooLarge { size } => VerifyError::ManifestTooLarge { id, size },
        },
        ArchiveError::Manifest { id, source } => VerifyError::Manifest { id, source },
        ArchiveError::Delta(e) => VerifyError::Delta {
            path,
            reason: e.to_string(),
        },
    }
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

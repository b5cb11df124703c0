//! The one error type of the packager library.
//!
//! Every variant names the thing that failed (a path, a release id, a channel,
//! a key file) and the message says what to do about it. The binary adds
//! context at the edge and maps [`PackError::exit_code`] to the process exit
//! status.

use std::io;
use std::path::{Path, PathBuf};

use slipway_formats::ReleaseId;
use slipway_fs::ReadError;
use thiserror::Error;

/// Why a packager operation failed.
#[derive(Debug, Error)]
pub enum PackError {
    /// A file system operation failed.
    #[error("cannot {action} {path}: {error}")]
    Io {
        action: &'static str,
        path: PathBuf,
        // Not a `#[source]`: the message already carries it, and anyhow's
        // `{:#}` would print it twice.
        error: io::Error,
    },
    /// An entry of the source tree cannot go into a release.
    #[error("{path}: {reason}")]
    Refused { path: PathBuf, reason: String },
    /// A configuration file (`slipway.toml`, `.slipwayignore`) or a glob is wrong.
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    /// Arguments that contradict each other or cannot be used.
    #[error("{0}")]
    Usage(String),
    /// A secret or public key file cannot be read, decrypted or used.
    #[error("key {path}: {message}")]
    Key { path: PathBuf, message: String },
    /// An archive, signature or index did not verify.
    #[error("{path}: {message}")]
    Verify { path: PathBuf, message: String },
    /// A channel index cannot be updated as asked.
    #[error("channel {channel:?}: {message}")]
    Channel { channel: String, message: String },
    /// A release cannot be found or used as asked.
    #[error("release {id}: {message}")]
    Release { id: ReleaseId, message: String },
    /// A file could not be read with the shared capped reader: missing, not
    /// a regular file (a symlink, FIFO or device), or over its cap.
    #[error("{0}")]
    Read(#[from] ReadError),
}

/// The library's result type.
pub type Result<T, E = PackError> = std::result::Result<T, E>;

impl PackError {
    /// The process exit status for this error: 2 for bad usage or
    /// configuration (SPEC §5), 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            PackError::Usage(_) | PackError::Config { .. } => 2,
            _ => 1,
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl AsRef<Path>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.as_ref().to_path_buf();
        move |error| PackError::Io {
            action,
            path,
            error,
        }
    }

    pub(crate) fn refused(path: impl AsRef<Path>, reason: impl Into<String>) -> Self {
        PackError::Refused {
            path: path.as_ref().to_path_buf(),
            reason: reason.into(),
        }
    }

    pub(crate) fn verify(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        PackError::Verify {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }

    pub(crate) fn key(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        PackError::Key {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }

    pub(crate) fn channel(channel: &str, message: impl Into<String>) -> Self {
        PackError::Channel {
            channel: channel.to_string(),
            message: message.into(),
        }
    }
}

//! Capped reads of regular files that never follow a symlink and never
//! block (SPEC §6: "every file slipway reads is opened no-follow and
//! non-blocking, must be a regular file, and is read up to a cap").
//!
//! [`open_regular`] opens with `O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC`, so a
//! symlink in the last component fails (`ELOOP`) and a FIFO opens at once
//! instead of waiting for a writer; then `fstat` on the open descriptor
//! (not the path, which could be swapped) must say "regular file", and only
//! then is `O_NONBLOCK` cleared. A device (`/dev/zero`), FIFO, socket,
//! directory or symlink is refused with [`ReadError::NotRegular`] before a
//! byte is read.
//!
//! [`read_capped`] reads at most `max + 1` bytes, so a file that grows while
//! it is read, or lies about its size, still costs at most the cap.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, CWD};
use thiserror::Error;

/// Why a file could not be read. Every variant names the path.
#[derive(Debug, Error)]
pub enum ReadError {
    #[error("{path} does not exist")]
    NotFound { path: PathBuf },
    #[error("{path} is a {kind}, not a regular file; slipway reads only regular files (never a symlink, FIFO or device): point it at the real file")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{path} is larger than {max} bytes; refused without reading further")]
    TooLarge { path: PathBuf, max: u64 },
    #[error("{path} is not UTF-8 text")]
    NotText { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl ReadError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ReadError::NotFound { path }
            | ReadError::NotRegular { path, .. }
            | ReadError::TooLarge { path, .. }
            | ReadError::NotText { path }
            | ReadError::Io { path, .. } => path,
        }
    }

    /// Whether the file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::NotFound { .. })
    }
}

/// Opens `path` for reading as described in the module docs: no symlink in
/// the last component, no blocking open, a regular file only. The returned
/// descriptor is in blocking mode.
pub fn open_regular(path: &Path) -> Result<File, ReadError> {
    open_regular_at(CWD, path, path)
}

/// [`open_regular`] of `name` relative to the open directory `dir`, so that
/// nothing above `dir` is resolved again. `name` should be one component:
/// only its last component is opened without following a symlink. Errors
/// name the file as `shown`.
pub fn open_regular_at(dir: impl AsFd, name: &Path, shown: &Path) -> Result<File, ReadError> {
    let dir = dir.as_fd();
    let io_err = |source: io::Error| ReadError::Io {
        path: shown.to_path_buf(),
        source,
    };
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let file = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => File::from(fd),
        Err(rustix::io::Errno::NOENT) => {
            return Err(ReadError::NotFound {
                path: shown.to_path_buf(),
            })
        }
        // ELOOP: the last component is a symlink; ENXIO: a socket or a
        // device without a driver. Say what it is rather than the errno.
        Err(e) if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NXIO => {
            return match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => Err(ReadError::NotRegular {
                    path: shown.to_path_buf(),
                    kind: describe_raw(FileType::from_raw_mode(stat.st_mode)),
                }),
                Err(_) => Err(io_err(e.into())),
            };
        }
        Err(e) => return Err(io_err(e.into())),
    };
    let kind = file.metadata().map_err(io_err)?.file_type();
    if !kind.is_file() {
        return Err(ReadError::NotRegular {
            path: shown.to_path_buf(),
            kind: describe(&kind),
        });
    }
    // A regular file ignores O_NONBLOCK, but whoever reads on gets the
    // descriptor they expect.
    rustix::fs::fcntl_getfl(&file)
        .and_then(|flags| rustix::fs::fcntl_setfl(&file, flags - OFlags::NONBLOCK))
        .map_err(|e| io_err(e.into()))?;
    Ok(file)
}

/// Reads all of a regular file of at most `max` bytes (see [`open_regular`]).
pub fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    read_capped_at(CWD, path, path, max)
}

/// [`read_capped`] of `name` relative to the open directory `dir` (see
/// [`open_regular_at`]).
pub fn read_capped_at(
    dir: impl AsFd,
    name: &Path,
    shown: &Path,
    max: u64,
) -> Result<Vec<u8>, ReadError> {
    let file = open_regular_at(dir, name, shown)?;
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| ReadError::Io {
            path: shown.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge {
            path: shown.to_path_buf(),
            max,
        });
    }
    Ok(bytes)
}

/// [`read_capped`], with `Ok(None)` when the file does not exist.
pub fn read_capped_optional(path: &Path, max: u64) -> Result<Option<Vec<u8>>, ReadError> {
    match read_capped(path, max) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(ReadError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// [`read_capped`] for a text file: the bytes must be UTF-8.
pub fn read_text_capped(path: &Path, max: u64) -> Result<String, ReadError> {
    String::from_utf8(read_capped(path, max)?).map_err(|_| ReadError::NotText {
        path: path.to_path_buf(),
    })
}

/// A file type from a raw `st_mode`, in words.
fn describe_raw(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        _ => "special file",
    }
}

/// A file type in words, for messages.
pub fn describe(kind: &std::fs::FileType) -> &'static str {
    if kind.is_file() {
        "regular file"
    } else if kind.is_dir() {
        "directory"
    } else if kind.is_symlink() {
        "symlink"
    } else if kind.is_fifo() {
        "FIFO"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_char_device() {
        "character device"
    } else if kind.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_regular_file_is_read_up_to_its_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, b"12345").expect("write");
        assert_eq!(read_capped(&p, 5).expect("read"), b"12345");
        assert!(matches!(
            read_capped(&p, 4),
            Err(ReadError::TooLarge { max: 4, .. })
        ));
        assert!(read_capped_optional(&dir.path().join("missing"), 4)
            .expect("missing")
            .is_none());
    }

    #[test]
    fn dev_zero_is_refused_before_a_byte_is_read() {
        let err = read_capped(Path::new("/dev/zero"), 1 << 30).expect_err("device");
        assert!(
            matches!(
                &err,
                ReadError::NotRegular {
                    kind: "character device",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("/dev/zero"), "{err}");
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("fifo");
        rustix::fs::mkfifoat(rustix::fs::CWD, &p, rustix::fs::Mode::from_raw_mode(0o600))
            .expect("mkfifo");
        let started = Instant::now();
        let err = read_capped(&p, 1024).expect_err("fifo");
        assert!(
            matches!(err, ReadError::NotRegular { kind: "FIFO", .. }),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_symlink_is_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("target");
        std::fs::write(&target, b"secret").expect("write");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let err = read_capped(&link, 1024).expect_err("symlink");
        assert!(
            matches!(
                err,
                ReadError::NotRegular {
                    kind: "symlink",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(matches!(
            read_capped(dir.path(), 1024),
            Err(ReadError::NotRegular {
                kind: "directory",
                ..
            })
        ));
    }
}

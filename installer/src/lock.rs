//! One transaction at a time: an exclusive `flock` on `<root>/state/lock`.
//!
//! The holder writes its pid into the file so that a second run can say who
//! holds the lock ("locked by pid N") and exit 5, or wait a bounded time. The
//! kernel releases the lock when the holder dies, however it dies, so a
//! crashed run never leaves a stale lock behind.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

/// Why the lock could not be taken.
#[derive(Debug, Error)]
pub enum LockError {
    #[error("another slipway run holds {path} (pid {holder}); wait for it, or run with --wait")]
    Held { path: PathBuf, holder: String },
    #[error("cannot open lock file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct TransactionLock {
    file: File,
    path: PathBuf,
}

impl TransactionLock {
    /// Takes the lock, waiting up to `wait` (zero: do not wait).
    pub fn acquire(path: &Path, wait: Duration) -> Result<TransactionLock, LockError> {
        let io_err = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err)?;
        let deadline = Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {
                    if Instant::now() >= deadline {
                        let mut holder = String::new();
                        let _ = file.read_to_string(&mut holder);
                        let holder = holder.trim();
                        return Err(LockError::Held {
                            path: path.to_path_buf(),
                            holder: if holder.is_empty() {
                                "unknown".to_string()
                            } else {
                                holder.to_string()
                            },
                        });
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io_err(e)),
            }
        }
        // Record the holder for the message a waiting run prints.
        let record = (|| {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            writeln!(file, "{}", std::process::id())?;
            file.sync_all()
        })();
        record.map_err(io_err)?;
        Ok(TransactionLock {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TransactionLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_taker_is_told_the_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("lock");
        let held = TransactionLock::acquire(&p, Duration::ZERO).expect("first");
        let err = TransactionLock::acquire(&p, Duration::from_millis(200)).expect_err("second");
        assert!(
            err.to_string().contains(&std::process::id().to_string()),
            "{err}"
        );
        drop(held);
        TransactionLock::acquire(&p, Duration::ZERO).expect("after release");
    }
}

//! Durable file writes: every file the packager leaves in a repository
//! appears whole or not at all.
//!
//! The pattern is the one SPEC §3 prescribes for host state: write a temporary
//! file in the destination directory, fsync it, rename it over the final name,
//! fsync the directory. A crash at any instant leaves either the old file or
//! the new one, plus at worst a `.slipway-*.tmp` file that nothing reads.

use std::fs::{self, File, Permissions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tempfile::NamedTempFile;

use crate::error::{PackError, Result};

/// Mode of every published file: readable by the web server that serves it.
pub const PUBLISHED_MODE: u32 = 0o644;

/// Creates `dir` and its parents if missing.
pub fn create_dir_all(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(PackError::io("create directory", dir))
}

/// A new temporary file in `dir`, removed again when dropped unless persisted.
pub fn temp_file_in(dir: &Path) -> Result<NamedTempFile> {
    tempfile::Builder::new()
        .prefix(".slipway-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(PackError::io("create a temporary file in", dir))
}

/// Sets the published mode, fsyncs and renames a finished temporary file to
/// `path`. The caller fsyncs the directory (once for several files).
pub fn persist(temp: NamedTempFile, path: &Path) -> Result<()> {
    temp.as_file()
        .set_permissions(Permissions::from_mode(PUBLISHED_MODE))
        .map_err(PackError::io("set permissions of", temp.path()))?;
    temp.as_file()
        .sync_all()
        .map_err(PackError::io("fsync", temp.path()))?;
    temp.persist(path)
        .map_err(|e| PackError::io("rename a temporary file to", path)(e.error))?;
    Ok(())
}

/// Fsyncs a directory so that renames inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(PackError::io("fsync directory", dir))
}

/// Writes `bytes` to `path` atomically and durably (temp, fsync, rename,
/// fsync of the directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    let mut temp = temp_file_in(dir)?;
    temp.write_all(bytes)
        .map_err(PackError::io("write", temp.path()))?;
    persist(temp, path)?;
    sync_dir(dir)
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

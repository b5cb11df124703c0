//! Durable writes, shared by `slipway` (host state, the `current` and
//! `previous` links, staged releases) and `slipway-pack` (repository files,
//! archives, keys): every file is written to a temporary sibling, fsynced,
//! renamed over its final name, and the directory is fsynced (SPEC §3);
//! every symlink swap is one `rename(2)` of a freshly made symlink.
//!
//! A crash at any instant leaves either the old or the new content in place,
//! never a mix and never an empty file; at worst a temporary sibling is left
//! behind, which nothing reads: `.<name>.tmp.<pid>` or `.<name>.link.<pid>`
//! (which `slipway gc` removes) for [`write_atomic`] and
//! [`replace_symlink`], `.slipway-*.tmp` for [`temp_file_in`].
//!
//! Every function returns the bare [`io::Error`]: the caller names the path
//! and the action in its own error type.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// The mode of every file `slipway-pack` publishes in a repository:
/// readable by the web server that serves it.
pub const PUBLISHED_MODE: u32 = 0o644;

/// Fsyncs a directory, so that renames and creations in it survive a crash.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory holding `path`: its parent, or `.` for a bare file name.
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A temporary sibling name for `path`, unique to this process.
fn temp_sibling(path: &Path, tag: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent_dir(path).join(format!(".{name}.{tag}.{}", std::process::id()))
}

/// Replaces `path` with `bytes` atomically and durably; a new file gets
/// mode 0644 less the umask.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, bytes, 0o644, false)
}

/// [`write_atomic`] giving the file exactly `mode`, whatever the umask.
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_with(path, bytes, mode, true)
}

fn write_atomic_with(path: &Path, bytes: &[u8], mode: u32, exact: bool) -> io::Result<()> {
    let tmp = temp_sibling(path, "tmp");
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&tmp)?;
        if exact {
            f.set_permissions(Permissions::from_mode(mode))?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fsync_dir(parent_dir(path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Serializes `value` as pretty JSON (with a trailing newline) and writes it
/// with [`write_atomic`].
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// A new temporary file (`.slipway-*.tmp`, mode 0600) in `dir`, for a file
/// that is streamed rather than held in memory; it is removed when dropped
/// unless [`persist`]ed.
pub fn temp_file_in(dir: &Path) -> io::Result<NamedTempFile> {
    tempfile::Builder::new()
        .prefix(".slipway-")
        .suffix(".tmp")
        .tempfile_in(dir)
}

/// Gives a finished temporary file `mode`, fsyncs it and renames it to
/// `path`. The caller fsyncs the directory ([`fsync_dir`]), once for
/// several files.
pub fn persist(temp: NamedTempFile, path: &Path, mode: u32) -> io::Result<()> {
    temp.as_file()
        .set_permissions(Permissions::from_mode(mode))?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Points the symlink `link` at `target` with one `rename(2)` of a fresh
/// symlink, then fsyncs the directory. Readers see the old target or the new
/// one, never a missing link.
pub fn replace_symlink(link: &Path, target: &Path) -> io::Result<()> {
    let tmp = temp_sibling(link, "link");
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    if let Err(e) = fs::rename(&tmp, link) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fsync_dir(parent_dir(link))
}

/// Removes a symlink if present and fsyncs its directory.
pub fn remove_symlink(link: &Path) -> io::Result<()> {
    match fs::remove_file(link) {
        Ok(()) => fsync_dir(parent_dir(link)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads a symlink's target, `None` when the link does not exist.
pub fn read_link_opt(link: &Path) -> io::Result<Option<PathBuf>> {
    match fs::read_link(link) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Creates a directory and its parents, with mode 0755 (less the umask)
/// for new ones.
pub fn create_dirs(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)
}

/// Removes a directory tree if present, without following symlinks in it.
/// Read-only directories inside it (a staged release is made read-only) are
/// made writable first.
pub fn remove_tree(dir: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(m) if !m.is_dir() => return fs::remove_file(dir),
        Ok(_) => {}
    }
    for entry in walkdir::WalkDir::new(dir).follow_links(false) {
        let entry = entry.map_err(io::Error::other)?;
        if entry.file_type().is_dir() {
            let mut perms = entry.metadata().map_err(io::Error::other)?.permissions();
            if perms.mode() & 0o200 == 0 {
                perms.set_mode(perms.mode() | 0o700);
                fs::set_permissions(entry.path(), perms)?;
            }
        }
    }
    fs::remove_dir_all(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("state.json");
        write_atomic(&p, b"one").expect("write");
        write_atomic(&p, b"two").expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn an_exact_mode_ignores_the_umask() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("key.pub");
        write_atomic_mode(&p, b"key", 0o604).expect("write");
        let mode = fs::metadata(&p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o604);
    }

    #[test]
    fn a_persisted_temp_file_gets_its_mode_and_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut temp = temp_file_in(dir.path()).expect("temp");
        temp.write_all(b"archive").expect("write");
        let p = dir.path().join("a.tar.zst");
        persist(temp, &p, PUBLISHED_MODE).expect("persist");
        fsync_dir(dir.path()).expect("fsync");
        assert_eq!(fs::read(&p).expect("read"), b"archive");
        let mode = fs::metadata(&p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, PUBLISHED_MODE);
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn symlink_swap_is_a_rename() {
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join("current");
        replace_symlink(&link, Path::new("releases/a")).expect("first");
        replace_symlink(&link, Path::new("releases/b")).expect("second");
        assert_eq!(
            read_link_opt(&link).expect("read"),
            Some(PathBuf::from("releases/b"))
        );
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
        remove_symlink(&link).expect("remove");
        assert_eq!(read_link_opt(&link).expect("read"), None);
    }

    #[test]
    fn remove_tree_handles_read_only_dirs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = dir.path().join("rel");
        fs::create_dir_all(t.join("app")).expect("mkdir");
        fs::write(t.join("app/x"), b"x").expect("write");
        fs::set_permissions(t.join("app"), fs::Permissions::from_mode(0o555)).expect("chmod");
        fs::set_permissions(&t, fs::Permissions::from_mode(0o555)).expect("chmod");
        remove_tree(&t).expect("remove");
        assert!(!t.exists());
    }
}

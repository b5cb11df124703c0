//! The app's data directory — the persistence directory and its `meta/` —
//! touched only through directory file descriptors (SPEC §6: "slipway never
//! resolves a symlink as root under the persistence directory or `meta/`").
//!
//! The app owns its persistence directory and can swap anything in it for a
//! symlink at any moment, also while slipway walks it. A path such as
//! `<persistence>/sub/file` is resolved by the kernel afresh at every use,
//! so an `open`, `mkdir` or `rename` by path can be steered through a link
//! swapped in a microsecond earlier, and `O_NOFOLLOW` protects only the
//! last component. So, here:
//!
//! - The persistence directory is reached once, by walking its configured
//!   path one component at a time from `/` ([`locate`]). A symlink on the way
//!   (the last component included) is followed only when root, or the user
//!   slipway runs as, owns both the link and the directory that holds it: an
//!   operator's link to a data volume keeps working, a link the app planted
//!   (it belongs to the app's user) is refused ([`AppDirError::UntrustedLink`]).
//! - Below it, every name is one component, opened relative to its
//!   directory's descriptor and never followed: directories with
//!   `O_DIRECTORY | O_NOFOLLOW`, files with `O_NOFOLLOW | O_NONBLOCK` and
//!   checked to be regular, new files with `O_CREAT | O_EXCL`, renames and
//!   removals with `renameat` / `unlinkat` in their directory.
//! - [`walk`] looks at each entry through an `O_PATH | O_NOFOLLOW`
//!   descriptor of the entry itself and descends into a directory through
//!   that descriptor, so an entry swapped after it was listed is seen as what
//!   it now is (a link is reported as a link) and is never resolved.
//!
//! Per-component `openat` rather than `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`: the guarantee is the same for single components,
//! it works on kernels older than 5.6, and it is one code path.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, CWD};
use rustix::io::Errno;
use thiserror::Error;

use crate::app_user::AppUser;

/// The persistence's top-level directory that belongs to slipway.
pub const META_DIR: &str = "meta";

/// Symlinks followed on the way to the persistence directory, at most.
const MAX_LINKS: usize = 40;
/// Directory levels below the persistence directory, at most.
const MAX_DEPTH: usize = 256;

/// Why the app's directory could not be used. Every variant names the path.
#[derive(Debug, Error)]
pub enum AppDirError {
    #[error("{} is a symlink owned by uid {link_uid} in a directory owned by uid {dir_uid}; on the way to the persistence directory slipway follows only links that root owns in directories root owns, since the app could have planted this one; point paths.persistence at the real directory, or have root make the link", path.display())]
    UntrustedLink {
        path: PathBuf,
        link_uid: u32,
        dir_uid: u32,
    },
    #[error("{} is a symlink; slipway never follows a symlink inside the persistence directory, since the app could point it anywhere; remove it (slipway recreates its own meta/)", path.display())]
    LinkInside { path: PathBuf },
    #[error("{} is not a directory; fix paths.persistence or move the file away", path.display())]
    NotADirectory { path: PathBuf },
    #[error("{} became a symlink while slipway was reading it; slipway does not follow it: keep the app from swapping its files for links (quiesce it), then retry", path.display())]
    Changed { path: PathBuf },
    #[error("{} has more than {MAX_LINKS} symlinks on its way; point paths.persistence at the real directory", path.display())]
    TooManyLinks { path: PathBuf },
    #[error("{} is more than {MAX_DEPTH} directories deep; slipway does not walk deeper", path.display())]
    TooDeep { path: PathBuf },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl AppDirError {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> AppDirError {
        let path = path.to_path_buf();
        move |source| AppDirError::Io {
            action,
            path,
            source,
        }
    }

    fn errno(action: &'static str, path: &Path) -> impl FnOnce(Errno) -> AppDirError {
        let f = AppDirError::io(action, path);
        move |e| f(e.into())
    }
}

/// An open directory, and the path it was reached by (for messages only:
/// nothing is ever opened by that path again).
#[derive(Debug)]
pub struct Dir {
    file: File,
    path: PathBuf,
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Dir {
    /// Opens a directory slipway trusts (its own layout under the root) by
    /// path, refusing a symlink in the last component.
    pub fn open_trusted(path: &Path) -> Result<Dir, AppDirError> {
        let fd = rustix::fs::openat(CWD, path, dir_flags(), Mode::empty())
            .map_err(AppDirError::errno("open", path))?;
        Ok(Dir {
            file: File::from(fd),
            path: path.to_path_buf(),
        })
    }

    /// The path this directory was reached by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory's own metadata (of the open descriptor).
    pub fn metadata(&self) -> Result<Metadata, AppDirError> {
        self.file
            .metadata()
            .map_err(AppDirError::io("read", &self.path))
    }

    /// The directory as a file, for `fchown`, `fchmod`, `futimens`, `fsync`.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Makes renames and creations in this directory durable.
    pub fn sync(&self) -> Result<(), AppDirError> {
        self.file
            .sync_all()
            .map_err(AppDirError::io("fsync", &self.path))
    }

    fn child(&self, name: &OsStr) -> PathBuf {
        self.path.join(name)
    }

    /// The metadata of `name` itself (a symlink is not followed), or `None`
    /// when there is no such entry.
    pub fn entry_metadata(&self, name: &OsStr) -> Result<Option<Metadata>, AppDirError> {
        match self.open_entry(name)? {
            Some(handle) => handle
                .metadata()
                .map(Some)
                .map_err(AppDirError::io("read", &self.child(name))),
            None => Ok(None),
        }
    }

    /// An `O_PATH` descriptor of the entry `name` itself (never followed).
    fn open_entry(&self, name: &OsStr) -> Result<Option<File>, AppDirError> {
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::openat(self, name, flags, Mode::empty()) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(AppDirError::errno("open", &self.child(name))(e)),
        }
    }

    /// Opens the subdirectory `name` without following a symlink; `None`
    /// when it does not exist.
    pub fn open_dir(&self, name: &OsStr) -> Result<Option<Dir>, AppDirError> {
        let path = self.child(name);
        match rustix::fs::openat(self, name, dir_flags(), Mode::empty()) {
            Ok(fd) => Ok(Some(Dir {
                file: File::from(fd),
                path,
            })),
            Err(Errno::NOENT) => Ok(None),
            Err(Errno::LOOP) | Err(Errno::NOTDIR) => match self.entry_metadata(name)? {
                Some(m) if m.file_type().is_symlink() => Err(AppDirError::LinkInside { path }),
                None => Ok(None),
                Some(_) => Err(AppDirError::NotADirectory { path }),
            },
            Err(e) => Err(AppDirError::errno("open", &path)(e)),
        }
    }

    /// Opens the subdirectory `name`, creating it (with `mode`, owned by
    /// `owner` when slipway runs as root) when it does not exist.
    pub fn ensure_dir(
        &self,
        name: &OsStr,
        mode: u32,
        owner: Option<&AppUser>,
    ) -> Result<Dir, AppDirError> {
        if let Some(dir) = self.open_dir(name)? {
            return Ok(dir);
        }
        let path = self.child(name);
        match rustix::fs::mkdirat(self, name, Mode::from_raw_mode(mode)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(AppDirError::errno("create", &path)(e)),
        }
        let dir = self
            .open_dir(name)?
            .ok_or_else(|| AppDirError::io("open", &path)(io::ErrorKind::NotFound.into()))?;
        if let Some(owner) = owner.filter(|_| running_as_root()) {
            std::os::unix::fs::fchown(&dir.file, Some(owner.uid), Some(owner.gid))
                .map_err(AppDirError::io("chown", &path))?;
        }
        self.sync()?;
        Ok(dir)
    }

    /// Creates the new regular file `name` for writing (`O_CREAT | O_EXCL`:
    /// an existing entry, a symlink included, is an error, never opened).
    pub fn create_file(&self, name: &OsStr, mode: u32) -> Result<File, AppDirError> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW;
        rustix::fs::openat(
            self,
            name,
            flags | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
        .map(File::from)
        .map_err(AppDirError::errno("create", &self.child(name)))
    }

    /// Opens the regular file `name` for reading: no symlink, no FIFO or
    /// device. `Ok(None)` when it vanished or is not a regular file (it is
    /// then never read); [`AppDirError::Changed`] when it is now a symlink.
    pub fn open_file(&self, name: &OsStr) -> Result<Option<File>, AppDirError> {
        let path = self.child(name);
        match slipway_fs::open_regular_at(self, Path::new(name), &path) {
            Ok(f) => Ok(Some(f)),
            Err(slipway_fs::ReadError::NotFound { .. }) => Ok(None),
            Err(slipway_fs::ReadError::NotRegular {
                kind: "symlink", ..
            }) => Err(AppDirError::Changed { path }),
            Err(slipway_fs::ReadError::NotRegular { .. }) => Ok(None),
            Err(e) => Err(AppDirError::io("open", &path)(io::Error::other(e))),
        }
    }

    /// Reads the regular file `name` of at most `max` bytes (see
    /// [`slipway_fs::read_capped_at`]); `Ok(None)` when it does not exist.
    pub fn read_capped(
        &self,
        name: &OsStr,
        max: u64,
    ) -> Result<Option<Vec<u8>>, slipway_fs::ReadError> {
        match slipway_fs::read_capped_at(self, Path::new(name), &self.child(name), max) {
            Ok(b) => Ok(Some(b)),
            Err(slipway_fs::ReadError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces the file `name` with `bytes` atomically and durably: a
    /// fresh temporary file in this directory, fsync, `renameat`, fsync of
    /// the directory. Whatever `name` was (a symlink included) is replaced,
    /// never written through.
    pub fn write_file_atomic(
        &self,
        name: &OsStr,
        bytes: &[u8],
        mode: u32,
    ) -> Result<(), AppDirError> {
        let mut tmp = OsString::from(".");
        tmp.push(name);
        tmp.push(format!(".tmp.{}", std::process::id()));
        let _ = rustix::fs::unlinkat(self, &*tmp, AtFlags::empty());
        let result = (|| {
            let mut file = self.create_file(&tmp, mode)?;
            let path = self.child(name);
            file.write_all(bytes)
                .and_then(|()| file.sync_all())
                .map_err(AppDirError::io("write", &path))?;
            rustix::fs::renameat(self, &*tmp, self, name)
                .map_err(AppDirError::errno("rename into place", &path))?;
            self.sync()
        })();
        if result.is_err() {
            let _ = rustix::fs::unlinkat(self, &*tmp, AtFlags::empty());
        }
        result
    }

    /// Renames `from` in this directory to `to` in `dest` (the entry itself,
    /// whatever it is; nothing is followed).
    pub fn rename(&self, from: &OsStr, dest: &Dir, to: &OsStr) -> Result<(), AppDirError> {
        rustix::fs::renameat(self, from, dest, to)
            .map_err(AppDirError::errno("rename", &self.child(from)))
    }

    /// Removes the temporary files of [`Dir::write_file_atomic`] that a
    /// killed run left here (`.<name>.tmp.<pid>`, another process's pid, a
    /// regular file); nothing is followed. For a caller holding the
    /// transaction lock, so that none belongs to a live writer. Returns how
    /// many went.
    pub fn remove_stale_temps(&self) -> Result<usize, AppDirError> {
        let own = std::process::id().to_string();
        let mut removed = 0;
        for name in self.names()? {
            let text = name.to_string_lossy().into_owned();
            let Some((rest, pid)) = text.rsplit_once('.') else {
                continue;
            };
            let temp = text.starts_with('.')
                && rest.ends_with(".tmp")
                && !pid.is_empty()
                && pid.bytes().all(|b| b.is_ascii_digit())
                && pid != own;
            if temp && self.entry_metadata(&name)?.is_some_and(|m| m.is_file()) {
                rustix::fs::unlinkat(self, &*name, AtFlags::empty())
                    .map_err(AppDirError::errno("remove", &self.child(&name)))?;
                removed += 1;
            }
        }
        if removed > 0 {
            self.sync()?;
        }
        Ok(removed)
    }

    /// Removes `name` and everything under it, without following a symlink
    /// at any level (a symlink is removed, not its target). A missing
    /// `name` is fine.
    pub fn remove_tree(&self, name: &OsStr) -> Result<(), AppDirError> {
        self.remove_tree_at(name, 0)
    }

    fn remove_tree_at(&self, name: &OsStr, depth: usize) -> Result<(), AppDirError> {
        let path = self.child(name);
        let Some(meta) = self.entry_metadata(name)? else {
            return Ok(());
        };
        if meta.file_type().is_dir() {
            if depth > MAX_DEPTH {
                return Err(AppDirError::TooDeep { path });
            }
            match self.open_dir(name) {
                Ok(Some(dir)) => {
                    // A read-only directory the app made must become
                    // writable for its entries to go (root needs no bit).
                    if !running_as_root() && meta.mode() & 0o200 == 0 {
                        rustix::fs::fchmod(&dir, Mode::from_raw_mode(meta.mode() | 0o700))
                            .map_err(AppDirError::errno("chmod", &path))?;
                    }
                    for child in dir.names()? {
                        dir.remove_tree_at(&child, depth + 1)?;
                    }
                }
                Ok(None) => return Ok(()),
                // Swapped for a link or a file since: unlink that instead.
                Err(AppDirError::LinkInside { .. }) | Err(AppDirError::NotADirectory { .. }) => {
                    return self.unlink(name, false)
                }
                Err(e) => return Err(e),
            }
            self.unlink(name, true)
        } else {
            self.unlink(name, false)
        }
    }

    fn unlink(&self, name: &OsStr, dir: bool) -> Result<(), AppDirError> {
        let flags = if dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        match rustix::fs::unlinkat(self, name, flags) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(AppDirError::errno("remove", &self.child(name))(e)),
        }
    }

    /// The names in this directory (without `.` and `..`), sorted by bytes.
    pub fn names(&self) -> Result<Vec<OsString>, AppDirError> {
        let mut reader =
            rustix::fs::Dir::read_from(self).map_err(AppDirError::errno("list", &self.path))?;
        let mut names = Vec::new();
        while let Some(entry) = reader.read() {
            let entry = entry.map_err(AppDirError::errno("list", &self.path))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsString::from_vec(name.to_vec()));
            }
        }
        names.sort();
        Ok(names)
    }
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Whether a file of this owner may steer slipway: root's, or the user's
/// slipway itself runs as.
fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == rustix::process::geteuid().as_raw()
}

/// Where the persistence directory is: its parent, open, and its name there.
#[derive(Debug)]
pub struct Location {
    pub parent: Dir,
    pub name: OsString,
}

impl Location {
    /// The persistence directory's path, for messages.
    pub fn path(&self) -> PathBuf {
        self.parent.child(&self.name)
    }
}

/// Walks `path` one component at a time from `/` (or the working directory
/// for a relative path), following only trusted symlinks (see the module
/// docs), and returns the parent directory, open, and the last name. The
/// last name itself is not opened; if it is a symlink, it is an untrusted
/// one the caller must not follow (trusted ones were followed).
///
/// A missing directory on the way is created (root's, `0755`) when
/// `create` is set; otherwise the result is `None`.
pub fn locate(path: &Path, create: bool) -> Result<Option<Location>, AppDirError> {
    let not_a_dir = || AppDirError::NotADirectory {
        path: path.to_path_buf(),
    };
    let start = |absolute: bool| -> Result<Dir, AppDirError> {
        Dir::open_trusted(Path::new(if absolute { "/" } else { "." }))
    };
    let mut queue: VecDeque<OsString> = VecDeque::new();
    push_components(&mut queue, path);
    let mut cur = start(path.is_absolute())?;
    let mut links = 0;
    while let Some(name) = queue.pop_front() {
        let last = queue.is_empty();
        if name == "." {
            continue;
        }
        let meta = if name == ".." {
            None
        } else {
            cur.entry_metadata(&name)?
        };
        match meta {
            Some(m) if m.file_type().is_symlink() => {
                let link_path = cur.child(&name);
                let dir_uid = cur.metadata()?.uid();
                if !(trusted_owner(m.uid()) && trusted_owner(dir_uid)) {
                    return Err(AppDirError::UntrustedLink {
                        path: link_path,
                        link_uid: m.uid(),
                        dir_uid,
                    });
                }
                links += 1;
                if links > MAX_LINKS {
                    return Err(AppDirError::TooManyLinks {
                        path: path.to_path_buf(),
                    });
                }
                let target = rustix::fs::readlinkat(&cur, &*name, Vec::new())
                    .map_err(AppDirError::errno("read the symlink", &link_path))?;
                let target = PathBuf::from(OsString::from_vec(target.into_bytes()));
                let mut rest: VecDeque<OsString> = VecDeque::new();
                push_components(&mut rest, &target);
                rest.extend(queue.drain(..));
                queue = rest;
                if target.is_absolute() {
                    cur = start(true)?;
                }
            }
            _ if last => {
                if name == ".." {
                    return Err(not_a_dir());
                }
                return Ok(Some(Location { parent: cur, name }));
            }
            None if name == ".." => {
                let fd = rustix::fs::openat(&cur, "..", dir_flags(), Mode::empty())
                    .map_err(AppDirError::errno("open", &cur.child(&name)))?;
                let parent = cur.path.parent().map(Path::to_path_buf).unwrap_or_default();
                cur = Dir {
                    file: File::from(fd),
                    path: parent,
                };
            }
            None if create => {
                cur = cur.ensure_dir(&name, 0o755, None)?;
            }
            None => return Ok(None),
            Some(m) if m.is_dir() => {
                cur = cur.open_dir(&name)?.ok_or_else(not_a_dir)?;
            }
            Some(_) => {
                return Err(AppDirError::NotADirectory {
                    path: cur.child(&name),
                })
            }
        }
    }
    // The path was `/` or only dots: no directory of its own.
    Err(not_a_dir())
}

fn push_components(queue: &mut VecDeque<OsString>, path: &Path) {
    for c in path.components() {
        match c {
            Component::Normal(n) => queue.push_back(n.to_os_string()),
            Component::ParentDir => queue.push_back(OsString::from("..")),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
}

/// Opens the persistence directory (see [`locate`]); `None` when it does
/// not exist.
pub fn open_persistence(path: &Path) -> Result<Option<Dir>, AppDirError> {
    match locate(path, false)? {
        Some(loc) => loc.parent.open_dir(&loc.name),
        None => Ok(None),
    }
}

/// Opens the persistence directory, creating it when it does not exist:
/// missing parents as root's (`0755`), the directory itself `0755` and
/// owned by `owner` (the service's user) when slipway runs as root.
pub fn ensure_persistence(path: &Path, owner: Option<&AppUser>) -> Result<Dir, AppDirError> {
    let loc = locate(path, true)?.ok_or_else(|| AppDirError::NotADirectory {
        path: path.to_path_buf(),
    })?;
    loc.parent.ensure_dir(&loc.name, 0o755, owner)
}

/// One step of a [`walk`].
pub enum Visit<'a> {
    /// A directory, about to be walked (`dir` is it, open).
    Enter(&'a Dir),
    /// The end of a directory's contents.
    Leave(&'a Dir),
    /// A regular file, not opened: [`Dir::open_file`] of `name` in `parent`
    /// reads it.
    File,
    /// A symlink and its target (never followed).
    Symlink(&'a OsStr),
    /// A socket, FIFO or device: a runtime object, never opened.
    Special,
}

/// One entry met by a [`walk`].
pub struct Entry<'a> {
    /// The path relative to the walked directory.
    pub rel: &'a Path,
    /// The directory holding the entry, open.
    pub parent: &'a Dir,
    /// The entry's name in `parent`.
    pub name: &'a OsStr,
    /// The entry's own metadata (a symlink's, not its target's).
    pub meta: &'a Metadata,
}

/// Visits every entry under `top` (not `top` itself) in sorted order, depth
/// first, directories before and after their contents, skipping the
/// top-level names in `skip`. Nothing is followed; entries that vanish
/// during the walk are skipped. See the module docs.
pub fn walk<E: From<AppDirError>>(
    top: &Dir,
    skip: &[&str],
    visit: &mut dyn FnMut(&Entry<'_>, Visit<'_>) -> Result<(), E>,
) -> Result<(), E> {
    walk_in(top, Path::new(""), 0, skip, visit)
}

fn walk_in<E: From<AppDirError>>(
    dir: &Dir,
    rel: &Path,
    depth: usize,
    skip: &[&str],
    visit: &mut dyn FnMut(&Entry<'_>, Visit<'_>) -> Result<(), E>,
) -> Result<(), E> {
    if depth > MAX_DEPTH {
        return Err(AppDirError::TooDeep {
            path: dir.path.clone(),
        }
        .into());
    }
    for name in dir.names()? {
        if depth == 0 && skip.iter().any(|s| name.as_bytes() == s.as_bytes()) {
            continue;
        }
        let Some(handle) = dir.open_entry(&name)? else {
            continue;
        };
        let meta = handle
            .metadata()
            .map_err(AppDirError::io("read", &dir.child(&name)))?;
        let child_rel = rel.join(&name);
        let entry = Entry {
            rel: &child_rel,
            parent: dir,
            name: &name,
            meta: &meta,
        };
        let ft = meta.file_type();
        if ft.is_dir() {
            // Through the entry's own descriptor: the very directory just
            // examined, whatever the name points at by now.
            let fd = rustix::fs::openat(&handle, ".", dir_flags(), Mode::empty())
                .map_err(AppDirError::errno("open", &dir.child(&name)))?;
            let child = Dir {
                file: File::from(fd),
                path: dir.child(&name),
            };
            drop(handle);
            visit(&entry, Visit::Enter(&child))?;
            walk_in(&child, &child_rel, depth + 1, skip, visit)?;
            visit(&entry, Visit::Leave(&child))?;
        } else if ft.is_symlink() {
            let target = match rustix::fs::readlinkat(&handle, "", Vec::new()) {
                Ok(t) => OsString::from_vec(t.into_bytes()),
                Err(Errno::NOENT) => continue,
                Err(e) => {
                    return Err(AppDirError::errno("read the symlink", &dir.child(&name))(e).into())
                }
            };
            visit(&entry, Visit::Symlink(&target))?;
        } else if ft.is_file() {
            visit(&entry, Visit::File)?;
        } else {
            visit(&entry, Visit::Special)?;
        }
    }
    Ok(())
}

/// A file's identity, to tell whether a name still refers to it.
pub fn same_inode(a: &Metadata, b: &Metadata) -> bool {
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn stale_temporary_files_go_and_nothing_else_does() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let own = format!(".update_state.json.tmp.{}", std::process::id());
        for name in [
            ".update_state.json.tmp.99999999",
            own.as_str(),
            "version.json",
            ".x.tmp.abc",
        ] {
            fs::write(tmp.path().join(name), b"x").expect("write");
        }
        fs::create_dir(tmp.path().join(".dir.tmp.12")).expect("dir");
        let dir = Dir::open_trusted(tmp.path()).expect("open");
        assert_eq!(dir.remove_stale_temps().expect("sweep"), 1);
        assert!(!tmp.path().join(".update_state.json.tmp.99999999").exists());
        for kept in [own.as_str(), "version.json", ".x.tmp.abc", ".dir.tmp.12"] {
            assert!(tmp.path().join(kept).exists(), "{kept}");
        }
    }

    #[test]
    fn a_walk_reports_links_as_links_and_never_enters_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("p");
        fs::create_dir_all(p.join("sub")).expect("mkdir");
        fs::write(p.join("sub/a"), b"a").expect("write");
        fs::create_dir(p.join("meta")).expect("meta");
        std::os::unix::fs::symlink(dir.path(), p.join("link")).expect("symlink");
        let top = open_persistence(&p).expect("open").expect("exists");
        let mut seen = Vec::new();
        walk::<AppDirError>(&top, &[META_DIR], &mut |e, v| {
            let kind = match v {
                Visit::Enter(_) => "enter",
                Visit::Leave(_) => "leave",
                Visit::File => "file",
                Visit::Symlink(_) => "link",
                Visit::Special => "special",
            };
            seen.push(format!("{kind} {}", e.rel.display()));
            Ok(())
        })
        .expect("walk");
        assert_eq!(seen, ["link link", "enter sub", "file sub/a", "leave sub"]);
    }

    #[test]
    fn files_are_written_atomically_and_a_planted_link_is_replaced_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = ensure_persistence(&dir.path().join("a/b/p"), None).expect("created");
        let meta = p
            .ensure_dir(OsStr::new(META_DIR), 0o755, None)
            .expect("meta");
        let target = dir.path().join("target");
        fs::write(&target, b"keep").expect("target");
        std::os::unix::fs::symlink(&target, dir.path().join("a/b/p/meta/v.json")).expect("link");
        meta.write_file_atomic(OsStr::new("v.json"), b"{}", 0o644)
            .expect("write");
        assert_eq!(fs::read(&target).expect("target"), b"keep");
        assert_eq!(
            fs::read(dir.path().join("a/b/p/meta/v.json")).expect("v"),
            b"{}"
        );
        assert_eq!(
            fs::read_dir(dir.path().join("a/b/p/meta"))
                .expect("ls")
                .count(),
            1
        );
    }

    #[test]
    fn remove_tree_removes_links_not_their_targets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        fs::create_dir(&victim).expect("victim");
        fs::write(victim.join("keep"), b"keep").expect("keep");
        let old = dir.path().join("old");
        fs::create_dir_all(old.join("d")).expect("mkdir");
        std::os::unix::fs::symlink(&victim, old.join("d/link")).expect("link");
        let parent = Dir::open_trusted(dir.path()).expect("open");
        parent.remove_tree(OsStr::new("old")).expect("remove");
        assert!(!old.exists());
        assert_eq!(fs::read(victim.join("keep")).expect("kept"), b"keep");
        parent
            .remove_tree(OsStr::new("old"))
            .expect("missing is fine");
    }
}

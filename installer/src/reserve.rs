//! Space set aside before a transaction writes anything, so that a disk
//! that fills up during the update (the app's own logs, another program)
//! cannot stop the two writes that put the host back in order: the
//! journal's, and a flip back's restore copy of the persistence.
//!
//! [`set_aside`] allocates two files under `<root>/state/` when the
//! transaction begins, before its first journal write: `reserve.journal`
//! (a fixed [`JOURNAL_ROOM`]) and `reserve.restore` (what two copies of
//! the persistence directory take, twice [`copy_room`]: a flip back first
//! keeps the data it replaces under `backups/`, then restoring the
//! snapshot copies it). A journal write that fails for lack of room frees
//! `reserve.journal` and tries once more ([`crate::journal::record`]); a
//! restore frees `reserve.restore` just before it copies. Both go when the
//! transaction ends ([`release`]). A run killed in between leaves them for
//! `recover`, which releases them the same way.
//!
//! The restore copy lands beside the persistence directory, so the reserve
//! only helps when the persistence is on the install root's file system.
//!
//! The allocation is real (`fallocate(2)`), not a sparse file: the blocks
//! are taken from the file system's free count. On a file system without
//! `fallocate` nothing is set aside and the run goes on (said at `-v`).

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::layout::Layout;

/// Room kept for journal writes: far more than the journal and the ledger
/// of children ever take (a journal is a few KiB).
pub const JOURNAL_ROOM: u64 = 1024 * 1024;

/// Why nothing could be set aside.
#[derive(Debug)]
pub enum ReserveError {
    /// The file system has less free room than the reserve.
    NoRoom {
        wanted: u64,
    },
    /// `fallocate` is not supported here: nothing was set aside.
    Unsupported,
    Io(io::Error),
}

impl std::fmt::Display for ReserveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReserveError::NoRoom { wanted } => write!(
                f,
                "no room to set aside {} MiB for the journal and a restore of the persistence",
                wanted.div_ceil(1024 * 1024)
            ),
            ReserveError::Unsupported => f.write_str("the file system cannot preallocate"),
            ReserveError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// The room a copy of the persistence tree `dir` takes on its file system:
/// each regular file's length rounded up to whole blocks, and a block for
/// each directory and symlink. A copy allocates blocks, not bytes: a
/// thousand 100-byte files take a thousand blocks. A missing `dir` (or one
/// that cannot be opened) takes nothing. The tree is the app's: it is
/// walked through directory descriptors, never following a link
/// ([`crate::app_dir`]).
pub fn copy_room(dir: &Path) -> u64 {
    let Ok(Some(top)) = crate::app_dir::open_persistence(dir) else {
        return 0;
    };
    let block = rustix::fs::fstatvfs(&top)
        .map(|s| s.f_frsize)
        .ok()
        .filter(|b| *b > 0)
        .unwrap_or(4096);
    let mut total = block;
    let _ = crate::app_dir::walk(&top, &[], &mut |e, visit| {
        let room = match visit {
            crate::app_dir::Visit::File => e.meta.len().div_ceil(block).saturating_mul(block),
            crate::app_dir::Visit::Leave(_) => 0,
            _ => block,
        };
        total = total.saturating_add(room);
        Ok::<(), crate::app_dir::AppDirError>(())
    });
    total
}

/// Sets aside [`JOURNAL_ROOM`] and `restore_bytes` under `state/`.
pub fn set_aside(layout: &Layout, restore_bytes: u64) -> Result<(), ReserveError> {
    crate::durable::create_dirs(&layout.state_dir()).map_err(ReserveError::Io)?;
    let journal = allocate(&layout.journal_reserve_file(), JOURNAL_ROOM);
    let restore = journal.and_then(|()| allocate(&layout.restore_reserve_file(), restore_bytes));
    if let Err(e) = restore {
        release(layout);
        return Err(match e {
            ReserveError::NoRoom { .. } => ReserveError::NoRoom {
                wanted: JOURNAL_ROOM.saturating_add(restore_bytes),
            },
            other => other,
        });
    }
    Ok(())
}

fn allocate(path: &Path, bytes: u64) -> Result<(), ReserveError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(ReserveError::Io)?;
    if bytes == 0 {
        return Ok(());
    }
    match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, bytes) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::NOSPC) => {
            drop(file);
            let _ = fs::remove_file(path);
            Err(ReserveError::NoRoom { wanted: bytes })
        }
        Err(rustix::io::Errno::OPNOTSUPP) => {
            drop(file);
            let _ = fs::remove_file(path);
            Err(ReserveError::Unsupported)
        }
        Err(e) => {
            drop(file);
            let _ = fs::remove_file(path);
            Err(ReserveError::Io(e.into()))
        }
    }
}

/// Frees the journal's room (a journal write just failed for lack of it).
/// Returns whether there was a reserve to free.
pub fn free_journal_room(layout: &Layout) -> bool {
    fs::remove_file(layout.journal_reserve_file()).is_ok()
}

/// Frees the restore copy's room, right before a restore.
pub fn free_restore_room(layout: &Layout) {
    let _ = fs::remove_file(layout.restore_reserve_file());
}

/// Frees both: the transaction is over.
pub fn release(layout: &Layout) {
    let _ = fs::remove_file(layout.journal_reserve_file());
    let _ = fs::remove_file(layout.restore_reserve_file());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_takes_whole_blocks_per_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let block = rustix::fs::statvfs(dir.path()).expect("statvfs").f_frsize;
        fs::create_dir(dir.path().join("sub")).expect("mkdir");
        for i in 0..10 {
            fs::write(dir.path().join("sub").join(i.to_string()), b"x").expect("write");
        }
        fs::write(dir.path().join("big"), vec![0u8; block as usize + 1]).expect("write");
        // Two directories, ten one-block files, one two-block file.
        assert_eq!(copy_room(dir.path()), (2 + 10 + 2) * block);
        assert_eq!(copy_room(&dir.path().join("missing")), 0);
    }

    #[test]
    fn reserves_take_real_blocks_and_go_away() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path());
        match set_aside(&layout, 3 * 1024 * 1024) {
            Ok(()) => {}
            Err(ReserveError::Unsupported) => return,
            Err(e) => panic!("set aside: {e}"),
        }
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(layout.restore_reserve_file()).expect("restore reserve");
        assert_eq!(m.len(), 3 * 1024 * 1024);
        // Allocated, not sparse: 512-byte blocks cover the length.
        assert!(m.blocks() * 512 >= m.len(), "{} blocks", m.blocks());
        assert!(free_journal_room(&layout));
        assert!(!free_journal_room(&layout));
        release(&layout);
        assert!(!layout.restore_reserve_file().exists());
    }
}

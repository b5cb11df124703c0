//! What each file of a staged release was when slipway last proved its
//! content: the identity record of a release,
//! `<root>/state/releases/<release-dir>.stat`.
//!
//! A [`TreeRecord`] maps every regular file of a release (its
//! `slipway/manifest.json` included) to its [`FileIdentity`]: device,
//! inode, size, mode, mtime and ctime, as `lstat(2)` gave them right after
//! the content was proven against the signed manifest (at staging, or by a
//! full re-hash). A file whose identity is still the recorded one has not
//! been written, truncated, replaced or chmodded since: any of these moves
//! its ctime, which only the kernel sets (see docs/transaction.md, "The
//! clean-tree rule", for what this does and does not catch). So the
//! clean-tree rule ([`crate::clean`]) re-hashes only the files whose
//! identity differs, and staging ([`crate::stage`]) hardlinks a running
//! release's file only when its identity is the recorded one.
//!
//! A record taken when the whole tree was proven (at staging, or by a
//! full check that found it clean) also holds the identity of every
//! directory and symlink and of the release directory itself
//! ([`TreeRecord::whole_tree`]). A directory's mtime and ctime move with
//! every entry created, removed or renamed in it, so when every recorded
//! path still has its identity, nothing was added, removed, replaced,
//! written or chmodded anywhere in the tree: the clean-tree rule answers
//! with one `fstatat` per path and no `readdir` or read
//! ([`record_vouches_for_tree`]), as `git status` does with its
//! index.
//!
//! slipway's own link and unlink of a shared inode (a hardlinked stage, a
//! `gc` of a release that shares files) move that inode's ctime too. They
//! are followed by [`Records::carry_over`], which moves a record from the
//! identity seen just before to the one seen just after, for records that
//! held exactly the "before" identity; a record that was already stale
//! stays stale, so a change made earlier is never laundered.
//!
//! The records are written like every state file: temp file, fsync,
//! rename, fsync of the directory. A missing, unreadable or foreign record
//! is no record: the release is then checked by a full re-hash.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};
use slipway_formats::{EntryType, Manifest, MANIFEST_PATH};

use crate::durable;
use crate::layout::Layout;

/// The record format this slipway writes and reads: 2 is the compact
/// binary form below (1 was JSON of files only; such a record is no
/// record, and the next check re-hashes once and writes a new one).
pub const RECORD_FORMAT: u32 = 2;

/// The suffix of a record file in `state/releases/`.
pub const RECORD_SUFFIX: &str = ".stat";

/// Records larger than this are not read (about 40 times the largest
/// manifest's file count at ~110 bytes an entry).
const MAX_RECORD_BYTES: u64 = 64 * 1024 * 1024;

/// The first bytes of a record file.
const MAGIC: &[u8; 8] = b"slwstat\n";

/// The path under which a record holds the release directory itself.
pub const ROOT_ENTRY: &str = ".";

/// The entries every whole-tree record holds beside the manifest's own:
/// the release directory, `slipway/` and `slipway/manifest.json`.
const OWN_ENTRIES: [&str; 3] = [ROOT_ENTRY, "slipway", MANIFEST_PATH];

/// What `lstat(2)` says about one file, as far as it tells whether the
/// file changed: any write, truncation or `chmod` moves `ctime`; a rename
/// over it changes `ino`. For a directory, creating, removing or renaming
/// an entry in it moves its `mtime` and `ctime`; a symlink's target cannot
/// change without a new inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// Permission and type bits (`st_mode`).
    pub mode: u32,
    pub mtime: i64,
    pub mtime_ns: i64,
    pub ctime: i64,
    pub ctime_ns: i64,
}

/// Bytes of one encoded [`FileIdentity`].
const IDENTITY_BYTES: usize = 8 * 3 + 4 + 8 * 4;

impl FileIdentity {
    /// The identity of the file `meta` was read from (`symlink_metadata`).
    pub fn of(meta: &fs::Metadata) -> FileIdentity {
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mode: meta.mode(),
            mtime: meta.mtime(),
            mtime_ns: meta.mtime_nsec(),
            ctime: meta.ctime(),
            ctime_ns: meta.ctime_nsec(),
        }
    }

    /// The identity of `path`, not following a symlink.
    pub fn of_path(path: &Path) -> io::Result<FileIdentity> {
        fs::symlink_metadata(path).map(|m| FileIdentity::of(&m))
    }

    /// The identity of `path` relative to the directory `dir`, not
    /// following a symlink in its last component.
    pub fn at(dir: &impl AsFd, path: &str) -> io::Result<FileIdentity> {
        let st = rustix::fs::statat(dir, path, AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(FileIdentity {
            dev: st.st_dev,
            ino: st.st_ino,
            size: u64::try_from(st.st_size).unwrap_or(u64::MAX),
            mode: st.st_mode,
            mtime: st.st_mtime,
            mtime_ns: i64::try_from(st.st_mtime_nsec).unwrap_or(-1),
            ctime: st.st_ctime,
            ctime_ns: i64::try_from(st.st_ctime_nsec).unwrap_or(-1),
        })
    }

    /// Whether `after` is this file after a change of its link count only:
    /// the same inode, size, mode and mtime, whatever its ctime.
    pub fn same_but_ctime(&self, after: &FileIdentity) -> bool {
        FileIdentity {
            ctime: after.ctime,
            ctime_ns: after.ctime_ns,
            ..*self
        } == *after
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.dev.to_le_bytes());
        out.extend_from_slice(&self.ino.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.mode.to_le_bytes());
        for v in [self.mtime, self.mtime_ns, self.ctime, self.ctime_ns] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn decode(bytes: &[u8]) -> Option<FileIdentity> {
        let u64_at = |i: usize| Some(u64::from_le_bytes(bytes.get(i..i + 8)?.try_into().ok()?));
        let i64_at = |i: usize| Some(i64::from_le_bytes(bytes.get(i..i + 8)?.try_into().ok()?));
        Some(FileIdentity {
            dev: u64_at(0)?,
            ino: u64_at(8)?,
            size: u64_at(16)?,
            mode: u32::from_le_bytes(bytes.get(24..28)?.try_into().ok()?),
            mtime: i64_at(28)?,
            mtime_ns: i64_at(36)?,
            ctime: i64_at(44)?,
            ctime_ns: i64_at(52)?,
        })
    }
}

/// The identity record of one release directory.
///
/// On disk (all integers little-endian): the magic `slwstat\n`, the
/// format (u32), a flags byte (bit 0: [`TreeRecord::whole_tree`]), the
/// entry count (u32), then per entry the path's length (u16), the path
/// (UTF-8, release-relative) and its [`FileIdentity`] (dev, ino, size as
/// u64, mode as u32, mtime, mtime_ns, ctime, ctime_ns as i64). A record
/// that does not parse exactly is no record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeRecord {
    pub format: u32,
    /// Whether the record lists every path of the release (the directory
    /// itself as [`ROOT_ENTRY`], `slipway/`, the manifest and every entry
    /// of the manifest: files, directories and symlinks) with the identity
    /// it had when the whole tree was last proven to match the manifest,
    /// strays included. Then a tree whose every path still has its
    /// recorded identity is clean without reading a file or a directory
    /// ([`record_vouches_for_tree`]). A record of proven files only
    /// (after a check that found drift) has this false.
    pub whole_tree: bool,
    /// Release-relative path → identity: every regular file proven (the
    /// manifest included), and with [`TreeRecord::whole_tree`] every
    /// other path too.
    pub files: BTreeMap<String, FileIdentity>,
}

impl Default for TreeRecord {
    fn default() -> TreeRecord {
        TreeRecord {
            format: RECORD_FORMAT,
            whole_tree: false,
            files: BTreeMap::new(),
        }
    }
}

impl TreeRecord {
    /// The recorded identity of `path`, if any.
    pub fn get(&self, path: &str) -> Option<&FileIdentity> {
        self.files.get(path)
    }

    /// Whether the release's `slipway/manifest.json` is still the file the
    /// record was taken with: a record is only trusted with its manifest.
    pub fn manifest_unchanged(&self, dir: &Path) -> bool {
        manifest_is(dir, self.get(MANIFEST_PATH).copied())
    }

    /// The record in its on-disk form.
    pub fn encode(&self) -> Vec<u8> {
        encode_entries(
            self.whole_tree,
            self.files.iter().map(|(p, id)| (p.as_str(), *id)),
            self.files.len(),
        )
    }

    /// Parses a record; `None` for anything but exactly a record of
    /// [`RECORD_FORMAT`] (trailing bytes, a short entry, a path that is
    /// not UTF-8 or appears twice).
    pub fn decode(bytes: &[u8]) -> Option<TreeRecord> {
        let (whole_tree, entries) = decode_entries(bytes)?;
        let mut files = BTreeMap::new();
        for (path, id) in entries {
            if files.insert(path.to_string(), id).is_some() {
                return None;
            }
        }
        Some(TreeRecord {
            format: RECORD_FORMAT,
            whole_tree,
            files,
        })
    }
}

/// The on-disk form of a record of `count` entries given in bytewise
/// order (what a `BTreeMap<String, _>` iterates; [`decode_entries`] reads
/// them back).
fn encode_entries<'p>(
    whole_tree: bool,
    entries: impl Iterator<Item = (&'p str, FileIdentity)>,
    count: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(17 + count * (IDENTITY_BYTES + 64));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&RECORD_FORMAT.to_le_bytes());
    out.push(u8::from(whole_tree));
    let count_at = out.len();
    out.extend_from_slice(&0u32.to_le_bytes());
    let mut written = 0u32;
    for (path, id) in entries {
        let Ok(len) = u16::try_from(path.len()) else {
            continue;
        };
        if written == u32::MAX {
            break;
        }
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(path.as_bytes());
        id.encode(&mut out);
        written += 1;
    }
    out[count_at..count_at + 4].copy_from_slice(&written.to_le_bytes());
    out
}

/// Where each identity of an encoded record starts, with the identity;
/// `None` unless `bytes` is exactly a record of [`RECORD_FORMAT`].
fn identity_offsets(bytes: &[u8]) -> Option<Vec<(usize, FileIdentity)>> {
    let (_, entries) = decode_entries(bytes)?;
    let mut at = MAGIC.len() + 9;
    let mut out = Vec::with_capacity(entries.len());
    for (path, id) in entries {
        at += 2 + path.len();
        out.push((at, id));
        at += IDENTITY_BYTES;
    }
    Some(out)
}

/// Whether the release's `slipway/manifest.json` in `dir` is still the file
/// recorded as `recorded`: a record is only trusted with its manifest.
fn manifest_is(dir: &Path, recorded: Option<FileIdentity>) -> bool {
    let now = FileIdentity::of_path(&dir.join(MANIFEST_PATH)).ok();
    now.is_some() && recorded == now
}

/// The whole-tree flag and the entries of an encoded record, borrowed
/// from it; `None` unless it is exactly a record of [`RECORD_FORMAT`].
fn decode_entries(bytes: &[u8]) -> Option<(bool, Vec<(&str, FileIdentity)>)> {
    let rest = bytes.strip_prefix(MAGIC.as_slice())?;
    let format = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
    if format != RECORD_FORMAT {
        return None;
    }
    let whole_tree = match *rest.get(4)? {
        0 => false,
        1 => true,
        _ => return None,
    };
    let count = u32::from_le_bytes(rest.get(5..9)?.try_into().ok()?);
    let mut at = 9;
    // Capped by what the bytes can hold, not by what the count claims.
    let mut entries = Vec::with_capacity((count as usize).min(rest.len() / (IDENTITY_BYTES + 2)));
    for _ in 0..count {
        let len = usize::from(u16::from_le_bytes(rest.get(at..at + 2)?.try_into().ok()?));
        at += 2;
        let path = std::str::from_utf8(rest.get(at..at + len)?).ok()?;
        at += len;
        let id = FileIdentity::decode(rest.get(at..at + IDENTITY_BYTES)?)?;
        at += IDENTITY_BYTES;
        entries.push((path, id));
    }
    (at == rest.len()).then_some((whole_tree, entries))
}

/// Whether every `(path, identity)` still has exactly that identity in
/// `dir` (`fstatat` relative to it, no symlink followed in the last
/// component; a symlink earlier in a path changes its parent directory's
/// recorded identity first). The paths are split between up to four
/// threads: the kernel's lookups are the whole cost.
fn all_as_recorded(dir: &Path, entries: &[(&str, FileIdentity)]) -> bool {
    let Ok(root) = open_dir(dir) else {
        return false;
    };
    let check = |part: &[(&str, FileIdentity)]| {
        let Ok(mut cursor) = DirCursor::at(&root) else {
            return false;
        };
        part.iter()
            .all(|(path, recorded)| cursor.identity(path).ok().as_ref() == Some(recorded))
    };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get().min(4))
        .unwrap_or(1);
    if threads < 2 || entries.len() < 2048 {
        return check(entries);
    }
    let per = entries.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = entries
            .chunks(per)
            .map(|part| scope.spawn(move || check(part)))
            .collect();
        handles.into_iter().all(|h| h.join().unwrap_or(false))
    })
}

/// `dir` opened as a directory to look paths up from (`O_PATH`, not
/// following a symlink in its last component).
fn open_dir(dir: impl rustix::path::Arg) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Release-relative paths looked up under one directory, in an order
/// where consecutive paths mostly share their parent (record or manifest
/// order): the parent of the last path is kept open, so a lookup walks
/// one name instead of the whole path.
pub struct DirCursor {
    root: OwnedFd,
    parent: Option<(String, OwnedFd)>,
}

impl DirCursor {
    /// A cursor under the directory `dir`.
    pub fn open(dir: &Path) -> io::Result<DirCursor> {
        Ok(DirCursor {
            root: open_dir(dir)?,
            parent: None,
        })
    }

    fn at(root: &impl AsFd) -> io::Result<DirCursor> {
        Ok(DirCursor {
            root: root.as_fd().try_clone_to_owned()?,
            parent: None,
        })
    }

    /// The open directory that holds `rel`, and `rel`'s last name.
    pub fn locate<'p>(&mut self, rel: &'p str) -> io::Result<(BorrowedFd<'_>, &'p str)> {
        let Some((dir, name)) = rel.rsplit_once('/') else {
            return Ok((self.root.as_fd(), rel));
        };
        if self.parent.as_ref().is_none_or(|(open, _)| open != dir) {
            let fd = rustix::fs::openat(
                &self.root,
                dir,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            self.parent = Some((dir.to_string(), fd));
        }
        match &self.parent {
            Some((_, fd)) => Ok((fd.as_fd(), name)),
            None => Err(io::Error::other("no open directory")),
        }
    }

    /// The identity of `rel` ([`FileIdentity::at`]).
    pub fn identity(&mut self, rel: &str) -> io::Result<FileIdentity> {
        let (dir, name) = self.locate(rel)?;
        FileIdentity::at(&dir, name)
    }
}

/// Whether the whole-tree record of the release in `release_dir` vouches
/// for it: every path it lists still has exactly its recorded identity.
/// Then no file was written, replaced, chmodded, added or removed since
/// the tree was proven (a directory's mtime and ctime move with every
/// entry created, removed or renamed in it), so the tree still matches
/// its manifest. One `fstatat` per path, nothing read or listed; `None`
/// at the first difference (the caller then runs the full comparison,
/// which names the drift). Only the kernel sets a ctime: see
/// docs/transaction.md, "The clean-tree rule", for what this does not
/// catch. The record is read without building it: the quick check's fast
/// path. When it vouches: how many
/// entries of the release's manifest it vouched for, and how many of them
/// are regular files.
pub fn record_vouches_for_tree(layout: &Layout, release_dir: &Path) -> Option<(usize, usize)> {
    let bytes =
        slipway_fs::read_capped(&record_file(layout, release_dir)?, MAX_RECORD_BYTES).ok()?;
    let (true, entries) = decode_entries(&bytes)? else {
        return None;
    };
    let vouches = entries.len() >= OWN_ENTRIES.len()
        && OWN_ENTRIES
            .iter()
            .all(|own| entries.iter().any(|(p, _)| p == own))
        && all_as_recorded(release_dir, &entries);
    let files = entries
        .iter()
        .filter(|(p, id)| id.mode & 0o170000 == 0o100000 && *p != MANIFEST_PATH)
        .count();
    vouches.then(|| (entries.len() - OWN_ENTRIES.len(), files))
}

/// `<root>/state/releases/`.
pub fn records_dir(layout: &Layout) -> PathBuf {
    layout.state_dir().join("releases")
}

/// Where the record of the release in `release_dir` lives.
pub fn record_file(layout: &Layout, release_dir: &Path) -> Option<PathBuf> {
    let name = release_dir.file_name()?.to_str()?;
    Some(records_dir(layout).join(format!("{name}{RECORD_SUFFIX}")))
}

/// Takes the whole-tree record of a release whose every entry was just
/// proven against `manifest` (staging): the identity of the release
/// directory, `slipway/`, the manifest and every entry. `known` gives the
/// identity of paths the caller has just seen (the files staging linked,
/// whose identity it read right after the link); the others are
/// `lstat`ed; `known[i]` is for `manifest.files[i]`. An error is an
/// `lstat` failure or an entry that is not of its manifest type (the tree
/// is not as staged). The record is returned in its on-disk form, for
/// [`save_encoded`].
pub fn take(
    dir: &Path,
    manifest: &Manifest,
    known: &[Option<FileIdentity>],
) -> io::Result<Vec<u8>> {
    let mut cursor = DirCursor::open(dir)?;
    let own = [
        (ROOT_ENTRY, EntryType::Dir),
        ("slipway", EntryType::Dir),
        (MANIFEST_PATH, EntryType::File),
    ];
    let own = own.into_iter().map(|(path, kind)| (path, kind, None));
    let listed = manifest
        .files
        .iter()
        .enumerate()
        .map(|(i, e)| (e.path.as_str(), e.kind, known.get(i).copied().flatten()));
    let mut entries: Vec<(&str, FileIdentity)> = Vec::with_capacity(manifest.files.len() + 3);
    for (path, kind, known) in own.chain(listed) {
        let id = match known {
            Some(id) => id,
            None => cursor.identity(path)?,
        };
        let type_bits = id.mode & 0o170000;
        let wanted = match kind {
            EntryType::File => 0o100000,
            EntryType::Dir => 0o040000,
            EntryType::Symlink => 0o120000,
        };
        if type_bits != wanted {
            return Err(io::Error::other(format!(
                "{} is not a {kind}",
                dir.join(path).display()
            )));
        }
        entries.push((path, id));
    }
    // The manifest's paths are sorted and unique; the three of the
    // release's own go in among them.
    entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    if entries.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(io::Error::other(format!(
            "{}: a path is listed twice",
            dir.display()
        )));
    }
    Ok(encode_entries(true, entries.iter().copied(), entries.len()))
}

/// Loads the record of the release in `release_dir`; `None` when there is
/// none or it cannot be used (unreadable, another format).
pub fn load(layout: &Layout, release_dir: &Path) -> Option<TreeRecord> {
    load_file(&record_file(layout, release_dir)?)
}

fn load_file(path: &Path) -> Option<TreeRecord> {
    let bytes = slipway_fs::read_capped(path, MAX_RECORD_BYTES).ok()?;
    TreeRecord::decode(&bytes)
}

/// The recorded identity of each regular file of `manifest`, by manifest
/// index, from the record of the release in `release_dir`, if it has one
/// taken with its present `slipway/manifest.json`. The record's entries are
/// read in place and joined with the manifest by one pass over both (each
/// sorted bytewise): no map of 20,000 paths is built. A record whose
/// paths are not strictly increasing (as every record this slipway writes
/// is) is not used, like one [`TreeRecord::decode`] refuses for a repeated
/// path.
pub fn file_identities(
    layout: &Layout,
    release_dir: &Path,
    manifest: &Manifest,
) -> Option<Vec<Option<FileIdentity>>> {
    let bytes =
        slipway_fs::read_capped(&record_file(layout, release_dir)?, MAX_RECORD_BYTES).ok()?;
    let (_, entries) = decode_entries(&bytes)?;
    if !entries
        .windows(2)
        .all(|w| w[0].0.as_bytes() < w[1].0.as_bytes())
    {
        return None;
    }
    let recorded_manifest = entries
        .iter()
        .find(|(p, _)| *p == MANIFEST_PATH)
        .map(|(_, id)| *id);
    if !manifest_is(release_dir, recorded_manifest) {
        return None;
    }
    let mut out = vec![None; manifest.files.len()];
    let mut recorded = entries.iter().peekable();
    for (slot, e) in out.iter_mut().zip(&manifest.files) {
        while recorded
            .peek()
            .is_some_and(|(p, _)| p.as_bytes() < e.path.as_bytes())
        {
            recorded.next();
        }
        if let Some((p, id)) = recorded.peek() {
            if *p == e.path && e.kind == EntryType::File {
                *slot = Some(*id);
            }
        }
    }
    Some(out)
}

/// Writes the record of the release in `release_dir`, atomically and
/// durably.
pub fn save(layout: &Layout, release_dir: &Path, record: &TreeRecord) -> io::Result<()> {
    let path = record_file(layout, release_dir)
        .ok_or_else(|| io::Error::other("a release directory has a UTF-8 name"))?;
    durable::create_dirs(&records_dir(layout))?;
    durable::write_atomic(&path, &record.encode())
}

/// [`save`] for a record already in its on-disk form ([`take`]).
pub fn save_encoded(layout: &Layout, release_dir: &Path, record: &[u8]) -> io::Result<()> {
    let path = record_file(layout, release_dir)
        .ok_or_else(|| io::Error::other("a release directory has a UTF-8 name"))?;
    durable::create_dirs(&records_dir(layout))?;
    durable::write_atomic(&path, record)
}

/// [`Records::carry_over`] for every record but `except`'s, patched in
/// their on-disk form (no map of their paths is built) and written back
/// when changed. A file that is not a record is left alone, as
/// [`Records::load_all`] leaves it out.
pub fn carry_over_records(
    layout: &Layout,
    except: Option<&Path>,
    changes: &HashMap<FileIdentity, FileIdentity>,
) -> io::Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let except_name = except.and_then(Path::file_name);
    let Ok(entries) = fs::read_dir(layout.releases_dir()) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        if except_name.is_some_and(|n| Some(n) == dir.file_name()) {
            continue;
        }
        let Some(file) = record_file(layout, &dir) else {
            continue;
        };
        let Ok(mut bytes) = slipway_fs::read_capped(&file, MAX_RECORD_BYTES) else {
            continue;
        };
        if carry_over_encoded(&mut bytes, changes) {
            save_encoded(layout, &dir, &bytes)?;
        }
    }
    Ok(())
}

/// Rewrites in place every identity of the encoded record `bytes` that
/// `changes` maps to one differing only in its ctime; whether any was.
fn carry_over_encoded(bytes: &mut [u8], changes: &HashMap<FileIdentity, FileIdentity>) -> bool {
    let Some(offsets) = identity_offsets(bytes) else {
        return false;
    };
    let mut changed = false;
    let mut encoded = Vec::with_capacity(IDENTITY_BYTES);
    for (at, id) in offsets {
        let Some(after) = changes.get(&id).filter(|after| id.same_but_ctime(after)) else {
            continue;
        };
        encoded.clear();
        after.encode(&mut encoded);
        if let Some(slot) = bytes.get_mut(at..at + IDENTITY_BYTES) {
            slot.copy_from_slice(&encoded);
            changed = true;
        }
    }
    changed
}

/// Removes the record of the release in `release_dir`, if any.
pub fn remove(layout: &Layout, release_dir: &Path) -> io::Result<()> {
    let Some(path) = record_file(layout, release_dir) else {
        return Ok(());
    };
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes the records of release directories that no longer exist.
pub fn remove_orphans(layout: &Layout) -> io::Result<Vec<PathBuf>> {
    let dir = records_dir(layout);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let releases = layout.releases_dir();
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(release) = name.strip_suffix(RECORD_SUFFIX) else {
            continue;
        };
        if fs::symlink_metadata(releases.join(release)).is_err() {
            fs::remove_file(entry.path())?;
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

/// Removes the release tree `dir` (unlinking its files: a file another
/// release still links is never truncated or chmodded, only its directory
/// entry here goes), then carries the ctime the unlinks gave to inodes
/// shared with other releases over to their records, and removes the
/// record of `dir`.
pub fn remove_release_tree(layout: &Layout, dir: &Path) -> io::Result<()> {
    let mut others = Records::load_all(layout, Some(dir));
    let recorded = others.paths_by_identity();
    let mut shared: Vec<(FileIdentity, PathBuf)> = Vec::new();
    if !recorded.is_empty() {
        for entry in walkdir::WalkDir::new(dir).follow_links(false) {
            let Ok(entry) = entry else { continue };
            if !entry.file_type().is_file() {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.nlink() < 2 {
                continue;
            }
            let before = FileIdentity::of(&meta);
            if let Some(path) = recorded.get(&before) {
                shared.push((before, path.clone()));
            }
        }
    }
    durable::remove_tree(dir)?;
    let changes: HashMap<FileIdentity, FileIdentity> = shared
        .into_iter()
        .filter_map(|(before, path)| Some((before, FileIdentity::of_path(&path).ok()?)))
        .collect();
    others.carry_over(&changes);
    others.save_changed(layout)?;
    remove(layout, dir)
}

/// Every record on the host, to follow slipway's own changes of link counts
/// ([`Records::carry_over`]).
#[derive(Debug, Default)]
pub struct Records {
    records: Vec<(PathBuf, TreeRecord, bool)>,
}

impl Records {
    /// Loads the records of every release directory under `releases/` but
    /// `except` (a release being removed or staged).
    pub fn load_all(layout: &Layout, except: Option<&Path>) -> Records {
        let mut records = Vec::new();
        let except_name = except.and_then(Path::file_name);
        if let Ok(entries) = fs::read_dir(layout.releases_dir()) {
            for entry in entries.flatten() {
                let dir = entry.path();
                if except_name.is_some_and(|n| Some(n) == dir.file_name()) {
                    continue;
                }
                if let Some(r) = load(layout, &dir) {
                    records.push((dir, r, false));
                }
            }
        }
        Records { records }
    }

    /// For every recorded identity, the path (release dir joined with the
    /// file) of one file recorded with it.
    pub fn paths_by_identity(&self) -> HashMap<FileIdentity, PathBuf> {
        let mut paths = HashMap::new();
        for (dir, r, _) in &self.records {
            for (p, id) in &r.files {
                paths.entry(*id).or_insert_with(|| dir.join(p));
            }
        }
        paths
    }

    /// For every `before → after` pair: every recorded file whose identity
    /// was exactly `before` is recorded as `after`. Only a change of the
    /// ctime is carried over (see the module docs).
    pub fn carry_over(&mut self, changes: &HashMap<FileIdentity, FileIdentity>) {
        if changes.is_empty() {
            return;
        }
        for (_, record, changed) in &mut self.records {
            for id in record.files.values_mut() {
                if let Some(after) = changes.get(id) {
                    if id.same_but_ctime(after) {
                        *id = *after;
                        *changed = true;
                    }
                }
            }
        }
    }

    /// Writes every record that [`Records::carry_over`] changed.
    pub fn save_changed(&self, layout: &Layout) -> io::Result<()> {
        for (dir, record, changed) in &self.records {
            if *changed {
                save(layout, dir, record)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: i64) -> FileIdentity {
        FileIdentity {
            dev: 1,
            ino: n as u64,
            size: 3,
            mode: 0o100444,
            mtime: n,
            mtime_ns: -1,
            ctime: i64::MAX,
            ctime_ns: i64::MIN,
        }
    }

    #[test]
    fn a_record_round_trips_and_anything_else_is_no_record() {
        let mut record = TreeRecord {
            whole_tree: true,
            ..TreeRecord::default()
        };
        for (i, p) in [".", "slipway", MANIFEST_PATH, "app/é", "app/x"]
            .iter()
            .enumerate()
        {
            record.files.insert(p.to_string(), id(i as i64));
        }
        let bytes = record.encode();
        assert_eq!(TreeRecord::decode(&bytes), Some(record.clone()));
        for cut in 0..bytes.len() {
            assert_eq!(TreeRecord::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        assert_eq!(TreeRecord::decode(&[bytes.as_slice(), &[0]].concat()), None);
        let mut other_format = bytes.clone();
        other_format[8] = 1;
        assert_eq!(TreeRecord::decode(&other_format), None);
        let mut bad_flag = bytes.clone();
        bad_flag[12] = 2;
        assert_eq!(TreeRecord::decode(&bad_flag), None);
        // A count that claims more than the bytes hold allocates nothing
        // for it and is refused.
        let mut huge = bytes[..13].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(TreeRecord::decode(&huge), None);
        // A path twice.
        let mut twice = bytes.clone();
        let count = u32::from_le_bytes(twice[13..17].try_into().unwrap());
        twice[13..17].copy_from_slice(&(count + 1).to_le_bytes());
        let first = 17..17 + 2 + 1 + IDENTITY_BYTES;
        twice.extend_from_slice(&bytes[first]);
        assert_eq!(TreeRecord::decode(&twice), None);
    }

    #[test]
    fn file_identities_pair_each_manifest_file_with_its_recorded_identity_only() {
        let tmp = tempfile::tempdir().expect("tmp");
        let layout = Layout::new(tmp.path().join("root"));
        let dir = layout.releases_dir().join("1.0.0-abc");
        fs::create_dir_all(dir.join("slipway")).expect("mkdir");
        fs::write(dir.join(MANIFEST_PATH), b"{}").expect("manifest");
        let manifest_id = FileIdentity::of_path(&dir.join(MANIFEST_PATH)).expect("stat");
        let manifest = Manifest {
            format: slipway_formats::manifest::MANIFEST_FORMAT,
            app: "bot".into(),
            version: "1.0.0".parse().expect("version"),
            channel: "stable".into(),
            created: 0,
            source: None,
            schema_version: 1,
            schema_min_compatible: 1,
            hooks: Default::default(),
            runtime_paths: vec![],
            probation: false,
            files: vec![
                slipway_formats::FileEntry::dir("app"),
                slipway_formats::FileEntry::file("app/a", false, 3, "a".repeat(64)),
                slipway_formats::FileEntry::file("app/b", false, 3, "b".repeat(64)),
                slipway_formats::FileEntry::file("app/c", false, 3, "c".repeat(64)),
            ],
        };
        let mut record = TreeRecord::default();
        record.files.insert("app".into(), id(1));
        record.files.insert("app/a".into(), id(2));
        record.files.insert("app/c".into(), id(4));
        record.files.insert("app/zz".into(), id(5));
        record.files.insert(MANIFEST_PATH.into(), manifest_id);
        save(&layout, &dir, &record).expect("save");
        assert_eq!(
            file_identities(&layout, &dir, &manifest),
            Some(vec![None, Some(id(2)), None, Some(id(4))]),
            "directories and unrecorded files get none"
        );
        // Paths out of order: the record is not used.
        let bytes = record.encode();
        let first = 17..17 + 2 + "app".len() + IDENTITY_BYTES;
        let second = first.end..first.end + 2 + "app/a".len() + IDENTITY_BYTES;
        let swapped = [
            &bytes[..17],
            &bytes[second.clone()],
            &bytes[first],
            &bytes[second.end..],
        ]
        .concat();
        assert!(TreeRecord::decode(&swapped).is_some(), "still a record");
        let file = record_file(&layout, &dir).expect("record file");
        fs::write(&file, &swapped).expect("write");
        assert_eq!(file_identities(&layout, &dir, &manifest), None);
        // The manifest is not the one the record was taken with.
        save(&layout, &dir, &record).expect("save");
        fs::remove_file(dir.join(MANIFEST_PATH)).expect("rm");
        fs::write(dir.join(MANIFEST_PATH), b"{ }").expect("manifest");
        assert_eq!(file_identities(&layout, &dir, &manifest), None);
    }

    #[test]
    fn a_carry_over_in_place_writes_what_the_decoded_record_would() {
        let mut record = TreeRecord {
            whole_tree: true,
            ..TreeRecord::default()
        };
        for (i, p) in [".", "app/a", "app/b", "app/é", MANIFEST_PATH]
            .iter()
            .enumerate()
        {
            record.files.insert(p.to_string(), id(i as i64 + 1));
        }
        let relinked = FileIdentity { ctime: 77, ..id(2) };
        let rewritten = FileIdentity {
            mtime: 77,
            ctime: 77,
            ..id(4)
        };
        let changes = HashMap::from([(id(2), relinked), (id(4), rewritten)]);
        let mut bytes = record.encode();
        assert!(carry_over_encoded(&mut bytes, &changes));
        let mut records = Records {
            records: vec![(PathBuf::from("r"), record.clone(), false)],
        };
        records.carry_over(&changes);
        assert_eq!(bytes, records.records[0].1.encode());
        let decoded = TreeRecord::decode(&bytes).expect("still a record");
        assert_eq!(decoded.files["app/a"], relinked);
        assert_eq!(decoded.files["app/é"], id(4), "only a ctime change");
        // Nothing to carry, or not a record: untouched.
        let mut again = record.encode();
        assert!(!carry_over_encoded(&mut again, &HashMap::new()));
        let mut cut = record.encode();
        cut.pop();
        let before = cut.clone();
        assert!(!carry_over_encoded(&mut cut, &changes));
        assert_eq!(cut, before);
    }

    #[test]
    fn only_a_ctime_change_is_carried_over() {
        let a = FileIdentity {
            dev: 1,
            ino: 2,
            size: 3,
            mode: 0o100444,
            mtime: 4,
            mtime_ns: 5,
            ctime: 6,
            ctime_ns: 7,
        };
        let relinked = FileIdentity { ctime: 9, ..a };
        let rewritten = FileIdentity {
            ctime: 9,
            mtime: 9,
            ..a
        };
        assert!(a.same_but_ctime(&relinked));
        assert!(!a.same_but_ctime(&rewritten));
        let mut files = BTreeMap::new();
        files.insert("app/x".to_string(), a);
        let mut records = Records {
            records: vec![(
                PathBuf::from("r"),
                TreeRecord {
                    files,
                    ..TreeRecord::default()
                },
                false,
            )],
        };
        records.carry_over(&HashMap::from([(a, rewritten)]));
        assert_eq!(records.records[0].1.files["app/x"], a);
        records.carry_over(&HashMap::from([(a, relinked)]));
        assert_eq!(records.records[0].1.files["app/x"], relinked);
        assert!(records.records[0].2);
    }
}

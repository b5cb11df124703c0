//! The entry policy: what a release's tar stream may hold, checked entry by
//! entry against the verified manifest, for every reader of an archive.
//!
//! The tar crate's `unpack` is never used (it skips `..` entries silently,
//! strips leading `/`, never checks symlink targets and writes unknown types
//! as files). The walk ([`super::walk_release`]) iterates the entries
//! itself and requires them to be exactly the manifest's, one to one and in
//! order:
//!
//! - the first entry is `slipway/manifest.json`, byte for byte the verified
//!   manifest;
//! - every path is UTF-8 and valid by [`crate::path`] (no `..`, no absolute
//!   path, no empty or over-long component);
//! - only regular files, directories and symlinks (no hard link, device,
//!   FIFO, GNU or PAX sparse file);
//! - no setuid, setgid or sticky bit, nothing group- or world-writable, and
//!   exactly the manifest's mode (symlinks included: 0777);
//! - mtime exactly the manifest's `created`, owner uid 0 and gid 0;
//! - exactly the manifest's size, and for symlinks its target (other entries
//!   have no link name);
//! - nothing after the end-of-archive blocks but zeros.
//!
//! Decompressed bytes are counted against what the manifest accounts for
//! (its files, its manifest, a few blocks per entry and the length of every
//! name), so a decompression bomb stops at the limit, and at every point the
//! tar reader may buffer at most a header's worth of data beyond the entry
//! being read.
//!
//! What happens to an accepted entry is the [`EntrySink`]'s business: the
//! installer's writes it into the staging directory, `slipway-pack
//! verify`'s only hashes it. Both compare file contents with
//! [`check_file_digest`].

use std::cell::Cell;
use std::collections::HashMap;
use std::io::{self, Read};
use std::rc::Rc;

use thiserror::Error;

use super::{describe_tar_type, is_window_error};
use crate::path::{validate_entry_path, PathError, MAX_PATH_BYTES};
use crate::{EntryType, FileEntry, Manifest, MANIFEST_PATH};

/// Decompressed bytes the tar reader may consume for one entry's headers
/// (the 512-byte header, PAX and GNU long-name records, padding) on top of
/// the longest path and link target the manifest lists.
const HEADER_ALLOWANCE: u64 = 16 * 1024;

/// Slack on the whole-archive decompression limit (end-of-archive blocks,
/// record padding).
const TOTAL_SLACK: u64 = 1024 * 1024;

/// Why a release's tar stream was refused. Every refusal names the entry
/// where there is one; the caller names the release.
#[derive(Debug, Error)]
pub enum EntryError {
    #[error("cannot read the archive: {0}")]
    Read(io::Error),
    #[error(
        "the archive changed after it was verified (its bytes are no longer the verified ones)"
    )]
    ArchiveChanged,
    #[error("not a readable zstd-compressed tar: {reason}")]
    Corrupt { reason: String },
    #[error("zstd window larger than 2^{} bytes; refused to bound memory (rebuild it with slipway-pack)", super::ZSTD_WINDOW_LOG_MAX)]
    WindowTooLarge,
    #[error("decompressed data runs past {limit} bytes (near entry {near:?}), more than its manifest accounts for: a decompression bomb or a corrupt archive")]
    DecompressionBomb { limit: u64, near: String },
    #[error("the first entry is {found:?}, not {MANIFEST_PATH}")]
    FirstEntryNotManifest { found: String },
    #[error("{MANIFEST_PATH} in the archive differs from the manifest that was verified")]
    ManifestChanged,
    #[error("entry path {path:?} is not UTF-8")]
    NonUtf8Path { path: String },
    #[error("entry refused: {0}")]
    BadPath(PathError),
    #[error(
        "entry {path:?} is a {kind}; only regular files, directories and symlinks are allowed"
    )]
    ForbiddenType { path: String, kind: String },
    #[error("entry {path:?} has mode {mode:04o}, which is {what}")]
    ForbiddenMode {
        path: String,
        mode: u32,
        what: &'static str,
    },
    #[error("entry {path:?} appears twice")]
    Duplicate { path: String },
    #[error("entry {path:?} is not in the manifest")]
    NotInManifest { path: String },
    #[error("the manifest lists {path:?} but the archive does not have it there")]
    Missing { path: String },
    #[error("entry {path:?} is a {found} but the manifest says {expected}")]
    TypeMismatch {
        path: String,
        expected: EntryType,
        found: String,
    },
    #[error("entry {path:?} has mode {found:04o} but the manifest says {expected:04o}")]
    ModeMismatch {
        path: String,
        expected: u32,
        found: u32,
    },
    #[error("entry {path:?} has mtime {found} but the manifest's created is {expected}")]
    MtimeMismatch {
        path: String,
        expected: u64,
        found: u64,
    },
    #[error("entry {path:?} is owned by uid {uid} gid {gid}, not 0 and 0")]
    OwnerNotRoot { path: String, uid: u64, gid: u64 },
    #[error("entry {path:?} is {found} bytes but the manifest says {expected}")]
    SizeMismatch {
        path: String,
        expected: u64,
        found: u64,
    },
    #[error("entry {path:?} has sha256 {found} but the manifest says {expected}")]
    HashMismatch {
        path: String,
        expected: String,
        found: String,
    },
    #[error("entry {path:?} links to {found:?} but the manifest says {expected:?}")]
    TargetMismatch {
        path: String,
        expected: String,
        found: String,
    },
    #[error("non-zero data after the end of the tar stream")]
    TrailingData,
    #[error("the delta leaves out {path:?}, but its base release has no file with sha256 {sha256} and mode {mode:04o}")]
    NotInBase {
        path: String,
        sha256: String,
        mode: u32,
    },
}

/// The files a delta archive may leave out: the content digest and mode
/// of every regular file of the release it starts from. A file the new
/// manifest lists with a digest and mode found here may be absent from
/// the delta's payload; the sink then takes it from the base release
/// ([`EntrySink::omitted`]). Paths do not matter: a file moved or copied
/// is still left out.
#[derive(Debug, Clone, Default)]
pub struct BaseFiles<'a> {
    /// Digest → the first mode a file with it has, and any others (nearly
    /// always none). Keys are borrowed from the base manifest: no copy of
    /// 20,000 digests per update.
    contents: HashMap<&'a str, (u32, Vec<u32>)>,
}

impl<'a> BaseFiles<'a> {
    /// The regular files of `base`, the manifest of the release a delta
    /// starts from.
    pub fn of(base: &'a Manifest) -> BaseFiles<'a> {
        let mut contents: HashMap<&'a str, (u32, Vec<u32>)> =
            HashMap::with_capacity(base.files.len());
        for e in base.files.iter().filter(|e| e.kind == EntryType::File) {
            if let Some(sha) = &e.sha256 {
                match contents.entry(sha.as_str()) {
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert((e.mode.0, Vec::new()));
                    }
                    std::collections::hash_map::Entry::Occupied(mut o) => {
                        let (first, others) = o.get_mut();
                        if *first != e.mode.0 && !others.contains(&e.mode.0) {
                            others.push(e.mode.0);
                        }
                    }
                }
            }
        }
        BaseFiles { contents }
    }

    /// Whether `entry` is a regular file whose digest and mode the base has.
    pub fn has(&self, entry: &FileEntry) -> bool {
        match (entry.kind, &entry.sha256) {
            (EntryType::File, Some(sha)) => {
                self.contents
                    .get(sha.as_str())
                    .is_some_and(|(first, others)| {
                        *first == entry.mode.0 || others.contains(&entry.mode.0)
                    })
            }
            _ => false,
        }
    }
}

/// A failure inside an [`EntrySink`]: reading the entry's content from the
/// archive (the walker says why: corrupt, over budget, window), or the
/// sink's own error.
#[derive(Debug)]
pub enum SinkError<E> {
    Read(io::Error),
    Sink(E),
}

impl<E> From<E> for SinkError<E> {
    fn from(e: E) -> Self {
        SinkError::Sink(e)
    }
}

/// Why a walk stopped: the archive was refused, or the sink failed.
#[derive(Debug)]
pub enum WalkError<E> {
    Entry(EntryError),
    Sink(E),
}

impl<E> From<EntryError> for WalkError<E> {
    fn from(e: EntryError) -> Self {
        WalkError::Entry(e)
    }
}

/// What a walk does with the entries it accepted.
///
/// Called on the walking thread, in archive order, only for entries that
/// passed every rule above; an error stops the walk and is returned as
/// [`WalkError::Sink`].
pub trait EntrySink {
    type Error;

    /// The manifest entry, already compared with the verified manifest.
    fn manifest(&mut self, bytes: &[u8]) -> Result<(), Self::Error>;

    /// The entry `manifest.files[index]`. `content` yields a file's bytes
    /// (nothing for a directory or a symlink): read it to its end; the
    /// walker then checks that it held the manifest's size. Hash it and
    /// compare with [`check_file_digest`]: the walker does not, so that the
    /// hash can run on another thread.
    fn entry(
        &mut self,
        index: usize,
        expected: &FileEntry,
        content: &mut impl Read,
    ) -> Result<(), SinkError<Self::Error>>;

    /// The entry `manifest.files[index]`, a regular file that a delta
    /// archive leaves out because its base release has a file with the
    /// same digest and mode ([`BaseFiles`]). The sink must take it from
    /// the base release and prove its content against `expected`'s
    /// digest (a trusted identity record, or a hash). Only walks of a
    /// delta call it; the default refuses, for sinks that cannot.
    fn omitted(
        &mut self,
        index: usize,
        expected: &FileEntry,
    ) -> Result<(), SinkError<Self::Error>> {
        let _ = index;
        Err(SinkError::Read(io::Error::other(format!(
            "{:?} is left out of a delta archive, and this reader has no base release to take it from",
            expected.path
        ))))
    }

    /// Whether to stop the walk early, as if it were done: the sink has
    /// failed elsewhere (another thread) and will report that failure
    /// itself, or it has read all it wanted (`slipway-pack` reading a
    /// delta's reference from a base archive). Asked after every entry.
    fn stopped(&self) -> bool {
        false
    }
}

/// The comparison of a file's content with its manifest entry, for every
/// sink: `digest` is the SHA-256 of exactly the bytes the walker handed out.
pub fn check_file_digest(expected: &FileEntry, digest: &[u8]) -> Result<(), EntryError> {
    let found = hex::encode(digest);
    let wanted = expected.sha256.as_deref().unwrap_or_default();
    if found != wanted {
        return Err(EntryError::HashMismatch {
            path: expected.path.clone(),
            expected: wanted.to_string(),
            found,
        });
    }
    Ok(())
}

/// How a walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Walked {
    /// Every entry and the end of the stream checked out.
    Complete,
    /// The sink asked to stop ([`EntrySink::stopped`]).
    Stopped,
}

/// The most decompressed bytes a release may produce: its files, its
/// manifest, five blocks per entry (header, PAX header and record, padding,
/// spare), the length of every path and target twice over (long PAX
/// records), and slack.
fn decompression_limit(manifest: &Manifest, manifest_len: u64) -> u64 {
    let entries = manifest.files.len() as u64 + 1;
    let names = manifest
        .files
        .iter()
        .map(|e| e.path.len() as u64 + e.target.as_ref().map_or(0, |t| t.len() as u64))
        .fold(0u64, u64::saturating_add);
    manifest
        .total_size()
        .saturating_add(manifest_len)
        .saturating_add((entries + 4).saturating_mul(5 * 512))
        .saturating_add(names.saturating_mul(2))
        .saturating_add(TOTAL_SLACK)
}

/// Counts decompressed bytes and refuses to hand out more than `limit`.
struct Budget {
    used: Cell<u64>,
    limit: Cell<u64>,
    total: u64,
    tripped: Cell<bool>,
}

impl Budget {
    /// Allows `more` bytes past what has been used so far, never past the
    /// whole-archive total.
    fn allow(&self, more: u64) {
        self.limit
            .set(self.used.get().saturating_add(more).min(self.total));
    }
}

struct BudgetReader<R> {
    inner: R,
    budget: Rc<Budget>,
}

impl<R: Read> Read for BudgetReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let b = &self.budget;
        let left = b.limit.get().saturating_sub(b.used.get());
        if left == 0 {
            // One probe byte tells a stream that ends here from one that goes on.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    b.tripped.set(true);
                    Err(io::Error::other("decompressed data exceeds the limit"))
                }
            };
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        b.used.set(b.used.get() + n as u64);
        Ok(n)
    }
}

/// A file's content as the sink sees it: at most the header's size, counted.
struct Content<'a, R> {
    inner: &'a mut R,
    left: u64,
    read: u64,
}

impl<R: Read> Read for Content<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        self.read += n as u64;
        Ok(n)
    }
}

/// Walks the decompressed tar stream of a verified release, checks every
/// entry by the policy in the module docs and hands each to `sink`.
///
/// `manifest` and `manifest_bytes` are the verified manifest, parsed and as
/// it is in the archive. With `base` (a delta archive), a regular file whose
/// digest and mode the base has may be absent from the stream: it is handed
/// to [`EntrySink::omitted`] in its place; everything else (directories,
/// symlinks, files the base lacks) must be there as in a full release.
/// Returns [`Walked::Stopped`] as soon as the sink asks to stop.
pub(crate) fn walk_entries<R: Read, S: EntrySink>(
    decompressed: R,
    manifest: &Manifest,
    manifest_bytes: &[u8],
    base: Option<&BaseFiles<'_>>,
    sink: &mut S,
) -> Result<Walked, WalkError<S::Error>> {
    let longest_name = manifest
        .files
        .iter()
        .map(|e| e.target.as_ref().map_or(0, String::len))
        .max()
        .unwrap_or(0) as u64
        + MAX_PATH_BYTES as u64;
    let header_allowance = HEADER_ALLOWANCE + 2 * longest_name;
    let total = decompression_limit(manifest, manifest_bytes.len() as u64);
    let budget = Rc::new(Budget {
        used: Cell::new(0),
        limit: Cell::new(0),
        total,
        tripped: Cell::new(false),
    });
    budget.allow(header_allowance);

    let mut tar = tar::Archive::new(BudgetReader {
        inner: decompressed,
        budget: Rc::clone(&budget),
    });

    let mut near = String::from("(start of archive)");
    let read_error = |e: io::Error, near: &str| {
        if budget.tripped.get() {
            EntryError::DecompressionBomb {
                limit: total,
                near: near.to_string(),
            }
        } else if is_window_error(&e) {
            EntryError::WindowTooLarge
        } else {
            EntryError::Corrupt {
                reason: format!("{e} (near entry {near:?})"),
            }
        }
    };
    let sink_error = |e: SinkError<S::Error>, near: &str| match e {
        SinkError::Read(e) => WalkError::Entry(read_error(e, near)),
        SinkError::Sink(e) => WalkError::Sink(e),
    };

    let mut next = 0usize;
    let mut seen_manifest = false;
    {
        let mut entries = tar.entries().map_err(|e| read_error(e, &near))?;
        loop {
            let mut entry = match entries.next() {
                None => break,
                Some(Ok(entry)) => entry,
                Some(Err(e)) => return Err(read_error(e, &near).into()),
            };
            let header_kind = entry.header().entry_type();
            let raw_path = entry.path_bytes().into_owned();
            near = String::from_utf8_lossy(&raw_path).into_owned();

            if !seen_manifest {
                if raw_path != MANIFEST_PATH.as_bytes() {
                    return Err(EntryError::FirstEntryNotManifest { found: near }.into());
                }
                if header_kind != tar::EntryType::Regular
                    || entry.size() != manifest_bytes.len() as u64
                {
                    return Err(EntryError::ManifestChanged.into());
                }
                check_header_mode(&near, entry.header(), EntryType::File)?;
                check_header_stamp(&near, entry.header(), manifest.created)?;
                budget.allow(entry.size() + header_allowance);
                let mut bytes = Vec::with_capacity(manifest_bytes.len());
                (&mut entry)
                    .take(manifest_bytes.len() as u64)
                    .read_to_end(&mut bytes)
                    .map_err(|e| read_error(e, &near))?;
                if bytes != manifest_bytes {
                    return Err(EntryError::ManifestChanged.into());
                }
                sink.manifest(&bytes).map_err(WalkError::Sink)?;
                seen_manifest = true;
                budget.allow(header_allowance);
                continue;
            }

            let path = checked_path(&raw_path, header_kind)?;
            let kind = allowed_type(path, header_kind)?;
            refuse_sparse_pax(path, &mut entry)?;
            let mode = check_header_mode(path, entry.header(), kind)?;
            let expected = match manifest.files.get(next) {
                Some(e) if e.path == path => e,
                other => match (base, later_position(manifest, next, path)) {
                    (Some(base), Some(at)) => {
                        for i in next..at {
                            if omit(manifest, i, base, sink, &sink_error)? == Walked::Stopped {
                                return Ok(Walked::Stopped);
                            }
                        }
                        next = at;
                        &manifest.files[at]
                    }
                    _ => return Err(misplaced(manifest, path, other).into()),
                },
            };
            let index = next;
            next += 1;
            compare_header(expected, kind, mode, &entry)?;
            check_header_stamp(&expected.path, entry.header(), manifest.created)?;

            let size = entry.size();
            budget.allow(size + header_allowance);
            let mut content = Content {
                inner: &mut entry,
                left: size,
                read: 0,
            };
            sink.entry(index, expected, &mut content)
                .map_err(|e| sink_error(e, &near))?;
            if sink.stopped() {
                // The sink reports what failed; nothing after it counts.
                return Ok(Walked::Stopped);
            }
            if content.read != size {
                return Err(EntryError::SizeMismatch {
                    path: expected.path.clone(),
                    expected: size,
                    found: content.read,
                }
                .into());
            }
            budget.allow(header_allowance);
        }
    }
    if !seen_manifest {
        return Err(EntryError::FirstEntryNotManifest {
            found: "(no entry at all)".to_string(),
        }
        .into());
    }
    match base {
        Some(base) => {
            for i in next..manifest.files.len() {
                if omit(manifest, i, base, sink, &sink_error)? == Walked::Stopped {
                    return Ok(Walked::Stopped);
                }
            }
        }
        None => {
            if let Some(missing) = manifest.files.get(next) {
                return Err(EntryError::Missing {
                    path: missing.path.clone(),
                }
                .into());
            }
        }
    }

    // Whatever follows the end-of-archive blocks must be zeros (record
    // padding), within the same budget.
    budget.allow(u64::MAX);
    let mut rest = tar.into_inner();
    near = "(end of archive)".to_string();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match rest.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(e, &near).into()),
        };
        if buf[..n].iter().any(|&b| b != 0) {
            return Err(EntryError::TrailingData.into());
        }
    }
    Ok(Walked::Complete)
}

/// The index of `path` in the manifest if it comes after `next` (the
/// manifest is sorted bytewise by path, so a binary search finds it).
fn later_position(manifest: &Manifest, next: usize, path: &str) -> Option<usize> {
    manifest
        .files
        .binary_search_by(|e| e.path.as_bytes().cmp(path.as_bytes()))
        .ok()
        .filter(|&at| at > next)
}

/// How a walk turns a sink's failure into its own error.
type SinkErrorMap<'a, E> = dyn Fn(SinkError<E>, &str) -> WalkError<E> + 'a;

/// Hands the manifest entry `index`, absent from a delta's stream, to the
/// sink as taken from the base: only a regular file whose digest and mode
/// the base release has may be left out.
fn omit<S: EntrySink>(
    manifest: &Manifest,
    index: usize,
    base: &BaseFiles<'_>,
    sink: &mut S,
    sink_error: &SinkErrorMap<'_, S::Error>,
) -> Result<Walked, WalkError<S::Error>> {
    let entry = &manifest.files[index];
    if entry.kind != EntryType::File {
        return Err(EntryError::Missing {
            path: entry.path.clone(),
        }
        .into());
    }
    if !base.has(entry) {
        return Err(EntryError::NotInBase {
            path: entry.path.clone(),
            sha256: entry.sha256.clone().unwrap_or_default(),
            mode: entry.mode.0,
        }
        .into());
    }
    sink.omitted(index, entry)
        .map_err(|e| sink_error(e, &entry.path))?;
    Ok(if sink.stopped() {
        Walked::Stopped
    } else {
        Walked::Complete
    })
}

/// An entry's path as the manifest would spell it: UTF-8, one trailing `/`
/// dropped from directories, and valid by the path rules.
fn checked_path(raw: &[u8], kind: tar::EntryType) -> Result<&str, EntryError> {
    let text = std::str::from_utf8(raw).map_err(|_| EntryError::NonUtf8Path {
        path: String::from_utf8_lossy(raw).into_owned(),
    })?;
    let text = match text.strip_suffix('/') {
        Some(stripped) if kind == tar::EntryType::Directory => stripped,
        _ => text,
    };
    validate_entry_path(text).map_err(EntryError::BadPath)?;
    Ok(text)
}

/// Maps a tar type to a manifest type, refusing everything else.
fn allowed_type(path: &str, kind: tar::EntryType) -> Result<EntryType, EntryError> {
    match kind {
        tar::EntryType::Regular => Ok(EntryType::File),
        tar::EntryType::Directory => Ok(EntryType::Dir),
        tar::EntryType::Symlink => Ok(EntryType::Symlink),
        other => Err(EntryError::ForbiddenType {
            path: path.to_string(),
            kind: describe_tar_type(other),
        }),
    }
}

/// PAX-format sparse files look like regular files with `GNU.sparse.*`
/// records; the tar crate does not expand them, so refuse them by name.
fn refuse_sparse_pax<R: Read>(path: &str, entry: &mut tar::Entry<'_, R>) -> Result<(), EntryError> {
    let sparse = match entry.pax_extensions() {
        Ok(Some(exts)) => exts
            .filter_map(Result::ok)
            .any(|ext| ext.key_bytes().starts_with(b"GNU.sparse")),
        _ => false,
    };
    if sparse {
        return Err(EntryError::ForbiddenType {
            path: path.to_string(),
            kind: "GNU sparse file (PAX)".to_string(),
        });
    }
    Ok(())
}

/// Reads the header's permission bits and refuses the dangerous ones by name.
fn check_header_mode(path: &str, header: &tar::Header, kind: EntryType) -> Result<u32, EntryError> {
    let mode = header.mode().map_err(|e| EntryError::Corrupt {
        reason: format!("entry {path:?}: {e}"),
    })? & 0o7777;
    let what = if mode & 0o4000 != 0 {
        Some("setuid")
    } else if mode & 0o2000 != 0 {
        Some("setgid")
    } else if mode & 0o1000 != 0 {
        Some("sticky")
    } else if kind == EntryType::Symlink {
        // A symlink's permission bits mean nothing on Linux (always 0777);
        // the comparison with the manifest's 0777 still applies.
        None
    } else if mode & 0o002 != 0 {
        Some("world-writable")
    } else if mode & 0o020 != 0 {
        Some("group-writable")
    } else {
        None
    };
    match what {
        Some(what) => Err(EntryError::ForbiddenMode {
            path: path.to_string(),
            mode,
            what,
        }),
        None => Ok(mode),
    }
}

/// The normalised header fields every entry carries: mtime = the
/// manifest's `created`, owner uid 0 and gid 0. A release built from the
/// same tree is then the same bytes, and nothing in one can name an owner
/// on the host.
fn check_header_stamp(path: &str, header: &tar::Header, created: u64) -> Result<(), EntryError> {
    let corrupt = |e: io::Error| EntryError::Corrupt {
        reason: format!("entry {path:?}: {e}"),
    };
    let mtime = header.mtime().map_err(corrupt)?;
    if mtime != created {
        return Err(EntryError::MtimeMismatch {
            path: path.to_string(),
            expected: created,
            found: mtime,
        });
    }
    let (uid, gid) = (
        header.uid().map_err(corrupt)?,
        header.gid().map_err(corrupt)?,
    );
    if uid != 0 || gid != 0 {
        return Err(EntryError::OwnerNotRoot {
            path: path.to_string(),
            uid,
            gid,
        });
    }
    Ok(())
}

/// The error for an entry that is not the next one the manifest lists.
fn misplaced(manifest: &Manifest, path: &str, expected: Option<&FileEntry>) -> EntryError {
    if path == MANIFEST_PATH {
        return EntryError::Duplicate {
            path: path.to_string(),
        };
    }
    let listed = manifest.entry(path).is_some();
    let already_passed = match expected {
        Some(e) => path.as_bytes() < e.path.as_bytes(),
        None => true,
    };
    if listed && already_passed {
        EntryError::Duplicate {
            path: path.to_string(),
        }
    } else if !listed {
        EntryError::NotInManifest {
            path: path.to_string(),
        }
    } else {
        EntryError::Missing {
            path: expected.map(|e| e.path.clone()).unwrap_or_default(),
        }
    }
}

/// Compares an entry's header with its manifest entry: type, mode, size and
/// link target (none for anything but a symlink).
fn compare_header<R: Read>(
    expected: &FileEntry,
    kind: EntryType,
    mode: u32,
    entry: &tar::Entry<'_, R>,
) -> Result<(), EntryError> {
    let path = || expected.path.clone();
    if kind != expected.kind {
        return Err(EntryError::TypeMismatch {
            path: path(),
            expected: expected.kind,
            found: kind.to_string(),
        });
    }
    if mode != expected.mode.0 {
        return Err(EntryError::ModeMismatch {
            path: path(),
            expected: expected.mode.0,
            found: mode,
        });
    }
    let size = entry.size();
    let expected_size = expected.size.unwrap_or(0);
    if size != expected_size {
        return Err(EntryError::SizeMismatch {
            path: path(),
            expected: expected_size,
            found: size,
        });
    }
    let found = entry.link_name_bytes().unwrap_or_default();
    let wanted = expected.target.as_deref().unwrap_or_default();
    if found.as_ref() != wanted.as_bytes() {
        return Err(EntryError::TargetMismatch {
            path: path(),
            expected: wanted.to_string(),
            found: String::from_utf8_lossy(&found).into_owned(),
        });
    }
    Ok(())
}

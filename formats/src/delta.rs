//! Delta archives: `deltas/<from-hex>-<to-hex>.tar.zst` (and `.minisig`),
//! which turn the release `from` into the release `to` on a host that runs
//! `from`.
//!
//! A delta's payload is a tar stream like a release's: first
//! `slipway/manifest.json` byte for byte the manifest of `to`, then every
//! entry of that manifest in order **except** the regular files whose
//! content digest and mode `from`'s manifest also lists (wherever the
//! path). Every entry it does hold is checked by the same entry policy as a
//! full release; a file it leaves out is accepted only if the base release
//! has that digest and mode ([`crate::archive::BaseFiles`]), and the host
//! takes it from the running release, proven by its identity record or a
//! hash ([`crate::archive::EntrySink::omitted`]).
//!
//! The tar stream is compressed as two zstd frames, each against a raw
//! reference prefix taken from the base release (`zstd --patch-from`):
//!
//! - frame A holds exactly the manifest entry (headers, data, padding),
//!   compressed against `from`'s `slipway/manifest.json`, byte for byte;
//! - frame B holds the rest of the tar stream, compressed against
//!   [`DeltaBase::reference`]: the base's contents of the files the delta
//!   carries that the base has at the same path ([`reference_files`]), so
//!   a file changed by a line travels as little more than that line.
//!
//! A reader needs the base to decompress a delta ([`DeltaBase`]). A base
//! that is not the one the delta was made against (a file changed on the
//! host) decompresses to other bytes, which the checks refuse: the
//! manifest against the SHA-256 the signature carries, every entry against
//! the signed manifest.
//!
//! A delta is signed like a release, with the trusted comment (fields
//! separated by tabs)
//!
//! ```text
//! slipway-delta app:bot channel:stable from:sha256:<hex> manifest:sha256:<hex> to:sha256:<hex> version:2.0.0
//! ```
//!
//! so a single delta file is authenticated on its own, and a signature for
//! one pair of releases is never accepted for another pair, nor as a
//! release signature (the kind word differs). `manifest` is the SHA-256 of
//! `to`'s manifest: what frame A must decompress to. The release id of
//! what a delta stages is its signed `to`: the id of the full archive that
//! holds the same manifest.

use std::io::{self, Read, Seek, SeekFrom};

use thiserror::Error;

use crate::archive::{
    authenticate, check_channel, check_signed_app, read_manifest_entry_with, ArchiveError,
    BaseFiles, VerifiedRelease,
};
use crate::signature::{TrustedComment, DELTA_COMMENT};
use crate::{EntryType, FileEntry, Manifest, ReleaseId, TrustedKeys};

/// The directory of a repository that holds the deltas.
pub const DELTAS_DIR: &str = "deltas";

/// The delta's file name: `<from-hex>-<to-hex>.tar.zst`.
pub fn delta_file_name(from: &ReleaseId, to: &ReleaseId) -> String {
    format!("{}-{}.tar.zst", from.hex(), to.hex())
}

/// The delta's signature file name: `<from-hex>-<to-hex>.tar.zst.minisig`.
pub fn delta_signature_file_name(from: &ReleaseId, to: &ReleaseId) -> String {
    format!("{}.minisig", delta_file_name(from, to))
}

/// The two release ids a delta's file name `<from-hex>-<to-hex>.tar.zst`
/// (or its `.minisig`) names, `None` for any other name: how a reader of
/// `deltas/` (an offline bundle's, say) tells a name a delta can have from
/// anything else. Only a name: [`verify_delta`] decides what the file is.
pub fn parse_delta_file_name(name: &str) -> Option<(ReleaseId, ReleaseId)> {
    let stem = name
        .strip_suffix(".tar.zst.minisig")
        .or_else(|| name.strip_suffix(".tar.zst"))?;
    let (from, to) = stem.split_once('-')?;
    let from = format!("sha256:{from}").parse::<ReleaseId>().ok()?;
    let to = format!("sha256:{to}").parse::<ReleaseId>().ok()?;
    (from != to).then_some((from, to))
}

/// The delta's path inside a repository: `deltas/<from-hex>-<to-hex>.tar.zst`.
pub fn delta_rel_path(from: &ReleaseId, to: &ReleaseId) -> String {
    format!("{DELTAS_DIR}/{}", delta_file_name(from, to))
}

/// The most bytes of base file content in the reference of a delta's
/// second frame ([`reference_files`]): it bounds what a host holds in
/// memory to decompress a delta.
pub const DELTA_REFERENCE_MAX: u64 = 32 * 1024 * 1024;

/// The regular files of `base` whose contents, concatenated in this order,
/// are the reference prefix of the second zstd frame of the delta from
/// `base` to `new`: in `new`'s order, every regular file the delta carries
/// (its digest and mode are not among `base`'s files) whose path is a
/// regular file in `base` too, stopping before the file that would take
/// the total of their sizes in `base` past [`DELTA_REFERENCE_MAX`].
pub fn reference_files<'b>(new: &Manifest, base: &'b Manifest) -> Vec<&'b FileEntry> {
    let left_out = BaseFiles::of(base);
    let mut total = 0u64;
    let mut files = Vec::new();
    for entry in new.files.iter().filter(|e| e.kind == EntryType::File) {
        if left_out.has(entry) {
            continue;
        }
        let Some(old) = base
            .entry(&entry.path)
            .filter(|e| e.kind == EntryType::File)
        else {
            continue;
        };
        let size = old.size.unwrap_or(0);
        if total.saturating_add(size) > DELTA_REFERENCE_MAX {
            break;
        }
        total += size;
        files.push(old);
    }
    files
}

/// Where a reader of a delta gets the base release's files: a host from
/// the running release's directory, the packager from the base archive.
pub trait BaseContents: Sync {
    /// The base release's content of `entry`, a regular file of its
    /// manifest; whatever it yields past `entry`'s size is not read.
    fn open_file(&self, entry: &FileEntry) -> io::Result<Box<dyn Read + '_>>;
}

/// What a reader of a delta has of the release it starts from: its
/// manifest, parsed and byte for byte (frame A's reference), and its files
/// (frame B's).
#[derive(Clone, Copy)]
pub struct DeltaBase<'a> {
    pub manifest: &'a Manifest,
    pub manifest_bytes: &'a [u8],
    pub contents: &'a dyn BaseContents,
}

impl DeltaBase<'_> {
    /// The reference prefix of the second frame of the delta to `new`: the
    /// contents of [`reference_files`], each exactly its size in the base
    /// manifest. A file that cannot be read or is short is zeros to its
    /// size, so that every other file keeps its offset; what it decompresses
    /// to is then refused by the entry's hash against the signed manifest.
    pub fn reference(&self, new: &Manifest) -> Vec<u8> {
        let files = reference_files(new, self.manifest);
        let total: u64 = files.iter().map(|e| e.size.unwrap_or(0)).sum();
        let mut reference = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for entry in files {
            let size = entry.size.unwrap_or(0);
            let end = reference.len() + usize::try_from(size).unwrap_or(0);
            if let Ok(content) = self.contents.open_file(entry) {
                let _ = content.take(size).read_to_end(&mut reference);
            }
            reference.resize(end, 0);
        }
        reference
    }
}

impl std::fmt::Debug for DeltaBase<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeltaBase")
            .field("app", &self.manifest.app)
            .field("version", &self.manifest.version)
            .field("manifest_bytes", &self.manifest_bytes.len())
            .finish_non_exhaustive()
    }
}

/// What the caller knows about a delta before verifying it. Every field
/// given is checked; `None` skips that check.
#[derive(Debug, Clone, Default)]
pub struct DeltaExpectations {
    /// The app this host runs.
    pub app: Option<String>,
    /// The channel this host follows.
    pub channel: Option<String>,
    /// The release the delta must start from: the one the host runs.
    pub from: Option<ReleaseId>,
    /// The release the delta must produce (the one the index offers).
    pub to: Option<ReleaseId>,
    /// The signed size from the channel index: exact when `sha256` is
    /// given too, else a cap.
    pub size: Option<u64>,
    /// The delta file's SHA-256 as the signed channel index lists it.
    pub sha256: Option<ReleaseId>,
}

/// Why a delta was refused beyond what refuses any archive.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DeltaError {
    #[error("trusted comment {comment:?} is not a slipway delta comment (a release archive's signature is not a delta's); sign deltas with slipway-pack delta")]
    NotDelta { comment: String },
    #[error("the delta's trusted comment {comment:?} {reason}")]
    Malformed { comment: String, reason: String },
    #[error("the delta starts from release {signed}, not from {expected} (the release this host runs): it cannot be applied here")]
    WrongBase {
        expected: ReleaseId,
        signed: ReleaseId,
    },
    #[error("the delta produces release {signed}, not {expected} (the release the index offers)")]
    WrongTarget {
        expected: ReleaseId,
        signed: ReleaseId,
    },
    #[error("the delta's trusted comment {comment:?} has no manifest field: the delta is of an earlier form (one zstd frame, changed files whole), which this slipway does not read; write it again with slipway-pack delta")]
    EarlierForm { comment: String },
    #[error("the manifest the delta decompresses to has sha256 {found}, but its signature says {signed}: it was made against another base than this one (the base release's slipway/manifest.json differs), or it is corrupt")]
    ManifestDigest { signed: ReleaseId, found: ReleaseId },
    #[error("the delta's manifest says {field} {manifest:?} but its signature says {signed:?}; it was built or signed wrongly")]
    ManifestDisagrees {
        field: String,
        manifest: String,
        signed: String,
    },
}

/// Verifies a delta archive and its detached signature: the same first
/// pass as [`crate::archive::verify_release`] (size cap, one streaming
/// pass for SHA-256, minisign's prehash and the [`crate::archive::Recheck`],
/// a prehashed signature by a key in `keys`), with the delta's own rules:
/// the file's SHA-256 is `expect.sha256`; the trusted comment is a
/// `slipway-delta` comment whose `from` and `to` are the expected ones and
/// which names the SHA-256 of `to`'s manifest; the first zstd frame,
/// decompressed against `base_manifest` (the base release's
/// `slipway/manifest.json`, byte for byte), holds as its only entry a
/// manifest with exactly that SHA-256, strict, and the comment is exactly
/// [`TrustedComment::for_delta`] of that manifest and the two ids.
///
/// The result's `id` is `to` and its `base` is `from`: walk it with
/// [`crate::archive::walk_delta`] and `from` as a [`DeltaBase`]. On success
/// `archive` is rewound to offset 0.
pub fn verify_delta<R: Read + Seek>(
    archive: &mut R,
    signature: &str,
    keys: &TrustedKeys,
    expect: &DeltaExpectations,
    base_manifest: &[u8],
) -> Result<VerifiedRelease, ArchiveError> {
    let exact = expect.sha256.is_some();
    let authentic = authenticate(archive, signature, keys, expect.size, exact, expect.sha256)?;
    let delta = |e: DeltaError| ArchiveError::Delta(e);
    let text = authentic.comment_text.clone();
    let comment = TrustedComment::parse(&text).map_err(|_| {
        delta(DeltaError::NotDelta {
            comment: text.clone(),
        })
    })?;
    if comment.kind != DELTA_COMMENT {
        return Err(delta(DeltaError::NotDelta { comment: text }));
    }
    let signed_id = |field: &str| -> Result<ReleaseId, ArchiveError> {
        let value = comment.field(field).map_err(ArchiveError::Signature)?;
        value.parse::<ReleaseId>().map_err(|_| {
            delta(DeltaError::Malformed {
                comment: text.clone(),
                reason: format!("has {field} {value:?}, which is not a release id"),
            })
        })
    };
    let from = signed_id("from")?;
    let to = signed_id("to")?;
    if let Some(expected) = expect.from {
        if expected != from {
            return Err(delta(DeltaError::WrongBase {
                expected,
                signed: from,
            }));
        }
    }
    if let Some(expected) = expect.to {
        if expected != to {
            return Err(delta(DeltaError::WrongTarget {
                expected,
                signed: to,
            }));
        }
    }
    if !comment.fields.contains_key("manifest") {
        return Err(delta(DeltaError::EarlierForm { comment: text }));
    }
    let signed_manifest = signed_id("manifest")?;
    check_signed_app(&comment, &to, expect.app.as_deref())?;
    archive
        .seek(SeekFrom::Start(0))
        .map_err(ArchiveError::Read)?;
    let manifest_bytes = read_manifest_entry_with(&mut *archive, Some(base_manifest))
        .map_err(|source| ArchiveError::ManifestEntry { id: to, source })?;
    let found = ReleaseId::of_bytes(&manifest_bytes);
    if found != signed_manifest {
        return Err(delta(DeltaError::ManifestDigest {
            signed: signed_manifest,
            found,
        }));
    }
    let manifest = Manifest::parse(&manifest_bytes)
        .map_err(|source| ArchiveError::Manifest { id: to, source })?;
    let version = manifest.version.to_string();
    let wanted = TrustedComment::for_delta(
        &manifest.app,
        &version,
        &manifest.channel,
        &from,
        &to,
        &found,
    );
    comment.require(&wanted, "the manifest").map_err(|m| {
        delta(DeltaError::ManifestDisagrees {
            manifest: wanted
                .fields
                .get(&m.field)
                .cloned()
                .unwrap_or_else(|| "(none)".into()),
            signed: comment
                .fields
                .get(&m.field)
                .cloned()
                .unwrap_or_else(|| "(none)".into()),
            field: m.field,
        })
    })?;
    check_channel(&manifest, &to, expect.channel.as_deref())?;
    archive
        .seek(SeekFrom::Start(0))
        .map_err(ArchiveError::Read)?;
    Ok(VerifiedRelease {
        id: to,
        base: Some(from),
        manifest,
        manifest_bytes,
        size: authentic.size,
        signer: authentic.signer,
        comment,
        recheck: authentic.recheck,
    })
}

/// Whether a signature's trusted comment is a delta's (`slipway-delta`):
/// how `slipway install FILE` tells a delta from a release before
/// verifying it. Only a hint: [`verify_delta`] decides.
pub fn is_delta_comment(comment: &str) -> bool {
    comment.split('\t').next() == Some(DELTA_COMMENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_and_nothing_else_parses() {
        let (a, b) = (ReleaseId::of_bytes(b"a"), ReleaseId::of_bytes(b"b"));
        assert_eq!(
            parse_delta_file_name(&delta_file_name(&a, &b)),
            Some((a, b))
        );
        assert_eq!(
            parse_delta_file_name(&delta_signature_file_name(&a, &b)),
            Some((a, b))
        );
        for bad in [
            format!("{}.tar.zst", a.hex()),
            format!("{}-{}.tar.zst", a.hex(), a.hex()),
            format!("{}-{}.tar", a.hex(), b.hex()),
            format!("{}-{}.tar.zst.sig", a.hex(), b.hex()),
            format!("{}-{}.tar.zst", a.hex().to_uppercase(), b.hex()),
            format!("{}-{}-{}.tar.zst", a.hex(), b.hex(), a.hex()),
            format!("{}-{}.tar.zst", &a.hex()[1..], b.hex()),
            "x-y.tar.zst".to_string(),
            String::new(),
        ] {
            assert_eq!(parse_delta_file_name(&bad), None, "{bad}");
        }
    }
}

//! Release archives (`<sha256>.tar.zst`): the one implementation of every
//! check that decides whether an archive is an authentic, well-formed
//! release. `slipway install` and `slipway-pack verify` both call it, on
//! the same bytes, in the same order:
//!
//! 1. [`verify_release`]: one streaming pass over the compressed file (size
//!    cap, SHA-256 = the release id, minisign's prehash, and a keyed BLAKE3
//!    [`Recheck`] of every byte), then the signature and its release
//!    comment, then the first tar entry: the manifest, decompressed under a
//!    cap and parsed strictly. Nothing is decompressed before the bytes are
//!    known to be authentic.
//! 2. [`walk_release`]: a second pass over the same descriptor, which must
//!    give the same bytes ([`Recheck`]); every tar entry is checked against
//!    the manifest by one entry policy ([`entries`]: path rules, type, mode,
//!    mtime, owner, size, link target, order, a decompression budget and the
//!    zstd window limit) and handed to an [`EntrySink`]: the installer's
//!    writes the files, [`check_release_contents`]'s only hashes them.
//!
//! Like the rest of this crate it opens nothing by path: the binaries open
//! the archive with `slipway_fs::open_regular` and pass the descriptor.

pub mod entries;
mod verify;
mod walk;

use std::io::{self, BufRead};

pub use entries::{check_file_digest, BaseFiles, EntryError, EntrySink, SinkError, WalkError};
pub(crate) use verify::{authenticate, check_channel, check_signed_app, read_manifest_entry_with};
pub use verify::{
    read_manifest_entry, verify_release, ArchiveError, Expectations, ManifestEntryError, Recheck,
    VerifiedRelease,
};
pub use walk::{check_delta_contents, check_release_contents, walk_delta, walk_release};

/// The largest zstd window accepted, as a power of two (128 MiB): it bounds
/// the decoder's memory. Releases are compressed with far smaller windows.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// The one way a release's zstd stream is opened: with the window limit.
///
/// Without `prefix`, every frame up to the end of `compressed` (a release).
/// With `prefix`, one frame compressed against those bytes as a raw
/// reference prefix (zstd's `ref_prefix`, what `zstd --patch-from` does):
/// a delta's frames ([`crate::delta`]). zstd uses a prefix for one frame
/// only, so that decoder stops at the end of its frame and `compressed` is
/// left just after it.
fn decoder<'a, R: BufRead>(
    compressed: R,
    prefix: Option<&'a [u8]>,
) -> io::Result<zstd::stream::read::Decoder<'a, R>> {
    let mut decoder = match prefix {
        None => zstd::stream::read::Decoder::with_buffer(compressed)?,
        Some(prefix) => {
            zstd::stream::read::Decoder::with_ref_prefix(compressed, prefix)?.single_frame()
        }
    };
    decoder.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
    Ok(decoder)
}

/// Whether a decoding error is zstd refusing a window over the limit.
fn is_window_error(e: &io::Error) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    text.contains("window") || text.contains("too much memory")
}

/// A tar entry type in words, for messages.
fn describe_tar_type(kind: tar::EntryType) -> String {
    match kind {
        tar::EntryType::Regular => "regular file".into(),
        tar::EntryType::Directory => "directory".into(),
        tar::EntryType::Symlink => "symlink".into(),
        tar::EntryType::Link => "hard link".into(),
        tar::EntryType::Char => "character device".into(),
        tar::EntryType::Block => "block device".into(),
        tar::EntryType::Fifo => "FIFO".into(),
        tar::EntryType::Continuous => "contiguous file".into(),
        tar::EntryType::GNUSparse => "GNU sparse file".into(),
        tar::EntryType::XGlobalHeader => "PAX global header".into(),
        tar::EntryType::XHeader => "PAX extended header".into(),
        tar::EntryType::GNULongName => "GNU long name header".into(),
        tar::EntryType::GNULongLink => "GNU long link header".into(),
        other => format!("unknown type {:?}", char::from(other.as_byte())),
    }
}

#[cfg(test)]
mod tests;

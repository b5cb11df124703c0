//! The offline bundle (`slipway-pack bundle`): a release repository cut
//! down to one channel, plus a checksum list that covers every file in it.
//!
//! ```text
//! <bundle>/README.txt                  for the operator: key fingerprint, the commands
//! <bundle>/SHA256SUMS                  `sha256sum -c` format, every file below
//! <bundle>/SHA256SUMS.minisig          optional: signed by the release key
//! <bundle>/channels/<channel>.json(.minisig)
//! <bundle>/releases/<sha256>.tar.zst(.minisig)
//! <bundle>/deltas/<from-hex>-<to-hex>.tar.zst(.minisig)   optional: the deltas the index lists
//! <bundle>/keys/<KEYID>.pub            informational (hosts trust their own config)
//! ```
//!
//! The index and the archives carry their own signatures, exactly as in a
//! repository, and a host checks them exactly as it does online. The
//! checksum list adds what a repository cannot: any change to any file of
//! the bundle (a key file, the README, an archive no host would pick) is
//! found, and with the signature it is found even if the list itself was
//! rewritten. The list is parsed strictly: one `<64 lowercase hex>  <path>`
//! line per file, paths sorted and unique, each under one of the bundle's
//! directories and checked by [`crate::path`]'s rules.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use thiserror::Error;

use crate::signature::TrustedComment;

/// The checksum list at the top of a bundle.
pub const SUMS_FILE: &str = "SHA256SUMS";
/// Its detached minisign signature.
pub const SUMS_SIGNATURE_FILE: &str = "SHA256SUMS.minisig";
/// The operator's instructions.
pub const README_FILE: &str = "README.txt";
/// The kind word of the trusted comment signed with [`SUMS_FILE`].
pub const BUNDLE_COMMENT: &str = "slipway-bundle";
/// The largest checksum list a reader accepts (about 10,000 files).
pub const MAX_SUMS_BYTES: u64 = 1024 * 1024;
/// The directories of a bundle whose every file must be listed.
pub const BUNDLE_DIRS: [&str; 4] = ["channels", "releases", "deltas", "keys"];

/// Why a checksum list was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SumsError {
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("the list is not UTF-8 text")]
    NotText,
    #[error("the list is empty")]
    Empty,
}

/// A parsed `SHA256SUMS`: relative path → SHA-256, sorted by path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BundleSums {
    entries: BTreeMap<String, [u8; 32]>,
}

impl BundleSums {
    /// An empty list.
    pub fn new() -> Self {
        BundleSums::default()
    }

    /// Adds (or replaces) the checksum of `path`; the path must pass
    /// [`check_bundle_path`].
    pub fn insert(&mut self, path: &str, sha256: [u8; 32]) -> Result<(), String> {
        check_bundle_path(path)?;
        self.entries.insert(path.to_string(), sha256);
        Ok(())
    }

    /// The checksum of `path`, if listed.
    pub fn get(&self, path: &str) -> Option<&[u8; 32]> {
        self.entries.get(path)
    }

    /// Every `(path, sha256)`, sorted by path.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8; 32])> {
        self.entries.iter().map(|(p, h)| (p.as_str(), h))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The file's bytes: `<hex>  <path>\n` per entry, sorted, as
    /// `sha256sum` writes and `sha256sum -c` reads them.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::new();
        for (path, hash) in &self.entries {
            let _ = writeln!(out, "{}  {path}", hex::encode(hash));
        }
        out.into_bytes()
    }

    /// Parses a list strictly: every line `<64 lowercase hex>  <path>`, LF
    /// endings, paths in byte order without repeats, each a valid bundle
    /// path.
    pub fn parse(bytes: &[u8]) -> Result<BundleSums, SumsError> {
        let text = std::str::from_utf8(bytes).map_err(|_| SumsError::NotText)?;
        let mut sums = BundleSums::new();
        let mut last: Option<&str> = None;
        for (i, line) in text.split_terminator('\n').enumerate() {
            let n = i + 1;
            let bad = |reason: &str| SumsError::Line {
                line: n,
                reason: reason.to_string(),
            };
            let (hash, path) = line
                .split_once("  ")
                .ok_or_else(|| bad("expected `<sha256 hex>  <path>`"))?;
            if hash.len() != 64 || !hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(bad("the checksum is not 64 lowercase hex digits"));
            }
            let mut digest = [0u8; 32];
            hex::decode_to_slice(hash, &mut digest).map_err(|_| bad("the checksum is not hex"))?;
            check_bundle_path(path).map_err(|r| bad(&format!("path {path:?}: {r}")))?;
            if let Some(prev) = last {
                if path <= prev {
                    return Err(bad(&format!(
                        "path {path:?} is repeated or out of order (after {prev:?})"
                    )));
                }
            }
            last = Some(path);
            sums.entries.insert(path.to_string(), digest);
        }
        if sums.entries.is_empty() {
            return Err(SumsError::Empty);
        }
        Ok(sums)
    }
}

/// Whether `path` (relative, `/`-separated) may appear in a bundle's
/// checksum list: [`README_FILE`], or `<dir>/<name>` for a `dir` of
/// [`BUNDLE_DIRS`] and a plain file name; under `deltas/`, only the names
/// a delta and its signature have
/// ([`crate::delta::parse_delta_file_name`]).
pub fn check_bundle_path(path: &str) -> Result<(), String> {
    if path == README_FILE {
        return Ok(());
    }
    let Some((dir, name)) = path.split_once('/') else {
        return Err(format!(
            "only {README_FILE} and files under {} belong in a bundle",
            BUNDLE_DIRS.join("/, ")
        ));
    };
    if !BUNDLE_DIRS.contains(&dir) {
        return Err(format!(
            "{dir:?} is not a bundle directory ({})",
            BUNDLE_DIRS.join(", ")
        ));
    }
    if name.contains('/') {
        return Err("nested directories are not part of a bundle".into());
    }
    if dir == crate::delta::DELTAS_DIR && crate::delta::parse_delta_file_name(name).is_none() {
        return Err(format!(
            "{name:?} is not a delta's name (<from-hex>-<to-hex>.tar.zst or its .minisig)"
        ));
    }
    crate::path::validate_entry_path(path).map_err(|e| e.to_string())
}

/// The largest `README.txt` a bundle may carry.
pub const MAX_README_BYTES: u64 = 64 * 1024;

/// The most bytes the bundle file `path` (relative to the bundle's top
/// directory) may hold, by what it is: the checksum list, its signature,
/// a channel index or its signature, a key file or rotation statement, the
/// README. `None` for a release archive (`releases/*.tar.zst`) or a delta
/// (`deltas/*.tar.zst`), whose size only the signed channel index knows; a
/// reader bounds those by the bundle file's own length. Applied to every member before it is written
/// anywhere, so a bundle cannot fill a disk with a member no check would
/// ever accept.
pub fn max_member_bytes(path: &str) -> Option<u64> {
    use crate::{MAX_METADATA_BYTES, MAX_SIGNATURE_BYTES};
    if path == SUMS_FILE {
        return Some(MAX_SUMS_BYTES);
    }
    if path == README_FILE {
        return Some(MAX_README_BYTES);
    }
    if path.ends_with(".minisig") {
        return Some(MAX_SIGNATURE_BYTES);
    }
    if (path.starts_with("releases/") || path.starts_with("deltas/")) && path.ends_with(".tar.zst")
    {
        return None;
    }
    // channels/*.json, keys/*.pub, keys/rotation-*.json and anything else.
    Some(MAX_METADATA_BYTES)
}

/// The trusted comment signed with a bundle's checksum list: the app, the
/// channel and the channel index version it carries.
pub fn bundle_comment(app: &str, channel: &str, index_version: u64) -> TrustedComment {
    let mut fields = BTreeMap::new();
    fields.insert("app".into(), app.into());
    fields.insert("channel".into(), channel.into());
    fields.insert("index".into(), index_version.to_string());
    TrustedComment {
        kind: BUNDLE_COMMENT.into(),
        fields,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_sha256sum_format() {
        let mut sums = BundleSums::new();
        sums.insert("releases/ab.tar.zst", [0xab; 32]).expect("ok");
        sums.insert("README.txt", [1; 32]).expect("ok");
        sums.insert("channels/stable.json", [2; 32]).expect("ok");
        let bytes = sums.to_bytes();
        let text = String::from_utf8(bytes.clone()).expect("text");
        assert!(text.starts_with(&format!("{}  README.txt\n", "01".repeat(32))));
        assert_eq!(text.lines().count(), 3);
        assert_eq!(BundleSums::parse(&bytes).expect("parse"), sums);
    }

    #[test]
    fn refuses_malformed_lists() {
        let h = "0".repeat(64);
        for bad in [
            String::new(),
            format!("{h} README.txt\n"),
            format!("{}  README.txt\n", "A".repeat(64)),
            format!("{}  README.txt\n", "0".repeat(63)),
            format!("{h}  ../etc/passwd\n"),
            format!("{h}  /etc/passwd\n"),
            format!("{h}  releases/../x\n"),
            format!("{h}  releases/a/b\n"),
            format!("{h}  other/x\n"),
            format!("{h}  SHA256SUMS\n"),
            format!("{h}  keys/b.pub\n{h}  keys/a.pub\n"),
            format!("{h}  keys/a.pub\n{h}  keys/a.pub\n"),
            format!("{h}  keys/a.pub\r\n"),
        ] {
            assert!(BundleSums::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(BundleSums::parse(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn deltas_are_listed_only_under_the_names_a_delta_has() {
        let (a, b) = (
            crate::ReleaseId::of_bytes(b"a"),
            crate::ReleaseId::of_bytes(b"b"),
        );
        let delta = crate::delta::delta_rel_path(&a, &b);
        assert_eq!(check_bundle_path(&delta), Ok(()));
        assert_eq!(check_bundle_path(&format!("{delta}.minisig")), Ok(()));
        for bad in [
            format!("deltas/{}", a.archive_file_name()),
            format!("deltas/{}-{}.tar.zst", a.hex(), a.hex()),
            "deltas/notes.txt".to_string(),
            "deltas/..".to_string(),
            format!("deltas/x/{}", crate::delta::delta_file_name(&a, &b)),
        ] {
            assert!(check_bundle_path(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_member_but_an_archive_has_a_format_cap() {
        assert_eq!(max_member_bytes(SUMS_FILE), Some(MAX_SUMS_BYTES));
        assert_eq!(
            max_member_bytes("channels/stable.json"),
            Some(crate::MAX_METADATA_BYTES)
        );
        assert_eq!(
            max_member_bytes("channels/stable.json.minisig"),
            Some(crate::MAX_SIGNATURE_BYTES)
        );
        assert_eq!(
            max_member_bytes("keys/ABCD.pub"),
            Some(crate::MAX_METADATA_BYTES)
        );
        assert_eq!(max_member_bytes("releases/ab.tar.zst"), None);
        let (a, b) = (
            crate::ReleaseId::of_bytes(b"a"),
            crate::ReleaseId::of_bytes(b"b"),
        );
        let delta = crate::delta::delta_rel_path(&a, &b);
        assert_eq!(max_member_bytes(&delta), None);
        assert_eq!(
            max_member_bytes(&format!("{delta}.minisig")),
            Some(crate::MAX_SIGNATURE_BYTES)
        );
    }

    #[test]
    fn comment_names_app_channel_and_index() {
        let c = bundle_comment("bot", "stable", 7);
        let text = c.to_string();
        assert_eq!(text, "slipway-bundle\tapp:bot\tchannel:stable\tindex:7");
        assert_eq!(TrustedComment::parse(&text).expect("parse"), c);
    }
}

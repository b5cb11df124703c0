//! Release ids: `sha256:` followed by the hex digest of the archive file.
//!
//! The id names the archive (`<hex>.tar.zst`), the directory the release
//! unpacks to (`<version>-<id12>`) and its entry in the channel index, so a
//! release is verified by the same value that finds it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// A release id: the SHA-256 digest of the archive file.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReleaseId([u8; 32]);

/// Why a string is not a release id.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{input:?} is not a release id: expected \"sha256:\" and 64 lowercase hex digits")]
pub struct ReleaseIdError {
    pub input: String,
}

impl ReleaseId {
    /// The id of a digest computed by the caller.
    pub fn from_digest(digest: [u8; 32]) -> Self {
        ReleaseId(digest)
    }

    /// The id of bytes held in memory (tests, small files).
    pub fn of_bytes(bytes: &[u8]) -> Self {
        ReleaseId(Sha256::digest(bytes).into())
    }

    /// The raw digest.
    pub fn digest(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 hex digits, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits, used in directory names and messages.
    pub fn short(&self) -> String {
        self.hex()[..12].to_string()
    }

    /// The archive's file name in a repository: `<hex>.tar.zst`.
    pub fn archive_file_name(&self) -> String {
        format!("{}.tar.zst", self.hex())
    }

    /// The detached signature's file name: `<hex>.tar.zst.minisig`.
    pub fn signature_file_name(&self) -> String {
        format!("{}.tar.zst.minisig", self.hex())
    }

    /// Parses either the canonical `sha256:<hex>` or bare hex, as an operator
    /// might paste from a file name. Only for command-line input: every file
    /// format uses the canonical form, parsed by [`FromStr`].
    pub fn parse_loose(input: &str) -> Result<Self, ReleaseIdError> {
        let hex_part = input.strip_prefix("sha256:").unwrap_or(input);
        Self::from_hex(hex_part).ok_or_else(|| ReleaseIdError {
            input: input.to_string(),
        })
    }

    fn from_hex(hex_part: &str) -> Option<Self> {
        if hex_part.len() != 64
            || !hex_part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).ok()?;
        Some(ReleaseId(out))
    }
}

impl FromStr for ReleaseId {
    type Err = ReleaseIdError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        input
            .strip_prefix("sha256:")
            .and_then(Self::from_hex)
            .ok_or_else(|| ReleaseIdError {
                input: input.to_string(),
            })
    }
}

impl fmt::Display for ReleaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for ReleaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReleaseId({self})")
    }
}

impl Serialize for ReleaseId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ReleaseId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_files() {
        let id = ReleaseId::of_bytes(b"hello");
        let text = id.to_string();
        assert!(text.starts_with("sha256:2cf24dba5fb0"));
        assert_eq!(text.parse::<ReleaseId>(), Ok(id));
        assert_eq!(id.short(), "2cf24dba5fb0");
        assert_eq!(id.archive_file_name(), format!("{}.tar.zst", id.hex()));
        assert_eq!(ReleaseId::parse_loose(&id.hex()), Ok(id));
    }

    #[test]
    fn refuses_malformed_ids() {
        let hex = ReleaseId::of_bytes(b"x").hex();
        for bad in [
            hex.clone(),                      // no prefix (strict form)
            format!("sha256:{}", &hex[..63]), // short
            format!("sha256:{}", hex.to_uppercase()),
            format!("sha512:{hex}"),
            format!("sha256:{hex}0"),
            "sha256:../../etc/passwd".to_string(),
        ] {
            assert!(bad.parse::<ReleaseId>().is_err(), "{bad}");
        }
    }
}

//! Key rotation: a statement, signed by a key hosts already trust, that
//! introduces a new release key (SPEC §6).
//!
//! ```text
//! <repo>/keys/rotation-<NEWKEYID>.json          the statement (this module)
//! <repo>/keys/rotation-<NEWKEYID>.json.minisig  signed by the introducing key
//! ```
//!
//! A host that meets an index signed by a key it does not trust looks for
//! `keys/rotation-<KEYID>.json` of that key id, checks that a key it already
//! trusts signed it (trusted comment `slipway-key-rotation` with the same
//! app, new key id and introducer), and from then on trusts the new key as
//! well. The statement is found by the new key's id alone, so a host needs
//! no directory listing and pays nothing for it until a rotation happens.
//!
//! A rotation adds trust, it never removes any: the old key stays trusted
//! as long as a host's configuration lists it. A learned key is trusted only
//! while the key that introduced it is (see `docs/trust.md`), so removing a
//! key from a host's configuration also drops every key it introduced.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::channel::Timestamp;
use crate::manifest::validate_name;
use crate::signature::{
    KeyId, PublicKey, SignatureError, SignatureFile, TrustedComment, TrustedKeys,
};

/// The `type` field of a rotation statement.
pub const ROTATION_TYPE: &str = "key-rotation";
/// The rotation statement format this crate reads and writes.
pub const ROTATION_FORMAT: u32 = 1;
/// The kind word of a rotation statement's trusted comment.
pub const ROTATION_COMMENT: &str = "slipway-key-rotation";
/// How many rotations a host follows in one go (A introduced B introduced
/// C...): a bound on the requests a hostile repository can make it send.
pub const MAX_ROTATION_CHAIN: usize = 8;

/// Why a rotation statement was refused.
#[derive(Debug, Error)]
pub enum RotationError {
    #[error("the statement is not valid JSON: {0}")]
    Json(String),
    #[error("the statement has type {found:?}, expected \"key-rotation\"")]
    WrongType { found: String },
    #[error("statement format {found} is not supported (this slipway reads format {ROTATION_FORMAT}); upgrade slipway")]
    UnsupportedFormat { found: u64 },
    #[error("the statement does not match format {ROTATION_FORMAT}: {0}")]
    Schema(String),
    #[error("the statement's field {field}: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("the statement introduces key {found}, but it was fetched for key {expected}")]
    WrongKey { expected: KeyId, found: KeyId },
    #[error("the statement is for app {found:?}, this host runs {expected:?}")]
    WrongApp { expected: String, found: String },
    #[error("signature: {0}")]
    Signature(#[from] SignatureError),
    #[error("the statement names key {named} as its introducer, but key {signer} signed it")]
    WrongSigner { named: String, signer: KeyId },
    #[error("the signed comment {comment:?} {reason}")]
    Comment { comment: String, reason: String },
}

/// `keys/rotation-<NEWKEYID>.json`: "key `introduced_by` vouches for
/// `new_key` as a release key of `app`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRotation {
    #[serde(rename = "type")]
    pub kind: String,
    pub format: u32,
    /// The app whose releases the new key signs.
    pub app: String,
    /// The new public key, base64 (`RW...`), as in a `.pub` file.
    pub new_key: String,
    /// Its key id, as minisign displays it (16 hex digits).
    pub new_key_id: String,
    /// The id of the key that signs this statement.
    pub introduced_by: String,
    /// When the statement was made.
    pub created: Timestamp,
}

impl KeyRotation {
    /// A statement by `introducer` that introduces `new_key` for `app`.
    pub fn new(app: &str, new_key: &PublicKey, introducer: KeyId, created: Timestamp) -> Self {
        KeyRotation {
            kind: ROTATION_TYPE.to_string(),
            format: ROTATION_FORMAT,
            app: app.to_string(),
            new_key: new_key.to_base64().to_string(),
            new_key_id: new_key.id().to_string(),
            introduced_by: introducer.to_string(),
            created,
        }
    }

    /// The file name of the statement that introduces `key`.
    pub fn file_name(key: KeyId) -> String {
        format!("rotation-{key}.json")
    }

    /// The file name of its signature.
    pub fn signature_file_name(key: KeyId) -> String {
        format!("rotation-{key}.json.minisig")
    }

    /// Parses and validates a statement: type and format first, then the
    /// strict parse, a valid new key whose id is `new_key_id`, a valid app
    /// name, and an introducer other than the new key.
    pub fn parse(bytes: &[u8]) -> Result<KeyRotation, RotationError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| RotationError::Json(e.to_string()))?;
        let kind = value
            .get("type")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        if kind != ROTATION_TYPE {
            return Err(RotationError::WrongType {
                found: kind.to_string(),
            });
        }
        let format = value.get("format").and_then(|v| v.as_u64()).unwrap_or(0);
        if format != u64::from(ROTATION_FORMAT) {
            return Err(RotationError::UnsupportedFormat { found: format });
        }
        let statement: KeyRotation =
            serde_json::from_value(value).map_err(|e| RotationError::Schema(e.to_string()))?;
        statement.validate()?;
        Ok(statement)
    }

    fn validate(&self) -> Result<(), RotationError> {
        validate_name(&self.app).map_err(|reason| RotationError::Field {
            field: "app",
            reason,
        })?;
        let key = self.public_key()?;
        if key.id().to_string() != self.new_key_id {
            return Err(RotationError::Field {
                field: "new_key_id",
                reason: format!(
                    "{:?} is not the id of new_key ({})",
                    self.new_key_id,
                    key.id()
                ),
            });
        }
        if self.introduced_by == self.new_key_id {
            return Err(RotationError::Field {
                field: "introduced_by",
                reason: "a key cannot introduce itself".into(),
            });
        }
        Ok(())
    }

    /// The new key.
    pub fn public_key(&self) -> Result<PublicKey, RotationError> {
        PublicKey::from_base64(&self.new_key).map_err(|e| RotationError::Field {
            field: "new_key",
            reason: e.to_string(),
        })
    }

    /// Canonical bytes: pretty JSON and a trailing newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// The trusted comment signed with the statement.
    pub fn comment(&self) -> TrustedComment {
        let mut comment = TrustedComment {
            kind: ROTATION_COMMENT.into(),
            fields: Default::default(),
        };
        comment.fields.insert("app".into(), self.app.clone());
        comment
            .fields
            .insert("new_key".into(), self.new_key_id.clone());
        comment
            .fields
            .insert("introduced_by".into(), self.introduced_by.clone());
        comment
    }
}

impl fmt::Display for KeyRotation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key {} introduced by key {} for app {} at {}",
            self.new_key_id, self.introduced_by, self.app, self.created
        )
    }
}

/// A rotation statement that verified: the new key, and the trusted key
/// that vouched for it.
#[derive(Debug, Clone)]
pub struct VerifiedRotation {
    pub statement: KeyRotation,
    pub new_key: PublicKey,
    pub introduced_by: KeyId,
}

/// Verifies a rotation statement fetched for key `expected`: its signature
/// by a key in `keys` over the exact bytes, a `slipway-key-rotation` comment
/// naming the same app, new key and introducer, the introducer being the
/// signer, the new key being `expected`, and (when known) the app this
/// host runs.
pub fn verify_rotation(
    bytes: &[u8],
    signature: &str,
    keys: &TrustedKeys,
    expected: KeyId,
    app: Option<&str>,
) -> Result<VerifiedRotation, RotationError> {
    let sig = SignatureFile::parse(signature)?;
    let signer = sig.verify_bytes(keys, bytes)?.id();
    let statement = KeyRotation::parse(bytes)?;
    let new_key = statement.public_key()?;
    if new_key.id() != expected {
        return Err(RotationError::WrongKey {
            expected,
            found: new_key.id(),
        });
    }
    if statement.introduced_by != signer.to_string() {
        return Err(RotationError::WrongSigner {
            named: statement.introduced_by.clone(),
            signer,
        });
    }
    let comment_text = sig.trusted_comment();
    let comment = TrustedComment::parse(comment_text).map_err(|e| RotationError::Comment {
        comment: comment_text.to_string(),
        reason: format!("is malformed ({e})"),
    })?;
    if comment != statement.comment() {
        return Err(RotationError::Comment {
            comment: comment_text.to_string(),
            reason: format!(
                "does not describe this statement (expected {:?})",
                statement.comment().to_string()
            ),
        });
    }
    if let Some(app) = app {
        if statement.app != app {
            return Err(RotationError::WrongApp {
                expected: app.to_string(),
                found: statement.app.clone(),
            });
        }
    }
    Ok(VerifiedRotation {
        statement,
        new_key,
        introduced_by: signer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUB: &str = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";

    fn statement() -> KeyRotation {
        let key = PublicKey::from_base64(PUB).expect("key");
        KeyRotation::new(
            "bot",
            &key,
            KeyId([1, 2, 3, 4, 5, 6, 7, 8]),
            Timestamp::parse("2026-01-01T00:00:00Z").expect("time"),
        )
    }

    #[test]
    fn round_trips_and_names_its_files() {
        let s = statement();
        assert_eq!(KeyRotation::parse(&s.to_bytes()).expect("parse"), s);
        let id = s.public_key().expect("key").id();
        assert_eq!(KeyRotation::file_name(id), format!("rotation-{id}.json"));
        let c = s.comment().to_string();
        assert!(c.starts_with("slipway-key-rotation\t"), "{c}");
        assert!(c.contains(&format!("new_key:{id}")), "{c}");
    }

    #[test]
    fn refuses_malformed_statements() {
        let mut s = statement();
        s.kind = "channel-index".into();
        assert!(matches!(
            KeyRotation::parse(&s.to_bytes()),
            Err(RotationError::WrongType { .. })
        ));
        let mut s = statement();
        s.new_key_id = "0000000000000000".into();
        assert!(matches!(
            KeyRotation::parse(&s.to_bytes()),
            Err(RotationError::Field {
                field: "new_key_id",
                ..
            })
        ));
        let mut s = statement();
        s.introduced_by = s.new_key_id.clone();
        assert!(KeyRotation::parse(&s.to_bytes()).is_err());
        let mut v = serde_json::to_value(statement()).expect("json");
        v["extra"] = serde_json::Value::Bool(true);
        assert!(matches!(
            KeyRotation::parse(&serde_json::to_vec(&v).expect("bytes")),
            Err(RotationError::Schema(_))
        ));
        assert!(KeyRotation::parse(b"not json").is_err());
    }

    #[test]
    fn an_unsigned_or_garbage_signature_never_verifies() {
        let s = statement();
        let keys = TrustedKeys::parse_all(&[PUB]).expect("keys");
        let id = s.public_key().expect("key").id();
        assert!(verify_rotation(&s.to_bytes(), "junk", &keys, id, Some("bot")).is_err());
    }
}

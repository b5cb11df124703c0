//! minisign public keys, detached signatures and slipway's trusted comments.
//!
//! Signatures are real minisign signatures in the prehashed (`ED`) mode, so
//! the stock `minisign -Vm FILE -P KEY` verifies every archive and index
//! slipway signs. Legacy (`Ed`, non-prehashed) signatures are refused: they
//! cannot be checked in a stream, and an installer never holds a release in
//! memory.
//!
//! Verification follows minisign exactly: an Ed25519 signature over the
//! BLAKE2b-512 of the data, then a global Ed25519 signature over that
//! signature followed by the trusted comment. The BLAKE2b pass is the cost
//! of checking a release (every byte of the archive goes through it), so it
//! runs on `blake2b_simd` (AVX2 when the CPU has it); Ed25519 is `ring`'s.
//!
//! The trusted comment, which minisign signs together with the data, carries
//! what the signature is about (`app`, `version`, `channel`, release id), so a
//! single archive copied to a USB stick is authenticated with nothing else.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use thiserror::Error;

use crate::id::ReleaseId;
use crate::MAX_SIGNATURE_BYTES;

/// A minisign key id, displayed as minisign does (16 uppercase hex digits of
/// the little-endian number).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.iter().rev() {
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl KeyId {
    /// Parses a key id as minisign displays it: 16 hex digits (either case).
    pub fn parse(text: &str) -> Result<KeyId, String> {
        let t = text.trim();
        if t.len() != 16 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "{text:?} is not a key id (16 hex digits, as `minisign` and slipway print them)"
            ));
        }
        u64::from_str_radix(t, 16)
            .map(|n| KeyId(n.to_le_bytes()))
            .map_err(|e| format!("{text:?} is not a key id: {e}"))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// Why a key or signature was refused.
#[derive(Debug, Error)]
pub enum SignatureError {
    #[error("public key {0:?} is not a minisign public key (expected the base64 line of a minisign .pub file, starting with \"RW\")")]
    BadPublicKey(String),
    #[error("signature file is malformed: {0}")]
    Malformed(String),
    #[error("signature file is {0} bytes; a minisign signature is under {MAX_SIGNATURE_BYTES}")]
    TooLarge(usize),
    #[error("signature is a legacy (non-prehashed) minisign signature; re-sign with a current minisign (without -l) or slipway-pack")]
    Legacy,
    #[error("signature is by key {key_id}, which this host does not trust (trusted: {trusted})")]
    UnknownKey { key_id: KeyId, trusted: String },
    #[error("signature by key {key_id} does not match the data: the file was altered or signed by a different key with the same id")]
    Invalid { key_id: KeyId },
    #[error("no trusted public keys are configured")]
    NoTrustedKeys,
    #[error("trusted comment {comment:?}: {reason}")]
    Comment { comment: String, reason: String },
}

/// A minisign public key.
#[derive(Clone)]
pub struct PublicKey {
    id: KeyId,
    base64: String,
    /// The raw Ed25519 public key.
    key: [u8; 32],
}

impl PublicKey {
    /// Parses the base64 form (`RW...`), as in a config file or `minisign -P`.
    pub fn from_base64(text: &str) -> Result<Self, SignatureError> {
        let text = text.trim();
        let bad = || SignatureError::BadPublicKey(text.to_string());
        let bin = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| bad())?;
        if bin.len() != 42 || &bin[0..2] != b"Ed" {
            return Err(bad());
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&bin[2..10]);
        let mut key = [0u8; 32];
        key.copy_from_slice(&bin[10..42]);
        Ok(PublicKey {
            id: KeyId(id),
            base64: text.to_string(),
            key,
        })
    }

    /// Parses either the base64 form or the contents of a minisign `.pub`
    /// file (an `untrusted comment:` line, then the base64 line).
    pub fn parse(text: &str) -> Result<Self, SignatureError> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        match lines.next() {
            Some(first) if first.starts_with("untrusted comment:") => match lines.next() {
                Some(key) => Self::from_base64(key),
                None => Err(SignatureError::BadPublicKey(text.to_string())),
            },
            Some(first) => Self::from_base64(first),
            None => Err(SignatureError::BadPublicKey(String::new())),
        }
    }

    /// The key id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The base64 form, as `minisign -P` takes it.
    pub fn to_base64(&self) -> &str {
        &self.base64
    }

    /// The contents of a minisign `.pub` file for this key.
    pub fn to_pub_file(&self) -> String {
        format!(
            "untrusted comment: minisign public key {}\n{}\n",
            self.id, self.base64
        )
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id)
    }
}

/// The set of public keys a host or command trusts.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys {
    keys: Vec<PublicKey>,
}

impl TrustedKeys {
    /// A set from keys already parsed.
    pub fn new(keys: Vec<PublicKey>) -> Self {
        TrustedKeys { keys }
    }

    /// Parses every key (base64 or `.pub` contents); the first bad one is an error.
    pub fn parse_all<S: AsRef<str>>(texts: &[S]) -> Result<Self, SignatureError> {
        let keys = texts
            .iter()
            .map(|t| PublicKey::parse(t.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustedKeys { keys })
    }

    /// Adds a key (e.g. one introduced by a rotation statement).
    pub fn add(&mut self, key: PublicKey) {
        if self.find(key.id()).is_none() {
            self.keys.push(key);
        }
    }

    /// The key with this id.
    pub fn find(&self, id: KeyId) -> Option<&PublicKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    fn describe(&self) -> String {
        if self.keys.is_empty() {
            return "none".to_string();
        }
        self.keys
            .iter()
            .map(|k| k.id.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A parsed detached minisign signature (`.minisig`).
#[derive(Clone)]
pub struct SignatureFile {
    key_id: KeyId,
    prehashed: bool,
    /// Ed25519 over the data's BLAKE2b-512 (or, legacy, the data itself).
    signature: [u8; 64],
    /// The text after `trusted comment: `.
    trusted_comment: String,
    /// Ed25519 over `signature` ‖ `trusted_comment`.
    global_signature: [u8; 64],
}

impl SignatureFile {
    /// Parses a `.minisig` file's text. Legacy signatures parse (so the error
    /// can say what they are) but never verify.
    pub fn parse(text: &str) -> Result<Self, SignatureError> {
        if text.len() > MAX_SIGNATURE_BYTES as usize {
            return Err(SignatureError::TooLarge(text.len()));
        }
        let mut lines = text.lines();
        let _untrusted = lines
            .next()
            .ok_or_else(|| SignatureError::Malformed("empty file".into()))?;
        let sig_line = lines
            .next()
            .ok_or_else(|| SignatureError::Malformed("no signature line".into()))?;
        // No trimming: whitespace in a base64 line is refused, as by the
        // stock minisign CLI and `minisign-verify` (the differential test
        // holds the two verifiers to the same verdict).
        let bin = base64::engine::general_purpose::STANDARD
            .decode(sig_line)
            .map_err(|_| SignatureError::Malformed("signature line is not base64".into()))?;
        if bin.len() != 74 {
            return Err(SignatureError::Malformed(format!(
                "signature line decodes to {} bytes, expected 74",
                bin.len()
            )));
        }
        let prehashed = match &bin[0..2] {
            b"ED" => true,
            b"Ed" => false,
            _ => {
                return Err(SignatureError::Malformed(
                    "unknown signature algorithm".into(),
                ))
            }
        };
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&bin[2..10]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&bin[10..74]);
        let trusted_comment = lines
            .next()
            .ok_or_else(|| SignatureError::Malformed("no trusted comment line".into()))?
            .strip_prefix("trusted comment: ")
            .ok_or_else(|| {
                SignatureError::Malformed(
                    "the third line does not start with \"trusted comment: \"".into(),
                )
            })?
            .to_string();
        let global = base64::engine::general_purpose::STANDARD
            .decode(
                lines
                    .next()
                    .ok_or_else(|| SignatureError::Malformed("no global signature line".into()))?,
            )
            .map_err(|_| SignatureError::Malformed("global signature line is not base64".into()))?;
        let global_signature: [u8; 64] = global.try_into().map_err(|g: Vec<u8>| {
            SignatureError::Malformed(format!(
                "global signature line decodes to {} bytes, expected 64",
                g.len()
            ))
        })?;
        Ok(SignatureFile {
            key_id: KeyId(key_id),
            prehashed,
            signature,
            trusted_comment,
            global_signature,
        })
    }

    /// The id of the key that made the signature (unverified until checked).
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Whether the signature is in the prehashed mode slipway requires.
    pub fn is_prehashed(&self) -> bool {
        self.prehashed
    }

    /// The trusted comment. Only meaningful once [`StreamCheck::finish`]
    /// succeeded: before that anyone could have written it.
    pub fn trusted_comment(&self) -> &str {
        &self.trusted_comment
    }

    /// Starts checking the signed data in a stream: feed every byte to
    /// [`StreamCheck::update`], then call [`StreamCheck::finish`].
    pub fn start_check<'a>(
        &'a self,
        keys: &'a TrustedKeys,
    ) -> Result<StreamCheck<'a>, SignatureError> {
        if keys.is_empty() {
            return Err(SignatureError::NoTrustedKeys);
        }
        if !self.prehashed {
            return Err(SignatureError::Legacy);
        }
        let key = keys
            .find(self.key_id)
            .ok_or_else(|| SignatureError::UnknownKey {
                key_id: self.key_id,
                trusted: keys.describe(),
            })?;
        Ok(StreamCheck {
            key,
            signature: self,
            prehash: Prehasher::new(),
        })
    }

    /// Verifies data held in memory (indexes and other small metadata).
    pub fn verify_bytes<'a>(
        &'a self,
        keys: &'a TrustedKeys,
        data: &[u8],
    ) -> Result<&'a PublicKey, SignatureError> {
        let mut check = self.start_check(keys)?;
        check.update(data);
        check.finish()
    }
}

/// A signature check in progress over streamed data.
pub struct StreamCheck<'a> {
    key: &'a PublicKey,
    signature: &'a SignatureFile,
    prehash: Prehasher,
}

impl<'a> StreamCheck<'a> {
    /// Feeds the next chunk of the signed data.
    pub fn update(&mut self, chunk: &[u8]) {
        self.prehash.update(chunk);
    }

    /// Finishes: the data and the trusted comment are authentic and signed by
    /// the returned key, or the error says why not.
    pub fn finish(self) -> Result<&'a PublicKey, SignatureError> {
        let prehash = self.prehash.finalize();
        let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, self.key.key);
        let sig = self.signature;
        let mut global = Vec::with_capacity(64 + sig.trusted_comment.len());
        global.extend_from_slice(&sig.signature);
        global.extend_from_slice(sig.trusted_comment.as_bytes());
        key.verify(&prehash, &sig.signature)
            .and_then(|()| key.verify(&global, &sig.global_signature))
            .map_err(|_| SignatureError::Invalid {
                key_id: self.key.id,
            })?;
        Ok(self.key)
    }
}

/// The BLAKE2b-512 prehash of minisign's `ED` signatures, computed in a
/// stream. The packager signs its output; the installer checks it.
#[derive(Clone)]
pub struct Prehasher(blake2b_simd::State);

impl Prehasher {
    /// A fresh hash.
    pub fn new() -> Self {
        Prehasher(blake2b_simd::Params::new().hash_length(64).to_state())
    }

    /// Feeds the next chunk of the signed data.
    pub fn update(&mut self, chunk: &[u8]) {
        self.0.update(chunk);
    }

    /// The 64-byte digest.
    pub fn finalize(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.0.finalize().as_bytes());
        out
    }
}

impl Default for Prehasher {
    fn default() -> Self {
        Self::new()
    }
}

/// What a slipway trusted comment says: a kind word, then `key:value` fields
/// separated by tabs, like minisign's own `timestamp:...\tfile:...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedComment {
    pub kind: String,
    pub fields: BTreeMap<String, String>,
}

/// The kind word of a release archive's trusted comment.
pub const RELEASE_COMMENT: &str = "slipway-release";
/// The kind word of a channel index's trusted comment.
pub const CHANNEL_COMMENT: &str = "slipway-channel";
/// The kind word of a delta archive's trusted comment.
pub const DELTA_COMMENT: &str = "slipway-delta";

impl TrustedComment {
    /// The comment signed with a release archive.
    pub fn for_release(app: &str, version: &str, channel: &str, id: &ReleaseId) -> Self {
        let mut fields = BTreeMap::new();
        fields.insert("app".into(), app.into());
        fields.insert("version".into(), version.into());
        fields.insert("channel".into(), channel.into());
        fields.insert("id".into(), id.to_string());
        TrustedComment {
            kind: RELEASE_COMMENT.into(),
            fields,
        }
    }

    /// The comment signed with a delta archive: it turns release `from`
    /// into release `to` (app, version and channel are `to`'s), and its
    /// first frame decompresses to the manifest whose SHA-256 is
    /// `manifest` (written like a release id, `sha256:<hex>`).
    pub fn for_delta(
        app: &str,
        version: &str,
        channel: &str,
        from: &ReleaseId,
        to: &ReleaseId,
        manifest: &ReleaseId,
    ) -> Self {
        let mut fields = BTreeMap::new();
        fields.insert("app".into(), app.into());
        fields.insert("version".into(), version.into());
        fields.insert("channel".into(), channel.into());
        fields.insert("from".into(), from.to_string());
        fields.insert("to".into(), to.to_string());
        fields.insert("manifest".into(), manifest.to_string());
        TrustedComment {
            kind: DELTA_COMMENT.into(),
            fields,
        }
    }

    /// The comment signed with a channel index.
    pub fn for_channel(app: &str, channel: &str, version: u64) -> Self {
        let mut fields = BTreeMap::new();
        fields.insert("app".into(), app.into());
        fields.insert("channel".into(), channel.into());
        fields.insert("version".into(), version.to_string());
        TrustedComment {
            kind: CHANNEL_COMMENT.into(),
            fields,
        }
    }

    /// Parses a comment; fields must be unique and free of tabs.
    pub fn parse(text: &str) -> Result<Self, SignatureError> {
        let err = |reason: &str| SignatureError::Comment {
            comment: text.to_string(),
            reason: reason.to_string(),
        };
        let mut parts = text.split('\t');
        let kind = parts.next().unwrap_or_default().to_string();
        if kind.is_empty() || kind.contains(':') {
            return Err(err("not a slipway comment (no kind word)"));
        }
        let mut fields = BTreeMap::new();
        for part in parts {
            let (k, v) = part
                .split_once(':')
                .ok_or_else(|| err("a field has no ':'"))?;
            if fields.insert(k.to_string(), v.to_string()).is_some() {
                return Err(err("a field is repeated"));
            }
        }
        Ok(TrustedComment { kind, fields })
    }

    /// A field's value, or an error naming the missing field.
    pub fn field(&self, key: &str) -> Result<&str, SignatureError> {
        self.fields
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| SignatureError::Comment {
                comment: self.to_string(),
                reason: format!("no {key:?} field"),
            })
    }
}

impl TrustedComment {
    /// Requires this (signed) comment to be exactly `expected`: the same
    /// kind, every field present with the same value, and no other field.
    /// The error names the first difference, with `what` naming where the
    /// expected values come from ("the index", "the manifest").
    ///
    /// This is the one comparison both binaries make between a signed
    /// comment and the document it signs, so `slipway-pack verify` and a
    /// host accept and refuse the same comments.
    pub fn require(&self, expected: &TrustedComment, what: &str) -> Result<(), CommentMismatch> {
        if self.kind != expected.kind {
            return Err(CommentMismatch {
                field: "kind".into(),
                reason: format!("is of kind {:?}, not {:?}", self.kind, expected.kind),
            });
        }
        for (field, value) in &expected.fields {
            match self.fields.get(field) {
                None => {
                    return Err(CommentMismatch {
                        field: field.clone(),
                        reason: format!("has no {field} field"),
                    })
                }
                Some(signed) if signed != value => {
                    return Err(CommentMismatch {
                        field: field.clone(),
                        reason: format!("says {field} {signed:?} but {what} says {value:?}"),
                    })
                }
                Some(_) => {}
            }
        }
        match self
            .fields
            .keys()
            .find(|k| !expected.fields.contains_key(*k))
        {
            Some(extra) => Err(CommentMismatch {
                field: extra.clone(),
                reason: format!("has a field {extra:?} that {what} does not account for"),
            }),
            None => Ok(()),
        }
    }
}

/// How a signed comment differs from the one expected
/// ([`TrustedComment::require`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{reason}")]
pub struct CommentMismatch {
    /// The field that differs (`kind` for the kind word).
    pub field: String,
    /// The difference, in words: "says version \"8\" but the index says \"7\"".
    pub reason: String,
}

/// Why a release signature's trusted comment was refused
/// ([`check_release_comment`], [`check_release_manifest`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReleaseCommentError {
    #[error("trusted comment {comment:?} is not a slipway release comment; sign releases with slipway-pack")]
    NotRelease { comment: String },
    #[error("the signature is for release {signed}, not {actual}: it belongs to another archive")]
    ForAnotherArchive { signed: String, actual: ReleaseId },
    #[error("the manifest says {field} {manifest:?} but the signature says {signed:?}; the archive was built or signed wrongly")]
    ManifestDisagrees {
        field: String,
        manifest: String,
        signed: String,
    },
}

/// The first check of a release's signed comment, made as soon as the
/// signature verified and before anything of the archive is decompressed:
/// it is a `slipway-release` comment and its `id` is this archive's.
pub fn check_release_comment(
    comment_text: &str,
    id: &ReleaseId,
) -> Result<TrustedComment, ReleaseCommentError> {
    let not_release = || ReleaseCommentError::NotRelease {
        comment: comment_text.to_string(),
    };
    let comment = TrustedComment::parse(comment_text).map_err(|_| not_release())?;
    if comment.kind != RELEASE_COMMENT {
        return Err(not_release());
    }
    let signed = comment.field("id").map_err(|_| not_release())?;
    if signed.parse::<ReleaseId>().ok().as_ref() != Some(id) {
        return Err(ReleaseCommentError::ForAnotherArchive {
            signed: signed.to_string(),
            actual: *id,
        });
    }
    Ok(comment)
}

/// The second check, once the manifest is read: the signed comment is
/// exactly the one `slipway-pack build` writes for this manifest and id
/// (app, version, channel, id, and no other field). The version is the
/// manifest's semver in its one canonical spelling, so a comment that
/// spells it differently is refused too.
pub fn check_release_manifest(
    comment: &TrustedComment,
    id: &ReleaseId,
    manifest: &crate::Manifest,
) -> Result<(), ReleaseCommentError> {
    let version = manifest.version.to_string();
    let expected = TrustedComment::for_release(&manifest.app, &version, &manifest.channel, id);
    comment.require(&expected, "the manifest").map_err(|m| {
        let manifest_value = expected.fields.get(&m.field).cloned().unwrap_or_default();
        ReleaseCommentError::ManifestDisagrees {
            signed: comment
                .fields
                .get(&m.field)
                .cloned()
                .unwrap_or_else(|| "(none)".into()),
            manifest: if manifest_value.is_empty() {
                "(none)".into()
            } else {
                manifest_value
            },
            field: m.field,
        }
    })
}

impl fmt::Display for TrustedComment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.kind)?;
        // Fields in a fixed order so signing is deterministic.
        for (k, v) in &self.fields {
            write!(f, "\t{k}:{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_parse_as_they_are_displayed() {
        let id = KeyId([1, 2, 3, 4, 5, 6, 7, 0xab]);
        let shown = id.to_string();
        assert_eq!(shown, "AB07060504030201");
        assert_eq!(KeyId::parse(&shown), Ok(id));
        assert_eq!(KeyId::parse(&shown.to_lowercase()), Ok(id));
        for bad in [
            "",
            "AB0706050403020",
            "AB070605040302011",
            "+B07060504030201",
            "XB07060504030201",
        ] {
            assert!(KeyId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_signed_comment_must_be_exactly_the_expected_one() {
        let want = TrustedComment::for_channel("bot", "stable", 7);
        want.require(&want, "the index").expect("same");
        let mut other = want.clone();
        other.fields.insert("version".into(), "8".into());
        let m = other.require(&want, "the index").expect_err("value");
        assert_eq!(m.field, "version");
        assert!(m.reason.contains("the index says \"7\""), "{m}");
        let mut extra = want.clone();
        extra.fields.insert("note".into(), "x".into());
        assert_eq!(
            extra.require(&want, "the index").expect_err("extra").field,
            "note"
        );
        let mut missing = want.clone();
        missing.fields.remove("app");
        assert_eq!(
            missing
                .require(&want, "the index")
                .expect_err("missing")
                .field,
            "app"
        );
    }

    #[test]
    fn a_release_comment_names_this_archive_and_exactly_its_manifest() {
        let id = ReleaseId::of_bytes(b"archive");
        let text = TrustedComment::for_release("bot", "1.2.0", "stable", &id).to_string();
        let comment = check_release_comment(&text, &id).expect("this archive");
        let other = ReleaseId::of_bytes(b"other");
        assert!(matches!(
            check_release_comment(&text, &other),
            Err(ReleaseCommentError::ForAnotherArchive { .. })
        ));
        let channel = TrustedComment::for_channel("bot", "stable", 1).to_string();
        assert!(matches!(
            check_release_comment(&channel, &id),
            Err(ReleaseCommentError::NotRelease { .. })
        ));
        let manifest = |version: &str| crate::Manifest {
            format: crate::manifest::MANIFEST_FORMAT,
            app: "bot".into(),
            version: version.parse().expect("version"),
            channel: "stable".into(),
            created: 0,
            source: None,
            schema_version: 1,
            schema_min_compatible: 1,
            hooks: crate::Hooks::default(),
            runtime_paths: Vec::new(),
            probation: false,
            files: Vec::new(),
        };
        check_release_manifest(&comment, &id, &manifest("1.2.0")).expect("matches");
        assert!(matches!(
            check_release_manifest(&comment, &id, &manifest("1.2.1")),
            Err(ReleaseCommentError::ManifestDisagrees { field, .. }) if field == "version"
        ));
        // One more field than `slipway-pack build` writes is refused too.
        let mut extra = comment.clone();
        extra.fields.insert("note".into(), "x".into());
        assert!(check_release_manifest(&extra, &id, &manifest("1.2.0")).is_err());
    }

    // A key and signature produced by the stock minisign CLI (prehashed):
    // `minisign -G -W`, then `minisign -Sm data -t 'slipway-release\t...'`.
    // Tests that need fresh keys use the CLI in tests/; these pin the parsing.
    const PUB: &str = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";
    const SIG: &str = "untrusted comment: signature from minisign secret key
RUQf6LRCGA9i559r3g7V1qNyJDApGip8MfqcadIgT9CuhV3EMhHoN1mGTkUidF/z7SrlQgXdy8ofjb7bNJJylDOocrCo8KLzZwo=
trusted comment: timestamp:1633700835\tfile:test\tprehashed
wLMDjy9FLAuxZ3q4NlEvkgtyhrr0gtTu6KC4KBJdITbbOeAi1zBIYo0v4iTgt8jJpIidRJnp94ABQkJAgAooBQ==";

    #[test]
    fn verifies_a_known_prehashed_signature() {
        let keys = TrustedKeys::parse_all(&[PUB]).expect("key");
        let sig = SignatureFile::parse(SIG).expect("sig");
        assert!(sig.is_prehashed());
        assert_eq!(sig.key_id(), keys.keys()[0].id());
        sig.verify_bytes(&keys, b"test").expect("valid");
        assert!(matches!(
            sig.verify_bytes(&keys, b"tesT"),
            Err(SignatureError::Invalid { .. })
        ));
        assert!(sig.trusted_comment().starts_with("timestamp:1633700835"));
    }

    #[test]
    fn whitespace_inside_a_base64_line_is_refused_as_minisign_does() {
        // Found by the differential test against `minisign-verify`.
        let keys = TrustedKeys::parse_all(&[PUB]).expect("key");
        let lines: Vec<&str> = SIG.lines().collect();
        for (line, edit) in [(1, "\t{}"), (1, "{} "), (3, " {}"), (3, "{}\t")] {
            let mut l: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
            l[line] = edit.replace("{}", lines[line]);
            let text = l.join("\n") + "\n";
            assert!(
                matches!(
                    SignatureFile::parse(&text),
                    Err(SignatureError::Malformed(_))
                ),
                "{text:?}"
            );
        }
        // CRLF line ends are still fine (both verifiers split lines the same).
        let crlf = SIG.replace('\n', "\r\n");
        SignatureFile::parse(&crlf)
            .expect("crlf")
            .verify_bytes(&keys, b"test")
            .expect("valid");
    }

    #[test]
    fn the_trusted_comment_is_covered_by_the_global_signature() {
        let keys = TrustedKeys::parse_all(&[PUB]).expect("key");
        let forged = SignatureFile::parse(&SIG.replace("file:test", "file:evil")).expect("parses");
        assert!(matches!(
            forged.verify_bytes(&keys, b"test"),
            Err(SignatureError::Invalid { .. })
        ));
        let mut lines: Vec<&str> = SIG.lines().collect();
        let other_global = "A".repeat(86) + "==";
        lines[3] = &other_global;
        let forged = SignatureFile::parse(&lines.join("\n")).expect("parses");
        assert!(matches!(
            forged.verify_bytes(&keys, b"test"),
            Err(SignatureError::Invalid { .. })
        ));
        let three_lines = SIG.lines().take(3).collect::<Vec<_>>().join("\n");
        assert!(matches!(
            SignatureFile::parse(&three_lines),
            Err(SignatureError::Malformed(_))
        ));
        let no_prefix = SIG.replace("trusted comment: ", "comment: ");
        assert!(matches!(
            SignatureFile::parse(&no_prefix),
            Err(SignatureError::Malformed(_))
        ));
    }

    #[test]
    fn refuses_unknown_keys_and_garbage() {
        let sig = SignatureFile::parse(SIG).expect("sig");
        let empty = TrustedKeys::default();
        assert!(matches!(
            sig.start_check(&empty),
            Err(SignatureError::NoTrustedKeys)
        ));
        assert!(PublicKey::from_base64("RWnotakey").is_err());
        assert!(SignatureFile::parse("junk").is_err());
        assert!(SignatureFile::parse(&"x".repeat(10_000)).is_err());
    }

    #[test]
    fn parses_pub_files_and_bare_keys() {
        let k = PublicKey::parse(&format!("untrusted comment: minisign public key\n{PUB}\n"))
            .expect("pub");
        assert_eq!(k.to_base64(), PUB);
        let again = PublicKey::parse(&k.to_pub_file()).expect("round trip");
        assert_eq!(again.id(), k.id());
        assert_eq!(k.id().to_string().len(), 16);
    }

    #[test]
    fn trusted_comments_round_trip() {
        let id = ReleaseId::of_bytes(b"a");
        let c = TrustedComment::for_release("bot", "1.2.0", "stable", &id);
        let text = c.to_string();
        assert!(text.starts_with("slipway-release\t"));
        let parsed = TrustedComment::parse(&text).expect("parse");
        assert_eq!(parsed, c);
        assert_eq!(parsed.field("id").expect("id"), id.to_string());
        assert!(parsed.field("nope").is_err());
        assert!(TrustedComment::parse("slipway-release\tapp:a\tapp:b").is_err());
    }
}

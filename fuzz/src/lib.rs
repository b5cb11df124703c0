//! What the fuzz targets share: the keys the seed corpus was signed with,
//! the input framing, and the signing key the staging target re-signs
//! every mutated archive with.
//!
//! Framing: a target that needs two inputs (a document and its `.minisig`)
//! splits its input at the first NUL byte, `DOCUMENT \0 SIGNATURE`. JSON
//! and signature text never contain NUL, so the seeds `make-seeds` writes
//! are exactly the real files joined by one NUL.

use std::path::PathBuf;
use std::sync::OnceLock;

use slipway_formats::TrustedKeys;

/// The test-only key pairs `make-seeds` generated (unencrypted; never
/// trusted anywhere but here): `key` signed the first releases, the index
/// before the rotation and the rotation statement; `key-b` was introduced
/// by it and signed the index after.
pub const KEY_PUB: &str = include_str!("../seeds/keys/key.pub");
pub const KEY_B_PUB: &str = include_str!("../seeds/keys/key-b.pub");

/// Both seed keys.
pub fn trusted_keys() -> &'static TrustedKeys {
    static KEYS: OnceLock<TrustedKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        TrustedKeys::parse_all(&[KEY_PUB, KEY_B_PUB]).unwrap_or_else(|e| {
            panic!("fuzz/seeds/keys/*.pub do not parse ({e}); run fuzz/make-seeds")
        })
    })
}

/// The first seed key only.
pub fn first_key() -> &'static TrustedKeys {
    static KEYS: OnceLock<TrustedKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        TrustedKeys::parse_all(&[KEY_PUB])
            .unwrap_or_else(|e| panic!("fuzz/seeds/keys/key.pub does not parse ({e})"))
    })
}

/// The secret half of `key`, to sign mutated archives with.
pub fn signing_key() -> &'static slipway_pack::SigningKey {
    static KEY: OnceLock<slipway_pack::SigningKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds/keys/key.key");
        slipway_pack::SigningKey::load(&path, None)
            .unwrap_or_else(|e| panic!("{}: {e}; run fuzz/make-seeds", path.display()))
    })
}

/// `DOCUMENT \0 REST`: the document and what follows the first NUL (empty
/// when there is none).
pub fn split_at_nul(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

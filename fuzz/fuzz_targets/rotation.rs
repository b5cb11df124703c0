//! `keys/rotation-<KEYID>.json` and its `.minisig`: the strict parse, then
//! `verify_rotation` with the first seed key trusted, for the key the
//! statement names and for the seed's second key. Input:
//! `STATEMENT \0 SIGNATURE`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slipway_formats::rotation::{verify_rotation, KeyRotation};
use slipway_fuzz::{first_key, split_at_nul, trusted_keys};

fuzz_target!(|data: &[u8]| {
    let (statement, signature) = split_at_nul(data);
    let parsed = KeyRotation::parse(statement).ok();
    if let Some(s) = &parsed {
        assert_eq!(
            KeyRotation::parse(&s.to_bytes()).ok().as_ref(),
            Some(s),
            "an accepted statement does not survive its round trip"
        );
        let _ = s.comment().to_string();
    }
    let Ok(signature) = std::str::from_utf8(signature) else {
        return;
    };
    let second = trusted_keys().keys()[1].id();
    let named = parsed
        .as_ref()
        .and_then(|s| s.public_key().ok())
        .map(|k| k.id());
    for expected in [Some(second), named].into_iter().flatten() {
        for app in [Some("bot"), None] {
            if let Ok(v) = verify_rotation(statement, signature, first_key(), expected, app) {
                assert_eq!(v.new_key.id(), expected);
                assert!(first_key().find(v.introduced_by).is_some());
            }
        }
    }
});

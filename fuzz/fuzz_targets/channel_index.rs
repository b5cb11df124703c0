//! `channels/<channel>.json` and its `.minisig`: the strict parse on the
//! bytes alone (so mutations reach it past any signature), then
//! `authenticate_index`, the one check both binaries run, with the seed
//! keys trusted. Input: `INDEX \0 SIGNATURE`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slipway_formats::channel::{authenticate_index, ChannelIndex, Timestamp};
use slipway_fuzz::{split_at_nul, trusted_keys};

fuzz_target!(|data: &[u8]| {
    let (index, signature) = split_at_nul(data);
    if let Ok(parsed) = ChannelIndex::parse(index) {
        let again = ChannelIndex::parse(&parsed.to_bytes())
            .unwrap_or_else(|e| panic!("an accepted index does not re-parse: {e}"));
        assert_eq!(again, parsed, "the canonical round trip changed it");
        let _ = parsed.check_identity("bot", "stable");
        let _ = parsed.is_expired(Timestamp::from_unix(0).expect("epoch"));
    }
    let Ok(signature) = std::str::from_utf8(signature) else {
        return;
    };
    if let Ok(auth) = authenticate_index(index, signature, trusted_keys()) {
        // Authenticated means signed by a trusted key, and parsed.
        assert!(trusted_keys().find(auth.signer).is_some());
        assert_eq!(ChannelIndex::parse(index).ok().as_ref(), Some(&auth.index));
    }
});

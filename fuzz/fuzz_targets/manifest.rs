//! `slipway/manifest.json`, the first thing read from inside an archive:
//! the strict parse and validation must return an error, never panic, and
//! whatever it accepts must survive its own canonical round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slipway_formats::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = Manifest::parse(data) {
        let again = Manifest::parse(&manifest.to_bytes())
            .unwrap_or_else(|e| panic!("an accepted manifest does not re-parse: {e}"));
        assert_eq!(again, manifest, "the canonical round trip changed it");
        let _ = manifest.total_size();
    }
});

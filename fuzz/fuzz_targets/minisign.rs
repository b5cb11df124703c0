//! The minisign signature parser and verifier, differentially: slipway's
//! (`slipway_formats::signature`) and the `minisign-verify` crate must give
//! the same verdict on every input (as in
//! formats/tests/minisign_differential.rs, where the two documented
//! differences are explained). Input: `DATA \0 SIGNATURE [\0 PUBLIC KEY]`;
//! without a key, each seed key is tried. Public key and trusted comment
//! parsers run on the text as well.
#![no_main]

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use slipway_formats::signature::{PublicKey, SignatureFile, TrustedComment, TrustedKeys};
use slipway_formats::MAX_SIGNATURE_BYTES;
use slipway_fuzz::{split_at_nul, KEY_B_PUB, KEY_PUB};

fn ours(public: &str, sig: &str, data: &[u8]) -> bool {
    let Ok(keys) = TrustedKeys::parse_all(&[public]) else {
        return false;
    };
    SignatureFile::parse(sig)
        .and_then(|s| s.verify_bytes(&keys, data).map(|_| ()))
        .is_ok()
}

fn theirs(public: &str, sig: &str, data: &[u8]) -> bool {
    let Ok(key) = minisign_verify::PublicKey::from_base64(public) else {
        return false;
    };
    let Ok(sig) = minisign_verify::Signature::decode(sig) else {
        return false;
    };
    key.verify(data, &sig, false).is_ok()
}

/// The base64 line of a `.pub` file (or the text itself).
fn key_line(text: &str) -> &str {
    text.lines()
        .find(|l| !l.starts_with("untrusted comment:") && !l.trim().is_empty())
        .unwrap_or(text)
        .trim()
}

fn compare(public: &str, sig: &str, data: &[u8]) {
    // A configured key's text is trimmed by slipway (it comes from a
    // configuration file); the comparison is about signatures and data.
    if public.trim() != public {
        return;
    }
    let alg_ed = base64::engine::general_purpose::STANDARD
        .decode(public.trim())
        .is_ok_and(|raw| raw.get(0..2) == Some(&b"Ed"[..]));
    let a = ours(public, sig, data);
    if sig.len() > MAX_SIGNATURE_BYTES as usize || !alg_ed {
        assert!(
            !a,
            "slipway took an oversized signature or a key that is not Ed"
        );
        return;
    }
    let b = theirs(public, sig, data);
    assert_eq!(a, b, "slipway says {a}, minisign-verify says {b}");
}

fuzz_target!(|input: &[u8]| {
    let (data, rest) = split_at_nul(input);
    let (sig, key) = split_at_nul(rest);
    let Ok(sig) = std::str::from_utf8(sig) else {
        return;
    };
    if let Ok(parsed) = SignatureFile::parse(sig) {
        let _ = TrustedComment::parse(parsed.trusted_comment());
    }
    if key.is_empty() {
        compare(key_line(KEY_PUB), sig, data);
        compare(key_line(KEY_B_PUB), sig, data);
    } else if let Ok(key) = std::str::from_utf8(key) {
        let _ = PublicKey::parse(key);
        compare(key, sig, data);
    }
});

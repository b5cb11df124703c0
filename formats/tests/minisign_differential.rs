//! Differential test of the signature verifier: slipway's own
//! (`slipway_formats::signature`, Ed25519 from `ring` over minisign's
//! BLAKE2b prehash) against the `minisign-verify` crate, on the same
//! mutated signatures, data and keys. Both must say "valid" or "invalid"
//! together, for every input.
//!
//! The inputs start from real prehashed signatures made here (the format
//! `slipway-pack` and `minisign -S` write), the stock CLI's own test vector
//! and a legacy (`Ed`) signature, and are mutated deterministically: bit
//! flips, byte replacements (with base64, whitespace and line-break
//! characters), insertions, deletions, truncations, line swaps and
//! duplications, CRLF line ends, trusted-comment edits, and changes to the
//! data and to the public key. The fuzz target `minisign_differential`
//! (fuzz/) runs the same oracle on coverage-guided inputs.
//!
//! Two documented differences are normalised, both where slipway is the
//! stricter one: it refuses a signature file over `MAX_SIGNATURE_BYTES`
//! (4 KiB) before parsing it, and a public key whose algorithm is not `Ed`
//! (as the stock minisign CLI does; `minisign-verify` also takes `ED`
//! there). Such inputs must be refused by slipway and are not compared.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use base64::Engine;
use slipway_formats::signature::{SignatureFile, TrustedKeys};
use slipway_formats::MAX_SIGNATURE_BYTES;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The stock minisign CLI's test vector (also in `signature.rs`): key, and
/// the signature of the 4 bytes `test`.
const CLI_PUB: &str = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";
const CLI_SIG: &str = "untrusted comment: signature from minisign secret key
RUQf6LRCGA9i559r3g7V1qNyJDApGip8MfqcadIgT9CuhV3EMhHoN1mGTkUidF/z7SrlQgXdy8ofjb7bNJJylDOocrCo8KLzZwo=
trusted comment: timestamp:1633700835\tfile:test\tprehashed
wLMDjy9FLAuxZ3q4NlEvkgtyhrr0gtTu6KC4KBJdITbbOeAi1zBIYo0v4iTgt8jJpIidRJnp94ABQkJAgAooBQ==
";

/// A minisign key pair from a fixed seed, signing as `slipway-pack` does.
struct Signer {
    pair: ring::signature::Ed25519KeyPair,
    keynum: [u8; 8],
}

impl Signer {
    fn new(seed: u8) -> Signer {
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[seed; 32])
            .expect("ed25519 seed");
        Signer {
            pair,
            keynum: [seed, 1, 2, 3, 4, 5, 6, 7],
        }
    }

    fn public_b64(&self) -> String {
        use ring::signature::KeyPair;
        let mut raw = b"Ed".to_vec();
        raw.extend_from_slice(&self.keynum);
        raw.extend_from_slice(self.pair.public_key().as_ref());
        B64.encode(raw)
    }

    /// A `.minisig`: prehashed (`ED`, BLAKE2b-512 of the data) or legacy.
    fn sign(&self, data: &[u8], trusted_comment: &str, prehashed: bool) -> String {
        let hash = blake2b_simd::Params::new().hash_length(64).hash(data);
        let (alg, signed): (&[u8], &[u8]) = if prehashed {
            (b"ED", hash.as_bytes())
        } else {
            (b"Ed", data)
        };
        let signature = self.pair.sign(signed);
        let mut line = alg.to_vec();
        line.extend_from_slice(&self.keynum);
        line.extend_from_slice(signature.as_ref());
        let mut global = signature.as_ref().to_vec();
        global.extend_from_slice(trusted_comment.as_bytes());
        format!(
            "untrusted comment: signature from slipway-pack secret key\n{}\ntrusted comment: {}\n{}\n",
            B64.encode(line),
            trusted_comment,
            B64.encode(self.pair.sign(&global).as_ref())
        )
    }
}

/// slipway's verdict.
fn ours(public: &str, sig: &str, data: &[u8]) -> bool {
    let Ok(keys) = TrustedKeys::parse_all(&[public]) else {
        return false;
    };
    SignatureFile::parse(sig)
        .and_then(|s| s.verify_bytes(&keys, data).map(|_| ()))
        .is_ok()
}

/// `minisign-verify`'s verdict (legacy signatures not allowed, as in
/// slipway).
fn theirs(public: &str, sig: &str, data: &[u8]) -> bool {
    let Ok(key) = minisign_verify::PublicKey::from_base64(public) else {
        return false;
    };
    let Ok(sig) = minisign_verify::Signature::decode(sig) else {
        return false;
    };
    key.verify(data, &sig, false).is_ok()
}

/// Runs both and requires the same verdict; returns it.
fn same_verdict(public: &str, sig: &str, data: &[u8]) -> bool {
    let key_alg_ed = B64
        .decode(public.trim())
        .is_ok_and(|raw| raw.get(0..2) == Some(&b"Ed"[..]));
    if sig.len() > MAX_SIGNATURE_BYTES as usize || !key_alg_ed {
        assert!(
            !ours(public, sig, data),
            "slipway took an oversized signature or a key that is not Ed"
        );
        return false;
    }
    let (a, b) = (ours(public, sig, data), theirs(public, sig, data));
    assert_eq!(
        a, b,
        "verdicts differ: slipway {a}, minisign-verify {b}\nkey {public:?}\nsignature {sig:?}\ndata {data:?}"
    );
    a
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Characters a mutation writes: base64's alphabet edges, padding,
/// whitespace, line breaks, the comment prefix's punctuation, NUL, UTF-8.
const ALPHABET: &[&str] = &[
    "A",
    "Q",
    "g",
    "w",
    "/",
    "+",
    "=",
    "==",
    " ",
    "\t",
    "\r",
    "\n",
    "\r\n",
    ":",
    "-",
    "_",
    "\0",
    "é",
    "trusted comment: ",
    "untrusted comment: ",
];

/// One mutation of a text, always valid UTF-8 (both verifiers take `&str`).
fn mutate_text(rng: &mut Rng, text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let at = rng.below(chars.len() + 1);
    let pick = ALPHABET[rng.below(ALPHABET.len())];
    let s: String = match rng.below(10) {
        // Flip one bit of an ASCII character (stays ASCII).
        0 => chars
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                if i == at && c.is_ascii() {
                    char::from((c as u8) ^ (1 << rng.below(7)))
                } else {
                    c
                }
            })
            .collect(),
        1 => {
            let mut c = chars.clone();
            if at < c.len() {
                c.remove(at);
            }
            c.into_iter().collect()
        }
        2 => {
            let (a, b) = chars.split_at(at);
            format!(
                "{}{pick}{}",
                a.iter().collect::<String>(),
                b.iter().collect::<String>()
            )
        }
        3 => {
            let (a, b) = chars.split_at(at);
            let rest: String = b.iter().skip(1).collect();
            format!("{}{pick}{rest}", a.iter().collect::<String>())
        }
        4 => chars[..at].iter().collect(),
        5 => {
            let mut lines: Vec<&str> = text.split('\n').collect();
            let (i, j) = (rng.below(lines.len()), rng.below(lines.len()));
            lines.swap(i, j);
            lines.join("\n")
        }
        6 => {
            let mut lines: Vec<&str> = text.split('\n').collect();
            let i = rng.below(lines.len());
            let l = lines[i];
            lines.insert(i, l);
            lines.join("\n")
        }
        7 => text.replace('\n', "\r\n"),
        8 => {
            // Edit the end of one line (trailing whitespace, a changed
            // comment, a truncated base64 line).
            let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
            let i = rng.below(lines.len());
            match rng.below(3) {
                0 => lines[i].push_str(pick),
                1 => {
                    lines[i].pop();
                }
                _ => lines[i] = format!("{pick}{}", lines[i]),
            }
            lines.join("\n")
        }
        _ => format!("{text}{pick}"),
    };
    s
}

fn mutate_data(rng: &mut Rng, data: &[u8]) -> Vec<u8> {
    let mut d = data.to_vec();
    match rng.below(4) {
        0 if !d.is_empty() => {
            let i = rng.below(d.len());
            d[i] ^= 1 << rng.below(8);
        }
        1 => d.push(rng.next() as u8),
        2 => {
            d.pop();
        }
        _ => d.insert(rng.below(d.len() + 1), rng.next() as u8),
    }
    d
}

/// Mutates the public key's bytes (algorithm, key id or key), re-encoded.
fn mutate_key(rng: &mut Rng, public: &str) -> String {
    let mut raw = B64.decode(public).expect("key base64");
    let i = rng.below(raw.len());
    raw[i] ^= 1 << rng.below(8);
    B64.encode(raw)
}

#[test]
fn both_verifiers_agree_on_the_unmutated_signatures() {
    assert!(same_verdict(CLI_PUB, CLI_SIG, b"test"));
    let signer = Signer::new(7);
    let sig = signer.sign(
        b"data",
        "slipway-channel\tapp:bot\tchannel:stable\tversion:7",
        true,
    );
    assert!(same_verdict(&signer.public_b64(), &sig, b"data"));
    // A legacy signature is refused by both.
    let legacy = signer.sign(b"data", "legacy", false);
    assert!(!same_verdict(&signer.public_b64(), &legacy, b"data"));
    // Another key's signature is refused by both.
    assert!(!same_verdict(&Signer::new(8).public_b64(), &sig, b"data"));
}

#[test]
fn both_verifiers_agree_on_mutated_signatures_data_and_keys() {
    let signer = Signer::new(7);
    let other = Signer::new(9);
    let empty_comment = signer.sign(b"", "", true);
    let cases: Vec<(String, String, Vec<u8>)> = vec![
        (CLI_PUB.into(), CLI_SIG.into(), b"test".to_vec()),
        (
            signer.public_b64(),
            signer.sign(
                b"{\"type\":\"channel-index\"}\n",
                "slipway-channel\tapp:bot\tchannel:stable\tversion:1",
                true,
            ),
            b"{\"type\":\"channel-index\"}\n".to_vec(),
        ),
        (signer.public_b64(), empty_comment, Vec::new()),
        (
            other.public_b64(),
            other.sign(&[0u8; 300], "é unicode\tcomment", true),
            vec![0u8; 300],
        ),
        (
            signer.public_b64(),
            signer.sign(b"legacy", "legacy", false),
            b"legacy".to_vec(),
        ),
    ];
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let (mut valid, mut total) = (0u32, 0u32);
    for round in 0..30_000u32 {
        let (public, sig, data) = &cases[round as usize % cases.len()];
        let (mut public, mut sig, mut data) = (public.clone(), sig.clone(), data.clone());
        // One to three mutations, mostly of the signature.
        for _ in 0..=rng.below(3) {
            match rng.below(10) {
                0 => data = mutate_data(&mut rng, &data),
                1 => public = mutate_key(&mut rng, &public),
                _ => sig = mutate_text(&mut rng, &sig),
            }
        }
        total += 1;
        if same_verdict(&public, &sig, &data) {
            valid += 1;
        }
    }
    // Some mutations keep a signature valid (a changed untrusted comment,
    // CRLF line ends, a trailing line), most do not: both sides are used.
    assert!(valid > 100 && valid < total / 2, "{valid} of {total} valid");
}

//! SHA-256 and BLAKE2b-512 throughput of the implementations slipway-pack
//! uses (`sha2`, and `blake2b_simd` through slipway's `Prehasher`), in process, for `bench/build.sh` and
//! docs/benchmarks.md:
//!
//! ```sh
//! cargo run --release -p slipway-pack --example hash_speed -- [FILE]
//! ```
//!
//! Prints one line per measurement: the best of five passes over 256 MiB in
//! memory, and, given FILE, the best of three passes reading FILE through
//! 256 KiB buffers as `slipway-pack build` does (warm page cache). SPEC §8
//! asks for SHA-256 at 1 GB/s or more; `sha2` picks SHA-NI at run time, and
//! under 0.5 GB/s means its software path.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a measuring tool run by hand: a panic is its error report

use std::fs::File;
use std::io::Read;
use std::time::Instant;

use sha2::Digest;

const MIB: usize = 1024 * 1024;

fn main() {
    let file = std::env::args_os().nth(1);
    let mut data = vec![0u8; 256 * MIB];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let sha = best_of(5, data.len(), || {
        let mut h = sha2::Sha256::new();
        for c in data.chunks(256 * 1024) {
            h.update(c);
        }
        h.finalize()[0]
    });
    println!("sha256 in-memory {sha:.2} GB/s");
    let b2 = best_of(5, data.len(), || {
        let mut h = slipway_pack::keys::Prehasher::new();
        for c in data.chunks(256 * 1024) {
            h.update(c);
        }
        h.finalize()[0]
    });
    println!("blake2b-512 in-memory {b2:.2} GB/s");
    if let Some(path) = file {
        let len = std::fs::metadata(&path).expect("stat FILE").len() as usize;
        let mut buf = vec![0u8; 256 * 1024];
        let from_file = best_of(3, len, || {
            let mut f = File::open(&path).expect("open FILE");
            let mut h = sha2::Sha256::new();
            loop {
                let n = f.read(&mut buf).expect("read FILE");
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            h.finalize()[0]
        });
        println!("sha256 from-file {from_file:.2} GB/s");
    }
}

/// The best throughput of `runs` runs of `work` over `bytes` bytes, in GB/s.
fn best_of(runs: usize, bytes: usize, mut work: impl FnMut() -> u8) -> f64 {
    let mut best = f64::MAX;
    let mut sink = 0u8;
    for _ in 0..runs {
        let t = Instant::now();
        sink ^= work();
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(sink);
    bytes as f64 / 1e9 / best
}

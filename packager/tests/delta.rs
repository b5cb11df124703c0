//! `slipway-pack delta` (docs/formats.md, "Delta archives"): a file changed
//! by an appended line travels as little more than that line, compressed
//! against the base's old version of it, and the new manifest against the
//! base's manifest.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::fs;
use std::path::Path;

use common::*;

/// `slipway-pack delta --json` from `from` to `to`.
fn delta(repo: &Path, key: &Path, from: &str, to: &str) -> serde_json::Value {
    let out = pack()
        .args(["delta", "--json", "--repo"])
        .arg(repo)
        .args(["--from", from, "--to", to, "--key"])
        .arg(key)
        .output()
        .expect("delta");
    assert!(out.status.success(), "{:?}", text(&out));
    serde_json::from_slice(&out.stdout).expect("json")
}

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn a_line_appended_to_a_large_file_travels_as_a_few_hundred_bytes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (key, _) = keygen(tmp.path(), "k");
    let src = tmp.path().join("src");
    sample_tree(&src);
    let model = src.join("app/bot/model.bin");
    let mut bytes = pseudo_random(200 * 1024);
    fs::write(&model, &bytes).expect("model");
    let repo = tmp.path().join("repo");
    let v1 = build(&src, &repo, &key, "1.0.0", &[]);
    bytes.extend_from_slice(b"one more line\n");
    fs::write(&model, &bytes).expect("model");
    let v2 = build(&src, &repo, &key, "1.0.1", &[]);

    let d = delta(&repo, &key, &v1, &v2);
    let size = d["size"].as_u64().expect("size");
    eprintln!("a line appended to a 200 KiB file: {d}");
    assert_eq!(d["files"], 1, "only model.bin travels: {d}");
    assert_eq!(d["reference"], 200 * 1024, "against v1's model.bin: {d}");
    assert!(
        size < 1_000,
        "the delta ({size} bytes) holds the line, not the 200 KiB file"
    );
    assert_eq!(
        d["manifest_frame"].as_u64().expect("frame A") + d["files_frame"].as_u64().expect("B"),
        size
    );
    // The same two releases, the same bytes.
    let path = d["path"].as_str().expect("path").to_string();
    let first = fs::read(&path).expect("delta");
    delta(&repo, &key, &v1, &v2);
    assert_eq!(fs::read(&path).expect("delta"), first);
}

#[test]
fn the_manifest_frame_of_a_2000_file_release_is_far_smaller_than_its_manifest_compressed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (key, _) = keygen(tmp.path(), "k");
    let src = tmp.path().join("src");
    sample_tree(&src);
    for i in 0..2000 {
        let dir = src.join(format!("app/data/{:02}", i / 100));
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join(format!("f{i:04}.txt")), format!("file {i}\n")).expect("write");
    }
    let repo = tmp.path().join("repo");
    let v1 = build(&src, &repo, &key, "1.0.0", &[]);
    fs::write(src.join("app/data/07/f0777.txt"), "file 777, changed\n").expect("edit");
    let v2 = build(&src, &repo, &key, "1.0.1", &[]);

    let d = delta(&repo, &key, &v1, &v2);
    let frame = d["manifest_frame"].as_u64().expect("frame A");
    let file = fs::File::open(archive(&repo, &v2)).expect("archive");
    let manifest = slipway_formats::archive::read_manifest_entry(file).expect("manifest");
    let alone = zstd::encode_all(manifest.as_slice(), 3)
        .expect("zstd")
        .len() as u64;
    eprintln!(
        "a manifest of {} bytes: {alone} compressed alone, {frame} against v1's",
        manifest.len()
    );
    assert_eq!(d["files"], 1, "{d}");
    assert!(
        frame * 50 < alone,
        "frame A ({frame} bytes) is far smaller than the manifest compressed alone ({alone} bytes)"
    );
}

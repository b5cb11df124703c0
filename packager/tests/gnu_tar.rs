//! The archive is a plain POSIX tar in zstd: GNU tar lists it, and
//! extracting it with GNU tar gives exactly the manifest's entries.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::*;
use sha2::Digest;

#[test]
fn gnu_tar_lists_and_extracts_exactly_the_manifest() {
    require_tool("tar", "tar");
    require_tool("zstd", "zstd");
    let tmp = tempfile::tempdir().expect("tmp");
    let (key, _) = keygen(tmp.path(), "k");
    let src = tmp.path().join("src");
    sample_tree(&src);
    // Names that need PAX headers: a long path and a long symlink target.
    let long_dir = format!("app/{}/{}", "d".repeat(120), "e".repeat(90));
    let long_file = format!("{long_dir}/{}.txt", "f".repeat(60));
    write_tree(&src, &[(long_file.as_str(), "long\n", 0o644)]);
    let long_target = long_file.strip_prefix("app/").expect("prefix").to_string();
    std::os::unix::fs::symlink(&long_target, src.join("app/long-link")).expect("symlink");
    write_tree(&src, &[("app/ünïcode ✓.txt", "utf-8 name\n", 0o600)]);

    let repo = tmp.path().join("repo");
    let id = build(&src, &repo, &key, "1.0.0", &[]);
    let archive = archive(&repo, &id);

    let list = Command::new("tar")
        .arg("--zstd")
        .arg("-tvf")
        .arg(&archive)
        .output()
        .expect("tar -t");
    assert!(list.status.success(), "{:?}", text(&list));
    let listing = String::from_utf8_lossy(&list.stdout);
    assert!(
        listing
            .lines()
            .next()
            .expect("first")
            .ends_with("slipway/manifest.json"),
        "{listing}"
    );
    assert!(listing.contains(&long_file), "{listing}");
    assert!(
        listing.contains(&format!("app/long-link -> {long_target}")),
        "{listing}"
    );

    let out = tmp.path().join("out");
    fs::create_dir(&out).expect("mkdir");
    let x = Command::new("tar")
        .arg("--zstd")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&out)
        .output()
        .expect("tar -x");
    assert!(x.status.success(), "{:?}", text(&x));

    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("slipway/manifest.json")).expect("manifest"))
            .expect("json");
    let mut expected: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for e in manifest["files"].as_array().expect("files") {
        expected.insert(e["path"].as_str().expect("path").to_string(), e.clone());
    }
    assert!(expected.contains_key(&long_file));

    let mut found = BTreeMap::new();
    for entry in walkdir::WalkDir::new(&out).min_depth(1) {
        let entry = entry.expect("walk");
        let rel = entry
            .path()
            .strip_prefix(&out)
            .expect("rel")
            .to_string_lossy()
            .into_owned();
        if rel == "slipway" || rel == "slipway/manifest.json" {
            continue;
        }
        found.insert(rel, entry);
    }
    assert_eq!(
        found.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "extracted entries differ from the manifest"
    );
    for (path, entry) in &found {
        let want = &expected[path];
        let meta = fs::symlink_metadata(entry.path()).expect("meta");
        match want["type"].as_str().expect("type") {
            "file" => {
                assert!(meta.is_file(), "{path}");
                let digest =
                    hex::encode(sha2::Sha256::digest(fs::read(entry.path()).expect("read")));
                assert_eq!(want["sha256"].as_str(), Some(digest.as_str()), "{path}");
                assert_eq!(
                    format!("{:04o}", meta.permissions().mode() & 0o7777),
                    want["mode"].as_str().expect("mode"),
                    "{path}"
                );
            }
            "dir" => assert!(meta.is_dir(), "{path}"),
            "symlink" => {
                let target = fs::read_link(entry.path()).expect("readlink");
                assert_eq!(target.to_str(), want["target"].as_str(), "{path}");
            }
            other => panic!("unexpected type {other}"),
        }
    }
    // The 0600 file was normalised to 0644 and the executable kept 0755.
    assert_eq!(expected["app/ünïcode ✓.txt"]["mode"], "0644");
    assert_eq!(expected["app/run.sh"]["mode"], "0755");
}

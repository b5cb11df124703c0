//! `slipway-pack bundle` and deltas (docs/air-gapped.md): a bundle carries,
//! besides the releases a host would pick, every delta the index lists to
//! them that the repository holds, verified and listed in `SHA256SUMS`;
//! `--no-deltas` leaves them out; a listed delta the repository lacks is
//! left out with a warning, and one that does not verify stops the bundle.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A repository with 1.0.0 and 1.1.0 published to stable; publish wrote
/// the delta from 1.0.0 to 1.1.0. Returns (tmp, repo, key, v1, v2).
fn repo_with_a_delta() -> (tempfile::TempDir, PathBuf, PathBuf, String, String) {
    let tmp = tempfile::tempdir().expect("tmp");
    let (key, _) = keygen(tmp.path(), "k");
    let src = tmp.path().join("src");
    sample_tree(&src);
    let repo = tmp.path().join("repo");
    let v1 = build(&src, &repo, &key, "1.0.0", &[]);
    fs::write(src.join("app/bot/main.py"), "print('v2')\n").expect("edit");
    let v2 = build(&src, &repo, &key, "1.1.0", &[]);
    for id in [&v1, &v2] {
        let out = pack()
            .args(["publish", "--channel", "stable", "--repo"])
            .arg(&repo)
            .arg("--key")
            .arg(&key)
            .arg(id)
            .output()
            .expect("publish");
        assert!(out.status.success(), "{:?}", text(&out));
    }
    assert!(
        delta_path(&repo, &v1, &v2).is_file(),
        "publish wrote the delta"
    );
    (tmp, repo, key, v1, v2)
}

fn hex(id: &str) -> &str {
    id.strip_prefix("sha256:").unwrap_or(id)
}

fn delta_rel(from: &str, to: &str) -> String {
    format!("deltas/{}-{}.tar.zst", hex(from), hex(to))
}

fn delta_path(repo: &Path, from: &str, to: &str) -> PathBuf {
    repo.join(delta_rel(from, to))
}

/// Runs `slipway-pack bundle --json` of stable into `out`.
fn bundle(repo: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    pack()
        .args(["bundle", "--channel", "stable", "--json", "--repo"])
        .arg(repo)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .expect("bundle")
}

fn report(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{:?}", text(out));
    serde_json::from_slice(&out.stdout).expect("json report")
}

/// The paths `SHA256SUMS` lists.
fn listed(bundle: &Path) -> Vec<String> {
    fs::read_to_string(bundle.join("SHA256SUMS"))
        .expect("SHA256SUMS")
        .lines()
        .map(|l| l.split_once("  ").expect("sums line").1.to_string())
        .collect()
}

#[test]
fn a_bundle_lists_and_carries_the_deltas_to_its_releases() {
    let (tmp, repo, _key, v1, v2) = repo_with_a_delta();
    let out_dir = tmp.path().join("usb/bot-1.1.0");
    let r = report(&bundle(&repo, &out_dir, &[]));
    assert_eq!(r["releases"].as_array().map(Vec::len), Some(1), "{r}");
    assert_eq!(r["deltas"].as_array().map(Vec::len), Some(1), "{r}");
    assert_eq!(r["deltas"][0]["from"], v1.as_str());
    assert_eq!(r["deltas"][0]["from_version"], "1.0.0");
    assert_eq!(r["deltas"][0]["to"], v2.as_str());
    let rel = delta_rel(&v1, &v2);
    let size = fs::metadata(delta_path(&repo, &v1, &v2))
        .expect("delta")
        .len();
    assert_eq!(r["deltas"][0]["size"], size);

    // The files, byte for byte, listed in SHA256SUMS like every other.
    for suffix in ["", ".minisig"] {
        let name = format!("{rel}{suffix}");
        assert_eq!(
            fs::read(out_dir.join(&name)).expect("in the bundle"),
            fs::read(repo.join(&name)).expect("in the repository"),
            "{name}"
        );
        assert!(listed(&out_dir).contains(&name), "{name} is listed");
    }
    assert_eq!(
        files_under(&out_dir).len(),
        r["files"].as_u64().expect("files") as usize + 1
    );
    require_tool("sha256sum", "coreutils");
    let out = Command::new("sha256sum")
        .current_dir(&out_dir)
        .args(["-c", "--quiet", "SHA256SUMS"])
        .output()
        .expect("sha256sum");
    assert!(out.status.success(), "{:?}", text(&out));
    let readme = fs::read_to_string(out_dir.join("README.txt")).expect("README");
    assert!(readme.contains("1.0.0 -> 1.1.0"), "{readme}");

    // The tar bundle carries the same files under its top directory.
    let tar = tmp.path().join("usb/bot-1.1.0.tar");
    let r = report(&bundle(&repo, &tar, &["--tar"]));
    assert_eq!(r["deltas"].as_array().map(Vec::len), Some(1), "{r}");
    let names = Command::new("tar")
        .arg("-tf")
        .arg(&tar)
        .output()
        .expect("tar -tf");
    let names = String::from_utf8_lossy(&names.stdout).into_owned();
    assert!(names.contains(&format!("bot-1.1.0/{rel}\n")), "{names}");
    assert!(
        names.contains(&format!("bot-1.1.0/{rel}.minisig\n")),
        "{names}"
    );
}

#[test]
fn no_deltas_leaves_them_out() {
    let (tmp, repo, _key, _v1, _v2) = repo_with_a_delta();
    let out_dir = tmp.path().join("bundle");
    let r = report(&bundle(&repo, &out_dir, &["--no-deltas"]));
    assert_eq!(r["deltas"].as_array().map(Vec::len), Some(0), "{r}");
    assert!(!out_dir.join("deltas").exists());
    assert!(
        !listed(&out_dir).iter().any(|p| p.starts_with("deltas/")),
        "{:?}",
        listed(&out_dir)
    );
    let readme = fs::read_to_string(out_dir.join("README.txt")).expect("README");
    assert!(!readme.contains("Deltas"), "{readme}");
}

#[test]
fn a_listed_delta_the_repository_lacks_is_left_out_with_a_warning() {
    let (tmp, repo, _key, v1, v2) = repo_with_a_delta();
    fs::remove_file(delta_path(&repo, &v1, &v2)).expect("remove the delta");
    let out_dir = tmp.path().join("bundle");
    let out = bundle(&repo, &out_dir, &[]);
    let r = report(&out);
    assert_eq!(r["deltas"].as_array().map(Vec::len), Some(0), "{r}");
    assert!(!out_dir.join("deltas").exists());
    let (_, err) = text(&out);
    assert!(err.contains("left out of the bundle"), "{err}");
    assert!(err.contains(&delta_rel(&v1, &v2)), "{err}");
}

#[test]
fn a_delta_that_does_not_verify_stops_the_bundle() {
    let (tmp, repo, _key, v1, v2) = repo_with_a_delta();
    let path = delta_path(&repo, &v1, &v2);
    let mut bytes = fs::read(&path).expect("delta");
    let i = bytes.len() / 2;
    bytes[i] ^= 0xff;
    fs::write(&path, &bytes).expect("tamper");
    let out_dir = tmp.path().join("bundle");
    let out = bundle(&repo, &out_dir, &[]);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&delta_rel(&v1, &v2)), "{err}");
    assert!(err.contains("--no-deltas"), "{err}");
    assert!(!out_dir.exists(), "no bundle under the final name");
    // --no-deltas still makes one.
    report(&bundle(&repo, &out_dir, &["--no-deltas"]));
}

#[test]
fn a_delta_whose_base_archive_is_gone_is_left_out_with_a_warning() {
    let (tmp, repo, _key, v1, v2) = repo_with_a_delta();
    // A delta's first frame decompresses against its base's manifest:
    // without the base archive it cannot be checked.
    fs::remove_file(archive(&repo, &v1)).expect("remove the base archive");
    let out_dir = tmp.path().join("bundle");
    let out = bundle(&repo, &out_dir, &[]);
    let r = report(&out);
    assert_eq!(r["releases"].as_array().map(Vec::len), Some(1), "{r}");
    assert_eq!(r["deltas"].as_array().map(Vec::len), Some(0), "{r}");
    assert!(!out_dir.join("deltas").exists());
    let (_, err) = text(&out);
    assert!(err.contains("left out of the bundle"), "{err}");
    assert!(err.contains("no longer holds the archive"), "{err}");
    assert!(err.contains(&v2), "{err}");
}

/// `slipway-pack verify --json --repo` with the key of [`repo_with_a_delta`].
fn verify_repo(tmp: &Path, repo: &Path) -> (bool, serde_json::Value) {
    let out = pack()
        .args(["verify", "--json", "--pubkey"])
        .arg(tmp.join("k.pub"))
        .arg("--repo")
        .arg(repo)
        .output()
        .expect("verify");
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("verify printed no JSON ({e}): {:?}", text(&out)));
    (out.status.success(), json)
}

#[test]
fn verify_repo_checks_every_listed_delta_like_a_host() {
    let (tmp, repo, _key, v1, v2) = repo_with_a_delta();
    let (ok, report) = verify_repo(tmp.path(), &repo);
    assert!(ok, "{report}");
    assert_eq!(report["deltas"], serde_json::json!([delta_rel(&v1, &v2)]));

    // A changed byte: its listed SHA-256 no longer holds.
    let path = delta_path(&repo, &v1, &v2);
    let good = fs::read(&path).unwrap();
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    fs::write(&path, &bad).unwrap();
    let (ok, report) = verify_repo(tmp.path(), &repo);
    assert!(!ok, "a tampered delta passed: {report}");
    let problems = report["problems"].to_string();
    assert!(
        problems.contains("delta from") && problems.contains(&hex(&v2)[..12]),
        "{problems}"
    );
    assert_eq!(report["deltas"], serde_json::json!([]));

    // Missing: a problem that says so and how to write it again.
    fs::remove_file(&path).unwrap();
    let (ok, report) = verify_repo(tmp.path(), &repo);
    assert!(!ok);
    let problems = report["problems"].to_string();
    assert!(
        problems.contains("missing") && problems.contains("slipway-pack delta"),
        "{problems}"
    );
    fs::write(&path, &good).unwrap();
    assert!(verify_repo(tmp.path(), &repo).0);
}

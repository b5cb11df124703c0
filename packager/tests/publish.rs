//! SPEC §2: channel indexes grow a version with every change, list releases
//! newest first, and are signed so that the stock minisign verifies them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

fn index(repo: &Path, channel: &str) -> serde_json::Value {
    serde_json::from_slice(&fs::read(repo.join(format!("channels/{channel}.json"))).expect("index"))
        .expect("json")
}

fn publish(repo: &Path, key: &Path, release: &str, extra: &[&str]) -> std::process::Output {
    pack()
        .args(["publish", "--channel", "stable", "--repo"])
        .arg(repo)
        .arg("--key")
        .arg(key)
        .args(extra)
        .arg(release)
        .output()
        .expect("publish")
}

fn stock_verify_index(repo: &Path, pub_file: &Path) -> String {
    require_tool("minisign", "minisign");
    let out = Command::new("minisign")
        .arg("-Vm")
        .arg(repo.join("channels/stable.json"))
        .arg("-p")
        .arg(pub_file)
        .output()
        .expect("minisign");
    assert!(out.status.success(), "{:?}", text(&out));
    text(&out).0
}

#[test]
fn publish_twice_then_yank() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (key, pub_file) = keygen(tmp.path(), "k");
    let src = tmp.path().join("src");
    sample_tree(&src);
    let repo = tmp.path().join("repo");
    let v1 = build(&src, &repo, &key, "1.0.0", &[]);
    fs::write(src.join("app/bot/main.py"), "print('v2')\n").expect("edit");
    let v2 = build(&src, &repo, &key, "1.1.0", &[]);

    // By id, then by archive path.
    let out = publish(&repo, &key, &v1, &["--notes", "first"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let out = publish(
        &repo,
        &key,
        archive(&repo, &v2).to_str().expect("utf8"),
        &["--rollout", "25", "--expires-in", "12h"],
    );
    assert!(out.status.success(), "{:?}", text(&out));

    let idx = index(&repo, "stable");
    assert_eq!(idx["version"], 2);
    assert_eq!(idx["app"], "bot");
    let releases = idx["releases"].as_array().expect("releases");
    assert_eq!(releases.len(), 2);
    assert_eq!(releases[0]["version"], "1.1.0");
    assert_eq!(releases[0]["id"], v2.as_str());
    assert_eq!(releases[0]["rollout"], 25);
    assert_eq!(releases[1]["version"], "1.0.0");
    assert_eq!(releases[1]["notes"], "first");
    assert_eq!(
        releases[1]["size"],
        fs::metadata(archive(&repo, &v1)).expect("meta").len()
    );
    let expires =
        slipway_formats::channel::Timestamp::parse(idx["expires"].as_str().expect("expires"))
            .expect("time");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (expires.unix() - now - 12 * 3600).abs() < 300,
        "expires {expires:?}"
    );
    let stock = stock_verify_index(&repo, &pub_file);
    assert!(
        stock.contains("slipway-channel") && stock.contains("version:2"),
        "{stock}"
    );
    // The public key was published for hosts and rotation.
    let key_files = files_under(&repo.join("keys"));
    assert_eq!(key_files.len(), 1, "{key_files:?}");

    let out = pack()
        .args(["yank", "--channel", "stable", "--repo"])
        .arg(&repo)
        .arg("--key")
        .arg(&key)
        .arg(&v2)
        .output()
        .expect("yank");
    assert!(out.status.success(), "{:?}", text(&out));
    let idx = index(&repo, "stable");
    assert_eq!(idx["version"], 3);
    assert_eq!(idx["releases"][0]["yanked"], true);
    assert_eq!(idx["releases"][1]["yanked"], false);
    stock_verify_index(&repo, &pub_file);

    // A yanked release is not published again.
    let out = publish(&repo, &key, &v2, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("yanked"), "{:?}", text(&out));

    // Refresh re-signs with a new version and nothing else changed.
    pack()
        .args(["refresh", "--channel", "stable", "--repo"])
        .arg(&repo)
        .arg("--key")
        .arg(&key)
        .assert()
        .success();
    let refreshed = index(&repo, "stable");
    assert_eq!(refreshed["version"], 4);
    assert_eq!(refreshed["releases"], idx["releases"]);

    // The whole repository verifies.
    let out = pack()
        .args(["verify", "--pubkey"])
        .arg(&pub_file)
        .arg("--repo")
        .arg(&repo)
        .output()
        .expect("verify");
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(text(&out).0.contains("channel stable"), "{:?}", text(&out));
}

#[test]
fn same_version_with_other_content_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (key, _) = keygen(tmp.path(), "k");
    let src = tmp.path().join("src");
    sample_tree(&src);
    let repo = tmp.path().join("repo");
    let first = build(&src, &repo, &key, "1.0.0", &[]);
    assert!(publish(&repo, &key, &first, &[]).status.success());
    fs::write(src.join("app/bot/main.py"), "print('other')\n").expect("edit");
    let second = build(&src, &repo, &key, "1.0.0", &[]);
    assert_ne!(first, second);
    let out = publish(&repo, &key, &second, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("already published"),
        "{:?}",
        text(&out)
    );
    assert_eq!(
        index(&repo, "stable")["version"],
        1,
        "a refused publish must not change the index"
    );
}

#[test]
fn another_app_or_another_key_or_channel_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (key, _) = keygen(tmp.path(), "k");
    let (other_key, _) = keygen(tmp.path(), "other");
    let src = tmp.path().join("src");
    sample_tree(&src);
    let repo = tmp.path().join("repo");
    let bot = build(&src, &repo, &key, "1.0.0", &[]);
    assert!(publish(&repo, &key, &bot, &[]).status.success());

    let out = pack()
        .arg("build")
        .arg(&src)
        .args(["--app", "web", "--version", "1.1.0", "--key"])
        .arg(&key)
        .arg("--out")
        .arg(&repo)
        .output()
        .expect("build");
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    let out_text = text(&out).1;
    assert!(
        out_text.contains("app = \"bot\" does not match --app web"),
        "{out_text}"
    );

    // Build without slipway.toml's app to get a real "web" release.
    fs::write(src.join("slipway.toml"), "[schema]\nversion = 1\n").expect("toml");
    let web = build(&src, &repo, &key, "1.1.0", &["--app", "web"]);
    let out = publish(&repo, &key, &web, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("for app \"bot\""), "{:?}", text(&out));

    // An index signed by another key is not extended.
    let other = build(&src, &repo, &other_key, "1.2.0", &["--app", "bot"]);
    let out = publish(&repo, &other_key, &other, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("must verify with the signing key"),
        "{:?}",
        text(&out)
    );

    // A release built for another channel.
    let beta = build(
        &src,
        &repo,
        &key,
        "1.3.0",
        &["--app", "bot", "--channel", "beta"],
    );
    let out = publish(&repo, &key, &beta, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("--channel stable"),
        "{:?}",
        text(&out)
    );
    assert_eq!(index(&repo, "stable")["version"], 1);
}

#[test]
fn yanking_an_unknown_release_names_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (key, _) = keygen(tmp.path(), "k");
    let src = tmp.path().join("src");
    sample_tree(&src);
    let repo = tmp.path().join("repo");
    let id = build(&src, &repo, &key, "1.0.0", &[]);
    assert!(publish(&repo, &key, &id, &[]).status.success());
    let unknown = format!("sha256:{}", "ab".repeat(32));
    let out = pack()
        .args(["yank", "--channel", "stable", "--repo"])
        .arg(&repo)
        .arg("--key")
        .arg(&key)
        .arg(&unknown)
        .output()
        .expect("yank");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out).1;
    assert!(
        err.contains(&unknown) && err.contains("not listed") && err.contains("1.0.0"),
        "{err}"
    );
}

#[test]
fn publishing_an_archive_from_outside_the_repo_imports_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (key, pub_file) = keygen(tmp.path(), "k");
    let src = tmp.path().join("src");
    sample_tree(&src);
    let staging = tmp.path().join("ci-out");
    let id = build(&src, &staging, &key, "1.0.0", &[]);
    let repo = tmp.path().join("repo");
    let out = publish(
        &repo,
        &key,
        archive(&staging, &id).to_str().expect("utf8"),
        &[],
    );
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(archive(&repo, &id).exists());
    pack()
        .args(["verify", "--pubkey"])
        .arg(&pub_file)
        .arg("--repo")
        .arg(&repo)
        .assert()
        .success();
}

#[test]
fn verify_repo_reports_a_tampered_index() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (key, pub_file) = keygen(tmp.path(), "k");
    let src = tmp.path().join("src");
    sample_tree(&src);
    let repo = tmp.path().join("repo");
    let id = build(&src, &repo, &key, "1.0.0", &[]);
    assert!(publish(&repo, &key, &id, &[]).status.success());
    let path = repo.join("channels/stable.json");
    let tampered = fs::read_to_string(&path)
        .expect("read")
        .replace("\"rollout\": 100", "\"rollout\": 99");
    fs::write(&path, tampered).expect("write");
    let out = pack()
        .args(["verify", "--pubkey"])
        .arg(&pub_file)
        .arg("--repo")
        .arg(&repo)
        .output()
        .expect("verify");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("stable.json"), "{:?}", text(&out));
}

#[test]
fn library_publish_and_index_signing() {
    use slipway_pack::repo::{self, IndexOptions, PublishOptions};
    let tmp = tempfile::tempdir().expect("tmp");
    let (key_path, _) = keygen(tmp.path(), "k");
    let key = slipway_pack::SigningKey::load(&key_path, None).expect("key");
    let src = tmp.path().join("src");
    sample_tree(&src);
    let repo_dir = tmp.path().join("repo");
    let mut opts = slipway_pack::BuildOptions::new(&src, &repo_dir);
    opts.version = Some("1.0.0".parse().expect("v"));
    let built = slipway_pack::build_release(&opts, &key).expect("build");
    let repo = slipway_pack::Repo::new(&repo_dir);
    let mut publish_opts = PublishOptions::new("stable");
    publish_opts.index.now =
        Some(slipway_formats::channel::Timestamp::parse("2030-01-01T00:00:00Z").expect("t"));
    let update = repo::publish(&repo, &key, &built.id.to_string(), &publish_opts).expect("publish");
    assert_eq!(update.index.version, 1);
    assert_eq!(update.index.expires.to_string(), "2030-01-31T00:00:00Z");
    // Reading it back verifies the signature and the trusted comment.
    let keys = slipway_formats::TrustedKeys::new(vec![key.public_key().clone()]);
    let signed = repo
        .read_channel("stable", &keys)
        .expect("read")
        .expect("present");
    assert_eq!(signed.index, update.index);
    let mut yank_opts = IndexOptions::new("stable");
    yank_opts.now = publish_opts.index.now;
    let yanked = repo::yank(&repo, &key, &built.id, &yank_opts).expect("yank");
    assert!(yanked.changed && yanked.index.releases[0].yanked);
    let again = repo::yank(&repo, &key, &built.id, &yank_opts).expect("yank again");
    assert!(!again.changed);
    assert_eq!(again.index.version, 2);
}

#[test]
fn keep_lists_only_the_newest_releases() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (key, _) = keygen(tmp.path(), "k");
    let src = tmp.path().join("src");
    sample_tree(&src);
    let repo = tmp.path().join("repo");
    let mut ids = Vec::new();
    for (i, v) in ["1.0.0", "1.1.0", "1.2.0"].iter().enumerate() {
        fs::write(src.join("app/bot/main.py"), format!("print({i})\n")).expect("edit");
        ids.push(build(&src, &repo, &key, v, &[]));
    }
    let old = build(&src, &repo, &key, "0.9.0", &[]);
    for id in &ids {
        let out = publish(&repo, &key, id, &["--keep", "2"]);
        assert!(out.status.success(), "{:?}", text(&out));
    }
    let idx = index(&repo, "stable");
    let versions: Vec<_> = idx["releases"]
        .as_array()
        .expect("releases")
        .iter()
        .map(|r| r["version"].clone())
        .collect();
    assert_eq!(versions, ["1.2.0", "1.1.0"]);
    assert!(
        archive(&repo, &ids[0]).exists(),
        "--keep must not delete archives"
    );
    let out = publish(&repo, &key, &old, &["--keep", "2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("would drop it"), "{:?}", text(&out));
    assert_eq!(index(&repo, "stable")["version"], 3);
}

#[test]
fn rebuilding_with_another_key_does_not_replace_the_signature() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (key, _) = keygen(tmp.path(), "k");
    let (other, _) = keygen(tmp.path(), "other");
    let src = tmp.path().join("src");
    sample_tree(&src);
    let repo = tmp.path().join("repo");
    let id = build(&src, &repo, &key, "1.0.0", &[]);
    let sig = repo.join("releases").join(format!(
        "{}.tar.zst.minisig",
        id.trim_start_matches("sha256:")
    ));
    let before = fs::read(&sig).expect("sig");
    // The same key: same bytes, accepted.
    assert_eq!(build(&src, &repo, &key, "1.0.0", &[]), id);
    let out = pack()
        .arg("build")
        .arg(&src)
        .args(["--version", "1.0.0", "--key"])
        .arg(&other)
        .arg("--out")
        .arg(&repo)
        .output()
        .expect("build");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("already in"), "{:?}", text(&out));
    assert_eq!(fs::read(&sig).expect("sig"), before);
    assert_eq!(
        files_under(&repo.join("releases")).len(),
        2,
        "temporary files left behind"
    );
}

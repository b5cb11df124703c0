//! SPEC §1: the same source tree and arguments give a byte-identical archive,
//! whatever the file order on disk, mtimes, permission bits other than x,
//! or the number of zstd workers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;

const FILES: &[(&str, &str, bool)] = &[
    ("app/a.py", "a = 1\n", false),
    ("app/a-b.txt", "dash sorts before slash\n", false),
    ("app/a/b.py", "b = 2\n", false),
    ("app/bin/run", "#!/bin/sh\necho run\n", true),
    ("app/z/deep/er/file.txt", "deep\n", false),
    ("schema/VERSION", "3\n", false),
];

/// Lays the tree down in `order`, with modes from `modes(executable)` and
/// mtimes `age` in the past.
fn lay_down(root: &Path, reverse: bool, modes: fn(bool) -> u32, age: Duration) {
    let mut files: Vec<_> = FILES.to_vec();
    if reverse {
        files.reverse();
    }
    for (path, content, exec) in files {
        let p = root.join(path);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, content).expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(modes(exec))).expect("chmod");
        let f = fs::File::options().write(true).open(&p).expect("open");
        f.set_modified(SystemTime::now() - age).expect("mtime");
    }
    fs::write(
        root.join("slipway.toml"),
        "app = \"bot\"\n[schema]\nversion = 3\n",
    )
    .expect("toml");
    std::os::unix::fs::symlink("a/b.py", root.join("app/link")).expect("symlink");
    // Directory modes differ too (umask 077 vs 022).
    let dir_mode = if reverse { 0o700 } else { 0o755 };
    for d in ["app/a", "app/bin", "app/z", "app/z/deep"] {
        fs::set_permissions(root.join(d), fs::Permissions::from_mode(dir_mode)).expect("chmod dir");
    }
}

#[test]
fn same_content_laid_down_differently_gives_identical_archives() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (key, _) = keygen(tmp.path(), "k");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    lay_down(
        &a,
        false,
        |x| if x { 0o755 } else { 0o644 },
        Duration::from_secs(10),
    );
    lay_down(
        &b,
        true,
        |x| if x { 0o700 } else { 0o600 },
        Duration::from_secs(86_400 * 400),
    );
    let (ra, rb) = (tmp.path().join("repo-a"), tmp.path().join("repo-b"));
    let id_a = build(&a, &ra, &key, "1.0.0", &[]);
    let id_b = build(&b, &rb, &key, "1.0.0", &[]);
    assert_eq!(id_a, id_b);
    let bytes_a = fs::read(archive(&ra, &id_a)).expect("read a");
    let bytes_b = fs::read(archive(&rb, &id_b)).expect("read b");
    assert_eq!(bytes_a, bytes_b);
    // Ed25519 is deterministic, so even the signatures are identical.
    let sig = |repo: &Path, id: &str| {
        let mut p = archive(repo, id).into_os_string();
        p.push(".minisig");
        fs::read(p).expect("sig")
    };
    assert_eq!(sig(&ra, &id_a), sig(&rb, &id_b));
    // And the id is the sha256 of the file.
    use sha2::Digest;
    assert_eq!(
        id_a,
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes_a)))
    );
}

#[test]
fn source_date_epoch_changes_the_id_and_is_recorded() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (key, _) = keygen(tmp.path(), "k");
    let src = tmp.path().join("src");
    sample_tree(&src);
    let repo = tmp.path().join("repo");
    let plain = build(&src, &repo, &key, "1.0.0", &[]);
    let out = pack()
        .arg("build")
        .arg(&src)
        .args(["--version", "1.0.0", "--key"])
        .arg(&key)
        .arg("--out")
        .arg(&repo)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .expect("run");
    assert!(out.status.success(), "{:?}", text(&out));
    let from_env = String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string();
    let from_flag = build(
        &src,
        &repo,
        &key,
        "1.0.0",
        &["--source-date-epoch", "1700000000"],
    );
    assert_ne!(plain, from_env);
    assert_eq!(from_env, from_flag);
    let out = pack()
        .arg("inspect")
        .arg(archive(&repo, &from_env))
        .arg("--json")
        .output()
        .expect("inspect");
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(manifest["created"], 1_700_000_000u64);
}

#[test]
fn one_changed_byte_changes_the_id() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (key, _) = keygen(tmp.path(), "k");
    let src = tmp.path().join("src");
    sample_tree(&src);
    let repo = tmp.path().join("repo");
    let before = build(&src, &repo, &key, "1.0.0", &[]);
    fs::write(src.join("app/bot/main.py"), "print('hellO')\n").expect("edit");
    let after = build(&src, &repo, &key, "1.0.0", &[]);
    assert_ne!(before, after);
}

#[test]
fn one_or_two_zstd_workers_give_the_same_bytes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (key, _) = keygen(tmp.path(), "k");
    let src = tmp.path().join("src");
    sample_tree(&src);
    // Enough incompressible-ish data for zstd to cut several jobs.
    let mut big = String::new();
    let mut x: u64 = 1;
    for _ in 0..400_000 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        big.push_str(&format!("{:x}\n", x >> 20));
    }
    fs::write(src.join("app/big.txt"), big).expect("big");
    let (r1, r2) = (tmp.path().join("r1"), tmp.path().join("r2"));
    let one = build(&src, &r1, &key, "1.0.0", &["--zstd-workers", "1"]);
    let two = build(&src, &r2, &key, "1.0.0", &["--zstd-workers", "2"]);
    assert_eq!(one, two);
    assert_eq!(
        fs::read(archive(&r1, &one)).expect("1"),
        fs::read(archive(&r2, &two)).expect("2")
    );
}

#[test]
fn library_build_matches_the_binary_and_is_worker_independent() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (key_path, _) = keygen(tmp.path(), "k");
    let key = slipway_pack::SigningKey::load(&key_path, None).expect("key");
    let src = tmp.path().join("src");
    sample_tree(&src);
    let cli = build(&src, &tmp.path().join("cli"), &key_path, "2.0.0", &[]);
    let mut ids = Vec::new();
    for workers in [1, 2, 3] {
        let mut opts =
            slipway_pack::BuildOptions::new(&src, tmp.path().join(format!("lib{workers}")));
        opts.version = Some("2.0.0".parse().expect("version"));
        opts.zstd_workers = Some(workers);
        let built = slipway_pack::build_release(&opts, &key).expect("build");
        assert_eq!(built.app, "bot");
        assert_eq!(built.schema_version, 1);
        ids.push(built.id.to_string());
    }
    assert!(ids.iter().all(|id| *id == cli), "{ids:?} vs {cli}");
}

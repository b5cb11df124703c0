//! Keys and signatures are real minisign: the stock `minisign` CLI reads
//! what slipway-pack writes and the other way round, and `slipway-pack
//! verify` refuses what it must, saying why.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

fn minisign(args: &[&str], stdin: &str) -> std::process::Output {
    require_tool("minisign", "minisign");
    let mut child = Command::new("minisign")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn minisign");
    // Without a terminal, minisign reads the password from stdin.
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("minisign")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

fn sig_of(archive: &Path) -> PathBuf {
    let mut s = archive.as_os_str().to_owned();
    s.push(".minisig");
    PathBuf::from(s)
}

/// The base64 line of a .pub file.
fn pub_base64(pub_file: &Path) -> String {
    fs::read_to_string(pub_file)
        .expect("pub")
        .lines()
        .nth(1)
        .expect("key line")
        .trim()
        .to_string()
}

/// `slipway-pack build SRC --version 1.0.0 --key KEY --out REPO` with the
/// key's password in the environment.
fn build_with_password(
    src: &Path,
    key: &Path,
    repo: &Path,
    password: &str,
) -> std::process::Output {
    pack()
        .arg("build")
        .arg(src)
        .args(["--version", "1.0.0", "--key"])
        .arg(key)
        .arg("--out")
        .arg(repo)
        .env("SLIPWAY_KEY_PASSWORD", password)
        .output()
        .expect("build")
}

fn stock_verifies(archive: &Path, pub_file: &Path) {
    let by_file = minisign(&["-Vm", path_str(archive), "-p", path_str(pub_file)], "");
    assert!(
        by_file.status.success(),
        "minisign -p: {:?}",
        text(&by_file)
    );
    let key = pub_base64(pub_file);
    let by_key = minisign(&["-Vm", path_str(archive), "-P", &key], "");
    assert!(by_key.status.success(), "minisign -P: {:?}", text(&by_key));
    assert!(
        text(&by_key).0.contains("slipway-release"),
        "{:?}",
        text(&by_key)
    );
}

#[test]
fn stock_minisign_verifies_archives_signed_with_slipway_keys() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    sample_tree(&src);

    let (plain_key, plain_pub) = keygen(tmp.path(), "plain");
    let id = build(&src, &tmp.path().join("r1"), &plain_key, "1.0.0", &[]);
    stock_verifies(&archive(&tmp.path().join("r1"), &id), &plain_pub);
    // The stock CLI signs with the unencrypted key slipway-pack wrote.
    let data = tmp.path().join("data.txt");
    fs::write(&data, "x").expect("data");
    let signed = minisign(
        &["-S", "-s", path_str(&plain_key), "-m", path_str(&data)],
        "",
    );
    assert!(
        signed.status.success(),
        "minisign -S with our unencrypted key: {:?}",
        text(&signed)
    );
    let checked = minisign(&["-Vm", path_str(&data), "-p", path_str(&plain_pub)], "");
    assert!(checked.status.success(), "{:?}", text(&checked));

    pack()
        .args(["keygen", "--name", "enc", "--out-dir"])
        .arg(tmp.path())
        .env("SLIPWAY_KEY_PASSWORD", "correct horse")
        .assert()
        .success();
    let enc_key = tmp.path().join("enc.key");
    // The stock CLI can sign with the encrypted key slipway-pack wrote.
    let signed = minisign(
        &["-S", "-s", path_str(&enc_key), "-m", path_str(&data)],
        "correct horse\n",
    );
    assert!(
        signed.status.success(),
        "minisign -S with our key: {:?}",
        text(&signed)
    );

    let r2 = tmp.path().join("r2");
    let out = build_with_password(&src, &enc_key, &r2, "correct horse");
    assert!(out.status.success(), "{:?}", text(&out));
    let id2 = text(&out).0.trim().to_string();
    stock_verifies(&archive(&r2, &id2), &tmp.path().join("enc.pub"));

    let wrong = build_with_password(&src, &enc_key, &r2, "wrong");
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        text(&wrong).1.contains("wrong password"),
        "{:?}",
        text(&wrong)
    );
}

#[test]
fn unencrypted_minisign_cli_keys_sign_releases() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (pk, sk) = (tmp.path().join("cli.pub"), tmp.path().join("cli.key"));
    let gen = minisign(&["-G", "-W", "-p", path_str(&pk), "-s", path_str(&sk)], "");
    assert!(gen.status.success(), "{:?}", text(&gen));
    let src = tmp.path().join("src");
    sample_tree(&src);
    let repo = tmp.path().join("repo");
    let id = build(&src, &repo, &sk, "1.0.0", &[]);
    stock_verifies(&archive(&repo, &id), &pk);
    pack()
        .args(["verify", "--pubkey"])
        .arg(&pk)
        .arg(archive(&repo, &id))
        .assert()
        .success();
}

/// `minisign -G` with a password uses scrypt at 1 GiB; an unoptimized
/// build of the `scrypt` crate needs minutes for it (see the workspace's
/// `[profile.dev.package]` settings).
#[test]
fn encrypted_minisign_cli_keys_sign_releases() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (pk, sk) = (tmp.path().join("cli.pub"), tmp.path().join("cli.key"));
    let gen = minisign(
        &["-G", "-p", path_str(&pk), "-s", path_str(&sk)],
        "s3cret\ns3cret\n",
    );
    assert!(gen.status.success(), "{:?}", text(&gen));
    let src = tmp.path().join("src");
    sample_tree(&src);
    let repo = tmp.path().join("repo");
    let out = build_with_password(&src, &sk, &repo, "s3cret");
    assert!(out.status.success(), "{:?}", text(&out));
    let id = text(&out).0.trim().to_string();
    stock_verifies(&archive(&repo, &id), &pk);
}

#[test]
fn encrypted_key_without_password_or_terminal_says_what_to_set() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = pack()
        .args(["keygen", "--out-dir"])
        .arg(tmp.path())
        .output()
        .expect("keygen");
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    let err = text(&out).1;
    assert!(
        err.contains("SLIPWAY_KEY_PASSWORD") && err.contains("--unencrypted"),
        "{err}"
    );
    assert!(
        files_under(tmp.path()).is_empty(),
        "keygen left files behind"
    );
}

#[test]
fn verify_refuses_another_key_a_flipped_byte_and_legacy_signatures() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (key, pub_file) = keygen(tmp.path(), "good");
    let (_, other_pub) = keygen(tmp.path(), "other");
    let src = tmp.path().join("src");
    sample_tree(&src);
    let repo = tmp.path().join("repo");
    let id = build(&src, &repo, &key, "1.0.0", &[]);
    let archive = archive(&repo, &id);

    pack()
        .args(["verify", "--pubkey"])
        .arg(&pub_file)
        .arg(&archive)
        .assert()
        .success();
    // The base64 form works as well as the file.
    pack()
        .args(["verify", "--pubkey", &pub_base64(&pub_file)])
        .arg(&archive)
        .assert()
        .success();

    // Signed by a key that is not trusted.
    let out = pack()
        .args(["verify", "--pubkey"])
        .arg(&other_pub)
        .arg(&archive)
        .output()
        .expect("verify");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("does not trust"), "{:?}", text(&out));

    // A flipped byte: the sha256 no longer matches the name.
    let copy_dir = tmp.path().join("flipped");
    fs::create_dir(&copy_dir).expect("mkdir");
    let flipped = copy_dir.join(archive.file_name().expect("name"));
    let mut bytes = fs::read(&archive).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&flipped, &bytes).expect("write");
    fs::copy(sig_of(&archive), sig_of(&flipped)).expect("copy sig");
    let out = pack()
        .args(["verify", "--pubkey"])
        .arg(&pub_file)
        .arg(&flipped)
        .output()
        .expect("verify");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("corrupted or was altered"),
        "{:?}",
        text(&out)
    );
    // Stock minisign agrees the flipped file is bad.
    let stock = minisign(&["-Vm", path_str(&flipped), "-p", path_str(&pub_file)], "");
    assert!(!stock.status.success());

    // A flipped byte renamed to its new hash: the signature fails instead.
    use sha2::Digest;
    let renamed = copy_dir.join(format!(
        "{}.tar.zst",
        hex::encode(sha2::Sha256::digest(&bytes))
    ));
    fs::rename(&flipped, &renamed).expect("rename");
    fs::copy(sig_of(&archive), sig_of(&renamed)).expect("copy sig");
    let out = pack()
        .args(["verify", "--pubkey"])
        .arg(&pub_file)
        .arg(&renamed)
        .output()
        .expect("verify");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("does not match the data"),
        "{:?}",
        text(&out)
    );

    // A legacy signature made by the stock CLI with -l.
    let (lpk, lsk) = (tmp.path().join("legacy.pub"), tmp.path().join("legacy.key"));
    assert!(minisign(
        &["-G", "-W", "-p", path_str(&lpk), "-s", path_str(&lsk)],
        ""
    )
    .status
    .success());
    let legacy_dir = tmp.path().join("legacy");
    fs::create_dir(&legacy_dir).expect("mkdir");
    let legacy = legacy_dir.join(archive.file_name().expect("name"));
    fs::copy(&archive, &legacy).expect("copy");
    let signed = minisign(
        &["-S", "-l", "-s", path_str(&lsk), "-m", path_str(&legacy)],
        "",
    );
    assert!(signed.status.success(), "{:?}", text(&signed));
    let out = pack()
        .args(["verify", "--pubkey"])
        .arg(&lpk)
        .arg(&legacy)
        .output()
        .expect("verify");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("legacy"), "{:?}", text(&out));
}

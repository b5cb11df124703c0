//! SPEC §1 and §6 at build time: anything but regular files, directories and
//! symlinks staying inside the release is refused with the path named, and
//! a refused build leaves nothing in the repository.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::fs;
use std::path::Path;

use common::*;

/// Runs a build that must fail; checks the message names `culprit` and that
/// no file at all (archive, signature, temporary) is left in the repo.
fn assert_refused(src: &Path, culprit: &Path, words: &str) {
    let tmp = tempfile::tempdir().expect("tmp");
    let (key, _) = keygen(tmp.path(), "k");
    let repo = tmp.path().join("repo");
    let out = pack()
        .arg("build")
        .arg(src)
        .args(["--version", "1.0.0", "--key"])
        .arg(&key)
        .arg("--out")
        .arg(&repo)
        .output()
        .expect("build");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout} {stderr}");
    assert!(
        stderr.contains(&culprit.display().to_string()),
        "path not named: {stderr}"
    );
    assert!(stderr.contains(words), "expected {words:?}: {stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(
        files_under(&repo),
        Vec::<String>::new(),
        "files left behind"
    );
}

fn tree() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tmp");
    sample_tree(tmp.path());
    tmp
}

fn mknod(path: &Path, kind: rustix::fs::FileType, dev: u64) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        kind,
        rustix::fs::Mode::from_raw_mode(0o644),
        dev,
    )
    .unwrap_or_else(|e| panic!("mknod {}: {e}", path.display()));
}

#[test]
fn fifo_is_refused() {
    let src = tree();
    let fifo = src.path().join("app/bot/pipe");
    mknod(&fifo, rustix::fs::FileType::Fifo, 0);
    assert_refused(src.path(), &fifo, "FIFO");
}

#[test]
fn device_node_is_refused() {
    let src = tree();
    let dev = src.path().join("app/null");
    // Character device 1:3 (/dev/null); the tests run as root.
    mknod(
        &dev,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::makedev(1, 3),
    );
    assert_refused(src.path(), &dev, "character device");
}

#[test]
fn socket_is_refused() {
    let src = tree();
    let sock = src.path().join("schema/control.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    assert_refused(src.path(), &sock, "socket");
}

#[test]
fn escaping_symlink_is_refused() {
    let src = tree();
    let link = src.path().join("app/bot/escape");
    std::os::unix::fs::symlink("../../../etc/passwd", &link).expect("symlink");
    assert_refused(src.path(), &link, "leaves the release");
}

#[test]
fn absolute_symlink_is_refused() {
    let src = tree();
    let link = src.path().join("app/abs");
    std::os::unix::fs::symlink("/etc/passwd", &link).expect("symlink");
    assert_refused(src.path(), &link, "absolute");
}

#[test]
fn symlink_through_a_symlink_is_refused() {
    let src = tree();
    std::os::unix::fs::symlink("bot", src.path().join("app/alias")).expect("symlink");
    std::os::unix::fs::symlink("alias/main.py", src.path().join("app/via")).expect("symlink");
    assert_refused(src.path(), src.path(), "app/via");
}

#[test]
fn symlinked_payload_root_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let real = tmp.path().join("elsewhere");
    write_tree(&real, &[("x.py", "x\n", 0o644)]);
    let src = tmp.path().join("src");
    fs::create_dir(&src).expect("mkdir");
    std::os::unix::fs::symlink(&real, src.join("schema")).expect("symlink");
    write_tree(
        &src,
        &[
            ("app/main.py", "\n", 0o644),
            ("slipway.toml", "app = \"bot\"\n", 0o644),
        ],
    );
    assert_refused(&src, &src.join("schema"), "symlink");
}

#[test]
fn non_utf8_name_is_refused() {
    use std::os::unix::ffi::OsStrExt;
    let src = tree();
    let name = std::ffi::OsStr::from_bytes(b"bad\xffname");
    let path = src.path().join("app").join(name);
    fs::write(&path, "x").expect("write");
    let tmp = tempfile::tempdir().expect("tmp");
    let (key, _) = keygen(tmp.path(), "k");
    let out = pack()
        .arg("build")
        .arg(src.path())
        .args(["--app", "bot", "--version", "1.0.0", "--key"])
        .arg(&key)
        .arg("--out")
        .arg(tmp.path().join("repo"))
        .output()
        .expect("build");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("not valid UTF-8"), "{:?}", text(&out));
}

#[test]
fn a_file_changed_between_the_passes_fails_the_build() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    sample_tree(&src);
    let mut opts = slipway_pack::BuildOptions::new(&src, tmp.path().join("repo"));
    opts.version = Some("1.0.0".parse().expect("version"));
    let plan = slipway_pack::plan_release(&opts).expect("plan");
    let target = src.join("app/bot/main.py");
    for (content, word) in [
        ("print('HELLO')\n", "changed"),
        ("print('hello, world')\n", "grew"),
        ("p\n", "shrank"),
    ] {
        fs::write(&target, content).expect("edit");
        let mut out = tempfile::tempfile().expect("out");
        let err = slipway_pack::build::write_archive(&plan, &mut out, 1, false)
            .expect_err("changed file");
        let text = match err {
            slipway_pack::build::ArchiveError::Source(e) => e.to_string(),
            slipway_pack::build::ArchiveError::Output(e) => panic!("output error {e}"),
        };
        assert!(text.contains("main.py") && text.contains(word), "{text}");
    }
}

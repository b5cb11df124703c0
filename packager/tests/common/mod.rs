//! Helpers shared by the packager's integration tests: run the real binary,
//! lay down source trees, make keys, find the stock tools.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;

use assert_cmd::Command;

/// The `slipway-pack` binary under test, with no inherited password or epoch.
pub fn pack() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_slipway-pack"));
    cmd.env_remove("SLIPWAY_KEY_PASSWORD")
        .env_remove("SOURCE_DATE_EPOCH");
    cmd
}

/// Fails the test with an install hint when a stock tool is missing: these
/// tests exist to keep slipway honest against the real tools.
pub fn require_tool(name: &str, package: &str) {
    let found = StdCommand::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(found, "{name} is required: apt-get install -y {package}");
}

/// Writes `files` (path, content, mode) under `root`, creating parents.
pub fn write_tree(root: &Path, files: &[(&str, &str, u32)]) {
    for (path, content, mode) in files {
        let p = root.join(path);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, content).expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).expect("chmod");
    }
}

/// A small source tree in the `app/` + `schema/` layout, with slipway.toml.
pub fn sample_tree(root: &Path) {
    write_tree(
        root,
        &[
            ("app/bot/__init__.py", "", 0o644),
            ("app/bot/main.py", "print('hello')\n", 0o644),
            ("app/run.sh", "#!/bin/sh\nexec python3 -m bot.main\n", 0o755),
            ("schema/VERSION", "1\n", 0o644),
            ("schema/migrations/001.sql", "create table t (x int);\n", 0o644),
            (
                "slipway.toml",
                "app = \"bot\"\n[schema]\nversion = 1\n[hooks]\ncheck = [\"python3\", \"-m\", \"compileall\", \"-q\", \"app\"]\n",
                0o644,
            ),
        ],
    );
    std::os::unix::fs::symlink("bot/main.py", root.join("app/main-link")).expect("symlink");
}

/// Generates an unencrypted key pair with `slipway-pack keygen`.
pub fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    pack()
        .args(["keygen", "--unencrypted", "--name", name, "--out-dir"])
        .arg(dir)
        .assert()
        .success();
    (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    )
}

/// Builds `src` into `repo` and returns the release id printed.
pub fn build(src: &Path, repo: &Path, key: &Path, version: &str, extra: &[&str]) -> String {
    let out = pack()
        .arg("build")
        .arg(src)
        .args(["--version", version, "--key"])
        .arg(key)
        .arg("--out")
        .arg(repo)
        .args(extra)
        .output()
        .expect("run build");
    assert!(
        out.status.success(),
        "build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string()
}

/// The archive of release `id` in `repo`.
pub fn archive(repo: &Path, id: &str) -> PathBuf {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    repo.join("releases").join(format!("{hex}.tar.zst"))
}

/// Every file (not directory) under `dir`, relative, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if !dir.exists() {
        return out;
    }
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry.expect("walk");
        if !entry.file_type().is_dir() {
            out.push(
                entry
                    .path()
                    .strip_prefix(dir)
                    .expect("prefix")
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    out.sort();
    out
}

/// stdout and stderr of a finished command, for messages.
pub fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

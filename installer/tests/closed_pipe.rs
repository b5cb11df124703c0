//! Every command that prints ends quietly when its standard output is a
//! closed pipe (`slipway status --json | head -1`): no panic (exit 101), no
//! error about the pipe, and the command's own exit code.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod bot_host;

use std::process::{Command, Stdio};

use bot_host::{pack_bin, Flavor, TestHost};

/// Runs `cmd` with its stdout a pipe whose read end is closed before the
/// command writes, and returns (exit code, stderr).
fn with_closed_stdout(mut cmd: Command) -> (Option<i32>, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_quiet(what: &str, (code, err): (Option<i32>, String), expected: Option<i32>) {
    assert_ne!(code, Some(101), "{what} panicked on a closed pipe: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert!(!err.contains("Broken pipe"), "{what}: {err}");
    assert_eq!(
        code, expected,
        "{what} exits as it does with an open stdout: {err}"
    );
}

#[test]
fn no_command_panics_on_a_closed_pipe() {
    let host = TestHost::new(&[]);
    let v1 = host.release("1.0.0", &Flavor::default());
    host.run_expect(&["install", &host.repo().to_string_lossy()], 0);
    host.wait_healthy("1.0.0");
    let archive = v1.archive.to_string_lossy().into_owned();
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["history"],
        vec!["history", "--json"],
        vec!["backups"],
        vec!["backups", "--json"],
        vec!["units"],
        vec!["verify"],
        vec!["check"],
        vec!["check", "--json"],
        vec!["update", "--dry-run"],
        vec!["update"],
        vec!["update", "--json"],
        vec!["install", archive.as_str(), "--dry-run"],
        vec!["gc"],
    ] {
        let code = host.run(&args).status.code();
        assert_ne!(code, Some(101), "{args:?}");
        assert_quiet(
            &format!("slipway {}", args.join(" ")),
            with_closed_stdout(host.slipway(&args)),
            code,
        );
    }
    let pubkey = host.path("keys/slipway.pub");
    for args in [
        vec!["inspect".to_string(), archive.clone()],
        vec!["inspect".to_string(), archive.clone(), "--json".to_string()],
        vec!["diff".to_string(), archive.clone(), archive.clone()],
        vec![
            "verify".to_string(),
            "--pubkey".to_string(),
            pubkey.to_string_lossy().into_owned(),
            archive.clone(),
        ],
    ] {
        let mut cmd = Command::new(pack_bin());
        cmd.args(&args);
        assert_quiet(
            &format!("slipway-pack {}", args.join(" ")),
            with_closed_stdout(cmd),
            Some(0),
        );
    }
}

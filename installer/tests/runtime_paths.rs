//! Files the app writes into its own release (issue 11, point 4), end to
//! end with the real example bot and the real `slipway-pack`: the release's
//! `runtime_paths` keep Python's `__pycache__` from making the release
//! dirty while anything else still does, the dirty-release reason names the
//! paths, and `install --force` of the running release reinstalls a clean
//! copy.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod bot_host;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use bot_host::{run_ok, stderr, stdout, Flavor, TestHost};

/// Makes `dir` writable by its owner, as a service running as root finds
/// it anyway (root ignores the read-only modes staging sets).
fn writable(dir: &Path) {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
}

/// What Python does when the service runs without
/// `PYTHONDONTWRITEBYTECODE=1`: bytecode in `__pycache__` beside the code.
fn write_bytecode_into(release: &Path) {
    for dir in ["app", "app/bot"] {
        writable(&release.join(dir));
    }
    run_ok(
        Command::new("python3")
            .args(["-m", "compileall", "-q"])
            .arg(release.join("app"))
            .env_remove("PYTHONDONTWRITEBYTECODE")
            .env_remove("PYTHONPYCACHEPREFIX"),
    );
    assert!(
        release.join("app/bot/__pycache__").is_dir(),
        "compileall wrote no __pycache__"
    );
}

#[test]
fn a_bot_writing_pycache_into_its_release_still_updates_but_a_stray_file_blocks() {
    let host = TestHost::new(&[]);
    host.release("1.0.0", &Flavor::default());
    host.run_expect(&["install", &host.repo().to_string_lossy()], 0);
    host.wait_healthy("1.0.0");
    let current = host.root().join("current");
    let manifest = fs::read_to_string(current.join("slipway/manifest.json")).unwrap();
    assert!(
        manifest.contains("\"runtime_paths\"") && manifest.contains("**/__pycache__/**"),
        "examples/bot/slipway.toml declares its bytecode:\n{manifest}"
    );

    write_bytecode_into(&current);
    let out = host.run_expect(&["verify"], 0);
    assert!(stdout(&out).contains("clean"), "{}", stdout(&out));

    // The timer's run is not skipped as dirty.
    let v2 = host.release("2.0.0", &Flavor::default());
    let o = host.json(&["update", "--auto"], 0);
    assert_eq!(o["result"], "updated", "{o}");
    assert_eq!(host.link("current"), Some(v2.dir_name()));
    host.wait_healthy("2.0.0");

    // A stray file that matches no pattern is drift; the bytecode beside it
    // is still not.
    write_bytecode_into(&current);
    fs::write(current.join("app/bot/notes.txt"), b"a note\n").unwrap();
    let out = host.run_expect(&["verify"], 1);
    let listed = stdout(&out);
    assert!(listed.contains("extra app/bot/notes.txt"), "{listed}");
    assert!(!listed.contains("__pycache__"), "{listed}");
    assert!(
        stderr(&out).contains("no longer matches its manifest"),
        "{}",
        stderr(&out)
    );

    host.release("3.0.0", &Flavor::default());
    let out = host.run_expect(&["update", "--auto", "--json"], 4);
    let o: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(o["result"], "skipped", "{o}");
    assert_eq!(o["rule"], "dirty_release", "{o}");
    let message = o["message"].as_str().unwrap();
    assert!(message.contains("extra app/bot/notes.txt"), "{message}");
    assert!(!message.contains("__pycache__"), "{message}");
    assert!(!message.contains("edited"), "{message}");
    assert!(message.contains("slipway install --force"), "{message}");
    assert_eq!(host.link("current"), Some(v2.dir_name()));
}

#[test]
fn install_force_of_the_running_release_reinstalls_a_clean_copy() {
    let host = TestHost::new(&[]);
    let v1 = host.release("1.0.0", &Flavor::default());
    let v2 = host.build("2.0.0", &Flavor::default());
    host.run_expect(&["install", &host.repo().to_string_lossy()], 0);
    host.run_expect(&["install", &v2.archive.to_string_lossy()], 0);
    host.wait_healthy("2.0.0");
    assert_eq!(host.link("previous"), Some(v1.dir_name()));

    // A file of the running release is changed on the host.
    let running = host.root().join("releases").join(v2.dir_name());
    let main = running.join("app/bot/__main__.py");
    writable(&running.join("app/bot"));
    fs::set_permissions(&main, fs::Permissions::from_mode(0o644)).unwrap();
    let mut code = fs::read_to_string(&main).unwrap();
    code.push_str("\n# patched on the host\n");
    fs::write(&main, code).unwrap();
    let out = host.run_expect(&["verify"], 1);
    assert!(
        stdout(&out).contains("modified app/bot/__main__.py"),
        "{}",
        stdout(&out)
    );

    // Without --force: nothing to do, and it says how.
    let out = host.run_expect(&["install", &v2.archive.to_string_lossy()], 0);
    assert!(
        stdout(&out).contains("already running") || stderr(&out).contains("already running"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        format!("{}{}", stdout(&out), stderr(&out)).contains("--force"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    host.run_expect(&["verify"], 1);

    // With --force: a clean copy beside it, switched to through the health
    // gate; `previous` still names the release before.
    let pid = host.bot_pid();
    let o = host.json(&["install", "--force", &v2.archive.to_string_lossy()], 0);
    assert_eq!(o["result"], "updated", "{o}");
    assert!(
        o["message"]
            .as_str()
            .unwrap()
            .contains("reinstalled bot 2.0.0"),
        "{o}"
    );
    let copy = format!("{}-r2", v2.dir_name());
    assert_eq!(host.link("current"), Some(copy.clone()));
    assert_eq!(host.link("previous"), Some(v1.dir_name()));
    host.wait_healthy("2.0.0");
    assert_ne!(host.bot_pid(), pid, "the service was restarted");
    let out = host.run_expect(&["verify"], 0);
    assert!(stdout(&out).contains("clean"), "{}", stdout(&out));
    assert!(stdout(&out).contains(&copy), "{}", stdout(&out));
    let status = host.json(&["status"], 0);
    assert_eq!(status["current"]["id"], v2.id, "{status}");
    assert_eq!(status["previous"]["version"], "1.0.0", "{status}");

    // Plain `install` of the same release now finds it running again.
    let o = host.json(&["install", &v2.archive.to_string_lossy()], 0);
    assert_eq!(o["result"], "up_to_date", "{o}");
    assert_eq!(host.link("current"), Some(copy.clone()));

    // 1.0.0 was staged before 2.0.0, which linked its unchanged files
    // (hardlinked staging): the edit in place changed 1.0.0's copy too,
    // one file in two releases. `rollback` refuses it and says how to
    // repair it, rather than go back to a release that is not what it
    // was signed as.
    let out = host.run_expect(&["rollback"], 1);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(text.contains("modified app/bot/__main__.py"), "{text}");
    assert!(text.contains("--force"), "{text}");
    assert_eq!(host.link("current"), Some(copy));
    // The repair it names: a clean copy of 1.0.0, switched to.
    let o = host.json(
        &[
            "install",
            "--allow-downgrade",
            "--force",
            &v1.archive.to_string_lossy(),
        ],
        0,
    );
    assert_eq!(o["result"], "updated", "{o}");
    host.wait_healthy("1.0.0");
    let out = host.run_expect(&["verify"], 0);
    assert!(stdout(&out).contains("clean"), "{}", stdout(&out));
}

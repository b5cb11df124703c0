//! The host's own directories are trusted only when they are safe (SPEC §6,
//! in the manner of sshd's StrictModes), and a journal is believed only
//! about paths inside the root.
//!
//! Each attack leaves everything as it was: the command refuses, names the
//! directory and the fix, and no file outside the root is touched.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod bot_host;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use bot_host::{stderr, Flavor, TestHost};

fn installed() -> (TestHost, bot_host::Release) {
    let host = TestHost::new(&[]);
    let v1 = host.build("1.0.0", &Flavor::default());
    host.run_expect(&["install", &v1.archive.to_string_lossy()], 0);
    host.wait_healthy("1.0.0");
    let v2 = host.build("2.0.0", &Flavor::default());
    (host, v2)
}

#[test]
fn symlinked_layout_directories_are_refused_before_anything_is_written() {
    let (host, v2) = installed();
    for dir in ["downloads", "state", "releases", "backups"] {
        let real = host.root().join(dir);
        let aside = host.root().join(format!("{dir}.real"));
        let elsewhere = host.path(&format!("elsewhere-{dir}"));
        fs::create_dir_all(&elsewhere).expect("elsewhere");
        fs::rename(&real, &aside).expect("move aside");
        std::os::unix::fs::symlink(&elsewhere, &real).expect("symlink");
        let out = host.run_expect(&["install", &v2.archive.to_string_lossy()], 2);
        let err = stderr(&out);
        assert!(err.contains(&real.display().to_string()), "{err}");
        assert!(err.contains("symlink"), "{err}");
        assert_eq!(
            fs::read_dir(&elsewhere).expect("read").count(),
            0,
            "slipway wrote through the symlinked {dir}/"
        );
        fs::remove_file(&real).expect("unlink");
        fs::rename(&aside, &real).expect("put back");
    }
    // Put back, the same install goes through.
    host.run_expect(&["install", &v2.archive.to_string_lossy()], 0);
}

#[test]
fn a_world_writable_state_directory_is_refused_and_a_planted_journal_deletes_nothing() {
    let (host, v2) = installed();
    let state = host.root().join("state");
    // An unprivileged user could write here: slipway refuses to go on.
    fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).expect("chmod");
    let out = host.run_expect(&["recover"], 2);
    let err = stderr(&out);
    assert!(err.contains(&state.display().to_string()), "{err}");
    assert!(err.contains("chmod go-w"), "{err}");
    fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).expect("chmod");

    // A journal planted while it was writable (or by hand) that names a
    // directory outside the root and an empty transaction id (a prefix of
    // every snapshot's name) is refused: nothing is deleted.
    let victim = host.path("victim");
    fs::create_dir_all(&victim).expect("victim");
    fs::write(victim.join("precious"), b"keep me").expect("precious");
    let _ = bot_host::http(host.port, "POST", "/admin/save");
    host.run_expect(&["install", &v2.archive.to_string_lossy()], 0);
    let snapshots_before = fs::read_dir(host.root().join("backups"))
        .expect("backups")
        .count();
    for txn in ["", "20260101T000000Z-1"] {
        let planted = serde_json::json!({
            "format": 1, "txn": txn, "op": "install", "step": "Stage",
            "started_at": "2026-01-01T00:00:00Z", "auto": false,
            "release_id": null, "version": null,
            "release_dir": victim, "staged_here": true,
            "old_release": null, "old_previous": null, "from_version": null,
            "schema_from": null, "schema_to": null, "snapshot": null,
            "data_changed": false, "quiesced": false, "failure": null, "decision": null
        });
        fs::write(
            state.join("journal.json"),
            serde_json::to_vec(&planted).expect("json"),
        )
        .expect("plant");
        let out = host.run(&["recover"]);
        assert_ne!(out.status.code(), Some(0), "a planted journal was obeyed");
        let why = if txn.is_empty() {
            "is not one slipway makes"
        } else {
            "lies outside"
        };
        assert!(stderr(&out).contains(why), "{}", stderr(&out));
        assert_eq!(fs::read(victim.join("precious")).expect("kept"), b"keep me");
        assert_eq!(
            fs::read_dir(host.root().join("backups"))
                .expect("backups")
                .count(),
            snapshots_before,
            "snapshots were deleted on a planted journal's word"
        );
    }
    assert_eq!(host.link("current"), Some(v2.dir_name()));
}

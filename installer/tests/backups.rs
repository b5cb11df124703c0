//! Backups the operator can use: `slipway backups` lists the persistence
//! snapshots, `slipway restore BACKUP` puts one back under the running
//! release, and `slipway rollback --restore-data` goes back across a
//! migration with the old release's own data. All with the real example
//! bot under the `command` backend (`examples/host/bot-ctl`).
//!
//! The crash cases need a `slipway` built with `--features
//! slipway/fault-injection` (`SLIPWAY_FAULT_AFTER=<Step>`, and
//! `SLIPWAY_FAULT_AT=restore-moved-aside`, the instant inside the restore
//! when the persistence directory has been moved aside and the restored
//! copy is not in place yet); without it they print why they skip.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod bot_host;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bot_host::{stderr, stdout, Flavor, Release, TestHost};

fn schema2() -> Flavor {
    Flavor {
        schema: Some(2),
        ..Flavor::default()
    }
}

/// Lets the bot trade, then asks it to save, so that its data changed.
fn trade_and_save(host: &TestHost) -> u64 {
    std::thread::sleep(Duration::from_millis(1200));
    let _ = bot_host::http(host.port, "POST", "/admin/save");
    host.state_json()["trades"].as_u64().unwrap_or(0)
}

/// `slipway backups --json`.
fn backups(host: &TestHost) -> Vec<serde_json::Value> {
    host.json(&["backups"], 0)
        .as_array()
        .expect("an array")
        .clone()
}

/// The backup called `name` in the list.
fn backup_named(host: &TestHost, name: &str) -> serde_json::Value {
    backups(host)
        .into_iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no backup {name} in {:?}", backups(host)))
}

fn file_name(p: &str) -> String {
    Path::new(p)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// v1 installed and healthy, trading; then v2 (`flavor`) installed over it.
fn two_releases(flavor: &Flavor) -> (TestHost, Release, Release, u64) {
    let host = TestHost::new(&[]);
    let v1 = host.build("1.0.0", &Flavor::default());
    host.run_expect(&["install", &v1.archive.to_string_lossy()], 0);
    host.wait_healthy("1.0.0");
    let trades = trade_and_save(&host);
    let v2 = host.build("2.0.0", flavor);
    host.run_expect(&["install", &v2.archive.to_string_lossy()], 0);
    host.wait_healthy("2.0.0");
    (host, v1, v2, trades)
}

#[test]
fn backups_lists_the_pre_update_snapshot_with_its_release_schema_and_reason() {
    let (host, v1, _v2, _) = two_releases(&schema2());
    let list = backups(&host);
    let of_v1 = list
        .iter()
        .find(|b| b["release"] == v1.dir_name().as_str())
        .unwrap_or_else(|| panic!("no backup of {}: {list:?}", v1.dir_name()));
    assert_eq!(of_v1["reason"], "pre-update", "{of_v1}");
    assert_eq!(of_v1["version"], "1.0.0", "{of_v1}");
    assert_eq!(of_v1["schema"], 1, "{of_v1}");
    assert!(of_v1["files"].as_u64().unwrap() >= 1, "{of_v1}");
    assert!(
        of_v1["taken_at"].as_str().unwrap().ends_with('Z'),
        "{of_v1}"
    );
    let dir = PathBuf::from(of_v1["dir"].as_str().unwrap());
    assert!(dir.join("data").is_dir(), "{}", dir.display());
    // Newest first.
    let times: Vec<u64> = list
        .iter()
        .map(|b| b["created_unix"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");

    // The table says the same.
    let out = host.run_expect(&["backups"], 0);
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.starts_with(of_v1["name"].as_str().unwrap()))
        .unwrap_or_else(|| panic!("{text}"));
    for word in ["pre-update", &v1.dir_name()] {
        assert!(line.contains(word), "{line}");
    }
    assert!(text.starts_with("NAME"), "{text}");
}

#[test]
fn rollback_across_a_migration_refuses_and_names_restore_data() {
    let (host, _v1, v2, _) = two_releases(&schema2());
    let before = backups(&host).len();
    let out = host.run_expect(&["rollback"], 1);
    assert!(stderr(&out).contains("--restore-data"), "{}", stderr(&out));
    assert!(stderr(&out).contains("schema"), "{}", stderr(&out));
    assert_eq!(host.link("current"), Some(v2.dir_name()));
    assert_eq!(host.data_schema(), 2);
    host.wait_healthy("2.0.0");
    // A refusal before the snapshot: no backup was taken.
    assert_eq!(backups(&host).len(), before);
}

#[test]
fn rollback_with_restore_data_returns_the_old_release_with_its_old_data_and_healthy() {
    let (host, v1, v2, trades_v1) = two_releases(&schema2());
    // v2 trades on the migrated data.
    trade_and_save(&host);
    let of_v1 = backups(&host)
        .into_iter()
        .find(|b| b["release"] == v1.dir_name().as_str())
        .expect("a backup of v1's data");
    let v1_data = PathBuf::from(of_v1["dir"].as_str().unwrap()).join("data");
    let v1_digest = bot_host::tree_digest(&v1_data);

    let o = host.json(&["rollback", "--restore-data"], 0);
    assert_eq!(o["result"], "updated", "{o}");
    assert!(
        o["message"]
            .as_str()
            .unwrap()
            .contains(of_v1["name"].as_str().unwrap()),
        "{o}"
    );
    assert_eq!(host.link("current"), Some(v1.dir_name()));
    assert_eq!(host.link("previous"), Some(v2.dir_name()));
    host.wait_healthy("1.0.0");
    // v1's data, byte for byte (the bot autosaves only after 10 s).
    assert_eq!(bot_host::tree_digest(&host.data()), v1_digest);
    assert_eq!(host.data_schema(), 1);
    let state = host.state_json();
    assert!(state.get("schema").is_none(), "{state}");
    assert!(state["trades"].as_u64().unwrap() >= trades_v1, "{state}");
    let (_, body) = host.health().expect("health");
    assert_eq!(body["paused"], false, "{body}");

    // The data rolled back from is kept, as a backup of v2's data.
    let kept = backup_named(&host, &file_name(o["snapshot"].as_str().expect("snapshot")));
    assert_eq!(kept["release"], v2.dir_name().as_str(), "{kept}");
    assert_eq!(kept["schema"], 2, "{kept}");
    let status = host.json(&["status"], 0);
    assert_eq!(status["bad_releases"][0]["id"], v2.id, "{status}");
}

#[test]
fn restore_of_an_older_backup_works_while_the_bot_runs_and_keeps_a_pre_restore_backup() {
    // v1 -> v1.1 (same schema): the update's snapshot is a backup of v1's
    // data, older than what v1.1 has written since.
    let (host, v1, v11, _) = two_releases(&Flavor::default());
    let older = backups(&host)
        .into_iter()
        .find(|b| b["release"] == v1.dir_name().as_str())
        .expect("a backup of v1's data");
    let name = older["name"].as_str().unwrap().to_string();
    let older_data = PathBuf::from(older["dir"].as_str().unwrap()).join("data");
    let trades_then: u64 = serde_json::from_str::<serde_json::Value>(
        &fs::read_to_string(older_data.join("state.json")).unwrap(),
    )
    .unwrap()["trades"]
        .as_u64()
        .unwrap();
    let trades_now = trade_and_save(&host);
    assert!(trades_now > trades_then);
    let pid = host.bot_pid();

    let o = host.json(&["restore", &name, "--yes"], 0);
    assert_eq!(o["op"], "restore", "{o}");
    assert_eq!(o["result"], "updated", "{o}");
    host.wait_healthy(&v11.version);
    assert_eq!(
        bot_host::tree_digest(&host.data()),
        bot_host::tree_digest(&older_data),
        "the backup's data is back"
    );
    assert_ne!(host.bot_pid(), pid, "restarted on the restored data");
    let (_, body) = host.health().expect("health");
    assert_eq!(body["paused"], false, "{body}");
    // The release did not change.
    assert_eq!(host.link("current"), Some(v11.dir_name()));
    assert_eq!(host.link("previous"), Some(v1.dir_name()));
    // The data from before the restore is kept.
    let snap = o["snapshot"].as_str().expect("snapshot");
    let kept = backup_named(&host, &file_name(snap));
    assert_eq!(kept["reason"], "pre-restore", "{kept}");
    assert_eq!(kept["release"], v11.dir_name().as_str(), "{kept}");
    // As the app saved it when asked before the restore: nothing it had
    // traded is lost.
    let kept_state: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(PathBuf::from(snap).join("data/state.json")).unwrap(),
    )
    .unwrap();
    assert!(
        kept_state["trades"].as_u64().unwrap() >= trades_now,
        "{kept_state}"
    );
    let history = host.json(&["history"], 0);
    let last = history.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["op"], "restore", "{history}");
    // Nothing was bad-listed.
    let status = host.json(&["status"], 0);
    assert_eq!(status["bad_releases"], serde_json::json!([]), "{status}");
}

#[test]
fn restore_of_a_bogus_or_unreadable_backup_exits_2_with_nothing_changed() {
    let (host, _v1, _v2, _) = two_releases(&Flavor {
        schema: Some(2),
        min_compatible: Some(2),
        ..Flavor::default()
    });
    // v1's data is at schema 1, which v2 (schemas 2 to 2) does not read.
    let old = backups(&host)
        .into_iter()
        .find(|b| b["schema"] == 1)
        .expect("a backup at schema 1");
    let old_name = old["name"].as_str().unwrap().to_string();
    fs::create_dir_all(host.root().join("backups/20990101T000000Z-1.partial/data")).unwrap();
    host.stop_bot();
    let whole = || {
        (
            bot_host::snapshot_tree(&host.root(), &["run"]),
            bot_host::snapshot_tree(&host.data(), &[]),
        )
    };
    let before = whole();
    for name in [
        "no-such-backup",
        "../state",
        ".hidden",
        "20990101T000000Z-1.partial",
        "",
        old_name.as_str(),
    ] {
        let out = host.run_expect(&["restore", name, "--yes"], 2);
        assert!(
            stderr(&out).contains("nothing was changed"),
            "{name}: {}",
            stderr(&out)
        );
        assert_eq!(whole(), before, "{name} changed something");
    }
    let out = host.run_expect(&["restore", &old_name, "--yes"], 2);
    assert!(stderr(&out).contains("schema 1"), "{}", stderr(&out));
}

#[test]
fn a_forced_restore_the_service_cannot_run_on_puts_the_data_from_before_back() {
    // v2 reads only schema 2; the backup of v1's data is at schema 1.
    let (host, _v1, v2, _) = two_releases(&Flavor {
        schema: Some(2),
        min_compatible: Some(2),
        ..Flavor::default()
    });
    let old = backups(&host)
        .into_iter()
        .find(|b| b["schema"] == 1)
        .expect("a backup at schema 1");
    let name = old["name"].as_str().unwrap().to_string();
    let o = host.json(&["restore", &name, "--yes", "--force"], 1);
    assert_eq!(o["op"], "restore", "{o}");
    assert_eq!(o["cause"], "rollback_unhealthy", "{o}");
    assert!(
        o["message"]
            .as_str()
            .unwrap()
            .contains("from before the restore is back"),
        "{o}"
    );
    host.wait_healthy("2.0.0");
    assert_eq!(host.data_schema(), 2, "the data from before is back");
    let snap = PathBuf::from(o["snapshot"].as_str().expect("snapshot"));
    assert_eq!(
        bot_host::tree_digest(&host.data()),
        bot_host::tree_digest(&snap.join("data"))
    );
    assert_eq!(host.link("current"), Some(v2.dir_name()));
    let (_, body) = host.health().expect("health");
    assert_eq!(body["paused"], false, "{body}");
    let status = host.json(&["status"], 0);
    assert_eq!(status["bad_releases"], serde_json::json!([]), "{status}");
}

#[test]
fn gc_keeps_the_backup_rollback_restore_data_needs_whatever_the_count() {
    let (host, v1, _v2, _) = two_releases(&schema2());
    assert!(backups(&host).len() >= 2, "{:?}", backups(&host));
    host.write_config(&[("update", "keep_snapshots = 0")]);
    host.run_expect(&["gc"], 0);
    let left = backups(&host);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["release"], v1.dir_name().as_str(), "{left:?}");
    host.json(&["rollback", "--restore-data"], 0);
    host.wait_healthy("1.0.0");
    assert_eq!(host.data_schema(), 1);
}

/// `restore` killed by `env` (a step or a point inside one), then
/// `recover`: the data is complete and is either the data from before the
/// restore or the backup's, as `restored` says; the bot runs on it, healthy
/// and not paused, and nothing is left half done.
fn killed_restore(env: (&str, &str), restored: bool) {
    bot_host::require_fault_injection();
    let (host, v1, v11, _) = two_releases(&Flavor::default());
    let older = backups(&host)
        .into_iter()
        .find(|b| b["release"] == v1.dir_name().as_str())
        .expect("a backup of v1's data");
    let name = older["name"].as_str().unwrap().to_string();
    let older_data = PathBuf::from(older["dir"].as_str().unwrap()).join("data");
    trade_and_save(&host);

    let mut cmd = host.slipway(&["restore", &name, "--yes"]);
    cmd.env(env.0, env.1);
    let out = bot_host::run_with_deadline(cmd, Duration::from_secs(120));
    assert_eq!(out.status.signal(), Some(9), "not killed: {}", stderr(&out));
    let journal: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(host.root().join("state/journal.json")).expect("journal left"),
    )
    .unwrap();
    assert_eq!(journal["op"], "restore", "{journal}");
    let pre_restore = PathBuf::from(journal["snapshot"]["dir"].as_str().expect("snapshot"));

    let o = host.json(&["recover"], 0);
    assert_eq!(o["result"], "recovered", "{o}");
    assert!(!host.root().join("state/journal.json").exists());
    host.wait_healthy(&v11.version);
    let (_, body) = host.health().expect("health");
    assert_eq!(body["paused"], false, "{body}");
    let expected = if restored {
        older_data
    } else {
        pre_restore.join("data")
    };
    assert_eq!(
        bot_host::tree_digest(&host.data()),
        bot_host::tree_digest(&expected),
        "the data is {} tree, complete",
        if restored { "the restored" } else { "the old" }
    );
    assert_eq!(host.link("current"), Some(v11.dir_name()));
    let parent = host.data().parent().unwrap().to_path_buf();
    for e in fs::read_dir(parent).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.contains(".slipway-"), "restore leftover: {n}");
    }
    for e in fs::read_dir(host.root().join("backups")).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.ends_with(".partial"), "partial snapshot left: {n}");
    }
    // The backup is still there, and restoring it now works.
    host.json(&["restore", &name, "--yes"], 0);
    host.wait_healthy(&v11.version);
}

#[test]
fn a_restore_killed_before_its_data_step_is_undone() {
    killed_restore(("SLIPWAY_FAULT_AFTER", "Migrate"), false);
}

#[test]
fn a_restore_killed_with_the_data_moved_aside_is_undone_with_the_old_data_complete() {
    killed_restore(("SLIPWAY_FAULT_AT", "restore-moved-aside"), false);
}

#[test]
fn a_restore_killed_before_its_health_gate_puts_the_old_data_back() {
    killed_restore(("SLIPWAY_FAULT_AFTER", "HealthGate"), false);
}

#[test]
fn a_restore_killed_after_its_commit_keeps_the_restored_data() {
    killed_restore(("SLIPWAY_FAULT_AFTER", "Report"), true);
}

//! The `slipway` binary end to end, with the real example bot under the
//! `command` backend (`examples/host/bot-ctl`), releases built by the real
//! `slipway-pack`, in temporary directories. Each test starts its own bot
//! on its own port and stops it when done.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod bot_host;

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bot_host::{stderr, stdout, Flavor, TestHost};

fn schema2() -> Flavor {
    Flavor {
        schema: Some(2),
        ..Flavor::default()
    }
}

fn unhealthy(schema: u32) -> Flavor {
    Flavor {
        schema: Some(schema),
        fail_health: true,
        ..Flavor::default()
    }
}

#[test]
fn update_happy_path_then_unhealthy_release_is_flipped_back_with_data_restored() {
    // Restore on every flip back (the default restores only across a
    // schema change), keeping what the failed release wrote aside.
    let host = TestHost::new(&[("health", "restore_data = \"always\"")]);
    let v1 = host.release("1.0.0", &Flavor::default());

    // First install, from the repository.
    let o = host.json(&["install", &host.repo().to_string_lossy()], 0);
    assert_eq!(o["result"], "updated", "{o}");
    assert_eq!(host.link("current"), Some(v1.dir_name()));
    assert_eq!(host.link("previous"), None);
    host.wait_healthy("1.0.0");
    let pid1 = host.bot_pid().expect("bot pid");

    // v2 raises the schema: the migrate hook runs while v1 is quiesced.
    let v2 = host.release("2.0.0", &schema2());
    let o = host.json(&["update"], 0);
    assert_eq!(o["result"], "updated", "{o}");
    assert_eq!(o["from_version"], "1.0.0");
    assert_eq!(o["version"], "2.0.0");
    assert!(o["switch_us"].as_u64().is_some(), "{o}");
    assert_eq!(host.link("current"), Some(v2.dir_name()));
    assert_eq!(host.link("previous"), Some(v1.dir_name()));
    host.wait_healthy("2.0.0");
    assert_ne!(host.bot_pid(), Some(pid1), "the service was restarted");
    assert_eq!(host.data_schema(), 2, "migrated");
    assert_eq!(host.state_json()["schema"], 2, "the migrate step ran");

    // The dashboard files and the history.
    let version: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(host.data().join("meta/version.json")).unwrap())
            .unwrap();
    assert_eq!(version["version"], "2.0.0");
    assert_eq!(version["release_id"], v2.id);
    assert_eq!(version["previous_version"], "1.0.0");
    let update_state: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(host.data().join("meta/update_state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(update_state["last_result"], "updated");
    assert_eq!(update_state["current_version"], "2.0.0");
    let history = host.json(&["history"], 0);
    let results: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["updated", "updated"], "{history}");
    let status = host.json(&["status"], 0);
    assert_eq!(status["current"]["version"], "2.0.0", "{status}");
    assert_eq!(status["current"]["id"], v2.id);
    assert_eq!(status["previous"]["version"], "1.0.0");
    assert_eq!(status["auto_update"]["enabled"], true);
    assert!(status["journal"].is_null());
    // Manual runs never use up the timer's attempts.
    assert_eq!(status["attempts_today"], 0);

    // The bot quiesced (HTTP) before it was stopped for the restart.
    let log = host.bot_log();
    let paused = log
        .find("paused source=http")
        .expect("the bot logged the quiesce");
    let stopping = log[paused..].find("stopping").map(|i| i + paused);
    let started_v2 = log.find("starting version=2.0.0").expect("v2 started");
    assert!(
        stopping.is_some_and(|s| s < started_v2),
        "quiesce, then stop, then the new release:\n{log}"
    );

    // v3 fails its health check: flipped back, data restored, bad-listed.
    let trades_before = host.state_json()["trades"].as_u64().unwrap();
    let v3 = host.release("3.0.0", &unhealthy(2));
    let o = host.json(&["update"], 3);
    assert_eq!(o["result"], "rolled_back", "{o}");
    assert!(o["flip_back_us"].as_u64().is_some(), "{o}");
    assert_eq!(host.link("current"), Some(v2.dir_name()));
    assert_eq!(host.link("previous"), Some(v1.dir_name()));
    host.wait_healthy("2.0.0");
    let snapshot =
        std::path::PathBuf::from(o["snapshot"].as_str().expect("snapshot in the outcome"));
    assert_eq!(
        bot_host::tree_digest(&host.data()),
        bot_host::tree_digest(&snapshot.join("data")),
        "the persistence is byte-identical to the snapshot taken while v2 was paused"
    );
    let message = o["message"].as_str().unwrap_or_default();
    let kept = message
        .split("is kept in ")
        .nth(1)
        .map(|rest| std::path::PathBuf::from(rest.split(';').next().unwrap_or(rest).trim()))
        .expect("the message names the kept-aside copy");
    assert!(kept.join("data/state.json").is_file(), "{message}");
    let trades_after = host.state_json()["trades"].as_u64().unwrap();
    assert!(
        trades_after >= trades_before,
        "no trade lost: {trades_before} before, {trades_after} after"
    );
    let status = host.json(&["status"], 0);
    let bad: Vec<&str> = status["bad_releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(bad, [v3.id.as_str()]);
    assert_eq!(status["failures_today"], 1);
    assert_eq!(status["last_attempt"]["result"], "rolled_back");
    let banner = fs::read_to_string(host.root().join("state/banner.txt")).unwrap();
    assert!(banner.starts_with("ROLLED BACK"), "{banner}");

    // Never retried automatically; a direct install is refused without --force.
    let o = host.json(&["update"], 0);
    assert_eq!(o["result"], "up_to_date", "{o}");
    assert!(o["message"].as_str().unwrap().contains("bad list"), "{o}");
    let out = host.run_expect(&["install", &v3.archive.to_string_lossy()], 4);
    assert!(stderr(&out).contains("bad list"), "{}", stderr(&out));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(host.link("current"), Some(v2.dir_name()));

    // The installed tree is clean.
    host.run_expect(&["verify"], 0);
}

#[test]
fn failing_check_hook_fails_without_touching_the_service() {
    let host = TestHost::new(&[]);
    let v1 = host.build("1.0.0", &Flavor::default());
    host.run_expect(&["install", &v1.archive.to_string_lossy()], 0);
    host.wait_healthy("1.0.0");
    let pid = host.bot_pid().expect("pid");
    let log_before = host.bot_log();

    let v2 = host.build(
        "2.0.0",
        &Flavor {
            failing_check: true,
            ..Flavor::default()
        },
    );
    let out = host.run_expect(&["install", &v2.archive.to_string_lossy()], 1);
    let err = stderr(&out);
    assert!(err.contains("slipway: error:"), "{err}");
    assert!(err.contains("the release is broken"), "{err}");
    assert!(err.contains("hint:"), "{err}");

    // Never restarted, never quiesced.
    assert_eq!(host.bot_pid(), Some(pid));
    let (code, body) = host.health().expect("bot answers");
    assert_eq!(code, 200);
    assert_eq!(body["version"], "1.0.0");
    assert_eq!(body["paused"], false);
    let new_log = &host.bot_log()[log_before.len()..];
    assert!(!new_log.contains("paused"), "{new_log}");
    assert!(!new_log.contains("stopping"), "{new_log}");
    assert_eq!(host.link("current"), Some(v1.dir_name()));
    assert!(
        !host.root().join("releases").join(v2.dir_name()).exists(),
        "the failed release was removed"
    );
    let status = host.json(&["status"], 0);
    assert_eq!(status["last_attempt"]["result"], "failed");
    assert_eq!(status["last_attempt"]["cause"], "check_failed", "{status}");
    assert_eq!(status["bad_releases"][0]["id"], v2.id);
    assert_eq!(status["failures_today"], 1, "{status}");
}

#[test]
fn second_concurrent_install_exits_5_naming_the_holder() {
    // A slow host check keeps the first run inside its transaction.
    let host = TestHost::new(&[("hooks", "check = [[\"sleep\", \"3\"]]")]);
    let v1 = host.build("1.0.0", &Flavor::default());
    let mut first = host
        .slipway(&["install", &v1.archive.to_string_lossy()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("first install");
    let journal = host.root().join("state/journal.json");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !journal.exists() {
        assert!(Instant::now() < deadline, "the first install never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = host.run_expect(&["install", &v1.archive.to_string_lossy()], 5);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("locked by pid {}", first.id())),
        "{err}"
    );
    let status = first.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
    assert_eq!(host.link("current"), Some(v1.dir_name()));
    // With --wait the second run waits its turn instead.
    let v2 = host.build("2.0.0", &Flavor::default());
    let mut a = host
        .slipway(&["install", &v2.archive.to_string_lossy()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("install v2");
    while !journal.exists() {
        assert!(Instant::now() < deadline + Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = host.run_expect(&["status", "--json"], 0);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        !status["journal"].is_null(),
        "status shows the run in flight"
    );
    let out = host.run(&["install", "--wait", &v2.archive.to_string_lossy()]);
    assert_eq!(a.wait().unwrap().code(), Some(0));
    // The waiting run found v2 already running: nothing to do.
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("already running"), "{}", stdout(&out));
}

#[test]
fn dry_run_changes_nothing_under_the_root() {
    let host = TestHost::new(&[]);
    host.release("1.0.0", &Flavor::default());
    host.run_expect(&["install", &host.repo().to_string_lossy()], 0);
    host.wait_healthy("1.0.0");
    let v2 = host.release("2.0.0", &schema2());
    // run/ is bot-ctl's (the bot appends to its log there).
    let before = bot_host::snapshot_tree(&host.root(), &["run"]);
    let out = host.run_expect(&["install", "--dry-run", &v2.archive.to_string_lossy()], 0);
    let text = stdout(&out);
    assert!(text.contains("dry run"), "{text}");
    assert!(text.contains("2.0.0"), "{text}");
    assert!(text.contains("checks: passed"), "{text}");
    assert!(text.contains("migrate hook would run"), "{text}");
    let out = host.run_expect(&["update", "--dry-run", "--json"], 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["version"], "2.0.0");
    assert_eq!(v["migrates"], true);
    assert!(v["diff"].is_object(), "{v}");
    let check = host.json(&["check"], 0);
    assert_eq!(check["update_available"], true, "{check}");
    assert_eq!(check["candidate"]["version"], "2.0.0");
    let after = bot_host::snapshot_tree(&host.root(), &["run"]);
    assert_eq!(before, after, "nothing under the root changed");
    assert_eq!(
        host.health().map(|h| h.1["version"].clone()),
        Some("1.0.0".into())
    );
}

#[test]
fn unknown_config_key_exits_2_naming_the_key_and_the_file() {
    let host = TestHost::new(&[("update", "chanel = \"beta\"")]);
    let out = host.run_expect(&["status"], 2);
    let err = stderr(&out);
    assert!(err.contains("chanel"), "{err}");
    assert!(
        err.contains(&host.config_path.display().to_string()),
        "{err}"
    );
    assert!(err.starts_with("slipway: error:"), "{err}");
    assert!(err.contains("hint:"), "{err}");
    // Bad usage is 2 as well.
    let out = Command::new(bot_host::slipway_bin())
        .args(["install"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // An unusable repository URL is a configuration error (HTTP sources
    // themselves are tested in http_channel.rs).
    let host = TestHost::new(&[(
        "update",
        "source = \"https://user:pw@releases.example.com/bot\"",
    )]);
    let out = host.run_expect(&["update"], 2);
    assert!(stderr(&out).contains("token_file"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("pw@"), "{}", stderr(&out));
}

#[test]
fn ineligible_update_exits_4_with_the_reason() {
    let host = TestHost::new(&[("paths", "max_save_age_minutes = 1")]);
    let v1 = host.build("1.0.0", &Flavor::default());
    // A persistence save two hours old: the fresh-save rule says no.
    fs::create_dir_all(host.data()).unwrap();
    fs::write(host.data().join("state.json"), b"{\"trades\": 7}\n").unwrap();
    let touched = Command::new("touch")
        .args(["-d", "2 hours ago"])
        .arg(host.data().join("state.json"))
        .status()
        .unwrap();
    assert!(touched.success());
    let out = host.run_expect(&["install", "--json", &v1.archive.to_string_lossy()], 4);
    let o: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(o["result"], "skipped");
    assert_eq!(o["rule"], "stale_save", "{o}");
    assert!(stderr(&out).contains("stale_save"), "{}", stderr(&out));
    assert!(host.link("current").is_none());
    let status = host.json(&["status"], 0);
    assert_eq!(status["last_attempt"]["result"], "skipped");

    // Auto-update off (the seed's BOT_AUTO_UPDATE=0): `update --auto` skips.
    let mut host2 = TestHost::new(&[]);
    host2.env.push(("BOT_AUTO_UPDATE".into(), "0".into()));
    host2.release("1.0.0", &Flavor::default());
    let out = host2.run_expect(&["update", "--auto"], 4);
    assert!(
        stderr(&out).contains("auto-update is off: BOT_AUTO_UPDATE=0"),
        "{}",
        stderr(&out)
    );
    // A skip is an ordinary end of a timer run, not an error.
    assert!(!stderr(&out).contains("error"), "{}", stderr(&out));
    // status and enable name the setting, and enable does not pretend.
    let text = stdout(&host2.run_expect(&["status"], 0));
    assert!(
        text.contains("auto-update: DISABLED: BOT_AUTO_UPDATE=0 in slipway's environment")
            && text.contains("`slipway enable` cannot"),
        "{text}"
    );
    let out = host2.run_expect(&["enable"], 0);
    assert!(
        stdout(&out).contains("it stays OFF: BOT_AUTO_UPDATE=0"),
        "{}",
        stdout(&out)
    );
    // A manual update still works.
    host2.run_expect(&["update"], 0);
}

#[test]
fn repeated_failures_disable_auto_update_until_enable() {
    let host = TestHost::new(&[("update", "max_failures_per_day = 2")]);
    host.release("1.0.0", &Flavor::default());
    host.run_expect(&["update", "--auto"], 0);
    host.wait_healthy("1.0.0");
    let broken = Flavor {
        failing_check: true,
        ..Flavor::default()
    };
    let v2 = host.release("2.0.0", &broken);
    host.run_expect(&["update", "--auto"], 1);
    // Bad-listed now: the timer does not retry it...
    let o = host.json(&["update", "--auto"], 0);
    assert_eq!(o["result"], "up_to_date", "{o}");
    // ...a forced manual retry fails again: the second failure today.
    host.run_expect(&["install", "--force", &v2.archive.to_string_lossy()], 1);
    let status = host.json(&["status"], 0);
    assert_eq!(status["auto_update"]["enabled"], false, "{status}");
    assert_eq!(status["failures_today"], 2);
    let out = host.run_expect(&["update", "--auto"], 4);
    assert!(stderr(&out).contains("slipway enable"), "{}", stderr(&out));
    let text = stdout(&host.run_expect(&["status"], 0));
    assert!(text.contains("DISABLED"), "{text}");

    // enable says what it changed, the failure count included.
    let out = host.run_expect(&["enable"], 0);
    assert!(
        stdout(&out).contains("auto-update enabled (it was disabled by failures")
            && stdout(&out).contains("today's failure count (2) reset to 0"),
        "{}",
        stdout(&out)
    );
    let status = host.json(&["status"], 0);
    assert_eq!(status["auto_update"]["enabled"], true);
    assert_eq!(status["failures_today"], 0);
    let v3 = host.release("3.0.0", &Flavor::default());
    let o = host.json(&["update", "--auto"], 0);
    assert_eq!(o["result"], "updated", "{o}");
    assert_eq!(host.link("current"), Some(v3.dir_name()));

    // The operator can switch it off again by hand.
    host.run_expect(&["disable", "--reason", "maintenance window"], 0);
    let out = host.run_expect(&["update", "--auto"], 4);
    assert!(
        stderr(&out).contains("maintenance window"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn rollback_returns_to_previous_and_keeps_the_release_off_auto_update() {
    let host = TestHost::new(&[]);
    let v1 = host.release("1.0.0", &Flavor::default());
    host.run_expect(&["update"], 0);
    let v2 = host.release("2.0.0", &Flavor::default());
    host.run_expect(&["update"], 0);
    host.wait_healthy("2.0.0");
    let o = host.json(&["rollback"], 0);
    assert_eq!(o["result"], "updated", "{o}");
    assert_eq!(host.link("current"), Some(v1.dir_name()));
    assert_eq!(host.link("previous"), Some(v2.dir_name()));
    host.wait_healthy("1.0.0");
    // The timer does not undo the operator's rollback.
    let o = host.json(&["update", "--auto"], 0);
    assert_eq!(o["result"], "up_to_date", "{o}");
    assert_eq!(host.link("current"), Some(v1.dir_name()));
    // Rolling back again goes forward to v2.
    host.run_expect(&["rollback"], 0);
    host.wait_healthy("2.0.0");
}

#[test]
fn rollback_past_a_migration_is_refused() {
    let host = TestHost::new(&[]);
    let v1 = host.release("1.0.0", &Flavor::default());
    host.run_expect(&["update"], 0);
    host.release("2.0.0", &schema2());
    host.run_expect(&["update"], 0);
    host.wait_healthy("2.0.0");
    let out = host.run_expect(&["rollback"], 1);
    assert!(stderr(&out).contains("schema"), "{}", stderr(&out));
    assert_ne!(host.link("current"), Some(v1.dir_name()));
    host.wait_healthy("2.0.0");
    // A refusal, not a failure: nothing counted, nothing bad-listed.
    let status = host.json(&["status"], 0);
    assert_eq!(status["last_attempt"]["result"], "refused", "{status}");
    assert_eq!(status["last_attempt"]["cause"], "data_too_new", "{status}");
    assert_eq!(status["failures_today"], 0, "{status}");
    assert_eq!(status["bad_releases"], serde_json::json!([]), "{status}");
}

#[test]
fn auto_restart_false_stages_and_apply_switches() {
    let host = TestHost::new(&[("update", "auto_restart = false")]);
    let v1 = host.release("1.0.0", &Flavor::default());
    let o = host.json(&["update"], 0);
    assert_eq!(o["result"], "ready", "{o}");
    assert!(host.link("current").is_none());
    assert!(host.root().join("releases").join(v1.dir_name()).is_dir());
    let text = stdout(&host.run_expect(&["status"], 0));
    assert!(text.contains("update ready"), "{text}");
    host.run_expect(&["apply"], 0);
    assert_eq!(host.link("current"), Some(v1.dir_name()));
    host.wait_healthy("1.0.0");
    let pid = host.bot_pid();

    let v2 = host.release("2.0.0", &schema2());
    let o = host.json(&["update"], 0);
    assert_eq!(o["result"], "ready", "{o}");
    assert_eq!(host.bot_pid(), pid, "nothing restarted");
    assert_eq!(host.data_schema(), 1, "nothing migrated");
    let status = host.json(&["status"], 0);
    assert_eq!(status["pending"]["version"], "2.0.0");
    let update_state = fs::read_to_string(host.data().join("meta/update_state.json")).unwrap();
    assert!(
        update_state.contains("\"update_ready\": \"2.0.0\""),
        "{update_state}"
    );
    // Polling again keeps it ready; `apply` finishes it.
    let o = host.json(&["update"], 0);
    assert_eq!(o["result"], "ready", "{o}");
    let o = host.json(&["apply"], 0);
    assert_eq!(o["result"], "updated", "{o}");
    assert_eq!(host.link("current"), Some(v2.dir_name()));
    host.wait_healthy("2.0.0");
    assert_eq!(host.data_schema(), 2);
    assert!(host.json(&["status"], 0)["pending"].is_null());
    let o = host.json(&["apply"], 0);
    assert_eq!(o["result"], "up_to_date", "{o}");
}

#[test]
fn units_prints_a_timer_a_oneshot_service_and_the_recover_unit() {
    let host = TestHost::new(&[("update", "interval_minutes = 20")]);
    let out = host.run_expect(&["units"], 0);
    let text = stdout(&out);
    assert!(text.contains("Type=oneshot"), "{text}");
    assert!(text.contains("update --auto"), "{text}");
    assert!(text.contains("OnUnitActiveSec=20min"), "{text}");
    assert!(text.contains("RandomizedDelaySec=300s"), "{text}");
    assert!(
        text.contains("OnFailure=slipway-recover.service\n"),
        "{text}"
    );
    assert!(text.contains(" recover\n"), "{text}");
    let dir = host.path("units");
    fs::create_dir(&dir).unwrap();
    host.run_expect(&["units", "--write", &dir.to_string_lossy()], 0);
    // What --write writes is what `units` prints, file by file.
    for name in [
        "slipway-update.service",
        "slipway-update.timer",
        "slipway-recover.service",
    ] {
        let written = fs::read_to_string(dir.join(name)).unwrap();
        assert!(
            text.contains(&format!("# {name}\n{written}")),
            "{name}:\n{written}\n---\n{text}"
        );
    }
    let journal = host.root().join("state/journal.json");
    let recover = fs::read_to_string(dir.join("slipway-recover.service")).unwrap();
    assert!(
        recover.contains(&format!("ConditionPathExists={}\n", journal.display())),
        "{recover}"
    );
}

#[test]
fn unhealthy_first_install_leaves_nothing_running() {
    let host = TestHost::new(&[]);
    let v1 = host.build("1.0.0", &unhealthy(1));
    let o = host.json(&["install", &v1.archive.to_string_lossy()], 3);
    assert_eq!(o["result"], "rolled_back", "{o}");
    assert_eq!(host.link("current"), None, "no release to go back to");
    assert!(host.health().is_none(), "the failing release was stopped");
    let status = host.json(&["status"], 0);
    assert_eq!(status["bad_releases"][0]["id"], v1.id, "{status}");
    assert!(status["current"].is_null());
}

#[test]
fn refused_quiesce_aborts_and_leaves_the_app_running_unpaused() {
    let host = TestHost::new(&[]);
    let v1 = host.build("1.0.0", &Flavor::default());
    host.run_expect(&["install", &v1.archive.to_string_lossy()], 0);
    host.wait_healthy("1.0.0");
    let pid = host.bot_pid();
    // A quiesce endpoint the app does not have: no acknowledgement.
    let bad = format!(
        "quiesce_url = \"http://127.0.0.1:{}/admin/nope\"",
        host.port
    );
    let resume = format!(
        "resume_url = \"http://127.0.0.1:{}/admin/resume\"",
        host.port
    );
    host.write_config(&[("service", &bad), ("service", &resume)]);
    let v2 = host.build("2.0.0", &schema2());
    let out = host.run_expect(&["install", &v2.archive.to_string_lossy()], 1);
    assert!(stderr(&out).contains("quiesce"), "{}", stderr(&out));
    assert_eq!(host.bot_pid(), pid, "not restarted");
    assert_eq!(host.link("current"), Some(v1.dir_name()));
    assert_eq!(host.data_schema(), 1, "not migrated");
    let (code, body) = host.health().expect("health");
    assert_eq!(code, 200);
    assert_eq!(body["paused"], false);
    // The app (the host) failed, not the release: never bad-listed, but
    // the app was disturbed, so it counts as a failure.
    let status = host.json(&["status"], 0);
    assert_eq!(
        status["last_attempt"]["cause"], "host_service_paused",
        "{status}"
    );
    assert_eq!(status["bad_releases"], serde_json::json!([]), "{status}");
    assert_eq!(status["failures_today"], 1, "{status}");
}

#[test]
fn channel_index_must_be_signed_fresh_and_never_older_than_seen() {
    let host = TestHost::new(&[]);
    host.release("1.0.0", &Flavor::default());
    let channels = host.repo().join("channels");
    let old = host.path("old-index");
    bot_host::copy_tree(&channels, &old);
    host.run_expect(&["update"], 0);
    host.wait_healthy("1.0.0");

    // Expired: refused, unless accepted once with --allow-expired.
    let v2 = host.release("2.0.0", &Flavor::default());
    bot_host::run_ok(Command::new(bot_host::pack_bin()).args([
        "refresh",
        "--repo",
        &host.repo().to_string_lossy(),
        "--channel",
        "stable",
        "--key",
        &host.path("keys/slipway.key").to_string_lossy(),
        "--expires-in",
        "1s",
    ]));
    std::thread::sleep(Duration::from_millis(2100));
    let out = host.run_expect(&["update"], 1);
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));
    assert!(stderr(&out).contains("--allow-expired"), "{}", stderr(&out));
    assert_eq!(
        host.link("current").map(|d| d.starts_with("1.0.0")),
        Some(true)
    );
    host.run_expect(&["update", "--allow-expired"], 0);
    assert_eq!(host.link("current"), Some(v2.dir_name()));

    // An older (validly signed) index replayed: refused.
    for name in ["stable.json", "stable.json.minisig"] {
        fs::copy(old.join(name), channels.join(name)).unwrap();
    }
    let out = host.run_expect(&["update"], 1);
    assert!(stderr(&out).contains("rollback"), "{}", stderr(&out));

    // A tampered index: the signature no longer matches.
    let index = channels.join("stable.json");
    let text = fs::read_to_string(&index).unwrap();
    fs::write(&index, text.replace("\"notes\": \"\"", "\"notes\": \"x\"")).unwrap();
    let out = host.run_expect(&["update"], 1);
    assert!(stderr(&out).contains("does not match"), "{}", stderr(&out));
    assert_eq!(host.link("current"), Some(v2.dir_name()));
    host.wait_healthy("2.0.0");
}

#[test]
fn a_release_that_no_longer_reads_old_data_but_migrates_it_installs() {
    // examples/bot/schema/migrations/README.md: raise min_compatible when
    // the code can no longer read older data. With a migrate hook such a
    // release installs (the hook runs first); `check` agrees.
    let host = TestHost::new(&[]);
    host.release("1.0.0", &Flavor::default());
    host.run_expect(&["install", &host.repo().to_string_lossy()], 0);
    host.wait_healthy("1.0.0");
    host.release(
        "2.0.0",
        &Flavor {
            schema: Some(2),
            min_compatible: Some(2),
            ..Flavor::default()
        },
    );
    let c = host.json(&["check"], 0);
    assert!(c["candidate"]["refused"].is_null(), "{c}");
    assert_eq!(c["candidate"]["migrates"], true, "{c}");
    let o = host.json(&["update"], 0);
    assert_eq!(o["result"], "updated", "{o}");
    host.wait_healthy("2.0.0");
    assert_eq!(host.data_schema(), 2);
}

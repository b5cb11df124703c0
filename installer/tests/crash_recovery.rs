//! A transaction killed with SIGKILL at every step, then `slipway recover`.
//!
//! Needs a `slipway` built with `--features slipway/fault-injection`:
//! `SLIPWAY_FAULT_AFTER=<Step>` then makes it kill itself right after that
//! step is recorded in the journal. Without the feature the tests print why
//! they skip (and fail under `CI=true`).
//!
//! Each case installs v1 of the example bot, then v2 (which raises the data
//! schema, so the migrate hook runs), killed at one step, and checks after
//! `slipway recover`: `current` names a complete release (v1 before
//! `Commit`, v2 from `Commit` on), the bot answers `/health` with that
//! version, the persistence is intact (as the paused app left it, or
//! migrated once v2 committed), and no journal, staging directory, partial
//! snapshot or stray file is left.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod bot_host;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::process::ExitStatusExt;

use bot_host::{stderr, Flavor, Release, TestHost};

/// The steps of an install that passes its health gate, in order.
const BEFORE_COMMIT: [&str; 10] = [
    "Verify",
    "Stage",
    "Check",
    "Save",
    "Snapshot",
    "Quiesce",
    "Migrate",
    "Switch",
    "Restart",
    "HealthGate",
];

struct Case {
    host: TestHost,
    v1: Release,
    v2: Release,
    trades_before: u64,
}

/// v1 installed and healthy, v2 built (not installed).
fn setup(v2: &Flavor) -> Case {
    setup_with(v2, &[])
}

/// [`setup`] on a host whose configuration has `extra` lines.
fn setup_with(v2: &Flavor, extra: &[(&str, &str)]) -> Case {
    let host = TestHost::new(extra);
    let v1 = host.build("1.0.0", &Flavor::default());
    host.run_expect(&["install", &v1.archive.to_string_lossy()], 0);
    host.wait_healthy("1.0.0");
    let v2 = host.build("2.0.0", v2);
    // Let the bot trade and save once, so there is data to protect.
    host.run_expect(&["status"], 0);
    let _ = bot_host::http(host.port, "POST", "/admin/save");
    let trades_before = host.state_json()["trades"].as_u64().unwrap_or(0);
    Case {
        host,
        v1,
        v2,
        trades_before,
    }
}

/// Installs v2 with the fault at `step` and checks the process died by
/// SIGKILL with the journal in place.
fn kill_at(case: &Case, step: &str) {
    let mut cmd = case
        .host
        .slipway(&["install", &case.v2.archive.to_string_lossy()]);
    cmd.env("SLIPWAY_FAULT_AFTER", step);
    let out = bot_host::run_with_deadline(cmd, std::time::Duration::from_secs(120));
    assert_eq!(
        out.status.signal(),
        Some(9),
        "install with SLIPWAY_FAULT_AFTER={step} was not killed: {:?}\n{}",
        out.status,
        stderr(&out)
    );
    let journal = case.host.root().join("state/journal.json");
    let text = fs::read_to_string(&journal).expect("a killed run leaves its journal");
    let j: serde_json::Value = serde_json::from_str(&text).expect("journal is JSON");
    assert_eq!(j["step"], step);
}

/// Runs `slipway recover --json` and returns its outcome.
fn recover(case: &Case) -> serde_json::Value {
    let o = case.host.json(&["recover"], 0);
    assert!(!o["message"].as_str().unwrap_or("").is_empty(), "{o}");
    o
}

/// Everything that must hold after any recovery.
fn assert_consistent(case: &Case, expect: &Release) {
    let host = &case.host;
    let root = host.root();
    assert!(!root.join("state/journal.json").exists(), "journal removed");
    assert_eq!(host.link("current"), Some(expect.dir_name()));
    // A complete release: `slipway verify` checks it against its manifest.
    host.run_expect(&["verify"], 0);
    host.wait_healthy(&expect.version);
    let (_, body) = host.health().expect("health");
    assert_eq!(body["paused"], false, "the app was left paused: {body}");

    // Only the layout under the root.
    let top: BTreeSet<String> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let allowed: BTreeSet<String> = [
        "releases",
        "backups",
        "downloads",
        "state",
        "current",
        "previous",
        "run",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert!(
        top.is_subset(&allowed),
        "stray entries in the root: {top:?}"
    );
    for e in fs::read_dir(root.join("releases")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            name == case.v1.dir_name() || name == case.v2.dir_name(),
            "stray entry in releases/: {name}"
        );
    }
    for e in fs::read_dir(root.join("backups")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".partial"), "partial snapshot left: {name}");
        assert!(
            !name.starts_with('.'),
            "temporary entry in backups/: {name}"
        );
    }
    let state_allowed = [
        "lock",
        "host.json",
        "trust.json",
        "history.jsonl",
        "banner.txt",
        "slipway.prom",
        "releases.json",
    ];
    for e in fs::read_dir(root.join("state")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name == "releases" {
            // The identity records of the releases there.
            for e in fs::read_dir(root.join("state/releases")).unwrap() {
                let record = e.unwrap().file_name().to_string_lossy().into_owned();
                let release = record.strip_suffix(".stat").unwrap_or(&record);
                assert!(
                    root.join("releases").join(release).is_dir(),
                    "a record of no release in state/releases/: {record}"
                );
            }
            continue;
        }
        if name == "hook-output" {
            // The kept output of the hooks of the last transactions.
            continue;
        }
        if name == "children" {
            // The ledger of children: empty once nothing is left running.
            let left: Vec<_> = fs::read_dir(root.join("state/children"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert!(left.is_empty(), "children still recorded: {left:?}");
            continue;
        }
        assert!(
            state_allowed.contains(&name.as_str()),
            "stray file in state/ (a reserve or journal left behind?): {name}"
        );
    }
    for dir in [host.data(), host.data().join("meta")] {
        for e in fs::read_dir(&dir).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                !name.contains(".tmp"),
                "temporary file in {}: {name}",
                dir.display()
            );
        }
    }
    let parent = host.data().parent().unwrap().to_path_buf();
    for e in fs::read_dir(parent).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.contains(".slipway-"),
            "restore leftover beside the persistence: {name}"
        );
    }
    // The attempt was recorded.
    let status = host.json(&["status"], 0);
    assert!(status["journal"].is_null());
    assert_eq!(status["last_attempt"]["op"], "recover", "{status}");
}

fn crash_before_commit(step: &str) {
    bot_host::require_fault_injection();
    let case = setup(&Flavor {
        schema: Some(2),
        ..Flavor::default()
    });
    kill_at(&case, step);
    let o = recover(&case);
    assert_eq!(o["interrupted_at"], step, "{o}");
    // What recovery did, recorded as such: not a failure.
    assert_eq!(o["result"], "recovered", "{o}");
    assert_eq!(o["cause"], "recovered", "{o}");
    assert_eq!(o["exit_code"], 0, "{o}");
    assert_consistent(&case, &case.v1);
    let host = &case.host;
    assert_eq!(host.data_schema(), 1, "the data is at v1's schema again");
    let state = host.state_json();
    assert!(state.get("schema").is_none(), "no half migration: {state}");
    let trades = state["trades"].as_u64().unwrap();
    assert!(
        trades >= case.trades_before,
        "no trade lost: {} before, {trades} after",
        case.trades_before
    );
    // From Migrate on, the data is exactly what the paused app left.
    let from_migrate = BEFORE_COMMIT
        .iter()
        .position(|s| *s == step)
        .is_some_and(|i| i >= 6);
    if from_migrate {
        let snap = std::path::PathBuf::from(o["snapshot"].as_str().expect("snapshot"));
        assert_eq!(
            bot_host::tree_digest(&host.data()),
            bot_host::tree_digest(&snap.join("data")),
            "the persistence equals the snapshot"
        );
    }
    // An interrupted run is not the release's fault: it is not bad-listed,
    // a successful recovery counts as no failure, and the next update
    // installs it.
    let status = host.json(&["status"], 0);
    assert_eq!(
        status["bad_releases"].as_array().unwrap().len(),
        0,
        "{status}"
    );
    assert_eq!(status["failures_today"], 0, "{status}");
    assert_eq!(status["auto_update"]["enabled"], true, "{status}");
    host.run_expect(&["install", &case.v2.archive.to_string_lossy()], 0);
    host.wait_healthy("2.0.0");
}

fn crash_after_commit(step: &str) {
    bot_host::require_fault_injection();
    let case = setup(&Flavor {
        schema: Some(2),
        ..Flavor::default()
    });
    kill_at(&case, step);
    let o = recover(&case);
    assert_eq!(o["result"], "recovered", "{o}");
    assert!(
        o["message"]
            .as_str()
            .unwrap()
            .contains("(updated); finished it"),
        "{o}"
    );
    assert_consistent(&case, &case.v2);
    let host = &case.host;
    assert_eq!(host.data_schema(), 2, "migrated");
    assert_eq!(host.state_json()["schema"], 2);
    assert_eq!(host.link("previous"), Some(case.v1.dir_name()));
    let version: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(host.data().join("meta/version.json")).unwrap())
            .unwrap();
    assert_eq!(version["version"], "2.0.0");
    // The update, recorded once (by the recovery) as updated; manual runs
    // never use up the timer's attempts.
    let status = host.json(&["status"], 0);
    assert_eq!(status["attempts_today"], 0, "{status}");
    assert_eq!(status["last_success"]["result"], "updated", "{status}");
    let history = host.json(&["history"], 0);
    let updated = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["result"] == "updated" && a["version"] == "2.0.0")
        .count();
    assert_eq!(updated, 1, "{history}");
}

macro_rules! crash_tests {
    ($($name:ident => $step:literal, $check:ident;)*) => {
        $(
            #[test]
            fn $name() {
                $check($step);
            }
        )*
    };
}

crash_tests! {
    killed_after_verify_is_undone => "Verify", crash_before_commit;
    killed_after_stage_is_undone => "Stage", crash_before_commit;
    killed_after_check_is_undone => "Check", crash_before_commit;
    killed_after_save_is_undone => "Save", crash_before_commit;
    killed_after_snapshot_is_undone => "Snapshot", crash_before_commit;
    killed_after_quiesce_is_undone_and_resumed => "Quiesce", crash_before_commit;
    killed_after_migrate_restores_the_data => "Migrate", crash_before_commit;
    killed_after_switch_flips_back => "Switch", crash_before_commit;
    killed_after_restart_flips_back => "Restart", crash_before_commit;
    killed_in_health_gate_flips_back => "HealthGate", crash_before_commit;
    killed_after_commit_is_finished => "Commit", crash_after_commit;
    killed_after_report_is_finished => "Report", crash_after_commit;
    killed_after_collect_is_finished => "Collect", crash_after_commit;
}

#[test]
fn killed_while_flipping_back_finishes_the_flip_back_and_bad_lists() {
    bot_host::require_fault_injection();
    let case = setup(&Flavor {
        schema: Some(2),
        fail_health: true,
        ..Flavor::default()
    });
    kill_at(&case, "FlipBack");
    let o = recover(&case);
    // The run had found its release unhealthy: recorded as that fault.
    assert_eq!(o["result"], "rolled_back", "{o}");
    assert_eq!(o["cause"], "unhealthy", "{o}");
    assert_eq!(o["exit_code"], 0, "recovery itself succeeded: {o}");
    assert_consistent(&case, &case.v1);
    let host = &case.host;
    assert_eq!(host.data_schema(), 1);
    let snap = std::path::PathBuf::from(o["snapshot"].as_str().expect("snapshot"));
    assert_eq!(
        bot_host::tree_digest(&host.data()),
        bot_host::tree_digest(&snap.join("data"))
    );
    let status = host.json(&["status"], 0);
    assert_eq!(status["bad_releases"][0]["id"], case.v2.id, "{status}");
    // Bad-listed: refused without --force.
    host.run_expect(&["install", &case.v2.archive.to_string_lossy()], 4);
}

#[test]
fn every_mutating_command_recovers_first() {
    bot_host::require_fault_injection();
    let case = setup(&Flavor {
        schema: Some(2),
        ..Flavor::default()
    });
    kill_at(&case, "Restart");
    // `gc` (any mutating command) finishes the interrupted run first.
    let out = case.host.run_expect(&["gc"], 0);
    assert!(stderr(&out).contains("recovered"), "{}", stderr(&out));
    assert!(!case.host.root().join("state/journal.json").exists());
    case.host.wait_healthy("1.0.0");
    assert_eq!(case.host.link("current"), Some(case.v1.dir_name()));
}

#[test]
fn killed_in_the_middle_of_the_migration_restores_the_paused_data() {
    // No fault injection needed: slipway is killed while its migrate hook
    // (which migrates, then sleeps) runs.
    let case = setup(&Flavor {
        schema: Some(2),
        slow_migrate: Some(5),
        ..Flavor::default()
    });
    let host = &case.host;
    let mut child = host
        .slipway(&["install", &case.v2.archive.to_string_lossy()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("install v2");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while host.data_schema() != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the migration never ran"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "slipway ended before the migration"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL slipway");
    child.wait().expect("reap");
    let o = recover(&case);
    assert_eq!(o["interrupted_at"], "Migrate", "{o}");
    assert_consistent(&case, &case.v1);
    assert_eq!(host.data_schema(), 1, "the half-done migration was undone");
    assert!(host.state_json().get("schema").is_none());
    let snap = std::path::PathBuf::from(o["snapshot"].as_str().expect("snapshot"));
    assert_eq!(
        bot_host::tree_digest(&host.data()),
        bot_host::tree_digest(&snap.join("data"))
    );
    // The app was resumed.
    let (_, body) = host.health().expect("health");
    assert_eq!(body["paused"], false, "{body}");
}

#[test]
fn an_orphaned_migrate_hook_is_killed_before_recovery_decides() {
    // The hook sleeps two seconds, then migrates. slipway is killed half a
    // second into the Migrate step and `recover` runs at once: the hook
    // must be dead before recovery compares the data, or it would migrate
    // the data under the old release after recovery ended.
    let case = setup(&Flavor {
        schema: Some(2),
        late_migrate: Some(2),
        ..Flavor::default()
    });
    let host = &case.host;
    let mut child = host
        .slipway(&["install", &case.v2.archive.to_string_lossy()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("install v2");
    let journal = host.root().join("state/journal.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let step = fs::read(&journal)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|j| j["step"].as_str().map(str::to_string));
        if step.as_deref() == Some("Migrate") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never reached Migrate"
        );
        assert!(child.try_wait().unwrap().is_none(), "slipway ended early");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    child.kill().expect("SIGKILL slipway");
    child.wait().expect("reap");
    let o = recover(&case);
    assert_eq!(o["interrupted_at"], "Migrate", "{o}");
    // Past the moment the orphan would have migrated.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_consistent(&case, &case.v1);
    assert_eq!(
        host.data_schema(),
        1,
        "an orphaned migrate hook wrote after recovery"
    );
    let (_, body) = host.health().expect("health");
    assert_eq!(body["paused"], false, "{body}");
}

#[test]
fn sigterm_ends_a_run_with_exit_143_and_recovery_undoes_it() {
    // `systemctl stop` and a shutdown send SIGTERM. A death by SIGTERM is a
    // clean stop to systemd (no OnFailure= recovery); slipway exits 143
    // instead, leaving the journal for `recover`.
    let case = setup(&Flavor {
        schema: Some(2),
        late_migrate: Some(3),
        ..Flavor::default()
    });
    let host = &case.host;
    let mut child = host
        .slipway(&["install", &case.v2.archive.to_string_lossy()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("install v2");
    let journal = host.root().join("state/journal.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !fs::read_to_string(&journal).is_ok_and(|j| j.contains("\"Migrate\"")) {
        assert!(
            std::time::Instant::now() < deadline,
            "never reached Migrate"
        );
        assert!(child.try_wait().unwrap().is_none(), "slipway ended early");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let exit = child.wait().expect("reap");
    assert_eq!(exit.code(), Some(143), "{exit:?}");
    assert!(journal.exists(), "the journal stays for recover");
    let o = recover(&case);
    assert_eq!(o["interrupted_at"], "Migrate", "{o}");
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert_consistent(&case, &case.v1);
    assert_eq!(host.data_schema(), 1);
}

#[test]
fn killed_in_a_probation_gate_recovers_to_the_old_release_trading_on_the_pre_update_data() {
    bot_host::require_fault_injection();
    let case = setup_with(
        &Flavor {
            schema: Some(2),
            ..Flavor::default()
        },
        &[("health", "probation = \"always\"")],
    );
    kill_at(&case, "HealthGate");
    let probation = case.host.data().join("meta/probation.json");
    assert!(
        probation.is_file(),
        "the killed run had started 2.0.0 under probation"
    );
    let o = recover(&case);
    assert_eq!(o["result"], "recovered", "{o}");
    assert!(!probation.exists(), "the old release must not start paused");
    // assert_consistent checks that 1.0.0 runs unpaused.
    assert_consistent(&case, &case.v1);
    assert_eq!(case.host.data_schema(), 1);
    let snap = std::path::PathBuf::from(o["snapshot"].as_str().expect("snapshot"));
    assert_eq!(
        bot_host::tree_digest(&case.host.data()),
        bot_host::tree_digest(&snap.join("data")),
        "the persistence equals the snapshot"
    );
}

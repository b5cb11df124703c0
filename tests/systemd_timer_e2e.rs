//! The timer `slipway units` writes, under a real systemd: the example bot
//! runs as `aibot.service` in a container booted by the harness, nginx
//! (inside the container: it has a network of its own) serves a release
//! repository made on the host by the real `slipway-pack`, and
//! `slipway-update.timer`, written by `slipway units --write`, fires
//! `slipway update --auto` on its own and installs the release published
//! after it was enabled.
//!
//! The repository lives in a shared directory bind-mounted into the
//! container, so a release published on the host after the boot is visible
//! inside at once. The timer's period comes from `[update]
//! interval_seconds` (a test-only override of `interval_minutes`).
//!
//! The recover unit `slipway units` writes, under the same real systemd: an
//! update run started by `slipway-update.service` and killed (`kill -9`)
//! during its health gate is flipped back at once by
//! `slipway-recover.service` (`OnFailure=`), not at the next timer run.
//!
//! Runs as root only; without root it prints why it skips, and under
//! `CI=true` it fails instead.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use slipway_e2e::{
    bot_unit, run_ok, shared_tempdir, Container, ContainerOptions, Nginx, NginxOptions, OutputExt,
    BOT_UNIT,
};

const UNIT: &str = BOT_UNIT;
const ROOT: &str = "/opt/e2e/root";
const DATA: &str = "/opt/e2e/data";
const CONFIG: &str = "/etc/slipway/update.toml";

/// Builds the example bot as `version` into `repo`; returns the release id.
fn build(dir: &Path, repo: &Path, version: &str) -> Result<String> {
    build_bot(dir, repo, version, false)
}

/// [`build`], with the bot's `/health` failing when `fail_health`.
fn build_bot(dir: &Path, repo: &Path, version: &str, fail_health: bool) -> Result<String> {
    let src = dir.join(format!("src-{version}"));
    run_ok(
        Command::new("cp")
            .arg("-r")
            .arg(slipway_e2e::workspace_root().join("examples/bot"))
            .arg(&src),
    )?;
    let _ = fs::remove_dir_all(src.join("app/bot/__pycache__"));
    fs::write(
        src.join("app/bot/settings.json"),
        format!("{{\"fail_health\": {fail_health}, \"crash_on_start\": false}}\n"),
    )?;
    let out = run_ok(
        Command::new(slipway_e2e::slipway_pack()?)
            .arg("build")
            .arg(&src)
            .args(["--version", version, "--json", "--key"])
            .arg(dir.join("keys/slipway.key"))
            .arg("--out")
            .arg(repo),
    )?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v["id"]
        .as_str()
        .context("build --json has no id")?
        .to_string())
}

fn publish(dir: &Path, repo: &Path, id: &str) -> Result<()> {
    run_ok(
        Command::new(slipway_e2e::slipway_pack()?)
            .args(["publish", "--channel", "stable", "--repo"])
            .arg(repo)
            .arg("--key")
            .arg(dir.join("keys/slipway.key"))
            .arg(id),
    )
    .map(drop)
}

fn slipway(c: &Container, args: &[&str]) -> Result<Output> {
    let bin = slipway_e2e::slipway()?;
    let mut argv: Vec<String> = vec![bin.display().to_string(), "--config".into(), CONFIG.into()];
    argv.extend(args.iter().map(|s| s.to_string()));
    c.exec_timeout(&argv, Duration::from_secs(180))
}

fn current(c: &Container) -> Option<String> {
    fs::read_link(c.host_path(format!("{ROOT}/current")))
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
}

fn health_version(c: &Container) -> Result<Option<String>> {
    let out = c.exec(&[
        "curl",
        "-s",
        "--max-time",
        "3",
        "http://127.0.0.1:8080/health",
    ])?;
    let body: serde_json::Value = serde_json::from_str(&out.stdout_text()).unwrap_or_default();
    Ok(body["version"].as_str().map(str::to_string))
}

#[test]
fn the_timer_from_slipway_units_fires_and_installs_the_new_release() -> Result<()> {
    if !Container::available_or_skip()? {
        return Ok(());
    }
    let shared = shared_tempdir("timer")?;
    let dir: PathBuf = shared.path().to_path_buf();
    run_ok(
        Command::new(slipway_e2e::slipway_pack()?)
            .args(["keygen", "--unencrypted", "--out-dir"])
            .arg(dir.join("keys")),
    )?;
    let repo = dir.join("repo");
    let v1 = build(&dir, &repo, "1.0.0")?;
    let v2 = build(&dir, &repo, "2.0.0")?;
    publish(&dir, &repo, &v1)?;

    let c = Container::boot_with("slipway-timer", ContainerOptions::default().bind(&dir))?;
    let nginx = Nginx::serve_in(&c, &repo, NginxOptions::default())?;
    c.install_unit(UNIT, &bot_unit(ROOT, DATA))?;
    c.write_file(
        CONFIG,
        format!(
            "[update]\n\
             channel = \"stable\"\n\
             source = \"{url}\"\n\
             public_keys = [\"{key}\"]\n\
             interval_seconds = 3\n\
             max_failures_per_day = 20\n\
             max_attempts_per_day = 50\n\
             \n\
             [paths]\n\
             root = \"{ROOT}\"\n\
             persistence = \"{DATA}\"\n\
             max_save_age_minutes = 0\n\
             \n\
             [service]\n\
             manager = \"systemd\"\n\
             unit = \"{UNIT}\"\n\
             user = \"root\"\n\
             health_url = \"http://127.0.0.1:8080/health\"\n\
             health_timeout_seconds = 15\n\
             healthy_polls = 2\n\
             health_interval_ms = 200\n\
             health_expect_version = true\n\
             quiesce_url = \"http://127.0.0.1:8080/admin/quiesce\"\n\
             save_url = \"http://127.0.0.1:8080/admin/save\"\n\
             \n\
             [report]\n\
             journald = true\n",
            url = nginx.base_url(),
            key = dir.join("keys/slipway.pub").display()
        ),
        0o644,
    )?;

    // v1 by hand, over HTTP.
    let out = slipway(&c, &["update", "--json"])?;
    if out.status.code() != Some(0) {
        bail!(
            "slipway update failed: {}\n{}",
            out.stdout_text(),
            out.stderr_text()
        );
    }
    slipway_e2e::wait_until(Duration::from_secs(30), "v1 healthy", || {
        Ok(health_version(&c)?.as_deref() == Some("1.0.0"))
    })?;

    // The units, as an operator installs them.
    let out = slipway(&c, &["units", "--write", "/etc/systemd/system"])?;
    if !out.status.success() {
        bail!("slipway units failed: {}", out.stderr_text());
    }
    let timer = c.read_to_string("/etc/systemd/system/slipway-update.timer")?;
    assert!(timer.contains("OnUnitActiveSec=3s"), "{timer}");
    assert!(timer.contains("RandomizedDelaySec=1s"), "{timer}");
    let verify = c.exec(&[
        "systemd-analyze",
        "verify",
        "/etc/systemd/system/slipway-update.service",
        "/etc/systemd/system/slipway-update.timer",
    ])?;
    assert!(
        verify.status.success(),
        "systemd-analyze verify: {}",
        verify.stderr_text()
    );
    c.systemctl(&["daemon-reload"])?;
    c.systemctl(&["enable", "--now", "slipway-update.timer"])?;

    // Publish v2 on the host; the timer finds it on its own.
    publish(&dir, &repo, &v2)?;
    let v2_dir = format!("2.0.0-{}", &v2.trim_start_matches("sha256:")[..12]);
    slipway_e2e::wait_until(Duration::from_secs(120), "the timer to install v2", || {
        Ok(current(&c).as_deref() == Some(v2_dir.as_str()))
    })
    .with_context(|| {
        format!(
            "timer: {}\nupdate service journal:\n{}",
            c.exec(&["systemctl", "status", "--no-pager", "slipway-update.timer"])
                .map(|o| o.stdout_text())
                .unwrap_or_default(),
            c.journal("slipway-update.service").unwrap_or_default()
        )
    })?;
    slipway_e2e::wait_until(Duration::from_secs(30), "v2 healthy", || {
        Ok(health_version(&c)?.as_deref() == Some("2.0.0"))
    })?;

    // It was the timer's service that did it, with --auto (its run ends
    // after the health gate, a moment after the switch).
    slipway_e2e::wait_until(Duration::from_secs(60), "the timer's run to finish", || {
        Ok(c.journal("slipway-update.service")?
            .contains("updated bot 1.0.0 → 2.0.0"))
    })
    .with_context(|| c.journal("slipway-update.service").unwrap_or_default())?;
    let out = slipway(&c, &["history", "--json"])?;
    let history: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let auto_update = history
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|e| e["result"] == "updated" && e["version"] == "2.0.0")
        })
        .cloned()
        .context("no history entry for the update to 2.0.0")?;
    assert_eq!(auto_update["op"], "update", "{auto_update}");
    assert_eq!(auto_update["auto"], true, "{auto_update}");
    // One result line per run: the structured journald entry, not that and
    // stdout and stderr again (they go to the same journal).
    let journal = c.journal("slipway-update.service")?;
    assert_eq!(
        journal.matches("updated bot 1.0.0 → 2.0.0").count(),
        1,
        "{journal}"
    );
    // status shows the timer's next run, under systemd with the timer on.
    let out = slipway(&c, &["status"])?;
    let text = out.stdout_text();
    assert!(text.contains("next check:"), "{text}");
    assert!(text.contains("channel:     stable; index v"), "{text}");
    // Later polls are idle: 304s only.
    slipway_e2e::wait_until(Duration::from_secs(30), "an idle poll", || {
        Ok(nginx
            .access_log_entries()?
            .iter()
            .any(|e| e.uri == "/channels/stable.json" && e.status == 304))
    })?;
    c.systemctl(&["disable", "--now", "slipway-update.timer"])?;
    drop(nginx);
    c.shutdown()?;
    Ok(())
}

/// The release directory name of `id` as `version`: `<version>-<id12>`.
fn release_dir(version: &str, id: &str) -> String {
    format!("{version}-{}", &id.trim_start_matches("sha256:")[..12])
}

/// The step the journal of the transaction in flight names, if any.
fn journal_step(c: &Container) -> Option<String> {
    let text = fs::read_to_string(c.host_path(format!("{ROOT}/state/journal.json"))).ok()?;
    let journal: serde_json::Value = serde_json::from_str(&text).ok()?;
    journal["step"].as_str().map(str::to_string)
}

#[test]
fn an_update_run_killed_in_its_health_gate_is_flipped_back_at_once_by_the_recover_unit(
) -> Result<()> {
    if !Container::available_or_skip()? {
        return Ok(());
    }
    let shared = shared_tempdir("recover")?;
    let dir: PathBuf = shared.path().to_path_buf();
    run_ok(
        Command::new(slipway_e2e::slipway_pack()?)
            .args(["keygen", "--unencrypted", "--out-dir"])
            .arg(dir.join("keys")),
    )?;
    let repo = dir.join("repo");
    let v1 = build(&dir, &repo, "1.0.0")?;
    // Unhealthy: its health gate lasts the whole health_timeout_seconds.
    let v2 = build_bot(&dir, &repo, "2.0.0", true)?;
    publish(&dir, &repo, &v1)?;
    publish(&dir, &repo, &v2)?;

    let c = Container::boot_with("slipway-recover", ContainerOptions::default().bind(&dir))?;
    c.install_unit(UNIT, &bot_unit(ROOT, DATA))?;
    c.write_file(
        CONFIG,
        format!(
            "[update]\n\
             channel = \"stable\"\n\
             source = \"{repo}\"\n\
             public_keys = [\"{key}\"]\n\
             max_failures_per_day = 20\n\
             max_attempts_per_day = 50\n\
             \n\
             [paths]\n\
             root = \"{ROOT}\"\n\
             persistence = \"{DATA}\"\n\
             max_save_age_minutes = 0\n\
             \n\
             [service]\n\
             manager = \"systemd\"\n\
             unit = \"{UNIT}\"\n\
             user = \"root\"\n\
             health_url = \"http://127.0.0.1:8080/health\"\n\
             health_timeout_seconds = 60\n\
             healthy_polls = 2\n\
             health_interval_ms = 200\n\
             health_expect_version = true\n\
             quiesce_url = \"http://127.0.0.1:8080/admin/quiesce\"\n\
             save_url = \"http://127.0.0.1:8080/admin/save\"\n\
             \n\
             [report]\n\
             journald = true\n",
            repo = repo.display(),
            key = dir.join("keys/slipway.pub").display()
        ),
        0o644,
    )?;
    let v1_archive = repo
        .join("releases")
        .join(format!("{}.tar.zst", v1.trim_start_matches("sha256:")));
    let out = slipway(&c, &["install", &v1_archive.display().to_string()])?;
    if out.status.code() != Some(0) {
        bail!(
            "slipway install v1 failed: {}\n{}",
            out.stdout_text(),
            out.stderr_text()
        );
    }
    slipway_e2e::wait_until(Duration::from_secs(30), "v1 healthy", || {
        Ok(health_version(&c)?.as_deref() == Some("1.0.0"))
    })?;

    // The units, as an operator installs them (the timer stays off: the
    // test starts the update service itself).
    let out = slipway(&c, &["units", "--write", "/etc/systemd/system"])?;
    if !out.status.success() {
        bail!("slipway units failed: {}", out.stderr_text());
    }
    let verify = c.exec(&[
        "systemd-analyze",
        "verify",
        "/etc/systemd/system/slipway-update.service",
        "/etc/systemd/system/slipway-update.timer",
        "/etc/systemd/system/slipway-recover.service",
    ])?;
    assert!(
        verify.status.success(),
        "systemd-analyze verify: {}",
        verify.stderr_text()
    );
    c.systemctl(&["daemon-reload"])?;
    c.systemctl(&["enable", "slipway-recover.service"])?;
    // At boot the recover unit runs (multi-user.target wants it) before any
    // update run.
    let wants = c.systemctl(&[
        "show",
        "-p",
        "WantedBy",
        "--value",
        "slipway-recover.service",
    ])?;
    assert!(
        wants.stdout_text().contains("multi-user.target"),
        "{}",
        wants.stdout_text()
    );
    let after = c.systemctl(&["show", "-p", "After", "--value", "slipway-update.service"])?;
    assert!(
        after.stdout_text().contains("slipway-recover.service"),
        "{}",
        after.stdout_text()
    );

    // An update run, as the timer starts it, to the unhealthy v2.
    c.systemctl(&["start", "--no-block", "slipway-update.service"])?;
    slipway_e2e::wait_until(Duration::from_secs(60), "the run's health gate", || {
        Ok(journal_step(&c).as_deref() == Some("HealthGate"))
    })
    .with_context(|| c.journal("slipway-update.service").unwrap_or_default())?;
    assert_eq!(current(&c), Some(release_dir("2.0.0", &v2)));
    // Well inside the gate: slipway is polling the failing release.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(journal_step(&c).as_deref(), Some("HealthGate"));
    let pid = c
        .systemctl(&["show", "-p", "MainPID", "--value", "slipway-update.service"])?
        .stdout_text()
        .trim()
        .to_string();
    assert_ne!(pid, "0", "slipway-update.service has no main process");
    c.exec_ok(&["kill", "-9", &pid])?;
    let killed = Instant::now();

    // Recovered: no journal, `current` back on v1, and v1 answers health.
    let v1_dir = release_dir("1.0.0", &v1);
    let recovered = slipway_e2e::wait_until(Duration::from_secs(20), "the flip back", || {
        Ok(journal_step(&c).is_none()
            && !c.host_path(format!("{ROOT}/state/journal.json")).exists()
            && current(&c).as_deref() == Some(v1_dir.as_str())
            && health_version(&c)?.as_deref() == Some("1.0.0"))
    })
    .map(|()| killed.elapsed());
    let recovered = recovered.with_context(|| {
        format!(
            "current: {:?}\n--- slipway-update.service\n{}\n--- slipway-recover.service\n{}",
            current(&c),
            c.journal("slipway-update.service").unwrap_or_default(),
            c.journal("slipway-recover.service").unwrap_or_default()
        )
    })?;
    println!("kill -9 during HealthGate -> recovered (journal gone, current on v1, v1 healthy): {recovered:?}");

    // The recover unit did it, after systemd failed the killed run.
    let update = c.unit_state("slipway-update.service")?;
    assert_eq!(update.active, "failed", "{update:?}");
    let recover = c
        .systemctl(&[
            "show",
            "-p",
            "ConditionResult,Result,ExecMainStatus",
            "slipway-recover.service",
        ])?
        .stdout_text();
    for property in ["ConditionResult=yes", "Result=success", "ExecMainStatus=0"] {
        assert!(
            recover.lines().any(|l| l == property),
            "{property}:\n{recover}\n{}",
            c.journal("slipway-recover.service").unwrap_or_default()
        );
    }
    let out = slipway(&c, &["history", "--json"])?;
    let history: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let last = history
        .as_array()
        .and_then(|a| a.last())
        .cloned()
        .context("empty history")?;
    assert_eq!(last["op"], "recover", "{last}");
    let state = c.unit_state(UNIT)?;
    assert_eq!(
        (state.active.as_str(), state.sub.as_str()),
        ("active", "running")
    );
    c.shutdown()?;
    Ok(())
}

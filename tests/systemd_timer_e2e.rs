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
//! Runs as root only; without root it prints why it skips, and under
//! `CI=true` it fails instead.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use slipway_e2e::{
    bot_unit, shared_tempdir, Container, ContainerOptions, Nginx, NginxOptions, OutputExt, BOT_UNIT,
};

const UNIT: &str = BOT_UNIT;
const ROOT: &str = "/opt/e2e/root";
const DATA: &str = "/opt/e2e/data";
const CONFIG: &str = "/etc/slipway/update.toml";

fn run_ok(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Builds the example bot as `version` into `repo`; returns the release id.
fn build(dir: &Path, repo: &Path, version: &str) -> Result<String> {
    let src = dir.join(format!("src-{version}"));
    run_ok(
        Command::new("cp")
            .arg("-r")
            .arg(slipway_e2e::workspace_root().join("examples/bot"))
            .arg(&src),
    )?;
    let _ = fs::remove_dir_all(src.join("app/bot/__pycache__"));
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

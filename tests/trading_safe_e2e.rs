//! Trading-safe updates under a real systemd, with the example bot as
//! `aibot.service` in a container booted by the harness:
//!
//! - under probation (`[health] probation = "always"`) a release whose
//!   health fails starts paused, never trades (its trade counter does not
//!   move), and the flip back puts the pre-update data back with nothing
//!   to keep aside;
//! - without probation, the data a failing release wrote is kept aside
//!   under `backups/kept-<txn>/` before the snapshot is restored
//!   (`restore_data = "always"`), and the run's message and `status` name
//!   it; with the default `restore_data`, a release that did not change the
//!   schema leaves its data in place;
//! - `slipway rollback --restore-data` goes back across a migration with
//!   the old release's own data, and `slipway restore` puts an older backup
//!   back while the service runs.
//!
//! Runs as root only; without root it prints why it skips, and under
//! `CI=true` it fails instead.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result};
use slipway_e2e::{
    bot_config, bot_unit, build_bot, run_ok, shared_tempdir, BotFlavor, Container, OutputExt,
    BOT_UNIT,
};

const ROOT: &str = "/opt/e2e/root";
const DATA: &str = "/opt/e2e/data";
const CONFIG: &str = "/etc/slipway/update.toml";

/// Builds the example bot as `version` (schema `schema`, `/health` failing
/// when `unhealthy`); returns the archive's path.
fn build(dir: &Path, version: &str, schema: u32, unhealthy: bool) -> Result<String> {
    let bot = build_bot(
        dir,
        &dir.join("keys/slipway.key"),
        &dir.join("repo"),
        version,
        BotFlavor {
            schema,
            fail_health: unhealthy,
        },
        Ok,
    )?;
    Ok(bot.archive.display().to_string())
}

fn keys(dir: &Path) -> Result<()> {
    run_ok(
        Command::new(slipway_e2e::slipway_pack()?)
            .args(["keygen", "--unencrypted", "--out-dir"])
            .arg(dir.join("keys")),
    )
    .map(drop)
}

fn boot(label: &str, dir: &Path, health: &str) -> Result<Container> {
    let c = Container::boot(label)?;
    c.install_unit(BOT_UNIT, &bot_unit(ROOT, DATA))?;
    c.write_file(
        CONFIG,
        bot_config(
            ROOT,
            DATA,
            &dir.join("keys/slipway.pub"),
            6,
            &format!("[health]\n{health}\n"),
        ),
        0o644,
    )?;
    Ok(c)
}

fn slipway(c: &Container, args: &[&str]) -> Result<Output> {
    let bin = slipway_e2e::slipway()?;
    let mut argv: Vec<String> = vec![bin.display().to_string(), "--config".into(), CONFIG.into()];
    argv.extend(args.iter().map(|s| s.to_string()));
    c.exec_timeout(&argv, Duration::from_secs(180))
}

/// The bot's `/health` JSON (status code ignored).
fn health(c: &Container) -> Option<serde_json::Value> {
    let out = c
        .exec(&[
            "curl",
            "-s",
            "--max-time",
            "3",
            "http://127.0.0.1:8080/health",
        ])
        .ok()?;
    serde_json::from_str(&out.stdout_text()).ok()
}

/// Waits until `version` answers healthy, unpaused, and has traded.
fn wait_trading(c: &Container, version: &str) -> Result<u64> {
    let mut trades = 0;
    slipway_e2e::wait_until(Duration::from_secs(30), "the bot trading", || {
        let Some(h) = health(c) else {
            return Ok(false);
        };
        trades = h["trades"].as_u64().unwrap_or(0);
        Ok(h["version"] == version
            && h["status"] == "ok"
            && h["paused"] == false
            && h["ticks"].as_u64().unwrap_or(0) > 0)
    })
    .with_context(|| c.journal(BOT_UNIT).unwrap_or_default())?;
    Ok(trades)
}

/// The value of `key=` on the first line of `text` that holds `event`.
fn field(text: &str, event: &str, key: &str) -> Option<String> {
    let line = text.lines().find(|l| l.contains(event))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
}

fn backups(c: &Container) -> Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(c.host_path(format!("{ROOT}/backups")))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

#[test]
fn a_bad_release_under_probation_never_trades_and_the_flip_back_loses_nothing() -> Result<()> {
    if !Container::available_or_skip()? {
        return Ok(());
    }
    let shared = shared_tempdir("probation")?;
    let dir = shared.path();
    keys(dir)?;
    let v1 = build(dir, "1.0.0", 1, false)?;
    let v2 = build(dir, "2.0.0", 2, true)?;
    let c = boot("slipway-probation", dir, "probation = \"always\"")?;

    // Even the first install proves itself paused, then is resumed.
    let out = slipway(&c, &["install", &v1])?;
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains("under probation"),
        "{}",
        out.stderr_text()
    );
    wait_trading(&c, "1.0.0")?;
    let probation_file = c.host_path(format!("{DATA}/meta/probation.json"));
    assert!(!probation_file.exists(), "removed once the gate passed");

    // 2.0.0 migrates to schema 2, then fails its gate while paused.
    let out = slipway(&c, &["install", &v2])?;
    let err = out.stderr_text();
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("flipped back to 1.0.0"), "{err}");
    assert!(!err.contains("kept in"), "nothing to keep aside: {err}");
    assert!(!probation_file.exists(), "the old release starts live");
    wait_trading(&c, "1.0.0")?;

    // The bot's own log: 2.0.0 started paused on the count the quiesce
    // saved, was never resumed, and stopped on the same count; 1.0.0 came
    // back on that count too (the data restored byte for byte: the restore
    // checks the snapshot's digest).
    let journal = c.journal(BOT_UNIT)?;
    let from_v2 = journal
        .find("starting version=2.0.0")
        .context(format!("2.0.0 never started:\n{journal}"))?;
    let quiesced = &journal[..from_v2];
    let saved = quiesced
        .lines()
        .rev()
        .find(|l| l.contains("paused source=http"))
        .and_then(|l| field(l, "paused", "trades"))
        .context(format!("no quiesce before 2.0.0:\n{journal}"))?;
    let v2_log = &journal[from_v2..];
    let v2_end = v2_log
        .find("starting version=1.0.0")
        .unwrap_or(v2_log.len());
    let v2_log = &v2_log[..v2_end];
    assert_eq!(
        field(v2_log, "starting", "trades").as_deref(),
        Some(saved.as_str()),
        "{v2_log}"
    );
    assert!(v2_log.contains("paused source=probation"), "{v2_log}");
    assert!(
        !v2_log.contains("resumed"),
        "2.0.0 was never resumed:\n{v2_log}"
    );
    assert_eq!(
        field(v2_log, "stopped", "trades").as_deref(),
        Some(saved.as_str()),
        "{v2_log}"
    );
    let back = &journal[from_v2 + v2_end..];
    assert_eq!(
        field(back, "starting version=1.0.0", "trades").as_deref(),
        Some(saved.as_str()),
        "{back}"
    );
    assert_eq!(
        c.read_to_string(format!("{DATA}/schema_version"))?.trim(),
        "1"
    );
    assert!(
        !backups(&c)?.iter().any(|n| n.starts_with("kept-")),
        "{:?}",
        backups(&c)?
    );
    c.shutdown()?;
    Ok(())
}

#[test]
fn without_probation_the_data_a_bad_release_wrote_is_kept_aside_and_named() -> Result<()> {
    if !Container::available_or_skip()? {
        return Ok(());
    }
    let shared = shared_tempdir("keep-aside")?;
    let dir = shared.path();
    keys(dir)?;
    let v1 = build(dir, "1.0.0", 1, false)?;
    let v2 = build(dir, "2.0.0", 1, true)?;
    let v3 = build(dir, "3.0.0", 1, true)?;
    let c = boot("slipway-keep-aside", dir, "restore_data = \"always\"")?;
    let out = slipway(&c, &["install", &v1])?;
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr_text());
    wait_trading(&c, "1.0.0")?;

    // 2.0.0 trades through its failing gate and saves on its way out.
    let out = slipway(&c, &["install", &v2])?;
    let err = out.stderr_text();
    assert_eq!(out.status.code(), Some(3), "{err}");
    let kept: Vec<String> = backups(&c)?
        .into_iter()
        .filter(|n| n.starts_with("kept-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let kept_dir = format!("{ROOT}/backups/{}", kept[0]);
    assert!(err.contains(&kept_dir), "the message names it: {err}");
    let record: serde_json::Value =
        serde_json::from_str(&c.read_to_string(format!("{kept_dir}/snapshot.json"))?)?;
    assert_eq!(record["about"]["reason"], "kept-aside", "{record}");
    assert_eq!(record["about"]["version"], "2.0.0", "{record}");
    let state: serde_json::Value =
        serde_json::from_str(&c.read_to_string(format!("{kept_dir}/data/state.json"))?)?;
    assert_eq!(state["written_by"], "2.0.0", "what 2.0.0 wrote: {state}");
    let status = slipway(&c, &["status"])?.stdout_text();
    assert!(status.contains(&kept_dir), "status names it:\n{status}");
    wait_trading(&c, "1.0.0")?;

    // With the default policy, a release that kept the schema leaves its
    // data in place: 1.0.0 goes on from what 3.0.0 wrote.
    let config = c.read_to_string(CONFIG)?.replace(
        "restore_data = \"always\"",
        "restore_data = \"schema-changed\"",
    );
    c.write_file(CONFIG, config, 0o644)?;
    let out = slipway(&c, &["install", &v3])?;
    let err = out.stderr_text();
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("the data 3.0.0 wrote was kept in place"),
        "{err}"
    );
    let journal = c.journal(BOT_UNIT)?;
    let v3_at = journal
        .rfind("starting version=3.0.0")
        .context("3.0.0 started")?;
    let after = &journal[v3_at..];
    let stopped = field(after, "stopped", "trades").context(format!("3.0.0 stopped:\n{after}"))?;
    let restarted = after
        .find("starting version=1.0.0")
        .context(format!("1.0.0 back:\n{after}"))?;
    assert_eq!(
        field(&after[restarted..], "starting version=1.0.0", "trades"),
        Some(stopped),
        "{after}"
    );
    wait_trading(&c, "1.0.0")?;
    c.shutdown()?;
    Ok(())
}

/// The digest of a tree inside the container, without slipway's `meta/` and
/// the bot's pause marker (what the restore compares).
fn data_digest(c: &Container, dir: &str) -> Result<String> {
    let out = c.sh_ok(&format!(
        "cd '{dir}' && find . -path ./meta -prune -o -type f ! -name paused -print | sort | xargs -r sha256sum | sha256sum"
    ))?;
    Ok(out.stdout_text().trim().to_string())
}

#[test]
fn rollback_restore_data_crosses_a_migration_and_restore_works_while_the_service_runs() -> Result<()>
{
    if !Container::available_or_skip()? {
        return Ok(());
    }
    let shared = shared_tempdir("backups")?;
    let dir = shared.path();
    keys(dir)?;
    let v1 = build(dir, "1.0.0", 1, false)?;
    let v2 = build(dir, "2.0.0", 2, false)?;
    let c = boot("slipway-backups", dir, "")?;
    let out = slipway(&c, &["install", &v1])?;
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr_text());
    wait_trading(&c, "1.0.0")?;
    let out = slipway(&c, &["install", &v2])?;
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr_text());
    wait_trading(&c, "2.0.0")?;

    // The update's snapshot is listed as a backup of 1.0.0's data.
    let out = slipway(&c, &["backups", "--json"])?;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let of_v1 = list
        .as_array()
        .and_then(|a| a.iter().find(|b| b["version"] == "1.0.0"))
        .cloned()
        .context(format!("no backup of 1.0.0's data: {list}"))?;
    assert_eq!(of_v1["schema"], 1, "{of_v1}");
    let v1_dir = of_v1["dir"].as_str().context("dir")?.to_string();
    let v1_digest = data_digest(&c, &format!("{v1_dir}/data"))?;

    // A plain rollback cannot cross the migration, and says what can.
    let out = slipway(&c, &["rollback"])?;
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains("--restore-data"),
        "{}",
        out.stderr_text()
    );

    let out = slipway(&c, &["rollback", "--restore-data"])?;
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr_text());
    wait_trading(&c, "1.0.0")?;
    // Byte for byte (the bot saves again only ten seconds after its start).
    assert_eq!(data_digest(&c, DATA)?, v1_digest, "1.0.0's data is back");
    assert_eq!(
        c.read_to_string(format!("{DATA}/schema_version"))?.trim(),
        "1"
    );
    // 1.0.0 came back on its own data: the bot started on the trade count
    // of that backup.
    let journal = c.journal(BOT_UNIT)?;
    let back = journal
        .rfind("starting version=1.0.0")
        .context("1.0.0 back")?;
    let backup_state: serde_json::Value =
        serde_json::from_str(&c.read_to_string(format!("{v1_dir}/data/state.json"))?)?;
    assert_eq!(
        field(&journal[back..], "starting version=1.0.0", "trades"),
        backup_state["trades"].as_u64().map(|t| t.to_string()),
        "{}",
        &journal[back..]
    );

    // restore: an older backup while the service runs.
    let out = slipway(
        &c,
        &["restore", of_v1["name"].as_str().context("name")?, "--yes"],
    )?;
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr_text());
    wait_trading(&c, "1.0.0")?;
    let journal = c.journal(BOT_UNIT)?;
    let again = journal
        .rfind("starting version=1.0.0")
        .context("restarted")?;
    assert!(
        again > back,
        "the service was restarted on the restored data"
    );
    assert_eq!(
        data_digest(&c, DATA)?,
        v1_digest,
        "the backup's data is back"
    );
    assert_eq!(
        field(&journal[again..], "starting version=1.0.0", "trades"),
        backup_state["trades"].as_u64().map(|t| t.to_string()),
    );
    let out = slipway(&c, &["backups", "--json"])?;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert!(
        list.as_array()
            .is_some_and(|a| a.iter().any(|b| b["reason"] == "pre-restore")),
        "the data before the restore is kept: {list}"
    );
    c.shutdown()?;
    Ok(())
}

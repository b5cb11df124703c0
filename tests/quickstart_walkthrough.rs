//! docs/quickstart.md, followed as written, under a real systemd: the host
//! configuration, the app's unit (its own user `bot`, read-only releases)
//! and the first-install commands are taken from the document itself, so
//! the test fails when the document stops being true.
//!
//! The walk: v1 installed by hand and the unit enabled by that first
//! install; the timer's service (`update --auto`) then takes v2 (a schema
//! migration, run as `bot`), refuses v3 (unhealthy: flipped back, bad-listed,
//! one clear banner, auto-update still on, nothing counted against the
//! host), installs v4, and a run with nothing new stays quiet. After every
//! step: the bot runs as `bot`, its data belongs to `bot`, `slipway verify`
//! is clean and `status` leads with nothing that needs the operator.
//!
//! Runs as root only; without root it prints why it skips, and under
//! `CI=true` it fails instead.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result};
use slipway_e2e::{
    build_bot, run_ok, shared_tempdir, BotFlavor, Container, ContainerOptions, Nginx, NginxOptions,
    OutputExt,
};

const DOC: &str = "docs/quickstart.md";
const CONFIG: &str = "/etc/slipway/update.toml";
const UNIT_FILE: &str = "/etc/systemd/system/aibot.service";
const DOC_URL: &str = "https://you.github.io/bot";
const DATA: &str = "/opt/bot/bot_persistence/default";

/// The fenced code blocks of `doc` between the heading `from` and the next
/// heading of the same level, in order.
fn blocks(doc: &str, from: &str) -> Result<Vec<String>> {
    let start = doc
        .find(from)
        .with_context(|| format!("{DOC} has no heading {from:?}"))?;
    let rest = &doc[start + from.len()..];
    let section = rest.find("\n## ").map_or(rest, |end| &rest[..end]);
    let mut out = Vec::new();
    let mut parts = section.split("```");
    parts.next();
    while let (Some(block), _) = (parts.next(), parts.next()) {
        // Drop the info string (`toml`, `ini`) on the fence's line.
        let body = block.split_once('\n').map_or("", |(_, b)| b);
        out.push(body.to_string());
    }
    Ok(out)
}

/// Builds the example bot as `version` (data schema `schema`; `/health`
/// failing when `unhealthy`) into the repository; returns its release id.
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
    Ok(bot.id)
}

fn publish(dir: &Path, id: &str) -> Result<()> {
    run_ok(
        Command::new(slipway_e2e::slipway_pack()?)
            .args(["publish", "--channel", "stable", "--repo"])
            .arg(dir.join("repo"))
            .arg("--key")
            .arg(dir.join("keys/slipway.key"))
            .arg(id),
    )
    .map(drop)
}

/// `slipway ARGS` inside the container, as the operator types it.
fn slipway(c: &Container, args: &str) -> Result<Output> {
    c.exec_timeout(
        &["sh", "-c", &format!("slipway {args}")],
        Duration::from_secs(180),
    )
}

fn health_version(c: &Container) -> Option<String> {
    let out = c
        .exec(&[
            "curl",
            "-s",
            "--max-time",
            "3",
            "http://127.0.0.1:8080/health",
        ])
        .ok()?;
    let body: serde_json::Value = serde_json::from_str(&out.stdout_text()).ok()?;
    body["version"].as_str().map(str::to_string)
}

fn wait_healthy(c: &Container, version: &str) -> Result<()> {
    slipway_e2e::wait_until(Duration::from_secs(30), "the bot healthy", || {
        Ok(health_version(c).as_deref() == Some(version))
    })
    .with_context(|| {
        format!(
            "waiting for {version}: {}",
            c.journal("aibot.service").unwrap_or_default()
        )
    })
}

/// The uid a path inside the container belongs to.
fn owner(c: &Container, path: &str) -> Result<String> {
    Ok(c.sh_ok(&format!("stat -c %U {path}"))?
        .stdout_text()
        .trim()
        .to_string())
}

/// What must hold after every step of the walk.
fn healthy_host(c: &Container, version: &str) -> Result<()> {
    wait_healthy(c, version)?;
    let pid = c
        .sh_ok("systemctl show -p MainPID --value aibot.service")?
        .stdout_text()
        .trim()
        .to_string();
    let user = c.sh_ok(&format!("ps -o user= -p {pid}"))?.stdout_text();
    assert_eq!(user.trim(), "bot", "the bot runs as its own user");
    for dir in [DATA.to_string(), format!("{DATA}/meta")] {
        assert_eq!(
            owner(c, &dir)?,
            "bot",
            "{dir} belongs to the service's user"
        );
    }
    let out = slipway(c, "verify")?;
    assert!(
        out.status.success(),
        "verify: {}{}",
        out.stdout_text(),
        out.stderr_text()
    );
    let status = slipway(c, "status")?;
    let text = status.stdout_text();
    assert!(
        status.status.success(),
        "status: {text}{}",
        status.stderr_text()
    );
    assert!(text.contains(version), "{text}");
    // Nothing leads the status (a warning would come before `root:`).
    assert!(text.starts_with("root:"), "{text}");
    for bad in ["STALLED", "DISABLED", "dirty", "no longer matches", "error"] {
        assert!(!text.contains(bad), "status says {bad:?}:\n{text}");
    }
    assert!(text.contains("auto-update: enabled"), "{text}");
    Ok(())
}

/// One run of the timer's service (`slipway update --auto`), as the timer
/// starts it; returns whether the unit's run succeeded.
fn timer_run(c: &Container) -> Result<bool> {
    let out = c.exec_timeout(
        &["systemctl", "start", "slipway-update.service"],
        Duration::from_secs(240),
    )?;
    Ok(out.status.success())
}

#[test]
fn the_quickstart_as_written_runs_the_bot_as_its_own_user_and_survives_a_bad_release() -> Result<()>
{
    if !Container::available_or_skip()? {
        return Ok(());
    }
    let doc = fs::read_to_string(slipway_e2e::workspace_root().join(DOC))?;
    let host = blocks(&doc, "## 4. The host")?;
    let config = host
        .iter()
        .find(|b| b.contains("[update]"))
        .context("section 4 has no configuration")?;
    let unit = host
        .iter()
        .find(|b| b.contains("ExecStart="))
        .context("section 4 has no unit")?;
    let first = blocks(&doc, "## 5. First install, then the timer")?;
    let commands = first.first().context("section 5 has no commands")?;

    let shared = shared_tempdir("quickstart")?;
    let dir = shared.path().to_path_buf();
    run_ok(
        Command::new(slipway_e2e::slipway_pack()?)
            .args(["keygen", "--unencrypted", "--out-dir"])
            .arg(dir.join("keys")),
    )?;
    let v1 = build(&dir, "1.0.0", 1, false)?;
    let v2 = build(&dir, "2.0.0", 2, false)?;
    let v3 = build(&dir, "3.0.0", 2, true)?;
    let v4 = build(&dir, "4.0.0", 2, false)?;
    publish(&dir, &v1)?;
    let public_key = fs::read_to_string(dir.join("keys/slipway.pub"))?;
    let public_key = public_key
        .lines()
        .find(|l| l.starts_with("RW"))
        .context("no key line in slipway.pub")?
        .to_string();

    let c = Container::boot_with("slipway-quickstart", ContainerOptions::default().bind(&dir))?;
    let nginx = Nginx::serve_in(&c, dir.join("repo"), NginxOptions::default())?;
    let url = nginx.base_url();
    // `slipway` on the operator's PATH, as the .deb puts it.
    c.sh_ok(&format!(
        "ln -sf {} /usr/local/bin/slipway",
        slipway_e2e::slipway()?.display()
    ))?;
    c.sh_ok("useradd --system bot")?;
    // The document's configuration, with this test's channel and key, and a
    // shorter health gate than the default minute for the unhealthy v3.
    let config = config
        .replace(DOC_URL, &url)
        .replace("RW...your slipway.pub...", &public_key)
        .replace("[service]\n", "[service]\nhealth_timeout_seconds = 8\n");
    assert!(
        config.contains(&url) && config.contains(&public_key),
        "{config}"
    );
    c.write_file(CONFIG, config, 0o644)?;
    c.write_file(UNIT_FILE, unit.as_str(), 0o644)?;
    c.systemctl(&["daemon-reload"])?;

    // Section 5, line by line.
    for line in commands.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let line = line.replace(DOC_URL, &url);
        let out = c.exec_timeout(&["sh", "-c", &line], Duration::from_secs(180))?;
        assert!(
            out.status.success(),
            "`{line}` failed ({:?}):\n{}{}",
            out.status.code(),
            out.stdout_text(),
            out.stderr_text()
        );
    }
    healthy_host(&c, "1.0.0")?;
    let enabled = c.exec(&["systemctl", "is-enabled", "aibot.service"])?;
    assert_eq!(
        enabled.stdout_text().trim(),
        "enabled",
        "the first install enables the unit"
    );

    // v2: a schema migration, as the timer runs it.
    publish(&dir, &v2)?;
    assert!(timer_run(&c)?, "{}", c.journal("slipway-update.service")?);
    healthy_host(&c, "2.0.0")?;
    assert_eq!(
        c.read_to_string(format!("{DATA}/schema_version"))?.trim(),
        "2"
    );
    assert_eq!(owner(&c, &format!("{DATA}/schema_version"))?, "bot");

    // v3 is unhealthy: flipped back to v2, bad-listed, one clear banner.
    publish(&dir, &v3)?;
    assert!(!timer_run(&c)?, "an unhealthy release fails the run");
    // The recover unit (OnFailure=) has nothing left to do; wait for it.
    slipway_e2e::wait_until(
        Duration::from_secs(60),
        "the recover unit to settle",
        || {
            let s = c.unit_state("slipway-recover.service")?;
            Ok(s.active != "activating")
        },
    )?;
    healthy_host(&c, "2.0.0")?;
    let banner = c.read_to_string("/opt/bot/state/banner.txt")?;
    let banner = banner.trim();
    assert!(banner.chars().count() <= 160, "{banner}");
    assert!(banner.starts_with("ROLLED BACK 3.0.0"), "{banner}");
    let out = slipway(&c, "status --json")?;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(status["auto_update"]["enabled"], true, "{status}");
    let history = slipway(&c, "history --json")?;
    let history: serde_json::Value = serde_json::from_slice(&history.stdout)?;
    assert!(
        history.as_array().is_some_and(|a| a
            .iter()
            .any(|e| e["version"] == "3.0.0" && e["result"] == "rolled_back")),
        "{history}"
    );

    // v4 is good, and lands on the next run; then nothing new is quiet.
    publish(&dir, &v4)?;
    assert!(timer_run(&c)?, "{}", c.journal("slipway-update.service")?);
    healthy_host(&c, "4.0.0")?;
    assert!(timer_run(&c)?, "an idle run succeeds");
    let journal = c.journal("slipway-update.service")?;
    assert!(!journal.contains("slipway: error"), "{journal}");
    assert_eq!(
        journal.matches("updated bot 2.0.0 → 4.0.0").count(),
        1,
        "{journal}"
    );
    let _ = (v1, v2, v3, v4);

    drop(nginx);
    c.shutdown()?;
    Ok(())
}

//! `slipway` against a real systemd: the example bot as the unit
//! `aibot.service` (`Restart=always`) in a container booted by the harness,
//! with `manager = "systemd"`, and the host's `slipway` binary run inside
//! the container.
//!
//! The keys and the release archives are made on the host under `/var/tmp`
//! before the container boots (the container sees them through its
//! overlay); the install root and the persistence live inside the container
//! (`/opt/e2e/...`), and the test reads them back through
//! [`Container::host_path`].
//!
//! Runs as root only; without root it prints why it skips, and under
//! `CI=true` it fails instead.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use slipway_e2e::{bot_config, bot_unit, run_ok, shared_tempdir, Container, OutputExt, BOT_UNIT};

const UNIT: &str = BOT_UNIT;
const ROOT: &str = "/opt/e2e/root";
const DATA: &str = "/opt/e2e/data";
const CONFIG: &str = "/etc/slipway/update.toml";

/// Releases built on the host before the boot.
struct Releases {
    /// Keeps the shared directory alive for the container's lifetime.
    _dir: tempfile::TempDir,
    pub_key: PathBuf,
    archives: BTreeMap<&'static str, PathBuf>,
}

/// What to change in the example bot for one release.
struct Flavor {
    version: &'static str,
    schema: u32,
    fail_health: bool,
    crash_on_start: bool,
    failing_check: bool,
}

impl Flavor {
    const fn good(version: &'static str, schema: u32) -> Flavor {
        Flavor {
            version,
            schema,
            fail_health: false,
            crash_on_start: false,
            failing_check: false,
        }
    }
}

fn build_releases(label: &str, flavors: &[Flavor]) -> Result<Releases> {
    let dir = shared_tempdir(label)?;
    let pack = slipway_e2e::slipway_pack()?;
    let keys = dir.path().join("keys");
    run_ok(
        Command::new(&pack)
            .args(["keygen", "--unencrypted", "--out-dir"])
            .arg(&keys),
    )?;
    let repo = dir.path().join("repo");
    let mut archives = BTreeMap::new();
    for f in flavors {
        let src = dir.path().join(format!("src-{}", f.version));
        run_ok(
            Command::new("cp")
                .arg("-r")
                .arg(slipway_e2e::workspace_root().join("examples/bot"))
                .arg(&src),
        )?;
        let _ = fs::remove_dir_all(src.join("app/bot/__pycache__"));
        fs::write(src.join("schema/VERSION"), format!("{}\n", f.schema))?;
        let mut toml = fs::read_to_string(src.join("slipway.toml"))?
            .replace("version = 1\n", &format!("version = {}\n", f.schema));
        if f.failing_check {
            toml = toml.replace(
                "check = [\"python3\", \"-m\", \"compileall\", \"-q\", \"app\"]",
                "check = [\"python3\", \"-c\", \"import sys; sys.exit('check: the release is broken')\"]",
            );
        }
        fs::write(src.join("slipway.toml"), toml)?;
        fs::write(
            src.join("app/bot/settings.json"),
            format!(
                "{{\"fail_health\": {}, \"crash_on_start\": {}}}\n",
                f.fail_health, f.crash_on_start
            ),
        )?;
        let out = run_ok(
            Command::new(&pack)
                .arg("build")
                .arg(&src)
                .args(["--version", f.version, "--json", "--key"])
                .arg(keys.join("slipway.key"))
                .arg("--out")
                .arg(&repo),
        )?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let id = v["id"].as_str().context("build --json has no id")?;
        let archive = repo
            .join("releases")
            .join(format!("{}.tar.zst", id.trim_start_matches("sha256:")));
        archives.insert(f.version, archive);
    }
    Ok(Releases {
        pub_key: keys.join("slipway.pub"),
        _dir: dir,
        archives,
    })
}

/// Boots a container with the bot's unit and slipway's configuration.
fn boot(label: &str, releases: &Releases) -> Result<Container> {
    let c = Container::boot(label)?;
    c.install_unit(UNIT, &bot_unit(ROOT, DATA))?;
    c.write_file(
        CONFIG,
        bot_config(
            ROOT,
            DATA,
            &releases.pub_key,
            8,
            "[health]\nrestore_data = \"always\"\n\n[report]\njournald = true\n",
        ),
        0o644,
    )?;
    Ok(c)
}

/// Runs the host's `slipway` inside the container.
fn slipway(c: &Container, args: &[&str]) -> Result<Output> {
    let bin = slipway_e2e::slipway()?;
    let mut argv: Vec<String> = vec![bin.display().to_string(), "--config".into(), CONFIG.into()];
    argv.extend(args.iter().map(|s| s.to_string()));
    c.exec_timeout(&argv, Duration::from_secs(180))
}

/// `slipway ARGS` inside, asserting the exit code; `--json` output parsed.
fn slipway_json(c: &Container, args: &[&str], code: i32) -> Result<serde_json::Value> {
    let mut all = args.to_vec();
    all.push("--json");
    let out = slipway(c, &all)?;
    if out.status.code() != Some(code) {
        bail!(
            "slipway {all:?} exited {:?}, expected {code}\n--- stdout\n{}\n--- stderr\n{}\n--- unit journal\n{}",
            out.status.code(),
            out.stdout_text(),
            out.stderr_text(),
            c.journal(UNIT).unwrap_or_default()
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("slipway {all:?} printed no JSON: {}", out.stdout_text()))
}

fn archive(releases: &Releases, version: &str) -> Result<String> {
    Ok(releases
        .archives
        .get(version)
        .with_context(|| format!("no release {version} was built"))?
        .display()
        .to_string())
}

fn main_pid(c: &Container) -> Result<u32> {
    let out = c.systemctl(&["show", "-p", "MainPID", "--value", UNIT])?;
    Ok(out.stdout_text().trim().parse()?)
}

/// `GET /health` inside the container: (status, body).
fn health(c: &Container) -> Result<(u16, serde_json::Value)> {
    let out = c.exec(&[
        "curl",
        "-s",
        "--max-time",
        "3",
        "-w",
        "\n%{http_code}",
        "http://127.0.0.1:8080/health",
    ])?;
    let text = out.stdout_text();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    Ok((
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    ))
}

fn wait_healthy(c: &Container, version: &str) -> Result<()> {
    slipway_e2e::wait_until(
        Duration::from_secs(20),
        format!("{UNIT} healthy with version {version}"),
        || {
            let (code, body) = health(c)?;
            Ok(code == 200 && body["version"] == version)
        },
    )
    .with_context(|| c.journal(UNIT).unwrap_or_default())
}

fn current(c: &Container) -> Option<String> {
    fs::read_link(c.host_path(format!("{ROOT}/current")))
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// Every file under `dir` (but the top-level `meta/` and the bot's `paused`
/// marker) with its bytes.
fn tree(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) -> Result<()> {
        for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let e = e?;
            let path = e.path();
            let rel = path.strip_prefix(base)?.to_string_lossy().into_owned();
            if rel == "meta" || rel == "paused" {
                continue;
            }
            if e.file_type()?.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                walk(base, &path, out)?;
            } else {
                out.insert(rel, fs::read(&path)?);
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

fn version_of_dir(name: &Option<String>) -> String {
    name.as_deref()
        .and_then(|n| n.split('-').next())
        .unwrap_or("none")
        .to_string()
}

fn containers_available() -> Result<bool> {
    Container::available_or_skip()
}

#[test]
fn systemd_update_restarts_the_unit_then_flips_back_an_unhealthy_release() -> Result<()> {
    if !containers_available()? {
        return Ok(());
    }
    let releases = build_releases(
        "systemd-update",
        &[
            Flavor::good("1.0.0", 1),
            Flavor::good("2.0.0", 2),
            Flavor {
                fail_health: true,
                ..Flavor::good("3.0.0", 2)
            },
        ],
    )?;
    let c = boot("slipway-update", &releases)?;

    let o = slipway_json(&c, &["install", &archive(&releases, "1.0.0")?], 0)?;
    assert_eq!(o["result"], "updated", "{o}");
    wait_healthy(&c, "1.0.0")?;
    // The first install enabled the unit: the bot comes back after a reboot.
    let enabled = c.exec(&["systemctl", "is-enabled", UNIT])?;
    assert_eq!(enabled.stdout_text().trim(), "enabled");
    let pid1 = main_pid(&c)?;
    assert!(pid1 > 0);

    // v1 → v2: quiesce, migrate, switch, systemctl restart, health gate.
    let o = slipway_json(&c, &["install", &archive(&releases, "2.0.0")?], 0)?;
    assert_eq!(o["result"], "updated", "{o}");
    wait_healthy(&c, "2.0.0")?;
    let pid2 = main_pid(&c)?;
    assert_ne!(pid1, pid2, "the unit was restarted");
    let state = c.unit_state(UNIT)?;
    assert_eq!(
        (state.active.as_str(), state.sub.as_str()),
        ("active", "running")
    );
    assert_eq!(
        c.read_to_string(format!("{DATA}/schema_version"))?.trim(),
        "2"
    );
    // The quiesce was acknowledged by the old process before the restart.
    let journal = c.journal(UNIT)?;
    let paused = journal
        .find("paused source=http")
        .context(format!("no quiesce in the unit's journal:\n{journal}"))?;
    let started = journal
        .find("starting version=2.0.0")
        .context("v2 never started")?;
    assert!(paused < started, "{journal}");
    let stopping = journal[paused..].find("stopping").map(|i| i + paused);
    assert!(stopping.is_some_and(|s| s < started), "{journal}");
    slipway(&c, &["verify"])?.checked("slipway verify")?;

    // v3 answers 503: flipped back to v2, data restored, bad-listed.
    let before = slipway_json(&c, &["status"], 0)?;
    assert_eq!(before["current"]["version"], "2.0.0");
    let o = slipway_json(&c, &["install", &archive(&releases, "3.0.0")?], 3)?;
    assert_eq!(o["result"], "rolled_back", "{o}");
    wait_healthy(&c, "2.0.0")?;
    assert_eq!(version_of_dir(&current(&c)), "2.0.0");
    let state = c.unit_state(UNIT)?;
    assert_eq!(
        (state.active.as_str(), state.sub.as_str()),
        ("active", "running")
    );
    assert_ne!(main_pid(&c)?, pid2, "the old release was started again");
    let snapshot = o["snapshot"]
        .as_str()
        .context("no snapshot in the outcome")?;
    assert_eq!(
        tree(&c.host_path(DATA))?,
        tree(&c.host_path(Path::new(snapshot).join("data")))?,
        "the persistence is byte-identical to the snapshot of the paused v2"
    );
    // What v3 wrote before it was flipped back is kept aside, and named.
    let message = o["message"].as_str().unwrap_or_default();
    assert!(message.contains("is kept in /opt/"), "{o}");
    let status = slipway_json(&c, &["status"], 0)?;
    assert_eq!(
        status["bad_releases"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );
    assert_eq!(status["bad_releases"][0]["version"], "3.0.0");
    // A critical alert went to journald.
    let alerts = c.exec_ok(&[
        "journalctl",
        "--no-pager",
        "-o",
        "json",
        "SYSLOG_IDENTIFIER=slipway",
        "SLIPWAY_RESULT=rolled_back",
    ])?;
    let alert: serde_json::Value = serde_json::from_str(
        alerts
            .stdout_text()
            .lines()
            .last()
            .context("no rolled_back entry in the journal")?,
    )?;
    assert_eq!(alert["PRIORITY"], "2", "{alert}");

    // Refused on a second try without --force.
    let out = slipway(&c, &["install", &archive(&releases, "3.0.0")?])?;
    assert_eq!(out.status.code(), Some(4), "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains("bad list"),
        "{}",
        out.stderr_text()
    );
    assert_eq!(version_of_dir(&current(&c)), "2.0.0");
    c.shutdown()?;
    Ok(())
}

#[test]
fn systemd_failing_check_never_restarts_the_unit() -> Result<()> {
    if !containers_available()? {
        return Ok(());
    }
    let releases = build_releases(
        "systemd-check",
        &[
            Flavor::good("1.0.0", 1),
            Flavor {
                failing_check: true,
                ..Flavor::good("2.0.0", 1)
            },
        ],
    )?;
    let c = boot("slipway-check", &releases)?;
    // An operator who enables units by their own means.
    let config = c
        .read_to_string(CONFIG)?
        .replace("[service]\n", "[service]\nenable_on_install = false\n");
    c.write_file(CONFIG, config, 0o644)?;
    slipway_json(&c, &["install", &archive(&releases, "1.0.0")?], 0)?;
    wait_healthy(&c, "1.0.0")?;
    let enabled = c.exec(&["systemctl", "is-enabled", UNIT])?;
    assert_eq!(
        enabled.stdout_text().trim(),
        "disabled",
        "enable_on_install = false"
    );
    let pid = main_pid(&c)?;
    let restarts = c.unit_state(UNIT)?.n_restarts;
    let journal_before = c.journal(UNIT)?;

    let out = slipway(&c, &["install", &archive(&releases, "2.0.0")?])?;
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains("the release is broken"),
        "{}",
        out.stderr_text()
    );
    assert_eq!(main_pid(&c)?, pid, "the unit was not restarted");
    assert_eq!(c.unit_state(UNIT)?.n_restarts, restarts);
    let journal = c.journal(UNIT)?;
    let new = journal.get(journal_before.len()..).unwrap_or("");
    assert!(!new.contains("paused"), "the app was quiesced:\n{new}");
    assert_eq!(version_of_dir(&current(&c)), "1.0.0");
    wait_healthy(&c, "1.0.0")?;
    c.shutdown()?;
    Ok(())
}

#[test]
fn systemd_crash_looping_release_is_flipped_back() -> Result<()> {
    if !containers_available()? {
        return Ok(());
    }
    let releases = build_releases(
        "systemd-crash",
        &[
            Flavor::good("1.0.0", 1),
            Flavor {
                crash_on_start: true,
                ..Flavor::good("2.0.0", 1)
            },
        ],
    )?;
    let c = boot("slipway-crash", &releases)?;
    slipway_json(&c, &["install", &archive(&releases, "1.0.0")?], 0)?;
    wait_healthy(&c, "1.0.0")?;

    let o = slipway_json(&c, &["install", &archive(&releases, "2.0.0")?], 3)?;
    assert_eq!(o["result"], "rolled_back", "{o}");
    let message = o["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("crash") || message.contains("restarted"),
        "the crash loop is named: {message}"
    );
    wait_healthy(&c, "1.0.0")?;
    assert_eq!(version_of_dir(&current(&c)), "1.0.0");
    let state = c.unit_state(UNIT)?;
    assert_eq!(
        (state.active.as_str(), state.sub.as_str()),
        ("active", "running")
    );
    let status = slipway_json(&c, &["status"], 0)?;
    assert_eq!(status["bad_releases"][0]["version"], "2.0.0", "{status}");
    c.shutdown()?;
    Ok(())
}

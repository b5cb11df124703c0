//! The air-gapped dependency pattern of `examples/bot-wheels` (the seed's
//! open questions 1 and 2), end to end without a network: the bot's
//! Python dependency travels as a wheel inside the signed release, the
//! release's check hook installs it into a per-release virtualenv with
//! `pip install --no-index`, and the service runs with that venv's Python.
//!
//! Everything on the host runs inside `unshare -n`: a network namespace
//! with nothing but a loopback interface, so any attempt to reach an index
//! would fail. Release 1.0.0 carries slipway-demo-dep 1.0.0 and release
//! 2.0.0 carries 2.0.0; after the update the bot reports 2.0.0, and after
//! `slipway rollback` it reports 1.0.0 again, from the previous release's
//! own venv.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use slipway_e2e::{run, slipway, slipway_pack, workspace_root, OutputExt};

const TIMEOUT: Duration = Duration::from_secs(600);

fn can_unshare_network() -> bool {
    Command::new("unshare")
        .args(["-n", "true"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn vendored_wheels_install_offline_and_roll_back_with_their_dependencies() -> Result<()> {
    if !can_unshare_network() {
        let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
        if in_ci || rustix::process::geteuid().is_root() {
            bail!(
                "`unshare -n` does not work here; the air-gapped test needs it (root, util-linux)"
            );
        }
        eprintln!("SKIP: `unshare -n` needs root");
        return Ok(());
    }
    let tmp = tempfile::Builder::new()
        .prefix("slipway-wheels-")
        .tempdir()?;
    let dir = tmp.path();
    let pack = slipway_pack()?;

    let mut keygen = Command::new(&pack);
    keygen
        .args(["keygen", "--unencrypted", "--out-dir"])
        .arg(dir.join("keys"));
    run(keygen, TIMEOUT)?.checked("keygen")?;

    // Two releases, each built by build.sh with its own dependency version;
    // 1.0.0 is published now, 2.0.0 on the offline host later.
    let mut ids = Vec::new();
    for (version, dep) in [("1.0.0", "1.0.0"), ("2.0.0", "2.0.0")] {
        let tree = dir.join(format!("tree-{version}"));
        let mut build = Command::new("bash");
        build
            .arg(workspace_root().join("examples/bot-wheels/build.sh"))
            .arg(&tree)
            .env("DEP_VERSION", dep);
        run(build, TIMEOUT)?.checked("examples/bot-wheels/build.sh")?;
        let mut cmd = Command::new(&pack);
        cmd.arg("build")
            .arg(&tree)
            .args(["--version", version, "--key"])
            .arg(dir.join("keys/slipway.key"))
            .arg("--out")
            .arg(dir.join("repo"));
        let id = run(cmd, TIMEOUT)?
            .checked("slipway-pack build")?
            .stdout_text();
        ids.push(id.trim().to_string());
    }
    let mut publish = Command::new(&pack);
    publish
        .args(["publish", "--repo"])
        .arg(dir.join("repo"))
        .args(["--channel", "stable", "--key"])
        .arg(dir.join("keys/slipway.key"))
        .arg(&ids[0]);
    run(publish, TIMEOUT)?.checked("slipway-pack publish")?;

    let root = dir.join("root");
    let bot_env = |action: &str| {
        format!(
            "[\"env\", \"ROOT={root}\", \"PERSIST={data}\", \"PORT=18080\", \"PYTHON={root}/current/app/bin/venv-python\", \"STOP_TIMEOUT=10\", \"{ctl}\", \"{action}\"]",
            root = root.display(),
            data = dir.join("data").display(),
            ctl = workspace_root().join("examples/host/bot-ctl").display(),
        )
    };
    let config = dir.join("update.toml");
    fs::write(
        &config,
        format!(
            "[update]\nsource = \"{repo}\"\npublic_keys = [\"{key}\"]\nmax_attempts_per_day = 20\n\n\
             [paths]\nroot = \"{root}\"\npersistence = \"{data}\"\nmax_save_age_minutes = 0\n\n\
             [service]\nmanager = \"command\"\nrestart = {restart}\nstatus = {status}\n\
             health_url = \"http://127.0.0.1:18080/health\"\nhealth_timeout_seconds = 20\n\
             healthy_polls = 2\nhealth_interval_ms = 200\nhealth_expect_version = true\n\
             quiesce_url = \"http://127.0.0.1:18080/admin/quiesce\"\nsave_url = \"http://127.0.0.1:18080/admin/save\"\n\n\
             [hooks]\ntimeout_seconds = 300\n\n[report]\njournald = false\n",
            repo = dir.join("repo").display(),
            key = dir.join("keys/slipway.pub").display(),
            root = root.display(),
            data = dir.join("data").display(),
            restart = bot_env("restart"),
            status = bot_env("status"),
        ),
    )?;

    // The host's whole life, in a namespace with no network but loopback.
    let script = r#"
set -euo pipefail
ip link set lo up
health() { python3 -c 'import json,sys,urllib.request as u; print(json.dumps(json.load(u.urlopen("http://127.0.0.1:18080/health"))))'; }
# Proof that there is no way out: loopback is the only link, and there is
# no route anywhere else.
if [ "$(ip -o link show | awk -F': ' '{print $2}')" != "lo" ] || [ -n "$(ip route show)" ]; then
    echo "the namespace has a network" >&2; ip -o link show >&2; ip route show >&2; exit 1
fi
"$SLIPWAY" --config "$CONFIG" install "$REPO" -q
echo "AFTER_INSTALL $(health)"
"$PACK" publish --repo "$REPO" --channel stable --key "$KEY" "$V2" >/dev/null
"$SLIPWAY" --config "$CONFIG" update -q
echo "AFTER_UPDATE $(health)"
"$SLIPWAY" --config "$CONFIG" rollback -q
echo "AFTER_ROLLBACK $(health)"
ls "$ROOT/venvs" | sed 's/^/VENV /'
"$ROOT/current/app/bin/venv-python" -c 'import slipway_demo_dep, sys; print("CURRENT_DEP", slipway_demo_dep.__version__, sys.prefix)'
ROOT="$ROOT" PERSIST="$DATA" PORT=18080 "$BOT_CTL" stop >/dev/null
"#;
    let mut cmd = Command::new("unshare");
    cmd.args(["-n", "bash", "-c", script])
        .env("SLIPWAY", slipway()?)
        .env("PACK", &pack)
        .env("KEY", dir.join("keys/slipway.key"))
        .env("V2", &ids[1])
        .env("CONFIG", &config)
        .env("REPO", dir.join("repo"))
        .env("ROOT", &root)
        .env("DATA", dir.join("data"))
        .env("BOT_CTL", workspace_root().join("examples/host/bot-ctl"))
        .env_remove("SLIPWAY_CONFIG")
        .env_remove("BOT_AUTO_UPDATE")
        // No proxy could help either; make sure none is tried.
        .env("PIP_NO_INDEX", "1");
    let out = run(cmd, TIMEOUT)?;
    let log = fs::read_to_string(root.join("run/bot.log")).unwrap_or_default();
    let out = out.checked(format!("the offline host script\n--- bot log ---\n{log}"))?;
    let text = out.stdout_text();
    let line = |prefix: &str| -> Result<serde_json::Value> {
        let l = text
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .with_context(|| format!("no {prefix} in:\n{text}"))?;
        Ok(serde_json::from_str(l.trim())?)
    };
    let installed = line("AFTER_INSTALL ")?;
    assert_eq!(installed["version"], "1.0.0", "{installed}");
    assert_eq!(
        installed["modules"]["slipway_demo_dep"], "1.0.0",
        "{installed}"
    );
    let updated = line("AFTER_UPDATE ")?;
    assert_eq!(updated["version"], "2.0.0", "{updated}");
    assert_eq!(updated["modules"]["slipway_demo_dep"], "2.0.0", "{updated}");
    let rolled_back = line("AFTER_ROLLBACK ")?;
    assert_eq!(rolled_back["version"], "1.0.0", "{rolled_back}");
    assert_eq!(
        rolled_back["modules"]["slipway_demo_dep"], "1.0.0",
        "the rollback went back to the old dependency: {rolled_back}"
    );
    // One venv per release, outside the read-only release trees.
    let venvs: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("VENV "))
        .collect();
    assert_eq!(venvs.len(), 2, "{text}");
    assert!(venvs.iter().any(|v| v.starts_with("1.0.0-")));
    assert!(venvs.iter().any(|v| v.starts_with("2.0.0-")));
    let current = text
        .lines()
        .find(|l| l.starts_with("CURRENT_DEP "))
        .context("CURRENT_DEP")?;
    assert!(current.contains(" 1.0.0 "), "{current}");
    assert!(
        current.contains(&format!("{}/venvs/1.0.0-", root.display())),
        "{current}"
    );
    // The release trees themselves were not written to.
    let mut verify = Command::new(slipway()?);
    verify.arg("--config").arg(&config).arg("verify");
    run(verify, TIMEOUT)?.checked("slipway verify after the rollback")?;
    assert!(!Path::new(&root.join("current/app/.venv")).exists());
    Ok(())
}

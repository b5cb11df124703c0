//! The polkit rule `slipway units --polkit` prints, under a real systemd
//! and polkit in a container booted by the harness: the user the updater
//! runs as (`[update] run_as = "service"`) may start, stop and restart the
//! service's unit, and nothing else: not another unit, not another verb.
//!
//! Runs as root only; without root it prints why it skips, and under
//! `CI=true` it fails instead.

use std::path::Path;

use anyhow::{bail, Result};
use slipway_e2e::{Container, OutputExt};

const USER: &str = "slipway-updater";
const UNIT: &str = "aibot.service";
const OTHER: &str = "other.service";

const CONFIG: &str = r#"[update]
public_keys = ["RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3"]
run_as = "service"

[paths]
root = "/opt/e2e/root"
persistence = "/opt/e2e/data"

[service]
manager = "systemd"
unit = "aibot.service"
user = "slipway-updater"
"#;

#[test]
fn the_polkit_rule_lets_the_updater_user_drive_its_unit_and_nothing_else() -> Result<()> {
    if !Container::available_or_skip()? {
        return Ok(());
    }
    if !Path::new("/usr/lib/polkit-1/polkitd").exists() {
        bail!("polkitd is not installed: apt-get install polkitd");
    }
    let ct = Container::boot("polkit")?;
    ct.sh_ok(&format!(
        "useradd --system --no-create-home --shell /usr/sbin/nologin {USER}"
    ))?;
    let sleeper = "[Service]\nExecStart=/bin/sleep infinity\n";
    ct.install_unit(UNIT, sleeper)?;
    ct.install_unit(OTHER, sleeper)?;
    ct.start_unit(UNIT)?;
    ct.start_unit(OTHER)?;

    let as_user = |args: &[&str]| {
        let mut argv = vec![
            "runuser",
            "-u",
            USER,
            "--",
            "systemctl",
            "--no-ask-password",
        ];
        argv.extend_from_slice(args);
        ct.exec(&argv)
    };
    // Without the rule the user may not restart anything: what follows
    // proves the rule, not a permissive polkit.
    let out = as_user(&["restart", UNIT])?;
    assert!(
        !out.status.success(),
        "{USER} restarted {UNIT} without a rule: polkit does not guard systemd here"
    );

    // The rule, as the real binary prints it, where the docs say it goes.
    ct.write_file("/etc/slipway/update.toml", CONFIG, 0o644)?;
    let bin = slipway_e2e::slipway()?;
    let bin = bin.to_string_lossy();
    let rule = ct
        .exec_ok(&[
            bin.as_ref(),
            "--config",
            "/etc/slipway/update.toml",
            "units",
            "--polkit",
        ])?
        .stdout_text();
    ct.write_file("/etc/polkit-1/rules.d/50-slipway.rules", &rule, 0o644)?;
    // polkitd reads its rules at start (and on change); make sure it has them.
    let _ = ct.sh("systemctl restart polkit.service");
    let pid = |unit: &str| -> Result<String> {
        Ok(ct
            .systemctl(&["show", "-p", "MainPID", "--value", unit])?
            .stdout_text()
            .trim()
            .to_string())
    };

    // Allowed: restart, stop and start of that one unit.
    let before = pid(UNIT)?;
    as_user(&["restart", UNIT])?.checked("the updater's user restarts its unit")?;
    assert_ne!(pid(UNIT)?, before, "{UNIT} was not restarted");
    as_user(&["stop", UNIT])?.checked("the updater's user stops its unit")?;
    as_user(&["start", UNIT])?.checked("the updater's user starts its unit")?;

    // Refused: another unit, another verb.
    let other_before = pid(OTHER)?;
    for args in [
        vec!["restart", OTHER],
        vec!["stop", OTHER],
        vec!["kill", UNIT],
        vec!["reload-or-restart", OTHER],
    ] {
        let out = as_user(&args)?;
        assert!(
            !out.status.success(),
            "`systemctl {}` as {USER} was allowed:\n{}",
            args.join(" "),
            out.stderr_text()
        );
    }
    assert_eq!(pid(OTHER)?, other_before, "{OTHER} was touched");
    assert_eq!(
        ct.systemctl(&["is-active", UNIT])?.stdout_text().trim(),
        "active"
    );
    Ok(())
}

//! The Debian package of slipway (`scripts/build-deb`), installed and
//! removed with dpkg inside a real systemd container (so the host's own
//! dpkg database and /usr are never touched: the container's overlay
//! absorbs it): the binary runs, the default configuration parses, the
//! units pass `systemd-analyze verify`, the man pages render with
//! `man -l`, and `dpkg -r` / `dpkg -P` remove it cleanly.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use slipway_e2e::{run, shared_tempdir, slipway, workspace_root, Container, OutputExt};

#[test]
fn deb_installs_runs_and_removes_cleanly_in_a_container() -> Result<()> {
    if !Container::available_or_skip()? {
        return Ok(());
    }
    let out_dir = shared_tempdir("deb")?;
    let mut build = Command::new("bash");
    build
        .arg(workspace_root().join("scripts/build-deb"))
        .arg("--binary")
        .arg(slipway()?)
        .arg("--out")
        .arg(out_dir.path());
    let built = run(build, Duration::from_secs(300))?.checked("scripts/build-deb")?;
    let deb = built.stdout_text().trim().to_string();
    assert!(Path::new(&deb).is_file(), "{deb}");
    assert!(deb.ends_with(".deb"));

    let c = Container::boot("deb")?;
    c.exec_ok(&["dpkg", "-i", &deb])?;
    let status = c.exec_ok(&["dpkg-query", "-W", "-f", "${Status} ${Version}", "slipway"])?;
    assert!(
        status.stdout_text().starts_with("install ok installed"),
        "{}",
        status.stdout_text()
    );
    let version = c.exec_ok(&["slipway", "--version"])?.stdout_text();
    assert!(version.starts_with("slipway "), "{version}");
    assert_eq!(
        c.exec_ok(&["sh", "-c", "command -v slipway"])?
            .stdout_text()
            .trim(),
        "/usr/bin/slipway"
    );
    // The default configuration parses, and the installed units are the
    // ones `slipway units` writes for it.
    let units = c
        .exec_ok(&["slipway", "--config", "/etc/slipway/update.toml", "units"])?
        .stdout_text();
    let service = c.read_to_string("/lib/systemd/system/slipway-update.service")?;
    assert!(
        units.contains(&service),
        "units drifted:\n{units}\n---\n{service}"
    );
    assert!(service
        .contains("ExecStart=/usr/bin/slipway --config /etc/slipway/update.toml update --auto"));
    c.exec_ok(&[
        "systemd-analyze",
        "verify",
        "/lib/systemd/system/slipway-update.service",
        "/lib/systemd/system/slipway-update.timer",
        "/lib/systemd/system/slipway-recover.service",
    ])?;
    // Installed but not enabled: a host must be configured first.
    for unit in ["slipway-update.timer", "slipway-recover.service"] {
        let enabled = c.exec(&["systemctl", "is-enabled", unit])?;
        assert_eq!(enabled.stdout_text().trim(), "disabled", "{unit}");
    }
    // Man pages render; completions are where the shells look.
    let page = c
        .sh_ok("MANWIDTH=80 man -l -P cat /usr/share/man/man1/slipway.1.gz 2>&1")?
        .stdout_text();
    assert!(page.contains("slipway"), "{page}");
    assert!(page.contains("install"), "{page}");
    c.sh_ok(
        "MANWIDTH=80 man -l -P cat /usr/share/man/man1/slipway-install.1.gz | grep -q -- --dry-run",
    )?;
    c.exec_ok(&[
        "test",
        "-s",
        "/usr/share/bash-completion/completions/slipway",
    ])?;

    // Remove: the binary and units go, the edited conffile stays until purge.
    c.exec_ok(&["dpkg", "-r", "slipway"])?;
    c.exec_ok(&["test", "!", "-e", "/usr/bin/slipway"])?;
    c.exec_ok(&[
        "test",
        "!",
        "-e",
        "/lib/systemd/system/slipway-update.timer",
    ])?;
    c.exec_ok(&["test", "-e", "/etc/slipway/update.toml"])?;
    c.exec_ok(&["dpkg", "-P", "slipway"])?;
    c.exec_ok(&["test", "!", "-e", "/etc/slipway/update.toml"])?;
    let gone = c.exec(&["dpkg-query", "-W", "slipway"])?;
    assert!(!gone.status.success(), "still known to dpkg after purge");
    c.shutdown().context("stopping the container")?;
    Ok(())
}

#[test]
fn packaged_units_are_the_ones_slipway_units_writes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // The default configuration, at a path whose name the units record.
    let config = dir.path().join("update.toml");
    std::fs::copy(workspace_root().join("packaging/deb/update.toml"), &config)?;
    let mut units = Command::new(slipway()?);
    units.arg("--config").arg(&config).arg("units");
    let text = run(units, Duration::from_secs(60))?
        .checked("slipway units")?
        .stdout_text();
    let text = text
        .replace(&config.display().to_string(), "/etc/slipway/update.toml")
        .replace(&slipway()?.display().to_string(), "/usr/bin/slipway");
    for name in [
        "slipway-update.service",
        "slipway-update.timer",
        "slipway-recover.service",
    ] {
        let packaged = std::fs::read_to_string(workspace_root().join("packaging/deb").join(name))?;
        assert!(
            text.contains(&format!("# {name}\n{packaged}")),
            "packaging/deb/{name} differs from `slipway units`; regenerate it:\n{text}"
        );
    }
    Ok(())
}

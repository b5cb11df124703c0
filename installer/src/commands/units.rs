//! `slipway units`: the systemd service and timer that run
//! `slipway update --auto`, printed or written into a directory.

use std::path::Path;

use crate::config::{Config, ManagerKind};
use crate::Exit;

use super::dispatch::CommandError;

/// The systemd units that run `slipway update --auto` on a timer.
///
/// The period is `interval_minutes` (or `interval_seconds`, for tests and
/// demos). The first poll comes 5 minutes (at most one period) after boot
/// or after the timer is enabled; each poll is delayed by a random amount
/// up to a quarter of the period (at most 15 min), so a fleet does not
/// poll in lockstep; `Persistent=true` catches up a poll missed while the
/// host was off.
pub fn unit_files(config: &Config, binary: &Path) -> (String, String) {
    let period = config
        .update
        .interval_seconds
        .map_or(u64::from(config.update.interval_minutes.max(1)) * 60, |s| {
            u64::from(s.max(1))
        });
    let span = |secs: u64| match (secs / 60, secs % 60) {
        (mins, 0) => format!("{mins}min"),
        _ => format!("{secs}s"),
    };
    let first = span(period.min(5 * 60));
    let every = span(period);
    // Spread a fleet's polls: a quarter of the period, at most 15 min.
    let delay_secs = (period / 4).clamp(1, 15 * 60);
    // systemd's default accuracy (1 min) would swamp a short test period.
    let accuracy = span((period / 10).clamp(1, 60));
    let user = config
        .service
        .user
        .as_deref()
        .map(|u| format!("User={u}\n"))
        .unwrap_or_default();
    let manager_note = match config.service.manager {
        ManagerKind::Systemd => format!(
            "# Restarts {} through systemctl: the user needs the right to do so\n# (root, or a polkit rule for that unit).\n",
            config.service.unit
        ),
        _ => String::new(),
    };
    let service = format!(
        "[Unit]\n\
         Description=slipway: install the newest healthy release of {channel} (update --auto)\n\
         Documentation=file://{doc}\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         {manager_note}{user}\
         ExecStart={bin} --config {cfg} update --auto\n\
         # Exit 4 (skipped: not eligible) is a normal outcome for a timer run.\n\
         SuccessExitStatus=4\n\
         TimeoutStartSec=1h\n",
        channel = config.update.channel,
        doc = config.file.display(),
        bin = binary.display(),
        cfg = config.file.display(),
    );
    let timer = format!(
        "[Unit]\n\
         Description=slipway: poll for updates every {every}\n\
         \n\
         [Timer]\n\
         OnBootSec={first}\n\
         OnActiveSec={first}\n\
         OnUnitActiveSec={every}\n\
         RandomizedDelaySec={delay_secs}s\n\
         AccuracySec={accuracy}\n\
         Persistent=true\n\
         Unit=slipway-update.service\n\
         \n\
         [Install]\n\
         WantedBy=timers.target\n"
    );
    (service, timer)
}

pub(super) fn units(config: &Config, write: Option<&Path>) -> Result<Exit, CommandError> {
    let binary = std::env::current_exe().map_err(|e| {
        CommandError::new(
            Exit::Failed,
            "cannot find the slipway binary's path",
            e,
            "run slipway by its full path",
        )
    })?;
    let (service, timer) = unit_files(config, &binary);
    match write {
        None => {
            println!("# slipway-update.service\n{service}\n# slipway-update.timer\n{timer}");
        }
        Some(dir) => {
            for (name, text) in [
                ("slipway-update.service", &service),
                ("slipway-update.timer", &timer),
            ] {
                let path = dir.join(name);
                crate::durable::write_atomic(&path, text.as_bytes()).map_err(|e| {
                    CommandError::new(
                        Exit::Failed,
                        format!("cannot write {}", path.display()),
                        e,
                        "check that the directory exists and is writable",
                    )
                })?;
                println!("wrote {}", path.display());
            }
            println!(
                "then: systemctl daemon-reload && systemctl enable --now slipway-update.timer"
            );
        }
    }
    Ok(Exit::Done)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn timer_spreads_polls_and_service_runs_update_auto() {
        let mut config = Config {
            file: PathBuf::from("/etc/slipway/update.toml"),
            ..Config::default()
        };
        config.service.user = Some("bot".into());
        config.update.interval_minutes = 60;
        let (service, timer) = unit_files(&config, Path::new("/usr/local/bin/slipway"));
        assert!(service.contains(
            "ExecStart=/usr/local/bin/slipway --config /etc/slipway/update.toml update --auto"
        ));
        assert!(service.contains("User=bot\n"));
        assert!(service.contains("Type=oneshot"));
        assert!(timer.contains("OnUnitActiveSec=60min"));
        assert!(timer.contains("RandomizedDelaySec=900s"));
        assert!(timer.contains("Persistent=true"));
        config.update.interval_minutes = 20;
        let (_, timer) = unit_files(&config, Path::new("/x"));
        assert!(timer.contains("RandomizedDelaySec=300s"), "{timer}");
        assert!(timer.contains("OnActiveSec=5min"), "{timer}");
        config.update.interval_seconds = Some(6);
        let (_, timer) = unit_files(&config, Path::new("/x"));
        assert!(timer.contains("OnUnitActiveSec=6s"), "{timer}");
        assert!(timer.contains("OnBootSec=6s"), "{timer}");
        assert!(timer.contains("RandomizedDelaySec=1s"), "{timer}");
        assert!(timer.contains("AccuracySec=1s"), "{timer}");
    }
}

//! `slipway units`: the systemd units that run `slipway update --auto` on a
//! timer and recover a run that died, printed or written into a directory.
//!
//! | unit | job |
//! | --- | --- |
//! | `slipway-update.timer` | starts the update service every period, spread over the fleet |
//! | `slipway-update.service` | one `update --auto` run; `OnFailure=` the recover unit |
//! | `slipway-recover.service` | `recover`, when a journal is left: after a run that died, and at boot |
//!
//! The units run as root unless `[update] run_as = "service"`: then as the
//! service's user and group (the seed's "run the updater as the bot's
//! user"), and `slipway units --polkit` prints the one polkit rule that
//! user needs, [`polkit_rule`]: start, stop and restart of the service's
//! unit, nothing else.
//!
//! Recovery is immediate under systemd: a run killed, crashed or timed out
//! fails its unit, systemd kills every process left in the unit's cgroup
//! (hooks, restart and quiesce commands: `KillMode=control-group`), and
//! only then starts the recover unit, so nothing the dead run started can
//! race the recovery. At boot, the recover unit runs before the first
//! update. Both skip at once when no journal is left
//! (`ConditionPathExists=`), so a run that ended normally costs nothing.

use std::path::Path;

use crate::app_user::AppUser;
use crate::config::{Config, ManagerKind, UpdaterUser};
use crate::layout::Layout;
use crate::service::Service;
use crate::Exit;

use super::dispatch::CommandError;

/// The update service's file name.
pub const UPDATE_SERVICE: &str = "slipway-update.service";
/// The timer's file name.
pub const UPDATE_TIMER: &str = "slipway-update.timer";
/// The recover service's file name.
pub const RECOVER_SERVICE: &str = "slipway-recover.service";
/// Where the polkit rule goes.
pub const POLKIT_RULE_FILE: &str = "/etc/polkit-1/rules.d/50-slipway.rules";

/// The text of the units `slipway units` prints and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Units {
    pub update_service: String,
    pub update_timer: String,
    pub recover_service: String,
}

impl Units {
    /// Every unit with its file name, in the order they are printed and
    /// written.
    pub fn files(&self) -> [(&'static str, &str); 3] {
        [
            (UPDATE_SERVICE, &self.update_service),
            (UPDATE_TIMER, &self.update_timer),
            (RECOVER_SERVICE, &self.recover_service),
        ]
    }
}

/// The systemd units that run `slipway update --auto` on a timer, and the
/// one that recovers a run that died.
///
/// The period is `interval_minutes` (or `interval_seconds`, for tests and
/// demos). The first poll comes 5 minutes (at most one period) after boot
/// or after the timer is enabled; each poll is delayed by a random amount
/// up to a quarter of the period (at most 15 min), so a fleet does not
/// poll in lockstep; `Persistent=true` catches up a poll missed while the
/// host was off.
///
/// The update service ends in `failed` for exit 1 (failed) and 3 (rolled
/// back), which monitoring of failed units should see, and when slipway is
/// killed; exit 4 (skipped) and 5 (locked: the run holding the lock
/// recovers for itself) are ordinary outcomes of a timer run. Every failure
/// starts `slipway-recover.service` (`OnFailure=`), which runs only if
/// `<root>/state/journal.json` exists: after a run that finished, even with
/// exit 1 or 3, it is skipped without starting slipway.
pub fn unit_files(config: &Config, binary: &Path) -> Units {
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
    // `[update] run_as = "service"`: the service's user and group, named
    // in `[service]` (`units` fills them in from the unit when unset).
    let run_as_service = config.update.run_as == UpdaterUser::Service;
    let user = match (run_as_service, config.service.user.as_deref()) {
        (true, Some(u)) => {
            let group = config
                .service
                .group
                .as_deref()
                .map(|g| format!("Group={g}\n"))
                .unwrap_or_default();
            format!("User={u}\n{group}")
        }
        _ => String::new(),
    };
    let manager_note = match (config.service.manager, run_as_service) {
        (ManagerKind::Systemd, true) => format!(
            "# Runs as the service's user, which may start, stop and restart {}\n# only through the polkit rule `slipway units --polkit` prints.\n",
            config.service.unit
        ),
        (ManagerKind::Systemd, false) => format!(
            "# Restarts {} through systemctl, as root; the app's hooks run as\n# the service's user.\n",
            config.service.unit
        ),
        _ => String::new(),
    };
    // systemd's default: SIGTERM to the whole cgroup, SIGKILL after
    // TimeoutStopSec (90 s by default, which would delay the recovery).
    let containment = "\
        # Every process slipway started (hooks, restart, quiesce and save\n\
        # commands) is killed when it ends: SIGTERM, then SIGKILL 10 s later.\n\
        KillMode=control-group\n\
        TimeoutStopSec=10s\n";
    let service = format!(
        "[Unit]\n\
         Description=slipway: install the newest healthy release of {channel} (update --auto)\n\
         Documentation=file://{doc}\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         # A run that dies (killed, crashed, timed out) is recovered at once,\n\
         # after every process it started is gone (KillMode= below).\n\
         OnFailure={RECOVER_SERVICE}\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         {manager_note}{user}\
         ExecStart={bin} --config {cfg} update --auto\n\
         # Exit 4 (skipped: not eligible) and 5 (locked: the run holding the lock\n\
         # recovers first) are normal outcomes for a timer run.\n\
         SuccessExitStatus=4 5\n\
         {containment}\
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
         Unit={UPDATE_SERVICE}\n\
         \n\
         [Install]\n\
         WantedBy=timers.target\n"
    );
    // Under systemd, wait for the app's own start job at boot (and for a
    // restart job a killed run left queued), so no two jobs for it race.
    let after_app = match config.service.manager {
        ManagerKind::Systemd => format!(
            "# Recovery restarts the app itself: first let its own start job (or a\n\
             # restart a killed run left queued) finish.\n\
             After={}\n",
            config.service.unit
        ),
        _ => String::new(),
    };
    let journal = Layout::new(&config.paths.root).journal_file();
    let recover = format!(
        "[Unit]\n\
         Description=slipway: finish or undo an update a killed run left (recover)\n\
         Documentation=file://{doc}\n\
         # Only when a transaction is in flight: a finished run leaves no journal.\n\
         ConditionPathExists={journal}\n\
         {after_app}\
         # At boot, before the timer's first run.\n\
         Before={UPDATE_SERVICE}\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         {user}\
         ExecStart={bin} --config {cfg} recover\n\
         # Exit 5: another run holds the lock, and it recovers before anything else.\n\
         SuccessExitStatus=5\n\
         {containment}\
         TimeoutStartSec=1h\n\
         \n\
         [Install]\n\
         # At boot: a journal left by a run that died with the host.\n\
         WantedBy=multi-user.target\n",
        doc = config.file.display(),
        journal = unit_path(&journal),
        bin = binary.display(),
        cfg = config.file.display(),
    );
    Units {
        update_service: service,
        update_timer: timer,
        recover_service: recover,
    }
}

/// A path as a unit file's value: `%` starts a specifier there, so it is
/// doubled.
fn unit_path(path: &Path) -> String {
    path.display().to_string().replace('%', "%%")
}

/// The narrowest polkit rule that lets `user` drive the service's unit:
/// `org.freedesktop.systemd1.manage-units` for exactly `unit`, with the
/// verbs slipway uses (`start`, `stop`, `restart`), for exactly that user.
/// Anything else (another unit, `enable`, `kill`, another user) is left to
/// polkit's other rules, which by default refuse an unprivileged user.
pub fn polkit_rule(user: &str, unit: &str) -> String {
    // JSON strings are valid JavaScript string literals: names are quoted
    // whatever they hold.
    let quote = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    format!(
        "// {POLKIT_RULE_FILE}, printed by `slipway units --polkit`.\n\
         // Lets {user}, who runs slipway's update units, start, stop and restart\n\
         // {unit} and nothing else.\n\
         polkit.addRule(function(action, subject) {{\n\
         \x20   if (action.id == \"org.freedesktop.systemd1.manage-units\" &&\n\
         \x20       subject.user == {user_q} &&\n\
         \x20       action.lookup(\"unit\") == {unit_q}) {{\n\
         \x20       var verb = action.lookup(\"verb\");\n\
         \x20       if (verb == \"start\" || verb == \"stop\" || verb == \"restart\") {{\n\
         \x20           return polkit.Result.YES;\n\
         \x20       }}\n\
         \x20   }}\n\
         }});\n",
        user_q = quote(user),
        unit_q = quote(unit),
    )
}

/// The service's user, by name: `[service] user`, else the unit's `User=`.
fn service_user_name(config: &Config) -> Result<String, CommandError> {
    if let Some(u) = config
        .service
        .user
        .as_deref()
        .filter(|u| !u.trim().is_empty())
    {
        return Ok(u.trim().to_string());
    }
    let user = AppUser::of_service(&config.service, &Service::from_config(&config.service))
        .map_err(|e| {
            CommandError::new(
                Exit::Failed,
                "cannot tell which user the service runs as",
                e,
                "set [service] user in the configuration",
            )
        })?;
    Ok(user.name)
}

/// `slipway units --polkit [--polkit-user USER]`: prints [`polkit_rule`].
pub(super) fn print_polkit_rule(config: &Config, user: Option<&str>) -> Result<Exit, CommandError> {
    if config.service.manager != ManagerKind::Systemd {
        return Err(CommandError::new(
            Exit::Usage,
            "no polkit rule is needed",
            "service.manager is not \"systemd\"",
            "the rule is for a systemd unit restarted by an unprivileged updater",
        ));
    }
    let user = match user {
        Some(u) => u.to_string(),
        None if config.update.run_as == UpdaterUser::Service => service_user_name(config)?,
        None => {
            return Err(CommandError::new(
                Exit::Usage,
                "no polkit rule is needed",
                "the update units run as root ([update] run_as = \"root\")",
                "set [update] run_as = \"service\" to run them as the service's user, or pass --polkit-user USER",
            ))
        }
    };
    if user == "root" || user == "0" {
        return Err(CommandError::new(
            Exit::Usage,
            "no polkit rule is needed",
            "root may manage every unit",
            "pass the unprivileged user the updater runs as",
        ));
    }
    slipway_fs::out!("{}", polkit_rule(&user, &config.service.unit));
    Ok(Exit::Done)
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
    let mut config = config.clone();
    let run_as_service = config.update.run_as == UpdaterUser::Service;
    if run_as_service && config.service.user.is_none() {
        config.service.user = Some(service_user_name(&config)?);
    }
    let config = &config;
    let units = unit_files(config, &binary);
    match write {
        None => {
            let printed: Vec<String> = units
                .files()
                .iter()
                .map(|(name, text)| format!("# {name}\n{text}"))
                .collect();
            slipway_fs::outln!("{}", printed.join("\n"));
        }
        Some(dir) => {
            for (name, text) in units.files() {
                let path = dir.join(name);
                crate::durable::write_atomic(&path, text.as_bytes()).map_err(|e| {
                    CommandError::new(
                        Exit::Failed,
                        format!("cannot write {}", path.display()),
                        e,
                        "check that the directory exists and is writable",
                    )
                })?;
                slipway_fs::outln!("wrote {}", path.display());
            }
            if run_as_service && config.service.manager == ManagerKind::Systemd {
                slipway_fs::outln!(
                    "then: slipway units --polkit > {POLKIT_RULE_FILE} (the units run as {}, who needs it to restart {})",
                    config.service.user.as_deref().unwrap_or_default(),
                    config.service.unit
                );
            }
            slipway_fs::outln!(
                "then: systemctl daemon-reload && systemctl enable --now {RECOVER_SERVICE} {UPDATE_TIMER}"
            );
        }
    }
    Ok(Exit::Done)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn config() -> Config {
        Config {
            file: PathBuf::from("/etc/slipway/update.toml"),
            ..Config::default()
        }
    }

    /// The lines of `[section]` in a unit file's text.
    fn section<'a>(text: &'a str, section: &str) -> Vec<&'a str> {
        text.split("\n[")
            .map(|s| s.trim_start_matches('['))
            .find(|s| s.starts_with(&format!("{section}]")))
            .map(|s| s.lines().skip(1).filter(|l| !l.starts_with('#')).collect())
            .unwrap_or_default()
    }

    #[test]
    fn timer_spreads_polls_and_service_runs_update_auto() {
        let mut config = config();
        config.service.user = Some("bot".into());
        config.update.run_as = UpdaterUser::Service;
        config.update.interval_minutes = 60;
        let units = unit_files(&config, Path::new("/usr/local/bin/slipway"));
        let (service, timer) = (&units.update_service, &units.update_timer);
        assert!(service.contains(
            "ExecStart=/usr/local/bin/slipway --config /etc/slipway/update.toml update --auto"
        ));
        assert!(service.contains("User=bot\n"));
        assert!(service.contains("Type=oneshot"));
        assert!(timer.contains("OnUnitActiveSec=60min"));
        assert!(timer.contains("RandomizedDelaySec=900s"));
        assert!(timer.contains("Persistent=true"));
        assert!(timer.contains("Unit=slipway-update.service\n"));
        config.update.interval_minutes = 20;
        let timer = unit_files(&config, Path::new("/x")).update_timer;
        assert!(timer.contains("RandomizedDelaySec=300s"), "{timer}");
        assert!(timer.contains("OnActiveSec=5min"), "{timer}");
        config.update.interval_seconds = Some(6);
        let timer = unit_files(&config, Path::new("/x")).update_timer;
        assert!(timer.contains("OnUnitActiveSec=6s"), "{timer}");
        assert!(timer.contains("OnBootSec=6s"), "{timer}");
        assert!(timer.contains("RandomizedDelaySec=1s"), "{timer}");
        assert!(timer.contains("AccuracySec=1s"), "{timer}");
    }

    #[test]
    fn a_run_that_dies_starts_the_recover_unit_which_also_runs_at_boot() {
        let mut config = config();
        config.paths.root = PathBuf::from("/opt/bot");
        config.service.user = Some("bot".into());
        config.update.run_as = UpdaterUser::Service;
        let units = unit_files(&config, Path::new("/usr/bin/slipway"));

        // The update service: a failure (a killed run among them) starts
        // the recover unit, once systemd killed what the run left behind.
        let unit = section(&units.update_service, "Unit");
        assert!(
            unit.contains(&"OnFailure=slipway-recover.service"),
            "{unit:?}"
        );
        let service = section(&units.update_service, "Service");
        assert!(service.contains(&"KillMode=control-group"), "{service:?}");
        assert!(service.contains(&"TimeoutStopSec=10s"), "{service:?}");
        // Skipped and locked are ordinary ends of a timer run; failed (1)
        // and rolled back (3) stay failures, for monitoring to see.
        assert!(service.contains(&"SuccessExitStatus=4 5"), "{service:?}");

        // The recover unit: only with a journal, before any update run,
        // after the app's own start job, enabled for boot.
        let recover = &units.recover_service;
        let unit = section(recover, "Unit");
        assert!(
            unit.contains(&"ConditionPathExists=/opt/bot/state/journal.json"),
            "{unit:?}"
        );
        assert!(unit.contains(&"Before=slipway-update.service"), "{unit:?}");
        assert!(unit.contains(&"After=aibot.service"), "{unit:?}");
        let service = section(recover, "Service");
        for line in [
            "Type=oneshot",
            "User=bot",
            "ExecStart=/usr/bin/slipway --config /etc/slipway/update.toml recover",
            "SuccessExitStatus=5",
            "KillMode=control-group",
        ] {
            assert!(service.contains(&line), "{line} in {service:?}");
        }
        assert!(!recover.contains("OnFailure="), "no loop: {recover}");
        assert_eq!(
            section(recover, "Install"),
            vec!["WantedBy=multi-user.target"]
        );

        // Printed and written in one order, under their file names.
        let names: Vec<&str> = units.files().iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "slipway-update.service",
                "slipway-update.timer",
                "slipway-recover.service"
            ]
        );
    }

    #[test]
    fn the_recover_unit_orders_after_the_app_only_under_systemd_and_escapes_the_root() {
        let mut config = config();
        config.service.manager = ManagerKind::Command;
        config.paths.root = PathBuf::from("/srv/100%/bot");
        let recover = unit_files(&config, Path::new("/x")).recover_service;
        let unit = section(&recover, "Unit");
        assert!(
            unit.contains(&"ConditionPathExists=/srv/100%%/bot/state/journal.json"),
            "{unit:?}"
        );
        assert!(!unit.iter().any(|l| l.starts_with("After=")), "{unit:?}");
    }

    #[test]
    fn the_units_run_as_root_unless_told_to_run_as_the_service_user() {
        let mut config = config();
        config.service.user = Some("bot".into());
        config.service.group = Some("bots".into());
        let units = unit_files(&config, Path::new("/x"));
        assert!(
            !units.update_service.contains("User="),
            "{}",
            units.update_service
        );
        assert!(!units.recover_service.contains("User="));
        config.update.run_as = UpdaterUser::Service;
        let units = unit_files(&config, Path::new("/x"));
        for unit in [&units.update_service, &units.recover_service] {
            let service = section(unit, "Service");
            assert!(service.contains(&"User=bot"), "{service:?}");
            assert!(service.contains(&"Group=bots"), "{service:?}");
        }
        assert!(units.update_service.contains("slipway units --polkit"));
    }

    #[test]
    fn the_polkit_rule_allows_that_user_to_start_stop_and_restart_that_unit_only() {
        let rule = polkit_rule("bot", "aibot.service");
        let code: Vec<&str> = rule
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("//") && !l.is_empty())
            .collect();
        assert_eq!(
            code,
            [
                "polkit.addRule(function(action, subject) {",
                "if (action.id == \"org.freedesktop.systemd1.manage-units\" &&",
                "subject.user == \"bot\" &&",
                "action.lookup(\"unit\") == \"aibot.service\") {",
                "var verb = action.lookup(\"verb\");",
                "if (verb == \"start\" || verb == \"stop\" || verb == \"restart\") {",
                "return polkit.Result.YES;",
                "}",
                "}",
                "});",
            ],
            "{rule}"
        );
        // One grant, no fallback that could widen it.
        assert_eq!(rule.matches("polkit.Result").count(), 1);
        assert!(!rule.contains("manage-unit-files"));
        // Names cannot break out of their string literals.
        let odd = polkit_rule("b\"ot", "x\\\");y.service");
        assert!(odd.contains(r#"subject.user == "b\"ot""#), "{odd}");
        assert!(odd.contains(r#"== "x\\\");y.service")"#), "{odd}");
    }
}

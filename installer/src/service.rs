//! The service slipway restarts and watches (SPEC §4 steps 11–13): a systemd
//! unit, a pair of operator commands, or nothing.
//!
//! systemd is driven through `systemctl`, which waits for the job to finish;
//! its state comes from `systemctl show -p ActiveState,SubState,NRestarts,
//! MainPID`. A unit with `Restart=always` whose process keeps crashing shows
//! up as `activating/auto-restart` with a growing `NRestarts`, which is how
//! the health gate tells a crash loop from a slow start.

use std::path::Path;
use std::time::Duration;

use thiserror::Error;

use crate::config::{ManagerKind, ServiceConfig};
use crate::hooks::{self, HookError};

/// How long `systemctl restart` (or the configured restart command) may take.
pub const RESTART_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a status probe may take.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the service could not be driven or observed.
#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("cannot {action} {service}: {source}")]
    Command {
        action: &'static str,
        service: String,
        source: HookError,
    },
    #[error("systemd unit {unit} is not loaded ({load_state}); check service.unit in the configuration and `systemctl status {unit}`")]
    UnitNotLoaded { unit: String, load_state: String },
    #[error("cannot read the state of systemd unit {unit}: `systemctl show` printed no {key}; is systemd running?")]
    BadShowOutput { unit: String, key: &'static str },
}

/// What the service manager says about the service right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStatus {
    /// systemd's ActiveState (`active`, `activating`, `failed`, ...); for a
    /// status command, `active` on exit 0 and `failed` otherwise.
    pub active_state: String,
    /// systemd's SubState (`running`, `auto-restart`, `dead`, ...); for a
    /// status command, `running` on exit 0 and `exit N` otherwise.
    pub sub_state: String,
    /// systemd's NRestarts: automatic restarts since the last manual start
    /// (0 for the other backends).
    pub restarts: u64,
    /// The service's main process, when known.
    pub main_pid: Option<u32>,
}

impl ServiceStatus {
    /// Whether the service is up.
    pub fn is_running(&self) -> bool {
        self.active_state == "active" && self.sub_state == "running"
    }

    /// `active/running`, the way `systemctl status` shows it.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.active_state, self.sub_state)
    }

    fn running(main_pid: Option<u32>) -> ServiceStatus {
        ServiceStatus {
            active_state: "active".into(),
            sub_state: "running".into(),
            restarts: 0,
            main_pid,
        }
    }
}

/// How the service is restarted and observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Service {
    /// `systemctl restart UNIT` and `systemctl show UNIT`.
    Systemd { unit: String },
    /// Operator commands: `restart` argv, and an optional `status` argv whose
    /// exit status 0 means running (empty: always running). When the status
    /// command prints a number as the first word of its output, that is the
    /// main pid (for a quiesce by signal).
    Command {
        restart: Vec<String>,
        status: Vec<String>,
    },
    /// Nothing to restart; the service is taken to be running.
    None,
}

impl Service {
    /// The backend `[service]` configures.
    pub fn from_config(cfg: &ServiceConfig) -> Service {
        match cfg.manager {
            ManagerKind::Systemd => Service::Systemd {
                unit: cfg.unit.clone(),
            },
            ManagerKind::Command => Service::Command {
                restart: cfg.restart.clone(),
                status: cfg.status.clone(),
            },
            ManagerKind::None => Service::None,
        }
    }

    /// For messages: `systemd unit aibot.service`.
    pub fn describe(&self) -> String {
        match self {
            Service::Systemd { unit } => format!("systemd unit {unit}"),
            Service::Command { restart, .. } => {
                // The program's name, not the whole argv: messages repeat it,
                // and `env VAR=...` prefixes would drown the point.
                let program = restart
                    .iter()
                    .find(|a| !a.contains('=') && a.as_str() != "env")
                    .or(restart.first())
                    .map(|p| p.rsplit('/').next().unwrap_or(p).to_string())
                    .unwrap_or_default();
                format!("the service ({program})")
            }
            Service::None => "the service (no service manager configured)".to_string(),
        }
    }

    /// Restarts the service and waits for the manager to finish the job
    /// (bounded by [`RESTART_TIMEOUT`]). Success means the job ran, not that
    /// the service is healthy: that is the health gate's business.
    pub fn restart(&self) -> Result<(), ServiceError> {
        match self {
            Service::Systemd { unit } => self.systemctl("restart", unit).map(|_| ()),
            Service::Command { restart, .. } => {
                hooks::run_service_command(restart, Path::new("/"), &[], RESTART_TIMEOUT)
                    .map(|_| ())
                    .map_err(|source| self.command_error("restart", source))
            }
            Service::None => Ok(()),
        }
    }

    /// Stops the service, so that nothing writes to the persistence while a
    /// snapshot is restored. Returns false when the backend cannot stop it
    /// (a command backend, or none): the caller must then quiesce instead.
    pub fn stop(&self) -> Result<bool, ServiceError> {
        match self {
            Service::Systemd { unit } => self.systemctl("stop", unit).map(|_| true),
            Service::Command { .. } | Service::None => Ok(false),
        }
    }

    /// Makes the service start at boot (`systemctl enable`; idempotent).
    /// Returns false when the backend has no such notion (a command
    /// backend, or none): its own setup decides what runs at boot.
    pub fn enable(&self) -> Result<bool, ServiceError> {
        match self {
            Service::Systemd { unit } => self.systemctl("enable", unit).map(|_| true),
            Service::Command { .. } | Service::None => Ok(false),
        }
    }

    /// Starts a stopped service (systemd); for the other backends, a restart.
    pub fn start(&self) -> Result<(), ServiceError> {
        match self {
            Service::Systemd { unit } => self.systemctl("start", unit).map(|_| ()),
            _ => self.restart(),
        }
    }

    /// Asks the manager for the service's state.
    pub fn status(&self) -> Result<ServiceStatus, ServiceError> {
        match self {
            Service::Systemd { unit } => {
                let out = hooks::run_command(
                    &systemctl_argv(&[
                        "show",
                        unit,
                        "-p",
                        "LoadState,ActiveState,SubState,NRestarts,MainPID",
                    ]),
                    Path::new("/"),
                    &[],
                    STATUS_TIMEOUT,
                )
                .map_err(|source| self.command_error("read the state of", source))?;
                parse_systemctl_show(unit, &out.stdout_tail)
            }
            Service::Command { status, .. } => {
                if status.is_empty() {
                    return Ok(ServiceStatus::running(None));
                }
                let out = hooks::run_command_status(status, Path::new("/"), &[], STATUS_TIMEOUT)
                    .map_err(|source| self.command_error("read the state of", source))?;
                match out.status {
                    Some(0) => {
                        let pid = out
                            .stdout_tail
                            .split_whitespace()
                            .next()
                            .and_then(|w| w.parse::<u32>().ok())
                            .filter(|p| *p > 0);
                        Ok(ServiceStatus::running(pid))
                    }
                    other => Ok(ServiceStatus {
                        active_state: "failed".into(),
                        sub_state: match other {
                            Some(code) => format!("exit {code}"),
                            None => "killed".into(),
                        },
                        restarts: 0,
                        main_pid: None,
                    }),
                }
            }
            Service::None => Ok(ServiceStatus::running(None)),
        }
    }

    /// The user and group the service runs as, as its manager says: a
    /// systemd unit's `User=` and `Group=` (`None` when unset: root); the
    /// other backends do not say.
    pub fn run_as(&self) -> Result<(Option<String>, Option<String>), ServiceError> {
        let Service::Systemd { unit } = self else {
            return Ok((None, None));
        };
        let out = hooks::run_command(
            &systemctl_argv(&["show", unit, "-p", "User,Group"]),
            Path::new("/"),
            &[],
            STATUS_TIMEOUT,
        )
        .map_err(|source| self.command_error("read the user of", source))?;
        Ok(parse_run_as(&out.stdout_tail))
    }

    fn systemctl(&self, action: &'static str, unit: &str) -> Result<(), ServiceError> {
        hooks::run_command(
            &systemctl_argv(&[action, unit]),
            Path::new("/"),
            &[],
            RESTART_TIMEOUT,
        )
        .map(|_| ())
        .map_err(|source| self.command_error(action, source))
    }

    fn command_error(&self, action: &'static str, source: HookError) -> ServiceError {
        ServiceError::Command {
            action,
            service: self.describe(),
            source,
        }
    }
}

fn systemctl_argv(args: &[&str]) -> Vec<String> {
    // Never prompt for a password on a TTY: fail instead, with the message.
    ["systemctl", "--no-ask-password"]
        .iter()
        .chain(args)
        .map(|s| s.to_string())
        .collect()
}

/// `User=` and `Group=` from `systemctl show UNIT -p User,Group`; an empty
/// value is unset.
fn parse_run_as(text: &str) -> (Option<String>, Option<String>) {
    let (mut user, mut group) = (None, None);
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = Some(value.trim().to_string()).filter(|v| !v.is_empty());
        match key.trim() {
            "User" => user = value,
            "Group" => group = value,
            _ => {}
        }
    }
    (user, group)
}

/// Parses the `Key=Value` lines of `systemctl show UNIT -p ...`. Unknown keys
/// and blank lines are ignored, so extra properties or a newer systemd do
/// not break it; a missing `NRestarts` (systemd before 235) reads as 0.
pub fn parse_systemctl_show(unit: &str, text: &str) -> Result<ServiceStatus, ServiceError> {
    let mut load_state = None;
    let mut active_state = None;
    let mut sub_state = None;
    let mut restarts = 0u64;
    let mut main_pid = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "LoadState" => load_state = Some(value.to_string()),
            "ActiveState" => active_state = Some(value.to_string()),
            "SubState" => sub_state = Some(value.to_string()),
            "NRestarts" => restarts = value.parse().unwrap_or(0),
            "MainPID" => main_pid = value.parse::<u32>().ok().filter(|p| *p > 0),
            _ => {}
        }
    }
    if let Some(load) = &load_state {
        if load == "not-found" || load == "bad-setting" || load == "error" || load == "masked" {
            return Err(ServiceError::UnitNotLoaded {
                unit: unit.to_string(),
                load_state: load.clone(),
            });
        }
    }
    let active_state = active_state.ok_or(ServiceError::BadShowOutput {
        unit: unit.to_string(),
        key: "ActiveState",
    })?;
    let sub_state = sub_state.ok_or(ServiceError::BadShowOutput {
        unit: unit.to_string(),
        key: "SubState",
    })?;
    Ok(ServiceStatus {
        active_state,
        sub_state,
        restarts,
        main_pid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemctl_show_output_is_parsed() {
        // What `systemctl show -p LoadState,ActiveState,SubState,NRestarts,MainPID`
        // prints for a unit with Restart=always whose process exits 1 at
        // start, between two attempts.
        let crash_looping = "LoadState=loaded\nActiveState=activating\nSubState=auto-restart\nNRestarts=3\nMainPID=0\n";
        let s = parse_systemctl_show("aibot.service", crash_looping).expect("parses");
        assert_eq!(s.active_state, "activating");
        assert_eq!(s.sub_state, "auto-restart");
        assert_eq!(s.restarts, 3);
        assert_eq!(s.main_pid, None);
        assert!(!s.is_running());

        // Any order, extra keys, CRLF and a trailing blank line.
        let running = "MainPID=4242\r\nNRestarts=0\r\nSubState=running\r\nActiveState=active\r\nFoo=bar=baz\r\n\r\n";
        let s = parse_systemctl_show("aibot.service", running).expect("parses");
        assert!(s.is_running());
        assert_eq!(s.main_pid, Some(4242));
        assert_eq!(s.describe(), "active/running");

        // Old systemd: no NRestarts.
        let s = parse_systemctl_show("x.service", "ActiveState=failed\nSubState=failed\n")
            .expect("parses");
        assert_eq!(s.restarts, 0);
    }

    #[test]
    fn the_units_user_and_group_are_read_and_empty_means_root() {
        assert_eq!(
            parse_run_as("User=bot\nGroup=bots\n"),
            (Some("bot".into()), Some("bots".into()))
        );
        assert_eq!(parse_run_as("User=\nGroup=\n"), (None, None));
    }

    #[test]
    fn unknown_units_and_garbage_are_named_errors() {
        let err = parse_systemctl_show(
            "nope.service",
            "LoadState=not-found\nActiveState=inactive\nSubState=dead\nNRestarts=0\nMainPID=0\n",
        )
        .expect_err("not found");
        assert!(err.to_string().contains("nope.service"), "{err}");
        assert!(err.to_string().contains("not-found"), "{err}");
        let err = parse_systemctl_show("x.service", "garbage\n").expect_err("garbage");
        assert!(matches!(
            err,
            ServiceError::BadShowOutput {
                key: "ActiveState",
                ..
            }
        ));
    }

    #[test]
    fn backends_come_from_the_config() {
        let mut cfg = ServiceConfig::default();
        assert_eq!(
            Service::from_config(&cfg),
            Service::Systemd {
                unit: "aibot.service".into()
            }
        );
        cfg.manager = ManagerKind::None;
        assert_eq!(Service::from_config(&cfg), Service::None);
        assert!(Service::None.status().expect("none").is_running());
        Service::None.restart().expect("no-op");
    }
}

//! Quiesce and resume (SPEC §4 step 8; the seed's runtime guardrail: "bot
//! must quiesce trading loops before restart to prevent partial state
//! writes").
//!
//! Before the migrate hook and the switch, the app is asked to pause its work
//! loops and persist, and slipway waits, bounded, for its acknowledgement:
//! a 2xx answer to `POST quiesce_url`, exit 0 of the `quiesce` command, or,
//! for a signal, the appearance of the ack file (holding the app's pid). If
//! the update is abandoned before the restart, the app is resumed the same
//! way. A restart needs no resume: the new process starts unpaused.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::ServiceConfig;
use crate::health::{control_agent, control_post};
use crate::hooks::{self, HookError};
use crate::service::{Service, ServiceError};

/// How often the ack file is looked for.
const ACK_POLL: Duration = Duration::from_millis(25);

/// Why the app could not be paused or resumed. The app keeps running (or
/// stays paused, for a resume): the caller decides whether to go on.
#[derive(Debug, Error)]
pub enum QuiesceError {
    #[error("service.{key} = {value:?} is not a signal name; use e.g. \"SIGUSR1\"")]
    BadSignal { key: &'static str, value: String },
    #[error(
        "cannot {action}: POST {url}: {reason}; the app is not running or not listening there"
    )]
    Unreachable {
        action: &'static str,
        url: String,
        reason: String,
    },
    #[error("cannot {action}: POST {url} answered {status}{}", hint(body))]
    Refused {
        action: &'static str,
        url: String,
        status: u16,
        body: String,
    },
    #[error(
        "the app refused to quiesce: POST {url} answered \"acknowledged\": false{}",
        hint(body)
    )]
    NotAcknowledged { url: String, body: String },
    #[error("cannot {action}: {source}")]
    Command {
        action: &'static str,
        source: HookError,
    },
    #[error("cannot send {signal} to {service}: {detail}")]
    NoMainPid {
        signal: String,
        service: String,
        detail: String,
    },
    #[error("cannot send {signal} to pid {pid} ({service}): {source}")]
    Signal {
        signal: String,
        pid: u32,
        service: String,
        source: std::io::Error,
    },
    #[error("sent {signal} to pid {pid} but {} {} within {}s; check that the app handles {signal} and writes that file", ack_file.display(), if *resume { "was not removed" } else { "did not appear" }, timeout.as_secs_f64())]
    NoAck {
        signal: String,
        pid: u32,
        ack_file: PathBuf,
        resume: bool,
        timeout: Duration,
    },
}

fn hint(body: &str) -> String {
    let t = body.trim();
    if t.is_empty() {
        String::new()
    } else {
        format!(": {}", t.chars().take(200).collect::<String>())
    }
}

/// How the app is asked to pause, in order of preference: `quiesce_url`,
/// then the `quiesce` command, then `quiesce_signal`, else nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuiesceMethod {
    /// `POST` this URL; 2xx (without `"acknowledged": false`) is the ack.
    Url(String),
    /// Run this argv; exit 0 is the ack.
    Command(Vec<String>),
    /// Send this signal to the main pid; with `ack_file`, wait for that file
    /// to appear (holding the pid, when it holds a number).
    Signal {
        signal: i32,
        name: String,
        ack_file: Option<PathBuf>,
    },
    /// The app has no quiesce: nothing is done.
    None,
}

/// How the app is asked to resume: `resume_url` (derived from `quiesce_url`
/// by replacing a trailing `/quiesce` with `/resume` when not set), then the
/// `resume` command, then `resume_signal`, else nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeMethod {
    Url(String),
    Command(Vec<String>),
    /// Send this signal; with `ack_file` (the quiesce ack file), wait for it
    /// to disappear.
    Signal {
        signal: i32,
        name: String,
        ack_file: Option<PathBuf>,
    },
    /// No way to resume: only a restart unpauses the app.
    None,
}

/// What a quiesce did, for the journal and the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuiesceAck {
    /// `url`, `command`, `signal` or `none`.
    pub method: String,
    /// The URL, the argv, or `SIGUSR1 to pid 1234`.
    pub target: String,
    /// The answer: the response body, the command's stdout tail, the ack file.
    pub detail: String,
    pub duration_ms: u64,
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Parses `SIGUSR1`, `usr1` or `10` into (number, canonical name).
pub fn parse_signal(key: &'static str, value: &str) -> Result<(i32, String), QuiesceError> {
    use rustix::process::Signal;
    let bad = || QuiesceError::BadSignal {
        key,
        value: value.to_string(),
    };
    let trimmed = value.trim();
    if let Ok(n) = trimmed.parse::<i32>() {
        let sig = Signal::from_named_raw(n).ok_or_else(bad)?;
        return Ok((sig.as_raw(), format!("signal {n}")));
    }
    let upper = trimmed.to_ascii_uppercase();
    let short = upper.strip_prefix("SIG").unwrap_or(&upper);
    let sig = match short {
        "HUP" => Signal::HUP,
        "INT" => Signal::INT,
        "QUIT" => Signal::QUIT,
        "USR1" => Signal::USR1,
        "USR2" => Signal::USR2,
        "TERM" => Signal::TERM,
        "CONT" => Signal::CONT,
        "WINCH" => Signal::WINCH,
        "ALRM" => Signal::ALARM,
        "PWR" => Signal::POWER,
        _ => return Err(bad()),
    };
    Ok((sig.as_raw(), format!("SIG{short}")))
}

impl QuiesceMethod {
    /// The method `[service]` configures.
    pub fn from_config(cfg: &ServiceConfig) -> Result<QuiesceMethod, QuiesceError> {
        if let Some(url) = non_empty(&cfg.quiesce_url) {
            return Ok(QuiesceMethod::Url(url.to_string()));
        }
        if !cfg.quiesce.is_empty() {
            return Ok(QuiesceMethod::Command(cfg.quiesce.clone()));
        }
        if let Some(sig) = non_empty(&cfg.quiesce_signal) {
            let (signal, name) = parse_signal("quiesce_signal", sig)?;
            return Ok(QuiesceMethod::Signal {
                signal,
                name,
                ack_file: cfg.quiesce_ack_file.clone(),
            });
        }
        Ok(QuiesceMethod::None)
    }

    /// For messages and dry runs: `POST http://…/admin/quiesce`.
    pub fn describe(&self) -> String {
        match self {
            QuiesceMethod::Url(url) => format!("POST {url}"),
            QuiesceMethod::Command(argv) => format!("run `{}`", hooks::display_argv(argv)),
            QuiesceMethod::Signal { name, ack_file, .. } => match ack_file {
                Some(f) => format!("send {name}, wait for {}", f.display()),
                None => format!("send {name}"),
            },
            QuiesceMethod::None => "no quiesce configured".to_string(),
        }
    }
}

impl ResumeMethod {
    /// The method `[service]` configures.
    pub fn from_config(cfg: &ServiceConfig) -> Result<ResumeMethod, QuiesceError> {
        if let Some(url) = non_empty(&cfg.resume_url) {
            return Ok(ResumeMethod::Url(url.to_string()));
        }
        if let Some(url) = non_empty(&cfg.quiesce_url) {
            if let Some(base) = url.strip_suffix("/quiesce") {
                return Ok(ResumeMethod::Url(format!("{base}/resume")));
            }
        }
        if !cfg.resume.is_empty() {
            return Ok(ResumeMethod::Command(cfg.resume.clone()));
        }
        if let Some(sig) = non_empty(&cfg.resume_signal) {
            let (signal, name) = parse_signal("resume_signal", sig)?;
            return Ok(ResumeMethod::Signal {
                signal,
                name,
                ack_file: cfg.quiesce_ack_file.clone(),
            });
        }
        Ok(ResumeMethod::None)
    }

    pub fn describe(&self) -> String {
        match self {
            ResumeMethod::Url(url) => format!("POST {url}"),
            ResumeMethod::Command(argv) => format!("run `{}`", hooks::display_argv(argv)),
            ResumeMethod::Signal { name, .. } => format!("send {name}"),
            ResumeMethod::None => "no resume configured (a restart unpauses the app)".to_string(),
        }
    }
}

/// Asks the app to pause and waits (at most `timeout`) for its ack; a
/// command runs in `/`. See [`quiesce_in`].
pub fn quiesce(
    method: &QuiesceMethod,
    service: &Service,
    timeout: Duration,
) -> Result<QuiesceAck, QuiesceError> {
    quiesce_in(method, service, timeout, Path::new("/"))
}

/// Asks the app to pause and waits (at most `timeout`) for its ack; a
/// command runs in `cwd` (the running release's `app/` is a good choice, so
/// that `python3 -m bot.quiesce` imports).
///
/// Fails when the app is unreachable (connection refused: not running), says
/// no, does not answer in time, or has no main pid to signal.
pub fn quiesce_in(
    method: &QuiesceMethod,
    service: &Service,
    timeout: Duration,
    cwd: &Path,
) -> Result<QuiesceAck, QuiesceError> {
    const ACTION: &str = "quiesce the app";
    let started = Instant::now();
    let ack = |method: &str, target: String, detail: String| QuiesceAck {
        method: method.to_string(),
        target,
        detail,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    match method {
        QuiesceMethod::Url(url) => {
            let body = post(ACTION, url, timeout)?;
            // An app may answer 2xx and still say no.
            let refused = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("acknowledged").and_then(|a| a.as_bool()))
                == Some(false);
            if refused {
                return Err(QuiesceError::NotAcknowledged {
                    url: url.clone(),
                    body,
                });
            }
            Ok(ack("url", url.clone(), body.trim().to_string()))
        }
        QuiesceMethod::Command(argv) => {
            let out = hooks::run_command(argv, cwd, &[], timeout).map_err(|source| {
                QuiesceError::Command {
                    action: ACTION,
                    source,
                }
            })?;
            Ok(ack(
                "command",
                hooks::display_argv(argv),
                out.stdout_tail.trim().to_string(),
            ))
        }
        QuiesceMethod::Signal {
            signal,
            name,
            ack_file,
        } => {
            let pid = send_signal(*signal, name, service)?;
            let detail = match ack_file {
                Some(file) => {
                    wait_for_ack(file, pid, false, hooks::deadline_after(started, timeout))
                        .map_err(|()| QuiesceError::NoAck {
                            signal: name.clone(),
                            pid,
                            ack_file: file.clone(),
                            resume: false,
                            timeout,
                        })?;
                    format!("{} appeared", file.display())
                }
                None => "sent; no ack file configured".to_string(),
            };
            Ok(ack("signal", format!("{name} to pid {pid}"), detail))
        }
        QuiesceMethod::None => Ok(ack("none", String::new(), "no quiesce configured".into())),
    }
}

/// Asks a paused app to resume (when an update is abandoned before the
/// restart); a command runs in `/`. See [`resume_in`].
pub fn resume(
    method: &ResumeMethod,
    service: &Service,
    timeout: Duration,
) -> Result<(), QuiesceError> {
    resume_in(method, service, timeout, Path::new("/"))
}

/// Asks a paused app to resume, waiting at most `timeout`; a command runs in
/// `cwd`. With [`ResumeMethod::None`] nothing is done: the caller must
/// restart the service to unpause it.
pub fn resume_in(
    method: &ResumeMethod,
    service: &Service,
    timeout: Duration,
    cwd: &Path,
) -> Result<(), QuiesceError> {
    const ACTION: &str = "resume the app";
    let started = Instant::now();
    match method {
        ResumeMethod::Url(url) => post(ACTION, url, timeout).map(|_| ()),
        ResumeMethod::Command(argv) => hooks::run_command(argv, cwd, &[], timeout)
            .map(|_| ())
            .map_err(|source| QuiesceError::Command {
                action: ACTION,
                source,
            }),
        ResumeMethod::Signal {
            signal,
            name,
            ack_file,
        } => {
            let pid = send_signal(*signal, name, service)?;
            if let Some(file) = ack_file {
                wait_for_ack(file, pid, true, hooks::deadline_after(started, timeout)).map_err(
                    |()| QuiesceError::NoAck {
                        signal: name.clone(),
                        pid,
                        ack_file: file.clone(),
                        resume: true,
                        timeout,
                    },
                )?;
            }
            Ok(())
        }
        ResumeMethod::None => Ok(()),
    }
}

/// `POST url` (empty body) and require 2xx; returns the body.
fn post(action: &'static str, url: &str, timeout: Duration) -> Result<String, QuiesceError> {
    let agent = control_agent(timeout);
    let (status, body) = control_post(&agent, url).map_err(|reason| QuiesceError::Unreachable {
        action,
        url: url.to_string(),
        reason,
    })?;
    if !(200..300).contains(&status) {
        return Err(QuiesceError::Refused {
            action,
            url: url.to_string(),
            status,
            body,
        });
    }
    Ok(body)
}

/// Sends `signal` to the service's main pid; returns the pid.
fn send_signal(signal: i32, name: &str, service: &Service) -> Result<u32, QuiesceError> {
    let no_pid = |detail: String| QuiesceError::NoMainPid {
        signal: name.to_string(),
        service: service.describe(),
        detail,
    };
    let status = service
        .status()
        .map_err(|e: ServiceError| no_pid(e.to_string()))?;
    let pid = status.main_pid.ok_or_else(|| {
        no_pid(format!(
            "it has no main process (it is {}); is it running? (a status command must print the pid first)",
            status.describe()
        ))
    })?;
    let raw_pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| no_pid(format!("{pid} is not a valid pid")))?;
    let sig = rustix::process::Signal::from_named_raw(signal)
        .ok_or_else(|| no_pid(format!("{signal} is not a known signal number")))?;
    rustix::process::kill_process(raw_pid, sig).map_err(|e| QuiesceError::Signal {
        signal: name.to_string(),
        pid,
        service: service.describe(),
        source: e.into(),
    })?;
    Ok(pid)
}

/// Waits until the ack file shows the app `pid` paused (`gone = false`) or
/// resumed (`gone = true`). A file holding another number is a stale marker
/// of an earlier process and does not count; a file holding no number
/// counts by its presence.
fn wait_for_ack(file: &Path, pid: u32, gone: bool, deadline: Instant) -> Result<(), ()> {
    loop {
        // The app writes this file: a FIFO or a huge file there must not
        // stall or grow the run (slipway_fs reads it capped, never blocking).
        let acked = match slipway_fs::read_text_capped(file, 4096) {
            Ok(text) => {
                let ours = match text.trim().parse::<u32>() {
                    Ok(p) => p == pid,
                    Err(_) => true,
                };
                ours != gone
            }
            Err(_) => gone,
        };
        if acked {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(());
        }
        std::thread::sleep(ACK_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_follow_the_precedence() {
        let mut cfg = ServiceConfig {
            quiesce_url: Some("http://127.0.0.1:8080/admin/quiesce".into()),
            quiesce: vec!["pause-bot".into()],
            quiesce_signal: Some("SIGUSR1".into()),
            ..ServiceConfig::default()
        };
        assert_eq!(
            QuiesceMethod::from_config(&cfg).expect("ok"),
            QuiesceMethod::Url("http://127.0.0.1:8080/admin/quiesce".into())
        );
        assert_eq!(
            ResumeMethod::from_config(&cfg).expect("ok"),
            ResumeMethod::Url("http://127.0.0.1:8080/admin/resume".into())
        );
        cfg.quiesce_url = None;
        assert_eq!(
            QuiesceMethod::from_config(&cfg).expect("ok"),
            QuiesceMethod::Command(vec!["pause-bot".into()])
        );
        cfg.quiesce.clear();
        cfg.quiesce_ack_file = Some("/p/paused".into());
        assert_eq!(
            QuiesceMethod::from_config(&cfg).expect("ok"),
            QuiesceMethod::Signal {
                signal: rustix::process::Signal::USR1.as_raw(),
                name: "SIGUSR1".into(),
                ack_file: Some("/p/paused".into()),
            }
        );
        assert_eq!(
            ResumeMethod::from_config(&cfg).expect("ok"),
            ResumeMethod::None
        );
        cfg.resume_signal = Some("usr2".into());
        assert!(matches!(
            ResumeMethod::from_config(&cfg).expect("ok"),
            ResumeMethod::Signal { name, .. } if name == "SIGUSR2"
        ));
        cfg.quiesce_signal = Some("SIGFOO".into());
        let err = QuiesceMethod::from_config(&cfg).expect_err("bad signal");
        assert!(err.to_string().contains("quiesce_signal"), "{err}");
        assert_eq!(
            QuiesceMethod::from_config(&ServiceConfig::default()).expect("ok"),
            QuiesceMethod::None
        );
    }

    #[test]
    fn an_explicit_resume_url_wins_and_odd_quiesce_urls_derive_nothing() {
        let cfg = ServiceConfig {
            quiesce_url: Some("http://127.0.0.1:8080/pause".into()),
            ..ServiceConfig::default()
        };
        assert_eq!(
            ResumeMethod::from_config(&cfg).expect("ok"),
            ResumeMethod::None
        );
        let cfg = ServiceConfig {
            quiesce_url: Some("http://127.0.0.1:8080/admin/quiesce".into()),
            resume_url: Some("http://127.0.0.1:8080/go".into()),
            ..ServiceConfig::default()
        };
        assert_eq!(
            ResumeMethod::from_config(&cfg).expect("ok"),
            ResumeMethod::Url("http://127.0.0.1:8080/go".into())
        );
    }

    #[test]
    fn stale_ack_files_do_not_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("paused");
        std::fs::write(&f, "999999\n").expect("write");
        let soon = Instant::now() + Duration::from_millis(100);
        assert!(wait_for_ack(&f, 1234, false, soon).is_err());
        std::fs::write(&f, "1234\n").expect("write");
        assert!(wait_for_ack(&f, 1234, false, soon).is_ok());
        assert!(wait_for_ack(&f, 1234, true, Instant::now()).is_err());
        std::fs::remove_file(&f).expect("rm");
        assert!(wait_for_ack(&f, 1234, true, Instant::now()).is_ok());
    }
}

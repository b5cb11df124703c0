//! The health gate (SPEC §4 step 12): after a restart, the new release is
//! kept only if the service is up, is not crash-looping, and its health URL
//! answers 2xx (optionally reporting the new version) for N consecutive polls
//! before the deadline.
//!
//! Also home of the HTTP client used for every call to the local app (health,
//! quiesce, resume, save): it never goes through a proxy from the
//! environment (an `HTTP_PROXY` set for the release download must not
//! capture `http://127.0.0.1:8080/health`), follows no redirects, and has
//! short timeouts.

use std::time::{Duration, Instant};

use thiserror::Error;

use crate::config::ServiceConfig;
use crate::hooks::deadline_after;
use crate::service::Service;

/// The most of a control-call answer that is read.
const MAX_CONTROL_BODY: u64 = 64 * 1024;

/// Why the new release did not pass the gate. Either way the caller flips
/// back: the new release is running (or failing to), the old one is not.
#[derive(Debug, Error)]
pub enum HealthError {
    #[error("{service} did not become healthy within {}s ({polls} polls, needed {needed} consecutive good ones): {reason}; {hint}", deadline.as_secs_f64())]
    Unhealthy {
        service: String,
        /// Where to look next (`journalctl -u UNIT` for systemd).
        hint: String,
        reason: String,
        polls: u32,
        needed: u32,
        deadline: Duration,
    },
    #[error("{service} is crash-looping or has failed: it is {state}, restarted {restarts} times by its manager since slipway restarted it; {hint}")]
    CrashLooping {
        service: String,
        hint: String,
        restarts: u64,
        state: String,
    },
}

/// What "healthy" means for this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthPolicy {
    /// `GET` this and require 2xx; `None`: the manager's state alone decides.
    pub url: Option<String>,
    /// The whole gate must pass within this.
    pub deadline: Duration,
    /// Consecutive good polls needed (at least 1).
    pub healthy_polls: u32,
    /// Pause between polls.
    pub interval: Duration,
    /// Require the JSON answer's `version` to equal this.
    pub expect_version: Option<String>,
}

impl HealthPolicy {
    /// The policy `[service]` configures. `expect_version` (the version just
    /// installed) is only required when `health_expect_version = true` and a
    /// health URL is set.
    pub fn from_config(cfg: &ServiceConfig, expect_version: Option<String>) -> HealthPolicy {
        HealthPolicy {
            url: cfg.health_url.clone().filter(|u| !u.trim().is_empty()),
            deadline: Duration::from_secs(cfg.health_timeout_seconds),
            healthy_polls: cfg.healthy_polls.max(1),
            interval: Duration::from_millis(cfg.health_interval_ms),
            expect_version: if cfg.health_expect_version {
                expect_version
            } else {
                None
            },
        }
    }

    /// The timeout of one health request: twice the interval, between 1 s
    /// and 5 s.
    pub fn request_timeout(&self) -> Duration {
        (self.interval * 2).clamp(Duration::from_secs(1), Duration::from_secs(5))
    }
}

/// How the gate was passed, for the journal and the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    /// Polls made, good and bad.
    pub polls: u32,
    pub elapsed: Duration,
    /// The last health answer's body, when a URL is polled.
    pub last_body: Option<String>,
}

/// One poll's verdict.
enum Poll {
    Good(Option<String>),
    Bad(String),
    CrashLoop { restarts: u64, state: String },
}

/// Polls until `policy.healthy_polls` consecutive good polls, or fails at
/// the deadline with the last failure as the reason.
///
/// A good poll: the manager says running, its restart counter has not grown
/// past `baseline_restarts` (read right after the restart; `None` ignores
/// it), and, with a URL, `GET url` answers 2xx within
/// [`HealthPolicy::request_timeout`] with the expected version if one is
/// set. A bad poll resets the count. A grown restart counter, or a systemd
/// unit in state `failed`, fails at once: waiting cannot fix it.
pub fn health_gate(
    service: &Service,
    baseline_restarts: Option<u64>,
    policy: &HealthPolicy,
) -> Result<HealthReport, HealthError> {
    let started = Instant::now();
    let deadline = deadline_after(started, policy.deadline);
    let needed = policy.healthy_polls.max(1);
    let agent = policy
        .url
        .as_ref()
        .map(|_| control_agent(policy.request_timeout()));
    let mut polls = 0u32;
    let mut good = 0u32;
    let mut last_failure: Option<String> = None;
    loop {
        polls += 1;
        match poll_once(service, baseline_restarts, policy, agent.as_ref()) {
            Poll::Good(body) => {
                good += 1;
                if good >= needed {
                    return Ok(HealthReport {
                        polls,
                        elapsed: started.elapsed(),
                        last_body: body,
                    });
                }
            }
            Poll::Bad(reason) => {
                good = 0;
                last_failure = Some(reason);
            }
            Poll::CrashLoop { restarts, state } => {
                return Err(HealthError::CrashLooping {
                    service: service.describe(),
                    hint: log_hint(service),
                    restarts,
                    state,
                })
            }
        }
        let now = Instant::now();
        // Once the next poll would land after the deadline, the gate failed.
        if deadline_after(now, policy.interval) >= deadline {
            let reason = match (&last_failure, good) {
                (Some(failure), 0) => failure.clone(),
                (Some(failure), _) => format!(
                    "only {good} consecutive good polls before the deadline; the last failure: {failure}"
                ),
                (None, _) => format!(
                    "only {good} good polls fit before the deadline; raise service.health_timeout_seconds or lower service.healthy_polls"
                ),
            };
            return Err(HealthError::Unhealthy {
                service: service.describe(),
                hint: log_hint(service),
                reason,
                polls,
                needed,
                deadline: policy.deadline,
            });
        }
        std::thread::sleep(policy.interval);
    }
}

/// Where an operator finds out why the service is unhealthy.
fn log_hint(service: &Service) -> String {
    match service {
        Service::Systemd { unit } => format!("see `journalctl -u {unit}` for why"),
        _ => "see the service's own log for why".to_string(),
    }
}

fn poll_once(
    service: &Service,
    baseline_restarts: Option<u64>,
    policy: &HealthPolicy,
    agent: Option<&ureq::Agent>,
) -> Poll {
    let status = match service.status() {
        Ok(s) => s,
        Err(e) => return Poll::Bad(e.to_string()),
    };
    if let Some(base) = baseline_restarts {
        if status.restarts > base {
            return Poll::CrashLoop {
                restarts: status.restarts - base,
                state: status.describe(),
            };
        }
    }
    if matches!(service, Service::Systemd { .. }) && status.active_state == "failed" {
        return Poll::CrashLoop {
            restarts: status.restarts,
            state: status.describe(),
        };
    }
    if !status.is_running() {
        return Poll::Bad(match service {
            Service::Systemd { unit } => format!(
                "unit {unit} is {} (restarted {} times)",
                status.describe(),
                status.restarts
            ),
            _ => format!("{} is {}", service.describe(), status.describe()),
        });
    }
    let (Some(url), Some(agent)) = (&policy.url, agent) else {
        return Poll::Good(None);
    };
    match control_get(agent, url) {
        Err(reason) => Poll::Bad(format!("GET {url}: {reason}")),
        Ok((code, body)) if !(200..300).contains(&code) => {
            Poll::Bad(format!("GET {url} answered {code}{}", body_hint(&body)))
        }
        Ok((_, body)) => match &policy.expect_version {
            None => Poll::Good(Some(body)),
            Some(expected) => match reported_version(&body) {
                Some(v) if &v == expected => Poll::Good(Some(body)),
                Some(v) => Poll::Bad(format!(
                    "GET {url} reports version {v}, expected {expected}"
                )),
                None => Poll::Bad(format!(
                    "GET {url} answered without a JSON \"version\" (expected {expected}){}",
                    body_hint(&body)
                )),
            },
        },
    }
}

/// The `version` string of a JSON health answer.
fn reported_version(body: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    value.get("version")?.as_str().map(str::to_string)
}

fn body_hint(body: &str) -> String {
    let t = body.trim();
    if t.is_empty() {
        String::new()
    } else {
        let short: String = t.chars().take(200).collect();
        format!(": {short}")
    }
}

/// An HTTP client for calls to the local app: no proxy (whatever the
/// environment says), no redirects, non-2xx is an answer rather than an
/// error, connect within min(timeout, 3 s), whole call within `timeout`.
pub fn control_agent(timeout: Duration) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .proxy(None)
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_connect(Some(timeout.min(Duration::from_secs(3))))
        .timeout_global(Some(timeout))
        .build();
    ureq::Agent::new_with_config(config)
}

/// `GET url`: the status code and up to 64 KiB of body, or why there was no
/// answer ("connection refused", "no answer within 2s", ...).
pub fn control_get(agent: &ureq::Agent, url: &str) -> Result<(u16, String), String> {
    let response = agent.get(url).call().map_err(|e| describe_http_error(&e))?;
    read_answer(response)
}

/// `POST url` with an empty body: the status code and up to 64 KiB of body.
pub fn control_post(agent: &ureq::Agent, url: &str) -> Result<(u16, String), String> {
    let response = agent
        .post(url)
        .send_empty()
        .map_err(|e| describe_http_error(&e))?;
    read_answer(response)
}

fn read_answer(mut response: ureq::http::Response<ureq::Body>) -> Result<(u16, String), String> {
    let code = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_CONTROL_BODY)
        .lossy_utf8(true)
        .read_to_string()
        .map_err(|e| {
            format!(
                "answered {code} but the body could not be read: {}",
                describe_http_error(&e)
            )
        })?;
    Ok((code, body))
}

/// A transport error in the words an operator searches for.
pub fn describe_http_error(e: &ureq::Error) -> String {
    use std::io::ErrorKind;
    match e {
        ureq::Error::Io(io) => match io.kind() {
            ErrorKind::ConnectionRefused => {
                "connection refused (is the service running and listening there?)".to_string()
            }
            ErrorKind::ConnectionReset => "connection reset by the service".to_string(),
            ErrorKind::TimedOut | ErrorKind::WouldBlock => "no answer in time".to_string(),
            ErrorKind::UnexpectedEof => {
                "the service closed the connection without answering".to_string()
            }
            _ => io.to_string(),
        },
        ureq::Error::Timeout(t) => format!("no answer in time ({t} timeout)"),
        ureq::Error::HostNotFound => "host not found".to_string(),
        ureq::Error::BadUri(u) => format!("not a valid URL ({u}); fix it in [service]"),
        ureq::Error::BodyExceedsLimit(n) => format!("answer larger than {n} bytes"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_from_config_requires_the_version_only_when_asked() {
        let mut cfg = ServiceConfig {
            health_url: Some("http://127.0.0.1:8080/health".into()),
            ..ServiceConfig::default()
        };
        let p = HealthPolicy::from_config(&cfg, Some("2.0.0".into()));
        assert_eq!(p.expect_version, None);
        assert_eq!(p.healthy_polls, 3);
        assert_eq!(p.deadline, Duration::from_secs(60));
        assert_eq!(p.request_timeout(), Duration::from_secs(2));
        cfg.health_expect_version = true;
        let p = HealthPolicy::from_config(&cfg, Some("2.0.0".into()));
        assert_eq!(p.expect_version.as_deref(), Some("2.0.0"));
    }

    #[test]
    fn version_is_read_from_json() {
        assert_eq!(
            reported_version(r#"{"status":"ok","version":"1.2.3"}"#).as_deref(),
            Some("1.2.3")
        );
        assert_eq!(reported_version("ok"), None);
        assert_eq!(reported_version(r#"{"version":3}"#), None);
    }

    #[test]
    fn a_service_without_url_is_healthy_when_running() {
        let report = health_gate(
            &Service::None,
            Some(0),
            &HealthPolicy {
                url: None,
                deadline: Duration::from_secs(5),
                healthy_polls: 2,
                interval: Duration::from_millis(1),
                expect_version: None,
            },
        )
        .expect("healthy");
        assert_eq!(report.polls, 2);

        // Good polls that cannot all fit before the deadline: a clear reason.
        let err = health_gate(
            &Service::None,
            None,
            &HealthPolicy {
                url: None,
                deadline: Duration::from_millis(150),
                healthy_polls: 5,
                interval: Duration::from_millis(100),
                expect_version: None,
            },
        )
        .expect_err("too few polls fit");
        assert!(err.to_string().contains("healthy_polls"), "{err}");
    }
}

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
    /// Fields the JSON answer must carry with exactly these values
    /// (`[health] expect`).
    pub expect_fields: std::collections::BTreeMap<String, serde_json::Value>,
    /// Under probation: the answer must say `"paused": true` (the release
    /// is healthy but not trading).
    pub require_paused: bool,
    /// Under probation: the gate passes no sooner than this after it began.
    pub min_elapsed: Duration,
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
            expect_fields: std::collections::BTreeMap::new(),
            require_paused: false,
            min_elapsed: Duration::ZERO,
        }
    }

    /// The policy for this host: `[service]`'s, plus `[health] expect`.
    pub fn for_host(
        config: &crate::config::Config,
        expect_version: Option<String>,
    ) -> HealthPolicy {
        HealthPolicy {
            expect_fields: config.health.expect.clone(),
            ..HealthPolicy::from_config(&config.service, expect_version)
        }
    }

    /// This policy for a release under probation: it must also answer
    /// `"paused": true`, for at least `min_elapsed`.
    pub fn on_probation(self, min_elapsed: Duration) -> HealthPolicy {
        HealthPolicy {
            require_paused: true,
            min_elapsed,
            ..self
        }
    }

    /// Whether the answer must be read as JSON.
    fn reads_json(&self) -> bool {
        self.expect_version.is_some() || !self.expect_fields.is_empty() || self.require_paused
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
                if good >= needed && started.elapsed() >= policy.min_elapsed {
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
        Ok((_, body)) => match answer_problem(policy, &body) {
            None => Poll::Good(Some(body)),
            Some(problem) => Poll::Bad(format!("GET {url} {problem}")),
        },
    }
}

/// Why a 2xx health answer does not pass `policy`, if it does not: its
/// JSON must report the expected version, carry every expected field with
/// its value, and, under probation, say `"paused": true`.
fn answer_problem(policy: &HealthPolicy, body: &str) -> Option<String> {
    if !policy.reads_json() {
        return None;
    }
    let Ok(value) = serde_json::from_str::<serde_json::Value>(body) else {
        return Some(format!("answered no JSON object{}", body_hint(body)));
    };
    if let Some(expected) = &policy.expect_version {
        match value.get("version").and_then(serde_json::Value::as_str) {
            Some(v) if v == expected => {}
            Some(v) => return Some(format!("reports version {v}, expected {expected}")),
            None => {
                return Some(format!(
                    "answered without a JSON \"version\" (expected {expected}){}",
                    body_hint(body)
                ))
            }
        }
    }
    for (field, expected) in &policy.expect_fields {
        match value.get(field) {
            Some(v) if v == expected => {}
            Some(v) => {
                return Some(format!(
                    "reports {field} = {v}, expected {expected} (health.expect)"
                ))
            }
            None => {
                return Some(format!(
                    "answered without {field:?} (health.expect wants {expected})"
                ))
            }
        }
    }
    if policy.require_paused && value.get("paused") != Some(&serde_json::Value::Bool(true)) {
        return Some(format!(
            "does not say \"paused\": true, yet the release is under probation and must not trade before the gate passes (docs/probation.md){}",
            body_hint(body)
        ));
    }
    None
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

    fn policy() -> HealthPolicy {
        HealthPolicy {
            url: Some("http://127.0.0.1:9/health".into()),
            deadline: Duration::from_secs(5),
            healthy_polls: 1,
            interval: Duration::from_millis(1),
            expect_version: None,
            expect_fields: std::collections::BTreeMap::new(),
            require_paused: false,
            min_elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn the_answer_must_carry_the_version_the_fields_and_under_probation_paused() {
        // Nothing asked of the body: any 2xx answer is good.
        assert_eq!(answer_problem(&policy(), "ok"), None);

        let p = HealthPolicy {
            expect_version: Some("1.2.3".into()),
            ..policy()
        };
        assert_eq!(
            answer_problem(&p, r#"{"status":"ok","version":"1.2.3"}"#),
            None
        );
        let why = answer_problem(&p, r#"{"version":"1.2.2"}"#).expect("wrong version");
        assert!(why.contains("1.2.2") && why.contains("1.2.3"), "{why}");
        assert!(answer_problem(&p, r#"{"version":3}"#).is_some());
        assert!(answer_problem(&p, "ok").is_some());

        let mut fields = std::collections::BTreeMap::new();
        fields.insert("mode".to_string(), serde_json::json!("live"));
        let p = HealthPolicy {
            expect_fields: fields,
            ..policy()
        };
        assert_eq!(answer_problem(&p, r#"{"mode":"live"}"#), None);
        let why = answer_problem(&p, r#"{"mode":"paper"}"#).expect("wrong field");
        assert!(
            why.contains("mode") && why.contains("health.expect"),
            "{why}"
        );
        assert!(answer_problem(&p, r#"{"other":1}"#).is_some());

        let p = policy().on_probation(Duration::from_secs(1));
        assert_eq!(answer_problem(&p, r#"{"paused":true}"#), None);
        let why = answer_problem(&p, r#"{"paused":false}"#).expect("trading");
        assert!(why.contains("probation"), "{why}");
        assert!(answer_problem(&p, r#"{"status":"ok"}"#).is_some());
    }

    #[test]
    fn probation_holds_the_gate_for_its_minimum_time() {
        let p = HealthPolicy {
            url: None,
            healthy_polls: 1,
            interval: Duration::from_millis(20),
            ..policy()
        }
        .on_probation(Duration::from_millis(300));
        let report = health_gate(&Service::None, None, &p).expect("healthy");
        assert!(report.elapsed >= Duration::from_millis(300), "{report:?}");
        assert!(report.polls > 1, "{report:?}");
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
                ..policy()
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
                ..policy()
            },
        )
        .expect_err("too few polls fit");
        assert!(err.to_string().contains("healthy_polls"), "{err}");
    }
}

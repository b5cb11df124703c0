//! The side-effect steps against real things: processes and process groups,
//! a loopback HTTP server, the example bot (`examples/bot`), and real
//! directory trees. Temp dirs only.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use slipway::app_user::AppUser;
use slipway::config::ServiceConfig;
use slipway::health::{control_agent, control_get, health_gate, HealthError, HealthPolicy};
use slipway::hooks::{run_checks, run_command, HookError};
use slipway::quiesce::{quiesce, resume, QuiesceError, QuiesceMethod, ResumeMethod};
use slipway::service::Service;
use slipway::snapshot::{
    list_snapshots, newest_save_age, request_save, restore_snapshot, take_snapshot, tree_digest,
    Snapshot, SnapshotError,
};

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Whether a process is gone (a zombie waiting for its reaper counts).
fn process_gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
    }
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------- hooks

#[test]
fn run_command_timeout_kills_the_whole_process_group() {
    let dir = tempdir();
    let pidfile = dir.path().join("bg.pid");
    let started = Instant::now();
    let err = run_command(
        &argv(&[
            "sh",
            "-c",
            "sleep 60 & echo $! > bg.pid; echo about to wait >&2; wait",
        ]),
        dir.path(),
        &[],
        Duration::from_millis(700),
    )
    .expect_err("must time out");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    match &err {
        HookError::Timeout {
            argv, stderr_tail, ..
        } => {
            assert!(argv.starts_with("sh -c"), "{argv}");
            assert!(stderr_tail.contains("about to wait"), "{stderr_tail}");
        }
        other => panic!("expected a timeout, got {other}"),
    }
    assert!(err.to_string().contains("sh -c"), "{err}");
    let pid: u32 = fs::read_to_string(&pidfile)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    wait_for(
        "the background sleep to die",
        Duration::from_secs(5),
        || process_gone(pid),
    );
}

#[test]
fn a_hook_leaves_no_background_process_behind() {
    let dir = tempdir();
    let out = run_command(
        &argv(&["sh", "-c", "sleep 60 & echo $! > bg.pid"]),
        dir.path(),
        &[],
        Duration::from_secs(10),
    )
    .expect("exits 0 at once");
    assert!(out.duration < Duration::from_secs(5), "{:?}", out.duration);
    let pid: u32 = fs::read_to_string(dir.path().join("bg.pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    wait_for(
        "the background sleep to die",
        Duration::from_secs(5),
        || process_gone(pid),
    );

    // A service's restart command may start the service in the background.
    let service = Service::Command {
        restart: argv(&[
            "sh",
            "-c",
            &format!(
                "sleep 60 >/dev/null 2>&1 & echo $! > {}/svc.pid",
                dir.path().display()
            ),
        ]),
        status: Vec::new(),
    };
    service.restart().expect("restart");
    let pid: u32 = fs::read_to_string(dir.path().join("svc.pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !process_gone(pid),
        "the service started by restart keeps running"
    );
    let _ = Command::new("kill").arg(pid.to_string()).status();
}

#[test]
fn run_command_captures_the_tails_and_reports_failures() {
    let dir = tempdir();
    // 100 000 numbered lines on stdout: only the last 16 KiB are kept, and
    // the pipe never blocks the child.
    let out = run_command(
        &argv(&[
            "sh",
            "-c",
            "i=0; while [ $i -lt 100000 ]; do echo line$i; i=$((i+1)); done; echo done >&2",
        ]),
        dir.path(),
        &[],
        Duration::from_secs(60),
    )
    .expect("runs");
    assert_eq!(out.status, Some(0));
    assert_eq!(out.stdout_tail.len(), slipway::hooks::TAIL_BYTES);
    assert!(out.stdout_tail.ends_with("line99999\n"));
    assert_eq!(out.stderr_tail, "done\n");

    let err = run_command(
        &argv(&["sh", "-c", "echo compile error in bot.py >&2; exit 3"]),
        dir.path(),
        &[],
        Duration::from_secs(10),
    )
    .expect_err("exit 3");
    match &err {
        HookError::Failed {
            argv,
            status,
            stderr_tail,
            ..
        } => {
            assert_eq!(*status, Some(3));
            assert!(argv.contains("exit 3"), "{argv}");
            assert_eq!(stderr_tail, "compile error in bot.py\n");
        }
        other => panic!("expected a failure, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("exit status 3") && msg.contains("compile error in bot.py"),
        "{msg}"
    );
}

#[test]
fn run_command_names_the_program_it_cannot_start() {
    let dir = tempdir();
    let err = run_command(
        &argv(&["no-such-program-slipway", "x"]),
        dir.path(),
        &[],
        Duration::from_secs(5),
    )
    .expect_err("spawn");
    assert!(matches!(err, HookError::Spawn { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("no-such-program-slipway"), "{msg}");
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
}

#[test]
fn run_checks_runs_in_the_release_and_stops_at_the_first_failure() {
    let release = tempdir();
    let env = vec![
        (
            "SLIPWAY_RELEASE_DIR".to_string(),
            release.path().display().to_string(),
        ),
        ("SLIPWAY_VERSION".to_string(), "2.0.0".to_string()),
    ];
    let release_check = argv(&["sh", "-c", "echo $SLIPWAY_VERSION > release-check-ran"]);
    let host_checks = vec![
        argv(&["sh", "-c", "touch host-check-1-ran"]),
        argv(&["sh", "-c", "echo tests failed >&2; exit 1"]),
        argv(&["sh", "-c", "touch host-check-3-ran"]),
    ];
    let err = run_checks(
        release.path(),
        Some(&release_check),
        &host_checks,
        &env,
        Duration::from_secs(10),
        &AppUser::root(),
        None,
    )
    .expect_err("second host check fails");
    assert!(err.to_string().contains("tests failed"), "{err}");
    assert_eq!(
        fs::read_to_string(release.path().join("release-check-ran")).expect("ran in cwd"),
        "2.0.0\n"
    );
    assert!(release.path().join("host-check-1-ran").exists());
    assert!(
        !release.path().join("host-check-3-ran").exists(),
        "must stop at the first failure"
    );

    let outputs = run_checks(
        release.path(),
        None,
        &host_checks[..1],
        &env,
        Duration::from_secs(10),
        &AppUser::root(),
        None,
    )
    .expect("passes");
    assert_eq!(outputs.len(), 1);
}

// -------------------------------------------------------------- service

#[test]
fn command_service_restarts_and_reports_status_and_pid() {
    let dir = tempdir();
    let d = dir.path().display().to_string();
    let service = Service::Command {
        restart: argv(&[
            "sh",
            "-c",
            &format!("echo restarted >> {d}/log; echo 4242 > {d}/pid"),
        ]),
        status: argv(&["sh", "-c", &format!("test -f {d}/pid && cat {d}/pid")]),
    };
    let down = service.status().expect("status");
    assert!(!down.is_running());
    assert_eq!(down.main_pid, None);
    service.restart().expect("restart");
    service.restart().expect("restart");
    assert_eq!(
        fs::read_to_string(dir.path().join("log")).expect("log"),
        "restarted\nrestarted\n"
    );
    let up = service.status().expect("status");
    assert!(up.is_running());
    assert_eq!(up.main_pid, Some(4242));

    let failing = Service::Command {
        restart: argv(&["sh", "-c", "echo no such program >&2; exit 127"]),
        status: Vec::new(),
    };
    let err = failing.restart().expect_err("restart fails");
    assert!(err.to_string().contains("no such program"), "{err}");
    assert!(
        failing.status().expect("no status command").is_running(),
        "no status command: running"
    );
}

// --------------------------------------------------------------- health

/// A loopback HTTP server answering the `script` of (status, body) in
/// order, then the last one forever. Returns its port and a hit counter.
fn serve(script: Vec<(u16, String)>) -> (u16, Arc<AtomicU32>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hits = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&hits);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let n = counter.fetch_add(1, Ordering::SeqCst) as usize;
            let (code, body) = &script[n.min(script.len() - 1)];
            answer(&mut stream, *code, body);
        }
    });
    (port, hits)
}

fn answer(stream: &mut TcpStream, code: u16, body: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let _ = write!(
        stream,
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn ok(body: &str) -> (u16, String) {
    (200, body.to_string())
}

fn policy(url: String, polls: u32, deadline_ms: u64) -> HealthPolicy {
    HealthPolicy {
        url: Some(url),
        deadline: Duration::from_millis(deadline_ms),
        healthy_polls: polls,
        interval: Duration::from_millis(20),
        expect_version: None,
        expect_fields: Default::default(),
        require_paused: false,
        min_elapsed: Duration::ZERO,
    }
}

#[test]
fn health_gate_passes_after_n_consecutive_good_polls() {
    let (port, hits) = serve(vec![ok(r#"{"status":"ok"}"#)]);
    let report = health_gate(
        &Service::None,
        Some(0),
        &policy(format!("http://127.0.0.1:{port}/health"), 3, 10_000),
    )
    .expect("healthy");
    assert_eq!(report.polls, 3);
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    assert_eq!(report.last_body.as_deref(), Some(r#"{"status":"ok"}"#));
}

#[test]
fn health_gate_a_bad_poll_resets_the_count() {
    let (port, _) = serve(vec![
        ok("{}"),
        ok("{}"),
        (503, r#"{"status":"failing"}"#.into()),
        ok("{}"),
        ok("{}"),
        ok("{}"),
    ]);
    let report = health_gate(
        &Service::None,
        None,
        &policy(format!("http://127.0.0.1:{port}/health"), 3, 10_000),
    )
    .expect("healthy in the end");
    assert_eq!(report.polls, 6, "two good, one bad, then three good");
}

#[test]
fn health_gate_fails_at_the_deadline_with_the_last_reason() {
    let (port, hits) = serve(vec![ok("{}"), (503, r#"{"status":"failing"}"#.into())]);
    let url = format!("http://127.0.0.1:{port}/health");
    let started = Instant::now();
    let err =
        health_gate(&Service::None, None, &policy(url.clone(), 3, 600)).expect_err("never healthy");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        hits.load(Ordering::SeqCst) > 3,
        "kept polling until the deadline"
    );
    match &err {
        HealthError::Unhealthy { reason, .. } => {
            assert_eq!(
                reason,
                &format!("GET {url} answered 503: {{\"status\":\"failing\"}}")
            )
        }
        other => panic!("expected unhealthy, got {other}"),
    }
    assert!(err.to_string().contains("answered 503"), "{err}");
}

#[test]
fn health_gate_requires_the_expected_version() {
    let (port, _) = serve(vec![ok(r#"{"status":"ok","version":"1.0.0"}"#)]);
    let mut p = policy(format!("http://127.0.0.1:{port}/health"), 2, 500);
    p.expect_version = Some("2.0.0".into());
    let err = health_gate(&Service::None, None, &p).expect_err("wrong version");
    let msg = err.to_string();
    assert!(
        msg.contains("reports version 1.0.0, expected 2.0.0"),
        "{msg}"
    );

    p.expect_version = Some("1.0.0".into());
    health_gate(&Service::None, None, &p).expect("right version");
}

#[test]
fn health_gate_names_a_refused_connection_and_a_stopped_service() {
    let port = free_port();
    let err = health_gate(
        &Service::None,
        None,
        &policy(format!("http://127.0.0.1:{port}/health"), 1, 300),
    )
    .expect_err("nothing listens");
    assert!(err.to_string().contains("connection refused"), "{err}");

    let (port, _) = serve(vec![ok("{}")]);
    let stopped = Service::Command {
        restart: argv(&["true"]),
        status: argv(&["false"]),
    };
    let err = health_gate(
        &stopped,
        None,
        &policy(format!("http://127.0.0.1:{port}/health"), 1, 300),
    )
    .expect_err("service down");
    assert!(err.to_string().contains("failed/exit 1"), "{err}");
}

/// Run by `health_checks_ignore_the_environment_proxy` in a child process
/// with a proxy set in its environment (so the variable never races with
/// the other tests' threads).
#[test]
#[ignore = "run by health_checks_ignore_the_environment_proxy"]
fn proxy_child() {
    let Ok(port) = std::env::var("SLIPWAY_TEST_PORT") else {
        return; // run directly with --include-ignored: nothing to check
    };
    let port: u16 = port.parse().expect("port");
    let agent = control_agent(Duration::from_secs(2));
    let (code, _) =
        control_get(&agent, &format!("http://127.0.0.1:{port}/health")).expect("direct");
    assert_eq!(code, 200);
}

#[test]
fn health_checks_ignore_the_environment_proxy() {
    // A "proxy" that answers 502 to everything: going through it would fail.
    let (proxy_port, proxy_hits) = serve(vec![(502, "{}".into())]);
    let (port, hits) = serve(vec![ok("{}")]);
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    let status = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", "proxy_child", "--nocapture"])
        .env("SLIPWAY_TEST_PORT", port.to_string())
        .env("HTTP_PROXY", &proxy)
        .env("http_proxy", &proxy)
        .env("ALL_PROXY", &proxy)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .status()
        .expect("run child");
    assert!(status.success());
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(proxy_hits.load(Ordering::SeqCst), 0);
}

// ------------------------------------------------ the real example bot

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn bot_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bot")
}

/// A running example bot, killed on drop.
struct Bot {
    child: Child,
    port: u16,
    persistence: PathBuf,
    _dir: tempfile::TempDir,
}

impl Bot {
    fn start() -> Bot {
        let dir = tempdir();
        let release = dir.path().join("release");
        fs::create_dir_all(release.join("slipway")).expect("mkdir");
        fs::create_dir_all(release.join("schema")).expect("mkdir");
        fs::copy(
            bot_source().join("schema/VERSION"),
            release.join("schema/VERSION"),
        )
        .expect("schema");
        fs::write(
            release.join("slipway/manifest.json"),
            r#"{"format":1,"app":"bot","version":"1.2.3","channel":"stable","schema_version":1,"schema_min_compatible":1}"#,
        )
        .expect("manifest");
        let persistence = dir.path().join("persistence");
        let port = free_port();
        let child = Command::new("python3")
            .args(["-m", "bot", "--port", &port.to_string(), "--persistence"])
            .arg(&persistence)
            .arg("--release-dir")
            .arg(&release)
            .current_dir(bot_source().join("app"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("BOT_PORT")
            .env_remove("BOT_PERSISTENCE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m bot");
        let bot = Bot {
            child,
            port,
            persistence,
            _dir: dir,
        };
        let agent = control_agent(Duration::from_secs(1));
        wait_for("the bot to answer /health", Duration::from_secs(15), || {
            matches!(control_get(&agent, &bot.url("/health")), Ok((200, _)))
        });
        bot
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn health(&self) -> serde_json::Value {
        let (code, body) =
            control_get(&control_agent(Duration::from_secs(5)), &self.url("/health")).expect("GET");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("json")
    }

    /// The service as a command backend whose status prints the bot's pid.
    fn service(&self) -> Service {
        Service::Command {
            restart: argv(&["true"]),
            status: argv(&["echo", &self.child.id().to_string()]),
        }
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn quiesce_and_resume_by_url_pause_the_real_bot() {
    let bot = Bot::start();
    assert_eq!(bot.health()["paused"], false);
    let cfg = ServiceConfig {
        quiesce_url: Some(bot.url("/admin/quiesce")),
        ..ServiceConfig::default()
    };
    let method = QuiesceMethod::from_config(&cfg).expect("method");
    let ack = quiesce(&method, &bot.service(), Duration::from_secs(10)).expect("quiesced");
    assert_eq!(ack.method, "url");
    assert!(ack.detail.contains("acknowledged"), "{ack:?}");
    assert_eq!(bot.health()["paused"], true);
    let ticks = bot.health()["ticks"].clone();
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(bot.health()["ticks"], ticks, "the work loop is paused");

    let resume_method = ResumeMethod::from_config(&cfg).expect("derived resume_url");
    assert_eq!(resume_method, ResumeMethod::Url(bot.url("/admin/resume")));
    resume(&resume_method, &bot.service(), Duration::from_secs(10)).expect("resumed");
    assert_eq!(bot.health()["paused"], false);

    // The health gate passes against it, requiring its version.
    let mut p = policy(bot.url("/health"), 2, 10_000);
    p.expect_version = Some("1.2.3".into());
    health_gate(&bot.service(), None, &p).expect("healthy");
}

#[test]
fn quiesce_fails_clearly_when_the_app_is_not_running() {
    let url = format!("http://127.0.0.1:{}/admin/quiesce", free_port());
    let err = quiesce(
        &QuiesceMethod::Url(url.clone()),
        &Service::None,
        Duration::from_secs(2),
    )
    .expect_err("nothing listens");
    assert!(matches!(err, QuiesceError::Unreachable { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&url) && msg.contains("connection refused"),
        "{msg}"
    );

    // An app that answers but says no.
    let (port, _) = serve(vec![ok(r#"{"paused":false,"acknowledged":false}"#)]);
    let err = quiesce(
        &QuiesceMethod::Url(format!("http://127.0.0.1:{port}/admin/quiesce")),
        &Service::None,
        Duration::from_secs(2),
    )
    .expect_err("refused");
    assert!(matches!(err, QuiesceError::NotAcknowledged { .. }), "{err}");
}

#[test]
fn quiesce_and_resume_by_signal_wait_for_the_ack_file() {
    let bot = Bot::start();
    let ack_file = bot.persistence.join("paused");
    let cfg = ServiceConfig {
        quiesce_signal: Some("SIGUSR1".into()),
        resume_signal: Some("SIGUSR2".into()),
        quiesce_ack_file: Some(ack_file.clone()),
        ..ServiceConfig::default()
    };
    let method = QuiesceMethod::from_config(&cfg).expect("method");
    let ack = quiesce(&method, &bot.service(), Duration::from_secs(10)).expect("quiesced");
    assert_eq!(ack.method, "signal");
    assert_eq!(ack.target, format!("SIGUSR1 to pid {}", bot.child.id()));
    // Acknowledged means the file is there, holding the bot's pid.
    assert_eq!(
        fs::read_to_string(&ack_file).expect("ack file").trim(),
        bot.child.id().to_string()
    );
    assert_eq!(bot.health()["paused"], true);

    let resume_method = ResumeMethod::from_config(&cfg).expect("method");
    resume(&resume_method, &bot.service(), Duration::from_secs(10)).expect("resumed");
    assert!(!ack_file.exists());
    assert_eq!(bot.health()["paused"], false);

    // No main pid to signal: a clear error, nothing sent.
    let err = quiesce(&method, &Service::None, Duration::from_secs(1)).expect_err("no pid");
    assert!(matches!(err, QuiesceError::NoMainPid { .. }), "{err}");
    assert!(err.to_string().contains("SIGUSR1"), "{err}");
}

#[test]
fn quiesce_by_command_and_save_requests() {
    let dir = tempdir();
    let ack = quiesce(
        &QuiesceMethod::Command(argv(&["sh", "-c", "echo paused"])),
        &Service::None,
        Duration::from_secs(5),
    )
    .expect("command");
    assert_eq!(
        (ack.method.as_str(), ack.detail.as_str()),
        ("command", "paused")
    );

    // A save command runs in the directory it is given.
    let cfg = ServiceConfig {
        save: argv(&["sh", "-c", "touch saved"]),
        ..ServiceConfig::default()
    };
    request_save(&cfg, dir.path(), Duration::from_secs(5)).expect("save");
    assert!(dir.path().join("saved").exists());
    request_save(
        &ServiceConfig::default(),
        dir.path(),
        Duration::from_secs(5),
    )
    .expect("nothing configured");

    let cfg = ServiceConfig {
        save_url: Some(format!("http://127.0.0.1:{}/admin/save", free_port())),
        ..ServiceConfig::default()
    };
    let err = request_save(&cfg, dir.path(), Duration::from_secs(2)).expect_err("unreachable");
    assert!(matches!(err, SnapshotError::SaveUrl { .. }), "{err}");
}

#[test]
fn save_url_asks_the_real_bot_to_persist() {
    let bot = Bot::start();
    let state = bot.persistence.join("state.json");
    let before = fs::metadata(&state).ok().and_then(|m| m.modified().ok());
    std::thread::sleep(Duration::from_millis(20));
    let cfg = ServiceConfig {
        save_url: Some(bot.url("/admin/save")),
        ..ServiceConfig::default()
    };
    request_save(&cfg, Path::new("/"), Duration::from_secs(10)).expect("saved");
    let after = fs::metadata(&state)
        .expect("state.json")
        .modified()
        .expect("mtime");
    assert!(before.is_none_or(|b| after > b));
}

// ------------------------------------------------------------- snapshot

/// A persistence tree with files of several modes, a nested directory, an
/// empty directory, symlinks (one dangling) and slipway's meta/.
fn make_persistence(root: &Path) -> PathBuf {
    let p = root.join("persistence");
    fs::create_dir_all(p.join("models/v1")).expect("mkdir");
    fs::create_dir_all(p.join("empty")).expect("mkdir");
    fs::create_dir_all(p.join("meta")).expect("mkdir");
    fs::write(p.join("state.json"), br#"{"trades": 41}"#).expect("write");
    fs::write(p.join("schema_version"), b"1\n").expect("write");
    let big: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(p.join("models/v1/weights.bin"), &big).expect("write");
    fs::write(p.join("models/run.sh"), b"#!/bin/sh\n").expect("write");
    fs::set_permissions(p.join("models/run.sh"), fs::Permissions::from_mode(0o750)).expect("chmod");
    fs::write(p.join("secret"), b"key").expect("write");
    fs::set_permissions(p.join("secret"), fs::Permissions::from_mode(0o600)).expect("chmod");
    std::os::unix::fs::symlink("models/v1", p.join("latest")).expect("symlink");
    std::os::unix::fs::symlink("/nonexistent/target", p.join("dangling")).expect("symlink");
    fs::write(p.join("meta/version.json"), br#"{"version":"1.0.0"}"#).expect("write");
    p
}

/// Everything under `dir` except the top-level meta/: (path, kind, mode,
/// content or link target), sorted.
fn listing(dir: &Path) -> Vec<(String, char, u32, Vec<u8>)> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(dir).min_depth(1).sort_by_file_name() {
        let e = e.expect("walk");
        let rel = e
            .path()
            .strip_prefix(dir)
            .expect("rel")
            .to_string_lossy()
            .into_owned();
        if rel == "meta" || rel.starts_with("meta/") {
            continue;
        }
        let m = fs::symlink_metadata(e.path()).expect("lstat");
        let (kind, content) = if m.file_type().is_symlink() {
            (
                'l',
                fs::read_link(e.path())
                    .expect("readlink")
                    .into_os_string()
                    .into_encoded_bytes(),
            )
        } else if m.is_dir() {
            ('d', Vec::new())
        } else {
            ('f', fs::read(e.path()).expect("read"))
        };
        out.push((rel, kind, m.mode() & 0o7777, content));
    }
    out
}

#[test]
fn snapshot_round_trip_restores_data_but_never_rewinds_meta() {
    let dir = tempdir();
    let p = make_persistence(dir.path());
    fs::set_permissions(&p, fs::Permissions::from_mode(0o750)).expect("chmod");
    // As root, owners are kept too (the bot runs as its own user).
    let as_root = rustix::process::geteuid().is_root();
    if as_root {
        std::os::unix::fs::chown(&p, Some(4321), Some(4321)).expect("chown");
        std::os::unix::fs::chown(p.join("state.json"), Some(1234), Some(1235)).expect("chown");
        std::os::unix::fs::lchown(p.join("latest"), Some(1234), Some(1235)).expect("lchown");
    }
    let backups = dir.path().join("backups");
    let original = listing(&p);
    let digest0 = tree_digest(&p).expect("digest");

    let snap = take_snapshot(&p, &backups, "20250101T000000Z").expect("snapshot");
    assert_eq!(snap.dir, backups.join("20250101T000000Z"));
    assert_eq!(snap.digest, digest0);
    assert_eq!(snap.files, 5);
    assert_eq!(snap.bytes, 14 + 2 + 600_000 + 10 + 3);
    assert!(snap.dir.join("snapshot.json").is_file());
    assert!(
        !snap.dir.join("data/meta").exists(),
        "meta/ is not snapshotted"
    );
    assert!(!backups.join("20250101T000000Z.partial").exists());
    assert_eq!(listing(&snap.dir.join("data")), original);
    assert_eq!(
        tree_digest(&snap.dir.join("data")).expect("digest"),
        digest0
    );
    assert!(matches!(
        take_snapshot(&p, &backups, "20250101T000000Z"),
        Err(SnapshotError::Exists { .. })
    ));

    // The update changes data (and slipway writes meta/ afterwards).
    fs::write(p.join("state.json"), br#"{"trades": 42, "schema": 2}"#).expect("write");
    fs::remove_file(p.join("secret")).expect("rm");
    fs::write(p.join("new-file"), b"from 2.0.0").expect("write");
    fs::set_permissions(p.join("models/run.sh"), fs::Permissions::from_mode(0o700)).expect("chmod");
    fs::remove_file(p.join("latest")).expect("rm");
    std::os::unix::fs::symlink("elsewhere", p.join("latest")).expect("symlink");
    fs::write(p.join("meta/x"), b"written after the snapshot").expect("write");
    assert_ne!(tree_digest(&p).expect("digest"), digest0, "data changed");

    restore_snapshot(&snap, &p).expect("restore");
    assert_eq!(
        listing(&p),
        original,
        "byte-identical data, modes, symlinks"
    );
    assert_eq!(tree_digest(&p).expect("digest"), snap.digest);
    assert!(fs::symlink_metadata(p.join("dangling"))
        .expect("lstat")
        .file_type()
        .is_symlink());
    assert_eq!(
        fs::read(p.join("meta/x")).expect("meta kept"),
        b"written after the snapshot"
    );
    assert_eq!(
        fs::read(p.join("meta/version.json")).expect("meta kept"),
        br#"{"version":"1.0.0"}"#
    );
    assert_eq!(
        fs::metadata(&p).expect("stat").mode() & 0o7777,
        0o750,
        "top mode kept"
    );
    let siblings: Vec<_> = fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !siblings.iter().any(|n| n.contains(".slipway-")),
        "no leftovers: {siblings:?}"
    );
}

/// The state of the file system after a crash at a given point of
/// `restore_snapshot`, built by hand; a re-run must finish the job.
#[test]
fn restore_is_idempotent_after_a_crash_at_every_point() {
    let dir = tempdir();
    let p = make_persistence(dir.path());
    let backups = dir.path().join("backups");
    let snap = take_snapshot(&p, &backups, "s").expect("snapshot");
    let original = listing(&p);
    let restore = dir.path().join("persistence.slipway-restore");
    let old = dir.path().join("persistence.slipway-old");
    let cp = |from: &Path, to: &Path| {
        let ok = Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(to)
            .status()
            .expect("cp")
            .success();
        assert!(ok);
    };
    let change_data = || {
        fs::write(p.join("state.json"), b"changed").expect("write");
        fs::write(p.join("meta/x"), b"meta after snapshot").expect("write");
    };
    let check = |label: &str| {
        restore_snapshot(&snap, &p).unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(listing(&p), original, "{label}");
        assert_eq!(
            fs::read(p.join("meta/x")).unwrap_or_default(),
            b"meta after snapshot",
            "{label}: meta kept"
        );
        assert!(!restore.exists() && !old.exists(), "{label}: leftovers");
    };

    // 1. During the copy: a partial restore copy lies around.
    change_data();
    fs::create_dir_all(restore.join("junk")).expect("mkdir");
    fs::write(restore.join("state.json"), b"half").expect("write");
    check("crash during the copy");

    // 2. After P -> O: no persistence at all, a complete restore copy.
    change_data();
    cp(&snap.dir.join("data"), &restore);
    fs::rename(&p, &old).expect("mv");
    check("crash after moving the live tree aside");

    // 2b. Same, but the restore copy is partial (the rename happened; the
    // copy is redone from the snapshot anyway).
    change_data();
    fs::create_dir(&restore).expect("mkdir");
    fs::rename(&p, &old).expect("mv");
    check("crash after moving aside, partial copy");

    // 3. After R -> P: P is the restored data without meta/, O holds meta/.
    change_data();
    fs::rename(&p, &old).expect("mv");
    cp(&snap.dir.join("data"), &p);
    check("crash after the switch");

    // 4. After meta/ was carried over: only the old tree is left to remove.
    change_data();
    fs::rename(&p, &old).expect("mv");
    cp(&snap.dir.join("data"), &p);
    fs::rename(old.join("meta"), p.join("meta")).expect("mv meta");
    check("crash after carrying meta/");

    // 5. During the removal of the old tree.
    change_data();
    fs::rename(&p, &old).expect("mv");
    cp(&snap.dir.join("data"), &p);
    fs::rename(old.join("meta"), p.join("meta")).expect("mv meta");
    fs::remove_dir_all(old.join("models")).expect("partial rm");
    check("crash while removing the old tree");

    // A stale .slipway-old beside a live, changed tree does not fool it.
    change_data();
    fs::create_dir_all(old.join("stale")).expect("mkdir");
    check("stale old tree");

    // And a completed restore run again changes nothing.
    check("second run");
}

#[test]
fn a_missing_persistence_snapshots_as_an_empty_tree() {
    let dir = tempdir();
    let p = dir.path().join("persistence");
    let snap = take_snapshot(&p, &dir.path().join("backups"), "s").expect("snapshot");
    assert_eq!((snap.files, snap.bytes), (0, 0));
    let record = fs::read_to_string(snap.dir.join("snapshot.json")).expect("record");
    assert!(record.contains("\"source_missing\": true"), "{record}");
    assert_eq!(snap.digest, tree_digest(&p).expect("digest of nothing"));

    // The new release created data; the restore empties it, keeping meta/.
    fs::create_dir_all(p.join("meta")).expect("mkdir");
    fs::write(p.join("state.json"), b"{}").expect("write");
    fs::write(p.join("meta/update_state.json"), b"{}").expect("write");
    restore_snapshot(&snap, &p).expect("restore");
    assert!(!p.join("state.json").exists());
    assert!(p.join("meta/update_state.json").exists());
}

#[test]
fn snapshots_are_listed_newest_first_without_partials() {
    let dir = tempdir();
    let p = make_persistence(dir.path());
    let backups = dir.path().join("backups");
    let a = take_snapshot(&p, &backups, "20250101T000000Z").expect("a");
    let b = take_snapshot(&p, &backups, "20250101T000001Z").expect("b");
    fs::create_dir_all(backups.join("20250101T000002Z.partial/data")).expect("partial");
    fs::create_dir_all(backups.join("garbage")).expect("garbage");
    let listed: Vec<Snapshot> = list_snapshots(&backups);
    assert_eq!(listed, vec![b, a]);
    assert!(list_snapshots(&dir.path().join("none")).is_empty());

    // A leftover .partial of the same stamp is replaced by a new attempt.
    fs::write(backups.join("20250101T000002Z.partial/data/junk"), b"x").expect("write");
    let c = take_snapshot(&p, &backups, "20250101T000002Z").expect("c");
    assert!(!c.dir.join("data/junk").exists());
    assert!(!backups.join("20250101T000002Z.partial").exists());
}

#[test]
fn newest_save_age_ignores_meta() {
    let dir = tempdir();
    let p = make_persistence(dir.path());
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    for e in walkdir::WalkDir::new(&p).min_depth(1) {
        let e = e.expect("walk");
        if e.file_type().is_file() {
            fs::File::options()
                .write(true)
                .open(e.path())
                .expect("open")
                .set_modified(hour_ago)
                .expect("set mtime");
        }
    }
    // slipway's own fresh output does not make the data fresh.
    fs::write(p.join("meta/update_state.json"), b"{}").expect("write");
    let age = newest_save_age(&p).expect("age").expect("some file");
    assert!(
        age >= Duration::from_secs(3590) && age < Duration::from_secs(3700),
        "{age:?}"
    );
    fs::write(p.join("models/state.json"), b"{}").expect("write");
    assert!(newest_save_age(&p).expect("age").expect("file") < Duration::from_secs(60));
    assert_eq!(
        newest_save_age(&dir.path().join("missing")).expect("none"),
        None
    );
}

//! Host state, reporting, eligibility and garbage collection (SPEC §4 steps
//! 2, 13-15), each against real files in a temp dir.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use slipway::config::Config;
use slipway::eligibility::{check_eligibility, EligibilityInput, Ineligible};
use slipway::failure_model::Cause;
use slipway::gc;
use slipway::layout::Layout;
use slipway::report::{self, Current, ReportError};
use slipway::state::{
    today, Attempt, Clock, FixedClock, HostState, Pending, StateError, SystemClock,
    DISABLED_BY_FAILURES,
};
use slipway_formats::channel::Timestamp;
use slipway_formats::manifest::MANIFEST_FORMAT;
use slipway_formats::state::{AttemptResult, UpdateStateFile, VersionFile};
use slipway_formats::{FileEntry, Hooks, Manifest, ReleaseId, Version};

fn ts(s: &str) -> Timestamp {
    Timestamp::parse(s).expect("test timestamp")
}

fn v(s: &str) -> Version {
    s.parse().expect("test version")
}

/// A host with its root and persistence in a temp dir, journald off.
struct Host {
    _tmp: tempfile::TempDir,
    layout: Layout,
    config: Config,
}

fn host() -> Host {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    fs::create_dir_all(&root).expect("mkdir root");
    let mut config = Config::default();
    config.paths.root = root.clone();
    config.paths.persistence = tmp.path().join("persist/default");
    config.paths.min_free_mib = 0;
    config.report.journald = false;
    config.file = tmp.path().join("update.toml");
    Host {
        layout: Layout::new(root),
        config,
        _tmp: tmp,
    }
}

fn attempt(result: AttemptResult, at: &str) -> Attempt {
    Attempt {
        op: "update".into(),
        at: ts(at),
        result,
        from_version: Some(v("1.0.0")),
        version: Some(v("1.1.0")),
        release_id: Some(ReleaseId::of_bytes(b"release 1.1.0")),
        message: format!("{result} for the test"),
        duration_ms: 1500,
        cause: Some(Cause::of_legacy_result(result)),
        auto: true,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A staged-looking release directory with `app/main.py` and a manifest.
fn fake_release(dir: &Path, version: &str) -> Manifest {
    let main = b"print('hello')\n";
    fs::create_dir_all(dir.join("app")).expect("mkdir app");
    fs::create_dir_all(dir.join("slipway")).expect("mkdir slipway");
    fs::write(dir.join("app/main.py"), main).expect("write main.py");
    fs::set_permissions(dir.join("app/main.py"), fs::Permissions::from_mode(0o644)).expect("chmod");
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        app: "bot".into(),
        version: v(version),
        channel: "stable".into(),
        created: 0,
        source: None,
        schema_version: 1,
        schema_min_compatible: 1,
        hooks: Hooks::default(),
        runtime_paths: Vec::new(),
        probation: false,
        files: vec![
            FileEntry::dir("app"),
            FileEntry::file("app/main.py", false, main.len() as u64, sha256_hex(main)),
        ],
    };
    manifest.validate().expect("valid test manifest");
    fs::write(
        dir.join(slipway_formats::MANIFEST_PATH),
        manifest.to_bytes(),
    )
    .expect("manifest");
    manifest
}

fn input<'a>(
    h: &'a Host,
    state: &'a HostState,
    auto: bool,
    now: Timestamp,
) -> EligibilityInput<'a> {
    EligibilityInput {
        config: &h.config,
        layout: &h.layout,
        state,
        running: None,
        needed_bytes: 0,
        auto,
        now,
        clean: Default::default(),
    }
}

fn refused(input: &EligibilityInput) -> Ineligible {
    check_eligibility(input).expect_err("should be ineligible")
}

// ---- state ---------------------------------------------------------------

#[test]
fn day_rollover_resets_counters_but_keeps_the_bad_list() {
    let h = host();
    let mut s = HostState::default();
    s.record(attempt(AttemptResult::Failed, "2026-03-01T10:00:00Z"), 5);
    s.record(attempt(AttemptResult::Updated, "2026-03-01T11:00:00Z"), 5);
    s.record(attempt(AttemptResult::Skipped, "2026-03-01T12:00:00Z"), 5);
    s.record(attempt(AttemptResult::UpToDate, "2026-03-01T13:00:00Z"), 5);
    assert_eq!(
        (s.day.as_str(), s.attempts_today, s.failures_today),
        ("2026-03-01", 2, 1)
    );
    let id = ReleaseId::of_bytes(b"bad");
    s.mark_bad(
        id,
        v("1.2.0"),
        "health check failed",
        ts("2026-03-01T10:00:00Z"),
    );
    s.mark_bad(id, v("1.2.0"), "again", ts("2026-03-01T11:00:00Z"));
    assert_eq!(s.bad_releases.len(), 1);

    s.roll_day("2026-03-01");
    assert_eq!((s.attempts_today, s.failures_today), (2, 1));
    s.roll_day(&today(ts("2026-03-02T00:00:01+00:00")));
    assert_eq!(
        (s.day.as_str(), s.attempts_today, s.failures_today),
        ("2026-03-02", 0, 0)
    );
    assert_eq!(
        s.bad(&id).map(|b| b.reason.as_str()),
        Some("health check failed")
    );

    // A recorded attempt rolls the counters to its own day.
    s.record(
        attempt(AttemptResult::RolledBack, "2026-03-03T09:00:00Z"),
        5,
    );
    assert_eq!(
        (s.day.as_str(), s.attempts_today, s.failures_today),
        ("2026-03-03", 1, 1)
    );

    // Saved under <root>/state, loaded back identical, and rolled by load_at.
    s.save(&h.layout).expect("save");
    assert!(h.layout.root().join("state/host.json").is_file());
    assert_eq!(HostState::load(&h.layout).expect("load"), s);
    let rolled = HostState::load_at(&h.layout, ts("2026-03-04T08:00:00Z")).expect("load_at");
    assert_eq!((rolled.attempts_today, rolled.failures_today), (0, 0));
}

#[test]
fn missing_host_state_is_fresh_and_corrupt_names_the_file_and_fix() {
    let h = host();
    assert_eq!(
        HostState::load(&h.layout).expect("missing"),
        HostState::default()
    );
    fs::create_dir_all(h.layout.state_dir()).expect("mkdir");
    fs::write(
        h.layout.host_state_file(),
        b"{\"attempts_today\": \"many\"}",
    )
    .expect("write");
    let err = HostState::load(&h.layout).expect_err("corrupt");
    assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("host.json") && msg.contains("move it away"),
        "{msg}"
    );
    fs::write(h.layout.host_state_file(), b"{\"surprise\": 1}").expect("write");
    assert!(
        HostState::load(&h.layout).is_err(),
        "unknown fields are refused"
    );
}

#[test]
fn two_failures_disable_auto_update_until_enable() {
    let h = host();
    let now = ts("2026-03-01T12:00:00Z");
    let mut s = HostState::default();
    s.record(attempt(AttemptResult::Failed, "2026-03-01T10:00:00Z"), 2);
    assert!(s.disabled.is_none(), "one failure of two allowed");
    s.record(
        attempt(AttemptResult::RolledBack, "2026-03-01T11:00:00Z"),
        2,
    );
    let d = s
        .disabled
        .clone()
        .expect("disabled after the second failure");
    assert_eq!(d.by, DISABLED_BY_FAILURES);
    // The reason says what happened; what to do is said where it is shown.
    assert_eq!(
        d.reason,
        "2 failed updates today (max_failures_per_day = 2)"
    );
    assert_eq!(
        s.last_attempt.as_ref().map(|a| a.result),
        Some(AttemptResult::RolledBack)
    );
    assert!(s.last_success.is_none());

    let err = refused(&input(&h, &s, true, now));
    assert_eq!(err.rule, "auto_update_disabled");
    assert!(err.reason.contains("slipway enable"), "{err}");

    let changed = s.enable(2);
    assert_eq!(changed.failures_reset, Some(2));
    assert_eq!(
        changed.was.map(|d| d.by),
        Some(DISABLED_BY_FAILURES.to_string())
    );
    assert!(s.disabled.is_none());
    assert_eq!(s.failures_today, 0);
    check_eligibility(&input(&h, &s, true, now)).expect("eligible again after enable");

    s.disable("maintenance window", now);
    assert_eq!(s.disabled.as_ref().map(|d| d.by.as_str()), Some("operator"));
}

#[test]
fn clocks_give_utc_seconds() {
    let fixed = FixedClock(ts("2026-03-01T23:59:59-01:00"));
    assert_eq!(today(fixed.now()), "2026-03-02");
    let now = SystemClock.now();
    assert_eq!(now.0.nanosecond(), 0);
}

// ---- report ---------------------------------------------------------------

#[test]
fn history_lines_append_and_a_torn_last_line_is_skipped() {
    let h = host();
    assert!(report::read_history(&h.layout, None)
        .expect("empty")
        .is_empty());
    let a1 = attempt(AttemptResult::Updated, "2026-03-01T10:00:00Z");
    let a2 = attempt(AttemptResult::Skipped, "2026-03-01T11:00:00Z");
    let a3 = attempt(AttemptResult::RolledBack, "2026-03-01T12:00:00Z");
    for a in [&a1, &a2, &a3] {
        report::append_history(&h.layout, a).expect("append");
    }
    let text = fs::read_to_string(h.layout.history_file()).expect("read");
    assert_eq!(text.lines().count(), 3);
    assert_eq!(
        report::read_history(&h.layout, None).expect("read"),
        vec![a1.clone(), a2.clone(), a3.clone()]
    );
    assert_eq!(
        report::read_history(&h.layout, Some(2)).expect("read"),
        vec![a2.clone(), a3.clone()]
    );

    // A crash mid-append leaves a torn last line: readers skip it.
    let mut torn = text.clone().into_bytes();
    torn.extend_from_slice(b"{\"op\":\"update\",\"at\":\"2026-03-01T13:");
    fs::write(h.layout.history_file(), &torn).expect("tear");
    assert_eq!(
        report::read_history(&h.layout, None).expect("torn").len(),
        3
    );

    // The next append starts on a fresh line, so the new entry is whole.
    let a4 = attempt(AttemptResult::Ready, "2026-03-01T14:00:00Z");
    report::append_history(&h.layout, &a4).expect("append after tear");
    let all = report::read_history(&h.layout, None).expect("read");
    assert_eq!(all.len(), 4);
    assert_eq!(all.last(), Some(&a4));

    // Anything else unreadable is an error naming the file and line.
    let mut bad = b"not json at all\n".to_vec();
    bad.extend_from_slice(text.as_bytes());
    fs::write(h.layout.history_file(), bad).expect("corrupt");
    match report::read_history(&h.layout, None) {
        Err(e @ ReportError::CorruptHistory { line: 1, .. }) => {
            assert!(e.to_string().contains("history.jsonl"), "{e}")
        }
        other => panic!("expected a corrupt-history error, got {other:?}"),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    serde_json::from_slice(&fs::read(path).expect("read json")).expect("parse json")
}

#[test]
fn report_writes_version_update_state_and_banner_into_a_new_meta_dir() {
    let mut h = host();
    let extra_banner = h.layout.root().join("dashboard-banner.txt");
    h.config.report.banner_file = Some(extra_banner.clone());
    let rel = h.layout.root().join("releases/1.1.0-x");
    let manifest = fake_release(&rel, "1.1.0");
    let id = ReleaseId::of_bytes(b"release 1.1.0");
    let mut state = HostState::default();
    let a = attempt(AttemptResult::Updated, "2026-03-01T10:00:00Z");
    state.record(a.clone(), 2);
    state.pending = Some(Pending {
        release_id: ReleaseId::of_bytes(b"release 1.2.0"),
        version: v("1.2.0"),
        dir: h.layout.root().join("releases/1.2.0-y"),
        staged_at: ts("2026-03-01T10:30:00Z"),
    });
    let current = Current {
        release: (&manifest).into(),
        id,
        dir: &rel,
        installed_at: a.at,
        previous_version: Some(v("1.0.0")),
    };
    assert!(!h.config.paths.persistence.exists());
    report::report_attempt(&h.layout, &h.config, &state, &a, Some(current), None).expect("report");

    let meta = h.config.paths.persistence.join("meta");
    let version: VersionFile = parse_json(&meta.join("version.json"));
    assert_eq!(
        version,
        VersionFile {
            app: "bot".into(),
            version: v("1.1.0"),
            release_id: id,
            channel: "stable".into(),
            schema_version: 1,
            installed_at: a.at,
            previous_version: Some(v("1.0.0")),
        }
    );
    let us: UpdateStateFile = parse_json(&meta.join("update_state.json"));
    assert_eq!(us.last_result, AttemptResult::Updated);
    assert_eq!(us.last_run, a.at);
    assert_eq!(us.last_version, Some(v("1.1.0")));
    assert_eq!(us.current_version, Some(v("1.1.0")));
    assert_eq!(us.last_success, Some(a.at));
    assert_eq!((us.attempts_today, us.failures_today), (1, 0));
    assert!(us.auto_update_enabled && us.disabled_reason.is_none());
    assert_eq!(us.update_ready, Some(v("1.2.0")));
    assert!(us.bad_releases.is_empty());

    let banner = fs::read_to_string(h.layout.banner_file()).expect("banner");
    assert!(
        banner.starts_with("OK running 1.1.0: updated from 1.0.0 at 2026-03-01T10:00:00Z"),
        "{banner}"
    );
    assert!(banner.contains("1.2.0 ready: `slipway apply`"), "{banner}");
    assert_eq!(banner.lines().count(), 1);
    assert_eq!(
        fs::read_to_string(&extra_banner).expect("extra banner"),
        banner
    );
    assert_eq!(
        report::read_history(&h.layout, None).expect("history"),
        vec![a.clone()]
    );

    // A rollback that disables auto-update: the files and banner say so.
    let b = Attempt {
        version: Some(v("1.2.0")),
        from_version: Some(v("1.1.0")),
        message: "health check failed:\nHTTP 503 three times".into(),
        ..attempt(AttemptResult::RolledBack, "2026-03-01T11:00:00Z")
    };
    state.pending = None;
    state.record(attempt(AttemptResult::Failed, "2026-03-01T10:45:00Z"), 2);
    state.record(b.clone(), 2);
    state.mark_bad(
        ReleaseId::of_bytes(b"release 1.2.0"),
        v("1.2.0"),
        "unhealthy",
        b.at,
    );
    let current = Current {
        release: (&manifest).into(),
        id,
        dir: &rel,
        installed_at: a.at,
        previous_version: Some(v("1.0.0")),
    };
    report::report_attempt(&h.layout, &h.config, &state, &b, Some(current), None).expect("report");
    let us: UpdateStateFile = parse_json(&meta.join("update_state.json"));
    assert_eq!(us.last_result, AttemptResult::RolledBack);
    assert_eq!(us.failures_today, 2);
    assert!(!us.auto_update_enabled);
    assert!(us
        .disabled_reason
        .as_deref()
        .is_some_and(|r| r.contains("slipway enable")));
    assert_eq!(us.bad_releases, vec![ReleaseId::of_bytes(b"release 1.2.0")]);
    let banner = fs::read_to_string(h.layout.banner_file()).expect("banner");
    assert_eq!(
        banner.trim_end(),
        "ROLLED BACK 1.2.0 → running 1.1.0: unhealthy; auto-update DISABLED (see slipway status)"
    );
    assert_eq!(banner.lines().count(), 1);
}

/// One sample line of the Prometheus text format: `name{labels} value`.
fn parse_sample(line: &str) -> (String, Vec<(String, String)>, f64) {
    let (series, value) = line.rsplit_once(' ').expect("name and value");
    let value: f64 = value.parse().expect("numeric value");
    let (name, labels) = match series.split_once('{') {
        None => (series.to_string(), Vec::new()),
        Some((name, rest)) => {
            let body = rest.strip_suffix('}').expect("closing brace");
            let labels = body
                .split(',')
                .map(|pair| {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .expect("quoted label value");
                    (k.to_string(), v.to_string())
                })
                .collect();
            (name.to_string(), labels)
        }
    };
    let valid_name = |s: &str| {
        !s.is_empty()
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    assert!(valid_name(&name), "metric name {name:?}");
    for (k, _) in &labels {
        assert!(valid_name(k) && !k.contains(':'), "label name {k:?}");
    }
    (name, labels, value)
}

#[test]
fn metrics_file_parses_as_prometheus_text_with_one_hot_result() {
    let mut h = host();
    let extra = h.layout.root().join("textfile/slipway.prom");
    fs::create_dir_all(extra.parent().expect("parent")).expect("mkdir");
    h.config.report.metrics_file = Some(extra.clone());
    let rel = h.layout.root().join("releases/1.1.0-x");
    let manifest = fake_release(&rel, "1.1.0");
    let mut state = HostState::default();
    let a = attempt(AttemptResult::RolledBack, "2026-03-01T10:00:00Z");
    state.record(a.clone(), 1);
    let current = Current {
        release: (&manifest).into(),
        id: ReleaseId::of_bytes(b"release 1.1.0"),
        dir: &rel,
        installed_at: a.at,
        previous_version: None,
    };
    report::report_attempt(&h.layout, &h.config, &state, &a, Some(current), None).expect("report");

    let text = fs::read_to_string(h.layout.metrics_file()).expect("metrics");
    assert_eq!(fs::read_to_string(&extra).expect("extra metrics"), text);
    let mut typed = std::collections::HashSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert_eq!(kind, "gauge");
            typed.insert(name.to_string());
        } else if line.starts_with("# HELP ") {
            continue;
        } else {
            assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
            let sample = parse_sample(line);
            assert!(
                typed.contains(&sample.0),
                "{} has no # TYPE before it",
                sample.0
            );
            samples.push(sample);
        }
    }
    let value = |name: &str| {
        samples
            .iter()
            .find(|s| s.0 == name)
            .map(|s| s.2)
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    let results: Vec<_> = samples
        .iter()
        .filter(|s| s.0 == "slipway_last_attempt_result")
        .collect();
    assert_eq!(results.len(), AttemptResult::ALL.len());
    let hot: Vec<_> = results.iter().filter(|s| s.2 == 1.0).collect();
    assert_eq!(hot.len(), 1, "exactly one result is 1");
    assert_eq!(
        hot[0].1,
        vec![("result".to_string(), "rolled_back".to_string())]
    );
    assert!(results.iter().all(|s| s.2 == 0.0 || s.2 == 1.0));
    assert_eq!(
        value("slipway_last_attempt_timestamp_seconds"),
        a.at.unix() as f64
    );
    assert_eq!(value("slipway_last_attempt_duration_seconds"), 1.5);
    assert_eq!(value("slipway_failures_today"), 1.0);
    assert_eq!(value("slipway_attempts_today"), 1.0);
    assert_eq!(value("slipway_auto_update_disabled"), 1.0);
    assert_eq!(value("slipway_update_ready"), 0.0);
    let info = samples
        .iter()
        .find(|s| s.0 == "slipway_current_version_info")
        .expect("version info");
    assert!(info
        .1
        .contains(&("version".to_string(), "1.1.0".to_string())));
    assert!(info
        .1
        .iter()
        .any(|(k, v)| k == "release_id" && v.starts_with("sha256:")));
}

/// Parses journald's native protocol into (field, value) pairs.
fn parse_journald(mut buf: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let nl = buf.iter().position(|&b| b == b'\n').expect("newline");
        let line = &buf[..nl];
        buf = &buf[nl + 1..];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            out.push((
                String::from_utf8(line[..eq].to_vec()).expect("name"),
                line[eq + 1..].to_vec(),
            ));
        } else {
            let len = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes")) as usize;
            out.push((
                String::from_utf8(line.to_vec()).expect("name"),
                buf[8..8 + len].to_vec(),
            ));
            assert_eq!(buf[8 + len], b'\n', "binary field ends with a newline");
            buf = &buf[8 + len + 1..];
        }
    }
    out
}

#[test]
fn journald_rollback_entry_is_critical_with_its_message_id_and_binary_safe() {
    let mut h = host();
    h.config.report.journald = true;
    let sock_path = h.layout.root().join("journal.sock");
    let journal = UnixDatagram::bind(&sock_path).expect("bind test journal");
    journal
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let rel = h.layout.root().join("releases/1.1.0-x");
    let manifest = fake_release(&rel, "1.1.0");
    let mut state = HostState::default();
    let a = Attempt {
        message: "health check failed:\nHTTP 503 three times".into(),
        version: Some(v("1.2.0")),
        from_version: Some(v("1.1.0")),
        ..attempt(AttemptResult::RolledBack, "2026-03-01T10:00:00Z")
    };
    state.record(a.clone(), 2);
    let current = Current {
        release: (&manifest).into(),
        id: ReleaseId::of_bytes(b"release 1.1.0"),
        dir: &rel,
        installed_at: a.at,
        previous_version: None,
    };
    report::report_attempt_to(
        &h.layout,
        &h.config,
        &state,
        &a,
        Some(current),
        None,
        &sock_path,
    )
    .expect("report");

    let mut buf = vec![0u8; 65536];
    let n = journal.recv(&mut buf).expect("a datagram");
    let raw = &buf[..n];
    assert!(
        raw.windows(8).any(|w| w == b"MESSAGE\n"),
        "multi-line MESSAGE uses the binary-safe form"
    );
    let fields = parse_journald(raw);
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_else(|| panic!("no field {name}"))
    };
    assert_eq!(get("PRIORITY"), "2");
    assert_eq!(get("MESSAGE_ID"), report::MESSAGE_ID_ROLLED_BACK);
    assert_eq!(get("SYSLOG_IDENTIFIER"), "slipway");
    assert_eq!(get("SLIPWAY_RESULT"), "rolled_back");
    assert_eq!(get("SLIPWAY_VERSION"), "1.2.0");
    assert_eq!(get("SLIPWAY_FROM_VERSION"), "1.1.0");
    assert_eq!(get("SLIPWAY_APP"), "bot");
    assert_eq!(get("SLIPWAY_OP"), "update");
    assert_eq!(get("SLIPWAY_DURATION_MS"), "1500");
    assert!(get("SLIPWAY_RELEASE_ID").starts_with("sha256:"));
    assert!(get("MESSAGE").contains("health check failed:\nHTTP 503 three times"));

    // No journal listening is not an error, and journald = false sends nothing.
    let absent = h.layout.root().join("no-such.sock");
    report::report_attempt_to(&h.layout, &h.config, &state, &a, None, None, &absent)
        .expect("absent socket is skipped");
    h.config.report.journald = false;
    report::report_attempt_to(&h.layout, &h.config, &state, &a, None, None, &sock_path)
        .expect("report");
    journal.set_nonblocking(true).expect("nonblocking");
    assert!(
        journal.recv(&mut buf).is_err(),
        "nothing sent when journald is off"
    );
}

// ---- eligibility ------------------------------------------------------------

#[test]
fn auto_only_rules_fire_in_order_and_not_for_manual_runs() {
    let mut h = host();
    let now = ts("2026-03-01T12:00:00Z");
    let mut state = HostState {
        day: "2026-03-01".into(),
        ..HostState::default()
    };

    h.config.update.enabled = false;
    let err = refused(&input(&h, &state, true, now));
    assert_eq!(err.rule, "auto_update_disabled");
    assert!(err.reason.contains("[update] enabled = false in"), "{err}");
    assert!(err.reason.contains("`slipway enable` cannot"), "{err}");
    check_eligibility(&input(&h, &state, false, now)).expect("manual run ignores enabled");
    h.config.update.enabled = true;

    state.disable("maintenance window", now);
    let err = refused(&input(&h, &state, true, now));
    assert_eq!(err.rule, "auto_update_disabled");
    assert!(err.reason.contains("maintenance window"), "{err}");
    state.disabled = None;

    state.attempts_today = 3;
    let err = refused(&input(&h, &state, true, now));
    assert_eq!(err.rule, "max_attempts");
    assert!(err.reason.contains("max_attempts_per_day = 3"), "{err}");
    assert_eq!(err.to_string(), err.reason);
    check_eligibility(&input(&h, &state, false, now)).expect("manual run ignores attempts");
    // Yesterday's counters do not count today.
    check_eligibility(&input(&h, &state, true, ts("2026-03-02T00:10:00Z")))
        .expect("counters are per day");
    state.attempts_today = 0;

    state.failures_today = 2;
    let err = refused(&input(&h, &state, true, now));
    assert_eq!(err.rule, "max_failures");
    assert!(err.reason.contains("max_failures_per_day = 2"), "{err}");
    check_eligibility(&input(&h, &state, false, now)).expect("manual run ignores failures");
}

#[test]
fn a_modified_running_release_is_dirty_even_for_manual_runs() {
    let h = host();
    let now = ts("2026-03-01T12:00:00Z");
    let state = HostState::default();
    let dir = h.layout.root().join("releases/1.1.0-x");
    let manifest = fake_release(&dir, "1.1.0");
    let with_running = |auto| EligibilityInput {
        running: Some((dir.as_path(), &manifest)),
        ..input(&h, &state, auto, now)
    };
    check_eligibility(&with_running(true)).expect("a clean release is eligible");

    fs::write(dir.join("app/main.py"), b"print('patched on the host')\n").expect("edit");
    fs::write(dir.join("app/extra.py"), b"x = 1\n").expect("add");
    for auto in [true, false] {
        let err = refused(&with_running(auto));
        assert_eq!(err.rule, "dirty_release");
        assert!(
            err.reason.contains("app/main.py") && err.reason.contains("app/extra.py"),
            "{err}"
        );
        assert!(err.reason.contains(&dir.display().to_string()), "{err}");
    }
}

#[test]
fn declared_runtime_paths_keep_a_release_clean_and_the_dirty_reason_names_paths_neutrally() {
    let h = host();
    let now = ts("2026-03-01T12:00:00Z");
    let state = HostState::default();
    let dir = h.layout.root().join("releases/1.1.0-x");
    let mut manifest = fake_release(&dir, "1.1.0");
    let with_running = |manifest: &Manifest| {
        check_eligibility(&EligibilityInput {
            running: Some((dir.as_path(), manifest)),
            ..input(&h, &state, true, now)
        })
    };

    // Python wrote bytecode beside the code; the release does not declare it.
    fs::create_dir_all(dir.join("app/__pycache__")).expect("mkdir");
    fs::write(dir.join("app/__pycache__/main.cpython-312.pyc"), b"\0").expect("pyc");
    let err = with_running(&manifest).expect_err("undeclared bytecode is drift");
    assert_eq!(err.rule, "dirty_release");
    assert!(err.reason.contains("extra app/__pycache__"), "{err}");
    assert!(
        err.reason
            .contains("runtime-written files can be declared in slipway.toml (runtime_paths"),
        "{err}"
    );
    assert!(err.reason.contains("PYTHONDONTWRITEBYTECODE=1"), "{err}");
    assert!(err.reason.contains("slipway install --force"), "{err}");
    assert!(!err.reason.contains("edited"), "{err}");

    // Declared: clean.
    manifest.runtime_paths = vec!["**/__pycache__/**".into()];
    with_running(&manifest).expect("declared bytecode is not drift");

    // Anything else still is, named, the first five and a count; no
    // runtime_paths hint when nothing looks like a cache.
    for i in 0..7 {
        fs::write(dir.join(format!("app/note{i}.txt")), b"x").expect("stray");
    }
    let err = with_running(&manifest).expect_err("strays are drift");
    assert_eq!(err.rule, "dirty_release");
    assert!(
        err.reason.contains(
            "extra app/note0.txt; extra app/note1.txt; extra app/note2.txt; \
             extra app/note3.txt; extra app/note4.txt; and 2 more"
        ),
        "{err}"
    );
    assert!(!err.reason.contains("note5"), "{err}");
    assert!(!err.reason.contains("runtime_paths"), "{err}");
    assert!(!err.reason.contains("edited"), "{err}");
}

#[test]
fn a_stale_save_is_refused_and_meta_does_not_count() {
    let mut h = host();
    let now = SystemClock.now();
    let state = HostState::default();
    let persistence = h.config.paths.persistence.clone();
    check_eligibility(&input(&h, &state, true, now)).expect("no persistence yet: no rule");

    fs::create_dir_all(persistence.join("meta")).expect("mkdir meta");
    fs::create_dir_all(persistence.join("trades")).expect("mkdir data");
    let data = persistence.join("trades/book.json");
    fs::write(&data, b"{}").expect("write data");
    let two_hours_ago = SystemTime::now() - Duration::from_secs(2 * 3600);
    fs::File::options()
        .write(true)
        .open(&data)
        .expect("open")
        .set_modified(two_hours_ago)
        .expect("set mtime");
    // slipway's own fresh meta/ files are not the app's save.
    fs::write(persistence.join("meta/update_state.json"), b"{}").expect("write meta");

    for auto in [true, false] {
        let err = refused(&input(&h, &state, auto, now));
        assert_eq!(err.rule, "stale_save");
        assert!(
            err.reason.contains("120 minutes old")
                && err.reason.contains("max_save_age_minutes = 30"),
            "{err}"
        );
    }
    h.config.paths.max_save_age_minutes = 0;
    check_eligibility(&input(&h, &state, true, now)).expect("0 turns the rule off");
    h.config.paths.max_save_age_minutes = 30;
    fs::write(persistence.join("trades/fresh.json"), b"{}").expect("fresh save");
    check_eligibility(&input(&h, &state, true, now)).expect("a fresh save is eligible");
}

#[test]
fn too_little_disk_is_refused_with_the_numbers() {
    let h = host();
    let state = HostState::default();
    let huge = EligibilityInput {
        needed_bytes: u64::MAX / 2,
        ..input(&h, &state, false, ts("2026-03-01T12:00:00Z"))
    };
    let err = refused(&huge);
    assert_eq!(err.rule, "disk_space");
    assert!(
        err.reason.contains("MiB free")
            && err
                .reason
                .contains(&(u64::MAX / 2 / 1024 / 1024 + 1).to_string()),
        "{err}"
    );
}

// ---- gc ---------------------------------------------------------------------

fn release_at(layout: &Layout, name: &str, age_hours: u64) -> PathBuf {
    let dir = layout.releases_dir().join(name);
    fake_release(&dir, "1.0.0");
    let when = SystemTime::now() - Duration::from_secs(age_hours * 3600);
    fs::File::options()
        .write(true)
        .open(dir.join(slipway_formats::MANIFEST_PATH))
        .expect("open manifest")
        .set_modified(when)
        .expect("set mtime");
    dir
}

#[test]
fn gc_keeps_current_previous_protected_and_the_newest() {
    let h = host();
    let l = &h.layout;
    // r1 oldest .. r6 newest.
    let r: Vec<PathBuf> = (1..=6)
        .map(|i| release_at(l, &format!("1.0.{i}-r{i}"), 10 - i))
        .collect();
    // A staged release is read-only; gc must still remove it.
    for d in [r[3].join("app"), r[3].join("slipway"), r[3].clone()] {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o555)).expect("chmod");
    }
    std::os::unix::fs::symlink("releases/1.0.2-r2", l.current_link()).expect("current");
    std::os::unix::fs::symlink(&r[0], l.previous_link()).expect("previous");
    let staging = l.releases_dir().join(".staging-abcdef012345-4242");
    fs::create_dir_all(staging.join("app")).expect("staging");
    // A symlink in releases/ pointing out of the root is never followed.
    let outside = h.layout.root().parent().expect("tmp").join("outside");
    fs::create_dir_all(&outside).expect("outside");
    fs::write(outside.join("keep.txt"), b"mine").expect("outside file");
    std::os::unix::fs::symlink(&outside, l.releases_dir().join("escape")).expect("escape link");

    let backups = l.backups_dir();
    let snaps: Vec<PathBuf> = (1..=5)
        .map(|i| {
            let p = backups.join(format!("2026010{i}T000000Z"));
            fs::create_dir_all(p.join("data")).expect("snapshot");
            p
        })
        .collect();
    let partial = backups.join("20260106T000000Z.partial");
    fs::create_dir_all(&partial).expect("partial");

    fs::create_dir_all(l.downloads_dir()).expect("downloads");
    let old_dl = l.downloads_dir().join("old.tar.zst");
    let new_dl = l.downloads_dir().join("new.tar.zst.part");
    fs::write(&old_dl, b"old").expect("old download");
    fs::write(&new_dl, b"new").expect("new download");
    fs::File::options()
        .write(true)
        .open(&old_dl)
        .expect("open")
        .set_modified(SystemTime::now() - Duration::from_secs(8 * 24 * 3600))
        .expect("age");
    fs::create_dir_all(l.state_dir()).expect("state");
    let temp = l.state_dir().join(".host.json.tmp.99999999");
    fs::write(&temp, b"{").expect("temp");
    fs::write(l.host_state_file(), b"{}").expect("host state");

    let protected = vec![r[2].clone(), PathBuf::from("backups/20260101T000000Z")];
    let rep = gc::collect(l, 4, 2, &protected).expect("gc");

    // Releases: current (r2), previous (r1), protected (r3) + newest other (r6).
    for keep in [&r[0], &r[1], &r[2], &r[5]] {
        assert!(keep.is_dir(), "{} kept", keep.display());
        assert!(rep.kept.contains(keep));
    }
    for gone in [&r[3], &r[4], &staging] {
        assert!(!gone.exists(), "{} removed", gone.display());
        assert!(rep.removed_releases.contains(gone));
    }
    assert!(
        outside.join("keep.txt").is_file(),
        "symlink target untouched"
    );
    assert!(l.releases_dir().join("escape").is_symlink());
    // Snapshots: protected (01) + newest other (05); partial removed.
    for keep in [&snaps[0], &snaps[4]] {
        assert!(
            keep.is_dir() && rep.kept.contains(keep),
            "{}",
            keep.display()
        );
    }
    for gone in [&snaps[1], &snaps[2], &snaps[3], &partial] {
        assert!(
            !gone.exists() && rep.removed_snapshots.contains(gone),
            "{}",
            gone.display()
        );
    }
    assert_eq!(rep.removed_downloads, vec![old_dl.clone()]);
    assert!(new_dl.exists());
    assert_eq!(rep.removed_temp_files, vec![temp.clone()]);
    assert!(l.host_state_file().exists());

    // A second run finds nothing more to do.
    let again = gc::collect(l, 4, 2, &protected).expect("gc again");
    assert!(again.removed_releases.is_empty() && again.removed_snapshots.is_empty());
}

#[test]
fn gc_refuses_a_symlinked_releases_dir() {
    let h = host();
    let elsewhere = h.layout.root().parent().expect("tmp").join("elsewhere");
    fs::create_dir_all(elsewhere.join("1.0.0-a")).expect("mkdir");
    std::os::unix::fs::symlink(&elsewhere, h.layout.releases_dir()).expect("link");
    let err = gc::collect(&h.layout, 2, 2, &[]).expect_err("symlinked releases/");
    assert!(err.to_string().contains("releases"), "{err}");
    assert!(elsewhere.join("1.0.0-a").is_dir());
}

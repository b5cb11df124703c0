//! Step 14, report: after every attempt (success, failure or skip), say what
//! happened everywhere an operator or the app might look.
//!
//! [`report_attempt`] writes, in this order:
//!
//! 1. one JSON line appended to `<root>/state/history.jsonl`;
//! 2. `<persistence>/meta/version.json` (what runs now), when known;
//! 3. `<persistence>/meta/update_state.json` (the seed's "last run, result,
//!    failure count");
//! 4. the dashboard banner, `<root>/state/banner.txt` and `[report]
//!    banner_file`: one plain line starting with `OK`, `SKIPPED`, `FAILED`,
//!    `ROLLED BACK`, `READY` or `DISABLED`;
//! 5. Prometheus textfile metrics, `<root>/state/slipway.prom` and `[report]
//!    metrics_file`;
//! 6. a structured journald entry (native protocol), when `[report] journald`
//!    is on and the journal socket exists.
//!
//! Every file but the history is replaced atomically; the history is
//! appended with one `write` and an fsync, so a crash can at worst lose or
//! tear the last line, and readers skip a torn line. Each output is tried
//! even when an earlier one failed; the first error is returned.

use std::fs::OpenOptions;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use slipway_formats::channel::Timestamp;
use slipway_formats::state::{AttemptResult, UpdateStateFile, VersionFile};
use slipway_formats::{Manifest, ReleaseId, Version};
use thiserror::Error;

use crate::config::Config;
use crate::durable;
use crate::layout::Layout;
use crate::state::{Attempt, HostState};

/// Where journald listens for native-protocol datagrams.
pub const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";

/// journald `MESSAGE_ID` of an attempt that installed a new release
/// (`journalctl MESSAGE_ID=...` finds every such entry on a host or fleet).
pub const MESSAGE_ID_UPDATED: &str = "3f391cbdd03e49248635955913e2e070";
/// journald `MESSAGE_ID` of a check that found nothing newer.
pub const MESSAGE_ID_UP_TO_DATE: &str = "54821d0d5d8843f5a7e80cc1d2a3ec33";
/// journald `MESSAGE_ID` of an attempt skipped by an eligibility rule.
pub const MESSAGE_ID_SKIPPED: &str = "077989bd44a34a1685816809af336984";
/// journald `MESSAGE_ID` of an attempt that failed before the switch.
pub const MESSAGE_ID_FAILED: &str = "ede89dacbe014b0f93afe5da23720f95";
/// journald `MESSAGE_ID` of an update that was switched, found unhealthy and
/// flipped back (sent with `PRIORITY=2`, critical).
pub const MESSAGE_ID_ROLLED_BACK: &str = "ff274235bb0c4b4792a510d7fafd4b6e";
/// journald `MESSAGE_ID` of an update staged and waiting for `slipway apply`.
pub const MESSAGE_ID_READY: &str = "684fcbfdf6e34fbdabb7101a702083b6";

/// The longest message kept in the one-line banner, in characters.
const BANNER_MESSAGE_CHARS: usize = 300;
/// The message length a journald entry falls back to when the datagram is
/// too large for the socket.
const JOURNALD_FALLBACK_MESSAGE_BYTES: usize = 4096;

/// Why a report output could not be written.
#[derive(Debug, Error)]
pub enum ReportError {
    #[error("cannot append to the history {path}: {source}; check free space and the permissions of its directory")]
    AppendHistory { path: PathBuf, source: io::Error },
    #[error("cannot read the history {path}: {source}; check its permissions")]
    ReadHistory { path: PathBuf, source: io::Error },
    #[error(
        "history {path} line {line} is corrupt ({message}); move the file away \
         (`mv {path} {path}.corrupt`): the history is informational and slipway starts a new one"
    )]
    CorruptHistory {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("cannot write the {what} {path}: {source}; check free space and that the directory exists and is writable")]
    Write {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot send the journald entry to {socket}: {source}; set `[report] journald = false` to stop sending")]
    Journald { socket: PathBuf, source: io::Error },
}

/// The release running after the attempt, when there is one.
#[derive(Debug, Clone)]
pub struct Current<'a> {
    pub manifest: &'a Manifest,
    pub id: ReleaseId,
    pub dir: &'a Path,
    /// When it was switched to.
    pub installed_at: Timestamp,
    pub previous_version: Option<Version>,
}

/// Reports one attempt everywhere (see the module docs), sending the
/// journald entry to [`JOURNALD_SOCKET`].
///
/// `state` is the host state *after* [`HostState::record`] of `attempt`, so
/// that the counters and the disabled flag include it. `current` is the
/// release running now (the new one after an update, the old one after a
/// failure or rollback), `None` when nothing is installed yet.
pub fn report_attempt(
    layout: &Layout,
    config: &Config,
    state: &HostState,
    attempt: &Attempt,
    current: Option<Current<'_>>,
) -> Result<(), ReportError> {
    report_attempt_to(
        layout,
        config,
        state,
        attempt,
        current,
        Path::new(JOURNALD_SOCKET),
    )
}

/// [`report_attempt`] with the journald socket given (tests bind their own).
pub fn report_attempt_to(
    layout: &Layout,
    config: &Config,
    state: &HostState,
    attempt: &Attempt,
    current: Option<Current<'_>>,
    journald_socket: &Path,
) -> Result<(), ReportError> {
    let current = current.as_ref();
    let mut first: Option<ReportError> = None;
    let mut keep = |r: Result<(), ReportError>| {
        if let Err(e) = r {
            first.get_or_insert(e);
        }
    };

    keep(append_history(layout, attempt));

    let meta = meta_dir(config);
    if let Some(cur) = current {
        keep(write_version_file(&meta, cur));
    }
    keep(write_json(
        "update state",
        &meta.join("update_state.json"),
        &update_state_file(config, state, attempt, current),
        Some(&meta),
    ));

    let mut banner = banner_line(config, state, attempt, current);
    banner.push('\n');
    for path in std::iter::once(layout.banner_file()).chain(config.report.banner_file.clone()) {
        keep(write_file("banner", &path, banner.as_bytes()));
    }

    let metrics = metrics_text(config, state, attempt, current);
    for path in std::iter::once(layout.metrics_file()).chain(config.report.metrics_file.clone()) {
        keep(write_file("metrics file", &path, metrics.as_bytes()));
    }

    if config.report.journald {
        let fields = journald_fields(attempt, current);
        keep(
            send_journald(journald_socket, &fields)
                .map(|_| ())
                .map_err(|source| ReportError::Journald {
                    socket: journald_socket.to_path_buf(),
                    source,
                }),
        );
    }

    match first {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `<persistence>/meta`, where the two files for the app's dashboard go.
pub fn meta_dir(config: &Config) -> PathBuf {
    config.paths.persistence.join("meta")
}

/// Appends `attempt` as one JSON line to the history and fsyncs it.
///
/// If a crash tore the previous line (the file does not end in a newline),
/// a newline is written first so the torn fragment stays on a line of its
/// own and the new entry is whole.
pub fn append_history(layout: &Layout, attempt: &Attempt) -> Result<(), ReportError> {
    let path = layout.history_file();
    let err = |source| ReportError::AppendHistory {
        path: path.clone(),
        source,
    };
    let mut line = serde_json::to_vec(attempt).map_err(|e| err(io::Error::other(e)))?;
    line.push(b'\n');
    let state_dir = layout.state_dir();
    durable::create_dirs(&state_dir).map_err(err)?;
    let existed = path.exists();
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)
        .map_err(err)?;
    let len = file.metadata().map_err(err)?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        file.read_exact_at(&mut last, len - 1).map_err(err)?;
        if last[0] != b'\n' {
            line.insert(0, b'\n');
        }
    }
    file.write_all(&line).map_err(err)?;
    file.sync_data().map_err(err)?;
    if !existed {
        durable::fsync_dir(&state_dir).map_err(err)?;
    }
    Ok(())
}

/// The history, oldest first; with `limit`, only the newest `limit` entries.
///
/// Torn lines (a crash in the middle of an append: truncated JSON, or the
/// zeros a file system may leave) are skipped. Any other unreadable line is
/// an error naming the file and line. A missing file is an empty history.
pub fn read_history(layout: &Layout, limit: Option<usize>) -> Result<Vec<Attempt>, ReportError> {
    let path = layout.history_file();
    // Streamed line by line (it only grows), but opened like every file
    // slipway reads: no symlink, no FIFO.
    let file = match slipway_fs::open_regular(&path) {
        Ok(f) => f,
        Err(slipway_fs::ReadError::NotFound { .. }) => return Ok(Vec::new()),
        Err(slipway_fs::ReadError::Io { source, .. }) => {
            return Err(ReportError::ReadHistory { path, source })
        }
        Err(other) => {
            return Err(ReportError::ReadHistory {
                path,
                source: io::Error::new(io::ErrorKind::InvalidInput, other.to_string()),
            })
        }
    };
    let mut out = std::collections::VecDeque::new();
    let mut lines = BufReader::new(file).split(b'\n').enumerate().peekable();
    while let Some((index, line)) = lines.next() {
        let line = line.map_err(|source| ReportError::ReadHistory {
            path: path.clone(),
            source,
        })?;
        let is_last = lines.peek().is_none();
        let text = line.trim_ascii();
        if text.is_empty() || text.iter().all(|&b| b == 0) {
            continue;
        }
        match serde_json::from_slice::<Attempt>(text) {
            Ok(a) => {
                out.push_back(a);
                if limit.is_some_and(|n| out.len() > n) {
                    out.pop_front();
                }
            }
            Err(e) if is_last || e.is_eof() || text.contains(&0) => continue,
            Err(e) => {
                return Err(ReportError::CorruptHistory {
                    path: path.clone(),
                    line: index + 1,
                    message: e.to_string(),
                })
            }
        }
    }
    Ok(out.into())
}

fn write_file(what: &'static str, path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    durable::write_atomic(path, bytes).map_err(|source| ReportError::Write {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn write_json<T: serde::Serialize>(
    what: &'static str,
    path: &Path,
    value: &T,
    create: Option<&Path>,
) -> Result<(), ReportError> {
    let write = || {
        if let Some(dir) = create {
            durable::create_dirs(dir)?;
        }
        durable::write_json_atomic(path, value)
    };
    write().map_err(|source| ReportError::Write {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn write_version_file(meta: &Path, cur: &Current<'_>) -> Result<(), ReportError> {
    let file = VersionFile {
        app: cur.manifest.app.clone(),
        version: cur.manifest.version.clone(),
        release_id: cur.id,
        channel: cur.manifest.channel.clone(),
        schema_version: cur.manifest.schema_version,
        installed_at: cur.installed_at,
        previous_version: cur.previous_version.clone(),
    };
    write_json(
        "version file",
        &meta.join("version.json"),
        &file,
        Some(meta),
    )
}

/// Why auto-update is off, if it is: the configuration, or the host state.
fn disabled_reason(config: &Config, state: &HostState) -> Option<String> {
    if let Some(d) = &state.disabled {
        return Some(format!("{} (by {} at {})", d.reason, d.by, d.at));
    }
    if !config.update.enabled {
        return Some(format!(
            "auto-update is off in the configuration ([update] enabled = false or BOT_AUTO_UPDATE=0; {})",
            config.file.display()
        ));
    }
    None
}

/// The contents of `update_state.json` after `attempt`.
pub fn update_state_file(
    config: &Config,
    state: &HostState,
    attempt: &Attempt,
    current: Option<&Current<'_>>,
) -> UpdateStateFile {
    let disabled_reason = disabled_reason(config, state);
    UpdateStateFile {
        last_run: attempt.at,
        last_op: attempt.op.clone(),
        last_result: attempt.result,
        last_version: attempt.version.clone(),
        last_release_id: attempt.release_id,
        message: attempt.message.clone(),
        last_success: state.last_success.as_ref().map(|a| a.at),
        day: state.day.clone(),
        attempts_today: state.attempts_today,
        failures_today: state.failures_today,
        auto_update_enabled: disabled_reason.is_none(),
        disabled_reason,
        update_ready: state.pending.as_ref().map(|p| p.version.clone()),
        current_version: running_version(attempt, current),
        bad_releases: state.bad_releases.iter().map(|b| b.id).collect(),
    }
}

/// The version running after the attempt, as best known.
fn running_version(attempt: &Attempt, current: Option<&Current<'_>>) -> Option<Version> {
    match current {
        Some(c) => Some(c.manifest.version.clone()),
        None if attempt.result == AttemptResult::Updated => attempt.version.clone(),
        None => attempt.from_version.clone(),
    }
}

/// One line, whitespace collapsed, at most [`BANNER_MESSAGE_CHARS`] characters.
fn one_line(message: &str) -> String {
    let joined = message.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() <= BANNER_MESSAGE_CHARS {
        return joined;
    }
    let mut cut: String = joined.chars().take(BANNER_MESSAGE_CHARS).collect();
    cut.push_str("...");
    cut
}

fn or_unknown(v: Option<&Version>) -> String {
    v.map_or_else(|| "unknown version".to_string(), Version::to_string)
}

/// The dashboard banner: one plain-text line starting with the state in
/// capitals (`OK`, `SKIPPED`, `FAILED`, `ROLLED BACK`, `READY`, `DISABLED`).
pub fn banner_line(
    config: &Config,
    state: &HostState,
    attempt: &Attempt,
    current: Option<&Current<'_>>,
) -> String {
    let app = current.map_or("the app", |c| c.manifest.app.as_str());
    let running = running_version(attempt, current);
    let running_text = match &running {
        Some(v) => format!("{app} {v} running"),
        None => "nothing installed yet".to_string(),
    };
    let at = attempt.at;
    let message = one_line(&attempt.message);
    let target = or_unknown(attempt.version.as_ref());
    let disabled = disabled_reason(config, state);
    let mut line = match attempt.result {
        AttemptResult::Updated => {
            let how = match (&attempt.from_version, attempt.op.as_str()) {
                (Some(from), "rollback") => format!("rolled back from {from}"),
                (Some(from), _) => format!("updated from {from}"),
                (None, _) => "installed".to_string(),
            };
            format!("OK: {running_text} ({how} at {at})")
        }
        AttemptResult::UpToDate => format!("OK: {running_text}, up to date (checked at {at})"),
        AttemptResult::Skipped => match (&state.disabled, &disabled) {
            (Some(_), Some(reason)) => {
                format!("DISABLED: auto-update disabled: {reason}; {running_text}")
            }
            _ => format!("SKIPPED: update not attempted at {at}: {message}; {running_text}"),
        },
        AttemptResult::Failed => format!(
            "FAILED: update to {target} failed at {at}: {message}; {running_text} unchanged"
        ),
        AttemptResult::RolledBack => format!(
            "ROLLED BACK: update to {target} failed: {message}; rolled back to {} at {at}",
            or_unknown(running.as_ref())
        ),
        AttemptResult::Ready => format!(
            "READY: update {target} ready: run `slipway apply` (staged at {at}); {running_text}"
        ),
    };
    if attempt.result != AttemptResult::Skipped {
        if let (Some(_), Some(reason)) = (&state.disabled, &disabled) {
            line.push_str(&format!("; auto-update DISABLED: {reason}"));
        }
    }
    if attempt.result != AttemptResult::Ready {
        if let Some(p) = &state.pending {
            line.push_str(&format!(
                "; update {} ready: run `slipway apply`",
                p.version
            ));
        }
    }
    line
}

/// Escapes a Prometheus label value.
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The Prometheus text exposition of the host's update state after
/// `attempt`, for node_exporter's textfile collector.
pub fn metrics_text(
    config: &Config,
    state: &HostState,
    attempt: &Attempt,
    current: Option<&Current<'_>>,
) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, samples: &[(String, String)]| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (labels, value) in samples {
            out.push_str(&format!("{name}{labels} {value}\n"));
        }
    };
    let plain = |v: String| vec![(String::new(), v)];
    gauge(
        "slipway_last_attempt_timestamp_seconds",
        "Unix time the last update attempt finished.",
        &plain(attempt.at.unix().to_string()),
    );
    let one_hot: Vec<_> = AttemptResult::ALL
        .iter()
        .map(|r| {
            (
                format!("{{result=\"{}\"}}", r.as_str()),
                u8::from(*r == attempt.result).to_string(),
            )
        })
        .collect();
    gauge(
        "slipway_last_attempt_result",
        "Result of the last update attempt: 1 for the result it had, 0 for the others.",
        &one_hot,
    );
    gauge(
        "slipway_last_attempt_duration_seconds",
        "How long the last update attempt took.",
        &plain(format!("{:.3}", attempt.duration_ms as f64 / 1000.0)),
    );
    if let Some(last) = &state.last_success {
        gauge(
            "slipway_last_success_timestamp_seconds",
            "Unix time an update last succeeded.",
            &plain(last.at.unix().to_string()),
        );
    }
    if let Some(c) = current {
        gauge(
            "slipway_current_version_info",
            "The release running now (always 1; the labels carry the version).",
            &[(
                format!(
                    "{{app=\"{}\",version=\"{}\",release_id=\"{}\"}}",
                    label(&c.manifest.app),
                    label(&c.manifest.version.to_string()),
                    label(&c.id.to_string())
                ),
                "1".to_string(),
            )],
        );
    }
    gauge(
        "slipway_attempts_today",
        "Update attempts today (UTC), counted against max_attempts_per_day.",
        &plain(state.attempts_today.to_string()),
    );
    gauge(
        "slipway_failures_today",
        "Failed or rolled-back updates today (UTC), counted against max_failures_per_day.",
        &plain(state.failures_today.to_string()),
    );
    gauge(
        "slipway_auto_update_disabled",
        "1 when auto-update is off (configuration, operator, or too many failures).",
        &plain(u8::from(disabled_reason(config, state).is_some()).to_string()),
    );
    gauge(
        "slipway_update_ready",
        "1 when an update is staged and waits for `slipway apply`.",
        &plain(u8::from(state.pending.is_some()).to_string()),
    );
    gauge(
        "slipway_bad_releases",
        "Releases on this host's bad list (never retried automatically).",
        &plain(state.bad_releases.len().to_string()),
    );
    out
}

/// journald `PRIORITY` for a result: 6 (info) for success, up to date, skip
/// and ready; 4 (warning) for a failure before the switch; 2 (critical) for
/// a rollback, the seed's "emit critical alert".
pub fn priority(result: AttemptResult) -> u8 {
    match result {
        AttemptResult::Updated
        | AttemptResult::UpToDate
        | AttemptResult::Skipped
        | AttemptResult::Ready => 6,
        AttemptResult::Failed => 4,
        AttemptResult::RolledBack => 2,
    }
}

/// The fixed journald `MESSAGE_ID` of a result (the `MESSAGE_ID_*` constants).
pub fn message_id(result: AttemptResult) -> &'static str {
    match result {
        AttemptResult::Updated => MESSAGE_ID_UPDATED,
        AttemptResult::UpToDate => MESSAGE_ID_UP_TO_DATE,
        AttemptResult::Skipped => MESSAGE_ID_SKIPPED,
        AttemptResult::Failed => MESSAGE_ID_FAILED,
        AttemptResult::RolledBack => MESSAGE_ID_ROLLED_BACK,
        AttemptResult::Ready => MESSAGE_ID_READY,
    }
}

/// The structured fields of the journald entry for `attempt`.
pub fn journald_fields(
    attempt: &Attempt,
    current: Option<&Current<'_>>,
) -> Vec<(&'static str, String)> {
    let subject = attempt
        .version
        .as_ref()
        .map(|v| format!(" {v}"))
        .unwrap_or_default();
    let mut fields = vec![
        (
            "MESSAGE",
            format!(
                "slipway {}{subject}: {}: {}",
                attempt.op, attempt.result, attempt.message
            ),
        ),
        ("PRIORITY", priority(attempt.result).to_string()),
        ("SYSLOG_IDENTIFIER", "slipway".to_string()),
        ("MESSAGE_ID", message_id(attempt.result).to_string()),
        ("SLIPWAY_RESULT", attempt.result.as_str().to_string()),
        ("SLIPWAY_OP", attempt.op.clone()),
        ("SLIPWAY_DURATION_MS", attempt.duration_ms.to_string()),
    ];
    if let Some(v) = &attempt.version {
        fields.push(("SLIPWAY_VERSION", v.to_string()));
    }
    if let Some(v) = &attempt.from_version {
        fields.push(("SLIPWAY_FROM_VERSION", v.to_string()));
    }
    if let Some(id) = &attempt.release_id {
        fields.push(("SLIPWAY_RELEASE_ID", id.to_string()));
    }
    if let Some(c) = current {
        fields.push(("SLIPWAY_APP", c.manifest.app.clone()));
        fields.push(("SLIPWAY_CURRENT_VERSION", c.manifest.version.to_string()));
    }
    fields
}

/// Encodes fields in journald's native protocol: `FIELD=value\n`, or for a
/// value containing a newline the binary-safe `FIELD\n<u64 LE length><bytes>\n`.
pub fn encode_journald(fields: &[(&str, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.extend_from_slice(name.as_bytes());
        if value.contains('\n') {
            out.push(b'\n');
            out.extend_from_slice(&(value.len() as u64).to_le_bytes());
            out.extend_from_slice(value.as_bytes());
        } else {
            out.push(b'=');
            out.extend_from_slice(value.as_bytes());
        }
        out.push(b'\n');
    }
    out
}

/// Sends one entry to the journald socket. Returns `Ok(false)` without
/// sending when there is no journal listening (no socket, or nobody bound
/// to it): a host without journald is not an error. A datagram too large for
/// the socket is retried once with `MESSAGE` cut short.
pub fn send_journald(socket: &Path, fields: &[(&str, String)]) -> io::Result<bool> {
    let sock = UnixDatagram::unbound()?;
    let absent = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
        )
    };
    match sock.send_to(&encode_journald(fields), socket) {
        Ok(_) => Ok(true),
        Err(e) if absent(&e) => Ok(false),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::MSGSIZE.raw_os_error()) => {
            let shortened: Vec<(&str, String)> = fields
                .iter()
                .map(|(k, v)| {
                    if *k == "MESSAGE" && v.len() > JOURNALD_FALLBACK_MESSAGE_BYTES {
                        let mut end = JOURNALD_FALLBACK_MESSAGE_BYTES;
                        while !v.is_char_boundary(end) {
                            end -= 1;
                        }
                        (*k, format!("{}...", &v[..end]))
                    } else {
                        (*k, v.clone())
                    }
                })
                .collect();
            match sock.send_to(&encode_journald(&shortened), socket) {
                Ok(_) => Ok(true),
                Err(e) if absent(&e) => Ok(false),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_safe_encoding_is_used_only_for_newlines() {
        let bytes = encode_journald(&[("A", "x".into()), ("B", "1\n2".into())]);
        let mut expected = b"A=x\nB\n".to_vec();
        expected.extend_from_slice(&3u64.to_le_bytes());
        expected.extend_from_slice(b"1\n2\n");
        assert_eq!(bytes, expected);
    }

    #[test]
    fn message_ids_are_distinct_128_bit_hex() {
        let ids: std::collections::BTreeSet<_> =
            AttemptResult::ALL.iter().map(|r| message_id(*r)).collect();
        assert_eq!(ids.len(), AttemptResult::ALL.len());
        for id in ids {
            assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

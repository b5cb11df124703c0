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
//!    banner_file`: one plain line of at most [`BANNER_MAX_CHARS`]
//!    characters that leads with the state (`OK`, `READY`, `SKIPPED`,
//!    `DISABLED`, `REFUSED`, `FAILED`, `ROLLED BACK`, `CRITICAL`,
//!    `RECOVERED`, `STALLED`), e.g. `ROLLED BACK 3.0.0 → running 2.0.0:
//!    unhealthy (see slipway status)`;
//! 5. Prometheus textfile metrics, `<root>/state/slipway.prom` and `[report]
//!    metrics_file`;
//! 6. a structured journald entry (native protocol), when `[report] journald`
//!    is on and the journal socket exists. Its priority is the cause's
//!    ([`Cause::priority`]), raised to a warning when updates have stalled
//!    or the held channel index expires soon.
//!
//! Two conditions are reported on top of the attempt itself, in status, the
//! banner, journald and the metrics: **stalled updates** ([`stall`]: no
//! offered newer release installed for `[update] stalled_after_hours`,
//! whatever the reason) and **an index about to expire** ([`expiry`]:
//! within `[update] expiry_warning_days`).
//!
//! Every file but the history is replaced atomically; the history is
//! appended with one `write` and an fsync, so a crash can at worst lose or
//! tear the last line, and readers skip a torn line. Each output is tried
//! even when an earlier one failed; the first error is returned.
//!
//! The two files in `meta/` are written into a directory the app owns:
//! through directory descriptors, never following a symlink at any level
//! ([`crate::app_dir`]). A `meta` that is a symlink is refused, not written
//! through. When slipway creates the persistence directory or `meta/`, they
//! belong to the service's user.

use std::fs::OpenOptions;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use slipway_formats::channel::Timestamp;
use slipway_formats::state::{AttemptResult, UpdateStateFile, VersionFile};
use slipway_formats::{Manifest, ReleaseId, Version};
use thiserror::Error;

use crate::app_dir::{self, AppDirError};
use crate::app_user::AppUser;
use crate::config::Config;
use crate::durable;
use crate::failure_model::Cause;
use crate::layout::Layout;
use crate::state::{human_duration, Attempt, HostState};

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
/// journald `MESSAGE_ID` of a refusal of what the source offered.
pub const MESSAGE_ID_REFUSED: &str = "d004bf7a8a2e4524bf51f7183838ded0";
/// journald `MESSAGE_ID` of a run killed and finished or undone by `recover`.
pub const MESSAGE_ID_RECOVERED: &str = "9d12e4f8c73b48ccb2a638ce2dd4dba7";

/// The longest banner, in characters.
pub const BANNER_MAX_CHARS: usize = 160;

/// Set once this process has sent an attempt's result to journald.
static RESULT_SENT_TO_JOURNALD: AtomicBool = AtomicBool::new(false);

/// Whether printing the result on `stream` would log it a second time: the
/// result went to journald as a structured entry already, and `stream` is
/// the journal too (a systemd service). The caller then prints nothing.
pub fn result_in_journal(stream: crate::term::Stream) -> bool {
    RESULT_SENT_TO_JOURNALD.load(Ordering::Relaxed) && crate::term::is_journal(stream)
}
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
    #[error("cannot write the {what} {path}: {source}")]
    AppDir {
        what: &'static str,
        path: PathBuf,
        source: AppDirError,
    },
    #[error("cannot send the journald entry to {socket}: {source}; set `[report] journald = false` to stop sending")]
    Journald { socket: PathBuf, source: io::Error },
}

/// What the reports say of a release: its manifest's head, which the
/// release records keep too, so that reporting an idle poll reads no
/// manifest ([`crate::transaction::RunningSummary`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseFacts {
    pub app: String,
    pub version: Version,
    pub channel: String,
    pub schema_version: u32,
}

impl From<&Manifest> for ReleaseFacts {
    fn from(m: &Manifest) -> ReleaseFacts {
        ReleaseFacts {
            app: m.app.clone(),
            version: m.version.clone(),
            channel: m.channel.clone(),
            schema_version: m.schema_version,
        }
    }
}

impl From<&slipway_formats::ManifestHead> for ReleaseFacts {
    fn from(m: &slipway_formats::ManifestHead) -> ReleaseFacts {
        ReleaseFacts {
            app: m.app.clone(),
            version: m.version.clone(),
            channel: m.channel.clone(),
            schema_version: m.schema_version,
        }
    }
}

/// The release running after the attempt, when there is one.
#[derive(Debug, Clone)]
pub struct Current<'a> {
    pub release: ReleaseFacts,
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
/// failure or rollback), `None` when nothing is installed yet. `owner` is
/// the service's user, who gets the persistence directory and `meta/` when
/// slipway creates them (`None`: the user slipway runs as).
pub fn report_attempt(
    layout: &Layout,
    config: &Config,
    state: &HostState,
    attempt: &Attempt,
    current: Option<Current<'_>>,
    owner: Option<&AppUser>,
) -> Result<(), ReportError> {
    report_attempt_to(
        layout,
        config,
        state,
        attempt,
        current,
        owner,
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
    owner: Option<&AppUser>,
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

    let mut meta_files = Vec::with_capacity(2);
    if let Some(cur) = current {
        meta_files.push((
            "version file",
            "version.json",
            json_bytes(&version_file(cur)),
        ));
    }
    meta_files.push((
        "update state",
        "update_state.json",
        json_bytes(&update_state_file(config, state, attempt, current)),
    ));
    keep(write_meta_files(config, owner, &meta_files));

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
        let fields = journald_fields_for(config, state, attempt, current);
        keep(
            send_journald(journald_socket, &fields)
                .map(|sent| {
                    if sent {
                        RESULT_SENT_TO_JOURNALD.store(true, Ordering::Relaxed);
                    }
                })
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

/// Pretty JSON with a trailing newline, as every state file is written.
fn json_bytes<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, io::Error> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Writes `(what, name, bytes)` files into `<persistence>/meta/`, creating
/// the persistence directory and `meta/` for `owner` when missing, each
/// file replaced atomically; reached through directory descriptors only.
/// Each file is tried; the first error is returned.
#[allow(clippy::type_complexity)]
fn write_meta_files(
    config: &Config,
    owner: Option<&AppUser>,
    files: &[(&'static str, &str, Result<Vec<u8>, io::Error>)],
) -> Result<(), ReportError> {
    let meta_path = meta_dir(config);
    let Some((first_what, first_name, _)) = files.first() else {
        return Ok(());
    };
    let meta = app_dir::ensure_persistence(&config.paths.persistence, owner)
        .and_then(|p| p.ensure_dir(std::ffi::OsStr::new(app_dir::META_DIR), 0o755, owner))
        .map_err(|source| ReportError::AppDir {
            what: first_what,
            path: meta_path.join(first_name),
            source,
        })?;
    let mut first = None;
    for (what, name, bytes) in files {
        let path = meta_path.join(name);
        let result = match bytes {
            Ok(bytes) => meta
                .write_file_atomic(std::ffi::OsStr::new(name), bytes, 0o644)
                .map_err(|source| ReportError::AppDir { what, path, source }),
            Err(e) => Err(ReportError::Write {
                what,
                path,
                source: io::Error::other(e.to_string()),
            }),
        };
        if let Err(e) = result {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// `version.json`: what runs now.
fn version_file(cur: &Current<'_>) -> VersionFile {
    VersionFile {
        app: cur.release.app.clone(),
        version: cur.release.version.clone(),
        release_id: cur.id,
        channel: cur.release.channel.clone(),
        schema_version: cur.release.schema_version,
        installed_at: cur.installed_at,
        previous_version: cur.previous_version.clone(),
    }
}

/// The setting that turns auto-update off in the configuration, named
/// exactly (`BOT_AUTO_UPDATE=0 in slipway's environment`, `[update] enabled
/// = false in /etc/slipway/update.toml`); `None` when it is on. The
/// environment overrides the file, so it is looked at first.
pub fn disabling_setting(config: &Config) -> Option<String> {
    if config.update.enabled {
        return None;
    }
    for var in ["SLIPWAY_UPDATE_ENABLED", "BOT_AUTO_UPDATE"] {
        if let Some(value) = std::env::var_os(var) {
            return Some(format!(
                "{var}={} in slipway's environment (the unit's Environment= or EnvironmentFile=, or the shell)",
                value.to_string_lossy()
            ));
        }
    }
    Some(format!(
        "[update] enabled = false in {}",
        config.file.display()
    ))
}

/// Why auto-update is off, if it is: the host state (failures, the
/// operator), then the configuration.
pub fn disabled_reason(config: &Config, state: &HostState) -> Option<String> {
    let by_state = state.disabled.as_ref().map(|d| {
        format!(
            "disabled by {} at {}: {}; `slipway enable` turns it back on",
            d.by, d.at, d.reason
        )
    });
    let setting =
        disabling_setting(config).map(|s| format!("{s}, which `slipway enable` cannot change"));
    match (by_state, setting) {
        (Some(s), Some(c)) => Some(format!("{s}; and {c}")),
        (Some(s), None) => Some(s),
        (None, Some(c)) => Some(c),
        (None, None) => None,
    }
}

/// Updates have not reached what the source offers for longer than
/// `[update] stalled_after_hours`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    pub since: Timestamp,
    pub seconds: u64,
    /// The latest reason.
    pub cause: Cause,
    pub reason: String,
}

/// How long updates have been blocked at `now` (0 when they are not).
pub fn blocked_seconds(state: &HostState, now: Timestamp) -> u64 {
    state.blocked.as_ref().map_or(0, |b| {
        u64::try_from(now.unix().saturating_sub(b.since.unix())).unwrap_or(0)
    })
}

/// The stall, when updates have been blocked longer than
/// `stalled_after_hours`.
pub fn stall(config: &Config, state: &HostState, now: Timestamp) -> Option<Stall> {
    let b = state.blocked.as_ref()?;
    let seconds = blocked_seconds(state, now);
    (seconds >= u64::from(config.update.stalled_after_hours) * 3600).then(|| Stall {
        since: b.since,
        seconds,
        cause: b.cause,
        reason: b.reason.clone(),
    })
}

/// The held channel index expires soon (or has expired).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    pub channel: String,
    pub expires: Timestamp,
    /// Negative once it has expired.
    pub in_seconds: i64,
}

impl Expiry {
    /// `expires in 3 days (at …)`, or `expired 2 hours ago (at …)`.
    pub fn describe(&self) -> String {
        if self.in_seconds > 0 {
            format!(
                "expires in {} (at {})",
                human_duration(self.in_seconds.unsigned_abs()),
                self.expires
            )
        } else {
            format!(
                "expired {} ago (at {})",
                human_duration(self.in_seconds.unsigned_abs()),
                self.expires
            )
        }
    }
}

/// Seconds until the held channel index expires, when one is held.
pub fn index_expires_in(state: &HostState, now: Timestamp) -> Option<i64> {
    state
        .index
        .as_ref()
        .map(|i| i.expires.unix().saturating_sub(now.unix()))
}

/// The expiry warning, when the held index expires within
/// `expiry_warning_days` (or already has).
pub fn expiry(config: &Config, state: &HostState, now: Timestamp) -> Option<Expiry> {
    let index = state.index.as_ref()?;
    let in_seconds = index_expires_in(state, now)?;
    (in_seconds <= i64::from(config.update.expiry_warning_days) * 86_400).then(|| Expiry {
        channel: index.channel.clone(),
        expires: index.expires,
        in_seconds,
    })
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
        last_cause: Some(attempt.cause().as_str().to_string()),
        stalled_since: stall(config, state, attempt.at).map(|s| s.since),
        index_expires: state.index.as_ref().map(|i| i.expires),
    }
}

/// The version running after the attempt, as best known.
fn running_version(attempt: &Attempt, current: Option<&Current<'_>>) -> Option<Version> {
    match current {
        Some(c) => Some(c.release.version.clone()),
        None if attempt.result == AttemptResult::Updated => attempt.version.clone(),
        None => attempt.from_version.clone(),
    }
}

/// One line, whitespace collapsed.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `text` cut to at most `max` characters, at a word boundary when one is
/// near, with `…` where it was cut.
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    if max == 0 {
        return String::new();
    }
    let cut: String = text.chars().take(max - 1).collect();
    let at_word_end = text.chars().nth(max - 1).is_some_and(char::is_whitespace);
    let cut = match cut.rfind(' ') {
        _ if at_word_end => cut,
        Some(i) if i * 2 >= cut.len() => cut[..i].to_string(),
        _ => cut,
    };
    format!("{}…", cut.trim_end_matches([',', ';', ':', ' ']))
}

/// A banner in parts: the state and subject, the reason, and notes that are
/// dropped (last first) when the line would be too long.
struct BannerLine {
    head: String,
    detail: String,
    notes: Vec<String>,
    see_status: bool,
}

impl BannerLine {
    fn render(mut self) -> String {
        let tail = if self.see_status {
            " (see slipway status)"
        } else {
            ""
        };
        loop {
            let notes: String = self.notes.iter().map(|n| format!("; {n}")).collect();
            let fixed =
                self.head.chars().count() + 2 + notes.chars().count() + tail.chars().count();
            // Keep at least a few words of the reason before dropping notes.
            if fixed + 12 <= BANNER_MAX_CHARS || self.notes.is_empty() {
                let room = BANNER_MAX_CHARS.saturating_sub(fixed);
                let line = if self.detail.is_empty() {
                    format!("{}{notes}{tail}", self.head)
                } else {
                    format!(
                        "{}: {}{notes}{tail}",
                        self.head,
                        shorten(&self.detail, room)
                    )
                };
                return shorten(&line, BANNER_MAX_CHARS);
            }
            self.notes.pop();
        }
    }
}

/// The rule a skip names in its message (`skipped (stale_save): …`).
fn skipped_rule(message: &str) -> Option<&str> {
    message
        .strip_prefix("skipped (")
        .and_then(|rest| rest.split_once(')'))
        .map(|(rule, _)| rule)
}

/// The dashboard banner: one plain-text line of at most
/// [`BANNER_MAX_CHARS`] characters that leads with the state in capitals,
/// says what runs, and gives the short reason (the whole story is in
/// `slipway status`).
pub fn banner_line(
    config: &Config,
    state: &HostState,
    attempt: &Attempt,
    current: Option<&Current<'_>>,
) -> String {
    let running = running_version(attempt, current);
    let running_text = running.as_ref().map_or_else(
        || "nothing installed".to_string(),
        |v| format!("running {v}"),
    );
    let at = attempt.at;
    let cause = attempt.cause();
    let target = attempt
        .version
        .as_ref()
        .map_or_else(|| "update".to_string(), Version::to_string);
    let critical = attempt.message.contains("CRITICAL");
    let stalled = stall(config, state, at);
    let mut notes = Vec::new();
    let mut line = match attempt.result {
        AttemptResult::Updated => {
            let how = match (&attempt.from_version, attempt.op.as_str()) {
                (_, "restore") => "its data restored from a backup".to_string(),
                (Some(from), "rollback") => format!("rolled back from {from}"),
                (Some(from), _) => format!("updated from {from}"),
                (None, _) => "installed".to_string(),
            };
            BannerLine {
                head: format!("OK {running_text}"),
                detail: format!("{how} at {at}"),
                notes: Vec::new(),
                see_status: false,
            }
        }
        AttemptResult::UpToDate if cause == Cause::NewerOnBadList => BannerLine {
            head: format!("OK {running_text}"),
            detail: "the newer release offered is on the bad list".to_string(),
            notes: Vec::new(),
            see_status: true,
        },
        AttemptResult::UpToDate => BannerLine {
            head: format!("OK {running_text}"),
            detail: format!("up to date (checked at {at})"),
            notes: Vec::new(),
            see_status: false,
        },
        AttemptResult::Ready => BannerLine {
            head: format!("READY {target} staged → {running_text}"),
            detail: "run `slipway apply`".to_string(),
            notes: Vec::new(),
            see_status: false,
        },
        AttemptResult::Skipped if cause == Cause::Disabled => BannerLine {
            head: format!("DISABLED auto-update → {running_text}"),
            detail: disabled_reason(config, state).unwrap_or_else(|| one_line(&attempt.message)),
            notes: Vec::new(),
            see_status: true,
        },
        AttemptResult::Skipped => BannerLine {
            head: format!("SKIPPED {target} → {running_text}"),
            detail: skipped_rule(&attempt.message)
                .map(|r| r.replace('_', " "))
                .unwrap_or_else(|| cause.label().to_string()),
            notes: Vec::new(),
            see_status: true,
        },
        AttemptResult::Refused => BannerLine {
            head: format!("REFUSED {target} → {running_text}"),
            detail: cause.label().to_string(),
            notes: Vec::new(),
            see_status: true,
        },
        AttemptResult::Failed => BannerLine {
            head: format!("FAILED {target} → {running_text}"),
            detail: cause.label().to_string(),
            notes: Vec::new(),
            see_status: true,
        },
        AttemptResult::RolledBack => BannerLine {
            head: format!(
                "{} {target} → {running_text}",
                if critical { "CRITICAL" } else { "ROLLED BACK" }
            ),
            detail: if critical {
                format!("{}; the old release is not healthy either", cause.label())
            } else {
                cause.label().to_string()
            },
            notes: Vec::new(),
            see_status: true,
        },
        AttemptResult::Recovered => BannerLine {
            head: format!(
                "{} {target} → {running_text}",
                if critical { "CRITICAL" } else { "RECOVERED" }
            ),
            detail: "an interrupted run was finished or undone".to_string(),
            notes: Vec::new(),
            see_status: true,
        },
    };
    // A stall leads, unless this very run flipped back (that is news).
    if let Some(st) = &stalled {
        if !cause.flipped_back() && !critical {
            let offered = state
                .index
                .as_ref()
                .and_then(|i| i.newest.clone())
                .filter(|n| running.as_ref().is_none_or(|r| n > r))
                .map_or_else(String::new, |n| format!(" ({n} offered)"));
            line = BannerLine {
                head: format!(
                    "STALLED {}{offered} → {running_text}",
                    human_duration(st.seconds)
                ),
                detail: st.cause.label().to_string(),
                notes: Vec::new(),
                see_status: true,
            };
        } else {
            notes.push(format!("stalled {}", human_duration(st.seconds)));
        }
    }
    if cause != Cause::Disabled && disabled_reason(config, state).is_some() {
        notes.push("auto-update DISABLED".to_string());
        line.see_status = true;
    }
    if let Some(e) = expiry(config, state, at) {
        notes.push(format!(
            "index {}",
            if e.in_seconds > 0 {
                format!("expires in {}", human_duration(e.in_seconds.unsigned_abs()))
            } else {
                "expired".to_string()
            }
        ));
        line.see_status = true;
    }
    if attempt.result != AttemptResult::Ready {
        if let Some(p) = &state.pending {
            notes.push(format!("{} ready: `slipway apply`", p.version));
        }
    }
    line.detail = one_line(&line.detail);
    line.notes = notes;
    line.render()
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
                    label(&c.release.app),
                    label(&c.release.version.to_string()),
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
    gauge(
        "slipway_last_attempt_cause_info",
        "Why the last attempt ended so (always 1; the label is the row of the failure table).",
        &[(
            format!("{{cause=\"{}\"}}", attempt.cause().as_str()),
            "1".to_string(),
        )],
    );
    let now = attempt.at;
    gauge(
        "slipway_update_blocked_seconds",
        "Seconds automatic updates have not installed the newest release offered (0: up to date).",
        &plain(blocked_seconds(state, now).to_string()),
    );
    if let Some(b) = &state.blocked {
        gauge(
            "slipway_update_blocked_since_timestamp_seconds",
            "Unix time since when updates have not installed the newest release offered.",
            &plain(b.since.unix().to_string()),
        );
    }
    gauge(
        "slipway_update_stalled",
        "1 when updates have been blocked longer than stalled_after_hours.",
        &plain(u8::from(stall(config, state, now).is_some()).to_string()),
    );
    if let (Some(index), Some(secs)) = (&state.index, index_expires_in(state, now)) {
        gauge(
            "slipway_index_expires_in_seconds",
            "Seconds until the channel index this host holds expires (negative: expired).",
            &plain(secs.to_string()),
        );
        gauge(
            "slipway_index_expiry_timestamp_seconds",
            "Unix time the channel index this host holds expires.",
            &plain(index.expires.unix().to_string()),
        );
    }
    out
}

/// journald `PRIORITY` of an attempt: its cause's ([`Cause::priority`]),
/// raised to 4 (warning) when updates have stalled or the held channel
/// index expires within `expiry_warning_days`, and to 2 (critical) when
/// the old release was left unhealthy (`CRITICAL` in the message).
pub fn priority(config: &Config, state: &HostState, attempt: &Attempt) -> u8 {
    // A recovery or flip back that left the old release unhealthy needs a
    // human now, whatever its cause.
    let own = if attempt.message.contains("CRITICAL") {
        2
    } else {
        attempt.cause().priority()
    };
    let warn =
        stall(config, state, attempt.at).is_some() || expiry(config, state, attempt.at).is_some();
    if warn {
        own.min(4)
    } else {
        own
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
        AttemptResult::Refused => MESSAGE_ID_REFUSED,
        AttemptResult::Recovered => MESSAGE_ID_RECOVERED,
    }
}

/// The structured fields of the journald entry for `attempt`, with the
/// host's warnings (a stall, an index about to expire) in the message.
pub fn journald_fields_for(
    config: &Config,
    state: &HostState,
    attempt: &Attempt,
    current: Option<&Current<'_>>,
) -> Vec<(&'static str, String)> {
    let mut fields = journald_fields(attempt, current);
    let mut warnings = String::new();
    if let Some(st) = stall(config, state, attempt.at) {
        warnings.push_str(&format!(
            "; updates STALLED for {} (since {}; stalled_after_hours = {})",
            human_duration(st.seconds),
            st.since,
            config.update.stalled_after_hours
        ));
        fields.push(("SLIPWAY_STALLED_SECONDS", st.seconds.to_string()));
    }
    if let Some(e) = expiry(config, state, attempt.at) {
        warnings.push_str(&format!(
            "; the channel index of {} {}: the publisher must run `slipway-pack refresh`",
            e.channel,
            e.describe()
        ));
        fields.push(("SLIPWAY_INDEX_EXPIRES", e.expires.to_string()));
    }
    for (name, value) in fields.iter_mut() {
        match *name {
            "MESSAGE" => value.push_str(&warnings),
            "PRIORITY" => *value = priority(config, state, attempt).to_string(),
            _ => {}
        }
    }
    fields
}

/// The structured fields of the journald entry for `attempt` alone.
pub fn journald_fields(
    attempt: &Attempt,
    current: Option<&Current<'_>>,
) -> Vec<(&'static str, String)> {
    let subject = attempt
        .version
        .as_ref()
        .map(|v| format!(" {v}"))
        .unwrap_or_default();
    let cause = attempt.cause();
    let mut fields = vec![
        (
            "MESSAGE",
            format!(
                "slipway {}{subject}: {}: {}",
                attempt.op, attempt.result, attempt.message
            ),
        ),
        ("PRIORITY", cause.priority().to_string()),
        ("SYSLOG_IDENTIFIER", "slipway".to_string()),
        ("MESSAGE_ID", message_id(attempt.result).to_string()),
        ("SLIPWAY_RESULT", attempt.result.as_str().to_string()),
        ("SLIPWAY_CAUSE", cause.as_str().to_string()),
        ("SLIPWAY_OP", attempt.op.clone()),
        ("SLIPWAY_DURATION_MS", attempt.duration_ms.to_string()),
    ];
    if attempt.auto {
        fields.push(("SLIPWAY_AUTO", "1".to_string()));
    }
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
        fields.push(("SLIPWAY_APP", c.release.app.clone()));
        fields.push(("SLIPWAY_CURRENT_VERSION", c.release.version.to_string()));
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

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse(s).expect("time")
    }

    fn attempt(cause: Cause, at: &str, message: &str) -> Attempt {
        Attempt {
            op: "update".into(),
            at: ts(at),
            result: cause.result(),
            from_version: Some(Version::new(2, 0, 0)),
            version: Some(Version::new(3, 0, 0)),
            release_id: None,
            message: message.into(),
            duration_ms: 1,
            cause: Some(cause),
            auto: true,
        }
    }

    #[test]
    fn a_rollback_banner_leads_with_the_state_and_names_both_versions() {
        let config = Config::default();
        let state = HostState::default();
        let a = attempt(
            Cause::Unhealthy,
            "2026-03-01T10:00:00Z",
            &"health check failed: HTTP 503 ".repeat(40),
        );
        assert_eq!(
            banner_line(&config, &state, &a, None),
            "ROLLED BACK 3.0.0 → running 2.0.0: unhealthy (see slipway status)"
        );
    }

    #[test]
    fn every_banner_fits_in_160_characters() {
        let mut config = Config::default();
        config.update.enabled = false;
        config.file = PathBuf::from(format!("/etc/{}/update.toml", "x".repeat(300)));
        let mut state = HostState::default();
        state.disable("y".repeat(500), ts("2026-03-01T00:00:00Z"));
        state.blocked = Some(crate::state::Blocked {
            since: ts("2026-02-20T00:00:00Z"),
            cause: Cause::IndexExpired,
            reason: "z".repeat(500),
        });
        state.index = Some(crate::state::HeldIndex {
            channel: "stable".into(),
            version: 7,
            expires: ts("2026-03-02T00:00:00Z"),
            newest: Some(Version::new(3, 0, 0)),
        });
        for cause in Cause::ALL {
            let a = attempt(cause, "2026-03-01T10:00:00Z", &"w ".repeat(400));
            let line = banner_line(&config, &state, &a, None);
            assert!(line.chars().count() <= BANNER_MAX_CHARS, "{cause}: {line}");
            assert!(!line.contains('\n'));
        }
    }

    #[test]
    fn a_stall_leads_the_banner_and_raises_the_journal_priority() {
        let config = Config::default();
        let mut state = HostState::default();
        state.blocked = Some(crate::state::Blocked {
            since: ts("2026-03-01T00:00:00Z"),
            cause: Cause::Ineligible,
            reason: "skipped (dirty_release): …".into(),
        });
        state.index = Some(crate::state::HeldIndex {
            channel: "stable".into(),
            version: 7,
            expires: ts("2026-04-01T00:00:00Z"),
            newest: Some(Version::new(3, 0, 0)),
        });
        let early = attempt(
            Cause::Ineligible,
            "2026-03-01T10:00:00Z",
            "skipped (dirty_release): x",
        );
        assert!(banner_line(&config, &state, &early, None).starts_with("SKIPPED "));
        assert_eq!(priority(&config, &state, &early), 5);
        let late = attempt(
            Cause::Ineligible,
            "2026-03-02T02:00:00Z",
            "skipped (dirty_release): x",
        );
        assert_eq!(
            banner_line(&config, &state, &late, None),
            "STALLED 26 hours (3.0.0 offered) → running 2.0.0: not eligible (see slipway status)"
        );
        assert_eq!(priority(&config, &state, &late), 4);
        let fields = journald_fields_for(&config, &state, &late, None);
        let message = &fields
            .iter()
            .find(|(k, _)| *k == "MESSAGE")
            .expect("message")
            .1;
        assert!(message.contains("STALLED for 26 hours"), "{message}");
        let metrics = metrics_text(&config, &state, &late, None);
        assert!(
            metrics.contains("\nslipway_update_blocked_seconds 93600\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("\nslipway_update_stalled 1\n"),
            "{metrics}"
        );
    }

    #[test]
    fn an_index_about_to_expire_is_a_warning_everywhere() {
        let config = Config::default();
        let mut state = HostState::default();
        state.index = Some(crate::state::HeldIndex {
            channel: "stable".into(),
            version: 7,
            expires: ts("2026-03-04T10:00:00Z"),
            newest: None,
        });
        let a = attempt(Cause::UpToDate, "2026-03-01T10:00:00Z", "up to date");
        let banner = banner_line(&config, &state, &a, None);
        assert!(banner.contains("index expires in 3 days"), "{banner}");
        assert_eq!(priority(&config, &state, &a), 4);
        let metrics = metrics_text(&config, &state, &a, None);
        assert!(
            metrics.contains("\nslipway_index_expires_in_seconds 259200\n"),
            "{metrics}"
        );
        // Ten days out: quiet.
        let far = attempt(Cause::UpToDate, "2026-02-20T10:00:00Z", "up to date");
        assert_eq!(priority(&config, &state, &far), 6);
        assert!(!banner_line(&config, &state, &far, None).contains("expire"));
    }

    #[test]
    fn shorten_cuts_at_a_word_and_marks_the_cut() {
        assert_eq!(shorten("short", 10), "short");
        let cut = shorten("the quick brown fox jumps over the lazy dog", 20);
        assert!(cut.chars().count() <= 20, "{cut}");
        assert_eq!(cut, "the quick brown fox…");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

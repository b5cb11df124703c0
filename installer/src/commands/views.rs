//! What the reporting commands print, as text or `--json`: the preview of
//! a release (`check`, `--dry-run`, `--interactive`), `status`, `history`,
//! `verify`, `gc`, and the one line of `enable` / `disable`.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use slipway_formats::channel::Timestamp;
use slipway_formats::state::AttemptResult;
use slipway_formats::{ReleaseId, Version};

use crate::diff::Drift;
use crate::journal;
use crate::layout::Layout;
use crate::report;
use crate::state::{human_duration, plural, Attempt};
use crate::switch;
use crate::transaction::{self, Failure, Host, InstallOptions, Preview, TxnError};
use crate::Exit;

use super::discover::{configured_source, resolve, Resolved};
use super::dispatch::{load_state, print_failure, print_json, CommandError};

/// The most `status` reads of the banner file: one line of a few hundred
/// characters, so anything longer is not a banner slipway wrote.
const MAX_BANNER_BYTES: u64 = 4 * 1024;

/// `enable` / `disable` output: one line, or JSON with `--json`.
pub(super) fn print_switch_result(json: bool, enabled: bool, message: &str) {
    if json {
        print_json(&serde_json::json!({
            "auto_update_enabled": enabled,
            "message": message,
        }));
    } else {
        slipway_fs::outln!("{message}");
    }
}

pub(super) fn print_preview(p: &Preview, dry_run: bool) {
    write_preview(&mut std::io::stdout().lock(), p, dry_run);
}

pub(super) fn write_preview(out: &mut dyn Write, p: &Preview, dry_run: bool) {
    let _ = writeln!(
        out,
        "{}{} {} ({}), {} bytes, signed by key {}",
        if dry_run { "dry run: " } else { "" },
        p.app,
        p.version,
        p.release_id,
        p.size,
        p.signer
    );
    let _ = writeln!(
        out,
        "running: {}",
        p.running_version
            .as_ref()
            .map_or_else(|| "nothing (first install)".into(), |v| v.to_string())
    );
    let _ = writeln!(
        out,
        "schema: data {} -> release {}{}",
        p.data_schema
            .map_or_else(|| "unknown".into(), |s| s.to_string()),
        p.schema_version,
        if p.migrates {
            " (the migrate hook would run)"
        } else {
            " (no migration)"
        }
    );
    if let Some(diff) = &p.diff {
        let _ = writeln!(out, "{diff}");
    }
    match (p.checks_passed, &p.checks_error) {
        (Some(true), _) => {
            let _ = writeln!(out, "checks: passed");
        }
        (Some(false), Some(e)) => {
            let _ = writeln!(out, "checks: FAILED: {e}");
        }
        _ => {}
    }
    if let Some(r) = &p.refused {
        let _ = writeln!(out, "would be refused: {r}");
    }
    if let Some(i) = &p.ineligible {
        let _ = writeln!(out, "would be skipped: {i}");
    }
    if dry_run {
        let _ = writeln!(out, "nothing was changed");
    }
}

/// `slipway check`: discover + verify + diff, read-only.
pub(super) fn check(host: &Host, allow_expired: bool, json: bool) -> Result<Exit, CommandError> {
    let src = configured_source(host.config)?;
    let opts = InstallOptions {
        op: crate::journal::Operation::Check,
        auto: true,
        force: false,
        allow_downgrade: false,
    };
    let candidate = match resolve(host, &src, &opts, allow_expired, false)? {
        Resolved::Nothing(o) => {
            if json {
                print_json(&serde_json::json!({
                    "update_available": false,
                    "message": o.message,
                }));
            } else {
                slipway_fs::outln!("{}", o.message);
            }
            return Ok(Exit::Done);
        }
        Resolved::Install(c) => c,
    };
    let preview =
        transaction::preview(host, &candidate, &opts, false).map_err(|f| CommandError {
            exit: Exit::Failed,
            failure: f,
        })?;
    if json {
        print_json(&serde_json::json!({
            "update_available": preview.refused.is_none(),
            "candidate": preview,
        }));
    } else {
        slipway_fs::outln!("update available:");
        print_preview(&preview, false);
    }
    Ok(if preview.refused.is_some() {
        Exit::Failed
    } else {
        Exit::Done
    })
}

#[derive(Debug, Serialize)]
struct ReleaseView {
    version: Version,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<ReleaseId>,
    id12: String,
    dir: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    installed_at: Option<Timestamp>,
    schema_version: u32,
}

#[derive(Debug, Serialize)]
struct JournalView {
    txn: String,
    op: String,
    step: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<Version>,
    started_at: Timestamp,
}

#[derive(Debug, Serialize)]
struct AutoUpdateView {
    enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// The configuration setting that keeps it off (`slipway enable` cannot
    /// change it).
    #[serde(skip_serializing_if = "Option::is_none")]
    setting: Option<String>,
    /// Set by failures or `slipway disable`: `slipway enable` turns it on.
    #[serde(skip_serializing_if = "Option::is_none")]
    disabled: Option<crate::state::Disabled>,
}

#[derive(Debug, Serialize)]
struct StallView {
    /// Longer than `stalled_after_hours`.
    stalled: bool,
    since: Timestamp,
    seconds: u64,
    cause: crate::failure_model::Cause,
    reason: String,
}

#[derive(Debug, Serialize)]
struct IndexView {
    channel: String,
    version: u64,
    expires: Timestamp,
    expires_in_seconds: i64,
    /// Within `expiry_warning_days`, or expired.
    expiry_warning: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    newest: Option<Version>,
}

#[derive(Debug, Serialize)]
struct StatusView {
    root: PathBuf,
    channel: String,
    /// Updates have not reached what the source offers (`None`: they have).
    #[serde(skip_serializing_if = "Option::is_none")]
    blocked: Option<StallView>,
    /// The channel index last accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<IndexView>,
    /// The timer's next run, as systemd says it (only under systemd, when
    /// the timer is installed).
    #[serde(skip_serializing_if = "Option::is_none")]
    next_timer_run: Option<String>,
    current: Option<ReleaseView>,
    previous: Option<ReleaseView>,
    last_attempt: Option<Attempt>,
    last_success: Option<Attempt>,
    day: String,
    attempts_today: u32,
    failures_today: u32,
    auto_update: AutoUpdateView,
    pending: Option<crate::state::Pending>,
    bad_releases: Vec<crate::state::BadRelease>,
    journal: Option<JournalView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    banner: Option<String>,
}

fn release_view(layout: &Layout, target: Option<PathBuf>) -> Option<ReleaseView> {
    let dir = switch::resolve_target(layout, &target?);
    let installed = transaction::read_installed_head(layout, &dir).ok()?;
    let id12 = installed.id.map(|i| i.short()).unwrap_or_else(|| {
        dir.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.rsplit('-').next())
            .unwrap_or_default()
            .to_string()
    });
    Some(ReleaseView {
        version: installed.head.version.clone(),
        id: installed.id,
        id12,
        installed_at: installed.installed_at,
        schema_version: installed.head.schema_version,
        dir,
    })
}

/// The next run of the update timer, from systemd, when systemd runs this
/// host and the timer is loaded; `None` otherwise.
fn next_timer_run(now: Timestamp) -> Option<String> {
    if !Path::new("/run/systemd/system").is_dir() {
        return None;
    }
    let argv: Vec<String> = [
        "systemctl",
        "show",
        super::UPDATE_TIMER,
        "-p",
        "LoadState,NextElapseUSecRealtime,NextElapseUSecMonotonic",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = crate::hooks::run_command(
        &argv,
        Path::new("/"),
        &[],
        std::time::Duration::from_secs(5),
    )
    .ok()?;
    // Seconds since boot, the clock of a monotonic timer (`OnUnitActiveSec=`).
    let uptime = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok());
    next_elapse(&out.stdout_tail, uptime, now)
}

/// The timer's next run from `systemctl show` output, when the timer is
/// loaded and has one: its calendar time (`NextElapseUSecRealtime`), or for
/// a monotonic timer (slipway's: `OnUnitActiveSec=`), how long from now,
/// from `NextElapseUSecMonotonic` (a time span since boot) and `uptime`.
fn next_elapse(show: &str, uptime: Option<f64>, now: Timestamp) -> Option<String> {
    let mut loaded = false;
    let mut realtime = None;
    let mut monotonic = None;
    let set = |v: &str| {
        let v = v.trim();
        (!v.is_empty() && v != "n/a" && v != "0").then(|| v.to_string())
    };
    for line in show.lines() {
        match line.split_once('=') {
            Some(("LoadState", v)) => loaded = v.trim() == "loaded",
            Some(("NextElapseUSecRealtime", v)) => realtime = set(v),
            Some(("NextElapseUSecMonotonic", v)) => monotonic = set(v),
            _ => {}
        }
    }
    if !loaded {
        return None;
    }
    if realtime.is_some() {
        return realtime;
    }
    let since_boot = parse_timespan(&monotonic?)?;
    let left = (since_boot - uptime?).max(0.0).round() as u64;
    let at = Timestamp(now.0 + time::Duration::seconds(i64::try_from(left).ok()?));
    Some(format!(
        "in {} (at {at})",
        crate::state::human_duration(left)
    ))
}

/// Seconds in a systemd time span as `systemctl show` prints it:
/// `1h 2min 3.500s`, `250ms`.
fn parse_timespan(text: &str) -> Option<f64> {
    let mut total = 0.0;
    for word in text.split_whitespace() {
        let split = word.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, unit) = word.split_at(split);
        let n: f64 = number.parse().ok()?;
        let scale = match unit {
            "y" => 31_557_600.0,
            "month" => 2_629_800.0,
            "w" => 604_800.0,
            "d" => 86_400.0,
            "h" => 3_600.0,
            "min" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            _ => return None,
        };
        total += n * scale;
    }
    Some(total)
}

pub(super) fn status(host: &Host, json: bool) -> Result<Exit, CommandError> {
    let layout = &host.layout;
    let links = switch::read_links(layout).map_err(TxnError::from)?;
    let state = load_state(host)?;
    let journal = journal::load(layout).map_err(TxnError::from)?;
    let config = host.config;
    let now = host.clock.now();
    let setting = report::disabling_setting(config);
    let auto = AutoUpdateView {
        enabled: setting.is_none() && state.disabled.is_none(),
        reason: report::disabled_reason(config, &state),
        setting,
        disabled: state.disabled.clone(),
    };
    let stalled = report::stall(config, &state, now).is_some();
    let blocked = state.blocked.as_ref().map(|b| StallView {
        stalled,
        since: b.since,
        seconds: report::blocked_seconds(&state, now),
        cause: b.cause,
        reason: b.reason.clone(),
    });
    let expiry_warning = report::expiry(config, &state, now).is_some();
    let index = state.index.as_ref().map(|i| IndexView {
        channel: i.channel.clone(),
        version: i.version,
        expires: i.expires,
        expires_in_seconds: i.expires.unix().saturating_sub(now.unix()),
        expiry_warning,
        newest: i.newest.clone(),
    });
    let view = StatusView {
        root: layout.root().to_path_buf(),
        channel: config.update.channel.clone(),
        blocked,
        index,
        next_timer_run: next_timer_run(now),
        current: release_view(layout, links.current),
        previous: release_view(layout, links.previous),
        last_attempt: state.last_attempt.clone(),
        last_success: state.last_success.clone(),
        day: state.day.clone(),
        attempts_today: state.attempts_today,
        failures_today: state.failures_today,
        auto_update: auto,
        pending: state.pending.clone(),
        bad_releases: state.bad_releases.clone(),
        journal: journal.map(|j| JournalView {
            txn: j.txn,
            op: j.op.name().to_string(),
            step: j.step.to_string(),
            version: j.version,
            started_at: j.started_at,
        }),
        banner: slipway_fs::read_text_capped(&layout.banner_file(), MAX_BANNER_BYTES)
            .ok()
            .map(|s| s.trim().to_string()),
    };
    if json {
        print_json(&view);
        return Ok(Exit::Done);
    }
    let paint = crate::term::Paint::stdout();
    let mut out = std::io::stdout().lock();
    // What needs a human leads.
    if let Some(b) = view.blocked.as_ref().filter(|b| b.stalled) {
        let _ = writeln!(
            out,
            "{} automatic updates have not installed the newest release for {} (since {}; stalled_after_hours = {}): {}",
            paint.bad("STALLED:"),
            human_duration(b.seconds),
            b.since,
            config.update.stalled_after_hours,
            b.reason
        );
    }
    if let Some(i) = view.index.as_ref().filter(|i| i.expiry_warning) {
        let e = report::Expiry {
            channel: i.channel.clone(),
            expires: i.expires,
            in_seconds: i.expires_in_seconds,
        };
        let _ = writeln!(
            out,
            "{} the channel index of {} {}; the publisher must run `slipway-pack refresh --channel {}`",
            paint.warn("EXPIRY:"),
            i.channel,
            e.describe(),
            i.channel
        );
    }
    let rel = |r: &Option<ReleaseView>| match r {
        Some(r) => format!(
            "{} ({}){}",
            paint.bold(&r.version.to_string()),
            r.id12,
            r.installed_at
                .map(|t| format!(", installed {t}"))
                .unwrap_or_default()
        ),
        None => "none".to_string(),
    };
    let _ = writeln!(out, "root:        {}", view.root.display());
    let _ = writeln!(out, "current:     {}", rel(&view.current));
    let _ = writeln!(out, "previous:    {}", rel(&view.previous));
    let index_text = match &view.index {
        Some(i) if i.channel == view.channel => format!(
            "; index v{} expires {}{}",
            i.version,
            i.expires,
            i.newest
                .as_ref()
                .map(|n| format!(", newest {n}"))
                .unwrap_or_default()
        ),
        _ => "; no index accepted yet".to_string(),
    };
    let _ = writeln!(out, "channel:     {}{index_text}", view.channel);
    if let Some(next) = &view.next_timer_run {
        let _ = writeln!(out, "next check:  {next} ({})", super::UPDATE_TIMER);
    }
    if let Some(p) = &view.pending {
        let _ = writeln!(
            out,
            "update ready: {} ({}) staged at {}; run `slipway apply`",
            p.version,
            p.release_id.short(),
            p.staged_at
        );
    }
    match &view.last_attempt {
        Some(a) => {
            let result = a.result.to_string();
            let result = match a.result {
                AttemptResult::Updated | AttemptResult::UpToDate => paint.good(&result),
                AttemptResult::Failed | AttemptResult::RolledBack => paint.bad(&result),
                _ => paint.warn(&result),
            };
            let cause = a.cause();
            let _ = writeln!(
                out,
                "last attempt: {} {} ({}) at {}: {}",
                a.op, result, cause, a.at, a.message
            );
        }
        None => {
            let _ = writeln!(out, "last attempt: none");
        }
    }
    if let Some(b) = view.blocked.as_ref().filter(|b| !b.stalled) {
        let _ = writeln!(
            out,
            "blocked:     since {} ({}; a warning after {})",
            b.since,
            b.cause,
            plural(config.update.stalled_after_hours, "hour", "hours")
        );
    }
    let _ = writeln!(
        out,
        "today ({}): automatic attempts {} of {}, failures {} of {}",
        if view.day.is_empty() { "-" } else { &view.day },
        view.attempts_today,
        config.update.max_attempts_per_day,
        view.failures_today,
        config.update.max_failures_per_day
    );
    let mut off = Vec::new();
    if let Some(setting) = &view.auto_update.setting {
        off.push(format!(
            "{setting}; change it there (`slipway enable` cannot)"
        ));
    }
    if let Some(d) = &view.auto_update.disabled {
        off.push(format!(
            "disabled by {} at {}: {}; `slipway enable` turns it back on",
            d.by, d.at, d.reason
        ));
    }
    if off.is_empty() {
        let _ = writeln!(out, "auto-update: {}", paint.good("enabled"));
    } else {
        let _ = writeln!(
            out,
            "auto-update: {}: {}",
            paint.bad("DISABLED"),
            off.join("; and ")
        );
    }
    if view.bad_releases.is_empty() {
        let _ = writeln!(out, "bad list:    empty");
    } else {
        let _ = writeln!(out, "bad list:");
        for b in &view.bad_releases {
            let _ = writeln!(
                out,
                "  {} ({}) since {}: {}",
                paint.bad(&b.version.to_string()),
                b.id.short(),
                b.at,
                b.reason
            );
        }
    }
    if let Some(j) = &view.journal {
        let _ = writeln!(
            out,
            "{}   {} of {} (txn {}) at step {}; the next command (or `slipway recover`) finishes or undoes it",
            paint.warn("IN FLIGHT:"),
            j.op,
            j.version
                .as_ref()
                .map_or_else(|| "?".to_string(), |v| v.to_string()),
            j.txn,
            j.step
        );
    }
    Ok(Exit::Done)
}

pub(super) fn history(host: &Host, json: bool, limit: Option<usize>) -> Result<Exit, CommandError> {
    let entries = report::read_history(&host.layout, limit).map_err(|e| {
        CommandError::new(
            Exit::Failed,
            "cannot read the history",
            e,
            "see the file named above",
        )
    })?;
    if json {
        print_json(&entries);
        return Ok(Exit::Done);
    }
    let mut out = std::io::stdout().lock();
    if entries.is_empty() {
        let _ = writeln!(out, "no attempts yet");
    }
    for a in entries {
        let versions = match (&a.from_version, &a.version) {
            (Some(f), Some(t)) => format!("{f} -> {t}"),
            (None, Some(t)) => format!("-> {t}"),
            (Some(f), None) => f.to_string(),
            (None, None) => "-".to_string(),
        };
        let _ = writeln!(
            out,
            "{}  {:<8} {:<11} {:<20} {}",
            a.at, a.op, a.result, versions, a.message
        );
    }
    Ok(Exit::Done)
}

#[derive(Serialize)]
struct VerifyView<'a> {
    dir: &'a Path,
    version: &'a Version,
    clean: bool,
    drift: &'a [Drift],
}

pub(super) fn verify_cmd(host: &Host, json: bool, quick: bool) -> Result<Exit, CommandError> {
    if quick && verify_untouched(host, json) {
        return Ok(Exit::Done);
    }
    let running = transaction::running_release(&host.layout)
        .map_err(|f| CommandError {
            exit: Exit::Failed,
            failure: f,
        })?
        .ok_or_else(|| {
            CommandError::new(
                Exit::Failed,
                "nothing to verify",
                format!("{} does not exist", host.layout.current_link().display()),
                "install a release first: `slipway install SOURCE`",
            )
        })?;
    // Read-only: the quick check trusts the records but writes none.
    let rule = crate::clean::CleanRule {
        deep: !quick,
        record: false,
        log: Some(host.log),
    };
    let drift = crate::clean::check_release(&host.layout, &running.dir, &running.manifest, rule)
        .map(|c| c.drift)
        .map_err(|e| {
            CommandError::new(
                Exit::Failed,
                format!("cannot check {}", running.dir.display()),
                e,
                "check the permissions of the install root",
            )
        })?;
    if json {
        print_json(&VerifyView {
            dir: &running.dir,
            version: &running.manifest.version,
            clean: drift.is_empty(),
            drift: &drift,
        });
    } else if drift.is_empty() {
        slipway_fs::outln!(
            "{} {} in {}: clean ({} entries match the manifest)",
            running.manifest.app,
            running.manifest.version,
            running.dir.display(),
            running.manifest.files.len()
        );
    } else {
        slipway_fs::outln!(
            "{} {} in {}: {} from the manifest:",
            running.manifest.app,
            running.manifest.version,
            running.dir.display(),
            plural(drift.len() as u64, "difference", "differences")
        );
        for d in &drift {
            slipway_fs::outln!("  {d}");
        }
    }
    if drift.is_empty() {
        Ok(Exit::Done)
    } else {
        if !json {
            print_failure(&Failure::new(
                "the running release no longer matches its manifest",
                format!(
                    "{} listed above",
                    plural(drift.len() as u64, "difference", "differences")
                ),
                crate::diff::drift_hint(&drift),
            ));
        }
        Ok(Exit::Failed)
    }
}

/// `verify --quick` of a release whose whole-tree identity record still
/// vouches for every path: clean, said without parsing its manifest (the
/// app and version come from the release records). `false` when the
/// record does not vouch (or there is no record, or no running release):
/// the caller then runs the full comparison, which names any drift.
fn verify_untouched(host: &Host, json: bool) -> bool {
    let started = std::time::Instant::now();
    let Ok(Some(running)) = transaction::running_summary(&host.layout) else {
        return false;
    };
    let Some((entries, files)) =
        crate::identity::record_vouches_for_tree(&host.layout, &running.dir)
    else {
        return false;
    };
    host.log.debug(format!(
        "clean-tree rule on {}: {} ms, 0 of {files} files hashed (every path still as its \
         whole-tree identity record says; nothing read or listed), clean",
        running.dir.display(),
        started.elapsed().as_millis()
    ));
    if json {
        print_json(&VerifyView {
            dir: &running.dir,
            version: running.version(),
            clean: true,
            drift: &[],
        });
    } else {
        slipway_fs::outln!(
            "{} {} in {}: clean ({} entries match the manifest)",
            running.app(),
            running.version(),
            running.dir.display(),
            entries
        );
    }
    true
}

pub(super) fn gc_cmd(host: &Host, json: bool) -> Result<Exit, CommandError> {
    // Fails early on a state file slipway cannot read.
    load_state(host)?;
    let protected = transaction::gc_protected(host);
    let cfg = &host.config.update;
    match crate::gc::collect(
        &host.layout,
        cfg.keep_releases as usize,
        cfg.keep_snapshots as usize,
        &protected,
    ) {
        Ok(r) if json => {
            print_json(&serde_json::json!({
                "removed_releases": r.removed_releases,
                "removed_snapshots": r.removed_snapshots,
                "removed_downloads": r.removed_downloads,
                "removed_temp_files": r.removed_temp_files,
                "kept": r.kept,
            }));
            Ok(Exit::Done)
        }
        Ok(_) if host.log.is_quiet() => Ok(Exit::Done),
        Ok(r) => {
            let n = |v: usize| v as u64;
            slipway_fs::outln!(
                "removed {}, {}, {}, {}; kept {}",
                plural(n(r.removed_releases.len()), "release", "releases"),
                plural(n(r.removed_snapshots.len()), "snapshot", "snapshots"),
                plural(n(r.removed_downloads.len()), "download", "downloads"),
                plural(
                    n(r.removed_temp_files.len()),
                    "temporary file",
                    "temporary files"
                ),
                r.kept.len()
            );
            for p in r
                .removed_releases
                .iter()
                .chain(&r.removed_snapshots)
                .chain(&r.removed_downloads)
            {
                host.log.debug(format!("removed {}", p.display()));
            }
            Ok(Exit::Done)
        }
        Err(e) => Err(CommandError::new(
            Exit::Failed,
            "garbage collection did not finish",
            e,
            "see the path named above",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_timer_run_is_read_only_from_a_loaded_timer() {
        let now = Timestamp::parse("2026-03-02T10:00:00Z").expect("time");
        assert_eq!(
            next_elapse(
                "LoadState=loaded\nNextElapseUSecRealtime=Mon 2026-03-02 10:00:00 UTC\n",
                None,
                now
            ),
            Some("Mon 2026-03-02 10:00:00 UTC".to_string())
        );
        // A monotonic timer: 1h 2min after boot, booted 1h ago.
        assert_eq!(
            next_elapse(
                "LoadState=loaded\nNextElapseUSecRealtime=\nNextElapseUSecMonotonic=1h 2min\n",
                Some(3600.0),
                now
            ),
            Some("in 2 minutes (at 2026-03-02T10:02:00Z)".to_string())
        );
        assert_eq!(
            next_elapse("LoadState=not-found\nNextElapseUSecRealtime=\n", None, now),
            None
        );
        assert_eq!(
            next_elapse(
                "LoadState=loaded\nNextElapseUSecRealtime=n/a\nNextElapseUSecMonotonic=0\n",
                Some(1.0),
                now
            ),
            None
        );
        assert_eq!(parse_timespan("1h 2min 3.500s"), Some(3723.5));
        assert_eq!(parse_timespan("250ms"), Some(0.25));
        assert_eq!(parse_timespan("soon"), None);
    }
}

//! What the reporting commands print, as text or `--json`: the preview of
//! a release (`check`, `--dry-run`, `--interactive`), `status`, `history`,
//! `verify`, `gc`, and the one line of `enable` / `disable`.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use slipway_formats::channel::Timestamp;
use slipway_formats::state::AttemptResult;
use slipway_formats::{ReleaseId, Version};

use crate::diff::{verify_installed, Drift};
use crate::journal;
use crate::layout::Layout;
use crate::report;
use crate::state::Attempt;
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
}

#[derive(Debug, Serialize)]
struct StatusView {
    root: PathBuf,
    channel: String,
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
    let installed = transaction::read_installed(layout, &dir).ok()?;
    let id12 = installed.id.map(|i| i.short()).unwrap_or_else(|| {
        dir.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.rsplit('-').next())
            .unwrap_or_default()
            .to_string()
    });
    Some(ReleaseView {
        version: installed.manifest.version.clone(),
        id: installed.id,
        id12,
        installed_at: installed.installed_at,
        schema_version: installed.manifest.schema_version,
        dir,
    })
}

pub(super) fn status(host: &Host, json: bool) -> Result<Exit, CommandError> {
    let layout = &host.layout;
    let links = switch::read_links(layout).map_err(TxnError::from)?;
    let state = load_state(host)?;
    let journal = journal::load(layout).map_err(TxnError::from)?;
    let config = host.config;
    let auto = AutoUpdateView {
        enabled: config.update.enabled && state.disabled.is_none(),
        reason: if !config.update.enabled {
            Some(format!(
                "[update] enabled = false in {} (or BOT_AUTO_UPDATE=0)",
                config.file.display()
            ))
        } else {
            state
                .disabled
                .as_ref()
                .map(|d| format!("disabled by {} at {}: {}", d.by, d.at, d.reason))
        },
    };
    let view = StatusView {
        root: layout.root().to_path_buf(),
        channel: config.update.channel.clone(),
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
            let _ = writeln!(
                out,
                "last attempt: {} {} at {}: {}",
                a.op, result, a.at, a.message
            );
        }
        None => {
            let _ = writeln!(out, "last attempt: none");
        }
    }
    let _ = writeln!(
        out,
        "today ({}): {} attempts, {} failures (max {} / {})",
        if view.day.is_empty() { "-" } else { &view.day },
        view.attempts_today,
        view.failures_today,
        config.update.max_attempts_per_day,
        config.update.max_failures_per_day
    );
    let _ = writeln!(
        out,
        "auto-update: {}{}",
        if view.auto_update.enabled {
            paint.good("enabled")
        } else {
            paint.bad("DISABLED")
        },
        view.auto_update
            .reason
            .as_ref()
            .map(|r| format!(" ({r}); `slipway enable` turns it back on"))
            .unwrap_or_default()
    );
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

pub(super) fn verify_cmd(host: &Host, json: bool) -> Result<Exit, CommandError> {
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
    let drift = verify_installed(&running.dir, &running.manifest).map_err(|e| {
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
            "{} {} in {}: {} difference(s) from the manifest:",
            running.manifest.app,
            running.manifest.version,
            running.dir.display(),
            drift.len()
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
                "the running release was modified on the host",
                format!("{} difference(s) listed above", drift.len()),
                "ship the change as a release, or reinstall the running one with `slipway install --force`",
            ));
        }
        Ok(Exit::Failed)
    }
}

pub(super) fn gc_cmd(host: &Host, json: bool) -> Result<Exit, CommandError> {
    let state = load_state(host)?;
    let protected: Vec<PathBuf> = state.pending.iter().map(|p| p.dir.clone()).collect();
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
        Ok(r) => {
            slipway_fs::outln!(
                "removed {} release(s), {} snapshot(s), {} download(s), {} temporary file(s); kept {}",
                r.removed_releases.len(),
                r.removed_snapshots.len(),
                r.removed_downloads.len(),
                r.removed_temp_files.len(),
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

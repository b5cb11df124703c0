//! `install` and `update`: from a resolved candidate to the transaction,
//! directly, after a "y" (`--interactive`), or as a preview that changes
//! nothing (`--dry-run`).

use std::io::Write;

use serde::Serialize;

use crate::failure_model::Cause;
use crate::source::Source;
use crate::transaction::{self, Host, InstallOptions, Outcome, Preview};
use crate::Exit;

use super::discover::{record, resolve, Resolved};
use super::dispatch::{emit, print_json, CommandError};
use super::views::{print_preview, write_preview};

pub(super) fn install_from(
    host: &Host,
    src: &Source,
    opts: &InstallOptions,
    allow_expired: bool,
    json: bool,
) -> Result<Exit, CommandError> {
    match resolve(host, src, opts, allow_expired, true)? {
        Resolved::Nothing(o) => Ok(emit(host, &o, json)),
        Resolved::Install(c) => {
            let o = transaction::install(host, &c, opts)?;
            Ok(emit(host, &o, json))
        }
    }
}

/// `install --interactive` / `update --interactive`, the seed's phase 0
/// manual mode: discover and verify, stage and check the release in a
/// scratch directory, show the file-level diff, and run the transaction
/// only after the operator answers `y` on stdin. Any other answer, or end
/// of input, changes nothing and exits 4 (skipped).
pub(super) fn install_interactive(
    host: &Host,
    src: &Source,
    opts: &InstallOptions,
    allow_expired: bool,
    json: bool,
) -> Result<Exit, CommandError> {
    let candidate = match resolve(host, src, opts, allow_expired, true)? {
        Resolved::Nothing(o) => return Ok(emit(host, &o, json)),
        Resolved::Install(c) => c,
    };
    host.log
        .info("verifying, staging and checking in a scratch directory");
    let preview = transaction::preview(host, &candidate, opts, true).map_err(|f| CommandError {
        exit: Exit::Failed,
        failure: f,
    })?;
    // With --json, stdout carries only the final result.
    if json {
        write_preview(&mut std::io::stderr().lock(), &preview, false);
    } else {
        write_preview(&mut std::io::stdout().lock(), &preview, false);
    }
    if preview.refused.is_some() || preview.checks_passed == Some(false) {
        let why = preview
            .refused
            .clone()
            .or_else(|| preview.checks_error.clone())
            .unwrap_or_default();
        return Err(CommandError::new(
            Exit::Failed,
            format!("{} {} cannot be installed", preview.app, preview.version),
            why,
            "nothing was changed",
        ));
    }
    if let Some(i) = &preview.ineligible {
        return Err(CommandError::new(
            Exit::Skipped,
            format!("{} {} would be skipped", preview.app, preview.version),
            i,
            "nothing was changed",
        ));
    }
    let question = format!(
        "Switch to {} {} ({})? [y/N] ",
        preview.app,
        preview.version,
        preview.release_id.short()
    );
    if !ask_yes(&question) {
        let message = format!(
            "not switched to {} {}: declined; nothing was changed",
            preview.app, preview.version
        );
        // Recorded (the operator's own refusal counts toward nothing), so
        // that history and status show it.
        let mut o = Outcome::of_cause(opts.op.name(), Cause::Declined, message);
        o.version = Some(preview.version.clone());
        o.release_id = Some(preview.release_id);
        o.from_version = preview.running_version.clone();
        let o = record(host, o, false)?;
        if json {
            print_json(&serde_json::json!({
                "result": "declined",
                "cause": Cause::Declined,
                "exit_code": o.exit_code,
                "version": preview.version,
                "release_id": preview.release_id,
                "message": o.message,
            }));
        } else {
            slipway_fs::outln!("{}", o.message);
        }
        return Ok(o.exit);
    }
    let o = transaction::install(host, &candidate, opts)?;
    Ok(emit(host, &o, json))
}

/// Asks `question` on stderr and reads one line from stdin: true only for
/// `y` or `yes` (any case). End of input is a no.
pub(super) fn ask_yes(question: &str) -> bool {
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "{question}");
    let _ = err.flush();
    drop(err);
    let mut line = String::new();
    match std::io::stdin().read_line(&mut line) {
        Ok(0) | Err(_) => {
            eprintln!();
            false
        }
        Ok(_) => matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes"),
    }
}

/// `install --dry-run` / `update --dry-run`: no lock, no recovery, nothing
/// under the root changes.
pub(super) fn dry_run_cmd(
    host: &Host,
    src: &Source,
    opts: &InstallOptions,
    allow_expired: bool,
    json: bool,
) -> Result<Exit, CommandError> {
    let candidate = match resolve(host, src, opts, allow_expired, false)? {
        Resolved::Nothing(o) => return Ok(emit(host, &o, json)),
        Resolved::Install(c) => c,
    };
    let preview = transaction::preview(host, &candidate, opts, true).map_err(|f| CommandError {
        exit: Exit::Failed,
        failure: f,
    })?;
    let exit = if preview.refused.is_some() || preview.checks_passed == Some(false) {
        Exit::Failed
    } else if preview.ineligible.is_some() {
        Exit::Skipped
    } else {
        Exit::Done
    };
    if json {
        print_json(&DryRun {
            dry_run: true,
            exit_code: exit as i32,
            preview: &preview,
        });
    } else {
        print_preview(&preview, true);
    }
    Ok(exit)
}

#[derive(Serialize)]
struct DryRun<'a> {
    dry_run: bool,
    exit_code: i32,
    #[serde(flatten)]
    preview: &'a Preview,
}

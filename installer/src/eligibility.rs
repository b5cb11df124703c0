//! Step 2, eligibility: may this host try an update now? (seed step 2)
//!
//! [`check_eligibility`] applies the rules in a fixed order and stops at the
//! first that says no, returning it as an [`Ineligible`] whose `rule` is a
//! stable name (for `--json` and scripts) and whose `reason` tells the
//! operator what is wrong and what to do. The command exits 4 with it.
//!
//! | rule | applies | says no when |
//! | --- | --- | --- |
//! | `auto_update_disabled` | `--auto` only | `[update] enabled = false` (`BOT_AUTO_UPDATE=0`), or disabled by the operator or by repeated failures |
//! | `max_attempts` | `--auto` only | attempts today ≥ `max_attempts_per_day` |
//! | `max_failures` | `--auto` only | failures today ≥ `max_failures_per_day` |
//! | `dirty_release` | always | the running release no longer matches its manifest (the tarball world's dirty git tree); stray paths matching the release's `runtime_paths` do not count; files whose identity record still matches are not re-hashed unless `[update] deep_clean_check` ([`crate::clean`]) |
//! | `stale_save` | always, when `max_save_age_minutes > 0` and the persistence directory holds data | the newest file under it (outside `meta/`) is older than `max_save_age_minutes` |
//! | `disk_space` | always | free space on the root's file system < what the update needs + `min_free_mib` |
//!
//! Manual commands (`install`, `update` without `--auto`) skip the first
//! three rules: an operator at the keyboard is the manual intervention those
//! rules wait for.

use std::fmt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use slipway_formats::channel::Timestamp;
use slipway_formats::Manifest;

use crate::clean::CleanRule;
use crate::config::Config;
use crate::failure_model::Cause;
use crate::layout::Layout;
use crate::state::{plural, today, HostState};

/// Rule name: auto-update is off (configuration, operator or failures).
pub const RULE_AUTO_UPDATE_DISABLED: &str = "auto_update_disabled";
/// Rule name: `max_attempts_per_day` reached.
pub const RULE_MAX_ATTEMPTS: &str = "max_attempts";
/// Rule name: `max_failures_per_day` reached.
pub const RULE_MAX_FAILURES: &str = "max_failures";
/// Rule name: the running release's files differ from its manifest.
pub const RULE_DIRTY_RELEASE: &str = "dirty_release";
/// Rule name: the app's last persistence save is too old.
pub const RULE_STALE_SAVE: &str = "stale_save";
/// Rule name: not enough free disk for the update.
pub const RULE_DISK_SPACE: &str = "disk_space";

const MIB: u64 = 1024 * 1024;

/// Why an update is not attempted now. Displays as the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ineligible {
    /// One of the `RULE_*` names.
    pub rule: &'static str,
    pub reason: String,
}

impl Ineligible {
    /// The row of the failure table: auto-update off, or another rule.
    pub fn cause(&self) -> Cause {
        if self.rule == RULE_AUTO_UPDATE_DISABLED {
            Cause::Disabled
        } else {
            Cause::Ineligible
        }
    }
}

impl fmt::Display for Ineligible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Ineligible {}

/// What the rules look at.
#[derive(Debug, Clone)]
pub struct EligibilityInput<'a> {
    pub config: &'a Config,
    pub layout: &'a Layout,
    pub state: &'a HostState,
    /// The running release's directory and manifest; `None` on a fresh host.
    pub running: Option<(&'a Path, &'a Manifest)>,
    /// Archive + unpacked size + snapshot size, computed by the caller.
    pub needed_bytes: u64,
    /// `slipway update --auto` (the timer): the auto-only rules apply.
    pub auto: bool,
    pub now: Timestamp,
    /// How the `dirty_release` rule checks the running release
    /// ([`crate::clean`]); the default is the quick check, writing nothing.
    pub clean: CleanRule,
}

/// Applies the rules in order (see the module docs); `Ok` means go ahead.
pub fn check_eligibility(input: &EligibilityInput) -> Result<(), Ineligible> {
    if input.auto {
        check_auto_rules(input)?;
    }
    if let Some((dir, manifest)) = input.running {
        check_clean(input, dir, manifest)?;
    }
    check_save_age(input)?;
    check_disk(input)
}

fn ineligible(rule: &'static str, reason: String) -> Ineligible {
    Ineligible { rule, reason }
}

fn check_auto_rules(input: &EligibilityInput) -> Result<(), Ineligible> {
    let update = &input.config.update;
    if let Some(setting) = crate::report::disabling_setting(input.config) {
        return Err(ineligible(
            RULE_AUTO_UPDATE_DISABLED,
            format!(
                "auto-update is off: {setting}; change it there (`slipway enable` cannot), \
                 or update by hand with `slipway update`"
            ),
        ));
    }
    let state = input.state;
    if let Some(d) = &state.disabled {
        return Err(ineligible(
            RULE_AUTO_UPDATE_DISABLED,
            format!(
                "auto-update was disabled by {} at {}: {}; run `slipway enable` to turn it back on",
                d.by, d.at, d.reason
            ),
        ));
    }
    // Counters from an earlier day do not count, even if the caller did not
    // roll the state to today.
    let (attempts, failures) = if state.day == today(input.now) {
        (state.attempts_today, state.failures_today)
    } else {
        (0, 0)
    };
    if attempts >= update.max_attempts_per_day {
        return Err(ineligible(
            RULE_MAX_ATTEMPTS,
            format!(
                "{} today already (max_attempts_per_day = {}); \
                 the next automatic try is after midnight UTC, or run `slipway update` by hand",
                plural(
                    attempts,
                    "automatic update attempt",
                    "automatic update attempts"
                ),
                update.max_attempts_per_day
            ),
        ));
    }
    if failures >= update.max_failures_per_day {
        return Err(ineligible(
            RULE_MAX_FAILURES,
            format!(
                "{} today (max_failures_per_day = {}); \
                 run `slipway enable` after fixing the cause",
                plural(failures, "failed update", "failed updates"),
                update.max_failures_per_day
            ),
        ));
    }
    Ok(())
}

fn check_clean(
    input: &EligibilityInput,
    dir: &Path,
    manifest: &Manifest,
) -> Result<(), Ineligible> {
    let drifts = match crate::clean::check_release(input.layout, dir, manifest, input.clean) {
        Ok(c) => c.drift,
        Err(e) => {
            return Err(ineligible(
                RULE_DIRTY_RELEASE,
                format!(
                    "cannot check the running release {} against its manifest: {e}; \
                     run `slipway verify` for details",
                    dir.display()
                ),
            ))
        }
    };
    if drifts.is_empty() {
        return Ok(());
    }
    Err(ineligible(
        RULE_DIRTY_RELEASE,
        format!(
            "the running release {} no longer matches its manifest ({}); \
             updates wait until it does: {}",
            dir.display(),
            crate::diff::describe_drift(&drifts),
            crate::diff::drift_hint(&drifts)
        ),
    ))
}

fn check_save_age(input: &EligibilityInput) -> Result<(), Ineligible> {
    let max_minutes = input.config.paths.max_save_age_minutes;
    if max_minutes == 0 {
        return Ok(());
    }
    let persistence = &input.config.paths.persistence;
    let age = match crate::snapshot::newest_save_age(persistence) {
        Ok(Some(age)) => age,
        Ok(None) => return Ok(()),
        Err(e) => {
            return Err(ineligible(
                RULE_STALE_SAVE,
                format!(
                    "cannot tell when the app last saved under {}: {e}",
                    persistence.display()
                ),
            ))
        }
    };
    // The age is against the system clock; judge it against `now` (the same
    // in production, a test clock in end-to-end tests).
    let system_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let skew = input.now.unix().saturating_sub(system_now);
    let age_secs = i64::try_from(age.as_secs())
        .unwrap_or(i64::MAX)
        .saturating_add(skew)
        .max(0);
    if age_secs > i64::from(max_minutes) * 60 {
        return Err(ineligible(
            RULE_STALE_SAVE,
            format!(
                "the newest save under {} is {} old (max_save_age_minutes = {max_minutes}); \
                 the app's persistence scheduler may be stuck: check the app, \
                 or set [paths] max_save_age_minutes = 0 to skip this check",
                persistence.display(),
                plural(age_secs.unsigned_abs() / 60, "minute", "minutes")
            ),
        ));
    }
    Ok(())
}

fn check_disk(input: &EligibilityInput) -> Result<(), Ineligible> {
    // The root may not exist yet on a fresh host: measure where it will be.
    let root = input.layout.root();
    let probe = root
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let stat = rustix::fs::statvfs(probe).map_err(|e| {
        ineligible(
            RULE_DISK_SPACE,
            format!(
                "cannot measure free space at {}: {e}; check that the root exists and is readable",
                probe.display()
            ),
        )
    })?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    let reserve = input.config.paths.min_free_mib.saturating_mul(MIB);
    let wanted = input.needed_bytes.saturating_add(reserve);
    if free < wanted {
        return Err(ineligible(
            RULE_DISK_SPACE,
            format!(
                "only {} MiB free on the file system of {}; this update needs {} MiB plus \
                 min_free_mib = {} MiB; free some space (`slipway gc` removes old releases \
                 and snapshots) or lower [update] keep_releases / keep_snapshots",
                free / MIB,
                root.display(),
                input.needed_bytes.div_ceil(MIB),
                input.config.paths.min_free_mib
            ),
        ));
    }
    Ok(())
}

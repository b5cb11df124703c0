//! Putting a backup back: `slipway restore BACKUP`, and the data step of
//! `slipway rollback --restore-data`.
//!
//! Both are ordinary journaled transactions. The backup to copy over the
//! data is recorded in the journal (`restore_from`) before anything
//! changes, and step `Migrate` restores it where an update would run the
//! migrate hook, after the transaction took its own snapshot of the data
//! (`pre-restore`, or `pre-update` for a rollback). Every undo, by a failing
//! run or by `slipway recover`, is the one of the step ([`Step::undo`]):
//! that own snapshot is put back when the data no longer matches it. So a
//! run killed anywhere leaves the data as it was before, or, once the
//! outcome was decided, as restored; never half of each.
//!
//! A restore keeps `current` and `previous` as they are: it has no
//! `Switch` step, and its flip back (a service not healthy on the restored
//! data) puts the data from before back and restarts the same release.

use super::*;

use crate::snapshot::SnapshotInfo;

/// A checked request to restore a backup: what [`restore`] runs.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    pub backup: SnapshotInfo,
    running: Installed,
}

/// Checks that backup `name` can be restored under the running release,
/// before anything is changed: it is a complete snapshot in `backups/`, a
/// release runs, and the backup's data schema is one that release reads
/// (`schema_min_compatible` to `schema_version`; `force` accepts any, or
/// an unknown one). A running service must be able to pause (a quiesce is
/// configured): the app must not write while its data is replaced.
///
/// An `Err` is a refusal (exit 2): nothing was changed or recorded.
pub fn check_restore(host: &Host, name: &str, force: bool) -> Result<RestorePlan, Failure> {
    let backups = host.layout.backups_dir();
    let backup = snapshot::find_snapshot(&backups, name).map_err(|e| {
        Failure::new(
            format!("cannot restore backup {name:?}"),
            e,
            "nothing was changed; `slipway backups` lists the backups there are",
        )
    })?;
    let Some(running) = running_release(&host.layout)? else {
        return Err(Failure::new(
            format!("cannot restore backup {name}"),
            format!("{} does not exist", host.layout.current_link().display()),
            "nothing was changed; install a release first: `slipway install SOURCE`",
        ));
    };
    let m = &running.manifest;
    let schemas = m.schema_min_compatible..=m.schema_version;
    let readable = backup.about.schema.is_some_and(|s| schemas.contains(&s));
    if !readable && !force {
        let why = match backup.about.schema {
            Some(s) => format!(
                "its data is at schema {s}, and {} {} reads schemas {} to {}",
                m.app, m.version, m.schema_min_compatible, m.schema_version
            ),
            None => "it does not record its data's schema (taken by an older slipway)".into(),
        };
        return Err(Failure::new(
            format!("cannot restore backup {name}"),
            why,
            "nothing was changed; restore it under a release that reads it, or pass --force if you know the running release reads it",
        ));
    }
    let running_now = host.service.status().is_ok_and(|s| s.is_running());
    let pausable =
        QuiesceMethod::from_config(&host.config.service).is_ok_and(|q| q != QuiesceMethod::None);
    if running_now && !pausable {
        return Err(Failure::new(
            format!("cannot restore backup {name}"),
            format!(
                "{} runs and no quiesce is configured, so it would write while its data is replaced",
                host.service.describe()
            ),
            "nothing was changed; configure [service] quiesce_url, quiesce or quiesce_signal, or stop the service first (the restore starts it)",
        ));
    }
    Ok(RestorePlan { backup, running })
}

/// `slipway restore BACKUP`: save, snapshot the data (`pre-restore`),
/// quiesce, restore the backup, restart the service and health-gate it.
/// A service that is not healthy on the restored data gets the data from
/// before back and is restarted (exit 1, cause `rollback_unhealthy`).
pub fn restore(host: &Host, plan: &RestorePlan) -> Result<Outcome, TxnError> {
    let mut t = match Txn::begin(host, Operation::Restore, false, Step::Verify) {
        Ok(t) => t,
        Err(o) => return Ok(*o),
    };
    let running = &plan.running;
    t.journal.release_id = running.id;
    t.journal.version = Some(running.manifest.version.clone());
    t.journal.release_dir = Some(running.dir.clone());
    t.journal.schema_to = Some(running.manifest.schema_version);
    // Step 4 for a restore: the backup is still there and complete (its
    // digest is checked again while it is copied).
    match snapshot::load_snapshot(&plan.backup.dir) {
        Ok(backup) => t.journal.restore_from = Some(backup),
        Err(e) => {
            return t.fail(
                Cause::HostBeforeService,
                Failure::new(
                    format!("cannot restore backup {}", plan.backup.name),
                    e,
                    "nothing was changed; `slipway backups` lists the backups there are",
                ),
            )
        }
    }
    let target = Target {
        dir: running.dir.clone(),
        manifest: running.manifest.clone(),
        id: running.id,
        reinstall: false,
    };
    from_save(t, &target)
}

/// For `slipway rollback` to `target` (in `releases/<dir_name>`), whose
/// schemas do not include the data's: the newest backup of data `target`
/// wrote at a schema it reads ([`snapshot::newest_data_of`]).
pub(super) fn backup_for_rollback(
    host: &Host,
    dir: &Path,
    target: &ManifestHead,
) -> Option<Snapshot> {
    let infos = snapshot::list_snapshot_infos(&host.layout.backups_dir());
    let dir_name = dir.file_name()?.to_string_lossy().into_owned();
    let found = snapshot::newest_data_of(
        &infos,
        &dir_name,
        &target.version.to_string(),
        target.schema_min_compatible..=target.schema_version,
    )?;
    snapshot::load_snapshot(&found.dir).ok()
}

/// Step 9 when the journal names a backup: copy it over the data (checking
/// its digest as it is copied; a damaged backup changes nothing).
pub(super) fn restore_backup(host: &Host, backup: &Snapshot) -> Result<(), Failure> {
    host.log.info(format!(
        "restoring the data from {} into {}",
        backup.dir.display(),
        host.persistence().display()
    ));
    snapshot::restore_snapshot(backup, host.persistence()).map_err(|e| {
        Failure::new(
            format!("cannot restore {}", backup.dir.display()),
            e,
            "the data from before was put back and the app resumed; nothing else changed",
        )
    })
}

/// Why a transaction of `op` snapshots the data before its data step
/// (also when it takes the snapshot again after the quiesce, as
/// `<txn>-paused`: that is the same data, as the paused app left it).
pub(super) fn snapshot_reason(op: Operation) -> &'static str {
    match op {
        Operation::Restore => "pre-restore",
        _ => "pre-update",
    }
}

/// The result line of a healthy restore or rollback that restored data.
pub(super) fn restored_message(j: &Journal, target: &Target, elapsed_ms: u64) -> Option<String> {
    let backup = j.restore_from.as_ref()?;
    let name = backup
        .dir
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let before = j
        .snapshot
        .as_ref()
        .map_or_else(|| "not kept".to_string(), |s| s.dir.display().to_string());
    Some(match j.op {
        Operation::Restore => format!(
            "restored backup {name} ({} files, {} bytes); {} {} is healthy on it ({elapsed_ms} ms); the data before is in {before}",
            backup.files, backup.bytes, target.manifest.app, target.manifest.version
        ),
        _ => format!(
            "rolled back {} {} → {} with its data from backup {name} ({elapsed_ms} ms); the data of {} is in {before}",
            target.manifest.app,
            j.from_version
                .as_ref()
                .map_or_else(|| "(none)".to_string(), |v| v.to_string()),
            target.manifest.version,
            j.from_version
                .as_ref()
                .map_or_else(|| "the release rolled back from".to_string(), |v| v.to_string()),
        ),
    })
}

/// The result line and the error of a restore whose service was not
/// healthy on the restored data (the data from before was put back).
pub(super) fn restore_flip_back_message(
    j: &Journal,
    reason: &str,
    result: &FlippedBack,
) -> (String, Failure) {
    let name = j
        .restore_from
        .as_ref()
        .and_then(|b| b.dir.file_name())
        .map_or_else(
            || "the backup".to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
    let version = j
        .version
        .as_ref()
        .map_or_else(|| "the release".to_string(), |v| v.to_string());
    let mut message = format!(
        "{version} was not healthy on the data of backup {name} ({reason}); the data from before the restore is back"
    );
    if let Some(problem) = &result.old_unhealthy {
        message.push_str(&format!(
            "; CRITICAL: it is not healthy on that data either: {problem}"
        ));
    }
    let hint = if result.old_unhealthy.is_some() {
        "the service needs attention now: see `slipway status` and the service's log"
    } else {
        "the service runs on its data from before the restore; see the service's log for why the backup's data did not work"
    };
    (
        message.clone(),
        Failure::new("the restore failed", message, hint),
    )
}

/// What `gc` and step `Collect` must keep whatever their count: what the
/// journal of a transaction in flight names (its snapshot, the backup it
/// restores), the pending update's release, and the newest backup of the
/// data of the release `previous` names at a schema it reads (what
/// `slipway rollback --restore-data` would restore).
pub fn gc_protected(host: &Host) -> Vec<PathBuf> {
    let mut protected: Vec<PathBuf> = HostState::load(&host.layout)
        .ok()
        .and_then(|s| s.pending)
        .map(|p| vec![p.dir])
        .unwrap_or_default();
    if let Ok(Some(j)) = journal::load(&host.layout) {
        protected.extend(j.snapshot.map(|s| s.dir));
        protected.extend(j.restore_from.map(|s| s.dir));
    }
    let previous = switch::read_links(&host.layout)
        .ok()
        .and_then(|l| l.previous)
        .map(|t| switch::resolve_target(&host.layout, &t))
        .and_then(|d| read_installed_head(&host.layout, &d).ok());
    if let Some(prev) = previous {
        if let Some(b) = backup_for_rollback(host, &prev.dir, &prev.head) {
            protected.push(b.dir);
        }
    }
    protected
}

//! The undo actions of the steps, shared by a run that fails a step and by
//! `slipway recover` after a run that died in one.

use super::*;

/// Removes a release directory unless `current`, `previous` or the pending
/// update point at it.
pub(super) fn discard_release_dir(host: &Host, dir: &Path) {
    let links = switch::read_links(&host.layout).unwrap_or_default();
    let pinned = [links.current, links.previous]
        .into_iter()
        .flatten()
        .map(|t| switch::resolve_target(&host.layout, &t))
        .any(|t| t == dir);
    let pending = HostState::load(&host.layout)
        .ok()
        .and_then(|s| s.pending)
        .is_some_and(|p| p.dir == dir);
    if pinned || pending {
        return;
    }
    // Unlinks only (files may be shared with the running release), and
    // removes the release's identity record.
    match crate::identity::remove_release_tree(&host.layout, dir) {
        Ok(()) => host.log.debug(format!("removed {}", dir.display())),
        Err(e) => host.log.warn(format!(
            "cannot remove {}: {e}; `slipway gc` retries",
            dir.display()
        )),
    }
}

/// Best-effort resume of a paused app (`resume` configured, else nothing).
pub(super) fn resume_app(host: &Host, cwd: &Path) {
    let method = match ResumeMethod::from_config(&host.config.service) {
        Ok(m) => m,
        Err(e) => {
            host.log.warn(format!("cannot resume the app: {e}"));
            return;
        }
    };
    if method == ResumeMethod::None {
        return;
    }
    let timeout = Duration::from_secs(host.config.service.quiesce_timeout_seconds);
    match quiesce::resume_in(&method, &host.service, timeout, cwd) {
        Ok(()) => host
            .log
            .info(format!("resumed the app ({})", method.describe())),
        Err(e) => host.log.warn(format!(
            "cannot resume the app: {e}; restart the service to unpause it"
        )),
    }
}

/// Restores the snapshot when the data no longer matches it.
pub(super) fn restore_if_changed(host: &Host, snap: Option<&Snapshot>) -> Result<bool, String> {
    let Some(snap) = snap else {
        return Ok(false);
    };
    let digest = snapshot::tree_digest(host.persistence()).map_err(|e| e.to_string())?;
    if digest == snap.digest {
        return Ok(false);
    }
    host.log.info(format!(
        "restoring the persistence from {}",
        snap.dir.display()
    ));
    // The room set aside for this copy when the transaction began.
    crate::reserve::free_restore_room(&host.layout);
    snapshot::restore_snapshot(snap, host.persistence()).map_err(|e| e.to_string())?;
    Ok(true)
}

/// What a flip back did with the data the failed release left.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct FlipBackData {
    /// The pre-update snapshot was copied back over the data.
    pub(super) restored: bool,
    /// Where the data it replaced was kept (`backups/kept-<txn>`).
    pub(super) kept_aside: Option<PathBuf>,
    /// The data changed since the snapshot and was left as it was
    /// (`[health] restore_data`).
    pub(super) left: bool,
}

/// The name of the snapshot that keeps the data a flip back replaced.
pub(super) fn kept_aside_name(j: &Journal) -> String {
    format!("kept-{}", j.txn)
}

/// A flip back's data step, by `[health] restore_data`: when the data
/// changed since the pre-update snapshot, restore the snapshot (only when
/// the schema changed, by default), but first keep what it replaces under
/// `backups/kept-<txn>/`, recorded as the failed release's data. Nothing the
/// failed release wrote is ever dropped without a copy. Idempotent, for
/// `recover`: a kept copy already made is used again.
pub(super) fn flip_back_data(host: &Host, j: &Journal) -> Result<FlipBackData, String> {
    use crate::config::RestoreData;
    let Some(snap) = j.snapshot.as_ref() else {
        return Ok(FlipBackData::default());
    };
    let digest = snapshot::tree_digest(host.persistence()).map_err(|e| e.to_string())?;
    if digest == snap.digest {
        return Ok(FlipBackData::default());
    }
    let schema_changed = j.data_changed || j.schema_from != j.schema_to;
    let restore = match host.config.health.restore_data {
        RestoreData::Always => true,
        RestoreData::Never => false,
        RestoreData::SchemaChanged => schema_changed,
    };
    if !restore {
        if schema_changed {
            host.log.warn(format!(
                "the data is at the failed release's schema and is not restored (health.restore_data = \"never\"); the old release may not read it; `slipway restore {}` puts the pre-update data back",
                snap.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
            ));
        } else {
            host.log.info(
                "kept the data the failed release wrote: the schema did not change (health.restore_data)",
            );
        }
        return Ok(FlipBackData {
            left: true,
            ..FlipBackData::default()
        });
    }
    // The room set aside for both copies when the transaction began.
    crate::reserve::free_restore_room(&host.layout);
    if j.found_digest.as_deref() == Some(digest.as_str()) {
        // Only the migration changed it: the new release wrote nothing
        // after the switch (under probation it never traded).
        host.log.info(format!(
            "restoring the persistence from {} (the new release wrote nothing since the switch)",
            snap.dir.display()
        ));
        snapshot::restore_snapshot(snap, host.persistence()).map_err(|e| e.to_string())?;
        return Ok(FlipBackData {
            restored: true,
            ..FlipBackData::default()
        });
    }
    let name = kept_aside_name(j);
    let about = snapshot::SnapshotAbout {
        reason: "kept-aside".into(),
        version: j.version.as_ref().map(|v| v.to_string()),
        release: j
            .release_dir
            .as_ref()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned()),
        schema: j.schema_to,
    };
    let backups = host.layout.backups_dir();
    let kept = match snapshot::take_snapshot_about(host.persistence(), &backups, &name, &about) {
        Ok(kept) => kept,
        // A recovery after a kill between the copy and the restore: the
        // data has not changed since (the service is stopped or paused).
        Err(snapshot::SnapshotError::Exists { dir }) => {
            snapshot::load_snapshot(&dir).map_err(|e| e.to_string())?
        }
        Err(e) => {
            return Err(format!(
                "cannot keep the data the failed release wrote before restoring the snapshot: {e}"
            ))
        }
    };
    host.log.info(format!(
        "kept the data the failed release wrote in {}",
        kept.dir.display()
    ));
    host.log.info(format!(
        "restoring the persistence from {}",
        snap.dir.display()
    ));
    snapshot::restore_snapshot(snap, host.persistence()).map_err(|e| e.to_string())?;
    Ok(FlipBackData {
        restored: true,
        kept_aside: Some(kept.dir),
        left: false,
    })
}

/// What undoing a step did.
#[derive(Default)]
pub(super) struct Undone {
    /// The snapshot was copied back over the data.
    pub(super) restored: bool,
    /// The flip back, when the step's undo is one.
    pub(super) flipped: Option<FlippedBack>,
}

/// Undoes the step `j` is in, by [`Step::undo`]: the one place both a run
/// that fails a step and `slipway recover` after a run that died in it
/// decide what to put back. [`Undo::Finish`] does nothing here (recovery
/// finishes the decided transaction itself).
///
/// An error means the host could not be put back in order (the snapshot
/// cannot be restored): the journal must stay, so that the next run tries
/// again, and the app stays paused rather than run on data it cannot read.
pub(super) fn undo_step(host: &Host, j: &Journal) -> Result<Undone, TxnError> {
    match j.step.undo() {
        Undo::Discard => {
            cleanup_abandoned(host, j, true);
            Ok(Undone::default())
        }
        Undo::RestoreAndResume => {
            let cwd = app_cwd(&host.layout, switch::current_dir(&host.layout)?.as_deref());
            // Only the migrate hook changes the data on slipway's behalf.
            // Before it starts, the only writer was the app itself (it saves
            // when it pauses): restoring would throw its latest state away.
            let restored = if j.data_changed {
                restore_if_changed(host, j.snapshot.as_ref()).map_err(|e| {
                    TxnError::host(
                        "CRITICAL: cannot restore the persistence snapshot after an interrupted migration",
                        e,
                        format!(
                            "the app stays paused on the old release; free space or fix the cause, then run `slipway recover` (or restore {} by hand)",
                            j.snapshot.as_ref().map_or_else(
                                || "the snapshot".to_string(),
                                |s| s.dir.display().to_string()
                            )
                        ),
                    )
                })?
            } else {
                false
            };
            // Resuming an app that never paused is harmless; leaving a
            // paused one paused stops the trading.
            resume_app(host, &cwd);
            cleanup_abandoned(host, j, false);
            Ok(Undone {
                restored,
                flipped: None,
            })
        }
        Undo::FlipBack => {
            let flipped = flip_back_actions(host, j)?;
            Ok(Undone {
                restored: false,
                flipped: Some(flipped),
            })
        }
        Undo::Finish => Ok(Undone::default()),
    }
}

/// What a flip back did.
pub(super) struct FlippedBack {
    pub(super) latency: Option<Duration>,
    /// Why the old release is not healthy either, when it is not.
    pub(super) old_unhealthy: Option<String>,
    /// What happened to the data the failed release left.
    pub(super) data: FlipBackData,
}

/// Puts the old release back: stop the failing one (or, when the backend
/// cannot stop it, quiesce it, so that it stops writing), restore both
/// links, restore the snapshot when the data changed, start the old release
/// and health-gate it. Idempotent, for `recover`.
pub(super) fn flip_back_actions(host: &Host, j: &Journal) -> Result<FlippedBack, TxnError> {
    let log = host.log;
    let cwd = app_cwd(&host.layout, switch::current_dir(&host.layout)?.as_deref());
    let stopped = match host.service.stop() {
        Ok(s) => s,
        Err(e) => {
            log.warn(format!("cannot stop {}: {e}", host.service.describe()));
            false
        }
    };
    if !stopped {
        // A command backend cannot stop the service: pause the failing app
        // so that it does not write over the restored data on its way out.
        if let Ok(method) = QuiesceMethod::from_config(&host.config.service) {
            let running = host.service.status().is_ok_and(|s| s.is_running());
            if method != QuiesceMethod::None && running {
                let timeout =
                    Duration::from_secs(host.config.service.quiesce_timeout_seconds.min(10));
                if let Err(e) = quiesce::quiesce_in(&method, &host.service, timeout, &cwd) {
                    log.debug(format!("the failing release did not quiesce: {e}"));
                }
            }
        }
    }
    let timing = switch::restore_links(
        &host.layout,
        j.old_release.as_deref(),
        j.old_previous.as_deref(),
    )?;
    log.info(format!(
        "flipped current back to {} in {} µs (rename; the directory fsync took {} µs more)",
        j.old_release
            .as_ref()
            .map_or_else(|| "(nothing)".to_string(), |p| p.display().to_string()),
        us(timing.current_swap),
        us(timing.fsync)
    ));
    let data = match flip_back_data(host, j) {
        Ok(data) => data,
        Err(e) => {
            // `current` is the old release again, but it cannot run on the new
            // release's data: it is not started. The failing release stays
            // stopped, or quiesced where the backend cannot stop it.
            return Err(TxnError::host(
            "CRITICAL: cannot restore the persistence snapshot after the flip back; the old release was not started",
            e,
            format!(
                "free space (or fix the cause above), then run `slipway recover`: it restores the snapshot and starts the old release; or restore {} into {} by hand, then start the service",
                j.snapshot.as_ref().map_or_else(
                    || "the snapshot".to_string(),
                    |s| s.dir.display().to_string()
                ),
                host.persistence().display()
            ),
        ));
        }
    };
    // The old release starts live: no probation file may tell it to wait.
    if let Err(e) = crate::probation::end(host.config) {
        log.warn(format!(
            "cannot remove {}: {e}; an app that honours it (for its own version only) is unaffected",
            crate::probation::path(host.config).display()
        ));
    }
    let mut old_unhealthy = None;
    if j.old_release.is_some() {
        let started = if stopped {
            host.service.start()
        } else {
            host.service.restart()
        };
        match started {
            Err(e) => old_unhealthy = Some(format!("restart failed: {e}")),
            Ok(()) => {
                let baseline = host.service.status().ok().map(|s| s.restarts);
                let policy = HealthPolicy::for_host(
                    host.config,
                    j.from_version.as_ref().map(|v| v.to_string()),
                );
                match health_gate(&host.service, baseline, &policy) {
                    Ok(_) => log.info("the old release is healthy again"),
                    Err(e) => old_unhealthy = Some(e.to_string()),
                }
            }
        }
    } else {
        log.warn("there was no release before this one: nothing to start");
        if !stopped {
            // The backend cannot stop the failing release: its restart
            // command, with no `current` to start, at least ends it.
            if let Err(e) = host.service.restart() {
                log.debug(format!("restart without a release: {e}"));
            }
        }
    }
    Ok(FlippedBack {
        latency: Some(timing.current_swap),
        old_unhealthy,
        data,
    })
}

/// Removes what an abandoned transaction left: staging directories, its
/// staged release (unless something points at it), its partial snapshots,
/// and (`drop_snapshot`) its complete ones, which no step needs any more.
pub(super) fn cleanup_abandoned(host: &Host, j: &Journal, drop_snapshot: bool) {
    let log = host.log;
    if let Ok(entries) = std::fs::read_dir(host.layout.releases_dir()) {
        for e in entries.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(gc::STAGING_PREFIX)
            {
                if let Err(err) = crate::identity::remove_release_tree(&host.layout, &e.path()) {
                    log.warn(format!("cannot remove {}: {err}", e.path().display()));
                }
            }
        }
    }
    if j.staged_here {
        if let Some(dir) = &j.release_dir {
            discard_release_dir(host, dir);
        }
    }
    if let Ok(entries) = std::fs::read_dir(host.layout.backups_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = name.starts_with(&j.txn);
            let kept = !drop_snapshot && j.snapshot.as_ref().is_some_and(|s| s.dir == e.path());
            if (ours && !kept) || name.ends_with(gc::PARTIAL_SUFFIX) {
                if let Err(err) = durable::remove_tree(&e.path()) {
                    log.warn(format!("cannot remove {}: {err}", e.path().display()));
                }
            }
        }
    }
}

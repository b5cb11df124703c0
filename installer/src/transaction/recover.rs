//! Recovery: `slipway recover`, run first by every mutating command under
//! the lock. It reads the journal a killed run left behind and finishes or
//! undoes that transaction by the step recorded, never by guessing from the
//! file system (the table is in `docs/transaction.md`).

use super::*;

/// `slipway recover` (run first by every mutating command, under the lock):
/// finishes or undoes the transaction a killed run left in the journal,
/// deciding by its step. `Ok(None)`: there was nothing to recover.
pub fn recover(host: &Host) -> Result<Option<Outcome>, TxnError> {
    let Some(j) = journal::load(&host.layout)? else {
        return Ok(None);
    };
    let started = Instant::now();
    let log = host.log;
    log.warn(format!(
        "recovering transaction {} ({} of {}), interrupted at step {}",
        j.txn,
        j.op,
        j.version
            .as_ref()
            .map_or_else(|| "an unknown release".to_string(), |v| v.to_string()),
        j.step
    ));
    let cwd = app_cwd(&host.layout, switch::current_dir(&host.layout)?.as_deref());
    let mut critical = false;
    let (result, message, flip_latency) = match j.step {
        Step::Fetch | Step::Verify | Step::Stage | Step::Check | Step::Save | Step::Snapshot => {
            cleanup_abandoned(host, &j, true);
            (
                AttemptResult::Failed,
                format!(
                    "interrupted at step {} before the service was touched; cleaned up",
                    j.step
                ),
                None,
            )
        }
        Step::Quiesce | Step::Migrate => {
            // Only the migrate hook changes the data on slipway's behalf. At
            // Quiesce the only writer was the app itself (it saves when it
            // pauses): restoring would throw its latest state away.
            if j.step == Step::Migrate {
                if let Err(e) = restore_if_changed(host, j.snapshot.as_ref()) {
                    return Err(TxnError::host(
                        "cannot restore the persistence snapshot",
                        e,
                        "restore the snapshot named in the journal by hand, then run `slipway recover` again",
                    ));
                }
            }
            // At Quiesce the pause may or may not have happened: resume
            // either way (resuming a running app is harmless).
            if j.step == Step::Quiesce || j.quiesced {
                resume_app(host, &cwd);
            }
            cleanup_abandoned(host, &j, false);
            (
                AttemptResult::Failed,
                format!(
                    "interrupted at step {} before the switch; data restored if it changed, app resumed",
                    j.step
                ),
                None,
            )
        }
        Step::Switch | Step::Restart | Step::HealthGate | Step::FlipBack => {
            let flipped = flip_back_actions(host, &j)?;
            let health_failed = j.step == Step::FlipBack && j.op != "rollback";
            let mut message = if health_failed {
                format!(
                    "interrupted while flipping back from {} ({}); flipped back",
                    version_text(j.version.as_ref()),
                    j.failure.clone().unwrap_or_default()
                )
            } else {
                format!(
                    "interrupted at step {}; flipped back to {}",
                    j.step,
                    version_text(j.from_version.as_ref())
                )
            };
            if let Some(problem) = &flipped.old_unhealthy {
                critical = true;
                message.push_str(&format!(
                    "; CRITICAL: the old release is not healthy: {problem}"
                ));
            }
            if health_failed {
                if let (Some(id), Some(v)) = (j.release_id, j.version.clone()) {
                    let mut state = HostState::load_at(&host.layout, host.clock.now())?;
                    state.mark_bad(
                        id,
                        v,
                        j.failure
                            .clone()
                            .unwrap_or_else(|| "failed the health gate".into()),
                        host.clock.now(),
                    );
                    state.save(&host.layout)?;
                }
            }
            let result = if health_failed {
                AttemptResult::RolledBack
            } else {
                AttemptResult::Failed
            };
            (result, message, flipped.latency)
        }
        Step::Commit | Step::Report | Step::Collect => {
            let decided = j.decision.clone();
            let result = decided
                .as_ref()
                .map_or(AttemptResult::Updated, |d| d.result);
            if result == AttemptResult::Updated {
                finish_commit(host, &j)?;
            }
            if j.step != Step::Collect {
                let mut jd = j.clone();
                if jd.decision.is_none() {
                    jd.decision = Some(Decision {
                        result,
                        message: format!(
                            "updated to {} (finished by recover)",
                            version_text(j.version.as_ref())
                        ),
                        at: host.clock.now(),
                    });
                }
                report_decision(host, &jd, ms(started.elapsed()))?;
            }
            collect(host);
            (
                result,
                format!(
                    "interrupted at step {} after the decision ({result}); finished it",
                    j.step
                ),
                None,
            )
        }
    };
    let at = host.clock.now();
    let attempt = Attempt {
        op: "recover".into(),
        at,
        result,
        from_version: j.from_version.clone(),
        version: j.version.clone(),
        release_id: j.release_id,
        message: format!("{} of txn {}: {message}", j.op, j.txn),
        duration_ms: ms(started.elapsed()),
    };
    // Past Commit the decided attempt is (now) counted: the recover entry
    // is shown as the last attempt but not counted again.
    if j.step >= Step::Commit && j.step != Step::FlipBack {
        let mut state = HostState::load_at(&host.layout, at)?;
        state.last_attempt = Some(attempt.clone());
        state.save(&host.layout)?;
        report_with_current(host, &state, &attempt);
    } else {
        record_and_report(host, attempt, None)?;
    }
    journal::finish(&host.layout)?;
    log.info(format!("recovered: {message}"));
    let exit = match result {
        AttemptResult::Updated => Exit::Done,
        AttemptResult::RolledBack => Exit::RolledBack,
        _ => Exit::Failed,
    };
    let mut o = Outcome::new("recover", result, exit, message);
    o.from_version = j.from_version.clone();
    o.version = j.version.clone();
    o.release_id = j.release_id;
    o.flip_back_us = flip_latency.map(us);
    o.duration_ms = ms(started.elapsed());
    o.interrupted_at = Some(j.step);
    o.critical = critical;
    o.snapshot = j.snapshot.as_ref().map(|s| s.dir.clone());
    Ok(Some(o))
}

fn version_text(v: Option<&Version>) -> String {
    v.map_or_else(|| "nothing".to_string(), |v| v.to_string())
}

/// Removes what an abandoned transaction left: staging directories, its
/// staged release (unless something points at it), its partial snapshots,
/// and (`drop_snapshot`) its complete ones, which no step needs any more.
fn cleanup_abandoned(host: &Host, j: &Journal, drop_snapshot: bool) {
    let log = host.log;
    if let Ok(entries) = std::fs::read_dir(host.layout.releases_dir()) {
        for e in entries.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(gc::STAGING_PREFIX)
            {
                if let Err(err) = durable::remove_tree(&e.path()) {
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

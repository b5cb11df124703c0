//! Recovery: `slipway recover`, run first by every mutating command under
//! the lock. It reads the journal a killed run left behind and finishes or
//! undoes that transaction by the step recorded, never by guessing from the
//! file system (the table is in `docs/transaction.md`).

use super::*;

/// `slipway recover` (run first by every mutating command, under the lock):
/// finishes or undoes the transaction a killed run left in the journal,
/// deciding by its step. `Ok(None)`: there was nothing to recover.
pub fn recover(host: &Host) -> Result<Option<Outcome>, TxnError> {
    let log = host.log;
    // Every child this run starts is recorded from here on; and whatever a
    // killed run's children still do is stopped before anything is decided:
    // an orphaned migrate hook must not write after the data was restored.
    let ledger = host.layout.children_dir();
    crate::children::record_children_in(ledger.clone());
    match crate::children::reap_orphans(&ledger) {
        Ok(reaped) if !reaped.is_empty() => log.warn(format!(
            "stopped what an interrupted run had left running: {}{}",
            reaped
                .groups
                .iter()
                .map(String::as_str)
                .chain((!reaped.marked.is_empty()).then_some("its marked children"))
                .collect::<Vec<_>>()
                .join(", "),
            if reaped.survivors.is_empty() {
                String::new()
            } else {
                format!(" (still alive after SIGKILL: pids {:?})", reaped.survivors)
            }
        )),
        Ok(_) => {}
        Err(e) => log.warn(format!(
            "cannot read the ledger of children {}: {e}",
            ledger.display()
        )),
    }
    // The temporary files of atomic writes a killed run left (the journal's
    // own among them): under the lock, none belongs to a live writer.
    for dir in [
        host.layout.root().to_path_buf(),
        host.layout.state_dir(),
        host.layout.children_dir(),
        host.layout.index_cache_dir(),
    ] {
        if let Err(e) = durable::remove_stale_temps(&dir) {
            log.warn(format!(
                "cannot remove leftover temporary files in {}: {e}",
                dir.display()
            ));
        }
    }
    // ...and in `<persistence>/meta/`, through directory descriptors (the
    // app owns that tree; nothing in it is followed).
    let meta = crate::app_dir::open_persistence(host.persistence())
        .and_then(|p| match p {
            Some(p) => p.open_dir(std::ffi::OsStr::new("meta")),
            None => Ok(None),
        })
        .and_then(|m| m.map(|m| m.remove_stale_temps()).transpose());
    if let Err(e) = meta {
        log.warn(format!(
            "cannot remove leftover temporary files in meta/: {e}"
        ));
    }
    let Some(j) = journal::load(&host.layout)? else {
        return Ok(None);
    };
    let started = Instant::now();
    log.warn(format!(
        "recovering transaction {} ({} of {}), interrupted at step {}",
        j.txn,
        j.op,
        j.version
            .as_ref()
            .map_or_else(|| "an unknown release".to_string(), |v| v.to_string()),
        j.step
    ));
    let mut critical = false;
    // The undo of the step the run died in (journal::Step::undo): the same
    // table a run that fails the step uses.
    let undo = j.step.undo();
    let undone = undo_step(host, &j)?;
    // What recovery did is a `recovered` run, never a failure; only a run
    // that had already found its release at fault (killed while flipping
    // back) is recorded as that fault, as it would have been.
    let (cause, message, flip_latency) = match undo {
        Undo::Discard => (
            Cause::Recovered,
            format!(
                "interrupted at step {} before the service was touched; cleaned up",
                j.step
            ),
            None,
        ),
        Undo::RestoreAndResume => (
            Cause::Recovered,
            format!(
                "interrupted at step {} before the switch; {}app resumed",
                j.step,
                if undone.restored {
                    "data restored from the snapshot, "
                } else {
                    "data unchanged, "
                }
            ),
            None,
        ),
        Undo::FlipBack => {
            let Some(flipped) = undone.flipped else {
                return Err(TxnError::host(
                    "the flip back did not run",
                    "internal inconsistency",
                    "run `slipway recover` again",
                ));
            };
            critical = flipped.old_unhealthy.is_some();
            let (cause, mut message) = if j.step == Step::FlipBack {
                let decided = j.failure_cause.unwrap_or(if j.op.installs_new_release() {
                    Cause::Unhealthy
                } else {
                    Cause::RollbackUnhealthy
                });
                let cause = blame_after_flip_back(decided, critical);
                (
                    cause,
                    format!(
                        "interrupted while flipping back from {} ({}); flipped back",
                        version_text(j.version.as_ref()),
                        j.failure.clone().unwrap_or_default()
                    ),
                )
            } else {
                (
                    Cause::Recovered,
                    format!(
                        "interrupted at step {}; flipped back to {}",
                        j.step,
                        version_text(j.from_version.as_ref())
                    ),
                )
            };
            if let Some(problem) = &flipped.old_unhealthy {
                message.push_str(&format!(
                    "; CRITICAL: the old release is not healthy: {problem}"
                ));
            }
            (cause, message, flipped.latency)
        }
        Undo::Finish => {
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
                        cause: Some(Cause::Updated),
                    });
                }
                report_decision(host, &jd, ms(started.elapsed()))?;
            }
            collect(host);
            (
                Cause::Recovered,
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
        result: cause.result(),
        from_version: j.from_version.clone(),
        version: j.version.clone(),
        release_id: j.release_id,
        message: format!("{} of txn {}: {message}", j.op, j.txn),
        duration_ms: ms(started.elapsed()),
        cause: Some(cause),
        // The interrupted run's attempt, if it was the timer's.
        auto: j.auto,
    };
    // Past Commit the decided attempt is (now) counted: the recover entry
    // is shown as the last attempt but not counted again.
    if undo == Undo::Finish {
        let mut state = HostState::load_at(&host.layout, at)?;
        state.last_attempt = Some(attempt.clone());
        state.save(&host.layout)?;
        crate::report::append_history(&host.layout, &attempt)
            .unwrap_or_else(|e| log.warn(format!("{e}")));
    } else {
        record_and_report(host, attempt, j.failure.clone())?;
    }
    journal::finish(&host.layout)?;
    log.debug(format!("recovered: {message}"));
    // Recovery itself succeeded: the host is consistent again. Only an old
    // release that is not healthy afterwards makes it fail.
    let exit = if critical { Exit::Failed } else { Exit::Done };
    let mut o = Outcome::of_cause("recover", cause, message);
    o.exit = exit;
    o.exit_code = exit as i32;
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

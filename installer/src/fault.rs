//! Crash-test hooks: with the `fault-injection` feature, the process kills
//! itself with SIGKILL right after a chosen journal step is recorded, so the
//! crash-recovery tests can stop a transaction at every step and check that
//! `slipway recover` finishes or undoes it.
//!
//! Without the feature (every normal build) [`after_journal`] compiles to
//! nothing: no environment variable can make a production binary crash.

use crate::journal::Step;

/// The environment variable naming the step after whose journal record the
/// process dies (`SLIPWAY_FAULT_AFTER=Switch`).
pub const FAULT_ENV: &str = "SLIPWAY_FAULT_AFTER";

/// Whether this binary was built with the crash-test hooks.
pub const ENABLED: bool = cfg!(feature = "fault-injection");

/// Called by [`crate::journal::record`] right after the journal naming `step`
/// is durably written, before the step runs.
#[cfg(feature = "fault-injection")]
pub fn after_journal(step: Step) {
    let wanted = std::env::var(FAULT_ENV).unwrap_or_default();
    if wanted.trim() == step.name() {
        eprintln!("slipway: fault injection: SIGKILL after recording step {step}");
        // SIGKILL, not exit: no destructor, no buffered write, no unlock runs,
        // exactly like a power cut or the OOM killer.
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // kill(2) of oneself with SIGKILL does not return; be sure anyway.
        std::process::abort();
    }
}

/// Called by [`crate::journal::record`] right after the journal naming `step`
/// is durably written; a no-op in builds without `fault-injection`.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn after_journal(_step: Step) {}

/// The environment variable naming a point inside a step where the process
/// dies (`SLIPWAY_FAULT_DURING=hardlink`: right after staging linked its
/// first file from the running release).
pub const FAULT_DURING_ENV: &str = "SLIPWAY_FAULT_DURING";

/// Called at the named point inside a step; kills the process with SIGKILL
/// when [`FAULT_DURING_ENV`] names it.
#[cfg(feature = "fault-injection")]
pub fn during(point: &str) {
    let wanted = std::env::var(FAULT_DURING_ENV).unwrap_or_default();
    if wanted.trim() == point {
        eprintln!("slipway: fault injection: SIGKILL during {point}");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::process::abort();
    }
}

/// A no-op in builds without `fault-injection`.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn during(_point: &str) {}

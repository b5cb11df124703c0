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

/// The environment variable naming a point inside a step after which the
/// process dies, for the steps whose own work has crash windows of its own:
/// `restore-moved-aside` (a restore has moved the live data aside) and
/// `hardlink` (staging has linked its first file from the running release).
pub const FAULT_POINT_ENV: &str = "SLIPWAY_FAULT_AT";

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

/// Called at the named points inside a step (see [`FAULT_POINT_ENV`]).
#[cfg(feature = "fault-injection")]
pub fn at_point(point: &str) {
    let wanted = std::env::var(FAULT_POINT_ENV).unwrap_or_default();
    if wanted.trim() == point {
        eprintln!("slipway: fault injection: SIGKILL at {point}");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::process::abort();
    }
}

/// The environment variable naming an operation that [`refused`] makes
/// fail (`link`: every hardlink of staging), to test the fallbacks.
pub const FAULT_REFUSE_ENV: &str = "SLIPWAY_FAULT_REFUSE";

/// Whether the operation `what` is to fail as a file system that does not
/// allow it would (see [`FAULT_REFUSE_ENV`]).
#[cfg(feature = "fault-injection")]
pub fn refused(what: &str) -> bool {
    std::env::var(FAULT_REFUSE_ENV).is_ok_and(|w| w.trim() == what)
}

/// Always `false` in builds without `fault-injection`.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn refused(_what: &str) -> bool {
    false
}

/// Called at the named points inside a step; a no-op in builds without
/// `fault-injection`.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn at_point(_point: &str) {}

/// Called by [`crate::journal::record`] right after the journal naming `step`
/// is durably written; a no-op in builds without `fault-injection`.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn after_journal(_step: Step) {}

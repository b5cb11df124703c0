//! The on-host installer: verify, stage, switch, restart, health-gate, flip
//! back, report. One module per step of the update transaction (SPEC §4),
//! and [`transaction`] runs them in order, journaling each step before it
//! starts so that `recover` knows exactly what to finish or undo.

pub mod app_dir;
pub mod app_user;
pub mod bundle;
pub mod children;
pub mod clean;
pub mod commands;
pub mod config;
pub mod delta;
pub mod diff;
pub mod eligibility;
pub mod failure_model;
pub mod fault;
pub mod fetch;
pub mod gc;
pub mod health;
pub mod hooks;
pub mod identity;
pub mod journal;
pub mod layout;
pub mod lock;
pub mod probation;
pub mod quiesce;
pub mod report;
pub mod reserve;
pub mod service;
pub mod snapshot;
pub mod source;
pub mod stage;
pub mod state;
pub mod switch;
pub mod term;
pub mod transaction;
pub mod verify;

/// Durable writes are slipway-fs's, shared with `slipway-pack`; re-exported
/// here so every step writes through `crate::durable`.
pub use slipway_fs::durable;

/// The documented, stable exit codes (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done, or nothing to do.
    Done = 0,
    /// Failed; the old release is still running (or, in the one CRITICAL
    /// case of a flip back whose restore failed, the links are back and
    /// the journal stays for `recover`: docs/transaction.md, "A full disk").
    Failed = 1,
    /// Bad usage or configuration.
    Usage = 2,
    /// Updated, found unhealthy, rolled back.
    RolledBack = 3,
    /// Skipped: not eligible (the message says why).
    Skipped = 4,
    /// Another run holds the lock.
    Locked = 5,
}

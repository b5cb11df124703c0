//! The `slipway` command line (SPEC §5): parsing, the lock, recovery first,
//! and mapping every ending to the documented exit codes.
//!
//! | exit | meaning |
//! | --- | --- |
//! | 0 | done, or nothing to do |
//! | 1 | failed; the old release is still running |
//! | 2 | bad usage or configuration |
//! | 3 | updated, found unhealthy, rolled back |
//! | 4 | skipped: not eligible (the message says why) |
//! | 5 | locked by another run (the message names its pid) |
//! | 143 | stopped by SIGTERM mid-run; the journal stays and `recover` finishes or undoes it (docs/transaction.md) |
//!
//! Mutating commands (`install`, `update`, `apply`, `rollback`, `restore`,
//! `recover`, `gc`, `enable`, `disable`) take the transaction lock and run
//! [`transaction::recover`](crate::transaction::recover) first. Read-only
//! commands (`status`, `history`, `backups`, `check`, `verify`, `units`, and
//! `--dry-run`) take no lock and write nothing. Errors go to stderr as
//! `slipway: error: <what>: <why>` and a `  hint: <what to do>` line;
//! results go to stdout (JSON with `--json`).
//!
//! One file per job:
//!
//! | file | job |
//! | --- | --- |
//! | `args.rs` | the command line as clap parses it |
//! | `dispatch.rs` | running a command: configuration, lock, recovery first, output, exit codes |
//! | `discover.rs` | which release a source offers this host (SPEC §4 step 1) |
//! | `install.rs` | `install` / `update`: plain, `--interactive` and `--dry-run` |
//! | `backups.rs` | `backups` (the list) and `restore` (the checks, the question, the transaction) |
//! | `views.rs` | what the reporting commands print: `check`, `status`, `history`, `verify`, `gc` |
//! | `units.rs` | `slipway units`: the systemd units that run `update --auto` and `recover` |

mod args;
mod backups;
mod discover;
mod dispatch;
mod install;
mod units;
mod views;

pub use args::{Cli, Command, LockArgs, WAIT_FOR_LOCK};
pub use dispatch::{print_failure, run, CommandError};
pub use units::{unit_files, Units, RECOVER_SERVICE, UPDATE_SERVICE, UPDATE_TIMER};

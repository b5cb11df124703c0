//! Running a parsed command line: the configuration, the transaction lock
//! and recovery first for mutating commands, printing outcomes, and the
//! mapping of every ending to the documented exit code.

use std::io::Write;
use std::time::Duration;

use crate::config::{Config, ConfigError};
use crate::failure_model::Cause;
use crate::lock::{LockError, TransactionLock};
use crate::source::Source;
use crate::state::{HostState, SystemClock};
use crate::transaction::{self, Failure, Host, InstallOptions, Log, Outcome, TxnError, Verbosity};
use crate::Exit;
use serde::Serialize;

use super::args::{Cli, Command, LockArgs, WAIT_FOR_LOCK};
use super::backups::{backups, restore_cmd};
use super::discover::{auto_precheck, configured_source, open_bundle_tar, source_error};
use super::install::{dry_run_cmd, install_from, install_interactive};
use super::units::units;
use super::views::{check, gc_cmd, history, print_switch_result, status, verify_cmd};

/// An error that ends the command, with its exit code.
#[derive(Debug)]
pub struct CommandError {
    pub exit: Exit,
    pub failure: Failure,
}

impl CommandError {
    pub(super) fn new(
        exit: Exit,
        what: impl Into<String>,
        why: impl ToString,
        hint: impl Into<String>,
    ) -> Self {
        CommandError {
            exit,
            failure: Failure::new(what, why, hint),
        }
    }
}

impl From<TxnError> for CommandError {
    fn from(e: TxnError) -> Self {
        let hint = e.hint();
        CommandError::new(Exit::Failed, "the transaction stopped", e, hint)
    }
}

/// Prints `slipway: error: <what>: <why>` and the hint to stderr.
pub fn print_failure(f: &Failure) {
    print_ending(f, Exit::Failed);
}

/// Prints why a command ended without doing its job: `slipway: error: <what>:
/// <why>`, or for a skip (exit 4, an ordinary end of a timer run, not an
/// error) `slipway: <what>: <why>`, and the hint when there is one.
fn print_ending(f: &Failure, exit: Exit) {
    let mut err = std::io::stderr().lock();
    let label = if exit == Exit::Skipped { "" } else { "error: " };
    let _ = writeln!(err, "slipway: {label}{}: {}", f.what, f.why);
    if !f.hint.is_empty() {
        let _ = writeln!(err, "  hint: {}", f.hint);
    }
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let log = Log {
        verbosity: if cli.quiet {
            Verbosity::Quiet
        } else if cli.verbose {
            Verbosity::Verbose
        } else {
            Verbosity::Normal
        },
    };
    match dispatch(&cli, log) {
        Ok(exit) => exit as i32,
        Err(e) => {
            print_ending(&e.failure, e.exit);
            e.exit as i32
        }
    }
}

fn dispatch(cli: &Cli, log: Log) -> Result<Exit, CommandError> {
    match &cli.command {
        Command::DebugFeatures => {
            slipway_fs::outln!(
                "fault-injection={}",
                if crate::fault::ENABLED { "on" } else { "off" }
            );
            return Ok(Exit::Done);
        }
        Command::Units {
            write,
            polkit,
            polkit_user,
        } => {
            let config = load_config(cli)?;
            if *polkit || polkit_user.is_some() {
                return super::units::print_polkit_rule(&config, polkit_user.as_deref());
            }
            return units(&config, write.as_deref());
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "slipway", &mut std::io::stdout());
            return Ok(Exit::Done);
        }
        Command::Man { out } => {
            let cmd = <Cli as clap::CommandFactory>::command();
            let pages = crate::term::write_man_pages(cmd, out).map_err(|e| {
                CommandError::new(
                    Exit::Failed,
                    format!("cannot write the man pages into {}", out.display()),
                    e,
                    "check that the directory is writable",
                )
            })?;
            for p in pages {
                slipway_fs::outln!("wrote {}", p.display());
            }
            return Ok(Exit::Done);
        }
        _ => {}
    }
    let config = load_config(cli)?;
    let clock = SystemClock;
    let host = Host::new(&config, &clock, log);
    match &cli.command {
        Command::Install {
            source,
            dry_run,
            allow_downgrade,
            force,
            allow_expired,
            interactive,
            lock,
            json,
        } => {
            let src = Source::parse(source).map_err(|e| source_error(e, Exit::Usage))?;
            let opts = InstallOptions {
                op: crate::journal::Operation::Install,
                auto: false,
                force: *force,
                allow_downgrade: *allow_downgrade,
            };
            if *dry_run {
                // A bundle tar is unpacked outside the root: nothing there changes.
                let (src, _scratch) = open_bundle_tar(src, &std::env::temp_dir())?;
                return dry_run_cmd(&host, &src, &opts, *allow_expired, *json);
            }
            let _lock = lock_and_recover(&host, *lock)?;
            let (src, _scratch) = open_bundle_tar(src, &host.layout.downloads_dir())?;
            if *interactive {
                return install_interactive(&host, &src, &opts, *allow_expired, *json);
            }
            install_from(&host, &src, &opts, *allow_expired, *json)
        }
        Command::Update {
            dry_run,
            auto,
            force,
            allow_expired,
            interactive,
            lock,
            json,
        } => {
            let src = configured_source(&config)?;
            let opts = InstallOptions {
                op: crate::journal::Operation::Update,
                auto: *auto,
                force: *force,
                allow_downgrade: false,
            };
            if *dry_run {
                return dry_run_cmd(&host, &src, &opts, *allow_expired, *json);
            }
            let _lock = lock_and_recover(&host, *lock)?;
            if *auto {
                if let Some(o) = auto_precheck(&host)? {
                    return Ok(emit(&host, &o, *json));
                }
            }
            if *interactive {
                return install_interactive(&host, &src, &opts, *allow_expired, *json);
            }
            install_from(&host, &src, &opts, *allow_expired, *json)
        }
        Command::Check {
            json,
            allow_expired,
        } => check(&host, *allow_expired, *json),
        Command::Apply { lock, json } => {
            let _lock = lock_and_recover(&host, *lock)?;
            let o = transaction::apply(&host)?;
            Ok(emit(&host, &o, *json))
        }
        Command::Rollback {
            restore_data,
            lock,
            json,
        } => {
            let _lock = lock_and_recover(&host, *lock)?;
            let o = transaction::rollback(&host, *restore_data)?;
            Ok(emit(&host, &o, *json))
        }
        Command::Backups { json } => backups(&host, *json),
        Command::Restore {
            backup,
            yes,
            force,
            lock,
            json,
        } => {
            let _lock = lock_and_recover(&host, *lock)?;
            restore_cmd(&host, backup, *yes, *force, *json)
        }
        Command::Status { json } => status(&host, *json),
        Command::History { json, limit } => history(&host, *json, *limit),
        Command::Verify { json, quick } => verify_cmd(&host, *json, *quick),
        Command::Recover { lock, json } => {
            let _lock = take_lock(&host, *lock)?;
            match transaction::recover(&host)? {
                // Exit 0: the host is consistent again (1 only when the old
                // release is not healthy afterwards).
                Some(o) => Ok(emit(&host, &o, *json)),
                None => {
                    let mut o = Outcome::of_cause(
                        "recover",
                        Cause::UpToDate,
                        "no interrupted transaction; nothing to recover",
                    );
                    o.cause = None;
                    Ok(emit(&host, &o, *json))
                }
            }
        }
        Command::Gc { lock, json } => {
            let _lock = lock_and_recover(&host, *lock)?;
            gc_cmd(&host, *json)
        }
        Command::Enable { lock, json } => {
            let _lock = lock_and_recover(&host, *lock)?;
            let mut state = load_state(&host)?;
            let changed = state.enable(config.update.max_failures_per_day);
            state.save(&host.layout).map_err(TxnError::from)?;
            let message = enable_message(&config, &changed);
            if !host.log.is_quiet() || *json {
                print_switch_result(*json, config.update.enabled, &message);
            }
            Ok(Exit::Done)
        }
        Command::Disable { reason, lock, json } => {
            let _lock = lock_and_recover(&host, *lock)?;
            let mut state = load_state(&host)?;
            let reason = reason
                .clone()
                .unwrap_or_else(|| "disabled with `slipway disable`".to_string());
            state.disable(reason.clone(), host.clock.now());
            state.save(&host.layout).map_err(TxnError::from)?;
            if !host.log.is_quiet() || *json {
                print_switch_result(
                    *json,
                    false,
                    &format!("auto-update disabled: {reason}; `slipway enable` turns it back on"),
                );
            }
            Ok(Exit::Done)
        }
        Command::Units { .. }
        | Command::DebugFeatures
        | Command::Completions { .. }
        | Command::Man { .. } => Ok(Exit::Done),
    }
}

fn load_config(cli: &Cli) -> Result<Config, CommandError> {
    let usage = |e: ConfigError| {
        let hint = match &e {
            ConfigError::NotFound(_) => {
                "create /etc/slipway/update.toml (see docs/configuration.md) or pass --config FILE"
            }
            ConfigError::Read { .. } => "check the path and its permissions",
            ConfigError::Invalid { .. } => {
                "fix the key named above (see docs/configuration.md for every key)"
            }
            ConfigError::Env { .. } => {
                "fix or unset the environment variable named above (docs/configuration.md lists them)"
            }
        };
        CommandError::new(Exit::Usage, "bad configuration", e, hint)
    };
    let path = Config::locate(cli.config.as_deref()).map_err(usage)?;
    // Absolute, so every path resolved against it is absolute too: hooks
    // run in the release directory and must get absolute paths.
    let path = std::path::absolute(&path).unwrap_or(path);
    Config::load(&path).map_err(usage)
}

fn take_lock(host: &Host, args: LockArgs) -> Result<TransactionLock, CommandError> {
    // Checked before anything is created (create_dir_all follows links),
    // and again after.
    let unsafe_dir = |e: crate::layout::UnsafeDir| {
        CommandError::new(
            Exit::Usage,
            "unsafe install root",
            e.to_string(),
            "nothing was changed; fix the directory as said, then run the command again",
        )
    };
    host.layout.check_safe().map_err(unsafe_dir)?;
    for dir in host.layout.dirs() {
        crate::durable::create_dirs(&dir).map_err(|e| {
            CommandError::new(
                Exit::Failed,
                format!("cannot create {}", dir.display()),
                e,
                "check that slipway runs as the owner of paths.root",
            )
        })?;
    }
    host.layout.check_safe().map_err(unsafe_dir)?;
    let wait = if args.wait {
        WAIT_FOR_LOCK
    } else {
        Duration::from_secs(host.config.update.lock_wait_seconds)
    };
    TransactionLock::acquire(&host.layout.lock_file(), wait).map_err(|e| match &e {
        LockError::Held { holder, .. } => CommandError::new(
            Exit::Locked,
            format!("locked by pid {holder}"),
            e.to_string(),
            "another slipway run is in progress; wait for it or pass --wait",
        ),
        LockError::Io { .. } => CommandError::new(
            Exit::Failed,
            "cannot take the transaction lock",
            e,
            "check the permissions of the state directory",
        ),
    })
}

/// Makes SIGTERM (`systemctl stop`, a shutdown) end the run with exit 143
/// instead of a death by the signal. The journal is consistent at every
/// instant, so ending here is as safe as a SIGKILL; but systemd counts a
/// death by SIGTERM as a clean stop, and a non-zero exit as a failure, which
/// starts `slipway-recover.service` (`OnFailure=`) at once instead of at the
/// next boot. Outside systemd the next command recovers, as after any kill.
fn exit_at_sigterm(host: &Host) {
    let log = host.log;
    match signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                if signals.forever().next().is_some() {
                    log.warn("stopped by SIGTERM; the journal stays and `slipway recover` finishes or undoes the transaction");
                    std::process::exit(143);
                }
            });
        }
        Err(e) => log.debug(format!("cannot watch for SIGTERM: {e}")),
    }
}

/// The lock, then recovery of anything a killed run left.
fn lock_and_recover(host: &Host, args: LockArgs) -> Result<TransactionLock, CommandError> {
    let lock = take_lock(host, args)?;
    exit_at_sigterm(host);
    if let Some(o) = transaction::recover(host)? {
        host.log.warn(format!(
            "an interrupted transaction was recovered first: {}",
            o.message
        ));
    }
    Ok(lock)
}

pub(super) fn load_state(host: &Host) -> Result<HostState, CommandError> {
    HostState::load_at(&host.layout, host.clock.now())
        .map_err(|e| CommandError::from(TxnError::from(e)))
}

/// What `slipway enable` says: what it turned on, whether it reset today's
/// failure count (and why), and which setting still keeps auto-update off.
fn enable_message(config: &Config, changed: &crate::state::Enabled) -> String {
    let mut message = match &changed.was {
        Some(d) => format!(
            "auto-update enabled (it was disabled by {} at {}: {})",
            d.by, d.at, d.reason
        ),
        None => "auto-update was not disabled by slipway; nothing to turn back on".to_string(),
    };
    if let Some(n) = changed.failures_reset {
        message.push_str(&format!(
            "; today's failure count ({n}) reset to 0, since it alone would keep it off (max_failures_per_day = {})",
            config.update.max_failures_per_day
        ));
    }
    if let Some(setting) = crate::report::disabling_setting(config) {
        message.push_str(&format!(
            "; but it stays OFF: {setting}, which `slipway enable` cannot change"
        ));
    }
    message
}

/// Prints an outcome and returns its exit code: one result line on stdout
/// (JSON with `--json`), or the error and its hint on stderr. Nothing with
/// `--quiet` when it succeeded; and nothing when the result already went
/// to journald and this output would land in the journal too (under
/// systemd), so that every run logs its result exactly once.
pub(super) fn emit(host: &Host, o: &Outcome, json: bool) -> Exit {
    if json {
        print_json(o);
        if let Some(f) = &o.failure {
            print_ending(f, o.exit);
        }
        return o.exit;
    }
    let succeeded = o.exit == Exit::Done;
    match &o.failure {
        None if succeeded && host.log.is_quiet() => {}
        None if o.message.is_empty() => {}
        None if crate::report::result_in_journal(crate::term::Stream::Stdout) => {}
        None => slipway_fs::outln!("{}", o.message),
        Some(_) if crate::report::result_in_journal(crate::term::Stream::Stderr) => {}
        Some(f) => print_ending(f, o.exit),
    }
    o.exit
}

pub(super) fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => slipway_fs::outln!("{s}"),
        Err(e) => eprintln!("slipway: error: cannot print JSON: {e}"),
    }
}

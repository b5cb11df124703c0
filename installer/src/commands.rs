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
//!
//! Mutating commands (`install`, `update`, `apply`, `rollback`, `recover`,
//! `gc`, `enable`, `disable`) take the transaction lock and run
//! [`transaction::recover`] first. Read-only commands (`status`, `history`,
//! `check`, `verify`, `units`, and `--dry-run`) take no lock and write
//! nothing. Errors go to stderr as `slipway: error: <what>: <why>` and a
//! `  hint: <what to do>` line; results go to stdout (JSON with `--json`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde::Serialize;
use slipway_formats::channel::Timestamp;
use slipway_formats::state::AttemptResult;
use slipway_formats::{ReleaseId, Version};

use crate::config::{Config, ConfigError, ManagerKind};
use crate::diff::{verify_installed, Drift};
use crate::eligibility::{check_eligibility, EligibilityInput};
use crate::fetch::HttpClient;
use crate::journal::{self, Operation};
use crate::layout::Layout;
use crate::lock::{LockError, TransactionLock};
use crate::report;
use crate::source::{self, Candidate, Discovery, Repository, Selection, Source, SourceError};
use crate::state::{Attempt, HostState, SystemClock};
use crate::switch;
use crate::transaction::{
    self, Failure, Host, InstallOptions, Log, Outcome, Preview, TxnError, Verbosity,
};
use crate::verify::Expectations;
use crate::Exit;

/// How long `--wait` waits for the lock.
pub const WAIT_FOR_LOCK: Duration = Duration::from_secs(600);

/// slipway: installs signed releases with an atomic switch, a health gate
/// and an automatic flip back.
#[derive(Debug, Parser)]
#[command(name = "slipway", version, about, propagate_version = true)]
pub struct Cli {
    /// The configuration file (default: $SLIPWAY_CONFIG, else
    /// ./config/update.toml, else /etc/slipway/update.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print only errors.
    #[arg(long, short, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print every step with timings.
    #[arg(long, short, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by the commands that take the lock.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct LockArgs {
    /// Wait up to 10 minutes for another run to finish instead of
    /// `update.lock_wait_seconds`.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Install a release from an archive (with its .minisig beside it), a
    /// repository directory or an offline bundle.
    Install {
        /// X.tar.zst, a repository dir, or an offline bundle dir.
        source: String,
        /// Verify, unpack into a temporary directory and run the checks,
        /// then show what would change; nothing under the root changes.
        #[arg(long)]
        dry_run: bool,
        /// Accept a version older than (or equal to) the running one.
        #[arg(long)]
        allow_downgrade: bool,
        /// Ignore the bad list and the clean-tree rule.
        #[arg(long)]
        force: bool,
        /// Accept an expired channel index (repositories and bundles).
        #[arg(long)]
        allow_expired: bool,
        /// Show the verified release and its file-level diff, run its
        /// checks, and switch only after a "y" on stdin.
        #[arg(long, conflicts_with = "dry_run")]
        interactive: bool,
        #[command(flatten)]
        lock: LockArgs,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Update from the configured source and channel.
    Update {
        /// Show what would be installed; nothing under the root changes.
        #[arg(long)]
        dry_run: bool,
        /// Run as the timer does: every eligibility rule applies.
        #[arg(long)]
        auto: bool,
        /// Ignore the bad list and the clean-tree rule.
        #[arg(long)]
        force: bool,
        /// Accept an expired channel index.
        #[arg(long)]
        allow_expired: bool,
        /// The seed's manual mode: show the verified release and its
        /// file-level diff, run its checks, and switch only after a "y" on
        /// stdin.
        #[arg(long, conflicts_with_all = ["dry_run", "auto"])]
        interactive: bool,
        #[command(flatten)]
        lock: LockArgs,
        #[arg(long)]
        json: bool,
    },
    /// Discover and verify the newest release and show the file-level diff;
    /// apply nothing.
    Check {
        #[arg(long)]
        json: bool,
        /// Accept an expired channel index.
        #[arg(long)]
        allow_expired: bool,
    },
    /// Finish an update staged with auto_restart = false.
    Apply {
        #[command(flatten)]
        lock: LockArgs,
        #[arg(long)]
        json: bool,
    },
    /// Go back to the previous release, with the same health gate.
    Rollback {
        #[command(flatten)]
        lock: LockArgs,
        #[arg(long)]
        json: bool,
    },
    /// What runs, what happened last, what is pending.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Past attempts, oldest first.
    History {
        #[arg(long)]
        json: bool,
        /// Only the newest N entries.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// Check the running release's files against its manifest.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// Finish or undo a transaction a killed run left behind.
    Recover {
        #[command(flatten)]
        lock: LockArgs,
        #[arg(long)]
        json: bool,
    },
    /// Remove old releases, snapshots and leftovers.
    Gc {
        #[command(flatten)]
        lock: LockArgs,
        #[arg(long)]
        json: bool,
    },
    /// Turn automatic updates back on (after repeated failures or `disable`).
    Enable {
        #[command(flatten)]
        lock: LockArgs,
        #[arg(long)]
        json: bool,
    },
    /// Turn automatic updates off until `slipway enable`.
    Disable {
        /// Why, shown in `status` and on the dashboard.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        lock: LockArgs,
        #[arg(long)]
        json: bool,
    },
    /// Print (or write) the systemd service and timer that run `update --auto`.
    Units {
        /// Write slipway-update.service and slipway-update.timer into DIR.
        #[arg(long, value_name = "DIR")]
        write: Option<PathBuf>,
    },
    /// Print the compile-time features of this binary (for tests).
    #[command(hide = true, name = "debug-features")]
    DebugFeatures,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (slipway.1 and one per command) into DIR.
    #[command(hide = true)]
    Man {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// An error that ends the command, with its exit code.
#[derive(Debug)]
pub struct CommandError {
    pub exit: Exit,
    pub failure: Failure,
}

impl CommandError {
    fn new(
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
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "slipway: error: {}: {}", f.what, f.why);
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
            print_failure(&e.failure);
            e.exit as i32
        }
    }
}

fn dispatch(cli: &Cli, log: Log) -> Result<Exit, CommandError> {
    match &cli.command {
        Command::DebugFeatures => {
            println!(
                "fault-injection={}",
                if crate::fault::ENABLED { "on" } else { "off" }
            );
            return Ok(Exit::Done);
        }
        Command::Units { write } => {
            let config = load_config(cli)?;
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
                println!("wrote {}", p.display());
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
                op: Operation::Install,
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
                op: Operation::Update,
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
                    return Ok(emit(&o, *json));
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
            Ok(emit(&o, *json))
        }
        Command::Rollback { lock, json } => {
            let _lock = lock_and_recover(&host, *lock)?;
            let o = transaction::rollback(&host)?;
            Ok(emit(&o, *json))
        }
        Command::Status { json } => status(&host, *json),
        Command::History { json, limit } => history(&host, *json, *limit),
        Command::Verify { json } => verify_cmd(&host, *json),
        Command::Recover { lock, json } => {
            let _lock = take_lock(&host, *lock)?;
            match transaction::recover(&host)? {
                Some(mut o) => {
                    // The recovery itself succeeded: the host is consistent
                    // again. Only a release that is not healthy afterwards
                    // makes `recover` fail.
                    o.exit = if o.critical { Exit::Failed } else { Exit::Done };
                    o.exit_code = o.exit as i32;
                    Ok(emit(&o, *json))
                }
                None => {
                    let o = Outcome::simple(
                        "recover",
                        AttemptResult::UpToDate,
                        Exit::Done,
                        "no interrupted transaction; nothing to recover",
                    );
                    Ok(emit(&o, *json))
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
            state.enable();
            state.save(&host.layout).map_err(TxnError::from)?;
            let message = if config.update.enabled {
                "auto-update enabled".to_string()
            } else {
                format!(
                    "auto-update re-armed, but [update] enabled = false in {} (or BOT_AUTO_UPDATE=0) still keeps it off",
                    config.file.display()
                )
            };
            print_switch_result(*json, config.update.enabled, &message);
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
            print_switch_result(
                *json,
                false,
                &format!("auto-update disabled: {reason}; `slipway enable` turns it back on"),
            );
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
            ConfigError::Invalid { .. } | ConfigError::Env { .. } => {
                "fix the key named above (see docs/configuration.md for every key)"
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

fn source_error(e: SourceError, exit: Exit) -> CommandError {
    let hint = match &e {
        SourceError::BadUrl { .. } => {
            "give the repository's base URL (the directory holding channels/ and releases/)"
        }
        SourceError::Fetch { .. } => "nothing was installed; the message above says what to check",
        SourceError::UntrustedKey { .. } => {
            "add the key to update.public_keys only if you trust it; nothing was installed"
        }
        SourceError::NotFound { .. } | SourceError::Unrecognized { .. } => {
            "give an archive path, or a directory with channels/ and releases/"
        }
        SourceError::Expired { .. } => "re-publish the channel, or pass --allow-expired once",
        SourceError::ClockWentBack { .. } => "fix the system clock (timedatectl status)",
        _ => "nothing was installed; check the source and the trusted keys",
    };
    CommandError::new(exit, "cannot use the release source", e, hint)
}

/// `[update] source` as a [`Source`]; an HTTP URL is refused for now.
fn configured_source(config: &Config) -> Result<Source, CommandError> {
    let Some(spec) = config
        .update
        .source
        .as_deref()
        .filter(|s| !s.trim().is_empty())
    else {
        return Err(CommandError::new(
            Exit::Usage,
            "no update source",
            format!("update.source is not set in {}", config.file.display()),
            "set update.source to the path of the release repository, or use `slipway install SOURCE`",
        ));
    };
    let lower = spec.to_ascii_lowercase();
    let resolved = if lower.starts_with("http://") || lower.starts_with("https://") {
        spec.to_string()
    } else {
        // Relative to the configuration file, like every path in it.
        let p = Path::new(spec);
        let base = config.file.parent().unwrap_or(Path::new("."));
        if p.is_absolute() {
            spec.to_string()
        } else {
            base.join(p).display().to_string()
        }
    };
    Source::parse(&resolved).map_err(|e| match e {
        SourceError::BadUrl { .. } => source_error(e, Exit::Usage),
        other => source_error(other, Exit::Failed),
    })
}

fn take_lock(host: &Host, args: LockArgs) -> Result<TransactionLock, CommandError> {
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

/// The lock, then recovery of anything a killed run left.
fn lock_and_recover(host: &Host, args: LockArgs) -> Result<TransactionLock, CommandError> {
    let lock = take_lock(host, args)?;
    if let Some(o) = transaction::recover(host)? {
        host.log.warn(format!(
            "an interrupted transaction was recovered first: {}",
            o.message
        ));
    }
    Ok(lock)
}

fn load_state(host: &Host) -> Result<HostState, CommandError> {
    HostState::load_at(&host.layout, host.clock.now())
        .map_err(|e| CommandError::from(TxnError::from(e)))
}

/// Prints an outcome (JSON or one line, plus the error lines) and returns
/// its exit code.
fn emit(o: &Outcome, json: bool) -> Exit {
    if json {
        print_json(o);
    } else if !o.message.is_empty() && o.failure.is_none() {
        println!("{}", o.message);
    }
    if let Some(f) = &o.failure {
        print_failure(f);
    }
    o.exit
}

fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("slipway: error: cannot print JSON: {e}"),
    }
}

/// Records a discovery-level result (up to date, skipped, refused index)
/// in the history and host state, and builds its outcome.
fn record(host: &Host, mut o: Outcome) -> Result<Outcome, CommandError> {
    let attempt = Attempt {
        op: o.op.clone(),
        at: host.clock.now(),
        result: o.result,
        from_version: o.from_version.clone(),
        version: o.version.clone(),
        release_id: o.release_id,
        message: o.message.clone(),
        duration_ms: o.duration_ms,
    };
    transaction::record_attempt(host, attempt)?;
    o.exit_code = o.exit as i32;
    Ok(o)
}

/// `update --auto`: the auto-only rules (enabled, attempts, failures) are
/// checked before the source is even read.
fn auto_precheck(host: &Host) -> Result<Option<Outcome>, CommandError> {
    let state = load_state(host)?;
    let input = EligibilityInput {
        config: host.config,
        layout: &host.layout,
        state: &state,
        running: None,
        needed_bytes: 0,
        auto: true,
        now: host.clock.now(),
    };
    match check_eligibility(&input) {
        Ok(()) => Ok(None),
        Err(i) => {
            let mut o = Outcome::simple(
                "update",
                AttemptResult::Skipped,
                Exit::Skipped,
                format!("skipped ({}): {}", i.rule, i.reason),
            );
            o.rule = Some(i.rule.to_string());
            o.failure = Some(Failure::new(
                "update skipped",
                format!("{} ({})", i.reason, i.rule),
                "the reason above says what to change",
            ));
            record(host, o).map(Some)
        }
    }
}

/// What discovery decided for a source.
enum Resolved {
    Install(Box<Candidate>),
    Nothing(Box<Outcome>),
}

/// Turns a source into a candidate: an archive directly, a repository
/// through its verified channel index. `persist_trust`: advance the trust
/// state (only under the lock, never for read-only commands).
fn resolve(
    host: &Host,
    src: &Source,
    opts: &InstallOptions,
    allow_expired: bool,
    persist_trust: bool,
) -> Result<Resolved, CommandError> {
    let running = transaction::running_release(&host.layout).map_err(|f| CommandError {
        exit: Exit::Failed,
        failure: f,
    })?;
    let app = running.as_ref().map(|r| r.manifest.app.clone());
    let channel = host.config.update.channel.clone();
    match src {
        Source::Archive { archive, signature } => {
            let keys = configured_keys(host)?;
            let keys = source::trusted_keys_for_archives(&keys, &host.layout)
                .map_err(|e| source_error(e, Exit::Failed))?;
            Ok(Resolved::Install(Box::new(Candidate {
                archive: archive.clone(),
                signature: signature.clone(),
                expect: Expectations {
                    app,
                    channel: Some(channel),
                    id: None,
                    max_size: None,
                },
                listed: None,
                keys,
                remote: None,
            })))
        }
        Source::Repo { dir } => {
            if let Some(r) = refuse_changed_bundle(host, dir, opts, persist_trust)? {
                return Ok(r);
            }
            let keys = configured_keys(host)?;
            let repo = Repository::Dir(dir);
            resolve_listed(
                host,
                &repo,
                &keys,
                running,
                opts,
                allow_expired,
                persist_trust,
            )
        }
        Source::Http { base } => {
            let keys = configured_keys(host)?;
            let progress = host.log.verbosity >= Verbosity::Normal;
            let client = HttpClient::from_config(&host.config.update, progress).map_err(|e| {
                CommandError::new(
                    Exit::Usage,
                    "cannot set up the HTTP client",
                    e,
                    "fix update.token_file in the configuration",
                )
            })?;
            let repo = Repository::Http {
                base,
                client: &client,
            };
            resolve_listed(
                host,
                &repo,
                &keys,
                running,
                opts,
                allow_expired,
                persist_trust,
            )
        }
    }
}

/// `[update] public_keys`.
fn configured_keys(host: &Host) -> Result<slipway_formats::TrustedKeys, CommandError> {
    host.config.trusted_keys().map_err(|e| {
        CommandError::new(
            Exit::Usage,
            "cannot load the trusted keys",
            e,
            "fix update.public_keys",
        )
    })
}

/// A refused or unreadable repository: under the lock the attempt is
/// recorded (a transient network failure without counting it against the
/// daily limits) and becomes the outcome; a read-only command just fails.
fn refuse(
    host: &Host,
    opts: &InstallOptions,
    persist: bool,
    err: CommandError,
    transient: bool,
) -> Result<Resolved, CommandError> {
    if !persist {
        return Err(err);
    }
    let mut o = Outcome::simple(
        opts.op.name(),
        AttemptResult::Failed,
        Exit::Failed,
        format!("{}: {}", err.failure.what, err.failure.why),
    );
    o.failure = Some(err.failure);
    if transient {
        let attempt = Attempt {
            op: o.op.clone(),
            at: host.clock.now(),
            result: o.result,
            from_version: None,
            version: None,
            release_id: None,
            message: o.message.clone(),
            duration_ms: 0,
        };
        transaction::record_attempt_uncounted(host, attempt)?;
        return Ok(Resolved::Nothing(Box::new(o)));
    }
    record(host, o).map(|o| Resolved::Nothing(Box::new(o)))
}

/// Discovery in a repository (a directory, a bundle or HTTP): the channel
/// index through [`source::read_channel`] (every check of SPEC §6; the
/// trust state, learned keys and index cache advance only under the lock),
/// then the release this host takes.
fn resolve_listed(
    host: &Host,
    repo: &Repository,
    keys: &slipway_formats::TrustedKeys,
    running: Option<transaction::Installed>,
    opts: &InstallOptions,
    allow_expired: bool,
    persist_trust: bool,
) -> Result<Resolved, CommandError> {
    let app = running.as_ref().map(|r| r.manifest.app.clone());
    let channel = host.config.update.channel.clone();
    let options = source::ReadOptions {
        layout: &host.layout,
        channel: &channel,
        app: app.as_deref(),
        configured_keys: keys,
        now: host.clock.now(),
        allow_expired,
        persist: persist_trust,
    };
    let read = match source::read_channel(repo, &options) {
        Ok(r) => r,
        Err(e) => {
            let transient = e.is_transient();
            let err = source_error(e, Exit::Failed);
            return refuse(host, opts, persist_trust, err, transient);
        }
    };
    for k in &read.learned {
        host.log.info(format!(
            "trusting release key {} {}: introduced by trusted key {} ({})",
            k.key_id,
            if persist_trust {
                "from now on"
            } else {
                "for this read-only run"
            },
            k.introduced_by,
            repo.location(&format!("keys/rotation-{}.json", k.key_id))
        ));
    }
    if read.not_modified {
        host.log
            .debug(format!("{}: not modified (304)", read.verified.location));
    }
    let verified = &read.verified;
    let state = load_state(host)?;
    let machine = source::machine_id(host.config.update.machine_id.as_deref());
    let running_version = running.as_ref().map(|r| r.manifest.version.clone());
    let sel = Selection {
        running: running_version.as_ref(),
        state: &state,
        machine_id: machine.as_deref(),
        canary: host.config.update.canary,
        force: opts.force,
    };
    let discovery = match source::select_release(&verified.index, &sel) {
        (Some(release), _) => Discovery::Candidate(Box::new(source::listed_candidate(
            repo,
            &verified.index,
            release,
            &read.keys,
            &host.layout.downloads_dir(),
        ))),
        (None, skipped) => Discovery::UpToDate {
            newest: verified.index.releases.first().map(|r| r.version.clone()),
            skipped,
        },
    };
    match discovery {
        Discovery::Candidate(c) => {
            // A release already staged and waiting for `apply`.
            if let (Some(p), Some(listed)) = (&state.pending, &c.listed) {
                if p.release_id == listed.id && !host.config.update.auto_restart {
                    let o = Outcome::simple(
                        opts.op.name(),
                        AttemptResult::Ready,
                        Exit::Done,
                        format!(
                            "update ready: {} is staged and checked; run `slipway apply`",
                            p.version
                        ),
                    );
                    return Ok(Resolved::Nothing(Box::new(o)));
                }
            }
            Ok(Resolved::Install(c))
        }
        Discovery::UpToDate { newest, skipped } => {
            let mut msg = format!(
                "up to date: running {}, channel {} (index v{}) offers {}",
                running_version
                    .as_ref()
                    .map_or_else(|| "nothing".into(), |v| v.to_string()),
                channel,
                verified.index.version,
                newest.map_or_else(|| "no release".into(), |v| v.to_string()),
            );
            if !skipped.is_empty() {
                msg.push_str(&format!("; passed over: {}", skipped.join("; ")));
            }
            let mut o = Outcome::simple(opts.op.name(), AttemptResult::UpToDate, Exit::Done, msg);
            o.from_version = running_version;
            if persist_trust {
                o = record(host, o)?;
            }
            Ok(Resolved::Nothing(Box::new(o)))
        }
    }
}

/// An offline bundle (a directory with `SHA256SUMS`) whose files do not
/// match their signed checksums is refused before its index is read
/// ([`crate::bundle::check_bundle`]), and the refusal recorded like a
/// refused index. `Ok(None)`: a plain repository, or a bundle that checks.
fn refuse_changed_bundle(
    host: &Host,
    dir: &Path,
    opts: &InstallOptions,
    persist_trust: bool,
) -> Result<Option<Resolved>, CommandError> {
    // The configured keys and those learned from rotation statements: a
    // bundle's SHA256SUMS must be signed by one of them.
    let keys = source::trusted_keys_for_archives(&configured_keys(host)?, &host.layout)
        .map_err(|e| source_error(e, Exit::Failed))?;
    let e = match crate::bundle::check_bundle(dir, &keys) {
        Ok(Some(b)) => {
            host.log.debug(format!(
                "bundle {}: {} files match SHA256SUMS{}",
                dir.display(),
                b.files,
                b.signed_by
                    .map(|k| format!(", signed by key {k}"))
                    .unwrap_or_default()
            ));
            return Ok(None);
        }
        Ok(None) => return Ok(None),
        Err(e) => e,
    };
    let hint = e.hint();
    let err = CommandError::new(Exit::Failed, "offline bundle refused", e, hint);
    // Recorded exactly like a refused index: a tampered bundle is not a
    // transient failure, so it counts against the daily limits.
    refuse(host, opts, persist_trust, err, false).map(Some)
}

fn install_from(
    host: &Host,
    src: &Source,
    opts: &InstallOptions,
    allow_expired: bool,
    json: bool,
) -> Result<Exit, CommandError> {
    match resolve(host, src, opts, allow_expired, true)? {
        Resolved::Nothing(o) => Ok(emit(&o, json)),
        Resolved::Install(c) => {
            let o = transaction::install(host, &c, opts)?;
            Ok(emit(&o, json))
        }
    }
}

/// A `.tar` offline bundle becomes the bundle directory it holds, unpacked
/// into a scratch directory under `scratch` (removed when the returned
/// guard drops); every other source is returned as it is.
fn open_bundle_tar(
    src: Source,
    scratch: &Path,
) -> Result<(Source, Option<tempfile::TempDir>), CommandError> {
    let Source::Archive { archive, .. } = &src else {
        return Ok((src, None));
    };
    if !crate::bundle::is_bundle_tar(archive) {
        return Ok((src, None));
    }
    let (guard, dir) = crate::bundle::unpack_bundle_tar(archive, scratch).map_err(|e| {
        let hint = e.hint();
        CommandError::new(Exit::Failed, "offline bundle refused", e, hint)
    })?;
    let src = Source::parse(&dir.to_string_lossy()).map_err(|e| source_error(e, Exit::Failed))?;
    Ok((src, Some(guard)))
}

/// `install --interactive` / `update --interactive`, the seed's phase 0
/// manual mode: discover and verify, stage and check the release in a
/// scratch directory, show the file-level diff, and run the transaction
/// only after the operator answers `y` on stdin. Any other answer, or end
/// of input, changes nothing and exits 4 (skipped).
fn install_interactive(
    host: &Host,
    src: &Source,
    opts: &InstallOptions,
    allow_expired: bool,
    json: bool,
) -> Result<Exit, CommandError> {
    let candidate = match resolve(host, src, opts, allow_expired, true)? {
        Resolved::Nothing(o) => return Ok(emit(&o, json)),
        Resolved::Install(c) => c,
    };
    host.log
        .info("verifying, staging and checking in a scratch directory");
    let preview = transaction::preview(host, &candidate, opts, true).map_err(|f| CommandError {
        exit: Exit::Failed,
        failure: f,
    })?;
    // With --json, stdout carries only the final result.
    if json {
        write_preview(&mut std::io::stderr().lock(), &preview, false);
    } else {
        write_preview(&mut std::io::stdout().lock(), &preview, false);
    }
    if preview.refused.is_some() || preview.checks_passed == Some(false) {
        let why = preview
            .refused
            .clone()
            .or_else(|| preview.checks_error.clone())
            .unwrap_or_default();
        return Err(CommandError::new(
            Exit::Failed,
            format!("{} {} cannot be installed", preview.app, preview.version),
            why,
            "nothing was changed",
        ));
    }
    if let Some(i) = &preview.ineligible {
        return Err(CommandError::new(
            Exit::Skipped,
            format!("{} {} would be skipped", preview.app, preview.version),
            i,
            "the reason above says what to change; nothing was changed",
        ));
    }
    let question = format!(
        "Switch to {} {} ({})? [y/N] ",
        preview.app,
        preview.version,
        preview.release_id.short()
    );
    if !ask_yes(&question) {
        let message = format!(
            "not switched to {} {}: declined; nothing was changed",
            preview.app, preview.version
        );
        if json {
            print_json(&serde_json::json!({
                "result": "declined",
                "exit_code": Exit::Skipped as i32,
                "version": preview.version,
                "release_id": preview.release_id,
                "message": message,
            }));
        } else {
            println!("{message}");
        }
        return Ok(Exit::Skipped);
    }
    let o = transaction::install(host, &candidate, opts)?;
    Ok(emit(&o, json))
}

/// Asks `question` on stderr and reads one line from stdin: true only for
/// `y` or `yes` (any case). End of input is a no.
fn ask_yes(question: &str) -> bool {
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "{question}");
    let _ = err.flush();
    drop(err);
    let mut line = String::new();
    match std::io::stdin().read_line(&mut line) {
        Ok(0) | Err(_) => {
            eprintln!();
            false
        }
        Ok(_) => matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes"),
    }
}

/// `enable` / `disable` output: one line, or JSON with `--json`.
fn print_switch_result(json: bool, enabled: bool, message: &str) {
    if json {
        print_json(&serde_json::json!({
            "auto_update_enabled": enabled,
            "message": message,
        }));
    } else {
        println!("{message}");
    }
}

/// `install --dry-run` / `update --dry-run`: no lock, no recovery, nothing
/// under the root changes.
fn dry_run_cmd(
    host: &Host,
    src: &Source,
    opts: &InstallOptions,
    allow_expired: bool,
    json: bool,
) -> Result<Exit, CommandError> {
    let candidate = match resolve(host, src, opts, allow_expired, false)? {
        Resolved::Nothing(o) => return Ok(emit(&o, json)),
        Resolved::Install(c) => c,
    };
    let preview = transaction::preview(host, &candidate, opts, true).map_err(|f| CommandError {
        exit: Exit::Failed,
        failure: f,
    })?;
    let exit = if preview.refused.is_some() || preview.checks_passed == Some(false) {
        Exit::Failed
    } else if preview.ineligible.is_some() {
        Exit::Skipped
    } else {
        Exit::Done
    };
    if json {
        print_json(&DryRun {
            dry_run: true,
            exit_code: exit as i32,
            preview: &preview,
        });
    } else {
        print_preview(&preview, true);
    }
    Ok(exit)
}

#[derive(Serialize)]
struct DryRun<'a> {
    dry_run: bool,
    exit_code: i32,
    #[serde(flatten)]
    preview: &'a Preview,
}

fn print_preview(p: &Preview, dry_run: bool) {
    write_preview(&mut std::io::stdout().lock(), p, dry_run);
}

fn write_preview(out: &mut dyn Write, p: &Preview, dry_run: bool) {
    let _ = writeln!(
        out,
        "{}{} {} ({}), {} bytes, signed by key {}",
        if dry_run { "dry run: " } else { "" },
        p.app,
        p.version,
        p.release_id,
        p.size,
        p.signer
    );
    let _ = writeln!(
        out,
        "running: {}",
        p.running_version
            .as_ref()
            .map_or_else(|| "nothing (first install)".into(), |v| v.to_string())
    );
    let _ = writeln!(
        out,
        "schema: data {} -> release {}{}",
        p.data_schema
            .map_or_else(|| "unknown".into(), |s| s.to_string()),
        p.schema_version,
        if p.migrates {
            " (the migrate hook would run)"
        } else {
            " (no migration)"
        }
    );
    if let Some(diff) = &p.diff {
        let _ = writeln!(out, "{diff}");
    }
    match (p.checks_passed, &p.checks_error) {
        (Some(true), _) => {
            let _ = writeln!(out, "checks: passed");
        }
        (Some(false), Some(e)) => {
            let _ = writeln!(out, "checks: FAILED: {e}");
        }
        _ => {}
    }
    if let Some(r) = &p.refused {
        let _ = writeln!(out, "would be refused: {r}");
    }
    if let Some(i) = &p.ineligible {
        let _ = writeln!(out, "would be skipped: {i}");
    }
    if dry_run {
        let _ = writeln!(out, "nothing was changed");
    }
}

/// `slipway check`: discover + verify + diff, read-only.
fn check(host: &Host, allow_expired: bool, json: bool) -> Result<Exit, CommandError> {
    let src = configured_source(host.config)?;
    let opts = InstallOptions {
        op: Operation::Check,
        auto: true,
        force: false,
        allow_downgrade: false,
    };
    let candidate = match resolve(host, &src, &opts, allow_expired, false)? {
        Resolved::Nothing(o) => {
            if json {
                print_json(&serde_json::json!({
                    "update_available": false,
                    "message": o.message,
                }));
            } else {
                println!("{}", o.message);
            }
            return Ok(Exit::Done);
        }
        Resolved::Install(c) => c,
    };
    let preview =
        transaction::preview(host, &candidate, &opts, false).map_err(|f| CommandError {
            exit: Exit::Failed,
            failure: f,
        })?;
    if json {
        print_json(&serde_json::json!({
            "update_available": preview.refused.is_none(),
            "candidate": preview,
        }));
    } else {
        println!("update available:");
        print_preview(&preview, false);
    }
    Ok(if preview.refused.is_some() {
        Exit::Failed
    } else {
        Exit::Done
    })
}

// ---------------------------------------------------------------------------
// status, history, verify, gc, units
// ---------------------------------------------------------------------------

#[derive(Debug, Serialize)]
struct ReleaseView {
    version: Version,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<ReleaseId>,
    id12: String,
    dir: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    installed_at: Option<Timestamp>,
    schema_version: u32,
}

#[derive(Debug, Serialize)]
struct JournalView {
    txn: String,
    op: String,
    step: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<Version>,
    started_at: Timestamp,
}

#[derive(Debug, Serialize)]
struct AutoUpdateView {
    enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Debug, Serialize)]
struct StatusView {
    root: PathBuf,
    channel: String,
    current: Option<ReleaseView>,
    previous: Option<ReleaseView>,
    last_attempt: Option<Attempt>,
    last_success: Option<Attempt>,
    day: String,
    attempts_today: u32,
    failures_today: u32,
    auto_update: AutoUpdateView,
    pending: Option<crate::state::Pending>,
    bad_releases: Vec<crate::state::BadRelease>,
    journal: Option<JournalView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    banner: Option<String>,
}

fn release_view(layout: &Layout, target: Option<PathBuf>) -> Option<ReleaseView> {
    let dir = switch::resolve_target(layout, &target?);
    let installed = transaction::read_installed(layout, &dir).ok()?;
    let id12 = installed.id.map(|i| i.short()).unwrap_or_else(|| {
        dir.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.rsplit('-').next())
            .unwrap_or_default()
            .to_string()
    });
    Some(ReleaseView {
        version: installed.manifest.version.clone(),
        id: installed.id,
        id12,
        installed_at: installed.installed_at,
        schema_version: installed.manifest.schema_version,
        dir,
    })
}

fn status(host: &Host, json: bool) -> Result<Exit, CommandError> {
    let layout = &host.layout;
    let links = switch::read_links(layout).map_err(TxnError::from)?;
    let state = load_state(host)?;
    let journal = journal::load(layout).map_err(TxnError::from)?;
    let config = host.config;
    let auto = AutoUpdateView {
        enabled: config.update.enabled && state.disabled.is_none(),
        reason: if !config.update.enabled {
            Some(format!(
                "[update] enabled = false in {} (or BOT_AUTO_UPDATE=0)",
                config.file.display()
            ))
        } else {
            state
                .disabled
                .as_ref()
                .map(|d| format!("disabled by {} at {}: {}", d.by, d.at, d.reason))
        },
    };
    let view = StatusView {
        root: layout.root().to_path_buf(),
        channel: config.update.channel.clone(),
        current: release_view(layout, links.current),
        previous: release_view(layout, links.previous),
        last_attempt: state.last_attempt.clone(),
        last_success: state.last_success.clone(),
        day: state.day.clone(),
        attempts_today: state.attempts_today,
        failures_today: state.failures_today,
        auto_update: auto,
        pending: state.pending.clone(),
        bad_releases: state.bad_releases.clone(),
        journal: journal.map(|j| JournalView {
            txn: j.txn,
            op: j.op.name().to_string(),
            step: j.step.to_string(),
            version: j.version,
            started_at: j.started_at,
        }),
        banner: std::fs::read_to_string(layout.banner_file())
            .ok()
            .map(|s| s.trim().to_string()),
    };
    if json {
        print_json(&view);
        return Ok(Exit::Done);
    }
    let paint = crate::term::Paint::stdout();
    let mut out = std::io::stdout().lock();
    let rel = |r: &Option<ReleaseView>| match r {
        Some(r) => format!(
            "{} ({}){}",
            paint.bold(&r.version.to_string()),
            r.id12,
            r.installed_at
                .map(|t| format!(", installed {t}"))
                .unwrap_or_default()
        ),
        None => "none".to_string(),
    };
    let _ = writeln!(out, "root:        {}", view.root.display());
    let _ = writeln!(out, "current:     {}", rel(&view.current));
    let _ = writeln!(out, "previous:    {}", rel(&view.previous));
    if let Some(p) = &view.pending {
        let _ = writeln!(
            out,
            "update ready: {} ({}) staged at {}; run `slipway apply`",
            p.version,
            p.release_id.short(),
            p.staged_at
        );
    }
    match &view.last_attempt {
        Some(a) => {
            let result = a.result.to_string();
            let result = match a.result {
                AttemptResult::Updated | AttemptResult::UpToDate => paint.good(&result),
                AttemptResult::Failed | AttemptResult::RolledBack => paint.bad(&result),
                _ => paint.warn(&result),
            };
            let _ = writeln!(
                out,
                "last attempt: {} {} at {}: {}",
                a.op, result, a.at, a.message
            );
        }
        None => {
            let _ = writeln!(out, "last attempt: none");
        }
    }
    let _ = writeln!(
        out,
        "today ({}): {} attempts, {} failures (max {} / {})",
        if view.day.is_empty() { "-" } else { &view.day },
        view.attempts_today,
        view.failures_today,
        config.update.max_attempts_per_day,
        config.update.max_failures_per_day
    );
    let _ = writeln!(
        out,
        "auto-update: {}{}",
        if view.auto_update.enabled {
            paint.good("enabled")
        } else {
            paint.bad("DISABLED")
        },
        view.auto_update
            .reason
            .as_ref()
            .map(|r| format!(" ({r}); `slipway enable` turns it back on"))
            .unwrap_or_default()
    );
    if view.bad_releases.is_empty() {
        let _ = writeln!(out, "bad list:    empty");
    } else {
        let _ = writeln!(out, "bad list:");
        for b in &view.bad_releases {
            let _ = writeln!(
                out,
                "  {} ({}) since {}: {}",
                paint.bad(&b.version.to_string()),
                b.id.short(),
                b.at,
                b.reason
            );
        }
    }
    if let Some(j) = &view.journal {
        let _ = writeln!(
            out,
            "{}   {} of {} (txn {}) at step {}; the next command (or `slipway recover`) finishes or undoes it",
            paint.warn("IN FLIGHT:"),
            j.op,
            j.version
                .as_ref()
                .map_or_else(|| "?".to_string(), |v| v.to_string()),
            j.txn,
            j.step
        );
    }
    Ok(Exit::Done)
}

fn history(host: &Host, json: bool, limit: Option<usize>) -> Result<Exit, CommandError> {
    let entries = report::read_history(&host.layout, limit).map_err(|e| {
        CommandError::new(
            Exit::Failed,
            "cannot read the history",
            e,
            "see the file named above",
        )
    })?;
    if json {
        print_json(&entries);
        return Ok(Exit::Done);
    }
    let mut out = std::io::stdout().lock();
    if entries.is_empty() {
        let _ = writeln!(out, "no attempts yet");
    }
    for a in entries {
        let versions = match (&a.from_version, &a.version) {
            (Some(f), Some(t)) => format!("{f} -> {t}"),
            (None, Some(t)) => format!("-> {t}"),
            (Some(f), None) => f.to_string(),
            (None, None) => "-".to_string(),
        };
        let _ = writeln!(
            out,
            "{}  {:<8} {:<11} {:<20} {}",
            a.at, a.op, a.result, versions, a.message
        );
    }
    Ok(Exit::Done)
}

#[derive(Serialize)]
struct VerifyView<'a> {
    dir: &'a Path,
    version: &'a Version,
    clean: bool,
    drift: &'a [Drift],
}

fn verify_cmd(host: &Host, json: bool) -> Result<Exit, CommandError> {
    let running = transaction::running_release(&host.layout)
        .map_err(|f| CommandError {
            exit: Exit::Failed,
            failure: f,
        })?
        .ok_or_else(|| {
            CommandError::new(
                Exit::Failed,
                "nothing to verify",
                format!("{} does not exist", host.layout.current_link().display()),
                "install a release first: `slipway install SOURCE`",
            )
        })?;
    let drift = verify_installed(&running.dir, &running.manifest).map_err(|e| {
        CommandError::new(
            Exit::Failed,
            format!("cannot check {}", running.dir.display()),
            e,
            "check the permissions of the install root",
        )
    })?;
    if json {
        print_json(&VerifyView {
            dir: &running.dir,
            version: &running.manifest.version,
            clean: drift.is_empty(),
            drift: &drift,
        });
    } else if drift.is_empty() {
        println!(
            "{} {} in {}: clean ({} entries match the manifest)",
            running.manifest.app,
            running.manifest.version,
            running.dir.display(),
            running.manifest.files.len()
        );
    } else {
        println!(
            "{} {} in {}: {} difference(s) from the manifest:",
            running.manifest.app,
            running.manifest.version,
            running.dir.display(),
            drift.len()
        );
        for d in &drift {
            println!("  {d}");
        }
    }
    if drift.is_empty() {
        Ok(Exit::Done)
    } else {
        if !json {
            print_failure(&Failure::new(
                "the running release was modified on the host",
                format!("{} difference(s) listed above", drift.len()),
                "ship the change as a release, or reinstall the running one with `slipway install --force`",
            ));
        }
        Ok(Exit::Failed)
    }
}

fn gc_cmd(host: &Host, json: bool) -> Result<Exit, CommandError> {
    let state = load_state(host)?;
    let protected: Vec<PathBuf> = state.pending.iter().map(|p| p.dir.clone()).collect();
    let cfg = &host.config.update;
    match crate::gc::collect(
        &host.layout,
        cfg.keep_releases as usize,
        cfg.keep_snapshots as usize,
        &protected,
    ) {
        Ok(r) if json => {
            print_json(&serde_json::json!({
                "removed_releases": r.removed_releases,
                "removed_snapshots": r.removed_snapshots,
                "removed_downloads": r.removed_downloads,
                "removed_temp_files": r.removed_temp_files,
                "kept": r.kept,
            }));
            Ok(Exit::Done)
        }
        Ok(r) => {
            println!(
                "removed {} release(s), {} snapshot(s), {} download(s), {} temporary file(s); kept {}",
                r.removed_releases.len(),
                r.removed_snapshots.len(),
                r.removed_downloads.len(),
                r.removed_temp_files.len(),
                r.kept.len()
            );
            for p in r
                .removed_releases
                .iter()
                .chain(&r.removed_snapshots)
                .chain(&r.removed_downloads)
            {
                host.log.debug(format!("removed {}", p.display()));
            }
            Ok(Exit::Done)
        }
        Err(e) => Err(CommandError::new(
            Exit::Failed,
            "garbage collection did not finish",
            e,
            "see the path named above",
        )),
    }
}

/// The systemd units that run `slipway update --auto` on a timer.
///
/// The period is `interval_minutes` (or `interval_seconds`, for tests and
/// demos). The first poll comes 5 minutes (at most one period) after boot
/// or after the timer is enabled; each poll is delayed by a random amount
/// up to a quarter of the period (at most 15 min), so a fleet does not
/// poll in lockstep; `Persistent=true` catches up a poll missed while the
/// host was off.
pub fn unit_files(config: &Config, binary: &Path) -> (String, String) {
    let period = config
        .update
        .interval_seconds
        .map_or(u64::from(config.update.interval_minutes.max(1)) * 60, |s| {
            u64::from(s.max(1))
        });
    let span = |secs: u64| match (secs / 60, secs % 60) {
        (mins, 0) => format!("{mins}min"),
        _ => format!("{secs}s"),
    };
    let first = span(period.min(5 * 60));
    let every = span(period);
    // Spread a fleet's polls: a quarter of the period, at most 15 min.
    let delay_secs = (period / 4).clamp(1, 15 * 60);
    // systemd's default accuracy (1 min) would swamp a short test period.
    let accuracy = span((period / 10).clamp(1, 60));
    let user = config
        .service
        .user
        .as_deref()
        .map(|u| format!("User={u}\n"))
        .unwrap_or_default();
    let manager_note = match config.service.manager {
        ManagerKind::Systemd => format!(
            "# Restarts {} through systemctl: the user needs the right to do so\n# (root, or a polkit rule for that unit).\n",
            config.service.unit
        ),
        _ => String::new(),
    };
    let service = format!(
        "[Unit]\n\
         Description=slipway: install the newest healthy release of {channel} (update --auto)\n\
         Documentation=file://{doc}\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         {manager_note}{user}\
         ExecStart={bin} --config {cfg} update --auto\n\
         # Exit 4 (skipped: not eligible) is a normal outcome for a timer run.\n\
         SuccessExitStatus=4\n\
         TimeoutStartSec=1h\n",
        channel = config.update.channel,
        doc = config.file.display(),
        bin = binary.display(),
        cfg = config.file.display(),
    );
    let timer = format!(
        "[Unit]\n\
         Description=slipway: poll for updates every {every}\n\
         \n\
         [Timer]\n\
         OnBootSec={first}\n\
         OnActiveSec={first}\n\
         OnUnitActiveSec={every}\n\
         RandomizedDelaySec={delay_secs}s\n\
         AccuracySec={accuracy}\n\
         Persistent=true\n\
         Unit=slipway-update.service\n\
         \n\
         [Install]\n\
         WantedBy=timers.target\n"
    );
    (service, timer)
}

fn units(config: &Config, write: Option<&Path>) -> Result<Exit, CommandError> {
    let binary = std::env::current_exe().map_err(|e| {
        CommandError::new(
            Exit::Failed,
            "cannot find the slipway binary's path",
            e,
            "run slipway by its full path",
        )
    })?;
    let (service, timer) = unit_files(config, &binary);
    match write {
        None => {
            println!("# slipway-update.service\n{service}\n# slipway-update.timer\n{timer}");
        }
        Some(dir) => {
            for (name, text) in [
                ("slipway-update.service", &service),
                ("slipway-update.timer", &timer),
            ] {
                let path = dir.join(name);
                crate::durable::write_atomic(&path, text.as_bytes()).map_err(|e| {
                    CommandError::new(
                        Exit::Failed,
                        format!("cannot write {}", path.display()),
                        e,
                        "check that the directory exists and is writable",
                    )
                })?;
                println!("wrote {}", path.display());
            }
            println!(
                "then: systemctl daemon-reload && systemctl enable --now slipway-update.timer"
            );
        }
    }
    Ok(Exit::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_spreads_polls_and_service_runs_update_auto() {
        let mut config = Config {
            file: PathBuf::from("/etc/slipway/update.toml"),
            ..Config::default()
        };
        config.service.user = Some("bot".into());
        config.update.interval_minutes = 60;
        let (service, timer) = unit_files(&config, Path::new("/usr/local/bin/slipway"));
        assert!(service.contains(
            "ExecStart=/usr/local/bin/slipway --config /etc/slipway/update.toml update --auto"
        ));
        assert!(service.contains("User=bot\n"));
        assert!(service.contains("Type=oneshot"));
        assert!(timer.contains("OnUnitActiveSec=60min"));
        assert!(timer.contains("RandomizedDelaySec=900s"));
        assert!(timer.contains("Persistent=true"));
        config.update.interval_minutes = 20;
        let (_, timer) = unit_files(&config, Path::new("/x"));
        assert!(timer.contains("RandomizedDelaySec=300s"), "{timer}");
        assert!(timer.contains("OnActiveSec=5min"), "{timer}");
        config.update.interval_seconds = Some(6);
        let (_, timer) = unit_files(&config, Path::new("/x"));
        assert!(timer.contains("OnUnitActiveSec=6s"), "{timer}");
        assert!(timer.contains("OnBootSec=6s"), "{timer}");
        assert!(timer.contains("RandomizedDelaySec=1s"), "{timer}");
        assert!(timer.contains("AccuracySec=1s"), "{timer}");
    }

    #[test]
    fn cli_parses_the_documented_command_lines() {
        let cli = Cli::try_parse_from([
            "slipway",
            "--config",
            "c.toml",
            "install",
            "./bot.tar.zst",
            "--dry-run",
            "--allow-downgrade",
        ])
        .expect("install");
        assert!(matches!(
            cli.command,
            Command::Install { dry_run: true, .. }
        ));
        let cli = Cli::try_parse_from(["slipway", "update", "--auto"]).expect("update");
        assert!(matches!(cli.command, Command::Update { auto: true, .. }));
        let cli =
            Cli::try_parse_from(["slipway", "history", "--json", "--limit", "5"]).expect("history");
        assert!(matches!(
            cli.command,
            Command::History {
                json: true,
                limit: Some(5)
            }
        ));
        assert!(Cli::try_parse_from(["slipway", "disable", "--reason", "maintenance"]).is_ok());
        assert!(Cli::try_parse_from(["slipway", "units", "--write", "/tmp"]).is_ok());
        assert!(Cli::try_parse_from(["slipway", "frobnicate"]).is_err());
    }
}

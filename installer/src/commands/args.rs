//! The command line as clap parses it: global options, the commands and
//! their flags (SPEC §5; these names are an interface, add, never rename).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

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
        /// Ignore the bad list and the clean-tree rule; with the running
        /// release, reinstall a clean copy of it.
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
        /// Across a migration the previous release cannot read: restore the
        /// newest backup of its data instead of refusing (the data rolled
        /// back from is kept in a new backup).
        #[arg(long)]
        restore_data: bool,
        #[command(flatten)]
        lock: LockArgs,
        #[arg(long)]
        json: bool,
    },
    /// List the persistence backups: name, when, why, release, schema, size.
    Backups {
        #[arg(long)]
        json: bool,
    },
    /// Put a backup's data back under the running release: snapshot the
    /// data, quiesce, restore, restart, health gate (and put the data back
    /// if the service is not healthy on it).
    Restore {
        /// The backup's name, as `slipway backups` lists it.
        backup: String,
        /// Do not ask for a "y" on stdin.
        #[arg(long, short)]
        yes: bool,
        /// Restore a backup whose data schema the running release does not
        /// say it reads (or that does not record its schema).
        #[arg(long)]
        force: bool,
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
        /// Hash only the files whose identity (inode, size, mtime, ctime,
        /// mode) differs from the one recorded when they were last proven,
        /// as the update's clean-tree rule does; without it every file is
        /// hashed.
        #[arg(long)]
        quick: bool,
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
    /// Print (or write) the systemd units: the timer and service that run
    /// `update --auto`, and the service that recovers a run that died.
    Units {
        /// Write slipway-update.service, slipway-update.timer and
        /// slipway-recover.service into DIR.
        #[arg(long, value_name = "DIR", conflicts_with_all = ["polkit", "polkit_user"])]
        write: Option<PathBuf>,
        /// Print only the polkit rule that lets the user the units run as
        /// (`[update] run_as = "service"`) start, stop and restart the
        /// service's unit, and nothing else
        /// (for /etc/polkit-1/rules.d/50-slipway.rules).
        #[arg(long)]
        polkit: bool,
        /// Print the polkit rule for USER instead.
        #[arg(long, value_name = "USER")]
        polkit_user: Option<String>,
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let cli = Cli::try_parse_from(["slipway", "rollback", "--restore-data"]).expect("rollback");
        assert!(matches!(
            cli.command,
            Command::Rollback {
                restore_data: true,
                ..
            }
        ));
        let cli = Cli::try_parse_from(["slipway", "restore", "20260301T102030Z-42", "--yes"])
            .expect("restore");
        assert!(matches!(cli.command, Command::Restore { yes: true, .. }));
        assert!(Cli::try_parse_from(["slipway", "restore"]).is_err());
        assert!(Cli::try_parse_from(["slipway", "backups", "--json"]).is_ok());
        assert!(Cli::try_parse_from(["slipway", "frobnicate"]).is_err());
    }
}

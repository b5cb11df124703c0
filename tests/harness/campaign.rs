//! A randomized kill campaign: `slipway install` of the example bot is
//! killed with SIGKILL at random instants and inside every journal step,
//! `slipway recover` runs, and every invariant of a crash-exact update is
//! checked (issue 9, point 3):
//!
//! - `current` names a complete release, the old or the new one (the one
//!   the recovery table says for the step the run died in), and
//!   `slipway verify` is clean;
//! - the persistence is the pre-update data or the migrated data, at the
//!   schema of `current` (the bot's `schema_version` file and the `schema`
//!   field a migration stamps into `state.json`), with no trade lost;
//! - exactly one bot process runs, and it is the one the service manager
//!   tracks (`bot-ctl status` / systemd's `MainPID`), healthy with
//!   `current`'s version and not paused;
//! - no hook or restart command outlived the transaction;
//! - no journal, `.partial` snapshot, `.staging-*` directory, probation
//!   file or temporary file is left;
//! - the lock is free (a second `slipway recover` does not exit 5);
//! - a second or two later, the data and the service still hold (an
//!   orphaned migrate hook finishing late is exactly what this catches).
//!
//! Every few kills a full update runs to completion from whatever state the
//! last recovery left, and must land.
//!
//! The backend (the command backend with `examples/host/bot-ctl`, or real
//! systemd in a container) is a [`Host`]; [`run`] drives the campaign and
//! returns a [`Report`] with the counts per step, per kill mode, per
//! scenario and per outcome, and every inconsistent outcome in detail.
//!
//! # Settings
//!
//! | variable | meaning |
//! | --- | --- |
//! | `KILL_CAMPAIGN_KILLS` | kills per backend (the caller's default otherwise) |
//! | `KILL_CAMPAIGN_SEED` | the RNG seed (decimal or `0x` hex); random otherwise, always printed |
//! | `KILL_CAMPAIGN_FULL_EVERY` | a full update after every N kills (default 8) |
//! | `KILL_CAMPAIGN_STEPS` | only these targets: step names and `anytime`, comma-separated (default all) |
//!
//! The seed fixes the plan of every kill (scenario, target, kill mode and
//! the delay as a fraction of the step's measured length); the instants
//! themselves depend on the machine, so a failure reproduces as a plan, not
//! to the microsecond.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustix::process::{kill_process, Pid, Signal};

/// Kills per backend.
pub const KILLS_ENV: &str = "KILL_CAMPAIGN_KILLS";
/// The RNG seed.
pub const SEED_ENV: &str = "KILL_CAMPAIGN_SEED";
/// A full update after every N kills.
pub const FULL_EVERY_ENV: &str = "KILL_CAMPAIGN_FULL_EVERY";
/// Only these targets (comma-separated step names, `anytime` for random
/// instants), to replay a failure.
pub const STEPS_ENV: &str = "KILL_CAMPAIGN_STEPS";
/// A file the report is also written to (`bench/kill-campaign.sh`).
pub const REPORT_ENV: &str = "KILL_CAMPAIGN_REPORT";
/// The environment variable slipway runs get, so that every process they
/// start (and that inherits the environment) is recognisable afterwards.
pub const TAG_ENV: &str = "KILL_CAMPAIGN_TAG";

/// How long a slipway command may take before the campaign calls it hung.
const COMMAND_DEADLINE: Duration = Duration::from_secs(180);
/// How long the service may take to settle after `recover` returned
/// (a systemd restart in flight, a health answer on its way).
const SETTLE: Duration = Duration::from_secs(4);
/// How long after `recover` the data and the service are checked again:
/// longer than an orphaned migrate hook needs to reach its write (it waits
/// one second first, and recover plus the first checks take a few hundred
/// milliseconds more).
const LATE_CHECK: Duration = Duration::from_millis(1200);

/// A migrate hook of the example bot made slow (about two seconds: it
/// waits a second, migrates, waits another), so that kills land before and
/// after the data changes. `marker` is on its command line, so the hook's
/// own process is recognisable; the value is a TOML array for
/// `slipway.toml`'s `[hooks] migrate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowMigrate {
    /// One Python process that reads `app/bot/migrate.py` first and runs it
    /// after the first second, the way a long migration is one process
    /// busy with the data: orphaned, it still writes, even once recovery
    /// has deleted the release it ran from.
    OneProcess,
    /// `sh -c 'sleep 1 && python3 app/bot/migrate.py && sleep 1'`: a tree of
    /// processes (the shell and its children, one after another).
    Shell,
}

impl SlowMigrate {
    pub fn hook(self, marker: &str) -> String {
        match self {
            SlowMigrate::OneProcess => format!(
                "[\"python3\", \"-c\", \"import sys, time\\n\
                 code = open('app/bot/migrate.py').read()\\n\
                 time.sleep(1)\\n\
                 try:\\n    exec(compile(code, 'app/bot/migrate.py', 'exec'), {{'__name__': '__main__'}})\\n    rc = 0\\n\
                 except SystemExit as e:\\n    rc = e.code\\n\
                 time.sleep(1)\\n\
                 sys.exit(rc)\\n\", \"{marker}\"]"
            ),
            SlowMigrate::Shell => format!(
                "[\"sh\", \"-c\", \"sleep 1 && python3 app/bot/migrate.py && sleep 1\", \"{marker}\"]"
            ),
        }
    }
}

/// What one campaign run does.
#[derive(Debug, Clone)]
pub struct Settings {
    pub kills: usize,
    pub seed: u64,
    pub full_update_every: usize,
    /// Only these targets (step names, `anytime`); empty: all.
    pub only: Vec<String>,
}

impl Settings {
    /// From [`KILLS_ENV`], [`SEED_ENV`] and [`FULL_EVERY_ENV`], with
    /// `default_kills` when the first is unset.
    pub fn from_env(default_kills: usize) -> Result<Settings> {
        let kills = match std::env::var(KILLS_ENV) {
            Ok(v) if !v.trim().is_empty() => v
                .trim()
                .parse()
                .with_context(|| format!("{KILLS_ENV}={v:?} is not a number"))?,
            _ => default_kills,
        };
        let seed = match std::env::var(SEED_ENV) {
            Ok(v) if !v.trim().is_empty() => parse_seed(v.trim())
                .with_context(|| format!("{SEED_ENV}={v:?} is not a number (decimal or 0x hex)"))?,
            _ => random_seed()?,
        };
        let full_update_every = match std::env::var(FULL_EVERY_ENV) {
            Ok(v) if !v.trim().is_empty() => v
                .trim()
                .parse::<usize>()
                .with_context(|| format!("{FULL_EVERY_ENV}={v:?} is not a number"))?
                .max(1),
            _ => 8,
        };
        let only = std::env::var(STEPS_ENV)
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        Ok(Settings {
            kills,
            seed,
            full_update_every,
            only,
        })
    }
}

fn parse_seed(text: &str) -> Result<u64> {
    Ok(match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16)?,
        None => text.parse()?,
    })
}

fn random_seed() -> Result<u64> {
    let uuid = fs::read_to_string("/proc/sys/kernel/random/uuid")
        .context("reading /proc/sys/kernel/random/uuid")?;
    let hex: String = uuid.trim().chars().filter(|c| *c != '-').take(16).collect();
    Ok(u64::from_str_radix(&hex, 16)?)
}

/// splitmix64: small, fast, and the same sequence everywhere for a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

// --- processes ---------------------------------------------------------------

/// One process, from `/proc`.
#[derive(Debug, Clone)]
pub struct Proc {
    /// In the campaign's pid namespace.
    pub pid: i32,
    pub ppid: i32,
    /// `R`, `S`, `Z`, ... from `/proc/PID/stat`.
    pub state: char,
    /// The argv joined with spaces.
    pub cmdline: String,
    pub cwd: Option<PathBuf>,
    /// `/proc/PID/ns/pid`, to tell a container's processes from ours.
    pub pid_ns: Option<PathBuf>,
    /// The pid in the process's own (innermost) pid namespace, as the
    /// service manager there reports it.
    pub ns_pid: i32,
}

impl Proc {
    /// Reads `/proc/PID`; `None` when the process is gone.
    pub fn read(pid: i32) -> Option<Proc> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let after = stat.get(stat.rfind(')')? + 1..)?;
        let mut fields = after.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let ppid = fields.next()?.parse().ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                b.split(|c| *c == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let ns_pid = fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("NSpid:"))
                    .and_then(|v| v.split_whitespace().last().map(str::to_string))
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(pid);
        Some(Proc {
            pid,
            ppid,
            state,
            cmdline,
            cwd: fs::read_link(format!("/proc/{pid}/cwd")).ok(),
            pid_ns: fs::read_link(format!("/proc/{pid}/ns/pid")).ok(),
            ns_pid,
        })
    }

    /// Whether its initial environment holds exactly `entry` (`KEY=value`).
    pub fn environ_has(&self, entry: &str) -> bool {
        fs::read(format!("/proc/{}/environ", self.pid))
            .map(|b| b.split(|c| *c == 0).any(|e| e == entry.as_bytes()))
            .unwrap_or(false)
    }

    pub fn is_zombie(&self) -> bool {
        self.state == 'Z' || self.state == 'X'
    }

    /// For messages: `pid 123 (ppid 1, S) sh -c sleep 1 ... [cwd /x]`.
    pub fn describe(&self) -> String {
        format!(
            "pid {} (ppid {}, {}) {} [cwd {}]",
            self.pid,
            self.ppid,
            self.state,
            self.cmdline.escape_debug(),
            self.cwd
                .as_ref()
                .map_or_else(|| "?".to_string(), |c| c.display().to_string())
        )
    }
}

/// Every process now.
pub fn processes() -> Vec<Proc> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(Proc::read)
        .collect()
}

/// The pids below `root` in `procs`, by parent pid.
pub fn descendants(root: i32, procs: &[Proc]) -> Vec<i32> {
    let mut found = Vec::new();
    let mut todo = vec![root];
    while let Some(parent) = todo.pop() {
        for p in procs.iter().filter(|p| p.ppid == parent) {
            if !found.contains(&p.pid) && p.pid != root {
                found.push(p.pid);
                todo.push(p.pid);
            }
        }
    }
    found
}

fn signal(pid: i32, sig: Signal) {
    if let Some(pid) = Pid::from_raw(pid) {
        // ESRCH (already gone) is fine.
        let _ = kill_process(pid, sig);
    }
}

/// SIGKILL of one process.
pub fn kill_pid(pid: i32) {
    signal(pid, Signal::KILL);
}

/// SIGKILL of `root` and everything below it. The tree is frozen first
/// (SIGSTOP, walking again until no new child appears), so nothing forks
/// its way out between the walk and the kill. Returns the pids killed.
pub fn kill_tree(root: i32) -> Vec<i32> {
    let mut frozen: BTreeSet<i32> = BTreeSet::new();
    for _ in 0..50 {
        let procs = processes();
        let mut tree = vec![root];
        tree.extend(descendants(root, &procs));
        let new: Vec<i32> = tree.into_iter().filter(|p| !frozen.contains(p)).collect();
        if new.is_empty() {
            break;
        }
        for pid in new {
            signal(pid, Signal::STOP);
            frozen.insert(pid);
        }
    }
    for pid in &frozen {
        signal(*pid, Signal::KILL);
    }
    frozen.into_iter().collect()
}

// --- commands ----------------------------------------------------------------

/// Waits for `child` after its slipway was killed. A wrapper such as
/// `nsenter` stops itself when its child is stopped (and would wait for a
/// SIGCONT forever once the child is dead), so it is continued until it
/// exits.
fn reap(child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        if Instant::now() > deadline {
            kill_pid(child.id() as i32);
            child.wait()?;
            return Ok(());
        }
        signal(child.id() as i32, Signal::CONT);
        thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `cmd` with its output in `log` (stdin closed), killing its whole
/// tree after `limit`. Output goes to a file, not a pipe: a process that
/// outlives the command cannot hold us up. Returns the output.
pub fn run_logged(mut cmd: Command, log: &Path, limit: Duration) -> Result<Output> {
    let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err_log = log.with_extension("err");
    let err =
        fs::File::create(&err_log).with_context(|| format!("creating {}", err_log.display()))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            kill_tree(child.id() as i32);
            let _ = child.wait();
            bail!("{cmd:?} did not finish within {limit:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: fs::read(log).unwrap_or_default(),
        stderr: fs::read(&err_log).unwrap_or_default(),
    })
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The step `<root>/state/journal.json` names, if there is a journal.
pub fn journal_step(path: &Path) -> Option<String> {
    let bytes = fs::read(path).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["step"].as_str().map(str::to_string)
}

// --- what is installed -------------------------------------------------------

/// A release the campaign installs.
#[derive(Debug, Clone)]
pub struct Release {
    pub version: String,
    /// Its data schema.
    pub schema: u32,
    /// Its directory under `releases/`.
    pub dir_name: String,
    /// The archive, as the `slipway` under test sees it.
    pub archive: String,
}

/// The three releases: v1 (schema 1, installed at the start), v2 (schema 2,
/// slow migrate hook, healthy) and v3 (schema 2, slow migrate hook, fails
/// its health gate).
#[derive(Debug, Clone)]
pub struct Releases {
    pub v1: Release,
    pub v2: Release,
    pub v3: Release,
}

impl Releases {
    fn by_dir(&self, name: &str) -> Option<&Release> {
        [&self.v1, &self.v2, &self.v3]
            .into_iter()
            .find(|r| r.dir_name == name)
    }
}

/// What one killed run was doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scenario {
    /// v1 → v2: migrates (slowly) and passes its health gate.
    Migrate,
    /// v1 → v3: migrates (slowly), starts under probation (paused), fails
    /// its health gate, is flipped back.
    FailedHealth,
}

impl Scenario {
    pub const ALL: [Scenario; 2] = [Scenario::Migrate, Scenario::FailedHealth];

    pub fn label(self) -> &'static str {
        match self {
            Scenario::Migrate => "v1->v2 (slow migrate)",
            Scenario::FailedHealth => "v1->v3 (migrate, probation, fails health)",
        }
    }

    /// The journal steps of the run, in order.
    pub fn steps(self) -> &'static [&'static str] {
        match self {
            Scenario::Migrate => &[
                "Verify",
                "Stage",
                "Check",
                "Save",
                "Snapshot",
                "Quiesce",
                "Migrate",
                "Switch",
                "Restart",
                "HealthGate",
                "Commit",
                "Report",
                "Collect",
            ],
            Scenario::FailedHealth => &[
                "Verify",
                "Stage",
                "Check",
                "Save",
                "Snapshot",
                "Quiesce",
                "Migrate",
                "Switch",
                "Restart",
                "HealthGate",
                "FlipBack",
                "Report",
                "Collect",
            ],
        }
    }

    fn target(self, releases: &Releases) -> &Release {
        match self {
            Scenario::Migrate => &releases.v2,
            Scenario::FailedHealth => &releases.v3,
        }
    }

    /// `slipway` arguments (v3 is bad-listed after its first flip back:
    /// `--force` installs it again).
    fn args(self, releases: &Releases) -> Vec<String> {
        let mut args = vec![
            "-v".to_string(),
            "install".to_string(),
            self.target(releases).archive.clone(),
        ];
        if self == Scenario::FailedHealth {
            args.push("--force".into());
        }
        args
    }

    /// The exit code of a run that is not killed.
    fn exit_code(self) -> i32 {
        match self {
            Scenario::Migrate => 0,
            Scenario::FailedHealth => 3,
        }
    }

    /// Where a run that died in `step` must land after recovery
    /// (docs/transaction.md, "Recovery: step → action"); `None` when the
    /// step is unknown.
    fn lands_on<'a>(self, step: &str, releases: &'a Releases) -> Option<&'a Release> {
        if !self.steps().contains(&step) {
            return None;
        }
        match (self, step) {
            (Scenario::Migrate, "Commit" | "Report" | "Collect") => Some(&releases.v2),
            _ => Some(&releases.v1),
        }
    }
}

/// How a run is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KillMode {
    /// SIGKILL of the slipway process only: its children live on.
    Pid,
    /// SIGKILL of slipway and every process below it.
    Tree,
}

impl KillMode {
    pub fn label(self) -> &'static str {
        match self {
            KillMode::Pid => "pid",
            KillMode::Tree => "tree",
        }
    }
}

/// When a run is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Aim {
    /// At a random instant of the whole run.
    Anytime,
    /// Once the journal names this step, after a random part of its
    /// measured length.
    Step(&'static str),
}

/// One kill, decided from the seed before the run starts.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub scenario: Scenario,
    pub aim: Aim,
    pub mode: KillMode,
    /// The delay as a fraction of the run's (or the step's) measured length.
    pub fraction: f64,
}

impl Plan {
    pub fn describe(&self) -> String {
        let aim = match self.aim {
            Aim::Anytime => format!("anytime at {:.0}% of the run", self.fraction * 100.0),
            Aim::Step(s) => format!("in {s} at {:.0}% of the step", self.fraction * 100.0),
        };
        format!(
            "{}, {aim}, kill {}",
            self.scenario.label(),
            self.mode.label()
        )
    }
}

// --- the backend -------------------------------------------------------------

/// A running `slipway`.
pub struct Spawned {
    /// What the campaign started (slipway itself, or `nsenter` around it).
    pub child: Child,
    /// slipway's pid in the campaign's pid namespace.
    pub pid: i32,
}

/// What the service manager says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Managed {
    /// The main pid, in the manager's pid namespace.
    pub main_pid: Option<i32>,
    /// `active/running`, `stopped`, ...
    pub state: String,
}

/// A host with the example bot installed and managed by one service
/// backend, on which the campaign runs.
pub trait Host {
    /// `command backend (bot-ctl)`, `systemd`.
    fn label(&self) -> String;
    fn releases(&self) -> &Releases;
    /// The install root and the persistence, as paths the campaign reads.
    fn root(&self) -> PathBuf;
    fn data(&self) -> PathBuf;
    /// Starts `slipway ARGS` with its output in `log`, in the environment
    /// [`TAG_ENV`] names.
    fn spawn_slipway(&self, args: &[String], log: &Path) -> Result<Spawned>;
    /// Runs `slipway ARGS` to completion (output in `log`).
    fn slipway(&self, args: &[&str], log: &Path) -> Result<Output>;
    /// The live bot processes of this host.
    fn bots(&self) -> Vec<Proc>;
    /// What the service manager tracks.
    fn manager(&self) -> Result<Managed>;
    /// `GET /health` of the bot: status and JSON body.
    fn health(&self) -> Option<(u16, serde_json::Value)>;
    /// Live processes a slipway run started that are not the bot: hooks,
    /// restart commands, slipway itself.
    fn strays(&self) -> Vec<Proc>;
    /// Back to the baseline: v1 installed with its data, the bot running,
    /// nothing else alive.
    fn reset(&self) -> Result<()>;
    /// What to show with a failure: the bot's log or the unit's journal.
    fn diagnostics(&self) -> String;
}

// --- results -----------------------------------------------------------------

/// One broken invariant.
#[derive(Debug, Clone)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

fn violation(invariant: &'static str, detail: impl Into<String>) -> Violation {
    Violation {
        invariant,
        detail: detail.into(),
    }
}

/// One kill and what the host looked like after `recover`.
#[derive(Debug, Clone)]
pub struct KillRecord {
    pub number: usize,
    pub plan: Plan,
    /// The step the journal named when the run died (`(no journal)`).
    pub step: String,
    /// How many processes the kill took.
    pub killed: usize,
    /// The version `current` names after recovery.
    pub landed: Option<String>,
    pub violations: Vec<Violation>,
    /// The killed run's and the recovery's output, the bot's log.
    pub evidence: String,
}

/// One run that was not killed: a full update, a calibration run, or a run
/// that finished before its kill.
#[derive(Debug, Clone)]
pub struct CompletedRecord {
    pub what: String,
    pub violations: Vec<Violation>,
    pub evidence: String,
}

/// What a campaign found.
#[derive(Debug, Clone)]
pub struct Report {
    pub backend: String,
    pub settings: Settings,
    pub kills: Vec<KillRecord>,
    pub completed: Vec<CompletedRecord>,
    pub elapsed: Duration,
}

impl Report {
    pub fn failed(&self) -> usize {
        self.kills
            .iter()
            .filter(|k| !k.violations.is_empty())
            .count()
    }

    pub fn passed(&self) -> usize {
        self.kills.len() - self.failed()
    }

    pub fn completed_failed(&self) -> usize {
        self.completed
            .iter()
            .filter(|c| !c.violations.is_empty())
            .count()
    }

    /// The counts and every inconsistent outcome; the last line is
    /// `N passed, M failed` (kills).
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "kill campaign, {}: seed {} ({SEED_ENV}={}), {} kills, {} runs not killed, {:.0}s",
            self.backend,
            self.settings.seed,
            self.settings.seed,
            self.kills.len(),
            self.completed.len(),
            self.elapsed.as_secs_f64()
        );
        let table = |s: &mut String, title: &str, rows: BTreeMap<String, (usize, usize)>| {
            let _ = writeln!(s, "  {title:<34} {:>5} {:>13}", "held", "inconsistent");
            for (key, (held, bad)) in rows {
                let _ = writeln!(s, "    {key:<32} {held:>5} {bad:>13}");
            }
        };
        let count = |key: &dyn Fn(&KillRecord) -> String| {
            let mut rows: BTreeMap<String, (usize, usize)> = BTreeMap::new();
            for k in &self.kills {
                let row = rows.entry(key(k)).or_default();
                if k.violations.is_empty() {
                    row.0 += 1;
                } else {
                    row.1 += 1;
                }
            }
            rows
        };
        // Steps in transaction order, then anything else.
        let order = |step: &str| {
            Scenario::Migrate
                .steps()
                .iter()
                .position(|s| *s == step)
                .map(|i| i as f64)
                .or_else(|| (step == "FlipBack").then_some(9.5))
                .unwrap_or(99.0)
        };
        let mut by_step: Vec<(String, (usize, usize))> =
            count(&|k| k.step.clone()).into_iter().collect();
        by_step.sort_by(|a, b| order(&a.0).total_cmp(&order(&b.0)).then(a.0.cmp(&b.0)));
        let _ = writeln!(
            s,
            "  {:<34} {:>5} {:>13}",
            "by step at the kill", "held", "inconsistent"
        );
        for (step, (held, bad)) in by_step {
            // What broke first, for the inconsistent ones of this step.
            let mut why: BTreeMap<&str, usize> = BTreeMap::new();
            for k in self.kills.iter().filter(|k| k.step == step) {
                if let Some(v) = k.violations.first() {
                    *why.entry(v.invariant).or_default() += 1;
                }
            }
            let why: Vec<String> = why.iter().map(|(w, n)| format!("{n}x {w}")).collect();
            let _ = writeln!(
                s,
                "    {step:<32} {held:>5} {bad:>13}{}",
                if why.is_empty() {
                    String::new()
                } else {
                    format!("   ({})", why.join("; "))
                }
            );
        }
        table(
            &mut s,
            "by kill mode",
            count(&|k| k.plan.mode.label().to_string()),
        );
        table(
            &mut s,
            "by scenario",
            count(&|k| k.plan.scenario.label().to_string()),
        );
        table(
            &mut s,
            "by aim",
            count(&|k| match k.plan.aim {
                Aim::Anytime => "random instant".to_string(),
                Aim::Step(_) => "inside a step".to_string(),
            }),
        );
        let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
        for k in &self.kills {
            let key = match k.violations.first() {
                None => format!(
                    "held, on {}",
                    k.landed.clone().unwrap_or_else(|| "?".into())
                ),
                Some(v) => format!("inconsistent: {}", v.invariant),
            };
            *outcomes.entry(key).or_default() += 1;
        }
        let _ = writeln!(s, "  by outcome (first failing invariant)");
        for (key, n) in outcomes {
            let _ = writeln!(s, "    {key:<52} {n:>5}");
        }
        let _ = writeln!(
            s,
            "  runs not killed (full updates, calibration, runs done before their kill): {} landed as expected, {} did not",
            self.completed.len() - self.completed_failed(),
            self.completed_failed()
        );
        for c in self.completed.iter().filter(|c| !c.violations.is_empty()) {
            let _ = writeln!(s, "  NOT AS EXPECTED: {}", c.what);
            for v in &c.violations {
                let _ = writeln!(s, "      {}: {}", v.invariant, v.detail);
            }
            let _ = writeln!(s, "{}", indent(&c.evidence, "      | "));
        }
        for k in self.kills.iter().filter(|k| !k.violations.is_empty()) {
            let _ = writeln!(
                s,
                "  INCONSISTENT kill #{} (seed {}): {}; died in {}; killed {} process(es); current after recover: {}",
                k.number,
                self.settings.seed,
                k.plan.describe(),
                k.step,
                k.killed,
                k.landed.clone().unwrap_or_else(|| "?".into())
            );
            for v in &k.violations {
                let _ = writeln!(s, "      {}: {}", v.invariant, v.detail);
            }
            let _ = writeln!(s, "{}", indent(&k.evidence, "      | "));
        }
        let _ = writeln!(s, "{} passed, {} failed", self.passed(), self.failed());
        s
    }
}

/// Prints the report (and writes it to [`REPORT_ENV`] when set), then
/// fails the test when any kill ended inconsistent or any run that was not
/// killed did not land as expected.
pub fn finish(report: &Report) {
    let text = report.render();
    println!("{text}");
    if let Ok(path) = std::env::var(REPORT_ENV) {
        if !path.is_empty() {
            if let Err(e) = fs::write(&path, &text) {
                eprintln!("cannot write the report to {path} ({REPORT_ENV}): {e}");
            }
        }
    }
    assert!(
        report.failed() == 0 && report.completed_failed() == 0,
        "kill campaign on {}: {} of {} kills ended inconsistent, {} of {} runs that were not killed did not land as expected (seed {}; the report above has the details)",
        report.backend,
        report.failed(),
        report.kills.len(),
        report.completed_failed(),
        report.completed.len(),
        report.settings.seed
    );
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines()
        .map(|l| format!("{prefix}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

// --- the campaign ------------------------------------------------------------

struct Campaign<'a, H: Host> {
    host: &'a H,
    rng: Rng,
    only: Vec<String>,
    work: PathBuf,
    /// Measured in the calibration runs: how long each step lasted (from
    /// the journal naming it to the journal naming the next), per scenario.
    step_length: BTreeMap<(Scenario, String), Duration>,
    run_length: BTreeMap<Scenario, Duration>,
    report: Report,
    /// Whether the host is known to be at v1 with schema-1 data and sound.
    at_baseline: bool,
}

/// Runs the campaign on `host` (v1 installed, healthy) with scratch files
/// in `work`, printing one line per kill, and returns the report.
pub fn run<H: Host>(host: &H, settings: &Settings, work: &Path) -> Result<Report> {
    eprintln!(
        "kill campaign, {}: {} kills, seed {} (reproduce with {SEED_ENV}={} {KILLS_ENV}={}), a full update every {} kills{}",
        host.label(),
        settings.kills,
        settings.seed,
        settings.seed,
        settings.kills,
        settings.full_update_every,
        if settings.only.is_empty() {
            String::new()
        } else {
            format!(", only {}", settings.only.join(","))
        }
    );
    let started = Instant::now();
    let mut c = Campaign {
        host,
        rng: Rng::new(settings.seed),
        only: settings.only.clone(),
        work: work.to_path_buf(),
        step_length: BTreeMap::new(),
        run_length: BTreeMap::new(),
        report: Report {
            backend: host.label(),
            settings: settings.clone(),
            kills: Vec::new(),
            completed: Vec::new(),
            elapsed: Duration::ZERO,
        },
        at_baseline: false,
    };
    c.host.reset()?;
    c.at_baseline = true;
    for scenario in Scenario::ALL {
        c.calibrate(scenario)?;
    }
    let mut deck: Vec<Plan> = Vec::new();
    let mut since_full = 0;
    while c.report.kills.len() < settings.kills {
        if since_full >= settings.full_update_every {
            since_full = 0;
            c.full_update()?;
        }
        if deck.is_empty() {
            deck = c.deal();
            if deck.is_empty() {
                bail!(
                    "{STEPS_ENV}={:?} names no step of either scenario (nor `anytime`)",
                    settings.only
                );
            }
        }
        let plan = deck.pop().context("an empty deck")?;
        if c.kill_once(plan)? {
            since_full += 1;
        }
    }
    c.report.elapsed = started.elapsed();
    Ok(c.report)
}

impl<H: Host> Campaign<'_, H> {
    /// Every (scenario, step) target once, plus random instants (a third
    /// of the deck), in a random order, each with a random kill mode and
    /// delay; popped from the end.
    fn deal(&mut self) -> Vec<Plan> {
        let mut aims: Vec<(Scenario, Aim)> = Vec::new();
        for scenario in Scenario::ALL {
            for step in scenario.steps() {
                aims.push((scenario, Aim::Step(step)));
            }
        }
        let targeted = aims.len();
        for i in 0..targeted / 2 {
            aims.push((Scenario::ALL[i % 2], Aim::Anytime));
        }
        if !self.only.is_empty() {
            aims.retain(|(_, aim)| {
                let name = match aim {
                    Aim::Anytime => "anytime",
                    Aim::Step(s) => s,
                };
                self.only.iter().any(|o| o.eq_ignore_ascii_case(name))
            });
        }
        self.rng.shuffle(&mut aims);
        aims.into_iter()
            .map(|(scenario, aim)| Plan {
                scenario,
                aim,
                mode: if self.rng.below(2) == 0 {
                    KillMode::Pid
                } else {
                    KillMode::Tree
                },
                fraction: self.rng.unit(),
            })
            .collect()
    }

    fn log(&self, name: &str) -> PathBuf {
        self.work.join(name)
    }

    fn ensure_baseline(&mut self) -> Result<()> {
        if !self.at_baseline {
            self.host.reset()?;
            self.at_baseline = true;
        }
        Ok(())
    }

    /// Trades on disk now (0 when unreadable).
    fn trades_on_disk(&self) -> u64 {
        fs::read_to_string(self.host.data().join("state.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["trades"].as_u64())
            .unwrap_or(0)
    }

    /// One run of `scenario` to completion, watching the journal, to learn
    /// how long each step lasts; checked like any completed run.
    fn calibrate(&mut self, scenario: Scenario) -> Result<()> {
        self.ensure_baseline()?;
        let trades_before = self.trades_on_disk();
        let log = self.log(&format!("calibrate-{scenario:?}.log"));
        let mut run = self
            .host
            .spawn_slipway(&scenario.args(self.host.releases()), &log)?;
        let journal = self.host.root().join("state/journal.json");
        let started = Instant::now();
        let mut seen: Vec<(String, Instant)> = Vec::new();
        let status = loop {
            if let Some(status) = run.child.try_wait()? {
                break status;
            }
            if started.elapsed() > COMMAND_DEADLINE {
                kill_tree(run.pid);
                let _ = run.child.wait();
                bail!("calibration run of {} hung", scenario.label());
            }
            if let Some(step) = journal_step(&journal) {
                if seen.last().is_none_or(|(s, _)| *s != step) {
                    seen.push((step, Instant::now()));
                }
            }
            thread::sleep(Duration::from_millis(2));
        };
        let total = started.elapsed();
        let ended = Instant::now();
        for (i, (step, at)) in seen.iter().enumerate() {
            let next = seen.get(i + 1).map_or(ended, |(_, t)| *t);
            self.step_length
                .insert((scenario, step.clone()), next.duration_since(*at));
        }
        self.run_length.insert(scenario, total);
        let timeline: Vec<String> = seen
            .iter()
            .enumerate()
            .map(|(i, (step, at))| {
                let next = seen.get(i + 1).map_or(ended, |(_, t)| *t);
                format!("{step} {:.2}s", next.duration_since(*at).as_secs_f64())
            })
            .collect();
        eprintln!(
            "calibration, {}: {:.2}s, exit {:?}: {}",
            scenario.label(),
            total.as_secs_f64(),
            status.code(),
            timeline.join(", ")
        );
        let output = read_logs(&log);
        self.completed_run(
            format!("calibration run of {}", scenario.label()),
            scenario,
            status.code(),
            trades_before,
            output,
        );
        Ok(())
    }

    /// A full v1 → v2 update from wherever the last recovery left the host
    /// (v1 when it held): it must land.
    fn full_update(&mut self) -> Result<()> {
        self.ensure_baseline()?;
        let trades_before = self.trades_on_disk();
        let log = self.log("full-update.log");
        let args = Scenario::Migrate.args(self.host.releases());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.host.slipway(&args, &log)?;
        let output = format!(
            "--- slipway install (full update)\n{}\n{}",
            tail(&String::from_utf8_lossy(&out.stdout), 10),
            tail(&String::from_utf8_lossy(&out.stderr), 30)
        );
        let n = self.report.kills.len();
        let ok = self.completed_run(
            format!("full update v1->v2 after kill #{n}"),
            Scenario::Migrate,
            out.status.code(),
            trades_before,
            output,
        );
        eprintln!(
            "full update after kill #{n}: {}",
            if ok { "landed" } else { "DID NOT LAND" }
        );
        Ok(())
    }

    /// Checks a run that was not killed; returns whether it held.
    fn completed_run(
        &mut self,
        what: String,
        scenario: Scenario,
        code: Option<i32>,
        trades_before: u64,
        output: String,
    ) -> bool {
        let mut violations = Vec::new();
        if code != Some(scenario.exit_code()) {
            violations.push(violation(
                "the run exits as documented",
                format!(
                    "exit {code:?}, expected {} for {}",
                    scenario.exit_code(),
                    scenario.label()
                ),
            ));
        }
        let expect = match scenario {
            Scenario::Migrate => &self.host.releases().v2,
            Scenario::FailedHealth => &self.host.releases().v1,
        }
        .clone();
        let (more, _) = self.check(Some(&expect), trades_before, false);
        violations.extend(more);
        let held = violations.is_empty();
        let evidence = if held {
            String::new()
        } else {
            format!("{output}\n--- service\n{}", self.host.diagnostics())
        };
        self.report.completed.push(CompletedRecord {
            what,
            violations,
            evidence,
        });
        // v2 landed, or a failure: back to v1 before the next kill.
        self.at_baseline = held && scenario == Scenario::FailedHealth;
        if !held {
            self.clean_up();
        }
        held
    }

    /// Kills one run as `plan` says, recovers and checks. `Ok(false)` when
    /// the run ended before the kill (then checked as a completed run).
    fn kill_once(&mut self, plan: Plan) -> Result<bool> {
        self.ensure_baseline()?;
        let number = self.report.kills.len() + 1;
        let trades_before = self.trades_on_disk();
        let log = self.log("killed-run.log");
        let journal = self.host.root().join("state/journal.json");
        let steps = plan.scenario.steps();
        let mut run = self
            .host
            .spawn_slipway(&plan.scenario.args(self.host.releases()), &log)?;
        let started = Instant::now();
        // When to pull the trigger.
        let fire_at = match plan.aim {
            Aim::Anytime => {
                let total = self.run_length[&plan.scenario];
                Some(started + total.mul_f64(plan.fraction * 0.95))
            }
            Aim::Step(_) => None,
        };
        let target = match plan.aim {
            Aim::Step(s) => steps.iter().position(|x| *x == s),
            Aim::Anytime => None,
        };
        let mut armed: Option<Instant> = fire_at;
        let finished = loop {
            if let Some(status) = run.child.try_wait()? {
                break Some(status);
            }
            let now = Instant::now();
            if let Some(at) = armed {
                if now >= at {
                    break None;
                }
                // The targeted step ended sooner than measured: kill now,
                // at its end, rather than miss the run.
                if target.is_some() && journal_step(&journal).as_deref() != target.map(|i| steps[i])
                {
                    break None;
                }
            } else if let (Some(target), Some(step)) = (target, journal_step(&journal)) {
                if let Some(i) = steps.iter().position(|x| *x == step) {
                    if i == target {
                        let length = self
                            .step_length
                            .get(&(plan.scenario, step))
                            .copied()
                            .unwrap_or_default();
                        armed = Some(now + length.mul_f64(plan.fraction));
                        continue;
                    }
                    if i > target {
                        // The step went by between two polls: kill now,
                        // and count the kill under the step it hit.
                        break None;
                    }
                }
            }
            if now.duration_since(started) > COMMAND_DEADLINE {
                break None;
            }
            thread::sleep(Duration::from_millis(1));
        };
        if let Some(status) = finished {
            // The run ended first: it must have landed like a full run.
            let output = read_logs(&log);
            self.completed_run(
                format!("run that ended before its kill ({})", plan.describe()),
                plan.scenario,
                status.code(),
                trades_before,
                output,
            );
            return Ok(false);
        }
        let killed = match plan.mode {
            KillMode::Pid => {
                kill_pid(run.pid);
                vec![run.pid]
            }
            KillMode::Tree => kill_tree(run.pid),
        };
        reap(&mut run.child)?;
        let step = journal_step(&journal).unwrap_or_else(|| "(no journal)".into());
        let killed_desc: Vec<String> = killed
            .iter()
            .skip(1)
            .filter_map(|p| Proc::read(*p).map(|p| p.describe()))
            .collect();
        let mut evidence = format!(
            "--- killed run (slipway -v, stderr tail)\n{}",
            tail(&read_logs(&log), 25)
        );
        if !killed_desc.is_empty() {
            let _ = write!(evidence, "\n--- also killed\n{}", killed_desc.join("\n"));
        }
        let strays_at_kill: Vec<String> = self.host.strays().iter().map(Proc::describe).collect();
        if !strays_at_kill.is_empty() {
            let _ = write!(
                evidence,
                "\n--- left alive by the kill\n{}",
                strays_at_kill.join("\n")
            );
        }

        let mut violations = Vec::new();
        let rec_log = self.log("recover.log");
        match self.host.slipway(&["-v", "recover", "--json"], &rec_log) {
            Ok(out) => {
                let _ = write!(
                    evidence,
                    "\n--- slipway -v recover (exit {:?})\n{}\n{}",
                    out.status.code(),
                    tail(&String::from_utf8_lossy(&out.stderr), 25),
                    tail(&String::from_utf8_lossy(&out.stdout), 12)
                );
                if out.status.code() != Some(0) {
                    violations.push(violation(
                        "recover exits 0",
                        format!("exit {:?}", out.status.code()),
                    ));
                }
            }
            Err(e) => violations.push(violation("recover exits 0", format!("{e:#}"))),
        }
        let expect = plan.scenario.lands_on(&step, self.host.releases()).cloned();
        let (more, landed) = self.check(expect.as_ref(), trades_before, true);
        violations.extend(more);
        let held = violations.is_empty();
        if !held {
            let _ = write!(evidence, "\n--- service\n{}", self.host.diagnostics());
        }
        eprintln!(
            "kill #{number} ({:.1}s): {}; died in {step} ({} process(es)) -> {}",
            started.elapsed().as_secs_f64(),
            plan.describe(),
            killed.len(),
            match violations.first() {
                None => format!("held, on {}", landed.clone().unwrap_or_else(|| "?".into())),
                Some(v) => format!("INCONSISTENT: {}: {}", v.invariant, v.detail),
            }
        );
        self.report.kills.push(KillRecord {
            number,
            plan,
            step,
            killed: killed.len(),
            landed: landed.clone(),
            violations,
            evidence: if held { String::new() } else { evidence },
        });
        self.at_baseline = held && landed.as_deref() == Some(&self.host.releases().v1.version);
        if !held {
            self.clean_up();
        }
        Ok(true)
    }

    /// After an inconsistent outcome: nothing of it may leak into the next
    /// kill.
    fn clean_up(&mut self) {
        for p in self.host.strays() {
            kill_pid(p.pid);
        }
        self.at_baseline = false;
    }

    fn current_release(&self) -> Option<&Release> {
        let link = fs::read_link(self.host.root().join("current")).ok()?;
        let name = link.file_name()?.to_string_lossy().into_owned();
        self.host.releases().by_dir(&name)
    }

    /// Every invariant; `expect` is where the host must be (`None`: the old
    /// or the new release). With `after_recover`, the lock is checked with
    /// a second `recover` and the data and service again a moment later.
    /// Returns the violations (first failing first) and the version
    /// `current` names.
    fn check(
        &mut self,
        expect: Option<&Release>,
        trades_before: u64,
        after_recover: bool,
    ) -> (Vec<Violation>, Option<String>) {
        let host = self.host;
        let releases = host.releases();
        let root = host.root();
        let data = host.data();
        let mut v = Vec::new();

        if root.join("state/journal.json").exists() {
            v.push(violation(
                "no journal left",
                format!(
                    "{} names step {}",
                    root.join("state/journal.json").display(),
                    journal_step(&root.join("state/journal.json")).unwrap_or_default()
                ),
            ));
        }

        let current = self.current_release().cloned();
        let link = fs::read_link(root.join("current")).ok();
        match (&current, expect) {
            (None, _) => v.push(violation(
                "current is the old or the new release",
                format!("current -> {link:?}"),
            )),
            (Some(c), Some(e)) if c.dir_name != e.dir_name => v.push(violation(
                "current is the release the recovery table names",
                format!("current is {}, expected {}", c.version, e.version),
            )),
            _ => {}
        }
        if let Some(c) = &current {
            if !root
                .join("releases")
                .join(&c.dir_name)
                .join("slipway/manifest.json")
                .is_file()
            {
                v.push(violation(
                    "current is a complete release",
                    format!("releases/{} has no slipway/manifest.json", c.dir_name),
                ));
            }
        }
        match host.slipway(&["verify"], &self.log("verify.log")) {
            Ok(out) if out.status.success() => {}
            Ok(out) => v.push(violation(
                "slipway verify is clean",
                format!(
                    "exit {:?}: {}",
                    out.status.code(),
                    tail(&String::from_utf8_lossy(&out.stderr), 5)
                ),
            )),
            Err(e) => v.push(violation("slipway verify is clean", format!("{e:#}"))),
        }

        let (debris, temporary) = debris(&root, &data, releases);
        if !debris.is_empty() {
            v.push(violation(
                "no .partial snapshot or .staging-* release left",
                debris.join("; "),
            ));
        }
        if !temporary.is_empty() {
            v.push(violation(
                "no temporary file of an atomic write left",
                temporary.join("; "),
            ));
        }

        if let Some(c) = &current {
            if let Some(problem) = data_problem(&data, c, trades_before) {
                v.push(violation("the data matches current's schema", problem));
            }
        }

        let strays = host.strays();
        if !strays.is_empty() {
            v.push(violation(
                "no hook or restart command outlives the run",
                strays
                    .iter()
                    .map(Proc::describe)
                    .collect::<Vec<_>>()
                    .join("; "),
            ));
            // Whatever they do next belongs to this outcome, not the next.
        }

        let version = current.as_ref().map(|c| c.version.clone());
        v.extend(self.service_problems(version.as_deref(), &data, ""));

        if after_recover {
            match host.slipway(&["recover", "--json"], &self.log("recover-again.log")) {
                Ok(out) if out.status.code() == Some(5) => v.push(violation(
                    "the lock is free",
                    format!(
                        "a second recover exited 5: {}",
                        tail(&String::from_utf8_lossy(&out.stderr), 3)
                    ),
                )),
                Ok(out) if out.status.code() != Some(0) => v.push(violation(
                    "a second recover has nothing to do",
                    format!(
                        "exit {:?}: {}",
                        out.status.code(),
                        tail(&String::from_utf8_lossy(&out.stderr), 3)
                    ),
                )),
                Ok(_) => {}
                Err(e) => v.push(violation("the lock is free", format!("{e:#}"))),
            }
            thread::sleep(LATE_CHECK);
            let late = format!("{:.1}s later: ", LATE_CHECK.as_secs_f64());
            let current_late = self.current_release().cloned();
            if current_late.as_ref().map(|c| &c.dir_name) != current.as_ref().map(|c| &c.dir_name) {
                v.push(violation(
                    "current stays put",
                    format!(
                        "{late}current is {:?}, was {:?}",
                        current_late.map(|c| c.version),
                        version
                    ),
                ));
            }
            if let Some(c) = &current {
                if let Some(problem) = data_problem(&data, c, trades_before) {
                    v.push(violation(
                        "the data still matches current's schema a moment later",
                        format!("{late}{problem}"),
                    ));
                }
            }
            let strays = host.strays();
            if !strays.is_empty() {
                v.push(violation(
                    "no hook or restart command outlives the run",
                    format!(
                        "{late}{}",
                        strays
                            .iter()
                            .map(Proc::describe)
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                ));
            }
            for mut p in self.service_problems(version.as_deref(), &data, &late) {
                p.invariant = match p.invariant {
                    "exactly one bot runs, tracked by the manager" => {
                        "exactly one bot runs, tracked by the manager, a moment later"
                    }
                    "the bot is healthy with current's version, not paused" => {
                        "the bot is healthy with current's version, not paused, a moment later"
                    }
                    other => other,
                };
                v.push(p);
            }
        }
        (v, version)
    }

    /// One bot, the manager's, healthy with `version`, not paused; given
    /// [`SETTLE`] to get there.
    fn service_problems(&self, version: Option<&str>, data: &Path, prefix: &str) -> Vec<Violation> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let mut v = Vec::new();
            let bots = self.host.bots();
            let managed = self.host.manager();
            let tracked = match &managed {
                Ok(m) => bots.len() == 1 && m.main_pid == Some(bots[0].ns_pid),
                Err(_) => false,
            };
            if !tracked {
                v.push(violation(
                    "exactly one bot runs, tracked by the manager",
                    format!(
                        "{prefix}{} bot process(es) [{}]; the manager says {}",
                        bots.len(),
                        bots.iter()
                            .map(Proc::describe)
                            .collect::<Vec<_>>()
                            .join("; "),
                        match &managed {
                            Ok(m) => format!("{} (main pid {:?})", m.state, m.main_pid),
                            Err(e) => format!("nothing readable ({e:#})"),
                        }
                    ),
                ));
            }
            let health = self.host.health();
            let marker = data.join("paused").exists();
            let healthy = matches!(&health, Some((200, body))
                if version.is_some_and(|want| body["version"] == want)
                    && body["paused"] == false);
            if !healthy || marker {
                v.push(violation(
                    "the bot is healthy with current's version, not paused",
                    format!(
                        "{prefix}/health answered {}; current is {}; paused marker {}",
                        match &health {
                            Some((code, body)) => format!("{code} {body}"),
                            None => "nothing".into(),
                        },
                        version.unwrap_or("?"),
                        if marker { "present" } else { "absent" }
                    ),
                ));
            }
            if v.is_empty() || Instant::now() >= deadline {
                return v;
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The killed run's output (stdout and stderr files of [`run_logged`] or
/// a spawned run).
fn read_logs(log: &Path) -> String {
    let out = fs::read_to_string(log).unwrap_or_default();
    let err = fs::read_to_string(log.with_extension("err")).unwrap_or_default();
    format!(
        "{}{}",
        tail(&out, 10),
        if err.is_empty() {
            String::new()
        } else {
            format!("\n{}", tail(&err, 40))
        }
    )
}

/// What the data says against `current`: schema file, the `schema` field a
/// migration stamps, and the trade count.
fn data_problem(data: &Path, current: &Release, trades_before: u64) -> Option<String> {
    let schema_file = data.join("schema_version");
    let schema: Option<u32> = fs::read_to_string(&schema_file)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    if schema != Some(current.schema) {
        return Some(format!(
            "{} says schema {schema:?}, but current is {} (schema {})",
            schema_file.display(),
            current.version,
            current.schema
        ));
    }
    let state_file = data.join("state.json");
    let state: serde_json::Value = match fs::read_to_string(&state_file)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
    {
        Some(s) => s,
        None => return Some(format!("{} is missing or not JSON", state_file.display())),
    };
    let stamped = state["schema"].as_u64();
    let migrated = current.schema > 1;
    if migrated && stamped != Some(u64::from(current.schema)) {
        return Some(format!(
            "{} has schema {stamped:?}, expected {} (migrated data)",
            state_file.display(),
            current.schema
        ));
    }
    if !migrated && stamped.is_some() {
        return Some(format!(
            "{} was migrated (schema {stamped:?}) but current is {} (schema {})",
            state_file.display(),
            current.version,
            current.schema
        ));
    }
    let trades = state["trades"].as_u64().unwrap_or(0);
    if trades < trades_before {
        return Some(format!(
            "{} went back from {trades_before} trades to {trades}: older than the pre-update data",
            state_file.display()
        ));
    }
    None
}

/// Leftovers of a transaction under the root and beside the persistence:
/// snapshots, staging and restore directories, then temporary files of
/// atomic writes (`.NAME.tmp.PID`).
fn debris(root: &Path, data: &Path, releases: &Releases) -> (Vec<String>, Vec<String>) {
    let names = |dir: &Path| -> Vec<String> {
        fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut found = Vec::new();
    let mut temporary = Vec::new();
    for name in names(&root.join("releases")) {
        if releases.by_dir(&name).is_none() {
            found.push(format!("releases/{name}"));
        }
    }
    for name in names(&root.join("backups")) {
        if name.ends_with(".partial") || name.starts_with('.') {
            found.push(format!("backups/{name}"));
        }
    }
    for name in names(&root.join("state")) {
        if name.starts_with('.') || name.contains(".tmp") {
            temporary.push(format!("state/{name}"));
        }
    }
    for name in names(root) {
        if name.starts_with('.') {
            temporary.push(name);
        }
    }
    for dir in [data.to_path_buf(), data.join("meta")] {
        for name in names(&dir) {
            if name.contains(".tmp") {
                temporary.push(dir.join(name).display().to_string());
            }
        }
    }
    // A probation file left behind would start the next release paused:
    // after recovery no release is on probation.
    if data.join("meta/probation.json").exists() {
        found.push(data.join("meta/probation.json").display().to_string());
    }
    if let Some(parent) = data.parent() {
        for name in names(parent) {
            if name.contains(".slipway-") {
                found.push(parent.join(name).display().to_string());
            }
        }
    }
    (found, temporary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rng_is_the_same_for_a_seed() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert!((0..1000).all(|_| a.below(7) < 7));
        assert!((0..1000).all(|_| (0.0..1.0).contains(&a.unit())));
    }

    #[test]
    fn seeds_parse_in_decimal_and_hex() {
        assert_eq!(parse_seed("17").unwrap(), 17);
        assert_eq!(parse_seed("0x11").unwrap(), 17);
        assert!(parse_seed("x").is_err());
    }

    #[test]
    fn a_tree_kill_takes_the_grandchildren() {
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .spawn()
            .expect("sh");
        let pid = child.id() as i32;
        let deadline = Instant::now() + Duration::from_secs(5);
        while descendants(pid, &processes()).len() < 2 {
            assert!(Instant::now() < deadline, "no children appeared");
            thread::sleep(Duration::from_millis(10));
        }
        let below = descendants(pid, &processes());
        let killed = kill_tree(pid);
        let _ = child.wait();
        for p in below {
            assert!(killed.contains(&p));
            let deadline = Instant::now() + Duration::from_secs(5);
            while Proc::read(p).is_some_and(|p| !p.is_zombie()) {
                assert!(Instant::now() < deadline, "pid {p} survived");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

//! Containment of every process slipway starts, so that none outlives a
//! killed run unnoticed (hooks, save/quiesce/resume commands, `systemctl`,
//! the service's restart command).
//!
//! Two marks, because a run can die at any instant, even between `fork` and
//! the first write after it:
//!
//! - **A token in the child's environment.** Every command except the
//!   service's restart command is started with
//!   `SLIPWAY_CHILD=<pid ns>:<pid>:<start ticks>:<n>`, naming the slipway
//!   process that started it (its pid namespace, its pid and its start time
//!   in clock ticks since boot, which together never name another process;
//!   a token from another pid namespace — a slipway in a container — is
//!   never judged) and inherited by everything
//!   the command forks, `setsid` or not. A process carrying a token whose
//!   owner is no longer alive is an orphan of a killed run. The mark exists
//!   from the child's first instruction: there is no window in which a child
//!   runs unmarked.
//! - **A ledger of process groups**, `<root>/state/children/<token>.json`,
//!   written durably right after the spawn and before slipway waits on the
//!   child, removed once the child is reaped and its group killed. It
//!   records the group id and the leader's start time. This is what covers
//!   the restart command, which must not mark its children (they are the
//!   service, which outlives the command by design; the contract is that a
//!   service started by a restart command leaves the command's process group,
//!   as `setsid` does).
//!
//! [`reap_orphans`] runs first in `slipway recover`, under the transaction
//! lock, before anything is decided: it SIGKILLs every recorded group that
//! is still alive (checking the leader's start time, so a recycled group id
//! is never hit) and every process whose token names a dead owner, waits
//! until they are gone, and clears the ledger. A live concurrent slipway
//! cannot be hurt: its token names a live owner, and mutating runs hold the
//! lock anyway.
//!
//! Under systemd the updater's own unit is the container as well: with the
//! default `KillMode=control-group`, a killed `slipway update` takes every
//! child in its cgroup with it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::durable;

/// The environment variable that carries a child's token.
pub const CHILD_ENV: &str = "SLIPWAY_CHILD";

/// How long [`reap_orphans`] waits for killed processes to disappear.
const REAP_WAIT: Duration = Duration::from_secs(10);

/// Where this process records its children (set by [`record_children_in`]
/// under the lock; unset, children are marked but not recorded).
static LEDGER: Mutex<Option<PathBuf>> = Mutex::new(None);
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Makes every child this process starts from now on be recorded in `dir`
/// (`<root>/state/children/`).
pub fn record_children_in(dir: PathBuf) {
    if let Ok(mut ledger) = LEDGER.lock() {
        *ledger = Some(dir);
    }
}

fn ledger_dir() -> Option<PathBuf> {
    LEDGER.lock().ok().and_then(|l| l.clone())
}

/// One child's record in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildRecord {
    /// The token (also the record's file name).
    pub token: String,
    /// The command, for messages.
    pub argv: String,
    /// Its process group (its pid: every child leads a group of its own).
    pub pgid: i32,
    /// The leader's start time, clock ticks since boot (`/proc/PID/stat`).
    pub start_ticks: u64,
    /// A service start command (its background children are the service).
    pub service: bool,
}

/// A child being started: its token, and its ledger record once spawned.
pub struct Tracked {
    token: String,
    record: Option<PathBuf>,
    service: bool,
}

impl Tracked {
    /// A new token for a child of this process. `service`: the child starts
    /// the service, so its environment does not carry the token.
    pub fn new(service: bool) -> Tracked {
        let (pid, ticks) = own_identity();
        let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        Tracked {
            token: format!("{}:{pid}:{ticks}:{n}", own_pid_namespace()),
            record: None,
            service,
        }
    }

    /// The value of [`CHILD_ENV`] for the child, or `None` for a service
    /// start command.
    pub fn env_token(&self) -> Option<&str> {
        (!self.service).then_some(self.token.as_str())
    }

    /// Records the spawned child (pid `pid`, leading its own group) in the
    /// ledger, durably. The caller decides what an error means; the
    /// environment token marks the child either way.
    pub fn spawned(&mut self, pid: u32, argv: &str) -> Result<(), io::Error> {
        let Some(dir) = ledger_dir() else {
            return Ok(());
        };
        let pgid = i32::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
        // The child may already be gone (a command that fails at once):
        // its start time is then unknown, and 0 matches no live process.
        let start_ticks = proc_stat(pgid).map_or(0, |s| s.start_ticks);
        let record = ChildRecord {
            token: self.token.clone(),
            argv: argv.to_string(),
            pgid,
            start_ticks,
            service: self.service,
        };
        durable::create_dirs(&dir)?;
        let path = dir.join(format!("{}.json", self.token.replace(':', "-")));
        durable::write_json_atomic(&path, &record)?;
        self.record = Some(path);
        Ok(())
    }

    /// The child was reaped (and its group killed, unless it is a service
    /// start command that exited normally): kill whatever it left that
    /// carries its token (a `setsid` escapee of a hook), then forget it.
    pub fn finished(self) {
        if !self.service {
            for p in scan_processes() {
                if !p.zombie && token_of(p.pid).as_deref() == Some(self.token.as_str()) {
                    kill_pid(p.pid);
                }
            }
        }
        if let Some(path) = self.record {
            // A record left behind is harmless: its group is gone, and the
            // next recovery checks the start time before killing anything.
            let _ = fs::remove_file(&path);
        }
    }
}

/// What [`reap_orphans`] found and killed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reaped {
    /// The commands of recorded groups that were still alive.
    pub groups: Vec<String>,
    /// Pids of marked processes whose owner was dead.
    pub marked: Vec<i32>,
    /// Processes still present after the wait (should be empty).
    pub survivors: Vec<i32>,
}

impl Reaped {
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.marked.is_empty()
    }
}

/// Kills and waits for every child a killed run left behind: the recorded
/// groups in `ledger` that are still alive, and every process marked with a
/// token whose owner is dead. Then empties the ledger. Call it under the
/// transaction lock, before deciding anything from the journal.
pub fn reap_orphans(ledger: &Path) -> io::Result<Reaped> {
    let mut reaped = Reaped::default();
    let procs = scan_processes();
    let mut records = Vec::new();
    match fs::read_dir(ledger) {
        Ok(entries) => {
            for e in entries.flatten() {
                let path = e.path();
                let record = read_record(&path);
                records.push((path, record));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut pgids = Vec::new();
    for (_, record) in &records {
        let Some(r) = record else { continue };
        if r.pgid <= 1 {
            continue;
        }
        if owner_alive(&r.token) {
            // A live slipway's child (cannot happen under the lock): leave it.
            continue;
        }
        let leader = procs.iter().find(|p| p.pid == r.pgid);
        if let Some(l) = leader {
            if l.start_ticks != r.start_ticks {
                // The group id was recycled: not ours.
                continue;
            }
        }
        if procs.iter().any(|p| p.pgrp == r.pgid && !p.zombie) {
            kill_group(r.pgid);
            reaped.groups.push(r.argv.clone());
            pgids.push(r.pgid);
        }
    }
    let me = rustix::process::getpid().as_raw_nonzero().get();
    for p in &procs {
        // This process may carry a token inherited from whoever started it
        // (a slipway run by a hook of another): never reap oneself.
        if p.zombie || p.pid == me {
            continue;
        }
        let Some(token) = token_of(p.pid) else {
            continue;
        };
        if !owner_alive(&token) {
            kill_pid(p.pid);
            reaped.marked.push(p.pid);
        }
    }
    // Wait until everything killed is gone (a SIGKILLed process may take a
    // moment to exit; its zombie is reaped by init and counts as gone).
    let deadline = Instant::now() + REAP_WAIT;
    // Nothing killed: nothing to wait for (and no second scan of every
    // process on every run).
    while !pgids.is_empty() || !reaped.marked.is_empty() {
        let now = scan_processes();
        let alive: Vec<i32> = now
            .iter()
            .filter(|p| !p.zombie && (pgids.contains(&p.pgrp) || reaped.marked.contains(&p.pid)))
            .map(|p| p.pid)
            .collect();
        if alive.is_empty() || Instant::now() >= deadline {
            reaped.survivors = alive;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for (path, _) in records {
        let _ = fs::remove_file(&path);
    }
    if !reaped.is_empty() {
        let _ = durable::fsync_dir(ledger);
    }
    Ok(reaped)
}

/// A ledger record, read with [`slipway_fs::read_capped`] (no link
/// followed, no blocking open, a regular file of at most 64 KiB); anything
/// else reads as no record.
fn read_record(path: &Path) -> Option<ChildRecord> {
    let bytes = slipway_fs::read_capped(path, 64 * 1024).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// This process's pid and start time.
fn own_identity() -> (i32, u64) {
    let pid = rustix::process::getpid().as_raw_nonzero().get();
    (pid, proc_stat(pid).map_or(0, |s| s.start_ticks))
}

/// This process's pid namespace (the inode of `/proc/self/ns/pid`): pids
/// in a token mean something only in the namespace that wrote them.
fn own_pid_namespace() -> u64 {
    pid_namespace_of("self").unwrap_or(0)
}

fn pid_namespace_of(who: &str) -> Option<u64> {
    let link = fs::read_link(format!("/proc/{who}/ns/pid")).ok()?;
    let text = link.to_string_lossy();
    text.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

/// Whether the slipway process a token names is still alive, or cannot be
/// judged from here. A token written in another pid namespace (a slipway in
/// a container, whose children the host sees) is never judged: its pid
/// names some other process here.
fn owner_alive(token: &str) -> bool {
    let mut parts = token.split(':');
    let (Some(ns), Some(pid), Some(ticks)) = (
        parts.next().and_then(|p| p.parse::<u64>().ok()),
        parts.next().and_then(|p| p.parse::<i32>().ok()),
        parts.next().and_then(|t| t.parse::<u64>().ok()),
    ) else {
        // Not a token this slipway wrote: left alone.
        return true;
    };
    if ns != own_pid_namespace() {
        return true;
    }
    proc_stat(pid).is_some_and(|s| s.start_ticks == ticks && !s.zombie)
}

/// The fields of `/proc/PID/stat` that containment needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    pid: i32,
    pgrp: i32,
    start_ticks: u64,
    zombie: bool,
}

fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &text)
}

/// Parses `/proc/PID/stat`: the command name is in parentheses and may hold
/// spaces or parentheses itself, so the fields are counted after the last
/// `)`: state is field 3, pgrp field 5, starttime field 22.
fn parse_stat(pid: i32, text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3.
    let state = *fields.first()?;
    let pgrp = fields.get(2)?.parse().ok()?;
    let start_ticks = fields.get(19)?.parse().ok()?;
    Some(ProcStat {
        pid,
        pgrp,
        start_ticks,
        zombie: state == "Z" || state == "X",
    })
}

fn scan_processes() -> Vec<ProcStat> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(proc_stat)
        .collect()
}

/// The token in a process's environment, if it carries one.
fn token_of(pid: i32) -> Option<String> {
    let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{CHILD_ENV}=");
    environ
        .split(|b| *b == 0)
        .find_map(|var| var.strip_prefix(prefix.as_bytes()))
        .map(|t| String::from_utf8_lossy(t).into_owned())
}

fn kill_group(pgid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pgid) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

fn kill_pid(pid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let line =
            "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 50";
        let s = parse_stat(4242, line).expect("parses");
        assert_eq!(s.pgrp, 4242);
        assert_eq!(s.start_ticks, 987654);
        assert!(!s.zombie);
        let z = "7 (sh) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0";
        assert!(parse_stat(7, z).expect("parses").zombie);
        assert_eq!(parse_stat(1, "garbage"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_made_up_owner_is_not() {
        let t = Tracked::new(false);
        let token = t.env_token().expect("marked").to_string();
        assert!(owner_alive(&token));
        let (pid, ticks) = own_identity();
        let ns = own_pid_namespace();
        assert!(!owner_alive(&format!("{ns}:{pid}:{}:0", ticks + 1)));
        // Another pid namespace's token is never judged from here.
        assert!(owner_alive(&format!("{}:99999999:1:0", ns + 1)));
        // Nor is a token of another shape.
        assert!(owner_alive("99999999:1:0"));
        assert!(Tracked::new(true).env_token().is_none());
    }

    #[test]
    fn an_orphan_marked_with_a_dead_owner_is_killed() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A token naming a process that does not exist: pid_max is at most
        // 2^22, so this pid never does.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env(CHILD_ENV, format!("{}:99999999:1:0", own_pid_namespace()))
            .spawn()
            .expect("spawn sleep");
        let pid = i32::try_from(child.id()).expect("pid");
        // Wait until the exec happened, so the environment is the child's.
        let deadline = Instant::now() + Duration::from_secs(5);
        while token_of(pid).is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let reaped = reap_orphans(dir.path()).expect("reap");
        let status = child.wait().expect("wait");
        assert!(reaped.marked.contains(&pid), "{reaped:?}");
        assert!(!status.success());
    }
}

//! Running the commands a host or a release asks for: the release's `check`
//! and `migrate` hooks, the host's `[hooks] check` list, and every other
//! configured argv (restart, status, save, quiesce) (SPEC §4 steps 6 and 9).
//!
//! Every command runs in its own process group with stdin closed, its output
//! captured in bounded tails, and a hard timeout: when the timeout passes,
//! the whole group is killed with SIGKILL, so a hook that forked a
//! background child (`sleep 60 & wait`) leaves nothing behind. A command is
//! never run through a shell; an argv is an argv.
//!
//! Whose command it is decides how it runs ([`Runner`]):
//!
//! - **The app's hooks** (the release's `check` and `migrate`, the host's
//!   `[hooks] check`, which run the release's code) run as the service's
//!   user and group ([`crate::app_user`]), with supplementary groups
//!   dropped, and a clean environment: exactly `PATH` (slipway's, else
//!   [`DEFAULT_PATH`]), `LANG` (slipway's, else `C.UTF-8`), `HOME` (the
//!   user's), [`CHILD_ENV`](crate::children::CHILD_ENV) and the variables
//!   the transaction passes ([`HOOK_ENV_VARS`], `PYTHONDONTWRITEBYTECODE`,
//!   `PYTHONPYCACHEPREFIX`). Nothing else of slipway's environment (proxy
//!   settings, tokens, `SLIPWAY_*` configuration) reaches the app.
//! - **slipway's and the operator's commands** (`systemctl`, the restart and
//!   status commands, `save`, `quiesce`, `resume`) run as slipway runs, with
//!   its environment minus the hook variables: they are the host's, written
//!   by whoever wrote the configuration (wrap one in `setpriv` or `runuser`
//!   to drop privileges).

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::app_user::AppUser;

/// How much of each output stream is kept: the last 16 KiB.
pub const TAIL_BYTES: usize = 16 * 1024;

/// The environment variables slipway passes to hooks. Inherited values of
/// these names are removed, so a hook only ever sees what this run set.
pub const HOOK_ENV_VARS: [&str; 5] = [
    "SLIPWAY_RELEASE_DIR",
    "SLIPWAY_VERSION",
    "SLIPWAY_PERSISTENCE",
    "SLIPWAY_SCHEMA_FROM",
    "SLIPWAY_SCHEMA_TO",
];

/// `PATH` of an app hook when slipway has none (systemd's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Whose command is run, which decides its user and environment (see the
/// module docs).
#[derive(Debug, Clone, Copy)]
pub enum Runner<'a> {
    /// slipway's or the operator's command: as slipway runs.
    Updater,
    /// One of the app's hooks: as the service's user, clean environment.
    App(&'a AppUser),
}

/// After the command exits, how long its output pipes may stay open (held by
/// a background child that escaped the group) before the tails are taken as
/// they are.
const PIPE_GRACE: Duration = Duration::from_secs(1);

/// `start + d`, with `d` capped at ten years so that a huge configured
/// timeout means "practically forever" instead of an overflow.
pub fn deadline_after(start: Instant, d: Duration) -> Instant {
    const FOREVER: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
    start.checked_add(d.min(FOREVER)).unwrap_or(start)
}

/// What a finished command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// Exit code; `None` when it was ended by a signal.
    pub status: Option<i32>,
    /// The last [`TAIL_BYTES`] of stdout (invalid UTF-8 replaced).
    pub stdout_tail: String,
    /// The last [`TAIL_BYTES`] of stderr (invalid UTF-8 replaced).
    pub stderr_tail: String,
    /// The last [`TAIL_BYTES`] of stdout and stderr together, in the order
    /// their chunks arrived.
    pub output_tail: String,
    /// The file holding the whole output, when one was asked for.
    pub log: Option<PathBuf>,
    pub duration: Duration,
}

/// Why a command did not succeed.
#[derive(Debug, Error)]
pub enum HookError {
    #[error("an empty command was configured; give an argv list such as [\"python3\", \"-m\", \"compileall\", \".\"]")]
    EmptyArgv,
    #[error("cannot start {program} in {}: {source}; check that it is installed and on PATH and that the directory exists", cwd.display())]
    Spawn {
        program: String,
        cwd: PathBuf,
        source: std::io::Error,
    },
    #[error("{argv} did not finish within {}s and was killed with its process group; fix the command or raise its timeout{}", timeout.as_secs_f64(), output_suffix(&seen.output_tail, seen.log.as_deref()))]
    Timeout {
        argv: String,
        timeout: Duration,
        stderr_tail: String,
        seen: Box<Seen>,
    },
    #[error("{argv} failed ({}){}", describe_status(*status), output_suffix(&seen.output_tail, seen.log.as_deref()))]
    Failed {
        argv: String,
        status: Option<i32>,
        seen: Box<Seen>,
        stderr_tail: String,
    },
    #[error("while running {argv}: {source}")]
    Io {
        argv: String,
        source: std::io::Error,
    },
}

/// What a failed command printed, for its error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// Its stdout and stderr interleaved as they arrived (last bytes).
    pub output_tail: String,
    /// Where its whole output was kept, when it was.
    pub log: Option<PathBuf>,
}

fn describe_status(status: Option<i32>) -> String {
    match status {
        Some(code) => format!("exit status {code}"),
        None => "killed by a signal".to_string(),
    }
}

/// How many lines of a failed command's output its error shows.
pub const ERROR_LINES: usize = 20;

/// The last [`ERROR_LINES`] lines of the command's stdout and stderr, in the
/// order they came (`python -m compileall` prints its SyntaxError on
/// stdout), and where the whole output is kept.
fn output_suffix(tail: &str, log: Option<&Path>) -> String {
    let t = tail.trim_end();
    let mut out = String::new();
    if !t.trim().is_empty() {
        let lines: Vec<&str> = t.lines().collect();
        let start = lines.len().saturating_sub(ERROR_LINES);
        out.push_str(&format!(
            "; its output{}:",
            if start > 0 {
                format!(" (last {ERROR_LINES} lines)")
            } else {
                String::new()
            }
        ));
        for l in &lines[start..] {
            out.push_str("\n    ");
            out.push_str(l);
        }
    }
    if let Some(log) = log {
        out.push_str(&format!("\n  whole output: {}", log.display()));
    }
    out
}

/// An argv as an operator would type it: words joined by spaces, quoted
/// where needed. For messages only; commands never go through a shell.
pub fn display_argv(argv: &[String]) -> String {
    argv.iter()
        .map(|w| {
            let plain = !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
            if plain {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last `TAIL_BYTES` of a stream, shared between its reader thread and
/// the caller (who may stop waiting for the thread).
#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
}

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        // Trim in batches so a chatty command costs O(n), not O(n²).
        if self.bytes.len() > 2 * TAIL_BYTES {
            let cut = self.bytes.len() - TAIL_BYTES;
            self.bytes.drain(..cut);
        }
    }

    fn text(&self) -> String {
        let start = self.bytes.len().saturating_sub(TAIL_BYTES);
        String::from_utf8_lossy(&self.bytes[start..]).into_owned()
    }
}

/// Where a command's whole output goes ([`run_hook`]): a file, up to
/// [`LOG_BYTES`]; past that a last line says it was cut.
struct OutputLog {
    file: std::fs::File,
    written: u64,
    cut: bool,
}

/// The most of one command's output kept in its log file.
pub const LOG_BYTES: u64 = 16 * 1024 * 1024;

impl OutputLog {
    fn push(&mut self, chunk: &[u8]) {
        use std::io::Write;
        if self.cut {
            return;
        }
        let room = LOG_BYTES.saturating_sub(self.written);
        let n = chunk.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        if self.file.write_all(&chunk[..n]).is_err() {
            self.cut = true;
            return;
        }
        self.written += n as u64;
        if n < chunk.len() {
            let _ = self
                .file
                .write_all(b"\n[slipway: output cut here at 16 MiB]\n");
            self.cut = true;
        }
    }
}

/// Where one stream's bytes go: its own tail, then (under one lock, so the
/// order is kept) the interleaved tail and the log.
struct Sinks {
    tail: Arc<Mutex<Tail>>,
    combined: Arc<Mutex<Tail>>,
    log: Option<Arc<Mutex<OutputLog>>>,
}

impl Sinks {
    fn push(&self, chunk: &[u8]) {
        if let Ok(mut t) = self.tail.lock() {
            t.push(chunk);
        }
        if let Ok(mut c) = self.combined.lock() {
            c.push(chunk);
            if let Some(log) = &self.log {
                if let Ok(mut l) = log.lock() {
                    l.push(chunk);
                }
            }
        }
    }
}

/// Reads the command's pipes (one shared by stdout and stderr, or one
/// each) in one thread, with `poll`; when both of two pipes are readable,
/// stdout is read first. Only a shared pipe keeps the exact order of
/// writes across the two streams; with two, chunks that arrive between two
/// polls may be taken in either order.
fn spawn_reader(mut streams: Vec<(Box<dyn ReadFd>, Sinks)>) -> JoinHandle<()> {
    use rustix::event::{PollFd, PollFlags};
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while !streams.is_empty() {
            let ready: Vec<bool> = {
                let mut fds: Vec<PollFd<'_>> = streams
                    .iter()
                    .map(|(s, _)| PollFd::from_borrowed_fd(s.fd(), PollFlags::IN))
                    .collect();
                match rustix::event::poll(&mut fds, None) {
                    Ok(_) => fds.iter().map(|f| !f.revents().is_empty()).collect(),
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(_) => return,
                }
            };
            let mut closed = Vec::new();
            for (i, ((stream, sinks), ready)) in streams.iter_mut().zip(ready).enumerate() {
                if !ready {
                    continue;
                }
                match stream.read(&mut buf) {
                    Ok(0) => closed.push(i),
                    Ok(n) => sinks.push(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => closed.push(i),
                }
            }
            for i in closed.into_iter().rev() {
                streams.remove(i);
            }
        }
    })
}

/// A pipe end the reader can both poll and read.
trait ReadFd: Read + Send {
    fn fd(&self) -> std::os::fd::BorrowedFd<'_>;
}

impl<T: Read + Send + std::os::fd::AsFd> ReadFd for T {
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.as_fd()
    }
}

fn take_tail(tail: &Arc<Mutex<Tail>>) -> String {
    match tail.lock() {
        Ok(t) => t.text(),
        Err(poisoned) => poisoned.into_inner().text(),
    }
}

/// Kills every process in the group led by `child` (its pid is the pgid).
fn kill_group(child: &Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        // ESRCH (the group is already gone) is fine.
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// Runs `argv` in `cwd` with `env` added to the inherited environment (minus
/// inherited [`HOOK_ENV_VARS`]), stdin closed, in its own process group, and
/// waits at most `timeout`.
///
/// Succeeds only on exit status 0. Background processes the command left in
/// its group are killed when it exits: a hook never outlives its run. At the
/// timeout the whole process group is killed (SIGKILL) and
/// [`HookError::Timeout`] is returned; a non-zero exit
/// (or death by a signal) is [`HookError::Failed`] with the stderr tail; a
/// program that cannot be started is [`HookError::Spawn`].
pub fn run_command(
    argv: &[String],
    cwd: &Path,
    env: &[(String, String)],
    timeout: Duration,
) -> Result<CommandOutput, HookError> {
    succeeded(
        argv,
        run_process(argv, cwd, env, timeout, false, Runner::Updater, None)?,
    )
}

/// Runs one of the app's hooks (`check`, `migrate`) like [`run_command`],
/// but as `user` (its uid, its group, no supplementary groups; unchanged
/// when slipway does not run as root) with the clean environment of the
/// module docs plus `env`. Its whole output (stdout and stderr interleaved
/// as they came, up to [`LOG_BYTES`]) is also written to `log`, which a
/// failure's message names.
pub fn run_hook(
    argv: &[String],
    cwd: &Path,
    env: &[(String, String)],
    timeout: Duration,
    user: &AppUser,
    log: Option<&Path>,
) -> Result<CommandOutput, HookError> {
    succeeded(
        argv,
        run_process(argv, cwd, env, timeout, false, Runner::App(user), log)?,
    )
}

/// A command's output if it exited 0; else [`HookError::Failed`] with the
/// stderr tail.
fn succeeded(argv: &[String], output: CommandOutput) -> Result<CommandOutput, HookError> {
    match output.status {
        Some(0) => Ok(output),
        status => Err(HookError::Failed {
            argv: display_argv(argv),
            status,
            stderr_tail: output.stderr_tail,
            seen: Box::new(Seen {
                output_tail: output.output_tail,
                log: output.log,
            }),
        }),
    }
}

/// Like [`run_command`], but a command that ran to completion is `Ok`
/// whatever its exit status (for status probes, where non-zero is an answer).
pub fn run_command_status(
    argv: &[String],
    cwd: &Path,
    env: &[(String, String)],
    timeout: Duration,
) -> Result<CommandOutput, HookError> {
    run_process(argv, cwd, env, timeout, false, Runner::Updater, None)
}

/// Like [`run_command`], but processes the command started in the
/// background are left running when it exits (they are still killed at the
/// timeout). For a restart command that starts the service itself.
pub fn run_service_command(
    argv: &[String],
    cwd: &Path,
    env: &[(String, String)],
    timeout: Duration,
) -> Result<CommandOutput, HookError> {
    succeeded(
        argv,
        run_process(argv, cwd, env, timeout, true, Runner::Updater, None)?,
    )
}

fn run_process(
    argv: &[String],
    cwd: &Path,
    env: &[(String, String)],
    timeout: Duration,
    leave_children: bool,
    runner: Runner<'_>,
    log_path: Option<&Path>,
) -> Result<CommandOutput, HookError> {
    let (program, args) = argv.split_first().ok_or(HookError::EmptyArgv)?;
    let started = Instant::now();
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // A hook's stdout and stderr share one pipe (as `2>&1` would), so its
    // output reads in the order it was written: a compiler's error on
    // stdout and a traceback on stderr stay in sequence. The service's
    // commands keep two pipes: their stdout is parsed (`systemctl show`).
    let mut shared_pipe = None;
    if matches!(runner, Runner::App(_)) {
        let (reader, writer) = std::io::pipe().map_err(|source| HookError::Io {
            argv: display_argv(argv),
            source,
        })?;
        let writer2 = writer.try_clone().map_err(|source| HookError::Io {
            argv: display_argv(argv),
            source,
        })?;
        command.stdout(writer).stderr(writer2);
        shared_pipe = Some(reader);
    }
    match runner {
        Runner::Updater => {
            for name in HOOK_ENV_VARS {
                command.env_remove(name);
            }
        }
        Runner::App(user) => {
            command.env_clear().envs(app_env(user));
            if rustix::process::geteuid().is_root() && !user.is_root() {
                // std drops the supplementary groups (setgroups(0)) before
                // setuid when it changes the uid: the hook has exactly the
                // user's uid and the service's gid.
                command.gid(user.gid).uid(user.uid);
            }
        }
    }
    // Containment (crate::children): every child but a service start
    // command carries this run's token, and every child's group is recorded
    // in the ledger before it is waited on.
    command.env_remove(crate::children::CHILD_ENV);
    let mut tracked = crate::children::Tracked::new(leave_children);
    if let Some(token) = tracked.env_token() {
        command.env(crate::children::CHILD_ENV, token);
    }
    command.envs(
        env.iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v))),
    );
    let spawned = command.spawn();
    // The parent's copies of a shared pipe's write end close with the
    // command, so that the reader sees the end when the hook's group does.
    drop(command);
    let mut child = spawned.map_err(|source| HookError::Spawn {
        program: program.clone(),
        cwd: cwd.to_path_buf(),
        source,
    })?;
    // A ledger that cannot be written (a full disk) must not stop the
    // command: a resume or a flip back's restart matters more. The token
    // still marks every child but a service start command.
    let _ = tracked.spawned(child.id(), &display_argv(argv));

    let out_tail = Arc::new(Mutex::new(Tail::default()));
    let err_tail = Arc::new(Mutex::new(Tail::default()));
    let combined = Arc::new(Mutex::new(Tail::default()));
    // A log that cannot be created costs the log, never the command.
    let log = log_path.and_then(|p| {
        let _ = p.parent().map(std::fs::create_dir_all);
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(p)
            .ok()
            .map(|file| {
                Arc::new(Mutex::new(OutputLog {
                    file,
                    written: 0,
                    cut: false,
                }))
            })
    });
    let kept_log = log.as_ref().and(log_path.map(Path::to_path_buf));
    let out_sinks = Sinks {
        tail: Arc::clone(&out_tail),
        combined: Arc::clone(&combined),
        log: log.clone(),
    };
    let err_sinks = Sinks {
        tail: Arc::clone(&err_tail),
        combined: Arc::clone(&combined),
        log: log.clone(),
    };
    let mut streams: Vec<(Box<dyn ReadFd>, Sinks)> = Vec::with_capacity(2);
    let one_pipe = shared_pipe.is_some();
    if let Some(r) = shared_pipe {
        streams.push((Box::new(r), out_sinks));
    } else {
        if let Some(s) = child.stdout.take() {
            streams.push((Box::new(s), out_sinks));
        }
        if let Some(s) = child.stderr.take() {
            streams.push((Box::new(s), err_sinks));
        }
    }
    let reader = spawn_reader(streams);

    let deadline = deadline_after(started, timeout);
    let exited = match wait_until(&child, deadline) {
        Ok(exited) => exited,
        Err(source) => {
            kill_group(&child);
            let _ = child.wait();
            tracked.finished();
            return Err(HookError::Io {
                argv: display_argv(argv),
                source,
            });
        }
    };
    // At the timeout the whole group goes. After a normal exit, so do any
    // background children it left behind, unless the command is allowed to
    // start long-lived processes (a restart command starting the service).
    if !exited || !leave_children {
        kill_group(&child);
    }
    let status = child.wait().map_err(|source| HookError::Io {
        argv: display_argv(argv),
        source,
    });
    tracked.finished();
    let status = status?;
    let timed_out = !exited;

    // The pipes close when every process holding them is gone. A child that
    // left the group (setsid) could hold them forever: wait briefly, then
    // take the tails as they are and leave the reader threads to finish.
    let grace_end = Instant::now() + PIPE_GRACE;
    while !reader.is_finished() && Instant::now() < grace_end {
        std::thread::sleep(Duration::from_millis(5));
    }
    if reader.is_finished() {
        let _ = reader.join();
    }

    let output = CommandOutput {
        status: status_code(status),
        stdout_tail: take_tail(&out_tail),
        // One pipe: stderr is in the same stream.
        stderr_tail: take_tail(if one_pipe { &out_tail } else { &err_tail }),
        output_tail: take_tail(&combined),
        log: kept_log,
        duration: started.elapsed(),
    };
    if timed_out {
        return Err(HookError::Timeout {
            argv: display_argv(argv),
            timeout,
            stderr_tail: output.stderr_tail,
            seen: Box::new(Seen {
                output_tail: output.output_tail,
                log: output.log,
            }),
        });
    }
    Ok(output)
}

/// The environment an app hook starts from (see the module docs).
fn app_env(user: &AppUser) -> Vec<(OsString, OsString)> {
    let inherited = |name: &str, default: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| OsString::from(default))
    };
    vec![
        ("PATH".into(), inherited("PATH", DEFAULT_PATH)),
        ("LANG".into(), inherited("LANG", "C.UTF-8")),
        ("HOME".into(), user.home.clone().into_os_string()),
    ]
}

fn status_code(status: ExitStatus) -> Option<i32> {
    if status.signal().is_some() {
        None
    } else {
        status.code()
    }
}

/// Polls until the child has exited (`true`) or the deadline passes
/// (`false`), without reaping it: while it is unreaped its pid, which is
/// also the group id, cannot be reused, so the group can still be killed
/// safely.
fn wait_until(child: &Child, deadline: Instant) -> std::io::Result<bool> {
    use rustix::process::{waitid, Pid, WaitId, WaitIdOptions};
    let pid = Pid::from_raw(child.id() as i32)
        .ok_or_else(|| std::io::Error::other("child has no valid pid"))?;
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    let mut pause = Duration::from_millis(1);
    loop {
        match waitid(WaitId::Pid(pid), options) {
            Ok(Some(_)) => return Ok(true),
            Ok(None) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Runs the release's `check` hook, then each of the host's checks, all in
/// `release_dir` as the app's hooks ([`run_hook`] as `user`), each with
/// `timeout`; stops at the first failure. With `log_dir`, each check's whole
/// output is kept in `log_dir/check-<n>.log`.
///
/// Returns the outputs of all checks when every one passed. A failure here
/// happens before anything is switched: the running release is untouched.
pub fn run_checks(
    release_dir: &Path,
    release_check: Option<&[String]>,
    host_checks: &[Vec<String>],
    env: &[(String, String)],
    timeout: Duration,
    user: &AppUser,
    log_dir: Option<&Path>,
) -> Result<Vec<CommandOutput>, HookError> {
    let mut outputs = Vec::with_capacity(host_checks.len() + 1);
    for (i, argv) in release_check
        .into_iter()
        .chain(host_checks.iter().map(Vec::as_slice))
        .enumerate()
    {
        let log = log_dir.map(|d| d.join(format!("check-{}.log", i + 1)));
        outputs.push(run_hook(
            argv,
            release_dir,
            env,
            timeout,
            user,
            log.as_deref(),
        )?);
    }
    Ok(outputs)
}

/// A scratch directory for the app's hooks (Python's bytecode cache,
/// `PYTHONPYCACHEPREFIX`), outside the install root and writable by `user`.
pub fn hook_scratch_dir(user: &AppUser) -> Option<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("slipway-pycache-")
        .tempdir()
        .ok()?;
    if rustix::process::geteuid().is_root() && !user.is_root() {
        std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid)).ok()?;
    }
    Some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn tail_keeps_only_the_last_bytes() {
        let mut t = Tail::default();
        for i in 0..10_000u32 {
            t.push(format!("line {i}\n").as_bytes());
        }
        let text = t.text();
        assert_eq!(text.len(), TAIL_BYTES);
        assert!(text.ends_with("line 9999\n"));
    }

    #[test]
    fn argv_is_displayed_with_quotes_where_needed() {
        assert_eq!(
            display_argv(&argv(&["python3", "-m", "compileall", "-q", "."])),
            "python3 -m compileall -q ."
        );
        assert_eq!(
            display_argv(&argv(&["sh", "-c", "echo it's"])),
            r"sh -c 'echo it'\''s'"
        );
    }

    #[test]
    fn empty_argv_is_an_error() {
        let err =
            run_command(&[], Path::new("/"), &[], Duration::from_secs(1)).expect_err("empty argv");
        assert!(matches!(err, HookError::EmptyArgv));
    }

    #[test]
    fn an_app_hook_gets_a_clean_environment() {
        let out = run_hook(
            &argv(&["sh", "-c", "env | sort"]),
            Path::new("/"),
            &[("SLIPWAY_VERSION".into(), "2.0.0".into())],
            Duration::from_secs(10),
            &AppUser::root(),
            None,
        )
        .expect("runs");
        let names: Vec<&str> = out
            .stdout_tail
            .lines()
            .filter_map(|l| l.split('=').next())
            // The shell's own.
            .filter(|n| !["PWD", "SHLVL", "_", "OLDPWD"].contains(n))
            .collect();
        assert_eq!(
            names,
            ["HOME", "LANG", "PATH", "SLIPWAY_CHILD", "SLIPWAY_VERSION"]
        );
        assert!(
            out.stdout_tail.contains("HOME=/root\n"),
            "{}",
            out.stdout_tail
        );
    }

    #[test]
    fn a_failed_hook_shows_its_last_lines_of_stdout_and_stderr_in_order_and_keeps_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("out/check-1.log");
        // Like `python -m compileall`: the reason is on stdout.
        let script = "for i in $(seq 1 25); do echo \"line $i\"; done; \
                      echo 'SyntaxError: invalid syntax' >&2; echo 'after' ; exit 1";
        let err = run_hook(
            &argv(&["sh", "-c", script]),
            Path::new("/"),
            &[],
            Duration::from_secs(10),
            &AppUser::root(),
            Some(&log),
        )
        .expect_err("fails");
        let text = err.to_string();
        assert!(text.contains("exit status 1"), "{text}");
        assert!(text.contains("last 20 lines"), "{text}");
        let syntax = text.find("SyntaxError").expect("stderr shown");
        let after = text.find("\n    after").expect("stdout shown");
        assert!(syntax < after, "in the order they came: {text}");
        assert!(text.contains("line 25"), "{text}");
        assert!(!text.contains("line 6\n"), "only the last 20 lines: {text}");
        assert!(text.contains(&log.display().to_string()), "{text}");
        let kept = std::fs::read_to_string(&log).expect("log kept");
        assert!(kept.starts_with("line 1\n"), "{kept}");
        assert!(
            kept.contains("SyntaxError") && kept.ends_with("after\n"),
            "{kept}"
        );
    }

    #[test]
    fn hook_sees_the_variables_it_is_given() {
        // Unset names stay unset; given names arrive.
        let out = run_command(
            &argv(&[
                "sh",
                "-c",
                "echo \"[${SLIPWAY_SCHEMA_FROM-unset}] [$SLIPWAY_VERSION]\"",
            ]),
            Path::new("/"),
            &[("SLIPWAY_VERSION".into(), "2.0.0".into())],
            Duration::from_secs(10),
        )
        .expect("runs");
        assert_eq!(out.stdout_tail.trim(), "[unset] [2.0.0]");
    }
}

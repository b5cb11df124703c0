//! Running external commands with a deadline and captured output.
//!
//! Everything the harness starts (minisign, `nsenter`, `mount`, `systemctl`
//! inside a container) goes through [`run`] or [`run_with_input`], so that a
//! hung child fails the test with what it printed instead of hanging the
//! whole `cargo test` run.

use std::fmt::Display;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustix::process::{kill_process_group, Pid, Signal};

/// How long [`run`] keeps reading a child's pipes after the child exited.
///
/// A child that left a background process holding its stdout open would
/// otherwise block us until that process ends.
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// Runs `cmd` to completion with stdin from `/dev/null`, capturing stdout and
/// stderr, and kills it (its whole process group) if it is still running after
/// `timeout`.
///
/// A non-zero exit status is *not* an error here: the caller gets the
/// [`Output`] and decides (see [`OutputExt::checked`]). Errors are: the program
/// could not be started, or it ran out of time (the error then carries what it
/// printed so far).
pub fn run(cmd: Command, timeout: Duration) -> Result<Output> {
    run_with_input(cmd, None, timeout)
}

/// Runs `cmd` (no deadline: a local tool such as `cp` or `slipway-pack`)
/// and fails with its stderr unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Like [`run`], with `input` written to the child's stdin (then closed).
pub fn run_with_input(mut cmd: Command, input: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    let description = describe(&cmd);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    // Its own process group, so that a timeout kills everything it started.
    .process_group(0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start {description}"))?;

    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        let input = input.to_vec();
        // A writer thread: a child that prints a lot before reading its
        // input must not deadlock against us.
        thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let stdout = spawn_reader(child.stdout.take());
    let stderr = spawn_reader(child.stderr.take());

    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for {description}"))?
        {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };

    let Some(status) = status else {
        kill_group(child.id());
        let _ = child.wait();
        let stdout = stdout.collect(Instant::now() + PIPE_GRACE);
        let stderr = stderr.collect(Instant::now() + PIPE_GRACE);
        bail!(
            "{description} did not finish within {timeout:?} and was killed\n{}",
            format_streams(&stdout, &stderr)
        );
    };
    let grace = Instant::now() + PIPE_GRACE;
    Ok(Output {
        status,
        stdout: stdout.collect(grace),
        stderr: stderr.collect(grace),
    })
}

/// Sends SIGKILL to the process group led by `pid`, ignoring a group that is
/// already gone.
pub(crate) fn kill_group(pid: u32) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process_group(pid, Signal::KILL);
    }
}

/// A human-readable rendering of a command line for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    format!("`{}`", words.join(" "))
}

struct Reader(mpsc::Receiver<Vec<u8>>);

impl Reader {
    /// Everything the pipe produced until EOF, or until `deadline`.
    fn collect(self, deadline: Instant) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.0.recv_timeout(left) {
                Ok(chunk) => out.extend_from_slice(&chunk),
                Err(_) => return out,
            }
        }
    }
}

fn spawn_reader<R: Read + Send + 'static>(pipe: Option<R>) -> Reader {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    Reader(rx)
}

/// Keeps error messages readable when a child printed megabytes.
const SHOWN_BYTES: usize = 8000;

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end();
    if text.len() <= SHOWN_BYTES {
        return text.to_string();
    }
    let mut start = text.len() - SHOWN_BYTES;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("[...]{}", &text[start..])
}

fn format_streams(stdout: &[u8], stderr: &[u8]) -> String {
    format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        tail(stdout),
        tail(stderr)
    )
}

/// Conveniences on a captured [`Output`].
pub trait OutputExt: Sized {
    /// stdout as (lossy) UTF-8.
    fn stdout_text(&self) -> String;
    /// stderr as (lossy) UTF-8.
    fn stderr_text(&self) -> String;
    /// The output itself when the command exited 0, else an error naming
    /// `what`, the exit status, and the tails of stdout and stderr.
    fn checked(self, what: impl Display) -> Result<Self>;
}

impl OutputExt for Output {
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    fn checked(self, what: impl Display) -> Result<Self> {
        if self.status.success() {
            return Ok(self);
        }
        bail!(
            "{what} failed ({})\n{}",
            describe_status(self.status),
            format_streams(&self.stdout, &self.stderr)
        )
    }
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// Polls `probe` every 50 ms until it returns `Ok(true)`, failing with an
/// error that names `what` once `timeout` has passed. An `Err` from the probe
/// ends the wait at once.
pub fn wait_until(
    timeout: Duration,
    what: impl Display,
    mut probe: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if probe()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Finds `program` in `PATH` (or the usual system directories, which a
/// non-login root shell may lack), like `command -v`.
pub fn find_program(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let system = [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ];
    std::env::split_paths(&path)
        .chain(system.iter().map(std::path::PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| {
            use std::os::unix::fs::PermissionsExt;
            candidate
                .metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

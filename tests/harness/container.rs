//! A real systemd, booted with `systemd-nspawn` on an overlay of the host's
//! root file system, for tests that need `systemctl`, unit restarts and
//! journald.
//!
//! # What the container sees
//!
//! The container's `/` is `overlay(lowerdir=/, upperdir=U)`: it sees the host's
//! root file system at the same paths (so the workspace, its built binaries and
//! any test directory under `/var/tmp` are there), and everything it writes
//! lands in `U`, never on the host paths. Read what it wrote through
//! [`Container::host_path`].
//!
//! Three things are *not* shared, and tests must know them:
//!
//! - `/tmp`, `/run` and `/dev` are the container's own tmpfs mounts, so a
//!   directory made with [`tempfile::tempdir`] (under `/tmp`) is invisible in
//!   the container. Use [`shared_tempdir`] (under `/var/tmp`) or bind it.
//! - The overlay is a snapshot, not a live view: overlayfs caches lookups, so a
//!   file the host creates *after* the container looked for that name, or a
//!   file the host replaces by rename, may stay invisible or stale in the
//!   container. Fill shared directories before the container reads them, or
//!   bind them ([`ContainerOptions::bind`]) for a live view.
//! - The network: `--private-network` gives the container only its own
//!   loopback, so a server on the host's 127.0.0.1 is out of reach; start it
//!   inside with [`crate::Nginx::serve_in`].
//!
//! Symlinks inside the container that point to absolute paths (`current ->
//! /opt/app/releases/...`) resolve against the *host's* root when followed
//! through a host path; use [`Container::host_path_resolved`] or
//! [`Container::read_to_string`], which resolve them inside the container.
//!
//! # Lifetime
//!
//! [`Container::boot`] returns once `systemctl is-system-running --wait` says
//! `running` or `degraded`. Dropping the value (also while a test panics)
//! powers the container off, waits for `systemd-nspawn` to exit (killing it
//! after a bound), unmounts the overlay and deletes its directory. A test
//! process killed outright leaves its container behind; the next boot in any
//! test process reaps such leftovers.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rustix::process::{geteuid, kill_process, Pid, Signal};
use tempfile::TempDir;

use crate::run::{find_program, run, wait_until, OutputExt};

/// Where container directories (overlay upper, work and mount point) and
/// [`shared_tempdir`]s live. Not `/tmp`: the container mounts its own tmpfs
/// there, and the host's `/tmp` would be invisible to it.
pub const SHARED_BASE: &str = "/var/tmp";

/// Name prefix of container directories under [`SHARED_BASE`]; the test
/// process id follows, so leftovers of dead processes can be recognised.
const DIR_PREFIX: &str = "slipway-e2e-ct-";

/// Name prefix of [`shared_tempdir`]s, followed by the test process id.
const SHARED_PREFIX: &str = "slipway-e2e-sh-";

/// Default deadline for a command run with [`Container::exec`].
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(120);

/// The `PATH` commands get inside the container (the test's own `PATH` may
/// point at a developer's toolchain directories).
const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How to boot a [`Container`]. `Default` shares the workspace read-only and
/// waits up to 90 s for the boot.
#[derive(Clone, Debug)]
pub struct ContainerOptions {
    /// Host directories bind-mounted read-write at the same path: a live view
    /// both ways (the container's writes land on the host directly). Each must
    /// exist before the boot.
    pub bind: Vec<PathBuf>,
    /// Host directories bind-mounted read-only at the same path, live.
    pub bind_ro: Vec<PathBuf>,
    /// Bind the workspace root and the cargo target directory read-only, so
    /// the source tree and the built binaries are visible and current even
    /// when they live under `/tmp` or on another file system.
    pub share_workspace: bool,
    /// Disable (inside the container only) the services and timers the
    /// host enabled for `multi-user.target` and `timers.target`, such as a
    /// system nginx or PostgreSQL: they slow the boot (PostgreSQL alone by
    /// seconds) and are not what the tests are about. They can still be
    /// started by hand.
    pub disable_host_services: bool,
    /// Deadline for `systemctl is-system-running --wait`.
    pub boot_timeout: Duration,
}

impl Default for ContainerOptions {
    fn default() -> Self {
        ContainerOptions {
            bind: Vec::new(),
            bind_ro: Vec::new(),
            share_workspace: true,
            disable_host_services: true,
            boot_timeout: Duration::from_secs(90),
        }
    }
}

impl ContainerOptions {
    /// Adds a read-write bind mount of `dir` at the same path.
    pub fn bind(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bind.push(dir.into());
        self
    }

    /// Adds a read-only bind mount of `dir` at the same path.
    pub fn bind_ro(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bind_ro.push(dir.into());
        self
    }
}

/// The state of a systemd unit, from `systemctl show`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitState {
    /// `ActiveState`: active, reloading, inactive, failed, activating, deactivating.
    pub active: String,
    /// `SubState`: running, exited, dead, auto-restart, ...
    pub sub: String,
    /// `NRestarts`: how often systemd restarted the service (`Restart=`).
    pub n_restarts: u32,
}

/// A booted systemd container; see the module documentation.
pub struct Container {
    name: String,
    /// Holds `upper/`, `work/`, `root/` and `nspawn.log`.
    dir: PathBuf,
    root: PathBuf,
    machine_id: String,
    nspawn: Option<Child>,
    init_pid: Option<i32>,
    exec_timeout: Duration,
}

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

impl Container {
    /// Why containers cannot run here, if they cannot: not root, no
    /// `systemd-nspawn`, no systemd, no `nsenter`, no overlay support.
    pub fn available() -> Result<(), String> {
        if !geteuid().is_root() {
            return Err("not running as root: systemd-nspawn and overlay mounts need root".into());
        }
        for (program, package) in [
            ("systemd-nspawn", "systemd-container"),
            ("nsenter", "util-linux"),
            ("mount", "mount"),
            ("umount", "mount"),
        ] {
            if find_program(program).is_none() {
                return Err(format!(
                    "{program} not found: apt-get install {package} (scripts/test installs it)"
                ));
            }
        }
        if !Path::new("/lib/systemd/systemd").exists()
            && !Path::new("/usr/lib/systemd/systemd").exists()
        {
            return Err(
                "systemd is not installed (no /usr/lib/systemd/systemd): apt-get install systemd"
                    .into(),
            );
        }
        let filesystems = fs::read_to_string("/proc/filesystems")
            .map_err(|e| format!("cannot read /proc/filesystems: {e}"))?;
        if !filesystems
            .lines()
            .any(|l| l.split_whitespace().last() == Some("overlay"))
        {
            // The module may simply not be loaded yet.
            let _ = Command::new("modprobe").arg("overlay").output();
            let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
            if !filesystems
                .lines()
                .any(|l| l.split_whitespace().last() == Some("overlay"))
            {
                return Err("the kernel has no overlay file system (not in /proc/filesystems, modprobe overlay failed)".into());
            }
        }
        Ok(())
    }

    /// Decides whether a container test runs: `Ok(true)` when containers are
    /// available; `Ok(false)` (after printing why) only when not running as
    /// root outside CI; an error otherwise, so that a CI run (`CI=true`) or a
    /// root run missing a tool fails instead of silently skipping.
    pub fn available_or_skip() -> Result<bool> {
        let Err(reason) = Container::available() else {
            return Ok(true);
        };
        let in_ci = std::env::var("CI").map(|v| !v.is_empty() && v != "false" && v != "0");
        if in_ci.unwrap_or(false) {
            bail!("container tests cannot run under CI: {reason}");
        }
        if !geteuid().is_root() {
            eprintln!("SKIP container test: {reason}");
            return Ok(false);
        }
        bail!("container tests cannot run: {reason} (scripts/test installs what they need)")
    }

    /// Boots a container with [`ContainerOptions::default`]. `label` names
    /// it in messages; the machine name is `label-<pid>-<n>`, unique per
    /// process and call.
    pub fn boot(label: &str) -> Result<Container> {
        Container::boot_with(label, ContainerOptions::default())
    }

    /// Boots a container with the given options.
    pub fn boot_with(label: &str, options: ContainerOptions) -> Result<Container> {
        Container::available().map_err(|reason| anyhow!("cannot boot a container: {reason}"))?;
        reap_leftovers();

        let name = machine_name(label);
        let machine_id = random_machine_id()?;
        fs::create_dir_all(SHARED_BASE).with_context(|| format!("creating {SHARED_BASE}"))?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir_in(SHARED_BASE)
            .with_context(|| format!("creating a container directory under {SHARED_BASE}"))?
            // Deleted by hand in `teardown`, only once the overlay is surely
            // unmounted: a recursive delete through a live overlay would
            // descend into the host's whole root file system.
            .keep();
        let mut container = Container {
            name,
            root: dir.join("root"),
            dir,
            machine_id,
            nspawn: None,
            init_pid: None,
            exec_timeout: DEFAULT_EXEC_TIMEOUT,
        };
        // From here on, Drop cleans up whatever part of the boot happened.
        container.start(&options)?;
        Ok(container)
    }

    fn start(&mut self, options: &ContainerOptions) -> Result<()> {
        let upper = self.dir.join("upper");
        let work = self.dir.join("work");
        for d in [&upper, &work, &self.root] {
            fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let mut mount = Command::new("mount");
        mount.args(["-t", "overlay", "overlay", "-o"]).arg(format!(
            "lowerdir=/,upperdir={},workdir={}",
            upper.display(),
            work.display()
        ));
        mount.arg(&self.root);
        run(mount, Duration::from_secs(30))?
            .checked(format!("mounting the overlay on {}", self.root.display()))?;

        // A machine id of its own: the host's would make journald refuse to
        // link journals, and tests of the rollout hash want distinct hosts.
        let machine_id_path = self.root.join("etc/machine-id");
        if machine_id_path.is_symlink() {
            fs::remove_file(&machine_id_path)
                .with_context(|| format!("removing {}", machine_id_path.display()))?;
        }
        fs::write(&machine_id_path, format!("{}\n", self.machine_id))
            .with_context(|| format!("writing {}", machine_id_path.display()))?;

        // systemd takes the hostname from /etc/hostname (the host's), not
        // from nspawn's machine name.
        let hostname_path = self.root.join("etc/hostname");
        if hostname_path.is_symlink() {
            fs::remove_file(&hostname_path)
                .with_context(|| format!("removing {}", hostname_path.display()))?;
        }
        fs::write(&hostname_path, format!("{}\n", self.name))
            .with_context(|| format!("writing {}", hostname_path.display()))?;

        if options.disable_host_services {
            self.disable_host_services()?;
        }

        let mut binds_ro = options.bind_ro.clone();
        if options.share_workspace {
            let workspace = crate::bins::workspace_root();
            let target = crate::bins::target_dir();
            if !target.starts_with(&workspace) && target.is_dir() {
                binds_ro.push(target);
            }
            binds_ro.push(workspace);
        }
        for dir in options.bind.iter().chain(&binds_ro) {
            if !dir.is_absolute() || !dir.exists() {
                bail!(
                    "cannot bind {} into container {}: it must be an existing absolute path",
                    dir.display(),
                    self.name
                );
            }
        }

        let log_path = self.log_path();
        let log = fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .context("duplicating the nspawn log handle")?;
        let mut nspawn = Command::new("systemd-nspawn");
        nspawn.arg("-D").arg(&self.root).args([
            "--register=no",
            "--keep-unit",
            "--private-network",
            "--console=passive",
            "--link-journal=no",
            "-M",
            &self.name,
        ]);
        for dir in &options.bind {
            nspawn.arg(bind_arg("--bind=", dir));
        }
        for dir in &binds_ro {
            nspawn.arg(bind_arg("--bind-ro=", dir));
        }
        nspawn
            .args(["-b", "--", "systemd.firstboot=off"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let started = Instant::now();
        let child = nspawn
            .spawn()
            .with_context(|| format!("starting systemd-nspawn for container {}", self.name))?;
        let nspawn_pid = child.id();
        self.nspawn = Some(child);
        fs::write(self.dir.join("nspawn.pid"), nspawn_pid.to_string())
            .with_context(|| format!("writing {}", self.dir.join("nspawn.pid").display()))?;

        let deadline = started + options.boot_timeout;
        let init_pid = self.wait_for_init(nspawn_pid, deadline)?;
        self.init_pid = Some(init_pid);
        self.wait_until_booted(deadline)
    }

    /// Removes, in the upper layer, the `.wants/` links by which the host's
    /// own services and timers would start at boot.
    fn disable_host_services(&self) -> Result<()> {
        for target in ["multi-user.target.wants", "timers.target.wants"] {
            let wants = self.root.join("etc/systemd/system").join(target);
            let Ok(entries) = fs::read_dir(&wants) else {
                continue;
            };
            for entry in entries {
                let link = entry
                    .with_context(|| format!("listing {}", wants.display()))?
                    .path();
                let is_unit = link
                    .extension()
                    .is_some_and(|ext| ext == "service" || ext == "timer");
                if is_unit {
                    fs::remove_file(&link).with_context(|| {
                        format!("disabling {} in the container", link.display())
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Waits for the container's init: the child of `systemd-nspawn` that
    /// lives in a PID namespace of its own.
    fn wait_for_init(&mut self, nspawn_pid: u32, deadline: Instant) -> Result<i32> {
        let own_ns = fs::read_link("/proc/self/ns/pid").context("reading /proc/self/ns/pid")?;
        loop {
            self.ensure_nspawn_alive("before its init started")?;
            for pid in children_of(nspawn_pid) {
                let ns = fs::read_link(format!("/proc/{pid}/ns/pid"));
                if ns.is_ok_and(|ns| ns != own_ns) {
                    return Ok(pid);
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "container {}: no init process appeared under systemd-nspawn (pid {nspawn_pid})\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_until_booted(&mut self, deadline: Instant) -> Result<()> {
        loop {
            self.ensure_nspawn_alive("while booting")?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "container {} did not finish booting in time\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            // Fails until systemd's private socket exists; then waits for the
            // boot job queue to drain.
            let out = self.exec_timeout(&["systemctl", "is-system-running", "--wait"], left)?;
            let state = out.stdout_text().trim().to_string();
            match state.as_str() {
                "running" => return Ok(()),
                "degraded" => {
                    let failed = self
                        .exec(&["systemctl", "--failed", "--no-legend", "--plain"])
                        .map(|o| o.stdout_text())
                        .unwrap_or_default();
                    let mut report = String::new();
                    for unit in failed.lines().filter_map(|l| l.split_whitespace().next()) {
                        report.push_str(&format!("--- journal of {unit} ---\n"));
                        report.push_str(&self.journal(unit).unwrap_or_default());
                    }
                    eprintln!(
                        "container {} booted degraded; failed units:\n{}\n{report}",
                        self.name,
                        failed.trim_end()
                    );
                    return Ok(());
                }
                "maintenance" | "stopping" => bail!(
                    "container {} booted into state {state:?}\n{}",
                    self.name,
                    self.log_tail()
                ),
                _ => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn ensure_nspawn_alive(&mut self, when: &str) -> Result<()> {
        let Some(child) = self.nspawn.as_mut() else {
            bail!("container {} is not running", self.name);
        };
        if let Some(status) = child.try_wait().context("polling systemd-nspawn")? {
            self.nspawn = None;
            bail!(
                "systemd-nspawn for container {} exited {when} ({status})\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("nspawn.log")
    }

    /// The tail of what systemd-nspawn and the container's console printed.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(60);
        format!(
            "--- systemd-nspawn output ---\n{}",
            lines[start..].join("\n")
        )
    }

    /// The machine name (also the container's hostname).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `/etc/machine-id` the container booted with (fresh per container).
    pub fn machine_id(&self) -> &str {
        &self.machine_id
    }

    /// The overlay mount point on the host: the container's `/`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The PID (in the host's namespace) of the container's systemd.
    pub fn init_pid(&self) -> Result<i32> {
        self.init_pid
            .ok_or_else(|| anyhow!("container {} is not running", self.name))
    }

    /// Changes the deadline [`exec`](Self::exec) and [`sh`](Self::sh) use.
    pub fn set_exec_timeout(&mut self, timeout: Duration) {
        self.exec_timeout = timeout;
    }

    /// A `Command` that runs `argv` inside the container (all its namespaces,
    /// its root, as root), with a clean environment: `PATH`, `HOME=/root`,
    /// `LANG=C.UTF-8`. Add environment variables with `.env()`, then run it
    /// with [`crate::run`].
    pub fn command<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<Command> {
        let pid = self.init_pid()?;
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(pid.to_string())
            .args(["-a", "-r", "-w", "--"])
            .args(argv)
            .env_clear()
            .env("PATH", CONTAINER_PATH)
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8");
        Ok(cmd)
    }

    /// Runs `argv` inside the container with the default deadline, capturing
    /// its output. A non-zero exit is not an error; see [`Self::exec_ok`].
    pub fn exec<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<Output> {
        self.exec_timeout(argv, self.exec_timeout)
    }

    /// Runs `argv` inside the container with the given deadline.
    pub fn exec_timeout<S: AsRef<OsStr>>(&self, argv: &[S], timeout: Duration) -> Result<Output> {
        let cmd = self.command(argv)?;
        run(cmd, timeout).with_context(|| format!("in container {}", self.name))
    }

    /// Runs `argv` inside the container; an error (with its output) unless
    /// it exits 0.
    pub fn exec_ok<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<Output> {
        let what = format!(
            "`{}` in container {}",
            argv.iter()
                .map(|a| a.as_ref().to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            self.name
        );
        self.exec(argv)?.checked(what)
    }

    /// Runs `script` with `/bin/sh -c` inside the container.
    pub fn sh(&self, script: &str) -> Result<Output> {
        self.exec(&["/bin/sh", "-c", script])
    }

    /// Runs `script` with `/bin/sh -c`; an error unless it exits 0.
    pub fn sh_ok(&self, script: &str) -> Result<Output> {
        self.sh(script)?
            .checked(format!("script in container {}: {script}", self.name))
    }

    /// Where the host reads or writes the container's path `path` (absolute,
    /// as seen inside). Paths on the container's root file system map to
    /// `root()/path`; paths on the container's own mounts (`/tmp`, `/run`,
    /// binds) map to `/proc/<init>/root/path` while it runs.
    ///
    /// Symlinks along the way are followed by the host, which resolves
    /// absolute targets against *its* root: use
    /// [`host_path_resolved`](Self::host_path_resolved) to follow them as the
    /// container would, and this one to look at a symlink itself.
    pub fn host_path(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        let relative = relative_to_root(path);
        if let Some(pid) = self.init_pid {
            let mounts = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
            let in_container = Path::new("/").join(&relative);
            let owner = mounts
                .lines()
                .filter_map(|line| line.split(' ').nth(4).map(unescape_mountinfo))
                .filter(|mount_point| in_container.starts_with(mount_point))
                .max_by_key(|mount_point| mount_point.components().count());
            if owner.is_some_and(|mount_point| mount_point != Path::new("/")) {
                return PathBuf::from(format!("/proc/{pid}/root")).join(relative);
            }
        }
        self.root.join(relative)
    }

    /// `path` with every symlink resolved the way the container would (absolute
    /// targets against the container's root), as a container path. Components
    /// that do not exist are kept as they are.
    pub fn resolve(&self, path: impl AsRef<Path>) -> Result<PathBuf> {
        let mut todo: Vec<OsString> = relative_to_root(path.as_ref())
            .components()
            .rev()
            .map(|c| c.as_os_str().to_os_string())
            .collect();
        let mut done = PathBuf::from("/");
        let mut hops = 0;
        while let Some(part) = todo.pop() {
            if part == ".." {
                done.pop();
                continue;
            }
            if part == "." {
                continue;
            }
            let candidate = done.join(&part);
            let host = self.host_path(&candidate);
            if host
                .symlink_metadata()
                .is_ok_and(|m| m.file_type().is_symlink())
            {
                hops += 1;
                if hops > 40 {
                    bail!(
                        "too many levels of symlinks resolving {} in container {}",
                        path.as_ref().display(),
                        self.name
                    );
                }
                let target = fs::read_link(&host)
                    .with_context(|| format!("reading symlink {}", host.display()))?;
                if target.is_absolute() {
                    done = PathBuf::from("/");
                }
                todo.extend(
                    target
                        .components()
                        .filter(|c| !matches!(c, Component::RootDir))
                        .rev()
                        .map(|c| c.as_os_str().to_os_string()),
                );
            } else {
                done = candidate;
            }
        }
        Ok(done)
    }

    /// [`host_path`](Self::host_path) of [`resolve`](Self::resolve)`(path)`.
    pub fn host_path_resolved(&self, path: impl AsRef<Path>) -> Result<PathBuf> {
        Ok(self.host_path(self.resolve(path)?))
    }

    /// Reads the container's file `path` (symlinks resolved inside).
    pub fn read_to_string(&self, path: impl AsRef<Path>) -> Result<String> {
        let host = self.host_path_resolved(&path)?;
        fs::read_to_string(&host).with_context(|| {
            format!(
                "reading {} of container {} (host path {})",
                path.as_ref().display(),
                self.name,
                host.display()
            )
        })
    }

    /// Writes `contents` to the container's `path` with permission bits
    /// `mode`, creating parent directories. The file lands in the container's
    /// upper layer (or its tmpfs), never on the host's own path.
    pub fn write_file(
        &self,
        path: impl AsRef<Path>,
        contents: impl AsRef<[u8]>,
        mode: u32,
    ) -> Result<()> {
        let path = path.as_ref();
        let parent = path.parent().unwrap_or(Path::new("/"));
        let file_name = path
            .file_name()
            .ok_or_else(|| anyhow!("{} names no file", path.display()))?;
        let host_parent = self.host_path_resolved(parent)?;
        fs::create_dir_all(&host_parent).with_context(|| {
            format!(
                "creating {} (host path {})",
                parent.display(),
                host_parent.display()
            )
        })?;
        let host = host_parent.join(file_name);
        let mut file = fs::File::create(&host).with_context(|| {
            format!("creating {} (host path {})", path.display(), host.display())
        })?;
        file.write_all(contents.as_ref())
            .with_context(|| format!("writing {}", host.display()))?;
        fs::set_permissions(&host, fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {mode:o} {}", host.display()))?;
        Ok(())
    }

    /// Runs `systemctl ARGS` inside; an error unless it exits 0.
    pub fn systemctl(&self, args: &[&str]) -> Result<Output> {
        let mut argv = vec!["systemctl"];
        argv.extend_from_slice(args);
        self.exec_ok(&argv)
    }

    /// Writes `/etc/systemd/system/<name>` and runs `systemctl daemon-reload`.
    pub fn install_unit(&self, name: &str, contents: &str) -> Result<()> {
        self.write_file(Path::new("/etc/systemd/system").join(name), contents, 0o644)?;
        self.systemctl(&["daemon-reload"])?;
        Ok(())
    }

    /// `systemctl start UNIT` (waits for the start job, as systemctl does).
    pub fn start_unit(&self, unit: &str) -> Result<()> {
        self.systemctl(&["start", unit]).map(drop)
    }

    /// `systemctl stop UNIT`.
    pub fn stop_unit(&self, unit: &str) -> Result<()> {
        self.systemctl(&["stop", unit]).map(drop)
    }

    /// `systemctl restart UNIT`.
    pub fn restart_unit(&self, unit: &str) -> Result<()> {
        self.systemctl(&["restart", unit]).map(drop)
    }

    /// `ActiveState`, `SubState` and `NRestarts` of `unit`.
    pub fn unit_state(&self, unit: &str) -> Result<UnitState> {
        let out = self.systemctl(&["show", "-p", "ActiveState,SubState,NRestarts", unit])?;
        let text = out.stdout_text();
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
                .map(str::to_string)
        };
        let missing =
            || anyhow!("`systemctl show {unit}` printed no ActiveState/SubState: {text:?}");
        Ok(UnitState {
            active: field("ActiveState").ok_or_else(missing)?,
            sub: field("SubState").ok_or_else(missing)?,
            // Older systemd and non-service units have no NRestarts.
            n_restarts: field("NRestarts").and_then(|n| n.parse().ok()).unwrap_or(0),
        })
    }

    /// Polls [`unit_state`](Self::unit_state) until `done` accepts it; the
    /// error names the last state seen and carries the unit's journal.
    pub fn wait_for_unit(
        &self,
        unit: &str,
        timeout: Duration,
        done: impl Fn(&UnitState) -> bool,
    ) -> Result<UnitState> {
        let mut last = None;
        let waited = wait_until(
            timeout,
            format!("unit {unit} in container {}", self.name),
            || {
                let state = self.unit_state(unit)?;
                let ok = done(&state);
                last = Some(state);
                Ok(ok)
            },
        );
        match (waited, last) {
            (Ok(()), Some(state)) => Ok(state),
            (Err(e), last) => Err(e.context(format!(
                "last state: {last:?}\n--- journal of {unit} ---\n{}",
                self.journal(unit).unwrap_or_default()
            ))),
            (Ok(()), None) => bail!("unit {unit}: no state read"),
        }
    }

    /// The journal of `unit` in this boot, as text.
    pub fn journal(&self, unit: &str) -> Result<String> {
        let out = self.exec(&[
            "journalctl",
            "--no-pager",
            "-b",
            "-o",
            "short-monotonic",
            "-u",
            unit,
        ])?;
        Ok(out.stdout_text())
    }

    /// What `systemctl is-system-running` says now.
    pub fn system_state(&self) -> Result<String> {
        Ok(self
            .exec(&["systemctl", "is-system-running"])?
            .stdout_text()
            .trim()
            .to_string())
    }

    /// Powers the container off and cleans up, returning how long that took;
    /// unlike Drop, reports a failed cleanup.
    pub fn shutdown(mut self) -> Result<Duration> {
        let started = Instant::now();
        self.teardown()?;
        Ok(started.elapsed())
    }

    fn teardown(&mut self) -> Result<()> {
        if let Some(mut child) = self.nspawn.take() {
            if let Some(pid) = self.init_pid {
                // --no-block: the connection dies with systemd anyway.
                let _ = self.exec_timeout(
                    &["systemctl", "poweroff", "--no-block"],
                    Duration::from_secs(15),
                );
                let deadline = Instant::now() + Duration::from_secs(30);
                while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(20));
                }
                if child.try_wait().ok().flatten().is_none() {
                    eprintln!(
                        "container {}: no poweroff within 30 s, killing it\n{}",
                        self.name,
                        self.log_tail()
                    );
                    // Killing PID 1 of a namespace kills everything in it.
                    kill(pid);
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.init_pid = None;
        unmount_and_remove(&self.dir, &self.root)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("cleaning up container {}: {e:#}", self.name);
        }
    }
}

/// A fresh directory under [`SHARED_BASE`] (`/var/tmp`), which containers see
/// through their overlay at the same path. Fill it before the container reads
/// from it, or bind it ([`ContainerOptions::bind`]) if it changes later.
pub fn shared_tempdir(label: &str) -> Result<TempDir> {
    fs::create_dir_all(SHARED_BASE).with_context(|| format!("creating {SHARED_BASE}"))?;
    tempfile::Builder::new()
        .prefix(&format!("{SHARED_PREFIX}{}-{label}-", std::process::id()))
        .tempdir_in(SHARED_BASE)
        .with_context(|| format!("creating a shared temp dir under {SHARED_BASE}"))
}

fn machine_name(label: &str) -> String {
    let clean: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(32)
        .collect();
    let clean = clean.trim_matches('-');
    let clean = if clean.is_empty() { "slipway" } else { clean };
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    format!("{clean}-{}-{n}", std::process::id())
}

fn random_machine_id() -> Result<String> {
    let uuid = fs::read_to_string("/proc/sys/kernel/random/uuid")
        .context("reading /proc/sys/kernel/random/uuid")?;
    Ok(uuid.trim().replace('-', ""))
}

fn bind_arg(flag: &str, dir: &Path) -> OsString {
    let mut arg = OsString::from(flag);
    arg.push(dir.as_os_str());
    arg
}

fn relative_to_root(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::RootDir | Component::Prefix(_)))
        .collect()
}

/// Mount points in mountinfo escape space, tab, newline and backslash as octal.
fn unescape_mountinfo(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(OsString::from_vec(out))
}

/// Whether `path` is a mount point in this process's mount namespace.
pub fn is_mount_point(path: &Path) -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|mount_point| unescape_mountinfo(mount_point) == path)
}

fn unmount_and_remove(dir: &Path, root: &Path) -> Result<()> {
    for attempt in 0..20 {
        if !is_mount_point(root) {
            break;
        }
        let mut umount = Command::new("umount");
        // Lazy as a last resort: a busy overlay is detached once released.
        if attempt == 19 {
            umount.arg("-l");
        }
        umount.arg(root);
        let _ = run(umount, Duration::from_secs(30));
        if is_mount_point(root) {
            thread::sleep(Duration::from_millis(100));
        }
    }
    if has_mount_below(dir) {
        bail!(
            "{} is still mounted; left {} in place (unmount it, then delete it)",
            root.display(),
            dir.display()
        );
    }
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("deleting {}", dir.display()))?;
    }
    Ok(())
}

fn kill(pid: i32) {
    if let Some(pid) = Pid::from_raw(pid) {
        let _ = kill_process(pid, Signal::KILL);
    }
}

/// PIDs whose parent is `parent`, from `/proc/*/stat`.
fn children_of(parent: u32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| parent_of(*pid) == Some(parent))
        .collect()
}

fn parent_of(pid: i32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

/// Stops and deletes containers, and deletes shared temp dirs, left behind
/// by test processes that died without running their destructors. Best
/// effort: a failure here must not fail the boot that triggered it.
fn reap_leftovers() {
    let Ok(entries) = fs::read_dir(SHARED_BASE) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let (is_container, rest) = match (
            name.strip_prefix(DIR_PREFIX),
            name.strip_prefix(SHARED_PREFIX),
        ) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            (None, None) => continue,
        };
        let Some(owner) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let dir = entry.path();
        let result = if is_container {
            reap_container(&dir)
        } else if has_mount_below(&dir) {
            Ok(())
        } else {
            fs::remove_dir_all(&dir).with_context(|| format!("deleting {}", dir.display()))
        };
        if let Err(e) = result {
            eprintln!("reaping a leftover of a dead test process: {e:#}");
        }
    }
}

fn reap_container(dir: &Path) -> Result<()> {
    let root = dir.join("root");
    if let Some(nspawn) = fs::read_to_string(dir.join("nspawn.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
    {
        let cmdline = fs::read(format!("/proc/{nspawn}/cmdline")).unwrap_or_default();
        let root_bytes = root.as_os_str().as_encoded_bytes();
        if cmdline
            .windows(root_bytes.len().max(1))
            .any(|w| w == root_bytes)
        {
            for child in children_of(nspawn) {
                kill(child);
            }
            if let Ok(pid) = i32::try_from(nspawn) {
                kill(pid);
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
    unmount_and_remove(dir, &root)
}

/// Whether anything is mounted at or below `dir` in this mount namespace.
fn has_mount_below(dir: &Path) -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|mount_point| unescape_mountinfo(mount_point).starts_with(dir))
}

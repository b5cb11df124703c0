//! A real nginx serving a directory as static files on 127.0.0.1, the way a
//! release repository is served in production (ETag, Range, sendfile).
//!
//! Each instance has its own prefix (config, pid file, logs, temp dirs) and a
//! free port, so tests can run many at once. It runs in the foreground
//! (`daemon off;`) as a child of the test and dies with the value.
//!
//! [`Nginx::serve`] runs it on the host. A container has a network of its own
//! (only its own loopback), so a server for a container must run inside it:
//! [`Nginx::serve_in`]; its [`base_url`](Nginx::base_url) is then reachable
//! only from inside that container.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rustix::process::{geteuid, kill_process_group, Pid, Signal};
use tempfile::TempDir;

use crate::container::Container;
use crate::run::kill_group;

/// Deadline for nginx to come up.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How the served location behaves beyond plain static files.
#[derive(Clone, Debug, Default)]
pub struct NginxOptions {
    /// `limit_rate` for the location (bytes per second per connection, with
    /// nginx's suffixes: `"64k"`, `"1m"`), to slow a download so a test can
    /// cut it off part way.
    pub limit_rate: Option<String>,
    /// `limit_rate_after`: bytes sent at full speed before the limit applies.
    pub limit_rate_after: Option<String>,
    /// A fixed port instead of a free one (to restart a server on the same
    /// URL).
    pub port: Option<u16>,
    /// Raw directives added inside `server { }`, e.g.
    /// `location = /health { return 200 "ok"; }`.
    pub extra_server_config: Option<String>,
}

/// One parsed line of the access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogEntry {
    /// `GET`, `HEAD`...
    pub method: String,
    /// The request URI as sent (path and query).
    pub uri: String,
    /// The response status.
    pub status: u16,
    /// Body bytes sent (`$body_bytes_sent`; for a cut connection, what went out).
    pub body_bytes: u64,
    /// The `Range` request header, if any.
    pub range: Option<String>,
    /// The `If-None-Match` request header, if any.
    pub if_none_match: Option<String>,
    /// The `Authorization` request header, if any (to check a token was sent).
    pub authorization: Option<String>,
}

/// A running nginx; see the module documentation.
pub struct Nginx {
    child: Option<Child>,
    port: u16,
    /// The prefix as the nginx process sees it (a container path for
    /// [`Nginx::serve_in`]).
    prefix: PathBuf,
    /// Where the host reads the prefix.
    host_prefix: PathBuf,
    /// Holds the console log, and the prefix itself for a host nginx.
    scratch: TempDir,
    /// Whether the instance runs inside a container.
    in_container: bool,
}

impl Nginx {
    /// Serves `dir` on the host's 127.0.0.1 with default options.
    pub fn serve(dir: impl AsRef<Path>) -> Result<Nginx> {
        Nginx::serve_with(dir, NginxOptions::default())
    }

    /// Serves `dir` on the host's 127.0.0.1.
    pub fn serve_with(dir: impl AsRef<Path>, options: NginxOptions) -> Result<Nginx> {
        let scratch = tempfile::Builder::new()
            .prefix("slipway-e2e-nginx-")
            .tempdir()
            .context("creating a prefix directory for nginx")?;
        let prefix = scratch.path().join("prefix");
        let launch = Launch {
            dir: dir.as_ref(),
            options: &options,
            prefix: &prefix,
            host_prefix: &prefix,
            console: &scratch.path().join("console.log"),
            as_root: geteuid().is_root(),
            container: None,
        };
        let (child, port) = launch.start_on_free_port()?;
        Ok(Nginx {
            child: Some(child),
            port,
            host_prefix: prefix.clone(),
            prefix,
            scratch,
            in_container: false,
        })
    }

    /// Serves the container path `dir` inside `container`, on the container's
    /// own 127.0.0.1. Stop it (drop it) before the container goes away.
    pub fn serve_in(
        container: &Container,
        dir: impl AsRef<Path>,
        options: NginxOptions,
    ) -> Result<Nginx> {
        let scratch = tempfile::Builder::new()
            .prefix("slipway-e2e-nginx-")
            .tempdir()
            .context("creating a scratch directory for nginx")?;
        let unique = scratch
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "slipway-e2e-nginx".into());
        // On the container's root file system, so the host can read the logs
        // through the overlay even after nginx stopped.
        let prefix = PathBuf::from("/var/lib/slipway-e2e").join(unique);
        let host_prefix = container.host_path(&prefix);
        let launch = Launch {
            dir: dir.as_ref(),
            options: &options,
            prefix: &prefix,
            host_prefix: &host_prefix,
            console: &scratch.path().join("console.log"),
            as_root: true,
            container: Some(container),
        };
        let (child, port) = launch.start_on_free_port()?;
        Ok(Nginx {
            child: Some(child),
            port,
            prefix,
            host_prefix,
            scratch,
            in_container: true,
        })
    }

    /// The port nginx listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `base_url()` joined with `path` (with or without a leading slash).
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base_url(), path.trim_start_matches('/'))
    }

    /// The prefix directory as nginx sees it.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// The raw access log: one line per finished request, tab-separated
    /// fields as parsed by [`access_log_entries`](Self::access_log_entries).
    pub fn access_log(&self) -> Result<String> {
        let path = self.host_prefix.join("logs/access.log");
        fs::read_to_string(&path)
            .with_context(|| format!("reading nginx access log {}", path.display()))
    }

    /// The access log, parsed.
    pub fn access_log_entries(&self) -> Result<Vec<AccessLogEntry>> {
        self.access_log()?
            .lines()
            .filter(|l| !l.is_empty())
            .map(parse_log_line)
            .collect()
    }

    /// nginx's error log (startup problems, denied files).
    pub fn error_log(&self) -> String {
        let mut text =
            fs::read_to_string(self.host_prefix.join("logs/error.log")).unwrap_or_default();
        text.push_str(
            &fs::read_to_string(self.scratch.path().join("console.log")).unwrap_or_default(),
        );
        text
    }

    /// Whether this instance runs inside a container.
    pub fn in_container(&self) -> bool {
        self.in_container
    }

    /// Stops nginx now (it is also stopped on drop). Connections in flight
    /// are cut.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = i32::try_from(child.id()).ok().and_then(Pid::from_raw) {
                let _ = kill_process_group(pid, Signal::TERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            kill_group(child.id());
            let _ = child.wait();
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Launch<'a> {
    dir: &'a Path,
    options: &'a NginxOptions,
    prefix: &'a Path,
    host_prefix: &'a Path,
    console: &'a Path,
    as_root: bool,
    container: Option<&'a Container>,
}

impl Launch<'_> {
    /// Starts nginx, retrying with another port when a free port picked by
    /// us was taken by someone else before nginx bound it.
    fn start_on_free_port(&self) -> Result<(Child, u16)> {
        let attempts = if self.options.port.is_some() { 1 } else { 5 };
        let mut last_error = None;
        for _ in 0..attempts {
            let port = match self.options.port {
                Some(port) => port,
                None => free_port()?,
            };
            match self.start(port) {
                Ok(child) => return Ok((child, port)),
                Err(e) if format!("{e:#}").contains("Address already in use") => {
                    last_error = Some(e)
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("nginx did not start")))
    }

    fn start(&self, port: u16) -> Result<Child> {
        for sub in ["conf", "logs", "tmp"] {
            let path = self.host_prefix.join(sub);
            fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        }
        let conf_path = self.prefix.join("conf/nginx.conf");
        let host_conf = self.host_prefix.join("conf/nginx.conf");
        fs::write(&host_conf, self.config(port))
            .with_context(|| format!("writing {}", host_conf.display()))?;
        let host_pid = self.host_prefix.join("nginx.pid");
        let _ = fs::remove_file(&host_pid);
        let _ = fs::remove_file(self.host_prefix.join("logs/error.log"));

        let argv: Vec<String> = vec![
            "nginx".into(),
            "-p".into(),
            self.prefix.display().to_string(),
            "-c".into(),
            conf_path.display().to_string(),
            "-e".into(),
            self.prefix.join("logs/error.log").display().to_string(),
            "-g".into(),
            "daemon off;".into(),
        ];
        let mut cmd = match self.container {
            Some(container) => container.command(&argv)?,
            None => {
                let mut cmd = Command::new(&argv[0]);
                cmd.args(&argv[1..]);
                cmd
            }
        };
        let console = fs::File::create(self.console)
            .with_context(|| format!("creating {}", self.console.display()))?;
        let console_err = console
            .try_clone()
            .context("duplicating the nginx console handle")?;
        cmd.stdin(Stdio::null())
            .stdout(console)
            .stderr(console_err)
            .process_group(0);
        let mut child = cmd
            .spawn()
            .context("starting nginx (apt-get install nginx-light; scripts/test installs it)")?;

        // nginx writes its pid file after it bound the listening sockets.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().context("polling nginx")? {
                bail!(
                    "nginx serving {} on port {port} exited at startup ({status})\n{}",
                    self.dir.display(),
                    self.logs()
                );
            }
            if fs::read_to_string(&host_pid).is_ok_and(|p| !p.trim().is_empty()) {
                break;
            }
            if Instant::now() >= deadline {
                kill_group(child.id());
                let _ = child.wait();
                bail!(
                    "nginx did not come up within {START_TIMEOUT:?}\n{}",
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        if self.container.is_none() {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let connected = (0..100).any(|_| {
                TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() || {
                    thread::sleep(Duration::from_millis(50));
                    false
                }
            });
            if !connected {
                kill_group(child.id());
                let _ = child.wait();
                bail!(
                    "nginx wrote its pid file but 127.0.0.1:{port} accepts no connection\n{}",
                    self.logs()
                );
            }
        }
        Ok(child)
    }

    fn logs(&self) -> String {
        format!(
            "--- nginx error log ---\n{}\n--- nginx console ---\n{}",
            fs::read_to_string(self.host_prefix.join("logs/error.log")).unwrap_or_default(),
            fs::read_to_string(self.console).unwrap_or_default()
        )
    }

    fn config(&self, port: u16) -> String {
        let prefix = self.prefix.display();
        // As root, workers would otherwise drop to `nobody`, who cannot read
        // a test's 0700 temp directories.
        let user = if self.as_root { "user root root;" } else { "" };
        let limit_rate = self
            .options
            .limit_rate
            .as_deref()
            .map(|r| format!("limit_rate {r};"))
            .unwrap_or_default();
        let limit_rate_after = self
            .options
            .limit_rate_after
            .as_deref()
            .map(|r| format!("limit_rate_after {r};"))
            .unwrap_or_default();
        let extra = self
            .options
            .extra_server_config
            .as_deref()
            .unwrap_or_default();
        let root = self.dir.display();
        format!(
            r#"# Written by the slipway e2e harness.
{user}
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log info;
events {{
    worker_connections 256;
}}
http {{
    default_type application/octet-stream;
    types {{
        text/plain txt;
        text/html html;
        application/json json;
    }}
    log_format slipway '$request_method\t$request_uri\t$status\t$body_bytes_sent\t$http_range\t$http_if_none_match\t$http_authorization';
    access_log {prefix}/logs/access.log slipway;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    sendfile on;
    etag on;
    keepalive_timeout 10;
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        root {root};
        location / {{
            {limit_rate}
            {limit_rate_after}
        }}
        {extra}
    }}
}}
"#
        )
    }
}

/// A port that was free on the host's 127.0.0.1 a moment ago.
fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0 to find a free port")?;
    Ok(listener
        .local_addr()
        .context("reading the bound address")?
        .port())
}

fn parse_log_line(line: &str) -> Result<AccessLogEntry> {
    let fields: Vec<&str> = line.split('\t').collect();
    let bad = || anyhow!("unexpected nginx access log line: {line:?}");
    if fields.len() != 7 {
        return Err(bad());
    }
    let optional = |v: &str| (v != "-").then(|| unescape_log(v));
    Ok(AccessLogEntry {
        method: unescape_log(fields[0]),
        uri: unescape_log(fields[1]),
        status: fields[2].parse().map_err(|_| bad())?,
        body_bytes: fields[3].parse().map_err(|_| bad())?,
        range: optional(fields[4]),
        if_none_match: optional(fields[5]),
        authorization: optional(fields[6]),
    })
}

/// nginx writes `"`, `\\` and bytes outside printable ASCII in logged
/// variables as `\xHH`.
fn unescape_log(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 2..i + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], bytes.get(i + 1), hex) {
            (b'\\', Some(b'x'), Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

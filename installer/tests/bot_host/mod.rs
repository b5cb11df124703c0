//! A host for the installer's end-to-end tests: a temporary directory with
//! a signing key, a release repository, an install root, a persistence
//! directory and a configuration that drives the real example bot
//! (`examples/bot`) through `examples/host/bot-ctl` (`manager = "command"`)
//! on a free loopback port.
//!
//! Releases are built from a copy of `examples/bot` with the real
//! `slipway-pack` binary (built next to `slipway` when missing), so the
//! tests exercise the formats exactly as CI produces them.
//!
//! Dropping a [`TestHost`] stops the bot it started.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("installer/ has a parent")
        .to_path_buf()
}

/// The `slipway` binary under test.
pub fn slipway_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_slipway"))
}

/// The `slipway-pack` binary beside `slipway`, built on first use when
/// missing (same profile).
pub fn pack_bin() -> PathBuf {
    static PACK: OnceLock<PathBuf> = OnceLock::new();
    PACK.get_or_init(|| {
        let dir = slipway_bin()
            .parent()
            .expect("the binary has a directory")
            .to_path_buf();
        let pack = dir.join("slipway-pack");
        if !pack.is_file() {
            let mut cmd = Command::new(env!("CARGO"));
            cmd.current_dir(workspace())
                .args(["build", "-p", "slipway-pack"]);
            if dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let out = cmd.output().expect("run cargo build -p slipway-pack");
            assert!(
                out.status.success(),
                "cargo build -p slipway-pack failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(pack.is_file(), "{} was not built", pack.display());
        pack
    })
    .clone()
}

/// `examples/host/bot-ctl`.
pub fn bot_ctl() -> PathBuf {
    workspace().join("examples/host/bot-ctl")
}

/// A free loopback TCP port (bound then released).
pub fn free_port() -> u16 {
    // Below the kernel's ephemeral range (32768 and up): a port the kernel
    // hands out for bind(0) or for an outgoing connection (slipway's own
    // downloads) could be taken again before the bot binds it. Tests of one
    // binary take turns through a counter; each binary starts elsewhere.
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN)
}

/// How to build a release of the example bot.
#[derive(Debug, Clone, Default)]
pub struct Flavor {
    /// Data schema version (default 1).
    pub schema: Option<u32>,
    /// `settings.json` `fail_health`.
    pub fail_health: bool,
    /// `settings.json` `crash_on_start`.
    pub crash_on_start: bool,
    /// The release's own check hook fails.
    pub failing_check: bool,
    /// The migrate hook migrates, then sleeps for this many seconds (so a
    /// test can kill slipway in the middle of the Migrate step).
    pub slow_migrate: Option<u32>,
    /// The migrate hook sleeps for this many seconds, then migrates (so an
    /// orphaned hook of a killed run would write late).
    pub late_migrate: Option<u32>,
    /// A shell script run by the migrate hook before it migrates.
    pub before_migrate: Option<String>,
    /// `[schema] min_compatible` (default 1).
    pub min_compatible: Option<u32>,
    /// The release's migrate hook, as a TOML array replacing the default
    /// one (the kill campaign's slow hooks); not together with
    /// `slow_migrate` or `late_migrate`.
    pub migrate_hook: Option<String>,
    /// `[health] probation = true`: the release asks to start paused until
    /// its health gate passes.
    pub probation: bool,
    /// Incompressible bytes added as `app/bot/vendor.bin`, the same bytes
    /// in every version (a vendored dependency that does not change).
    pub vendored: Option<usize>,
    /// `app/bot/model.bin`: this many pseudo-random bytes (others than
    /// `vendored`'s, the same in every version), then this text (a version
    /// may append a line).
    pub model: Option<(usize, String)>,
    /// `app/lib/dNN/`: this many directories of this many small files,
    /// the same in every version; every directory also holds `same.txt`
    /// with one content for all (duplicate contents across directories).
    pub tree: Option<(usize, usize)>,
}

/// A built release.
#[derive(Debug, Clone)]
pub struct Release {
    pub version: String,
    pub id: String,
    pub archive: PathBuf,
}

impl Release {
    /// The first 12 hex digits of the id.
    pub fn id12(&self) -> String {
        self.id.trim_start_matches("sha256:")[..12].to_string()
    }

    /// The directory name under `releases/`.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.version, self.id12())
    }
}

/// One test's host.
pub struct TestHost {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// Extra TOML appended to the configuration (later keys win per table,
    /// so tests add whole tables or override through `SLIPWAY_*`).
    pub config_path: PathBuf,
    pub env: Vec<(String, String)>,
    /// Where `root/` and `data/` live: the temporary directory itself, or
    /// a directory under it that a test mounts a file system on.
    files: PathBuf,
}

impl TestHost {
    /// A host with the default configuration plus `extra` (TOML lines put
    /// into the sections named by `sections`: a map from section to lines).
    pub fn new(extra: &[(&str, &str)]) -> TestHost {
        TestHost::with_files_in("", extra)
    }

    /// A host as [`TestHost::new`] that has taken `1.0.0` of `flavor`
    /// with `slipway update` from its repository and runs it, healthy.
    pub fn running_v1(extra: &[(&str, &str)], flavor: &Flavor) -> (TestHost, Release) {
        let host = TestHost::new(extra);
        let v1 = host.release("1.0.0", flavor);
        host.run_expect(&["update"], 0);
        host.wait_healthy("1.0.0");
        (host, v1)
    }

    /// A host whose install root and persistence are `<subdir>/root` and
    /// `<subdir>/data` inside the temporary directory (created empty, so a
    /// test can mount a file system on it before the first install); the
    /// keys, the repository and the configuration stay outside it.
    pub fn with_files_in(subdir: &str, extra: &[(&str, &str)]) -> TestHost {
        let dir = tempfile::Builder::new()
            .prefix("slipway-cli-")
            .tempdir()
            .expect("tempdir");
        let files = if subdir.is_empty() {
            dir.path().to_path_buf()
        } else {
            dir.path().join(subdir)
        };
        fs::create_dir_all(&files).expect("create the files directory");
        let port = free_port();
        let host = TestHost {
            config_path: dir.path().join("update.toml"),
            dir,
            port,
            env: Vec::new(),
            files,
        };
        let keys = host.path("keys");
        run_ok(Command::new(pack_bin()).args([
            "keygen",
            "--out-dir",
            &keys.to_string_lossy(),
            "--unencrypted",
        ]));
        host.write_config(extra);
        host
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn root(&self) -> PathBuf {
        self.files.join("root")
    }

    pub fn data(&self) -> PathBuf {
        self.files.join("data")
    }

    pub fn repo(&self) -> PathBuf {
        self.path("repo")
    }

    fn bot_env(&self) -> String {
        format!(
            "\"env\", \"ROOT={}\", \"PERSIST={}\", \"PORT={}\", \"STOP_TIMEOUT=10\", \"{}\"",
            self.root().display(),
            self.data().display(),
            self.port,
            bot_ctl().display()
        )
    }

    /// (Re)writes the configuration with `extra` lines added to sections.
    pub fn write_config(&self, extra: &[(&str, &str)]) {
        let mut sections: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        let base = format!("http://127.0.0.1:{}", self.port);
        sections.entry("update").or_default().extend([
            "channel = \"stable\"".to_string(),
            format!("source = \"{}\"", self.repo().display()),
            format!(
                "public_keys = [\"{}\"]",
                self.path("keys/slipway.pub").display()
            ),
            "max_attempts_per_day = 50".to_string(),
            "max_failures_per_day = 20".to_string(),
            "keep_releases = 3".to_string(),
            "keep_snapshots = 5".to_string(),
        ]);
        sections.entry("paths").or_default().extend([
            format!("root = \"{}\"", self.root().display()),
            format!("persistence = \"{}\"", self.data().display()),
            "max_save_age_minutes = 0".to_string(),
        ]);
        sections.entry("service").or_default().extend([
            "manager = \"command\"".to_string(),
            format!("restart = [{}, \"restart\"]", self.bot_env()),
            format!("status = [{}, \"status\"]", self.bot_env()),
            format!("health_url = \"{base}/health\""),
            "health_timeout_seconds = 5".to_string(),
            "healthy_polls = 2".to_string(),
            "health_interval_ms = 200".to_string(),
            "health_expect_version = true".to_string(),
            format!("quiesce_url = \"{base}/admin/quiesce\""),
            format!("save_url = \"{base}/admin/save\""),
            "quiesce_timeout_seconds = 10".to_string(),
            "save_timeout_seconds = 10".to_string(),
        ]);
        sections
            .entry("hooks")
            .or_default()
            .push("timeout_seconds = 60".to_string());
        sections
            .entry("report")
            .or_default()
            .push("journald = false".to_string());
        for (section, line) in extra {
            let lines = sections.entry(section).or_default();
            // A later line for the same key replaces the default.
            if let Some(key) = line.split('=').next().map(str::trim) {
                lines.retain(|l| l.split('=').next().map(str::trim) != Some(key));
            }
            lines.push(line.to_string());
        }
        let mut text = String::new();
        for (section, lines) in sections {
            text.push_str(&format!("[{section}]\n"));
            for l in lines {
                text.push_str(&l);
                text.push('\n');
            }
            text.push('\n');
        }
        fs::write(&self.config_path, text).expect("write config");
    }

    /// Builds a release of the example bot into the repository (not
    /// published).
    pub fn build(&self, version: &str, flavor: &Flavor) -> Release {
        let src = self.path(&format!("src-{version}"));
        let _ = fs::remove_dir_all(&src);
        copy_tree(&workspace().join("examples/bot"), &src);
        let schema = flavor.schema.unwrap_or(1);
        fs::write(src.join("schema/VERSION"), format!("{schema}\n")).expect("schema");
        let toml = fs::read_to_string(src.join("slipway.toml")).expect("slipway.toml");
        let mut toml = toml.replace("version = 1\n", &format!("version = {schema}\n"));
        if let Some(min) = flavor.min_compatible {
            toml = toml.replace("min_compatible = 1\n", &format!("min_compatible = {min}\n"));
            assert!(
                toml.contains(&format!("min_compatible = {min}")),
                "slipway.toml changed shape"
            );
        }
        if flavor.failing_check {
            toml = toml.replace(
                "check = [\"python3\", \"-m\", \"compileall\", \"-q\", \"app\"]",
                "check = [\"python3\", \"-c\", \"import sys; print('check: the release is broken', file=sys.stderr); sys.exit(1)\"]",
            );
            assert!(
                toml.contains("the release is broken"),
                "slipway.toml changed shape"
            );
        }
        if let Some(secs) = flavor.slow_migrate {
            toml = toml.replace(
                "migrate = [\"python3\", \"app/bot/migrate.py\"]",
                &format!(
                    "migrate = [\"sh\", \"-c\", \"python3 app/bot/migrate.py && sleep {secs}\"]"
                ),
            );
            assert!(toml.contains("sleep"), "slipway.toml changed shape");
        }
        if let Some(secs) = flavor.late_migrate {
            toml = toml.replace(
                "migrate = [\"python3\", \"app/bot/migrate.py\"]",
                &format!(
                    "migrate = [\"sh\", \"-c\", \"sleep {secs} && python3 app/bot/migrate.py\"]"
                ),
            );
            assert!(toml.contains("sleep"), "slipway.toml changed shape");
        }
        if let Some(script) = &flavor.before_migrate {
            let script = format!("{script}; exec python3 app/bot/migrate.py");
            toml = toml.replace(
                "migrate = [\"python3\", \"app/bot/migrate.py\"]",
                &format!(
                    "migrate = [\"sh\", \"-c\", {}]",
                    toml::Value::String(script)
                ),
            );
            assert!(toml.contains("exec python3"), "slipway.toml changed shape");
        }
        if let Some(hook) = &flavor.migrate_hook {
            let default = "migrate = [\"python3\", \"app/bot/migrate.py\"]";
            assert!(toml.contains(default), "slipway.toml changed shape");
            toml = toml.replace(default, &format!("migrate = {hook}"));
        }
        if flavor.probation {
            toml.push_str("\n[health]\nprobation = true\n");
        }
        fs::write(src.join("slipway.toml"), toml).expect("slipway.toml");
        if let Some(len) = flavor.vendored {
            let bytes = pseudo_random(len, 0x9e37_79b9_7f4a_7c15);
            fs::write(src.join("app/bot/vendor.bin"), bytes).expect("vendored bytes");
        }
        if let Some((len, tail)) = &flavor.model {
            let mut bytes = pseudo_random(*len, 0x2545_f491_4f6c_dd1d);
            bytes.extend_from_slice(tail.as_bytes());
            fs::write(src.join("app/bot/model.bin"), bytes).expect("model bytes");
        }
        if let Some((dirs, files)) = flavor.tree {
            for d in 0..dirs {
                let dir = src.join(format!("app/lib/d{d:02}"));
                fs::create_dir_all(&dir).expect("tree directory");
                fs::write(dir.join("same.txt"), "one content in every directory\n")
                    .expect("tree file");
                for f in 0..files {
                    fs::write(
                        dir.join(format!("f{f:02}.py")),
                        format!("X = {d} * 1000 + {f}\n"),
                    )
                    .expect("tree file");
                }
            }
        }
        fs::write(
            src.join("app/bot/settings.json"),
            format!(
                "{{\"fail_health\": {}, \"crash_on_start\": {}}}\n",
                flavor.fail_health, flavor.crash_on_start
            ),
        )
        .expect("settings");
        let out = run_ok(Command::new(pack_bin()).args([
            "build",
            &src.to_string_lossy(),
            "--version",
            version,
            "--key",
            &self.path("keys/slipway.key").to_string_lossy(),
            "--out",
            &self.repo().to_string_lossy(),
            "--json",
        ]));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("build --json");
        let id = v["id"].as_str().expect("id").to_string();
        Release {
            version: version.to_string(),
            archive: self
                .repo()
                .join("releases")
                .join(format!("{}.tar.zst", id.trim_start_matches("sha256:"))),
            id,
        }
    }

    /// Publishes a built release to the `stable` channel.
    pub fn publish(&self, release: &Release) {
        self.publish_with(release, &[]);
    }

    /// Publishes a built release to the `stable` channel with more
    /// `slipway-pack publish` flags (`--deltas 0`).
    pub fn publish_with(&self, release: &Release, extra: &[&str]) {
        let repo = self.repo().to_string_lossy().into_owned();
        let key = self.path("keys/slipway.key").to_string_lossy().into_owned();
        let mut args = vec![
            "publish",
            "--repo",
            &repo,
            "--channel",
            "stable",
            "--key",
            &key,
        ];
        args.extend_from_slice(extra);
        args.push(&release.id);
        run_ok(Command::new(pack_bin()).args(args));
    }

    /// Builds and publishes.
    pub fn release(&self, version: &str, flavor: &Flavor) -> Release {
        let r = self.build(version, flavor);
        self.publish(&r);
        r
    }

    /// A `slipway --config <ours> ARGS` command.
    pub fn slipway(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(slipway_bin());
        cmd.arg("--config").arg(&self.config_path).args(args);
        cmd.env_remove("SLIPWAY_CONFIG")
            .env_remove("BOT_AUTO_UPDATE")
            .env_remove("SLIPWAY_FAULT_AFTER")
            .env_remove("SLIPWAY_FAULT_AT")
            .env_remove("SLIPWAY_FAULT_REFUSE");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs slipway (through `assert_cmd`, with a deadline) and returns its
    /// output.
    pub fn run(&self, args: &[&str]) -> Output {
        assert_cmd::Command::from_std(self.slipway(args))
            .timeout(Duration::from_secs(180))
            .output()
            .unwrap_or_else(|e| panic!("slipway {args:?}: {e}"))
    }

    /// Runs slipway and asserts its exit code, printing its output on
    /// failure.
    pub fn run_expect(&self, args: &[&str], code: i32) -> Output {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "slipway {args:?} exited {:?}, expected {code}\n--- stdout\n{}\n--- stderr\n{}\n--- bot log (tail)\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.bot_log_tail(20)
        );
        out
    }

    /// `slipway ARGS --json`, parsed.
    pub fn json(&self, args: &[&str], code: i32) -> serde_json::Value {
        let mut all: Vec<&str> = args.to_vec();
        all.push("--json");
        let out = self.run_expect(&all, code);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "slipway {all:?} printed no JSON ({e}):\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// What `current` (or `previous`) points at, as a release dir name.
    pub fn link(&self, name: &str) -> Option<String> {
        fs::read_link(self.root().join(name))
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
    }

    /// `GET /health` of the bot: (status code, JSON body).
    pub fn health(&self) -> Option<(u16, serde_json::Value)> {
        http(self.port, "GET", "/health")
    }

    /// Waits for a 200 from `/health` reporting `version`.
    pub fn wait_healthy(&self, version: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some((200, body)) = self.health() {
                if body["version"] == version {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the bot did not become healthy with version {version}; last: {:?}\n{}",
                self.health(),
                self.bot_log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The bot's pid from bot-ctl's pid file.
    pub fn bot_pid(&self) -> Option<u32> {
        fs::read_to_string(self.root().join("run/bot.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// The bot's log.
    pub fn bot_log(&self) -> String {
        fs::read_to_string(self.root().join("run/bot.log")).unwrap_or_default()
    }

    pub fn bot_log_tail(&self, n: usize) -> String {
        let log = self.bot_log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `<persistence>/state.json` as JSON.
    pub fn state_json(&self) -> serde_json::Value {
        let text = fs::read_to_string(self.data().join("state.json")).expect("state.json");
        serde_json::from_str(&text).expect("state.json is JSON")
    }

    /// The data's schema version.
    pub fn data_schema(&self) -> u32 {
        fs::read_to_string(self.data().join("schema_version"))
            .expect("schema_version")
            .trim()
            .parse()
            .expect("integer")
    }

    /// Stops the bot (bot-ctl stop).
    pub fn stop_bot(&self) {
        let _ = Command::new(bot_ctl())
            .env("ROOT", self.root())
            .env("PERSIST", self.data())
            .env("PORT", self.port.to_string())
            .arg("stop")
            .output();
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.stop_bot();
        // A bot-ctl that lost its pid file must not leave a bot behind.
        if let Some(pid) = self.bot_pid() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).output();
        }
    }
}

/// A minimal HTTP/1.0 client for the bot (no proxies, no dependencies).
pub fn http(port: u16, method: &str, path: &str) -> Option<(u16, serde_json::Value)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or("");
    Some((
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    ))
}

/// Copies a directory tree (regular files and directories).
pub fn copy_tree(from: &Path, to: &Path) {
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry.expect("walk");
        let rel = entry.path().strip_prefix(from).expect("prefix");
        if rel.components().any(|c| c.as_os_str() == "__pycache__") {
            continue;
        }
        let dest = to.join(rel);
        if entry.file_type().is_dir() {
            fs::create_dir_all(&dest).expect("mkdir");
        } else if entry.file_type().is_file() {
            fs::copy(entry.path(), &dest).expect("copy");
        }
    }
}

/// A digest of a directory tree: sorted relative paths with the SHA-256
/// of each file's content, without the top-level `meta/` (slipway's output
/// in the persistence directory) and the bot's `paused` marker.
pub fn tree_digest(dir: &Path) -> String {
    let mut entries = Vec::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.expect("walk");
        let rel = entry
            .path()
            .strip_prefix(dir)
            .expect("prefix")
            .to_string_lossy()
            .into_owned();
        if rel.is_empty() || rel == "meta" || rel.starts_with("meta/") || rel == "paused" {
            continue;
        }
        if entry.file_type().is_file() {
            let bytes = fs::read(entry.path()).expect("read");
            entries.push(format!("{rel} {}", hex::encode(Sha256::digest(&bytes))));
        } else {
            entries.push(format!("{rel}/"));
        }
    }
    hex::encode(Sha256::digest(entries.join("\n").as_bytes()))
}

/// Every path under `dir` with the content hash of files and the target of
/// symlinks, skipping the top-level entries named in `skip`.
pub fn snapshot_tree(dir: &Path, skip: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.expect("walk");
        let rel = entry
            .path()
            .strip_prefix(dir)
            .expect("prefix")
            .to_string_lossy()
            .into_owned();
        let top = rel.split('/').next().unwrap_or_default();
        if rel.is_empty() || skip.contains(&top) {
            continue;
        }
        let meta = entry.path().symlink_metadata().expect("lstat");
        use std::os::unix::fs::MetadataExt;
        let what = if meta.file_type().is_symlink() {
            format!(
                "-> {}",
                fs::read_link(entry.path()).expect("readlink").display()
            )
        } else if meta.is_file() {
            format!(
                "{:o} {}",
                meta.mode(),
                hex::encode(Sha256::digest(fs::read(entry.path()).expect("read")))
            )
        } else {
            format!("{:o} dir", meta.mode())
        };
        out.insert(rel, what);
    }
    out
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `cmd`, killing it after `limit`.
pub fn run_with_deadline(mut cmd: Command, limit: Duration) -> Output {
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn slipway");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

/// The text of an output's stderr.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The text of an output's stdout.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails the test, naming the command that runs it right, unless the
/// `slipway` under test has the crash-test hooks (`SLIPWAY_FAULT_AFTER`,
/// `SLIPWAY_FAULT_AT`, `SLIPWAY_TEST_NOW`). `scripts/test` builds with them;
/// a test that needs them never passes by skipping.
pub fn require_fault_injection() {
    let out = Command::new(slipway_bin())
        .arg("debug-features")
        .output()
        .expect("run slipway debug-features");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("fault-injection=on"),
        "this test needs slipway built with its crash-test hooks: \
         cargo test -p slipway --features fault-injection (scripts/test does)"
    );
}

/// `len` pseudo-random bytes (xorshift64 from `seed`): incompressible
/// content that is the same on every run.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

//! Channels over HTTP(S), end to end: the real `slipway` against a real
//! nginx (from the harness in `tests/harness`, on a loopback port) serving a
//! repository made by the real `slipway-pack`, in temporary directories.
//!
//! - The refusals of SPEC §6 are written once ([`Refusal`]) and run against
//!   three sources: the repository over HTTP, the same repository as a local
//!   directory, and an offline bundle made by `slipway-pack bundle` (tampered
//!   with after it was made, its unsigned `SHA256SUMS` rewritten to match,
//!   as an attacker with the stick would). Each is its own test:
//!   `http::refuses_an_expired_index`, `bundle::refuses_an_expired_index`...
//!   Each asserts the exit code, a message naming the source, that
//!   `current` did not move, that nothing under the root outside `state/`
//!   changed, that `downloads/` holds nothing, and for an index refusal that
//!   the trust state and the index cache are byte-identical.
//! - The rest: the update v1 → v2 with the example bot, the idle poll (one
//!   request, 304, nothing written but the status), resumed and restarted
//!   downloads, the stall timeout, the bearer token, HTTPS with a private
//!   CA, errors naming the URL, key rotation, the rollout, the units.
//!
//! Most hosts here use `manager = "none"` and no health URL: the service
//! side is covered by `cli.rs` and the systemd tests; these tests are about
//! what reaches the host and what it accepts.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod bot_host;

use std::cell::Cell;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use bot_host::{copy_tree, pack_bin, run_ok, slipway_bin, snapshot_tree, stderr, stdout};
use sha2::{Digest, Sha256};
use slipway_e2e::{AccessLogEntry, Nginx, NginxOptions};
use slipway_formats::bundle::{BundleSums, BUNDLE_DIRS, README_FILE};
use slipway_formats::channel::Timestamp;
use slipway_formats::signature::TrustedComment;
use slipway_formats::{ChannelIndex, ChannelRelease, ReleaseId};
use slipway_pack::{sign_channel_index, SigningKey};

// ---------------------------------------------------------------------------
// A host, a publisher and a server
// ---------------------------------------------------------------------------

/// Where the host under test gets its releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `update.source` = the nginx URL of the repository.
    Http,
    /// `update.source` = the repository directory.
    Local,
    /// `slipway install <bundle dir>`, the bundle made by `slipway-pack bundle`.
    Bundle,
}

/// A release built by `slipway-pack build`.
#[derive(Debug, Clone)]
struct Built {
    version: String,
    id: ReleaseId,
    size: u64,
}

impl Built {
    fn dir_name(&self) -> String {
        format!("{}-{}", self.version, self.id.short())
    }

    fn listed(&self) -> ChannelRelease {
        ChannelRelease {
            version: self.version.parse().expect("version"),
            id: self.id,
            size: self.size,
            schema_version: 1,
            yanked: false,
            rollout: 100,
            notes: String::new(),
            deltas: Vec::new(),
        }
    }
}

/// How to build a release of the example bot.
#[derive(Debug, Clone, Copy, Default)]
struct Recipe {
    /// Incompressible bytes added as `app/bot/padding.bin` (to make a
    /// download slow enough to cut).
    padding: usize,
    /// The release's own check hook fails.
    failing_check: bool,
}

/// One test's world: a publisher with a key and a repository, a host with
/// an install root, and (for [`Kind::Http`]) nginx serving the repository.
struct World {
    dir: tempfile::TempDir,
    kind: Kind,
    key: SigningKey,
    nginx: Option<Nginx>,
    env: Vec<(String, String)>,
    /// Gives every crafted index a distinct mtime (nginx's ETag is mtime
    /// and size: two indexes written in one second with one size would
    /// otherwise look unchanged to a conditional GET).
    stamp: Cell<u64>,
    shipped: Cell<u32>,
}

impl World {
    fn new(kind: Kind) -> World {
        World::with_nginx(kind, NginxOptions::default())
    }

    fn with_nginx(kind: Kind, options: NginxOptions) -> World {
        let dir = tempfile::Builder::new()
            .prefix("slipway-http-")
            .tempdir()
            .expect("tempdir");
        let keys = dir.path().join("keys");
        run_ok(Command::new(pack_bin()).args([
            "keygen",
            "--unencrypted",
            "--out-dir",
            &keys.to_string_lossy(),
        ]));
        let key = SigningKey::load(&keys.join("slipway.key"), None).expect("load key");
        let repo = dir.path().join("repo");
        fs::create_dir_all(&repo).expect("repo dir");
        let nginx =
            (kind == Kind::Http).then(|| Nginx::serve_with(&repo, options).expect("start nginx"));
        let w = World {
            dir,
            kind,
            key,
            nginx,
            env: Vec::new(),
            stamp: Cell::new(0),
            shipped: Cell::new(0),
        };
        w.write_config(&[]);
        w
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn repo(&self) -> PathBuf {
        self.path("repo")
    }

    fn root(&self) -> PathBuf {
        self.path("root")
    }

    fn config(&self) -> PathBuf {
        self.path("update.toml")
    }

    fn nginx(&self) -> &Nginx {
        self.nginx.as_ref().expect("an HTTP world")
    }

    fn base_url(&self) -> String {
        self.nginx().base_url()
    }

    /// Writes the configuration; `update` lines replace the defaults with
    /// the same key.
    fn write_config(&self, update: &[&str]) {
        let source = match self.kind {
            Kind::Http => self.base_url(),
            Kind::Local | Kind::Bundle => self.repo().display().to_string(),
        };
        let mut lines: Vec<String> = vec![
            "channel = \"stable\"".into(),
            format!("source = \"{source}\""),
            format!(
                "public_keys = [\"{}\"]",
                self.path("keys/slipway.pub").display()
            ),
            "max_attempts_per_day = 50".into(),
            "max_failures_per_day = 20".into(),
            "connect_timeout_seconds = 5".into(),
            "stall_timeout_seconds = 10".into(),
        ];
        for extra in update {
            let key = extra.split('=').next().map(str::trim);
            lines.retain(|l| l.split('=').next().map(str::trim) != key);
            lines.push(extra.to_string());
        }
        let text = format!(
            "[update]\n{}\n\n[paths]\nroot = \"{}\"\npersistence = \"{}\"\nmax_save_age_minutes = 0\n\n\
             [service]\nmanager = \"none\"\nhealthy_polls = 1\n\n[hooks]\ntimeout_seconds = 60\n\n\
             [report]\njournald = false\n",
            lines.join("\n"),
            self.root().display(),
            self.path("data").display()
        );
        fs::write(self.config(), text).expect("write config");
    }

    /// Builds a release of the example bot into the repository (signed with
    /// the publisher's key unless `key` names another key file).
    fn build_with(&self, version: &str, recipe: Recipe, key: Option<&Path>) -> Built {
        let src = self.path(&format!("src-{version}"));
        let _ = fs::remove_dir_all(&src);
        copy_tree(&bot_host::workspace().join("examples/bot"), &src);
        if recipe.padding > 0 {
            fs::write(
                src.join("app/bot/padding.bin"),
                noise(recipe.padding, version),
            )
            .expect("padding");
        }
        if recipe.failing_check {
            let toml = fs::read_to_string(src.join("slipway.toml")).expect("slipway.toml");
            let toml = toml.replace(
                "check = [\"python3\", \"-m\", \"compileall\", \"-q\", \"app\"]",
                "check = [\"python3\", \"-c\", \"import sys; sys.exit('check: the release is broken')\"]",
            );
            assert!(toml.contains("is broken"), "slipway.toml changed shape");
            fs::write(src.join("slipway.toml"), toml).expect("slipway.toml");
        }
        let key = key.map_or_else(|| self.path("keys/slipway.key"), Path::to_path_buf);
        let out = run_ok(Command::new(pack_bin()).args([
            "build",
            &src.to_string_lossy(),
            "--version",
            version,
            "--key",
            &key.to_string_lossy(),
            "--out",
            &self.repo().to_string_lossy(),
            "--json",
        ]));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("build --json");
        Built {
            version: version.to_string(),
            id: v["id"].as_str().expect("id").parse().expect("release id"),
            size: v["size"].as_u64().expect("size"),
        }
    }

    fn build(&self, version: &str) -> Built {
        self.build_with(version, Recipe::default(), None)
    }

    fn publish(&self, release: &Built, extra: &[&str]) {
        let mut cmd = Command::new(pack_bin());
        cmd.args(["publish", "--repo"])
            .arg(self.repo())
            .args(["--channel", "stable", "--key"])
            .arg(self.path("keys/slipway.key"))
            .args(extra)
            .arg(release.id.to_string());
        run_ok(&mut cmd);
    }

    fn yank(&self, release: &Built) {
        run_ok(
            Command::new(pack_bin())
                .args(["yank", "--repo"])
                .arg(self.repo())
                .args(["--channel", "stable", "--key"])
                .arg(self.path("keys/slipway.key"))
                .arg(release.id.to_string()),
        );
    }

    /// What the host reads: the repository itself (HTTP, local), or a fresh
    /// offline bundle of it with every release that is not yanked.
    fn ship(&self) -> PathBuf {
        if self.kind != Kind::Bundle {
            return self.repo();
        }
        let n = self.shipped.get() + 1;
        self.shipped.set(n);
        let out = self.path(&format!("bundle-{n}"));
        run_ok(
            Command::new(pack_bin())
                .args(["bundle", "--all", "--repo"])
                .arg(self.repo())
                .args(["--channel", "stable", "--out"])
                .arg(&out),
        );
        assert!(out.join("SHA256SUMS").is_file(), "a bundle has SHA256SUMS");
        out
    }

    /// After tampering with a bundle: rewrite its (unsigned) checksum list
    /// to match, as an attacker holding the stick can, so that the index
    /// and archive checks are what must refuse it.
    fn seal(&self, target: &Path) {
        if self.kind != Kind::Bundle {
            return;
        }
        let mut sums = BundleSums::new();
        for top in BUNDLE_DIRS.iter().chain(&[README_FILE]) {
            let path = target.join(top);
            if !path.exists() {
                continue;
            }
            for entry in walkdir::WalkDir::new(&path).sort_by_file_name() {
                let entry = entry.expect("walk");
                if !entry.file_type().is_file() {
                    continue;
                }
                let rel = entry
                    .path()
                    .strip_prefix(target)
                    .expect("prefix")
                    .to_string_lossy()
                    .into_owned();
                let digest: [u8; 32] = Sha256::digest(fs::read(entry.path()).expect("read")).into();
                sums.insert(&rel, digest).expect("bundle path");
            }
        }
        let _ = fs::remove_file(target.join("SHA256SUMS.minisig"));
        fs::write(target.join("SHA256SUMS"), sums.to_bytes()).expect("write SHA256SUMS");
    }

    /// The channel index at `target`.
    fn index(&self, target: &Path) -> ChannelIndex {
        ChannelIndex::parse(&fs::read(target.join("channels/stable.json")).expect("read index"))
            .expect("parse index")
    }

    /// Writes `bytes` as `target`'s index, signed by `key` with `comment`.
    fn put_raw_index(
        &self,
        target: &Path,
        bytes: &[u8],
        key: &SigningKey,
        comment: &TrustedComment,
    ) {
        let sig = key.sign_bytes(bytes, &comment.to_string()).expect("sign");
        let index = target.join("channels/stable.json");
        fs::write(&index, bytes).expect("write index");
        let sig_path = target.join("channels/stable.json.minisig");
        fs::write(&sig_path, sig).expect("write signature");
        // A distinct mtime for every write (see `stamp`).
        let n = self.stamp.get() + 1;
        self.stamp.set(n);
        let when = SystemTime::now() + Duration::from_secs(100 + n);
        for p in [&index, &sig_path] {
            fs::File::options()
                .write(true)
                .open(p)
                .and_then(|f| f.set_modified(when))
                .expect("set mtime");
        }
    }

    /// Writes `index` at `target`, properly signed by `key`.
    fn put_index_signed_by(&self, target: &Path, index: &ChannelIndex, key: &SigningKey) {
        let comment = TrustedComment::for_channel(&index.app, &index.channel, index.version);
        let sig = sign_channel_index(key, index).expect("sign index");
        assert!(sig.contains(&comment.to_string()));
        self.put_raw_index(target, &index.to_bytes(), key, &comment);
    }

    fn put_index(&self, target: &Path, index: &ChannelIndex) {
        self.put_index_signed_by(target, index, &self.key);
    }

    /// `slipway --config <ours> ARGS`, with the outside environment that
    /// could change its behaviour removed.
    fn slipway(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(slipway_bin());
        cmd.arg("--config").arg(self.config()).args(args);
        for var in [
            "SLIPWAY_CONFIG",
            "BOT_AUTO_UPDATE",
            "BOT_UPDATE_INTERVAL",
            "BOT_UPDATE_CHANNEL",
            "SLIPWAY_FAULT_AFTER",
            "SLIPWAY_TEST_NOW",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "SSL_CERT_FILE",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn run(&self, args: &[&str], env: &[(String, String)]) -> Output {
        let mut cmd = self.slipway(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        assert_cmd::Command::from_std(cmd)
            .timeout(Duration::from_secs(120))
            .output()
            .unwrap_or_else(|e| panic!("slipway {args:?}: {e}"))
    }

    fn run_expect(&self, args: &[&str], code: i32, env: &[(String, String)]) -> Output {
        let out = self.run(args, env);
        assert_eq!(
            out.status.code(),
            Some(code),
            "slipway {args:?} exited {:?}, expected {code}\n--- stdout\n{}\n--- stderr\n{}",
            out.status.code(),
            stdout(&out),
            stderr(&out)
        );
        out
    }

    /// An update from `target`: `slipway update` for a repository or URL,
    /// `slipway install <bundle>` for a bundle.
    fn update(&self, target: &Path, code: i32, env: &[(String, String)]) -> Output {
        match self.kind {
            Kind::Http | Kind::Local => self.run_expect(&["update"], code, env),
            Kind::Bundle => self.run_expect(&["install", &target.to_string_lossy()], code, env),
        }
    }

    /// Where messages about the source must point: the URL or the directory.
    fn source_name(&self, target: &Path) -> String {
        match self.kind {
            Kind::Http => self.base_url(),
            Kind::Local | Kind::Bundle => target.display().to_string(),
        }
    }

    fn current(&self) -> Option<String> {
        fs::read_link(self.root().join("current"))
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
    }

    fn state_file(&self, name: &str) -> Option<Vec<u8>> {
        fs::read(self.root().join("state").join(name)).ok()
    }

    fn status(&self) -> serde_json::Value {
        let out = self.run_expect(&["status", "--json"], 0, &[]);
        serde_json::from_slice(&out.stdout).expect("status --json")
    }

    fn downloads(&self) -> Vec<String> {
        fs::read_dir(self.root().join("downloads"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The archive requests in nginx's log.
    fn archive_requests(&self, release: &Built) -> Vec<AccessLogEntry> {
        let name = format!("/releases/{}", release.id.archive_file_name());
        self.nginx()
            .access_log_entries()
            .expect("access log")
            .into_iter()
            .filter(|e| e.uri == name)
            .collect()
    }
}

/// Deterministic incompressible bytes.
fn noise(len: usize, seed: &str) -> Vec<u8> {
    let mut x: u64 = seed.bytes().fold(0x9e37_79b9_7f4a_7c15_u64, |h, b| {
        h.rotate_left(5) ^ u64::from(b)
    }) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn now() -> Timestamp {
    Timestamp(time::OffsetDateTime::now_utc())
}

fn days_from_now(days: i64) -> Timestamp {
    Timestamp(time::OffsetDateTime::now_utc() + time::Duration::days(days))
}

fn text(out: &Output) -> String {
    format!("{}\n{}", stdout(out), stderr(out))
}

// ---------------------------------------------------------------------------
// The refusals of SPEC §6, once, against three sources
// ---------------------------------------------------------------------------

/// How an attack is set up: the bundle or repository the host then reads,
/// and extra environment for that run.
struct Attack {
    target: PathBuf,
    env: Vec<(String, String)>,
}

/// One refusal: the attack and what the host must say and do.
struct Refusal {
    /// Set up the attack. The host runs v1; v2 is built but not published.
    attack: fn(&World, &Built, &Built) -> Attack,
    exit: i32,
    /// Substrings of the output (stdout and stderr).
    says: &'static [&'static str],
    /// The output names the source (URL or directory).
    names_source: bool,
    /// Refused at the channel index: the trust state and the index cache
    /// must not change at all.
    index_level: bool,
}

/// v2 published without deltas and shipped: these attacks are on the full
/// archive and the index, and a host on v1 would otherwise take the delta
/// and never read the archive (hostile deltas are tests/deltas.rs's).
fn shipped(w: &World, v2: &Built) -> PathBuf {
    w.publish(v2, &["--deltas", "0"]);
    w.ship()
}

fn attack(target: PathBuf) -> Attack {
    Attack {
        target,
        env: Vec::new(),
    }
}

fn refuses_a_bad_signature() -> Refusal {
    Refusal {
        attack: |w, _, v2| {
            let t = shipped(w, v2);
            // Change the signed bytes, keep the signature.
            let path = t.join("channels/stable.json");
            let text = fs::read_to_string(&path).expect("index");
            fs::write(&path, text.replace("\"notes\": \"\"", "\"notes\": \"hi\"")).expect("write");
            w.seal(&t);
            attack(t)
        },
        exit: 1,
        says: &["does not match the data"],
        names_source: true,
        index_level: true,
    }
}

fn refuses_an_index_signed_by_a_foreign_key() -> Refusal {
    Refusal {
        attack: |w, _, v2| {
            let t = shipped(w, v2);
            run_ok(Command::new(pack_bin()).args([
                "keygen",
                "--unencrypted",
                "--out-dir",
                &w.path("foreign").to_string_lossy(),
            ]));
            let foreign =
                SigningKey::load(&w.path("foreign/slipway.key"), None).expect("foreign key");
            let mut idx = w.index(&t);
            idx.version += 1;
            w.put_index_signed_by(&t, &idx, &foreign);
            w.seal(&t);
            attack(t)
        },
        exit: 1,
        says: &["which this host does not trust", "rotation"],
        names_source: true,
        index_level: true,
    }
}

fn refuses_an_index_for_another_app() -> Refusal {
    Refusal {
        attack: |w, _, v2| {
            let t = shipped(w, v2);
            let mut idx = w.index(&t);
            idx.app = "otherbot".into();
            idx.version += 1;
            w.put_index(&t, &idx);
            w.seal(&t);
            attack(t)
        },
        exit: 1,
        says: &["is for app \"otherbot\""],
        names_source: true,
        index_level: true,
    }
}

fn refuses_an_index_for_another_channel() -> Refusal {
    Refusal {
        attack: |w, _, v2| {
            let t = shipped(w, v2);
            let mut idx = w.index(&t);
            idx.channel = "beta".into();
            idx.version += 1;
            w.put_index(&t, &idx);
            w.seal(&t);
            attack(t)
        },
        exit: 1,
        says: &["is for channel \"beta\""],
        names_source: true,
        index_level: true,
    }
}

fn refuses_an_index_of_another_type() -> Refusal {
    Refusal {
        attack: |w, _, v2| {
            let t = shipped(w, v2);
            let mut idx = w.index(&t);
            idx.version += 1;
            let mut value = serde_json::to_value(&idx).expect("json");
            value["type"] = "manifest".into();
            let mut bytes = serde_json::to_vec_pretty(&value).expect("bytes");
            bytes.push(b'\n');
            let comment = TrustedComment::for_channel(&idx.app, &idx.channel, idx.version);
            w.put_raw_index(&t, &bytes, &w.key, &comment);
            w.seal(&t);
            attack(t)
        },
        exit: 1,
        says: &["has type \"manifest\""],
        names_source: true,
        index_level: true,
    }
}

fn refuses_a_lower_index_version() -> Refusal {
    Refusal {
        attack: |w, v1, v2| {
            let t = shipped(w, v2);
            // The host sees version 5 (offering nothing new)...
            let mut idx = w.index(&t);
            idx.releases.retain(|r| r.id == v1.id);
            idx.version = 5;
            idx.expires = days_from_now(30);
            w.put_index(&t, &idx);
            w.seal(&t);
            let out = w.update(&t, 0, &[]);
            assert!(stdout(&out).contains("up to date"), "{}", text(&out));
            // ...then an older, validly signed index offering v2 is replayed.
            idx.insert_release(v2.listed()).expect("insert");
            idx.version = 4;
            w.put_index(&t, &idx);
            w.seal(&t);
            attack(t)
        },
        exit: 1,
        says: &["has version 4, lower than version 5", "rollback attack"],
        names_source: true,
        index_level: true,
    }
}

fn refuses_an_expired_index() -> Refusal {
    Refusal {
        attack: |w, _, v2| {
            let t = shipped(w, v2);
            let mut idx = w.index(&t);
            idx.version += 1;
            idx.published = Some(days_from_now(-31));
            idx.expires = days_from_now(-1);
            w.put_index(&t, &idx);
            w.seal(&t);
            attack(t)
        },
        exit: 1,
        says: &["expired at", "--allow-expired"],
        names_source: true,
        index_level: true,
    }
}

fn refuses_a_clock_earlier_than_seen() -> Refusal {
    Refusal {
        attack: |w, _, v2| {
            let t = shipped(w, v2);
            let earlier = Timestamp(time::OffsetDateTime::now_utc() - time::Duration::days(2));
            Attack {
                target: t,
                env: vec![("SLIPWAY_TEST_NOW".into(), earlier.to_string())],
            }
        },
        exit: 1,
        says: &["earlier than", "fix the clock"],
        names_source: false,
        index_level: true,
    }
}

fn refuses_an_archive_larger_than_its_signed_size() -> Refusal {
    Refusal {
        attack: |w, _, v2| {
            let t = shipped(w, v2);
            let mut idx = w.index(&t);
            idx.version += 1;
            for r in &mut idx.releases {
                if r.id == v2.id {
                    r.size -= 100;
                }
            }
            w.put_index(&t, &idx);
            w.seal(&t);
            attack(t)
        },
        exit: 1,
        says: &["larger than"],
        names_source: true,
        index_level: false,
    }
}

fn refuses_an_archive_whose_hash_differs() -> Refusal {
    Refusal {
        attack: |w, _, v2| {
            let t = shipped(w, v2);
            let path = t.join("releases").join(v2.id.archive_file_name());
            let mut bytes = fs::read(&path).expect("archive");
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x55;
            fs::write(&path, bytes).expect("write archive");
            w.seal(&t);
            attack(t)
        },
        exit: 1,
        says: &["not the expected", "sha256:"],
        names_source: true,
        index_level: false,
    }
}

fn refuses_a_yanked_release() -> Refusal {
    Refusal {
        attack: |w, _, v2| {
            w.publish(v2, &[]);
            w.yank(v2);
            attack(w.ship())
        },
        exit: 0,
        says: &["up to date", "2.0.0", "is yanked"],
        names_source: false,
        index_level: false,
    }
}

fn refuses_a_release_on_the_bad_list() -> Refusal {
    Refusal {
        attack: |w, _, _| {
            let v3 = w.build_with(
                "3.0.0",
                Recipe {
                    failing_check: true,
                    ..Recipe::default()
                },
                None,
            );
            w.publish(&v3, &[]);
            let t = w.ship();
            let out = w.update(&t, 1, &[]);
            assert!(
                text(&out).contains("the release is broken"),
                "{}",
                text(&out)
            );
            attack(t)
        },
        exit: 0,
        says: &["up to date", "3.0.0", "bad list"],
        names_source: false,
        index_level: false,
    }
}

/// Runs one refusal against one kind of source.
fn refusal(kind: Kind, case: Refusal) {
    let w = World::new(kind);
    let v1 = w.build("1.0.0");
    let v2 = w.build("2.0.0");
    w.publish(&v1, &[]);
    let first = w.ship();
    w.update(&first, 0, &[]);
    assert_eq!(w.current(), Some(v1.dir_name()));

    let attack = (case.attack)(&w, &v1, &v2);
    if attack.env.iter().any(|(k, _)| k == "SLIPWAY_TEST_NOW") {
        bot_host::require_fault_injection();
    }
    let tree = snapshot_tree(&w.root(), &["state"]);
    let trust = w.state_file("trust.json");
    let cache = w.state_file("index-cache/stable.json");
    assert!(trust.is_some(), "the first update wrote the trust state");
    if kind == Kind::Http {
        assert!(cache.is_some(), "the first update cached the index");
    }

    let before = w.status();
    let out = w.update(&attack.target, case.exit, &attack.env);
    let all = text(&out);
    // A refusal of what the source offers counts toward neither budget.
    let after = w.status();
    for counter in ["failures_today", "attempts_today"] {
        assert_eq!(after[counter], before[counter], "{counter}: {after}");
    }
    assert_eq!(after["auto_update"]["enabled"], true, "{after}");
    for s in case.says {
        assert!(all.contains(s), "expected {s:?} in:\n{all}");
    }
    if case.names_source {
        let name = w.source_name(&attack.target);
        assert!(all.contains(&name), "the message names {name}:\n{all}");
    }
    if case.exit != 0 {
        assert!(stderr(&out).contains("hint:"), "{all}");
    }
    assert_eq!(w.current(), Some(v1.dir_name()), "current did not move");
    assert_eq!(
        snapshot_tree(&w.root(), &["state"]),
        tree,
        "nothing outside state/ changed"
    );
    assert!(w.downloads().is_empty(), "downloads/: {:?}", w.downloads());
    if case.index_level {
        assert_eq!(
            w.state_file("trust.json"),
            trust,
            "the trust state is untouched"
        );
        assert_eq!(
            w.state_file("index-cache/stable.json"),
            cache,
            "the index cache is untouched"
        );
    }
}

macro_rules! refusal_tests {
    ($($case:ident),* $(,)?) => {
        /// The refusals with the repository served by nginx.
        mod http {
            $( #[test] fn $case() { super::refusal(super::Kind::Http, super::$case()) } )*
        }
        /// The same refusals with the repository as a local directory.
        mod local_repo {
            $( #[test] fn $case() { super::refusal(super::Kind::Local, super::$case()) } )*
        }
        /// The same refusals from an offline bundle.
        mod bundle {
            $( #[test] fn $case() { super::refusal(super::Kind::Bundle, super::$case()) } )*
        }
    };
}

refusal_tests!(
    refuses_a_bad_signature,
    refuses_an_index_signed_by_a_foreign_key,
    refuses_an_index_for_another_app,
    refuses_an_index_for_another_channel,
    refuses_an_index_of_another_type,
    refuses_a_lower_index_version,
    refuses_an_expired_index,
    refuses_a_clock_earlier_than_seen,
    refuses_an_archive_larger_than_its_signed_size,
    refuses_an_archive_whose_hash_differs,
    refuses_a_yanked_release,
    refuses_a_release_on_the_bad_list,
);

#[test]
fn an_expired_index_is_accepted_only_with_allow_expired_never_a_lower_version() {
    let w = World::new(Kind::Http);
    let v1 = w.build("1.0.0");
    let v2 = w.build("2.0.0");
    w.publish(&v1, &[]);
    w.run_expect(&["update"], 0, &[]);
    w.publish(&v2, &[]);
    let repo = w.repo();
    let mut idx = w.index(&repo);
    idx.version = 7;
    idx.published = Some(days_from_now(-31));
    idx.expires = days_from_now(-1);
    w.put_index(&repo, &idx);
    let out = w.run_expect(&["update"], 1, &[]);
    assert!(stderr(&out).contains("expired at"), "{}", text(&out));
    // check is read-only and says the same.
    let out = w.run_expect(&["check"], 1, &[]);
    assert!(stderr(&out).contains("expired at"), "{}", text(&out));
    let out = w.run_expect(&["update", "--allow-expired"], 0, &[]);
    assert!(stdout(&out).contains("2.0.0"), "{}", text(&out));
    assert_eq!(w.current(), Some(v2.dir_name()));
    // A lower version is never accepted, with or without the flag.
    idx.version = 6;
    w.put_index(&repo, &idx);
    let out = w.run_expect(&["update", "--allow-expired"], 1, &[]);
    assert!(stderr(&out).contains("rollback attack"), "{}", text(&out));
}

#[test]
fn a_clock_20_days_ahead_for_one_poll_does_not_lock_the_host_out() {
    bot_host::require_fault_injection();
    let w = World::new(Kind::Http);
    let v1 = w.build("1.0.0");
    let v2 = w.build("2.0.0");
    w.publish(&v1, &[]);
    w.run_expect(&["update"], 0, &[]);
    // One poll with the clock 20 days ahead: the index (valid 30 days) is
    // still good.
    let ahead = days_from_now(20);
    let env = vec![("SLIPWAY_TEST_NOW".to_string(), ahead.to_string())];
    let out = w.run_expect(&["update"], 0, &env);
    assert!(stdout(&out).contains("up to date"), "{}", text(&out));
    // The clock is right again; the publisher publishes v2 as usual.
    w.publish(&v2, &[]);
    for args in [&["check"][..], &["update"][..]] {
        let out = w.run_expect(args, 0, &[]);
        assert!(!text(&out).contains("earlier than"), "{}", text(&out));
    }
    assert_eq!(w.current(), Some(v2.dir_name()));
    // And a later correct publish is taken as well; nothing of the wrong
    // clock was ever kept as trust.
    let v3 = w.build("3.0.0");
    w.publish(&v3, &[]);
    w.run_expect(&["update"], 0, &[]);
    assert_eq!(w.current(), Some(v3.dir_name()));
    let day = ahead.to_string()[..10].to_string();
    let trust = String::from_utf8(w.state_file("trust.json").expect("trust")).expect("utf-8");
    assert!(
        !trust.contains(&day),
        "{day} is in the trust state:\n{trust}"
    );
}

// ---------------------------------------------------------------------------
// The failure model, row by row (docs/transaction.md, "How a run ends")
// ---------------------------------------------------------------------------

/// `slipway-pack refresh` of the channel, as the scheduled CI job runs it.
fn refresh(w: &World, expires_in: &str) {
    run_ok(
        Command::new(pack_bin())
            .args(["refresh", "--repo"])
            .arg(w.repo())
            .args(["--channel", "stable", "--expires-in", expires_in, "--key"])
            .arg(w.path("keys/slipway.key")),
    );
}

#[test]
fn an_expired_index_twice_keeps_auto_update_on_and_a_refresh_resumes_it() {
    let w = World::new(Kind::Http);
    // The defaults that switched fleets off, and a stall reported at once.
    w.write_config(&[
        "max_failures_per_day = 2",
        "max_attempts_per_day = 3",
        "stalled_after_hours = 0",
    ]);
    let v1 = w.build("1.0.0");
    let v2 = w.build("2.0.0");
    w.publish(&v1, &[]);
    w.run_expect(&["update", "--auto"], 0, &[]);
    // The publisher forgets: the index that offers v2 expires.
    w.publish(&v2, &["--expires-in", "2s"]);
    std::thread::sleep(Duration::from_secs(3));
    for _ in 0..2 {
        let out = w.run_expect(&["update", "--auto"], 1, &[]);
        assert!(stderr(&out).contains("expired at"), "{}", text(&out));
        assert!(
            stderr(&out).contains("slipway-pack refresh"),
            "{}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(1100));
    }
    assert_eq!(w.current(), Some(v1.dir_name()));
    let status = w.status();
    assert_eq!(status["auto_update"]["enabled"], true, "{status}");
    assert_eq!(status["failures_today"], 0, "{status}");
    assert_eq!(status["attempts_today"], 1, "only v1's install: {status}");
    assert_eq!(status["last_attempt"]["result"], "refused", "{status}");
    assert_eq!(status["last_attempt"]["cause"], "index_expired", "{status}");
    // Nothing stops silently: status, the banner and the metrics say so.
    assert_eq!(status["blocked"]["stalled"], true, "{status}");
    assert_eq!(status["blocked"]["cause"], "index_expired", "{status}");
    let text_status = stdout(&w.run_expect(&["status"], 0, &[]));
    assert!(text_status.starts_with("STALLED:"), "{text_status}");
    let banner = fs::read_to_string(w.root().join("state/banner.txt")).expect("banner");
    assert!(
        banner.starts_with("STALLED ") && banner.contains("channel index expired"),
        "{banner}"
    );
    assert!(banner.trim_end().chars().count() <= 160, "{banner}");
    let metrics = fs::read_to_string(w.root().join("state/slipway.prom")).expect("metrics");
    let blocked: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("slipway_update_blocked_seconds "))
        .expect("slipway_update_blocked_seconds")
        .parse()
        .expect("number");
    assert!(blocked >= 1.0, "{metrics}");
    assert!(
        metrics.contains("\nslipway_update_stalled 1\n"),
        "{metrics}"
    );

    // The publisher refreshes; the next poll updates by itself, with no
    // `slipway enable` on the host.
    refresh(&w, "3d");
    let o: serde_json::Value =
        serde_json::from_slice(&w.run_expect(&["update", "--auto", "--json"], 0, &[]).stdout)
            .expect("json");
    assert_eq!(o["result"], "updated", "{o}");
    assert_eq!(w.current(), Some(v2.dir_name()));
    let status = w.status();
    assert!(status["blocked"].is_null(), "{status}");
    // ...and it sees the next expiry coming (3 days < expiry_warning_days).
    assert_eq!(status["index"]["expiry_warning"], true, "{status}");
    let text_status = stdout(&w.run_expect(&["status"], 0, &[]));
    assert!(text_status.starts_with("EXPIRY:"), "{text_status}");
    let banner = fs::read_to_string(w.root().join("state/banner.txt")).expect("banner");
    assert!(
        // Three days from the refresh, to the second: "2 days" once a
        // second has passed, "3 days" within the same second.
        banner.starts_with("OK running 2.0.0")
            && (banner.contains("index expires in 2 days")
                || banner.contains("index expires in 3 days")),
        "{banner}"
    );
    let metrics = fs::read_to_string(w.root().join("state/slipway.prom")).expect("metrics");
    assert!(
        metrics.contains("\nslipway_index_expires_in_seconds "),
        "{metrics}"
    );
}

#[test]
fn manual_runs_never_use_up_the_timers_attempts() {
    let w = World::new(Kind::Http);
    w.write_config(&["max_attempts_per_day = 1"]);
    let v1 = w.build("1.0.0");
    let v2 = w.build("2.0.0");
    let v3 = w.build("3.0.0");
    w.publish(&v1, &[]);
    w.run_expect(&["install", &w.base_url()], 0, &[]);
    w.publish(&v2, &[]);
    w.run_expect(&["update"], 0, &[]);
    assert_eq!(w.status()["attempts_today"], 0);
    // The timer still has its one attempt today.
    w.publish(&v3, &[]);
    w.run_expect(&["update", "--auto"], 0, &[]);
    assert_eq!(w.current(), Some(v3.dir_name()));
    assert_eq!(w.status()["attempts_today"], 1);
}

#[test]
fn a_restart_command_that_fails_flips_back_and_never_bad_lists() {
    let w = World::new(Kind::Http);
    let v1 = w.build("1.0.0");
    let v2 = w.build("2.0.0");
    w.publish(&v1, &[]);
    w.run_expect(&["update"], 0, &[]);
    // The host's restart command breaks (a typo, a missing supervisor).
    let config = fs::read_to_string(w.config()).expect("config");
    let broken = config.replace(
        "manager = \"none\"",
        "manager = \"command\"\nrestart = [\"false\"]\nstatus = [\"true\"]",
    );
    assert_ne!(broken, config);
    fs::write(w.config(), &broken).expect("config");
    w.publish(&v2, &[]);
    let out = w.run_expect(&["update", "--json"], 3, &[]);
    let o: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(o["result"], "rolled_back", "{o}");
    assert_eq!(o["cause"], "host_after_switch", "{o}");
    assert!(
        o["message"].as_str().unwrap().contains("not bad-listed"),
        "{o}"
    );
    assert_eq!(w.current(), Some(v1.dir_name()));
    let status = w.status();
    assert_eq!(status["bad_releases"], serde_json::json!([]), "{status}");
    assert_eq!(
        status["failures_today"], 1,
        "it disturbed the service: {status}"
    );
    // Fixed, the same release installs: it was never blamed.
    fs::write(w.config(), &config).expect("config");
    w.run_expect(&["update"], 0, &[]);
    assert_eq!(w.current(), Some(v2.dir_name()));
}

#[test]
fn nothing_new_is_quiet_and_quiet_prints_nothing_on_success() {
    let w = World::new(Kind::Http);
    let v1 = w.build("1.0.0");
    w.publish(&v1, &[]);
    let out = w.run_expect(&["-q", "update", "--auto"], 0, &[]);
    assert_eq!(stdout(&out), "", "-q prints nothing on success");
    assert_eq!(stderr(&out), "");
    let out = w.run_expect(&["update", "--auto"], 0, &[]);
    assert!(stdout(&out).contains("up to date"), "{}", text(&out));
    assert_eq!(stdout(&out).lines().count(), 1, "one result line");
    assert!(!stderr(&out).contains("error"), "{}", stderr(&out));
    let status = w.status();
    assert_eq!(status["last_attempt"]["cause"], "up_to_date", "{status}");
    assert!(status["blocked"].is_null(), "{status}");
    let out = w.run_expect(&["-q", "update", "--auto"], 0, &[]);
    assert_eq!(stdout(&out), "");
}

// ---------------------------------------------------------------------------
// Updates and polls over HTTP
// ---------------------------------------------------------------------------

#[test]
fn update_v1_to_v2_from_nginx_with_the_example_bot() {
    let host = bot_host::TestHost::new(&[]);
    fs::create_dir_all(host.repo()).expect("repo dir");
    let nginx = Nginx::serve(host.repo()).expect("nginx");
    host.write_config(&[("update", &format!("source = \"{}\"", nginx.base_url()))]);
    let v1 = host.release("1.0.0", &bot_host::Flavor::default());
    let o = host.json(&["update"], 0);
    assert_eq!(o["result"], "updated", "{o}");
    host.wait_healthy("1.0.0");
    assert_eq!(host.link("current"), Some(v1.dir_name()));

    // The full archive's path (deltas are tests/deltas.rs's).
    let v2 = host.build(
        "2.0.0",
        &bot_host::Flavor {
            schema: Some(2),
            ..bot_host::Flavor::default()
        },
    );
    host.publish_with(&v2, &["--deltas", "0"]);
    let o = host.json(&["update"], 0);
    assert_eq!(o["result"], "updated", "{o}");
    assert_eq!(o["from_version"], "1.0.0");
    assert_eq!(o["version"], "2.0.0");
    host.wait_healthy("2.0.0");
    assert_eq!(host.link("current"), Some(v2.dir_name()));
    assert_eq!(host.link("previous"), Some(v1.dir_name()));
    assert_eq!(host.data_schema(), 2, "the migrate hook ran");

    // What went over the wire for v2: the index (changed), its signature,
    // the archive's signature and the archive, each once, each 200.
    let log = nginx.access_log_entries().expect("access log");
    let hex = v2.id.trim_start_matches("sha256:");
    for uri in [
        "/channels/stable.json.minisig".to_string(),
        format!("/releases/{hex}.tar.zst.minisig"),
        format!("/releases/{hex}.tar.zst"),
    ] {
        let hits: Vec<_> = log.iter().filter(|e| e.uri == uri).collect();
        assert!(!hits.is_empty(), "{uri} was fetched: {log:?}");
        assert!(hits.iter().all(|e| e.status == 200), "{hits:?}");
    }
    let archive = log
        .iter()
        .find(|e| e.uri == format!("/releases/{hex}.tar.zst"))
        .expect("archive request");
    assert_eq!(
        archive.body_bytes,
        fs::metadata(&v2.archive).expect("archive").len()
    );
    assert!(archive.range.is_none());
    assert!(
        fs::read_dir(host.root().join("downloads"))
            .expect("downloads")
            .next()
            .is_none(),
        "the download is removed once the release is staged"
    );
    host.run_expect(&["verify"], 0);
}

/// What an idle poll may change under the root, besides nothing.
const IDLE_POLL_WRITES: [&str; 5] = [
    "state/host.json",     // the last attempt (up to date)
    "state/history.jsonl", // one line appended
    "state/trust.json",    // the latest time seen (anti-freeze)
    "state/banner.txt",    // the dashboard banner
    "state/slipway.prom",  // metrics
];

#[test]
fn second_poll_is_one_conditional_request_answered_304_and_changes_nothing() {
    let w = World::new(Kind::Http);
    let v1 = w.build("1.0.0");
    let v2 = w.build("2.0.0");
    w.publish(&v1, &[]);
    w.run_expect(&["update"], 0, &[]);
    w.publish(&v2, &[]);
    w.run_expect(&["update"], 0, &[]);
    assert_eq!(w.current(), Some(v2.dir_name()));

    let requests_before = w.nginx().access_log_entries().expect("log").len();
    let tree_before = snapshot_tree(&w.root(), &[]);
    let data_before = snapshot_tree(&w.path("data"), &["meta"]);
    let cache = w.root().join("state/index-cache/stable.json");
    let cache_mtime = fs::metadata(&cache)
        .expect("cache")
        .modified()
        .expect("mtime");

    let out = w.run_expect(&["update", "--auto"], 0, &[]);
    assert!(stdout(&out).contains("up to date"), "{}", text(&out));

    let log = w.nginx().access_log_entries().expect("log");
    let new: Vec<&AccessLogEntry> = log[requests_before..].iter().collect();
    assert_eq!(new.len(), 1, "an idle poll is one request: {new:?}");
    assert_eq!(new[0].uri, "/channels/stable.json");
    assert_eq!(new[0].status, 304);
    assert_eq!(new[0].body_bytes, 0);
    assert!(new[0].if_none_match.is_some(), "{:?}", new[0]);

    // Nothing but the status files changed; the cached index was not even
    // rewritten.
    let tree_after = snapshot_tree(&w.root(), &[]);
    let changed: Vec<&String> = tree_before
        .keys()
        .chain(tree_after.keys())
        .filter(|k| tree_before.get(*k) != tree_after.get(*k))
        .collect();
    for path in &changed {
        assert!(
            IDLE_POLL_WRITES.contains(&path.as_str()),
            "{path} changed on an idle poll (allowed: {IDLE_POLL_WRITES:?})"
        );
    }
    assert_eq!(snapshot_tree(&w.path("data"), &["meta"]), data_before);
    assert_eq!(
        fs::metadata(&cache)
            .expect("cache")
            .modified()
            .expect("mtime"),
        cache_mtime,
        "the index cache is not rewritten on a 304"
    );
    let status = w.status();
    assert_eq!(status["last_attempt"]["result"], "up_to_date");
    // `check` is read-only: it also costs one 304 and writes nothing at all.
    let tree_before = snapshot_tree(&w.root(), &[]);
    let out = w.run_expect(&["check", "--json"], 0, &[]);
    let check: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(check["update_available"], false, "{check}");
    assert_eq!(snapshot_tree(&w.root(), &[]), tree_before);
    let log = w.nginx().access_log_entries().expect("log");
    assert_eq!(log.last().map(|e| e.status), Some(304));
}

#[test]
fn check_downloads_into_a_scratch_directory_and_applies_nothing() {
    let w = World::new(Kind::Http);
    let v1 = w.build("1.0.0");
    let v2 = w.build("2.0.0");
    w.publish(&v1, &[]);
    w.run_expect(&["update"], 0, &[]);
    w.publish(&v2, &[]);
    let before = snapshot_tree(&w.root(), &[]);
    let out = w.run_expect(&["check", "--json"], 0, &[]);
    let check: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(check["update_available"], true, "{check}");
    assert_eq!(check["candidate"]["version"], "2.0.0");
    assert_eq!(check["candidate"]["running_version"], "1.0.0");
    assert!(check["candidate"]["diff"].is_object(), "{check}");
    assert_eq!(snapshot_tree(&w.root(), &[]), before, "check wrote nothing");
    assert_eq!(w.current(), Some(v1.dir_name()));
}

#[test]
fn auto_restart_false_downloads_stages_and_checks_then_waits_for_apply() {
    let w = World::new(Kind::Http);
    let v1 = w.build("1.0.0");
    let v2 = w.build("2.0.0");
    w.publish(&v1, &[]);
    w.run_expect(&["update"], 0, &[]);
    // The full archive is what this test downloads: no delta.
    w.publish(&v2, &["--deltas", "0"]);
    w.write_config(&["auto_restart = false"]);
    let out = w.run_expect(&["update", "--auto"], 0, &[]);
    assert!(stdout(&out).contains("update ready"), "{}", text(&out));
    assert_eq!(w.current(), Some(v1.dir_name()));
    assert!(
        w.root().join("releases").join(v2.dir_name()).is_dir(),
        "staged"
    );
    let status = w.status();
    assert_eq!(status["pending"]["version"], "2.0.0", "{status}");
    let banner = fs::read_to_string(w.root().join("state/banner.txt")).expect("banner");
    assert!(banner.starts_with("READY"), "{banner}");
    // The next timer run neither downloads nor stages again.
    let out = w.run_expect(&["update", "--auto"], 0, &[]);
    assert!(stdout(&out).contains("update ready"), "{}", text(&out));
    assert_eq!(w.archive_requests(&v2).len(), 1);
    w.run_expect(&["apply"], 0, &[]);
    assert_eq!(w.current(), Some(v2.dir_name()));
    assert!(w.status()["pending"].is_null());
}

/// Spawns `slipway update` and SIGKILLs it once `downloads/` holds a
/// partial archive of at least `at` bytes; returns the partial's size.
fn kill_mid_download(w: &World, release: &Built, at: u64) -> u64 {
    let mut child = w
        .slipway(&["update"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn slipway");
    let part = w
        .root()
        .join("downloads")
        .join(format!("{}.part", release.id.archive_file_name()));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let len = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        if len >= at {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("slipway ended ({status}) before the download reached {at} bytes");
        }
        assert!(
            Instant::now() < deadline,
            "the download never reached {at} bytes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill slipway");
    let _ = child.wait();
    fs::metadata(&part)
        .expect("the partial download stays")
        .len()
}

const PADDING: usize = 1536 * 1024;

#[test]
fn a_download_cut_off_halfway_resumes_where_it_stopped() {
    let w = World::with_nginx(
        Kind::Http,
        NginxOptions {
            limit_rate: Some("512k".into()),
            ..NginxOptions::default()
        },
    );
    let v1 = w.build("1.0.0");
    let v2 = w.build_with(
        "2.0.0",
        Recipe {
            padding: PADDING,
            ..Recipe::default()
        },
        None,
    );
    assert!(v2.size > PADDING as u64, "the padding is incompressible");
    w.publish(&v1, &[]);
    w.run_expect(&["update"], 0, &[]);
    // The full archive is what this test downloads: no delta.
    w.publish(&v2, &["--deltas", "0"]);
    let partial = kill_mid_download(&w, &v2, v2.size / 2);
    assert!(partial < v2.size, "cut before the end");

    // The next run recovers the killed transaction and resumes.
    let out = w.run_expect(&["update", "--verbose"], 0, &[]);
    assert!(
        text(&out).contains(&format!("resumed from byte {partial}")),
        "{}",
        text(&out)
    );
    assert_eq!(w.current(), Some(v2.dir_name()));
    let requests = w.archive_requests(&v2);
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0].status, 200);
    assert_eq!(requests[0].range, None);
    assert_eq!(requests[1].status, 206);
    assert_eq!(
        requests[1].range.as_deref(),
        Some(format!("bytes={partial}-").as_str())
    );
    let total: u64 = requests.iter().map(|r| r.body_bytes).sum();
    assert!(
        total < v2.size * 12 / 10,
        "{total} bytes fetched for a {}-byte archive",
        v2.size
    );
    assert_eq!(requests[1].body_bytes, v2.size - partial);
    assert!(w.downloads().is_empty(), "{:?}", w.downloads());
    let history = w.run_expect(&["history", "--json"], 0, &[]);
    assert!(
        stdout(&history).contains("interrupted at step Fetch"),
        "{}",
        stdout(&history)
    );
}

#[test]
fn a_server_that_ignores_range_restarts_the_download_from_zero() {
    let w = World::with_nginx(
        Kind::Http,
        NginxOptions {
            limit_rate: Some("512k".into()),
            extra_server_config: Some("max_ranges 0;".into()),
            ..NginxOptions::default()
        },
    );
    let v1 = w.build("1.0.0");
    let v2 = w.build_with(
        "2.0.0",
        Recipe {
            padding: PADDING,
            ..Recipe::default()
        },
        None,
    );
    w.publish(&v1, &[]);
    w.run_expect(&["update"], 0, &[]);
    // The full archive is what this test downloads: no delta.
    w.publish(&v2, &["--deltas", "0"]);
    let partial = kill_mid_download(&w, &v2, v2.size / 3);
    assert!(partial > 0);
    w.run_expect(&["update"], 0, &[]);
    assert_eq!(w.current(), Some(v2.dir_name()));
    let requests = w.archive_requests(&v2);
    assert_eq!(requests.len(), 2, "{requests:?}");
    let retry = &requests[1];
    assert_eq!(
        retry.range.as_deref(),
        Some(format!("bytes={partial}-").as_str()),
        "a resume was asked for"
    );
    assert_eq!(retry.status, 200, "the server sent the whole file instead");
    assert_eq!(retry.body_bytes, v2.size);
}

#[test]
fn a_partial_download_of_a_changed_file_is_discarded() {
    let w = World::with_nginx(
        Kind::Http,
        NginxOptions {
            limit_rate: Some("512k".into()),
            ..NginxOptions::default()
        },
    );
    let v1 = w.build("1.0.0");
    let v2 = w.build_with(
        "2.0.0",
        Recipe {
            padding: PADDING,
            ..Recipe::default()
        },
        None,
    );
    w.publish(&v1, &[]);
    w.run_expect(&["update"], 0, &[]);
    // The full archive is what this test downloads: no delta.
    w.publish(&v2, &["--deltas", "0"]);
    let partial = kill_mid_download(&w, &v2, v2.size / 3);
    // The file on the server changes (its ETag with it): If-Range fails and
    // the server sends the whole (here: corrupted) file, which the signed
    // hash then refuses; nothing of the old partial is kept.
    let path = w.repo().join("releases").join(v2.id.archive_file_name());
    let mut bytes = fs::read(&path).expect("archive");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&path, &bytes).expect("write");
    fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(SystemTime::now() + Duration::from_secs(60)))
        .expect("mtime");
    let out = w.run_expect(&["update"], 1, &[]);
    assert!(stderr(&out).contains("not the expected"), "{}", text(&out));
    let requests = w.archive_requests(&v2);
    let retry = requests.last().expect("retry");
    assert_eq!(
        retry.range.as_deref(),
        Some(format!("bytes={partial}-").as_str())
    );
    assert_eq!(retry.status, 200, "If-Range did not match");
    assert!(w.downloads().is_empty(), "{:?}", w.downloads());
    assert_eq!(w.current(), Some(v1.dir_name()));
}

/// Serves `channels/stable.json.minisig` of `repo` behind nginx, except
/// that the next requests get the bodies queued in `stale`: the signature
/// as it was before a publish, as a host that reads the index just after a
/// publish and the signature just before it would see.
struct SignatureBackend {
    port: u16,
    stale: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<Vec<u8>>>>,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl SignatureBackend {
    fn start(repo: PathBuf) -> SignatureBackend {
        use std::io::{Read, Write};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let stale = std::sync::Arc::new(std::sync::Mutex::new(
            std::collections::VecDeque::<Vec<u8>>::new(),
        ));
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (queue, count) = (stale.clone(), requests.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = queue.lock().expect("queue").pop_front().unwrap_or_else(|| {
                    fs::read(repo.join("channels/stable.json.minisig")).expect("signature")
                });
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(&body);
            }
        });
        SignatureBackend {
            port,
            stale,
            requests,
        }
    }

    fn serve_stale(&self, body: &[u8], times: usize) {
        let mut q = self.stale.lock().expect("queue");
        for _ in 0..times {
            q.push_back(body.to_vec());
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[test]
fn an_index_and_signature_torn_by_a_publish_are_read_again_once() {
    // The signature goes through the backend, the rest straight from disk.
    let mut w = World::new(Kind::Http);
    let backend = SignatureBackend::start(w.repo());
    w = {
        w.nginx = Some(
            Nginx::serve_with(
                w.repo(),
                NginxOptions {
                    extra_server_config: Some(format!(
                        "location = /channels/stable.json.minisig {{ proxy_pass http://127.0.0.1:{}; }}",
                        backend.port
                    )),
                    ..NginxOptions::default()
                },
            )
            .expect("nginx"),
        );
        w.write_config(&[]);
        w
    };
    let v1 = w.build("1.0.0");
    let v2 = w.build("2.0.0");
    w.publish(&v1, &[]);
    w.run_expect(&["update"], 0, &[]);
    let old_signature = fs::read(w.repo().join("channels/stable.json.minisig")).expect("sig");
    w.publish(&v2, &[]);

    // Torn once: the new index with the old signature, then the pair again.
    backend.serve_stale(&old_signature, 1);
    let before = backend.requests();
    let out = w.run_expect(&["update"], 0, &[]);
    assert!(stdout(&out).contains("2.0.0"), "{}", text(&out));
    assert_eq!(w.current(), Some(v2.dir_name()));
    assert_eq!(backend.requests() - before, 2, "the signature read twice");

    // Torn twice in a row: refused, and that is no failure of anything.
    let v3 = w.build("3.0.0");
    let signature_v2 = fs::read(w.repo().join("channels/stable.json.minisig")).expect("sig");
    w.publish(&v3, &[]);
    backend.serve_stale(&signature_v2, 2);
    let out = w.run_expect(&["update", "--json"], 1, &[]);
    let o: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(o["result"], "refused", "{o}");
    assert_eq!(o["cause"], "index_untrusted", "{o}");
    assert!(
        stderr(&out).contains("does not match the data"),
        "{}",
        text(&out)
    );
    assert_eq!(w.current(), Some(v2.dir_name()));
    let status = w.status();
    assert_eq!(status["failures_today"], 0, "{status}");
    // The next poll reads a consistent pair and goes on.
    w.run_expect(&["update"], 0, &[]);
    assert_eq!(w.current(), Some(v3.dir_name()));
}

#[test]
fn a_server_answering_slowly_trips_the_stall_timeout_naming_the_url() {
    // nginx proxies /slow/ to a backend that accepts and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let w = World::with_nginx(
        Kind::Http,
        NginxOptions {
            extra_server_config: Some(format!(
                "location /slow/ {{ proxy_pass http://127.0.0.1:{port}/; proxy_read_timeout 60s; }}"
            )),
            ..NginxOptions::default()
        },
    );
    let url = format!("{}/slow", w.base_url());
    w.write_config(&[&format!("source = \"{url}\""), "stall_timeout_seconds = 1"]);
    let started = Instant::now();
    let out = w.run_expect(&["update"], 1, &[]);
    let elapsed = started.elapsed();
    let err = stderr(&out);
    assert!(err.contains("stall timeout"), "{err}");
    assert!(
        err.contains(&format!("{url}/channels/stable.json")),
        "{err}"
    );
    assert!(err.contains("sent nothing for 1 s"), "{err}");
    assert!(elapsed < Duration::from_secs(15), "took {elapsed:?}");
    // A stall is the network's passing state: it does not count.
    let status = w.status();
    assert_eq!(status["last_attempt"]["result"], "failed", "{status}");
    assert_eq!(status["failures_today"], 0, "{status}");
    assert_eq!(status["attempts_today"], 0, "{status}");
    drop(silent);
}

#[test]
fn http_errors_name_the_url_and_say_what_to_do() {
    let w = World::with_nginx(
        Kind::Http,
        NginxOptions {
            extra_server_config: Some("location /down/ { return 503; }".into()),
            ..NginxOptions::default()
        },
    );
    let v1 = w.build("1.0.0");
    w.publish(&v1, &[]);
    // 5xx: the server is failing; try again later, not counted.
    w.write_config(&[&format!("source = \"{}/down\"", w.base_url())]);
    let out = w.run_expect(&["update"], 1, &[]);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{}/down/channels/stable.json", w.base_url())),
        "{err}"
    );
    assert!(err.contains("HTTP 503 Service Unavailable"), "{err}");
    assert!(err.contains("try again later"), "{err}");
    w.write_config(&[]);
    // 404: a channel the repository does not have.
    w.write_config(&["channel = \"beta\""]);
    let out = w.run_expect(&["update"], 1, &[]);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{}/channels/beta.json", w.base_url())),
        "{err}"
    );
    assert!(err.contains("HTTP 404"), "{err}");
    assert!(
        err.contains("check update.source and update.channel"),
        "{err}"
    );
    // Connection refused: nothing listens there.
    let closed = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    w.write_config(&[&format!("source = \"http://127.0.0.1:{closed}/repo\"")]);
    let out = w.run_expect(&["update"], 1, &[]);
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "http://127.0.0.1:{closed}/repo/channels/stable.json"
        )),
        "{err}"
    );
    assert!(err.contains("connection refused"), "{err}");
    // DNS: a name that cannot resolve.
    w.write_config(&[
        "source = \"http://slipway-test.invalid/repo\"",
        "connect_timeout_seconds = 3",
    ]);
    let out = w.run_expect(&["update"], 1, &[]);
    let err = stderr(&out);
    assert!(
        err.contains("http://slipway-test.invalid/repo/channels/stable.json"),
        "{err}"
    );
    assert!(
        err.contains("DNS") || err.contains("connect timeout"),
        "{err}"
    );
    // A bad URL is a usage error.
    w.write_config(&["source = \"https://user:pw@host/repo\""]);
    let out = w.run_expect(&["update"], 2, &[]);
    assert!(stderr(&out).contains("token_file"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("user:pw"), "{}", stderr(&out));
    // None of these counts against the daily limits: the network's passing
    // state, and a source this host cannot use (404), are no failures.
    let status = w.status();
    assert_eq!(status["failures_today"], 0, "{status}");
    assert_eq!(status["last_attempt"]["cause"], "network", "{status}");
}

#[test]
fn the_bearer_token_is_sent_and_never_leaked() {
    const TOKEN: &str = "s3cr3t-read-token-7f1c";
    let w = World::with_nginx(
        Kind::Http,
        NginxOptions {
            extra_server_config: Some(format!(
                "if ($http_authorization != \"Bearer {TOKEN}\") {{ return 401; }}"
            )),
            ..NginxOptions::default()
        },
    );
    let v1 = w.build("1.0.0");
    let v2 = w.build("2.0.0");
    w.publish(&v1, &[]);
    let token_file = w.path("token");
    let mut outputs = Vec::new();

    // A wrong token: 401, the hint names token_file, the token is not shown.
    fs::write(&token_file, "wrong-token-aa11\n").expect("token");
    w.write_config(&[&format!("token_file = \"{}\"", token_file.display())]);
    let out = w.run_expect(&["update"], 1, &[]);
    assert!(stderr(&out).contains("HTTP 401"), "{}", text(&out));
    assert!(
        stderr(&out).contains("check update.token_file"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("wrong-token-aa11"), "{}", text(&out));
    outputs.push(text(&out));

    fs::write(&token_file, format!("{TOKEN}\n")).expect("token");
    outputs.push(text(&w.run_expect(&["update", "--verbose"], 0, &[])));
    w.publish(&v2, &[]);
    outputs.push(text(&w.run_expect(&["check", "--verbose"], 0, &[])));
    bot_host::require_fault_injection();
    {
        // Killed right after the download: a journal is left behind.
        let out = w.run(
            &["update", "--verbose"],
            &[("SLIPWAY_FAULT_AFTER".into(), "Verify".into())],
        );
        assert_ne!(out.status.code(), Some(0));
        outputs.push(text(&out));
        let journal = fs::read_to_string(w.root().join("state/journal.json")).expect("journal");
        assert!(!journal.contains(TOKEN), "{journal}");
    }
    outputs.push(text(&w.run_expect(&["update", "--verbose"], 0, &[])));
    outputs.push(text(&w.run_expect(&["status", "--json"], 0, &[])));
    outputs.push(text(&w.run_expect(&["history", "--json"], 0, &[])));
    assert_eq!(w.current(), Some(v2.dir_name()));

    // nginx saw the header on every request that got through.
    let log = w.nginx().access_log_entries().expect("log");
    let ok: Vec<_> = log.iter().filter(|e| e.status != 401).collect();
    assert!(ok.len() >= 5, "{log:?}");
    for e in &ok {
        assert_eq!(
            e.authorization.as_deref(),
            Some(format!("Bearer {TOKEN}").as_str()),
            "{e:?}"
        );
    }
    // ...and it appears nowhere slipway writes or prints.
    for o in &outputs {
        assert!(!o.contains(TOKEN), "the token leaked into the output:\n{o}");
    }
    for dir in [w.root(), w.path("data")] {
        for entry in walkdir::WalkDir::new(&dir) {
            let entry = entry.expect("walk");
            if entry.file_type().is_file() {
                let bytes = fs::read(entry.path()).expect("read");
                assert!(
                    !bytes
                        .windows(TOKEN.len())
                        .any(|win| win == TOKEN.as_bytes()),
                    "the token leaked into {}",
                    entry.path().display()
                );
            }
        }
    }
}

/// A private CA and a certificate for 127.0.0.1, made with the openssl CLI.
fn make_tls_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.pem");
    let key = dir.join("server.key");
    let csr = dir.join("server.csr");
    let cert = dir.join("server.pem");
    let ext = dir.join("server.ext");
    fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n",
    )
    .expect("ext");
    let openssl = |args: &[&str]| {
        run_ok(Command::new("openssl").args(args));
    };
    let s = |p: &Path| p.to_string_lossy().into_owned();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &s(&ca_key),
        "-out",
        &s(&ca),
        "-days",
        "2",
        "-subj",
        "/CN=slipway test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &s(&key),
        "-out",
        &s(&csr),
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &s(&csr),
        "-CA",
        &s(&ca),
        "-CAkey",
        &s(&ca_key),
        "-CAcreateserial",
        "-out",
        &s(&cert),
        "-days",
        "2",
        "-extfile",
        &s(&ext),
    ]);
    (ca, cert, key)
}

#[test]
fn https_with_a_private_ca_works_and_an_untrusted_certificate_names_the_url() {
    let tls = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = make_tls_files(tls.path());
    let tls_port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let w = World::with_nginx(
        Kind::Http,
        NginxOptions {
            extra_server_config: Some(format!(
                "listen 127.0.0.1:{tls_port} ssl; ssl_certificate {}; ssl_certificate_key {};",
                cert.display(),
                key.display()
            )),
            ..NginxOptions::default()
        },
    );
    let url = format!("https://127.0.0.1:{tls_port}");
    w.write_config(&[&format!("source = \"{url}\"")]);
    let v1 = w.build("1.0.0");
    w.publish(&v1, &[]);
    // Without the CA: the system roots do not trust the certificate.
    let out = w.run_expect(&["update"], 1, &[]);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{url}/channels/stable.json")),
        "{err}"
    );
    assert!(err.contains("TLS failed"), "{err}");
    assert!(err.contains("SSL_CERT_FILE"), "{err}");
    // With the private CA as the trust store, the update goes through.
    let env = [("SSL_CERT_FILE".to_string(), ca.display().to_string())];
    w.run_expect(&["update"], 0, &env);
    assert_eq!(w.current(), Some(v1.dir_name()));
}

// ---------------------------------------------------------------------------
// Key rotation
// ---------------------------------------------------------------------------

#[test]
fn key_rotation_moves_hosts_to_the_new_key_and_removing_the_old_key_revokes_it() {
    let w = World::new(Kind::Http);
    let v1 = w.build("1.0.0");
    w.publish(&v1, &[]);
    w.run_expect(&["update"], 0, &[]);

    // The publisher introduces key B with the trusted key A...
    let new_keys = w.path("keys-b");
    run_ok(Command::new(pack_bin()).args([
        "keygen",
        "--unencrypted",
        "--out-dir",
        &new_keys.to_string_lossy(),
    ]));
    let out = run_ok(
        Command::new(pack_bin())
            .args(["rotate-key", "--json", "--repo"])
            .arg(w.repo())
            .arg("--key")
            .arg(w.path("keys/slipway.key"))
            .arg("--new-pubkey")
            .arg(new_keys.join("slipway.pub")),
    );
    let rotated: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let b = rotated["new_key"].as_str().expect("new key id").to_string();
    assert_eq!(rotated["introduced_by"], w.key.key_id().to_string());
    assert_eq!(rotated["app"], "bot");
    assert!(w
        .repo()
        .join(format!("keys/rotation-{b}.json.minisig"))
        .is_file());

    // ...then signs and publishes with B only (extending A's index).
    let v2 = w.build_with(
        "2.0.0",
        Recipe::default(),
        Some(&new_keys.join("slipway.key")),
    );
    run_ok(
        Command::new(pack_bin())
            .args(["publish", "--repo"])
            .arg(w.repo())
            .args(["--channel", "stable", "--key"])
            .arg(new_keys.join("slipway.key"))
            .arg(v2.id.to_string()),
    );
    let idx = w.repo().join("channels/stable.json.minisig");
    assert!(fs::read_to_string(&idx).expect("sig").contains(&b));

    // The host, trusting A only, learns B on its next poll.
    let out = w.run_expect(&["update"], 0, &[]);
    assert!(
        stderr(&out).contains(&format!("trusting release key {b}")),
        "{}",
        text(&out)
    );
    assert_eq!(w.current(), Some(v2.dir_name()));
    let trust: serde_json::Value =
        serde_json::from_slice(&w.state_file("trust.json").expect("trust")).expect("json");
    assert_eq!(trust["learned_keys"][0]["key_id"], b.as_str(), "{trust}");
    assert_eq!(
        trust["learned_keys"][0]["introduced_by"],
        w.key.key_id().to_string()
    );

    // An attacker's key cannot introduce itself.
    run_ok(Command::new(pack_bin()).args([
        "keygen",
        "--unencrypted",
        "--out-dir",
        &w.path("keys-evil").to_string_lossy(),
    ]));
    let evil = SigningKey::load(&w.path("keys-evil/slipway.key"), None).expect("evil");
    // A statement naming A as the introducer, but signed by the attacker.
    let forged = slipway_formats::rotation::KeyRotation::new(
        "bot",
        evil.public_key(),
        w.key.key_id(),
        now(),
    );
    let bytes = forged.to_bytes();
    let sig = evil
        .sign_bytes(&bytes, &forged.comment().to_string())
        .expect("sign");
    let rel = format!("keys/rotation-{}.json", evil.key_id());
    fs::write(w.repo().join(&rel), &bytes).expect("write");
    fs::write(w.repo().join(format!("{rel}.minisig")), sig).expect("write");
    let mut idx = w.index(&w.repo());
    idx.version += 1;
    w.put_index_signed_by(&w.repo(), &idx, &evil);
    let out = w.run_expect(&["update"], 1, &[]);
    assert!(stderr(&out).contains("does not trust"), "{}", text(&out));
    assert!(stderr(&out).contains(&rel), "{}", text(&out));

    // Put B's index back; then remove A from the configuration: B was only
    // trusted through A, so it is not trusted any more.
    let mut idx = w.index(&w.repo());
    idx.version += 1;
    let b_key = SigningKey::load(&new_keys.join("slipway.key"), None).expect("b");
    w.put_index_signed_by(&w.repo(), &idx, &b_key);
    w.run_expect(&["update"], 0, &[]);
    w.write_config(&[&format!(
        "public_keys = [\"{}\"]",
        w.path("keys-evil/slipway.pub").display()
    )]);
    let out = w.run_expect(&["check"], 1, &[]);
    assert!(stderr(&out).contains("does not trust"), "{}", text(&out));
    // Trusting B directly works without A.
    w.write_config(&[&format!(
        "public_keys = [\"{}\"]",
        new_keys.join("slipway.pub").display()
    )]);
    w.run_expect(&["check"], 0, &[]);
}

/// A new unencrypted key pair in `<world>/<name>/slipway.{key,pub}`.
fn keygen(w: &World, name: &str) -> (PathBuf, SigningKey) {
    let dir = w.path(name);
    run_ok(Command::new(pack_bin()).args([
        "keygen",
        "--unencrypted",
        "--out-dir",
        &dir.to_string_lossy(),
    ]));
    let key = SigningKey::load(&dir.join("slipway.key"), None).expect("load key");
    (dir, key)
}

/// `slipway-pack rotate-key`: `key_file` signs a statement introducing
/// `new_pub` for the app `bot`.
fn rotate(w: &World, key_file: &Path, new_pub: &Path) {
    run_ok(
        Command::new(pack_bin())
            .args(["rotate-key", "--app", "bot", "--repo"])
            .arg(w.repo())
            .arg("--key")
            .arg(key_file)
            .arg("--new-pubkey")
            .arg(new_pub),
    );
}

fn public_keys(keys: &[&Path]) -> String {
    let list: Vec<String> = keys
        .iter()
        .map(|k| format!("\"{}\"", k.join("slipway.pub").display()))
        .collect();
    format!("public_keys = [{}]", list.join(", "))
}

#[test]
fn a_key_removed_from_the_configuration_is_never_learned_again_from_an_old_statement() {
    let w = World::new(Kind::Http);
    let a_dir = w.path("keys");
    let (b_dir, _) = keygen(&w, "keys-b");
    // The host trusts A and B; A signs v1 and the index.
    w.write_config(&[&public_keys(&[&a_dir, &b_dir])]);
    let v1 = w.build("1.0.0");
    w.publish(&v1, &[]);
    w.run_expect(&["update"], 0, &[]);
    assert_eq!(w.current(), Some(v1.dir_name()));
    // An old statement B -> A (from when the publisher moved from B to A)
    // is still served in keys/.
    rotate(&w, &b_dir.join("slipway.key"), &a_dir.join("slipway.pub"));
    let a = w.key.key_id().to_string();
    assert!(w.repo().join(format!("keys/rotation-{a}.json")).is_file());
    // The operator revokes A: the configuration lists B only.
    w.write_config(&[&public_keys(&[&b_dir])]);
    // Whoever holds A signs a newer index offering v2.
    let v2 = w.build("2.0.0");
    w.publish(&v2, &[]);
    for args in [&["check"][..], &["update"][..]] {
        let out = w.run_expect(args, 1, &[]);
        let all = text(&out);
        assert!(
            all.contains(&format!("key {a} is retired on this host")),
            "{all}"
        );
        assert!(all.contains("removed from update.public_keys"), "{all}");
        assert!(!all.contains(&format!("trusting release key {a}")), "{all}");
    }
    assert_eq!(w.current(), Some(v1.dir_name()));
    let trust: serde_json::Value =
        serde_json::from_slice(&w.state_file("trust.json").expect("trust")).expect("json");
    assert!(
        trust.get("learned_keys").is_none(),
        "A was not learned: {trust}"
    );
    // Listing A again is how an operator trusts it again.
    w.write_config(&[&public_keys(&[&a_dir, &b_dir])]);
    w.run_expect(&["update"], 0, &[]);
    assert_eq!(w.current(), Some(v2.dir_name()));
}

#[test]
fn a_revoked_key_is_never_learned_again_even_when_a_trusted_key_introduced_it() {
    let w = World::new(Kind::Local);
    let a_dir = w.path("keys");
    let (b_dir, _) = keygen(&w, "keys-b");
    // The host only ever listed B; B introduced A, which signs the index.
    w.write_config(&[&public_keys(&[&b_dir])]);
    rotate(&w, &b_dir.join("slipway.key"), &a_dir.join("slipway.pub"));
    let v1 = w.build("1.0.0");
    w.publish(&v1, &[]);
    let a = w.key.key_id().to_string();
    let out = w.run_expect(&["update"], 0, &[]);
    assert!(
        stderr(&out).contains(&format!("trusting release key {a}")),
        "{}",
        text(&out)
    );
    // A is revoked by id: not trusted any more, though B still vouches for it.
    let revoked = format!("revoked_keys = [\"{a}\"]");
    w.write_config(&[&public_keys(&[&b_dir]), &revoked]);
    let v2 = w.build("2.0.0");
    w.publish(&v2, &[]);
    let out = w.run_expect(&["update"], 1, &[]);
    let all = text(&out);
    assert!(all.contains("listed in update.revoked_keys"), "{all}");
    assert!(
        all.contains(&format!("key {a} is retired on this host")),
        "{all}"
    );
    assert_eq!(w.current(), Some(v1.dir_name()));
    // A released archive signed by A is refused too.
    let archive = w.repo().join("releases").join(v2.id.archive_file_name());
    w.run_expect(&["install", &archive.to_string_lossy()], 1, &[]);
    // Dropping the revocation does not bring A back: it stays retired.
    w.write_config(&[&public_keys(&[&b_dir])]);
    let out = w.run_expect(&["update"], 1, &[]);
    assert!(
        text(&out).contains(&format!("key {a} is retired on this host")),
        "{}",
        text(&out)
    );
    assert_eq!(w.current(), Some(v1.dir_name()));
}

// ---------------------------------------------------------------------------
// Rollout
// ---------------------------------------------------------------------------

/// A machine id whose bucket for `id` is inside (`true`) or outside a
/// rollout of `percent`.
fn machine_id(id: &ReleaseId, percent: u8, inside: bool) -> String {
    (0..10_000)
        .map(|i| format!("{i:032x}"))
        .find(|m| slipway_formats::rollout::takes_release(m, id, percent, false) == inside)
        .expect("a machine id")
}

#[test]
fn rollout_30_skips_a_host_outside_the_share_and_a_canary_takes_it() {
    let w = World::new(Kind::Http);
    let v1 = w.build("1.0.0");
    let v2 = w.build("2.0.0");
    w.publish(&v1, &[]);
    w.run_expect(&["update"], 0, &[]);
    w.publish(&v2, &["--rollout", "30"]);

    let outside = machine_id(&v2.id, 30, false);
    w.write_config(&[&format!("machine_id = \"{outside}\"")]);
    for _ in 0..2 {
        // The same id decides the same way every time.
        let out = w.run_expect(&["update"], 0, &[]);
        assert!(stdout(&out).contains("not in rollout"), "{}", text(&out));
        assert!(stdout(&out).contains("rolled out to 30%"), "{}", text(&out));
        assert_eq!(w.current(), Some(v1.dir_name()));
    }
    let inside = machine_id(&v2.id, 30, true);
    w.write_config(&[&format!("machine_id = \"{inside}\"")]);
    let out = w.run_expect(&["check", "--json"], 0, &[]);
    let check: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(check["update_available"], true, "{check}");

    w.write_config(&[&format!("machine_id = \"{outside}\""), "canary = true"]);
    w.run_expect(&["update"], 0, &[]);
    assert_eq!(w.current(), Some(v2.dir_name()));
}

#[test]
fn rollout_30_takes_about_30_percent_of_1000_machine_ids_stably() {
    let id = ReleaseId::of_bytes(b"any release");
    let taken: Vec<bool> = (0..1000)
        .map(|i| {
            let m = format!("{:032x}", 0x5eed_0000_u64 * 7919 + i);
            slipway_formats::rollout::takes_release(&m, &id, 30, false)
        })
        .collect();
    let n = taken.iter().filter(|t| **t).count();
    assert!((250..=350).contains(&n), "{n} of 1000 took a 30% release");
    // The select_release the CLI uses agrees, machine by machine.
    let mut index = ChannelIndex::new("bot", "stable", days_from_now(30));
    index.version = 1;
    let mut release = Built {
        version: "2.0.0".into(),
        id,
        size: 1,
    }
    .listed();
    release.rollout = 30;
    index.insert_release(release).expect("insert");
    let state = slipway::state::HostState::default();
    let running: slipway_formats::Version = "1.0.0".parse().expect("v");
    for (i, want) in taken.iter().enumerate() {
        let m = format!("{:032x}", 0x5eed_0000_u64 * 7919 + i as u64);
        let sel = slipway::source::Selection {
            running: Some(&running),
            state: &state,
            machine_id: Some(&m),
            canary: false,
            force: false,
        };
        assert_eq!(
            slipway::source::select_release(&index, &sel).0.is_some(),
            *want
        );
    }
}

// ---------------------------------------------------------------------------
// Units
// ---------------------------------------------------------------------------

#[test]
fn units_pass_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIP: systemd-analyze is not installed");
        return;
    }
    let w = World::new(Kind::Local);
    let out_dir = w.path("units");
    fs::create_dir_all(&out_dir).expect("dir");
    for update in [vec!["interval_minutes = 60"], vec!["interval_seconds = 5"]] {
        w.write_config(&update);
        w.run_expect(&["units", "--write", &out_dir.to_string_lossy()], 0, &[]);
        let timer = fs::read_to_string(out_dir.join("slipway-update.timer")).expect("timer");
        assert!(timer.contains("RandomizedDelaySec="), "{timer}");
        assert!(timer.contains("Persistent=true"), "{timer}");
        let service = fs::read_to_string(out_dir.join("slipway-update.service")).expect("svc");
        assert!(service.contains("Type=oneshot"), "{service}");
        assert!(service.contains(" update --auto"), "{service}");
        let recover = fs::read_to_string(out_dir.join("slipway-recover.service")).expect("rec");
        assert!(recover.contains(" recover\n"), "{recover}");
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(out_dir.join("slipway-update.service"))
            .arg(out_dir.join("slipway-update.timer"))
            .arg(out_dir.join("slipway-recover.service"))
            .current_dir(&out_dir)
            .output()
            .expect("systemd-analyze");
        let err = String::from_utf8_lossy(&out.stderr);
        let complaints: Vec<&str> = err.lines().filter(|l| l.contains("slipway-")).collect();
        assert!(
            out.status.success() && complaints.is_empty(),
            "systemd-analyze verify: {}\n{err}",
            out.status
        );
    }
    let printed = w.run_expect(&["units"], 0, &[]);
    assert!(
        stdout(&printed).contains("OnUnitActiveSec=5s"),
        "{}",
        stdout(&printed)
    );
}

//! The host's configuration: `config/update.toml` (SPEC §5), extended.
//!
//! Loaded from `--config FILE`, else `$SLIPWAY_CONFIG`, else
//! `./config/update.toml`, else `/etc/slipway/update.toml`. Every section and
//! key is strict: an unknown key is an error naming the key and the file.
//! Environment overrides are applied on top: the seed's `BOT_AUTO_UPDATE`,
//! `BOT_UPDATE_INTERVAL`, `BOT_UPDATE_CHANNEL`, and `SLIPWAY_<SECTION>_<KEY>`
//! for any key (the value is read as a TOML value, else as a string).
//! Relative paths in the file are resolved against the file's directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use slipway_fs::{read_text_capped, ReadError};
use thiserror::Error;

/// The largest configuration file read. A real one is a few KiB.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The largest public key file read (a minisign `.pub` is about 100 bytes).
pub const MAX_KEY_FILE_BYTES: u64 = 16 * 1024;

/// Why the configuration could not be used. Exit code 2.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("no configuration file: looked for {0}; pass --config FILE or set SLIPWAY_CONFIG")]
    NotFound(String),
    /// The configuration file or a public key file it names could not be
    /// read: missing, not a regular file (a FIFO, a device, a symlink), or
    /// over [`MAX_CONFIG_BYTES`] / [`MAX_KEY_FILE_BYTES`].
    #[error("cannot read the {what}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: ReadError,
    },
    #[error("configuration {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

/// `[update]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateConfig {
    /// Auto-update on/off (the seed's `BOT_AUTO_UPDATE`); `slipway update
    /// --auto` skips when false. Manual commands still work.
    pub enabled: bool,
    pub channel: String,
    /// URL or local path of the release repository.
    pub source: Option<String>,
    /// Trusted minisign public keys (base64, or paths to `.pub` files).
    pub public_keys: Vec<String>,
    /// Key ids never trusted again, even when a rotation statement by a
    /// trusted key introduces them (see docs/trust.md).
    pub revoked_keys: Vec<String>,
    pub interval_minutes: u32,
    /// When false, an update is staged and checked, then waits for `slipway apply`.
    pub auto_restart: bool,
    /// The seed's `require_signed_tags` is the same key.
    #[serde(alias = "require_signed_tags")]
    pub require_signed: bool,
    pub max_attempts_per_day: u32,
    pub max_failures_per_day: u32,
    pub keep_releases: u32,
    /// Persistence snapshots kept in `backups/`.
    pub keep_snapshots: u32,
    /// A canary host takes every release at once, whatever its rollout.
    pub canary: bool,
    /// Overrides `/etc/machine-id` for the rollout bucket.
    pub machine_id: Option<String>,
    /// A file holding a read-only bearer token for the release host.
    pub token_file: Option<PathBuf>,
    /// HTTP sources: seconds to resolve and connect (TLS included).
    pub connect_timeout_seconds: u64,
    /// HTTP sources: a request that receives no byte for this long fails.
    pub stall_timeout_seconds: u64,
    /// HTTP sources: every request ends this long after it started, however
    /// steadily bytes arrive.
    pub request_deadline_seconds: u64,
    /// HTTP sources: no request of a run goes on past this long after the
    /// run's first request.
    pub run_deadline_seconds: u64,
    /// The timer's period in seconds, instead of `interval_minutes` (for
    /// tests and demos; `slipway units` only).
    pub interval_seconds: Option<u32>,
    /// Seconds a second run waits for the lock before exiting 5.
    pub lock_wait_seconds: u64,
    /// The clean-tree rule re-hashes every file of the running release
    /// instead of only those whose identity record differs.
    pub deep_clean_check: bool,
    /// Hours automatic updates may fail to install an offered newer release
    /// (for any reason) before status, the banner, journald and the metrics
    /// say updates have stalled.
    pub stalled_after_hours: u32,
    /// Days before the held channel index expires that hosts warn about it.
    pub expiry_warning_days: u32,
    /// Who the update units run as (`slipway units`): root, or the
    /// service's user.
    pub run_as: UpdaterUser,
}

/// `[update] run_as`: the user `slipway units` runs the updater as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdaterUser {
    /// root (the default): hooks still run as the service's user.
    Root,
    /// The service's user (`[service] user`, else the unit's `User=`): the
    /// install root must then belong to that user, and a polkit rule
    /// (`slipway units --polkit`) lets it restart the one unit.
    Service,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            enabled: true,
            channel: "stable".into(),
            source: None,
            public_keys: Vec::new(),
            revoked_keys: Vec::new(),
            interval_minutes: 60,
            auto_restart: true,
            require_signed: true,
            max_attempts_per_day: 3,
            max_failures_per_day: 2,
            keep_releases: 3,
            keep_snapshots: 3,
            canary: false,
            machine_id: None,
            token_file: None,
            connect_timeout_seconds: 10,
            stall_timeout_seconds: 30,
            request_deadline_seconds: 900,
            run_deadline_seconds: 1800,
            interval_seconds: None,
            lock_wait_seconds: 0,
            deep_clean_check: false,
            stalled_after_hours: 24,
            expiry_warning_days: 7,
            run_as: UpdaterUser::Root,
        }
    }
}

/// `[paths]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathsConfig {
    pub root: PathBuf,
    pub persistence: PathBuf,
    /// The persistence save must be younger than this; 0 disables the check.
    pub max_save_age_minutes: u32,
    /// Free space kept on top of what an update needs, in MiB.
    pub min_free_mib: u64,
}

impl Default for PathsConfig {
    fn default() -> Self {
        PathsConfig {
            root: PathBuf::from("/opt/bot"),
            persistence: PathBuf::from("/opt/bot/bot_persistence/default"),
            max_save_age_minutes: 30,
            min_free_mib: 64,
        }
    }
}

/// How the service is restarted and observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ManagerKind {
    Systemd,
    Command,
    None,
}

/// `[service]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    pub manager: ManagerKind,
    pub unit: String,
    /// `manager = "command"`: argv that restarts the service.
    pub restart: Vec<String>,
    /// `manager = "command"`: argv whose exit status 0 means "running".
    pub status: Vec<String>,
    pub health_url: Option<String>,
    pub health_timeout_seconds: u64,
    pub healthy_polls: u32,
    pub health_interval_ms: u64,
    /// Require the health answer to report the new version (JSON `version`).
    pub health_expect_version: bool,
    pub quiesce_url: Option<String>,
    pub quiesce: Vec<String>,
    /// A signal name (e.g. "SIGUSR1") sent to the service's main process.
    pub quiesce_signal: Option<String>,
    /// With a quiesce signal: the file whose appearance acknowledges it.
    pub quiesce_ack_file: Option<PathBuf>,
    pub quiesce_timeout_seconds: u64,
    pub resume_url: Option<String>,
    pub resume: Vec<String>,
    pub resume_signal: Option<String>,
    /// Ask the app to persist now, before the snapshot.
    pub save: Vec<String>,
    pub save_url: Option<String>,
    pub save_timeout_seconds: u64,
    /// The user the service runs as: the app's hooks run as it, and the
    /// directories slipway creates for the app belong to it. Unset: the
    /// systemd unit's `User=` (root for the other managers).
    pub user: Option<String>,
    /// The service's group (default: the unit's `Group=`, else the user's
    /// primary group).
    pub group: Option<String>,
    /// The first install (no release before it) enables the unit, so that
    /// the service starts again after a reboot (`manager = "systemd"`:
    /// `systemctl enable`). `false` leaves enabling to the operator.
    pub enable_on_install: bool,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            manager: ManagerKind::Systemd,
            unit: "aibot.service".into(),
            restart: Vec::new(),
            status: Vec::new(),
            health_url: None,
            health_timeout_seconds: 60,
            healthy_polls: 3,
            health_interval_ms: 1000,
            health_expect_version: false,
            quiesce_url: None,
            quiesce: Vec::new(),
            quiesce_signal: None,
            quiesce_ack_file: None,
            quiesce_timeout_seconds: 30,
            resume_url: None,
            resume: Vec::new(),
            resume_signal: None,
            save: Vec::new(),
            save_url: None,
            save_timeout_seconds: 60,
            user: None,
            group: None,
            enable_on_install: true,
        }
    }
}

/// Whether a new release starts under probation (`[health] probation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbationMode {
    /// When the release declares it (slipway.toml `[health] probation`).
    Release,
    /// Every release: the app honours the contract whatever it declares.
    Always,
    /// Never, whatever the release declares.
    Never,
}

/// What a flip back does with the data the failed release left
/// (`[health] restore_data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreData {
    /// Restore the pre-update snapshot only when the new release changed
    /// the schema (migrated): the old release cannot read the new data.
    /// Otherwise the data the new release wrote stays.
    SchemaChanged,
    /// Restore the snapshot whenever the data changed since it.
    Always,
    /// Never restore: the data stays as the failed release left it.
    Never,
}

/// `[health]`: how a new release proves itself before it trades, and what
/// a flip back does with its data.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    pub probation: ProbationMode,
    /// Under probation, the gate passes no sooner than this after the
    /// restart, however many good answers came before.
    pub probation_min_seconds: u64,
    /// Fields the JSON health answer must carry with exactly these values
    /// (`{ mode = "live", region = "eu" }`), on top of `version`
    /// (`service.health_expect_version`) and, under probation, `paused`.
    pub expect: std::collections::BTreeMap<String, serde_json::Value>,
    pub restore_data: RestoreData,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            probation: ProbationMode::Release,
            probation_min_seconds: 0,
            expect: std::collections::BTreeMap::new(),
            restore_data: RestoreData::SchemaChanged,
        }
    }
}

/// `[hooks]`: the host's own checks, run in the staged release.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    pub check: Vec<Vec<String>>,
    pub timeout_seconds: u64,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            check: Vec::new(),
            timeout_seconds: 300,
        }
    }
}

/// `[report]`: where results are surfaced besides `status` and history.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportConfig {
    /// Send a structured entry per attempt to journald (when its socket exists).
    pub journald: bool,
    /// Extra copy of the dashboard banner (besides `<root>/state/banner.txt`).
    pub banner_file: Option<PathBuf>,
    /// Prometheus textfile-collector file (besides `<root>/state/slipway.prom`).
    pub metrics_file: Option<PathBuf>,
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            journald: true,
            banner_file: None,
            metrics_file: None,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub update: UpdateConfig,
    pub paths: PathsConfig,
    pub service: ServiceConfig,
    pub health: HealthConfig,
    pub hooks: HooksConfig,
    pub report: ReportConfig,
    /// The file this was loaded from (not a key).
    #[serde(skip)]
    pub file: PathBuf,
}

const SECTIONS: [&str; 6] = ["update", "paths", "service", "health", "hooks", "report"];

impl Config {
    /// Finds the configuration file by the rule of SPEC §5.
    pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, ConfigError> {
        if let Some(p) = explicit {
            return Ok(p.to_path_buf());
        }
        if let Some(p) = std::env::var_os("SLIPWAY_CONFIG").filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(p));
        }
        let candidates = [
            PathBuf::from("config/update.toml"),
            PathBuf::from("/etc/slipway/update.toml"),
        ];
        for c in &candidates {
            if c.is_file() {
                return Ok(c.clone());
            }
        }
        Err(ConfigError::NotFound(
            "$SLIPWAY_CONFIG, ./config/update.toml, /etc/slipway/update.toml".into(),
        ))
    }

    /// Loads, applies the process environment, resolves and validates. The
    /// file is read with [`slipway_fs::read_capped`]: a FIFO, a device or a
    /// symlink is refused at once, and nothing over [`MAX_CONFIG_BYTES`] is
    /// read.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            read_text_capped(path, MAX_CONFIG_BYTES).map_err(|source| ConfigError::Read {
                what: "configuration",
                path: path.to_path_buf(),
                source,
            })?;
        Self::from_toml(&text, path, std::env::vars())
    }

    /// Parses `text` (the contents of `path`) with `env` as the environment.
    pub fn from_toml(
        text: &str,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| invalid(e.to_string()))?;
        apply_env(&mut table, env)?;
        let mut config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| invalid(e.to_string()))?;
        config.file = path.to_path_buf();
        let base = path.parent().unwrap_or(Path::new("."));
        config.paths.root = resolve(base, &config.paths.root);
        config.paths.persistence = resolve(base, &config.paths.persistence);
        if let Some(t) = &config.update.token_file {
            config.update.token_file = Some(resolve(base, t));
        }
        if let Some(a) = &config.service.quiesce_ack_file {
            config.service.quiesce_ack_file = Some(resolve(base, a));
        }
        for file in [
            &mut config.report.banner_file,
            &mut config.report.metrics_file,
        ]
        .into_iter()
        .flatten()
        {
            *file = resolve(base, file);
        }
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    /// Rules that serde cannot express.
    fn validate(&self) -> Result<(), String> {
        slipway_formats::manifest::validate_name(&self.update.channel)
            .map_err(|e| format!("update.channel: {e}"))?;
        if !self.update.require_signed {
            return Err(
                "update.require_signed = false is refused: slipway only installs signed releases"
                    .into(),
            );
        }
        if self.service.manager == ManagerKind::Command && self.service.restart.is_empty() {
            return Err("service.manager = \"command\" needs service.restart = [argv]".into());
        }
        if self.service.manager == ManagerKind::Systemd && self.service.unit.is_empty() {
            return Err("service.manager = \"systemd\" needs service.unit".into());
        }
        if self.service.healthy_polls == 0 {
            return Err("service.healthy_polls must be at least 1".into());
        }
        let named = |v: &Option<String>| v.as_deref().is_some_and(|u| !u.trim().is_empty());
        if self.update.run_as == UpdaterUser::Service
            && !named(&self.service.user)
            && self.service.manager != ManagerKind::Systemd
        {
            return Err("update.run_as = \"service\" needs service.user (the user to run as), or service.manager = \"systemd\" to take the unit's User=".into());
        }
        if named(&self.service.group) && !named(&self.service.user) {
            return Err("service.group needs service.user: the group goes with a user".into());
        }
        if self.update.interval_seconds == Some(0) {
            return Err("update.interval_seconds must be at least 1".into());
        }
        if self.update.interval_minutes == 0 {
            return Err("update.interval_minutes must be at least 1".into());
        }
        // Durations: a value no operator means (i64::MAX seconds) would
        // overflow a deadline; 30 days is far beyond any sane setting.
        for (key, secs) in [
            (
                "update.connect_timeout_seconds",
                self.update.connect_timeout_seconds,
            ),
            (
                "update.stall_timeout_seconds",
                self.update.stall_timeout_seconds,
            ),
            (
                "update.request_deadline_seconds",
                self.update.request_deadline_seconds,
            ),
            (
                "update.run_deadline_seconds",
                self.update.run_deadline_seconds,
            ),
            ("update.lock_wait_seconds", self.update.lock_wait_seconds),
            (
                "service.health_timeout_seconds",
                self.service.health_timeout_seconds,
            ),
            (
                "service.health_interval_ms",
                self.service.health_interval_ms / 1000,
            ),
            (
                "service.quiesce_timeout_seconds",
                self.service.quiesce_timeout_seconds,
            ),
            (
                "service.save_timeout_seconds",
                self.service.save_timeout_seconds,
            ),
            ("hooks.timeout_seconds", self.hooks.timeout_seconds),
            (
                "health.probation_min_seconds",
                self.health.probation_min_seconds,
            ),
        ] {
            if secs > MAX_DURATION_SECONDS {
                return Err(format!(
                    "{key} is {secs} seconds; at most {MAX_DURATION_SECONDS} (30 days) is accepted"
                ));
            }
        }
        if let Some(url) = &self.service.health_url {
            let lower = url.trim().to_ascii_lowercase();
            if !(lower.starts_with("http://") || lower.starts_with("https://")) {
                return Err(format!(
                    "service.health_url = {url:?} is not an http:// or https:// URL"
                ));
            }
        }
        if self.service.health_interval_ms
            > self.service.health_timeout_seconds.saturating_mul(1000)
        {
            return Err(format!(
                "service.health_interval_ms = {} is longer than service.health_timeout_seconds = {}: the gate could never poll twice",
                self.service.health_interval_ms, self.service.health_timeout_seconds
            ));
        }
        for (key, value) in [
            ("quiesce_signal", &self.service.quiesce_signal),
            ("resume_signal", &self.service.resume_signal),
        ] {
            if let Some(v) = value.as_deref().filter(|v| !v.trim().is_empty()) {
                crate::quiesce::parse_signal(key, v).map_err(|e| e.to_string())?;
            }
        }
        if self.health.probation_min_seconds >= self.service.health_timeout_seconds
            && self.health.probation_min_seconds > 0
        {
            return Err(format!(
                "health.probation_min_seconds = {} is not shorter than service.health_timeout_seconds = {}: the gate could never pass",
                self.health.probation_min_seconds, self.service.health_timeout_seconds
            ));
        }
        if let Some(key) = self.health.expect.keys().find(|k| k.trim().is_empty()) {
            return Err(format!("health.expect has an empty field name {key:?}"));
        }
        if !self.health.expect.is_empty() && !named(&self.service.health_url) {
            return Err(
                "health.expect needs service.health_url: the fields are read from its JSON answer"
                    .into(),
            );
        }
        if self.health.probation == ProbationMode::Always {
            if let Some(missing) = self.probation_missing() {
                return Err(format!("health.probation = \"always\" needs {missing}"));
            }
        }
        self.check_persistence_apart()?;
        if self.update.keep_releases < 2 {
            return Err("update.keep_releases must be at least 2 (current and previous)".into());
        }
        for (i, argv) in self.hooks.check.iter().enumerate() {
            slipway_formats::manifest::validate_argv(argv)
                .map_err(|e| format!("hooks.check[{i}]: {e}"))?;
        }
        Ok(())
    }

    /// What this host lacks to run a release under probation, if anything:
    /// a health URL (whose JSON says `paused`) and a way to resume the app
    /// once the gate has passed.
    pub fn probation_missing(&self) -> Option<&'static str> {
        let named = |v: &Option<String>| v.as_deref().is_some_and(|u| !u.trim().is_empty());
        if !named(&self.service.health_url) {
            return Some("service.health_url (its JSON answer says whether the app is paused)");
        }
        let can_resume = named(&self.service.resume_url)
            || named(&self.service.quiesce_url)
            || !self.service.resume.is_empty()
            || named(&self.service.resume_signal);
        if !can_resume {
            return Some("a way to resume the app after the gate: service.resume_url (or quiesce_url), resume or resume_signal");
        }
        None
    }

    /// The persistence directory must be the app's own: not the root, not
    /// under one of slipway's own directories (a restore would rewind
    /// slipway's state, a `gc` would delete the data), and not above the
    /// root.
    fn check_persistence_apart(&self) -> Result<(), String> {
        let p = normalize(&self.paths.persistence);
        let root = normalize(&self.paths.root);
        let layout = crate::layout::Layout::new(&root);
        let mut own = vec![root.clone()];
        own.extend(layout.dirs());
        own.push(layout.current_link());
        own.push(layout.previous_link());
        if root.starts_with(&p) {
            return Err(format!(
                "paths.persistence = {} contains paths.root = {}: slipway's releases and state would be part of the app's data",
                p.display(),
                root.display()
            ));
        }
        for dir in own.iter().skip(1) {
            if p.starts_with(dir) {
                return Err(format!(
                    "paths.persistence = {} lies inside slipway's own {}: use a directory of the app's (for example {}/bot_persistence/default)",
                    p.display(),
                    dir.display(),
                    root.display()
                ));
            }
        }
        Ok(())
    }

    /// The trusted keys: each entry is a base64 key, or a path to a `.pub`
    /// file (relative to the config file).
    pub fn trusted_keys(&self) -> Result<slipway_formats::TrustedKeys, ConfigError> {
        if self.update.public_keys.is_empty() {
            return Err(ConfigError::Invalid {
                path: self.file.clone(),
                message: "update.public_keys is empty: list at least one trusted key (its base64 line, or the path of its .pub file)".into(),
            });
        }
        let base = self.file.parent().unwrap_or(Path::new("."));
        let mut texts = Vec::new();
        for entry in &self.update.public_keys {
            // A key is the base64 line of a .pub file (which may contain
            // '/'); anything that does not parse as one is a file path.
            if slipway_formats::PublicKey::from_base64(entry).is_ok() {
                texts.push(entry.clone());
            } else {
                let p = resolve(base, Path::new(entry));
                let text = read_text_capped(&p, MAX_KEY_FILE_BYTES).map_err(|source| {
                    ConfigError::Read {
                        what: "public key file named in update.public_keys",
                        path: p.clone(),
                        source,
                    }
                })?;
                texts.push(text);
            }
        }
        let keys =
            slipway_formats::TrustedKeys::parse_all(&texts).map_err(|e| ConfigError::Invalid {
                path: self.file.clone(),
                message: format!("update.public_keys: {e}"),
            })?;
        let revoked = self.revoked_key_ids()?;
        if let Some(k) = keys.keys().iter().find(|k| revoked.contains(&k.id())) {
            return Err(ConfigError::Invalid {
                path: self.file.clone(),
                message: format!(
                    "key {} is in both update.public_keys and update.revoked_keys; remove it from one",
                    k.id()
                ),
            });
        }
        Ok(keys)
    }

    /// `[update] revoked_keys`: key ids, as minisign and slipway print them.
    pub fn revoked_key_ids(&self) -> Result<Vec<slipway_formats::KeyId>, ConfigError> {
        self.update
            .revoked_keys
            .iter()
            .map(|text| {
                slipway_formats::KeyId::parse(text).map_err(|e| ConfigError::Invalid {
                    path: self.file.clone(),
                    message: format!("update.revoked_keys: {e}"),
                })
            })
            .collect()
    }
}

/// The most seconds any duration key accepts: 30 days.
pub const MAX_DURATION_SECONDS: u64 = 30 * 24 * 3600;

/// `p` without `.` components and with `..` applied lexically (the paths
/// of a configuration are compared before they exist).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Applies the seed's `BOT_*` names and `SLIPWAY_<SECTION>_<KEY>` overrides.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (var, raw) in env {
        let (section, key) = match var.as_str() {
            "BOT_AUTO_UPDATE" => ("update", "enabled".to_string()),
            "BOT_UPDATE_INTERVAL" => ("update", "interval_minutes".to_string()),
            "BOT_UPDATE_CHANNEL" => ("update", "channel".to_string()),
            _ => {
                let Some(rest) = var.strip_prefix("SLIPWAY_") else {
                    continue;
                };
                let lower = rest.to_ascii_lowercase();
                let Some(section) = SECTIONS
                    .iter()
                    .find(|s| lower.starts_with(&format!("{s}_")))
                else {
                    continue;
                };
                (*section, lower[section.len() + 1..].to_string())
            }
        };
        let value = env_value(&var, &raw, &key)?;
        check_env_value(&var, &raw, section, &key, &value)?;
        let entry = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => {
                t.insert(key, value);
            }
            _ => {
                return Err(ConfigError::Env {
                    var,
                    message: format!("[{section}] in the file is not a table"),
                })
            }
        }
    }
    Ok(())
}

/// Type-checks one override on its own, so that a bad value is reported
/// with the variable that carried it (`BOT_UPDATE_INTERVAL=abc`), not as a
/// fault of the file.
fn check_env_value(
    var: &str,
    raw: &str,
    section: &str,
    key: &str,
    value: &toml::Value,
) -> Result<(), ConfigError> {
    let mut probe = toml::Table::new();
    probe.insert(key.to_string(), value.clone());
    let probe = toml::Value::Table(probe);
    let checked = match section {
        "update" => probe.try_into::<UpdateConfig>().map(|_| ()),
        "paths" => probe.try_into::<PathsConfig>().map(|_| ()),
        "service" => probe.try_into::<ServiceConfig>().map(|_| ()),
        "hooks" => probe.try_into::<HooksConfig>().map(|_| ()),
        _ => probe.try_into::<ReportConfig>().map(|_| ()),
    };
    let message = match checked {
        Err(e) => Some(format!(
            "{raw:?} is not a valid {section}.{key}: {}",
            e.to_string()
                .lines()
                .next()
                .unwrap_or("invalid value")
                .trim()
        )),
        Ok(()) if key == "interval_minutes" && value.as_integer() == Some(0) => {
            Some("0 is not an interval: give at least 1 (minutes)".to_string())
        }
        Ok(()) => None,
    };
    match message {
        Some(message) => Err(ConfigError::Env {
            var: var.to_string(),
            message,
        }),
        None => Ok(()),
    }
}

/// Reads an environment value as TOML (numbers, booleans, arrays), the
/// seed's `0`/`1` for booleans, or else as a plain string.
fn env_value(var: &str, raw: &str, key: &str) -> Result<toml::Value, ConfigError> {
    if key == "enabled"
        || key.ends_with("auto_restart")
        || key == "canary"
        || key == "deep_clean_check"
    {
        return match raw.trim() {
            "1" | "true" | "yes" | "on" => Ok(toml::Value::Boolean(true)),
            "0" | "false" | "no" | "off" => Ok(toml::Value::Boolean(false)),
            other => Err(ConfigError::Env {
                var: var.to_string(),
                message: format!("{other:?} is not a boolean (use 0 or 1)"),
            }),
        };
    }
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => Ok(t
            .remove("v")
            .unwrap_or(toml::Value::String(raw.to_string()))),
        Err(_) => Ok(toml::Value::String(raw.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml(
            text,
            Path::new("/etc/slipway/update.toml"),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn the_spec_example_parses() {
        let c = parse(
            r#"
[update]
channel = "stable"
source = "https://releases.example.com/bot"
public_keys = ["RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3"]
interval_minutes = 60
auto_restart = true
require_signed = true
max_attempts_per_day = 3
max_failures_per_day = 2
keep_releases = 3
[paths]
root = "/opt/bot"
persistence = "/opt/bot/bot_persistence/default"
max_save_age_minutes = 30
[service]
manager = "systemd"
unit = "aibot.service"
health_url = "http://127.0.0.1:8080/health"
health_timeout_seconds = 60
healthy_polls = 3
quiesce_url = "http://127.0.0.1:8080/admin/quiesce"
save = ["python3", "-m", "bot.save"]
[hooks]
check = [["python3", "-m", "compileall", "-q", "."]]
"#,
            &[],
        )
        .expect("spec example");
        assert_eq!(c.service.unit, "aibot.service");
        assert_eq!(c.hooks.check.len(), 1);
        assert_eq!(c.trusted_keys().expect("keys").keys().len(), 1);
    }

    #[test]
    fn revoked_keys_are_key_ids_and_never_also_trusted() {
        let key = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";
        let id = slipway_formats::PublicKey::from_base64(key)
            .expect("key")
            .id()
            .to_string();
        let c = parse("[update]\nrevoked_keys = [\"0123456789abcdef\"]\n", &[]).expect("config");
        assert_eq!(
            c.revoked_key_ids().expect("ids")[0].to_string(),
            "0123456789ABCDEF"
        );
        let c = parse("[update]\nrevoked_keys = [\"RWQf\"]\n", &[]).expect("config");
        assert!(c.revoked_key_ids().is_err());
        let c = parse(
            &format!("[update]\npublic_keys = [\"{key}\"]\nrevoked_keys = [\"{id}\"]\n"),
            &[],
        )
        .expect("config");
        let e = c.trusted_keys().expect_err("both");
        assert!(e.to_string().contains("in both"), "{e}");
    }

    #[test]
    fn keys_with_a_slash_are_keys_not_paths() {
        let key = "RWRE994agAXmaCko30zaboG2y2oJCkWZBaqpWEBz/fCzic5/EyIVdDab";
        let c = parse(&format!("[update]\npublic_keys = [\"{key}\"]\n"), &[]).expect("config");
        assert_eq!(c.trusted_keys().expect("keys").keys()[0].to_base64(), key);
    }

    #[test]
    fn unknown_keys_name_the_key_and_file() {
        let err = parse("[update]\nchanel = \"x\"\n", &[]).expect_err("unknown");
        let msg = err.to_string();
        assert!(
            msg.contains("chanel") && msg.contains("/etc/slipway/update.toml"),
            "{msg}"
        );
        let err = parse("[updates]\n", &[]).expect_err("unknown section");
        assert!(err.to_string().contains("updates"));
    }

    #[test]
    fn environment_overrides_apply() {
        let c = parse(
            "[update]\nchannel = \"stable\"\n",
            &[
                ("BOT_AUTO_UPDATE", "0"),
                ("BOT_UPDATE_INTERVAL", "15"),
                ("BOT_UPDATE_CHANNEL", "beta"),
                ("SLIPWAY_SERVICE_HEALTHY_POLLS", "5"),
                ("SLIPWAY_PATHS_ROOT", "/srv/bot"),
                ("SLIPWAY_CONFIG", "/ignored"),
            ],
        )
        .expect("env");
        assert!(!c.update.enabled);
        assert_eq!(c.update.interval_minutes, 15);
        assert_eq!(c.update.channel, "beta");
        assert_eq!(c.service.healthy_polls, 5);
        assert_eq!(c.paths.root, PathBuf::from("/srv/bot"));
        let err = parse("", &[("SLIPWAY_UPDATE_NO_SUCH_KEY", "1")]).expect_err("unknown env key");
        assert!(err.to_string().contains("no_such_key"), "{err}");
        assert!(parse("", &[("BOT_AUTO_UPDATE", "maybe")]).is_err());
    }

    #[test]
    fn running_as_the_service_user_needs_a_user_to_run_as() {
        let err = parse(
            "[update]\nrun_as = \"service\"\n[service]\nmanager = \"none\"\n",
            &[],
        )
        .expect_err("no user");
        assert!(err.to_string().contains("update.run_as"), "{err}");
        parse(
            "[update]\nrun_as = \"service\"\n[service]\nmanager = \"none\"\nuser = \"bot\"\n",
            &[],
        )
        .expect("a named user");
        parse("[update]\nrun_as = \"service\"\n", &[]).expect("the unit's User=");
        assert!(parse("[service]\ngroup = \"bot\"\n", &[]).is_err());
    }

    #[test]
    fn health_settings_that_cannot_work_are_refused_naming_the_key() {
        let refused = |text: &str, names: &str| {
            let e = parse(text, &[]).expect_err(text).to_string();
            assert!(e.contains(names), "{text}: {e}");
        };
        // Probation needs a health answer to read "paused" from, and a way
        // to resume the app after the gate.
        refused("[health]\nprobation = \"always\"\n", "service.health_url");
        refused(
            "[service]\nhealth_url = \"http://127.0.0.1:8080/health\"\n[health]\nprobation = \"always\"\n",
            "resume",
        );
        let ok = "[service]\nhealth_url = \"http://127.0.0.1:8080/health\"\nquiesce_url = \"http://127.0.0.1:8080/admin/quiesce\"\n";
        let c = parse(&format!("{ok}[health]\nprobation = \"always\"\n"), &[]).expect("probation");
        assert_eq!(c.health.probation, ProbationMode::Always);
        // A minimum time the gate's deadline cannot hold.
        refused(
            &format!("{ok}health_timeout_seconds = 30\n[health]\nprobation_min_seconds = 30\n"),
            "health.probation_min_seconds",
        );
        // Fields to expect need an answer to read them from.
        refused("[health]\nexpect = { mode = \"live\" }\n", "health.expect");
        let c = parse(
            &format!("{ok}[health]\nexpect = {{ mode = \"live\" }}\nrestore_data = \"never\"\n"),
            &[],
        )
        .expect("expect");
        assert_eq!(
            c.health.expect.get("mode"),
            Some(&serde_json::json!("live"))
        );
        assert_eq!(c.health.restore_data, RestoreData::Never);
        refused("[health]\nrestore_data = \"sometimes\"\n", "restore_data");
    }

    #[test]
    fn unsigned_is_refused_and_paths_resolve_relative_to_the_file() {
        assert!(parse("[update]\nrequire_signed = false\n", &[]).is_err());
        let c = parse("[paths]\nroot = \"root\"\n", &[]).expect("relative");
        assert_eq!(c.paths.root, PathBuf::from("/etc/slipway/root"));
    }
    /// The reference in docs/configuration.md parses, and documents every key
    /// the code knows.
    #[test]
    fn values_that_cannot_work_are_refused_at_load_naming_the_key_or_variable() {
        let refused = |text: &str, env: &[(&str, &str)], names: &str| {
            let e = parse(text, env).expect_err(text).to_string();
            assert!(e.contains(names), "{text} {env:?}: {e}");
        };
        refused(
            "[service]\nhealth_url = \"ftp://127.0.0.1/health\"\n",
            &[],
            "service.health_url",
        );
        refused(
            "[service]\nhealth_interval_ms = 90000\nhealth_timeout_seconds = 60\n",
            &[],
            "service.health_interval_ms",
        );
        refused(
            "[service]\nquiesce_signal = \"SIGBOGUS\"\n",
            &[],
            "quiesce_signal",
        );
        refused(
            "[paths]\nroot = \"/opt/bot\"\npersistence = \"/opt/bot\"\n",
            &[],
            "paths.persistence",
        );
        refused(
            "[paths]\nroot = \"/opt/bot\"\npersistence = \"/opt/bot/state/data\"\n",
            &[],
            "slipway's own",
        );
        refused(
            "[paths]\nroot = \"/opt/bot\"\npersistence = \"/opt\"\n",
            &[],
            "contains paths.root",
        );
        refused(
            "[update]\ninterval_minutes = 0\n",
            &[],
            "update.interval_minutes",
        );
        refused("", &[("BOT_UPDATE_INTERVAL", "abc")], "BOT_UPDATE_INTERVAL");
        refused("", &[("BOT_UPDATE_INTERVAL", "0")], "BOT_UPDATE_INTERVAL");
        refused(
            "",
            &[("SLIPWAY_UPDATE_LOCK_WAIT_SECONDS", "9223372036854775807")],
            "update.lock_wait_seconds",
        );
        refused(
            "",
            &[("SLIPWAY_UPDATE_LOCK_WAIT_SECONDS", "-1")],
            "SLIPWAY_UPDATE_LOCK_WAIT_SECONDS",
        );
        // The seed's own file loads as written.
        let seed = "[update]\nchannel = \"main\"\ninterval_minutes = 60\nauto_restart = true\nrequire_signed_tags = true\nmax_failures_per_day = 2\n";
        let c = parse(seed, &[]).expect("the seed's config/update.toml");
        assert!(c.update.require_signed);
        assert_eq!(c.update.channel, "main");
        // ...and a host with no key is a configuration error, not a failure.
        assert!(matches!(c.trusted_keys(), Err(ConfigError::Invalid { .. })));
        // The spec's layout (persistence under the root, beside slipway's
        // own directories) is fine.
        parse(
            "[paths]\nroot = \"/opt/bot\"\npersistence = \"/opt/bot/bot_persistence/default\"\n",
            &[],
        )
        .expect("spec layout");
    }

    #[test]
    fn every_documented_key_parses() {
        let doc = include_str!("../../docs/configuration.md");
        let start = doc.find("```toml\n").expect("toml block") + 8;
        let end = start + doc[start..].find("```").expect("end of block");
        parse(&doc[start..end], &[]).expect("documented example parses");
        let defaults = serde_json::to_value(Config::default()).expect("json");
        for (section, keys) in defaults.as_object().expect("sections") {
            assert!(
                doc.contains(&format!("[{section}]")),
                "section [{section}] undocumented"
            );
            for key in keys.as_object().expect("keys").keys() {
                assert!(
                    doc.contains(&format!("{key} = ")),
                    "key {section}.{key} is not in docs/configuration.md"
                );
            }
        }
    }
}

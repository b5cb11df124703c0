//! Probation: a new release proves itself before it trades.
//!
//! The contract with the app (docs/probation.md): before slipway restarts
//! the service onto a new release under probation, it writes
//! `<persistence>/meta/probation.json`:
//!
//! ```json
//! {"version": "3.0.0", "release": "3.0.0-1a2b3c4d5e6f", "since": "2026-12-02T14:00:00Z"}
//! ```
//!
//! An app that starts and finds that file naming its own version starts
//! paused: it serves `/health` (with `"paused": true` in its JSON answer)
//! but places no order. The health gate then requires the app healthy *and*
//! paused; only once it passes does slipway remove the file and resume the
//! app through the quiesce contract (`resume_url`, `resume`,
//! `resume_signal`). A release that fails the gate traded nothing, so the
//! flip back loses nothing. The file is removed before any other release
//! is started (the flip back's old release starts live), and a file naming
//! another version is to be ignored by the app.

use std::ffi::OsStr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use slipway_formats::channel::Timestamp;
use slipway_formats::Manifest;

use crate::app_dir::{self, AppDirError};
use crate::app_user::AppUser;
use crate::config::{Config, ProbationMode};

/// The file's name in `<persistence>/meta/`.
pub const FILE: &str = "probation.json";

/// `meta/probation.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbationFile {
    /// The version that must start paused.
    pub version: String,
    /// Its directory under `releases/`.
    pub release: String,
    /// When slipway wrote the file.
    pub since: Timestamp,
}

/// Whether `manifest` starts under probation on this host: `[health]
/// probation` decides (`release`: as the release declares). `Err` says why
/// a release that asks for probation cannot have it here (the host lacks a
/// health URL or a way to resume the app); the caller warns and goes on
/// without it, since a release told to stay paused that cannot be resumed
/// would never trade.
pub fn applies(config: &Config, manifest: &Manifest) -> Result<bool, String> {
    let wanted = match config.health.probation {
        ProbationMode::Always => true,
        ProbationMode::Never => false,
        ProbationMode::Release => manifest.probation,
    };
    if !wanted {
        return Ok(false);
    }
    match config.probation_missing() {
        None => Ok(true),
        Some(missing) => Err(format!(
            "{} {} asks to start under probation, but this host has no {missing}; it starts without probation",
            manifest.app, manifest.version
        )),
    }
}

/// The file's path (for messages).
pub fn path(config: &Config) -> PathBuf {
    config.paths.persistence.join(app_dir::META_DIR).join(FILE)
}

/// Writes `meta/probation.json` (atomically, readable by the app, owned by
/// the service's user like the rest of `meta/`).
pub fn begin(
    config: &Config,
    owner: Option<&AppUser>,
    file: &ProbationFile,
) -> Result<(), AppDirError> {
    let meta = app_dir::ensure_persistence(&config.paths.persistence, owner)?.ensure_dir(
        OsStr::new(app_dir::META_DIR),
        0o755,
        owner,
    )?;
    let mut bytes = serde_json::to_vec_pretty(file).unwrap_or_default();
    bytes.push(b'\n');
    meta.write_file_atomic(OsStr::new(FILE), &bytes, 0o644)
}

/// Removes `meta/probation.json`; a missing file (or persistence) is fine.
pub fn end(config: &Config) -> Result<(), AppDirError> {
    let Some(persistence) = app_dir::open_persistence(&config.paths.persistence)? else {
        return Ok(());
    };
    let Some(meta) = persistence.open_dir(OsStr::new(app_dir::META_DIR))? else {
        return Ok(());
    };
    meta.remove_tree(OsStr::new(FILE))?;
    meta.sync()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path) -> Config {
        let mut c = Config::default();
        c.paths.persistence = dir.join("data");
        c.service.health_url = Some("http://127.0.0.1:8080/health".into());
        c.service.quiesce_url = Some("http://127.0.0.1:8080/admin/quiesce".into());
        c
    }

    fn manifest(probation: bool) -> Manifest {
        let mut m: Manifest = serde_json::from_value(serde_json::json!({
            "format": 1, "app": "bot", "version": "3.0.0", "channel": "stable",
            "created": 0, "schema_version": 1, "schema_min_compatible": 1, "files": []
        }))
        .expect("manifest");
        m.probation = probation;
        m
    }

    #[test]
    fn the_host_setting_decides_and_release_follows_the_manifest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = config(dir.path());
        assert_eq!(applies(&c, &manifest(true)), Ok(true));
        assert_eq!(applies(&c, &manifest(false)), Ok(false));
        c.health.probation = ProbationMode::Always;
        assert_eq!(applies(&c, &manifest(false)), Ok(true));
        c.health.probation = ProbationMode::Never;
        assert_eq!(applies(&c, &manifest(true)), Ok(false));
    }

    #[test]
    fn a_host_that_cannot_resume_the_app_does_not_start_it_paused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = config(dir.path());
        c.service.quiesce_url = None;
        let why = applies(&c, &manifest(true)).expect_err("no resume");
        assert!(why.contains("resume"), "{why}");
        let mut c = config(dir.path());
        c.service.health_url = None;
        let why = applies(&c, &manifest(true)).expect_err("no health url");
        assert!(why.contains("health_url"), "{why}");
    }

    #[test]
    fn begin_writes_the_file_and_end_removes_it_idempotently() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = config(dir.path());
        end(&c).expect("nothing to remove");
        let file = ProbationFile {
            version: "3.0.0".into(),
            release: "3.0.0-1a2b3c4d5e6f".into(),
            since: Timestamp::from_unix(1_800_000_000).expect("time"),
        };
        begin(&c, None, &file).expect("begin");
        let text = std::fs::read_to_string(path(&c)).expect("written");
        let back: ProbationFile = serde_json::from_str(&text).expect("json");
        assert_eq!(back, file);
        end(&c).expect("end");
        assert!(!path(&c).exists());
        end(&c).expect("again");
    }
}

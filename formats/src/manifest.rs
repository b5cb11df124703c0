//! `slipway/manifest.json`: what a release is, entry by entry.
//!
//! The manifest is the first entry of every archive. It is strict: unknown
//! fields are errors, and a `format` number other than [`MANIFEST_FORMAT`] is
//! refused before anything else is read, so a future format change cannot be
//! half-understood by an old installer. [`Manifest::parse`] returns only
//! manifests that pass [`Manifest::validate`]; the installer then checks the
//! archive against it entry by entry while unpacking.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::path::{self, PathError};
use crate::runtime_paths::RuntimePaths;
use crate::version::Version;

/// The manifest format this crate reads and writes.
pub const MANIFEST_FORMAT: u32 = 1;

/// The most entries a manifest may list.
pub const MAX_ENTRIES: usize = 200_000;

/// The top-level directories a release payload may use.
pub const PAYLOAD_ROOTS: [&str; 2] = ["app", "schema"];

/// Mode of a regular file that is not executable.
pub const MODE_FILE: u32 = 0o644;
/// Mode of an executable file.
pub const MODE_EXEC: u32 = 0o755;
/// Mode of every directory.
pub const MODE_DIR: u32 = 0o755;
/// Mode recorded for every symlink.
pub const MODE_SYMLINK: u32 = 0o777;

/// Why a manifest was refused. Each variant names the field or entry.
#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("manifest has no numeric \"format\" field")]
    MissingFormat,
    #[error("manifest format {found} is not supported (this slipway reads format {MANIFEST_FORMAT}); upgrade slipway to install this release")]
    UnsupportedFormat { found: u64 },
    #[error("manifest does not match format {MANIFEST_FORMAT}: {0}")]
    Schema(String),
    #[error("manifest field {field}: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("manifest entry {path:?}: {reason}")]
    Entry { path: String, reason: String },
    #[error("manifest entry path refused: {0}")]
    Path(#[from] PathError),
    #[error("manifest lists {0} entries; the limit is {MAX_ENTRIES}")]
    TooManyEntries(usize),
    #[error("manifest entries are not sorted bytewise or not unique: {prev:?} then {next:?}")]
    Unsorted { prev: String, next: String },
}

/// The kind of an entry. Nothing else is ever allowed into a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryType {
    File,
    Dir,
    Symlink,
}

impl fmt::Display for EntryType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntryType::File => "file",
            EntryType::Dir => "dir",
            EntryType::Symlink => "symlink",
        })
    }
}

/// A Unix permission mode, written in manifests as an octal string ("0644").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl Serialize for Mode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:04o}", self.0))
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() != 4 || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Err(serde::de::Error::custom(format!(
                "mode {s:?} is not four octal digits"
            )));
        }
        u32::from_str_radix(&s, 8)
            .map(Mode)
            .map_err(serde::de::Error::custom)
    }
}

/// One entry of the release tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: EntryType,
    pub mode: Mode,
    /// Size in bytes (files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Lowercase hex SHA-256 of the content (files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Link target (symlinks only), relative and inside the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl FileEntry {
    /// A directory entry.
    pub fn dir(path: impl Into<String>) -> Self {
        FileEntry {
            path: path.into(),
            kind: EntryType::Dir,
            mode: Mode(MODE_DIR),
            size: None,
            sha256: None,
            target: None,
        }
    }

    /// A regular file entry.
    pub fn file(path: impl Into<String>, executable: bool, size: u64, sha256: String) -> Self {
        FileEntry {
            path: path.into(),
            kind: EntryType::File,
            mode: Mode(if executable { MODE_EXEC } else { MODE_FILE }),
            size: Some(size),
            sha256: Some(sha256),
            target: None,
        }
    }

    /// A symlink entry.
    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> Self {
        FileEntry {
            path: path.into(),
            kind: EntryType::Symlink,
            mode: Mode(MODE_SYMLINK),
            size: None,
            sha256: None,
            target: Some(target.into()),
        }
    }

    fn refuse(&self, reason: impl Into<String>) -> ManifestError {
        ManifestError::Entry {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// Checks the entry on its own: path, type-specific fields, mode.
    fn validate_shape(&self) -> Result<(), ManifestError> {
        path::validate_entry_path(&self.path)?;
        let top = self.path.split('/').next().unwrap_or_default();
        if !PAYLOAD_ROOTS.contains(&top) {
            return Err(self.refuse(format!(
                "outside the payload roots {PAYLOAD_ROOTS:?} (slipway/ is reserved for the manifest)"
            )));
        }
        match self.kind {
            EntryType::File => {
                if self.size.is_none() {
                    return Err(self.refuse("file without a size"));
                }
                match &self.sha256 {
                    Some(h) if is_sha256_hex(h) => {}
                    Some(h) => {
                        return Err(
                            self.refuse(format!("sha256 {h:?} is not 64 lowercase hex digits"))
                        )
                    }
                    None => return Err(self.refuse("file without a sha256")),
                }
                if self.target.is_some() {
                    return Err(self.refuse("a file cannot have a target"));
                }
                if self.mode.0 != MODE_FILE && self.mode.0 != MODE_EXEC {
                    return Err(self.refuse(format!(
                        "mode {:04o} is not 0644 or 0755 (setuid, setgid, sticky and group/world-writable modes are refused)",
                        self.mode.0
                    )));
                }
            }
            EntryType::Dir => {
                if self.size.is_some() || self.sha256.is_some() || self.target.is_some() {
                    return Err(self.refuse("a directory has no size, sha256 or target"));
                }
                if self.mode.0 != MODE_DIR {
                    return Err(
                        self.refuse(format!("directory mode {:04o} is not 0755", self.mode.0))
                    );
                }
            }
            EntryType::Symlink => {
                if self.size.is_some() || self.sha256.is_some() {
                    return Err(self.refuse("a symlink has no size or sha256"));
                }
                if self.target.is_none() {
                    return Err(self.refuse("symlink without a target"));
                }
                if self.mode.0 != MODE_SYMLINK {
                    return Err(
                        self.refuse(format!("symlink mode {:04o} is not 0777", self.mode.0))
                    );
                }
            }
        }
        Ok(())
    }
}

/// Where the release was built from, when known.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// Commands the release asks the host to run, each an argv list run inside the
/// staged release directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Run after staging, before anything touches the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Vec<String>>,
    /// Run when the release's schema version is above the data's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrate: Option<Vec<String>>,
}

/// `slipway/manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub app: String,
    pub version: Version,
    pub channel: String,
    /// Seconds since the epoch used for every mtime (`SOURCE_DATE_EPOCH`).
    pub created: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceInfo>,
    pub schema_version: u32,
    pub schema_min_compatible: u32,
    #[serde(default)]
    pub hooks: Hooks,
    /// Globs of paths the app writes into its own release at run time
    /// (`**/__pycache__/**`): stray paths the clean-tree rule and `slipway
    /// verify` do not count as drift (see [`crate::runtime_paths`]).
    /// Omitted when empty, so a manifest without it is byte-identical to
    /// one written before the field existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtime_paths: Vec<String>,
    /// The release asks to be started under probation: told to stay paused
    /// (not trading) until it has passed the health gate (slipway.toml
    /// `[health] probation = true`; the host's `[health] probation` decides).
    /// Omitted when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub probation: bool,
    pub files: Vec<FileEntry>,
}

/// A manifest's fields about the release as a whole, without its file
/// list: what `status`, `gc` and a rollback's bookkeeping read from an
/// installed release, whose whole manifest was proven when it was staged.
/// `files` is skipped, never built: a few milliseconds for a 20,000-file
/// manifest, against about 25 for [`Manifest::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ManifestHead {
    pub format: u32,
    pub app: String,
    pub version: Version,
    pub channel: String,
    pub schema_version: u32,
    pub schema_min_compatible: u32,
}

impl ManifestHead {
    /// Parses the head of a manifest. The whole document must still be
    /// JSON (serde_json reads to its end); only the fields above are
    /// checked, and `format` must be this slipway's.
    pub fn parse(bytes: &[u8]) -> Result<ManifestHead, ManifestError> {
        let head: ManifestHead =
            serde_json::from_slice(bytes).map_err(|strict| Manifest::diagnose(bytes, strict))?;
        if head.format != MANIFEST_FORMAT {
            return Err(ManifestError::UnsupportedFormat {
                found: u64::from(head.format),
            });
        }
        Ok(head)
    }
}

impl Manifest {
    /// Parses and validates a manifest, straight into its types (one pass
    /// over the bytes, which matters for a 20,000-file manifest). When the
    /// strict parse fails, the `format` number is looked at so that a newer
    /// format gets a clear "upgrade slipway" rather than a complaint about a
    /// field this version has never heard of.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = match serde_json::from_slice(bytes) {
            Ok(m) => m,
            Err(strict) => return Err(Self::diagnose(bytes, strict)),
        };
        if manifest.format != MANIFEST_FORMAT {
            return Err(ManifestError::UnsupportedFormat {
                found: u64::from(manifest.format),
            });
        }
        manifest.validate()?;
        Ok(manifest)
    }

    /// The fields about the release as a whole ([`ManifestHead`]).
    pub fn head(&self) -> ManifestHead {
        ManifestHead {
            format: self.format,
            app: self.app.clone(),
            version: self.version.clone(),
            channel: self.channel.clone(),
            schema_version: self.schema_version,
            schema_min_compatible: self.schema_min_compatible,
        }
    }

    /// Why `bytes` are not a manifest of this format, `strict` being the
    /// strict parse's complaint: not JSON, no `format`, another format, or
    /// a schema error.
    fn diagnose(bytes: &[u8], strict: serde_json::Error) -> ManifestError {
        #[derive(Deserialize)]
        struct Head {
            #[serde(default)]
            format: Option<serde_json::Value>,
        }
        let head: Head = match serde_json::from_slice(bytes) {
            Ok(h) => h,
            Err(e) => return ManifestError::Json(e.to_string()),
        };
        match head.format.as_ref().and_then(serde_json::Value::as_u64) {
            None => ManifestError::MissingFormat,
            Some(found) if found != u64::from(MANIFEST_FORMAT) => {
                ManifestError::UnsupportedFormat { found }
            }
            Some(_) => ManifestError::Schema(strict.to_string()),
        }
    }

    /// The canonical bytes: pretty JSON with a trailing newline. Deterministic
    /// for a given manifest, so builds are reproducible.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing plain structs of strings and numbers cannot fail.
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Checks every rule a manifest must satisfy on its own: names, schema
    /// versions, hooks, runtime paths, and the entry list (path rules, sorted and unique,
    /// parents present as directories, nothing under a symlink, symlinks
    /// resolving inside the release without passing through another symlink).
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.format != MANIFEST_FORMAT {
            return Err(ManifestError::UnsupportedFormat {
                found: u64::from(self.format),
            });
        }
        validate_name(&self.app).map_err(|reason| ManifestError::Field {
            field: "app",
            reason,
        })?;
        validate_name(&self.channel).map_err(|reason| ManifestError::Field {
            field: "channel",
            reason,
        })?;
        if self.schema_min_compatible > self.schema_version {
            return Err(ManifestError::Field {
                field: "schema_min_compatible",
                reason: format!(
                    "{} is above schema_version {}",
                    self.schema_min_compatible, self.schema_version
                ),
            });
        }
        for (field, hook) in [
            ("hooks.check", &self.hooks.check),
            ("hooks.migrate", &self.hooks.migrate),
        ] {
            if let Some(argv) = hook {
                validate_argv(argv).map_err(|reason| ManifestError::Field { field, reason })?;
            }
        }
        self.runtime_paths()?;
        if self.files.len() > MAX_ENTRIES {
            return Err(ManifestError::TooManyEntries(self.files.len()));
        }
        let mut kinds: HashMap<&str, EntryType> = HashMap::with_capacity(self.files.len());
        for pair in self.files.windows(2) {
            if pair[0].path.as_bytes() >= pair[1].path.as_bytes() {
                return Err(ManifestError::Unsorted {
                    prev: pair[0].path.clone(),
                    next: pair[1].path.clone(),
                });
            }
        }
        for entry in &self.files {
            entry.validate_shape()?;
            // Sorted order puts every ancestor before its descendants.
            for ancestor in path::ancestors(&entry.path) {
                match kinds.get(ancestor) {
                    Some(EntryType::Dir) => {}
                    Some(EntryType::Symlink) => {
                        return Err(entry.refuse(format!("lies under the symlink {ancestor:?}")))
                    }
                    Some(EntryType::File) => {
                        return Err(entry.refuse(format!("lies under the file {ancestor:?}")))
                    }
                    None => {
                        return Err(entry.refuse(format!(
                            "its parent directory {ancestor:?} is not listed before it"
                        )))
                    }
                }
            }
            if path::parent(&entry.path).is_none() && entry.kind != EntryType::Dir {
                return Err(entry.refuse("a top-level entry must be a directory"));
            }
            kinds.insert(&entry.path, entry.kind);
        }
        for entry in self.files.iter().filter(|e| e.kind == EntryType::Symlink) {
            let target = entry.target.as_deref().unwrap_or_default();
            path::resolve_symlink_target(&entry.path, target, |through| {
                match kinds.get(through) {
                    Some(EntryType::Symlink) => Err(PathError::TargetEscapes {
                        link: entry.path.clone(),
                        target: target.to_string(),
                    }),
                    _ => Ok(()),
                }
            })?;
        }
        Ok(())
    }

    /// The compiled `runtime_paths` (empty when none are declared).
    pub fn runtime_paths(&self) -> Result<RuntimePaths, ManifestError> {
        RuntimePaths::new(&self.runtime_paths).map_err(|e| ManifestError::Field {
            field: "runtime_paths",
            reason: e.to_string(),
        })
    }

    /// The entry at `path`, if listed.
    pub fn entry(&self, path: &str) -> Option<&FileEntry> {
        self.files
            .binary_search_by(|e| e.path.as_bytes().cmp(path.as_bytes()))
            .ok()
            .map(|i| &self.files[i])
    }

    /// The sum of all file sizes: the most an unpack may write.
    pub fn total_size(&self) -> u64 {
        self.files
            .iter()
            .filter_map(|e| e.size)
            .fold(0u64, u64::saturating_add)
    }

    /// The directory name a release unpacks to: `<version>-<id12>`.
    pub fn release_dir_name(&self, id: &crate::ReleaseId) -> String {
        format!("{}-{}", self.version, id.short())
    }
}

/// The rule for app and channel names: 1 to 64 characters of `a-z 0-9 . _ -`,
/// starting with a letter or digit. They become parts of file names and URLs.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok_len = !name.is_empty() && name.len() <= 64;
    let ok_first = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok_rest = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok_len && ok_first && ok_rest {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must be 1-64 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
        ))
    }
}

/// A hook's argv: a non-empty program and no NUL bytes anywhere.
pub fn validate_argv(argv: &[String]) -> Result<(), String> {
    match argv.first() {
        None => Err("empty command".to_string()),
        Some(p) if p.is_empty() => Err("empty program name".to_string()),
        _ if argv.iter().any(|a| a.contains('\0')) => {
            Err("argument contains a NUL byte".to_string())
        }
        _ => Ok(()),
    }
}

/// Whether `s` is 64 lowercase hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            app: "bot".into(),
            version: "1.2.0".parse().expect("version"),
            channel: "stable".into(),
            created: 0,
            source: Some(SourceInfo {
                commit: Some("abc123".into()),
                tag: Some("v1.2.0".into()),
            }),
            schema_version: 2,
            schema_min_compatible: 1,
            hooks: Hooks {
                check: Some(vec!["python3".into(), "-m".into(), "compileall".into()]),
                migrate: None,
            },
            runtime_paths: vec![],
            probation: false,
            files: vec![
                FileEntry::dir("app"),
                FileEntry::file("app/main.py", false, 3, "a".repeat(64)),
                FileEntry::symlink("app/run", "main.py"),
                FileEntry::dir("schema"),
                FileEntry::file("schema/VERSION", false, 2, "b".repeat(64)),
            ],
        }
    }

    #[test]
    fn round_trips_through_bytes() {
        let m = sample();
        let parsed = Manifest::parse(&m.to_bytes()).expect("parse");
        assert_eq!(parsed, m);
        assert_eq!(m.total_size(), 5);
        assert!(m.entry("app/run").is_some());
        assert!(m.entry("app/nope").is_none());
    }

    #[test]
    fn runtime_paths_are_omitted_when_empty_and_round_trip_when_set() {
        let plain = sample().to_bytes();
        assert!(!String::from_utf8_lossy(&plain).contains("runtime_paths"));
        // A manifest written before the field existed parses unchanged.
        let v: serde_json::Value = serde_json::from_slice(&plain).expect("json");
        assert!(v.get("runtime_paths").is_none());
        assert_eq!(Manifest::parse(&plain).expect("parse").to_bytes(), plain);

        let mut m = sample();
        m.runtime_paths = vec!["**/__pycache__/**".into(), "**/*.pyc".into()];
        let bytes = m.to_bytes();
        let parsed = Manifest::parse(&bytes).expect("parse");
        assert_eq!(parsed, m);
        assert!(parsed
            .runtime_paths()
            .expect("compile")
            .covers("app/__pycache__/x.pyc"));
    }

    #[test]
    fn a_bad_runtime_path_is_refused_naming_the_field_and_pattern() {
        let mut m = sample();
        m.runtime_paths = vec!["**/__pycache__/**".into(), "*.pyc".into()];
        let err = Manifest::parse(&m.to_bytes()).expect_err("no slash");
        let text = err.to_string();
        assert!(text.contains("runtime_paths"), "{text}");
        assert!(text.contains("\"*.pyc\""), "{text}");
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_bytes()).expect("json");
        v["runtime_paths"] = serde_json::json!("**/__pycache__/**");
        let err = Manifest::parse(v.to_string().as_bytes()).expect_err("not a list");
        assert!(matches!(err, ManifestError::Schema(_)), "{err}");
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_bytes()).expect("json");
        v["surprise"] = serde_json::json!(1);
        let err = Manifest::parse(v.to_string().as_bytes()).expect_err("unknown field");
        assert!(err.to_string().contains("surprise"), "{err}");
    }

    #[test]
    fn the_head_is_the_manifest_without_its_files() {
        let m = sample();
        let head = ManifestHead::parse(&m.to_bytes()).expect("head");
        assert_eq!(head, m.head());
        assert_eq!(head.version.to_string(), "1.2.0");
        assert_eq!((head.schema_min_compatible, head.schema_version), (1, 2));
        // Another format says upgrade, as the whole parse does; bytes that
        // are not JSON to their end are refused.
        let mut v: serde_json::Value = serde_json::from_slice(&m.to_bytes()).expect("json");
        v["format"] = serde_json::json!(2);
        let err = ManifestHead::parse(v.to_string().as_bytes()).expect_err("format 2");
        assert!(matches!(err, ManifestError::UnsupportedFormat { found: 2 }));
        let bytes = m.to_bytes();
        let cut = &bytes[..bytes.len() - 10];
        assert!(ManifestHead::parse(cut).is_err());
        assert!(ManifestHead::parse(b"{\"format\": 1}").is_err());
    }

    #[test]
    fn other_formats_say_upgrade() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_bytes()).expect("json");
        v["format"] = serde_json::json!(2);
        v["new_field"] = serde_json::json!(true);
        let err = Manifest::parse(v.to_string().as_bytes()).expect_err("format 2");
        assert!(matches!(err, ManifestError::UnsupportedFormat { found: 2 }));
        assert!(err.to_string().contains("upgrade slipway"));
    }

    #[test]
    fn entry_rules_are_enforced() {
        type Mutation = Box<dyn Fn(&mut Manifest)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("not sorted", Box::new(|m| m.files.swap(1, 2))),
            (
                "duplicate",
                Box::new(|m| {
                    let e = m.files[1].clone();
                    m.files.insert(1, e);
                }),
            ),
            ("setuid", Box::new(|m| m.files[1].mode = Mode(0o4755))),
            (
                "world-writable",
                Box::new(|m| m.files[1].mode = Mode(0o666)),
            ),
            (
                "escaping symlink",
                Box::new(|m| m.files[2].target = Some("../../etc/passwd".into())),
            ),
            (
                "absolute symlink",
                Box::new(|m| m.files[2].target = Some("/etc/passwd".into())),
            ),
            (
                "under a symlink",
                Box::new(|m| {
                    m.files
                        .insert(3, FileEntry::file("app/run/x", false, 0, "c".repeat(64)))
                }),
            ),
            (
                "missing parent",
                Box::new(|m| {
                    m.files
                        .insert(3, FileEntry::file("app/sub/x", false, 0, "c".repeat(64)))
                }),
            ),
            (
                "outside roots",
                Box::new(|m| m.files.push(FileEntry::dir("zzz"))),
            ),
            (
                "bad hash",
                Box::new(|m| m.files[1].sha256 = Some("XYZ".into())),
            ),
            (
                "parent path",
                Box::new(|m| m.files[1].path = "app/../main.py".into()),
            ),
            (
                "min above version",
                Box::new(|m| m.schema_min_compatible = 9),
            ),
            ("bad app", Box::new(|m| m.app = "../bot".into())),
            ("empty hook", Box::new(|m| m.hooks.migrate = Some(vec![]))),
            (
                "runtime path outside the release",
                Box::new(|m| m.runtime_paths = vec!["../app/**".into()]),
            ),
            (
                "runtime path matching everything",
                Box::new(|m| m.runtime_paths = vec!["**/*".into()]),
            ),
        ];
        for (name, mutate) in cases {
            let mut m = sample();
            mutate(&mut m);
            assert!(m.validate().is_err(), "{name} should be refused");
        }
    }

    #[test]
    fn symlink_through_symlink_is_refused() {
        let mut m = sample();
        // app/up -> .. is inside; app/x -> up/../.. would go through it.
        m.files.insert(2, FileEntry::symlink("app/link", "up/x"));
        m.files.push(FileEntry::symlink("app/up", ".."));
        m.files
            .sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        let err = m.validate().expect_err("through symlink");
        assert!(err.to_string().contains("app/link"), "{err}");
    }

    proptest! {
        /// Any manifest built from valid file names round-trips byte for byte.
        #[test]
        fn generated_manifests_round_trip(names in proptest::collection::btree_set("[a-z0-9_]{1,12}", 0..20), size in 0u64..1_000_000) {
            let mut m = sample();
            m.files = vec![FileEntry::dir("app")];
            for n in &names {
                m.files.push(FileEntry::file(format!("app/{n}"), n.len() % 2 == 0, size, "d".repeat(64)));
            }
            m.files.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
            let bytes = m.to_bytes();
            let parsed = Manifest::parse(&bytes).expect("valid");
            prop_assert_eq!(parsed.to_bytes(), bytes);
        }
    }
}

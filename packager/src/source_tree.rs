//! The source tree of a release: `slipway.toml`, excludes, and the walk that
//! turns a directory into the sorted list of entries a release holds.
//!
//! # Payload layout
//!
//! - `SOURCE_DIR/app/` is packed as `app/`, and `SOURCE_DIR/schema/` (or the
//!   `--schema DIR` given instead) as `schema/`. Nothing else at the top of
//!   `SOURCE_DIR` is packed in this layout (README, tests, CI files stay out).
//! - If `SOURCE_DIR` has no `app/` directory, the whole of `SOURCE_DIR` is
//!   packed as `app/`, minus `schema/` (packed as `schema/`), `slipway.toml`
//!   and `.slipwayignore`.
//! - Always left out: every entry named `.git`, the excludes, and the output
//!   repository or `--schema` directory when they lie inside the tree.
//! - `app/` and `schema/` must be real directories, not symlinks.
//!
//! # Excludes
//!
//! Globs come from `[build] exclude` in `slipway.toml`, from `.slipwayignore`
//! (one per line, `#` starts a comment line) and from `--exclude`. Syntax is
//! `globset`'s with `*` not crossing `/` and `**` crossing any number of
//! directories. A pattern without `/` matches an entry's file name at any
//! depth (`*.pyc`, `__pycache__`); a pattern with `/` matches the path inside
//! the release (`app/bot/x.py`) or inside its root (`bot/x.py`). A pattern
//! ending in `/**` also excludes the directory itself, so
//! `**/__pycache__/**` leaves no empty `__pycache__` behind. An excluded
//! directory is not descended into.
//!
//! # Entries
//!
//! Only regular files, directories and symlinks whose target stays inside the
//! release are accepted. FIFOs, sockets, devices, absolute symlinks, symlinks
//! leaving the release, names that are not UTF-8 or break the path rules are
//! refused with the path named. Hardlinked files are packed as plain files.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use slipway_formats::path::{resolve_symlink_target, validate_entry_path};

use crate::error::{PackError, Result};

/// The metadata file at the top of a source tree.
pub const CONFIG_FILE: &str = "slipway.toml";
/// The extra excludes file at the top of a source tree.
pub const IGNORE_FILE: &str = ".slipwayignore";

/// The largest `slipway.toml` or `.slipwayignore` read.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// `slipway.toml`: the release's own metadata, carried by the app's
/// repository. Unknown keys are errors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The app name; must match `--app` when both are given.
    pub app: Option<String>,
    /// The default channel; `--channel` overrides it.
    pub channel: Option<String>,
    /// Globs of paths the app writes into its own release at run time
    /// (`**/__pycache__/**`), carried into the manifest's `runtime_paths`.
    #[serde(default)]
    pub runtime_paths: Vec<String>,
    #[serde(default)]
    pub schema: SchemaConfig,
    #[serde(default)]
    pub hooks: HooksConfig,
    #[serde(default)]
    pub build: BuildConfig,
    #[serde(default)]
    pub health: HealthConfig,
}

/// `[health]`: how the release wants to be started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Start under probation (paused until the health gate passes): the
    /// release honours the probation contract (docs/probation.md).
    pub probation: Option<bool>,
}

/// `[schema]`: the persistence schema this release's code uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaConfig {
    /// Default 0.
    pub version: Option<u32>,
    /// Oldest data schema the code reads; default `version`.
    pub min_compatible: Option<u32>,
}

/// `[hooks]`: argv lists run by the host in the staged release.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksConfig {
    pub check: Option<Vec<String>>,
    pub migrate: Option<Vec<String>>,
}

/// `[build]`: how the tree is packed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildConfig {
    #[serde(default)]
    pub exclude: Vec<String>,
}

impl SourceConfig {
    /// Reads `SOURCE_DIR/slipway.toml`; a missing file is the default config.
    pub fn load(source_dir: &Path) -> Result<Self> {
        let path = source_dir.join(CONFIG_FILE);
        match read_small_text(&path)? {
            Some(text) => Self::parse(&path, &text),
            None => Ok(SourceConfig::default()),
        }
    }

    /// Parses `slipway.toml` text; `path` names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| PackError::Config {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })
    }
}

/// Reads `SOURCE_DIR/.slipwayignore`: one glob per line, blank lines and
/// `#` comment lines skipped. A missing file is no excludes.
pub fn read_ignore_file(source_dir: &Path) -> Result<Vec<String>> {
    let path = source_dir.join(IGNORE_FILE);
    Ok(match read_small_text(&path)? {
        Some(text) => text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect(),
        None => Vec::new(),
    })
}

fn read_small_text(path: &Path) -> Result<Option<String>> {
    match slipway_fs::read_text_capped(path, MAX_CONFIG_BYTES) {
        Ok(text) => Ok(Some(text)),
        Err(slipway_fs::ReadError::NotFound { .. }) => Ok(None),
        Err(slipway_fs::ReadError::TooLarge { .. }) => Err(PackError::Config {
            path: path.to_path_buf(),
            message: format!("larger than {MAX_CONFIG_BYTES} bytes"),
        }),
        Err(e) => Err(e.into()),
    }
}

/// A compiled set of exclude globs (see the module docs for the rules).
#[derive(Debug, Clone)]
pub struct Excludes {
    by_name: GlobSet,
    by_path: GlobSet,
    /// The `X` of every `X/**` pattern, matching the directory itself.
    dirs: GlobSet,
    count: usize,
}

impl Excludes {
    /// Compiles `patterns`; a bad glob is an error naming it and `origin`.
    pub fn new<S: AsRef<str>>(patterns: &[S], origin: &Path) -> Result<Self> {
        let mut by_name = GlobSetBuilder::new();
        let mut by_path = GlobSetBuilder::new();
        let mut dirs = GlobSetBuilder::new();
        let compile = |p: &str| {
            GlobBuilder::new(p)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| PackError::Config {
                    path: origin.to_path_buf(),
                    message: format!("exclude pattern {p:?}: {e}"),
                })
        };
        for pattern in patterns {
            let p = pattern.as_ref().trim();
            let p = p.strip_prefix("./").unwrap_or(p);
            let p = p.strip_suffix('/').unwrap_or(p);
            if p.is_empty() {
                continue;
            }
            if p.contains('/') {
                by_path.add(compile(p)?);
                if let Some(dir) = p.strip_suffix("/**") {
                    if !dir.is_empty() {
                        dirs.add(compile(dir)?);
                    }
                }
            } else {
                by_name.add(compile(p)?);
            }
        }
        let build = |b: GlobSetBuilder| {
            b.build().map_err(|e| PackError::Config {
                path: origin.to_path_buf(),
                message: format!("exclude patterns: {e}"),
            })
        };
        Ok(Excludes {
            by_name: build(by_name)?,
            by_path: build(by_path)?,
            dirs: build(dirs)?,
            count: patterns.len(),
        })
    }

    /// No excludes at all.
    pub fn none() -> Self {
        Excludes {
            by_name: GlobSet::empty(),
            by_path: GlobSet::empty(),
            dirs: GlobSet::empty(),
            count: 0,
        }
    }

    /// How many patterns were given.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no patterns were given.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether the entry at `payload_path` (`app/bot/x.py`), `root_relative`
    /// inside its root (`bot/x.py`), is excluded.
    pub fn is_excluded(&self, payload_path: &str, root_relative: &str, is_dir: bool) -> bool {
        let name = payload_path.rsplit('/').next().unwrap_or(payload_path);
        if self.by_name.is_match(name) {
            return true;
        }
        let candidates = [payload_path, root_relative];
        candidates
            .iter()
            .filter(|c| !c.is_empty())
            .any(|c| self.by_path.is_match(c) || (is_dir && self.dirs.is_match(c)))
    }
}

/// What an entry of the source tree is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    Dir,
    File { executable: bool },
    Symlink { target: String },
}

/// One entry of the release, with where its content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceEntry {
    /// The path inside the release (`app/bot/x.py`).
    pub path: String,
    /// The path on disk.
    pub source: PathBuf,
    pub kind: SourceKind,
}

/// Where the two payload roots come from.
#[derive(Debug, Clone)]
pub struct SourceLayout {
    /// The directory packed as `app/`.
    pub app_root: PathBuf,
    /// Whether `app_root` is the whole source dir (no `app/` subdirectory).
    pub whole_dir: bool,
    /// The directory packed as `schema/`, if any.
    pub schema_root: Option<PathBuf>,
}

impl SourceLayout {
    /// Applies the layout rule (see the module docs) to `source_dir`.
    pub fn detect(source_dir: &Path, schema_override: Option<&Path>) -> Result<Self> {
        let meta =
            fs::metadata(source_dir).map_err(PackError::io("read source directory", source_dir))?;
        if !meta.is_dir() {
            return Err(PackError::refused(
                source_dir,
                "the source is not a directory",
            ));
        }
        let app = source_dir.join("app");
        let (app_root, whole_dir) = if real_dir(&app)? {
            (app, false)
        } else {
            (source_dir.to_path_buf(), true)
        };
        let schema_root = match schema_override {
            Some(dir) => {
                if !real_dir(dir)? {
                    return Err(PackError::refused(dir, "--schema must name a directory"));
                }
                Some(dir.to_path_buf())
            }
            None => {
                let dir = source_dir.join("schema");
                real_dir(&dir)?.then_some(dir)
            }
        };
        Ok(SourceLayout {
            app_root,
            whole_dir,
            schema_root,
        })
    }
}

/// Whether `path` is a directory that is not a symlink; a symlink is refused.
fn real_dir(path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(PackError::refused(
            path,
            "is a symlink; a payload root must be a real directory",
        )),
        Ok(m) => Ok(m.is_dir()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(PackError::io("read", path)(e)),
    }
}

/// Walks the layout's roots and returns every entry of the release, sorted
/// bytewise by path (the order of the manifest and the archive). Directories
/// in `skip_dirs` (the output repository, for one) are left out wherever they
/// appear. The first refused entry is an error naming its path.
pub fn collect_entries(
    layout: &SourceLayout,
    excludes: &Excludes,
    skip_dirs: &[PathBuf],
) -> Result<Vec<SourceEntry>> {
    let mut skip: HashSet<(u64, u64)> = HashSet::new();
    for dir in skip_dirs {
        if let Ok(m) = fs::metadata(dir) {
            skip.insert((m.dev(), m.ino()));
        }
    }
    if let Some(schema) = &layout.schema_root {
        // Packed as schema/, so not a second time under app/.
        if let Ok(m) = fs::metadata(schema) {
            skip.insert((m.dev(), m.ino()));
        }
    }
    let mut entries = Vec::new();
    walk_root(
        &layout.app_root,
        "app",
        layout.whole_dir,
        excludes,
        &skip,
        &mut entries,
    )?;
    if let Some(schema) = &layout.schema_root {
        walk_root(
            schema,
            "schema",
            false,
            excludes,
            &HashSet::new(),
            &mut entries,
        )?;
    }
    entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    Ok(entries)
}

fn walk_root(
    root: &Path,
    prefix: &str,
    whole_dir: bool,
    excludes: &Excludes,
    skip: &HashSet<(u64, u64)>,
    out: &mut Vec<SourceEntry>,
) -> Result<()> {
    let mut walker = walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter();
    while let Some(item) = walker.next() {
        let item = item.map_err(|e| {
            let path = e.path().unwrap_or(root).to_path_buf();
            match e.into_io_error() {
                Some(io) => PackError::io("read", path)(io),
                None => PackError::refused(path, "filesystem loop"),
            }
        })?;
        let rel_os = item.path().strip_prefix(root).unwrap_or(Path::new(""));
        let rel = rel_os.to_str().ok_or_else(|| {
            PackError::refused(item.path(), "the name is not valid UTF-8; rename it")
        })?;
        let depth = item.depth();
        let file_type = item.file_type();
        let name = item.file_name().to_str().unwrap_or_default();
        if depth > 0 {
            let top_level_skip = whole_dir
                && depth == 1
                && (name == CONFIG_FILE
                    || name == IGNORE_FILE
                    || (name == "schema" && file_type.is_dir()));
            let skipped_dir = file_type.is_dir()
                && item
                    .metadata()
                    .map(|m| skip.contains(&(m.dev(), m.ino())))
                    .unwrap_or(false);
            let payload = format!("{prefix}/{rel}");
            if name == ".git"
                || top_level_skip
                || skipped_dir
                || excludes.is_excluded(&payload, rel, file_type.is_dir())
            {
                if file_type.is_dir() {
                    walker.skip_current_dir();
                }
                continue;
            }
        }
        let path = if depth == 0 {
            prefix.to_string()
        } else {
            format!("{prefix}/{rel}")
        };
        validate_entry_path(&path)
            .map_err(|e| PackError::refused(item.path(), format!("name refused: {e}")))?;
        let kind = if file_type.is_dir() {
            SourceKind::Dir
        } else if file_type.is_file() {
            let meta = item
                .metadata()
                .map_err(|e| PackError::refused(item.path(), e.to_string()))?;
            SourceKind::File {
                executable: meta.permissions().mode() & 0o111 != 0,
            }
        } else if file_type.is_symlink() {
            let target =
                fs::read_link(item.path()).map_err(PackError::io("read symlink", item.path()))?;
            let target = target.to_str().ok_or_else(|| {
                PackError::refused(item.path(), "symlink target is not valid UTF-8")
            })?;
            resolve_symlink_target(&path, target, |_| Ok(())).map_err(|e| {
                PackError::refused(
                    item.path(),
                    format!("{e}; only relative symlinks that stay inside app/ and schema/ can be packed"),
                )
            })?;
            SourceKind::Symlink {
                target: target.to_string(),
            }
        } else {
            let what = if file_type.is_fifo() {
                "a FIFO (named pipe)"
            } else if file_type.is_socket() {
                "a socket"
            } else if file_type.is_block_device() {
                "a block device"
            } else if file_type.is_char_device() {
                "a character device"
            } else {
                "of an unknown file type"
            };
            return Err(PackError::refused(
                item.path(),
                format!("is {what}; a release holds only regular files, directories and symlinks (remove it or add it to the excludes)"),
            ));
        };
        out.push(SourceEntry {
            path,
            source: item.path().to_path_buf(),
            kind,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named_with_the_file() {
        let err = SourceConfig::parse(
            Path::new("/src/slipway.toml"),
            "app = \"bot\"\nsurprise = 1\n",
        )
        .expect_err("unknown key");
        let text = err.to_string();
        assert!(
            text.contains("surprise") && text.contains("/src/slipway.toml"),
            "{text}"
        );
        let err = SourceConfig::parse(Path::new("s.toml"), "[hooks]\nchek = [\"x\"]\n")
            .expect_err("unknown nested key");
        assert!(err.to_string().contains("chek"), "{err}");
    }

    #[test]
    fn full_config_parses() {
        let text = r#"
app = "bot"
channel = "stable"
[schema]
version = 1
min_compatible = 1
[hooks]
check = ["python3", "-m", "compileall", "-q", "app"]
migrate = ["python3", "app/bot/migrate.py"]
[build]
exclude = ["**/__pycache__/**", "*.pyc"]
"#;
        let c = SourceConfig::parse(Path::new("slipway.toml"), text).expect("parse");
        assert_eq!(c.app.as_deref(), Some("bot"));
        assert_eq!(c.schema.version, Some(1));
        assert_eq!(c.hooks.migrate.as_ref().map(Vec::len), Some(2));
        assert_eq!(c.build.exclude.len(), 2);
    }

    #[test]
    fn exclude_rules() {
        let ex = Excludes::new(
            &["**/__pycache__/**", "*.pyc", "app/secret/*", "docs/"],
            Path::new("x"),
        )
        .expect("globs");
        assert!(ex.is_excluded("app/bot/__pycache__", "bot/__pycache__", true));
        assert!(ex.is_excluded("app/__pycache__/a.txt", "__pycache__/a.txt", false));
        assert!(ex.is_excluded("app/bot/x.pyc", "bot/x.pyc", false));
        assert!(!ex.is_excluded("app/bot/x.py", "bot/x.py", false));
        assert!(ex.is_excluded("app/secret/k", "secret/k", false));
        assert!(!ex.is_excluded("app/secret/sub/k", "secret/sub/k", false));
        assert!(ex.is_excluded("app/x/docs", "x/docs", true));
        assert!(Excludes::new(&["a/[b"], Path::new("f")).is_err());
    }
}

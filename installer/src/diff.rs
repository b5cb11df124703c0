//! Whether an installed release still matches its manifest.
//!
//! [`verify_installed`] is `slipway verify` and the eligibility rule "the
//! installed release is clean" (the tarball world's dirty git tree): every
//! entry the manifest lists must be present with the same type, mode,
//! content and symlink target, and nothing else may be there. It reads the
//! tree without following symlinks and reports every difference as a
//! [`Drift`].
//!
//! The release's `runtime_paths` (globs in its manifest, such as
//! `**/__pycache__/**`) excuse stray paths the app writes into its own
//! tree: a path the manifest does not list, inside `app/` or `schema/`,
//! that matches one is not drift, and an excused directory is not looked
//! into. Nothing else is excused: a listed file that matches a pattern is
//! still compared (an app that rewrites a file it ships makes its release
//! dirty), and so is everything under `slipway/`.

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};
use slipway_formats::{EntryType, Manifest, MANIFEST_PATH};

use crate::identity::{FileIdentity, TreeRecord};

/// One way an installed release differs from its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "drift", rename_all = "snake_case")]
pub enum Drift {
    /// Listed in the manifest, absent on disk.
    Missing { path: String },
    /// On disk, not listed in the manifest.
    Extra { path: String },
    /// A file whose size or content hash differs.
    Modified { path: String },
    /// Present with another type (a file replaced by a symlink, ...).
    TypeChanged {
        path: String,
        expected: EntryType,
        found: String,
    },
    /// Permission bits differ, ignoring write bits (the tree is read-only).
    ModeChanged {
        path: String,
        expected: u32,
        found: u32,
    },
    /// A symlink pointing elsewhere.
    TargetChanged {
        path: String,
        expected: String,
        found: String,
    },
}

impl Drift {
    /// The release-relative path concerned.
    pub fn path(&self) -> &str {
        match self {
            Drift::Missing { path }
            | Drift::Extra { path }
            | Drift::Modified { path }
            | Drift::TypeChanged { path, .. }
            | Drift::ModeChanged { path, .. }
            | Drift::TargetChanged { path, .. } => path,
        }
    }
}

impl Drift {
    /// Whether this is a stray path that looks written by the app while it
    /// runs (Python bytecode, a tool's cache directory), rather than an edit:
    /// what a release can declare in `runtime_paths`.
    pub fn looks_runtime_written(&self) -> bool {
        let Drift::Extra { path } = self else {
            return false;
        };
        path.rsplit('/').enumerate().any(|(i, name)| {
            name == "__pycache__"
                || name == ".cache"
                || (name.starts_with('.') && name.ends_with("_cache"))
                || (i == 0 && (name.ends_with(".pyc") || name.ends_with(".pyo")))
        })
    }
}

/// How many differences [`describe_drift`] names.
pub const DRIFTS_SHOWN: usize = 5;

/// The first [`DRIFTS_SHOWN`] differences, `; `-separated, then `and N
/// more`: the paths a dirty-release message names.
pub fn describe_drift(drifts: &[Drift]) -> String {
    let mut listed = drifts
        .iter()
        .take(DRIFTS_SHOWN)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    if drifts.len() > DRIFTS_SHOWN {
        listed.push_str(&format!("; and {} more", drifts.len() - DRIFTS_SHOWN));
    }
    listed
}

/// What an operator can do about a release that differs from its manifest.
/// Neutral about who changed it: the app writing into its own tree is as
/// likely as a person editing it.
pub fn drift_hint(drifts: &[Drift]) -> String {
    let repair =
        "reinstall a clean copy of the running release with `slipway install --force SOURCE`";
    if drifts.iter().any(Drift::looks_runtime_written) {
        format!(
            "these look like files the app writes while it runs: runtime-written files can be \
             declared in slipway.toml (runtime_paths, e.g. [\"**/__pycache__/**\"]) in the next \
             release, or avoided with PYTHONDONTWRITEBYTECODE=1 in the service's environment; \
             {repair}"
        )
    } else {
        format!("ship the change as a release, or {repair}")
    }
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drift::Missing { path } => write!(f, "missing {path}"),
            Drift::Extra { path } => write!(f, "extra {path}"),
            Drift::Modified { path } => write!(f, "modified {path}"),
            Drift::TypeChanged {
                path,
                expected,
                found,
            } => write!(f, "type changed {path}: {found}, expected {expected}"),
            Drift::ModeChanged {
                path,
                expected,
                found,
            } => write!(
                f,
                "mode changed {path}: {found:04o}, expected {expected:04o} (write bits ignored)"
            ),
            Drift::TargetChanged {
                path,
                expected,
                found,
            } => write!(
                f,
                "target changed {path}: -> {found:?}, expected -> {expected:?}"
            ),
        }
    }
}

/// Compares the release tree at `dir` with `manifest` and returns every
/// difference, in path order (an empty list: the release is clean).
///
/// `slipway/manifest.json` is expected and not compared (callers that care
/// compare its bytes); its absence is reported as missing. Under a directory
/// that is missing or no longer a directory nothing more is reported: the
/// drift of the directory says it all, and nothing is read through a symlink.
/// Modes are compared without their write bits, since staging makes the tree
/// read-only.
///
/// An `Err` is an I/O failure other than "not found" (permissions, a read
/// error): the tree could not be checked.
pub fn verify_installed(dir: &Path, manifest: &Manifest) -> io::Result<Vec<Drift>> {
    check_tree(dir, manifest, None).map(|c| c.drift)
}

/// What [`check_tree`] found.
#[derive(Debug, Default)]
pub struct TreeCheck {
    /// Every difference, in path order, as [`verify_installed`] returns it.
    pub drift: Vec<Drift>,
    /// How many files were read and hashed.
    pub hashed: usize,
    /// The files that were hashed and found as the manifest says, with
    /// their identity as seen just before they were read.
    pub proven: Vec<(String, FileIdentity)>,
    /// The identity of every path looked at (the release directory as
    /// [`crate::identity::ROOT_ENTRY`], `slipway/`, the manifest and every
    /// manifest entry), as seen before anything under it was read or
    /// listed: with no drift, the whole-tree record of what was proven.
    pub seen: Vec<(String, FileIdentity)>,
}

/// [`verify_installed`], trusting `known` (the release's identity record,
/// [`crate::identity`]) for the content of every file whose identity is
/// still the recorded one: only the others are read and hashed. Types,
/// modes, symlink targets, missing and stray paths are checked as by
/// [`verify_installed`], whatever the record says.
pub fn check_tree(
    dir: &Path,
    manifest: &Manifest,
    known: Option<&TreeRecord>,
) -> io::Result<TreeCheck> {
    let mut hashed = 0;
    let mut proven = Vec::new();
    let mut drift = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    // Directories whose contents cannot be trusted to be what they seem.
    let mut broken_dirs: Vec<&str> = Vec::new();

    let mut seen = Vec::with_capacity(manifest.files.len() + 3);
    for own in [crate::identity::ROOT_ENTRY, "slipway", MANIFEST_PATH] {
        if let Ok(id) = FileIdentity::of_path(&dir.join(own)) {
            seen.push((own.to_string(), id));
        }
    }
    drift.extend(manifest_drift(dir)?);

    for entry in &manifest.files {
        let under_broken = broken_dirs.iter().any(|d| {
            entry
                .path
                .strip_prefix(d)
                .is_some_and(|rest| rest.starts_with('/'))
        });
        if under_broken {
            continue;
        }
        let path = || entry.path.clone();
        let full = dir.join(&entry.path);
        let meta = match fs::symlink_metadata(&full) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                drift.push(Drift::Missing { path: path() });
                if entry.kind == EntryType::Dir {
                    broken_dirs.push(&entry.path);
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        let identity = FileIdentity::of(&meta);
        seen.push((entry.path.clone(), identity));
        let file_type = meta.file_type();
        let found_kind = kind_of(&file_type);
        if found_kind != entry.kind.to_string() {
            drift.push(Drift::TypeChanged {
                path: path(),
                expected: entry.kind,
                found: found_kind.to_string(),
            });
            if entry.kind == EntryType::Dir {
                broken_dirs.push(&entry.path);
            }
            continue;
        }
        match entry.kind {
            EntryType::Symlink => {
                let target = fs::read_link(&full)?;
                let wanted = entry.target.as_deref().unwrap_or_default();
                if target.as_os_str().as_encoded_bytes() != wanted.as_bytes() {
                    drift.push(Drift::TargetChanged {
                        path: path(),
                        expected: wanted.to_string(),
                        found: target.to_string_lossy().into_owned(),
                    });
                }
                continue;
            }
            EntryType::File => {
                let recorded = known.and_then(|r| r.get(&entry.path)) == Some(&identity);
                if !recorded {
                    hashed += 1;
                    let same_size = Some(meta.len()) == entry.size;
                    if !same_size || !same_content(&full, entry.sha256.as_deref(), &mut buf)? {
                        drift.push(Drift::Modified { path: path() });
                    } else {
                        proven.push((entry.path.clone(), identity));
                    }
                }
            }
            EntryType::Dir => {}
        }
        let found = meta.permissions().mode() & 0o7777;
        if found & !0o222 != entry.mode.0 & !0o222 {
            drift.push(Drift::ModeChanged {
                path: path(),
                expected: entry.mode.0,
                found,
            });
        }
    }

    // Anything on disk the manifest does not list, unless the release
    // declares it as written at run time. A manifest that parsed has valid
    // patterns; one that somehow does not excuses nothing.
    let listed: HashSet<&str> = manifest.files.iter().map(|e| e.path.as_str()).collect();
    let runtime = manifest.runtime_paths().unwrap_or_default();
    let root_dev = fs::symlink_metadata(dir)?.dev();
    let walker = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name();
    let mut walker = walker.into_iter();
    while let Some(item) = walker.next() {
        let item = item.map_err(io::Error::other)?;
        let rel = match item.path().strip_prefix(dir) {
            Ok(rel) => rel,
            Err(_) => continue,
        };
        let rel_text = rel.to_string_lossy();
        let known = rel
            .to_str()
            .is_some_and(|r| listed.contains(r) || r == MANIFEST_PATH || r == "slipway");
        if !known {
            let excused = rel.to_str().is_some_and(|r| runtime.covers(r));
            if item.file_type().is_dir() {
                walker.skip_current_dir();
            }
            if excused {
                continue;
            }
            drift.push(Drift::Extra {
                path: rel_text.into_owned(),
            });
            continue;
        }
        // Do not wander into another file system mounted inside the tree.
        if item.file_type().is_dir() && item.metadata().map_err(io::Error::other)?.dev() != root_dev
        {
            walker.skip_current_dir();
        }
    }

    drift.sort_by(|a, b| a.path().as_bytes().cmp(b.path().as_bytes()));
    Ok(TreeCheck {
        drift,
        hashed,
        proven,
        seen,
    })
}

/// Whether `slipway/manifest.json` is in place as a regular file, looked up
/// without going through a symlink.
fn manifest_drift(dir: &Path) -> io::Result<Option<Drift>> {
    let meta = |path: &Path| match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    };
    let missing = || Drift::Missing {
        path: MANIFEST_PATH.to_string(),
    };
    match meta(&dir.join("slipway"))? {
        None => return Ok(Some(missing())),
        Some(m) if !m.is_dir() => {
            return Ok(Some(Drift::TypeChanged {
                path: "slipway".to_string(),
                expected: EntryType::Dir,
                found: kind_of(&m.file_type()).to_string(),
            }))
        }
        Some(_) => {}
    }
    Ok(match meta(&dir.join(MANIFEST_PATH))? {
        None => Some(missing()),
        Some(m) if !m.file_type().is_file() => Some(Drift::TypeChanged {
            path: MANIFEST_PATH.to_string(),
            expected: EntryType::File,
            found: kind_of(&m.file_type()).to_string(),
        }),
        Some(_) => None,
    })
}

/// The manifest word for a file type.
fn kind_of(t: &fs::FileType) -> &'static str {
    if t.is_file() {
        "file"
    } else if t.is_dir() {
        "dir"
    } else if t.is_symlink() {
        "symlink"
    } else {
        "special file"
    }
}

/// Whether the file's SHA-256 is `wanted`. The file is opened without
/// following symlinks and must still be a regular file.
fn same_content(path: &Path, wanted: Option<&str>, buf: &mut [u8]) -> io::Result<bool> {
    let mut file: File = match slipway_fs::open_regular(path) {
        Ok(f) => f,
        Err(slipway_fs::ReadError::Io { source, .. }) => return Err(source),
        Err(slipway_fs::ReadError::NotFound { .. }) => return Err(io::ErrorKind::NotFound.into()),
        Err(_) => return Ok(false),
    };
    let mut sha = Sha256::new();
    loop {
        let n = match file.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        sha.update(&buf[..n]);
    }
    Ok(Some(hex::encode(sha.finalize()).as_str()) == wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extra(path: &str) -> Drift {
        Drift::Extra { path: path.into() }
    }

    #[test]
    fn bytecode_and_caches_look_runtime_written_and_edits_do_not() {
        for p in [
            "app/bot/__pycache__",
            "app/__pycache__/x.cpython-312.pyc",
            "app/bot/x.pyc",
            "app/bot/x.pyo",
            "app/.pytest_cache",
            "app/.mypy_cache/3.12",
            "app/.cache",
        ] {
            assert!(extra(p).looks_runtime_written(), "{p}");
        }
        for p in [
            "app/bot/notes.txt",
            "app/pyc/x.py",
            "app/x.pyc.txt",
            "app/cache",
        ] {
            assert!(!extra(p).looks_runtime_written(), "{p}");
        }
        let modified = Drift::Modified {
            path: "app/bot/__pycache__/x.pyc".into(),
        };
        assert!(!modified.looks_runtime_written());
        assert!(drift_hint(&[extra("app/bot/__pycache__")]).contains("runtime_paths"));
        assert!(!drift_hint(&[extra("app/notes.txt"), modified]).contains("runtime_paths"));
    }

    #[test]
    fn the_description_names_five_then_counts() {
        let drifts: Vec<Drift> = (0..7).map(|i| extra(&format!("app/{i}"))).collect();
        assert_eq!(
            describe_drift(&drifts),
            "extra app/0; extra app/1; extra app/2; extra app/3; extra app/4; and 2 more"
        );
        assert_eq!(describe_drift(&drifts[..1]), "extra app/0");
    }
}

//! Runtime paths: what a release's app writes into its own release tree
//! (Python's `__pycache__`, a cache directory), declared by the release in
//! the manifest's `runtime_paths` so that the clean-tree rule and `slipway
//! verify` do not count it as drift.
//!
//! # Syntax
//!
//! Each pattern is a glob over the release-relative path (`app/bot/x.py`),
//! in `globset`'s syntax with `*` and `?` not crossing `/` and `**` as a
//! whole component crossing any number of directories. A pattern ending in
//! `/**` also matches the directory itself, so `**/__pycache__/**` excuses
//! the `__pycache__` directory and everything in it.
//!
//! # What a pattern excuses
//!
//! Only paths the manifest does **not** list, inside `app/` or `schema/`: a
//! file the release ships is checked whatever the patterns say (an app that
//! rewrites one of its own files makes its release dirty), and nothing under
//! `slipway/` or at the top of the release is ever excused. An excused
//! directory is not looked into. That rule belongs to the reader
//! (`slipway`'s `diff::verify_installed`); [`RuntimePaths::covers`] answers
//! only whether a path matches.
//!
//! # Validation
//!
//! [`RuntimePaths::new`] refuses, with the pattern named: more than
//! [`MAX_RUNTIME_PATHS`] patterns; a pattern longer than
//! [`MAX_PATTERN_BYTES`]; an empty pattern, NUL, control characters or `\`;
//! a leading `/`; an empty, `.` or `..` component; a pattern without `/`
//! (it would match only the top of the release, never a file the app
//! writes: write `**/NAME`); a first component that is a plain name other
//! than `app` or `schema`; a pattern made only of `*`, `**` and `?`
//! components (it would excuse every stray file, and the clean-tree rule
//! with it); and anything `globset` does not compile.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use thiserror::Error;

use crate::manifest::PAYLOAD_ROOTS;

/// The most patterns a release may declare.
pub const MAX_RUNTIME_PATHS: usize = 32;
/// The longest pattern accepted, in bytes.
pub const MAX_PATTERN_BYTES: usize = 256;

/// Why a list of runtime paths was refused. Each variant names the pattern.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RuntimePathError {
    #[error("{0} patterns; the limit is {MAX_RUNTIME_PATHS}")]
    TooMany(usize),
    #[error("pattern {pattern:?}: {reason}")]
    Pattern { pattern: String, reason: String },
}

/// A compiled, validated list of runtime-path patterns.
#[derive(Debug, Clone)]
pub struct RuntimePaths {
    /// Every pattern as written.
    paths: GlobSet,
    /// The `X` of every `X/**` pattern: the directory itself.
    dirs: GlobSet,
}

impl Default for RuntimePaths {
    fn default() -> Self {
        RuntimePaths {
            paths: GlobSet::empty(),
            dirs: GlobSet::empty(),
        }
    }
}

impl RuntimePaths {
    /// Validates and compiles `patterns` (see the module docs for the rules).
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<RuntimePaths, RuntimePathError> {
        if patterns.len() > MAX_RUNTIME_PATHS {
            return Err(RuntimePathError::TooMany(patterns.len()));
        }
        let mut paths = GlobSetBuilder::new();
        let mut dirs = GlobSetBuilder::new();
        for pattern in patterns {
            let pattern = pattern.as_ref();
            let refuse = |reason: String| RuntimePathError::Pattern {
                pattern: pattern.to_string(),
                reason,
            };
            validate_pattern(pattern).map_err(|r| refuse(r.to_string()))?;
            paths.add(compile(pattern).map_err(&refuse)?);
            if let Some(dir) = pattern.strip_suffix("/**") {
                dirs.add(compile(dir).map_err(&refuse)?);
            }
        }
        let build = |b: GlobSetBuilder| {
            b.build().map_err(|e| RuntimePathError::Pattern {
                pattern: patterns
                    .iter()
                    .map(|p| p.as_ref())
                    .collect::<Vec<_>>()
                    .join(", "),
                reason: e.to_string(),
            })
        };
        Ok(RuntimePaths {
            paths: build(paths)?,
            dirs: build(dirs)?,
        })
    }

    /// Whether no pattern was declared.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Whether `path` (release-relative, `/`-separated, no leading `/`)
    /// matches a pattern and lies inside a payload root. Whether the
    /// manifest lists it is the caller's question: a listed path is never
    /// excused.
    pub fn covers(&self, path: &str) -> bool {
        let inside_payload = path
            .split_once('/')
            .is_some_and(|(top, rest)| PAYLOAD_ROOTS.contains(&top) && !rest.is_empty());
        inside_payload && (self.paths.is_match(path) || self.dirs.is_match(path))
    }
}

/// One pattern, compiled with `*` not crossing `/`.
fn compile(pattern: &str) -> Result<globset::Glob, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(false)
        .build()
        .map_err(|e| e.kind().to_string())
}

/// The shape rules of the module docs, before compiling.
fn validate_pattern(pattern: &str) -> Result<(), &'static str> {
    if pattern.is_empty() {
        return Err("empty pattern");
    }
    if pattern.len() > MAX_PATTERN_BYTES {
        return Err("longer than 256 bytes");
    }
    if pattern.chars().any(char::is_control) {
        return Err("contains a NUL or control character");
    }
    if pattern.contains('\\') {
        return Err("contains '\\' (escapes are not supported; use [*] for a literal '*')");
    }
    if pattern.starts_with('/') {
        return Err("is absolute; patterns are relative to the release root (app/..., **/...)");
    }
    if !pattern.contains('/') {
        return Err("has no '/': patterns match the whole path from the release root, so write **/NAME to match NAME at any depth");
    }
    for component in pattern.split('/') {
        match component {
            "" => return Err("has an empty component (a doubled or trailing '/')"),
            "." => return Err("has a '.' component"),
            ".." => return Err("has a '..' component"),
            _ => {}
        }
    }
    let first = pattern.split('/').next().unwrap_or_default();
    let is_glob = |c: &str| c.contains(['*', '?', '[', '{']);
    if !is_glob(first) && !PAYLOAD_ROOTS.contains(&first) {
        return Err(
            "starts outside the payload: the first component must be app, schema or a wildcard",
        );
    }
    let wildcard_only = pattern
        .split('/')
        .all(|c| c.bytes().all(|b| b == b'*' || b == b'?'));
    if wildcard_only {
        return Err("matches any path, which would turn the clean-tree rule off; name what the app writes (**/__pycache__/**)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(patterns: &[&str]) -> RuntimePaths {
        RuntimePaths::new(patterns).expect("valid patterns")
    }

    #[test]
    fn pycache_pattern_covers_the_directory_and_its_contents() {
        let rp = paths(&["**/__pycache__/**"]);
        for p in [
            "app/__pycache__",
            "app/bot/__pycache__",
            "app/bot/__pycache__/main.cpython-312.pyc",
            "app/a/b/c/__pycache__/x.pyc",
            "schema/__pycache__/m.pyc",
        ] {
            assert!(rp.covers(p), "{p} should be covered");
        }
        for p in [
            "app/bot/main.py",
            "app/bot/__pycache__x",
            "app/bot/not__pycache__/x.pyc",
            "app/bot/x.pyc",
        ] {
            assert!(!rp.covers(p), "{p} should not be covered");
        }
    }

    #[test]
    fn star_does_not_cross_a_slash() {
        let rp = paths(&["app/*.pyc", "**/*.log"]);
        assert!(rp.covers("app/x.pyc"));
        assert!(!rp.covers("app/bot/x.pyc"));
        assert!(rp.covers("app/bot/deep/run.log"));
        assert!(!rp.covers("app/bot/run.log.1"));
    }

    #[test]
    fn nothing_outside_the_payload_roots_is_covered() {
        let rp = paths(&["**/__pycache__/**", "*/cache/**"]);
        assert!(!rp.covers("__pycache__"));
        assert!(!rp.covers("__pycache__/x.pyc"));
        assert!(!rp.covers("slipway/__pycache__/x.pyc"));
        assert!(!rp.covers("slipway/cache/x"));
        assert!(!rp.covers("other/cache/x"));
        assert!(rp.covers("app/cache/x"));
        assert!(!rp.covers("app"));
        assert!(!rp.covers("app/"));
    }

    #[test]
    fn no_patterns_cover_nothing() {
        let rp = RuntimePaths::new::<&str>(&[]).expect("empty");
        assert!(rp.is_empty());
        assert!(!rp.covers("app/__pycache__"));
        assert!(!RuntimePaths::default().covers("app/x"));
    }

    #[test]
    fn bad_patterns_are_refused_by_name() {
        let long = format!("app/{}", "a".repeat(MAX_PATTERN_BYTES));
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("/app/**", "absolute"),
            ("../app/**", "'..'"),
            ("app/../slipway/**", "'..'"),
            ("app/./x", "'.'"),
            ("app//x", "empty component"),
            ("app/x/", "empty component"),
            ("*.pyc", "no '/'"),
            ("__pycache__", "no '/'"),
            ("slipway/**", "outside the payload"),
            ("bot/__pycache__/**", "outside the payload"),
            ("**", "no '/'"),
            ("**/*", "matches any path"),
            ("*/**", "matches any path"),
            ("**/?", "matches any path"),
            ("app/[x", "app/[x"),
            ("app/{a,b", "app/{a,b"),
            ("app/\\*", "'\\'"),
            ("app/x\ny", "control"),
            ("app/x\0", "control"),
            (&long, "256 bytes"),
        ];
        for (pattern, says) in cases {
            let err = RuntimePaths::new(&[*pattern]).expect_err(pattern);
            let text = err.to_string();
            assert!(
                text.contains(&format!("{pattern:?}")) || text.contains(pattern),
                "{text}"
            );
            assert!(text.contains(says), "{pattern:?}: {text}");
        }
    }

    #[test]
    fn the_count_is_bounded() {
        let many: Vec<String> = (0..=MAX_RUNTIME_PATHS)
            .map(|i| format!("app/cache{i}/**"))
            .collect();
        assert_eq!(
            RuntimePaths::new(&many).expect_err("too many"),
            RuntimePathError::TooMany(MAX_RUNTIME_PATHS + 1)
        );
        assert!(RuntimePaths::new(&many[..MAX_RUNTIME_PATHS]).is_ok());
    }

    proptest::proptest! {
        /// Whatever a manifest declares, it is refused or it compiles, and
        /// it never excuses the manifest, the top of the release or a path
        /// outside the payload roots.
        #[test]
        fn any_pattern_list_is_refused_or_keeps_slipway_checked(
            patterns in proptest::collection::vec(
                "(app/|schema/|[*][*]/|[*]/|slipway/)?[a-z*?/.{},\\[\\]_-]{0,20}",
                0..4,
            ),
            name in "[a-z_.]{1,12}",
        ) {
            if let Ok(rp) = RuntimePaths::new(&patterns) {
                let under_slipway = format!("slipway/{name}");
                let elsewhere = format!("{name}/x/{name}");
                proptest::prop_assert!(!rp.covers(crate::MANIFEST_PATH));
                proptest::prop_assert!(!rp.covers(&under_slipway));
                proptest::prop_assert!(!rp.covers(&name));
                proptest::prop_assert!(!rp.covers("app"));
                proptest::prop_assert!(
                    PAYLOAD_ROOTS.contains(&name.as_str()) || !rp.covers(&elsewhere)
                );
            }
        }
    }

    #[test]
    fn usual_patterns_are_accepted() {
        paths(&[
            "**/__pycache__/**",
            "**/*.pyc",
            "app/data/**",
            "app/{cache,tmp}/**",
            "*/.pytest_cache/**",
            "schema/[0-9]*.tmp",
        ]);
    }
}

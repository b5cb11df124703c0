//! The path rules of SPEC §6: what an entry of a release may be called and
//! where its symlinks may point.
//!
//! Every reader and writer of a release calls [`validate_entry_path`] for every
//! entry name, and [`resolve_symlink_target`] for every symlink, so the
//! packager refuses at build time exactly what the installer refuses at
//! install time.

use thiserror::Error;

/// The longest entry path accepted, in bytes (Linux `PATH_MAX` is 4096).
pub const MAX_PATH_BYTES: usize = 1024;
/// The longest single path component accepted, in bytes (`NAME_MAX`).
pub const MAX_COMPONENT_BYTES: usize = 255;

/// Why a path or symlink target was refused. Each variant carries the path.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    #[error("path {0:?} contains a control character")]
    ControlCharacter(String),
    #[error("path {path:?} is {len} bytes long; the limit is {MAX_PATH_BYTES}")]
    TooLong { path: String, len: usize },
    #[error("path {0:?} has a component longer than {MAX_COMPONENT_BYTES} bytes")]
    ComponentTooLong(String),
    #[error("path {0:?} is absolute; release entries are relative to the release root")]
    Absolute(String),
    #[error("path {0:?} has an empty component (a doubled or trailing '/')")]
    EmptyComponent(String),
    #[error("path {0:?} has a '.' component")]
    CurrentDir(String),
    #[error("path {0:?} has a '..' component")]
    ParentDir(String),
    #[error("symlink {link:?} has an empty target")]
    EmptyTarget { link: String },
    #[error("symlink {link:?} -> {target:?} is absolute; symlinks must stay inside the release")]
    AbsoluteTarget { link: String, target: String },
    #[error("symlink {link:?} -> {target:?} leaves the release")]
    TargetEscapes { link: String, target: String },
    #[error("symlink {link:?} -> {target:?} contains a NUL byte or control character")]
    BadTarget { link: String, target: String },
}

/// Checks one entry path of a release against the rules of SPEC §6.
///
/// A valid path is relative, non-empty, UTF-8 (guaranteed by `&str`), at most
/// [`MAX_PATH_BYTES`] long, and made of non-empty components other than `.`
/// and `..`, each at most [`MAX_COMPONENT_BYTES`] long, with no NUL or other
/// control characters. No trailing `/`: directories are named like files.
pub fn validate_entry_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.contains('\0') {
        return Err(PathError::Nul(path.to_string()));
    }
    if path.chars().any(char::is_control) {
        return Err(PathError::ControlCharacter(path.to_string()));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong {
            path: path.to_string(),
            len: path.len(),
        });
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute(path.to_string()));
    }
    for component in path.split('/') {
        match component {
            "" => return Err(PathError::EmptyComponent(path.to_string())),
            "." => return Err(PathError::CurrentDir(path.to_string())),
            ".." => return Err(PathError::ParentDir(path.to_string())),
            c if c.len() > MAX_COMPONENT_BYTES => {
                return Err(PathError::ComponentTooLong(path.to_string()))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The parent of a valid entry path, or `None` for a top-level entry.
pub fn parent(path: &str) -> Option<&str> {
    path.rfind('/').map(|i| &path[..i])
}

/// Every proper ancestor of a valid entry path, outermost first:
/// `a/b/c` gives `a`, `a/b`.
pub fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

/// Resolves a symlink's target lexically, relative to the directory that
/// holds the link, and returns the release-relative path it names (empty for
/// the release root itself).
///
/// Refused: an empty or absolute target, control characters, and any target
/// that climbs above the release root at any point of the walk (so
/// `../../outside/../app/x` is refused even though it ends inside). Whether the
/// walk passes through another symlink is the caller's check (the manifest
/// does it, since only it knows which entries are symlinks); `walk` receives
/// each intermediate directory the resolution passes through for that purpose.
pub fn resolve_symlink_target(
    link: &str,
    target: &str,
    mut walk: impl FnMut(&str) -> Result<(), PathError>,
) -> Result<String, PathError> {
    if target.is_empty() {
        return Err(PathError::EmptyTarget {
            link: link.to_string(),
        });
    }
    if target.chars().any(char::is_control) {
        return Err(PathError::BadTarget {
            link: link.to_string(),
            target: target.to_string(),
        });
    }
    if target.starts_with('/') {
        return Err(PathError::AbsoluteTarget {
            link: link.to_string(),
            target: target.to_string(),
        });
    }
    let mut stack: Vec<&str> = match parent(link) {
        Some(dir) => dir.split('/').collect(),
        None => Vec::new(),
    };
    let components: Vec<&str> = target.split('/').filter(|c| !c.is_empty()).collect();
    let last = components.len().saturating_sub(1);
    for (i, component) in components.iter().enumerate() {
        match *component {
            "." => {}
            ".." => {
                if stack.pop().is_none() {
                    return Err(PathError::TargetEscapes {
                        link: link.to_string(),
                        target: target.to_string(),
                    });
                }
            }
            name => {
                stack.push(name);
                if i != last {
                    walk(&stack.join("/"))?;
                }
            }
        }
    }
    Ok(stack.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(_: &str) -> Result<(), PathError> {
        Ok(())
    }

    #[test]
    fn accepts_ordinary_paths() {
        for p in ["app", "app/bot/__init__.py", "schema/VERSION", "a b/ü.txt"] {
            assert_eq!(validate_entry_path(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn refuses_each_bad_shape_by_name() {
        assert_eq!(validate_entry_path(""), Err(PathError::Empty));
        assert!(matches!(
            validate_entry_path("a\0b"),
            Err(PathError::Nul(_))
        ));
        assert!(matches!(
            validate_entry_path("a\nb"),
            Err(PathError::ControlCharacter(_))
        ));
        assert!(matches!(
            validate_entry_path("/etc/passwd"),
            Err(PathError::Absolute(_))
        ));
        assert!(matches!(
            validate_entry_path("app/../../x"),
            Err(PathError::ParentDir(_))
        ));
        assert!(matches!(
            validate_entry_path("app/./x"),
            Err(PathError::CurrentDir(_))
        ));
        assert!(matches!(
            validate_entry_path("app//x"),
            Err(PathError::EmptyComponent(_))
        ));
        assert!(matches!(
            validate_entry_path("app/"),
            Err(PathError::EmptyComponent(_))
        ));
        let long_component = format!("app/{}", "x".repeat(256));
        assert!(matches!(
            validate_entry_path(&long_component),
            Err(PathError::ComponentTooLong(_))
        ));
        let long_path = "ab/".repeat(400) + "c";
        assert!(matches!(
            validate_entry_path(&long_path),
            Err(PathError::TooLong { .. })
        ));
    }

    #[test]
    fn symlink_targets_resolve_inside_the_release() {
        assert_eq!(
            resolve_symlink_target("app/lib/current", "v2", ok),
            Ok("app/lib/v2".to_string())
        );
        assert_eq!(
            resolve_symlink_target("app/a", "../schema/VERSION", ok),
            Ok("schema/VERSION".to_string())
        );
        assert_eq!(resolve_symlink_target("app/a", "..", ok), Ok(String::new()));
    }

    #[test]
    fn symlink_targets_that_leave_are_refused() {
        for target in ["../..", "../../etc/passwd", "../../x/../app/a", "../../../"] {
            assert!(
                matches!(
                    resolve_symlink_target("app/a", target, ok),
                    Err(PathError::TargetEscapes { .. })
                ),
                "{target}"
            );
        }
        assert!(matches!(
            resolve_symlink_target("app/a", "/etc/passwd", ok),
            Err(PathError::AbsoluteTarget { .. })
        ));
        assert!(matches!(
            resolve_symlink_target("app/a", "", ok),
            Err(PathError::EmptyTarget { .. })
        ));
    }

    #[test]
    fn ancestors_are_outermost_first() {
        assert_eq!(ancestors("a/b/c").collect::<Vec<_>>(), vec!["a", "a/b"]);
        assert_eq!(ancestors("a").count(), 0);
        assert_eq!(parent("a/b/c"), Some("a/b"));
        assert_eq!(parent("a"), None);
    }

    proptest! {
        /// Any path the validator accepts, joined under a root, stays under it.
        #[test]
        fn valid_paths_never_escape(path in "[a-z./]{1,40}") {
            if validate_entry_path(&path).is_ok() {
                let root = std::path::Path::new("/root-of-release");
                let joined = root.join(&path);
                let mut depth: i64 = 0;
                for c in std::path::Path::new(&path).components() {
                    match c {
                        std::path::Component::Normal(_) => depth += 1,
                        _ => prop_assert!(false, "non-normal component in {path:?}"),
                    }
                }
                prop_assert!(depth >= 1);
                prop_assert!(joined.starts_with(root));
            }
        }

        /// The resolver accepts a target exactly when a step-by-step walk from
        /// the link's directory never climbs above the release root.
        #[test]
        fn accepts_exactly_the_targets_that_stay_inside(link in "(app/){1,3}[a-c]", target in "(\\.\\./|[a-c]/|\\./){0,5}[a-c]?") {
            let mut depth = link.split('/').count() as i64 - 1;
            let mut escapes = false;
            for c in target.split('/') {
                match c {
                    ".." => { depth -= 1; if depth < 0 { escapes = true; } }
                    "" | "." => {}
                    _ => depth += 1,
                }
            }
            let result = resolve_symlink_target(&link, &target, ok);
            if target.is_empty() {
                prop_assert!(result.is_err());
            } else {
                prop_assert_eq!(result.is_err(), escapes, "{} -> {}", link, target);
            }
            if let Ok(resolved) = result {
                if !resolved.is_empty() {
                    prop_assert_eq!(validate_entry_path(&resolved), Ok(()));
                }
            }
        }

        /// The validator never panics, whatever the bytes.
        #[test]
        fn validator_is_total(path in "\\PC{0,64}") {
            let _ = validate_entry_path(&path);
        }
    }
}

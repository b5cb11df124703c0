//! The switch (SPEC §4 step 10) and its inverse, the flip back (step 13).
//!
//! `current` and `previous` are symlinks in the install root with relative
//! targets (`releases/<version>-<id12>`), so the root can be moved or
//! mounted elsewhere. Each link is replaced by one `rename(2)` of a freshly
//! made symlink followed by an fsync of the root directory
//! ([`durable::replace_symlink`]): a reader, the service manager or a crash
//! sees the old target or the new one, never a missing link.
//!
//! Order matters for a crash between the two renames. [`switch_to`] first
//! points `previous` at the old current (both links then name the running
//! release, which is consistent), then swaps `current`. [`restore_links`]
//! puts `current` back first, because that is the link the service follows.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::durable;
use crate::layout::Layout;

/// Why a link could not be read or swapped. The old links are left as they
/// were when the error happened; the journal tells `recover` what to undo.
#[derive(Debug, Error)]
pub enum SwitchError {
    #[error(
        "cannot read the symlink {link}: {source}; check that {link} is a symlink slipway made"
    )]
    Read { link: PathBuf, source: io::Error },
    #[error("cannot point {link} at {target}: {source}; check free space and permissions of the install root, then run `slipway recover`")]
    Swap {
        link: PathBuf,
        target: PathBuf,
        source: io::Error,
    },
    #[error("cannot remove the symlink {link}: {source}")]
    Remove { link: PathBuf, source: io::Error },
    #[error("release directory {dir} is not inside {releases}; slipway only switches to releases it staged")]
    Outside { dir: PathBuf, releases: PathBuf },
}

/// The two links as they are now: their targets exactly as stored
/// (relative, `releases/<name>`), `None` when a link does not exist.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Links {
    pub current: Option<PathBuf>,
    pub previous: Option<PathBuf>,
}

/// Reads `current` and `previous`.
pub fn read_links(layout: &Layout) -> Result<Links, SwitchError> {
    let read = |link: PathBuf| {
        durable::read_link_opt(&link).map_err(|source| SwitchError::Read { link, source })
    };
    Ok(Links {
        current: read(layout.current_link())?,
        previous: read(layout.previous_link())?,
    })
}

/// The link target for a release directory: `releases/<name>`, relative to
/// the root, so the links survive the root being moved.
pub fn link_target(layout: &Layout, release_dir: &Path) -> Result<PathBuf, SwitchError> {
    let releases = layout.releases_dir();
    match (release_dir.parent(), release_dir.file_name()) {
        (Some(parent), Some(name)) if parent == releases => Ok(Path::new("releases").join(name)),
        _ => Err(SwitchError::Outside {
            dir: release_dir.to_path_buf(),
            releases,
        }),
    }
}

/// The directory a link target (as stored in a link) names.
pub fn resolve_target(layout: &Layout, target: &Path) -> PathBuf {
    if target.is_absolute() {
        target.to_path_buf()
    } else {
        layout.root().join(target)
    }
}

/// The release directory `current` points at, if any.
pub fn current_dir(layout: &Layout) -> Result<Option<PathBuf>, SwitchError> {
    Ok(read_links(layout)?
        .current
        .map(|t| resolve_target(layout, &t)))
}

/// How long the swap of `current` took (SPEC §8: the switch itself under a
/// millisecond).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SwitchTiming {
    /// The `rename(2)` that makes the new target visible: the switch as the
    /// service and any reader see it.
    pub current_swap: Duration,
    /// The fsync of the root directory that makes the swap durable.
    pub fsync: Duration,
}

/// Switches to `release_dir`: `previous` → the old `current` (when there was
/// one and it differs), then `current` → `release_dir`.
pub fn switch_to(layout: &Layout, release_dir: &Path) -> Result<SwitchTiming, SwitchError> {
    let target = link_target(layout, release_dir)?;
    let links = read_links(layout)?;
    if let Some(old) = &links.current {
        if old != &target && links.previous.as_ref() != Some(old) {
            swap(&layout.previous_link(), old)?;
        }
    }
    swap_timed(&layout.current_link(), &target)
}

/// Swaps `current` to `release_dir` and leaves `previous` alone: for a
/// clean copy of the running release (`install --force`), where the old
/// `current` is the same release, so `previous` stays the release before
/// it, the one `slipway rollback` goes back to.
pub fn replace_current(layout: &Layout, release_dir: &Path) -> Result<SwitchTiming, SwitchError> {
    let target = link_target(layout, release_dir)?;
    swap_timed(&layout.current_link(), &target)
}

/// Puts both links back as they were before a transaction: `current` first
/// (the one the service follows), then `previous`. A `None` removes the
/// link. Idempotent, so `recover` may run it again after a crash.
pub fn restore_links(
    layout: &Layout,
    current: Option<&Path>,
    previous: Option<&Path>,
) -> Result<SwitchTiming, SwitchError> {
    let links = read_links(layout)?;
    let timing = set(&layout.current_link(), links.current.as_deref(), current)?;
    set(&layout.previous_link(), links.previous.as_deref(), previous)?;
    Ok(timing)
}

fn set(
    link: &Path,
    now: Option<&Path>,
    wanted: Option<&Path>,
) -> Result<SwitchTiming, SwitchError> {
    if now == wanted {
        return Ok(SwitchTiming::default());
    }
    match wanted {
        Some(target) => swap_timed(link, target),
        None => {
            let started = Instant::now();
            durable::remove_symlink(link).map_err(|source| SwitchError::Remove {
                link: link.to_path_buf(),
                source,
            })?;
            Ok(SwitchTiming {
                current_swap: started.elapsed(),
                fsync: Duration::ZERO,
            })
        }
    }
}

/// [`durable::replace_symlink`], timed: a fresh symlink under a temporary
/// name, one `rename(2)` over `link` (timed as the switch), then an fsync
/// of the directory (timed separately).
fn swap_timed(link: &Path, target: &Path) -> Result<SwitchTiming, SwitchError> {
    let err = |source| SwitchError::Swap {
        link: link.to_path_buf(),
        target: target.to_path_buf(),
        source,
    };
    let dir = match link.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = link
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.link.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(err)?;
    let started = Instant::now();
    if let Err(e) = std::fs::rename(&tmp, link) {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    let current_swap = started.elapsed();
    let synced = Instant::now();
    durable::fsync_dir(dir).map_err(err)?;
    Ok(SwitchTiming {
        current_swap,
        fsync: synced.elapsed(),
    })
}

fn swap(link: &Path, target: &Path) -> Result<(), SwitchError> {
    durable::replace_symlink(link, target).map_err(|source| SwitchError::Swap {
        link: link.to_path_buf(),
        target: target.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout_with(releases: &[&str]) -> (tempfile::TempDir, Layout) {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path());
        for r in releases {
            std::fs::create_dir_all(layout.releases_dir().join(r)).expect("mkdir");
        }
        (dir, layout)
    }

    #[test]
    fn switch_moves_current_to_previous_and_flip_back_restores_both() {
        let (_d, layout) = layout_with(&["1.0.0-a", "2.0.0-b", "3.0.0-c"]);
        let r = |n: &str| layout.releases_dir().join(n);
        switch_to(&layout, &r("1.0.0-a")).expect("first");
        assert_eq!(
            read_links(&layout).expect("links"),
            Links {
                current: Some("releases/1.0.0-a".into()),
                previous: None
            }
        );
        switch_to(&layout, &r("2.0.0-b")).expect("second");
        let before = read_links(&layout).expect("links");
        assert_eq!(before.previous, Some("releases/1.0.0-a".into()));
        switch_to(&layout, &r("3.0.0-c")).expect("third");
        assert_eq!(
            read_links(&layout).expect("links"),
            Links {
                current: Some("releases/3.0.0-c".into()),
                previous: Some("releases/2.0.0-b".into())
            }
        );
        restore_links(
            &layout,
            before.current.as_deref(),
            before.previous.as_deref(),
        )
        .expect("flip back");
        assert_eq!(read_links(&layout).expect("links"), before);
        // Idempotent.
        restore_links(
            &layout,
            before.current.as_deref(),
            before.previous.as_deref(),
        )
        .expect("again");
        assert_eq!(read_links(&layout).expect("links"), before);
        // Back to nothing (a failed first install).
        restore_links(&layout, None, None).expect("to nothing");
        assert_eq!(read_links(&layout).expect("links"), Links::default());
        // No temporary links left behind.
        let names: Vec<_> = std::fs::read_dir(layout.root())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("releases")]);
    }

    #[test]
    fn replacing_current_keeps_previous() {
        let (_d, layout) = layout_with(&["1.0.0-a", "2.0.0-b", "2.0.0-b-r2"]);
        let r = |n: &str| layout.releases_dir().join(n);
        switch_to(&layout, &r("1.0.0-a")).expect("first");
        switch_to(&layout, &r("2.0.0-b")).expect("second");
        replace_current(&layout, &r("2.0.0-b-r2")).expect("clean copy");
        assert_eq!(
            read_links(&layout).expect("links"),
            Links {
                current: Some("releases/2.0.0-b-r2".into()),
                previous: Some("releases/1.0.0-a".into())
            }
        );
        let err = replace_current(&layout, &layout.root().join("x")).expect_err("outside");
        assert!(matches!(err, SwitchError::Outside { .. }), "{err}");
    }

    #[test]
    fn refuses_directories_outside_releases() {
        let (_d, layout) = layout_with(&[]);
        let err = switch_to(&layout, &layout.root().join("elsewhere")).expect_err("outside");
        assert!(matches!(err, SwitchError::Outside { .. }), "{err}");
    }
}

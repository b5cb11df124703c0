//! Where the workspace and its built binaries are, for tests that run the
//! real `slipway` and `slipway-pack`.
//!
//! The harness does not build anything: `scripts/test` runs
//! `cargo build --workspace` (with the same features) before `cargo test`.

use std::path::PathBuf;

use anyhow::{bail, Result};

/// The workspace root (the directory of the root `Cargo.toml`, which is also
/// the manifest directory of the `slipway-e2e` package).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the workspace
/// root when relative), else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

/// The profile directory the running test was built into (`target/debug`,
/// `target/release`, `target/<triple>/debug`...): the parent of the test
/// executable's `deps` directory; `target_dir()/debug` when the executable
/// is not in a `deps` directory.
pub fn profile_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let deps = exe.parent()?;
            if deps.file_name()? == "deps" {
                deps.parent().map(PathBuf::from)
            } else {
                None
            }
        })
        .unwrap_or_else(|| target_dir().join("debug"))
}

/// The path of the workspace binary `name` in [`profile_dir`].
pub fn bin(name: &str) -> Result<PathBuf> {
    let path = profile_dir().join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build the workspace first: cargo build --workspace",
            path.display()
        );
    }
    Ok(path)
}

/// The installer binary, `slipway`.
pub fn slipway() -> Result<PathBuf> {
    bin("slipway")
}

/// The packager binary, `slipway-pack`.
pub fn slipway_pack() -> Result<PathBuf> {
    bin("slipway-pack")
}

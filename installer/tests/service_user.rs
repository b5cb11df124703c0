//! The app's hooks run as the service's user (SPEC §6), with a real
//! unprivileged user: created here with `useradd --system` when the tests
//! run as root; skipped otherwise (a failure under `CI=true`, where the
//! tests must run as root).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod bot_host;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::sync::OnceLock;

use bot_host::{Flavor, TestHost};

/// The unprivileged user the tests' service runs as.
const USER: &str = "slipway-hooktest";

/// The user's uid, creating the user when needed; `None` (skip) when the
/// tests do not run as root.
fn service_user() -> Option<u32> {
    static UID: OnceLock<Option<u32>> = OnceLock::new();
    *UID.get_or_init(|| {
        if !rustix::process::geteuid().is_root() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI runs these tests as root: they need a real unprivileged user"
            );
            eprintln!("skipped: creating the user {USER} needs root");
            return None;
        }
        let id = |name: &str| {
            Command::new("id")
                .args(["-u", name])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        };
        if id(USER).is_none() {
            let out = Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    USER,
                ])
                .output()
                .expect("run useradd");
            // 9: created meanwhile by another test binary.
            assert!(
                out.status.success() || out.status.code() == Some(9),
                "useradd {USER}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Some(id(USER).expect("the user exists"))
    })
}

#[test]
fn the_migrate_hook_runs_as_the_services_user_in_a_clean_environment_and_cannot_read_root_files() {
    let Some(uid) = service_user() else {
        return;
    };
    let host = TestHost::new(&[("service", &format!("user = \"{USER}\""))]);
    // The user must reach the releases and the data, as under /opt/bot.
    fs::set_permissions(host.dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let secret = host.path("root-only.key");
    fs::write(&secret, b"root's secret").expect("secret");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).expect("chmod secret");

    // The first install creates the persistence directory and meta/ for
    // the service's user.
    assert!(!host.data().exists());
    let v1 = host.release("1.0.0", &Flavor::default());
    host.run_expect(&["install", &v1.archive.to_string_lossy()], 0);
    host.wait_healthy("1.0.0");
    for dir in [host.data(), host.data().join("meta")] {
        let meta = fs::metadata(&dir).expect("created");
        assert_eq!(meta.uid(), uid, "{} belongs to root", dir.display());
    }

    // v2 migrates; its hook records who it runs as and what it can read.
    let record = format!(
        "id -u > \"$SLIPWAY_PERSISTENCE/migrated-by\"; \
         env > \"$SLIPWAY_PERSISTENCE/migrate-env\"; \
         if cat {} > \"$SLIPWAY_PERSISTENCE/stolen\" 2>/dev/null; then :; else rm -f \"$SLIPWAY_PERSISTENCE/stolen\"; fi",
        secret.display()
    );
    let v2 = host.release(
        "2.0.0",
        &Flavor {
            schema: Some(2),
            before_migrate: Some(record),
            ..Flavor::default()
        },
    );
    let out = host.run(&["install", &v2.archive.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(0), "{}", bot_host::stderr(&out));
    host.wait_healthy("2.0.0");
    assert_eq!(host.data_schema(), 2, "the migration ran");
    let ran_as = fs::read_to_string(host.data().join("migrated-by")).expect("recorded");
    assert_eq!(ran_as.trim(), uid.to_string(), "the hook ran as root");
    assert!(
        !host.data().join("stolen").exists(),
        "the hook read a root-only file"
    );

    // Nothing of slipway's own environment reached the hook.
    let env = fs::read_to_string(host.data().join("migrate-env")).expect("env");
    let names: BTreeSet<&str> = env
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .filter(|k| !["PWD", "SHLVL", "_", "OLDPWD"].contains(k))
        .collect();
    let expected: BTreeSet<&str> = [
        "HOME",
        "LANG",
        "PATH",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONPYCACHEPREFIX",
        "SLIPWAY_CHILD",
        "SLIPWAY_PERSISTENCE",
        "SLIPWAY_RELEASE_DIR",
        "SLIPWAY_SCHEMA_FROM",
        "SLIPWAY_SCHEMA_TO",
        "SLIPWAY_VERSION",
    ]
    .into();
    assert_eq!(names, expected, "{env}");
}

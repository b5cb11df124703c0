//! The app is untrusted (SPEC §6): a compromised app owns its persistence
//! directory and can swap anything in it for a symlink at any moment. As
//! root, slipway never resolves a symlink under the persistence directory
//! or `meta/`: what the app points a link at is never copied into data the
//! app can read, and never written through.
//!
//! Each attack is set up the way the app would do it: a directory, `meta/`
//! or the persistence directory itself swapped for a symlink, before the
//! call (deterministic) or by a thread racing the walk (bounded in time).
//! The link's target is a root-only directory outside the persistence
//! holding a secret; after the attack, neither a snapshot, nor the
//! persistence, nor the target holds anything it should not.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use slipway::config::Config;
use slipway::layout::Layout;
use slipway::report;
use slipway::snapshot::{restore_snapshot, take_snapshot, tree_digest};
use slipway::state::{Attempt, HostState};
use slipway::transaction::data_schema;
use slipway_formats::channel::Timestamp;
use slipway_formats::state::AttemptResult;

/// The bytes that must never leave the root-only directory.
const SECRET: &[u8] = b"root-only: -----BEGIN PRIVATE KEY----- 7f3a9c";

/// A persistence directory `app/data` (the parent stands for a directory
/// the app may write, as `bot_persistence/` is) and a root-only directory
/// `secret/` outside it, holding a world-readable `zz/key` under a 0700
/// directory (as `/root/.ssh/id_ed25519.pub` would be).
struct World {
    tmp: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("app/data");
        fs::create_dir_all(data.join("sub")).expect("mkdir data/sub");
        fs::write(data.join("sub/own.json"), b"{\"trades\": 1}").expect("own data");
        fs::write(data.join("state.json"), b"{\"cash\": 100}").expect("state");
        let secret = tmp.path().join("secret");
        fs::create_dir_all(secret.join("zz")).expect("mkdir secret");
        fs::write(secret.join("zz/key"), SECRET).expect("secret");
        fs::set_permissions(secret.join("zz/key"), fs::Permissions::from_mode(0o644))
            .expect("chmod key");
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o700)).expect("chmod secret");
        World { tmp }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn data(&self) -> PathBuf {
        self.path("app/data")
    }

    fn secret(&self) -> PathBuf {
        self.path("secret")
    }

    fn backups(&self) -> PathBuf {
        self.path("root/backups")
    }

    /// Files the persistence walk takes a while to copy before it reaches
    /// `sub/` (each is fsynced), so a racing swap lands mid-walk.
    fn add_bulk(&self, n: usize) {
        for i in 0..n {
            fs::write(self.data().join(format!("a{i:04}.json")), b"{}").expect("bulk");
        }
    }

    /// The root-only directory is exactly as it was made.
    fn assert_secret_untouched(&self) {
        let names = |dir: &Path| -> Vec<String> {
            fs::read_dir(dir)
                .expect("read secret dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            names(&self.secret()),
            ["zz"],
            "slipway wrote into the root-only directory"
        );
        assert_eq!(names(&self.secret().join("zz")), ["key"]);
        assert_eq!(fs::read(self.secret().join("zz/key")).expect("key"), SECRET);
    }
}

/// Swaps `link` for a symlink to `target` the way a compromised app can:
/// the symlink belongs to the app's user (nobody, 65534), not to root.
fn plant_symlink(target: &Path, link: &Path) {
    std::os::unix::fs::symlink(target, link).expect("symlink");
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::lchown(link, Some(65534), Some(65534)).expect("lchown");
    }
}

/// Whether a regular file under `dir` (links not followed) holds SECRET.
fn holds_secret(dir: &Path) -> Option<PathBuf> {
    walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .find(|e| {
            fs::read(e.path())
                .map(|b| b.windows(SECRET.len()).any(|w| w == SECRET))
                .unwrap_or(false)
        })
        .map(|e| e.path().to_path_buf())
}

/// Runs `attack` in a thread until `stop` is set or 30 s pass.
fn race(
    stop: &Arc<AtomicBool>,
    mut attack: impl FnMut() + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let stop = Arc::clone(stop);
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            attack();
        }
    })
}

#[test]
fn snapshot_never_copies_what_a_directory_swapped_for_a_symlink_mid_walk_points_to() {
    let w = World::new();
    // The app's sub/ holds files to keep a walk busy, then a directory
    // named like one in the root-only directory (zz/).
    let sub = w.data().join("sub");
    for i in 0..150 {
        fs::write(sub.join(format!("a{i:04}.json")), b"{}").expect("bulk");
    }
    fs::create_dir(sub.join("zz")).expect("decoy");
    fs::write(sub.join("zz/own.json"), b"{}").expect("decoy file");
    let secret = w.secret();
    let stop = Arc::new(AtomicBool::new(false));
    // The app flips sub/ between the real directory and a link to the
    // root-only directory, holding each for a few milliseconds: a walk by
    // path lists sub/ as a directory, then opens sub/zz through the link.
    let flipper = race(&stop, move || {
        let aside = sub.with_file_name("sub.real");
        if fs::rename(&sub, &aside).is_ok() {
            plant_symlink(&secret, &sub);
            std::thread::sleep(Duration::from_millis(15));
            let _ = fs::remove_file(&sub);
            let _ = fs::rename(&aside, &sub);
        }
        std::thread::sleep(Duration::from_millis(15));
    });
    let started = Instant::now();
    let mut taken = 0;
    for i in 0..25 {
        if started.elapsed() > Duration::from_secs(12) {
            break;
        }
        // A snapshot may fail when an entry changes type under it; it must
        // never hold the secret.
        if take_snapshot(&w.data(), &w.backups(), &format!("s{i}")).is_ok() {
            taken += 1;
        }
        let _ = tree_digest(&w.data());
        if let Some(leak) = holds_secret(&w.backups()) {
            stop.store(true, Ordering::SeqCst);
            let _ = flipper.join();
            panic!(
                "snapshot {i} copied the root-only file into {}",
                leak.display()
            );
        }
    }
    stop.store(true, Ordering::SeqCst);
    flipper.join().expect("flipper");
    assert!(taken > 0, "no snapshot completed at all");
    w.assert_secret_untouched();
}

#[test]
fn snapshot_refuses_a_persistence_directory_the_app_replaced_with_a_symlink() {
    let w = World::new();
    fs::rename(w.data(), w.path("app/data.real")).expect("move aside");
    plant_symlink(&w.secret(), &w.data());
    let result = take_snapshot(&w.data(), &w.backups(), "s1");
    assert!(
        holds_secret(&w.backups()).is_none(),
        "the snapshot copied the link's target"
    );
    let err = result.expect_err("a planted link is not the persistence");
    assert!(err.to_string().contains("symlink"), "{err}");
    assert!(
        err.to_string().contains(&w.data().display().to_string()),
        "{err}"
    );
    w.assert_secret_untouched();
}

#[test]
fn restore_refuses_a_persistence_directory_the_app_replaced_with_a_symlink() {
    let w = World::new();
    let snap = take_snapshot(&w.data(), &w.backups(), "s1").expect("snapshot");
    fs::rename(w.data(), w.path("app/data.real")).expect("move aside");
    plant_symlink(&w.secret(), &w.data());
    let err = restore_snapshot(&snap, &w.data()).expect_err("a planted link is refused");
    assert!(err.to_string().contains("symlink"), "{err}");
    w.assert_secret_untouched();
    assert!(
        fs::symlink_metadata(w.data())
            .expect("link")
            .file_type()
            .is_symlink(),
        "the link was left for the operator to see"
    );
}

#[test]
fn restore_never_writes_through_a_symlink_swapped_in_for_its_copy() {
    let w = World::new();
    w.add_bulk(300);
    let snap = take_snapshot(&w.data(), &w.backups(), "s1").expect("snapshot");
    fs::write(w.data().join("state.json"), b"{\"cash\": 0}").expect("change");
    let copy = w.path("app/data.slipway-restore");
    let stolen = w.path("app/stolen");
    let secret = w.secret();
    let stop = Arc::new(AtomicBool::new(false));
    let swapped = Arc::new(AtomicBool::new(false));
    // The app watches its (writable) parent directory for the restore copy
    // and swaps it for a link to the root-only directory once.
    let attacker = {
        let swapped = Arc::clone(&swapped);
        race(&stop, move || {
            if swapped.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
                return;
            }
            if fs::symlink_metadata(&copy).is_ok_and(|m| m.is_dir())
                && fs::rename(&copy, &stolen).is_ok()
            {
                plant_symlink(&secret, &copy);
                swapped.store(true, Ordering::SeqCst);
            }
        })
    };
    let result = restore_snapshot(&snap, &w.data());
    stop.store(true, Ordering::SeqCst);
    attacker.join().expect("attacker");
    assert!(swapped.load(Ordering::SeqCst), "the race never happened");
    w.assert_secret_untouched();
    // Either the restore noticed and refused, or the data is the snapshot's:
    // never a half-restore through someone else's directory.
    if result.is_ok() {
        assert_eq!(tree_digest(&w.data()).expect("digest"), snap.digest);
    }
    assert!(holds_secret(&w.path("app")).is_none());
}

/// An attempt for [`report::report_attempt`].
fn attempt() -> Attempt {
    Attempt {
        op: "update".into(),
        at: Timestamp::parse("2026-03-01T10:00:00Z").expect("time"),
        result: AttemptResult::Failed,
        from_version: None,
        version: None,
        release_id: None,
        message: "failed for the test".into(),
        duration_ms: 1,
        cause: None,
        auto: false,
    }
}

fn report_config(w: &World) -> (Layout, Config) {
    let root = w.path("root");
    fs::create_dir_all(&root).expect("root");
    let mut config = Config::default();
    config.paths.root = root.clone();
    config.paths.persistence = w.data();
    config.report.journald = false;
    config.file = w.path("update.toml");
    (Layout::new(root), config)
}

#[test]
fn report_never_writes_meta_files_through_a_symlinked_meta() {
    let w = World::new();
    let (layout, config) = report_config(&w);
    let elsewhere = w.path("elsewhere");
    fs::create_dir(&elsewhere).expect("elsewhere");
    plant_symlink(&elsewhere, &w.data().join("meta"));
    let result = report::report_attempt(
        &layout,
        &config,
        &HostState::default(),
        &attempt(),
        None,
        None,
    );
    assert_eq!(
        fs::read_dir(&elsewhere).expect("read").count(),
        0,
        "update_state.json was written through the symlinked meta/"
    );
    let err = result.expect_err("the link is reported");
    assert!(err.to_string().contains("meta"), "{err}");
    // The rest of the report still happened.
    assert!(layout.banner_file().is_file());
}

#[test]
fn report_never_writes_meta_files_through_a_symlinked_persistence() {
    let w = World::new();
    let (layout, config) = report_config(&w);
    let elsewhere = w.path("elsewhere");
    fs::create_dir(&elsewhere).expect("elsewhere");
    fs::rename(w.data(), w.path("app/data.real")).expect("move aside");
    plant_symlink(&elsewhere, &w.data());
    let result = report::report_attempt(
        &layout,
        &config,
        &HostState::default(),
        &attempt(),
        None,
        None,
    );
    assert_eq!(
        fs::read_dir(&elsewhere).expect("read").count(),
        0,
        "meta/ was created through the symlinked persistence"
    );
    assert!(result.is_err());
}

#[test]
fn the_data_schema_is_never_read_through_a_symlink() {
    let w = World::new();
    fs::write(w.secret().join("version"), b"7\n").expect("root-only number");
    plant_symlink(
        &w.secret().join("version"),
        &w.data().join("schema_version"),
    );
    let result = data_schema(&w.data(), None);
    assert!(
        !matches!(result, Ok(Some(7))),
        "the schema was read through the link"
    );
    let err = result.expect_err("a link is refused");
    let err = format!("{}: {}", err.what, err.why);
    assert!(err.contains("symlink"), "{err}");
    // And its content never shows up in a message.
    fs::write(w.secret().join("version"), SECRET).expect("secret text");
    let err = data_schema(&w.data(), None).expect_err("refused");
    let err = format!("{}: {} ({})", err.what, err.why, err.hint);
    assert!(!err.contains("root-only"), "{err}");
}

#[test]
fn an_operators_symlink_to_a_data_volume_is_still_followed() {
    // Root made the link (a data volume mounted elsewhere): that is the
    // configuration, not the app, and it keeps working.
    let w = World::new();
    let volume = w.path("volume");
    fs::rename(w.data(), &volume).expect("move to the volume");
    std::os::unix::fs::symlink(&volume, w.data()).expect("operator's link");
    let snap = take_snapshot(&w.data(), &w.backups(), "s1").expect("snapshot");
    assert_eq!(snap.files, 2);
    fs::write(volume.join("state.json"), b"{\"cash\": 0}").expect("change");
    restore_snapshot(&snap, &w.data()).expect("restore");
    assert_eq!(
        fs::read(volume.join("state.json")).expect("restored"),
        b"{\"cash\": 100}"
    );
    assert!(fs::symlink_metadata(w.data())
        .expect("link")
        .file_type()
        .is_symlink());
}

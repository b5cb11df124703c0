//! A disk that fills up in the middle of an update, on a real small file
//! system (issue 9: "the ENOSPC cases end with the app resumed and a
//! documented exit code").
//!
//! Each test mounts a tmpfs of [`DISK_MIB`] MiB, puts the install root and
//! the persistence on it, installs v1 of the example bot (the command
//! backend, `examples/host/bot-ctl`), then installs v2 and, when
//! `<root>/state/journal.json` names the step under test, writes a filler
//! file until the file system answers ENOSPC: at `Quiesce`, right after the
//! app paused and saved (before the paused snapshot); at `HealthGate`, with
//! an unhealthy v2 that migrated the data; and at `HealthGate` again with
//! data that outgrew the room set aside, so that even the restore fails.
//! The bot's pid file and log (`<root>/run`) are kept off the small disk:
//! they belong to the service manager, and a bot that cannot log cannot
//! answer its quiesce.
//!
//! Mounting needs root: without it the tests print why and skip, and they
//! fail under `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod bot_host;

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bot_host::{stderr, stdout, Flavor, Release, TestHost};

/// The size of the small file system.
const DISK_MIB: u64 = 32;
/// The default `min_free_mib` (64) is more than the whole small disk.
const MIN_FREE: &[(&str, &str)] = &[("paths", "min_free_mib = 1")];
/// How long a watcher waits for the step it fills the disk at.
const STEP_WAIT: Duration = Duration::from_secs(90);

/// A [`TestHost`] whose root and persistence live on a tmpfs of
/// [`DISK_MIB`] MiB. Dropping it stops the bot (its working directory is on
/// the tmpfs) and unmounts, also when the test panicked.
struct SmallDisk {
    host: TestHost,
    mount: PathBuf,
}

impl SmallDisk {
    /// Mounts the small file system and prepares the host on it, with
    /// `extra` configuration lines (see [`TestHost::write_config`]); `None`
    /// (after printing why) when not root outside CI.
    fn mount(extra: &[(&str, &str)]) -> Option<SmallDisk> {
        if !rustix::process::geteuid().is_root() {
            let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
            assert!(
                !ci,
                "CI=true but not root: the disk-full tests mount a tmpfs; run them as root"
            );
            eprintln!("SKIP disk full: mounting a small tmpfs needs root");
            return None;
        }
        let host = TestHost::with_files_in("small", extra);
        let mount = host.path("small");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={DISK_MIB}m,mode=0755"))
            .arg("slipway-disk-full")
            .arg(&mount)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs on {} as root: {}",
            mount.display(),
            stderr(&out)
        );
        let disk = SmallDisk { host, mount };
        // bot-ctl's pid file and log, off the small disk.
        let run = disk.host.path("run");
        fs::create_dir_all(&run).expect("run dir");
        fs::create_dir_all(disk.host.root()).expect("root");
        std::os::unix::fs::symlink(&run, disk.host.root().join("run")).expect("run link");
        Some(disk)
    }

    fn filler(&self) -> PathBuf {
        self.mount.join("filler")
    }

    /// Bytes free for an unprivileged writer.
    fn free_bytes(&self) -> u64 {
        let s = rustix::fs::statvfs(&self.mount).expect("statvfs");
        s.f_bavail * s.f_frsize
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        self.host.stop_bot();
        if let Some(pid) = self.host.bot_pid() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).output();
        }
        for _ in 0..50 {
            let done = Command::new("umount")
                .arg(&self.mount)
                .output()
                .is_ok_and(|o| o.status.success());
            if done {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Still busy (a process we did not start?): detach it at least.
        let _ = Command::new("umount").arg("-l").arg(&self.mount).output();
    }
}

/// Writes `path` until its file system answers ENOSPC (big writes, then
/// small ones, so no block is left); returns the bytes written.
fn fill_up(path: &Path) -> u64 {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open the filler");
    let chunk = vec![0xa5u8; 1 << 20];
    let mut written = 0u64;
    for size in [1 << 20, 4096, 1] {
        loop {
            match file.write(&chunk[..size]) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("writing {}: {e}", path.display()),
            }
        }
    }
    written
}

/// Waits until the journal under `root` names `step`; false after
/// [`STEP_WAIT`].
fn wait_for_step(root: &Path, step: &str) -> bool {
    wait_for_any_step(root, &[step])
}

/// Waits until the journal under `root` names one of `steps`.
fn wait_for_any_step(root: &Path, steps: &[&str]) -> bool {
    let journal = root.join("state/journal.json");
    let deadline = Instant::now() + STEP_WAIT;
    while Instant::now() < deadline {
        let named = fs::read(&journal)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|j| steps.iter().any(|s| j["step"] == *s));
        if named {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

/// v1 installed from its archive, healthy, and its data saved.
fn install_v1(host: &TestHost) -> Release {
    let v1 = host.build("1.0.0", &Flavor::default());
    host.run_expect(&["install", &v1.archive.to_string_lossy()], 0);
    host.wait_healthy("1.0.0");
    // Let the bot save once, so there is data to protect.
    let _ = bot_host::http(host.port, "POST", "/admin/save");
    v1
}

/// `slipway install <release> --json` with a deadline: the exit code, the
/// outcome (Null when none was printed) and stderr.
fn install(host: &TestHost, release: &Release) -> (Option<i32>, serde_json::Value, String) {
    let out = bot_host::run_with_deadline(
        host.slipway(&["install", &release.archive.to_string_lossy(), "--json"]),
        Duration::from_secs(150),
    );
    let outcome = serde_json::from_str(&stdout(&out)).unwrap_or(serde_json::Value::Null);
    (out.status.code(), outcome, stderr(&out))
}

/// What must hold after either case: the old release current, complete and
/// serving unpaused; no journal, reserve, partial snapshot or restore copy
/// left; and, once the disk has room again, nothing for `recover` to do.
fn assert_back_on(disk: &SmallDisk, v1: &Release, run_stderr: &str) {
    let host = &disk.host;
    let root = host.root();
    assert!(
        !root.join("state/journal.json").exists(),
        "the run left its journal on the full disk\n{run_stderr}"
    );
    for reserve in ["reserve.journal", "reserve.restore"] {
        assert!(
            !root.join("state").join(reserve).exists(),
            "state/{reserve} was not released"
        );
    }
    assert_eq!(host.link("current"), Some(v1.dir_name()));
    host.run_expect(&["verify"], 0);
    host.wait_healthy(&v1.version);
    let (_, body) = host.health().expect("health");
    assert_eq!(body["paused"], false, "the app was left paused: {body}");
    let leftovers: Vec<String> = fs::read_dir(root.join("backups"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "partial snapshots left: {leftovers:?}"
    );
    for sibling in ["data.slipway-restore", "data.slipway-old"] {
        assert!(!disk.mount.join(sibling).exists(), "{sibling} left behind");
    }

    fs::remove_file(disk.filler()).expect("remove the filler");
    let out = host.run_expect(&["recover"], 0);
    assert!(
        !stderr(&out).contains("recovering"),
        "recover found something to do:\n{}",
        stderr(&out)
    );
}

/// A stand-in for the bot's quiesce endpoint that fills the disk at the
/// worst moment: it takes slipway's `POST` (the journal names `Quiesce`),
/// forwards it to the bot (which pauses and saves, on a disk with room),
/// fills the disk, and only then passes the bot's acknowledgement on.
/// Slipway's next write is the paused snapshot, on a full disk; no process
/// of slipway's runs meanwhile that could free a block by ending. Returns
/// its port and a thread that yields the bytes written to fill the disk.
fn quiesce_that_fills_the_disk(disk: &SmallDisk) -> (u16, std::thread::JoinHandle<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    let bot_port = disk.host.port;
    let root = disk.host.root();
    let filler = disk.filler();
    let thread = std::thread::spawn(move || {
        let deadline = Instant::now() + STEP_WAIT;
        let mut conn = loop {
            match listener.accept() {
                Ok((conn, _)) => break conn,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "slipway never asked to quiesce");
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        conn.set_nonblocking(false).expect("blocking");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).expect("read the request");
            assert!(n > 0, "the request ended early");
            request.extend_from_slice(&buf[..n]);
        }
        assert!(
            request.starts_with(b"POST "),
            "{}",
            String::from_utf8_lossy(&request)
        );
        assert!(
            wait_for_step(&root, "Quiesce"),
            "the journal does not name Quiesce"
        );
        let (status, body) =
            bot_host::http(bot_port, "POST", "/admin/quiesce").expect("the bot answers");
        assert_eq!(status, 200, "the bot did not pause: {body}");
        let written = fill_up(&filler);
        let body = body.to_string();
        write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("answer slipway");
        written
    });
    (port, thread)
}

/// The disk fills after the app paused (and saved) and before slipway
/// copies the paused data again: the paused snapshot cannot be written.
/// The run gives up before anything is switched (a flip back could not
/// have restored what the app saved when it paused): the partial copy is
/// gone, the app is resumed, and it exits 1 with v1 running, unpaused, on
/// its own data; no journal is left. With room again the update goes
/// through.
#[test]
fn disk_full_before_the_paused_snapshot_resumes_the_app_on_the_old_release() {
    let Some(disk) = SmallDisk::mount(MIN_FREE) else {
        return;
    };
    let host = &disk.host;
    let v1 = install_v1(host);
    let v2 = host.build("2.0.0", &Flavor::default());
    let trades_before = host.state_json()["trades"].as_u64().unwrap_or(0);

    let (port, filler) = quiesce_that_fills_the_disk(&disk);
    let bot = format!("http://127.0.0.1:{}/admin", host.port);
    let quiesce_url = format!("quiesce_url = \"http://127.0.0.1:{port}/admin/quiesce\"");
    let resume_url = format!("resume_url = \"{bot}/resume\"");
    let mut config = MIN_FREE.to_vec();
    config.extend([
        ("service", quiesce_url.as_str()),
        ("service", resume_url.as_str()),
    ]);
    host.write_config(&config);

    let (code, outcome, err) = install(host, &v2);
    let filled = filler.join().expect("the quiesce stand-in");
    assert!(filled > 0, "nothing was written to fill the disk");
    assert_eq!(
        code,
        Some(1),
        "expected exit 1 (failed, the old release runs)\n{outcome}\n{err}"
    );
    assert_eq!(outcome["result"], "failed", "{outcome}");
    let message = outcome["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("cannot snapshot the paused data"),
        "{message}"
    );
    // The app's own latest save stands: nothing was restored over it.
    assert_eq!(host.data_schema(), 1);
    assert!(host.state_json()["trades"].as_u64().unwrap_or(0) >= trades_before);
    assert_back_on(&disk, &v1, &err);

    // With room again, and the bot's own quiesce, the update goes through.
    host.write_config(MIN_FREE);
    let (code, outcome, err) = install(host, &v2);
    assert_eq!(code, Some(0), "{outcome}\n{err}");
    host.wait_healthy("2.0.0");
}

/// The disk fills while an unhealthy release (which migrated the data to
/// schema 2) is in its health gate. The flip back has the room it needs:
/// the journal's reserve for its records, the restore's reserve (a copy of
/// the persistence, counted in blocks: here hundreds of small files) for
/// putting the snapshot back. The data is byte for byte the paused
/// snapshot again, v1 runs healthy and unpaused, and the run exits 3.
#[test]
fn disk_full_during_the_health_gate_flips_back_and_restores_the_data() {
    let Some(disk) = SmallDisk::mount(MIN_FREE) else {
        return;
    };
    let host = &disk.host;
    let v1 = install_v1(host);
    // Data kept as many small files (an order book, one file per order):
    // a copy of it takes a block per file, far more than its length.
    let orders = host.data().join("orders");
    fs::create_dir_all(&orders).expect("orders");
    for i in 0..400 {
        fs::write(
            orders.join(format!("{i:04}.json")),
            format!("{{\"order\": {i}, \"qty\": 1}}\n"),
        )
        .expect("an order");
    }
    let v2 = host.build(
        "2.0.0",
        &Flavor {
            schema: Some(2),
            fail_health: true,
            ..Flavor::default()
        },
    );
    let free_before = disk.free_bytes();

    let root = host.root();
    let filler = disk.filler();
    let watcher = std::thread::spawn(move || {
        assert!(
            wait_for_step(&root, "HealthGate"),
            "the run never reached HealthGate"
        );
        fill_up(&filler)
    });
    let (code, outcome, err) = install(host, &v2);
    let filled = watcher.join().expect("the filler thread");
    assert!(
        filled > 0 && filled < free_before,
        "filled {filled} of {free_before}"
    );

    assert_eq!(
        code,
        Some(3),
        "expected exit 3 (unhealthy, flipped back)\n{outcome}\n{err}"
    );
    assert_eq!(outcome["result"], "rolled_back", "{outcome}");
    assert_eq!(outcome["critical"], false, "{outcome}");
    // The data is the paused snapshot again, byte for byte.
    assert_eq!(host.data_schema(), 1, "the migration was not undone");
    let snapshot = PathBuf::from(
        outcome["snapshot"]
            .as_str()
            .expect("snapshot in the outcome"),
    );
    assert_eq!(
        bot_host::tree_digest(&host.data()),
        bot_host::tree_digest(&snapshot.join("data")),
        "the persistence differs from the snapshot {}",
        snapshot.display()
    );
    assert_back_on(&disk, &v1, &err);
}

/// When even the restore cannot be written (here: the data grew by 3 MiB
/// after the transaction measured it, so the room set aside is short), the
/// flip back stops where it must: `current` is v1 again but v1 is not
/// started on data it cannot read, v2 stays paused, the partial restore
/// copy is gone, the journal stays, and the run exits 1 with a CRITICAL
/// message. Once there is room, `slipway recover` finishes the flip back
/// (exit 0, result `rolled_back`): the data is the snapshot again and v1
/// runs unpaused.
#[test]
fn a_restore_that_still_fails_keeps_the_journal_and_recover_finishes_the_flip_back() {
    let Some(disk) = SmallDisk::mount(MIN_FREE) else {
        return;
    };
    let host = &disk.host;
    let v1 = install_v1(host);
    let v2 = host.build(
        "2.0.0",
        &Flavor {
            schema: Some(2),
            fail_health: true,
            ..Flavor::default()
        },
    );

    let root = host.root();
    let data = host.data();
    let filler = disk.filler();
    let watcher = std::thread::spawn(move || {
        // After the room was set aside, before the snapshot.
        assert!(
            wait_for_any_step(&root, &["Verify", "Stage", "Check"]),
            "the run never started"
        );
        fs::write(data.join("history.bin"), vec![7u8; 3 << 20]).expect("grow the data");
        assert!(
            wait_for_step(&root, "HealthGate"),
            "the run never reached HealthGate"
        );
        fill_up(&filler)
    });
    let (code, outcome, err) = install(host, &v2);
    let filled = watcher.join().expect("the filler thread");
    assert!(filled > 0, "nothing was written to fill the disk");

    assert_eq!(code, Some(1), "expected exit 1\n{outcome}\n{err}");
    assert!(
        err.contains("CRITICAL: cannot restore the persistence snapshot"),
        "{err}"
    );
    assert!(err.contains("slipway recover"), "{err}");
    let journal: serde_json::Value = serde_json::from_slice(
        &fs::read(host.root().join("state/journal.json")).expect("the journal stays"),
    )
    .expect("journal is JSON");
    assert_eq!(journal["step"], "FlipBack");
    assert_eq!(host.link("current"), Some(v1.dir_name()));
    assert_eq!(
        host.data_schema(),
        2,
        "the data was left whole, as v2 left it"
    );
    assert!(
        !disk.mount.join("data.slipway-restore").exists(),
        "the partial restore copy still takes the room"
    );
    let (_, body) = host.health().expect("v2 still answers");
    assert_eq!(body["version"], "2.0.0", "{body}");
    assert_eq!(body["paused"], true, "v2 must not write meanwhile: {body}");
    let snapshot = PathBuf::from(
        journal["snapshot"]["dir"]
            .as_str()
            .expect("the journal names the snapshot"),
    );

    fs::remove_file(disk.filler()).expect("remove the filler");
    let o = host.json(&["recover"], 0);
    assert_eq!(o["result"], "rolled_back", "{o}");
    assert_eq!(o["critical"], false, "{o}");
    assert_eq!(host.data_schema(), 1);
    assert_eq!(
        bot_host::tree_digest(&host.data()),
        bot_host::tree_digest(&snapshot.join("data"))
    );
    assert_eq!(host.link("current"), Some(v1.dir_name()));
    assert!(!host.root().join("state/journal.json").exists());
    host.run_expect(&["verify"], 0);
    host.wait_healthy("1.0.0");
    let (_, body) = host.health().expect("health");
    assert_eq!(body["paused"], false, "{body}");
}

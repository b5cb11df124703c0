//! Every file slipway reads is opened no-follow and non-blocking, must be a
//! regular file and is read up to a cap; every HTTP request has an overall
//! deadline on top of the stall timeout (SPEC §6, docs/threat-model.md).
//!
//! Each test is one attack from issue 10, run against the real `slipway`
//! binary: it must fail fast with an error naming the file or URL, and
//! never hang, grow or hold the lock. Every run has a hard timeout, so a
//! regression shows as a failed test, not a stuck one.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod bot_host;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use bot_host::{slipway_bin, stderr, stdout};

/// A host whose configuration points at a local repository that holds
/// nothing but an empty `channels/`.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::Builder::new()
            .prefix("slipway-bounded-")
            .tempdir()
            .expect("tempdir");
        fs::create_dir_all(dir.path().join("repo/channels")).expect("repo");
        let host = Host { dir };
        host.write_config(&[]);
        host
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn config(&self) -> PathBuf {
        self.path("update.toml")
    }

    /// Writes the configuration; `update` lines replace the defaults with
    /// the same key.
    fn write_config(&self, update: &[&str]) {
        let mut lines: Vec<String> = vec![
            "channel = \"stable\"".into(),
            format!("source = \"{}\"", self.path("repo").display()),
            // Any valid key: these tests are refused before a signature matters.
            "public_keys = [\"RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3\"]".into(),
            "connect_timeout_seconds = 5".into(),
            "stall_timeout_seconds = 1".into(),
        ];
        for extra in update {
            let key = extra.split('=').next().map(str::trim);
            lines.retain(|l| l.split('=').next().map(str::trim) != key);
            lines.push(extra.to_string());
        }
        let text = format!(
            "[update]\n{}\n\n[paths]\nroot = \"{}\"\npersistence = \"{}\"\nmax_save_age_minutes = 0\n\n\
             [service]\nmanager = \"none\"\nhealthy_polls = 1\n\n[report]\njournald = false\n",
            lines.join("\n"),
            self.path("root").display(),
            self.path("data").display()
        );
        fs::write(self.config(), text).expect("write config");
    }

    /// `slipway --config <config> ARGS`, killed after 30 s: long enough for
    /// any honest refusal, short enough that a hang fails the test.
    fn run(&self, config: &Path, args: &[&str]) -> (Output, Duration) {
        let mut cmd = std::process::Command::new(slipway_bin());
        cmd.arg("--config").arg(config).args(args);
        for var in [
            "SLIPWAY_CONFIG",
            "BOT_AUTO_UPDATE",
            "SLIPWAY_FAULT_AFTER",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ] {
            cmd.env_remove(var);
        }
        let started = Instant::now();
        let out = assert_cmd::Command::from_std(cmd)
            .timeout(Duration::from_secs(30))
            .output()
            .unwrap_or_else(|e| panic!("slipway {args:?}: {e}"));
        (out, started.elapsed())
    }
}

fn mkfifo(path: &Path) {
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        path,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .expect("mkfifo");
}

/// Asserts the exit code, that the refusal came fast, and that stderr
/// names `path` and says what it is.
fn refused(out: &Output, took: Duration, code: i32, path: &str, words: &[&str]) {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "exited {:?}, expected {code} (a hang is killed after 30 s)\n--- stdout\n{}\n--- stderr\n{err}",
        out.status.code(),
        stdout(out),
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(err.contains(path), "the error does not name {path}: {err}");
    for word in words {
        assert!(err.contains(word), "the error does not say {word:?}: {err}");
    }
}

#[test]
fn config_of_dev_zero_is_refused_at_once_naming_it() {
    let host = Host::new();
    let (out, took) = host.run(Path::new("/dev/zero"), &["status"]);
    refused(
        &out,
        took,
        2,
        "/dev/zero",
        &["character device", "not a regular file"],
    );
}

#[test]
fn config_that_is_a_fifo_is_refused_without_waiting_for_a_writer() {
    let host = Host::new();
    let fifo = host.path("update.toml.fifo");
    mkfifo(&fifo);
    let (out, took) = host.run(&fifo, &["status"]);
    refused(&out, took, 2, &fifo.display().to_string(), &["FIFO"]);
}

#[test]
fn public_key_file_of_dev_zero_is_refused_at_once_naming_it() {
    let host = Host::new();
    host.write_config(&["public_keys = [\"/dev/zero\"]"]);
    let (out, took) = host.run(&host.config(), &["update"]);
    refused(
        &out,
        took,
        2,
        "/dev/zero",
        &["public key", "character device"],
    );
}

#[test]
fn channel_index_that_is_a_fifo_in_a_local_repository_is_refused_without_hanging() {
    let host = Host::new();
    let index = host.path("repo/channels/stable.json");
    mkfifo(&index);
    let (out, took) = host.run(&host.config(), &["update"]);
    refused(&out, took, 1, &index.display().to_string(), &["FIFO"]);
    // The lock was given back: the next run is not "locked by pid N".
    fs::remove_file(&index).expect("remove fifo");
    let (again, _) = host.run(&host.config(), &["update"]);
    assert_ne!(again.status.code(), Some(5), "{}", stderr(&again));
}

#[test]
fn journal_that_is_a_fifo_is_refused_without_hanging() {
    let host = Host::new();
    let state = host.path("root/state");
    fs::create_dir_all(&state).expect("state");
    let journal = state.join("journal.json");
    mkfifo(&journal);
    let (out, took) = host.run(&host.config(), &["status"]);
    refused(&out, took, 1, &journal.display().to_string(), &["FIFO"]);
}

#[test]
fn release_records_and_banner_that_are_fifos_do_not_hang_status() {
    let host = Host::new();
    let state = host.path("root/state");
    fs::create_dir_all(&state).expect("state");
    mkfifo(&state.join("releases.json"));
    mkfifo(&state.join("banner.txt"));
    let (out, took) = host.run(&host.config(), &["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn oversized_bundle_member_is_refused_before_it_is_written() {
    let host = Host::new();
    // A bundle tar whose channel index is 1 MiB, 16 times what any index
    // may be: refused from its header, before the bytes reach the disk.
    let bundle = host.path("bundle.tar");
    let mut builder = tar::Builder::new(fs::File::create(&bundle).expect("create"));
    let mut append = |name: &str, kind: tar::EntryType, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        h.set_size(data.len() as u64);
        h.set_path(name).expect("name");
        h.set_cksum();
        builder.append(&h, data).expect("append");
    };
    append("b/", tar::EntryType::Directory, b"");
    append("b/channels/", tar::EntryType::Directory, b"");
    append(
        "b/channels/stable.json",
        tar::EntryType::Regular,
        &vec![b' '; 1 << 20],
    );
    builder.finish().expect("finish");
    drop(builder);

    let (out, took) = host.run(&host.config(), &["install", &bundle.to_string_lossy()]);
    refused(
        &out,
        took,
        1,
        "b/channels/stable.json",
        &["1048576 bytes", "over the 65536 bytes"],
    );
    // Nothing of it is left in downloads/, where bundles are unpacked.
    let downloads = host.path("root/downloads");
    let left: Vec<_> = fs::read_dir(&downloads)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

/// A server that answers every request with a 878-byte body it sends one
/// byte every 700 ms: always just inside a 1 s stall timeout, so only an
/// overall deadline ends the request (about 10 minutes otherwise).
fn dripping_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while !request.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte) {
                        Ok(1) => request.push(byte[0]),
                        _ => return,
                    }
                }
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 878\r\n\r\n";
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                for _ in 0..878 {
                    std::thread::sleep(Duration::from_millis(700));
                    if stream
                        .write_all(b" ")
                        .and_then(|()| stream.flush())
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}/repo")
}

#[test]
fn a_dripping_server_is_cut_off_at_the_request_deadline() {
    let host = Host::new();
    let url = dripping_server();
    host.write_config(&[
        &format!("source = \"{url}\""),
        "request_deadline_seconds = 3",
    ]);
    let (out, took) = host.run(&host.config(), &["update"]);
    refused(
        &out,
        took,
        1,
        &format!("{url}/channels/stable.json"),
        &["3 s request deadline", "request_deadline_seconds"],
    );
    assert!(took >= Duration::from_secs(2), "took {took:?}");
}

#[test]
fn a_dripping_server_is_cut_off_at_the_run_deadline() {
    let host = Host::new();
    let url = dripping_server();
    host.write_config(&[
        &format!("source = \"{url}\""),
        "request_deadline_seconds = 600",
        "run_deadline_seconds = 3",
    ]);
    let (out, took) = host.run(&host.config(), &["update"]);
    refused(
        &out,
        took,
        1,
        &format!("{url}/channels/stable.json"),
        &["3 s run deadline", "run_deadline_seconds"],
    );
}

//! Tests of the end-to-end harness itself: if these fail, every e2e test's
//! verdict is suspect.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use slipway_e2e::{
    minisign, profile_dir, shared_tempdir, Container, ContainerOptions, Nginx, NginxOptions,
    OutputExt,
};

// -------------------------------------------------------------------- bins

#[test]
fn bins_are_looked_up_beside_this_test() -> Result<()> {
    assert!(slipway_e2e::workspace_root().join("Cargo.toml").is_file());
    let exe = std::env::current_exe()?;
    assert_eq!(
        exe.parent().and_then(Path::parent),
        Some(profile_dir().as_path())
    );
    for (name, found) in [
        ("slipway", slipway_e2e::slipway()),
        ("slipway-pack", slipway_e2e::slipway_pack()),
    ] {
        match found {
            Ok(path) => assert_eq!(path, profile_dir().join(name)),
            // Not built (e.g. `cargo test -p slipway-e2e` alone): the error
            // must say what to do.
            Err(e) => assert!(
                format!("{e:#}").contains("cargo build --workspace"),
                "{e:#}"
            ),
        }
    }
    let err = slipway_e2e::bins::bin("no-such-binary").unwrap_err();
    assert!(
        format!("{err:#}").contains("build the workspace first"),
        "{err:#}"
    );
    Ok(())
}

// ---------------------------------------------------------------- minisign

#[test]
fn minisign_round_trip_with_password() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (secret, public) = minisign::generate_keypair(dir.path(), Some("correct horse"))?;
    let file = dir.path().join("release.tar.zst");
    fs::write(&file, b"release bytes")?;

    let sig = minisign::sign(
        &secret,
        &file,
        Some("correct horse"),
        "app:bot version:1.2.3",
    )?;
    assert_eq!(sig, dir.path().join("release.tar.zst.minisig"));
    assert_eq!(minisign::trusted_comment(&sig)?, "app:bot version:1.2.3");
    let out = minisign::verify(&public, &file)?;
    assert!(out.status.success(), "{}", out.stderr_text());
    assert!(out.stdout_text().contains("app:bot version:1.2.3"));

    // The key text form, as a host's configuration carries it.
    let key = minisign::public_key_text(&public)?;
    assert!(key.starts_with("RW"), "{key}");
    assert!(minisign::verify_with_key_text(&key, &file)?
        .status
        .success());

    // A wrong password is refused, and leaves the good signature alone.
    let err = minisign::sign(&secret, &file, Some("wrong"), "x").unwrap_err();
    assert!(format!("{err:#}").contains("Wrong password"), "{err:#}");

    // Tampering is caught.
    fs::write(&file, b"release bytes, tampered")?;
    assert!(!minisign::verify(&public, &file)?.status.success());
    Ok(())
}

#[test]
fn minisign_round_trip_without_password_and_legacy() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (secret, public) = minisign::generate_keypair(dir.path(), None)?;
    let file = dir.path().join("channel.json");
    fs::write(&file, b"{}\n")?;

    let prehashed = minisign::sign(&secret, &file, None, "unencrypted key")?;
    assert!(minisign::verify(&public, &file)?.status.success());
    // base64 of the algorithm bytes: "ED" (prehashed) gives "RU", "Ed" (legacy) "RW".
    assert!(signature_line(&prehashed)?.starts_with("RU"));

    let legacy = minisign::sign_legacy(&secret, &file, None, None)?;
    assert!(signature_line(&legacy)?.starts_with("RW"));
    assert!(minisign::verify(&public, &file)?.status.success());

    // A second key pair in the same directory is refused, not overwritten.
    assert!(minisign::generate_keypair(dir.path(), None).is_err());

    // A signature by another key does not verify.
    let other = tempfile::tempdir()?;
    let (_, other_public) = minisign::generate_keypair(other.path(), None)?;
    assert!(!minisign::verify(&other_public, &file)?.status.success());
    Ok(())
}

fn signature_line(signature: &Path) -> Result<String> {
    fs::read_to_string(signature)?
        .lines()
        .nth(1)
        .map(str::to_string)
        .context("no signature line")
}

// ------------------------------------------------------------------- nginx

struct Response {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// A plain HTTP/1.1 GET with `Connection: close`.
fn http_get(base_url: &str, path: &str, extra_headers: &[(&str, &str)]) -> Result<Response> {
    let authority = base_url
        .strip_prefix("http://")
        .context("not an http URL")?;
    let mut stream = TcpStream::connect(authority)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    for (name, value) in extra_headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status_line = lines.next().context("empty response")?;
    let status = status_line
        .split(' ')
        .nth(1)
        .context("no status")?
        .parse()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn nginx_serves_files_with_range_and_etag() -> Result<()> {
    let dir = tempfile::tempdir()?;
    fs::create_dir(dir.path().join("releases"))?;
    let content = pattern(100_000);
    fs::write(dir.path().join("releases/a.tar.zst"), &content)?;
    let nginx = Nginx::serve(dir.path())?;
    assert!(nginx.base_url().starts_with("http://127.0.0.1:"));

    let full = http_get(&nginx.base_url(), "/releases/a.tar.zst", &[])?;
    assert_eq!(full.status, 200);
    assert_eq!(full.body, content);
    assert_eq!(
        full.headers.get("accept-ranges").map(String::as_str),
        Some("bytes")
    );
    let etag = full.headers.get("etag").context("no ETag header")?.clone();

    let part = http_get(
        &nginx.base_url(),
        "/releases/a.tar.zst",
        &[("Range", "bytes=1000-1999")],
    )?;
    assert_eq!(part.status, 206);
    assert_eq!(part.body, &content[1000..2000]);
    assert_eq!(
        part.headers.get("content-range").map(String::as_str),
        Some("bytes 1000-1999/100000")
    );
    let tail = http_get(
        &nginx.base_url(),
        "/releases/a.tar.zst",
        &[("Range", "bytes=99990-")],
    )?;
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body, &content[99_990..]);

    let unchanged = http_get(
        &nginx.base_url(),
        "/releases/a.tar.zst",
        &[("If-None-Match", &etag)],
    )?;
    assert_eq!(unchanged.status, 304);
    assert!(unchanged.body.is_empty());

    let missing = http_get(&nginx.base_url(), "/releases/nope", &[])?;
    assert_eq!(missing.status, 404);

    let log = nginx.access_log_entries()?;
    let statuses: Vec<u16> = log.iter().map(|e| e.status).collect();
    assert_eq!(
        statuses,
        [200, 206, 206, 304, 404],
        "{}",
        nginx.access_log()?
    );
    assert_eq!(log[0].body_bytes, 100_000);
    assert_eq!(log[1].range.as_deref(), Some("bytes=1000-1999"));
    assert_eq!(log[1].body_bytes, 1000);
    assert_eq!(log[3].if_none_match.as_deref(), Some(etag.as_str()));
    Ok(())
}

#[test]
fn nginx_limit_rate_slows_a_download_and_the_log_shows_a_cut() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // Five seconds' worth at the limit: nginx lets the first writes fill
    // the socket buffers at once, so a short file can finish early.
    let content = pattern(160 * 1024);
    fs::write(dir.path().join("big"), &content)?;
    let nginx = Nginx::serve_with(
        dir.path(),
        NginxOptions {
            limit_rate: Some("32k".into()),
            ..Default::default()
        },
    )?;
    let started = Instant::now();
    let full = http_get(&nginx.base_url(), "/big", &[])?;
    let took = started.elapsed();
    assert_eq!(full.body, content);
    assert!(
        took >= Duration::from_millis(1500),
        "160 KiB at 32 KiB/s took only {took:?}"
    );

    // Read a little, then hang up: nginx logs fewer bytes than the file.
    let authority = nginx.base_url().trim_start_matches("http://").to_string();
    let mut stream = TcpStream::connect(&authority)?;
    stream.write_all(format!("GET /big HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())?;
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf)?;
    assert!(n > 0);
    drop(stream);
    slipway_e2e::wait_until(
        Duration::from_secs(20),
        "the cut request in the access log",
        || Ok(nginx.access_log_entries()?.len() == 2),
    )?;
    let cut = &nginx.access_log_entries()?[1];
    assert!(cut.body_bytes < content.len() as u64, "{cut:?}");
    Ok(())
}

// --------------------------------------------------------------- container

/// Whether `path` appears as a mount point in this process's mount table.
fn mounted(path: &Path) -> bool {
    slipway_e2e::container::is_mount_point(path)
}

#[test]
fn container_boots_runs_a_unit_and_cleans_up() -> Result<()> {
    if !Container::available_or_skip()? {
        return Ok(());
    }
    // Made before the boot, under /var/tmp: visible through the overlay.
    let shared = shared_tempdir("selftest")?;
    fs::write(shared.path().join("from-host.txt"), "hello from the host\n")?;

    let started = Instant::now();
    let c = Container::boot("selftest-unit")?;
    let boot_time = started.elapsed();
    let root = c.root().to_path_buf();
    let dir = root
        .parent()
        .context("container root has no parent")?
        .to_path_buf();
    assert!(mounted(&root));

    let state = c.system_state()?;
    assert!(state == "running" || state == "degraded", "{state}");
    assert_eq!(c.exec_ok(&["hostname"])?.stdout_text().trim(), c.name());
    assert_eq!(c.read_to_string("/etc/machine-id")?.trim(), c.machine_id());
    assert_ne!(
        fs::read_to_string("/etc/machine-id")?.trim(),
        c.machine_id()
    );

    // The host's files are visible at the same paths.
    let seen = c.exec_ok(&[
        "cat",
        &shared.path().join("from-host.txt").display().to_string(),
    ])?;
    assert_eq!(seen.stdout_text(), "hello from the host\n");
    let slipway_pack = profile_dir().join("slipway-pack");
    if slipway_pack.exists() {
        c.exec_ok(&["test", "-x", &slipway_pack.display().to_string()])?;
    }
    // Only its own loopback.
    let links = c.exec_ok(&["ls", "/sys/class/net"])?.stdout_text();
    assert_eq!(links.split_whitespace().collect::<Vec<_>>(), ["lo"]);

    // A unit writes a file; the host reads it through host_path, and the
    // host's own path stays untouched.
    let out = shared.path().join("written-by-unit.txt");
    c.install_unit(
        "selftest.service",
        &format!(
            "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/sh -c 'echo unit ran on $(hostname) > {}'\n",
            out.display()
        ),
    )?;
    c.start_unit("selftest.service")?;
    let state = c.unit_state("selftest.service")?;
    assert_eq!(
        (state.active.as_str(), state.sub.as_str()),
        ("active", "exited")
    );
    assert_eq!(
        fs::read_to_string(c.host_path(&out))?,
        format!("unit ran on {}\n", c.name())
    );
    assert!(
        !out.exists(),
        "the container's write leaked to the host path"
    );

    // A transient unit through systemd-run, writing into the container's
    // private /tmp (reached through /proc/<init>/root).
    c.exec_ok(&[
        "systemd-run",
        "--wait",
        "--quiet",
        "--unit=selftest-transient",
        "/bin/sh",
        "-c",
        "echo transient > /tmp/transient.txt",
    ])?;
    assert_eq!(
        fs::read_to_string(c.host_path("/tmp/transient.txt"))?,
        "transient\n"
    );
    assert!(c.host_path("/tmp/transient.txt").starts_with("/proc/"));

    // Restart= counting, as the health gate will watch it.
    c.install_unit(
        "crashy.service",
        "[Unit]\nStartLimitIntervalSec=0\n[Service]\nExecStart=/bin/false\nRestart=always\nRestartSec=100ms\n",
    )?;
    c.start_unit("crashy.service")?;
    let crashy = c.wait_for_unit("crashy.service", Duration::from_secs(30), |s| {
        s.n_restarts >= 2
    })?;
    assert!(crashy.n_restarts >= 2);
    c.stop_unit("crashy.service")?;
    assert_eq!(c.unit_state("crashy.service")?.active, "inactive");

    // write_file lands in the container only.
    c.write_file("/etc/slipway-selftest/config.toml", "a = 1\n", 0o600)?;
    assert_eq!(
        c.exec_ok(&["stat", "-c", "%a", "/etc/slipway-selftest/config.toml"])?
            .stdout_text()
            .trim(),
        "600"
    );
    assert!(!Path::new("/etc/slipway-selftest").exists());

    // Symlinks to absolute targets resolve inside the container.
    c.sh_ok("mkdir -p /opt/selftest/releases/r1 && echo r1 > /opt/selftest/releases/r1/v && ln -sfn /opt/selftest/releases/r1 /opt/selftest/current")?;
    assert_eq!(c.read_to_string("/opt/selftest/current/v")?, "r1\n");
    assert_eq!(
        c.resolve("/opt/selftest/current/v")?,
        Path::new("/opt/selftest/releases/r1/v")
    );

    let poweroff = c.shutdown()?;
    println!("container boot: {boot_time:?}, poweroff + cleanup: {poweroff:?}");
    assert!(!mounted(&root), "{} still mounted", root.display());
    assert!(!dir.exists(), "{} not deleted", dir.display());
    Ok(())
}

#[test]
fn container_is_cleaned_up_when_a_test_panics() -> Result<()> {
    if !Container::available_or_skip()? {
        return Ok(());
    }
    let (tx, rx) = mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let c = Container::boot("selftest-panic").expect("boot");
        tx.send(c.root().to_path_buf()).expect("send");
        panic!("a failing test");
    })
    .join();
    assert!(outcome.is_err());
    let root = rx.recv()?;
    assert!(
        !mounted(&root),
        "{} still mounted after the panic",
        root.display()
    );
    assert!(!root.parent().context("no parent")?.exists());
    Ok(())
}

#[test]
fn container_binds_are_live_and_nginx_runs_inside() -> Result<()> {
    if !Container::available_or_skip()? {
        return Ok(());
    }
    let live = shared_tempdir("selftest-bind")?;
    let repo = shared_tempdir("selftest-repo")?;
    fs::write(repo.path().join("index.json"), "{\"v\":1}\n")?;
    let c = Container::boot_with(
        "selftest-bind",
        ContainerOptions::default().bind(live.path()),
    )?;

    // The host writes after the boot: visible inside through the bind.
    let late = live.path().join("late.txt");
    assert!(!c
        .exec(&["test", "-e", &late.display().to_string()])?
        .status
        .success());
    fs::write(&late, "late\n")?;
    assert_eq!(
        c.exec_ok(&["cat", &late.display().to_string()])?
            .stdout_text(),
        "late\n"
    );
    // The container's writes land on the host path directly.
    c.sh_ok(&format!("echo back > {}/back.txt", live.path().display()))?;
    assert_eq!(fs::read_to_string(live.path().join("back.txt"))?, "back\n");

    // nginx inside, reachable only from inside (own loopback).
    let nginx = Nginx::serve_in(&c, repo.path(), NginxOptions::default())?;
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{}; printf 'GET /index.json HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3",
        nginx.port()
    );
    let response = c.exec_ok(&["bash", "-c", &script])?.stdout_text();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("{\"v\":1}\n"), "{response}");
    let log = nginx.access_log_entries()?;
    assert_eq!(log.len(), 1);
    assert_eq!((log[0].uri.as_str(), log[0].status), ("/index.json", 200));
    let prefix = nginx.prefix().display().to_string();
    drop(nginx);
    let left = c.exec(&["pgrep", "-f", &prefix])?;
    assert!(
        !left.status.success(),
        "nginx still running: {}",
        left.stdout_text()
    );
    drop(c);
    Ok(())
}

//! The offline bundle end to end (the seed's open question 1): made with the
//! real `slipway-pack bundle` from a repository of the example bot, then
//! installed with the real `slipway install` on a host root whose
//! configuration has no `update.source` at all, as on an air-gapped host.
//! Every file of the bundle, changed by one byte, is refused with a message
//! that names it, and leaves the root without a release.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result};
use slipway_e2e::{minisign, run, slipway, slipway_pack, workspace_root, OutputExt};

const TIMEOUT: Duration = Duration::from_secs(180);

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    /// A key, a repository with bot 1.0.0 and 1.1.0 published to stable.
    fn new() -> Result<Setup> {
        let s = Setup {
            dir: tempfile::Builder::new()
                .prefix("slipway-bundle-")
                .tempdir()?,
        };
        s.pack(&["keygen", "--out-dir", &s.p("keys"), "--unencrypted"])?;
        for version in ["1.0.0", "1.1.0"] {
            let out = s.pack(&[
                "build",
                &workspace_root().join("examples/bot").to_string_lossy(),
                "--version",
                version,
                "--key",
                &s.p("keys/slipway.key"),
                "--out",
                &s.p("repo"),
            ])?;
            let id = out.stdout_text().trim().to_string();
            s.pack(&[
                "publish",
                "--repo",
                &s.p("repo"),
                "--channel",
                "stable",
                "--key",
                &s.p("keys/slipway.key"),
                &id,
            ])?;
        }
        Ok(s)
    }

    /// The id of `version` in the stable index.
    fn release_id(&self, version: &str) -> Result<String> {
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(self.path("repo/channels/stable.json"))?)?;
        index["releases"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["version"] == version)
            .and_then(|r| r["id"].as_str())
            .map(str::to_string)
            .with_context(|| format!("{version} is not in the stable index"))
    }

    /// A host (see [`Setup::host`]) running 1.0.0, installed from its
    /// archive: the base of the delta to 1.1.0.
    fn host_on_v1(&self, name: &str) -> Result<PathBuf> {
        let config = self.host(name)?;
        let v1 = self.release_id("1.0.0")?;
        let archive = self.path(&format!(
            "repo/releases/{}.tar.zst",
            v1.trim_start_matches("sha256:")
        ));
        let out = self.slipway(&config, &["install", &archive.to_string_lossy()])?;
        assert_eq!(out.status.code(), Some(0), "{}", out.stderr_text());
        assert_eq!(
            current_version(&self.path(&format!("{name}/root"))).as_deref(),
            Some("1.0.0")
        );
        Ok(config)
    }

    /// `slipway-pack bundle` of stable into `out`, with `extra` flags.
    fn bundle(&self, out: &Path, extra: &[&str]) -> Result<Output> {
        let mut args = vec![
            "bundle".to_string(),
            "--repo".into(),
            self.p("repo"),
            "--channel".into(),
            "stable".into(),
            "--out".into(),
            out.to_string_lossy().into_owned(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.pack(&args)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn p(&self, rel: &str) -> String {
        self.path(rel).to_string_lossy().into_owned()
    }

    fn pack(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new(slipway_pack()?);
        cmd.args(args);
        run(cmd, TIMEOUT)?.checked(format!("slipway-pack {}", args.join(" ")))
    }

    /// A host root with a configuration that names no source: only the
    /// trusted key, the root and `manager = "none"`.
    fn host(&self, name: &str) -> Result<PathBuf> {
        let dir = self.path(name);
        fs::create_dir_all(&dir)?;
        let config = dir.join("update.toml");
        fs::write(
            &config,
            format!(
                "[update]\npublic_keys = [\"{}\"]\n\n[paths]\nroot = \"root\"\npersistence = \"data\"\nmax_save_age_minutes = 0\n\n[service]\nmanager = \"none\"\n\n[report]\njournald = false\n",
                self.p("keys/slipway.pub")
            ),
        )?;
        Ok(config)
    }

    fn slipway(&self, config: &Path, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new(slipway()?);
        cmd.arg("--config").arg(config).args(args);
        cmd.env_remove("SLIPWAY_CONFIG")
            .env_remove("BOT_AUTO_UPDATE");
        run(cmd, TIMEOUT)
    }
}

fn current_version(root: &Path) -> Option<String> {
    let target = fs::read_link(root.join("current")).ok()?;
    let name = target.file_name()?.to_string_lossy().into_owned();
    name.split('-').next().map(str::to_string)
}

/// Files under `<root>/releases/` (staged releases and leftovers).
fn releases_in(root: &Path) -> Vec<String> {
    fs::read_dir(root.join("releases"))
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

/// Every file of a bundle, relative, sorted.
fn bundle_files(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for top in fs::read_dir(dir)? {
        let top = top?;
        let name = top.file_name().to_string_lossy().into_owned();
        if top.file_type()?.is_dir() {
            for f in fs::read_dir(top.path())? {
                out.push(format!("{name}/{}", f?.file_name().to_string_lossy()));
            }
        } else {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

#[test]
fn bundle_installs_on_a_host_with_no_source_configured() -> Result<()> {
    let s = Setup::new()?;
    let bundle = s.path("usb/bot-1.1.0");
    let out = s.pack(&[
        "bundle",
        "--repo",
        &s.p("repo"),
        "--channel",
        "stable",
        "--out",
        &bundle.to_string_lossy(),
        "--key",
        &s.p("keys/slipway.key"),
        "--json",
    ])?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        report["releases"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    assert_eq!(report["releases"][0]["version"], "1.1.0");
    assert_eq!(report["signed"], true);

    // What the operator reads: the key fingerprint and the two commands.
    let readme = fs::read_to_string(bundle.join("README.txt"))?;
    let public = fs::read_to_string(s.path("keys/slipway.pub"))?;
    let public_b64 = public.lines().nth(1).context("pub file")?.trim();
    assert!(readme.contains(public_b64), "{readme}");
    assert!(readme.contains(report["key_id"].as_str().context("key id")?));
    assert!(readme.contains("slipway install /media/usb/bot-1.1.0\n"));
    assert!(readme.contains("slipway status\n"));

    // The stock tools agree: sha256sum -c, and minisign over SHA256SUMS.
    let mut sha = Command::new("sha256sum");
    sha.current_dir(&bundle)
        .args(["-c", "--quiet", "SHA256SUMS"]);
    run(sha, TIMEOUT)?.checked("sha256sum -c SHA256SUMS in the bundle")?;
    minisign::verify(&s.path("keys/slipway.pub"), &bundle.join("SHA256SUMS"))?
        .checked("minisign -V of SHA256SUMS")?;

    let config = s.host("host")?;
    let root = s.path("host/root");
    // No source is configured: `update` has nothing to read.
    let out = s.slipway(&config, &["update"])?;
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr_text());
    assert!(out.stderr_text().contains("no update source"));

    let out = s.slipway(&config, &["install", &bundle.to_string_lossy(), "--json"])?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        out.stdout_text(),
        out.stderr_text()
    );
    assert_eq!(current_version(&root).as_deref(), Some("1.1.0"));
    let status = s
        .slipway(&config, &["status", "--json"])?
        .checked("status")?;
    let status: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    assert_eq!(status["current"]["version"], "1.1.0");
    Ok(())
}

#[test]
fn bundle_tar_installs_and_leaves_no_scratch_behind() -> Result<()> {
    let s = Setup::new()?;
    let tar = s.path("usb/bot-1.1.0.tar");
    s.pack(&[
        "bundle",
        "--repo",
        &s.p("repo"),
        "--channel",
        "stable",
        "--out",
        &tar.to_string_lossy(),
        "--tar",
        "--all",
    ])?;
    // One top directory, named after the file.
    let mut list = Command::new("tar");
    list.arg("-tf").arg(&tar);
    let names = run(list, TIMEOUT)?.checked("tar -tf")?.stdout_text();
    assert!(
        names.lines().all(|l| l.starts_with("bot-1.1.0/")),
        "{names}"
    );
    let archives_in = |dir: &str| {
        names
            .lines()
            .filter(|l| l.starts_with(&format!("bot-1.1.0/{dir}/")) && l.ends_with(".tar.zst"))
            .count()
    };
    // Both releases, and the delta from 1.0.0 to 1.1.0.
    assert_eq!(archives_in("releases"), 2, "{names}");
    assert_eq!(archives_in("deltas"), 1, "{names}");

    let config = s.host("host")?;
    let root = s.path("host/root");
    let out = s.slipway(&config, &["install", &tar.to_string_lossy()])?;
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr_text());
    assert_eq!(current_version(&root).as_deref(), Some("1.1.0"));
    let downloads: Vec<_> = fs::read_dir(root.join("downloads"))?.collect();
    assert!(downloads.is_empty(), "scratch left: {downloads:?}");
    Ok(())
}

#[test]
fn a_changed_file_anywhere_in_a_bundle_is_refused_and_nothing_is_installed() -> Result<()> {
    let s = Setup::new()?;
    let pristine = s.path("pristine");
    s.pack(&[
        "bundle",
        "--repo",
        &s.p("repo"),
        "--channel",
        "stable",
        "--out",
        &pristine.to_string_lossy(),
        "--key",
        &s.p("keys/slipway.key"),
    ])?;
    let files = bundle_files(&pristine)?;
    for expected in [
        "README.txt",
        "SHA256SUMS",
        "SHA256SUMS.minisig",
        "channels/stable.json",
        "channels/stable.json.minisig",
    ] {
        assert!(files.iter().any(|f| f == expected), "{files:?}");
    }
    assert!(files
        .iter()
        .any(|f| f.starts_with("keys/") && f.ends_with(".pub")));
    assert_eq!(
        files.iter().filter(|f| f.starts_with("releases/")).count(),
        2
    );
    // The delta publish wrote from 1.0.0, and its signature.
    assert_eq!(
        files.iter().filter(|f| f.starts_with("deltas/")).count(),
        2,
        "{files:?}"
    );

    for (n, file) in files.iter().enumerate() {
        let bundle = s.path(&format!("t{n}/bundle"));
        copy_dir(&pristine, &bundle)?;
        let path = bundle.join(file);
        let mut bytes = fs::read(&path)?;
        // One byte changed in the middle (a text file stays text).
        let i = bytes.len() / 2;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        fs::write(&path, &bytes)?;

        let config = s.host(&format!("t{n}"))?;
        let root = s.path(&format!("t{n}/root"));
        let out = s.slipway(&config, &["install", &bundle.to_string_lossy()])?;
        let err = out.stderr_text();
        assert_eq!(out.status.code(), Some(1), "tampered {file}: {err}");
        assert!(err.contains("refused"), "tampered {file}: {err}");
        let named = Path::new(file)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let names_it = err.contains(&named) || err.contains("SHA256SUMS");
        assert!(names_it, "tampered {file}: the error names no file: {err}");
        assert_eq!(current_version(&root), None, "tampered {file}");
        assert!(releases_in(&root).is_empty(), "tampered {file}");
        assert!(
            !root.join("state/trust.json").exists(),
            "tampered {file}: trust advanced"
        );
    }

    // A file slipped into releases/ and a symlink in place of a file.
    let bundle = s.path("extra/bundle");
    copy_dir(&pristine, &bundle)?;
    fs::write(bundle.join("releases/extra.tar.zst"), b"x")?;
    let config = s.host("extra")?;
    let out = s.slipway(&config, &["install", &bundle.to_string_lossy()])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr_text().contains("not listed in SHA256SUMS"));

    let bundle = s.path("link/bundle");
    copy_dir(&pristine, &bundle)?;
    let readme = bundle.join("README.txt");
    fs::rename(&readme, bundle.join("README.real"))?;
    std::os::unix::fs::symlink("README.real", &readme)?;
    let config = s.host("link")?;
    let out = s.slipway(&config, &["install", &bundle.to_string_lossy()])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr_text().contains("not a regular file"),
        "{}",
        out.stderr_text()
    );
    Ok(())
}

#[test]
fn an_unsigned_bundle_with_rewritten_sums_is_still_refused_by_the_release_signatures() -> Result<()>
{
    let s = Setup::new()?;
    let bundle = s.path("unsigned");
    s.pack(&[
        "bundle",
        "--repo",
        &s.p("repo"),
        "--channel",
        "stable",
        "--out",
        &bundle.to_string_lossy(),
    ])?;
    assert!(!bundle.join("SHA256SUMS.minisig").exists());
    // An attacker changes the archive and rewrites SHA256SUMS to match.
    let archive = fs::read_dir(bundle.join("releases"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".tar.zst"))
        .context("archive")?;
    let mut bytes = fs::read(&archive)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&archive, &bytes)?;
    let mut sums = Command::new("sh");
    sums.current_dir(&bundle).args([
        "-c",
        "find README.txt channels keys releases -type f | LC_ALL=C sort | xargs sha256sum > SHA256SUMS",
    ]);
    run(sums, TIMEOUT)?.checked("rewriting SHA256SUMS")?;

    let config = s.host("host")?;
    let root = s.path("host/root");
    let out = s.slipway(&config, &["install", &bundle.to_string_lossy()])?;
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains("refused"),
        "{}",
        out.stderr_text()
    );
    assert_eq!(current_version(&root), None);
    assert!(releases_in(&root).is_empty());
    Ok(())
}

#[test]
fn an_update_from_a_bundle_takes_the_delta_from_the_running_release() -> Result<()> {
    let s = Setup::new()?;
    let (v1, v2) = (s.release_id("1.0.0")?, s.release_id("1.1.0")?);
    let delta_name = format!(
        "{}-{}.tar.zst",
        v1.trim_start_matches("sha256:"),
        v2.trim_start_matches("sha256:")
    );
    let delta_size = fs::metadata(s.path("repo/deltas").join(&delta_name))?.len();
    let dir = s.path("usb/bot-1.1.0");
    let tar = s.path("usb/bot-1.1.0.tar");
    s.bundle(&dir, &[])?;
    s.bundle(&tar, &["--tar"])?;
    assert!(dir.join("deltas").join(&delta_name).is_file());

    for (name, bundle) in [("dir", &dir), ("tar", &tar)] {
        let config = s.host_on_v1(name)?;
        let root = s.path(&format!("{name}/root"));
        let out = s.slipway(&config, &["-v", "install", &bundle.to_string_lossy()])?;
        let err = out.stderr_text();
        assert_eq!(out.status.code(), Some(0), "{name}: {err}");
        assert!(
            err.contains("using the delta from the running release")
                && err.contains(&format!("({delta_size} bytes;")),
            "{name}: {err}"
        );
        assert!(
            !err.contains("taking the full archive instead"),
            "{name}: {err}"
        );
        assert_eq!(current_version(&root).as_deref(), Some("1.1.0"), "{name}");
        s.slipway(&config, &["verify"])?
            .checked(format!("{name}: slipway verify"))?;
    }
    Ok(())
}

#[test]
fn a_bundle_without_deltas_installs_the_full_archive_as_before() -> Result<()> {
    let s = Setup::new()?;
    let bundle = s.path("usb/bot-1.1.0");
    s.bundle(&bundle, &["--no-deltas"])?;
    assert!(!bundle.join("deltas").exists());
    let config = s.host_on_v1("host")?;
    let out = s.slipway(&config, &["install", &bundle.to_string_lossy()])?;
    let err = out.stderr_text();
    assert_eq!(out.status.code(), Some(0), "{err}");
    // Not taken, and not a warning either: the index lists the delta, the
    // bundle was made without it on purpose.
    assert!(!err.contains("using the delta"), "{err}");
    assert!(!err.contains("warning"), "{err}");
    assert_eq!(
        current_version(&s.path("host/root")).as_deref(),
        Some("1.1.0")
    );
    s.slipway(&config, &["verify"])?.checked("slipway verify")?;
    Ok(())
}

#[test]
fn a_tampered_delta_in_a_bundle_is_refused_by_its_checksum_list() -> Result<()> {
    let s = Setup::new()?;
    let bundle = s.path("usb/bot-1.1.0");
    s.bundle(&bundle, &[])?;
    let delta = fs::read_dir(bundle.join("deltas"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".tar.zst"))
        .context("a delta in the bundle")?;
    let mut bytes = fs::read(&delta)?;
    let i = bytes.len() / 2;
    bytes[i] ^= 0xff;
    fs::write(&delta, &bytes)?;

    // A host that runs the delta's base, so the delta would be taken.
    let config = s.host_on_v1("host")?;
    let root = s.path("host/root");
    let before = releases_in(&root);
    let out = s.slipway(&config, &["install", &bundle.to_string_lossy()])?;
    let err = out.stderr_text();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("offline bundle refused"), "{err}");
    assert!(err.contains("does not match SHA256SUMS"), "{err}");
    let named = delta
        .file_name()
        .context("name")?
        .to_string_lossy()
        .into_owned();
    assert!(err.contains(&named), "{err}");
    assert_eq!(current_version(&root).as_deref(), Some("1.0.0"));
    assert_eq!(releases_in(&root), before);
    Ok(())
}

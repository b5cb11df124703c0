//! The GitHub Actions release job, run locally: `ci/github/release-steps.sh`
//! with the inputs the workflow gives it (TAG, SOURCE_DIR, CHANNEL,
//! REPO_DIR, the secret key in SLIPWAY_SECRET_KEY), on a git repository of
//! the example bot with a local bare repository as `origin`, for two tags in
//! a row, exactly as `ci/github/release.yml` runs the steps. Then the
//! published tree, as GitHub Pages would serve it, is installed with the
//! real `slipway`; then the scheduled refresh (`ci/github/refresh.yml`) runs
//! its steps and the host takes the refreshed index. And the workflows pass
//! actionlint.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use slipway_e2e::{run, slipway, slipway_pack, workspace_root, OutputExt};

const TIMEOUT: Duration = Duration::from_secs(300);
const PASSWORD: &str = "correct horse battery staple";
/// The committer time of the tagged commits, which becomes the archives'
/// SOURCE_DATE_EPOCH.
const COMMIT_TIME: i64 = 1_700_000_000;

fn git(dir: &Path, args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .env("GIT_AUTHOR_DATE", format!("@{COMMIT_TIME} +0000"))
        .env("GIT_COMMITTER_DATE", format!("@{COMMIT_TIME} +0000"))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir);
    run(cmd, TIMEOUT)?.checked(format!("git {}", args.join(" ")))
}

struct Job {
    dir: tempfile::TempDir,
    key_text: String,
    public_b64: String,
}

impl Job {
    fn new() -> Result<Job> {
        let dir = tempfile::Builder::new()
            .prefix("slipway-release-job-")
            .tempdir()?;
        let keys = dir.path().join("keys");
        let mut keygen = Command::new(slipway_pack()?);
        keygen
            .args(["keygen", "--out-dir"])
            .arg(&keys)
            .env("SLIPWAY_KEY_PASSWORD", PASSWORD);
        run(keygen, TIMEOUT)?.checked("slipway-pack keygen")?;
        let key_text = fs::read_to_string(keys.join("slipway.key"))?;
        let public_b64 = fs::read_to_string(keys.join("slipway.pub"))?
            .lines()
            .nth(1)
            .context("public key line")?
            .trim()
            .to_string();
        // The app's repository: the example bot, committed and pushed to a
        // bare origin, like a GitHub repository.
        let app = dir.path().join("app");
        copy_tree(&workspace_root().join("examples/bot"), &app)?;
        git(dir.path(), &["init", "-q", "--bare", "origin.git"])?;
        git(&app, &["init", "-q", "-b", "main"])?;
        git(&app, &["add", "-A"])?;
        git(&app, &["commit", "-q", "-m", "bot"])?;
        let origin = dir.path().join("origin.git");
        git(
            &app,
            &["remote", "add", "origin", &origin.to_string_lossy()],
        )?;
        git(&app, &["push", "-q", "origin", "main"])?;
        fs::create_dir(dir.path().join("runner-temp"))?;
        Ok(Job {
            dir,
            key_text,
            public_b64,
        })
    }

    fn app(&self) -> PathBuf {
        self.dir.path().join("app")
    }

    /// Runs `release-steps.sh STEP` in the app's checkout with the
    /// workflow's inputs; returns its output (whatever the exit status).
    fn step(&self, step: &str, tag: &str) -> Result<Output> {
        self.step_env(step, tag, &[])
    }

    /// [`Job::step`] with more environment, as a step's `env:` gives it.
    fn step_env(&self, step: &str, tag: &str, env: &[(&str, &str)]) -> Result<Output> {
        let mut cmd = Command::new("bash");
        cmd.current_dir(self.app())
            .arg(workspace_root().join("ci/github/release-steps.sh"))
            .arg(step)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .env("TAG", tag)
            .env("SOURCE_DIR", ".")
            .env("CHANNEL", "stable")
            .env("REPO_DIR", "slipway-repo")
            .env("REPO_BRANCH", "slipway-repo")
            .env("SLIPWAY_SECRET_KEY", &self.key_text)
            .env("SLIPWAY_KEY_PASSWORD", PASSWORD)
            .env("SLIPWAY_PUBLIC_KEY", &self.public_b64)
            .env("SLIPWAY_PACK", slipway_pack()?)
            .env("SLIPWAY", slipway()?)
            .env("RUNNER_TEMP", self.dir.path().join("runner-temp"))
            .env("GITHUB_OUTPUT", self.dir.path().join("github-output"))
            .env("GITHUB_STEP_SUMMARY", self.dir.path().join("summary.md"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(cmd, TIMEOUT)
    }

    fn step_ok(&self, step: &str, tag: &str) -> Result<Output> {
        let out = self.step(step, tag)?;
        self.assert_no_secret(&out, step);
        out.checked(format!("release-steps.sh {step} (TAG={tag})"))
    }

    /// The secret key file's text appears nowhere in what the step printed:
    /// not whole, and not any line of it.
    fn assert_no_secret(&self, out: &Output, step: &str) {
        let printed = format!("{}{}", out.stdout_text(), out.stderr_text());
        for line in self.key_text.lines().filter(|l| l.len() > 16) {
            // The "untrusted comment:" line is public boilerplate.
            if line.starts_with("untrusted comment:") {
                continue;
            }
            assert!(
                !printed.contains(line),
                "release-steps.sh {step} printed a line of the secret key"
            );
        }
        assert!(
            !printed.contains(PASSWORD),
            "release-steps.sh {step} printed the key password"
        );
    }

    /// No key file is left in the runner's temp directory.
    fn assert_no_key_file_left(&self) -> Result<()> {
        let left: Vec<_> = fs::read_dir(self.dir.path().join("runner-temp"))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        if !left.is_empty() {
            bail!("release-steps.sh left files behind: {left:?}");
        }
        Ok(())
    }

    fn tag(&self, tag: &str) -> Result<()> {
        git(&self.app(), &["tag", tag])?;
        git(&self.app(), &["push", "-q", "origin", tag])?;
        Ok(())
    }

    /// The `key=value` lines written to $GITHUB_OUTPUT.
    fn outputs(&self) -> Result<String> {
        Ok(fs::read_to_string(self.dir.path().join("github-output"))?)
    }
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "__pycache__" {
            continue;
        }
        let dest = to.join(&name);
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else {
            fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

#[test]
fn release_job_builds_signs_publishes_and_the_result_installs() -> Result<()> {
    let job = Job::new()?;

    // Tag v1.0.0: fetch-repo (no branch yet), release, push-repo.
    job.tag("v1.0.0")?;
    job.step_ok("fetch-repo", "v1.0.0")?;
    let out = job.step_ok("release", "v1.0.0")?;
    assert!(
        out.stdout_text().contains("verifying the repository"),
        "{}",
        out.stdout_text()
    );
    job.step_ok("push-repo", "v1.0.0")?;
    job.assert_no_key_file_left()?;
    let outputs = job.outputs()?;
    assert!(outputs.contains("version=1.0.0\n"), "{outputs}");
    let first_id = outputs
        .lines()
        .find_map(|l| l.strip_prefix("release_id="))
        .context("release_id output")?
        .to_string();

    // The archive records the tag, the commit and the commit's time.
    let repo = job.app().join("slipway-repo");
    let archive = repo.join("releases").join(format!(
        "{}.tar.zst",
        first_id.trim_start_matches("sha256:")
    ));
    let mut inspect = Command::new(slipway_pack()?);
    inspect.arg("inspect").arg(&archive).arg("--json");
    let manifest: serde_json::Value =
        serde_json::from_slice(&run(inspect, TIMEOUT)?.checked("inspect")?.stdout)?;
    assert_eq!(manifest["version"], "1.0.0");
    assert_eq!(manifest["created"], COMMIT_TIME);
    assert_eq!(manifest["source"]["tag"], "v1.0.0");
    let head = git(&job.app(), &["rev-parse", "HEAD"])?.stdout_text();
    assert_eq!(manifest["source"]["commit"], head.trim());

    // Tag v1.1.0 on a new commit, in a fresh checkout of the work tree (a
    // new runner): fetch-repo gets the stored branch, so the index grows.
    fs::write(job.app().join("app/bot/CHANGES"), "1.1.0\n")?;
    git(&job.app(), &["add", "-A"])?;
    git(&job.app(), &["commit", "-q", "-m", "1.1.0"])?;
    git(&job.app(), &["push", "-q", "origin", "main"])?;
    job.tag("v1.1.0")?;
    git(
        &job.app(),
        &["worktree", "remove", "--force", "slipway-repo"],
    )?;
    job.step_ok("fetch-repo", "v1.1.0")?;
    job.step_ok("release", "v1.1.0")?;
    job.step_ok("push-repo", "v1.1.0")?;
    job.assert_no_key_file_left()?;

    // What Pages serves: the branch as pushed to origin.
    let site = job.dir.path().join("site");
    git(
        job.dir.path(),
        &[
            "clone",
            "-q",
            "--branch",
            "slipway-repo",
            "origin.git",
            &site.to_string_lossy(),
        ],
    )?;
    let index: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(site.join("channels/stable.json"))?)?;
    assert_eq!(index["version"], 2, "{index}");
    let versions: Vec<&str> = index["releases"]
        .as_array()
        .context("releases")?
        .iter()
        .filter_map(|r| r["version"].as_str())
        .collect();
    assert_eq!(versions, ["1.1.0", "1.0.0"]);

    // A host that trusts the public key installs the newest release.
    let host = job.dir.path().join("host");
    fs::create_dir(&host)?;
    let config = host.join("update.toml");
    fs::write(
        &config,
        format!(
            "[update]\nsource = \"{}\"\npublic_keys = [\"{}\"]\n\n[paths]\nroot = \"root\"\npersistence = \"data\"\nmax_save_age_minutes = 0\n\n[service]\nmanager = \"none\"\n\n[report]\njournald = false\n",
            site.display(),
            job.public_b64
        ),
    )?;
    let mut update = Command::new(slipway()?);
    update
        .arg("--config")
        .arg(&config)
        .args(["update", "--json"]);
    let out = run(update, TIMEOUT)?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        out.stdout_text(),
        out.stderr_text()
    );
    let mut status = Command::new(slipway()?);
    status
        .arg("--config")
        .arg(&config)
        .args(["status", "--json"]);
    let status: serde_json::Value =
        serde_json::from_slice(&run(status, TIMEOUT)?.checked("status")?.stdout)?;
    assert_eq!(status["current"]["version"], "1.1.0", "{status}");
    let expires_before = index["expires"].as_str().context("expires")?.to_string();

    // The scheduled refresh (ci/github/refresh.yml: fetch-repo, refresh,
    // push-repo) on a fresh runner: every channel re-signed with a later
    // expiry and stored on the branch.
    git(
        &job.app(),
        &["worktree", "remove", "--force", "slipway-repo"],
    )?;
    job.step_ok("fetch-repo", "")?;
    std::thread::sleep(Duration::from_millis(1100));
    let out = job.step_ok("refresh", "")?;
    let printed = out.stdout_text();
    assert!(printed.contains("refreshing channel stable"), "{printed}");
    assert!(printed.contains("verifying the repository"), "{printed}");
    job.assert_no_key_file_left()?;
    let out = job.step_env(
        "push-repo",
        "",
        &[("COMMIT_MESSAGE", "slipway: refresh the channel indexes")],
    )?;
    job.assert_no_secret(&out, "push-repo");
    out.checked("release-steps.sh push-repo (refresh)")?;
    git(&site, &["pull", "-q", "--ff-only"])?;
    let refreshed: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(site.join("channels/stable.json"))?)?;
    assert_eq!(refreshed["version"], 3, "{refreshed}");
    assert_eq!(refreshed["releases"], index["releases"], "same releases");
    let parse = |v: &str| {
        slipway_formats::channel::Timestamp::parse(v).map_err(|e| anyhow::anyhow!("{v}: {e}"))
    };
    let (before, after) = (
        parse(&expires_before)?,
        parse(refreshed["expires"].as_str().context("expires")?)?,
    );
    assert!(after > before, "expiry moved from {before} to {after}");
    let log = git(&site, &["log", "-1", "--format=%s"])?.stdout_text();
    assert_eq!(log.trim(), "slipway: refresh the channel indexes");

    // The host takes the refreshed index: nothing new, and it now holds
    // the later expiry.
    let mut update = Command::new(slipway()?);
    update
        .arg("--config")
        .arg(&config)
        .args(["update", "--json"]);
    let o: serde_json::Value =
        serde_json::from_slice(&run(update, TIMEOUT)?.checked("update")?.stdout)?;
    assert_eq!(o["result"], "up_to_date", "{o}");
    let mut status = Command::new(slipway()?);
    status
        .arg("--config")
        .arg(&config)
        .args(["status", "--json"]);
    let status: serde_json::Value =
        serde_json::from_slice(&run(status, TIMEOUT)?.checked("status")?.stdout)?;
    assert_eq!(status["index"]["version"], 3, "{status}");
    assert_eq!(status["index"]["expires"], refreshed["expires"], "{status}");
    Ok(())
}

#[test]
fn the_refresh_workflow_runs_weekly_and_refreshes_every_channel() -> Result<()> {
    let text = fs::read_to_string(workspace_root().join("ci/github/refresh.yml"))?;
    assert!(
        text.contains("schedule:") && text.contains("cron:"),
        "{text}"
    );
    assert!(text.contains("workflow_dispatch:"));
    for step in ["fetch-repo", "refresh", "push-repo"] {
        assert!(
            text.contains(&format!("bash \"$STEPS\" {step}")),
            "refresh.yml runs {step}"
        );
    }
    // Never racing a release: the same concurrency group.
    let release = fs::read_to_string(workspace_root().join("ci/github/release.yml"))?;
    assert!(text.contains("group: slipway-release") && release.contains("group: slipway-release"));
    // Well before expiry: weekly, and the lifetime it signs is 30 days.
    assert!(text.contains("\"17 5 * * 1\""), "weekly");
    assert!(text.contains("EXPIRES_IN: 30d"));
    Ok(())
}

#[test]
fn release_job_refuses_bad_inputs_without_printing_the_key() -> Result<()> {
    let job = Job::new()?;
    job.step_ok("fetch-repo", "1.0")?;
    for tag in ["1.0.0", "v1.0", "vX.Y.Z", "v1.0.0;rm -rf /"] {
        let out = job.step("release", tag)?;
        job.assert_no_secret(&out, "release");
        assert_eq!(out.status.code(), Some(1), "{tag}");
        assert!(
            out.stderr_text().contains("is not vX.Y.Z"),
            "{tag}: {}",
            out.stderr_text()
        );
    }
    // A wrong public key: the job fails at verification, before push-repo.
    let other = tempfile::tempdir()?;
    let mut keygen = Command::new(slipway_pack()?);
    keygen
        .args(["keygen", "--unencrypted", "--out-dir"])
        .arg(other.path());
    run(keygen, TIMEOUT)?.checked("keygen")?;
    let other_pub = fs::read_to_string(other.path().join("slipway.pub"))?;
    let mut cmd = Command::new("bash");
    cmd.current_dir(job.app())
        .arg(workspace_root().join("ci/github/release-steps.sh"))
        .arg("release")
        .env("TAG", "v1.0.0")
        .env("SLIPWAY_SECRET_KEY", &job.key_text)
        .env("SLIPWAY_KEY_PASSWORD", PASSWORD)
        .env(
            "SLIPWAY_PUBLIC_KEY",
            other_pub.lines().nth(1).context("pub")?.trim(),
        )
        .env("SLIPWAY_PACK", slipway_pack()?)
        .env("RUNNER_TEMP", job.dir.path().join("runner-temp"));
    let out = run(cmd, TIMEOUT)?;
    job.assert_no_secret(&out, "release");
    assert_ne!(out.status.code(), Some(0));
    job.assert_no_key_file_left()?;

    // No secret at all.
    let mut cmd = Command::new("bash");
    cmd.current_dir(job.app())
        .arg(workspace_root().join("ci/github/release-steps.sh"))
        .arg("release")
        .env("TAG", "v1.0.0")
        .env_remove("SLIPWAY_SECRET_KEY")
        .env("SLIPWAY_PACK", slipway_pack()?);
    let out = run(cmd, TIMEOUT)?;
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr_text().contains("SLIPWAY_SECRET_KEY is empty"));
    Ok(())
}

#[test]
fn check_step_builds_verifies_and_dry_runs_the_tree() -> Result<()> {
    let job = Job::new()?;
    let out = job.step_ok("check", "")?;
    assert!(
        out.stdout_text().contains("dry run:"),
        "{}",
        out.stdout_text()
    );
    assert!(out.stdout_text().contains("checks: passed"));
    job.assert_no_key_file_left()?;
    Ok(())
}

/// actionlint, if it can be found: `$ACTIONLINT`, `actionlint` on PATH,
/// or the one scripts/test installs under ~/.cache/slipway-tools.
fn actionlint() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ACTIONLINT").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = slipway_e2e::run::find_program("actionlint") {
        return Some(p);
    }
    let home = std::env::var_os("HOME")?;
    let p = Path::new(&home).join(".cache/slipway-tools/actionlint/bin/actionlint");
    p.is_file().then_some(p)
}

#[test]
fn workflows_pass_actionlint_and_pin_every_action() -> Result<()> {
    let dir = workspace_root().join("ci/github");
    let mut workflows: Vec<PathBuf> = fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    workflows.sort();
    assert!(workflows.len() >= 2, "{workflows:?}");

    for wf in &workflows {
        let text = fs::read_to_string(wf)?;
        let name = wf.display();
        // Least privilege: an explicit top-level permissions block.
        assert!(text.contains("\npermissions:"), "{name}: no permissions");
        for line in text.lines() {
            let line = line.trim();
            if let Some(spec) = line
                .strip_prefix("uses:")
                .or_else(|| line.strip_prefix("- uses:"))
            {
                let spec = spec.trim();
                let sha = spec.split('@').nth(1).unwrap_or_default();
                let sha = sha.split_whitespace().next().unwrap_or_default();
                assert!(
                    sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
                    "{name}: {spec} is not pinned by a full commit SHA"
                );
                assert!(spec.contains("# v"), "{name}: {spec} names no version");
            }
            // Secrets reach scripts only through env:, never inline in run:.
            if line.starts_with("run:") {
                assert!(!line.contains("secrets."), "{name}: secret inline: {line}");
            }
        }
    }
    let release = fs::read_to_string(dir.join("release.yml"))?;
    assert!(
        release.contains("actions/cache@"),
        "release.yml caches cargo"
    );
    assert!(release.contains("SLIPWAY_SECRET_KEY: ${{ secrets.SLIPWAY_SECRET_KEY }}"));
    assert!(release.contains("release-steps.sh"));

    let Some(actionlint) = actionlint() else {
        let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
        if in_ci {
            bail!("actionlint not found under CI: scripts/test installs it");
        }
        eprintln!("SKIP actionlint: not installed (scripts/test installs it)");
        return Ok(());
    };
    let mut cmd = Command::new(&actionlint);
    cmd.args(&workflows);
    let out = run(cmd, TIMEOUT)?;
    assert!(
        out.status.success(),
        "actionlint found problems:\n{}{}",
        out.stdout_text(),
        out.stderr_text()
    );
    Ok(())
}

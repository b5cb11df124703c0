//! The operator's surface of both binaries: shell completions and man pages
//! generated from the command-line definitions (rendered with `man -l`),
//! colour only on a terminal (and never with NO_COLOR), `--json` on the
//! commands that lacked it, and `slipway update --interactive`, which shows
//! the file-level diff and switches only after a "y".

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result};
use slipway_e2e::{run, run_with_input, slipway, slipway_pack, workspace_root, OutputExt};

const TIMEOUT: Duration = Duration::from_secs(180);

fn cmd(bin: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin);
    c.args(args)
        .env_remove("SLIPWAY_CONFIG")
        .env_remove("BOT_AUTO_UPDATE");
    c
}

#[test]
fn completions_name_every_subcommand() -> Result<()> {
    for (bin, subs) in [
        (
            slipway()?,
            &[
                "install", "update", "rollback", "status", "history", "units", "backups", "restore",
            ][..],
        ),
        (
            slipway_pack()?,
            &["keygen", "build", "publish", "yank", "bundle", "verify"][..],
        ),
    ] {
        for shell in ["bash", "zsh", "fish"] {
            let out = run(cmd(&bin, &["completions", shell]), TIMEOUT)?
                .checked(format!("{} completions {shell}", bin.display()))?;
            let text = out.stdout_text();
            for sub in subs {
                assert!(text.contains(sub), "{shell} completion lacks {sub}");
            }
        }
    }
    Ok(())
}

#[test]
fn man_pages_render_with_man_l() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for (bin, name, sub) in [
        (slipway()?, "slipway", "install"),
        (slipway_pack()?, "slipway-pack", "bundle"),
    ] {
        let out_dir = dir.path().join(name);
        run(
            cmd(&bin, &["man", "--out", &out_dir.to_string_lossy()]),
            TIMEOUT,
        )?
        .checked(format!("{name} man"))?;
        for page in [format!("{name}.1"), format!("{name}-{sub}.1")] {
            let path = out_dir.join(&page);
            assert!(path.is_file(), "{page} was not written");
            // `col -bx` drops the overstrike bold a pager would show.
            let mut man = Command::new("sh");
            man.args(["-c", "man -l -P cat \"$1\" | col -bx", "sh"])
                .arg(&path)
                .env("MANWIDTH", "80");
            let out = run(man, TIMEOUT)?.checked(format!("man -l {page}"))?;
            let text = out.stdout_text();
            assert!(text.contains("NAME"), "{page}:\n{text}");
            assert!(text.contains(name), "{page}:\n{text}");
            assert!(
                !out.stderr_text().contains("warning"),
                "{page}: {}",
                out.stderr_text()
            );
        }
        // Hidden helpers get no page.
        assert!(!out_dir.join(format!("{name}-completions.1")).exists());
    }
    Ok(())
}

/// A host with bot 1.0.0 installed and 1.1.0 published, `manager = "none"`.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Result<Host> {
        let h = Host {
            dir: tempfile::Builder::new().prefix("slipway-ops-").tempdir()?,
        };
        let pack = slipway_pack()?;
        run(
            cmd(
                &pack,
                &["keygen", "--unencrypted", "--out-dir", &h.p("keys")],
            ),
            TIMEOUT,
        )?
        .checked("keygen")?;
        fs::write(
            h.path("update.toml"),
                "[update]\nsource = \"repo\"\npublic_keys = [\"keys/slipway.pub\"]\nmax_attempts_per_day = 20\n\n[paths]\nroot = \"root\"\npersistence = \"data\"\nmax_save_age_minutes = 0\n\n[service]\nmanager = \"none\"\n\n[report]\njournald = false\n",
        )?;
        h.release("1.0.0")?;
        h.slipway(&["update"])?.checked("update to 1.0.0")?;
        h.release("1.1.0")?;
        Ok(h)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn p(&self, rel: &str) -> String {
        self.path(rel).to_string_lossy().into_owned()
    }

    fn release(&self, version: &str) -> Result<()> {
        let pack = slipway_pack()?;
        let src = self.path(&format!("src-{version}"));
        fs::create_dir_all(src.join("app/bot"))?;
        for f in [
            "__init__.py",
            "__main__.py",
            "save.py",
            "migrate.py",
            "settings.json",
        ] {
            fs::copy(
                workspace_root().join("examples/bot/app/bot").join(f),
                src.join("app/bot").join(f),
            )?;
        }
        fs::write(src.join("app/VERSION.txt"), format!("{version}\n"))?;
        let out = run(
            cmd(
                &pack,
                &[
                    "build",
                    &src.to_string_lossy(),
                    "--app",
                    "bot",
                    "--version",
                    version,
                    "--key",
                    &self.p("keys/slipway.key"),
                    "--out",
                    &self.p("repo"),
                ],
            ),
            TIMEOUT,
        )?
        .checked("build")?;
        let id = out.stdout_text().trim().to_string();
        run(
            cmd(
                &pack,
                &[
                    "publish",
                    "--repo",
                    &self.p("repo"),
                    "--channel",
                    "stable",
                    "--key",
                    &self.p("keys/slipway.key"),
                    &id,
                ],
            ),
            TIMEOUT,
        )?
        .checked("publish")?;
        Ok(())
    }

    fn slipway_cmd(&self, args: &[&str]) -> Result<Command> {
        let mut c = cmd(&slipway()?, &["--config", &self.p("update.toml")]);
        c.args(args);
        Ok(c)
    }

    fn slipway(&self, args: &[&str]) -> Result<Output> {
        run(self.slipway_cmd(args)?, TIMEOUT)
    }

    fn current(&self) -> Option<String> {
        let t = fs::read_link(self.path("root/current")).ok()?;
        let name = t.file_name()?.to_string_lossy().into_owned();
        name.split('-').next().map(str::to_string)
    }
}

#[test]
fn interactive_update_shows_the_diff_and_switches_only_on_yes() -> Result<()> {
    let h = Host::new()?;
    assert_eq!(h.current().as_deref(), Some("1.0.0"));

    for answer in ["n\n", "", "maybe\n"] {
        let out = run_with_input(
            h.slipway_cmd(&["update", "--interactive"])?,
            Some(answer.as_bytes()),
            TIMEOUT,
        )?;
        assert_eq!(
            out.status.code(),
            Some(4),
            "answer {answer:?}: {}\n{}",
            out.stdout_text(),
            out.stderr_text()
        );
        let text = out.stdout_text();
        assert!(text.contains("bot 1.0.0 -> 1.1.0"), "{text}");
        assert!(
            text.contains("~ app/VERSION.txt"),
            "the file-level diff: {text}"
        );
        assert!(text.contains("checks: passed"), "{text}");
        assert!(text.contains("declined; nothing was changed"), "{text}");
        assert!(out.stderr_text().contains("Switch to bot 1.1.0"));
        assert_eq!(h.current().as_deref(), Some("1.0.0"), "answer {answer:?}");
    }
    let out = run_with_input(
        h.slipway_cmd(&["update", "--interactive", "--json"])?,
        Some(b"y\n"),
        TIMEOUT,
    )?;
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr_text());
    let o: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("stdout is the JSON result only: {}", out.stdout_text()))?;
    assert_eq!(o["result"], "updated", "{o}");
    assert_eq!(h.current().as_deref(), Some("1.1.0"));
    Ok(())
}

#[test]
fn status_is_coloured_on_a_terminal_only_and_never_with_no_color() -> Result<()> {
    let h = Host::new()?;
    // Piped: plain.
    let piped = h.slipway(&["status"])?.checked("status")?;
    assert!(!piped.stdout_text().contains('\x1b'));
    assert!(piped.stdout_text().contains("auto-update: enabled"));
    // On a pseudo-terminal (util-linux `script`): coloured, unless NO_COLOR.
    let line = format!(
        "{} --config {} status",
        slipway()?.display(),
        h.p("update.toml")
    );
    for (no_color, coloured) in [(None, true), (Some("1"), false)] {
        let mut script = Command::new("script");
        script
            .args(["-qec", &line, "/dev/null"])
            .env("TERM", "xterm");
        match no_color {
            Some(v) => script.env("NO_COLOR", v),
            None => script.env_remove("NO_COLOR"),
        };
        let out = run(script, TIMEOUT)?.checked("script -qec slipway status")?;
        let text = out.stdout_text();
        assert_eq!(
            text.contains("\x1b[32menabled"),
            coloured,
            "NO_COLOR={no_color:?}: {text:?}"
        );
        assert!(text.contains("enabled"));
    }
    Ok(())
}

#[test]
fn gc_enable_and_disable_speak_json() -> Result<()> {
    let h = Host::new()?;
    let out = h.slipway(&["disable", "--reason", "maintenance", "--json"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.checked("disable")?.stdout)?;
    assert_eq!(v["auto_update_enabled"], false);
    assert!(v["message"]
        .as_str()
        .unwrap_or_default()
        .contains("maintenance"));
    let out = h.slipway(&["enable", "--json"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.checked("enable")?.stdout)?;
    assert_eq!(v["auto_update_enabled"], true);
    let out = h.slipway(&["gc", "--json"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.checked("gc")?.stdout)?;
    assert!(v["kept"].is_array(), "{v}");
    Ok(())
}

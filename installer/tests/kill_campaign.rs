//! The kill campaign (issue 9) on the command backend: the example bot run
//! by `examples/host/bot-ctl` (`manager = "command"`), `slipway install`
//! killed with SIGKILL at random instants and inside every journal step,
//! by pid and by process tree, then `slipway recover` and every invariant
//! of a crash-exact update (see `slipway_e2e::campaign`).
//!
//! The releases make the interesting steps long: v2 and v3 carry a migrate
//! hook that takes about two seconds (wait, migrate, wait; one Python
//! process for v2, a shell and its children for v3), and the restart
//! command stops the bot (about two seconds: the bot saves on its way
//! out), sleeps half a second with no bot running, then starts it, so
//! kills land while the hook and the restart command run.
//!
//! It takes minutes, so `cargo test` skips it; `scripts/test` runs the
//! short version and `bench/kill-campaign.sh` the long one:
//!
//! ```text
//! KILL_CAMPAIGN_KILLS=40 KILL_CAMPAIGN_SEED=1234 \
//!   cargo test -p slipway --features fault-injection --test kill_campaign -- --ignored --nocapture
//! ```

mod bot_host;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bot_host::{Flavor, TestHost};
use slipway_e2e::campaign::{
    self, kill_pid, processes, Host, Managed, Proc, Release, Releases, Settings, SlowMigrate,
    Spawned, TAG_ENV,
};

/// Kills when `KILL_CAMPAIGN_KILLS` is not set.
const SHORT_KILLS: usize = 40;

struct CommandHost {
    host: TestHost,
    releases: Releases,
    /// `KILL_CAMPAIGN_TAG=<token>`, in the environment of every slipway run.
    tag: String,
    /// The migrate hook's and the restart command's `$0`.
    markers: Vec<String>,
    /// The root, resolved, to compare with a process's cwd.
    root_resolved: PathBuf,
    baseline: PathBuf,
}

impl CommandHost {
    /// A host with v1 installed and healthy, v2 and v3 built, and a copy of
    /// the whole root and persistence as the baseline.
    fn new() -> Result<CommandHost> {
        let mut host = TestHost::new(&[]);
        let token = host
            .dir
            .path()
            .file_name()
            .context("the host directory has a name")?
            .to_string_lossy()
            .into_owned();
        let migrate_marker = format!("kill-campaign-migrate-{token}");
        let restart_marker = format!("kill-campaign-restart-{token}");
        let slow_restart = format!(
            "restart = [\"env\", \"ROOT={root}\", \"PERSIST={data}\", \"PORT={port}\", \"STOP_TIMEOUT=10\", \
             \"sh\", \"-c\", \"\\\"$1\\\" stop && sleep 0.5 && exec \\\"$1\\\" start\", \"{restart_marker}\", \"{ctl}\"]",
            root = host.root().display(),
            data = host.data().display(),
            port = host.port,
            ctl = bot_host::bot_ctl().display(),
        );
        host.write_config(&[
            ("update", "max_attempts_per_day = 1000000"),
            ("update", "max_failures_per_day = 1000000"),
            ("service", &slow_restart),
            ("service", "health_timeout_seconds = 2"),
        ]);
        host.env.push((TAG_ENV.to_string(), token.clone()));

        let v1 = host.build("1.0.0", &Flavor::default());
        let v2 = host.build(
            "2.0.0",
            &Flavor {
                schema: Some(2),
                migrate_hook: Some(SlowMigrate::OneProcess.hook(&migrate_marker)),
                ..Flavor::default()
            },
        );
        let v3 = host.build(
            "3.0.0",
            &Flavor {
                schema: Some(2),
                migrate_hook: Some(SlowMigrate::Shell.hook(&migrate_marker)),
                fail_health: true,
                // Started paused (docs/probation.md): kills land in a
                // probation gate too.
                probation: true,
                ..Flavor::default()
            },
        );
        let release = |r: &bot_host::Release, schema| Release {
            version: r.version.clone(),
            schema,
            dir_name: r.dir_name(),
            archive: r.archive.display().to_string(),
        };
        let releases = Releases {
            v1: release(&v1, 1),
            v2: release(&v2, 2),
            v3: release(&v3, 2),
        };

        host.run_expect(&["install", &v1.archive.to_string_lossy()], 0);
        host.wait_healthy("1.0.0");
        // Let the bot trade and save, so that there is data to protect.
        let _ = bot_host::http(host.port, "POST", "/admin/save");
        host.stop_bot();
        let baseline = host.path("baseline");
        fs::create_dir_all(&baseline)?;
        copy_all(&host.root(), &baseline.join("root"))?;
        copy_all(&host.data(), &baseline.join("data"))?;
        let root_resolved = fs::canonicalize(host.root())?;
        Ok(CommandHost {
            tag: format!("{TAG_ENV}={token}"),
            markers: vec![migrate_marker, restart_marker],
            host,
            releases,
            root_resolved,
            baseline,
        })
    }

    fn bot_ctl(&self, action: &str) -> Result<Output> {
        Command::new(bot_host::bot_ctl())
            .env("ROOT", self.host.root())
            .env("PERSIST", self.host.data())
            .env("PORT", self.host.port.to_string())
            .env("STOP_TIMEOUT", "10")
            .env_remove(TAG_ENV)
            .current_dir("/")
            .arg(action)
            .output()
            .with_context(|| format!("bot-ctl {action}"))
    }
}

/// `cp -a FROM TO` (TO must not exist).
fn copy_all(from: &Path, to: &Path) -> Result<()> {
    let out = Command::new("cp").arg("-a").arg(from).arg(to).output()?;
    if !out.status.success() {
        bail!(
            "cp -a {} {}: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Removes a tree that holds read-only release directories.
fn remove_all(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let _ = Command::new("chmod").arg("-R").arg("u+w").arg(dir).output();
    fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

impl Host for CommandHost {
    fn label(&self) -> String {
        "command backend (bot-ctl)".into()
    }

    fn releases(&self) -> &Releases {
        &self.releases
    }

    fn root(&self) -> PathBuf {
        self.host.root()
    }

    fn data(&self) -> PathBuf {
        self.host.data()
    }

    fn spawn_slipway(&self, args: &[String], log: &Path) -> Result<Spawned> {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = self.host.slipway(&args);
        cmd.stdin(std::process::Stdio::null())
            .stdout(fs::File::create(log)?)
            .stderr(fs::File::create(log.with_extension("err"))?);
        let child = cmd.spawn().context("starting slipway")?;
        let pid = child.id() as i32;
        Ok(Spawned { child, pid })
    }

    fn slipway(&self, args: &[&str], log: &Path) -> Result<Output> {
        campaign::run_logged(self.host.slipway(args), log, Duration::from_secs(180))
    }

    fn bots(&self) -> Vec<Proc> {
        let persistence = format!("--persistence {}", self.host.data().display());
        processes()
            .into_iter()
            .filter(|p| {
                !p.is_zombie() && p.cmdline.contains("-m bot") && p.cmdline.contains(&persistence)
            })
            .collect()
    }

    fn manager(&self) -> Result<Managed> {
        let out = self.bot_ctl("status")?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(match out.status.code() {
            Some(0) => Managed {
                main_pid: text.split_whitespace().next().and_then(|p| p.parse().ok()),
                state: "running".into(),
            },
            code => Managed {
                main_pid: None,
                state: format!("not running (bot-ctl status exit {code:?})"),
            },
        })
    }

    fn health(&self) -> Option<(u16, serde_json::Value)> {
        self.host.health()
    }

    fn strays(&self) -> Vec<Proc> {
        let me = std::process::id() as i32;
        processes()
            .into_iter()
            .filter(|p| {
                p.pid != me
                    && !p.is_zombie()
                    && !p.cmdline.contains("-m bot")
                    && (self.markers.iter().any(|m| p.cmdline.contains(m))
                        || p.cwd
                            .as_ref()
                            .is_some_and(|c| c.starts_with(&self.root_resolved))
                        || p.environ_has(&self.tag))
            })
            .collect()
    }

    fn reset(&self) -> Result<()> {
        // SIGKILL, not bot-ctl stop (the bot takes two seconds to stop
        // cleanly): its data is replaced by the baseline's anyway.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let alive: Vec<Proc> = self.bots().into_iter().chain(self.strays()).collect();
            if alive.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "cannot stop: {}",
                    alive
                        .iter()
                        .map(Proc::describe)
                        .collect::<Vec<_>>()
                        .join("; ")
                );
            }
            for p in alive {
                kill_pid(p.pid);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        remove_all(&self.host.root())?;
        remove_all(&self.host.data())?;
        copy_all(&self.baseline.join("root"), &self.host.root())?;
        copy_all(&self.baseline.join("data"), &self.host.data())?;
        let out = self.bot_ctl("start")?;
        if !out.status.success() {
            bail!(
                "bot-ctl start after the reset: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.host.bot_log_tail(10)
            );
        }
        self.host.wait_healthy(&self.releases.v1.version);
        Ok(())
    }

    fn diagnostics(&self) -> String {
        format!("bot log (tail):\n{}", self.host.bot_log_tail(15))
    }
}

#[test]
#[ignore = "minutes long: scripts/test runs the short campaign, bench/kill-campaign.sh the long one"]
fn kill_campaign_on_the_command_backend() -> Result<()> {
    let settings = Settings::from_env(SHORT_KILLS)?;
    let host = CommandHost::new()?;
    let work = host.host.path("campaign");
    fs::create_dir_all(&work)?;
    let report = campaign::run(&host, &settings, &work)?;
    campaign::finish(&report);
    Ok(())
}

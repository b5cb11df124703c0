//! The example bot (examples/bot) as a systemd service, the way the
//! end-to-end tests install it inside a container.

/// The unit name every end-to-end test gives the bot.
pub const BOT_UNIT: &str = "aibot.service";

/// The unit file of the example bot running from `<root>/current/app` with
/// its persistence in `data`, restarted by systemd when it dies (so a
/// crash-looping release shows up as a growing NRestarts).
pub fn bot_unit(root: &str, data: &str) -> String {
    format!(
        "[Unit]\n\
         Description=example trading bot\n\
         StartLimitIntervalSec=0\n\
         [Service]\n\
         WorkingDirectory={root}/current/app\n\
         Environment=PYTHONDONTWRITEBYTECODE=1\n\
         ExecStart=/usr/bin/python3 -m bot --port 8080 --persistence {data}\n\
         Restart=always\n\
         RestartSec=1\n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// How a test build of the example bot behaves (`app/bot/settings.json`)
/// and which data schema it ships.
#[derive(Debug, Clone, Copy, Default)]
pub struct BotFlavor {
    /// Data schema (`schema/VERSION` and `[schema] version`); 0 means 1.
    pub schema: u32,
    /// `/health` answers 503.
    pub fail_health: bool,
}

/// A release of the example bot built by the real `slipway-pack`.
#[derive(Debug, Clone)]
pub struct BuiltBot {
    /// `sha256:<hex>`.
    pub id: String,
    /// `<repo>/releases/<hex>.tar.zst`.
    pub archive: std::path::PathBuf,
}

/// Copies examples/bot to `<work>/src-<version>`, gives it `flavor`, lets
/// `edit_toml` change its `slipway.toml`, and builds it as `version`, signed
/// with `key`, into `repo` (not published).
pub fn build_bot(
    work: &std::path::Path,
    key: &std::path::Path,
    repo: &std::path::Path,
    version: &str,
    flavor: BotFlavor,
    edit_toml: impl FnOnce(String) -> anyhow::Result<String>,
) -> anyhow::Result<BuiltBot> {
    use anyhow::Context;
    use std::fs;
    use std::process::Command;
    let src = work.join(format!("src-{version}"));
    crate::run::run_ok(
        Command::new("cp")
            .arg("-r")
            .arg(crate::workspace_root().join("examples/bot"))
            .arg(&src),
    )?;
    let _ = fs::remove_dir_all(src.join("app/bot/__pycache__"));
    let schema = flavor.schema.max(1);
    fs::write(src.join("schema/VERSION"), format!("{schema}\n"))?;
    let toml = fs::read_to_string(src.join("slipway.toml"))?
        .replace("version = 1\n", &format!("version = {schema}\n"));
    fs::write(src.join("slipway.toml"), edit_toml(toml)?)?;
    fs::write(
        src.join("app/bot/settings.json"),
        format!(
            "{{\"fail_health\": {}, \"crash_on_start\": false}}\n",
            flavor.fail_health
        ),
    )?;
    let out = crate::run::run_ok(
        Command::new(crate::slipway_pack()?)
            .arg("build")
            .arg(&src)
            .args(["--version", version, "--json", "--key"])
            .arg(key)
            .arg("--out")
            .arg(repo),
    )?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let id = v["id"]
        .as_str()
        .context("build --json has no id")?
        .to_string();
    let archive = repo
        .join("releases")
        .join(format!("{}.tar.zst", id.trim_start_matches("sha256:")));
    Ok(BuiltBot { id, archive })
}

/// The slipway configuration of the end-to-end tests' bot host: the bot as
/// `aibot.service` under systemd, releases trusted by `key`, the install
/// root and persistence given, a health gate of `health_timeout_seconds`
/// (three good polls 200 ms apart, the new version required), quiesce and
/// save over HTTP, budgets no test runs out of; `extra` follows as written
/// (further sections, such as `[health]` or `[report]`).
pub fn bot_config(
    root: &str,
    data: &str,
    key: &std::path::Path,
    health_timeout_seconds: u32,
    extra: &str,
) -> String {
    format!(
        "[update]\n\
         channel = \"stable\"\n\
         public_keys = [\"{key}\"]\n\
         max_failures_per_day = 20\n\
         max_attempts_per_day = 50\n\
         \n\
         [paths]\n\
         root = \"{root}\"\n\
         persistence = \"{data}\"\n\
         max_save_age_minutes = 0\n\
         \n\
         [service]\n\
         manager = \"systemd\"\n\
         unit = \"{BOT_UNIT}\"\n\
         health_url = \"http://127.0.0.1:8080/health\"\n\
         health_timeout_seconds = {health_timeout_seconds}\n\
         healthy_polls = 3\n\
         health_interval_ms = 200\n\
         health_expect_version = true\n\
         quiesce_url = \"http://127.0.0.1:8080/admin/quiesce\"\n\
         save_url = \"http://127.0.0.1:8080/admin/save\"\n\
         \n\
         {extra}",
        key = key.display()
    )
}

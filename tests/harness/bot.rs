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

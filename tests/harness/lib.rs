//! The end-to-end test harness of slipway: the real tools a release meets on
//! its way, started for one test and cleaned up after it.
//!
//! - [`container`]: a real systemd booted with `systemd-nspawn` on an overlay
//!   of the host's root, to run `slipway` against real units.
//! - [`nginx`]: a real nginx serving a release repository (ETag, Range,
//!   optional rate limit), on the host or inside a container.
//! - [`minisign`]: the stock `minisign` CLI, to keep our signatures honest.
//! - [`campaign`]: a randomized kill campaign against `slipway` (SIGKILL at
//!   random instants and inside every journal step, then `recover`, then
//!   every invariant of a crash-exact update), for any service backend.
//! - [`bins`]: where the workspace's built `slipway` and `slipway-pack` are.
//! - [`run`]: running commands with a deadline and captured output.
//!
//! A container test starts with
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use slipway_e2e::{Container, OutputExt};
//! if !Container::available_or_skip()? {
//!     return Ok(());
//! }
//! let c = Container::boot("my-test")?;
//! let out = c.exec_ok(&["systemctl", "--version"])?;
//! assert!(out.stdout_text().contains("systemd"));
//! # Ok(())
//! # }
//! ```
//!
//! Read the [`container`] module's notes on what the container shares with
//! the host before putting test files anywhere.

pub mod bins;
pub mod bot;
pub mod campaign;
pub mod container;
pub mod minisign;
pub mod nginx;
pub mod run;

pub use bins::{profile_dir, slipway, slipway_pack, target_dir, workspace_root};
pub use bot::{bot_config, bot_unit, build_bot, BotFlavor, BuiltBot, BOT_UNIT};
pub use container::{shared_tempdir, Container, ContainerOptions, UnitState};
pub use nginx::{AccessLogEntry, Nginx, NginxOptions};
pub use run::{run, run_ok, run_with_input, wait_until, OutputExt};

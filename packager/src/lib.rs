//! slipway-pack: builds, signs and publishes slipway releases.
//!
//! The library behind the `slipway-pack` binary, usable from other crates'
//! tests to make real releases, repositories and signed indexes:
//!
//! - [`keys`]: minisign key pairs ([`keys::generate_key`]), loading a secret
//!   key ([`SigningKey::load`]) and signing ([`SigningKey::sign_bytes`],
//!   [`SigningKey::sign_prehashed`]).
//! - [`source_tree`]: `slipway.toml`, excludes and the payload layout rule.
//! - [`build`]: the deterministic, signed archive ([`build_release`]).
//! - [`repo`]: the repository layout and the channel index commands
//!   ([`repo::publish`], [`repo::yank`], [`repo::refresh`]).
//! - [`delta`]: signed deltas between two releases ([`delta::make_delta`]).
//! - [`verify`]: checking an archive or a repository as a host would.
//! - [`inspect`]: a release's manifest, and the diff of two.
//! - [`rotate`]: key rotation statements ([`rotate::rotate_key`]).
//! - [`bundle`]: the offline bundle for air-gapped hosts ([`bundle::make_bundle`]).
//!
//! A minimal end-to-end use:
//!
//! ```no_run
//! use slipway_pack::{build_release, BuildOptions, SigningKey, Repo};
//! use slipway_pack::repo::{publish, PublishOptions};
//!
//! # fn main() -> Result<(), slipway_pack::PackError> {
//! let key = SigningKey::load("ci/slipway.key".as_ref(), Some("password"))?;
//! let mut opts = BuildOptions::new("examples/bot", "/tmp/repo");
//! opts.app = Some("bot".into());
//! opts.version = Some("1.4.0".parse().expect("version"));
//! let built = build_release(&opts, &key)?;
//! publish(&Repo::new("/tmp/repo"), &key, &built.id.to_string(), &PublishOptions::new("stable"))?;
//! # Ok(()) }
//! ```

pub mod build;
pub mod bundle;
pub mod delta;
pub mod error;
pub mod inspect;
pub mod keys;
pub mod repo;
pub mod rotate;
pub mod source_tree;
pub mod verify;

pub use build::{build_release, plan_release, BuildOptions, BuiltRelease};
pub use error::{PackError, Result};
pub use keys::{generate_key, SecretKeyFile, SigningKey};
pub use repo::{sign_channel_index, Repo};
pub use verify::{verify_archive, verify_repo};

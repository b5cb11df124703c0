//! The formats slipway's packager and installer agree on.
//!
//! This crate is pure: it parses, validates, hashes and verifies, and never
//! touches the network, spawns a process, opens a file by path or assumes a
//! global path: it takes bytes, or a reader the caller opened. Every
//! reader and writer of a release goes through it, so a rule enforced here
//! (a path rule, a manifest field, a signature check) is enforced everywhere.
//!
//! - [`path`]: the path rules of SPEC §6, one function for every entry name.
//! - [`id`]: release ids (`sha256:<hex>` of the archive file).
//! - [`version`]: semver parsing and ordering, tags `vX.Y.Z`.
//! - [`manifest`]: `slipway/manifest.json`, strict.
//! - [`runtime_paths`]: paths a release's app writes into its own tree.
//! - [`diff`]: what changes between two releases, from their manifests.
//! - [`channel`]: `channels/<channel>.json`, the signed channel index.
//! - [`delta`]: delta archives between two releases, signed for the pair.
//! - [`signature`]: minisign public keys, detached signatures, trusted comments.
//! - [`state`]: the files slipway writes on a host for itself and the app.
//! - [`rollout`]: the stable per-host bucket for staged rollouts.
//! - [`rotation`]: key rotation statements (`keys/rotation-<KEYID>.json`).
//! - [`bundle`]: the offline bundle's checksum list and its signed comment.
//! - [`archive`]: release archives: verification, the entry policy and the
//!   walk both binaries run over the same bytes.

pub mod archive;
pub mod bundle;
pub mod channel;
pub mod delta;
pub mod diff;
pub mod id;
pub mod manifest;
pub mod path;
pub mod rollout;
pub mod rotation;
pub mod runtime_paths;
pub mod signature;
pub mod state;
pub mod version;

pub use channel::{ChannelIndex, ChannelRelease};
pub use id::ReleaseId;
pub use manifest::{EntryType, FileEntry, Hooks, Manifest, ManifestHead, SourceInfo};
pub use runtime_paths::RuntimePaths;
pub use signature::{KeyId, PublicKey, SignatureFile, TrustedKeys};
pub use version::Version;

/// The path of the manifest inside every release archive and staged release.
pub const MANIFEST_PATH: &str = "slipway/manifest.json";

/// The largest manifest a reader accepts, in bytes. A manifest lists every
/// file of the release, so this bounds the release at roughly 100,000 entries.
pub const MAX_MANIFEST_BYTES: u64 = 32 * 1024 * 1024;

/// The largest channel index or other metadata file a reader accepts.
pub const MAX_METADATA_BYTES: u64 = 64 * 1024;

/// The largest signature file a reader accepts.
pub const MAX_SIGNATURE_BYTES: u64 = 4 * 1024;

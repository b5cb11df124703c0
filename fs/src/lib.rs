//! How slipway touches the file system, shared by `slipway` and
//! `slipway-pack` so that both read and write files the same way.
//!
//! - [`read`]: every file slipway reads (configuration, public keys, state,
//!   repository and bundle files, archives) is opened here: without following
//!   a symlink, without blocking on a FIFO or device, required to be a
//!   regular file, and read up to a cap. `/dev/zero`, a FIFO or a symlink in
//!   place of a file is an ordinary error naming the path, never a hang or an
//!   unbounded read.
//! - [`durable`]: every file either binary leaves behind is written to a
//!   temporary sibling, fsynced, renamed into place and its directory
//!   fsynced, so a crash leaves the old content or the new, never a mix.
//! - [`stdout`]: standard output that a closed pipe ends quietly (`outln!`).
//!
//! This crate holds no rule about what the bytes mean: that is
//! `slipway-formats`, which never opens a file by path; the binaries open
//! files here and hand `slipway-formats` the bytes or the open reader.

pub mod durable;
pub mod read;
pub mod stdout;

pub use read::{
    open_regular, open_regular_at, read_capped, read_capped_at, read_capped_optional,
    read_text_capped, ReadError,
};

//! Standard output that a closed pipe ends quietly.
//!
//! Rust ignores SIGPIPE, so a write to a closed pipe is an `EPIPE` error,
//! and `println!` turns that error into a panic (exit 101):
//! `slipway status --json | head -1` would crash once `head` has its line.
//! [`outln!`](crate::outln) and [`out!`](crate::out) write through
//! [`write_fmt`] instead: the first `EPIPE` marks standard output closed,
//! and every later write is dropped without a word. The command goes on and
//! exits with its own code (a transaction's result is never lost to a
//! closed pipe). Other write errors are reported once on stderr.

use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes `args` to standard output and flushes; see the module doc.
pub fn write_fmt(args: fmt::Arguments<'_>) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != io::ErrorKind::BrokenPipe {
            let _ = writeln!(io::stderr(), "cannot write to standard output: {e}");
        }
    }
}

/// Whether standard output was found closed.
pub fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}

/// `println!` that a closed pipe ends quietly ([`write_fmt`]).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::stdout::write_fmt(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::stdout::write_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that a closed pipe ends quietly ([`write_fmt`]).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stdout::write_fmt(format_args!($($arg)*))
    };
}

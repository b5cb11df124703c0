//! The operator's terminal: colour only where a person reads it, and the
//! shell completions and man pages generated from the clap definition.
//!
//! Colour is on when stdout is a terminal, `NO_COLOR` is unset or empty
//! (<https://no-color.org>) and `TERM` is not `dumb`; piped or redirected
//! output never carries escape codes, so scripts and logs stay plain.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// One of the process's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Whether `stream` is connected to the systemd journal: systemd sets
/// `JOURNAL_STREAM=<device>:<inode>` for a service whose output goes to the
/// journal, and the stream must still be that very file (a child may have
/// redirected it).
pub fn is_journal(stream: Stream) -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let stat = match stream {
        Stream::Stdout => rustix::fs::fstat(std::io::stdout()),
        Stream::Stderr => rustix::fs::fstat(std::io::stderr()),
    };
    match stat {
        Ok(st) => journal_stream_matches(&value.to_string_lossy(), st.st_dev, st.st_ino),
        Err(_) => false,
    }
}

/// `JOURNAL_STREAM`'s `<device>:<inode>` names the file with this device
/// and inode number.
pub fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>() == Ok(dev) && i.parse::<u64>() == Ok(ino)
}

/// Paints words for a human, or leaves them alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paint {
    enabled: bool,
}

impl Paint {
    /// Colour for stdout, by the rule in the module documentation.
    pub fn stdout() -> Paint {
        Paint {
            enabled: std::io::stdout().is_terminal()
                && colour_allowed(std::env::var_os("NO_COLOR"), std::env::var_os("TERM")),
        }
    }

    /// No colour at all.
    pub fn plain() -> Paint {
        Paint { enabled: false }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn wrap(&self, code: &str, text: &str) -> String {
        if self.enabled {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// Good news: healthy, enabled, updated.
    pub fn good(&self, text: &str) -> String {
        self.wrap("32", text)
    }

    /// Needs attention soon: skipped, pending, in flight.
    pub fn warn(&self, text: &str) -> String {
        self.wrap("33", text)
    }

    /// Needs attention now: failed, rolled back, disabled.
    pub fn bad(&self, text: &str) -> String {
        self.wrap("1;31", text)
    }

    /// Emphasis: the running version.
    pub fn bold(&self, text: &str) -> String {
        self.wrap("1", text)
    }

    /// Less important detail.
    pub fn dim(&self, text: &str) -> String {
        self.wrap("2", text)
    }
}

/// Whether the environment allows colour: `NO_COLOR` unset or empty and
/// `TERM` not `dumb`.
pub fn colour_allowed(no_color: Option<OsString>, term: Option<OsString>) -> bool {
    no_color.is_none_or(|v| v.is_empty()) && term.is_none_or(|t| t != "dumb")
}

/// Writes `<name>.1` for `cmd` and `<name>-<sub>.1` for each visible
/// subcommand into `dir` (created if missing); returns the paths written.
pub fn write_man_pages(cmd: clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let name = cmd.get_name().to_string();
    let mut pages = vec![(name.clone(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let sub_name = format!("{name}-{}", sub.get_name());
        pages.push((sub_name.clone(), sub.clone().name(sub_name)));
    }
    let mut written = Vec::new();
    for (page, cmd) in pages {
        let path = dir.join(format!("{page}.1"));
        let mut bytes = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut bytes)?;
        crate::durable::write_atomic(&path, &bytes)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_names_device_and_inode() {
        assert!(journal_stream_matches("8:1234", 8, 1234));
        assert!(!journal_stream_matches("8:1234", 8, 1235));
        assert!(!journal_stream_matches("8:1234", 9, 1234));
        assert!(!journal_stream_matches("garbage", 8, 1234));
        assert!(!journal_stream_matches("", 0, 0));
    }

    #[test]
    fn no_color_and_dumb_terminals_turn_colour_off() {
        assert!(colour_allowed(None, Some("xterm-256color".into())));
        assert!(colour_allowed(Some("".into()), None));
        assert!(!colour_allowed(Some("1".into()), Some("xterm".into())));
        assert!(!colour_allowed(None, Some("dumb".into())));
        assert_eq!(Paint::plain().bad("x"), "x");
        assert_eq!(Paint { enabled: true }.good("ok"), "\x1b[32mok\x1b[0m");
    }
}

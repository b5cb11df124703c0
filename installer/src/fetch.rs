//! Step 3 of the transaction, Fetch: the HTTP client of an `http(s)://`
//! release repository (SPEC §4 step 3, §6).
//!
//! One [`HttpClient`] per run, built from `[update]`:
//!
//! - rustls with the platform's verifier (the system's root certificates,
//!   `SSL_CERT_FILE`/`SSL_CERT_DIR` honoured, so a corporate CA works), and
//!   the proxy from the environment (`HTTPS_PROXY`, `HTTP_PROXY`,
//!   `ALL_PROXY`, `NO_PROXY`);
//! - a connect timeout (`connect_timeout_seconds`, DNS included) and a
//!   stall timeout (`stall_timeout_seconds`): no byte received for that long
//!   ends the request;
//! - on top of those, two overall deadlines, so that a server dripping one
//!   byte just before each stall timeout cannot hold the run (and its lock)
//!   for long: every request ends `request_deadline_seconds` after it
//!   started, and no request runs past `run_deadline_seconds` after the
//!   process made its first client (a process is one run);
//! - no automatic decompression, so byte offsets are the file's own and a
//!   `Range` resume is exact;
//! - an optional read-only bearer token from `update.token_file`, sent as
//!   `Authorization: Bearer ...` and never printed, logged or written.
//!
//! Metadata (channel indexes, signatures, rotation statements) is read with
//! [`HttpClient::get_metadata`], capped at the caller's limit (64 KiB, 4 KiB)
//! and optionally conditional (`If-None-Match` / `If-Modified-Since`), so an
//! idle poll costs one request answered `304 Not Modified`.
//!
//! Archives are downloaded with [`HttpClient::download`] into
//! `downloads/<hex>.tar.zst.part`, resumed with `Range` and `If-Range` from
//! where an earlier run stopped, capped at the size the signed index gives,
//! then renamed to `downloads/<hex>.tar.zst` for the verifier. A server that
//! ignores `Range` (or whose file changed, so `If-Range` fails) answers with
//! the whole file, and the download restarts from zero; a partial file that
//! is longer than the signed size, or whose validator no longer matches, is
//! discarded.
//!
//! Every error names the URL and says what to do: HTTP statuses (404,
//! 401/403 with "check token_file", 5xx), DNS, connection refused, TLS, the
//! connect and stall timeouts, and the size caps.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use slipway_formats::MAX_SIGNATURE_BYTES;

use crate::config::UpdateConfig;
use crate::durable;
use crate::source::RemoteArchive;

/// The read buffer of a download.
const CHUNK: usize = 64 * 1024;

/// The suffix of a download in progress.
pub const PART_SUFFIX: &str = ".part";
/// The suffix of the validators kept beside a download in progress.
pub const PART_META_SUFFIX: &str = ".part.json";

/// Why a fetch failed. Each variant names the URL (or the local file) and
/// its message says what to do.
#[derive(Debug, Error)]
pub enum FetchError {
    #[error("{url}: HTTP {status}{reason}; {hint}")]
    Status {
        url: String,
        status: u16,
        reason: String,
        hint: &'static str,
    },
    #[error("{url}: cannot resolve the host name (DNS); check the URL in update.source and this host's DNS (resolvectl status, /etc/resolv.conf)")]
    Dns { url: String },
    #[error("{url}: connection refused or unreachable ({detail}); check that the release server is up and reachable from this host (and the proxy, if HTTPS_PROXY/HTTP_PROXY is set)")]
    Connect { url: String, detail: String },
    #[error("{url}: no connection within {secs} s (connect timeout); check the network and the proxy, or raise update.connect_timeout_seconds")]
    ConnectTimeout { url: String, secs: u64 },
    #[error("{url}: the server sent nothing for {secs} s (stall timeout); the server or the network is too slow: try again later (a partial download is resumed), or raise update.stall_timeout_seconds")]
    Stall { url: String, secs: u64 },
    #[error("{url}: not done within the {secs} s {which} deadline (update.{key}); the server or the network is too slow, or the server is stalling on purpose: try again later (a partial download is resumed), or raise update.{key}")]
    Deadline {
        url: String,
        secs: u64,
        /// `"request"` or `"run"`.
        which: &'static str,
        /// The configuration key that sets it.
        key: &'static str,
    },
    #[error("{url}: TLS failed ({detail}); check the server's certificate against this host's root certificates (the system store; SSL_CERT_FILE for a private CA) and the system clock")]
    Tls { url: String, detail: String },
    #[error("{url}: the proxy failed ({detail}); check HTTPS_PROXY / HTTP_PROXY / NO_PROXY")]
    Proxy { url: String, detail: String },
    #[error("{url}: the answer is larger than {max} bytes; refused without reading further (a metadata file is capped, an archive is capped at the size its signed channel index gives)")]
    TooLarge { url: String, max: u64 },
    #[error("{url}: the server sent {found} bytes, but the signed channel index says the archive is {expected} bytes; the repository is inconsistent or tampered with: re-publish the release")]
    SizeMismatch {
        url: String,
        expected: u64,
        found: u64,
    },
    #[error("{url}: {detail}; try again later (a partial download is resumed)")]
    Network { url: String, detail: String },
    #[error("{url}: the server's answer makes no sense ({detail}); check that update.source points at a static release repository")]
    Protocol { url: String, detail: String },
    #[error("{url} is not a usable URL ({detail}); fix update.source")]
    BadUrl { url: String, detail: String },
    #[error(
        "cannot write {path}: {source}; check free space and the permissions of the install root"
    )]
    Local { path: PathBuf, source: io::Error },
    #[error("token file {path}: {detail}")]
    Token { path: PathBuf, detail: String },
}

impl FetchError {
    /// Whether the error is the network's or the server's passing state
    /// (DNS, refused, timeouts, 5xx, 429) rather than something wrong with
    /// the repository or this host: the timer simply tries again later, and
    /// such an attempt does not count against `max_failures_per_day`.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Status { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            FetchError::Dns { .. }
            | FetchError::Connect { .. }
            | FetchError::ConnectTimeout { .. }
            | FetchError::Stall { .. }
            | FetchError::Deadline { .. }
            | FetchError::Network { .. }
            | FetchError::Proxy { .. } => true,
            _ => false,
        }
    }

    /// Whether the server said the file does not exist (404 or 410).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            FetchError::Status {
                status: 404 | 410,
                ..
            }
        )
    }
}

/// A bearer token. It is never displayed: `Debug` redacts it, and it has no
/// `Display`.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// Reads a token file: the token is the file's text without surrounding
    /// whitespace, visible ASCII only (it goes into a header).
    pub fn read(path: &Path) -> Result<Token, FetchError> {
        let err = |detail: String| FetchError::Token {
            path: path.to_path_buf(),
            detail,
        };
        let bytes = crate::source::read_capped(path, 16 * 1024, "token file").map_err(|e| {
            err(format!(
                "{e}; update.token_file must name a readable file holding a read-only token"
            ))
        })?;
        let text = String::from_utf8(bytes).map_err(|_| err("is not text".into()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(err("is empty; put the read-only token in it".into()));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(err(
                "holds characters a token cannot have (spaces, control or non-ASCII characters); it must hold the token alone".into(),
            ));
        }
        Ok(Token(token.to_string()))
    }

    fn header(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// How the client behaves; see the module docs.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub connect_timeout: Duration,
    pub stall_timeout: Duration,
    /// Every request ends this long after it started, however it goes.
    pub request_deadline: Duration,
    /// No request runs past this long after the client was made.
    pub run_deadline: Duration,
    pub token: Option<Token>,
    /// Show a progress bar for downloads when stderr is a terminal.
    pub progress: bool,
}

impl HttpSettings {
    /// The settings `[update]` gives, reading `token_file` if set.
    pub fn from_config(update: &UpdateConfig, progress: bool) -> Result<HttpSettings, FetchError> {
        let token = match &update.token_file {
            Some(path) => Some(Token::read(path)?),
            None => None,
        };
        Ok(HttpSettings {
            connect_timeout: Duration::from_secs(update.connect_timeout_seconds.max(1)),
            stall_timeout: Duration::from_secs(update.stall_timeout_seconds.max(1)),
            request_deadline: Duration::from_secs(update.request_deadline_seconds.max(1)),
            run_deadline: Duration::from_secs(update.run_deadline_seconds.max(1)),
            token,
            progress,
        })
    }
}

/// The `ETag` and `Last-Modified` of a response, for conditional requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validators {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
}

impl Validators {
    fn of(response: &ureq::http::Response<ureq::Body>) -> Validators {
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| (0x20..0x7f).contains(&b)))
        };
        Validators {
            etag: header("etag"),
            last_modified: header("last-modified"),
        }
    }

    fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

/// What a metadata request returned.
#[derive(Debug, Clone)]
pub enum Metadata {
    /// `304 Not Modified`: the copy the validators came from is current.
    NotModified,
    /// The file, and its validators for the next conditional request.
    Fetched {
        bytes: Vec<u8>,
        validators: Validators,
    },
}

/// What a download did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    /// The complete file.
    pub path: PathBuf,
    /// Bytes received over the network by this run.
    pub fetched: u64,
    /// The offset this run resumed from (0: from the start).
    pub resumed_from: u64,
    /// A complete file from an earlier run was reused.
    pub reused: bool,
}

/// What is kept beside `<file>.part`: where it came from and the server's
/// validators, so a resume asks `If-Range` and a changed file is noticed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PartMeta {
    url: String,
    size: u64,
    #[serde(flatten)]
    validators: Validators,
}

/// When the first [`HttpClient`] of this process (one run) was made.
static RUN_STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// The HTTP client of one run (see the module docs).
pub struct HttpClient {
    agent: ureq::Agent,
    settings: HttpSettings,
    /// When this process made its first client: the run deadline counts
    /// from here, whichever client of the run makes the request.
    started: Instant,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// A client with these settings.
    pub fn new(settings: HttpSettings) -> HttpClient {
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::PlatformVerifier)
            .build();
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(tls)
            .proxy(ureq::Proxy::try_from_env())
            .timeout_resolve(Some(settings.connect_timeout))
            .timeout_connect(Some(settings.connect_timeout))
            .timeout_per_read(Some(settings.stall_timeout))
            .timeout_per_write(Some(settings.stall_timeout))
            .user_agent(format!("slipway/{}", env!("CARGO_PKG_VERSION")))
            .build();
        HttpClient {
            agent: ureq::Agent::new_with_config(config),
            settings,
            started: *RUN_STARTED.get_or_init(Instant::now),
        }
    }

    /// The client `[update]` describes.
    pub fn from_config(update: &UpdateConfig, progress: bool) -> Result<HttpClient, FetchError> {
        HttpSettings::from_config(update, progress).map(HttpClient::new)
    }

    /// A `GET` whose whole exchange, body included, must end within the
    /// request deadline and before the run deadline (ureq's global timeout,
    /// checked at every read). Refused at once when the run deadline has
    /// passed.
    fn get(
        &self,
        url: &str,
    ) -> Result<ureq::RequestBuilder<ureq::typestate::WithoutBody>, FetchError> {
        let left = self
            .settings
            .run_deadline
            .saturating_sub(self.started.elapsed());
        if left.is_zero() {
            return Err(self.run_deadline_error(url));
        }
        let request = self
            .agent
            .get(url)
            .config()
            .timeout_global(Some(self.settings.request_deadline.min(left)))
            .build();
        Ok(match &self.settings.token {
            Some(token) => request.header("Authorization", token.header()),
            None => request,
        })
    }

    fn run_deadline_error(&self, url: &str) -> FetchError {
        FetchError::Deadline {
            url: url.to_string(),
            secs: self.settings.run_deadline.as_secs(),
            which: "run",
            key: "run_deadline_seconds",
        }
    }

    /// Which deadline a global timeout was: the run's when it has (nearly)
    /// passed, else the request's.
    fn deadline_error(&self, url: &str) -> FetchError {
        let margin = Duration::from_millis(500);
        if self.started.elapsed() + margin >= self.settings.run_deadline {
            self.run_deadline_error(url)
        } else {
            FetchError::Deadline {
                url: url.to_string(),
                secs: self.settings.request_deadline.as_secs(),
                which: "request",
                key: "request_deadline_seconds",
            }
        }
    }

    fn call(
        &self,
        url: &str,
        request: ureq::RequestBuilder<ureq::typestate::WithoutBody>,
    ) -> Result<ureq::http::Response<ureq::Body>, FetchError> {
        request.call().map_err(|e| self.describe(url, e))
    }

    /// `GET url`, capped at `max` bytes. With `validators`, the request is
    /// conditional and a `304` comes back as [`Metadata::NotModified`].
    /// Every status but 200 (and 304 when asked) is an error naming it.
    pub fn get_metadata(
        &self,
        url: &str,
        max: u64,
        validators: Option<&Validators>,
    ) -> Result<Metadata, FetchError> {
        let mut request = self.get(url)?;
        if let Some(v) = validators {
            if let Some(etag) = &v.etag {
                request = request.header("If-None-Match", etag);
            }
            if let Some(date) = &v.last_modified {
                request = request.header("If-Modified-Since", date);
            }
        }
        let mut response = self.call(url, request)?;
        let status = response.status().as_u16();
        if status == 304 && validators.is_some_and(|v| !v.is_empty()) {
            return Ok(Metadata::NotModified);
        }
        if status != 200 {
            return Err(status_error(url, &response));
        }
        if response.body().content_length().is_some_and(|n| n > max) {
            return Err(FetchError::TooLarge {
                url: url.to_string(),
                max,
            });
        }
        let validators = Validators::of(&response);
        let mut bytes = Vec::new();
        response
            .body_mut()
            .as_reader()
            .take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.describe(url, ureq::Error::from(e)))?;
        if bytes.len() as u64 > max {
            return Err(FetchError::TooLarge {
                url: url.to_string(),
                max,
            });
        }
        Ok(Metadata::Fetched { bytes, validators })
    }

    /// Downloads `url` into `dest` (via `dest.part`), exactly `size` bytes:
    /// resumes an earlier partial download with `Range`/`If-Range`, restarts
    /// from zero when the server ignores the range or its file changed,
    /// discards a partial file that cannot be the same download, and
    /// refuses to write a byte past `size`. A complete `dest` of the right
    /// size from an earlier run is reused (the verifier checks it anyway).
    pub fn download(&self, url: &str, dest: &Path, size: u64) -> Result<Downloaded, FetchError> {
        let local = |path: &Path| {
            let path = path.to_path_buf();
            move |source| FetchError::Local { path, source }
        };
        if let Ok(meta) = fs::symlink_metadata(dest) {
            if meta.is_file() && meta.len() == size {
                return Ok(Downloaded {
                    path: dest.to_path_buf(),
                    fetched: 0,
                    resumed_from: 0,
                    reused: true,
                });
            }
            remove_if_exists(dest).map_err(local(dest))?;
        }
        let part = with_suffix(dest, PART_SUFFIX);
        let part_meta = with_suffix(dest, PART_META_SUFFIX);
        if let Some(dir) = dest.parent() {
            durable::create_dirs(dir).map_err(local(dir))?;
        }

        // What an earlier run left, if it is the same download.
        let mut offset = 0u64;
        let mut resume_validators = None;
        let previous: Option<PartMeta> =
            slipway_fs::read_capped(&part_meta, slipway_formats::MAX_METADATA_BYTES)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
        let part_len = fs::symlink_metadata(&part)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        match (previous, part_len) {
            (Some(prev), Some(len))
                if prev.url == url
                    && prev.size == size
                    && len <= size
                    && !prev.validators.is_empty() =>
            {
                offset = len;
                resume_validators = Some(prev.validators);
            }
            _ => {
                remove_if_exists(&part).map_err(local(&part))?;
                remove_if_exists(&part_meta).map_err(local(&part_meta))?;
            }
        }

        let resumed_from = offset;
        let mut fetched = 0u64;
        // At most two requests: a resume, then (if the server will not
        // resume) one from zero.
        for _ in 0..2 {
            let mut request = self.get(url)?;
            if offset > 0 {
                request = request.header("Range", format!("bytes={offset}-"));
                if let Some(v) = &resume_validators {
                    // If-Range takes one validator: the strong ETag, else the date.
                    let weak = v.etag.as_deref().is_some_and(|e| e.starts_with("W/"));
                    match (&v.etag, &v.last_modified) {
                        (Some(etag), _) if !weak => request = request.header("If-Range", etag),
                        (_, Some(date)) => request = request.header("If-Range", date),
                        _ => {}
                    }
                }
            }
            let mut response = self.call(url, request)?;
            let status = response.status().as_u16();
            let validators = Validators::of(&response);
            match status {
                206 if offset > 0 => match content_range(&response) {
                    Some((start, total)) if start == offset && total.is_none_or(|t| t == size) => {}
                    _ => {
                        // Not the range asked for: start over.
                        drop(response);
                        truncate(&part, &part_meta).map_err(local(&part))?;
                        offset = 0;
                        resume_validators = None;
                        continue;
                    }
                },
                200 => {
                    // Whole file: the server ignored Range, or If-Range
                    // said the file changed.
                    if offset > 0 {
                        truncate(&part, &part_meta).map_err(local(&part))?;
                        offset = 0;
                    }
                }
                416 if offset > 0 => {
                    drop(response);
                    truncate(&part, &part_meta).map_err(local(&part))?;
                    offset = 0;
                    resume_validators = None;
                    continue;
                }
                _ => return Err(status_error(url, &response)),
            }
            let remaining = size - offset;
            if let Some(len) = response.body().content_length() {
                if len > remaining {
                    remove_part(&part, &part_meta);
                    return Err(FetchError::TooLarge {
                        url: url.to_string(),
                        max: size,
                    });
                }
            }
            let meta = PartMeta {
                url: url.to_string(),
                size,
                validators,
            };
            durable::write_json_atomic(&part_meta, &meta).map_err(local(&part_meta))?;
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&part)
                .map_err(local(&part))?;
            let bar = self.progress_bar(size, offset);
            let mut reader = response.body_mut().as_reader();
            let mut buf = vec![0u8; CHUNK];
            let body_result = loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => break Err(self.describe(url, ureq::Error::from(e))),
                };
                fetched += n as u64;
                if offset + n as u64 > size {
                    break Err(FetchError::TooLarge {
                        url: url.to_string(),
                        max: size,
                    });
                }
                if let Err(e) = file.write_all(&buf[..n]) {
                    break Err(local(&part)(e));
                }
                offset += n as u64;
                if let Some(bar) = &bar {
                    bar.set_position(offset);
                }
            };
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            match body_result {
                Ok(()) => {}
                Err(e @ FetchError::TooLarge { .. }) => {
                    drop(file);
                    remove_part(&part, &part_meta);
                    return Err(e);
                }
                // Keep what arrived: the next run resumes from it.
                Err(e) => return Err(e),
            }
            if offset != size {
                drop(file);
                remove_part(&part, &part_meta);
                return Err(FetchError::SizeMismatch {
                    url: url.to_string(),
                    expected: size,
                    found: offset,
                });
            }
            file.sync_all().map_err(local(&part))?;
            drop(file);
            fs::rename(&part, dest).map_err(local(dest))?;
            remove_if_exists(&part_meta).map_err(local(&part_meta))?;
            if let Some(dir) = dest.parent() {
                durable::fsync_dir(dir).map_err(local(dir))?;
            }
            return Ok(Downloaded {
                path: dest.to_path_buf(),
                fetched,
                resumed_from,
                reused: false,
            });
        }
        Err(FetchError::Protocol {
            url: url.to_string(),
            detail: "the server answered a range request with a range other than the one asked for, twice".into(),
        })
    }

    fn progress_bar(&self, size: u64, at: u64) -> Option<indicatif::ProgressBar> {
        if !self.settings.progress || !io::stderr().is_terminal() {
            return None;
        }
        let bar = indicatif::ProgressBar::new(size);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "slipway: downloading {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style);
        }
        bar.set_position(at);
        Some(bar)
    }

    /// Maps a ureq error to one that names the URL and says what to do.
    fn describe(&self, url: &str, e: ureq::Error) -> FetchError {
        let url = url.to_string();
        let secs = |d: Duration| d.as_secs().max(1);
        match e {
            ureq::Error::HostNotFound => FetchError::Dns { url },
            ureq::Error::Timeout(t) => match t {
                ureq::Timeout::Resolve | ureq::Timeout::Connect => FetchError::ConnectTimeout {
                    url,
                    secs: secs(self.settings.connect_timeout),
                },
                ureq::Timeout::Global | ureq::Timeout::PerCall => self.deadline_error(&url),
                _ => FetchError::Stall {
                    url,
                    secs: secs(self.settings.stall_timeout),
                },
            },
            ureq::Error::BodyStalled => FetchError::Stall {
                url,
                secs: secs(self.settings.stall_timeout),
            },
            ureq::Error::ConnectionFailed => FetchError::Connect {
                url,
                detail: "connection failed".into(),
            },
            ureq::Error::Io(io) => match io.kind() {
                io::ErrorKind::ConnectionRefused
                | io::ErrorKind::HostUnreachable
                | io::ErrorKind::NetworkUnreachable
                | io::ErrorKind::NetworkDown
                | io::ErrorKind::AddrNotAvailable => FetchError::Connect {
                    url,
                    detail: io.to_string(),
                },
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => FetchError::Stall {
                    url,
                    secs: secs(self.settings.stall_timeout),
                },
                // getaddrinfo's failures reach us as an uncategorised error
                // with std's fixed wording.
                _ if io.to_string().starts_with("failed to lookup address") => {
                    FetchError::Dns { url }
                }
                // rustls reports a failed handshake (an untrusted or expired
                // certificate, a name mismatch) as invalid data.
                io::ErrorKind::InvalidData if url.to_ascii_lowercase().starts_with("https://") => {
                    FetchError::Tls {
                        url,
                        detail: io.to_string(),
                    }
                }
                _ => FetchError::Network {
                    url,
                    detail: format!("the connection broke ({io})"),
                },
            },
            ureq::Error::Tls(detail) => FetchError::Tls {
                url,
                detail: detail.to_string(),
            },
            ureq::Error::Rustls(e) => FetchError::Tls {
                url,
                detail: e.to_string(),
            },
            ureq::Error::Pem(e) => FetchError::Tls {
                url,
                detail: format!("{e:?}"),
            },
            ureq::Error::TlsRequired => FetchError::Tls {
                url,
                detail: "TLS is required but the connection is not encrypted".into(),
            },
            ureq::Error::BadUri(detail) => FetchError::BadUrl { url, detail },
            ureq::Error::Http(e) => FetchError::BadUrl {
                url,
                detail: e.to_string(),
            },
            ureq::Error::InvalidProxyUrl => FetchError::Proxy {
                url,
                detail: "the proxy URL in the environment is invalid".into(),
            },
            ureq::Error::ConnectProxyFailed(detail) => FetchError::Proxy { url, detail },
            ureq::Error::TooManyRedirects | ureq::Error::RedirectFailed => FetchError::Protocol {
                url,
                detail: "too many or broken redirects".into(),
            },
            other => FetchError::Protocol {
                url,
                detail: other.to_string(),
            },
        }
    }
}

/// Fetches a listed release (SPEC §4 step 3): its signature (capped at
/// [`MAX_SIGNATURE_BYTES`]) into `signature`, then the archive into
/// `archive` with [`HttpClient::download`], capped at the signed size.
/// Nothing is trusted here: the verifier checks both files next.
pub fn fetch_release(
    client: &HttpClient,
    remote: &RemoteArchive,
    archive: &Path,
    signature: &Path,
) -> Result<Downloaded, FetchError> {
    let sig = match client.get_metadata(&remote.signature_url, MAX_SIGNATURE_BYTES, None)? {
        Metadata::Fetched { bytes, .. } => bytes,
        Metadata::NotModified => {
            return Err(FetchError::Protocol {
                url: remote.signature_url.clone(),
                detail: "304 Not Modified to an unconditional request".into(),
            })
        }
    };
    if let Some(dir) = signature.parent() {
        durable::create_dirs(dir).map_err(|source| FetchError::Local {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    durable::write_atomic(signature, &sig).map_err(|source| FetchError::Local {
        path: signature.to_path_buf(),
        source,
    })?;
    client
        .download(&remote.url, archive, remote.size)
        .inspect_err(|_| {
            // Fetched afresh with every attempt; a partial archive stays.
            let _ = fs::remove_file(signature);
        })
}

/// The error for an unexpected status, with what to do about it.
fn status_error(url: &str, response: &ureq::http::Response<ureq::Body>) -> FetchError {
    let status = response.status();
    let code = status.as_u16();
    let reason = status
        .canonical_reason()
        .map(|r| format!(" {r}"))
        .unwrap_or_default();
    let hint = match code {
        401 | 403 => "the server refused access: check update.token_file (a read-only token for the release host; it may have expired or lack read access)",
        404 | 410 => "the file is not on the server: check update.source and update.channel (the repository must hold channels/<channel>.json and releases/)",
        407 => "the proxy wants credentials: check HTTPS_PROXY / HTTP_PROXY",
        408 | 429 => "the server is busy: the timer tries again at its next run",
        500..=599 => "the release server failed: try again later (the timer tries again at its next run)",
        300..=399 => "the server redirected in a way slipway does not follow: point update.source at the final location",
        _ => "the server refused the request: check update.source",
    };
    FetchError::Status {
        url: url.to_string(),
        status: code,
        reason,
        hint,
    }
}

/// `Content-Range: bytes START-END/TOTAL` → (START, TOTAL); TOTAL may be `*`.
fn content_range(response: &ureq::http::Response<ureq::Body>) -> Option<(u64, Option<u64>)> {
    let value = response.headers().get("content-range")?.to_str().ok()?;
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start, total))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn truncate(part: &Path, meta: &Path) -> io::Result<()> {
    remove_if_exists(meta)?;
    File::create(part).map(drop)
}

fn remove_part(part: &Path, meta: &Path) {
    let _ = remove_if_exists(part);
    let _ = remove_if_exists(meta);
}

/// Joins a repository base URL and a path inside it.
pub fn join_url(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_join_with_one_slash() {
        assert_eq!(
            join_url("https://h/repo/", "/channels/stable.json"),
            "https://h/repo/channels/stable.json"
        );
        assert_eq!(join_url("http://h", "keys/x"), "http://h/keys/x");
    }

    #[test]
    fn token_is_trimmed_checked_and_never_displayed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        fs::write(&path, "s3cr3t-token\n").expect("write");
        let token = Token::read(&path).expect("token");
        assert_eq!(token.header(), "Bearer s3cr3t-token");
        assert!(!format!("{token:?}").contains("s3cr3t"));
        fs::write(&path, "two words\n").expect("write");
        let err = Token::read(&path).expect_err("space");
        assert!(!err.to_string().contains("words"), "{err}");
        fs::write(&path, "\n").expect("write");
        assert!(Token::read(&path).is_err());
        assert!(Token::read(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn transient_errors_are_the_networks() {
        let s = |status| FetchError::Status {
            url: "u".into(),
            status,
            reason: String::new(),
            hint: "",
        };
        assert!(s(503).is_transient() && s(429).is_transient());
        assert!(!s(404).is_transient() && !s(401).is_transient());
        assert!(s(404).is_not_found());
        assert!(FetchError::Dns { url: "u".into() }.is_transient());
        assert!(!FetchError::TooLarge {
            url: "u".into(),
            max: 1
        }
        .is_transient());
    }
}

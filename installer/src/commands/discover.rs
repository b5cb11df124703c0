//! Discovery (SPEC §4 step 1): which release a source offers this host.
//! An archive is a candidate as it is; a repository, an offline bundle or
//! an HTTP channel goes through its verified channel index and the
//! selection rules (bad list, rollout share, newer than the running one).
//! Results that end the run here (up to date, skipped, refused) are
//! recorded in the history like any attempt.

use std::path::Path;

use crate::config::Config;
use crate::eligibility::{check_eligibility, EligibilityInput};
use crate::failure_model::{self, Cause};
use crate::fetch::HttpClient;
use crate::source::{self, Candidate, Discovery, Repository, Selection, Source, SourceError};
use crate::state::{Attempt, HeldIndex};
use crate::transaction::{self, Failure, Host, InstallOptions, Outcome, Verbosity};
use crate::verify::Expectations;
use crate::Exit;

use super::dispatch::{load_state, CommandError};

pub(super) fn source_error(e: SourceError, exit: Exit) -> CommandError {
    let hint = match &e {
        SourceError::BadUrl { .. } => {
            "give the repository's base URL (the directory holding channels/ and releases/)"
        }
        // The error itself says what to check: the hint only adds what it
        // does not say.
        SourceError::Fetch { .. } | SourceError::UntrustedKey { .. } => "nothing was installed",
        SourceError::NotFound { .. } | SourceError::Unrecognized { .. } => {
            "give an archive path, or a directory with channels/ and releases/"
        }
        SourceError::Expired { .. } => {
            "nothing was installed, and auto-update stays on: the first poll after the refresh updates by itself"
        }
        SourceError::ClockWentBack { .. } => "nothing was installed",
        _ => "nothing was installed; check the source and the trusted keys",
    };
    CommandError::new(exit, "cannot use the release source", e, hint)
}

/// `[update] source` as a [`Source`]; an HTTP URL is refused for now.
pub(super) fn configured_source(config: &Config) -> Result<Source, CommandError> {
    let Some(spec) = config
        .update
        .source
        .as_deref()
        .filter(|s| !s.trim().is_empty())
    else {
        return Err(CommandError::new(
            Exit::Usage,
            "no update source",
            format!("update.source is not set in {}", config.file.display()),
            "set update.source to the path of the release repository, or use `slipway install SOURCE`",
        ));
    };
    let lower = spec.to_ascii_lowercase();
    let resolved = if lower.starts_with("http://") || lower.starts_with("https://") {
        spec.to_string()
    } else {
        // Relative to the configuration file, like every path in it.
        let p = Path::new(spec);
        let base = config.file.parent().unwrap_or(Path::new("."));
        if p.is_absolute() {
            spec.to_string()
        } else {
            base.join(p).display().to_string()
        }
    };
    Source::parse(&resolved).map_err(|e| match e {
        SourceError::BadUrl { .. } => source_error(e, Exit::Usage),
        other => source_error(other, Exit::Failed),
    })
}

/// Records a discovery-level result (up to date, skipped, refused index)
/// in the history and host state, by its cause, and returns its outcome.
pub(super) fn record(host: &Host, o: Outcome, auto: bool) -> Result<Outcome, CommandError> {
    let attempt = Attempt {
        op: o.op.clone(),
        at: host.clock.now(),
        result: o.result,
        from_version: o.from_version.clone(),
        version: o.version.clone(),
        release_id: o.release_id,
        message: o.message.clone(),
        duration_ms: o.duration_ms,
        cause: o.cause,
        auto,
    };
    transaction::record_attempt(host, attempt)?;
    Ok(o)
}

/// `update --auto`: the auto-only rules (enabled, attempts, failures) are
/// checked before the source is even read.
pub(super) fn auto_precheck(host: &Host) -> Result<Option<Outcome>, CommandError> {
    let state = load_state(host)?;
    let input = EligibilityInput {
        config: host.config,
        layout: &host.layout,
        state: &state,
        running: None,
        needed_bytes: 0,
        auto: true,
        now: host.clock.now(),
        clean: Default::default(),
    };
    match check_eligibility(&input) {
        Ok(()) => Ok(None),
        Err(i) => {
            let mut o = Outcome::of_cause(
                "update",
                i.cause(),
                format!("skipped ({}): {}", i.rule, i.reason),
            );
            o.rule = Some(i.rule.to_string());
            // The reason says what to do; a hint would only repeat it.
            o.failure = Some(Failure::new(
                "update skipped",
                format!("{} ({})", i.reason, i.rule),
                "",
            ));
            record(host, o, true).map(Some)
        }
    }
}

/// What discovery decided for a source.
pub(super) enum Resolved {
    Install(Box<Candidate>),
    Nothing(Box<Outcome>),
}

/// Turns a source into a candidate: an archive directly, a repository
/// through its verified channel index. `persist_trust`: advance the trust
/// state (only under the lock, never for read-only commands).
pub(super) fn resolve(
    host: &Host,
    src: &Source,
    opts: &InstallOptions,
    allow_expired: bool,
    persist_trust: bool,
) -> Result<Resolved, CommandError> {
    // The app and version only: the manifest is read by the transaction,
    // once a newer release is offered.
    let running = transaction::running_summary(&host.layout).map_err(|f| CommandError {
        exit: Exit::Failed,
        failure: f,
    })?;
    let app = running.as_ref().map(|r| r.app().to_string());
    let channel = host.config.update.channel.clone();
    match src {
        Source::Archive { archive, signature } => {
            let keys = configured_keys(host)?;
            let keys = source::trusted_keys_for_archives(&keys, &revoked_keys(host)?, &host.layout)
                .map_err(|e| source_error(e, Exit::Failed))?;
            Ok(Resolved::Install(Box::new(Candidate {
                archive: archive.clone(),
                signature: signature.clone(),
                expect: Expectations {
                    app,
                    channel: Some(channel),
                    id: None,
                    max_size: None,
                },
                listed: None,
                keys,
                remote: None,
                deltas: Vec::new(),
            })))
        }
        Source::Repo { dir } => {
            if let Some(r) = refuse_changed_bundle(host, dir, opts, persist_trust)? {
                return Ok(r);
            }
            let keys = configured_keys(host)?;
            let repo = Repository::Dir(dir);
            resolve_listed(
                host,
                &repo,
                &keys,
                running,
                opts,
                allow_expired,
                persist_trust,
            )
        }
        Source::Http { base } => {
            let keys = configured_keys(host)?;
            let progress = host.log.verbosity >= Verbosity::Normal;
            let client = HttpClient::from_config(&host.config.update, progress).map_err(|e| {
                CommandError::new(
                    Exit::Usage,
                    "cannot set up the HTTP client",
                    e,
                    "fix update.token_file in the configuration",
                )
            })?;
            let repo = Repository::Http {
                base,
                client: &client,
            };
            resolve_listed(
                host,
                &repo,
                &keys,
                running,
                opts,
                allow_expired,
                persist_trust,
            )
        }
    }
}

/// `[update] public_keys`.
fn configured_keys(host: &Host) -> Result<slipway_formats::TrustedKeys, CommandError> {
    host.config.trusted_keys().map_err(|e| {
        CommandError::new(
            Exit::Usage,
            "cannot load the trusted keys",
            e,
            "fix update.public_keys",
        )
    })
}

/// `[update] revoked_keys`.
fn revoked_keys(host: &Host) -> Result<Vec<slipway_formats::KeyId>, CommandError> {
    host.config.revoked_key_ids().map_err(|e| {
        CommandError::new(
            Exit::Usage,
            "cannot load the revoked keys",
            e,
            "fix update.revoked_keys",
        )
    })
}

/// A refused or unreadable repository: under the lock the attempt is
/// recorded by its `cause` (a refusal or the network: counted toward
/// neither budget, see [`failure_model`]) and becomes the outcome; a
/// read-only command just fails.
fn refuse(
    host: &Host,
    opts: &InstallOptions,
    persist: bool,
    err: CommandError,
    cause: Cause,
) -> Result<Resolved, CommandError> {
    if !persist {
        return Err(err);
    }
    let mut o = Outcome::of_cause(
        opts.op.name(),
        cause,
        format!("{}: {}", err.failure.what, err.failure.why),
    );
    o.failure = Some(err.failure);
    record(host, o, opts.auto).map(|o| Resolved::Nothing(Box::new(o)))
}

/// Discovery in a repository (a directory, a bundle or HTTP): the channel
/// index through [`source::read_channel`] (every check of SPEC §6; the
/// trust state, learned keys and index cache advance only under the lock),
/// then the release this host takes.
fn resolve_listed(
    host: &Host,
    repo: &Repository,
    keys: &slipway_formats::TrustedKeys,
    running: Option<transaction::RunningSummary>,
    opts: &InstallOptions,
    allow_expired: bool,
    persist_trust: bool,
) -> Result<Resolved, CommandError> {
    let started = std::time::Instant::now();
    let app = running.as_ref().map(|r| r.app().to_string());
    let channel = host.config.update.channel.clone();
    let revoked = revoked_keys(host)?;
    let options = source::ReadOptions {
        layout: &host.layout,
        channel: &channel,
        app: app.as_deref(),
        configured_keys: keys,
        revoked_keys: &revoked,
        now: host.clock.now(),
        allow_expired,
        persist: persist_trust,
    };
    let read = match source::read_channel(repo, &options) {
        Ok(r) => r,
        Err(e) => {
            let cause = failure_model::of_source_error(&e);
            let err = source_error(e, cause.exit());
            return refuse(host, opts, persist_trust, err, cause);
        }
    };
    for k in &read.retired {
        host.log.info(format!(
            "no longer trusting release key {} ({}){}",
            k.key_id,
            k.reason,
            if persist_trust {
                ": a rotation statement never brings it back"
            } else {
                " in this read-only run"
            }
        ));
    }
    for k in &read.learned {
        host.log.info(format!(
            "trusting release key {} {}: introduced by trusted key {} ({})",
            k.key_id,
            if persist_trust {
                "from now on"
            } else {
                "for this read-only run"
            },
            k.introduced_by,
            repo.location(&format!("keys/rotation-{}.json", k.key_id))
        ));
    }
    if read.not_modified {
        host.log
            .debug(format!("{}: not modified (304)", read.verified.location));
    }
    let verified = &read.verified;
    let mut state = load_state(host)?;
    if persist_trust {
        // What status, the banner and the metrics say about the expiry.
        state.index = Some(HeldIndex {
            channel: channel.clone(),
            version: verified.index.version,
            expires: verified.index.expires,
            newest: verified.index.releases.first().map(|r| r.version.clone()),
        });
        state
            .save(&host.layout)
            .map_err(|e| CommandError::from(transaction::TxnError::from(e)))?;
    }
    let machine = source::machine_id(host.config.update.machine_id.as_deref());
    host.log.debug(format!(
        "channel index {} read and verified in {} ms",
        verified.location,
        started.elapsed().as_millis()
    ));
    let running_version = running.as_ref().map(|r| r.version().clone());
    let sel = Selection {
        running: running_version.as_ref(),
        state: &state,
        machine_id: machine.as_deref(),
        canary: host.config.update.canary,
        force: opts.force,
    };
    let discovery = match source::select_release(&verified.index, &sel) {
        (Some(release), _) => Discovery::Candidate(Box::new(source::listed_candidate(
            repo,
            &verified.index,
            release,
            &read.keys,
            &host.layout.downloads_dir(),
        ))),
        (None, skipped) => Discovery::UpToDate {
            newest: verified.index.releases.first().map(|r| r.version.clone()),
            skipped,
        },
    };
    match discovery {
        Discovery::Candidate(c) => {
            // A release already staged and waiting for `apply`.
            if let (Some(p), Some(listed)) = (&state.pending, &c.listed) {
                if p.release_id == listed.id && !host.config.update.auto_restart {
                    let mut o = Outcome::of_cause(
                        opts.op.name(),
                        Cause::Ready,
                        format!(
                            "update ready: {} is staged and checked; run `slipway apply`",
                            p.version
                        ),
                    );
                    // Waiting is no new attempt.
                    o.cause = None;
                    return Ok(Resolved::Nothing(Box::new(o)));
                }
            }
            Ok(Resolved::Install(c))
        }
        Discovery::UpToDate { newest, skipped } => {
            let mut msg = format!(
                "up to date: running {}, channel {} (index v{}) offers {}",
                running_version
                    .as_ref()
                    .map_or_else(|| "nothing".into(), |v| v.to_string()),
                channel,
                verified.index.version,
                newest.map_or_else(|| "no release".into(), |v| v.to_string()),
            );
            if !skipped.is_empty() {
                msg.push_str(&format!("; passed over: {}", skipped.join("; ")));
            }
            // A newer release this host will not take by itself: updates
            // are stuck until it is fixed or forgiven.
            let newer_on_bad_list = !opts.force
                && verified.index.releases.iter().any(|r| {
                    !r.yanked
                        && running_version.as_ref().is_none_or(|v| &r.version > v)
                        && state.bad(&r.id).is_some()
                });
            let cause = if newer_on_bad_list {
                Cause::NewerOnBadList
            } else {
                Cause::UpToDate
            };
            let mut o = Outcome::of_cause(opts.op.name(), cause, msg);
            o.from_version = running_version;
            if persist_trust {
                o = record(host, o, opts.auto)?;
            }
            Ok(Resolved::Nothing(Box::new(o)))
        }
    }
}

/// An offline bundle (a directory with `SHA256SUMS`) whose files do not
/// match their signed checksums is refused before its index is read
/// ([`crate::bundle::check_bundle`]), and the refusal recorded like a
/// refused index. `Ok(None)`: a plain repository, or a bundle that checks.
fn refuse_changed_bundle(
    host: &Host,
    dir: &Path,
    opts: &InstallOptions,
    persist_trust: bool,
) -> Result<Option<Resolved>, CommandError> {
    // The configured keys and those learned from rotation statements: a
    // bundle's SHA256SUMS must be signed by one of them.
    let keys = source::trusted_keys_for_archives(
        &configured_keys(host)?,
        &revoked_keys(host)?,
        &host.layout,
    )
    .map_err(|e| source_error(e, Exit::Failed))?;
    let e = match crate::bundle::check_bundle(dir, &keys) {
        Ok(Some(b)) => {
            host.log.debug(format!(
                "bundle {}: {} files match SHA256SUMS{}",
                dir.display(),
                b.files,
                b.signed_by
                    .map(|k| format!(", signed by key {k}"))
                    .unwrap_or_default()
            ));
            return Ok(None);
        }
        Ok(None) => return Ok(None),
        Err(e) => e,
    };
    let hint = e.hint();
    let err = CommandError::new(Exit::Failed, "offline bundle refused", e, hint);
    // Recorded like a refused index: a refusal of what the source offers,
    // which counts toward neither budget.
    refuse(host, opts, persist_trust, err, Cause::BundleCorrupt).map(Some)
}

/// A `.tar` offline bundle becomes the bundle directory it holds, unpacked
/// into a scratch directory under `scratch` (removed when the returned
/// guard drops); every other source is returned as it is.
pub(super) fn open_bundle_tar(
    src: Source,
    scratch: &Path,
) -> Result<(Source, Option<tempfile::TempDir>), CommandError> {
    let Source::Archive { archive, .. } = &src else {
        return Ok((src, None));
    };
    if !crate::bundle::is_bundle_tar(archive) {
        return Ok((src, None));
    }
    let (guard, dir) = crate::bundle::unpack_bundle_tar(archive, scratch).map_err(|e| {
        let hint = e.hint();
        CommandError::new(Exit::Failed, "offline bundle refused", e, hint)
    })?;
    let src = Source::parse(&dir.to_string_lossy()).map_err(|e| source_error(e, Exit::Failed))?;
    Ok((src, Some(guard)))
}

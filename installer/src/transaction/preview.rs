//! Dry run and check: what an install would do, with nothing under the
//! root changed.

use super::*;

// ---------------------------------------------------------------------------
// Dry run and check (nothing under the root changes)
// ---------------------------------------------------------------------------

/// What `install --dry-run` and `check` found.
#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    pub app: String,
    pub version: Version,
    pub release_id: ReleaseId,
    pub size: u64,
    pub signer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running_version: Option<Version>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_schema: Option<u32>,
    pub schema_version: u32,
    pub migrates: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<ManifestDiff>,
    /// Why it would be refused (upgrade rules, bad list), if it would.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// The eligibility rule that would skip it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ineligible: Option<String>,
    /// Whether the checks ran (dry run) and passed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks_passed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks_error: Option<String>,
}

/// Verifies the candidate and compares it with the running release; with
/// `stage_and_check`, also unpacks it into a throwaway directory outside the
/// root and runs the checks there. Writes nothing under the root.
pub fn preview(
    host: &Host,
    candidate: &Candidate,
    opts: &InstallOptions,
    stage_and_check: bool,
) -> Result<Preview, Failure> {
    // An HTTP release is fetched into a throwaway directory: a read-only
    // command never writes into downloads/ (it holds no lock).
    let mut _scratch = None;
    let fetched;
    let candidate = match &candidate.remote {
        None => candidate,
        Some(remote) => {
            let tmp = tempfile::Builder::new()
                .prefix("slipway-fetch-")
                .tempdir()
                .map_err(|e| {
                    Failure::new("cannot create a temporary directory", e, "check $TMPDIR")
                })?;
            fetched = candidate.fetched_into(tmp.path());
            _scratch = Some(tmp);
            let client = HttpClient::from_config(
                &host.config.update,
                host.log.verbosity >= Verbosity::Normal,
            )
            .map_err(|e| {
                Failure::new(
                    "cannot set up the HTTP client",
                    e,
                    "fix update.token_file in the configuration",
                )
            })?;
            host.log.info(format!("downloading {}", remote.url));
            fetch::fetch_release(&client, remote, &fetched.archive, &fetched.signature).map_err(
                |e| {
                    Failure::new(
                        format!("cannot download release {}", remote.url),
                        e,
                        "nothing was changed",
                    )
                },
            )?;
            &fetched
        }
    };
    let mut verified: VerifiedArchive = verify::verify_archive(
        &candidate.archive,
        &candidate.signature,
        &candidate.keys,
        &candidate.expect,
    )
    .map_err(|e| {
        Failure::new(
            format!("release {} refused", candidate.archive.display()),
            e,
            "check the source and the trusted keys",
        )
    })?;
    let running = running_release(&host.layout)?;
    let schema = data_schema(host.persistence(), running.as_ref().map(|r| &r.manifest))?;
    let state = HostState::load_at(&host.layout, host.clock.now())
        .map_err(|e| Failure::new("cannot read the host state", e, "see the message above"))?;
    // `--force` with the running release reinstalls a clean copy of it.
    let reinstall = opts.force
        && running.as_ref().is_some_and(|r| {
            r.id == Some(verified.release.id)
                || r.dir
                    == host
                        .layout
                        .release_dir(&verified.release.manifest, &verified.release.id)
        });
    let mut refused = verify::check_upgrade(
        &verified.release.manifest,
        running.as_ref().map(|r| &r.manifest),
        schema,
        opts.allow_downgrade || reinstall,
    )
    .err()
    .map(|e| e.to_string());
    if !opts.force {
        if let Some(bad) = state.bad(&verified.release.id) {
            refused.get_or_insert_with(|| {
                format!("on this host's bad list since {} ({})", bad.at, bad.reason)
            });
        }
    }
    // A dry run sets nothing aside: count what a real run would.
    let needed = room_needed(&verified.release.manifest, host.persistence())
        .saturating_add(crate::reserve::JOURNAL_ROOM)
        .saturating_add(crate::reserve::copy_room(host.persistence()).saturating_mul(2));
    let ineligible = check_eligibility(&EligibilityInput {
        config: host.config,
        layout: &host.layout,
        state: &state,
        running: if opts.force {
            None
        } else {
            running.as_ref().map(|r| (r.dir.as_path(), &r.manifest))
        },
        needed_bytes: needed,
        auto: opts.auto,
        now: host.clock.now(),
        clean: crate::clean::CleanRule {
            deep: host.config.update.deep_clean_check,
            record: false,
            log: Some(host.log),
        },
    })
    .err()
    .map(|i| format!("{} ({})", i.reason, i.rule));
    let diff = running
        .as_ref()
        .map(|r| diff_manifests(&r.manifest, &verified.release.manifest));
    let migrates = schema.is_some_and(|s| verified.release.manifest.schema_version > s);
    let (mut checks_passed, mut checks_error) = (None, None);
    if stage_and_check {
        let tmp = tempfile::Builder::new()
            .prefix("slipway-dry-run-")
            .tempdir()
            .map_err(|e| Failure::new("cannot create a temporary directory", e, "check $TMPDIR"))?;
        let releases = tmp.path().join("releases");
        std::fs::create_dir(&releases)
            .map_err(|e| Failure::new("cannot create a temporary directory", e, "check $TMPDIR"))?;
        let dir = stage::stage_release(&mut verified, &releases).map_err(|e| {
            Failure::new(
                "the release was refused while unpacking (dry run)",
                e,
                "the archive is damaged or hostile",
            )
        })?;
        let user = host.app_user()?;
        let pycache = hooks::hook_scratch_dir(user);
        let env = hook_env(
            &dir,
            &verified.release.manifest,
            host.persistence(),
            None,
            pycache
                .as_ref()
                .map_or(Path::new("/nonexistent"), |d| d.path()),
        );
        if !user.is_root() {
            // The service's user must reach the staged release (only
            // through: the directory stays unlistable).
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711));
        }
        let timeout = Duration::from_secs(host.config.hooks.timeout_seconds);
        match hooks::run_checks(
            &dir,
            verified.release.manifest.hooks.check.as_deref(),
            &host.config.hooks.check,
            &env,
            timeout,
            user,
            // A dry run writes nothing under the root: no kept output.
            None,
        ) {
            Ok(_) => checks_passed = Some(true),
            Err(e) => {
                checks_passed = Some(false);
                checks_error = Some(e.to_string());
            }
        }
        if let Err(e) = durable::remove_tree(tmp.path()) {
            host.log
                .warn(format!("cannot remove {}: {e}", tmp.path().display()));
        }
    }
    Ok(Preview {
        app: verified.release.manifest.app.clone(),
        version: verified.release.manifest.version.clone(),
        release_id: verified.release.id,
        size: verified.release.size,
        signer: verified.release.signer.to_string(),
        running_version: running.map(|r| r.manifest.version),
        data_schema: schema,
        schema_version: verified.release.manifest.schema_version,
        migrates,
        diff,
        refused,
        ineligible,
        checks_passed,
        checks_error,
    })
}

//! Host queries: the releases installed under `releases/`, the one
//! `current` names, and the data's schema.

use super::*;

// ---------------------------------------------------------------------------
// Installed releases: ids and install times (state/releases.json)
// ---------------------------------------------------------------------------

/// What slipway remembers of a staged release: the manifest has no id (the
/// id is the archive's hash), so it is kept here, by directory name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRecord {
    pub id: ReleaseId,
    /// The release's app, so that an idle poll learns what runs without
    /// reading its manifest ([`running_summary`]); absent in records
    /// written by an older slipway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    pub version: Version,
    /// The manifest's channel and schema version, for the same reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<u32>,
    pub staged_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_at: Option<Timestamp>,
}

/// `<root>/state/releases.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRecords {
    pub releases: BTreeMap<String, ReleaseRecord>,
}

/// Where [`ReleaseRecords`] live.
pub fn records_file(layout: &Layout) -> PathBuf {
    layout.state_dir().join("releases.json")
}

impl ReleaseRecords {
    /// Loads the records (capped, regular file only); a missing or
    /// unreadable file is an empty record set (the ids are then unknown,
    /// which only costs detail in reports).
    pub fn load(layout: &Layout) -> ReleaseRecords {
        slipway_fs::read_capped(&records_file(layout), crate::source::MAX_STATE_BYTES)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// The record of the release in `dir`.
    pub fn get(&self, dir: &Path) -> Option<&ReleaseRecord> {
        let name = dir.file_name()?.to_str()?;
        self.releases.get(name)
    }

    pub(super) fn update(
        layout: &Layout,
        dir: &Path,
        change: impl FnOnce(Option<ReleaseRecord>) -> Option<ReleaseRecord>,
    ) -> Result<(), TxnError> {
        let mut records = ReleaseRecords::load(layout);
        let releases = layout.releases_dir();
        records
            .releases
            .retain(|name, _| releases.join(name).is_dir());
        if let Some(name) = dir.file_name().and_then(|n| n.to_str()) {
            if let Some(r) = change(records.releases.remove(name)) {
                records.releases.insert(name.to_string(), r);
            }
        }
        let path = records_file(layout);
        durable::write_json_atomic(&path, &records).map_err(|e| {
            TxnError::host(
                format!("cannot write {}", path.display()),
                e,
                "check free space and permissions of the state directory",
            )
        })
    }
}

// ---------------------------------------------------------------------------
// The running release and the data
// ---------------------------------------------------------------------------

/// A release installed under `releases/`.
#[derive(Debug, Clone)]
pub struct Installed {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// `slipway/manifest.json` as read, byte for byte: a delta's first
    /// frame is decompressed against it.
    pub manifest_bytes: Vec<u8>,
    pub id: Option<ReleaseId>,
    pub installed_at: Option<Timestamp>,
}

/// Reads `<dir>/slipway/manifest.json` (capped) and the release's record.
pub fn read_installed(layout: &Layout, dir: &Path) -> Result<Installed, Failure> {
    let read = read_manifest_of(layout, dir, Manifest::parse)?;
    Ok(Installed {
        dir: dir.to_path_buf(),
        manifest: read.manifest,
        manifest_bytes: read.bytes,
        id: read.id,
        installed_at: read.installed_at,
    })
}

/// An installed release's manifest head ([`ManifestHead`]) and record: what
/// `status`, `gc` and a rollback's bookkeeping need, without building the
/// file list.
#[derive(Debug, Clone)]
pub struct InstalledHead {
    pub dir: PathBuf,
    pub head: ManifestHead,
    pub id: Option<ReleaseId>,
    pub installed_at: Option<Timestamp>,
}

/// [`read_installed`] for the head only.
pub fn read_installed_head(layout: &Layout, dir: &Path) -> Result<InstalledHead, Failure> {
    let read = read_manifest_of(layout, dir, ManifestHead::parse)?;
    Ok(InstalledHead {
        dir: dir.to_path_buf(),
        head: read.manifest,
        id: read.id,
        installed_at: read.installed_at,
    })
}

struct ReadManifest<T> {
    manifest: T,
    bytes: Vec<u8>,
    id: Option<ReleaseId>,
    installed_at: Option<Timestamp>,
}

fn read_manifest_of<T>(
    layout: &Layout,
    dir: &Path,
    parse: impl FnOnce(&[u8]) -> Result<T, ManifestError>,
) -> Result<ReadManifest<T>, Failure> {
    let path = dir.join(MANIFEST_PATH);
    let bytes =
        crate::source::read_capped(&path, MAX_MANIFEST_BYTES, "release manifest").map_err(|e| {
            Failure::new(
                format!("cannot read the installed release {}", dir.display()),
                e,
                "run `slipway verify`; reinstall the release with `slipway install --force`",
            )
        })?;
    let manifest = parse(&bytes).map_err(|e| {
        Failure::new(
            format!("the manifest {} is not valid", path.display()),
            e,
            "the manifest changed after the release was installed; reinstall a clean copy with `slipway install --force SOURCE`",
        )
    })?;
    let records = ReleaseRecords::load(layout);
    let record = records.get(dir);
    let installed_at = record.and_then(|r| r.installed_at).or_else(|| {
        // The link's own mtime is when the switch made it.
        std::fs::symlink_metadata(layout.current_link())
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| Timestamp::from_unix(d.as_secs() as i64))
    });
    Ok(ReadManifest {
        manifest,
        bytes,
        id: record.map(|r| r.id),
        installed_at,
    })
}

/// The release `current` points at, if any.
pub fn running_release(layout: &Layout) -> Result<Option<Installed>, Failure> {
    let dir = switch::current_dir(layout).map_err(|e| {
        Failure::new(
            "cannot read the current release",
            e,
            "check the install root",
        )
    })?;
    match dir {
        Some(dir) => read_installed(layout, &dir).map(Some),
        None => Ok(None),
    }
}

/// What discovery and the reports need to know of an installed release.
#[derive(Debug, Clone)]
pub struct RunningSummary {
    pub dir: PathBuf,
    pub facts: crate::report::ReleaseFacts,
    pub id: Option<ReleaseId>,
    pub installed_at: Option<Timestamp>,
}

impl RunningSummary {
    pub fn app(&self) -> &str {
        &self.facts.app
    }

    pub fn version(&self) -> &Version {
        &self.facts.version
    }
}

/// [`summary_of`] the release `current` names, if any.
pub fn running_summary(layout: &Layout) -> Result<Option<RunningSummary>, Failure> {
    let dir = switch::current_dir(layout).map_err(|e| {
        Failure::new(
            "cannot read the current release",
            e,
            "check the install root",
        )
    })?;
    match dir {
        Some(dir) => summary_of(layout, &ReleaseRecords::load(layout), &dir).map(Some),
        None => Ok(None),
    }
}

/// The app, version, channel and schema of the release in `dir`, from the
/// release records (`state/releases.json`), without opening its manifest:
/// an idle poll reads a manifest of 20,000 entries only when a newer
/// release is offered. Falls back to the manifest for a release whose
/// record lacks them (written by an older slipway).
pub fn summary_of(
    layout: &Layout,
    records: &ReleaseRecords,
    dir: &Path,
) -> Result<RunningSummary, Failure> {
    if let Some(r) = records.get(dir) {
        if let (Some(app), Some(channel), Some(schema_version)) =
            (&r.app, &r.channel, r.schema_version)
        {
            let installed_at = r.installed_at.or_else(|| link_time(layout));
            return Ok(RunningSummary {
                dir: dir.to_path_buf(),
                facts: crate::report::ReleaseFacts {
                    app: app.clone(),
                    version: r.version.clone(),
                    channel: channel.clone(),
                    schema_version,
                },
                id: Some(r.id),
                installed_at,
            });
        }
    }
    let installed = read_installed_head(layout, dir)?;
    Ok(RunningSummary {
        dir: dir.to_path_buf(),
        facts: (&installed.head).into(),
        id: installed.id,
        installed_at: installed.installed_at,
    })
}

/// When the switch made `current` (the link's own mtime).
fn link_time(layout: &Layout) -> Option<Timestamp> {
    std::fs::symlink_metadata(layout.current_link())
        .ok()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| Timestamp::from_unix(d.as_secs() as i64))
}

/// The largest `schema_version` file read (it holds one small integer).
const MAX_SCHEMA_FILE_BYTES: u64 = 4096;

/// The data's schema version: `<persistence>/schema_version` (decimal text,
/// written by the app and the migrate hook), else the running release's
/// `schema_version`, else unknown (a fresh host: nothing to migrate).
///
/// The file is the app's: it is read relative to the persistence directory's
/// descriptor, never through a symlink, only if it is a regular file, and up
/// to a small cap; its content is never quoted in an error.
pub fn data_schema(persistence: &Path, running: Option<&Manifest>) -> Result<Option<u32>, Failure> {
    let path = persistence.join("schema_version");
    let cannot_read = |why: String| {
        Failure::new(
            format!("cannot read the data schema {}", path.display()),
            why,
            "the file holds the schema version of the persisted data (e.g. 1) as a regular file; fix or restore it",
        )
    };
    let bytes = match crate::app_dir::open_persistence(persistence) {
        Ok(Some(dir)) => dir
            .read_capped(
                std::ffi::OsStr::new("schema_version"),
                MAX_SCHEMA_FILE_BYTES,
            )
            .map_err(|e| cannot_read(e.to_string()))?,
        Ok(None) => None,
        Err(e) => return Err(cannot_read(e.to_string())),
    };
    let Some(bytes) = bytes else {
        return Ok(running.map(|m| m.schema_version));
    };
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .map(Some)
        .ok_or_else(|| cannot_read("it does not hold a decimal integer".into()))
}

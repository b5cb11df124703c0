//! `slipway backups` (read-only: the persistence snapshots in `backups/`)
//! and `slipway restore BACKUP` (a journaled transaction that puts one back
//! under the running release).

use serde::Serialize;
use slipway_formats::channel::Timestamp;

use crate::snapshot::{self, SnapshotInfo};
use crate::transaction::{self, Host};
use crate::Exit;

use super::dispatch::{emit, print_json, CommandError};
use super::install::ask_yes;

/// One backup as `slipway backups --json` prints it: the record, and when
/// it was taken as an RFC 3339 time.
#[derive(Serialize)]
struct BackupView<'a> {
    #[serde(flatten)]
    info: &'a SnapshotInfo,
    taken_at: Option<String>,
}

fn taken_at(info: &SnapshotInfo) -> Option<String> {
    i64::try_from(info.created_unix)
        .ok()
        .and_then(Timestamp::from_unix)
        .map(|t| t.to_string())
}

/// `slipway backups [--json]`: every complete snapshot, newest first.
pub(super) fn backups(host: &Host, json: bool) -> Result<Exit, CommandError> {
    let dir = host.layout.backups_dir();
    let infos = snapshot::list_snapshot_infos(&dir);
    if json {
        let views: Vec<BackupView> = infos
            .iter()
            .map(|info| BackupView {
                info,
                taken_at: taken_at(info),
            })
            .collect();
        print_json(&views);
        return Ok(Exit::Done);
    }
    if infos.is_empty() {
        slipway_fs::outln!("no backups in {}", dir.display());
        return Ok(Exit::Done);
    }
    let rows: Vec<[String; 7]> = infos
        .iter()
        .map(|i| {
            let unknown = || "-".to_string();
            [
                i.name.clone(),
                taken_at(i).unwrap_or_else(unknown),
                if i.about.reason.is_empty() {
                    unknown()
                } else {
                    i.about.reason.clone()
                },
                i.about
                    .release
                    .clone()
                    .or_else(|| i.about.version.clone())
                    .unwrap_or_else(unknown),
                i.about.schema.map_or_else(unknown, |s| s.to_string()),
                i.files.to_string(),
                human_bytes(i.bytes),
            ]
        })
        .collect();
    let header = [
        "NAME",
        "TAKEN AT (UTC)",
        "WHY",
        "RELEASE",
        "SCHEMA",
        "FILES",
        "SIZE",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        text
    };
    slipway_fs::outln!("{}", line(&header));
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        slipway_fs::outln!("{}", line(&cells));
    }
    Ok(Exit::Done)
}

/// `1.2 MiB`, `512 B`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `slipway restore BACKUP [--yes] [--force]`, under the lock and after
/// recovery: checks the request (a refusal is exit 2 with nothing
/// changed), asks for a "y" on stdin unless `--yes`, then runs the restore
/// transaction.
pub(super) fn restore_cmd(
    host: &Host,
    name: &str,
    yes: bool,
    force: bool,
    json: bool,
) -> Result<Exit, CommandError> {
    let plan = transaction::check_restore(host, name, force).map_err(|failure| CommandError {
        exit: Exit::Usage,
        failure,
    })?;
    if !yes {
        let b = &plan.backup;
        let question = format!(
            "restore backup {} (taken {}, {}, {} files, {}) into {}? The data there now is kept in a new backup. [y/N] ",
            b.name,
            taken_at(b).unwrap_or_else(|| "at an unknown time".into()),
            b.about
                .release
                .as_deref()
                .or(b.about.version.as_deref())
                .unwrap_or("of an unknown release"),
            b.files,
            human_bytes(b.bytes),
            host.config.paths.persistence.display()
        );
        if !ask_yes(&question) {
            return Err(CommandError::new(
                Exit::Skipped,
                format!("backup {name} not restored"),
                "the answer was not \"y\"",
                "nothing was changed; pass --yes to restore without asking",
            ));
        }
    }
    let o = transaction::restore(host, &plan)?;
    Ok(emit(host, &o, json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_du() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0 MiB");
    }
}

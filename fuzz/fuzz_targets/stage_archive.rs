//! Archive staging: the installer's `verify_archive` then `stage_release`
//! of a `.tar.zst` into a fresh releases directory (on tmpfs when there is
//! one), the way `slipway install` runs them. Every mutated archive is
//! re-signed with the seed key and a release comment naming its own
//! manifest, so mutations reach the tar and manifest checks instead of
//! stopping at the signature: the threat is a validly signed hostile
//! archive (a packager bug or a stolen key).
//!
//! Input: one mode byte, then either the `.tar.zst` itself (mode byte
//! even) or an uncompressed tar that the target compresses first (odd), so
//! mutations reach tar headers as easily as zstd frames. A staged release
//! must lie inside the releases directory and nothing else may appear
//! there; a refusal must leave the directory empty.
#![no_main]

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use slipway::stage::{stage_release_with, StageOptions, SyncMode};
use slipway::verify::{verify_archive, Expectations};
use slipway_formats::signature::TrustedComment;
use slipway_formats::{Manifest, ReleaseId, MANIFEST_PATH, MAX_MANIFEST_BYTES};
use slipway_fuzz::{first_key, signing_key};

/// A scratch directory for the whole run: on /dev/shm when it exists.
fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let builder = {
            let mut b = tempfile::Builder::new();
            b.prefix("slipway-fuzz-stage-");
            b
        };
        if shm.is_dir() {
            builder.tempdir_in(shm)
        } else {
            builder.tempdir()
        }
        .expect("scratch directory")
    })
    .path()
}

/// The manifest an archive starts with, if it can be read (the comment to
/// sign names its app, version and channel).
fn peek_manifest(tar_zst: &[u8]) -> Option<Manifest> {
    let mut decoder = zstd::stream::read::Decoder::new(tar_zst).ok()?;
    decoder.window_log_max(27).ok()?;
    let mut header = [0u8; 512];
    decoder.read_exact(&mut header).ok()?;
    let name_end = header[..100].iter().position(|&b| b == 0).unwrap_or(100);
    if &header[..name_end] != MANIFEST_PATH.as_bytes() {
        return None;
    }
    let size_field = std::str::from_utf8(&header[124..136]).ok()?;
    let size = u64::from_str_radix(size_field.trim_matches(|c| c == '\0' || c == ' '), 8).ok()?;
    if size > MAX_MANIFEST_BYTES.min(1 << 20) {
        return None;
    }
    let mut bytes = vec![0u8; usize::try_from(size).ok()?];
    decoder.read_exact(&mut bytes).ok()?;
    Manifest::parse(&bytes).ok()
}

/// Removes everything under `dir` (staged trees are read-only).
fn empty_dir(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        make_writable(&path);
        let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
    }
}

fn make_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_dir() {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
        if let Ok(entries) = fs::read_dir(path) {
            for e in entries.flatten() {
                make_writable(&e.path());
            }
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, body)) = input.split_first() else {
        return;
    };
    let archive_bytes = if mode % 2 == 0 {
        body.to_vec()
    } else {
        match zstd::bulk::compress(body, 1) {
            Ok(b) => b,
            Err(_) => return,
        }
    };
    let dir = scratch();
    let archive = dir.join("release.tar.zst");
    let signature = dir.join("release.tar.zst.minisig");
    let releases: PathBuf = dir.join("releases");
    fs::create_dir_all(&releases).expect("releases dir");

    let id = ReleaseId::of_bytes(&archive_bytes);
    let comment = match peek_manifest(&archive_bytes) {
        Some(m) => TrustedComment::for_release(&m.app, &m.version.to_string(), &m.channel, &id),
        None => TrustedComment::for_release("bot", "1.0.0", "stable", &id),
    };
    let sig = signing_key()
        .sign_bytes(&archive_bytes, &comment.to_string())
        .expect("sign");
    fs::write(&archive, &archive_bytes).expect("write archive");
    fs::write(&signature, sig).expect("write signature");

    let expect = Expectations {
        id: Some(id),
        max_size: Some(archive_bytes.len() as u64),
        ..Expectations::default()
    };
    let staged = verify_archive(&archive, &signature, first_key(), &expect)
        .ok()
        .and_then(|mut verified| {
            stage_release_with(
                &mut verified,
                &releases,
                StageOptions {
                    sync: SyncMode::Filesystem,
                    ..StageOptions::default()
                },
            )
            .ok()
        });
    let left: Vec<PathBuf> = fs::read_dir(&releases)
        .expect("read releases")
        .flatten()
        .map(|e| e.path())
        .collect();
    match staged {
        Some(release) => {
            assert!(
                release.starts_with(&releases),
                "staged outside: {release:?}"
            );
            assert_eq!(left, vec![release], "more than the release was left");
        }
        None => assert!(left.is_empty(), "a refused archive left {left:?}"),
    }
    empty_dir(&releases);
});

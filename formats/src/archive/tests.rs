//! The entry policy and the walk, on archives built in memory. The
//! hostile archives of SPEC §6, each signed, are in the installer's
//! `tests/hostile_archives.rs`, which also runs `slipway-pack verify` on
//! every one of them.

use std::io::Read;

use sha2::{Digest, Sha256};

use super::*;
use crate::manifest::{Hooks, MANIFEST_FORMAT};
use crate::signature::TrustedComment;
use crate::{EntryType, FileEntry, KeyId, Manifest, ReleaseId, MANIFEST_PATH};

const CREATED: u64 = 1_000_000;

fn manifest() -> Manifest {
    Manifest {
        format: MANIFEST_FORMAT,
        app: "bot".into(),
        version: "1.0.0".parse().expect("version"),
        channel: "stable".into(),
        created: CREATED,
        source: None,
        schema_version: 0,
        schema_min_compatible: 0,
        hooks: Hooks::default(),
        runtime_paths: Vec::new(),
        probation: false,
        files: vec![
            FileEntry::dir("app"),
            FileEntry::file(
                "app/main.py",
                false,
                3,
                hex::encode(Sha256::digest(b"hi\n")),
            ),
            FileEntry::symlink("app/run", "main.py"),
        ],
    }
}

/// One tar entry as a release has it, with fields a test may spoil.
struct Raw {
    path: &'static str,
    kind: tar::EntryType,
    mode: u32,
    data: Vec<u8>,
    link: &'static str,
    mtime: u64,
    owner: (u64, u64),
}

fn raw(path: &'static str, kind: tar::EntryType, mode: u32, data: &[u8]) -> Raw {
    Raw {
        path,
        kind,
        mode,
        data: data.to_vec(),
        link: "",
        mtime: CREATED,
        owner: (0, 0),
    }
}

/// The entries of [`manifest`], manifest first, as slipway-pack writes them.
fn entries(m: &Manifest) -> Vec<Raw> {
    let mut run = raw("app/run", tar::EntryType::Symlink, 0o777, b"");
    run.link = "main.py";
    vec![
        raw(MANIFEST_PATH, tar::EntryType::Regular, 0o644, &m.to_bytes()),
        raw("app", tar::EntryType::Directory, 0o755, b""),
        raw("app/main.py", tar::EntryType::Regular, 0o644, b"hi\n"),
        run,
    ]
}

fn tar_of(entries: &[Raw]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.set_path(e.path).expect("path");
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_size(e.data.len() as u64);
        h.set_mtime(e.mtime);
        h.set_uid(e.owner.0);
        h.set_gid(e.owner.1);
        if !e.link.is_empty() {
            h.set_link_name(e.link).expect("link");
        }
        h.set_cksum();
        b.append(&h, e.data.as_slice()).expect("append");
    }
    b.into_inner().expect("tar")
}

/// A sink that records what it was handed, and hashes like every sink must.
#[derive(Debug, Default)]
struct Record {
    manifest: Vec<u8>,
    seen: Vec<(usize, Vec<u8>)>,
}

impl EntrySink for Record {
    type Error = EntryError;

    fn manifest(&mut self, bytes: &[u8]) -> Result<(), EntryError> {
        self.manifest = bytes.to_vec();
        Ok(())
    }

    fn entry(
        &mut self,
        index: usize,
        expected: &FileEntry,
        content: &mut impl Read,
    ) -> Result<(), SinkError<EntryError>> {
        let mut bytes = Vec::new();
        content.read_to_end(&mut bytes).map_err(SinkError::Read)?;
        if expected.kind == EntryType::File {
            check_file_digest(expected, &Sha256::digest(&bytes))?;
        }
        self.seen.push((index, bytes));
        Ok(())
    }
}

fn walk(m: &Manifest, entries: &[Raw]) -> Result<Record, EntryError> {
    let mut sink = Record::default();
    entries::walk_entries(
        tar_of(entries).as_slice(),
        m,
        &m.to_bytes(),
        None,
        &mut sink,
    )
    .map_err(|e| match e {
        WalkError::Entry(e) | WalkError::Sink(e) => e,
    })?;
    Ok(sink)
}

#[test]
fn a_release_as_slipway_pack_writes_it_walks_entry_by_entry() {
    let m = manifest();
    let sink = walk(&m, &entries(&m)).expect("walk");
    assert_eq!(sink.manifest, m.to_bytes());
    let seen: Vec<usize> = sink.seen.iter().map(|(i, _)| *i).collect();
    assert_eq!(seen, vec![0, 1, 2]);
    assert_eq!(sink.seen[1].1, b"hi\n");
}

#[test]
fn an_mtime_other_than_created_is_refused() {
    let m = manifest();
    for at in 0..4 {
        let mut e = entries(&m);
        e[at].mtime = CREATED + 1;
        let err = walk(&m, &e).expect_err("mtime");
        assert!(
            matches!(&err, EntryError::MtimeMismatch { path, expected: CREATED, .. } if path == e[at].path),
            "{err:?}"
        );
    }
}

#[test]
fn an_owner_other_than_root_is_refused() {
    let m = manifest();
    for owner in [(1000, 0), (0, 1000)] {
        let mut e = entries(&m);
        e[2].owner = owner;
        let err = walk(&m, &e).expect_err("owner");
        assert!(
            matches!(&err, EntryError::OwnerNotRoot { path, uid, gid } if path == "app/main.py" && (*uid, *gid) == owner),
            "{err:?}"
        );
    }
}

#[test]
fn a_symlink_mode_other_than_0777_is_refused() {
    let m = manifest();
    let mut e = entries(&m);
    e[3].mode = 0o755;
    let err = walk(&m, &e).expect_err("mode");
    assert!(
        matches!(&err, EntryError::ModeMismatch { path, expected: 0o777, found: 0o755 } if path == "app/run"),
        "{err:?}"
    );
}

#[test]
fn a_link_name_on_a_file_is_refused() {
    let m = manifest();
    let mut e = entries(&m);
    e[2].link = "/etc/shadow";
    let err = walk(&m, &e).expect_err("link");
    assert!(
        matches!(&err, EntryError::TargetMismatch { path, found, .. } if path == "app/main.py" && found == "/etc/shadow"),
        "{err:?}"
    );
}

#[test]
fn content_other_than_the_manifests_is_refused_by_the_sinks_digest() {
    let m = manifest();
    let mut e = entries(&m);
    e[2].data = b"ho\n".to_vec();
    let err = walk(&m, &e).expect_err("hash");
    assert!(
        matches!(&err, EntryError::HashMismatch { path, .. } if path == "app/main.py"),
        "{err:?}"
    );
}

#[test]
fn zeros_past_the_budget_are_a_decompression_bomb() {
    let m = manifest();
    // Padding is zeros, but not 4 MiB of them after a release of 3 bytes.
    let mut stream = tar_of(&entries(&m));
    stream.extend(vec![0u8; 4 << 20]);
    let mut sink = Record::default();
    let err = entries::walk_entries(stream.as_slice(), &m, &m.to_bytes(), None, &mut sink)
        .expect_err("bomb");
    assert!(
        matches!(&err, WalkError::Entry(EntryError::DecompressionBomb { near, .. }) if near == "(end of archive)"),
        "{err:?}"
    );
}

fn verified(m: Manifest, archive: &[u8]) -> VerifiedRelease {
    let id = ReleaseId::of_bytes(archive);
    VerifiedRelease {
        base: None,
        id,
        comment: TrustedComment::for_release(&m.app, &m.version.to_string(), &m.channel, &id),
        manifest_bytes: m.to_bytes(),
        manifest: m,
        size: archive.len() as u64,
        signer: KeyId([0; 8]),
        recheck: Recheck::of(archive),
    }
}

fn compressed(tar: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(tar, 3).expect("zstd")
}

#[test]
fn contents_are_checked_from_the_verified_bytes_only() {
    let m = manifest();
    let archive = compressed(&tar_of(&entries(&m)));
    let mut release = verified(m, &archive);
    check_release_contents(archive.as_slice(), &release).expect("same bytes");

    // Bytes other than the verified ones are refused, even when every
    // entry in them checks out.
    release.recheck = Recheck::of(b"the bytes that were verified");
    let err = check_release_contents(archive.as_slice(), &release).expect_err("changed");
    assert!(matches!(err, EntryError::ArchiveChanged), "{err:?}");
}

#[test]
fn the_manifest_entry_is_read_under_a_cap_by_one_reader() {
    let m = manifest();
    let archive = compressed(&tar_of(&entries(&m)));
    assert_eq!(
        read_manifest_entry(archive.as_slice()).expect("manifest"),
        m.to_bytes()
    );
    let mut e = entries(&m);
    e.swap(0, 1);
    let err = read_manifest_entry(compressed(&tar_of(&e)).as_slice()).expect_err("not first");
    assert!(matches!(err, ManifestEntryError::NotFirst { found } if found == "app"));
}

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

/// A delta's pieces: base `v1` (its manifest and its `app/main.py`), the
/// new release `v2` (`app/main.py` with a line appended), and the tar
/// stream of the delta split where frame A ends.
struct DeltaFixture {
    base: Manifest,
    base_bytes: Vec<u8>,
    base_files: BaseFileMap,
    new: Manifest,
    manifest_tar: Vec<u8>,
    rest_tar: Vec<u8>,
}

/// A base release's files by path.
struct BaseFileMap(std::collections::HashMap<String, Vec<u8>>);

impl crate::delta::BaseContents for BaseFileMap {
    fn open_file(&self, entry: &FileEntry) -> std::io::Result<Box<dyn Read + '_>> {
        match self.0.get(&entry.path) {
            Some(bytes) => Ok(Box::new(bytes.as_slice())),
            None => Err(std::io::Error::other("no such file")),
        }
    }
}

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn delta_fixture() -> DeltaFixture {
    let old = pseudo_random(8192);
    let mut new_main = old.clone();
    new_main.extend_from_slice(b"one more line\n");
    let with_main = |content: &[u8], version: &str| {
        let mut m = manifest();
        m.version = version.parse().expect("version");
        m.files[1] = FileEntry::file(
            "app/main.py",
            false,
            content.len() as u64,
            hex::encode(Sha256::digest(content)),
        );
        m
    };
    let base = with_main(&old, "1.0.0");
    let new = with_main(&new_main, "2.0.0");
    let mut e = entries(&new);
    e[2].data = new_main;
    let tar = tar_of(&e);
    let split = 512 + new.to_bytes().len().div_ceil(512) * 512;
    DeltaFixture {
        base_bytes: base.to_bytes(),
        base,
        base_files: BaseFileMap([("app/main.py".to_string(), old)].into_iter().collect()),
        new,
        manifest_tar: tar[..split].to_vec(),
        rest_tar: tar[split..].to_vec(),
    }
}

/// One zstd frame of `data` against `prefix`, as slipway-pack writes a
/// delta's frames.
fn frame(data: &[u8], prefix: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::new();
    let mut e =
        zstd::stream::write::Encoder::with_ref_prefix(&mut out, 3, prefix).expect("encoder");
    e.include_checksum(false).expect("checksum");
    e.set_pledged_src_size(Some(data.len() as u64))
        .expect("size");
    e.window_log(24).expect("window");
    e.long_distance_matching(true).expect("ldm");
    e.write_all(data).expect("compress");
    e.finish().expect("finish");
    out
}

impl DeltaFixture {
    fn delta_base(&self) -> crate::delta::DeltaBase<'_> {
        crate::delta::DeltaBase {
            manifest: &self.base,
            manifest_bytes: &self.base_bytes,
            contents: &self.base_files,
        }
    }

    /// Frame B's honest reference.
    fn reference(&self) -> Vec<u8> {
        self.delta_base().reference(&self.new)
    }

    /// The honest delta.
    fn delta(&self) -> Vec<u8> {
        let mut d = frame(&self.manifest_tar, &self.base_bytes);
        d.extend(frame(&self.rest_tar, &self.reference()));
        d
    }

    fn check(&self, delta: &[u8]) -> Result<(), EntryError> {
        self.check_against(delta, &self.delta_base())
    }

    fn check_against(
        &self,
        delta: &[u8],
        base: &crate::delta::DeltaBase<'_>,
    ) -> Result<(), EntryError> {
        let mut release = verified(self.new.clone(), delta);
        release.base = Some(ReleaseId::of_bytes(b"v1"));
        check_delta_contents(delta, &release, base)
    }
}

#[test]
fn a_delta_decompresses_against_its_base_and_a_changed_file_travels_as_its_change() {
    let f = delta_fixture();
    assert_eq!(f.reference().len(), 8192, "the old app/main.py");
    let delta = f.delta();
    f.check(&delta).expect("the honest delta");
    assert!(
        delta.len() < 1024,
        "a line appended to an 8 KiB random file: {} bytes",
        delta.len()
    );
}

#[test]
fn a_delta_whose_second_frame_was_made_against_another_reference_is_refused() {
    let f = delta_fixture();
    let mut other = f.reference();
    other.extend_from_slice(&[0u8; 64]);
    let mut delta = frame(&f.manifest_tar, &f.base_bytes);
    delta.extend(frame(&f.rest_tar, &other));
    // Wrong bytes for app/main.py, or matches before the reference's start.
    let err = f.check(&delta).expect_err("another reference");
    assert!(
        matches!(&err, EntryError::HashMismatch { path, .. } if path == "app/main.py")
            || matches!(&err, EntryError::Corrupt { .. }),
        "{err:?}"
    );
}

#[test]
fn a_base_file_that_differs_on_the_host_makes_the_delta_refused() {
    let f = delta_fixture();
    let delta = f.delta();
    let mut changed = f.base_files.0.clone();
    if let Some(main) = changed.get_mut("app/main.py") {
        main[100..200].iter_mut().for_each(|b| *b ^= 0x5a);
    }
    let changed = BaseFileMap(changed);
    let base = crate::delta::DeltaBase {
        contents: &changed,
        ..f.delta_base()
    };
    let err = f
        .check_against(&delta, &base)
        .expect_err("a changed base file");
    assert!(
        matches!(&err, EntryError::HashMismatch { path, .. } if path == "app/main.py"),
        "{err:?}"
    );
    // A base file that cannot be read at all: zeros in its place.
    let missing = BaseFileMap(Default::default());
    let base = crate::delta::DeltaBase {
        contents: &missing,
        ..f.delta_base()
    };
    let err = f
        .check_against(&delta, &base)
        .expect_err("a missing base file");
    assert!(
        matches!(&err, EntryError::HashMismatch { path, .. } if path == "app/main.py"),
        "{err:?}"
    );
}

#[test]
fn a_delta_is_exactly_two_frames() {
    let f = delta_fixture();
    let honest = f.delta();
    let after_two = |e: &EntryError| matches!(e, EntryError::Corrupt { reason } if reason.contains("after the delta's second zstd frame"));
    // A third frame, of zeros that would pass for tar padding.
    let mut third = honest.clone();
    third.extend(frame(&[0u8; 1024], b""));
    let err = f.check(&third).expect_err("a third frame");
    assert!(after_two(&err), "{err:?}");
    // Bytes after the second frame.
    let mut trailing = honest.clone();
    trailing.extend_from_slice(b"\0\0\0\0");
    let err = f.check(&trailing).expect_err("trailing bytes");
    assert!(after_two(&err), "{err:?}");
    // One frame holding the whole tar stream: no second frame.
    let whole = [f.manifest_tar.clone(), f.rest_tar.clone()].concat();
    let err = f
        .check(&frame(&whole, &f.base_bytes))
        .expect_err("one frame");
    assert!(matches!(err, EntryError::Corrupt { .. }), "{err:?}");
    // The first frame only.
    let err = f
        .check(&frame(&f.manifest_tar, &f.base_bytes))
        .expect_err("no second frame");
    assert!(matches!(err, EntryError::Corrupt { .. }), "{err:?}");
}

#[test]
fn the_reference_is_the_changed_files_at_the_same_path_in_order_under_a_cap() {
    use crate::delta::{reference_files, DELTA_REFERENCE_MAX};
    let file =
        |path: &str, size: u64, sha: &str| FileEntry::file(path, false, size, sha.repeat(64));
    let mut base = manifest();
    let mut new = manifest();
    let half = DELTA_REFERENCE_MAX / 2;
    base.files = vec![
        file("a", half + 1, "1"),
        file("b", 10, "2"),
        file("c", half, "3"),
        file("d", 5, "4"),
        file("e", 7, "5"),
        FileEntry::dir("f"),
    ];
    new.files = vec![
        file("a", half + 1, "6"),
        // Unchanged: left out of the delta, not in the reference.
        file("b", 10, "2"),
        // Moved content: left out (the base has its digest).
        file("b2", 5, "4"),
        file("c", half, "7"),
        file("d", 6, "8"),
        // A new path.
        file("e2", 1, "9"),
        // A directory in the base.
        file("f", 1, "a"),
    ];
    let paths: Vec<&str> = reference_files(&new, &base)
        .iter()
        .map(|e| e.path.as_str())
        .collect();
    // c would take the total past the cap: the reference stops before it.
    assert_eq!(paths, ["a"]);
    new.files[0] = file("a", half + 1, "1");
    let paths: Vec<&str> = reference_files(&new, &base)
        .iter()
        .map(|e| e.path.as_str())
        .collect();
    assert_eq!(paths, ["c", "d"]);
}

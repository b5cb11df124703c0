//! Every hostile archive of SPEC §6, each its own test. All are signed by a
//! TRUSTED key, so only verification of the manifest and the checked unpack
//! can stop them. Each test asserts the error names the problem and the
//! entry, that nothing anywhere under the temporary root changed (not even a
//! leftover staging directory), that the file the archive aimed at does not
//! exist, and that `slipway-pack verify`, which runs the same checks, refuses
//! the archive too.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod support;

use std::path::Path;

use slipway::stage::{stage_release, StageError};
use slipway::verify::{verify_archive, Expectations, VerifyError};
use slipway_formats::manifest::{ManifestError, Mode};
use slipway_formats::path::PathError;
use slipway_formats::{EntryType, FileEntry, MANIFEST_PATH, MAX_MANIFEST_BYTES};
use support::*;

/// Where a release was stopped.
#[derive(Debug)]
enum Refusal {
    Verify(VerifyError),
    Stage(StageError),
}

impl Refusal {
    fn stage(self) -> StageError {
        match self {
            Refusal::Stage(e) => e,
            Refusal::Verify(e) => panic!("expected a staging refusal, got verify: {e}"),
        }
    }

    fn verify(self) -> VerifyError {
        match self {
            Refusal::Verify(e) => e,
            Refusal::Stage(e) => panic!("expected a verify refusal, got stage: {e}"),
        }
    }
}

/// Builds and signs the archive, then runs verify + stage on it and returns
/// the refusal, after checking that the whole temporary world is exactly as
/// it was before and that no staging directory is left.
fn refuse(world: &TestWorld, builder: &ArchiveBuilder) -> Refusal {
    let built = world.build(builder);
    let before = snapshot(world.root());
    let result = verify_archive(
        &built.archive,
        &built.signature,
        &world.key.trusted(),
        &Expectations {
            id: Some(built.id),
            max_size: Some(built.size),
            ..Expectations::default()
        },
    )
    .map_err(Refusal::Verify)
    .and_then(|mut verified| {
        stage_release(&mut verified, &world.releases()).map_err(Refusal::Stage)
    });
    let after = snapshot(world.root());
    assert_eq!(before, after, "the refused archive changed the file system");
    assert!(world.staging_dirs().is_empty());
    // `slipway-pack verify` runs the same checks on the same bytes, so it
    // refuses every archive a host refuses.
    if let Ok(verified) = slipway_pack::verify::verify_archive(&built.archive, &world.key.trusted())
    {
        panic!(
            "slipway-pack verify accepted an archive slipway refused: {}",
            verified.path.display()
        );
    }
    match result {
        Ok(dir) => panic!("hostile archive was staged at {}", dir.display()),
        Err(refusal) => refusal,
    }
}

fn says(err: &impl std::fmt::Display, words: &[&str]) {
    let text = err.to_string();
    for w in words {
        assert!(text.contains(w), "{w:?} not in: {text}");
    }
}

fn absent(path: &Path) {
    assert!(
        std::fs::symlink_metadata(path).is_err(),
        "{} was created",
        path.display()
    );
}

/// The usual victim: a small release with `app/main.py`.
fn base() -> ArchiveBuilder {
    valid_release(
        "bot",
        "1.0.0",
        &[
            ("app/main.py", file(b"print(1)\n")),
            ("app/zeta.py", file(b"z\n")),
        ],
    )
}

fn sorted(files: &mut [FileEntry]) {
    files.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
}

#[test]
fn parent_dir_path_is_refused() {
    let world = TestWorld::new();
    // Stage level: a benign manifest and a tar entry that climbs out.
    let mut b = base();
    b.insert_after("app", RawEntry::file("app/../../x", b"pwned"));
    let err = refuse(&world, &b).stage();
    assert!(
        matches!(&err, StageError::BadPath { source: PathError::ParentDir(p), .. } if p == "app/../../x"),
        "{err:?}"
    );
    says(&err, &["app/../../x", "'..'"]);
    absent(&world.releases().join("x"));
    absent(&world.root().join("host/x"));

    // Manifest level: the signed manifest itself lists the path.
    let mut b = base();
    b.manifest
        .files
        .push(FileEntry::file("app/../../x", false, 5, "0".repeat(64)));
    sorted(&mut b.manifest.files);
    let err = refuse(&world, &b).verify();
    assert!(
        matches!(&err, VerifyError::Manifest { source: ManifestError::Path(PathError::ParentDir(p)), .. } if p == "app/../../x"),
        "{err:?}"
    );
}

#[test]
fn absolute_path_is_refused() {
    let world = TestWorld::new();
    let target = world.outside().join("pwned");
    let mut b = base();
    b.insert_after(
        "app/main.py",
        RawEntry::file(target.to_str().unwrap(), b"pwned"),
    );
    let err = refuse(&world, &b).stage();
    assert!(
        matches!(&err, StageError::BadPath { source: PathError::Absolute(p), .. } if Path::new(p) == target),
        "{err:?}"
    );
    says(&err, &["absolute", target.to_str().unwrap()]);
    absent(&target);
}

#[test]
fn symlink_out_of_release_is_refused() {
    let world = TestWorld::new();
    let escape = "../../../outside";

    // Stage level: the manifest's link is benign, the tar entry's is not.
    let mut b = valid_release(
        "bot",
        "1.0.0",
        &[
            ("app/main.py", file(b"print(1)\n")),
            ("app/l", symlink("main.py")),
        ],
    );
    b.entry_mut("app/l").link = escape.as_bytes().to_vec();
    let err = refuse(&world, &b).stage();
    match &err {
        StageError::TargetMismatch {
            path,
            expected,
            found,
            ..
        } => {
            assert_eq!(path, "app/l");
            assert_eq!(expected, "main.py");
            assert_eq!(found, escape);
        }
        other => panic!("{other:?}"),
    }
    says(&err, &["app/l", escape]);

    // Manifest level: the signed manifest lists the escaping link.
    let mut b = valid_release("bot", "1.0.0", &[("app/l", symlink("x"))]);
    b.manifest.files[1] = FileEntry::symlink("app/l", escape);
    b.entry_mut("app/l").link = escape.as_bytes().to_vec();
    let err = refuse(&world, &b).verify();
    assert!(
        matches!(&err, VerifyError::Manifest { source: ManifestError::Path(PathError::TargetEscapes { link, .. }), .. } if link == "app/l"),
        "{err:?}"
    );
    says(&err, &["app/l", "leaves the release"]);
}

#[test]
fn file_through_symlink_is_refused() {
    let world = TestWorld::new();

    // A link to "." then a file "through" it, not in the manifest.
    let mut b = valid_release(
        "bot",
        "1.0.0",
        &[
            ("app/l", symlink(".")),
            ("app/main.py", file(b"print(1)\n")),
        ],
    );
    b.insert_after("app/l", RawEntry::file("app/l/x", b"through"));
    let err = refuse(&world, &b).stage();
    assert!(
        matches!(&err, StageError::NotInManifest { path, .. } if path == "app/l/x"),
        "{err:?}"
    );

    // The manifest lists a directory; the tar makes it a symlink out of the
    // release and then writes a file under it.
    let mut b = valid_release("bot", "1.0.0", &[("app/sub/x", file(b"through"))]);
    let i = b.position("app/sub");
    b.entries[i] = RawEntry::symlink("app/sub", "../../../outside");
    let err = refuse(&world, &b).stage();
    match &err {
        StageError::TypeMismatch {
            path,
            expected,
            found,
            ..
        } => {
            assert_eq!(path, "app/sub");
            assert_eq!(*expected, EntryType::Dir);
            assert_eq!(found, "symlink");
        }
        other => panic!("{other:?}"),
    }
    says(&err, &["app/sub", "symlink", "dir"]);
    absent(&world.outside().join("x"));

    // Manifest level: an entry under a symlink.
    let mut b = valid_release("bot", "1.0.0", &[("app/l", symlink(".."))]);
    b.manifest
        .files
        .push(FileEntry::file("app/l/x", false, 7, "0".repeat(64)));
    sorted(&mut b.manifest.files);
    let err = refuse(&world, &b).verify();
    assert!(
        matches!(&err, VerifyError::Manifest { source: ManifestError::Entry { path, reason }, .. } if path == "app/l/x" && reason.contains("symlink")),
        "{err:?}"
    );
}

#[test]
fn hardlink_is_refused() {
    let world = TestWorld::new();
    for target in ["app/main.py", "/etc/passwd"] {
        let mut b = base();
        // The manifest says app/zeta.py is a file; the tar makes it a link.
        *b.entry_mut("app/zeta.py") = RawEntry::new("app/zeta.py", flag::HARDLINK, 0o644)
            .link(target)
            .header_size(0);
        let err = refuse(&world, &b).stage();
        assert!(
            matches!(&err, StageError::ForbiddenType { path, kind, .. } if path == "app/zeta.py" && kind == "hard link"),
            "{err:?}"
        );
        says(&err, &["app/zeta.py", "hard link"]);
    }
}

#[test]
fn device_node_is_refused() {
    let world = TestWorld::new();
    for (type_flag, kind) in [
        (flag::CHAR, "character device"),
        (flag::BLOCK, "block device"),
    ] {
        let mut b = base();
        *b.entry_mut("app/zeta.py") = RawEntry::new("app/zeta.py", type_flag, 0o644).header_size(0);
        let err = refuse(&world, &b).stage();
        assert!(
            matches!(&err, StageError::ForbiddenType { path, kind: k, .. } if path == "app/zeta.py" && k == kind),
            "{err:?}"
        );
        says(&err, &["app/zeta.py", kind]);
    }
}

#[test]
fn fifo_is_refused() {
    let world = TestWorld::new();
    let mut b = base();
    b.insert_after("app/main.py", RawEntry::new("app/pipe", flag::FIFO, 0o644));
    let err = refuse(&world, &b).stage();
    assert!(
        matches!(&err, StageError::ForbiddenType { path, kind, .. } if path == "app/pipe" && kind == "FIFO"),
        "{err:?}"
    );
    says(&err, &["app/pipe", "FIFO"]);
}

#[test]
fn other_entry_types_are_refused() {
    let world = TestWorld::new();
    for (type_flag, kind) in [
        (flag::CONTIGUOUS, "contiguous file"),
        (flag::PAX_GLOBAL, "PAX global header"),
        (b'Z', "unknown type 'Z'"),
    ] {
        let mut b = base();
        b.insert_after(
            "app/main.py",
            RawEntry::new("app/odd", type_flag, 0o644).body(Body::Bytes(b"path=/etc\n".to_vec())),
        );
        let err = refuse(&world, &b).stage();
        assert!(
            matches!(&err, StageError::ForbiddenType { path, kind: k, .. } if path == "app/odd" && k == kind),
            "{kind}: {err:?}"
        );
    }
    // PAX-format sparse files are regular files with GNU.sparse records.
    let mut b = base();
    let e = b.entry_mut("app/zeta.py");
    e.pax.push(("GNU.sparse.major".into(), b"1".to_vec()));
    e.pax.push(("GNU.sparse.minor".into(), b"0".to_vec()));
    let err = refuse(&world, &b).stage();
    assert!(
        matches!(&err, StageError::ForbiddenType { path, kind, .. } if path == "app/zeta.py" && kind.contains("sparse")),
        "{err:?}"
    );
}

#[test]
fn gnu_sparse_entry_is_refused() {
    let world = TestWorld::new();
    let mut b = base();
    // An old-GNU sparse header with no sparse map: the type alone refuses it.
    let mut e =
        RawEntry::new("app/zeta.py", flag::GNU_SPARSE, 0o644).body(Body::Bytes(b"z\n".to_vec()));
    e.header_size = Some(2);
    *b.entry_mut("app/zeta.py") = e;
    let err = refuse(&world, &b).stage();
    // The tar crate only expands sparse entries in GNU-format headers; in a
    // ustar header it reports the type as is, and either way it is refused.
    match &err {
        StageError::ForbiddenType { path, kind, .. } => {
            assert_eq!(path, "app/zeta.py");
            assert_eq!(kind, "GNU sparse file");
        }
        StageError::Corrupt { reason, .. } => assert!(reason.contains("sparse"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn duplicate_entry_is_refused() {
    let world = TestWorld::new();
    let mut b = base();
    b.insert_after("app/main.py", RawEntry::file("app/main.py", b"print(2)\n"));
    let err = refuse(&world, &b).stage();
    assert!(
        matches!(&err, StageError::Duplicate { path, .. } if path == "app/main.py"),
        "{err:?}"
    );
    says(&err, &["app/main.py", "twice"]);

    // A second manifest entry at the end.
    let mut b = base();
    b.entries.push(RawEntry::file(MANIFEST_PATH, b"{}"));
    let err = refuse(&world, &b).stage();
    assert!(
        matches!(&err, StageError::Duplicate { path, .. } if path == MANIFEST_PATH),
        "{err:?}"
    );

    // A directory listed twice.
    let mut b = base();
    b.entries.push(RawEntry::dir("app"));
    let err = refuse(&world, &b).stage();
    assert!(
        matches!(&err, StageError::Duplicate { path, .. } if path == "app"),
        "{err:?}"
    );
}

#[test]
fn file_not_in_manifest_is_refused() {
    let world = TestWorld::new();
    // In the middle, and at the end.
    for after in ["app/main.py", "app/zeta.py"] {
        let mut b = base();
        b.insert_after(after, RawEntry::file("app/notlisted.py", b"evil\n"));
        let err = refuse(&world, &b).stage();
        assert!(
            matches!(&err, StageError::NotInManifest { path, .. } if path == "app/notlisted.py"),
            "{err:?}"
        );
        says(&err, &["app/notlisted.py", "not in the manifest"]);
    }
    // Outside the payload roots.
    let mut b = base();
    b.entries.push(RawEntry::dir("zzz"));
    let err = refuse(&world, &b).stage();
    assert!(
        matches!(&err, StageError::NotInManifest { path, .. } if path == "zzz"),
        "{err:?}"
    );
}

#[test]
fn missing_file_is_refused() {
    let world = TestWorld::new();
    // In the middle (the next entry arrives instead), and at the end.
    for path in ["app/main.py", "app/zeta.py"] {
        let mut b = base();
        b.remove_entry(path);
        let err = refuse(&world, &b).stage();
        assert!(
            matches!(&err, StageError::Missing { path: p, .. } if p == path),
            "{err:?}"
        );
        says(&err, &[path, "does not have it"]);
    }
}

#[test]
fn size_mismatch_is_refused() {
    let world = TestWorld::new();
    let mut b = base();
    b.entry_mut("app/main.py").body = Body::Bytes(b"print(12345)\n".to_vec());
    let err = refuse(&world, &b).stage();
    match &err {
        StageError::SizeMismatch {
            path,
            expected,
            found,
            ..
        } => {
            assert_eq!(path, "app/main.py");
            assert_eq!((*expected, *found), (9, 13));
        }
        other => panic!("{other:?}"),
    }
    says(&err, &["app/main.py", "13 bytes", "9"]);

    // A directory entry carrying data.
    let mut b = base();
    b.entry_mut("app").body = Body::Bytes(b"hidden".to_vec());
    let err = refuse(&world, &b).stage();
    assert!(
        matches!(&err, StageError::SizeMismatch { path, expected: 0, found: 6, .. } if path == "app"),
        "{err:?}"
    );
}

#[test]
fn hash_mismatch_is_refused() {
    let world = TestWorld::new();
    let mut b = base();
    b.entry_mut("app/main.py").body = Body::Bytes(b"print(2)\n".to_vec());
    let expected_hash = Body::Bytes(b"print(1)\n".to_vec()).sha256();
    let err = refuse(&world, &b).stage();
    match &err {
        StageError::HashMismatch {
            path,
            expected,
            found,
            ..
        } => {
            assert_eq!(path, "app/main.py");
            assert_eq!(expected, &expected_hash);
            assert_eq!(found, &Body::Bytes(b"print(2)\n".to_vec()).sha256());
        }
        other => panic!("{other:?}"),
    }
    says(&err, &["app/main.py", "sha256", &expected_hash]);
}

#[test]
fn setuid_mode_is_refused() {
    let world = TestWorld::new();
    for (mode, what) in [(0o4755, "setuid"), (0o2755, "setgid"), (0o1755, "sticky")] {
        let mut b = base();
        b.entry_mut("app/main.py").mode = mode;
        let err = refuse(&world, &b).stage();
        assert!(
            matches!(&err, StageError::ForbiddenMode { path, what: w, .. } if path == "app/main.py" && *w == what),
            "{err:?}"
        );
        says(&err, &["app/main.py", what, &format!("{mode:04o}")]);
    }
    // Even on a symlink, whose other permission bits mean nothing.
    let mut b = valid_release("bot", "1.0.0", &[("app/l", symlink("x"))]);
    b.entry_mut("app/l").mode = 0o4777;
    let err = refuse(&world, &b).stage();
    assert!(
        matches!(&err, StageError::ForbiddenMode { what: "setuid", .. }),
        "{err:?}"
    );
    // Manifest level.
    let mut b = base();
    b.manifest.files[1].mode = Mode(0o4755);
    let err = refuse(&world, &b).verify();
    assert!(
        matches!(&err, VerifyError::Manifest { source: ManifestError::Entry { path, .. }, .. } if path == "app/main.py"),
        "{err:?}"
    );
    says(&err, &["setuid"]);
}

#[test]
fn mtime_other_than_the_manifests_created_is_refused() {
    let world = TestWorld::new();
    for path in [MANIFEST_PATH, "app", "app/main.py"] {
        let mut b = base();
        b.entry_mut(path).mtime = 1_700_000_000;
        let err = refuse(&world, &b).stage();
        assert!(
            matches!(&err, StageError::MtimeMismatch { path: p, expected: 0, found: 1_700_000_000, .. } if p == path),
            "{err:?}"
        );
        says(&err, &[path, "1700000000", "created"]);
    }
}

#[test]
fn owner_other_than_root_is_refused() {
    let world = TestWorld::new();
    for (path, owner) in [
        ("app/main.py", (1000, 0)),
        ("app", (0, 1000)),
        (MANIFEST_PATH, (1000, 1000)),
    ] {
        let mut b = base();
        b.entry_mut(path).owner = owner;
        let err = refuse(&world, &b).stage();
        assert!(
            matches!(&err, StageError::OwnerNotRoot { path: p, uid, gid, .. } if p == path && (*uid, *gid) == owner),
            "{err:?}"
        );
        says(&err, &[path, "uid"]);
    }
}

#[test]
fn world_writable_mode_is_refused() {
    let world = TestWorld::new();
    for (path, mode, what) in [
        ("app/main.py", 0o666, "world-writable"),
        ("app/main.py", 0o664, "group-writable"),
        ("app", 0o777, "world-writable"),
    ] {
        let mut b = base();
        b.entry_mut(path).mode = mode;
        let err = refuse(&world, &b).stage();
        assert!(
            matches!(&err, StageError::ForbiddenMode { path: p, what: w, .. } if p == path && *w == what),
            "{err:?}"
        );
        says(&err, &[path, what]);
    }
    // A mode that is merely different from the manifest's.
    let mut b = base();
    b.entry_mut("app/main.py").mode = 0o755;
    let err = refuse(&world, &b).stage();
    assert!(
        matches!(&err, StageError::ModeMismatch { path, expected: 0o644, found: 0o755, .. } if path == "app/main.py"),
        "{err:?}"
    );
}

#[test]
fn type_mismatch_is_refused() {
    let world = TestWorld::new();
    let mut b = base();
    *b.entry_mut("app/zeta.py") = RawEntry::dir("app/zeta.py");
    let err = refuse(&world, &b).stage();
    assert!(
        matches!(&err, StageError::TypeMismatch { path, expected: EntryType::File, found, .. } if path == "app/zeta.py" && found == "dir"),
        "{err:?}"
    );
}

#[test]
fn decompression_bomb_is_refused() {
    let world = TestWorld::new();

    // A GNU long-name record of 256 MiB of zeros: the tar reader would
    // buffer it whole; the budget stops it after a few KiB.
    let mut b = base();
    let bomb =
        RawEntry::new("././@LongLink", flag::GNU_LONGNAME, 0o644).body(Body::Zeros(256 << 20));
    let i = b.position("app/main.py");
    b.entries.insert(i, bomb);
    let err = refuse(&world, &b).stage();
    assert!(
        matches!(&err, StageError::DecompressionBomb { near, .. } if near == "app"),
        "{err:?}"
    );
    says(&err, &["decompression bomb"]);

    // The same as a PAX extended header.
    let mut b = base();
    let i = b.position("app/main.py");
    b.entries.insert(
        i,
        RawEntry::new("PaxHeaders/x", flag::PAX_LOCAL, 0o644).body(Body::Zeros(256 << 20)),
    );
    let err = refuse(&world, &b).stage();
    assert!(
        matches!(&err, StageError::DecompressionBomb { .. }),
        "{err:?}"
    );

    // Zeros after the end of the archive, far past the manifest's total.
    let mut b = base();
    b.trailer = Some(Body::Zeros(256 << 20));
    let err = refuse(&world, &b).stage();
    assert!(
        matches!(&err, StageError::DecompressionBomb { .. }),
        "{err:?}"
    );

    // A header that claims more than the manifest says: refused before a
    // byte of it is read.
    let mut b = base();
    *b.entry_mut("app/main.py") = RawEntry::file("app/main.py", b"")
        .body(Body::Zeros(64 << 20))
        .header_size(64 << 20);
    let err = refuse(&world, &b).stage();
    assert!(
        matches!(&err, StageError::SizeMismatch { path, expected: 9, found, .. } if path == "app/main.py" && *found == 64 << 20),
        "{err:?}"
    );
}

#[test]
fn trailing_garbage_is_refused() {
    let world = TestWorld::new();
    let mut b = base();
    b.trailer = Some(Body::Bytes(b"\0\0\0hidden payload".to_vec()));
    let err = refuse(&world, &b).stage();
    assert!(matches!(&err, StageError::TrailingData { .. }), "{err:?}");
}

#[test]
fn oversized_manifest_is_refused() {
    let world = TestWorld::new();
    let mut b = base();
    b.manifest_entry =
        Some(RawEntry::file(MANIFEST_PATH, b"").body(Body::Zeros(MAX_MANIFEST_BYTES + 1)));
    let err = refuse(&world, &b).verify();
    assert!(
        matches!(&err, VerifyError::ManifestTooLarge { size, .. } if *size == MAX_MANIFEST_BYTES + 1),
        "{err:?}"
    );
    says(&err, &[MANIFEST_PATH, "limit"]);

    // A long-name record in front of the manifest cannot make verify buffer
    // more than the manifest limit either.
    let mut b = base();
    b.before_manifest.push(
        RawEntry::new("././@LongLink", flag::GNU_LONGNAME, 0o644)
            .body(Body::Zeros(MAX_MANIFEST_BYTES * 2)),
    );
    let err = refuse(&world, &b).verify();
    assert!(
        matches!(&err, VerifyError::Corrupt { reason, .. } if reason.contains("limit")),
        "{err:?}"
    );
}

#[test]
fn first_entry_not_manifest_is_refused() {
    let world = TestWorld::new();
    let mut b = base();
    b.before_manifest.push(RawEntry::dir("app"));
    let err = refuse(&world, &b).verify();
    assert!(
        matches!(&err, VerifyError::ManifestNotFirst { found, .. } if found == "app"),
        "{err:?}"
    );
    says(&err, &["app", MANIFEST_PATH]);

    // The manifest as a symlink (to a file the attacker controls).
    let mut b = base();
    b.manifest_entry = Some(RawEntry::symlink(MANIFEST_PATH, "../app/main.py"));
    let err = refuse(&world, &b).verify();
    assert!(
        matches!(&err, VerifyError::ManifestNotFile { kind, .. } if kind == "symlink"),
        "{err:?}"
    );

    // No entries at all.
    let mut b = base();
    b.manifest_entry = Some(RawEntry::dir("app"));
    b.entries.clear();
    let err = refuse(&world, &b).verify();
    assert!(
        matches!(&err, VerifyError::ManifestNotFirst { .. }),
        "{err:?}"
    );
}

#[test]
fn non_utf8_and_nul_paths_are_refused() {
    let world = TestWorld::new();
    let mut b = base();
    b.insert_after("app/main.py", RawEntry::file(b"app/\xff\xfe.py", b"x"));
    let err = refuse(&world, &b).stage();
    assert!(matches!(&err, StageError::NonUtf8Path { .. }), "{err:?}");

    // A NUL inside a PAX path (a ustar name cannot hold one).
    let mut b = base();
    b.insert_after(
        "app/main.py",
        RawEntry::file("app/nul", b"x").pax("path", b"app/nul\0/../../x"),
    );
    let err = refuse(&world, &b).stage();
    assert!(
        matches!(
            &err,
            StageError::BadPath {
                source: PathError::Nul(_),
                ..
            }
        ),
        "{err:?}"
    );

    // An overlong path.
    let long = format!("app/{}", "a/".repeat(600));
    let mut b = base();
    b.insert_after("app/main.py", RawEntry::file(&long, b"x"));
    let err = refuse(&world, &b).stage();
    assert!(
        matches!(
            &err,
            StageError::BadPath {
                source: PathError::TooLong { .. } | PathError::EmptyComponent(_),
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn pax_path_override_cannot_smuggle_a_path() {
    // The ustar name says app/zeta.py; the PAX record (which wins) says
    // app/../../x. The entry is judged by the name that would be written.
    let world = TestWorld::new();
    let mut b = base();
    b.entry_mut("app/zeta.py")
        .pax
        .push(("path".into(), b"app/../../x".to_vec()));
    let err = refuse(&world, &b).stage();
    assert!(
        matches!(&err, StageError::BadPath { source: PathError::ParentDir(p), .. } if p == "app/../../x"),
        "{err:?}"
    );
    absent(&world.releases().join("x"));
}

#[test]
fn zstd_window_beyond_the_limit_is_refused() {
    let world = TestWorld::new();
    let mut b = valid_release(
        "bot",
        "1.0.0",
        &[(
            "app/big.bin",
            Item::Generated {
                seed: 7,
                len: 4 << 20,
            },
        )],
    );
    b.window_log = Some(28);
    let err = refuse(&world, &b).verify();
    assert!(
        matches!(&err, VerifyError::WindowTooLarge { .. }),
        "{err:?}"
    );
    says(&err, &["window", "2^27"]);
}

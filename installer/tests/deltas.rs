//! Deltas between releases (docs/formats.md, "Delta archives"): a host
//! that runs the release a listed delta starts from fetches the delta
//! instead of the full archive; any other host, and any delta that does
//! not hold, gets the full archive; a delta installed directly from a file
//! is authenticated on its own and refused like a hostile archive.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod bot_host;

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use bot_host::{Flavor, Release, TestHost};
use sha2::{Digest, Sha256};
use slipway_e2e::Nginx;
use slipway_formats::channel::ChannelDelta;
use slipway_formats::delta::{delta_file_name, delta_rel_path, reference_files};
use slipway_formats::signature::TrustedComment;
use slipway_formats::{ChannelIndex, Manifest, ReleaseId};
use slipway_pack::{sign_channel_index, SigningKey};

/// A megabyte of vendored bytes that no version changes.
const VENDORED: usize = 1024 * 1024;

/// The pseudo-random part of `app/bot/model.bin`.
const MODEL: usize = 200 * 1024;

fn flavor() -> Flavor {
    Flavor {
        vendored: Some(VENDORED),
        model: Some((MODEL, String::new())),
        ..Flavor::default()
    }
}

/// [`flavor`] with a line appended to `app/bot/model.bin`.
fn model_changed() -> Flavor {
    Flavor {
        model: Some((MODEL, "one more line\n".into())),
        ..flavor()
    }
}

fn id(r: &Release) -> ReleaseId {
    r.id.parse().expect("release id")
}

/// A host updating from nginx, running v1.
fn http_host() -> (TestHost, Nginx, Release) {
    let host = TestHost::new(&[]);
    fs::create_dir_all(host.repo()).expect("repo dir");
    let nginx = Nginx::serve(host.repo()).expect("nginx");
    host.write_config(&[("update", &format!("source = \"{}\"", nginx.base_url()))]);
    let v1 = host.release("1.0.0", &flavor());
    let o = host.json(&["update"], 0);
    assert_eq!(o["result"], "updated", "{o}");
    host.wait_healthy("1.0.0");
    (host, nginx, v1)
}

/// Bytes nginx sent for `uri`, over all requests.
fn served(nginx: &Nginx, uri: &str) -> u64 {
    nginx
        .access_log_entries()
        .expect("access log")
        .iter()
        .filter(|e| e.uri == uri)
        .map(|e| e.body_bytes)
        .sum()
}

fn archive_uri(r: &Release) -> String {
    format!("/releases/{}", id(r).archive_file_name())
}

fn delta_uri(from: &Release, to: &Release) -> String {
    format!("/{}", delta_rel_path(&id(from), &id(to)))
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `slipway -v update` to 2.0.0, which must take the delta and come up
/// healthy.
fn update_by_the_delta(host: &TestHost) {
    let out = host.run_expect(&["-v", "update"], 0);
    let err = stderr(&out);
    assert!(
        err.contains("using the delta from the running release"),
        "{err}"
    );
    host.wait_healthy("2.0.0");
}

#[test]
fn an_update_over_http_takes_the_delta_and_the_release_verifies_clean() {
    let (host, nginx, v1) = http_host();
    let v2 = host.release("2.0.0", &flavor());
    update_by_the_delta(&host);
    assert_eq!(host.link("current"), Some(v2.dir_name()));

    let full = fs::metadata(&v2.archive).expect("archive").len();
    let delta = served(&nginx, &delta_uri(&v1, &v2));
    eprintln!("v1 -> v2: delta {delta} bytes over the wire, full archive {full} bytes");
    assert!(delta > 0, "the delta was fetched");
    assert!(
        delta * 20 < full,
        "the delta ({delta} bytes) is far below the full archive ({full} bytes)"
    );
    assert_eq!(
        served(&nginx, &archive_uri(&v2)),
        0,
        "the full archive was not fetched"
    );
    host.run_expect(&["verify"], 0);
    assert!(
        fs::read_dir(host.root().join("downloads"))
            .expect("downloads")
            .next()
            .is_none(),
        "the delta is removed once the release is staged"
    );
}

#[test]
fn a_line_appended_to_a_large_file_travels_as_a_few_hundred_bytes() {
    let (host, nginx, v1) = http_host();
    let v2 = host.release("2.0.0", &model_changed());
    update_by_the_delta(&host);
    let delta_path = host.repo().join(delta_rel_path(&id(&v1), &id(&v2)));
    let carried: Vec<String> = delta_entries(&delta_path, &base_of(&v1))
        .into_iter()
        .filter(|(_, h, _)| h.entry_type() == tar::EntryType::Regular)
        .map(|(p, _, _)| p)
        .collect();
    assert_eq!(
        carried,
        ["slipway/manifest.json", "app/bot/model.bin"],
        "the changed file travels in the delta"
    );
    let delta = served(&nginx, &delta_uri(&v1, &v2));
    eprintln!("a line appended to a {MODEL}-byte file: a delta of {delta} bytes");
    assert!(delta > 0, "the delta was fetched");
    assert!(
        delta < 1_000,
        "the delta ({delta} bytes) holds the line, not the {MODEL}-byte file"
    );
    assert_eq!(
        fs::read(host.root().join("current/app/bot/model.bin"))
            .expect("model")
            .len(),
        MODEL + "one more line\n".len()
    );
    host.run_expect(&["verify"], 0);
}

#[test]
fn a_base_file_changed_on_the_host_refuses_the_delta_and_the_full_archive_lands() {
    use std::os::unix::fs::PermissionsExt;
    let (host, nginx, v1) = http_host();
    let v2 = host.release("2.0.0", &model_changed());
    // v1's model.bin, which the delta's second frame is decompressed
    // against, changes on the host (same size).
    let model = host.root().join("current/app/bot/model.bin");
    let mut bytes = fs::read(&model).expect("model");
    for b in &mut bytes[1000..1100] {
        *b ^= 0x5a;
    }
    fs::set_permissions(&model, fs::Permissions::from_mode(0o644)).expect("chmod");
    fs::write(&model, &bytes).expect("change model.bin");
    // --force: the clean-tree rule would hold any update back from a
    // running release that changed.
    let out = host.run_expect(&["-v", "update", "--force"], 0);
    let err = stderr(&out);
    assert!(err.contains("delta"), "{err}");
    assert!(err.contains("taking the full archive instead"), "{err}");
    assert!(
        err.contains("app/bot/model.bin"),
        "the refusal names the file: {err}"
    );
    host.wait_healthy("2.0.0");
    assert_eq!(host.link("current"), Some(v2.dir_name()));
    assert!(served(&nginx, &archive_uri(&v2)) > 0, "the full archive");
    assert!(
        served(&nginx, &delta_uri(&v1, &v2)) > 0,
        "the delta was tried"
    );
    host.run_expect(&["verify"], 0);
}

#[test]
fn a_delta_from_another_release_is_not_used() {
    let (host, nginx, _v1) = http_host();
    let v2 = host.release("2.0.0", &flavor());
    let v3 = host.build("3.0.0", &flavor());
    // v3 lists only the delta from v2; this host runs v1.
    host.publish_with(&v3, &["--deltas", "1"]);
    let out = host.run_expect(&["-v", "update"], 0);
    assert!(
        !stderr(&out).contains("using the delta"),
        "{}",
        stderr(&out)
    );
    host.wait_healthy("3.0.0");
    assert_eq!(host.link("current"), Some(v3.dir_name()));
    assert_eq!(served(&nginx, &delta_uri(&v2, &v3)), 0);
    assert!(served(&nginx, &archive_uri(&v3)) > 0, "the full archive");
    host.run_expect(&["verify"], 0);
}

/// The index entry of `to` lists `delta_file` (with its signature beside
/// it) as the delta from `from`, re-signed by the publisher's key.
fn list_delta(host: &TestHost, from: &Release, to: &Release, bytes: &[u8], sig: &str) {
    let rel = delta_rel_path(&id(from), &id(to));
    let path = host.repo().join(&rel);
    fs::create_dir_all(path.parent().expect("deltas dir")).expect("deltas dir");
    fs::write(&path, bytes).expect("write delta");
    fs::write(host.repo().join(format!("{rel}.minisig")), sig).expect("write signature");
    let index_path = host.repo().join("channels/stable.json");
    let mut index = ChannelIndex::parse(&fs::read(&index_path).expect("index")).expect("index");
    let entry = index
        .releases
        .iter_mut()
        .find(|r| r.id == id(to))
        .expect("listed");
    entry.deltas = vec![ChannelDelta {
        from: id(from),
        size: bytes.len() as u64,
        sha256: ReleaseId::of_bytes(bytes),
    }];
    index.version += 1;
    let key = signing_key(host);
    let sig = sign_channel_index(&key, &index).expect("sign index");
    fs::write(&index_path, index.to_bytes()).expect("write index");
    fs::write(host.repo().join("channels/stable.json.minisig"), sig).expect("write sig");
}

fn signing_key(host: &TestHost) -> SigningKey {
    SigningKey::load(&host.path("keys/slipway.key"), None).expect("key")
}

/// One tar entry: (path, header, data).
type Entry = (String, tar::Header, Vec<u8>);

/// The entries of a tar stream.
fn entries_in(tar: &[u8]) -> Vec<Entry> {
    let mut tar = tar::Archive::new(tar);
    tar.entries()
        .expect("entries")
        .map(|e| {
            let mut e = e.expect("entry");
            let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let header = e.header().clone();
            let mut data = Vec::new();
            e.read_to_end(&mut data).expect("read");
            (path, header, data)
        })
        .collect()
}

/// The entries of a release archive.
fn entries_of(archive: &Path) -> Vec<Entry> {
    entries_in(&zstd::decode_all(fs::File::open(archive).expect("open")).expect("zstd"))
}

/// What a delta is decompressed against: a release's manifest, as parsed
/// and byte for byte, and its files' contents by path.
struct Base {
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    files: HashMap<String, Vec<u8>>,
}

fn base_of(r: &Release) -> Base {
    let mut files: HashMap<String, Vec<u8>> = entries_of(&r.archive)
        .into_iter()
        .map(|(path, _, data)| (path, data))
        .collect();
    let manifest_bytes = files.remove("slipway/manifest.json").expect("manifest");
    Base {
        manifest: Manifest::parse(&manifest_bytes).expect("manifest"),
        manifest_bytes,
        files,
    }
}

impl Base {
    /// The reference of the second frame of a delta from this release to
    /// the one whose manifest is `new`.
    fn reference(&self, new: &Manifest) -> Vec<u8> {
        reference_files(new, &self.manifest)
            .iter()
            .flat_map(|e| self.files[&e.path].clone())
            .collect()
    }
}

/// One zstd frame compressed against `prefix`.
fn unzstd(frame: &[u8], prefix: &[u8]) -> Vec<u8> {
    let mut decoder = zstd::stream::read::Decoder::with_ref_prefix(frame, prefix)
        .expect("decoder")
        .single_frame();
    let mut out = Vec::new();
    decoder.read_to_end(&mut out).expect("frame");
    out
}

/// The tar stream of a delta from `base`: its two frames, decompressed.
fn delta_tar(delta: &[u8], base: &Base) -> Vec<u8> {
    let split = zstd::zstd_safe::find_frame_compressed_size(delta).expect("frame A");
    let mut tar = unzstd(&delta[..split], &base.manifest_bytes);
    let (path, _, manifest) = entries_in(&tar).remove(0);
    assert_eq!(path, "slipway/manifest.json");
    let manifest = Manifest::parse(&manifest).expect("manifest");
    tar.extend(unzstd(&delta[split..], &base.reference(&manifest)));
    tar
}

/// The entries of the delta file `delta` from `base`.
fn delta_entries(delta: &Path, base: &Base) -> Vec<Entry> {
    entries_in(&delta_tar(&fs::read(delta).expect("delta"), base))
}

/// A delta from `base` holding `entries` (the first the manifest), as
/// `slipway-pack delta` compresses one.
fn pack(entries: &[Entry], base: &Base) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, header, data) in entries {
        let mut h = header.clone();
        b.append_data(&mut h, path, data.as_slice())
            .expect("append");
    }
    let tar = b.into_inner().expect("tar");
    let (_, _, manifest) = &entries[0];
    let split = 512 + manifest.len().div_ceil(512) * 512;
    let manifest = Manifest::parse(manifest).expect("manifest");
    slipway_pack::delta::compress_delta(
        &tar[..split],
        &tar[split..],
        &base.manifest_bytes,
        &base.reference(&manifest),
    )
    .expect("compress")
}

/// Signs `bytes` as a delta from `from` to `to` of the bot, whose first
/// frame holds `manifest`.
fn sign_delta(
    host: &TestHost,
    bytes: &[u8],
    from: &Release,
    to: &Release,
    version: &str,
    manifest: &[u8],
) -> String {
    let comment = TrustedComment::for_delta(
        "bot",
        version,
        "stable",
        &id(from),
        &id(to),
        &ReleaseId::of_bytes(manifest),
    );
    signing_key(host)
        .sign_bytes(bytes, &comment.to_string())
        .expect("sign")
}

/// A host on v1 with v2 published (its honest delta from v1 in
/// `deltas/`), and the honest delta's path.
fn hostile_setup() -> (TestHost, Nginx, Release, Release, PathBuf) {
    let (host, nginx, v1) = http_host();
    // schema/VERSION and app/bot/model.bin change, so the delta carries
    // them, the second against v1's.
    let v2 = host.build(
        "2.0.0",
        &Flavor {
            schema: Some(2),
            ..model_changed()
        },
    );
    host.publish(&v2);
    let honest = host.repo().join(delta_rel_path(&id(&v1), &id(&v2)));
    assert!(honest.is_file(), "publish wrote the delta");
    (host, nginx, v1, v2, honest)
}

/// Runs the update and checks the full archive was used and the result
/// verifies clean.
fn falls_back_to_the_full_archive(host: &TestHost, nginx: &Nginx, v2: &Release, why: &str) {
    let out = host.run_expect(&["-v", "update"], 0);
    let err = stderr(&out);
    assert!(err.contains("taking the full archive instead"), "{err}");
    assert!(err.contains(why), "the refusal says {why:?}: {err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("taking the full archive instead"))
        .collect();
    assert_eq!(lines.len(), 1, "said once: {err}");
    assert!(lines[0].contains("delta"), "names the delta: {}", lines[0]);
    assert!(lines[0].contains("refused"), "says refused: {}", lines[0]);
    host.wait_healthy("2.0.0");
    assert_eq!(host.link("current"), Some(v2.dir_name()));
    assert!(served(nginx, &archive_uri(v2)) > 0, "the full archive");
    host.run_expect(&["verify"], 0);
}

/// The honest delta from v1 to v2 with one more regular file,
/// `app/zz-extra.py`, that the manifest does not list, signed: its bytes
/// and signature.
fn delta_with_an_extra_file(
    host: &TestHost,
    v1: &Release,
    v2: &Release,
    honest: &Path,
) -> (Vec<u8>, String) {
    let base = base_of(v1);
    let mut entries = delta_entries(honest, &base);
    let (_, mut header, _) = entries.last().expect("an entry").clone();
    header.set_size(5);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_cksum();
    entries.push(("app/zz-extra.py".into(), header, b"evil\n".to_vec()));
    let bytes = pack(&entries, &base);
    let sig = sign_delta(host, &bytes, v1, v2, "2.0.0", &entries[0].2);
    (bytes, sig)
}

#[test]
fn a_delta_with_an_extra_file_is_refused_and_the_full_archive_used() {
    let (host, nginx, v1, v2, honest) = hostile_setup();
    let (bytes, sig) = delta_with_an_extra_file(&host, &v1, &v2, &honest);
    list_delta(&host, &v1, &v2, &bytes, &sig);
    falls_back_to_the_full_archive(&host, &nginx, &v2, "not in the manifest");
    assert!(!host.root().join("current/app/zz-extra.py").exists());
}

#[test]
fn a_delta_that_omits_a_file_the_base_lacks_is_refused_and_the_full_archive_used() {
    let (host, nginx, v1, v2, honest) = hostile_setup();
    let base = base_of(&v1);
    // Every file the delta carries is one v1 lacks: drop them all.
    let entries: Vec<_> = delta_entries(&honest, &base)
        .into_iter()
        .filter(|(p, h, _)| {
            p == "slipway/manifest.json" || h.entry_type() != tar::EntryType::Regular
        })
        .collect();
    let carried = delta_entries(&honest, &base)
        .iter()
        .filter(|(p, h, _)| {
            p != "slipway/manifest.json" && h.entry_type() == tar::EntryType::Regular
        })
        .count();
    assert!(carried > 0, "the honest delta carries at least one file");
    let bytes = pack(&entries, &base);
    let sig = sign_delta(&host, &bytes, &v1, &v2, "2.0.0", &entries[0].2);
    list_delta(&host, &v1, &v2, &bytes, &sig);
    falls_back_to_the_full_archive(&host, &nginx, &v2, "has no file with sha256");
}

#[test]
fn a_tampered_delta_is_refused_and_the_full_archive_used() {
    let (host, nginx, v1, v2, honest) = hostile_setup();
    let mut bytes = fs::read(&honest).expect("delta");
    let sig = fs::read_to_string(format!("{}.minisig", honest.display())).expect("sig");
    let last = bytes.len() - 20;
    bytes[last] ^= 0xff;
    // Listed with the tampered file's own digest and size, so the
    // signature is what refuses it.
    list_delta(&host, &v1, &v2, &bytes, &sig);
    falls_back_to_the_full_archive(&host, &nginx, &v2, "does not match the data");
}

#[test]
fn a_delta_signed_for_other_releases_is_refused_and_the_full_archive_used() {
    let (host, nginx, v1, v2, honest) = hostile_setup();
    let bytes = fs::read(&honest).expect("delta");
    let manifest = &delta_entries(&honest, &base_of(&v1))[0].2;
    // Honest bytes, signed as a delta from v2 to v1.
    let sig = sign_delta(&host, &bytes, &v2, &v1, "2.0.0", manifest);
    list_delta(&host, &v1, &v2, &bytes, &sig);
    falls_back_to_the_full_archive(&host, &nginx, &v2, "starts from release");
}

#[test]
fn a_delta_made_against_another_reference_is_refused_and_the_full_archive_used() {
    let (host, nginx, v1, v2, honest) = hostile_setup();
    let entries = delta_entries(&honest, &base_of(&v1));
    // The second frame made against v1's model.bin with bytes after it:
    // every match into the reference lands elsewhere on the host.
    let mut other = base_of(&v1);
    other
        .files
        .get_mut("app/bot/model.bin")
        .expect("v1's model.bin")
        .extend_from_slice(&[0u8; 64]);
    let manifest = Manifest::parse(&entries[0].2).expect("manifest");
    assert_ne!(
        other.reference(&manifest),
        base_of(&v1).reference(&manifest)
    );
    let bytes = pack(&entries, &other);
    let sig = sign_delta(&host, &bytes, &v1, &v2, "2.0.0", &entries[0].2);
    list_delta(&host, &v1, &v2, &bytes, &sig);
    // Wrong bytes for model.bin, or matches before the reference's start:
    // refused either way.
    falls_back_to_the_full_archive(&host, &nginx, &v2, "refused");
}

#[test]
fn a_delta_with_a_third_frame_is_refused_and_the_full_archive_used() {
    let (host, nginx, v1, v2, honest) = hostile_setup();
    let manifest = delta_entries(&honest, &base_of(&v1)).remove(0).2;
    let mut bytes = fs::read(&honest).expect("delta");
    // Zeros, which after the end of the tar stream would look like padding.
    bytes.extend(zstd::encode_all(&[0u8; 1024][..], 3).expect("zstd"));
    let sig = sign_delta(&host, &bytes, &v1, &v2, "2.0.0", &manifest);
    list_delta(&host, &v1, &v2, &bytes, &sig);
    falls_back_to_the_full_archive(&host, &nginx, &v2, "after the delta's second zstd frame");
}

#[test]
fn a_delta_file_installs_from_a_usb_stick_on_the_release_it_starts_from() {
    let host = TestHost::new(&[]);
    let v1 = host.release("1.0.0", &flavor());
    host.run_expect(&["install", &v1.archive.to_string_lossy()], 0);
    host.wait_healthy("1.0.0");
    let v2 = host.release("2.0.0", &flavor());
    let stick = host.path("stick");
    fs::create_dir_all(&stick).expect("stick");
    let rel = delta_rel_path(&id(&v1), &id(&v2));
    let name = rel.trim_start_matches("deltas/");
    for suffix in ["", ".minisig"] {
        fs::copy(
            host.repo().join(format!("{rel}{suffix}")),
            stick.join(format!("{name}{suffix}")),
        )
        .expect("copy to the stick");
    }
    let delta = stick.join(name);
    host.run_expect(&["install", &delta.to_string_lossy()], 0);
    host.wait_healthy("2.0.0");
    assert_eq!(host.link("current"), Some(v2.dir_name()));
    host.run_expect(&["verify"], 0);

    // The same delta on a host that now runs v2: refused, as a hostile
    // archive is (exit 1), nothing changed.
    let before = bot_host::snapshot_tree(&host.root().join("releases"), &[]);
    let out = host.run_expect(&["install", "--force", &delta.to_string_lossy()], 1);
    assert!(
        stderr(&out).contains("starts from release"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        bot_host::snapshot_tree(&host.root().join("releases"), &[]),
        before
    );
    assert_eq!(host.link("current"), Some(v2.dir_name()));
}

#[test]
fn a_hostile_delta_on_a_usb_stick_is_refused_while_staging_and_changes_nothing() {
    // No walk before staging: staging refuses an extra entry, a tampered
    // payload or a missing base file, and removes what it had staged.
    let (host, _nginx, v1, v2, honest) = hostile_setup();
    host.wait_healthy("1.0.0");
    let (bytes, sig) = delta_with_an_extra_file(&host, &v1, &v2, &honest);
    let stick = host.path("stick");
    fs::create_dir_all(&stick).expect("stick");
    let delta = stick.join(delta_file_name(&id(&v1), &id(&v2)));
    fs::write(&delta, &bytes).expect("delta");
    fs::write(format!("{}.minisig", delta.display()), sig).expect("sig");
    let before = bot_host::snapshot_tree(&host.root().join("releases"), &[]);
    let out = host.run_expect(&["install", &delta.to_string_lossy()], 1);
    let err = stderr(&out);
    assert!(err.contains("not in the manifest"), "{err}");
    assert!(err.contains("refused"), "{err}");
    assert_eq!(
        bot_host::snapshot_tree(&host.root().join("releases"), &[]),
        before,
        "no staging directory or release left behind"
    );
    assert_eq!(host.link("current"), Some(v1.dir_name()));
    host.run_expect(&["verify"], 0);
}

#[test]
fn delta_bytes_are_deterministic_and_verified_by_stock_minisign() {
    let host = TestHost::new(&[]);
    let v1 = host.release("1.0.0", &flavor());
    let v2 = host.release("2.0.0", &flavor());
    let rel = delta_rel_path(&id(&v1), &id(&v2));
    let first = fs::read(host.repo().join(&rel)).expect("delta");
    let first_sig = fs::read(host.repo().join(format!("{rel}.minisig"))).expect("sig");
    bot_host::run_ok(std::process::Command::new(bot_host::pack_bin()).args([
        "delta",
        "--repo",
        &host.repo().to_string_lossy(),
        "--from",
        &v1.id,
        "--to",
        &v2.id,
        "--key",
        &host.path("keys/slipway.key").to_string_lossy(),
    ]));
    assert_eq!(fs::read(host.repo().join(&rel)).expect("delta"), first);
    assert_eq!(
        fs::read(host.repo().join(format!("{rel}.minisig"))).expect("sig"),
        first_sig
    );
    // Only the files v1 does not have, by digest and mode.
    let v1_digests: Vec<String> = entries_of(&v1.archive)
        .iter()
        .filter(|(_, h, _)| h.entry_type() == tar::EntryType::Regular)
        .map(|(_, _, d)| hex::encode(Sha256::digest(d)))
        .collect();
    for (path, h, data) in delta_entries(&host.repo().join(&rel), &base_of(&v1)) {
        if path == "slipway/manifest.json" || h.entry_type() != tar::EntryType::Regular {
            continue;
        }
        assert!(
            !v1_digests.contains(&hex::encode(Sha256::digest(&data))),
            "{path} is unchanged from v1 but carried"
        );
    }
    // The stock minisign CLI, not an imitation: a machine without it fails
    // here rather than skip the interoperability check.
    let out = std::process::Command::new("minisign")
        .arg("-Vm")
        .arg(host.repo().join(&rel))
        .arg("-p")
        .arg(host.path("keys/slipway.pub"))
        .output()
        .expect("minisign must be installed for this test: apt-get install minisign (scripts/test installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("slipway-delta"));
}

#[test]
fn a_kill_during_a_delta_install_recovers_and_the_next_run_takes_the_delta() {
    use std::os::unix::process::ExitStatusExt;
    bot_host::require_fault_injection();
    // A local repository as the source: the delta is read in place.
    let (host, v1) = TestHost::running_v1(&[], &flavor());
    let v2 = host.release(
        "2.0.0",
        &Flavor {
            schema: Some(2),
            ..flavor()
        },
    );
    for (var, at) in [
        ("SLIPWAY_FAULT_AFTER", "Stage"),
        ("SLIPWAY_FAULT_AT", "hardlink"),
    ] {
        let mut cmd = host.slipway(&["update"]);
        cmd.env(var, at);
        let out = bot_host::run_with_deadline(cmd, std::time::Duration::from_secs(120));
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{var}={at} did not kill the run: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains("using the delta"), "{}", stderr(&out));
        let o = host.json(&["recover"], 0);
        assert!(!o["message"].as_str().unwrap_or("").is_empty(), "{o}");
        assert!(!host.root().join("state/journal.json").exists());
        assert_eq!(host.link("current"), Some(v1.dir_name()));
        host.run_expect(&["verify"], 0);
        let stray: Vec<_> = fs::read_dir(host.root().join("releases"))
            .expect("releases")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".staging") || n == &v2.dir_name())
            .collect();
        assert!(stray.is_empty(), "left behind: {stray:?}");
    }
    let out = host.run_expect(&["update"], 0);
    assert!(stderr(&out).contains("using the delta"), "{}", stderr(&out));
    host.wait_healthy("2.0.0");
    assert_eq!(host.link("current"), Some(v2.dir_name()));
    host.run_expect(&["verify"], 0);
}

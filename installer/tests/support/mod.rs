//! Test support shared by the installer's integration tests: trusted keys,
//! release archives (valid and hostile) signed into a temporary repository,
//! and snapshots of a directory tree.
//!
//! Archives are written by hand, 512-byte header by 512-byte header, so a
//! test can put anything into them that the tar crate's safe builder would
//! refuse: `..` and absolute names, duplicates, hard links, device nodes,
//! setuid modes, header sizes that lie, huge GNU long-name records. The
//! result is zstd-compressed (multithreaded mode, like slipway-pack), named
//! `<sha256>.tar.zst` under `<repo>/releases/` and signed with a real
//! prehashed minisign signature whose trusted comment is the slipway release
//! comment, so only extraction can stop a hostile archive signed by a trusted
//! key.
//!
//! Use it from a test crate with `mod support;`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use slipway_formats::manifest::{Hooks, MANIFEST_FORMAT};
use slipway_formats::signature::TrustedComment;
use slipway_formats::{
    FileEntry, KeyId, Manifest, PublicKey, ReleaseId, TrustedKeys, Version, MANIFEST_PATH,
};

// ---------------------------------------------------------------------------
// Keys and signatures

/// A freshly generated, unencrypted minisign key pair.
pub struct TestKey {
    pair: minisign::KeyPair,
}

impl TestKey {
    pub fn generate() -> TestKey {
        TestKey {
            pair: minisign::KeyPair::generate_unencrypted_keypair().unwrap(),
        }
    }

    /// The public key in the base64 form of config files (`RW...`).
    pub fn public_base64(&self) -> String {
        self.pair.pk.to_base64()
    }

    /// The public key as slipway parses it.
    pub fn public(&self) -> PublicKey {
        PublicKey::from_base64(&self.public_base64()).unwrap()
    }

    pub fn key_id(&self) -> KeyId {
        self.public().id()
    }

    /// A trust set holding just this key.
    pub fn trusted(&self) -> TrustedKeys {
        TrustedKeys::new(vec![self.public()])
    }

    /// Writes `<dir>/<name>.key` (unencrypted secret key, minisign format)
    /// and `<dir>/<name>.pub`; returns their paths.
    pub fn write_files(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let sk = dir.join(format!("{name}.key"));
        let pk = dir.join(format!("{name}.pub"));
        fs::write(&sk, self.pair.sk.to_box(None).unwrap().to_string()).unwrap();
        fs::set_permissions(&sk, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&pk, self.public().to_pub_file()).unwrap();
        (sk, pk)
    }

    /// A prehashed (`ED`) minisign signature of `data` with this trusted
    /// comment, as the text of a `.minisig` file.
    pub fn sign(&self, data: impl Read, trusted_comment: &str) -> String {
        minisign::sign(
            Some(&self.pair.pk),
            &self.pair.sk,
            data,
            Some(trusted_comment),
            Some("signature from slipway test key"),
        )
        .unwrap()
        .to_string()
    }
}

/// Rewrites a prehashed signature as if it were a legacy (`Ed`) one: the
/// algorithm bytes change, nothing else (it would not verify either way; the
/// point is that it is refused as legacy before that).
pub fn as_legacy_signature(minisig: &str) -> String {
    use base64::Engine;
    let engine = base64::engine::general_purpose::STANDARD;
    let mut lines: Vec<String> = minisig.lines().map(str::to_string).collect();
    let mut bin = engine.decode(lines[1].trim()).unwrap();
    assert_eq!(&bin[..2], b"ED");
    bin[1] = b'd';
    lines[1] = engine.encode(&bin);
    lines.join("\n") + "\n"
}

// ---------------------------------------------------------------------------
// Raw tar entries

/// The data of a raw entry.
#[derive(Clone, Debug)]
pub enum Body {
    Bytes(Vec<u8>),
    /// This many zero bytes, streamed (never held in memory).
    Zeros(u64),
    /// This many bytes of deterministic, source-code-like text, streamed.
    Pattern {
        seed: u64,
        len: u64,
    },
}

impl Body {
    pub fn len(&self) -> u64 {
        match self {
            Body::Bytes(b) => b.len() as u64,
            Body::Zeros(n) => *n,
            Body::Pattern { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Streams the body into `out`.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        match self {
            Body::Bytes(b) => out.write_all(b),
            Body::Zeros(n) => {
                let chunk = vec![0u8; 64 * 1024];
                let mut left = *n;
                while left > 0 {
                    let k = left.min(chunk.len() as u64) as usize;
                    out.write_all(&chunk[..k])?;
                    left -= k as u64;
                }
                Ok(())
            }
            Body::Pattern { seed, len } => {
                let mut gen = PatternGen::new(*seed);
                let mut chunk = vec![0u8; 64 * 1024];
                let mut left = *len;
                while left > 0 {
                    let k = left.min(chunk.len() as u64) as usize;
                    gen.fill(&mut chunk[..k]);
                    out.write_all(&chunk[..k])?;
                    left -= k as u64;
                }
                Ok(())
            }
        }
    }

    /// The SHA-256 of the body, lowercase hex.
    pub fn sha256(&self) -> String {
        let mut w = HashWriter(Sha256::new());
        self.write_to(&mut w).unwrap();
        hex::encode(w.0.finalize())
    }
}

struct HashWriter(Sha256);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Deterministic text that compresses about like source code (3-5x).
struct PatternGen {
    state: u64,
}

impl PatternGen {
    const WORDS: [&'static [u8]; 16] = [
        b"def ",
        b"self",
        b"return ",
        b"import ",
        b"value",
        b" = ",
        b"(",
        b")",
        b":\n    ",
        b"\n",
        b"order_book",
        b"price",
        b", ",
        b"if ",
        b"None",
        b"# ",
    ];

    fn new(seed: u64) -> Self {
        PatternGen {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    fn next(&mut self) -> u64 {
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, out: &mut [u8]) {
        let mut i = 0;
        while i < out.len() {
            let r = self.next();
            if r & 3 == 0 {
                // a random identifier-ish byte run keeps the ratio realistic
                let n = ((r >> 8) % 8 + 1) as usize;
                for k in 0..n.min(out.len() - i) {
                    out[i + k] = b'a' + ((r >> (16 + k * 5)) % 26) as u8;
                }
                i += n.min(out.len() - i);
            } else {
                let w = Self::WORDS[((r >> 8) % 16) as usize];
                let n = w.len().min(out.len() - i);
                out[i..i + n].copy_from_slice(&w[..n]);
                i += n;
            }
        }
    }
}

/// Tar type flags.
pub mod flag {
    pub const REGULAR: u8 = b'0';
    pub const HARDLINK: u8 = b'1';
    pub const SYMLINK: u8 = b'2';
    pub const CHAR: u8 = b'3';
    pub const BLOCK: u8 = b'4';
    pub const DIR: u8 = b'5';
    pub const FIFO: u8 = b'6';
    pub const CONTIGUOUS: u8 = b'7';
    pub const PAX_LOCAL: u8 = b'x';
    pub const PAX_GLOBAL: u8 = b'g';
    pub const GNU_LONGNAME: u8 = b'L';
    pub const GNU_SPARSE: u8 = b'S';
}

/// One tar entry, written exactly as described: no normalisation, no checks.
#[derive(Clone, Debug)]
pub struct RawEntry {
    pub path: Vec<u8>,
    pub type_flag: u8,
    pub mode: u32,
    pub body: Body,
    /// The size written in the header when it should lie about the body.
    pub header_size: Option<u64>,
    pub link: Vec<u8>,
    /// Local PAX records, written in an `x` header before this entry. Paths
    /// and link names over 100 bytes get `path` / `linkpath` records
    /// automatically.
    pub pax: Vec<(String, Vec<u8>)>,
    /// The header's mtime (the manifest's `created` is 0).
    pub mtime: u64,
    /// The header's uid and gid.
    pub owner: (u64, u64),
}

impl RawEntry {
    pub fn new(path: impl AsRef<[u8]>, type_flag: u8, mode: u32) -> RawEntry {
        RawEntry {
            path: path.as_ref().to_vec(),
            type_flag,
            mode,
            body: Body::Bytes(Vec::new()),
            header_size: None,
            link: Vec::new(),
            pax: Vec::new(),
            mtime: 0,
            owner: (0, 0),
        }
    }

    pub fn file(path: impl AsRef<[u8]>, data: impl AsRef<[u8]>) -> RawEntry {
        RawEntry::new(path, flag::REGULAR, 0o644).body(Body::Bytes(data.as_ref().to_vec()))
    }

    pub fn dir(path: impl AsRef<[u8]>) -> RawEntry {
        RawEntry::new(path, flag::DIR, 0o755)
    }

    pub fn symlink(path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> RawEntry {
        RawEntry::new(path, flag::SYMLINK, 0o777).link(target)
    }

    pub fn body(mut self, body: Body) -> RawEntry {
        self.body = body;
        self
    }

    pub fn mode(mut self, mode: u32) -> RawEntry {
        self.mode = mode;
        self
    }

    pub fn type_flag(mut self, type_flag: u8) -> RawEntry {
        self.type_flag = type_flag;
        self
    }

    pub fn link(mut self, link: impl AsRef<[u8]>) -> RawEntry {
        self.link = link.as_ref().to_vec();
        self
    }

    pub fn header_size(mut self, size: u64) -> RawEntry {
        self.header_size = Some(size);
        self
    }

    pub fn pax(mut self, key: &str, value: impl AsRef<[u8]>) -> RawEntry {
        self.pax.push((key.to_string(), value.as_ref().to_vec()));
        self
    }

    /// Writes the entry (PAX header if any, header, body, padding).
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        let mut pax = self.pax.clone();
        if self.path.len() > 100 && !pax.iter().any(|(k, _)| k == "path") {
            pax.push(("path".into(), self.path.clone()));
        }
        if self.link.len() > 100 && !pax.iter().any(|(k, _)| k == "linkpath") {
            pax.push(("linkpath".into(), self.link.clone()));
        }
        if !pax.is_empty() {
            let mut records = Vec::new();
            for (k, v) in &pax {
                records.extend(pax_record(k, v));
            }
            let mut name = b"PaxHeaders/".to_vec();
            name.extend(self.path.iter().take(80));
            out.write_all(&header(
                &name,
                flag::PAX_LOCAL,
                0o644,
                records.len() as u64,
                b"",
            ))?;
            out.write_all(&records)?;
            pad(out, records.len() as u64)?;
        }
        let size = self.header_size.unwrap_or(self.body.len());
        let mut h = header(&self.path, self.type_flag, self.mode, size, &self.link);
        if self.mtime != 0 || self.owner != (0, 0) {
            stamp(&mut h, self.mtime, self.owner);
        }
        out.write_all(&h)?;
        self.body.write_to(out)?;
        pad(out, self.body.len())
    }
}

fn pad(out: &mut impl Write, len: u64) -> io::Result<()> {
    let rem = (len % 512) as usize;
    if rem != 0 {
        out.write_all(&[0u8; 512][..512 - rem])?;
    }
    Ok(())
}

/// One PAX record: `"<len> <key>=<value>\n"`, where len counts itself.
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    while base + len.to_string().len() != len {
        len = base + len.to_string().len();
    }
    let mut rec = format!("{len} {key}=").into_bytes();
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

/// A ustar header with a correct checksum. Names over 100 bytes are cut
/// (the caller adds a PAX `path` record); sizes that do not fit in octal use
/// the base-256 form.
pub fn header(path: &[u8], type_flag: u8, mode: u32, size: u64, link: &[u8]) -> [u8; 512] {
    fn put(h: &mut [u8; 512], at: usize, bytes: &[u8], width: usize) {
        let n = bytes.len().min(width);
        h[at..at + n].copy_from_slice(&bytes[..n]);
    }
    let mut h = [0u8; 512];
    put(&mut h, 0, path, 100);
    put(&mut h, 100, format!("{mode:07o}\0").as_bytes(), 8);
    put(&mut h, 108, b"0000000\0", 8);
    put(&mut h, 116, b"0000000\0", 8);
    if size < 0o77777777777 {
        put(&mut h, 124, format!("{size:011o}\0").as_bytes(), 12);
    } else {
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    put(&mut h, 136, b"00000000000\0", 12);
    h[156] = type_flag;
    put(&mut h, 157, link, 100);
    put(&mut h, 257, b"ustar\0", 6);
    put(&mut h, 263, b"00", 2);
    put(&mut h, 329, b"0000000\0", 8);
    put(&mut h, 337, b"0000000\0", 8);
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes(), 8);
    h
}

/// Rewrites a header's mtime, uid and gid, and its checksum.
pub fn stamp(h: &mut [u8; 512], mtime: u64, (uid, gid): (u64, u64)) {
    h[108..116].copy_from_slice(format!("{uid:07o}\0").as_bytes());
    h[116..124].copy_from_slice(format!("{gid:07o}\0").as_bytes());
    h[136..148].copy_from_slice(format!("{mtime:011o}\0").as_bytes());
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

// ---------------------------------------------------------------------------
// Releases

/// One item of a release tree, for [`valid_release`].
#[derive(Clone, Debug)]
pub enum Item {
    File(Vec<u8>),
    Exec(Vec<u8>),
    Dir,
    Symlink(String),
    /// A large generated file (streamed, never held in memory).
    Generated {
        seed: u64,
        len: u64,
    },
}

/// A plain file item.
pub fn file(data: impl AsRef<[u8]>) -> Item {
    Item::File(data.as_ref().to_vec())
}

/// An executable file item.
pub fn exec(data: impl AsRef<[u8]>) -> Item {
    Item::Exec(data.as_ref().to_vec())
}

/// A symlink item.
pub fn symlink(target: &str) -> Item {
    Item::Symlink(target.to_string())
}

/// Everything needed to write one release archive. The fields are public so
/// a test can bend any of them: `entries` are written after the manifest
/// entry, in order, exactly as they are.
#[derive(Clone, Debug)]
pub struct ArchiveBuilder {
    /// The manifest: written as the first entry (unless `manifest_bytes` or
    /// `manifest_entry` say otherwise) and used for the trusted comment.
    pub manifest: Manifest,
    /// Raw bytes to write as `slipway/manifest.json` instead of `manifest`.
    pub manifest_bytes: Option<Vec<u8>>,
    /// A raw entry to write instead of the manifest entry.
    pub manifest_entry: Option<RawEntry>,
    /// Entries written before the manifest entry.
    pub before_manifest: Vec<RawEntry>,
    /// The payload entries.
    pub entries: Vec<RawEntry>,
    /// Bytes after the two end-of-archive blocks.
    pub trailer: Option<Body>,
    /// The trusted comment, instead of the slipway release comment.
    pub comment: Option<String>,
    /// A zstd window log to force (e.g. 28, over slipway's limit).
    pub window_log: Option<u32>,
}

/// A release of `app` at `version` on channel `stable` holding `items`
/// (parent directories are added; `app` is always present), with a manifest
/// and tar entries that agree exactly.
pub fn valid_release(app: &str, version: &str, items: &[(&str, Item)]) -> ArchiveBuilder {
    let mut tree: BTreeMap<String, Item> = BTreeMap::new();
    tree.insert("app".into(), Item::Dir);
    for (path, item) in items {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            tree.entry(path[..at + i].to_string()).or_insert(Item::Dir);
            at += i + 1;
        }
        tree.insert(path.to_string(), item.clone());
    }
    let mut files = Vec::new();
    let mut entries = Vec::new();
    for (path, item) in tree {
        let (entry, raw) = match item {
            Item::Dir => (FileEntry::dir(&path), RawEntry::dir(&path)),
            Item::Symlink(t) => (FileEntry::symlink(&path, &t), RawEntry::symlink(&path, &t)),
            Item::File(data) => file_pair(&path, data, false),
            Item::Exec(data) => file_pair(&path, data, true),
            Item::Generated { seed, len } => {
                let body = Body::Pattern { seed, len };
                (
                    FileEntry::file(&path, false, len, body.sha256()),
                    RawEntry::file(&path, b"").body(body),
                )
            }
        };
        files.push(entry);
        entries.push(raw);
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        app: app.to_string(),
        version: version.parse::<Version>().unwrap(),
        channel: "stable".into(),
        created: 0,
        source: None,
        schema_version: 1,
        schema_min_compatible: 1,
        hooks: Hooks::default(),
        runtime_paths: Vec::new(),
        probation: false,
        files,
    };
    manifest.validate().unwrap();
    ArchiveBuilder {
        manifest,
        manifest_bytes: None,
        manifest_entry: None,
        before_manifest: Vec::new(),
        entries,
        trailer: None,
        comment: None,
        window_log: None,
    }
}

fn file_pair(path: &str, data: Vec<u8>, executable: bool) -> (FileEntry, RawEntry) {
    let body = Body::Bytes(data);
    (
        FileEntry::file(path, executable, body.len(), body.sha256()),
        RawEntry::file(path, b"")
            .body(body)
            .mode(if executable { 0o755 } else { 0o644 }),
    )
}

/// A small, ordinary release: a package with an executable, a symlink and a
/// schema file.
pub fn sample_release(version: &str) -> ArchiveBuilder {
    valid_release(
        "bot",
        version,
        &[
            ("app/bot/__init__.py", file(b"")),
            ("app/bot/main.py", file(format!("print('bot {version}')\n"))),
            ("app/run.sh", exec(b"#!/bin/sh\nexec python3 -m bot.main\n")),
            ("app/current.py", symlink("bot/main.py")),
            ("schema/VERSION", file(b"1\n")),
        ],
    )
}

/// A finished archive in a repository.
#[derive(Clone, Debug)]
pub struct BuiltRelease {
    pub id: ReleaseId,
    pub archive: PathBuf,
    pub signature: PathBuf,
    pub manifest: Manifest,
    pub size: u64,
}

impl ArchiveBuilder {
    /// The payload entry at `path` (panics if absent).
    /// The raw entry at `path`; for [`MANIFEST_PATH`], the manifest's own
    /// entry (made from the manifest's bytes if not set yet).
    pub fn entry_mut(&mut self, path: &str) -> &mut RawEntry {
        if path == MANIFEST_PATH {
            let bytes = self.manifest_bytes();
            return self
                .manifest_entry
                .get_or_insert_with(|| RawEntry::file(MANIFEST_PATH, bytes));
        }
        self.entries
            .iter_mut()
            .find(|e| e.path == path.as_bytes())
            .unwrap_or_else(|| panic!("no entry {path}"))
    }

    /// The index of the payload entry at `path` (panics if absent).
    pub fn position(&self, path: &str) -> usize {
        self.entries
            .iter()
            .position(|e| e.path == path.as_bytes())
            .unwrap_or_else(|| panic!("no entry {path}"))
    }

    /// Inserts a raw entry right after the entry at `path`.
    pub fn insert_after(&mut self, path: &str, entry: RawEntry) -> &mut Self {
        let i = self.position(path);
        self.entries.insert(i + 1, entry);
        self
    }

    /// Removes the payload entry at `path` (the manifest is untouched).
    pub fn remove_entry(&mut self, path: &str) -> RawEntry {
        let i = self.position(path);
        self.entries.remove(i)
    }

    /// The manifest entry's bytes.
    pub fn manifest_bytes(&self) -> Vec<u8> {
        self.manifest_bytes
            .clone()
            .unwrap_or_else(|| self.manifest.to_bytes())
    }

    /// Writes the uncompressed tar stream.
    pub fn write_tar(&self, out: &mut impl Write) -> io::Result<()> {
        for e in &self.before_manifest {
            e.write_to(out)?;
        }
        match &self.manifest_entry {
            Some(e) => e.write_to(out)?,
            None => RawEntry::file(MANIFEST_PATH, self.manifest_bytes()).write_to(out)?,
        }
        for e in &self.entries {
            e.write_to(out)?;
        }
        out.write_all(&[0u8; 1024])?;
        if let Some(trailer) = &self.trailer {
            trailer.write_to(out)?;
        }
        Ok(())
    }

    /// Compresses, names and signs the archive into `<repo>/releases/`.
    pub fn build(&self, repo: &Path, key: &TestKey) -> BuiltRelease {
        let dir = repo.join("releases");
        fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join(format!(".building-{}", std::process::id()));
        {
            let out = io::BufWriter::new(File::create(&tmp).unwrap());
            let mut enc = zstd::stream::write::Encoder::new(out, 3).unwrap();
            enc.multithread(1).unwrap();
            if let Some(log) = self.window_log {
                enc.window_log(log).unwrap();
            }
            self.write_tar(&mut enc).unwrap();
            enc.finish().unwrap().flush().unwrap();
        }
        let id = file_id(&tmp);
        let archive = dir.join(id.archive_file_name());
        fs::rename(&tmp, &archive).unwrap();
        let comment = self.comment.clone().unwrap_or_else(|| {
            TrustedComment::for_release(
                &self.manifest.app,
                &self.manifest.version.to_string(),
                &self.manifest.channel,
                &id,
            )
            .to_string()
        });
        let signature = dir.join(id.signature_file_name());
        let sig = key.sign(File::open(&archive).unwrap(), &comment);
        fs::write(&signature, sig).unwrap();
        BuiltRelease {
            id,
            size: fs::metadata(&archive).unwrap().len(),
            archive,
            signature,
            manifest: self.manifest.clone(),
        }
    }
}

/// The release id of a file.
pub fn file_id(path: &Path) -> ReleaseId {
    let mut f = File::open(path).unwrap();
    let mut w = HashWriter(Sha256::new());
    io::copy(&mut f, &mut w).unwrap();
    ReleaseId::from_digest(w.0.finalize().into())
}

// ---------------------------------------------------------------------------
// Hosts and snapshots

/// A temporary world: `<root>/repo` (archives), `<root>/host/releases`
/// (where releases are staged), `<root>/outside` (a directory a hostile
/// archive would like to write into), and a trusted key.
pub struct TestWorld {
    pub dir: tempfile::TempDir,
    pub key: TestKey,
}

impl TestWorld {
    pub fn new() -> TestWorld {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["repo/releases", "host/releases", "outside"] {
            fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        fs::write(dir.path().join("outside/keep.txt"), b"precious\n").unwrap();
        TestWorld {
            dir,
            key: TestKey::generate(),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn repo(&self) -> PathBuf {
        self.root().join("repo")
    }

    pub fn releases(&self) -> PathBuf {
        self.root().join("host/releases")
    }

    pub fn outside(&self) -> PathBuf {
        self.root().join("outside")
    }

    pub fn build(&self, builder: &ArchiveBuilder) -> BuiltRelease {
        builder.build(&self.repo(), &self.key)
    }

    /// Names in `releases/` that start with `.staging`.
    pub fn staging_dirs(&self) -> Vec<String> {
        fs::read_dir(self.releases())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".staging"))
            .collect()
    }
}

impl Default for TestWorld {
    fn default() -> Self {
        Self::new()
    }
}

/// Every path under `root` (not following symlinks) with its type, mode and
/// content hash or link target: two equal snapshots mean nothing was
/// created, removed or changed.
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
    {
        let e = e.unwrap();
        let rel = e
            .path()
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let meta = fs::symlink_metadata(e.path()).unwrap();
        let mode = meta.mode() & 0o7777;
        let what = if meta.file_type().is_symlink() {
            format!("symlink -> {}", fs::read_link(e.path()).unwrap().display())
        } else if meta.is_dir() {
            format!("dir {mode:04o}")
        } else if meta.is_file() {
            let mut f = File::open(e.path()).unwrap();
            let mut w = HashWriter(Sha256::new());
            io::copy(&mut f, &mut w).unwrap();
            format!("file {mode:04o} {}", hex::encode(w.0.finalize()))
        } else {
            format!("special {:o}", meta.mode())
        };
        out.insert(rel, what);
    }
    out
}

/// Flips one byte of a file in place, at `offset` from the end.
pub fn flip_byte(path: &Path, from_end: u64) {
    let mut bytes = fs::read(path).unwrap();
    let i = bytes.len() - 1 - from_end as usize;
    bytes[i] ^= 0x01;
    fs::write(path, bytes).unwrap();
}

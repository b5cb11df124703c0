//! The second pass over a verified archive: decompress it on a thread of
//! its own while the entries are checked on this one, and prove that the
//! bytes read are the ones [`super::verify_release`] verified.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::mpsc;

use sha2::{Digest, Sha256};

use super::entries::{walk_entries, BaseFiles, Walked};
use super::{
    check_file_digest, decoder, EntryError, EntrySink, Recheck, SinkError, VerifiedRelease,
    WalkError,
};
use crate::delta::DeltaBase;
use crate::{FileEntry, Manifest};

/// The compressed read buffer.
const BUFFER: usize = 256 * 1024;

/// Decompressed bytes are handed from the decompressing thread to the
/// walking one in chunks this big: large enough that the two threads meet
/// (and wake each other) a thousand times per GiB, not four thousand.
const CHUNK: usize = 1024 * 1024;

/// Decompressed chunks buffered between the two threads.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Reads `archive` (the descriptor [`super::verify_release`] verified,
/// at offset 0) a second time, checks every tar entry against
/// `release.manifest` by the entry policy ([`super::entries`]) and hands
/// each accepted entry to `sink`.
///
/// One thread reads the file, hashes it with the verification's keyed
/// BLAKE3 ([`Recheck`]) and decompresses it with the window limit; this one
/// walks the entries and calls the sink. They meet in a bounded channel, so
/// at most four 1 MiB chunks are ever held. Once the walk is complete the
/// rest of the file is read through the hash too: if the bytes differ from
/// the verified ones the result is [`EntryError::ArchiveChanged`], even if
/// every entry looked right.
///
/// If the sink asks to stop ([`EntrySink::stopped`]) this returns `Ok` at
/// once, without the end-of-stream checks: the sink's own failure is what
/// its caller reports.
pub fn walk_release<R: Read + Send, S: EntrySink>(
    archive: R,
    release: &VerifiedRelease,
    sink: &mut S,
) -> Result<(), WalkError<S::Error>> {
    walk(archive, release, None, sink)
}

/// [`walk_release`] for a delta archive ([`crate::delta::verify_delta`]):
/// `base` is the release the delta starts from (the one a host runs,
/// whose id is `release.base`). The file is two zstd frames: the first is
/// decompressed against `base`'s manifest bytes; once it is through, the
/// second against [`DeltaBase::reference`] of the verified manifest; any
/// byte after the second frame is refused. Every entry the stream holds is
/// checked exactly as in a full release; a regular file the stream leaves
/// out is accepted only if `base` has a file with its digest and mode, and
/// is handed to [`EntrySink::omitted`], whose job is to prove the base's
/// copy. Directories, symlinks and every other file must be in the stream.
pub fn walk_delta<R: Read + Send, S: EntrySink>(
    archive: R,
    release: &VerifiedRelease,
    base: &DeltaBase<'_>,
    sink: &mut S,
) -> Result<(), WalkError<S::Error>> {
    walk(archive, release, Some(*base), sink)
}

fn walk<R: Read + Send, S: EntrySink>(
    archive: R,
    release: &VerifiedRelease,
    base: Option<DeltaBase<'_>>,
    sink: &mut S,
) -> Result<(), WalkError<S::Error>> {
    let recheck = &release.recheck;
    let left_out = base.map(|b| BaseFiles::of(b.manifest));
    let frames = base.map(|b| (b, &release.manifest));
    std::thread::scope(|scope| {
        let (chunks, chunk_rx) = mpsc::sync_channel(CHUNKS_IN_FLIGHT);
        let (spare_tx, spares) = mpsc::channel();
        let producer = scope.spawn(move || decompress(archive, recheck, frames, &chunks, &spares));
        let reader = ChannelReader {
            chunks: chunk_rx,
            chunk: Vec::new(),
            pos: 0,
            spares: spare_tx,
            failed: false,
        };
        // The reader is dropped when this returns, which stops the producer
        // early if the archive was refused half way.
        let walked = walk_entries(
            reader,
            &release.manifest,
            &release.manifest_bytes,
            left_out.as_ref(),
            sink,
        );
        let produced = producer.join();
        if walked? == Walked::Stopped {
            return Ok(());
        }
        let same = match produced {
            Ok(Ok(Some(same))) => same,
            Ok(Ok(None)) => {
                return Err(EntryError::Corrupt {
                    reason: "decompression stopped early".into(),
                }
                .into())
            }
            Ok(Err(source)) => return Err(EntryError::Read(source).into()),
            Err(_) => {
                return Err(EntryError::Corrupt {
                    reason: "the decompression thread panicked".into(),
                }
                .into())
            }
        };
        if !same {
            return Err(EntryError::ArchiveChanged.into());
        }
        Ok(())
    })
}

/// Checks a verified archive's every entry against its manifest and every
/// file's content against its SHA-256, writing nothing: `slipway-pack
/// verify`'s second pass, the same walk `slipway install` stages from.
pub fn check_release_contents<R: Read + Send>(
    archive: R,
    release: &VerifiedRelease,
) -> Result<(), EntryError> {
    let mut sink = ContentCheck {
        buf: vec![0u8; BUFFER],
    };
    walk_release(archive, release, &mut sink).map_err(|e| match e {
        WalkError::Entry(e) | WalkError::Sink(e) => e,
    })
}

/// [`check_release_contents`] for a delta: every entry it holds is checked
/// and hashed; a file it leaves out must be one `base` (the release it
/// starts from) lists with the same digest and mode, which is that file's
/// proof.
pub fn check_delta_contents<R: Read + Send>(
    archive: R,
    release: &VerifiedRelease,
    base: &DeltaBase<'_>,
) -> Result<(), EntryError> {
    let mut sink = ContentCheck {
        buf: vec![0u8; BUFFER],
    };
    walk_delta(archive, release, base, &mut sink).map_err(|e| match e {
        WalkError::Entry(e) | WalkError::Sink(e) => e,
    })
}

/// The sink that only hashes.
struct ContentCheck {
    buf: Vec<u8>,
}

impl EntrySink for ContentCheck {
    type Error = EntryError;

    fn manifest(&mut self, _bytes: &[u8]) -> Result<(), EntryError> {
        Ok(())
    }

    fn entry(
        &mut self,
        _index: usize,
        expected: &FileEntry,
        content: &mut impl Read,
    ) -> Result<(), SinkError<EntryError>> {
        let mut sha = Sha256::new();
        loop {
            match content.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => sha.update(&self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(SinkError::Read(e)),
            }
        }
        if expected.kind == crate::EntryType::File {
            check_file_digest(expected, &sha.finalize())?;
        }
        Ok(())
    }

    /// The base's manifest lists the file with this digest and mode (the
    /// walk checked): nothing to read.
    fn omitted(
        &mut self,
        _index: usize,
        _expected: &FileEntry,
    ) -> Result<(), SinkError<EntryError>> {
        Ok(())
    }
}

/// A delta's base, and the verified manifest its second frame's reference
/// is built for.
type Frames<'a> = Option<(DeltaBase<'a>, &'a Manifest)>;

/// The decompressing side: reads the whole file through the keyed hash,
/// decompresses it (a delta's two frames against their references, see
/// [`walk_delta`]) and sends the output in chunks. Returns whether the
/// file's bytes are the verified ones, `None` if the consumer stopped
/// listening or decoding failed (the error went down the channel), or an
/// error reading the file after the stream.
fn decompress(
    archive: impl Read,
    recheck: &Recheck,
    frames: Frames<'_>,
    chunks: &mpsc::SyncSender<io::Result<Vec<u8>>>,
    spares: &mpsc::Receiver<Vec<u8>>,
) -> io::Result<Option<bool>> {
    let hashing = HashingReader {
        inner: archive,
        hasher: recheck.hasher(),
    };
    let hasher = decompress_from(hashing, frames, chunks, spares)?;
    Ok(hasher.map(|h| recheck.matches(&h)))
}

/// Decompresses everything `hashing` reads and sends it on; then reads the
/// file to its end (through the hash) and returns the hash of the whole
/// file. Returns `None` if the consumer stopped listening or decoding
/// failed (the error went down the channel).
fn decompress_from<R: Read>(
    hashing: HashingReader<R>,
    frames: Frames<'_>,
    chunks: &mpsc::SyncSender<io::Result<Vec<u8>>>,
    spares: &mpsc::Receiver<Vec<u8>>,
) -> io::Result<Option<blake3::Hasher>> {
    let input = BufReader::with_capacity(BUFFER, hashing);
    let input = match frames {
        None => send_decoded(input, None, chunks, spares),
        Some((base, new)) => {
            send_decoded(input, Some(base.manifest_bytes), chunks, spares).and_then(|input| {
                // Frame B's reference, read once frame A is through.
                let reference = base.reference(new);
                send_decoded(input, Some(&reference), chunks, spares)
            })
        }
    };
    let Some(mut input) = input else {
        return Ok(None);
    };
    if frames.is_some() {
        // A delta is exactly two frames: nothing may follow the second.
        let rest = loop {
            match input.fill_buf() {
                Ok(rest) => break !rest.is_empty(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        if rest {
            let _ = chunks.send(Err(io::Error::other(
                "data after the delta's second zstd frame (a delta is exactly two frames)",
            )));
            return Ok(None);
        }
    }
    // Whatever zstd did not need (nothing, for a well-formed file) is hashed too.
    let mut hashing = input.into_inner();
    let mut sink = vec![0u8; 64 * 1024];
    loop {
        match hashing.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(hashing.hasher))
}

/// Decompresses `input` ([`decoder`]: every frame, or with `prefix` the
/// one frame compressed against it) and sends the output on in chunks.
/// Returns `input`, just after what was decoded; `None` if the consumer
/// stopped listening or decoding failed (the error went down the channel).
fn send_decoded<R: BufRead>(
    input: R,
    prefix: Option<&[u8]>,
    chunks: &mpsc::SyncSender<io::Result<Vec<u8>>>,
    spares: &mpsc::Receiver<Vec<u8>>,
) -> Option<R> {
    let mut decoder = match decoder(input, prefix) {
        Ok(d) => d,
        Err(e) => {
            let _ = chunks.send(Err(e));
            return None;
        }
    };
    loop {
        let mut chunk = spares.try_recv().unwrap_or_default();
        chunk.resize(CHUNK, 0);
        let mut filled = 0;
        while filled < chunk.len() {
            match decoder.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // What was decoded before goes first, so that the walk
                    // can name the entry whose bytes are wrong (a delta's
                    // base file that differs fails the entry's hash before
                    // zstd's checksum of the frame).
                    if filled > 0 {
                        chunk.truncate(filled);
                        let _ = chunks.send(Ok(chunk));
                    }
                    let _ = chunks.send(Err(e));
                    return None;
                }
            }
        }
        if filled == 0 {
            break;
        }
        chunk.truncate(filled);
        if chunks.send(Ok(chunk)).is_err() {
            return None;
        }
    }
    Some(decoder.into_inner())
}

/// Hashes every byte read from the archive file with the verification's
/// keyed BLAKE3 ([`Recheck`]), in line: at several GB/s it costs a fraction
/// of decompressing.
struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The consuming side of the channel, as a reader. Emptied chunks go back
/// to the producer for reuse.
struct ChannelReader {
    chunks: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
    spares: mpsc::Sender<Vec<u8>>,
    failed: bool,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::other("decompression failed earlier"));
        }
        while self.pos == self.chunk.len() {
            let used = std::mem::take(&mut self.chunk);
            if used.capacity() > 0 {
                let _ = self.spares.send(used);
            }
            self.pos = 0;
            match self.chunks.recv() {
                Ok(Ok(chunk)) => self.chunk = chunk,
                Ok(Err(e)) => {
                    self.failed = true;
                    return Err(e);
                }
                // The producer is done: end of the decompressed stream.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

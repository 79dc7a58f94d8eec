//! Sealed artifacts: the only bytes an adapter can publish.
//!
//! The promise is that nothing but the voted bytes reaches a platform. A check that hashes a
//! file in the revision and an adapter that then opens the same path again cannot keep it:
//! whatever replaces the file between the two reads is published, and recorded next to the
//! voted digest. So the pipeline reads each artifact **once**, through a [`Sealer`], which
//! copies the bytes into a place only this process can reach while hashing the copy, and
//! compares the copy's size and SHA3-256 with the voted manifest entry. What comes out is a
//! [`Sealed`] value, and adapters receive nothing else: no path into the revision exists in
//! the types they see, and a `Sealed` cannot be built from a path at all (the constructors
//! here take a stream of bytes or the bytes themselves, never a file name).
//!
//! Where the copy lives:
//! - below [`Sealer::memory_limit`] bytes, in memory;
//! - above it, in an anonymous temporary file (`O_TMPFILE` on Linux: it has no name in any
//!   directory, so no other process can open or replace it), created in the configured
//!   scratch directory and gone when the last clone of the `Sealed` is dropped.
//!
//! The digests platforms report are computed from the same pass: sha256 (OCI blobs,
//! GitHub assets, PyPI files), sha512 (npm's `dist.integrity`) and sha1 (npm's
//! `dist.shasum`). Every read of a file-backed copy hashes what it reads again and fails on
//! a difference, so even a fault on the scratch disk cannot send other bytes.

use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use atr_dist_shared::manifest::Sha3Hex;
use atr_dist_shared::names::ArtifactPath;
use atr_dist_shared::{Digest, DigestAlgorithm, ManifestEntry};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use sha1::Sha1;
use sha2::{Digest as _, Sha256, Sha512};
use sha3::Sha3_256;
use tokio::sync::mpsc;

use crate::blocking::{self, BlockingError, Cancel};

/// An artifact's bytes as a source hands them over: a file read in pieces, or a download.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// Pieces a file-backed copy is read back in.
const READ_CHUNK: usize = 1024 * 1024;
/// Pieces in flight between the reader of the source and the thread that hashes and stores.
const CHANNEL_DEPTH: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The bytes read are not the voted ones: the revision changed, or a download differs.
    #[error(
        "{path}: the file does not match the voted manifest ({got_size} bytes{more}, sha3-256 {got}; the manifest says {want_size} bytes, {want})"
    )]
    Mismatch {
        path: ArtifactPath,
        got_size: u64,
        /// " or more" when reading stopped past the voted size.
        more: &'static str,
        got: String,
        want_size: u64,
        want: Sha3Hex,
    },
    /// Reading the source failed (a disk error, a broken download): worth another attempt.
    #[error("{path}: reading the file failed: {source}")]
    Read {
        path: ArtifactPath,
        source: io::Error,
    },
    /// The private copy could not be made (the scratch directory is full or unwritable).
    #[error("{path}: keeping a private copy in {dir} failed: {source}")]
    Scratch {
        path: ArtifactPath,
        dir: String,
        source: io::Error,
    },
    /// A file-backed copy read back differently from what was sealed.
    #[error(
        "{path}: the sealed copy no longer has the sealed bytes (sha256 {got}, sealed {want}); nothing is sent from it"
    )]
    Corrupt {
        path: ArtifactPath,
        got: Digest,
        want: Digest,
    },
    #[error("{path}: {source}")]
    Blocking {
        path: ArtifactPath,
        source: BlockingError,
    },
}

/// Where the sealer keeps copies.
#[derive(Debug, Clone)]
pub struct Sealer {
    /// Directory for file-backed copies; the files in it have no names.
    pub scratch: PathBuf,
    /// Artifacts up to this size are kept in memory.
    pub memory_limit: u64,
}

impl Default for Sealer {
    fn default() -> Sealer {
        Sealer {
            scratch: std::env::temp_dir(),
            memory_limit: DEFAULT_MEMORY_LIMIT,
        }
    }
}

/// Copies up to this size stay in memory (npm tarballs and OCI manifests, typically).
pub const DEFAULT_MEMORY_LIMIT: u64 = 16 * 1024 * 1024;

/// A private, checked copy of one voted artifact. Cheap to clone: clones share the copy.
#[derive(Clone)]
pub struct Sealed(Arc<Inner>);

struct Inner {
    entry: ManifestEntry,
    sha256: Digest,
    sha512: Digest,
    sha1_hex: String,
    store: Store,
}

enum Store {
    Memory(Bytes),
    /// An unnamed file of exactly `entry.size` bytes.
    File(std::fs::File),
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("path", &self.0.entry.path)
            .field("size", &self.0.entry.size)
            .field("sha256", &self.0.sha256)
            .field(
                "store",
                &match self.0.store {
                    Store::Memory(_) => "memory",
                    Store::File(_) => "file",
                },
            )
            .finish()
    }
}

/// The hashes of one pass over the bytes.
struct Hashes {
    size: u64,
    sha3: Sha3_256,
    sha256: Sha256,
    sha512: Sha512,
    sha1: Sha1,
}

impl Hashes {
    fn new() -> Hashes {
        Hashes {
            size: 0,
            sha3: Sha3_256::new(),
            sha256: Sha256::new(),
            sha512: Sha512::new(),
            sha1: Sha1::new(),
        }
    }

    fn update(&mut self, piece: &[u8]) {
        self.size += piece.len() as u64;
        self.sha3.update(piece);
        self.sha256.update(piece);
        self.sha512.update(piece);
        self.sha1.update(piece);
    }
}

fn digest(algorithm: DigestAlgorithm, bytes: &[u8]) -> Digest {
    Digest::from_bytes(algorithm, bytes)
        .unwrap_or_else(|_| unreachable!("a hash of its algorithm's length is a digest"))
}

pub fn sha256_of(bytes: &[u8]) -> Digest {
    digest(DigestAlgorithm::Sha256, &Sha256::digest(bytes))
}

/// Checks one pass's hashes against the voted entry and builds the sealed value.
fn finish(entry: &ManifestEntry, hashes: Hashes, store: Store) -> Result<Sealed, SealError> {
    let size = hashes.size;
    let sha3 = Sha3Hex::from_bytes(hashes.sha3.finalize().into());
    if size != entry.size || sha3 != entry.sha3_256 {
        return Err(SealError::Mismatch {
            path: entry.path.clone(),
            got_size: size,
            more: if size > entry.size { " or more" } else { "" },
            got: sha3.to_string(),
            want_size: entry.size,
            want: entry.sha3_256.clone(),
        });
    }
    Ok(Sealed(Arc::new(Inner {
        entry: entry.clone(),
        sha256: digest(DigestAlgorithm::Sha256, &hashes.sha256.finalize()),
        sha512: digest(DigestAlgorithm::Sha512, &hashes.sha512.finalize()),
        sha1_hex: hex::encode(hashes.sha1.finalize()),
        store,
    })))
}

/// What the reading side hands the hashing thread.
enum Piece {
    Bytes(Bytes),
    /// The source is exhausted (or reading stopped one byte past the voted size).
    End,
}

impl Sealer {
    /// Reads `stream` once, keeping a private copy and hashing it, and checks it against
    /// the voted `entry`. Reading stops one byte past the voted size: a larger file is a
    /// mismatch, never read to its end.
    pub async fn seal(
        &self,
        entry: &ManifestEntry,
        stream: ByteStream,
    ) -> Result<Sealed, SealError> {
        let in_memory = entry.size <= self.memory_limit;
        let file = if in_memory {
            None
        } else {
            Some(
                tempfile::tempfile_in(&self.scratch).map_err(|source| SealError::Scratch {
                    path: entry.path.clone(),
                    dir: self.scratch.display().to_string(),
                    source,
                })?,
            )
        };
        let (tx, rx) = mpsc::channel::<Piece>(CHANNEL_DEPTH);
        let owned = entry.clone();
        let store_and_hash = blocking::run(move |cancel: &Cancel| store(&owned, file, rx, cancel));
        let read = feed(entry, stream, tx);
        let (read, stored) = tokio::join!(read, store_and_hash);
        // A read error explains a short copy better than the mismatch it causes.
        read?;
        stored.map_err(|source| SealError::Blocking {
            path: entry.path.clone(),
            source,
        })?
    }

    /// Seals bytes already in memory (a tool's or a test's), with the same check.
    pub fn seal_bytes(&self, entry: &ManifestEntry, bytes: Bytes) -> Result<Sealed, SealError> {
        let mut hashes = Hashes::new();
        hashes.update(&bytes);
        finish(entry, hashes, Store::Memory(bytes))
    }
}

/// Reads the source into the channel, stopping one byte past the voted size.
async fn feed(
    entry: &ManifestEntry,
    mut stream: ByteStream,
    tx: mpsc::Sender<Piece>,
) -> Result<(), SealError> {
    let limit = entry.size.saturating_add(1);
    let mut read = 0u64;
    while let Some(piece) = stream.next().await {
        let mut piece = piece.map_err(|source| SealError::Read {
            path: entry.path.clone(),
            source,
        })?;
        // Nothing past the byte after the voted size (a piece shorter than the room left
        // stays whole).
        piece.truncate(usize::try_from(limit - read).unwrap_or(usize::MAX));
        read += piece.len() as u64;
        // The storing side stopped (an error of its own, reported by it): stop reading.
        if tx.send(Piece::Bytes(piece)).await.is_err() {
            return Ok(());
        }
        if read >= limit {
            break;
        }
    }
    tx.send(Piece::End).await.ok();
    Ok(())
}

/// The storing side: hashes every piece and keeps it in memory or in the unnamed file.
fn store(
    entry: &ManifestEntry,
    file: Option<std::fs::File>,
    mut rx: mpsc::Receiver<Piece>,
    cancel: &Cancel,
) -> Result<Sealed, SealError> {
    let scratch = |source: io::Error| SealError::Scratch {
        path: entry.path.clone(),
        dir: "the scratch directory".to_owned(),
        source,
    };
    let mut hashes = Hashes::new();
    let mut memory = Vec::new();
    let mut writer = file.map(io::BufWriter::new);
    loop {
        cancel.check().map_err(|c| SealError::Blocking {
            path: entry.path.clone(),
            source: c.into(),
        })?;
        // `None`: the reading side went away without an end (its job was dropped).
        let Some(piece) = rx.blocking_recv() else {
            return Err(SealError::Blocking {
                path: entry.path.clone(),
                source: blocking::Cancelled.into(),
            });
        };
        let bytes = match piece {
            Piece::Bytes(bytes) => bytes,
            Piece::End => break,
        };
        hashes.update(&bytes);
        match &mut writer {
            Some(w) => w.write_all(&bytes).map_err(scratch)?,
            None => memory.extend_from_slice(&bytes),
        }
    }
    let store = match writer {
        Some(w) => Store::File(w.into_inner().map_err(|e| scratch(e.into_error()))?),
        None => Store::Memory(Bytes::from(memory)),
    };
    finish(entry, hashes, store)
}

impl Sealed {
    pub fn path(&self) -> &ArtifactPath {
        &self.0.entry.path
    }

    /// The voted manifest entry the copy was checked against.
    pub fn entry(&self) -> &ManifestEntry {
        &self.0.entry
    }

    pub fn size(&self) -> u64 {
        self.0.entry.size
    }

    pub fn sha256(&self) -> &Digest {
        &self.0.sha256
    }

    /// npm's `dist.integrity` spelling: `sha512-<base64>`.
    pub fn sha512(&self) -> &Digest {
        &self.0.sha512
    }

    /// npm's `dist.shasum`: lower-case hex SHA-1.
    pub fn sha1_hex(&self) -> &str {
        &self.0.sha1_hex
    }

    /// The whole copy in memory. For a file-backed copy this reads it (checking its sha256
    /// again); callers bound `size()` first.
    pub async fn bytes(&self) -> Result<Bytes, SealError> {
        let file = match &self.0.store {
            Store::Memory(bytes) => return Ok(bytes.clone()),
            Store::File(_) => self.clone(),
        };
        let path = self.path().clone();
        blocking::run(move |cancel: &Cancel| file.read_file(cancel))
            .await
            .map_err(|source| SealError::Blocking { path, source })?
    }

    /// `bytes` for code already on the blocking pool (`blocking::run`).
    pub fn bytes_blocking(&self, cancel: &Cancel) -> Result<Bytes, SealError> {
        self.read_file(cancel)
    }

    fn read_file(&self, cancel: &Cancel) -> Result<Bytes, SealError> {
        let file = match &self.0.store {
            Store::Memory(bytes) => return Ok(bytes.clone()),
            Store::File(file) => file,
        };
        let mut out = vec![0u8; self.size() as usize];
        let mut at = 0usize;
        while at < out.len() {
            cancel.check().map_err(|c| SealError::Blocking {
                path: self.path().clone(),
                source: c.into(),
            })?;
            let end = (at + READ_CHUNK).min(out.len());
            file.read_exact_at(&mut out[at..end], at as u64)
                .map_err(|source| SealError::Read {
                    path: self.path().clone(),
                    source,
                })?;
            at = end;
        }
        let got = sha256_of(&out);
        if &got != self.sha256() {
            return Err(SealError::Corrupt {
                path: self.path().clone(),
                got,
                want: self.sha256().clone(),
            });
        }
        Ok(Bytes::from(out))
    }

    /// The copy as a stream of pieces, for a request body: a file-backed copy is read a
    /// piece at a time and hashed on the way, and a difference from the sealed sha256 ends
    /// the stream with an error, which aborts the request before its last byte.
    pub fn stream(&self) -> ByteStream {
        match &self.0.store {
            Store::Memory(bytes) => futures::stream::iter([Ok(bytes.clone())]).boxed(),
            Store::File(_) => {
                let state = (self.clone(), 0u64, Some(Sha256::new()));
                futures::stream::try_unfold(state, |(sealed, at, hasher)| async move {
                    let Some(mut hasher) = hasher else {
                        return Ok(None);
                    };
                    let size = sealed.size();
                    if at >= size {
                        let got = digest(DigestAlgorithm::Sha256, &hasher.finalize());
                        if &got != sealed.sha256() {
                            return Err(io::Error::other(format!(
                                "{}: the sealed copy changed (sha256 {got}, sealed {})",
                                sealed.path(),
                                sealed.sha256()
                            )));
                        }
                        return Ok(None);
                    }
                    let len = (size - at).min(READ_CHUNK as u64) as usize;
                    let reader = sealed.clone();
                    let piece = tokio::task::spawn_blocking(move || {
                        let Store::File(file) = &reader.0.store else {
                            unreachable!("a file-backed stream reads a file")
                        };
                        let mut buf = vec![0u8; len];
                        file.read_exact_at(&mut buf, at).map(|()| buf)
                    })
                    .await
                    .map_err(io::Error::other)??;
                    hasher.update(&piece);
                    let next = at + piece.len() as u64;
                    Ok(Some((Bytes::from(piece), (sealed, next, Some(hasher)))))
                })
                .boxed()
            }
        }
    }

    /// The copy as a request body of `size()` bytes.
    pub fn body(&self) -> reqwest::Body {
        match &self.0.store {
            Store::Memory(bytes) => reqwest::Body::from(bytes.clone()),
            Store::File(_) => reqwest::Body::wrap_stream(self.stream()),
        }
    }
}

/// A sealed copy of `bytes` at `path`, held in memory, as the pipeline hands adapters their
/// files: for the adapters' unit tests.
#[cfg(test)]
pub(crate) fn sealed_for_test(path: &str, bytes: &[u8]) -> Sealed {
    Sealer::default()
        .seal_bytes(&entry_for_test(path, bytes), Bytes::copy_from_slice(bytes))
        .unwrap()
}

/// The manifest entry a vote would record for `bytes` at `path` (tests).
#[cfg(test)]
pub(crate) fn entry_for_test(path: &str, bytes: &[u8]) -> ManifestEntry {
    use sha3::Digest as _;
    ManifestEntry {
        path: ArtifactPath::new(path).unwrap(),
        size: bytes.len() as u64,
        sha3_256: Sha3Hex::from_bytes(sha3::Sha3_256::digest(bytes).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::entry_for_test as entry;

    fn stream_of(pieces: Vec<Vec<u8>>) -> ByteStream {
        futures::stream::iter(pieces.into_iter().map(|p| Ok(Bytes::from(p)))).boxed()
    }

    fn sealers() -> Vec<Sealer> {
        vec![
            Sealer::default(),
            Sealer {
                scratch: std::env::temp_dir(),
                memory_limit: 0,
            },
        ]
    }

    #[tokio::test]
    async fn a_copy_of_the_voted_bytes_is_sealed_with_the_platforms_digests() {
        let voted = b"the voted bytes, in three pieces".to_vec();
        for sealer in sealers() {
            let sealed = sealer
                .seal(
                    &entry("a.tgz", &voted),
                    stream_of(vec![
                        voted[..5].to_vec(),
                        voted[5..9].to_vec(),
                        voted[9..].to_vec(),
                    ]),
                )
                .await
                .unwrap();
            assert_eq!(sealed.bytes().await.unwrap(), Bytes::from(voted.clone()));
            assert_eq!(sealed.sha256(), &sha256_of(&voted));
            assert_eq!(
                sealed.sha512(),
                &digest(DigestAlgorithm::Sha512, &Sha512::digest(&voted))
            );
            assert_eq!(sealed.sha1_hex(), hex::encode(Sha1::digest(&voted)));
            let streamed: Vec<Bytes> = sealed
                .stream()
                .map(|p| p.unwrap())
                .collect::<Vec<_>>()
                .await;
            assert_eq!(streamed.concat(), voted);
        }
    }

    #[tokio::test]
    async fn other_bytes_are_refused_and_a_longer_file_is_not_read_to_its_end() {
        let voted = b"voted".to_vec();
        for sealer in sealers() {
            let err = sealer
                .seal(&entry("a", &voted), stream_of(vec![b"VOTED".to_vec()]))
                .await
                .unwrap_err();
            assert!(
                matches!(err, SealError::Mismatch { got_size: 5, .. }),
                "{err}"
            );
            // An endless source: reading stops one byte past the voted size.
            let endless = futures::stream::repeat_with(|| Ok(Bytes::from_static(b"voted"))).boxed();
            let err = sealer.seal(&entry("a", &voted), endless).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    SealError::Mismatch {
                        got_size: 6,
                        more: " or more",
                        ..
                    }
                ),
                "{err}"
            );
            let err = sealer
                .seal(&entry("a", &voted), stream_of(vec![b"vot".to_vec()]))
                .await
                .unwrap_err();
            assert!(err.to_string().contains("3 bytes, sha3-256"), "{err}");
            // Other bytes of the voted size: not "or more".
            let err = sealer
                .seal(&entry("a", &voted), stream_of(vec![b"VOTED".to_vec()]))
                .await
                .unwrap_err();
            assert!(
                err.to_string()
                    .contains("a: the file does not match the voted manifest (5 bytes, sha3-256"),
                "{err}"
            );
        }
    }

    /// Bytes of a file-backed copy, as every reader gets them: `bytes`, `bytes_blocking`,
    /// `stream` and `body`.
    async fn every_read(sealed: &Sealed) -> Vec<Result<Vec<u8>, String>> {
        let whole = sealed.bytes().await.map(|b| b.to_vec());
        let blocking = sealed.bytes_blocking(&Cancel::never()).map(|b| b.to_vec());
        let mut streamed = Vec::new();
        let mut stream = sealed.stream();
        let streamed = loop {
            match stream.next().await {
                None => break Ok(streamed),
                Some(Ok(piece)) => {
                    assert!(piece.len() <= READ_CHUNK, "{}", piece.len());
                    streamed.extend_from_slice(&piece);
                }
                Some(Err(e)) => break Err(e.to_string()),
            }
        };
        let body = axum::body::to_bytes(axum::body::Body::new(sealed.body()), usize::MAX)
            .await
            .map(|b| b.to_vec())
            .map_err(|e| format!("{e:?}"));
        vec![
            whole.map_err(|e| e.to_string()),
            blocking.map_err(|e| e.to_string()),
            streamed,
            body,
        ]
    }

    /// A copy larger than a read's piece, kept in a file: every reader gets exactly the
    /// sealed bytes, in pieces no larger than `READ_CHUNK`.
    #[tokio::test]
    async fn a_file_backed_copy_reads_back_whole_in_pieces() {
        let voted: Vec<u8> = (0..READ_CHUNK * 2 + 1000)
            .map(|i| (i % 251) as u8)
            .collect();
        let sealer = Sealer {
            scratch: std::env::temp_dir(),
            memory_limit: 1024,
        };
        let pieces = voted.chunks(100_000).map(<[u8]>::to_vec).collect();
        let sealed = sealer
            .seal(&entry("big.tgz", &voted), stream_of(pieces))
            .await
            .unwrap();
        assert_eq!(sealed.size(), voted.len() as u64);
        assert_eq!(sealed.sha256(), &sha256_of(&voted));
        for read in every_read(&sealed).await {
            assert!(read.as_ref() == Ok(&voted), "{:?}", read.map(|b| b.len()));
        }
    }

    /// A file-backed copy that changed after sealing (a fault of the scratch disk, or
    /// anything else writing to it) is never read back as good: every reader fails.
    #[tokio::test]
    async fn a_file_backed_copy_that_changed_is_not_read_back() {
        let voted: Vec<u8> = (0..READ_CHUNK + 10).map(|i| (i % 7) as u8).collect();
        let sealer = Sealer {
            scratch: std::env::temp_dir(),
            memory_limit: 0,
        };
        let sealed = sealer
            .seal(&entry("a.tgz", &voted), stream_of(vec![voted.clone()]))
            .await
            .unwrap();
        let Store::File(file) = &sealed.0.store else {
            panic!("{sealed:?} is kept in memory");
        };
        // One byte of the last piece.
        file.write_all_at(b"\xff", voted.len() as u64 - 1).unwrap();
        let reads = every_read(&sealed).await;
        for read in &reads[..2] {
            let err = read.as_ref().unwrap_err();
            assert!(
                err.starts_with("a.tgz: the sealed copy no longer has the sealed bytes (sha256 "),
                "{err}"
            );
        }
        let err = reads[2].as_ref().unwrap_err();
        assert!(
            err.starts_with("a.tgz: the sealed copy changed (sha256 "),
            "{err}"
        );
        assert!(reads[3].is_err(), "{:?}", reads[3].as_ref().map(Vec::len));
    }

    /// Reading a file-backed copy stops at the next piece once its job no longer waits.
    #[tokio::test]
    async fn a_read_of_a_file_backed_copy_stops_when_its_job_is_gone() {
        let voted = b"voted".to_vec();
        let sealer = Sealer {
            scratch: std::env::temp_dir(),
            memory_limit: 0,
        };
        let sealed = sealer
            .seal(&entry("a", &voted), stream_of(vec![voted.clone()]))
            .await
            .unwrap();
        let cancel = Cancel::never();
        cancel.raise();
        let err = sealed.bytes_blocking(&cancel).unwrap_err();
        assert!(matches!(err, SealError::Blocking { .. }), "{err}");
    }

    /// Copies up to `memory_limit` bytes stay in memory, larger ones go to an unnamed file;
    /// the debug output names the copy, never its bytes.
    #[tokio::test]
    async fn copies_up_to_the_memory_limit_stay_in_memory() {
        let voted = b"ten bytes!".to_vec();
        for (limit, store) in [(10, "memory"), (9, "file")] {
            let sealer = Sealer {
                scratch: std::env::temp_dir(),
                memory_limit: limit,
            };
            let sealed = sealer
                .seal(&entry("a.tgz", &voted), stream_of(vec![voted.clone()]))
                .await
                .unwrap();
            let shown = format!("{sealed:?}");
            assert_eq!(
                shown,
                format!(
                    "Sealed {{ path: ArtifactPath(\"a.tgz\"), size: 10, sha256: {:?}, store: \"{store}\" }}",
                    sha256_of(&voted)
                )
            );
            assert_eq!(sealed.entry(), &entry("a.tgz", &voted));
            for read in every_read(&sealed).await {
                assert!(read.as_ref() == Ok(&voted), "{store}: {read:?}");
            }
        }
    }

    /// A source whose reading side goes away without an end (its job was dropped) seals
    /// nothing.
    #[tokio::test]
    async fn a_source_that_ends_without_an_end_seals_nothing() {
        let voted = b"voted".to_vec();
        let owned = entry("a", &voted);
        let (tx, rx) = mpsc::channel::<Piece>(CHANNEL_DEPTH);
        tx.send(Piece::Bytes(Bytes::from(voted.clone())))
            .await
            .unwrap();
        drop(tx);
        let err = blocking::run(move |cancel: &Cancel| store(&owned, None, rx, cancel))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(
                err,
                SealError::Blocking {
                    source: BlockingError::Cancelled(_),
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_read_error_is_reported_as_such() {
        let voted = b"voted".to_vec();
        let failing = futures::stream::iter([
            Ok(Bytes::from_static(b"vo")),
            Err(io::Error::other("disk on fire")),
        ])
        .boxed();
        let err = Sealer::default()
            .seal(&entry("a", &voted), failing)
            .await
            .unwrap_err();
        assert!(matches!(err, SealError::Read { .. }), "{err}");
        assert!(err.to_string().contains("disk on fire"), "{err}");
    }

    #[test]
    fn sealing_bytes_checks_them_too() {
        let sealer = Sealer::default();
        assert!(
            sealer
                .seal_bytes(&entry("a", b"x"), Bytes::from_static(b"x"))
                .is_ok()
        );
        assert!(matches!(
            sealer.seal_bytes(&entry("a", b"x"), Bytes::from_static(b"y")),
            Err(SealError::Mismatch { .. })
        ));
    }
}

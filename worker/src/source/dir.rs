//! `dir`: a revision directory on disk, laid out as ATR lays it out:
//! `<root>/<project_key>/<version_key>/<revision_number>/…`. Files are hashed with SHA3-256,
//! streaming, as ATR's file manifest does.
//!
//! A revision directory is data a release manager (or an attacker who reached the disk)
//! controls, so every file is reached the same careful way, for the manifest walk and for
//! the artifacts a job names alike:
//! - below the configured root, each path component is opened with `openat(2)` relative to
//!   its parent and `O_NOFOLLOW`: a symbolic link anywhere (a linked directory too) is
//!   refused, never followed out of the revision;
//! - a file is opened with `O_NONBLOCK` and then checked with `fstat` to be a regular file
//!   before a byte is read: a FIFO, socket or device is refused and cannot hang a thread;
//! - reads stop one byte past the size `fstat` reported, so a file that grows while it is
//!   read is refused rather than read without end;
//! - the blocking work checks its job's cancel flag between pieces (`blocking.rs`), so a
//!   timed-out job stops reading.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use atr_dist_shared::job::ReleaseRef;
use atr_dist_shared::manifest::Sha3Hex;
use atr_dist_shared::names::{ArtifactPath, RevisionNumber};
use atr_dist_shared::{ManifestEntry, RevisionManifest};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use rustix::fs::{FileType, Mode, OFlags};
use sha3::{Digest as _, Sha3_256};

use super::{RevisionSource, SourceError};
use crate::blocking::{self, Cancel};
use crate::seal::ByteStream;

/// Pieces files are read in: a multi-gigabyte image never sits in memory whole, and the
/// cancel flag is checked between pieces.
const CHUNK: usize = 1024 * 1024;

pub struct DirSource {
    root: PathBuf,
}

/// Why a file of a revision cannot be read.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error("{0} is a symbolic link; revisions hold only files and directories")]
    Link(String),
    /// What was found, and what was wanted there (`wanted`).
    #[error("{0} is not {2} ({1}); revisions hold only regular files")]
    Special(String, &'static str, &'static str),
    #[error("{0} does not exist")]
    Missing(String),
    #[error("{0}: {1}")]
    Io(String, io::Error),
}

impl From<OpenError> for SourceError {
    fn from(e: OpenError) -> SourceError {
        match e {
            OpenError::Link(_) | OpenError::Special(..) => SourceError::Invalid(e.to_string()),
            OpenError::Missing(_) => SourceError::NotFound(e.to_string()),
            OpenError::Io(..) => SourceError::Unavailable(e.to_string()),
        }
    }
}

fn kind_name(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "of an unknown kind",
    }
}

fn wanted(want_dir: bool) -> &'static str {
    if want_dir {
        "a directory"
    } else {
        "a regular file"
    }
}

/// Opens `name` in `dir` without following a link, as a directory or as a regular file.
fn open_at(dir: &OwnedFd, name: &str, shown: &str, want_dir: bool) -> Result<OwnedFd, OpenError> {
    let flags = OFlags::RDONLY
        | OFlags::CLOEXEC
        | OFlags::NOFOLLOW
        | OFlags::NOCTTY
        | if want_dir {
            OFlags::DIRECTORY
        } else {
            // A FIFO opened for reading blocks until a writer comes; with NONBLOCK it opens
            // at once, and fstat below refuses it.
            OFlags::NONBLOCK
        };
    let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        // O_NOFOLLOW on a link: ELOOP; O_DIRECTORY on a link (or a file): ENOTDIR.
        Err(rustix::io::Errno::LOOP) => return Err(OpenError::Link(shown.to_owned())),
        Err(rustix::io::Errno::NOENT) => return Err(OpenError::Missing(shown.to_owned())),
        Err(rustix::io::Errno::NOTDIR) => {
            return Err(
                match rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                        OpenError::Link(shown.to_owned())
                    }
                    Ok(st) => OpenError::Special(
                        shown.to_owned(),
                        kind_name(FileType::from_raw_mode(st.st_mode)),
                        wanted(want_dir),
                    ),
                    Err(e) => OpenError::Io(shown.to_owned(), e.into()),
                },
            );
        }
        Err(e) => return Err(OpenError::Io(shown.to_owned(), e.into())),
    };
    let kind = rustix::fs::fstat(&fd)
        .map(|st| FileType::from_raw_mode(st.st_mode))
        .map_err(|e| OpenError::Io(shown.to_owned(), e.into()))?;
    match (want_dir, kind) {
        (true, FileType::Directory) | (false, FileType::RegularFile) => Ok(fd),
        (_, other) => Err(OpenError::Special(
            shown.to_owned(),
            kind_name(other),
            wanted(want_dir),
        )),
    }
}

/// An open regular file with the size it had when opened.
struct Opened {
    file: File,
    size: u64,
    shown: String,
}

impl Opened {
    fn new(fd: OwnedFd, shown: String) -> Result<Opened, OpenError> {
        let size = rustix::fs::fstat(&fd)
            .map_err(|e| OpenError::Io(shown.clone(), e.into()))?
            .st_size as u64;
        Ok(Opened {
            file: File::from(fd),
            size,
            shown,
        })
    }
}

impl DirSource {
    pub fn new(root: impl Into<PathBuf>) -> DirSource {
        DirSource { root: root.into() }
    }

    fn revision_dir(&self, release: &ReleaseRef, revision: &RevisionNumber) -> PathBuf {
        // Every part is a validated name without separators or `..`.
        self.root
            .join(release.project_key.as_str())
            .join(release.version_key.as_str())
            .join(revision.as_str())
    }

    /// The root directory, following links (it is the operator's setting).
    fn open_root(&self) -> Result<OwnedFd, OpenError> {
        let shown = || self.root.display().to_string();
        rustix::fs::open(
            &self.root,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .map_err(|e| match e {
            rustix::io::Errno::NOENT => OpenError::Missing(shown()),
            e => OpenError::Io(shown(), e.into()),
        })
    }

    /// The revision directory, opened component by component below the root (the root
    /// itself is the operator's configuration, and may be reached through links).
    fn open_revision(
        &self,
        release: &ReleaseRef,
        revision: &RevisionNumber,
    ) -> Result<OwnedFd, OpenError> {
        let mut dir = self.open_root()?;
        let mut shown = PathBuf::from(&self.root);
        for part in [
            release.project_key.as_str(),
            release.version_key.as_str(),
            revision.as_str(),
        ] {
            shown.push(part);
            dir = open_at(&dir, part, &shown.display().to_string(), true)?;
        }
        Ok(dir)
    }

    /// Opens one file of the revision by the rules above.
    fn open_file(
        &self,
        release: &ReleaseRef,
        revision: &RevisionNumber,
        path: &ArtifactPath,
    ) -> Result<Opened, OpenError> {
        let mut dir = self.open_revision(release, revision)?;
        let base = self.revision_dir(release, revision);
        let parts: Vec<&str> = path.as_str().split('/').collect();
        let (name, parents) = parts
            .split_last()
            .unwrap_or_else(|| unreachable!("an artifact path has at least one component"));
        let mut shown = base;
        for part in parents {
            shown.push(part);
            dir = open_at(&dir, part, &shown.display().to_string(), true)?;
        }
        shown.push(name);
        let shown = shown.display().to_string();
        let fd = open_at(&dir, name, &shown, false)?;
        Opened::new(fd, shown)
    }
}

/// Size and SHA3-256 of an open file, read in pieces up to one byte past its size at open.
fn hash_opened(opened: &Opened, cancel: &Cancel) -> Result<(u64, Sha3Hex), SourceError> {
    let mut hasher = Sha3_256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    loop {
        cancel
            .check()
            .map_err(|c| SourceError::Unavailable(format!("{}: {c}", opened.shown)))?;
        let n = opened
            .file
            .read_at(&mut buf, at)
            .map_err(|e| OpenError::Io(opened.shown.clone(), e))?;
        if n == 0 {
            break;
        }
        at += n as u64;
        if at > opened.size {
            return Err(SourceError::Invalid(format!(
                "{} grew while it was read (it had {} bytes when opened); a revision must not change",
                opened.shown, opened.size
            )));
        }
        hasher.update(&buf[..n]);
    }
    Ok((at, Sha3Hex::from_bytes(hasher.finalize().into())))
}

/// Size and SHA3-256 of a file named by the operator (not a revision's file: those go
/// through `DirSource`), for tools and tests.
pub fn hash_file(path: &Path) -> io::Result<(u64, Sha3Hex)> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let opened = Opened {
        file,
        size,
        shown: path.display().to_string(),
    };
    hash_opened(&opened, &Cancel::never()).map_err(|e| io::Error::other(e.to_string()))
}

fn utf8(name: &CStr, shown: &Path) -> Result<String, SourceError> {
    name.to_str().map(str::to_owned).map_err(|_| {
        SourceError::Invalid(format!(
            "{}/{} is not UTF-8",
            shown.display(),
            name.to_string_lossy()
        ))
    })
}

/// The manifest walk: every entry of `dir` (opened), recursively; only directories and
/// regular files are allowed.
fn walk(
    dir: OwnedFd,
    rel: &str,
    shown: &Path,
    out: &mut Vec<ManifestEntry>,
    cancel: &Cancel,
) -> Result<(), SourceError> {
    let io = |e: io::Error| SourceError::Unavailable(format!("{}: {e}", shown.display()));
    let listing = rustix::fs::Dir::read_from(&dir).map_err(|e| io(e.into()))?;
    let mut names = Vec::new();
    for entry in listing {
        let entry = entry.map_err(|e| io(e.into()))?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        names.push(utf8(name, shown)?);
    }
    names.sort();
    for name in names {
        cancel
            .check()
            .map_err(|c| SourceError::Unavailable(format!("{}: {c}", shown.display())))?;
        let child_shown = shown.join(&name);
        let child_rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let st = rustix::fs::statat(&dir, name.as_str(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io(e.into()))?;
        let shown_str = child_shown.display().to_string();
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                let sub = open_at(&dir, &name, &shown_str, true)?;
                walk(sub, &child_rel, &child_shown, out, cancel)?;
            }
            FileType::RegularFile => {
                let fd = open_at(&dir, &name, &shown_str, false)?;
                let opened = Opened::new(fd, shown_str)?;
                let path = ArtifactPath::new(&child_rel)
                    .map_err(|e| SourceError::Invalid(e.to_string()))?;
                let (size, sha3_256) = hash_opened(&opened, cancel)?;
                out.push(ManifestEntry {
                    path,
                    size,
                    sha3_256,
                });
            }
            FileType::Symlink => return Err(OpenError::Link(shown_str).into()),
            other @ (FileType::Fifo
            | FileType::Socket
            | FileType::CharacterDevice
            | FileType::BlockDevice
            | FileType::Unknown) => {
                return Err(OpenError::Special(shown_str, kind_name(other), wanted(false)).into());
            }
        }
    }
    Ok(())
}

/// An open file as a stream of pieces, read with `pread` on the blocking pool one piece at
/// a time (each read is short and bounded), ending one byte past the size it had when
/// opened: the sealer then sees a size that differs from the manifest's.
fn file_stream(opened: Opened) -> ByteStream {
    let limit = opened.size.saturating_add(1);
    let file = std::sync::Arc::new(opened.file);
    futures::stream::try_unfold((file, 0u64), move |(file, at)| async move {
        if at >= limit {
            return Ok(None);
        }
        let len = (limit - at).min(CHUNK as u64) as usize;
        let reader = std::sync::Arc::clone(&file);
        let piece = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            let n = reader.read_at(&mut buf, at)?;
            buf.truncate(n);
            Ok::<_, io::Error>(buf)
        })
        .await
        .map_err(io::Error::other)??;
        if piece.is_empty() {
            return Ok(None);
        }
        let next = at + piece.len() as u64;
        Ok(Some((Bytes::from(piece), (file, next))))
    })
    .boxed()
}

impl RevisionSource for DirSource {
    fn manifest<'a>(
        &'a self,
        release: &'a ReleaseRef,
        revision: &'a RevisionNumber,
    ) -> BoxFuture<'a, Result<RevisionManifest, SourceError>> {
        let shown = self.revision_dir(release, revision);
        async move {
            let dir = match self.open_revision(release, revision) {
                Ok(dir) => dir,
                Err(OpenError::Missing(_)) => {
                    return Err(SourceError::NotFound(format!(
                        "{} {revision} (no directory {})",
                        release.key(),
                        shown.display()
                    )));
                }
                Err(e) => return Err(e.into()),
            };
            // Hashing is blocking I/O: keep it off the async workers, and stop it when the
            // job goes away.
            blocking::run(move |cancel: &Cancel| {
                let mut entries = Vec::new();
                walk(dir, "", &shown, &mut entries, cancel)?;
                RevisionManifest::new(entries).map_err(|e| SourceError::Invalid(e.to_string()))
            })
            .await
            .map_err(|e| SourceError::Unavailable(format!("hashing the revision: {e}")))?
        }
        .boxed()
    }

    fn open<'a>(
        &'a self,
        release: &'a ReleaseRef,
        revision: &'a RevisionNumber,
        path: &'a ArtifactPath,
    ) -> BoxFuture<'a, Result<ByteStream, SourceError>> {
        async move {
            // A handful of openat calls, none of which can block on a FIFO.
            let opened = match self.open_file(release, revision, path) {
                Ok(opened) => opened,
                Err(OpenError::Missing(_)) => {
                    return Err(SourceError::NotFound(format!(
                        "{} {revision}: no file {path}",
                        release.key()
                    )));
                }
                Err(e) => return Err(e.into()),
            };
            Ok(file_stream(opened))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use atr_dist_shared::names::{ProjectKey, VersionKey};
    use rustix::io::FdFlags;

    use super::*;

    /// A revision `example/1.0.0/00001` under a temporary root, with `make` run in it; the
    /// revision's path, written out here rather than taken from the code under test.
    fn revision(make: impl FnOnce(&Path)) -> (tempfile::TempDir, DirSource, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("example/1.0.0/00001");
        std::fs::create_dir_all(&dir).unwrap();
        make(&dir);
        let source = DirSource::new(root.path());
        (root, source, dir)
    }

    fn release() -> ReleaseRef {
        ReleaseRef {
            project_key: ProjectKey::new("example").unwrap(),
            version_key: VersionKey::new("1.0.0").unwrap(),
        }
    }

    fn rev() -> RevisionNumber {
        RevisionNumber::new("00001").unwrap()
    }

    /// The worker may start a program (its embedded redis-server): a revision's
    /// descriptors must not be handed to it.
    #[test]
    fn a_revisions_descriptors_are_closed_when_a_program_starts() {
        let (_root, source, _) = revision(|dir| {
            std::fs::create_dir(dir.join("sub")).unwrap();
            std::fs::write(dir.join("sub/a.tgz"), b"a").unwrap();
        });
        let dir = source.open_revision(&release(), &rev()).unwrap();
        let sub = open_at(&dir, "sub", "sub", true).unwrap();
        let opened = source
            .open_file(&release(), &rev(), &ArtifactPath::new("sub/a.tgz").unwrap())
            .unwrap();
        let root = source.open_root().unwrap();
        for (what, flags) in [
            ("the root", rustix::io::fcntl_getfd(&root)),
            ("the revision", rustix::io::fcntl_getfd(&dir)),
            ("a directory", rustix::io::fcntl_getfd(&sub)),
            ("a file", rustix::io::fcntl_getfd(&opened.file)),
        ] {
            assert!(flags.unwrap().contains(FdFlags::CLOEXEC), "{what}");
        }
    }

    /// Where a path needs a directory and finds a file, the error says so (and does not
    /// call it a link, which is what a linked directory gives), naming it in full.
    #[test]
    fn a_file_where_a_directory_is_needed_is_named_for_what_it_is() {
        let (_root, source, dir) = revision(|dir| {
            std::fs::write(dir.join("sub"), b"not a directory").unwrap();
            std::os::unix::fs::symlink("/", dir.join("up")).unwrap();
        });
        let error = |path: &str| match source.open_file(
            &release(),
            &rev(),
            &ArtifactPath::new(path).unwrap(),
        ) {
            Ok(_) => panic!("{path} was opened"),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            error("sub/a.tgz"),
            format!(
                "{}/sub is not a directory (a regular file); revisions hold only regular files",
                dir.display()
            )
        );
        assert_eq!(
            error("up/etc.tgz"),
            format!(
                "{}/up is a symbolic link; revisions hold only files and directories",
                dir.display()
            )
        );
    }

    /// A root that is not a directory (a mistyped setting) is named as the culprit, not a
    /// directory below it.
    #[test]
    fn a_root_that_is_a_file_is_refused_as_itself() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let source = DirSource::new(file.path());
        let error = match source.open_revision(&release(), &rev()) {
            Ok(_) => panic!("a file was opened as the root"),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            error,
            format!(
                "{}: {}",
                file.path().display(),
                io::Error::from_raw_os_error(rustix::io::Errno::NOTDIR.raw_os_error())
            )
        );
    }

    /// The manifest is the revision's files with their sizes and SHA3-256 digests, worked
    /// out here independently: an empty file, a small one in a directory, and one of several
    /// read pieces. Opening a file streams exactly its bytes.
    #[tokio::test]
    async fn the_manifest_gives_each_files_size_and_digest_and_open_its_bytes() {
        let big: Vec<u8> = (0..CHUNK * 2 + CHUNK / 2)
            .map(|i| (i % 251) as u8)
            .collect();
        let files: [(&str, &[u8]); 3] = [("a.tgz", &big), ("empty.txt", b""), ("sub/b.txt", b"b")];
        let (_root, source, dir) = revision(|dir| {
            std::fs::create_dir(dir.join("sub")).unwrap();
            for (name, content) in files {
                std::fs::write(dir.join(name), content).unwrap();
            }
        });
        let want: Vec<ManifestEntry> = files
            .iter()
            .map(|(name, content)| crate::seal::entry_for_test(name, content))
            .collect();
        // The operator's `hash_file` first: it reads the same way, one file at a time.
        for entry in &want {
            let got = hash_file(&dir.join(entry.path.as_str())).unwrap();
            assert_eq!(got, (entry.size, entry.sha3_256.clone()), "{}", entry.path);
        }
        let manifest = source.manifest(&release(), &rev()).await.unwrap();
        assert_eq!(manifest.entries(), want.as_slice());
        for (name, content) in files {
            let path = ArtifactPath::new(name).unwrap();
            let mut stream = source.open(&release(), &rev(), &path).await.unwrap();
            let mut read = Vec::new();
            while let Some(piece) = stream.next().await {
                read.extend_from_slice(&piece.unwrap());
                // A stream that runs on past the file fails here, not by filling memory.
                if read.len() > content.len() + 1 {
                    break;
                }
            }
            assert!(read == content, "{name}: {} bytes read", read.len());
        }
    }
}

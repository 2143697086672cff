//! Files followed like `tail -F`: each poll expands the globs (a file created later is picked
//! up from its start), notices rotation (the path names another inode: the old file is read to
//! its end, the new one from its start), truncation (copytruncate: the file is shorter than
//! what was read, so it is read again from 0), and hands over the complete lines appended
//! since. Only whole lines advance the saved offset, so a restart never splits one.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io::{ErrorKind, Read, Seek, SeekFrom},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use super::{Line, Warnings, MAX_LINE};
use crate::logs::positions::Position;

/// Bytes read per `read` call.
const CHUNK: usize = 256 * 1024;
/// Bytes read from one file per poll at most, so one busy file cannot starve the others.
const BUDGET: u64 = 64 << 20;
/// How long a file whose name is gone stays open: its writer may append until it reopens the
/// new file (logrotate's postrotate); then its handle and its space on disk are let go.
const GONE_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Where a followed file is, for `blocker status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileStatus {
    pub path: String,
    pub inode: Option<u64>,
    /// Just past the last complete line read.
    pub offset: u64,
    pub exists: bool,
}

#[derive(Debug)]
struct Followed {
    file: Option<File>,
    inode: u64,
    /// Just past the last complete line handed over.
    offset: u64,
    /// What has been read past `offset`: the start of a line still being written.
    partial: Vec<u8>,
    /// Bytes of an overlong line being dropped (they follow `offset`).
    skipped: u64,
    exists: bool,
    /// When the name was first found gone while the file was open.
    gone_since: Option<std::time::Instant>,
}

impl Followed {
    fn closed() -> Self {
        Self {
            file: None,
            inode: 0,
            offset: 0,
            partial: Vec::new(),
            skipped: 0,
            exists: false,
            gone_since: None,
        }
    }

    /// Where the next read starts.
    fn read_to(&self) -> u64 {
        self.offset + self.skipped + self.partial.len() as u64
    }

    fn restart_at(&mut self, offset: u64) {
        self.offset = offset;
        self.partial.clear();
        self.skipped = 0;
    }
}

/// The files of one jail.
pub struct FileFollower {
    patterns: Vec<String>,
    files: BTreeMap<PathBuf, Followed>,
    /// Where the last run stopped, used once per path when it is first seen.
    saved: HashMap<String, Position>,
    warnings: Warnings,
    buffer: Vec<u8>,
    gone_grace: std::time::Duration,
}

fn has_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

impl FileFollower {
    /// Follows the files `patterns` name, resuming from `saved` positions.
    pub fn new(patterns: &[String], saved: HashMap<String, Position>) -> Self {
        Self {
            patterns: patterns.to_vec(),
            files: BTreeMap::new(),
            saved,
            warnings: Warnings::default(),
            buffer: vec![0; CHUNK],
            gone_grace: GONE_GRACE,
        }
    }

    /// Reads what was appended to every file since the last poll and hands each complete
    /// line to `sink`.
    pub fn poll(&mut self, sink: &mut dyn FnMut(Line<'_>)) {
        self.discover();
        let paths: Vec<PathBuf> = self.files.keys().cloned().collect();
        for path in paths {
            if let Err(err) = self.follow(&path, sink) {
                self.warnings
                    .warn(|| format!("reading {}: {err}; trying again", path.display()));
                if let Some(followed) = self.files.get_mut(&path) {
                    followed.file = None;
                }
            }
        }
        // A file a glob found that is gone and let go: a dated log rotated away for good.
        let named: Vec<&String> = self.patterns.iter().filter(|p| !has_glob(p)).collect();
        self.files.retain(|path, followed| {
            followed.exists
                || followed.file.is_some()
                || named.iter().any(|name| Path::new(name.as_str()) == path)
        });
    }

    /// Adds the paths the patterns name now.
    fn discover(&mut self) {
        for pattern in &self.patterns {
            if !has_glob(pattern) {
                self.files
                    .entry(PathBuf::from(pattern))
                    .or_insert_with(Followed::closed);
                continue;
            }
            let Ok(paths) = glob::glob(pattern) else {
                continue;
            };
            for path in paths.flatten() {
                if path.is_file() {
                    self.files.entry(path).or_insert_with(Followed::closed);
                }
            }
        }
    }

    fn follow(&mut self, path: &Path, sink: &mut dyn FnMut(Line<'_>)) -> std::io::Result<()> {
        let Some(followed) = self.files.get_mut(path) else {
            return Ok(());
        };
        let metadata = match std::fs::metadata(path) {
            Ok(metadata) => Some(metadata),
            Err(err) if err.kind() == ErrorKind::NotFound => None,
            Err(err) => return Err(err),
        };
        followed.exists = metadata.is_some();
        let Some(metadata) = metadata else {
            // Renamed away and not created again yet: finish the old file, and let it go once
            // its writer has had time to move on.
            if followed.file.is_some() {
                read_lines(followed, &mut self.buffer, &mut self.warnings, path, sink)?;
                let since = *followed
                    .gone_since
                    .get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= self.gone_grace {
                    flush_partial(followed, sink);
                    // A file made at the name later is another, even on the same inode.
                    *followed = Followed::closed();
                }
            }
            return Ok(());
        };
        followed.gone_since = None;
        if followed.file.is_some() && metadata.ino() != followed.inode {
            // Rotated: the rest of the old file, then the new one from its start.
            read_lines(followed, &mut self.buffer, &mut self.warnings, path, sink)?;
            flush_partial(followed, sink);
            followed.file = None;
            followed.inode = metadata.ino();
            followed.restart_at(0);
        }
        if followed.file.is_none() {
            let file = open_log(path)?;
            let inode = file.metadata()?.ino();
            let saved = self.saved.remove(&path.to_string_lossy().into_owned());
            // Reopened after an error, the same file goes on where it was.
            if inode != followed.inode {
                let start = match saved {
                    // The same file as when the last run stopped, not shorter: go on there.
                    Some(Position::File {
                        inode: saved,
                        offset,
                    }) if saved == inode && offset <= metadata.len() => offset,
                    // Another file since, or never read: from its start. The first time this
                    // reads a whole existing log; lines older than findtime cannot ban.
                    _ => 0,
                };
                followed.inode = inode;
                followed.restart_at(start);
            }
            followed.file = Some(file);
        }
        if metadata.len() < followed.read_to() {
            // Truncated in place (copytruncate): read it again from the start.
            followed.restart_at(0);
        }
        read_lines(followed, &mut self.buffer, &mut self.warnings, path, sink)
    }

    /// Every file's position, for saving.
    pub fn positions(&self) -> Vec<(String, Position)> {
        self.files
            .iter()
            .filter(|(_, followed)| followed.inode != 0)
            .map(|(path, followed)| {
                (
                    path.to_string_lossy().into_owned(),
                    Position::File {
                        inode: followed.inode,
                        offset: followed.offset,
                    },
                )
            })
            .collect()
    }

    pub fn status(&self) -> Vec<FileStatus> {
        self.files
            .iter()
            .map(|(path, followed)| FileStatus {
                path: path.to_string_lossy().into_owned(),
                inode: (followed.inode != 0).then_some(followed.inode),
                offset: followed.offset,
                exists: followed.exists,
            })
            .collect()
    }
}

/// A line left without its newline in a file that was rotated away: it is complete.
fn flush_partial(followed: &mut Followed, sink: &mut dyn FnMut(Line<'_>)) {
    if !followed.partial.is_empty() && followed.skipped == 0 {
        hand_over(&followed.partial, sink);
    }
    followed.partial.clear();
}

fn hand_over(line: &[u8], sink: &mut dyn FnMut(Line<'_>)) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = String::from_utf8_lossy(line);
    sink(Line {
        text: &text,
        time: None,
    });
}

/// Reads from the followed file's read position to its end (or the budget), handing over
/// complete lines and keeping the unfinished one.
fn read_lines(
    followed: &mut Followed,
    buffer: &mut [u8],
    warnings: &mut Warnings,
    path: &Path,
    sink: &mut dyn FnMut(Line<'_>),
) -> std::io::Result<()> {
    let read_to = followed.read_to();
    let Some(file) = followed.file.as_mut() else {
        return Ok(());
    };
    file.seek(SeekFrom::Start(read_to))?;
    let mut budget = BUDGET;
    while budget > 0 {
        let read = match file.read(buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        budget = budget.saturating_sub(read as u64);
        let mut chunk = &buffer[..read];
        while let Some(end) = memchr::memchr(b'\n', chunk) {
            let (head, rest) = (&chunk[..end], &chunk[end + 1..]);
            if followed.skipped > 0 {
                followed.offset += followed.skipped + head.len() as u64 + 1;
                followed.skipped = 0;
            } else if followed.partial.is_empty() {
                hand_over(head, sink);
                followed.offset += head.len() as u64 + 1;
            } else if followed.partial.len() + head.len() > MAX_LINE {
                followed.offset += (followed.partial.len() + head.len()) as u64 + 1;
                followed.partial.clear();
                warn_long(warnings, path);
            } else {
                followed.partial.extend_from_slice(head);
                hand_over(&followed.partial, sink);
                followed.offset += followed.partial.len() as u64 + 1;
                followed.partial.clear();
            }
            chunk = rest;
        }
        if followed.skipped > 0 {
            followed.skipped += chunk.len() as u64;
        } else if followed.partial.len() + chunk.len() > MAX_LINE {
            followed.skipped = (followed.partial.len() + chunk.len()) as u64;
            followed.partial.clear();
            warn_long(warnings, path);
        } else {
            followed.partial.extend_from_slice(chunk);
        }
    }
    Ok(())
}

fn warn_long(warnings: &mut Warnings, path: &Path) {
    warnings.warn(|| {
        format!(
            "{}: skipped a line longer than {} bytes",
            path.display(),
            MAX_LINE
        )
    });
}

/// Opens the log at `path`, which must be a regular file: whoever can write in a log's
/// directory could put a FIFO there (an open that never returns, stopping the jail) or a
/// device (`/dev/zero`, endless reads) instead. Non-blocking, so a FIFO is refused, not
/// waited on.
fn open_log(path: &Path) -> std::io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn lines(follower: &mut FileFollower) -> Vec<String> {
        let mut seen = Vec::new();
        follower.poll(&mut |line| seen.push(line.text.to_string()));
        seen
    }

    fn append(path: &Path, text: &[u8]) {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
            .write_all(text)
            .unwrap();
    }

    #[test]
    fn a_fifo_or_device_in_place_of_the_log_is_refused_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.log");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let zero = dir.path().join("zero.log");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let watched = [path.display().to_string(), zero.display().to_string()];
        let (done, polled) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut follower = FileFollower::new(&watched, HashMap::new());
            done.send(lines(&mut follower)).unwrap();
        });
        let seen = polled
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the poll returns");
        assert!(seen.is_empty(), "{} lines", seen.len());
    }

    #[test]
    fn complete_lines_only_across_polls() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.log");
        append(&path, b"one\ntw");
        let mut follower = FileFollower::new(&[path.display().to_string()], HashMap::new());
        assert_eq!(lines(&mut follower), ["one"]);
        assert!(lines(&mut follower).is_empty());
        append(&path, b"o\r\nthree\n");
        assert_eq!(lines(&mut follower), ["two", "three"]);
        let positions = follower.positions();
        assert_eq!(positions.len(), 1);
        match &positions[0].1 {
            Position::File { offset, .. } => assert_eq!(*offset, 15),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_file_created_later_and_one_matching_a_glob_are_followed_from_their_start() {
        let dir = tempfile::tempdir().unwrap();
        let later = dir.path().join("later.log");
        let pattern = dir.path().join("*.access.log");
        let mut follower = FileFollower::new(
            &[later.display().to_string(), pattern.display().to_string()],
            HashMap::new(),
        );
        assert!(lines(&mut follower).is_empty());
        assert!(!follower.status()[0].exists);
        append(&later, b"first\n");
        append(&dir.path().join("a.access.log"), b"a1\n");
        let mut seen = lines(&mut follower);
        seen.sort();
        assert_eq!(seen, ["a1", "first"]);
        append(&dir.path().join("b.access.log"), b"b1\n");
        assert_eq!(lines(&mut follower), ["b1"]);
    }

    #[test]
    fn a_file_whose_name_is_gone_is_let_go_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let (named, globbed) = (dir.path().join("auth.log"), dir.path().join("a.access.log"));
        append(&named, b"n1\n");
        append(&globbed, b"g1\nunfinished");
        let pattern = dir.path().join("*.access.log");
        let mut follower = FileFollower::new(
            &[named.display().to_string(), pattern.display().to_string()],
            HashMap::new(),
        );
        follower.gone_grace = std::time::Duration::ZERO;
        let mut seen = lines(&mut follower);
        seen.sort();
        assert_eq!(seen, ["g1", "n1"]);
        std::fs::remove_file(&named).unwrap();
        std::fs::remove_file(&globbed).unwrap();
        assert_eq!(lines(&mut follower), ["unfinished"]);
        assert!(follower
            .files
            .values()
            .all(|followed| followed.file.is_none()));
        // The named path waits for its file; the globbed one is forgotten.
        let watched: Vec<&PathBuf> = follower.files.keys().collect();
        assert_eq!(watched, [&named]);
        append(&named, b"n2\n");
        assert_eq!(lines(&mut follower), ["n2"]);
    }

    #[test]
    fn rename_and_create_rotation_reads_the_old_rest_then_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.log");
        append(&path, b"a\n");
        let mut follower = FileFollower::new(&[path.display().to_string()], HashMap::new());
        assert_eq!(lines(&mut follower), ["a"]);
        append(&path, b"b\nunfinished");
        std::fs::rename(&path, dir.path().join("auth.log.1")).unwrap();
        // Renamed, not yet created again.
        assert_eq!(lines(&mut follower), ["b"]);
        append(&path, b"c\n");
        assert_eq!(lines(&mut follower), ["unfinished", "c"]);
        append(&path, b"d\n");
        assert_eq!(lines(&mut follower), ["d"]);
    }

    #[test]
    fn copytruncate_reads_again_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.log");
        append(&path, b"first line\nsecond line\n");
        let mut follower = FileFollower::new(&[path.display().to_string()], HashMap::new());
        assert_eq!(lines(&mut follower).len(), 2);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        append(&path, b"new\n");
        assert_eq!(lines(&mut follower), ["new"]);
    }

    #[test]
    fn saved_positions_resume_on_the_same_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.log");
        append(&path, b"old\nnew\n");
        let inode = std::fs::metadata(&path).unwrap().ino();
        let name = path.display().to_string();
        let saved =
            |inode, offset| HashMap::from([(name.clone(), Position::File { inode, offset })]);
        let mut follower = FileFollower::new(std::slice::from_ref(&name), saved(inode, 4));
        assert_eq!(lines(&mut follower), ["new"]);
        let mut follower = FileFollower::new(std::slice::from_ref(&name), saved(inode + 1, 4));
        assert_eq!(lines(&mut follower), ["old", "new"], "another inode");
        let mut follower = FileFollower::new(std::slice::from_ref(&name), saved(inode, 400));
        assert_eq!(
            lines(&mut follower),
            ["old", "new"],
            "shorter than the offset"
        );
    }

    #[test]
    fn overlong_lines_are_skipped_and_invalid_utf8_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.log");
        let mut follower = FileFollower::new(&[path.display().to_string()], HashMap::new());
        append(&path, b"before\n");
        append(&path, &vec![b'x'; MAX_LINE + 10]);
        assert_eq!(lines(&mut follower), ["before"]);
        append(&path, &vec![b'y'; 3 * CHUNK]);
        append(&path, b"\xff\xfebad\n");
        append(&path, b"caf\xc3\xa9 \xff\n");
        assert_eq!(lines(&mut follower), ["café \u{fffd}"]);
        append(&path, b"after\n");
        assert_eq!(lines(&mut follower), ["after"]);
        let size = std::fs::metadata(&path).unwrap().len();
        assert_eq!(follower.status()[0].offset, size);
        // A long line that is not too long is handed over whole.
        let long = vec![b'z'; MAX_LINE - 1];
        append(&path, &long);
        append(&path, b"\n");
        let seen = lines(&mut follower);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].len(), MAX_LINE - 1);
    }
}

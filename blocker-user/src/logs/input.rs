//! Reading log files for the batch commands: plain or gzipped (rotated logs), line by line,
//! invalid UTF-8 replaced, and lines too long to be log lines skipped.

use std::{
    borrow::Cow,
    fs::File,
    io::{BufRead, BufReader, Read},
    path::Path,
};

use flate2::read::MultiGzDecoder;

use crate::{Error, Result};

/// Longer lines are not log lines (binary garbage, a runaway writer) and are skipped.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// What [`for_each_line`] read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinesRead {
    pub lines: u64,
    pub bytes: u64,
    /// Lines over [`MAX_LINE_BYTES`], not passed on.
    pub too_long: u64,
}

/// Calls `each` with the 1-based number and text of every line of `path` (gzipped or not,
/// told by its first bytes), without the line ending.
pub fn for_each_line(path: &Path, mut each: impl FnMut(u64, &str)) -> Result<LinesRead> {
    let unreadable = unreadable(path);
    let mut reader = open(path)?;
    let mut read = LinesRead::default();
    let mut line = Vec::with_capacity(4096);
    loop {
        line.clear();
        // Reads at most one byte past the limit, so a huge line costs no memory.
        let limit = (MAX_LINE_BYTES + 1) as u64;
        let taken = (&mut reader)
            .take(limit)
            .read_until(b'\n', &mut line)
            .map_err(unreadable)?;
        if taken == 0 {
            return Ok(read);
        }
        read.bytes += taken as u64;
        if line.last() != Some(&b'\n') && taken as u64 == limit {
            skip_rest_of_line(&mut reader, &mut read.bytes).map_err(unreadable)?;
            read.lines += 1;
            read.too_long += 1;
            continue;
        }
        read.lines += 1;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        let text: Cow<str> = String::from_utf8_lossy(text);
        each(read.lines, &text);
    }
}

/// `path`'s text: decompressed when it is gzipped, which its first bytes tell.
pub fn open(path: &Path) -> Result<Box<dyn BufRead>> {
    let unreadable = unreadable(path);
    let file = File::open(path).map_err(unreadable)?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let gzipped = reader
        .fill_buf()
        .map_err(unreadable)?
        .starts_with(&GZIP_MAGIC);
    Ok(if gzipped {
        Box::new(BufReader::with_capacity(
            1 << 20,
            MultiGzDecoder::new(reader),
        ))
    } else {
        Box::new(reader)
    })
}

fn unreadable(path: &Path) -> impl Fn(std::io::Error) -> Error + Copy + '_ {
    move |err| Error::UnreadableInput {
        path: path.display().to_string(),
        message: err.to_string(),
    }
}

fn skip_rest_of_line(reader: &mut dyn BufRead, bytes: &mut u64) -> std::io::Result<()> {
    loop {
        let buffer = reader.fill_buf()?;
        if buffer.is_empty() {
            return Ok(());
        }
        let (used, done) = match buffer.iter().position(|&b| b == b'\n') {
            Some(at) => (at + 1, true),
            None => (buffer.len(), false),
        };
        reader.consume(used);
        *bytes += used as u64;
        if done {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::{write::GzEncoder, Compression};

    use super::*;

    fn lines_of(path: &Path) -> (Vec<(u64, String)>, LinesRead) {
        let mut lines = Vec::new();
        let read = for_each_line(path, |n, line| lines.push((n, line.to_string()))).unwrap();
        (lines, read)
    }

    #[test]
    fn plain_and_gzipped_files_read_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let text = b"one\r\ntwo\n\nbad \xff byte\nlast without newline";
        let plain = dir.path().join("access.log");
        std::fs::write(&plain, text).unwrap();
        let gz = dir.path().join("access.log.1.gz");
        let mut encoder = GzEncoder::new(File::create(&gz).unwrap(), Compression::fast());
        encoder.write_all(text).unwrap();
        encoder.finish().unwrap();
        let expected = vec![
            (1, "one".to_string()),
            (2, "two".to_string()),
            (3, String::new()),
            (4, "bad \u{fffd} byte".to_string()),
            (5, "last without newline".to_string()),
        ];
        for path in [&plain, &gz] {
            let (lines, read) = lines_of(path);
            assert_eq!(lines, expected, "{}", path.display());
            assert_eq!(read.bytes, text.len() as u64);
        }
    }

    #[test]
    fn huge_lines_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let mut text = b"before\n".to_vec();
        text.extend(std::iter::repeat_n(b'x', 1 << 20));
        text.extend(b"\nafter\n");
        std::fs::write(&path, &text).unwrap();
        let (lines, read) = lines_of(&path);
        assert_eq!(
            lines,
            vec![(1, "before".to_string()), (3, "after".to_string())]
        );
        assert_eq!(read.too_long, 1);
        assert_eq!(read.lines, 3);
        assert_eq!(read.bytes, text.len() as u64);
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = for_each_line(Path::new("/nonexistent/access.log"), |_, _| {}).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/access.log"), "{err}");
    }
}

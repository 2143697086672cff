//! Reading log files line by line, whatever is in them: plain or gzipped (told by the magic
//! bytes, not the name), invalid UTF-8 read lossily, and lines too long to be log lines
//! skipped with a warning instead of growing memory without bound.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use crate::error::Error;

/// Lines longer than this are skipped (1 MiB lines still pass).
pub const MAX_LINE_BYTES: usize = 4 << 20;
/// Overlong lines warned about one by one; past this, only the total at the end.
const WARNINGS_PER_FILE: u64 = 5;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Opens `path` for reading, decompressing a gzip file.
pub fn open(path: &Path) -> Result<Box<dyn BufRead + Send>, Error> {
    let unreadable = |err: io::Error| Error::UnreadableInput {
        path: path.display().to_string(),
        message: err.to_string(),
    };
    let mut file = BufReader::with_capacity(256 << 10, File::open(path).map_err(unreadable)?);
    let gzipped = file
        .fill_buf()
        .map_err(unreadable)?
        .starts_with(&GZIP_MAGIC);
    Ok(if gzipped {
        Box::new(BufReader::with_capacity(
            256 << 10,
            MultiGzDecoder::new(file),
        ))
    } else {
        Box::new(file)
    })
}

/// Calls `on_line` with each line of `reader` (numbered from 1, without its line ending).
/// Returns how many lines were skipped as longer than [`MAX_LINE_BYTES`]; `name` names the
/// input in the warnings about them.
pub fn for_each_line(
    reader: &mut dyn BufRead,
    name: &str,
    mut on_line: impl FnMut(u64, &str),
) -> io::Result<u64> {
    let mut line = Vec::with_capacity(1024);
    let mut number = 0;
    let mut overlong = 0;
    loop {
        line.clear();
        let (read, complete) = read_bounded_line(reader, &mut line, MAX_LINE_BYTES)?;
        if read == 0 {
            break;
        }
        number += 1;
        if !complete {
            overlong += 1;
            if overlong <= WARNINGS_PER_FILE {
                tracing::warn!("{name} line {number}: longer than {MAX_LINE_BYTES} bytes, skipped");
            }
            continue;
        }
        while line
            .last()
            .is_some_and(|&byte| byte == b'\n' || byte == b'\r')
        {
            line.pop();
        }
        // Checking is faster than the lossy conversion's scan, and nearly every line passes.
        let text: Cow<str> = match std::str::from_utf8(&line) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(&line),
        };
        on_line(number, &text);
    }
    if overlong > WARNINGS_PER_FILE {
        tracing::warn!("{name}: {overlong} lines longer than {MAX_LINE_BYTES} bytes skipped");
    }
    Ok(number)
}

/// Reads up to the next newline into `line`, keeping at most `max` bytes (a longer line is
/// read past, never held); the bytes consumed and whether the line fit.
pub fn read_bounded_line(
    reader: &mut dyn BufRead,
    line: &mut Vec<u8>,
    max: usize,
) -> io::Result<(usize, bool)> {
    let mut consumed = 0;
    let mut fits = true;
    loop {
        let buffer = match reader.fill_buf() {
            Ok(buffer) => buffer,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        if buffer.is_empty() {
            return Ok((consumed, fits));
        }
        let (take, done) = match memchr::memchr(b'\n', buffer) {
            Some(newline) => (newline + 1, true),
            None => (buffer.len(), false),
        };
        if fits && line.len() + take <= max {
            line.extend_from_slice(&buffer[..take]);
        } else {
            fits = false;
            line.clear();
        }
        reader.consume(take);
        consumed += take;
        if done {
            return Ok((consumed, fits));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn lines_of(path: &Path) -> (Vec<(u64, String)>, u64) {
        let mut reader = open(path).expect("opens");
        let mut lines = Vec::new();
        let total = for_each_line(&mut reader, "test", |number, line| {
            lines.push((number, line.to_string()))
        })
        .expect("reads");
        assert!(total >= lines.len() as u64);
        (lines, total)
    }

    #[test]
    fn plain_gzip_garbage_and_overlong_lines() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut content = b"first\r\nsecond \xff\xfe binary\n".to_vec();
        content.extend(vec![b'x'; MAX_LINE_BYTES + 10]);
        content.extend(b"\nafter the long one\n");
        content.extend(vec![b'y'; 1 << 20]);
        content.extend(b"\nlast without newline");
        let plain = dir.path().join("auth.log");
        std::fs::write(&plain, &content).expect("written");
        let gzipped = dir.path().join("auth.log.1.gz");
        let mut encoder = flate2::write::GzEncoder::new(
            File::create(&gzipped).expect("created"),
            flate2::Compression::fast(),
        );
        encoder.write_all(&content).expect("compressed");
        encoder.finish().expect("finished");
        for path in [&plain, &gzipped] {
            let (lines, total) = lines_of(path);
            assert_eq!(total, 6);
            let numbers: Vec<u64> = lines.iter().map(|(number, _)| *number).collect();
            assert_eq!(numbers, [1, 2, 4, 5, 6]);
            assert_eq!(lines[0].1, "first");
            assert_eq!(lines[1].1, "second \u{fffd}\u{fffd} binary");
            assert_eq!(lines[2].1, "after the long one");
            assert_eq!(lines[3].1.len(), 1 << 20);
            assert_eq!(lines[4].1, "last without newline");
        }
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let err = open(Path::new("/nonexistent/auth.log"))
            .err()
            .expect("an error");
        assert_eq!(
            err.to_string(),
            "cannot read /nonexistent/auth.log: No such file or directory (os error 2)"
        );
        assert!(err.is_bad_input());
    }
}

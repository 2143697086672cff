//! A list file (or stdin) as numbered UTF-8 lines, read as needed, never whole.

use std::{io::BufRead, path::Path};

use crate::{Error, Result};

/// How messages name the list at `path`.
pub fn source_name(path: &Path) -> String {
    if path == Path::new("-") {
        "stdin".to_string()
    } else {
        path.display().to_string()
    }
}

/// Numbered lines, read as they are asked for.
pub type Lines = Box<dyn Iterator<Item = Result<(usize, String)>>>;

/// The longest line a list may hold. An address or prefix with its comment fits many times
/// over; a file without newlines is refused at this length instead of read into memory whole.
pub const MAX_LINE: usize = 64 * 1024;

/// The lines of `path` (`-` for stdin) numbered from 1; a line that is not UTF-8, or longer
/// than [`MAX_LINE`], is an error naming its number.
pub fn lines(path: &Path, source: &str) -> Result<Lines> {
    let unreadable = {
        let source = source.to_string();
        move |message: String| Error::UnreadableInput {
            path: source.clone(),
            message,
        }
    };
    let reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(path).map_err(|err| unreadable(err.to_string()))?;
        Box::new(std::io::BufReader::with_capacity(1 << 16, file))
    };
    let lines = CappedLines {
        reader,
        number: 0,
        done: false,
    };
    Ok(Box::new(lines.map(move |line| {
        let (number, bytes) = line.map_err(&unreadable)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| unreadable(format!("line {number} is not UTF-8 text")))?;
        Ok((number, text))
    })))
}

/// Numbered lines without their newline, as `BufRead::split` gives them, but never one longer
/// than [`MAX_LINE`]: that is an error, and the end.
struct CappedLines<R> {
    reader: R,
    number: usize,
    done: bool,
}

impl<R: BufRead> Iterator for CappedLines<R> {
    type Item = std::result::Result<(usize, Vec<u8>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut line = Vec::new();
        loop {
            let available = match self.reader.fill_buf() {
                Ok(available) => available,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    self.done = true;
                    return Some(Err(err.to_string()));
                }
            };
            if available.is_empty() {
                self.done = true;
                if line.is_empty() {
                    return None;
                }
                break;
            }
            let newline = available.iter().position(|&byte| byte == b'\n');
            let taken = newline.unwrap_or(available.len());
            line.extend_from_slice(&available[..taken]);
            self.reader.consume(newline.map_or(taken, |at| at + 1));
            if line.len() > MAX_LINE {
                self.done = true;
                return Some(Err(format!(
                    "line {} is longer than {} KiB",
                    self.number + 1,
                    MAX_LINE / 1024
                )));
            }
            if newline.is_some() {
                break;
            }
        }
        self.number += 1;
        Some(Ok((self.number, line)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8]) -> Vec<std::result::Result<(usize, Vec<u8>), String>> {
        CappedLines {
            reader: std::io::BufReader::with_capacity(7, bytes),
            number: 0,
            done: false,
        }
        .collect()
    }

    #[test]
    fn lines_come_as_split_gives_them() {
        for bytes in [
            &b""[..],
            b"a",
            b"a\n",
            b"a\n\n",
            b"\nb\nccc\n",
            b"0123456789abcdef\nx",
        ] {
            let split: Vec<_> = bytes
                .split(|&byte| byte == b'\n')
                .map(<[u8]>::to_vec)
                .collect();
            // `split` of a slice gives a last empty piece after a final newline; a reader's
            // lines do not.
            let expected: Vec<_> = match split.split_last() {
                Some((last, rest)) if last.is_empty() => rest.to_vec(),
                _ => split,
            };
            let expected: Vec<_> = expected
                .into_iter()
                .enumerate()
                .map(|(index, line)| Ok((index + 1, line)))
                .collect();
            assert_eq!(read(bytes), expected, "{bytes:?}");
        }
    }

    #[test]
    fn a_file_without_newlines_is_refused_not_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list.txt");
        std::fs::write(&path, vec![b'1'; 4 * MAX_LINE]).unwrap();
        let mut read = lines(&path, "list.txt").unwrap();
        let err = read.next().expect("a line").unwrap_err().to_string();
        assert!(err.contains("line 1 is longer than 64 KiB"), "{err}");
        assert!(read.next().is_none());
    }

    #[test]
    fn a_line_longer_than_the_cap_is_an_error_and_the_end() {
        let mut bytes = b"10.0.0.1\n".to_vec();
        bytes.extend(std::iter::repeat_n(b'1', MAX_LINE + 1));
        bytes.extend_from_slice(b"\n10.0.0.2\n");
        let lines = read(&bytes);
        assert_eq!(lines.len(), 2, "stops at the long line");
        assert_eq!(lines[0], Ok((1, b"10.0.0.1".to_vec())));
        let err = lines[1].clone().unwrap_err();
        assert!(err.contains("line 2 is longer than 64 KiB"), "{err}");
    }
}

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

/// The lines of `path` (`-` for stdin) numbered from 1; a line that is not UTF-8 is an error
/// naming its number.
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
    Ok(Box::new(reader.split(b'\n').enumerate().map(
        move |(index, line)| {
            let number = index + 1;
            let bytes = line.map_err(|err| unreadable(err.to_string()))?;
            let text = String::from_utf8(bytes)
                .map_err(|_| unreadable(format!("line {number} is not UTF-8 text")))?;
            Ok((number, text))
        },
    )))
}

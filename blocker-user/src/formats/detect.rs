//! `--format auto`: the format of a list told from its first lines, with the line that told.

use std::{io::Read, path::Path};

use super::Format;
use crate::{addr::parse_net, text, Error, Result};

/// Lines read before a list of bare addresses is taken for the plain format.
const LOOKAHEAD: usize = 100;

/// Lines of any kind (blank lines and comments tell nothing) read before detection decides
/// from what it has: they are held until then, and a list is streamed, never held whole.
const MAX_HEAD_LINES: usize = 10_000;

/// A detected format, why, and the lines read to find it (to be parsed first).
#[derive(Debug)]
pub struct Detected {
    pub format: Format,
    pub because: String,
    pub head: Vec<(usize, String)>,
}

/// Whether the file at `path` starts like an SQLite database.
pub fn is_sqlite(path: &Path) -> bool {
    let mut magic = [0u8; 16];
    path != Path::new("-")
        && std::fs::File::open(path)
            .and_then(|mut file| file.read_exact(&mut magic))
            .is_ok()
        && &magic == b"SQLite format 3\0"
}

/// What one line says about the format.
enum Clue {
    /// Only this format writes such a line.
    Sure(Format),
    /// A bare address: plain, netset or spamhaus.
    Address,
    /// A comment that hints at a format of bare addresses.
    Hint(Format),
    Nothing,
    Unknown,
}

fn clue(line: &str) -> Clue {
    let line = line.trim();
    let lower = line.to_ascii_lowercase();
    if line.is_empty() {
        return Clue::Nothing;
    }
    if let Some(comment) = line.strip_prefix('#') {
        if comment.to_ascii_lowercase().contains("firehol") {
            return Clue::Hint(Format::Netset);
        }
        return Clue::Nothing;
    }
    if line.starts_with(';') {
        return Clue::Hint(Format::Spamhaus);
    }
    if line.starts_with('$') && line.contains('{') {
        return Clue::Sure(Format::PerlHash);
    }
    let starts = |prefixes: &[&str]| prefixes.iter().any(|p| lower.starts_with(p));
    if starts(&[
        "deny from",
        "allow from",
        "order ",
        "<limit",
        "require not ip",
        "require ip",
    ]) {
        return Clue::Sure(Format::Htaccess);
    }
    if starts(&["deny ", "allow "]) && line.ends_with(';') {
        return Clue::Sure(Format::Nginx);
    }
    if starts(&["create ", "add "]) {
        return Clue::Sure(Format::Ipset);
    }
    if line.starts_with('*') || line.starts_with(':') || line.starts_with("-A ") {
        return Clue::Sure(Format::Iptables);
    }
    let first = line.split([' ', '\t', ';', '#']).next().unwrap_or("");
    if parse_net(first).is_err() {
        return Clue::Unknown;
    }
    if line.contains(';') {
        Clue::Sure(Format::Spamhaus)
    } else if line.contains("expires=") {
        Clue::Sure(Format::Plain)
    } else {
        Clue::Address
    }
}

/// Reads lines from `lines` until one tells the format.
pub fn detect(
    lines: &mut dyn Iterator<Item = Result<(usize, String)>>,
    source: &str,
) -> Result<Detected> {
    let mut head = Vec::new();
    let mut hint = None;
    let mut addresses = 0;
    let mut first_address = None;
    for line in &mut *lines {
        let (number, text) = line?;
        let found = match clue(&text) {
            Clue::Sure(format) => Some(format),
            Clue::Hint(format) => {
                hint.get_or_insert((format, number));
                None
            }
            Clue::Address => {
                addresses += 1;
                first_address.get_or_insert(number);
                None
            }
            Clue::Nothing => None,
            Clue::Unknown if addresses == 0 && hint.is_none() => {
                return Err(Error::InvalidListLine {
                    path: source.to_string(),
                    line: number,
                    message: format!(
                        "cannot tell the list's format from {:?}: name it with --format",
                        shorten(&text)
                    ),
                });
            }
            // Past the first addresses, the plain parser names the bad line.
            Clue::Unknown => None,
        };
        if let Some(format) = found {
            let because = format!("line {number} reads like {format}: {:?}", shorten(&text));
            head.push((number, text));
            return Ok(Detected {
                format,
                because,
                head,
            });
        }
        head.push((number, text));
        if addresses >= LOOKAHEAD {
            break;
        }
        if head.len() >= MAX_HEAD_LINES {
            if addresses == 0 && hint.is_none() {
                return Err(Error::InvalidListLine {
                    path: source.to_string(),
                    line: number,
                    message: format!(
                        "no address nor format mark in the first {MAX_HEAD_LINES} lines: name \
                         the format with --format"
                    ),
                });
            }
            break;
        }
    }
    let (format, because) = match (hint, first_address) {
        (Some((format, number)), _) => (format, format!("line {number} is a {format} comment")),
        (None, Some(number)) => (
            Format::Plain,
            format!("line {number} and the ones after it are bare addresses"),
        ),
        (None, None) => (Format::Plain, "the list holds no entry".to_string()),
    };
    Ok(Detected {
        format,
        because,
        head,
    })
}

fn shorten(line: &str) -> String {
    let line = line.trim();
    let short: String = line.chars().take(60).collect();
    text::escape(&short).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detect_text(text: &str) -> Result<Detected> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(index, line)| Ok((index + 1, line.to_string())));
        detect(&mut lines, "list")
    }

    #[test]
    fn each_format_is_told_by_its_lines() {
        for (text, format, because) in [
            (
                "# PERMANENT BLACKLIST\n<Limit GET POST PUT>\n",
                Format::Htaccess,
                "line 2 reads like htaccess",
            ),
            (
                "$banned_ip{\"1.2.3\"}=qq(x);\n",
                Format::PerlHash,
                "line 1 reads like perl-hash",
            ),
            ("deny 1.2.3.4;\n", Format::Nginx, "line 1 reads like nginx"),
            ("create s hash:ip\n", Format::Ipset, "line 1"),
            (
                "# Generated by iptables-save\n*filter\n",
                Format::Iptables,
                "line 2",
            ),
            (
                "; Spamhaus DROP\n1.2.3.0/24 ; SBL1\n",
                Format::Spamhaus,
                "line 2",
            ),
            ("1.2.3.0/24 ; SBL1\n", Format::Spamhaus, "line 1"),
            (
                "#\n# FireHOL netset\n1.2.3.0/24\n",
                Format::Netset,
                "line 2 is a netset comment",
            ),
            (
                "10.0.0.1\n10.0.0.2 # x\n",
                Format::Plain,
                "line 1 and the ones after",
            ),
            (
                "10.0.0.1\n10.0.0.2 expires=2027-01-01T00:00:00Z\n",
                Format::Plain,
                "line 2 reads like plain",
            ),
        ] {
            let detected = detect_text(text).unwrap();
            assert_eq!(detected.format, format, "{text}");
            assert!(
                detected.because.starts_with(because),
                "{}",
                detected.because
            );
            assert!(!detected.head.is_empty());
        }
    }

    #[test]
    fn lines_that_tell_nothing_are_held_only_up_to_a_bound() {
        let mut lines = std::iter::repeat_with(|| Ok((1, String::new())))
            .take(1_000_000)
            .chain(std::iter::once(Ok((1_000_001, "192.0.2.1".to_string()))));
        // Nothing told the format within the bound: named, not guessed.
        let err = detect(&mut lines, "list").unwrap_err();
        assert!(err.to_string().contains("--format"), "{err}");
        assert_eq!(lines.count(), 1_000_001 - MAX_HEAD_LINES);
        // An address seen by then: plain, and the rest is left to the parser, which streams it.
        let mut lines = std::iter::once(Ok((1, "192.0.2.1".to_string())))
            .chain(std::iter::repeat_with(|| Ok((2, String::new()))).take(1_000_000));
        let detected = detect(&mut lines, "list").unwrap();
        assert_eq!(detected.format, Format::Plain);
        assert_eq!(detected.head.len(), MAX_HEAD_LINES);
        assert_eq!(lines.count(), 1_000_001 - MAX_HEAD_LINES);
    }

    #[test]
    fn an_unknown_first_line_asks_for_the_format() {
        let err = detect_text("\nBuilding the 3G Blacklist\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "list:2: cannot tell the list's format from \"Building the 3G Blacklist\": name it with --format"
        );
    }
}

//! Block-list formats other tools write, read into one stream of [`Entry`] for `blocker import`
//! and written back by `blocker export`. Each format has its own file; `detect` names the format
//! of a list from its first lines; `reader` turns a file into numbered lines.
//!
//! A line-based format is a [`LineFormat`]: it sees one line at a time (keeping whatever
//! section state it needs, like `.htaccess`'s PERMANENT / TEMPORARY headings) and pushes the
//! entries the line holds. fail2ban's database is read with SQL instead.

mod dates;
mod detect;
pub mod export;
mod fail2ban_db;
#[cfg(test)]
mod fixtures;
mod htaccess;
mod ipset;
mod iptables;
mod merge;
mod netset;
mod nginx;
mod octets;
mod perl_hash;
mod plain;
pub(crate) mod reader;
mod spamhaus;

use std::{collections::VecDeque, fmt, path::Path};

use ipnet::IpNet;
use jiff::{SignedDuration, Timestamp};

use crate::{Error, Result};

pub use dates::creation_date;
pub use merge::covered_by_wider;

/// The formats `blocker import --format` reads.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// Tell the format from the content, and say which it found.
    Auto,
    /// blocker's own: `ADDR_OR_CIDR [expires=RFC3339] [# reason]`.
    Plain,
    /// Apache `deny from` / `Require not ip` lines, with partial octets.
    Htaccess,
    /// nginx `deny ADDR;` lines.
    Nginx,
    /// `ipset save` output (hash:ip, hash:net).
    Ipset,
    /// `iptables-save` / `ip6tables-save` DROP and REJECT rules with `-s`.
    Iptables,
    /// Spamhaus DROP: `CIDR ; SBL123`.
    Spamhaus,
    /// FireHOL netset: one address or CIDR a line, `#` comments.
    Netset,
    /// Perl `$banned_ip{"ADDR"}=qq(reason);` hashes, with partial-octet keys.
    PerlHash,
    /// fail2ban's SQLite database: the bans in force.
    #[value(name = "fail2ban-db")]
    #[serde(rename = "fail2ban-db")]
    Fail2banDb,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Format::Auto => "auto",
            Format::Plain => "plain",
            Format::Htaccess => "htaccess",
            Format::Nginx => "nginx",
            Format::Ipset => "ipset",
            Format::Iptables => "iptables",
            Format::Spamhaus => "spamhaus",
            Format::Netset => "netset",
            Format::PerlHash => "perl-hash",
            Format::Fail2banDb => "fail2ban-db",
        };
        f.write_str(name)
    }
}

/// One entry of a list, whatever its format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub net: IpNet,
    pub reason: Option<String>,
    /// When the list says the entry was made (a date in its comment).
    pub created_at: Option<Timestamp>,
    /// Why a word of the comment written as a date is not taken as the creation date.
    pub undated_because: Option<String>,
    pub expires_at: Option<Timestamp>,
    /// An allowlist entry (`allow from`, `allow ADDR;`), not a ban.
    pub allow: bool,
    /// The line (or, for a database, the row) it came from.
    pub line: usize,
    /// The text as given, when host bits had to be cleared.
    pub normalized_from: Option<String>,
}

impl Entry {
    /// A ban of `net` with nothing else known, for a parser to fill in.
    fn ban(net: IpNet) -> Self {
        Entry {
            net,
            reason: None,
            created_at: None,
            undated_because: None,
            expires_at: None,
            allow: false,
            line: 0,
            normalized_from: None,
        }
    }

    /// A ban of the address or CIDR `text`, host bits cleared (and said so).
    fn parse_ban(text: &str) -> std::result::Result<Self, String> {
        let parsed = crate::addr::parse_net(text).map_err(|err| err.to_string())?;
        Ok(Entry {
            normalized_from: parsed.normalized_from,
            ..Entry::ban(parsed.net)
        })
    }
}

/// What the formats need beyond the text.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The time entries' relative expiries (ipset timeouts, fail2ban bantimes) count from.
    pub now: Timestamp,
    /// How long an entry of a temporary section (`# TEMPORARY BLACKLIST`) is banned for.
    pub temporary_for: SignedDuration,
}

/// A line-based format: parses one line, pushing the entries it holds (none for a comment or
/// a line the format understands and skips). The message of an error names what is wrong; the
/// caller adds file, line and format.
trait LineFormat {
    fn parse_line(
        &mut self,
        line: &str,
        options: &Options,
        out: &mut Vec<Entry>,
    ) -> std::result::Result<(), String>;
}

fn line_format(format: Format) -> Box<dyn LineFormat> {
    match format {
        Format::Plain | Format::Auto => Box::new(plain::Plain),
        Format::Htaccess => Box::new(htaccess::Htaccess::default()),
        Format::Nginx => Box::new(nginx::Nginx),
        Format::Ipset => Box::new(ipset::Ipset::default()),
        Format::Iptables => Box::new(iptables::Iptables),
        Format::Spamhaus => Box::new(spamhaus::Spamhaus),
        Format::Netset => Box::new(netset::Netset),
        Format::PerlHash => Box::new(perl_hash::PerlHash),
        Format::Fail2banDb => unreachable!("fail2ban's database is not read by lines"),
    }
}

/// A list to read: where, in which format, with what options.
#[derive(Debug, Clone, Copy)]
pub struct List<'a> {
    /// The file, or `-` for stdin.
    pub path: &'a Path,
    pub format: Format,
    pub options: Options,
}

/// An open list: its entries as they are read, the format read, and whether it was detected.
pub struct Stream {
    pub entries: Box<dyn Iterator<Item = Result<Entry>>>,
    pub format: Format,
    /// How the format was told, when `--format auto` had to find it.
    pub detected: Option<String>,
    pub source: String,
}

/// Whether the file at `path` is an SQLite database (read as fail2ban's by [`stream`]).
pub fn is_database(path: &Path) -> bool {
    detect::is_sqlite(path)
}

/// Opens the list at `path` (`-` for stdin) in `format`, detecting it for [`Format::Auto`].
/// Entries are parsed as they are read; the first bad line ends the stream with an error
/// naming the file, the line and the format.
pub fn stream(path: &Path, format: Format, options: Options) -> Result<Stream> {
    let source = reader::source_name(path);
    if format == Format::Fail2banDb || (format == Format::Auto && detect::is_sqlite(path)) {
        let entries = fail2ban_db::read(path, &source, &options)?;
        let detected = (format == Format::Auto)
            .then(|| "the file is an SQLite database: fail2ban's".to_string());
        return Ok(Stream {
            entries: Box::new(entries.into_iter().map(Ok)),
            format: Format::Fail2banDb,
            detected,
            source,
        });
    }
    let mut lines = reader::lines(path, &source)?;
    let (format, detected, head) = if format == Format::Auto {
        let found = detect::detect(&mut lines, &source)?;
        (found.format, Some(found.because), found.head)
    } else {
        (format, None, Vec::new())
    };
    // A plain list in a file is read again from its start by listfile's own reader, the one
    // tuned for lists of millions; from stdin, the lines read to detect it come first.
    if format == Format::Plain && path != Path::new("-") {
        let (entries, source) = crate::listfile::stream(path)?;
        return Ok(Stream {
            entries: Box::new(entries.map(move |entry| {
                entry.map(plain::entry).map_err(move |err| match err {
                    Error::InvalidListLine {
                        path,
                        line,
                        message,
                    } => Error::InvalidListLine {
                        path,
                        line,
                        message: format!("{format} format: {message}"),
                    },
                    other => other,
                })
            })),
            format,
            detected,
            source,
        });
    }
    let parser = line_format(format);
    let entries = Entries {
        lines: Box::new(head.into_iter().map(Ok).chain(lines)),
        parser,
        options,
        format,
        source: source.clone(),
        pending: VecDeque::new(),
        scratch: Vec::new(),
    };
    Ok(Stream {
        entries: Box::new(entries),
        format,
        detected,
        source,
    })
}

/// The entries of a line-based list, in order.
struct Entries {
    lines: reader::Lines,
    parser: Box<dyn LineFormat>,
    options: Options,
    format: Format,
    source: String,
    pending: VecDeque<Entry>,
    scratch: Vec<Entry>,
}

impl Iterator for Entries {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        loop {
            if let Some(entry) = self.pending.pop_front() {
                return Some(Ok(entry));
            }
            let (number, text) = match self.lines.next()? {
                Ok(line) => line,
                Err(err) => return Some(Err(err)),
            };
            let text = text.strip_suffix('\r').unwrap_or(&text);
            if let Err(message) = self
                .parser
                .parse_line(text, &self.options, &mut self.scratch)
            {
                self.scratch.clear();
                return Some(Err(Error::InvalidListLine {
                    path: self.source.clone(),
                    line: number,
                    message: format!("{} format: {message}", self.format),
                }));
            }
            for mut entry in self.scratch.drain(..) {
                entry.line = number;
                if let Some(reason) = &entry.reason {
                    if let Err(err) = crate::text::check_reason(reason) {
                        return Some(Err(Error::InvalidListLine {
                            path: self.source.clone(),
                            line: number,
                            message: format!("{} format: {err}", self.format),
                        }));
                    }
                }
                self.pending.push_back(entry);
            }
        }
    }
}

/// The text of a comment as a reason: trimmed, `None` when empty.
fn reason(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// Parses every line of `text` in `format`, for the formats' unit tests.
#[cfg(test)]
fn parse_all(format: Format, text: &str) -> Result<Vec<Entry>> {
    let options = test_options();
    let mut parser = line_format(format);
    let mut out = Vec::new();
    let mut entries = Vec::new();
    for (index, line) in text.lines().enumerate() {
        parser
            .parse_line(line, &options, &mut out)
            .map_err(|message| Error::InvalidListLine {
                path: "test".into(),
                line: index + 1,
                message: format!("{format} format: {message}"),
            })?;
        for mut entry in out.drain(..) {
            entry.line = index + 1;
            entries.push(entry);
        }
    }
    Ok(entries)
}

#[cfg(test)]
fn test_options() -> Options {
    Options {
        now: "2026-12-02T00:00:00Z".parse().expect("a time"),
        temporary_for: SignedDuration::from_hours(24 * 365),
    }
}

#[cfg(test)]
fn nets(entries: &[Entry]) -> Vec<String> {
    entries.iter().map(|e| e.net.to_string()).collect()
}

/// The words of a saved command line (`ipset save`, `iptables-save`): split at whitespace,
/// with `"..."` quoting (and `\"` inside it) for comments.
fn words(line: &str) -> std::result::Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() {
                break;
            }
            chars.next();
            if c != '"' {
                word.push(c);
                continue;
            }
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => word.extend(chars.next()),
                    Some(c) => word.push(c),
                    None => return Err("a quote is not closed".to_string()),
                }
            }
        }
        words.push(word);
    }
    Ok(words)
}

/// The allowlist entries of the list at `path`, read through to its end, so that a bad line
/// anywhere in it is found before anything is changed.
pub fn allow_entries(path: &Path, format: Format, options: Options) -> Result<Vec<IpNet>> {
    let mut allowed = Vec::new();
    for entry in stream(path, format, options)?.entries {
        let entry = entry?;
        if entry.allow {
            allowed.push(entry.net);
        }
    }
    Ok(allowed)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const LINE_FORMATS: [Format; 8] = [
        Format::Plain,
        Format::Htaccess,
        Format::Nginx,
        Format::Ipset,
        Format::Iptables,
        Format::Spamhaus,
        Format::Netset,
        Format::PerlHash,
    ];

    proptest! {
        /// Hostile text in any format parses or is one line of bad input naming the format.
        #[test]
        fn any_text_parses_or_is_a_one_line_error(text in any::<String>(), which in 0..LINE_FORMATS.len()) {
            let format = LINE_FORMATS[which];
            if let Err(err) = parse_all(format, &text) {
                let message = err.to_string();
                prop_assert!(err.is_bad_input());
                prop_assert!(!message.contains('\n'), "{}", message);
                prop_assert!(message.contains(&format!("{format} format:")), "{}", message);
            }
        }

        /// Near-miss lines of each format (its own words around random text) behave the same.
        #[test]
        fn format_words_around_random_text_never_panic(
            middle in "[0-9a-f.:/ \"#;{}()$=-]{0,40}",
            which in 0..LINE_FORMATS.len(),
        ) {
            let format = LINE_FORMATS[which];
            for text in [
                format!("deny from {middle}"),
                format!("deny {middle};"),
                format!("add s {middle} timeout 5"),
                format!("-A INPUT -s {middle} -j DROP"),
                format!("{middle} ; SBL1"),
                format!("$banned_ip{{\"{middle}\"}}=qq({middle});"),
            ] {
                if let Err(err) = parse_all(format, &text) {
                    prop_assert!(err.is_bad_input());
                    prop_assert!(!err.to_string().contains('\n'));
                }
            }
        }
    }
}

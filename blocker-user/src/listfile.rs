//! The plain-text list format of `blocker import` and `blocker export`: one address or CIDR per
//! line, an optional `# comment` after it that becomes the reason; blank lines and lines that
//! are only a comment are skipped.

use ipnet::IpNet;

use crate::{addr::parse_net, state::Entry, Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    pub net: IpNet,
    pub reason: Option<String>,
    pub line: usize,
    /// The text as given, when host bits had to be cleared.
    pub normalized_from: Option<String>,
}

/// Parses a whole list; the first bad line is an error naming its number, and nothing of the
/// list is used.
pub fn parse(text: &str, source: &str) -> Result<Vec<ListEntry>> {
    let mut entries = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let (addr, comment) = match raw.split_once('#') {
            Some((addr, comment)) => (addr.trim(), Some(comment.trim())),
            None => (raw.trim(), None),
        };
        if addr.is_empty() {
            continue;
        }
        let parsed = parse_net(addr).map_err(|err| Error::InvalidListLine {
            path: source.to_string(),
            line,
            message: err.to_string(),
        })?;
        entries.push(ListEntry {
            net: parsed.net,
            reason: comment.filter(|c| !c.is_empty()).map(str::to_string),
            line,
            normalized_from: parsed.normalized_from,
        });
    }
    Ok(entries)
}

/// Renders entries in the same format, so an export imports back to the same list.
pub fn render<'a>(entries: impl IntoIterator<Item = (&'a IpNet, &'a Entry)>) -> String {
    let mut out = String::new();
    for (net, entry) in entries {
        out.push_str(&net.to_string());
        if let Some(reason) = &entry.reason {
            out.push_str(" # ");
            out.push_str(&reason.replace('\n', " "));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use super::*;

    #[test]
    fn parses_addresses_comments_and_blank_lines() {
        let text = "# PERMANENT BLACKLIST\n\n123.123.0.0/16 # block bad network 2005-03-15\n\
                    75.126.85.215\n2001:db8::/32#   v6 range  \n10.1.2.3/24\n";
        let entries = parse(text, "list.txt").unwrap();
        let nets: Vec<String> = entries.iter().map(|e| e.net.to_string()).collect();
        assert_eq!(
            nets,
            [
                "123.123.0.0/16",
                "75.126.85.215/32",
                "2001:db8::/32",
                "10.1.2.0/24"
            ]
        );
        assert_eq!(
            entries[0].reason.as_deref(),
            Some("block bad network 2005-03-15")
        );
        assert_eq!(entries[0].line, 3);
        assert_eq!(entries[1].reason, None);
        assert_eq!(entries[2].reason.as_deref(), Some("v6 range"));
        assert_eq!(entries[3].normalized_from.as_deref(), Some("10.1.2.3/24"));
    }

    #[test]
    fn a_bad_line_is_named() {
        let err = parse("10.0.0.1\n10.0.0.300 # typo\n", "bans.txt").unwrap_err();
        assert!(err.is_bad_input());
        assert_eq!(
            err.to_string(),
            "bans.txt:2: invalid address or CIDR: \"10.0.0.300\""
        );
    }

    #[test]
    fn export_imports_back() {
        let entry = |reason: Option<&str>| Entry {
            reason: reason.map(str::to_string),
            created_at: Timestamp::UNIX_EPOCH,
            expires_at: None,
        };
        let a: IpNet = "10.0.0.0/8".parse().unwrap();
        let b: IpNet = "2001:db8::1/128".parse().unwrap();
        let (ea, eb) = (entry(Some("bad network")), entry(None));
        let text = render([(&a, &ea), (&b, &eb)]);
        assert_eq!(text, "10.0.0.0/8 # bad network\n2001:db8::1/128\n");
        let back = parse(&text, "-").unwrap();
        assert_eq!(back[0].net, a);
        assert_eq!(back[0].reason.as_deref(), Some("bad network"));
        assert_eq!(back[1].net, b);
    }
}

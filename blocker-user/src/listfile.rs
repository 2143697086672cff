//! The plain-text list format of `blocker import` and `blocker export`, a superset of the one
//! the seed's block lists use:
//!
//! ```text
//! ADDR_OR_CIDR [expires=RFC3339] [# reason]
//! ```
//!
//! One address or CIDR per line; an optional `expires=` field (written by `export` for temporary
//! bans, so export -> import keeps them temporary); an optional `# comment` that becomes the
//! reason. Blank lines and lines that are only a comment are skipped, so the seed's files and
//! older exports import unchanged.

use std::path::Path;

use ipnet::IpNet;
use jiff::Timestamp;

use crate::{
    addr::parse_net,
    formats::reader::{lines, source_name},
    state::Entry,
    text, Error, Result,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    pub net: IpNet,
    pub reason: Option<String>,
    /// From an `expires=` field.
    pub expires_at: Option<Timestamp>,
    pub line: usize,
    /// The text as given, when host bits had to be cleared.
    pub normalized_from: Option<String>,
}

/// Streams the entries of a list from `path` (or stdin for `-`) with the name to use for it in
/// messages: the list is read line by line, never whole. A bad or non-UTF-8 line is an error
/// naming its number.
pub fn stream(path: &Path) -> Result<(impl Iterator<Item = Result<ListEntry>>, String)> {
    let source = source_name(path);
    let name = source.clone();
    let entries = lines(path, &source)?.filter_map(move |line| {
        line.and_then(|(number, text)| parse_line(&text, number, &name))
            .transpose()
    });
    Ok((entries, source))
}

/// Parses line number `line` of a list: `None` for a blank or comment-only line.
pub(crate) fn parse_line(raw: &str, line: usize, source: &str) -> Result<Option<ListEntry>> {
    let raw = raw.strip_suffix('\r').unwrap_or(raw);
    let bad_line = |message: String| Error::InvalidListLine {
        path: source.to_string(),
        line,
        message,
    };
    let (fields, comment) = match raw.split_once('#') {
        Some((fields, comment)) => (fields, Some(comment.trim())),
        None => (raw, None),
    };
    let mut fields = fields.split_whitespace();
    let Some(addr) = fields.next() else {
        return Ok(None);
    };
    let parsed = parse_net(addr).map_err(|err| bad_line(err.to_string()))?;
    let mut expires_at = None;
    for field in fields {
        match field.split_once('=') {
            Some(("expires", value)) if expires_at.is_none() => {
                let at = value.parse::<Timestamp>().map_err(|_| {
                    bad_line(format!(
                        "invalid expires={:?}: use an RFC 3339 time like 2026-12-31T23:59:59Z",
                        text::escape(value)
                    ))
                })?;
                expires_at = Some(at);
            }
            _ => {
                return Err(bad_line(format!(
                "unexpected {:?} after the address: only expires=TIME and a # comment may follow",
                text::escape(field)
            )))
            }
        }
    }
    let reason = comment.filter(|c| !c.is_empty());
    if let Some(reason) = reason {
        text::check_reason(reason).map_err(|err| bad_line(err.to_string()))?;
    }
    Ok(Some(ListEntry {
        net: parsed.net,
        reason: reason.map(str::to_string),
        expires_at,
        line,
        normalized_from: parsed.normalized_from,
    }))
}

/// Renders entries in the same format, so an export imports back to the same bans, expiry
/// included. Control characters in reasons are escaped, which keeps one ban per line, and an
/// escaped reason is cut to the length an import takes, so no line of an export is refused.
pub fn render<'a>(entries: impl IntoIterator<Item = (&'a IpNet, &'a Entry)>) -> String {
    let mut out = String::new();
    for (net, entry) in entries {
        out.push_str(&net.to_string());
        if let Some(at) = entry.expires_at {
            out.push_str(&format!(" expires={at}"));
        }
        if let Some(reason) = &entry.reason {
            out.push_str(" # ");
            let escaped = text::escape(reason);
            out.push_str(&escaped[..escaped.floor_char_boundary(text::MAX_REASON_BYTES)]);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {

    /// Parses a whole list; the first bad line is an error naming its number, and nothing of the
    /// list is used.
    fn parse(text: &str, source: &str) -> Result<Vec<ListEntry>> {
        let mut entries = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            entries.extend(parse_line(raw, index + 1, source)?);
        }
        Ok(entries)
    }
    use proptest::prelude::*;

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

    #[test]
    fn temporary_bans_keep_their_expiry() {
        let at: Timestamp = "2026-12-01T10:20:30.123456789Z".parse().unwrap();
        let entry = Entry {
            reason: Some("scanner".into()),
            created_at: Timestamp::UNIX_EPOCH,
            expires_at: Some(at),
        };
        let net: IpNet = "198.51.100.0/24".parse().unwrap();
        let text = render([(&net, &entry)]);
        assert_eq!(
            text,
            "198.51.100.0/24 expires=2026-12-01T10:20:30.123456789Z # scanner\n"
        );
        let back = parse(&text, "-").unwrap();
        assert_eq!(back[0].expires_at, Some(at));
        assert_eq!(back[0].reason.as_deref(), Some("scanner"));
    }

    #[test]
    fn a_reason_of_the_longest_length_with_control_characters_imports_back() {
        let entry = Entry {
            reason: Some(format!("{}a\t", "é".repeat(511))),
            created_at: Timestamp::UNIX_EPOCH,
            expires_at: None,
        };
        assert_eq!(
            entry.reason.as_ref().map(String::len),
            Some(crate::text::MAX_REASON_BYTES)
        );
        let net: IpNet = "192.0.2.1/32".parse().unwrap();
        let back = parse(&render([(&net, &entry)]), "-").unwrap();
        assert_eq!(back[0].net, net);
        assert!(back[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("éé")));
    }

    #[test]
    fn bad_fields_are_named() {
        for (text, message) in [
            (
                "10.0.0.1 expires=tomorrow\n",
                "-:1: invalid expires=\"tomorrow\"",
            ),
            (
                "10.0.0.1 10.0.0.2\n",
                "-:1: unexpected \"10.0.0.2\" after the address",
            ),
            (
                "10.0.0.1 expires=2026-01-01T00:00:00Z expires=2027-01-01T00:00:00Z\n",
                "-:1: unexpected \"expires=2027",
            ),
        ] {
            let err = parse(text, "-").unwrap_err();
            assert!(err.is_bad_input());
            assert!(err.to_string().starts_with(message), "{err}");
        }
    }

    #[test]
    fn a_reason_over_one_kib_is_refused() {
        let text = format!("10.0.0.1\n10.0.0.2 # {}\n", "x".repeat(1025));
        let err = parse(&text, "big.txt").unwrap_err();
        assert_eq!(
            err.to_string(),
            "big.txt:2: reason too long (1025 bytes): at most 1024 bytes"
        );
    }

    #[test]
    fn control_characters_in_reasons_cannot_split_a_line() {
        let entry = Entry {
            reason: Some("evil\n10.0.0.0/8 # \u{1b}[2J".into()),
            created_at: Timestamp::UNIX_EPOCH,
            expires_at: None,
        };
        let net: IpNet = "192.0.2.1/32".parse().unwrap();
        let text = render([(&net, &entry)]);
        assert_eq!(text, "192.0.2.1/32 # evil\\n10.0.0.0/8 # \\u{1b}[2J\n");
        assert_eq!(parse(&text, "-").unwrap().len(), 1);
    }

    fn timestamp() -> impl Strategy<Value = Timestamp> {
        (0i64..4_000_000_000, 0i32..1_000_000_000)
            .prop_map(|(second, nanos)| Timestamp::new(second, nanos).expect("in range"))
    }

    fn entry() -> impl Strategy<Value = (IpNet, Entry)> {
        // Reasons as import gives them back: trimmed, non-empty, no control characters.
        let reason = proptest::option::of(any::<String>()).prop_map(|reason| {
            reason
                .map(|r| {
                    r.chars()
                        .filter(|c| !text::is_unsafe(*c))
                        .collect::<String>()
                })
                .map(|r| r.trim().to_string())
                .filter(|r| !r.is_empty())
        });
        (
            any::<std::net::IpAddr>(),
            0u8..=128,
            reason,
            proptest::option::of(timestamp()),
        )
            .prop_map(|(addr, len, reason, expires_at)| {
                let net = match addr {
                    std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
                        IpNet::from(std::net::IpAddr::V4(v6.to_ipv4_mapped().expect("mapped")))
                    }
                    _ => IpNet::from(addr),
                };
                let net = IpNet::new(net.addr(), len.min(net.max_prefix_len()))
                    .expect("valid length")
                    .trunc();
                let entry = Entry {
                    reason,
                    created_at: Timestamp::UNIX_EPOCH,
                    expires_at,
                };
                (net, entry)
            })
    }

    proptest! {
        #[test]
        fn any_text_parses_or_is_a_one_line_error(text in any::<String>()) {
            if let Err(err) = parse(&text, "list") {
                prop_assert!(err.is_bad_input());
                prop_assert!(!err.to_string().contains('\n'));
            }
        }

        #[test]
        fn export_then_import_is_lossless(entries in proptest::collection::vec(entry(), 0..20)) {
            let text = render(entries.iter().map(|(net, entry)| (net, entry)));
            let back = parse(&text, "export").expect("an export imports");
            prop_assert_eq!(back.len(), entries.len());
            for ((net, entry), parsed) in entries.iter().zip(&back) {
                prop_assert_eq!(parsed.net, *net);
                prop_assert_eq!(&parsed.reason, &entry.reason);
                prop_assert_eq!(parsed.expires_at, entry.expires_at);
                prop_assert_eq!(&parsed.normalized_from, &None);
            }
        }
    }
}

//! Apache access lists (`.htaccess`): `deny from` / `allow from` with addresses, CIDRs,
//! netmasks and partial octets, Apache 2.4's `Require not ip` / `Require ip`, and a trailing
//! `"# comment date"` as reason and creation date. A `# TEMPORARY ...` heading makes the
//! entries under it temporary ([`Options::temporary_for`]), `# PERMANENT ...` permanent again.
//! `<Limit>` blocks, `order`, `allow from all` and directives that hold no address are skipped.

use super::{dates::dated_by_reason, octets::parse_partial, reason, Entry, LineFormat, Options};

#[derive(Default)]
pub struct Htaccess {
    temporary: bool,
}

impl LineFormat for Htaccess {
    fn parse_line(
        &mut self,
        line: &str,
        options: &Options,
        out: &mut Vec<Entry>,
    ) -> std::result::Result<(), String> {
        let line = line.trim();
        if let Some(heading) = line.strip_prefix('#') {
            let heading = heading.to_ascii_uppercase();
            if heading.contains("TEMPORARY") {
                self.temporary = true;
            } else if heading.contains("PERMANENT") {
                self.temporary = false;
            }
            return Ok(());
        }
        let mut words = line.split_whitespace();
        let first = words.next().map(str::to_ascii_lowercase);
        let second = words.next().map(str::to_ascii_lowercase);
        let (allow, rest) = match (first.as_deref(), second.as_deref()) {
            (Some("deny"), Some("from")) => (false, after_words(line, 2)),
            (Some("allow"), Some("from")) => (true, after_words(line, 2)),
            (Some("require"), Some("not")) => match words.next() {
                Some(kind) if kind.eq_ignore_ascii_case("ip") => (false, after_words(line, 3)),
                _ => return Ok(()),
            },
            (Some("require"), Some("ip")) => (true, after_words(line, 2)),
            // Blank lines, <Limit> blocks, order, satisfy and every directive that holds no
            // address.
            _ => return Ok(()),
        };
        let (addrs, comment) = split_comment(rest);
        let reason =
            reason(comment.trim_matches(|c: char| c == '"' || c == '#' || c.is_whitespace()));
        let expires_at = (self.temporary && !allow)
            .then(|| options.now.checked_add(options.temporary_for))
            .transpose()
            .map_err(|_| "the --temporary-for expiry is out of range".to_string())?;
        let mut any = false;
        for addr in addrs.split_whitespace() {
            any = true;
            if addr.eq_ignore_ascii_case("all") {
                if allow {
                    continue;
                }
                return Err("\"deny from all\" bans every address: not imported".to_string());
            }
            if addr.contains('=') {
                return Err(format!("{addr:?} is a request condition, not an address"));
            }
            let parsed = parse_partial(addr)?;
            out.push(dated_by_reason(Entry {
                reason: reason.clone(),
                expires_at,
                allow,
                normalized_from: parsed.normalized_from,
                ..Entry::ban(parsed.net)
            }));
        }
        if !any {
            return Err("no address after the directive".to_string());
        }
        Ok(())
    }
}

/// `line` after its first `count` words.
fn after_words(line: &str, count: usize) -> &str {
    let mut rest = line;
    for _ in 0..count {
        rest = rest.trim_start();
        rest = &rest[rest.find(char::is_whitespace).unwrap_or(rest.len())..];
    }
    rest
}

/// Addresses and the comment after them, which starts at a `"` or a `#`.
fn split_comment(rest: &str) -> (&str, &str) {
    match rest.find(['"', '#']) {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{nets, parse_all, test_options, Format};

    const SEED: &str = "# PERMANENT BLACKLIST\n<Limit GET POST PUT>\n order allow,deny\n \
        allow from all\n deny from 123.123.        \"# block bad network 2005-03-15 \"\n \
        deny from 45.56.78.    \"# block competition 2006-04-17 \"\n</Limit>\n\n\
        # TEMPORARY BLACKLIST\n<Limit GET POST PUT>\n order allow,deny\n allow from all\n \
        deny from 75.126.85.215 \"# block zombie machine 2008-01-21 \"\n</Limit>\n";

    #[test]
    fn reads_the_seeds_sections_partial_octets_and_comments() {
        let entries = parse_all(Format::Htaccess, SEED).unwrap();
        assert_eq!(
            nets(&entries),
            ["123.123.0.0/16", "45.56.78.0/24", "75.126.85.215/32"]
        );
        assert_eq!(
            entries[0].reason.as_deref(),
            Some("block bad network 2005-03-15")
        );
        assert_eq!(
            entries[0].created_at,
            Some("2005-03-15T00:00:00Z".parse().unwrap())
        );
        assert_eq!(entries[0].expires_at, None, "permanent section");
        let options = test_options();
        assert_eq!(
            entries[2].expires_at,
            Some(options.now.checked_add(options.temporary_for).unwrap()),
            "temporary section"
        );
        assert_eq!(entries[2].line, 13);
    }

    #[test]
    fn the_seeds_bad_octets_are_an_error_naming_the_line() {
        let text = "# PERMANENT BLACKLIST\n deny from 123.123.   \"# a 2005-03-15 \"\n \
                    deny from 456.456.456.    \"# block competition 2006-04-17 \"\n";
        let err = parse_all(Format::Htaccess, text).unwrap_err().to_string();
        assert_eq!(
            err,
            "test:3: htaccess format: \"456.456.456.\" is not an address: 456 is no octet (0 to 255)"
        );
    }

    #[test]
    fn allow_lines_require_and_several_addresses() {
        let text = "allow from 192.0.2.10\nRequire not ip 10.1.0.0/16 172.16.5.\n\
                    Require ip 2001:db8::1\nRequire all granted\nRewriteEngine on\n\
                    Deny From 1.2.3.4 5.6.7.8 # two\n";
        let entries = parse_all(Format::Htaccess, text).unwrap();
        assert_eq!(
            nets(&entries),
            [
                "192.0.2.10/32",
                "10.1.0.0/16",
                "172.16.5.0/24",
                "2001:db8::1/128",
                "1.2.3.4/32",
                "5.6.7.8/32"
            ]
        );
        let allowed: Vec<bool> = entries.iter().map(|e| e.allow).collect();
        assert_eq!(allowed, [true, false, false, true, false, false]);
        assert_eq!(entries[5].reason.as_deref(), Some("two"));
        for text in [
            "deny from all\n",
            "deny from env=bad_bot\n",
            "deny from\n",
            "deny from .evil.example\n",
        ] {
            let err = parse_all(Format::Htaccess, text).unwrap_err().to_string();
            assert!(err.starts_with("test:1: htaccess format:"), "{err}");
        }
    }
}

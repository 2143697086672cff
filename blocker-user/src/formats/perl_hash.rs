//! Perl hashes of banned addresses: `$banned_ip{"78.45.213.180"}=qq(2/18/2012 clicks);`, keys
//! with partial octets (`"174.157.101"` is a /24), the value as reason and its date as the
//! creation date. `#` comments and blank lines are skipped.

use super::{dates::dated_by_reason, octets::parse_partial, reason, Entry, LineFormat, Options};

pub struct PerlHash;

const SHAPE: &str = "expected $name{\"ADDR\"} = qq(reason);";

impl LineFormat for PerlHash {
    fn parse_line(
        &mut self,
        line: &str,
        _: &Options,
        out: &mut Vec<Entry>,
    ) -> std::result::Result<(), String> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return Ok(());
        }
        let Some(rest) = line.strip_prefix('$') else {
            return Err(SHAPE.to_string());
        };
        let (_, rest) = rest.split_once('{').ok_or(SHAPE)?;
        let (key, rest) = rest.split_once('}').ok_or(SHAPE)?;
        let key = unquote(key.trim()).ok_or(SHAPE)?;
        let value = rest
            .trim_start()
            .strip_prefix('=')
            .ok_or(SHAPE)?
            .trim()
            .strip_suffix(';')
            .ok_or(SHAPE)?
            .trim();
        let value =
            perl_string(value).ok_or_else(|| format!("{value:?} is not a string: {SHAPE}"))?;
        let parsed = parse_partial(key)?;
        out.push(dated_by_reason(Entry {
            reason: reason(value),
            normalized_from: parsed.normalized_from,
            ..Entry::ban(parsed.net)
        }));
        Ok(())
    }
}

fn unquote(text: &str) -> Option<&str> {
    ['"', '\'']
        .iter()
        .find_map(|q| text.strip_prefix(*q)?.strip_suffix(*q))
}

/// The text of a Perl string literal: `"..."`, `'...'`, `q(...)`, `qq(...)` (also with `{}`,
/// `[]`, `<>`, or a repeated character as delimiters), or a bare number.
fn perl_string(value: &str) -> Option<&str> {
    if let Some(text) = unquote(value) {
        return Some(text);
    }
    let rest = value.strip_prefix("qq").or_else(|| value.strip_prefix('q'));
    let Some(rest) = rest else {
        return value.bytes().all(|b| b.is_ascii_digit()).then_some(value);
    };
    let open = rest.chars().next()?;
    let close = match open {
        '(' => ')',
        '{' => '}',
        '[' => ']',
        '<' => '>',
        c if c.is_ascii_punctuation() => c,
        _ => return None,
    };
    rest[open.len_utf8()..].strip_suffix(close)
}

#[cfg(test)]
mod tests {
    use super::super::{nets, parse_all, Format};

    #[test]
    fn reads_the_seeds_hash_and_masks() {
        let text = "$banned_ip{\"78.45.213.180\"}=qq(2/18/2012 clicks - Czech Republic);\n\
                    # masks\n$banned_ip{\"174.157.101\"}=qq(SBP - 11/2/2009);\n\
                    $banned_ip{'2001:db8::1'} = 'v6';\n";
        let entries = parse_all(Format::PerlHash, text).unwrap();
        assert_eq!(
            nets(&entries),
            ["78.45.213.180/32", "174.157.101.0/24", "2001:db8::1/128"]
        );
        assert_eq!(
            entries[0].reason.as_deref(),
            Some("2/18/2012 clicks - Czech Republic")
        );
        assert_eq!(
            entries[0].created_at,
            Some("2012-02-18T00:00:00Z".parse().unwrap())
        );
        assert_eq!(
            entries[1].created_at,
            Some("2009-11-02T00:00:00Z".parse().unwrap())
        );
        assert_eq!(entries[1].line, 3);
    }

    #[test]
    fn other_lines_are_errors() {
        for (text, why) in [
            ("I do have some masks, too:\n", "expected $name"),
            ("$banned_ip{\"1.2.3.4\"}=qq(x)\n", "expected $name"),
            ("$banned_ip{\"1.2.3.4\"}=foo();\n", "is not a string"),
            ("$banned_ip{\"1.2.300\"}=qq(x);\n", "300 is no octet"),
        ] {
            let err = parse_all(Format::PerlHash, text).unwrap_err().to_string();
            assert!(
                err.starts_with("test:1: perl-hash format:") && err.contains(why),
                "{err}"
            );
        }
    }
}

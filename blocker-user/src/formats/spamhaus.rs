//! Spamhaus DROP / EDROP lists: `CIDR ; SBL123`, with `;` comment lines.

use super::{reason, Entry, LineFormat, Options};

pub struct Spamhaus;

impl LineFormat for Spamhaus {
    fn parse_line(
        &mut self,
        line: &str,
        _: &Options,
        out: &mut Vec<Entry>,
    ) -> std::result::Result<(), String> {
        let (addr, comment) = line.split_once(';').unwrap_or((line, ""));
        let addr = addr.trim();
        if addr.is_empty() {
            return Ok(());
        }
        let entry = Entry::parse_ban(addr)?;
        out.push(Entry {
            reason: reason(comment),
            ..entry
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{nets, parse_all, Format};

    #[test]
    fn the_sbl_reference_is_the_reason() {
        let text = "; Spamhaus DROP List 2026/12/01\n; Expires: Wed, 02 Dec 2026\n\
                    1.2.3.0/24 ; SBL123\n2001:db8::/32 ; SBL456\n";
        let entries = parse_all(Format::Spamhaus, text).unwrap();
        assert_eq!(nets(&entries), ["1.2.3.0/24", "2001:db8::/32"]);
        assert_eq!(entries[0].reason.as_deref(), Some("SBL123"));
        let err = parse_all(Format::Spamhaus, "1.2.3.0/33 ; SBL1\n").unwrap_err();
        assert!(
            err.to_string().starts_with("test:1: spamhaus format:"),
            "{err}"
        );
    }
}

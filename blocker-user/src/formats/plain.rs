//! blocker's own list format (see [`crate::listfile`]): the parser is listfile's, so `import`
//! reads exactly what `export` writes.

use super::{Entry, LineFormat, Options};
use crate::{listfile, Error};

pub struct Plain;

/// A plain list's entry in the common form.
pub fn entry(parsed: listfile::ListEntry) -> Entry {
    Entry {
        net: parsed.net,
        reason: parsed.reason,
        created_at: None,
        undated_because: None,
        expires_at: parsed.expires_at,
        allow: false,
        line: parsed.line,
        normalized_from: parsed.normalized_from,
    }
}

impl LineFormat for Plain {
    fn parse_line(
        &mut self,
        line: &str,
        _: &Options,
        out: &mut Vec<Entry>,
    ) -> std::result::Result<(), String> {
        match listfile::parse_line(line, 0, "") {
            Ok(Some(parsed)) => out.push(entry(parsed)),
            Ok(None) => {}
            Err(Error::InvalidListLine { message, .. }) => return Err(message),
            Err(other) => return Err(other.to_string()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{nets, parse_all, Format};

    #[test]
    fn reads_what_export_writes() {
        let entries = parse_all(
            Format::Plain,
            "# list\n10.1.2.3/24 # typo\n2001:db8::1 expires=2027-01-01T00:00:00Z\n",
        )
        .unwrap();
        assert_eq!(nets(&entries), ["10.1.2.0/24", "2001:db8::1/128"]);
        assert_eq!(entries[0].normalized_from.as_deref(), Some("10.1.2.3/24"));
        assert!(entries[1].expires_at.is_some());
        let err = parse_all(Format::Plain, "10.0.0.1\nnonsense\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "test:2: plain format: invalid address or CIDR: \"nonsense\""
        );
    }
}

//! FireHOL netsets: one address or CIDR a line, `#` lines as comments, nothing else.

use super::{Entry, LineFormat, Options};

pub struct Netset;

impl LineFormat for Netset {
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
        out.push(Entry::parse_ban(line)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{nets, parse_all, Format};

    #[test]
    fn reads_addresses_and_skips_comments() {
        let text = "#\n# firehol_level1\n# Maintainer: FireHOL\n#\n0.0.0.0/8\n1.10.16.0/20\n\n";
        let entries = parse_all(Format::Netset, text).unwrap();
        assert_eq!(nets(&entries), ["0.0.0.0/8", "1.10.16.0/20"]);
        assert_eq!(entries[1].line, 6);
        let err = parse_all(Format::Netset, "1.2.3.4 # note\n").unwrap_err();
        assert!(err
            .to_string()
            .starts_with("test:1: netset format: invalid address"));
    }
}

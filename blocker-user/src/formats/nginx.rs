//! nginx access lists: `deny ADDR;` and `allow ADDR;` statements, `#` comments (a trailing
//! one is the reason).

use super::{reason, Entry, LineFormat, Options};

pub struct Nginx;

impl LineFormat for Nginx {
    fn parse_line(
        &mut self,
        line: &str,
        _: &Options,
        out: &mut Vec<Entry>,
    ) -> std::result::Result<(), String> {
        let (code, comment) = line.split_once('#').unwrap_or((line, ""));
        let code = code.trim();
        if code.is_empty() {
            return Ok(());
        }
        let Some(statements) = code.strip_suffix(';') else {
            return Err(format!("{code:?} does not end with ';'"));
        };
        for statement in statements.split(';') {
            let mut words = statement.split_whitespace();
            let allow = match words.next() {
                Some("deny") => false,
                Some("allow") => true,
                Some(other) => {
                    return Err(format!(
                        "{other:?}: only deny and allow statements hold addresses"
                    ))
                }
                None => return Err("an empty statement".to_string()),
            };
            let (Some(addr), None) = (words.next(), words.next()) else {
                return Err(format!("{statement:?}: expected one address"));
            };
            if addr == "all" {
                if allow {
                    continue;
                }
                return Err("\"deny all\" bans every address: not imported".to_string());
            }
            let entry = Entry::parse_ban(addr)?;
            out.push(Entry {
                reason: reason(comment),
                allow,
                ..entry
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{nets, parse_all, Format};

    #[test]
    fn reads_deny_and_allow_statements() {
        let text = "# blocked\ndeny 1.2.3.4;\ndeny 10.0.0.0/8; # bad network\n\
                    allow 192.0.2.10;\n  deny 2001:db8::/32;deny 5.6.7.8;\nallow all;\n";
        let entries = parse_all(Format::Nginx, text).unwrap();
        assert_eq!(
            nets(&entries),
            [
                "1.2.3.4/32",
                "10.0.0.0/8",
                "192.0.2.10/32",
                "2001:db8::/32",
                "5.6.7.8/32"
            ]
        );
        assert_eq!(entries[1].reason.as_deref(), Some("bad network"));
        assert!(entries[2].allow && !entries[3].allow);
        for (text, why) in [
            ("deny 1.2.3.4\n", "does not end with ';'"),
            ("deny all;\n", "bans every address"),
            ("return 403;\n", "only deny and allow"),
            ("deny 1.2.3.999;\n", "invalid address"),
        ] {
            let err = parse_all(Format::Nginx, text).unwrap_err().to_string();
            assert!(
                err.starts_with("test:1: nginx format:") && err.contains(why),
                "{err}"
            );
        }
    }
}

//! `ipset save` output: `create NAME hash:ip|hash:net ...` and `add NAME ADDR [timeout N]
//! [comment "..."]`. An entry with a timeout is temporary; a set of another type (ports,
//! interfaces) holds no plain source addresses and is an error.

use std::collections::HashMap;

use jiff::SignedDuration;

use super::{reason, words, Entry, LineFormat, Options};

/// ipset's largest timeout (seconds), `UINT_MAX / MSEC_PER_SEC`.
const MAX_TIMEOUT_S: u32 = 2_147_483;

#[derive(Default)]
pub struct Ipset {
    /// The type of each set created so far.
    types: HashMap<String, String>,
}

impl LineFormat for Ipset {
    fn parse_line(
        &mut self,
        line: &str,
        options: &Options,
        out: &mut Vec<Entry>,
    ) -> std::result::Result<(), String> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return Ok(());
        }
        let words = words(line)?;
        match words.first().map(String::as_str) {
            Some("create" | "-N" | "-exist") if words.len() >= 3 => {
                let kind = &words[2];
                if kind != "hash:ip" && kind != "hash:net" {
                    return Err(format!(
                        "set {:?} is {kind:?}: only hash:ip and hash:net sets hold plain addresses",
                        words[1]
                    ));
                }
                self.types.insert(words[1].clone(), kind.clone());
                Ok(())
            }
            Some("add" | "-A") if words.len() >= 3 => {
                let set = &words[1];
                if !self.types.is_empty() && !self.types.contains_key(set) {
                    return Err(format!("set {set:?} was not created above"));
                }
                out.push(entry(&words[2], &words[3..], options)?);
                Ok(())
            }
            _ => Err("expected `create SET TYPE ...` or `add SET ADDR ...`".to_string()),
        }
    }
}

fn entry(addr: &str, rest: &[String], options: &Options) -> std::result::Result<Entry, String> {
    let mut entry = Entry::parse_ban(addr)?;
    let mut rest = rest.iter();
    while let Some(option) = rest.next() {
        let mut value = || {
            rest.next()
                .ok_or_else(|| format!("{option:?} needs a value"))
        };
        match option.as_str() {
            "timeout" => {
                // ipset's timeout 0 is "never expires"; it takes nothing negative nor over
                // 2,147,483 s, so neither is turned into a permanent ban here.
                let seconds: u32 = value()?
                    .parse()
                    .ok()
                    .filter(|seconds| *seconds <= MAX_TIMEOUT_S)
                    .ok_or_else(|| {
                        format!("timeout is not a number of seconds from 0 to {MAX_TIMEOUT_S}")
                    })?;
                if seconds > 0 {
                    let expiry = options
                        .now
                        .checked_add(SignedDuration::from_secs(seconds.into()))
                        .map_err(|_| "timeout out of range".to_string())?;
                    entry.expires_at = Some(expiry);
                }
            }
            "comment" => entry.reason = reason(value()?),
            "nomatch" => {
                return Err("a nomatch entry is an exception, not a ban".to_string());
            }
            "packets" | "bytes" | "skbmark" | "skbprio" | "skbqueue" => {
                value()?;
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;

    use super::super::{nets, parse_all, test_options, Format};

    #[test]
    fn reads_a_save_with_timeouts_and_comments() {
        let text =
            "create blacklist hash:ip family inet hashsize 1024 maxelem 65536 timeout 0 comment\n\
                    add blacklist 1.2.3.4 timeout 3600 comment \"ssh brute force\"\n\
                    add blacklist 5.6.7.8 timeout 0\n\
                    create nets hash:net family inet6 hashsize 1024 maxelem 65536\n\
                    add nets 2001:db8::/32\n";
        let entries = parse_all(Format::Ipset, text).unwrap();
        assert_eq!(
            nets(&entries),
            ["1.2.3.4/32", "5.6.7.8/32", "2001:db8::/32"]
        );
        let options = test_options();
        assert_eq!(
            entries[0].expires_at,
            Some(
                options
                    .now
                    .checked_add(SignedDuration::from_secs(3600))
                    .unwrap()
            )
        );
        assert_eq!(entries[0].reason.as_deref(), Some("ssh brute force"));
        assert_eq!(entries[1].expires_at, None);
    }

    #[test]
    fn other_sets_and_lines_are_errors() {
        for (text, why) in [
            (
                "create web hash:ip,port family inet\n",
                "only hash:ip and hash:net",
            ),
            ("create a hash:ip\nadd b 1.2.3.4\n", "not created above"),
            ("create a hash:net\nadd a 10.0.0.0/8 nomatch\n", "exception"),
            ("flush a\n", "expected `create"),
            (
                "create a hash:ip\nadd a 1.2.3.4 timeout soon\n",
                "not a number",
            ),
            // Neither is ipset's, and neither may become a permanent ban.
            (
                "create a hash:ip\nadd a 1.2.3.4 timeout -5\n",
                "from 0 to 2147483",
            ),
            (
                "create a hash:ip\nadd a 1.2.3.4 timeout 300000000000\n",
                "from 0 to 2147483",
            ),
        ] {
            let err = parse_all(Format::Ipset, text).unwrap_err().to_string();
            assert!(err.contains("ipset format:") && err.contains(why), "{err}");
        }
    }
}

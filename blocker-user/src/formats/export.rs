//! `blocker export --format`: the bans written in a format another tool reads. blocker's own
//! plain format keeps everything; the others keep what they can say (see each renderer), and
//! each imports back with `blocker import --format` to the same prefixes.

use std::borrow::Cow;

use ipnet::IpNet;
use jiff::Timestamp;

use crate::{listfile, state::Entry, text};

/// The formats `blocker export --format` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ExportFormat {
    /// blocker's own, with expiry and reason: `blocker import` reads it back whole.
    #[default]
    Plain,
    /// Apache `deny from` lines in PERMANENT and TEMPORARY sections (expiry times are lost).
    Htaccess,
    /// nginx `deny ADDR;` lines (expiry times are lost).
    Nginx,
    /// `ipset restore` input: sets `blocker` (IPv4) and `blocker6` (IPv6), with timeouts.
    Ipset,
    /// Spamhaus DROP style: `CIDR ; reason` (expiry times are lost).
    Spamhaus,
}

/// The most seconds an ipset timeout holds; a longer ban is exported with this timeout.
const IPSET_MAX_TIMEOUT: i64 = 2_147_483;

/// Writes `bans` (still in force at `now`) in `format`.
pub fn render<'a>(
    format: ExportFormat,
    bans: impl IntoIterator<Item = (&'a IpNet, &'a Entry)>,
    now: Timestamp,
) -> String {
    match format {
        ExportFormat::Plain => listfile::render(bans),
        ExportFormat::Htaccess => htaccess(bans),
        ExportFormat::Nginx => lines(bans, |net, reason| match reason {
            Some(reason) => format!("deny {net}; # {reason}\n"),
            None => format!("deny {net};\n"),
        }),
        ExportFormat::Spamhaus => {
            let mut out = "; blocker export\n".to_string();
            out.push_str(&lines(bans, |net, reason| match reason {
                Some(reason) => format!("{net} ; {reason}\n"),
                None => format!("{net}\n"),
            }));
            out
        }
        ExportFormat::Ipset => ipset(bans, now),
    }
}

/// One line per ban, its reason escaped so it stays on the line.
fn lines<'a>(
    bans: impl IntoIterator<Item = (&'a IpNet, &'a Entry)>,
    line: impl Fn(&IpNet, Option<Cow<'_, str>>) -> String,
) -> String {
    bans.into_iter()
        .map(|(net, entry)| line(net, entry.reason.as_deref().map(text::escape)))
        .collect()
}

/// A reason inside double quotes: escaped, its own quotes made single.
fn quoted_reason(entry: &Entry) -> Option<String> {
    entry
        .reason
        .as_deref()
        .map(|reason| text::escape(reason).replace('"', "'"))
}

fn htaccess<'a>(bans: impl IntoIterator<Item = (&'a IpNet, &'a Entry)>) -> String {
    let (temporary, permanent): (Vec<_>, Vec<_>) =
        bans.into_iter().partition(|(_, e)| e.expires_at.is_some());
    let mut out = String::new();
    for (heading, bans) in [("PERMANENT", permanent), ("TEMPORARY", temporary)] {
        if bans.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "# {heading} BLACKLIST\n<Limit GET POST PUT>\n order allow,deny\n allow from all\n"
        ));
        for (net, entry) in bans {
            match quoted_reason(entry) {
                Some(reason) => out.push_str(&format!(" deny from {net} \"# {reason}\"\n")),
                None => out.push_str(&format!(" deny from {net}\n")),
            }
        }
        out.push_str("</Limit>\n\n");
    }
    out
}

fn ipset<'a>(bans: impl IntoIterator<Item = (&'a IpNet, &'a Entry)>, now: Timestamp) -> String {
    let mut v4 = String::new();
    let mut v6 = String::new();
    for (net, entry) in bans {
        let (out, set) = match net {
            IpNet::V4(_) => (&mut v4, "blocker"),
            IpNet::V6(_) => (&mut v6, "blocker6"),
        };
        // ipset's timeout 0 is "never expires".
        let timeout = entry.expires_at.map_or(0, |at| {
            at.duration_since(now).as_secs().clamp(1, IPSET_MAX_TIMEOUT)
        });
        out.push_str(&format!("add {set} {net} timeout {timeout}"));
        if let Some(reason) = quoted_reason(entry) {
            out.push_str(&format!(" comment \"{reason}\""));
        }
        out.push('\n');
    }
    let create = |set: &str, family: &str| {
        format!("create {set} hash:net family {family} hashsize 1024 maxelem 1048576 timeout 0 comment\n")
    };
    format!(
        "{}{v4}{}{v6}",
        create("blocker", "inet"),
        create("blocker6", "inet6")
    )
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;

    use super::*;
    use crate::formats::{parse_all, test_options, Format};

    fn sample(now: Timestamp) -> Vec<(IpNet, Entry)> {
        let entry = |reason: Option<&str>, expires_at| Entry {
            reason: reason.map(str::to_string),
            created_at: Timestamp::UNIX_EPOCH,
            expires_at,
        };
        let later = now.checked_add(SignedDuration::from_hours(1)).unwrap();
        vec![
            (
                "123.123.0.0/16".parse().unwrap(),
                entry(Some("bad network 2005-03-15"), None),
            ),
            (
                "75.126.85.215/32".parse().unwrap(),
                entry(Some("zombie \"machine\""), Some(later)),
            ),
            ("2001:db8::/32".parse().unwrap(), entry(None, None)),
        ]
    }

    /// Each export imports back, in the same-named format, to the same prefixes and
    /// (escaped, quotes made single) reasons; ipset keeps the expiry too.
    #[test]
    fn every_export_imports_back() {
        let now = test_options().now;
        let bans = sample(now);
        for (export, import) in [
            (ExportFormat::Plain, Format::Plain),
            (ExportFormat::Htaccess, Format::Htaccess),
            (ExportFormat::Nginx, Format::Nginx),
            (ExportFormat::Ipset, Format::Ipset),
            (ExportFormat::Spamhaus, Format::Spamhaus),
        ] {
            let text = render(export, bans.iter().map(|(n, e)| (n, e)), now);
            let back =
                parse_all(import, &text).unwrap_or_else(|err| panic!("{export:?}: {err}\n{text}"));
            let mut got: Vec<(String, Option<String>)> = back
                .iter()
                .map(|e| (e.net.to_string(), e.reason.clone()))
                .collect();
            got.sort();
            let quotes = export != ExportFormat::Plain
                && export != ExportFormat::Nginx
                && export != ExportFormat::Spamhaus;
            let mut want: Vec<(String, Option<String>)> = bans
                .iter()
                .map(|(n, e)| {
                    let reason = e
                        .reason
                        .clone()
                        .map(|r| if quotes { r.replace('"', "'") } else { r });
                    (n.to_string(), reason)
                })
                .collect();
            want.sort();
            assert_eq!(got, want, "{export:?}:\n{text}");
            let temporary = back
                .iter()
                .find(|e| e.net.to_string() == "75.126.85.215/32")
                .unwrap();
            assert!(
                temporary.expires_at.is_some()
                    || matches!(export, ExportFormat::Nginx | ExportFormat::Spamhaus),
                "{export:?}"
            );
            if matches!(export, ExportFormat::Plain | ExportFormat::Ipset) {
                assert_eq!(temporary.expires_at, bans[1].1.expires_at, "{export:?}");
            }
        }
    }
}

//! fail2ban's tags: `<name>` references to other options of the filter (resolved innermost
//! first, so `<mdre-<mode>>` works), and the regex tags `<HOST>`, `<ADDR>`, `<IP4>`, `<IP6>`,
//! `<DNS>` and `<F-NAME>...</F-NAME>`, which become named groups. Also rewrites the few
//! Python regex spellings the Rust engines spell differently.

use std::sync::LazyLock;

use super::ini::{Origin, MAX_EXPANSION_DEPTH};
use super::FilterError;

/// A dotted quad, each part 0-255 without leading zeros.
const IPV4: &str =
    r"(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]\d|\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]\d|\d)";
/// Anything shaped like an IPv6 address (two or more colons); `IpAddr` parsing decides.
const IPV6: &str = r"(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?";
/// A host name (not resolved: a line naming its source by name is not a failure we can ban).
const DNS: &str = r"[\w\-.^_]*\w";

static OPTION_TAG: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"<([\w\-/.]+)>").expect("the tag pattern is valid"));

/// Replaces `<name>` tags naming an option (`lookup` returns its value) until none is left;
/// tags it does not know (`<HOST>`, `<F-USER>`, `(?P<name>`) stay as they are.
pub fn substitute_options(
    text: &str,
    origin: &Origin,
    lookup: &dyn Fn(&str) -> Result<Option<String>, FilterError>,
) -> Result<String, FilterError> {
    let mut text = text.to_string();
    for _ in 0..MAX_EXPANSION_DEPTH {
        let mut changed = false;
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for tag in OPTION_TAG.captures_iter(&text) {
            let (Some(whole), Some(name)) = (tag.get(0), tag.get(1)) else {
                continue;
            };
            if let Some(value) = lookup(name.as_str())? {
                out.push_str(&text[last..whole.start()]);
                out.push_str(&value);
                last = whole.end();
                changed = true;
            }
        }
        if !changed {
            return Ok(text);
        }
        out.push_str(&text[last..]);
        text = out;
    }
    Err(origin.error("<tag> substitution nests too deep (a loop?)"))
}

/// Turns one fail2ban regex into one the Rust engines take: regex tags become named groups
/// (`<F-USER>` → `(?P<user>`; a second `<HOST>` gets `ip4_2`...), Python-only spellings are
/// rewritten (`\Z`, `{,n}`, a bare `[` inside a class).
pub fn expand_regex(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() * 2);
    let mut names = Names::default();
    let mut rest = pattern;
    let mut in_class = false;
    while let Some(c) = rest.chars().next() {
        if c == '\\' {
            let escaped: String = rest.chars().take(2).collect();
            match escaped.as_str() {
                r"\Z" => out.push('$'),
                _ => out.push_str(&escaped),
            }
            rest = &rest[escaped.len()..];
            continue;
        }
        if in_class {
            match c {
                ']' => in_class = false,
                '[' if !rest.starts_with("[:") => {
                    out.push_str(r"\[");
                    rest = &rest[1..];
                    continue;
                }
                _ => {}
            }
            out.push(c);
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '[' {
            in_class = true;
            // `[]...]` and `[^]...]`: a `]` right after the opening is a literal.
            let opening = if rest.starts_with("[^") { 2 } else { 1 };
            out.push_str(&rest[..opening]);
            rest = &rest[opening..];
            if rest.starts_with(']') {
                out.push_str(r"\]");
                rest = &rest[1..];
            }
            continue;
        }
        if rest.starts_with("{,") {
            out.push_str("{0,");
            rest = &rest[2..];
            continue;
        }
        if c == '<' {
            if let Some((replacement, length)) = regex_tag(rest, &mut names) {
                out.push_str(&replacement);
                rest = &rest[length..];
                continue;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Group names already used in one regex, so repeated tags get distinct names.
#[derive(Default)]
struct Names(Vec<String>);

impl Names {
    fn unique(&mut self, base: &str) -> String {
        let count = self.0.iter().filter(|name| name.as_str() == base).count();
        self.0.push(base.to_string());
        if count == 0 {
            base.to_string()
        } else {
            format!("{base}_{}", count + 1)
        }
    }

    fn addr(&mut self, with_dns: bool) -> String {
        let ip4 = self.unique("ip4");
        let ip6 = self.unique("ip6");
        // A scoped (link-local) IPv6 address is written with its zone, which is not banned.
        let addr =
            format!(r"\[?(?:(?:::f{{4,6}}:)?(?P<{ip4}>{IPV4})|(?P<{ip6}>{IPV6})(?:%[\w.\-]+)?)\]?");
        if with_dns {
            let dns = self.unique("dns");
            format!("(?:{addr}|(?P<{dns}>{DNS}))")
        } else {
            addr
        }
    }
}

/// The replacement for a regex tag at the start of `text`, and the tag's length.
fn regex_tag(text: &str, names: &mut Names) -> Option<(String, usize)> {
    let end = text.find('>')?;
    let tag = &text[1..end];
    let replacement = match tag {
        "HOST" => names.addr(true),
        "ADDR" | "SUBNET" => names.addr(false),
        "IP4" => format!("(?P<{}>{IPV4})", names.unique("ip4")),
        "IP6" => format!("(?P<{}>{IPV6})", names.unique("ip6")),
        "DNS" => format!("(?P<{}>{DNS})", names.unique("dns")),
        // Multi-line matching is not supported: a filter's lines are matched one by one.
        "SKIPLINES" => String::new(),
        _ => {
            if let Some(id) = tag.strip_prefix("F-").filter(|id| is_group_id(id)) {
                format!("(?P<{}>", names.unique(&id.to_ascii_lowercase()))
            } else if tag.strip_prefix("/F-").is_some_and(is_group_id) {
                ")".to_string()
            } else {
                return None;
            }
        }
    };
    Some((replacement, end + 1))
}

fn is_group_id(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether a capture group name is one a host tag made (`ip4`, `ip6_2`, `dns`...).
pub fn is_addr_group(name: &str) -> bool {
    let base = name.split('_').next().unwrap_or(name);
    matches!(base, "ip4" | "ip6" | "dns")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin {
            file: "t.conf".into(),
            line: 1,
        }
    }

    #[test]
    fn nested_option_tags_resolve_innermost_first() {
        let lookup = |name: &str| -> Result<Option<String>, FilterError> {
            Ok(match name {
                "mode" => Some("normal".into()),
                "mdre-normal" => Some("^Closed <HOST>".into()),
                _ => None,
            })
        };
        let text = substitute_options("<mdre-<mode>> (?P<cond>x)", &origin(), &lookup).unwrap();
        assert_eq!(text, "^Closed <HOST> (?P<cond>x)");
    }

    #[test]
    fn regex_tags_become_named_groups() {
        let expanded = expand_regex(r"^<F-USER>\S+</F-USER> from <HOST> and <ADDR>\Z");
        let re = fancy_regex::Regex::new(&expanded).unwrap();
        let caps = re
            .captures("bob from 192.0.2.1 and 2001:db8::1")
            .unwrap()
            .unwrap();
        assert_eq!(&caps["user"], "bob");
        assert_eq!(&caps["ip4"], "192.0.2.1");
        assert_eq!(&caps["ip6_2"], "2001:db8::1");
        assert!(expanded.ends_with('$'));
    }

    #[test]
    fn python_spellings_are_rewritten() {
        assert_eq!(expand_regex(r"a{,3}[[(]x[]y]"), r"a{0,3}[\[(]x[\]y]");
        assert!(fancy_regex::Regex::new(&expand_regex(r"a{,3}[[(]x[]y]")).is_ok());
    }
}

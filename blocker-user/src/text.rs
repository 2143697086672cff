//! Text that came from users, applications or the state file, made safe to print: reasons and
//! other stored strings can hold terminal escapes (`\e[2J`), bells or line breaks that would
//! rewrite a terminal, split a table row or a list line, or forge a log line.

use std::borrow::Cow;

use crate::{Error, Result};

/// The longest reason accepted, in bytes, from the CLI, list files and the offense API alike.
pub const MAX_REASON_BYTES: usize = 1024;

/// Whether `c` must not reach a terminal or a line-based format raw: the C0 controls (tab,
/// line feed, carriage return, ESC, BEL...), DEL and the C1 controls (which some terminals act
/// on as escapes too), the Unicode line and paragraph separators, and the bidirectional
/// overrides and isolates, which can make a line read differently from what it holds.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `text` with every unsafe character written as a Rust-style escape (`\n`, `\r`, `\t`,
/// `\u{1b}`); other characters, UTF-8 included, are kept. Borrowed when nothing needed escaping.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Refuses a reason longer than [`MAX_REASON_BYTES`], as bad input.
pub fn check_reason(reason: &str) -> Result<()> {
    if reason.len() > MAX_REASON_BYTES {
        return Err(Error::ReasonTooLong {
            bytes: reason.len(),
        });
    }
    Ok(())
}

/// `url` as it may be shown, logged or stored in a reason: a password in it and the values of
/// its query (where API keys go) written as `***`. Text that is no URL is shown as it is.
pub fn redacted_url(url: &str) -> String {
    let Ok(mut parsed) = reqwest::Url::parse(url) else {
        return url.to_string();
    };
    if parsed.password().is_some() {
        // Only a URL that cannot have a password refuses one.
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, &str)> = parsed
            .query_pairs()
            .map(|(name, value)| (name.into_owned(), if value.is_empty() { "" } else { "***" }))
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_url_is_shown_without_its_secrets() {
        assert_eq!(
            redacted_url("https://u:s3cret@lists.example/drop.txt?key=K3Y&fmt=txt"),
            "https://u:***@lists.example/drop.txt?key=***&fmt=***"
        );
        assert_eq!(
            redacted_url("http://lists.example/drop.txt"),
            "http://lists.example/drop.txt"
        );
        assert_eq!(redacted_url("not a url"), "not a url");
    }

    #[test]
    fn terminal_escapes_and_line_breaks_are_escaped() {
        assert_eq!(
            escape("\u{1b}[2J\u{1b}]0;pwned\u{7}"),
            "\\u{1b}[2J\\u{1b}]0;pwned\\u{7}"
        );
        assert_eq!(escape("a\nb\rc\td"), "a\\nb\\rc\\td");
        assert_eq!(escape("del\u{7f} c1\u{9b}"), "del\\u{7f} c1\\u{9b}");
        assert_eq!(escape("rtl\u{202e}txt"), "rtl\\u{202e}txt");
    }

    #[test]
    fn plain_text_is_kept_as_is() {
        for text in ["ssh brute force", "Müller's 🙂 scan #3", "C:\\path", ""] {
            assert!(matches!(escape(text), Cow::Borrowed(t) if t == text));
        }
    }

    #[test]
    fn reasons_are_bounded_at_one_kib() {
        assert!(check_reason(&"x".repeat(MAX_REASON_BYTES)).is_ok());
        let err = check_reason(&"x".repeat(MAX_REASON_BYTES + 1)).unwrap_err();
        assert!(err.is_bad_input());
        assert_eq!(
            err.to_string(),
            "reason too long (1025 bytes): at most 1024 bytes"
        );
    }

    proptest! {
        #[test]
        fn escaped_text_has_no_unsafe_character(text in any::<String>()) {
            let escaped = escape(&text);
            prop_assert!(!escaped.chars().any(is_unsafe));
            // Nothing but the unsafe characters changes.
            let kept: String = text.chars().filter(|c| !is_unsafe(*c)).collect();
            if kept.len() == text.len() {
                prop_assert_eq!(escaped.as_ref(), text.as_str());
            }
        }
    }
}

//! `[[feeds]]` in the config file: public block lists fetched on a schedule.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::formats::Format;

/// One feed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// Where the list is: `https://` (recommended) or `http://`.
    pub url: String,
    /// A PEM file of CA certificates trusted for this feed besides the system's store (a
    /// private feed server).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The list's format (`auto` tells it from the content).
    #[serde(default = "auto")]
    pub format: Format,
    /// How often it is fetched again.
    #[serde(with = "humantime_serde", default = "hourly")]
    pub every: Duration,
    /// How long a listed prefix is banned from each refresh that lists it; longer than
    /// `every`, so a listed prefix stays banned between refreshes.
    #[serde(with = "humantime_serde", default = "one_day")]
    pub ban_for: Duration,
    /// A list with more entries is refused (the last good one stays).
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
    /// A body larger than this many bytes is refused (the last good list stays).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
}

fn auto() -> Format {
    Format::Auto
}

fn hourly() -> Duration {
    Duration::from_secs(3600)
}

fn one_day() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_max_entries() -> usize {
    100_000
}

fn default_max_bytes() -> u64 {
    16 << 20
}

/// Checks every feed; the message names the feed and the key.
pub fn validate_feeds(feeds: &[FeedConfig]) -> Result<(), String> {
    for (index, feed) in feeds.iter().enumerate() {
        let bad = |message: &str| {
            Err(format!(
                "[[feeds]] #{} ({}): {message}",
                index + 1,
                crate::text::redacted_url(&feed.url)
            ))
        };
        if !(feed.url.starts_with("http://") || feed.url.starts_with("https://")) {
            return bad("url must start with http:// or https://");
        }
        if feed.ca_file.is_some() {
            if !feed.url.starts_with("https://") {
                return bad("ca_file needs an https:// url");
            }
            // Building the client reads and checks the file now, not at the first refresh.
            if let Err(err) = super::fetch::client(feed) {
                return bad(&err);
            }
        }
        if feed.format == Format::Fail2banDb {
            return bad("format fail2ban-db is a local database, not a feed");
        }
        if feed.every < Duration::from_secs(60) {
            return bad("every must be at least 1m");
        }
        if feed.ban_for <= feed.every {
            return bad("ban_for must be longer than every, or bans lapse between refreshes");
        }
        if feed.max_entries == 0 || feed.max_bytes == 0 {
            return bad("max_entries and max_bytes must be at least 1");
        }
    }
    if let Some(url) = duplicate_url(feeds) {
        return Err(format!("[[feeds]]: {url} is listed twice"));
    }
    Ok(())
}

fn duplicate_url(feeds: &[FeedConfig]) -> Option<&str> {
    let mut seen = std::collections::HashSet::new();
    feeds
        .iter()
        .map(|feed| feed.url.as_str())
        .find(|url| !seen.insert(*url))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn feeds_parse_with_defaults_and_bad_ones_are_named() {
        let config = Config::parse(
            "[[feeds]]\nurl = \"https://lists.example/drop.txt\"\nformat = \"spamhaus\"\n\
             every = \"12h\"\nban_for = \"2d\"\n\n[[feeds]]\nurl = \"http://127.0.0.1:8080/l\"\n",
        )
        .unwrap();
        assert_eq!(config.feeds.len(), 2);
        assert_eq!(config.feeds[1].every.as_secs(), 3600);
        assert_eq!(config.feeds[1].max_entries, 100_000);
        for (text, why) in [
            ("[[feeds]]\nurl = \"ftp://x/l\"\n", "http:// or https://"),
            (
                "[[feeds]]\nurl = \"http://x/l\"\nban_for = \"30m\"\n",
                "longer than every",
            ),
            (
                "[[feeds]]\nurl = \"http://x/l\"\nformat = \"fail2ban-db\"\n",
                "not a feed",
            ),
            (
                "[[feeds]]\nurl = \"http://x/l\"\nformat = \"csv\"\n",
                "line 3",
            ),
            (
                "[[feeds]]\nurl = \"http://x/l\"\n[[feeds]]\nurl = \"http://x/l\"\n",
                "twice",
            ),
            (
                "[[feeds]]\nurl = \"https://x/l\"\nca_file = \"/nonexistent/ca.pem\"\n",
                "ca_file /nonexistent/ca.pem: cannot read it",
            ),
            (
                "[[feeds]]\nurl = \"https://x/l\"\nca_file = \"/etc/hostname\"\n",
                "not a PEM certificate",
            ),
            (
                "[[feeds]]\nurl = \"http://x/l\"\nca_file = \"/etc/hostname\"\n",
                "needs an https:// url",
            ),
        ] {
            let err = Config::parse(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}

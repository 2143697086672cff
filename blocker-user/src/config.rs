//! The TOML config file read by `blocker load --config`. Every key is optional; a missing file
//! argument means the built-in defaults.

use std::path::Path;

use blocker_common::{
    DEFAULT_ALLOW_CAPACITY, DEFAULT_BAN_V4_CAPACITY, DEFAULT_BAN_V6_CAPACITY,
    DEFAULT_BLACKLIST_CAPACITY, DEFAULT_HISTORY_CAPACITY, DEFAULT_HISTORY_LONG_CAPACITY,
    DEFAULT_REJECT_BURST, DEFAULT_REJECT_PER_S,
};
use serde::Deserialize;

use crate::{logs::config::JailConfig, offense::OffenseConfig, rules::RuleSpec, Error, Result};

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub maps: MapCapacities,
    /// Rate and burst rules, in evaluation order; they replace the rules in force at load.
    /// Absent: keep the saved rules, or install the built-in `ssh` rule.
    pub rules: Option<Vec<RuleSpec>>,
    #[serde(default)]
    pub daemon: DaemonConfig,
    #[serde(default)]
    pub offenses: OffenseConfig,
    #[serde(default)]
    pub notify: NotifyConfig,
    #[serde(default)]
    pub rejects: RejectConfig,
    /// Log jails: bans from log files and the journal.
    #[serde(default)]
    pub jails: Vec<JailConfig>,
    /// Block-list feeds fetched on a schedule.
    #[serde(default)]
    pub feeds: Vec<crate::feeds::FeedConfig>,
    /// Bans shared with other servers through NATS JetStream.
    #[serde(default)]
    pub fleet: crate::fleet::FleetConfig,
}

/// How often reject rules may answer: a token bucket per CPU. Out of tokens, or for a source
/// that is not unicast, a reject rule drops instead, so it never amplifies a spoofed flood.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RejectConfig {
    /// Answers per second per CPU; 0 never answers.
    pub per_second: u32,
    /// Answers a CPU may send at once after a quiet spell.
    pub burst: u32,
}

impl Default for RejectConfig {
    fn default() -> Self {
        Self {
            per_second: DEFAULT_REJECT_PER_S,
            burst: DEFAULT_REJECT_BURST,
        }
    }
}

/// Where `blocker daemon` listens and keeps its state; command-line flags win.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    pub listen: String,
    pub socket: std::path::PathBuf,
    /// The state file, when `--state` / `BLOCKER_STATE` do not say.
    pub state: Option<std::path::PathBuf>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9977".into(),
            socket: "/run/blocker/blocker.sock".into(),
            state: None,
        }
    }
}

/// Where events go besides the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// An http:// URL that gets every event POSTed as JSON (with retries).
    pub webhook: Option<String>,
    /// A shell command run for every event, with the event in `BLOCKER_EVENT` (JSON),
    /// `BLOCKER_EVENT_KIND` and `BLOCKER_ADDR`; e.g. `mail -s "$BLOCKER_EVENT_KIND $BLOCKER_ADDR" root`.
    pub command: Option<String>,
}

/// Capacities of the maps that never evict; they are fixed when the maps are created.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MapCapacities {
    pub ban_v4: u32,
    pub ban_v6: u32,
    pub allow: u32,
    /// Dynamic blacklist entries of each family (LRU: a flood evicts the oldest, never a
    /// manual ban).
    pub blacklist: u32,
    /// Tracked sources of the rules with hitcounts up to 4 (LRU).
    pub history: u32,
    /// Tracked sources of the rules with longer hitcounts (LRU).
    pub history_long: u32,
}

impl Default for MapCapacities {
    fn default() -> Self {
        Self {
            ban_v4: DEFAULT_BAN_V4_CAPACITY,
            ban_v6: DEFAULT_BAN_V6_CAPACITY,
            allow: DEFAULT_ALLOW_CAPACITY,
            blacklist: DEFAULT_BLACKLIST_CAPACITY,
            history: DEFAULT_HISTORY_CAPACITY,
            history_long: DEFAULT_HISTORY_LONG_CAPACITY,
        }
    }
}

impl Config {
    /// Reads and validates a config file; errors name the line.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|err| Error::InvalidConfig {
            path: path.to_path_buf(),
            message: err.to_string(),
        })?;
        Self::parse(&text).map_err(|message| Error::InvalidConfig {
            path: path.to_path_buf(),
            message,
        })
    }

    /// The config in `path`, or the built-in defaults without one.
    pub fn load_or_default(path: Option<&Path>) -> Result<Self> {
        path.map_or_else(|| Ok(Self::default()), Self::load)
    }

    /// Parses config text; the error is one line: `line N: what is wrong`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Config = toml::from_str(text).map_err(|err| {
            let line = err
                .span()
                .map(|span| text[..span.start].matches('\n').count() + 1);
            let message = err.message().replace('\n', " ");
            match line {
                Some(line) => format!("line {line}: {message}"),
                None => message,
            }
        })?;
        let maps = &config.maps;
        for (key, value) in [
            ("ban_v4", maps.ban_v4),
            ("ban_v6", maps.ban_v6),
            ("allow", maps.allow),
            ("blacklist", maps.blacklist),
            ("history", maps.history),
            ("history_long", maps.history_long),
        ] {
            if value == 0 {
                return Err(format!("[maps] {key} must be at least 1"));
            }
        }
        if config.rejects.per_second > 0 && config.rejects.burst == 0 {
            return Err(
                "[rejects] burst must be at least 1 (per_second = 0 turns answers off)".into(),
            );
        }
        if let Some(rules) = &config.rules {
            crate::rules::RuleTable::from_specs(rules)?;
        }
        config.offenses.validate()?;
        crate::logs::config::validate_jails(&config.jails, &config.offenses)?;
        crate::feeds::validate_feeds(&config.feeds)?;
        if config
            .daemon
            .listen
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            return Err(format!(
                "[daemon] listen must be ADDR:PORT, not {:?}",
                config.daemon.listen
            ));
        }
        config.fleet.validate()?;
        if let Some(url) = &config.notify.webhook {
            if !url.starts_with("http://") {
                return Err(format!(
                    "[notify] webhook must be an http:// URL, not {url:?}"
                ));
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_default() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        assert_eq!(Config::default().maps.ban_v4, 1 << 20);
    }

    #[test]
    fn capacities_can_be_set() {
        let config = Config::parse("[maps]\nban_v4 = 16\nallow = 8\n").unwrap();
        assert_eq!(config.maps.ban_v4, 16);
        assert_eq!(config.maps.allow, 8);
        assert_eq!(config.maps.ban_v6, DEFAULT_BAN_V6_CAPACITY);
    }

    #[test]
    fn errors_name_the_line() {
        let err = Config::parse("[maps]\nban_v4 = 16\nbogus = 1\n").unwrap_err();
        assert!(err.starts_with("line 3:"), "{err}");
        assert!(!err.contains('\n'));
        let err = Config::parse("[maps]\nban_v4 = \"many\"\n").unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");
        let err = Config::parse("[maps]\nallow = 0\n").unwrap_err();
        assert!(err.contains("allow must be at least 1"), "{err}");
    }

    #[test]
    fn rejects_default_like_the_kernels_icmp_limits_and_can_be_set() {
        let rejects = Config::parse("").unwrap().rejects;
        assert_eq!((rejects.per_second, rejects.burst), (1000, 50));
        let rejects = Config::parse("[rejects]\nper_second = 5\nburst = 2\n")
            .unwrap()
            .rejects;
        assert_eq!((rejects.per_second, rejects.burst), (5, 2));
        let off = Config::parse("[rejects]\nper_second = 0\nburst = 0\n").unwrap();
        assert_eq!(off.rejects.per_second, 0);
        let err = Config::parse("[rejects]\nburst = 0\n").unwrap_err();
        assert!(err.contains("[rejects] burst must be at least 1"), "{err}");
        let err = Config::parse("[rejects]\nrate = 1\n").unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");
    }
}

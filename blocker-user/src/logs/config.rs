//! `[[jails]]` in the daemon's config: what each jail reads, how it matches, and when it bans.
//! Settings left out take the `[offenses]` values (masks, ban length and escalation), so
//! every ban source escalates alike.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use super::jail::JailRules;
use crate::offense::{Escalation, OffenseConfig};

/// What a jail looks for in its lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JailKind {
    /// Failures found by a filter, counted against `maxretry` within `findtime`.
    #[default]
    Filter,
    /// Bunches of requests in an access log (seed 003).
    Bunch,
}

fn default_maxretry() -> u32 {
    5
}
fn default_findtime() -> Duration {
    Duration::from_secs(600)
}
fn default_gap() -> Duration {
    Duration::from_secs(2)
}
fn default_bunch_size() -> u32 {
    10
}
fn default_min_bunch() -> u32 {
    4
}
fn default_bunch_count() -> u32 {
    10
}
fn default_window() -> Duration {
    Duration::from_secs(86_400)
}

/// One `[[jails]]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    pub name: String,
    #[serde(default)]
    pub kind: JailKind,
    /// A built-in filter's name or a fail2ban filter file (kind "filter").
    pub filter: Option<String>,
    /// Files to follow: paths or globs.
    #[serde(default)]
    pub logpath: Vec<String>,
    /// Journal match expressions (`FIELD=value`, `+` between alternatives), as journalctl
    /// takes them.
    #[serde(default)]
    pub journal: Vec<String>,
    /// Read the journal files in this directory instead of the system's.
    pub journal_directory: Option<PathBuf>,
    #[serde(default = "default_maxretry")]
    pub maxretry: u32,
    #[serde(default = "default_findtime", with = "humantime_serde")]
    pub findtime: Duration,
    /// The first ban's length; `[offenses] ban_for` when absent.
    #[serde(default, with = "humantime_serde")]
    pub bantime: Option<Duration>,
    #[serde(default)]
    pub ignoreip: Vec<ipnet::IpNet>,
    pub mask: Option<u8>,
    pub mask6: Option<u8>,
    pub escalation_factor: Option<f64>,
    #[serde(default, with = "humantime_serde")]
    pub escalation_cap: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub escalation_forget: Option<Duration>,
    /// Bunch analysis (kind "bunch"): a request within `gap` of the previous one continues a
    /// bunch; `bunch_size` requests in one bunch, or `bunch_count` bunches of at least
    /// `min_bunch` within `window`, flag the source.
    #[serde(default = "default_gap", with = "humantime_serde")]
    pub gap: Duration,
    #[serde(default = "default_bunch_size")]
    pub bunch_size: u32,
    #[serde(default = "default_min_bunch")]
    pub min_bunch: u32,
    #[serde(default = "default_bunch_count")]
    pub bunch_count: u32,
    #[serde(default = "default_window", with = "humantime_serde")]
    pub window: Duration,
}

impl JailConfig {
    /// The counting rules, with `[offenses]` filling in the masks.
    pub fn rules(&self, offenses: &OffenseConfig) -> JailRules {
        JailRules {
            name: self.name.clone(),
            maxretry: self.maxretry,
            findtime: self.findtime,
            mask: self.mask.unwrap_or(offenses.mask),
            mask6: self.mask6.unwrap_or(offenses.mask6),
            ignoreip: self.ignoreip.iter().map(|net| net.trunc()).collect(),
        }
    }

    /// How this jail's bans grow, with `[offenses]` filling in what is absent.
    pub fn escalation(&self, offenses: &OffenseConfig) -> Escalation {
        let defaults = offenses.escalation();
        Escalation {
            base: self.bantime.unwrap_or(defaults.base),
            factor: self.escalation_factor.unwrap_or(defaults.factor),
            cap: self.escalation_cap.unwrap_or(defaults.cap),
            forget: self.escalation_forget.unwrap_or(defaults.forget),
        }
    }

    /// The bunch analysis settings (kind "bunch").
    pub fn bunch_settings(&self) -> crate::logs::access::BunchSettings {
        crate::logs::access::BunchSettings {
            gap: self.gap,
            bunch_size: self.bunch_size,
            min_bunch: self.min_bunch,
            bunch_count: self.bunch_count,
            window: self.window,
        }
    }

    /// Checks one jail; the error is one line naming the jail.
    pub fn validate(&self, offenses: &OffenseConfig) -> Result<(), String> {
        let fail = |what: String| Err(format!("[[jails]] {:?}: {what}", self.name));
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return fail("name must be letters, digits, '-', '_' or '.'".into());
        }
        if self.logpath.is_empty() && self.journal.is_empty() {
            return fail("give logpath (files) or journal (match expressions)".into());
        }
        for path in &self.logpath {
            if !path.starts_with('/') {
                return fail(format!("logpath {path:?} must be an absolute path"));
            }
            if let Err(err) = glob::Pattern::new(path) {
                return fail(format!("logpath {path:?} is not a valid glob: {err}"));
            }
        }
        for expression in &self.journal {
            if !is_journal_match(expression) {
                return fail(format!(
                    "journal match {expression:?} must be FIELD=value (FIELD in capitals, \
                     like _SYSTEMD_UNIT=ssh.service) or +"
                ));
            }
        }
        if self.journal_directory.is_some() && self.journal.is_empty() {
            return fail("journal_directory needs journal match expressions".into());
        }
        match (self.kind, &self.filter) {
            (JailKind::Filter, None) => {
                return fail("filter is missing (a built-in name or a filter file)".into())
            }
            (JailKind::Bunch, Some(_)) => {
                return fail("kind \"bunch\" reads access logs and takes no filter".into())
            }
            (JailKind::Filter, Some(filter)) => {
                if let Err(err) = super::filter::Filter::load(filter) {
                    return fail(err.to_string());
                }
            }
            (JailKind::Bunch, None) => {}
        }
        if self.maxretry == 0 {
            return fail("maxretry must be at least 1".into());
        }
        if self.findtime.is_zero() {
            return fail("findtime must be longer than 0s".into());
        }
        let escalation = self.escalation(offenses);
        if escalation.base.is_zero() {
            return fail("bantime must be longer than 0s".into());
        }
        if escalation.factor.is_nan() || escalation.factor < 1.0 {
            return fail("escalation_factor must be at least 1".into());
        }
        let rules = self.rules(offenses);
        if !(1..=32).contains(&rules.mask) || !(1..=128).contains(&rules.mask6) {
            return fail("mask must be 1 to 32 and mask6 1 to 128".into());
        }
        if self.kind == JailKind::Bunch {
            if let Err(err) = crate::logs::access::BunchTracker::new(self.bunch_settings()) {
                return fail(err.to_string());
            }
        }
        Ok(())
    }
}

/// A journalctl match: `FIELD=value` with the field in capitals, digits and `_`, or `+`.
fn is_journal_match(expression: &str) -> bool {
    if expression == "+" {
        return true;
    }
    expression.split_once('=').is_some_and(|(field, _)| {
        !field.is_empty()
            && field
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    })
}

/// Checks the jails of a config: each one, and that names are unique.
pub fn validate_jails(jails: &[JailConfig], offenses: &OffenseConfig) -> Result<(), String> {
    let mut names = std::collections::HashSet::new();
    for jail in jails {
        jail.validate(offenses)?;
        if !names.insert(jail.name.as_str()) {
            return Err(format!("[[jails]] {:?} is named twice", jail.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const ISSUE_EXAMPLE: &str = r#"
[[jails]]
name = "sshd"
filter = "sshd"
logpath = ["/var/log/auth.log"]
maxretry = 5
findtime = "10m"
bantime = "1h"
ignoreip = ["192.0.2.0/24"]

[[jails]]
name = "web-bunches"
kind = "bunch"
logpath = ["/var/log/apache2/access.log", "/var/log/nginx/access.log"]
gap = "2s"
bunch_size = 10
min_bunch = 4
bunch_count = 10
window = "24h"
bantime = "7d"
"#;

    #[test]
    fn the_examples_of_the_readme_load() {
        let config = Config::parse(ISSUE_EXAMPLE).unwrap();
        assert_eq!(config.jails.len(), 2);
        let sshd = &config.jails[0];
        assert_eq!(sshd.findtime.as_secs(), 600);
        let escalation = sshd.escalation(&config.offenses);
        assert_eq!(escalation.base.as_secs(), 3600);
        assert_eq!(escalation.factor, config.offenses.escalation_factor);
        let rules = sshd.rules(&config.offenses);
        assert_eq!((rules.mask, rules.mask6), (32, 64));
        assert_eq!(config.jails[1].kind, super::JailKind::Bunch);
        assert_eq!(config.jails[1].window.as_secs(), 86_400);
    }

    fn error_of(jail: &str) -> String {
        Config::parse(&format!("[[jails]]\n{jail}"))
            .map(|_| String::new())
            .unwrap_or_else(|err| err)
    }

    #[test]
    fn bad_jails_are_one_line_errors_naming_the_jail() {
        for (jail, expected) in [
            (
                "name = \"a\"\nfilter = \"sshd\"\nlogpath = [\"/l\"]\nmaxretry = 0\n",
                "\"a\": maxretry must be at least 1",
            ),
            (
                "name = \"a\"\nfilter = \"sshd\"\nlogpath = [\"/var/log/[a.log\"]\n",
                "is not a valid glob",
            ),
            (
                "name = \"a\"\nfilter = \"sshd\"\nlogpath = [\"auth.log\"]\n",
                "must be an absolute path",
            ),
            ("name = \"a\"\nfilter = \"sshd\"\n", "give logpath"),
            ("name = \"a\"\nlogpath = [\"/l\"]\n", "filter is missing"),
            (
                "name = \"a\"\nfilter = \"sshd\"\njournal = [\"ssh\"]\n",
                "journal match \"ssh\"",
            ),
            (
                "name = \"a b\"\nfilter = \"sshd\"\nlogpath = [\"/l\"]\n",
                "name must be",
            ),
            (
                "name = \"a\"\nkind = \"bunch\"\nlogpath = [\"/l\"]\nbunch_size = 1\n",
                "at least 2 requests",
            ),
            (
                "name = \"a\"\nfilter = \"sshd\"\nlogpath = [\"/l\"]\nmask6 = 129\n",
                "mask6",
            ),
            (
                "name = \"a\"\nfilter = \"sshd\"\nlogpath = [\"/l\"]\nbantime = \"0s\"\n",
                "bantime",
            ),
            (
                "name = \"a\"\nfilter = \"no-such-filter\"\nlogpath = [\"/l\"]\n",
                "no-such-filter",
            ),
            (
                "name = \"a\"\nfilter = \"sshd\"\nlogpath = [\"/l\"]\nmaxretries = 3\n",
                "line 5:",
            ),
        ] {
            let err = error_of(jail);
            assert!(err.contains(expected), "{jail}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let twice = "[[jails]]\nname = \"a\"\nfilter = \"sshd\"\nlogpath = [\"/l\"]\n";
        let err = Config::parse(&format!("{twice}{twice}")).unwrap_err();
        assert!(err.contains("named twice"), "{err}");
        let journal = "name = \"j\"\nfilter = \"sshd\"\njournal = [\"_SYSTEMD_UNIT=ssh.service\", \"+\", \"SYSLOG_IDENTIFIER=sshd\"]\n";
        assert_eq!(error_of(journal), "");
    }
}

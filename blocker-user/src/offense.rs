//! Offense scoring (seed 000): applications report offenses with a weight; a source's score
//! decays with a half-life, so offenses are forgiven after a while; crossing the threshold bans
//! the source, for longer each time it comes back, until it stays quiet long enough to be
//! forgiven that too. Pure: every function takes the time, so tests drive a fake clock.

use std::{collections::BTreeMap, time::Duration};

use ipnet::IpNet;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// How bad an offense is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Severity {
    Named(Level),
    Weight(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Minor,
    Major,
    Critical,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Minor => "minor",
            Level::Major => "major",
            Level::Critical => "critical",
        }
    }
}

/// Scoring settings: the `[offenses]` section of the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OffenseConfig {
    pub minor: f64,
    pub major: f64,
    pub critical: f64,
    pub threshold: f64,
    /// Scores halve every `half_life`.
    #[serde(with = "humantime_serde")]
    pub half_life: Duration,
    /// The first ban's length.
    #[serde(with = "humantime_serde")]
    pub ban_for: Duration,
    /// Each further ban of a source lasts this many times longer...
    pub escalation_factor: f64,
    /// ...up to this.
    #[serde(with = "humantime_serde")]
    pub escalation_cap: Duration,
    /// A source quiet (no ban) this long starts again from the first ban's length.
    #[serde(with = "humantime_serde")]
    pub escalation_forget: Duration,
    /// Sources are scored per prefix, like rules.
    pub mask: u8,
    pub mask6: u8,
}

impl Default for OffenseConfig {
    /// About 30 minor offenses within an hour, 2 major ones within 24 hours, or 1 critical one
    /// cross the threshold.
    fn default() -> Self {
        Self {
            minor: 0.36,
            major: 9.5,
            critical: 10.0,
            threshold: 10.0,
            half_life: Duration::from_secs(6 * 3600),
            ban_for: Duration::from_secs(3600),
            escalation_factor: 4.0,
            escalation_cap: Duration::from_secs(30 * 86_400),
            escalation_forget: Duration::from_secs(7 * 86_400),
            mask: 32,
            mask6: 64,
        }
    }
}

impl OffenseConfig {
    /// The weight of an offense. A numeric weight is bounded by the threshold: one report can
    /// ban by itself, but never push a score past what one more offense would.
    pub fn weight(&self, severity: Severity) -> Result<f64, String> {
        let weight = match severity {
            Severity::Named(Level::Minor) => self.minor,
            Severity::Named(Level::Major) => self.major,
            Severity::Named(Level::Critical) => self.critical,
            Severity::Weight(weight) => weight,
        };
        if !(weight.is_finite() && weight > 0.0) {
            return Err(format!(
                "severity weight must be a positive number, not {weight}"
            ));
        }
        if matches!(severity, Severity::Weight(_)) && weight > self.threshold {
            return Err(format!(
                "severity weight {weight} is above the threshold {}, the largest accepted",
                self.threshold
            ));
        }
        Ok(weight)
    }

    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("minor", self.minor),
            ("major", self.major),
            ("critical", self.critical),
            ("threshold", self.threshold),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(format!("[offenses] {name} must be a positive number"));
            }
        }
        if self.half_life.is_zero() || self.ban_for.is_zero() {
            return Err("[offenses] half_life and ban_for must be longer than 0s".into());
        }
        if self.escalation_factor.is_nan() || self.escalation_factor < 1.0 {
            return Err("[offenses] escalation_factor must be at least 1".into());
        }
        if !(1..=32).contains(&self.mask) || !(1..=128).contains(&self.mask6) {
            return Err("[offenses] mask must be 1 to 32 and mask6 1 to 128".into());
        }
        Ok(())
    }

    /// The escalation of offense bans.
    pub fn escalation(&self) -> Escalation {
        Escalation {
            base: self.ban_for,
            factor: self.escalation_factor,
            cap: self.escalation_cap,
            forget: self.escalation_forget,
        }
    }

    /// The prefix a source is scored and banned as.
    pub fn prefix_of(&self, addr: IpNet) -> IpNet {
        let len = match addr {
            IpNet::V4(_) => self.mask,
            IpNet::V6(net) => crate::addr::v6_key_len(net.addr(), self.mask6),
        };
        IpNet::new(addr.addr(), len.min(addr.prefix_len()))
            .map(|net| net.trunc())
            .unwrap_or(addr)
    }
}

/// How ban lengths grow for a source banned again: `base` first, `factor` times longer each
/// further time, at most `cap`; after `forget` without a ban, `base` again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Escalation {
    pub base: Duration,
    pub factor: f64,
    pub cap: Duration,
    pub forget: Duration,
}

/// What is remembered about one scored subject (a prefix, or a prefix and a key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub score: f64,
    pub at: Timestamp,
    /// Reasons of the offenses behind the current score, newest last (a few).
    #[serde(default)]
    pub reasons: Vec<String>,
}

/// A source's ban history, for escalation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BanHistory {
    pub bans: u32,
    pub last_ban: Timestamp,
}

/// Everything the daemon scores; kept in the state file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OffenseBook {
    /// Keyed by `prefix` or `prefix key`.
    #[serde(default)]
    pub scores: BTreeMap<String, Score>,
    #[serde(default)]
    pub history: BTreeMap<IpNet, BanHistory>,
}

/// What one offense led to.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The subject's score after the offense.
    Scored { prefix: IpNet, score: f64 },
    /// Ban `prefix` for `duration`, with `reason`.
    Ban {
        prefix: IpNet,
        score: f64,
        duration: Duration,
        reason: String,
    },
}

const KEPT_REASONS: usize = 5;

/// Keys scored apart for one source at most. A source reporting more at once is not a NAT's
/// users each mistyping a few times but one spraying user names: its further keyed offenses
/// score the source itself (which the pairs never raise), and its stored scores stay bounded.
pub const MAX_KEYS_PER_SOURCE: usize = 64;

fn decayed(score: &Score, now: Timestamp, half_life: Duration) -> f64 {
    let elapsed = now.duration_since(score.at).as_secs_f64().max(0.0);
    score.score * 0.5f64.powf(elapsed / half_life.as_secs_f64())
}

impl OffenseBook {
    /// Records an offense by `addr` (and `key`, which scores the pair on its own: see the
    /// README) at `now`.
    pub fn offend(
        &mut self,
        config: &OffenseConfig,
        addr: IpNet,
        severity: Severity,
        reason: &str,
        key: Option<&str>,
        now: Timestamp,
    ) -> Result<Verdict, String> {
        let weight = config.weight(severity)?;
        let prefix = config.prefix_of(addr);
        let keyed = key.map(|key| format!("{prefix} {key}")).filter(|keyed| {
            self.scores.contains_key(keyed)
                || self
                    .scores
                    .range(format!("{prefix} ")..format!("{prefix}!"))
                    .count()
                    < MAX_KEYS_PER_SOURCE
        });
        let subject = keyed.unwrap_or_else(|| prefix.to_string());
        let entry = self.scores.entry(subject.clone()).or_insert(Score {
            score: 0.0,
            at: now,
            reasons: Vec::new(),
        });
        entry.score = decayed(entry, now, config.half_life) + weight;
        entry.at = now;
        if !reason.is_empty() {
            // A reporter's text, kept and logged as one line: a line break in it could
            // forge a log line that log filters read as blocker's own.
            entry.reasons.push(crate::text::escape(reason).into_owned());
            let excess = entry.reasons.len().saturating_sub(KEPT_REASONS);
            entry.reasons.drain(..excess);
        }
        let score = entry.score;
        if score < config.threshold {
            return Ok(Verdict::Scored { prefix, score });
        }
        let reasons = entry.reasons.join("; ");
        // The ban consumes the score: the next ban needs a fresh run of offenses.
        self.scores.remove(&subject);
        let duration = self.ban_length(config, prefix, now);
        Ok(Verdict::Ban {
            prefix,
            score,
            duration,
            reason: if reasons.is_empty() {
                format!("offenses (score {score:.1})")
            } else {
                format!("offenses (score {score:.1}): {reasons}")
            },
        })
    }

    /// The length of the next ban of `prefix`, and records that ban.
    fn ban_length(&mut self, config: &OffenseConfig, prefix: IpNet, now: Timestamp) -> Duration {
        self.next_ban_length(prefix, &config.escalation(), now)
    }

    /// The length of the next ban of `prefix` under `escalation`, and records that ban: the
    /// base length, times the factor for each earlier ban not yet forgotten, up to the cap.
    /// Every ban source (offenses, log jails) shares one history per prefix.
    pub fn next_ban_length(
        &mut self,
        prefix: IpNet,
        escalation: &Escalation,
        now: Timestamp,
    ) -> Duration {
        let history = self.history.entry(prefix).or_insert(BanHistory {
            bans: 0,
            last_ban: now,
        });
        let quiet = now.duration_since(history.last_ban).as_secs_f64();
        if quiet > escalation.forget.as_secs_f64() {
            history.bans = 0;
        }
        let factor = escalation.factor.powi(history.bans.min(64) as i32);
        let seconds = (escalation.base.as_secs_f64() * factor).min(escalation.cap.as_secs_f64());
        history.bans += 1;
        history.last_ban = now;
        Duration::from_secs_f64(seconds)
    }

    /// Drops scores that have decayed below 1% of the threshold and histories past their
    /// forgiveness, so the state file does not grow forever.
    pub fn forget(&mut self, config: &OffenseConfig, now: Timestamp) {
        self.scores
            .retain(|_, score| decayed(score, now, config.half_life) >= config.threshold / 100.0);
        let forget = config.escalation_forget.as_secs_f64();
        self.history
            .retain(|_, history| now.duration_since(history.last_ban).as_secs_f64() <= forget);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn addr(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    const MINOR: Severity = Severity::Named(Level::Minor);
    const MAJOR: Severity = Severity::Named(Level::Major);
    const CRITICAL: Severity = Severity::Named(Level::Critical);

    fn is_ban(verdict: &Verdict) -> bool {
        matches!(verdict, Verdict::Ban { .. })
    }

    /// Every host on a link shares fe80::/64: a neighbour's offenses are its own.
    #[test]
    fn a_link_local_source_is_scored_as_one_host() {
        let config = OffenseConfig::default();
        assert_eq!(
            config.prefix_of(addr("fe80::1:2/128")),
            addr("fe80::1:2/128")
        );
        assert_eq!(config.prefix_of(addr("fe80::/64")), addr("fe80::/64"));
        assert_eq!(
            config.prefix_of(addr("2001:db8::1:2/128")),
            addr("2001:db8::/64")
        );
    }

    #[test]
    fn about_thirty_minor_offenses_in_an_hour_ban_and_fewer_do_not() {
        let config = OffenseConfig::default();
        let mut book = OffenseBook::default();
        let source = addr("192.0.2.7/32");
        let mut banned_at = None;
        for i in 0..40 {
            let verdict = book
                .offend(&config, source, MINOR, "wrong password", None, at(i * 120))
                .unwrap();
            if is_ban(&verdict) {
                banned_at = Some(i + 1);
                break;
            }
        }
        let count = banned_at.expect("banned");
        assert!(
            (27..=33).contains(&count),
            "banned after {count} minor offenses"
        );
        // Spread over a day, the same number never gets there: forgiveness.
        let mut book = OffenseBook::default();
        for i in 0..40 {
            let verdict = book
                .offend(&config, source, MINOR, "", None, at(i * 3 * 3600))
                .unwrap();
            assert!(!is_ban(&verdict), "offense {i}");
        }
    }

    #[test]
    fn a_source_spraying_keys_is_scored_itself_past_a_bound() {
        let config = OffenseConfig::default();
        let mut book = OffenseBook::default();
        let source = addr("203.0.113.7/32");
        let banned_at = (0..10_000).find(|i| {
            let key = format!("user{i}");
            is_ban(
                &book
                    .offend(&config, source, MINOR, "", Some(&key), at(*i))
                    .unwrap(),
            )
        });
        // 64 pairs, then the source's own score: 28 minor offenses reach the threshold.
        assert_eq!(banned_at, Some(MAX_KEYS_PER_SOURCE as i64 + 27));
        assert!(book.scores.len() <= MAX_KEYS_PER_SOURCE + 1);
        // A key already scored keeps its pair.
        let mut book = OffenseBook::default();
        for i in 0..MAX_KEYS_PER_SOURCE {
            let key = format!("user{i}");
            book.offend(&config, source, MINOR, "", Some(&key), at(0))
                .unwrap();
        }
        book.offend(&config, source, MINOR, "", Some("user0"), at(1))
            .unwrap();
        assert!(book.scores.contains_key("203.0.113.7/32 user0"));
        assert!(!book.scores.contains_key("203.0.113.7/32"));
    }

    #[test]
    fn a_reporter_s_reason_is_kept_on_one_line() {
        let config = OffenseConfig::default();
        let mut book = OffenseBook::default();
        let forged = "x\nadding to BLACKLIST: 198.51.100.1 rule=ssh\r\u{2028}";
        match book
            .offend(&config, addr("192.0.2.9/32"), CRITICAL, forged, None, at(0))
            .unwrap()
        {
            Verdict::Ban { reason, .. } => {
                assert!(!reason.chars().any(crate::text::is_unsafe), "{reason:?}");
                assert!(reason.contains(r"x\nadding to BLACKLIST"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn two_major_offenses_within_a_day_ban_one_does_not() {
        let config = OffenseConfig::default();
        let mut book = OffenseBook::default();
        let source = addr("2001:db8:1:2::99/128");
        let first = book
            .offend(&config, source, MAJOR, "exploit probe", None, at(0))
            .unwrap();
        assert!(!is_ban(&first));
        let second = book
            .offend(&config, source, MAJOR, "exploit probe", None, at(23 * 3600))
            .unwrap();
        match second {
            Verdict::Ban { prefix, reason, .. } => {
                assert_eq!(
                    prefix.to_string(),
                    "2001:db8:1:2::/64",
                    "IPv6 is scored per /64"
                );
                assert!(reason.contains("exploit probe"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // Two days apart, forgiven.
        let mut book = OffenseBook::default();
        book.offend(&config, source, MAJOR, "", None, at(0))
            .unwrap();
        assert!(!is_ban(
            &book
                .offend(&config, source, MAJOR, "", None, at(48 * 3600))
                .unwrap()
        ));
    }

    #[test]
    fn one_critical_offense_bans_and_weights_can_be_numbers() {
        let config = OffenseConfig::default();
        let mut book = OffenseBook::default();
        assert!(is_ban(
            &book
                .offend(&config, addr("10.0.0.1/32"), CRITICAL, "", None, at(0))
                .unwrap()
        ));
        let verdict = book
            .offend(
                &config,
                addr("10.0.0.2/32"),
                Severity::Weight(4.0),
                "",
                None,
                at(0),
            )
            .unwrap();
        assert_eq!(
            verdict,
            Verdict::Scored {
                prefix: addr("10.0.0.2/32"),
                score: 4.0
            }
        );
        let err = book
            .offend(
                &config,
                addr("10.0.0.2/32"),
                Severity::Weight(-1.0),
                "",
                None,
                at(0),
            )
            .unwrap_err();
        assert!(err.contains("positive"), "{err}");
        for weight in [f64::INFINITY, f64::NAN, 1e300, 10.000_001] {
            let err = book
                .offend(
                    &config,
                    addr("10.0.0.3/32"),
                    Severity::Weight(weight),
                    "",
                    None,
                    at(0),
                )
                .unwrap_err();
            assert!(err.contains("weight"), "{weight}: {err}");
        }
        assert!(!book
            .scores
            .keys()
            .any(|subject| subject.starts_with("10.0.0.3")));
    }

    #[test]
    fn repeat_offenders_get_longer_bans_up_to_the_cap_and_are_forgiven() {
        let config = OffenseConfig {
            ban_for: Duration::from_secs(3600),
            escalation_factor: 4.0,
            escalation_cap: Duration::from_secs(20 * 3600),
            escalation_forget: Duration::from_secs(7 * 86_400),
            ..OffenseConfig::default()
        };
        let mut book = OffenseBook::default();
        let source = addr("198.51.100.1/32");
        let mut lengths = Vec::new();
        for day in 0..4 {
            match book
                .offend(&config, source, CRITICAL, "", None, at(day * 86_400))
                .unwrap()
            {
                Verdict::Ban { duration, .. } => lengths.push(duration.as_secs() / 3600),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(lengths, [1, 4, 16, 20], "x4 each time, capped at 20h");
        // Quiet for longer than escalation_forget: back to the first length.
        match book
            .offend(&config, source, CRITICAL, "", None, at(20 * 86_400))
            .unwrap()
        {
            Verdict::Ban { duration, .. } => assert_eq!(duration.as_secs(), 3600),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keys_score_pairs_on_their_own() {
        let config = OffenseConfig::default();
        let mut book = OffenseBook::default();
        let nat = addr("203.0.113.5/32");
        // Ten users behind one address, each mistyping a few times: no ban.
        for user in 0..10 {
            for _ in 0..3 {
                let verdict = book
                    .offend(&config, nat, MINOR, "", Some(&format!("user{user}")), at(0))
                    .unwrap();
                assert!(!is_ban(&verdict));
            }
        }
        // One user hammering: the address is banned.
        let mut banned = false;
        for _ in 0..30 {
            banned |= is_ban(
                &book
                    .offend(&config, nat, MINOR, "", Some("admin"), at(60))
                    .unwrap(),
            );
        }
        assert!(banned);
    }

    #[test]
    fn forgetting_drops_old_scores_and_histories() {
        let config = OffenseConfig::default();
        let mut book = OffenseBook::default();
        book.offend(&config, addr("192.0.2.1/32"), MAJOR, "", None, at(0))
            .unwrap();
        book.offend(&config, addr("192.0.2.2/32"), CRITICAL, "", None, at(0))
            .unwrap();
        book.forget(&config, at(3600));
        assert_eq!(book.scores.len(), 1);
        assert_eq!(book.history.len(), 1);
        book.forget(&config, at(30 * 86_400));
        assert!(book.scores.is_empty() && book.history.is_empty());
    }

    #[test]
    fn bad_config_is_named() {
        let config = OffenseConfig {
            threshold: 0.0,
            ..OffenseConfig::default()
        };
        assert!(config.validate().unwrap_err().contains("threshold"));
        let config = OffenseConfig {
            escalation_factor: 0.5,
            ..OffenseConfig::default()
        };
        assert!(config.validate().unwrap_err().contains("escalation_factor"));
    }
}

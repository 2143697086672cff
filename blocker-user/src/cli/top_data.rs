//! What `blocker top` shows, read from the pinned maps alone (no daemon): two readings of the
//! kernel's counters make a snapshot of rates over the interval between them.

use std::{path::Path, time::Instant};

use blocker::{
    clock::Now,
    dynamic,
    pins::PinDir,
    state::{self, Listed},
    status::{self, CounterRow, MapUsage, FILLING_MAPS},
};
use serde::Serialize;

use super::{
    top_events::{blacklist_changes, read_history, Event, HistoryRead},
    top_samples::{blocked_sources, Blocked, SampleReading},
};

/// Sources kept in a snapshot: more than any screen shows.
const MAX_SOURCES: usize = 50;

/// The kernel's numbers at one moment.
pub struct Reading {
    at: Instant,
    counters: Vec<CounterRow>,
    rules: Vec<RuleTotals>,
    blacklist: Vec<Listed>,
    maps: Vec<MapUsage>,
    wall: jiff::Timestamp,
    /// The history rows since the previous reading; `None`: the state was unavailable.
    history: Option<HistoryRead>,
    /// Where the next reading's history starts: kept across an unavailable state.
    history_cursor: Option<i64>,
    samples: SampleReading,
}

struct RuleTotals {
    name: String,
    slot: u32,
    events: u64,
    blacklisted: u64,
    dropped: u64,
    rejected: u64,
}

impl Reading {
    /// Reads the counters, rule stats, dynamic blacklist and map fill. The tries' fill comes
    /// from the state database's kept counts (a walk of a million keys would take seconds).
    /// The history is read after the `previous` reading's rows (the newest rows without one).
    pub fn take(
        pins: &PinDir,
        state_path: &Path,
        previous: Option<&Reading>,
    ) -> anyhow::Result<Self> {
        let cursor = previous.and_then(|reading| reading.history_cursor);
        let history = read_history(state_path, cursor);
        let summary = state::summary(state_path).unwrap_or_default();
        let status = status::read_counted(pins, Some(&summary.entries))?;
        let stats = dynamic::rule_stats(pins)?;
        let rules = summary
            .rules
            .iter()
            .flat_map(|table| &table.rules)
            .map(|placed| {
                let counts = stats.get(placed.slot as usize).copied().unwrap_or_default();
                RuleTotals {
                    name: placed.spec.name.clone(),
                    slot: placed.slot,
                    events: counts.events,
                    blacklisted: counts.blacklisted,
                    dropped: counts.dropped,
                    rejected: counts.rejected,
                }
            })
            .collect();
        let samples = SampleReading::take(pins)?;
        let now = Now::read();
        let blacklist = dynamic::blacklist(pins, summary.rules.as_ref(), &now)?;
        Ok(Self {
            at: Instant::now(),
            wall: now.wall,
            history_cursor: history.as_ref().map(|read| read.last_id).or(cursor),
            history,
            samples,
            counters: status.counters,
            rules,
            blacklist,
            maps: status
                .maps
                .into_iter()
                .filter(|map| FILLING_MAPS.contains(&map.name))
                .collect(),
        })
    }

    /// The history rows this reading took: the newest ones, for a first reading.
    pub fn history_events(&self) -> &[Event] {
        self.history.as_ref().map_or(&[], |read| &read.events)
    }
}

/// One interval's view: totals and per-second rates.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub interval_secs: f64,
    /// pass, drop, tx.
    pub verdicts: Vec<Traffic>,
    /// Every reason that ever counted a packet.
    pub reasons: Vec<Traffic>,
    pub rules: Vec<RuleRates>,
    /// The sources blocked in the interval (from the kernel's sample) and the dynamic
    /// blacklist, most blocked first.
    pub sources: Vec<Source>,
    pub maps: Vec<MapFill>,
    /// Bans, unbans, expiries and allowlist changes from the state's history, and the dynamic
    /// blacklist's changes, during the interval, oldest first.
    pub events: Vec<Event>,
    /// Whether the state database could be read (absent or locked: no history events).
    pub state_available: bool,
    /// The source list's title: its order and filter.
    #[serde(skip)]
    pub sources_title: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Traffic {
    pub action: &'static str,
    /// Empty for a verdict's total.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub reason: &'static str,
    pub packets: u64,
    pub bytes: u64,
    /// Packets counted during the interval.
    pub packets_in_interval: u64,
    pub packets_per_sec: f64,
    pub bits_per_sec: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RuleRates {
    pub name: String,
    pub events: u64,
    pub blacklisted: u64,
    pub dropped: u64,
    pub rejected: u64,
    pub events_per_sec: f64,
    pub blacklisted_per_sec: f64,
    pub dropped_per_sec: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Source {
    pub addr: String,
    pub rule: Option<String>,
    /// Events the rule had counted from the source when it blacklisted it.
    pub hits: u32,
    pub expires_at: Option<jiff::Timestamp>,
    /// Why its packets were blocked in the interval (the most blocked reason); empty if none
    /// was sampled.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub reason: &'static str,
    /// The packets blocked in the interval, estimated from the kernel's sample.
    pub blocked_in_interval: u64,
    pub blocked_per_sec: f64,
    /// The sampled packets the estimate stands on.
    pub samples: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct MapFill {
    pub name: &'static str,
    pub entries: u64,
    pub capacity: u32,
}

impl MapFill {
    /// Entries over capacity, 0 to 1.
    pub fn ratio(&self) -> f64 {
        if self.capacity == 0 {
            return 0.0;
        }
        self.entries as f64 / f64::from(self.capacity)
    }
}

/// Which sources a snapshot keeps, and in which order.
#[derive(Debug, Clone, Default)]
pub struct SourceFilter {
    /// 4 or 6.
    pub family: Option<u8>,
    pub rule: Option<String>,
    pub sort: SortBy,
}

/// The order of the source list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    /// Most packets blocked in the interval first.
    #[default]
    Blocked,
    /// Most hits first.
    Hits,
    /// Soonest expiry first.
    Expiry,
    /// By address.
    Addr,
}

impl SortBy {
    /// The next order, for the `s` key.
    pub fn next(self) -> Self {
        match self {
            SortBy::Blocked => SortBy::Hits,
            SortBy::Hits => SortBy::Expiry,
            SortBy::Expiry => SortBy::Addr,
            SortBy::Addr => SortBy::Blocked,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SortBy::Blocked => "most blocked first",
            SortBy::Hits => "most hits first",
            SortBy::Expiry => "soonest expiry first",
            SortBy::Addr => "by address",
        }
    }
}

impl SourceFilter {
    /// The next family shown, for the `f` key: all, IPv4, IPv6.
    pub fn next_family(&mut self) {
        self.family = match self.family {
            None => Some(4),
            Some(4) => Some(6),
            _ => None,
        };
    }

    /// What the source list's title says about the filter and the order.
    pub fn describe(&self) -> String {
        let mut text = format!("blocked sources, {}", self.sort.name());
        if let Some(family) = self.family {
            text.push_str(&format!(", IPv{family} only"));
        }
        if let Some(rule) = &self.rule {
            text.push_str(&format!(", rule {}", blocker::text::escape(rule)));
        }
        text
    }

    fn keeps(&self, source: &Source) -> bool {
        let family_ok = match self.family {
            Some(4) => !source.addr.contains(':'),
            Some(6) => source.addr.contains(':'),
            _ => true,
        };
        family_ok
            && self
                .rule
                .as_ref()
                .is_none_or(|rule| source.rule.as_ref() == Some(rule))
    }
}

impl Snapshot {
    /// The rates between two readings, `before` taken first.
    pub fn between(before: &Reading, after: &Reading, filter: &SourceFilter) -> Self {
        let secs = after
            .at
            .saturating_duration_since(before.at)
            .as_secs_f64()
            .max(1e-3);
        let reasons: Vec<Traffic> = after
            .counters
            .iter()
            .map(|row| {
                let earlier = before.counters.iter().find(|old| old.reason == row.reason);
                let packets = row
                    .packets
                    .saturating_sub(earlier.map_or(0, |old| old.packets));
                let bytes = row.bytes.saturating_sub(earlier.map_or(0, |old| old.bytes));
                Traffic {
                    action: row.action,
                    reason: row.reason,
                    packets: row.packets,
                    bytes: row.bytes,
                    packets_in_interval: packets,
                    packets_per_sec: packets as f64 / secs,
                    bits_per_sec: bytes as f64 * 8.0 / secs,
                }
            })
            .collect();
        let verdicts = ["pass", "drop", "tx"]
            .iter()
            .map(|action| {
                let rows = reasons.iter().filter(|row| row.action == *action);
                rows.fold(
                    Traffic {
                        action,
                        ..Traffic::default()
                    },
                    |sum, row| Traffic {
                        packets: sum.packets + row.packets,
                        bytes: sum.bytes + row.bytes,
                        packets_in_interval: sum.packets_in_interval + row.packets_in_interval,
                        packets_per_sec: sum.packets_per_sec + row.packets_per_sec,
                        bits_per_sec: sum.bits_per_sec + row.bits_per_sec,
                        ..sum
                    },
                )
            })
            .collect();
        let rules = after
            .rules
            .iter()
            .map(|rule| {
                let old = before.rules.iter().find(|old| old.name == rule.name);
                let rate = |now: u64, then: Option<u64>| {
                    now.saturating_sub(then.unwrap_or(0)) as f64 / secs
                };
                RuleRates {
                    name: rule.name.clone(),
                    events: rule.events,
                    blacklisted: rule.blacklisted,
                    dropped: rule.dropped,
                    rejected: rule.rejected,
                    events_per_sec: rate(rule.events, old.map(|o| o.events)),
                    blacklisted_per_sec: rate(rule.blacklisted, old.map(|o| o.blacklisted)),
                    dropped_per_sec: rate(rule.dropped, old.map(|o| o.dropped)),
                }
            })
            .collect();
        let blacklist = after.blacklist.iter().map(|listed| Source {
            addr: listed.addr.clone(),
            rule: listed.rule.clone(),
            hits: listed.hits.unwrap_or(0),
            expires_at: listed.expires_at,
            ..Source::default()
        });
        let blocked = blocked_sources(&before.samples, &after.samples);
        let mut sources = merge_blocked(blacklist.collect(), &blocked, &after.rules, secs);
        sources.retain(|source| filter.keeps(source));
        match filter.sort {
            SortBy::Blocked => sources.sort_by(|a, b| {
                (b.blocked_in_interval, b.hits)
                    .cmp(&(a.blocked_in_interval, a.hits))
                    .then_with(|| a.addr.cmp(&b.addr))
            }),
            SortBy::Hits => {
                sources.sort_by(|a, b| b.hits.cmp(&a.hits).then_with(|| a.addr.cmp(&b.addr)))
            }
            SortBy::Expiry => sources.sort_by_key(|source| source.expires_at),
            SortBy::Addr => {
                sources.sort_by_cached_key(|source| source.addr.parse::<ipnet::IpNet>().ok())
            }
        }
        sources.truncate(MAX_SOURCES);
        let mut events = after.history_events().to_vec();
        events.extend(blacklist_changes(
            &before.blacklist,
            &after.blacklist,
            after.wall,
        ));
        events.sort_by_key(|event| event.at);
        Self {
            events,
            state_available: after.history.is_some(),
            interval_secs: secs,
            verdicts,
            reasons: reasons.into_iter().filter(|row| row.packets > 0).collect(),
            rules,
            sources,
            sources_title: filter.describe(),
            maps: after
                .maps
                .iter()
                .map(|map| MapFill {
                    name: map.name,
                    entries: map.entries,
                    capacity: map.capacity,
                })
                .collect(),
        }
    }
}

/// Adds the sampled sources to the blacklist's: into the entry that covers the address for
/// the same rule, else as a source of their own (a manual ban's, or one whose entry expired).
fn merge_blocked(
    mut sources: Vec<Source>,
    blocked: &[Blocked],
    rules: &[RuleTotals],
    secs: f64,
) -> Vec<Source> {
    for found in blocked {
        let rule = found.slot.and_then(|slot| {
            let placed = rules.iter().find(|rule| rule.slot == u32::from(slot));
            placed.map(|rule| rule.name.clone())
        });
        let covers = |source: &Source| {
            source.rule.is_some()
                && source.rule == rule
                && source
                    .addr
                    .parse::<ipnet::IpNet>()
                    .is_ok_and(|net| net.contains(&found.addr))
        };
        let index = match sources.iter().position(covers) {
            Some(index) => index,
            None => {
                sources.push(Source {
                    addr: ipnet::IpNet::from(found.addr).to_string(),
                    rule,
                    ..Source::default()
                });
                sources.len() - 1
            }
        };
        let source = &mut sources[index];
        // Blocked `blacklisted` here and `rule_triggered` there: the larger share names it.
        if found.packets > source.blocked_in_interval {
            source.reason = found.reason.name();
        }
        source.blocked_in_interval += found.packets;
        source.samples += found.samples;
        source.blocked_per_sec = source.blocked_in_interval as f64 / secs;
    }
    sources
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use blocker_common::Reason;

    use super::*;

    /// A dynamic blacklist entry.
    pub(crate) fn listed(addr: &str, hits: u32, expires: &str, rule: &str) -> Listed {
        Listed {
            addr: addr.into(),
            kind: "dynamic",
            expires_at: Some(expires.parse().expect("time")),
            reason: None,
            created_at: None,
            rule: Some(rule.into()),
            hits: Some(hits),
        }
    }

    fn reading(at: Instant, dropped: u64, blacklist: Vec<Listed>) -> Reading {
        Reading {
            at,
            counters: vec![CounterRow {
                action: "drop",
                reason: "manual_ban",
                packets: dropped,
                bytes: dropped * 100,
            }],
            rules: Vec::new(),
            blacklist,
            maps: Vec::new(),
            wall: jiff::Timestamp::UNIX_EPOCH,
            history: None,
            history_cursor: None,
            samples: SampleReading::default(),
        }
    }

    #[test]
    fn sampled_sources_join_the_blacklist_entry_that_covers_them_or_stand_alone() {
        let blacklist = vec![
            Source {
                addr: "198.51.100.0/24".into(),
                rule: Some("web".into()),
                hits: 9,
                ..Source::default()
            },
            Source {
                addr: "192.0.2.9/32".into(),
                rule: Some("ssh".into()),
                hits: 4,
                ..Source::default()
            },
        ];
        let rules = [("ssh", 0), ("web", 1)].map(|(name, slot)| RuleTotals {
            name: name.into(),
            slot,
            events: 0,
            blacklisted: 0,
            dropped: 0,
            rejected: 0,
        });
        let blocked = |addr: &str, reason, slot, packets| Blocked {
            addr: addr.parse().expect("address"),
            reason,
            slot,
            samples: 1,
            packets,
            bytes: 0,
        };
        let found = [
            blocked("198.51.100.7", Reason::Blacklisted, Some(1), 300),
            blocked("198.51.100.8", Reason::RuleTriggered, Some(1), 20),
            blocked("2001:db8::1", Reason::ManualBan, None, 100),
            // Covered by the /24, but blacklisted by another rule whose entry is gone.
            blocked("198.51.100.9", Reason::Blacklisted, Some(0), 10),
        ];
        let merged = merge_blocked(blacklist, &found, &rules, 2.0);
        let row = |addr: &str| merged.iter().find(|s| s.addr == addr).expect(addr);
        let web = row("198.51.100.0/24");
        assert_eq!(
            (web.blocked_in_interval, web.samples, web.hits),
            (320, 2, 9)
        );
        assert_eq!((web.reason, web.blocked_per_sec), ("blacklisted", 160.0));
        let banned = row("2001:db8::1/128");
        assert_eq!(
            (banned.reason, banned.rule.as_deref()),
            ("manual_ban", None)
        );
        assert_eq!(banned.blocked_in_interval, 100);
        assert_eq!(row("198.51.100.9/32").rule.as_deref(), Some("ssh"));
        assert_eq!(row("192.0.2.9/32").blocked_in_interval, 0);
        assert_eq!(merged.len(), 4);
    }

    fn addrs(snapshot: &Snapshot) -> Vec<&str> {
        snapshot.sources.iter().map(|s| s.addr.as_str()).collect()
    }

    #[test]
    fn rates_over_the_interval_and_sources_sorted_and_filtered() {
        let start = Instant::now();
        let before = reading(start, 100, Vec::new());
        let after = reading(
            start + Duration::from_secs(2),
            300,
            vec![
                listed("198.51.100.9/32", 5, "2026-12-02T03:00:00Z", "ssh"),
                listed("2001:db8::/64", 40, "2026-12-02T02:00:00Z", "web"),
                listed("192.0.2.77/32", 12, "2026-12-02T04:00:00Z", "ssh"),
            ],
        );
        let mut filter = SourceFilter::default();
        let snapshot = Snapshot::between(&before, &after, &filter);
        // The three new blacklistings are events; no state database: said, not an error.
        assert_eq!(snapshot.events.len(), 3);
        assert!(snapshot.events.iter().all(|e| e.action == "blacklisted"));
        assert!(!snapshot.state_available);
        let manual = &snapshot.reasons[0];
        assert_eq!(manual.packets_in_interval, 200);
        assert_eq!(manual.packets_per_sec, 100.0);
        assert_eq!(manual.bits_per_sec, 100.0 * 100.0 * 8.0);
        assert_eq!(snapshot.verdicts[1].packets_per_sec, 100.0);
        assert_eq!(
            addrs(&snapshot),
            ["2001:db8::/64", "192.0.2.77/32", "198.51.100.9/32"]
        );
        filter.sort = SortBy::Expiry;
        let by_expiry = Snapshot::between(&before, &after, &filter);
        assert_eq!(
            addrs(&by_expiry),
            ["2001:db8::/64", "198.51.100.9/32", "192.0.2.77/32"]
        );
        filter.sort = SortBy::Addr;
        filter.next_family();
        let v4 = Snapshot::between(&before, &after, &filter);
        assert_eq!(addrs(&v4), ["192.0.2.77/32", "198.51.100.9/32"]);
        assert_eq!(v4.sources_title, "blocked sources, by address, IPv4 only");
        filter.next_family();
        filter.rule = Some("ssh".into());
        assert!(Snapshot::between(&before, &after, &filter)
            .sources
            .is_empty());
    }
}

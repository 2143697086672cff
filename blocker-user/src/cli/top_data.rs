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

use super::top_events::{blacklist_changes, read_history, Event, HistoryRead};

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
}

struct RuleTotals {
    name: String,
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
                    events: counts.events,
                    blacklisted: counts.blacklisted,
                    dropped: counts.dropped,
                    rejected: counts.rejected,
                }
            })
            .collect();
        let now = Now::read();
        let blacklist = dynamic::blacklist(pins, summary.rules.as_ref(), &now)?;
        Ok(Self {
            at: Instant::now(),
            wall: now.wall,
            history_cursor: history.as_ref().map(|read| read.last_id).or(cursor),
            history,
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
    /// The dynamic blacklist, most hits first.
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
    /// Most hits first.
    #[default]
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
            SortBy::Hits => SortBy::Expiry,
            SortBy::Expiry => SortBy::Addr,
            SortBy::Addr => SortBy::Hits,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
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
        let mut text = format!("dynamic blacklist, {}", self.sort.name());
        if let Some(family) = self.family {
            text.push_str(&format!(", IPv{family} only"));
        }
        if let Some(rule) = &self.rule {
            text.push_str(&format!(", rule {}", blocker::text::escape(rule)));
        }
        text
    }

    fn keeps(&self, source: &Listed) -> bool {
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
        let mut sources: Vec<Source> = after
            .blacklist
            .iter()
            .filter(|listed| filter.keeps(listed))
            .map(|listed| Source {
                addr: listed.addr.clone(),
                rule: listed.rule.clone(),
                hits: listed.hits.unwrap_or(0),
                expires_at: listed.expires_at,
            })
            .collect();
        match filter.sort {
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

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

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
        }
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
        filter.sort = filter.sort.next();
        let by_expiry = Snapshot::between(&before, &after, &filter);
        assert_eq!(
            addrs(&by_expiry),
            ["2001:db8::/64", "198.51.100.9/32", "192.0.2.77/32"]
        );
        filter.sort = SortBy::Addr;
        filter.next_family();
        let v4 = Snapshot::between(&before, &after, &filter);
        assert_eq!(addrs(&v4), ["192.0.2.77/32", "198.51.100.9/32"]);
        assert_eq!(v4.sources_title, "dynamic blacklist, by address, IPv4 only");
        filter.next_family();
        filter.rule = Some("ssh".into());
        assert!(Snapshot::between(&before, &after, &filter)
            .sources
            .is_empty());
    }
}

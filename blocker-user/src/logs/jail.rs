//! A jail's counting, pure: failures per source prefix within `findtime`; `maxretry` of them
//! make a ban decision. Times are the lines' own when they carry one, else their arrival, and
//! every function takes "now", so tests drive a fake clock. Memory is bounded: at most
//! `maxretry` times per source, sources idle past `findtime` are dropped, and at most
//! [`MAX_SOURCES`] are tracked (the least recently failing half goes when that is reached).

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    time::Duration,
};

use ipnet::IpNet;
use jiff::{SignedDuration, Timestamp};

/// Sources tracked per jail at most.
pub const MAX_SOURCES: usize = 100_000;
/// Characters of the last matched line kept for the ban reason.
const SUMMARY_CHARS: usize = 120;

/// What a jail counts by.
#[derive(Debug, Clone, PartialEq)]
pub struct JailRules {
    pub name: String,
    pub maxretry: u32,
    pub findtime: Duration,
    /// Sources are counted and banned per prefix of these lengths.
    pub mask: u8,
    pub mask6: u8,
    /// Sources never counted.
    pub ignoreip: Vec<IpNet>,
}

impl JailRules {
    /// The prefix `addr` is counted and banned as: the host alone when its prefix holds an
    /// `ignoreip` network, which no ban may cover.
    pub fn prefix_of(&self, addr: IpAddr) -> IpNet {
        let len = match addr {
            IpAddr::V4(_) => self.mask,
            IpAddr::V6(v6) => crate::addr::v6_key_len(v6, self.mask6),
        };
        match IpNet::new(addr, len).map(|net| net.trunc()) {
            Ok(prefix)
                if !self
                    .ignoreip
                    .iter()
                    .any(|ignored| prefix.contains(&ignored.network())) =>
            {
                prefix
            }
            _ => IpNet::from(addr),
        }
    }

    pub fn ignores(&self, addr: IpAddr) -> bool {
        self.ignoreip.iter().any(|net| net.contains(&addr))
    }
}

/// Ban `prefix`: the jail's decision; the length comes from the escalation.
#[derive(Debug, Clone, PartialEq)]
pub struct JailBan {
    pub prefix: IpNet,
    pub reason: String,
}

/// What one failure led to.
#[derive(Debug, Clone, PartialEq)]
pub enum Counted {
    /// Counted; the source has this many failures in the window.
    Failures(usize),
    /// The source is in `ignoreip`.
    Ignored,
    /// The line is older than `findtime`: it can never ban.
    Stale,
    Ban(JailBan),
}

#[derive(Debug)]
struct Recent {
    /// Failure times, oldest first, within `findtime` of the newest; at most `maxretry`.
    times: VecDeque<Timestamp>,
}

impl Recent {
    fn newest(&self) -> Option<Timestamp> {
        self.times.back().copied()
    }
}

/// One jail's failures.
#[derive(Debug)]
pub struct Jail {
    rules: JailRules,
    findtime: SignedDuration,
    sources: HashMap<IpNet, Recent>,
}

/// A line shortened for a ban reason: one line, at most [`SUMMARY_CHARS`] characters.
pub fn summary(line: &str) -> String {
    let line = line.trim();
    let mut short: String = line
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(SUMMARY_CHARS)
        .collect();
    if line.chars().nth(SUMMARY_CHARS).is_some() {
        short.push('…');
    }
    short
}

impl Jail {
    pub fn new(rules: JailRules) -> Self {
        let findtime = SignedDuration::try_from(rules.findtime).unwrap_or(SignedDuration::MAX);
        Self {
            rules,
            findtime,
            sources: HashMap::new(),
        }
    }

    pub fn rules(&self) -> &JailRules {
        &self.rules
    }

    /// Counts a failure of `addr` seen in `line` at `time` (the line's own, if it has one),
    /// arriving `now`.
    pub fn failure(
        &mut self,
        addr: IpAddr,
        time: Option<Timestamp>,
        line: &str,
        now: Timestamp,
    ) -> Counted {
        if self.rules.ignores(addr) {
            return Counted::Ignored;
        }
        // A line from the future (clock skew between hosts) counts as now.
        let time = time.unwrap_or(now).min(now);
        let Ok(window_start) = now.checked_sub(self.findtime) else {
            return Counted::Stale;
        };
        if time < window_start {
            return Counted::Stale;
        }
        let prefix = self.rules.prefix_of(addr);
        if !self.sources.contains_key(&prefix) && self.sources.len() >= MAX_SOURCES {
            self.make_room(now);
        }
        let maxretry = self.rules.maxretry.max(1) as usize;
        let recent = self.sources.entry(prefix).or_insert(Recent {
            times: VecDeque::with_capacity(maxretry.min(16)),
        });
        // Lines mostly arrive in order; an older one is put in its place.
        let at = recent.times.partition_point(|t| *t <= time);
        recent.times.insert(at, time);
        if let Some(newest) = recent.newest() {
            let oldest_kept = newest.checked_sub(self.findtime).unwrap_or(newest);
            while recent.times.front().is_some_and(|t| *t < oldest_kept) {
                recent.times.pop_front();
            }
        }
        while recent.times.len() > maxretry {
            recent.times.pop_front();
        }
        let count = recent.times.len();
        if count < maxretry {
            return Counted::Failures(count);
        }
        // The ban consumes the failures: a source unbanned later starts from zero.
        self.sources.remove(&prefix);
        Counted::Ban(JailBan {
            prefix,
            reason: format!(
                "jail {}: {count} failures in {} (last: {})",
                self.rules.name,
                humantime::format_duration(self.rules.findtime),
                summary(line)
            ),
        })
    }

    /// Drops sources whose newest failure left the window.
    pub fn prune(&mut self, now: Timestamp) {
        let Ok(window_start) = now.checked_sub(self.findtime) else {
            return;
        };
        self.sources
            .retain(|_, recent| recent.newest().is_some_and(|t| t >= window_start));
    }

    /// Makes room for a new source: idle ones go, and if that is not enough the half that
    /// failed least recently (a flood of sources cannot grow memory, nor keep evicting one
    /// entry per line).
    fn make_room(&mut self, now: Timestamp) {
        self.prune(now);
        if self.sources.len() < MAX_SOURCES {
            return;
        }
        let mut newest: Vec<Timestamp> = self.sources.values().filter_map(Recent::newest).collect();
        let middle = newest.len() / 2;
        let (_, cut, _) = newest.select_nth_unstable(middle);
        let cut = *cut;
        self.sources
            .retain(|_, recent| recent.newest().is_some_and(|t| t > cut));
    }

    /// Sources with failures in the window, and the failures counted.
    pub fn window(&self, now: Timestamp) -> (usize, usize) {
        let Ok(window_start) = now.checked_sub(self.findtime) else {
            return (0, 0);
        };
        self.sources
            .values()
            .map(|recent| recent.times.iter().filter(|t| **t >= window_start).count())
            .filter(|count| *count > 0)
            .fold((0, 0), |(sources, failures), count| {
                (sources + 1, failures + count)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn sshd(maxretry: u32) -> Jail {
        Jail::new(JailRules {
            name: "sshd".into(),
            maxretry,
            findtime: Duration::from_secs(600),
            mask: 32,
            mask6: 64,
            ignoreip: vec!["192.0.2.0/24".parse().unwrap()],
        })
    }

    /// Every host on a link shares fe80::/64: a neighbour's failures are its own.
    #[test]
    fn a_link_local_source_is_counted_as_one_host() {
        let rules = JailRules {
            name: "sshd".into(),
            maxretry: 5,
            findtime: Duration::from_secs(600),
            mask: 32,
            mask6: 64,
            ignoreip: Vec::new(),
        };
        assert_eq!(
            rules.prefix_of(ip("fe80::1:2")),
            "fe80::1:2/128".parse().unwrap()
        );
        assert_eq!(
            rules.prefix_of(ip("2001:db8::1:2")),
            "2001:db8::/64".parse().unwrap()
        );
    }

    /// `ignoreip` is never banned: not even by the prefix of a neighbour in its /64 (or /24).
    #[test]
    fn a_prefix_holding_an_ignored_address_is_banned_host_by_host() {
        let mut jail = Jail::new(JailRules {
            name: "sshd".into(),
            maxretry: 2,
            findtime: Duration::from_secs(600),
            mask: 24,
            mask6: 64,
            ignoreip: vec![
                "2001:db8:1:2::10/128".parse().unwrap(),
                "198.51.100.7/32".parse().unwrap(),
            ],
        });
        for (source, banned) in [
            ("2001:db8:1:2::666", "2001:db8:1:2::666/128"),
            ("198.51.100.9", "198.51.100.9/32"),
            ("203.0.113.9", "203.0.113.0/24"),
            ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ] {
            jail.failure(ip(source), None, "", at(0));
            match jail.failure(ip(source), None, "", at(1)) {
                Counted::Ban(ban) => assert_eq!(ban.prefix.to_string(), banned),
                other => panic!("{source}: {other:?}"),
            }
        }
    }

    #[test]
    fn maxretry_failures_within_findtime_ban_with_a_reason() {
        let mut jail = sshd(5);
        let source = ip("203.0.113.9");
        for i in 0..4 {
            assert_eq!(
                jail.failure(source, None, "Failed password", at(i * 100)),
                Counted::Failures(i as usize + 1)
            );
        }
        match jail.failure(
            source,
            None,
            "Failed password for root from 203.0.113.9 port 22\n",
            at(400),
        ) {
            Counted::Ban(ban) => {
                assert_eq!(ban.prefix.to_string(), "203.0.113.9/32");
                assert_eq!(
                    ban.reason,
                    "jail sshd: 5 failures in 10m (last: Failed password for root from 203.0.113.9 port 22)"
                );
            }
            other => panic!("{other:?}"),
        }
        // The ban consumed the count.
        assert_eq!(
            jail.failure(source, None, "", at(401)),
            Counted::Failures(1)
        );
    }

    #[test]
    fn failures_spread_wider_than_findtime_never_ban() {
        let mut jail = sshd(3);
        let source = ip("203.0.113.9");
        for i in 0..20 {
            let counted = jail.failure(source, None, "", at(i * 301));
            assert!(!matches!(counted, Counted::Ban(_)), "{i}: {counted:?}");
        }
        // Exactly findtime apart still counts: 0, 300, 600.
        let mut jail = sshd(3);
        jail.failure(source, None, "", at(0));
        jail.failure(source, None, "", at(300));
        assert!(matches!(
            jail.failure(source, None, "", at(600)),
            Counted::Ban(_)
        ));
    }

    #[test]
    fn the_lines_own_time_counts_and_old_lines_never_ban() {
        let mut jail = sshd(3);
        let source = ip("198.51.100.4");
        // A replayed log: three failures an hour ago arrive now.
        for i in 0..3 {
            assert_eq!(
                jail.failure(source, Some(at(-3600 + i)), "", at(0)),
                Counted::Stale
            );
        }
        // Three failures of the last minutes, read late but within the window: ban, even
        // though they arrive out of order.
        assert_eq!(
            jail.failure(source, Some(at(-60)), "", at(0)),
            Counted::Failures(1)
        );
        assert_eq!(
            jail.failure(source, Some(at(-500)), "", at(0)),
            Counted::Failures(2)
        );
        assert!(matches!(
            jail.failure(source, Some(at(-30)), "", at(0)),
            Counted::Ban(_)
        ));
        // Line times 11 minutes apart, read together: no ban.
        let mut jail = sshd(2);
        jail.failure(source, Some(at(-599)), "", at(0));
        let mut late = sshd(2);
        assert_eq!(
            late.failure(source, Some(at(-599)), "", at(100)),
            Counted::Stale
        );
        assert!(matches!(
            jail.failure(source, Some(at(0)), "", at(0)),
            Counted::Ban(_)
        ));
    }

    #[test]
    fn ignoreip_and_masks() {
        let mut jail = sshd(2);
        assert_eq!(
            jail.failure(ip("192.0.2.77"), None, "", at(0)),
            Counted::Ignored
        );
        assert_eq!(
            jail.failure(ip("192.0.2.77"), None, "", at(0)),
            Counted::Ignored
        );
        // IPv6 sources of one /64 count together.
        jail.failure(ip("2001:db8:1:2::1"), None, "", at(0));
        match jail.failure(ip("2001:db8:1:2::ffff"), None, "", at(1)) {
            Counted::Ban(ban) => assert_eq!(ban.prefix.to_string(), "2001:db8:1:2::/64"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn memory_is_bounded_per_source_and_in_sources() {
        // One failure a second, findtime 10 minutes: at most 601 times kept, whatever the
        // count.
        let mut jail = sshd(1000);
        let source = ip("203.0.113.1");
        for i in 0..5000 {
            jail.failure(source, None, "", at(i));
        }
        assert_eq!(jail.sources[&jail.rules.prefix_of(source)].times.len(), 601);
        let mut jail = sshd(5);
        for i in 0..(MAX_SOURCES as u32 + 10) {
            let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            jail.failure(addr, None, "", at(i64::from(i) / 1000));
        }
        assert!(jail.sources.len() <= MAX_SOURCES);
        assert!(
            jail.sources.len() >= MAX_SOURCES / 3,
            "{}",
            jail.sources.len()
        );
        // The newest are kept.
        let last = IpAddr::from(std::net::Ipv4Addr::from(
            0x0a00_0000 + MAX_SOURCES as u32 + 9,
        ));
        assert!(jail.sources.contains_key(&jail.rules.prefix_of(last)));
        // Idle sources are dropped.
        jail.prune(at(100_000));
        assert!(jail.sources.is_empty());
        assert_eq!(jail.window(at(100_000)), (0, 0));
    }

    #[test]
    fn the_window_counts_sources_and_failures() {
        let mut jail = sshd(5);
        jail.failure(ip("203.0.113.1"), None, "", at(0));
        jail.failure(ip("203.0.113.1"), None, "", at(10));
        jail.failure(ip("203.0.113.2"), None, "", at(500));
        assert_eq!(jail.window(at(500)), (2, 3));
        assert_eq!(jail.window(at(605)), (2, 2));
        assert_eq!(jail.window(at(1101)), (0, 0));
    }
}

//! A pure userspace reference model of the XDP program's verdict, for the differential test:
//! its own frame parser, the maps as plain collections (no eviction), and the decision built
//! from blocker-common's pure functions, in the order the specification gives.

pub mod histories;
pub mod parse;
pub mod reply;

use std::collections::{BTreeMap, HashMap};

use blocker_common::{
    ban_is_active, blacklist_hit, mask_addr, proto_bit,
    reject::{mac_is_unicast, source_is_unicast, TokenBucket},
    rule_matches, AllowValue, BanValue, BlacklistEntry, Counter, HistoryKey, Outcome, Reason, Rule,
    RuleAction, RuleStats, Settings, SourceKey, FAMILY_V4, FAMILY_V6, LIST_ALLOW_V4, LIST_ALLOW_V6,
    LIST_BAN_V4, LIST_BAN_V6, MAX_MASKS, MAX_RULES, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};

use histories::Histories;
use parse::{parse, Early, Ip, L4, PROTO_ICMP, PROTO_ICMPV6};

/// An address prefix; IPv4 addresses use the first 4 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    pub family: u8,
    pub addr: [u8; 16],
    pub len: u8,
}

impl Prefix {
    pub fn new(family: u8, addr: [u8; 16], len: u8) -> Self {
        Self {
            family,
            addr: mask_addr(addr, len),
            len,
        }
    }

    pub fn contains(&self, family: u8, addr: [u8; 16]) -> bool {
        self.family == family && mask_addr(addr, self.len) == self.addr
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", addr_text(self.family, self.addr), self.len)
    }
}

pub fn addr_text(family: u8, addr: [u8; 16]) -> String {
    if family == FAMILY_V4 {
        std::net::Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).to_string()
    } else {
        std::net::Ipv6Addr::from(addr).to_string()
    }
}

/// An LPM trie as a sorted map: the longest prefix containing the address wins, whatever its
/// value says (an expired ban under a longer prefix hides an active shorter one, as in the
/// kernel).
#[derive(Clone, Debug, Default)]
pub struct Lpm<V> {
    pub entries: BTreeMap<Prefix, V>,
}

impl<V> Lpm<V> {
    pub fn lookup(&self, family: u8, addr: [u8; 16]) -> Option<&V> {
        self.entries
            .iter()
            .filter(|(prefix, _)| prefix.contains(family, addr))
            .max_by_key(|(prefix, _)| prefix.len)
            .map(|(_, value)| value)
    }
}

/// What the model expects the program to do with one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub reason: Reason,
    /// For `Rejected`: the parsed offending packet the answer must match.
    pub answered: Option<Ip>,
}

/// The maps and the clock.
#[derive(Clone, Debug)]
pub struct Model {
    pub settings: Settings,
    pub rules: [Rule; MAX_RULES],
    pub allow: Lpm<AllowValue>,
    pub bans: Lpm<BanValue>,
    pub blacklist: HashMap<SourceKey, BlacklistEntry>,
    pub history: Histories,
    pub counters: [Counter; Reason::COUNT as usize],
    pub rule_stats: [RuleStats; MAX_RULES],
    /// The reject token bucket of the one CPU the test runs on.
    pub bucket: TokenBucket,
}

impl Default for Model {
    fn default() -> Self {
        Self {
            settings: Settings::default(),
            rules: [Rule::default(); MAX_RULES],
            allow: Lpm::default(),
            bans: Lpm::default(),
            blacklist: HashMap::new(),
            history: Histories::default(),
            counters: [Counter::default(); Reason::COUNT as usize],
            rule_stats: [RuleStats::default(); MAX_RULES],
            bucket: TokenBucket::default(),
        }
    }
}

impl Model {
    fn now_ms(&self) -> u64 {
        self.settings.clock_override_ms
    }

    /// One frame through the model: the verdict, with every map and counter updated.
    pub fn run(&mut self, frame: &[u8]) -> Verdict {
        let verdict = self.decide(frame);
        let counter = &mut self.counters[verdict.reason as usize];
        counter.packets += 1;
        counter.bytes += frame.len() as u64;
        verdict
    }

    fn decide(&mut self, frame: &[u8]) -> Verdict {
        let plain = |reason| Verdict {
            reason,
            answered: None,
        };
        let ip = match parse(frame) {
            Ok(ip) => ip,
            Err(Early::Malformed) => return plain(Reason::Malformed),
            Err(Early::NotIp) => return plain(Reason::NotIp),
            Err(Early::TooManyTags) => return plain(Reason::Evasive),
        };
        let v4 = ip.family == FAMILY_V4;
        let lists = self.settings.lists;
        let allow_bit = if v4 { LIST_ALLOW_V4 } else { LIST_ALLOW_V6 };
        if lists & allow_bit != 0 && self.allow.lookup(ip.family, ip.source).is_some() {
            return plain(Reason::Allowlisted);
        }
        let ban_bit = if v4 { LIST_BAN_V4 } else { LIST_BAN_V6 };
        if lists & ban_bit != 0 {
            if let Some(ban) = self.bans.lookup(ip.family, ip.source) {
                let now_s = (self.now_ms() / 1000) as u32;
                if ban_is_active(ban, || now_s) {
                    return plain(Reason::ManualBan);
                }
            }
        }
        let masks = if v4 {
            self.settings.masks_v4
        } else {
            self.settings.masks_v6
        };
        for mask in masks.into_iter().take(MAX_MASKS) {
            if mask == 0 {
                break;
            }
            let now = self.now_ms();
            let Some(entry) = self.blacklist.get_mut(&source_key(&ip, mask)) else {
                continue;
            };
            if blacklist_hit(entry, now) {
                // The source passed the list checks just above.
                entry.lists_stamp = self.settings.lists_generation;
                let (action, slot) = (entry.action, usize::from(entry.slot));
                return self.punish(frame, &ip, action, slot, Reason::Blacklisted);
            }
        }
        let protos = self.settings.rule_protos;
        let covered = protos & proto_bit(ip.proto) != 0;
        // A cut chain or a chain too long leaves the transport protocol unknown: any rule
        // covers it.
        let any_rule = protos != 0;
        match ip.l4 {
            L4::Truncated => plain(Reason::Malformed),
            L4::FirstFragmentCut if covered => plain(Reason::Evasive),
            L4::FirstFragmentCut => plain(Reason::Malformed),
            L4::FirstFragmentChainCut if any_rule => plain(Reason::Evasive),
            L4::FirstFragmentChainCut => plain(Reason::Malformed),
            L4::ChainTooLong if any_rule => plain(Reason::Evasive),
            L4::ChainTooLong => plain(Reason::Unparsed),
            L4::Present | L4::Fragment if covered => self.run_rules(frame, &ip),
            L4::Present | L4::Fragment => plain(Reason::NoMatch),
        }
    }

    fn run_rules(&mut self, frame: &[u8], ip: &Ip) -> Verdict {
        let now = self.now_ms();
        let new_connection = ip.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN;
        let mut reason = Reason::NoMatch;
        let slots = (self.settings.rule_slots as usize).min(MAX_RULES);
        for slot in 0..slots {
            let rule = self.rules[slot];
            if !rule_matches(&rule, ip.proto, ip.dport, new_connection) {
                continue;
            }
            let mask = if ip.family == FAMILY_V4 {
                rule.mask_v4
            } else {
                rule.mask_v6
            };
            let key = HistoryKey {
                source: source_key(ip, mask),
                slot: slot as u16,
                generation: rule.generation,
            };
            match self.history.event(&rule, key, now, ip.ttl) {
                Outcome::Counted => {
                    self.rule_stats[slot].events += 1;
                    reason = Reason::RuleEvent;
                }
                Outcome::Blacklist { hits } => {
                    let stats = &mut self.rule_stats[slot];
                    stats.events += 1;
                    stats.blacklisted += 1;
                    let entry = BlacklistEntry::for_rule(
                        &rule,
                        slot as u16,
                        hits,
                        now,
                        self.settings.lists_generation,
                    );
                    self.blacklist.insert(key.source, entry);
                    return self.punish(frame, ip, entry.action, slot, Reason::RuleTriggered);
                }
            }
        }
        Verdict {
            reason,
            answered: None,
        }
    }

    /// A packet of a blacklisted source: dropped under `reason`, or answered when the rule
    /// rejects and every condition for an answer holds.
    fn punish(
        &mut self,
        frame: &[u8],
        ip: &Ip,
        action: u16,
        slot: usize,
        reason: Reason,
    ) -> Verdict {
        let answered = action == RuleAction::Reject as u16 && self.answer(frame, ip);
        let stats = &mut self.rule_stats[slot];
        if answered {
            stats.rejected += 1;
            Verdict {
                reason: Reason::Rejected,
                answered: Some(*ip),
            }
        } else {
            stats.dropped += 1;
            Verdict {
                reason,
                answered: None,
            }
        }
    }

    /// Whether the program answers this packet; takes the token it costs.
    fn answer(&mut self, frame: &[u8], ip: &Ip) -> bool {
        if ip.l4 != L4::Present || matches!(ip.proto, PROTO_ICMP | PROTO_ICMPV6) {
            return false;
        }
        let source_mac: [u8; 6] = frame[6..12].try_into().expect("6 bytes");
        let destination_mac: [u8; 6] = frame[0..6].try_into().expect("6 bytes");
        // An answer goes to one host from one host: both ends must be unicast.
        if !mac_is_unicast(&source_mac)
            || !source_is_unicast(ip.family, &ip.source)
            || !mac_is_unicast(&destination_mac)
            || !source_is_unicast(ip.family, &ip.destination)
        {
            return false;
        }
        let (per_s, burst, now) = (
            self.settings.reject_per_s,
            self.settings.reject_burst,
            self.now_ms(),
        );
        reply::answerable(frame, ip) && self.bucket.take(now, per_s, burst)
    }
}

/// The key of `ip`'s source under a rule's mask of `prefix_len`. An IPv6 link-local source
/// (fe80::/10, which every host on the link shares) is keyed as itself, whatever the mask.
fn source_key(ip: &Ip, prefix_len: u8) -> SourceKey {
    let link_local = ip.family == FAMILY_V6 && ip.source[0] == 0xfe && ip.source[1] & 0xc0 == 0x80;
    let prefix_len = if link_local { 128 } else { prefix_len };
    SourceKey {
        addr: mask_addr(ip.source, prefix_len),
        family: ip.family,
        prefix_len,
    }
}

#[cfg(test)]
mod tests {
    use blocker_common::RuleKind;

    use super::*;
    use crate::frames::{frame, ipv4, ipv6, tcp_syn, IPV4, IPV6};

    const HOST: [u8; 4] = [10, 77, 1, 3];
    const NEIGHBOUR: [u8; 4] = [10, 77, 1, 2];

    fn v4(octets: [u8; 4]) -> [u8; 16] {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&octets);
        addr
    }

    /// The first defect: a /24 rule, four SYNs from .2, and the allowlisted .3.
    fn model_with_ssh_rule() -> Model {
        let mut model = Model::default();
        model.rules[0] = Rule {
            generation: 1,
            kind: RuleKind::Rate as u8,
            proto: 6,
            new_only: 1,
            mask_v4: 24,
            mask_v6: 64,
            dport_min: 22,
            dport_max: 22,
            hitcount: 3,
            window_ms: 30_000,
            blacklist_ms: 120_000,
            ..Rule::default()
        };
        model.settings = Settings {
            rule_slots: 1,
            lists: LIST_ALLOW_V4,
            rule_protos: proto_bit(6),
            masks_v4: [24, 0, 0, 0],
            masks_v6: [64, 0, 0, 0],
            reject_per_s: 1000,
            reject_burst: 50,
            clock_override_ms: 1_000_000,
            ..Settings::default()
        };
        model
            .allow
            .entries
            .insert(Prefix::new(FAMILY_V4, v4(HOST), 32), 1);
        model
    }

    #[test]
    fn the_allowlist_wins_over_a_blacklisted_prefix() {
        let mut model = model_with_ssh_rule();
        let syn = |source| frame(&[IPV4], &ipv4(source, 0, 6, &tcp_syn(22)));
        let reasons: Vec<Reason> = (0..5).map(|_| model.run(&syn(NEIGHBOUR)).reason).collect();
        assert_eq!(
            reasons,
            [
                Reason::RuleEvent,
                Reason::RuleEvent,
                Reason::RuleEvent,
                Reason::RuleTriggered,
                Reason::Blacklisted
            ]
        );
        assert_eq!(model.run(&syn(HOST)).reason, Reason::Allowlisted);
        assert_eq!(model.rule_stats[0].blacklisted, 1);
        assert_eq!(model.counters[Reason::Blacklisted as usize].packets, 1);
    }

    #[test]
    fn cut_first_fragments_and_long_chains_are_evasive_only_under_a_rule() {
        let mut model = model_with_ssh_rule();
        let mut first_fragment = ipv4(NEIGHBOUR, 0, 6, &tcp_syn(22)[..8]);
        first_fragment[6] = 0x20; // MF, offset 0
        assert_eq!(
            model
                .run(&frame(&[IPV4], &first_fragment)[..14 + 28])
                .reason,
            Reason::Evasive
        );
        let source = [0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
        let deep = frame(&[IPV6], &ipv6(source, &[60; 7], 6, &tcp_syn(22)));
        assert_eq!(model.run(&deep).reason, Reason::Evasive);
        model.settings.rule_protos = 0;
        assert_eq!(model.run(&deep).reason, Reason::Unparsed);
        assert_eq!(
            model
                .run(&frame(&[IPV4], &first_fragment)[..14 + 28])
                .reason,
            Reason::Malformed
        );
    }

    #[test]
    fn lpm_takes_the_longest_prefix_only() {
        let mut bans = Lpm::default();
        let addr = v4([192, 0, 2, 7]);
        bans.entries.insert(
            Prefix::new(FAMILY_V4, addr, 24),
            BanValue { expires_at_s: 0 },
        );
        bans.entries.insert(
            Prefix::new(FAMILY_V4, addr, 32),
            BanValue { expires_at_s: 5 },
        );
        assert_eq!(
            bans.lookup(FAMILY_V4, addr),
            Some(&BanValue { expires_at_s: 5 })
        );
        assert_eq!(
            bans.lookup(FAMILY_V4, v4([192, 0, 2, 8])),
            Some(&BanValue { expires_at_s: 0 })
        );
        assert_eq!(bans.lookup(FAMILY_V6, addr), None, "families never mix");
    }
}

//! Rate and burst rules as users write them (TOML config, `blocker rule add`), validated and
//! compiled to the kernel's [`Rule`] layout.

use std::{collections::BTreeSet, time::Duration};

use blocker_common::{
    Rule, RuleAction, RuleKind, FAMILY_V4, FAMILY_V6, HISTORY_RING, IPPROTO_ICMP, IPPROTO_ICMPV6,
    IPPROTO_TCP, IPPROTO_UDP, MAX_MASKS, MAX_RULES, MAX_RULE_MS, PROTO_ANY,
};
use serde::{Deserialize, Serialize};

/// Which packets a rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    #[default]
    Any,
}

impl Proto {
    fn number(self) -> u8 {
        match self {
            Proto::Tcp => IPPROTO_TCP,
            Proto::Udp => IPPROTO_UDP,
            Proto::Icmp => IPPROTO_ICMP,
            Proto::Icmpv6 => IPPROTO_ICMPV6,
            Proto::Any => PROTO_ANY,
        }
    }
}

/// What counts as an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Events {
    /// A new TCP connection: SYN without ACK, RST or FIN (`-m state --state NEW`). Only for
    /// tcp rules, and for rules of any protocol, where packets of other protocols all count.
    New,
    /// Every matching packet.
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Drop,
    /// Answer with a TCP RST or ICMP port unreachable from XDP.
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `recent --rcheck --seconds S --hitcount N`.
    #[default]
    Rate,
    /// Bunch analysis: bursts of events close together.
    Burst,
}

/// A rule as written in the config's `[[rules]]` and kept in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    #[serde(default)]
    pub kind: Kind,
    #[serde(default)]
    pub proto: Proto,
    /// A port (`22`) or an inclusive range (`"6000-6010"`); any port when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dport: Option<PortRange>,
    /// Unset: `new` for tcp and any, `all` for the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Events>,
    /// Rate rules: this many events within `seconds` blacklist on the next one.
    #[serde(default = "defaults::hitcount")]
    pub hitcount: u32,
    #[serde(default = "defaults::seconds")]
    pub seconds: u32,
    #[serde(default = "defaults::blacklist_for", with = "humantime_serde")]
    pub blacklist_for: Duration,
    /// Every packet of a blacklisted source extends its entry (`--update`).
    #[serde(default = "defaults::yes")]
    pub refresh: bool,
    #[serde(default)]
    pub action: Action,
    /// Prefix length IPv4 sources are counted and blacklisted by.
    #[serde(default = "defaults::mask")]
    pub mask: u8,
    /// Prefix length IPv6 sources are counted and blacklisted by (one host owns a /64).
    #[serde(default = "defaults::mask6")]
    pub mask6: u8,
    /// Count an event only with the TTL / hop limit first seen from the source (`--rttl`).
    #[serde(default)]
    pub ttl_match: bool,
    /// Burst rules: the largest gap between events of one bunch.
    #[serde(default = "defaults::gap", with = "humantime_serde")]
    pub gap: Duration,
    /// Burst rules: one bunch this long blacklists.
    #[serde(default = "defaults::bunch_size")]
    pub bunch_size: u32,
    /// Burst rules: this many bunches of at least `min_bunch` within `window` blacklist.
    #[serde(default = "defaults::bunch_count")]
    pub bunch_count: u32,
    #[serde(default = "defaults::min_bunch")]
    pub min_bunch: u32,
    #[serde(default = "defaults::window", with = "humantime_serde")]
    pub window: Duration,
}

mod defaults {
    use std::time::Duration;

    pub fn hitcount() -> u32 {
        3
    }
    pub fn seconds() -> u32 {
        30
    }
    pub fn blacklist_for() -> Duration {
        Duration::from_secs(120)
    }
    pub fn yes() -> bool {
        true
    }
    pub fn mask() -> u8 {
        32
    }
    pub fn mask6() -> u8 {
        64
    }
    pub fn gap() -> Duration {
        Duration::from_secs(2)
    }
    pub fn bunch_size() -> u32 {
        10
    }
    pub fn bunch_count() -> u32 {
        10
    }
    pub fn min_bunch() -> u32 {
        4
    }
    pub fn window() -> Duration {
        Duration::from_secs(24 * 3600)
    }
}

/// An inclusive destination port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid port or range {text:?}: use 22 or 6000-6010");
        let port = |s: &str| s.trim().parse::<u16>().map_err(|_| bad());
        let (min, max) = match text.split_once('-') {
            Some((min, max)) => (port(min)?, port(max)?),
            None => (port(text)?, port(text)?),
        };
        if min > max {
            return Err(bad());
        }
        Ok(Self { min, max })
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}-{}", self.min, self.max)
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.min == self.max {
            serializer.serialize_u16(self.min)
        } else {
            serializer.collect_str(self)
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Port(u16),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Port(port) => Ok(Self {
                min: port,
                max: port,
            }),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

fn millis(what: &str, duration: Duration) -> Result<u32, String> {
    let ms = duration.as_millis();
    if ms == 0 || ms > u128::from(MAX_RULE_MS) {
        return Err(format!(
            "{what} must be between 1ms and 24 days, not {}",
            humantime::format_duration(duration)
        ));
    }
    Ok(ms as u32)
}

impl RuleSpec {
    /// The built-in default: the seed's SSH blacklist (3 new connections in 30 s, then
    /// 120 s on the blacklist, refreshed while the source keeps sending).
    pub fn ssh() -> Self {
        Self {
            dport: Some(PortRange { min: 22, max: 22 }),
            proto: Proto::Tcp,
            ..Self::named("ssh")
        }
    }

    /// A rate rule with every default.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            kind: Kind::Rate,
            proto: Proto::Any,
            dport: None,
            events: None,
            hitcount: defaults::hitcount(),
            seconds: defaults::seconds(),
            blacklist_for: defaults::blacklist_for(),
            refresh: true,
            action: Action::Drop,
            mask: defaults::mask(),
            mask6: defaults::mask6(),
            ttl_match: false,
            gap: defaults::gap(),
            bunch_size: defaults::bunch_size(),
            bunch_count: defaults::bunch_count(),
            min_bunch: defaults::min_bunch(),
            window: defaults::window(),
        }
    }

    /// Checks every field and builds the kernel's layout.
    pub fn compile(&self, generation: u32) -> Result<Rule, String> {
        let name = &self.name;
        let valid_name = !name.is_empty()
            && name.len() <= 32
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_name {
            return Err(format!(
                "invalid rule name {name:?}: use 1 to 32 letters, digits, - or _"
            ));
        }
        self.compile_fields(generation)
            .map_err(|message| format!("rule {name}: {message}"))
    }

    /// What counts as an event, the default filled in.
    /// This rule with `events` spelled out.
    pub fn with_explicit_events(&self) -> Self {
        Self {
            events: Some(self.events()),
            ..self.clone()
        }
    }

    pub fn events(&self) -> Events {
        self.events.unwrap_or(match self.proto {
            Proto::Tcp | Proto::Any => Events::New,
            Proto::Udp | Proto::Icmp | Proto::Icmpv6 => Events::All,
        })
    }

    fn compile_fields(&self, generation: u32) -> Result<Rule, String> {
        if self.dport.is_some() && !matches!(self.proto, Proto::Tcp | Proto::Udp) {
            return Err("dport needs proto tcp or udp".into());
        }
        if self.events == Some(Events::New) && !matches!(self.proto, Proto::Tcp | Proto::Any) {
            return Err(format!(
                "events = \"new\" needs proto tcp (only TCP has connections); use events = \"all\" for {}",
                format!("{:?}", self.proto).to_lowercase()
            ));
        }
        if !(1..=32).contains(&self.mask) {
            return Err(format!("mask must be 1 to 32, not {}", self.mask));
        }
        if !(1..=128).contains(&self.mask6) {
            return Err(format!("mask6 must be 1 to 128, not {}", self.mask6));
        }
        let ring = HISTORY_RING as u32;
        let mut rule = Rule {
            generation,
            kind: RuleKind::Rate as u8,
            proto: self.proto.number(),
            action: match self.action {
                Action::Drop => RuleAction::Drop as u8,
                Action::Reject => RuleAction::Reject as u8,
            },
            new_only: u8::from(self.events() == Events::New),
            refresh: u8::from(self.refresh),
            ttl_match: u8::from(self.ttl_match),
            mask_v4: self.mask,
            mask_v6: self.mask6,
            dport_min: self.dport.map_or(0, |p| p.min),
            dport_max: self.dport.map_or(u16::MAX, |p| p.max),
            blacklist_ms: millis("blacklist_for", self.blacklist_for)?,
            ..Rule::default()
        };
        match self.kind {
            Kind::Rate => {
                if !(1..=ring).contains(&self.hitcount) {
                    return Err(format!(
                        "hitcount must be 1 to {ring}, not {}",
                        self.hitcount
                    ));
                }
                rule.hitcount = self.hitcount;
                rule.window_ms = millis("seconds", Duration::from_secs(u64::from(self.seconds)))?;
            }
            Kind::Burst => {
                if self.min_bunch < 2 || self.bunch_size < 2 {
                    return Err("min_bunch and bunch_size must be at least 2".into());
                }
                if !(1..=ring).contains(&self.bunch_count) {
                    return Err(format!(
                        "bunch_count must be 1 to {ring}, not {}",
                        self.bunch_count
                    ));
                }
                rule.kind = RuleKind::Burst as u8;
                rule.hitcount = self.bunch_count;
                rule.window_ms = millis("window", self.window)?;
                rule.gap_ms = millis("gap", self.gap)?;
                rule.bunch_size = self.bunch_size;
                rule.min_bunch = self.min_bunch;
            }
        }
        Ok(rule)
    }

    /// One line for `blocker rule list`.
    pub fn summary(&self) -> String {
        let target = match self.dport {
            Some(port) => format!("{:?} dport {port}", self.proto).to_lowercase(),
            None => format!("{:?}", self.proto).to_lowercase(),
        };
        let what = match self.kind {
            Kind::Rate => format!("{} hits in {}s", self.hitcount, self.seconds),
            Kind::Burst => format!(
                "bunch of {} (gap {}) or {} bunches of {} in {}",
                self.bunch_size,
                humantime::format_duration(self.gap),
                self.bunch_count,
                self.min_bunch,
                humantime::format_duration(self.window)
            ),
        };
        format!(
            "{target}, {} events, {what} -> {:?} {}{} /{} /{}{}",
            format!("{:?}", self.events()).to_lowercase(),
            self.action,
            humantime::format_duration(self.blacklist_for),
            if self.refresh { " refreshed" } else { "" },
            self.mask,
            self.mask6,
            if self.ttl_match { ", ttl-match" } else { "" }
        )
        .to_lowercase()
    }
}

/// A rule in its kernel slot. `generation` is bumped every time the slot gets a rule, so
/// history left by an earlier occupant never counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    pub slot: u32,
    pub generation: u32,
    #[serde(flatten)]
    pub spec: RuleSpec,
}

/// The rule table: the placed rules, and the next generation number to hand out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleTable {
    pub rules: Vec<Placed>,
    pub next_generation: u32,
}

/// What the kernel needs besides the rules: slots to scan and the blacklist masks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    pub slots: [Rule; MAX_RULES],
    pub rule_slots: u32,
    pub masks_v4: [u8; MAX_MASKS],
    pub masks_v6: [u8; MAX_MASKS],
}

impl RuleTable {
    /// A table holding `specs` in order.
    pub fn from_specs(specs: &[RuleSpec]) -> Result<Self, String> {
        Self::default().replaced_by(specs)
    }

    /// A table holding `specs` in evaluation (slot) order. A rule already here with the same
    /// name and settings keeps its slot and generation, so its history and counters go on
    /// (SIGHUP, a second `load --config`); every other rule gets a fresh generation, continuing
    /// from this table's, so no history of a rule here counts for a rule there.
    pub fn replaced_by(&self, specs: &[RuleSpec]) -> Result<Self, String> {
        let mut names = BTreeSet::new();
        if let Some(twice) = specs.iter().find(|spec| !names.insert(spec.name.as_str())) {
            return Err(format!("rule {} is defined twice", twice.name));
        }
        if specs.len() > MAX_RULES {
            return Err(format!("all {MAX_RULES} rule slots are in use"));
        }
        // `events` explicit, as `upsert` stores it, so a default and its spelled-out value
        // are the same rule.
        let specs: Vec<RuleSpec> = specs.iter().map(RuleSpec::with_explicit_events).collect();
        // Unchanged rules whose slots still follow the new order keep them.
        let mut kept: Vec<Option<&Placed>> = Vec::with_capacity(specs.len());
        let mut last_kept = None;
        for spec in &specs {
            let unchanged = self
                .get(&spec.name)
                .filter(|placed| placed.spec.with_explicit_events() == *spec)
                .filter(|placed| last_kept.is_none_or(|last| placed.slot > last));
            if let Some(placed) = unchanged {
                last_kept = Some(placed.slot);
            }
            kept.push(unchanged);
        }
        let slots = loop {
            match Self::slots_around(&kept) {
                Ok(slots) => break slots,
                // No free slot between two kept rules: that later one moves too.
                Err(crowded) => kept[crowded] = None,
            }
        };
        let mut table = Self {
            rules: Vec::with_capacity(specs.len()),
            next_generation: self.next_generation,
        };
        for ((spec, kept), slot) in specs.iter().zip(&kept).zip(slots) {
            let generation = match kept {
                Some(placed) => placed.generation,
                None => {
                    table.next_generation = table.next_generation.wrapping_add(1).max(1);
                    table.next_generation
                }
            };
            spec.compile(generation)?;
            table.rules.push(Placed {
                slot,
                generation,
                spec: spec.clone(),
            });
        }
        table.compile()?;
        Ok(table)
    }

    /// Slots in increasing order for rules in order, where `kept` rules stay in their slot and
    /// the others take the lowest slot after the previous rule. `Err(i)` names a kept rule `i`
    /// that has to move: the rules before it do not fit below its slot, or those after it do
    /// not fit above.
    fn slots_around(kept: &[Option<&Placed>]) -> Result<Vec<u32>, usize> {
        let mut slots = Vec::with_capacity(kept.len());
        let mut next = 0;
        let mut last_kept = None;
        for (index, placed) in kept.iter().enumerate() {
            let slot = match placed {
                Some(placed) if placed.slot < next => return Err(index),
                Some(placed) => {
                    last_kept = Some(index);
                    placed.slot
                }
                None if next as usize >= MAX_RULES => return Err(last_kept.unwrap_or(index)),
                None => next,
            };
            slots.push(slot);
            next = slot + 1;
        }
        Ok(slots)
    }

    /// State files of releases before `events = "new"` was refused for rules without TCP
    /// stored it on every rule, where for UDP and ICMP it always meant every packet: that is
    /// what those rules say now, so an upgrade loads the rules it ran before.
    pub fn migrate_events(&mut self) {
        for placed in &mut self.rules {
            if !matches!(placed.spec.proto, Proto::Tcp | Proto::Any) {
                placed.spec.events = Some(Events::All);
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&Placed> {
        self.rules.iter().find(|rule| rule.spec.name == name)
    }

    /// Adds a rule in the lowest free slot, or replaces the rule of the same name in its
    /// slot (with a fresh generation, so its counts start over). Returns the slot. The table
    /// keeps `events` explicit, so listings and the state say what counts.
    pub fn upsert(&mut self, spec: RuleSpec) -> Result<u32, String> {
        spec.compile(0)?;
        let spec = spec.with_explicit_events();
        let slot = match self.get(&spec.name) {
            // The same rule again: it keeps its generation and history.
            Some(existing) if existing.spec == spec => return Ok(existing.slot),
            Some(existing) => existing.slot,
            None => (0..MAX_RULES as u32)
                .find(|slot| self.rules.iter().all(|rule| rule.slot != *slot))
                .ok_or_else(|| format!("all {MAX_RULES} rule slots are in use"))?,
        };
        let mut candidate = self.clone();
        candidate.rules.retain(|rule| rule.spec.name != spec.name);
        candidate.next_generation = candidate.next_generation.wrapping_add(1).max(1);
        candidate.rules.push(Placed {
            slot,
            generation: candidate.next_generation,
            spec,
        });
        candidate.rules.sort_by_key(|rule| rule.slot);
        candidate.compile()?;
        *self = candidate;
        Ok(slot)
    }

    /// Removes a rule; returns its slot.
    pub fn remove(&mut self, name: &str) -> Option<u32> {
        let slot = self.get(name)?.slot;
        self.rules.retain(|rule| rule.spec.name != name);
        Some(slot)
    }

    /// The kernel's view of the table.
    pub fn compile(&self) -> Result<Compiled, String> {
        let mut slots = [Rule::default(); MAX_RULES];
        let mut taken = BTreeSet::new();
        for placed in &self.rules {
            if !taken.insert(placed.slot) {
                return Err(format!("two rules have slot {}", placed.slot));
            }
            let slot = slots.get_mut(placed.slot as usize).ok_or_else(|| {
                format!(
                    "rule {} has slot {}; slots are 0 to {}",
                    placed.spec.name,
                    placed.slot,
                    MAX_RULES - 1
                )
            })?;
            *slot = placed.spec.compile(placed.generation)?;
        }
        let masks = |family: u8| -> Result<[u8; MAX_MASKS], String> {
            let distinct: BTreeSet<u8> = self
                .rules
                .iter()
                .map(|r| {
                    if family == FAMILY_V4 {
                        r.spec.mask
                    } else {
                        r.spec.mask6
                    }
                })
                .collect();
            if distinct.len() > MAX_MASKS {
                return Err(format!(
                    "rules use {} different {} masks; at most {MAX_MASKS} are supported",
                    distinct.len(),
                    if family == FAMILY_V4 { "IPv4" } else { "IPv6" }
                ));
            }
            let mut out = [0u8; MAX_MASKS];
            for (slot, mask) in out.iter_mut().zip(distinct) {
                *slot = mask;
            }
            Ok(out)
        };
        Ok(Compiled {
            slots,
            rule_slots: self.rules.iter().map(|r| r.slot + 1).max().unwrap_or(0),
            masks_v4: masks(FAMILY_V4)?,
            masks_v6: masks(FAMILY_V6)?,
        })
    }

    /// The rule that owned `slot` at `generation`, if it is still there.
    pub fn name_of(&self, slot: u16, generation: u32) -> Option<&str> {
        self.rules
            .iter()
            .find(|rule| rule.slot == u32::from(slot) && rule.generation == generation)
            .map(|rule| rule.spec.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn the_default_rule_is_the_seed() {
        let rule = RuleSpec::ssh().compile(1).unwrap();
        assert_eq!(rule.proto, 6);
        assert_eq!((rule.dport_min, rule.dport_max), (22, 22));
        assert_eq!(rule.hitcount, 3);
        assert_eq!(rule.window_ms, 30_000);
        assert_eq!(rule.blacklist_ms, 120_000);
        assert_eq!((rule.refresh, rule.new_only), (1, 1));
        assert_eq!((rule.mask_v4, rule.mask_v6), (32, 64));
    }

    #[test]
    fn rules_parse_from_toml() {
        let config = Config::parse(
            r#"
            [[rules]]
            name = "ssh"
            proto = "tcp"
            dport = 22
            hitcount = 3
            seconds = 30
            blacklist_for = "120s"

            [[rules]]
            name = "web-burst"
            kind = "burst"
            proto = "tcp"
            dport = "80-443"
            action = "reject"
            gap = "2s"
            bunch_size = 10
            mask = 24
            "#,
        )
        .unwrap();
        let rules = config.rules.unwrap();
        assert_eq!(rules[0], RuleSpec::ssh());
        assert_eq!(rules[1].kind, Kind::Burst);
        assert_eq!(rules[1].dport, Some(PortRange { min: 80, max: 443 }));
        let table = RuleTable::from_specs(&rules).unwrap();
        let compiled = table.compile().unwrap();
        assert_eq!(compiled.rule_slots, 2);
        assert_eq!(compiled.masks_v4, [24, 32, 0, 0]);
        assert_eq!(compiled.masks_v6, [64, 0, 0, 0]);
        assert_eq!(compiled.slots[1].action, RuleAction::Reject as u8);
    }

    #[test]
    fn bad_rules_are_named() {
        let cases = [
            (
                RuleSpec {
                    hitcount: 0,
                    ..RuleSpec::ssh()
                },
                "hitcount must be 1 to 64",
            ),
            (
                RuleSpec {
                    hitcount: 65,
                    ..RuleSpec::ssh()
                },
                "hitcount must be 1 to 64",
            ),
            (
                RuleSpec {
                    seconds: 0,
                    ..RuleSpec::ssh()
                },
                "seconds must be between",
            ),
            (
                RuleSpec {
                    mask: 33,
                    ..RuleSpec::ssh()
                },
                "mask must be 1 to 32",
            ),
            (
                RuleSpec {
                    mask6: 0,
                    ..RuleSpec::ssh()
                },
                "mask6 must be 1 to 128",
            ),
            (
                RuleSpec {
                    proto: Proto::Icmp,
                    ..RuleSpec::ssh()
                },
                "dport needs proto tcp or udp",
            ),
            (RuleSpec::named("no spaces"), "invalid rule name"),
            (
                RuleSpec {
                    proto: Proto::Udp,
                    dport: None,
                    events: Some(Events::New),
                    ..RuleSpec::ssh()
                },
                "events = \"new\" needs proto tcp",
            ),
            (
                RuleSpec {
                    proto: Proto::Icmpv6,
                    dport: None,
                    events: Some(Events::New),
                    ..RuleSpec::ssh()
                },
                "use events = \"all\" for icmpv6",
            ),
            (
                RuleSpec {
                    blacklist_for: Duration::from_secs(30 * 86_400),
                    ..RuleSpec::ssh()
                },
                "blacklist_for must be between",
            ),
            (
                RuleSpec {
                    kind: Kind::Burst,
                    min_bunch: 1,
                    ..RuleSpec::ssh()
                },
                "min_bunch and bunch_size",
            ),
        ];
        for (spec, message) in cases {
            let err = spec.compile(1).unwrap_err();
            assert!(err.contains(message), "{err}");
        }
        assert!("70000".parse::<PortRange>().is_err());
        assert!("30-20".parse::<PortRange>().is_err());
        assert_eq!(
            "6000-6010".parse::<PortRange>().unwrap().to_string(),
            "6000-6010"
        );
    }

    #[test]
    fn events_default_to_new_for_tcp_and_any_and_to_all_for_the_rest() {
        let compiled = |proto: Proto| {
            RuleSpec {
                proto,
                dport: None,
                ..RuleSpec::named("x")
            }
            .compile(1)
            .unwrap()
            .new_only
        };
        assert_eq!(compiled(Proto::Tcp), 1);
        assert_eq!(
            compiled(Proto::Any),
            1,
            "new applies to TCP, every other packet counts"
        );
        assert_eq!(compiled(Proto::Udp), 0);
        assert_eq!(compiled(Proto::Icmp), 0);
        let config = Config::parse(
            "[[rules]]\nname = \"dns\"\nproto = \"udp\"\ndport = 53\n\
             [[rules]]\nname = \"any\"\nevents = \"new\"\n",
        )
        .unwrap();
        let rules = config.rules.unwrap();
        assert_eq!(rules[0].events(), Events::All);
        assert!(
            rules[0].summary().contains("all events"),
            "{}",
            rules[0].summary()
        );
        assert_eq!(rules[1].events(), Events::New);
        let table = RuleTable::from_specs(&rules).unwrap();
        assert_eq!(
            table.rules[0].spec.events,
            Some(Events::All),
            "kept explicit"
        );
        let err = Config::parse(
            "[[rules]]\nname = \"dns\"\nproto = \"udp\"\ndport = 53\nevents = \"new\"\n",
        )
        .unwrap_err();
        assert_eq!(
            err,
            "rule dns: events = \"new\" needs proto tcp (only TCP has connections); use events = \"all\" for udp"
        );
    }

    #[test]
    fn slots_are_stable_and_generations_change() {
        let mut table = RuleTable::default();
        let a = table.upsert(RuleSpec::named("a")).unwrap();
        let b = table.upsert(RuleSpec::named("b")).unwrap();
        let c = table.upsert(RuleSpec::named("c")).unwrap();
        assert_eq!((a, b, c), (0, 1, 2));
        let b_generation = table.get("b").unwrap().generation;
        assert_eq!(table.remove("a"), Some(0));
        assert_eq!(
            table.get("b").unwrap().slot,
            1,
            "other rules keep their slot"
        );
        assert_eq!(
            table.upsert(RuleSpec::named("d")).unwrap(),
            0,
            "free slot reused"
        );
        assert_ne!(table.get("d").unwrap().generation, 0);
        table
            .upsert(RuleSpec {
                hitcount: 5,
                ..RuleSpec::named("b")
            })
            .unwrap();
        let replaced = table.get("b").unwrap();
        assert_eq!(replaced.slot, 1);
        assert_ne!(replaced.generation, b_generation);
        assert_eq!(table.name_of(1, b_generation), None);
        assert_eq!(table.compile().unwrap().rule_slots, 3);
    }

    fn placement(table: &RuleTable) -> Vec<(String, u32, u32)> {
        table
            .rules
            .iter()
            .map(|rule| (rule.spec.name.clone(), rule.slot, rule.generation))
            .collect()
    }

    #[test]
    fn replacing_with_the_same_rules_keeps_slots_and_generations() {
        let specs = [RuleSpec::named("a"), RuleSpec::named("b"), RuleSpec::ssh()];
        let table = RuleTable::from_specs(&specs).unwrap();
        let again = table.replaced_by(&specs).unwrap();
        assert_eq!(placement(&again), placement(&table));
        assert_eq!(again, table, "a reload of the same rules changes nothing");
    }

    #[test]
    fn replacing_renews_only_changed_and_new_rules() {
        let table =
            RuleTable::from_specs(&[RuleSpec::named("a"), RuleSpec::named("b"), RuleSpec::ssh()])
                .unwrap();
        let old = |name: &str| table.get(name).unwrap().clone();
        let changed_b = RuleSpec {
            hitcount: 9,
            ..RuleSpec::named("b")
        };
        let next = table
            .replaced_by(&[
                RuleSpec::named("a"),
                changed_b,
                RuleSpec::ssh(),
                RuleSpec::named("new"),
            ])
            .unwrap();
        let a = next.get("a").unwrap();
        assert_eq!((a.slot, a.generation), (old("a").slot, old("a").generation));
        let ssh = next.get("ssh").unwrap();
        assert_eq!(
            (ssh.slot, ssh.generation),
            (old("ssh").slot, old("ssh").generation),
            "ssh keeps its history although the rule before it changed"
        );
        let b = next.get("b").unwrap();
        assert_eq!(b.slot, old("b").slot);
        assert_ne!(
            b.generation,
            old("b").generation,
            "a changed rule starts over"
        );
        let new = next.get("new").unwrap();
        let generations: Vec<u32> = table.rules.iter().map(|r| r.generation).collect();
        assert!(!generations.contains(&new.generation));
        let order: Vec<&str> = next.rules.iter().map(|r| r.spec.name.as_str()).collect();
        assert_eq!(
            order,
            ["a", "b", "ssh", "new"],
            "slots follow the config order"
        );
    }

    #[test]
    fn replacing_moves_kept_rules_only_when_the_order_needs_it() {
        let table = RuleTable::from_specs(&[RuleSpec::named("a"), RuleSpec::named("b")]).unwrap();
        let swapped = table
            .replaced_by(&[RuleSpec::named("b"), RuleSpec::named("a")])
            .unwrap();
        let order: Vec<&str> = swapped.rules.iter().map(|r| r.spec.name.as_str()).collect();
        assert_eq!(order, ["b", "a"]);
        assert_eq!(
            swapped.get("b").unwrap().generation,
            table.get("b").unwrap().generation
        );
        // 32 rules where one sat in slot 31: rules after it must move it.
        let full: Vec<RuleSpec> = (0..MAX_RULES)
            .map(|i| RuleSpec::named(&format!("r{i}")))
            .collect();
        let last = RuleTable::from_specs(&full[MAX_RULES - 1..]).unwrap();
        let mut moved = full.clone();
        moved.rotate_right(1);
        let table = last.replaced_by(&moved[..1]).unwrap();
        let table = table.replaced_by(&full).unwrap();
        assert_eq!(table.rules.len(), MAX_RULES);
        assert!(table.compile().is_ok());
    }

    #[test]
    fn a_slot_out_of_range_or_taken_twice_is_an_error_not_a_panic() {
        let mut table = RuleTable::from_specs(&[RuleSpec::ssh()]).unwrap();
        table.rules[0].slot = 40;
        let err = table.compile().unwrap_err();
        assert!(err.contains("slot 40; slots are 0 to 31"), "{err}");
        let mut table = RuleTable::from_specs(&[RuleSpec::ssh(), RuleSpec::named("b")]).unwrap();
        table.rules[1].slot = 0;
        assert!(table
            .compile()
            .unwrap_err()
            .contains("two rules have slot 0"));
    }

    #[test]
    fn at_most_32_rules_and_4_masks() {
        let mut table = RuleTable::default();
        for i in 0..MAX_RULES {
            table.upsert(RuleSpec::named(&format!("r{i}"))).unwrap();
        }
        let err = table.upsert(RuleSpec::named("one-too-many")).unwrap_err();
        assert!(err.contains("all 32 rule slots"), "{err}");
        let mut table = RuleTable::default();
        for mask in [32, 24, 16, 8] {
            table
                .upsert(RuleSpec {
                    mask,
                    ..RuleSpec::named(&format!("m{mask}"))
                })
                .unwrap();
        }
        let err = table
            .upsert(RuleSpec {
                mask: 20,
                ..RuleSpec::named("m20")
            })
            .unwrap_err();
        assert!(err.contains("at most 4"), "{err}");
        assert!(table.get("m20").is_none(), "a refused rule changes nothing");
    }
}

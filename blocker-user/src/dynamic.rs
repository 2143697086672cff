//! The rule table, per-rule counters and the dynamic blacklist in the pinned maps.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues};
use blocker_common::{
    next_lists_generation, ports_without_rules, rule_protos, BlacklistEntry, RuleStats, Settings,
    SourceKey, SourceKeyV4, FAMILY_V4, MAP_BLACKLIST_V4, MAP_BLACKLIST_V6, MAP_RULES,
    MAP_RULE_STATS, MAP_SETTINGS, MAX_MASKS, MAX_RULES,
};
use ipnet::IpNet;

use crate::{
    clock::Now, config::RejectConfig, pins::PinDir, rules::RuleTable, state::Listed, Error, Result,
};

fn open(pins: &PinDir, name: &str, wrap: fn(MapData) -> Map) -> Result<Map> {
    pins.open_map(name).map(wrap)
}

/// Writes the rule table to the kernel, slot by slot, so a packet sees either the old or the
/// new rule in each slot. Counters of slots whose rule changed start over. The caller writes
/// the settings next ([`write_settings`]).
pub fn write_rules(pins: &PinDir, before: Option<&RuleTable>, after: &RuleTable) -> Result<()> {
    let compiled = after.compile().map_err(Error::InvalidRule)?;
    let context = |name: &str| format!("writing map {name}");
    let mut rules: Array<_, blocker_common::Rule> =
        Array::try_from(open(pins, MAP_RULES, Map::Array)?)
            .map_err(Error::map(context(MAP_RULES)))?;
    let mut stats: PerCpuArray<_, RuleStats> =
        PerCpuArray::try_from(open(pins, MAP_RULE_STATS, Map::PerCpuArray)?)
            .map_err(Error::map(context(MAP_RULE_STATS)))?;
    let cpus = aya::util::nr_cpus().map_err(|(_, source)| Error::Io {
        context: "counting CPUs".into(),
        source,
    })?;
    for (slot, rule) in compiled.slots.iter().enumerate() {
        if slot_starts_over(before, after, slot) {
            let zero = PerCpuValues::try_from(vec![RuleStats::default(); cpus])
                .map_err(Error::io(context(MAP_RULE_STATS)))?;
            stats
                .set(slot as u32, zero, 0)
                .map_err(Error::map(context(MAP_RULE_STATS)))?;
        }
        rules
            .set(slot as u32, rule, 0)
            .map_err(Error::map(context(MAP_RULES)))?;
    }
    Ok(())
}

/// Whether the counters of `slot` start over when the kernel's rules go from `before` (`None`:
/// unknown) to `after`: its rule changed, came or went.
pub fn slot_starts_over(before: Option<&RuleTable>, after: &RuleTable, slot: usize) -> bool {
    let generation_in = |table: &RuleTable| {
        table
            .rules
            .iter()
            .find(|r| r.slot as usize == slot)
            .map(|r| r.generation)
    };
    before.is_none_or(|before| generation_in(before) != generation_in(after))
}

/// Reads the settings, lets `change` edit them, and writes them back; fields `change` leaves
/// alone keep their value.
fn update_settings(pins: &PinDir, change: impl FnOnce(&mut Settings)) -> Result<()> {
    let context = format!("writing map {MAP_SETTINGS}");
    let mut settings: Array<_, Settings> = Array::try_from(open(pins, MAP_SETTINGS, Map::Array)?)
        .map_err(Error::map(context.clone()))?;
    let mut value = settings.get(&0, 0).map_err(Error::map(context.clone()))?;
    change(&mut value);
    settings.set(0, value, 0).map_err(Error::map(context))
}

/// Tells the XDP program the allowlist or ban tries may have changed, so no blacklist entry
/// skips their checks on an older stamp. For writers that stop before `write_settings`.
pub fn bump_lists_generation(pins: &PinDir) -> Result<()> {
    update_settings(pins, |value| {
        value.lists_generation = next_lists_generation(value.lists_generation)
    })
}

/// Writes how often reject rules may answer (per CPU); `load` does, from `[rejects]`.
pub fn write_reject_limits(pins: &PinDir, rejects: &RejectConfig) -> Result<()> {
    update_settings(pins, |value| {
        value.reject_per_s = rejects.per_second;
        value.reject_burst = rejects.burst;
    })
}

/// Writes what lets the program skip work: which lists hold entries (`lists`, `LIST_*`
/// bits), the rule slots and protocols in use, and the blacklist masks. With `rules_changed`
/// the masks are recomputed from the rules plus those of entries still in the blacklist (so
/// an entry keeps blocking after its rule is removed); otherwise the current ones are kept.
/// The reject limits and the clock override are left as they are.
pub fn write_settings(
    pins: &PinDir,
    rules: Option<&RuleTable>,
    lists: u32,
    rules_changed: bool,
) -> Result<()> {
    let empty = RuleTable::default();
    let compiled = rules
        .unwrap_or(&empty)
        .compile()
        .map_err(Error::InvalidRule)?;
    let blacklisted = if rules_changed {
        blacklist_raw(pins)?
    } else {
        Vec::new()
    };
    update_settings(pins, |value| {
        // Every writer of the tries ends here (or in `bump_lists_generation`), under the pin
        // directory lock: the read-modify-write loses no bump.
        value.lists_generation = next_lists_generation(value.lists_generation);
        value.lists = lists;
        value.rule_slots = compiled.rule_slots;
        value.rule_protos = rule_protos(&compiled.slots);
        value.ports_without_rules = ports_without_rules(&compiled.slots);
        if rules_changed {
            let mut masks_v4: Vec<u8> = compiled
                .masks_v4
                .iter()
                .copied()
                .filter(|m| *m != 0)
                .collect();
            let mut masks_v6: Vec<u8> = compiled
                .masks_v6
                .iter()
                .copied()
                .filter(|m| *m != 0)
                .collect();
            for (key, _) in &blacklisted {
                let masks = if key.family == FAMILY_V4 {
                    &mut masks_v4
                } else {
                    &mut masks_v6
                };
                if !masks.contains(&key.prefix_len) && masks.len() < MAX_MASKS {
                    masks.push(key.prefix_len);
                }
            }
            let fill = |masks: &[u8]| {
                let mut out = [0u8; MAX_MASKS];
                for (slot, mask) in out.iter_mut().zip(masks) {
                    *slot = *mask;
                }
                out
            };
            value.masks_v4 = fill(&masks_v4);
            value.masks_v6 = fill(&masks_v6);
        }
    })
}

/// Per-rule counters summed over CPUs, by slot.
pub fn rule_stats(pins: &PinDir) -> Result<Vec<RuleStats>> {
    let context = format!("reading map {MAP_RULE_STATS}");
    let stats: PerCpuArray<_, RuleStats> =
        PerCpuArray::try_from(open(pins, MAP_RULE_STATS, Map::PerCpuArray)?)
            .map_err(Error::map(context.clone()))?;
    (0..MAX_RULES as u32)
        .map(|slot| {
            let per_cpu = stats.get(&slot, 0).map_err(Error::map(context.clone()))?;
            Ok(per_cpu.iter().fold(RuleStats::default(), |sum, s| sum + *s))
        })
        .collect()
}

/// The prefix a blacklist key stands for.
pub fn key_net(key: &SourceKey) -> Option<IpNet> {
    let addr = if key.family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(
            key.addr[0],
            key.addr[1],
            key.addr[2],
            key.addr[3],
        ))
    } else {
        IpAddr::V6(Ipv6Addr::from(key.addr))
    };
    IpNet::new(addr, key.prefix_len).ok()
}

/// The dynamic blacklist of one family, keyed by `K`.
fn open_blacklist<K: aya::Pod>(
    pins: &PinDir,
    name: &str,
) -> Result<HashMap<MapData, K, BlacklistEntry>> {
    HashMap::try_from(open(pins, name, Map::LruHashMap)?)
        .map_err(Error::map(format!("opening map {name}")))
}

/// Every entry of both families' maps, expired or not.
pub fn blacklist_raw(pins: &PinDir) -> Result<Vec<(SourceKey, BlacklistEntry)>> {
    let v4 = open_blacklist::<SourceKeyV4>(pins, MAP_BLACKLIST_V4)?;
    let v6 = open_blacklist::<SourceKey>(pins, MAP_BLACKLIST_V6)?;
    let v4_entries = v4
        .iter()
        .filter_map(|entry| entry.ok())
        .map(|(key, entry)| (SourceKey::from(key), entry));
    Ok(v4_entries
        .chain(v6.iter().filter_map(|entry| entry.ok()))
        .collect())
}

/// Entries still in force, soonest expiry first.
pub fn blacklist(pins: &PinDir, rules: Option<&RuleTable>, now: &Now) -> Result<Vec<Listed>> {
    let now_ms = now.mono.as_millis() as u64;
    let mut entries: Vec<(u64, Listed)> = blacklist_raw(pins)?
        .into_iter()
        .filter(|(_, entry)| entry.expires_at_ms >= now_ms)
        .filter_map(|(key, entry)| {
            let remaining =
                jiff::SignedDuration::from_millis((entry.expires_at_ms - now_ms) as i64);
            Some((
                entry.expires_at_ms,
                Listed {
                    addr: key_net(&key)?.to_string(),
                    kind: "dynamic",
                    expires_at: Some(now.wall.checked_add(remaining).ok()?),
                    reason: None,
                    created_at: None,
                    rule: rules
                        .and_then(|table| table.name_of(entry.slot, entry.generation))
                        .map(str::to_string),
                    hits: Some(entry.hits),
                },
            ))
        })
        .collect();
    entries.sort_by_key(|(expiry, _)| *expiry);
    Ok(entries.into_iter().map(|(_, entry)| entry).collect())
}

/// Removes `keys` from the blacklist; a key already gone (expired and evicted, or another
/// writer was first) is fine. Leaves the lists generation as it is, which suits expired
/// entries only: a CPU may recall a live entry's hit for the rest of its tick
/// ([`blocker_common::HitMemo`]).
pub fn remove_keys(pins: &PinDir, keys: &[SourceKey]) -> Result<()> {
    let mut v4 = open_blacklist::<SourceKeyV4>(pins, MAP_BLACKLIST_V4)?;
    let mut v6 = open_blacklist::<SourceKey>(pins, MAP_BLACKLIST_V6)?;
    for key in keys {
        let (removed, name) = match key.v4() {
            Some(v4_key) => (v4.remove(&v4_key), MAP_BLACKLIST_V4),
            None => (v6.remove(key), MAP_BLACKLIST_V6),
        };
        match removed {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(nix::libc::ENOENT) => {}
            Err(err) => {
                return Err(Error::Map {
                    context: format!("removing from map {name}"),
                    source: err,
                })
            }
        }
    }
    Ok(())
}

/// Which blacklist entries [`remove_blacklisted`] removes.
#[derive(Clone, Copy)]
pub enum Doomed<'a> {
    All,
    /// Entries that overlap one of these prefixes (inside it or covering it): what `unban`
    /// lifts, as an entry covering the address would keep dropping it.
    Overlapping(&'a [IpNet]),
    /// Entries inside one of these prefixes: what an allowlist entry makes pointless. An
    /// entry covering it (a rule's `mask = 24` range) still drops the rest of its range.
    Inside(&'a [IpNet]),
}

impl Doomed<'_> {
    fn covers(self, entry: &IpNet) -> bool {
        match self {
            Doomed::All => true,
            Doomed::Overlapping(nets) => nets
                .iter()
                .any(|net| net.contains(entry) || entry.contains(net)),
            Doomed::Inside(nets) => nets.iter().any(|net| net.contains(entry)),
        }
    }
}

/// Removes the entries `doomed` names; returns the prefixes removed. Then bumps the lists
/// generation, so no CPU recalls a hit of a removed entry ([`blocker_common::HitMemo`]);
/// called under the pin directory lock, as the bump's read-modify-write of the settings
/// requires.
pub fn remove_blacklisted(pins: &PinDir, doomed: Doomed) -> Result<Vec<IpNet>> {
    let doomed: Vec<(SourceKey, IpNet)> = blacklist_raw(pins)?
        .into_iter()
        .filter_map(|(key, _)| Some((key, key_net(&key)?)))
        .filter(|(_, entry)| doomed.covers(entry))
        .collect();
    let keys: Vec<SourceKey> = doomed.iter().map(|(key, _)| *key).collect();
    remove_keys(pins, &keys)?;
    if !keys.is_empty() {
        bump_lists_generation(pins)?;
    }
    let removed = doomed.into_iter().map(|(_, net)| net).collect();
    Ok(removed)
}

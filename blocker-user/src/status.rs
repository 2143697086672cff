//! What `blocker status` reports: attached interfaces, map usage and the verdict counters.

use aya::{
    maps::{HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray},
    Pod,
};
use blocker_common::{
    AllowValue, BanValue, BlacklistEntry, Counter, History, HistoryKey, Reason, ShortHistory,
    SourceKey, SourceKeyV4, ALL_MAPS, MAP_ALLOW_V4, MAP_ALLOW_V6, MAP_BAN_V4, MAP_BAN_V6,
    MAP_BLACKLIST_V4, MAP_BLACKLIST_V6, MAP_COUNTERS, MAP_HISTORY, MAP_HISTORY_LONG,
};
use serde::Serialize;

use crate::{
    pins::{Attachment, PinDir},
    text::escape,
    Error, Result,
};

/// Maps that fill up as entries come: the others are arrays (always full) or the ring buffer
/// (its capacity is bytes).
pub const FILLING_MAPS: [&str; 8] = [
    MAP_BAN_V4,
    MAP_BAN_V6,
    MAP_ALLOW_V4,
    MAP_ALLOW_V6,
    MAP_BLACKLIST_V4,
    MAP_BLACKLIST_V6,
    MAP_HISTORY,
    MAP_HISTORY_LONG,
];

#[derive(Debug, Serialize)]
pub struct Status {
    pub pin_dir: String,
    pub interfaces: Vec<Attachment>,
    pub maps: Vec<MapUsage>,
    pub counters: Vec<CounterRow>,
}

#[derive(Debug, Serialize)]
pub struct MapUsage {
    pub name: &'static str,
    pub entries: u64,
    pub capacity: u32,
}

#[derive(Debug, Serialize)]
pub struct CounterRow {
    pub action: &'static str,
    pub reason: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

/// Keys in an LPM trie, by walking them: the kernel keeps no count for tries.
fn count_keys<K: Pod, V: Pod>(data: MapData) -> Result<u64, MapError> {
    let map = Map::LpmTrie(data);
    let trie = LpmTrie::<_, K, V>::try_from(&map)?;
    Ok(trie.keys().count() as u64)
}

/// Keys in an (LRU) hash map, by walking them.
fn count_hash_keys<K: Pod, V: Pod>(data: MapData) -> Result<u64, MapError> {
    let map = Map::LruHashMap(data);
    let hash = HashMap::<_, K, V>::try_from(&map)?;
    Ok(hash.keys().filter(|key| key.is_ok()).count() as u64)
}

/// Entries of the ban and allowlist tries as the state database counts them, by map name: the
/// store writes every stored entry to its trie, so these are the tries' fill without a walk
/// of their keys (a million bans would make each walk take a second).
pub type TrieCounts<'a> = &'a std::collections::BTreeMap<String, u64>;

fn usage(pins: &PinDir, name: &'static str, counted: Option<TrieCounts>) -> Result<MapUsage> {
    let data = pins.open_map(name)?;
    let context = || format!("reading map {name}");
    let capacity = data.info().map_err(Error::map(context()))?.max_entries();
    let stored = counted.and_then(|counts| counts.get(name).copied());
    let entries = match (name, stored) {
        (MAP_BAN_V4 | MAP_BAN_V6 | MAP_ALLOW_V4 | MAP_ALLOW_V6, Some(stored)) => Ok(stored),
        (MAP_BAN_V4, None) => count_keys::<[u8; 4], BanValue>(data),
        (MAP_BAN_V6, None) => count_keys::<[u8; 16], BanValue>(data),
        (MAP_ALLOW_V4, None) => count_keys::<[u8; 4], AllowValue>(data),
        (MAP_ALLOW_V6, None) => count_keys::<[u8; 16], AllowValue>(data),
        (MAP_BLACKLIST_V4, _) => count_hash_keys::<SourceKeyV4, BlacklistEntry>(data),
        (MAP_BLACKLIST_V6, _) => count_hash_keys::<SourceKey, BlacklistEntry>(data),
        (MAP_HISTORY, _) => count_hash_keys::<HistoryKey, ShortHistory>(data),
        (MAP_HISTORY_LONG, _) => count_hash_keys::<HistoryKey, History>(data),
        // Arrays are always full; the ring buffer's capacity is in bytes.
        _ => Ok(u64::from(capacity)),
    }
    .map_err(Error::map(context()))?;
    Ok(MapUsage {
        name,
        entries,
        capacity,
    })
}

/// Sums the per-CPU counters of every reason.
pub fn counters(pins: &PinDir) -> Result<Vec<CounterRow>> {
    let data = Map::PerCpuArray(pins.open_map(MAP_COUNTERS)?);
    let context = || format!("reading map {MAP_COUNTERS}");
    let array: PerCpuArray<_, Counter> =
        PerCpuArray::try_from(data).map_err(Error::map(context()))?;
    Reason::ALL
        .iter()
        .map(|reason| {
            let per_cpu = array
                .get(&(*reason as u32), 0)
                .map_err(Error::map(context()))?;
            Ok(CounterRow {
                action: reason.action().name(),
                reason: reason.name(),
                packets: per_cpu.iter().map(|c| c.packets).sum(),
                bytes: per_cpu.iter().map(|c| c.bytes).sum(),
            })
        })
        .collect()
}

/// The status, counting every map's entries.
pub fn read(pins: &PinDir) -> Result<Status> {
    read_counted(pins, None)
}

/// The status, with the tries' entries taken from `counted` where it has them.
pub fn read_counted(pins: &PinDir, counted: Option<TrieCounts>) -> Result<Status> {
    pins.require_loaded()?;
    let maps = ALL_MAPS
        .iter()
        .map(|name| usage(pins, name, counted))
        .collect::<Result<Vec<_>>>()?;
    Ok(Status {
        pin_dir: pins.path.display().to_string(),
        interfaces: pins.attachments()?,
        maps,
        counters: counters(pins)?,
    })
}

/// Writes `status` as the `blocker status` table.
pub fn write_table(status: &Status, out: &mut impl std::io::Write) -> std::io::Result<()> {
    writeln!(out, "pin dir: {}", escape(&status.pin_dir))?;
    if status.interfaces.is_empty() {
        writeln!(out, "interfaces: none attached")?;
    }
    for attachment in &status.interfaces {
        writeln!(
            out,
            "interface {} ({} mode)",
            escape(&attachment.iface),
            attachment.mode.name()
        )?;
    }
    writeln!(out, "\n{:<10} {:>10} {:>10}", "map", "entries", "capacity")?;
    for map in &status.maps {
        writeln!(
            out,
            "{:<10} {:>10} {:>10}",
            map.name, map.entries, map.capacity
        )?;
    }
    writeln!(
        out,
        "\n{:<6} {:<12} {:>12} {:>14}",
        "action", "reason", "packets", "bytes"
    )?;
    for row in &status.counters {
        writeln!(
            out,
            "{:<6} {:<14} {:>12} {:>14}",
            row.action, row.reason, row.packets, row.bytes
        )?;
    }
    Ok(())
}

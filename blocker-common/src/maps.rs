//! Map names and the layouts of their keys and values.
//!
//! Names are at most 15 bytes: the kernel truncates longer object names.

/// Manual IPv4 bans: LPM trie keyed by `Key<[u8; 4]>`, value [`BanValue`].
pub const MAP_BAN_V4: &str = "BAN_V4";
/// Manual IPv6 bans: LPM trie keyed by `Key<[u8; 16]>`, value [`BanValue`].
pub const MAP_BAN_V6: &str = "BAN_V6";
/// IPv4 allowlist: LPM trie keyed by `Key<[u8; 4]>`, value [`AllowValue`].
pub const MAP_ALLOW_V4: &str = "ALLOW_V4";
/// IPv6 allowlist: LPM trie keyed by `Key<[u8; 16]>`, value [`AllowValue`].
pub const MAP_ALLOW_V6: &str = "ALLOW_V6";
/// Per-CPU packet and byte counters indexed by [`crate::Reason`].
pub const MAP_COUNTERS: &str = "COUNTERS";

/// Rule slots: array of [`crate::Rule`], [`crate::MAX_RULES`] long.
pub const MAP_RULES: &str = "RULES";
/// Per-CPU [`crate::RuleStats`] by rule slot.
pub const MAP_RULE_STATS: &str = "RULE_STATS";
/// One [`crate::Settings`].
pub const MAP_SETTINGS: &str = "SETTINGS";
/// LRU hash of [`crate::HistoryKey`] to [`crate::ShortHistory`]: per-source event history of
/// the rules that fit it ([`crate::uses_short_history`]).
pub const MAP_HISTORY: &str = "HISTORY";
/// LRU hash of [`crate::HistoryKey`] to [`crate::History`]: per-source event history of the
/// rules with longer hitcounts.
pub const MAP_HISTORY_LONG: &str = "HISTORY_LONG";
/// LRU hash of [`crate::SourceKeyV4`] to [`crate::BlacklistEntry`]: the dynamic blacklist of
/// IPv4 sources.
pub const MAP_BLACKLIST_V4: &str = "BLACKLIST_V4";
/// LRU hash of [`crate::SourceKey`] to [`crate::BlacklistEntry`]: the dynamic blacklist of
/// IPv6 sources.
pub const MAP_BLACKLIST_V6: &str = "BLACKLIST_V6";
/// Array of [`crate::BLACKLIST_FILTER_LINES`] lines of bytes: the blacklist keys the program
/// may have inserted ([`crate::blacklist_filter_slot`]). Pinned with the blacklist, as the
/// two must agree.
pub const MAP_BLACKLIST_FILTER: &str = "BLACKLIST_FILTER";
/// Ring buffer of [`crate::Event`]s: sources blacklisted.
pub const MAP_EVENTS: &str = "EVENTS";

/// Every map the XDP program declares, in the order `blocker status` reports them.
pub const ALL_MAPS: [&str; 15] = [
    MAP_BAN_V4,
    MAP_BAN_V6,
    MAP_ALLOW_V4,
    MAP_ALLOW_V6,
    MAP_BLACKLIST_V4,
    MAP_BLACKLIST_V6,
    MAP_BLACKLIST_FILTER,
    MAP_HISTORY,
    MAP_HISTORY_LONG,
    MAP_RULES,
    MAP_SETTINGS,
    MAP_RULE_STATS,
    MAP_COUNTERS,
    MAP_EVENTS,
    crate::MAP_DROP_SAMPLES,
];

/// The name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "blocker";

/// How many IPv6 extension headers the parser walks before giving up on the L4 header.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;

/// How many VLAN tags (802.1Q, 802.1ad) the parser walks. A frame behind more is dropped
/// (`evasive`): the kernel strips any number of priority tags (VLAN 0) and delivers what is
/// behind them, so passing it unchecked would let any source past every ban and rule.
pub const MAX_VLAN_TAGS: usize = 4;

/// Default capacities; `blocker load --config` may override them. The LRU maps (the blacklist
/// of each family, short and long history) are preallocated in full: about 104 (IPv4), 120
/// (IPv6), 120 and 360 bytes of kernel memory per entry, so the defaults take about
/// 14 + 16 + 8 + 6 MB, which fits a 1 GB VPS. The tries allocate per entry.
/// [`DEFAULT_BLACKLIST_CAPACITY`] is each family's.
pub const DEFAULT_BAN_V4_CAPACITY: u32 = 1 << 20;
pub const DEFAULT_BAN_V6_CAPACITY: u32 = 1 << 18;
pub const DEFAULT_ALLOW_CAPACITY: u32 = 1 << 16;
pub const DEFAULT_BLACKLIST_CAPACITY: u32 = 1 << 17;
pub const DEFAULT_HISTORY_CAPACITY: u32 = 1 << 16;
/// Fewer than the short class: rules with hitcounts past [`crate::SHORT_RING`] are the rarer
/// (burst rules) and their sources cost three times as much each.
pub const DEFAULT_HISTORY_LONG_CAPACITY: u32 = 1 << 14;
/// Bytes of the event ring buffer (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 18;

/// A manual ban. Kept to 4 bytes with 4-byte alignment because the kernel stores an LPM trie
/// value right after the key data, which is only 4-byte aligned for IPv4 keys.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BanValue {
    /// Expiry in whole seconds of CLOCK_BOOTTIME (which keeps counting through suspend);
    /// [`BAN_PERMANENT`] means never.
    pub expires_at_s: u32,
}

/// `BanValue::expires_at_s` of a ban that never expires.
pub const BAN_PERMANENT: u32 = 0;

/// An allowlist entry carries no data in the kernel; its reason lives in the state file.
pub type AllowValue = u8;
/// The value stored for every allowlist entry.
pub const ALLOW_PRESENT: AllowValue = 1;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` data with no padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::BanValue {}
    unsafe impl aya::Pod for crate::Counter {}
    unsafe impl aya::Pod for crate::Rule {}
    unsafe impl aya::Pod for crate::RuleStats {}
    unsafe impl aya::Pod for crate::Settings {}
    unsafe impl aya::Pod for crate::SourceKey {}
    unsafe impl aya::Pod for crate::SourceKeyV4 {}
    unsafe impl aya::Pod for crate::HistoryKey {}
    unsafe impl aya::Pod for crate::History {}
    unsafe impl aya::Pod for crate::ShortHistory {}
    unsafe impl aya::Pod for crate::BlacklistEntry {}
    unsafe impl aya::Pod for crate::Event {}
    unsafe impl aya::Pod for crate::DropSample {}
    unsafe impl aya::Pod for crate::DropSamples {}
}

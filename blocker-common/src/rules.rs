//! Rate and burst rules: the layouts the kernel and userspace share, and the pure functions
//! that decide, per event, whether a source gets blacklisted.
//!
//! Times are milliseconds of CLOCK_MONOTONIC, read at tick resolution by the XDP program.
//! History ring timestamps are kept as `u32` to halve the per-source memory; they wrap after
//! 49.7 days, and every comparison uses wrapping differences, exact for windows up to
//! [`MAX_RULE_MS`]. A history also keeps the full `u64` time of its newest event and is
//! cleared when that is older than [`MAX_RULE_MS`], so an idle source's old times never alias
//! into a window.

use crate::bunch::{bunch_step, BunchLimits};

/// Rule slots in the kernel.
pub const MAX_RULES: usize = 32;
/// Timestamps kept per source and rule; also the largest hitcount and bunch count.
pub const HISTORY_RING: usize = 64;
/// Distinct source masks per address family that the dynamic blacklist is looked up with.
pub const MAX_MASKS: usize = 4;
/// Longest window, blacklist or gap a rule may use, so `u32` millisecond differences stay exact.
pub const MAX_RULE_MS: u32 = 24 * 24 * 3600 * 1000;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// TCP flag bits (the 14th byte of the header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Whether a TCP segment with `flags` opens a connection: SYN without ACK, RST or FIN.
/// Conntrack marks SYN|FIN and SYN|RST invalid rather than NEW, so neither counts for
/// `events = "new"`.
#[inline(always)]
pub fn tcp_opens_connection(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN
}

/// What a rule slot holds.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleKind {
    Empty = 0,
    /// `recent --rcheck --seconds S --hitcount N`, then `--set`.
    Rate = 1,
    /// Bunch analysis: bursts of events close together.
    Burst = 2,
}

/// What happens to the packets of a source a rule blacklisted.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleAction {
    Drop = 0,
    /// Answer from XDP: TCP RST, or ICMP/ICMPv6 port unreachable; other packets are dropped.
    Reject = 1,
}

/// `Rule::proto` value matching every protocol.
pub const PROTO_ANY: u8 = 255;

/// One rule slot. Slots are evaluated in index order; `generation` changes whenever a slot is
/// reused, so history left by an earlier rule in the slot never counts for the new one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub generation: u32,
    /// A [`RuleKind`].
    pub kind: u8,
    /// An IP protocol number, or [`PROTO_ANY`].
    pub proto: u8,
    /// A [`RuleAction`].
    pub action: u8,
    /// 1: a TCP packet is an event only if it opens a connection ([`tcp_opens_connection`]);
    /// packets of other protocols always are. 0: every matching packet is.
    pub new_only: u8,
    /// 1: every packet of a blacklisted source extends its entry (`--update`).
    pub refresh: u8,
    /// 1: an event is checked against the threshold only when its TTL / hop limit equals
    /// that of the source's last recorded event (`--rttl`); it is recorded either way.
    pub ttl_match: u8,
    /// Prefix lengths sources are aggregated to.
    pub mask_v4: u8,
    pub mask_v6: u8,
    /// Destination port range, inclusive; 0..=65535 for any (and for port-less protocols).
    pub dport_min: u16,
    pub dport_max: u16,
    /// Rate rules: hits within `window_ms`. Burst rules: bunches of `min_bunch` within it.
    pub hitcount: u32,
    pub window_ms: u32,
    pub blacklist_ms: u32,
    /// Burst rules: the largest gap between events of one bunch.
    pub gap_ms: u32,
    /// Burst rules: a bunch this long blacklists at once.
    pub bunch_size: u32,
    /// Burst rules: a bunch this long counts toward `hitcount`.
    pub min_bunch: u32,
}

/// Per-rule counters (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleStats {
    pub events: u64,
    pub blacklisted: u64,
    pub dropped: u64,
    pub rejected: u64,
}

/// Global settings the program reads once per packet, so it can skip work nothing needs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Slots to scan: one past the highest slot in use (0 = no rules).
    pub rule_slots: u32,
    /// `LIST_*` bits of the allowlist and ban tries that hold entries.
    pub lists: u32,
    /// [`proto_bit`]s of the protocols some rule matches.
    pub rule_protos: u32,
    /// Masks the dynamic blacklist is keyed by, per family; 0 = unused.
    pub masks_v4: [u8; MAX_MASKS],
    pub masks_v6: [u8; MAX_MASKS],
    /// Rejects: tokens added per second to each CPU's bucket; 0 = never answer, always drop.
    pub reject_per_s: u32,
    /// Rejects: bucket size.
    pub reject_burst: u32,
    /// Bumped ([`next_lists_generation`]) by every writer of the allowlist and ban tries
    /// after it changed them, under the pin directory lock; 0 = never, which turns the
    /// blacklist's fast path off.
    pub lists_generation: u32,
    /// Differential tests only: when non-zero, the time the program uses instead of its
    /// clocks: milliseconds for rule windows and the dynamic blacklist, and
    /// `clock_override_ms / 1000` as the CLOCK_BOOTTIME second for manual-ban expiry.
    /// 0 (always in production) = the real clocks.
    pub clock_override_ms: u64,
    /// [`ports_without_rules`]: destination ports, folded to `port % 256`, that no rule
    /// matches, so their packets skip the rule loop. All clear (the default) skips nothing.
    pub ports_without_rules: [u64; PORT_FOLDS / 64],
}

/// The [`Settings::rule_protos`] of `rules`: the [`proto_bit`]s of the protocols the rules in
/// force match.
pub fn rule_protos(rules: &[Rule]) -> u32 {
    rules
        .iter()
        .filter(|rule| rule.kind != RuleKind::Empty as u8)
        .fold(0, |bits, rule| bits | proto_bit(rule.proto))
}

/// Destination ports are folded to this many bits in [`Settings::ports_without_rules`].
pub const PORT_FOLDS: usize = 256;

/// The [`Settings::ports_without_rules`] of `rules`: the bit of `fold` is set when no rule in
/// force matches a destination port `p` with `p % 256 == fold`. A packet without ports (ICMP,
/// a later fragment) has port 0 for the rules and for this filter alike.
pub fn ports_without_rules(rules: &[Rule]) -> [u64; PORT_FOLDS / 64] {
    let mut matched = [0u64; PORT_FOLDS / 64];
    for rule in rules
        .iter()
        .filter(|rule| rule.kind != RuleKind::Empty as u8)
    {
        let (min, max) = (usize::from(rule.dport_min), usize::from(rule.dport_max));
        // A range of PORT_FOLDS ports or more covers every fold.
        let last = max.min(min + PORT_FOLDS - 1);
        for port in min..=last {
            let fold = port % PORT_FOLDS;
            matched[fold / 64] |= 1 << (fold % 64);
        }
    }
    matched.map(|bits| !bits)
}

/// Whether some rule may match destination port `dport` ([`ports_without_rules`]).
#[inline(always)]
pub fn port_has_rules(ports_without_rules: &[u64; PORT_FOLDS / 64], dport: u16) -> bool {
    let fold = usize::from(dport) % PORT_FOLDS;
    ports_without_rules[fold / 64] >> (fold % 64) & 1 == 0
}

/// Reject answers per second per CPU by default, like the kernel's `icmp_msgs_per_sec`.
pub const DEFAULT_REJECT_PER_S: u32 = 1000;
/// Reject burst by default, like the kernel's `icmp_msgs_burst`.
pub const DEFAULT_REJECT_BURST: u32 = 50;

pub const LIST_ALLOW_V4: u32 = 1;
pub const LIST_ALLOW_V6: u32 = 2;
pub const LIST_BAN_V4: u32 = 4;
pub const LIST_BAN_V6: u32 = 8;

/// IP protocol numbers (IPv4 protocol, IPv6 next header) the program and userspace name.
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_DSTOPTS: u8 = 60;

/// A protocol's bit in [`Settings::rule_protos`]; [`PROTO_ANY`] has every bit.
#[inline(always)]
pub fn proto_bit(proto: u8) -> u32 {
    match proto {
        IPPROTO_TCP => 1,
        IPPROTO_UDP => 2,
        IPPROTO_ICMP => 4,
        IPPROTO_ICMPV6 => 8,
        PROTO_ANY => 0x1f,
        _ => 16,
    }
}

/// Whether an IPv6 next-header value is an extension header the parser walks: hop-by-hop
/// options, routing, fragment or destination options.
#[inline(always)]
pub fn is_ipv6_extension(next_header: u8) -> bool {
    matches!(
        next_header,
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_FRAGMENT | IPPROTO_DSTOPTS
    )
}

/// How far an IPv6 datagram's payload reaches, by its header's `payload_len` and
/// `next_header`: what the kernel trims the datagram to (`ip6_rcv_core`), so padding after it
/// never passes for a header. A length of 0 is a jumbogram's only with a hop-by-hop header
/// next (its option holds the length); then `unbounded` is returned (the frame bounds it).
///
/// Branch-free and opaque to LLVM (black_box), like [`link_local_bits`]: a branch here splits
/// the verifier's walk of the whole extension-header loop after it, past its limit.
#[inline(always)]
pub fn ipv6_payload_reach(payload_len: u16, next_header: u8, unbounded: usize) -> usize {
    // 1 when the value is 0, else 0: (0 - 1) is the only one with the top bit set.
    let is_zero = |value: u32| value.wrapping_sub(1) >> 31;
    let jumbo = is_zero(u32::from(payload_len)) & is_zero(u32::from(next_header ^ IPPROTO_HOPOPTS));
    let jumbo = core::hint::black_box(jumbo) as usize;
    usize::from(payload_len) + jumbo * unbounded
}

/// Whether a packet the parser cannot classify although the IP layer says more follows (a
/// first fragment cut short, or an IPv6 chain longer than it walks) is dropped as
/// [`crate::Reason::Evasive`]: when some rule covers its protocol. In IPv6, a `proto` that is
/// still an extension header leaves the transport protocol unknown, so any rule covers it; in
/// IPv4 the same numbers are transport protocols like any other.
#[inline(always)]
pub fn evasive_is_dropped(rule_protos: u32, family: u8, proto: u8) -> bool {
    let bits = if family == FAMILY_V6 && is_ipv6_extension(proto) {
        proto_bit(PROTO_ANY)
    } else {
        proto_bit(proto)
    };
    rule_protos & bits != 0
}

/// A source aggregated to a prefix; IPv4 addresses use the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub addr: [u8; 16],
    pub family: u8,
    pub prefix_len: u8,
}

impl SourceKey {
    /// The IPv4 blacklist's key for this source; `None` for an IPv6 one.
    pub fn v4(&self) -> Option<SourceKeyV4> {
        (self.family == FAMILY_V4)
            .then(|| SourceKeyV4::of_masked(addr_words(&self.addr), self.prefix_len))
    }
}

/// An IPv4 source aggregated to a prefix: the key of the IPv4 dynamic blacklist. Its 8 bytes
/// hold the address, the prefix length and three zero bytes, in that order; the kernel hashes
/// them as two words, where [`SourceKey`]'s 18 take a byte-wise hash and compare (issue 11:
/// the blacklist hit). One word, so the program writes it in one store: a struct of bytes
/// became byte stores and a call to `memset`.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKeyV4(u64);

impl SourceKeyV4 {
    /// The key of an IPv4 address already masked to `prefix_len`, as [`mask_words`] returns
    /// it (the address in the first word's first four bytes).
    #[inline(always)]
    pub fn of_masked([high, _]: [u64; 2], prefix_len: u8) -> Self {
        let address = u64::from_ne_bytes([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        Self((high & address) | u64::from_ne_bytes([0, 0, 0, 0, prefix_len, 0, 0, 0]))
    }

    pub fn addr(self) -> [u8; 4] {
        let [a, b, c, d, ..] = self.0.to_ne_bytes();
        [a, b, c, d]
    }

    pub fn prefix_len(self) -> u8 {
        self.0.to_ne_bytes()[4]
    }

    /// The key as the one word the kernel hashes.
    #[inline(always)]
    pub fn word(self) -> u64 {
        self.0
    }
}

impl From<SourceKeyV4> for SourceKey {
    fn from(key: SourceKeyV4) -> Self {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&key.addr());
        SourceKey {
            addr,
            family: FAMILY_V4,
            prefix_len: key.prefix_len(),
        }
    }
}

/// The history of one source under one rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HistoryKey {
    pub source: SourceKey,
    pub slot: u16,
    pub generation: u32,
}

/// The history of one source under one rule, with a ring of `RING` times: a rule whose
/// hitcount fits [`SHORT_RING`] keeps its sources in the short class ([`ShortHistory`], 32 B),
/// every other rule in the long one ([`History`] with [`HISTORY_RING`] times), each class in
/// its own map, so the common rules do not pay for the longest ring.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct History<const RING: usize = HISTORY_RING> {
    /// The full time of the newest recorded event (for burst rules: of the newest event);
    /// 0 for a fresh history.
    pub last_ms: u64,
    /// Burst rules: the length of the current bunch.
    pub bunch_len: u32,
    /// Entries written to `ring` since the history was (last) fresh, kept below `2 * RING`
    /// once the ring is full (a multiple of `RING` less), which changes neither the newest
    /// entry's index, `(recorded - 1) % RING`, nor whether `count <= RING` times are held.
    pub recorded: u8,
    /// TTL / hop limit of the last recorded event, for `ttl_match`.
    pub ttl: u8,
    pub _reserved: u16,
    /// Rate rules: event times. Burst rules: times bunches reached `min_bunch`.
    pub ring: [u32; RING],
}

/// Times kept per source by rules in the short history class: hitcounts up to this.
pub const SHORT_RING: usize = 4;

/// A history of the short class.
pub type ShortHistory = History<SHORT_RING>;

/// Whether a rule's sources keep a [`ShortHistory`]: its hitcount (bunch count for burst
/// rules) is all the ring must hold.
#[inline(always)]
pub fn uses_short_history(rule: &Rule) -> bool {
    rule.hitcount as usize <= SHORT_RING
}

/// A dynamically blacklisted source.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlacklistEntry {
    pub expires_at_ms: u64,
    /// How far each packet pushes the expiry when the rule refreshes; 0 = no refresh.
    pub refresh_ms: u32,
    /// Events the rule had seen from the source when it blacklisted it.
    pub hits: u32,
    pub slot: u16,
    /// A [`RuleAction`].
    pub action: u16,
    pub generation: u32,
    /// The [`Settings::lists_generation`] read before the allowlist and ban checks this
    /// source last passed (its creation, or a hit found by them); 0 = never checked (an entry
    /// userspace wrote). While it equals the current generation no allow or ban entry has
    /// been added since, so a hit on a host entry may skip those checks.
    pub lists_stamp: u32,
    pub _reserved: u32,
}

/// What the program tells userspace through the event ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub source: SourceKey,
    pub slot: u16,
    pub generation: u32,
    pub hits: u32,
    pub blacklist_ms: u32,
}

// The layouts are shared byte for byte with the kernel: no implicit padding anywhere.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<Rule>() == 40);
    assert!(size_of::<RuleStats>() == 32);
    assert!(size_of::<Settings>() == 72);
    assert!(size_of::<SourceKey>() == 18);
    assert!(size_of::<HistoryKey>() == 24);
    assert!(size_of::<History>() == 4 * HISTORY_RING + 16);
    assert!(size_of::<ShortHistory>() == 32);
    // `recorded` stays below 2 * RING.
    assert!(2 * HISTORY_RING <= u8::MAX as usize);
    assert!(size_of::<BlacklistEntry>() == 32);
    assert!(size_of::<Event>() == 32);
};

impl<const RING: usize> History<RING> {
    /// A fresh history, for a source's first event with TTL / hop limit `ttl`.
    pub const fn new(ttl: u8) -> Self {
        Self {
            last_ms: 0,
            bunch_len: 0,
            recorded: 0,
            ttl,
            _reserved: 0,
            ring: [0; RING],
        }
    }

    /// Makes this history [`History::new`]`(ttl)` in place without rewriting the ring, which
    /// is read only up to `recorded`: the XDP program starts new sources this way in per-CPU
    /// scratch memory, where zeroing the ring would cost a byte loop per new source.
    #[inline(always)]
    pub fn restart(&mut self, ttl: u8) {
        self.last_ms = 0;
        self.bunch_len = 0;
        self.recorded = 0;
        self.ttl = ttl;
    }

    /// Whether the newest event is older than any window, so nothing here can count again:
    /// the caller replaces a stale history with a fresh one before [`on_event`], and so the
    /// u32 ring times of a source idle for 49.7 days never alias into a window.
    #[inline(always)]
    pub fn is_stale(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.last_ms) > u64::from(MAX_RULE_MS)
    }

    #[inline(always)]
    fn record(&mut self, now_ms: u64) {
        self.ring[self.recorded as usize % RING] = now_ms as u32;
        let recorded = self.recorded as usize + 1;
        self.recorded = if recorded >= 2 * RING {
            recorded - RING
        } else {
            recorded
        } as u8;
        self.last_ms = now_ms;
    }

    /// Times held: those recorded since the history was fresh, at most the ring's.
    #[inline(always)]
    pub fn kept(&self) -> u32 {
        (self.recorded as usize).min(RING) as u32
    }

    /// The `back`-th newest time held (1 = the newest), `back` from 1 to [`History::kept`].
    #[inline(always)]
    pub fn newest(&self, back: u32) -> u32 {
        self.ring[(self.recorded as usize + RING - back as usize) % RING]
    }

    /// Whether at least `count` recorded times lie within `window_ms` of `now_ms` (inclusive,
    /// like `recent`). Times are recorded in order, so that is the `count`-th newest one: O(1).
    #[inline(always)]
    pub fn has_within(&self, count: u32, window_ms: u32, now_ms: u64) -> bool {
        if count == 0 || count > self.kept() {
            return false;
        }
        (now_ms as u32).wrapping_sub(self.newest(count)) <= window_ms
    }

    /// Events recorded within the window, counted for event reports (bounded by the ring).
    pub fn hits_within(&self, window_ms: u32, now_ms: u64) -> u32 {
        let mut hits = 0;
        while hits < self.kept() && self.has_within(hits + 1, window_ms, now_ms) {
            hits += 1;
        }
        hits
    }
}

/// The result of one event under one rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Recorded; the source stays below the threshold (or, under `ttl_match`, its TTL
    /// differed from the last recorded one, so the threshold was not checked).
    Counted,
    /// The source crossed the threshold: blacklist it and drop or reject this packet.
    Blacklist { hits: u32 },
}

/// One event of a source under a rule, at `now_ms`, with the packet's TTL / hop limit.
/// `history` is the source's history under the rule, updated in place: fresh from
/// [`History::new`] for a new source or one whose history [`History::is_stale`].
/// (The XDP program checks staleness at lookup, where a fresh history is made anyway, which
/// keeps this function's paths few for the verifier.)
#[inline(always)]
pub fn on_event<const RING: usize>(
    rule: &Rule,
    history: &mut History<RING>,
    now_ms: u64,
    ttl: u8,
) -> Outcome {
    // `--rttl`: the lookup fails on another TTL than the last recorded one, but `--set`
    // still records the packet and its TTL. An unchecked event meets no threshold: written
    // as thresholds rather than a flag tested on every path, which the verifier prefers.
    let checked = rule.ttl_match == 0 || history.ttl == ttl;
    let (hitcount, bunch_size) = if checked {
        (rule.hitcount, rule.bunch_size)
    } else {
        (0, u32::MAX)
    };
    history.ttl = ttl;
    if rule.kind == RuleKind::Burst as u8 {
        return on_burst_event(rule, history, now_ms, hitcount, bunch_size);
    }
    // `--rcheck --hitcount N` comes before `--set`: a source that already has N hits in the
    // window is blacklisted by this event, which is not recorded.
    if history.has_within(hitcount, rule.window_ms, now_ms) {
        return Outcome::Blacklist {
            hits: rule.hitcount + 1,
        };
    }
    history.record(now_ms);
    Outcome::Counted
}

/// A burst rule's event; every event extends or starts a bunch ([`bunch_step`]). `hitcount` and `bunch_size`
/// are the rule's, or out of reach for an unchecked event.
#[inline(always)]
fn on_burst_event<const RING: usize>(
    rule: &Rule,
    history: &mut History<RING>,
    now_ms: u64,
    hitcount: u32,
    bunch_size: u32,
) -> Outcome {
    let limits = BunchLimits {
        gap_ms: rule.gap_ms,
        min_bunch: rule.min_bunch,
        bunch_size,
    };
    let step = bunch_step(&limits, history.bunch_len, history.last_ms, now_ms);
    history.bunch_len = step.len;
    if step.counts {
        history.record(now_ms);
    }
    history.last_ms = now_ms;
    if step.full {
        return Outcome::Blacklist { hits: step.len };
    }
    if step.counts && history.has_within(hitcount, rule.window_ms, now_ms) {
        return Outcome::Blacklist {
            hits: rule.hitcount,
        };
    }
    Outcome::Counted
}

/// Whether a rule's protocol and port match a packet (`dport` 0 for port-less protocols);
/// `opens_connection` is [`tcp_opens_connection`] of a TCP packet's flags.
#[inline(always)]
pub fn rule_matches(rule: &Rule, proto: u8, dport: u16, opens_connection: bool) -> bool {
    if rule.kind == RuleKind::Empty as u8 {
        return false;
    }
    if rule.proto != PROTO_ANY && rule.proto != proto {
        return false;
    }
    if dport < rule.dport_min || dport > rule.dport_max {
        return false;
    }
    // "new" counts TCP connection openings only; other protocols have no such notion.
    !(rule.new_only != 0 && proto == IPPROTO_TCP && !opens_connection)
}

impl BlacklistEntry {
    /// The entry the rule in `slot` puts a source on at `now_ms`, after `hits` events, once
    /// the allowlist and ban checks of `lists_stamp` passed for it.
    #[inline(always)]
    pub fn for_rule(rule: &Rule, slot: u16, hits: u32, now_ms: u64, lists_stamp: u32) -> Self {
        Self {
            expires_at_ms: now_ms + u64::from(rule.blacklist_ms),
            refresh_ms: if rule.refresh != 0 {
                rule.blacklist_ms
            } else {
                0
            },
            hits,
            slot,
            action: u16::from(rule.action),
            generation: rule.generation,
            lists_stamp,
            _reserved: 0,
        }
    }
}

/// Lines of the blacklist filter ([`blacklist_filter_slot`]): 2,048 lines of 64 one-byte
/// slots, 131,072 slots in 128 KiB. A slot is a byte, not a bit, so that setting it is a plain
/// store that no concurrent setter of a neighbour can undo.
pub const BLACKLIST_FILTER_LINES: u32 = 2048;
/// Slots per line of the blacklist filter.
pub const BLACKLIST_FILTER_LINE: usize = 64;

/// Where the blacklist key of `masked` (a source masked to `prefix_len`, [`mask_words`]) has
/// its byte in the blacklist filter: (line, byte). The program sets the byte before it
/// inserts the key and nothing clears it, so a clear byte proves the key is not in the
/// blacklist and its lookup can be skipped (a cold lookup is the dearest part of a packet from
/// a source not seen for a while); a set byte says only that it may be.
#[inline(always)]
pub fn blacklist_filter_slot(masked: [u64; 2], prefix_len: u8) -> (u32, usize) {
    // Fibonacci hashing of both words and the length folded: the top 17 bits of the product.
    let folded = masked[0] ^ masked[1].rotate_left(32) ^ (u64::from(prefix_len) << 40);
    let slot = (folded.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 47) as u32;
    (
        slot / BLACKLIST_FILTER_LINE as u32,
        slot as usize % BLACKLIST_FILTER_LINE,
    )
}

/// The lists generation after `generation`; never 0, which means "never checked".
pub const fn next_lists_generation(generation: u32) -> u32 {
    match generation.wrapping_add(1) {
        0 => 1,
        next => next,
    }
}

impl core::ops::Add for RuleStats {
    type Output = Self;

    /// Per-CPU counters summed field by field.
    fn add(self, other: Self) -> Self {
        Self {
            events: self.events + other.events,
            blacklisted: self.blacklisted + other.blacklisted,
            dropped: self.dropped + other.dropped,
            rejected: self.rejected + other.rejected,
        }
    }
}

/// Whether a blacklisted source is still blocked at `now_ms`; refreshes the expiry in place
/// when the rule says so (`--update`).
#[inline(always)]
pub fn blacklist_hit(entry: &mut BlacklistEntry, now_ms: u64) -> bool {
    if now_ms > entry.expires_at_ms {
        return false;
    }
    if entry.refresh_ms != 0 {
        entry.expires_at_ms = now_ms + u64::from(entry.refresh_ms);
    }
    true
}

/// The top `bits` bits of a 64-bit word set.
#[inline(always)]
fn prefix_mask64(bits: u32) -> u64 {
    if bits == 0 {
        0
    } else if bits >= 64 {
        u64::MAX
    } else {
        u64::MAX << (64 - bits)
    }
}

/// `addr` with the bits past `prefix_len` cleared. IPv4 addresses sit in the first 4 bytes
/// with the rest zero, so the same arithmetic serves both families.
#[inline(always)]
pub fn mask_addr(addr: [u8; 16], prefix_len: u8) -> [u8; 16] {
    addr_bytes(mask_words(addr_words(&addr), prefix_len))
}

/// [`mask_addr`] on the address as two words holding its bytes in memory order, the form the
/// XDP program keeps it in: two loads, two ANDs and two stores, where bytes would take a
/// byte-by-byte shuffle. Branch-light on purpose: a byte loop here multiplies the verifier's
/// work.
#[inline(always)]
pub fn mask_words([high, low]: [u64; 2], prefix_len: u8) -> [u64; 2] {
    let bits = u32::from(prefix_len);
    // A big-endian mask read back in memory order keeps the leading bytes whatever the host.
    [
        high & prefix_mask64(bits).to_be(),
        low & prefix_mask64(bits.saturating_sub(64)).to_be(),
    ]
}

/// All ones when the IPv6 address whose first word in memory order ([`addr_words`]) is `high`
/// is link-local (fe80::/10), else 0. A link-local source is keyed as one host whatever a
/// rule's mask ([`key_len`]): every host on a link shares fe80::/64, so a /64 key there is all
/// the neighbours', the router's neighbour discovery included, and one neighbour's SYNs would
/// cut the host off IPv6.
///
/// Branch-free, and opaque to LLVM (black_box): knowing the result is 0 or all ones, LLVM would
/// turn [`key_len`] into a compare and branch, which in the XDP program splits the verifier's
/// walk of everything after it.
#[inline(always)]
pub fn link_local_bits(high: u64) -> u8 {
    let first_ten_bits = u64::from_be(high) >> 54;
    // 1 when the first ten bits are fe80::/10's, else 0: (0 - 1) is the only difference with
    // the top bit set.
    let link_local = ((first_ten_bits ^ (0xfe80 >> 6)).wrapping_sub(1) >> 63) as u8;
    core::hint::black_box(link_local.wrapping_neg())
}

/// `mask`, or a host's 128 when `link_local_bits` ([`link_local_bits`]) are set.
#[inline(always)]
pub fn key_len(mask: u8, link_local_bits: u8) -> u8 {
    (mask & !link_local_bits) | (128 & link_local_bits)
}

/// An address's 16 bytes as two words in memory order (see [`mask_words`]), read byte by
/// byte: the XDP program reads it from the frame, where a 16-byte copy (not aligned)
/// becomes a call to a byte-loop memmove.
#[inline(always)]
pub fn addr_words(a: &[u8; 16]) -> [u64; 2] {
    [
        u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
        u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
    ]
}

/// The inverse of [`addr_words`].
#[inline(always)]
pub fn addr_bytes([high, low]: [u64; 2]) -> [u8; 16] {
    let [a, b, c, d, e, f, g, h] = high.to_ne_bytes();
    let [i, j, k, l, m, n, o, p] = low.to_ne_bytes();
    [a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_payload_reaches_its_length_unless_it_is_a_jumbogram() {
        const UNBOUNDED: usize = 1 << 14;
        for next_header in [IPPROTO_TCP, IPPROTO_ROUTING, IPPROTO_FRAGMENT, 255] {
            for payload_len in [0, 1, 20, 1500, u16::MAX] {
                assert_eq!(
                    ipv6_payload_reach(payload_len, next_header, UNBOUNDED),
                    usize::from(payload_len),
                    "{payload_len} then {next_header}"
                );
            }
        }
        assert_eq!(ipv6_payload_reach(0, IPPROTO_HOPOPTS, UNBOUNDED), UNBOUNDED);
        assert_eq!(ipv6_payload_reach(20, IPPROTO_HOPOPTS, UNBOUNDED), 20);
    }

    #[test]
    fn a_link_local_source_is_keyed_as_one_host() {
        let key_len_of = |first: [u8; 2], mask| {
            let mut addr = [0u8; 16];
            addr[..2].copy_from_slice(&first);
            addr[15] = 1;
            key_len(mask, link_local_bits(addr_words(&addr)[0]))
        };
        for link_local in [[0xfe, 0x80], [0xfe, 0x9a], [0xfe, 0xbf]] {
            for mask in [1, 48, 64, 127, 128] {
                assert_eq!(key_len_of(link_local, mask), 128, "{link_local:x?} /{mask}");
            }
        }
        for other in [
            [0xfe, 0xc0],
            [0xfe, 0x7f],
            [0x20, 0x01],
            [0xff, 0x02],
            [0x80, 0xfe],
        ] {
            for mask in [1, 48, 64, 127, 128] {
                assert_eq!(key_len_of(other, mask), mask, "{other:x?} /{mask}");
            }
        }
    }

    #[test]
    fn an_ipv4_blacklist_key_stands_for_the_same_source_as_the_general_key() {
        let source = SourceKey {
            addr: mask_addr([192, 0, 2, 77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 24),
            family: FAMILY_V4,
            prefix_len: 24,
        };
        let v4 = SourceKeyV4::of_masked(addr_words(&source.addr), 24);
        assert_eq!(v4.addr(), [192, 0, 2, 0]);
        assert_eq!(v4.prefix_len(), 24);
        assert_eq!(v4.0.to_ne_bytes(), [192, 0, 2, 0, 24, 0, 0, 0]);
        assert_eq!(source.v4(), Some(v4));
        assert_eq!(SourceKey::from(v4), source);
        assert_eq!(core::mem::size_of::<SourceKeyV4>(), 8);
    }

    #[test]
    fn an_ipv6_source_has_no_ipv4_blacklist_key() {
        let source = SourceKey {
            addr: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            family: FAMILY_V6,
            prefix_len: 128,
        };
        assert_eq!(source.v4(), None);
    }

    fn ssh_rule() -> Rule {
        Rule {
            generation: 1,
            kind: RuleKind::Rate as u8,
            proto: 6,
            new_only: 1,
            refresh: 1,
            mask_v4: 32,
            mask_v6: 64,
            dport_min: 22,
            dport_max: 22,
            hitcount: 3,
            window_ms: 30_000,
            blacklist_ms: 120_000,
            ..Rule::default()
        }
    }

    fn burst_rule() -> Rule {
        Rule {
            kind: RuleKind::Burst as u8,
            gap_ms: 2_000,
            bunch_size: 10,
            min_bunch: 4,
            hitcount: 10,
            window_ms: 86_400_000,
            ..ssh_rule()
        }
    }

    /// An event as the XDP program runs it: a stale history is replaced by a fresh one.
    fn event(rule: &Rule, history: &mut History, now_ms: u64, ttl: u8) -> Outcome {
        if history.is_stale(now_ms) {
            *history = History::new(ttl);
        }
        on_event(rule, history, now_ms, ttl)
    }

    #[test]
    fn the_seed_gives_exactly_three_tries() {
        let rule = ssh_rule();
        let mut history: History = History::new(64);
        for t in [0, 1_000, 2_000] {
            assert_eq!(on_event(&rule, &mut history, t, 64), Outcome::Counted);
        }
        assert_eq!(
            on_event(&rule, &mut history, 3_000, 64),
            Outcome::Blacklist { hits: 4 }
        );
    }

    #[test]
    fn hits_outside_the_window_do_not_count() {
        let rule = ssh_rule();
        let mut history: History = History::new(64);
        for t in [0, 10_000, 20_000, 30_001, 40_002, 50_003] {
            assert_eq!(
                on_event(&rule, &mut history, t, 64),
                Outcome::Counted,
                "{t}"
            );
        }
        // At 60_000 the last three are 30_001, 40_002, 50_003: all within 30 s.
        assert!(matches!(
            on_event(&rule, &mut history, 60_000, 64),
            Outcome::Blacklist { .. }
        ));
    }

    #[test]
    fn the_window_edge_is_inclusive_like_recent() {
        let rule = ssh_rule();
        let mut history: History = History::new(64);
        for t in [0, 1, 2] {
            on_event(&rule, &mut history, t, 64);
        }
        assert!(matches!(
            on_event(&rule, &mut history, 30_000, 64),
            Outcome::Blacklist { .. }
        ));
        let mut history: History = History::new(64);
        for t in [0, 1, 2] {
            on_event(&rule, &mut history, t, 64);
        }
        assert_eq!(on_event(&rule, &mut history, 30_001, 64), Outcome::Counted);
    }

    #[test]
    fn window_checks_survive_clock_wrap() {
        let rule = ssh_rule();
        let mut history: History = History::new(64);
        let start = u64::from(u32::MAX) - 1_000;
        for i in 0..3 {
            on_event(&rule, &mut history, start + i * 1_000, 64);
        }
        assert!(matches!(
            on_event(&rule, &mut history, start + 3_000, 64),
            Outcome::Blacklist { .. }
        ));
    }

    #[test]
    fn hitcount_up_to_the_ring_size_is_exact() {
        let rule = Rule {
            hitcount: HISTORY_RING as u32,
            ..ssh_rule()
        };
        let mut history: History = History::new(64);
        for i in 0..HISTORY_RING as u64 {
            assert_eq!(on_event(&rule, &mut history, i, 64), Outcome::Counted);
        }
        assert!(matches!(
            on_event(&rule, &mut history, 100, 64),
            Outcome::Blacklist { .. }
        ));
        assert_eq!(history.hits_within(30_000, 100), HISTORY_RING as u32);
    }

    /// Event times for the class tests: bursts, pauses, a gap past the longest window.
    fn event_times() -> impl Iterator<Item = u64> {
        let mut t = 0u64;
        (0u64..2_000).map(move |i| {
            t += match i % 11 {
                0 => 31_000,
                5 => u64::from(MAX_RULE_MS) + 1,
                _ => (i * 7_919) % 12_000,
            };
            t
        })
    }

    #[test]
    fn a_short_history_decides_like_the_long_one_for_rules_that_fit_it() {
        for rule in (1..=SHORT_RING as u32).flat_map(|hitcount| {
            [
                Rule {
                    hitcount,
                    ..ssh_rule()
                },
                Rule {
                    hitcount,
                    ..burst_rule()
                },
                Rule {
                    hitcount,
                    ttl_match: 1,
                    ..ssh_rule()
                },
            ]
        }) {
            let rule = &rule;
            assert!(uses_short_history(rule));
            let mut long: History = History::new(64);
            let mut short = ShortHistory::new(64);
            for (n, t) in event_times().enumerate() {
                let ttl = 60 + (n % 3) as u8;
                if long.is_stale(t) {
                    long = History::new(ttl);
                }
                if short.is_stale(t) {
                    short = ShortHistory::new(ttl);
                }
                assert_eq!(
                    on_event(rule, &mut short, t, ttl),
                    on_event(rule, &mut long, t, ttl),
                    "{rule:?} at {t}"
                );
                assert_eq!(short.kept(), long.kept().min(SHORT_RING as u32));
                for back in 1..=short.kept() {
                    assert_eq!(short.newest(back), long.newest(back));
                }
                assert!(usize::from(short.recorded) < 2 * SHORT_RING);
            }
        }
        assert!(!uses_short_history(&Rule {
            hitcount: SHORT_RING as u32 + 1,
            ..ssh_rule()
        }));
    }

    #[test]
    fn a_restarted_history_decides_like_a_new_one() {
        let rule = ssh_rule();
        let mut used = ShortHistory::new(50);
        for t in [0, 1, 2, 3, 4, 5] {
            on_event(&rule, &mut used, t, 50);
        }
        used.restart(64);
        let mut new = ShortHistory::new(64);
        for t in [100_000, 100_001, 100_002, 100_003] {
            assert_eq!(
                on_event(&rule, &mut used, t, 64),
                on_event(&rule, &mut new, t, 64)
            );
            assert_eq!(used.kept(), new.kept());
            assert_eq!(
                (used.recorded, used.ttl, used.last_ms),
                (new.recorded, new.ttl, new.last_ms)
            );
        }
    }

    #[test]
    fn a_full_ring_keeps_its_newest_times_in_order() {
        let mut history = ShortHistory::new(64);
        for t in 1..=50u64 {
            history.record(t);
            assert_eq!(history.kept(), t.min(SHORT_RING as u64) as u32);
            assert_eq!(history.newest(1), t as u32);
            assert_eq!(
                history.newest(history.kept()),
                (t + 1).saturating_sub(history.kept().into()) as u32
            );
        }
    }

    #[test]
    fn ttl_match_compares_with_the_last_recorded_ttl_and_records_mismatches() {
        let rule = Rule {
            ttl_match: 1,
            ..ssh_rule()
        };
        // A spoofed first packet with another TTL does not disable counting: it is recorded,
        // and the next packet's TTL becomes the one compared with (like xt_recent --rttl).
        let mut history: History = History::new(50);
        assert_eq!(on_event(&rule, &mut history, 0, 50), Outcome::Counted);
        assert_eq!(on_event(&rule, &mut history, 1, 64), Outcome::Counted);
        assert_eq!(history.ttl, 64);
        assert_eq!(on_event(&rule, &mut history, 2, 64), Outcome::Counted);
        assert_eq!(history.recorded, 3, "the mismatching packet was recorded");
        assert_eq!(
            on_event(&rule, &mut history, 3, 64),
            Outcome::Blacklist { hits: 4 }
        );
        // A mismatching packet is never checked against the threshold...
        let mut history: History = History::new(64);
        for t in 0..3 {
            on_event(&rule, &mut history, t, 64);
        }
        assert_eq!(on_event(&rule, &mut history, 3, 63), Outcome::Counted);
        // ...but the next one with the same TTL is, and the window holds 4 events by now.
        assert!(matches!(
            on_event(&rule, &mut history, 4, 63),
            Outcome::Blacklist { .. }
        ));
        // A route change (a new TTL for good) keeps the count going.
        let mut history: History = History::new(64);
        on_event(&rule, &mut history, 0, 64);
        on_event(&rule, &mut history, 1, 64);
        assert_eq!(on_event(&rule, &mut history, 2, 60), Outcome::Counted);
        assert!(matches!(
            on_event(&rule, &mut history, 3, 60),
            Outcome::Blacklist { .. }
        ));
    }

    #[test]
    fn without_ttl_match_the_ttl_does_not_matter() {
        let rule = ssh_rule();
        let mut history: History = History::new(64);
        for (t, ttl) in [(0, 64), (1, 30), (2, 200)] {
            assert_eq!(on_event(&rule, &mut history, t, ttl), Outcome::Counted);
        }
        assert!(matches!(
            on_event(&rule, &mut history, 3, 1),
            Outcome::Blacklist { .. }
        ));
    }

    #[test]
    fn a_history_idle_longer_than_any_window_is_cleared_so_times_never_alias() {
        let rule = Rule {
            window_ms: MAX_RULE_MS,
            ..ssh_rule()
        };
        let mut history: History = History::new(64);
        let start = 5_000_u64;
        for t in 0..3 {
            event(&rule, &mut history, start + t, 64);
        }
        // 2^32 ms later the u32 ring times are 1..3 ms old again.
        let later = start + (1 << 32) + 3;
        assert_eq!(event(&rule, &mut history, later, 64), Outcome::Counted);
        assert_eq!(history.recorded, 1, "the old events are gone");
        assert_eq!(history.last_ms, later);
        // Right at the limit nothing is cleared.
        let mut history: History = History::new(64);
        for t in 0..3 {
            event(&rule, &mut history, t, 64);
        }
        assert_eq!(
            event(&rule, &mut history, 2 + u64::from(MAX_RULE_MS), 64),
            Outcome::Counted
        );
        assert_eq!(history.recorded, 4);
    }

    #[test]
    fn a_cleared_history_takes_the_new_ttl() {
        let rule = Rule {
            ttl_match: 1,
            ..ssh_rule()
        };
        let mut history: History = History::new(64);
        event(&rule, &mut history, 1_000, 64);
        let later = 1_000 + u64::from(MAX_RULE_MS) + 1;
        for t in 0..3 {
            assert_eq!(event(&rule, &mut history, later + t, 40), Outcome::Counted);
        }
        assert_eq!(history.ttl, 40);
        assert!(matches!(
            event(&rule, &mut history, later + 3, 40),
            Outcome::Blacklist { .. }
        ));
    }

    #[test]
    fn a_bunch_of_ten_blacklists_nine_do_not() {
        let rule = burst_rule();
        let mut history: History = History::new(64);
        for i in 0..9 {
            assert_eq!(
                on_event(&rule, &mut history, i * 1_500, 64),
                Outcome::Counted
            );
        }
        // The 10th within the gap of the 9th.
        assert_eq!(
            on_event(&rule, &mut history, 9 * 1_500, 64),
            Outcome::Blacklist { hits: 10 }
        );
        // Slow events never form a bunch.
        let mut history: History = History::new(64);
        for i in 0..100 {
            assert_eq!(
                on_event(&rule, &mut history, i * 2_001, 64),
                Outcome::Counted
            );
        }
    }

    #[test]
    fn many_small_bunches_within_the_window_blacklist() {
        let rule = burst_rule();
        let mut history: History = History::new(64);
        let mut t = 0;
        for bunch in 0..10 {
            for event in 0..4 {
                let outcome = on_event(&rule, &mut history, t, 64);
                if bunch == 9 && event == 3 {
                    assert_eq!(outcome, Outcome::Blacklist { hits: 10 });
                } else {
                    assert_eq!(outcome, Outcome::Counted, "bunch {bunch} event {event}");
                }
                t += 1_000;
            }
            t += 60_000;
        }
        // Bunches of three never count.
        let mut history: History = History::new(64);
        let mut t = 0;
        for _ in 0..50 {
            for _ in 0..3 {
                assert_eq!(on_event(&rule, &mut history, t, 64), Outcome::Counted);
                t += 1_000;
            }
            t += 60_000;
        }
    }

    #[test]
    fn burst_rules_continue_a_bunch_at_exactly_the_gap_and_count_only_within_the_window() {
        let rule = burst_rule();
        let mut history: History = History::new(64);
        for i in 0..9 {
            assert_eq!(
                on_event(&rule, &mut history, i * 2_000, 64),
                Outcome::Counted
            );
        }
        assert_eq!(
            on_event(&rule, &mut history, 9 * 2_000, 64),
            Outcome::Blacklist { hits: 10 }
        );
        // Ten bunches of 4, but the first reached its 4th event (at 3 s) a millisecond before
        // the window of the tenth's 4th: nine count.
        let mut history: History = History::new(64);
        let bunch_at = |bunch: u64| match bunch {
            0 => 0,
            _ => u64::from(rule.window_ms) + 1 - (9 - bunch) * 60_000,
        };
        for bunch in 0..10 {
            for event in 0..4 {
                let outcome = on_event(&rule, &mut history, bunch_at(bunch) + event * 1_000, 64);
                assert_eq!(outcome, Outcome::Counted, "bunch {bunch} event {event}");
            }
        }
        // An 11th brings nine within its window up to ten.
        let t = u64::from(rule.window_ms) + 60_000;
        for event in 0..3 {
            assert_eq!(
                on_event(&rule, &mut history, t + event, 64),
                Outcome::Counted
            );
        }
        assert_eq!(
            on_event(&rule, &mut history, t + 3, 64),
            Outcome::Blacklist { hits: 10 }
        );
    }

    #[test]
    fn a_burst_survives_a_clock_past_u32_milliseconds() {
        let rule = burst_rule();
        let mut history: History = History::new(64);
        let start = u64::from(u32::MAX) - 5_000;
        for i in 0..9 {
            assert_eq!(
                on_event(&rule, &mut history, start + i * 1_500, 64),
                Outcome::Counted
            );
        }
        assert_eq!(
            on_event(&rule, &mut history, start + 9 * 1_500, 64),
            Outcome::Blacklist { hits: 10 }
        );
    }

    #[test]
    fn only_a_bare_syn_opens_a_connection() {
        assert!(tcp_opens_connection(TCP_SYN));
        // PSH, URG and the ECN setup bits do not change what a SYN is.
        assert!(tcp_opens_connection(TCP_SYN | 0x08 | 0x20 | 0x40 | 0x80));
        for flags in [
            TCP_SYN | TCP_ACK,
            TCP_SYN | TCP_FIN,
            TCP_SYN | TCP_RST,
            TCP_ACK,
            TCP_FIN,
            0,
        ] {
            assert!(!tcp_opens_connection(flags), "{flags:#04x}");
        }
    }

    #[test]
    fn evasive_packets_drop_when_a_rule_covers_their_protocol() {
        let tcp_only = proto_bit(6);
        for family in [FAMILY_V4, FAMILY_V6] {
            assert!(evasive_is_dropped(tcp_only, family, 6));
            assert!(!evasive_is_dropped(tcp_only, family, 17));
            assert!(
                !evasive_is_dropped(0, family, 6),
                "no rules: nothing to evade"
            );
            assert!(evasive_is_dropped(proto_bit(PROTO_ANY), family, 17));
        }
        for extension in [0, 43, 44, 60] {
            assert!(
                evasive_is_dropped(tcp_only, FAMILY_V6, extension),
                "an unknown protocol may be TCP"
            );
            assert!(!evasive_is_dropped(0, FAMILY_V6, extension));
            assert!(
                !evasive_is_dropped(tcp_only, FAMILY_V4, extension),
                "IPv4 protocol {extension} is a transport protocol, not TCP"
            );
            assert!(evasive_is_dropped(
                proto_bit(PROTO_ANY),
                FAMILY_V4,
                extension
            ));
        }
    }

    #[test]
    fn rules_match_protocol_port_and_new_connections() {
        let rule = ssh_rule();
        assert!(rule_matches(&rule, 6, 22, true));
        assert!(!rule_matches(&rule, 6, 22, false), "not a new connection");
        assert!(!rule_matches(&rule, 6, 23, true));
        assert!(!rule_matches(&rule, 17, 22, true));
        let any = Rule {
            proto: PROTO_ANY,
            dport_min: 0,
            dport_max: u16::MAX,
            ..rule
        };
        assert!(
            rule_matches(&any, 1, 0, false),
            "ICMP counts when new_only is TCP-only"
        );
        assert!(!rule_matches(&Rule::default(), 6, 22, true), "empty slot");
    }

    #[test]
    fn protocol_bits_are_distinct_and_any_covers_all() {
        let bits = [
            proto_bit(6),
            proto_bit(17),
            proto_bit(1),
            proto_bit(58),
            proto_bit(47),
        ];
        for (i, a) in bits.iter().enumerate() {
            for b in &bits[i + 1..] {
                assert_eq!(a & b, 0);
            }
            assert_eq!(proto_bit(PROTO_ANY) & a, *a);
        }
    }

    #[test]
    fn blacklist_refresh_extends_only_when_asked() {
        let mut entry = BlacklistEntry {
            expires_at_ms: 120_000,
            refresh_ms: 120_000,
            ..BlacklistEntry::default()
        };
        assert!(blacklist_hit(&mut entry, 100_000));
        assert_eq!(entry.expires_at_ms, 220_000);
        assert!(blacklist_hit(&mut entry, 220_000), "the edge is inclusive");
        assert!(!blacklist_hit(&mut entry, 340_001));
        let mut fixed = BlacklistEntry {
            expires_at_ms: 120_000,
            ..BlacklistEntry::default()
        };
        assert!(blacklist_hit(&mut fixed, 100_000));
        assert_eq!(fixed.expires_at_ms, 120_000);
        assert!(!blacklist_hit(&mut fixed, 120_001));
    }

    #[test]
    fn the_lists_generation_never_comes_back_to_never_checked() {
        assert_eq!(next_lists_generation(0), 1);
        assert_eq!(next_lists_generation(41), 42);
        assert_eq!(next_lists_generation(u32::MAX), 1);
    }

    #[test]
    fn neighbouring_keys_get_their_own_filter_slots() {
        let mut slots = [(0u32, 0usize); 256];
        for (last, slot) in slots.iter_mut().enumerate() {
            let addr = [198, 51, 100, last as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            *slot = blacklist_filter_slot(addr_words(&addr), 32);
            assert!(slot.0 < BLACKLIST_FILTER_LINES && slot.1 < BLACKLIST_FILTER_LINE);
        }
        slots.sort_unstable();
        let distinct = 1 + slots.windows(2).filter(|pair| pair[0] != pair[1]).count();
        assert!(distinct > 250, "{distinct} distinct slots for a /24");
        // One address under the lengths a rule may key it by: a slot each.
        let addr = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 1];
        let mut by_length: [(u32, usize); 4] = [48u8, 56, 64, 128]
            .map(|len| blacklist_filter_slot(mask_words(addr_words(&addr), len), len));
        by_length.sort_unstable();
        assert!(
            by_length.windows(2).all(|pair| pair[0] != pair[1]),
            "{by_length:?}"
        );
    }

    #[test]
    fn masks_clear_host_bits() {
        let addr = [10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(mask_addr(addr, 24)[..4], [10, 1, 2, 0]);
        assert_eq!(mask_addr(addr, 20)[..4], [10, 1, 0, 0]);
        assert_eq!(mask_addr(addr, 32)[..4], [10, 1, 2, 3]);
        let v6 = [
            0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2, 0xaa, 0xbb, 0, 0, 0, 0, 0, 9,
        ];
        let masked = mask_addr(v6, 64);
        assert_eq!(masked[..8], v6[..8]);
        assert_eq!(masked[8..], [0; 8]);
        assert_eq!(mask_addr(v6, 4)[0], 0x20);
        assert_eq!(mask_addr(v6, 3)[0], 0x20);
        assert_eq!(mask_addr(v6, 2)[0], 0x00);
        // Every length against a bit-by-bit mask.
        for len in 0..=128 {
            let by_bit = (0..128).fold([0u8; 16], |mut masked, bit| {
                let (byte, shift) = (bit / 8, 7 - bit % 8);
                if bit < usize::from(len) {
                    masked[byte] |= v6[byte] & (1 << shift);
                }
                masked
            });
            assert_eq!(mask_addr(v6, len), by_bit, "/{len}");
        }
    }

    #[test]
    fn ports_no_rule_matches_skip_the_rules() {
        let ssh = ssh_rule();
        let filter = ports_without_rules(&[ssh, Rule::default()]);
        assert!(port_has_rules(&filter, 22));
        assert!(!port_has_rules(&filter, 23));
        assert!(!port_has_rules(&filter, 443));
        assert!(!port_has_rules(&filter, 0), "ICMP and later fragments");
        // Folded: 278 shares 22's bit and goes through the rules, which do not match it.
        assert!(port_has_rules(&filter, 278));
        let any_port = Rule {
            dport_min: 0,
            dport_max: u16::MAX,
            ..ssh
        };
        let filter = ports_without_rules(&[ssh, any_port]);
        assert!((0..=u16::MAX).all(|port| port_has_rules(&filter, port)));
        assert_eq!(ports_without_rules(&[]), [u64::MAX; PORT_FOLDS / 64]);
        let settings = Settings::default();
        assert!(
            port_has_rules(&settings.ports_without_rules, 443),
            "cleared settings skip nothing"
        );
    }

    #[test]
    fn a_port_some_rule_matches_is_never_skipped() {
        let ranges = [
            (22, 22),
            (80, 80),
            (250, 260),
            (1000, 1255),
            (1000, 1256),
            (60_000, 65_535),
        ];
        for (min, max) in ranges {
            let rule = Rule {
                dport_min: min,
                dport_max: max,
                ..ssh_rule()
            };
            let filter = ports_without_rules(&[rule]);
            for port in 0..=u16::MAX {
                if rule_matches(&rule, IPPROTO_TCP, port, true) {
                    assert!(port_has_rules(&filter, port), "{min}..={max}: {port}");
                }
            }
        }
    }
}

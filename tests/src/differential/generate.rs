//! Seeded random configurations, clock steps and frames for the differential test.

use blocker_common::{
    ports_without_rules, rule_protos, BanValue, Rule, RuleAction, RuleKind, Settings,
    BAN_PERMANENT, FAMILY_V4, FAMILY_V6, LIST_ALLOW_V4, LIST_ALLOW_V6, LIST_BAN_V4, LIST_BAN_V6,
    MAX_MASKS, MAX_RULES, MAX_RULE_MS, MAX_VLAN_TAGS, PROTO_ANY,
};

use crate::model::{Lpm, Prefix};

/// SplitMix64: small, fast and the same on every platform, so a seed replays a run exactly.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `low..=high`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    /// True with `percent` % probability.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.byte()).collect()
    }
}

/// The addresses, ports and masks one stretch of the run draws from, small enough that the
/// same sources keep hitting the same rules.
#[derive(Clone, Debug)]
pub struct Pool {
    pub v4: Vec<[u8; 16]>,
    pub v6: Vec<[u8; 16]>,
    pub ports: Vec<u16>,
    pub masks_v4: Vec<u8>,
    pub masks_v6: Vec<u8>,
}

fn v4(octets: [u8; 4]) -> [u8; 16] {
    let mut addr = [0; 16];
    addr[..4].copy_from_slice(&octets);
    addr
}

/// Sources that must never get an answer.
const NOT_UNICAST_V4: [[u8; 4]; 5] = [
    [0, 0, 0, 0],
    [127, 0, 0, 1],
    [224, 0, 0, 1],
    [240, 1, 2, 3],
    [255, 255, 255, 255],
];

impl Pool {
    pub fn new(rng: &mut Rng) -> Self {
        // Neighbours in a few /24s and /16s, so masks aggregate some of them and not others.
        let v4 = (0..8)
            .map(|_| {
                v4([
                    10,
                    rng.below(2) as u8,
                    rng.below(3) as u8,
                    rng.range(1, 6) as u8,
                ])
            })
            .collect();
        let v6 = (0..8)
            .map(|_| {
                let mut addr = [0u8; 16];
                // Some link-local: every host on a link shares fe80::/64.
                if rng.percent(25) {
                    addr[..2].copy_from_slice(&[0xfe, 0x80]);
                } else {
                    addr[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
                }
                addr[5] = rng.below(2) as u8;
                addr[7] = rng.below(3) as u8;
                addr[8] = rng.below(2) as u8 * 0x80;
                addr[15] = rng.range(1, 6) as u8;
                addr
            })
            .collect();
        let mut ports = vec![22, 53, 80];
        ports.push(rng.range(1, 65535) as u16);
        let masks_v4 = distinct(rng, &[32, 32, 24, 24, 16, 8, 31, 1], 3);
        let masks_v6 = distinct(rng, &[128, 64, 64, 48, 56, 127, 1, 65], 3);
        Self {
            v4,
            v6,
            ports,
            masks_v4,
            masks_v6,
        }
    }

    pub fn source(&self, rng: &mut Rng, family: u8) -> [u8; 16] {
        match (family == FAMILY_V4, rng.below(100)) {
            (true, 0..=77) => rng.pick(&self.v4),
            (true, 78..=82) => v4(rng.pick(&NOT_UNICAST_V4)),
            (true, _) => v4([rng.byte(), rng.byte(), rng.byte(), rng.byte()]),
            (false, 0..=77) => rng.pick(&self.v6),
            (false, 78..=79) => [0; 16],
            (false, 80..=81) => {
                let mut loopback = [0; 16];
                loopback[15] = 1;
                loopback
            }
            (false, 82..=83) => {
                let mut multicast = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
                multicast[15] = rng.byte();
                multicast
            }
            (false, _) => rng.bytes(16).try_into().expect("16 bytes"),
        }
    }
}

fn distinct(rng: &mut Rng, menu: &[u8], max: usize) -> Vec<u8> {
    let mut picked: Vec<u8> = Vec::new();
    for _ in 0..rng.range(1, max as u64) {
        let mask = rng.pick(menu);
        if !picked.contains(&mask) {
            picked.push(mask);
        }
    }
    picked
}

/// Everything the harness writes into the maps, except the clock.
#[derive(Clone, Debug)]
pub struct Config {
    pub settings: Settings,
    pub rules: [Rule; MAX_RULES],
    pub allow: Lpm<u8>,
    pub bans: Lpm<BanValue>,
}

/// The next configuration: `previous` changed a little, or a new one. A changed slot gets a
/// new generation, as userspace gives it; an unchanged one keeps its history.
pub fn config(rng: &mut Rng, pool: &Pool, previous: &Config, now_ms: u64) -> Config {
    let mut rules = previous.rules;
    let mut generation = rules.iter().map(|r| r.generation).max().unwrap_or(0);
    let used = rng.range(0, 6) as usize;
    for (slot, rule) in rules.iter_mut().enumerate() {
        if slot >= used + 2 {
            *rule = Rule::default();
        } else if rng.percent(40) {
            generation += 1;
            *rule = if rng.percent(15) {
                Rule::default()
            } else {
                random_rule(rng, pool, generation)
            };
        }
    }
    let rule_slots = rules
        .iter()
        .rposition(|r| r.kind != RuleKind::Empty as u8)
        .map_or(0, |last| last as u32 + 1);
    let in_use = || rules.iter().filter(|r| r.kind != RuleKind::Empty as u8);
    let masks = |of: fn(&Rule) -> u8| {
        let mut masks = [0u8; MAX_MASKS];
        let mut count = 0;
        for rule in in_use() {
            let mask = of(rule);
            if !masks[..count].contains(&mask) && count < MAX_MASKS {
                masks[count] = mask;
                count += 1;
            }
        }
        masks
    };
    let mut allow = Lpm::default();
    let mut bans = Lpm::default();
    for family in [FAMILY_V4, FAMILY_V6] {
        // Small allowlists, so most of the pool's sources stay in reach of the rules.
        for _ in 0..rng.below(3) {
            allow.entries.insert(random_prefix(rng, pool, family), 1);
        }
        for _ in 0..rng.below(5) {
            let now_s = now_ms / 1000;
            let expires_at_s = if rng.percent(40) {
                BAN_PERMANENT
            } else {
                (now_s + rng.range(1, 5000)).saturating_sub(100).max(1) as u32
            };
            bans.entries
                .insert(random_prefix(rng, pool, family), BanValue { expires_at_s });
        }
    }
    let lists = [
        (&allow, FAMILY_V4, LIST_ALLOW_V4),
        (&allow, FAMILY_V6, LIST_ALLOW_V6),
    ]
    .iter()
    .filter(|(lpm, family, _)| lpm.entries.keys().any(|p| p.family == *family))
    .fold(0, |bits, (_, _, bit)| bits | bit)
        | [(FAMILY_V4, LIST_BAN_V4), (FAMILY_V6, LIST_BAN_V6)]
            .iter()
            .filter(|(family, _)| bans.entries.keys().any(|p| p.family == *family))
            .fold(0, |bits, (_, bit)| bits | bit);
    let (reject_per_s, reject_burst) = match rng.below(4) {
        0 => (0, rng.range(0, 5) as u32),
        1 => (rng.range(1, 10) as u32, rng.range(1, 5) as u32),
        _ => (1000, 50),
    };
    Config {
        settings: Settings {
            rule_slots,
            lists,
            rule_protos: rule_protos(&rules),
            masks_v4: masks(|r| r.mask_v4),
            masks_v6: masks(|r| r.mask_v6),
            reject_per_s,
            reject_burst,
            ports_without_rules: ports_without_rules(&rules),
            ..Settings::default()
        },
        rules,
        allow,
        bans,
    }
}

fn random_prefix(rng: &mut Rng, pool: &Pool, family: u8) -> Prefix {
    let addr = pool.source(rng, family);
    let len = if family == FAMILY_V4 {
        let any = rng.range(1, 32) as u8;
        rng.pick(&[32, 32, 32, 24, 31, 30, 16, any])
    } else {
        let any = rng.range(1, 128) as u8;
        rng.pick(&[128, 128, 128, 64, 127, 126, 48, any])
    };
    Prefix::new(family, addr, len)
}

fn random_rule(rng: &mut Rng, pool: &Pool, generation: u32) -> Rule {
    let proto = rng.pick(&[6, 6, 6, 17, 17, 1, 58, PROTO_ANY, 47]);
    let (dport_min, dport_max) = match rng.below(10) {
        0..=3 => (0, u16::MAX),
        4..=7 => {
            let port = rng.pick(&pool.ports);
            (port, port)
        }
        _ => {
            let low = rng.pick(&pool.ports);
            (low, low.saturating_add(rng.range(0, 100) as u16))
        }
    };
    let windows = [1_000, 10_000, 60_000, 3_600_000, MAX_RULE_MS];
    let burst = rng.percent(30);
    let bunch_size = rng.range(2, 12) as u32;
    Rule {
        generation,
        kind: if burst {
            RuleKind::Burst as u8
        } else {
            RuleKind::Rate as u8
        },
        proto,
        action: if rng.percent(45) {
            RuleAction::Reject as u8
        } else {
            RuleAction::Drop as u8
        },
        new_only: u8::from(matches!(proto, 6 | PROTO_ANY) && rng.percent(60)),
        refresh: u8::from(rng.percent(50)),
        ttl_match: u8::from(rng.percent(30)),
        mask_v4: rng.pick(&pool.masks_v4),
        mask_v6: rng.pick(&pool.masks_v6),
        dport_min,
        dport_max,
        hitcount: if rng.percent(10) {
            rng.range(1, 64) as u32
        } else {
            rng.range(1, 6) as u32
        },
        window_ms: rng.pick(&windows),
        blacklist_ms: rng.pick(&[500, 5_000, 60_000, 3_600_000, MAX_RULE_MS]),
        gap_ms: if burst {
            rng.pick(&[100, 2_000, 10_000])
        } else {
            0
        },
        bunch_size: if burst { bunch_size } else { 0 },
        min_bunch: if burst {
            rng.range(1, u64::from(bunch_size)) as u32
        } else {
            0
        },
    }
}

/// How far the clock moves before the next frame: mostly not at all or a little, so events
/// fall inside windows; sometimes hours; rarely weeks, past the longest window (histories are
/// cleared on age) and past the 49.7 days of a `u32` millisecond clock.
pub fn clock_step(rng: &mut Rng) -> u64 {
    match rng.below(1000) {
        0..=399 => 0,
        400..=699 => rng.range(1, 1_000),
        700..=849 => rng.range(1_000, 60_000),
        850..=949 => rng.range(60_000, 3_600_000),
        950..=994 => rng.range(3_600_000, 48 * 3_600_000),
        _ => rng.range(20 * 86_400_000, 60 * 86_400_000),
    }
}

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// A random frame: mostly IP from the pool's sources to the pool's ports, with VLAN tags,
/// IPv4 options and fragments, IPv6 extension chains, TCP flag mixes and TTLs; then maybe
/// truncated, mutated or padded to the Ethernet minimum.
pub fn frame(rng: &mut Rng, pool: &Pool) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    if rng.percent(5) {
        frame[6] |= 1;
    }
    // Broadcast and multicast frames, which never get an answer.
    if rng.percent(3) {
        frame[0] |= 1;
    }
    let tags = match rng.below(100) {
        0..=69 => 0,
        70..=84 => 1,
        85..=93 => 2,
        94..=96 => 3,
        97..=98 => MAX_VLAN_TAGS,
        _ => MAX_VLAN_TAGS + 1,
    };
    for _ in 0..tags {
        frame.extend_from_slice(&rng.pick(&[0x8100u16, 0x88a8]).to_be_bytes());
        frame.extend_from_slice(&[0, rng.byte()]);
    }
    let family = if rng.percent(50) {
        FAMILY_V4
    } else {
        FAMILY_V6
    };
    let ether_type = match rng.below(100) {
        0..=3 => 0x0806,
        4..=5 => rng.next_u64() as u16,
        _ if family == FAMILY_V4 => ETH_P_IPV4,
        _ => ETH_P_IPV6,
    };
    frame.extend_from_slice(&ether_type.to_be_bytes());
    let proto = match rng.below(100) {
        0..=54 => 6,
        55..=74 => 17,
        75..=84 => {
            if family == FAMILY_V4 {
                1
            } else {
                58
            }
        }
        85..=89 => rng.pick(&[1, 58]),
        90..=94 => 47,
        _ => rng.byte(),
    };
    let l4 = transport(rng, pool, proto);
    let source = pool.source(rng, family);
    let any = rng.byte();
    let ttl = rng.pick(&[64, 64, 64, 63, 128, 255, 1, any]);
    let mut boundaries = vec![frame.len()];
    if family == FAMILY_V4 {
        ipv4(rng, &mut frame, source, ttl, proto, &l4, &mut boundaries);
    } else {
        ipv6(rng, &mut frame, source, ttl, proto, &l4, &mut boundaries);
    }
    if rng.percent(20) {
        frame.truncate(rng.range(14, frame.len() as u64) as usize);
    } else if rng.percent(10) {
        // Close to where a header starts or ends.
        let at = rng.pick(&boundaries) as u64 + rng.range(0, 4);
        frame.truncate((at.saturating_sub(2) as usize).clamp(14, frame.len()));
    }
    if rng.percent(5) {
        for _ in 0..rng.range(1, 3) {
            let at = rng.below(frame.len() as u64) as usize;
            frame[at] ^= 1 << rng.below(8);
        }
    }
    if rng.percent(30) {
        frame.resize(frame.len().max(60), 0);
    }
    frame
}

fn transport(rng: &mut Rng, pool: &Pool, proto: u8) -> Vec<u8> {
    let payload = if rng.percent(70) {
        0
    } else {
        rng.range(1, 40) as usize
    };
    let dport = if rng.percent(75) {
        rng.pick(&pool.ports)
    } else {
        rng.next_u64() as u16
    };
    let mut l4 = match proto {
        6 => {
            let mut tcp = rng.bytes(20);
            tcp[2..4].copy_from_slice(&dport.to_be_bytes());
            tcp[12] = if rng.percent(90) {
                5 << 4
            } else {
                rng.byte() & 0xf0
            };
            tcp[13] = rng.pick(&[
                0x02, 0x02, 0x02, 0x02, 0x10, 0x12, 0x03, 0x04, 0x06, 0x01, 0x11, 0x14, 0x18, 0xc2,
            ]);
            if rng.percent(5) {
                tcp[13] = rng.byte();
            }
            tcp
        }
        17 => {
            let mut udp = rng.bytes(8);
            udp[2..4].copy_from_slice(&dport.to_be_bytes());
            udp
        }
        1 | 58 => {
            let mut icmp = rng.bytes(8);
            let any = rng.byte();
            icmp[0] = rng.pick(&[8, 128, 3, 1, any]);
            icmp
        }
        _ => Vec::new(),
    };
    l4.extend(rng.bytes(payload));
    l4
}

fn ipv4(
    rng: &mut Rng,
    frame: &mut Vec<u8>,
    source: [u8; 16],
    ttl: u8,
    proto: u8,
    l4: &[u8],
    boundaries: &mut Vec<usize>,
) {
    let options = if rng.percent(80) {
        0
    } else {
        rng.range(1, 10) as usize
    };
    let mut ip = vec![0u8; 20];
    ip[0] = 0x40 | (5 + options) as u8;
    if rng.percent(2) {
        ip[0] = rng.byte();
    }
    let mut l4 = l4.to_vec();
    let fragment: u16 = match rng.below(100) {
        0..=84 => 0x4000 * rng.below(2) as u16,
        85..=91 => {
            // A first fragment, often too short to hold the transport header.
            if rng.percent(60) {
                l4.truncate(rng.below(l4.len() as u64 + 1) as usize);
            }
            0x2000
        }
        92..=96 => rng.range(1, 0x1fff) as u16 | (0x2000 * rng.below(2) as u16),
        _ => rng.next_u64() as u16,
    };
    let mut total = (20 + 4 * options + l4.len()) as u16;
    if rng.percent(5) {
        // A length field that disagrees with the bytes: shorter (the rest is padding), or
        // anything.
        total = if rng.percent(70) {
            total.saturating_sub(rng.range(1, 24) as u16)
        } else {
            rng.next_u64() as u16
        };
    }
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&(rng.next_u64() as u16).to_be_bytes());
    ip[6..8].copy_from_slice(&fragment.to_be_bytes());
    ip[8] = ttl;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&source[..4]);
    let destination = if rng.percent(90) {
        [192, 0, 2, 1]
    } else {
        [rng.byte(), rng.byte(), rng.byte(), rng.byte()]
    };
    ip[16..20].copy_from_slice(&destination);
    for _ in 0..options {
        ip.extend_from_slice(&[1, 1, 1, rng.pick(&[0, 1])]);
    }
    frame.extend_from_slice(&ip);
    boundaries.push(frame.len());
    frame.extend_from_slice(&l4);
}

fn ipv6(
    rng: &mut Rng,
    frame: &mut Vec<u8>,
    source: [u8; 16],
    ttl: u8,
    proto: u8,
    l4: &[u8],
    boundaries: &mut Vec<usize>,
) {
    let count = match rng.below(100) {
        0..=59 => 0,
        60..=84 => rng.range(1, 3),
        _ => rng.range(4, 8),
    } as usize;
    let kinds: Vec<u8> = (0..count).map(|_| rng.pick(&[0, 43, 60, 60, 44])).collect();
    let mut l4 = l4.to_vec();
    let mut chain = Vec::new();
    let mut chain_boundaries = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        let next = kinds.get(i + 1).copied().unwrap_or(proto);
        chain_boundaries.push(chain.len());
        if *kind == 44 {
            let offset_and_flags: u16 = match rng.below(10) {
                0..=5 => {
                    if rng.percent(50) {
                        l4.truncate(rng.below(l4.len() as u64 + 1) as usize);
                    }
                    1
                }
                6..=7 => (rng.range(1, 0x1fff) as u16) << 3 | rng.below(2) as u16,
                _ => 0,
            };
            chain.extend_from_slice(&[next, 0]);
            chain.extend_from_slice(&offset_and_flags.to_be_bytes());
            chain.extend(rng.bytes(4));
        } else {
            let units = if rng.percent(80) {
                0
            } else {
                rng.range(1, 3) as usize
            };
            chain.extend_from_slice(&[next, units as u8]);
            // PadN over the rest.
            chain.extend_from_slice(&[1, (4 + units * 8) as u8]);
            chain.extend(std::iter::repeat_n(0, 4 + units * 8));
        }
    }
    let first = kinds.first().copied().unwrap_or(proto);
    let mut ip = vec![0x60, 0, 0, 0];
    if rng.percent(2) {
        ip[0] = rng.byte();
    }
    let mut payload_len = (chain.len() + l4.len()) as u16;
    if rng.percent(5) {
        payload_len = match rng.below(3) {
            0 => 0,
            1 => payload_len.saturating_sub(rng.range(1, 24) as u16),
            _ => rng.next_u64() as u16,
        };
    }
    ip.extend_from_slice(&payload_len.to_be_bytes());
    ip.extend_from_slice(&[first, ttl]);
    ip.extend_from_slice(&source);
    let mut destination = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    if rng.percent(10) {
        destination[15] = rng.byte();
    }
    if rng.percent(3) {
        destination[0] = 0xff;
    }
    ip.extend_from_slice(&destination);
    frame.extend_from_slice(&ip);
    let chain_start = frame.len();
    boundaries.extend(chain_boundaries.iter().map(|b| chain_start + b));
    frame.extend_from_slice(&chain);
    boundaries.push(frame.len());
    frame.extend_from_slice(&l4);
}

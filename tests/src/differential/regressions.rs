//! Divergences the differential test found, kept as fixed cases: a configuration, then frames
//! at given times with the verdict the specification gives. The program and the model must
//! both produce it, and agree on every counter, rule stat, blacklist entry and the reject
//! bucket afterwards.

use anyhow::{bail, Context, Result};
use blocker_common::{
    ports_without_rules, rule_protos, BanValue, Reason, Rule, RuleAction, RuleKind, Settings,
    FAMILY_V4, LIST_ALLOW_V4, LIST_BAN_V4, MAX_MASKS, MAX_RULES,
};

use super::{generate::Config, unhex, Harness};
use crate::model::Prefix;

pub struct Step {
    pub clock_ms: u64,
    pub frame: &'static str,
    pub reason: Reason,
}

pub struct Regression {
    pub name: &'static str,
    /// What diverged, where it was found, and how it was fixed.
    pub history: &'static str,
    pub config: fn() -> Config,
    pub steps: &'static [Step],
}

/// A configuration with `rules` in slots 0.. and settings derived as userspace derives them.
fn with_rules(rules: &[Rule]) -> Config {
    let mut all = [Rule::default(); MAX_RULES];
    all[..rules.len()].copy_from_slice(rules);
    let mut masks_v4 = [0; MAX_MASKS];
    let mut masks_v6 = [0; MAX_MASKS];
    let (mut n4, mut n6) = (0, 0);
    for rule in rules {
        if !masks_v4[..n4].contains(&rule.mask_v4) {
            masks_v4[n4] = rule.mask_v4;
            n4 += 1;
        }
        if !masks_v6[..n6].contains(&rule.mask_v6) {
            masks_v6[n6] = rule.mask_v6;
            n6 += 1;
        }
    }
    Config {
        settings: Settings {
            rule_slots: rules.len() as u32,
            lists: 0,
            rule_protos: rule_protos(&all),
            masks_v4,
            masks_v6,
            reject_per_s: 1000,
            reject_burst: 50,
            ports_without_rules: ports_without_rules(&all),
            ..Settings::default()
        },
        rules: all,
        allow: Default::default(),
        bans: Default::default(),
    }
}

/// A rate rule on `proto`, any port, sources aggregated to /32 and /128.
fn rate_rule(proto: u8, hitcount: u32, action: RuleAction) -> Rule {
    Rule {
        generation: 1,
        kind: RuleKind::Rate as u8,
        proto,
        action: action as u8,
        mask_v4: 32,
        mask_v6: 128,
        dport_min: 0,
        dport_max: u16::MAX,
        hitcount,
        window_ms: 60_000,
        blacklist_ms: 60_000,
        ..Rule::default()
    }
}

fn v4(octets: [u8; 4]) -> [u8; 16] {
    let mut addr = [0; 16];
    addr[..4].copy_from_slice(&octets);
    addr
}

/// The seed's SSH rule on a /24: 3 new connections in 30 s, then 2 minutes out.
fn ssh_rule(ttl_match: bool) -> Rule {
    Rule {
        new_only: 1,
        refresh: 1,
        ttl_match: u8::from(ttl_match),
        mask_v4: 24,
        mask_v6: 64,
        dport_min: 22,
        dport_max: 22,
        window_ms: 30_000,
        blacklist_ms: 120_000,
        ..rate_rule(6, 3, RuleAction::Drop)
    }
}

/// IPv4 TCP SYNs (padded to 60 bytes) to port 22 from 10.77.1.2, TTL 64 and 50, and SYN|FIN.
const SYN_FROM_2: &str = "02000000000102000000000208004500002800000000400600000a4d0102c0000201\
                          9c400016000003e8000000005002000000000000000000000000";
const SYN_FROM_2_TTL_50: &str =
    "02000000000102000000000208004500002800000000320600000a4d0102c0000201\
                                 9c400016000003e8000000005002000000000000000000000000";
const SYN_FIN_FROM_2: &str = "02000000000102000000000208004500002800000000400600000a4d0102c0000201\
                              9c400016000003e8000000005003000000000000000000000000";

pub const REGRESSIONS: &[Regression] = &[
    Regression {
        name: "issue 8 defect 1: the allowlist wins over a blacklist entry of a rule's /24",
        history:
            "the issue's reproduction on main (dda5c49): four SYNs from 10.77.1.2 blacklisted \
                  10.77.1.0/24 and the allowlisted 10.77.1.3 was dropped; passes since \
                  trust-kernel 4ea87aa",
        config: || {
            let mut config = with_rules(&[ssh_rule(false)]);
            let host = Prefix::new(FAMILY_V4, v4([10, 77, 1, 3]), 32);
            config.allow.entries.insert(host, 1);
            config.settings.lists = LIST_ALLOW_V4;
            config
        },
        steps: &[
            Step {
                clock_ms: 1_000_000,
                frame: SYN_FROM_2,
                reason: Reason::RuleEvent,
            },
            Step {
                clock_ms: 1_001_000,
                frame: SYN_FROM_2,
                reason: Reason::RuleEvent,
            },
            Step {
                clock_ms: 1_002_000,
                frame: SYN_FROM_2,
                reason: Reason::RuleEvent,
            },
            Step {
                clock_ms: 1_003_000,
                frame: SYN_FROM_2,
                reason: Reason::RuleTriggered,
            },
            Step {
                clock_ms: 1_004_000,
                frame: SYN_FROM_2,
                reason: Reason::Blacklisted,
            },
            // 10.77.1.3, inside the blacklisted /24.
            Step {
                clock_ms: 1_005_000,
                frame: "02000000000102000000000208004500002800000000400600000a4d0103c0000201\
                        9c400016000003e8000000005002000000000000000000000000",
                reason: Reason::Allowlisted,
            },
        ],
    },
    Regression {
        name: "issue 8 defect 2: SYNs no rule can classify are evasive, not passed",
        history: "the issue's reproduction on main (dda5c49): an IPv4 SYN first fragment with 8 \
                  bytes of TCP was malformed and passed, an IPv6 SYN behind 7 destination-options \
                  headers unparsed and passed; the padded fragment passes since trust-kernel \
                  8f14b2f, the rest since 4ea87aa",
        config: || with_rules(&[ssh_rule(false)]),
        steps: &[
            // First fragment (MF), 8 bytes of TCP, as on a veth.
            Step {
                clock_ms: 1_000_000,
                frame: "02000000000102000000000208004500001c00002000400600000a4d0102c0000201\
                        9c400016000003e8",
                reason: Reason::Evasive,
            },
            // The same padded to 60 bytes by a NIC: padding is no TCP header.
            Step {
                clock_ms: 1_000_001,
                frame: "02000000000102000000000208004500001c00002000400600000a4d0102c0000201\
                        9c400016000003e8000000000000000000000000000000000000",
                reason: Reason::Evasive,
            },
            // IPv6 SYN behind 7 destination-options headers.
            Step {
                clock_ms: 1_000_002,
                frame: "02000000000102000000000286dd60000000004c3c4020010db80000007700000000\
                        0000000220010db80000000000000000000000013c000104000000003c0001040000\
                        00003c000104000000003c000104000000003c000104000000003c00010400000000\
                        06000104000000009c400016000003e8000000005002000000000000",
                reason: Reason::Evasive,
            },
        ],
    },
    Regression {
        name: "issue 8 defect 9: SYN|FIN opens nothing; --rttl records other TTLs",
        history: "the issue on main (dda5c49): SYN|FIN counted as a new connection, and the first \
                  TTL was pinned forever so a spoofed first packet disabled counting; passes \
                  since trust-kernel 4ea87aa",
        config: || with_rules(&[ssh_rule(true)]),
        steps: &[
            Step {
                clock_ms: 1_000_000,
                frame: SYN_FIN_FROM_2,
                reason: Reason::NoMatch,
            },
            Step {
                clock_ms: 1_000_001,
                frame: SYN_FROM_2_TTL_50,
                reason: Reason::RuleEvent,
            },
            // Another TTL: not checked against the threshold, but recorded.
            Step {
                clock_ms: 1_000_002,
                frame: SYN_FROM_2,
                reason: Reason::RuleEvent,
            },
            Step {
                clock_ms: 1_000_003,
                frame: SYN_FROM_2,
                reason: Reason::RuleEvent,
            },
            Step {
                clock_ms: 1_000_004,
                frame: SYN_FROM_2,
                reason: Reason::RuleTriggered,
            },
        ],
    },
    Regression {
        name: "D1: an IPv4 header longer than the frame is malformed, before the bans",
        history: "found by seed 1 frame 177 (and seeds 2-4) on trust-kernel 4ea87aa: the program \
                  read only 20 bytes of a 52-byte header and dropped the frame for a ban; fixed on \
                  trust-kernel: the whole IHL*4 header must be in the frame",
        config: || {
            let mut config = with_rules(&[]);
            let banned = Prefix::new(FAMILY_V4, v4([10, 1, 2, 6]), 32);
            config
                .bans
                .entries
                .insert(banned, BanValue { expires_at_s: 0 });
            config.settings.lists = LIST_BAN_V4;
            config
        },
        steps: &[Step {
            clock_ms: 1_000_000,
            // IHL 13 (52 bytes), 33 bytes of IP header in the frame, source 10.1.2.6.
            frame: "02000000000102000000000208004d000068ee9f2000f20600000a010206b7160dd7\
                    0101010001010101010101000101010101",
            reason: Reason::Malformed,
        }],
    },
    Regression {
        name: "D2: an IPv6 first fragment stays one behind a later atomic fragment header",
        history: "found by seed 1 frame 1210 on trust-kernel 4ea87aa: fragment(offset 0, M) -> \
                  routing -> routing -> hop-by-hop -> fragment(offset 0, no M) -> TCP cut short \
                  passed as malformed; the stack reassembles it past the TCP rule; fixed on \
                  trust-kernel: any first-fragment header along the chain makes it a first \
                  fragment",
        config: || with_rules(&[rate_rule(6, 3, RuleAction::Drop)]),
        steps: &[Step {
            clock_ms: 1_000_000,
            frame: "02000000000102000000000286dd6000000000452c4ee79a365b71c3f6c9d29dc70d88edd291\
                    20010db80000000000000000000000012b000001d241c9042b0001040000000000000104000000\
                    002c0201140000000000000000000000000000000000000000060000002fe7c0ef411b005022\
                    03c0089513663a60",
            reason: Reason::Evasive,
        }],
    },
    Regression {
        name: "D4: no reject token is spent on a packet that gets no answer",
        history: "found by seed 3 frame 316 on trust-kernel 4ea87aa: a GRE packet with 4 bytes \
                  after its IP header took a token, then its ICMP quote did not fit and it was \
                  dropped; the bucket ends one token short; fixed on trust-kernel: the quote is \
                  checked against the frame before the token is taken",
        config: || {
            let mut config = with_rules(&[rate_rule(47, 1, RuleAction::Reject)]);
            config.settings.reject_per_s = 6;
            config.settings.reject_burst = 5;
            config
        },
        steps: &[
            Step {
                clock_ms: 1_000_000,
                frame: "02000000000102000000000208004500001c00000000402f00000a010101c0000201\
                        0000000000000000",
                reason: Reason::RuleEvent,
            },
            // Blacklists the source; 4 bytes of GRE cannot be quoted: dropped, no token.
            Step {
                clock_ms: 1_000_001,
                frame: "02000000000102000000000208004500001800000000402f00000a010101c0000201\
                        00000000",
                reason: Reason::RuleTriggered,
            },
            // Answered: one token of the five.
            Step {
                clock_ms: 1_000_002,
                frame: "02000000000102000000000208004500001c00000000402f00000a010101c0000201\
                        0000000000000000",
                reason: Reason::Rejected,
            },
        ],
    },
    Regression {
        name: "D5: IPv4 protocols 0, 43, 44, 60 are transport protocols, not extension headers",
        history: "found by seed 5 frame 42951 on trust-kernel 8f14b2f: an IPv4 first fragment of \
                  protocol 0 cut short (total length 14) was dropped as evasive under a TCP/UDP \
                  rule set: evasive_is_dropped reads protocol 0 as an IPv6 hop-by-hop header; fixed \
                  on trust-kernel: evasive_is_dropped reads extension headers in IPv6 only",
        config: || {
            with_rules(&[
                rate_rule(6, 3, RuleAction::Drop),
                rate_rule(17, 3, RuleAction::Drop),
            ])
        },
        steps: &[Step {
            clock_ms: 1_000_000,
            frame: "02000000000102000000000288a8007e8100001108004500000ef34d20000100000000000000\
                    00000000000000000000000000000000000000000000000000",
            reason: Reason::Malformed,
        }],
    },
];

/// Runs one case through a fresh program and model.
pub fn check(case: &Regression) -> Result<()> {
    let first = case.steps.first().map_or(1, |step| step.clock_ms);
    let mut harness = Harness::new(first)?;
    harness.configure((case.config)())?;
    for (index, step) in case.steps.iter().enumerate() {
        harness.set_clock(step.clock_ms)?;
        let verdict = harness
            .frame(&unhex(step.frame))
            .with_context(|| format!("{}: step {index}", case.name))?;
        if verdict.reason != step.reason {
            bail!(
                "{}: step {index}: the model says {}, the case expects {}",
                case.name,
                verdict.reason.name(),
                step.reason.name()
            );
        }
    }
    harness.check_state().with_context(|| case.name)
}

//! Cost per packet class (BPF_PROG_TEST_RUN), blocker beside xdp-filter.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::OwnedFd,
    path::Path,
};

use anyhow::{bail, Context, Result};
use aya::maps::{Map, MapData, PerCpuHashMap, PerCpuValues};
use blocker_common::MAP_HISTORY;
use blocker_tests::frames::{ethernet, frame, tcp_syn, udp, ARP, IPV4};
use serde::Serialize;

use super::{
    bpf::{self, test_run},
    control::bytes_per_entry,
    lab::{
        nth_source, v4_frame, v6, v6_frame, Lab, ALLOWED_V4, ATTACKER_V4, BANNED_V4, GOAL_BANS,
        IN_BANNED_RANGE, TCP, UDP, UNMATCHED_V4,
    },
    median, progsize, verdict_name, Plan,
};
/// One measured packet class.
#[derive(Serialize, Clone)]
pub(super) struct Cost {
    pub(super) class: String,
    /// Median ns per packet, as the kernel measured it.
    pub(super) ns: f64,
    /// Above the empty program measured the same way.
    pub(super) above_floor: f64,
    pub(super) verdict: &'static str,
    pub(super) xdp_filter_above_floor: Option<f64>,
    /// blocker ÷ xdp-filter, both above the floor.
    pub(super) ratio_to_xdp_filter: Option<f64>,
    /// Translated instructions of blocker's program, and of xdp-filter's for this class.
    pub(super) insns: u64,
    pub(super) xdp_filter_insns: Option<u64>,
}

/// Median ns per packet of `prog` on `data` over the plan's rounds.
pub(super) fn cost(prog: &OwnedFd, data: &[u8], plan: Plan) -> Result<(f64, u32)> {
    let mut turns = in_turns(&[(prog, data)], plan)?;
    let (samples, retval) = turns.pop().context("no program measured")?;
    Ok((median(samples), retval))
}

/// One sample per round (ns per packet over the plan's repeat) of each program on its
/// frame, the programs taking turns (the order reversed every other round), with each
/// program's last return value.
fn in_turns(runs: &[(&OwnedFd, &[u8])], plan: Plan) -> Result<Vec<(Vec<f64>, u32)>> {
    let mut turns: Vec<(Vec<f64>, u32)> = runs.iter().map(|_| (Vec::new(), 0)).collect();
    for round in 0..plan.rounds {
        let mut order: Vec<usize> = (0..runs.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for at in order {
            let (prog, data) = runs[at];
            let run = test_run(prog, data, plan.repeat, None)?;
            turns[at].0.push(f64::from(run.duration_ns));
            turns[at].1 = run.retval;
        }
    }
    Ok(turns)
}

/// Median ns of single runs over many frames (each source seen once per call).
pub(super) fn cost_per_call(prog: &OwnedFd, frames: &[Vec<u8>]) -> Result<(f64, u32)> {
    let mut samples = Vec::new();
    let mut retval = 0;
    for frame in frames {
        let run = test_run(prog, frame, 1, None)?;
        retval = run.retval;
        samples.push(f64::from(run.duration_ns));
    }
    Ok((median(samples), retval))
}

/// The per-class costs and the floors they were measured against.
pub(super) struct PacketCosts {
    pub(super) floor: f64,
    pub(super) per_call_floor: f64,
    pub(super) costs: Vec<Cost>,
    /// Entries in each of xdp-filter's source lists while it was measured.
    pub(super) xdp_filter_entries: usize,
    /// Kernel memory per tracked source of the rule history (memlock / max entries).
    pub(super) tracked_source_bytes: f64,
}

/// Cost per packet class (BPF_PROG_TEST_RUN), blocker beside xdp-filter.
pub(super) fn packet_costs(lab: &Lab, blocker: &OwnedFd, plan: Plan) -> Result<PacketCosts> {
    let blocker_insns = progsize::xlated_insns(lab.xdp_prog_id("bb0")?)?;
    let empty = bpf::empty_program()?;

    let dns = || udp(53, 32);
    let floor = cost(&empty, &v4_frame(UNMATCHED_V4, dns(), UDP), plan)?.0;
    let per_call_floor = {
        let frames: Vec<Vec<u8>> = (0..plan.sources)
            .map(|n| v4_frame(nth_source(n), tcp_syn(22), TCP))
            .collect();
        cost_per_call(&empty, &frames)?.0
    };
    println!("bench: floor (empty XDP program) {floor:.1} ns, single runs {per_call_floor:.1} ns");

    // Classes measured with one frame repeated, each with xdp-filter's closest class (the
    // xdp-filter features it needs, and the frame it is fed).
    let mut malformed = ethernet(&[IPV4]);
    malformed.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6]);
    let non_ip = || frame(&[ARP], &[0u8; 28]);
    let unmatched_v4 = || v4_frame(UNMATCHED_V4, dns(), UDP);
    let unmatched_v6 = || v6_frame(v6("2001:db8:1::1"), dns(), UDP);
    let banned_v4 = || v4_frame(BANNED_V4, dns(), UDP);
    let banned_v6 = || v6_frame(v6(BANNED_V6_HOST), dns(), UDP);
    let peer = |family, data| Some(Peer { family, data });
    let repeated: Vec<(&str, Vec<u8>, Option<Peer>)> = vec![
        (
            "unmatched IPv4",
            unmatched_v4(),
            peer(Family::V4, unmatched_v4()),
        ),
        (
            "unmatched IPv6",
            unmatched_v6(),
            peer(Family::V6, unmatched_v6()),
        ),
        ("allowlisted", v4_frame(ALLOWED_V4, dns(), UDP), None),
        (
            "manual ban IPv4 /32",
            banned_v4(),
            peer(Family::V4, banned_v4()),
        ),
        (
            "manual ban IPv4 CIDR",
            v4_frame(IN_BANNED_RANGE, dns(), UDP),
            peer(Family::V4, banned_v4()),
        ),
        (
            "manual ban IPv6 /64",
            banned_v6(),
            peer(Family::V6, banned_v6()),
        ),
        (
            "dynamic blacklist hit",
            v4_frame(ATTACKER_V4, tcp_syn(22), TCP),
            peer(Family::V4, banned_v4()),
        ),
        (
            "malformed frame",
            malformed.clone(),
            peer(Family::V4, malformed.clone()),
        ),
        ("non-IP frame", non_ip(), peer(Family::V4, non_ip())),
    ];
    // Each class in turns with the empty program and its xdp-filter class, so that the
    // differences and ratios are of the same rounds: measured one after the other, a ratio
    // of one build moved from 1.00 to 1.31 between two runs.
    let mut measured: Vec<Option<Cost>> = vec![None; repeated.len()];
    let mut xdp_filter_entries = usize::MAX;
    for family in [Family::V4, Family::V6] {
        let xdp_filter = XdpFilter::load(lab, family)?;
        xdp_filter_entries = xdp_filter_entries.min(xdp_filter.list_entries);
        for (at, (class, data, peer)) in repeated.iter().enumerate() {
            let Some(peer) = peer.as_ref().filter(|peer| peer.family == family) else {
                continue;
            };
            let runs = [
                (&empty, &data[..]),
                (blocker, data),
                (&xdp_filter.prog, &peer.data),
            ];
            let insns = (blocker_insns, Some(xdp_filter.insns));
            measured[at] = Some(class_cost(class, &runs, plan, insns)?);
        }
        xdp_filter.unload(lab)?;
    }
    for (at, (class, data, _)) in repeated.iter().enumerate() {
        if measured[at].is_none() {
            let runs = [(&empty, &data[..]), (blocker, data)];
            measured[at] = Some(class_cost(class, &runs, plan, (blocker_insns, None))?);
        }
    }
    let mut costs: Vec<Cost> = measured.into_iter().flatten().collect();
    // Classes whose per-source state changes with every packet: one call per source.
    let sources = |base: u32, port: u16| -> Vec<Vec<u8>> {
        (0..plan.sources)
            .map(|n| v4_frame(nth_source(base + n), tcp_syn(port), TCP))
            .collect()
    };
    let new_sources = sources(0, 22);
    let (ns_new, verdict_new) = cost_per_call(blocker, &new_sources)?;
    // The same sources again: now known, with one event, below the threshold of 3.
    let (ns_known, verdict_known) = cost_per_call(blocker, &new_sources)?;
    let burst_sources = sources(plan.sources, 80);
    cost_per_call(blocker, &burst_sources)?;
    let (ns_burst, verdict_burst) = cost_per_call(blocker, &burst_sources)?;
    // The rule event's path without its history, in the same single runs: what the rule loop
    // and the history add (known source minus no rule matched) is then measured, not guessed.
    // A port no rule watches skips the loop as a protocol no rule covers does: the two rows
    // show the port filter at work.
    let (ns_no_rule, verdict_no_rule) =
        cost_per_call(blocker, &sources(2 * plan.sources, NO_RULE_PORT))?;
    let uncovered: Vec<Vec<u8>> = (0..plan.sources)
        .map(|n| v4_frame(nth_source(3 * plan.sources + n), dns(), UDP))
        .collect();
    let (ns_uncovered, verdict_uncovered) = cost_per_call(blocker, &uncovered)?;
    for (class, ns, retval) in [
        (KNOWN_SOURCE_SINGLE, ns_known, verdict_known),
        (NEW_SOURCE_SINGLE, ns_new, verdict_new),
        ("burst rule event (single runs)", ns_burst, verdict_burst),
        (NO_RULE_SINGLE, ns_no_rule, verdict_no_rule),
        (UNCOVERED_SINGLE, ns_uncovered, verdict_uncovered),
    ] {
        costs.push(Cost {
            class: class.to_string(),
            ns,
            above_floor: ns - per_call_floor,
            verdict: verdict_name(retval),
            xdp_filter_above_floor: None,
            ratio_to_xdp_filter: None,
            insns: blocker_insns,
            xdp_filter_insns: None,
        });
    }

    Ok(PacketCosts {
        floor,
        per_call_floor,
        costs,
        xdp_filter_entries,
        tracked_source_bytes: bytes_per_entry(&lab.pin_dir.join(MAP_HISTORY))?,
    })
}

/// The single-run rule rows that the live measure (`throughput::rule_events`) repeats.
pub(super) const KNOWN_SOURCE_SINGLE: &str = "rule event, known source (single runs)";
pub(super) const NEW_SOURCE_SINGLE: &str = "rule event, new source (single runs)";
pub(super) const NO_RULE_SINGLE: &str = "rule protocol, no rule matches (single runs)";
pub(super) const UNCOVERED_SINGLE: &str = "protocol no rule covers (single runs)";

/// A TCP port no rule of the bench config matches (its rules watch 22 and 80).
pub(super) const NO_RULE_PORT: u16 = 23;

/// The host of blocker's IPv6 /64 ban that both programs are fed, and that xdp-filter bans.
const BANNED_V6_HOST: &str = "2001:db8:bad::1";

/// Where xdp-filter pins its maps (one global directory: one bench at a time).
const XDP_FILTER_PINS: &str = "/sys/fs/bpf/xdp-filter";

/// The address family whose features xdp-filter is loaded with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// xdp-filter's class closest to one of blocker's: the features it is loaded with and the
/// frame it is fed.
struct Peer {
    family: Family,
    data: Vec<u8>,
}

/// blocker's cost for `class` from `runs` taken in turns: the empty program, blocker and,
/// when present, xdp-filter, whose translated sizes are `insns`. Above the floor and
/// xdp-filter's ratio are medians of the same-round differences and ratios.
fn class_cost(
    class: &str,
    runs: &[(&OwnedFd, &[u8])],
    plan: Plan,
    (insns, xdp_filter_insns): (u64, Option<u64>),
) -> Result<Cost> {
    let turns = in_turns(runs, plan)?;
    let [(floor, _), (own, retval), peer @ ..] = &turns[..] else {
        bail!("{class}: the empty program and blocker must both be measured");
    };
    let (above_floor, xdp_filter_above_floor, ratio_to_xdp_filter) =
        same_round(floor, own, peer.first().map(|(samples, _)| &samples[..]));
    Ok(Cost {
        class: class.to_string(),
        ns: median(own.clone()),
        above_floor,
        verdict: verdict_name(*retval),
        ratio_to_xdp_filter,
        xdp_filter_above_floor,
        insns,
        xdp_filter_insns,
    })
}

/// From samples of the same rounds: blocker above the floor, xdp-filter above the floor (the
/// medians of the same-round differences) and blocker ÷ xdp-filter (the median of the
/// same-round ratios; none where xdp-filter is under 1 ns above the floor: the kernel
/// reports whole ns).
fn same_round(floor: &[f64], own: &[f64], peer: Option<&[f64]>) -> (f64, Option<f64>, Option<f64>) {
    let above = |samples: &[f64]| -> Vec<f64> {
        samples
            .iter()
            .zip(floor)
            .map(|(ns, floor)| ns - floor)
            .collect()
    };
    let own_above = above(own);
    let Some(peer_above) = peer.map(above) else {
        return (median(own_above), None, None);
    };
    let ratios: Vec<f64> = own_above
        .iter()
        .zip(&peer_above)
        .filter(|(_, peer)| **peer >= 1.0)
        .map(|(own, peer)| own / peer)
        .collect();
    let peer_median = median(peer_above);
    let ratio = (peer_median >= 1.0 && !ratios.is_empty()).then(|| median(ratios));
    (median(own_above), Some(peer_median), ratio)
}

/// xdp-filter loaded on the lab's `xf0` with one family's features and the same banned
/// address as blocker, its source list filled.
struct XdpFilter {
    prog: OwnedFd,
    /// Translated instructions of the program loaded.
    insns: u64,
    list_entries: usize,
}

impl XdpFilter {
    fn load(lab: &Lab, family: Family) -> Result<Self> {
        let (feature, banned) = match family {
            Family::V4 => ("ipv4", Ipv4Addr::from(BANNED_V4).to_string()),
            Family::V6 => ("ipv6", BANNED_V6_HOST.to_string()),
        };
        run_xdp_filter(
            lab,
            &["load", "xf0", "-p", "allow", "-f", feature, "-m", "native"],
        )?;
        run_xdp_filter(lab, &["ip", &banned, "-m", "src"])?;
        let list_entries = match family {
            Family::V4 => fill_xdp_filter_list("filter_ipv4", |n| {
                u32::from_ne_bytes(Ipv4Addr::from(0x1400_0001 + n).octets())
            })?,
            Family::V6 => fill_xdp_filter_list("filter_ipv6", |n| {
                (Ipv6Addr::from(v6("2001:db8:1000::")) | Ipv6Addr::from(u128::from(n))).octets()
            })?,
        };
        Ok(Self {
            prog: lab.xdp_prog("xf0")?,
            insns: progsize::xdp_filter_insns()?,
            list_entries,
        })
    }

    fn unload(self, lab: &Lab) -> Result<()> {
        drop(self.prog);
        run_xdp_filter(lab, &["unload", "xf0"])
    }
}

fn run_xdp_filter(lab: &Lab, args: &[&str]) -> Result<()> {
    let out = lab.in_ns("xdp-filter").args(args).output()?;
    if !out.status.success() {
        bail!(
            "xdp-filter {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Fills one of xdp-filter's pinned source lists up to its capacity (or [`GOAL_BANS`]), each
/// new entry flagged as the one `xdp-filter ip` added first; returns the entries it holds.
fn fill_xdp_filter_list<K: aya::Pod>(list: &str, nth_key: impl Fn(u32) -> K) -> Result<usize> {
    let data = MapData::from_pin(Path::new(XDP_FILTER_PINS).join(list))
        .with_context(|| format!("opening xdp-filter's {list}"))?;
    let capacity = data.info()?.max_entries() as usize;
    let mut map: PerCpuHashMap<_, K, u64> = PerCpuHashMap::try_from(Map::PerCpuHashMap(data))?;
    let (_, flags) = map
        .iter()
        .next()
        .with_context(|| format!("xdp-filter's {list} is empty"))??;
    let entries = capacity.min(GOAL_BANS);
    for n in 0..entries.saturating_sub(1) as u32 {
        let values = PerCpuValues::try_from(flags.to_vec())?;
        map.insert(nth_key(n), values, 0)?;
    }
    let held = map.keys().count();
    Ok(held)
}

/// The cost-per-packet section.
pub(super) fn costs_markdown(floor_ns: f64, costs: &[Cost]) -> String {
    let mut out = String::new();
    out += "## Cost per packet (BPF_PROG_TEST_RUN, in the kernel)\n\n";
    out += &format!(
        "Median ns per packet over the rounds. Each class takes turns, round by round (the \
         order reversed every other round), with an empty XDP program and xdp-filter's closest \
         class; \"above floor\" and the ratio are the medians of the same-round differences \
         and ratios (the empty program alone, measured first: {:.1} ns). blocker holds the \
         loaded state of the goals section below; \
         xdp-filter is loaded with only the features the traffic needs (`-p allow -f ipv4`, or \
         `-f ipv6`), the same banned address and its list filled; its closest class is \
         compared (no ratio where xdp-filter is under 1 ns above the floor: the kernel \
         reports whole ns). Rule classes are single runs, one per source, against single-run floors (a cold path \
         each: the next section measures them in a stream of live frames); the last two \
         are a TCP port no rule matches and UDP, which no rule covers, measured the same way: \
         both skip the rule loop (the port filter, and the protocol bits).\n\n",
        floor_ns
    );
    out += "Insns: translated instructions (`bpftool prog show`, `bytes_xlated` / 8) of blocker's \
             program and of the xdp-filter program compared: the size loaded, not the instructions a class executes.\n\n";
    out += "| class | verdict | ns | above floor | xdp-filter above floor | ratio | insns | xdp-filter insns |\n";
    out += "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n";
    for cost in costs {
        out += &format!(
            "| {} | {} | {:.1} | {:.1} | {} | {} | {} | {} |\n",
            cost.class,
            cost.verdict,
            cost.ns,
            cost.above_floor,
            cost.xdp_filter_above_floor
                .map_or("".into(), |v| format!("{v:.1}")),
            cost.ratio_to_xdp_filter
                .map_or("".into(), |v| format!("{v:.2}")),
            cost.insns,
            cost.xdp_filter_insns.map_or("".into(), |v| v.to_string()),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_and_ratios_are_taken_round_by_round() {
        // A machine twice as slow in the second round moves every program alike.
        let floor = [10.0, 20.0, 10.0];
        let own = [30.0, 60.0, 30.0];
        let peer = [30.0, 60.0, 30.0];
        let (above, peer_above, ratio) = same_round(&floor, &own, Some(&peer));
        assert_eq!(above, 20.0);
        assert_eq!(peer_above, Some(20.0));
        assert_eq!(ratio, Some(1.0));
        let (above, peer_above, ratio) = same_round(&floor, &[40.0, 50.0, 50.0], Some(&peer));
        assert_eq!((above, peer_above), (30.0, Some(20.0)));
        assert_eq!(ratio, Some(1.5), "rounds: 1.5, 0.75, 2.0");
    }

    #[test]
    fn no_ratio_against_a_peer_under_a_nanosecond_above_the_floor() {
        let floor = [10.0, 10.0, 10.0];
        let (_, peer_above, ratio) = same_round(&floor, &[15.0; 3], Some(&[10.0, 10.0, 11.0]));
        assert_eq!(peer_above, Some(0.0));
        assert_eq!(ratio, None);
        assert_eq!(same_round(&floor, &[15.0; 3], None), (5.0, None, None));
    }
}

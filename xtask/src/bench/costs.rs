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
    let mut samples = Vec::new();
    let mut retval = 0;
    for _ in 0..plan.rounds {
        let run = test_run(prog, data, plan.repeat, None)?;
        retval = run.retval;
        samples.push(f64::from(run.duration_ns));
    }
    Ok((median(samples), retval))
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

    // Classes measured with one frame repeated.
    let mut malformed = ethernet(&[IPV4]);
    malformed.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6]);
    let repeated: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        (
            "unmatched IPv4",
            v4_frame(UNMATCHED_V4, dns(), UDP),
            Some("unmatched IPv4"),
        ),
        (
            "unmatched IPv6",
            v6_frame(v6("2001:db8:1::1"), dns(), UDP),
            Some("unmatched IPv6"),
        ),
        ("allowlisted", v4_frame(ALLOWED_V4, dns(), UDP), None),
        (
            "manual ban IPv4 /32",
            v4_frame(BANNED_V4, dns(), UDP),
            Some("ban IPv4"),
        ),
        (
            "manual ban IPv4 CIDR",
            v4_frame(IN_BANNED_RANGE, dns(), UDP),
            Some("ban IPv4"),
        ),
        (
            "manual ban IPv6 /64",
            v6_frame(v6("2001:db8:bad::1"), dns(), UDP),
            Some("ban IPv6"),
        ),
        (
            "dynamic blacklist hit",
            v4_frame(ATTACKER_V4, tcp_syn(22), TCP),
            Some("ban IPv4"),
        ),
        (
            "malformed frame",
            malformed.clone(),
            Some("malformed frame"),
        ),
        (
            "non-IP frame",
            frame(&[ARP], &[0u8; 28]),
            Some("non-IP frame"),
        ),
    ];
    let mut costs = Vec::new();
    for (class, data, _) in &repeated {
        let (ns, retval) = cost(blocker, data, plan)?;
        costs.push(Cost {
            class: class.to_string(),
            ns,
            above_floor: ns - floor,
            verdict: verdict_name(retval),
            xdp_filter_above_floor: None,
            ratio_to_xdp_filter: None,
            insns: blocker_insns,
            xdp_filter_insns: None,
        });
    }
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

    // xdp-filter with only the features the traffic needs, same banned addresses.
    let xdp_filter = xdp_filter_costs(lab, plan, floor, &malformed)?;
    for cost in &mut costs {
        let peer_class = repeated
            .iter()
            .find(|(class, _, _)| *class == cost.class)
            .and_then(|(_, _, peer)| *peer);
        if let Some(peer) =
            peer_class.and_then(|p| xdp_filter.classes.iter().find(|(c, ..)| *c == p))
        {
            cost.xdp_filter_above_floor = Some(peer.1);
            // The kernel reports whole ns: under 1 ns above the floor a ratio means nothing.
            cost.ratio_to_xdp_filter = (peer.1 >= 1.0).then(|| cost.above_floor / peer.1);
            cost.xdp_filter_insns = Some(peer.2);
        }
    }
    Ok(PacketCosts {
        floor,
        per_call_floor,
        costs,
        xdp_filter_entries: xdp_filter.list_entries,
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

/// Where xdp-filter pins its maps (one global directory: one bench at a time).
const XDP_FILTER_PINS: &str = "/sys/fs/bpf/xdp-filter";

/// xdp-filter's costs per comparable class (above the floor, with the translated size of
/// the program that ran), and how many entries its source lists held.
pub(super) struct XdpFilterCosts {
    classes: Vec<(&'static str, f64, u64)>,
    list_entries: usize,
}

/// Costs of xdp-filter's program for the comparable classes, above the floor, with the
/// translated size of the program that ran.
pub(super) fn xdp_filter_costs(
    lab: &Lab,
    plan: Plan,
    floor: f64,
    malformed: &[u8],
) -> Result<XdpFilterCosts> {
    let xdp_filter = |args: &[&str]| -> Result<()> {
        let out = lab.in_ns("xdp-filter").args(args).output()?;
        if !out.status.success() {
            bail!(
                "xdp-filter {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    let dns = || udp(53, 32);
    let mut results = Vec::new();
    xdp_filter(&["load", "xf0", "-p", "allow", "-f", "ipv4", "-m", "native"])?;
    xdp_filter(&["ip", "192.0.2.66", "-m", "src"])?;
    let v4_entries = fill_xdp_filter_list("filter_ipv4", |n| {
        u32::from_ne_bytes(Ipv4Addr::from(0x1400_0001 + n).octets())
    })?;
    let prog = lab.xdp_prog("xf0")?;
    let insns = progsize::xdp_filter_insns()?;
    for (class, data) in [
        ("unmatched IPv4", v4_frame(UNMATCHED_V4, dns(), UDP)),
        ("ban IPv4", v4_frame(BANNED_V4, dns(), UDP)),
        ("malformed frame", malformed.to_vec()),
        ("non-IP frame", frame(&[ARP], &[0u8; 28])),
    ] {
        results.push((class, cost(&prog, &data, plan)?.0 - floor, insns));
    }
    drop(prog);
    xdp_filter(&["unload", "xf0"])?;
    xdp_filter(&["load", "xf0", "-p", "allow", "-f", "ipv6", "-m", "native"])?;
    xdp_filter(&["ip", "2001:db8:bad::1", "-m", "src"])?;
    let v6_entries = fill_xdp_filter_list("filter_ipv6", |n| {
        (Ipv6Addr::from(v6("2001:db8:1000::")) | Ipv6Addr::from(u128::from(n))).octets()
    })?;
    let prog = lab.xdp_prog("xf0")?;
    let insns = progsize::xdp_filter_insns()?;
    for (class, data) in [
        ("unmatched IPv6", v6_frame(v6("2001:db8:1::1"), dns(), UDP)),
        ("ban IPv6", v6_frame(v6("2001:db8:bad::1"), dns(), UDP)),
    ] {
        results.push((class, cost(&prog, &data, plan)?.0 - floor, insns));
    }
    drop(prog);
    xdp_filter(&["unload", "xf0"])?;
    Ok(XdpFilterCosts {
        classes: results,
        list_entries: v4_entries.min(v6_entries),
    })
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
        "Median ns per packet; \"above floor\" subtracts an empty XDP program measured the same \
         way ({:.1} ns). blocker holds the loaded state of the goals section below; \
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

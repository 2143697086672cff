//! Cost per packet as tracked sources and list sizes grow.

use std::{net::Ipv4Addr, os::fd::OwnedFd};

use anyhow::Result;
use blocker_tests::{
    bpf::test_run,
    frames::{tcp_syn, udp},
};
use serde::Serialize;

use super::{
    costs::{cost, cost_per_call},
    lab::{nth_source, v4_frame, Lab, ALLOWED_V4, BAN_PROBES, TCP, UDP, UNMATCHED_V4},
    Plan,
};

#[derive(Serialize)]
pub(super) struct ScalePoint {
    pub(super) series: String,
    pub(super) size: u64,
    pub(super) above_floor: f64,
}

/// Cost per packet as tracked sources and list sizes grow.
pub(super) fn scaling(
    lab: &Lab,
    blocker: &OwnedFd,
    plan: Plan,
    floor: f64,
    per_call_floor: f64,
) -> Result<Vec<ScalePoint>> {
    let mut points = Vec::new();
    // Known sources under the ssh rule, with ever more other sources tracked.
    let tracked: &[u64] = if plan.quick {
        &[1_000, 100_000]
    } else {
        &[1_000, 100_000, 1_000_000]
    };
    let probe_base = 3_000_000;
    let measure = |base: u32| -> Result<f64> {
        let frames: Vec<Vec<u8>> = (0..plan.sources.min(1_000))
            .map(|n| v4_frame(nth_source(base + n), tcp_syn(22), TCP))
            .collect();
        // First call makes each source known; the second is the one measured.
        cost_per_call(blocker, &frames)?;
        Ok(cost_per_call(blocker, &frames)?.0 - per_call_floor)
    };
    points.push(ScalePoint {
        series: "tracked sources (known source event)".into(),
        size: 1,
        above_floor: measure(probe_base)?,
    });
    let mut filled = 0u64;
    for (round, &size) in tracked.iter().enumerate() {
        // One ssh-port SYN from each new source, as traffic would track it (not a write into
        // the history map, whose layout is blocker's to change).
        while filled < size {
            let source = Ipv4Addr::from(0x0a00_0000 + filled as u32).octets();
            test_run(blocker, &v4_frame(source, tcp_syn(22), TCP), 1, None)?;
            filled += 1;
        }
        points.push(ScalePoint {
            series: "tracked sources (known source event)".into(),
            size,
            above_floor: measure(probe_base + (round as u32 + 1) * 10_000)?,
        });
    }
    // Manual CIDR bans and allowlist entries: random prefixes.
    let sizes: &[u64] = if plan.quick {
        &[10, 10_000]
    } else {
        &[10, 10_000, 100_000]
    };
    let unmatched = v4_frame(UNMATCHED_V4, udp(53, 32), UDP);
    let empty_lists = cost(blocker, &unmatched, plan)?.0 - floor;
    points.push(ScalePoint {
        series: "manual CIDR bans (unmatched packet)".into(),
        size: 0,
        above_floor: empty_lists,
    });
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut random_prefix = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let addr = Ipv4Addr::from((rng >> 32) as u32);
        let len = 8 + (rng % 25) as u8;
        // Keep the probe sources, and the range the control-plane probes use, outside every
        // random prefix.
        let net = ipnet::Ipv4Net::new(addr, len).map(|n| n.trunc()).ok()?;
        let probe_range = ipnet::Ipv4Net::new(Ipv4Addr::from(BAN_PROBES), 24).ok()?;
        let probes = [UNMATCHED_V4, ALLOWED_V4, BAN_PROBES].map(Ipv4Addr::from);
        let clear = !probes.iter().any(|p| net.contains(p)) && !probe_range.contains(&net);
        clear.then_some(net)
    };
    let mut banned = 0u64;
    for &size in sizes {
        let mut list = String::new();
        while banned < size {
            if let Some(net) = random_prefix() {
                list.push_str(&format!("{net}\n"));
                banned += 1;
            }
        }
        let path = lab.dir.path().join("bans.txt");
        std::fs::write(&path, list)?;
        // Random prefixes may cover this host's resolver, which the lock-out check protects;
        // the lab's namespace never reaches it.
        lab.blocker(&["import", &path.to_string_lossy(), "--force"])?;
        points.push(ScalePoint {
            series: "manual CIDR bans (unmatched packet)".into(),
            size,
            above_floor: cost(blocker, &unmatched, plan)?.0 - floor,
        });
    }
    let mut allowed = 0u64;
    for &size in sizes {
        let mut batch = Vec::new();
        while allowed < size {
            if let Some(net) = random_prefix() {
                batch.push(net.to_string());
                allowed += 1;
            }
        }
        for chunk in batch.chunks(5_000) {
            let mut args = vec!["allow"];
            args.extend(chunk.iter().map(String::as_str));
            lab.blocker(&args)?;
        }
        points.push(ScalePoint {
            series: "allowlist entries (unmatched packet)".into(),
            size,
            above_floor: cost(blocker, &unmatched, plan)?.0 - floor,
        });
    }
    Ok(points)
}

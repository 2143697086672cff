//! The kernel's sample of blocked packets (one in [`blocker_common::SAMPLE_EVERY`] per reason and
//! CPU),
//! summed per source over `blocker top`'s interval.

use std::{collections::BTreeMap, net::IpAddr};

use anyhow::{Context, Result};
use aya::maps::{Map, PerCpuArray};
use blocker::pins::PinDir;
use blocker_common::{
    addr_bytes, DropSample, DropSamples, Reason, FAMILY_V4, MAP_COUNTERS, MAP_DROP_SAMPLES,
    NO_RULE, SAMPLED_REASONS, SAMPLE_SLOTS_PER_REASON,
};

/// Per CPU: the packets each of [`SAMPLED_REASONS`] had counted, and the ring as it was
/// just after.
#[derive(Default)]
pub struct SampleReading {
    cpus: Vec<CpuSamples>,
}

struct CpuSamples {
    counted: [u64; SAMPLED_REASONS.len()],
    slots: Vec<DropSample>,
}

/// A source's blocked packets in one interval, estimated from its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocked {
    pub addr: IpAddr,
    pub reason: Reason,
    /// The rule slot that blacklisted it.
    pub slot: Option<u16>,
    pub samples: u64,
    pub packets: u64,
    pub bytes: u64,
}

impl SampleReading {
    /// Reads the counters before the rings: a packet sampled in between counts in the next
    /// interval, never in none.
    pub fn take(pins: &PinDir) -> Result<Self> {
        let counters: PerCpuArray<_, blocker_common::Counter> =
            PerCpuArray::try_from(Map::PerCpuArray(pins.open_map(MAP_COUNTERS)?))
                .with_context(|| format!("opening map {MAP_COUNTERS}"))?;
        let mut cpus: Vec<CpuSamples> = Vec::new();
        for (region, reason) in SAMPLED_REASONS.iter().enumerate() {
            let per_cpu = counters
                .get(&(*reason as u32), 0)
                .with_context(|| format!("reading map {MAP_COUNTERS}"))?;
            cpus.resize_with(per_cpu.len(), || CpuSamples {
                counted: [0; SAMPLED_REASONS.len()],
                slots: Vec::new(),
            });
            for (cpu, counter) in cpus.iter_mut().zip(per_cpu.iter()) {
                cpu.counted[region] = counter.packets;
            }
        }
        let context = || format!("reading map {MAP_DROP_SAMPLES}");
        let rings: PerCpuArray<_, DropSamples> =
            PerCpuArray::try_from(Map::PerCpuArray(pins.open_map(MAP_DROP_SAMPLES)?))
                .with_context(context)?;
        let per_cpu = rings.get(&0, 0).with_context(context)?;
        for (cpu, ring) in cpus.iter_mut().zip(per_cpu.iter()) {
            cpu.slots = ring.slots.to_vec();
        }
        Ok(Self { cpus })
    }
}

/// The sources blocked between two readings, most packets first. Each of a reason's samples
/// on a CPU stands for an equal share of the packets that reason counted there in the
/// interval (about [`blocker_common::SAMPLE_EVERY`] each; more when the ring wrapped), so the estimates add
/// up to the counted packets.
pub fn blocked_sources(before: &SampleReading, after: &SampleReading) -> Vec<Blocked> {
    // Per source: the sample count, and the estimated packets and bytes before rounding.
    let mut by_source: BTreeMap<(IpAddr, u8, u16), (u64, f64, f64)> = BTreeMap::new();
    for (cpu, now) in after.cpus.iter().enumerate() {
        for (region, reason) in SAMPLED_REASONS.iter().enumerate() {
            let counted = now.counted[region];
            let since = match before.cpus.get(cpu) {
                Some(old) if old.counted[region] <= counted => old.counted[region],
                // Counting anew: the program was reloaded.
                _ => 0,
            };
            let first = region * SAMPLE_SLOTS_PER_REASON;
            let in_interval: Vec<&DropSample> = now
                .slots
                .get(first..first + SAMPLE_SLOTS_PER_REASON)
                .unwrap_or_default()
                .iter()
                .filter(|sample| {
                    sample.family != 0
                        && sample.reason == *reason as u8
                        && (since..counted).contains(&sample.seen)
                })
                .collect();
            if in_interval.is_empty() {
                continue;
            }
            let share = (counted - since) as f64 / in_interval.len() as f64;
            for sample in in_interval {
                let addr = sampled_addr(sample);
                let sums = by_source
                    .entry((addr, *reason as u8, sample.slot))
                    .or_default();
                sums.0 += 1;
                sums.1 += share;
                sums.2 += share * f64::from(sample.frame_len);
            }
        }
    }
    let mut blocked: Vec<Blocked> = by_source
        .into_iter()
        .filter_map(|((addr, reason, slot), (samples, packets, bytes))| {
            Some(Blocked {
                addr,
                reason: *Reason::ALL.get(usize::from(reason))?,
                slot: (slot != NO_RULE).then_some(slot),
                samples,
                packets: packets.round() as u64,
                bytes: bytes.round() as u64,
            })
        })
        .collect();
    blocked.sort_by(|a, b| b.packets.cmp(&a.packets).then_with(|| a.addr.cmp(&b.addr)));
    blocked
}

/// The sampled source address.
fn sampled_addr(sample: &DropSample) -> IpAddr {
    let bytes = addr_bytes(sample.source);
    if sample.family == FAMILY_V4 {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    } else {
        IpAddr::from(bytes)
    }
}

#[cfg(test)]
mod tests {
    use blocker_common::{addr_words, FAMILY_V6, SAMPLE_EVERY};

    use super::*;

    fn sample(addr: IpAddr, reason: Reason, seen: u64, slot: u16) -> DropSample {
        let (family, bytes) = match addr {
            IpAddr::V4(v4) => {
                let mut bytes = [0; 16];
                bytes[..4].copy_from_slice(&v4.octets());
                (FAMILY_V4, bytes)
            }
            IpAddr::V6(v6) => (FAMILY_V6, v6.octets()),
        };
        DropSample {
            seen,
            source: addr_words(&bytes),
            family,
            reason: reason as u8,
            slot,
            frame_len: 100,
        }
    }

    /// One CPU whose reasons counted `counted` packets, with the kernel's sampling of
    /// `packets` (source, reason, rule slot) in that order after `start` earlier packets.
    fn cpu(start: [u64; 5], packets: &[(IpAddr, Reason, u16)]) -> CpuSamples {
        let mut counted = start;
        let mut slots =
            vec![DropSample::default(); SAMPLED_REASONS.len() * SAMPLE_SLOTS_PER_REASON];
        for (addr, reason, rule) in packets {
            let region = blocker_common::sampled_region(*reason).expect("a blocking reason");
            let seen = counted[region];
            counted[region] += 1;
            if let Some(slot) = blocker_common::sample_slot(*reason, seen) {
                slots[slot] = sample(*addr, *reason, seen, *rule);
            }
        }
        CpuSamples { counted, slots }
    }

    #[test]
    fn samples_in_the_interval_estimate_each_sources_blocked_packets() {
        let heavy: IpAddr = "198.51.100.7".parse().unwrap();
        let light: IpAddr = "2001:db8::9".parse().unwrap();
        let listed: IpAddr = "203.0.113.5".parse().unwrap();
        let start = [1000, 0, 0, 0, 0];
        let before = SampleReading {
            cpus: vec![cpu(start, &[]), cpu([0; 5], &[])],
        };
        // CPU 0: 2000 of heavy then 200 of light, interleaved 10 to 1 (manual bans).
        let mut traffic = Vec::new();
        for n in 0..2200 {
            let addr = if n % 11 == 10 { light } else { heavy };
            traffic.push((addr, Reason::ManualBan, NO_RULE));
        }
        // CPU 1: a rule-blacklisted source, 640 packets.
        let blacklisted = vec![(listed, Reason::Blacklisted, 3); 640];
        let after = SampleReading {
            cpus: vec![cpu(start, &traffic), cpu([0; 5], &blacklisted)],
        };
        let found = blocked_sources(&before, &after);
        let names: Vec<(IpAddr, Reason, Option<u16>)> =
            found.iter().map(|b| (b.addr, b.reason, b.slot)).collect();
        assert_eq!(
            names,
            [
                (heavy, Reason::ManualBan, None),
                (listed, Reason::Blacklisted, Some(3)),
                (light, Reason::ManualBan, None),
            ]
        );
        // 1 in 64 sampled; the ring of 64 holds them all; the shares add up to the count.
        let heavy_found = &found[0];
        assert_eq!(heavy_found.packets + found[2].packets, 2200);
        assert!(
            (1800..=2200).contains(&heavy_found.packets),
            "{heavy_found:?}"
        );
        assert!((0..=400).contains(&found[2].packets), "{:?}", found[2]);
        assert_eq!(found[1].packets, 640);
        assert_eq!(found[1].samples, 640 / SAMPLE_EVERY);
        assert_eq!(found[1].bytes, 640 * 100);

        // Nothing new: no source; and samples from before the interval are not counted again.
        assert!(blocked_sources(&after, &after).is_empty());
    }

    #[test]
    fn a_wrapped_ring_still_adds_up_and_a_reload_counts_anew() {
        let addr: IpAddr = "192.0.2.200".parse().unwrap();
        let flood = vec![(addr, Reason::RuleTriggered, 1); 3 * 64 * SAMPLE_EVERY as usize];
        let before = SampleReading {
            cpus: vec![cpu([0; 5], &[])],
        };
        let after = SampleReading {
            cpus: vec![cpu([0; 5], &flood)],
        };
        let found = blocked_sources(&before, &after);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].samples, SAMPLE_SLOTS_PER_REASON as u64);
        assert_eq!(found[0].packets, flood.len() as u64);
        // The program reloaded between readings: its counters went back to zero.
        let reloaded = SampleReading {
            cpus: vec![cpu([0; 5], &flood[..100])],
        };
        let found = blocked_sources(&after, &reloaded);
        assert_eq!(found[0].packets, 100);
    }
}

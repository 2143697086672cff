//! The live-frames wire: a generator namespace and a target namespace joined by a veth pair.
//! The generator XDP_TXs frames out of its end with BPF_PROG_TEST_RUN (live frames) from a
//! thread pinned to one CPU. The target's veth has no NAPI thread of its own, so its XDP
//! program (and whatever stack path passed frames take) runs in the softirq that the
//! generator's flush raises on that same CPU, inside the kernel's timing of the run: the
//! measured ns per frame is generator plus target, and every candidate gets the same CPU.

use std::{
    fs::File,
    net::Ipv4Addr,
    os::fd::OwnedFd,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use blocker_common::reject::{checksum_add, checksum_finish};
use blocker_tests::frames::{frame, ipv4, tcp_syn, udp, IPV4};
use nix::sched::{sched_setaffinity, setns, CloneFlags, CpuSet};

use super::super::{bpf, bpf::Insn, median, sh};

/// The generator's namespace; named per process, so that a second bench running at the
/// same time does not delete this one's namespaces as leftovers.
pub fn gen_ns() -> String {
    format!("blkgen{}", std::process::id())
}

/// The target's namespace (see [`gen_ns`]).
pub fn target_ns() -> String {
    format!("blktarget{}", std::process::id())
}
pub const TARGET_IFACE: &str = "tgt0";
/// The one source, and the template of the flood, which varies the low 16 bits.
pub const OFFENDER: [u8; 4] = [10, 99, 0, 1];
/// Every source the flood can take.
pub const FLOOD_SOURCES: &str = "10.99.0.0/16";
pub const SSH_PORT: u16 = 22;
const TARGET_ADDR: [u8; 4] = [10, 98, 0, 1];
/// The CPU the generator and the target's softirq share.
const CPU: usize = 0;
/// Frames per BPF_PROG_TEST_RUN call: a few milliseconds, so that a call a busy machine
/// preempted is an outlier the median drops.
const FRAMES_PER_CALL: u32 = 1 << 13;

/// The longest warm-up, for candidates too slow to reach its frame count.
const WARM_UP_LIMIT: Duration = Duration::from_secs(3);

/// When a flood stops.
#[derive(Clone, Copy)]
enum Bound {
    Time(Duration),
    Frames(u64),
}

/// What the generator sends.
#[derive(Clone, Copy, PartialEq)]
pub enum Traffic {
    /// Every frame a TCP SYN to the ssh port from the offender.
    OneSource,
    /// Every frame a TCP SYN to the ssh port from a random one of 65,536 sources.
    SynFlood,
}

/// Where the generators write in the frame: the source address's low half (14 + 12 + 2) and
/// the IP id (14 + 4); the third word that balances the L4 checksum is the probe's
/// ([`Probe::balance_at`]).
const SOURCE_LOW_AT: i16 = 28;
const IP_ID_AT: i16 = 18;

/// What the frames carry above IPv4.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Probe {
    /// A TCP SYN to the port.
    TcpSyn(u16),
    /// A UDP datagram (32 bytes of payload) to the port.
    Udp(u16),
}

impl Probe {
    /// The 16-bit word of the L4 header or payload that the generators set to the complement
    /// of the source's low half, so that the L4 checksum holds: the TCP sequence number's low
    /// half (14 + 20 + 6), or the first word of the UDP payload (14 + 20 + 8).
    fn balance_at(self) -> i16 {
        match self {
            Probe::TcpSyn(_) => 40,
            Probe::Udp(_) => 42,
        }
    }

    fn proto(self) -> u8 {
        match self {
            Probe::TcpSyn(_) => 6,
            Probe::Udp(_) => 17,
        }
    }

    fn segment(self) -> Vec<u8> {
        match self {
            Probe::TcpSyn(port) => tcp_syn(port),
            Probe::Udp(port) => udp(port, 32),
        }
    }
}

/// Writes the low half of the source address from r0 (r6 holding the context), and its one's
/// complement into the IP id and the probe's balancing word: each pair sums to 0xffff
/// whatever r0 holds, so the IP and L4 checksums of the template stay valid. A frame too
/// short is sent as it is.
fn write_source_low(probe: Probe) -> [Insn; 9] {
    let balance_at = probe.balance_at();
    [
        Insn::load_u32(2, 6, 0),
        Insn::load_u32(3, 6, 4),
        Insn::mov(4, 2),
        Insn::add_imm(4, i32::from(balance_at) + 2),
        Insn::jgt(4, 3, 4),
        Insn::store_u16(2, 0, SOURCE_LOW_AT),
        Insn::xor_imm(0, 0xffff),
        Insn::store_u16(2, 0, IP_ID_AT),
        Insn::store_u16(2, 0, balance_at),
    ]
}

/// The generator program: XDP_TX every frame. For the flood, it first writes a random low
/// half of the source address ([`write_source_low`]).
fn generator(traffic: Traffic) -> Result<OwnedFd> {
    let mut insns = vec![Insn::mov(6, 1)];
    if traffic == Traffic::SynFlood {
        insns.extend([
            Insn::call(bpf::HELPER_PRANDOM_U32),
            Insn::and_imm(0, 0xffff),
        ]);
        insns.extend(write_source_low(Probe::TcpSyn(SSH_PORT)));
    }
    insns.extend([Insn::mov_imm(0, bpf::XDP_TX as i32), Insn::exit()]);
    bpf::load_xdp(&insns)
}

/// Most sources [`sequential_generator`] can take: the low half of the address.
pub const MAX_SEQUENTIAL_SOURCES: u32 = 1 << 16;

/// A generator that XDP_TXs every frame from the next of `sources` sources in turn (a power
/// of two, at most [`MAX_SEQUENTIAL_SOURCES`]): the n-th frame it ever sends takes
/// n mod `sources` as the low half of its source address, n counted in `counter` (an array
/// map of one u32, which the generators of one measurement share). Every call of `sources`
/// frames therefore sends the same sources in the same order, each once. The generator runs
/// on one CPU, so the count needs no atomic add.
pub fn sequential_generator(counter: &OwnedFd, sources: u32, probe: Probe) -> Result<OwnedFd> {
    let mask = source_mask(sources)?;
    let write = write_source_low(probe);
    let mut insns = vec![
        Insn::mov(6, 1),
        Insn::mov_imm(7, 0),
        Insn::store_u32(10, 7, -4),
    ];
    insns.extend(Insn::load_map(1, counter));
    let counted = [
        Insn::load_u32(7, 0, 0),
        Insn::mov(8, 7),
        Insn::add_imm(8, 1),
        Insn::store_u32(0, 8, 0),
        Insn::mov(0, 7),
        Insn::and_imm(0, mask),
    ];
    insns.extend([
        Insn::mov(2, 10),
        Insn::add_imm(2, -4),
        Insn::call(bpf::HELPER_MAP_LOOKUP_ELEM),
        // No counter (it cannot be missing from an array): send the template as it is.
        Insn::jeq_imm(0, 0, (counted.len() + write.len()) as i16),
    ]);
    insns.extend(counted);
    insns.extend(write);
    insns.extend([Insn::mov_imm(0, bpf::XDP_TX as i32), Insn::exit()]);
    bpf::load_xdp(&insns)
}

/// What n is masked with to cycle through `sources` (see [`sequential_generator`]).
fn source_mask(sources: u32) -> Result<i32> {
    anyhow::ensure!(
        sources.is_power_of_two() && sources <= MAX_SEQUENTIAL_SOURCES,
        "{sources} sources: a power of two up to {MAX_SEQUENTIAL_SOURCES} expected"
    );
    Ok((sources - 1) as i32)
}

/// The template: `probe` from the offender to the target, with valid IPv4 and L4 checksums,
/// its IP id and balancing word the complement of the source's low half.
fn template(target_mac: [u8; 6], probe: Probe) -> Vec<u8> {
    let complement = !u16::from_be_bytes([OFFENDER[2], OFFENDER[3]]);
    let mut segment = probe.segment();
    let balance = probe.balance_at() as usize - 34;
    segment[balance..balance + 2].copy_from_slice(&complement.to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&OFFENDER);
    pseudo[4..8].copy_from_slice(&TARGET_ADDR);
    pseudo[9] = probe.proto();
    pseudo[10..12].copy_from_slice(&(segment.len() as u16).to_be_bytes());
    // checksum_add sums a fixed-size array: the segment, zero-padded.
    let mut padded = [0u8; 64];
    padded[..segment.len()].copy_from_slice(&segment);
    let sum = checksum_finish(checksum_add(
        checksum_add(0, &pseudo, 0, pseudo.len()),
        &padded,
        0,
        segment.len(),
    ));
    let checksum_at = match probe {
        Probe::TcpSyn(_) => 16,
        Probe::Udp(_) => 6,
    };
    segment[checksum_at..checksum_at + 2].copy_from_slice(&sum.to_be_bytes());

    let mut ip = ipv4(OFFENDER, 0, probe.proto(), &segment);
    ip[4..6].copy_from_slice(&complement.to_be_bytes());
    ip[16..20].copy_from_slice(&TARGET_ADDR);
    let mut header = [0u8; 20];
    header.copy_from_slice(&ip[..20]);
    ip[10..12].copy_from_slice(&checksum_finish(checksum_add(0, &header, 0, 20)).to_be_bytes());
    let mut data = frame(&[IPV4], &ip);
    data[..6].copy_from_slice(&target_mac);
    data
}

pub fn ip(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    sh("ip", &full)
}

pub fn in_target(program: &str, args: &[&str]) -> Result<String> {
    let mut full = vec![
        format!("--net=/run/netns/{}", target_ns()),
        program.to_string(),
    ];
    full.extend(args.iter().map(|a| a.to_string()));
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    sh("nsenter", &full)
}

/// The packet counter of the first rule of `chain` in iptables' `table`, in the target.
pub fn first_rule_packets(table: &str, chain: &str) -> Result<u64> {
    let listing = in_target("iptables", &["-t", table, "-L", chain, "-v", "-x", "-n"])?;
    listing
        .lines()
        .nth(2)
        .and_then(|line| line.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {table}-table counter in:\n{listing}"))
}

/// Frame counts of one measurement.
#[derive(Default, Clone, Copy)]
pub struct Counts {
    /// Frames the target's XDP program saw.
    pub seen: u64,
    /// Frames every filter let through to the local stack (the security table's counter).
    pub passed: u64,
}

/// One flood's result.
pub struct Flood {
    /// Median over the calls of kernel-measured ns per frame, generator plus target.
    pub ns_per_frame: f64,
    pub generated: u64,
    pub counts: Counts,
}

/// The generator's namespace and the target's, joined by a veth pair.
pub struct Wire {
    gen_ifindex: u32,
    target_mac: [u8; 6],
}

impl Wire {
    pub fn new() -> Result<Self> {
        for ns in [gen_ns(), target_ns()] {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
            sh("ip", &["netns", "add", &ns])?;
        }
        ip(
            &gen_ns(),
            &[
                "link",
                "add",
                "gen0",
                "type",
                "veth",
                "peer",
                "name",
                TARGET_IFACE,
                "netns",
                &target_ns(),
            ],
        )?;
        ip(&gen_ns(), &["link", "set", "gen0", "up"])?;
        ip(&target_ns(), &["link", "set", TARGET_IFACE, "up"])?;
        let target = Ipv4Addr::from(TARGET_ADDR);
        ip(
            &target_ns(),
            &["addr", "add", &format!("{target}/24"), "dev", TARGET_IFACE],
        )?;
        // Replies to the sources (RSTs) end here instead of resolving 65,536 neighbours.
        ip(&target_ns(), &["route", "add", "blackhole", FLOOD_SOURCES])?;
        in_target("sysctl", &["-qw", "net.ipv4.conf.all.rp_filter=0"])?;
        in_target(
            "sysctl",
            &["-qw", &format!("net.ipv4.conf.{TARGET_IFACE}.rp_filter=0")],
        )?;
        // What reaches the local stack, whichever filter ran before: the security table
        // comes after the filter table and nftables' priority-0 input chain.
        in_target(
            "iptables",
            &["-t", "security", "-A", "INPUT", "-s", FLOOD_SOURCES],
        )?;
        let link = |ns: &str, dev: &str| -> Result<serde_json::Value> {
            let out = ip(ns, &["-j", "link", "show", dev])?;
            Ok(serde_json::from_str::<serde_json::Value>(&out)?[0].clone())
        };
        let gen = link(&gen_ns(), "gen0")?;
        let target = link(&target_ns(), TARGET_IFACE)?;
        let mac: Vec<u8> = target["address"]
            .as_str()
            .context("target MAC")?
            .split(':')
            .filter_map(|h| u8::from_str_radix(h, 16).ok())
            .collect();
        Ok(Self {
            gen_ifindex: gen["ifindex"].as_u64().context("ifindex")? as u32,
            target_mac: mac.try_into().map_err(|_| anyhow::anyhow!("bad MAC"))?,
        })
    }

    /// The target's counters now.
    pub fn counts(&self) -> Result<Counts> {
        let stats = in_target("ethtool", &["-S", TARGET_IFACE])?;
        let seen = stats
            .lines()
            .filter_map(|line| line.trim().split_once(':'))
            .filter(|(name, _)| name.starts_with("rx_queue_") && name.ends_with("_xdp_packets"))
            .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
            .sum();
        let passed = first_rule_packets("security", "INPUT")?;
        Ok(Counts { seen, passed })
    }

    /// Floods unmeasured until `warm_up` frames are sent (or [`WARM_UP_LIMIT`] passed),
    /// then for `duration` measured.
    pub fn flood(&self, traffic: Traffic, warm_up: u64, duration: Duration) -> Result<Flood> {
        self.send(traffic, Bound::Frames(warm_up))?;
        let before = self.counts()?;
        let (samples, generated) = self.send(traffic, Bound::Time(duration))?;
        let after = self.counts()?;
        Ok(Flood {
            ns_per_frame: median(samples),
            generated,
            counts: Counts {
                seen: after.seen - before.seen,
                passed: after.passed - before.passed,
            },
        })
    }

    /// Sends until `bound`; returns the kernel's ns per frame of every call and the frames
    /// sent.
    fn send(&self, traffic: Traffic, bound: Bound) -> Result<(Vec<f64>, u64)> {
        let data = template(self.target_mac, Probe::TcpSyn(SSH_PORT));
        self.in_generator(|ifindex| {
            let program = generator(traffic)?;
            let mut samples = Vec::new();
            let started = Instant::now();
            let more = |calls: usize| match bound {
                Bound::Time(duration) => started.elapsed() < duration || calls < 3,
                Bound::Frames(frames) => {
                    (calls as u64) * u64::from(FRAMES_PER_CALL) < frames
                        && started.elapsed() < WARM_UP_LIMIT
                }
            };
            while more(samples.len()) {
                // Live frames report no verdict, only the time.
                let run = bpf::test_run(&program, &data, FRAMES_PER_CALL, Some(ifindex))?;
                samples.push(f64::from(run.duration_ns));
            }
            let sent = samples.len() as u64 * u64::from(FRAMES_PER_CALL);
            Ok((samples, sent))
        })
    }

    /// The frame `probe` to the target, for [`Wire::send_frames`]'s generator to vary.
    pub fn frame(&self, probe: Probe) -> Vec<u8> {
        template(self.target_mac, probe)
    }

    /// Sends exactly `frames` frames of `data` with `generator`, in calls of at most
    /// [`FRAMES_PER_CALL`].
    pub fn send_frames(&self, generator: &OwnedFd, data: &[u8], frames: u32) -> Result<()> {
        self.send_frames_observed(generator, data, frames, || Ok(()))
    }

    /// [`Wire::send_frames`], calling `after_call` after each call (between calls, so that
    /// its own time is in none of them).
    pub fn send_frames_observed(
        &self,
        generator: &OwnedFd,
        data: &[u8],
        frames: u32,
        mut after_call: impl FnMut() -> Result<()> + Send,
    ) -> Result<()> {
        self.in_generator(|ifindex| {
            let mut left = frames;
            while left > 0 {
                let call = left.min(FRAMES_PER_CALL);
                bpf::test_run(generator, data, call, Some(ifindex))?;
                after_call()?;
                left -= call;
            }
            Ok(())
        })
    }

    /// Runs `work` (given the generator's ifindex) on a thread in the generator namespace
    /// pinned to [`CPU`].
    fn in_generator<T: Send>(&self, work: impl FnOnce(u32) -> Result<T> + Send) -> Result<T> {
        let ifindex = self.gen_ifindex;
        std::thread::scope(|scope| {
            scope
                .spawn(move || -> Result<T> {
                    let netns = File::open(format!("/run/netns/{}", gen_ns()))?;
                    setns(netns, CloneFlags::CLONE_NEWNET)?;
                    let mut cpus = CpuSet::new();
                    cpus.set(CPU)?;
                    sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus)?;
                    work(ifindex)
                })
                .join()
                .map_err(|_| anyhow::anyhow!("generator thread panicked"))?
        })
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        for ns in [gen_ns(), target_ns()] {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one's complement sum of `words`, folded: 0xffff over a header with a valid
    /// checksum in it.
    fn folded_sum(bytes: &[u8]) -> u16 {
        let mut sum: u32 = bytes
            .chunks(2)
            .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    /// Whether the IPv4 header's checksum and the TCP or UDP checksum of `frame` hold.
    fn checksums_hold(frame: &[u8]) -> bool {
        let ip = &frame[14..34];
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        let segment = &frame[34..14 + total];
        let mut pseudo = Vec::from(&ip[12..20]);
        pseudo.extend_from_slice(&[0, ip[9]]);
        pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(segment);
        folded_sum(ip) == 0xffff && folded_sum(&pseudo) == 0xffff
    }

    /// `template` as a generator leaves it after writing `low` as the source's low half
    /// (host order, as BPF stores a register).
    fn written(template: &[u8], probe: Probe, low: u16) -> Vec<u8> {
        let mut frame = template.to_vec();
        let mut store = |at: i16, value: u16| {
            let at = at as usize;
            frame[at..at + 2].copy_from_slice(&value.to_ne_bytes());
        };
        store(SOURCE_LOW_AT, low);
        store(IP_ID_AT, !low);
        store(probe.balance_at(), !low);
        frame
    }

    #[test]
    fn every_probe_keeps_both_checksums_valid_for_any_source() {
        for probe in [Probe::TcpSyn(SSH_PORT), Probe::TcpSyn(23), Probe::Udp(53)] {
            let template = template([2, 0, 0, 0, 0, 9], probe);
            if let Probe::TcpSyn(_) = probe {
                assert_eq!(template.len(), 60, "padded to the Ethernet minimum");
            }
            assert_eq!(template[23], probe.proto(), "{probe:?}");
            assert!(
                checksums_hold(&template),
                "the template's checksums, {probe:?}"
            );
            for low in [0u16, 1, 0x00ff, 0x8000, 0xabcd, 0xfffe, 0xffff] {
                let frame = written(&template, probe, low);
                assert!(
                    checksums_hold(&frame),
                    "{probe:?}, source low half {low:#06x}"
                );
                assert_eq!(
                    frame[26..30],
                    [10, 99, low.to_ne_bytes()[0], low.to_ne_bytes()[1]]
                );
            }
        }
    }

    #[test]
    fn sequential_sources_are_a_power_of_two_the_low_half_holds() {
        assert_eq!(source_mask(1).ok(), Some(0));
        assert_eq!(source_mask(8192).ok(), Some(0x1fff));
        assert_eq!(source_mask(MAX_SEQUENTIAL_SOURCES).ok(), Some(0xffff));
        for sources in [0, 3, 1000, MAX_SEQUENTIAL_SOURCES * 2] {
            assert!(source_mask(sources).is_err(), "{sources} sources accepted");
        }
    }

    #[test]
    #[ignore = "needs root: cargo xtask test runs it"]
    fn the_sequential_generator_sends_each_source_once_per_cycle_with_valid_checksums() {
        let sources = 4;
        for probe in [Probe::TcpSyn(SSH_PORT), Probe::Udp(53)] {
            let counter = bpf::array_map(4, 1).expect("an array map");
            let generator = sequential_generator(&counter, sources, probe).expect("loaded");
            let template = template([2, 0, 0, 0, 0, 9], probe);
            let mut lows = Vec::new();
            for _ in 0..3 * sources {
                let mut out = vec![0u8; template.len()];
                let (action, len) = bpf::run_once(&generator, &template, &mut out).expect("run");
                assert_eq!(action, bpf::XDP_TX);
                assert_eq!(len, template.len());
                assert!(checksums_hold(&out), "{probe:?}, frame {}", lows.len());
                lows.push(u16::from_ne_bytes([out[28], out[29]]));
            }
            assert_eq!(lows, [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3], "{probe:?}");
        }
    }
}

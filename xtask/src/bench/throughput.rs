//! Throughput on a real interface: a live-frames generator (BPF_PROG_TEST_RUN with
//! BPF_F_TEST_XDP_LIVE_FRAMES, XDP_TX out of a veth) pinned to one CPU floods the namespace
//! under test, where each candidate filters in turn.

use std::{
    fs::File,
    os::fd::OwnedFd,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use blocker_common::reject::{checksum_add, checksum_finish};
use blocker_tests::{
    frames::{frame, ipv4, udp, IPV4},
    recent_ruleset,
};
use nix::sched::{sched_setaffinity, setns, CloneFlags, CpuSet};
use serde::Serialize;

use super::{bpf, bpf::Insn, sh, Plan};

const GEN_NS: &str = "blkgen";
const TARGET_NS: &str = "blktarget";
const FLOOD_PORT: u16 = 5000;
/// The repeat offender and the template source; the flood varies the last 16 bits.
const OFFENDER: [u8; 4] = [10, 99, 0, 0];
const TARGET_ADDR: &str = "10.98.0.1";

#[derive(Serialize, Clone)]
pub struct Row {
    candidate: String,
    scenario: &'static str,
    mpps: f64,
    /// Of the packets from sources other than the offender.
    attack_dropped: Option<f64>,
    offender_dropped: Option<f64>,
}

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    /// Every packet from the one (blacklisted) source.
    OneSource,
    /// Every packet from a random one of 65,536 sources.
    Flood,
    /// The flood, with 1 in 16 packets from the offender.
    FloodWithOffender,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::OneSource => "one blacklisted source",
            Scenario::Flood => "spoofed flood (65,536 sources)",
            Scenario::FloodWithOffender => "flood + repeat offender",
        }
    }

    fn offender_share(self) -> f64 {
        match self {
            Scenario::OneSource => 1.0,
            Scenario::Flood => 0.0,
            Scenario::FloodWithOffender => 1.0 / 16.0,
        }
    }
}

/// The generator: XDP_TX every frame; for the floods, first write a random low half of the
/// source address and its one's complement into the IP id, which keeps the header checksum
/// valid (the two words always sum to 0xffff).
fn generator(scenario: Scenario) -> Result<OwnedFd> {
    let mut insns = vec![Insn::mov(6, 1)];
    if scenario != Scenario::OneSource {
        let randomize = [
            Insn::and_imm(0, 0xffff),
            Insn::load_u32(2, 6, 0),
            Insn::load_u32(3, 6, 4),
            Insn::mov(4, 2),
            Insn::add_imm(4, 34),
            // Too short: send as it is (skip the three stores).
            Insn::jgt(4, 3, 3),
            // Source address bytes 2..4 (offset 14 + 12 + 2), then the IP id (14 + 4).
            Insn::store_u16(2, 0, 28),
            Insn::xor_imm(0, 0xffff),
            Insn::store_u16(2, 0, 18),
        ];
        insns.push(Insn::call(bpf::HELPER_PRANDOM_U32));
        if scenario == Scenario::FloodWithOffender {
            // 1 in 16: the offender, whose low half is 0. Written every time: live frames
            // keep what an earlier run wrote into a recycled page.
            insns.push(Insn::mov(7, 0));
            insns.push(Insn::and_imm(7, 0xf_0000));
            insns.push(Insn::jne_imm(7, 0, 1));
            insns.push(Insn::mov_imm(0, 0));
        }
        insns.extend(randomize);
    }
    insns.extend([Insn::mov_imm(0, bpf::XDP_TX as i32), Insn::exit()]);
    bpf::load_xdp(&insns)
}

/// The flood's template frame: UDP from the offender to the target, id 0xffff, with a valid
/// IPv4 header checksum (UDP checksum 0: none, which IPv4 allows).
fn template(target_mac: [u8; 6]) -> Vec<u8> {
    let mut ip = ipv4(OFFENDER, 0, 17, &udp(FLOOD_PORT, 18));
    ip[4] = 0xff;
    ip[5] = 0xff;
    let target: std::net::Ipv4Addr = TARGET_ADDR.parse().unwrap_or(std::net::Ipv4Addr::LOCALHOST);
    ip[16..20].copy_from_slice(&target.octets());
    let mut header = [0u8; 20];
    header.copy_from_slice(&ip[..20]);
    let checksum = checksum_finish(checksum_add(0, &header, 0, 20));
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    let mut data = frame(&[IPV4], &ip);
    data[..6].copy_from_slice(&target_mac);
    data
}

fn ip(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    sh("ip", &full)
}

fn in_target(program: &str, args: &[&str]) -> Result<String> {
    let mut full = vec![format!("--net=/run/netns/{TARGET_NS}"), program.to_string()];
    full.extend(args.iter().map(|a| a.to_string()));
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    sh("nsenter", &full)
}

/// The generator's namespace and the target's, joined by a veth pair.
struct Wire {
    gen_ifindex: u32,
    target_mac: [u8; 6],
}

impl Wire {
    fn new() -> Result<Self> {
        for ns in [GEN_NS, TARGET_NS] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            sh("ip", &["netns", "add", ns])?;
        }
        ip(
            GEN_NS,
            &[
                "link", "add", "gen0", "type", "veth", "peer", "name", "tgt0", "netns", TARGET_NS,
            ],
        )?;
        ip(GEN_NS, &["link", "set", "gen0", "up"])?;
        ip(TARGET_NS, &["link", "set", "tgt0", "up"])?;
        ip(
            TARGET_NS,
            &["addr", "add", &format!("{TARGET_ADDR}/8"), "dev", "tgt0"],
        )?;
        // The target's NAPI runs in a thread of its own, so it can use the CPU the generator
        // does not. A veth has NAPI instances once GRO is on.
        in_target("ethtool", &["-K", "tgt0", "gro", "on"])?;
        sh(
            "ip",
            &[
                "netns",
                "exec",
                TARGET_NS,
                "sh",
                "-c",
                "echo 1 > /sys/class/net/tgt0/threaded",
            ],
        )?;
        let link = |ns: &str, dev: &str| -> Result<serde_json::Value> {
            let out = ip(ns, &["-j", "link", "show", dev])?;
            Ok(serde_json::from_str::<serde_json::Value>(&out)?[0].clone())
        };
        let gen = link(GEN_NS, "gen0")?;
        let target = link(TARGET_NS, "tgt0")?;
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

    /// Packets the target's XDP program has seen.
    fn processed(&self) -> Result<u64> {
        let out = in_target("ethtool", &["-S", "tgt0"])?;
        Ok(out
            .lines()
            .filter_map(|line| line.trim().strip_prefix("rx_queue_0_xdp_packets:"))
            .filter_map(|v| v.trim().parse::<u64>().ok())
            .sum())
    }

    /// Sends for `duration` from a thread in the generator namespace pinned to CPU 0.
    fn flood(&self, scenario: Scenario, duration: Duration) -> Result<()> {
        let data = template(self.target_mac);
        let ifindex = self.gen_ifindex;
        std::thread::scope(|scope| {
            scope
                .spawn(move || -> Result<()> {
                    let netns = File::open(format!("/run/netns/{GEN_NS}"))?;
                    setns(netns, CloneFlags::CLONE_NEWNET)?;
                    let mut cpus = CpuSet::new();
                    cpus.set(0)?;
                    sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus)?;
                    let program = generator(scenario)?;
                    let until = Instant::now() + duration;
                    while Instant::now() < until {
                        bpf::test_run(&program, &data, 1 << 18, Some(ifindex))?;
                    }
                    Ok(())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("generator thread panicked"))?
        })
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        for ns in [GEN_NS, TARGET_NS] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Counting rules in the security table, which only sees what every filter accepted.
fn install_pass_counters() -> Result<()> {
    let offender = std::net::Ipv4Addr::from(OFFENDER).to_string();
    in_target(
        "iptables",
        &["-t", "security", "-A", "INPUT", "-s", &offender],
    )?;
    in_target(
        "iptables",
        &["-t", "security", "-A", "INPUT", "!", "-s", &offender],
    )?;
    Ok(())
}

/// Packets the security-table counters saw: (offender, others).
fn passed() -> Result<(u64, u64)> {
    let out = in_target(
        "iptables",
        &["-t", "security", "-L", "INPUT", "-v", "-x", "-n"],
    )?;
    let counts: Vec<u64> = out
        .lines()
        .skip(2)
        .filter_map(|line| line.split_whitespace().next()?.parse().ok())
        .collect();
    match counts[..] {
        [offender, others] => Ok((offender, others)),
        _ => bail!("unexpected iptables counters:\n{out}"),
    }
}

/// What each candidate puts in place in the target namespace.
enum Candidate {
    Pass,
    DropAll,
    Blocker,
    XdpFilter,
    IptablesRaw,
    IptablesRecent,
    Nftables,
}

impl Candidate {
    fn name(&self) -> &'static str {
        match self {
            Candidate::Pass => "no filter (XDP_PASS)",
            Candidate::DropAll => "drop-only XDP (ceiling)",
            Candidate::Blocker => "blocker",
            Candidate::XdpFilter => "xdp-filter",
            Candidate::IptablesRaw => "iptables -t raw DROP",
            Candidate::IptablesRecent => "iptables -m recent (seed)",
            Candidate::Nftables => "nftables set + meter",
        }
    }
}

/// Attaches `program` to the target interface in driver mode, through a temporary pin.
fn attach(program: &OwnedFd) -> Result<()> {
    let path =
        std::path::PathBuf::from(format!("/sys/fs/bpf/blkbench-prog-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    bpf::obj_pin(program, &path)?;
    let result = in_target(
        "ip",
        &[
            "link",
            "set",
            "dev",
            "tgt0",
            "xdpdrv",
            "pinned",
            &path.to_string_lossy(),
        ],
    );
    let _ = std::fs::remove_file(&path);
    result.map(drop)
}

fn detach() {
    let _ = in_target("ip", &["link", "set", "dev", "tgt0", "xdpdrv", "off"]);
}

pub fn run(root: &Path, plan: Plan) -> Result<Vec<Row>> {
    let wire = Wire::new()?;
    install_pass_counters()?;
    let duration = if plan.quick {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(2)
    };
    let blocker = root.join("target/release/blocker");
    let pins = format!("/sys/fs/bpf/blocker-tput-{}", std::process::id());
    let state = std::env::temp_dir().join(format!("blocker-tput-{}.json", std::process::id()));
    let config = std::env::temp_dir().join(format!("blocker-tput-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "[[rules]]\nname = \"flood\"\nproto = \"udp\"\ndport = {FLOOD_PORT}\nhitcount = 3\n\
             seconds = 30\nblacklist_for = \"120s\"\n"
        ),
    )?;
    let blocker_cmd = |args: &[&str]| -> Result<String> {
        let mut full = vec![blocker.to_string_lossy().into_owned()];
        full.extend(args.iter().map(|a| a.to_string()));
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{TARGET_NS}"))
            .args(&full)
            .env("BLOCKER_PIN_DIR", &pins)
            .env("BLOCKER_STATE", &state)
            .env("RUST_LOG", "warn")
            .output()?;
        if !out.status.success() {
            bail!(
                "blocker {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let offender = std::net::Ipv4Addr::from(OFFENDER).to_string();
    let pass = bpf::empty_program()?;
    let drop_all = bpf::drop_program()?;
    let candidates = [
        Candidate::Pass,
        Candidate::DropAll,
        Candidate::Blocker,
        Candidate::XdpFilter,
        Candidate::IptablesRaw,
        Candidate::IptablesRecent,
        Candidate::Nftables,
    ];
    let mut rows = Vec::new();
    for candidate in &candidates {
        for scenario in [
            Scenario::OneSource,
            Scenario::Flood,
            Scenario::FloodWithOffender,
        ] {
            // Set up from scratch for every scenario, so no state carries over.
            match candidate {
                Candidate::Pass
                | Candidate::IptablesRaw
                | Candidate::IptablesRecent
                | Candidate::Nftables => attach(&pass)?,
                Candidate::DropAll => attach(&drop_all)?,
                Candidate::Blocker => {
                    blocker_cmd(&[
                        "load",
                        "--iface",
                        "tgt0",
                        "--config",
                        &config.to_string_lossy(),
                    ])?;
                }
                Candidate::XdpFilter => {
                    in_target(
                        "xdp-filter",
                        &["load", "tgt0", "-p", "allow", "-f", "ipv4", "-m", "native"],
                    )?;
                    in_target("xdp-filter", &["ip", &offender, "-m", "src"])?;
                }
            }
            match candidate {
                Candidate::IptablesRaw => {
                    in_target(
                        "iptables",
                        &[
                            "-t",
                            "raw",
                            "-A",
                            "PREROUTING",
                            "-s",
                            &offender,
                            "-j",
                            "DROP",
                        ],
                    )?;
                }
                Candidate::IptablesRecent => {
                    for rule in recent_ruleset("udp", FLOOD_PORT, 3, 30, 120) {
                        let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
                        in_target("iptables", &rule)?;
                    }
                }
                Candidate::Nftables => {
                    let script = format!(
                        "table inet f {{\n\
                         set blacklist {{ type ipv4_addr; flags dynamic, timeout; timeout 120s; size 1048576; }}\n\
                         chain input {{\n\
                         type filter hook input priority 0;\n\
                         ip saddr @blacklist update @blacklist {{ ip saddr }} drop\n\
                         udp dport {FLOOD_PORT} meter conn size 1048576 {{ ip saddr limit rate over 3/minute burst 3 packets }} add @blacklist {{ ip saddr }} drop\n\
                         }}\n}}\n"
                    );
                    let path =
                        std::env::temp_dir().join(format!("blkbench-{}.nft", std::process::id()));
                    std::fs::write(&path, script)?;
                    let result = in_target("nft", &["-f", &path.to_string_lossy()]);
                    let _ = std::fs::remove_file(&path);
                    result?;
                }
                _ => {}
            }
            // Warm up so a rule has blacklisted the one source before measuring.
            wire.flood(scenario, Duration::from_millis(100))?;
            let (offender_before, others_before) = passed()?;
            let processed_before = wire.processed()?;
            let started = Instant::now();
            wire.flood(scenario, duration)?;
            std::thread::sleep(Duration::from_millis(50));
            let elapsed = started.elapsed().as_secs_f64();
            let processed = (wire.processed()? - processed_before) as f64;
            let (offender_after, others_after) = passed()?;
            let offender_sent = processed * scenario.offender_share();
            let others_sent = processed - offender_sent;
            let share = |passed: u64, sent: f64| {
                (sent > 0.0).then(|| (1.0 - passed as f64 / sent).clamp(0.0, 1.0))
            };
            rows.push(Row {
                candidate: candidate.name().to_string(),
                scenario: scenario.name(),
                mpps: processed / elapsed / 1e6,
                attack_dropped: share(others_after - others_before, others_sent),
                offender_dropped: share(offender_after - offender_before, offender_sent),
            });
            // Tear down.
            match candidate {
                Candidate::Blocker => {
                    blocker_cmd(&["unload"])?;
                    let _ = std::fs::remove_file(&state);
                }
                Candidate::XdpFilter => {
                    in_target("xdp-filter", &["unload", "tgt0"])?;
                }
                Candidate::IptablesRaw => {
                    in_target("iptables", &["-t", "raw", "-F"])?;
                    detach();
                }
                Candidate::IptablesRecent => {
                    in_target("iptables", &["-F", "INPUT"])?;
                    in_target("iptables", &["-F", "blacklistdrop"])?;
                    in_target("iptables", &["-X", "blacklistdrop"])?;
                    detach();
                }
                Candidate::Nftables => {
                    in_target("nft", &["delete", "table", "inet", "f"])?;
                    detach();
                }
                Candidate::Pass | Candidate::DropAll => detach(),
            }
            println!(
                "bench: {} / {}: {:.2} Mpps",
                candidate.name(),
                scenario.name(),
                rows.last().map_or(0.0, |r| r.mpps)
            );
        }
    }
    let _ = std::fs::remove_file(&config);
    let _ = std::fs::remove_dir_all(&pins);
    Ok(rows)
}

pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "\n## Throughput on a veth (live frames, generator pinned to one CPU)\n\n\
         Processed packets per second at the target's XDP hook; drop shares from counters in \
         the security table, which sees only what every filter let through.\n\n\
         | candidate | scenario | Mpps | attack dropped | offender dropped |\n\
         | --- | --- | ---: | ---: | ---: |\n",
    );
    let pct = |v: Option<f64>| v.map_or("".to_string(), |v| format!("{:.1}%", v * 100.0));
    for row in rows {
        out += &format!(
            "| {} | {} | {:.2} | {} | {} |\n",
            row.candidate,
            row.scenario,
            row.mpps,
            pct(row.attack_dropped),
            pct(row.offender_dropped)
        );
    }
    out
}

//! Throughput on a real interface, every candidate measured the same way: the same frames
//! from the same live-frames generator (see [`wire`]) on the same CPU, each candidate set up
//! from scratch, warmed up, then measured; the candidates take turns in interleaved rounds
//! (the order reversed every other round) and the median round is reported, with ratios to
//! the drop-only program and to xdp-filter from the same run.

pub mod rule_events;
mod wire;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Result};
use blocker_tests::recent_ruleset;
use serde::Serialize;

use super::{bpf, median, progsize, Plan};
use wire::{in_target, Traffic, Wire, OFFENDER, SSH_PORT, TARGET_IFACE};

#[derive(Serialize, Clone)]
pub struct Row {
    candidate: &'static str,
    class: &'static str,
    /// Million frames per second, generator plus target on one CPU, of each round.
    rounds: Vec<f64>,
    /// The median round.
    mpps: f64,
    of_drop_only: Option<f64>,
    of_xdp_filter: Option<f64>,
    /// Of the frames sent, the share the target's XDP hook saw (below 1: the veth ring
    /// overflowed and the rate above overstates).
    delivered: f64,
    /// Of the frames the target saw, the share that did not reach the local stack.
    dropped: f64,
    /// Translated instructions of the XDP program that decides.
    insns: Option<u64>,
}

/// What each candidate puts in place in the target namespace.
#[derive(Clone, Copy, PartialEq)]
enum Candidate {
    DropOnly,
    XdpFilter,
    /// The built-in ssh rule; the warm-up gets the sources blacklisted.
    BlockerRule,
    /// The same, with the build `cargo xtask bench --compare-with` names.
    OtherBlockerRule,
    /// A manual ban of the one source.
    BlockerBan,
    IptablesRaw,
    IptablesRecent,
    Nftables,
}

impl Candidate {
    fn name(self) -> &'static str {
        match self {
            Candidate::DropOnly => "drop-only XDP (ceiling)",
            Candidate::XdpFilter => "xdp-filter (source listed)",
            Candidate::BlockerRule => "blocker, ssh rule (dynamic blacklist)",
            Candidate::OtherBlockerRule => "compared build, ssh rule (dynamic blacklist)",
            Candidate::BlockerBan => "blocker, manual ban",
            Candidate::IptablesRaw => "iptables -t raw DROP",
            Candidate::IptablesRecent => "iptables -m recent (seed ruleset)",
            Candidate::Nftables => "nftables set + meter",
        }
    }
}

fn class_name(traffic: Traffic) -> &'static str {
    match traffic {
        Traffic::OneSource => "one blacklisted source",
        Traffic::SynFlood => "spoofed SYN flood, 65,536 sources, ssh port",
    }
}

/// Every measurement of a round, in order: with a compared build, the dynamic blacklist's
/// classes of both builds and the peers they are read against.
fn measurements(plan: Plan, compared: bool) -> Vec<(Candidate, Traffic)> {
    use Candidate::*;
    if compared {
        return vec![
            (DropOnly, Traffic::OneSource),
            (XdpFilter, Traffic::OneSource),
            (BlockerRule, Traffic::OneSource),
            (OtherBlockerRule, Traffic::OneSource),
            (DropOnly, Traffic::SynFlood),
            (BlockerRule, Traffic::SynFlood),
            (OtherBlockerRule, Traffic::SynFlood),
        ];
    }
    let mut runs = vec![
        (DropOnly, Traffic::OneSource),
        (XdpFilter, Traffic::OneSource),
        (BlockerRule, Traffic::OneSource),
        (BlockerBan, Traffic::OneSource),
        (DropOnly, Traffic::SynFlood),
        (BlockerRule, Traffic::SynFlood),
    ];
    if !plan.quick {
        runs.extend([
            (IptablesRaw, Traffic::OneSource),
            (IptablesRecent, Traffic::OneSource),
            (Nftables, Traffic::OneSource),
            (IptablesRecent, Traffic::SynFlood),
            (Nftables, Traffic::SynFlood),
        ]);
    }
    runs
}

/// The target namespace's candidates: blocker's files and the two trivial programs.
struct Target {
    blocker: PathBuf,
    /// The build compared with `blocker`, if any.
    other: Option<PathBuf>,
    pins: PathBuf,
    state: PathBuf,
    pass: std::os::fd::OwnedFd,
    drop_all: std::os::fd::OwnedFd,
    /// Holds the state file and what blocker writes beside it.
    _dir: tempfile::TempDir,
}

impl Target {
    fn new(root: &Path, other: Option<&Path>) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        Ok(Self {
            blocker: super::lab::blocker_binary(root),
            other: other.map(Path::to_path_buf),
            pins: PathBuf::from(format!("/sys/fs/bpf/blocker-tput-{}", std::process::id())),
            state: dir.path().join("state.db"),
            pass: bpf::empty_program()?,
            drop_all: bpf::drop_program()?,
            _dir: dir,
        })
    }

    fn blocker(&self, args: &[&str]) -> Result<()> {
        self.run_build(&self.blocker, args)
    }

    /// The blocker build that sets `candidate` up and tears it down.
    fn build_for(&self, candidate: Candidate) -> Result<&Path> {
        match (candidate, &self.other) {
            (Candidate::OtherBlockerRule, Some(other)) => Ok(other),
            (Candidate::OtherBlockerRule, None) => bail!("no build to compare with"),
            _ => Ok(&self.blocker),
        }
    }

    fn run_build(&self, build: &Path, args: &[&str]) -> Result<()> {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", wire::target_ns()))
            .arg(build)
            .args(args)
            .env("BLOCKER_PIN_DIR", &self.pins)
            .env("BLOCKER_STATE", &self.state)
            .env("RUST_LOG", "warn")
            .output()?;
        if !out.status.success() {
            bail!(
                "blocker {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn set_up(&self, candidate: Candidate) -> Result<()> {
        let offender = std::net::Ipv4Addr::from(OFFENDER).to_string();
        let port = SSH_PORT.to_string();
        match candidate {
            Candidate::DropOnly => attach(&self.drop_all),
            Candidate::XdpFilter => {
                in_target(
                    "xdp-filter",
                    &[
                        "load",
                        TARGET_IFACE,
                        "-p",
                        "allow",
                        "-f",
                        "ipv4",
                        "-m",
                        "native",
                    ],
                )?;
                in_target("xdp-filter", &["ip", &offender, "-m", "src"]).map(drop)
            }
            // No config: the built-in ssh rule (3 new connections in 30 s).
            Candidate::BlockerRule | Candidate::OtherBlockerRule => self.run_build(
                self.build_for(candidate)?,
                &["load", "--iface", TARGET_IFACE],
            ),
            Candidate::BlockerBan => {
                self.blocker(&["load", "--iface", TARGET_IFACE])?;
                self.blocker(&["ban", &offender])
            }
            Candidate::IptablesRaw => {
                attach(&self.pass)?;
                raw_drop(&offender)
            }
            Candidate::IptablesRecent => {
                attach(&self.pass)?;
                for rule in recent_ruleset("tcp", SSH_PORT, 3, 30, 120) {
                    let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
                    in_target("iptables", &rule)?;
                }
                Ok(())
            }
            Candidate::Nftables => {
                attach(&self.pass)?;
                let script = format!(
                    "table inet f {{\n\
                     set blacklist {{ type ipv4_addr; flags dynamic, timeout; timeout 120s; size 1048576; }}\n\
                     chain input {{\n\
                     type filter hook input priority 0;\n\
                     ip saddr @blacklist update @blacklist {{ ip saddr }} drop\n\
                     tcp dport {port} meter conn size 1048576 {{ ip saddr limit rate over 3/minute burst 3 packets }} add @blacklist {{ ip saddr }} drop\n\
                     }}\n}}\n"
                );
                let path =
                    std::env::temp_dir().join(format!("blkbench-{}.nft", std::process::id()));
                std::fs::write(&path, script)?;
                let result = in_target("nft", &["-f", &path.to_string_lossy()]);
                let _ = std::fs::remove_file(&path);
                result.map(drop)
            }
        }
    }

    fn tear_down(&self, candidate: Candidate) -> Result<()> {
        match candidate {
            Candidate::DropOnly => {}
            Candidate::XdpFilter => {
                in_target("xdp-filter", &["unload", TARGET_IFACE])?;
            }
            Candidate::BlockerRule | Candidate::BlockerBan | Candidate::OtherBlockerRule => {
                self.run_build(self.build_for(candidate)?, &["unload"])?;
                for suffix in ["", "-wal", "-shm", ".last-good"] {
                    let mut path = self.state.clone().into_os_string();
                    path.push(suffix);
                    let _ = std::fs::remove_file(path);
                }
            }
            Candidate::IptablesRaw => {
                in_target("iptables", &["-t", "raw", "-F"])?;
            }
            Candidate::IptablesRecent => {
                in_target("iptables", &["-F", "INPUT"])?;
                in_target("iptables", &["-F", "blacklistdrop"])?;
                in_target("iptables", &["-X", "blacklistdrop"])?;
            }
            Candidate::Nftables => {
                in_target("nft", &["delete", "table", "inet", "f"])?;
            }
        }
        // Whatever is left on the interface (the drop-only or the pass program).
        let _ = in_target("ip", &["link", "set", "dev", TARGET_IFACE, "xdpdrv", "off"]);
        Ok(())
    }

    /// Instructions of the program deciding for `candidate`, set up now.
    fn insns(&self, candidate: Candidate) -> Result<Option<u64>> {
        Ok(match candidate {
            Candidate::XdpFilter => Some(progsize::xdp_filter_insns()?),
            Candidate::DropOnly
            | Candidate::BlockerRule
            | Candidate::OtherBlockerRule
            | Candidate::BlockerBan => Some(progsize::xlated_insns(attached_id()?)?),
            _ => None,
        })
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

/// Drops frames from `sources` at the target stack's first hook (iptables' raw PREROUTING).
fn raw_drop(sources: &str) -> Result<()> {
    let rule = ["-t", "raw", "-A", "PREROUTING", "-s", sources, "-j", "DROP"];
    in_target("iptables", &rule).map(drop)
}

/// The id of the XDP program on the target interface.
fn attached_id() -> Result<u32> {
    bpf::xdp_prog_id(&wire::target_ns(), TARGET_IFACE)
}

/// Attaches `program` to the target interface in driver mode, through a temporary pin.
fn attach(program: &std::os::fd::OwnedFd) -> Result<()> {
    let path = PathBuf::from(format!("/sys/fs/bpf/blkbench-prog-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    bpf::obj_pin(program, &path)?;
    let result = in_target(
        "ip",
        &[
            "link",
            "set",
            "dev",
            TARGET_IFACE,
            "xdpdrv",
            "pinned",
            &path.to_string_lossy(),
        ],
    );
    let _ = std::fs::remove_file(&path);
    result.map(drop)
}

/// Frames sent before measuring: enough for a rate rule to have blacklisted the sources (the
/// flood's 65,536 random sources get about 30 frames each), so what is measured is the
/// steady state.
fn warm_up_frames(traffic: Traffic) -> u64 {
    match traffic {
        Traffic::OneSource => 100_000,
        Traffic::SynFlood => 2_000_000,
    }
}

/// One round's figures for one measurement.
struct Sample {
    mpps: f64,
    delivered: f64,
    dropped: f64,
}

pub fn run(root: &Path, plan: Plan, other: Option<&Path>) -> Result<Vec<Row>> {
    let wire = Wire::new()?;
    let target = Target::new(root, other)?;
    let (duration, rounds) = if plan.quick {
        (Duration::from_millis(250), 2)
    } else {
        (Duration::from_secs(1), 5)
    };
    let runs = measurements(plan, other.is_some());
    let mut samples: Vec<Vec<Sample>> = runs.iter().map(|_| Vec::new()).collect();
    let mut insns = vec![None; runs.len()];
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..runs.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for index in order {
            let (candidate, traffic) = runs[index];
            target.set_up(candidate)?;
            let measured = wire
                .flood(traffic, warm_up_frames(traffic), duration)
                .and_then(|flood| {
                    if round == 0 {
                        insns[index] = target.insns(candidate)?;
                    }
                    Ok(flood)
                });
            // Torn down whatever happened, so a failure leaves nothing loaded.
            target.tear_down(candidate)?;
            let flood = measured?;
            let seen = flood.counts.seen as f64;
            let delivered = (seen / flood.generated as f64).min(1.0);
            let sample = Sample {
                mpps: 1e3 / flood.ns_per_frame * delivered,
                delivered,
                dropped: 1.0 - (flood.counts.passed as f64 / seen.max(1.0)).min(1.0),
            };
            println!(
                "bench: round {} {} / {}: {:.2} Mpps, {:.0}% delivered, {:.1}% dropped",
                round + 1,
                candidate.name(),
                class_name(traffic),
                sample.mpps,
                sample.delivered * 100.0,
                sample.dropped * 100.0
            );
            samples[index].push(sample);
        }
    }
    // Ratios round by round (a peer and a candidate measured minutes apart share less of
    // the machine's drift than two in the same round), then their median.
    let ratio_to = |index: usize, peer: Candidate| -> Option<f64> {
        let traffic = runs[index].1;
        let peer_index = runs.iter().position(|&run| run == (peer, traffic))?;
        let ratios = samples[index]
            .iter()
            .zip(&samples[peer_index])
            .map(|(own, theirs)| own.mpps / theirs.mpps)
            .collect();
        Some(median(ratios))
    };
    let rows = runs
        .iter()
        .enumerate()
        .map(|(index, &(candidate, traffic))| {
            let samples = &samples[index];
            let of = |pick: fn(&Sample) -> f64| median(samples.iter().map(pick).collect());
            Row {
                candidate: candidate.name(),
                class: class_name(traffic),
                rounds: samples.iter().map(|s| s.mpps).collect(),
                mpps: of(|s| s.mpps),
                of_drop_only: ratio_to(index, Candidate::DropOnly),
                of_xdp_filter: ratio_to(index, Candidate::XdpFilter),
                delivered: of(|s| s.delivered),
                dropped: of(|s| s.dropped),
                insns: insns[index],
            }
        })
        .collect();
    Ok(rows)
}

/// blocker's dynamic-blacklist (ssh rule) figures the issue 11 goals name.
pub struct BlockerRuleRatios {
    pub one_source_of_drop_only: Option<f64>,
    pub one_source_of_xdp_filter: Option<f64>,
    pub flood_of_drop_only: Option<f64>,
}

pub fn blocker_rule_ratios(rows: &[Row]) -> BlockerRuleRatios {
    let row = |traffic: Traffic| {
        rows.iter().find(|row| {
            row.candidate == Candidate::BlockerRule.name() && row.class == class_name(traffic)
        })
    };
    BlockerRuleRatios {
        one_source_of_drop_only: row(Traffic::OneSource).and_then(|r| r.of_drop_only),
        one_source_of_xdp_filter: row(Traffic::OneSource).and_then(|r| r.of_xdp_filter),
        flood_of_drop_only: row(Traffic::SynFlood).and_then(|r| r.of_drop_only),
    }
}

pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "\n## Throughput on a veth (live frames, one CPU)\n\n\
         Every candidate gets the same frames (a TCP SYN to port 22, 60 bytes with padding) from the same \
         generator: BPF_PROG_TEST_RUN with live frames XDP_TXs them out of a veth into the \
         target namespace, from a thread pinned to CPU 0. The target veth has no NAPI thread, \
         so its XDP program (and the stack, for what it passes) runs in the softirq on that \
         same CPU: the rate is generator plus target, timed by the kernel per call of 8,192 \
         frames, the median call taken. Each candidate is set up from scratch and warmed up \
         (100,000 frames; 2,000,000 for the flood, about 30 per source, so that rate rules have \
         blacklisted what they will), then measured; the candidates take \
         turns in interleaved rounds (the order reversed every other round); Mpps is the median \
         round (every round is in the JSON report), the ratios the median of the \
         same-round ratios. \"Dropped\" is the share of frames that never reached \
         the local stack (a security-table counter sees the rest). Instructions: translated \
         size of the deciding XDP program.\n\n\
         | class | candidate | Mpps | of drop-only | of xdp-filter | dropped | insns |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let ratio = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.2}"));
    let mut sorted: Vec<&Row> = rows.iter().collect();
    sorted.sort_by_key(|r| r.class != class_name(Traffic::OneSource));
    for row in sorted {
        out += &format!(
            "| {} | {} | {:.2} | {} | {} | {:.1}% | {} |\n",
            row.class,
            row.candidate,
            row.mpps,
            ratio(row.of_drop_only),
            ratio(row.of_xdp_filter),
            row.dropped * 100.0,
            row.insns.map_or(String::new(), |n| n.to_string()),
        );
    }
    let short: Vec<String> = rows
        .iter()
        .filter(|r| r.delivered < 0.99)
        .map(|r| {
            format!(
                "{} / {} ({:.0}%)",
                r.candidate,
                r.class,
                r.delivered * 100.0
            )
        })
        .collect();
    if !short.is_empty() {
        out += &format!(
            "\nThe target saw fewer frames than were sent for: {} (the rate counts only what \
             it saw).\n",
            short.join(", ")
        );
    }
    out
}

/// The compared build's throughput beside this build's, round by round.
pub fn compare_markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "\n## Throughput on a veth: this build against the compared one\n\n\
         Mpps of the median round; \"compared ÷ this\" is the median of the same-round \
         ratios, and the rounds in which the compared build was the faster are counted.\n\n\
         | class | this build | of drop-only | compared build | of drop-only | compared ÷ this | rounds compared faster |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let find = |candidate: Candidate, class: &str| {
        rows.iter()
            .find(|row| row.candidate == candidate.name() && row.class == class)
    };
    for traffic in [Traffic::OneSource, Traffic::SynFlood] {
        let class = class_name(traffic);
        let (Some(own), Some(theirs)) = (
            find(Candidate::BlockerRule, class),
            find(Candidate::OtherBlockerRule, class),
        ) else {
            continue;
        };
        let ratios: Vec<f64> = theirs
            .rounds
            .iter()
            .zip(&own.rounds)
            .map(|(t, o)| t / o)
            .collect();
        let faster = ratios.iter().filter(|r| **r > 1.0).count();
        let of = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.2}"));
        out += &format!(
            "| {class} | {:.2} | {} | {:.2} | {} | {:.3} | {faster} of {} |\n",
            own.mpps,
            of(own.of_drop_only),
            theirs.mpps,
            of(theirs.of_drop_only),
            median(ratios.clone()),
            ratios.len()
        );
    }
    out
}

//! Rule events as a stream of live traffic pays for them. The cost table's rule rows time one
//! BPF_PROG_TEST_RUN call per source, a cold run each; here the live-frames wire sends a
//! stream of frames through blocker on the target, each frame from a different source, and
//! the kernel's run-time statistics (bpf_stats) time the target's XDP program alone. The
//! floor is the empty program attached in blocker's place, fed the same frames, timed the
//! same way.

use std::os::fd::OwnedFd;

use anyhow::{bail, Context, Result};
use aya::sys::{enable_stats, Stats};
use serde::Serialize;

use super::{
    super::{bpf, costs, median, Plan},
    attach, attached_id, raw_drop,
    wire::{
        first_rule_packets, in_target, sequential_generator, Probe, Wire, FLOOD_SOURCES, SSH_PORT,
        TARGET_IFACE,
    },
    Candidate, Target,
};

/// One pass of a measurement: one frame from each of the sources, in the same order.
#[derive(Clone, Copy)]
enum Pass {
    /// Every source new to blocker: its first rule event, an insert into the history.
    NewSource,
    /// The same sources again: a second event each, below the ssh rule's hitcount of 3.
    KnownSource,
    /// TCP to a port no rule watches: the rule loop without a history.
    NoRulePort,
    /// UDP, which no rule covers: no rule loop at all.
    Uncovered,
    /// The same UDP frames from one source: what the distinct sources add to the path
    /// without per-source state (cold lookups) is then measured, not guessed.
    UncoveredOneSource,
}

/// In the order measured: the known-source pass must follow the new-source one.
const PASSES: [Pass; 5] = [
    Pass::NewSource,
    Pass::KnownSource,
    Pass::NoRulePort,
    Pass::Uncovered,
    Pass::UncoveredOneSource,
];

/// The live rows the issue 11 goals read.
pub const KNOWN_SOURCE: &str = "rule event, known source (live)";
pub const NEW_SOURCE: &str = "rule event, new source (live)";

impl Pass {
    fn class(self) -> &'static str {
        match self {
            Pass::NewSource => NEW_SOURCE,
            Pass::KnownSource => KNOWN_SOURCE,
            Pass::NoRulePort => "rule protocol, no rule matches (live)",
            Pass::Uncovered => "protocol no rule covers (live)",
            Pass::UncoveredOneSource => "protocol no rule covers, one source (live)",
        }
    }

    /// The cost table's single-run row of the same path.
    fn single_run_class(self) -> Option<&'static str> {
        match self {
            Pass::NewSource => Some(costs::NEW_SOURCE_SINGLE),
            Pass::KnownSource => Some(costs::KNOWN_SOURCE_SINGLE),
            Pass::NoRulePort => Some(costs::NO_RULE_SINGLE),
            Pass::Uncovered => Some(costs::UNCOVERED_SINGLE),
            Pass::UncoveredOneSource => None,
        }
    }

    /// Sources the pass takes, of the measurement's `sources`.
    fn sources(self, sources: u32) -> u32 {
        match self {
            Pass::UncoveredOneSource => 1,
            _ => sources,
        }
    }

    fn probe(self) -> Probe {
        match self {
            Pass::NewSource | Pass::KnownSource => Probe::TcpSyn(SSH_PORT),
            Pass::NoRulePort => Probe::TcpSyn(costs::NO_RULE_PORT),
            Pass::Uncovered | Pass::UncoveredOneSource => Probe::Udp(53),
        }
    }
}

/// A program's run-time statistics at one moment.
#[derive(Clone, Copy, Debug, PartialEq)]
struct RunStats {
    ns: u64,
    runs: u64,
}

/// ns per run between two readings of one program; None if it did not run in between.
fn ns_per_run(before: RunStats, after: RunStats) -> Option<f64> {
    let runs = after.runs.checked_sub(before.runs).filter(|&n| n > 0)?;
    let ns = after.ns.checked_sub(before.ns)?;
    Some(ns as f64 / runs as f64)
}

/// The statistics of `program` now.
fn run_stats(program: &OwnedFd) -> Result<RunStats> {
    let (ns, runs) = bpf::run_stats(program)?;
    Ok(RunStats { ns, runs })
}

/// Frames from the sources that reached the target's stack (the raw-table drop of [`run`]).
fn arrived_at_stack() -> Result<u64> {
    first_rule_packets("raw", "PREROUTING")
}

/// What one pass measured.
struct PassSample {
    /// ns per frame: the median over the pass's readings, one per call of the wire.
    ns: f64,
    /// Of the frames sent, the share the target's program ran on.
    delivered: f64,
    /// Of the frames the program ran on, the share that reached the stack.
    passed: f64,
}

/// The frames and generators of one measurement, and how many sources each pass takes.
struct Stream {
    sources: u32,
    /// Per pass: its generator and its template frame.
    passes: Vec<(OwnedFd, Vec<u8>)>,
}

impl Stream {
    /// One counter for every generator: each pass sends `sources` frames, so every pass
    /// starts again at the first source.
    fn new(wire: &Wire, sources: u32) -> Result<Self> {
        let counter = bpf::array_map(4, 1)?;
        let passes = PASSES
            .iter()
            .map(|pass| {
                let generator =
                    sequential_generator(&counter, pass.sources(sources), pass.probe())?;
                Ok((generator, wire.frame(pass.probe())))
            })
            .collect::<Result<_>>()?;
        Ok(Self { sources, passes })
    }

    /// Every pass once, through the program with `id` on the target, after one unmeasured
    /// pass of the last (which touches no per-source state) to warm the path up.
    fn measure(&self, wire: &Wire, id: u32) -> Result<Vec<PassSample>> {
        let program = bpf::prog_by_id(id)?;
        if let Some((generator, frame)) = self.passes.last() {
            wire.send_frames(generator, frame, self.sources)?;
        }
        self.passes
            .iter()
            .map(|(generator, frame)| {
                let arrived = arrived_at_stack()?;
                let mut readings = vec![run_stats(&program)?];
                // Read after every call of the wire: the median reading leaves out a burst of
                // the host's other work that one reading over the whole pass would take in
                // (this VM's rounds moved by 2x that way). Smaller calls would give more
                // readings but measure colder frames: 2,048 a call took 60 ns more a frame.
                wire.send_frames_observed(generator, frame, self.sources, || {
                    readings.push(run_stats(&program)?);
                    Ok(())
                })?;
                let arrived_after = arrived_at_stack()?;
                let per_reading: Vec<f64> = readings
                    .windows(2)
                    .filter_map(|pair| ns_per_run(pair[0], pair[1]))
                    .collect();
                let (Some(&stats), Some(&stats_after)) = (readings.first(), readings.last()) else {
                    bail!("no reading of the target's program");
                };
                if per_reading.is_empty() {
                    bail!("the target's program ran on none of the frames");
                }
                let runs = (stats_after.runs - stats.runs) as f64;
                Ok(PassSample {
                    ns: median(per_reading),
                    delivered: runs / f64::from(self.sources),
                    passed: (arrived_after - arrived) as f64 / runs,
                })
            })
            .collect()
    }
}

/// One pass's figures over the rounds.
#[derive(Serialize, Clone)]
pub struct Row {
    pub class: &'static str,
    single_run_class: Option<&'static str>,
    verdict: &'static str,
    /// Median round, ns per frame of blocker's program.
    ns: f64,
    /// Median round, ns per frame of the empty program.
    floor_ns: f64,
    /// Median of the same-round differences, blocker minus the empty program.
    pub above_floor: f64,
    rounds_above_floor: Vec<f64>,
    /// The least share of the frames sent that a program ran on, over rounds and both.
    delivered: f64,
    /// Distinct sources of the pass's frames (every pass sends the first row's count).
    sources: u32,
}

/// The verdict the local stack saw: the share of frames that reached it.
fn verdict(passed: f64) -> &'static str {
    match passed {
        p if p >= 0.99 => "pass",
        p if p <= 0.01 => "drop",
        _ => "mixed",
    }
}

/// Sources per pass: at most half the history's capacity (65,536), so that its LRU, which
/// evicts before it is full, keeps every source of the first pass for the second.
fn sources(plan: Plan) -> u32 {
    if plan.quick {
        1 << 13
    } else {
        1 << 15
    }
}

/// The live rule-event rows of blocker and, when given, of a second build.
pub struct RuleEvents {
    pub rows: Vec<Row>,
    /// The second build's rows (`cargo xtask bench --compare-with`), from the same rounds.
    pub other: Option<Vec<Row>>,
}

/// Each build is loaded fresh each round (its built-in ssh rule alone) and measured right
/// after the empty program on the target; two builds take turns, the order reversed every
/// other round.
pub fn run(
    root: &std::path::Path,
    plan: Plan,
    other: Option<&std::path::Path>,
) -> Result<RuleEvents> {
    let started = std::time::Instant::now();
    let wire = Wire::new()?;
    let target = Target::new(root, other)?;
    let stream = Stream::new(&wire, sources(plan))?;
    // The stack drops what the target's program passes at its first hook, and counts it
    // there: its answers (a TCP reset to each SYN, an ICMP error and a peer entry per UDP
    // source) would fill the caches between frames, and differently per pass.
    raw_drop(FLOOD_SOURCES)?;
    // Only while this is held: the rest of the bench runs with the statistics off.
    let _stats = enable_stats(Stats::RunTime).context("enabling bpf_stats (BPF_ENABLE_STATS)")?;
    let mut builds = vec![Candidate::BlockerRule];
    if other.is_some() {
        builds.push(Candidate::OtherBlockerRule);
    }
    // Per build, each round's samples and those of the empty program measured just before:
    // every build follows the empty program, never another build (whose freed maps the next
    // load's allocations may find warm: in an A/A run the build that always followed the
    // other took 20 ns less per new source in 11 of 14 rounds).
    let mut own_rounds: Vec<Vec<Vec<PassSample>>> = builds.iter().map(|_| Vec::new()).collect();
    let mut floor_rounds: Vec<Vec<Vec<PassSample>>> = builds.iter().map(|_| Vec::new()).collect();
    for round in 0..plan.rounds {
        let mut order: Vec<usize> = (0..builds.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for build in order {
            attach(&target.pass)?;
            let floor = attached_id().and_then(|id| stream.measure(&wire, id));
            in_target("ip", &["link", "set", "dev", TARGET_IFACE, "xdpdrv", "off"])?;
            floor_rounds[build].push(floor?);
            target.set_up(builds[build])?;
            let measured = attached_id().and_then(|id| stream.measure(&wire, id));
            target.tear_down(builds[build])?;
            own_rounds[build].push(measured?);
        }
        for (build, candidate) in builds.iter().enumerate() {
            let line: Vec<String> = PASSES
                .iter()
                .enumerate()
                .map(|(at, pass)| {
                    let own = &own_rounds[build][round][at];
                    let floor = &floor_rounds[build][round][at];
                    format!("{} {:.1} ns", pass.class(), own.ns - floor.ns)
                })
                .collect();
            let label = match candidate {
                Candidate::OtherBlockerRule => " (the compared build)",
                _ => "",
            };
            println!(
                "bench: live rule events, round {}{label}, above the empty program: {}",
                round + 1,
                line.join(", ")
            );
        }
    }
    let rows = |build: usize| -> Vec<Row> {
        PASSES
            .iter()
            .enumerate()
            .map(|(at, pass)| {
                pass_row(
                    *pass,
                    at,
                    &own_rounds[build],
                    &floor_rounds[build],
                    stream.sources,
                )
            })
            .collect()
    };
    let result = RuleEvents {
        rows: rows(0),
        other: (builds.len() > 1).then(|| rows(1)),
    };
    println!(
        "bench: live rule events took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(result)
}

/// The row of `pass` (at index `at` of [`PASSES`]) from a build's rounds and the floor's.
fn pass_row(
    pass: Pass,
    at: usize,
    own: &[Vec<PassSample>],
    floor: &[Vec<PassSample>],
    sources: u32,
) -> Row {
    let own: Vec<&PassSample> = own.iter().map(|r| &r[at]).collect();
    let floor: Vec<&PassSample> = floor.iter().map(|r| &r[at]).collect();
    let differences: Vec<f64> = own.iter().zip(&floor).map(|(o, f)| o.ns - f.ns).collect();
    Row {
        class: pass.class(),
        single_run_class: pass.single_run_class(),
        verdict: verdict(median(own.iter().map(|s| s.passed).collect())),
        ns: median(own.iter().map(|s| s.ns).collect()),
        floor_ns: median(floor.iter().map(|s| s.ns).collect()),
        above_floor: median(differences.clone()),
        rounds_above_floor: differences,
        delivered: own
            .iter()
            .chain(&floor)
            .map(|s| s.delivered)
            .fold(f64::INFINITY, f64::min),
        sources: pass.sources(sources),
    }
}

/// This build's rows beside the compared build's, round by round: the difference of two
/// builds measured in the same round shares that round's machine, which a busy VM moves
/// by more than most changes measured.
pub fn compare_markdown(rows: &[Row], other: &[Row]) -> String {
    let mut out = String::from(
        "\n## Rule events in a stream of live frames: this build against the compared one\n\n\
         ns above the empty program (medians over the rounds); \"compared − this\" is the \
         median of the same-round differences, and the rounds in which the compared build \
         was the faster are counted.\n\n\
         | class | this build | compared build | compared − this | rounds compared faster |\n\
         | --- | ---: | ---: | ---: | ---: |\n",
    );
    for (own, theirs) in rows.iter().zip(other) {
        let differences: Vec<f64> = theirs
            .rounds_above_floor
            .iter()
            .zip(&own.rounds_above_floor)
            .map(|(t, o)| t - o)
            .collect();
        let faster = differences.iter().filter(|d| **d < 0.0).count();
        out += &format!(
            "| {} | {:.1} | {:.1} | {:+.1} | {faster} of {} |\n",
            own.class,
            own.above_floor,
            theirs.above_floor,
            median(differences.clone()),
            differences.len()
        );
    }
    out
}

/// The live rule-event section, beside the single-run rows of `costs` from the same run.
pub fn markdown(rows: &[Row], costs: &[costs::Cost]) -> String {
    let sources = rows.first().map_or(0, |row| row.sources);
    let mut out = format!(
        "\n## Rule events in a stream of live frames (bpf_stats)\n\n\
         The live-frames wire of the throughput section sends {sources} frames per pass, each \
         from a different source in the same order every pass; pass 1 meets every source new \
         (a history insert), pass 2 the same sources again (a second event, below the ssh \
         rule's hitcount of 3), then a TCP port no rule watches, UDP, which no rule \
         covers, and the same UDP frames from one source (the share of the UDP row that \
         distinct sources cost: cold per-source lookups). The kernel's run-time statistics (BPF_ENABLE_STATS, held only for this \
         measure) time the target's XDP program alone: ns per frame = run time / runs, read \
         after every call of the generator (8,192 frames), the median reading of the pass \
         taken (a burst of the host's other work then moves one reading, not the pass). blocker is loaded fresh each round with its built-in ssh rule and nothing \
         else; what it passes the target's stack drops at its first hook (an iptables raw \
         PREROUTING rule, whose counter gives the verdict), so no reply work fills the caches \
         between frames; the floor is the empty program attached in its place just before, fed the same frames; \
         \"above floor\" is the median of the same-round differences. \"Single runs\" is the \
         cost table's row for the same path (one BPF_PROG_TEST_RUN call per source, above \
         the single-run floor), from the same run. The issue 11 rule-event goals read the \
         live rows.\n\n\
         | class | verdict | ns | empty program ns | above floor | single runs above floor |\n\
         | --- | --- | ---: | ---: | ---: | ---: |\n"
    );
    for row in rows {
        let single = costs
            .iter()
            .find(|cost| Some(cost.class.as_str()) == row.single_run_class)
            .map_or(String::new(), |cost| format!("{:.1}", cost.above_floor));
        out += &format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {single} |\n",
            row.class, row.verdict, row.ns, row.floor_ns, row.above_floor
        );
    }
    let short: Vec<String> = rows
        .iter()
        .filter(|row| row.delivered < 0.99)
        .map(|row| format!("{} ({:.0}%)", row.class, row.delivered * 100.0))
        .collect();
    if !short.is_empty() {
        out += &format!(
            "\nIn some round a program ran on fewer frames than were sent for: {} (the ns are \
             per frame it ran on; sources it missed met the next pass new).\n",
            short.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns_per_run_is_the_time_between_readings_over_the_runs_between_them() {
        let before = RunStats {
            ns: 1_000,
            runs: 10,
        };
        let after = RunStats {
            ns: 1_000 + 8_192 * 150,
            runs: 10 + 8_192,
        };
        assert_eq!(ns_per_run(before, after), Some(150.0));
        assert_eq!(ns_per_run(before, before), None, "no run in between");
        assert_eq!(ns_per_run(after, before), None, "readings out of order");
    }

    #[test]
    fn the_verdict_follows_the_share_that_reached_the_stack() {
        assert_eq!(verdict(1.0), "pass");
        assert_eq!(verdict(0.995), "pass");
        assert_eq!(verdict(0.0), "drop");
        assert_eq!(verdict(0.5), "mixed");
    }

    fn row(rounds_above_floor: Vec<f64>) -> Row {
        Row {
            class: KNOWN_SOURCE,
            single_run_class: None,
            verdict: "pass",
            ns: 0.0,
            floor_ns: 0.0,
            above_floor: median(rounds_above_floor.clone()),
            rounds_above_floor,
            delivered: 1.0,
            sources: 1,
        }
    }

    #[test]
    fn two_builds_are_compared_round_by_round() {
        // The medians alone (300 against 310) would hide that the compared build was the
        // faster in two of three rounds.
        let this = row(vec![300.0, 400.0, 200.0]);
        let compared = row(vec![310.0, 380.0, 190.0]);
        let table = compare_markdown(&[this], &[compared]);
        assert!(
            table.contains(&format!(
                "| {KNOWN_SOURCE} | 300.0 | 310.0 | -10.0 | 2 of 3 |"
            )),
            "{table}"
        );
    }

    #[test]
    fn a_pass_of_sources_fits_twice_in_the_history() {
        for quick in [true, false] {
            let sources = sources(Plan::new(quick));
            assert!(sources.is_power_of_two());
            assert!(2 * sources <= blocker_common::DEFAULT_HISTORY_CAPACITY);
        }
    }
}

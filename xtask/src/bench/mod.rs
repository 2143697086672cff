//! `cargo xtask bench`: blocker against its peers, measured in one run on one machine, and
//! reported as ratios. Nothing here asserts a ratio: the numbers are reported, with the goals
//! beside them.

pub mod analyze;
mod chart;
mod daemon;
pub mod fleet;
pub mod formats;
pub mod logs;
mod progsize;
pub mod sampling;
pub mod state;
mod throughput;

mod control;
mod costs;
mod docs;
mod goals;
mod lab;
mod report;
mod scaling;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use blocker_tests::bpf::{self, XDP_DROP, XDP_PASS};
use control::{control_plane, timed, ControlPlane};
use costs::{costs_markdown, packet_costs, Cost, PacketCosts};
use lab::{load_blocker, load_goal_state, nth_source, v4_frame, Lab, TCP};
use report::write_report;
use scaling::{scaling, ScalePoint};
/// How much work a run does.
#[derive(Clone, Copy)]
pub struct Plan {
    pub quick: bool,
    /// Repetitions of one frame per BPF_PROG_TEST_RUN call.
    repeat: u32,
    rounds: usize,
    /// Sources measured one call each, for classes whose state changes per packet.
    sources: u32,
}

impl Plan {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                repeat: 200_000,
                rounds: 3,
                sources: 1_000,
            }
        } else {
            Self {
                quick,
                repeat: 2_000_000,
                rounds: 7,
                sources: 5_000,
            }
        }
    }
}

#[derive(Serialize)]
struct Report {
    machine: String,
    kernel: String,
    quick: bool,
    floor_ns: f64,
    costs: Vec<Cost>,
    /// Rule events in a stream of live frames, timed by bpf_stats.
    rule_events: Vec<throughput::rule_events::Row>,
    goals: Vec<goals::Goal>,
    /// Entries in each of xdp-filter's source lists while it was measured.
    xdp_filter_entries: usize,
    scaling: Vec<ScalePoint>,
    control_plane: ControlPlane,
    throughput: Vec<throughput::Row>,
    daemon: daemon::DaemonLoad,
    state: state::StateScale,
    analyze: analyze::AnalyzeBench,
    logs: logs::LogScan,
}

fn verdict_name(retval: u32) -> &'static str {
    match retval {
        XDP_DROP => "drop",
        XDP_PASS => "pass",
        bpf::XDP_TX => "tx",
        _ => "other",
    }
}

/// The median; of an even count, the mean of the middle two.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn sh(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Installs the peers the benchmark compares against, saying so.
fn install_peers() -> Result<()> {
    let wanted = [
        ("xdp-filter", "xdp-tools"),
        ("iptables", "iptables"),
        ("nft", "nftables"),
        ("ethtool", "ethtool"),
    ];
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(program, _)| which(program).is_none())
        .map(|(_, package)| *package)
        .collect();
    if !missing.is_empty() {
        println!("bench: installing peers {}", missing.join(" "));
        sh("apt-get", &["update", "-q"])?;
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend(&missing);
        sh("apt-get", &args)?;
    }
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}

/// Turns kernel.bpf_stats_enabled off for the run (it adds a clock read to every program
/// run), restoring it after.
struct StatsOff(String);

impl StatsOff {
    fn new() -> Result<Self> {
        let previous = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")?;
        std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0")?;
        Ok(Self(previous))
    }
}

impl Drop for StatsOff {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", self.0.trim());
    }
}

pub fn run(root: &Path, plan: Plan) -> Result<()> {
    install_peers()?;
    let _stats = StatsOff::new()?;
    let packets = loaded_packet_costs(root, plan)?;
    // Scaling and the control plane start from the small state: their series start at zero.
    let lab = Lab::new(root)?;
    let blocker = load_blocker(&lab)?;
    let (floor, per_call_floor) = (packets.floor, packets.per_call_floor);
    let scaling = scaling(&lab, &blocker, plan, floor, per_call_floor)?;
    let control_plane = control_plane(&lab)?;
    drop(blocker);
    drop(lab);
    let rule_events = throughput::rule_events::run(root, plan, None)?.rows;
    let throughput = throughput::run(root, plan, None)?;
    let daemon = daemon::run(root, plan)?;
    let state = state::run(root, plan)?;
    let analyze = analyze::run(root, plan)?;
    let logs = logs::run(root, plan)?;

    let report = Report {
        goals: goals::goals(&packets, Some(&rule_events), Some(&throughput)),
        xdp_filter_entries: packets.xdp_filter_entries,
        machine: machine(),
        kernel: sh("uname", &["-r"])?.trim().to_string(),
        quick: plan.quick,
        floor_ns: floor,
        costs: packets.costs,
        rule_events,
        scaling,
        control_plane,
        throughput,
        daemon,
        state,
        analyze,
        logs,
    };
    write_report(root, &report)
}

/// The cost table, measured in a lab of its own holding issue 11's loaded state.
fn loaded_packet_costs(root: &Path, plan: Plan) -> Result<PacketCosts> {
    let lab = Lab::new(root)?;
    let blocker = load_goal_state(&lab)?;
    packet_costs(&lab, &blocker, plan)
}

/// `cargo xtask bench --packets`: the packet path alone (cost per class, live rule events,
/// then live throughput), into target/bench/packets.md and packets.json.
pub fn run_packets(root: &Path, plan: Plan) -> Result<()> {
    install_peers()?;
    let _stats = StatsOff::new()?;
    let packets = loaded_packet_costs(root, plan)?;
    let rule_events = throughput::rule_events::run(root, plan, None)?.rows;
    let throughput = throughput::run(root, plan, None)?;
    let goals = goals::goals(&packets, Some(&rule_events), Some(&throughput));
    let sections = [
        ("costs", costs_markdown(packets.floor, &packets.costs)),
        (
            "rule-events",
            throughput::rule_events::markdown(&rule_events, &packets.costs),
        ),
        ("goals", goals::markdown(&goals, packets.xdp_filter_entries)),
        ("throughput", throughput::markdown(&throughput)),
    ];
    let markdown: String = sections.iter().map(|(_, text)| text.as_str()).collect();
    let json = serde_json::json!({
        "floor_ns": packets.floor,
        "costs": packets.costs,
        "rule_events": rule_events,
        "goals": goals,
        "throughput": throughput,
    });
    report::write_files(root, "packets", &json, &markdown)?;
    if !plan.quick {
        docs::update(root, "cargo xtask bench --packets", &sections)?;
    }
    Ok(())
}

/// `cargo xtask bench --compare-with BUILD`: the live sections only (rule events, and the
/// dynamic blacklist's throughput), this build and `other` in the same rounds, into
/// target/bench/compare.md; docs/benchmarks.md is left alone (it reports one build).
pub fn run_compare(root: &Path, plan: Plan, other: &Path) -> Result<()> {
    if !other.is_file() {
        bail!("no build to compare with at {}", other.display());
    }
    install_peers()?;
    let _stats = StatsOff::new()?;
    let rule_events = throughput::rule_events::run(root, plan, Some(other))?;
    let throughput = throughput::run(root, plan, Some(other))?;
    let mut markdown = format!(
        "\n# This build ({}) against {}\n",
        lab::blocker_binary(root).display(),
        other.display()
    );
    if let Some(theirs) = &rule_events.other {
        markdown += &throughput::rule_events::compare_markdown(&rule_events.rows, theirs);
    }
    markdown += &throughput::compare_markdown(&throughput);
    let json = serde_json::json!({
        "rule_events": rule_events.rows,
        "compared_rule_events": rule_events.other,
        "throughput": throughput,
    });
    report::write_files(root, "compare", &json, &markdown)
}

/// `cargo xtask bench --state` (or `--analyze`, `--logs`): `run_alone` measures its section
/// into target/bench/NAME.md; a full-size run also rewrites that section's block in
/// docs/benchmarks.md, where the block is marked.
pub fn section_alone(
    root: &Path,
    plan: Plan,
    name: &'static str,
    run_alone: fn(&Path, Plan) -> Result<()>,
) -> Result<()> {
    run_alone(root, plan)?;
    if !plan.quick {
        let markdown = std::fs::read_to_string(root.join(format!("target/bench/{name}.md")))?;
        docs::update(
            root,
            &format!("cargo xtask bench --{name}"),
            &[(name, markdown)],
        )?;
    }
    Ok(())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|name| name.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores")
}

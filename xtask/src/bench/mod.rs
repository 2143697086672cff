//! `cargo xtask bench`: blocker against its peers, measured in one run on one machine, and
//! reported as ratios. Nothing here asserts a ratio: the numbers are reported, with the goals
//! beside them.

pub mod analyze;
mod chart;
mod daemon;
pub mod fleet;
pub mod logs;
pub mod state;
mod throughput;

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::maps::{Array, HashMap, Map, MapData};
use blocker_common::{History, HistoryKey, Rule, SourceKey, FAMILY_V4, MAP_HISTORY, MAP_RULES};
use blocker_tests::frames::{ethernet, frame, ipv4, ipv6, tcp_syn, udp, ARP, IPV4, IPV6};
use serde::Serialize;

use blocker_tests::bpf::{self, test_run, XDP_DROP, XDP_PASS};

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

/// One measured packet class.
#[derive(Serialize, Clone)]
struct Cost {
    class: String,
    /// Median ns per packet, as the kernel measured it.
    ns: f64,
    /// Above the empty program measured the same way.
    above_floor: f64,
    verdict: &'static str,
    xdp_filter_above_floor: Option<f64>,
    /// blocker ÷ xdp-filter, both above the floor.
    ratio_to_xdp_filter: Option<f64>,
}

#[derive(Serialize)]
pub struct ScalePoint {
    series: String,
    size: u64,
    above_floor: f64,
}

#[derive(Serialize, Default)]
struct ControlPlane {
    ban_command_ms: f64,
    ban_return_to_first_drop_us: f64,
    import_100k_s: f64,
    load_restoring_100k_s: f64,
    history_bytes_per_source: f64,
    blacklist_bytes_per_entry: f64,
    import_100k_max_rss_mib: f64,
    status_max_rss_mib: f64,
}

#[derive(Serialize)]
struct Report {
    machine: String,
    kernel: String,
    quick: bool,
    floor_ns: f64,
    costs: Vec<Cost>,
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

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Median ns per packet of `prog` on `data` over the plan's rounds.
fn cost(prog: &OwnedFd, data: &[u8], plan: Plan) -> Result<(f64, u32)> {
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
fn cost_per_call(prog: &OwnedFd, frames: &[Vec<u8>]) -> Result<(f64, u32)> {
    let mut samples = Vec::new();
    let mut retval = 0;
    for frame in frames {
        let run = test_run(prog, frame, 1, None)?;
        retval = run.retval;
        samples.push(f64::from(run.duration_ns));
    }
    Ok((median(samples), retval))
}

fn v4_frame(source: [u8; 4], l4: Vec<u8>, proto: u8) -> Vec<u8> {
    frame(&[IPV4], &ipv4(source, 0, proto, &l4))
}

fn v6_frame(source: [u8; 16], l4: Vec<u8>, proto: u8) -> Vec<u8> {
    frame(&[IPV6], &ipv6(source, &[], proto, &l4))
}

const TCP: u8 = 6;
const UDP: u8 = 17;

/// The n-th of many distinct IPv4 sources in 100.64.0.0/10.
fn nth_source(n: u32) -> [u8; 4] {
    let [_, b, c, d] = n.to_be_bytes();
    [100, 64 + (b & 0x3f), c, d]
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

/// A namespace with a veth pair for the candidates, and blocker's own pin dir and state.
struct Lab {
    ns: String,
    pin_dir: PathBuf,
    state: PathBuf,
    blocker: PathBuf,
    /// Holds the state file and the lists and configs the runs write.
    dir: tempfile::TempDir,
}

impl Lab {
    fn new(root: &Path) -> Result<Self> {
        let id = std::process::id();
        let dir = tempfile::tempdir()?;
        let lab = Self {
            ns: format!("blkbench{id}"),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/blocker-bench-{id}")),
            state: dir.path().join("state.db"),
            blocker: root.join("target/release/blocker"),
            dir,
        };
        sh("ip", &["netns", "add", &lab.ns])?;
        for (a, b) in [("bb0", "bb1"), ("xf0", "xf1")] {
            lab.ip(&["link", "add", a, "type", "veth", "peer", "name", b])?;
            lab.ip(&["link", "set", a, "up"])?;
            lab.ip(&["link", "set", b, "up"])?;
        }
        Ok(lab)
    }

    /// The benchmark's config file, written on first use.
    fn config(&self) -> Result<String> {
        let path = self.dir.path().join("bench.toml");
        std::fs::write(&path, BENCH_CONFIG)?;
        Ok(path.to_string_lossy().into_owned())
    }

    fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.ns.as_str()];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    fn in_ns(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg(program);
        command
    }

    fn blocker_command(&self) -> Command {
        let mut command = self.in_ns(&self.blocker.to_string_lossy());
        command
            .env("BLOCKER_PIN_DIR", &self.pin_dir)
            .env("BLOCKER_STATE", &self.state)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        command
    }

    fn blocker(&self, args: &[&str]) -> Result<String> {
        let out = self.blocker_command().args(args).output()?;
        if !out.status.success() {
            bail!(
                "blocker {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The id of the XDP program attached to `iface`.
    fn xdp_prog(&self, iface: &str) -> Result<OwnedFd> {
        let out = self.ip(&["-j", "link", "show", iface])?;
        let links: serde_json::Value = serde_json::from_str(&out)?;
        let id = links[0]["xdp"]["prog"]["id"]
            .as_u64()
            .with_context(|| format!("no XDP program on {iface}"))?;
        bpf::prog_by_id(id as u32)
    }

    fn map(&self, name: &str) -> Result<MapData> {
        MapData::from_pin(self.pin_dir.join(name)).with_context(|| format!("opening {name}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.blocker(&["unload"]);
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
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

const BENCH_CONFIG: &str = r#"
# Room for the 100k-entry allowlist of the scaling run.
[maps]
allow = 262144

[[rules]]
name = "ssh"
proto = "tcp"
dport = 22

[[rules]]
name = "web-burst"
kind = "burst"
proto = "tcp"
dport = 80
"#;

const BANNED_V4: [u8; 4] = [192, 0, 2, 66];
const IN_BANNED_RANGE: [u8; 4] = [10, 20, 30, 40];
const ALLOWED_V4: [u8; 4] = [203, 0, 113, 10];
const UNMATCHED_V4: [u8; 4] = [198, 51, 100, 1];
const ATTACKER_V4: [u8; 4] = [198, 51, 100, 99];
/// The /24 the ban-to-enforcement probes come from.
const BAN_PROBES: [u8; 4] = [198, 18, 0, 0];

fn v6(text: &str) -> [u8; 16] {
    text.parse::<Ipv6Addr>()
        .map(|a| a.octets())
        .unwrap_or_default()
}

pub fn run(root: &Path, plan: Plan) -> Result<()> {
    install_peers()?;
    let _stats = StatsOff::new()?;
    let lab = Lab::new(root)?;
    lab.blocker(&["load", "--iface", "bb0", "--config", &lab.config()?])?;
    lab.blocker(&["ban", "192.0.2.66", "10.20.0.0/16", "2001:db8:bad::/64"])?;
    lab.blocker(&["allow", "203.0.113.10"])?;
    let blocker = lab.xdp_prog("bb0")?;
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
        let (ns, retval) = cost(&blocker, data, plan)?;
        costs.push(Cost {
            class: class.to_string(),
            ns,
            above_floor: ns - floor,
            verdict: verdict_name(retval),
            xdp_filter_above_floor: None,
            ratio_to_xdp_filter: None,
        });
    }
    // Classes whose per-source state changes with every packet: one call per source.
    let sources = |base: u32, port: u16| -> Vec<Vec<u8>> {
        (0..plan.sources)
            .map(|n| v4_frame(nth_source(base + n), tcp_syn(port), TCP))
            .collect()
    };
    let new_sources = sources(0, 22);
    let (ns_new, verdict_new) = cost_per_call(&blocker, &new_sources)?;
    // The same sources again: now known, with one event, below the threshold of 3.
    let (ns_known, verdict_known) = cost_per_call(&blocker, &new_sources)?;
    let burst_sources = sources(plan.sources, 80);
    cost_per_call(&blocker, &burst_sources)?;
    let (ns_burst, verdict_burst) = cost_per_call(&blocker, &burst_sources)?;
    for (class, ns, retval) in [
        ("rule event, known source", ns_known, verdict_known),
        ("rule event, new source", ns_new, verdict_new),
        ("burst rule event", ns_burst, verdict_burst),
    ] {
        costs.push(Cost {
            class: class.to_string(),
            ns,
            above_floor: ns - per_call_floor,
            verdict: verdict_name(retval),
            xdp_filter_above_floor: None,
            ratio_to_xdp_filter: None,
        });
    }

    // xdp-filter with only the features the traffic needs, same banned addresses.
    let xdp_filter = xdp_filter_costs(&lab, plan, floor, &malformed)?;
    for cost in &mut costs {
        let peer_class = repeated
            .iter()
            .find(|(class, _, _)| *class == cost.class)
            .and_then(|(_, _, peer)| *peer);
        if let Some(peer) = peer_class.and_then(|p| xdp_filter.iter().find(|(c, _)| *c == p)) {
            cost.xdp_filter_above_floor = Some(peer.1);
            cost.ratio_to_xdp_filter = Some(cost.above_floor / peer.1.max(0.1));
        }
    }

    let scaling = scaling(&lab, &blocker, plan, floor, per_call_floor)?;
    let control_plane = control_plane(&lab)?;
    drop(lab);
    let throughput = throughput::run(root, plan)?;
    let daemon = daemon::run(root, plan)?;
    let state = state::run(root, plan)?;
    let analyze = analyze::run(root, plan)?;
    let logs = logs::run(root, plan)?;

    let report = Report {
        machine: machine(),
        kernel: sh("uname", &["-r"])?.trim().to_string(),
        quick: plan.quick,
        floor_ns: floor,
        costs,
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

/// Costs of xdp-filter's program for the comparable classes, above the floor.
fn xdp_filter_costs(
    lab: &Lab,
    plan: Plan,
    floor: f64,
    malformed: &[u8],
) -> Result<Vec<(&'static str, f64)>> {
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
    let prog = lab.xdp_prog("xf0")?;
    for (class, data) in [
        ("unmatched IPv4", v4_frame(UNMATCHED_V4, dns(), UDP)),
        ("ban IPv4", v4_frame(BANNED_V4, dns(), UDP)),
        ("malformed frame", malformed.to_vec()),
        ("non-IP frame", frame(&[ARP], &[0u8; 28])),
    ] {
        results.push((class, cost(&prog, &data, plan)?.0 - floor));
    }
    drop(prog);
    xdp_filter(&["unload", "xf0"])?;
    xdp_filter(&["load", "xf0", "-p", "allow", "-f", "ipv6", "-m", "native"])?;
    xdp_filter(&["ip", "2001:db8:bad::1", "-m", "src"])?;
    let prog = lab.xdp_prog("xf0")?;
    for (class, data) in [
        ("unmatched IPv6", v6_frame(v6("2001:db8:1::1"), dns(), UDP)),
        ("ban IPv6", v6_frame(v6("2001:db8:bad::1"), dns(), UDP)),
    ] {
        results.push((class, cost(&prog, &data, plan)?.0 - floor));
    }
    drop(prog);
    xdp_filter(&["unload", "xf0"])?;
    Ok(results)
}

/// Cost per packet as tracked sources and list sizes grow.
fn scaling(
    lab: &Lab,
    blocker: &OwnedFd,
    plan: Plan,
    floor: f64,
    per_call_floor: f64,
) -> Result<Vec<ScalePoint>> {
    let mut points = Vec::new();
    // Known sources under the ssh rule, with ever more other sources tracked.
    let rules: Array<_, Rule> = Array::try_from(Map::Array(lab.map(MAP_RULES)?))?;
    let generation = rules.get(&0, 0)?.generation;
    let mut history: HashMap<_, HistoryKey, History> =
        HashMap::try_from(Map::LruHashMap(lab.map(MAP_HISTORY)?))?;
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
        while filled < size {
            let key = HistoryKey {
                source: SourceKey {
                    addr: {
                        let mut addr = [0u8; 16];
                        addr[..4]
                            .copy_from_slice(&Ipv4Addr::from(0x0a00_0000 + filled as u32).octets());
                        addr
                    },
                    family: FAMILY_V4,
                    prefix_len: 32,
                },
                slot: 0,
                generation,
            };
            history.insert(key, History::new(64), 0)?;
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
        lab.blocker(&["import", &path.to_string_lossy()])?;
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

/// Bytes of kernel memory a map charges, per entry, from its fdinfo.
fn bytes_per_entry(path: &Path) -> Result<f64> {
    let fd = bpf::obj_get(path)?;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    let field = |name: &str| -> Option<f64> {
        info.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    match (field("memlock:"), field("max_entries:")) {
        (Some(bytes), Some(entries)) if entries > 0.0 => Ok(bytes / entries),
        _ => bail!("no memlock in fdinfo of {}", path.display()),
    }
}

/// Runs a command and returns its wall time and peak resident memory (MiB).
fn timed(mut command: Command) -> Result<(Duration, f64)> {
    let started = Instant::now();
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id() as i32;
    let mut status = 0;
    // SAFETY: rusage is plain data the kernel fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child and fills `usage`.
    if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } < 0 {
        bail!("waiting for {command:?}");
    }
    let elapsed = started.elapsed();
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{command:?} failed");
    }
    Ok((elapsed, usage.ru_maxrss as f64 / 1024.0))
}

fn control_plane(lab: &Lab) -> Result<ControlPlane> {
    let mut report = ControlPlane::default();
    let blocker = lab.xdp_prog("bb0")?;
    // Ban to enforcement on a state of modest size.
    let mut command_ms = Vec::new();
    let mut first_drop_us = Vec::new();
    for n in 0..20u32 {
        let source = [BAN_PROBES[0], BAN_PROBES[1], BAN_PROBES[2], 1 + n as u8];
        let data = v4_frame(source, udp(53, 32), UDP);
        let mut command = lab.blocker_command();
        command.args(["ban", &Ipv4Addr::from(source).to_string()]);
        let (elapsed, _) = timed(command)?;
        let returned = Instant::now();
        let verdict = test_run(&blocker, &data, 1, None)?.retval;
        first_drop_us.push(returned.elapsed().as_secs_f64() * 1e6);
        if verdict != XDP_DROP {
            bail!("the first packet after `blocker ban` returned was not dropped");
        }
        command_ms.push(elapsed.as_secs_f64() * 1e3);
    }
    report.ban_command_ms = median(command_ms);
    report.ban_return_to_first_drop_us = median(first_drop_us);

    // 100k prefixes: import, then a load that restores them.
    let mut list = String::new();
    for n in 0..100_000u32 {
        let [_, a, b, c] = (n + 0x0100_0000).to_be_bytes();
        list.push_str(&format!("{}.{b}.{c}.0/24 # bulk {n}\n", 30 + a));
    }
    let path = lab.dir.path().join("100k.txt");
    std::fs::write(&path, list)?;
    let mut command = lab.blocker_command();
    command.args(["import", &path.to_string_lossy()]);
    let (elapsed, rss) = timed(command)?;
    report.import_100k_s = elapsed.as_secs_f64();
    report.import_100k_max_rss_mib = rss;
    let mut command = lab.blocker_command();
    command.args(["status"]);
    report.status_max_rss_mib = timed(command)?.1;
    drop(blocker);
    lab.blocker(&["unload"])?;
    let mut command = lab.blocker_command();
    command.args(["load", "--iface", "bb0", "--config", &lab.config()?]);
    report.load_restoring_100k_s = timed(command)?.0.as_secs_f64();
    report.history_bytes_per_source = bytes_per_entry(&lab.pin_dir.join(MAP_HISTORY))?;
    report.blacklist_bytes_per_entry =
        bytes_per_entry(&lab.pin_dir.join(blocker_common::MAP_BLACKLIST))?;
    Ok(report)
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

fn write_report(root: &Path, report: &Report) -> Result<()> {
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    let markdown = markdown(report);
    std::fs::write(dir.join("report.md"), &markdown)?;
    let svg = chart::scaling_svg(&report.scaling)?;
    std::fs::write(dir.join("scaling.svg"), &svg)?;
    println!("{markdown}");
    if !report.quick {
        std::fs::create_dir_all(root.join("docs"))?;
        std::fs::write(root.join("docs/benchmarks.md"), &markdown)?;
        std::fs::write(root.join("docs/benchmarks-scaling.svg"), &svg)?;
        println!("bench: wrote docs/benchmarks.md and docs/benchmarks-scaling.svg");
    }
    println!("bench: wrote {}", dir.join("report.json").display());
    Ok(())
}

fn markdown(report: &Report) -> String {
    let mut out = String::new();
    out += "# Benchmarks\n\n";
    out += &format!(
        "Generated by `cargo xtask bench{}` on {}, Linux {}. Every number comes from the same \
         run; ratios matter, absolute numbers drift on a shared VM.\n\n",
        if report.quick { " --quick" } else { "" },
        report.machine,
        report.kernel
    );
    out += "## Cost per packet (BPF_PROG_TEST_RUN, in the kernel)\n\n";
    out += &format!(
        "Median ns per packet; \"above floor\" subtracts an empty XDP program measured the same \
         way ({:.1} ns). xdp-filter is loaded with only the features the traffic needs \
         (`-p allow -f ipv4`, or `-f ipv6`) and the same banned address; its closest class is \
         compared. Rule classes are single runs, one per source, against single-run floors.\n\n",
        report.floor_ns
    );
    out += "| class | verdict | ns | above floor | xdp-filter above floor | ratio |\n";
    out += "| --- | --- | ---: | ---: | ---: | ---: |\n";
    for cost in &report.costs {
        out += &format!(
            "| {} | {} | {:.1} | {:.1} | {} | {} |\n",
            cost.class,
            cost.verdict,
            cost.ns,
            cost.above_floor,
            cost.xdp_filter_above_floor
                .map_or("".into(), |v| format!("{v:.1}")),
            cost.ratio_to_xdp_filter
                .map_or("".into(), |v| format!("{v:.2}")),
        );
    }
    out += "\n## Scaling\n\nns per packet above the floor. ![scaling](benchmarks-scaling.svg)\n\n";
    out += "| series | size | above floor |\n| --- | ---: | ---: |\n";
    for point in &report.scaling {
        out += &format!(
            "| {} | {} | {:.1} |\n",
            point.series, point.size, point.above_floor
        );
    }
    let cp = &report.control_plane;
    out += "\n## Control plane\n\n| what | value |\n| --- | ---: |\n";
    for (what, value) in [
        (
            "`blocker ban` command (process start to exit)",
            format!("{:.1} ms", cp.ban_command_ms),
        ),
        (
            "`blocker ban` returning → first packet dropped",
            format!("{:.1} µs", cp.ban_return_to_first_drop_us),
        ),
        (
            "`blocker import` of 100k prefixes",
            format!("{:.2} s", cp.import_100k_s),
        ),
        (
            "`blocker load` restoring 100k bans",
            format!("{:.2} s", cp.load_restoring_100k_s),
        ),
        (
            "kernel memory per tracked source (history map)",
            format!("{:.0} B", cp.history_bytes_per_source),
        ),
        (
            "kernel memory per dynamic blacklist entry",
            format!("{:.0} B", cp.blacklist_bytes_per_entry),
        ),
        (
            "peak RSS of `blocker import` (100k)",
            format!("{:.1} MiB", cp.import_100k_max_rss_mib),
        ),
        (
            "peak RSS of `blocker status`",
            format!("{:.1} MiB", cp.status_max_rss_mib),
        ),
    ] {
        out += &format!("| {what} | {value} |\n");
    }
    out += &throughput::markdown(&report.throughput);
    out += &daemon::markdown(&report.daemon);
    out += &state::markdown(&report.state);
    out += &analyze::markdown(&report.analyze);
    out += &logs::markdown(&report.logs);
    out
}

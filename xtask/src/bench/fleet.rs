//! `cargo xtask bench --fleet`: four blocker nodes (namespaces with XDP, pin directories and
//! states of their own) joined through one NATS server with JetStream. Measured: propagation
//! (a ban committed on node A to the first packet dropped at node B's driver), throughput
//! (10,000 imported bans on A applied by the three others) and catch-up (a node that was down
//! during 100,000 bans, from its daemon's start to all of them applied). Under load from other
//! work on the machine the absolute times move; they are reported with the goals.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use blocker_tests::fleet::{FleetNs, NatsServer, Node};
use serde::Serialize;

use super::Plan;

/// What one run measured.
#[derive(Serialize)]
pub struct FleetFigures {
    pub bans: usize,
    pub propagation_p50_ms: f64,
    pub propagation_p99_ms: f64,
    pub propagation_max_ms: f64,
    pub throughput_bans: usize,
    pub throughput_s: f64,
    pub catch_up_bans: usize,
    pub catch_up_s: f64,
}

/// Probes sent from a client address to a node, each carrying its send time; the receiver
/// keeps the send time of the last one that arrived.
struct Probe {
    stop: Arc<AtomicBool>,
    last_arrived_ns: Arc<AtomicU64>,
    epoch: Instant,
}

const PROBE_INTERVAL: Duration = Duration::from_micros(250);

impl Probe {
    fn start(node: &Node, from: IpAddr) -> Result<Self> {
        let to = node.net.server_for(from);
        let (server_ns, client_ns) = (node.net.server_ns.clone(), node.net.client_ns.clone());
        let receiver = in_ns(&server_ns, move || UdpSocket::bind(SocketAddr::new(to, 0)))??;
        let target = receiver.local_addr()?;
        receiver.set_read_timeout(Some(Duration::from_millis(50)))?;
        let sender = in_ns(&client_ns, move || {
            UdpSocket::bind(SocketAddr::new(from, 0))
        })??;
        let stop = Arc::new(AtomicBool::new(false));
        let last_arrived_ns = Arc::new(AtomicU64::new(0));
        let epoch = Instant::now();
        {
            let stop = stop.clone();
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let sent = epoch.elapsed().as_nanos() as u64;
                    let _ = sender.send_to(&sent.to_le_bytes(), target);
                    thread::sleep(PROBE_INTERVAL);
                }
            });
        }
        {
            let (stop, last) = (stop.clone(), last_arrived_ns.clone());
            thread::spawn(move || {
                let mut buf = [0u8; 8];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((8, _)) = receiver.recv_from(&mut buf) {
                        last.store(u64::from_le_bytes(buf), Ordering::Relaxed);
                    }
                }
            });
        }
        Ok(Self {
            stop,
            last_arrived_ns,
            epoch,
        })
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Waits until probes stop arriving (for 20 ms); returns the send time of the first one
    /// dropped.
    fn wait_dropped(&self, timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.last_arrived_ns.load(Ordering::Relaxed);
            if self.now_ns().saturating_sub(last) > 20_000_000 {
                return Ok(last + PROBE_INTERVAL.as_nanos() as u64);
            }
            ensure!(
                Instant::now() < deadline,
                "the ban did not reach the other node"
            );
            thread::sleep(Duration::from_micros(200));
        }
    }

    /// Waits until probes arrive again.
    fn wait_passing(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let since = self.now_ns();
        while self.last_arrived_ns.load(Ordering::Relaxed) < since {
            ensure!(
                Instant::now() < deadline,
                "the unban did not reach the other node"
            );
            thread::sleep(Duration::from_micros(500));
        }
        Ok(())
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Runs `f` on a thread in the network namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || -> Result<T> {
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or(f64::NAN)
}

/// A list file of `count` bans in 198.18.0.0/15 (the benchmarking range), from `first`.
fn list_file(dir: &std::path::Path, name: &str, first: u32, count: u32) -> Result<String> {
    let base = u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0));
    let text: String = (first..first + count)
        .map(|i| format!("{}\n", std::net::Ipv4Addr::from(base + i)))
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path.to_string_lossy().into_owned())
}

/// Waits until `node` applied `count` changes; returns when.
fn wait_applied(node: &Node, count: u64, timeout: Duration) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if node.count("applied") >= count {
            return Ok(Instant::now());
        }
        ensure!(
            Instant::now() < deadline,
            "{} applied {} of {count} changes",
            node.name,
            node.count("applied")
        );
        thread::sleep(Duration::from_millis(20));
    }
}

pub fn run(root: &std::path::Path, plan: Plan) -> Result<FleetFigures> {
    // SAFETY: set before any thread of this process reads the environment.
    unsafe { std::env::set_var("BLOCKER_BIN", super::lab::blocker_binary(root)) };
    let (bans, throughput_bans, catch_up_bans) = if plan.quick {
        (100, 2_000, 10_000)
    } else {
        (1_000, 10_000, 100_000)
    };
    let ns = FleetNs::create();
    let nats = NatsServer::start(&ns, 0, 1);
    let urls = [nats.url()];
    let mut nodes: Vec<Node> = (0..4)
        .map(|index| Node::start(&ns, index, &urls, ""))
        .collect();

    println!("fleet: propagation over {bans} bans (ban on node-0, first drop at node-1)");
    let client = nodes[1].net.client_v4(1, 2);
    let prefix = format!("{client}/32");
    let probe = Probe::start(&nodes[1], client)?;
    probe.wait_passing(Duration::from_secs(5))?;
    let mut times = Vec::with_capacity(bans);
    for _ in 0..bans {
        let run = nodes[0].net.blocker(&["ban", &prefix]);
        let committed = probe.now_ns();
        ensure!(run.code == 0, "ban failed: {}", run.stderr);
        let dropped = probe.wait_dropped(Duration::from_secs(10))?;
        times.push(dropped.saturating_sub(committed) as f64 / 1e6);
        let run = nodes[0].net.blocker(&["unban", &prefix]);
        ensure!(run.code == 0, "unban failed: {}", run.stderr);
        probe.wait_passing(Duration::from_secs(10))?;
    }
    drop(probe);
    times.sort_by(f64::total_cmp);

    println!("fleet: {throughput_bans} bans imported on node-0, applied by three nodes");
    let dir = ns.dir.path();
    let before: Vec<u64> = nodes.iter().map(|node| node.count("applied")).collect();
    let file = list_file(dir, "throughput.list", 0, throughput_bans as u32)?;
    nodes[0].net.blocker(&["import", &file]).ok();
    let started = Instant::now();
    let mut throughput_s: f64 = 0.0;
    for (node, before) in nodes.iter().zip(&before).skip(1) {
        let done = wait_applied(
            node,
            before + throughput_bans as u64,
            Duration::from_secs(120),
        )?;
        throughput_s = throughput_s.max((done - started).as_secs_f64());
    }

    println!("fleet: node-3 down during {catch_up_bans} bans, then catching up");
    nodes[3].stop_daemon();
    let file = list_file(dir, "catch-up.list", 1 << 20, catch_up_bans as u32)?;
    let applied_by_1 = nodes[1].count("applied");
    nodes[0].net.blocker(&["import", &file]).ok();
    wait_applied(
        &nodes[1],
        applied_by_1 + catch_up_bans as u64,
        Duration::from_secs(600),
    )?;
    let started = Instant::now();
    nodes[3].start_daemon();
    // A restarted daemon counts from zero, and replays every key: the earlier ones are
    // already in force here and are skipped.
    let deadline = Instant::now() + Duration::from_secs(600);
    let expected = (throughput_bans + catch_up_bans) as u64;
    let catch_up_s = loop {
        let link = nodes[3].link();
        let seen = link["applied"].as_u64().unwrap_or(0) + link["skipped"].as_u64().unwrap_or(0);
        if link["applied"].as_u64().unwrap_or(0) >= catch_up_bans as u64 && seen >= expected {
            break started.elapsed().as_secs_f64();
        }
        ensure!(Instant::now() < deadline, "node-3 did not catch up: {link}");
        thread::sleep(Duration::from_millis(20));
    };
    Ok(FleetFigures {
        bans,
        propagation_p50_ms: percentile(&times, 0.5),
        propagation_p99_ms: percentile(&times, 0.99),
        propagation_max_ms: times.last().copied().unwrap_or(f64::NAN),
        throughput_bans,
        throughput_s,
        catch_up_bans,
        catch_up_s,
    })
}

pub fn markdown(figures: &FleetFigures) -> String {
    format!(
        "## Fleet (NATS JetStream)\n\n\
         Four nodes (namespaces with XDP, their own pin directories and states) and one \
         `nats-server` 2.9 with JetStream, on this machine.\n\n\
         | measure | result | goal |\n| --- | --- | --- |\n\
         | propagation: ban committed on A to first packet dropped at B's driver, p50 / p99 / max over {} bans | {:.1} / {:.1} / {:.1} ms | p99 ≤ 100 ms |\n\
         | throughput: {} bans imported on A, applied by 3 others | {:.2} s | ≤ 2 s |\n\
         | catch-up: a node down during {} bans, daemon start to all applied | {:.2} s | ≤ 5 s |\n",
        figures.bans,
        figures.propagation_p50_ms,
        figures.propagation_p99_ms,
        figures.propagation_max_ms,
        figures.throughput_bans,
        figures.throughput_s,
        figures.catch_up_bans,
        figures.catch_up_s,
    )
}

pub fn run_alone(root: &std::path::Path, plan: Plan) -> Result<()> {
    let figures = run(root, plan)?;
    let markdown = markdown(&figures);
    super::report::write_files(root, "fleet", &figures, &markdown)
}

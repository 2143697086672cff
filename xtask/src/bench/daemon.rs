//! The daemon under load (issue 8, defect 7): `/healthz` latency while the kernel reports
//! blacklistings at 10,000 per second and 200 idle connections are held open (reopened as the
//! daemon's idle timeout closes them). The blacklistings are real: frames from new sources run
//! through the attached program with BPF_PROG_TEST_RUN, twice each, against a rule that
//! blacklists on the second event, and the daemon reads them from the ring buffer.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::maps::Map;
use blocker_common::{BlacklistEntry, SourceKeyV4, MAP_BLACKLIST_V4};
use blocker_tests::in_netns;
use serde::Serialize;

use super::{bpf::test_run, median, nth_source, v4_frame, Lab, Plan, TCP};
use blocker_tests::frames::tcp_syn;

/// Blacklistings per second the kernel is driven to report.
const TARGET_RATE: u64 = 10_000;
/// Idle connections held open.
const IDLE_CONNECTIONS: usize = 200;
/// The goal for p99.
const GOAL_P99_MS: f64 = 50.0;
const PORT: u16 = 39_977;

const CONFIG: &str = r#"
[maps]
blacklist = 1048576
history = 1048576

[[rules]]
name = "flood"
proto = "tcp"
dport = 22
hitcount = 1
seconds = 60
blacklist_for = "600s"
"#;

#[derive(Serialize, Default)]
pub struct DaemonLoad {
    seconds: f64,
    blacklistings_per_s: f64,
    idle_connections: usize,
    healthz_requests: usize,
    healthz_p50_ms: f64,
    healthz_p99_ms: f64,
    healthz_max_ms: f64,
    healthz_failed: usize,
    /// Entries on the dynamic blacklist at the end: the blacklistings really happened.
    blacklist_entries: u64,
}

struct Stop(Child);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// True while the peer has not closed `stream` (and sent nothing).
fn still_open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    stream.set_nonblocking(true).is_ok()
        && matches!(stream.peek(&mut byte), Err(err) if err.kind() == std::io::ErrorKind::WouldBlock)
}

/// One `GET /healthz` on a new connection; its time in ms.
fn healthz(addr: SocketAddr) -> Result<f64> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    if !answer.starts_with("HTTP/1.1 200") {
        bail!("healthz answered {answer:?}");
    }
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

pub fn run(root: &std::path::Path, plan: Plan) -> Result<DaemonLoad> {
    let lab = Lab::new(root)?;
    let config = lab.dir.path().join("daemon-bench.toml");
    std::fs::write(&config, CONFIG)?;
    let config = config.to_string_lossy().into_owned();
    lab.blocker(&["load", "--iface", "bb0", "--config", &config])?;
    lab.ip(&["link", "set", "lo", "up"])?;
    let socket = lab.dir.path().join("bench.sock");
    let daemon = Stop(
        lab.blocker_command()
            .args(["daemon", "--config", &config])
            .args(["--listen", &format!("127.0.0.1:{PORT}")])
            .arg("--socket")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the daemon")?,
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], PORT));
    let ns = lab.ns.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while in_netns(&ns, move || healthz(addr)).is_err() {
        if Instant::now() > deadline {
            bail!("the daemon did not come up");
        }
        thread::sleep(Duration::from_millis(100));
    }

    let seconds = if plan.quick { 5 } else { 20 };
    let stop = Arc::new(AtomicBool::new(false));
    let blacklisted = Arc::new(AtomicU64::new(0));
    let prog = lab.xdp_prog("bb0")?;

    // Idle connections, topped up as the daemon's idle timeout closes them.
    let idle = {
        let (stop, ns) = (stop.clone(), ns.clone());
        thread::spawn(move || {
            in_netns(&ns, move || {
                let mut open: Vec<TcpStream> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    open.retain(still_open);
                    while open.len() < IDLE_CONNECTIONS {
                        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                            Ok(stream) => open.push(stream),
                            Err(_) => break,
                        }
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            })
        })
    };
    // The kernel reporting blacklistings at the target rate, in slices of 10 ms.
    let generator = {
        let (stop, blacklisted) = (stop.clone(), blacklisted.clone());
        thread::spawn(move || -> Result<()> {
            let per_slice = TARGET_RATE / 100;
            let mut n = 0u32;
            let started = Instant::now();
            let mut slice = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..per_slice {
                    let frame = v4_frame(nth_source(n), tcp_syn(22), TCP);
                    n += 1;
                    // The second event blacklists (hitcount 1).
                    test_run(&prog, &frame, 2, None)?;
                    blacklisted.fetch_add(1, Ordering::Relaxed);
                }
                slice += 1;
                let due = Duration::from_millis(slice * 10);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    thread::sleep(wait);
                }
            }
            Ok(())
        })
    };
    thread::sleep(Duration::from_secs(1));
    let measured_from = Instant::now();
    let generated_before = blacklisted.load(Ordering::Relaxed);
    let (latencies, failed) = in_netns(&ns, move || {
        let mut latencies = Vec::new();
        let mut failed = 0;
        while measured_from.elapsed() < Duration::from_secs(seconds) {
            match healthz(addr) {
                Ok(ms) => latencies.push(ms),
                Err(_) => failed += 1,
            }
            thread::sleep(Duration::from_millis(10));
        }
        (latencies, failed)
    });
    let elapsed = measured_from.elapsed().as_secs_f64();
    let generated = blacklisted.load(Ordering::Relaxed) - generated_before;
    stop.store(true, Ordering::Relaxed);
    generator
        .join()
        .map_err(|_| anyhow::anyhow!("the generator panicked"))??;
    let _ = idle.join();
    // The generator's sources are all IPv4.
    let blacklist_entries = {
        let map = aya::maps::HashMap::<_, SourceKeyV4, BlacklistEntry>::try_from(Map::LruHashMap(
            lab.map(MAP_BLACKLIST_V4)?,
        ))?;
        map.keys().filter(Result::is_ok).count() as u64
    };
    drop(daemon);
    drop(lab);

    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    let percentile = |p: f64| -> f64 {
        sorted
            .get(((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let load = DaemonLoad {
        seconds: elapsed,
        blacklistings_per_s: generated as f64 / elapsed,
        idle_connections: IDLE_CONNECTIONS,
        healthz_requests: latencies.len(),
        healthz_p50_ms: median(latencies),
        healthz_p99_ms: percentile(0.99),
        healthz_max_ms: sorted.last().copied().unwrap_or(f64::NAN),
        healthz_failed: failed,
        blacklist_entries,
    };
    println!(
        "bench: daemon /healthz p99 {:.1} ms (goal {GOAL_P99_MS} ms) at {:.0} blacklistings/s",
        load.healthz_p99_ms, load.blacklistings_per_s
    );
    Ok(load)
}

pub fn markdown(load: &DaemonLoad) -> String {
    format!(
        "\n## Daemon under load\n\n`/healthz` on a new connection every 10 ms for {:.0} s, while \
         the kernel reported {:.0} blacklistings/s (real events through the ring buffer) and \
         {} idle connections were held open ({} sources on the dynamic blacklist at the end). \
         Goal: p99 ≤ {GOAL_P99_MS} ms.\n\n\
         | requests | failed | p50 | p99 | max |\n| ---: | ---: | ---: | ---: | ---: |\n\
         | {} | {} | {:.1} ms | {:.1} ms | {:.1} ms |\n",
        load.seconds,
        load.blacklistings_per_s,
        load.idle_connections,
        load.blacklist_entries,
        load.healthz_requests,
        load.healthz_failed,
        load.healthz_p50_ms,
        load.healthz_p99_ms,
        load.healthz_max_ms,
    )
}

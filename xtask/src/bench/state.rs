//! The state database at scale (issue 9): with 1M stored bans (100k with `--quick`), the cost
//! of `blocker import`, `blocker ban`, `blocker list --json`, `blocker load` and of the daemon
//! banning from offenses, beside the issue's goals.

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    process::Stdio,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{median, timed, Lab, Plan};

/// Concurrent API clients reporting offenses.
const CLIENTS: usize = 8;

#[derive(Serialize, Default)]
pub struct StateScale {
    entries: u64,
    import_s: f64,
    import_max_rss_mib: f64,
    ban_command_ms: f64,
    ban_command_max_ms: f64,
    list_json_s: f64,
    list_json_max_rss_mib: f64,
    load_s: f64,
    offenses: u64,
    daemon_bans_per_s: f64,
    daemon_p50_ms: f64,
    daemon_p99_ms: f64,
    daemon_rss_mib: f64,
}

pub fn run(root: &std::path::Path, plan: Plan) -> Result<StateScale> {
    let entries: u32 = if plan.quick { 100_000 } else { 1_000_000 };
    let offenses: u32 = if plan.quick { 2_000 } else { 10_000 };
    let lab = Lab::new(root)?;
    let config = lab.config()?;
    lab.blocker(&["load", "--iface", "bb0", "--config", &config])?;
    let mut report = StateScale {
        entries: entries.into(),
        offenses: offenses.into(),
        ..StateScale::default()
    };

    let mut list = String::new();
    for n in 0..entries {
        let [_, a, b, c] = (n + 0x0100_0000).to_be_bytes();
        list.push_str(&format!("{}.{a}.{b}.{c} # bulk {n}\n", 30 + a % 64));
    }
    let path = lab.dir.path().join("bulk.txt");
    std::fs::write(&path, list)?;
    let mut command = lab.blocker_command();
    // A synthetic list: the lock-out check would refuse one covering this host's resolver.
    command.args(["import", &path.to_string_lossy(), "--force"]);
    (report.import_s, report.import_max_rss_mib) = {
        let (elapsed, rss) = timed(command)?;
        (elapsed.as_secs_f64(), rss)
    };
    println!("bench: import of {entries}: {:.2} s", report.import_s);

    let mut ban_ms = Vec::new();
    for n in 0..20u8 {
        let mut command = lab.blocker_command();
        command.args(["ban", &format!("192.0.2.{n}")]);
        ban_ms.push(timed(command)?.0.as_secs_f64() * 1e3);
    }
    report.ban_command_max_ms = ban_ms.iter().copied().fold(0.0, f64::max);
    report.ban_command_ms = median(ban_ms);
    println!(
        "bench: ban with {entries} stored: {:.1} ms",
        report.ban_command_ms
    );

    let mut command = lab.blocker_command();
    command.args(["list", "--json"]);
    (report.list_json_s, report.list_json_max_rss_mib) = {
        let (elapsed, rss) = timed(command)?;
        (elapsed.as_secs_f64(), rss)
    };
    println!("bench: list --json: {:.2} s", report.list_json_s);

    lab.blocker(&["unload"])?;
    let mut command = lab.blocker_command();
    command.args(["load", "--iface", "bb0", "--config", &config]);
    report.load_s = timed(command)?.0.as_secs_f64();
    println!("bench: load restoring {entries}: {:.2} s", report.load_s);

    daemon_offenses(&lab, &config, offenses, &mut report)?;
    println!(
        "bench: daemon {:.0} bans/s, p99 {:.1} ms, RSS {:.0} MiB",
        report.daemon_bans_per_s, report.daemon_p99_ms, report.daemon_rss_mib
    );
    lab.blocker(&["unload"])?;
    Ok(report)
}

/// Reports `offenses` critical offenses (each bans a new source) from [`CLIENTS`] clients
/// over the daemon's Unix socket, and measures each request.
fn daemon_offenses(lab: &Lab, config: &str, offenses: u32, report: &mut StateScale) -> Result<()> {
    let socket = lab.dir.path().join("state-bench.sock");
    let mut daemon = lab
        .blocker_command()
        .args(["daemon", "--config", config, "--listen", "127.0.0.1:39978"])
        .arg("--socket")
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the daemon")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while request(&socket, "GET", "/healthz", "").is_err() {
        if Instant::now() > deadline {
            let _ = daemon.kill();
            bail!("the daemon did not come up");
        }
        thread::sleep(Duration::from_millis(100));
    }
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS as u32)
        .map(|client| {
            let (socket, latencies) = (socket.clone(), latencies.clone());
            thread::spawn(move || -> Result<()> {
                for n in (client..offenses).step_by(CLIENTS) {
                    let [_, a, b, c] = n.to_be_bytes();
                    let body = format!(
                        r#"{{"addr":"100.{}.{b}.{c}","severity":"critical","reason":"bench"}}"#,
                        64 + a
                    );
                    let sent = Instant::now();
                    let answer = request(&socket, "POST", "/v1/offenses", &body)?;
                    if !answer.contains("\"banned\":true") {
                        bail!("offense not banned: {answer}");
                    }
                    let ms = sent.elapsed().as_secs_f64() * 1e3;
                    latencies
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?
                        .push(ms);
                }
                Ok(())
            })
        })
        .collect();
    for client in clients {
        client
            .join()
            .map_err(|_| anyhow::anyhow!("a client panicked"))??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.id()))?;
    report.daemon_rss_mib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0);
    let _ = daemon.kill();
    let _ = daemon.wait();
    let mut sorted = latencies
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    sorted.sort_by(f64::total_cmp);
    report.daemon_bans_per_s = sorted.len() as f64 / elapsed;
    report.daemon_p50_ms = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
    report.daemon_p99_ms = sorted
        .get((sorted.len() * 99 / 100).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN);
    Ok(())
}

/// One HTTP/1.1 request over the daemon's Unix socket (which needs no token); the answer's
/// body.
fn request(socket: &std::path::Path, method: &str, path: &str, body: &str) -> Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    if !answer.starts_with("HTTP/1.1 200") {
        bail!("{method} {path}: {}", answer.lines().next().unwrap_or(""));
    }
    Ok(answer
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_string()))
}

pub fn markdown(scale: &StateScale) -> String {
    format!(
        "\n## State database at scale\n\n{} bans stored (one `blocker import`); the daemon \
         then bans {} new sources from critical offenses sent by {CLIENTS} concurrent clients \
         over its socket.\n\n\
         | measure | value | goal (1M) |\n| --- | ---: | ---: |\n\
         | `blocker import` of {0} | {:.2} s, peak RSS {:.0} MiB | ≤ 5 s, ≤ 200 MiB |\n\
         | `blocker ban` with {0} stored (median / max of 20) | {:.1} / {:.1} ms | ≤ 30 ms |\n\
         | `blocker list --json` of {0} | {:.2} s, peak RSS {:.0} MiB | ≤ 3 s |\n\
         | `blocker load` restoring {0} | {:.2} s | ≤ 5 s |\n\
         | daemon bans per second from offenses | {:.0} /s | ≥ 2,000 /s |\n\
         | daemon offense latency p50 / p99 | {:.1} / {:.1} ms | p99 ≤ 10 ms |\n\
         | daemon RSS after the offenses | {:.0} MiB | ≤ 100 MB |\n",
        scale.entries,
        scale.offenses,
        scale.import_s,
        scale.import_max_rss_mib,
        scale.ban_command_ms,
        scale.ban_command_max_ms,
        scale.list_json_s,
        scale.list_json_max_rss_mib,
        scale.load_s,
        scale.daemon_bans_per_s,
        scale.daemon_p50_ms,
        scale.daemon_p99_ms,
        scale.daemon_rss_mib,
    )
}

/// `cargo xtask bench --state`: only this part, written to target/bench/state.md.
pub fn run_alone(root: &std::path::Path, plan: Plan) -> Result<()> {
    let scale = run(root, plan)?;
    let markdown = markdown(&scale);
    super::report::write_files(root, "state", &scale, &markdown)
}

//! Log scanning (issue 10): `blocker scan --filter sshd` over a generated auth log (1M lines;
//! 100k with `--quick`) against `fail2ban-regex` with fail2ban's own sshd filter on a prefix
//! of the same file (200k lines; 20k), as lines per second on one core, and whether both find
//! the same failures on that prefix. Lines per second count each process's CPU time (user +
//! system): both tools are single-threaded, and on a shared machine wall time also measures
//! the neighbours. The wall-time ratio is reported beside it.

use std::{path::Path, process::Command, time::Instant};

use anyhow::{ensure, Context, Result};
use blocker_tests::authlog;
use serde::Serialize;

use super::{median, Plan};

const STOCK_SSHD: &str = "/etc/fail2ban/filter.d/sshd.conf";
/// Attacking sources in the generated log.
const SOURCES: u32 = 400;

#[derive(Serialize, Default)]
pub struct LogScan {
    lines: u64,
    failures: u64,
    blocker_builtin_lines_per_s: f64,
    blocker_stock_filter_lines_per_s: f64,
    fail2ban_lines: u64,
    fail2ban_lines_per_s: f64,
    /// blocker (built-in sshd) ÷ fail2ban-regex, lines per CPU second.
    ratio: f64,
    /// The same in wall time.
    wall_ratio: f64,
    same_failures: bool,
    common_failures: u64,
    blocker_failures_on_prefix: u64,
}

pub fn run(root: &Path, plan: Plan) -> Result<LogScan> {
    let (lines, fail2ban_lines) = if plan.quick {
        (100_000, 20_000)
    } else {
        (1_000_000, 200_000)
    };
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("auth.log");
    let prefix = dir.path().join("auth-prefix.log");
    authlog::write(&log, lines, SOURCES, 0xb10c)?;
    authlog::write(&prefix, fail2ban_lines, SOURCES, 0xb10c)?;
    let blocker = super::lab::blocker_binary(root);
    let scan = |filter: &str, log: &Path| -> Result<(Seconds, Vec<u64>, Vec<authlog::Failure>)> {
        let mut times = Vec::new();
        let mut found = None;
        for _ in 0..3 {
            let (out, time) = measured(|| {
                Command::new(&blocker)
                    .arg("scan")
                    .arg(log)
                    .args(["--filter", filter, "--json"])
                    .output()
                    .context("running blocker scan")
            })?;
            times.push(time);
            ensure!(
                out.status.success(),
                "blocker scan: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            found = Some(authlog::blocker_scan(&out.stdout)?);
        }
        let (numbers, failures) = found.unwrap_or_default();
        let time = Seconds {
            cpu: median(times.iter().map(|time| time.cpu).collect()),
            wall: median(times.iter().map(|time| time.wall).collect()),
        };
        Ok((time, numbers, failures))
    };
    let (builtin_s, _, builtin) = scan("sshd", &log)?;
    let (stock_s, _, _) = scan(STOCK_SSHD, &log)?;
    let (_, _, blocker_on_prefix) = scan("sshd", &prefix)?;
    println!(
        "bench: blocker scan of {lines} lines: {:.2} s CPU, {:.2} s wall (built-in sshd); {:.2} s CPU (fail2ban's sshd.conf)",
        builtin_s.cpu, builtin_s.wall, stock_s.cpu
    );
    let (fail2ban, fail2ban_s) = measured(|| authlog::fail2ban_regex(&prefix, STOCK_SSHD))?;
    println!(
        "bench: fail2ban-regex of {fail2ban_lines} lines: {:.2} s CPU, {:.2} s wall",
        fail2ban_s.cpu, fail2ban_s.wall
    );

    if let Some((ours, theirs)) = blocker_on_prefix
        .iter()
        .zip(&fail2ban)
        .find(|(ours, theirs)| ours != theirs)
    {
        println!("bench: first difference: blocker {ours:?}, fail2ban-regex {theirs:?}");
    }
    let per_s = |lines: usize, seconds: f64| lines as f64 / seconds.max(1e-9);
    let blocker_rate = per_s(lines, builtin_s.cpu);
    let fail2ban_rate = per_s(fail2ban_lines, fail2ban_s.cpu);
    let wall_ratio = per_s(lines, builtin_s.wall) / per_s(fail2ban_lines, fail2ban_s.wall);
    Ok(LogScan {
        lines: lines as u64,
        failures: builtin.len() as u64,
        blocker_builtin_lines_per_s: blocker_rate,
        blocker_stock_filter_lines_per_s: per_s(lines, stock_s.cpu),
        fail2ban_lines: fail2ban_lines as u64,
        fail2ban_lines_per_s: fail2ban_rate,
        ratio: blocker_rate / fail2ban_rate,
        wall_ratio,
        same_failures: blocker_on_prefix == fail2ban,
        blocker_failures_on_prefix: blocker_on_prefix.len() as u64,
        common_failures: fail2ban.len() as u64,
    })
}

/// CPU (user + system) and wall seconds of a child process.
#[derive(Clone, Copy)]
struct Seconds {
    cpu: f64,
    wall: f64,
}

/// Runs `run`, which starts a process and waits for it, and measures that process.
fn measured<T>(run: impl FnOnce() -> Result<T>) -> Result<(T, Seconds)> {
    let cpu_before = children_cpu();
    let started = Instant::now();
    let value = run()?;
    let wall = started.elapsed().as_secs_f64();
    Ok((
        value,
        Seconds {
            cpu: children_cpu() - cpu_before,
            wall,
        },
    ))
}

/// CPU seconds of all the children this process has waited for.
fn children_cpu() -> f64 {
    // SAFETY: rusage is plain data the kernel fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: fills `usage` for RUSAGE_CHILDREN, which always exists.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

pub fn markdown(scan: &LogScan) -> String {
    format!(
        "\n## Log scanning\n\nA generated sshd auth log of {} lines ({} failures from {SOURCES} \
         sources among logins, sessions, cron and closed connections). `blocker scan --json` \
         (whole process, median of 3) against `fail2ban-regex -o row` with fail2ban's stock \
         `sshd.conf` on the first {} lines of the same log. Lines per second of CPU time \
         (user + system; both are single-threaded).\n\n\
         | measure | value | goal |\n| --- | ---: | ---: |\n\
         | `blocker scan --filter sshd` (built-in) | {:.0} lines/s | |\n\
         | `blocker scan --filter {STOCK_SSHD}` | {:.0} lines/s | |\n\
         | `fail2ban-regex` with `{STOCK_SSHD}` | {:.0} lines/s | |\n\
         | ratio, built-in sshd ÷ fail2ban-regex | {:.0}× | ≥ 50× |\n\
         | the same in wall time | {:.0}× | |\n\
         | same failures on the first {} lines (fail2ban-regex {}, blocker {}) | {} | yes |\n",
        scan.lines,
        scan.failures,
        scan.fail2ban_lines,
        scan.blocker_builtin_lines_per_s,
        scan.blocker_stock_filter_lines_per_s,
        scan.fail2ban_lines_per_s,
        scan.ratio,
        scan.wall_ratio,
        scan.fail2ban_lines,
        scan.common_failures,
        scan.blocker_failures_on_prefix,
        if scan.same_failures { "yes" } else { "no" },
    )
}

/// `cargo xtask bench --logs`: only this part, written to target/bench/logs.md.
pub fn run_alone(root: &Path, plan: Plan) -> Result<()> {
    let scan = run(root, plan)?;
    let markdown = markdown(&scan);
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("logs.json"), serde_json::to_string_pretty(&scan)?)?;
    std::fs::write(dir.join("logs.md"), &markdown)?;
    println!("{markdown}");
    Ok(())
}

//! `blocker analyze` over a generated day of access log (issue 10's goal: a 1 GB log in at most
//! 10 s), beside `awk` printing each line's client address and time: any script has to read
//! the file and split its lines, so awk's time is a floor for one, not a competitor.

use std::{
    fmt::Write as _,
    fs::File,
    io::{BufWriter, Write as _},
    net::Ipv4Addr,
    path::Path,
    process::Command,
};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{median, timed, Plan};

#[derive(Serialize, Default)]
pub struct AnalyzeBench {
    log_mib: f64,
    lines: u64,
    clickers_planted: u64,
    clickers_flagged: u64,
    flagged: u64,
    blocker_s: f64,
    blocker_mib_per_s: f64,
    blocker_max_rss_mib: f64,
    awk_s: f64,
    awk_mib_per_s: f64,
}

/// Visitors, each request from one at random: pages and their assets.
const VISITORS: u32 = 200_000;
/// Sources that request pages in a bunch of 12, 1 s apart, one after the other.
const CLICKERS: u32 = 50;

pub fn run(root: &Path, plan: Plan) -> Result<AnalyzeBench> {
    let target_bytes: u64 = if plan.quick { 100 << 20 } else { 1 << 30 };
    let rounds = if plan.quick { 1 } else { 3 };
    // On disk rather than in /tmp, which may be memory.
    let dir = tempfile::tempdir_in(root.join("target"))?;
    let path = dir.path().join("access.log");
    let lines = generate(&path, target_bytes)?;
    let bytes = std::fs::metadata(&path)?.len();
    let mib = bytes as f64 / f64::from(1 << 20);
    let blocker = super::lab::blocker_binary(root);
    let log = path.to_string_lossy().into_owned();

    let output = Command::new(&blocker)
        .args(["analyze", &log, "--json"])
        .output()
        .context("running blocker analyze")?;
    if !output.status.success() {
        bail!(
            "blocker analyze failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let flags: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout)?;
    let clickers_flagged = flags
        .iter()
        .filter(|flag| {
            flag["addr"]
                .as_str()
                .and_then(|addr| addr.parse::<Ipv4Addr>().ok())
                .is_some_and(|addr| addr.octets()[0] == CLICKER_NET)
        })
        .count();

    let mut blocker_s = Vec::new();
    let mut blocker_rss = Vec::new();
    let mut awk_s = Vec::new();
    for _ in 0..rounds {
        let mut command = Command::new(&blocker);
        command.args(["analyze", &log]);
        let (elapsed, rss) = timed(command)?;
        blocker_s.push(elapsed.as_secs_f64());
        blocker_rss.push(rss);
        let mut command = Command::new("awk");
        command.args(["{ print $1, $4 }", &log]);
        awk_s.push(timed(command)?.0.as_secs_f64());
    }
    let blocker_s = median(blocker_s);
    let awk_s = median(awk_s);
    let report = AnalyzeBench {
        log_mib: mib,
        lines,
        clickers_planted: CLICKERS.into(),
        clickers_flagged: clickers_flagged as u64,
        flagged: flags.len() as u64,
        blocker_s,
        blocker_mib_per_s: mib / blocker_s,
        blocker_max_rss_mib: median(blocker_rss),
        awk_s,
        awk_mib_per_s: mib / awk_s,
    };
    println!(
        "bench: analyze {mib:.0} MiB in {blocker_s:.2} s ({:.0} MiB/s); awk {awk_s:.2} s",
        report.blocker_mib_per_s
    );
    Ok(report)
}

pub fn run_alone(root: &Path, plan: Plan) -> Result<()> {
    let report = run(root, plan)?;
    let markdown = markdown(&report);
    super::report::write_files(root, "analyze", &report, &markdown)
}

pub fn markdown(report: &AnalyzeBench) -> String {
    let mut out = String::new();
    out += "\n## Bunch analysis of an access log (issue 10)\n\n";
    out += &format!(
        "`blocker analyze` (release build, seed 003's defaults) over a generated day of \
         Combined Log Format: {:.0} MiB, {} lines, requests for pages, images, stylesheets and \
         scripts from {VISITORS} visitors at random, and {} clickers, each with one bunch of 12 \
         pages 1 s apart. \
         The peer is `awk '{{ print $1, $4 }}'` (mawk on Debian) on the same file: it only \
         reads the file and takes each line's client and time, the part any analysis script \
         must do before analysing anything, so it is a floor for such a script rather than a \
         competitor. Median of the runs, page cache warm.\n\n",
        report.log_mib, report.lines, report.clickers_planted
    );
    out += "| measure | value |\n|---|---|\n";
    for (what, value) in [
        (
            "blocker analyze",
            format!(
                "{:.2} s, {:.0} MiB/s (goal for 1 GB: ≤ 10 s)",
                report.blocker_s, report.blocker_mib_per_s
            ),
        ),
        (
            "peak RSS of blocker analyze",
            format!("{:.1} MiB", report.blocker_max_rss_mib),
        ),
        (
            "awk extracting address and time",
            format!("{:.2} s, {:.0} MiB/s", report.awk_s, report.awk_mib_per_s),
        ),
        (
            "blocker ÷ awk time",
            format!("{:.2}", report.blocker_s / report.awk_s.max(1e-9)),
        ),
        (
            "clickers flagged",
            format!(
                "{} of {} ({} sources flagged in all)",
                report.clickers_flagged, report.clickers_planted, report.flagged
            ),
        ),
    ] {
        out += &format!("| {what} | {value} |\n");
    }
    out
}

/// Clickers live in 100.0.0.0/8, visitors elsewhere, so the report can tell them apart.
const CLICKER_NET: u8 = 100;

/// xorshift64*: reproducible and cheap, so generating a gigabyte takes seconds.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Writes about `target_bytes` of log over one day, in time order; returns the line count.
fn generate(path: &Path, target_bytes: u64) -> Result<u64> {
    const AGENTS: [&str; 3] = [
        "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    ];
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut line = String::with_capacity(512);
    let (mut written, mut lines) = (0_u64, 0_u64);
    let day_seconds = 86_400_u64;
    // The day is cut into ticks; each tick writes a share of the bytes so times increase.
    let ticks = day_seconds;
    let per_tick = target_bytes / ticks + 1;
    for tick in 0..ticks {
        let budget = per_tick * (tick + 1);
        let (hour, minute, second) = (tick / 3600, tick / 60 % 60, tick % 60);
        let time = format!("18/Feb/2012:{hour:02}:{minute:02}:{second:02} +0100");
        // Every 1700 s one clicker in turn requests a page a second for 12 s.
        let clicker = (tick % 1_700 < 12).then(|| {
            let [_, a, b, c] = ((tick / 1_700) as u32 % CLICKERS).to_be_bytes();
            Ipv4Addr::new(CLICKER_NET, a, b, c)
        });
        let mut clicked = false;
        while written < budget {
            line.clear();
            let (addr, path) = match clicker.filter(|_| !clicked) {
                Some(clicker) => {
                    clicked = true;
                    (clicker, format!("/article/{}", rng.below(5_000)))
                }
                None => {
                    let visitor = rng.below(VISITORS.into()) as u32 + 0x0b00_0000;
                    let path = match rng.below(16) {
                        0..=2 => format!("/blog/{}/", rng.below(2_000)),
                        3..=9 => format!("/img/{}.jpg", rng.below(20_000)),
                        10..=12 => "/static/site.css".to_string(),
                        _ => format!("/static/app.js?v={}", rng.below(9)),
                    };
                    (Ipv4Addr::from(visitor), path)
                }
            };
            let agent = AGENTS[rng.below(3) as usize];
            let size = rng.below(90_000);
            writeln!(
                line,
                r#"{addr} - - [{time}] "GET {path} HTTP/1.1" 200 {size} "https://www.example.org/" "{agent}""#
            )?;
            out.write_all(line.as_bytes())?;
            written += line.len() as u64;
            lines += 1;
        }
    }
    out.flush()?;
    Ok(lines)
}

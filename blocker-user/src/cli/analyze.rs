//! `blocker analyze`: seed 003's daily bunch analysis of web access logs, optionally banning
//! the sources it flags.

use std::{
    collections::HashMap,
    io::{BufRead, Write},
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use blocker::{
    clock::{expiry_after, parse_duration},
    lockout::Guard,
    logs::{
        access::{parse_access_line, BunchFlag, BunchSettings, BunchTracker},
        lines,
    },
    pins::{require_root, PinDir},
    state::Origin,
    store::Store,
    text,
};
use ipnet::IpNet;
use jiff::{tz::TimeZone, Timestamp};
use serde::Serialize;
use tracing::{info, warn};

/// Flag the sources of an access log that request pages in quick bunches, the way bots click
/// through a site, and optionally ban them.
///
/// A bunch starts with a source's 2nd request within --gap of its 1st and grows with each
/// request within --gap of the previous one. A source is flagged for one bunch of
/// --bunch-size requests, or for --bunches bunches of at least --min-bunch requests within
/// --window. Requests for static assets (stylesheets, scripts, images, fonts) do not count
/// unless --all-requests is given. Reads Common/Combined Log Format, with or without a leading
/// virtual host, plain or gzipped.
///
/// Example: blocker analyze /var/log/apache2/access.log.1 --ban --for 7d
#[derive(clap::Args)]
pub struct AnalyzeArgs {
    #[arg(required = true, value_name = "ACCESS_LOG")]
    logs: Vec<PathBuf>,
    /// The longest pause between two requests of one bunch.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    gap: std::time::Duration,
    /// A bunch this long flags its source.
    #[arg(long, default_value_t = 10)]
    bunch_size: u32,
    /// A bunch this long counts toward --bunches.
    #[arg(long, default_value_t = 4)]
    min_bunch: u32,
    /// This many bunches of --min-bunch within --window flag their source.
    #[arg(long = "bunches", default_value_t = 10)]
    bunch_count: u32,
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    window: std::time::Duration,
    /// Count requests for static assets too.
    #[arg(long)]
    all_requests: bool,
    /// A JSON array of the flagged sources: addr, date, reason, largest_bunch, bunches.
    #[arg(long)]
    json: bool,
    /// Ban the flagged sources, with the reason shown.
    #[arg(long)]
    ban: bool,
    /// How long the bans last: 90s, 10m, 24h, 7d [default: permanent].
    #[arg(long = "for", value_name = "DURATION", requires = "ban", value_parser = parse_duration)]
    duration: Option<std::time::Duration>,
    /// Ban even sources whose ban would lock you out (your SSH session, this host).
    #[arg(long, requires = "ban")]
    force: bool,
}

/// Malformed lines reported one by one; the rest are only counted.
const MALFORMED_WARNINGS: u64 = 5;

/// A flagged source as reported.
#[derive(Serialize)]
struct Flagged {
    addr: IpAddr,
    /// The day of the flag, in the local time zone, like the seed's daily list.
    date: jiff::civil::Date,
    reason: String,
    largest_bunch: u32,
    bunches: u32,
}

pub fn run(pins: &PinDir, state_path: &Path, args: AnalyzeArgs) -> anyhow::Result<()> {
    let mut tracker = BunchTracker::new(BunchSettings {
        gap: args.gap,
        bunch_size: args.bunch_size,
        min_bunch: args.min_bunch,
        bunch_count: args.bunch_count,
        window: args.window,
    })?;
    if args.ban {
        // Before reading a gigabyte, not after.
        require_root()?;
    }
    let flags = analyze(&args, &mut tracker)?;
    print(&flags, args.json)?;
    if args.ban && !flags.is_empty() {
        ban(pins, state_path, &flags, &args)?;
    }
    Ok(())
}

/// Reads every log in turn through one tracker; the flags, each with the whole of what its
/// source did up to the end of the input (or to its next flag).
fn analyze(args: &AnalyzeArgs, tracker: &mut BunchTracker) -> anyhow::Result<Vec<Flagged>> {
    let zone = TimeZone::system();
    let mut flags: Vec<(BunchFlag, Timestamp)> = Vec::new();
    let mut malformed = 0_u64;
    let mut lines_read = 0_u64;
    for path in &oldest_first(&args.logs)? {
        let name = path.display().to_string();
        let mut reader = lines::open(path)?;
        lines_read += lines::for_each_line(reader.as_mut(), &name, |number, line| {
            let Some(hit) = parse_access_line(line) else {
                malformed += 1;
                if malformed <= MALFORMED_WARNINGS && !line.is_empty() {
                    warn!(
                        "{}:{number}: not an access log line; skipped",
                        path.display()
                    );
                }
                return;
            };
            if hit.page || args.all_requests {
                if let Some(flag) = tracker.hit(hit.addr, hit.time) {
                    flags.push((flag, hit.time));
                }
            }
        })
        .with_context(|| format!("reading {name}"))?;
    }
    if malformed > MALFORMED_WARNINGS {
        warn!("skipped {malformed} of {lines_read} lines that are not access log lines");
    }
    let mut latest: HashMap<IpAddr, usize> = HashMap::new();
    for (index, (flag, _)) in flags.iter().enumerate() {
        latest.insert(flag.addr, index);
    }
    for (addr, index) in latest {
        if let Some(current) = tracker.current_flag(addr) {
            flags[index].0 = current;
        }
    }
    Ok(flags
        .into_iter()
        .map(|(flag, time)| Flagged {
            addr: flag.addr,
            date: time.to_zoned(zone.clone()).date(),
            reason: flag.reason,
            largest_bunch: flag.largest_bunch,
            bunches: flag.bunches,
        })
        .collect())
}

/// The logs in the order of their first request's time, so `access.log access.log.1
/// access.log.2.gz` reads as the day went; a log without one goes last.
fn oldest_first(logs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut dated = Vec::with_capacity(logs.len());
    for path in logs {
        let reader = lines::open(path)?;
        let first = reader
            .split(b'\n')
            .take(1_000)
            .map_while(std::result::Result::ok)
            .find_map(|line| parse_access_line(&String::from_utf8_lossy(&line)))
            .map(|hit| hit.time);
        dated.push((first.is_none(), first, path.clone()));
    }
    dated.sort();
    Ok(dated.into_iter().map(|(_, _, path)| path).collect())
}

fn print(flags: &[Flagged], json: bool) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if json {
        serde_json::to_writer_pretty(&mut out, flags)?;
        writeln!(out)?;
    } else {
        for flag in flags {
            writeln!(out, "{} {} {}", flag.date, flag.addr, flag.reason)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Bans the flagged sources the way `blocker ban` does, with source "log"; a ban already in
/// force that lasts longer is kept. A source whose ban would lock the operator out is skipped
/// with a warning unless --force, so one such source does not keep the others unbanned.
fn ban(
    pins: &PinDir,
    state_path: &Path,
    flags: &[Flagged],
    args: &AnalyzeArgs,
) -> anyhow::Result<()> {
    let nets: Vec<IpNet> = flags.iter().map(|flag| IpNet::from(flag.addr)).collect();
    let mut store = Store::open_scoped(pins, state_path, &nets)?;
    store.origin = Origin::local("log");
    let guard = if args.force {
        None
    } else {
        Some(Guard::detect()?)
    };
    let expires_at = expiry_after(store.now.wall, args.duration)?;
    let mut banned = Vec::new();
    for (flag, net) in flags.iter().zip(&nets) {
        if let Some(refusal) = guard
            .as_ref()
            .and_then(|guard| guard.check(net, &store.state.allow).err())
        {
            warn!("not banning: {refusal}");
            continue;
        }
        text::check_reason(&flag.reason)?;
        store.ban_at_least(*net, expires_at, &flag.reason);
        banned.push(*net);
    }
    store.count_issued("log", banned.len() as u64);
    store.commit(|| {}).context("banning the flagged sources")?;
    for net in &banned {
        match expires_at {
            Some(at) => info!("banned {net} until {at:.0}"),
            None => info!("banned {net} permanently"),
        }
    }
    Ok(())
}

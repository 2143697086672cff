//! `blocker scan`: a filter run over log files, like `fail2ban-regex`, so a filter can be
//! checked against real logs before a jail uses it.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::path::PathBuf;

use blocker::logs::filter::{Filter, LineVerdict};
use blocker::logs::lines;
use blocker::Error;
use jiff::Timestamp;
use serde::Serialize;

#[derive(clap::Args)]
pub struct ScanArgs {
    /// Log files, plain or gzipped.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// A built-in filter (sshd, nginx-http-auth, ...) or a fail2ban filter file.
    #[arg(long, value_name = "NAME_OR_PATH")]
    filter: String,
    /// One JSON object: counts, per-source summary and every matched line.
    #[arg(long)]
    json: bool,
}

/// What a scan found, as `--json` prints it.
#[derive(Debug, Default, Serialize)]
struct Report {
    filter: String,
    lines: u64,
    matched: u64,
    ignored: u64,
    hosts: Vec<Host>,
    matches: Vec<Match>,
}

#[derive(Debug, Serialize)]
struct Host {
    addr: IpAddr,
    count: u64,
    first: Option<Timestamp>,
    last: Option<Timestamp>,
}

#[derive(Debug, Serialize)]
struct Match {
    file: String,
    line: u64,
    addr: IpAddr,
    time: Option<Timestamp>,
}

pub fn scan(args: &ScanArgs) -> anyhow::Result<()> {
    let filter = Filter::load(&args.filter).map_err(Error::from)?;
    // Open every file first: a missing one fails the command before anything is printed.
    let mut inputs = args
        .files
        .iter()
        .map(|path| Ok((path.display().to_string(), lines::open(path)?)))
        .collect::<Result<Vec<_>, Error>>()?;
    let mut report = Report {
        filter: filter.name().to_string(),
        ..Report::default()
    };
    let mut hosts: HashMap<IpAddr, Host> = HashMap::new();
    // Dates without a year or zone are read against the time the scan started.
    let now = jiff::Zoned::now();
    for (name, reader) in &mut inputs {
        report.lines += lines::for_each_line(reader.as_mut(), name, |number, line| {
            match filter.check_at(line, &now) {
                LineVerdict::Failure { addr, time } => {
                    report.matched += 1;
                    let host = hosts.entry(addr).or_insert(Host {
                        addr,
                        count: 0,
                        first: time,
                        last: time,
                    });
                    host.count += 1;
                    host.first = match (host.first, time) {
                        (Some(first), Some(time)) => Some(first.min(time)),
                        (first, time) => first.or(time),
                    };
                    host.last = host.last.max(time);
                    report.matches.push(Match {
                        file: name.clone(),
                        line: number,
                        addr,
                        time,
                    });
                }
                LineVerdict::Ignored => report.ignored += 1,
                LineVerdict::NoMatch => {}
            }
        })
        .map_err(|err| Error::UnreadableInput {
            path: name.clone(),
            message: err.to_string(),
        })?;
    }
    report.hosts = hosts.into_values().collect();
    report
        .hosts
        .sort_by(|a, b| b.count.cmp(&a.count).then(a.addr.cmp(&b.addr)));
    let mut out = BufWriter::new(std::io::stdout().lock());
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        print_summary(&mut out, &report)?;
    }
    out.flush()?;
    Ok(())
}

fn print_summary(out: &mut impl Write, report: &Report) -> std::io::Result<()> {
    writeln!(
        out,
        "filter {}: {} lines, {} matched, {} ignored, {} sources",
        report.filter,
        report.lines,
        report.matched,
        report.ignored,
        report.hosts.len()
    )?;
    let width = report
        .hosts
        .iter()
        .map(|host| host.addr.to_string().len())
        .max()
        .unwrap_or(0);
    let time = |time: Option<Timestamp>| time.map_or("-".to_string(), |time| time.to_string());
    for host in &report.hosts {
        writeln!(
            out,
            "  {:width$}  {:>6}  first {}  last {}",
            host.addr.to_string(),
            host.count,
            time(host.first),
            time(host.last),
        )?;
    }
    Ok(())
}

//! `cargo xtask import-bench`: `blocker import` of 100k lines in each list format, each into a
//! fresh state, so the formats' parsers can be compared in one run (the database side is the
//! same for all: see `cargo xtask bench --state`).

use std::path::Path;

use anyhow::Result;

use super::{median, timed, Lab};

const LINES: u32 = 100_000;

/// The i-th benchmark address: 100k distinct hosts in 198.18.0.0/15 (RFC 2544 benchmarking).
fn address(i: u32) -> String {
    let [_, a, b, c] = (i + (198 << 24 | 18 << 16)).to_be_bytes();
    format!("198.{a}.{b}.{c}")
}

/// The list of `format` banning the benchmark addresses.
fn list(format: &str) -> String {
    let (head, line, tail): (&str, fn(&str) -> String, &str) = match format {
        "plain" => ("", |a| format!("{a} # bulk 2026-12-01\n"), ""),
        "htaccess" => (
            "# PERMANENT BLACKLIST\n<Limit GET POST PUT>\n order allow,deny\n allow from all\n",
            |a| format!(" deny from {a} \"# bulk 2026-12-01 \"\n"),
            "</Limit>\n",
        ),
        "nginx" => ("", |a| format!("deny {a}; # bulk\n"), ""),
        "ipset" => (
            "create bulk hash:ip family inet hashsize 65536 maxelem 200000 timeout 0 comment\n",
            |a| format!("add bulk {a} timeout 0 comment \"bulk\"\n"),
            "",
        ),
        "iptables" => (
            "*filter\n:INPUT ACCEPT [0:0]\n",
            |a| format!("-A INPUT -s {a}/32 -m comment --comment \"bulk\" -j DROP\n"),
            "COMMIT\n",
        ),
        "spamhaus" => ("; bulk\n", |a| format!("{a}/32 ; SBL1\n"), ""),
        "netset" => ("# FireHOL netset\n", |a| format!("{a}\n"), ""),
        "perl-hash" => (
            "",
            |a| format!("$banned_ip{{\"{a}\"}}=qq(2/18/2012 bulk);\n"),
            "",
        ),
        other => unreachable!("no generator for {other}"),
    };
    let mut text = head.to_string();
    for i in 0..LINES {
        text.push_str(&line(&address(i)));
    }
    text.push_str(tail);
    text
}

/// A fail2ban database (its `bans` table) holding the benchmark addresses, banned for a day.
fn fail2ban_db(path: &Path) -> Result<()> {
    let mut db = rusqlite::Connection::open(path)?;
    db.execute_batch(
        "CREATE TABLE bans(jail TEXT NOT NULL, ip TEXT, timeofban INTEGER NOT NULL,
             bantime INTEGER NOT NULL, bancount INTEGER NOT NULL default 1, data JSON);",
    )?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let tx = db.transaction()?;
    {
        let mut insert = tx.prepare("INSERT INTO bans VALUES ('sshd', ?1, ?2, 86400, 1, '{}')")?;
        for i in 0..LINES {
            insert.execute(rusqlite::params![address(i), now])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// The formats measured, plain first: the others are compared with it.
const FORMATS: [&str; 9] = [
    "plain",
    "htaccess",
    "nginx",
    "ipset",
    "iptables",
    "spamhaus",
    "netset",
    "perl-hash",
    "fail2ban-db",
];

/// Rounds over all formats, the order reversed every other round: one import per format is
/// too noisy on a shared machine, so the medians are reported.
const ROUNDS: usize = 5;

pub fn run(root: &Path) -> Result<()> {
    let lab = Lab::new(root)?;
    let config = lab.config()?;
    for format in FORMATS {
        let path = lab.dir.path().join(format!("list-{format}"));
        if format == "fail2ban-db" {
            fail2ban_db(&path)?;
        } else {
            std::fs::write(&path, list(format))?;
        }
    }
    // Per format: the seconds of each round, and the ratio to plain's of the same round.
    let mut seconds = vec![Vec::new(); FORMATS.len()];
    let mut ratios = vec![Vec::new(); FORMATS.len()];
    for round in 0..ROUNDS {
        let mut order: Vec<usize> = (0..FORMATS.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        let mut this_round = vec![0.0; FORMATS.len()];
        for index in order {
            let format = FORMATS[index];
            let path = lab.dir.path().join(format!("list-{format}"));
            lab.blocker(&["load", "--iface", "bb0", "--config", &config])?;
            let mut command = lab.blocker_command();
            command.args(["import", &path.to_string_lossy(), "--format", format]);
            let (elapsed, rss) = timed(command)?;
            lab.blocker(&["unload"])?;
            std::fs::remove_file(&lab.state).ok();
            let elapsed = elapsed.as_secs_f64();
            println!(
                "bench: round {round}: import of {LINES} lines as {format}: {elapsed:.2} s \
                 ({:.0} lines/s, {rss:.0} MiB)",
                f64::from(LINES) / elapsed
            );
            this_round[index] = elapsed;
        }
        for (index, elapsed) in this_round.iter().enumerate() {
            seconds[index].push(*elapsed);
            ratios[index].push(elapsed / this_round[0]);
        }
    }
    println!(
        "\n| format | 100k lines (median of {ROUNDS}) | lines/s | vs plain (median same-round ratio) |\n|---|---|---|---|"
    );
    for ((format, seconds), ratios) in FORMATS.iter().zip(seconds).zip(ratios) {
        let elapsed = median(seconds);
        println!(
            "| {format} | {elapsed:.2} s | {:.0}k | {:.2}x |",
            f64::from(LINES) / elapsed / 1000.0,
            median(ratios)
        );
    }
    Ok(())
}

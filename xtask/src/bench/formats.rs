//! `cargo xtask import-bench`: `blocker import` of 100k lines in each list format, each into a
//! fresh state, so the formats' parsers can be compared in one run (the database side is the
//! same for all: see `cargo xtask bench --state`).

use std::path::Path;

use anyhow::Result;

use super::{timed, Lab};

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

pub fn run(root: &Path) -> Result<()> {
    let lab = Lab::new(root)?;
    let config = lab.config()?;
    let mut rows = Vec::new();
    for format in [
        "plain",
        "htaccess",
        "nginx",
        "ipset",
        "iptables",
        "spamhaus",
        "netset",
        "perl-hash",
        "fail2ban-db",
    ] {
        let path = lab.dir.path().join(format!("list-{format}"));
        if format == "fail2ban-db" {
            fail2ban_db(&path)?;
        } else {
            std::fs::write(&path, list(format))?;
        }
        lab.blocker(&["load", "--iface", "bb0", "--config", &config])?;
        let mut command = lab.blocker_command();
        command.args(["import", &path.to_string_lossy(), "--format", format]);
        let (elapsed, rss) = timed(command)?;
        lab.blocker(&["unload"])?;
        std::fs::remove_file(&lab.state).ok();
        let seconds = elapsed.as_secs_f64();
        println!(
            "bench: import of {LINES} lines as {format}: {seconds:.2} s ({:.0} lines/s, {rss:.0} MiB)",
            f64::from(LINES) / seconds
        );
        rows.push((format, seconds));
    }
    let plain = rows[0].1;
    println!("\n| format | 100k lines | vs plain |\n|---|---|---|");
    for (format, seconds) in rows {
        println!("| {format} | {seconds:.2} s | {:.2}x |", seconds / plain);
    }
    Ok(())
}

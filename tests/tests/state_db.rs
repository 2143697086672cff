//! The state database: a history of every change, nothing acknowledged lost to `kill -9` at
//! any instant, concurrent writers (CLI and daemon) lose nothing, and a damaged database is a
//! clear error that is never replaced.

use std::{
    collections::BTreeSet,
    fs,
    process::Child,
    thread,
    time::{Duration, Instant},
};

use blocker_tests::{daemon::DaemonGuard, require_root, TestNet};
use serde_json::Value;

/// A small xorshift generator: the seed is printed so a failing run can be repeated with
/// `BLOCKER_CRASH_SEED`.
struct Random(u64);

impl Random {
    fn from_env() -> Self {
        let seed = std::env::var("BLOCKER_CRASH_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |since| since.as_nanos() as u64 | 1)
            });
        println!("crash test seed: {seed} (BLOCKER_CRASH_SEED={seed} repeats it)");
        Self(seed)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// Kills `child` after `after`, unless it exits first. Returns whether it exited with success
/// before the kill: only then was its change acknowledged.
fn kill_after(mut child: Child, after: Duration) -> bool {
    let deadline = Instant::now() + after;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status.success();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

fn integrity(net: &TestNet) -> String {
    net.state_db()
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("integrity check")
}

/// Entries in the kernel's IPv4 ban trie, as `blocker status` counts them.
fn kernel_v4_bans(net: &TestNet) -> u64 {
    let status = net.blocker(&["status", "--json"]).ok().json();
    status["maps"]
        .as_array()
        .and_then(|maps| maps.iter().find(|map| map["name"] == "BAN_V4"))
        .and_then(|map| map["entries"].as_u64())
        .unwrap_or_else(|| panic!("no BAN_V4 in {status}"))
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn history_shows_who_banned_a_source_why_and_when_it_was_lifted() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let host = net.client_v4(1, 2);
    let range = format!("{}/24", net.client_v4(1, 0));
    net.blocker(&["ban", &range, "--reason", "scanning range"])
        .ok();
    net.blocker(&[
        "ban",
        &host.to_string(),
        "--for",
        "1s",
        "--reason",
        "brute force",
    ])
    .ok();
    net.blocker(&["unban", &range]).ok();
    net.blocker(&["allow", &host.to_string(), "--reason", "our monitor"])
        .ok();
    // The daemon's expiry drops the ban once it ended, and says so in the history.
    let config = net.config("daemon.toml", "");
    let _daemon = DaemonGuard::start(&net, &config);
    let deadline = Instant::now() + Duration::from_secs(10);
    let changes = loop {
        let changes = net
            .blocker(&["history", &host.to_string(), "--json"])
            .ok()
            .json();
        if changes.as_array().is_some_and(|all| all.len() >= 5) {
            break changes;
        }
        assert!(Instant::now() < deadline, "no expiry: {changes}");
        thread::sleep(Duration::from_millis(200));
    };
    let seen: Vec<(String, String, String)> = changes
        .as_array()
        .expect("an array")
        .iter()
        .map(|change| {
            let text = |key: &str| change[key].as_str().unwrap_or("-").to_string();
            (text("action"), text("prefix"), text("source"))
        })
        .collect();
    let host = format!("{host}/32");
    let expected: Vec<(String, String, String)> = [
        ("ban", range.as_str(), "cli"),
        ("ban", host.as_str(), "cli"),
        ("unban", range.as_str(), "cli"),
        ("allow", host.as_str(), "cli"),
        ("expire", host.as_str(), "expiry"),
    ]
    .iter()
    .map(|(a, p, s)| (a.to_string(), p.to_string(), s.to_string()))
    .collect();
    assert_eq!(seen, expected, "{changes}");
    assert_eq!(changes[0]["reason"], "scanning range");
    assert_eq!(changes[0]["actor"], "root");
    assert!(changes[0]["at"]
        .as_str()
        .is_some_and(|at| at.ends_with('Z')));
    let table = net.blocker(&["history", &host]).ok().stdout;
    assert!(table.contains("brute force"), "{table}");
    let none = net
        .blocker(&["history", "198.51.100.1", "--json"])
        .ok()
        .json();
    assert_eq!(none, Value::Array(Vec::new()));
    let run = net.blocker(&["history", "not-an-address"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn nothing_acknowledged_is_lost_when_writers_are_killed_at_any_instant() {
    require_root();
    let net = TestNet::new();
    let config = net.config("offenses.toml", "[offenses]\nban_for = \"1h\"\n");
    net.load(&["--config", &config]).ok();
    let mut random = Random::from_env();
    let mut acknowledged: BTreeSet<String> = BTreeSet::new();
    let mut iterations = 0;
    // `blocker ban`, killed anywhere from before it opened the database to after it exited.
    for host in 10..40u8 {
        let addr = net.client_v4(1, host).to_string();
        let child = net.spawn_in_server(&["ban", &addr]);
        if kill_after(child, Duration::from_millis(random.below(60))) {
            acknowledged.insert(format!("{addr}/32"));
        }
        iterations += 1;
    }
    // `blocker import` of 3,000 prefixes, killed midway.
    for round in 0..12u8 {
        let lines: String = (0..3000u32)
            .map(|i| {
                format!(
                    "198.{}.{}.{}\n",
                    18 + round % 2,
                    round * 20 + (i / 250) as u8,
                    i % 250
                )
            })
            .collect();
        let list = net.config(&format!("import-{round}.txt"), &lines);
        let child = net.spawn_in_server(&["import", &list]);
        if kill_after(child, Duration::from_millis(random.below(1500))) {
            acknowledged.extend(lines.lines().map(|addr| format!("{addr}/32")));
        }
        iterations += 1;
    }
    // The daemon issuing bans from offenses, killed while it answers.
    for round in 0..10u8 {
        let daemon = DaemonGuard::start(&net, &config);
        let stop = Instant::now() + Duration::from_millis(50 + random.below(400));
        let mut sent = 0u8;
        let killer = {
            let pid = daemon.child.id();
            let wait = stop.saturating_duration_since(Instant::now());
            thread::spawn(move || {
                thread::sleep(wait);
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            })
        };
        while Instant::now() < stop + Duration::from_millis(100) && sent < 200 {
            let addr = format!("203.0.{}.{}", 100 + round, sent);
            let (status, body) = daemon.offend(&format!(
                r#"{{"addr":"{addr}","severity":"critical","reason":"crash test"}}"#
            ));
            if status == 200 && body.contains("\"banned\":true") {
                acknowledged.insert(format!("{addr}/32"));
            }
            sent += 1;
        }
        killer.join().expect("the killer thread");
        drop(daemon);
        iterations += 1;
    }
    println!(
        "{iterations} kills, {} acknowledged bans",
        acknowledged.len()
    );
    assert!(iterations >= 50, "{iterations} iterations");
    assert!(!acknowledged.is_empty(), "nothing was acknowledged at all");

    // What was stored is what the kernel enforces once `load` reconciled, and every
    // acknowledged ban is stored.
    let second = net.add_server_iface();
    net.blocker_in_server(&["load", "--iface", &second, "--config", &config])
        .ok();
    assert_eq!(integrity(&net), "ok");
    let stored: BTreeSet<String> = net.stored_bans().into_iter().collect();
    let lost: Vec<&String> = acknowledged.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert_eq!(kernel_v4_bans(&net), stored.len() as u64);
    // After a reboot too, and the kernel drops what the database has.
    net.blocker(&["unload"]).ok();
    net.load(&["--config", &config]).ok();
    assert_eq!(kernel_v4_bans(&net), stored.len() as u64);
    // And packets from a few of the acknowledged sources are dropped.
    let sampled: Vec<u8> = (10..40u8)
        .filter(|host| acknowledged.contains(&format!("{}/32", net.client_v4(1, *host))))
        .take(3)
        .collect();
    for host in sampled {
        let addr = net.add_client_v4(host);
        assert!(!net.reaches(addr), "{addr} was acknowledged banned");
    }
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn parallel_writers_and_the_daemon_lose_nothing() {
    require_root();
    let net = TestNet::new();
    let config = net.config("offenses.toml", "[offenses]\nban_for = \"1h\"\n");
    net.load(&["--config", &config]).ok();
    let daemon = DaemonGuard::start(&net, &config);
    let writers: Vec<_> = (0..4u8)
        .map(|writer| {
            let children: Vec<Child> = (0..15u8)
                .map(|i| net.spawn_in_server(&["ban", &format!("198.18.{writer}.{i}")]))
                .collect();
            children
        })
        .collect();
    let mut expected: BTreeSet<String> = (0..4u8)
        .flat_map(|writer| (0..15u8).map(move |i| format!("198.18.{writer}.{i}/32")))
        .collect();
    for i in 0..60u8 {
        let addr = format!("203.0.113.{i}");
        let (status, body) =
            daemon.offend(&format!(r#"{{"addr":"{addr}","severity":"critical"}}"#));
        assert_eq!(status, 200, "{body}");
        expected.insert(format!("{addr}/32"));
    }
    for child in writers.into_iter().flatten() {
        let output = child.wait_with_output().expect("a writer");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    drop(daemon);
    let stored: BTreeSet<String> = net.stored_bans().into_iter().collect();
    assert_eq!(stored, expected);
    assert_eq!(kernel_v4_bans(&net), expected.len() as u64);
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_damaged_database_is_a_clear_error_and_is_never_replaced() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let banned = net.client_v4(1, 2);
    net.blocker(&["ban", &banned.to_string()]).ok();
    let mut damaged = fs::read(net.state_path()).unwrap();
    damaged[4096..].fill(0);
    damaged[100..4096].fill(0xff);
    fs::write(net.state_path(), &damaged).unwrap();
    for args in [
        vec!["ban", "192.0.2.7"],
        vec!["list", "--json"],
        vec!["history", "192.0.2.7"],
    ] {
        let run = net.blocker(&args);
        assert_ne!(run.code, 0, "{args:?}: {}", run.stdout);
        assert!(
            run.stderr.contains(&net.state_path().display().to_string()),
            "{args:?} names the file: {}",
            run.stderr
        );
        assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    }
    assert_eq!(
        fs::read(net.state_path()).unwrap(),
        damaged,
        "left as it was"
    );
    assert!(!net.reaches(banned), "the kernel keeps enforcing");
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn list_and_the_api_filter_and_page_the_stored_bans() {
    require_root();
    let net = TestNet::new();
    let config = net.config("daemon.toml", "");
    net.load(&[]).ok();
    net.blocker(&[
        "ban",
        "198.18.0.1",
        "198.18.0.2",
        "--reason",
        "ssh brute force",
    ])
    .ok();
    net.blocker(&["ban", "198.18.0.3", "--for", "1h", "--reason", "web scan"])
        .ok();
    let list = net.config("list.txt", "198.18.1.1 # imported\n198.18.1.2 # imported\n");
    net.blocker(&["import", &list]).ok();
    net.blocker(&["allow", "192.0.2.1"]).ok();
    let addrs = |listed: Value| -> Vec<String> {
        listed
            .as_array()
            .expect("an array")
            .iter()
            .map(|entry| entry["addr"].as_str().unwrap_or("-").to_string())
            .collect()
    };
    let listed = |args: &[&str]| addrs(net.blocker(args).ok().json());
    assert_eq!(
        listed(&["list", "--json", "--kind", "temporary"]),
        ["198.18.0.3/32"]
    );
    assert_eq!(
        listed(&["list", "--json", "--source", "import"]),
        ["198.18.1.1/32", "198.18.1.2/32"]
    );
    assert_eq!(
        listed(&["list", "--json", "--reason", "brute"]),
        ["198.18.0.1/32", "198.18.0.2/32"]
    );
    assert_eq!(
        listed(&["list", "--json", "--limit", "1"]),
        ["198.18.0.1/32"]
    );
    assert_eq!(listed(&["list", "--json", "--since", "1h"]).len(), 5);
    assert!(listed(&["list", "--json", "--since", "2999-01-01T00:00:00Z"]).is_empty());
    let all = listed(&["list", "--json"]);
    assert_eq!(all.len(), 6, "bans and the allowlist: {all:?}");
    let run = net.blocker(&["list", "--kind", "sometimes"]);
    assert_eq!(run.code, 2, "{}", run.stderr);

    let daemon = DaemonGuard::start(&net, &config);
    let mut pages = Vec::new();
    let mut cursor = String::new();
    loop {
        let mut path = "/v1/bans?limit=1&source=import&kind=permanent".to_string();
        if !cursor.is_empty() {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let (status, body) = daemon.curl(&[&path, "-D", "-"]);
        assert_eq!(status, 200, "{body}");
        let (head, json) = body.split_once("\r\n\r\n").expect("headers");
        pages.push(addrs(serde_json::from_str(json).expect("JSON")));
        match head
            .lines()
            .find_map(|line| line.strip_prefix("next-cursor: "))
        {
            Some(next) => cursor = next.trim().replace('/', "%2F"),
            None => break,
        }
        assert!(pages.len() < 5, "{pages:?}");
    }
    assert_eq!(pages, [vec!["198.18.1.1/32"], vec!["198.18.1.2/32"]]);
    let (status, body) = daemon.curl(&["/v1/bans?limit=1"]);
    assert_eq!(status, 200);
    assert_eq!(
        addrs(serde_json::from_str(&body).unwrap()),
        ["198.18.0.1/32"]
    );
    let (status, body) = daemon.curl(&["/v1/bans?reason=web%20scan"]);
    assert_eq!(status, 200);
    assert_eq!(
        addrs(serde_json::from_str(&body).unwrap()),
        ["198.18.0.3/32"]
    );
    let (status, body) = daemon.curl(&["/v1/bans?limit=0"]);
    assert_eq!(status, 400, "{body}");
}

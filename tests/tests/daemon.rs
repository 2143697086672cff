//! `blocker daemon`: offenses over HTTP and the Unix socket ban a real traffic source at the
//! threshold and not before, bans expire, scores survive a restart, bad requests change
//! nothing, and /metrics parses with promtool and moves with real traffic.

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use blocker_tests::{
    daemon::{json, DaemonGuard},
    require_root, TestNet,
};

fn config(net: &TestNet, ban_for: &str) -> String {
    net.config(
        "daemon.toml",
        &format!("rules = []\n[offenses]\nban_for = \"{ban_for}\"\n"),
    )
}

/// A loaded blocker without rules and a daemon whose offense bans last `ban_for`.
fn loaded_with_daemon(ban_for: &str) -> (TestNet, DaemonGuard) {
    let net = TestNet::new();
    let config = config(&net, ban_for);
    net.load(&["--config", &config]).ok();
    let daemon = DaemonGuard::start(&net, &config);
    (net, daemon)
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn offenses_ban_at_the_threshold_and_not_before_and_the_ban_expires() {
    require_root();
    let (net, daemon) = loaded_with_daemon("3s");
    let client = net.client_v4(1, 2);
    let offense =
        format!(r#"{{"addr": "{client}", "severity": "major", "reason": "exploit probe"}}"#);

    let (status, body) = daemon.offend(&offense);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["banned"], false);
    assert!(net.reaches(client), "one major offense is not enough");

    let (status, body) = daemon.offend_via_socket(&offense);
    assert_eq!(status, 200, "{body}");
    let answer = json(&body);
    assert_eq!(answer["banned"], true, "{answer}");
    assert!(
        !net.reaches(client),
        "the second major offense bans at the driver"
    );
    assert!(net.reaches(net.client_v4(1, 3)), "others still pass");

    let (_, bans) = daemon.curl(&["/v1/bans"]);
    let bans = json(&bans);
    assert_eq!(bans[0]["addr"], format!("{client}/32"), "{bans}");
    assert_eq!(bans[0]["kind"], "temporary");
    assert!(bans[0]["reason"]
        .as_str()
        .unwrap_or("")
        .contains("exploit probe"));
    let (status, atom) = daemon.curl(&["/v1/bans.atom"]);
    assert_eq!(status, 200);
    assert!(
        atom.contains("<feed") && atom.contains(&format!("{client}/32")),
        "{atom}"
    );

    thread::sleep(Duration::from_secs(4));
    assert!(net.reaches(client), "the ban expired");
    // The daemon removes it from the state file too.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !net
        .blocker(&["list", "bans", "--json"])
        .ok()
        .json()
        .as_array()
        .is_some_and(Vec::is_empty)
    {
        assert!(Instant::now() < deadline, "the expired ban stayed listed");
        thread::sleep(Duration::from_millis(200));
    }
    assert!(!net.stored_bans().contains(&format!("{client}/32")));
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn check_config_names_the_line_of_an_error() {
    require_root();
    let net = TestNet::new();
    let good = config(&net, "1h");
    let run = net.blocker(&["daemon", "--check-config", &good]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let bad = net.config(
        "bad.toml",
        "[offenses]\nthreshold = 10\nhalf_lif = \"1h\"\n",
    );
    let run = net.blocker(&["daemon", "--check-config", &bad]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("line 3"), "{}", run.stderr);
    let bad = net.config("bad2.toml", "[offenses]\nthreshold = -1\n");
    let run = net.blocker(&["daemon", "--check-config", &bad]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("threshold"), "{}", run.stderr);
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn bad_requests_get_4xx_and_change_nothing() {
    require_root();
    let (net, daemon) = loaded_with_daemon("1h");
    let before = net.state_text();
    let huge = format!(
        r#"{{"addr": "192.0.2.1", "severity": "minor", "reason": "{}"}}"#,
        "x".repeat(20_000)
    );
    for (body, expected) in [
        ("not json", 400),
        (r#"{"addr": "192.0.2.1"}"#, 400),
        (r#"{"addr": "192.0.2.1", "severity": "dire"}"#, 400),
        (
            r#"{"addr": "192.0.2.1", "severity": "minor", "extra": 1}"#,
            400,
        ),
        (r#"{"addr": "10.0.0.300", "severity": "minor"}"#, 422),
        (r#"{"addr": "192.0.2.1", "severity": -3}"#, 422),
        (huge.as_str(), 413),
    ] {
        let (status, answer) = daemon.offend(body);
        assert_eq!(status, expected, "{body:.60}: {answer}");
        assert!(json(&answer)["error"].is_string(), "{answer}");
    }
    assert_eq!(net.state_text(), before, "bad requests changed the state");
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn scores_survive_a_daemon_restart() {
    require_root();
    let net = TestNet::new();
    let config = config(&net, "1h");
    net.load(&["--config", &config]).ok();
    let client = net.client_v4(1, 2);
    let offense = format!(r#"{{"addr": "{client}", "severity": "major"}}"#);
    {
        let daemon = DaemonGuard::start(&net, &config);
        assert_eq!(json(&daemon.offend(&offense).1)["banned"], false);
    }
    let daemon = DaemonGuard::start(&net, &config);
    assert_eq!(
        json(&daemon.offend(&offense).1)["banned"],
        true,
        "the first offense was kept"
    );
    assert!(!net.reaches(client));
    // `blocker report` goes through the running daemon's socket.
    let run = net.blocker(&[
        "report",
        &net.client_v4(1, 3).to_string(),
        "--severity",
        "critical",
        "--socket",
        &daemon.socket,
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(json(&run.stdout)["banned"], true);
    assert!(!net.reaches(net.client_v4(1, 3)));
}

/// `series`'s value in a scrape.
fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn the_rule_bans_issued_counter_never_goes_back_when_a_rule_changes() {
    require_root();
    let (net, daemon) = loaded_with_daemon("1h");
    let target = net.tcp_listener(net.server_v4());
    let port = target.port().to_string();
    let rule = |hitcount: &str| {
        let args = [
            "rule",
            "add",
            "quick",
            "--proto",
            "tcp",
            "--dport",
            &port,
            "--hitcount",
            hitcount,
            "--blacklist-for",
            "60s",
        ];
        net.blocker(&args).ok();
    };
    rule("1");
    let attacker = net.client_v4(1, 2);
    net.tcp_connects(attacker, target);
    assert!(!net.tcp_connects(attacker, target), "blacklisted");
    let issued = r#"blocker_bans_issued_total{source="rule"}"#;
    // Past the daemon's reuse of its last scrape.
    let scrape = || {
        thread::sleep(Duration::from_millis(300));
        daemon.curl(&["/metrics"]).1
    };
    assert_eq!(metric(&scrape(), issued), 1.0);
    // Replacing the rule starts its kernel counters over; the total keeps what they counted.
    rule("2");
    assert_eq!(metric(&scrape(), issued), 1.0);
    net.blocker(&["rule", "remove", "quick"]).ok();
    assert_eq!(metric(&scrape(), issued), 1.0);
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn metrics_parse_with_promtool_and_move_with_traffic() {
    require_root();
    let (net, daemon) = loaded_with_daemon("1h");
    let value = metric;
    let banned = r#"blocker_packets_total{action="drop",reason="manual_ban"}"#;
    let (_, before) = daemon.curl(&["/metrics"]);
    let client = net.client_v4(1, 2);
    net.blocker(&["ban", &client.to_string()]).ok();
    assert!(!net.reaches(client));
    daemon.offend(r#"{"addr": "192.0.2.50", "severity": "minor"}"#);
    let (status, after) = daemon.curl(&["/metrics"]);
    assert_eq!(status, 200);
    assert!(
        value(&after, banned) >= value(&before, banned) + 3.0,
        "drops are counted"
    );
    assert_eq!(
        value(&after, r#"blocker_offenses_total{severity="minor"}"#),
        1.0
    );
    assert_eq!(
        value(&after, r#"blocker_bans_issued_total{source="cli"}"#),
        1.0
    );
    assert_eq!(value(&after, r#"blocker_bans{kind="permanent"}"#), 1.0);
    assert!(value(&after, r#"blocker_map_capacity{map="BAN_V4"}"#) > 0.0);
    // The helper trimmed the body; the format ends every line with a newline.
    let scraped = net.state_dir.path().join("metrics.txt");
    std::fs::write(&scraped, format!("{after}\n")).expect("writing metrics");
    let check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&scraped).expect("metrics file"))
        .output()
        .expect("running promtool (cargo xtask setup installs it)");
    assert!(
        check.status.success(),
        "promtool: {}{}\n{after}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

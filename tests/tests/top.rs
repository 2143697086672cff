//! `blocker top --once --json` against the loaded program: the totals are the traffic's, the
//! rates cover what was sent during the interval, the rule's blacklisted source is listed, and
//! a ban and a blacklisting made during the interval are its events, with their sources.

use std::{
    net::{SocketAddr, UdpSocket},
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use blocker_tests::{blocker_bin, in_netns, require_root, Run, TestNet};
use serde_json::Value;

fn find<'a>(rows: &'a Value, key: &str, value: &str) -> &'a Value {
    rows.as_array()
        .expect("an array")
        .iter()
        .find(|row| row[key] == value)
        .unwrap_or_else(|| panic!("no {key} = {value} in {rows}"))
}

/// `blocker top --once --json` measuring `interval`, started in the background.
fn start_top_once(net: &TestNet, interval: &str) -> Child {
    Command::new(blocker_bin())
        .args(["top", "--once", "--json", "--interval", interval])
        .env("BLOCKER_PIN_DIR", &net.pin_dir)
        .env("BLOCKER_STATE", net.state_path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting blocker top")
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn top_once_json_shows_the_traffic() {
    require_root();
    let net = TestNet::new();
    let listener = net.tcp_listener(net.server_v4());
    net.load_with_rules(&format!(
        "[[rules]]\nname = \"probe\"\nproto = \"tcp\"\ndport = {}\nhitcount = 3\n\
         seconds = 30\nblacklist_for = \"1h\"\n",
        listener.port()
    ))
    .ok();
    let banned = net.client_v4(1, 2);
    net.blocker(&["ban", &banned.to_string()]).ok();
    let prober = net.client_v4(1, 3);
    let banned_by_hand = net.client_v4(1, 4);
    let target = SocketAddr::new(net.server_for(banned), 9);
    let client_ns = net.client_ns.clone();
    let send = move |count: usize| {
        in_netns(&client_ns, move || {
            let socket = UdpSocket::bind(SocketAddr::new(banned, 0)).expect("bind");
            for _ in 0..count {
                socket.send_to(b"dropped", target).expect("send");
            }
        })
    };
    send(30);

    // While top measures a 5 s interval: a ban, a blacklisting, 20 more datagrams.
    let child = start_top_once(&net, "5s");
    thread::sleep(Duration::from_millis(1_000));
    net.blocker(&[
        "ban",
        &banned_by_hand.to_string(),
        "--reason",
        "seen by top",
    ])
    .ok();
    for attempt in 1..=3 {
        assert!(net.tcp_connects(prober, listener), "try {attempt} passes");
    }
    assert!(
        !net.tcp_connects(prober, listener),
        "the fourth is blacklisted"
    );
    send(20);
    let run: Run = child.wait_with_output().expect("blocker top").into();
    let snapshot = run.ok().json();

    assert!(snapshot["interval_secs"].as_f64().expect("interval") >= 5.0);
    let manual = find(&snapshot["reasons"], "reason", "manual_ban");
    assert_eq!(manual["action"], "drop");
    assert_eq!(manual["packets"], 50, "{snapshot}");
    assert_eq!(manual["packets_in_interval"], 20, "{snapshot}");
    let per_sec = manual["packets_per_sec"].as_f64().expect("rate");
    assert!((20.0 / 5.5..=20.0 / 5.0).contains(&per_sec), "{per_sec}");
    assert!(manual["bits_per_sec"].as_f64().expect("bits") > per_sec * 8.0 * 20.0);
    let drop = find(&snapshot["verdicts"], "action", "drop");
    assert!(drop["packets"].as_u64().expect("drops") >= 51, "{snapshot}");
    assert_eq!(
        find(&snapshot["reasons"], "reason", "rule_triggered")["packets"],
        1
    );

    let rules = net.blocker(&["rule", "list", "--json"]).ok().json();
    let probe = find(&snapshot["rules"], "name", "probe");
    assert_eq!(probe["events"], rules[0]["events_seen"], "{snapshot}");
    assert_eq!(probe["blacklisted"], 1);

    // The blacklist's one entry; the banned sender may be listed too, if one of its packets
    // was sampled.
    let sources = snapshot["sources"].as_array().expect("sources");
    let listed: Vec<&Value> = sources.iter().filter(|s| s["hits"] != 0).collect();
    assert_eq!(listed.len(), 1, "{snapshot}");
    assert_eq!(listed[0]["addr"], format!("{prober}/32"));
    assert_eq!(listed[0]["rule"], "probe");
    assert!(listed[0]["hits"].as_u64().expect("hits") >= 3);

    let ban_trie = find(&snapshot["maps"], "name", "BAN_V4");
    assert_eq!(ban_trie["entries"], 2);
    assert_eq!(
        find(&snapshot["maps"], "name", "BLACKLIST_V4")["entries"],
        1
    );

    // The events: the ban from the command line, the rule's blacklisting; not the ban made
    // before the interval.
    assert_eq!(snapshot["state_available"], true);
    let events = &snapshot["events"];
    let ban = find(events, "prefix", &format!("{banned_by_hand}/32"));
    assert_eq!(ban["action"], "ban", "{events}");
    assert_eq!(ban["source"], "cli");
    assert_eq!(ban["reason"], "seen by top");
    let blacklisting = find(events, "prefix", &format!("{prober}/32"));
    assert_eq!(blacklisting["action"], "blacklisted", "{events}");
    assert_eq!(blacklisting["source"], "rule");
    assert_eq!(blacklisting["reason"], "probe");
    assert_eq!(events.as_array().expect("events").len(), 2, "{events}");

    // A rule filter that matches nothing empties the source list; bad input exits 2.
    let filtered = net
        .blocker(&[
            "top",
            "--once",
            "--json",
            "--interval",
            "100ms",
            "--rule",
            "other",
        ])
        .ok()
        .json();
    assert_eq!(filtered["sources"], Value::Array(Vec::new()));
    let bad = net.blocker(&["top", "--once", "--interval", "5x"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
}

/// Two banned sources send 2000 and 200 datagrams, interleaved, during the interval: the
/// kernel's sample ranks them in that order, with estimates near the truth.
#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn top_once_json_ranks_the_sampled_sources_blocked_most() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let heavy = net.client_v4(1, 2);
    let light = net.client_v4(1, 3);
    for source in [heavy, light] {
        net.blocker(&["ban", &source.to_string()]).ok();
    }
    let target = SocketAddr::new(net.server_for(heavy), 9);
    let child = start_top_once(&net, "4s");
    thread::sleep(Duration::from_millis(500));
    in_netns(&net.client_ns, move || {
        let heavy = UdpSocket::bind(SocketAddr::new(heavy, 0)).expect("bind");
        let light = UdpSocket::bind(SocketAddr::new(light, 0)).expect("bind");
        for n in 0..2200 {
            let socket = if n % 11 == 10 { &light } else { &heavy };
            socket.send_to(b"blocked", target).expect("send");
            // Paced, so no frame is lost in the veth's queue before XDP sees it.
            if n % 100 == 99 {
                thread::sleep(Duration::from_millis(2));
            }
        }
    });
    let run: Run = child.wait_with_output().expect("blocker top").into();
    let snapshot = run.ok().json();

    let manual = find(&snapshot["reasons"], "reason", "manual_ban");
    assert_eq!(manual["packets_in_interval"], 2200, "{snapshot}");
    let sources = snapshot["sources"].as_array().expect("sources");
    assert_eq!(sources.len(), 2, "{snapshot}");
    assert_eq!(sources[0]["addr"], format!("{heavy}/32"), "{snapshot}");
    assert_eq!(sources[1]["addr"], format!("{light}/32"), "{snapshot}");
    let estimate = |row: &Value| row["blocked_in_interval"].as_u64().expect("estimate");
    for row in sources {
        assert_eq!(row["reason"], "manual_ban", "{row}");
        assert_eq!(row["rule"], Value::Null, "{row}");
        assert!(row["samples"].as_u64().expect("samples") >= 1, "{row}");
    }
    // 1 in 64 sampled: about 31 samples of the heavy source and 3 of the light one.
    assert!((1600..=2400).contains(&estimate(&sources[0])), "{snapshot}");
    assert!((64..=600).contains(&estimate(&sources[1])), "{snapshot}");
}

//! Rate and burst rules with real connections: the seed's SSH blacklist at XDP, checked against
//! the kernel's own `recent` module, rejects, IPv6 aggregation, bursts and runtime changes.

use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use blocker_tests::{in_netns, recent_ruleset, require_root, TestNet};

/// A rate rule on `port` in TOML.
fn rate_rule(port: u16, seconds: u32, blacklist: &str, refresh: bool) -> String {
    format!(
        "[[rules]]\nname = \"ssh\"\nproto = \"tcp\"\ndport = {port}\nhitcount = 3\n\
         seconds = {seconds}\nblacklist_for = \"{blacklist}\"\nrefresh = {refresh}\n"
    )
}

fn sleep_until(deadline: Instant) {
    thread::sleep(deadline.saturating_duration_since(Instant::now()));
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn the_seed_gives_exactly_three_tries_and_refresh_keeps_the_attacker_out() {
    require_root();
    let net = TestNet::new();
    let listener = net.tcp_listener(net.server_v4());
    net.load_with_rules(&rate_rule(listener.port(), 4, "3s", true))
        .ok();
    let attacker = net.client_v4(1, 2);
    let bystander = net.client_v4(1, 3);
    // Each try closed both ways before the next: a late ACK of a try's close, sent after the
    // 4th blacklists the source, would refresh the entry during the silence below.
    for attempt in 1..=3 {
        assert!(
            connects_and_closes(&net, attacker, listener),
            "try {attempt} passes"
        );
    }
    let blacklisted_at = Instant::now();
    assert!(!net.tcp_connects(attacker, listener), "the 4th is dropped");
    let listed = net.blocker(&["list", "blacklist", "--json"]).ok().json();
    assert_eq!(listed[0]["addr"], format!("{attacker}/32"), "{listed}");
    assert_eq!(listed[0]["kind"], "dynamic");
    assert_eq!(listed[0]["rule"], "ssh");
    assert_eq!(listed[0]["hits"], 4);
    assert!(
        !net.ping(attacker),
        "every packet of a blacklisted source is dropped"
    );
    assert!(
        net.tcp_connects(bystander, listener),
        "others are untouched"
    );

    // Knocking every second keeps the entry fresh past its original 3 s.
    for second in 1..=5 {
        sleep_until(blacklisted_at + Duration::from_secs(second));
        assert!(
            !net.tcp_connects(attacker, listener),
            "still out at {second}s"
        );
    }
    // 3 s of silence lets it back.
    thread::sleep(Duration::from_millis(3_500));
    assert!(net.tcp_connects(attacker, listener), "back after silence");
    assert!(net.packets("blacklisted") >= 6);
    assert_eq!(net.packets("rule_triggered"), 1);
    let rules = net.blocker(&["rule", "list", "--json"]).ok().json();
    assert_eq!(rules[0]["name"], "ssh");
    assert_eq!(rules[0]["sources_blacklisted"], 1);
    assert!(
        rules[0]["packets_dropped"].as_u64().unwrap_or(0) >= 7,
        "{rules}"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn without_refresh_the_entry_expires_on_schedule() {
    require_root();
    let net = TestNet::new();
    let listener = net.tcp_listener(net.server_v4());
    net.load_with_rules(&rate_rule(listener.port(), 2, "3s", false))
        .ok();
    let attacker = net.client_v4(1, 2);
    for _ in 0..3 {
        assert!(net.tcp_connects(attacker, listener));
    }
    let blacklisted_at = Instant::now();
    assert!(!net.tcp_connects(attacker, listener));
    for second in 1..=2 {
        sleep_until(blacklisted_at + Duration::from_secs(second));
        assert!(!net.tcp_connects(attacker, listener), "out at {second}s");
    }
    sleep_until(blacklisted_at + Duration::from_millis(3_400));
    assert!(
        net.tcp_connects(attacker, listener),
        "knocking did not extend the entry"
    );
}

/// A small deterministic generator, so a failing sequence can be replayed from its seed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

const WINDOW_S: f64 = 4.0;
const BLACKLIST_S: f64 = 3.0;

/// Attempt times whose pairwise distances stay clear of the window and blacklist lengths, so
/// two clocks (jiffies and the boot clock) cannot disagree about a boundary.
fn schedule(rng: &mut Lcg, attempts: usize) -> Vec<f64> {
    // Short gaps build up hits and keep a blacklisted source refreshed; long ones let the
    // blacklist lapse and the window empty, so every branch of the ruleset is visited.
    let gaps = [0.25, 0.25, 0.6, 0.6, 1.1, 1.7, 3.5, 4.7];
    loop {
        let mut times = vec![0.0];
        while times.len() < attempts {
            let last = *times.last().unwrap_or(&0.0);
            times.push(last + gaps[(rng.next() % gaps.len() as u64) as usize]);
        }
        let clear = times.iter().enumerate().all(|(i, a)| {
            times[i + 1..].iter().all(|b| {
                let distance: f64 = b - a;
                (distance - WINDOW_S).abs() >= 0.2 && (distance - BLACKLIST_S).abs() >= 0.2
            })
        });
        if clear {
            return times;
        }
    }
}

/// The seed's ruleset for `iptables`, on INPUT, with the test's short times.
fn install_recent_ruleset(net: &TestNet, port: u16) {
    for rule in recent_ruleset("tcp", port, 3, WINDOW_S as u32, BLACKLIST_S as u32) {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", net.server_ns))
            .arg("iptables")
            .args(&rule)
            .output()
            .expect("running iptables (cargo xtask setup installs it)");
        assert!(
            out.status.success(),
            "iptables {rule:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn same_decisions_as_the_recent_module() {
    require_root();
    let seed = std::env::var("BLOCKER_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let xdp = TestNet::new();
    let reference = TestNet::new();
    let xdp_listener = xdp.tcp_listener(xdp.server_v4());
    let ref_listener = reference.tcp_listener(reference.server_v4());
    let rule = format!(
        "[[rules]]\nname = \"ssh\"\nproto = \"tcp\"\ndport = {}\nhitcount = 3\nseconds = {}\n\
         blacklist_for = \"{}s\"\n",
        xdp_listener.port(),
        WINDOW_S as u32,
        BLACKLIST_S as u32
    );
    xdp.load_with_rules(&rule).ok();
    install_recent_ruleset(&reference, ref_listener.port());

    let mut rng = Lcg(seed);
    let sequences: Vec<(IpAddr, IpAddr, Vec<f64>)> = (0..3u8)
        .map(|i| {
            let times = schedule(&mut rng, 14);
            (
                xdp.add_client_v4(10 + i),
                reference.add_client_v4(10 + i),
                times,
            )
        })
        .collect();
    let start = Instant::now() + Duration::from_millis(300);
    let outcomes: Vec<(usize, usize, bool, bool)> = thread::scope(|scope| {
        let mut handles = Vec::new();
        for (s, (xdp_source, ref_source, times)) in sequences.iter().enumerate() {
            for (i, t) in times.iter().enumerate() {
                let at = start + Duration::from_secs_f64(*t);
                let (xdp, reference) = (&xdp, &reference);
                let xdp_handle = scope.spawn(move || {
                    sleep_until(at);
                    xdp.tcp_connects(*xdp_source, xdp_listener)
                });
                let ref_handle = scope.spawn(move || {
                    sleep_until(at);
                    reference.tcp_connects(*ref_source, ref_listener)
                });
                handles.push((s, i, xdp_handle, ref_handle));
            }
        }
        handles
            .into_iter()
            .map(|(s, i, x, r)| (s, i, x.join().unwrap_or(false), r.join().unwrap_or(true)))
            .collect()
    });
    let describe = || {
        let mut text = format!("seed {seed} (BLOCKER_DIFF_SEED={seed} replays it)\n");
        for (s, (_, _, times)) in sequences.iter().enumerate() {
            let row = |pick: fn(&(usize, usize, bool, bool)) -> bool| -> String {
                outcomes
                    .iter()
                    .filter(|o| o.0 == s)
                    .map(|o| if pick(o) { 'P' } else { 'D' })
                    .collect()
            };
            text += &format!(
                "sequence {s} at {times:?}\n  blocker {}\n  recent  {}\n",
                row(|o| o.2),
                row(|o| o.3)
            );
        }
        text
    };
    for (s, i, blocker_passed, recent_passed) in &outcomes {
        assert_eq!(
            blocker_passed,
            recent_passed,
            "sequence {s} attempt {i} differs\n{}",
            describe()
        );
    }
    assert!(
        outcomes.iter().any(|o| !o.3),
        "the sequences never reached the blacklist: nothing was compared\n{}",
        describe()
    );
    eprintln!("{}", describe());
}

/// Whether a connection from `from` to `to` completes and is closed both ways. Waiting for
/// the server's close (the listener closes what it accepts) means the client's last packets
/// of it (its FIN, its ACK of the server's) are sent before the next attempt blacklists the
/// source, so none of them meets the blacklist: there it would be counted as a blocked (or
/// rejected) packet and, under a refreshing rule, extend the blacklisting.
fn connects_and_closes(net: &TestNet, from: IpAddr, to: SocketAddr) -> bool {
    let Ok(mut stream) = net.tcp_stream(from, to) else {
        return false;
    };
    let closed = stream.shutdown(Shutdown::Write).is_ok()
        && stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .is_ok();
    closed && matches!(stream.read(&mut [0u8; 16]), Ok(0))
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn reject_refuses_at_once_over_tcp_udp_and_ipv6() {
    require_root();
    let net = TestNet::new();
    net.attach_client_xdp();
    let tcp4 = net.tcp_listener(net.server_v4());
    let tcp6 = net.tcp_listener(net.server_v6());
    let udp_server = in_netns(&net.server_ns, {
        let addr = net.server_v4();
        move || std::net::UdpSocket::bind(SocketAddr::new(addr, 0)).expect("bind udp")
    });
    let udp = udp_server.local_addr().expect("udp address");
    thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((len, peer)) = udp_server.recv_from(&mut buf) {
            let _ = udp_server.send_to(&buf[..len], peer);
        }
    });
    let rules = format!(
        "[[rules]]\nname = \"tcp4\"\nproto = \"tcp\"\ndport = {}\nhitcount = 1\naction = \"reject\"\n\
         [[rules]]\nname = \"tcp6\"\nproto = \"tcp\"\ndport = {}\nhitcount = 1\naction = \"reject\"\n\
         [[rules]]\nname = \"udp\"\nproto = \"udp\"\ndport = {}\nhitcount = 1\naction = \"reject\"\n\
         events = \"all\"\n",
        tcp4.port(),
        tcp6.port(),
        udp.port()
    );
    net.load_with_rules(&rules).ok();

    let refused_fast = |result: std::io::Result<()>, started: Instant| {
        matches!(result, Err(e) if e.kind() == ErrorKind::ConnectionRefused)
            && started.elapsed() < Duration::from_millis(300)
    };
    for (source, target) in [
        (net.client_v4(1, 2), tcp4),
        (net.client_v6(0xb10c, 2), tcp6),
    ] {
        assert!(
            connects_and_closes(&net, source, target),
            "{source}: first passes"
        );
        for attempt in ["triggering", "blacklisted"] {
            let started = Instant::now();
            let result = net.tcp_connect(source, target);
            assert!(
                refused_fast(result, started),
                "{source}: {attempt} attempt refused at once"
            );
        }
    }
    let source = net.client_v4(1, 3);
    assert!(
        net.udp_exchange(source, udp).is_ok(),
        "first datagram answered"
    );
    for attempt in ["triggering", "blacklisted"] {
        let started = Instant::now();
        let result = net.udp_exchange(source, udp);
        assert!(
            refused_fast(result, started),
            "udp {attempt}: port unreachable"
        );
    }
    assert!(net.packets("rejected") >= 6);
    let rules = net.blocker(&["rule", "list", "--json"]).ok().json();
    for rule in rules.as_array().expect("rules") {
        assert_eq!(rule["packets_rejected"], 2, "{rule}");
    }
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn ipv6_sources_of_one_64_share_one_count() {
    require_root();
    let net = TestNet::new();
    let listener = net.tcp_listener(net.server_v6());
    net.load_with_rules(&rate_rule(listener.port(), 30, "30s", true))
        .ok();
    let (a, b) = (net.client_v6(0xb10c, 2), net.client_v6(0xb10c, 3));
    assert!(net.tcp_connects(a, listener));
    assert!(net.tcp_connects(b, listener));
    assert!(net.tcp_connects(a, listener));
    assert!(!net.tcp_connects(b, listener), "the /64 had its 3 tries");
    assert!(
        !net.tcp_connects(a, listener),
        "the whole /64 is blacklisted"
    );
    let other = net.client_v6(0xb10d, 2);
    let other_listener = net.tcp_listener(net.server_for(other));
    assert!(
        net.tcp_connects(other, other_listener),
        "another /64 is not"
    );
    let listed = net.blocker(&["list", "blacklist", "--json"]).ok().json();
    let n = a.to_string();
    let prefix = n.rsplit_once("::").map_or("", |(p, _)| p);
    assert_eq!(listed[0]["addr"], format!("{prefix}::/64"), "{listed}");
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn burst_rule_ten_fast_blacklist_nine_do_not_slow_never() {
    require_root();
    let net = TestNet::new();
    let listener = net.tcp_listener(net.server_v4());
    let rule = format!(
        "[[rules]]\nname = \"bunch\"\nkind = \"burst\"\nproto = \"tcp\"\ndport = {}\n\
         gap = \"300ms\"\nbunch_size = 10\nblacklist_for = \"30s\"\n",
        listener.port()
    );
    net.load_with_rules(&rule).ok();
    let nine = net.client_v4(1, 2);
    for i in 1..=9 {
        assert!(net.tcp_connects(nine, listener), "fast {i} of 9");
    }
    thread::sleep(Duration::from_millis(400));
    assert!(
        net.tcp_connects(nine, listener),
        "nine fast ones did not blacklist"
    );

    let ten = net.client_v4(1, 3);
    for i in 1..=9 {
        assert!(net.tcp_connects(ten, listener), "fast {i} of 10");
    }
    assert!(
        !net.tcp_connects(ten, listener),
        "the 10th completes the bunch"
    );

    let slow = net.client_v4(2, 2);
    let slow_listener = net.tcp_listener(net.server_for(slow));
    // A second rule for the slow source's listener, added at runtime.
    net.blocker(&[
        "rule",
        "add",
        "slow",
        "--proto",
        "tcp",
        "--dport",
        &slow_listener.port().to_string(),
        "--burst",
        "--gap",
        "300ms",
        "--bunch-size",
        "10",
    ])
    .ok();
    for i in 1..=12 {
        let started = Instant::now();
        assert!(net.tcp_connects(slow, slow_listener), "slow {i}");
        sleep_until(started + Duration::from_millis(450));
    }
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn rules_change_at_runtime_without_touching_established_traffic() {
    require_root();
    let net = TestNet::new();
    net.load_with_rules("rules = []\n").ok();
    // An echo server, and an established connection from a bystander.
    let echo: TcpListener = in_netns(&net.server_ns, {
        let addr = net.server_v4();
        move || TcpListener::bind(SocketAddr::new(addr, 0)).expect("bind echo")
    });
    let port = echo.local_addr().expect("echo address").port();
    let target = SocketAddr::new(net.server_v4(), port);
    thread::spawn(move || {
        for mut stream in echo.incoming().flatten() {
            thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(len) = stream.read(&mut buf) {
                    if len == 0 || stream.write_all(&buf[..len]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let mut established = net
        .tcp_stream(net.client_v4(1, 3), target)
        .expect("bystander connects");
    established
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let echo_works = |stream: &mut std::net::TcpStream| {
        let mut buf = [0u8; 4];
        stream.write_all(b"ping").is_ok() && stream.read_exact(&mut buf).is_ok() && &buf == b"ping"
    };
    assert!(echo_works(&mut established));

    let events = Command::new(blocker_tests::blocker_bin())
        .args(["events", "--json"])
        .env("BLOCKER_PIN_DIR", &net.pin_dir)
        .env("BLOCKER_STATE", net.state_path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("blocker events");
    // A rule on another port first, to show its counts survive changes to the next one.
    net.blocker(&["rule", "add", "other", "--proto", "udp", "--dport", "9"])
        .ok();
    let probe = net.client_v4(2, 2);
    let _ = net.udp_delivered(probe, net.server_for(probe));
    let port_text = port.to_string();
    let quick = [
        "rule",
        "add",
        "quick",
        "--proto",
        "tcp",
        "--dport",
        &port_text,
        "--hitcount",
        "1",
        "--blacklist-for",
        "60s",
    ];
    net.blocker(&quick).ok();
    let attacker = net.client_v4(1, 2);
    assert!(
        net.tcp_connects(attacker, target),
        "first connection is an event"
    );
    assert!(
        !net.tcp_connects(attacker, target),
        "the rule applies without a reload"
    );
    assert!(
        echo_works(&mut established),
        "established traffic is untouched"
    );

    let counts = |name: &str| {
        let rules = net.blocker(&["rule", "list", "--json"]).ok().json();
        rules
            .as_array()
            .expect("rules")
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no rule {name}: {rules}"))
    };
    let other_before = counts("other");
    assert_eq!(counts("quick")["sources_blacklisted"], 1);
    // Replace `quick`: its counts start over, `other` keeps its own.
    let mut replaced = quick.to_vec();
    replaced[8] = "2";
    net.blocker(&replaced).ok();
    assert_eq!(counts("quick")["events_seen"], 0);
    assert_eq!(counts("other"), other_before);
    net.blocker(&["rule", "remove", "quick"]).ok();
    assert!(
        !net.tcp_connects(attacker, target),
        "the blacklist entry outlives its rule"
    );
    net.blocker(&["flush", "blacklist"]).ok();
    assert!(net.tcp_connects(attacker, target), "flushed");
    assert!(echo_works(&mut established));

    thread::sleep(Duration::from_millis(1_500));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(events.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let output = events.wait_with_output().expect("events output");
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let addr = format!("{attacker}/32");
    assert!(
        lines
            .iter()
            .any(|e| e["event"] == "blacklisted" && e["addr"] == addr && e["rule"] == "quick"),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|e| e["event"] == "removed" && e["addr"] == addr),
        "{text}"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn bad_rules_are_bad_input() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let before = net.state_text();
    for (args, message) in [
        (
            vec!["rule", "add", "x", "--hitcount", "0"],
            "hitcount must be 1 to 64",
        ),
        (
            vec!["rule", "add", "x", "--proto", "icmp", "--dport", "22"],
            "dport needs proto tcp or udp",
        ),
        (
            vec!["rule", "add", "x", "--mask", "40"],
            "mask must be 1 to 32",
        ),
        (vec!["rule", "add", "bad name"], "invalid rule name"),
        (vec!["rule", "add", "x", "--dport", "99999"], "invalid port"),
        (
            vec!["rule", "add", "x", "--blacklist-for", "soon"],
            "invalid duration",
        ),
        (vec!["rule", "remove", "nope"], "no rule named \"nope\""),
    ] {
        let run = net.blocker(&args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(message), "{args:?}: {}", run.stderr);
    }
    assert_eq!(net.state_text(), before);
    let rules = net.blocker(&["rule", "list", "--json"]).ok().json();
    assert_eq!(
        rules[0]["name"], "ssh",
        "the built-in default rule is installed"
    );
}

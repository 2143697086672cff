//! What the XDP program guarantees whatever a source sends (issue 8, defects 1, 2, 8, 9 and
//! 10): the allowlist always wins, no encoding of a packet gets a source more tries than a
//! rule's hitcount, rejects never amplify, and rules count like `xt_recent`. Real connections
//! where the stack matters, crafted frames through BPF_PROG_TEST_RUN where the encoding does.

use std::{
    net::{IpAddr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use blocker_tests::{
    frames::{
        frame, ipv4, ipv4_fragment, ipv4_ttl, ipv6, tcp, tcp_syn, udp, ACK, FIN, IPV4, IPV6, RST,
        SYN,
    },
    in_netns, require_root,
    testrun::{Program, XDP_DROP, XDP_PASS, XDP_TX},
    TestNet,
};
use socket2::{Domain, Socket, Type};

const SSH: u16 = 22;

/// A rate rule on TCP port 22: `hitcount` new connections in 30 s, with `extra` TOML lines.
fn ssh_rule(hitcount: u32, extra: &str) -> String {
    format!(
        "[[rules]]\nname = \"ssh\"\nproto = \"tcp\"\ndport = {SSH}\nhitcount = {hitcount}\n\
         seconds = 30\nblacklist_for = \"60s\"\n{extra}"
    )
}

fn v4(last: u8) -> [u8; 4] {
    [192, 0, 2, last]
}

fn v6(last: u8) -> [u8; 16] {
    let mut addr = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    addr[15] = last;
    addr
}

fn syn_v4(source: [u8; 4]) -> Vec<u8> {
    frame(&[IPV4], &ipv4(source, 0, 6, &tcp_syn(SSH)))
}

/// Loads `config` and silences the wire, so only crafted frames reach the program.
fn crafted<'a>(net: &'a TestNet, config: &str) -> Program<'a> {
    let config = net.config("crafted.toml", config);
    net.load(&["--config", &config]).ok();
    net.client_link_down();
    Program::attached(net)
}

/// How many of `frames` the program let through.
fn passed(program: &Program, frames: &[Vec<u8>]) -> usize {
    frames
        .iter()
        .filter(|frame| program.run(frame) == XDP_PASS)
        .count()
}

fn allowlisted_host_inside_a_blacklisted_range(
    net: &TestNet,
    listener: SocketAddr,
    attacker: IpAddr,
    allowed: IpAddr,
    allowed_later: IpAddr,
) {
    net.blocker(&["allow", &allowed.to_string()]).ok();
    for attempt in 1..=3 {
        assert!(net.tcp_connects(attacker, listener), "try {attempt} passes");
    }
    assert!(
        !net.tcp_connects(attacker, listener),
        "the 4th blacklists the range"
    );
    let listed = net.blocker(&["list", "blacklist", "--json"]).ok().json();
    let range: ipnet_text::Range = listed[0]["addr"].as_str().expect("addr").into();
    assert!(range.prefix_len < range.host_bits, "a range: {listed}");
    assert!(
        net.tcp_connects(allowed, listener),
        "the allowlisted host inside {} still connects",
        listed[0]["addr"]
    );
    assert!(net.ping(allowed), "and is answered over ICMP");
    assert!(!net.ping(attacker), "the rest of the range stays out");
    // Allowing another host of the range once it is blacklisted lets that host in, not the
    // range: the entry stays listed and the attacker stays out.
    net.blocker(&["allow", &allowed_later.to_string()]).ok();
    let still = net.blocker(&["list", "blacklist", "--json"]).ok().json();
    assert_eq!(
        still[0]["addr"], listed[0]["addr"],
        "after `allow {allowed_later}` the range is still listed: {still}"
    );
    assert!(
        !net.ping(attacker),
        "after `allow {allowed_later}` the rest of the range stays out"
    );
}

/// Just enough CIDR text parsing to tell a range from a host.
mod ipnet_text {
    pub struct Range {
        pub prefix_len: u32,
        pub host_bits: u32,
    }

    impl From<&str> for Range {
        fn from(text: &str) -> Self {
            let (addr, len) = text.split_once('/').expect("CIDR");
            Self {
                prefix_len: len.parse().expect("prefix length"),
                host_bits: if addr.contains(':') { 128 } else { 32 },
            }
        }
    }
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn the_allowlist_wins_over_a_rule_that_blacklists_its_v4_range() {
    require_root();
    let net = TestNet::new();
    let listener = net.tcp_listener(net.server_v4());
    net.load_with_rules(&format!(
        "[[rules]]\nname = \"ssh\"\nproto = \"tcp\"\ndport = {}\nmask = 24\n",
        listener.port()
    ))
    .ok();
    allowlisted_host_inside_a_blacklisted_range(
        &net,
        listener,
        net.client_v4(1, 2),
        net.client_v4(1, 3),
        net.client_v4(1, 4),
    );
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn the_allowlist_wins_over_a_rule_that_blacklists_its_v6_64() {
    require_root();
    let net = TestNet::new();
    let listener = net.tcp_listener(net.server_v6());
    // The default mask6 = 64.
    net.load_with_rules(&format!(
        "[[rules]]\nname = \"ssh\"\nproto = \"tcp\"\ndport = {}\n",
        listener.port()
    ))
    .ok();
    allowlisted_host_inside_a_blacklisted_range(
        &net,
        listener,
        net.client_v6(0xb10c, 2),
        net.client_v6(0xb10c, 3),
        net.client_v6(0xb10c, 4),
    );
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_link_local_neighbour_blacklists_itself_not_the_link() {
    require_root();
    let net = TestNet::new();
    // The default mask6 = 64: one host owns a /64, but every host on the link shares fe80::/64.
    let program = crafted(&net, &ssh_rule(3, ""));
    let link_local = |last| {
        let mut addr = [0u8; 16];
        addr[..2].copy_from_slice(&[0xfe, 0x80]);
        addr[15] = last;
        addr
    };
    let syn6 = |source| frame(&[IPV6], &ipv6(source, &[], 6, &tcp_syn(SSH)));
    let attacker = syn6(link_local(0xba));
    assert_eq!(
        passed(&program, &vec![attacker.clone(); 4]),
        3,
        "the 4th SYN blacklists"
    );
    assert_eq!(
        program.run(&attacker),
        XDP_DROP,
        "the neighbour is blacklisted"
    );
    let listed = net.blocker(&["list", "blacklist", "--json"]).ok().json();
    let entry: ipnet_text::Range = listed[0]["addr"].as_str().expect("addr").into();
    assert_eq!(entry.prefix_len, entry.host_bits, "a host entry: {listed}");
    // A neighbour advertisement from the router, and another neighbour's SYN.
    let mut advert = vec![136, 0, 0, 0, 0x60, 0, 0, 0];
    advert.extend_from_slice(&link_local(1));
    let router = frame(&[IPV6], &ipv6(link_local(1), &[], 58, &advert));
    assert_eq!(
        program.run(&router),
        XDP_PASS,
        "the router's neighbour discovery"
    );
    assert_eq!(
        program.run(&syn6(link_local(2))),
        XDP_PASS,
        "another neighbour"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn no_encoding_of_a_syn_gets_more_tries_than_hitcount() {
    require_root();
    let net = TestNet::new();
    let program = crafted(&net, &ssh_rule(3, ""));
    let syn = tcp_syn(SSH);
    let tiny_first_fragment = |source| {
        frame(
            &[IPV4],
            &ipv4_fragment(ipv4(source, 0, 6, &syn[..8]), 0, true),
        )
    };
    let seven_dstopts = |source| frame(&[IPV6], &ipv6(source, &[60; 7], 6, &syn));
    let cut_v6_first_fragment = |source| frame(&[IPV6], &ipv6(source, &[44], 6, &syn[..8]));
    let cut_extension_in_first_fragment = |source: [u8; 16]| {
        let mut ip = ipv6(source, &[44, 60], 6, &[]);
        // The fragment header, then only 1 byte of the destination options header.
        ip.truncate(40 + 8 + 1);
        let mut f = blocker_tests::frames::ethernet(&[IPV6]);
        f.extend_from_slice(&ip);
        f
    };
    // Frames padded to the Ethernet minimum: the padding must not pass for the TCP header.
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "ipv4 first fragments with 8 bytes of TCP",
            vec![tiny_first_fragment(v4(10)); 10],
        ),
        (
            "ipv6 behind 7 destination options headers",
            vec![seven_dstopts(v6(11)); 8],
        ),
        (
            "ipv6 first fragments with 8 bytes of TCP",
            vec![cut_v6_first_fragment(v6(12)); 8],
        ),
        (
            "ipv6 first fragments cut inside an extension header",
            vec![cut_extension_in_first_fragment(v6(13)); 8],
        ),
        (
            "plain SYNs mixed with tiny first fragments",
            (0..10)
                .map(|i| {
                    if i % 2 == 0 {
                        syn_v4(v4(14))
                    } else {
                        tiny_first_fragment(v4(14))
                    }
                })
                .collect(),
        ),
    ];
    for (name, frames) in &cases {
        let through = passed(&program, frames);
        assert!(through <= 3, "{name}: {through} of {} passed", frames.len());
    }
    // Every frame of the first four cases, and the 3 fragments the mixed case sends before
    // its 4th SYN blacklists the source (later ones count as blacklisted).
    assert_eq!(net.packets("evasive"), 10 + 8 + 8 + 8 + 3);

    // A first fragment that holds the whole TCP header is an event like any SYN, and a
    // later fragment alone opens nothing.
    let whole = frame(&[IPV4], &ipv4_fragment(ipv4(v4(15), 0, 6, &syn), 0, true));
    assert_eq!(passed(&program, &vec![whole; 5]), 3);
    let later = frame(&[IPV4], &ipv4_fragment(ipv4(v4(16), 0, 6, &syn), 3, false));
    assert_eq!(passed(&program, &vec![later; 5]), 5);
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn evasive_packets_of_a_protocol_no_rule_covers_pass_as_before() {
    require_root();
    let net = TestNet::new();
    let program = crafted(
        &net,
        "[[rules]]\nname = \"dns\"\nproto = \"udp\"\ndport = 53\n",
    );
    let tiny = frame(
        &[IPV4],
        &ipv4_fragment(ipv4(v4(20), 0, 6, &tcp_syn(SSH)[..8]), 0, true),
    );
    let malformed = net.packets("malformed");
    assert_eq!(program.run(&tiny), XDP_PASS);
    assert_eq!(net.packets("malformed"), malformed + 1);
    // A chain too long leaves the protocol unknown: any rule may cover it.
    let long = frame(&[IPV6], &ipv6(v6(21), &[60; 7], 17, &[0; 8]));
    assert_eq!(program.run(&long), XDP_DROP);
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_flood_from_a_blacklisted_source_gets_at_most_a_token_bucket_of_rejects() {
    require_root();
    let net = TestNet::new();
    let listener = net.tcp_listener(net.server_v4());
    // The default [rejects]: 1000 answers a second, 50 at once, per CPU.
    net.load_with_rules(&format!(
        "[[rules]]\nname = \"web\"\nproto = \"tcp\"\ndport = {}\nhitcount = 1\n\
         action = \"reject\"\nblacklist_for = \"60s\"\n",
        listener.port()
    ))
    .ok();
    let attacker = net.client_v4(1, 2);
    assert!(net.tcp_connects(attacker, listener));
    let (rejected, dropped) = (net.packets("rejected"), net.packets("blacklisted"));
    let started = Instant::now();
    let sent = in_netns(&net.client_ns, move || {
        let flood_start = Instant::now();
        let mut sent = 0u64;
        while sent < 3_000 && flood_start.elapsed() < Duration::from_secs(2) {
            // Each non-blocking connect sends one SYN; the socket is dropped at once.
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
            socket.set_nonblocking(true).expect("non-blocking");
            socket
                .bind(&SocketAddr::new(attacker, 0).into())
                .expect("bind");
            let _ = socket.connect(&listener.into());
            sent += 1;
        }
        sent
    });
    thread::sleep(Duration::from_millis(200));
    let answered = net.packets("rejected") - rejected;
    let refused = net.packets("blacklisted") - dropped;
    let elapsed = started.elapsed().as_secs_f64();
    let cpus = thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let bound = (cpus * (50.0 + 1000.0 * elapsed + 1.0)) as u64;
    assert!(
        answered <= bound,
        "{answered} of {sent} SYNs answered in {elapsed:.3}s; at most {bound} may be"
    );
    assert!(answered >= 1, "rejects still answer within the budget");
    assert!(
        answered + refused >= sent / 2,
        "the flood reached the program: {answered} answered, {refused} dropped of {sent}"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn rejects_never_answer_sources_or_destinations_that_are_not_unicast() {
    require_root();
    let net = TestNet::new();
    let program = crafted(&net, &ssh_rule(1, "action = \"reject\"\n"));
    let syn6 = |source| frame(&[IPV6], &ipv6(source, &[], 6, &tcp_syn(SSH)));
    let ff02_1 = {
        let mut a = [0u8; 16];
        a[0] = 0xff;
        a[1] = 0x02;
        a[15] = 1;
        a
    };
    let loopback6 = {
        let mut a = [0u8; 16];
        a[15] = 1;
        a
    };
    let multicast_mac = {
        let mut f = syn_v4(v4(30));
        f[6] = 0x01;
        f
    };
    // `frame` with `bytes` written at `offset`: the destination MAC (0), IPv4 address (30)
    // or IPv6 address (38).
    let to = |mut frame: Vec<u8>, offset: usize, bytes: &[u8]| {
        frame[offset..offset + bytes.len()].copy_from_slice(bytes);
        frame
    };
    let cases = [
        ("multicast", syn_v4([224, 1, 2, 3])),
        ("broadcast", syn_v4([255, 255, 255, 255])),
        ("this network", syn_v4([0, 1, 2, 3])),
        ("loopback", syn_v4([127, 0, 0, 1])),
        ("reserved", syn_v4([240, 0, 0, 9])),
        ("ipv6 multicast", syn6(ff02_1)),
        ("ipv6 loopback", syn6(loopback6)),
        ("multicast source MAC", multicast_mac),
        // Unicast sources sending to many: an answer would come from a group's address.
        ("to a broadcast MAC", to(syn_v4(v4(32)), 0, &[0xff; 6])),
        ("to 255.255.255.255", to(syn_v4(v4(33)), 30, &[255; 4])),
        ("to 224.0.0.1", to(syn_v4(v4(34)), 30, &[224, 0, 0, 1])),
        ("to ff02::1", to(syn6(v6(35)), 38, &ff02_1)),
    ];
    let rejected = net.packets("rejected");
    for (name, frame) in &cases {
        let verdicts: Vec<u64> = (0..4).map(|_| program.run(frame)).collect();
        assert_eq!(
            verdicts,
            [XDP_PASS, XDP_DROP, XDP_DROP, XDP_DROP],
            "{name}: the first passes, the rest are dropped, none answered"
        );
    }
    assert_eq!(net.packets("rejected"), rejected);
    let unicast = syn_v4(v4(31));
    let verdicts: Vec<u64> = (0..3).map(|_| program.run(&unicast)).collect();
    assert_eq!(verdicts, [XDP_PASS, XDP_TX, XDP_TX], "a unicast source is");
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn reject_tokens_refill_by_elapsed_time_per_cpu() {
    require_root();
    let net = TestNet::new();
    let program = crafted(
        &net,
        &format!(
            "{}[rejects]\nper_second = 10\nburst = 3\n",
            ssh_rule(1, "action = \"reject\"\n")
        ),
    );
    let start = 1_000_000;
    program.set_clock_ms(start);
    let syn = syn_v4(v4(40));
    let run = |count: usize| -> Vec<u64> { (0..count).map(|_| program.run(&syn)).collect() };
    assert_eq!(run(1), [XDP_PASS]);
    assert_eq!(
        run(6),
        [XDP_TX, XDP_TX, XDP_TX, XDP_DROP, XDP_DROP, XDP_DROP],
        "a full bucket answers its burst"
    );
    program.set_clock_ms(start + 100);
    assert_eq!(run(2), [XDP_TX, XDP_DROP], "10 a second: one per 100 ms");
    program.set_clock_ms(start + 10_000);
    assert_eq!(
        run(5),
        [XDP_TX, XDP_TX, XDP_TX, XDP_DROP, XDP_DROP],
        "never more than the burst"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn ttl_match_compares_with_the_last_recorded_ttl_like_recent_rttl() {
    require_root();
    let net = TestNet::new();
    let program = crafted(&net, &ssh_rule(3, "ttl_match = true\n"));
    let syn = |source, ttl| frame(&[IPV4], &ipv4_ttl(ipv4(source, 0, 6, &tcp_syn(SSH)), ttl));
    // A spoofed first packet with another TTL does not stop the count.
    let verdicts: Vec<u64> = [50, 64, 64, 64]
        .iter()
        .map(|ttl| program.run(&syn(v4(50), *ttl)))
        .collect();
    assert_eq!(verdicts, [XDP_PASS, XDP_PASS, XDP_PASS, XDP_DROP]);
    // A source whose TTL changes every time is never checked against the threshold.
    for (i, ttl) in [64, 63].iter().cycle().take(10).enumerate() {
        assert_eq!(program.run(&syn(v4(51), *ttl)), XDP_PASS, "packet {i}");
    }
    assert_eq!(net.packets("rule_event"), 3 + 10);
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn syn_with_fin_or_rst_is_not_a_new_connection() {
    require_root();
    let net = TestNet::new();
    let program = crafted(&net, &ssh_rule(3, ""));
    let segment = |flags| frame(&[IPV4], &ipv4(v4(60), 0, 6, &tcp(SSH, flags)));
    for flags in [SYN | FIN, SYN | RST, SYN | ACK, ACK] {
        assert_eq!(
            passed(&program, &vec![segment(flags); 6]),
            6,
            "flags {flags:#04x}"
        );
    }
    assert_eq!(net.packets("rule_event"), 0, "none counted");
    assert_eq!(
        passed(&program, &vec![segment(SYN); 5]),
        3,
        "bare SYNs still count"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn events_new_on_a_rule_without_tcp_is_bad_input() {
    require_root();
    let net = TestNet::new();
    let config = net.config(
        "udp-new.toml",
        "[[rules]]\nname = \"dns\"\nproto = \"udp\"\ndport = 53\nevents = \"new\"\n",
    );
    let run = net.load(&["--config", &config]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("rule dns: events = \"new\" needs proto tcp"),
        "{}",
        run.stderr
    );
    net.load(&[]).ok();
    let run = net.blocker(&["rule", "add", "x", "--proto", "icmp", "--events", "new"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("use events = \"all\" for icmp"),
        "{}",
        run.stderr
    );
    net.blocker(&["rule", "add", "x", "--proto", "udp", "--dport", "53"])
        .ok();
    let rules = net.blocker(&["rule", "list", "--json"]).ok().json();
    assert_eq!(rules[1]["name"], "x", "{rules}");
    assert_eq!(rules[1]["events"], "all", "a udp rule counts every packet");
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_source_idle_for_49_7_days_starts_a_fresh_count() {
    require_root();
    let net = TestNet::new();
    // The longest window: 24 days.
    let program = crafted(
        &net,
        "[[rules]]\nname = \"ssh\"\nproto = \"tcp\"\ndport = 22\nhitcount = 3\n\
         seconds = 2073600\nblacklist_for = \"1s\"\n",
    );
    let syn = syn_v4(v4(70));
    let start = 10_000;
    program.set_clock_ms(start);
    assert_eq!(passed(&program, &vec![syn.clone(); 3]), 3);
    // 2^32 ms later the u32 times of the ring read as a few ms old.
    program.set_clock_ms(start + (1 << 32) + 5);
    assert_eq!(
        passed(&program, &vec![syn.clone(); 4]),
        3,
        "three fresh tries"
    );
}

/// A CPU remembers a blacklist hit for the rest of its clock reading (`HitMemo`): with the
/// clock standing still, removing the entry or allowing the source must end the drops at
/// once all the same.
#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_removed_or_allowed_blacklist_entry_stops_dropping_within_one_clock_reading() {
    require_root();
    let net = TestNet::new();
    let program = crafted(&net, &ssh_rule(3, ""));
    program.set_clock_ms(50_000);
    let source = v4(90);
    let not_a_rule_event = frame(&[IPV4], &ipv4(source, 0, 17, &udp(53, 8)));
    assert_eq!(
        program.run(&not_a_rule_event),
        XDP_PASS,
        "not blacklisted yet"
    );
    for ends_it in [&["flush", "blacklist"][..], &["allow", "192.0.2.90"]] {
        // The history stands still with the clock: after a flush the next SYN blacklists.
        passed(&program, &vec![syn_v4(source); 4]);
        for hit in 1..=3 {
            assert_eq!(program.run(&not_a_rule_event), XDP_DROP, "hit {hit}");
        }
        net.blocker(ends_it).ok();
        assert_eq!(
            program.run(&not_a_rule_event),
            XDP_PASS,
            "after `blocker {}`, at the same time",
            ends_it.join(" ")
        );
    }
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_burst_of_new_sources_on_one_cpu_does_not_evict_a_history_the_map_has_room_for() {
    require_root();
    let net = TestNet::new();
    // Room for 64 histories; every frame runs on CPU 0, as on a single-queue NIC.
    let program = crafted(&net, &format!("{}[maps]\nhistory = 64\n", ssh_rule(3, "")));
    let attacker = syn_v4(v4(80));
    assert_eq!(program.run(&attacker), XDP_PASS);
    for source in 100..140 {
        assert_eq!(program.run(&syn_v4(v4(source))), XDP_PASS);
    }
    let verdicts: Vec<u64> = (0..3).map(|_| program.run(&attacker)).collect();
    assert_eq!(
        verdicts,
        [XDP_PASS, XDP_PASS, XDP_DROP],
        "41 histories fit 64 entries: the attacker's first try still counts"
    );
}

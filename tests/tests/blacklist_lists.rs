//! A source on the dynamic blacklist that is then banned or allowlisted by hand: the new
//! list entry decides its very next packet, though the blacklist's fast path skips the list
//! checks for sources that passed them before (it may only while no entry was added since).
//! And the filter that lets other sources skip the blacklist lookup is shared like the
//! blacklist: a second interface's program finds the source blacklisted on the first.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;

use blocker_tests::{
    bpf::{prog_by_id, run_once, xdp_prog_id, XDP_DROP},
    frames::{frame, ipv4, tcp_syn, IPV4},
    require_root, TestNet,
};

/// A test network whose blocker has a rule that blacklists the 4th connection for 10
/// minutes, and a source it blacklisted and sent through the fast path once more: the network,
/// the source and the listener it connected to.
fn blacklisted_source() -> (TestNet, IpAddr, SocketAddr) {
    require_root();
    let net = TestNet::new();
    let listener = net.tcp_listener(net.server_v4());
    let attacker = net.client_v4(1, 2);
    net.load_with_rules(&format!(
        "[[rules]]\nname = \"ssh\"\nproto = \"tcp\"\ndport = {}\nhitcount = 3\n\
         seconds = 60\nblacklist_for = \"10m\"\n",
        listener.port()
    ))
    .ok();
    for attempt in 1..=3 {
        assert!(net.tcp_connects(attacker, listener), "try {attempt} passes");
    }
    assert!(!net.tcp_connects(attacker, listener), "the 4th is dropped");
    let blacklisted = net.packets("blacklisted");
    assert!(!net.ping(attacker), "blacklisted");
    assert!(
        net.packets("blacklisted") > blacklisted,
        "counted as blacklisted"
    );
    (net, attacker, listener)
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_blacklisted_source_banned_by_hand_counts_as_banned_at_once() {
    let (net, attacker, _) = blacklisted_source();

    net.blocker(&["ban", &attacker.to_string()]).ok();
    let (banned, blacklisted) = (net.packets("manual_ban"), net.packets("blacklisted"));
    assert!(!net.ping(attacker), "banned");
    assert!(
        net.packets("manual_ban") > banned,
        "counted as a manual ban"
    );
    assert_eq!(
        net.packets("blacklisted"),
        blacklisted,
        "the ban is checked before the blacklist"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_blacklisted_source_allowed_by_hand_passes_at_once() {
    let (net, attacker, listener) = blacklisted_source();

    net.blocker(&["allow", &attacker.to_string()]).ok();
    let (allowed, blacklisted) = (net.packets("allowlisted"), net.packets("blacklisted"));
    assert!(net.ping(attacker), "allowed");
    assert!(net.tcp_connects(attacker, listener), "allowed over TCP");
    assert!(
        net.packets("allowlisted") > allowed,
        "counted as allowlisted"
    );
    assert_eq!(net.packets("blacklisted"), blacklisted);
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_second_interfaces_program_finds_the_source_blacklisted_on_the_first() {
    let (net, attacker, listener) = blacklisted_source();
    let IpAddr::V4(attacker) = attacker else {
        panic!("an IPv4 client")
    };
    // A second interface in the server's namespace: `load` gives it a program of its own over
    // the pinned maps.
    let second = format!("bs{}", net.id);
    let ip = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["-n", &net.server_ns])
            .args(args)
            .output()
            .expect("running ip");
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    };
    ip(&[
        "link",
        "add",
        &second,
        "type",
        "veth",
        "peer",
        "name",
        &format!("{second}p"),
    ]);
    ip(&["link", "set", &second, "up"]);
    net.blocker_in_server(&["load", "--iface", &second]).ok();
    let id = xdp_prog_id(&net.server_ns, &second).expect("the second interface's program");
    let program = prog_by_id(id).expect("the second program");

    let frame = frame(
        &[IPV4],
        &ipv4(attacker.octets(), 0, 6, &tcp_syn(listener.port())),
    );
    let blacklisted = net.packets("blacklisted");
    let (verdict, _) = run_once(&program, &frame, &mut [0u8; 256]).expect("a test run");
    assert_eq!(
        verdict, XDP_DROP,
        "the blacklisted source passes the second interface"
    );
    assert_eq!(net.packets("blacklisted"), blacklisted + 1);
}

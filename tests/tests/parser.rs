//! The program's parser on crafted frames, run through the loaded program itself with
//! BPF_PROG_TEST_RUN (`bpftool prog run`): VLAN tags, IPv4 options, IPv6 extension headers,
//! truncation and non-IP frames, each with the verdict and the counter it must produce; and
//! over the veth, a frame behind more VLAN tags than it reads, which the kernel would deliver.

use std::{net::IpAddr, process::Command, thread, time::Duration};

use blocker_tests::{
    frames::{ethernet, frame, ipv4, ipv6, tcp_syn, ARP, IPV4, IPV6, QINQ, VLAN},
    in_netns, require_root,
    testrun::{Program, XDP_DROP, XDP_PASS},
    TestNet,
};

const SSH: u16 = 22;

const BANNED_V4: [u8; 4] = [192, 0, 2, 66];
const OTHER_V4: [u8; 4] = [192, 0, 2, 1];
const BANNED_V6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x66,
];
const OTHER_V6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
];

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn crafted_frames_get_the_right_verdict_and_reason() {
    require_root();
    let net = TestNet::new();
    // No rules: these frames are about parsing, not rate limits.
    net.load_with_rules("rules = []\n").ok();
    net.blocker(&["ban", "192.0.2.66", "2001:db8::66"]).ok();
    // Silence the wire (router solicitations, MLD reports) so only crafted frames count.
    net.client_link_down();
    let program = Program::attached(&net);

    let syn = tcp_syn(SSH);
    let cases: Vec<(&str, Vec<u8>, u64, &str)> = vec![
        (
            "ipv4 banned",
            frame(&[IPV4], &ipv4(BANNED_V4, 0, 6, &syn)),
            XDP_DROP,
            "manual_ban",
        ),
        (
            "ipv4 other",
            frame(&[IPV4], &ipv4(OTHER_V4, 0, 6, &syn)),
            XDP_PASS,
            "no_match",
        ),
        (
            "one vlan tag",
            frame(&[VLAN, IPV4], &ipv4(BANNED_V4, 0, 6, &syn)),
            XDP_DROP,
            "manual_ban",
        ),
        (
            "qinq",
            frame(&[QINQ, VLAN, IPV4], &ipv4(BANNED_V4, 0, 6, &syn)),
            XDP_DROP,
            "manual_ban",
        ),
        (
            "four tags",
            frame(
                &[QINQ, VLAN, VLAN, VLAN, IPV4],
                &ipv4(BANNED_V4, 0, 6, &syn),
            ),
            XDP_DROP,
            "manual_ban",
        ),
        // The kernel strips any number of priority tags (VLAN 0) and delivers the packet
        // behind them: a frame behind more tags than the parser walks (whatever their IDs,
        // which it does not read) is dropped, whoever sent it.
        (
            "five tags",
            frame(
                &[VLAN, VLAN, QINQ, VLAN, VLAN, IPV4],
                &ipv4(OTHER_V4, 0, 6, &syn),
            ),
            XDP_DROP,
            "evasive",
        ),
        (
            "ipv4 options banned",
            frame(&[IPV4], &ipv4(BANNED_V4, 8, 6, &syn)),
            XDP_DROP,
            "manual_ban",
        ),
        (
            "ipv4 options other",
            frame(&[IPV4], &ipv4(OTHER_V4, 40, 6, &syn)),
            XDP_PASS,
            "no_match",
        ),
        (
            "ipv4 truncated",
            {
                let mut f = ethernet(&[IPV4]);
                f.extend_from_slice(&ipv4(BANNED_V4, 0, 6, &[])[..12]);
                f
            },
            XDP_PASS,
            "malformed",
        ),
        (
            "ipv4 bad ihl",
            {
                let mut ip = ipv4(BANNED_V4, 0, 6, &syn);
                ip[0] = 0x44;
                frame(&[IPV4], &ip)
            },
            XDP_PASS,
            "malformed",
        ),
        (
            "tcp truncated other",
            {
                let mut f = ethernet(&[IPV4]);
                f.extend_from_slice(&ipv4(OTHER_V4, 0, 6, &syn[..10]));
                f
            },
            XDP_PASS,
            "malformed",
        ),
        (
            "tcp truncated banned",
            {
                let mut f = ethernet(&[IPV4]);
                f.extend_from_slice(&ipv4(BANNED_V4, 0, 6, &syn[..10]));
                f
            },
            XDP_DROP,
            "manual_ban",
        ),
        ("arp", frame(&[ARP], &[0u8; 28]), XDP_PASS, "not_ip"),
        (
            "ipv6 banned",
            frame(&[IPV6], &ipv6(BANNED_V6, &[], 6, &syn)),
            XDP_DROP,
            "manual_ban",
        ),
        (
            "ipv6 ext chain banned",
            frame(&[IPV6], &ipv6(BANNED_V6, &[0, 60, 44], 6, &syn)),
            XDP_DROP,
            "manual_ban",
        ),
        (
            "ipv6 ext chain other",
            frame(&[IPV6], &ipv6(OTHER_V6, &[0, 43, 60, 44], 17, &[0u8; 8])),
            XDP_PASS,
            "no_match",
        ),
        (
            "ipv6 seven ext headers",
            frame(
                &[IPV6],
                &ipv6(OTHER_V6, &[0, 60, 60, 60, 60, 60, 60], 6, &syn),
            ),
            XDP_PASS,
            "unparsed",
        ),
        (
            "ipv6 ext header truncated",
            {
                let mut f = ethernet(&[IPV6]);
                let ip = ipv6(OTHER_V6, &[60], 6, &[]);
                f.extend_from_slice(&ip[..41]);
                f
            },
            XDP_PASS,
            "malformed",
        ),
        // The kernel trims a datagram to its payload length, 0 included, unless a hop-by-hop
        // header follows (a jumbogram): a SYN in the padding is no SYN.
        (
            "ipv6 payload length 0",
            {
                let mut ip = ipv6(OTHER_V6, &[], 6, &syn);
                ip[4..6].copy_from_slice(&[0, 0]);
                frame(&[IPV6], &ip)
            },
            XDP_PASS,
            "malformed",
        ),
        (
            "ipv6 jumbogram",
            {
                let mut ip = ipv6(OTHER_V6, &[0], 6, &syn);
                ip[4..6].copy_from_slice(&[0, 0]);
                frame(&[IPV6], &ip)
            },
            XDP_PASS,
            "no_match",
        ),
        (
            "ipv6 vlan banned",
            frame(
                &[VLAN, IPV6],
                &ipv6(BANNED_V6, &[], 58, &[128, 0, 0, 0, 0, 0, 0, 0]),
            ),
            XDP_DROP,
            "manual_ban",
        ),
        (
            "ipv6 truncated",
            {
                let mut f = ethernet(&[IPV6]);
                f.extend_from_slice(&ipv6(BANNED_V6, &[], 6, &[])[..30]);
                f
            },
            XDP_PASS,
            "malformed",
        ),
    ];
    for (name, frame, verdict, reason) in cases {
        let before = net.packets(reason);
        let got = program.run(&frame);
        assert_eq!(got, verdict, "{name}: verdict");
        assert_eq!(
            net.packets(reason),
            before + 1,
            "{name}: counted under {reason}"
        );
    }
}

/// The one's-complement checksum of `bytes`.
fn checksum(bytes: &[u8]) -> [u8; 2] {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(pair[0]) << 8 | u32::from(*pair.get(1).unwrap_or(&0)))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    (!(sum as u16)).to_be_bytes()
}

/// An Ethernet frame of an ICMP echo request from `source` to `destination` behind `tags`
/// priority tags (802.1Q, VLAN 0), with valid checksums, as the kernel would accept it.
fn ping_frame(
    macs: (&[u8; 6], &[u8; 6]),
    tags: usize,
    source: IpAddr,
    destination: IpAddr,
) -> Vec<u8> {
    let (IpAddr::V4(source), IpAddr::V4(destination)) = (source, destination) else {
        panic!("IPv4 addresses");
    };
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend_from_slice(&[0x42; 32]);
    let sum = checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum);
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0];
    ip[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&source.octets());
    ip.extend_from_slice(&destination.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum);
    let mut frame = [macs.0.as_slice(), macs.1.as_slice()].concat();
    for _ in 0..tags {
        frame.extend_from_slice(&[0x81, 0x00, 0x00, 0x00]);
    }
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&icmp);
    frame
}

fn mac_of(ns: &str, ifname: &str) -> [u8; 6] {
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "link", "show", ifname])
        .output()
        .expect("ip link show");
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    let text = links[0]["address"].as_str().expect("mac");
    let bytes: Vec<u8> = text
        .split(':')
        .map(|byte| u8::from_str_radix(byte, 16).expect("hex"))
        .collect();
    bytes.try_into().expect("6 bytes")
}

/// Sends `frame` as it is out of `ifname` in namespace `ns` (an AF_PACKET socket).
fn send_raw(ns: &str, ifname: &str, frame: Vec<u8>) {
    let ifname = ifname.to_string();
    in_netns(ns, move || {
        use nix::libc;
        let index = nix::net::if_::if_nametoindex(ifname.as_str()).expect("interface index");
        // SAFETY: plain socket calls on a socket this closure owns and closes.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let mut to: libc::sockaddr_ll = std::mem::zeroed();
            to.sll_family = libc::AF_PACKET as u16;
            to.sll_ifindex = index as i32;
            to.sll_halen = 6;
            to.sll_addr[..6].copy_from_slice(&frame[..6]);
            let sent = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            libc::close(fd);
            assert_eq!(
                sent,
                frame.len() as isize,
                "sendto: {}",
                std::io::Error::last_os_error()
            );
        }
    });
}

/// The echo requests the IPv4 stack of namespace `ns` received (`Icmp: InEchos`).
fn echo_requests_received(ns: &str) -> u64 {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["cat", "/proc/net/snmp"])
        .output()
        .expect("nsenter cat /proc/net/snmp");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut icmp = text.lines().filter(|line| line.starts_with("Icmp:"));
    let (names, values) = (
        icmp.next().expect("Icmp names"),
        icmp.next().expect("Icmp values"),
    );
    let column = names
        .split_whitespace()
        .position(|name| name == "InEchos")
        .expect("InEchos");
    values
        .split_whitespace()
        .nth(column)
        .expect("value")
        .parse()
        .expect("a number")
}

/// The kernel strips any number of priority tags (VLAN 0) and hands the stack what is behind
/// them, so a frame the parser cannot see through must never pass: here a banned source's
/// ping behind five of them, sent over the veth, never reaches the stack.
#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_banned_source_behind_priority_tags_never_reaches_the_stack() {
    require_root();
    let net = TestNet::new();
    net.load_with_rules("rules = []\n").ok();
    let (banned, other) = (net.client_v4(1, 2), net.client_v4(1, 3));
    net.blocker(&["ban", &banned.to_string()]).ok();
    let macs = (
        &mac_of(&net.server_ns, &net.server_if),
        &mac_of(&net.client_ns, &net.client_if),
    );
    let delivered = |frame: Vec<u8>| {
        let before = echo_requests_received(&net.server_ns);
        send_raw(&net.client_ns, &net.client_if, frame);
        // The veth delivers at once; give the stack a moment all the same.
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while std::time::Instant::now() < deadline {
            if echo_requests_received(&net.server_ns) > before {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    };
    // The frames are well formed: one from a source nobody banned reaches the stack.
    assert!(
        delivered(ping_frame(macs, 0, other, net.server_v4())),
        "a plain ping"
    );
    assert!(
        !delivered(ping_frame(macs, 0, banned, net.server_v4())),
        "the banned source's"
    );
    let evasive = net.packets("evasive");
    assert!(
        !delivered(ping_frame(macs, 5, banned, net.server_v4())),
        "the banned source's ping behind five priority tags reached the stack"
    );
    assert_eq!(net.packets("evasive"), evasive + 1, "counted as evasive");
}

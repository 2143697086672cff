//! The program's parser on crafted frames, run through the loaded program itself with
//! BPF_PROG_TEST_RUN (`bpftool prog run`): VLAN tags, IPv4 options, IPv6 extension headers,
//! truncation and non-IP frames, each with the verdict and the counter it must produce.

use blocker_tests::{
    frames::{ethernet, frame, ipv4, ipv6, tcp_syn, ARP, IPV4, IPV6, QINQ, VLAN},
    require_root,
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

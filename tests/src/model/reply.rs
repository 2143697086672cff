//! Reject answers: when the program can build one, and whether the frame it sent back is a
//! well-formed TCP reset or ICMP port unreachable to the offending source. Checked field by
//! field with an independent checksum, not with the code that built it.

use blocker_common::{FAMILY_V4, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

use super::parse::{be16, be32, Ip, PROTO_TCP};

/// Longest stretch of the offending packet an ICMP / ICMPv6 answer quotes.
const QUOTE_V4_MAX: usize = 68;
const QUOTE_V6_MAX: usize = 128;
const REPLY_TTL: u8 = 64;

/// The offending packet from its IP header through 8 bytes past the IP headers.
fn quote_len(ip: &Ip) -> usize {
    ip.l4_offset - ip.l3_offset + 8
}

/// Whether the answer fits: never one to a reset; an ICMP answer's quote within its limit.
fn quote_fits(ip: &Ip) -> bool {
    if ip.proto == PROTO_TCP {
        return ip.tcp_flags & TCP_RST == 0;
    }
    let max = if ip.family == FAMILY_V4 {
        QUOTE_V4_MAX
    } else {
        QUOTE_V6_MAX
    };
    quote_len(ip) <= max
}

/// Whether the program can build an answer at all: it fits, and an ICMP answer's quote lies
/// within the frame.
pub fn answerable(frame: &[u8], ip: &Ip) -> bool {
    quote_fits(ip) && (ip.proto == PROTO_TCP || frame.len() >= ip.l3_offset + quote_len(ip))
}

fn sum(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|pair| u32::from(pair[0]) << 8 | u32::from(*pair.get(1).unwrap_or(&0)))
        .sum()
}

/// Whether the one's-complement sum of `parts` (a pseudo-header included) checks out.
fn checksum_ok(parts: &[u32]) -> bool {
    let mut total: u64 = parts.iter().map(|&p| u64::from(p)).sum();
    while total > 0xffff {
        total = (total & 0xffff) + (total >> 16);
    }
    total == 0xffff
}

fn expect<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, want {want:?}"))
    }
}

/// Checks the frame the program sent back (`out`) against the offending `frame`.
pub fn check(frame: &[u8], ip: &Ip, out: &[u8]) -> Result<(), String> {
    let l2 = ip.l3_offset;
    let v4 = ip.family == FAMILY_V4;
    let tcp = ip.proto == PROTO_TCP;
    let ip_len = if v4 { 20 } else { 40 };
    let l4_len = if tcp { 20 } else { 8 + quote_len(ip) };
    let len = l2 + ip_len + l4_len;
    expect("answer length", out.len(), len)?;
    expect("destination MAC", &out[0..6], &frame[6..12])?;
    expect("source MAC", &out[6..12], &frame[0..6])?;
    expect("VLAN tags and EtherType", &out[12..l2], &frame[12..l2])?;
    let (reply, orig) = (&out[l2..], &frame[l2..]);
    let pseudo = if v4 {
        expect("IPv4 version and IHL", reply[0], 0x45)?;
        expect(
            "IPv4 total length",
            usize::from(be16(reply, 2)),
            ip_len + l4_len,
        )?;
        expect("TTL", reply[8], REPLY_TTL)?;
        expect("protocol", reply[9], if tcp { 6 } else { 1 })?;
        expect("source address", &reply[12..16], &orig[16..20])?;
        expect("destination address", &reply[16..20], &orig[12..16])?;
        if !checksum_ok(&[sum(&reply[..20])]) {
            return Err("IPv4 header checksum".into());
        }
        // ICMP has no pseudo-header.
        if tcp {
            sum(&reply[12..20]) + 6 + l4_len as u32
        } else {
            0
        }
    } else {
        expect("IP version", reply[0] >> 4, 6)?;
        expect("IPv6 payload length", usize::from(be16(reply, 4)), l4_len)?;
        expect("next header", reply[6], if tcp { 6 } else { 58 })?;
        expect("hop limit", reply[7], REPLY_TTL)?;
        expect("source address", &reply[8..24], &orig[24..40])?;
        expect("destination address", &reply[24..40], &orig[8..24])?;
        sum(&reply[8..40]) + u32::from(reply[6]) + l4_len as u32
    };
    let answer = &reply[ip_len..];
    if !checksum_ok(&[pseudo, sum(answer)]) {
        return Err("transport checksum".into());
    }
    if tcp {
        check_reset(frame, ip, answer)
    } else {
        let (kind, code) = if v4 { (3, 3) } else { (1, 4) };
        expect("ICMP type and code", (answer[0], answer[1]), (kind, code))?;
        expect("ICMP rest of header", &answer[4..8], &[0; 4][..])?;
        let quote = &frame[ip.l3_offset..ip.l3_offset + quote_len(ip)];
        expect("ICMP quote", &answer[8..], quote)
    }
}

/// RFC 793 reset generation: an ACK is answered from its acknowledgment number, anything else
/// with an ACK of everything it occupied.
fn check_reset(frame: &[u8], ip: &Ip, answer: &[u8]) -> Result<(), String> {
    let orig = &frame[ip.l4_offset..ip.l4_offset + 20];
    expect("source port", &answer[0..2], &orig[2..4])?;
    expect("destination port", &answer[2..4], &orig[0..2])?;
    expect("data offset", answer[12], 0x50)?;
    let flags = orig[13];
    let (seq, ack, reply_flags) = if flags & TCP_ACK != 0 {
        (be32(orig, 8), 0, TCP_RST)
    } else {
        let l3 = &frame[ip.l3_offset..];
        let headers = (ip.l4_offset - ip.l3_offset) as u32 + u32::from(orig[12] >> 4) * 4;
        let ip_bytes = if ip.family == FAMILY_V4 {
            u32::from(be16(l3, 2))
        } else {
            40 + u32::from(be16(l3, 4))
        };
        let occupied = ip_bytes.saturating_sub(headers)
            + u32::from(flags & TCP_SYN != 0)
            + u32::from(flags & TCP_FIN != 0);
        (0, be32(orig, 4).wrapping_add(occupied), TCP_RST | TCP_ACK)
    };
    expect("sequence number", be32(answer, 4), seq)?;
    expect("acknowledgment number", be32(answer, 8), ack)?;
    expect("flags", answer[13], reply_flags)
}

#[cfg(test)]
mod tests {
    use blocker_common::reject::tcp_reset_v4;

    use super::*;
    use crate::{
        frames::{frame, ipv4, tcp_syn, IPV4},
        model::parse::parse,
    };

    #[test]
    fn a_reset_built_by_blocker_common_passes_and_a_corrupted_one_does_not() {
        let syn = frame(&[IPV4], &ipv4([10, 0, 0, 2], 0, 6, &tcp_syn(22)));
        let ip = parse(&syn).expect("parses");
        let mut reset = [0u8; 40];
        let orig_ip: [u8; 20] = syn[14..34].try_into().expect("20 bytes");
        let orig_tcp: [u8; 20] = syn[34..54].try_into().expect("20 bytes");
        assert!(tcp_reset_v4(&mut reset, &orig_ip, &orig_tcp, 0));
        let mut out = syn[6..12].to_vec();
        out.extend_from_slice(&syn[0..6]);
        out.extend_from_slice(&syn[12..14]);
        out.extend_from_slice(&reset);
        assert_eq!(check(&syn, &ip, &out), Ok(()));
        let mut bad = out.clone();
        bad[14 + 20 + 16] ^= 1;
        assert_eq!(check(&syn, &ip, &bad), Err("transport checksum".into()));
        assert!(check(&syn, &ip, &out[..out.len() - 1]).is_err());
    }
}

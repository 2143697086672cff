//! Answers the XDP program sends back instead of silently dropping (the seed's `properREJECT`):
//! a TCP RST for TCP, an ICMP / ICMPv6 port unreachable for the rest. Built here from the
//! offending packet's headers into fixed-size buffers, checksums included, so the same code is
//! unit-tested in userspace.

/// Longest stretch of the offending IPv4 packet quoted in an ICMP error: a header with
/// options and 8 bytes of what follows (RFC 792).
pub const QUOTE_V4_MAX: usize = 68;
/// Longest stretch of the offending IPv6 packet quoted in an ICMPv6 error; enough for the
/// header, a few extension headers and the UDP header.
pub const QUOTE_V6_MAX: usize = 128;
/// IPv4 header + ICMP header + quote.
pub const UNREACH_V4_LEN: usize = 20 + 8 + QUOTE_V4_MAX;
/// IPv6 header + ICMPv6 header + quote.
pub const UNREACH_V6_LEN: usize = 40 + 8 + QUOTE_V6_MAX;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const REPLY_TTL: u8 = 64;

/// One's-complement sum of big-endian 16-bit words of `buf[start..start + len]`, added to
/// `sum`; an odd last byte is padded with zero.
#[inline(always)]
pub fn checksum_add<const N: usize>(mut sum: u32, buf: &[u8; N], start: usize, len: usize) -> u32 {
    let mut i = 0;
    while i < N / 2 + 1 {
        let at = start + 2 * i;
        if 2 * i >= len || at >= N {
            break;
        }
        let high = u32::from(buf[at]) << 8;
        let low = if 2 * i + 1 < len && at + 1 < N {
            u32::from(buf[at + 1])
        } else {
            0
        };
        sum += high | low;
        i += 1;
    }
    sum
}

/// Folds a sum into the 16-bit checksum to store.
#[inline(always)]
pub fn checksum_finish(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[inline(always)]
fn put_u16<const N: usize>(buf: &mut [u8; N], at: usize, value: u16) {
    let [high, low] = value.to_be_bytes();
    buf[at] = high;
    buf[at + 1] = low;
}

#[inline(always)]
fn put_u32<const N: usize>(buf: &mut [u8; N], at: usize, value: u32) {
    let bytes = value.to_be_bytes();
    buf[at] = bytes[0];
    buf[at + 1] = bytes[1];
    buf[at + 2] = bytes[2];
    buf[at + 3] = bytes[3];
}

#[inline(always)]
fn get_u32(buf: &[u8; 20], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// Writes an IPv4 header answering `orig` (addresses swapped) at the start of `out`.
#[inline(always)]
fn ipv4_reply_header<const N: usize>(
    out: &mut [u8; N],
    orig: &[u8; 20],
    proto: u8,
    total_len: u16,
) {
    out[0] = 0x45;
    out[1] = 0;
    put_u16(out, 2, total_len);
    put_u32(out, 4, 0);
    out[8] = REPLY_TTL;
    out[9] = proto;
    put_u16(out, 10, 0);
    let mut i = 0;
    while i < 4 {
        out[12 + i] = orig[16 + i];
        out[16 + i] = orig[12 + i];
        i += 1;
    }
    let checksum = checksum_finish(checksum_add(0, out, 0, 20));
    put_u16(out, 10, checksum);
}

/// Writes an IPv6 header answering `orig` (addresses swapped) at the start of `out`.
#[inline(always)]
fn ipv6_reply_header<const N: usize>(
    out: &mut [u8; N],
    orig: &[u8; 40],
    next: u8,
    payload_len: u16,
) {
    put_u32(out, 0, 0x6000_0000);
    put_u16(out, 4, payload_len);
    out[6] = next;
    out[7] = REPLY_TTL;
    let mut i = 0;
    while i < 16 {
        out[8 + i] = orig[24 + i];
        out[24 + i] = orig[8 + i];
        i += 1;
    }
}

/// The pseudo-header sum of a reply whose addresses sit at `addr_at` (2 × `addr_len` bytes).
#[inline(always)]
fn pseudo_header_sum<const N: usize>(
    out: &[u8; N],
    addr_at: usize,
    addr_len: usize,
    proto: u8,
    len: u32,
) -> u32 {
    checksum_add(0, out, addr_at, 2 * addr_len) + u32::from(proto) + (len >> 16) + (len & 0xffff)
}

/// The RST's sequence, acknowledgment and flags for an offending TCP segment (RFC 793 reset
/// generation); `None` for a segment that is itself a reset.
#[inline(always)]
pub fn reset_numbers(orig_tcp: &[u8; 20], payload_len: u32) -> Option<(u32, u32, u8)> {
    let flags = orig_tcp[13];
    if flags & TCP_RST != 0 {
        return None;
    }
    if flags & TCP_ACK != 0 {
        return Some((get_u32(orig_tcp, 8), 0, TCP_RST));
    }
    let mut consumed = payload_len;
    if flags & TCP_SYN != 0 {
        consumed += 1;
    }
    if flags & TCP_FIN != 0 {
        consumed += 1;
    }
    let ack = get_u32(orig_tcp, 4).wrapping_add(consumed);
    Some((0, ack, TCP_RST | TCP_ACK))
}

/// Writes a 20-byte TCP reset at `at`, without its checksum.
#[inline(always)]
fn tcp_reset_header<const N: usize>(
    out: &mut [u8; N],
    at: usize,
    orig_tcp: &[u8; 20],
    (seq, ack, flags): (u32, u32, u8),
) {
    // Ports swapped.
    out[at] = orig_tcp[2];
    out[at + 1] = orig_tcp[3];
    out[at + 2] = orig_tcp[0];
    out[at + 3] = orig_tcp[1];
    put_u32(out, at + 4, seq);
    put_u32(out, at + 8, ack);
    out[at + 12] = 5 << 4;
    out[at + 13] = flags;
    put_u16(out, at + 14, 0);
    put_u16(out, at + 16, 0);
    put_u16(out, at + 18, 0);
}

/// Writes into `out` an IPv4 + TCP reset answering the segment with IP header `orig_ip` (its
/// first 20 bytes) and TCP header `orig_tcp` carrying `payload_len` bytes of data. False for a
/// segment that must not be answered (a reset).
#[inline(always)]
pub fn tcp_reset_v4(
    out: &mut [u8; 40],
    orig_ip: &[u8; 20],
    orig_tcp: &[u8; 20],
    payload_len: u32,
) -> bool {
    let Some(numbers) = reset_numbers(orig_tcp, payload_len) else {
        return false;
    };
    ipv4_reply_header(out, orig_ip, 6, 40);
    tcp_reset_header(out, 20, orig_tcp, numbers);
    let sum = checksum_add(pseudo_header_sum(out, 12, 4, 6, 20), out, 20, 20);
    put_u16(out, 36, checksum_finish(sum));
    true
}

/// An IPv6 + TCP reset; see [`tcp_reset_v4`].
#[inline(always)]
pub fn tcp_reset_v6(
    out: &mut [u8; 60],
    orig_ip: &[u8; 40],
    orig_tcp: &[u8; 20],
    payload_len: u32,
) -> bool {
    let Some(numbers) = reset_numbers(orig_tcp, payload_len) else {
        return false;
    };
    ipv6_reply_header(out, orig_ip, 6, 20);
    tcp_reset_header(out, 40, orig_tcp, numbers);
    let sum = checksum_add(pseudo_header_sum(out, 8, 16, 6, 20), out, 40, 20);
    put_u16(out, 56, checksum_finish(sum));
    true
}

/// Completes an ICMP port unreachable in `out`, whose bytes from 28 on already hold
/// `quote_len` bytes of the offending packet starting at its IP header. Returns the length.
#[inline(always)]
pub fn port_unreachable_v4(
    out: &mut [u8; UNREACH_V4_LEN],
    orig_ip: &[u8; 20],
    quote_len: usize,
) -> usize {
    let quote_len = if quote_len > QUOTE_V4_MAX {
        QUOTE_V4_MAX
    } else {
        quote_len
    };
    let len = 28 + quote_len;
    ipv4_reply_header(out, orig_ip, 1, len as u16);
    out[20] = 3; // destination unreachable
    out[21] = 3; // port unreachable
    put_u16(out, 22, 0);
    put_u32(out, 24, 0);
    let checksum = checksum_finish(checksum_add(0, out, 20, 8 + quote_len));
    put_u16(out, 22, checksum);
    len
}

/// Completes an ICMPv6 port unreachable in `out`, whose bytes from 48 on already hold
/// `quote_len` bytes of the offending packet starting at its IPv6 header. Returns the length.
#[inline(always)]
pub fn port_unreachable_v6(
    out: &mut [u8; UNREACH_V6_LEN],
    orig_ip: &[u8; 40],
    quote_len: usize,
) -> usize {
    let quote_len = if quote_len > QUOTE_V6_MAX {
        QUOTE_V6_MAX
    } else {
        quote_len
    };
    let icmp_len = 8 + quote_len;
    ipv6_reply_header(out, orig_ip, 58, icmp_len as u16);
    out[40] = 1; // destination unreachable
    out[41] = 4; // port unreachable
    put_u16(out, 42, 0);
    put_u32(out, 44, 0);
    let sum = pseudo_header_sum(out, 8, 16, 58, icmp_len as u32);
    let checksum = checksum_finish(checksum_add(sum, out, 40, icmp_len));
    put_u16(out, 42, checksum);
    40 + icmp_len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verify<const N: usize>(buf: &[u8; N], start: usize, len: usize, pseudo: u32) -> bool {
        checksum_finish(checksum_add(pseudo, buf, start, len)) == 0
    }

    fn syn_v4() -> ([u8; 20], [u8; 20]) {
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&[10, 0, 0, 2]);
        ip[16..20].copy_from_slice(&[10, 0, 0, 1]);
        let mut tcp = [0u8; 20];
        tcp[0..2].copy_from_slice(&40_000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&22u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&1_000u32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = TCP_SYN;
        (ip, tcp)
    }

    #[test]
    fn checksum_of_a_known_ipv4_header() {
        // The classic example header with checksum 0xb861.
        let header: [u8; 20] = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum_finish(checksum_add(0, &header, 0, 20)), 0xb861);
        let odd = [0x01u8, 0x02, 0x03];
        assert_eq!(checksum_add(0, &odd, 0, 3), 0x0102 + 0x0300);
    }

    #[test]
    fn reset_answers_a_syn() {
        let (ip, tcp) = syn_v4();
        let mut out = [0u8; 40];
        assert!(tcp_reset_v4(&mut out, &ip, &tcp, 0));
        assert_eq!(out[12..16], [10, 0, 0, 1], "from the protected host");
        assert_eq!(out[16..20], [10, 0, 0, 2], "to the client");
        assert_eq!(u16::from_be_bytes([out[20], out[21]]), 22);
        assert_eq!(u16::from_be_bytes([out[22], out[23]]), 40_000);
        assert_eq!(
            u32::from_be_bytes([out[28], out[29], out[30], out[31]]),
            1_001
        );
        assert_eq!(out[33], TCP_RST | TCP_ACK);
        assert!(verify(&out, 0, 20, 0), "IPv4 header checksum");
        let pseudo = checksum_add(0, &out, 12, 8) + 6 + 20;
        assert!(verify(&out, 20, 20, pseudo), "TCP checksum");
    }

    #[test]
    fn reset_answers_an_ack_with_its_ack_number_and_never_a_reset() {
        let (ip, mut tcp) = syn_v4();
        tcp[13] = TCP_ACK;
        tcp[8..12].copy_from_slice(&77u32.to_be_bytes());
        let mut out = [0u8; 40];
        assert!(tcp_reset_v4(&mut out, &ip, &tcp, 100));
        assert_eq!(u32::from_be_bytes([out[24], out[25], out[26], out[27]]), 77);
        assert_eq!(out[33], TCP_RST);
        tcp[13] = TCP_RST;
        assert!(!tcp_reset_v4(&mut out, &ip, &tcp, 0));
    }

    #[test]
    fn reset_over_ipv6() {
        let (_, tcp) = syn_v4();
        let mut ip = [0u8; 40];
        ip[0] = 0x60;
        ip[6] = 6;
        ip[8] = 0x20;
        ip[23] = 2;
        ip[24] = 0x20;
        ip[39] = 1;
        let mut out = [0u8; 60];
        assert!(tcp_reset_v6(&mut out, &ip, &tcp, 0));
        assert_eq!(out[8], 0x20);
        assert_eq!(out[23], 1, "source is the original destination");
        assert_eq!(out[39], 2);
        let pseudo = checksum_add(0, &out, 8, 32) + 6 + 20;
        assert!(verify(&out, 40, 20, pseudo));
    }

    #[test]
    fn port_unreachable_quotes_and_checksums() {
        let (mut ip, _) = syn_v4();
        ip[9] = 17;
        let mut out = [0u8; UNREACH_V4_LEN];
        out[28..48].copy_from_slice(&ip);
        out[48..56].copy_from_slice(&[0x9c, 0x40, 0x00, 0x35, 0x00, 0x08, 0x00, 0x00]);
        let len = port_unreachable_v4(&mut out, &ip, 28);
        assert_eq!(len, 56);
        assert_eq!((out[20], out[21]), (3, 3));
        assert_eq!(u16::from_be_bytes([out[2], out[3]]), 56);
        assert!(verify(&out, 0, 20, 0));
        assert!(verify(&out, 20, 36, 0), "ICMP checksum covers the quote");
        // An odd quote length is padded for the checksum.
        let len = port_unreachable_v4(&mut out, &ip, 27);
        assert!(verify(&out, 20, len - 20, 0));

        let mut ip6 = [0u8; 40];
        ip6[0] = 0x60;
        ip6[6] = 17;
        ip6[8] = 0xfd;
        ip6[24] = 0xfd;
        ip6[39] = 1;
        let mut out = [0u8; UNREACH_V6_LEN];
        out[48..88].copy_from_slice(&ip6);
        let len = port_unreachable_v6(&mut out, &ip6, 48);
        assert_eq!(len, 96);
        assert_eq!((out[40], out[41]), (1, 4));
        let pseudo = checksum_add(0, &out, 8, 32) + 58 + 56;
        assert!(verify(&out, 40, 56, pseudo));
    }
}

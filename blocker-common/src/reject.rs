//! Answers the XDP program sends back instead of silently dropping (the seed's `properREJECT`):
//! a TCP RST for TCP, an ICMP / ICMPv6 port unreachable for the rest. Built here from the
//! offending packet's headers into fixed-size buffers, checksums included, so the same code is
//! unit-tested in userspace. Which packets get an answer at all is decided here too: never
//! one to a source that cannot be unicast to, and at most a token bucket's worth per CPU, so
//! rejects never amplify a spoofed flood.

use crate::{
    FAMILY_V4, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};

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

const REPLY_TTL: u8 = 64;

/// Whether a packet of `proto` can be answered: not ICMP (errors are never answered with
/// errors), not a TCP reset, and for IPv6 not a header chain too long to quote
/// (`l3_to_l4_len`: IP header plus extension headers).
#[inline(always)]
pub fn answerable(family: u8, proto: u8, tcp_flags: u8, l3_to_l4_len: usize) -> bool {
    match proto {
        IPPROTO_ICMP | IPPROTO_ICMPV6 => false,
        IPPROTO_TCP => tcp_flags & TCP_RST == 0,
        _ if family == FAMILY_V4 => l3_to_l4_len + 8 <= QUOTE_V4_MAX,
        _ => l3_to_l4_len + 8 <= QUOTE_V6_MAX,
    }
}

/// Whether a source address can be answered: not unspecified, loopback, multicast or (IPv4)
/// reserved or broadcast. An answer to such a source would go to many hosts or none. The
/// program tests a packet's destination the same way, as its answer's source.
/// IPv4 addresses sit in the first 4 bytes.
#[inline(always)]
pub fn source_is_unicast(family: u8, addr: &[u8; 16]) -> bool {
    if family == FAMILY_V4 {
        // 0/8, 127/8, 224/4 (multicast) and 240/4 (reserved, with 255.255.255.255).
        return !matches!(addr[0], 0 | 127 | 224..=255);
    }
    let high = u64::from_be_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let low = u64::from_be_bytes([
        addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
    ]);
    // ff00::/8 multicast, :: unspecified, ::1 loopback.
    addr[0] != 0xff && !(high == 0 && low <= 1)
}

/// Whether an Ethernet source address is a single station's (the group bit is clear).
#[inline(always)]
pub fn mac_is_unicast(mac: &[u8; 6]) -> bool {
    mac[0] & 1 == 0
}

/// A CPU's allowance of answers: `per_s` tokens a second up to `burst`, one per answer.
/// Thousandths of a token are kept, so slow rates refill exactly. A bucket starts empty at
/// time 0 (zeroed map memory) and so is full once `burst / per_s` seconds of clock have passed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    pub millitokens: u64,
    pub last_ms: u64,
}

impl TokenBucket {
    /// Refills for the time since the last call, then takes a token if there is one. A clock
    /// that went back refills nothing. `per_s` 0 never gives a token.
    #[inline(always)]
    pub fn take(&mut self, now_ms: u64, per_s: u32, burst: u32) -> bool {
        if per_s == 0 {
            return false;
        }
        if now_ms > self.last_ms {
            // Capped so the product fits 64 bits (no 128-bit multiply in BPF); 49 days of
            // refill fills any bucket that matters.
            let elapsed = (now_ms - self.last_ms).min(u64::from(u32::MAX));
            let refill = elapsed * u64::from(per_s);
            self.millitokens = self.millitokens.saturating_add(refill);
            self.last_ms = now_ms;
        }
        self.millitokens = self.millitokens.min(u64::from(burst) * 1000);
        if self.millitokens < 1000 {
            return false;
        }
        self.millitokens -= 1000;
        true
    }
}

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
    // Two block copies, not one interleaved loop: interleaved, LLVM holds all 32 bytes in
    // registers at once and spills them, which took 256 bytes of the XDP program's stack.
    out[8..24].copy_from_slice(&orig[24..40]);
    out[24..40].copy_from_slice(&orig[8..24]);
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
    fn the_bucket_gives_its_burst_then_refills_by_elapsed_time() {
        let mut bucket = TokenBucket::default();
        let start = 1_000_000;
        let taken = (0..100).filter(|_| bucket.take(start, 1000, 50)).count();
        assert_eq!(taken, 50, "a full bucket gives exactly its burst");
        assert!(!bucket.take(start, 1000, 50), "empty at the same instant");
        // 1000 per second: one token per millisecond.
        let taken = (0..100)
            .filter(|_| bucket.take(start + 7, 1000, 50))
            .count();
        assert_eq!(taken, 7);
        // A slow rate refills in thousandths: 3 per second gives one after 334 ms.
        let mut slow = TokenBucket::default();
        assert!(slow.take(10_000, 3, 1));
        assert!(!slow.take(10_333, 3, 1));
        assert!(slow.take(10_334, 3, 1));
        // A long quiet spell refills to the burst, never more.
        let taken = (0..10).filter(|_| slow.take(u64::MAX, 3, 2)).count();
        assert_eq!(taken, 2);
    }

    #[test]
    fn the_bucket_starts_empty_at_time_zero_and_ignores_a_clock_going_back() {
        let mut bucket = TokenBucket::default();
        assert!(!bucket.take(0, 1000, 50));
        assert!(bucket.take(1, 1000, 50));
        assert!(!bucket.take(1, 1000, 50));
        assert!(!bucket.take(0, 1000, 50), "going back refills nothing");
        assert!(bucket.take(2, 1000, 50));
        let mut off = TokenBucket::default();
        assert!(!off.take(1_000_000, 0, 50), "per_s 0 never answers");
    }

    #[test]
    fn only_unicast_sources_are_answered() {
        let v4 = |a: [u8; 4]| {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&a);
            source_is_unicast(FAMILY_V4, &addr)
        };
        assert!(v4([10, 0, 0, 1]));
        assert!(v4([223, 255, 255, 254]));
        for bad in [
            [0, 0, 0, 0],
            [0, 1, 2, 3],
            [127, 0, 0, 1],
            [224, 0, 0, 1],
            [239, 255, 255, 250],
            [240, 0, 0, 1],
            [255, 255, 255, 255],
        ] {
            assert!(!v4(bad), "{bad:?}");
        }
        let v6 = |a: core::net::Ipv6Addr| source_is_unicast(crate::FAMILY_V6, &a.octets());
        assert!(v6("2001:db8::1".parse().unwrap()));
        assert!(v6("fe80::1".parse().unwrap()));
        assert!(v6("::2".parse().unwrap()));
        for bad in ["::", "::1", "ff02::1", "ff05::1:3"] {
            assert!(!v6(bad.parse().unwrap()), "{bad}");
        }
        assert!(mac_is_unicast(&[0x02, 0, 0, 0, 0, 1]));
        assert!(!mac_is_unicast(&[0x01, 0, 0x5e, 0, 0, 1]));
        assert!(!mac_is_unicast(&[0xff; 6]));
    }

    #[test]
    fn icmp_resets_and_unquotable_chains_are_not_answered() {
        assert!(answerable(FAMILY_V4, 6, TCP_SYN, 20));
        assert!(!answerable(FAMILY_V4, 6, TCP_RST | TCP_ACK, 20));
        assert!(!answerable(FAMILY_V4, 1, 0, 20));
        assert!(!answerable(crate::FAMILY_V6, 58, 0, 40));
        assert!(answerable(FAMILY_V4, 17, 0, 60), "any IPv4 header fits");
        assert!(answerable(crate::FAMILY_V6, 17, 0, 120));
        assert!(!answerable(crate::FAMILY_V6, 17, 0, 128));
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

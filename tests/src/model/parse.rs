//! The reference model's frame parser: bytes in, the fields the verdict needs out. Written
//! from the specification, sharing no code with the XDP program's parser.

use blocker_common::{FAMILY_V4, FAMILY_V6, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS};

const ETHERNET_LEN: usize = 14;
const VLAN_TAG_LEN: usize = 4;
const IPV4_MIN_LEN: usize = 20;
const IPV6_LEN: usize = 40;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
const PROTO_HOPOPTS: u8 = 0;
const PROTO_ROUTING: u8 = 43;
const PROTO_FRAGMENT: u8 = 44;
const PROTO_DSTOPTS: u8 = 60;

/// Why a frame stopped before its IP source was known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Early {
    /// Too short for its Ethernet, VLAN or IP header, or an invalid IP header.
    Malformed,
    /// Not IPv4 or IPv6.
    NotIp,
    /// More VLAN tags than the parser looks through.
    TooManyTags,
}

/// What the transport layer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// A complete TCP/UDP/ICMP header, or a protocol that needs none.
    Present,
    /// A non-first fragment: no transport header in this packet.
    Fragment,
    /// A non-fragment whose transport header is cut short.
    Truncated,
    /// A first fragment whose transport header is cut short: the reassembled packet would
    /// have one.
    FirstFragmentCut,
    /// An IPv6 first fragment whose extension headers after the fragment header are cut short:
    /// the transport protocol is unknown.
    FirstFragmentChainCut,
    /// An IPv6 chain still in an extension header after the headers the parser walks.
    ChainTooLong,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ip {
    pub family: u8,
    /// IPv4 addresses use the first 4 bytes.
    pub source: [u8; 16],
    pub destination: [u8; 16],
    /// TTL or hop limit.
    pub ttl: u8,
    pub l3_offset: usize,
    pub l4_offset: usize,
    /// The transport protocol, or for a cut chain the next header where it stopped.
    pub proto: u8,
    pub l4: L4,
    /// 0 unless a TCP or UDP header is present.
    pub dport: u16,
    /// 0 unless a TCP header is present.
    pub tcp_flags: u8,
}

pub fn parse(frame: &[u8]) -> Result<Ip, Early> {
    if frame.len() < ETHERNET_LEN {
        return Err(Early::Malformed);
    }
    let mut ether_type = be16(frame, 12);
    let mut offset = ETHERNET_LEN;
    let is_tag = |ether_type| ether_type == 0x8100 || ether_type == 0x88a8;
    for _ in 0..MAX_VLAN_TAGS {
        if !is_tag(ether_type) {
            break;
        }
        if frame.len() < offset + VLAN_TAG_LEN {
            return Err(Early::Malformed);
        }
        ether_type = be16(frame, offset + 2);
        offset += VLAN_TAG_LEN;
    }
    match ether_type {
        0x0800 => parse_ipv4(frame, offset),
        0x86dd => parse_ipv6(frame, offset),
        tag if is_tag(tag) => Err(Early::TooManyTags),
        _ => Err(Early::NotIp),
    }
}

fn parse_ipv4(frame: &[u8], l3: usize) -> Result<Ip, Early> {
    if frame.len() < l3 + IPV4_MIN_LEN {
        return Err(Early::Malformed);
    }
    let header_len = usize::from(frame[l3] & 0x0f) * 4;
    let in_frame = frame.len() >= l3 + header_len;
    if frame[l3] >> 4 != 4 || header_len < IPV4_MIN_LEN || !in_frame {
        return Err(Early::Malformed);
    }
    let mut ip = Ip {
        family: FAMILY_V4,
        source: [0; 16],
        destination: [0; 16],
        ttl: frame[l3 + 8],
        l3_offset: l3,
        l4_offset: l3 + header_len,
        proto: frame[l3 + 9],
        l4: L4::Present,
        dport: 0,
        tcp_flags: 0,
    };
    ip.source[..4].copy_from_slice(&frame[l3 + 12..l3 + 16]);
    ip.destination[..4].copy_from_slice(&frame[l3 + 16..l3 + 20]);
    let fragment = be16(frame, l3 + 6);
    let more_fragments = fragment & 0x2000 != 0;
    if fragment & 0x1fff != 0 {
        ip.l4 = L4::Fragment;
    } else {
        transport(frame, &mut ip, more_fragments);
    }
    Ok(ip)
}

fn parse_ipv6(frame: &[u8], l3: usize) -> Result<Ip, Early> {
    if frame.len() < l3 + IPV6_LEN || frame[l3] >> 4 != 6 {
        return Err(Early::Malformed);
    }
    let mut ip = Ip {
        family: FAMILY_V6,
        source: frame[l3 + 8..l3 + 24].try_into().expect("16 bytes"),
        destination: frame[l3 + 24..l3 + 40].try_into().expect("16 bytes"),
        ttl: frame[l3 + 7],
        l3_offset: l3,
        l4_offset: l3 + IPV6_LEN,
        proto: frame[l3 + 6],
        l4: L4::Present,
        dport: 0,
        tcp_flags: 0,
    };
    let is_extension = |proto| {
        matches!(
            proto,
            PROTO_HOPOPTS | PROTO_ROUTING | PROTO_DSTOPTS | PROTO_FRAGMENT
        )
    };
    // Set once a fragment header says offset 0 with more fragments to come.
    let mut first_fragment = false;
    let mut walked = 0;
    while is_extension(ip.proto) && walked < MAX_IPV6_EXT_HEADERS {
        walked += 1;
        let at = ip.l4_offset;
        let needed = if ip.proto == PROTO_FRAGMENT { 8 } else { 2 };
        // A protocol without a header the program reads is complete wherever it starts (even
        // past the frame's end, behind an extension header whose body is cut: kernel-impl-notes).
        if needed > 0 && frame.len() < at + needed {
            ip.l4 = if first_fragment {
                L4::FirstFragmentChainCut
            } else {
                L4::Truncated
            };
            return Ok(ip);
        }
        if ip.proto == PROTO_FRAGMENT {
            ip.proto = frame[at];
            ip.l4_offset += 8;
            let offset_and_flags = be16(frame, at + 2);
            if offset_and_flags >> 3 != 0 {
                ip.l4 = L4::Fragment;
                return Ok(ip);
            }
            first_fragment |= offset_and_flags & 1 != 0;
        } else {
            ip.proto = frame[at];
            ip.l4_offset += (usize::from(frame[at + 1]) + 1) * 8;
        }
    }
    if is_extension(ip.proto) {
        ip.l4 = L4::ChainTooLong;
        return Ok(ip);
    }
    transport(frame, &mut ip, first_fragment);
    Ok(ip)
}

/// Reads the transport header at `ip.l4_offset`, or says how it is missing.
fn transport(frame: &[u8], ip: &mut Ip, first_fragment: bool) {
    let at = ip.l4_offset;
    let needed = match ip.proto {
        PROTO_TCP => 20,
        PROTO_UDP | PROTO_ICMP | PROTO_ICMPV6 => 8,
        _ => 0,
    };
    // The header must lie within the frame and within the datagram by its own length field
    // (padding of a short frame is no header). A protocol without a header the program reads
    // needs only to start within the datagram, even past the frame's end behind an extension
    // header whose body is cut (kernel-impl-notes).
    let datagram_end = match ip.family {
        FAMILY_V4 => ip.l3_offset + usize::from(be16(frame, ip.l3_offset + 2)),
        // ip6_rcv_core trims the datagram to its payload length, unless that is 0 with a
        // hop-by-hop header next (a jumbogram: the frame is the only bound).
        _ => {
            let payload = usize::from(be16(frame, ip.l3_offset + 4));
            let hop_by_hop_next = frame[ip.l3_offset + 6] == 0;
            if payload == 0 && hop_by_hop_next {
                usize::MAX
            } else {
                ip.l3_offset + IPV6_LEN + payload
            }
        }
    };
    let cut = at + needed > datagram_end || (needed > 0 && frame.len() < at + needed);
    if cut {
        ip.l4 = if first_fragment {
            L4::FirstFragmentCut
        } else {
            L4::Truncated
        };
        return;
    }
    if matches!(ip.proto, PROTO_TCP | PROTO_UDP) {
        ip.dport = be16(frame, at + 2);
    }
    if ip.proto == PROTO_TCP {
        ip.tcp_flags = frame[at + 13];
    }
}

pub fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

pub fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::{frame, ipv4, ipv6, tcp_syn, IPV4, IPV6, VLAN};

    #[test]
    fn a_syn_behind_two_tags_and_too_many_tags() {
        let syn = frame(
            &[VLAN, VLAN, IPV4],
            &ipv4([10, 0, 0, 1], 4, 6, &tcp_syn(22)),
        );
        let ip = parse(&syn).expect("parses");
        assert_eq!((ip.proto, ip.dport, ip.tcp_flags), (6, 22, 0x02));
        assert_eq!((ip.l3_offset, ip.l4_offset), (22, 46));
        assert_eq!(ip.l4, L4::Present);
        let behind = |tags: usize| {
            let mut ether_types = vec![VLAN; tags];
            ether_types.push(IPV4);
            frame(&ether_types, &ipv4([10, 0, 0, 1], 0, 6, &tcp_syn(22)))
        };
        assert!(parse(&behind(MAX_VLAN_TAGS)).is_ok());
        assert_eq!(parse(&behind(MAX_VLAN_TAGS + 1)), Err(Early::TooManyTags));
    }

    #[test]
    fn ipv6_chains() {
        let source = [0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let six = frame(&[IPV6], &ipv6(source, &[60; 6], 6, &tcp_syn(22)));
        assert_eq!(parse(&six).expect("parses").l4, L4::Present);
        let seven = frame(&[IPV6], &ipv6(source, &[60; 7], 6, &tcp_syn(22)));
        assert_eq!(parse(&seven).expect("parses").l4, L4::ChainTooLong);
        // The builder's fragment header is a first fragment: cut its SYN short.
        let mut cut = ipv6(source, &[44], 6, &tcp_syn(22));
        cut.truncate(40 + 8 + 8);
        let mut cut_frame = crate::frames::ethernet(&[IPV6]);
        cut_frame.extend_from_slice(&cut);
        assert_eq!(parse(&cut_frame).expect("parses").l4, L4::FirstFragmentCut);
    }
}

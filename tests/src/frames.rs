//! Frame builders for tests and benchmarks: Ethernet (with VLAN tags), IPv4 (with options),
//! IPv6 (with extension headers), TCP SYN and UDP headers, as bytes.

/// EtherTypes.
pub const IPV4: u16 = 0x0800;
pub const IPV6: u16 = 0x86dd;
pub const VLAN: u16 = 0x8100;
pub const QINQ: u16 = 0x88a8;
pub const ARP: u16 = 0x0806;

/// A UDP header to `dport` with `payload_len` bytes of zeros after it.
pub fn udp(dport: u16, payload_len: usize) -> Vec<u8> {
    let mut udp = vec![0u8; 8 + payload_len];
    udp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    udp[2..4].copy_from_slice(&dport.to_be_bytes());
    udp[4..6].copy_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    udp
}

pub fn ethernet(ether_types: &[u16]) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    let (last, tags) = ether_types.split_last().expect("an ether type");
    for tag in tags {
        frame.extend_from_slice(&tag.to_be_bytes());
        // The tag's TCI: VLAN 100.
        frame.extend_from_slice(&[0x00, 0x64]);
    }
    frame.extend_from_slice(&last.to_be_bytes());
    frame
}

/// TCP flag bits.
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

/// A 20-byte TCP header to `dport` with `flags`.
pub fn tcp(dport: u16, flags: u8) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp
}

pub fn tcp_syn(dport: u16) -> Vec<u8> {
    tcp(dport, SYN)
}

/// An IPv4 packet (from [`ipv4`]) made a fragment: `offset` in 8-byte units, and whether
/// more fragments follow.
pub fn ipv4_fragment(mut ip: Vec<u8>, offset: u16, more: bool) -> Vec<u8> {
    let word = offset | if more { 0x2000 } else { 0 };
    ip[6..8].copy_from_slice(&word.to_be_bytes());
    ip
}

/// An IPv4 packet (from [`ipv4`]) with another TTL.
pub fn ipv4_ttl(mut ip: Vec<u8>, ttl: u8) -> Vec<u8> {
    ip[8] = ttl;
    ip
}

pub fn ipv4(source: [u8; 4], options: usize, proto: u8, payload: &[u8]) -> Vec<u8> {
    let header_len = 20 + options;
    let mut ip = vec![0u8; header_len];
    ip[0] = 0x40 | (header_len / 4) as u8;
    ip[2..4].copy_from_slice(&((header_len + payload.len()) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&source);
    ip[16..20].copy_from_slice(&[192, 0, 2, 254]);
    // Options: NOPs then end-of-list.
    for byte in ip.iter_mut().skip(20) {
        *byte = 1;
    }
    ip.extend_from_slice(payload);
    ip
}

/// IPv6 with the given extension headers (protocol numbers) before `proto`.
pub fn ipv6(source: [u8; 16], extensions: &[u8], proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut chain = Vec::new();
    let next_of = |i: usize| extensions.get(i + 1).copied().unwrap_or(proto);
    for (i, ext) in extensions.iter().enumerate() {
        if *ext == 44 {
            // Fragment header: first fragment (offset 0), more fragments.
            chain.extend_from_slice(&[next_of(i), 0, 0, 1, 0, 0, 0, 7]);
        } else {
            // 8-byte options header padded with PadN.
            chain.extend_from_slice(&[next_of(i), 0, 1, 4, 0, 0, 0, 0]);
        }
    }
    let first = extensions.first().copied().unwrap_or(proto);
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&((chain.len() + payload.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[first, 64]);
    ip.extend_from_slice(&source);
    ip.extend_from_slice(&[
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfe,
    ]);
    ip.extend_from_slice(&chain);
    ip.extend_from_slice(payload);
    ip
}

pub fn frame(ether_types: &[u16], l3: &[u8]) -> Vec<u8> {
    let mut frame = ethernet(ether_types);
    frame.extend_from_slice(l3);
    // Pad to the Ethernet minimum like a NIC would.
    while frame.len() < 60 {
        frame.push(0);
    }
    frame
}

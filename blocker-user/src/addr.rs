//! Parsing of addresses and CIDR prefixes as users type them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::{Error, Result};

/// The prefix length `addr` is counted and banned by under `mask6`: the mask, except that a
/// link-local address is one host, as the XDP program keys its rules
/// ([`blocker_common::link_local_bits`]).
pub fn v6_key_len(addr: Ipv6Addr, mask6: u8) -> u8 {
    let high = blocker_common::addr_words(&addr.octets())[0];
    blocker_common::key_len(mask6, blocker_common::link_local_bits(high))
}

/// A parsed prefix, and the text the user gave when it had to be changed to get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub net: IpNet,
    /// Set when host bits were cleared (`10.1.2.3/24` became `10.1.2.0/24`).
    pub normalized_from: Option<String>,
}

/// Parses `ADDR` or `ADDR/LEN`. A bare address is a host prefix (/32 or /128); host bits are
/// cleared; an IPv4-mapped IPv6 address or prefix (`::ffff:10.0.0.1`) becomes plain IPv4,
/// since that is how such a source reaches the wire.
pub fn parse_net(text: &str) -> Result<Parsed> {
    let invalid = || Error::InvalidAddress(text.to_string());
    let trimmed = text.trim();
    let net = match trimmed.split_once('/') {
        None => IpNet::from(trimmed.parse::<IpAddr>().map_err(|_| invalid())?),
        Some((addr, len)) => {
            let addr: IpAddr = addr.parse().map_err(|_| invalid())?;
            // Reject "+8", "08" and the like: a prefix length is plain decimal digits, with no
            // leading zero (some tools read "010" as octal).
            let leading_zero = len.len() > 1 && len.starts_with('0');
            if len.is_empty()
                || len.len() > 3
                || leading_zero
                || !len.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(invalid());
            }
            let len: u8 = len.parse().map_err(|_| invalid())?;
            IpNet::new(addr, len).map_err(|_| invalid())?
        }
    };
    let net = unmap_ipv4(net);
    let normalized = net.trunc();
    let given_host_bits = normalized != net;
    Ok(Parsed {
        net: normalized,
        normalized_from: given_host_bits.then(|| trimmed.to_string()),
    })
}

/// `::ffff:a.b.c.d/96+n` is the IPv4 prefix `a.b.c.d/n`.
fn unmap_ipv4(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::V4(
                Ipv4Net::new(v4, v6.prefix_len() - 96)
                    .expect("96..=128 minus 96 is a valid length"),
            ),
            None => net,
        },
        other => other,
    }
}

/// The IPv4 LPM key bytes of a prefix.
pub fn v4_key(net: &Ipv4Net) -> (u32, [u8; 4]) {
    (u32::from(net.prefix_len()), net.network().octets())
}

/// The IPv6 LPM key bytes of a prefix.
pub fn v6_key(net: &Ipv6Net) -> (u32, [u8; 16]) {
    (u32::from(net.prefix_len()), net.network().octets())
}

/// Rebuilds a prefix from LPM key bytes.
pub fn net_from_v4_key(prefix_len: u32, data: [u8; 4]) -> Option<IpNet> {
    Ipv4Net::new(Ipv4Addr::from(data), u8::try_from(prefix_len).ok()?)
        .ok()
        .map(IpNet::V4)
}

/// Rebuilds a prefix from LPM key bytes.
pub fn net_from_v6_key(prefix_len: u32, data: [u8; 16]) -> Option<IpNet> {
    Ipv6Net::new(Ipv6Addr::from(data), u8::try_from(prefix_len).ok()?)
        .ok()
        .map(IpNet::V6)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn net(text: &str) -> IpNet {
        parse_net(text).unwrap().net
    }

    #[test]
    fn bare_addresses_are_host_prefixes() {
        assert_eq!(net("192.0.2.7").to_string(), "192.0.2.7/32");
        assert_eq!(net("2001:db8::1").to_string(), "2001:db8::1/128");
        assert_eq!(net(" 192.0.2.7 ").to_string(), "192.0.2.7/32");
    }

    #[test]
    fn host_bits_are_cleared_and_reported() {
        let parsed = parse_net("10.1.2.3/24").unwrap();
        assert_eq!(parsed.net.to_string(), "10.1.2.0/24");
        assert_eq!(parsed.normalized_from.as_deref(), Some("10.1.2.3/24"));
        let exact = parse_net("10.1.2.0/24").unwrap();
        assert_eq!(exact.normalized_from, None);
        assert_eq!(net("2001:db8:1:2:3::/64").to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn ipv4_mapped_ipv6_becomes_ipv4() {
        assert_eq!(net("::ffff:192.0.2.9").to_string(), "192.0.2.9/32");
        assert_eq!(net("::ffff:192.0.2.0/120").to_string(), "192.0.2.0/24");
        // Shorter than /96 is not an IPv4 prefix and stays IPv6.
        assert_eq!(net("::ffff:0:0/80").to_string(), "::/80");
    }

    #[test]
    fn invalid_input_is_named_in_the_error() {
        for bad in [
            "10.0.0.300",
            "10.0.0.1/33",
            "2001:db8::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/abc",
            "",
            "example.com",
            "10.0.0",
            "10.0.0.1/8/8",
            "10.0.0.0/08",
            "10.0.0.0/032",
            "10.0.0.0/00",
            "2001:db8::/064",
            "010.0.0.1",
        ] {
            let err = parse_net(bad).unwrap_err();
            assert!(err.is_bad_input(), "{bad}");
            assert_eq!(err.to_string(), format!("invalid address or CIDR: {bad:?}"));
        }
    }

    #[test]
    fn a_zero_length_is_still_a_prefix_length() {
        assert_eq!(net("10.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(net("10.0.0.0/10").to_string(), "10.0.0.0/10");
    }

    #[test]
    fn keys_round_trip() {
        let IpNet::V4(v4) = net("10.20.0.0/16") else {
            panic!()
        };
        let (len, data) = v4_key(&v4);
        assert_eq!(net_from_v4_key(len, data), Some(IpNet::V4(v4)));
        let IpNet::V6(v6) = net("2001:db8:aa::/48") else {
            panic!()
        };
        let (len, data) = v6_key(&v6);
        assert_eq!(net_from_v6_key(len, data), Some(IpNet::V6(v6)));
    }

    proptest! {
        #[test]
        fn any_text_parses_or_is_a_one_line_error(text in any::<String>()) {
            if let Err(err) = parse_net(&text) {
                prop_assert!(err.is_bad_input());
                prop_assert!(!err.to_string().contains('\n'));
            }
        }

        #[test]
        fn printed_prefixes_parse_back(addr in any::<IpAddr>(), len in 0u8..=128) {
            let net = IpNet::new(addr, len.min(IpNet::from(addr).max_prefix_len()))
                .expect("length within the family")
                .trunc();
            let parsed = parse_net(&net.to_string()).expect("a printed prefix parses");
            prop_assert_eq!(parsed.net, unmap_ipv4(net));
            prop_assert_eq!(parsed.normalized_from, None);
        }

        #[test]
        fn host_bits_are_always_cleared(addr in any::<IpAddr>(), len in 0u8..=128) {
            let len = len.min(IpNet::from(addr).max_prefix_len());
            let parsed = parse_net(&format!("{addr}/{len}")).expect("a valid prefix parses");
            prop_assert_eq!(parsed.net, parsed.net.trunc());
            prop_assert_eq!(parsed.normalized_from.is_some(), parsed.net != unmap_ipv4(IpNet::new(addr, len).expect("valid")));
        }

        #[test]
        fn leading_zeros_in_the_length_are_refused(addr in any::<IpAddr>(), len in 0u8..=32, zeros in 1usize..3) {
            let text = format!("{addr}/{}{len}", "0".repeat(zeros));
            prop_assert!(parse_net(&text).is_err(), "{} was accepted", text);
        }
    }
}

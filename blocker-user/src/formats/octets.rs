//! Addresses as the older Apache and Perl lists write them: whole addresses, CIDRs, netmasks
//! (`10.0.0.0/255.0.0.0`) and partial octets (`123.123.` and `174.157.101` are the /16 and
//! /24 they start).

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};

use crate::addr::{parse_net, Parsed};

/// Parses `text` as Apache's `deny from` reads it. The message names what is wrong, so a
/// `456.456.456.` says that 456 is no octet.
pub fn parse_partial(text: &str) -> Result<Parsed, String> {
    if text.contains(':') {
        return parse_net(text).map_err(|err| err.to_string());
    }
    if let Some((addr, mask)) = text.split_once('/') {
        if mask.contains('.') {
            return netmask(text, addr, mask);
        }
        return parse_net(text).map_err(|err| err.to_string());
    }
    if !text.bytes().all(|b| b.is_ascii_digit() || b == b'.') || text.is_empty() {
        return Err(format!(
            "{text:?} is not an address: host names cannot be matched on packets"
        ));
    }
    let trailing_dot = text.ends_with('.');
    let body = text.strip_suffix('.').unwrap_or(text);
    let groups: Vec<&str> = body.split('.').collect();
    if groups.len() > 4 || (groups.len() == 4 && trailing_dot) {
        return Err(format!("{text:?} has more than four octets"));
    }
    let mut octets = [0u8; 4];
    for (slot, group) in octets.iter_mut().zip(&groups) {
        *slot = octet(group).map_err(|why| format!("{text:?} is not an address: {why}"))?;
    }
    let len = u8::try_from(groups.len() * 8).expect("at most 32");
    let net = Ipv4Net::new(Ipv4Addr::from(octets), len).expect("a multiple of 8 up to 32");
    Ok(Parsed {
        net: IpNet::V4(net),
        normalized_from: None,
    })
}

fn octet(group: &str) -> Result<u8, String> {
    if group.is_empty() {
        return Err("an octet is empty".to_string());
    }
    if group.len() > 1 && group.starts_with('0') {
        return Err(format!("{group} has a leading zero (octal or decimal?)"));
    }
    group
        .parse::<u8>()
        .map_err(|_| format!("{group} is no octet (0 to 255)"))
}

fn netmask(text: &str, addr: &str, mask: &str) -> Result<Parsed, String> {
    let mask: Ipv4Addr = mask
        .parse()
        .map_err(|_| format!("{text:?}: the netmask is not an address"))?;
    let bits = u32::from(mask);
    let len = bits.leading_ones();
    if bits.checked_shl(len).unwrap_or(0) != 0 {
        return Err(format!("{text:?}: the netmask has holes"));
    }
    parse_net(&format!("{addr}/{len}")).map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> String {
        parse_partial(text).expect("parses").net.to_string()
    }

    #[test]
    fn partial_octets_are_the_prefixes_they_start() {
        assert_eq!(net("123.123."), "123.123.0.0/16");
        assert_eq!(net("45.56.78."), "45.56.78.0/24");
        assert_eq!(net("174.157.101"), "174.157.101.0/24");
        assert_eq!(net("10."), "10.0.0.0/8");
        assert_eq!(net("75.126.85.215"), "75.126.85.215/32");
        assert_eq!(net("10.1.0.0/255.255.0.0"), "10.1.0.0/16");
        assert_eq!(net("2001:db8::/32"), "2001:db8::/32");
    }

    #[test]
    fn what_is_no_address_says_why() {
        for (text, why) in [
            ("456.456.456.", "456 is no octet"),
            ("789.789.789.789", "789 is no octet"),
            ("1.2.3.4.", "more than four octets"),
            ("1..3", "an octet is empty"),
            ("010.1.", "leading zero"),
            (".example.com", "host names"),
            ("10.0.0.0/255.0.255.0", "holes"),
        ] {
            let err = parse_partial(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}

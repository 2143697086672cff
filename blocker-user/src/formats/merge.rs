//! What an import merged: prefixes of a list that a wider prefix of the same list covers.

use std::collections::BTreeSet;

use ipnet::IpNet;

/// How many of `nets` (sorted, no duplicates) lie inside a wider prefix that is also in
/// `nets`. Only the prefix lengths the set holds are tried, so a list of host addresses costs
/// one pass.
pub fn covered_by_wider(nets: &[IpNet]) -> usize {
    let lengths = |v4: bool| -> BTreeSet<u8> {
        nets.iter()
            .filter(|net| matches!(net, IpNet::V4(_)) == v4)
            .map(IpNet::prefix_len)
            .collect()
    };
    let (v4, v6) = (lengths(true), lengths(false));
    nets.iter()
        .filter(|net| {
            let lengths = if matches!(net, IpNet::V4(_)) {
                &v4
            } else {
                &v6
            };
            lengths.range(..net.prefix_len()).any(|&len| {
                IpNet::new(net.addr(), len)
                    .is_ok_and(|wider| nets.binary_search(&wider.trunc()).is_ok())
            })
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_prefixes_inside_wider_ones() {
        let mut nets: Vec<IpNet> = [
            "10.0.0.0/8",
            "10.1.2.3/32",
            "10.1.0.0/16",
            "11.0.0.1/32",
            "2001:db8::/32",
            "2001:db8::1/128",
            "2001:db9::1/128",
        ]
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
        nets.sort();
        assert_eq!(covered_by_wider(&nets), 3);
    }
}

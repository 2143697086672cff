//! Why the program decided what it did, and what that decision was.

/// What happens to a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Pass,
    Drop,
    /// Sent back out of the interface (a reject answer).
    Tx,
}

impl Action {
    pub const fn name(self) -> &'static str {
        match self {
            Action::Pass => "pass",
            Action::Drop => "drop",
            Action::Tx => "tx",
        }
    }
}

/// The reason behind every verdict; each exit path of the program counts under exactly one.
/// The discriminant is the index into the counters map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A parsed IP packet that matched nothing.
    NoMatch = 0,
    /// The source is on the allowlist.
    Allowlisted = 1,
    /// The source is covered by an unexpired manual ban.
    ManualBan = 2,
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    NotIp = 3,
    /// A truncated frame or an invalid IP or L4 header.
    Malformed = 4,
    /// An IPv6 extension-header chain longer than [`crate::MAX_IPV6_EXT_HEADERS`], of a
    /// protocol no rule covers. The source is still checked against the allowlist and bans
    /// first.
    Unparsed = 5,
    /// An event of a rate or burst rule that stayed below the threshold.
    RuleEvent = 6,
    /// The source is on the dynamic blacklist.
    Blacklisted = 7,
    /// This packet's event put the source on the dynamic blacklist.
    RuleTriggered = 8,
    /// Answered from XDP with a TCP RST or ICMP port unreachable instead of being dropped.
    Rejected = 9,
    /// A first fragment too short to hold the transport header, or an IPv6 extension-header
    /// chain longer than the parser walks, of a protocol some rule covers: dropped, since the
    /// stack would reassemble it into a packet the rule never saw (RFC 1858, RFC 7112). Also
    /// a frame behind more than [`crate::MAX_VLAN_TAGS`] VLAN tags, whose source is unknown
    /// (the packet is not parsed, so it is never sampled).
    Evasive = 10,
}

impl Reason {
    /// Number of counter slots.
    pub const COUNT: u32 = 11;

    /// All reasons, by index.
    pub const ALL: [Reason; Self::COUNT as usize] = [
        Reason::NoMatch,
        Reason::Allowlisted,
        Reason::ManualBan,
        Reason::NotIp,
        Reason::Malformed,
        Reason::Unparsed,
        Reason::RuleEvent,
        Reason::Blacklisted,
        Reason::RuleTriggered,
        Reason::Rejected,
        Reason::Evasive,
    ];

    pub const fn action(self) -> Action {
        match self {
            Reason::ManualBan | Reason::Blacklisted | Reason::RuleTriggered | Reason::Evasive => {
                Action::Drop
            }
            Reason::Rejected => Action::Tx,
            Reason::NoMatch
            | Reason::Allowlisted
            | Reason::NotIp
            | Reason::Malformed
            | Reason::Unparsed
            | Reason::RuleEvent => Action::Pass,
        }
    }

    /// The label used in `blocker status` and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::NoMatch => "no_match",
            Reason::Allowlisted => "allowlisted",
            Reason::ManualBan => "manual_ban",
            Reason::NotIp => "not_ip",
            Reason::Malformed => "malformed",
            Reason::Unparsed => "unparsed",
            Reason::RuleEvent => "rule_event",
            Reason::Blacklisted => "blacklisted",
            Reason::RuleTriggered => "rule_triggered",
            Reason::Rejected => "rejected",
            Reason::Evasive => "evasive",
        }
    }
}

/// One counter slot: packets and bytes (the whole frame, as the driver saw it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_indexed_by_discriminant() {
        for (index, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index, "{}", reason.name());
        }
    }

    #[test]
    fn only_bans_blacklists_and_evasive_packets_drop() {
        for reason in Reason::ALL {
            let drops = matches!(
                reason,
                Reason::ManualBan | Reason::Blacklisted | Reason::RuleTriggered | Reason::Evasive
            );
            assert_eq!(reason.action() == Action::Drop, drops, "{}", reason.name());
        }
    }
}

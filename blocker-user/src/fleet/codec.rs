//! What travels through the bucket: one key per prefix and list (`ban.10-0-0-0.24`,
//! `allow.fd00_b10c__.64`), holding the last change made to it as JSON. Everything received is
//! checked here before anything acts on it: size, shape, a normalized prefix that matches the
//! key, an action for the key's list, a known source, a sane node name and expiry.

use std::net::IpAddr;

use ipnet::IpNet;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{
    blacklist,
    config::{valid_node, SOURCES},
};
use crate::text::MAX_REASON_BYTES;

/// Largest message accepted (and the bucket's value limit): a change is a few hundred bytes.
pub const MAX_MESSAGE_BYTES: usize = 2048;

/// Longest reason carried: it gets `fleet NODE: ` in front here and must still fit a reason.
pub const MAX_SHARED_REASON_BYTES: usize = MAX_REASON_BYTES - super::config::MAX_NODE_BYTES - 8;

/// The source of a removal that takes back a change its node published and then undid (a
/// map refused it): a node applies it only to an entry it received from that node, never to
/// its own or another node's ([`super::publisher`]).
pub const UNDO_SOURCE: &str = "undo";

/// Which list a key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum List {
    Bans,
    Allow,
}

impl List {
    fn word(self) -> &'static str {
        match self {
            List::Bans => "ban",
            List::Allow => "allow",
        }
    }
}

/// What happened to the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Ban,
    Unban,
    Allow,
    Disallow,
}

impl Action {
    pub fn list(self) -> List {
        match self {
            Action::Ban | Action::Unban => List::Bans,
            Action::Allow | Action::Disallow => List::Allow,
        }
    }

    /// Whether the prefix is on its list after this change.
    pub fn adds(self) -> bool {
        matches!(self, Action::Ban | Action::Allow)
    }
}

/// One change, as published. Times are Unix seconds (UTC), like the state database's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub action: Action,
    /// When a temporary ban ends (absolute, so a late node does not extend it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The local source on the publishing node (`cli`, `offense`...).
    pub source: String,
    /// The publishing node.
    pub node: String,
    /// When the publishing node committed the change.
    pub at: i64,
}

/// A received change that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub net: IpNet,
    pub message: Message,
}

impl Change {
    pub fn at(&self) -> Timestamp {
        Timestamp::from_second(self.message.at).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    pub fn expires_at(&self) -> Option<Timestamp> {
        self.message
            .expires_at
            .and_then(|seconds| Timestamp::from_second(seconds).ok())
    }
}

/// The bucket key of `net` on `list`.
pub fn key(list: List, net: &IpNet) -> String {
    let addr = match net.addr() {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "_"),
    };
    format!("{}.{addr}.{}", list.word(), net.prefix_len())
}

/// The list and prefix a key names; `None` unless it is exactly what [`key`] writes.
pub fn parse_key(key: &str) -> Option<(List, IpNet)> {
    let mut parts = key.split('.');
    let list = match parts.next()? {
        "ban" => List::Bans,
        "allow" => List::Allow,
        _ => return None,
    };
    let (addr, len) = (parts.next()?, parts.next()?);
    if parts.next().is_some() || addr.contains(['.', ':']) {
        return None;
    }
    let addr: IpAddr = if addr.contains('_') {
        addr.replace('_', ":").parse().ok()?
    } else {
        addr.replace('-', ".").parse().ok()?
    };
    let net = IpNet::new(addr, len.parse().ok()?).ok()?;
    (self::key(list, &net) == key && net.trunc() == net).then_some((list, net))
}

/// Why a received message was skipped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Malformed {
    #[error("{bytes} bytes, more than the {MAX_MESSAGE_BYTES} allowed")]
    Oversized { bytes: usize },
    #[error("the key {0:?} names no prefix")]
    Key(String),
    #[error("not a change: {0}")]
    Json(String),
    #[error("{0}")]
    Invalid(&'static str),
}

/// Checks and decodes the value received under `key`.
pub fn decode(key: &str, value: &[u8]) -> Result<Change, Malformed> {
    if value.len() > MAX_MESSAGE_BYTES {
        return Err(Malformed::Oversized { bytes: value.len() });
    }
    let (list, net) =
        parse_key(key).ok_or_else(|| Malformed::Key(key.escape_default().to_string()))?;
    let message: Message =
        serde_json::from_slice(value).map_err(|err| Malformed::Json(err.to_string()))?;
    if message.action.list() != list {
        return Err(Malformed::Invalid("the action does not fit the key's list"));
    }
    if message.source == UNDO_SOURCE {
        if message.action.adds() {
            return Err(Malformed::Invalid("an undo only removes"));
        }
    } else if !SOURCES.contains(&message.source.as_str()) {
        return Err(Malformed::Invalid("unknown source"));
    }
    if !valid_node(&message.node) {
        return Err(Malformed::Invalid("bad node name"));
    }
    if message
        .reason
        .as_ref()
        .is_some_and(|reason| reason.len() > MAX_SHARED_REASON_BYTES)
    {
        return Err(Malformed::Invalid("reason too long"));
    }
    if Timestamp::from_second(message.at).is_err() {
        return Err(Malformed::Invalid("time out of range"));
    }
    match (message.action, message.expires_at) {
        (Action::Ban, Some(expiry)) if Timestamp::from_second(expiry).is_err() || expiry <= 0 => {
            Err(Malformed::Invalid("expiry out of range"))
        }
        // A rule's blacklisting is shared as a temporary ban and nothing else, no longer
        // than a rule blacklists for.
        (action, expiry)
            if message.source == blacklist::SOURCE
                && (action != Action::Ban
                    || expiry.is_none_or(|end| {
                        end.saturating_sub(message.at) > blacklist::LONGEST_SECONDS
                    })) =>
        {
            Err(Malformed::Invalid(
                "a rule's blacklisting is a temporary ban no longer than a rule's",
            ))
        }
        (Action::Ban, _) | (_, None) => Ok(Change { net, message }),
        (_, Some(_)) => Err(Malformed::Invalid("only a ban has an expiry")),
    }
}

/// `reason` cut to what a message carries, at a character boundary.
pub fn shared_reason(reason: &str) -> String {
    let mut end = reason.len().min(MAX_SHARED_REASON_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(action: Action) -> Message {
        Message {
            action,
            expires_at: None,
            reason: Some("ssh brute force".into()),
            source: "cli".into(),
            node: "web-1".into(),
            at: 1_800_000_000,
        }
    }

    #[test]
    fn keys_round_trip_and_only_normalized_keys_parse() {
        for (list, text) in [
            (List::Bans, "10.0.0.0/24"),
            (List::Bans, "192.0.2.7/32"),
            (List::Allow, "fd00:b10c::/64"),
            (List::Bans, "::/0"),
            (List::Bans, "2001:db8::1/128"),
        ] {
            let net: IpNet = text.parse().unwrap();
            let key = key(list, &net);
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
                "{key}"
            );
            assert_eq!(parse_key(&key), Some((list, net)), "{key}");
        }
        assert_eq!(
            key(List::Bans, &"10.0.0.0/24".parse().unwrap()),
            "ban.10-0-0-0.24"
        );
        for bad in [
            "ban.10-0-0-1.24",
            "ban.10-0-0-0.33",
            "ban.10-0-0-0.024",
            "deny.10-0-0-0.24",
            "ban.10-0-0-0",
            "ban.10-0-0-0.24.x",
            "ban.fd00_0__.64",
            "ban..24",
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_published_change_decodes_to_itself() {
        let mut ban = message(Action::Ban);
        ban.expires_at = Some(1_800_000_600);
        let value = serde_json::to_vec(&ban).unwrap();
        let change = decode("ban.10-1-2-3.32", &value).unwrap();
        assert_eq!(change.net, "10.1.2.3/32".parse::<IpNet>().unwrap());
        assert_eq!(change.message, ban);
        assert_eq!(change.expires_at().unwrap().as_second(), 1_800_000_600);
    }

    #[test]
    fn malformed_messages_are_refused_with_a_reason() {
        let ok = serde_json::to_vec(&message(Action::Unban)).unwrap();
        assert!(decode("ban.10-1-2-3.32", &ok).is_ok());
        let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert_eq!(
            decode("ban.10-1-2-3.32", &big),
            Err(Malformed::Oversized {
                bytes: MAX_MESSAGE_BYTES + 1
            })
        );
        assert!(matches!(decode("ban.x", &ok), Err(Malformed::Key(_))));
        assert!(matches!(
            decode("ban.10-1-2-3.32", b"{"),
            Err(Malformed::Json(_))
        ));
        assert!(matches!(
            decode(
                "ban.10-1-2-3.32",
                br#"{"action":"ban","source":"cli","node":"a","at":1,"extra":1}"#
            ),
            Err(Malformed::Json(_))
        ));
        let with = |edit: fn(&mut Message)| {
            let mut m = message(Action::Ban);
            edit(&mut m);
            decode("ban.10-1-2-3.32", &serde_json::to_vec(&m).unwrap())
        };
        assert!(with(|m| m.action = Action::Allow).is_err());
        assert!(with(|m| m.source = "fleet".into()).is_err());
        assert!(with(|m| m.node = "a\u{1b}[2J".into()).is_err());
        assert!(with(|m| m.reason = Some("x".repeat(MAX_REASON_BYTES))).is_err());
        assert!(with(|m| m.expires_at = Some(i64::MAX)).is_err());
        assert!(with(|m| m.at = i64::MIN).is_err());
        assert!(
            with(|m| m.source = "rule".into()).is_err(),
            "a rule's ban ends"
        );
        let rule_ban = |lasts: i64| {
            let mut m = message(Action::Ban);
            m.source = "rule".into();
            m.expires_at = Some(m.at + lasts);
            decode("ban.10-1-2-3.32", &serde_json::to_vec(&m).unwrap())
        };
        assert!(rule_ban(120).is_ok());
        assert!(rule_ban(blacklist::LONGEST_SECONDS).is_ok());
        assert!(
            rule_ban(blacklist::LONGEST_SECONDS + 1).is_err(),
            "longer than any rule blacklists"
        );
        let mut unban = message(Action::Unban);
        unban.expires_at = Some(1_800_000_600);
        assert!(decode("ban.10-1-2-3.32", &serde_json::to_vec(&unban).unwrap()).is_err());
        unban.expires_at = None;
        unban.source = UNDO_SOURCE.into();
        assert!(decode("ban.10-1-2-3.32", &serde_json::to_vec(&unban).unwrap()).is_ok());
        assert!(
            with(|m| m.source = UNDO_SOURCE.into()).is_err(),
            "an undo never adds"
        );
    }

    #[test]
    fn shared_reasons_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_REASON_BYTES);
        let cut = shared_reason(&long);
        assert!(cut.len() <= MAX_SHARED_REASON_BYTES && long.starts_with(&cut));
        assert_eq!(shared_reason("short"), "short");
    }
}

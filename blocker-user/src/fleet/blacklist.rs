//! Sharing the rate rules' blacklistings. The kernel reports a source once, when it trips a
//! rule, on the event ring the daemon's event thread reads; that thread hands the report over
//! here ([`Blacklistings::offer`]), and it is published as a temporary ban with source `rule`
//! that ends when the entry ends here. A refreshed entry is not reported again, so it is
//! published once. Reports wait in a bounded queue while NATS is away; one that ended before
//! it could go out is dropped, and so are reports beyond the queue (they are short-lived).

use async_nats::jetstream::kv;
use ipnet::IpNet;
use jiff::Timestamp;
use tokio::sync::mpsc;
use tracing::warn;

use super::{
    codec::{key, shared_reason, Action, List, Message},
    link::SharedLink,
    publisher::put_all,
};
use blocker_common::MAX_RULE_MS;

use crate::events::EventRecord;

/// The local source name of a rule's blacklisting, in `share`, `accept` and messages.
pub const SOURCE: &str = "rule";

/// The longest a rule blacklists for, in whole seconds rounded up ([`MAX_RULE_MS`]): a
/// shared blacklisting lasting longer is refused.
pub const LONGEST_SECONDS: i64 = MAX_RULE_MS.div_ceil(1000) as i64;

/// Reports waiting to be published, at most.
const QUEUE: usize = 4096;

/// The event thread's end of the queue.
#[derive(Clone)]
pub struct Blacklistings(mpsc::Sender<EventRecord>);

/// The fleet's end of the queue.
pub struct Queued(mpsc::Receiver<EventRecord>);

/// A new queue.
pub fn queue() -> (Blacklistings, Queued) {
    let (sender, receiver) = mpsc::channel(QUEUE);
    (Blacklistings(sender), Queued(receiver))
}

impl Blacklistings {
    /// Queues `event` if it reports a new blacklisting; never waits.
    pub fn offer(&self, event: &EventRecord) {
        if event.event != "blacklisted" {
            return;
        }
        if self.0.try_send(event.clone()).is_err() {
            warn!(
                "fleet: the queue of blacklistings to share is full: {} stays local",
                event.addr
            );
        }
    }
}

/// The message sharing `event` (a blacklisting in force at `now`) from `node`; `None` for
/// anything else.
fn message(event: &EventRecord, node: &str, now: Timestamp) -> Option<(String, Message)> {
    if event.event != "blacklisted" {
        return None;
    }
    let net = event.addr.parse::<IpNet>().ok()?.trunc();
    let expires_at = event.expires_at.filter(|at| *at > now)?;
    // Whole seconds, rounded up: the entry must not end earlier elsewhere than here.
    let expiry = expires_at.as_second() + i64::from(expires_at.subsec_nanosecond() > 0);
    let reason = format!(
        "rule {}: {} hits",
        event.rule.as_deref().unwrap_or("?"),
        event.hits.unwrap_or(0)
    );
    Some((
        key(List::Bans, &net),
        Message {
            action: Action::Ban,
            expires_at: Some(expiry),
            reason: Some(shared_reason(&reason)),
            source: SOURCE.into(),
            node: node.to_string(),
            at: now.as_second(),
        },
    ))
}

/// Publishes what `queued` delivers to `bucket` until the task is dropped; a failed batch
/// goes again after a pause, without the entries that ended meanwhile.
pub async fn publish(mut queued: Queued, node: String, bucket: kv::Store, link: SharedLink) {
    let mut events = Vec::new();
    while queued.0.recv_many(&mut events, QUEUE).await > 0 {
        loop {
            let now = Timestamp::now();
            let changes: Vec<(String, Message)> = events
                .iter()
                .filter_map(|event| message(event, &node, now))
                .collect();
            let (sent, failed) = put_all(&bucket, changes).await;
            link.count_published(sent);
            match failed {
                None => break,
                Some(err) => {
                    warn!("fleet: sharing blacklistings: {err:#}; trying again in a second");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
        events.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blacklisted(addr: &str, expires_at: Option<Timestamp>) -> EventRecord {
        EventRecord {
            event: "blacklisted",
            addr: addr.into(),
            rule: Some("ssh".into()),
            hits: Some(4),
            expires_at,
            at: Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_blacklisting_is_shared_as_a_ban_ending_with_it() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let ends = now + jiff::SignedDuration::from_millis(600_250);
        let (key, message) =
            message(&blacklisted("10.1.1.2/32", Some(ends)), "web-1", now).expect("a message");
        assert_eq!(key, "ban.10-1-1-2.32");
        assert_eq!(message.action, Action::Ban);
        assert_eq!(message.source, "rule");
        assert_eq!(message.expires_at, Some(1_800_000_601), "rounded up");
        assert_eq!(message.reason.as_deref(), Some("rule ssh: 4 hits"));
        assert_eq!(
            (message.node.as_str(), message.at),
            ("web-1", 1_800_000_000)
        );
        let decoded = super::super::codec::decode(&key, &serde_json::to_vec(&message).unwrap());
        assert_eq!(decoded.map(|change| change.message), Ok(message));
    }

    #[test]
    fn only_new_blacklistings_in_force_are_shared() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let later = Some(now + jiff::SignedDuration::from_secs(60));
        assert!(message(&blacklisted("10.1.1.2/32", Some(now)), "a", now).is_none());
        assert!(message(&blacklisted("10.1.1.2/32", None), "a", now).is_none());
        assert!(message(&blacklisted("not an address", later), "a", now).is_none());
        let mut expired = blacklisted("10.1.1.2/32", later);
        expired.event = "expired";
        assert!(message(&expired, "a", now).is_none());
    }
}

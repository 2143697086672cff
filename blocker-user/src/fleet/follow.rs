//! Following the bucket: its watch gives the current value of every key, then each change as
//! it comes. Entries are checked as they arrive and gathered while the batch before them is
//! being applied, so a lone change is applied at once and a burst or a catch-up in a few
//! large batches (which the applier writes in bulk). Changes the store failed to apply (not
//! those it refused) are tried again, before anything received after them.

use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::StreamExt as _;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{
    applier::{Applied, Inbox},
    codec::{self, Change},
    link::SharedLink,
};

/// Received changes gathered at most while a batch is being applied.
const APPLY_BATCH: usize = 32_768;

/// How long changes the store failed to apply wait before they are tried again (at once
/// with the next batch, which they go before).
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// The newest entry of a batch: its sequence number, the entries known to follow it, and
/// when it was published (Unix nanoseconds).
#[derive(Clone, Copy)]
struct Newest {
    sequence: u64,
    pending: u64,
    published_ns: i128,
}

/// Entries gathered for the next batch.
#[derive(Default)]
struct Batch {
    changes: Vec<Change>,
    newest: Option<Newest>,
}

/// What the watch loop waits for.
enum Event {
    Entry(Option<Result<kv::Entry, kv::WatcherError>>),
    Applied(Result<(Applied, Option<Newest>), tokio::task::JoinError>),
    Reconnected,
    Retry,
}

/// What is accepted from the bucket, and what was seen of it.
struct Follower<'a> {
    accept: &'a [String],
    node: &'a str,
    link: &'a SharedLink,
    last_sequence: u64,
    caught_up: bool,
}

impl Follower<'_> {
    /// Adds `entry` to `batch` if it is a change to apply here; counts it as skipped otherwise.
    fn take(&mut self, entry: kv::Entry, batch: &mut Batch) {
        if entry.revision <= self.last_sequence {
            return;
        }
        self.last_sequence = entry.revision;
        batch.newest = Some(Newest {
            sequence: entry.revision,
            pending: entry.delta,
            published_ns: entry.created.unix_timestamp_nanos(),
        });
        if entry.seen_current && !self.caught_up {
            self.caught_up = true;
            info!(
                "fleet: caught up with the bucket at sequence {}",
                entry.revision
            );
        }
        if entry.operation != kv::Operation::Put {
            self.link.count_skipped(1);
            return;
        }
        match codec::decode(&entry.key, &entry.value) {
            Ok(change) if change.message.node == self.node => {}
            // An undo lifts only what this node took from that node, whatever its source.
            Ok(change)
                if change.message.source != codec::UNDO_SOURCE
                    && !self.accept.contains(&change.message.source) =>
            {
                self.link.count_skipped(1);
            }
            Ok(change) => batch.changes.push(change),
            Err(err) => {
                warn!(
                    "fleet: skipped a malformed change under {}: {err}",
                    crate::text::escape(&entry.key)
                );
                self.link.count_skipped(1);
            }
        }
    }

    /// Counts what a batch did, and how far the link got; returns the changes to try again.
    fn applied(
        &self,
        done: Result<(Applied, Option<Newest>), tokio::task::JoinError>,
    ) -> Vec<Change> {
        let (applied, newest) = match done {
            Ok(done) => done,
            Err(err) => {
                warn!("fleet: applying changes: {err}");
                return Vec::new();
            }
        };
        self.link.count_applied(applied.applied);
        self.link.count_skipped(applied.skipped);
        if let Some(newest) = newest {
            let now_ns = jiff::Timestamp::now().as_nanosecond();
            let lag_ms = (now_ns - newest.published_ns) / 1_000_000;
            self.link.reached(
                newest.sequence,
                newest.pending,
                i64::try_from(lag_ms).unwrap_or(i64::MAX),
            );
        }
        applied.failed
    }
}

/// Changes the store failed to apply, kept to go before the next batch.
struct Retry {
    changes: Vec<Change>,
    at: tokio::time::Instant,
}

impl Retry {
    fn keep(&mut self, failed: Vec<Change>) {
        if !failed.is_empty() {
            self.at = tokio::time::Instant::now() + RETRY_AFTER;
        }
        self.changes.extend(failed);
        // Bounded through a long outage of the store: the oldest go first (the bucket's
        // current values are read again at the next restart).
        let excess = self.changes.len().saturating_sub(APPLY_BATCH);
        if excess > 0 {
            warn!("fleet: {excess} changes the store kept failing to apply are dropped");
            self.changes.drain(..excess);
        }
    }

    /// `batch`, with the changes to try again in front of it (they are older).
    fn before(&mut self, mut batch: Batch) -> Batch {
        if !self.changes.is_empty() {
            let mut changes = std::mem::take(&mut self.changes);
            changes.append(&mut batch.changes);
            batch.changes = changes;
        }
        batch
    }
}

/// Applies `batch` on a blocking thread.
fn start(inbox: &Inbox, batch: Batch) -> JoinHandle<(Applied, Option<Newest>)> {
    let inbox = inbox.clone();
    tokio::task::spawn_blocking(move || (inbox.apply(&batch.changes), batch.newest))
}

/// Waits for the batch being applied; never ends when there is none.
async fn finished(
    applying: &mut Option<JoinHandle<(Applied, Option<Newest>)>>,
) -> Result<(Applied, Option<Newest>), tokio::task::JoinError> {
    match applying {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

/// Applies what the watch delivers, watching again after an error or a reconnection (the
/// server that held the watch may be gone); an entry already taken (by its sequence number)
/// is not taken twice.
pub async fn follow(
    bucket: &kv::Store,
    inbox: &Inbox,
    accept: &[String],
    node: &str,
    link: &SharedLink,
    connections: &tokio::sync::watch::Sender<u64>,
) {
    let mut follower = Follower {
        accept,
        node,
        link,
        last_sequence: 0,
        caught_up: false,
    };
    let mut reconnected = connections.subscribe();
    let mut batch = Batch::default();
    let mut applying = None;
    let mut retry = Retry {
        changes: Vec::new(),
        at: tokio::time::Instant::now(),
    };
    loop {
        reconnected.borrow_and_update();
        // The current value of every key first, then the changes.
        let mut watch = match bucket.watch_with_history(">").await {
            Ok(watch) => watch,
            Err(err) => {
                warn!("fleet: watching the bucket: {err}; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let room = batch.changes.len() < APPLY_BATCH;
            let event = tokio::select! {
                entry = watch.next(), if room => Event::Entry(entry),
                done = finished(&mut applying) => Event::Applied(done),
                _ = reconnected.changed() => Event::Reconnected,
                _ = tokio::time::sleep_until(retry.at),
                    if applying.is_none() && !retry.changes.is_empty() => Event::Retry,
            };
            match event {
                Event::Entry(Some(Ok(entry))) => follower.take(entry, &mut batch),
                Event::Entry(Some(Err(err))) => {
                    warn!("fleet: the watch failed: {err}; watching again");
                    break;
                }
                Event::Entry(None) => break,
                Event::Applied(done) => {
                    applying = None;
                    retry.keep(follower.applied(done));
                }
                Event::Reconnected => {
                    info!("fleet: watching the bucket again after reconnecting");
                    break;
                }
                Event::Retry => {
                    applying = Some(start(inbox, retry.before(Batch::default())));
                }
            }
            if applying.is_none() && batch.newest.is_some() {
                applying = Some(start(inbox, retry.before(std::mem::take(&mut batch))));
            }
        }
        // What was taken is applied (or kept to try again) before watching again, which
        // skips it by its sequence.
        if let Some(handle) = applying.take() {
            retry.keep(follower.applied(handle.await));
        }
        if batch.newest.is_some() {
            let last = start(inbox, retry.before(std::mem::take(&mut batch)));
            retry.keep(follower.applied(last.await));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::codec::{Action, Message};

    fn change(host: u8) -> Change {
        Change {
            net: format!("192.0.2.{host}/32").parse().unwrap(),
            message: Message {
                action: Action::Ban,
                expires_at: None,
                reason: None,
                source: "cli".into(),
                node: "web-2".into(),
                at: 1_800_000_000,
            },
        }
    }

    #[tokio::test]
    async fn failed_changes_go_again_before_what_was_received_after_them() {
        let mut retry = Retry {
            changes: Vec::new(),
            at: tokio::time::Instant::now(),
        };
        retry.keep(Vec::new());
        assert!(retry.changes.is_empty());
        let before = tokio::time::Instant::now();
        retry.keep(vec![change(1), change(2)]);
        assert!(retry.at >= before + RETRY_AFTER, "not at once");
        let received = Batch {
            changes: vec![change(3)],
            newest: None,
        };
        let batch = retry.before(received);
        let order: Vec<String> = batch.changes.iter().map(|c| c.net.to_string()).collect();
        assert_eq!(order, ["192.0.2.1/32", "192.0.2.2/32", "192.0.2.3/32"]);
        assert!(retry.changes.is_empty(), "taken into the batch");
    }
}

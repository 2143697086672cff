//! The state of this node's fleet link, shared between the fleet tasks (which update it) and
//! the API (`GET /v1/fleet`, read by `blocker status`) and `/metrics`.

use std::sync::{
    atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    Arc,
};

use serde::{Deserialize, Serialize};

use crate::text::escape;

/// Counters and gauges, updated without locks.
#[derive(Debug, Default)]
pub struct Link {
    connected: AtomicBool,
    published: AtomicU64,
    applied: AtomicU64,
    skipped: AtomicU64,
    last_sequence: AtomicU64,
    pending: AtomicU64,
    /// Milliseconds between a change's publication and its application here, for the last one.
    lag_ms: AtomicI64,
}

/// What `blocker status` and `/metrics` show of the link.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub node: String,
    pub servers: Vec<String>,
    pub connected: bool,
    /// Changes this node published.
    pub published: u64,
    /// Received changes that changed this node's state.
    pub applied: u64,
    /// Received changes skipped: malformed, allowlisted here, refused by the lock-out guard,
    /// already in force or from a source not accepted.
    pub skipped: u64,
    /// The bucket's sequence number of the last change applied.
    pub last_sequence: u64,
    /// Changes known to be waiting after it.
    pub pending: u64,
    /// Seconds from publication to application of the last change applied.
    pub lag_seconds: f64,
}

/// A handle on the link, cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct SharedLink {
    link: Arc<Link>,
    node: String,
    servers: Vec<String>,
}

impl SharedLink {
    pub fn new(node: String, servers: Vec<String>) -> Self {
        Self {
            link: Arc::default(),
            node,
            servers,
        }
    }

    pub fn set_connected(&self, connected: bool) {
        self.link.connected.store(connected, Ordering::Relaxed);
    }

    pub fn count_published(&self, count: u64) {
        self.link.published.fetch_add(count, Ordering::Relaxed);
    }

    pub fn count_applied(&self, count: u64) {
        self.link.applied.fetch_add(count, Ordering::Relaxed);
    }

    pub fn count_skipped(&self, count: u64) {
        self.link.skipped.fetch_add(count, Ordering::Relaxed);
    }

    /// Records the position reached in the bucket and how late the last change arrived.
    pub fn reached(&self, sequence: u64, pending: u64, lag_ms: i64) {
        let link = &self.link;
        link.last_sequence.store(sequence, Ordering::Relaxed);
        link.pending.store(pending, Ordering::Relaxed);
        link.lag_ms.store(lag_ms.max(0), Ordering::Relaxed);
    }

    pub fn status(&self) -> LinkStatus {
        let link = &self.link;
        LinkStatus {
            node: self.node.clone(),
            servers: self.servers.clone(),
            connected: link.connected.load(Ordering::Relaxed),
            published: link.published.load(Ordering::Relaxed),
            applied: link.applied.load(Ordering::Relaxed),
            skipped: link.skipped.load(Ordering::Relaxed),
            last_sequence: link.last_sequence.load(Ordering::Relaxed),
            pending: link.pending.load(Ordering::Relaxed),
            lag_seconds: link.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        }
    }
}

impl LinkStatus {
    /// The lines `blocker status` prints.
    pub fn write_table(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let state = if self.connected {
            "connected"
        } else {
            "disconnected (local bans keep working; reconnecting)"
        };
        writeln!(out, "\nfleet: node {} {state}", escape(&self.node))?;
        writeln!(out, "  servers        {}", escape(&self.servers.join(", ")))?;
        writeln!(
            out,
            "  published      {}\n  applied        {}\n  skipped        {}",
            self.published, self.applied, self.skipped
        )?;
        writeln!(
            out,
            "  last sequence  {} ({} pending, lag {:.3}s)",
            self.last_sequence, self.pending, self.lag_seconds
        )
    }
}

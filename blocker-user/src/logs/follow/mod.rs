//! Followers: files read like `tail -F` and the journal read through `journalctl`. Both are
//! polled (the daemon calls `poll` every quarter second), hand over complete lines only, and
//! say where they are so the position can be kept across restarts.

mod file;
mod journal;

use std::time::{Duration, Instant};

pub use file::{FileFollower, FileStatus};
pub use journal::{JournalFollower, JOURNAL_SOURCE};

/// Longest line handed over; longer ones are skipped with a warning.
pub const MAX_LINE: usize = 1 << 20;

/// One line, as read.
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    pub text: &'a str,
    /// The time the source gives the line (the journal's), if any.
    pub time: Option<jiff::Timestamp>,
}

/// A warning logged at most once per [`Warnings::EVERY`]; the ones held back are counted in
/// the next.
#[derive(Debug, Default)]
pub struct Warnings {
    last: Option<Instant>,
    held_back: u64,
}

impl Warnings {
    const EVERY: Duration = Duration::from_secs(10);

    pub fn warn(&mut self, message: impl FnOnce() -> String) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Self::EVERY)
        {
            self.held_back += 1;
            return;
        }
        let held_back = std::mem::take(&mut self.held_back);
        self.last = Some(now);
        if held_back > 0 {
            tracing::warn!("{} ({held_back} more warnings held back)", message());
        } else {
            tracing::warn!("{}", message());
        }
    }
}

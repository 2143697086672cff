//! Events for people and log pipelines: sources blacklisted (from the kernel's ring buffer),
//! and entries that expired or were removed (noticed by scanning the blacklist map, so the
//! packet path never pays for them).

use std::{collections::HashMap, path::PathBuf, time::SystemTime};

use aya::maps::{Map, MapData, RingBuf};
use blocker_common::{Event, SourceKey, MAP_EVENTS};
use jiff::Timestamp;
use serde::Serialize;

use crate::{
    clock::Now, dynamic, pins::PinDir, rules::RuleTable, state::State, text::escape, Error, Result,
};

/// One event as `blocker events --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    /// `blacklisted`, `expired` or `removed`.
    pub event: &'static str,
    pub addr: String,
    pub rule: Option<String>,
    pub hits: Option<u32>,
    pub expires_at: Option<Timestamp>,
    pub at: Timestamp,
}

impl std::fmt::Display for EventRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.event {
            // The seed's LOG prefix, so existing log filters keep working.
            "blacklisted" => write!(
                f,
                "adding to BLACKLIST: {} rule={} hits={} until={}",
                self.addr,
                escape(self.rule.as_deref().unwrap_or("?")),
                self.hits.unwrap_or(0),
                self.expires_at.map_or("?".into(), |t| format!("{t:.0}"))
            ),
            other => write!(f, "{other} from BLACKLIST: {}", self.addr),
        }
    }
}

/// Reads the ring buffer and watches the blacklist map of one pin directory.
pub struct Watcher {
    pins: PinDir,
    state_path: PathBuf,
    ring: RingBuf<MapData>,
    /// Entries seen at the last scan: expiry (monotonic ms) and whether it was reported expired.
    known: HashMap<SourceKey, (u64, bool)>,
    /// Delete expired entries during the scan (the daemon does; `blocker events` only reads).
    purge_expired: bool,
    /// The rules of the state file as of its modification time, to name rules in events
    /// without parsing the file for each one.
    rules: (Option<SystemTime>, Option<RuleTable>),
}

/// Readable when the kernel has submitted events.
impl std::os::fd::AsRawFd for Watcher {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.ring.as_fd().as_raw_fd()
    }
}

impl Watcher {
    pub fn open(pins: &PinDir, state_path: &std::path::Path, purge_expired: bool) -> Result<Self> {
        pins.require_loaded()?;
        let ring = RingBuf::try_from(Map::RingBuf(pins.open_map(MAP_EVENTS)?))
            .map_err(Error::map(format!("opening map {MAP_EVENTS}")))?;
        let mut watcher = Self {
            pins: pins.clone(),
            state_path: state_path.to_path_buf(),
            ring,
            known: HashMap::new(),
            purge_expired,
            rules: (None, None),
        };
        // Entries that exist already are not news.
        watcher.scan()?;
        Ok(watcher)
    }

    /// Reads the rules again if the state file changed since they were read, or when `force`
    /// (an event names a rule generation the cached rules lack: a commit in the database's
    /// write-ahead log leaves the main file's time unchanged until a checkpoint).
    fn refresh_rules(&mut self, force: bool) {
        let modified = std::fs::metadata(&self.state_path)
            .and_then(|meta| meta.modified())
            .ok();
        if force || modified.is_none() || modified != self.rules.0 {
            // The rules without the bans: cheap whatever the size of the state.
            let rules = State::read_scope(&self.state_path, &[])
                .ok()
                .flatten()
                .and_then(|state| state.rules);
            self.rules = (modified, rules);
        }
    }

    fn rule_name(&self, slot: u16, generation: u32) -> Option<String> {
        let rules = self.rules.1.as_ref()?;
        rules.name_of(slot, generation).map(str::to_string)
    }

    /// Events waiting in the ring buffer.
    pub fn drain(&mut self) -> Vec<EventRecord> {
        let now = Now::read();
        let mut raw = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() >= size_of::<Event>() {
                // SAFETY: the kernel wrote an `Event` (plain data) at the start of the item.
                raw.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Event) });
            }
        }
        if !raw.is_empty() {
            let unknown = raw
                .iter()
                .any(|event| self.rule_name(event.slot, event.generation).is_none());
            self.refresh_rules(unknown);
        }
        raw.into_iter()
            .filter_map(|event| {
                let addr = dynamic::key_net(&event.source)?.to_string();
                let duration = jiff::SignedDuration::from_millis(i64::from(event.blacklist_ms));
                Some(EventRecord {
                    event: "blacklisted",
                    addr,
                    rule: self.rule_name(event.slot, event.generation),
                    hits: Some(event.hits),
                    expires_at: now.wall.checked_add(duration).ok(),
                    at: now.wall,
                })
            })
            .collect()
    }

    /// Compares the blacklist map with the last scan: entries past their expiry, and entries
    /// gone before it (unban, flush, or evicted by the LRU under a flood). With
    /// `purge_expired`, expired entries are deleted in the same walk, which frees their LRU
    /// slots (the program already ignores them).
    pub fn scan(&mut self) -> Result<Vec<EventRecord>> {
        let now = Now::read();
        let now_ms = now.mono.as_millis() as u64;
        let current: HashMap<SourceKey, u64> = dynamic::blacklist_raw(&self.pins)?
            .into_iter()
            .map(|(key, entry)| (key, entry.expires_at_ms))
            .collect();
        let mut events = Vec::new();
        let record = |event: &'static str, key: &SourceKey| {
            dynamic::key_net(key).map(|net| EventRecord {
                event,
                addr: net.to_string(),
                rule: None,
                hits: None,
                expires_at: None,
                at: now.wall,
            })
        };
        for (key, (expires_ms, reported)) in &self.known {
            if !current.contains_key(key) && !reported {
                let kind = if *expires_ms < now_ms {
                    "expired"
                } else {
                    "removed"
                };
                events.extend(record(kind, key));
            }
        }
        let mut known = HashMap::new();
        for (key, expires_ms) in current {
            let was_reported = self.known.get(&key).is_some_and(|(_, r)| *r);
            let expired = expires_ms < now_ms;
            if expired && !was_reported {
                events.extend(record("expired", &key));
            }
            known.insert(key, (expires_ms, expired));
        }
        self.known = known;
        if self.purge_expired {
            let expired: Vec<SourceKey> = self
                .known
                .iter()
                .filter(|(_, (_, expired))| *expired)
                .map(|(key, _)| *key)
                .collect();
            dynamic::remove_keys(&self.pins, &expired)?;
        }
        Ok(events)
    }
}

/// Hands every event to `sink` until an error: blacklistings as the kernel reports them, and
/// expiries and removals from a scan of the blacklist map once a second.
pub async fn follow(
    pins: &PinDir,
    state_path: &std::path::Path,
    purge_expired: bool,
    mut sink: impl FnMut(&EventRecord),
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let watcher = Watcher::open(pins, state_path, purge_expired)?;
    // SAFETY: the AsyncFd owns the watcher, so the ring buffer's fd outlives the registration.
    let mut ring = unsafe { tokio::io::unix::AsyncFd::register(watcher) }
        .map_err(|err| anyhow::anyhow!("watching the event ring buffer: {err}"))?;
    let mut scan = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            ready = ring.readable_mut() => {
                let mut guard = ready.context("waiting for events")?;
                for event in guard.get_inner_mut().drain() {
                    sink(&event);
                }
                guard.clear_ready();
            }
            _ = scan.tick() => {
                for event in ring.get_mut().scan()? {
                    sink(&event);
                }
            }
        }
    }
}

/// `blocker events`: writes each event to `out` as a line (text, or JSON with `json`) until an
/// error. A failed write ends it with that error, so a closed pipe stops the command.
pub async fn print(
    pins: &PinDir,
    state_path: &std::path::Path,
    json: bool,
    mut out: impl std::io::Write,
) -> anyhow::Result<()> {
    let failed = std::cell::Cell::new(None);
    let stop = tokio::sync::Notify::new();
    let follow = follow(pins, state_path, false, |event| {
        let line = if json {
            serde_json::to_string(event).unwrap_or_default()
        } else {
            format!("{:.0} {event}", event.at)
        };
        if let Err(err) = writeln!(out, "{line}").and_then(|()| out.flush()) {
            failed.set(Some(err));
            stop.notify_one();
        }
    });
    tokio::select! {
        result = follow => result,
        _ = stop.notified() => match failed.take() {
            Some(err) => Err(anyhow::Error::from(err).context("writing events")),
            None => Ok(()),
        },
    }
}

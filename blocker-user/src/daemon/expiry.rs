//! Expiry of temporary bans, and the health of the state file. The state file is read again
//! only when it changed and the lock is taken only when something is due, so a large state
//! costs nothing between expiries. A state file that stops parsing (a bad hand edit) is
//! reported loudly and refuses writes until fixed; the kernel keeps enforcing what it holds.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use jiff::Timestamp;
use tokio::sync::mpsc;
use tracing::{error, info};

use crate::{events::EventRecord, pins::PinDir, state::State, store::Store, Result};

/// Whether the state file reads, as last seen; writes are refused while it does not.
#[derive(Clone, Default)]
pub struct StateHealth(Arc<Mutex<Option<String>>>);

impl StateHealth {
    /// Why writes are refused, while they are.
    pub fn broken(&self) -> Option<String> {
        self.0.lock().ok().and_then(|broken| broken.clone())
    }

    fn set(&self, problem: Option<String>) {
        let Ok(mut current) = self.0.lock() else {
            return;
        };
        match (&*current, &problem) {
            (None, None) => {}
            (Some(_), None) => info!("the state file reads again: writes are accepted"),
            (old, Some(new)) if old.as_ref() != Some(new) => error!(
                "{new} (the kernel keeps enforcing what it holds; offenses and other writes \
                 are refused until the file is fixed)"
            ),
            _ => {}
        }
        *current = problem;
    }
}

/// When the next temporary ban of the state file is due.
#[derive(Default)]
struct ExpiryWatch {
    modified: Option<SystemTime>,
    next_due: Option<Timestamp>,
}

impl ExpiryWatch {
    fn poll(&mut self, pins: &PinDir, state_path: &Path) -> Result<Vec<EventRecord>> {
        let modified = std::fs::metadata(state_path)
            .and_then(|meta| meta.modified())
            .ok();
        if modified.is_none() || modified != self.modified {
            let state = State::load(state_path)?;
            self.next_due = state
                .bans
                .values()
                .filter_map(|entry| entry.expires_at)
                .min();
            self.modified = modified;
        }
        let now = Timestamp::now();
        if self.next_due.is_none_or(|due| due > now) {
            return Ok(Vec::new());
        }
        // `commit` prunes expired entries from the maps and the file.
        let store = Store::open(pins, state_path)?;
        let due: Vec<IpNet> = store
            .state
            .bans
            .iter()
            .filter(|(_, entry)| entry.is_expired(now))
            .map(|(net, _)| *net)
            .collect();
        store.commit(|| {})?;
        self.modified = None;
        Ok(due
            .into_iter()
            .map(|net| EventRecord {
                event: "expired",
                addr: net.to_string(),
                rule: None,
                hits: None,
                expires_at: None,
                at: now,
            })
            .collect())
    }
}

/// Removes expired bans from the maps and the state file once a second, reporting each, and
/// keeps `health` up to date. Never returns.
pub async fn expire_loop(
    pins: PinDir,
    state_path: PathBuf,
    health: StateHealth,
    notify: mpsc::Sender<EventRecord>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut watch = ExpiryWatch::default();
    loop {
        tick.tick().await;
        let (pins, state_path) = (pins.clone(), state_path.clone());
        let polled = tokio::task::spawn_blocking(move || {
            let expired = watch.poll(&pins, &state_path);
            // Read the file next time too while it is broken, to notice the fix.
            if expired.is_err() {
                watch.modified = None;
            }
            (watch, expired)
        })
        .await;
        let expired = match polled {
            Ok((polled, expired)) => {
                watch = polled;
                expired
            }
            Err(err) => {
                error!("expiry: {err}");
                watch = ExpiryWatch::default();
                continue;
            }
        };
        match expired {
            Ok(events) => {
                health.set(None);
                for event in events {
                    info!("{event}");
                    let _ = notify.try_send(event);
                }
            }
            Err(err @ crate::Error::State { .. }) => health.set(Some(err.to_string())),
            Err(err) => error!("expiring bans: {err}"),
        }
    }
}

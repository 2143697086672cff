//! Expiry of temporary bans, and the health of the state database. Each poll asks the expiry
//! index for the next due ban and the lock is taken only when something is due, so a large
//! state costs nothing between expiries. A database that cannot be read (damaged, replaced)
//! is reported loudly and refuses writes until fixed; the kernel keeps enforcing what it holds.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use jiff::Timestamp;
use tokio::sync::mpsc;
use tracing::{error, info};

use crate::{events::EventRecord, pins::PinDir, store::Store, Result};

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

/// Removes the bans due at this poll ([`Store::expire_due`]: one query of the expiry index a
/// poll, and a session scoped to the due prefixes when there are some, so a large state costs
/// nothing here).
fn expire_due(pins: &PinDir, state_path: &Path) -> Result<Vec<EventRecord>> {
    let now = Timestamp::now();
    Ok(Store::expire_due(pins, state_path)?
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

/// Removes expired bans from the maps and the state file once a second, reporting each, and
/// keeps `health` up to date. Never returns.
pub async fn expire_loop(
    pins: PinDir,
    state_path: PathBuf,
    health: StateHealth,
    notify: mpsc::Sender<EventRecord>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let (pins, state_path) = (pins.clone(), state_path.clone());
        let polled = tokio::task::spawn_blocking(move || expire_due(&pins, &state_path)).await;
        let expired = match polled {
            Ok(expired) => expired,
            Err(err) => {
                error!("expiry: {err}");
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

//! Applying: the bucket's watch gives the current value of every key, then each change as it
//! comes. Received changes go through the same store session as local ones (database first,
//! then the maps), with source `fleet`, the publishing node as the actor, and `fleet NODE:` in
//! front of the reason. The local allowlist wins: a ban touching an allowlisted prefix is not
//! applied, nor one the lock-out guard refuses. A removal only lifts an entry older than
//! itself, so a tombstone replayed after a restart never lifts a newer local ban.

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use tracing::{debug, info, warn};

use super::codec::{Action, Change};
use crate::{
    lockout::Guard,
    pins::PinDir,
    state::{Entry, Origin},
    store::Store,
};

/// What one batch did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub applied: u64,
    pub skipped: u64,
}

/// Where received changes are applied.
#[derive(Clone)]
pub struct Inbox {
    pub pins: PinDir,
    pub state_path: PathBuf,
    pub guard: Guard,
}

impl Inbox {
    /// Applies `changes`, in order, in one store session per run of changes from one node.
    pub fn apply(&self, changes: &[Change]) -> Applied {
        let mut total = Applied::default();
        for run in changes.chunk_by(|a, b| a.message.node == b.message.node) {
            let done = apply_run(&self.pins, &self.state_path, &self.guard, run);
            total.applied += done.applied;
            total.skipped += done.skipped;
        }
        total
    }
}

fn apply_run(pins: &PinDir, state_path: &Path, guard: &Guard, run: &[Change]) -> Applied {
    let touched: Vec<IpNet> = run.iter().map(|change| change.net).collect();
    let node = run
        .first()
        .map_or("", |change| change.message.node.as_str());
    let mut store = match Store::open_scoped(pins, state_path, &touched) {
        Ok(store) => store,
        Err(err) => {
            warn!(
                "fleet: {} changes from {node} not applied: {err}",
                run.len()
            );
            return Applied {
                applied: 0,
                skipped: run.len() as u64,
            };
        }
    };
    store.origin = Origin {
        source: "fleet",
        actor: node.to_string(),
    };
    let (mut done, mut bans) = (Applied::default(), 0);
    for change in run {
        match decide(&mut store, guard, change) {
            Ok(()) => {
                done.applied += 1;
                bans += u64::from(change.message.action == Action::Ban);
            }
            Err(why) => {
                debug!("fleet: {} from {node} skipped: {why}", change.net);
                done.skipped += 1;
            }
        }
    }
    if done.applied == 0 {
        return done;
    }
    store.count_issued("fleet", bans);
    match store.commit(|| {}) {
        Ok(()) => {
            info!("fleet: applied {} changes from {node}", done.applied);
            done
        }
        Err(err) => {
            warn!(
                "fleet: {} changes from {node} not applied: {err}",
                run.len()
            );
            Applied {
                applied: 0,
                skipped: run.len() as u64,
            }
        }
    }
}

/// Makes one change in the session, or says why not.
fn decide(store: &mut Store, guard: &Guard, change: &Change) -> Result<(), String> {
    let (net, message) = (change.net, &change.message);
    let now = store.now.wall;
    let at = change.at();
    let reason = Some(format!(
        "fleet {}: {}",
        message.node,
        message.reason.as_deref().unwrap_or("")
    ));
    let state = &mut store.state;
    match message.action {
        Action::Ban => {
            let expires_at = change.expires_at();
            if expires_at.is_some_and(|expiry| expiry <= now) {
                return Err("expired".into());
            }
            if let Some(allowed) = state
                .allow
                .keys()
                .find(|allowed| allowed.contains(&net) || net.contains(*allowed))
            {
                return Err(format!("allowlisted here ({allowed})"));
            }
            guard
                .check(&net, &state.allow)
                .map_err(|err| err.to_string())?;
            let outlasted = state.bans.get(&net).is_some_and(|existing| {
                !existing.is_expired(now)
                    && match (existing.expires_at, expires_at) {
                        (None, _) => true,
                        (Some(_), None) => false,
                        (Some(old), Some(new)) => old >= new,
                    }
            });
            if outlasted {
                return Err("a ban in force here lasts as long".into());
            }
            state.bans.insert(
                net,
                Entry {
                    reason,
                    created_at: at,
                    expires_at,
                },
            );
        }
        Action::Allow => {
            if state.allow.contains_key(&net) {
                return Err("already allowlisted".into());
            }
            state.allow.insert(
                net,
                Entry {
                    reason,
                    created_at: at,
                    expires_at: None,
                },
            );
        }
        Action::Unban => {
            if state.bans.get(&net).is_none_or(|e| e.created_at > at) {
                return Err("no older ban here".into());
            }
            state.bans.remove(&net);
        }
        Action::Disallow => {
            if state.allow.get(&net).is_none_or(|e| e.created_at > at) {
                return Err("no older allowlist entry here".into());
            }
            let mut rest = state.allow.clone();
            rest.remove(&net);
            guard
                .check_allow_removal(&net, &state.bans, &rest, now)
                .map_err(|err| err.to_string())?;
            state.allow = rest;
        }
    }
    Ok(())
}

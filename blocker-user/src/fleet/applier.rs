//! Applying: the bucket's watch gives the current value of every key, then each change as it
//! comes. Received changes go through the same store session as local ones (database first,
//! then the maps), with source `fleet`, the publishing node as the actor, and `fleet NODE:` in
//! front of the reason. The local allowlist wins: a ban touching an allowlisted prefix is not
//! applied, nor one the lock-out guard refuses. A removal only lifts an entry it is newer
//! than: newer than the entry's creation and than this host's own last re-ban (re-allow) of
//! it, which keeps the creation time. So a tombstone replayed after a restart, or an unban
//! made elsewhere during a partition, never lifts a newer local ban.
//!
//! A long run of bans and unbans (a burst, a catch-up) is decided the same way but written
//! in bulk: the rows of its prefixes read by index, the decided rows written in one
//! transaction, and the maps brought to the database in one ordered pass over the stored
//! bans. The pass costs as much as writing one change through a store session does per
//! [`STORED_BANS_PER_CHANGE`] stored bans, so a run goes in bulk only when it is long
//! enough for the pass to pay.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use blocker_common::{MAP_BAN_V4, MAP_BAN_V6};
use ipnet::IpNet;
use jiff::Timestamp;
use tracing::{debug, error, info, warn};

use super::codec::{Action, Change, List};
use crate::{
    lockout::Guard,
    pins::PinDir,
    state::{self, Capacity, Decided, Entry, Merged, Origin, Table, FLEET_SOURCE},
    store::Store,
};

/// Stored bans the bulk path's pass over the maps costs as much time for as one change
/// written through a scoped session (measured: see `cargo xtask bench --fleet`).
const STORED_BANS_PER_CHANGE: u64 = 64;
/// Runs shorter than this are never written in bulk.
const BULK_MIN: usize = 256;
/// Changes made in one store session at most: it holds the pin directory lock.
const SESSION_MAX: usize = 4096;

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
    /// Applies `changes`, in order: a long run of changes to the bans in bulk, the others in
    /// one store session per run of changes from one node.
    pub fn apply(&self, changes: &[Change]) -> Applied {
        let mut total = Applied::default();
        let mut count = |done: Applied| {
            total.applied += done.applied;
            total.skipped += done.skipped;
        };
        for same_list in changes.chunk_by(|a, b| a.message.action.list() == b.message.action.list())
        {
            let bans = same_list[0].message.action.list() == List::Bans;
            if bans && self.bulk_pays(same_list.len()) {
                count(apply_bulk(
                    &self.pins,
                    &self.state_path,
                    &self.guard,
                    same_list,
                ));
                continue;
            }
            let runs = same_list.chunk_by(|a, b| a.message.node == b.message.node);
            for run in runs.flat_map(|run| run.chunks(SESSION_MAX)) {
                count(apply_run(&self.pins, &self.state_path, &self.guard, run));
            }
        }
        total
    }

    /// Whether `changes` changes of the bans are cheaper written in bulk.
    fn bulk_pays(&self, changes: usize) -> bool {
        if changes < BULK_MIN {
            return false;
        }
        let stored = state::summary(&self.state_path).map(|summary| {
            ["BAN_V4", "BAN_V6"]
                .iter()
                .filter_map(|kind| summary.entries.get(*kind))
                .sum::<u64>()
        });
        stored.is_ok_and(|stored| changes as u64 * STORED_BANS_PER_CHANGE >= stored)
    }
}

/// Applies `run`, changes of the bans only, in bulk ([`state::merge_bans`], then one pass
/// over the maps).
fn apply_bulk(pins: &PinDir, state_path: &Path, guard: &Guard, run: &[Change]) -> Applied {
    let not_applied = |err: &dyn std::fmt::Display| {
        warn!("fleet: {} changes not applied: {err}", run.len());
        Applied {
            applied: 0,
            skipped: run.len() as u64,
        }
    };
    // An empty scope: the lock, the maps, the allowlist and the rules.
    let mut store = match Store::open_scoped(pins, state_path, &[]) {
        Ok(store) => store,
        Err(err) => return not_applied(&err),
    };
    let nets: Vec<IpNet> = run.iter().map(|change| change.net).collect();
    let stored = match state::bans_of(state_path, &nets) {
        Ok(stored) => stored,
        Err(err) => return not_applied(&err),
    };
    let mut local = match state::local_changes(state_path, Table::Bans, &nets) {
        Ok(local) => local,
        Err(err) => return not_applied(&err),
    };
    store.state.bans = stored.clone();
    let (mut done, mut issued) = (Applied::default(), 0);
    // Of each prefix changed, the last change made to it (its place in the run, its node).
    let mut last_change: HashMap<IpNet, (usize, &str)> = HashMap::new();
    let now = store.now.wall;
    for (place, change) in run.iter().enumerate() {
        match decide(&mut store.state, now, guard, &mut local, change) {
            Ok(()) => {
                done.applied += 1;
                issued += u64::from(change.message.action == Action::Ban);
                last_change.insert(change.net, (place, &change.message.node));
            }
            Err(why) => {
                debug!(
                    "fleet: {} from {} skipped: {why}",
                    change.net, change.message.node
                );
                done.skipped += 1;
            }
        }
    }
    let merged = decided_rows(&stored, &store.state.bans, &last_change);
    if merged.is_empty() {
        return done;
    }
    let capacity = Capacity {
        v4: (MAP_BAN_V4, store.ban_capacity(true)),
        v6: (MAP_BAN_V6, store.ban_capacity(false)),
    };
    if let Err(err) = state::merge_bans(state_path, FLEET_SOURCE, now, &capacity, &merged, issued) {
        return not_applied(&err);
    }
    // The database holds the changes: the maps follow it.
    let (mut banned, mut lifted) = (Vec::new(), Vec::new());
    for row in &merged {
        match row.change {
            Decided::Ban(_) => banned.push(row.net),
            Decided::Lift(_) => lifted.push(row.net),
        }
    }
    banned.sort_unstable();
    if let Err(err) = store.sync_bans(&banned, &lifted) {
        error!("fleet: {} changes are stored but the maps refused them ({err}); reconciling every entry", merged.len());
        drop(store);
        let reconciled = Store::open(pins, state_path).and_then(|mut store| {
            store.origin = Origin::local("daemon");
            store.commit(|| {})
        });
        if let Err(err) = reconciled {
            error!("fleet: reconciling the maps with the state: {err}");
        }
    }
    info!("fleet: applied {} changes in bulk", done.applied);
    done
}

/// The rows that differ between the bans `stored` and `decided` (both holding only the
/// prefixes of the run), in the order of the run's `last_change` to each, with its node.
fn decided_rows(
    stored: &BTreeMap<IpNet, Entry>,
    decided: &BTreeMap<IpNet, Entry>,
    last_change: &HashMap<IpNet, (usize, &str)>,
) -> Vec<Merged> {
    let mut rows: Vec<(usize, Merged)> = last_change
        .iter()
        .filter_map(|(net, (place, node))| {
            let change = match (stored.get(net), decided.get(net)) {
                (old, Some(new)) if old != Some(new) => Decided::Ban(new.clone()),
                (Some(old), None) => Decided::Lift(old.clone()),
                _ => return None,
            };
            let row = Merged {
                net: *net,
                change,
                actor: node.to_string(),
            };
            Some((*place, row))
        })
        .collect();
    rows.sort_unstable_by_key(|(place, _)| *place);
    rows.into_iter().map(|(_, row)| row).collect()
}

fn apply_run(pins: &PinDir, state_path: &Path, guard: &Guard, run: &[Change]) -> Applied {
    let touched: Vec<IpNet> = run.iter().map(|change| change.net).collect();
    let node = run
        .first()
        .map_or("", |change| change.message.node.as_str());
    let not_applied = |err: &dyn std::fmt::Display| {
        warn!(
            "fleet: {} changes from {node} not applied: {err}",
            run.len()
        );
        Applied {
            applied: 0,
            skipped: run.len() as u64,
        }
    };
    let mut store = match Store::open_scoped(pins, state_path, &touched) {
        Ok(store) => store,
        Err(err) => return not_applied(&err),
    };
    // A run holds changes of one list ([`Inbox::apply`]).
    let table = match run.first().map(|change| change.message.action.list()) {
        Some(List::Allow) => Table::Allow,
        _ => Table::Bans,
    };
    let mut local = match state::local_changes(state_path, table, &touched) {
        Ok(local) => local,
        Err(err) => return not_applied(&err),
    };
    store.origin = Origin {
        source: FLEET_SOURCE,
        actor: node.to_string(),
    };
    let (mut done, mut bans) = (Applied::default(), 0);
    let now = store.now.wall;
    for change in run {
        match decide(&mut store.state, now, guard, &mut local, change) {
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
    store.count_issued(FLEET_SOURCE, bans);
    match store.commit(|| {}) {
        Ok(()) => {
            info!("fleet: applied {} changes from {node}", done.applied);
            done
        }
        Err(err) => not_applied(&err),
    }
}

/// When the entry of `net` was last set, as far as a removal received is concerned: its
/// creation, or this host's own later re-ban (re-allow) of it, held in `local`.
fn last_set(entry: &Entry, local: &HashMap<IpNet, Timestamp>, net: &IpNet) -> Timestamp {
    local
        .get(net)
        .map_or(entry.created_at, |at| entry.created_at.max(*at))
}

/// Makes one change to `state`, or says why not. `local` holds this host's own last setting
/// of each prefix of the run's list ([`state::local_changes`]); a removal made takes its
/// prefix out.
fn decide(
    state: &mut state::State,
    now: Timestamp,
    guard: &Guard,
    local: &mut HashMap<IpNet, Timestamp>,
    change: &Change,
) -> Result<(), String> {
    let (net, message) = (change.net, &change.message);
    let at = change.at();
    let reason = Some(format!(
        "fleet {}: {}",
        message.node,
        message.reason.as_deref().unwrap_or("")
    ));
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
            if state
                .bans
                .get(&net)
                .is_none_or(|ban| last_set(ban, local, &net) > at)
            {
                return Err("no older ban here".into());
            }
            state.bans.remove(&net);
            local.remove(&net);
        }
        Action::Disallow => {
            if state
                .allow
                .get(&net)
                .is_none_or(|allowed| last_set(allowed, local, &net) > at)
            {
                return Err("no older allowlist entry here".into());
            }
            let mut rest = state.allow.clone();
            rest.remove(&net);
            guard
                .check_allow_removal(&net, &state.bans, &rest, now)
                .map_err(|err| err.to_string())?;
            state.allow = rest;
            local.remove(&net);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::codec::Message;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    fn change(action: Action, net: &str, at: i64) -> Change {
        Change {
            net: net.parse().unwrap(),
            message: Message {
                action,
                expires_at: None,
                reason: None,
                source: "cli".into(),
                node: "web-2".into(),
                at,
            },
        }
    }

    fn entry(created_at: i64) -> Entry {
        Entry {
            reason: Some("local".into()),
            created_at: at(created_at),
            expires_at: None,
        }
    }

    /// Each list with one entry created at 100 that this host set again at 300.
    fn rebanned() -> (state::State, HashMap<IpNet, Timestamp>) {
        let net: IpNet = "192.0.2.7/32".parse().unwrap();
        let mut state = state::State::default();
        state.bans.insert(net, entry(100));
        state
            .allow
            .insert("198.51.100.0/24".parse().unwrap(), entry(100));
        let local = HashMap::from([(net, at(300))]);
        (state, local)
    }

    #[test]
    fn an_unban_older_than_a_local_re_ban_does_not_lift_it_and_a_newer_one_does() {
        let (mut state, mut local) = rebanned();
        let guard = Guard::default();
        let unban = |at| change(Action::Unban, "192.0.2.7/32", at);
        let now = at(1_000);
        assert!(
            decide(&mut state, now, &guard, &mut local, &unban(200)).is_err(),
            "made during a partition, before the re-ban"
        );
        assert_eq!(state.bans.len(), 1);
        decide(&mut state, now, &guard, &mut local, &unban(400)).unwrap();
        assert!(state.bans.is_empty());
        assert!(
            local.is_empty(),
            "the lifted prefix's local setting is gone"
        );
    }

    #[test]
    fn a_removal_without_a_local_re_setting_compares_with_the_creation() {
        let (mut state, _) = rebanned();
        let (guard, now) = (Guard::default(), at(1_000));
        let mut local = HashMap::new();
        let disallow = |at| change(Action::Disallow, "198.51.100.0/24", at);
        assert!(decide(&mut state, now, &guard, &mut local, &disallow(50)).is_err());
        decide(&mut state, now, &guard, &mut local, &disallow(200)).unwrap();
        assert!(state.allow.is_empty());
        let unban = change(Action::Unban, "192.0.2.7/32", 200);
        decide(&mut state, now, &guard, &mut local, &unban).unwrap();
        assert!(state.bans.is_empty());
    }

    #[test]
    fn a_disallow_older_than_a_local_re_allow_does_not_lift_it() {
        let (mut state, _) = rebanned();
        let (guard, now) = (Guard::default(), at(1_000));
        let net: IpNet = "198.51.100.0/24".parse().unwrap();
        let mut local = HashMap::from([(net, at(300))]);
        let disallow = change(Action::Disallow, "198.51.100.0/24", 200);
        assert!(decide(&mut state, now, &guard, &mut local, &disallow).is_err());
        assert!(state.allow.contains_key(&net));
    }
}

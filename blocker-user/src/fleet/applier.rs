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
use jiff::{SignedDuration, Timestamp};
use tracing::{debug, error, info, warn};

use super::codec::{Action, Change, List, UNDO_SOURCE};
use crate::{
    lockout::{wider_than_allowed, Guard},
    pins::PinDir,
    state::{self, Capacity, Decided, Entry, LocalChanges, Merged, Origin, Table, FLEET_SOURCE},
    store::Store,
};

/// Stored bans the bulk path's pass over the maps costs as much time for as one change
/// written through a scoped session (measured: see `cargo xtask bench --fleet`).
const STORED_BANS_PER_CHANGE: u64 = 64;
/// Runs shorter than this are never written in bulk.
const BULK_MIN: usize = 256;
/// Changes made in one store session at most: it holds the pin directory lock.
const SESSION_MAX: usize = 4096;

/// Of each bans map, the tenths that received bans may fill: the rest stays for this host's
/// own (the operator's, offenses', jails'), however many bans peers publish.
const RECEIVED_TENTHS: i64 = 9;

/// What one batch did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub applied: u64,
    /// Refused by a decision (allowlisted, older than what is here...): never applied.
    pub skipped: u64,
    /// Not applied because the store failed (locked out too long, a damaged database): to be
    /// tried again, before anything received after them.
    pub failed: Vec<Change>,
}

/// Where received changes are applied.
#[derive(Clone)]
pub struct Inbox {
    pub pins: PinDir,
    pub state_path: PathBuf,
}

impl Inbox {
    /// Applies `changes`, in order: a long run of changes to the bans in bulk, the others in
    /// one store session per run of changes from one node.
    pub fn apply(&self, changes: &[Change]) -> Applied {
        let mut total = Applied::default();
        // This host's addresses as they are now (a DHCP lease or a VIP moves them), and the
        // NATS servers: a received ban covering one would cut this host off the fleet, and
        // off the unban that would end it.
        let guard = match Guard::recent() {
            Ok(guard) => guard,
            Err(err) => {
                warn!("fleet: {} changes not applied: {err}", changes.len());
                total.failed = changes.to_vec();
                return total;
            }
        };
        // The parts written one by one: a run in bulk, or a store session's run.
        let mut parts: Vec<(&[Change], bool)> = Vec::new();
        for same_list in changes.chunk_by(|a, b| a.message.action.list() == b.message.action.list())
        {
            let bans = same_list[0].message.action.list() == List::Bans;
            if bans && self.bulk_pays(same_list.len()) {
                parts.push((same_list, true));
                continue;
            }
            let runs = same_list.chunk_by(|a, b| a.message.node == b.message.node);
            parts.extend(
                runs.flat_map(|run| run.chunks(SESSION_MAX))
                    .map(|run| (run, false)),
            );
        }
        for (part, bulk) in parts {
            if !total.failed.is_empty() {
                // Changes are applied in order: after one failed, the rest wait with it.
                total.failed.extend_from_slice(part);
                continue;
            }
            let done = if bulk {
                apply_bulk(&self.pins, &self.state_path, &guard, part)
            } else {
                apply_run(&self.pins, &self.state_path, &guard, part)
            };
            total.applied += done.applied;
            total.skipped += done.skipped;
            total.failed.extend(done.failed);
        }
        total
    }

    /// Whether `changes` changes of the bans are cheaper written in bulk.
    fn bulk_pays(&self, changes: usize) -> bool {
        if changes < BULK_MIN {
            return false;
        }
        let stored = state::summary(&self.state_path).map(|summary| summary.bans());
        stored.is_ok_and(|stored| changes as u64 * STORED_BANS_PER_CHANGE >= stored)
    }
}

/// What became of `run`, which the store did not apply (`err`): skipped when a map is full
/// (trying again would fail the same way), else to be tried again.
fn not_applied(run: &[Change], from: &str, err: &crate::Error) -> Applied {
    if matches!(err, crate::Error::MapFull { .. }) {
        warn!("fleet: {} changes{from} skipped: {err}", run.len());
        return Applied {
            skipped: run.len() as u64,
            ..Applied::default()
        };
    }
    warn!(
        "fleet: {} changes{from} not applied: {err}; trying again",
        run.len()
    );
    Applied {
        failed: run.to_vec(),
        ..Applied::default()
    }
}

/// Applies `run`, changes of the bans only, in bulk ([`state::merge_bans`], then one pass
/// over the maps).
fn apply_bulk(pins: &PinDir, state_path: &Path, guard: &Guard, run: &[Change]) -> Applied {
    let not_applied = |err: &crate::Error| not_applied(run, "", err);
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
    let local = match state::local_changes(state_path, Table::Bans, &nets) {
        Ok(local) => local,
        Err(err) => return not_applied(&err),
    };
    store.state.bans = stored.clone();
    let (mut done, mut issued) = (Applied::default(), 0);
    // Of each prefix changed, the last change made to it (its place in the run, its node).
    let mut last_change: HashMap<IpNet, (usize, &str)> = HashMap::new();
    let room = match room(&store, state_path) {
        Ok(room) => room,
        Err(err) => return not_applied(&err),
    };
    let now = store.now.wall;
    let mut context = Context {
        now,
        guard: guard.clone(),
        local,
        room,
    };
    for (place, change) in run.iter().enumerate() {
        match decide(&mut store.state, &mut context, change) {
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
    // Until the maps follow the commit: a kill in between is healed by the next writer.
    if let Err(err) = pins.mark_maps_pending() {
        return not_applied(&err);
    }
    if let Err(err) = state::merge_bans(state_path, FLEET_SOURCE, now, &capacity, &merged, issued) {
        // Nothing was stored.
        let _ = pins.clear_maps_pending();
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
    let synced = store
        .sync_bans(&banned, &lifted)
        .and_then(|()| pins.clear_maps_pending());
    if let Err(err) = synced {
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
    let from = format!(" from {node}");
    let not_applied = |err: &crate::Error| not_applied(run, &from, err);
    let mut store = match Store::open_scoped(pins, state_path, &touched) {
        Ok(store) => store,
        Err(err) => return not_applied(&err),
    };
    // A run holds changes of one list ([`Inbox::apply`]).
    let table = match run.first().map(|change| change.message.action.list()) {
        Some(List::Allow) => Table::Allow,
        _ => Table::Bans,
    };
    let local = match state::local_changes(state_path, table, &touched) {
        Ok(local) => local,
        Err(err) => return not_applied(&err),
    };
    store.origin = Origin {
        source: FLEET_SOURCE,
        actor: node.to_string(),
    };
    let (mut done, mut bans) = (Applied::default(), 0);
    let room = match room(&store, state_path) {
        Ok(room) => room,
        Err(err) => return not_applied(&err),
    };
    let mut context = Context {
        now: store.now.wall,
        guard: guard.clone(),
        local,
        room,
    };
    for change in run {
        match decide(&mut store.state, &mut context, change) {
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

/// How far ahead of this host's clock a change may be dated: the nodes' clocks differ a
/// little. A change dated later is refused; it would win every comparison (an unban dated in
/// 9999 lifting every ban, a ban dated so never lifted).
const MAX_CLOCK_AHEAD: SignedDuration = SignedDuration::from_secs(300);

/// What a run's changes are decided against, besides the state.
struct Context {
    now: Timestamp,
    guard: Guard,
    /// This host's own changes of the run's prefixes ([`state::local_changes`]).
    local: LocalChanges,
    /// New bans received bans may still add, IPv4 then IPv6 ([`RECEIVED_TENTHS`]).
    room: [i64; 2],
}

/// [`Context::room`] as the database holds it now.
fn room(store: &Store, state_path: &Path) -> crate::Result<[i64; 2]> {
    let summary = state::summary(state_path)?;
    let room = |v4: bool, kind: &str| {
        let stored = summary.entries.get(kind).copied().unwrap_or(0);
        i64::from(store.ban_capacity(v4)) * RECEIVED_TENTHS / 10
            - i64::try_from(stored).unwrap_or(i64::MAX)
    };
    Ok([room(true, "BAN_V4"), room(false, "BAN_V6")])
}

/// The [`Context::room`] slot of `net`'s family.
fn family(net: &IpNet) -> usize {
    usize::from(net.addr().is_ipv6())
}

impl Context {
    /// When the entry of `net` was last set, as far as a removal received is concerned: its
    /// creation, or this host's own later re-ban (re-allow) of it.
    fn last_set(&self, entry: &Entry, net: &IpNet) -> Timestamp {
        self.local
            .set
            .get(net)
            .map_or(entry.created_at, |at| entry.created_at.max(*at))
    }

    /// Refuses adding `net` by a change made at `at` if this host removed it itself later.
    fn removed_since(&self, net: &IpNet, at: Timestamp) -> Result<(), String> {
        match self.local.removed.get(net) {
            Some(removed) if *removed > at => Err(format!("removed here later ({removed})")),
            _ => Ok(()),
        }
    }
}

/// Makes one change to `state`, or says why not; a removal made takes its prefix out of
/// `context`'s local settings.
fn decide(state: &mut state::State, context: &mut Context, change: &Change) -> Result<(), String> {
    let (net, message, now) = (change.net, &change.message, context.now);
    let at = change.at();
    if now
        .checked_add(MAX_CLOCK_AHEAD)
        .is_ok_and(|latest| at > latest)
    {
        return Err(format!("dated {at}, ahead of this host's clock"));
    }
    let reason = Some(format!(
        "fleet {}: {}",
        message.node,
        message.reason.as_deref().unwrap_or("")
    ));
    // An undo takes back what its node published: it lifts only an entry received from it.
    let received_from_sender = |entry: &Entry| {
        entry
            .reason
            .as_deref()
            .is_some_and(|held| held.starts_with(&format!("fleet {}:", message.node)))
    };
    let undo = message.source == UNDO_SOURCE;
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
            context
                .guard
                .check(&net, &state.allow)
                .map_err(|err| err.to_string())?;
            context.removed_since(&net, at)?;
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
            if !state.bans.contains_key(&net) {
                let room = &mut context.room[family(&net)];
                if *room <= 0 {
                    return Err("the bans map's last tenth is kept for this host's own bans".into());
                }
                *room -= 1;
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
            if let Some(widest) = wider_than_allowed(&net) {
                return Err(format!(
                    "wider than a /{widest}: it would lift the bans of a large part of the Internet"
                ));
            }
            if state.allow.contains_key(&net) {
                return Err("already allowlisted".into());
            }
            context.removed_since(&net, at)?;
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
                .is_none_or(|ban| context.last_set(ban, &net) > at)
            {
                return Err("no older ban here".into());
            }
            if undo && !state.bans.get(&net).is_some_and(received_from_sender) {
                return Err("an undo, and the ban here is not the sender's".into());
            }
            state.bans.remove(&net);
            context.local.set.remove(&net);
            let room = &mut context.room[family(&net)];
            *room = room.saturating_add(1);
        }
        Action::Disallow => {
            if state
                .allow
                .get(&net)
                .is_none_or(|allowed| context.last_set(allowed, &net) > at)
            {
                return Err("no older allowlist entry here".into());
            }
            if undo && !state.allow.get(&net).is_some_and(received_from_sender) {
                return Err("an undo, and the allowlist entry here is not the sender's".into());
            }
            let mut rest = state.allow.clone();
            rest.remove(&net);
            context
                .guard
                .check_allow_removal(&net, &state.bans, &rest, now)
                .map_err(|err| err.to_string())?;
            state.allow = rest;
            context.local.set.remove(&net);
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

    const BANNED: &str = "192.0.2.7/32";
    const ALLOWED: &str = "198.51.100.0/24";

    /// A ban and an allowlist entry, both created at 100, and a context at 1,000 where this
    /// host set each prefix of `local_sets` again at 300.
    fn setup(local_sets: &[&str]) -> (state::State, Context) {
        let mut state = state::State::default();
        state.bans.insert(BANNED.parse().unwrap(), entry(100));
        state.allow.insert(ALLOWED.parse().unwrap(), entry(100));
        let set = local_sets
            .iter()
            .map(|net| (net.parse().unwrap(), at(300)))
            .collect();
        let context = Context {
            now: at(1_000),
            guard: Guard::default(),
            local: LocalChanges {
                set,
                removed: HashMap::new(),
            },
            room: [i64::MAX; 2],
        };
        (state, context)
    }

    #[test]
    fn an_unban_older_than_a_local_re_ban_does_not_lift_it_and_a_newer_one_does() {
        let (mut state, mut context) = setup(&[BANNED]);
        let unban = |at| change(Action::Unban, BANNED, at);
        assert!(
            decide(&mut state, &mut context, &unban(200)).is_err(),
            "made during a partition, before the re-ban"
        );
        assert_eq!(state.bans.len(), 1);
        decide(&mut state, &mut context, &unban(400)).unwrap();
        assert!(state.bans.is_empty());
        assert!(
            context.local.set.is_empty(),
            "the lifted prefix's local setting is gone"
        );
    }

    #[test]
    fn a_removal_without_a_local_re_setting_compares_with_the_creation() {
        let (mut state, mut context) = setup(&[]);
        let disallow = |at| change(Action::Disallow, ALLOWED, at);
        assert!(decide(&mut state, &mut context, &disallow(50)).is_err());
        decide(&mut state, &mut context, &disallow(200)).unwrap();
        assert!(state.allow.is_empty());
        decide(
            &mut state,
            &mut context,
            &change(Action::Unban, BANNED, 200),
        )
        .unwrap();
        assert!(state.bans.is_empty());
    }

    #[test]
    fn a_disallow_older_than_a_local_re_allow_does_not_lift_it() {
        let (mut state, mut context) = setup(&[ALLOWED]);
        let disallow = change(Action::Disallow, ALLOWED, 200);
        assert!(decide(&mut state, &mut context, &disallow).is_err());
        assert_eq!(state.allow.len(), 1);
    }

    #[test]
    fn a_ban_or_allow_older_than_a_local_removal_is_not_applied() {
        let (mut state, mut context) = setup(&[]);
        let (banned, allowed): (IpNet, IpNet) = (
            "203.0.113.9/32".parse().unwrap(),
            "203.0.113.0/24".parse().unwrap(),
        );
        context.local.removed = HashMap::from([(banned, at(500)), (allowed, at(500))]);
        let ban = |at| change(Action::Ban, "203.0.113.9/32", at);
        assert!(
            decide(&mut state, &mut context, &ban(400)).is_err(),
            "replayed from before the unban"
        );
        decide(&mut state, &mut context, &ban(600)).unwrap();
        assert!(state.bans.contains_key(&banned));
        let allow = |at| change(Action::Allow, "203.0.113.0/24", at);
        assert!(decide(&mut state, &mut context, &allow(400)).is_err());
        decide(&mut state, &mut context, &allow(600)).unwrap();
        assert!(state.allow.contains_key(&allowed));
    }

    #[test]
    fn a_change_dated_ahead_of_this_clock_is_not_applied() {
        let (mut state, mut context) = setup(&[]);
        let far = at(1_000).as_second() + 3_600;
        for action in [Action::Unban, Action::Ban] {
            let dated_ahead = change(action, BANNED, far);
            assert!(
                decide(&mut state, &mut context, &dated_ahead).is_err(),
                "{action:?}"
            );
        }
        assert_eq!(state.bans[&BANNED.parse().unwrap()], entry(100));
        let skewed = change(Action::Unban, BANNED, 1_000 + 60);
        decide(&mut state, &mut context, &skewed).unwrap();
        assert!(
            state.bans.is_empty(),
            "a clock a minute ahead is within the skew"
        );
    }

    #[test]
    fn a_received_allowlist_entry_wider_than_a_ban_may_be_is_not_applied() {
        let (mut state, mut context) = setup(&[]);
        for wide in ["0.0.0.0/0", "10.0.0.0/7", "::/0", "2000::/3"] {
            let allow = change(Action::Allow, wide, 500);
            assert!(decide(&mut state, &mut context, &allow).is_err(), "{wide}");
        }
        assert_eq!(state.allow.len(), 1);
        decide(
            &mut state,
            &mut context,
            &change(Action::Allow, "10.0.0.0/8", 500),
        )
        .unwrap();
    }

    #[test]
    fn a_ban_covering_a_server_the_fleet_needs_is_not_applied() {
        let (mut state, mut context) = setup(&[]);
        context.guard = Guard::default().also_protecting(&["192.0.2.53".parse().unwrap()]);
        let ban = change(Action::Ban, "192.0.2.0/24", 500);
        let why = decide(&mut state, &mut context, &ban).unwrap_err();
        assert!(why.contains("192.0.2.53"), "{why}");
    }

    #[test]
    fn received_bans_leave_the_last_tenth_of_the_map_to_this_host() {
        let (mut state, mut context) = setup(&[]);
        context.room = [1, 0];
        decide(
            &mut state,
            &mut context,
            &change(Action::Ban, "203.0.113.1/32", 500),
        )
        .unwrap();
        let mut full = change(Action::Ban, "203.0.113.2/32", 500);
        full.message.expires_at = Some(2_000);
        assert!(
            decide(&mut state, &mut context, &full).is_err(),
            "no room left"
        );
        assert!(decide(
            &mut state,
            &mut context,
            &change(Action::Ban, "2001:db8::1/128", 500)
        )
        .is_err());
        decide(
            &mut state,
            &mut context,
            &change(Action::Unban, "203.0.113.1/32", 600),
        )
        .unwrap();
        decide(&mut state, &mut context, &full).unwrap();
        let renewed = Change {
            message: Message {
                expires_at: Some(5_000),
                ..full.message.clone()
            },
            ..full.clone()
        };
        decide(&mut state, &mut context, &renewed).unwrap();
        assert_eq!(
            context.room,
            [0, 0],
            "a ban already here takes no more room"
        );
    }

    #[test]
    fn an_undo_lifts_only_what_was_received_from_its_sender() {
        let (mut state, mut context) = setup(&[]);
        let undo = |action, net: &str| {
            let mut undo = change(action, net, 500);
            undo.message.source = UNDO_SOURCE.into();
            undo
        };
        // This host's own entries (reason "local") stay.
        assert!(decide(&mut state, &mut context, &undo(Action::Disallow, ALLOWED)).is_err());
        assert!(decide(&mut state, &mut context, &undo(Action::Unban, BANNED)).is_err());
        assert_eq!((state.bans.len(), state.allow.len()), (1, 1));
        // A ban received from web-2 is lifted by web-2's undo, not by another node's.
        let received = change(Action::Ban, "203.0.113.9/32", 400);
        decide(&mut state, &mut context, &received).unwrap();
        let mut elsewhere = undo(Action::Unban, "203.0.113.9/32");
        elsewhere.message.node = "web-3".into();
        assert!(decide(&mut state, &mut context, &elsewhere).is_err());
        decide(
            &mut state,
            &mut context,
            &undo(Action::Unban, "203.0.113.9/32"),
        )
        .unwrap();
        assert!(!state.bans.contains_key(&"203.0.113.9/32".parse().unwrap()));
    }
}

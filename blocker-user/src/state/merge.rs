//! Many bans and unbans decided elsewhere (the fleet's applier, for a burst or a catch-up),
//! written in one transaction: the stored rows of the prefixes concerned are read by index,
//! and the decided rows are written with a history row each, the entry counts being taken
//! once at the end rather than by a trigger per row. The maps follow from the database
//! ([`crate::store::Store::sync_bans`]).

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
};

use ipnet::IpNet;
use jiff::Timestamp;
use rusqlite::{params, OptionalExtension};

use super::{
    bulk::{drop_count_triggers, recount},
    expiry_seconds, invalid, open, range_columns, seconds, timestamp, Capacity, Entry, UPSERT_BAN,
};
use crate::Result;

/// The history's source of changes applied from the fleet.
pub const FLEET_SOURCE: &str = "fleet";

/// A table whose entries the fleet changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Bans,
    Allow,
}

impl Table {
    /// The history's action that sets an entry, the one an operator removes it with, and
    /// every removal (an expiry included).
    fn actions(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Table::Bans => ("ban", "unban", "'unban', 'expire'"),
            Table::Allow => ("allow", "disallow", "'disallow'"),
        }
    }
}

/// What this host did itself (not from the fleet) to each of some prefixes: what a change
/// received is weighed against ([`local_changes`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LocalChanges {
    /// When this host last set the entry, if nothing removed it since. A re-ban or re-allow
    /// keeps the entry's `created_at`, so this is the time a removal received has to be
    /// newer than.
    pub set: HashMap<IpNet, Timestamp>,
    /// When this host last removed the entry (`unban`, `disallow`; not an expiry): a ban or
    /// allow received has to be newer than that.
    pub removed: HashMap<IpNet, Timestamp>,
}

/// [`LocalChanges`] of `nets` in `table`, from the history.
pub fn local_changes(path: &Path, table: Table, nets: &[IpNet]) -> Result<LocalChanges> {
    let mut conn = open(path, true)?;
    let db = |err: rusqlite::Error| invalid(path, err);
    let tx = conn.transaction().map_err(db)?;
    let (set, removal, removals) = table.actions();
    let mut last_set = tx
        .prepare_cached(&format!(
            "SELECT at FROM history WHERE prefix = ?1 AND action = ?2 AND source <> ?3 \
             AND id > (SELECT coalesce(max(id), 0) FROM history \
                       WHERE prefix = ?1 AND action IN ({removals})) \
             ORDER BY id DESC LIMIT 1"
        ))
        .map_err(db)?;
    let mut last_removal = tx
        .prepare_cached(
            "SELECT at FROM history WHERE prefix = ?1 AND action = ?2 AND source <> ?3 \
             ORDER BY id DESC LIMIT 1",
        )
        .map_err(db)?;
    let mut found = LocalChanges::default();
    for net in nets {
        let prefix = net.to_string();
        for (statement, action, times) in [
            (&mut last_set, set, &mut found.set),
            (&mut last_removal, removal, &mut found.removed),
        ] {
            let at: Option<i64> = statement
                .query_row(params![prefix, action, FLEET_SOURCE], |row| row.get(0))
                .optional()
                .map_err(db)?;
            if let Some(at) = at {
                times.insert(*net, timestamp(path, at)?);
            }
        }
    }
    Ok(found)
}

/// One decided change of the bans.
pub struct Merged {
    pub net: IpNet,
    pub change: Decided,
    /// The history's actor (for the fleet, the node the change came from).
    pub actor: String,
}

/// What becomes of a prefix.
pub enum Decided {
    /// Banned (again, or otherwise) as this entry.
    Ban(Entry),
    /// Lifted: the ban it had.
    Lift(Entry),
}

/// The stored bans of `nets` (exactly those prefixes), by index.
pub fn bans_of(path: &Path, nets: &[IpNet]) -> Result<BTreeMap<IpNet, Entry>> {
    let mut conn = open(path, true)?;
    let db = |err: rusqlite::Error| invalid(path, err);
    // One read transaction: the lookups do not each take and release the database's locks.
    let tx = conn.transaction().map_err(db)?;
    let mut statement = tx
        .prepare_cached("SELECT reason, created_at, expires_at FROM bans WHERE prefix = ?1")
        .map_err(db)?;
    let mut found = BTreeMap::new();
    for net in nets {
        let mut rows = statement.query([net.to_string()]).map_err(db)?;
        if let Some(row) = rows.next().map_err(db)? {
            let expires_at: Option<i64> = row.get(2).map_err(db)?;
            let entry = Entry {
                reason: row.get(0).map_err(db)?,
                created_at: timestamp(path, row.get(1).map_err(db)?)?,
                expires_at: expires_at.map(|at| timestamp(path, at)).transpose()?,
            };
            found.insert(*net, entry);
        }
    }
    Ok(found)
}

/// Writes `changes` with `source`, in one transaction: a ban is inserted or replaced, a lifted
/// one deleted, each recorded in the history at `now` (a lifted ban with its reason, as an
/// expiry if it had ended), and `issued` bans counted for `source`. Nothing is written if the
/// bans would not fit the maps' `capacity`.
pub fn merge_bans(
    path: &Path,
    source: &str,
    now: Timestamp,
    capacity: &Capacity,
    changes: &[Merged],
    issued: u64,
) -> Result<()> {
    let mut conn = open(path, true)?;
    let db = |err: rusqlite::Error| invalid(path, err);
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(db)?;
    let triggers = drop_count_triggers(&tx, path)?;
    {
        let mut upsert = tx.prepare_cached(UPSERT_BAN).map_err(db)?;
        let mut delete = tx
            .prepare_cached("DELETE FROM bans WHERE prefix = ?1")
            .map_err(db)?;
        let mut history = tx
            .prepare_cached(
                "INSERT INTO history (at, action, prefix, source, reason, actor) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(db)?;
        for change in changes {
            let prefix = change.net.to_string();
            let (action, reason) = match &change.change {
                Decided::Ban(ban) => {
                    let (family, first, len) = range_columns(&change.net);
                    upsert
                        .execute(params![
                            prefix,
                            ban.reason,
                            seconds(ban.created_at),
                            ban.expires_at.map(expiry_seconds),
                            source,
                            family,
                            first,
                            len
                        ])
                        .map_err(db)?;
                    ("ban", ban.reason.as_deref())
                }
                Decided::Lift(ban) => {
                    delete.execute([&prefix]).map_err(db)?;
                    let action = if ban.is_expired(now) {
                        "expire"
                    } else {
                        "unban"
                    };
                    (action, ban.reason.as_deref())
                }
            };
            history
                .execute(params![
                    seconds(now),
                    action,
                    prefix,
                    source,
                    reason,
                    change.actor
                ])
                .map_err(db)?;
        }
    }
    for sql in &triggers {
        tx.execute_batch(sql).map_err(db)?;
    }
    recount(&tx, path, capacity)?;
    if issued > 0 {
        tx.execute(
            "INSERT INTO counters (source, issued) VALUES (?1, ?2) \
             ON CONFLICT (source) DO UPDATE SET issued = issued + excluded.issued",
            params![source, issued as i64],
        )
        .map_err(db)?;
    }
    tx.commit().map_err(db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{summary, Origin, State};

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    fn ban(reason: &str, expires_at: Option<i64>) -> Entry {
        Entry {
            reason: Some(reason.into()),
            created_at: at(1_700_000_000),
            expires_at: expires_at.map(at),
        }
    }

    const ROOMY: Capacity = Capacity {
        v4: ("ban_v4", 100),
        v6: ("ban_v6", 100),
    };

    /// A database with two bans of the CLI.
    fn stored() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut state = State::default();
        for net in ["10.0.0.1/32", "10.0.0.2/32"] {
            state.bans.insert(net.parse().unwrap(), ban("local", None));
        }
        let origin = Origin {
            source: "cli",
            actor: "tester".into(),
        };
        state
            .save_changes(&path, &State::default(), &origin)
            .unwrap();
        (dir, path)
    }

    #[test]
    fn merged_bans_and_lifts_are_stored_with_their_history_and_counts() {
        let (_dir, path) = stored();
        let nets: Vec<IpNet> = ["10.0.0.1/32", "10.0.0.2/32", "2001:db8::/64"]
            .iter()
            .map(|net| net.parse().unwrap())
            .collect();
        let found = bans_of(&path, &nets).unwrap();
        assert_eq!(found.len(), 2, "the v6 prefix is not stored");
        let changes = [
            Merged {
                net: nets[1],
                change: Decided::Lift(found[&nets[1]].clone()),
                actor: "web-2".into(),
            },
            Merged {
                net: nets[2],
                change: Decided::Ban(ban("fleet web-1: scan", Some(1_900_000_000))),
                actor: "web-1".into(),
            },
        ];
        merge_bans(&path, "fleet", at(1_800_000_000), &ROOMY, &changes, 1).unwrap();

        let state = State::load(&path).unwrap();
        let banned: Vec<String> = state.bans.keys().map(IpNet::to_string).collect();
        assert_eq!(banned, ["10.0.0.1/32", "2001:db8::/64"]);
        assert_eq!(state.bans[&nets[2]].expires_at, Some(at(1_900_000_000)));
        assert_eq!(state.issued.get("fleet"), Some(&1));
        let counts = summary(&path).unwrap().entries;
        for (kind, count) in [
            ("BAN_V4", 1),
            ("BAN_V6", 1),
            ("permanent", 1),
            ("temporary", 1),
        ] {
            assert_eq!(counts.get(kind), Some(&count), "{kind}: {counts:?}");
        }
        let history =
            crate::state::history(&path, &["10.0.0.2/32".into(), "2001:db8::/64".into()]).unwrap();
        let rows: Vec<(String, String, Option<String>)> = history
            .iter()
            .filter(|change| change.source == "fleet")
            .map(|change| {
                (
                    change.action.clone(),
                    change.prefix.clone(),
                    change.actor.clone(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("unban".into(), "10.0.0.2/32".into(), Some("web-2".into())),
                ("ban".into(), "2001:db8::/64".into(), Some("web-1".into())),
            ]
        );
    }

    #[test]
    fn local_changes_are_the_last_set_by_this_host_since_the_entry_was_last_removed() {
        let (_dir, path) = stored();
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "DELETE FROM history;
             INSERT INTO history (at, action, prefix, source) VALUES
                 (100, 'ban', '10.0.0.1/32', 'cli'),
                 (200, 'ban', '10.0.0.1/32', 'offense'),
                 (300, 'ban', '10.0.0.1/32', 'fleet'),
                 (100, 'ban', '10.0.0.2/32', 'cli'),
                 (200, 'expire', '10.0.0.2/32', 'daemon'),
                 (300, 'ban', '10.0.0.2/32', 'fleet'),
                 (100, 'allow', '10.0.0.3/32', 'cli'),
                 (150, 'ban', '10.0.0.3/32', 'fleet'),
                 (200, 'disallow', '10.0.0.4/32', 'cli'),
                 (100, 'allow', '10.0.0.4/32', 'cli'),
                 (250, 'unban', '10.0.0.5/32', 'cli'),
                 (260, 'unban', '10.0.0.5/32', 'fleet');",
        )
        .unwrap();
        let nets: Vec<IpNet> = (1..=5)
            .map(|host| format!("10.0.0.{host}/32").parse().unwrap())
            .collect();
        let bans = local_changes(&path, Table::Bans, &nets).unwrap();
        assert_eq!(
            bans.set,
            HashMap::from([(nets[0], at(200))]),
            "the latest local ban, past a fleet one; none since an expiry"
        );
        assert_eq!(
            bans.removed,
            HashMap::from([(nets[4], at(250))]),
            "the latest local unban, past a fleet one; an expiry is no unban"
        );
        let allow = local_changes(&path, Table::Allow, &nets).unwrap();
        assert_eq!(
            allow.set,
            HashMap::from([(nets[2], at(100)), (nets[3], at(100))]),
            "an allow after a disallow counts: the order is by id, not time"
        );
        assert_eq!(allow.removed, HashMap::from([(nets[3], at(200))]));
    }

    #[test]
    fn a_merge_that_would_overfill_a_map_stores_nothing() {
        let (_dir, path) = stored();
        let before = State::load(&path).unwrap();
        let tight = Capacity {
            v4: ("ban_v4", 2),
            v6: ("ban_v6", 100),
        };
        let changes = [Merged {
            net: "10.0.0.3/32".parse().unwrap(),
            change: Decided::Ban(ban("fleet web-1: scan", None)),
            actor: "web-1".into(),
        }];
        let err = merge_bans(&path, "fleet", at(1_800_000_000), &tight, &changes, 1);
        assert!(matches!(
            err,
            Err(crate::Error::MapFull { map: "ban_v4", .. })
        ));
        assert_eq!(State::load(&path).unwrap(), before);
    }
}

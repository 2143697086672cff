//! Bulk import: a list of bans streamed into a temporary table, then written to the database
//! in one transaction by a few set-wise statements, with a history row each. Memory does not
//! grow with the list beyond the prefixes written (kept, sorted, for the maps); the rows they
//! replaced are kept in a temporary table, for an undo.

use std::path::Path;

use ipnet::IpNet;
use jiff::Timestamp;
use rusqlite::{params, params_from_iter, types::Value, OptionalExtension};

use rusqlite::{Connection, Transaction};

use super::{connect, expiry_seconds, invalid, range_columns, seconds, Origin};
use crate::{Error, Result};

/// The page cache of a bulk import: SQLite takes a negative size in KiB.
const BULK_CACHE_KIB: i64 = -64 * 1024;

/// Rows of the list staged by one statement: a statement run costs about as much as the
/// values it binds.
const STAGED_PER_INSERT: usize = 64;

/// The columns of `temp.listed`, bound for each row.
const STAGED_COLUMNS: usize = 7;

/// The triggers keeping `kept_counts` for the bans: an import drops them for its transaction
/// (two updates per row were half its cost) and counts once, before it commits.
const COUNT_TRIGGERS: [&str; 5] = [
    "bans_counted_in",
    "bans_counted_out",
    "bans_recounted",
    "bans_in_trie",
    "bans_out_of_trie",
];

/// One ban of the list.
pub struct ImportRow {
    pub net: IpNet,
    pub reason: Option<String>,
    /// When the list says the ban was made; `None` is the time of the import.
    pub created_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
}

/// A committed import: what [`undo_import`] needs to take it back (the replaced rows live in
/// a temporary table of this connection).
pub struct Imported {
    conn: Connection,
    path: std::path::PathBuf,
    history_before: i64,
    /// Every prefix the list wrote, once each, in address order.
    pub nets: Vec<IpNet>,
    checkpoint: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Imported {
    /// Waits for the checkpoint started at the commit. The import is durable without it (in
    /// the WAL); it only spares the next writer the copy.
    pub fn checkpointed(&mut self) -> Result<()> {
        match self.checkpoint.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            None => Ok(()),
        }
    }
}

/// Allowlist entries an import adds with its bans (`--with-allow`): written in the same
/// transaction, so a refused list leaves the allowlist as it was.
#[derive(Clone, Copy)]
pub struct ImportAllows<'a> {
    pub nets: &'a [IpNet],
    pub reason: &'a str,
}

impl ImportAllows<'_> {
    pub const NONE: ImportAllows<'static> = ImportAllows {
        nets: &[],
        reason: "",
    };
}

/// Which bans in force an import's list replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replace<'a> {
    /// Any: the list's entry wins (`blocker import`).
    Any,
    /// Only those with this reason, the importer's own: a ban in force made by anything else
    /// stays as it is (a feed never shortens or takes over the operator's ban). Told under the
    /// import's write lock, so a ban made while the list was read is seen.
    Own(&'a str),
}

/// The most bans each family's map holds, checked before the import commits.
pub struct Capacity {
    pub v4: (&'static str, u32),
    pub v6: (&'static str, u32),
}

/// Writes `rows` as bans in one transaction, each created at its own time or `now` (an
/// existing ban is replaced, keeping its creation time while it is in force) and counts them
/// as issued by `origin.source`; `allows` go to the allowlist in the same transaction (an
/// entry already there keeps its creation time). A ban in force that `replace` keeps is left
/// out of the import. The first error of `rows`, or a result that would not fit the maps,
/// stores nothing.
pub fn import_bans(
    path: &Path,
    origin: &Origin,
    now: Timestamp,
    capacity: &Capacity,
    allows: ImportAllows,
    replace: Replace,
    rows: impl Iterator<Item = Result<ImportRow>>,
) -> Result<Imported> {
    let mut conn = connect(path, true)?;
    let db = |err: rusqlite::Error| invalid(path, err);
    // A list touches pages all over the indexes: a larger cache writes each of them to the
    // WAL fewer times over the transaction (about 20% faster for 200k rows into 1M).
    conn.pragma_update(None, "cache_size", BULK_CACHE_KIB)
        .map_err(db)?;
    // The commit's checkpoint copies the whole import from the WAL into the database file: it
    // runs on a thread of its own instead, beside the map writes ([`Imported::checkpointed`]).
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(db)?;
    conn.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS replaced AS SELECT * FROM bans WHERE 0;
         DELETE FROM temp.replaced;
         CREATE TEMP TABLE IF NOT EXISTS listed (
             prefix TEXT NOT NULL, family INTEGER NOT NULL, first BLOB NOT NULL,
             len INTEGER NOT NULL, reason TEXT, created_at INTEGER, expires_at INTEGER);
         DELETE FROM temp.listed;
         CREATE TEMP TABLE IF NOT EXISTS replaced_allow AS SELECT * FROM allow WHERE 0;
         DELETE FROM temp.replaced_allow;
         CREATE TEMP TABLE IF NOT EXISTS allowed (
             prefix TEXT PRIMARY KEY, family INTEGER NOT NULL);
         DELETE FROM temp.allowed;",
    )
    .map_err(db)?;
    {
        let mut stage_allow = conn
            .prepare("INSERT OR IGNORE INTO temp.allowed VALUES (?1, ?2)")
            .map_err(db)?;
        for net in allows.nets {
            stage_allow
                .execute(params![net.to_string(), range_columns(net).0])
                .map_err(db)?;
        }
    }
    let mut nets = stage(&mut conn, path, rows)?;
    nets.sort_unstable();
    nets.dedup();
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(db)?;
    let history_before: i64 = tx
        .query_row("SELECT coalesce(max(id), 0) FROM history", [], |row| {
            row.get(0)
        })
        .map_err(db)?;
    if let Replace::Own(reason) = replace {
        keep_others(&tx, path, now, reason, &mut nets)?;
    }
    write_allows(&tx, path, origin, now, allows.reason)?;
    let triggers = drop_count_triggers(&tx, path)?;
    // The list is staged whole before anything is written, so `replaced` holds the rows as
    // they were before the import, whatever the list repeats.
    tx.execute_batch(
        "INSERT INTO temp.replaced SELECT DISTINCT bans.* \
         FROM temp.listed CROSS JOIN main.bans ON bans.prefix = listed.prefix",
    )
    .map_err(db)?;
    // In list order, so the last of a repeated prefix wins (`WHERE true`: an upsert after a
    // SELECT needs a WHERE clause to parse).
    tx.execute(
        "INSERT INTO bans (prefix, family, first, len, reason, created_at, expires_at, source) \
         SELECT prefix, family, first, len, reason, coalesce(created_at, ?1), expires_at, ?2 \
         FROM temp.listed WHERE true ORDER BY rowid \
         ON CONFLICT (prefix) DO UPDATE SET reason = excluded.reason, \
         expires_at = excluded.expires_at, source = excluded.source, \
         created_at = iif(bans.expires_at IS NULL OR bans.expires_at > ?1, \
                          bans.created_at, excluded.created_at)",
        params![seconds(now), origin.source],
    )
    .map_err(db)?;
    tx.execute(
        "INSERT INTO history (at, action, prefix, source, reason, actor) \
         SELECT ?1, 'ban', prefix, ?2, reason, ?3 FROM temp.listed ORDER BY rowid",
        params![seconds(now), origin.source, origin.actor],
    )
    .map_err(db)?;
    for sql in &triggers {
        tx.execute_batch(sql).map_err(db)?;
    }
    recount(&tx, path, capacity)?;
    tx.execute(
        "INSERT INTO counters (source, issued) VALUES (?1, ?2) \
         ON CONFLICT (source) DO UPDATE SET issued = issued + excluded.issued",
        params![origin.source, nets.len() as i64],
    )
    .map_err(db)?;
    tx.commit().map_err(db)?;
    let checkpoint = {
        let path = path.to_path_buf();
        std::thread::spawn(move || {
            let conn = connect(&path, false)?;
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                .map_err(|err| invalid(&path, err))
        })
    };
    Ok(Imported {
        conn,
        path: path.to_path_buf(),
        history_before,
        nets,
        checkpoint: Some(checkpoint),
    })
}

/// Takes out of `temp.listed` and `nets` the prefixes of bans in force whose reason is not
/// `reason`.
fn keep_others(
    tx: &Transaction,
    path: &Path,
    now: Timestamp,
    reason: &str,
    nets: &mut Vec<IpNet>,
) -> Result<()> {
    let db = |err: rusqlite::Error| invalid(path, err);
    const HELD: &str = "FROM main.bans WHERE bans.prefix = listed.prefix \
         AND bans.reason IS NOT ?1 AND (bans.expires_at IS NULL OR bans.expires_at > ?2)";
    let held: Vec<String> = tx
        .prepare(&format!(
            "SELECT DISTINCT prefix FROM temp.listed WHERE EXISTS (SELECT 1 {HELD})"
        ))
        .and_then(|mut statement| {
            statement
                .query_map(params![reason, seconds(now)], |row| row.get(0))?
                .collect()
        })
        .map_err(db)?;
    if held.is_empty() {
        return Ok(());
    }
    tx.execute(
        &format!("DELETE FROM temp.listed WHERE EXISTS (SELECT 1 {HELD})"),
        params![reason, seconds(now)],
    )
    .map_err(db)?;
    let held: std::collections::HashSet<String> = held.into_iter().collect();
    nets.retain(|net| !held.contains(&net.to_string()));
    Ok(())
}

/// Writes the allowlist entries staged in `temp.allowed` with `reason`, keeping the rows they
/// replace in `temp.replaced_allow` for an undo. Like any writer, it records a history row
/// only for an entry that changes.
fn write_allows(
    tx: &Transaction,
    path: &Path,
    origin: &Origin,
    now: Timestamp,
    reason: &str,
) -> Result<()> {
    let db = |err: rusqlite::Error| invalid(path, err);
    tx.execute_batch(
        "INSERT INTO temp.replaced_allow SELECT allow.* \
         FROM temp.allowed CROSS JOIN main.allow ON allow.prefix = allowed.prefix",
    )
    .map_err(db)?;
    tx.execute(
        "INSERT INTO history (at, action, prefix, source, reason, actor) \
         SELECT ?1, 'allow', allowed.prefix, ?2, ?3, ?4 \
         FROM temp.allowed LEFT JOIN main.allow ON allow.prefix = allowed.prefix \
         WHERE allow.reason IS NOT ?3 ORDER BY allowed.rowid",
        params![seconds(now), origin.source, reason, origin.actor],
    )
    .map_err(db)?;
    tx.execute(
        "INSERT INTO allow (prefix, family, reason, created_at, source) \
         SELECT prefix, family, ?3, ?1, ?2 FROM temp.allowed WHERE true \
         ON CONFLICT (prefix) DO UPDATE SET reason = excluded.reason, source = excluded.source",
        params![seconds(now), origin.source, reason],
    )
    .map_err(db)?;
    Ok(())
}

/// Drops the [`COUNT_TRIGGERS`] for the rest of transaction `tx`; returns their SQL, to be
/// created again before it commits.
pub(super) fn drop_count_triggers(tx: &Transaction, path: &Path) -> Result<Vec<String>> {
    let db = |err: rusqlite::Error| invalid(path, err);
    let mut triggers = Vec::new();
    for name in COUNT_TRIGGERS {
        let sql: Option<String> = tx
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?1",
                [name],
                |row| row.get(0),
            )
            .optional()
            .map_err(db)?;
        if let Some(sql) = sql {
            tx.execute_batch(&format!("DROP TRIGGER {name}"))
                .map_err(db)?;
            triggers.push(sql);
        }
    }
    Ok(triggers)
}

/// Sets the kept counts of the bans from what is stored, by index; a family with more bans
/// than its map holds is [`Error::MapFull`].
pub(super) fn recount(tx: &Transaction, path: &Path, capacity: &Capacity) -> Result<()> {
    let db = |err: rusqlite::Error| invalid(path, err);
    let count = |sql: &str| -> Result<i64> { tx.query_row(sql, [], |row| row.get(0)).map_err(db) };
    let v4 = count("SELECT count(*) FROM bans WHERE family = 4")?;
    let v6 = count("SELECT count(*) FROM bans WHERE family = 6")?;
    for (stored, (map, capacity)) in [(v4, capacity.v4), (v6, capacity.v6)] {
        if stored > i64::from(capacity) {
            return Err(Error::MapFull { map, capacity });
        }
    }
    let temporary = count("SELECT count(*) FROM bans WHERE expires_at IS NOT NULL")?;
    tx.execute(
        "UPDATE kept_counts SET entries = CASE kind \
         WHEN 'BAN_V4' THEN ?1 WHEN 'BAN_V6' THEN ?2 \
         WHEN 'temporary' THEN ?3 ELSE ?1 + ?2 - ?3 END \
         WHERE kind IN ('BAN_V4', 'BAN_V6', 'temporary', 'permanent')",
        params![v4, v6, temporary],
    )
    .map_err(db)?;
    Ok(())
}

/// Streams `rows` into `temp.listed`, in a transaction of the temporary database only (the
/// state's write lock is not held while the list is read). Returns the prefixes, in list order.
fn stage(
    conn: &mut Connection,
    path: &Path,
    rows: impl Iterator<Item = Result<ImportRow>>,
) -> Result<Vec<IpNet>> {
    let db = |err: rusqlite::Error| invalid(path, err);
    let tx = conn.transaction().map_err(db)?;
    let insert = |rows: usize| {
        let row = format!("({})", ["?"; STAGED_COLUMNS].join(", "));
        let values = vec![row; rows].join(", ");
        format!("INSERT INTO temp.listed VALUES {values}")
    };
    let mut nets = Vec::new();
    {
        let mut insert_full = tx.prepare(&insert(STAGED_PER_INSERT)).map_err(db)?;
        let mut values = Vec::with_capacity(STAGED_PER_INSERT * STAGED_COLUMNS);
        for row in rows {
            let row = row?;
            let (family, first, len) = range_columns(&row.net);
            values.extend([
                Value::Text(row.net.to_string()),
                Value::Integer(family),
                Value::Blob(first),
                Value::Integer(len.into()),
                row.reason.map_or(Value::Null, Value::Text),
                row.created_at
                    .map_or(Value::Null, |at| Value::Integer(seconds(at))),
                row.expires_at
                    .map_or(Value::Null, |at| Value::Integer(expiry_seconds(at))),
            ]);
            nets.push(row.net);
            if values.len() == STAGED_PER_INSERT * STAGED_COLUMNS {
                insert_full
                    .execute(params_from_iter(values.drain(..)))
                    .map_err(db)?;
            }
        }
        if !values.is_empty() {
            tx.prepare(&insert(values.len() / STAGED_COLUMNS))
                .and_then(|mut rest| rest.execute(params_from_iter(values)))
                .map_err(db)?;
        }
    }
    tx.commit().map_err(db)?;
    Ok(nets)
}

/// Takes a committed import back: the bans and allowlist entries it added are removed, the
/// ones it replaced restored, its history rows and count dropped. Returns the bans it had
/// added.
pub fn undo_import(imported: &mut Imported, origin: &Origin) -> Result<Vec<IpNet>> {
    let path = imported.path.clone();
    let db = |err: rusqlite::Error| invalid(&path, err);
    let tx = imported
        .conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(db)?;
    {
        let mut remove = tx
            .prepare("DELETE FROM bans WHERE prefix = ?1")
            .map_err(db)?;
        for net in &imported.nets {
            remove.execute([net.to_string()]).map_err(db)?;
        }
    }
    let mut kept = std::collections::HashSet::new();
    {
        let mut replaced = tx.prepare("SELECT prefix FROM temp.replaced").map_err(db)?;
        let mut rows = replaced.query([]).map_err(db)?;
        while let Some(row) = rows.next().map_err(db)? {
            let text: String = row.get(0).map_err(db)?;
            kept.insert(super::prefix(&path, &text)?);
        }
    }
    tx.execute("INSERT INTO bans SELECT * FROM temp.replaced", [])
        .map_err(db)?;
    tx.execute_batch(
        "DELETE FROM allow WHERE prefix IN (SELECT prefix FROM temp.allowed);
         INSERT INTO allow SELECT * FROM temp.replaced_allow;",
    )
    .map_err(db)?;
    tx.execute(
        "DELETE FROM history WHERE id > ?1",
        [imported.history_before],
    )
    .map_err(db)?;
    tx.execute(
        "UPDATE counters SET issued = max(issued - ?2, 0) WHERE source = ?1",
        params![origin.source, imported.nets.len() as i64],
    )
    .map_err(db)?;
    // A source's row is made by its first ban: the undo of that ban leaves no row behind.
    tx.execute(
        "DELETE FROM counters WHERE source = ?1 AND issued = 0",
        [&origin.source],
    )
    .map_err(db)?;
    tx.commit().map_err(db)?;
    Ok(imported
        .nets
        .iter()
        .filter(|net| !kept.contains(net))
        .copied()
        .collect())
}

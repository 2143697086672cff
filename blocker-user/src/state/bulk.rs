//! Bulk import: a list of bans streamed into the database in one transaction, with a history
//! row each, in memory that does not grow with the list (the prefixes written are kept, for
//! the maps; the rows they replaced are kept in a temporary table, for an undo).

use std::{collections::HashSet, path::Path};

use ipnet::IpNet;
use jiff::Timestamp;
use rusqlite::params;

use rusqlite::Connection;

use super::{connect, expiry_seconds, invalid, range_columns, seconds, Origin};
use crate::{Error, Result};

/// The page cache of a bulk import: SQLite takes a negative size in KiB.
const BULK_CACHE_KIB: i64 = -64 * 1024;

/// One ban of the list.
pub struct ImportRow {
    pub net: IpNet,
    pub reason: Option<String>,
    pub expires_at: Option<Timestamp>,
}

/// A committed import: what [`undo_import`] needs to take it back (the replaced rows live in
/// a temporary table of this connection).
pub struct Imported {
    conn: Connection,
    path: std::path::PathBuf,
    history_before: i64,
    /// Every prefix the list wrote.
    pub nets: HashSet<IpNet>,
}

/// The most bans each family's map holds, checked before the import commits.
pub struct Capacity {
    pub v4: (&'static str, u32),
    pub v6: (&'static str, u32),
}

/// Writes `rows` as bans in one transaction (an existing ban is replaced, keeping its creation
/// time while it is in force) and counts them as issued by `origin.source`. The first error
/// of `rows`, or a result that would not fit the maps, stores nothing.
pub fn import_bans(
    path: &Path,
    origin: &Origin,
    now: Timestamp,
    capacity: &Capacity,
    rows: impl Iterator<Item = Result<ImportRow>>,
) -> Result<Imported> {
    let mut conn = connect(path, true)?;
    let db = |err: rusqlite::Error| invalid(path, err);
    // A list touches pages all over the indexes: a larger cache writes each of them to the
    // WAL fewer times over the transaction (about 20% faster for 200k rows into 1M).
    conn.pragma_update(None, "cache_size", BULK_CACHE_KIB)
        .map_err(db)?;
    conn.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS replaced AS SELECT * FROM bans WHERE 0;
         DELETE FROM temp.replaced;",
    )
    .map_err(db)?;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(db)?;
    let history_before: i64 = tx
        .query_row("SELECT coalesce(max(id), 0) FROM history", [], |row| {
            row.get(0)
        })
        .map_err(db)?;
    let mut nets = HashSet::new();
    {
        let mut keep_replaced = tx
            .prepare("INSERT INTO temp.replaced SELECT * FROM bans WHERE prefix = ?1")
            .map_err(db)?;
        let mut upsert = tx
            .prepare(
                "INSERT INTO bans (prefix, family, first, len, reason, created_at, expires_at, source) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT (prefix) DO UPDATE SET reason = excluded.reason, \
                 expires_at = excluded.expires_at, source = excluded.source, \
                 created_at = iif(bans.expires_at IS NULL OR bans.expires_at > ?6, \
                                  bans.created_at, excluded.created_at)",
            )
            .map_err(db)?;
        let mut history = tx
            .prepare(
                "INSERT INTO history (at, action, prefix, source, reason, actor) \
                 VALUES (?1, 'ban', ?2, ?3, ?4, ?5)",
            )
            .map_err(db)?;
        for row in rows {
            let row = row?;
            let text = row.net.to_string();
            let fresh = nets.insert(row.net);
            if fresh {
                keep_replaced.execute([&text]).map_err(db)?;
            }
            let (family, first, len) = range_columns(&row.net);
            upsert
                .execute(params![
                    text,
                    family,
                    first,
                    len,
                    row.reason,
                    seconds(now),
                    row.expires_at.map(expiry_seconds),
                    origin.source
                ])
                .map_err(db)?;
            history
                .execute(params![
                    seconds(now),
                    text,
                    origin.source,
                    row.reason,
                    origin.actor
                ])
                .map_err(db)?;
        }
    }
    for (family, (map, capacity)) in [(4, capacity.v4), (6, capacity.v6)] {
        let stored: i64 = tx
            .query_row(
                "SELECT count(*) FROM bans WHERE family = ?1",
                [family],
                |row| row.get(0),
            )
            .map_err(db)?;
        if stored > i64::from(capacity) {
            return Err(Error::MapFull { map, capacity });
        }
    }
    tx.execute(
        "INSERT INTO counters (source, issued) VALUES (?1, ?2) \
         ON CONFLICT (source) DO UPDATE SET issued = issued + excluded.issued",
        params![origin.source, nets.len() as i64],
    )
    .map_err(db)?;
    tx.commit().map_err(db)?;
    Ok(Imported {
        conn,
        path: path.to_path_buf(),
        history_before,
        nets,
    })
}

/// Takes a committed import back: the bans it added are removed, the ones it replaced
/// restored, its history rows and count dropped. Returns the bans it had added.
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
    let mut kept = HashSet::new();
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
    tx.commit().map_err(db)?;
    Ok(imported
        .nets
        .iter()
        .filter(|net| !kept.contains(net))
        .copied()
        .collect())
}

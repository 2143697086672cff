//! `blocker top`'s recent events, without taking any from the daemon (the kernel's event ring
//! has one consumer): the newest rows of the state database's history (bans, unbans, expiries,
//! allowlist changes, with their source), and for the kernel-only dynamic blacklist, what
//! changed between two readings of it.

use std::{collections::BTreeMap, path::Path, time::Duration};

use blocker::state::Listed;
use jiff::Timestamp;
use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

/// History rows read per refresh: more than any screen shows; an import of a million bans
/// shows its newest rows, not all of them.
const MAX_ROWS: i64 = 100;
/// How long a read waits for a writer; a longer lock shows as "state unavailable".
const BUSY_WAIT: Duration = Duration::from_millis(200);

/// The newest history rows after a cursor: a range of the row ids, however long the history.
const NEWEST_ROWS: &str = "SELECT id, at, action, prefix, source, reason FROM history \
                           WHERE id > ?1 ORDER BY id DESC LIMIT ?2";

/// One change of what is blocked or allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub at: Timestamp,
    /// From the history: `ban`, `unban`, `expire`, `allow`, `disallow`; from the dynamic
    /// blacklist: `blacklisted`, `expired`, `removed`.
    pub action: String,
    pub prefix: String,
    /// `cli`, `import`, `offense`, `log`, `expiry`... or `rule` for the dynamic blacklist.
    pub source: String,
    /// The ban's reason; for the dynamic blacklist, the rule's name.
    pub reason: Option<String>,
}

/// The history rows after a cursor, and the cursor past them.
#[derive(Debug, Clone, Default)]
pub struct HistoryRead {
    pub events: Vec<Event>,
    /// The newest row id seen; the next read starts after it.
    pub last_id: i64,
}

/// The history rows after `after` (the newest [`MAX_ROWS`] of them), oldest first; with no
/// cursor yet, the newest rows. Reads through a read-only connection that waits at most
/// [`BUSY_WAIT`] for a writer. `None` when the database is missing, locked or unreadable.
pub fn read_history(path: &Path, after: Option<i64>) -> Option<HistoryRead> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).ok()?;
    conn.busy_timeout(BUSY_WAIT).ok()?;
    let newest: i64 = conn
        .query_row("SELECT coalesce(max(id), 0) FROM history", [], |row| {
            row.get(0)
        })
        .ok()?;
    // An undone change deletes its rows and their ids are given again: go back to the newest
    // row, or every new row would be skipped until the ids pass the old cursor.
    let after = after.unwrap_or(0).min(newest);
    let mut statement = conn.prepare(NEWEST_ROWS).ok()?;
    let rows = statement
        .query_map([after, MAX_ROWS], |row| {
            Ok((
                row.get::<_, i64>(1)?,
                Event {
                    at: Timestamp::UNIX_EPOCH,
                    action: row.get(2)?,
                    prefix: row.get(3)?,
                    source: row.get(4)?,
                    reason: row.get(5)?,
                },
            ))
        })
        .ok()?;
    let mut events = Vec::new();
    for row in rows {
        let (seconds, mut event) = row.ok()?;
        event.at = Timestamp::from_second(seconds).ok()?;
        events.push(event);
    }
    events.reverse();
    Some(HistoryRead {
        events,
        last_id: newest,
    })
}

/// The dynamic blacklist's changes from `before` to `after` (both read from the kernel),
/// at `now`: new sources, or ones blacklisted again (their entry had run out by `now`, yet
/// it is in force: a later expiry alone is a refresh, which every packet of a source on a
/// refreshing rule makes), and sources gone, `expired` when their time was up by `now`, else
/// `removed`.
pub fn blacklist_changes(before: &[Listed], after: &[Listed], now: Timestamp) -> Vec<Event> {
    let earlier: BTreeMap<&str, &Listed> = before.iter().map(|l| (l.addr.as_str(), l)).collect();
    let later: BTreeMap<&str, &Listed> = after.iter().map(|l| (l.addr.as_str(), l)).collect();
    let event = |action: &str, listed: &Listed, at: Timestamp| Event {
        at,
        action: action.into(),
        prefix: listed.addr.clone(),
        source: "rule".into(),
        reason: listed.rule.clone(),
    };
    let mut events: Vec<Event> = later
        .iter()
        .filter(|(addr, _)| {
            earlier
                .get(*addr)
                .is_none_or(|old| old.expires_at.is_some_and(|expiry| expiry <= now))
        })
        .map(|(_, listed)| event("blacklisted", listed, now))
        .collect();
    events.extend(
        earlier
            .iter()
            .filter(|(addr, _)| !later.contains_key(*addr))
            .map(|(_, listed)| {
                let expiry = listed.expires_at.filter(|expiry| *expiry <= now);
                match expiry {
                    Some(expiry) => event("expired", listed, expiry),
                    None => event("removed", listed, now),
                }
            }),
    );
    events.sort_by_key(|event| event.at);
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(addr: &str, expires: &str) -> Listed {
        crate::cli::top_data::tests::listed(addr, 3, expires, "ssh")
    }

    fn actions(events: &[Event]) -> Vec<(&str, &str)> {
        events
            .iter()
            .map(|e| (e.action.as_str(), e.prefix.as_str()))
            .collect()
    }

    #[test]
    fn blacklist_diff_names_new_again_expired_and_removed_sources() {
        let now: Timestamp = "2026-12-02T03:00:10Z".parse().expect("time");
        let before = vec![
            listed("192.0.2.1/32", "2026-12-02T04:00:00Z"),
            listed("192.0.2.2/32", "2026-12-02T03:00:05Z"),
            listed("192.0.2.3/32", "2026-12-02T05:00:00Z"),
            listed("192.0.2.4/32", "2026-12-02T03:00:09Z"),
        ];
        let after = vec![
            // Refreshed by its packets: still the same blacklisting.
            listed("192.0.2.1/32", "2026-12-02T04:00:05Z"),
            // Blacklisted again after it expired.
            listed("192.0.2.4/32", "2026-12-02T04:00:10Z"),
            listed("2001:db8::/64", "2026-12-02T04:00:10Z"),
        ];
        let events = blacklist_changes(&before, &after, now);
        assert_eq!(
            actions(&events),
            [
                ("expired", "192.0.2.2/32"),
                ("blacklisted", "192.0.2.4/32"),
                ("blacklisted", "2001:db8::/64"),
                ("removed", "192.0.2.3/32"),
            ]
        );
        let expired = &events[0];
        assert_eq!(expired.at, "2026-12-02T03:00:05Z".parse().expect("time"));
        assert!(events
            .iter()
            .all(|e| e.source == "rule" && e.reason.as_deref() == Some("ssh")));
        assert!(blacklist_changes(&after, &after, now).is_empty());
    }

    #[test]
    fn history_is_read_after_the_cursor_and_missing_state_is_unavailable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.db");
        assert!(read_history(&path, None).is_none());
        assert!(!path.exists(), "a read-only open creates nothing");
        let conn = Connection::open(&path).expect("db");
        conn.execute_batch(
            "CREATE TABLE history (id INTEGER PRIMARY KEY, at INTEGER NOT NULL, \
             action TEXT NOT NULL, prefix TEXT NOT NULL, source TEXT NOT NULL, \
             reason TEXT, actor TEXT);",
        )
        .expect("schema");
        let insert = |action: &str, prefix: &str, source: &str| {
            conn.execute(
                "INSERT INTO history (at, action, prefix, source, reason) \
                 VALUES (1796180000, ?1, ?2, ?3, 'why')",
                [action, prefix, source],
            )
            .expect("insert")
        };
        for n in 0..150 {
            insert("ban", &format!("10.0.{}.{}/32", n / 256, n % 256), "import");
        }
        let first = read_history(&path, None).expect("readable");
        assert_eq!(first.events.len(), MAX_ROWS as usize);
        assert_eq!(first.events.last().expect("rows").prefix, "10.0.0.149/32");
        assert_eq!(first.last_id, 150);
        insert("unban", "10.0.0.7/32", "cli");
        insert("ban", "198.51.100.0/24", "offense");
        let next = read_history(&path, Some(first.last_id)).expect("readable");
        assert_eq!(
            actions(&next.events),
            [("unban", "10.0.0.7/32"), ("ban", "198.51.100.0/24")]
        );
        assert_eq!(next.events[1].source, "offense");
        assert_eq!(next.events[1].reason.as_deref(), Some("why"));
        // Rows deleted by an undo: the cursor falls back to the newest row, and the rows
        // written next (with the deleted rows' ids) are read.
        conn.execute("DELETE FROM history WHERE id > 150", [])
            .expect("undo");
        let after_undo = read_history(&path, Some(next.last_id)).expect("readable");
        assert_eq!(after_undo.last_id, 150);
        insert("allow", "192.0.2.9/32", "cli");
        let reused = read_history(&path, Some(after_undo.last_id)).expect("readable");
        assert_eq!(actions(&reused.events), [("allow", "192.0.2.9/32")]);

        // Cheap at any size: the rows are found by the id, not by a scan or a sort.
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {NEWEST_ROWS}"))
            .expect("plan")
            .query_map([0, MAX_ROWS], |row| row.get::<_, String>(3))
            .expect("plan")
            .collect::<Result<_, _>>()
            .expect("plan");
        assert_eq!(
            plan,
            ["SEARCH history USING INTEGER PRIMARY KEY (rowid>?)"],
            "{plan:?}"
        );

        // A writer holding the lock: unavailable after a short wait, not an error or a hang.
        let mut writer = Connection::open(&path).expect("db");
        let lock = writer
            .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
            .expect("lock");
        assert!(read_history(&path, Some(0)).is_none());
        drop(lock);
        assert!(read_history(&path, Some(0)).is_some());
    }
}

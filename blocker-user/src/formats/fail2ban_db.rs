//! fail2ban's SQLite database (`/var/lib/fail2ban/fail2ban.sqlite3`): the bans in force in its
//! `bans` table, each with its jail and time as reason and its end from `bantime` (negative
//! is permanent). The database is opened read-only, so a running fail2ban is not disturbed.

use std::path::Path;

use jiff::{SignedDuration, Timestamp};
use rusqlite::{Connection, OpenFlags};

use super::{Entry, Options};
use crate::{addr::parse_net, Error, Result};

/// The bans in force at `options.now`, a later row of an address after an earlier one (so an
/// import keeps the longest).
pub fn read(path: &Path, source: &str, options: &Options) -> Result<Vec<Entry>> {
    let unreadable = |message: String| Error::UnreadableInput {
        path: source.to_string(),
        message: format!("fail2ban-db format: {message}"),
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|err| unreadable(err.to_string()))?;
    let now = options.now.as_second();
    let mut query = conn
        .prepare(
            "SELECT rowid, jail, ip, timeofban, bantime FROM bans \
             WHERE bantime < 0 OR timeofban + bantime > ?1 \
             ORDER BY bantime < 0, timeofban + bantime, rowid",
        )
        .map_err(|err| unreadable(format!("{err} (is this fail2ban's database?)")))?;
    let rows = query
        .query_map([now], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Option<String>>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, i64>(4)?,
            ))
        })
        .map_err(|err| unreadable(err.to_string()))?;
    let mut entries = Vec::new();
    for row in rows {
        let (rowid, jail, ip, time_of_ban, bantime) =
            row.map_err(|err| unreadable(err.to_string()))?;
        let bad_row = |message: String| Error::InvalidListLine {
            path: source.to_string(),
            line: usize::try_from(rowid).unwrap_or(0),
            message: format!("fail2ban-db format: bans row {rowid}: {message}"),
        };
        let ip = ip.ok_or_else(|| bad_row("no address".to_string()))?;
        let parsed = parse_net(&ip).map_err(|err| bad_row(err.to_string()))?;
        let banned_at = Timestamp::from_second(time_of_ban)
            .map_err(|_| bad_row("timeofban out of range".into()))?;
        // fail2ban's negative bantime is a permanent ban; one past the calendar is an error,
        // not another permanent ban.
        let expires_at = (bantime >= 0)
            .then(|| banned_at.checked_add(SignedDuration::from_secs(bantime)))
            .transpose()
            .map_err(|_| bad_row(format!("bantime {bantime} out of range")))?;
        // A jail name is the operator's, but bounded here so the reason stays within limits.
        let jail: String = crate::text::escape(&jail).chars().take(100).collect();
        entries.push(Entry {
            net: parsed.net,
            reason: Some(format!("fail2ban jail {jail}, banned {banned_at}")),
            created_at: Some(banned_at),
            undated_because: None,
            expires_at,
            allow: false,
            line: usize::try_from(rowid).unwrap_or(0),
            normalized_from: parsed.normalized_from,
        });
    }
    Ok(entries)
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::formats::test_options;

    /// A database with fail2ban's own schema (fail2ban/server/database.py, version 4) and
    /// bans: one lifted an hour ago, one in force, one permanent.
    pub fn fail2ban_database(path: &Path, now: i64) {
        let conn = Connection::open(path).expect("a database");
        conn.execute_batch(
            "CREATE TABLE fail2banDb(version INTEGER);
             INSERT INTO fail2banDb VALUES (4);
             CREATE TABLE jails(name TEXT NOT NULL UNIQUE, enabled INTEGER NOT NULL DEFAULT 1);
             CREATE TABLE bans(jail TEXT NOT NULL, ip TEXT, timeofban INTEGER NOT NULL,
                 bantime INTEGER NOT NULL, bancount INTEGER NOT NULL default 1, data JSON,
                 FOREIGN KEY(jail) REFERENCES jails(name));
             INSERT INTO jails VALUES ('sshd', 1), ('recidive', 1);",
        )
        .expect("the schema");
        for (jail, ip, ago, bantime) in [
            ("sshd", "198.51.100.7", 7200, 3600),
            ("sshd", "198.51.100.8", 600, 3600),
            ("recidive", "2001:db8::8", 60, -1),
        ] {
            conn.execute(
                "INSERT INTO bans (jail, ip, timeofban, bantime, bancount, data) \
                 VALUES (?1, ?2, ?3, ?4, 1, '{}')",
                rusqlite::params![jail, ip, now - ago, bantime],
            )
            .expect("a ban");
        }
    }

    #[test]
    fn reads_the_bans_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fail2ban.sqlite3");
        let options = test_options();
        let now = options.now.as_second();
        fail2ban_database(&path, now);
        assert!(crate::formats::detect::is_sqlite(&path));
        let entries = read(&path, "f2b", &options).unwrap();
        let nets: Vec<String> = entries.iter().map(|e| e.net.to_string()).collect();
        assert_eq!(nets, ["198.51.100.8/32", "2001:db8::8/128"]);
        assert_eq!(
            entries[0].expires_at,
            Some(Timestamp::from_second(now - 600 + 3600).unwrap())
        );
        assert_eq!(entries[1].expires_at, None);
        let reason = entries[0].reason.as_deref().unwrap();
        assert!(
            reason.starts_with("fail2ban jail sshd, banned "),
            "{reason}"
        );
    }

    #[test]
    fn a_bantime_past_the_calendar_is_an_error_not_a_permanent_ban() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fail2ban.sqlite3");
        let options = test_options();
        fail2ban_database(&path, options.now.as_second());
        Connection::open(&path)
            .unwrap()
            .execute(
                "UPDATE bans SET bantime = 300000000000 WHERE ip = '198.51.100.8'",
                [],
            )
            .unwrap();
        let err = read(&path, "f2b", &options).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
    }

    #[test]
    fn another_database_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t(x)")
            .unwrap();
        let err = read(&path, "other.db", &test_options()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read other.db: fail2ban-db format: no such table: bans"),
            "{err}"
        );
    }
}

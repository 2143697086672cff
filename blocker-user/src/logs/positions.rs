//! Where each jail stopped reading, kept in the state database (`log_positions`): a file's
//! inode and byte offset after the last whole line processed, or the journal's cursor. A
//! restarted daemon resumes there, so no line counts twice and none written while it was down
//! is missed.

use std::{collections::HashMap, path::Path};

use rusqlite::params;

use crate::{Error, Result};

/// Schema version 2: adds the followers' positions.
pub(crate) const SCHEMA_V2: &str = "
CREATE TABLE log_positions (
    jail   TEXT NOT NULL,
    source TEXT NOT NULL,
    inode  INTEGER,
    offset INTEGER,
    cursor TEXT,
    PRIMARY KEY (jail, source)
);
";

/// Where one source was left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// A file: its inode, and the offset just past the last complete line read.
    File { inode: u64, offset: u64 },
    /// The journal: the cursor of the last entry read.
    Journal { cursor: String },
}

/// The positions in one state database. Each call opens its own connection and closes it:
/// a connection held open would share the process's POSIX locks on the file with every other
/// opener of the database in the daemon, and lose them when one of those closes it.
pub struct Positions {
    path: std::path::PathBuf,
}

fn db(path: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |err| Error::State {
        path: path.to_path_buf(),
        message: format!("log positions: {err}"),
    }
}

impl Positions {
    /// Opens (creating when missing) the state database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        crate::state::open(path, true)?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    fn connect(&self) -> Result<crate::state::Pooled> {
        crate::state::open(&self.path, true)
    }

    /// Every source's position in `jail`, keyed by source (a path, or `journal`).
    pub fn load(&self, jail: &str) -> Result<HashMap<String, Position>> {
        let err = db(&self.path);
        let conn = self.connect()?;
        let mut statement = conn
            .prepare("SELECT source, inode, offset, cursor FROM log_positions WHERE jail = ?1")
            .map_err(&err)?;
        let rows = statement
            .query_map([jail], |row| {
                let source: String = row.get(0)?;
                let inode: Option<i64> = row.get(1)?;
                let offset: Option<i64> = row.get(2)?;
                let cursor: Option<String> = row.get(3)?;
                Ok((source, inode, offset, cursor))
            })
            .map_err(&err)?;
        let mut positions = HashMap::new();
        for row in rows {
            let (source, inode, offset, cursor) = row.map_err(&err)?;
            let position = match (inode, offset, cursor) {
                (_, _, Some(cursor)) => Position::Journal { cursor },
                (Some(inode), Some(offset), None) => Position::File {
                    inode: inode as u64,
                    offset: offset.max(0) as u64,
                },
                _ => continue,
            };
            positions.insert(source, position);
        }
        Ok(positions)
    }

    /// Writes the positions of `jail`'s sources in one transaction.
    pub fn save<'a>(
        &self,
        jail: &str,
        positions: impl IntoIterator<Item = (&'a str, &'a Position)>,
    ) -> Result<()> {
        let err = db(&self.path);
        let mut conn = self.connect()?;
        let tx = conn.transaction().map_err(&err)?;
        {
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO log_positions (jail, source, inode, offset, cursor) \
                     VALUES (?1, ?2, ?3, ?4, ?5) \
                     ON CONFLICT (jail, source) DO UPDATE SET \
                     inode = excluded.inode, offset = excluded.offset, cursor = excluded.cursor",
                )
                .map_err(&err)?;
            for (source, position) in positions {
                let (inode, offset, cursor) = match position {
                    Position::File { inode, offset } => {
                        (Some(*inode as i64), Some(*offset as i64), None)
                    }
                    Position::Journal { cursor } => (None, None, Some(cursor.as_str())),
                };
                upsert
                    .execute(params![jail, source, inode, offset, cursor])
                    .map_err(&err)?;
            }
        }
        tx.commit().map_err(&err)
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::*;

    #[test]
    fn positions_round_trip_and_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let positions = Positions::open(&path).unwrap();
        let file = Position::File {
            inode: 42,
            offset: 1000,
        };
        let journal = Position::Journal {
            cursor: "s=abc;i=1".into(),
        };
        positions
            .save(
                "sshd",
                [("/var/log/auth.log", &file), ("journal", &journal)],
            )
            .unwrap();
        let moved = Position::File {
            inode: 43,
            offset: 7,
        };
        positions
            .save("sshd", [("/var/log/auth.log", &moved)])
            .unwrap();
        positions.save("web", [("/x.log", &file)]).unwrap();
        let reopened = Positions::open(&path).unwrap();
        let sshd = reopened.load("sshd").unwrap();
        assert_eq!(sshd.len(), 2);
        assert_eq!(sshd["/var/log/auth.log"], moved);
        assert_eq!(sshd["journal"], journal);
        assert_eq!(reopened.load("web").unwrap()["/x.log"], file);
        assert!(reopened.load("none").unwrap().is_empty());
    }

    #[test]
    fn a_version_1_database_is_migrated_to_the_current_schema_keeping_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(crate::state::SCHEMA_V1).unwrap();
            conn.execute(
                "INSERT INTO counters (source, issued) VALUES ('offense', 3)",
                [],
            )
            .unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            let missing = conn.prepare("SELECT * FROM log_positions");
            assert!(missing.is_err(), "version 1 has no positions");
        }
        let positions = Positions::open(&path).unwrap();
        positions
            .save(
                "sshd",
                [(
                    "a",
                    &Position::File {
                        inode: 1,
                        offset: 2,
                    },
                )],
            )
            .unwrap();
        let conn = Connection::open(&path).unwrap();
        let version: i32 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, crate::state::SCHEMA_VERSION);
        let issued: i64 = conn
            .query_row(
                "SELECT issued FROM counters WHERE source = 'offense'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(issued, 3, "rows of version 1 are kept");
    }
}

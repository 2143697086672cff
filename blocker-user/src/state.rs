//! The state: every manual ban and allowlist entry with its reason, creation time and
//! wall-clock expiry, the rules, offense scores, counters and a history of every change. It
//! lives in one SQLite database (WAL, `synchronous=FULL`: a commit is on disk when it returns),
//! is what `blocker load` restores after a reboot, and writers change only the rows that
//! differ, in one transaction. The layout is in the README ("The state database").

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{ErrorKind, Read},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use jiff::Timestamp;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};

mod bulk;
mod merge;

/// Stores one ban, replacing the row of its prefix: ?1 prefix, ?2 reason, ?3 created_at,
/// ?4 expires_at, ?5 source, ?6 family, ?7 first, ?8 len ([`range_columns`]).
const UPSERT_BAN: &str = "INSERT INTO bans \
     (prefix, family, first, len, reason, created_at, expires_at, source) \
     VALUES (?1, ?6, ?7, ?8, ?2, ?3, ?4, ?5) \
     ON CONFLICT (prefix) DO UPDATE SET reason = excluded.reason, \
     created_at = excluded.created_at, expires_at = excluded.expires_at, \
     source = excluded.source";
mod pool;

pub use bulk::{import_bans, undo_import, Capacity, ImportAllows, ImportRow, Imported, Replace};
pub use merge::{
    bans_of, local_changes, merge_bans, Decided, LocalChanges, Merged, Table, FLEET_SOURCE,
};
pub use pool::{keep_connections, Pooled};

use crate::{
    offense::{BanHistory, OffenseBook, Score},
    rules::RuleTable,
    Error, Result,
};

/// Default location of the state database.
pub const DEFAULT_STATE_PATH: &str = "/var/lib/blocker/state.db";

/// Where releases before the database kept the state: imported on first use.
pub const OLD_DEFAULT_STATE_PATH: &str = "/var/lib/blocker/state.json";

/// The version of the JSON state file of earlier releases.
const JSON_FORMAT_VERSION: u32 = 1;

/// `PRAGMA user_version` of the schema this release writes; [`migrate`] brings older ones up.
pub const SCHEMA_VERSION: i32 = 4;

/// The page cache of a connection (SQLite takes a negative size in KiB). The inner pages of
/// the indexes of a million bans take several MiB; with SQLite's default of 2 MiB, every small
/// write read them again (the daemon issued 2,000 bans/s from offenses with 1M stored, 3,200
/// with this cache). A process that keeps connections caps them together ([`pool`]).
const PAGE_CACHE_KIB: i64 = -16 * 1024;

/// How long a writer waits for another one (CLI and daemon) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Prepared statements a connection keeps: a batch of the daemon's offenses runs about 30
/// distinct ones, and preparing one again costs more than running it.
const STATEMENT_CACHE: usize = 64;

const SQLITE_MAGIC: &[u8] = b"SQLite format 3\0";

/// What blocker remembers about one prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub reason: Option<String>,
    pub created_at: Timestamp,
    /// `None` for permanent bans and allowlist entries.
    pub expires_at: Option<Timestamp>,
}

impl Entry {
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|expiry| expiry <= now)
    }

    /// `permanent` or `temporary` for a ban.
    pub fn ban_kind(&self) -> &'static str {
        if self.expires_at.is_some() {
            "temporary"
        } else {
            "permanent"
        }
    }
}

/// One entry as `blocker list --json` and `GET /v1/bans` show it.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub addr: String,
    /// `permanent`, `temporary`, `allow` or `dynamic`.
    pub kind: &'static str,
    pub expires_at: Option<Timestamp>,
    pub reason: Option<String>,
    pub created_at: Option<Timestamp>,
    /// Dynamic entries: the rule that blacklisted the source, and its hits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hits: Option<u32>,
}

impl Listed {
    fn of(net: &IpNet, entry: &Entry, kind: &'static str) -> Self {
        Self {
            addr: net.to_string(),
            kind,
            expires_at: entry.expires_at,
            reason: entry.reason.clone(),
            created_at: Some(entry.created_at),
            rule: None,
            hits: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    pub bans: BTreeMap<IpNet, Entry>,
    pub allow: BTreeMap<IpNet, Entry>,
    /// `None` until rules were first set: `blocker load` then installs the default.
    pub rules: Option<RuleTable>,
    /// Offense scores and ban histories of `blocker daemon` / `blocker report`.
    pub offenses: OffenseBook,
    /// Bans issued so far, by where they came from (`cli`, `import`, `offense`).
    pub issued: BTreeMap<String, u64>,
}

/// Who makes a change, for the history: `source` is `cli`, `import`, `offense`, `expiry`,
/// `load`...; `actor` the user (or client) behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub source: &'static str,
    pub actor: String,
}

impl Origin {
    /// `source`, acted by the user running this process.
    pub fn local(source: &'static str) -> Self {
        let uid = nix::unistd::getuid();
        let actor = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map_or_else(|| format!("uid {uid}"), |user| user.name);
        Self { source, actor }
    }
}

/// The state file of earlier releases: lists of records.
#[derive(Deserialize)]
struct JsonState {
    version: u32,
    #[serde(default)]
    bans: Vec<Record>,
    #[serde(default)]
    allow: Vec<Record>,
    #[serde(default)]
    rules: Option<RuleTable>,
    #[serde(default)]
    offenses: OffenseBook,
    #[serde(default)]
    issued: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct Record {
    addr: IpNet,
    #[serde(flatten)]
    entry: Entry,
}

fn from_records(records: Vec<Record>) -> BTreeMap<IpNet, Entry> {
    records
        .into_iter()
        .map(|record| (record.addr.trunc(), record.entry))
        .collect()
}

/// What a file at the state path holds, by its first bytes.
enum Content {
    Missing,
    Database,
    Json,
    Other,
}

/// Files already found to be databases, by path and (device, inode).
static KNOWN_DATABASES: std::sync::Mutex<Vec<(PathBuf, (u64, u64))>> =
    std::sync::Mutex::new(Vec::new());

/// The (device, inode) `path` names now; `stat` opens nothing.
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|meta| (meta.dev(), meta.ino()))
}

/// What `path` holds. A file once found to be a database is not opened again while the path
/// names it: closing any descriptor of a file drops every POSIX lock this process holds on it,
/// the locks of SQLite connections other threads have open included, and a connection that
/// lost its lock can have its WAL checkpointed and deleted under it by another process.
fn content_of(path: &Path) -> Result<Content> {
    let identity = file_identity(path);
    let known = |known: &Vec<(PathBuf, (u64, u64))>| {
        identity.is_some_and(|id| known.iter().any(|(p, i)| p == path && *i == id))
    };
    if KNOWN_DATABASES.lock().is_ok_and(|list| known(&list)) {
        return Ok(Content::Database);
    }
    let content = read_content(path)?;
    if let (Content::Database, Some(id)) = (&content, identity) {
        if let Ok(mut list) = KNOWN_DATABASES.lock() {
            list.retain(|(p, _)| p != path);
            list.push((path.to_path_buf(), id));
        }
    }
    Ok(content)
}

fn read_content(path: &Path) -> Result<Content> {
    // Before anything opens it: a FIFO planted at the path would block the open.
    require_private_dir(path)?;
    let mut head = [0u8; 16];
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(Content::Missing),
        Err(source) => {
            return Err(Error::Io {
                context: format!("reading state file {}", path.display()),
                source,
            })
        }
    };
    let read = file
        .read(&mut head)
        .map_err(Error::io(format!("reading state file {}", path.display())))?;
    let head = &head[..read];
    // What a writer killed between creating the file and SQLite writing its header leaves:
    // it holds nothing, so it is no state yet (writers then check the maps, as for a
    // missing file), not a foreign file refused for good. Unless a last good copy exists:
    // then a state was there, and an empty file is a damaged one (a boot falls back to the
    // copy, loudly).
    if head.is_empty() && !last_good_path(path).exists() {
        return Ok(Content::Missing);
    }
    Ok(if head == SQLITE_MAGIC {
        Content::Database
    } else if head.trim_ascii_start().starts_with(b"{") {
        Content::Json
    } else {
        Content::Other
    })
}

/// The error of a state that cannot be used, naming the file and what to do.
fn invalid(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::State {
        path: path.to_path_buf(),
        message: format!(
            "{message}; fix it or replace it with {} (nothing was changed)",
            last_good_path(path).display()
        ),
    }
}

fn seconds(time: Timestamp) -> i64 {
    time.as_second()
}

/// An expiry in whole seconds, rounded up: a stored ban never ends before the time it was
/// given.
fn expiry_seconds(time: Timestamp) -> i64 {
    time.as_second() + i64::from(time.subsec_nanosecond() > 0)
}

fn timestamp(path: &Path, seconds: i64) -> Result<Timestamp> {
    Timestamp::from_second(seconds).map_err(|err| invalid(path, err))
}

fn prefix(path: &Path, text: &str) -> Result<IpNet> {
    text.parse::<IpNet>()
        .map(|net| net.trunc())
        .map_err(|err| invalid(path, format!("prefix {text:?}: {err}")))
}

/// Opens the database, or takes a connection the daemon kept ([`keep_connections`]); `create`
/// makes it (and its directory) when missing. Sets WAL, full sync and the busy timeout, and
/// brings the schema to [`SCHEMA_VERSION`].
pub(crate) fn open(path: &Path, create: bool) -> Result<pool::Pooled> {
    if let Some(mut conn) = pool::take(path) {
        // Another process may have changed the schema since; a kept connection that cannot
        // even read it (the file was damaged or replaced in place) gives way to a new one.
        if migrate(path, &mut conn).is_ok() {
            return Ok(conn);
        }
        conn.discard();
    }
    Ok(pool::keep(path, connect(path, create)?))
}

/// Refuses a state whose directory (if it exists) another user owns or may write: they
/// could replace the database, or plant links where its side files (`-wal`, the last good
/// copy, the fleet cursor) are written, or a FIFO at its path.
fn require_private_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let meta = match fs::metadata(dir) {
        Ok(meta) => meta,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::Io {
                context: format!("reading the directory of {}", path.display()),
                source,
            })
        }
    };
    let owner = meta.uid();
    let trusted_owner = owner == 0 || owner == nix::unistd::geteuid().as_raw();
    if !trusted_owner || meta.permissions().mode() & 0o022 != 0 {
        return Err(Error::State {
            path: path.to_path_buf(),
            message: format!(
                "its directory {} is owned by uid {owner} with mode {:o}, so others may write \
                 there: keep the state in a directory only root may write (nothing was changed)",
                dir.display(),
                meta.permissions().mode() & 0o7777
            ),
        });
    }
    Ok(())
}

/// A new connection to the database, not kept for reuse.
fn connect(path: &Path, create: bool) -> Result<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    require_private_dir(path)?;
    if create {
        // Root's alone from the start: the allowlist (the addresses no rule or ban stops) and
        // the offense keys (user names) are not for other users to read, and a file created
        // readable then closed up could be opened in between and read for good. SQLite gives
        // its -wal and -shm files the database's mode.
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(Error::io(format!(
                    "creating the directory of {}",
                    path.display()
                )))?;
        }
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(err) if err.kind() == ErrorKind::AlreadyExists => {}
            Err(err) => {
                return Err(Error::Io {
                    context: format!("creating {}", path.display()),
                    source: err,
                })
            }
        }
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let db = |err: rusqlite::Error| invalid(path, err);
    let mut conn = Connection::open_with_flags(path, flags).map_err(db)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
    // WAL lets readers (list, metrics) run beside a writer; with synchronous=FULL every commit
    // is synced to the WAL before it returns, so `kill -9` or a power cut right after a
    // command reported success loses nothing.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(db)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(db)?;
    conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
    conn.pragma_update(None, "cache_size", PAGE_CACHE_KIB)
        .map_err(db)?;
    migrate(path, &mut conn)?;
    Ok(conn)
}

/// Creates the schema of a new database, or upgrades an older one, in one transaction.
fn migrate(path: &Path, conn: &mut Connection) -> Result<()> {
    let db = |err: rusqlite::Error| invalid(path, err);
    // Kept prepared: a kept connection checks the version at every use.
    let version: i32 = conn
        .prepare_cached("PRAGMA user_version")
        .and_then(|mut statement| statement.query_row([], |row| row.get(0)))
        .map_err(db)?;
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    if version > SCHEMA_VERSION {
        return Err(invalid(
            path,
            format!("schema version {version} was written by a newer blocker (this one knows up to {SCHEMA_VERSION})"),
        ));
    }
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(db)?;
    // Another process may have migrated it while this one waited for the lock.
    let version: i32 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(db)?;
    if version < 1 {
        tx.execute_batch(SCHEMA_V1).map_err(db)?;
    }
    if version < 2 {
        tx.execute_batch(crate::logs::positions::SCHEMA_V2)
            .map_err(db)?;
    }
    if version < 3 {
        tx.execute_batch(SCHEMA_V3).map_err(db)?;
    }
    if version < 4 {
        tx.execute_batch(SCHEMA_V4).map_err(db)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(db)?;
    tx.commit().map_err(db)
}

/// Schema version 1. Times are Unix seconds (UTC); prefixes are text as blocker prints them.
pub(crate) const SCHEMA_V1: &str = "
CREATE TABLE bans (
    prefix     TEXT PRIMARY KEY,
    family     INTEGER NOT NULL,
    first      BLOB NOT NULL,
    len        INTEGER NOT NULL,
    reason     TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    source     TEXT NOT NULL
);
CREATE INDEX bans_by_expiry ON bans (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX bans_by_range ON bans (family, first);
CREATE TABLE allow (
    prefix     TEXT PRIMARY KEY,
    family     INTEGER NOT NULL,
    reason     TEXT,
    created_at INTEGER NOT NULL,
    source     TEXT NOT NULL
);
CREATE TABLE rules (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    table_json TEXT NOT NULL
);
CREATE TABLE offense_scores (
    subject TEXT PRIMARY KEY,
    score   REAL NOT NULL,
    at      INTEGER NOT NULL,
    reasons TEXT NOT NULL
);
CREATE TABLE offense_bans (
    prefix   TEXT PRIMARY KEY,
    bans     INTEGER NOT NULL,
    last_ban INTEGER NOT NULL
);
CREATE TABLE counters (
    source TEXT PRIMARY KEY,
    issued INTEGER NOT NULL
);
CREATE TABLE history (
    id     INTEGER PRIMARY KEY,
    at     INTEGER NOT NULL,
    action TEXT NOT NULL,
    prefix TEXT NOT NULL,
    source TEXT NOT NULL,
    reason TEXT,
    actor  TEXT
);
CREATE INDEX history_by_prefix ON history (prefix);
CREATE INDEX allow_by_family ON allow (family);
CREATE INDEX offense_scores_by_time ON offense_scores (at);
-- Entries by kind, kept by triggers so /metrics reads three rows, whatever the size.
CREATE TABLE kept_counts (
    kind    TEXT PRIMARY KEY,
    entries INTEGER NOT NULL
);
INSERT INTO kept_counts VALUES ('permanent', 0), ('temporary', 0), ('allow', 0);
CREATE TRIGGER bans_counted_in AFTER INSERT ON bans BEGIN
    UPDATE kept_counts SET entries = entries + 1
    WHERE kind = iif(new.expires_at IS NULL, 'permanent', 'temporary');
END;
CREATE TRIGGER bans_counted_out AFTER DELETE ON bans BEGIN
    UPDATE kept_counts SET entries = entries - 1
    WHERE kind = iif(old.expires_at IS NULL, 'permanent', 'temporary');
END;
CREATE TRIGGER bans_recounted AFTER UPDATE OF expires_at ON bans BEGIN
    UPDATE kept_counts SET entries = entries - 1
    WHERE kind = iif(old.expires_at IS NULL, 'permanent', 'temporary');
    UPDATE kept_counts SET entries = entries + 1
    WHERE kind = iif(new.expires_at IS NULL, 'permanent', 'temporary');
END;
CREATE TRIGGER allow_counted_in AFTER INSERT ON allow BEGIN
    UPDATE kept_counts SET entries = entries + 1 WHERE kind = 'allow';
END;
CREATE TRIGGER allow_counted_out AFTER DELETE ON allow BEGIN
    UPDATE kept_counts SET entries = entries - 1 WHERE kind = 'allow';
END;
CREATE INDEX offense_bans_by_time ON offense_bans (last_ban);
";

/// Entries per kernel trie, kept by triggers under the trie's map name (`BAN_V4`...), so
/// `/metrics` reports the tries' fill without walking a million keys per scrape.
const SCHEMA_V3: &str = "
INSERT INTO kept_counts VALUES
    ('BAN_V4', (SELECT count(*) FROM bans WHERE family = 4)),
    ('BAN_V6', (SELECT count(*) FROM bans WHERE family = 6)),
    ('ALLOW_V4', (SELECT count(*) FROM allow WHERE family = 4)),
    ('ALLOW_V6', (SELECT count(*) FROM allow WHERE family = 6));
CREATE TRIGGER bans_in_trie AFTER INSERT ON bans BEGIN
    UPDATE kept_counts SET entries = entries + 1 WHERE kind = 'BAN_V' || new.family;
END;
CREATE TRIGGER bans_out_of_trie AFTER DELETE ON bans BEGIN
    UPDATE kept_counts SET entries = entries - 1 WHERE kind = 'BAN_V' || old.family;
END;
CREATE TRIGGER allow_in_trie AFTER INSERT ON allow BEGIN
    UPDATE kept_counts SET entries = entries + 1 WHERE kind = 'ALLOW_V' || new.family;
END;
CREATE TRIGGER allow_out_of_trie AFTER DELETE ON allow BEGIN
    UPDATE kept_counts SET entries = entries - 1 WHERE kind = 'ALLOW_V' || old.family;
END;
";

/// History ids that are never handed out again: an undo deletes the rows of the change it
/// takes back, and without AUTOINCREMENT the next row would take the highest deleted id, which
/// the fleet publisher and `blocker top` (following the history past the last id they read)
/// would skip. SQLite cannot add AUTOINCREMENT to a table: it is built again, ids kept.
const SCHEMA_V4: &str = "
CREATE TABLE history_v4 (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     INTEGER NOT NULL,
    action TEXT NOT NULL,
    prefix TEXT NOT NULL,
    source TEXT NOT NULL,
    reason TEXT,
    actor  TEXT
);
INSERT INTO history_v4 (id, at, action, prefix, source, reason, actor)
    SELECT id, at, action, prefix, source, reason, actor FROM history ORDER BY id;
DROP TABLE history;
ALTER TABLE history_v4 RENAME TO history;
CREATE INDEX history_by_prefix ON history (prefix);
";

/// The address family (4 or 6), first address (network byte order, so byte order is address
/// order) and length a prefix is stored with; they index range queries.
fn range_columns(net: &IpNet) -> (i64, Vec<u8>, u8) {
    match net {
        IpNet::V4(v4) => (4, v4.network().octets().to_vec(), v4.prefix_len()),
        IpNet::V6(v6) => (6, v6.network().octets().to_vec(), v6.prefix_len()),
    }
}

fn last_address(net: &IpNet) -> Vec<u8> {
    match net {
        IpNet::V4(v4) => v4.broadcast().octets().to_vec(),
        IpNet::V6(v6) => v6.broadcast().octets().to_vec(),
    }
}

impl State {
    /// Reads the state; a missing database is an empty state. One that cannot be read is an
    /// error naming the file, never silently replaced.
    pub fn load(path: &Path) -> Result<Self> {
        Ok(Self::read(path)?.unwrap_or_default())
    }

    /// Reads and checks the state; `None` when there is none. A JSON state of an earlier
    /// release at `path` (or at the old default path) is imported first. Rules are checked as
    /// the kernel will take them, so a bad state fails here, before any map is touched.
    pub fn read(path: &Path) -> Result<Option<Self>> {
        Self::read_with(path, Bans::Read)
    }

    fn read_with(path: &Path, bans: Bans) -> Result<Option<Self>> {
        match content_of(path)? {
            Content::Missing => {
                let old = Path::new(OLD_DEFAULT_STATE_PATH);
                if path == Path::new(DEFAULT_STATE_PATH)
                    && matches!(content_of(old)?, Content::Json)
                {
                    import_json(old, path)?;
                    return Self::read_with(path, bans);
                }
                Ok(None)
            }
            Content::Json => {
                import_json(path, path)?;
                Self::read_with(path, bans)
            }
            Content::Other => Err(invalid(path, "not a blocker state database")),
            Content::Database => {
                let conn = open(path, false)?;
                read_all(path, &conn, bans).map(Some)
            }
        }
    }

    /// Reads the state for `blocker load`, which must attach even when the database is
    /// damaged: one that cannot be used (or fails `PRAGMA quick_check`) is left as it is
    /// for the operator, and the last good copy (or nothing) is used instead. After a good
    /// read the last good copy is refreshed. Returns the state and, when it is a fallback, why.
    /// With [`Bans::Streamed`] the bans are left for [`each_ban`] to stream from the file the
    /// state came from ([`last_good_path`] for a fallback).
    pub fn read_for_boot(path: &Path, bans: Bans) -> Result<(Option<Self>, Option<Error>)> {
        let damaged = match Self::read_with(path, bans).and_then(|state| {
            // Every page and b-tree is checked, but not that each index matches its table:
            // that costs a lookup per row (two fifths of restoring a million bans), and the
            // full check runs when the maps are unloaded ([`keep_last_good`]).
            if state.is_some() {
                run_check(path, "quick_check")?;
            }
            Ok(state)
        }) {
            Ok(state) => {
                if state.is_some() {
                    if let Err(err) = refresh_last_good(path) {
                        tracing::warn!("the last good copy was not refreshed: {err}");
                    }
                }
                return Ok((state, None));
            }
            Err(err @ Error::State { .. }) => err,
            Err(err) => return Err(err),
        };
        let fallback = match Self::read_with(&last_good_path(path), bans) {
            Ok(state) => state,
            Err(err) => {
                tracing::error!("the last good copy is not usable either: {err}");
                None
            }
        };
        Ok((Some(fallback.unwrap_or_default()), Some(damaged)))
    }

    /// Writes what differs from `before` (the state as read) in one transaction, with a
    /// history row for each ban, unban, expiry and allowlist change. Creates the database
    /// when there is none. Returns the history rows written, so a caller that must undo the
    /// change can ([`State::undo`]).
    pub fn save_changes(&self, path: &Path, before: &State, origin: &Origin) -> Result<Written> {
        let mut conn = open(path, true)?;
        let db = |err: rusqlite::Error| invalid(path, err);
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let written = write_diff(&tx, before, self, origin, Timestamp::now()).map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(written)
    }

    /// Reverts a change [`State::save_changes`] made from `before`, and drops its history.
    pub fn undo(&self, path: &Path, before: &State, written: &Written) -> Result<()> {
        let mut conn = open(path, true)?;
        let db = |err: rusqlite::Error| invalid(path, err);
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let origin = Origin::local("undo");
        write_diff(&tx, self, before, &origin, Timestamp::now()).map_err(db)?;
        tx.execute(
            "DELETE FROM history WHERE id > ?1",
            params![written.history_before],
        )
        .map_err(db)?;
        tx.commit().map_err(db)
    }

    /// Bans in force at `now`.
    pub fn listed_bans(&self, now: Timestamp) -> Vec<Listed> {
        self.bans
            .iter()
            .filter(|(_, entry)| !entry.is_expired(now))
            .map(|(net, entry)| Listed::of(net, entry, entry.ban_kind()))
            .collect()
    }

    pub fn listed_allow(&self) -> Vec<Listed> {
        self.allow
            .iter()
            .map(|(net, entry)| Listed::of(net, entry, "allow"))
            .collect()
    }

    /// Drops entries whose expiry has passed.
    pub fn prune_expired(&mut self, now: Timestamp) {
        self.bans.retain(|_, entry| !entry.is_expired(now));
        self.allow.retain(|_, entry| !entry.is_expired(now));
    }
}

/// What [`State::save_changes`] wrote: history rows after `history_before`.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    history_before: i64,
}

/// The earliest expiry among the stored bans, by the expiry index.
pub fn next_expiry(path: &Path) -> Result<Option<Timestamp>> {
    // A JSON state of an earlier release is imported by the reads that follow, not here.
    if !matches!(content_of(path)?, Content::Database) {
        return Ok(None);
    }
    let conn = open(path, false)?;
    let next: Option<i64> = conn
        .query_row(
            "SELECT min(expires_at) FROM bans WHERE expires_at IS NOT NULL",
            [],
            |row| row.get(0),
        )
        .map_err(|err| invalid(path, err))?;
    next.map(|at| timestamp(path, at)).transpose()
}

/// The history rows of `prefixes` (as stored, text), oldest first, by the prefix index.
pub fn history(path: &Path, prefixes: &[String]) -> Result<Vec<crate::history::Change>> {
    if matches!(content_of(path)?, Content::Missing) || prefixes.is_empty() {
        return Ok(Vec::new());
    }
    let conn = open(path, false)?;
    let db = |err: rusqlite::Error| invalid(path, err);
    let mut statement = conn
        .prepare(&format!(
            "SELECT at, action, prefix, source, reason, actor FROM history \
             WHERE prefix IN ({}) ORDER BY id",
            placeholders(prefixes.len())
        ))
        .map_err(db)?;
    let mut rows = statement
        .query(rusqlite::params_from_iter(prefixes))
        .map_err(db)?;
    let mut changes = Vec::new();
    while let Some(row) = rows.next().map_err(db)? {
        changes.push(crate::history::Change {
            at: timestamp(path, row.get(0).map_err(db)?)?,
            action: row.get(1).map_err(db)?,
            prefix: row.get(2).map_err(db)?,
            source: row.get(3).map_err(db)?,
            reason: row.get(4).map_err(db)?,
            actor: row.get(5).map_err(db)?,
        });
    }
    Ok(changes)
}

/// Calls `each` with the stored bans in force at `now` that pass `filter`, ordered by prefix;
/// the next page's cursor when the limit cut the listing short.
pub fn query_bans(
    path: &Path,
    filter: &crate::listing::BanFilter,
    now: Timestamp,
    mut each: impl FnMut(Listed) -> Result<()>,
) -> Result<Option<String>> {
    if matches!(content_of(path)?, Content::Missing) {
        return Ok(None);
    }
    let conn = open(path, false)?;
    let db = |err: rusqlite::Error| invalid(path, err);
    let mut sql = String::from(
        "SELECT prefix, reason, created_at, expires_at FROM bans \
         WHERE (expires_at IS NULL OR expires_at > ?1)",
    );
    let mut values: Vec<rusqlite::types::Value> = vec![seconds(now).into()];
    let mut bind = |sql: &mut String, clause: &str, value: rusqlite::types::Value| {
        values.push(value);
        sql.push_str(&clause.replace('?', &format!("?{}", values.len())));
    };
    match filter.kind.as_deref() {
        Some("permanent") => sql.push_str(" AND expires_at IS NULL"),
        Some(_) => sql.push_str(" AND expires_at IS NOT NULL"),
        None => {}
    }
    if let Some(source) = &filter.source {
        bind(&mut sql, " AND source = ?", source.clone().into());
    }
    if let Some(reason) = &filter.reason {
        bind(&mut sql, " AND instr(reason, ?) > 0", reason.clone().into());
    }
    if let Some(since) = filter.since {
        bind(&mut sql, " AND created_at >= ?", seconds(since).into());
    }
    if let Some(after) = &filter.after {
        bind(&mut sql, " AND prefix > ?", after.clone().into());
    }
    sql.push_str(" ORDER BY prefix");
    if let Some(limit) = filter.limit {
        // One more than asked, to know whether there is a next page.
        let one_more = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        bind(&mut sql, " LIMIT ?", one_more.into());
    }
    let mut statement = conn.prepare(&sql).map_err(db)?;
    let mut rows = statement
        .query(rusqlite::params_from_iter(values))
        .map_err(db)?;
    let mut given = 0u64;
    let mut last = None;
    while let Some(row) = rows.next().map_err(db)? {
        if filter.limit.is_some_and(|limit| given == limit) {
            return Ok(last);
        }
        let text: String = row.get(0).map_err(db)?;
        let net = prefix(path, &text)?;
        let expires_at: Option<i64> = row.get(3).map_err(db)?;
        let entry = Entry {
            reason: row.get(1).map_err(db)?,
            created_at: timestamp(path, row.get(2).map_err(db)?)?,
            expires_at: expires_at.map(|at| timestamp(path, at)).transpose()?,
        };
        each(Listed::of(&net, &entry, entry.ban_kind()))?;
        given += 1;
        last = Some(text);
    }
    Ok(None)
}

/// The stored bans expired at `now`, by the expiry index.
pub fn expired_bans(path: &Path, now: Timestamp) -> Result<Vec<IpNet>> {
    if matches!(content_of(path)?, Content::Missing) {
        return Ok(Vec::new());
    }
    let conn = open(path, false)?;
    let db = |err: rusqlite::Error| invalid(path, err);
    let mut statement = conn
        .prepare("SELECT prefix FROM bans WHERE expires_at <= ?1")
        .map_err(db)?;
    let mut rows = statement.query([seconds(now)]).map_err(db)?;
    let mut due = Vec::new();
    while let Some(row) = rows.next().map_err(db)? {
        let text: String = row.get(0).map_err(db)?;
        due.push(prefix(path, &text)?);
    }
    Ok(due)
}

/// Whether a read takes the bans into the [`State`], or leaves them to be streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bans {
    Read,
    Streamed,
}

fn read_all(path: &Path, conn: &Connection, bans: Bans) -> Result<State> {
    let db = |err: rusqlite::Error| invalid(path, err);
    let mut state = State::default();
    if bans == Bans::Read {
        read_entries(path, conn, BANS, [], &mut state.bans)?;
    }
    read_entries(path, conn, ALLOWED, [], &mut state.allow)?;
    read_rules_and_counters(path, conn, &mut state)?;
    let mut statement = conn
        .prepare("SELECT subject, score, at, reasons FROM offense_scores")
        .map_err(db)?;
    let mut rows = statement.query([]).map_err(db)?;
    while let Some(row) = rows.next().map_err(db)? {
        let reasons: String = row.get(3).map_err(db)?;
        let score = Score {
            score: row.get(1).map_err(db)?,
            at: timestamp(path, row.get(2).map_err(db)?)?,
            reasons: serde_json::from_str(&reasons)
                .map_err(|err| invalid(path, format!("offense reasons: {err}")))?,
        };
        state.offenses.scores.insert(row.get(0).map_err(db)?, score);
    }
    let mut statement = conn
        .prepare("SELECT prefix, bans, last_ban FROM offense_bans")
        .map_err(db)?;
    let mut rows = statement.query([]).map_err(db)?;
    while let Some(row) = rows.next().map_err(db)? {
        let net: String = row.get(0).map_err(db)?;
        let history = BanHistory {
            bans: row.get(1).map_err(db)?,
            last_ban: timestamp(path, row.get(2).map_err(db)?)?,
        };
        state.offenses.history.insert(prefix(path, &net)?, history);
    }
    Ok(state)
}

const BANS: &str = "SELECT prefix, reason, created_at, expires_at FROM bans";

/// Streams every stored ban (prefix and expiry) to `each`, in address order: family, first
/// address, then prefix length, so a covering prefix comes before the prefixes inside it.
/// Nothing when there is no database.
pub fn each_ban(
    path: &Path,
    mut each: impl FnMut(IpNet, Option<Timestamp>) -> Result<()>,
) -> Result<()> {
    if !matches!(content_of(path)?, Content::Database) {
        return Ok(());
    }
    let conn = open(path, false)?;
    let db = |err: rusqlite::Error| invalid(path, err);
    let mut statement = conn
        .prepare("SELECT prefix, expires_at FROM bans ORDER BY family, first, len")
        .map_err(db)?;
    let mut rows = statement.query([]).map_err(db)?;
    while let Some(row) = rows.next().map_err(db)? {
        let text = row.get_ref(0).and_then(|v| Ok(v.as_str()?)).map_err(db)?;
        let net = prefix(path, text)?;
        let expires_at: Option<i64> = row.get(1).map_err(db)?;
        each(net, expires_at.map(|at| timestamp(path, at)).transpose()?)?;
    }
    Ok(())
}
const ALLOWED: &str = "SELECT prefix, reason, created_at, NULL FROM allow";

/// Adds the rows of `query` (prefix, reason, created_at, expires_at; `sql` may go on with a
/// WHERE clause) to `entries`.
fn read_entries(
    path: &Path,
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    entries: &mut BTreeMap<IpNet, Entry>,
) -> Result<()> {
    let db = |err: rusqlite::Error| invalid(path, err);
    let mut statement = conn.prepare_cached(sql).map_err(db)?;
    let mut rows = statement.query(params).map_err(db)?;
    while let Some(row) = rows.next().map_err(db)? {
        let net: String = row.get(0).map_err(db)?;
        let expires_at: Option<i64> = row.get(3).map_err(db)?;
        entries.insert(
            prefix(path, &net)?,
            Entry {
                reason: row.get(1).map_err(db)?,
                created_at: timestamp(path, row.get(2).map_err(db)?)?,
                expires_at: expires_at.map(|at| timestamp(path, at)).transpose()?,
            },
        );
    }
    Ok(())
}

/// The rule table (checked as the kernel will take it) and the issued counters.
fn read_rules_and_counters(path: &Path, conn: &Connection, state: &mut State) -> Result<()> {
    let db = |err: rusqlite::Error| invalid(path, err);
    let rules: Option<String> = conn
        .prepare_cached("SELECT table_json FROM rules WHERE id = 1")
        .and_then(|mut statement| statement.query_row([], |row| row.get(0)).optional())
        .map_err(db)?;
    if let Some(text) = rules {
        let mut rules: RuleTable =
            serde_json::from_str(&text).map_err(|err| invalid(path, format!("rules: {err}")))?;
        rules.migrate_events();
        rules.compile().map_err(|err| invalid(path, err))?;
        state.rules = Some(rules);
    }
    let mut statement = conn
        .prepare_cached("SELECT source, issued FROM counters")
        .map_err(db)?;
    let mut rows = statement.query([]).map_err(db)?;
    while let Some(row) = rows.next().map_err(db)? {
        let issued: i64 = row.get(1).map_err(db)?;
        state
            .issued
            .insert(row.get(0).map_err(db)?, issued.max(0) as u64);
    }
    Ok(())
}

/// Drops, by index, offense scores whose last offense is so old that they have decayed below
/// 1% of the threshold (a score is always below the threshold, so log2(100) < 6.65 half-lives
/// suffice), and ban histories past their forgiveness: the store stays bounded under a stream
/// of reports. [`OffenseBook::forget`] drops smaller scores sooner, for the sources it reads.
pub fn forget_offenses(
    path: &Path,
    config: &crate::offense::OffenseConfig,
    now: Timestamp,
) -> Result<()> {
    const HALF_LIVES_TO_ONE_PERCENT: f64 = 6.65;
    let conn = open(path, false)?;
    let db = |err: rusqlite::Error| invalid(path, err);
    let score_cutoff =
        seconds(now) - (config.half_life.as_secs_f64() * HALF_LIVES_TO_ONE_PERCENT).ceil() as i64;
    let ban_cutoff = seconds(now) - config.escalation_forget.as_secs() as i64;
    conn.execute("DELETE FROM offense_scores WHERE at < ?1", [score_cutoff])
        .map_err(db)?;
    conn.execute("DELETE FROM offense_bans WHERE last_ban < ?1", [ban_cutoff])
        .map_err(db)?;
    Ok(())
}

/// What `/metrics` shows of the state, read in a few rows whatever its size.
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    /// Stored entries by kind: `permanent`, `temporary` (expired ones until the daemon's
    /// expiry removes them, within a second) and `allow`; and by the kernel trie they are
    /// written to, under its map name (`BAN_V4`, `BAN_V6`, `ALLOW_V4`, `ALLOW_V6`).
    pub entries: BTreeMap<String, u64>,
    pub issued: BTreeMap<String, u64>,
    pub rules: Option<RuleTable>,
}

impl Summary {
    /// Stored bans of both families.
    pub fn bans(&self) -> u64 {
        ["BAN_V4", "BAN_V6"]
            .iter()
            .filter_map(|kind| self.entries.get(*kind))
            .sum()
    }
}

/// The kept counts, counters and rules; an empty summary when there is no database.
pub fn summary(path: &Path) -> Result<Summary> {
    if matches!(content_of(path)?, Content::Missing) {
        return Ok(Summary::default());
    }
    let conn = open(path, false)?;
    let db = |err: rusqlite::Error| invalid(path, err);
    let mut state = State::default();
    read_rules_and_counters(path, &conn, &mut state)?;
    let mut statement = conn
        .prepare("SELECT kind, entries FROM kept_counts")
        .map_err(db)?;
    let mut rows = statement.query([]).map_err(db)?;
    let mut entries = BTreeMap::new();
    while let Some(row) = rows.next().map_err(db)? {
        let count: i64 = row.get(1).map_err(db)?;
        entries.insert(row.get(0).map_err(db)?, count.max(0) as u64);
    }
    Ok(Summary {
        entries,
        issued: state.issued,
        rules: state.rules,
    })
}

/// Which tries hold entries, as `LIST_*` bits: what the XDP program must look in.
pub fn lists_in_use(path: &Path) -> Result<u32> {
    use blocker_common::{LIST_ALLOW_V4, LIST_ALLOW_V6, LIST_BAN_V4, LIST_BAN_V6};
    let conn = open(path, false)?;
    // One statement, kept prepared: every writer of the daemon asks.
    let present: [bool; 4] = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM allow WHERE family = 4), \
                    EXISTS (SELECT 1 FROM allow WHERE family = 6), \
                    EXISTS (SELECT 1 FROM bans WHERE family = 4), \
                    EXISTS (SELECT 1 FROM bans WHERE family = 6)",
        )
        .and_then(|mut statement| {
            statement.query_row([], |row| {
                Ok([row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?])
            })
        })
        .map_err(|err| invalid(path, err))?;
    Ok([LIST_ALLOW_V4, LIST_ALLOW_V6, LIST_BAN_V4, LIST_BAN_V6]
        .into_iter()
        .zip(present)
        .filter(|(_, present)| *present)
        .fold(0, |bits, (bit, _)| bits | bit))
}

impl State {
    /// Reads what a change of the bans and allowlist entries `touched` needs, by index: those
    /// bans, the bans covering them and the bans inside them (their kernel expiries depend on
    /// each other), the allowlist, the rules, the counters, and the offense scores and ban
    /// histories of `touched`. `None` when there is no database.
    pub fn read_scope(path: &Path, touched: &[IpNet]) -> Result<Option<Self>> {
        if !matches!(content_of(path)?, Content::Database) {
            return Self::read(path);
        }
        let conn = open(path, false)?;
        let db = |err: rusqlite::Error| invalid(path, err);
        let mut state = State::default();
        for net in touched {
            // One statement for the prefix and all that cover it: 33 (IPv4) or 129 (IPv6)
            // lookups by key, where a statement each cost most of a small write.
            let covering = crate::history::covering(*net);
            read_entries(
                path,
                &conn,
                &format!(
                    "SELECT prefix, reason, created_at, expires_at FROM bans WHERE prefix IN ({})",
                    placeholders(covering.len())
                ),
                rusqlite::params_from_iter(&covering),
                &mut state.bans,
            )?;
            let (family, first, len) = range_columns(net);
            read_entries(
                path,
                &conn,
                "SELECT prefix, reason, created_at, expires_at FROM bans \
                 WHERE family = ?1 AND first BETWEEN ?2 AND ?3 AND len > ?4",
                params![family, first, last_address(net), len],
                &mut state.bans,
            )?;
            let text = net.to_string();
            let mut statement = conn
                .prepare_cached(
                    "SELECT subject, score, at, reasons FROM offense_scores \
                     WHERE subject = ?1 OR (subject > ?1 || ' ' AND subject < ?1 || '!')",
                )
                .map_err(db)?;
            let mut rows = statement.query([&text]).map_err(db)?;
            while let Some(row) = rows.next().map_err(db)? {
                let reasons: String = row.get(3).map_err(db)?;
                let score = Score {
                    score: row.get(1).map_err(db)?,
                    at: timestamp(path, row.get(2).map_err(db)?)?,
                    reasons: serde_json::from_str(&reasons)
                        .map_err(|err| invalid(path, format!("offense reasons: {err}")))?,
                };
                state.offenses.scores.insert(row.get(0).map_err(db)?, score);
            }
            let history = conn
                .prepare_cached("SELECT bans, last_ban FROM offense_bans WHERE prefix = ?1")
                .and_then(|mut statement| {
                    statement
                        .query_row([&text], |row| {
                            Ok((row.get::<_, u32>(0)?, row.get::<_, i64>(1)?))
                        })
                        .optional()
                })
                .map_err(db)?;
            if let Some((bans, last_ban)) = history {
                let last_ban = timestamp(path, last_ban)?;
                state
                    .offenses
                    .history
                    .insert(*net, BanHistory { bans, last_ban });
            }
        }
        read_entries(path, &conn, ALLOWED, [], &mut state.allow)?;
        read_rules_and_counters(path, &conn, &mut state)?;
        Ok(Some(state))
    }
}

/// `count` SQL parameters for an `IN (...)` list.
fn placeholders(count: usize) -> String {
    vec!["?"; count].join(", ")
}

/// Writes the rows that differ between `before` and `after`, and the history of the bans and
/// allowlist entries among them.
fn write_diff(
    tx: &Transaction,
    before: &State,
    after: &State,
    origin: &Origin,
    now: Timestamp,
) -> rusqlite::Result<Written> {
    let history_before: i64 = tx
        .prepare_cached("SELECT coalesce(max(id), 0) FROM history")?
        .query_row([], |row| row.get(0))?;
    let mut history = tx.prepare_cached(
        "INSERT INTO history (at, action, prefix, source, reason, actor) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let mut record = |action: &str, net: &IpNet, reason: Option<&str>| {
        history.execute(params![
            seconds(now),
            action,
            net.to_string(),
            origin.source,
            reason,
            origin.actor
        ])
    };
    for (table, removed_action, old, new) in [
        ("bans", "unban", &before.bans, &after.bans),
        ("allow", "disallow", &before.allow, &after.allow),
    ] {
        let mut delete = tx.prepare_cached(&format!("DELETE FROM {table} WHERE prefix = ?1"))?;
        for (net, entry) in old.iter().filter(|(net, _)| !new.contains_key(net)) {
            delete.execute([net.to_string()])?;
            let action = if entry.is_expired(now) {
                "expire"
            } else {
                removed_action
            };
            record(action, net, entry.reason.as_deref())?;
        }
    }
    let mut upsert_ban = tx.prepare_cached(UPSERT_BAN)?;
    for (net, entry) in &after.bans {
        if before.bans.get(net) != Some(entry) {
            let (family, first, len) = range_columns(net);
            upsert_ban.execute(params![
                net.to_string(),
                entry.reason,
                seconds(entry.created_at),
                entry.expires_at.map(expiry_seconds),
                origin.source,
                family,
                first,
                len
            ])?;
            record("ban", net, entry.reason.as_deref())?;
        }
    }
    let mut upsert_allow = tx.prepare_cached(
        "INSERT INTO allow (prefix, family, reason, created_at, source) \
         VALUES (?1, ?5, ?2, ?3, ?4) \
         ON CONFLICT (prefix) DO UPDATE SET reason = excluded.reason, \
         created_at = excluded.created_at, source = excluded.source",
    )?;
    for (net, entry) in &after.allow {
        if before.allow.get(net) != Some(entry) {
            upsert_allow.execute(params![
                net.to_string(),
                entry.reason,
                seconds(entry.created_at),
                origin.source,
                range_columns(net).0
            ])?;
            record("allow", net, entry.reason.as_deref())?;
        }
    }
    if after.rules != before.rules {
        match &after.rules {
            Some(rules) => {
                let text = serde_json::to_string(rules)
                    .map_err(|err| rusqlite::Error::ToSqlConversionFailure(Box::new(err)))?;
                tx.execute(
                    "INSERT OR REPLACE INTO rules (id, table_json) VALUES (1, ?1)",
                    [text],
                )?
            }
            None => tx.execute("DELETE FROM rules", [])?,
        };
    }
    write_offenses(tx, &before.offenses, &after.offenses)?;
    let mut counter =
        tx.prepare_cached("INSERT OR REPLACE INTO counters (source, issued) VALUES (?1, ?2)")?;
    for (source, issued) in &after.issued {
        if before.issued.get(source) != Some(issued) {
            counter.execute(params![source, i64::try_from(*issued).unwrap_or(i64::MAX)])?;
        }
    }
    Ok(Written { history_before })
}

fn write_offenses(
    tx: &Transaction,
    before: &OffenseBook,
    after: &OffenseBook,
) -> rusqlite::Result<()> {
    let mut delete = tx.prepare_cached("DELETE FROM offense_scores WHERE subject = ?1")?;
    for subject in before.scores.keys() {
        if !after.scores.contains_key(subject) {
            delete.execute([subject])?;
        }
    }
    let mut upsert = tx.prepare_cached(
        "INSERT OR REPLACE INTO offense_scores (subject, score, at, reasons) \
         VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (subject, score) in &after.scores {
        if before.scores.get(subject) != Some(score) {
            let reasons = serde_json::to_string(&score.reasons)
                .map_err(|err| rusqlite::Error::ToSqlConversionFailure(Box::new(err)))?;
            upsert.execute(params![subject, score.score, seconds(score.at), reasons])?;
        }
    }
    let mut delete = tx.prepare_cached("DELETE FROM offense_bans WHERE prefix = ?1")?;
    for net in before.history.keys() {
        if !after.history.contains_key(net) {
            delete.execute([net.to_string()])?;
        }
    }
    let mut upsert = tx.prepare_cached(
        "INSERT OR REPLACE INTO offense_bans (prefix, bans, last_ban) VALUES (?1, ?2, ?3)",
    )?;
    for (net, history) in &after.history {
        if before.history.get(net) != Some(history) {
            upsert.execute(params![
                net.to_string(),
                history.bans,
                seconds(history.last_ban)
            ])?;
        }
    }
    Ok(())
}

/// Imports the JSON state of an earlier release at `json` into a new database at `path`, in
/// one transaction, and keeps the JSON file as `json.migrated`. The database is built beside
/// and renamed into place, so a crash midway leaves the JSON file to import again.
fn import_json(json: &Path, path: &Path) -> Result<()> {
    // Two processes meeting the JSON file at once (the daemon and a command after an
    // upgrade) would each remove the other's half-built database: one imports, under a lock
    // of the state's directory, and the other finds the database made.
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let _importing = File::open(dir)
        .map_err(Error::io(format!("opening {}", dir.display())))
        .and_then(|dir_file| {
            nix::fcntl::Flock::lock(dir_file, nix::fcntl::FlockArg::LockExclusive).map_err(
                |(_, errno)| Error::Io {
                    context: format!("locking {}", dir.display()),
                    source: errno.into(),
                },
            )
        })?;
    if matches!(content_of(path)?, Content::Database) {
        return Ok(());
    }
    let text = fs::read_to_string(json)
        .map_err(Error::io(format!("reading state file {}", json.display())))?;
    let file: JsonState =
        serde_json::from_str(&text).map_err(|err| invalid(json, err.to_string()))?;
    if file.version != JSON_FORMAT_VERSION {
        return Err(invalid(
            json,
            format!("unsupported format version {}", file.version),
        ));
    }
    let mut rules = file.rules;
    if let Some(rules) = &mut rules {
        rules.migrate_events();
        rules.compile().map_err(|err| invalid(json, err))?;
    }
    let state = State {
        bans: from_records(file.bans),
        allow: from_records(file.allow),
        rules,
        offenses: file.offenses,
        issued: file.issued,
    };
    let building = suffixed(path, ".importing");
    for leftover in [
        building.clone(),
        suffixed(&building, "-wal"),
        suffixed(&building, "-shm"),
    ] {
        match fs::remove_file(&leftover) {
            Err(err) if err.kind() != ErrorKind::NotFound => {
                return Err(Error::Io {
                    context: format!("removing {}", leftover.display()),
                    source: err,
                })
            }
            _ => {}
        }
    }
    state.save_changes(&building, &State::default(), &Origin::local("import"))?;
    // Closing the last connection checkpoints the WAL into the file: it is whole.
    pool::close(&building);
    let migrated = suffixed(json, ".migrated");
    fs::copy(json, &migrated)
        .and_then(|_| File::open(&migrated)?.sync_all())
        .map_err(Error::io(format!("keeping {}", migrated.display())))?;
    fs::rename(&building, path).map_err(Error::io(format!("replacing {}", path.display())))?;
    if json != path {
        fs::remove_file(json).map_err(Error::io(format!("removing {}", json.display())))?;
    }
    sync_dir(path)?;
    tracing::warn!(
        "imported the JSON state {} into {}; the JSON file is kept as {}",
        json.display(),
        path.display(),
        migrated.display()
    );
    Ok(())
}

/// `PRAGMA integrity_check` of the database; a problem is a state error.
pub fn check_integrity(path: &Path) -> Result<()> {
    run_check(path, "integrity_check")
}

/// Runs the check `pragma` (`integrity_check` or `quick_check`) on the database.
fn run_check(path: &Path, pragma: &str) -> Result<()> {
    if matches!(content_of(path)?, Content::Missing) {
        return Ok(());
    }
    let conn = open(path, false)?;
    let verdict: String = conn
        .query_row(&format!("PRAGMA {pragma}"), [], |row| row.get(0))
        .map_err(|err| invalid(path, err))?;
    if verdict == "ok" {
        Ok(())
    } else {
        Err(invalid(path, format!("{pragma}: {verdict}")))
    }
}

/// Refreshes the last good copy when the database reads whole and sound (one that does not
/// exist has nothing to copy).
pub fn keep_last_good(path: &Path) -> Result<()> {
    if State::read(path)?.is_some() {
        check_integrity(path)?;
        refresh_last_good(path)?;
    }
    Ok(())
}

/// Copies the database to its last good copy with SQLite's online backup (consistent while
/// writers go on), through a temporary file renamed into place.
pub fn refresh_last_good(path: &Path) -> Result<()> {
    let conn = open(path, false)?;
    let copy = last_good_path(path);
    let temp = suffixed(&copy, ".tmp");
    let _ = fs::remove_file(&temp);
    // The copy holds all the database does: root's alone from the start, like it (SQLite
    // would create it by the umask).
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .map_err(Error::io(format!("creating {}", temp.display())))?;
    conn.backup(rusqlite::DatabaseName::Main, &temp, None)
        .map_err(|err| invalid(path, format!("backing up: {err}")))?;
    File::open(&temp)
        .and_then(|file| file.sync_all())
        .and_then(|()| fs::rename(&temp, &copy))
        .map_err(Error::io(format!("replacing {}", copy.display())))?;
    sync_dir(path)
}

fn sync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    File::open(&dir)
        .and_then(|dir| dir.sync_all())
        .map_err(Error::io(format!(
            "syncing the directory of {}",
            path.display()
        )))
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// Where `blocker load` keeps a copy of the last state it read whole and sound.
pub fn last_good_path(path: &Path) -> PathBuf {
    suffixed(path, ".last-good")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Events, RuleSpec};

    #[test]
    fn a_new_database_and_its_directory_are_not_readable_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new").join("state.db");
        State::default()
            .save_changes(&path, &State::default(), &origin())
            .unwrap();
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(path.parent().unwrap()), 0o700, "the directory");
        for file in [path.clone(), path.with_extension("db-wal")] {
            if file.exists() {
                assert_eq!(mode(&file) & 0o077, 0, "{}", file.display());
            }
        }
        assert!(path.exists());
        refresh_last_good(&path).unwrap();
        assert_eq!(
            mode(&last_good_path(&path)) & 0o077,
            0,
            "the last good copy"
        );
    }

    #[test]
    fn a_state_in_a_directory_others_may_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
        let path = shared.join("state.db");
        let err = State::default()
            .save_changes(&path, &State::default(), &origin())
            .unwrap_err();
        assert!(err.to_string().contains("others may write"), "{err}");
        assert!(!path.exists(), "nothing was created there");
        // A FIFO planted there is refused before anything opens it (an open would block).
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
        let (done, read) = std::sync::mpsc::channel();
        let fifo = path.clone();
        std::thread::spawn(move || done.send(State::read(&fifo).is_err()).unwrap());
        assert!(
            read.recv_timeout(std::time::Duration::from_secs(5))
                .expect("the read returns"),
            "refused"
        );
        fs::remove_file(&path).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).unwrap();
        State::default()
            .save_changes(&path, &State::default(), &origin())
            .unwrap();
    }

    fn entry(expires_at: Option<i64>) -> Entry {
        Entry {
            reason: Some("test".into()),
            created_at: Timestamp::from_second(1_700_000_000).unwrap(),
            expires_at: expires_at.map(|s| Timestamp::from_second(s).unwrap()),
        }
    }

    fn origin() -> Origin {
        Origin {
            source: "cli",
            actor: "tester".into(),
        }
    }

    fn sample() -> State {
        let mut state = State::default();
        state
            .bans
            .insert("10.0.0.0/8".parse().unwrap(), entry(None));
        state
            .bans
            .insert("2001:db8::/64".parse().unwrap(), entry(Some(1_800_000_000)));
        state
            .allow
            .insert("192.0.2.1/32".parse().unwrap(), entry(None));
        state.rules = Some(RuleTable::from_specs(&[RuleSpec::ssh()]).unwrap());
        state.issued.insert("cli".into(), 3);
        state
    }

    /// A database holding [`sample`], in a directory that lives as long as the guard.
    fn saved_sample() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        sample()
            .save_changes(&path, &State::default(), &origin())
            .unwrap();
        (dir, path)
    }

    fn query(path: &Path, sql: &str) -> Vec<String> {
        let conn = Connection::open(path).unwrap();
        let mut statement = conn.prepare(sql).unwrap();
        let rows = statement
            .query_map([], |row| row.get::<_, String>(0))
            .unwrap();
        rows.map(|row| row.unwrap()).collect()
    }

    fn import_rows(nets: &[&str]) -> impl Iterator<Item = Result<ImportRow>> {
        nets.iter()
            .map(|net| {
                Ok(ImportRow {
                    net: net.parse().unwrap(),
                    reason: Some("list".into()),
                    created_at: None,
                    expires_at: None,
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
    }

    /// [`import_bans`] as `blocker import` runs it: source `import`, room to spare, no
    /// allowlist entries, any ban replaced.
    fn import_list(
        path: &Path,
        now: Timestamp,
        rows: impl Iterator<Item = Result<ImportRow>>,
    ) -> Result<Imported> {
        import_bans(
            path,
            &Origin::local("import"),
            now,
            &ROOMY,
            ImportAllows::NONE,
            Replace::Any,
            rows,
        )
    }

    const ROOMY: Capacity = Capacity {
        v4: ("ban_v4", 100),
        v6: ("ban_v6", 100),
    };

    #[test]
    fn an_empty_file_left_by_a_killed_writer_is_no_state_yet_and_becomes_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        File::create(&path).unwrap();
        assert_eq!(State::read(&path).unwrap(), None);
        sample()
            .save_changes(&path, &State::default(), &origin())
            .unwrap();
        assert_eq!(State::load(&path).unwrap(), sample());
        std::fs::write(&path, b"not a database").unwrap();
        assert!(
            State::read(&path).is_err(),
            "anything else is still refused"
        );
        // Once a state was there (its last good copy says so), an empty file is a damaged one.
        let emptied = dir.path().join("emptied.db");
        File::create(last_good_path(&emptied)).unwrap();
        File::create(&emptied).unwrap();
        assert!(State::read(&emptied).is_err(), "emptied, not new");
    }

    #[test]
    fn an_import_replacing_only_its_own_bans_leaves_every_other_ban_in_force() {
        let (_dir, path) = saved_sample();
        let mut before = State::load(&path).unwrap();
        let feed = "feed https://lists.example/drop.txt";
        let ban = |reason: &str, expires_at: i64| Entry {
            reason: Some(reason.into()),
            created_at: Timestamp::from_second(1_500_000_000).unwrap(),
            expires_at: Some(Timestamp::from_second(expires_at).unwrap()),
        };
        let previous = before.clone();
        before
            .bans
            .insert("198.51.100.0/24".parse().unwrap(), ban(feed, 1_700_000_050));
        before.bans.insert(
            "203.0.113.0/24".parse().unwrap(),
            ban("operator", 1_600_000_000),
        );
        before.save_changes(&path, &previous, &origin()).unwrap();
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let renewed = Timestamp::from_second(1_700_086_400).unwrap();
        let listed = [
            "10.0.0.0/8",
            "2001:db8::/64",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "192.0.2.128/25",
        ];
        let rows = listed.iter().map(|net| {
            Ok(ImportRow {
                net: net.parse().unwrap(),
                reason: Some(feed.into()),
                created_at: None,
                expires_at: Some(renewed),
            })
        });
        let imported = import_bans(
            &path,
            &Origin::local("feed"),
            now,
            &ROOMY,
            ImportAllows::NONE,
            Replace::Own(feed),
            rows.collect::<Vec<_>>().into_iter(),
        )
        .unwrap();
        let written: Vec<String> = imported.nets.iter().map(IpNet::to_string).collect();
        assert_eq!(
            written,
            ["192.0.2.128/25", "198.51.100.0/24", "203.0.113.0/24"],
            "its own, an ended ban of another, a new one"
        );
        let after = State::load(&path).unwrap();
        for held in ["10.0.0.0/8", "2001:db8::/64"] {
            let net: IpNet = held.parse().unwrap();
            assert_eq!(
                after.bans[&net], before.bans[&net],
                "{held} is not the feed's"
            );
        }
        for taken in ["198.51.100.0/24", "203.0.113.0/24"] {
            let entry = &after.bans[&taken.parse().unwrap()];
            assert_eq!(entry.reason.as_deref(), Some(feed), "{taken}");
            assert_eq!(entry.expires_at, Some(renewed), "{taken}");
        }
    }

    #[test]
    fn an_import_is_one_transaction_that_an_undo_takes_back_whole() {
        let (_dir, path) = saved_sample();
        let before = State::load(&path).unwrap();
        let history_before = query(&path, "SELECT CAST(count(*) AS TEXT) FROM history");
        let now = Timestamp::from_second(1_700_000_100).unwrap();
        let import = Origin::local("import");
        let rows = import_rows(&["10.0.0.0/8", "198.51.100.0/24", "198.51.100.7/32"]);
        let mut imported = import_list(&path, now, rows).unwrap();
        let after = State::load(&path).unwrap();
        assert_eq!(after.bans.len(), 4, "one replaced, two added");
        assert_eq!(
            after.bans[&"10.0.0.0/8".parse().unwrap()].created_at,
            before.bans[&"10.0.0.0/8".parse().unwrap()].created_at,
            "a ban in force keeps its creation time"
        );
        assert_eq!(after.issued["import"], 3);
        let mut added = undo_import(&mut imported, &import).unwrap();
        added.sort();
        assert_eq!(
            added,
            [
                "198.51.100.0/24".parse().unwrap(),
                "198.51.100.7/32".parse().unwrap()
            ]
        );
        let undone = State::load(&path).unwrap();
        assert_eq!(undone.bans, before.bans);
        assert_eq!(undone.issued, before.issued, "no count row is left behind");
        assert_eq!(
            query(&path, "SELECT CAST(count(*) AS TEXT) FROM history"),
            history_before
        );
    }

    #[test]
    fn an_imports_allowlist_entries_are_in_its_transaction_and_its_undo() {
        let (_dir, path) = saved_sample();
        let before = State::load(&path).unwrap();
        let history_before = query(&path, "SELECT CAST(count(*) AS TEXT) FROM history");
        let now = Timestamp::from_second(1_700_000_100).unwrap();
        let import = Origin::local("import");
        let (kept, fresh): (IpNet, IpNet) = (
            "192.0.2.1/32".parse().unwrap(),
            "192.0.2.9/32".parse().unwrap(),
        );
        let allows = ImportAllows {
            nets: &[kept, fresh, fresh],
            reason: "imported",
        };
        let rows = import_rows(&["198.51.100.0/24"]);
        let mut imported =
            import_bans(&path, &import, now, &ROOMY, allows, Replace::Any, rows).unwrap();
        let after = State::load(&path).unwrap();
        assert_eq!(after.allow[&kept].reason.as_deref(), Some("imported"));
        assert_eq!(
            after.allow[&kept].created_at, before.allow[&kept].created_at,
            "an entry already there keeps its creation time"
        );
        assert_eq!(after.allow[&fresh].created_at, now);
        assert_eq!(
            query(
                &path,
                "SELECT action || ' ' || prefix FROM history WHERE source = 'import' ORDER BY id"
            ),
            [
                "allow 192.0.2.1/32",
                "allow 192.0.2.9/32",
                "ban 198.51.100.0/24"
            ]
        );
        undo_import(&mut imported, &import).unwrap();
        let undone = State::load(&path).unwrap();
        assert_eq!(undone.allow, before.allow);
        assert_eq!(
            query(&path, "SELECT prefix || ' ' || source FROM allow"),
            ["192.0.2.1/32 cli"],
            "the replaced row is restored whole"
        );
        assert_eq!(
            query(&path, "SELECT CAST(count(*) AS TEXT) FROM history"),
            history_before
        );
        assert_eq!(
            query(
                &path,
                "SELECT kind || ' ' || entries FROM kept_counts WHERE kind LIKE '%ALLOW%' OR kind = 'allow' ORDER BY kind"
            ),
            ["ALLOW_V4 1", "ALLOW_V6 0", "allow 1"]
        );
    }

    #[test]
    fn an_import_that_would_overfill_a_map_or_has_a_bad_row_stores_nothing() {
        let (_dir, path) = saved_sample();
        let before = State::load(&path).unwrap();
        let now = Timestamp::from_second(1_700_000_100).unwrap();
        let tight = Capacity {
            v4: ("ban_v4", 2),
            v6: ("ban_v6", 100),
        };
        let rows = import_rows(&["198.51.100.1/32", "198.51.100.2/32"]);
        let err = import_bans(
            &path,
            &Origin::local("import"),
            now,
            &tight,
            ImportAllows::NONE,
            Replace::Any,
            rows,
        )
        .err()
        .unwrap();
        assert!(
            matches!(
                err,
                Error::MapFull {
                    map: "ban_v4",
                    capacity: 2
                }
            ),
            "{err}"
        );
        let bad_row = import_rows(&["198.51.100.1/32"]).chain([Err(Error::InvalidListLine {
            path: "list".into(),
            line: 2,
            message: "bad".into(),
        })]);
        assert!(import_list(&path, now, bad_row).is_err());
        assert_eq!(State::load(&path).unwrap(), before);
    }

    #[test]
    fn an_import_creates_bans_at_the_lists_dates_and_keeps_the_date_of_bans_in_force() {
        let (_dir, path) = saved_sample();
        let now = Timestamp::from_second(1_700_000_100).unwrap();
        let listed = Timestamp::from_second(1_110_844_800).unwrap();
        let row = |net: &str, created_at| {
            Ok(ImportRow {
                net: net.parse().unwrap(),
                reason: Some("list".into()),
                created_at,
                expires_at: None,
            })
        };
        let rows = vec![
            row("10.0.0.0/8", Some(listed)),
            row("198.51.100.0/24", Some(listed)),
            row("198.51.100.7/32", None),
        ];
        import_list(&path, now, rows.into_iter()).unwrap();
        let created =
            |net: &str| State::load(&path).unwrap().bans[&net.parse().unwrap()].created_at;
        assert_eq!(
            created("10.0.0.0/8"),
            Timestamp::from_second(1_700_000_000).unwrap(),
            "a ban in force keeps its own date"
        );
        assert_eq!(created("198.51.100.0/24"), listed, "the list's date");
        assert_eq!(
            created("198.51.100.7/32"),
            now,
            "no date: the import's time"
        );
        let later = Timestamp::from_second(1_700_000_200).unwrap();
        let again = vec![row("198.51.100.0/24", Some(now))];
        import_list(&path, later, again.into_iter()).unwrap();
        assert_eq!(
            created("198.51.100.0/24"),
            listed,
            "a re-import with another date keeps the first"
        );
    }

    #[test]
    fn the_tries_fill_is_counted_from_a_migration_on_and_kept_by_every_writer() {
        let (_dir, path) = saved_sample();
        // A database of schema 2: the per-trie counts and their triggers did not exist.
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "DELETE FROM kept_counts WHERE kind GLOB '*_V[46]';
                 DROP TRIGGER bans_in_trie; DROP TRIGGER bans_out_of_trie;
                 DROP TRIGGER allow_in_trie; DROP TRIGGER allow_out_of_trie;
                 PRAGMA user_version = 2;",
            )
            .unwrap();
        }
        let counts = |path: &Path| {
            let entries = summary(path).unwrap().entries;
            ["BAN_V4", "BAN_V6", "ALLOW_V4", "ALLOW_V6"].map(|map| entries[map])
        };
        assert_eq!(
            counts(&path),
            [1, 1, 1, 0],
            "the migration counts what is stored"
        );
        let before = State::load(&path).unwrap();
        let mut after = before.clone();
        after.bans.remove(&"10.0.0.0/8".parse().unwrap());
        after
            .bans
            .insert("198.51.100.0/24".parse().unwrap(), entry(None));
        after
            .bans
            .insert("198.51.100.7/32".parse().unwrap(), entry(None));
        after
            .allow
            .insert("2001:db8::1/128".parse().unwrap(), entry(None));
        after.save_changes(&path, &before, &origin()).unwrap();
        assert_eq!(counts(&path), [2, 1, 1, 1]);
        let rows = import_rows(&["203.0.113.0/24", "2001:db8:1::/48"]);
        let now = Timestamp::from_second(1_700_000_100).unwrap();
        import_list(&path, now, rows).unwrap();
        assert_eq!(counts(&path), [3, 2, 1, 1], "a bulk import is counted too");
    }

    #[test]
    fn a_list_repeating_a_prefix_keeps_its_last_line_and_an_undo_restores_the_first_state() {
        let (_dir, path) = saved_sample();
        let before = State::load(&path).unwrap();
        let now = Timestamp::from_second(1_700_000_100).unwrap();
        let later = Timestamp::from_second(1_700_009_000).unwrap();
        let row = |net: &str, reason: &str, expires_at| {
            Ok(ImportRow {
                net: net.parse().unwrap(),
                reason: Some(reason.into()),
                created_at: None,
                expires_at,
            })
        };
        let rows = vec![
            row("10.0.0.0/8", "first", None),
            row("198.51.100.7/32", "first", None),
            row("10.0.0.0/8", "last", Some(later)),
            row("198.51.100.7/32", "last", Some(later)),
        ];
        let import = Origin::local("import");
        let mut imported = import_list(&path, now, rows.into_iter()).unwrap();
        assert_eq!(imported.nets.len(), 2);
        let after = State::load(&path).unwrap();
        for net in ["10.0.0.0/8", "198.51.100.7/32"] {
            let entry = &after.bans[&net.parse().unwrap()];
            assert_eq!(entry.reason.as_deref(), Some("last"), "{net}");
            assert_eq!(entry.expires_at, Some(later), "{net}");
        }
        let counts = |path: &Path| {
            let entries = summary(path).unwrap().entries;
            ["permanent", "temporary", "BAN_V4", "BAN_V6"].map(|kind| entries[kind])
        };
        assert_eq!(counts(&path), [0, 3, 2, 1], "counted once, as stored");
        undo_import(&mut imported, &import).unwrap();
        assert_eq!(State::load(&path).unwrap().bans, before.bans);
        assert_eq!(
            counts(&path),
            [1, 1, 1, 1],
            "the undo is counted by the triggers, which are back"
        );
    }

    /// Closing a descriptor of the database file drops this process's POSIX locks on it,
    /// those of open connections included; another process's connection, closing as if it
    /// were the last, then checkpoints and deletes the WAL that an open connection still
    /// writes to, and its later commits reach no one.
    #[test]
    fn looking_at_a_known_database_keeps_the_locks_of_its_open_connections() {
        let (_dir, path) = saved_sample();
        assert!(matches!(content_of(&path).unwrap(), Content::Database));
        let conn = open(&path, false).unwrap();
        conn.execute("INSERT INTO counters (source, issued) VALUES ('a', 1)", [])
            .unwrap();
        assert!(matches!(content_of(&path).unwrap(), Content::Database));
        let other_process = std::process::Command::new("python3")
            .args([
                "-c",
                "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); \
                 c.execute('SELECT count(*) FROM counters').fetchall(); c.close()",
            ])
            .arg(&path)
            .status()
            .expect("python3 runs (another process using the database)");
        assert!(other_process.success());
        conn.execute("INSERT INTO counters (source, issued) VALUES ('b', 2)", [])
            .unwrap();
        assert_eq!(
            query(
                &path,
                "SELECT source FROM counters WHERE source IN ('a', 'b') ORDER BY source"
            ),
            ["a", "b"],
            "a commit of the open connection is seen by a new one"
        );
    }

    #[test]
    fn bans_stream_in_address_order_with_their_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut state = sample();
        for (net, expiry) in [
            ("2001:db8::1/128", None),
            ("10.1.0.0/16", Some(1_800_000_000)),
            ("10.0.0.1/32", None),
            ("9.0.0.0/8", None),
        ] {
            state.bans.insert(net.parse().unwrap(), entry(expiry));
        }
        state
            .save_changes(&path, &State::default(), &origin())
            .unwrap();
        let mut seen = Vec::new();
        each_ban(&path, |net, expires_at| {
            seen.push((net.to_string(), expires_at.map(|at| at.as_second())));
            Ok(())
        })
        .unwrap();
        let wanted = [
            ("9.0.0.0/8", None),
            ("10.0.0.0/8", None),
            ("10.0.0.1/32", None),
            ("10.1.0.0/16", Some(1_800_000_000)),
            ("2001:db8::/64", Some(1_800_000_000)),
            ("2001:db8::1/128", None),
        ]
        .map(|(net, at)| (net.to_string(), at));
        assert_eq!(
            seen, wanted,
            "a covering prefix before the prefixes inside it"
        );
    }

    #[test]
    fn round_trips_through_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.db");
        let state = sample();
        state
            .save_changes(&path, &State::default(), &origin())
            .unwrap();
        assert_eq!(State::load(&path).unwrap(), state);
        assert_eq!(
            query(&path, "SELECT prefix FROM bans ORDER BY prefix"),
            ["10.0.0.0/8", "2001:db8::/64"]
        );
        assert_eq!(
            query(&path, "PRAGMA journal_mode"),
            ["wal"],
            "readers run beside a writer"
        );
        let version = query(
            &path,
            "SELECT CAST(user_version AS TEXT) FROM pragma_user_version",
        );
        assert_eq!(version, [SCHEMA_VERSION.to_string()]);
    }

    #[test]
    fn writers_change_only_the_rows_that_differ_and_record_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let before = sample();
        before
            .save_changes(&path, &State::default(), &origin())
            .unwrap();
        let mut after = before.clone();
        after.bans.remove(&"10.0.0.0/8".parse().unwrap());
        after
            .bans
            .insert("10.9.0.0/16".parse().unwrap(), entry(Some(1_750_000_000)));
        after.allow.remove(&"192.0.2.1/32".parse().unwrap());
        let later = Origin {
            source: "offense",
            actor: "daemon".into(),
        };
        after.save_changes(&path, &before, &later).unwrap();
        assert_eq!(State::load(&path).unwrap(), after);
        assert_eq!(
            query(
                &path,
                "SELECT action || ' ' || prefix || ' ' || source || ' ' || actor \
                 FROM history WHERE id > 3 ORDER BY id"
            ),
            [
                "unban 10.0.0.0/8 offense daemon",
                "disallow 192.0.2.1/32 offense daemon",
                "ban 10.9.0.0/16 offense daemon"
            ]
        );
        // The untouched ban keeps the source that wrote it.
        assert_eq!(
            query(
                &path,
                "SELECT source FROM bans WHERE prefix = '2001:db8::/64'"
            ),
            ["cli"]
        );
    }

    #[test]
    fn an_undo_restores_the_rows_and_drops_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let before = sample();
        before
            .save_changes(&path, &State::default(), &origin())
            .unwrap();
        let mut after = before.clone();
        after.bans.clear();
        let written = after.save_changes(&path, &before, &origin()).unwrap();
        after.undo(&path, &before, &written).unwrap();
        assert_eq!(State::load(&path).unwrap(), before);
        assert_eq!(query(&path, "SELECT count(*) || '' FROM history"), ["3"]);
    }

    #[test]
    fn the_history_of_a_schema_3_database_keeps_its_ids_through_the_migration() {
        let (_dir, path) = saved_sample();
        // A database of schema 3: the history without AUTOINCREMENT.
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE history_v3 (id INTEGER PRIMARY KEY, at INTEGER NOT NULL, \
                 action TEXT NOT NULL, prefix TEXT NOT NULL, source TEXT NOT NULL, \
                 reason TEXT, actor TEXT);
                 INSERT INTO history_v3 SELECT * FROM history;
                 DROP TABLE history;
                 DELETE FROM sqlite_sequence;
                 ALTER TABLE history_v3 RENAME TO history;
                 CREATE INDEX history_by_prefix ON history (prefix);
                 PRAGMA user_version = 3;",
            )
            .unwrap();
        }
        let rows = "SELECT id || ' ' || action || ' ' || prefix FROM history ORDER BY id";
        let history = query(&path, rows);
        assert_eq!(history.len(), 3);
        State::load(&path).unwrap();
        assert_eq!(query(&path, rows), history, "the rows keep their ids");
        assert_eq!(
            query(
                &path,
                "SELECT name || ' ' || seq FROM sqlite_sequence \
                 UNION ALL SELECT 'index ' || name FROM sqlite_master \
                 WHERE type = 'index' AND tbl_name = 'history'"
            ),
            ["history 3", "index history_by_prefix"]
        );
    }

    /// The fleet publisher and `blocker top` follow the history past the last id they read:
    /// an id handed out again after an undo would be skipped.
    #[test]
    fn history_ids_are_never_handed_out_again_after_an_undo() {
        let (_dir, path) = saved_sample();
        let last_id = |path: &Path| -> i64 {
            query(path, "SELECT coalesce(max(id), 0) || '' FROM history")[0]
                .parse()
                .unwrap()
        };
        let before = State::load(&path).unwrap();
        let with = |prefix: &str| {
            let mut state = before.clone();
            state.bans.insert(prefix.parse().unwrap(), entry(None));
            state
        };
        // An undone change.
        let changed = with("198.51.100.1/32");
        let written = changed.save_changes(&path, &before, &origin()).unwrap();
        let handed_out = last_id(&path);
        changed.undo(&path, &before, &written).unwrap();
        with("198.51.100.2/32")
            .save_changes(&path, &before, &origin())
            .unwrap();
        assert!(
            last_id(&path) > handed_out,
            "the next change after an undo reused id {}",
            last_id(&path)
        );
        // An undone import.
        let handed_out = last_id(&path);
        let import = Origin::local("import");
        let rows = import_rows(&["203.0.113.0/24", "203.0.113.1/32"]);
        let at = Timestamp::from_second(1_700_000_100).unwrap();
        let mut imported = import_list(&path, at, rows).unwrap();
        let imported_up_to = last_id(&path);
        assert!(imported_up_to > handed_out);
        undo_import(&mut imported, &import).unwrap();
        let now = State::load(&path).unwrap();
        let mut next = now.clone();
        next.allow
            .insert("192.0.2.7/32".parse().unwrap(), entry(None));
        next.save_changes(&path, &now, &origin()).unwrap();
        assert!(
            last_id(&path) > imported_up_to,
            "the next change after an undone import reused id {}",
            last_id(&path)
        );
    }

    #[test]
    fn missing_database_is_empty_and_a_damaged_one_is_an_error_left_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        assert_eq!(State::load(&path).unwrap(), State::default());
        assert!(!path.exists(), "reading creates nothing");
        fs::write(&path, "not a database at all").unwrap();
        let err = State::load(&path).unwrap_err();
        assert!(err.to_string().contains("state.db"), "{err}");
        assert!(
            err.to_string().contains("fix it or replace it with"),
            "{err}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "not a database at all");
    }

    #[test]
    fn a_database_with_damaged_pages_fails_and_a_boot_falls_back_to_the_last_good_copy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let state = sample();
        state
            .save_changes(&path, &State::default(), &origin())
            .unwrap();
        let (read, damaged) = State::read_for_boot(&path, Bans::Read).unwrap();
        assert_eq!(read, Some(state.clone()));
        assert!(damaged.is_none());
        assert!(
            last_good_path(&path).exists(),
            "a sound read refreshes the copy"
        );
        // Overwrite everything after the header page: the pages of every table.
        let mut bytes = fs::read(&path).unwrap();
        assert!(bytes.len() > 4096);
        for byte in &mut bytes[4096..] {
            *byte = 0x5a;
        }
        fs::write(&path, &bytes).unwrap();
        let err = State::read(&path).and_then(|_| check_integrity(&path));
        assert!(err.is_err(), "the damage is seen");
        let (read, damaged) = State::read_for_boot(&path, Bans::Read).unwrap();
        assert_eq!(read, Some(state));
        assert!(damaged.unwrap().to_string().contains("state.db"));
        assert_eq!(fs::read(&path).unwrap(), bytes, "the damaged file is left");
        fs::remove_file(last_good_path(&path)).unwrap();
        let (read, damaged) = State::read_for_boot(&path, Bans::Read).unwrap();
        assert_eq!(read, Some(State::default()));
        assert!(damaged.is_some());
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let (_dir, path) = saved_sample();
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let err = State::load(&path).unwrap_err();
        assert!(err.to_string().contains("newer blocker"), "{err}");
    }

    /// The state file of the release before the database, as it wrote it.
    const RELEASE_JSON: &str = include_str!("../../tests/fixtures/state-v1.json");

    #[test]
    fn a_json_state_of_the_previous_release_is_imported_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        // `--state` names the database whatever its extension.
        let path = dir.path().join("state.json");
        fs::write(&path, RELEASE_JSON).unwrap();
        // Every writer looks for ended bans first: not in the JSON file, which the read after
        // imports.
        assert_eq!(next_expiry(&path).unwrap(), None);
        let state = State::load(&path).unwrap();
        let migrated = dir.path().join("state.json.migrated");
        assert_eq!(fs::read_to_string(&migrated).unwrap(), RELEASE_JSON);
        let banned: Vec<String> = state.bans.keys().map(|net| net.to_string()).collect();
        assert_eq!(
            banned,
            [
                "192.0.2.0/24",
                "198.18.0.1/32",
                "198.51.100.7/32",
                "2001:db8::/64"
            ]
        );
        assert_eq!(state.allow.len(), 1);
        assert_eq!(state.issued["cli"], 3);
        assert_eq!(state.offenses.scores.len(), 1);
        assert_eq!(state.offenses.history.len(), 1);
        // The UDP rule of that release said `events = "new"`, which meant every packet.
        let rules = state.rules.clone().unwrap();
        assert_eq!(rules.get("dns").unwrap().spec.events(), Events::All);
        assert_eq!(rules.get("ssh").unwrap().spec.events(), Events::New);
        assert_eq!(
            query(&path, "SELECT action || ' ' || source FROM history LIMIT 1"),
            ["ban import"]
        );
        // The second read is the database's.
        assert_eq!(State::load(&path).unwrap(), state);
    }

    #[test]
    fn readers_meeting_the_json_state_at_once_import_it_once() {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("state.json");
            fs::write(&path, RELEASE_JSON).unwrap();
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
            let readers: Vec<_> = (0..4)
                .map(|_| {
                    let (path, barrier) = (path.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        State::load(&path).map(|state| state.bans.len())
                    })
                })
                .collect();
            for reader in readers {
                assert_eq!(reader.join().unwrap().unwrap(), 4);
            }
            let imported = query(&path, "SELECT CAST(count(*) AS TEXT) FROM history");
            assert_eq!(imported, ["5"], "four bans and an allowlist entry, once");
        }
    }

    #[test]
    fn a_damaged_json_state_is_an_error_and_is_not_imported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        fs::write(&path, "{not json").unwrap();
        let err = State::load(&path).unwrap_err();
        assert!(
            err.to_string().contains("fix it or replace it with"),
            "{err}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "{not json");
        assert!(!dir.path().join("state.db.migrated").exists());
    }

    #[test]
    fn rules_are_checked_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut rules = RuleTable::from_specs(&[RuleSpec::ssh()]).unwrap();
        rules.rules[0].slot = 32;
        let state = State {
            rules: Some(rules),
            ..State::default()
        };
        state
            .save_changes(&path, &State::default(), &origin())
            .unwrap();
        let err = State::read(&path).unwrap_err();
        assert!(
            err.to_string().contains("slot 32; slots are 0 to 31"),
            "{err}"
        );
    }

    #[test]
    fn the_next_expiry_comes_from_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        assert_eq!(next_expiry(&path).unwrap(), None);
        let mut state = sample();
        state
            .bans
            .insert("10.1.0.0/16".parse().unwrap(), entry(Some(1_750_000_000)));
        state
            .save_changes(&path, &State::default(), &origin())
            .unwrap();
        assert_eq!(
            next_expiry(&path).unwrap(),
            Some(Timestamp::from_second(1_750_000_000).unwrap())
        );
        let conn = Connection::open(&path).unwrap();
        let mut statement = conn
            .prepare(
                "EXPLAIN QUERY PLAN \
                 SELECT min(expires_at) FROM bans WHERE expires_at IS NOT NULL",
            )
            .unwrap();
        let plan: Vec<String> = statement
            .query_map([], |row| row.get::<_, String>(3))
            .unwrap()
            .map(|row| row.unwrap())
            .collect();
        assert!(
            plan.iter().any(|step| step.contains("bans_by_expiry")),
            "{plan:?}"
        );
    }

    #[test]
    fn a_scoped_read_takes_the_touched_bans_their_covers_and_what_they_cover() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut state = State::default();
        for net in [
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.1.2.3/32",
            "10.1.9.9/32",
            "10.2.0.1/32",
            "11.0.0.1/32",
            "2001:db8::/32",
        ] {
            state.bans.insert(net.parse().unwrap(), entry(None));
        }
        state
            .allow
            .insert("192.0.2.1/32".parse().unwrap(), entry(None));
        state
            .save_changes(&path, &State::default(), &origin())
            .unwrap();
        let touched: Vec<IpNet> = vec!["10.1.0.0/16".parse().unwrap()];
        let scoped = State::read_scope(&path, &touched).unwrap().unwrap();
        let read: Vec<String> = scoped.bans.keys().map(|net| net.to_string()).collect();
        assert_eq!(
            read,
            ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/32", "10.1.9.9/32"]
        );
        assert_eq!(scoped.allow.len(), 1, "the allowlist is read whole");
        let host: Vec<IpNet> = vec!["10.2.0.1/32".parse().unwrap()];
        let scoped = State::read_scope(&path, &host).unwrap().unwrap();
        let read: Vec<String> = scoped.bans.keys().map(|net| net.to_string()).collect();
        assert_eq!(read, ["10.0.0.0/8", "10.2.0.1/32"]);
        let v6_host: Vec<IpNet> = vec!["2001:db8::5/128".parse().unwrap()];
        let scoped = State::read_scope(&path, &v6_host).unwrap().unwrap();
        let read: Vec<String> = scoped.bans.keys().map(|net| net.to_string()).collect();
        assert_eq!(
            read,
            ["2001:db8::/32"],
            "covers of all 129 lengths, one query"
        );
        let counts = summary(&path).unwrap().entries;
        assert_eq!(counts["permanent"], 7);
        assert_eq!(counts["allow"], 1);
        let mut later = state.clone();
        later
            .bans
            .insert("10.0.0.0/8".parse().unwrap(), entry(Some(1_900_000_000)));
        later.bans.remove(&"11.0.0.1/32".parse().unwrap());
        later.save_changes(&path, &state, &origin()).unwrap();
        let counts = summary(&path).unwrap().entries;
        assert_eq!(
            (counts["permanent"], counts["temporary"]),
            (5, 1),
            "kept by triggers"
        );
        use blocker_common::{LIST_ALLOW_V4, LIST_BAN_V4, LIST_BAN_V6};
        assert_eq!(
            lists_in_use(&path).unwrap(),
            LIST_ALLOW_V4 | LIST_BAN_V4 | LIST_BAN_V6
        );
    }

    #[test]
    fn stale_offense_scores_and_forgiven_histories_are_dropped_by_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let config = crate::offense::OffenseConfig::default();
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let ago = |seconds: i64| Timestamp::from_second(1_800_000_000 - seconds).unwrap();
        let mut state = State::default();
        let half_life = config.half_life.as_secs() as i64;
        for (subject, at) in [
            ("192.0.2.1/32", ago(7 * half_life)),
            ("192.0.2.2/32", ago(60)),
        ] {
            state.offenses.scores.insert(
                subject.into(),
                Score {
                    score: 9.9,
                    at,
                    reasons: Vec::new(),
                },
            );
        }
        let forget = config.escalation_forget.as_secs() as i64;
        for (net, last_ban) in [("192.0.2.1/32", ago(forget + 1)), ("192.0.2.2/32", ago(60))] {
            state
                .offenses
                .history
                .insert(net.parse().unwrap(), BanHistory { bans: 2, last_ban });
        }
        state
            .save_changes(&path, &State::default(), &origin())
            .unwrap();
        forget_offenses(&path, &config, now).unwrap();
        let left = State::load(&path).unwrap().offenses;
        assert_eq!(left.scores.keys().collect::<Vec<_>>(), ["192.0.2.2/32"]);
        assert_eq!(left.history.len(), 1);
    }

    #[test]
    fn pruning_drops_only_expired_entries() {
        let mut state = State::default();
        state
            .bans
            .insert("10.0.0.1/32".parse().unwrap(), entry(Some(100)));
        state
            .bans
            .insert("10.0.0.2/32".parse().unwrap(), entry(Some(300)));
        state
            .bans
            .insert("10.0.0.3/32".parse().unwrap(), entry(None));
        state.prune_expired(Timestamp::from_second(200).unwrap());
        let left: Vec<String> = state.bans.keys().map(|n| n.to_string()).collect();
        assert_eq!(left, ["10.0.0.2/32", "10.0.0.3/32"]);
    }
}

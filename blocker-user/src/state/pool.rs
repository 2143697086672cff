//! Open database connections kept for reuse within a long-running process. Opening one costs
//! a file open and the pragmas; the daemon opens several per batch of offenses, so it keeps
//! them ([`keep_connections`]). A kept connection is used again only while the path still
//! names the same file (a database renamed into place, removed or restored gets a fresh
//! connection). Commands do not keep theirs: closing the last connection checkpoints the WAL
//! into the database file, so a copy of the file alone is the whole state.

use std::{
    ops::{Deref, DerefMut},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
};

use rusqlite::Connection;

use super::file_identity;

/// Connections kept per process at most (the daemon's blocking pool runs a few writers and
/// readers at once).
const KEPT: usize = 8;

struct Kept {
    path: PathBuf,
    file: (u64, u64),
    conn: Connection,
}

static KEPT_CONNECTIONS: Mutex<Vec<Kept>> = Mutex::new(Vec::new());

static KEEPING: AtomicBool = AtomicBool::new(false);

/// What all SQLite connections of a process that keeps them may hold together, in bytes:
/// their page caches give pages back beyond it, so the daemon's footprint stays bounded
/// however many connections its blocking pool opens.
const HEAP_LIMIT: i64 = 48 << 20;

/// From now on, connections are kept for reuse (the daemon), and their memory is capped.
pub fn keep_connections() {
    KEEPING.store(true, Ordering::Relaxed);
    // SAFETY: sets a process-wide advisory limit; callable at any time, from any thread.
    unsafe { rusqlite::ffi::sqlite3_soft_heap_limit64(HEAP_LIMIT) };
}

/// A connection that goes back to the kept ones when dropped.
pub struct Pooled {
    path: PathBuf,
    file: Option<(u64, u64)>,
    conn: Option<Connection>,
}

impl Deref for Pooled {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        // Taken only in `drop`.
        self.conn
            .as_ref()
            .expect("a pooled connection is present until dropped")
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Connection {
        self.conn
            .as_mut()
            .expect("a pooled connection is present until dropped")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let (Some(conn), Some(file)) = (self.conn.take(), self.file) else {
            return;
        };
        // A connection left inside a transaction (an error path) is not reused.
        if !KEEPING.load(Ordering::Relaxed) || !conn.is_autocommit() || conn.is_busy() {
            return;
        }
        if let Ok(mut kept) = KEPT_CONNECTIONS.lock() {
            if kept.len() < KEPT {
                kept.push(Kept {
                    path: std::mem::take(&mut self.path),
                    file,
                    conn,
                });
            }
        }
    }
}

impl Pooled {
    /// Closes the connection instead of keeping it.
    pub fn discard(mut self) {
        self.file = None;
    }
}

/// A kept connection to the file `path` names now, if there is one.
pub fn take(path: &Path) -> Option<Pooled> {
    let file = file_identity(path)?;
    let mut kept = KEPT_CONNECTIONS.lock().ok()?;
    // Connections to files `path` no longer names are dropped on the way.
    kept.retain(|entry| entry.path != path || entry.file == file);
    let at = kept.iter().position(|entry| entry.path == path)?;
    let entry = kept.swap_remove(at);
    Some(Pooled {
        path: entry.path,
        file: Some(entry.file),
        conn: Some(entry.conn),
    })
}

/// Wraps a newly opened connection to `path` so it is kept when dropped.
pub fn keep(path: &Path, conn: Connection) -> Pooled {
    Pooled {
        path: path.to_path_buf(),
        file: file_identity(path),
        conn: Some(conn),
    }
}

/// Closes the kept connections to `path` (the last close checkpoints the WAL into the file,
/// before it is renamed into place).
pub fn close(path: &Path) {
    if let Ok(mut kept) = KEPT_CONNECTIONS.lock() {
        kept.retain(|entry| entry.path != path);
    }
}

//! `blocker import`: a list streamed into the database in one transaction, then into the maps.
//! A list of a million prefixes is never held whole, neither as text nor as a state: lines are
//! parsed as they are read, and the maps get the imported bans (with the bans inside them,
//! whose kernel expiry they may extend) from one ordered pass over the database.

use std::path::Path;

use blocker_common::{MAP_BAN_V4, MAP_BAN_V6};
use jiff::Timestamp;
use tracing::warn;

use crate::{
    listfile,
    lockout::Guard,
    pins::PinDir,
    state::{self, Capacity, ImportRow, Origin},
    store::Store,
    Error, Result,
};

/// What an import did.
pub struct ImportReport {
    pub imported: usize,
    pub expired: usize,
    pub source: String,
}

/// Imports the list at `file` (`-` for stdin): each entry banned with its own `expires=` or
/// `default_expiry`, entries already expired skipped. Unless `force`, an entry that would
/// lock the operator out refuses the whole list. `progress` is called once per line read.
pub fn import(
    pins: &PinDir,
    state_path: &Path,
    file: &Path,
    default_expiry: Option<Timestamp>,
    force: bool,
    mut progress: impl FnMut(),
) -> Result<ImportReport> {
    let (entries, source) = listfile::stream(file)?;
    // An empty scope: the lock, the maps, the allowlist and a check that a missing database
    // is not hiding bans the maps hold.
    let mut store = Store::open_scoped(pins, state_path, &[])?;
    let guard = if force { None } else { Some(Guard::detect()?) };
    let origin = Origin::local("import");
    let now = store.now.wall;
    let mut expired = 0;
    let rows = entries.filter_map(|entry| {
        progress();
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) => return Some(Err(err)),
        };
        if let Some(from) = &entry.normalized_from {
            warn!(
                "{source}:{}: host bits set in {from}; using {}",
                entry.line, entry.net
            );
        }
        let expires_at = entry.expires_at.or(default_expiry);
        if expires_at.is_some_and(|at| at <= now) {
            expired += 1;
            return None;
        }
        if let Some(guard) = &guard {
            if let Err(err) = guard.check(&entry.net, &store.state.allow) {
                return Some(Err(Error::InvalidListLine {
                    path: source.clone(),
                    line: entry.line,
                    message: err.to_string(),
                }));
            }
        }
        Some(Ok(ImportRow {
            net: entry.net,
            reason: entry.reason,
            expires_at,
        }))
    });
    let capacity = Capacity {
        v4: (MAP_BAN_V4, store.ban_capacity(true)),
        v6: (MAP_BAN_V6, store.ban_capacity(false)),
    };
    let mut imported = state::import_bans(state_path, &origin, now, &capacity, rows)?;
    // The database holds the import: the maps follow. If they refuse, the import is taken back
    // from both, so the command's failure leaves everything as it was.
    let count = imported.nets.len();
    if let Err(err) = store.sync_bans(&imported.nets, &[]) {
        match state::undo_import(&mut imported, &origin) {
            Ok(added) => {
                if let Err(undo) = store.sync_bans(&imported.nets, &added) {
                    tracing::error!("taking the import back from the maps: {undo}");
                }
            }
            Err(undo) => tracing::error!("taking the import back from the database: {undo}"),
        }
        return Err(err);
    }
    if let Err(err) = imported.checkpointed() {
        warn!("the import is stored, but copying it from the WAL failed: {err}");
    }
    Ok(ImportReport {
        imported: count,
        expired,
        source,
    })
}

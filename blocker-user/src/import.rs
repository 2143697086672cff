//! `blocker import`: a list streamed into the database in one transaction, then into the maps.
//! A list of a million prefixes is never held whole, neither as text nor as a state: lines are
//! parsed as they are read, and the maps get the imported bans (with the bans inside them,
//! whose kernel expiry they may extend) from one ordered pass over the database.

use std::path::Path;

use blocker_common::{MAP_BAN_V4, MAP_BAN_V6};
use ipnet::IpNet;
use jiff::Timestamp;
use tracing::warn;

use crate::{
    formats::{self, Format},
    lockout::Guard,
    pins::PinDir,
    state::{self, Capacity, Entry, ImportAllows, ImportRow, Origin, Replace},
    store::Store,
    Error, Result,
};

/// The reason of the allowlist entries an import adds (`--with-allow`).
pub const ALLOW_REASON: &str = "imported";

/// How an import bans its list, besides the list itself.
pub struct Options<'a> {
    pub origin: &'a Origin,
    /// The expiry of the entries without their own.
    pub default_expiry: Option<Timestamp>,
    /// Import even entries that would lock the operator out.
    pub force: bool,
    /// Servers the lock-out check protects for this import alone (a feed's list server).
    pub also_protect: &'a [std::net::IpAddr],
    /// Allowlist entries added with the bans, in the same transaction (`--with-allow`).
    pub allow: &'a [IpNet],
    /// Which bans in force the list replaces.
    pub replace: Replace<'a>,
}

/// What an import did.
pub struct ImportReport {
    pub imported: usize,
    pub expired: usize,
    pub source: String,
    /// The format read, and how it was told when detected.
    pub format: Format,
    pub detected: Option<String>,
    /// Ban entries read (before merging).
    pub entries: usize,
    /// Entries whose host bits were cleared.
    pub normalized: usize,
    /// Entries of a prefix already listed above them.
    pub duplicates: usize,
    /// Prefixes imported inside a wider prefix of the same list.
    pub covered: usize,
    /// Allowlist entries the list holds (not imported here: see `blocker import --with-allow`).
    pub allow_entries: usize,
    /// Entries whose date could not be their creation date (in the future, or no calendar
    /// day): created at the import's time instead.
    pub undated: usize,
    /// Allowlist entries added ([`Options::allow`] not on the allowlist before).
    pub allowlisted: usize,
}

/// How many entries with an unusable date are warned about one by one; the rest are counted.
const UNDATED_WARNINGS: usize = 10;

/// Imports `list` on behalf of `options.origin`: each entry banned with its own `expires=` or
/// `options.default_expiry`, entries already expired skipped, each created at the list's date
/// for it or at the import's time ([`formats::creation_date`]). Unless `options.force`, an
/// entry that would lock the operator out refuses the whole list. `progress` is called once
/// per line read. The list is read in its format ([`formats::stream`]); its allowlist entries
/// are counted, not imported: `options.allow` are, with the bans, or not at all.
pub fn import(
    pins: &PinDir,
    state_path: &Path,
    list: &formats::List,
    options: &Options,
    mut progress: impl FnMut(),
) -> Result<ImportReport> {
    let Options {
        origin,
        default_expiry,
        force,
        also_protect,
        allow,
        replace,
    } = *options;
    let formats::Stream {
        entries,
        format,
        detected,
        source,
    } = formats::stream(list.path, list.format, list.options)?;
    // An empty scope: the lock, the maps, the allowlist and a check that a missing database
    // is not hiding bans the maps hold.
    let mut store = Store::open_scoped(pins, state_path, &[])?;
    let guard = if force {
        None
    } else {
        Some(Guard::detect()?.also_protecting(also_protect))
    };
    if !force {
        allow.iter().try_for_each(crate::lockout::check_allow)?;
    }
    let now = store.now.wall;
    // The list's allowlist entries count for the lock-out check as if already stored: they
    // are, once the import commits, and nothing is stored otherwise.
    let fresh_allows: Vec<IpNet> = {
        let mut fresh: Vec<IpNet> = allow
            .iter()
            .filter(|net| !store.state.allow.contains_key(net))
            .copied()
            .collect();
        fresh.sort_unstable();
        fresh.dedup();
        fresh
    };
    let mut allowlist = store.state.allow.clone();
    for net in &fresh_allows {
        allowlist.insert(
            *net,
            Entry {
                reason: Some(ALLOW_REASON.into()),
                created_at: now,
                expires_at: None,
            },
        );
    }
    let (mut expired, mut read, mut normalized, mut allow_entries) = (0, 0, 0, 0);
    let mut undated = 0;
    let rows = entries.filter_map(|entry| {
        progress();
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) => return Some(Err(err)),
        };
        if entry.allow {
            allow_entries += 1;
            return None;
        }
        read += 1;
        if let Some(from) = &entry.normalized_from {
            normalized += 1;
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
            if let Err(err) = guard.check(&entry.net, &allowlist) {
                return Some(Err(Error::InvalidListLine {
                    path: source.clone(),
                    line: entry.line,
                    message: err.to_string(),
                }));
            }
        }
        let created_at = match formats::creation_date(&entry, now) {
            Ok(created_at) => created_at,
            Err(why) => {
                undated += 1;
                if undated <= UNDATED_WARNINGS {
                    warn!(
                        "{source}:{}: {why}: created at the import's time instead",
                        entry.line
                    );
                }
                None
            }
        };
        Some(Ok(ImportRow {
            net: entry.net,
            reason: entry.reason,
            created_at,
            expires_at,
        }))
    });
    let capacity = Capacity {
        v4: (MAP_BAN_V4, store.ban_capacity(true)),
        v6: (MAP_BAN_V6, store.ban_capacity(false)),
    };
    let allows = ImportAllows {
        nets: allow,
        reason: ALLOW_REASON,
    };
    // Until the maps follow the commit: a kill in between is healed by the next writer.
    pins.mark_maps_pending()?;
    let imported = state::import_bans(state_path, origin, now, &capacity, allows, replace, rows);
    let mut imported = match imported {
        Ok(imported) => imported,
        Err(err) => {
            // Nothing was stored.
            pins.clear_maps_pending()?;
            return Err(err);
        }
    };
    // The database holds the import: the maps follow, the allowlist first so that no ban it
    // exempts from drops for a moment. If they refuse, the import is taken back from both, so
    // the command's failure leaves everything as it was.
    let count = imported.nets.len();
    let synced = store
        .sync_allows(allow, &[])
        .and_then(|()| store.sync_bans(&imported.nets, &[]));
    if let Err(err) = synced {
        match state::undo_import(&mut imported, origin) {
            Ok(added) => {
                // Both, whichever fails: each undoes what it can.
                let bans = store.sync_bans(&imported.nets, &added);
                let allows = store.sync_allows(&[], &fresh_allows);
                if let Err(undo) = bans.and(allows) {
                    tracing::error!("taking the import back from the maps: {undo}");
                }
            }
            Err(undo) => tracing::error!("taking the import back from the database: {undo}"),
        }
        return Err(err);
    }
    // The XDP program checks the allowlist first, so these entries no longer drop anything;
    // removing them keeps `list blacklist` to what is in force (as every allowlist writer).
    if !fresh_allows.is_empty() {
        match crate::dynamic::remove_blacklisted(
            pins,
            crate::dynamic::Doomed::Inside(&fresh_allows),
        ) {
            Ok(removed) => {
                for net in removed {
                    tracing::info!("removed {net} from the dynamic blacklist: it is allowed now");
                }
            }
            Err(err) => {
                warn!("the import is stored, but clearing the dynamic blacklist failed: {err}")
            }
        }
    }
    pins.clear_maps_pending()?;
    if let Err(err) = imported.checkpointed() {
        warn!("the import is stored, but copying it from the WAL failed: {err}");
    }
    let covered = formats::covered_by_wider(&imported.nets);
    Ok(ImportReport {
        imported: count,
        expired,
        source,
        format,
        detected,
        entries: read,
        normalized,
        duplicates: read.saturating_sub(expired + count),
        covered,
        allow_entries,
        undated,
        allowlisted: fresh_allows.len(),
    })
}

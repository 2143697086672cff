//! Publishing: every writer (the CLI, an import, the daemon's offenses and jails) records its
//! changes in the state database's history, so the daemon publishes from there rather than
//! from each writer: it follows the history past a cursor kept beside the state file, turns
//! the rows of shared sources into messages, and advances the cursor once the bucket took
//! them. Changes made while the daemon was down are published when it starts. Rows written
//! by the fleet (source `fleet`) are never published: nothing received goes out again.
//!
//! A writer whose maps refuse a change takes it back (its history rows go) after the commit,
//! so the change may have been published in between: the publisher remembers what it
//! published for a while, and when rows of it are gone (ids are never handed out again), it
//! publishes the prefix's entry as it is now, or, when there is none, an undo (source
//! `undo`), which the other nodes apply only to an entry they received from this one.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use async_nats::jetstream::kv;
use futures_util::StreamExt as _;
use ipnet::IpNet;
use rusqlite::OptionalExtension as _;
use tracing::{info, warn};

use super::{
    codec::{key, shared_reason, Action, List, Message, UNDO_SOURCE},
    link::SharedLink,
};

/// How often the history is looked at: a bound on the publishing half of the propagation time.
const POLL: Duration = Duration::from_millis(20);
/// History rows read at once.
const BATCH: usize = 4096;
/// Puts in flight at once (no two for the same key: a batch holds a key once).
const IN_FLIGHT: usize = 256;
/// How long published rows are watched for an undo: longer than a writer takes from its
/// commit to its maps (an import of a million bans, seconds).
const UNDO_WINDOW: Duration = Duration::from_secs(120);
/// How often the rows watched are looked for.
const UNDO_CHECK: Duration = Duration::from_secs(1);
/// Rows watched at most (the latest): memory and each check's query stay bounded whatever
/// a burst publishes.
const UNDO_WATCHED: usize = 65_536;

/// A history row that was published.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Published {
    id: i64,
    list: List,
    net: IpNet,
    source: String,
}

/// Published rows taken back, and what to publish in their place.
#[derive(Default)]
struct TakenBack {
    gone: Vec<Published>,
    now_held: Vec<(String, Message)>,
}

/// A row to publish: what it was, and its message under its key.
struct Outgoing {
    row: Published,
    key: String,
    message: Message,
}

/// Where the history is followed from.
pub struct Outbox {
    state_path: PathBuf,
    cursor_path: PathBuf,
    share: Vec<String>,
    node: String,
}

impl Outbox {
    pub fn new(state_path: &Path, share: Vec<String>, node: String) -> Self {
        let mut cursor_path = state_path.as_os_str().to_owned();
        cursor_path.push(".fleet-published");
        Self {
            state_path: state_path.to_path_buf(),
            cursor_path: cursor_path.into(),
            share,
            node,
        }
    }

    /// The last history row published. On a node's first start with a fleet, the end of the
    /// history: the fleet shares what changes from then on.
    pub fn cursor(&self) -> anyhow::Result<i64> {
        match std::fs::read_to_string(&self.cursor_path) {
            Ok(text) => text
                .trim()
                .parse()
                .with_context(|| format!("{} holds no history id", self.cursor_path.display())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let conn = crate::state::open(&self.state_path, true)?;
                let last =
                    conn.query_row("SELECT coalesce(max(id), 0) FROM history", [], |row| {
                        row.get(0)
                    })?;
                self.save_cursor(last)?;
                Ok(last)
            }
            Err(err) => Err(err).with_context(|| format!("reading {}", self.cursor_path.display())),
        }
    }

    fn save_cursor(&self, id: i64) -> anyhow::Result<()> {
        let mut temporary = self.cursor_path.as_os_str().to_owned();
        temporary.push(".new");
        std::fs::write(&temporary, format!("{id}\n"))
            .and_then(|()| std::fs::rename(&temporary, &self.cursor_path))
            .with_context(|| format!("writing {}", self.cursor_path.display()))
    }

    /// Of the rows `published`, those taken back since (their ids are gone), and the state
    /// of their prefixes now, to publish in their place.
    fn taken_back(&self, published: &[Published]) -> anyhow::Result<TakenBack> {
        let (Some(lowest), Some(highest)) = (
            published.iter().map(|row| row.id).min(),
            published.iter().map(|row| row.id).max(),
        ) else {
            return Ok(TakenBack::default());
        };
        let conn = crate::state::open(&self.state_path, false)?;
        let mut ids = conn.prepare_cached("SELECT id FROM history WHERE id BETWEEN ?1 AND ?2")?;
        let kept: HashSet<i64> = ids
            .query_map([lowest, highest], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        let gone: Vec<Published> = published
            .iter()
            .filter(|row| !kept.contains(&row.id))
            .cloned()
            .collect();
        let mut now_held = Vec::new();
        for row in &gone {
            let (table, added, removed) = match row.list {
                List::Bans => ("bans", Action::Ban, Action::Unban),
                List::Allow => ("allow", Action::Allow, Action::Disallow),
            };
            let expiry = if row.list == List::Bans {
                "expires_at"
            } else {
                "NULL"
            };
            let held: Option<(Option<i64>, Option<String>, String)> = conn
                .query_row(
                    &format!("SELECT {expiry}, reason, source FROM {table} WHERE prefix = ?1"),
                    [row.net.to_string()],
                    |found| Ok((found.get(0)?, found.get(1)?, found.get(2)?)),
                )
                .optional()?;
            let message = match held {
                // What the undo restored: a change received from the fleet stays theirs.
                Some((expires_at, reason, source)) if self.share.contains(&source) => Message {
                    action: added,
                    expires_at,
                    reason: reason.map(|reason| shared_reason(&reason)),
                    source,
                    node: self.node.clone(),
                    at: jiff::Timestamp::now().as_second(),
                },
                Some(_) => continue,
                // An undo: the others lift only what they took from this node.
                None => Message {
                    action: removed,
                    expires_at: None,
                    reason: Some(format!("taken back ({})", row.source)),
                    source: UNDO_SOURCE.into(),
                    node: self.node.clone(),
                    at: jiff::Timestamp::now().as_second(),
                },
            };
            now_held.push((key(row.list, &row.net), message));
        }
        Ok(TakenBack { gone, now_held })
    }

    /// The changes recorded after `after`, the last state of each key only, and the id of
    /// the last row read.
    fn pending(&self, after: i64) -> anyhow::Result<(i64, Vec<Outgoing>)> {
        let conn = crate::state::open(&self.state_path, false)?;
        // A cursor past the history's end: rows it covered were taken back by an undo, and
        // before schema 4 their ids were handed out again. Fall back to the end, or the rows
        // written since with those ids would never be published.
        let newest: i64 = conn
            .prepare_cached("SELECT coalesce(max(id), 0) FROM history")?
            .query_row([], |row| row.get(0))?;
        let after = after.min(newest);
        let mut statement = conn.prepare_cached(
            "SELECT h.id, h.at, h.action, h.prefix, h.source, h.reason, \
                    b.prefix IS NOT NULL, b.expires_at \
             FROM history h LEFT JOIN bans b ON h.action = 'ban' AND b.prefix = h.prefix \
             WHERE h.id > ?1 ORDER BY h.id LIMIT ?2",
        )?;
        let mut rows = statement.query(rusqlite::params![after, BATCH as i64])?;
        let mut last = after;
        let mut latest: HashMap<String, Outgoing> = HashMap::new();
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            last = id;
            let source: String = row.get(4)?;
            if !self.share.contains(&source) {
                continue;
            }
            let action = match row.get_ref(2)?.as_str()? {
                "ban" => Action::Ban,
                "unban" => Action::Unban,
                "allow" => Action::Allow,
                "disallow" => Action::Disallow,
                // Expiry is decided by the absolute time every node holds.
                _ => continue,
            };
            let still_banned: bool = row.get(6)?;
            if action == Action::Ban && !still_banned {
                // Lifted since: a later row says so.
                continue;
            }
            let Ok(net) = row.get_ref(3)?.as_str()?.parse::<IpNet>() else {
                continue;
            };
            let message = Message {
                action,
                expires_at: if action == Action::Ban {
                    row.get(7)?
                } else {
                    None
                },
                reason: row.get::<_, Option<String>>(5)?.map(|r| shared_reason(&r)),
                source: source.clone(),
                node: self.node.clone(),
                at: row.get(1)?,
            };
            let key = key(action.list(), &net);
            let row = Published {
                id,
                list: action.list(),
                net,
                source,
            };
            latest.insert(key.clone(), Outgoing { row, key, message });
        }
        let mut changes: Vec<Outgoing> = latest.into_values().collect();
        changes.sort_by_key(|change| change.row.id);
        Ok((last, changes))
    }
}

/// Publishes the history's shared changes after `cursor` (the last row published) to
/// `bucket` until the task is dropped; a failed put keeps the cursor where it was, and the
/// batch goes again after a pause.
pub async fn publish(outbox: Outbox, mut cursor: i64, bucket: kv::Store, link: SharedLink) {
    let outbox = std::sync::Arc::new(outbox);
    // What was published lately, watched for an undo.
    let mut recent: VecDeque<(Instant, Published)> = VecDeque::new();
    let mut checked = Instant::now();
    loop {
        if checked.elapsed() >= UNDO_CHECK && !recent.is_empty() {
            checked = Instant::now();
            while recent
                .front()
                .is_some_and(|(at, _)| at.elapsed() > UNDO_WINDOW)
            {
                recent.pop_front();
            }
            let watched: Vec<Published> = recent.iter().map(|(_, row)| row.clone()).collect();
            let outbox = outbox.clone();
            match tokio::task::spawn_blocking(move || outbox.taken_back(&watched)).await {
                Ok(Ok(TakenBack { gone, now_held })) if !gone.is_empty() => {
                    let count = now_held.len();
                    let (sent, failed) = put_all(&bucket, now_held).await;
                    link.count_published(sent);
                    match failed {
                        // Still gone at the next check: published again then.
                        Some(err) => warn!("fleet: publishing {count} taken-back changes: {err:#}"),
                        None => {
                            info!("fleet: published the state of {count} changes taken back");
                            let gone: HashSet<i64> = gone.iter().map(|row| row.id).collect();
                            recent.retain(|(_, row)| !gone.contains(&row.id));
                        }
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(err)) => warn!("fleet: reading the history for taken-back changes: {err:#}"),
                Err(err) => warn!("fleet: reading the history for taken-back changes: {err}"),
            }
        }
        let after = cursor;
        let read = {
            let outbox = outbox.clone();
            tokio::task::spawn_blocking(move || outbox.pending(after)).await
        };
        let (last, changes) = match read {
            Ok(Ok(read)) => read,
            Ok(Err(err)) => {
                warn!("fleet: reading the history to publish: {err:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(err) => {
                warn!("fleet: reading the history to publish: {err}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if last == after {
            tokio::time::sleep(POLL).await;
            continue;
        }
        let count = changes.len();
        let messages = changes
            .iter()
            .map(|change| (change.key.clone(), change.message.clone()))
            .collect();
        let (sent, failed) = put_all(&bucket, messages).await;
        link.count_published(sent);
        if let Some(err) = failed {
            warn!("fleet: publishing {count} changes: {err:#}; trying again in a second");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        if count > 0 {
            info!("fleet: published {count} changes");
        }
        let now = Instant::now();
        recent.extend(changes.into_iter().map(|change| (now, change.row)));
        let excess = recent.len().saturating_sub(UNDO_WATCHED);
        recent.drain(..excess);
        let saved = {
            let outbox = outbox.clone();
            tokio::task::spawn_blocking(move || outbox.save_cursor(last)).await
        };
        match saved {
            Ok(Ok(())) => cursor = last,
            Ok(Err(err)) => warn!("fleet: {err:#}"),
            Err(err) => warn!("fleet: saving the publish cursor: {err}"),
        }
    }
}

/// Puts `changes` (each key once) into `bucket`, [`IN_FLIGHT`] at a time; returns how many
/// the bucket took, and an error if any put failed.
pub async fn put_all(
    bucket: &kv::Store,
    changes: Vec<(String, Message)>,
) -> (u64, Option<anyhow::Error>) {
    let mut puts = futures_util::stream::iter(changes)
        .map(|(key, message)| async move {
            let value = serde_json::to_vec(&message)?;
            bucket.put(key, value.into()).await?;
            anyhow::Ok(())
        })
        .buffer_unordered(IN_FLIGHT);
    let (mut sent, mut failed) = (0u64, None);
    while let Some(put) = puts.next().await {
        match put {
            Ok(()) => sent += 1,
            Err(err) => failed = Some(err),
        }
    }
    (sent, failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Entry, Origin, State};

    fn ban(state: &mut State, prefix: &str) {
        state.bans.insert(
            prefix.parse().unwrap(),
            Entry {
                reason: Some("test".into()),
                created_at: jiff::Timestamp::from_second(1_700_000_000).unwrap(),
                expires_at: None,
            },
        );
    }

    fn origin() -> Origin {
        Origin {
            source: "cli",
            actor: "tester".into(),
        }
    }

    /// A database where the CLI banned 198.51.100.1, and the state it holds.
    fn one_ban_stored() -> (tempfile::TempDir, PathBuf, State) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut state = State::default();
        ban(&mut state, "198.51.100.1/32");
        state
            .save_changes(&path, &State::default(), &origin())
            .unwrap();
        (dir, path, state)
    }

    #[test]
    fn a_published_change_taken_back_is_published_again_as_the_prefix_is_now() {
        let (_dir, path, mut state) = one_ban_stored();
        let outbox = Outbox::new(&path, vec!["cli".into()], "node".into());
        // A second ban, published, then taken back by its writer (a map refused it).
        let before = state.clone();
        ban(&mut state, "198.51.100.2/32");
        let written = state.save_changes(&path, &before, &origin()).unwrap();
        let (_, published) = outbox.pending(0).unwrap();
        let rows: Vec<Published> = published.into_iter().map(|change| change.row).collect();
        assert_eq!(rows.len(), 2);
        let taken = outbox.taken_back(&rows).unwrap();
        assert!(
            taken.gone.is_empty() && taken.now_held.is_empty(),
            "nothing taken back yet"
        );
        state.undo(&path, &before, &written).unwrap();
        let TakenBack {
            gone,
            now_held: again,
        } = outbox.taken_back(&rows).unwrap();
        assert_eq!(gone, rows[1..]);
        assert_eq!(again.len(), 1);
        let (key, message) = &again[0];
        assert_eq!(key, "ban.198-51-100-2.32");
        assert_eq!(message.action, Action::Unban, "it is not banned now");
        assert_eq!(
            message.source, UNDO_SOURCE,
            "the others lift only what came from here"
        );
    }

    #[test]
    fn a_cursor_past_the_historys_end_falls_back_to_it() {
        let (_dir, path, mut state) = one_ban_stored();
        let outbox = Outbox::new(&path, vec!["cli".into()], "node".into());
        // A cursor saved before the rows past 1 were taken back (their ids free again).
        let (last, changes) = outbox.pending(5).unwrap();
        assert_eq!((last, changes.len()), (1, 0));
        let before = state.clone();
        ban(&mut state, "198.51.100.2/32");
        state.save_changes(&path, &before, &origin()).unwrap();
        let (last, changes) = outbox.pending(last).unwrap();
        assert_eq!(last, 2);
        assert_eq!(changes.len(), 1, "the next row is published");
    }
}

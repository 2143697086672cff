//! Publishing: every writer (the CLI, an import, the daemon's offenses and jails) records its
//! changes in the state database's history, so the daemon publishes from there rather than
//! from each writer: it follows the history past a cursor kept beside the state file, turns
//! the rows of shared sources into messages, and advances the cursor once the bucket took
//! them. Changes made while the daemon was down are published when it starts. Rows written
//! by the fleet (source `fleet`) are never published: nothing received goes out again.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use async_nats::jetstream::kv;
use futures_util::StreamExt as _;
use ipnet::IpNet;
use tracing::{info, warn};

use super::{
    codec::{key, shared_reason, Action, Message},
    link::SharedLink,
};

/// How often the history is looked at: a bound on the publishing half of the propagation time.
const POLL: Duration = Duration::from_millis(20);
/// History rows read at once.
const BATCH: usize = 4096;
/// Puts in flight at once (no two for the same key: a batch holds a key once).
const IN_FLIGHT: usize = 256;

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

    /// The changes recorded after `after`, the last state of each key only, and the id of
    /// the last row read.
    fn pending(&self, after: i64) -> anyhow::Result<(i64, Vec<(String, Message)>)> {
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
        let mut latest: HashMap<String, (i64, Message)> = HashMap::new();
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
                source,
                node: self.node.clone(),
                at: row.get(1)?,
            };
            latest.insert(key(action.list(), &net), (id, message));
        }
        let mut changes: Vec<(i64, String, Message)> = latest
            .into_iter()
            .map(|(key, (id, message))| (id, key, message))
            .collect();
        changes.sort_by_key(|(id, _, _)| *id);
        Ok((last, changes.into_iter().map(|(_, k, m)| (k, m)).collect()))
    }
}

/// Publishes the history's shared changes after `cursor` (the last row published) to
/// `bucket` until the task is dropped; a failed put keeps the cursor where it was, and the
/// batch goes again after a pause.
pub async fn publish(outbox: Outbox, mut cursor: i64, bucket: kv::Store, link: SharedLink) {
    let outbox = std::sync::Arc::new(outbox);
    loop {
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
        let (sent, failed) = put_all(&bucket, changes).await;
        link.count_published(sent);
        if let Some(err) = failed {
            warn!("fleet: publishing {count} changes: {err:#}; trying again in a second");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        if count > 0 {
            info!("fleet: published {count} changes");
        }
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

    #[test]
    fn a_cursor_past_the_historys_end_falls_back_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let origin = Origin {
            source: "cli",
            actor: "tester".into(),
        };
        let mut state = State::default();
        ban(&mut state, "198.51.100.1/32");
        state
            .save_changes(&path, &State::default(), &origin)
            .unwrap();
        let outbox = Outbox::new(&path, vec!["cli".into()], "node".into());
        // A cursor saved before the rows past 1 were taken back (their ids free again).
        let (last, changes) = outbox.pending(5).unwrap();
        assert_eq!((last, changes.len()), (1, 0));
        let before = state.clone();
        ban(&mut state, "198.51.100.2/32");
        state.save_changes(&path, &before, &origin).unwrap();
        let (last, changes) = outbox.pending(last).unwrap();
        assert_eq!(last, 2);
        assert_eq!(changes.len(), 1, "the next row is published");
    }
}

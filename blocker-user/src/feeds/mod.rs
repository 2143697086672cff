//! Block-list feeds (`[[feeds]]`): each fetched every `every` with a conditional GET, its
//! prefixes banned for `ban_for` (renewed at each refresh that still lists them, lifted when a
//! refresh drops them). A failed fetch, a list that does not parse, one over `max_entries` or
//! one the lock-out check refuses keeps the last good set, renewed. The daemon refreshes the
//! feeds that are due; `blocker feeds --refresh` does it once.

mod config;
mod fetch;
mod status;

use std::{collections::HashSet, io::Write as _, net::IpAddr, path::Path};

use ipnet::IpNet;
use jiff::{SignedDuration, Timestamp};

pub use config::{validate_feeds, FeedConfig};
pub use status::{status_path, FeedStatus, Statuses};

use crate::{
    formats::{self, Format},
    pins::PinDir,
    state::Origin,
    store::Store,
    text::redacted_url,
    Result,
};

/// What one refresh of a feed did.
#[derive(Debug)]
pub struct Refreshed {
    pub url: String,
    /// Prefixes banned (renewed) by this refresh.
    pub banned: usize,
    /// Prefixes lifted because the list no longer has them.
    pub lifted: usize,
    pub not_modified: bool,
    /// Why the new list was not used (the last good set was renewed instead).
    pub error: Option<String>,
}

/// Whether `feed` is due at `now`.
fn is_due(feed: &FeedConfig, status: Option<&FeedStatus>, now: Timestamp) -> bool {
    let every = SignedDuration::try_from(feed.every).unwrap_or(SignedDuration::MAX);
    status
        .and_then(|status| status.last_attempt)
        .is_none_or(|last| now.duration_since(last) >= every)
}

/// Refreshes the feeds that are due (all of them with `force`), saving each one's status.
pub async fn refresh(
    pins: &PinDir,
    state_path: &Path,
    feeds: &[FeedConfig],
    force: bool,
) -> Result<Vec<Refreshed>> {
    let path = status_path(state_path);
    let _refreshing = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || status::lock(&path))
            .await
            .map_err(|err| io_error("locking the feeds' statuses", err))??
    };
    let mut statuses = Statuses::load(&path)?;
    let mut done = Vec::new();
    for feed in feeds {
        let now = Timestamp::now();
        if !force && !is_due(feed, statuses.0.get(&feed.url), now) {
            continue;
        }
        let mut status = statuses.0.get(&feed.url).cloned().unwrap_or_default();
        let mut server = None;
        let fetched = match fetch::client(feed) {
            Ok(client) => fetch::fetch(&client, feed, &status, &mut server).await,
            Err(err) => Err(err),
        };
        let (pins, state_path, task_feed) = (pins.clone(), state_path.to_path_buf(), feed.clone());
        let previous = status.clone();
        let (status_after, refreshed) = tokio::task::spawn_blocking(move || {
            apply(
                &pins,
                &state_path,
                &task_feed,
                (fetched, server),
                previous,
                now,
            )
        })
        .await
        .map_err(|err| io_error("refreshing a feed", err))?;
        status = status_after;
        statuses.0.insert(feed.url.clone(), status);
        statuses.save(&path)?;
        done.push(refreshed);
    }
    Ok(done)
}

/// Bans what the fetch brought (or, failing that, the last good set) and lifts what the new
/// list dropped; returns the feed's new status. No list may ban the server that answered
/// (`server`): the next refresh could not reach it.
fn apply(
    pins: &PinDir,
    state_path: &Path,
    feed: &FeedConfig,
    (fetched, server): (std::result::Result<fetch::Fetched, String>, Option<IpAddr>),
    mut status: FeedStatus,
    now: Timestamp,
) -> (FeedStatus, Refreshed) {
    let old = status.prefixes.clone();
    let mut not_modified = false;
    let listed = fetched.and_then(|fetched| match fetched {
        fetch::Fetched::NotModified => {
            not_modified = true;
            Ok((old.clone(), None))
        }
        fetch::Fetched::Body {
            file,
            etag,
            last_modified,
        } => parse(file.path(), feed, now).map(|set| (set, Some((etag, last_modified)))),
    });
    let (set, validators, mut error) = match listed {
        Ok((set, validators)) => (set, validators, None),
        Err(err) => (old.clone(), None, Some(err)),
    };
    let mut banned = 0;
    let server = server.as_slice();
    match ban(pins, state_path, feed, &set, server, now) {
        Ok(count) => banned = count,
        // A new list refused whole (the lock-out check, a full map) bans nothing: the last
        // good set is renewed instead, or its bans would lapse, as every later refresh meets
        // the same list.
        Err(err) if error.is_none() && set != old => {
            error = Some(err.to_string());
            match ban(pins, state_path, feed, &old, server, now) {
                Ok(count) => banned = count,
                Err(renewal) => {
                    error = Some(format!("{err}; renewing the last good set: {renewal}"));
                }
            }
        }
        Err(err) => error = Some(err.to_string()),
    }
    let mut lifted = 0;
    if error.is_none() {
        let kept: HashSet<&IpNet> = set.iter().collect();
        let dropped: Vec<IpNet> = old
            .iter()
            .filter(|net| !kept.contains(net))
            .copied()
            .collect();
        match lift(pins, state_path, feed, &dropped) {
            Ok(count) => lifted = count,
            Err(err) => error = Some(format!("lifting dropped prefixes: {err}")),
        }
    }
    status.last_attempt = Some(now);
    if error.is_none() {
        status.last_success = Some(now);
        status.prefixes = set;
        if let Some((etag, last_modified)) = validators {
            status.etag = etag;
            status.last_modified = last_modified;
        }
    }
    status.error = error.clone();
    if let Some(error) = &error {
        tracing::warn!(
            "feed {}: {error}; the last good list stays",
            redacted_url(&feed.url)
        );
    }
    let refreshed = Refreshed {
        url: redacted_url(&feed.url),
        banned,
        lifted,
        not_modified,
        error,
    };
    (status, refreshed)
}

/// The ban prefixes of the list in `path`, at most `max_entries`.
fn parse(
    path: &Path,
    feed: &FeedConfig,
    now: Timestamp,
) -> std::result::Result<Vec<IpNet>, String> {
    let options = formats::Options {
        now,
        temporary_for: SignedDuration::try_from(feed.ban_for).unwrap_or(SignedDuration::MAX),
    };
    // A database is read whole, as fail2ban's, and is a local file's format, never a feed's:
    // what a feed sends is refused as one before any row is read.
    if formats::is_database(path) {
        return Err("the body is an SQLite database, not a list".into());
    }
    let stream = formats::stream(path, feed.format, options).map_err(|err| err.to_string())?;
    let mut seen = HashSet::new();
    for entry in stream.entries {
        let entry = entry.map_err(|err| err.to_string())?;
        if !entry.allow && seen.insert(entry.net) && seen.len() > feed.max_entries {
            return Err(format!(
                "the list has more than max_entries = {}",
                feed.max_entries
            ));
        }
    }
    let mut set: Vec<IpNet> = seen.into_iter().collect();
    set.sort();
    Ok(set)
}

/// The reason a feed's bans carry: how its own bans are told from everyone else's. Without the
/// URL's secrets (reasons are listed, exported, served and published to the fleet): a URL
/// holding any is shown redacted, with a digest of the whole URL that keeps two such feeds
/// apart; any other URL as it is, as before.
fn feed_reason(feed: &FeedConfig) -> String {
    let shown = redacted_url(&feed.url);
    let reason = if shown.contains("***") {
        format!("feed {shown} #{:08x}", crc32fast::hash(feed.url.as_bytes()))
    } else {
        format!("feed {}", feed.url)
    };
    if crate::text::check_reason(&reason).is_ok() {
        reason
    } else {
        "feed".into()
    }
}

/// Bans (or renews) `set` until `now + ban_for` through `blocker import`'s pipeline, with the
/// lock-out check, as source `feed`. A prefix banned in force by something other than this
/// feed (the operator, a rule, an offense, another feed) is left as it is, so the feed never
/// shortens or takes over a ban it did not make; the import tells them under its lock.
fn ban(
    pins: &PinDir,
    state_path: &Path,
    feed: &FeedConfig,
    set: &[IpNet],
    server: &[IpAddr],
    now: Timestamp,
) -> Result<usize> {
    let reason = feed_reason(feed);
    let write = || -> std::io::Result<tempfile::NamedTempFile> {
        let mut list = tempfile::NamedTempFile::new()?;
        let mut out = std::io::BufWriter::new(list.as_file_mut());
        for net in set {
            writeln!(out, "{net} # {reason}")?;
        }
        out.flush()?;
        drop(out);
        Ok(list)
    };
    let list = write().map_err(|source| crate::Error::Io {
        context: "writing the feed's list".into(),
        source,
    })?;
    let expires_at = crate::clock::expiry_after(now, Some(feed.ban_for))?;
    let list = formats::List {
        path: list.path(),
        format: Format::Plain,
        options: formats::Options {
            now,
            temporary_for: SignedDuration::ZERO,
        },
    };
    let origin = Origin::local("feed");
    let options = crate::import::Options {
        origin: &origin,
        default_expiry: expires_at,
        force: false,
        also_protect: server,
        allow: &[],
        replace: crate::state::Replace::Own(&reason),
    };
    let report = crate::import::import(pins, state_path, &list, &options, || {})?;
    Ok(report.imported)
}

/// Lifts the bans this feed made on `dropped`; a prefix banned by others meanwhile stays.
/// Told apart under the store's lock, so a ban made meanwhile is seen.
fn lift(pins: &PinDir, state_path: &Path, feed: &FeedConfig, dropped: &[IpNet]) -> Result<usize> {
    if dropped.is_empty() {
        return Ok(0);
    }
    let reason = feed_reason(feed);
    let mut store = Store::open_scoped(pins, state_path, dropped)?;
    let own: Vec<IpNet> = dropped
        .iter()
        .filter(|net| {
            store
                .state
                .bans
                .get(net)
                .is_some_and(|entry| entry.reason.as_deref() == Some(reason.as_str()))
        })
        .copied()
        .collect();
    if own.is_empty() {
        return Ok(0);
    }
    store.origin = Origin::local("feed");
    store.unban(&own);
    store.commit(|| {})?;
    Ok(own.len())
}

fn io_error(context: &str, err: impl std::error::Error + Send + Sync + 'static) -> crate::Error {
    crate::Error::Io {
        context: context.to_string(),
        source: std::io::Error::other(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn feed() -> FeedConfig {
        let config =
            Config::parse("[[feeds]]\nurl = \"https://lists.example/drop.txt\"\n").unwrap();
        config.feeds[0].clone()
    }

    #[test]
    fn a_feed_s_reason_holds_none_of_its_url_s_secrets() {
        let mut feed = feed();
        feed.url = "https://me:s3cret@lists.example/drop.txt?key=K3Y".into();
        let reason = feed_reason(&feed);
        assert!(
            !reason.contains("s3cret") && !reason.contains("K3Y"),
            "{reason}"
        );
        assert!(
            reason.starts_with("feed https://me:***@lists.example/drop.txt"),
            "{reason}"
        );
        // Two feeds differing only in a secret keep their own bans apart.
        let mut other = feed.clone();
        other.url = "https://me:s3cret@lists.example/drop.txt?key=OTHER".into();
        assert_ne!(feed_reason(&other), reason);
        // A URL without secrets is the reason as it always was (its bans stay its own).
        other.url = "https://Lists.Example/drop.txt?list".into();
        assert_eq!(
            feed_reason(&other),
            "feed https://Lists.Example/drop.txt?list"
        );
    }

    #[test]
    fn a_body_that_is_a_database_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let body = dir.path().join("body");
        let db = rusqlite::Connection::open(&body).unwrap();
        db.execute_batch(
            "CREATE TABLE bans (jail TEXT, ip TEXT, timeofban INTEGER, bantime INTEGER);
             INSERT INTO bans VALUES ('sshd', '192.0.2.1', 1700000000, -1);",
        )
        .unwrap();
        drop(db);
        let err = parse(&body, &feed(), Timestamp::now()).unwrap_err();
        assert!(err.contains("SQLite database"), "{err}");
        std::fs::write(&body, "192.0.2.1\n198.51.100.0/24\n").unwrap();
        let listed = parse(&body, &feed(), Timestamp::now()).unwrap();
        assert_eq!(listed.len(), 2);
    }
}

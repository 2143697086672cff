//! What blocker remembers of each feed between refreshes, in `feeds.json` beside the state
//! database: the validators for a conditional GET, the last good set of prefixes (the bans it
//! renews and the ones a later list may drop), and how the last refresh went.

use std::{
    collections::BTreeMap,
    fs::File,
    io::Write as _,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use jiff::Timestamp;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedStatus {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub last_attempt: Option<Timestamp>,
    pub last_success: Option<Timestamp>,
    /// Why the last refresh failed; `None` after a good one.
    pub error: Option<String>,
    /// The last good list's prefixes.
    pub prefixes: Vec<IpNet>,
}

/// Every feed's status, by URL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statuses(pub BTreeMap<String, FeedStatus>);

/// Where the statuses of the feeds banning into `state_path` live.
pub fn status_path(state_path: &Path) -> PathBuf {
    state_path.with_file_name("feeds.json")
}

/// The lock a refresh holds from reading the statuses at `path` to its last save, so the
/// daemon's refreshes and `blocker feeds --refresh` never overwrite each other's (a feed's
/// last good set reverting would leave what it dropped banned). Waits for the holder.
pub fn lock(path: &Path) -> Result<Flock<File>> {
    let lock_path = path.with_extension("json.lock");
    let io = |context: &str| {
        let context = format!("{context} {}", lock_path.display());
        move |source| Error::Io { context, source }
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io("opening"))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| io("locking")(errno.into()))
}

impl Statuses {
    /// The statuses saved at `path`; none before the first refresh.
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|err| Error::UnreadableInput {
                path: path.display().to_string(),
                message: err.to_string(),
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(Error::Io {
                context: format!("reading {}", path.display()),
                source,
            }),
        }
    }

    /// Writes the statuses to `path` whole or not at all.
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let write = || -> std::io::Result<()> {
            let mut file = tempfile::NamedTempFile::new_in(dir)?;
            let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
            file.write_all(&json)?;
            file.as_file().sync_all()?;
            file.persist(path).map_err(|err| err.error)?;
            Ok(())
        };
        write().map_err(|source| Error::Io {
            context: format!("writing {}", path.display()),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_refresh_waits_for_the_first_to_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = status_path(&dir.path().join("state.db"));
        let first = lock(&path).unwrap();
        let (taken, told) = std::sync::mpsc::channel();
        let waiter = {
            let path = path.clone();
            std::thread::spawn(move || {
                let _second = lock(&path).unwrap();
                taken.send(()).unwrap();
            })
        };
        let wait = std::time::Duration::from_millis(200);
        assert!(told.recv_timeout(wait).is_err(), "taken while held");
        drop(first);
        told.recv_timeout(std::time::Duration::from_secs(5))
            .expect("taken once let go");
        waiter.join().unwrap();
    }
}

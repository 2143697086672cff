//! The pin directory: where the maps and the per-interface XDP links live in bpffs, so the
//! program keeps running and stays manageable after the loading process exits.

use std::{
    fs::{self, File},
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use blocker_common::ALL_MAPS;
use nix::{
    fcntl::{Flock, FlockArg},
    sys::statfs::{statfs, BPF_FS_MAGIC},
};

use crate::{Error, Result};

/// Default pin directory.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/blocker";

/// Sub-directory holding one pinned link per attached interface, named `IFACE@MODE`. bpffs
/// refuses names with a dot, which VLAN interfaces have (`eth0.100`), so a dot is stored as a
/// colon, which no interface name contains.
const LINKS_DIR: &str = "links";

/// Symlink in the pin directory to the state file `blocker load` used, so every later command
/// uses the same one. bpffs holds symlinks but no regular files.
const STATE_LINK: &str = "state";

/// Symlink in the pin directory whose target names the layout of the pinned maps.
const LAYOUT_LINK: &str = "layout";
/// Present while a writer's database commit may be ahead of the maps ([`PinDir::mark_maps_pending`]).
const MAPS_PENDING_LINK: &str = "maps-pending";

/// Bumped whenever a map changes type or meaning without changing the size of its key or
/// value; size changes are caught by [`layout`] on their own.
const LAYOUT_VERSION: u32 = 2;

/// The layout of the maps this build pins: a version and the size of every key and value, so
/// pins left by a build that lays them out differently are never reused.
pub fn layout() -> String {
    use blocker_common::{
        AllowValue, BanValue, BlacklistEntry, Counter, DropSamples, Event, History, HistoryKey,
        Reason, Rule, RuleStats, Settings, ShortHistory, SourceKey, SourceKeyV4,
        BLACKLIST_FILTER_LINE, BLACKLIST_FILTER_LINES, MAX_RULES,
    };
    use std::mem::size_of;
    let sizes = [
        size_of::<BanValue>(),
        size_of::<AllowValue>(),
        size_of::<Rule>(),
        size_of::<RuleStats>(),
        size_of::<Settings>(),
        size_of::<HistoryKey>(),
        size_of::<History>(),
        size_of::<ShortHistory>(),
        size_of::<SourceKey>(),
        size_of::<SourceKeyV4>(),
        size_of::<BlacklistEntry>(),
        size_of::<Event>(),
        size_of::<Counter>(),
        size_of::<DropSamples>(),
        MAX_RULES,
        Reason::COUNT as usize,
        ALL_MAPS.len(),
        BLACKLIST_FILTER_LINES as usize * BLACKLIST_FILTER_LINE,
    ];
    let sizes: Vec<String> = sizes.iter().map(usize::to_string).collect();
    format!("v{LAYOUT_VERSION}-{}", sizes.join("."))
}

/// How the program is attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// In the driver, before the kernel allocates an skb.
    Native,
    /// Generic XDP in the network stack, for drivers without XDP support.
    Skb,
}

impl AttachMode {
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "native" => Some(AttachMode::Native),
            "skb" => Some(AttachMode::Skb),
            _ => None,
        }
    }
}

/// One interface the program is attached to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Attachment {
    pub iface: String,
    pub mode: AttachMode,
}

#[derive(Debug, Clone)]
pub struct PinDir {
    pub path: PathBuf,
}

/// An exclusive lock on the pin directory, held by every writer until dropped.
pub struct DirLock {
    _flock: Flock<File>,
}

impl PinDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn map_path(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.path.join(LINKS_DIR)
    }

    pub fn link_path(&self, attachment: &Attachment) -> PathBuf {
        let iface = attachment.iface.replace('.', ":");
        self.links_dir()
            .join(format!("{iface}@{}", attachment.mode.name()))
    }

    /// Opens the pinned map `name`.
    pub fn open_map(&self, name: &str) -> Result<aya::maps::MapData> {
        let path = self.map_path(name);
        aya::maps::MapData::from_pin(&path)
            .map_err(Error::map(format!("opening map {}", path.display())))
    }

    /// True when every map is pinned (a previous `blocker load` succeeded).
    pub fn maps_pinned(&self) -> bool {
        ALL_MAPS.iter().all(|name| self.map_path(name).exists())
    }

    /// Fails with the "run blocker load" hint unless the program's maps are pinned here, and
    /// refuses pins of another layout.
    pub fn require_loaded(&self) -> Result<()> {
        if !self.maps_pinned() {
            return Err(Error::NotLoaded(self.path.clone()));
        }
        self.require_layout()
    }

    /// Refuses pins that do not carry this build's layout: reusing them would have the
    /// program and the commands read each other's bytes wrongly.
    pub fn require_layout(&self) -> Result<()> {
        let found = fs::read_link(self.path.join(LAYOUT_LINK))
            .ok()
            .map(|target| target.to_string_lossy().into_owned());
        match found {
            Some(found) if found == layout() => Ok(()),
            found => Err(Error::PinLayout {
                dir: self.path.clone(),
                found: found.unwrap_or_else(|| "no layout recorded".into()),
                expected: layout(),
            }),
        }
    }

    /// Records this build's layout beside freshly created maps.
    pub fn record_layout(&self) -> Result<()> {
        let link = self.path.join(LAYOUT_LINK);
        std::os::unix::fs::symlink(layout(), &link)
            .map_err(Error::io(format!("creating {}", link.display())))
    }

    /// Marks the maps as possibly behind the database, before a writer commits: a writer
    /// killed before its maps follow leaves the mark, and the next writer, finding it, brings
    /// every map to the database first ([`crate::store::Store::open_scoped`]). The caller
    /// holds the lock. A symlink: bpffs holds no regular files.
    pub fn mark_maps_pending(&self) -> Result<()> {
        let link = self.path.join(MAPS_PENDING_LINK);
        match std::os::unix::fs::symlink("database-ahead", &link) {
            Err(err) if err.kind() != std::io::ErrorKind::AlreadyExists => {
                Err(Error::io(format!("creating {}", link.display()))(err))
            }
            _ => Ok(()),
        }
    }

    /// Whether a writer left the maps possibly behind the database.
    pub fn maps_pending(&self) -> bool {
        fs::symlink_metadata(self.path.join(MAPS_PENDING_LINK)).is_ok()
    }

    /// Takes the mark away once the maps hold what the database does.
    pub fn clear_maps_pending(&self) -> Result<()> {
        let link = self.path.join(MAPS_PENDING_LINK);
        match fs::remove_file(&link) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("removing {}", link.display()))(err))
            }
            _ => Ok(()),
        }
    }

    /// The state file recorded by `blocker load`, if any.
    pub fn recorded_state(&self) -> Option<PathBuf> {
        fs::read_link(self.path.join(STATE_LINK)).ok()
    }

    /// Records `state` as the state file of what is loaded here.
    pub fn record_state(&self, state: &Path) -> Result<()> {
        let link = self.path.join(STATE_LINK);
        let state = std::path::absolute(state)
            .map_err(Error::io(format!("resolving {}", state.display())))?;
        std::os::unix::fs::symlink(state, &link)
            .map_err(Error::io(format!("creating {}", link.display())))
    }

    /// The state file of commands on this directory: the one `blocker load` recorded, else
    /// `explicit` (`--state`, `BLOCKER_STATE` or the config's `[daemon] state`), else the
    /// default. An explicit file other than the recorded one is refused, so no command
    /// writes a state the kernel maps do not come from.
    pub fn state_path(&self, explicit: Option<&Path>) -> Result<PathBuf> {
        if self.path.exists() {
            self.own_metadata()?;
        }
        let given = explicit
            .map(|path| {
                std::path::absolute(path)
                    .map_err(Error::io(format!("resolving {}", path.display())))
            })
            .transpose()?;
        match (self.recorded_state(), given) {
            (Some(recorded), Some(given)) if canonical(&recorded) != canonical(&given) => {
                Err(Error::StateElsewhere {
                    pin_dir: self.path.clone(),
                    recorded,
                    given,
                })
            }
            (Some(recorded), _) => Ok(recorded),
            (None, Some(given)) => Ok(given),
            (None, None) => Ok(PathBuf::from(crate::state::DEFAULT_STATE_PATH)),
        }
    }

    /// Removes every map pin and record in the directory (not the links).
    pub fn remove_pins_and_records(&self) -> Result<()> {
        self.remove_files_in(&self.path)
    }

    /// Removes every pin, link and record in the directory, then the directory: what a
    /// complete load created, and whatever a failed or older one left.
    pub fn remove_all(&self) -> Result<()> {
        self.remove_files_in(&self.links_dir())?;
        self.remove_files_in(&self.path)?;
        for dir in [self.links_dir(), self.path.clone()] {
            match fs::remove_dir(&dir) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::Io {
                        context: format!("removing {}", dir.display()),
                        source: err,
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Removes the files (pins, symlinks) directly in `dir`; sub-directories stay.
    fn remove_files_in(&self, dir: &Path) -> Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(Error::Io {
                    context: format!("reading {}", dir.display()),
                    source,
                })
            }
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                continue;
            }
            let path = entry.path();
            fs::remove_file(&path).map_err(Error::io(format!("removing {}", path.display())))?;
        }
        Ok(())
    }

    /// Interfaces with a pinned link, sorted by name.
    pub fn attachments(&self) -> Result<Vec<Attachment>> {
        let entries = match fs::read_dir(self.links_dir()) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::Io {
                    context: format!("reading {}", self.links_dir().display()),
                    source,
                })
            }
        };
        let mut attachments: Vec<Attachment> = entries
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let (iface, mode) = name.rsplit_once('@')?;
                Some(Attachment {
                    iface: iface.replace(':', "."),
                    mode: AttachMode::from_name(mode)?,
                })
            })
            .collect();
        attachments.sort_by(|a, b| a.iface.cmp(&b.iface));
        Ok(attachments)
    }

    /// Checks that the directory is, or would be created, on a bpf filesystem.
    pub fn require_bpffs(&self) -> Result<()> {
        let existing = self
            .path
            .ancestors()
            .find(|dir| dir.exists())
            .unwrap_or(Path::new("/"));
        match statfs(existing) {
            Ok(fs) if fs.filesystem_type() == BPF_FS_MAGIC => Ok(()),
            _ => Err(Error::NoBpffs(existing.to_path_buf())),
        }
    }

    /// Creates the directory (and the links sub-directory) if needed, root's alone (0700)
    /// from the start: created open and closed up after, it would let a user open it in
    /// between and hold the writers' lock through that descriptor for good. Closes up one
    /// that an older version created open.
    pub fn create(&self) -> Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.links_dir())
            .map_err(Error::io(format!(
                "creating {}",
                self.links_dir().display()
            )))?;
        self.make_private()
    }

    /// Mode 0700: only root can open the directory, so only root can take the writers' lock
    /// on it (an open directory would let any user hold the lock and hang every writer).
    fn make_private(&self) -> Result<()> {
        let meta = self.own_metadata()?;
        if meta.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(&self.path, fs::Permissions::from_mode(0o700)).map_err(
                Error::io(format!("setting the mode of {}", self.path.display())),
            )?;
        }
        Ok(())
    }

    /// The directory's metadata, if it is our own real directory (not a symlink): bpffs is
    /// world-writable (mode 1777), so any user can create the pin directory first and plant
    /// pins or a `state` record in it.
    fn own_metadata(&self) -> Result<fs::Metadata> {
        let meta = fs::symlink_metadata(&self.path)
            .map_err(Error::io(format!("reading {}", self.path.display())))?;
        let euid = nix::unistd::geteuid().as_raw();
        if !meta.is_dir() || meta.uid() != euid {
            return Err(Error::PinDirNotOurs {
                dir: self.path.clone(),
                owner: meta.uid(),
                euid,
            });
        }
        Ok(meta)
    }

    /// Takes the writers' lock; waits while another writer holds it. The directory is made
    /// root's alone first.
    pub fn lock(&self) -> Result<DirLock> {
        loop {
            self.make_private()?;
            let dir = File::open(&self.path)
                .map_err(Error::io(format!("opening {}", self.path.display())))?;
            let flock =
                Flock::lock(dir, FlockArg::LockExclusive).map_err(|(_, errno)| Error::Io {
                    context: format!("locking {}", self.path.display()),
                    source: errno.into(),
                })?;
            // While this waited, `unload` may have removed the directory and `load` made it
            // again: the old one's lock guards nothing, so the new one's is taken.
            let held = flock
                .metadata()
                .map_err(Error::io(format!("reading {}", self.path.display())))?;
            match fs::symlink_metadata(&self.path) {
                Ok(now) if (now.dev(), now.ino()) == (held.dev(), held.ino()) => {
                    return Ok(DirLock { _flock: flock })
                }
                Ok(_) => continue,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::NotLoaded(self.path.clone()))
                }
                Err(err) => return Err(Error::io(format!("reading {}", self.path.display()))(err)),
            }
        }
    }
}

/// `path` with symlinks of its directory resolved (the file itself may not exist yet).
fn canonical(path: &Path) -> PathBuf {
    if let Ok(path) = fs::canonicalize(path) {
        return path;
    }
    match (path.parent().map(fs::canonicalize), path.file_name()) {
        (Some(Ok(dir)), Some(name)) => dir.join(name),
        _ => path.to_path_buf(),
    }
}

/// Commands that change kernel state need root; say so plainly instead of failing on EPERM.
pub fn require_root() -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::NotRoot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_that_waited_while_the_directory_was_made_again_locks_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let pins = PinDir::new(dir.path().join("pins"));
        fs::create_dir(&pins.path).unwrap();
        let unloading = pins.lock().unwrap();
        let (taken, told) = std::sync::mpsc::channel();
        let waiter = {
            let pins = pins.clone();
            std::thread::spawn(move || {
                let lock = pins.lock();
                taken.send(()).unwrap();
                lock.map(|_| ())
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        // `unload` removes the directory, `load` makes it again and holds its lock.
        fs::remove_dir(&pins.path).unwrap();
        fs::create_dir(&pins.path).unwrap();
        let loading = pins.lock().unwrap();
        drop(unloading);
        let wait = std::time::Duration::from_millis(300);
        assert!(
            told.recv_timeout(wait).is_err(),
            "the waiter went on with the removed directory's lock, beside the load"
        );
        drop(loading);
        told.recv_timeout(std::time::Duration::from_secs(5))
            .expect("the new directory's lock, once the load lets it go");
        waiter.join().unwrap().unwrap();
    }

    #[test]
    fn the_recorded_state_wins_and_another_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pins = PinDir::new(dir.path().join("pins"));
        fs::create_dir_all(&pins.path).unwrap();
        let state = dir.path().join("state.json");
        let other = dir.path().join("other.json");
        assert_eq!(
            pins.state_path(Some(&other)).unwrap(),
            other,
            "nothing recorded"
        );
        assert_eq!(
            pins.state_path(None).unwrap(),
            Path::new(crate::state::DEFAULT_STATE_PATH)
        );
        pins.record_state(&state).unwrap();
        assert_eq!(pins.state_path(None).unwrap(), state);
        let via_link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &via_link).unwrap();
        assert_eq!(
            pins.state_path(Some(&via_link.join("state.json"))).unwrap(),
            state,
            "the same file by another path"
        );
        let err = pins.state_path(Some(&other)).unwrap_err();
        assert!(err.is_bad_input());
        assert!(err.to_string().contains("keeps its state in"), "{err}");
    }

    /// Watches the directory while it is created and removed again and again: it must never
    /// show up open to other users, not even between its creation and a chmod, when a user
    /// could open it and keep the descriptor to hold the writers' lock.
    #[test]
    fn the_directory_is_never_seen_open_to_others() {
        let dir = tempfile::tempdir().unwrap();
        let pins = PinDir::new(dir.path().join("pins"));
        let modes = crate::test_support::modes_seen_while(&pins.path, || {
            for _ in 0..300 {
                pins.create().unwrap();
                fs::remove_dir_all(&pins.path).unwrap();
            }
        });
        let seen: Vec<String> = modes.iter().map(|mode| format!("{mode:o}")).collect();
        assert!(
            modes.iter().all(|&mode| mode & 0o077 == 0),
            "modes seen: {seen:?}"
        );
    }

    #[test]
    fn pins_without_this_layout_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pins = PinDir::new(dir.path());
        let err = pins.require_layout().unwrap_err();
        assert!(err.to_string().contains("no layout recorded"), "{err}");
        std::os::unix::fs::symlink("v0-1.2.3", dir.path().join(LAYOUT_LINK)).unwrap();
        let err = pins.require_layout().unwrap_err();
        assert!(err.to_string().contains("v0-1.2.3"), "{err}");
        fs::remove_file(dir.path().join(LAYOUT_LINK)).unwrap();
        pins.record_layout().unwrap();
        assert!(pins.require_layout().is_ok());
    }
}

//! The pin directory: where the maps and the per-interface XDP links live in bpffs, so the
//! program keeps running and stays manageable after the loading process exits.

use std::{
    fs::{self, File},
    os::unix::fs::PermissionsExt,
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

    /// Fails with the "run blocker load" hint unless the program's maps are pinned here.
    pub fn require_loaded(&self) -> Result<()> {
        if self.maps_pinned() {
            Ok(())
        } else {
            Err(Error::NotLoaded(self.path.clone()))
        }
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

    /// Creates the directory (and the links sub-directory) if needed, root's alone (0700),
    /// and closes up one that an older version created open.
    pub fn create(&self) -> Result<()> {
        fs::create_dir_all(self.links_dir()).map_err(Error::io(format!(
            "creating {}",
            self.links_dir().display()
        )))?;
        self.make_private()
    }

    /// Mode 0700: only root can open the directory, so only root can take the writers' lock
    /// on it (an open directory would let any user hold the lock and hang every writer).
    fn make_private(&self) -> Result<()> {
        let meta = fs::metadata(&self.path)
            .map_err(Error::io(format!("reading {}", self.path.display())))?;
        if meta.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(&self.path, fs::Permissions::from_mode(0o700)).map_err(
                Error::io(format!("setting the mode of {}", self.path.display())),
            )?;
        }
        Ok(())
    }

    /// Takes the writers' lock; waits while another writer holds it. The directory is made
    /// root's alone first.
    pub fn lock(&self) -> Result<DirLock> {
        self.make_private()?;
        let dir = File::open(&self.path)
            .map_err(Error::io(format!("opening {}", self.path.display())))?;
        Flock::lock(dir, FlockArg::LockExclusive)
            .map(|flock| DirLock { _flock: flock })
            .map_err(|(_, errno)| Error::Io {
                context: format!("locking {}", self.path.display()),
                source: errno.into(),
            })
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

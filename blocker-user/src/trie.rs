//! One pinned LPM trie (a ban or allowlist map) as the store writes it: single entries, and
//! many at once through the kernel's batch update, which a million-entry import needs (one
//! system call per entry is a third of its map pass).

use std::os::fd::{AsFd, AsRawFd};

use aya::{
    maps::{lpm_trie::Key, IterableMap, LpmTrie, Map, MapData, MapError},
    sys::SyscallError,
};
use aya_obj::generated::{bpf_attr, bpf_cmd};
use nix::libc;

use crate::{pins::PinDir, Error, Result};

/// Entries handed to the kernel per batch update: enough to make the system call's cost
/// vanish, small enough that the key and value copies stay in cache.
pub const UPDATE_BATCH: usize = 1024;

/// One pinned LPM trie with what error messages need to say about it.
pub struct Trie<K, V> {
    map: LpmTrie<MapData, K, V>,
    pub name: &'static str,
    pub capacity: u32,
    /// Cleared when the kernel has no batch update for LPM tries (before 5.6): entries are
    /// then written one by one.
    batches: bool,
}

impl<K: aya::Pod, V: aya::Pod> Trie<K, V> {
    pub fn open(pins: &PinDir, name: &'static str) -> Result<Self> {
        let context = format!("opening map {name}");
        let data = pins.open_map(name)?;
        let capacity = data
            .info()
            .map_err(Error::map(context.clone()))?
            .max_entries();
        let map = LpmTrie::try_from(Map::LpmTrie(data)).map_err(Error::map(context))?;
        Ok(Self {
            map,
            name,
            capacity,
            batches: true,
        })
    }

    /// Inserts or replaces one entry; a refusal because the map is full says so.
    pub fn insert(&mut self, (prefix_len, data): (u32, K), value: V) -> Result<()> {
        self.map
            .insert(&Key::new(prefix_len, data), value, 0)
            .map_err(|err| self.update_error(err))
    }

    /// Inserts or replaces every entry of `entries`, in order, [`UPDATE_BATCH`] at a time.
    /// On failure the entries before the refused one are written, as with [`Self::insert`]
    /// one by one.
    pub fn insert_all(&mut self, entries: &[((u32, K), V)]) -> Result<()> {
        let mut keys = Vec::with_capacity(UPDATE_BATCH.min(entries.len()));
        let mut values = Vec::with_capacity(keys.capacity());
        for chunk in entries.chunks(UPDATE_BATCH) {
            if !self.batches {
                self.insert_each(chunk)?;
                continue;
            }
            keys.clear();
            values.clear();
            for ((prefix_len, data), value) in chunk {
                keys.push(Key::new(*prefix_len, *data));
                values.push(*value);
            }
            match self.update_batch(&keys, &values) {
                Ok(()) => {}
                Err((0, err)) if err.raw_os_error() == Some(libc::ENOTSUP) => {
                    // ENOTSUPP (524) is the kernel's "no such operation for this map type".
                    self.batches = false;
                    self.insert_each(chunk)?;
                }
                Err((_, io_error)) => {
                    return Err(self.update_error(MapError::SyscallError(SyscallError {
                        call: "bpf_map_update_batch",
                        io_error,
                    })))
                }
            }
        }
        Ok(())
    }

    /// Inserts `entries` one system call each.
    fn insert_each(&mut self, entries: &[((u32, K), V)]) -> Result<()> {
        entries
            .iter()
            .try_for_each(|(key, value)| self.insert(*key, *value))
    }

    /// `BPF_MAP_UPDATE_BATCH` of `keys[i] -> values[i]`. On failure, how many entries the
    /// kernel wrote before it stopped, and why it stopped.
    fn update_batch(
        &self,
        keys: &[Key<K>],
        values: &[V],
    ) -> std::result::Result<(), (u32, std::io::Error)> {
        // The kernel reads `count` keys and values; both slices hold that many.
        let count = keys.len().min(values.len()) as u32;
        // SAFETY: bpf_attr is a plain C union for which all zero bytes is a valid value.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        let batch = unsafe { &mut attr.batch };
        batch.keys = keys.as_ptr() as u64;
        batch.values = values.as_ptr() as u64;
        batch.count = count;
        batch.map_fd = self.map.map().fd().as_fd().as_raw_fd() as u32;
        // SAFETY: the pointers in `attr` stay valid for the call (borrowed slices of `count`
        // elements, laid out as the map's key and value); the kernel writes back only into
        // `attr`, which lives for the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                bpf_cmd::BPF_MAP_UPDATE_BATCH as libc::c_long,
                &mut attr as *mut bpf_attr,
                std::mem::size_of::<bpf_attr>(),
            )
        };
        if ret == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        // SAFETY: as above; the kernel wrote the count of entries it processed.
        let written = unsafe { attr.batch.count };
        let err = match err.raw_os_error() {
            Some(524) => std::io::Error::from_raw_os_error(libc::ENOTSUP),
            _ => err,
        };
        Err((written, err))
    }

    /// The error of a refused update: a full map says so.
    fn update_error(&self, err: MapError) -> Error {
        match &err {
            MapError::SyscallError(syscall)
                if matches!(
                    syscall.io_error.raw_os_error(),
                    Some(libc::ENOSPC | libc::E2BIG)
                ) =>
            {
                Error::MapFull {
                    map: self.name,
                    capacity: self.capacity,
                }
            }
            _ => Error::Map {
                context: format!("updating map {}", self.name),
                source: err,
            },
        }
    }

    /// Every entry in the map.
    pub fn entries(&self) -> Result<Vec<(u8, K, V)>> {
        self.map
            .iter()
            .map(|entry| {
                let (key, value) =
                    entry.map_err(Error::map(format!("reading map {}", self.name)))?;
                // LPM prefix lengths are at most 128.
                Ok((key.prefix_len() as u8, key.data(), value))
            })
            .collect()
    }

    /// Looks `key` up by longest prefix.
    pub fn lookup(&self, (prefix_len, data): (u32, K)) -> std::result::Result<(), MapError> {
        self.map.get(&Key::new(prefix_len, data), 0).map(drop)
    }

    /// Removes one entry; one that is already gone is fine.
    pub fn remove(&mut self, (prefix_len, data): (u32, K)) -> Result<()> {
        match self.map.remove(&Key::new(prefix_len, data)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(syscall))
                if syscall.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(err) => Err(Error::Map {
                context: format!("removing from map {}", self.name),
                source: err,
            }),
        }
    }
}

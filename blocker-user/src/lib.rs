//! blocker's userspace library: loading and attaching the XDP program, and managing bans, the
//! allowlist and counters through the maps it pins in bpffs.

pub mod addr;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod dynamic;
pub mod error;
pub mod events;
pub mod feeds;
pub mod fleet;
pub mod formats;
pub mod history;
pub mod import;
pub mod listfile;
pub mod listing;
pub mod loader;
pub mod lockout;
pub mod logs;
pub mod nic;
pub mod offense;
pub mod pins;
pub mod rules;
pub mod state;
pub mod status;
pub mod store;
#[cfg(test)]
mod test_support;
pub mod text;
mod trie;

pub use error::{Error, Result};

/// The XDP object built from blocker-ebpf, embedded at build time.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/blocker-xdp"));

#[cfg(test)]
mod tests {
    use blocker_common::{ALL_MAPS, PROGRAM_NAME};

    /// Map and program names are written twice: as constants in blocker-common and as the
    /// static names in the XDP program. This keeps them from drifting apart.
    #[test]
    fn the_object_declares_every_shared_name() {
        let object =
            aya_obj::Object::parse(super::EBPF_OBJECT).expect("the embedded object parses");
        for name in ALL_MAPS {
            assert!(
                object.maps.contains_key(name),
                "map {name} is missing from the object"
            );
        }
        assert!(
            object.programs.contains_key(PROGRAM_NAME),
            "program {PROGRAM_NAME} is missing; it has {:?}",
            object.programs.keys().collect::<Vec<_>>()
        );
    }

    /// `doctor` and `top` report the fill of the maps that take entries as they come (hash
    /// maps and tries): a map left out of `FILLING_MAPS` would fill up unseen.
    #[test]
    fn every_map_that_fills_is_checked_for_fill() {
        use aya_obj::generated::bpf_map_type::{
            BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LPM_TRIE, BPF_MAP_TYPE_LRU_HASH,
        };
        let object =
            aya_obj::Object::parse(super::EBPF_OBJECT).expect("the embedded object parses");
        let filling = [
            BPF_MAP_TYPE_HASH,
            BPF_MAP_TYPE_LRU_HASH,
            BPF_MAP_TYPE_LPM_TRIE,
        ];
        for name in ALL_MAPS {
            let map_type = object.maps[name].map_type();
            let fills = filling.iter().any(|kind| *kind as u32 == map_type);
            assert_eq!(
                crate::status::FILLING_MAPS.contains(&name),
                fills,
                "map {name} (type {map_type}) and FILLING_MAPS disagree"
            );
        }
    }
}

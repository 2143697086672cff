//! blocker's userspace library: loading and attaching the XDP program, and managing bans, the
//! allowlist and counters through the maps it pins in bpffs.

pub mod addr;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod dynamic;
pub mod error;
pub mod events;
pub mod listfile;
pub mod loader;
pub mod offense;
pub mod pins;
pub mod rules;
pub mod state;
pub mod status;
pub mod store;

pub use error::{Error, Result};

/// The XDP object built from blocker-ebpf, embedded at build time.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/blocker-xdp"));

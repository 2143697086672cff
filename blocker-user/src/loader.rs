//! Loading the XDP program, attaching it to an interface and pinning it; and the reverse.

use std::path::Path;

use aya::{
    programs::{links::FdLink, links::PinnedLink, Xdp, XdpMode},
    util::KernelVersion,
    Ebpf, EbpfLoader,
};
use blocker_common::{
    ALL_MAPS, MAP_ALLOW_V4, MAP_ALLOW_V6, MAP_BAN_V4, MAP_BAN_V6, MAP_BLACKLIST_V4,
    MAP_BLACKLIST_V6, MAP_HISTORY, MAP_HISTORY_LONG, PROGRAM_NAME,
};
use tracing::warn;

use crate::{
    config::Config,
    dynamic,
    pins::{require_root, AttachMode, Attachment, PinDir},
    store, Error, Result, EBPF_OBJECT,
};

/// The attach mode a user asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeChoice {
    /// Native, falling back to skb (with a warning) when the driver has no XDP support.
    #[default]
    Auto,
    Native,
    Skb,
}

/// What `load` did.
#[derive(Debug)]
pub struct Loaded {
    pub attachment: Attachment,
    /// How many bans and allowlist entries were restored from the state file; `None` when the
    /// maps already existed (another interface shares them).
    pub restored: Option<usize>,
    /// The loaded program, for callers that stay in the foreground (its log buffer).
    pub ebpf: Ebpf,
}

/// Loads the program, restores the state file into fresh maps, attaches to `iface` and pins
/// the maps and the link, so blocking goes on after this process exits.
pub fn load(
    pins: &PinDir,
    state_path: &Path,
    iface: &str,
    mode: ModeChoice,
    config: &Config,
) -> Result<Loaded> {
    require_root()?;
    let running = KernelVersion::current()
        .map_err(|err| Error::Unsupported(format!("reading the kernel version: {err}")))?;
    require_kernel(running)?;
    pins.require_bpffs()?;
    let if_index = nix::net::if_::if_nametoindex(iface)
        .map_err(|_| Error::NoSuchInterface(iface.to_string()))?;
    require_ethernet(iface)?;
    pins.create()?;
    let lock = pins.lock()?;
    if pins.attachments()?.iter().any(|a| a.iface == iface) {
        return Err(Error::AlreadyLoaded(iface.to_string()));
    }
    let fresh = !pins.maps_pinned();
    if fresh {
        // What a failed or interrupted load left (some maps, records) is never reused.
        pins.remove_pins_and_records()?;
        pins.record_layout()?;
        pins.record_state(state_path)?;
    } else {
        pins.require_layout()?;
        if pins.recorded_state().is_none() {
            pins.record_state(state_path)?;
        }
    }
    let result = load_restore_attach(pins, state_path, (iface, if_index), mode, config, fresh);
    drop(lock);
    if result.is_err() && fresh {
        // Leave nothing behind that would make the next load think maps are in use.
        if let Err(err) = pins.remove_all() {
            warn!("cleaning up after the failed load: {err}");
        }
    }
    result
}

/// `ARPHRD_ETHER`, the link type of Ethernet devices (veth, bridges, VLANs, VXLAN and
/// gretap tunnels, bonds included).
const ARPHRD_ETHER: u16 = 1;

/// Refuses an interface whose frames have no Ethernet header (a tun, GRE, IPIP or WireGuard
/// device, loopback): the program reads every frame as Ethernet, so there it would parse no
/// packet as IP and check nothing, while `load` reported success.
fn require_ethernet(iface: &str) -> Result<()> {
    match crate::nic::link_type(iface) {
        Some(link_type) if link_type != ARPHRD_ETHER => Err(Error::NotEthernet {
            iface: iface.to_string(),
            link_type,
        }),
        _ => Ok(()),
    }
}

/// The minimum kernel: `bpf_loop` came in 5.17 and `bpf_xdp_load_bytes` in 5.18.
pub const MIN_KERNEL: KernelVersion = KernelVersion::new(5, 18, 0);

/// Refuses a kernel older than [`MIN_KERNEL`] before anything is loaded, rather than with a
/// verifier message about an unknown helper.
pub fn require_kernel(running: KernelVersion) -> Result<()> {
    if running < MIN_KERNEL {
        return Err(Error::KernelTooOld {
            running: running.to_string(),
        });
    }
    Ok(())
}

fn load_restore_attach(
    pins: &PinDir,
    state_path: &Path,
    (iface, if_index): (&str, u32),
    mode: ModeChoice,
    config: &Config,
    fresh: bool,
) -> Result<Loaded> {
    let mut loader = EbpfLoader::new();
    let map_paths: Vec<_> = ALL_MAPS
        .iter()
        .map(|name| (*name, pins.map_path(name)))
        .collect();
    for (name, path) in &map_paths {
        loader.map_pin_path(name, path.as_path());
    }
    let capacities = &config.maps;
    let fits = |map: &str, configured: u32| -> u32 {
        fits_stored(fresh.then_some(state_path), map, configured)
    };
    loader
        .map_max_entries(MAP_BAN_V4, fits("BAN_V4", capacities.ban_v4))
        .map_max_entries(MAP_BAN_V6, fits("BAN_V6", capacities.ban_v6))
        .map_max_entries(MAP_ALLOW_V4, fits("ALLOW_V4", capacities.allow))
        .map_max_entries(MAP_ALLOW_V6, fits("ALLOW_V6", capacities.allow))
        .map_max_entries(MAP_BLACKLIST_V4, capacities.blacklist)
        .map_max_entries(MAP_BLACKLIST_V6, capacities.blacklist)
        .map_max_entries(MAP_HISTORY, capacities.history)
        .map_max_entries(MAP_HISTORY_LONG, capacities.history_long);
    if EBPF_OBJECT.is_empty() {
        return Err(Error::Unsupported(
            "this blocker was built without its XDP program (bpf-linker was missing): run `cargo xtask setup`, then build again".into(),
        ));
    }
    let mut ebpf = loader.load(EBPF_OBJECT)?;

    let config_rules = config.rules.as_deref();
    dynamic::write_reject_limits(pins, &config.rejects)?;
    let (attachment, restored) = restore_and_attach(
        pins,
        state_path,
        (iface, if_index),
        mode,
        (fresh, config_rules),
        &mut ebpf,
    )?;
    Ok(Loaded {
        attachment,
        restored,
        ebpf,
    })
}

/// The capacity of the trie stored under `map` (its kept-count kind) in fresh maps: the
/// `configured` one, or the stored entries when they are more, with a warning, so a capacity
/// lowered below what is stored never leaves a boot without any map. A database that cannot
/// be read is counted by its last good copy, which such a boot restores from. `state_path`
/// is `None` when the maps exist already.
fn fits_stored(state_path: Option<&Path>, map: &str, configured: u32) -> u32 {
    let stored = state_path
        .and_then(|path| {
            crate::state::summary(path)
                .or_else(|_| crate::state::summary(&crate::state::last_good_path(path)))
                .ok()
        })
        .and_then(|summary| summary.entries.get(map).copied())
        .unwrap_or(0);
    match u32::try_from(stored) {
        Ok(stored) if stored > configured => {
            warn!(
                "the state holds {stored} entries for {map}, more than its configured \
                 capacity of {configured}: the map holds {stored} (raise it in [maps], or \
                 remove entries)"
            );
            stored
        }
        _ => configured,
    }
}

fn restore_and_attach(
    pins: &PinDir,
    state_path: &Path,
    (iface, if_index): (&str, u32),
    mode: ModeChoice,
    (fresh, config_rules): (bool, Option<&[crate::rules::RuleSpec]>),
    ebpf: &mut Ebpf,
) -> Result<(Attachment, Option<usize>)> {
    // Restore before attaching, so no banned packet passes in between.
    let restored = store::restore(pins, state_path, fresh, config_rules)?;
    let program_error = |context: &str| {
        let context = context.to_string();
        move |source| Error::Program { context, source }
    };
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM_NAME)
        .ok_or_else(|| {
            Error::Unsupported(format!("program {PROGRAM_NAME} is missing from the object"))
        })?
        .try_into()
        .map_err(program_error("program type"))?;
    program
        .load()
        .map_err(program_error("verifying the XDP program"))?;

    let (link_id, attach_mode) = match mode {
        ModeChoice::Native => (
            program.attach_to_if_index(if_index, XdpMode::Driver),
            AttachMode::Native,
        ),
        ModeChoice::Skb => (
            program.attach_to_if_index(if_index, XdpMode::Skb),
            AttachMode::Skb,
        ),
        ModeChoice::Auto => match program.attach_to_if_index(if_index, XdpMode::Driver) {
            Ok(link) => (Ok(link), AttachMode::Native),
            Err(err) => {
                warn!("native XDP on {iface} failed ({err}); falling back to skb (generic) mode, which is slower");
                (
                    program.attach_to_if_index(if_index, XdpMode::Skb),
                    AttachMode::Skb,
                )
            }
        },
    };
    let link_id = link_id.map_err(|source| Error::Program {
        context: format!(
            "attaching to {iface} in {} mode (is another XDP program attached? `ip link show {iface}`)",
            attach_mode.name()
        ),
        source,
    })?;
    let link = program
        .take_link(link_id)
        .map_err(program_error("taking the XDP link"))?;
    let link = FdLink::try_from(link).map_err(|err| {
        Error::Unsupported(format!(
            "this kernel cannot pin XDP links (bpf_link needs Linux 5.9+): {err}"
        ))
    })?;
    let attachment = Attachment {
        iface: iface.to_string(),
        mode: attach_mode,
    };
    let link_path = pins.link_path(&attachment);
    link.pin(&link_path).map_err(|err| Error::Io {
        context: format!("pinning the XDP link at {}", link_path.display()),
        source: std::io::Error::other(err.to_string()),
    })?;
    Ok((attachment, restored))
}

/// Detaches from `iface` (or every interface) by removing the link pins; once no interface is
/// left, removes the map pins and the directory. The state file is kept.
pub fn unload(pins: &PinDir, iface: Option<&str>) -> Result<Vec<Attachment>> {
    require_root()?;
    let attached = pins.attachments()?;
    if attached.is_empty() && !pins.path.exists() {
        return Err(Error::NotLoaded(pins.path.clone()));
    }
    let _lock = pins.lock()?;
    let targets: Vec<Attachment> = match iface {
        Some(iface) => {
            let found: Vec<_> = attached
                .iter()
                .filter(|a| a.iface == iface)
                .cloned()
                .collect();
            if found.is_empty() {
                return Err(Error::NotLoadedOn(iface.to_string()));
            }
            found
        }
        None => attached.clone(),
    };
    for attachment in &targets {
        let path = pins.link_path(attachment);
        let link = PinnedLink::from_pin(&path).map_err(|err| Error::Io {
            context: format!("opening pinned link {}", path.display()),
            source: std::io::Error::other(err.to_string()),
        })?;
        // Dropping the last reference to the link detaches the program.
        link.unpin()
            .map_err(Error::io(format!("removing {}", path.display())))?;
    }
    if pins.attachments()?.is_empty() {
        // The state as it is at unload is the copy the next boot falls back to.
        if let Some(state) = pins.recorded_state() {
            if let Err(err) = crate::state::keep_last_good(&state) {
                tracing::warn!("the last good copy was not refreshed: {err}");
            }
        }
        pins.remove_all()?;
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_before_5_18_are_refused_by_name() {
        let err = require_kernel(KernelVersion::new(5, 17, 15)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Linux 5.17.15 is too old: blocker needs 5.18 or later (bpf_loop is 5.17, \
             bpf_xdp_load_bytes 5.18)"
        );
        assert!(require_kernel(KernelVersion::new(5, 18, 0)).is_ok());
        assert!(require_kernel(KernelVersion::new(6, 1, 0)).is_ok());
    }
}

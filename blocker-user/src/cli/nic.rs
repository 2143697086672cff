//! What the kernel says about a network interface in this process's network namespace: its
//! index and its driver. Asked over sockets (netns-aware), not /sys/class/net, which shows the
//! namespace sysfs was mounted in.

use std::os::fd::AsRawFd;

use nix::{
    libc,
    sys::socket::{socket, AddressFamily, SockFlag, SockType},
};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GDRVINFO: u32 = 0x3;

/// `struct ethtool_drvinfo` of linux/ethtool.h.
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// `struct ifreq` with the `ifr_data` member of its union (padded to the union's size).
#[repr(C)]
struct IfReqData {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    pad: [u8; 24 - std::mem::size_of::<usize>()],
}

/// True when an interface of that name exists here.
pub fn exists(iface: &str) -> bool {
    nix::net::if_::if_nametoindex(iface).is_ok()
}

/// The interface's driver as ethtool reports it (`veth`, `virtio_net`, `mlx5_core`...).
pub fn driver(iface: &str) -> Option<String> {
    let bytes = iface.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return None;
    }
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ok()?;
    // SAFETY: both structs are plain integers and byte arrays (all-zero is valid for them).
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut request = IfReqData {
        name: [0; libc::IFNAMSIZ],
        data: (&mut info as *mut DrvInfo).cast(),
        pad: [0; 24 - std::mem::size_of::<usize>()],
    };
    request.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: SIOCETHTOOL reads the name and writes at most a DrvInfo through `data`, which
    // points at `info`, alive for the call.
    let result = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut request) };
    if result < 0 {
        return None;
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    let name = String::from_utf8_lossy(&info.driver[..end]).into_owned();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_exists_and_has_no_ethtool_driver_or_a_named_one() {
        assert!(exists("lo"));
        assert!(!exists("blk-no-such0"));
        assert!(driver("blk-no-such0").is_none());
        assert!(driver("a-name-longer-than-ifnamsiz").is_none());
    }
}

//! What the kernel says about a network interface in this process's network namespace: its
//! index, its driver and its link type. Asked over sockets (netns-aware), not /sys/class/net,
//! which shows the namespace sysfs was mounted in.

use std::os::fd::{AsRawFd, OwnedFd};

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

/// `struct ifreq` with the `ifr_hwaddr` member of its union (a `struct sockaddr`, padded to
/// the union's size).
#[repr(C)]
struct IfReqHwAddr {
    name: [u8; libc::IFNAMSIZ],
    family: u16,
    data: [u8; 22],
}

/// True when an interface of that name exists here.
pub fn exists(iface: &str) -> bool {
    nix::net::if_::if_nametoindex(iface).is_ok()
}

/// `iface` as `struct ifreq` holds it (NUL-terminated), or `None` when it cannot be a name.
fn ifreq_name(iface: &str) -> Option<[u8; libc::IFNAMSIZ]> {
    let bytes = iface.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return None;
    }
    let mut name = [0; libc::IFNAMSIZ];
    name[..bytes.len()].copy_from_slice(bytes);
    Some(name)
}

/// A socket to ask interface ioctls on, in this process's network namespace.
fn ioctl_socket() -> Option<OwnedFd> {
    socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ok()
}

/// The interface's driver as ethtool reports it (`veth`, `virtio_net`, `mlx5_core`...).
pub fn driver(iface: &str) -> Option<String> {
    let name = ifreq_name(iface)?;
    let sock = ioctl_socket()?;
    // SAFETY: both structs are plain integers and byte arrays (all-zero is valid for them).
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut request = IfReqData {
        name,
        data: (&mut info as *mut DrvInfo).cast(),
        pad: [0; 24 - std::mem::size_of::<usize>()],
    };
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

/// The interface's link type (`ARPHRD_*` of linux/if_arp.h: 1 for Ethernet, 772 for
/// loopback, 65534 for a tun device...), or `None` when there is no such interface.
pub fn link_type(iface: &str) -> Option<u16> {
    let mut request = IfReqHwAddr {
        name: ifreq_name(iface)?,
        family: 0,
        data: [0; 22],
    };
    let sock = ioctl_socket()?;
    // SAFETY: SIOCGIFHWADDR reads the name and writes a struct sockaddr after it, within the
    // struct ifreq that `request` is laid out as.
    let result = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR as _, &mut request) };
    (result >= 0).then_some(request.family)
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

    #[test]
    fn loopback_has_its_own_link_type() {
        assert_eq!(link_type("lo"), Some(772));
        assert_eq!(link_type("blk-no-such0"), None);
        assert_eq!(link_type(""), None);
    }
}

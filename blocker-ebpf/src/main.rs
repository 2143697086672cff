//! The XDP program: parse the frame, look the source up, decide with blocker-common's pure
//! functions, count the verdict under its reason, act.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use core::mem::size_of;

    use aya_ebpf::{
        bindings::xdp_action,
        btf_maps::{LpmTrie, PerCpuArray},
        helpers::bpf_ktime_get_boot_ns,
        macros::{btf_map, xdp},
        maps::lpm_trie::Key,
        programs::XdpContext,
    };
    use aya_log_ebpf::error;
    use blocker_common::{
        ban_is_active, Action, AllowValue, BanValue, Counter, Reason, DEFAULT_ALLOW_CAPACITY,
        DEFAULT_BAN_V4_CAPACITY, DEFAULT_BAN_V6_CAPACITY, MAX_IPV6_EXT_HEADERS,
    };
    use network_types::{
        eth::EthHdr,
        icmp::Icmpv4Hdr,
        ip::{Ipv4Hdr, Ipv6Hdr},
        tcp::TcpHdr,
        udp::UdpHdr,
        vlan::VlanHdr,
    };

    // Capacities here are defaults; the loader sets the configured ones before creating maps.
    #[btf_map]
    static BAN_V4: LpmTrie<[u8; 4], BanValue, { DEFAULT_BAN_V4_CAPACITY as usize }> =
        LpmTrie::new();
    #[btf_map]
    static BAN_V6: LpmTrie<[u8; 16], BanValue, { DEFAULT_BAN_V6_CAPACITY as usize }> =
        LpmTrie::new();
    #[btf_map]
    static ALLOW_V4: LpmTrie<[u8; 4], AllowValue, { DEFAULT_ALLOW_CAPACITY as usize }> =
        LpmTrie::new();
    #[btf_map]
    static ALLOW_V6: LpmTrie<[u8; 16], AllowValue, { DEFAULT_ALLOW_CAPACITY as usize }> =
        LpmTrie::new();
    #[btf_map]
    static COUNTERS: PerCpuArray<Counter, { Reason::COUNT as usize }> = PerCpuArray::new();

    // EtherType values as they appear on the wire, read as native-endian u16.
    const ETH_P_IPV4: u16 = 0x0800u16.to_be();
    const ETH_P_IPV6: u16 = 0x86DDu16.to_be();
    const ETH_P_8021Q: u16 = 0x8100u16.to_be();
    const ETH_P_8021AD: u16 = 0x88A8u16.to_be();

    const IPPROTO_HOPOPTS: u8 = 0;
    const IPPROTO_ICMP: u8 = 1;
    const IPPROTO_TCP: u8 = 6;
    const IPPROTO_UDP: u8 = 17;
    const IPPROTO_ROUTING: u8 = 43;
    const IPPROTO_FRAGMENT: u8 = 44;
    const IPPROTO_ICMPV6: u8 = 58;
    const IPPROTO_DSTOPTS: u8 = 60;

    /// Any offset the parser computes stays below this, which keeps the verifier's range
    /// tracking bounded (largest real case: 2 VLAN tags + IPv6 + 6 extension headers of 2 KiB).
    const MAX_HEADER_OFFSET: usize = 1 << 14;

    #[xdp]
    pub fn blocker(ctx: XdpContext) -> u32 {
        let reason = classify(&ctx);
        let frame_len = (ctx.data_end() - ctx.data()) as u64;
        match COUNTERS.get_ptr_mut(reason as u32) {
            // SAFETY: a per-CPU slot is only ever touched by this CPU.
            Some(counter) => unsafe {
                (*counter).packets += 1;
                (*counter).bytes += frame_len;
            },
            None => error!(&ctx, "counters map has no slot {}", reason as u32),
        }
        match reason.action() {
            Action::Pass => xdp_action::XDP_PASS,
            Action::Drop => xdp_action::XDP_DROP,
        }
    }

    /// A pointer to a `T` at `offset`, if the whole `T` lies inside the frame.
    #[inline(always)]
    fn header<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
        if offset > MAX_HEADER_OFFSET {
            return None;
        }
        let start = ctx.data() + offset;
        if start + size_of::<T>() > ctx.data_end() {
            return None;
        }
        Some(start as *const T)
    }

    #[inline(always)]
    fn classify(ctx: &XdpContext) -> Reason {
        let Some(eth) = header::<EthHdr>(ctx, 0) else {
            return Reason::Malformed;
        };
        // SAFETY: `header` checked the bounds.
        let mut ether_type = unsafe { (*eth).ether_type };
        let mut offset = EthHdr::LEN;
        for _ in 0..2 {
            if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
                break;
            }
            let Some(vlan) = header::<VlanHdr>(ctx, offset) else {
                return Reason::Malformed;
            };
            ether_type = unsafe { (*vlan).ether_type };
            offset += VlanHdr::LEN;
        }
        match ether_type {
            ETH_P_IPV4 => classify_ipv4(ctx, offset),
            ETH_P_IPV6 => classify_ipv6(ctx, offset),
            ETH_P_8021Q | ETH_P_8021AD => Reason::Unparsed,
            _ => Reason::NotIp,
        }
    }

    #[inline(always)]
    fn classify_ipv4(ctx: &XdpContext, offset: usize) -> Reason {
        let Some(ip) = header::<Ipv4Hdr>(ctx, offset) else {
            return Reason::Malformed;
        };
        // SAFETY: `header` checked the bounds.
        let ip = unsafe { &*ip };
        let header_len = usize::from(ip.vihl & 0x0f) * 4;
        if ip.vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN {
            return Reason::Malformed;
        }
        if let Some(reason) = source_verdict(&ALLOW_V4, &BAN_V4, ip.src_addr) {
            return reason;
        }
        // Only the first fragment carries the L4 header.
        let fragment_offset = u16::from_be_bytes(ip.frags) & 0x1fff;
        if fragment_offset != 0 {
            return Reason::NoMatch;
        }
        let l4_offset = offset + header_len;
        let l4_present = match ip.proto {
            IPPROTO_TCP => header::<TcpHdr>(ctx, l4_offset).is_some(),
            IPPROTO_UDP => header::<UdpHdr>(ctx, l4_offset).is_some(),
            IPPROTO_ICMP => header::<Icmpv4Hdr>(ctx, l4_offset).is_some(),
            _ => true,
        };
        if l4_present {
            Reason::NoMatch
        } else {
            Reason::Malformed
        }
    }

    #[inline(always)]
    fn classify_ipv6(ctx: &XdpContext, offset: usize) -> Reason {
        let Some(ip) = header::<Ipv6Hdr>(ctx, offset) else {
            return Reason::Malformed;
        };
        // SAFETY: `header` checked the bounds.
        let ip = unsafe { &*ip };
        if ip.vcf[0] >> 4 != 6 {
            return Reason::Malformed;
        }
        if let Some(reason) = source_verdict(&ALLOW_V6, &BAN_V6, ip.src_addr) {
            return reason;
        }
        let mut next_header = ip.next_hdr;
        let mut l4_offset = offset + Ipv6Hdr::LEN;
        for _ in 0..MAX_IPV6_EXT_HEADERS {
            match next_header {
                IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                    // Next header, then the length in 8-octet units not counting the first 8.
                    let Some(ext) = header::<[u8; 2]>(ctx, l4_offset) else {
                        return Reason::Malformed;
                    };
                    let ext = unsafe { *ext };
                    next_header = ext[0];
                    l4_offset += (usize::from(ext[1]) + 1) * 8;
                }
                IPPROTO_FRAGMENT => {
                    // Next header, reserved, then offset (13 bits) and flags.
                    let Some(fragment) = header::<[u8; 8]>(ctx, l4_offset) else {
                        return Reason::Malformed;
                    };
                    let fragment = unsafe { *fragment };
                    if u16::from_be_bytes([fragment[2], fragment[3]]) >> 3 != 0 {
                        return Reason::NoMatch;
                    }
                    next_header = fragment[0];
                    l4_offset += 8;
                }
                _ => break,
            }
        }
        let l4_present = match next_header {
            IPPROTO_TCP => header::<TcpHdr>(ctx, l4_offset).is_some(),
            IPPROTO_UDP => header::<UdpHdr>(ctx, l4_offset).is_some(),
            // ICMPv6 shares ICMP's 8-byte type, code, checksum, rest-of-header layout.
            IPPROTO_ICMPV6 => header::<Icmpv4Hdr>(ctx, l4_offset).is_some(),
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT => {
                return Reason::Unparsed
            }
            _ => true,
        };
        if l4_present {
            Reason::NoMatch
        } else {
            Reason::Malformed
        }
    }

    /// Allowlist first (it always wins), then manual bans.
    #[inline(always)]
    fn source_verdict<const N: usize, const ALLOW_CAP: usize, const BAN_CAP: usize>(
        allowlist: &LpmTrie<[u8; N], AllowValue, ALLOW_CAP>,
        bans: &LpmTrie<[u8; N], BanValue, BAN_CAP>,
        source: [u8; N],
    ) -> Option<Reason> {
        let key = Key::new((N * 8) as u32, source);
        if allowlist.get(&key).is_some() {
            return Some(Reason::Allowlisted);
        }
        let ban = bans.get(&key)?;
        ban_is_active(ban, boot_seconds).then_some(Reason::ManualBan)
    }

    #[inline(always)]
    fn boot_seconds() -> u32 {
        // SAFETY: the helper has no preconditions.
        (unsafe { bpf_ktime_get_boot_ns() } / 1_000_000_000) as u32
    }

    #[cfg(not(test))]
    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

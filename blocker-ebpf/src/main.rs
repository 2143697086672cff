//! The XDP program: parse the frame, look the source up, decide with blocker-common's pure
//! functions, count the verdict under its reason, act.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use core::{
        ffi::c_void,
        mem::{size_of, MaybeUninit},
    };

    use aya_ebpf::{
        bindings::xdp_action,
        btf_maps::{Array, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
        helpers::{
            bpf_jiffies64, bpf_ktime_get_boot_ns, bpf_ktime_get_coarse_ns, bpf_loop,
            bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_load_bytes, bpf_xdp_store_bytes,
        },
        macros::{btf_map, xdp},
        maps::lpm_trie::Key,
        programs::XdpContext,
        Global,
    };
    use aya_log_ebpf::error;
    use blocker_common::{
        addr_bytes, addr_words, ban_is_active, blacklist_filter_slot, blacklist_hit,
        evasive_is_dropped, ipv6_payload_reach, is_ipv6_extension, key_len, link_local_bits,
        mask_words, on_event, port_has_rules, proto_bit,
        reject::{
            answerable, mac_is_unicast, port_unreachable_v4, port_unreachable_v6,
            source_is_unicast, tcp_reset_v4, tcp_reset_v6, TokenBucket, QUOTE_V4_MAX, QUOTE_V6_MAX,
            UNREACH_V4_LEN, UNREACH_V6_LEN,
        },
        rule_matches, sample_slot, tcp_opens_connection, tick_clock_ms, uses_short_history, Action,
        AllowValue, BanValue, BlacklistEntry, Counter, DropSample, DropSamples, Event, History,
        HistoryKey, HitMemo, Outcome, Reason, Rule, RuleAction, RuleStats, Settings, ShortHistory,
        SourceKey, SourceKeyV4, TickClock, BLACKLIST_FILTER_LINE, BLACKLIST_FILTER_LINES,
        DEFAULT_ALLOW_CAPACITY, DEFAULT_BAN_V4_CAPACITY, DEFAULT_BAN_V6_CAPACITY,
        DEFAULT_BLACKLIST_CAPACITY, DEFAULT_HISTORY_CAPACITY, DEFAULT_HISTORY_LONG_CAPACITY,
        EVENTS_BYTES, FAMILY_V4, FAMILY_V6, HIT_MEMO_SLOTS, IPPROTO_FRAGMENT, IPPROTO_ICMP,
        IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, LIST_ALLOW_V4, LIST_ALLOW_V6, LIST_BAN_V4,
        LIST_BAN_V6, MAX_IPV6_EXT_HEADERS, MAX_MASKS, MAX_RULES, MAX_VLAN_TAGS, NO_RULE,
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
    // One LRU list per map, shared by all CPUs: the whole capacity serves whichever CPU
    // inserts (a single-queue NIC brings every new source in on one CPU, where per-CPU lists
    // would leave it 1/nr_cpus of the map and evict early).
    #[btf_map]
    static BLACKLIST_V4: LruHashMap<
        SourceKeyV4,
        BlacklistEntry,
        { DEFAULT_BLACKLIST_CAPACITY as usize },
    > = LruHashMap::new();
    #[btf_map]
    static BLACKLIST_V6: LruHashMap<
        SourceKey,
        BlacklistEntry,
        { DEFAULT_BLACKLIST_CAPACITY as usize },
    > = LruHashMap::new();
    /// [`blacklist_filter_slot`] bytes of every key the program inserted in the blacklist: a
    /// key whose byte is clear has no entry and is not looked up. Never cleared (a stale byte
    /// costs a lookup, nothing else); pinned, so every program over the pinned blacklist (one
    /// per interface, or a reload) shares it.
    #[btf_map]
    static BLACKLIST_FILTER: Array<
        [u8; BLACKLIST_FILTER_LINE],
        { BLACKLIST_FILTER_LINES as usize },
    > = Array::new();
    // The history maps share their LRU list across CPUs too, for the same reason; per-CPU
    // lists (BPF_F_NO_COMMON_LRU) would save a new source's insert little (issue 11, measured
    // in a flood of new sources: the LRU pop went from 13% to 11% of the frame, the frame
    // rate moved within its noise).
    #[btf_map]
    static HISTORY: LruHashMap<HistoryKey, ShortHistory, { DEFAULT_HISTORY_CAPACITY as usize }> =
        LruHashMap::new();
    #[btf_map]
    static HISTORY_LONG: LruHashMap<
        HistoryKey,
        History,
        { DEFAULT_HISTORY_LONG_CAPACITY as usize },
    > = LruHashMap::new();
    #[btf_map]
    static RULES: Array<Rule, MAX_RULES> = Array::new();
    #[btf_map]
    static SETTINGS: Array<Settings, 1> = Array::new();
    #[btf_map]
    static RULE_STATS: PerCpuArray<RuleStats, MAX_RULES> = PerCpuArray::new();
    #[btf_map]
    static COUNTERS: PerCpuArray<Counter, { Reason::COUNT as usize }> = PerCpuArray::new();
    #[btf_map]
    static EVENTS: RingBuf<Event, { EVENTS_BYTES as usize }> = RingBuf::new();
    #[btf_map]
    static DROP_SAMPLES: PerCpuArray<DropSamples, 1> = PerCpuArray::new();
    /// Whether blocked packets are sampled: the loader leaves it on; the sampling-cost bench
    /// loads a copy with it off, which the verifier then prunes as dead code.
    #[unsafe(no_mangle)]
    static SAMPLE_DROPS: Global<u8> = Global::new(1);

    /// Per-CPU working memory for values too large for the 512-byte BPF stack.
    #[repr(C)]
    struct Scratch {
        history: History,
        short_history: ShortHistory,
        l2: [u8; MAX_L2_LEN],
        /// The packet's destination address, IPv4 in the first 4 bytes.
        destination: [u8; 16],
        ip_v4: [u8; 20],
        ip_v6: [u8; 40],
        tcp: [u8; 20],
        reset_v4: [u8; 40],
        reset_v6: [u8; 60],
        unreach_v4: [u8; UNREACH_V4_LEN],
        unreach_v6: [u8; UNREACH_V6_LEN],
        /// The parse's header offsets, handed to [`reject`] through map memory.
        offsets: Offsets,
    }

    /// Where the IP and L4 headers start. [`reject`] reads them back from map memory, whose
    /// contents the verifier does not track: were they read from the stack, their exact
    /// values would stay significant through the whole decision, and every path through the
    /// IPv6 extension headers would be verified on its own down to the verdict (exponential
    /// in the number of headers walked).
    #[repr(C)]
    struct Offsets {
        l3: usize,
        l4: usize,
    }
    #[btf_map]
    static SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();
    /// This CPU's coarse clock reading of the current tick ([`now_ms`]). Not pinned.
    #[btf_map]
    static TICK_CLOCK: PerCpuArray<TickClock, 1> = PerCpuArray::new();
    /// Each CPU's recent blacklist hits of IPv4 hosts ([`HitMemo`]). Not pinned.
    #[btf_map]
    static HIT_MEMOS: PerCpuArray<HitMemo, { HIT_MEMO_SLOTS as usize }> = PerCpuArray::new();
    /// Each CPU's allowance of reject answers. Not pinned: a reload starts it empty.
    #[btf_map]
    static REJECT_TOKENS: PerCpuArray<TokenBucket, 1> = PerCpuArray::new();

    // EtherType values as they appear on the wire, read as native-endian u16.
    const ETH_P_IPV4: u16 = 0x0800u16.to_be();
    const ETH_P_IPV6: u16 = 0x86DDu16.to_be();
    const ETH_P_8021Q: u16 = 0x8100u16.to_be();
    const ETH_P_8021AD: u16 = 0x88A8u16.to_be();

    /// IPv4 "more fragments" flag and fragment offset, in the host-order flags/offset word.
    const IPV4_MORE_FRAGMENTS: u16 = 0x2000;
    const IPV4_FRAGMENT_OFFSET: u16 = 0x1fff;

    /// Ethernet header plus the VLAN tags the parser walks.
    const MAX_L2_LEN: usize = EthHdr::LEN + MAX_VLAN_TAGS * VlanHdr::LEN;

    /// Any offset the parser computes stays below this, which keeps the verifier's range
    /// tracking bounded (largest real case: 4 VLAN tags + IPv6 + 6 extension headers of 2 KiB).
    const MAX_HEADER_OFFSET: usize = 1 << 14;

    /// What the L4 parse found.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum L4 {
        /// A complete TCP, UDP, ICMP or ICMPv6 header, or another protocol.
        Present,
        /// A non-first fragment: no L4 header here.
        Fragment,
        /// The header is cut short in a packet that is not a fragment: the stack drops it.
        Truncated,
        /// A first fragment whose transport (or IPv6 extension) header is cut short: the rest
        /// comes in later fragments, and reassembly would hand the stack what no rule saw.
        FirstFragmentCut,
        /// Still in an IPv6 extension header after the ones the parser walks.
        ChainTooLong,
    }

    /// The parsed frame: what the decision needs, and where the headers are for a reject.
    struct Packet {
        /// The address as two words in memory order ([`addr_words`]): masked and written into
        /// keys a word at a time.
        source: [u64; 2],
        family: u8,
        ttl: u8,
        l3_offset: usize,
        l4_offset: usize,
        l4: L4,
        proto: u8,
        dport: u16,
        tcp_flags: u8,
        /// The rule slot whose blacklist entry or trigger punishes this packet.
        punished_by: u32,
        /// What to count if a reject cannot be answered.
        drop_reason: Reason,
    }

    impl Packet {
        /// A packet of `family` from `source` whose L4 header starts at `l4_offset`, before
        /// the L4 parse fills in what it finds.
        #[inline(always)]
        fn new(
            family: u8,
            source: [u64; 2],
            ttl: u8,
            (l3_offset, l4_offset): (usize, usize),
            proto: u8,
        ) -> Self {
            Packet {
                family,
                source,
                ttl,
                l3_offset,
                l4_offset,
                l4: L4::Present,
                proto,
                dport: 0,
                tcp_flags: 0,
                punished_by: 0,
                drop_reason: Reason::NoMatch,
            }
        }

        #[inline(always)]
        fn source_key(&self, prefix_len: u8) -> Aligned<SourceKey> {
            self.key_of_masked(mask_words(self.source, prefix_len), prefix_len)
        }

        /// The key of this packet's source already masked to `prefix_len` (`masked`).
        #[inline(always)]
        fn key_of_masked(&self, masked: [u64; 2], prefix_len: u8) -> Aligned<SourceKey> {
            let mut key = Aligned(SourceKey {
                addr: [0; 16],
                family: self.family,
                prefix_len,
            });
            // SAFETY: `addr` starts the 8-aligned key and is 16 bytes long.
            unsafe {
                (key.0.addr.as_mut_ptr() as *mut [u64; 2]).write(masked);
            }
            key
        }
    }

    impl Aligned<SourceKey> {
        /// The key's address as the two words [`Packet::source_key`] wrote.
        #[inline(always)]
        fn words(&self) -> [u64; 2] {
            // SAFETY: as in `source_key`: `addr` starts the 8-aligned key, 16 bytes long.
            unsafe { (self.0.addr.as_ptr() as *const [u64; 2]).read() }
        }
    }

    /// A map key kept 8-aligned on the stack, so its address can go in as two 64-bit stores
    /// (the key's own alignment is 1).
    #[repr(C, align(8))]
    struct Aligned<T>(T);

    /// The prefix length of one host of `family`.
    #[inline(always)]
    fn host_len(family: u8) -> u8 {
        if family == FAMILY_V4 {
            32
        } else {
            128
        }
    }

    /// Rule windows, the dynamic blacklist and reject tokens: CLOCK_MONOTONIC at tick
    /// resolution, read once per tick per CPU ([`tick_clock_ms`]): a packet of a tick already
    /// read costs an inlined jiffies load and a per-CPU lookup instead of a helper call. Read
    /// only where a decision needs it; no value is carried between checks, which keeps the
    /// verifier's state count down. `clock_override_ms` (differential tests only) replaces it
    /// when non-zero.
    #[inline(always)]
    fn now_ms(clock_override_ms: u64) -> u64 {
        if clock_override_ms != 0 {
            return clock_override_ms;
        }
        // SAFETY: the helpers have no preconditions.
        let read_ms = || unsafe { bpf_ktime_get_coarse_ns() / 1_000_000 };
        match TICK_CLOCK.get_ptr_mut(0) {
            // SAFETY: a per-CPU slot is only ever touched by this CPU.
            Some(memo) => tick_clock_ms(unsafe { &mut *memo }, unsafe { bpf_jiffies64() }, read_ms),
            None => read_ms(),
        }
    }

    /// Temporary manual bans: CLOCK_BOOTTIME, which keeps counting through suspend like the
    /// wall clock their expiry was given in; or the override's second.
    #[inline(always)]
    fn boot_seconds(clock_override_ms: u64) -> u32 {
        if clock_override_ms != 0 {
            return (clock_override_ms / 1000) as u32;
        }
        // SAFETY: the helper has no preconditions.
        (unsafe { bpf_ktime_get_boot_ns() } / 1_000_000_000) as u32
    }

    #[xdp]
    pub fn blocker(ctx: XdpContext) -> u32 {
        let frame_len = (ctx.data_end() - ctx.data()) as u64;
        // Left uninitialised: zeroing it costs a byte loop on every frame, and only a frame
        // that parsed as IP gets one.
        let mut packet = MaybeUninit::<Packet>::uninit();
        let (mut reason, parsed) = match parse(&ctx, &mut packet) {
            Ok(parsed) => (decide(parsed), true),
            Err(reason) => (reason, false),
        };
        if let Reason::Rejected = reason {
            // SAFETY: `Rejected` comes only from a rule's verdict, after the parse wrote the
            // packet.
            let packet = unsafe { packet.assume_init_ref() };
            // Out of line, and after `decide`: only its frame nests with this one's.
            let answered = reject(&ctx, packet);
            if let Some(stats) = rule_stats(packet.punished_by) {
                if answered {
                    stats.rejected += 1;
                } else {
                    stats.dropped += 1;
                }
            }
            if !answered {
                reason = packet.drop_reason;
            }
        }
        // The packets counted before this one: what decides whether it is sampled.
        let seen = match COUNTERS.get_ptr_mut(reason as u32) {
            // SAFETY: a per-CPU slot is only ever touched by this CPU.
            Some(counter) => unsafe {
                let seen = (*counter).packets;
                (*counter).packets = seen + 1;
                (*counter).bytes += frame_len;
                seen
            },
            None => {
                error!(&ctx, "counters map has no slot {}", reason as u32);
                1
            }
        };
        if parsed && SAMPLE_DROPS.load() != 0 {
            if let Some(slot) = sample_slot(reason, seen) {
                // SAFETY: the parse wrote the packet.
                let packet = unsafe { packet.assume_init_ref() };
                sample(packet, reason, seen, slot, frame_len as u32);
            }
        }
        match reason.action() {
            Action::Pass => xdp_action::XDP_PASS,
            Action::Drop => xdp_action::XDP_DROP,
            Action::Tx => xdp_action::XDP_TX,
        }
    }

    /// Writes a blocked packet's sample into this CPU's ring. Out of line: one packet in
    /// [`blocker_common::SAMPLE_EVERY`] gets here, and the others' path stays as short as it was.
    #[inline(never)]
    fn sample(packet: &Packet, reason: Reason, seen: u64, slot: usize, frame_len: u32) {
        let Some(ring) = DROP_SAMPLES.get_ptr_mut(0) else {
            return;
        };
        // SAFETY: a per-CPU slot is only ever touched by this CPU; a reader may see it torn.
        let Some(out) = (unsafe { (*ring).slots.get_mut(slot) }) else {
            return;
        };
        let rule = match reason {
            Reason::Blacklisted | Reason::RuleTriggered | Reason::Rejected => {
                packet.punished_by as u16
            }
            _ => NO_RULE,
        };
        *out = DropSample {
            seen,
            source: packet.source,
            family: packet.family,
            reason: reason as u8,
            slot: rule,
            frame_len,
        };
    }

    /// Decides on a parsed packet. `Reason::Rejected` means "answer if possible", with
    /// `packet.punished_by` and `packet.drop_reason` saying what to count otherwise. Inlined:
    /// with the kernel's return thunks (SRSO "Safe RET" on this AMD host) the return of an
    /// out-of-line call cost about 15 ns, a quarter of a blacklist hit. Its frame and
    /// [`reject`]'s then nest, within the 512-byte stack only while `reject` stays small.
    #[inline(always)]
    fn decide(packet: &mut Packet) -> Reason {
        let Some(settings) = SETTINGS.get(0) else {
            return Reason::NoMatch;
        };
        // Read before the list checks, so a stamp taken from it never claims checks older than
        // itself. SAFETY: a map value, valid during this program run.
        let generation = unsafe { core::ptr::read_volatile(&settings.lists_generation) };
        let masks = if packet.family == FAMILY_V4 {
            &settings.masks_v4
        } else {
            &settings.masks_v6
        };
        let host_len = host_len(packet.family);
        let host_first = masks[0] == host_len;
        // Fast path: a host entry whose source passed the allowlist and ban checks under the
        // current generation, i.e. with no allow or ban entry added since, needs them no more.
        // It decides as the full path would: it is the first mask's, the first looked at.
        // `first` is its lookup, done once for both paths; `None` when not done yet.
        let mut first = None;
        if host_first && generation != 0 {
            let memo = hit_memo(packet);
            if let Some((source, memo)) = memo {
                // SAFETY: a per-CPU slot is only ever touched by this CPU.
                let recalled = unsafe { &*memo }
                    .recall(source, generation, || now_ms(settings.clock_override_ms));
                if let Some((action, slot)) = recalled {
                    return punish(packet, action, slot, Reason::Blacklisted);
                }
            }
            let found = blacklist_entry(packet, host_len);
            first = Some(found);
            if let Some(entry) = found {
                // SAFETY: as in `check_blacklist`.
                let entry = unsafe { &mut *entry };
                if entry.lists_stamp == generation {
                    let now_ms = now_ms(settings.clock_override_ms);
                    if blacklist_hit(entry, now_ms) {
                        if let Some((source, memo)) = memo {
                            // SAFETY: as above.
                            unsafe { *memo = HitMemo::of_hit(source, now_ms, generation, entry) };
                        }
                        let (action, slot) = (entry.action, u32::from(entry.slot));
                        return punish(packet, action, slot, Reason::Blacklisted);
                    }
                }
            }
        }
        // The allowlist before anything else that can drop, so it always wins whatever the
        // blacklist holds (an entry keyed by a rule's mask may cover an allowed host); an
        // empty list costs no lookup.
        let listed = if packet.family == FAMILY_V4 {
            let [a, b, c, d, ..] = packet.source[0].to_ne_bytes();
            let source = [a, b, c, d];
            let lists = (
                settings.lists & LIST_ALLOW_V4 != 0,
                settings.lists & LIST_BAN_V4 != 0,
            );
            source_verdict(&ALLOW_V4, &BAN_V4, lists, source, settings)
        } else {
            let lists = (
                settings.lists & LIST_ALLOW_V6 != 0,
                settings.lists & LIST_BAN_V6 != 0,
            );
            let source = addr_bytes(packet.source);
            source_verdict(&ALLOW_V6, &BAN_V6, lists, source, settings)
        };
        if let Some(reason) = listed {
            return reason;
        }
        let first = Checked {
            found: first,
            generation,
        };
        if let Some(reason) = check_blacklist(packet, settings, masks, first) {
            return reason;
        }
        match packet.l4 {
            L4::Truncated => Reason::Malformed,
            L4::FirstFragmentCut | L4::ChainTooLong
                if evasive_is_dropped(settings.rule_protos, packet.family, packet.proto) =>
            {
                Reason::Evasive
            }
            L4::FirstFragmentCut => Reason::Malformed,
            L4::ChainTooLong => Reason::Unparsed,
            L4::Present | L4::Fragment
                if settings.rule_protos & proto_bit(packet.proto) != 0
                    && port_has_rules(&settings.ports_without_rules, packet.dport) =>
            {
                run_rules(packet, settings, generation)
            }
            L4::Present | L4::Fragment => Reason::NoMatch,
        }
    }

    /// Whether the frame holds `len` bytes at `offset`.
    #[inline(always)]
    fn in_frame(ctx: &XdpContext, offset: usize, len: usize) -> bool {
        offset <= MAX_HEADER_OFFSET && ctx.data() + offset + len <= ctx.data_end()
    }

    /// A pointer to a `T` at `offset`, if the whole `T` lies inside the frame.
    #[inline(always)]
    fn header<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
        in_frame(ctx, offset, size_of::<T>()).then(|| (ctx.data() + offset) as *const T)
    }

    #[inline(always)]
    /// Parses an IP frame into `out`: written in place, as a returned value would take a
    /// second copy on the BPF stack.
    fn parse<'a>(
        ctx: &XdpContext,
        out: &'a mut MaybeUninit<Packet>,
    ) -> Result<&'a mut Packet, Reason> {
        let eth = header::<EthHdr>(ctx, 0).ok_or(Reason::Malformed)?;
        // SAFETY: `header` checked the bounds.
        let mut ether_type = unsafe { (*eth).ether_type };
        let mut offset = EthHdr::LEN;
        for _ in 0..MAX_VLAN_TAGS {
            if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
                break;
            }
            let vlan = header::<VlanHdr>(ctx, offset).ok_or(Reason::Malformed)?;
            ether_type = unsafe { (*vlan).ether_type };
            offset += VlanHdr::LEN;
        }
        match ether_type {
            ETH_P_IPV4 => parse_ipv4(ctx, offset, out),
            ETH_P_IPV6 => parse_ipv6(ctx, offset, out),
            // The kernel would strip priority tags down to the IP packet: its source is
            // unknown here, so nothing could ban it.
            ETH_P_8021Q | ETH_P_8021AD => Err(Reason::Evasive),
            _ => Err(Reason::NotIp),
        }
    }

    #[inline(always)]
    fn parse_ipv4<'a>(
        ctx: &XdpContext,
        l3_offset: usize,
        out: &'a mut MaybeUninit<Packet>,
    ) -> Result<&'a mut Packet, Reason> {
        let ip = header::<Ipv4Hdr>(ctx, l3_offset).ok_or(Reason::Malformed)?;
        // SAFETY: `header` checked the bounds.
        let ip = unsafe { &*ip };
        let header_len = usize::from(ip.vihl & 0x0f) * 4;
        // Options included: a header the frame cannot hold is no header, whatever its source.
        if ip.vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN || !in_frame(ctx, l3_offset, header_len) {
            return Err(Reason::Malformed);
        }
        let [a, b, c, d] = ip.src_addr;
        let source = [u64::from_ne_bytes([a, b, c, d, 0, 0, 0, 0]), 0];
        let offsets = (l3_offset, l3_offset + header_len);
        let packet = out.write(Packet::new(FAMILY_V4, source, ip.ttl, offsets, ip.proto));
        let l3_end = l3_offset + usize::from(u16::from_be_bytes(ip.tot_len));
        let fragment = u16::from_be_bytes(ip.frags);
        // Only the first fragment carries the L4 header.
        if fragment & IPV4_FRAGMENT_OFFSET != 0 {
            packet.l4 = L4::Fragment;
            return Ok(packet);
        }
        parse_l4(ctx, packet, fragment & IPV4_MORE_FRAGMENTS != 0, l3_end);
        Ok(packet)
    }

    #[inline(always)]
    fn parse_ipv6<'a>(
        ctx: &XdpContext,
        l3_offset: usize,
        out: &'a mut MaybeUninit<Packet>,
    ) -> Result<&'a mut Packet, Reason> {
        let ip = header::<Ipv6Hdr>(ctx, l3_offset).ok_or(Reason::Malformed)?;
        // SAFETY: `header` checked the bounds.
        let ip = unsafe { &*ip };
        if ip.vcf[0] >> 4 != 6 {
            return Err(Reason::Malformed);
        }
        let source = addr_words(&ip.src_addr);
        let offsets = (l3_offset, l3_offset + Ipv6Hdr::LEN);
        let packet = out.write(Packet::new(
            FAMILY_V6,
            source,
            ip.hop_limit,
            offsets,
            ip.next_hdr,
        ));
        let l3_end = l3_offset
            + Ipv6Hdr::LEN
            + ipv6_payload_reach(
                u16::from_be_bytes(ip.payload_len),
                ip.next_hdr,
                MAX_HEADER_OFFSET,
            );
        // Set by a fragment header with offset 0 and more fragments to come, and kept: a later
        // (atomic) fragment header does not make the datagram whole.
        let mut first_fragment = false;
        for _ in 0..MAX_IPV6_EXT_HEADERS {
            if !is_ipv6_extension(packet.proto) {
                break;
            }
            if packet.proto == IPPROTO_FRAGMENT {
                // Next header, reserved, then offset (13 bits), two reserved bits and M.
                let Some(fragment) = header::<[u8; 8]>(ctx, packet.l4_offset) else {
                    packet.l4 = cut_short(first_fragment);
                    return Ok(packet);
                };
                let fragment = unsafe { *fragment };
                packet.proto = fragment[0];
                packet.l4_offset += 8;
                if u16::from_be_bytes([fragment[2], fragment[3]]) >> 3 != 0 {
                    packet.l4 = L4::Fragment;
                    return Ok(packet);
                }
                first_fragment |= fragment[3] & 1 != 0;
            } else {
                // Next header, then the length in 8-octet units not counting the first 8.
                let Some(ext) = header::<[u8; 2]>(ctx, packet.l4_offset) else {
                    packet.l4 = cut_short(first_fragment);
                    return Ok(packet);
                };
                let ext = unsafe { *ext };
                packet.proto = ext[0];
                packet.l4_offset += (usize::from(ext[1]) + 1) * 8;
            }
        }
        if is_ipv6_extension(packet.proto) {
            packet.l4 = L4::ChainTooLong;
            return Ok(packet);
        }
        parse_l4(ctx, packet, first_fragment, l3_end);
        Ok(packet)
    }

    /// What a header cut short means: the rest follows in other fragments, or never.
    #[inline(always)]
    fn cut_short(first_fragment: bool) -> L4 {
        if first_fragment {
            L4::FirstFragmentCut
        } else {
            L4::Truncated
        }
    }

    /// Reads the destination port and TCP flags, or marks the L4 header cut short: beyond
    /// the frame, or beyond the IP datagram, which ends at `l3_end` by its own length field
    /// (a NIC pads short frames, and padding must not pass for a header). The datagram is
    /// checked once, here: every header before the L4 one ends where the next begins.
    #[inline(always)]
    fn parse_l4(ctx: &XdpContext, packet: &mut Packet, first_fragment: bool, l3_end: usize) {
        let offset = packet.l4_offset;
        let len = match packet.proto {
            IPPROTO_TCP => TcpHdr::LEN,
            // ICMPv6 shares ICMP's 8-byte type, code, checksum, rest-of-header layout.
            IPPROTO_UDP | IPPROTO_ICMP | IPPROTO_ICMPV6 => 8,
            _ => 0,
        };
        if offset + len > l3_end {
            packet.l4 = cut_short(first_fragment);
            return;
        }
        let complete = match packet.proto {
            IPPROTO_TCP => match header::<TcpHdr>(ctx, offset) {
                Some(tcp) => {
                    // SAFETY: `header` checked the bounds.
                    let tcp = unsafe { &*tcp };
                    packet.dport = u16::from_be_bytes(tcp.dest);
                    // The flags byte follows the data offset byte.
                    let flags = unsafe { *((tcp as *const TcpHdr as *const u8).add(13)) };
                    packet.tcp_flags = flags;
                    true
                }
                None => false,
            },
            IPPROTO_UDP => match header::<UdpHdr>(ctx, offset) {
                Some(udp) => {
                    packet.dport = u16::from_be_bytes(unsafe { (*udp).dst });
                    true
                }
                None => false,
            },
            IPPROTO_ICMP | IPPROTO_ICMPV6 => header::<Icmpv4Hdr>(ctx, offset).is_some(),
            _ => true,
        };
        if !complete {
            packet.l4 = cut_short(first_fragment);
        }
    }

    /// Allowlist first (it always wins), then manual bans; an empty trie is not looked up.
    #[inline(always)]
    fn source_verdict<const N: usize, const ALLOW_CAP: usize, const BAN_CAP: usize>(
        allowlist: &LpmTrie<[u8; N], AllowValue, ALLOW_CAP>,
        bans: &LpmTrie<[u8; N], BanValue, BAN_CAP>,
        (allow_used, bans_used): (bool, bool),
        source: [u8; N],
        settings: &Settings,
    ) -> Option<Reason> {
        let key = Key::new((N * 8) as u32, source);
        if allow_used && allowlist.get(&key).is_some() {
            return Some(Reason::Allowlisted);
        }
        if !bans_used {
            return None;
        }
        let ban = bans.get(&key)?;
        ban_is_active(ban, || boot_seconds(settings.clock_override_ms)).then_some(Reason::ManualBan)
    }

    #[inline(always)]
    fn rule_stats(slot: u32) -> Option<&'static mut RuleStats> {
        // SAFETY: a per-CPU slot is only ever touched by this CPU.
        RULE_STATS
            .get_ptr_mut(slot)
            .map(|stats| unsafe { &mut *stats })
    }

    /// The verdict for a packet of a source a rule blacklisted: `Rejected` (answered later by
    /// `blocker`, which counts it for the rule) or `drop_reason`, counted here.
    #[inline(always)]
    fn punish(packet: &mut Packet, action: u16, slot: u32, drop_reason: Reason) -> Reason {
        // Named in the drop sample, and in the rule's stats of an answered reject.
        packet.punished_by = slot;
        if action == RuleAction::Reject as u16 {
            packet.drop_reason = drop_reason;
            return Reason::Rejected;
        }
        if let Some(stats) = rule_stats(slot) {
            stats.dropped += 1;
        }
        drop_reason
    }

    /// What `decide` learnt about the first blacklist mask before the list checks.
    struct Checked {
        /// The first mask's lookup, when done.
        found: Option<Option<*mut BlacklistEntry>>,
        /// The lists generation read before the list checks.
        generation: u32,
    }

    /// An IPv4 source's host key and its slot in this CPU's [`HitMemo`]s; `None` for IPv6.
    #[inline(always)]
    fn hit_memo(packet: &Packet) -> Option<(SourceKeyV4, *mut HitMemo)> {
        if packet.family != FAMILY_V4 {
            return None;
        }
        let source = SourceKeyV4::of_masked(packet.source, 32);
        HIT_MEMOS
            .get_ptr_mut(HitMemo::slot_of(source))
            .map(|memo| (source, memo))
    }

    /// The blacklist entry of `packet`'s source under `mask`, looked up only if the filter
    /// says there may be one.
    #[inline(always)]
    fn blacklist_entry(packet: &Packet, mask: u8) -> Option<*mut BlacklistEntry> {
        let masked = mask_words(packet.source, mask);
        let (line, byte) = blacklist_filter_slot(masked, mask);
        // A missing line (never, in an array) counts as "may be": the lookup decides.
        let filtered_out = BLACKLIST_FILTER
            .get(line)
            .and_then(|bytes| bytes.get(byte))
            .is_some_and(|set| *set == 0);
        if filtered_out {
            return None;
        }
        // Only an IPv6 source needs the 18-byte key on the stack.
        if packet.family == FAMILY_V4 {
            BLACKLIST_V4.get_ptr_mut(&SourceKeyV4::of_masked(masked, mask))
        } else {
            BLACKLIST_V6.get_ptr_mut(&packet.key_of_masked(masked, mask).0)
        }
    }

    /// Sets the filter byte of `key`; called before the key is inserted in the blacklist, so
    /// no packet finds the entry's byte clear. Written only when clear, so a hot line is not
    /// written from every CPU.
    #[inline(always)]
    fn mark_blacklisted(key: &Aligned<SourceKey>) {
        let (line, byte) = blacklist_filter_slot(key.words(), key.0.prefix_len);
        if let Some(bytes) = BLACKLIST_FILTER.get_ptr_mut(line) {
            // SAFETY: a map value, valid during this program run; one byte, stored whole.
            if let Some(set) = unsafe { (*bytes).get_mut(byte) } {
                if *set == 0 {
                    *set = 1;
                }
            }
        }
    }

    /// The dynamic blacklist, looked up once per mask in use for the family (the first
    /// mask's lookup may be done already). A hit is stamped with the generation: this source
    /// just passed the allowlist and ban checks.
    #[inline(always)]
    fn check_blacklist(
        packet: &mut Packet,
        settings: &Settings,
        masks: &[u8; MAX_MASKS],
        first: Checked,
    ) -> Option<Reason> {
        for (index, mask) in masks.iter().enumerate().take(MAX_MASKS) {
            if *mask == 0 {
                break;
            }
            // Worked out again for each mask (a few ALU instructions, IPv6 only): hoisted
            // out of the loop, the value lives across it and the verifier's walk passes its
            // limit (measured: over 1M instructions, against 615k).
            let mask = if packet.family == FAMILY_V4 {
                *mask
            } else {
                key_len(*mask, link_local_bits(packet.source[0]))
            };
            let found = match first.found {
                // The first mask's lookup was of the host key, which `mask` is then too.
                Some(found) if index == 0 => found,
                _ => blacklist_entry(packet, mask),
            };
            let Some(entry) = found else {
                continue;
            };
            // SAFETY: the entry stays valid during this program run; concurrent refreshes of
            // the expiry race benignly (both write a time in the future), and so do stamps
            // (both are generations read before checks that passed).
            let entry = unsafe { &mut *entry };
            if blacklist_hit(entry, now_ms(settings.clock_override_ms)) {
                entry.lists_stamp = first.generation;
                let (action, slot) = (entry.action, u32::from(entry.slot));
                return Some(punish(packet, action, slot, Reason::Blacklisted));
            }
        }
        None
    }

    /// State shared with [`rule_step`] across `bpf_loop` iterations.
    struct RulesLoop<'a> {
        packet: &'a mut Packet,
        /// [`link_local_bits`] of an IPv6 source, worked out once for every rule; a word of
        /// its own, so that the verifier's tracking of the packet's fields is left whole.
        link_local: u64,
        clock_override_ms: u64,
        /// The lists generation read before this packet's allowlist and ban checks.
        generation: u32,
        reason: Reason,
    }

    /// Rate and burst rules in slot order; the first that blacklists the source decides.
    /// `bpf_loop` has the verifier check one iteration instead of every unrolled path.
    #[inline(always)]
    fn run_rules(packet: &mut Packet, settings: &Settings, generation: u32) -> Reason {
        let slots = settings.rule_slots.min(MAX_RULES as u32);
        // Opaque (black_box) for both families, so the callback is verified once, not once
        // for a known 0 and once for an unknown.
        let link_local = core::hint::black_box(if packet.family == FAMILY_V4 {
            0
        } else {
            u64::from(link_local_bits(packet.source[0]))
        });
        let mut state = RulesLoop {
            packet,
            link_local,
            clock_override_ms: settings.clock_override_ms,
            generation,
            reason: Reason::NoMatch,
        };
        // SAFETY: `rule_step` matches the callback signature and gets `state` back as its
        // context, which outlives the call.
        unsafe {
            bpf_loop(
                slots,
                rule_step as *mut c_void,
                &mut state as *mut RulesLoop as *mut c_void,
                0,
            );
        }
        state.reason
    }

    /// One rule slot; returns 1 to stop the loop.
    extern "C" fn rule_step(slot: u64, state: *mut c_void) -> i64 {
        // SAFETY: `run_rules` passes its `RulesLoop`.
        let state = unsafe { &mut *(state as *mut RulesLoop) };
        let slot = slot as u32;
        match rule_event(
            slot,
            state.packet,
            state.link_local,
            state.clock_override_ms,
            state.generation,
        ) {
            None => 0,
            Some(Reason::RuleEvent) => {
                state.reason = Reason::RuleEvent;
                0
            }
            Some(final_reason) => {
                state.reason = final_reason;
                1
            }
        }
    }

    /// The event, if any, this packet is for the rule in `slot`: `RuleEvent` when counted, a
    /// final verdict when it blacklists the source.
    #[inline(always)]
    fn rule_event(
        slot: u32,
        packet: &mut Packet,
        link_local: u64,
        clock_override_ms: u64,
        generation: u32,
    ) -> Option<Reason> {
        let rule = RULES.get(slot)?;
        let opens = tcp_opens_connection(packet.tcp_flags);
        if !rule_matches(rule, packet.proto, packet.dport, opens) {
            return None;
        }
        let mask = if packet.family == FAMILY_V4 {
            rule.mask_v4
        } else {
            rule.mask_v6
        };
        // After the two arms meet (0 for IPv4), so the verifier walks the rest once.
        let mask = key_len(mask, link_local as u8);
        let key = Aligned(HistoryKey {
            source: packet.source_key(mask).0,
            slot: slot as u16,
            generation: rule.generation,
        });
        let key = &key.0;
        let now_ms = now_ms(clock_override_ms);
        let outcome = if uses_short_history(rule) {
            let fresh = |scratch: &'static mut Scratch| &mut scratch.short_history;
            history_event(&HISTORY, key, rule, fresh, now_ms, packet.ttl)?
        } else {
            let fresh = |scratch: &'static mut Scratch| &mut scratch.history;
            history_event(&HISTORY_LONG, key, rule, fresh, now_ms, packet.ttl)?
        };
        let stats = rule_stats(slot);
        match outcome {
            Outcome::Counted => {
                if let Some(stats) = stats {
                    stats.events += 1;
                }
                Some(Reason::RuleEvent)
            }
            Outcome::Blacklist { hits } => {
                if let Some(stats) = stats {
                    stats.events += 1;
                    stats.blacklisted += 1;
                }
                let entry = BlacklistEntry::for_rule(rule, slot as u16, hits, now_ms, generation);
                mark_blacklisted(&packet.source_key(mask));
                match key.source.v4() {
                    Some(v4) => {
                        let _ = BLACKLIST_V4.insert(&v4, &entry, 0);
                    }
                    None => {
                        let _ = BLACKLIST_V6.insert(&key.source, &entry, 0);
                    }
                }
                // A full ring buffer loses the event, never the packet's verdict.
                if let Some(mut event) = EVENTS.reserve(0) {
                    event.write(Event {
                        source: key.source,
                        slot: slot as u16,
                        generation: rule.generation,
                        hits,
                        blacklist_ms: rule.blacklist_ms,
                    });
                    event.submit(0);
                }
                Some(punish(packet, entry.action, slot, Reason::RuleTriggered))
            }
        }
    }

    /// One event in the history `map` keeps for `key`: a known source's history is updated in
    /// place (no map update call); a new or stale one starts in its class's history of the
    /// per-CPU scratch memory (`fresh` picks it; looked up only then, so a known source's
    /// event costs no scratch lookup) and is inserted.
    #[inline(always)]
    fn history_event<const RING: usize, const CAPACITY: usize>(
        map: &LruHashMap<HistoryKey, History<RING>, CAPACITY>,
        key: &HistoryKey,
        rule: &Rule,
        fresh: impl FnOnce(&'static mut Scratch) -> &'static mut History<RING>,
        now_ms: u64,
        ttl: u8,
    ) -> Option<Outcome> {
        let known = map
            .get_ptr_mut(key)
            // SAFETY: a map value stays valid during this program run.
            .filter(|history| !unsafe { &**history }.is_stale(now_ms));
        if let Some(history) = known {
            // SAFETY: as above.
            return Some(on_event(rule, unsafe { &mut *history }, now_ms, ttl));
        }
        // SAFETY: per-CPU scratch, only this program run uses it.
        let fresh = fresh(unsafe { &mut *SCRATCH.get_ptr_mut(0)? });
        fresh.restart(ttl);
        let outcome = on_event(rule, fresh, now_ms, ttl);
        // A full LRU map evicts the least recently used history; nothing to handle.
        let _ = map.insert(key, &*fresh, 0);
        Some(outcome)
    }

    /// Rewrites the packet into a TCP RST or ICMP port unreachable back to its source.
    /// Returns false when the packet gets no answer: ICMP, a RST, too long to quote, a quote
    /// the frame does not hold, a source that is not unicast, or this CPU is out of reject
    /// tokens (taken last, so only when answering).
    /// Kept out of line: only blacklisted traffic of reject rules pays for it.
    #[inline(never)]
    fn reject(ctx: &XdpContext, packet: &Packet) -> bool {
        let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
            return false;
        };
        // SAFETY: per-CPU scratch, only this program run uses it; volatile keeps LLVM from
        // forwarding the stored values past the map memory.
        let at = unsafe {
            let offsets = &raw mut (*scratch).offsets;
            core::ptr::write_volatile(
                offsets,
                Offsets {
                    l3: packet.l3_offset,
                    l4: packet.l4_offset,
                },
            );
            core::ptr::read_volatile(offsets)
        };
        // SAFETY: as above.
        let scratch = unsafe { &mut *scratch };
        // An ICMP answer quotes the IP headers and 8 bytes after them (a TCP header, present,
        // is longer).
        if packet.l4 != L4::Present
            || at.l4 < at.l3
            || !answerable(packet.family, packet.proto, packet.tcp_flags, at.l4 - at.l3)
            || !in_frame(ctx, at.l4, 8)
            || !source_is_unicast(packet.family, &addr_bytes(packet.source))
        {
            return false;
        }
        let l2_len = at.l3;
        if l2_len < EthHdr::LEN || l2_len > MAX_L2_LEN {
            return false;
        }
        if load(ctx, 0, scratch.l2.as_mut_ptr(), l2_len as u32).is_none() {
            return false;
        }
        let source_mac = [
            scratch.l2[6],
            scratch.l2[7],
            scratch.l2[8],
            scratch.l2[9],
            scratch.l2[10],
            scratch.l2[11],
        ];
        let destination_mac = [
            scratch.l2[0],
            scratch.l2[1],
            scratch.l2[2],
            scratch.l2[3],
            scratch.l2[4],
            scratch.l2[5],
        ];
        // The answer comes from the address the packet went to, which must be one host's
        // (RFC 1122 3.2.2): never answer a broadcast or multicast.
        if !mac_is_unicast(&source_mac)
            || !mac_is_unicast(&destination_mac)
            || !destination_is_unicast(ctx, packet.family, &at, scratch)
            || !take_reject_token()
        {
            return false;
        }
        // Back to where it came from: swap the MAC addresses.
        for i in 0..6 {
            scratch.l2.swap(i, i + 6);
        }
        let answered = match (packet.family, packet.proto) {
            (FAMILY_V4, IPPROTO_TCP) => reset_v4(ctx, &at, scratch),
            (FAMILY_V6, IPPROTO_TCP) => reset_v6(ctx, &at, scratch),
            (_, IPPROTO_ICMP | IPPROTO_ICMPV6) => false,
            (FAMILY_V4, _) => unreachable_v4(ctx, &at, scratch),
            _ => unreachable_v6(ctx, &at, scratch),
        };
        answered && store(ctx, 0, scratch.l2.as_mut_ptr(), l2_len as u32)
    }

    /// Whether the packet's destination address is one host's ([`source_is_unicast`]'s test).
    #[inline(always)]
    fn destination_is_unicast(
        ctx: &XdpContext,
        family: u8,
        at: &Offsets,
        scratch: &mut Scratch,
    ) -> bool {
        scratch.destination = [0; 16];
        let destination = scratch.destination.as_mut_ptr();
        let loaded = if family == FAMILY_V4 {
            load(ctx, at.l3 + 16, destination, 4)
        } else {
            load(ctx, at.l3 + 24, destination, 16)
        };
        loaded.is_some() && source_is_unicast(family, &scratch.destination)
    }

    /// Takes one of this CPU's reject tokens, if the bucket has one.
    #[inline(always)]
    fn take_reject_token() -> bool {
        let (Some(settings), Some(bucket)) = (SETTINGS.get(0), REJECT_TOKENS.get_ptr_mut(0)) else {
            return false;
        };
        // SAFETY: a per-CPU slot is only ever touched by this CPU.
        let bucket = unsafe { &mut *bucket };
        bucket.take(
            now_ms(settings.clock_override_ms),
            settings.reject_per_s,
            settings.reject_burst,
        )
    }

    #[inline(always)]
    fn load(ctx: &XdpContext, offset: usize, buf: *mut u8, len: u32) -> Option<()> {
        // SAFETY: the caller passes a buffer of at least `len` bytes.
        let ret = unsafe { bpf_xdp_load_bytes(ctx.ctx, offset as u32, buf as *mut c_void, len) };
        (ret == 0).then_some(())
    }

    #[inline(always)]
    fn store(ctx: &XdpContext, offset: usize, buf: *mut u8, len: u32) -> bool {
        // SAFETY: the caller passes a buffer of at least `len` bytes.
        unsafe { bpf_xdp_store_bytes(ctx.ctx, offset as u32, buf as *mut c_void, len) == 0 }
    }

    /// Sets the frame's length to `len` bytes.
    #[inline(always)]
    fn resize(ctx: &XdpContext, len: usize) -> bool {
        // black_box keeps LLVM from folding this into arithmetic on the packet-end pointer,
        // which the verifier refuses.
        let current = core::hint::black_box(ctx.data_end() - ctx.data()) as i32;
        // SAFETY: the helper checks the new length against the buffer.
        unsafe { bpf_xdp_adjust_tail(ctx.ctx, len as i32 - current) == 0 }
    }

    #[inline(always)]
    fn reset_v4(ctx: &XdpContext, at: &Offsets, scratch: &mut Scratch) -> bool {
        if load(ctx, at.l3, scratch.ip_v4.as_mut_ptr(), 20).is_none()
            || load(ctx, at.l4, scratch.tcp.as_mut_ptr(), 20).is_none()
        {
            return false;
        }
        let (ip, tcp) = (&scratch.ip_v4, &scratch.tcp);
        let total_len = u32::from(u16::from_be_bytes([ip[2], ip[3]]));
        let headers = u32::from(ip[0] & 0x0f) * 4 + u32::from(tcp[12] >> 4) * 4;
        let out = &mut scratch.reset_v4;
        tcp_reset_v4(out, ip, tcp, total_len.saturating_sub(headers))
            && resize(ctx, at.l3 + out.len())
            && store(ctx, at.l3, out.as_mut_ptr(), out.len() as u32)
    }

    #[inline(always)]
    fn reset_v6(ctx: &XdpContext, at: &Offsets, scratch: &mut Scratch) -> bool {
        if load(ctx, at.l3, scratch.ip_v6.as_mut_ptr(), 40).is_none()
            || load(ctx, at.l4, scratch.tcp.as_mut_ptr(), 20).is_none()
        {
            return false;
        }
        let (ip, tcp) = (&scratch.ip_v6, &scratch.tcp);
        let payload_len = u32::from(u16::from_be_bytes([ip[4], ip[5]]));
        let extensions = (at.l4 - at.l3 - Ipv6Hdr::LEN) as u32;
        let headers = extensions + u32::from(tcp[12] >> 4) * 4;
        let out = &mut scratch.reset_v6;
        tcp_reset_v6(out, ip, tcp, payload_len.saturating_sub(headers))
            && resize(ctx, at.l3 + out.len())
            && store(ctx, at.l3, out.as_mut_ptr(), out.len() as u32)
    }

    /// Makes room for `extra` bytes of new headers in front of the IP header.
    #[inline(always)]
    fn grow_head(ctx: &XdpContext, extra: i32) -> bool {
        // SAFETY: the helper checks the headroom.
        unsafe { bpf_xdp_adjust_head(ctx.ctx, -extra) == 0 }
    }

    #[inline(always)]
    fn unreachable_v4(ctx: &XdpContext, at: &Offsets, scratch: &mut Scratch) -> bool {
        // The offending IP header and 8 bytes of what follows.
        let quote_len = at.l4 - at.l3 + 8;
        if quote_len < 8 || quote_len > QUOTE_V4_MAX {
            return false;
        }
        let out = &mut scratch.unreach_v4;
        let quote = unsafe { out.as_mut_ptr().add(28) };
        if load(ctx, at.l3, quote, quote_len as u32).is_none() {
            return false;
        }
        scratch.ip_v4.copy_from_slice(&out[28..48]);
        let len = port_unreachable_v4(out, &scratch.ip_v4, quote_len);
        grow_head(ctx, 28)
            && resize(ctx, at.l3 + len)
            && store(ctx, at.l3, out.as_mut_ptr(), len as u32)
    }

    #[inline(always)]
    fn unreachable_v6(ctx: &XdpContext, at: &Offsets, scratch: &mut Scratch) -> bool {
        let quote_len = at.l4 - at.l3 + 8;
        if quote_len < 8 || quote_len > QUOTE_V6_MAX {
            return false;
        }
        let out = &mut scratch.unreach_v6;
        let quote = unsafe { out.as_mut_ptr().add(48) };
        if load(ctx, at.l3, quote, quote_len as u32).is_none() {
            return false;
        }
        scratch.ip_v6.copy_from_slice(&out[48..88]);
        let len = port_unreachable_v6(out, &scratch.ip_v6, quote_len);
        grow_head(ctx, 48)
            && resize(ctx, at.l3 + len)
            && store(ctx, at.l3, out.as_mut_ptr(), len as u32)
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

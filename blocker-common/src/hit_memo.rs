//! A CPU's memory of recent dynamic-blacklist hits of IPv4 hosts (issue 11: one blacklisted
//! source at 0.8 of a drop-only program). A hit costs a kernel hash lookup, whose nested calls
//! each return through this host's SRSO thunk; a per-CPU array lookup is inlined.
//!
//! Within one reading of the program's clock (a tick, [`crate::tick_clock_ms`]) a hit changes
//! nothing a second hit would see otherwise: the entry was not expired at that time, and its
//! refresh wrote the expiry that time gives. So a host whose hit this CPU took at the same
//! time, under the same lists generation, gets the same verdict without the lookup. What
//! changes an entry between two hits of a tick bumps the generation: userspace removing
//! blacklist entries, and every allowlist, ban or rule writer. An entry leaving otherwise
//! does not: the kernel's LRU eviction (the blacklist full), or the daemon's purge of an entry
//! expired by its finer clock; a host memoized here keeps its verdict on this CPU until the
//! tick ends, at most one tick longer.

use crate::{BlacklistEntry, SourceKeyV4};

/// Slots of each CPU's memo: a handful of heavy sources at once. Sources that share a slot
/// only take the lookup.
pub const HIT_MEMO_SLOTS: u32 = 64;

/// One remembered hit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HitMemo {
    /// The host; the zero key of an empty slot is no host's (those have prefix length 32).
    pub source: SourceKeyV4,
    /// The clock reading of the hit.
    pub now_ms: u64,
    /// The [`crate::Settings::lists_generation`] the entry's stamp matched.
    pub lists_generation: u32,
    /// The entry's [`crate::RuleAction`] and rule slot.
    pub action: u16,
    pub slot: u16,
}

const _: () = assert!(core::mem::size_of::<HitMemo>() == 24);

impl HitMemo {
    /// The hit of `source`'s `entry` at `now_ms`, whose stamp matched `lists_generation`.
    #[inline(always)]
    pub fn of_hit(
        source: SourceKeyV4,
        now_ms: u64,
        lists_generation: u32,
        entry: &BlacklistEntry,
    ) -> Self {
        Self {
            source,
            now_ms,
            lists_generation,
            action: entry.action,
            slot: entry.slot,
        }
    }

    /// The slot of `source` in a CPU's memo (Fibonacci hashing of the key word).
    #[inline(always)]
    pub fn slot_of(source: SourceKeyV4) -> u32 {
        const SLOT_BITS: u32 = HIT_MEMO_SLOTS.trailing_zeros();
        (source.word().wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SLOT_BITS)) as u32
    }

    /// The action and rule slot of the hit `source` would take now, if this slot holds its
    /// hit of the same clock reading under `lists_generation`. `now_ms` is read only when the
    /// source and generation match.
    #[inline(always)]
    pub fn recall(
        &self,
        source: SourceKeyV4,
        lists_generation: u32,
        now_ms: impl FnOnce() -> u64,
    ) -> Option<(u16, u32)> {
        (self.source == source
            && self.lists_generation == lists_generation
            && self.now_ms == now_ms())
        .then_some((self.action, u32::from(self.slot)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{blacklist_hit, RuleAction};

    fn host(last: u8) -> SourceKeyV4 {
        SourceKeyV4::of_masked([u64::from_ne_bytes([192, 0, 2, last, 0, 0, 0, 0]), 0], 32)
    }

    fn entry(expires_at_ms: u64, refresh_ms: u32) -> BlacklistEntry {
        BlacklistEntry {
            expires_at_ms,
            refresh_ms,
            slot: 3,
            action: RuleAction::Reject as u16,
            lists_stamp: 7,
            ..Default::default()
        }
    }

    #[test]
    fn a_hit_is_recalled_for_its_source_time_and_generation_only() {
        let memo = HitMemo::of_hit(host(1), 5_000, 7, &entry(9_000, 0));
        assert_eq!(
            memo.recall(host(1), 7, || 5_000),
            Some((RuleAction::Reject as u16, 3))
        );
        assert_eq!(memo.recall(host(2), 7, || 5_000), None, "another source");
        assert_eq!(memo.recall(host(1), 8, || 5_000), None, "lists changed");
        assert_eq!(memo.recall(host(1), 7, || 5_004), None, "the next tick");
    }

    #[test]
    fn an_empty_slot_recalls_no_host() {
        let empty = HitMemo::default();
        for last in 0..=255 {
            assert_eq!(empty.recall(host(last), 0, || 0), None);
        }
    }

    /// What makes the memo exact: at the time of a hit, a second hit of the entry finds it in
    /// force and leaves it as the first left it, refreshed or not.
    #[test]
    fn a_second_hit_at_the_same_time_changes_nothing_the_first_did_not() {
        for (expires_at_ms, refresh_ms) in [(5_000, 0), (9_000, 0), (5_000, 120_000), (6_000, 1)] {
            let mut first = entry(expires_at_ms, refresh_ms);
            assert!(blacklist_hit(&mut first, 5_000));
            let mut second = first;
            assert!(blacklist_hit(&mut second, 5_000));
            assert_eq!(second, first);
        }
    }

    #[test]
    fn slots_stay_in_range_and_spread_neighbouring_hosts() {
        let mut used = [false; HIT_MEMO_SLOTS as usize];
        for last in 0..=255 {
            used[HitMemo::slot_of(host(last)) as usize] = true;
        }
        let slots = used.iter().filter(|used| **used).count();
        assert!(slots as u32 > HIT_MEMO_SLOTS / 2, "{slots} slots");
    }
}

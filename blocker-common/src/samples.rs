//! The sample of blocked packets' sources: on each CPU, one in [`SAMPLE_EVERY`] packets of
//! each blocking reason writes its source into a ring, which `blocker top` reads to name the
//! sources blocked most. The choice rides on the reason's per-CPU packet counter, which the
//! program increments anyway: a packet that is not sampled costs a mask and a branch.

use crate::Reason;

/// Per-CPU array of one [`DropSamples`].
pub const MAP_DROP_SAMPLES: &str = "DROP_SAMPLES";

/// log2 of [`SAMPLE_EVERY`].
pub const SAMPLE_SHIFT: u32 = 6;
/// One packet in this many of a reason, per CPU, is sampled: the first, then every N-th.
pub const SAMPLE_EVERY: u64 = 1 << SAMPLE_SHIFT;
/// Ring slots per sampled reason and CPU (a power of two): a reader every second misses none
/// below `SAMPLE_EVERY * SAMPLE_SLOTS_PER_REASON` packets per second of that reason on a CPU,
/// and above it still sees the newest slots.
pub const SAMPLE_SLOTS_PER_REASON: usize = 64;
/// Every verdict that blocks a source, one ring region each, so a flood of one reason does
/// not push the others' samples out.
pub const SAMPLED_REASONS: [Reason; 5] = [
    Reason::ManualBan,
    Reason::Blacklisted,
    Reason::RuleTriggered,
    Reason::Evasive,
    Reason::Rejected,
];
/// Slots of one CPU's ring.
pub const SAMPLE_SLOTS: usize = SAMPLED_REASONS.len() * SAMPLE_SLOTS_PER_REASON;
/// `DropSample::slot` when no rule decided (a manual ban, an evasive fragment).
pub const NO_RULE: u16 = u16::MAX;

/// One sampled packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropSample {
    /// The packets its reason had counted on its CPU before it: which packet of the reason
    /// this was, so a reader knows whether it fell in its interval.
    pub seen: u64,
    /// The source address as two words in memory order ([`crate::addr_bytes`] gives bytes).
    pub source: [u64; 2],
    /// [`crate::FAMILY_V4`] or [`crate::FAMILY_V6`]; 0 in a slot never written.
    pub family: u8,
    /// The [`Reason`] discriminant.
    pub reason: u8,
    /// The rule slot that blacklisted the source, or [`NO_RULE`].
    pub slot: u16,
    /// The frame's length in bytes.
    pub frame_len: u32,
}

/// One CPU's ring: region `r` (the index in [`SAMPLED_REASONS`]) holds the reason's newest
/// samples, the one of its `k`-th sampled packet in slot `k % SAMPLE_SLOTS_PER_REASON`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DropSamples {
    pub slots: [DropSample; SAMPLE_SLOTS],
}

/// The ring slot a packet blocked for `reason` is sampled into, if it is: `seen` is the
/// packets the reason had counted on this CPU before it. `None` for a reason that does not
/// block, and for all but one in [`SAMPLE_EVERY`] packets.
#[inline(always)]
pub fn sample_slot(reason: Reason, seen: u64) -> Option<usize> {
    if seen & (SAMPLE_EVERY - 1) != 0 {
        return None;
    }
    let region = sampled_region(reason)?;
    let turn = (seen >> SAMPLE_SHIFT) as usize & (SAMPLE_SLOTS_PER_REASON - 1);
    Some(region * SAMPLE_SLOTS_PER_REASON + turn)
}

/// The index of `reason` in [`SAMPLED_REASONS`].
#[inline(always)]
pub fn sampled_region(reason: Reason) -> Option<usize> {
    match reason {
        Reason::ManualBan => Some(0),
        Reason::Blacklisted => Some(1),
        Reason::RuleTriggered => Some(2),
        Reason::Evasive => Some(3),
        Reason::Rejected => Some(4),
        Reason::NoMatch
        | Reason::Allowlisted
        | Reason::NotIp
        | Reason::Malformed
        | Reason::Unparsed
        | Reason::RuleEvent => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Action;

    #[test]
    fn one_in_n_blocked_packets_is_sampled_starting_with_the_first() {
        for seen in 0..10 * SAMPLE_EVERY {
            let slot = sample_slot(Reason::ManualBan, seen);
            if seen % SAMPLE_EVERY == 0 {
                assert_eq!(slot, Some((seen / SAMPLE_EVERY) as usize), "packet {seen}");
            } else {
                assert_eq!(slot, None, "packet {seen}");
            }
        }
        let sampled = (0..1000 * SAMPLE_EVERY)
            .filter(|seen| sample_slot(Reason::Blacklisted, *seen).is_some())
            .count();
        assert_eq!(sampled, 1000);
    }

    #[test]
    fn every_blocking_reason_has_its_own_region_and_nothing_else_is_sampled() {
        for reason in Reason::ALL {
            let blocks = matches!(reason.action(), Action::Drop | Action::Tx);
            assert_eq!(
                sampled_region(reason).is_some(),
                blocks,
                "{}",
                reason.name()
            );
            assert_eq!(
                sample_slot(reason, 0).is_some(),
                blocks,
                "{}",
                reason.name()
            );
        }
        for (region, reason) in SAMPLED_REASONS.iter().enumerate() {
            assert_eq!(sampled_region(*reason), Some(region));
            let first = region * SAMPLE_SLOTS_PER_REASON;
            // The ring wraps inside the region, never into the next one.
            let turns = 3 * SAMPLE_SLOTS_PER_REASON as u64;
            for turn in 0..turns {
                let slot = sample_slot(*reason, turn * SAMPLE_EVERY).unwrap();
                assert!((first..first + SAMPLE_SLOTS_PER_REASON).contains(&slot));
                assert_eq!(slot - first, turn as usize % SAMPLE_SLOTS_PER_REASON);
            }
        }
        let last = sample_slot(Reason::Rejected, u64::MAX - (SAMPLE_EVERY - 1)).unwrap();
        assert!(last < SAMPLE_SLOTS);
    }

    #[test]
    fn a_sample_has_no_padding() {
        assert_eq!(core::mem::size_of::<DropSample>(), 32);
        assert_eq!(core::mem::size_of::<DropSamples>(), 32 * SAMPLE_SLOTS);
    }
}

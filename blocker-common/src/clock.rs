//! The program's clock for rule windows, the dynamic blacklist and reject tokens:
//! CLOCK_MONOTONIC at tick resolution (`bpf_ktime_get_coarse_ns`), remembered per CPU for the
//! current tick. The coarse clock moves when a tick advances jiffies (the kernel updates both
//! in `tick_do_update_jiffies64`, jiffies first), and jiffies cost one inlined load where the
//! coarse clock costs a helper call (about 14 ns in this VM, a sixth of a blacklist hit). So a
//! reading is reused while jiffies stay where they were when it was taken. The one other
//! mover, an adjustment of the clock (settimeofday, adjtimex) between two ticks, is seen at
//! the next tick: late by less than a tick, the resolution the clock has anyway.

/// This CPU's last coarse reading and the jiffies it was taken at; zero before the first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickClock {
    pub jiffies: u64,
    pub now_ms: u64,
}

/// The coarse clock in ms at `jiffies`: the remembered reading while jiffies have not moved,
/// else `read_ms()`. A reading that has not moved although jiffies did (taken between the
/// jiffies increment and the timekeeper's update, which follows it) is returned but not
/// remembered, so the next packet of that tick reads the clock again.
#[inline(always)]
pub fn tick_clock_ms(memo: &mut TickClock, jiffies: u64, read_ms: impl FnOnce() -> u64) -> u64 {
    if memo.jiffies == jiffies && memo.now_ms != 0 {
        return memo.now_ms;
    }
    let now_ms = read_ms();
    if now_ms != memo.now_ms {
        *memo = TickClock { jiffies, now_ms };
    }
    now_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The time at `jiffies` with the coarse clock at `clock_ms`, and whether it was read.
    fn at(memo: &mut TickClock, jiffies: u64, clock_ms: u64) -> (u64, bool) {
        let mut read = false;
        let now_ms = tick_clock_ms(memo, jiffies, || {
            read = true;
            clock_ms
        });
        (now_ms, read)
    }

    #[test]
    fn the_clock_is_read_once_per_tick() {
        let mut memo = TickClock::default();
        assert_eq!(
            at(&mut memo, 1000, 4_000),
            (4_000, true),
            "the first packet"
        );
        assert_eq!(at(&mut memo, 1000, 4_000), (4_000, false));
        assert_eq!(at(&mut memo, 1000, 4_000), (4_000, false));
        assert_eq!(at(&mut memo, 1001, 4_004), (4_004, true), "a new tick");
        assert_eq!(at(&mut memo, 1001, 4_004), (4_004, false));
        assert_eq!(
            at(&mut memo, 1005, 4_020),
            (4_020, true),
            "an idle gap of ticks"
        );
    }

    #[test]
    fn a_reading_older_than_its_tick_is_not_remembered_for_it() {
        let mut memo = TickClock::default();
        assert_eq!(at(&mut memo, 1000, 4_000), (4_000, true));
        // Jiffies moved on, the timekeeper not yet: the old time, and read again next time.
        assert_eq!(at(&mut memo, 1001, 4_000), (4_000, true));
        assert_eq!(at(&mut memo, 1001, 4_004), (4_004, true), "caught up");
        assert_eq!(at(&mut memo, 1001, 4_004), (4_004, false));
    }
}

//! The one definition of a bunch (seed 003's "IP bunch analysis"), shared by the XDP burst
//! rules ([`crate::rules::on_event`]) and userspace's analysis of web access logs.
//!
//! A bunch starts when a source's 2nd event follows its 1st within the gap, and grows with
//! each event that follows the previous one within the gap (inclusive: exactly the gap still
//! continues). A source's first event, and any event after a longer pause, is a bunch of 1.

/// The lengths a bunch is judged by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BunchLimits {
    /// The largest pause between two events of one bunch, in milliseconds.
    pub gap_ms: u32,
    /// A bunch this long counts once toward the bunch count.
    pub min_bunch: u32,
    /// A bunch this long flags its source at once.
    pub bunch_size: u32,
}

/// What one event did to its source's current bunch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BunchStep {
    /// The current bunch's length, this event included.
    pub len: u32,
    /// The bunch just reached `min_bunch`: it counts, once, from this event's time.
    pub counts: bool,
    /// The bunch is at least `bunch_size` long.
    pub full: bool,
}

/// One event at `now_ms` of a source whose current bunch is `len` long (0 before its first
/// event) and whose previous event was at `last_ms`. An event earlier than `last_ms` (logs
/// are not strictly ordered) follows it with no pause.
#[inline(always)]
pub fn bunch_step(limits: &BunchLimits, len: u32, last_ms: u64, now_ms: u64) -> BunchStep {
    let continues = len > 0 && now_ms.saturating_sub(last_ms) <= u64::from(limits.gap_ms);
    let len = if continues { len.saturating_add(1) } else { 1 };
    BunchStep {
        len,
        counts: len == limits.min_bunch,
        full: len >= limits.bunch_size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: BunchLimits = BunchLimits {
        gap_ms: 2_000,
        min_bunch: 4,
        bunch_size: 10,
    };

    /// Steps through events at `times`, returning the last step.
    fn run(times: &[u64]) -> BunchStep {
        let mut step = BunchStep {
            len: 0,
            counts: false,
            full: false,
        };
        let mut last = 0;
        for &t in times {
            step = bunch_step(&SEED, step.len, last, t);
            last = t;
        }
        step
    }

    #[test]
    fn a_pause_of_exactly_the_gap_continues_a_bunch_one_ms_more_ends_it() {
        assert_eq!(run(&[0, 2_000]).len, 2);
        assert_eq!(run(&[0, 2_000, 4_000, 6_000]).len, 4);
        assert_eq!(run(&[0, 2_001]).len, 1);
        assert_eq!(run(&[0, 1_000, 3_001]).len, 1);
    }

    #[test]
    fn the_first_event_is_a_bunch_of_one_even_at_time_zero() {
        assert_eq!(run(&[0]).len, 1);
        assert_eq!(run(&[5_000]).len, 1);
    }

    #[test]
    fn nine_is_not_full_ten_is() {
        let times: [u64; 11] = core::array::from_fn(|i| i as u64 * 1_999);
        assert!(!run(&times[..9]).full);
        let step = run(&times[..10]);
        assert!(step.full);
        assert_eq!(step.len, 10);
        assert!(run(&times).full, "a longer bunch stays full");
    }

    #[test]
    fn a_bunch_counts_once_when_it_reaches_min_bunch() {
        let (mut len, mut last, mut counted) = (0, 0, 0);
        for t in (0..20).map(|i| i * 1_000) {
            let step = bunch_step(&SEED, len, last, t);
            (len, last) = (step.len, t);
            counted += u32::from(step.counts);
        }
        assert_eq!(counted, 1);
        assert!(!run(&[0, 1_000, 2_000]).counts, "a bunch of 3 never counts");
        assert!(run(&[0, 1_000, 2_000, 3_000]).counts);
    }

    #[test]
    fn an_event_logged_out_of_order_continues_the_bunch() {
        assert_eq!(run(&[10_000, 9_000]).len, 2);
    }
}

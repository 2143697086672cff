//! Seed 003's bunch analysis over requests from a log, per source, streaming: the same bunch
//! as the XDP burst rules ([`blocker_common::bunch::bunch_step`]), and the same count of
//! bunches that reached `min_bunch` within the window.

use std::{collections::HashMap, collections::VecDeque, net::IpAddr, time::Duration};

use blocker_common::bunch::{bunch_step, BunchLimits};
use jiff::Timestamp;

use crate::{Error, Result};

/// When a source is flagged: one bunch of `bunch_size` requests, or `bunch_count` bunches of
/// at least `min_bunch` within `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BunchSettings {
    pub gap: Duration,
    pub bunch_size: u32,
    pub min_bunch: u32,
    pub bunch_count: u32,
    pub window: Duration,
}

impl Default for BunchSettings {
    /// The seed's: 2 s, a bunch of 10, or 10 bunches of 4 in a day.
    fn default() -> Self {
        Self {
            gap: Duration::from_secs(2),
            bunch_size: 10,
            min_bunch: 4,
            bunch_count: 10,
            window: Duration::from_secs(24 * 3600),
        }
    }
}

/// A source [`BunchTracker::hit`] flagged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BunchFlag {
    pub addr: IpAddr,
    /// `clicks: bunch of 14 requests` or `clicks: 10 bunches of at least 4 requests in 24h`.
    pub reason: String,
    /// The longest bunch among those within the window.
    pub largest_bunch: u32,
    /// Bunches of at least `min_bunch` within the window.
    pub bunches: u32,
}

/// A bunch that reached `min_bunch`.
#[derive(Clone, Copy, Debug)]
struct CountedBunch {
    reached_ms: u64,
    len: u32,
}

/// A source's state, kept small: most sources never make a bunch that counts, so what those
/// need lives behind a box the others do without.
#[derive(Debug, Default)]
struct Source {
    last_ms: u64,
    bunch_len: u32,
    bunches: Option<Box<Bunches>>,
}

#[derive(Debug, Default)]
struct Bunches {
    /// The newest bunches that reached `min_bunch`, oldest first: at most `bunch_count`, so
    /// the oldest is the one the count hinges on, as in the kernel's history ring.
    counted: VecDeque<CountedBunch>,
    /// Set while the source is flagged, until a window after the flag.
    flagged: Option<Flagged>,
}

/// A flag and what the source did since, so a batch report shows the whole bunch.
#[derive(Clone, Copy, Debug)]
struct Flagged {
    at_ms: u64,
    largest_bunch: u32,
    bunches: u32,
}

/// Bunches of requests per source, flagging a source once per window. Memory is bounded by
/// the sources seen within about a window: a source idle longer than that is forgotten; and,
/// [`BunchTracker::bounded`], by a number of sources.
#[derive(Debug)]
pub struct BunchTracker {
    settings: BunchSettings,
    limits: BunchLimits,
    window_ms: u64,
    sources: HashMap<IpAddr, Source>,
    next_sweep_ms: u64,
    max_sources: usize,
}

impl BunchTracker {
    /// Fails on settings no source could meet or that the kernel's rules would refuse.
    pub fn new(settings: BunchSettings) -> Result<Self> {
        let invalid = |message: &str| Err(Error::InvalidBunchSettings(message.to_string()));
        let gap_ms = u32::try_from(settings.gap.as_millis()).unwrap_or(u32::MAX);
        if gap_ms == 0 || gap_ms > blocker_common::MAX_RULE_MS {
            return invalid("the gap must be between 1 ms and 24 days");
        }
        if settings.min_bunch < 2 || settings.bunch_size < 2 {
            return invalid("a bunch has at least 2 requests");
        }
        if settings.bunch_count == 0 {
            return invalid("the bunch count must be at least 1");
        }
        let window_ms = u64::try_from(settings.window.as_millis()).unwrap_or(u64::MAX);
        if window_ms == 0 {
            return invalid("the window must be longer than 0");
        }
        Ok(Self {
            settings,
            limits: BunchLimits {
                gap_ms,
                min_bunch: settings.min_bunch,
                bunch_size: settings.bunch_size,
            },
            window_ms,
            sources: HashMap::new(),
            next_sweep_ms: 0,
            max_sources: usize::MAX,
        })
    }

    /// This tracker, holding at most `max_sources` sources: when full, the least recently
    /// seen half is forgotten (a daemon reads a log anyone can fill with distinct addresses).
    pub fn bounded(mut self, max_sources: usize) -> Self {
        self.max_sources = max_sources.max(2);
        self
    }

    /// A request from `addr` at `time`; the flag when this request makes the source meet a
    /// condition and it was not flagged within the window before.
    pub fn hit(&mut self, addr: IpAddr, time: Timestamp) -> Option<BunchFlag> {
        let now_ms = u64::try_from(time.as_millisecond()).unwrap_or(0);
        if now_ms >= self.next_sweep_ms {
            self.forget_idle(now_ms);
        }
        if self.sources.len() >= self.max_sources && !self.sources.contains_key(&addr) {
            self.make_room(now_ms);
        }
        let source = self.sources.entry(addr).or_default();
        // A log's lines are in the order requests ended, so a request may be logged a little
        // after a later one, which [`bunch_step`] takes as no pause. A request more than a gap
        // earlier is from another stretch of log (files read out of order): a new bunch.
        let went_back = now_ms.saturating_add(self.limits.gap_ms.into()) < source.last_ms;
        let len = if went_back { 0 } else { source.bunch_len };
        let step = bunch_step(&self.limits, len, source.last_ms, now_ms);
        source.bunch_len = step.len;
        source.last_ms = now_ms;
        if source.bunches.is_none() && !step.counts && !step.full {
            return None;
        }
        let bunches = source.bunches.get_or_insert_with(Box::default);
        if step.counts {
            bunches.counted.push_back(CountedBunch {
                reached_ms: now_ms,
                len: step.len,
            });
            if bunches.counted.len() > self.settings.bunch_count as usize {
                bunches.counted.pop_front();
            }
        } else if step.len > self.limits.min_bunch {
            if let Some(current) = bunches.counted.back_mut() {
                current.len = step.len;
            }
        }
        if let Some(flagged) = &mut bunches.flagged {
            if now_ms.saturating_sub(flagged.at_ms) <= self.window_ms {
                flagged.largest_bunch = flagged.largest_bunch.max(step.len);
                flagged.bunches += u32::from(step.counts);
                return None;
            }
            bunches.flagged = None;
        }
        let within = || {
            bunches
                .counted
                .iter()
                .filter(|bunch| now_ms.saturating_sub(bunch.reached_ms) <= self.window_ms)
        };
        let count = u32::try_from(within().count()).unwrap_or(u32::MAX);
        let meets_count = step.counts && count >= self.settings.bunch_count;
        if !step.full && !meets_count {
            return None;
        }
        let largest_bunch = within().map(|bunch| bunch.len).fold(step.len, u32::max);
        let flagged = Flagged {
            at_ms: now_ms,
            largest_bunch,
            bunches: count,
        };
        bunches.flagged = Some(flagged);
        Some(self.flag(addr, flagged))
    }

    /// `addr`'s flag with what it did up to now, when its flag is the latest one and the
    /// source was not forgotten since: for a batch report after the whole log was read.
    pub fn current_flag(&self, addr: IpAddr) -> Option<BunchFlag> {
        let flagged = self.sources.get(&addr)?.bunches.as_ref()?.flagged?;
        Some(self.flag(addr, flagged))
    }

    /// Sources tracked now.
    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    fn flag(&self, addr: IpAddr, flagged: Flagged) -> BunchFlag {
        let reason = if flagged.largest_bunch >= self.settings.bunch_size {
            format!("clicks: bunch of {} requests", flagged.largest_bunch)
        } else {
            format!(
                "clicks: {} bunches of at least {} requests in {}",
                flagged.bunches,
                self.settings.min_bunch,
                short_duration(self.settings.window)
            )
        };
        BunchFlag {
            addr,
            reason,
            largest_bunch: flagged.largest_bunch,
            bunches: flagged.bunches,
        }
    }

    /// Forgets idle sources, then, if still full, the least recently seen half.
    fn make_room(&mut self, now_ms: u64) {
        self.forget_idle(now_ms);
        if self.sources.len() < self.max_sources {
            return;
        }
        let mut last: Vec<u64> = self.sources.values().map(|source| source.last_ms).collect();
        let middle = last.len() / 2;
        let (_, cut, _) = last.select_nth_unstable(middle);
        let cut = *cut;
        self.sources.retain(|_, source| source.last_ms > cut);
    }

    /// Forgets sources idle longer than the window (nothing of theirs counts any more, and a
    /// flag of theirs has run out), then waits a quarter window before looking again.
    fn forget_idle(&mut self, now_ms: u64) {
        let window_ms = self.window_ms;
        self.sources
            .retain(|_, source| now_ms.saturating_sub(source.last_ms) <= window_ms);
        self.next_sweep_ms = now_ms.saturating_add((window_ms / 4).max(1));
    }
}

/// `24h`, `90m`, `45s`: whole hours up to two days, days beyond.
fn short_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        s if s % 86_400 == 0 && s > 2 * 86_400 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLICKER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7));

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_millisecond(1_329_555_600_000 + ms as i64).unwrap()
    }

    fn tracker() -> BunchTracker {
        BunchTracker::new(BunchSettings::default()).unwrap()
    }

    /// Sends `len` requests 1 s apart from `start`; the flags they raised.
    fn bunch(tracker: &mut BunchTracker, start: u64, len: u64) -> Vec<BunchFlag> {
        (0..len)
            .filter_map(|i| tracker.hit(CLICKER, at(start + i * 1_000)))
            .collect()
    }

    #[test]
    fn a_bounded_tracker_forgets_the_least_recent_half_when_full() {
        let mut tracker = tracker().bounded(1_000);
        for i in 0..200_000u32 {
            let addr = IpAddr::V6(std::net::Ipv6Addr::from(u128::from(i) << 64));
            tracker.hit(addr, at(u64::from(i)));
            assert!(tracker.sources() <= 1_000, "{}", tracker.sources());
        }
        // The clicker, seen last, is still counted after the sweep.
        let flags = bunch(&mut tracker, 200_000, 10);
        assert_eq!(flags.len(), 1);
    }

    #[test]
    fn a_bunch_of_ten_flags_nine_does_not_and_the_gap_is_inclusive() {
        let mut tracker = tracker();
        let flags: Vec<_> = (0..9)
            .filter_map(|i| tracker.hit(CLICKER, at(i * 2_000)))
            .collect();
        assert!(flags.is_empty());
        let flag = tracker.hit(CLICKER, at(9 * 2_000)).expect("the 10th flags");
        assert_eq!(flag.reason, "clicks: bunch of 10 requests");
        assert_eq!(flag.largest_bunch, 10);
        assert_eq!(flag.addr, CLICKER);
        // Once per window, but the report afterwards has the whole bunch.
        assert!(bunch(&mut tracker, 20_000, 4).is_empty());
        let current = tracker.current_flag(CLICKER).unwrap();
        assert_eq!(current.reason, "clicks: bunch of 14 requests");
        assert_eq!(current.largest_bunch, 14);
        let mut slow = super::tests::tracker();
        assert!((0..100).all(|i| slow.hit(CLICKER, at(i * 2_001)).is_none()));
    }

    #[test]
    fn ten_bunches_of_four_in_the_window_flag_nine_do_not() {
        let mut tracker = tracker();
        for i in 0..9 {
            assert!(
                bunch(&mut tracker, i * 3_600_000, 4).is_empty(),
                "bunch {i}"
            );
        }
        let flags = bunch(&mut tracker, 9 * 3_600_000, 4);
        assert_eq!(flags.len(), 1);
        assert_eq!(
            flags[0].reason,
            "clicks: 10 bunches of at least 4 requests in 24h"
        );
        assert_eq!((flags[0].largest_bunch, flags[0].bunches), (4, 10));
    }

    #[test]
    fn bunches_of_three_never_count() {
        let mut tracker = tracker();
        for i in 0..100 {
            assert!(bunch(&mut tracker, i * 60_000, 3).is_empty());
        }
    }

    #[test]
    fn bunches_older_than_the_window_do_not_count() {
        let mut tracker = tracker();
        let day = 86_400_000;
        bunch(&mut tracker, 0, 4);
        for i in 1..9 {
            bunch(&mut tracker, day - 10 * 60_000 + i * 60_000, 4);
        }
        // The first reached 4 at 3 s, the tenth reaches 4 a window and 1 ms later: nine count.
        assert!(bunch(&mut tracker, day + 1, 4).is_empty());
        assert_eq!(bunch(&mut tracker, day + 60_000, 4).len(), 1);
    }

    #[test]
    fn a_flag_lasts_a_window_then_the_source_can_be_flagged_again() {
        let mut tracker = tracker();
        assert_eq!(bunch(&mut tracker, 0, 10).len(), 1);
        assert!(bunch(&mut tracker, 3_600_000, 10).is_empty());
        assert_eq!(bunch(&mut tracker, 86_400_000 + 10_000, 10).len(), 1);
    }

    #[test]
    fn a_request_logged_long_before_the_previous_one_starts_a_new_bunch() {
        let mut tracker = tracker();
        bunch(&mut tracker, 100_000, 9);
        assert!(bunch(&mut tracker, 0, 1).is_empty());
        assert!(bunch(&mut tracker, 1_000, 8).is_empty(), "9 in all, not 18");
        // A little out of order continues it.
        let mut tracker = super::tests::tracker();
        bunch(&mut tracker, 100_000, 9);
        assert_eq!(bunch(&mut tracker, 107_000, 1).len(), 1);
    }

    #[test]
    fn idle_sources_are_forgotten_after_a_window() {
        let mut tracker = tracker();
        for i in 0..1_000_u32 {
            tracker.hit(IpAddr::from(i.to_be_bytes()), at(u64::from(i)));
        }
        assert_eq!(tracker.sources(), 1_000);
        tracker.hit(CLICKER, at(86_400_000 + 2_000));
        assert_eq!(tracker.sources(), 1);
        assert_eq!(tracker.current_flag(CLICKER), None);
    }

    #[test]
    fn settings_no_source_could_meet_are_refused() {
        for settings in [
            BunchSettings {
                gap: Duration::ZERO,
                ..BunchSettings::default()
            },
            BunchSettings {
                min_bunch: 1,
                ..BunchSettings::default()
            },
            BunchSettings {
                bunch_count: 0,
                ..BunchSettings::default()
            },
            BunchSettings {
                window: Duration::ZERO,
                ..BunchSettings::default()
            },
        ] {
            assert!(matches!(
                BunchTracker::new(settings),
                Err(Error::InvalidBunchSettings(_))
            ));
        }
    }

    #[test]
    fn windows_read_the_way_people_write_them() {
        assert_eq!(short_duration(Duration::from_secs(86_400)), "24h");
        assert_eq!(short_duration(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(short_duration(Duration::from_secs(5_400)), "90m");
        assert_eq!(short_duration(Duration::from_secs(45)), "45s");
    }
}

//! The two clocks blocker deals in: wall-clock time for the state file and for people, and
//! CLOCK_BOOTTIME seconds, which the XDP program compares ban expiries against.

use std::time::Duration;

use jiff::Timestamp;
use nix::time::{clock_gettime, ClockId};

/// A reading of both clocks taken together, to convert between them.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub wall: Timestamp,
    pub boot: Duration,
    /// CLOCK_MONOTONIC: the clock of rule windows and dynamic blacklist expiries.
    pub mono: Duration,
}

impl Now {
    pub fn read() -> Self {
        let read = |clock| clock_gettime(clock).map(Duration::from).unwrap_or_default();
        Self {
            wall: Timestamp::now(),
            boot: read(ClockId::CLOCK_BOOTTIME),
            mono: read(ClockId::CLOCK_MONOTONIC),
        }
    }

    /// The CLOCK_BOOTTIME second at which a wall-clock expiry falls, rounded up so a ban never
    /// ends early; `None` if it has already passed.
    pub fn boot_seconds_at(&self, expiry: Timestamp) -> Option<u32> {
        let remaining = expiry.duration_since(self.wall);
        if remaining.is_negative() || remaining.is_zero() {
            return None;
        }
        let remaining = Duration::try_from(remaining).ok()?;
        let at = self.boot + remaining;
        let seconds = at.as_secs() + u64::from(at.subsec_nanos() > 0);
        Some(u32::try_from(seconds).unwrap_or(u32::MAX))
    }
}

/// Parses a ban length like `90s`, `10m`, `24h` or `7d`.
pub fn parse_duration(text: &str) -> crate::Result<Duration> {
    match humantime::parse_duration(text.trim()) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        _ => Err(crate::Error::InvalidDuration(text.to_string())),
    }
}

/// The end of a ban of `duration` from `now`; `None` (no duration) is a permanent ban.
pub fn expiry_after(
    now: Timestamp,
    duration: Option<Duration>,
) -> crate::Result<Option<Timestamp>> {
    duration
        .map(|duration| {
            jiff::SignedDuration::try_from(duration)
                .ok()
                .and_then(|d| now.checked_add(d).ok())
                .ok_or_else(|| {
                    crate::Error::InvalidDuration(humantime::format_duration(duration).to_string())
                })
        })
        .transpose()
}

/// The end of a temporary ban of `duration` from `now`: a length past the calendar (an
/// escalation cap of 10000 years) ends at its last second, never turning the ban permanent.
pub fn temporary_ban_end(now: Timestamp, duration: Duration) -> Timestamp {
    jiff::SignedDuration::try_from(duration)
        .ok()
        .and_then(|d| now.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temporary_ban_past_the_calendar_ends_with_it() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        assert_eq!(
            temporary_ban_end(now, Duration::from_secs(60)).as_second(),
            1_800_000_060
        );
        let years = Duration::from_secs(10_000 * 366 * 86_400);
        assert_eq!(temporary_ban_end(now, years), Timestamp::MAX);
        assert_eq!(temporary_ban_end(now, Duration::MAX), Timestamp::MAX);
    }

    #[test]
    fn durations_in_the_documented_units() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert_eq!(
            parse_duration("1h 30m").unwrap(),
            Duration::from_secs(5_400)
        );
    }

    #[test]
    fn bad_durations_are_bad_input() {
        for bad in ["", "0s", "-5m", "ten minutes", "5", "5x"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.is_bad_input(), "{bad}");
        }
    }

    #[test]
    fn boot_expiry_is_rounded_up_and_past_expiry_is_none() {
        let now = Now {
            wall: Timestamp::from_second(1_000_000).unwrap(),
            boot: Duration::from_millis(500_500),
            mono: Duration::ZERO,
        };
        let in_ten = Timestamp::from_second(1_000_010).unwrap();
        assert_eq!(now.boot_seconds_at(in_ten), Some(511));
        let past = Timestamp::from_second(999_999).unwrap();
        assert_eq!(now.boot_seconds_at(past), None);
        assert_eq!(now.boot_seconds_at(now.wall), None);
    }
}

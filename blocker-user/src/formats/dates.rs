//! Dates written in list comments: `2005-03-15` (.htaccess) and `2/18/2012` (US order, as the
//! Perl hashes write them), read as the day's start in UTC.

use jiff::{civil::Date, tz::TimeZone, SignedDuration, Timestamp};

use super::Entry;

/// How far ahead of `now` a creation date may be and still be the list's own: a writer that
/// rounds its time to the nearest second (fail2ban's `timeofban`) dates a ban made a moment
/// ago up to half a second ahead.
const ROUNDING_SLACK: SignedDuration = SignedDuration::from_secs(1);

/// The creation date `entry`'s list gives it (`None`: the list gives none), or why its date
/// cannot be one: no calendar day, or later than `now` (beyond [`ROUNDING_SLACK`]).
pub fn creation_date(entry: &Entry, now: Timestamp) -> Result<Option<Timestamp>, String> {
    if let Some(why) = &entry.undated_because {
        return Err(why.clone());
    }
    match entry.created_at {
        Some(at) if at.duration_since(now) > ROUNDING_SLACK => {
            Err(format!("its date {at} is in the future"))
        }
        created_at => Ok(created_at),
    }
}

/// `entry` dated by the first date of its reason, or told why that word names no day.
pub fn dated_by_reason(entry: Entry) -> Entry {
    match entry.reason.as_deref().and_then(find_date) {
        Some(Ok(at)) => Entry {
            created_at: Some(at),
            ..entry
        },
        Some(Err(why)) => Entry {
            undated_because: Some(why),
            ..entry
        },
        None => entry,
    }
}

/// The first word of `text` written as a date, if any: the day it names, or why it names
/// none (`2012-13-40`, `2/30/2012`, a year before 1970). A word is written as a date when it
/// is three numbers joined by `-` or `/` with a four-digit year where the order puts it.
pub fn find_date(text: &str) -> Option<Result<Timestamp, String>> {
    text.split(|c: char| c.is_whitespace() || c == ',' || c == ';' || c == '(' || c == ')')
        .find_map(parse_date)
}

fn parse_date(word: &str) -> Option<Result<Timestamp, String>> {
    let numbers = |separator: char| -> Option<[i16; 3]> {
        let mut parts = word.split(separator);
        let mut number = || -> Option<i16> {
            let part = parts.next().filter(|p| (1..=4).contains(&p.len()))?;
            part.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| part.parse().ok())?
        };
        let numbers = [number()?, number()?, number()?];
        parts.next().is_none().then_some(numbers)
    };
    let (year, month, day) = match (numbers('-'), numbers('/')) {
        (Some([year, month, day]), _) => (year, month, day),
        (_, Some([month, day, year])) => (year, month, day),
        _ => return None,
    };
    // Three small numbers (`1/2/3`) are not taken for a date at all.
    if year < 1000 {
        return None;
    }
    let no_day = || format!("{word:?} is no calendar day");
    if year < 1970 {
        return Some(Err(format!("{word:?} is before 1970")));
    }
    let Ok((month, day)) = i8::try_from(month).and_then(|m| Ok((m, i8::try_from(day)?))) else {
        return Some(Err(no_day()));
    };
    Some(
        Date::new(year, month, day)
            .and_then(|date| date.to_zoned(TimeZone::UTC))
            .map(|zoned| zoned.timestamp())
            .map_err(|_| no_day()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_and_us_dates_are_found() {
        let at = |s: &str| s.parse::<Timestamp>().expect("a time");
        assert_eq!(
            find_date("block bad network 2005-03-15"),
            Some(Ok(at("2005-03-15T00:00:00Z")))
        );
        assert_eq!(
            find_date("2/18/2012 clicks - Czech Republic"),
            Some(Ok(at("2012-02-18T00:00:00Z")))
        );
        assert_eq!(
            find_date("SBP - 11/2/2009"),
            Some(Ok(at("2009-11-02T00:00:00Z")))
        );
        assert_eq!(find_date("clicks - China"), None);
        assert_eq!(find_date("ratio 1/2/3, port 80-443"), None);
    }

    #[test]
    fn a_date_in_the_future_or_no_day_is_no_creation_date() {
        let now: Timestamp = "2026-12-02T05:00:00Z".parse().expect("a time");
        let dated = |reason: &str| {
            dated_by_reason(Entry {
                reason: Some(reason.into()),
                ..Entry::ban("192.0.2.0/24".parse().expect("a prefix"))
            })
        };
        assert_eq!(
            creation_date(&dated("zombie 2008-01-21"), now),
            Ok(Some("2008-01-21T00:00:00Z".parse().expect("a time")))
        );
        assert_eq!(
            creation_date(&dated("zombie 2026-12-02"), now),
            Ok(Some("2026-12-02T00:00:00Z".parse().expect("a time"))),
            "today is not the future"
        );
        assert_eq!(
            creation_date(&dated("zombie 2026-12-03"), now),
            Err("its date 2026-12-03T00:00:00Z is in the future".into())
        );
        assert_eq!(
            creation_date(&dated("until 12/31/2030"), now),
            Err("its date 2030-12-31T00:00:00Z is in the future".into())
        );
        assert_eq!(
            creation_date(&dated("zombie 2008-02-30"), now),
            Err("\"2008-02-30\" is no calendar day".into())
        );
        assert_eq!(creation_date(&dated("zombie"), now), Ok(None));
    }

    #[test]
    fn a_time_rounded_up_to_the_next_second_is_still_the_lists_own() {
        let now: Timestamp = "2026-12-02T11:31:10.6Z".parse().expect("a time");
        let at = |time: &str| Entry {
            created_at: Some(time.parse().expect("a time")),
            ..Entry::ban("192.0.2.1/32".parse().expect("a prefix"))
        };
        assert_eq!(
            creation_date(&at("2026-12-02T11:31:11Z"), now),
            Ok(Some("2026-12-02T11:31:11Z".parse().expect("a time"))),
            "fail2ban wrote round(11:31:10.6)"
        );
        assert_eq!(
            creation_date(&at("2026-12-02T11:31:12Z"), now),
            Err("its date 2026-12-02T11:31:12Z is in the future".into())
        );
    }

    #[test]
    fn words_written_as_dates_that_name_no_day_say_why() {
        assert_eq!(
            find_date("2012-13-40 not a day"),
            Some(Err("\"2012-13-40\" is no calendar day".into()))
        );
        assert_eq!(
            find_date("clicks 2/30/2012"),
            Some(Err("\"2/30/2012\" is no calendar day".into()))
        );
        assert_eq!(
            find_date("old 1969-12-31"),
            Some(Err("\"1969-12-31\" is before 1970".into()))
        );
        assert_eq!(
            find_date("9999-300-1"),
            Some(Err("\"9999-300-1\" is no calendar day".into()))
        );
    }
}

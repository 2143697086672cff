//! Dates written in list comments: `2005-03-15` (.htaccess) and `2/18/2012` (US order, as the
//! Perl hashes write them), read as the day's start in UTC.

use jiff::{civil::Date, tz::TimeZone, Timestamp};

/// The first date in `text`, if any word of it is one.
pub fn find_date(text: &str) -> Option<Timestamp> {
    text.split(|c: char| c.is_whitespace() || c == ',' || c == ';' || c == '(' || c == ')')
        .find_map(parse_date)
}

fn parse_date(word: &str) -> Option<Timestamp> {
    let numbers = |separator: char| -> Option<Vec<i16>> {
        let parts: Vec<&str> = word.split(separator).collect();
        if parts.len() != 3 || parts.iter().any(|p| p.is_empty() || p.len() > 4) {
            return None;
        }
        parts.iter().map(|p| p.parse::<i16>().ok()).collect()
    };
    let (year, month, day) = if let Some(iso) = numbers('-') {
        (iso[0], iso[1], iso[2])
    } else if let Some(us) = numbers('/') {
        (us[2], us[0], us[1])
    } else {
        return None;
    };
    if !(1970..=9999).contains(&year) {
        return None;
    }
    let date = Date::new(year, i8::try_from(month).ok()?, i8::try_from(day).ok()?).ok()?;
    date.to_zoned(TimeZone::UTC)
        .ok()
        .map(|zoned| zoned.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_and_us_dates_are_found() {
        let at = |s: &str| s.parse::<Timestamp>().expect("a time");
        assert_eq!(
            find_date("block bad network 2005-03-15"),
            Some(at("2005-03-15T00:00:00Z"))
        );
        assert_eq!(
            find_date("2/18/2012 clicks - Czech Republic"),
            Some(at("2012-02-18T00:00:00Z"))
        );
        assert_eq!(
            find_date("SBP - 11/2/2009"),
            Some(at("2009-11-02T00:00:00Z"))
        );
        assert_eq!(find_date("clicks - China"), None);
        assert_eq!(find_date("2012-13-40 not a day"), None);
    }
}

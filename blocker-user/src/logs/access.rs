//! Web server access logs in the Common or Combined Log Format, as Apache and nginx write
//! them, optionally with the virtual host first (Apache's `vhost_combined`, `%v:%p` or `%v`):
//!
//! ```text
//! 198.51.100.7 - - [18/Feb/2012:10:00:00 +0100] "GET / HTTP/1.1" 200 512 "-" "agent"
//! www.example.org:443 2001:db8::7 - frank [18/Feb/2012:10:00:00 +0100] "GET /a HTTP/1.1" 200 9
//! ```
//!
//! Lines are split by hand rather than by a regex: `blocker analyze` reads a gigabyte a day.
//! Bunches of requests per source are counted by [`BunchTracker`].

use std::net::IpAddr;

use jiff::Timestamp;

pub use super::bunches::{BunchFlag, BunchSettings, BunchTracker};

/// One request of an access log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessHit {
    /// The client, an IPv4-mapped IPv6 address turned into the IPv4 address it maps.
    pub addr: IpAddr,
    /// When the request arrived, from the line's own time.
    pub time: Timestamp,
    /// Whether the request was for a page rather than a static asset (a stylesheet, script,
    /// image, font or media file, by the path's extension). A browser fetches a page's assets
    /// in a burst, so bunch analysis, which the seed defines over page requests, skips them.
    pub page: bool,
}

/// The request of one access log line, or `None` for a line in neither format.
pub fn parse_access_line(line: &str) -> Option<AccessHit> {
    // The user name before the time is the client's text (HTTP basic auth, logged whether or
    // not the site asks for it): it may hold spaces and brackets, never a quote (both servers
    // escape them). So the time is the first " [" that opens a whole time and its `] "`.
    let (open, time, request) = line.match_indices(" [").find_map(|(open, _)| {
        let rest = &line[open + 2..];
        let time = parse_clf_time(rest.get(..CLF_TIME_LEN)?)?;
        let request = rest.get(CLF_TIME_LEN..)?.strip_prefix("] \"")?;
        Some((open, time, request))
    })?;
    // host ident user, or vhost host ident user. The ident (identd's, "-" in practice) and
    // what comes before it are the server's: an address second is the client after a vhost.
    let mut fields = line[..open].split(' ');
    let (first, second) = (fields.next()?, fields.next()?);
    fields.next()?;
    let host = match second.parse::<IpAddr>() {
        Ok(_) => second,
        Err(_) => first,
    };
    let addr = host.parse::<IpAddr>().ok()?.to_canonical();
    Some(AccessHit {
        addr,
        time,
        page: !is_static_asset(request_path(request)),
    })
}

/// `18/Feb/2012:10:00:00 +0100`.
const CLF_TIME_LEN: usize = 26;

/// A CLF time, `dd/Mon/yyyy:hh:mm:ss +zzzz`; digits and separators are checked, the date is
/// checked for the month's length.
fn parse_clf_time(text: &str) -> Option<Timestamp> {
    let b = text.as_bytes();
    let separators = [
        (2, b'/'),
        (6, b'/'),
        (11, b':'),
        (14, b':'),
        (17, b':'),
        (20, b' '),
    ];
    if separators.iter().any(|&(at, sep)| b[at] != sep) {
        return None;
    }
    let number = |from: usize, len: usize| -> Option<i64> {
        b[from..from + len].iter().try_fold(0_i64, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
        })
    };
    let day = number(0, 2)?;
    let month = month_number(&b[3..6])?;
    let year = number(7, 4)?;
    let (hour, minute, second) = (number(12, 2)?, number(15, 2)?, number(18, 2)?);
    let sign = match b[21] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let offset = sign * (number(22, 2)? * 3600 + number(24, 2)? * 60);
    if day < 1 || day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Timestamp::from_second(seconds - offset).ok()
}

fn month_number(name: &[u8]) -> Option<i64> {
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let position = MONTHS.iter().position(|month| month.as_slice() == name)?;
    i64::try_from(position).ok().map(|index| index + 1)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm), so the
/// hot loop needs no calendar library call per line.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The path of `GET /path?query HTTP/1.1"...`, without the query; empty when the request
/// line is not of that shape (nginx logs `"-"` for a connection that sent nothing).
fn request_path(request: &str) -> &str {
    let Some((_method, target)) = request.split_once(' ') else {
        return "";
    };
    let end = target.find([' ', '?', '#', '"']).unwrap_or(target.len());
    &target[..end]
}

fn is_static_asset(path: &str) -> bool {
    const ASSETS: [&str; 20] = [
        "css", "js", "mjs", "map", "png", "jpg", "jpeg", "gif", "ico", "svg", "webp", "avif",
        "bmp", "woff", "woff2", "ttf", "otf", "eot", "mp4", "webm",
    ];
    let name = path.rsplit('/').next().unwrap_or(path);
    name.rsplit_once('.').is_some_and(|(_, extension)| {
        ASSETS
            .iter()
            .any(|asset| asset.eq_ignore_ascii_case(extension))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(line: &str) -> AccessHit {
        parse_access_line(line).unwrap_or_else(|| panic!("{line:?} parses"))
    }

    #[test]
    fn common_and_combined_lines_give_the_client_and_the_time() {
        let common = r#"198.51.100.7 - - [18/Feb/2012:10:00:00 +0100] "GET / HTTP/1.1" 200 512"#;
        let hit = hit(common);
        assert_eq!(hit.addr, "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(
            hit.time,
            "2012-02-18T09:00:00Z".parse::<Timestamp>().unwrap()
        );
        assert!(hit.page);
        let combined = r#"2001:db8::7 - frank [29/Feb/2000:23:59:59 -0730] "POST /login?next=/ HTTP/2.0" 302 0 "https://example.org/" "Mozilla/5.0 (X11; Linux)""#;
        let hit = super::tests::hit(combined);
        assert_eq!(hit.addr, "2001:db8::7".parse::<IpAddr>().unwrap());
        assert_eq!(
            hit.time,
            "2000-03-01T07:29:59Z".parse::<Timestamp>().unwrap()
        );
    }

    #[test]
    fn a_leading_virtual_host_with_or_without_port_is_skipped() {
        for line in [
            r#"www.example.org:443 192.0.2.9 - - [18/Feb/2012:10:00:00 +0000] "GET / HTTP/1.1" 200 1"#,
            r#"www.example.org 192.0.2.9 - - [18/Feb/2012:10:00:00 +0000] "GET / HTTP/1.1" 200 1"#,
            r#"203.0.113.1:80 192.0.2.9 - - [18/Feb/2012:10:00:00 +0000] "GET / HTTP/1.1" 200 1"#,
        ] {
            assert_eq!(
                hit(line).addr,
                "192.0.2.9".parse::<IpAddr>().unwrap(),
                "{line}"
            );
        }
    }

    /// A client's basic-auth user name is logged as sent, spaces and brackets included: the
    /// line still counts for its client.
    #[test]
    fn a_user_name_with_spaces_or_brackets_does_not_hide_the_client() {
        for user in ["a b", "a [b", "[18/Feb/2012:10:00:00", "a - 192.0.2.1"] {
            for line in [
                format!(
                    r#"203.0.113.9 - {user} [18/Feb/2012:10:00:00 +0000] "GET / HTTP/1.1" 200 1"#
                ),
                format!(
                    r#"www.example.org:443 203.0.113.9 - {user} [18/Feb/2012:10:00:00 +0000] "GET / HTTP/1.1" 200 1"#
                ),
            ] {
                assert_eq!(
                    hit(&line).addr,
                    "203.0.113.9".parse::<IpAddr>().unwrap(),
                    "{line}"
                );
            }
        }
        let vhost_by_address =
            r#"192.0.2.1 203.0.113.9 - - [18/Feb/2012:10:00:00 +0000] "GET / HTTP/1.1" 200 1"#;
        assert_eq!(
            hit(vhost_by_address).addr,
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn mapped_ipv4_clients_are_ipv4() {
        let line = r#"::ffff:192.0.2.9 - - [18/Feb/2012:10:00:00 +0000] "GET / HTTP/1.1" 200 1"#;
        assert_eq!(hit(line).addr, "192.0.2.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn static_assets_are_not_pages() {
        let with_path = |path: &str| {
            format!(r#"192.0.2.9 - - [18/Feb/2012:10:00:00 +0000] "GET {path} HTTP/1.1" 200 1"#)
        };
        for asset in ["/style.css", "/img/Logo.PNG", "/app.js?v=3", "/f.woff2"] {
            assert!(!hit(&with_path(asset)).page, "{asset}");
        }
        for page in [
            "/",
            "/index.php",
            "/blog/2012/x.html",
            "/css/",
            "/a.css/b",
            "/q?f=x.js",
        ] {
            assert!(hit(&with_path(page)).page, "{page}");
        }
        let empty_request = r#"192.0.2.9 - - [18/Feb/2012:10:00:00 +0000] "-" 400 0"#;
        assert!(hit(empty_request).page);
    }

    #[test]
    fn malformed_lines_are_none() {
        for line in [
            "",
            "garbage",
            "\u{0}\u{1}binary [",
            r#"not-an-ip - - [18/Feb/2012:10:00:00 +0000] "GET / HTTP/1.1" 200 1"#,
            r#"192.0.2.9 - [18/Feb/2012:10:00:00 +0000] "GET / HTTP/1.1" 200 1"#,
            r#"a b 192.0.2.9 - - [18/Feb/2012:10:00:00 +0000] "GET / HTTP/1.1" 200 1"#,
            r#"192.0.2.9 - - [18/Feb/2012:10:00:00 +0000"#,
            r#"192.0.2.9 - - [30/Feb/2012:10:00:00 +0000] "GET / HTTP/1.1" 200 1"#,
            r#"192.0.2.9 - - [18/Fev/2012:10:00:00 +0000] "GET / HTTP/1.1" 200 1"#,
            r#"192.0.2.9 - - [18/Feb/2012:24:00:00 +0000] "GET / HTTP/1.1" 200 1"#,
            r#"192.0.2.9 - - [18/Feb/2012 10:00:00 +0000] "GET / HTTP/1.1" 200 1"#,
            r#"192.0.2.9 - - [18/Feb/2012:10:00:00 0000] "GET / HTTP/1.1" 200 1"#,
            r#"192.0.2.9 - - [1é/Feb/2012:10:00:00 +0000] "GET / HTTP/1.1" 200 1"#,
        ] {
            assert_eq!(parse_access_line(line), None, "{line:?}");
        }
    }

    #[test]
    fn civil_days_match_jiff() {
        for (y, m, d) in [
            (1970, 1, 1),
            (2000, 2, 29),
            (2012, 2, 18),
            (2100, 3, 1),
            (1969, 12, 31),
        ] {
            let expected = jiff::civil::date(y as i16, m as i8, d as i8)
                .to_zoned(jiff::tz::TimeZone::UTC)
                .unwrap()
                .timestamp()
                .as_second();
            assert_eq!(days_from_civil(y, m, d) * 86_400, expected, "{y}-{m}-{d}");
        }
    }
}

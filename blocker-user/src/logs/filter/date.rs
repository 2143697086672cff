//! Finding a line's own time, as fail2ban does: the first date in the line (or one at the
//! start with `{^LN-BEG}`), in the common log formats or a filter's `datepattern`; the date is
//! cut out of the line before the regexes see it. A date without a year takes the current
//! one (last year's if that would put it more than a day ahead); without a zone, local time.

use std::ops::Range;
use std::sync::LazyLock;

use jiff::civil::DateTime;
use jiff::tz::{Offset, TimeZone};
use jiff::{Timestamp, Zoned};

use super::ini::Origin;
use super::FilterError;

const MONTHS: &str = "Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec";
const DAYS: &str = "Mon|Tue|Wed|Thu|Fri|Sat|Sun";

/// Fields are one-letter groups as strptime names them (`Y`, `m`, `b`, `d`, `H`, `M`, `S`,
/// `f`, `z`...), numbered per template (`Y3`).
const EPOCH_FIELD: &str = "s";
const AM_PM_FIELD: &str = "p";

/// The date templates of a filter, compiled into one regex: one alternative per template.
#[derive(Debug)]
pub struct DateFinder {
    regex: Engine,
    /// Per alternative: its marker group, then the group of each field (if it has it).
    templates: Vec<TemplateGroups>,
}

#[derive(Debug)]
struct TemplateGroups {
    marker: usize,
    fields: Vec<(String, usize)>,
}

/// A date found in a line: where it is (to cut it out) and the time it says.
#[derive(Debug, PartialEq, Eq)]
pub struct FoundDate {
    pub span: Range<usize>,
    pub time: Option<Timestamp>,
}

impl DateFinder {
    /// `datepattern` as a filter gives it (None: fail2ban's default search anywhere).
    pub fn new(datepattern: Option<(&str, &Origin)>) -> Result<DateFinder, FilterError> {
        // (anchored at the line's start, template)
        let mut templates: Vec<(bool, String)> = Vec::new();
        match datepattern {
            None => templates.extend(default_templates().into_iter().map(|t| (false, t))),
            Some((pattern, origin)) => {
                for line in pattern
                    .lines()
                    .map(str::trim)
                    .filter(|line| !line.is_empty())
                {
                    let (anchored, template) = custom_template(line, origin)?;
                    templates.extend(template.into_iter().map(|t| (anchored, t)));
                }
                if templates.is_empty() {
                    return Err(origin.error("datepattern: no date in any of its patterns"));
                }
            }
        }
        let alternatives: Vec<String> = templates
            .iter()
            .enumerate()
            .map(|(index, (anchored, template))| {
                let numbered = number_groups(template, index);
                // Up to two characters (`[`, a space) may come before a date at the start.
                let prefix = if *anchored { r"^\W{0,2}" } else { "" };
                format!("{prefix}(?P<t{index}>{numbered})")
            })
            .collect();
        let source = alternatives.join("|");
        let regex = Engine::new(&source).map_err(|err| match datepattern {
            Some((_, origin)) => origin.error(&format!("datepattern: {err}")),
            None => FilterError::new("built-in date templates".into(), None, err),
        })?;
        let templates = (0..templates.len())
            .map(|index| TemplateGroups::of(&regex, index))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                FilterError::new("datepattern".into(), None, "template groups".into())
            })?;
        Ok(DateFinder { regex, templates })
    }

    /// The first date in `line`, with its time relative to `now` (for the year and the zone).
    pub fn find(&self, line: &str, now: &Zoned) -> Option<FoundDate> {
        let captures = self.regex.spans(line)?;
        let group = |index: usize| captures.get(index).cloned().flatten();
        let template = self
            .templates
            .iter()
            .find(|template| group(template.marker).is_some())?;
        let whole = group(template.marker)?;
        let fields = Fields(
            template
                .fields
                .iter()
                .filter_map(|(name, index)| Some((name.as_str(), &line[group(*index)?])))
                .collect(),
        );
        Some(FoundDate {
            span: whole,
            time: time_of(&fields, now),
        })
    }
}

impl TemplateGroups {
    fn of(regex: &Engine, index: usize) -> Option<TemplateGroups> {
        let suffix = index.to_string();
        let mut marker = None;
        let mut fields = Vec::new();
        for (group, name) in regex.capture_names().into_iter().enumerate() {
            let Some(name) = name else { continue };
            if name == format!("t{index}") {
                marker = Some(group);
            } else if let Some(field) = name.strip_suffix(suffix.as_str()) {
                if field.len() == 1 && field.chars().all(|c| c.is_ascii_alphabetic()) {
                    fields.push((field.to_string(), group));
                }
            }
        }
        Some(TemplateGroups {
            marker: marker?,
            fields,
        })
    }
}

/// The regex crate where it can (its word boundaries are cheap; fancy-regex runs its
/// backtracking VM for them), fancy-regex for a datepattern's back-references.
#[derive(Debug)]
enum Engine {
    Plain(regex::Regex),
    Fancy(fancy_regex::Regex),
}

impl Engine {
    fn new(source: &str) -> Result<Engine, String> {
        match regex::Regex::new(source) {
            Ok(regex) => Ok(Engine::Plain(regex)),
            Err(_) => fancy_regex::Regex::new(source)
                .map(Engine::Fancy)
                .map_err(|err| err.to_string()),
        }
    }

    fn capture_names(&self) -> Vec<Option<&str>> {
        match self {
            Engine::Plain(regex) => regex.capture_names().collect(),
            Engine::Fancy(regex) => regex.capture_names().collect(),
        }
    }

    /// The span of each group of the first match.
    fn spans(&self, line: &str) -> Option<Vec<Option<Range<usize>>>> {
        match self {
            Engine::Plain(regex) => {
                let captures = regex.captures(line)?;
                Some(
                    captures
                        .iter()
                        .map(|group| group.map(|m| m.range()))
                        .collect(),
                )
            }
            Engine::Fancy(regex) => {
                let captures = regex.captures(line).ok()??;
                Some(
                    captures
                        .iter()
                        .map(|group| group.map(|m| m.range()))
                        .collect(),
                )
            }
        }
    }
}

/// `(?P<Y>` → `(?P<Y3>` (and `(?P=sep)` → `(?P=sep3)`) in template 3, so alternatives do
/// not share group names.
fn number_groups(template: &str, index: usize) -> String {
    static GROUP: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(r"\(\?P([<=])(\w+)([>)])").expect("the group pattern is valid")
    });
    GROUP
        .replace_all(template, |found: &regex::Captures| {
            format!("(?P{}{}{index}{}", &found[1], &found[2], &found[3])
        })
        .into_owned()
}

fn default_templates() -> Vec<String> {
    vec![
        // ISO 8601 / RFC 3339, as journald, rsyslog's high-precision format and many apps
        // write, and the same with slashes or dots (nginx's error log: 2026/12/01 10:00:00).
        r"(?P<Y>\d{4})[-/.](?P<m>\d{2})[-/.](?P<d>\d{2})[T ](?P<H>\d{2}):(?P<M>\d{2}):(?P<S>\d{2})(?:[.,](?P<f>\d+))?(?:\s?(?P<z>Z|[+-]\d{2}:?\d{2}))?".to_string(),
        // Syslog (`Dec  1 10:00:01`) and ctime with an optional year (`Tue Dec 01 10:00:01.123 2026`).
        format!(r"(?:(?:{DAYS})\w* )?(?P<b>{MONTHS})\w* +(?P<d>\d{{1,2}}),? (?P<H>\d{{1,2}}):(?P<M>\d{{2}}):(?P<S>\d{{2}})(?:\.(?P<f>\d+))?(?: (?P<Y>\d{{4}})\b)?"),
        // Common Log Format: `01/Dec/2026:10:00:01 +0000`.
        format!(r"(?P<d>\d{{2}})/(?P<b>{MONTHS})/(?P<Y>\d{{4}}):(?P<H>\d{{2}}):(?P<M>\d{{2}}):(?P<S>\d{{2}})(?: (?P<z>[+-]\d{{4}}))?"),
    ]
}

fn epoch_template() -> String {
    r"(?P<s>\d{10})(?:\.(?P<f>\d{1,9}))?".to_string()
}

/// One line of a `datepattern`: strptime directives (`%Y-%m-%d %H:%M:%S`) or fail2ban's
/// `{^LN-BEG}`, `{DATE}`, `{EPOCH}`; whether it is anchored at the start of the line.
fn custom_template(line: &str, origin: &Origin) -> Result<(bool, Vec<String>), FilterError> {
    let (anchored, rest) = match line.strip_prefix("{^LN-BEG}") {
        Some(rest) => (true, rest),
        None => match line.strip_prefix('^') {
            Some(rest) => (true, rest),
            None => (false, line.strip_prefix("{UNB}").unwrap_or(line)),
        },
    };
    match rest {
        "" => return Ok((anchored, default_templates())),
        "{EPOCH}" | "EPOCH" | "Epoch" => return Ok((anchored, vec![epoch_template()])),
        _ => {}
    }
    // TAI64N stamps (daemontools) are not read: the other patterns of the filter still are.
    // fail2ban reads a pattern without a date in it as "this line has no date".
    if rest.contains("TAI64N") || !rest.contains('%') && !rest.contains("{DATE}") {
        return Ok((anchored, Vec::new()));
    }
    let mut out = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '{'
            && rest.contains("{DATE}")
            && chars.clone().take(5).collect::<String>() == "DATE}"
        {
            for _ in 0..5 {
                chars.next();
            }
            // Only one template keeps group names unique; ISO dates are what {DATE} is used with.
            out.push_str(&format!("(?:{})", default_templates()[0]));
            continue;
        }
        if c != '%' {
            out.push(c);
            continue;
        }
        // fail2ban's `%Ex?` variants restrict ranges; the plain directive parses the same text.
        if chars.peek() == Some(&'E') {
            chars.next();
            if chars.peek() == Some(&'x') {
                chars.next();
            }
        }
        let Some(directive) = chars.next() else {
            return Err(origin.error("datepattern: a lone % at the end"));
        };
        out.push_str(&match directive {
            'Y' => r"(?P<Y>\d{4})".to_string(),
            'y' => r"(?P<y>\d{2})".to_string(),
            'm' => r"(?P<m>\d{1,2})".to_string(),
            'd' | 'e' => r"(?P<d>[ \d]?\d)".to_string(),
            'H' | 'k' | 'I' | 'l' => r"(?P<H>[ \d]?\d)".to_string(),
            'M' => r"(?P<M>\d{2})".to_string(),
            'S' => r"(?P<S>\d{2})".to_string(),
            'f' => r"(?P<f>\d{1,9})".to_string(),
            'b' | 'B' | 'h' => format!(r"(?P<b>(?i:{MONTHS})\w*)"),
            'a' | 'A' => format!(r"(?i:{DAYS})\w*"),
            'p' => r"(?P<p>[AaPp][Mm])".to_string(),
            'z' => r"(?P<z>Z|[+-]\d{2}:?\d{2})".to_string(),
            'Z' => r"[A-Z]{3,5}".to_string(),
            's' => r"(?P<s>\d{9,11})".to_string(),
            '%' => "%".to_string(),
            other => {
                return Err(origin.error(&format!("datepattern: %{other} is not supported")));
            }
        });
    }
    Ok((anchored, vec![out]))
}

/// The fields one match of a template captured: name → text.
struct Fields<'a>(Vec<(&'a str, &'a str)>);

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(field, _)| *field == name)
            .map(|(_, text)| *text)
    }
}

fn time_of(fields: &Fields, now: &Zoned) -> Option<Timestamp> {
    let field = |name: &str| fields.get(name);
    let number = |name: &str| field(name).and_then(|text| text.trim().parse::<i64>().ok());
    let fraction_nanos = field("f").map_or(0, |digits| {
        let digits = &digits[..digits.len().min(9)];
        digits.parse::<i64>().unwrap_or(0) * 10_i64.pow(9 - digits.len() as u32)
    });
    if let Some(seconds) = number(EPOCH_FIELD) {
        return Timestamp::new(seconds, fraction_nanos as i32).ok();
    }
    // A time without a date (`%H:%M:%S.%f`) is today's.
    let month = match field("b") {
        Some(name) => month_number(name)?,
        None => number("m").unwrap_or(i64::from(now.month())),
    };
    let mut hour = number("H")?;
    if let Some(am_pm) = field(AM_PM_FIELD) {
        hour = hour % 12
            + if am_pm.eq_ignore_ascii_case("pm") {
                12
            } else {
                0
            };
    }
    let year = number("Y").or_else(|| number("y").map(|short| 2000 + short));
    let civil = |year: i64| {
        DateTime::new(
            i16::try_from(year).ok()?,
            i8::try_from(month).ok()?,
            i8::try_from(number("d").unwrap_or(i64::from(now.day()))).ok()?,
            i8::try_from(hour).ok()?,
            i8::try_from(number("M")?).ok()?,
            i8::try_from(number("S").unwrap_or(0)).ok()?,
            i32::try_from(fraction_nanos).ok()?,
        )
        .ok()
    };
    let zone = match field("z") {
        Some(offset) => TimeZone::fixed(parse_offset(offset)?),
        None => now.time_zone().clone(),
    };
    let at = |year: i64| {
        let ambiguous = zone.to_ambiguous_timestamp(civil(year)?);
        match ambiguous.offset() {
            // The hour a clock turned back is read twice: its later reading is the one just
            // written, unless that is still to come (a line written before the turn).
            jiff::tz::AmbiguousOffset::Fold { .. } => {
                let later = ambiguous.later().ok()?;
                if later <= now.timestamp() {
                    Some(later)
                } else {
                    ambiguous.earlier().ok()
                }
            }
            _ => ambiguous.compatible().ok(),
        }
    };
    match year {
        Some(year) => at(year),
        None => {
            let this_year = at(i64::from(now.year()))?;
            let tomorrow = now
                .timestamp()
                .checked_add(jiff::SignedDuration::from_hours(24))
                .ok()?;
            if this_year > tomorrow {
                at(i64::from(now.year()) - 1)
            } else {
                Some(this_year)
            }
        }
    }
}

fn month_number(name: &str) -> Option<i64> {
    let prefix = name.get(..3)?.to_ascii_lowercase();
    MONTHS
        .split('|')
        .position(|month| month.eq_ignore_ascii_case(&prefix))
        .map(|index| index as i64 + 1)
}

fn parse_offset(text: &str) -> Option<Offset> {
    if text == "Z" {
        return Some(Offset::UTC);
    }
    let sign = if text.starts_with('-') { -1 } else { 1 };
    let digits: String = text[1..].chars().filter(char::is_ascii_digit).collect();
    let hours: i32 = digits.get(..2)?.parse().ok()?;
    let minutes: i32 = digits.get(2..4)?.parse().ok()?;
    Offset::from_seconds(sign * (hours * 3600 + minutes * 60)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Zoned {
        "2026-12-01T12:00:00+00:00[UTC]".parse().unwrap()
    }

    fn find(finder: &DateFinder, line: &str) -> (String, Option<String>) {
        let found = finder.find(line, &now()).expect("a date");
        (
            line[found.span].to_string(),
            found.time.map(|t| t.to_string()),
        )
    }

    #[test]
    fn default_templates_find_common_formats() {
        let finder = DateFinder::new(None).unwrap();
        assert_eq!(
            find(&finder, "Dec  1 10:00:01 host sshd[1]: x"),
            (
                "Dec  1 10:00:01".into(),
                Some("2026-12-01T10:00:01Z".into())
            )
        );
        // A December date seen in January is last year's.
        let january: Zoned = "2027-01-02T00:00:00+00:00[UTC]".parse().unwrap();
        let found = finder.find("Dec 31 23:59:59 h x", &january).unwrap();
        assert_eq!(found.time.unwrap().to_string(), "2026-12-31T23:59:59Z");
        assert_eq!(
            find(&finder, "2026-11-30T08:00:00.5+02:00 host sshd[1]: x").1,
            Some("2026-11-30T06:00:00.5Z".into())
        );
        assert_eq!(
            find(
                &finder,
                r#"192.0.2.1 - - [01/Dec/2026:10:00:00 -0500] "GET / HTTP/1.1""#
            )
            .1,
            Some("2026-12-01T15:00:00Z".into())
        );
        assert_eq!(
            find(
                &finder,
                "[Tue Dec 01 10:00:00.123456 2026] [auth_basic:error]"
            )
            .1,
            Some("2026-12-01T10:00:00.123456Z".into())
        );
        assert!(finder.find("no date here", &now()).is_none());
    }

    #[test]
    fn a_zone_less_time_in_the_repeated_hour_is_the_newest_reading_not_after_now() {
        let finder = DateFinder::new(None).unwrap();
        let line = "Oct 25 02:30:00 host sshd[1]: x";
        for (now, expected) in [
            // The second pass through 02:00-03:00 (CET): the line was just written.
            (
                "2026-10-25T02:30:00+01:00[Europe/Berlin]",
                "2026-10-25T01:30:00Z",
            ),
            // The first pass (CEST): the later reading is still to come.
            (
                "2026-10-25T02:30:00+02:00[Europe/Berlin]",
                "2026-10-25T00:30:00Z",
            ),
        ] {
            let now: Zoned = now.parse().unwrap();
            let found = finder.find(line, &now).unwrap();
            assert_eq!(found.time.unwrap().to_string(), expected, "at {now}");
        }
    }

    #[test]
    fn datepattern_directives_and_anchoring() {
        let origin = Origin {
            file: "f.conf".into(),
            line: 3,
        };
        let finder = DateFinder::new(Some(("{^LN-BEG}%Y/%m/%d %H:%M:%S", &origin))).unwrap();
        assert_eq!(
            find(&finder, "2026/12/01 09:08:07 [error] x").1,
            Some("2026-12-01T09:08:07Z".into())
        );
        assert!(finder.find("x 2026/12/01 09:08:07", &now()).is_none());
        let epoch = DateFinder::new(Some(("{EPOCH}", &origin))).unwrap();
        assert_eq!(
            find(&epoch, "1796119201.25 x").1,
            Some("2026-12-01T10:00:01.25Z".into())
        );
        let err = DateFinder::new(Some(("{^LN-BEG}TAI64N", &origin))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "filter f.conf line 3: datepattern: no date in any of its patterns"
        );
        let separated = DateFinder::new(Some((
            "^%%Y(?P<_sep>[-/.])%%m(?P=_sep)%%d %%H:%%M:%%S\n%%H:%%M:%%S"
                .replace("%%", "%")
                .as_str(),
            &origin,
        )))
        .unwrap();
        assert_eq!(
            find(&separated, "2026.11.30 01:02:03 x").1,
            Some("2026-11-30T01:02:03Z".into())
        );
        assert!(separated
            .find("2026.11-30 01:02:03 x", &now())
            .is_some_and(|found| found.span.start > 0));
        let err = DateFinder::new(Some(("%Q", &origin))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "filter f.conf line 3: datepattern: %Q is not supported"
        );
    }
}

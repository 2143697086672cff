//! Filters in fail2ban's format: which log lines are failures, and of which source address.
//!
//! A filter is read from a fail2ban filter file (`/etc/fail2ban/filter.d/sshd.conf` loads
//! unchanged) or is one of the built-ins kept in the same format. A line is matched the way
//! fail2ban does: its date is found and cut out, `prefregex` (if any) must match and hands its
//! `<F-CONTENT>` on, then the first `failregex` that matches decides; a match through
//! `<F-NOFAIL>` or `<F-MLFGAINED>` is not a failure, nor is one without an address (a host
//! name: names are not resolved; or a line that fail2ban ties to an earlier one by process id,
//! which is not supported: every line stands alone, as with `maxlines = 1`). An `ignoreregex` hit turns a
//! failure into an ignored line. Before any of this, a literal prefilter skips lines that no
//! failregex can match.

mod builtin;
mod date;
mod ini;
mod prefilter;
mod tags;

use std::borrow::Cow;
use std::net::IpAddr;
use std::path::Path;

use jiff::{Timestamp, Zoned};

use date::DateFinder;
use ini::{Config, Disk, Origin, Source};
use prefilter::Prefilter;

pub use builtin::names as builtin_names;

/// A filter that cannot be loaded: the file, the line (when there is one) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter {file}{}: {reason}", line.map(|line| format!(" line {line}")).unwrap_or_default())]
pub struct FilterError {
    pub file: String,
    pub line: Option<usize>,
    pub reason: String,
}

impl FilterError {
    fn new(file: String, line: Option<usize>, reason: String) -> FilterError {
        FilterError { file, line, reason }
    }
}

/// What a filter says about one log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineVerdict {
    /// A failure of `addr`, at the line's own time when it carries one.
    Failure {
        addr: IpAddr,
        time: Option<Timestamp>,
    },
    /// A failure that an `ignoreregex` excludes.
    Ignored,
    NoMatch,
}

/// A compiled filter.
#[derive(Debug)]
pub struct Filter {
    name: String,
    prefilter: Prefilter,
    dates: DateFinder,
    prefix: Option<Prefix>,
    failures: Vec<Expression>,
    ignores: Vec<fancy_regex::Regex>,
}

/// `prefregex`: what every line must match, and the group holding the part failregexes see.
#[derive(Debug)]
struct Prefix {
    regex: fancy_regex::Regex,
    content_group: Option<usize>,
    roles: Roles,
}

/// One failregex with the roles of its groups.
#[derive(Debug)]
struct Expression {
    regex: fancy_regex::Regex,
    roles: Roles,
}

/// What the named groups of an expression mean.
#[derive(Debug)]
struct Roles {
    addr_groups: Vec<usize>,
    /// `<F-NOFAIL>` and `<F-MLFGAINED>` (a success): a match through one is no failure.
    no_failure_groups: Vec<usize>,
}

/// What the first matching failregex says.
enum Outcome {
    NotFailure,
    /// A failure, with the address if the expression captured one.
    Failure(Option<IpAddr>),
}

impl Filter {
    /// A built-in filter by name (`sshd`), or a fail2ban filter file by path.
    pub fn load(name_or_path: &str) -> Result<Filter, FilterError> {
        if let Some(path) = builtin::path(name_or_path) {
            return Filter::compile(&builtin::Embedded, &path);
        }
        let path = Path::new(name_or_path);
        if !path.exists() && !name_or_path.contains('/') && !name_or_path.ends_with(".conf") {
            let builtins: Vec<&str> = builtin_names().collect();
            return Err(FilterError::new(
                name_or_path.to_string(),
                None,
                format!(
                    "no built-in filter of that name ({}) and no such file",
                    builtins.join(", ")
                ),
            ));
        }
        Filter::compile(&Disk, path)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// One log line → a failure, an ignored line or nothing; dates without a year or zone
    /// are read in this year and the local time zone.
    pub fn check(&self, line: &str) -> LineVerdict {
        let candidates = self.prefilter.candidates(line);
        if candidates.is_empty() {
            return LineVerdict::NoMatch;
        }
        self.verdict(line, candidates, &Zoned::now())
    }

    /// As `check`, with `now` giving the year and zone of dates that lack them.
    pub fn check_at(&self, line: &str, now: &Zoned) -> LineVerdict {
        let candidates = self.prefilter.candidates(line);
        if candidates.is_empty() {
            return LineVerdict::NoMatch;
        }
        self.verdict(line, candidates, now)
    }

    /// The slow path, for a line that contains a literal of the failregexes in `candidates`.
    fn verdict(&self, line: &str, candidates: Vec<usize>, now: &Zoned) -> LineVerdict {
        let date = self.dates.find(line, now);
        let undated: Cow<str> = match &date {
            Some(found) => Cow::Owned(format!(
                "{}{}",
                &line[..found.span.start],
                &line[found.span.end..]
            )),
            None => Cow::Borrowed(line),
        };
        // The prefregex's own groups count too: some filters take the address there.
        let (content, prefix_addr) = match &self.prefix {
            None => (&undated[..], None),
            Some(prefix) => match prefix.regex.captures(&undated) {
                Ok(Some(captures)) => {
                    if prefix.roles.no_failure(&captures) {
                        return LineVerdict::NoMatch;
                    }
                    let content = match prefix.content_group.and_then(|group| captures.get(group)) {
                        Some(content) => &undated[content.range()],
                        None => &undated[..],
                    };
                    (content, prefix.roles.addr(&captures))
                }
                _ => return LineVerdict::NoMatch,
            },
        };
        let Some(outcome) = candidates
            .into_iter()
            .find_map(|index| self.failures[index].matches(content))
        else {
            return LineVerdict::NoMatch;
        };
        let Some(addr) = (match outcome {
            Outcome::NotFailure => None,
            Outcome::Failure(addr) => addr.or(prefix_addr),
        }) else {
            return LineVerdict::NoMatch;
        };
        if self
            .ignores
            .iter()
            .any(|ignore| ignore.is_match(&undated).unwrap_or(false))
        {
            return LineVerdict::Ignored;
        }
        LineVerdict::Failure {
            addr,
            time: date.and_then(|found| found.time),
        }
    }

    fn compile(source: &dyn Source, path: &Path) -> Result<Filter, FilterError> {
        let config = Config::read(source, path)?;
        let file = path.display().to_string();
        // `[Init]` (what a jail passes) wins over `[Definition]`, which wins over `[DEFAULT]`.
        let lookup = |name: &str| -> Result<Option<ini::Value>, FilterError> {
            match name.split_once('/') {
                Some((section, option)) => config.get(section, option),
                None if config.sets("Init", name) => config.get("Init", name),
                None => config.get("Definition", name),
            }
        };
        let option = |name: &str| -> Result<Option<ini::Value>, FilterError> {
            let Some(mut value) = lookup(name)? else {
                return Ok(None);
            };
            value.text = tags::substitute_options(&value.text, &value.origin, &|tag| {
                Ok(lookup(tag)?.map(|value| value.text))
            })?;
            Ok(Some(value))
        };
        let failregex = option("failregex")?.ok_or_else(|| {
            FilterError::new(file.clone(), None, "no failregex in [Definition]".into())
        })?;
        let failures = regex_lines(&failregex, "failregex")?
            .into_iter()
            .map(Expression::new)
            .collect::<Vec<_>>();
        if failures.is_empty() {
            return Err(failregex.origin.error("failregex: no expression given"));
        }
        let ignores = match option("ignoreregex")? {
            Some(value) => regex_lines(&value, "ignoreregex")?,
            None => Vec::new(),
        };
        let prefix = match option("prefregex")? {
            Some(value) if !value.text.trim().is_empty() => {
                let regex = regex_lines(&value, "prefregex")?
                    .into_iter()
                    .next()
                    .ok_or_else(|| value.origin.error("prefregex: no expression given"))?;
                let content_group = group_index(&regex, "content");
                let roles = Roles::of(&regex);
                Some(Prefix {
                    regex,
                    content_group,
                    roles,
                })
            }
            _ => None,
        };
        let datepattern = option("datepattern")?.filter(|value| !value.text.trim().is_empty());
        let dates = DateFinder::new(
            datepattern
                .as_ref()
                .map(|value| (value.text.as_str(), &value.origin)),
        )?;
        let expanded: Vec<String> = failures
            .iter()
            .map(|expression| expression.regex.as_str().to_string())
            .collect();
        let name = path
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or(file);
        Ok(Filter {
            name,
            prefilter: Prefilter::new(&expanded),
            dates,
            prefix,
            failures,
            ignores,
        })
    }
}

impl Roles {
    fn of(regex: &fancy_regex::Regex) -> Roles {
        let mut addr_groups = Vec::new();
        let mut no_failure_groups = Vec::new();
        for (index, name) in regex.capture_names().enumerate() {
            let Some(name) = name else { continue };
            if tags::is_addr_group(name) {
                addr_groups.push(index);
            } else if ["nofail", "mlfgained"]
                .iter()
                .any(|marker| name.split('_').next() == Some(marker))
            {
                no_failure_groups.push(index);
            }
        }
        Roles {
            addr_groups,
            no_failure_groups,
        }
    }

    fn no_failure(&self, captures: &fancy_regex::Captures) -> bool {
        self.no_failure_groups
            .iter()
            .any(|&group| captures.get(group).is_some())
    }

    /// The first address group that took part, if it holds an address (names are not resolved).
    fn addr(&self, captures: &fancy_regex::Captures) -> Option<IpAddr> {
        self.addr_groups
            .iter()
            .find_map(|&group| captures.get(group)?.as_str().parse::<IpAddr>().ok())
            .map(|addr| addr.to_canonical())
    }
}

impl Expression {
    fn new(regex: fancy_regex::Regex) -> Expression {
        let roles = Roles::of(&regex);
        Expression { regex, roles }
    }

    /// None: no match (the caller tries the next expression); fail2ban's first matching
    /// expression decides, so the caller stops at any outcome.
    fn matches(&self, content: &str) -> Option<Outcome> {
        let captures = self.regex.captures(content).ok()??;
        if self.roles.no_failure(&captures) {
            return Some(Outcome::NotFailure);
        }
        Some(Outcome::Failure(self.roles.addr(&captures)))
    }
}

/// The non-empty lines of a multi-line regex option, expanded and compiled; an error names
/// the line the expression is on where the value's lines map onto the file's.
fn regex_lines(value: &ini::Value, option: &str) -> Result<Vec<fancy_regex::Regex>, FilterError> {
    let lines: Vec<&str> = value.text.lines().collect();
    let mut compiled = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        fancy_regex::Regex::new(&tags::expand_regex(line))
            .map(|regex| compiled.push(regex))
            .map_err(|err| {
                let origin = Origin {
                    file: value.origin.file.clone(),
                    line: value.origin.line + index,
                };
                origin.error(&format!("{option}: {}", describe(&err)))
            })?;
    }
    Ok(compiled)
}

/// fancy-regex's message for the common mistakes, in words a filter author knows.
fn describe(err: &fancy_regex::Error) -> String {
    let text = err.to_string();
    // Positions count in the expanded expression, which the author never wrote.
    let text = match text.split_once(": ") {
        Some((position, reason)) if position.starts_with("Parsing error at position") => reason,
        _ => &text,
    };
    if text.contains("without closing parenthesis") || text.contains("nclosed") {
        "unbalanced parenthesis".to_string()
    } else {
        text.to_string()
    }
}

fn group_index(regex: &fancy_regex::Regex, wanted: &str) -> Option<usize> {
    regex.capture_names().position(|name| name == Some(wanted))
}

#[cfg(test)]
mod tests;

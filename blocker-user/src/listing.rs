//! Filtered, paginated listing of the stored bans, straight from the database's rows:
//! `blocker list --kind/--source/--reason/--since/--limit` and `GET /v1/bans`. Rows are handed
//! out one at a time, so a listing of a million bans streams instead of being built whole.

use std::{io::Write, path::Path};

use jiff::Timestamp;

use crate::{state, state::Listed, Error, Result};

/// Which stored bans to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BanFilter {
    /// `permanent` or `temporary`.
    pub kind: Option<String>,
    /// Where the ban came from: `cli`, `import`, `offense`...
    pub source: Option<String>,
    /// Text the reason contains.
    pub reason: Option<String>,
    /// Bans created at or after this time.
    pub since: Option<Timestamp>,
    /// At most this many.
    pub limit: Option<u64>,
    /// Bans after this prefix, in listing order: the cursor of the page before.
    pub after: Option<String>,
}

impl BanFilter {
    /// Checks the kind, the only field with a fixed set of values.
    pub fn check(&self) -> Result<()> {
        match self.kind.as_deref() {
            None | Some("permanent" | "temporary") => Ok(()),
            Some(other) => Err(Error::InvalidListFilter(format!(
                "kind {other:?}: bans are permanent or temporary"
            ))),
        }
    }
}

/// `--since`: an RFC 3339 time, or a duration (`1h`) before `now`.
pub fn parse_since(text: &str, now: Timestamp) -> Result<Timestamp> {
    if let Ok(time) = text.parse::<Timestamp>() {
        return Ok(time);
    }
    let ago = crate::clock::parse_duration(text)
        .ok()
        .and_then(|duration| jiff::SignedDuration::try_from(duration).ok())
        .and_then(|duration| now.checked_sub(duration).ok());
    ago.ok_or_else(|| {
        Error::InvalidListFilter(format!(
            "since {text:?}: give an RFC 3339 time (2026-01-02T03:04:05Z) or a duration (1h)"
        ))
    })
}

/// Calls `each` with the bans in force at `now` that pass `filter`, ordered by prefix (as
/// text). Returns the cursor of the next page when `limit` cut the listing short.
pub fn bans(
    state_path: &Path,
    filter: &BanFilter,
    now: Timestamp,
    each: impl FnMut(Listed) -> Result<()>,
) -> Result<Option<String>> {
    filter.check()?;
    state::query_bans(state_path, filter, now, each)
}

/// Writes the bans that pass `filter` as a JSON array, one at a time.
pub fn write_bans_json(
    state_path: &Path,
    filter: &BanFilter,
    now: Timestamp,
    out: &mut impl Write,
) -> Result<Option<String>> {
    let io = |err| Error::io("writing the list")(err);
    out.write_all(b"[").map_err(io)?;
    let mut first = true;
    let next = bans(state_path, filter, now, |listed| {
        if !first {
            out.write_all(b",").map_err(io)?;
        }
        first = false;
        out.write_all(b"\n  ").map_err(io)?;
        serde_json::to_writer(&mut *out, &listed)
            .map_err(std::io::Error::from)
            .map_err(io)
    })?;
    out.write_all(b"\n]\n").map_err(io)?;
    Ok(next)
}

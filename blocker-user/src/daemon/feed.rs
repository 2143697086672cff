//! `GET /v1/bans.atom`: the most recent bans as an Atom feed (seed 004 exports its block list
//! as a feed). Reasons come from API clients and operators, so text is made XML-safe first.

use atom_syndication::{Entry, Feed, Text};
use axum::{
    extract::State as AxumState,
    http::header,
    response::{IntoResponse, Response},
};
use jiff::Timestamp;

use super::api::{blocking, Api, ApiError};
use crate::state::{Listed, State};

/// Entries in the feed, newest first.
const FEED_ENTRIES: usize = 50;

pub(super) async fn get_bans_atom(AxumState(api): AxumState<Api>) -> Result<Response, ApiError> {
    let state_path = api.daemon.state_path.clone();
    let state = blocking(move || State::load(&state_path)).await?;
    let now = Timestamp::now();
    Ok((
        [(header::CONTENT_TYPE, "application/atom+xml")],
        render(state.listed_bans(now), now),
    )
        .into_response())
}

/// The feed of `rows` as XML text.
fn render(mut rows: Vec<Listed>, now: Timestamp) -> String {
    rows.sort_by_key(|row| std::cmp::Reverse(row.created_at));
    let entries: Vec<Entry> = rows
        .iter()
        .take(FEED_ENTRIES)
        .map(|row| {
            let mut entry = Entry::default();
            entry.set_id(format!(
                "urn:blocker:ban:{}:{}",
                row.addr,
                row.created_at.map_or(0, |t| t.as_second())
            ));
            entry.set_title(Text::plain(format!("banned {} ({})", row.addr, row.kind)));
            entry.set_updated(chrono_like(row.created_at.unwrap_or(now)));
            let summary = match (&row.reason, row.expires_at) {
                (Some(reason), Some(until)) => format!("{}; until {until:.0}", xml_text(reason)),
                (Some(reason), None) => xml_text(reason),
                (None, Some(until)) => format!("until {until:.0}"),
                (None, None) => "permanent".into(),
            };
            entry.set_summary(Some(Text::plain(summary)));
            entry
        })
        .collect();
    let mut feed = Feed::default();
    feed.set_id("urn:blocker:bans");
    feed.set_title(Text::plain("blocker: recent bans"));
    feed.set_updated(chrono_like(
        rows.first().and_then(|r| r.created_at).unwrap_or(now),
    ));
    feed.set_entries(entries);
    feed.to_string()
}

/// `text` with the characters XML 1.0 cannot carry (C0 controls but tab and newlines, C1
/// controls, U+FFFE/U+FFFF) written as visible `\u{..}` escapes; the XML writer escapes
/// `<`, `&` and quotes itself.
fn xml_text(text: &str) -> String {
    // XML 1.0 also forbids the two non-characters U+FFFE and U+FFFF, which terminals accept.
    crate::text::escape(text)
        .chars()
        .flat_map(|c| match c {
            '\u{fffe}' | '\u{ffff}' => c.escape_unicode().collect::<Vec<_>>(),
            _ => vec![c],
        })
        .collect()
}

/// Atom wants a `chrono::DateTime<FixedOffset>`; go through RFC 3339 text.
fn chrono_like(t: Timestamp) -> atom_syndication::FixedDateTime {
    atom_syndication::FixedDateTime::parse_from_rfc3339(&format!("{t:.0}")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_become_visible_escapes_and_markup_is_left_to_the_writer() {
        assert_eq!(
            xml_text("\u{1b}[2J\u{7}a\tb\u{0}<&>\u{85}\u{ffff}é"),
            "\\u{1b}[2J\\u{7}a\\tb\\u{0}<&>\\u{85}\\u{ffff}é"
        );
    }

    #[test]
    fn a_feed_with_hostile_reasons_reads_back() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let row = Listed {
            addr: "192.0.2.1/32".into(),
            kind: "temporary",
            reason: Some("\u{1b}]0;x\u{7} </summary><evil/> &amp;".into()),
            created_at: Some(now),
            expires_at: None,
            rule: None,
            hits: None,
        };
        let text = render(vec![row], now);
        let feed: Feed = text.parse().expect("well-formed");
        let summary = feed.entries()[0].summary().expect("summary").value.clone();
        assert!(
            summary.starts_with("\\u{1b}]0;x\\u{7} </summary><evil/> &amp;"),
            "{summary}"
        );
        assert!(!text.contains('\u{1b}'));
    }
}

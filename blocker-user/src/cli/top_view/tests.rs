//! The view drawn into ratatui's TestBackend from a fixed snapshot, at 80x24 and 200x50.

use ratatui::{backend::TestBackend, Terminal};

use super::*;
use crate::cli::top_data::{RuleRates, Source, Traffic};

fn event(at: &str, action: &str, prefix: &str, source: &str, reason: &str) -> Event {
    Event {
        at: at.parse().expect("time"),
        action: action.into(),
        prefix: prefix.into(),
        source: source.into(),
        reason: Some(reason.into()),
    }
}

fn traffic(action: &'static str, reason: &'static str, pps: f64, packets: u64) -> Traffic {
    Traffic {
        action,
        reason,
        packets,
        bytes: packets * 60,
        packets_in_interval: pps as u64,
        packets_per_sec: pps,
        bits_per_sec: pps * 480.0,
    }
}

/// A fixed snapshot: an attack from a few sources, one trie nearly full.
pub(crate) fn fixed_view() -> View {
    let snapshot = Snapshot {
        interval_secs: 1.0,
        verdicts: vec![
            traffic("pass", "", 1520.0, 9_120_000),
            traffic("drop", "", 48_250.0, 20_400_000),
            traffic("tx", "", 12.0, 3_400),
        ],
        reasons: vec![
            traffic("pass", "no_match", 1500.0, 9_000_000),
            traffic("pass", "allowlisted", 20.0, 120_000),
            traffic("drop", "manual_ban", 41_000.0, 18_000_000),
            traffic("drop", "blacklisted", 7_250.0, 2_400_000),
            traffic("tx", "rejected", 12.0, 3_400),
        ],
        rules: vec![
            RuleRates {
                name: "ssh".into(),
                events: 5_000,
                blacklisted: 42,
                dropped: 2_400_000,
                events_per_sec: 35.0,
                ..RuleRates::default()
            },
            RuleRates {
                name: "web".into(),
                events: 120,
                blacklisted: 1,
                dropped: 900,
                events_per_sec: 2.0,
                ..RuleRates::default()
            },
        ],
        sources: std::iter::once(Source {
            addr: "192.0.2.66/32".into(),
            reason: "manual_ban",
            blocked_per_sec: 40960.0,
            ..Source::default()
        })
        .chain(
            ["198.51.100.0/24", "203.0.113.7/32", "2001:db8:bad::/64"]
                .iter()
                .zip([(12, 6912.0), (57, 640.0), (4, 0.0)])
                .map(|(addr, (hits, blocked_per_sec))| Source {
                    addr: addr.to_string(),
                    rule: Some("ssh".into()),
                    hits,
                    expires_at: Some("2026-12-02T03:00:00Z".parse().expect("time")),
                    reason: "blacklisted",
                    blocked_per_sec,
                    ..Source::default()
                }),
        )
        .collect(),
        sources_title: "blocked sources, most blocked first".into(),
        events: vec![
            event(
                "2026-12-02T02:59:58Z",
                "expired",
                "192.0.2.200/32",
                "rule",
                "ssh",
            ),
            event(
                "2026-12-02T02:59:59Z",
                "ban",
                "198.51.100.66/32",
                "log",
                "sshd: 5 failures",
            ),
            event(
                "2026-12-02T03:00:00Z",
                "blacklisted",
                "203.0.113.7/32",
                "rule",
                "ssh",
            ),
        ],
        state_available: true,
        maps: vec![
            MapFill {
                name: "BAN_V4",
                entries: 95_000,
                capacity: 100_000,
            },
            MapFill {
                name: "BLACKLIST_V4",
                entries: 800,
                capacity: 1_000,
            },
            MapFill {
                name: "HISTORY",
                entries: 10,
                capacity: 1_000,
            },
        ],
    };
    let mut view = View::default();
    for step in 1..=100u32 {
        let mut earlier = snapshot.clone();
        earlier.events.clear();
        earlier.verdicts[1].packets_per_sec = f64::from(step * 480);
        view.record(earlier, 300);
    }
    view.record(snapshot, 300);
    view.selected = 1;
    view
}

fn render(view: &View, width: u16, height: u16) -> Buffer {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("terminal");
    terminal
        .draw(|frame| draw(frame, view))
        .expect("draw")
        .buffer
        .clone()
}

fn find(buffer: &Buffer, needle: &str) -> (u16, u16) {
    let text = buffer_text(buffer);
    text.lines()
        .enumerate()
        .find_map(|(y, line)| {
            let x = line.find(needle)?;
            Some((line[..x].chars().count() as u16, y as u16))
        })
        .unwrap_or_else(|| panic!("{needle:?} not on screen:\n{text}"))
}

#[test]
fn fits_80x24_with_every_panel() {
    let buffer = render(&fixed_view(), 80, 24);
    let text = buffer_text(&buffer);
    println!("{text}");
    for needle in [
        "blocker top",
        "drop   48.2k pps     23.2M b/s",
        "manual_ban",
        "41.0k",
        "ssh",
        "203.0.113.7/32",
        "blocked sources, most blocked first",
        "source                     rule           blk/s   hits   until",
        "192.0.2.66/32              manual_ban     40960  ",
        "198.51.100.0/24            ssh            6912    12",
        "BAN_V4 95%",
        "BLACKLIST_V4 80%",
        "recent events (UTC)",
        "03:00:00 blacklisted 203.0.113.7/32",
        "02:59:59 ban         198.51.100.66/32     log     sshd: 5 failures",
        "q quit",
    ] {
        find(&buffer, needle);
    }
    assert_eq!(text.lines().count(), 24);
    // The selected source is highlighted.
    let (x, y) = find(&buffer, "198.51.100.0/24");
    assert!(buffer[(x, y)].modifier.contains(Modifier::REVERSED));
    // Near full: red; past the warning mark: yellow; roomy: green.
    let (x, y) = find(&buffer, "BAN_V4");
    assert_eq!(buffer[(x, y)].bg, Color::Red);
    let (x, y) = find(&buffer, "BLACKLIST_V4 80%");
    assert_eq!(buffer[(x, y)].bg, Color::Yellow);
    let (x, y) = find(&buffer, "HISTORY 1%");
    assert_eq!(buffer[(x, y)].fg, Color::Green);
    // The drop sparkline rises to the right.
    let (_, drop_row) = find(&buffer, "drop   48.2k");
    let sparkline: String = (37..80).map(|x| buffer[(x, drop_row)].symbol()).collect();
    assert!(sparkline.contains('█'), "{sparkline:?}");
}

#[test]
fn uses_a_200x50_screen() {
    let buffer = render(&fixed_view(), 200, 50);
    let text = buffer_text(&buffer);
    println!("{text}");
    assert_eq!(text.lines().count(), 50);
    for needle in [
        "2001:db8:bad::/64",
        "2026-12-02T03:00:00Z",
        "rejected",
        "web",
    ] {
        find(&buffer, needle);
    }
    // Wider than 80: the sparkline spans the extra width.
    let (_, drop_row) = find(&buffer, "drop   48.2k");
    let bars = (37..199)
        .filter(|x| buffer[(*x, drop_row)].symbol() != " ")
        .count();
    assert!(bars > 80, "{bars} bars");
}

#[test]
fn paused_and_prompt_show() {
    let mut view = fixed_view();
    view.paused = true;
    view.footer = Some("ban 198.51.100.0/24 permanently? y/n".into());
    let buffer = render(&view, 80, 24);
    find(&buffer, "[paused]");
    find(&buffer, "ban 198.51.100.0/24 permanently? y/n");
}

#[test]
fn events_newest_first_and_an_unavailable_state_said() {
    let mut view = fixed_view();
    let newest = find(&render(&view, 80, 24), "03:00:00 blacklisted").1;
    let older = find(&render(&view, 80, 24), "02:59:59 ban").1;
    assert!(newest < older);
    let mut next = view.snapshot.clone();
    next.events = vec![event(
        "2026-12-02T03:00:01Z",
        "unban",
        "198.51.100.66/32",
        "cli",
        "",
    )];
    next.state_available = false;
    view.record(next, 300);
    let buffer = render(&view, 80, 24);
    find(&buffer, "recent events (UTC), state unavailable");
    assert_eq!(find(&buffer, "03:00:01 unban").1, newest);
    let (x, y) = find(&buffer, "blacklisted 203.0.113.7/32");
    assert_eq!(buffer[(x, y)].fg, Color::Red);
}

#[test]
fn every_map_fits_80_columns_or_the_fullest_are_shown_first() {
    let mut view = fixed_view();
    // Every map that fills, with the longest names, the last two fullest.
    let fill = |at: usize| match at {
        6 => 1_000,
        7 => 950,
        _ => 500,
    };
    view.snapshot.maps = blocker::status::FILLING_MAPS
        .iter()
        .enumerate()
        .map(|(at, name)| MapFill {
            name,
            entries: fill(at),
            capacity: 1_000,
        })
        .collect();
    let buffer = render(&view, 80, 24);
    let (x, y) = find(
        &buffer,
        "HISTORY 100% HISTORY_LONG 95% BAN_V4 50% BAN_V6 50%",
    );
    let line = buffer_text(&buffer)
        .lines()
        .nth(y as usize)
        .map(str::to_string)
        .unwrap_or_default();
    // Five fit with the count beside them; six (77 columns) would leave it no room.
    let left_out = 3;
    assert!(
        line.trim_end().ends_with(&format!("+{left_out} more")),
        "{line}"
    );
    assert!(x as usize + line[x as usize..].trim_end().len() <= 80);
    // Wide enough: all of them, labelled, in their order.
    find(
        &render(&view, 160, 24),
        "map fill  BAN_V4 50%  BAN_V6 50%  ALLOW_V4 50%",
    );
}

//! How `blocker top` draws a snapshot: verdict rates with sparklines, reasons, rules, the
//! dynamic blacklist's sources, recent events and map fill, laid out to fit 80x24 and use more
//! when there is.

use std::collections::{BTreeMap, VecDeque};

use ratatui::{
    buffer::Buffer,
    layout::{Constraint, Flex, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Paragraph, Row, Sparkline, Table, TableState},
    Frame,
};

use super::{
    top_data::{MapFill, Snapshot},
    top_events::Event,
};

/// Fill from which a map is drawn in warning colours.
const FILL_WARN: f64 = 0.75;
const FILL_ALARM: f64 = 0.9;
/// Events kept for the events panel: more than any screen shows.
const MAX_EVENTS: usize = 100;

/// Everything drawn besides the snapshot: packets/s history, selection, prompt.
#[derive(Debug, Default)]
pub struct View {
    pub snapshot: Snapshot,
    /// Packets per second of each verdict, oldest first.
    pub history: BTreeMap<&'static str, VecDeque<u64>>,
    /// Recent events, newest first.
    pub events: VecDeque<Event>,
    pub selected: usize,
    pub paused: bool,
    /// A question awaiting y/n, or the outcome of the last action.
    pub footer: Option<String>,
}

impl View {
    /// Keeps the last `keep` rates of each verdict for the sparklines.
    pub fn record(&mut self, snapshot: Snapshot, keep: usize) {
        for verdict in &snapshot.verdicts {
            let series = self.history.entry(verdict.action).or_default();
            series.push_back(verdict.packets_per_sec.round() as u64);
            while series.len() > keep {
                series.pop_front();
            }
        }
        self.add_events(&snapshot.events);
        self.snapshot = snapshot;
        self.selected = self
            .selected
            .min(self.snapshot.sources.len().saturating_sub(1));
    }

    /// Adds `events` (oldest first) to the events panel.
    pub fn add_events(&mut self, events: &[Event]) {
        for event in events {
            self.events.push_front(event.clone());
        }
        self.events.truncate(MAX_EVENTS);
    }

    /// The selected source's address.
    pub fn selected_source(&self) -> Option<&str> {
        self.snapshot
            .sources
            .get(self.selected)
            .map(|source| source.addr.as_str())
    }
}

/// Draws `view` over the whole frame.
pub fn draw(frame: &mut Frame, view: &View) {
    let [title, verdicts, middle, sources, events, maps, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(5),
        Constraint::Min(6),
        Constraint::Min(5),
        Constraint::Min(4),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let [reasons, rules] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(middle);
    draw_title(frame, title, view);
    draw_verdicts(frame, verdicts, view);
    draw_reasons(frame, reasons, &view.snapshot);
    draw_rules(frame, rules, &view.snapshot);
    draw_sources(frame, sources, view);
    draw_events(frame, events, view);
    draw_maps(frame, maps, &view.snapshot.maps);
    let help = "q quit  p pause  ↑↓ select  b ban  u unban  a allow  s sort  f family";
    let text = view.footer.as_deref().unwrap_or(help);
    frame.render_widget(
        Paragraph::new(text).style(Style::new().fg(Color::Cyan)),
        footer,
    );
}

fn draw_title(frame: &mut Frame, area: Rect, view: &View) {
    let mut spans = vec![
        Span::styled("blocker top", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!(
            "  every {:.1}s, from the pinned maps",
            view.snapshot.interval_secs
        )),
    ];
    if view.paused {
        spans.push(Span::styled(
            "  [paused]",
            Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
        ));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_verdicts(frame: &mut Frame, area: Rect, view: &View) {
    let block = Block::new().borders(Borders::ALL).title(" verdicts ");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let rows = Layout::vertical([Constraint::Length(1); 3]).split(inner);
    // One scale for every verdict, so their bars compare.
    let peak = view
        .history
        .values()
        .flat_map(|series| series.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    for (verdict, row) in view.snapshot.verdicts.iter().zip(rows.iter()) {
        let [label, spark] =
            Layout::horizontal([Constraint::Length(36), Constraint::Min(4)]).areas(*row);
        let text = format!(
            "{:<5}{:>11}  {:>12}",
            verdict.action,
            rate(verdict.packets_per_sec, "pps"),
            rate(verdict.bits_per_sec, "b/s"),
        );
        frame.render_widget(
            Paragraph::new(text).style(verdict_style(verdict.action)),
            label,
        );
        let data: Vec<u64> = view
            .history
            .get(verdict.action)
            .map(|series| series.iter().copied().collect())
            .unwrap_or_default();
        // The newest rates, as many as fit.
        let shown = &data[data.len().saturating_sub(spark.width as usize)..];
        frame.render_widget(
            Sparkline::default()
                .data(shown)
                .max(peak)
                .style(verdict_style(verdict.action)),
            spark,
        );
    }
}

fn verdict_style(action: &str) -> Style {
    match action {
        "drop" => Style::new().fg(Color::Red),
        "tx" => Style::new().fg(Color::Magenta),
        _ => Style::new().fg(Color::Green),
    }
}

fn draw_reasons(frame: &mut Frame, area: Rect, snapshot: &Snapshot) {
    let rows = snapshot.reasons.iter().map(|row| {
        Row::new([
            Cell::from(row.reason).style(verdict_style(row.action)),
            Cell::from(rate(row.packets_per_sec, "")),
            Cell::from(count(row.packets)),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(14),
            Constraint::Length(8),
            Constraint::Length(8),
        ],
    )
    .flex(Flex::Start)
    .header(header(&["reason", "pkt/s", "total"]))
    .block(Block::new().borders(Borders::ALL).title(" reasons "));
    frame.render_widget(table, area);
}

fn draw_rules(frame: &mut Frame, area: Rect, snapshot: &Snapshot) {
    let rows = snapshot.rules.iter().map(|rule| {
        Row::new([
            Cell::from(blocker::text::escape(&rule.name).into_owned()),
            Cell::from(rate(rule.events_per_sec, "")),
            Cell::from(count(rule.blacklisted)),
            Cell::from(count(rule.dropped)),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(14),
            Constraint::Length(7),
            Constraint::Length(6),
            Constraint::Length(7),
        ],
    )
    .flex(Flex::Start)
    .header(header(&["rule", "ev/s", "bl", "drops"]))
    .block(Block::new().borders(Borders::ALL).title(" rules "));
    frame.render_widget(table, area);
}

fn draw_sources(frame: &mut Frame, area: Rect, view: &View) {
    let rows = view.snapshot.sources.iter().map(|source| {
        Row::new([
            Cell::from(source.addr.clone()),
            // A manual ban's source has no rule: its reason says why it is blocked.
            Cell::from(
                source
                    .rule
                    .as_deref()
                    .map(|rule| blocker::text::escape(rule).into_owned())
                    .unwrap_or_else(|| source.reason.to_string()),
            ),
            Cell::from(format!("{:.0}", source.blocked_per_sec)),
            Cell::from(source.hits.to_string()),
            Cell::from(
                source
                    .expires_at
                    .map(|at| format!("{at:.0}"))
                    .unwrap_or_default(),
            ),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(26),
            Constraint::Length(14),
            Constraint::Length(7),
            Constraint::Length(6),
            Constraint::Length(20),
        ],
    )
    .flex(Flex::Start)
    .header(header(&["source", "rule", "blk/s", "hits", "until"]))
    .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
    .block(
        Block::new()
            .borders(Borders::ALL)
            .title(format!(" {} ", view.snapshot.sources_title)),
    );
    let mut state = TableState::default()
        .with_selected((!view.snapshot.sources.is_empty()).then_some(view.selected));
    frame.render_stateful_widget(table, area, &mut state);
}

/// Map fill on one line: labelled and spaced when the width allows, tighter when not; when
/// even that is too wide (80 columns hold about six full maps of the eight), the fullest
/// maps first, as many as fit, and how many are left out.
fn draw_maps(frame: &mut Frame, area: Rect, maps: &[MapFill]) {
    let fills: Vec<(String, Style, f64)> = maps
        .iter()
        .map(|map| {
            let ratio = map.ratio();
            let style = if ratio >= FILL_ALARM {
                Style::new().fg(Color::White).bg(Color::Red)
            } else if ratio >= FILL_WARN {
                Style::new().fg(Color::Black).bg(Color::Yellow)
            } else {
                Style::new().fg(Color::Green)
            };
            (format!("{} {:.0}%", map.name, ratio * 100.0), style, ratio)
        })
        .collect();
    let width = area.width as usize;
    let line_width = |texts: &[(String, Style, f64)], label: &str, gap: &str| {
        let text_width: usize = texts.iter().map(|(text, ..)| text.len()).sum();
        label.len() + text_width + texts.len().saturating_sub(1) * gap.len()
    };
    let label = "map fill  ";
    let fitting = [(label, "  "), ("", "  "), ("", " ")]
        .into_iter()
        .find(|(label, gap)| line_width(&fills, label, gap) <= width);
    let (label, gap, shown, left_out) = match fitting {
        Some((label, gap)) => (label, gap, fills, String::new()),
        None => {
            let mut fullest = fills;
            fullest.sort_by(|a, b| b.2.total_cmp(&a.2));
            let total = fullest.len();
            let more = |kept: usize| match total - kept {
                0 => String::new(),
                left_out => format!(" +{left_out} more"),
            };
            // The most maps that fit beside the count of those left out.
            let kept = (0..=total)
                .rev()
                .find(|&kept| line_width(&fullest[..kept], "", " ") + more(kept).len() <= width)
                .unwrap_or(0);
            let more = more(kept);
            fullest.truncate(kept);
            ("", " ", fullest, more)
        }
    };
    let mut spans = vec![Span::styled(
        label,
        Style::new().add_modifier(Modifier::BOLD),
    )];
    for (index, (text, style, _)) in shown.into_iter().enumerate() {
        if index > 0 {
            spans.push(Span::raw(gap));
        }
        spans.push(Span::styled(text, style));
    }
    spans.push(Span::raw(left_out));
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_events(frame: &mut Frame, area: Rect, view: &View) {
    let rows = view.events.iter().map(|event| {
        let style = match event.action.as_str() {
            "ban" | "blacklisted" => Style::new().fg(Color::Red),
            "allow" => Style::new().fg(Color::Green),
            _ => Style::new(),
        };
        Row::new([
            Cell::from(event.at.strftime("%H:%M:%S").to_string()),
            Cell::from(blocker::text::escape(&event.action).into_owned()).style(style),
            Cell::from(blocker::text::escape(&event.prefix).into_owned()),
            Cell::from(blocker::text::escape(&event.source).into_owned()),
            Cell::from(
                blocker::text::escape(event.reason.as_deref().unwrap_or_default()).into_owned(),
            ),
        ])
    });
    let title = if view.snapshot.state_available {
        " recent events (UTC) "
    } else {
        " recent events (UTC), state unavailable "
    };
    let table = Table::new(
        rows,
        [
            Constraint::Length(8),
            Constraint::Length(11),
            Constraint::Length(20),
            Constraint::Length(7),
            Constraint::Fill(1),
        ],
    )
    .block(Block::new().borders(Borders::ALL).title(title));
    frame.render_widget(table, area);
}

fn header(names: &[&'static str]) -> Row<'static> {
    Row::new(names.iter().copied()).style(Style::new().add_modifier(Modifier::BOLD))
}

/// 1234567 -> "1.2M", with an SI prefix.
fn rate(value: f64, unit: &str) -> String {
    let (scaled, prefix) = if value >= 1e9 {
        (value / 1e9, "G")
    } else if value >= 1e6 {
        (value / 1e6, "M")
    } else if value >= 1e3 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    let digits = if prefix.is_empty() && scaled.fract() == 0.0 {
        0
    } else {
        1
    };
    format!(
        "{scaled:.digits$}{prefix}{}{unit}",
        if unit.is_empty() { "" } else { " " }
    )
}

fn count(value: u64) -> String {
    rate(value as f64, "")
}

/// The buffer's characters, one line per row with trailing spaces trimmed: `--once` without
/// `--json`, and the README's screenshot.
pub fn buffer_text(buffer: &Buffer) -> String {
    let width = buffer.area.width as usize;
    let symbols: Vec<&str> = buffer.content.iter().map(|cell| cell.symbol()).collect();
    symbols
        .chunks(width.max(1))
        .map(|row| row.concat().trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests;

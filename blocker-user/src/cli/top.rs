//! `blocker top`: a live view of what the XDP program does, read from the pinned maps every
//! interval (no daemon needed); `--once --json` prints one snapshot for scripts.

use std::{
    io::Write,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use blocker::pins::PinDir;
use ratatui::{
    backend::TestBackend,
    crossterm::event::{self, Event, KeyCode, KeyEventKind},
    DefaultTerminal, Terminal,
};

use super::{
    top_data::{Reading, Snapshot, SortBy, SourceFilter},
    top_view::{buffer_text, draw, View},
};

/// Rates kept for the sparklines: wider than any terminal's sparkline column needs.
const HISTORY: usize = 300;

/// `blocker top` arguments.
#[derive(clap::Args)]
pub struct TopArgs {
    /// Print one snapshot (rates over one interval) and exit.
    #[arg(long)]
    pub once: bool,
    /// With --once: the snapshot as JSON instead of the screen as text.
    #[arg(long, requires = "once")]
    pub json: bool,
    /// Time between readings.
    #[arg(long, default_value = "1s", value_parser = interval_arg)]
    pub interval: Duration,
    /// Only sources of this address family in the source list.
    #[arg(long, value_enum)]
    pub family: Option<Family>,
    /// Only sources blacklisted by this rule.
    #[arg(long)]
    pub rule: Option<String>,
    /// The order of the source list.
    #[arg(long, value_enum, default_value_t)]
    pub sort: SortBy,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Family {
    #[value(name = "4")]
    V4,
    #[value(name = "6")]
    V6,
}

fn interval_arg(text: &str) -> Result<Duration, String> {
    let interval = blocker::clock::parse_duration(text).map_err(|err| err.to_string())?;
    if interval < Duration::from_millis(100) {
        return Err("at least 100ms".into());
    }
    Ok(interval)
}

/// Shows the view until `q`, or prints one snapshot with `--once`.
pub fn run(args: &TopArgs, pins: &PinDir, state_path: &Path) -> anyhow::Result<()> {
    blocker::pins::require_root()?;
    pins.require_loaded()?;
    let filter = SourceFilter {
        family: args.family.map(|family| match family {
            Family::V4 => 4,
            Family::V6 => 6,
        }),
        rule: args.rule.clone(),
        sort: args.sort,
    };
    if args.once {
        let before = Reading::take(pins, state_path, None)?;
        std::thread::sleep(args.interval);
        let after = Reading::take(pins, state_path, Some(&before))?;
        let snapshot = Snapshot::between(&before, &after, &filter);
        let mut out = std::io::stdout().lock();
        if args.json {
            writeln!(out, "{}", serde_json::to_string_pretty(&snapshot)?)?;
        } else {
            let (width, height) = ratatui::crossterm::terminal::size().unwrap_or((80, 24));
            writeln!(out, "{}", render_text(snapshot, width, height)?)?;
        }
        return Ok(());
    }
    let mut terminal = ratatui::init();
    let result = live(&mut terminal, args, pins, state_path, filter);
    ratatui::restore();
    result
}

/// The screen for `snapshot` as plain text, `width` x `height`.
pub fn render_text(snapshot: Snapshot, width: u16, height: u16) -> anyhow::Result<String> {
    let mut view = View::default();
    view.record(snapshot, HISTORY);
    let mut terminal = Terminal::new(TestBackend::new(width, height))?;
    let frame = terminal.draw(|frame| draw(frame, &view))?;
    Ok(buffer_text(frame.buffer))
}

/// What `b`, `u` and `a` ask to do to the selected source, once confirmed.
enum Pending {
    Ban(String),
    Unban(String),
    Allow(String),
}

fn live(
    terminal: &mut DefaultTerminal,
    args: &TopArgs,
    pins: &PinDir,
    state_path: &Path,
    mut filter: SourceFilter,
) -> anyhow::Result<()> {
    let mut view = View::default();
    let mut pending: Option<Pending> = None;
    let mut before = Reading::take(pins, state_path, None)?;
    view.add_events(before.history_events());
    let mut next = Instant::now() + args.interval;
    loop {
        terminal.draw(|frame| draw(frame, &view))?;
        let wait = next.saturating_duration_since(Instant::now());
        if event::poll(wait)? {
            let Event::Key(key) = event::read()? else {
                continue;
            };
            if key.kind != KeyEventKind::Press {
                continue;
            }
            if let Some(action) = pending.take() {
                view.footer = Some(match key.code {
                    KeyCode::Char('y') => act(&action, pins),
                    _ => "cancelled".into(),
                });
                continue;
            }
            let selected = view.selected_source().map(str::to_string);
            match (key.code, selected) {
                (KeyCode::Char('q') | KeyCode::Esc, _) => return Ok(()),
                (KeyCode::Char('p'), _) => view.paused = !view.paused,
                // Applied from the next reading on.
                (KeyCode::Char('s'), _) => filter.sort = filter.sort.next(),
                (KeyCode::Char('f'), _) => filter.next_family(),
                (KeyCode::Down | KeyCode::Char('j'), _) => {
                    let last = view.snapshot.sources.len().saturating_sub(1);
                    view.selected = (view.selected + 1).min(last);
                }
                (KeyCode::Up | KeyCode::Char('k'), _) => {
                    view.selected = view.selected.saturating_sub(1);
                }
                (KeyCode::Char('b'), Some(addr)) => {
                    view.footer = Some(format!("ban {addr} permanently? y/n"));
                    pending = Some(Pending::Ban(addr));
                }
                (KeyCode::Char('u'), Some(addr)) => {
                    view.footer = Some(format!("unban {addr}? y/n"));
                    pending = Some(Pending::Unban(addr));
                }
                (KeyCode::Char('a'), Some(addr)) => {
                    view.footer = Some(format!("allowlist {addr}? y/n"));
                    pending = Some(Pending::Allow(addr));
                }
                (KeyCode::Char('b' | 'u' | 'a'), None) => {
                    view.footer = Some("no source selected".into());
                }
                _ => {}
            }
            continue;
        }
        next = Instant::now() + args.interval;
        // Paused: no reading, so the next snapshot covers the pause and loses no event.
        if view.paused {
            continue;
        }
        let after = Reading::take(pins, state_path, Some(&before))?;
        view.record(Snapshot::between(&before, &after, &filter), HISTORY);
        before = after;
    }
}

/// Runs the confirmed action through this binary's own command, so it gets the same checks
/// (the lock-out guard included) and the same store; returns the line to show.
fn act(action: &Pending, pins: &PinDir) -> String {
    let (verb, args): (&str, Vec<&str>) = match action {
        Pending::Ban(addr) => ("banned", vec!["ban", addr, "--reason", "blocker top"]),
        Pending::Unban(addr) => ("unbanned", vec!["unban", addr]),
        Pending::Allow(addr) => ("allowed", vec!["allow", addr, "--reason", "blocker top"]),
    };
    let output = std::env::current_exe()
        .context("finding the blocker binary")
        .and_then(|exe| {
            Command::new(exe)
                .arg("--pin-dir")
                .arg(&pins.path)
                .args(&args)
                .env("RUST_LOG", "warn")
                .output()
                .context("running blocker")
        });
    match output {
        Ok(output) if output.status.success() => format!("{verb} {}", args[1]),
        Ok(output) => String::from_utf8_lossy(&output.stderr)
            .lines()
            .last()
            .unwrap_or("failed")
            .to_string(),
        Err(err) => format!("{err:#}"),
    }
}

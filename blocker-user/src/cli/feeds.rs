//! `blocker feeds`: the configured block-list feeds with their last refresh, entries and
//! errors; `--refresh` fetches the ones that are due (all with `--force`) once.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use blocker::{
    config::Config,
    feeds::{self, status_path, Statuses},
    pins::PinDir,
    text::{escape, redacted_url},
};

/// The config file a package installs.
const DEFAULT_CONFIG: &str = "/etc/blocker/config.toml";

/// List the block-list feeds of the config (`[[feeds]]`) and how their last refresh went.
///
/// Example: blocker feeds --refresh
#[derive(clap::Args)]
pub struct FeedsArgs {
    /// The config file with the `[[feeds]]` (default /etc/blocker/config.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Fetch the feeds that are due now and ban what they list, before listing them.
    #[arg(long)]
    refresh: bool,
    /// With --refresh: fetch every feed, due or not.
    #[arg(long, requires = "refresh")]
    force: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(pins: &PinDir, state_path: &Path, args: FeedsArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None if Path::new(DEFAULT_CONFIG).exists() => Config::load(Path::new(DEFAULT_CONFIG))?,
        None => Config::default(),
    };
    if args.refresh {
        blocker::pins::require_root()?;
        pins.require_loaded()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let refreshed =
            runtime.block_on(feeds::refresh(pins, state_path, &config.feeds, args.force))?;
        for feed in &refreshed {
            match &feed.error {
                Some(error) => tracing::warn!("{}: {error}; kept the last good list", feed.url),
                None => tracing::info!(
                    "{}: {} banned{}, {} lifted",
                    feed.url,
                    feed.banned,
                    if feed.not_modified {
                        " (not modified)"
                    } else {
                        ""
                    },
                    feed.lifted
                ),
            }
        }
    }
    let statuses = Statuses::load(&status_path(state_path))?;
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        write_json(&config, &statuses, &mut out)
    } else {
        write_table(&config, &statuses, &mut out)
    };
    match written {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn write_json(
    config: &Config,
    statuses: &Statuses,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    let rows: Vec<serde_json::Value> = config
        .feeds
        .iter()
        .map(|feed| {
            let status = statuses.0.get(&feed.url).cloned().unwrap_or_default();
            serde_json::json!({
                "url": redacted_url(&feed.url),
                "format": feed.format,
                "every": humantime::format_duration(feed.every).to_string(),
                "ban_for": humantime::format_duration(feed.ban_for).to_string(),
                "last_attempt": status.last_attempt,
                "last_success": status.last_success,
                "entries": status.prefixes.len(),
                "error": status.error,
            })
        })
        .collect();
    writeln!(out, "{}", serde_json::Value::Array(rows))
}

fn write_table(
    config: &Config,
    statuses: &Statuses,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    if config.feeds.is_empty() {
        return writeln!(out, "no feeds: add [[feeds]] to the config");
    }
    writeln!(
        out,
        "{:<40} {:<10} {:>6} {:>8} {:<25} {:>8}  error",
        "url", "format", "every", "ban_for", "last refresh", "entries"
    )?;
    for feed in &config.feeds {
        let status = statuses.0.get(&feed.url).cloned().unwrap_or_default();
        let last = status
            .last_success
            .map_or_else(|| "never".to_string(), |at| at.to_string());
        writeln!(
            out,
            "{:<40} {:<10} {:>6} {:>8} {:<25} {:>8}  {}",
            escape(&redacted_url(&feed.url)),
            feed.format.to_string(),
            humantime::format_duration(feed.every).to_string(),
            humantime::format_duration(feed.ban_for).to_string(),
            last,
            status.prefixes.len(),
            status.error.as_deref().map(escape).unwrap_or_default()
        )?;
    }
    Ok(())
}

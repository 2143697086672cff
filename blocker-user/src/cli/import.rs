//! `blocker import`: a list in one of the formats of [`blocker::formats`] banned, with a
//! summary of what was read, merged and normalized.

use std::{
    io::IsTerminal as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use blocker::{
    clock::{expiry_after, parse_duration},
    formats::{self, Format},
    pins::{require_root, PinDir},
    state::Origin,
    store::Store,
};
use indicatif::{ProgressBar, ProgressStyle};
use ipnet::IpNet;
use jiff::{SignedDuration, Timestamp};
use tracing::{info, warn};

/// Ban every address or range in a list (`-` for stdin), in blocker's own format or one that
/// other tools write.
///
/// Example: blocker import .htaccess --format auto --temporary-for 90d
#[derive(clap::Args)]
pub struct ImportArgs {
    file: PathBuf,
    /// The list's format; `auto` tells it from the content and says which it found.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    format: Format,
    /// How long entries without their own expiry are banned for (default: permanently).
    #[arg(long = "for", value_name = "DURATION")]
    duration: Option<String>,
    /// How long the entries of an .htaccess `# TEMPORARY` section are banned for, from now.
    #[arg(long, value_name = "DURATION", default_value = "365d")]
    temporary_for: String,
    /// Also put the list's allow entries (`allow from`, `allow ADDR;`) on the allowlist.
    #[arg(long)]
    with_allow: bool,
    /// Import even lines that would lock you out (see `ban --force`).
    #[arg(long)]
    force: bool,
}

pub fn run(pins: &PinDir, state_path: &Path, args: ImportArgs) -> anyhow::Result<()> {
    let duration = args.duration.as_deref().map(parse_duration).transpose()?;
    let temporary_for = SignedDuration::try_from(parse_duration(&args.temporary_for)?)
        .context("--temporary-for is too long")?;
    require_root()?;
    let now = Timestamp::now();
    let default_expiry = expiry_after(now, duration)?;
    let options = formats::Options { now, temporary_for };
    let added_allows = if args.with_allow {
        anyhow::ensure!(
            args.file != Path::new("-"),
            "--with-allow reads the list twice: give a file, not stdin"
        );
        let allowed = formats::allow_entries(&args.file, args.format, options)?;
        add_allows(pins, state_path, &allowed)?
    } else {
        Vec::new()
    };
    let progress = progress_bar();
    let imported = blocker::import::import(
        pins,
        state_path,
        &formats::List {
            path: &args.file,
            format: args.format,
            options,
        },
        &Origin::local("import"),
        default_expiry,
        args.force,
        || progress.inc(1),
    );
    progress.finish_and_clear();
    let report = match imported {
        Ok(report) => report,
        Err(err) => {
            // The allowlist entries were added for this import: it failed, so they go too.
            if !added_allows.is_empty() {
                let mut store = Store::open_scoped(pins, state_path, &added_allows)?;
                store.disallow(&added_allows);
                store.commit(|| {})?;
            }
            return Err(err.into());
        }
    };
    if let Some(because) = &report.detected {
        info!("{}: read as {} ({because})", report.source, report.format);
    }
    if report.expired > 0 {
        warn!(
            "{}: skipped {} entries whose expiry time has passed",
            report.source, report.expired
        );
    }
    if report.undated > 0 {
        warn!(
            "{}: {} entries have a date that cannot be their creation date (in the future, or \
             no calendar day): created at the import's time, the date kept in the reason",
            report.source, report.undated
        );
    }
    if report.allow_entries > 0 && !args.with_allow {
        warn!(
            "{}: skipped {} allow entries: --with-allow puts them on the allowlist",
            report.source, report.allow_entries
        );
    }
    info!(
        "imported {} prefixes from {} ({} format): {} entries, {} duplicates merged, {} inside \
         a wider entry, {} with host bits cleared, {} allowlisted",
        report.imported,
        report.source,
        report.format,
        report.entries,
        report.duplicates,
        report.covered,
        report.normalized,
        added_allows.len(),
    );
    Ok(())
}

/// Puts `nets` on the allowlist; returns those that were not on it already.
fn add_allows(pins: &PinDir, state_path: &Path, nets: &[IpNet]) -> anyhow::Result<Vec<IpNet>> {
    if nets.is_empty() {
        return Ok(Vec::new());
    }
    let mut store = Store::open_scoped(pins, state_path, nets)?;
    let fresh: Vec<IpNet> = nets
        .iter()
        .filter(|net| !store.state.allow.contains_key(net))
        .copied()
        .collect();
    store.allow(nets, Some("imported"));
    store.commit(|| {})?;
    Ok(fresh)
}

fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {pos} lines ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar
}

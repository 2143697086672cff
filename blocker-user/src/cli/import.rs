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
};
use indicatif::{ProgressBar, ProgressStyle};
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
    // Read first (the whole list, so a bad line anywhere stops it here): the lock-out check
    // of the bans counts them.
    let allowed = if args.with_allow {
        anyhow::ensure!(
            args.file != Path::new("-"),
            "--with-allow reads the list twice: give a file, not stdin"
        );
        formats::allow_entries(&args.file, args.format, options)?
    } else {
        Vec::new()
    };
    let progress = progress_bar();
    let origin = Origin::local("import");
    // The allowlist entries are written with the bans, in one transaction: a refused list
    // changes neither.
    let imported = blocker::import::import(
        pins,
        state_path,
        &formats::List {
            path: &args.file,
            format: args.format,
            options,
        },
        &blocker::import::Options {
            origin: &origin,
            default_expiry,
            force: args.force,
            also_protect: &[],
            allow: &allowed,
            replace: blocker::state::Replace::Any,
        },
        || progress.inc(1),
    );
    progress.finish_and_clear();
    let report = imported?;
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
        report.allowlisted,
    );
    Ok(())
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

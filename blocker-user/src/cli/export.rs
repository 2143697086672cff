//! `blocker export`: the bans in force, in blocker's format or another tool's.

use std::{io::Write as _, path::Path};

use blocker::{
    formats::export::{render, ExportFormat},
    state::State,
};
use jiff::Timestamp;

/// Print the bans in force: `--format plain` (the default) is what `import` reads back whole.
///
/// Example: blocker export --format nginx > /etc/nginx/blocked.conf
#[derive(clap::Args)]
pub struct ExportArgs {
    #[arg(long, value_enum, default_value_t = ExportFormat::Plain)]
    format: ExportFormat,
}

pub fn run(state_path: &Path, args: ExportArgs) -> anyhow::Result<()> {
    let state = State::load(state_path)?;
    let now = Timestamp::now();
    let live = state.bans.iter().filter(|(_, e)| !e.is_expired(now));
    let text = render(args.format, live, now);
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

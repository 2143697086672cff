//! The jails and fleet parts of `blocker status`: asked from the running daemon over its Unix
//! socket (the counts live in its memory); without a daemon there is nothing to show.

use std::path::Path;

use blocker::{daemon::JailStatus, fleet::LinkStatus, text::escape};

/// Each jail's status and the fleet link, if a daemon answers on `socket`.
pub fn fetch(socket: &Path) -> Option<(Vec<JailStatus>, Option<LinkStatus>)> {
    if !socket.exists() {
        return None;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async {
        let jails = blocker::daemon::jails_via_socket(socket).await.ok()?;
        let fleet = blocker::daemon::fleet_via_socket(socket)
            .await
            .ok()
            .flatten();
        Some((jails, fleet))
    })
}

pub fn write_table(jails: &[JailStatus], out: &mut impl std::io::Write) -> std::io::Result<()> {
    if jails.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "\n{:<16} {:<14} {:>10} {:>10} {:>6} {:>9} {:>9}",
        "jail", "kind", "lines", "matches", "bans", "sources", "failures"
    )?;
    for jail in jails {
        writeln!(
            out,
            "{:<16} {:<14} {:>10} {:>10} {:>6} {:>9} {:>9}",
            escape(&jail.name),
            escape(&jail.kind),
            jail.lines,
            jail.matches,
            jail.bans,
            jail.sources_in_window,
            jail.failures_in_window
        )?;
        for file in &jail.files {
            let state = if file.exists { "" } else { " (missing)" };
            writeln!(
                out,
                "  {} at byte {}{state}",
                escape(&file.path),
                file.offset
            )?;
        }
        if let Some(cursor) = &jail.journal_cursor {
            writeln!(out, "  journal at {}", escape(cursor))?;
        }
    }
    Ok(())
}

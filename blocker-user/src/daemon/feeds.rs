//! The daemon's feed refresher: every half minute, the `[[feeds]]` of the config in force that
//! are due are fetched and applied (see [`crate::feeds`]); a reload's new feeds count at once.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::{config::Config, feeds, pins::PinDir};

/// How often the refresher looks for due feeds.
const TICK: Duration = Duration::from_secs(30);

pub async fn refresh_loop(pins: PinDir, state_path: PathBuf, config: Arc<Mutex<Config>>) {
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let feeds = config.lock().map(|c| c.feeds.clone()).unwrap_or_default();
        if feeds.is_empty() {
            continue;
        }
        match feeds::refresh(&pins, &state_path, &feeds, false).await {
            Ok(refreshed) => {
                for feed in refreshed.iter().filter(|feed| feed.error.is_none()) {
                    tracing::info!(
                        "feed {}: {} banned, {} lifted",
                        feed.url,
                        feed.banned,
                        feed.lifted
                    );
                }
            }
            Err(err) => tracing::warn!("refreshing feeds: {err}"),
        }
    }
}

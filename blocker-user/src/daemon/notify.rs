//! Notifications: every event goes to the webhook (with retries) and the command. Deliveries
//! run side by side, a few at a time, and each command is killed with its process group
//! after [`COMMAND_TIMEOUT`], so one that hangs cannot hold back the others.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use nix::{
    sys::signal::{killpg, Signal},
    unistd::Pid,
};
use tokio::sync::{mpsc, Semaphore};
use tracing::warn;

use crate::{
    config::{Config, NotifyConfig},
    events::EventRecord,
};

/// Events waiting for the webhook or command; more are dropped with a warning.
pub const NOTIFY_QUEUE: usize = 1024;
/// How long a notify command may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries in flight at most.
const PARALLEL: usize = 8;

/// Delivers events until the channel closes.
pub async fn notifier(config: Arc<Mutex<Config>>, mut events: mpsc::Receiver<EventRecord>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .ok();
    let slots = Arc::new(Semaphore::new(PARALLEL));
    while let Some(event) = events.recv().await {
        let notify = config.lock().map(|c| c.notify.clone()).unwrap_or_default();
        if notify.webhook.is_none() && notify.command.is_none() {
            continue;
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let client = client.clone();
        tokio::spawn(async move {
            let _slot = slot;
            deliver(&notify, client.as_ref(), &event).await;
        });
    }
}

async fn deliver(notify: &NotifyConfig, client: Option<&reqwest::Client>, event: &EventRecord) {
    if let Some(command) = &notify.command {
        run_command(command, event).await;
    }
    if let (Some(url), Some(client)) = (&notify.webhook, client) {
        let shown = crate::text::redacted_url(url);
        let mut delay = Duration::from_millis(500);
        for attempt in 1..=4 {
            match client.post(url).json(event).send().await {
                Ok(response) if response.status().is_success() => break,
                Ok(response) => warn!(
                    "webhook {shown}: HTTP {} (attempt {attempt})",
                    response.status()
                ),
                Err(err) => warn!("webhook {shown}: {} (attempt {attempt})", err.without_url()),
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
}

async fn run_command(command: &str, event: &EventRecord) {
    let json = serde_json::to_string(event).unwrap_or_default();
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("BLOCKER_EVENT", json)
        .env("BLOCKER_EVENT_KIND", event.event)
        .env("BLOCKER_ADDR", &event.addr)
        .stdin(std::process::Stdio::null())
        // Its own process group, so a timeout kills what it started too.
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(err) => {
            warn!("notify command: {err}");
            return;
        }
    };
    match tokio::time::timeout(COMMAND_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) if status.success() => {}
        Ok(Ok(status)) => warn!("notify command exited with {status}"),
        Ok(Err(err)) => warn!("notify command: {err}"),
        Err(_) => {
            warn!(
                "notify command timed out after {COMMAND_TIMEOUT:?} for {} {}: killed",
                event.event, event.addr
            );
            if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.kill().await;
        }
    }
}

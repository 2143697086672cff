//! `blocker daemon`: takes offense reports from applications over HTTP (TCP and a Unix
//! socket), serves the ban list (JSON and Atom) and Prometheus metrics, removes expired
//! entries, and logs and forwards events. The kernel program and the CLI work without it: all
//! it knows lives in the pinned maps and the state file.
//!
//! Work that touches files or maps never runs on the tasks that serve HTTP: the ring buffer and
//! the blacklist scan have their own thread, offenses are written by one task in batches,
//! everything else goes through `spawn_blocking`.

mod api;
pub(crate) mod auth;
mod client;
mod expiry;
mod feed;
mod feeds;
mod jails;
mod metrics;
mod notify;
mod offenses;
mod server;
mod write_timeout;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

pub use api::{OffenseAnswer, OffenseReport};
pub use client::{fleet_via_socket, jails_via_socket, report_via_socket};
pub use jails::JailStatus;
pub use offenses::record_offense;

use crate::{config::Config, events, events::EventRecord, pins::PinDir, Result};

/// What the daemon serves from.
#[derive(Clone)]
pub struct Daemon {
    pub pins: PinDir,
    pub state_path: PathBuf,
    config: Arc<Mutex<Config>>,
    offenses: Arc<Mutex<BTreeMap<String, u64>>>,
    state_health: expiry::StateHealth,
    jails: Arc<Mutex<Option<jails::Jails>>>,
    /// The fleet link, when the config names NATS servers.
    fleet: Option<crate::fleet::SharedLink>,
    /// The last `/metrics` text, reused for a second.
    scrapes: metrics::Scrapes,
}

/// Where the daemon listens.
pub struct Listen {
    pub tcp: SocketAddr,
    pub socket: PathBuf,
    /// The API token; `api.token` beside the state file when `None`.
    pub token_file: Option<PathBuf>,
}

impl Daemon {
    pub fn new(pins: PinDir, state_path: PathBuf, config: Config) -> Self {
        Self {
            pins,
            state_path,
            config: Arc::new(Mutex::new(config)),
            offenses: Arc::default(),
            state_health: expiry::StateHealth::default(),
            jails: Arc::default(),
            fleet: None,
            scrapes: metrics::Scrapes::default(),
        }
    }

    fn fleet_status(&self) -> Option<crate::fleet::LinkStatus> {
        self.fleet.as_ref().map(crate::fleet::SharedLink::status)
    }

    fn config(&self) -> Config {
        self.config.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn offense_counts(&self) -> BTreeMap<String, u64> {
        self.offenses.lock().map(|o| o.clone()).unwrap_or_default()
    }

    fn jail_status(&self) -> Vec<JailStatus> {
        self.jails
            .lock()
            .ok()
            .and_then(|jails| jails.as_ref().map(jails::Jails::status))
            .unwrap_or_default()
    }

    /// Starts the configured jails, after stopping the ones running (they save their
    /// positions first, so the new ones go on where they stopped).
    async fn restart_jails(&self, config: &Config) {
        let running = self.jails.lock().ok().and_then(|mut jails| jails.take());
        let (pins, state_path, config) =
            (self.pins.clone(), self.state_path.clone(), config.clone());
        let started = tokio::task::spawn_blocking(move || {
            if let Some(running) = running {
                running.stop();
            }
            (!config.jails.is_empty()).then(|| jails::Jails::start(&pins, &state_path, &config))
        })
        .await;
        match started {
            Ok(started) => {
                if let Ok(mut jails) = self.jails.lock() {
                    *jails = started;
                }
            }
            Err(err) => error!("starting the jails: {err}"),
        }
    }

    /// Stops the jails, saving their positions.
    async fn stop_jails(&self) {
        let running = self.jails.lock().ok().and_then(|mut jails| jails.take());
        if let Some(running) = running {
            let _ = tokio::task::spawn_blocking(move || running.stop()).await;
        }
    }

    fn count_offense(&self, label: String) {
        if let Ok(mut offenses) = self.offenses.lock() {
            *offenses.entry(label).or_default() += 1;
        }
    }

    /// Serves until `stop` completes. `reload` yields a new config on SIGHUP.
    pub async fn serve(
        mut self,
        listen: Listen,
        mut reload: mpsc::Receiver<Config>,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        use anyhow::Context as _;
        // The daemon writes many small transactions: it keeps its database connections.
        crate::state::keep_connections();
        let token_path = listen
            .token_file
            .clone()
            .unwrap_or_else(|| auth::default_token_path(&self.state_path));
        let token = auth::load_or_create_token(&token_path)?;
        let tcp = tokio::net::TcpListener::bind(listen.tcp)
            .await
            .with_context(|| format!("listening on {}", listen.tcp))?;
        let (unix, _own_socket) = server::bind_unix(&listen.socket)?;
        info!(
            "listening on http://{} and {}",
            listen.tcp,
            listen.socket.display()
        );
        if !listen.tcp.ip().is_loopback() {
            warn!(
                "listening on {}, beyond loopback: anyone who can reach it can try the API. \
                 Offenses and the ban list need the token in {}; /metrics and /healthz are \
                 open to all. Firewall the port, or listen on 127.0.0.1 unless remote \
                 clients need it",
                listen.tcp,
                token_path.display()
            );
        }

        // Writers change only the prefixes they touch: bring every map entry to the database
        // once, healing what a writer killed between its commit and the maps left.
        let (pins, state_path) = (self.pins.clone(), self.state_path.clone());
        let reconciled = tokio::task::spawn_blocking(move || {
            let mut store = crate::store::Store::open(&pins, &state_path)?;
            store.origin = crate::state::Origin::local("daemon");
            let reconciled = store.commit(|| {});
            // The whole state was in memory for this once: give it back to the system, so
            // the daemon's footprint does not keep the size of the state.
            // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
            unsafe { nix::libc::malloc_trim(0) };
            reconciled
        })
        .await;
        match reconciled {
            Ok(Ok(())) => {}
            Ok(Err(err)) => error!("reconciling the maps with the state: {err}"),
            Err(err) => error!("reconciling the maps with the state: {err}"),
        }
        let fleet_config = self.config().fleet;
        let mut blacklistings = None;
        if fleet_config.enabled() {
            let link = crate::fleet::SharedLink::new(
                fleet_config.node_name(),
                fleet_config.servers.clone(),
            );
            self.fleet = Some(link.clone());
            let (pins, state_path) = (self.pins.clone(), self.state_path.clone());
            let shared = fleet_config
                .share
                .iter()
                .any(|source| source == crate::fleet::blacklist::SOURCE);
            let queued = shared.then(|| {
                let (offer, queued) = crate::fleet::blacklist::queue();
                blacklistings = Some(offer);
                queued
            });
            tokio::spawn(async move {
                let run = crate::fleet::run(fleet_config, pins, state_path, link, queued);
                if let Err(err) = run.await {
                    error!("fleet: {err:#}; this node works alone");
                }
            });
        }
        let (notify_tx, notify_rx) = mpsc::channel::<EventRecord>(notify::NOTIFY_QUEUE);
        tokio::spawn(notify::notifier(self.config.clone(), notify_rx));
        // Before the API answers, so /v1/jails lists every configured jail from the start.
        self.restart_jails(&self.config()).await;
        let api = api::Api {
            daemon: self.clone(),
            offenses: offenses::OffenseQueue::start(self.clone()),
        };
        let limits = server::limits();
        tokio::spawn(server::serve(
            tcp,
            format!("http://{}", listen.tcp),
            api::router(api.clone(), Some(auth::Guard::new(token, listen.tcp))),
            limits,
        ));
        tokio::spawn(server::serve(
            unix,
            listen.socket.display().to_string(),
            api::router(api, None),
            limits,
        ));
        let watcher = self.watch_events(notify_tx.clone(), blacklistings);
        tokio::spawn(feeds::refresh_loop(
            self.pins.clone(),
            self.state_path.clone(),
            self.config.clone(),
        ));
        tokio::spawn(expiry::expire_loop(
            self.pins.clone(),
            self.state_path.clone(),
            self.state_health.clone(),
            notify_tx,
        ));
        let reloads = async {
            while let Some(config) = reload.recv().await {
                self.reload(config).await;
            }
        };
        let outcome = tokio::select! {
            result = watcher => result.context("following events"),
            () = reloads => Ok(()),
            () = stop => Ok(()),
        };
        self.stop_jails().await;
        outcome
    }

    /// Applies a reloaded config: rules in the file replace the rules in force, and the reject
    /// limits are rewritten, as at load.
    async fn reload(&self, config: Config) {
        let (pins, state_path) = (self.pins.clone(), self.state_path.clone());
        let (rules, rejects) = (config.rules.clone(), config.rejects.clone());
        let applied = api::blocking(move || -> Result<()> {
            let _lock = pins.lock()?;
            crate::dynamic::write_reject_limits(&pins, &rejects)?;
            match rules {
                Some(rules) => {
                    crate::store::restore(&pins, &state_path, false, Some(&rules)).map(drop)
                }
                None => Ok(()),
            }
        })
        .await;
        match applied {
            Ok(()) => info!("rules reloaded, reject limits rewritten"),
            Err(err) => warn!("rules and reject limits not reloaded: {}", err.message()),
        }
        let jails_changed = self.config().jails != config.jails;
        if jails_changed {
            self.restart_jails(&config).await;
            info!("jails restarted");
        }
        if let Ok(mut current) = self.config.lock() {
            *current = config;
        }
        info!("configuration reloaded");
    }

    /// Follows the ring buffer and scans the blacklist (deleting expired entries) on a thread
    /// of its own, so neither ever delays a request. An error (say, out of descriptors) is
    /// logged and the watch starts again; the returned receiver ends only if the thread dies.
    fn watch_events(
        &self,
        notify: mpsc::Sender<EventRecord>,
        fleet: Option<crate::fleet::blacklist::Blacklistings>,
    ) -> impl std::future::Future<Output = anyhow::Result<()>> {
        let (pins, state_path) = (self.pins.clone(), self.state_path.clone());
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("blocker-events".into())
            .spawn(move || {
                let _done = done_tx;
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        error!("starting the event thread: {err}");
                        return;
                    }
                };
                loop {
                    let followed =
                        runtime.block_on(events::follow(&pins, &state_path, true, |event| {
                            info!("{event}");
                            if let Some(fleet) = &fleet {
                                fleet.offer(event);
                            }
                            if notify.try_send(event.clone()).is_err() {
                                warn!(
                                    "notification queue full: dropped the event for {}",
                                    event.addr
                                );
                            }
                        }));
                    if let Err(err) = followed {
                        error!("following events: {err:#}; starting again in a second");
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            });
        async move {
            spawned.map_err(|err| anyhow::anyhow!("starting the event thread: {err}"))?;
            let _ = done_rx.await;
            anyhow::bail!("the event thread stopped")
        }
    }
}

//! `blocker daemon`: takes offense reports from applications over HTTP (TCP and a Unix
//! socket), serves the ban list (JSON and Atom) and Prometheus metrics, removes expired
//! entries, and logs and forwards events. The kernel program and the CLI work without it: all
//! it knows lives in the pinned maps and the state file.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    extract::{DefaultBodyLimit, State as AxumState},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use ipnet::IpNet;
use jiff::Timestamp;
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{
    addr::parse_net,
    clock::Now,
    config::Config,
    dynamic,
    events::{self, EventRecord},
    offense::{Level, Severity, Verdict},
    pins::PinDir,
    state::{Listed, State},
    status,
    store::Store,
    Error, Result,
};

/// Largest request body accepted.
const MAX_BODY: usize = 16 * 1024;
/// Events waiting for the webhook or command; more are dropped with a warning.
const NOTIFY_QUEUE: usize = 1024;

/// What the daemon serves from.
#[derive(Clone)]
pub struct Daemon {
    pub pins: PinDir,
    pub state_path: PathBuf,
    config: Arc<Mutex<Config>>,
    offenses: Arc<Mutex<BTreeMap<String, u64>>>,
}

/// An offense report: `POST /v1/offenses`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OffenseReport {
    pub addr: String,
    pub severity: Severity,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub key: Option<String>,
}

/// The answer to an offense report.
#[derive(Debug, Serialize, Deserialize)]
pub struct OffenseAnswer {
    /// The prefix the source is scored as.
    pub prefix: String,
    pub score: f64,
    pub banned: bool,
    pub expires_at: Option<Timestamp>,
}

/// A 4xx with a JSON body.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        let status = if err.is_bad_input() {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        ApiError(status, err.to_string())
    }
}

fn severity_label(severity: Severity) -> String {
    match severity {
        Severity::Named(level) => level.name().to_string(),
        Severity::Weight(_) => "weighted".to_string(),
    }
}

/// Scores one offense and bans the source when it crosses the threshold. Shared by the HTTP
/// API and `blocker report` without a daemon.
pub fn record_offense(
    pins: &PinDir,
    state_path: &Path,
    config: &Config,
    report: &OffenseReport,
) -> Result<OffenseAnswer> {
    let parsed = parse_net(&report.addr)?;
    if report.reason.len() > 1024 || report.key.as_ref().is_some_and(|k| k.len() > 256) {
        return Err(Error::InvalidOffense("reason or key too long".into()));
    }
    let mut store = Store::open(pins, state_path)?;
    let now = store.now.wall;
    let verdict = store
        .state
        .offenses
        .offend(
            &config.offenses,
            parsed.net,
            report.severity,
            &report.reason,
            report.key.as_deref(),
            now,
        )
        .map_err(Error::InvalidOffense)?;
    store.state.offenses.forget(&config.offenses, now);
    let answer = match verdict {
        Verdict::Scored { prefix, score } => OffenseAnswer {
            prefix: prefix.to_string(),
            score,
            banned: false,
            expires_at: None,
        },
        Verdict::Ban {
            prefix,
            score,
            duration,
            reason,
        } => {
            let expires_at = jiff::SignedDuration::try_from(duration)
                .ok()
                .and_then(|d| now.checked_add(d).ok());
            store.ban_at_least(prefix, expires_at, &reason);
            store.count_issued("offense", 1);
            let until = expires_at.map_or("further notice".into(), |t| format!("{t:.0}"));
            info!("banned {prefix} until {until}: {reason}");
            OffenseAnswer {
                prefix: prefix.to_string(),
                score,
                banned: true,
                expires_at,
            }
        }
    };
    store.commit(|| {})?;
    Ok(answer)
}

async fn post_offense(
    AxumState(daemon): AxumState<Daemon>,
    body: axum::body::Bytes,
) -> Result<Json<OffenseAnswer>, ApiError> {
    let report: OffenseReport = serde_json::from_slice(&body)
        .map_err(|err| ApiError(StatusCode::BAD_REQUEST, format!("invalid offense: {err}")))?;
    let config = daemon.config();
    let label = severity_label(report.severity);
    let pins = daemon.pins.clone();
    let state_path = daemon.state_path.clone();
    let answer =
        tokio::task::spawn_blocking(move || record_offense(&pins, &state_path, &config, &report))
            .await
            .map_err(|err| ApiError(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))??;
    if let Ok(mut offenses) = daemon.offenses.lock() {
        *offenses.entry(label).or_default() += 1;
    }
    Ok(Json(answer))
}

/// The bans in force, with the fields of `blocker list --json`.
async fn get_bans(AxumState(daemon): AxumState<Daemon>) -> Result<Json<Vec<Listed>>, ApiError> {
    let state = State::load(&daemon.state_path)?;
    Ok(Json(state.listed_bans(Timestamp::now())))
}

/// The most recent bans as an Atom feed (seed 004 exports its block list as a feed).
async fn get_bans_atom(AxumState(daemon): AxumState<Daemon>) -> Result<Response, ApiError> {
    use atom_syndication::{Entry, Feed, Text};
    let state = State::load(&daemon.state_path)?;
    let now = Timestamp::now();
    let mut rows = state.listed_bans(now);
    rows.sort_by_key(|row| std::cmp::Reverse(row.created_at));
    let entries: Vec<Entry> = rows
        .iter()
        .take(50)
        .map(|row| {
            let mut entry = Entry::default();
            entry.set_id(format!(
                "urn:blocker:ban:{}:{}",
                row.addr,
                row.created_at.map_or(0, |t| t.as_second())
            ));
            entry.set_title(Text::plain(format!("banned {} ({})", row.addr, row.kind)));
            entry.set_updated(chrono_like(row.created_at.unwrap_or(now)));
            let summary = match (&row.reason, row.expires_at) {
                (Some(reason), Some(until)) => format!("{reason}; until {until:.0}"),
                (Some(reason), None) => reason.clone(),
                (None, Some(until)) => format!("until {until:.0}"),
                (None, None) => "permanent".into(),
            };
            entry.set_summary(Some(Text::plain(summary)));
            entry
        })
        .collect();
    let mut feed = Feed::default();
    feed.set_id("urn:blocker:bans");
    feed.set_title(Text::plain("blocker: recent bans"));
    feed.set_updated(chrono_like(
        rows.first().and_then(|r| r.created_at).unwrap_or(now),
    ));
    feed.set_entries(entries);
    Ok((
        [(header::CONTENT_TYPE, "application/atom+xml")],
        feed.to_string(),
    )
        .into_response())
}

/// Atom wants a `chrono::DateTime<FixedOffset>`; go through RFC 3339 text.
fn chrono_like(t: Timestamp) -> atom_syndication::FixedDateTime {
    atom_syndication::FixedDateTime::parse_from_rfc3339(&format!("{t:.0}")).unwrap_or_default()
}

/// Prometheus text exposition, built at scrape time from the kernel's per-CPU counters (summed
/// here, nothing on the packet path) and the daemon's own.
async fn get_metrics(
    AxumState(daemon): AxumState<Daemon>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let offenses = daemon
        .offenses
        .lock()
        .map(|o| o.clone())
        .unwrap_or_default();
    let pins = daemon.pins.clone();
    let state_path = daemon.state_path.clone();
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    let text = tokio::task::spawn_blocking(move || metrics_text(&pins, &state_path, &offenses))
        .await
        .map_err(|err| ApiError(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))??;
    let (content_type, body) = if openmetrics {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            text,
        )
    } else {
        (
            "text/plain; version=0.0.4; charset=utf-8",
            prometheus_text(&text),
        )
    };
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// OpenMetrics text as the classic Prometheus text format (0.0.4), which every scraper and
/// `promtool check metrics` read: counter families named with their `_total` samples, and no
/// `# EOF`.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE ", "# UNIT "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn metrics_text(
    pins: &PinDir,
    state_path: &Path,
    offenses: &BTreeMap<String, u64>,
) -> Result<String> {
    let status = status::read(pins)?;
    let state = State::load(state_path)?;
    let now = Now::read();
    let mut registry = Registry::with_prefix("blocker");

    let packets = Family::<Labels, Counter>::default();
    let bytes = Family::<Labels, Counter>::default();
    for row in &status.counters {
        let l = labels(&[("action", row.action), ("reason", row.reason)]);
        packets.get_or_create(&l).inc_by(row.packets);
        bytes.get_or_create(&l).inc_by(row.bytes);
    }
    registry.register(
        "packets",
        "Packets seen by the XDP program, by verdict and reason",
        packets,
    );
    registry.register(
        "bytes",
        "Bytes seen by the XDP program, by verdict and reason",
        bytes,
    );

    let rule_events = Family::<Labels, Counter>::default();
    let rule_blacklisted = Family::<Labels, Counter>::default();
    let stats = dynamic::rule_stats(pins)?;
    let mut rule_bans = 0;
    for placed in state.rules.iter().flat_map(|table| &table.rules) {
        let counts = stats.get(placed.slot as usize).copied().unwrap_or_default();
        let l = labels(&[("rule", &placed.spec.name)]);
        rule_events.get_or_create(&l).inc_by(counts.events);
        rule_blacklisted
            .get_or_create(&l)
            .inc_by(counts.blacklisted);
        rule_bans += counts.blacklisted;
    }
    registry.register("rule_events", "Events counted by each rule", rule_events);
    registry.register(
        "rule_blacklisted",
        "Sources each rule put on the dynamic blacklist",
        rule_blacklisted,
    );

    let bans = Family::<Labels, Gauge>::default();
    let mut listed = state.listed_bans(now.wall);
    listed.extend(state.listed_allow());
    listed.extend(dynamic::blacklist(pins, None, &now)?);
    for kind in ["permanent", "temporary", "dynamic", "allow"] {
        let count = listed.iter().filter(|entry| entry.kind == kind).count();
        bans.get_or_create(&labels(&[("kind", kind)]))
            .set(count as i64);
    }
    registry.register("bans", "Entries in force, by kind", bans);

    let entries = Family::<Labels, Gauge>::default();
    let capacity = Family::<Labels, Gauge>::default();
    for map in &status.maps {
        let l = labels(&[("map", map.name)]);
        entries.get_or_create(&l).set(map.entries as i64);
        capacity.get_or_create(&l).set(i64::from(map.capacity));
    }
    registry.register("map_entries", "Entries in each kernel map", entries);
    registry.register("map_capacity", "Capacity of each kernel map", capacity);

    let offense_counter = Family::<Labels, Counter>::default();
    for level in [Level::Minor, Level::Major, Level::Critical] {
        // Every severity is exported, at 0 until reported.
        let _ = offense_counter.get_or_create(&labels(&[("severity", level.name())]));
    }
    for (severity, count) in offenses {
        offense_counter
            .get_or_create(&labels(&[("severity", severity)]))
            .inc_by(*count);
    }
    registry.register(
        "offenses",
        "Offenses reported to this daemon, by severity",
        offense_counter,
    );

    let issued = Family::<Labels, Counter>::default();
    for source in ["cli", "import", "offense", "log"] {
        let count = state.issued.get(source).copied().unwrap_or(0);
        issued
            .get_or_create(&labels(&[("source", source)]))
            .inc_by(count);
    }
    issued
        .get_or_create(&labels(&[("source", "rule")]))
        .inc_by(rule_bans);
    registry.register(
        "bans_issued",
        "Bans issued, by where they came from",
        issued,
    );

    let build = Family::<Labels, Gauge>::default();
    build
        .get_or_create(&labels(&[("version", env!("CARGO_PKG_VERSION"))]))
        .set(1);
    registry.register("build_info", "Build information", build);

    let mut text = String::new();
    encode(&mut text, &registry).map_err(|err| Error::Io {
        context: "encoding metrics".into(),
        source: std::io::Error::other(err.to_string()),
    })?;
    Ok(text)
}

impl Daemon {
    pub fn new(pins: PinDir, state_path: PathBuf, config: Config) -> Self {
        Self {
            pins,
            state_path,
            config: Arc::new(Mutex::new(config)),
            offenses: Arc::default(),
        }
    }

    fn config(&self) -> Config {
        self.config.lock().map(|c| c.clone()).unwrap_or_default()
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/offenses", post(post_offense))
            .route("/v1/bans", get(get_bans))
            .route("/v1/bans.atom", get(get_bans_atom))
            .route("/metrics", get(get_metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(self.clone())
    }

    /// Serves until `stop` completes. `reload` yields a new config on SIGHUP.
    pub async fn serve(
        self,
        listen: SocketAddr,
        socket: &Path,
        mut reload: mpsc::Receiver<Config>,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let tcp = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let _ = std::fs::remove_file(socket);
        let unix = tokio::net::UnixListener::bind(socket)
            .with_context(|| format!("listening on {}", socket.display()))?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))
            .with_context(|| format!("setting the mode of {}", socket.display()))?;
        info!("listening on http://{listen} and {}", socket.display());

        let (notify_tx, notify_rx) = mpsc::channel::<EventRecord>(NOTIFY_QUEUE);
        tokio::spawn(notifier(self.config.clone(), notify_rx));
        let app = self.router();
        let tcp_server = axum::serve(tcp, app.clone());
        let unix_server = axum::serve(unix, app);
        // The daemon's scan also deletes expired dynamic entries.
        let events = events::follow(&self.pins, &self.state_path, true, |event| {
            info!("{event}");
            if notify_tx.try_send(event.clone()).is_err() {
                warn!(
                    "notification queue full: dropped the event for {}",
                    event.addr
                );
            }
        });
        let expiry = self.expire_loop(notify_tx.clone());
        let reloads = async {
            while let Some(config) = reload.recv().await {
                // Rules in the file replace the rules in force, as at load.
                if let Some(rules) = config.rules.clone() {
                    let (pins, state_path) = (self.pins.clone(), self.state_path.clone());
                    let applied = tokio::task::spawn_blocking(move || -> Result<()> {
                        let _lock = pins.lock()?;
                        crate::store::restore(&pins, &state_path, false, Some(&rules)).map(drop)
                    })
                    .await;
                    match applied {
                        Ok(Ok(())) => info!("rules reloaded"),
                        Ok(Err(err)) => warn!("rules not reloaded: {err}"),
                        Err(err) => warn!("rules not reloaded: {err}"),
                    }
                }
                if let Ok(mut current) = self.config.lock() {
                    *current = config;
                }
                info!("configuration reloaded");
            }
        };
        tokio::select! {
            result = tcp_server => result.context("HTTP server")?,
            result = unix_server => result.context("socket server")?,
            result = events => result?,
            result = expiry => result?,
            () = reloads => {},
            () = stop => {},
        }
        let _ = std::fs::remove_file(socket);
        Ok(())
    }

    /// Removes expired bans from the maps and the state file, reporting each.
    async fn expire_loop(&self, notify: mpsc::Sender<EventRecord>) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut watch = ExpiryWatch::default();
        loop {
            tick.tick().await;
            let pins = self.pins.clone();
            let state_path = self.state_path.clone();
            let (polled, expired) = tokio::task::spawn_blocking(move || {
                let expired = watch.poll(&pins, &state_path);
                (watch, expired)
            })
            .await?;
            watch = polled;
            for event in expired? {
                info!("{event}");
                let _ = notify.try_send(event);
            }
        }
    }
}

/// When the next temporary ban of the state file is due. The file is read again only when it
/// changed, and the lock is taken only when something is due, so a large state costs nothing
/// between expiries.
#[derive(Default)]
struct ExpiryWatch {
    modified: Option<std::time::SystemTime>,
    next_due: Option<Timestamp>,
}

impl ExpiryWatch {
    fn poll(&mut self, pins: &PinDir, state_path: &Path) -> Result<Vec<EventRecord>> {
        let modified = std::fs::metadata(state_path)
            .and_then(|meta| meta.modified())
            .ok();
        if modified.is_none() || modified != self.modified {
            let state = State::load(state_path)?;
            self.next_due = state
                .bans
                .values()
                .filter_map(|entry| entry.expires_at)
                .min();
            self.modified = modified;
        }
        let now = Timestamp::now();
        if self.next_due.is_none_or(|due| due > now) {
            return Ok(Vec::new());
        }
        // `commit` prunes expired entries from the maps and the file.
        let store = Store::open(pins, state_path)?;
        let due: Vec<IpNet> = store
            .state
            .bans
            .iter()
            .filter(|(_, entry)| entry.is_expired(now))
            .map(|(net, _)| *net)
            .collect();
        store.commit(|| {})?;
        self.modified = None;
        Ok(due
            .into_iter()
            .map(|net| EventRecord {
                event: "expired",
                addr: net.to_string(),
                rule: None,
                hits: None,
                expires_at: None,
                at: now,
            })
            .collect())
    }
}

/// Sends events to the webhook (with retries) and the command, one at a time.
async fn notifier(config: Arc<Mutex<Config>>, mut events: mpsc::Receiver<EventRecord>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .ok();
    while let Some(event) = events.recv().await {
        let notify = config.lock().map(|c| c.notify.clone()).unwrap_or_default();
        if let (Some(url), Some(client)) = (&notify.webhook, &client) {
            let mut delay = Duration::from_millis(500);
            for attempt in 1..=4 {
                match client.post(url).json(&event).send().await {
                    Ok(response) if response.status().is_success() => break,
                    Ok(response) => warn!(
                        "webhook {url}: HTTP {} (attempt {attempt})",
                        response.status()
                    ),
                    Err(err) => warn!("webhook {url}: {err} (attempt {attempt})"),
                }
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        if let Some(command) = &notify.command {
            let json = serde_json::to_string(&event).unwrap_or_default();
            let status = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(command)
                .env("BLOCKER_EVENT", json)
                .env("BLOCKER_EVENT_KIND", event.event)
                .env("BLOCKER_ADDR", &event.addr)
                .status()
                .await;
            match status {
                Ok(status) if status.success() => {}
                Ok(status) => warn!("notify command exited with {status}"),
                Err(err) => warn!("notify command: {err}"),
            }
        }
    }
}

/// Sends an offense to a running daemon over its Unix socket.
pub async fn report_via_socket(
    socket: &Path,
    report: &serde_json::Value,
) -> anyhow::Result<(u16, String)> {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::post("/v1/offenses")
        .header(header::HOST, "blocker")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(serde_json::to_vec(report)?)))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_renamed_for_the_classic_format() {
        let openmetrics = "# HELP blocker_packets Packets.\n# TYPE blocker_packets counter\n\
                           blocker_packets_total{reason=\"x\"} 1\n# HELP blocker_bans Bans.\n\
                           # TYPE blocker_bans gauge\nblocker_bans 2\n# EOF\n";
        assert_eq!(
            prometheus_text(openmetrics),
            "# HELP blocker_packets_total Packets.\n# TYPE blocker_packets_total counter\n\
             blocker_packets_total{reason=\"x\"} 1\n# HELP blocker_bans Bans.\n\
             # TYPE blocker_bans gauge\nblocker_bans 2\n"
        );
    }
}

//! `GET /metrics`: Prometheus text built at scrape time from the kernel's per-CPU counters
//! (summed here, nothing on the packet path) and the daemon's own. A state file that cannot be
//! read does not stop the scrape: the kernel's numbers are still exported, and
//! `blocker_state_readable` drops to 0.

use std::{
    collections::BTreeMap,
    future::Future,
    path::Path,
    time::{Duration, Instant},
};

use axum::{
    extract::State as AxumState,
    http::{header, HeaderMap},
    response::{IntoResponse, Response},
};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tracing::warn;

use super::api::{Api, ApiError};
use crate::{
    clock::Now,
    dynamic,
    offense::Level,
    pins::PinDir,
    state::{summary, Summary},
    status, Error, Result,
};

/// How long a scrape's text is served again. A scraper polls every few seconds at most, and
/// the walk of the maps behind a scrape costs CPU that any client of the port (no token is
/// asked) could otherwise ask for in a loop, from many connections at once.
const SCRAPE_REUSE: Duration = Duration::from_millis(250);

/// The last scrape's text, shared by the scrapes that arrive while it is fresh or being built:
/// one walk of the maps at a time, four a second at most.
#[derive(Clone, Default)]
pub struct Scrapes(std::sync::Arc<tokio::sync::Mutex<Option<(Instant, String)>>>);

impl Scrapes {
    /// The fresh text, or `build`'s, which is kept for the next.
    async fn text<E>(&self, build: impl Future<Output = Result<String, E>>) -> Result<String, E> {
        let mut last = self.0.lock().await;
        if let Some((at, text)) = last.as_ref() {
            if at.elapsed() < SCRAPE_REUSE {
                return Ok(text.clone());
            }
        }
        let text = build.await?;
        *last = Some((Instant::now(), text.clone()));
        Ok(text)
    }
}

/// Prometheus text, or OpenMetrics when the scraper asks for it.
pub(super) async fn get_metrics(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let offenses = api.daemon.offense_counts();
    let jails = api.daemon.jail_status();
    let fleet = api.daemon.fleet_status();
    let pins = api.daemon.pins.clone();
    let state_path = api.daemon.state_path.clone();
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    let build = super::api::blocking(move || {
        let mut text = metrics_text(&pins, &state_path, &offenses, &jails)?;
        if let Some(fleet) = &fleet {
            // Before the OpenMetrics end marker.
            let end = text.rfind("# EOF").unwrap_or(text.len());
            text.insert_str(end, &fleet_metrics(fleet)?);
        }
        Ok(text)
    });
    let text = api.daemon.scrapes.text(build).await?;
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
    jails: &[super::JailStatus],
) -> Result<String> {
    let (state, state_readable) = match summary(state_path) {
        Ok(state) => (state, 1),
        Err(err) => {
            warn!("metrics without the state file: {err}");
            (Summary::default(), 0)
        }
    };
    // The tries' fill from the database's kept counts; walked only without them.
    let counted = (state_readable == 1).then_some(&state.entries);
    let status = status::read_counted(pins, counted)?;
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
    // What the slots counted before their rule changed, and what they count now.
    let mut rule_bans = state.issued.get("rule").copied().unwrap_or(0);
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
    let dynamic = dynamic::blacklist(pins, None, &now)?.len();
    for kind in ["permanent", "temporary", "dynamic", "allow"] {
        let count = match kind {
            "dynamic" => dynamic as u64,
            kind => state.entries.get(kind).copied().unwrap_or(0),
        };
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
    for source in ["cli", "import", "offense", "log", "fleet"] {
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

    let log_lines = Family::<Labels, Counter>::default();
    let log_matches = Family::<Labels, Counter>::default();
    for jail in jails {
        let l = labels(&[("jail", &jail.name)]);
        log_lines.get_or_create(&l).inc_by(jail.lines);
        log_matches.get_or_create(&l).inc_by(jail.matches);
    }
    registry.register("log_lines", "Log lines read, by jail", log_lines);
    registry.register(
        "log_matches",
        "Log lines that matched (failures, or requests of bunch jails), by jail",
        log_matches,
    );

    let readable = Gauge::<i64>::default();
    readable.set(state_readable);
    registry.register(
        "state_readable",
        "1 when the state file reads; 0 while it is broken and writes are refused",
        readable,
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

/// The fleet link's metrics (OpenMetrics text without the end marker).
pub fn fleet_metrics(fleet: &crate::fleet::LinkStatus) -> Result<String> {
    let mut registry = Registry::with_prefix("blocker_fleet");
    let counter = |value: u64| {
        let counter = Counter::<u64>::default();
        counter.inc_by(value);
        counter
    };
    registry.register(
        "published",
        "Changes this node published to the fleet",
        counter(fleet.published),
    );
    registry.register(
        "applied",
        "Changes received from the fleet that changed this node",
        counter(fleet.applied),
    );
    registry.register(
        "skipped",
        "Changes received from the fleet and skipped (malformed, allowlisted, in force)",
        counter(fleet.skipped),
    );
    let connected = Gauge::<i64>::default();
    connected.set(i64::from(fleet.connected));
    registry.register("connected", "1 while connected to NATS", connected);
    let lag = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    lag.set(fleet.lag_seconds);
    registry.register(
        "lag_seconds",
        "Seconds from publication to application of the last change applied",
        lag,
    );
    let mut text = String::new();
    encode(&mut text, &registry).map_err(|err| Error::Io {
        context: "encoding metrics".into(),
        source: std::io::Error::other(err.to_string()),
    })?;
    Ok(text.replace("# EOF\n", ""))
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };

    use super::*;

    /// Scrapes arriving together, or within [`SCRAPE_REUSE`], walk the maps once.
    #[tokio::test]
    async fn scrapes_arriving_together_share_one_walk_of_the_maps() {
        let scrapes = Arc::new(Scrapes::default());
        let walks = Arc::new(AtomicUsize::new(0));
        let scrape = || {
            let (scrapes, walks) = (scrapes.clone(), walks.clone());
            tokio::spawn(async move {
                let walked = async {
                    let n = walks.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, ()>(format!("walk {n}"))
                };
                scrapes.text(walked).await
            })
        };
        let together: Vec<_> = (0..20).map(|_| scrape()).collect();
        for scrape in together {
            assert_eq!(scrape.await.unwrap(), Ok("walk 1".to_string()));
        }
        assert_eq!(walks.load(Ordering::SeqCst), 1);
        tokio::time::sleep(SCRAPE_REUSE).await;
        assert_eq!(scrape().await.unwrap(), Ok("walk 2".to_string()));
    }

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

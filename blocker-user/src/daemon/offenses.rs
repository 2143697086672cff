//! Recording offenses: each report is validated (a host address, a bounded weight, short
//! texts) before anything is touched, then scored. The daemon batches the reports that arrive
//! together into one store session, so a burst costs one state write, not one per offense.

use std::path::{Path, PathBuf};

use axum::http::StatusCode;
use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::api::{ApiError, OffenseAnswer, OffenseReport};
use crate::{
    addr::parse_net,
    config::Config,
    lockout::Guard,
    offense::{OffenseConfig, Severity, Verdict},
    pins::PinDir,
    state::{forget_offenses, Origin},
    store::Store,
    text::MAX_REASON_BYTES,
    Error, Result,
};

/// Longest key accepted, in bytes.
pub const MAX_KEY: usize = 256;
/// Reports waiting for the writer; more wait for room.
const QUEUE: usize = 4096;
/// Reports recorded in one store session at most.
const BATCH: usize = 512;

/// A report that passed validation.
#[derive(Debug, Clone)]
pub struct ValidOffense {
    pub net: IpNet,
    pub severity: Severity,
    pub reason: String,
    pub key: Option<String>,
}

/// Checks a report against the scoring settings: the address must be one host as scored (a
/// prefix at least as long as `mask` / `mask6`, or a /128 for a link-local source, so no
/// report can ban a network wider than one source), the weight within `(0, threshold]`, and
/// the texts short.
pub fn validate(report: &OffenseReport, config: &OffenseConfig) -> Result<ValidOffense> {
    let net = parse_net(&report.addr)?.net;
    let mask = match net {
        IpNet::V4(_) => config.mask,
        IpNet::V6(v6) => crate::addr::v6_key_len(v6.addr(), config.mask6),
    };
    if net.prefix_len() < mask {
        return Err(Error::InvalidOffense(format!(
            "{} is a network: an offense names one source (a /{mask} or longer here)",
            report.addr
        )));
    }
    config
        .weight(report.severity)
        .map_err(Error::InvalidOffense)?;
    if report.reason.len() > MAX_REASON_BYTES {
        return Err(Error::InvalidOffense(format!(
            "reason longer than {MAX_REASON_BYTES} bytes"
        )));
    }
    if report.key.as_ref().is_some_and(|key| key.len() > MAX_KEY) {
        return Err(Error::InvalidOffense(format!(
            "key longer than {MAX_KEY} bytes"
        )));
    }
    Ok(ValidOffense {
        net,
        severity: report.severity,
        reason: report.reason.clone(),
        key: report.key.clone(),
    })
}

/// The name an offense is counted under in the metrics.
pub fn severity_label(severity: Severity) -> String {
    match severity {
        Severity::Named(level) => level.name().to_string(),
        Severity::Weight(_) => "weighted".to_string(),
    }
}

/// Scores one validated offense in an open store.
fn score(store: &mut Store, config: &Config, offense: &ValidOffense) -> Result<OffenseAnswer> {
    let now = store.now.wall;
    let verdict = store
        .state
        .offenses
        .offend(
            &config.offenses,
            offense.net,
            offense.severity,
            &offense.reason,
            offense.key.as_deref(),
            now,
        )
        .map_err(Error::InvalidOffense)?;
    Ok(match verdict {
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
            let expires_at = Some(crate::clock::temporary_ban_end(now, duration));
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
    })
}

/// How often stale offense scores are dropped from the database, at most.
const FORGET_EVERY_S: i64 = 60;

/// Records validated offenses in one store session and one commit. Each gets its own answer;
/// a failed commit fails them all (nothing of the batch was stored).
pub fn record_batch(
    pins: &PinDir,
    state_path: &Path,
    config: &Config,
    offenses: &[ValidOffense],
) -> Result<Vec<Result<OffenseAnswer>>> {
    let mut touched: Vec<IpNet> = offenses
        .iter()
        .map(|offense| config.offenses.prefix_of(offense.net))
        .collect();
    // Each source's rows are read once, however many of the batch's reports name it.
    touched.sort_unstable();
    touched.dedup();
    let mut store = Store::open_scoped(pins, state_path, &touched)?;
    store.origin = Origin::local("offense");
    // The lock-out check `blocker ban` runs: no report bans this host or the operator's SSH
    // source (unless allowlisted, which wins anyway).
    let guard = Guard::recent()?;
    let answers = offenses
        .iter()
        .map(|offense| {
            guard.check(&config.offenses.prefix_of(offense.net), &store.state.allow)?;
            score(&mut store, config, offense)
        })
        .collect();
    let now = store.now.wall;
    store.state.offenses.forget(&config.offenses, now);
    store.commit(|| {})?;
    // The batch read only its own sources: the others' stale scores go by index, once a
    // minute at most (it is a transaction of its own).
    static LAST_FORGET: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let last = LAST_FORGET.load(std::sync::atomic::Ordering::Relaxed);
    if now.as_second() - last >= FORGET_EVERY_S {
        // The batch is stored: a failure here must not tell its senders otherwise (they
        // would report the same offenses again, scoring them twice).
        match forget_offenses(state_path, &config.offenses, now) {
            Ok(()) => LAST_FORGET.store(now.as_second(), std::sync::atomic::Ordering::Relaxed),
            Err(err) => warn!("dropping stale offense scores: {err}"),
        }
    }
    Ok(answers)
}

/// Scores one offense and bans the source when it crosses the threshold: `blocker report`
/// without a daemon.
pub fn record_offense(
    pins: &PinDir,
    state_path: &Path,
    config: &Config,
    report: &OffenseReport,
) -> Result<OffenseAnswer> {
    let offense = validate(report, &config.offenses)?;
    record_batch(pins, state_path, config, &[offense])?
        .pop()
        .unwrap_or_else(|| Err(Error::InvalidOffense("nothing recorded".into())))
}

type Reply = oneshot::Sender<Result<OffenseAnswer, ApiError>>;

/// The handle handlers send reports to; one writer task records them in batches.
#[derive(Clone)]
pub struct OffenseQueue(mpsc::Sender<(OffenseReport, Reply)>);

impl OffenseQueue {
    /// Starts the writer task.
    pub fn start(daemon: super::Daemon) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(writer(daemon, receiver));
        Self(sender)
    }

    /// Records `report` and waits for its answer.
    pub async fn record(&self, report: OffenseReport) -> Result<OffenseAnswer, ApiError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping");
        self.0.send((report, reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn writer(daemon: super::Daemon, mut receiver: mpsc::Receiver<(OffenseReport, Reply)>) {
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match receiver.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let config = daemon.config();
        // Invalid reports are answered at once and never reach the store.
        let mut valid = Vec::new();
        let mut replies = Vec::new();
        for (report, reply) in batch {
            match validate(&report, &config.offenses) {
                Ok(offense) => {
                    valid.push(offense);
                    replies.push(reply);
                }
                Err(err) => {
                    let _ = reply.send(Err(err.into()));
                }
            }
        }
        if valid.is_empty() {
            continue;
        }
        let (pins, state_path): (PinDir, PathBuf) =
            (daemon.pins.clone(), daemon.state_path.clone());
        let answers =
            super::api::blocking(move || record_batch(&pins, &state_path, &config, &valid)).await;
        match answers {
            Ok(answers) => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(answer.map_err(ApiError::from));
                }
            }
            Err(err) => {
                for reply in replies {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }
}

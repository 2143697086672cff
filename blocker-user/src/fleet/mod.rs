//! The fleet: bans shared by every server through a NATS JetStream key-value bucket.
//!
//! Each key names a prefix on a list (`ban.10-0-0-7.32`) and holds the last change made to it
//! anywhere ([`codec`]). A node publishes the changes its own writers record in the state
//! history ([`publisher`]), and applies what the bucket's watch delivers, the current value of
//! every key first, then each change as it comes ([`applier`]): a node that starts, restarts
//! or reconnects catches up from the bucket itself. If NATS is unreachable nothing local
//! waits on it: the client reconnects with backoff and both halves go on from where they
//! were. [`link`] keeps what `blocker status` and `/metrics` show.

pub mod applier;
pub mod codec;
pub mod config;
pub mod link;
pub mod publisher;

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use futures_util::{FutureExt as _, StreamExt as _};
use tracing::{info, warn};

pub use config::FleetConfig;
pub use link::{LinkStatus, SharedLink};

use crate::{lockout::Guard, pins::PinDir};

/// Changes applied in one store session at most.
const APPLY_BATCH: usize = 4096;
/// The longest pause between two attempts to reach the bucket.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Joins the fleet `config` describes and runs until dropped. Returns only on a setting that
/// cannot work (an unreadable credentials file); everything else is retried.
pub async fn run(
    config: FleetConfig,
    pins: PinDir,
    state_path: PathBuf,
    link: SharedLink,
) -> anyhow::Result<()> {
    let node = config.node_name();
    // Where publishing starts is fixed before anything waits on NATS: a change made from now
    // on is published, however long the bucket takes to answer.
    let outbox = publisher::Outbox::new(&state_path, config.share.clone(), node.clone());
    let (outbox, cursor) = tokio::task::spawn_blocking(move || {
        let cursor = outbox.cursor();
        (outbox, cursor)
    })
    .await?;
    let cursor = cursor?;
    let (connections, _) = tokio::sync::watch::channel(0u64);
    let client = connect(&config, &link, connections.clone()).await?;
    let jetstream = jetstream::new(client);
    let bucket = open_bucket(&jetstream, &config).await;
    info!(
        "fleet: node {node} joined bucket {} on {}",
        config.bucket,
        config.servers.join(", ")
    );
    let publishing = tokio::spawn(publisher::publish(
        outbox,
        cursor,
        bucket.clone(),
        link.clone(),
    ));
    let inbox = applier::Inbox {
        pins,
        state_path,
        guard: Guard::detect()?,
    };
    follow(&bucket, &inbox, &config.accept, &node, &link, &connections).await;
    publishing.abort();
    Ok(())
}

/// A client that reconnects by itself; `connections` counts the connections made.
async fn connect(
    config: &FleetConfig,
    link: &SharedLink,
    connections: tokio::sync::watch::Sender<u64>,
) -> anyhow::Result<async_nats::Client> {
    let events = link.clone();
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("blocker {}", config.node_name()))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            let millis = 100u64.saturating_mul(1 << attempts.min(6) as u64);
            Duration::from_millis(millis).min(MAX_BACKOFF)
        })
        .event_callback(move |event| {
            let (link, connections) = (events.clone(), connections.clone());
            async move {
                match event {
                    async_nats::Event::Connected => {
                        info!("fleet: connected");
                        link.set_connected(true);
                        connections.send_modify(|count| *count += 1);
                    }
                    async_nats::Event::Disconnected => {
                        warn!(
                            "fleet: disconnected from NATS; local bans keep working, reconnecting"
                        );
                        link.set_connected(false);
                    }
                    other => info!("fleet: {other}"),
                }
            }
        });
    if let Some(creds) = &config.creds {
        options = options
            .credentials_file(creds)
            .await
            .with_context(|| format!("reading the NATS credentials {}", creds.display()))?;
    }
    if let Some(token_file) = &config.token_file {
        let token = std::fs::read_to_string(token_file)
            .with_context(|| format!("reading the NATS token {}", token_file.display()))?;
        options = options.token(token.trim().to_string());
    }
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    options
        .connect(config.servers.as_slice())
        .await
        .context("connecting to NATS")
}

/// The bucket, created when missing; waits (with backoff) for NATS to answer.
///
/// The bucket's stream is created directly, as a key-value bucket's (one value per key,
/// roll-ups, direct gets): the client's own `create_key_value` first asks for the account's
/// limits in a form NATS 2.9 does not answer in.
async fn open_bucket(jetstream: &jetstream::Context, config: &FleetConfig) -> kv::Store {
    use jetstream::stream::{Config, DiscardPolicy, StorageType};
    let mut pause = Duration::from_millis(100);
    loop {
        let created = jetstream
            .get_or_create_stream(Config {
                name: format!("KV_{}", config.bucket),
                description: Some("blocker: bans shared by the fleet".into()),
                subjects: vec![format!("$KV.{}.>", config.bucket)],
                max_messages_per_subject: 1,
                max_message_size: codec::MAX_MESSAGE_BYTES as i32,
                storage: StorageType::File,
                num_replicas: config.replicas,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: DiscardPolicy::New,
                ..Default::default()
            })
            .await;
        let opened = match created {
            Ok(_) => jetstream
                .get_key_value(config.bucket.as_str())
                .await
                .map_err(anyhow::Error::from),
            Err(err) => Err(err.into()),
        };
        match opened {
            Ok(bucket) => return bucket,
            Err(err) => {
                warn!(
                    "fleet: opening bucket {}: {err:#}; trying again",
                    config.bucket
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Applies what the watch delivers, watching again after an error or a reconnection (the
/// server that held the watch may be gone); an entry already applied (by its sequence
/// number) is not applied twice.
async fn follow(
    bucket: &kv::Store,
    inbox: &applier::Inbox,
    accept: &[String],
    node: &str,
    link: &SharedLink,
    connections: &tokio::sync::watch::Sender<u64>,
) {
    let mut last_sequence = 0;
    let mut caught_up = false;
    let mut reconnected = connections.subscribe();
    loop {
        reconnected.borrow_and_update();
        // The current value of every key first, then the changes.
        let mut watch = match bucket.watch_with_history(">").await {
            Ok(watch) => watch,
            Err(err) => {
                warn!("fleet: watching the bucket: {err}; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let first = tokio::select! {
                entry = watch.next() => entry,
                _ = reconnected.changed() => {
                    info!("fleet: watching the bucket again after reconnecting");
                    None
                }
            };
            let Some(first) = first else { break };
            let mut entries = vec![first];
            while entries.len() < APPLY_BATCH {
                match watch.next().now_or_never() {
                    Some(Some(entry)) => entries.push(entry),
                    _ => break,
                }
            }
            let mut changes = Vec::with_capacity(entries.len());
            let (mut skipped, mut failed) = (0, false);
            let mut newest = None;
            for entry in entries {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(err) => {
                        warn!("fleet: the watch failed: {err}; watching again");
                        failed = true;
                        break;
                    }
                };
                if entry.revision <= last_sequence {
                    continue;
                }
                last_sequence = entry.revision;
                newest = Some((
                    entry.revision,
                    entry.delta,
                    entry.created.unix_timestamp_nanos(),
                ));
                if entry.seen_current && !caught_up {
                    caught_up = true;
                    info!(
                        "fleet: caught up with the bucket at sequence {}",
                        entry.revision
                    );
                }
                if entry.operation != kv::Operation::Put {
                    skipped += 1;
                    continue;
                }
                match codec::decode(&entry.key, &entry.value) {
                    Ok(change) if change.message.node == node => {}
                    Ok(change) if !accept.contains(&change.message.source) => skipped += 1,
                    Ok(change) => changes.push(change),
                    Err(err) => {
                        warn!(
                            "fleet: skipped a malformed change under {}: {err}",
                            crate::text::escape(&entry.key)
                        );
                        skipped += 1;
                    }
                }
            }
            link.count_skipped(skipped);
            if !changes.is_empty() {
                let inbox = inbox.clone();
                match tokio::task::spawn_blocking(move || inbox.apply(&changes)).await {
                    Ok(applied) => {
                        link.count_applied(applied.applied);
                        link.count_skipped(applied.skipped);
                    }
                    Err(err) => warn!("fleet: applying changes: {err}"),
                }
            }
            if let Some((sequence, pending, published_ns)) = newest {
                let now_ns = jiff::Timestamp::now().as_nanosecond();
                let lag_ms = (now_ns - published_ns) / 1_000_000;
                link.reached(sequence, pending, i64::try_from(lag_ms).unwrap_or(i64::MAX));
            }
            if failed {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

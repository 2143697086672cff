//! The fleet: bans shared by every server through a NATS JetStream key-value bucket.
//!
//! Each key names a prefix on a list (`ban.10-0-0-7.32`) and holds the last change made to it
//! anywhere ([`codec`]). A node publishes the changes its own writers record in the state
//! history ([`publisher`]) and the rules' blacklistings ([`blacklist`]), and applies what the
//! bucket's watch delivers, the current value of every key first, then each change as it
//! comes ([`follow`], [`applier`]): a node that starts, restarts or reconnects catches up
//! from the bucket itself. If NATS is unreachable nothing local
//! waits on it: the client reconnects with backoff and both halves go on from where they
//! were. [`link`] keeps what `blocker status` and `/metrics` show.

pub mod applier;
pub mod blacklist;
pub mod codec;
pub mod config;
mod follow;
pub mod link;
pub mod publisher;

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use tracing::{info, warn};

pub use config::FleetConfig;
pub use link::{LinkStatus, SharedLink};

use crate::{daemon::auth::read_secret_file, pins::PinDir};

/// The longest pause between two attempts to reach the bucket.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Joins the fleet `config` describes and runs until dropped, publishing the rules'
/// blacklistings `blacklistings` delivers too. Returns only on a setting that cannot work (an
/// unreadable credentials file); everything else is retried.
pub async fn run(
    config: FleetConfig,
    pins: PinDir,
    state_path: PathBuf,
    link: SharedLink,
    blacklistings: Option<blacklist::Queued>,
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
    // Before waiting on NATS (a server this node cannot reach yet is one it needs), and again
    // once it answered, when DNS surely works (at boot it may not have yet).
    guard_servers(&config).await;
    let (connections, _) = tokio::sync::watch::channel(0u64);
    let client = connect(&config, &link, connections.clone()).await?;
    let jetstream = jetstream::new(client);
    let bucket = open_bucket(&jetstream, &config).await;
    guard_servers(&config).await;
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
    let sharing = blacklistings.map(|queued| {
        tokio::spawn(blacklist::publish(
            queued,
            node.clone(),
            bucket.clone(),
            link.clone(),
        ))
    });
    let inbox = applier::Inbox { pins, state_path };
    follow::follow(&bucket, &inbox, &config.accept, &node, &link, &connections).await;
    publishing.abort();
    if let Some(sharing) = sharing {
        sharing.abort();
    }
    Ok(())
}

/// Resolves the NATS servers once at start: no ban, received or local, may cover them
/// ([`crate::lockout::needs_server`]).
async fn guard_servers(config: &FleetConfig) {
    for authority in config.server_authorities() {
        match tokio::net::lookup_host(&authority).await {
            Ok(found) => found.for_each(|addr| crate::lockout::needs_server(addr.ip())),
            Err(err) => {
                warn!("fleet: resolving {authority}: {err}; bans covering it are not refused")
            }
        }
    }
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
    // Whoever holds these may write the bucket, so control every node's filter: files other
    // users may read are refused, like the API token.
    if let Some(creds) = &config.creds {
        read_secret_file(creds, "NATS credentials")?;
        options = options
            .credentials_file(creds)
            .await
            .with_context(|| format!("reading the NATS credentials {}", creds.display()))?;
    }
    if let Some(token_file) = &config.token_file {
        options = options.token(read_secret_file(token_file, "NATS token")?);
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

//! The `[fleet]` section of the daemon config: which NATS servers carry the shared bans, this
//! node's name, which ban sources it publishes and which remote ones it applies, and the
//! client's usual credentials and TLS files.

use std::path::PathBuf;

use serde::Deserialize;

/// The sources of local changes a node can share: as the history records them, and `rule`
/// for the rate rules' blacklistings ([`super::blacklist`]).
pub const SOURCES: &[&str] = &["cli", "import", "offense", "log", "rule"];

/// The JetStream key-value bucket holding the shared set.
pub const DEFAULT_BUCKET: &str = "blocker_bans";

/// Longest node name, in bytes.
pub const MAX_NODE_BYTES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// NATS server URLs (`nats://HOST:PORT` or `tls://HOST:PORT`); none turns the fleet off.
    pub servers: Vec<String>,
    /// This node's name in messages and in the other nodes' history; the hostname if unset.
    pub node: Option<String>,
    /// Which local sources are published.
    pub share: Vec<String>,
    /// Which remote sources are applied here.
    pub accept: Vec<String>,
    /// The key-value bucket (created with `replicas` copies when missing).
    pub bucket: String,
    /// Copies JetStream keeps of the bucket (1 for one server, 3 for a 3-server cluster).
    pub replicas: usize,
    /// A NATS credentials file (JWT and nkey seed).
    pub creds: Option<PathBuf>,
    /// A file holding the server's auth token (kept out of the config, which may be readable).
    pub token_file: Option<PathBuf>,
    /// CA certificate to verify the servers with; setting it requires TLS.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key for servers that verify clients.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Default for FleetConfig {
    fn default() -> Self {
        let all = || SOURCES.iter().map(|source| source.to_string()).collect();
        Self {
            servers: Vec::new(),
            node: None,
            share: all(),
            accept: all(),
            bucket: DEFAULT_BUCKET.into(),
            replicas: 1,
            creds: None,
            token_file: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl FleetConfig {
    /// Whether the daemon joins a fleet.
    pub fn enabled(&self) -> bool {
        !self.servers.is_empty()
    }

    /// This node's name: the configured one, else the hostname.
    pub fn node_name(&self) -> String {
        self.node.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|name| name.into_string().ok())
                .filter(|name| valid_node(name))
                .unwrap_or_else(|| "unnamed".into())
        })
    }

    /// Each server's `HOST:PORT` (4222 when the URL names no port), for resolving.
    pub fn server_authorities(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|server| {
                let rest = server
                    .split_once("://")
                    .map_or(server.as_str(), |(_, rest)| rest);
                let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
                let authority = rest.split('/').next().unwrap_or(rest);
                // An IPv6 literal's own colons are inside its brackets.
                let has_port = match authority.strip_prefix('[') {
                    Some(literal) => literal.contains("]:"),
                    None => authority.contains(':'),
                };
                if has_port {
                    authority.to_string()
                } else {
                    format!("{authority}:4222")
                }
            })
            .collect()
    }

    /// Checks the section; the error is one line naming the key.
    pub fn validate(&self) -> Result<(), String> {
        for server in &self.servers {
            let scheme_ok = ["nats://", "tls://"].iter().any(|scheme| {
                server
                    .strip_prefix(scheme)
                    .is_some_and(|rest| !rest.is_empty())
            });
            if !scheme_ok {
                return Err(format!(
                    "[fleet] servers: {server:?} is not a nats://HOST:PORT or tls://HOST:PORT URL"
                ));
            }
        }
        if let Some(node) = &self.node {
            if !valid_node(node) {
                return Err(format!(
                    "[fleet] node must be 1 to {MAX_NODE_BYTES} letters, digits, '-', '_' or '.', not {node:?}"
                ));
            }
        }
        for (key, sources) in [("share", &self.share), ("accept", &self.accept)] {
            if let Some(bad) = sources.iter().find(|s| !SOURCES.contains(&s.as_str())) {
                return Err(format!(
                    "[fleet] {key}: unknown source {bad:?} (known: {})",
                    SOURCES.join(", ")
                ));
            }
        }
        let bucket_ok = !self.bucket.is_empty()
            && self
                .bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !bucket_ok {
            return Err(format!(
                "[fleet] bucket must be letters, digits, '-' or '_', not {:?}",
                self.bucket
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err("[fleet] replicas must be 1 to 5".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("[fleet] tls_cert and tls_key go together".into());
        }
        Ok(())
    }
}

/// Whether `name` can name a node: short, and nothing a log line or a terminal would act on.
pub fn valid_node(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NODE_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_off_and_shares_every_source() {
        let config = FleetConfig::default();
        assert!(!config.enabled());
        assert_eq!(config.share, SOURCES);
        assert_eq!(config.validate(), Ok(()));
        assert!(valid_node(&config.node_name()));
    }

    #[test]
    fn bad_values_are_refused_with_the_key() {
        let with = |edit: fn(&mut FleetConfig)| {
            let mut config = FleetConfig::default();
            edit(&mut config);
            config.validate().unwrap_err()
        };
        assert!(with(|c| c.servers = vec!["http://x:1".into()]).contains("servers"));
        assert!(with(|c| c.node = Some("web 3\n".into())).contains("node"));
        assert!(with(|c| c.share = vec!["rumour".into()]).contains("share"));
        assert!(with(|c| c.accept = vec!["".into()]).contains("accept"));
        assert!(with(|c| c.bucket = "a.b".into()).contains("bucket"));
        assert!(with(|c| c.replicas = 0).contains("replicas"));
        assert!(with(|c| c.tls_cert = Some("c.pem".into())).contains("tls_key"));
    }

    #[test]
    fn server_authorities_name_host_and_port() {
        let config = FleetConfig {
            servers: [
                "nats://10.0.0.1:4222",
                "tls://user:secret@nats.example:7422/",
                "nats://nats.example",
                "nats://[2001:db8::1]:4223",
                "nats://[2001:db8::2]",
            ]
            .map(String::from)
            .to_vec(),
            ..FleetConfig::default()
        };
        assert_eq!(
            config.server_authorities(),
            [
                "10.0.0.1:4222",
                "nats.example:7422",
                "nats.example:4222",
                "[2001:db8::1]:4223",
                "[2001:db8::2]:4222",
            ]
        );
    }
}

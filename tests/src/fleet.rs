//! A fleet for the integration tests: a network namespace of its own where NATS servers
//! (JetStream, stores in a temporary directory) and the nodes' daemons meet on loopback, and
//! nodes, each a [`TestNet`] with its own XDP program, pin directory and state, whose daemon
//! joins the fleet. Everything is stopped and deleted on drop.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{daemon::DaemonGuard, in_netns, sh, TestNet};

/// The namespace where the NATS servers and the daemons run.
pub struct FleetNs {
    pub name: String,
    pub dir: tempfile::TempDir,
}

impl FleetNs {
    /// A namespace of its own for each fleet, so the fleet tests run in parallel.
    pub fn create() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = std::process::id() % 10_000 * 10 + NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("blk{id}f");
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh("ip", &["netns", "add", &name]);
        sh("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Self {
            name,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }
}

impl Drop for FleetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A `nats-server` with JetStream in the fleet namespace, killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    pub log: std::path::PathBuf,
}

impl NatsServer {
    /// Starts server `index` (0, 1, 2...) of `cluster` servers (1: no cluster) and waits until
    /// it accepts connections.
    pub fn start(ns: &FleetNs, index: u16, cluster: u16) -> Self {
        let port = 4222 + index;
        let store = ns.dir.path().join(format!("nats-{index}"));
        let mut config = format!(
            "server_name: n{index}\nlisten: 127.0.0.1:{port}\njetstream {{ store_dir: {:?} }}\n",
            store.display().to_string()
        );
        if cluster > 1 {
            let routes: Vec<String> = (0..cluster)
                .filter(|other| *other != index)
                .map(|other| format!("nats-route://127.0.0.1:{}", 6222 + other))
                .collect();
            config.push_str(&format!(
                "cluster {{ name: blk, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                6222 + index,
                routes.join(", ")
            ));
        }
        let config_path = ns.dir.path().join(format!("nats-{index}.conf"));
        std::fs::write(&config_path, config).expect("writing the NATS config");
        let log = ns.dir.path().join(format!("nats-{index}.log"));
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name))
            .arg("/usr/sbin/nats-server")
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("NATS log"))
            .spawn()
            .expect("starting nats-server (cargo xtask setup installs it)");
        let server = Self {
            child: Some(child),
            port,
            log,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let ns_name = ns.name.clone();
        wait_until("nats-server to listen", Duration::from_secs(10), || {
            let ns_name = ns_name.clone();
            in_netns(&ns_name, move || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })
        });
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server at once, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A bare NATS client speaking the text protocol, for what the daemons would never send:
/// values put straight into the bucket's stream, and a bucket made by hand.
pub struct RawNats {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RawNats {
    /// Connects to `server` from inside the fleet namespace.
    pub fn connect(ns: &FleetNs, server: &NatsServer) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], server.port));
        let stream = in_netns(&ns.name, move || TcpStream::connect(addr)).expect("reaching NATS");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let mut client = Self {
            reader: BufReader::new(stream.try_clone().expect("cloning the socket")),
            writer: stream,
        };
        let info = client.line();
        assert!(info.starts_with("INFO "), "NATS greets with INFO: {info}");
        client.send(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nSUB _INBOX.raw 1\r\n");
        client
    }

    /// Publishes `payload` on `subject` and returns the reply (JetStream's answer).
    pub fn request(&mut self, subject: &str, payload: &[u8]) -> String {
        let mut frame = format!("PUB {subject} _INBOX.raw {}\r\n", payload.len()).into_bytes();
        frame.extend_from_slice(payload);
        frame.extend_from_slice(b"\r\n");
        self.send(&frame);
        loop {
            let line = self.line();
            if line == "PING" {
                self.send(b"PONG\r\n");
                continue;
            }
            assert!(!line.starts_with("-ERR"), "NATS refused {subject}: {line}");
            let Some(header) = line.strip_prefix("MSG ") else {
                continue;
            };
            let size: usize = header
                .rsplit(' ')
                .next()
                .and_then(|size| size.parse().ok())
                .unwrap_or_else(|| panic!("a MSG line ends with its size: {line}"));
            let mut body = vec![0; size + 2];
            std::io::Read::read_exact(&mut self.reader, &mut body).expect("reading a reply");
            body.truncate(size);
            return String::from_utf8_lossy(&body).into_owned();
        }
    }

    /// Creates the key-value bucket `bucket` as the daemons do, but taking values up to
    /// `max_value` bytes.
    pub fn create_bucket(&mut self, bucket: &str, max_value: usize) {
        let config = serde_json::json!({
            "name": format!("KV_{bucket}"),
            "subjects": [format!("$KV.{bucket}.>")],
            "max_msgs_per_subject": 1,
            "max_msg_size": max_value,
            "storage": "file",
            "num_replicas": 1,
            "allow_rollup_hdrs": true,
            "deny_delete": true,
            "allow_direct": true,
            "discard": "new",
        });
        let reply = self.request(
            &format!("$JS.API.STREAM.CREATE.KV_{bucket}"),
            config.to_string().as_bytes(),
        );
        assert!(!reply.contains("\"error\""), "creating {bucket}: {reply}");
    }

    /// Puts `value` under `key` of `bucket`; panics unless JetStream stored it.
    pub fn put(&mut self, bucket: &str, key: &str, value: &[u8]) {
        let reply = self.request(&format!("$KV.{bucket}.{key}"), value);
        assert!(reply.contains("\"seq\""), "putting {key}: {reply}");
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("writing to NATS");
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("reading from NATS");
        line.trim_end().to_string()
    }
}

/// One blocker node of the fleet.
pub struct Node {
    pub net: TestNet,
    pub name: String,
    pub daemon: Option<DaemonGuard>,
    config: String,
    listen: String,
    ns: String,
}

impl Node {
    /// Loads blocker (no rules) on a new [`TestNet`] and starts its daemon, joined to
    /// `servers` with `fleet_extra` (TOML lines) in its `[fleet]` section.
    pub fn start(ns: &FleetNs, index: u16, servers: &[String], fleet_extra: &str) -> Self {
        Self::start_with_rules(ns, index, servers, "rules = []", fleet_extra)
    }

    /// Like [`Node::start`], with `rules` (TOML: `rules = []` or `[[rules]]` tables) as the
    /// node's rules.
    pub fn start_with_rules(
        ns: &FleetNs,
        index: u16,
        servers: &[String],
        rules: &str,
        fleet_extra: &str,
    ) -> Self {
        let net = TestNet::new();
        let name = format!("node-{index}");
        let servers: Vec<String> = servers.iter().map(|url| format!("{url:?}")).collect();
        let config = net.config(
            "fleet.toml",
            &format!(
                "{rules}\n[fleet]\nservers = [{}]\nnode = \"{name}\"\n{fleet_extra}\n",
                servers.join(", ")
            ),
        );
        net.load(&["--config", &config]).ok();
        let mut node = Self {
            net,
            name,
            daemon: None,
            config,
            listen: format!("127.0.0.1:{}", 21_000 + index),
            ns: ns.name.clone(),
        };
        node.start_daemon();
        node
    }

    /// Lets this node's client send from `addr` (another node's client address) to this
    /// node's server: a source that reaches two nodes of the fleet.
    pub fn lend_source(&self, addr: std::net::IpAddr) {
        let net = &self.net;
        let host = format!("{addr}/32");
        sh(
            "ip",
            &[
                "-n",
                &net.client_ns,
                "addr",
                "add",
                &host,
                "dev",
                &net.client_if,
            ],
        );
        sh(
            "ip",
            &[
                "-n",
                &net.server_ns,
                "route",
                "add",
                &host,
                "dev",
                &net.server_if,
            ],
        );
    }

    /// Starts the daemon and waits until its fleet link is up.
    pub fn start_daemon(&mut self) {
        let socket = self.net.state_dir.path().join("blocker.sock");
        let socket = socket.to_string_lossy();
        self.daemon = Some(DaemonGuard::spawn_in(
            &self.net,
            &self.ns,
            &self.config,
            &self.listen,
            &socket,
            &[],
        ));
        let what = format!("{} to join the fleet", self.name);
        wait_or_explain(
            &what,
            Duration::from_secs(20),
            || self.link()["connected"] == true,
            || self.log(),
        );
    }

    /// Stops the daemon (the node's XDP program keeps enforcing what it has).
    pub fn stop_daemon(&mut self) {
        self.daemon = None;
    }

    /// The daemon's fleet link, `Value::Null` when it does not answer.
    pub fn link(&self) -> Value {
        let Some(daemon) = &self.daemon else {
            return Value::Null;
        };
        let (status, body) = daemon.curl_socket(&["/v1/fleet"]);
        if status != 200 {
            return Value::Null;
        }
        serde_json::from_str(&body).unwrap_or(Value::Null)
    }

    /// Stops (`SIGSTOP`) or resumes (`SIGCONT`) the daemon: what arrives meanwhile waits for it.
    pub fn pause_daemon(&self, paused: bool) {
        let daemon = self.daemon.as_ref().expect("a running daemon");
        let pid = nix::unistd::Pid::from_raw(daemon.child.id() as i32);
        let signal = if paused {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        nix::sys::signal::kill(pid, signal).expect("signalling the daemon");
    }

    /// A counter of the fleet link (`published`, `applied`, `skipped`).
    pub fn count(&self, what: &str) -> u64 {
        self.link()[what].as_u64().unwrap_or(0)
    }

    /// Whether the state holds a ban of `prefix` (as blocker prints it, `10.1.1.2/32`).
    pub fn has_ban(&self, prefix: &str) -> bool {
        self.net.stored_bans().iter().any(|stored| stored == prefix)
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        let text = self
            .daemon
            .as_ref()
            .map(DaemonGuard::log_text)
            .unwrap_or_default();
        format!("--- {} log:\n{text}", self.name)
    }

    /// Waits until `prefix` is banned here (`banned`) or not; the panic shows `nodes`' logs.
    pub fn wait_for_ban(&self, prefix: &str, banned: bool, nodes: &[&Node]) {
        let what = format!(
            "{prefix} to be {} on {}",
            if banned { "banned" } else { "lifted" },
            self.name
        );
        wait_or_explain(
            &what,
            Duration::from_secs(10),
            || self.has_ban(prefix) == banned,
            || {
                nodes
                    .iter()
                    .map(|node| node.log())
                    .collect::<Vec<_>>()
                    .join("\n")
            },
        );
    }
}

/// Polls `done` every 50 ms until it holds, or panics after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, done: impl FnMut() -> bool) {
    wait_or_explain(what, timeout, done, String::new);
}

/// Like [`wait_until`], with `explain()` (logs) in the panic message.
pub fn wait_or_explain(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
    explain: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            explain()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

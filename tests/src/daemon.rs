//! A `blocker daemon` in a test's server namespace, stopped on drop, and `curl` against it:
//! over TCP with the API token the daemon wrote, or over its Unix socket.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{blocker_bin, TestNet};

/// A running daemon.
pub struct DaemonGuard {
    pub child: Child,
    pub port: u16,
    pub socket: String,
    pub ns: String,
    /// Where the daemon's stderr goes.
    pub log: PathBuf,
    /// The API token file (the default one beside the state unless `--token-file` said).
    pub token_file: PathBuf,
}

impl DaemonGuard {
    /// The port a test's first daemon listens on.
    pub fn port_of(net: &TestNet) -> u16 {
        20_000 + (net.id % 20_000) as u16
    }

    /// Starts a daemon with `config` on 127.0.0.1 and the test's socket, and waits for
    /// `/healthz`.
    pub fn start(net: &TestNet, config: &str) -> Self {
        Self::start_with(net, config, Self::port_of(net), &[])
    }

    /// Like [`DaemonGuard::start`], on `port`, with `extra` arguments.
    pub fn start_with(net: &TestNet, config: &str, port: u16, extra: &[&str]) -> Self {
        let daemon = Self::spawn(net, config, port, extra);
        let deadline = Instant::now() + Duration::from_secs(10);
        while daemon.curl_anonymous(&[], &["/healthz"]).1 != "ok" {
            assert!(
                Instant::now() < deadline,
                "the daemon did not come up: {}",
                daemon.log_text()
            );
            thread::sleep(Duration::from_millis(100));
        }
        daemon
    }

    /// Starts a daemon without waiting for it.
    pub fn spawn(net: &TestNet, config: &str, port: u16, extra: &[&str]) -> Self {
        let socket = net
            .state_dir
            .path()
            .join("blocker.sock")
            .to_string_lossy()
            .into_owned();
        Self::spawn_on(net, config, &format!("127.0.0.1:{port}"), &socket, extra)
    }

    /// Starts a daemon listening on `listen` and `socket` without waiting for it.
    pub fn spawn_on(
        net: &TestNet,
        config: &str,
        listen: &str,
        socket: &str,
        extra: &[&str],
    ) -> Self {
        Self::spawn_in(net, &net.server_ns, config, listen, socket, extra)
    }

    /// Like [`DaemonGuard::spawn_on`], in the network namespace `ns` (the daemon reaches the
    /// test's maps through the pin directory from any namespace).
    pub fn spawn_in(
        net: &TestNet,
        ns: &str,
        config: &str,
        listen: &str,
        socket: &str,
        extra: &[&str],
    ) -> Self {
        let port = listen
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .expect("ADDR:PORT");
        let log = net.state_dir.path().join(format!("daemon-{port}.log"));
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg(blocker_bin())
            .args(["daemon", "--config", config, "--listen", listen])
            .args(["--socket", socket])
            .args(extra)
            .env("BLOCKER_PIN_DIR", &net.pin_dir)
            .env("BLOCKER_STATE", net.state_path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("daemon log"))
            .spawn()
            .expect("starting blocker daemon");
        let token_file = extra
            .iter()
            .position(|arg| *arg == "--token-file")
            .and_then(|i| extra.get(i + 1))
            .map(PathBuf::from)
            .unwrap_or_else(|| net.state_dir.path().join("api.token"));
        Self {
            child,
            port,
            socket: socket.to_string(),
            ns: ns.to_string(),
            log,
            token_file,
        }
    }

    /// What the daemon logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The API token the daemon wrote, if any.
    pub fn token(&self) -> Option<String> {
        std::fs::read_to_string(&self.token_file)
            .ok()
            .map(|token| token.trim().to_string())
    }

    /// `curl` over TCP with the token; returns (HTTP status, body).
    pub fn curl(&self, args: &[&str]) -> (u16, String) {
        let header = self
            .token()
            .map(|token| format!("authorization: Bearer {token}"));
        let extra: Vec<&str> = match &header {
            Some(header) => vec!["-H", header],
            None => Vec::new(),
        };
        self.curl_anonymous(&extra, args)
    }

    /// `curl` over TCP with `extra` options and no token.
    pub fn curl_anonymous(&self, extra: &[&str], args: &[&str]) -> (u16, String) {
        self.curl_url(extra, args, &format!("http://127.0.0.1:{}", self.port))
    }

    /// `curl` over the Unix socket.
    pub fn curl_socket(&self, args: &[&str]) -> (u16, String) {
        self.curl_url(&["--unix-socket", &self.socket], args, "http://blocker")
    }

    fn curl_url(&self, extra: &[&str], args: &[&str], base: &str) -> (u16, String) {
        let (path, rest) = args.split_first().expect("a path");
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .args(["curl", "-s", "-w", "\n%{http_code}", "--max-time", "5"])
            .args(extra)
            .args(rest)
            .arg(format!("{base}{path}"))
            .output()
            .expect("running curl (cargo xtask setup installs it)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (status.trim().parse().unwrap_or(0), body.trim().to_string())
    }

    /// `POST /v1/offenses` over TCP with the token.
    pub fn offend(&self, body: &str) -> (u16, String) {
        self.curl(&[
            "/v1/offenses",
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            body,
        ])
    }

    /// `POST /v1/offenses` over the Unix socket (no token).
    pub fn offend_via_socket(&self, body: &str) -> (u16, String) {
        self.curl_socket(&[
            "/v1/offenses",
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            body,
        ])
    }

    /// True while the daemon process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses `text` as JSON or panics with it.
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|err| panic!("not JSON ({err}): {text}"))
}

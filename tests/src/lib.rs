//! Harness for the integration tests: each test gets its own pair of network namespaces joined
//! by a veth pair, its own pin directory and state file, and tears all of it down on drop, even
//! when the test fails.
//!
//! The "server" namespace is the protected host, where `blocker` attaches; the "client"
//! namespace sends real traffic from several source addresses.

use std::{
    fs::File,
    io::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::Duration,
};

use nix::sched::{setns, CloneFlags};

pub mod authlog;
pub mod bpf;
pub mod chart;
pub mod daemon;
pub mod differential;
pub mod fleet;
pub mod frames;
pub mod logs;
pub mod model;
pub mod testrun;

/// The seed's netfilter `recent` ruleset (002) on INPUT, as `iptables` argument lists, for
/// `proto` traffic to `port`: `hitcount` new connections within `seconds` blacklist a source,
/// which stays out while it keeps sending within `blacklist_seconds`. The differential test and
/// the benchmark compare blocker with it.
pub fn recent_ruleset(
    proto: &str,
    port: u16,
    hitcount: u32,
    seconds: u32,
    blacklist_seconds: u32,
) -> Vec<Vec<String>> {
    let port = port.to_string();
    let blacklist = blacklist_seconds.to_string();
    let (seconds, hitcount) = (seconds.to_string(), hitcount.to_string());
    let new_to_port = [
        "-A", "INPUT", "-p", proto, "--dport", &port, "-m", "state", "--state", "NEW",
    ];
    let rules: Vec<Vec<&str>> = vec![
        vec!["-N", "blacklistdrop"],
        vec![
            "-A",
            "blacklistdrop",
            "-m",
            "recent",
            "--name",
            "BLACKLIST",
            "--set",
            "-j",
            "DROP",
        ],
        vec![
            "-A",
            "INPUT",
            "-m",
            "recent",
            "--name",
            "BLACKLIST",
            "--update",
            "--seconds",
            &blacklist,
            "-j",
            "DROP",
        ],
        vec![
            "-A",
            "INPUT",
            "-p",
            proto,
            "--dport",
            &port,
            "-m",
            "state",
            "--state",
            "ESTABLISHED,RELATED",
            "-j",
            "ACCEPT",
        ],
        [
            &new_to_port[..],
            &[
                "-m",
                "recent",
                "--name",
                "conn",
                "--rcheck",
                "--seconds",
                &seconds,
                "--hitcount",
                &hitcount,
                "-j",
                "blacklistdrop",
            ],
        ]
        .concat(),
        [
            &new_to_port[..],
            &["-m", "recent", "--name", "conn", "--set", "-j", "ACCEPT"],
        ]
        .concat(),
    ];
    rules
        .into_iter()
        .map(|rule| rule.into_iter().map(str::to_string).collect())
        .collect()
}
use serde_json::Value;
use socket2::{Domain, Socket, Type};

/// How long a probe waits before calling a packet dropped.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(700);

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// The first line of every integration test. The tests are marked
/// `#[ignore = "needs root: cargo xtask test runs it"]`, so a plain `cargo test` lists them as
/// ignored, with that reason, instead of counting them as passed; `cargo xtask test` runs them
/// with `--include-ignored`. Run that way without root, a test fails here rather than pass
/// without having run.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root to create network namespaces and load XDP: run `cargo xtask test` as root"
    );
}

/// Runs `command` with `input` on its stdin, capturing its output.
pub fn run_with_stdin(command: &mut Command, input: &[u8]) -> Run {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running blocker");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("writing stdin");
    child
        .wait_with_output()
        .expect("waiting for blocker")
        .into()
}

/// The `blocker` binary under test.
pub fn blocker_bin() -> PathBuf {
    std::env::var_os("BLOCKER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/blocker"))
}

fn sh(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("running {program}: {err}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a thread that has entered the network namespace `ns`. Sockets created there stay
/// in that namespace after the thread ends.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|err| panic!("opening {path}: {err}"));
        setns(file, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread panicked")
}

/// A result of `blocker ...`.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Self {
        Self {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Panics with the output unless the command exited 0.
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.stdout))
    }
}

/// Two namespaces joined by a veth pair, with a blocker pin directory and state file of their
/// own.
pub struct TestNet {
    pub id: u32,
    pub server_ns: String,
    pub client_ns: String,
    pub server_if: String,
    pub client_if: String,
    pub pin_dir: PathBuf,
    pub state_dir: tempfile::TempDir,
}

impl TestNet {
    pub fn new() -> Self {
        let id = std::process::id() % 10_000 * 100 + NEXT_ID.fetch_add(1, Ordering::SeqCst);
        let n = id % 250 + 1;
        let net = Self {
            id,
            server_ns: format!("blk{id}s"),
            client_ns: format!("blk{id}c"),
            server_if: format!("bk{id}s"),
            client_if: format!("bk{id}c"),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/blocker-test-{id}")),
            state_dir: tempfile::tempdir().expect("temp dir"),
        };
        // Clean leftovers of an earlier run that reused this id.
        let _ = Command::new("ip")
            .args(["netns", "del", &net.server_ns])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &net.client_ns])
            .output();
        sh("ip", &["netns", "add", &net.server_ns]);
        sh("ip", &["netns", "add", &net.client_ns]);
        sh(
            "ip",
            &[
                "link",
                "add",
                &net.server_if,
                "netns",
                &net.server_ns,
                "type",
                "veth",
                "peer",
                "name",
                &net.client_if,
                "netns",
                &net.client_ns,
            ],
        );
        for (ns, ifname, host) in [
            (&net.server_ns, &net.server_if, 1),
            (&net.client_ns, &net.client_if, 2),
        ] {
            let ip = |args: &[&str]| {
                let mut full = vec!["-n", ns.as_str()];
                full.extend_from_slice(args);
                sh("ip", &full);
            };
            ip(&["link", "set", "lo", "up"]);
            ip(&["link", "set", ifname, "up"]);
            // Two IPv4 subnets and two IPv6 /64s, so range bans can be shown to stop at their
            // edge. The client also has a second address in the first subnet.
            ip(&["addr", "add", &format!("10.{n}.1.{host}/24"), "dev", ifname]);
            ip(&["addr", "add", &format!("10.{n}.2.{host}/24"), "dev", ifname]);
            for prefix in ["fd00:b10c", "fd00:b10d"] {
                let addr = format!("{prefix}:{n:x}::{host}/64");
                ip(&["addr", "add", &addr, "dev", ifname, "nodad"]);
            }
            if host == 2 {
                ip(&["addr", "add", &format!("10.{n}.1.3/24"), "dev", ifname]);
                let addr = format!("fd00:b10c:{n:x}::3/64");
                ip(&["addr", "add", &addr, "dev", ifname, "nodad"]);
            }
        }
        net.pin_neighbours();
        net
    }

    /// Static ARP/NDP entries both ways: a ban also drops the banned source's neighbour
    /// solicitations, and a neighbour entry left failed by that would otherwise delay the first
    /// packet after an unban. The tests are about XDP verdicts, not neighbour discovery.
    fn pin_neighbours(&self) {
        let mac = |ns: &str, ifname: &str| {
            let out = Command::new("ip")
                .args(["-n", ns, "-j", "link", "show", ifname])
                .output()
                .expect("ip link show");
            let links: Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
            links[0]["address"].as_str().expect("mac").to_string()
        };
        let server_mac = mac(&self.server_ns, &self.server_if);
        let client_mac = mac(&self.client_ns, &self.client_if);
        let n = self.n();
        let mut server_addrs = vec![format!("10.{n}.1.1"), format!("10.{n}.2.1")];
        let mut client_addrs = vec![
            format!("10.{n}.1.2"),
            format!("10.{n}.2.2"),
            format!("10.{n}.1.3"),
        ];
        for prefix in ["fd00:b10c", "fd00:b10d"] {
            server_addrs.push(format!("{prefix}:{n:x}::1"));
            client_addrs.push(format!("{prefix}:{n:x}::2"));
        }
        client_addrs.push(format!("fd00:b10c:{n:x}::3"));
        for (ns, ifname, addrs, lladdr) in [
            (&self.client_ns, &self.client_if, &server_addrs, &server_mac),
            (&self.server_ns, &self.server_if, &client_addrs, &client_mac),
        ] {
            for addr in addrs {
                sh(
                    "ip",
                    &[
                        "-n",
                        ns,
                        "neigh",
                        "replace",
                        addr,
                        "lladdr",
                        lladdr,
                        "dev",
                        ifname,
                        "nud",
                        "permanent",
                    ],
                );
            }
        }
    }

    /// Takes the client's end of the veth down, so nothing reaches the server's interface.
    pub fn client_link_down(&self) {
        sh(
            "ip",
            &[
                "-n",
                &self.client_ns,
                "link",
                "set",
                &self.client_if,
                "down",
            ],
        );
    }

    fn n(&self) -> u32 {
        self.id % 250 + 1
    }

    /// The protected host's address in subnet 1 (IPv4).
    pub fn server_v4(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, self.n() as u8, 1, 1))
    }

    /// A client address: `subnet` 1 or 2, `host` 2 (or 3 in subnet 1).
    pub fn client_v4(&self, subnet: u8, host: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, self.n() as u8, subnet, host))
    }

    pub fn server_v6(&self) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(
            0xfd00,
            0xb10c,
            self.n() as u16,
            0,
            0,
            0,
            0,
            1,
        ))
    }

    /// A client IPv6 address: `net` 0xb10c or 0xb10d, `host` 2 (or 3 in 0xb10c).
    pub fn client_v6(&self, net: u16, host: u16) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(
            0xfd00,
            net,
            self.n() as u16,
            0,
            0,
            0,
            0,
            host,
        ))
    }

    /// The server's address in the same family and subnet as `from`.
    pub fn server_for(&self, from: IpAddr) -> IpAddr {
        match from {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], 1))
            }
            IpAddr::V6(v6) => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 1))
            }
        }
    }

    pub fn state_path(&self) -> PathBuf {
        self.state_dir.path().join("state.db")
    }

    fn command(&self, netns: Option<&str>) -> Command {
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(blocker_bin());
                c
            }
            None => Command::new(blocker_bin()),
        };
        command
            .env("BLOCKER_PIN_DIR", &self.pin_dir)
            .env("BLOCKER_STATE", self.state_path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        command
    }

    /// Runs `blocker ARGS` with this test's pin directory and state file.
    pub fn blocker(&self, args: &[&str]) -> Run {
        self.command(None)
            .args(args)
            .output()
            .expect("running blocker")
            .into()
    }

    /// Runs `blocker ARGS` with `input` on stdin.
    pub fn blocker_with_stdin(&self, args: &[&str], input: &str) -> Run {
        run_with_stdin(self.command(None).args(args), input.as_bytes())
    }

    /// Runs `blocker ARGS` inside the server namespace (for `load`, which names an interface).
    pub fn blocker_in_server(&self, args: &[&str]) -> Run {
        self.command(Some(&self.server_ns))
            .args(args)
            .output()
            .expect("running blocker")
            .into()
    }

    /// Starts `blocker ARGS` in the server namespace without waiting for it.
    pub fn spawn_in_server(&self, args: &[&str]) -> std::process::Child {
        self.command(Some(&self.server_ns))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting blocker")
    }

    /// Writes a config file into the test's directory and returns its path.
    pub fn config(&self, name: &str, toml: &str) -> String {
        let path = self.state_dir.path().join(name);
        std::fs::write(&path, toml).expect("writing config");
        path.to_string_lossy().into_owned()
    }

    /// Loads blocker on the server's veth with `rules` (TOML `[[rules]]` tables) as its only
    /// rules.
    pub fn load_with_rules(&self, rules: &str) -> Run {
        let config = self.config("rules.toml", rules);
        self.load(&["--config", &config])
    }

    /// Attaches an XDP program that passes everything to the client's end of the veth: a veth
    /// only delivers frames sent back with XDP_TX (rejects) when its peer runs XDP too.
    pub fn attach_client_xdp(&self) {
        let config = self.config(
            "client.toml",
            "rules = []\n[maps]\nblacklist = 16\nhistory = 16\n",
        );
        let out: Run = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.client_ns))
            .arg(blocker_bin())
            .args(["load", "--iface", &self.client_if, "--config", &config])
            .env("BLOCKER_PIN_DIR", self.client_pin_dir())
            .env(
                "BLOCKER_STATE",
                self.state_dir.path().join("client-state.db"),
            )
            .output()
            .expect("running blocker")
            .into();
        out.ok();
    }

    fn client_pin_dir(&self) -> PathBuf {
        PathBuf::from(format!("{}-client", self.pin_dir.display()))
    }

    /// Adds a second Ethernet interface to the server namespace (one end of a veth pair kept
    /// there), for tests of a load on another interface; returns its name.
    pub fn add_server_iface(&self) -> String {
        let (name, peer) = (format!("bk{}x", self.id), format!("bk{}y", self.id));
        sh(
            "ip",
            &[
                "-n",
                &self.server_ns,
                "link",
                "add",
                &name,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
            ],
        );
        sh("ip", &["-n", &self.server_ns, "link", "set", &name, "up"]);
        name
    }

    /// Adds another IPv4 address to the client, in subnet 1, and returns it.
    pub fn add_client_v4(&self, host: u8) -> IpAddr {
        let addr = self.client_v4(1, host);
        sh(
            "ip",
            &[
                "-n",
                &self.client_ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &self.client_if,
            ],
        );
        addr
    }

    /// `blocker load` on the server's veth, with extra arguments.
    pub fn load(&self, extra: &[&str]) -> Run {
        let mut args = vec!["load", "--iface", &self.server_if];
        args.extend_from_slice(extra);
        self.blocker_in_server(&args)
    }

    /// Packets counted under `reason` by `blocker status`.
    pub fn packets(&self, reason: &str) -> u64 {
        let status = self.blocker(&["status", "--json"]).ok().json();
        status["counters"]
            .as_array()
            .expect("counters")
            .iter()
            .find(|row| row["reason"] == reason)
            .unwrap_or_else(|| panic!("no counter {reason}: {status}"))["packets"]
            .as_u64()
            .expect("packets")
    }

    /// A TCP listener on the server that accepts and closes connections until the test ends.
    pub fn tcp_listener(&self, addr: IpAddr) -> SocketAddr {
        let listener = in_netns(&self.server_ns, move || {
            TcpListener::bind(SocketAddr::new(addr, 0)).expect("bind listener")
        });
        let local = listener.local_addr().expect("listener address");
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                drop(stream);
            }
        });
        local
    }

    /// Whether a TCP connection from `from` to `to` completes (the SYN and the reply pass).
    pub fn tcp_connects(&self, from: IpAddr, to: SocketAddr) -> bool {
        self.tcp_connect(from, to).is_ok()
    }

    /// A TCP connection attempt from `from` to `to`, closed at once if it succeeds.
    pub fn tcp_connect(&self, from: IpAddr, to: SocketAddr) -> std::io::Result<()> {
        self.tcp_stream(from, to).map(drop)
    }

    /// A TCP connection from `from` to `to`, left open.
    pub fn tcp_stream(&self, from: IpAddr, to: SocketAddr) -> std::io::Result<std::net::TcpStream> {
        in_netns(&self.client_ns, move || {
            let socket = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
            socket.bind(&SocketAddr::new(from, 0).into())?;
            socket.connect_timeout(&to.into(), PROBE_TIMEOUT)?;
            Ok(socket.into())
        })
    }

    /// Sends one datagram from `from` to `to` on a connected UDP socket and waits for an
    /// answer: `Err(ConnectionRefused)` when an ICMP port unreachable came back.
    pub fn udp_exchange(&self, from: IpAddr, to: SocketAddr) -> std::io::Result<()> {
        in_netns(&self.client_ns, move || {
            let socket = UdpSocket::bind(SocketAddr::new(from, 0))?;
            socket.connect(to)?;
            socket.set_read_timeout(Some(PROBE_TIMEOUT))?;
            socket.send(b"probe")?;
            let mut buf = [0u8; 16];
            socket.recv(&mut buf).map(drop)
        })
    }

    /// Whether a UDP datagram from `from` reaches a socket on the server at `to`.
    pub fn udp_delivered(&self, from: IpAddr, to: IpAddr) -> bool {
        let server = in_netns(&self.server_ns, move || {
            UdpSocket::bind(SocketAddr::new(to, 0)).expect("bind udp server")
        });
        let target = server.local_addr().expect("udp address");
        let payload = format!("probe-{}", self.id);
        let sent = payload.clone();
        in_netns(&self.client_ns, move || {
            let client = UdpSocket::bind(SocketAddr::new(from, 0)).expect("bind udp client");
            client.send_to(sent.as_bytes(), target).expect("send udp");
        });
        server
            .set_read_timeout(Some(PROBE_TIMEOUT))
            .expect("timeout");
        let mut buf = [0u8; 64];
        match server.recv_from(&mut buf) {
            Ok((len, peer)) => peer.ip() == from && &buf[..len] == payload.as_bytes(),
            Err(_) => false,
        }
    }

    /// Whether an ICMP echo from `from` to the server is answered.
    pub fn ping(&self, from: IpAddr) -> bool {
        let to = self.server_for(from);
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.client_ns))
            .args([
                "ping",
                "-c1",
                "-W1",
                "-I",
                &from.to_string(),
                &to.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// Whether traffic from `from` gets through: TCP, UDP and ICMP must agree.
    pub fn reaches(&self, from: IpAddr) -> bool {
        let to = self.server_for(from);
        let tcp = self.tcp_connects(from, self.tcp_listener(to));
        let udp = self.udp_delivered(from, to);
        let icmp = self.ping(from);
        assert!(
            tcp == udp && udp == icmp,
            "protocols disagree for {from}: tcp {tcp}, udp {udp}, icmp {icmp}"
        );
        tcp
    }

    /// Every row of the state database but the history, one line each in a stable order
    /// (empty if there is no database): what tests compare to see that nothing changed.
    pub fn state_text(&self) -> String {
        if !self.state_path().exists() {
            return String::new();
        }
        let db = self.state_db();
        let mut text = String::new();
        for table in [
            "bans",
            "allow",
            "rules",
            "offense_scores",
            "offense_bans",
            "counters",
        ] {
            let mut statement = db
                .prepare(&format!("SELECT * FROM {table} ORDER BY 1"))
                .expect("reading the state");
            let columns = statement.column_count();
            let mut rows = statement.query([]).expect("reading the state");
            while let Some(row) = rows.next().expect("reading the state") {
                let values: Vec<String> = (0..columns)
                    .map(|i| match row.get_ref(i).expect("a column") {
                        rusqlite::types::ValueRef::Null => "NULL".to_string(),
                        rusqlite::types::ValueRef::Integer(n) => n.to_string(),
                        rusqlite::types::ValueRef::Real(x) => x.to_string(),
                        rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                            String::from_utf8_lossy(t).into_owned()
                        }
                    })
                    .collect();
                text.push_str(&format!("{table}: {}\n", values.join(" | ")));
            }
        }
        text
    }

    /// The state database, to look at or to change as a hand edit would.
    pub fn state_db(&self) -> rusqlite::Connection {
        let db = rusqlite::Connection::open(self.state_path()).expect("opening the state");
        db.busy_timeout(Duration::from_secs(10))
            .expect("setting a busy timeout");
        db
    }

    /// The prefixes of the stored bans, sorted.
    pub fn stored_bans(&self) -> Vec<String> {
        let db = self.state_db();
        let mut statement = db
            .prepare("SELECT prefix FROM bans ORDER BY prefix")
            .expect("reading the state");
        let rows = statement
            .query_map([], |row| row.get::<_, String>(0))
            .expect("reading the state");
        rows.map(|row| row.expect("a prefix")).collect()
    }

    /// The ban of `prefix` (like `203.0.113.7/32`) as `blocker list --json` shows it, if any.
    pub fn ban_of(&self, prefix: &str) -> Option<Value> {
        let list = self.blocker(&["list", "--json"]).ok().json();
        list.as_array()
            .expect("a list")
            .iter()
            .find(|row| row["addr"] == prefix)
            .cloned()
    }
}

impl Default for TestNet {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        if self.pin_dir.exists() {
            let _ = self.blocker(&["unload"]);
            let _ = std::fs::remove_dir_all(&self.pin_dir);
        }
        let client_pins = self.client_pin_dir();
        if client_pins.exists() {
            let _ = self
                .command(None)
                .env("BLOCKER_PIN_DIR", &client_pins)
                .arg("unload")
                .output();
            let _ = std::fs::remove_dir_all(&client_pins);
        }
        // Deleting a namespace deletes the veth pair in it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.server_ns])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.client_ns])
            .output();
    }
}

//! Block-list feeds against a local HTTP server in the test's server namespace that serves a
//! changing list: listed prefixes are banned and dropped at the driver, a 304 renews them, a
//! refresh that drops a prefix lifts its ban, and a failed fetch keeps the last good set. An
//! https list server (`openssl s_server`, certificate from a CA the test makes) is trusted
//! through the feed's `ca_file` and refused without it.

use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use blocker_tests::{in_netns, require_root, TestNet};
use serde_json::Value;

/// What the list server answers, and what it was asked.
#[derive(Default)]
struct Served {
    /// `None` answers 500.
    body: Option<String>,
    etag: String,
    not_modified: usize,
    requests: usize,
}

/// Serves `served` at `/list.netset` on a port of `net`'s server address, inside its
/// namespace, one connection at a time, for at most two minutes.
fn list_server(net: &TestNet, served: Arc<Mutex<Served>>) -> SocketAddr {
    list_server_at(&net.server_ns, net.server_v4(), served)
}

/// [`list_server`] on `addr` in the namespace `ns`.
fn list_server_at(ns: &str, addr: IpAddr, served: Arc<Mutex<Served>>) -> SocketAddr {
    let listener = in_netns(ns, move || {
        TcpListener::bind(SocketAddr::new(addr, 0)).expect("binding the list server")
    });
    let local = listener.local_addr().expect("its address");
    listener.set_nonblocking(true).expect("non-blocking");
    thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(120) {
            let Ok((stream, _)) = listener.accept() else {
                thread::sleep(Duration::from_millis(20));
                continue;
            };
            stream.set_nonblocking(false).expect("blocking");
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            answer(stream, &served);
        }
    });
    local
}

fn answer(mut stream: std::net::TcpStream, served: &Mutex<Served>) {
    let mut reader = BufReader::new(stream.try_clone().expect("a clone"));
    let mut if_none_match = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("if-none-match") {
                if_none_match = Some(value.trim().to_string());
            }
        }
    }
    let mut served = served.lock().expect("the served list");
    served.requests += 1;
    let response = match &served.body {
        None => "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string(),
        Some(_) if if_none_match.as_deref() == Some(served.etag.as_str()) => {
            served.not_modified += 1;
            format!("HTTP/1.1 304 Not Modified\r\netag: {}\r\nconnection: close\r\n\r\n", served.etag)
        }
        Some(body) => format!(
            "HTTP/1.1 200 OK\r\netag: {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            served.etag,
            body.len()
        ),
    };
    let _ = stream.write_all(response.as_bytes());
}

fn feeds_json(net: &TestNet, config: &str) -> Value {
    net.blocker_in_server(&["feeds", "--config", config, "--json"])
        .ok()
        .json()
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_feed_bans_what_it_lists_renews_it_and_lifts_what_it_drops() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let (first, second, operators) = (
        net.client_v4(1, 2),
        net.client_v4(1, 3),
        net.client_v4(2, 2),
    );
    // The operator's own temporary ban on an address the feed also lists: the feed must
    // neither shorten it nor lift it.
    net.blocker(&[
        "ban",
        &operators.to_string(),
        "--for",
        "30d",
        "--reason",
        "operator",
    ])
    .ok();
    let operator_ban = net
        .ban_of(&format!("{operators}/32"))
        .expect("the operator's ban");
    let served = Arc::new(Mutex::new(Served {
        body: Some(format!(
            "# FireHOL netset\n{first}\n{operators}\n203.0.113.0/24\n"
        )),
        etag: "\"v1\"".into(),
        ..Served::default()
    }));
    let server = list_server(&net, served.clone());
    let url = format!("http://{server}/list.netset");
    let config = net.config(
        "feeds.toml",
        &format!(
            "[[feeds]]\nurl = \"{url}\"\nevery = \"1m\"\nban_for = \"1h\"\nmax_entries = 10\n"
        ),
    );
    let refresh = || {
        net.blocker_in_server(&["feeds", "--config", &config, "--refresh", "--force"])
            .ok()
    };

    refresh();
    let ban = net
        .ban_of(&format!("{first}/32"))
        .expect("the listed address is banned");
    assert_eq!(ban["kind"], "temporary", "{ban}");
    assert_eq!(ban["reason"], format!("feed {url}"), "{ban}");
    assert!(net.ban_of("203.0.113.0/24").is_some());
    assert!(!net.reaches(first), "the feed's ban does not drop");
    assert!(net.reaches(second));
    let listed = feeds_json(&net, &config);
    assert_eq!(listed[0]["entries"], 3, "{listed}");
    assert_eq!(listed[0]["error"], Value::Null, "{listed}");
    assert_eq!(
        net.ban_of(&format!("{operators}/32")),
        Some(operator_ban.clone()),
        "the feed rewrote the operator's ban"
    );

    // Unchanged: the conditional GET gets a 304, and the bans are renewed.
    thread::sleep(Duration::from_millis(1100));
    refresh();
    assert_eq!(
        served.lock().expect("served").not_modified,
        1,
        "no conditional GET"
    );
    let renewed = net.ban_of(&format!("{first}/32")).expect("still banned");
    assert!(
        renewed["expires_at"].as_str() > ban["expires_at"].as_str(),
        "not renewed: {ban} then {renewed}"
    );

    // The list drops the first address and adds the second.
    {
        let mut served = served.lock().expect("served");
        served.body = Some(format!("{second}\n203.0.113.0/24\n"));
        served.etag = "\"v2\"".into();
    }
    refresh();
    assert!(
        net.ban_of(&format!("{first}/32")).is_none(),
        "a dropped prefix stays banned"
    );
    assert!(net.reaches(first));
    assert!(!net.reaches(second));
    assert_eq!(
        net.ban_of(&format!("{operators}/32")),
        Some(operator_ban),
        "dropped from the feed, the operator's ban went too"
    );
    assert!(!net.reaches(operators));

    // The server fails: the last good set stays, and `blocker feeds` says why.
    served.lock().expect("served").body = None;
    refresh();
    assert!(!net.reaches(second), "a failed fetch lifted the bans");
    let listed = feeds_json(&net, &config);
    assert!(
        listed[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("500")),
        "{listed}"
    );
    assert_eq!(listed[0]["entries"], 2, "{listed}");

    // Over max_entries: refused, the last good set stays.
    {
        let mut served = served.lock().expect("served");
        let many: String = (0..20).map(|i| format!("198.51.100.{i}\n")).collect();
        served.body = Some(many);
        served.etag = "\"v3\"".into();
    }
    refresh();
    let listed = feeds_json(&net, &config);
    assert!(
        listed[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("max_entries = 10")),
        "{listed}"
    );
    assert!(net.ban_of("198.51.100.0/32").is_none());
    assert!(!net.reaches(second));
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_list_the_lock_out_check_refuses_renews_the_last_good_set() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let first = net.client_v4(1, 2);
    let served = Arc::new(Mutex::new(Served {
        body: Some(format!("{first}\n")),
        etag: "\"v1\"".into(),
        ..Served::default()
    }));
    let server = list_server(&net, served.clone());
    let config = net.config(
        "feeds.toml",
        &format!("[[feeds]]\nurl = \"http://{server}/list.netset\"\nban_for = \"1d\"\n"),
    );
    let refresh = || {
        net.blocker_in_server(&["feeds", "--config", &config, "--refresh", "--force"])
            .ok()
    };
    refresh();
    let ban = net.ban_of(&format!("{first}/32")).expect("banned");

    // A new list with a range the lock-out check refuses: it bans nothing, and the last good
    // set is renewed all the same (its bans would lapse otherwise, as every later refresh
    // meets the same list).
    {
        let mut served = served.lock().expect("served");
        served.body = Some(format!("{first}\n0.0.0.0/1\n"));
        served.etag = "\"v2\"".into();
    }
    thread::sleep(Duration::from_millis(1100));
    refresh();
    let listed = feeds_json(&net, &config);
    assert!(
        listed[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("0.0.0.0/1")),
        "{listed}"
    );
    assert!(net.ban_of("0.0.0.0/1").is_none());
    let renewed = net.ban_of(&format!("{first}/32")).expect("still banned");
    assert!(
        renewed["expires_at"].as_str() > ban["expires_at"].as_str(),
        "the last good set was not renewed: {ban} then {renewed}"
    );
    assert!(!net.reaches(first));
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_list_cannot_ban_the_server_it_comes_from() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    // The list server is another host (the client namespace), and lists itself.
    let (list_host, other) = (net.client_v4(1, 2), net.client_v4(1, 3));
    let served = Arc::new(Mutex::new(Served {
        body: Some(format!("{list_host}\n{other}\n")),
        etag: "\"v1\"".into(),
        ..Served::default()
    }));
    let server = list_server_at(&net.client_ns, list_host, served.clone());
    let config = net.config(
        "feeds.toml",
        &format!("[[feeds]]\nurl = \"http://{server}/list.netset\"\nban_for = \"1d\"\n"),
    );
    net.blocker_in_server(&["feeds", "--config", &config, "--refresh", "--force"])
        .ok();
    let listed = feeds_json(&net, &config);
    assert!(
        listed[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains(&list_host.to_string()) && e.contains("needs")),
        "{listed}"
    );
    assert!(net.ban_of(&format!("{list_host}/32")).is_none());
    assert!(net.reaches(list_host));
}

/// Runs `openssl` with `args` in `dir`, failing the test with its stderr.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`ca.pem`) and a server certificate it signs for `addr` (`server.pem`, `server.key`).
fn make_certificates(dir: &Path, addr: IpAddr) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "1",
                "-subj",
                "/CN=blocker test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign",
            ],
        ]
        .concat(),
    );
    let server_subject = format!("/CN={addr}");
    openssl(
        dir,
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                &server_subject,
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        format!("subjectAltName=IP:{addr}\nextendedKeyUsage=serverAuth\n"),
    )
    .expect("writing server.ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            "server.pem",
            "-extfile",
            "server.ext",
        ],
    );
}

/// `openssl s_server -WWW` serving the files of `dir` over TLS in the server namespace; killed
/// when dropped.
struct TlsListServer(Child);

impl TlsListServer {
    fn start(net: &TestNet, dir: &Path) -> (Self, SocketAddr) {
        let addr = SocketAddr::new(net.server_v4(), 8443);
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", net.server_ns))
            .args([
                "openssl",
                "s_server",
                "-quiet",
                "-WWW",
                "-cert",
                "server.pem",
            ])
            .args(["-key", "server.key", "-accept", &addr.to_string()])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting openssl s_server");
        let server = Self(child);
        let start = Instant::now();
        while !in_netns(&net.server_ns, move || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        }) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "openssl s_server does not listen on {addr}"
            );
            thread::sleep(Duration::from_millis(50));
        }
        (server, addr)
    }
}

impl Drop for TlsListServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn an_https_feed_is_trusted_through_its_ca_file_and_refused_without_it() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let (listed, other) = (net.client_v4(1, 2), net.client_v4(1, 3));
    let dir = tempfile::tempdir().expect("a temporary directory");
    make_certificates(dir.path(), net.server_v4());
    std::fs::write(dir.path().join("list.netset"), format!("{listed}\n")).expect("the list");
    let (_server, addr) = TlsListServer::start(&net, dir.path());
    let url = format!("https://{addr}/list.netset");
    let feed = format!("[[feeds]]\nurl = \"{url}\"\nevery = \"1m\"\nban_for = \"1h\"\n");
    let refresh = |config: &str| {
        net.blocker_in_server(&["feeds", "--config", config, "--refresh", "--force"])
            .ok();
        feeds_json(&net, config)
    };

    // The system store does not know the test's CA: refused, nothing banned.
    let untrusted = net.config("untrusted.toml", &feed);
    let status = refresh(&untrusted);
    let error = status[0]["error"].as_str().unwrap_or_default().to_string();
    assert!(
        error.contains("certificate") && error.contains("UnknownIssuer"),
        "the error does not name the certificate problem: {status}"
    );
    assert!(net.ban_of(&format!("{listed}/32")).is_none());
    assert!(net.reaches(listed), "an untrusted list banned");

    // With the CA as ca_file: fetched over TLS, banned, dropped at the driver.
    let ca = dir.path().join("ca.pem");
    let trusted = net.config(
        "trusted.toml",
        &format!("{feed}ca_file = \"{}\"\n", ca.display()),
    );
    let status = refresh(&trusted);
    assert_eq!(status[0]["error"], Value::Null, "{status}");
    assert_eq!(status[0]["entries"], 1, "{status}");
    let ban = net
        .ban_of(&format!("{listed}/32"))
        .expect("the listed address is banned");
    assert_eq!(ban["reason"], format!("feed {url}"), "{ban}");
    let drops = net.packets("manual_ban");
    assert!(!net.reaches(listed), "the https feed's ban does not drop");
    assert!(
        net.packets("manual_ban") > drops,
        "not dropped at the driver"
    );
    assert!(net.reaches(other));
}

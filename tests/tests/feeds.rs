//! Block-list feeds against a local HTTP server in the test's server namespace that serves a
//! changing list: listed prefixes are banned and dropped at the driver, a 304 renews them, a
//! refresh that drops a prefix lifts its ban, and a failed fetch keeps the last good set.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener},
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
    let addr = net.server_v4();
    let listener = in_netns(&net.server_ns, move || {
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

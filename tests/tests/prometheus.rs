//! contrib/prometheus and contrib/grafana: the alert rules pass `promtool check rules` and their
//! unit tests; a real Prometheus scrapes a running daemon while real traffic is dropped, and
//! every query of the Grafana dashboard evaluates on its data, with the values the traffic says.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use blocker_tests::{
    chart::{self, Panel, Series},
    daemon::DaemonGuard,
    in_netns, require_root, TestNet,
};
use serde_json::Value;

fn contrib(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../contrib")
        .join(path)
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(contrib("prometheus"))
        .output()
        .expect("running promtool (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn prometheus_alert_rules_pass_promtool_check_and_their_unit_tests() {
    require_root();
    promtool(&["check", "rules", "blocker-alerts.yml"]);
    promtool(&["test", "rules", "blocker-alerts.test.yml"]);
    promtool(&["check", "config", "prometheus.yml"]);
}

/// Prometheus on the server namespace's loopback (private to the namespace), scraping the
/// daemon every second; killed on drop.
struct Prometheus {
    child: Child,
    ns: String,
    log: PathBuf,
}

/// Where Prometheus listens inside the test's server namespace.
const PROMETHEUS: &str = "127.0.0.1:9090";

impl Prometheus {
    fn start(net: &TestNet, daemon: &DaemonGuard) -> Self {
        let dir = net.state_dir.path().join("prometheus");
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
                 rule_files: [{rules:?}]\n\
                 scrape_configs:\n  - job_name: blocker\n    static_configs:\n      \
                 - targets: [\"127.0.0.1:{port}\"]\n",
                rules = contrib("prometheus/blocker-alerts.yml"),
                port = daemon.port,
            ),
        )
        .expect("prometheus config");
        let log = dir.join("prometheus.log");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", net.server_ns))
            .arg("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("prometheus log"))
            .spawn()
            .expect("starting prometheus (cargo xtask setup installs it)");
        let prometheus = Self {
            child,
            ns: net.server_ns.clone(),
            log,
        };
        prometheus.wait_ready();
        prometheus
    }

    /// Waits up to 30 s for `/-/ready`.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", self.ns))
                .args(["curl", "-sf", "--max-time", "2"])
                .arg(format!("http://{PROMETHEUS}/-/ready"))
                .output()
                .is_ok_and(|out| out.status.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus did not come up:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// The `data.result` of an instant query, panicking with Prometheus' error otherwise.
    fn query(&self, expr: &str) -> Vec<Value> {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .args(["curl", "-sS", "--max-time", "5", "-G"])
            .arg("--data-urlencode")
            .arg(format!("query={expr}"))
            .arg(format!("http://{PROMETHEUS}/api/v1/query"))
            .output()
            .expect("running curl");
        let body = String::from_utf8_lossy(&out.stdout);
        let answer: Value = serde_json::from_str(&body).unwrap_or_else(|err| {
            panic!(
                "{expr}: not JSON ({err}): {body}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("{expr}: no result vector: {answer}"))
    }

    /// A range query over the last `seconds`, one point a second, each series named by `label`.
    fn range(&self, expr: &str, seconds: u64, label: &str) -> Vec<Series> {
        let end = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .args(["curl", "-sS", "--max-time", "5", "-G"])
            .arg("--data-urlencode")
            .arg(format!("query={expr}"))
            .args(["--data-urlencode", &format!("start={}", end - seconds)])
            .args(["--data-urlencode", &format!("end={end}")])
            .args(["--data-urlencode", "step=1"])
            .arg(format!("http://{PROMETHEUS}/api/v1/query_range"))
            .output()
            .expect("running curl");
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
            panic!("{expr}: {err}: {}", String::from_utf8_lossy(&out.stderr))
        });
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        let result = answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        result
            .iter()
            .map(|series| Series {
                label: series["metric"][label].as_str().unwrap_or(expr).to_string(),
                points: series["values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|point| {
                        let at = point[0].as_f64()? - (end - seconds) as f64;
                        Some((at, point[1].as_str()?.parse().ok()?))
                    })
                    .collect(),
            })
            .collect()
    }

    /// Each series' value by the value of `label`.
    fn by_label(&self, expr: &str, label: &str) -> BTreeMap<String, f64> {
        self.query(expr)
            .iter()
            .map(|series| {
                let key = series["metric"][label].as_str().unwrap_or("").to_string();
                (key, sample(series))
            })
            .collect()
    }

    /// The single series' value, if there is one yet.
    fn value(&self, expr: &str) -> Option<f64> {
        self.query(expr).first().map(sample)
    }

    /// Polls `expr` for up to 30 s until `done` holds for its value.
    fn wait_for(&self, expr: &str, done: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let value = self.value(expr);
            if let Some(value) = value.filter(|value| done(*value)) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{expr} stayed at {value:?}; prometheus log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sample(series: &Value) -> f64 {
    series["value"][1]
        .as_str()
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no sample in {series}"))
}

/// Every query of the dashboard, by panel title, with Grafana's variables given the values a
/// dashboard showing all instances over a short range would give them.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(contrib("grafana/blocker.json")).expect("dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    panels
        .iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().expect("panel title").to_string();
            let targets = panel["targets"].as_array().cloned().unwrap_or_default();
            targets.into_iter().map(move |target| {
                let expr = target["expr"]
                    .as_str()
                    .expect("target expr")
                    .replace("$__rate_interval", "1m")
                    .replace("$instance", ".+");
                (title.clone(), expr)
            })
        })
        .collect()
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn prometheus_scrapes_the_daemon_and_the_dashboard_follows_the_traffic() {
    require_root();
    let net = TestNet::new();
    let listener = net.tcp_listener(net.server_v4());
    let config = net.config(
        "daemon.toml",
        &format!(
            "[[rules]]\nname = \"probe\"\nproto = \"tcp\"\ndport = {}\nhitcount = 3\n\
             seconds = 30\nblacklist_for = \"1h\"\n",
            listener.port()
        ),
    );
    net.load(&["--config", &config]).ok();
    let daemon = DaemonGuard::start(&net, &config);
    let prometheus = Prometheus::start(&net, &daemon);
    prometheus.wait_for(r#"up{job="blocker"}"#, |up| up == 1.0);
    prometheus.wait_for(r#"blocker_packets_total{reason="manual_ban"}"#, |v| {
        v == 0.0
    });

    let started = Instant::now();
    // 50 datagrams from a banned source, 5 a second: each one dropped as a manual ban.
    let banned = net.client_v4(1, 2);
    net.blocker(&["ban", &banned.to_string(), "--reason", "test"])
        .ok();
    let target = SocketAddr::new(net.server_for(banned), 9);
    in_netns(&net.client_ns, move || {
        let socket = UdpSocket::bind(SocketAddr::new(banned, 0)).expect("bind");
        for _ in 0..10 {
            for _ in 0..5 {
                socket.send_to(b"dropped", target).expect("send");
            }
            thread::sleep(Duration::from_secs(1));
        }
    });
    // A prober blacklisted by the rule on its fourth connection.
    let prober = net.client_v4(1, 3);
    for attempt in 1..=3 {
        assert!(net.tcp_connects(prober, listener), "try {attempt} passes");
    }
    assert!(!net.tcp_connects(prober, listener), "the fourth is dropped");

    let dropped = net.packets("manual_ban");
    assert_eq!(
        dropped, 50,
        "every datagram from the banned source is dropped"
    );
    let rules = net.blocker(&["rule", "list", "--json"]).ok().json();
    let events = rules[0]["events_seen"].as_u64().expect("events_seen") as f64;
    assert!(events >= 4.0, "{rules}");
    prometheus.wait_for(r#"blocker_packets_total{reason="manual_ban"}"#, |v| {
        v == dropped as f64
    });
    prometheus.wait_for(r#"blocker_rule_events_total{rule="probe"}"#, |v| {
        v == events
    });
    assert_eq!(
        prometheus.value(r#"blocker_rule_blacklisted_total{rule="probe"}"#),
        Some(1.0)
    );

    // Every dashboard query evaluates; the ones the traffic moved show it.
    let queries = dashboard_queries();
    assert!(queries.len() >= 13, "{queries:?}");
    let results: Vec<(String, String, Vec<Value>)> = queries
        .into_iter()
        .map(|(title, expr)| {
            let result = prometheus.query(&expr);
            (title, expr, result)
        })
        .collect();
    let expr_of = |title: &str| {
        results
            .iter()
            .find(|(panel, _, _)| panel == title)
            .map(|(_, expr, _)| expr.clone())
            .unwrap_or_else(|| panic!("no panel {title:?}"))
    };
    let drops = prometheus.by_label(&expr_of("Drop rate by reason"), "reason");
    assert!(
        drops.get("manual_ban").is_some_and(|rate| *rate > 0.0),
        "{drops:?}"
    );
    assert!(
        drops.get("rule_triggered").is_some_and(|rate| *rate > 0.0),
        "{drops:?}"
    );
    let kinds = prometheus.by_label(&expr_of("Entries in force by kind"), "kind");
    assert_eq!(kinds.get("permanent"), Some(&1.0), "{kinds:?}");
    assert_eq!(kinds.get("dynamic"), Some(&1.0), "{kinds:?}");
    let rules = prometheus.by_label(&expr_of("Rule events and blacklistings"), "rule");
    assert!(
        rules.get("probe").is_some_and(|rate| *rate > 0.0),
        "{rules:?}"
    );
    let issued = prometheus.by_label(&expr_of("Bans issued by source"), "source");
    assert!(issued.get("cli").is_some_and(|n| *n > 0.0), "{issued:?}");
    let fill = prometheus.by_label(&expr_of("Map fill"), "map");
    let status = net.blocker(&["status", "--json"]).ok().json();
    let ban_capacity = status["maps"]
        .as_array()
        .expect("maps")
        .iter()
        .find(|map| map["name"] == "BAN_V4")
        .and_then(|map| map["capacity"].as_f64())
        .expect("BAN_V4 capacity");
    assert_eq!(fill.get("BAN_V4"), Some(&(1.0 / ban_capacity)), "{fill:?}");
    assert_eq!(prometheus.value(&expr_of("Daemon up")), Some(1.0));
    let share = prometheus
        .value(&expr_of("Drop share"))
        .expect("drop share");
    assert!(share > 0.0 && share <= 1.0, "{share}");
    assert_eq!(prometheus.value(&expr_of("State readable")), Some(1.0));

    // A picture of four panels from this run's data (the README shows a copy).
    let seconds = started.elapsed().as_secs() + 5;
    let panel = |title: &str, label: &str| Panel {
        title: title.to_string(),
        series: prometheus.range(&expr_of(title).replace("[1m]", "[3s]"), seconds, label),
    };
    let panels = [
        panel("Drop rate by reason", "reason"),
        panel("Packets by verdict", "action"),
        panel("Rule events and blacklistings", "rule"),
        panel("Entries in force by kind", "kind"),
    ];
    assert!(panels.iter().all(|panel| !panel.series.is_empty()));
    let picture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard.svg");
    std::fs::write(&picture, chart::svg(&panels)).expect("writing the dashboard picture");
}

//! `blocker analyze`: seed 003's bunch analysis of an access log, plain and gzipped, and its
//! bans enforced at the driver.

use std::{fmt::Write as _, fs::File, io::Write as _, net::IpAddr, path::Path};

use blocker_tests::{require_root, TestNet};
use flate2::{write::GzEncoder, Compression};
use serde_json::Value;

/// 2012-02-18 10:00:00 +0100, the day of the seed's first example.
const START: i64 = 1_329_555_600;

fn clf_time(second: i64) -> String {
    // Within one day of START, in +0100.
    let local = second - START + 10 * 3600;
    format!(
        "18/Feb/2012:{:02}:{:02}:{:02} +0100",
        local / 3600,
        local / 60 % 60,
        local % 60
    )
}

fn line(log: &mut String, addr: IpAddr, second: i64, path: &str) {
    writeln!(
        log,
        r#"{addr} - - [{}] "GET {path} HTTP/1.1" 200 5120 "-" "Mozilla/5.0 (X11; Linux x86_64)""#,
        clf_time(second)
    )
    .unwrap();
}

/// A day of a small site: `clicker` requests 14 pages 1 s apart at 10:30 (and again, slowly,
/// later); each visitor reads a few pages, each page fetched with its 12 images, stylesheet and
/// script within a second; one visitor clicks through pages in bunches of 3, 20 times; a line
/// of garbage and a line of a virtual-host log in between.
fn access_log(clicker: IpAddr, visitors: &[IpAddr]) -> String {
    let mut events: Vec<(i64, IpAddr, String)> = Vec::new();
    for i in 0..14 {
        events.push((START + 1800 + i, clicker, format!("/article/{i}")));
    }
    for i in 0..5 {
        events.push((START + 7200 + i * 30, clicker, format!("/slow/{i}")));
    }
    for (v, &visitor) in visitors.iter().enumerate() {
        let v = v as i64;
        for page in 0..4 {
            let at = START + 60 + v * 97 + page * 45;
            events.push((at, visitor, format!("/page/{page}")));
            for asset in 0..12 {
                events.push((at, visitor, format!("/img/{page}-{asset}.jpg")));
            }
            events.push((at + 1, visitor, "/style.css".into()));
            events.push((at + 1, visitor, "/app.js?v=2".into()));
        }
    }
    let threes = visitors[0];
    for bunch in 0..20 {
        for i in 0..3 {
            events.push((START + 3600 + bunch * 300 + i, threes, format!("/b/{i}")));
        }
    }
    events.sort_by_key(|(at, _, _)| *at);
    let mut log = String::new();
    for (n, (at, addr, path)) in events.iter().enumerate() {
        if n == 10 {
            log.push_str("\u{1}\u{2} not a log line\n");
        }
        if n == 20 {
            log.push_str("www.example.org:443 ");
        }
        line(&mut log, *addr, *at, path);
    }
    log
}

fn write_logs(dir: &Path, log: &str) -> (String, String) {
    let plain = dir.join("access.log");
    std::fs::write(&plain, log).unwrap();
    let gz = dir.join("access.log.1.gz");
    let mut encoder = GzEncoder::new(File::create(&gz).unwrap(), Compression::default());
    encoder.write_all(log.as_bytes()).unwrap();
    encoder.finish().unwrap();
    (
        plain.to_string_lossy().into_owned(),
        gz.to_string_lossy().into_owned(),
    )
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn analyze_flags_exactly_the_clicker_in_plain_and_gzipped_logs() {
    require_root();
    let net = TestNet::new();
    let clicker = net.client_v4(1, 2);
    let visitors: Vec<IpAddr> = (3..9).map(|host| net.client_v4(1, host)).collect();
    let (plain, gz) = write_logs(net.state_dir.path(), &access_log(clicker, &visitors));
    for log in [&plain, &gz] {
        let run = net.blocker(&["analyze", log, "--json"]).ok();
        let flagged = run.json();
        let flagged = flagged.as_array().expect("an array");
        assert_eq!(flagged.len(), 1, "{log}: {flagged:?}");
        let flag = &flagged[0];
        assert_eq!(flag["addr"], clicker.to_string());
        assert_eq!(flag["date"], "2012-02-18");
        assert_eq!(flag["largest_bunch"], 14);
        assert_eq!(flag["reason"], "clicks: bunch of 14 requests");
        assert!(
            run.stderr.contains("not an access log line"),
            "{}",
            run.stderr
        );
    }
    let text = net.blocker(&["analyze", &plain]).ok().stdout;
    assert!(
        text.lines()
            .any(|line| line.ends_with(&format!("{clicker} clicks: bunch of 14 requests"))),
        "{text}"
    );
    // Counting every request, each visitor's page with its assets is a bunch of 15.
    let every = net
        .blocker(&["analyze", &plain, "--json", "--all-requests"])
        .ok()
        .json();
    assert_eq!(
        every.as_array().map(Vec::len),
        Some(1 + visitors.len()),
        "{every}"
    );
    // Ten bunches of 3 make bunches of 4 with min-bunch 3.
    let threes = net
        .blocker(&["analyze", &plain, "--json", "--min-bunch", "3"])
        .ok()
        .json();
    let addrs: Vec<&Value> = threes
        .as_array()
        .unwrap()
        .iter()
        .map(|f| &f["addr"])
        .collect();
    assert!(
        addrs.contains(&&Value::from(visitors[0].to_string())),
        "{threes}"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn analyze_ban_drops_the_clicker_at_the_driver_and_no_one_else() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let clicker = net.client_v4(1, 2);
    let visitor = net.client_v4(1, 3);
    let (_, gz) = write_logs(net.state_dir.path(), &access_log(clicker, &[visitor]));
    assert!(net.reaches(clicker), "traffic passes before the ban");
    let run = net.blocker(&["analyze", &gz, "--ban", "--for", "1h"]).ok();
    assert!(
        run.stdout.contains("clicks: bunch of 14 requests"),
        "{}",
        run.stdout
    );
    assert!(!net.reaches(clicker), "the clicker is dropped");
    assert!(net.reaches(visitor), "the visitor still passes");
    assert!(net.packets("manual_ban") >= 3, "dropped as a ban");
    assert_eq!(net.stored_bans(), vec![format!("{clicker}/32")]);
    let listed = net.blocker(&["list", "bans", "--json"]).ok().json();
    let ban = &listed.as_array().expect("an array")[0];
    assert_eq!(ban["reason"], "clicks: bunch of 14 requests", "{listed}");
    assert!(ban["expires_at"].is_string(), "--for sets an expiry: {ban}");
}

//! Log jails in `blocker daemon`: a real OpenSSH server guessed at from the client namespace
//! gets the source banned at the driver (another client still connects); files are followed
//! through rename-and-create and copytruncate rotation and when created after the start; a
//! restart resumes at the saved position (no line twice, none missed); and the journal, written
//! by systemd-journal-remote and read through journalctl, bans the same way.

use std::{
    io::Write,
    net::{IpAddr, SocketAddr},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use blocker_tests::{
    daemon::{json, DaemonGuard},
    logs::{append, cpu_time, write_journal, Sshd},
    require_root, TestNet,
};

/// A config without rate rules (so only the jail bans) and with `jails`.
fn jail_config(net: &TestNet, jails: &str) -> String {
    net.config("jails.toml", &format!("rules = []\n{jails}"))
}

fn banned(net: &TestNet) -> Vec<String> {
    net.blocker(&["list", "bans", "--json"])
        .ok()
        .json()
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|row| row["addr"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn is_banned(net: &TestNet, addr: IpAddr) -> bool {
    banned(net).contains(&format!("{addr}/32"))
}

/// Waits up to `seconds` for `addr` to be banned.
fn wait_banned(net: &TestNet, daemon: &DaemonGuard, addr: IpAddr, seconds: u64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !is_banned(net, addr) {
        assert!(
            Instant::now() < deadline,
            "{addr} was not banned; bans: {:?}; daemon log:\n{}",
            banned(net),
            daemon.log_text()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// The jail's status from `GET /v1/jails` over the socket.
fn jail_status(daemon: &DaemonGuard, name: &str) -> serde_json::Value {
    let (status, body) = daemon.curl_socket(&["/v1/jails"]);
    assert_eq!(status, 200, "{body}");
    json(&body)
        .as_array()
        .and_then(|jails| jails.iter().find(|jail| jail["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no jail {name} in {body}"))
}

/// Waits up to 5 s until the jail has read `lines` lines.
fn wait_lines(daemon: &DaemonGuard, name: &str, lines: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = jail_status(daemon, name);
        if status["lines"].as_u64() == Some(lines) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "jail {name} read {} lines, not {lines}: {status}",
            status["lines"]
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// A failed password line as sshd writes it to syslog, without the date.
fn failure(addr: IpAddr) -> String {
    format!("srv sshd[4242]: Failed password for root from {addr} port 50022 ssh2\n")
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn wrong_ssh_passwords_ban_the_source_at_the_driver_and_another_client_still_connects() {
    require_root();
    let net = TestNet::new();
    let sshd = Sshd::start(&net);
    let config = jail_config(
        &net,
        &format!(
            "[[jails]]\nname = \"sshd\"\nfilter = \"sshd\"\nlogpath = [\"{}\"]\n\
             maxretry = 3\nfindtime = \"10m\"\nbantime = \"1h\"\n",
            sshd.log.display()
        ),
    );
    net.load(&["--config", &config]).ok();
    let daemon = DaemonGuard::start(&net, &config);
    let guesser = net.client_v4(1, 2);
    let other = net.client_v4(1, 3);
    let server = SocketAddr::new(net.server_v4(), 22);
    for attempt in 1..=6 {
        sshd.guess(&net, guesser);
        if attempt >= 3 {
            let deadline = Instant::now() + Duration::from_secs(3);
            while !is_banned(&net, guesser) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(100));
            }
        }
        if is_banned(&net, guesser) {
            assert!(
                attempt >= 3,
                "banned after {attempt} guesses, before maxretry"
            );
            break;
        }
    }
    wait_banned(&net, &daemon, guesser, 1);
    let listed = net.blocker(&["list", "bans", "--json"]).ok().json();
    let reason = listed[0]["reason"].as_str().unwrap_or_default().to_string();
    assert!(
        reason.starts_with("jail sshd: 3 failures in 10m (last: "),
        "{listed}"
    );
    assert!(
        !net.tcp_connects(guesser, server),
        "the banned source's SYN is dropped at the driver"
    );
    assert!(
        net.tcp_connects(other, server),
        "a client from another address still connects"
    );
    let status = jail_status(&daemon, "sshd");
    assert!(status["matches"].as_u64().unwrap_or(0) >= 3, "{status}");
    assert_eq!(status["bans"], 1, "{status}");
    let (_, metrics) = daemon.curl(&["/metrics"]);
    assert!(
        metrics.contains("blocker_bans_issued_total{source=\"log\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("blocker_log_lines_total{jail=\"sshd\"}"),
        "{metrics}"
    );
    let events = net.state_db().query_row(
        "SELECT count(*) FROM history WHERE source = 'log' AND prefix = ?1",
        [format!("{guesser}/32")],
        |row| row.get::<_, i64>(0),
    );
    assert_eq!(
        events.ok(),
        Some(1),
        "the ban is in the history events read"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn files_are_followed_through_rotation_truncation_and_late_creation() {
    require_root();
    let net = TestNet::new();
    let dir = net.state_dir.path();
    let (renamed, truncated, late) = (
        dir.join("renamed.log"),
        dir.join("truncated.log"),
        dir.join("late.log"),
    );
    append(&renamed, "");
    append(&truncated, "");
    let config = jail_config(
        &net,
        &format!(
            "[[jails]]\nname = \"files\"\nfilter = \"sshd\"\n\
             logpath = [\"{}\", \"{}\", \"{}\"]\nmaxretry = 3\n",
            renamed.display(),
            truncated.display(),
            late.display()
        ),
    );
    net.load(&["--config", &config]).ok();
    let daemon = DaemonGuard::start(&net, &config);
    let (a, b, c) = (
        net.client_v4(1, 2),
        net.client_v4(1, 3),
        net.client_v4(2, 2),
    );

    // Rename and create: two failures before, one in the new file.
    append(&renamed, &failure(a).repeat(2));
    wait_lines(&daemon, "files", 2);
    std::fs::rename(&renamed, dir.join("renamed.log.1")).unwrap();
    append(&renamed, &failure(a));
    wait_banned(&net, &daemon, a, 5);

    // copytruncate: two failures, the file copied and emptied, then one more.
    append(&truncated, &failure(b).repeat(2));
    wait_lines(&daemon, "files", 5);
    std::fs::copy(&truncated, dir.join("truncated.log.1")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&truncated)
        .unwrap()
        .set_len(0)
        .unwrap();
    thread::sleep(Duration::from_millis(600));
    append(&truncated, &failure(b));
    wait_banned(&net, &daemon, b, 5);

    // A file that did not exist when the daemon started.
    assert!(!is_banned(&net, c));
    append(&late, &failure(c).repeat(3));
    wait_banned(&net, &daemon, c, 5);
    let status = wait_lines(&daemon, "files", 9);
    assert_eq!(status["bans"], 3, "{status}");
    let issued = net.state_db().query_row(
        "SELECT issued FROM counters WHERE source = 'log'",
        [],
        |row| row.get::<_, i64>(0),
    );
    assert_eq!(issued.ok(), Some(3), "bans issued by source log");
    // `blocker status` asks the daemon for its jails.
    let text = net
        .blocker(&["status", "--socket", &daemon.socket])
        .ok()
        .stdout;
    let late_at = format!("{} at byte {}", late.display(), failure(c).len() * 3);
    assert!(text.contains("files ") && text.contains(&late_at), "{text}");
    let status = net
        .blocker(&["status", "--json", "--socket", &daemon.socket])
        .ok()
        .json();
    assert_eq!(status["jails"][0]["name"], "files", "{status}");
    assert_eq!(
        status["jails"][0]["files"].as_array().map(Vec::len),
        Some(3)
    );
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_restart_resumes_at_the_saved_position_without_counting_a_line_twice() {
    require_root();
    let net = TestNet::new();
    let log = net.state_dir.path().join("auth.log");
    append(&log, "");
    let config = jail_config(
        &net,
        &format!(
            "[[jails]]\nname = \"restart\"\nfilter = \"sshd\"\nlogpath = [\"{}\"]\nmaxretry = 3\n",
            log.display()
        ),
    );
    net.load(&["--config", &config]).ok();
    let source = net.client_v4(1, 2);
    let mut daemon = DaemonGuard::start(&net, &config);
    append(&log, &failure(source).repeat(2));
    wait_lines(&daemon, "restart", 2);
    // SIGTERM: the daemon saves the position as it stops.
    let stopped = Command::new("kill")
        .args(["-TERM", &daemon.child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.is_running() {
        assert!(Instant::now() < deadline, "the daemon did not stop");
        thread::sleep(Duration::from_millis(100));
    }
    let size = std::fs::metadata(&log).unwrap().len() as i64;
    let saved: i64 = net
        .state_db()
        .query_row(
            "SELECT offset FROM log_positions WHERE jail = 'restart'",
            [],
            |row| row.get(0),
        )
        .expect("a saved position");
    assert_eq!(saved, size, "the position is past the last line read");
    drop(daemon);

    // Written while the daemon was down: read after the restart, and only that.
    append(&log, &failure(source));
    let daemon = DaemonGuard::start(&net, &config);
    let status = wait_lines(&daemon, "restart", 1);
    assert_eq!(status["matches"], 1, "{status}");
    thread::sleep(Duration::from_millis(500));
    assert_eq!(jail_status(&daemon, "restart")["lines"], 1);
    assert!(
        !is_banned(&net, source),
        "the two lines before the restart were not counted again"
    );
    append(&log, &failure(source).repeat(2));
    wait_banned(&net, &daemon, source, 5);
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn journal_entries_of_the_matching_unit_ban() {
    require_root();
    let net = TestNet::new();
    let journal = net.state_dir.path().join("journal");
    std::fs::create_dir_all(&journal).unwrap();
    let (guesser, elsewhere) = (net.client_v4(1, 2), net.client_v4(1, 3));
    let message = |addr: IpAddr| format!("Failed password for root from {addr} port 50022 ssh2");
    // An entry from before the daemon: never read.
    write_journal(&journal, "ssh.service", &[message(guesser)]);
    let config = jail_config(
        &net,
        &format!(
            "[[jails]]\nname = \"journal\"\nfilter = \"sshd\"\n\
             journal = [\"_SYSTEMD_UNIT=ssh.service\"]\njournal_directory = \"{}\"\n\
             maxretry = 3\n",
            journal.display()
        ),
    );
    net.load(&["--config", &config]).ok();
    let daemon = DaemonGuard::start(&net, &config);
    thread::sleep(Duration::from_millis(1500));
    // Another unit's lines do not match the jail's expression.
    write_journal(&journal, "other.service", &vec![message(elsewhere); 5]);
    write_journal(&journal, "ssh.service", &vec![message(guesser); 2]);
    wait_lines(&daemon, "journal", 2);
    assert!(!is_banned(&net, guesser), "two failures are not three");
    write_journal(&journal, "ssh.service", &[message(guesser)]);
    wait_banned(&net, &daemon, guesser, 10);
    assert!(!is_banned(&net, elsewhere));
    let status = jail_status(&daemon, "journal");
    assert!(status["journal_cursor"].as_str().is_some(), "{status}");
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn the_daemon_keeps_up_with_a_log_appended_at_50k_lines_a_second_using_under_a_core() {
    require_root();
    let net = TestNet::new();
    let log = net.state_dir.path().join("busy.log");
    append(&log, "");
    let config = jail_config(
        &net,
        &format!(
            "[[jails]]\nname = \"busy\"\nfilter = \"sshd\"\nlogpath = [\"{}\"]\nmaxretry = 1000\n",
            log.display()
        ),
    );
    net.load(&["--config", &config]).ok();
    let daemon = DaemonGuard::start(&net, &config);
    let seconds = 5;
    let rate = 50_000u64;
    let before = cpu_time(daemon.child.id());
    let start = Instant::now();
    let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    let mut written = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        let mut batch = String::new();
        while written < due {
            // About 5% failures, from many sources; the rest other sshd and cron chatter.
            batch.push_str(&match written % 20 {
                0 => format!(
                    "srv sshd[{}]: Failed password for root from 192.0.2.{} port 5022 ssh2\n",
                    written % 30_000,
                    written % 250 + 1
                ),
                1..=9 => format!(
                    "srv sshd[{}]: Accepted publickey for deploy from 198.51.100.7 port 40022 ssh2\n",
                    written % 30_000
                ),
                _ => format!(
                    "srv CRON[{}]: pam_unix(cron:session): session opened for user root(uid=0)\n",
                    written % 30_000
                ),
            });
            written += 1;
        }
        file.write_all(batch.as_bytes()).unwrap();
        thread::sleep(Duration::from_millis(10));
    }
    let status = wait_lines(&daemon, "busy", written);
    let used = cpu_time(daemon.child.id()) - before;
    let elapsed = start.elapsed();
    let share = used.as_secs_f64() / elapsed.as_secs_f64();
    println!(
        "followed {written} lines in {elapsed:?} with {used:?} of CPU ({:.0}% of a core); {status}",
        share * 100.0
    );
    assert!(
        share < 1.0,
        "the daemon used {:.0}% of a core",
        share * 100.0
    );
    assert_eq!(
        status["matches"].as_u64(),
        Some(written.div_ceil(20)),
        "{status}"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn check_config_names_the_jail_and_what_is_wrong_in_one_line() {
    require_root();
    let net = TestNet::new();
    for (jail, expected) in [
        (
            "filter = \"no-such-filter\"\nlogpath = [\"/var/log/x.log\"]",
            "no-such-filter",
        ),
        (
            "filter = \"sshd\"\nlogpath = [\"/var/log/[x.log\"]",
            "not a valid glob",
        ),
        (
            "filter = \"sshd\"\nlogpath = [\"/var/log/x.log\"]\nmaxretry = 0",
            "maxretry must be at least 1",
        ),
    ] {
        let config = jail_config(&net, &format!("[[jails]]\nname = \"bad\"\n{jail}\n"));
        let run = net.blocker(&["daemon", "--check-config", &config]);
        assert_eq!(run.code, 2, "{}", run.stderr);
        let message = run.stderr.trim();
        assert!(
            message.contains("[[jails]] \"bad\"") && message.contains(expected),
            "{message}"
        );
        assert_eq!(message.lines().count(), 1, "{message}");
    }
    let good = jail_config(
        &net,
        "[[jails]]\nname = \"ok\"\nfilter = \"sshd\"\njournal = [\"_SYSTEMD_UNIT=ssh.service\"]\n",
    );
    net.blocker(&["daemon", "--check-config", &good]).ok();
}

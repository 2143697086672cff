//! `blocker scan` and fail2ban compatibility: over a generated auth log, fail2ban's own
//! `fail2ban-regex` with its stock sshd filter, `blocker scan` loading that same file, and
//! blocker's built-in `sshd` filter find the same failures on the same lines; gzipped input
//! reads like plain; a broken filter and a missing log are one-line errors; every stock filter
//! loads, and those of the other services built in agree with fail2ban-regex on sample lines.

use std::{path::Path, process::Command};

use blocker_tests::{
    authlog::{self, Failure},
    blocker_bin, require_root,
};

const STOCK_SSHD: &str = "/etc/fail2ban/filter.d/sshd.conf";

fn scan(args: &[&str]) -> std::process::Output {
    Command::new(blocker_bin())
        .arg("scan")
        .args(args)
        .output()
        .expect("running blocker scan")
}

/// `blocker scan LOG --filter FILTER --json`: matched line numbers and failures.
fn scan_failures(log: &Path, filter: &str) -> (Vec<u64>, Vec<Failure>) {
    let out = scan(&[&log.to_string_lossy(), "--filter", filter, "--json"]);
    assert!(
        out.status.success(),
        "blocker scan --filter {filter}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    authlog::blocker_scan(&out.stdout).expect("blocker scan prints its JSON report")
}

/// The lines `fail2ban-regex --print-all-matched` lists as matched.
fn fail2ban_matched_lines(log: &Path) -> Vec<String> {
    let out = Command::new("fail2ban-regex")
        .args([
            "--print-all-matched",
            "--print-no-missed",
            "--print-no-ignored",
        ])
        .arg(log)
        .arg(STOCK_SSHD)
        .output()
        .expect("fail2ban-regex runs (cargo xtask setup installs fail2ban)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let section = text
        .split("|- Matched line(s):")
        .nth(1)
        .expect("fail2ban-regex lists the matched lines");
    let mut lines: Vec<String> = section
        .lines()
        .take_while(|line| !line.starts_with("`-"))
        .filter_map(|line| line.strip_prefix("|  "))
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn scan_finds_the_failures_fail2ban_regex_finds_with_its_own_and_the_builtin_sshd_filter() {
    require_root();
    assert!(
        Path::new(STOCK_SSHD).is_file(),
        "{STOCK_SSHD} is missing: run `cargo xtask setup` (it installs fail2ban)"
    );
    let dir = tempfile::tempdir().expect("a temp dir");
    let log = dir.path().join("auth.log");
    authlog::write(&log, 4_000, 300, 0x5eed).expect("writing the log");

    let expected = authlog::fail2ban_regex(&log, STOCK_SSHD).expect("fail2ban-regex -o row");
    assert!(
        expected.len() > 100 && expected.iter().any(|failure| failure.addr.is_ipv6()),
        "the log should hold IPv4 and IPv6 failures: {expected:?}"
    );
    let (stock_lines, stock) = scan_failures(&log, STOCK_SSHD);
    assert_eq!(
        stock, expected,
        "stock filter loaded by blocker vs fail2ban-regex"
    );
    let (builtin_lines, builtin) = scan_failures(&log, "sshd");
    assert_eq!(builtin, expected, "built-in sshd vs fail2ban-regex");
    assert_eq!(builtin_lines, stock_lines);

    // The same lines, by content: fail2ban-regex lists them, blocker gives their numbers.
    let text = std::fs::read_to_string(&log).expect("reading the log");
    let all: Vec<&str> = text.lines().collect();
    let mut ours: Vec<String> = stock_lines
        .iter()
        .map(|&number| all[number as usize - 1].to_string())
        .collect();
    ours.sort();
    assert_eq!(ours, fail2ban_matched_lines(&log));
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_gzipped_log_scans_like_the_plain_one() {
    require_root();
    let dir = tempfile::tempdir().expect("a temp dir");
    let log = dir.path().join("auth.log");
    authlog::write(&log, 2_000, 50, 7).expect("writing the log");
    let plain = scan_failures(&log, "sshd");
    assert!(!plain.1.is_empty());
    let status = Command::new("gzip")
        .args(["-k", "-9"])
        .arg(&log)
        .status()
        .expect("gzip runs");
    assert!(status.success());
    let gzipped = dir.path().join("auth.log.gz");
    assert_eq!(scan_failures(&gzipped, "sshd"), plain);
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_broken_filter_and_a_missing_log_are_one_line_errors() {
    require_root();
    let dir = tempfile::tempdir().expect("a temp dir");
    let log = dir.path().join("auth.log");
    authlog::write(&log, 10, 5, 1).expect("writing the log");
    let filter = dir.path().join("broken.conf");
    std::fs::write(
        &filter,
        "[Definition]\nfailregex = ^Failed password for .* from <HOST>\n            ^Invalid user (\\S+ from <HOST>\n",
    )
    .expect("writing the filter");
    let out = scan(&[
        &log.to_string_lossy(),
        "--filter",
        &filter.to_string_lossy(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: filter {} line 3: failregex: unbalanced parenthesis\n",
            filter.display()
        )
    );
    assert!(out.stdout.is_empty());

    let missing = dir.path().join("missing.log");
    let out = scan(&[
        &log.to_string_lossy(),
        &missing.to_string_lossy(),
        "--filter",
        "sshd",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot read {}", missing.display())),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing is printed before the error");
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn every_stock_fail2ban_filter_loads() {
    require_root();
    let dir = Path::new(STOCK_SSHD).parent().expect("filter.d");
    let mut loaded = 0;
    for entry in
        std::fs::read_dir(dir).expect("reading filter.d (cargo xtask setup installs fail2ban)")
    {
        let path = entry.expect("a directory entry").path();
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default();
        // The *-common files are included by filters, not filters themselves.
        if !name.ends_with(".conf") || name.ends_with("common.conf") {
            continue;
        }
        let out = scan(&["/dev/null", "--filter", &path.to_string_lossy()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        loaded += 1;
    }
    assert!(
        loaded > 50,
        "only {loaded} stock filters found in {}",
        dir.display()
    );
}

/// Addresses of the failures in `blocker scan --json` output, in order.
fn scanned_addrs(log: &Path, filter: &str) -> Vec<String> {
    scan_failures(log, filter)
        .1
        .iter()
        .map(|failure| failure.addr.to_string())
        .collect()
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn the_other_services_stock_filters_find_what_fail2ban_regex_finds() {
    require_root();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/logs");
    // Built-in `postfix` counts SASL failures only; fail2ban's counts other rejections too.
    let same_builtin = [
        "apache-auth",
        "dovecot",
        "nginx-http-auth",
        "proftpd",
        "pure-ftpd",
        "vsftpd",
    ];
    for service in same_builtin.iter().chain(&["postfix"]) {
        let log = fixtures.join(format!("{service}.log"));
        let stock = format!("/etc/fail2ban/filter.d/{service}.conf");
        let out = Command::new("fail2ban-regex")
            .args(["-o", "ip"])
            .arg(&log)
            .arg(&stock)
            .output()
            .expect("fail2ban-regex runs (cargo xtask setup installs fail2ban)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expected: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        assert!(
            !expected.is_empty(),
            "{service}: fail2ban-regex found nothing"
        );
        assert_eq!(
            scanned_addrs(&log, &stock),
            expected,
            "{service}: {stock} in blocker"
        );
        if same_builtin.contains(service) {
            assert_eq!(
                scanned_addrs(&log, service),
                expected,
                "{service}: built-in"
            );
        }
    }
}

//! `blocker import --format auto` on the lists other tools write (tests/fixtures/formats, the
//! seeds' own examples among them): each is detected, imported, and a packet from an address
//! it bans is dropped at the driver. A bad line anywhere stores nothing.

use std::{collections::HashMap, net::IpAddr, path::Path, process::Command};

use blocker_tests::{require_root, TestNet};

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/formats"))
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixtures().join(name)).expect("a fixture")
}

/// Each fixture with a line of its format banning `client`, the format auto-detection must
/// name, and the file name to write it as.
fn lists(client: IpAddr) -> Vec<(&'static str, &'static str, String)> {
    vec![
        (
            "plain",
            "list.txt",
            format!("{}{client} # test client\n", fixture("plain.txt")),
        ),
        (
            "htaccess",
            ".htaccess",
            format!(
                "{}<Limit GET>\n deny from {client} \"# test client 2026-12-01 \"\n</Limit>\n",
                fixture("valid.htaccess")
            ),
        ),
        (
            "nginx",
            "blocked.conf",
            format!("{}deny {client};\n", fixture("nginx.conf")),
        ),
        (
            "ipset",
            "ipset.save",
            format!(
                "{}add blacklist {client} timeout 600\n",
                fixture("ipset.save")
            ),
        ),
        (
            "iptables",
            "rules.v4",
            fixture("iptables.save").replace(
                "COMMIT",
                &format!("-A INPUT -s {client}/32 -j DROP\nCOMMIT"),
            ),
        ),
        (
            "spamhaus",
            "drop.txt",
            format!("{}{client}/32 ; SBL-TEST\n", fixture("drop.txt")),
        ),
        (
            "netset",
            "level1.netset",
            format!("{}{client}\n", fixture("firehol_level1.netset")),
        ),
        (
            "perl-hash",
            "banned.pl",
            format!(
                "{}$banned_ip{{\"{client}\"}}=qq(12/1/2026 test client);\n",
                fixture("seed-003.pl")
            ),
        ),
    ]
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn every_format_is_detected_imported_and_dropped_at_the_driver() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let client = net.client_v4(1, 2);
    assert!(net.reaches(client));
    for (format, name, text) in lists(client) {
        let file = net.state_dir.path().join(name);
        std::fs::write(&file, text).expect("writing the list");
        let run = net.blocker(&["import", &file.to_string_lossy()]).ok();
        assert!(
            run.stderr.contains(&format!("read as {format} (line")),
            "{format}: {}",
            run.stderr
        );
        assert!(
            run.stderr.contains(&format!("({format} format):")),
            "{}",
            run.stderr
        );
        let dropped = net.packets("manual_ban");
        assert!(!net.reaches(client), "{format}: the client still passes");
        assert!(
            net.packets("manual_ban") > dropped,
            "{format}: no drop counted"
        );
        net.blocker(&["unban", &client.to_string()]).ok();
        assert!(net.reaches(client), "{format}: the unban did not lift it");
    }
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn fail2bans_database_is_imported_with_its_bantime() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let client = net.client_v4(1, 2);
    let database = net.state_dir.path().join("fail2ban.sqlite3");
    // fail2ban's own database code writes the bans (Debian's fail2ban package).
    let written = Command::new("/usr/bin/python3")
        .arg(fixtures().join("fail2ban_db.py"))
        .arg(&database)
        .args(["sshd", "600", &client.to_string(), "203.0.113.9"])
        .output()
        .expect("running fail2ban's database code");
    assert!(
        written.status.success(),
        "{}",
        String::from_utf8_lossy(&written.stderr)
    );
    let run = net.blocker(&["import", &database.to_string_lossy()]).ok();
    assert!(run.stderr.contains("read as fail2ban-db"), "{}", run.stderr);
    assert!(!net.reaches(client));
    let row = net
        .ban_of(&format!("{client}/32"))
        .unwrap_or_else(|| panic!("{client} not banned"));
    assert_eq!(row["kind"], "temporary", "{row}");
    assert!(
        row["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("fail2ban jail sshd")),
        "{row}"
    );
    let created = row["created_at"].as_str().expect("a creation time");
    assert!(
        row["reason"]
            .as_str()
            .is_some_and(|r| r.ends_with(&format!("banned {created}"))),
        "created at fail2ban's time of the ban: {row}"
    );
}

/// The creation time of each ban, as `blocker list --json` shows it.
fn created_dates(net: &TestNet) -> HashMap<String, String> {
    let list = net.blocker(&["list", "--json"]).ok().json();
    list.as_array()
        .expect("a list")
        .iter()
        .map(|row| {
            let created = row["created_at"].as_str().expect("a creation time");
            (
                row["addr"].as_str().expect("an address").to_string(),
                created.to_string(),
            )
        })
        .collect()
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn imported_bans_are_created_at_their_lists_dates() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let client = net.client_v4(1, 2);
    let htaccess = net.state_dir.path().join(".htaccess");
    let future_line = fixture("valid.htaccess").lines().count() + 2;
    std::fs::write(
        &htaccess,
        format!(
            "{}<Limit GET>\n deny from {client} \"# zombie 2999-01-01 \"\n \
             deny from 198.51.100. \"# typo 2008-02-30 \"\n</Limit>\n",
            fixture("valid.htaccess")
        ),
    )
    .expect("writing the list");
    let perl = fixtures().join("seed-003.pl");
    let before = jiff::Timestamp::now().as_second();
    let run = net.blocker(&["import", &htaccess.to_string_lossy()]).ok();
    net.blocker(&["import", &perl.to_string_lossy()]).ok();
    let after = jiff::Timestamp::now().as_second();
    assert!(
        run.stderr.contains(&format!(
            "{}:{future_line}: its date 2999-01-01T00:00:00Z is in the future: created at the \
             import's time instead",
            htaccess.display()
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("\"2008-02-30\" is no calendar day: created at the import's time instead"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("2 entries have a date that cannot be their creation date"),
        "{}",
        run.stderr
    );
    assert!(!net.reaches(client), "the list's ban is not dropped");
    let created = created_dates(&net);
    for (prefix, date) in [
        ("123.123.0.0/16", "2005-03-15T00:00:00Z"),
        ("75.126.85.215/32", "2008-01-21T00:00:00Z"),
        ("87.248.163.54/32", "2008-04-25T00:00:00Z"),
        ("78.45.213.180/32", "2012-02-18T00:00:00Z"),
        ("174.157.101.0/24", "2009-11-02T00:00:00Z"),
    ] {
        assert_eq!(created[prefix], date, "{prefix}");
    }
    for prefix in [format!("{client}/32"), "198.51.100.0/24".to_string()] {
        let at: jiff::Timestamp = created[&prefix].parse().expect("a time");
        assert!(
            (before..=after).contains(&at.as_second()),
            "{prefix}: {at} is not the import's time"
        );
    }
    let recent = net
        .blocker(&["list", "--json", "--since", "1d"])
        .ok()
        .json();
    let recent: Vec<&str> = recent
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|row| row["addr"].as_str())
        .collect();
    assert_eq!(
        recent,
        [format!("{client}/32").as_str(), "198.51.100.0/24"],
        "--since filters by the list's dates"
    );
    // The same list with other dates: the bans in force keep the dates they have.
    let redated = std::fs::read_to_string(&htaccess)
        .expect("the list")
        .replace("2005-03-15", "2010-06-01")
        .replace("2999-01-01", "2009-01-01");
    std::fs::write(&htaccess, redated).expect("writing the list");
    net.blocker(&["import", &htaccess.to_string_lossy()]).ok();
    assert_eq!(
        created_dates(&net),
        created,
        "a re-import changed a creation date"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_bad_line_names_file_line_and_format_and_stores_nothing() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let state_before = net.state_text();
    let seed = fixtures().join("seed-001.htaccess");
    let run = net.blocker(&["import", &seed.to_string_lossy(), "--with-allow"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "{}:6: htaccess format: \"456.456.456.\" is not an address: 456 is no octet",
            seed.display()
        )),
        "{}",
        run.stderr
    );
    assert_eq!(
        net.state_text(),
        state_before,
        "a refused list changed the state"
    );
    assert!(net.stored_bans().is_empty());
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn allow_entries_go_to_the_allowlist_only_when_asked() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let (client, other) = (net.client_v4(1, 2), net.client_v4(1, 3));
    let file = net.state_dir.path().join(".htaccess");
    std::fs::write(
        &file,
        format!("order deny,allow\ndeny from {client} {other}\nallow from {client}\n"),
    )
    .expect("writing the list");
    let file = file.to_string_lossy().into_owned();
    let run = net.blocker(&["import", &file]).ok();
    assert!(
        run.stderr.contains("skipped 1 allow entries"),
        "{}",
        run.stderr
    );
    assert!(!net.reaches(client) && !net.reaches(other));
    let run = net.blocker(&["import", &file, "--with-allow"]).ok();
    assert!(run.stderr.contains("1 allowlisted"), "{}", run.stderr);
    assert!(net.reaches(client), "the allowlist wins");
    assert!(!net.reaches(other));
}

/// The history's rows, one line each: a refused import must not add any (the fleet publishes
/// from there).
fn history_text(net: &TestNet) -> Vec<String> {
    let db = net.state_db();
    let mut statement = db
        .prepare(
            "SELECT id || ' ' || action || ' ' || prefix || ' ' || coalesce(reason, '') \
             FROM history ORDER BY id",
        )
        .expect("reading the history");
    let rows = statement
        .query_map([], |row| row.get::<_, String>(0))
        .expect("reading the history");
    rows.map(|row| row.expect("a row")).collect()
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_refused_list_with_allow_entries_changes_no_allowlist_entry() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let (kept, fresh) = (net.client_v4(1, 2), net.client_v4(1, 3));
    net.blocker(&["allow", &kept.to_string(), "--reason", "monitoring"])
        .ok();
    let (state_before, history_before) = (net.state_text(), history_text(&net));
    // The allow entries come first; the deny of this host's loopback address is refused by
    // the lock-out check.
    let file = net.state_dir.path().join(".htaccess");
    std::fs::write(
        &file,
        format!("order deny,allow\nallow from {kept} {fresh}\ndeny from 127.0.0.1\n"),
    )
    .expect("writing the list");
    let run = net.blocker(&["import", &file.to_string_lossy(), "--with-allow"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("127.0.0.1"), "{}", run.stderr);
    assert_eq!(
        net.state_text(),
        state_before,
        "a refused list changed the state"
    );
    assert_eq!(
        history_text(&net),
        history_before,
        "a refused list left history rows"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn every_export_format_imports_back_to_the_same_drops() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let (permanent, temporary) = (net.client_v4(1, 2), net.client_v6(0xb10c, 2));
    net.blocker(&[
        "ban",
        &permanent.to_string(),
        "--reason",
        "cracker 2007-05-19",
    ])
    .ok();
    net.blocker(&["ban", &temporary.to_string(), "--for", "1h"])
        .ok();
    for format in ["plain", "htaccess", "nginx", "ipset", "spamhaus"] {
        let exported = net.blocker(&["export", "--format", format]).ok().stdout;
        let file = net.state_dir.path().join(format!("export.{format}"));
        std::fs::write(&file, &exported).expect("writing the export");
        net.blocker(&["unban", &permanent.to_string(), &temporary.to_string()])
            .ok();
        assert!(
            net.reaches(permanent) && net.reaches(temporary),
            "{format}: unban"
        );
        let run = net
            .blocker(&["import", &file.to_string_lossy(), "--format", format])
            .ok();
        assert!(
            run.stderr.contains("imported 2 prefixes"),
            "{format}: {}",
            run.stderr
        );
        assert!(!net.reaches(permanent), "{format}: {exported}");
        assert!(!net.reaches(temporary), "{format}: {exported}");
        let ban = net
            .ban_of(&format!("{permanent}/32"))
            .expect("banned again");
        assert_eq!(ban["reason"], "cracker 2007-05-19", "{format}");
        assert_eq!(ban["kind"], "permanent", "{format}");
    }
}

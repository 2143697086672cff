//! Manual bans and the allowlist, with real TCP, UDP and ICMP traffic through XDP.

use std::{thread, time::Duration};

use blocker_tests::{require_root, TestNet};

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn single_ip_ban_drops_only_that_source() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let banned = net.client_v4(1, 2);
    let neighbour = net.client_v4(1, 3);
    assert!(net.reaches(banned), "traffic passes before the ban");
    net.blocker(&["ban", &banned.to_string(), "--reason", "test"])
        .ok();
    assert!(!net.reaches(banned));
    assert!(net.reaches(neighbour), "the ban is for one address only");
    // TCP SYN (plus retransmissions), one UDP datagram and one echo request at least.
    assert!(net.packets("manual_ban") >= 3, "drops are counted");
    assert!(net.packets("no_match") > 0);
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn cidr_ban_covers_the_range_and_stops_at_its_edge() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let range = format!("{}/24", net.client_v4(1, 0));
    net.blocker(&["ban", &range]).ok();
    assert!(!net.reaches(net.client_v4(1, 2)));
    assert!(!net.reaches(net.client_v4(1, 3)));
    assert!(
        net.reaches(net.client_v4(2, 2)),
        "other subnet still passes"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn ipv6_64_ban_covers_the_prefix() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let inside = net.client_v6(0xb10c, 2);
    assert!(net.reaches(inside));
    let prefix = format!("{}/64", net.client_v6(0xb10c, 0));
    net.blocker(&["ban", &prefix]).ok();
    assert!(!net.reaches(inside));
    assert!(!net.reaches(net.client_v6(0xb10c, 3)));
    assert!(net.reaches(net.client_v6(0xb10d, 2)), "another /64 passes");
    assert!(net.reaches(net.client_v4(1, 2)), "IPv4 is not affected");
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn allowlist_beats_ban() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let client = net.client_v4(1, 2);
    net.blocker(&["ban", &format!("{}/16", net.client_v4(0, 0))])
        .ok();
    assert!(!net.reaches(client));
    net.blocker(&["allow", &client.to_string(), "--reason", "monitoring"])
        .ok();
    assert!(
        net.reaches(client),
        "allowlisted source passes a covering ban"
    );
    assert!(
        !net.reaches(net.client_v4(1, 3)),
        "the rest of the range stays banned"
    );
    assert!(net.packets("allowlisted") >= 3);
    net.blocker(&["allow", "--remove", &client.to_string()])
        .ok();
    assert!(!net.reaches(client));
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn temporary_ban_expires_by_itself() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let client = net.client_v4(1, 2);
    net.blocker(&["ban", &client.to_string(), "--for", "3s"])
        .ok();
    assert!(!net.reaches(client));
    let listed = net.blocker(&["list", "bans", "--json"]).ok().json();
    assert_eq!(listed[0]["kind"], "temporary");
    assert!(listed[0]["expires_at"].is_string());
    thread::sleep(Duration::from_secs(4));
    // Nothing removed the entry: the kernel compares the expiry itself.
    assert!(net.reaches(client), "an expired ban no longer blocks");
    let listed = net.blocker(&["list", "bans", "--json"]).ok().json();
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn short_ban_inside_a_permanent_range_does_not_open_a_hole_when_it_expires() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let client = net.client_v4(1, 2);
    net.blocker(&["ban", &format!("{}/24", net.client_v4(1, 0))])
        .ok();
    net.blocker(&["ban", &client.to_string(), "--for", "2s"])
        .ok();
    thread::sleep(Duration::from_secs(3));
    assert!(!net.reaches(client), "the permanent /24 still covers it");
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn unban_restores_traffic() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let v4 = net.client_v4(1, 2);
    let v6 = net.client_v6(0xb10c, 2);
    net.blocker(&["ban", &v4.to_string(), &v6.to_string()]).ok();
    assert!(!net.reaches(v4));
    assert!(!net.reaches(v6));
    net.blocker(&["unban", &v4.to_string(), &v6.to_string()])
        .ok();
    assert!(net.reaches(v4));
    assert!(net.reaches(v6));
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn blocking_continues_after_the_loading_process_is_killed() {
    require_root();
    let net = TestNet::new();
    let socket = net.state_dir.path().join("run.sock");
    let mut run = net.spawn_in_server(&[
        "run",
        "--iface",
        &net.server_if,
        "--socket",
        &socket.to_string_lossy(),
    ]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while net.blocker(&["status", "--json"]).code != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "blocker run did not load"
        );
        thread::sleep(Duration::from_millis(100));
    }
    // Wait for the link pin too, which comes last.
    while net.blocker(&["status", "--json"]).ok().json()["interfaces"]
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "blocker run did not attach"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let client = net.client_v4(1, 2);
    net.blocker(&["ban", &client.to_string()]).ok();
    run.kill().expect("kill -9 blocker run");
    run.wait().expect("reap blocker run");
    assert!(
        !net.reaches(client),
        "still blocked with no blocker process"
    );
    assert!(net.reaches(net.client_v4(1, 3)));
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn unload_then_load_restores_bans_from_the_state_file() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let permanent = net.client_v4(1, 2);
    let temporary = net.client_v6(0xb10c, 2);
    let short = net.client_v4(2, 2);
    let allowed = net.client_v4(1, 3);
    net.blocker(&["ban", &permanent.to_string(), "--reason", "cracker"])
        .ok();
    net.blocker(&["ban", &temporary.to_string(), "--for", "1h"])
        .ok();
    net.blocker(&["ban", &short.to_string(), "--for", "1s"])
        .ok();
    net.blocker(&["ban", &format!("{}/24", net.client_v4(1, 0))])
        .ok();
    net.blocker(&["allow", &allowed.to_string()]).ok();
    net.blocker(&["unload"]).ok();
    assert!(!net.pin_dir.exists(), "unload removes the pins");
    assert!(net.reaches(permanent), "nothing blocks while unloaded");
    thread::sleep(Duration::from_secs(2));

    let loaded = net.load(&[]).ok();
    assert!(
        loaded.stderr.contains("restored 4 entries"),
        "{}",
        loaded.stderr
    );
    assert!(!net.reaches(permanent));
    assert!(!net.reaches(temporary));
    assert!(
        net.reaches(short),
        "the ban that expired meanwhile is not restored"
    );
    assert!(net.reaches(allowed));
    let listed = net.blocker(&["list", "--json"]).ok().json();
    let row = listed
        .as_array()
        .expect("array")
        .iter()
        .find(|row| row["addr"] == format!("{permanent}/32"))
        .expect("permanent ban listed");
    assert_eq!(row["reason"], "cracker");
    assert_eq!(row["kind"], "permanent");
    assert!(row["created_at"].is_string());
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn import_and_export_round_trip() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let client = net.client_v4(1, 2);
    let mut list = format!("# imported\n{client} # zombie machine 2008-01-21\n");
    for i in 0..2000u32 {
        list.push_str(&format!("172.{}.{}.0/24\n", 16 + i / 256, i % 256));
    }
    list.push_str("2001:db8::/32\n");
    net.blocker_with_stdin(&["import", "-", "--for", "1h"], &list)
        .ok();
    assert!(!net.reaches(client));
    let exported = net.blocker(&["export"]).ok().stdout;
    assert_eq!(exported.lines().count(), 2002, "{exported}");
    // The import was temporary (--for 1h), so the export says until when.
    let line = exported
        .lines()
        .find(|line| line.starts_with(&format!("{client}/32 expires=")))
        .unwrap_or_else(|| panic!("no expiring line for {client}: {exported}"));
    assert!(line.ends_with(" # zombie machine 2008-01-21"), "{line}");
    let status = net.blocker(&["status", "--json"]).ok().json();
    let ban_v4 = status["maps"]
        .as_array()
        .expect("maps")
        .iter()
        .find(|map| map["name"] == "BAN_V4")
        .expect("BAN_V4");
    assert_eq!(ban_v4["entries"], 2001);
}

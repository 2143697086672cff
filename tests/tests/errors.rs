//! Bad input exits 2 and changes nothing; runtime failures exit 1 with a hint.

use blocker_tests::{require_root, TestNet};

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn bad_input_exits_2_and_changes_nothing() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    net.blocker(&["ban", "192.0.2.1", "--reason", "kept"]).ok();
    let state_before = net.state_text();
    let list_before = net.blocker(&["list", "--json"]).ok().stdout;
    let list_file = net.state_dir.path().join("bad-list.txt");
    std::fs::write(&list_file, "192.0.2.7\n10.0.0.300 # typo\n").expect("write list");
    let list_file = list_file.to_string_lossy().into_owned();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["ban", "10.0.0.300"],
            "invalid address or CIDR: \"10.0.0.300\"",
        ),
        (vec!["ban", "192.0.2.9", "10.0.0.0/33"], "\"10.0.0.0/33\""),
        (vec!["ban", "2001:db8::/129"], "\"2001:db8::/129\""),
        (vec!["ban", "example.com"], "\"example.com\""),
        (
            vec!["ban", "192.0.2.9", "--for", "5x"],
            "invalid duration \"5x\"",
        ),
        (
            vec!["ban", "192.0.2.9", "--for", "0s"],
            "invalid duration \"0s\"",
        ),
        (vec!["unban", "192.0.2.1/40"], "\"192.0.2.1/40\""),
        (vec!["allow", "::ffff:1.2.3.4/200"], "::ffff:1.2.3.4/200"),
        (vec!["allow", "--remove", "nope"], "\"nope\""),
        (
            vec!["import", &list_file],
            ":2: plain format: invalid address or CIDR: \"10.0.0.300\"",
        ),
        (
            vec!["import", "/nonexistent/list.txt"],
            "cannot read /nonexistent/list.txt",
        ),
        (vec!["ban"], "ADDR_OR_CIDR"),
    ];
    for (args, message) in cases {
        let run = net.blocker(&args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(message), "{args:?}: {}", run.stderr);
        assert_eq!(
            net.state_text(),
            state_before,
            "{args:?} changed the state file"
        );
    }
    assert_eq!(net.blocker(&["list", "--json"]).ok().stdout, list_before);
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn broken_config_is_bad_input_naming_the_line() {
    require_root();
    let net = TestNet::new();
    let config = net.state_dir.path().join("blocker.toml");
    std::fs::write(&config, "[maps]\nban_v4 = 16\nban_v5 = 1\n").expect("write config");
    let run = net.load(&["--config", &config.to_string_lossy()]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("line 3"), "{}", run.stderr);
    assert!(!net.pin_dir.join("BAN_V4").exists(), "nothing was loaded");
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn runtime_failures_exit_1_with_a_hint() {
    require_root();
    let net = TestNet::new();
    let run = net.blocker(&["ban", "192.0.2.1"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("blocker is not loaded") && run.stderr.contains("blocker load --iface"),
        "{}",
        run.stderr
    );
    let run = net.blocker_in_server(&["load", "--iface", "no-such-if0"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("interface \"no-such-if0\" does not exist"),
        "{}",
        run.stderr
    );
    // A device without Ethernet headers: the program would parse nothing there.
    let tun = format!("tun{}", net.id);
    let added = std::process::Command::new("ip")
        .args([
            "-n",
            &net.server_ns,
            "tuntap",
            "add",
            "dev",
            &tun,
            "mode",
            "tun",
        ])
        .status()
        .expect("running ip");
    assert!(added.success(), "adding {tun}");
    let run = net.blocker_in_server(&["load", "--iface", &tun]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("is not an Ethernet interface"),
        "{}",
        run.stderr
    );
    net.load(&[]).ok();
    let run = net.load(&[]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("already loaded"), "{}", run.stderr);
    let run = net.blocker(&["unload", "--iface", "no-such-if0"]);
    assert_eq!(run.code, 1);
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_full_map_is_an_error_and_nothing_is_stored() {
    require_root();
    let net = TestNet::new();
    let config = net.state_dir.path().join("small.toml");
    std::fs::write(&config, "[maps]\nban_v4 = 2\n").expect("write config");
    net.load(&["--config", &config.to_string_lossy()]).ok();
    net.blocker(&["ban", "192.0.2.1"]).ok();
    let state_before = net.state_text();
    let client = net.client_v4(1, 2).to_string();
    // Not 192.0.2.x: a ban of one of this host's addresses is refused before the map fills,
    // and the machine running the tests may have one there.
    let run = net.blocker(&["ban", &client, "198.51.100.2", "198.51.100.3"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("BAN_V4 is full (2 entries)"),
        "{}",
        run.stderr
    );
    assert_eq!(net.state_text(), state_before);
    assert!(
        net.reaches(net.client_v4(1, 2)),
        "the partial change was undone"
    );
    let listed = net.blocker(&["list", "--json"]).ok().json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn ended_bans_leave_the_map_at_the_next_write_without_the_daemon() {
    require_root();
    let net = TestNet::new();
    let config = net.state_dir.path().join("small.toml");
    std::fs::write(&config, "[maps]\nban_v4 = 2\n").expect("write config");
    net.load(&["--config", &config.to_string_lossy()]).ok();
    net.blocker(&["ban", "198.51.100.2", "198.51.100.3", "--for", "1s"])
        .ok();
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    // The map is full of ended bans; no daemon removes them. The next writer does, first.
    let banned = net.client_v4(1, 2);
    let run = net.blocker(&["ban", &banned.to_string()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!net.reaches(banned));
    assert_eq!(net.stored_bans(), [format!("{banned}/32")]);
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_ban_refused_by_a_full_map_leaves_the_other_bans_enforced() {
    require_root();
    let net = TestNet::new();
    let config = net.state_dir.path().join("small.toml");
    std::fs::write(&config, "[maps]\nban_v4 = 2\n").expect("write config");
    net.load(&["--config", &config.to_string_lossy()]).ok();
    let banned = net.client_v4(2, 2);
    net.blocker(&["ban", &banned.to_string()]).ok();
    assert!(!net.reaches(banned), "the ban is enforced");
    // The undo of a command that touched only these prefixes must not switch off the ban
    // trie the program looks in, which holds bans the command never read.
    let run = net.blocker(&["ban", "198.51.100.2", "198.51.100.3"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        !net.reaches(banned),
        "the earlier ban still drops after the refusal"
    );
    assert!(net.reaches(net.client_v4(1, 2)), "others still pass");
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn an_import_refused_part_way_through_a_batch_is_taken_back_from_the_map() {
    require_root();
    let net = TestNet::new();
    let config = net.state_dir.path().join("small.toml");
    std::fs::write(&config, "[maps]\nban_v4 = 8\n").expect("write config");
    net.load(&["--config", &config.to_string_lossy()]).ok();
    // Six entries the store does not know fill the kernel map further than the store's
    // capacity check can see, so the batch update of the import is refused after two entries.
    let map = net.pin_dir.join("BAN_V4");
    for host in 1..=6u8 {
        let key = format!("20 00 00 00 c6 33 64 {host:02x}");
        let mut args = vec!["map", "update", "pinned", map.to_str().expect("utf-8 pin")];
        args.extend(["key", "hex"]);
        args.extend(key.split(' '));
        args.extend(["value", "hex", "00", "00", "00", "00"]);
        let out = std::process::Command::new("bpftool")
            .args(&args)
            .output()
            .expect("running bpftool (cargo xtask setup installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let state_before = net.state_text();
    let list = net.state_dir.path().join("list.txt");
    std::fs::write(
        &list,
        "203.0.113.1\n203.0.113.2\n203.0.113.3\n203.0.113.4\n",
    )
    .expect("write list");
    let run = net.blocker(&["import", &list.to_string_lossy()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("BAN_V4 is full (8 entries)"),
        "{}",
        run.stderr
    );
    assert_eq!(net.state_text(), state_before, "the import is taken back");
    let dumped = blocker_tests::testrun::bpftool_json(&[
        "map",
        "dump",
        "pinned",
        map.to_str().expect("utf-8 pin"),
    ]);
    let keys: Vec<String> = dumped
        .as_array()
        .expect("a dump is an array")
        .iter()
        .map(|entry| entry["key"].to_string())
        .collect();
    assert_eq!(keys.len(), 6, "only the foreign entries are left: {keys:?}");
}

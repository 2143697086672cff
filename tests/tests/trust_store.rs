//! The state database and the kernel maps never disagree silently: writers change the maps
//! from what they really hold, every command uses the state `load` recorded, rule history
//! survives reloads, boots restore what they can, and failures leave nothing behind.

use std::{fs, net::IpAddr, path::Path, process::Command};

use blocker_tests::{blocker_bin, require_root, Run, TestNet};

/// Runs one statement on the state database, as a hand edit (or a lost write) would.
fn edit_state(net: &TestNet, sql: &str) {
    net.state_db()
        .execute_batch(sql)
        .expect("editing the state");
}

/// A rate rule on `port`: the 4th new connection within 30 s blacklists the source for 60 s.
fn rate_rule(port: u16) -> String {
    format!(
        "[[rules]]\nname = \"ssh\"\nproto = \"tcp\"\ndport = {port}\nhitcount = 3\n\
         seconds = 30\nblacklist_for = \"60s\"\n"
    )
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_writer_without_the_state_file_refuses_and_changes_nothing() {
    require_root();
    let net = TestNet::new();
    let attacker = net.client_v4(2, 2);
    let listener = net.tcp_listener(net.server_for(attacker));
    net.load_with_rules(&rate_rule(listener.port())).ok();
    let range = format!("{}/24", net.client_v4(1, 0));
    let allowed = net.client_v4(1, 3);
    net.blocker(&["ban", &range]).ok();
    net.blocker(&["allow", &allowed.to_string()]).ok();
    assert!(net.reaches(allowed));

    let moved = net.state_dir.path().join("moved.db");
    fs::rename(net.state_path(), &moved).unwrap();
    let run = net.blocker(&["ban", "192.0.2.9"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("does not exist but blocker is loaded"),
        "{}",
        run.stderr
    );
    assert!(!net.state_path().exists(), "no new empty state was written");
    assert!(
        net.reaches(allowed),
        "the allowlist still wins over the range ban"
    );
    assert!(
        !net.reaches(net.client_v4(1, 2)),
        "the range is still banned"
    );
    for attempt in 1..=3 {
        assert!(net.tcp_connects(attacker, listener), "try {attempt} passes");
    }
    assert!(
        !net.tcp_connects(attacker, listener),
        "the rule is still on"
    );

    fs::rename(&moved, net.state_path()).unwrap();
    net.blocker(&["unban", &range]).ok();
    assert!(net.reaches(net.client_v4(1, 2)));
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn writers_change_the_maps_from_what_they_really_hold() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let orphan = net.client_v4(1, 2);
    net.blocker(&["ban", &orphan.to_string()]).ok();
    assert!(!net.reaches(orphan));
    // The state loses the ban that is in the kernel. Writers touch only their own prefixes
    // (so their cost does not grow with the state); `load` reconciles every entry.
    let forget_orphan = format!("DELETE FROM bans WHERE prefix = '{orphan}/32'");
    edit_state(&net, &forget_orphan);
    net.blocker(&["ban", "192.0.2.9"]).ok();
    net.blocker(&["unload"]).ok();
    net.load(&[]).ok();
    assert!(
        net.reaches(orphan),
        "a ban the state does not have is removed from the kernel, not kept apart"
    );
    // `unban` removes a ban only the kernel has, and says so.
    net.blocker(&["ban", &orphan.to_string()]).ok();
    edit_state(&net, &forget_orphan);
    assert!(!net.reaches(orphan));
    let run = net.blocker(&["unban", &orphan.to_string()]).ok();
    assert!(!run.stderr.contains("was not banned"), "{}", run.stderr);
    assert!(net.reaches(orphan));
    // And the reverse: an entry of the state missing from the kernel is written back.
    let missing = net.add_client_v4(4);
    edit_state(
        &net,
        &format!(
            "INSERT INTO bans (prefix, family, first, len, created_at, source) \
             SELECT '{missing}/32', 4, first, 32, created_at, source FROM bans LIMIT 1"
        ),
    );
    assert!(net.reaches(missing));
    net.blocker(&["unload"]).ok();
    net.load(&[]).ok();
    assert!(
        !net.reaches(missing),
        "the missing ban is written to the kernel"
    );
    // A writer touching a prefix writes it whatever the kernel held.
    let healed = net.add_client_v4(5);
    edit_state(
        &net,
        &format!(
            "INSERT INTO bans (prefix, family, first, len, created_at, source) \
             VALUES ('{healed}/32', 4, X'{}', 32, 0, 'cli')",
            match healed {
                std::net::IpAddr::V4(v4) => v4
                    .octets()
                    .iter()
                    .map(|byte| format!("{byte:02x}"))
                    .collect::<String>(),
                std::net::IpAddr::V6(_) => unreachable!("an IPv4 client"),
            }
        ),
    );
    assert!(net.reaches(healed), "only the database has it");
    net.blocker(&["ban", &healed.to_string()]).ok();
    assert!(!net.reaches(healed), "the touched prefix is written");
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn every_command_uses_the_state_file_load_recorded() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let other = net.state_dir.path().join("other.db");
    let other = other.to_str().unwrap();
    let run = net.blocker(&["--state", other, "ban", &net.client_v4(1, 2).to_string()]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("keeps its state in"), "{}", run.stderr);
    assert!(!Path::new(other).exists());
    assert!(net.reaches(net.client_v4(1, 2)), "nothing was banned");

    // Without --state or BLOCKER_STATE, commands find the recorded file.
    let without_state_env = |args: &[&str]| -> Run {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", net.server_ns))
            .arg(blocker_bin())
            .args(args)
            .env("BLOCKER_PIN_DIR", &net.pin_dir)
            .env_remove("BLOCKER_STATE")
            .output()
            .expect("running blocker")
            .into()
    };
    let banned = net.client_v4(1, 5).to_string();
    without_state_env(&["ban", &banned]).ok();
    assert!(net.stored_bans().contains(&format!("{banned}/32")));

    // The config's [daemon] state is honoured by load as by the daemon: a different one is
    // refused while loaded.
    let config = net.config("state.toml", &format!("[daemon]\nstate = \"{other}\"\n"));
    let run = without_state_env(&["load", "--iface", "lo", "--config", &config]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("keeps its state in"), "{}", run.stderr);
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_second_load_keeps_the_history_of_unchanged_rules() {
    require_root();
    let net = TestNet::new();
    let listener = net.tcp_listener(net.server_v4());
    let config = net.config("rules.toml", &rate_rule(listener.port()));
    net.load(&["--config", &config]).ok();
    let attacker = net.client_v4(1, 2);
    for attempt in 1..=3 {
        assert!(net.tcp_connects(attacker, listener), "try {attempt} passes");
    }
    let generation = |net: &TestNet| -> i64 {
        net.state_db()
            .query_row(
                "SELECT json_extract(table_json, '$.rules[0].generation') FROM rules",
                [],
                |row| row.get(0),
            )
            .expect("the rules are stored")
    };
    let before = generation(&net);
    // The same config again, as SIGHUP does; a second interface takes the same path.
    let second = net.add_server_iface();
    net.blocker_in_server(&["load", "--iface", &second, "--config", &config])
        .ok();
    assert_eq!(generation(&net), before);
    assert!(
        !net.tcp_connects(attacker, listener),
        "the 4th connection is counted with the first three"
    );
}

/// Bans three client addresses, then unloads: a state with three IPv4 bans and no maps.
fn three_bans_stored(net: &TestNet) -> Vec<IpAddr> {
    net.load(&[]).ok();
    let banned = vec![
        net.client_v4(1, 2),
        net.client_v4(1, 3),
        net.add_client_v4(4),
    ];
    let text: Vec<String> = banned.iter().map(IpAddr::to_string).collect();
    let mut ban = vec!["ban"];
    ban.extend(text.iter().map(String::as_str));
    net.blocker(&ban).ok();
    net.blocker(&["unload"]).ok();
    banned
}

/// Loads with a configured capacity of two IPv4 bans, below what is stored: the boot must
/// not leave the host without any map (nor drop stored bans), and says so.
fn load_with_room_for_two_bans(net: &TestNet) {
    let config = net.config("small.toml", "[maps]\nban_v4 = 2\n");
    let run = net.load(&["--config", &config]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("more than its configured"),
        "{}",
        run.stderr
    );
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_boot_with_more_bans_stored_than_the_configured_capacity_enforces_them_all() {
    require_root();
    let net = TestNet::new();
    let banned = three_bans_stored(&net);
    load_with_room_for_two_bans(&net);
    for source in banned {
        assert!(
            !net.reaches(source),
            "the stored ban of {source} is enforced"
        );
    }
    assert_eq!(net.stored_bans().len(), 3);
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_boot_falling_back_to_the_last_good_copy_sizes_the_maps_for_the_copy() {
    require_root();
    let net = TestNet::new();
    // Unloading refreshed the last good copy; then the database is damaged beyond use.
    let banned = three_bans_stored(&net);
    fs::write(net.state_path(), "not a database").expect("damaging the state");
    load_with_room_for_two_bans(&net);
    for source in banned {
        assert!(
            !net.reaches(source),
            "the copy's ban of {source} is enforced"
        );
    }
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_writer_stopped_between_its_commit_and_the_maps_is_healed_by_the_next_writer() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let (lifted, added) = (net.client_v4(1, 2), net.add_client_v4(4));
    net.blocker(&["ban", &lifted.to_string()]).ok();
    assert!(!net.reaches(lifted));
    // What a writer killed after its commit leaves: the database ahead of the maps (an
    // unban and a ban committed, neither in the kernel), and the mark it set before.
    edit_state(
        &net,
        &format!(
            "INSERT INTO bans (prefix, family, first, len, created_at, source) \
             SELECT '{added}/32', 4, first, 32, created_at, source FROM bans LIMIT 1;
             DELETE FROM bans WHERE prefix = '{lifted}/32';"
        ),
    );
    let mark = net.pin_dir.join("maps-pending");
    std::os::unix::fs::symlink("database-ahead", &mark).expect("the mark");
    assert!(net.reaches(added) && !net.reaches(lifted));
    // Any writer, of any prefix, finds the mark and brings every map to the database.
    net.blocker(&["ban", "192.0.2.9"]).ok();
    assert!(!net.reaches(added), "the committed ban is enforced");
    assert!(net.reaches(lifted), "the committed unban is lifted");
    assert!(
        std::fs::symlink_metadata(&mark).is_err(),
        "the mark is gone once the maps follow"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_boot_keeps_bans_a_wrong_clock_calls_expired() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let banned = net.client_v4(1, 2);
    net.blocker(&["ban", &banned.to_string(), "--for", "1h"])
        .ok();
    net.blocker(&["unload"]).ok();
    // As if the clock were 10 minutes ahead of the ban's end at boot.
    let ended = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 600;
    edit_state(&net, &format!("UPDATE bans SET expires_at = {ended}"));
    net.load(&[]).ok();
    assert_eq!(
        net.stored_bans(),
        [format!("{banned}/32")],
        "the ban is kept for when the clock is right"
    );
    assert!(
        net.reaches(banned),
        "the kernel calls it ended, by the boot's clock"
    );
    // The clock was ahead: by the right one the ban has an hour to go. The next writer, of
    // any prefix, writes its kernel expiry again.
    let in_force = ended + 3_600;
    edit_state(&net, &format!("UPDATE bans SET expires_at = {in_force}"));
    net.blocker(&["ban", "192.0.2.9"]).ok();
    assert!(
        !net.reaches(banned),
        "enforced again once the clock is right"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_corrupt_state_file_still_attaches_with_the_last_good_copy() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let banned = net.client_v4(1, 2);
    net.blocker(&["ban", &banned.to_string()]).ok();
    // Unload keeps the state as it is then as the last good copy.
    net.blocker(&["unload"]).ok();
    // Damage every page after the header: the tables' pages.
    let mut damaged = fs::read(net.state_path()).unwrap();
    assert!(damaged.len() > 4096, "{} bytes", damaged.len());
    damaged[4096..].fill(0x5a);
    fs::write(net.state_path(), &damaged).unwrap();
    let run = net.load(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("ERROR"), "loudly: {}", run.stderr);
    assert!(
        run.stderr.contains("state.db"),
        "names the file: {}",
        run.stderr
    );
    assert!(run.stderr.contains("state.db.last-good"), "{}", run.stderr);
    assert!(!net.reaches(banned), "the last good bans are enforced");
    assert_eq!(
        fs::read(net.state_path()).unwrap(),
        damaged,
        "the damaged file is left for the operator"
    );
    let run = net.blocker(&["ban", &net.client_v4(1, 3).to_string()]);
    assert_ne!(run.code, 0, "writers refuse the damaged file");
    assert!(run.stderr.contains("last-good"), "{}", run.stderr);
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn pins_of_another_layout_are_refused_and_unload_removes_them() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let layout = net.pin_dir.join("layout");
    fs::remove_file(&layout).expect("load records the layout");
    std::os::unix::fs::symlink("v0-older", &layout).unwrap();
    let run = net.blocker(&["ban", &net.client_v4(1, 2).to_string()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("another blocker layout"),
        "{}",
        run.stderr
    );
    let run = net.blocker_in_server(&["load", "--iface", &net.add_server_iface()]);
    assert!(
        run.stderr.contains("another blocker layout"),
        "{}",
        run.stderr
    );
    net.blocker(&["unload"]).ok();
    assert!(!net.pin_dir.exists());
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_rule_slot_out_of_range_is_refused_before_any_map_changes() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    edit_state(
        &net,
        "UPDATE rules SET table_json = json_set(table_json, '$.rules[0].slot', 40)",
    );
    let banned = net.client_v4(1, 2);
    let run = net.blocker(&["ban", &banned.to_string()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("slot 40; slots are 0 to 31"),
        "{}",
        run.stderr
    );
    assert!(net.reaches(banned), "nothing was banned");
    net.blocker(&["unload"]).ok();
    let run = net.load(&[]);
    assert_eq!(
        run.code, 0,
        "a boot attaches with the last good copy: {}",
        run.stderr
    );
    assert!(run.stderr.contains("slot 40"), "{}", run.stderr);
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_failed_load_leaves_no_pins_and_unload_removes_leftovers() {
    require_root();
    let net = TestNet::new();
    let config = net.config("huge.toml", "[maps]\nhistory = 4294967295\n");
    let run = net.load(&["--config", &config]);
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert!(
        !net.pin_dir.exists(),
        "nothing is left for the next load to reuse"
    );
    net.load(&[]).ok();
    net.blocker(&["unload"]).ok();

    // Whatever an older or interrupted run left, unload removes it.
    fs::create_dir_all(&net.pin_dir).unwrap();
    std::os::unix::fs::symlink("v0-older", net.pin_dir.join("layout")).unwrap();
    net.blocker(&["unload"]).ok();
    assert!(!net.pin_dir.exists());
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn writers_leave_no_temporary_files() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let state_files = |net: &TestNet| {
        let mut names: Vec<String> = fs::read_dir(net.state_dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("state"))
            .collect();
        names.sort();
        names
    };
    net.blocker(&["ban", &net.client_v4(1, 2).to_string()]).ok();
    assert_eq!(
        state_files(&net),
        ["state.db"],
        "no WAL or temporary file is left"
    );
    net.blocker(&["unload"]).ok();
    assert_eq!(state_files(&net), ["state.db", "state.db.last-good"]);
    let verdict: String = net
        .state_db()
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(verdict, "ok");
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn load_imports_the_json_state_of_the_previous_release() {
    require_root();
    let net = TestNet::new();
    let fixture = include_str!("../fixtures/state-v1.json");
    // `--state` names the database whatever it holds: here the previous release's JSON.
    fs::write(net.state_path(), fixture).unwrap();
    net.load(&[]).ok();
    let migrated = net.state_dir.path().join("state.db.migrated");
    assert_eq!(
        fs::read_to_string(migrated).unwrap(),
        fixture,
        "the JSON is kept"
    );
    assert_eq!(
        net.stored_bans(),
        [
            "192.0.2.0/24",
            "198.18.0.1/32",
            "198.51.100.7/32",
            "2001:db8::/64"
        ]
    );
    let listed = net.blocker(&["list", "allow", "--json"]).ok().json();
    assert_eq!(listed[0]["addr"], "203.0.113.5/32", "{listed}");
    assert_eq!(listed[0]["reason"], "monitoring", "{listed}");
    let sources: Vec<String> = {
        let db = net.state_db();
        let mut statement = db.prepare("SELECT DISTINCT source FROM history").unwrap();
        let rows = statement.query_map([], |row| row.get(0)).unwrap();
        rows.map(|row| row.unwrap()).collect()
    };
    assert_eq!(sources, ["import"]);
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn sighup_keeps_the_history_of_unchanged_rules() {
    require_root();
    let net = TestNet::new();
    let listener = net.tcp_listener(net.server_v4());
    let config = net.config("rules.toml", &rate_rule(listener.port()));
    net.load(&["--config", &config]).ok();
    let port = (20_000 + net.id % 20_000).to_string();
    let socket = net.state_dir.path().join("blocker.sock");
    let mut daemon = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", net.server_ns))
        .arg(blocker_bin())
        .args(["daemon", "--config", &config, "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--socket")
        .arg(&socket)
        .env("BLOCKER_PIN_DIR", &net.pin_dir)
        .env("BLOCKER_STATE", net.state_path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting blocker daemon");
    let (lines, log) = std::sync::mpsc::channel();
    let stderr = daemon.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines.send(line);
        }
    });
    let wait_for = |what: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match log.recv_timeout(left) {
                Ok(line) if line.contains(what) => return,
                Ok(_) => {}
                Err(err) => panic!("the daemon did not log {what:?}: {err}"),
            }
        }
    };
    // The daemon is up once it reads the event ring; then the attacker knocks three times.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let attacker = net.client_v4(1, 2);
    for attempt in 1..=3 {
        assert!(net.tcp_connects(attacker, listener), "try {attempt} passes");
    }
    let pid = nix::unistd::Pid::from_raw(daemon.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    wait_for("rules reloaded");
    let fourth = net.tcp_connects(attacker, listener);
    let fifth = net.tcp_connects(attacker, listener);
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(
        !fourth && !fifth,
        "the 4th and 5th are counted with the first three"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_pin_directory_another_user_planted_is_refused() {
    require_root();
    let net = TestNet::new();
    // bpffs is world-writable: `nobody` creates the pin directory first, with a `state`
    // record pointing at a file of their choosing.
    let planted = net.state_dir.path().join("chosen-by-nobody");
    let status = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
        ])
        .arg(format!(
            "mkdir -m 0777 {dir} && ln -s {target} {dir}/state",
            dir = net.pin_dir.display(),
            target = planted.display()
        ))
        .status()
        .expect("setpriv");
    assert!(status.success(), "nobody could not plant the directory");
    let run = net.load(&[]);
    assert_eq!(run.code, 1, "load must refuse: {}", run.stderr);
    assert!(
        run.stderr.contains("belongs to uid 65534"),
        "the error names the owner: {}",
        run.stderr
    );
    assert!(
        !planted.exists(),
        "nothing was written where nobody pointed"
    );
    assert_eq!(
        fs::read_link(net.pin_dir.join("state")).expect("the planted record is untouched"),
        planted
    );
    fs::remove_dir_all(&net.pin_dir).expect("removing the planted directory");
}

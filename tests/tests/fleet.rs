//! The fleet: three blocker nodes, each with its own XDP program, pin directory and state,
//! share bans through real NATS servers with JetStream. A ban on one drops real packets at
//! every node, an unban anywhere lets them through everywhere, a node that was down catches up,
//! the allowlist of a node wins there, nothing is published twice (no loops), losing one
//! server of a 3-server cluster does not stop the bans, a source a rate rule blacklists on one
//! node is dropped by the others, and a malformed or oversized value in the bucket is skipped
//! without stopping what comes after it.

use std::time::Duration;

use blocker_tests::{
    fleet::{wait_or_explain, wait_until, FleetNs, NatsServer, Node, RawNats},
    require_root,
};

const PROPAGATION: Duration = Duration::from_secs(10);

/// A NATS namespace with `servers` servers (a cluster beyond one) and three nodes joined to
/// all of them.
fn fleet(servers: u16) -> (FleetNs, Vec<NatsServer>, Vec<Node>) {
    fleet_with(servers, "")
}

/// Like [`fleet`], with `node2_extra` in node 2's `[fleet]` section.
fn fleet_with(servers: u16, node2_extra: &str) -> (FleetNs, Vec<NatsServer>, Vec<Node>) {
    let ns = FleetNs::create();
    let nats: Vec<NatsServer> = (0..servers)
        .map(|index| NatsServer::start(&ns, index, servers))
        .collect();
    let urls: Vec<String> = nats.iter().map(NatsServer::url).collect();
    let nodes = (0..3)
        .map(|index| {
            let mut extra = format!("replicas = {servers}\n");
            if index == 2 {
                extra.push_str(node2_extra);
            }
            Node::start(&ns, index, &urls, &extra)
        })
        .collect();
    (ns, nats, nodes)
}

fn all(nodes: &[Node]) -> Vec<&Node> {
    nodes.iter().collect()
}

/// The prefix blocker stores for the client address `index` of node `node`.
fn client_prefix(node: &Node) -> String {
    format!("{}/32", node.net.client_v4(1, 2))
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_ban_on_one_node_drops_at_every_node_and_an_unban_elsewhere_lifts_it_everywhere() {
    require_root();
    let (_ns, _nats, nodes) = fleet(1);
    for node in &nodes {
        assert!(
            node.net.reaches(node.net.client_v4(1, 2)),
            "{} passes before",
            node.name
        );
    }
    // Node 0 bans every node's client; each node sees traffic only from its own.
    let prefixes: Vec<String> = nodes.iter().map(client_prefix).collect();
    let mut args = vec!["ban", "--reason", "ssh brute force"];
    args.extend(prefixes.iter().map(String::as_str));
    nodes[0].net.blocker(&args).ok();
    for (node, prefix) in nodes.iter().zip(&prefixes) {
        node.wait_for_ban(prefix, true, &all(&nodes));
        assert!(
            !node.net.reaches(node.net.client_v4(1, 2)),
            "{} drops the banned client at its driver",
            node.name
        );
        assert!(
            node.net.reaches(node.net.client_v4(1, 3)),
            "others still pass"
        );
    }
    let history = nodes[1].net.blocker(&["history", &prefixes[1]]).ok().stdout;
    assert!(
        history.contains("fleet") && history.contains("node-0"),
        "the history names the fleet and the origin: {history}"
    );

    // Node 1 lifts them all: every node lets them through again.
    let mut args = vec!["unban"];
    args.extend(prefixes.iter().map(String::as_str));
    nodes[1].net.blocker(&args).ok();
    for (node, prefix) in nodes.iter().zip(&prefixes) {
        node.wait_for_ban(prefix, false, &all(&nodes));
        assert!(
            node.net.reaches(node.net.client_v4(1, 2)),
            "{} passes again",
            node.name
        );
    }

    // No loops: each change went out once, from the node that made it, and was applied once
    // by each of the two others.
    wait_until("the counters to settle", PROPAGATION, || {
        nodes.iter().map(|node| node.count("applied")).sum::<u64>() == 12
    });
    thread_settle();
    let published: Vec<u64> = nodes.iter().map(|node| node.count("published")).collect();
    assert_eq!(published, [3, 3, 0], "published by node 0, 1, 2");
    let applied: Vec<u64> = nodes.iter().map(|node| node.count("applied")).collect();
    assert_eq!(
        applied,
        [3, 3, 6],
        "applied by node 0 (unbans), 1 (bans), 2 (both)"
    );
    let metrics = nodes[2]
        .daemon
        .as_ref()
        .expect("daemon")
        .curl_anonymous(&[], &["/metrics"])
        .1;
    for line in [
        "blocker_fleet_published_total 0",
        "blocker_fleet_applied_total 6",
        "blocker_fleet_connected 1",
    ] {
        assert!(metrics.contains(line), "{line} in /metrics:\n{metrics}");
    }
    assert!(metrics.contains("blocker_fleet_lag_seconds "), "{metrics}");
}

/// Waits a little longer than the publisher's poll, so a looping change would show up.
fn thread_settle() {
    std::thread::sleep(Duration::from_millis(500));
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn an_address_allowlisted_on_a_node_is_not_banned_there() {
    require_root();
    // Node 2 keeps its CLI changes (its allowlist) to itself.
    let (_ns, _nats, nodes) = fleet_with(1, "share = [\"offense\", \"log\"]");
    let (guarded, other) = (&nodes[2], &nodes[1]);
    let guarded_client = guarded.net.client_v4(1, 2);
    guarded
        .net
        .blocker(&["allow", &guarded_client.to_string(), "--reason", "office"])
        .ok();
    let allowed = client_prefix(guarded);
    let ordinary = client_prefix(other);
    nodes[0].net.blocker(&["ban", &allowed, &ordinary]).ok();
    other.wait_for_ban(&ordinary, true, &all(&nodes));
    wait_until("node-2 to skip the allowlisted ban", PROPAGATION, || {
        guarded.count("skipped") >= 1
    });
    assert!(
        !guarded.has_ban(&allowed),
        "not stored where it is allowlisted"
    );
    assert!(guarded.net.reaches(guarded_client), "and not dropped there");
    assert!(other.has_ban(&allowed), "the other node applies it");
    assert_eq!(guarded.count("published"), 0, "its allowlist stayed local");
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_node_that_was_down_catches_up_with_bans_and_unbans() {
    require_root();
    let (_ns, _nats, mut nodes) = fleet(1);
    let early = client_prefix(&nodes[2]);
    nodes[0].net.blocker(&["ban", &early]).ok();
    nodes[2].wait_for_ban(&early, true, &all(&nodes));

    nodes[2].stop_daemon();
    let late = format!("{}/32", nodes[2].net.client_v4(1, 3));
    let temporary = format!("{}/32", nodes[2].net.client_v4(2, 2));
    nodes[0].net.blocker(&["ban", &late]).ok();
    nodes[1]
        .net
        .blocker(&["ban", &temporary, "--for", "1h"])
        .ok();
    nodes[1].net.blocker(&["unban", &early]).ok();
    nodes[1].wait_for_ban(&late, true, &all(&nodes));
    nodes[0].wait_for_ban(&early, false, &all(&nodes));
    assert!(
        nodes[2].has_ban(&early) && !nodes[2].has_ban(&late),
        "node-2 is behind"
    );

    nodes[2].start_daemon();
    nodes[2].wait_for_ban(&late, true, &all(&nodes));
    nodes[2].wait_for_ban(&temporary, true, &all(&nodes));
    nodes[2].wait_for_ban(&early, false, &all(&nodes));
    assert!(
        !nodes[2].net.reaches(nodes[2].net.client_v4(1, 3)),
        "caught up at the driver"
    );
    assert!(
        nodes[2].net.reaches(nodes[2].net.client_v4(1, 2)),
        "the lifted ban is lifted"
    );
    // The temporary ban keeps the expiry it was given, not a new hour from the catch-up.
    let expiry = |node: &Node| -> String {
        node.net
            .state_db()
            .query_row(
                "SELECT expires_at FROM bans WHERE prefix = ?1",
                [&temporary],
                |row| row.get::<_, i64>(0),
            )
            .expect("the temporary ban")
            .to_string()
    };
    assert_eq!(expiry(&nodes[2]), expiry(&nodes[1]));
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn bans_still_propagate_after_one_server_of_a_three_server_cluster_dies() {
    require_root();
    let (_ns, mut nats, nodes) = fleet(3);
    let first = client_prefix(&nodes[1]);
    nodes[0].net.blocker(&["ban", &first]).ok();
    nodes[1].wait_for_ban(&first, true, &all(&nodes));
    nodes[2].wait_for_ban(&first, true, &all(&nodes));

    nats[0].kill();
    let second = format!("{}/32", nodes[2].net.client_v4(1, 3));
    nodes[1].net.blocker(&["ban", &second]).ok();
    let slow = Duration::from_secs(60);
    for node in [&nodes[0], &nodes[2]] {
        let what = format!("{second} on {} with a server down", node.name);
        wait_or_explain(
            &what,
            slow,
            || node.has_ban(&second),
            || nodes.iter().map(Node::log).collect::<Vec<_>>().join("\n"),
        );
    }
    assert!(!nodes[2].net.reaches(nodes[2].net.client_v4(1, 3)));
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_malformed_or_oversized_value_in_the_bucket_is_logged_and_skipped() {
    require_root();
    let ns = FleetNs::create();
    let nats = NatsServer::start(&ns, 0, 1);
    // The bucket made beforehand, taking larger values than the daemons' own would: the
    // oversized value reaches the nodes, which must refuse it themselves.
    let mut raw = RawNats::connect(&ns, &nats);
    raw.create_bucket("blocker_bans", 64 * 1024);
    let urls = [nats.url()];
    let nodes: Vec<Node> = (0..2)
        .map(|index| Node::start(&ns, index, &urls, ""))
        .collect();
    let receiver = &nodes[1];
    let (malformed, oversized, valid) = (
        receiver.net.client_v4(1, 3),
        receiver.net.client_v4(2, 2),
        receiver.net.client_v4(1, 2),
    );
    let key = |addr: std::net::IpAddr| format!("ban.{}.32", addr.to_string().replace('.', "-"));
    raw.put(
        "blocker_bans",
        &key(malformed),
        br#"{"action":"ban","source":"cli","node":"node-9","at":"soon"}"#,
    );
    let huge = serde_json::json!({
        "action": "ban",
        "reason": "x".repeat(4000),
        "source": "cli",
        "node": "node-9",
        "at": 1_800_000_000,
    });
    raw.put("blocker_bans", &key(oversized), huge.to_string().as_bytes());
    nodes[0].net.blocker(&["ban", &format!("{valid}/32")]).ok();

    receiver.wait_for_ban(&format!("{valid}/32"), true, &all(&nodes));
    assert!(
        !receiver.net.reaches(valid),
        "the valid ban after them drops at the driver"
    );
    assert!(
        receiver.net.reaches(malformed) && receiver.net.reaches(oversized),
        "neither bad value banned anything"
    );
    assert_eq!(
        receiver.net.stored_bans(),
        [format!("{valid}/32")],
        "only the valid ban is stored"
    );
    let log = receiver.log();
    for why in ["not a change", "more than the 2048 allowed"] {
        assert!(
            log.contains("skipped a malformed change") && log.contains(why),
            "the log says why ({why}):\n{log}"
        );
    }
    assert!(receiver.count("skipped") >= 2, "{}", receiver.link());
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_source_a_rule_blacklists_on_one_node_is_dropped_at_the_others_until_it_ends() {
    require_root();
    let ns = FleetNs::create();
    let nats = NatsServer::start(&ns, 0, 1);
    let urls = [nats.url()];
    let ssh = "[[rules]]\nname = \"ssh\"\nproto = \"tcp\"\ndport = 2222\nhitcount = 3\n\
               seconds = 60\nblacklist_for = \"10m\"\n";
    let nodes = [
        Node::start_with_rules(&ns, 0, &urls, ssh, ""),
        Node::start(&ns, 1, &urls, ""),
    ];
    let attacker = nodes[0].net.client_v4(1, 2);
    nodes[1].lend_source(attacker);
    let other_server = nodes[1].net.server_v4();
    assert!(
        nodes[1].net.udp_delivered(attacker, other_server),
        "the source reaches node-1 before"
    );

    // Four SYNs to node 0's port 2222: the fourth trips the rule there. More knocks keep
    // the entry fresh, which is not a new blacklisting.
    let port = std::net::SocketAddr::new(nodes[0].net.server_v4(), 2222);
    for _ in 0..6 {
        let _ = nodes[0].net.tcp_connect(attacker, port);
    }
    let listed = nodes[0]
        .net
        .blocker(&["list", "blacklist", "--json"])
        .ok()
        .json();
    assert_eq!(listed[0]["addr"], format!("{attacker}/32"), "{listed}");

    let prefix = format!("{attacker}/32");
    nodes[1].wait_for_ban(&prefix, true, &all(&nodes));
    assert!(
        !nodes[1].net.udp_delivered(attacker, other_server),
        "node-1 drops it at its driver"
    );
    let ban = nodes[1].net.ban_of(&prefix).expect("the shared ban");
    assert!(
        ban["reason"]
            .as_str()
            .is_some_and(|r| r.contains("rule ssh")),
        "{ban}"
    );
    let (ends, now) = (
        ban["expires_at"]
            .as_str()
            .expect("a temporary ban")
            .to_string(),
        jiff::Timestamp::now(),
    );
    let ends: jiff::Timestamp = ends.parse().expect("an expiry");
    let left = ends.duration_since(now).as_secs();
    assert!(
        (500..=600).contains(&left),
        "ends with the rule's 10 min: {left}s left"
    );
    let history = nodes[1].net.blocker(&["history", &prefix]).ok().stdout;
    assert!(
        history.contains("fleet") && history.contains("node-0"),
        "{history}"
    );
    assert!(
        !nodes[0].has_ban(&prefix),
        "node-0 keeps its own dynamic entry"
    );
    thread_settle();
    assert_eq!(nodes[0].count("published"), 1, "published once");
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_burst_of_bans_is_applied_in_bulk_where_the_allowlist_still_wins_and_unbans_lift() {
    require_root();
    // Node 2 keeps its CLI changes (its allowlist) to itself.
    let (ns, _nats, nodes) = fleet_with(1, "share = [\"offense\", \"log\"]");
    let guarded = nodes[2].net.client_v4(1, 2);
    nodes[2]
        .net
        .blocker(&["allow", &guarded.to_string(), "--reason", "office"])
        .ok();
    // 600 bans: both clients, and addresses of node 1's range that send nothing.
    let clients = [client_prefix(&nodes[1]), client_prefix(&nodes[2])];
    let std::net::IpAddr::V4(base) = nodes[1].net.client_v4(1, 2) else {
        unreachable!("an IPv4 client")
    };
    let [a, b, ..] = base.octets();
    let mut listed: Vec<String> = clients.to_vec();
    listed.extend((0..598).map(|i| format!("{a}.{b}.{}.{}/32", 100 + i / 200, 1 + i % 200)));
    let list = ns.dir.path().join("burst.list");
    std::fs::write(&list, listed.join("\n") + "\n").expect("writing the list");
    // The receivers are paused until the burst is published, so each takes it as one burst
    // however busy the machine is (running, a loaded one handed it over in runs too short
    // for the bulk path).
    for node in &nodes[1..] {
        node.pause_daemon(true);
    }
    nodes[0]
        .net
        .blocker(&["import", &list.to_string_lossy()])
        .ok();
    wait_or_explain(
        "node-0 to publish the burst",
        PROPAGATION,
        || nodes[0].count("published") >= 600,
        || nodes[0].log(),
    );
    for node in &nodes[1..] {
        node.pause_daemon(false);
    }

    let settled = |node: &Node, seen: u64| {
        wait_or_explain(
            &format!("{} to take the burst", node.name),
            PROPAGATION,
            || node.count("applied") + node.count("skipped") >= seen,
            || node.log(),
        );
    };
    settled(&nodes[1], 600);
    settled(&nodes[2], 600);
    assert!(
        !nodes[1].net.reaches(nodes[1].net.client_v4(1, 2)),
        "dropped at node-1"
    );
    assert_eq!(nodes[1].net.stored_bans().len(), 600);
    assert!(!nodes[2].has_ban(&clients[1]), "allowlisted on node-2");
    assert!(nodes[2].net.reaches(guarded), "and not dropped there");
    assert_eq!(nodes[2].net.stored_bans().len(), 599);
    for node in &nodes[1..] {
        assert!(node.log().contains("in bulk"), "{}", node.log());
    }
    let history = nodes[1].net.blocker(&["history", &clients[0]]).ok().stdout;
    assert!(
        history.contains("fleet") && history.contains("node-0"),
        "{history}"
    );

    // Node 0 lifts them all at once: lifted everywhere.
    let mut args = vec!["unban"];
    args.extend(listed.iter().map(String::as_str));
    nodes[0].net.blocker(&args).ok();
    nodes[1].wait_for_ban(&clients[0], false, &all(&nodes));
    wait_until("node-1 to lift the burst", PROPAGATION, || {
        nodes[1].net.stored_bans().is_empty()
    });
    assert!(
        nodes[1].net.reaches(nodes[1].net.client_v4(1, 2)),
        "passes again"
    );
    wait_until("node-2 to lift the burst", PROPAGATION, || {
        nodes[2].net.stored_bans().is_empty()
    });
}

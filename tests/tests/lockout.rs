//! Operators cannot lock themselves out by accident: bans of huge ranges, of the SSH session's
//! source or of the host's own addresses need `--force`, and `load` warns when a rule limits
//! the operator's unallowlisted SSH source.

use std::process::Command;

use blocker_tests::{blocker_bin, require_root, run_with_stdin, Run, TestNet};

/// `blocker ARGS` with this test's pins and state, `env` set and no SSH session (nor sudo)
/// inherited from whoever runs the tests; in the server namespace (whose addresses are "this
/// host") with `in_server`.
fn blocker(net: &TestNet, in_server: bool, env: &[(&str, &str)], args: &[&str]) -> Run {
    blocker_with_stdin(net, in_server, env, args, "")
}

fn blocker_with_stdin(
    net: &TestNet,
    in_server: bool,
    env: &[(&str, &str)],
    args: &[&str],
    input: &str,
) -> Run {
    let mut command = if in_server {
        let mut nsenter = Command::new("nsenter");
        nsenter
            .arg(format!("--net=/run/netns/{}", net.server_ns))
            .arg(blocker_bin());
        nsenter
    } else {
        Command::new(blocker_bin())
    };
    command
        .args(args)
        .env("BLOCKER_PIN_DIR", &net.pin_dir)
        .env("BLOCKER_STATE", net.state_path())
        .env("RUST_LOG", "info")
        .env_remove("SSH_CONNECTION")
        .env_remove("SSH_CLIENT")
        // Under sudo the session would be read from the test runner's parents.
        .env_remove("SUDO_USER")
        .envs(env.iter().copied());
    run_with_stdin(&mut command, input.as_bytes())
}

/// `SSH_CONNECTION` as sshd sets it for a session from `client` to the server's port 22.
fn ssh_from(net: &TestNet, client: std::net::IpAddr) -> String {
    format!("{client} 50022 {} 22", net.server_for(client))
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn bans_that_lock_the_operator_out_need_force() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let operator = net.client_v4(1, 2);
    let neighbour = net.client_v4(1, 3);
    let subnet = format!("{}/24", net.client_v4(1, 0));
    let ssh = ssh_from(&net, operator);
    let session = [("SSH_CONNECTION", ssh.as_str())];
    let state_before = net.state_text();
    let allow_hint = format!("`blocker allow {operator} --reason \"operator ssh\"`");
    let refused = |env: &[(&str, &str)], in_server: bool, args: &[&str], message: &str| {
        let run = blocker(&net, in_server, env, args);
        assert_eq!(run.code, 2, "{args:?} was not refused: {}", run.stderr);
        assert!(run.stderr.contains(message), "{args:?}: {}", run.stderr);
        assert!(
            run.stderr.contains("add --force to ban it anyway"),
            "{}",
            run.stderr
        );
        assert_eq!(net.state_text(), state_before, "{args:?} changed the state");
    };
    refused(
        &[],
        false,
        &["ban", "0.0.0.0/0"],
        "refusing to ban 0.0.0.0/0: it is wider than a /8",
    );
    refused(
        &[],
        false,
        &["ban", "::/0"],
        "refusing to ban ::/0: it is wider than a /16",
    );
    refused(
        &[],
        false,
        &["ban", "192.0.2.1", "128.0.0.0/1"],
        "refusing to ban 128.0.0.0/1",
    );
    refused(
        &session,
        false,
        &["ban", &subnet, "--for", "1h"],
        &format!(
            "refusing to ban {subnet}: it covers {operator}, the source of your SSH session \
             (SSH_CONNECTION); allowlist it first with {allow_hint}"
        ),
    );
    let ssh_client = format!("::ffff:{operator} 50022 22");
    refused(
        &[("SSH_CLIENT", &ssh_client)],
        false,
        &["ban", &operator.to_string()],
        &format!("it covers {operator}, the source of your SSH session (SSH_CLIENT)"),
    );
    refused(
        &[],
        true,
        &["ban", &net.server_v4().to_string()],
        &format!("it covers {}, an address of this host", net.server_v4()),
    );
    refused(
        &[],
        true,
        &["ban", &format!("{}/64", net.client_v6(0xb10c, 0))],
        &format!("it covers {}, an address of this host", net.server_v6()),
    );
    // `import` checks every line, and names the one it refuses.
    let list = format!("192.0.2.1 # fine\n{subnet} # the operator's network\n");
    let run = blocker_with_stdin(&net, false, &session, &["import", "-"], &list);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("stdin:2: refusing to ban {subnet}")),
        "{}",
        run.stderr
    );
    assert_eq!(
        net.state_text(),
        state_before,
        "a refused import changed the state"
    );
    assert!(net.reaches(operator), "the operator still gets through");

    // --force bans it all the same, and the ban works.
    blocker(&net, false, &session, &["ban", &subnet, "--force"]).ok();
    assert!(!net.reaches(operator));
    net.blocker(&["unban", &subnet]).ok();
    blocker_with_stdin(&net, false, &session, &["import", "-", "--force"], &list).ok();
    assert!(!net.reaches(neighbour));
    net.blocker(&["unban", &subnet]).ok();

    // An allowlisted source cannot be locked out (the allowlist wins), so no --force is needed.
    net.blocker(&["allow", &operator.to_string(), "--reason", "operator ssh"])
        .ok();
    blocker(&net, false, &session, &["ban", &subnet]).ok();
    assert!(net.reaches(operator), "the allowlisted operator passes");
    assert!(!net.reaches(neighbour), "the rest of the range is banned");
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn under_sudo_the_ssh_session_is_found_in_a_parent_process() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let operator = net.client_v4(1, 2);
    let subnet = format!("{}/24", net.client_v4(1, 0));
    let ssh = ssh_from(&net, operator);
    let state_before = net.state_text();
    // The login shell holds the session; sudo's env_reset leaves the command without it. A
    // shell that runs the command as a child (not exec) stands for both.
    let sudo = |extra: &str| {
        let mut shell = Command::new("sh");
        shell
            .arg("-c")
            .arg(format!(
                "env -u SSH_CONNECTION -u SSH_CLIENT SUDO_USER=operator \"$0\" ban {subnet} \
                 {extra}; exit $?"
            ))
            .arg(blocker_bin())
            .env("BLOCKER_PIN_DIR", &net.pin_dir)
            .env("BLOCKER_STATE", net.state_path())
            .env("RUST_LOG", "info")
            .env("SSH_CONNECTION", &ssh)
            .env_remove("SSH_CLIENT");
        run_with_stdin(&mut shell, b"")
    };
    let run = sudo("");
    assert_eq!(run.code, 2, "the ban was not refused: {}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "refusing to ban {subnet}: it covers {operator}, the source of your SSH session \
             (SSH_CONNECTION of process "
        )),
        "{}",
        run.stderr
    );
    assert_eq!(
        net.state_text(),
        state_before,
        "the refusal changed the state"
    );
    assert_eq!(sudo("--force").code, 0);
    assert!(!net.reaches(operator), "--force bans it all the same");
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn an_allowlist_entry_that_would_lift_bans_on_a_large_part_of_the_internet_needs_force() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let banned = net.client_v4(1, 2);
    net.blocker(&["ban", &banned.to_string()]).ok();
    let state_before = net.state_text();
    let run = net.blocker(&["allow", "0.0.0.0/0"]);
    assert_eq!(run.code, 2, "the entry was not refused: {}", run.stderr);
    assert!(
        run.stderr
            .contains("refusing to allow 0.0.0.0/0: it is wider than a /8"),
        "{}",
        run.stderr
    );
    // A list's allow entries (`import --with-allow`) the same way.
    let list = net.state_dir.path().join(".htaccess");
    std::fs::write(&list, "deny from 192.0.2.1\nallow from 0.0.0.0/0\n").expect("the list");
    let run = net.blocker(&["import", &list.to_string_lossy(), "--with-allow"]);
    assert_eq!(run.code, 2, "the list was not refused: {}", run.stderr);
    assert!(
        run.stderr.contains("refusing to allow 0.0.0.0/0"),
        "{}",
        run.stderr
    );
    assert_eq!(
        net.state_text(),
        state_before,
        "a refusal changed the state"
    );
    assert!(!net.reaches(banned), "the ban still applies");
    net.blocker(&["allow", "0.0.0.0/0", "--force"]).ok();
    assert!(
        net.reaches(banned),
        "--force allows it, and the allowlist wins"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn removing_the_allowlist_entry_that_keeps_the_operator_in_needs_force() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let operator = net.client_v4(1, 2);
    let subnet = format!("{}/24", net.client_v4(1, 0));
    let ssh = ssh_from(&net, operator);
    let session = [("SSH_CONNECTION", ssh.as_str())];
    net.blocker(&["allow", &operator.to_string(), "--reason", "operator ssh"])
        .ok();
    blocker(&net, false, &session, &["ban", &subnet]).ok();
    assert!(net.reaches(operator), "the allowlisted operator passes");
    let state_before = net.state_text();

    let run = blocker(
        &net,
        false,
        &session,
        &["allow", "--remove", &operator.to_string()],
    );
    assert_eq!(run.code, 2, "the removal was not refused: {}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "refusing to remove {operator}/32 from the allowlist: {operator}, the source of \
             your SSH session (SSH_CONNECTION), is banned by {subnet}; nothing was changed \
             (add --force to remove it anyway)"
        )),
        "{}",
        run.stderr
    );
    assert_eq!(
        net.state_text(),
        state_before,
        "the refusal changed the state"
    );
    assert!(net.reaches(operator), "the operator still gets through");

    // An address of this host (the server's, in the banned range) is kept the same way.
    let server = net.server_v4().to_string();
    net.blocker(&["allow", &server]).ok();
    let run = blocker(&net, true, &[], &["allow", "--remove", &server]);
    assert_eq!(run.code, 2, "the removal was not refused: {}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "{server}, an address of this host, is banned by {subnet}"
        )),
        "{}",
        run.stderr
    );

    blocker(
        &net,
        false,
        &session,
        &["allow", "--remove", &operator.to_string(), "--force"],
    )
    .ok();
    assert!(
        !net.reaches(operator),
        "--force removes it, and the ban applies"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn load_warns_once_when_the_ssh_rule_covers_the_operator() {
    require_root();
    let net = TestNet::new();
    let operator = net.client_v4(1, 2);
    let ssh = ssh_from(&net, operator);
    let session = [("SSH_CONNECTION", ssh.as_str())];
    let fix = format!("run `blocker allow {operator} --reason \"operator ssh\"`");
    let iface = net.server_if.as_str();

    // The built-in `ssh` rule limits tcp/22, and the operator is not allowlisted.
    let run = blocker(&net, true, &session, &["load", "--iface", iface]).ok();
    assert_eq!(run.stderr.matches(&fix).count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("rule \"ssh\" limits tcp/22"),
        "{}",
        run.stderr
    );

    // Following the advice silences it.
    net.blocker(&["allow", &operator.to_string(), "--reason", "operator ssh"])
        .ok();
    net.blocker(&["unload"]).ok();
    let run = blocker(&net, true, &session, &["load", "--iface", iface]).ok();
    assert!(!run.stderr.contains("SSH session"), "{}", run.stderr);

    // No SSH session, or no rule on its port: nothing to warn about.
    net.blocker(&["allow", "--remove", &operator.to_string()])
        .ok();
    net.blocker(&["unload"]).ok();
    let run = blocker(&net, true, &[], &["load", "--iface", iface]).ok();
    assert!(!run.stderr.contains("SSH session"), "{}", run.stderr);
    net.blocker(&["unload"]).ok();
    let web_only = net.config(
        "web.toml",
        "[[rules]]\nname = \"web\"\nproto = \"tcp\"\ndport = \"80-443\"\n",
    );
    let run = blocker(
        &net,
        true,
        &session,
        &["load", "--iface", iface, "--config", &web_only],
    )
    .ok();
    assert!(!run.stderr.contains("SSH session"), "{}", run.stderr);
    // A rule added at runtime on the SSH port warns the same way.
    let run = blocker(
        &net,
        false,
        &session,
        &["rule", "add", "ssh", "--proto", "tcp", "--dport", "22"],
    )
    .ok();
    assert_eq!(run.stderr.matches(&fix).count(), 1, "{}", run.stderr);
}

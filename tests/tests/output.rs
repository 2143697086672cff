//! What the CLI prints and reads at its edges: untrusted text is escaped, a closed pipe ends a
//! command quietly, export -> import keeps temporary bans temporary, and odd input is bad
//! input (exit 2) wherever it comes from.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use blocker_tests::{blocker_bin, require_root, run_with_stdin, Run, TestNet};

/// `blocker ARGS` with this test's pins and state and raw bytes on stdin.
fn blocker_with_bytes(net: &TestNet, args: &[&str], input: &[u8]) -> Run {
    run_with_stdin(&mut command(net, args), input)
}

fn command(net: &TestNet, args: &[&str]) -> Command {
    let mut command = Command::new(blocker_bin());
    command
        .args(args)
        .env("BLOCKER_PIN_DIR", &net.pin_dir)
        .env("BLOCKER_STATE", net.state_path());
    command
}

/// Waits for `child` at most `limit`; panics (after killing it) if it is still running.
fn exit_within(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("polling blocker") {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("blocker still running after {limit:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn control_characters_in_reasons_are_escaped_and_reasons_are_bounded() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let hostile = "\u{1b}[2J\u{1b}]0;pwned\u{7}\r\n6.6.6.6/32 # forged \u{9b}31m";
    net.blocker(&["ban", "192.0.2.1", "--reason", hostile]).ok();
    net.blocker(&["allow", "192.0.2.2", "--reason", "tab\there"])
        .ok();
    for args in [&["list"][..], &["export"]] {
        let out = net.blocker(args).ok().stdout;
        for raw in ['\u{1b}', '\u{7}', '\r', '\u{9b}', '\t'] {
            assert!(!out.contains(raw), "{args:?} printed {raw:?} raw: {out:?}");
        }
        assert!(
            out.contains("\\u{1b}[2J\\u{1b}]0;pwned\\u{7}\\r\\n6.6.6.6/32 # forged \\u{9b}31m"),
            "{args:?}: {out}"
        );
        assert!(
            !out.lines().any(|line| line.starts_with("6.6.6.6")),
            "{args:?}: a reason forged a row: {out}"
        );
    }
    assert!(net.blocker(&["list"]).stdout.contains("tab\\there"));
    // JSON keeps the exact text (JSON escapes it), for programs.
    let listed = net.blocker(&["list", "--json"]).ok().json();
    assert_eq!(listed[0]["reason"], hostile);

    let state_before = net.state_text();
    let long = "x".repeat(1025);
    for args in [
        vec!["ban", "192.0.2.3", "--reason", &long],
        vec!["allow", "192.0.2.4", "--reason", &long],
    ] {
        let run = net.blocker(&args);
        assert_eq!(run.code, 2, "{}", run.stderr);
        assert!(
            run.stderr
                .contains("reason too long (1025 bytes): at most 1024 bytes"),
            "{}",
            run.stderr
        );
    }
    let list = format!("192.0.2.5 # {long}\n");
    let run = net.blocker_with_stdin(&["import", "-"], &list);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("stdin:1: plain format: reason too long"),
        "{}",
        run.stderr
    );
    assert_eq!(
        net.state_text(),
        state_before,
        "a refused reason was stored"
    );
    net.blocker(&["ban", "192.0.2.3", "--reason", &long[..1024]])
        .ok();
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn a_closed_pipe_ends_printing_quietly() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    // Far more than a pipe buffer (64 KiB), so the command is still writing when `head` goes.
    let list: String = (0..4000)
        .map(|i| format!("198.18.{}.{} # scanner number {i}\n", i / 250, i % 250 + 1))
        .collect();
    net.blocker_with_stdin(&["import", "-"], &list).ok();
    for args in [&["list"][..], &["list", "--json"], &["export"]] {
        let mut child = command(&net, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running blocker");
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("reading the first line");
        assert!(!first.is_empty(), "{args:?} printed nothing");
        // The reader is dropped here: `blocker ARGS | head -1`.
        let status = exit_within(&mut child, Duration::from_secs(20));
        let out = child.wait_with_output().expect("stderr");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            status.success(),
            "{args:?} | head: {status}, stderr: {stderr}"
        );
        assert!(stderr.is_empty(), "{args:?} | head: {stderr}");
    }
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn events_stop_quietly_when_their_reader_goes_away() {
    require_root();
    let net = TestNet::new();
    let target = net.tcp_listener(net.server_v4());
    let rule = format!(
        "[[rules]]\nname = \"tight\"\nproto = \"tcp\"\ndport = {}\nhitcount = 1\n",
        target.port()
    );
    net.load_with_rules(&rule).ok();
    let mut events = command(&net, &["events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running blocker events");
    drop(events.stdout.take());
    // Let it open the ring buffer, then get a source blacklisted: the event's line fails.
    thread::sleep(Duration::from_millis(500));
    let source = net.client_v4(1, 2);
    for _ in 0..3 {
        let _ = net.tcp_connect(source, target);
    }
    let status = exit_within(&mut events, Duration::from_secs(10));
    let out = events.wait_with_output().expect("stderr");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(status.success(), "{status}, stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn export_then_import_keeps_temporary_bans_temporary() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let temporary = net.client_v4(1, 2);
    let permanent = net.client_v4(1, 3);
    net.blocker(&[
        "ban",
        &temporary.to_string(),
        "--for",
        "4s",
        "--reason",
        "probe",
    ])
    .ok();
    net.blocker(&["ban", &permanent.to_string(), "--reason", "for good"])
        .ok();
    let before = net.blocker(&["list", "--json"]).ok().json();
    let exported = net.blocker(&["export"]).ok().stdout;
    assert!(exported.contains(" expires="), "{exported}");
    net.blocker(&["unban", &temporary.to_string(), &permanent.to_string()])
        .ok();
    assert!(net.reaches(temporary));

    // An older export line without expires= still imports, as a permanent ban; a line whose
    // time has passed is skipped.
    let list = format!(
        "{exported}192.0.2.9 # from an older export\n\
         192.0.2.10 expires=2001-01-01T00:00:00Z # long gone\n"
    );
    let run = net.blocker_with_stdin(&["import", "-"], &list).ok();
    assert!(
        run.stderr
            .contains("stdin: skipped 1 entries whose expiry time has passed"),
        "{}",
        run.stderr
    );
    let after = net.blocker(&["list", "--json"]).ok().json();
    let row = |list: &serde_json::Value, addr: String| {
        list.as_array()
            .expect("a list")
            .iter()
            .find(|row| row["addr"] == addr)
            .unwrap_or_else(|| panic!("{addr} missing from {list}"))
            .clone()
    };
    for addr in [format!("{temporary}/32"), format!("{permanent}/32")] {
        let (was, is) = (row(&before, addr.clone()), row(&after, addr));
        assert_eq!(is["kind"], was["kind"]);
        assert_eq!(is["expires_at"], was["expires_at"]);
        assert_eq!(is["reason"], was["reason"]);
    }
    assert_eq!(row(&after, "192.0.2.9/32".into())["kind"], "permanent");
    assert_eq!(after.as_array().map(Vec::len), Some(3), "{after}");

    // The kernel has the expiry too: the imported ban lifts on time.
    assert!(!net.reaches(temporary));
    assert!(!net.reaches(permanent));
    thread::sleep(Duration::from_secs(5));
    assert!(net.reaches(temporary), "the imported temporary ban expired");
    assert!(!net.reaches(permanent));
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn odd_input_is_bad_input_from_stdin_and_files_alike() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let state_before = net.state_text();
    let not_utf8 = b"192.0.2.1\n192.0.2.2 # caf\xe9\n";
    let run = blocker_with_bytes(&net, &["import", "-"], not_utf8);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("cannot read stdin: line 2 is not UTF-8 text"),
        "{}",
        run.stderr
    );
    let file = net.state_dir.path().join("latin1.txt");
    std::fs::write(&file, not_utf8).expect("writing the list");
    let file = file.to_string_lossy().into_owned();
    let run = net.blocker(&["import", &file]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("cannot read {file}: line 2 is not UTF-8 text")),
        "{}",
        run.stderr
    );
    for bad in ["10.0.0.0/08", "10.0.0.0/032", "2001:db8::/064"] {
        let run = net.blocker(&["ban", bad]);
        assert_eq!(run.code, 2, "{bad} was accepted: {}", run.stderr);
        assert!(run
            .stderr
            .contains(&format!("invalid address or CIDR: {bad:?}")));
    }
    assert_eq!(net.state_text(), state_before);
}

/// Needs no root: the state file is read before anything privileged.
#[test]
fn an_os_error_is_reported_once() {
    // A directory where the state file should be, in a directory only this user may write
    // (one others may write, as /tmp, is refused before the file is opened).
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state.db");
    std::fs::create_dir(&state).expect("a directory in the file's place");
    let out: Run = Command::new(blocker_bin())
        .args(["list", "bans", "--state"])
        .arg(&state)
        .output()
        .expect("running blocker")
        .into();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(
        out.stderr.trim(),
        format!(
            "error: reading state file {}: Is a directory (os error 21)",
            state.display()
        )
    );
}

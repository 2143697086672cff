//! `blocker doctor`: exit 0 on a healthy setup (loaded, daemon up, the SSH source allowlisted),
//! and exit 1 naming the broken part: bpffs unmounted (in a private mount namespace), a missing
//! interface, an SSH source missing from the allowlist.

use std::process::{Command, Stdio};

use blocker_tests::{blocker_bin, daemon::DaemonGuard, require_root, Run, TestNet};

/// A documentation address standing for the operator's SSH client.
const OPERATOR: &str = "198.51.100.7";

/// `blocker doctor ARGS` in the server namespace as run from an SSH session from `ssh_client`;
/// with `unmount_bpffs`, inside a private mount namespace without /sys/fs/bpf.
fn doctor(
    net: &TestNet,
    daemon: &DaemonGuard,
    ssh_client: &str,
    unmount_bpffs: bool,
    args: &[&str],
) -> Run {
    let mut command = Command::new("nsenter");
    command.arg(format!("--net=/run/netns/{}", net.server_ns));
    if unmount_bpffs {
        // Every bpffs stacked on /sys/fs/bpf goes, in this mount namespace only.
        command.args([
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "while umount /sys/fs/bpf 2>/dev/null; do :; done; exec \"$0\" \"$@\"",
        ]);
    }
    command
        .arg(blocker_bin())
        .args(["doctor", "--socket", &daemon.socket])
        .args(args)
        .env("BLOCKER_PIN_DIR", &net.pin_dir)
        .env("BLOCKER_STATE", net.state_path())
        .env(
            "SSH_CONNECTION",
            format!("{ssh_client} 50022 192.0.2.200 22"),
        )
        .env_remove("SSH_CLIENT")
        .env_remove("SUDO_USER")
        .stdin(Stdio::null())
        .output()
        .expect("running blocker doctor")
        .into()
}

fn healthy() -> (TestNet, DaemonGuard) {
    let net = TestNet::new();
    let config = net.config("daemon.toml", "rules = []\n");
    net.load(&["--config", &config]).ok();
    net.blocker(&["allow", OPERATOR, "--reason", "operator ssh"])
        .ok();
    let daemon = DaemonGuard::start(&net, &config);
    (net, daemon)
}

fn line<'a>(run: &'a Run, check: &str) -> &'a str {
    run.stdout
        .lines()
        .find(|line| line[4..].trim_start().starts_with(&format!("{check}:")))
        .unwrap_or_else(|| panic!("no {check} line:\n{}", run.stdout))
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn doctor_passes_a_healthy_setup() {
    require_root();
    let (net, daemon) = healthy();
    let run = doctor(&net, &daemon, OPERATOR, false, &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    for check in ["kernel", "bpffs", "pins", "state", "maps", "daemon"] {
        assert!(line(&run, check).starts_with("ok "), "{}", run.stdout);
    }
    let iface = line(&run, "interface");
    assert!(
        iface.contains(&format!("{}: driver veth, native XDP", net.server_if)),
        "{iface}"
    );
    assert!(line(&run, "ssh").contains("198.51.100.7 is allowlisted"));
    let json = doctor(&net, &daemon, OPERATOR, false, &["--json"])
        .ok()
        .json();
    let checks = json.as_array().expect("a list of checks");
    assert!(
        checks.iter().all(|check| check["outcome"] != "fail"),
        "{json}"
    );
    // A writer stopped between its commit and the maps leaves its mark: doctor says so.
    std::os::unix::fs::symlink("database-ahead", net.pin_dir.join("maps-pending"))
        .expect("the mark");
    let run = doctor(&net, &daemon, OPERATOR, false, &[]);
    assert!(
        line(&run, "pins").contains("may be behind"),
        "{}",
        run.stdout
    );
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn doctor_fails_without_bpffs() {
    require_root();
    let (net, daemon) = healthy();
    let run = doctor(&net, &daemon, OPERATOR, true, &[]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let bpffs = line(&run, "bpffs");
    assert!(bpffs.starts_with("FAIL"), "{bpffs}");
    assert!(
        bpffs.contains("fix: mount -t bpf bpf /sys/fs/bpf"),
        "{bpffs}"
    );
    assert!(line(&run, "pins").starts_with("FAIL"));
    assert!(run.stderr.contains("checks failed"), "{}", run.stderr);
    // The host's bpffs was untouched: the same doctor outside the namespace passes.
    assert_eq!(doctor(&net, &daemon, OPERATOR, false, &[]).code, 0);
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn doctor_fails_on_a_missing_interface() {
    require_root();
    let (net, daemon) = healthy();
    let run = doctor(&net, &daemon, OPERATOR, false, &["--iface", "blkgone0"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let iface = line(&run, "interface");
    assert!(
        iface.starts_with("FAIL interface: blkgone0: no such interface"),
        "{iface}"
    );
    let others = run
        .stdout
        .lines()
        .filter(|line| line.starts_with("FAIL"))
        .count();
    assert_eq!(others, 1, "only the interface fails:\n{}", run.stdout);
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn doctor_fails_when_the_ssh_source_is_not_allowlisted() {
    require_root();
    let (net, daemon) = healthy();
    let run = doctor(&net, &daemon, "198.51.100.8", false, &[]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let ssh = line(&run, "ssh");
    assert!(
        ssh.starts_with("FAIL ssh: your SSH source 198.51.100.8"),
        "{ssh}"
    );
    assert!(
        ssh.ends_with(r#"fix: blocker allow 198.51.100.8 --reason "operator ssh""#),
        "{ssh}"
    );
}

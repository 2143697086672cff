//! `cargo xtask package` builds a .deb that installs with apt-get on this machine: the binary
//! runs, the unit file is the hardened one with the packaged paths, the config is a conffile,
//! nothing is attached by the install, and removing (then purging) it leaves nothing behind.

use std::{path::Path, process::Command};

use blocker_tests::require_root;

fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap_or_else(|err| panic!("running {program}: {err}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The unit as systemd sees it, or the file where systemd is not PID 1.
fn unit_text() -> String {
    if Path::new("/run/systemd/system").exists() {
        sh("systemctl", &["cat", "blocker"])
    } else {
        std::fs::read_to_string("/lib/systemd/system/blocker.service").expect("the unit file")
    }
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn the_package_installs_runs_and_removes_cleanly() {
    require_root();
    assert!(
        !Path::new("/sys/fs/bpf/blocker").exists(),
        "blocker is loaded at the default pins: this test cannot tell an install's load apart"
    );
    // The test installs, removes and purges the package on this machine: it must not take
    // anything of an installed blocker with it (purge deletes /var/lib/blocker).
    for path in ["/usr/bin/blocker", "/etc/blocker", "/var/lib/blocker"] {
        assert!(
            !Path::new(path).exists(),
            "{path} exists already: the install and purge would replace or delete it; move it \
             away to run this test"
        );
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = sh(
        &cargo,
        &["run", "--quiet", "--package", "xtask", "--", "package"],
    );
    let deb = built
        .lines()
        .find_map(|line| line.strip_prefix("xtask: built "))
        .unwrap_or_else(|| panic!("no package named in: {built}"));
    assert!(
        deb.ends_with("_amd64.deb") && Path::new(deb).exists(),
        "{deb}"
    );
    let contents = sh("dpkg-deb", &["--contents", deb]);
    for path in [
        "./usr/bin/blocker",
        "./lib/systemd/system/blocker.service",
        "./etc/blocker/config.toml",
        "./var/lib/blocker/",
        "./usr/share/man/man1/blocker.1",
        "./usr/share/man/man1/blocker-import.1",
        "./usr/share/bash-completion/completions/blocker",
        "./usr/share/zsh/vendor-completions/_blocker",
        "./usr/share/fish/vendor_completions.d/blocker.fish",
    ] {
        assert!(
            contents.contains(path),
            "{path} missing from the package:\n{contents}"
        );
    }
    let conffiles = sh("dpkg-deb", &["--info", deb, "conffiles"]);
    assert_eq!(conffiles.trim(), "/etc/blocker/config.toml");

    sh("apt-get", &["install", "-y", "-q", deb]);
    let version = sh("blocker", &["--version"]);
    assert!(version.starts_with("blocker "), "{version}");
    let unit = unit_text();
    for line in [
        "ExecStart=/usr/bin/blocker daemon --config /etc/blocker/config.toml",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=CAP_BPF",
    ] {
        assert!(unit.contains(line), "{line} missing from the unit:\n{unit}");
    }
    assert!(!unit.contains("/usr/local/bin"), "{unit}");
    sh(
        "blocker",
        &["daemon", "--check-config", "/etc/blocker/config.toml"],
    );
    assert!(Path::new("/var/lib/blocker").is_dir());
    // `blocker load` pins there: the install loaded nothing.
    assert!(
        !Path::new("/sys/fs/bpf/blocker").exists(),
        "the install loaded blocker"
    );

    sh("apt-get", &["remove", "-y", "-q", "blocker"]);
    assert!(!Path::new("/usr/bin/blocker").exists());
    assert!(!Path::new("/lib/systemd/system/blocker.service").exists());
    assert!(
        Path::new("/etc/blocker/config.toml").exists(),
        "remove keeps the conffile"
    );
    sh("apt-get", &["purge", "-y", "-q", "blocker"]);
    assert!(
        !Path::new("/etc/blocker/config.toml").exists(),
        "purge leaves the config"
    );
    assert!(
        !Path::new("/var/lib/blocker").exists(),
        "purge leaves the state directory"
    );
}

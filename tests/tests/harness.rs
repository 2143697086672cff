//! The harness itself: an integration test cannot pass without running. Without root it is
//! listed as ignored, with the reason; forced to run without root it fails.

use std::{os::unix::process::CommandExt, process::Command};

use blocker_tests::require_root;

/// The unprivileged user the test binary is re-run as.
const NOBODY: u32 = 65534;

/// Re-runs this very test as `nobody`, with `extra` harness arguments. It runs a copy in a
/// directory `nobody` may enter: the build directory may be under root's home.
fn this_test_as_nobody(extra: &[&str]) -> (bool, String) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("opening the temp dir to nobody");
    let copy = dir.path().join("harness");
    std::fs::copy(std::env::current_exe().expect("test binary path"), &copy)
        .expect("copying the test binary");
    let run = || {
        Command::new(&copy)
            .args([
                "--exact",
                "root_tests_are_ignored_without_root_and_fail_if_forced",
            ])
            .args(extra)
            .current_dir(dir.path())
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
    };
    // A process another test thread forks while the copy is being written holds it open for
    // writing until that process execs: "text file busy" for a moment.
    let mut tries = 0;
    let out = loop {
        match run() {
            Err(err) if err.raw_os_error() == Some(nix::libc::ETXTBSY) && tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            result => break result.expect("re-running the test binary as nobody"),
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn root_tests_are_ignored_without_root_and_fail_if_forced() {
    require_root();
    let (ok, output) = this_test_as_nobody(&[]);
    assert!(ok, "{output}");
    assert!(output.contains("ignored, needs root"), "{output}");
    assert!(output.contains("0 passed; 0 failed; 1 ignored"), "{output}");
    let (ok, output) = this_test_as_nobody(&["--include-ignored"]);
    assert!(!ok, "a root test passed without root:\n{output}");
    assert!(output.contains("needs root"), "{output}");
}

/// `.ci/totals` on a `cargo test` log: its verdict (passes?) and what it printed.
fn ci_totals(log: &str) -> (bool, String) {
    use std::io::Write;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/totals");
    let mut child = Command::new(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running .ci/totals");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(log.as_bytes())
        .expect("writing the log");
    let out = child.wait_with_output().expect("waiting for .ci/totals");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn ci_fails_when_an_integration_test_was_skipped() {
    let unit = "     Running unittests src/lib.rs (target/debug/deps/blocker-1)\n\
                test result: ok. 50 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out\n";
    let integration = |passed: u32, ignored: u32| {
        format!(
            "     Running tests/bans.rs (target/debug/deps/bans-2)\n\
             test result: ok. {passed} passed; 0 failed; {ignored} ignored; 0 measured; 0 filtered out\n\
             Doc-tests blocker\n\
             test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n"
        )
    };
    let (ok, out) = ci_totals(&format!("{unit}{}", integration(10, 0)));
    assert!(ok, "{out}");
    assert!(out.contains("tests: 60 passed, 0 failed, 0 skipped"));
    let (ok, out) = ci_totals(&format!("{unit}{}", integration(9, 1)));
    assert!(!ok, "a skipped integration test passed CI: {out}");
    assert!(out.contains("0 failed, 1 skipped"), "{out}");
    let (ok, out) = ci_totals(unit);
    assert!(!ok, "CI passed without integration tests: {out}");
}

//! fail2ban as a front end: the real fail2ban (Debian's package) runs a jail over a log this
//! test writes, with contrib/fail2ban/action.d/blocker.conf as its ban action. fail2ban decides,
//! blocker stores the ban and drops the packets at the driver; fail2ban's unban lifts it.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use blocker_tests::{blocker_bin, require_root, TestNet};

const JAIL: &str = "blocker-test";

/// A fail2ban server with its own configuration, socket and database in `dir`; stopped (and
/// its process waited for) on drop.
struct Fail2ban {
    dir: PathBuf,
    server: Child,
}

impl Fail2ban {
    fn start(net: &TestNet, dir: &Path) -> Self {
        let action =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/fail2ban/action.d/blocker.conf");
        std::fs::create_dir_all(dir.join("action.d")).expect("action.d");
        std::fs::create_dir_all(dir.join("filter.d")).expect("filter.d");
        std::fs::copy(&action, dir.join("action.d/blocker.conf")).expect("copying the action");
        let d = dir.display();
        let files = [
            (
                "fail2ban.conf",
                format!(
                    "[Definition]\nloglevel = INFO\nlogtarget = {d}/fail2ban.log\n\
                     socket = {d}/fail2ban.sock\npidfile = {d}/fail2ban.pid\n\
                     dbfile = {d}/fail2ban.sqlite3\n"
                ),
            ),
            (
                "jail.conf",
                format!(
                    "[DEFAULT]\nbackend = polling\n\n[{JAIL}]\nenabled = true\nfilter = {JAIL}\n\
                     logpath = {d}/auth.log\nmaxretry = 2\nfindtime = 600\nbantime = 600\n\
                     banaction = blocker\naction = %(banaction)s\n"
                ),
            ),
            (
                &format!("filter.d/{JAIL}.conf"),
                "[Definition]\nfailregex = Failed password for \\S+ from <HOST>\n".to_string(),
            ),
            // The action as shipped, told where this test's blocker keeps its pins and state.
            (
                "action.d/blocker.local",
                format!(
                    "[Init]\nblocker = env BLOCKER_PIN_DIR={} BLOCKER_STATE={} {}\n",
                    net.pin_dir.display(),
                    net.state_path().display(),
                    blocker_bin().display()
                ),
            ),
        ];
        for (name, text) in files {
            std::fs::write(dir.join(name), text).expect("writing fail2ban's configuration");
        }
        std::fs::write(dir.join("auth.log"), "").expect("the log");
        let server = Command::new("fail2ban-client")
            .args(["-c", &d.to_string(), "-f", "-x", "start"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting fail2ban");
        let fail2ban = Fail2ban {
            dir: dir.to_path_buf(),
            server,
        };
        fail2ban.wait_for("the jail to start", || {
            fail2ban.client(&["status", JAIL]).status.success()
        });
        fail2ban
    }

    fn client(&self, args: &[&str]) -> std::process::Output {
        Command::new("fail2ban-client")
            .arg("-c")
            .arg(&self.dir)
            .args(args)
            .output()
            .expect("running fail2ban-client")
    }

    /// Polls `done` every 200 ms for at most 30 s; panics with fail2ban's log if it never holds.
    fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            if start.elapsed() > Duration::from_secs(30) {
                let log =
                    std::fs::read_to_string(self.dir.join("fail2ban.log")).unwrap_or_default();
                panic!("waited 30 s for {what}; fail2ban's log:\n{log}");
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_failures(&self, from: IpAddr, count: usize) {
        use std::io::Write as _;
        let now = jiff::Zoned::now().strftime("%Y-%m-%d %H:%M:%S").to_string();
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("auth.log"))
            .expect("the log");
        for _ in 0..count {
            writeln!(
                log,
                "{now} host sshd[4242]: Failed password for root from {from} port 52000 ssh2"
            )
            .expect("writing the log");
        }
    }
}

impl Drop for Fail2ban {
    fn drop(&mut self) {
        let stopped = self.client(&["stop"]).status.success();
        if !stopped {
            let _ = self.server.kill();
        }
        let _ = self.server.wait();
    }
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn fail2ban_decides_and_blocker_drops_at_the_driver() {
    require_root();
    let net = TestNet::new();
    net.load(&[]).ok();
    let (offender, bystander) = (net.client_v4(1, 2), net.client_v4(1, 3));
    let fail2ban = Fail2ban::start(&net, &net.state_dir.path().join("fail2ban"));
    assert!(net.reaches(offender));

    // One failure is under maxretry: no ban.
    fail2ban.log_failures(offender, 1);
    thread::sleep(Duration::from_secs(2));
    assert!(
        net.ban_of(&format!("{offender}/32")).is_none(),
        "banned under maxretry"
    );

    fail2ban.log_failures(offender, 2);
    fail2ban.wait_for("the ban", || {
        net.ban_of(&format!("{offender}/32")).is_some()
    });
    let ban = net.ban_of(&format!("{offender}/32")).expect("banned");
    assert_eq!(ban["kind"], "temporary", "{ban}");
    assert_eq!(ban["reason"], format!("fail2ban jail {JAIL}"), "{ban}");
    let dropped = net.packets("manual_ban");
    assert!(!net.reaches(offender), "fail2ban's ban does not drop");
    assert!(
        net.packets("manual_ban") > dropped,
        "no drop counted at the driver"
    );
    assert!(net.reaches(bystander));

    // fail2ban's unban lifts it.
    let unban = fail2ban.client(&["set", JAIL, "unbanip", &offender.to_string()]);
    assert!(
        unban.status.success(),
        "{}",
        String::from_utf8_lossy(&unban.stderr)
    );
    fail2ban.wait_for("the unban", || {
        net.ban_of(&format!("{offender}/32")).is_none()
    });
    assert!(net.reaches(offender));
}

//! Peers of the log jail tests: OpenSSH's sshd in a test's server namespace logging as syslog
//! would, journal files written by systemd-journal-remote, and a process's CPU time.

use std::{
    io::Write,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::TestNet;

/// Appends `text` to the file at `path`, creating it.
pub fn append(path: &Path, text: &str) {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("opening the log")
        .write_all(text.as_bytes())
        .expect("writing the log");
}

/// sshd in the server namespace, logging to a file; killed on drop.
pub struct Sshd {
    child: Child,
    pub log: PathBuf,
}

impl Sshd {
    pub fn start(net: &TestNet) -> Self {
        let dir = net.state_dir.path();
        let key = dir.join("ssh_host_ed25519_key");
        let keygen = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .expect("running ssh-keygen (cargo xtask setup installs openssh-server)");
        assert!(keygen.success());
        // Debian's sshd wants its privilege separation directory.
        std::fs::create_dir_all("/run/sshd").expect("creating /run/sshd");
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port 22\nListenAddress 0.0.0.0\nHostKey {}\nPasswordAuthentication yes\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nPidFile {}\nLogLevel INFO\n",
                key.display(),
                dir.join("sshd.pid").display()
            ),
        )
        .expect("writing sshd_config");
        // sshd -E writes bare messages; a syslog daemon prefixes them with the host and
        // `sshd[PID]: `, which is what the sshd filter (like fail2ban's) expects. Its stderr
        // (-e) is relayed to the log file the way syslog would write it.
        let log = dir.join("sshd.log");
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", net.server_ns))
            .arg("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting sshd (cargo xtask setup installs openssh-server)");
        let stderr = child.stderr.take().expect("sshd's stderr");
        let (relay_log, pid) = (log.clone(), child.id());
        append(&relay_log, "");
        thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                append(&relay_log, &format!("srv sshd[{pid}]: {line}\n"));
            }
        });
        let sshd = Self { child, log };
        let server = SocketAddr::new(net.server_v4(), 22);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !net.tcp_connects(net.client_v4(2, 2), server) {
            assert!(
                Instant::now() < deadline,
                "sshd did not come up: {}",
                std::fs::read_to_string(&sshd.log).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(100));
        }
        sshd
    }

    /// One password guess from `from` with the real ssh client; returns when it is refused
    /// or times out.
    pub fn guess(&self, net: &TestNet, from: IpAddr) {
        let _ = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", net.client_ns))
            .args(["timeout", "10", "sshpass", "-p", "wrong", "ssh"])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args([
                "-o",
                "PreferredAuthentications=password",
                "-o",
                "PubkeyAuthentication=no",
            ])
            .args(["-o", "NumberOfPasswordPrompts=1", "-o", "ConnectTimeout=3"])
            .args(["-o", "LogLevel=ERROR", "-b", &from.to_string()])
            .arg(format!("root@{}", net.server_v4()))
            .arg("true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes entries to a journal file in `dir` with systemd-journal-remote, as a journald
/// would: `unit`'s sshd messages from now.
pub fn write_journal(dir: &Path, unit: &str, messages: &[String]) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros();
    let mut export = String::new();
    for (i, message) in messages.iter().enumerate() {
        export.push_str(&format!(
            "__REALTIME_TIMESTAMP={}\n__MONOTONIC_TIMESTAMP={}\n\
             _BOOT_ID=0123456789abcdef0123456789abcdef\n_HOSTNAME=srv\n\
             SYSLOG_IDENTIFIER=sshd\n_PID=4242\n_SYSTEMD_UNIT={unit}\nMESSAGE={message}\n\n",
            now + i as u128,
            now + i as u128
        ));
    }
    let mut child = Command::new("/usr/lib/systemd/systemd-journal-remote")
        .arg(format!("--output={}", dir.join("remote.journal").display()))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running systemd-journal-remote (cargo xtask setup installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(export.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "systemd-journal-remote: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// User plus system CPU time of process `pid`, from /proc.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading /proc stat");
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split(' ').collect())
        .unwrap_or_default();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

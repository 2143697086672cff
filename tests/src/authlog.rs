//! A generated sshd auth log with a realistic mix (logins, sessions, cron, scanners' closed
//! connections, and about 5% failures from a few hundred sources), and the two readers that
//! compare filters over it: `fail2ban-regex -o row` and `blocker scan --json`. The log
//! filters test and the scan benchmark share them.

use std::{net::IpAddr, path::Path, process::Command};

/// One failure as both tools report it: the source and the line's time (seconds).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Failure {
    pub addr: IpAddr,
    pub time: i64,
}

/// Writes `lines` lines to `path`, deterministic for a `seed`; roughly one line in twenty is
/// a failure, from `sources` attacking addresses (IPv4 and IPv6).
pub fn write(path: &Path, lines: usize, sources: u32, seed: u64) -> std::io::Result<()> {
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut out = String::with_capacity(lines * 110);
    for n in 0..lines {
        // Ten lines a second from Nov 1, 00:00:00. Syslog dates carry no year: both tools
        // pick the same one.
        let second = n / 10;
        let stamp = format!(
            "Nov {:>2} {:02}:{:02}:{:02}",
            1 + (second / 86_400) % 28,
            (second / 3600) % 24,
            (second / 60) % 60,
            second % 60
        );
        let roll = next();
        // Every line its own process: fail2ban links the lines of one pid (a failure can take
        // its address from an earlier line), which blocker does not.
        let pid = 10_000 + n;
        let port = 1024 + (roll >> 20) % 60_000;
        let attacker = attacker((roll >> 40) as u32 % sources.max(1));
        let user = [
            "root", "admin", "oracle", "test", "ubuntu", "git", "postgres",
        ][(roll >> 8) as usize % 7];
        let client = format!("10.1.{}.{}", (roll >> 12) % 250, (roll >> 24) % 250);
        let line = match roll % 100 {
            0 | 1 => format!("sshd[{pid}]: Failed password for {user} from {attacker} port {port} ssh2"),
            2 => format!("sshd[{pid}]: Failed password for invalid user {user} from {attacker} port {port} ssh2"),
            3 => format!("sshd[{pid}]: Invalid user {user} from {attacker} port {port}"),
            4 => match (roll >> 50) % 3 {
                0 => format!("sshd[{pid}]: error: maximum authentication attempts exceeded for {user} from {attacker} port {port} ssh2 [preauth]"),
                1 => format!("sshd[{pid}]: error: PAM: Authentication failure for {user} from {attacker}"),
                _ => format!("sshd[{pid}]: User {user} from {attacker} not allowed because not listed in AllowUsers"),
            },
            5 | 6 => format!("sshd[{pid}]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost={attacker}  user={user}"),
            7..=9 => format!("sshd[{pid}]: Connection closed by {attacker} port {port} [preauth]"),
            10..=11 => format!("sshd[{pid}]: Failed publickey for deploy from {client} port {port} ssh2: ED25519 SHA256:Xq3kT0pYpJ1mT9cQ"),
            12..=25 => format!("sshd[{pid}]: Accepted publickey for deploy from {client} port {port} ssh2: ED25519 SHA256:Xq3kT0pYpJ1mT9cQ"),
            26..=40 => format!("sshd[{pid}]: pam_unix(sshd:session): session opened for user deploy(uid=1000) by (uid=0)"),
            41..=52 => format!("sshd[{pid}]: Received disconnect from {client} port {port}:11: disconnected by user"),
            53..=62 => format!("sshd[{pid}]: Disconnected from user deploy {client} port {port}"),
            63..=72 => format!("sshd[{pid}]: pam_unix(sshd:session): session closed for user deploy"),
            73..=84 => format!("CRON[{pid}]: pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)"),
            85..=92 => format!("systemd-logind[412]: New session {pid} of user deploy."),
            _ => format!("sudo[{pid}]:   deploy : TTY=pts/0 ; PWD=/home/deploy ; USER=root ; COMMAND=/usr/bin/systemctl status nginx"),
        };
        out.push_str(&stamp);
        out.push_str(" web1 ");
        out.push_str(&line);
        out.push('\n');
    }
    std::fs::write(path, out)
}

/// The n-th attacking source: mostly IPv4, every eighth an IPv6 address.
fn attacker(n: u32) -> String {
    if n % 8 == 7 {
        format!("2001:db8:{:x}::{:x}", n / 256, n % 256 + 1)
    } else {
        format!(
            "198.{}.{}.{}",
            18 + n / 65_536 % 2,
            n / 256 % 256,
            n % 256 + 1
        )
    }
}

/// The failures `fail2ban-regex -o row LOG FILTER` prints, in the log's order.
pub fn fail2ban_regex(log: &Path, filter: &str) -> anyhow::Result<Vec<Failure>> {
    let out = Command::new("fail2ban-regex")
        .args(["-o", "row"])
        .arg(log)
        .arg(filter)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "fail2ban-regex failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each row: ['203.0.113.5',	1796119201.0,	{...}],
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.starts_with("['"))
        .map(|line| {
            let mut fields = line.trim_start_matches("['").splitn(2, "',");
            let addr = fields.next().unwrap_or_default().parse()?;
            let time: f64 = fields
                .next()
                .and_then(|rest| rest.trim().split(',').next())
                .unwrap_or_default()
                .trim()
                .parse()?;
            Ok(Failure {
                addr,
                time: time.floor() as i64,
            })
        })
        .collect()
}

/// The failures in `blocker scan --json` output, in the log's order, with their line numbers.
pub fn blocker_scan(json: &[u8]) -> anyhow::Result<(Vec<u64>, Vec<Failure>)> {
    let report: serde_json::Value = serde_json::from_slice(json)?;
    let matches = report["matches"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no matches array in {report}"))?;
    let mut lines = Vec::new();
    let mut failures = Vec::new();
    for found in matches {
        lines.push(found["line"].as_u64().unwrap_or_default());
        let time: jiff::Timestamp = found["time"].as_str().unwrap_or_default().parse()?;
        failures.push(Failure {
            addr: found["addr"].as_str().unwrap_or_default().parse()?,
            time: time.as_second(),
        });
    }
    Ok((lines, failures))
}

//! The benchmark's namespace, blocker's pin dir and state in it, and the frames and
//! addresses the classes use.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
use aya::maps::MapData;
use blocker_tests::frames::{frame, ipv4, ipv6, IPV4, IPV6};

use super::{bpf, sh};
pub(super) fn v4_frame(source: [u8; 4], l4: Vec<u8>, proto: u8) -> Vec<u8> {
    frame(&[IPV4], &ipv4(source, 0, proto, &l4))
}

pub(super) fn v6_frame(source: [u8; 16], l4: Vec<u8>, proto: u8) -> Vec<u8> {
    frame(&[IPV6], &ipv6(source, &[], proto, &l4))
}

pub(super) const TCP: u8 = 6;
pub(super) const UDP: u8 = 17;

/// The n-th of many distinct IPv4 sources in 100.64.0.0/10.
pub(super) fn nth_source(n: u32) -> [u8; 4] {
    let [_, b, c, d] = n.to_be_bytes();
    [100, 64 + (b & 0x3f), c, d]
}

/// The blocker build every section measures: `target/release/blocker`, or the build
/// `BENCH_BLOCKER` names (an older commit's) for a same-run A/B.
pub(super) fn blocker_binary(root: &Path) -> PathBuf {
    std::env::var_os("BENCH_BLOCKER")
        .map_or_else(|| root.join("target/release/blocker"), PathBuf::from)
}

/// A namespace with a veth pair for the candidates, and blocker's own pin dir and state.
pub(super) struct Lab {
    pub(super) ns: String,
    pub(super) pin_dir: PathBuf,
    pub(super) state: PathBuf,
    pub(super) blocker: PathBuf,
    /// Holds the state file and the lists and configs the runs write.
    pub(super) dir: tempfile::TempDir,
}

impl Lab {
    pub(super) fn new(root: &Path) -> Result<Self> {
        let id = std::process::id();
        let dir = tempfile::tempdir()?;
        let lab = Self {
            ns: format!("blkbench{id}"),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/blocker-bench-{id}")),
            state: dir.path().join("state.db"),
            blocker: blocker_binary(root),
            dir,
        };
        sh("ip", &["netns", "add", &lab.ns])?;
        for (a, b) in [("bb0", "bb1"), ("xf0", "xf1")] {
            lab.ip(&["link", "add", a, "type", "veth", "peer", "name", b])?;
            lab.ip(&["link", "set", a, "up"])?;
            lab.ip(&["link", "set", b, "up"])?;
        }
        Ok(lab)
    }

    /// The benchmark's config file, written on first use.
    pub(super) fn config(&self) -> Result<String> {
        let path = self.dir.path().join("bench.toml");
        std::fs::write(&path, BENCH_CONFIG)?;
        Ok(path.to_string_lossy().into_owned())
    }

    pub(super) fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.ns.as_str()];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    pub(super) fn in_ns(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg(program);
        command
    }

    pub(super) fn blocker_command(&self) -> Command {
        let mut command = self.in_ns(&self.blocker.to_string_lossy());
        command
            .env("BLOCKER_PIN_DIR", &self.pin_dir)
            .env("BLOCKER_STATE", &self.state)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        command
    }

    pub(super) fn blocker(&self, args: &[&str]) -> Result<String> {
        let out = self.blocker_command().args(args).output()?;
        if !out.status.success() {
            bail!(
                "blocker {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The id of the XDP program attached to `iface`.
    pub(super) fn xdp_prog_id(&self, iface: &str) -> Result<u32> {
        bpf::xdp_prog_id(&self.ns, iface)
    }

    /// The XDP program attached to `iface`.
    pub(super) fn xdp_prog(&self, iface: &str) -> Result<OwnedFd> {
        bpf::prog_by_id(self.xdp_prog_id(iface)?)
    }

    pub(super) fn map(&self, name: &str) -> Result<MapData> {
        MapData::from_pin(self.pin_dir.join(name)).with_context(|| format!("opening {name}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.blocker(&["unload"]);
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

pub(super) const BENCH_CONFIG: &str = r#"
# Room for the 100k-entry allowlist of the scaling run.
[maps]
allow = 262144

[[rules]]
name = "ssh"
proto = "tcp"
dport = 22

[[rules]]
name = "web-burst"
kind = "burst"
proto = "tcp"
dport = 80
"#;

pub(super) const BANNED_V4: [u8; 4] = [192, 0, 2, 66];
pub(super) const IN_BANNED_RANGE: [u8; 4] = [10, 20, 30, 40];
pub(super) const ALLOWED_V4: [u8; 4] = [203, 0, 113, 10];
pub(super) const UNMATCHED_V4: [u8; 4] = [198, 51, 100, 1];
pub(super) const ATTACKER_V4: [u8; 4] = [198, 51, 100, 99];
/// The /24 the ban-to-enforcement probes come from.
pub(super) const BAN_PROBES: [u8; 4] = [198, 18, 0, 0];

pub(super) fn v6(text: &str) -> [u8; 16] {
    text.parse::<Ipv6Addr>()
        .map(|a| a.octets())
        .unwrap_or_default()
}

/// blocker on the lab's bb0 with the bench config, the bans and the allowlist entry the
/// cost classes need.
pub(super) fn load_blocker(lab: &Lab) -> Result<OwnedFd> {
    lab.blocker(&["load", "--iface", "bb0", "--config", &lab.config()?])?;
    lab.blocker(&["ban", "192.0.2.66", "10.20.0.0/16", "2001:db8:bad::/64"])?;
    lab.blocker(&["allow", "203.0.113.10"])?;
    lab.xdp_prog("bb0")
}

/// Manual bans in force for the cost classes (issue 11: "with 100k bans loaded").
pub(super) const GOAL_BANS: usize = 100_000;
/// Allowlist entries in force for the cost classes.
pub(super) const GOAL_ALLOWS: usize = 1_000;

/// blocker as [`load_blocker`] leaves it, plus the rest of the issue's loaded state, all
/// through the CLI (`import`, `allow`) so it follows whatever map layout blocker uses:
/// [`GOAL_BANS`] bans in all (IPv4 hosts and ranges, IPv6 hosts and /64s) and
/// [`GOAL_ALLOWS`] allowlist entries, none covering a probe source.
pub(super) fn load_goal_state(lab: &Lab) -> Result<OwnedFd> {
    let prog = load_blocker(lab)?;
    let path = lab.dir.path().join("goal-bans.txt");
    std::fs::write(&path, goal_bans().join("\n"))?;
    // A synthetic list: the lock-out check would refuse one covering this host's resolver.
    lab.blocker(&["import", &path.to_string_lossy(), "--force"])?;
    let allows = goal_allows();
    let mut args = vec!["allow"];
    args.extend(allows.iter().map(String::as_str));
    lab.blocker(&args)?;
    Ok(prog)
}

/// The bans [`load_blocker`] does not already hold: 80% IPv4 hosts (20.0.0.0/8), 10% IPv4
/// ranges of /20 to /28 (from 40.0.0.0), the rest IPv6 hosts and /64s (2001:db8:1000::/48, 2001:db8:2000::/48).
fn goal_bans() -> Vec<String> {
    let rest = GOAL_BANS - 3;
    let (hosts, ranges) = (GOAL_BANS * 8 / 10, GOAL_BANS / 10);
    let mut bans = Vec::with_capacity(rest);
    for n in 0..hosts as u32 {
        bans.push(Ipv4Addr::from(0x1400_0001 + n).to_string());
    }
    for n in 0..ranges as u32 {
        bans.push(format!(
            "{}/{}",
            Ipv4Addr::from(0x2800_0000 + (n << 12)),
            20 + n % 9
        ));
    }
    for n in 0..(rest - hosts - ranges) as u32 {
        bans.push(if n % 2 == 0 {
            format!("2001:db8:1000::{n:x}")
        } else {
            format!("2001:db8:2000:{n:x}::/64")
        });
    }
    bans
}

/// The allowlist entries [`load_blocker`] does not already hold: IPv4 hosts in 50.0.0.0/8,
/// /24s in 60.0.0.0/8 and IPv6 hosts in 2001:db8:a11::/48.
fn goal_allows() -> Vec<String> {
    let rest = GOAL_ALLOWS as u32 - 1;
    (0..rest)
        .map(|n| match n % 10 {
            0..=5 => Ipv4Addr::from(0x3200_0001 + n).to_string(),
            6..=8 => format!("{}/24", Ipv4Addr::from(0x3c00_0000 + (n << 8))),
            _ => format!("2001:db8:a11::{n:x}"),
        })
        .collect()
}

//! The control plane: ban to enforcement, import and load of 100k, kernel memory per entry.

use std::{
    net::Ipv4Addr,
    os::fd::AsRawFd,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use blocker_common::MAP_HISTORY;
use blocker_tests::{bpf::test_run, frames::udp};
use serde::Serialize;

use super::{
    bpf::{self, XDP_DROP},
    lab::{v4_frame, Lab, BAN_PROBES, UDP},
    median,
};
#[derive(Serialize, Default)]
pub(super) struct ControlPlane {
    pub(super) ban_command_ms: f64,
    pub(super) ban_return_to_first_drop_us: f64,
    pub(super) import_100k_s: f64,
    pub(super) load_restoring_100k_s: f64,
    pub(super) history_bytes_per_source: f64,
    pub(super) blacklist_bytes_per_entry: f64,
    pub(super) import_100k_max_rss_mib: f64,
    pub(super) status_max_rss_mib: f64,
}

/// Bytes of kernel memory a map charges, per entry, from its fdinfo.
pub(super) fn bytes_per_entry(path: &Path) -> Result<f64> {
    let fd = bpf::obj_get(path)?;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    let field = |name: &str| -> Option<f64> {
        info.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    match (field("memlock:"), field("max_entries:")) {
        (Some(bytes), Some(entries)) if entries > 0.0 => Ok(bytes / entries),
        _ => bail!("no memlock in fdinfo of {}", path.display()),
    }
}

/// Runs a command and returns its wall time and peak resident memory (MiB).
pub(super) fn timed(mut command: Command) -> Result<(Duration, f64)> {
    let started = Instant::now();
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id() as i32;
    let mut status = 0;
    // SAFETY: rusage is plain data the kernel fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child and fills `usage`.
    if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } < 0 {
        bail!("waiting for {command:?}");
    }
    let elapsed = started.elapsed();
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{command:?} failed");
    }
    Ok((elapsed, usage.ru_maxrss as f64 / 1024.0))
}

pub(super) fn control_plane(lab: &Lab) -> Result<ControlPlane> {
    let mut report = ControlPlane::default();
    let blocker = lab.xdp_prog("bb0")?;
    // Ban to enforcement on a state of modest size.
    let mut command_ms = Vec::new();
    let mut first_drop_us = Vec::new();
    for n in 0..20u32 {
        let source = [BAN_PROBES[0], BAN_PROBES[1], BAN_PROBES[2], 1 + n as u8];
        let data = v4_frame(source, udp(53, 32), UDP);
        let mut command = lab.blocker_command();
        command.args(["ban", &Ipv4Addr::from(source).to_string()]);
        let (elapsed, _) = timed(command)?;
        let returned = Instant::now();
        let verdict = test_run(&blocker, &data, 1, None)?.retval;
        first_drop_us.push(returned.elapsed().as_secs_f64() * 1e6);
        if verdict != XDP_DROP {
            bail!("the first packet after `blocker ban` returned was not dropped");
        }
        command_ms.push(elapsed.as_secs_f64() * 1e3);
    }
    report.ban_command_ms = median(command_ms);
    report.ban_return_to_first_drop_us = median(first_drop_us);

    // 100k prefixes: import, then a load that restores them.
    let mut list = String::new();
    for n in 0..100_000u32 {
        let [_, a, b, c] = (n + 0x0100_0000).to_be_bytes();
        list.push_str(&format!("{}.{b}.{c}.0/24 # bulk {n}\n", 30 + a));
    }
    let path = lab.dir.path().join("100k.txt");
    std::fs::write(&path, list)?;
    let mut command = lab.blocker_command();
    // A synthetic list: the lock-out check would refuse one covering this host's resolver.
    command.args(["import", &path.to_string_lossy(), "--force"]);
    let (elapsed, rss) = timed(command)?;
    report.import_100k_s = elapsed.as_secs_f64();
    report.import_100k_max_rss_mib = rss;
    let mut command = lab.blocker_command();
    command.args(["status"]);
    report.status_max_rss_mib = timed(command)?.1;
    drop(blocker);
    lab.blocker(&["unload"])?;
    let mut command = lab.blocker_command();
    command.args(["load", "--iface", "bb0", "--config", &lab.config()?]);
    report.load_restoring_100k_s = timed(command)?.0.as_secs_f64();
    report.history_bytes_per_source = bytes_per_entry(&lab.pin_dir.join(MAP_HISTORY))?;
    report.blacklist_bytes_per_entry =
        bytes_per_entry(&lab.pin_dir.join(blocker_common::MAP_BLACKLIST_V4))?;
    Ok(report)
}

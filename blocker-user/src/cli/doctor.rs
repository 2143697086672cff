//! `blocker doctor`: checks what blocking depends on, one line each with the fix, and exits 1
//! when any check fails (warnings alone exit 0), so it can run in CI or from monitoring.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use aya::util::KernelVersion;
use blocker::{
    loader::MIN_KERNEL,
    lockout::{allow_command, session::Detected, SshSession},
    pins::{AttachMode, PinDir},
    state::State,
    status::{self, FILLING_MAPS},
    text::escape,
};
use serde::Serialize;

/// `blocker doctor` arguments.
#[derive(clap::Args)]
pub struct DoctorArgs {
    /// Interfaces to check [default: those the program is attached to].
    #[arg(long = "iface", value_name = "IFACE")]
    pub ifaces: Vec<String>,
    /// The daemon's Unix socket [default: /run/blocker/blocker.sock].
    #[arg(long)]
    pub socket: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

/// How a check came out; only `Fail` makes the exit code 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
    pub detail: String,
    /// What to do about a warning or failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            outcome: Outcome::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            outcome: Outcome::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            outcome: Outcome::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Fill (percent) from which a map is reported: new entries start failing when it is full.
const FILL_WARN: u64 = 80;
const FILL_FAIL: u64 = 95;

/// Drivers with native XDP support in mainline Linux (their `ndo_bpf`); others run in skb mode.
const NATIVE_XDP_DRIVERS: &[&str] = &[
    "veth",
    "virtio_net",
    "tun",
    "mlx4_en",
    "mlx4_core",
    "mlx5_core",
    "i40e",
    "ice",
    "ixgbe",
    "ixgbevf",
    "igb",
    "igc",
    "bnxt_en",
    "ena",
    "nfp",
    "qede",
    "nicvf",
    "mvneta",
    "mvpp2",
    "stmmac",
    "fec",
    "enetc",
    "dpaa2-eth",
    "sfc",
    "hv_netvsc",
    "xen-netfront",
    "netdevsim",
    "bonding",
    "atlantic",
    "tsnep",
    "lan966x-switch",
    "cpsw",
    "gve",
    "idpf",
    "octeontx2-nicpf",
];

/// Runs every check and prints the report; fails when a check failed.
pub fn run(
    args: &DoctorArgs,
    pins: &PinDir,
    state_path: &Path,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let checks = checks(args, pins, state_path);
    if args.json {
        // Rendered first so a closed pipe stays an io::Error (treated as success by main).
        let text = serde_json::to_string_pretty(&checks)?;
        writeln!(out, "{text}")?;
    } else {
        for check in &checks {
            write_line(check, out)?;
        }
    }
    let failed = checks
        .iter()
        .filter(|check| check.outcome == Outcome::Fail)
        .count();
    if failed > 0 {
        anyhow::bail!("doctor: {failed} of {} checks failed", checks.len());
    }
    Ok(())
}

fn write_line(check: &Check, out: &mut impl Write) -> std::io::Result<()> {
    let mark = match check.outcome {
        Outcome::Ok => "ok  ",
        Outcome::Warn => "warn",
        Outcome::Fail => "FAIL",
    };
    write!(out, "{mark} {}: {}", check.name, check.detail)?;
    match &check.fix {
        Some(fix) => writeln!(out, " -- fix: {fix}"),
        None => writeln!(out),
    }
}

fn checks(args: &DoctorArgs, pins: &PinDir, state_path: &Path) -> Vec<Check> {
    let mut checks = vec![kernel(), btf(), bpffs(pins)];
    let loaded = pins_check(pins);
    let is_loaded = loaded.outcome == Outcome::Ok;
    checks.push(loaded);
    checks.extend(interfaces(args, pins));
    checks.push(clock());
    let state = State::read_scope(state_path, &[]);
    checks.push(match &state {
        Ok(Some(_)) => Check::ok("state", format!("{} readable", state_path.display())),
        Ok(None) => Check::ok("state", format!("{} not created yet", state_path.display())),
        Err(err) => Check::fail(
            "state",
            format!("{}: {}", state_path.display(), err),
            "restore it from the .last-good copy beside it, or point --state at the right file",
        ),
    });
    let allow = state.ok().flatten().unwrap_or_default().allow;
    checks.push(ssh_source(&allow));
    if is_loaded {
        checks.push(map_fill(pins));
    }
    checks.push(daemon(args));
    checks
}

fn one_line(err: blocker::Error) -> String {
    blocker::error::one_line(&err.into())
}

fn kernel() -> Check {
    match KernelVersion::current() {
        Ok(running) if running >= MIN_KERNEL => {
            Check::ok("kernel", format!("{running} (needs {MIN_KERNEL} or newer)"))
        }
        Ok(running) => Check::fail(
            "kernel",
            format!("{running} is older than {MIN_KERNEL}: the program uses bpf_loop and bpf_xdp_load_bytes"),
            format!("boot a kernel {MIN_KERNEL} or newer"),
        ),
        Err(err) => Check::fail(
            "kernel",
            format!("cannot read the kernel version: {err}"),
            "check /proc/sys/kernel/osrelease",
        ),
    }
}

fn btf() -> Check {
    let vmlinux = Path::new("/sys/kernel/btf/vmlinux");
    if vmlinux.exists() {
        Check::ok("btf", "kernel BTF at /sys/kernel/btf/vmlinux")
    } else {
        // The program carries its own BTF; the kernel's only helps bpftool show the maps.
        Check::warn(
            "btf",
            "no /sys/kernel/btf/vmlinux: blocking works, `bpftool map dump` shows raw bytes",
            "a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        )
    }
}

fn bpffs(pins: &PinDir) -> Check {
    match pins.require_bpffs() {
        Ok(()) => Check::ok("bpffs", format!("{} is on bpffs", pins.path.display())),
        Err(err) => Check::fail(
            "bpffs",
            one_line(err),
            "mount -t bpf bpf /sys/fs/bpf (and add it to /etc/fstab)",
        ),
    }
}

fn pins_check(pins: &PinDir) -> Check {
    if !pins.maps_pinned() {
        return Check::fail(
            "pins",
            format!(
                "no program loaded: no maps pinned in {}",
                pins.path.display()
            ),
            "blocker load --iface IFACE",
        );
    }
    match pins.require_layout() {
        // A writer stopped between its commit and the maps (or a boot by a doubtful clock).
        Ok(()) if pins.maps_pending() => Check::warn(
            "pins",
            format!(
                "maps in {} may be behind the state database",
                pins.path.display()
            ),
            "any change (a ban, an unban, `blocker daemon` starting) brings them to it first",
        ),
        Ok(()) => Check::ok(
            "pins",
            format!("maps in {} match this build", pins.path.display()),
        ),
        Err(err) => Check::fail(
            "pins",
            one_line(err),
            "blocker unload, then blocker load --iface IFACE with this binary",
        ),
    }
}

/// The given interfaces, or the attached ones: existence, driver and XDP mode.
fn interfaces(args: &DoctorArgs, pins: &PinDir) -> Vec<Check> {
    let attached = pins.attachments().unwrap_or_default();
    let names: Vec<String> = if args.ifaces.is_empty() {
        attached.iter().map(|a| a.iface.clone()).collect()
    } else {
        args.ifaces.clone()
    };
    if names.is_empty() {
        return vec![Check::fail(
            "interface",
            "the program is attached to no interface",
            "blocker load --iface IFACE",
        )];
    }
    names
        .iter()
        .map(|name| {
            let mode = attached.iter().find(|a| &a.iface == name).map(|a| a.mode);
            interface(name, mode)
        })
        .collect()
}

fn interface(name: &str, mode: Option<AttachMode>) -> Check {
    let shown = escape(name);
    if !blocker::nic::exists(name) {
        return Check::fail(
            "interface",
            format!("{shown}: no such interface in this network namespace"),
            format!("check `ip link`; blocker unload --iface {shown} if it is gone for good"),
        );
    }
    let driver = blocker::nic::driver(name).unwrap_or_else(|| "unknown".into());
    let native_capable = NATIVE_XDP_DRIVERS.contains(&driver.as_str());
    match (mode, native_capable) {
        (Some(AttachMode::Native), _) => Check::ok(
            "interface",
            format!("{shown}: driver {driver}, native XDP"),
        ),
        (Some(AttachMode::Skb), true) => Check::warn(
            "interface",
            format!(
                "{shown}: driver {driver} supports native XDP but the program runs in skb mode \
                 (loaded with --mode skb, or the native attach failed: MTU above one page, or \
                 another XDP program)"
            ),
            format!("blocker unload --iface {shown}; blocker load --iface {shown} --mode native"),
        ),
        (Some(AttachMode::Skb), false) => Check::warn(
            "interface",
            format!("{shown}: driver {driver} has no native XDP, so skb (generic) mode, which is slower"),
            "a NIC whose driver supports XDP for line-rate drops",
        ),
        (None, _) => Check::fail(
            "interface",
            format!("{shown}: driver {driver}, the program is not attached to it"),
            format!("blocker load --iface {shown}"),
        ),
    }
}

fn clock() -> Check {
    // SAFETY: with `modes` zero, adjtimex only reads the kernel's clock state into `timex`.
    let mut timex: nix::libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { nix::libc::adjtimex(&mut timex) };
    let unsynchronised =
        state == nix::libc::TIME_ERROR || timex.status & nix::libc::STA_UNSYNC != 0;
    if state < 0 {
        Check::warn(
            "clock",
            "cannot read the clock's synchronisation state",
            "check that NTP runs: timedatectl",
        )
    } else if unsynchronised {
        Check::warn(
            "clock",
            "not synchronised: temporary bans expire by wall-clock time, which may be off",
            "enable NTP: timedatectl set-ntp true (or start chrony)",
        )
    } else {
        Check::ok("clock", "synchronised")
    }
}

fn ssh_source(allow: &std::collections::BTreeMap<ipnet::IpNet, blocker::state::Entry>) -> Check {
    match SshSession::detect() {
        Detected::Session(ssh) => {
            if allow.keys().any(|net| net.contains(&ssh.client)) {
                Check::ok(
                    "ssh",
                    format!("your SSH source {} is allowlisted", ssh.client),
                )
            } else {
                Check::fail(
                    "ssh",
                    format!(
                        "your SSH source {} ({}) is not allowlisted: a rule or a ban could lock you out",
                        ssh.client, ssh.variable
                    ),
                    allow_command(ssh.client),
                )
            }
        }
        Detected::None => Check::ok("ssh", "not an SSH session"),
        Detected::Unknown(why) => Check::warn(
            "ssh",
            why,
            "run doctor with sudo -E, or check the allowlist with blocker list allow",
        ),
    }
}

fn map_fill(pins: &PinDir) -> Check {
    let status = match status::read(pins) {
        Ok(status) => status,
        Err(err) => return Check::fail("maps", one_line(err), "blocker unload, then blocker load"),
    };
    let fills: Vec<(&str, u64)> = status
        .maps
        .iter()
        .filter(|map| FILLING_MAPS.contains(&map.name) && map.capacity > 0)
        .map(|map| (map.name, map.entries * 100 / u64::from(map.capacity)))
        .collect();
    let fullest = fills.iter().max_by_key(|(_, percent)| *percent);
    let listed: Vec<String> = fills
        .iter()
        .map(|(name, percent)| format!("{name} {percent}%"))
        .collect();
    let detail = listed.join(", ");
    let fix = "raise [maps] sizes in the config and reload, or prune bans (blocker list, unban)";
    match fullest {
        Some((name, percent)) if *percent >= FILL_FAIL => {
            Check::fail("maps", format!("{name} is {percent}% full: {detail}"), fix)
        }
        Some((name, percent)) if *percent >= FILL_WARN => {
            Check::warn("maps", format!("{name} is {percent}% full: {detail}"), fix)
        }
        _ => Check::ok("maps", detail),
    }
}

fn daemon(args: &DoctorArgs) -> Check {
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| blocker::config::Config::default().daemon.socket);
    match super::status_jails::fetch(&socket) {
        Some(_) => Check::ok("daemon", format!("answers on {}", socket.display())),
        None => Check::fail(
            "daemon",
            format!(
                "no daemon answers on {}: temporary bans do not expire, offenses and logs are not acted on",
                socket.display()
            ),
            "systemctl start blocker (or blocker daemon --config FILE)",
        ),
    }
}

//! Bans that would lock the operator out: refused without `--force`, and a warning when the
//! operator's own SSH session is exposed to a rate rule.
//!
//! A ban is refused when it is wider than [`WIDEST_V4`] / [`WIDEST_V6`], or when it covers the
//! source of the current SSH session (`SSH_CONNECTION`, else `SSH_CLIENT`; under sudo, which
//! drops them, those of the nearest parent process: see [`session`]) or an address of this
//! host (every interface, from `getifaddrs`) that the allowlist does not cover: the allowlist
//! wins over every ban, so an allowlisted address cannot be locked out. So is a ban covering a
//! server this host needs: its DNS resolvers (`/etc/resolv.conf`) and the fleet's NATS servers
//! ([`needs_server`]), whose answers a ban would drop. (A feed's list server is protected for
//! that feed's own import only: whoever answers a feed's URL must not make an address
//! unbannable for every other source.)

pub mod session;

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;

use crate::{
    rules::{Proto, RuleSpec},
    state::Entry,
    Error, Result,
};

/// IPv4 bans shorter than this prefix length are refused: a /7 spans 33 million addresses,
/// more than the largest allocation any one network holds (a legacy /8), so such a ban is a
/// slip like `0.0.0.0/0` rather than one network.
pub const WIDEST_V4: u8 = 8;
/// IPv6 bans shorter than this are refused: a /15 or wider (`::/0`, `2000::/3`, all global
/// unicast) reaches across registries, far beyond one network.
pub const WIDEST_V6: u8 = 16;

/// The operator's SSH session, as sshd describes it in the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSession {
    pub client: IpAddr,
    /// The port sshd listens on, when the environment says.
    pub server_port: Option<u16>,
    /// The variable it came from (and the process, when not this one), named in messages.
    pub variable: String,
}

impl SshSession {
    /// The session of this process, from its environment or, under sudo, its parents'.
    pub fn detect() -> session::Detected {
        session::detect(
            |name| std::env::var(name).ok(),
            &session::Proc,
            std::process::id(),
        )
    }

    /// Reads the values of `SSH_CONNECTION` ("client port server port"), else `SSH_CLIENT`
    /// ("client port server-port"); anything unparsable is ignored.
    pub fn parse(ssh_connection: Option<&str>, ssh_client: Option<&str>) -> Option<Self> {
        let read = |value: &str, port_field: usize, variable: &str| {
            let fields: Vec<&str> = value.split_whitespace().collect();
            let client: IpAddr = fields.first()?.parse().ok()?;
            Some(Self {
                client: unmapped(client),
                server_port: fields.get(port_field).and_then(|port| port.parse().ok()),
                variable: variable.to_string(),
            })
        };
        ssh_connection
            .and_then(|value| read(value, 3, "SSH_CONNECTION"))
            .or_else(|| ssh_client.and_then(|value| read(value, 2, "SSH_CLIENT")))
    }

    /// The session's port, 22 when the environment does not say.
    pub fn port(&self) -> u16 {
        self.server_port.unwrap_or(22)
    }
}

/// An IPv4 client of a dual-stack sshd shows as `::ffff:a.b.c.d`, but reaches XDP as IPv4.
fn unmapped(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// How long [`Guard::recent`] reuses a detection.
const GUARD_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// Where the DNS resolvers are named.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The servers this process needs, from its own configuration ([`needs_server`]).
static NEEDED_SERVERS: std::sync::Mutex<std::collections::BTreeSet<IpAddr>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Records `addr` as a server this process needs (a NATS server of its configuration): every
/// [`Guard`] detected from now on refuses a ban covering it.
pub fn needs_server(addr: IpAddr) {
    NEEDED_SERVERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(unmapped(addr));
}

/// The `nameserver` addresses of a resolv.conf (a zone after `%` is dropped).
fn nameservers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .filter_map(|addr| addr.split('%').next()?.parse().ok())
        .collect()
}

/// What a ban must not cut off: the SSH session's source, this host's addresses and the
/// servers it cannot do without (its resolvers, the fleet's NATS servers).
#[derive(Debug, Clone, Default)]
pub struct Guard {
    pub ssh: Option<SshSession>,
    pub host_addrs: Vec<IpAddr>,
    pub servers: Vec<IpAddr>,
}

impl Guard {
    /// The SSH session (warning when sudo hides it) and the addresses of every interface in
    /// this network namespace.
    pub fn detect() -> Result<Self> {
        let interfaces = nix::ifaddrs::getifaddrs().map_err(|errno| Error::Io {
            context: "listing this host's addresses".into(),
            source: errno.into(),
        })?;
        let host_addrs = interfaces
            .filter_map(|interface| {
                let address = interface.address?;
                if let Some(v4) = address.as_sockaddr_in() {
                    Some(IpAddr::V4(v4.ip()))
                } else {
                    address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                }
            })
            .collect();
        let ssh = match SshSession::detect() {
            session::Detected::Session(ssh) => Some(ssh),
            session::Detected::None => None,
            session::Detected::Unknown(why) => {
                tracing::warn!("{why}");
                None
            }
        };
        // An unreadable resolv.conf names no resolver: there is nothing to guard.
        let resolvers = std::fs::read_to_string(RESOLV_CONF)
            .map(|text| nameservers(&text))
            .unwrap_or_default();
        let needed = NEEDED_SERVERS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        Ok(Self {
            ssh,
            host_addrs,
            servers: Vec::new(),
        }
        .also_protecting(&resolvers)
        .also_protecting(&needed.into_iter().collect::<Vec<_>>()))
    }

    /// [`Guard::detect`], taken again when the last detection in this process is older than
    /// [`GUARD_REFRESH`]: the daemon checks every batch of offenses, and listing the
    /// interfaces cost about a tenth of a batch. An address added since (or a server
    /// [`needs_server`] recorded) is guarded at most that much later.
    pub fn recent() -> Result<Self> {
        static RECENT: std::sync::Mutex<Option<(std::time::Instant, Guard)>> =
            std::sync::Mutex::new(None);
        let mut recent = RECENT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((at, guard)) = recent.as_ref() {
            if at.elapsed() < GUARD_REFRESH {
                return Ok(guard.clone());
            }
        }
        let guard = Self::detect()?;
        *recent = Some((std::time::Instant::now(), guard.clone()));
        Ok(guard)
    }

    /// Refuses `net` if it would lock the operator out (see the module documentation).
    pub fn check(&self, net: &IpNet, allow: &BTreeMap<IpNet, Entry>) -> Result<()> {
        let refuse = |why: String| {
            Err(Error::LockOut {
                net: net.to_string(),
                why,
            })
        };
        if let Some(widest) = wider_than_allowed(net) {
            return refuse(format!(
                "it is wider than a /{widest}, a large part of the Internet"
            ));
        }
        let exposed = |addr: &IpAddr| net.contains(addr) && !allowed(allow, *addr);
        if let Some(ssh) = self.ssh.as_ref().filter(|ssh| exposed(&ssh.client)) {
            return refuse(format!(
                "it covers {client}, the source of your SSH session ({variable}); allowlist it \
                 first with `{command}`",
                client = ssh.client,
                variable = ssh.variable,
                command = allow_command(ssh.client),
            ));
        }
        if let Some(own) = self.host_addrs.iter().find(|addr| exposed(addr)) {
            return refuse(format!("it covers {own}, an address of this host"));
        }
        if let Some(server) = self.servers.iter().find(|addr| exposed(addr)) {
            return refuse(format!("it covers {server}, a server this host needs"));
        }
        Ok(())
    }

    /// This guard, also refusing bans that cover one of `servers`.
    pub fn also_protecting(mut self, servers: &[IpAddr]) -> Self {
        self.servers.extend(servers.iter().copied().map(unmapped));
        self
    }

    /// Refuses taking `removed` off the allowlist if that leaves the SSH session's source or
    /// an address of this host to a ban in force: `bans` must hold every ban covering or
    /// inside `removed`, `allow` the allowlist without it.
    pub fn check_allow_removal(
        &self,
        removed: &IpNet,
        bans: &BTreeMap<IpNet, Entry>,
        allow: &BTreeMap<IpNet, Entry>,
        now: jiff::Timestamp,
    ) -> Result<()> {
        let banning = |addr: &IpAddr| {
            if !removed.contains(addr) || allowed(allow, *addr) {
                return None;
            }
            bans.iter()
                .find(|(net, entry)| net.contains(addr) && !entry.is_expired(now))
                .map(|(net, _)| *net)
        };
        let refuse = |why: String| {
            Err(Error::AllowRemovalLockOut {
                net: removed.to_string(),
                why,
            })
        };
        if let Some(ssh) = &self.ssh {
            if let Some(ban) = banning(&ssh.client) {
                return refuse(format!(
                    "{client}, the source of your SSH session ({variable}), is banned by {ban}",
                    client = ssh.client,
                    variable = ssh.variable,
                ));
            }
        }
        for own in &self.host_addrs {
            if let Some(ban) = banning(own) {
                return refuse(format!(
                    "{own}, an address of this host, is banned by {ban}"
                ));
            }
        }
        Ok(())
    }
}

/// Refuses an allowlist entry wider than a ban may be ([`wider_than_allowed`]): the allowlist
/// wins over every ban, so `0.0.0.0/0` there turns every IPv4 ban off.
pub fn check_allow(net: &IpNet) -> Result<()> {
    match wider_than_allowed(net) {
        Some(widest) => Err(Error::WideAllow {
            net: net.to_string(),
            widest,
        }),
        None => Ok(()),
    }
}

/// The widest prefix length of `net`'s family ([`WIDEST_V4`], [`WIDEST_V6`]) when `net` is
/// wider than it.
pub fn wider_than_allowed(net: &IpNet) -> Option<u8> {
    let widest = match net {
        IpNet::V4(_) => WIDEST_V4,
        IpNet::V6(_) => WIDEST_V6,
    };
    (net.prefix_len() < widest).then_some(widest)
}

fn allowed(allow: &BTreeMap<IpNet, Entry>, addr: IpAddr) -> bool {
    allow.keys().any(|net| net.contains(&addr))
}

/// The command that allowlists the operator's SSH source.
pub fn allow_command(client: IpAddr) -> String {
    format!("blocker allow {client} --reason \"operator ssh\"")
}

/// The warning `load` and `run` give when a rule limits the port of the operator's SSH
/// session and its source is not allowlisted: a few reconnects would blacklist the operator.
pub fn ssh_warning<'a>(
    ssh: &SshSession,
    allow: &BTreeMap<IpNet, Entry>,
    rules: impl IntoIterator<Item = &'a RuleSpec>,
) -> Option<String> {
    if allowed(allow, ssh.client) {
        return None;
    }
    let port = ssh.port();
    let rule = rules.into_iter().find(|rule| {
        matches!(rule.proto, Proto::Tcp | Proto::Any)
            && rule
                .dport
                .is_none_or(|range| (range.min..=range.max).contains(&port))
    })?;
    Some(format!(
        "your SSH session comes from {client} ({variable}), which is not allowlisted, and rule \
         {rule:?} limits tcp/{port}: a few reconnects would blacklist you; run `{command}`",
        client = ssh.client,
        variable = ssh.variable,
        rule = rule.name,
        command = allow_command(ssh.client),
    ))
}

/// After `load`: warns once when the operator's SSH session is exposed to a rule in force. A
/// state file that cannot be read is reported by the commands that need it, not here.
pub fn warn_if_ssh_exposed(state_path: &std::path::Path) {
    let session::Detected::Session(ssh) = SshSession::detect() else {
        return;
    };
    // The allowlist and rules without the bans.
    let Ok(state) = crate::state::State::read_scope(state_path, &[]) else {
        return;
    };
    let state = state.unwrap_or_default();
    let rules = state.rules.iter().flat_map(|table| &table.rules);
    if let Some(warning) = ssh_warning(&ssh, &state.allow, rules.map(|placed| &placed.spec)) {
        tracing::warn!("{warning}");
    }
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn allowlist(nets: &[&str]) -> BTreeMap<IpNet, Entry> {
        nets.iter()
            .map(|text| {
                let entry = Entry {
                    reason: None,
                    created_at: Timestamp::UNIX_EPOCH,
                    expires_at: None,
                };
                (net(text), entry)
            })
            .collect()
    }

    fn guard() -> Guard {
        Guard {
            ssh: SshSession::parse(Some("198.51.100.7 50022 192.0.2.1 2222"), None),
            host_addrs: vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
            servers: Vec::new(),
        }
    }

    #[test]
    fn the_ssh_session_is_read_from_either_variable() {
        let session = SshSession::parse(Some("198.51.100.7 50022 192.0.2.1 2222"), None).unwrap();
        assert_eq!(session.client.to_string(), "198.51.100.7");
        assert_eq!(session.port(), 2222);
        let session = SshSession::parse(None, Some("::ffff:198.51.100.8 50022 22")).unwrap();
        assert_eq!(session.client.to_string(), "198.51.100.8");
        assert_eq!(
            (session.port(), session.variable.as_str()),
            (22, "SSH_CLIENT")
        );
        assert_eq!(SshSession::parse(Some("garbage"), None), None);
        assert_eq!(SshSession::parse(None, None), None);
    }

    #[test]
    fn very_wide_bans_are_refused() {
        let none = allowlist(&[]);
        for wide in ["0.0.0.0/0", "128.0.0.0/1", "10.0.0.0/7", "::/0", "2000::/3"] {
            let err = Guard::default().check(&net(wide), &none).unwrap_err();
            assert!(err.is_bad_input());
            assert!(err.to_string().contains("--force"), "{err}");
        }
        for fine in ["10.0.0.0/8", "2001:db8::/16"] {
            Guard::default().check(&net(fine), &none).unwrap();
        }
    }

    #[test]
    fn bans_covering_the_ssh_source_or_the_host_are_refused() {
        let none = allowlist(&[]);
        let err = guard().check(&net("198.51.100.0/24"), &none).unwrap_err();
        assert_eq!(
            err.to_string(),
            "refusing to ban 198.51.100.0/24: it covers 198.51.100.7, the source of your SSH \
             session (SSH_CONNECTION); allowlist it first with `blocker allow 198.51.100.7 \
             --reason \"operator ssh\"`; nothing was changed (add --force to ban it anyway)"
        );
        let err = guard().check(&net("2001:db8::/64"), &none).unwrap_err();
        assert!(err
            .to_string()
            .contains("2001:db8::1, an address of this host"));
        guard().check(&net("198.51.100.8/32"), &none).unwrap();
    }

    #[test]
    fn allowlisted_addresses_cannot_be_locked_out() {
        let allow = allowlist(&["198.51.100.7/32", "192.0.2.0/24"]);
        guard().check(&net("198.51.100.0/24"), &allow).unwrap();
        guard().check(&net("192.0.2.0/24"), &allow).unwrap();
    }

    #[test]
    fn removing_the_allowlist_entry_that_keeps_the_operator_in_is_refused() {
        let now = Timestamp::from_second(2_000_000_000).unwrap();
        let mut bans = allowlist(&["198.51.100.0/24", "2001:db8::/64"]);
        let none = allowlist(&[]);
        let err = guard()
            .check_allow_removal(&net("198.51.100.7/32"), &bans, &none, now)
            .unwrap_err();
        assert!(err.is_bad_input());
        assert_eq!(
            err.to_string(),
            "refusing to remove 198.51.100.7/32 from the allowlist: 198.51.100.7, the source \
             of your SSH session (SSH_CONNECTION), is banned by 198.51.100.0/24; nothing was \
             changed (add --force to remove it anyway)"
        );
        let err = guard()
            .check_allow_removal(&net("2001:db8::/48"), &bans, &none, now)
            .unwrap_err();
        assert!(err
            .to_string()
            .contains("2001:db8::1, an address of this host, is banned by 2001:db8::/64"));
        // Still allowlisted by another entry, not covered by the removed one, or not banned.
        let other = allowlist(&["198.51.100.0/28"]);
        guard()
            .check_allow_removal(&net("198.51.100.7/32"), &bans, &other, now)
            .unwrap();
        guard()
            .check_allow_removal(&net("198.51.100.8/32"), &bans, &none, now)
            .unwrap();
        guard()
            .check_allow_removal(&net("203.0.113.0/24"), &bans, &none, now)
            .unwrap();
        // An expired ban locks no one out.
        for entry in bans.values_mut() {
            entry.expires_at = Some(now);
        }
        guard()
            .check_allow_removal(&net("198.51.100.7/32"), &bans, &none, now)
            .unwrap();
    }

    #[test]
    fn a_rule_on_the_ssh_port_warns_with_the_fix() {
        let ssh = SshSession::parse(None, Some("198.51.100.7 50022 22")).unwrap();
        let ssh_rule = RuleSpec::named("ssh");
        let mut web = RuleSpec::named("web");
        web.proto = Proto::Tcp;
        web.dport = Some("80-443".parse().unwrap());
        let mut ssh_rule_tcp = ssh_rule.clone();
        ssh_rule_tcp.proto = Proto::Tcp;
        ssh_rule_tcp.dport = Some("22".parse().unwrap());
        let warning = ssh_warning(&ssh, &allowlist(&[]), [&web, &ssh_rule_tcp]).unwrap();
        assert!(
            warning.ends_with("run `blocker allow 198.51.100.7 --reason \"operator ssh\"`"),
            "{warning}"
        );
        assert!(warning.contains("rule \"ssh\" limits tcp/22"), "{warning}");
        assert_eq!(ssh_warning(&ssh, &allowlist(&[]), [&web]), None);
        assert_eq!(
            ssh_warning(&ssh, &allowlist(&["198.51.100.0/24"]), [&ssh_rule]),
            None
        );
        // A rule on any protocol and port covers SSH too.
        assert!(ssh_warning(&ssh, &allowlist(&[]), [&ssh_rule]).is_some());
    }

    #[test]
    fn very_wide_allowlist_entries_are_refused() {
        for wide in ["0.0.0.0/0", "128.0.0.0/7", "::/0", "2000::/3"] {
            let err = check_allow(&net(wide)).unwrap_err();
            assert!(err.to_string().contains("refusing to allow"), "{err}");
        }
        for fine in ["10.0.0.0/8", "192.0.2.1/32", "2001::/16", "fe80::/64"] {
            check_allow(&net(fine)).unwrap();
        }
    }

    #[test]
    fn the_resolvers_are_read_from_resolv_conf() {
        let conf = "# comment\nnameserver 192.0.2.53\nsearch example.org\n\
                    nameserver fe80::1%eth0\nnameserver\nnameserver not-an-address\n\
                    options edns0\n nameserver 2001:db8::53 # indented\n";
        let expected: Vec<IpAddr> = ["192.0.2.53", "fe80::1", "2001:db8::53"]
            .iter()
            .map(|addr| addr.parse().unwrap())
            .collect();
        assert_eq!(nameservers(conf), expected);
    }

    #[test]
    fn a_server_this_process_needs_is_guarded_from_then_on() {
        let server: IpAddr = "198.51.100.201".parse().unwrap();
        assert!(Guard::detect()
            .unwrap()
            .check(&net("198.51.100.0/24"), &allowlist(&[]))
            .is_ok());
        needs_server("::ffff:198.51.100.201".parse().unwrap());
        let err = Guard::detect()
            .unwrap()
            .check(&net("198.51.100.0/24"), &allowlist(&[]))
            .unwrap_err();
        assert!(err.to_string().contains(&server.to_string()), "{err}");
        assert!(Guard::detect()
            .unwrap()
            .check(&net("198.51.100.0/24"), &allowlist(&["198.51.100.201/32"]))
            .is_ok());
    }
}

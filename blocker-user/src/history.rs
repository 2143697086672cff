//! `blocker history`: every ban, unban, expiry and allowlist change of a prefix and of the
//! prefixes that cover it, from the state database's history table.

use std::{io::Write, path::Path};

use ipnet::IpNet;
use jiff::Timestamp;
use serde::Serialize;

use crate::{addr::parse_net, state, text::escape, Error, Result};

/// One change, as `blocker history --json` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub at: Timestamp,
    /// `ban`, `unban`, `expire`, `allow` or `disallow`.
    pub action: String,
    pub prefix: String,
    /// `cli`, `import`, `offense`, `expiry`, `load`...
    pub source: String,
    pub reason: Option<String>,
    pub actor: Option<String>,
}

/// `net` and every shorter prefix of its family that contains it, as stored (text).
pub fn covering(net: IpNet) -> Vec<String> {
    (0..=net.prefix_len())
        .filter_map(|len| IpNet::new(net.addr(), len).ok())
        .map(|covering| covering.trunc().to_string())
        .collect()
}

/// The changes of `addr` (an address or prefix) and of the prefixes covering it, oldest first.
pub fn of(state_path: &Path, addr: &str) -> Result<Vec<Change>> {
    let net = parse_net(addr)?.net;
    state::history(state_path, &covering(net))
}

/// Prints `changes` as a table, or as a JSON array.
pub fn print(changes: &[Change], json: bool, out: &mut impl Write) -> Result<()> {
    let io = |err| Error::io("writing the history")(err);
    if json {
        serde_json::to_writer_pretty(&mut *out, changes)
            .map_err(std::io::Error::from)
            .map_err(io)?;
        return writeln!(out).map_err(io);
    }
    writeln!(
        out,
        "{:<21} {:<9} {:<43} {:<8} {:<12} reason",
        "at", "action", "prefix", "source", "actor"
    )
    .map_err(io)?;
    for change in changes {
        writeln!(
            out,
            "{:<21} {:<9} {:<43} {:<8} {:<12} {}",
            format!("{:.0}", change.at),
            change.action,
            change.prefix,
            change.source,
            escape(change.actor.as_deref().unwrap_or("-")),
            escape(change.reason.as_deref().unwrap_or_default()),
        )
        .map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covering_prefixes_go_from_the_whole_family_to_the_prefix() {
        let nets = covering("10.1.2.3/32".parse().unwrap());
        assert_eq!(nets.len(), 33);
        assert_eq!(nets[0], "0.0.0.0/0");
        assert_eq!(nets[8], "10.0.0.0/8");
        assert_eq!(nets[32], "10.1.2.3/32");
        assert_eq!(covering("2001:db8::/32".parse().unwrap()).len(), 33);
    }
}

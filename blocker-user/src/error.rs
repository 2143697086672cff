//! The library's error type. Each variant is either bad input (exit code 2, nothing changed)
//! or a runtime failure (exit code 1) whose message says what to do.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid address or CIDR: {0:?}")]
    InvalidAddress(String),
    #[error("invalid duration {0:?}: use a positive number with a unit, like 90s, 10m, 24h or 7d")]
    InvalidDuration(String),
    #[error("{path}:{line}: {message}")]
    InvalidListLine {
        path: String,
        line: usize,
        message: String,
    },
    #[error("cannot read {path}: {message}")]
    UnreadableInput { path: String, message: String },
    #[error("{0}")]
    InvalidRule(String),
    #[error("invalid bunch analysis settings: {0}")]
    InvalidBunchSettings(String),
    #[error("reason too long ({bytes} bytes): at most {max} bytes", max = crate::text::MAX_REASON_BYTES)]
    ReasonTooLong { bytes: usize },
    /// A ban that would cut the operator off; `--force` overrides it.
    #[error("refusing to ban {net}: {why}; nothing was changed (add --force to ban it anyway)")]
    LockOut { net: String, why: String },
    /// An allowlist entry so wide that it lifts every ban on a large part of the Internet;
    /// `--force` overrides it.
    #[error(
        "refusing to allow {net}: it is wider than a /{widest}, and the allowlist wins over \
         every ban there; nothing was changed (add --force to allow it anyway)"
    )]
    WideAllow { net: String, widest: u8 },
    /// Removing an allowlist entry that would leave the operator to a ban; `--force`
    /// overrides it.
    #[error(
        "refusing to remove {net} from the allowlist: {why}; nothing was changed (add --force \
         to remove it anyway)"
    )]
    AllowRemovalLockOut { net: String, why: String },
    #[error("invalid offense: {0}")]
    InvalidOffense(String),
    #[error("no rule named {0:?}")]
    NoSuchRule(String),
    #[error("invalid config {path}: {message}")]
    InvalidConfig { path: PathBuf, message: String },
    #[error("interface {0:?} does not exist")]
    NoSuchInterface(String),
    #[error("interface {iface:?} is not an Ethernet interface (link type {link_type}): blocker parses Ethernet frames, so it would check nothing there; load it on the interface the packets arrive on")]
    NotEthernet { iface: String, link_type: u16 },
    #[error("this needs root (CAP_BPF and CAP_NET_ADMIN): run it with sudo")]
    NotRoot,
    #[error("{0} is not on a bpf filesystem: mount it with `mount -t bpf bpf /sys/fs/bpf`")]
    NoBpffs(PathBuf),
    #[error("blocker is not loaded (no pins in {0}): run blocker load --iface IF")]
    NotLoaded(PathBuf),
    #[error("blocker is already loaded on {0}: run blocker unload --iface {0} first")]
    AlreadyLoaded(String),
    #[error("blocker is not loaded on {0}")]
    NotLoadedOn(String),
    #[error("map {map} is full ({capacity} entries): nothing was changed; remove entries or raise its capacity in the config and reload")]
    MapFull { map: &'static str, capacity: u32 },
    #[error("invalid list filter: {0}")]
    InvalidListFilter(String),
    #[error("state file {path}: {message}")]
    State { path: PathBuf, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Map {
        context: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("loading the XDP program: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("{context}: {source}")]
    Program {
        context: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("pin directory {} belongs to uid {owner}, not to this user ({euid}): another user may have planted it; check it, remove it (`rm -r {}`) and load again", dir.display(), dir.display())]
    PinDirNotOurs { dir: PathBuf, owner: u32, euid: u32 },
    /// A secret file (the API token, NATS credentials) others could have written or read:
    /// its secret cannot be trusted, nor kept.
    #[error("refusing the {what} file {}: {why}", path.display())]
    UnsafeSecretFile {
        what: &'static str,
        path: PathBuf,
        why: String,
    },
    #[error("pins in {} are from another blocker layout ({found}; this build uses {expected}): run `blocker unload` to remove them, then `blocker load`", dir.display())]
    PinLayout {
        dir: PathBuf,
        found: String,
        expected: String,
    },
    #[error("blocker loaded in {} keeps its state in {}, not {}: drop --state (and BLOCKER_STATE, [daemon] state), or unload first", pin_dir.display(), recorded.display(), given.display())]
    StateElsewhere {
        pin_dir: PathBuf,
        recorded: PathBuf,
        given: PathBuf,
    },
    #[error("state file {} does not exist but blocker is loaded in {} with {entries} entries and {rules} rules; nothing was changed: put the file back (the last good copy is {}), or run `blocker unload` and `blocker load` to start empty", path.display(), pin_dir.display(), last_good.display())]
    StateMissing {
        path: PathBuf,
        pin_dir: PathBuf,
        entries: usize,
        rules: usize,
        last_good: PathBuf,
    },
    #[error(transparent)]
    Filter(#[from] crate::logs::filter::FilterError),
    #[error("Linux {running} is too old: blocker needs 5.18 or later (bpf_loop is 5.17, bpf_xdp_load_bytes 5.18)")]
    KernelTooOld { running: String },
}

impl Error {
    /// Bad input from the user: the command changed nothing and exits with code 2.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Error::InvalidAddress(_)
                | Error::InvalidDuration(_)
                | Error::InvalidListLine { .. }
                | Error::UnreadableInput { .. }
                | Error::ReasonTooLong { .. }
                | Error::LockOut { .. }
                | Error::AllowRemovalLockOut { .. }
                | Error::WideAllow { .. }
                | Error::InvalidRule(_)
                | Error::InvalidBunchSettings(_)
                | Error::NoSuchRule(_)
                | Error::InvalidOffense(_)
                | Error::InvalidConfig { .. }
                | Error::StateElsewhere { .. }
                | Error::InvalidListFilter(_)
                | Error::Filter(_)
        )
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    pub(crate) fn map(context: impl Into<String>) -> impl FnOnce(aya::maps::MapError) -> Error {
        let context = context.into();
        move |source| Error::Map { context, source }
    }
}

/// `err` and its causes on one line (`what failed: why`), leaving out a cause whose text the
/// message before it already holds: variants that print their `{source}` also hand it on as
/// the error's source, and an OS message must not show twice.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    let mut previous = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !previous.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        previous = text;
    }
    line
}

/// Whether `err` comes from writing into a closed pipe (`blocker list | head`), which is how
/// a reader says it has seen enough: not a failure.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    fn denied() -> io::Error {
        io::Error::from_raw_os_error(13)
    }

    #[test]
    fn the_os_message_is_printed_once() {
        let err = anyhow::Error::from(Error::io("writing /var/lib/blocker/state.json")(denied()));
        assert_eq!(
            one_line(&err),
            "writing /var/lib/blocker/state.json: Permission denied (os error 13)"
        );
        let wrapped = err.context("saving the state");
        assert_eq!(
            one_line(&wrapped),
            "saving the state: writing /var/lib/blocker/state.json: Permission denied (os error 13)"
        );
    }

    #[test]
    fn causes_not_in_the_message_are_kept() {
        let err = anyhow::Error::from(denied()).context("reading the list from stdin");
        assert_eq!(
            one_line(&err),
            "reading the list from stdin: Permission denied (os error 13)"
        );
    }

    #[test]
    fn a_broken_pipe_is_recognised_through_context() {
        let pipe =
            anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe)).context("listing");
        assert!(is_broken_pipe(&pipe));
        assert!(!is_broken_pipe(&anyhow::Error::from(denied())));
    }
}

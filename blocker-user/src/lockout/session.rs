//! Finding the operator's SSH session when the environment does not say: `sudo` resets the
//! environment (`env_reset`), dropping `SSH_CONNECTION` and `SSH_CLIENT`, but the shell sshd
//! started above it still holds them in its initial environment (`/proc/PID/environ`, which
//! root may read). So under sudo the parents are asked, nearest first.

use std::{ffi::OsStr, os::unix::ffi::OsStrExt};

use super::SshSession;

/// How many parents are asked at most: login shell, sudo, a shell or two, tmux; a chain
/// longer than this is not an interactive session.
const MAX_PARENTS: usize = 32;

/// What this process can learn about its parents.
pub trait Processes {
    /// The parent of `pid`; `None` when unknown.
    fn parent(&self, pid: u32) -> Option<u32>;
    /// The environment `pid` was started with (`NAME=value` entries, NUL-separated);
    /// `None` when it cannot be read.
    fn environ(&self, pid: u32) -> Option<Vec<u8>>;
}

/// The processes of this machine, through `/proc`.
pub struct Proc;

impl Processes for Proc {
    fn parent(&self, pid: u32) -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        parent_in_stat(&stat)
    }

    fn environ(&self, pid: u32) -> Option<Vec<u8>> {
        std::fs::read(format!("/proc/{pid}/environ")).ok()
    }
}

/// The parent pid in `/proc/PID/stat`: "pid (comm) state ppid ...", where comm may hold
/// spaces and parentheses, so the fields are counted from the last `)`.
fn parent_in_stat(stat: &str) -> Option<u32> {
    let (_, after_comm) = stat.rsplit_once(')')?;
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

/// One variable of a NUL-separated environment.
fn variable<'a>(environ: &'a [u8], name: &str) -> Option<&'a str> {
    environ.split(|&byte| byte == 0).find_map(|entry| {
        let value = entry.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
        OsStr::from_bytes(value).to_str()
    })
}

/// Whether the operator's SSH session is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detected {
    Session(SshSession),
    /// Not under sudo and no SSH variables: not an SSH session.
    None,
    /// Under sudo, and neither this process nor its parents name the session: why, for a
    /// warning.
    Unknown(String),
}

/// The SSH session of process `pid`, whose environment is `var`: its own `SSH_CONNECTION`
/// or `SSH_CLIENT`, else, under sudo (`SUDO_USER` set), the nearest parent's.
pub fn detect(
    var: impl Fn(&str) -> Option<String>,
    processes: &impl Processes,
    pid: u32,
) -> Detected {
    if let Some(session) = SshSession::parse(
        var("SSH_CONNECTION").as_deref(),
        var("SSH_CLIENT").as_deref(),
    ) {
        return Detected::Session(session);
    }
    let Some(user) = var("SUDO_USER") else {
        return Detected::None;
    };
    let mut child = pid;
    for _ in 0..MAX_PARENTS {
        // PID 1 and the kernel's threads belong to no session.
        let Some(parent) = processes.parent(child).filter(|&parent| parent > 1) else {
            break;
        };
        let session = processes.environ(parent).and_then(|environ| {
            SshSession::parse(
                variable(&environ, "SSH_CONNECTION"),
                variable(&environ, "SSH_CLIENT"),
            )
        });
        if let Some(mut session) = session {
            session.variable = format!("{} of process {parent}", session.variable);
            return Detected::Session(session);
        }
        child = parent;
    }
    Detected::Unknown(format!(
        "running under sudo (for {user}) and neither this command nor its parent processes \
         have SSH_CONNECTION or SSH_CLIENT: your SSH session's source, if any, is not \
         protected from this change; run it with `sudo --preserve-env=SSH_CONNECTION` to check it"
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A process tree: pid → (parent, environment).
    struct Tree(HashMap<u32, (u32, Vec<u8>)>);

    impl Tree {
        fn new(processes: &[(u32, u32, &str)]) -> Self {
            let tree = processes
                .iter()
                .map(|&(pid, parent, environ)| {
                    (pid, (parent, environ.replace(';', "\0").into_bytes()))
                })
                .collect();
            Self(tree)
        }
    }

    impl Processes for Tree {
        fn parent(&self, pid: u32) -> Option<u32> {
            self.0.get(&pid).map(|(parent, _)| *parent)
        }
        fn environ(&self, pid: u32) -> Option<Vec<u8>> {
            self.0.get(&pid).map(|(_, environ)| environ.clone())
        }
    }

    /// sshd (500) → its session (600) → the login shell (700, with the SSH variables) →
    /// sudo (800) → this command (900, environment reset).
    fn sudo_from_ssh() -> Tree {
        Tree::new(&[
            (500, 1, "PATH=/usr/sbin"),
            (600, 500, "PATH=/usr/sbin"),
            (
                700,
                600,
                "USER=op;SSH_CLIENT=198.51.100.7 50022 22;SSH_CONNECTION=198.51.100.7 50022 \
                 192.0.2.1 2222;SSH_TTY=/dev/pts/0",
            ),
            (800, 700, "SSH_CONNECTION=garbage"),
            (900, 800, "SUDO_USER=op"),
        ])
    }

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        }
    }

    #[test]
    fn under_sudo_the_nearest_parent_with_the_session_names_it() {
        let Detected::Session(session) = detect(env(&[("SUDO_USER", "op")]), &sudo_from_ssh(), 900)
        else {
            panic!("no session found");
        };
        assert_eq!(session.client.to_string(), "198.51.100.7");
        assert_eq!(session.port(), 2222);
        assert_eq!(session.variable, "SSH_CONNECTION of process 700");
    }

    #[test]
    fn the_own_environment_comes_first() {
        let own = env(&[("SUDO_USER", "op"), ("SSH_CLIENT", "203.0.113.9 4000 22")]);
        let Detected::Session(session) = detect(own, &sudo_from_ssh(), 900) else {
            panic!("no session found");
        };
        assert_eq!(session.client.to_string(), "203.0.113.9");
        assert_eq!(session.variable, "SSH_CLIENT");
    }

    #[test]
    fn without_sudo_the_parents_are_not_asked() {
        assert_eq!(detect(env(&[]), &sudo_from_ssh(), 900), Detected::None);
    }

    #[test]
    fn under_sudo_without_a_session_anywhere_it_says_so() {
        let local = Tree::new(&[(700, 1, "USER=op"), (800, 700, ""), (900, 800, "")]);
        let Detected::Unknown(why) = detect(env(&[("SUDO_USER", "op")]), &local, 900) else {
            panic!("not reported as unknown");
        };
        assert!(why.contains("sudo --preserve-env=SSH_CONNECTION"), "{why}");
        // Unreadable parents and a cycle end the search too, within bounds.
        let unreadable = Tree::new(&[(900, 800, "")]);
        assert!(matches!(
            detect(env(&[("SUDO_USER", "op")]), &unreadable, 900),
            Detected::Unknown(_)
        ));
        let cycle = Tree::new(&[(900, 800, ""), (800, 900, "")]);
        assert!(matches!(
            detect(env(&[("SUDO_USER", "op")]), &cycle, 900),
            Detected::Unknown(_)
        ));
    }

    #[test]
    fn the_parent_is_read_after_the_command_name() {
        assert_eq!(parent_in_stat("900 (sudo) S 800 900 700 0"), Some(800));
        assert_eq!(parent_in_stat("900 (a) b (c) R 42 900"), Some(42));
        assert_eq!(parent_in_stat("garbage"), None);
    }

    #[test]
    fn proc_names_this_process_s_parent() {
        let parent = Proc.parent(std::process::id());
        assert_eq!(parent, Some(std::os::unix::process::parent_id()));
    }

    #[test]
    fn variables_are_matched_by_their_whole_name() {
        let environ = b"SSH_CONNECTION_X=1\0SSH_CONNECTION=10.0.0.1 1 10.0.0.2 22\0";
        assert_eq!(
            variable(environ, "SSH_CONNECTION"),
            Some("10.0.0.1 1 10.0.0.2 22")
        );
        assert_eq!(variable(environ, "SSH_CLIENT"), None);
    }
}

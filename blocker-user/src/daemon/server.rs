//! Serving connections within [`Limits`]: each listener holds at most a bounded number of
//! connections (more are accepted and closed at once, so the backlog never fills), and one
//! client address at most a few of them (more get a 503); a client that does not send a
//! complete request head within the header timeout (a half-sent request, or an idle
//! keep-alive connection), or that reads nothing of the answers for the write timeout (it
//! pipelines requests and never reads), is cut off; errors from `accept` (out of files) are
//! waited out, never fatal. The bound follows the process's file limit, which is raised to its
//! hard limit first, so connections never starve the maps of descriptors.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::{IpAddr, Ipv6Addr},
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use axum::Router;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, UnixListener},
    sync::Semaphore,
};
use tracing::{debug, info, warn};

use super::write_timeout::WriteTimeout;

/// Connections per listener at most, whatever the file limit.
const MAX_CONNECTIONS: usize = 512;
/// Connections from one remote address at most.
const PER_ADDRESS: usize = 32;
/// Descriptors kept for everything but connections: maps, the ring buffer, files, the runtime.
const RESERVED_FILES: u64 = 96;
/// How long to wait after `accept` failed (typically out of descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long a refused connection may take to get its 503; refusals under way at most.
const REFUSAL_TIME: Duration = Duration::from_secs(1);
const REFUSALS: usize = 16;

/// What one listener allows.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections at most.
    pub connections: usize,
    /// Connections from one remote client ([`client_of`]) at most, so it cannot take every slot.
    pub per_address: usize,
    /// Connections from loopback at most, all its addresses together ([`client_of`]): every
    /// local process shares it, so it gets more, but never the slots remote clients need.
    pub per_loopback: usize,
    /// A request head (or the next one, on a kept-alive connection) must arrive within this.
    pub header_timeout: Duration,
    /// A connection whose answers make no progress for this long (the client reads
    /// nothing) is closed.
    pub write_timeout: Duration,
}

impl Limits {
    /// The limits for `connections` per listener.
    pub fn new(connections: usize) -> Self {
        Self {
            connections,
            per_address: PER_ADDRESS.min(connections),
            per_loopback: (connections / 2).max(1),
            header_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
        }
    }

    /// Connections `peer` may hold.
    fn per_peer(&self, peer: IpAddr) -> usize {
        if peer.is_loopback() {
            self.per_loopback
        } else {
            self.per_address
        }
    }
}

/// The client a peer address counts as for the per-address bound: every loopback address is
/// one client (any local user can bind all of 127/8), and an IPv6 address counts as its /64,
/// which one host holds whole, as the rules' default `mask6` does.
fn client_of(peer: IpAddr) -> IpAddr {
    match peer {
        peer if peer.is_loopback() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & (u128::MAX << 64))),
        IpAddr::V4(_) => peer,
    }
}

/// Raises the soft file limit to the hard one and returns the limits of each of the two
/// listeners.
pub fn limits() -> Limits {
    let soft = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(err) => {
                warn!("cannot raise the file limit from {soft} to {hard}: {err}");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    };
    let limit = (soft.saturating_sub(RESERVED_FILES) / 2).clamp(8, MAX_CONNECTIONS as u64) as usize;
    let limits = Limits::new(limit);
    info!(
        "at most {limit} connections per listener, {} per client address (file limit {soft})",
        limits.per_address
    );
    limits
}

/// A listener the server accepts from.
pub trait Listener: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// A connection and, over IP, the client's address.
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Io, Option<IpAddr>)>> + Send;
}

impl Listener for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<(Self::Io, Option<IpAddr>)> {
        let (stream, peer) = TcpListener::accept(self).await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, Some(peer.ip().to_canonical())))
    }
}

impl Listener for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<(Self::Io, Option<IpAddr>)> {
        UnixListener::accept(self)
            .await
            .map(|(stream, _)| (stream, None))
    }
}

/// Open connections per client address.
#[derive(Default)]
struct PerAddress(Mutex<HashMap<IpAddr, usize>>);

/// One open connection of an address, counted until dropped.
struct AddressSlot {
    counts: Arc<PerAddress>,
    addr: IpAddr,
}

impl PerAddress {
    fn take(self: &Arc<Self>, addr: IpAddr, most: usize) -> Option<AddressSlot> {
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(addr).or_default();
        if *count >= most {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            counts: self.clone(),
            addr,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.addr) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.addr);
            }
        }
    }
}

/// Answers 503 and closes, after reading what the client sent meanwhile: closing with
/// unread data would reset the connection and could lose the answer.
async fn refuse(mut io: impl AsyncRead + AsyncWrite + Unpin, most: usize) {
    let body = format!(
        r#"{{"error":"too many connections from your address (at most {most}): close some and try again"}}"#
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        io.write_all(answer.as_bytes()).await?;
        io.shutdown().await?;
        let mut sink = [0u8; 4096];
        while io.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

/// Serves `app` on `listener` forever.
pub async fn serve(listener: impl Listener, name: String, app: Router, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.connections));
    let refusals = Arc::new(Semaphore::new(REFUSALS));
    let per_address = Arc::new(PerAddress::default());
    let mut failing_since: Option<Instant> = None;
    loop {
        let (io, peer) = match listener.accept().await {
            Ok(accepted) => {
                if let Some(since) = failing_since.take() {
                    info!("{name}: accepting again after {:.1?}", since.elapsed());
                }
                accepted
            }
            Err(err) => {
                if failing_since.is_none() {
                    warn!("{name}: accept failed: {err}; retrying");
                    failing_since = Some(Instant::now());
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let address_slot = match peer {
            Some(peer) => {
                let most = limits.per_peer(peer);
                let Some(slot) = per_address.take(client_of(peer), most) else {
                    debug!("{name}: {peer} holds {most} connections; refusing a new one");
                    if let Ok(refusal) = refusals.clone().try_acquire_owned() {
                        tokio::spawn(async move {
                            let _refusal = refusal;
                            refuse(io, most).await;
                        });
                    }
                    continue;
                };
                Some(slot)
            }
            None => None,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(
                "{name}: {} connections open; closing a new one",
                limits.connections
            );
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _slots = (slot, address_slot);
            let io = WriteTimeout::new(io, limits.write_timeout);
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(io), service);
            if let Err(err) = connection.await {
                debug!("connection ended: {err}");
            }
        });
    }
}

/// A Unix socket this daemon bound, removed on drop only if it is still the same file.
pub struct OwnSocket {
    path: PathBuf,
    /// Device, inode and change time: an inode number alone may be reused by the next file.
    identity: (u64, u64, i64, i64),
}

fn identity(meta: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec())
}

impl Drop for OwnSocket {
    fn drop(&mut self) {
        let same = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| identity(&meta) == self.identity);
        if same {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds the Unix socket at `path` (mode 0660). An old socket left by a daemon that died is
/// replaced; a live one (it accepts connections), and any file that is not a socket, are
/// left alone and refused.
///
/// The socket is bound in a private directory (mode 0700) beside `path`, given its mode
/// there, and only then linked to `path`: bound in place, it would be open to others by the
/// umask until the chmod.
pub fn bind_unix(path: &Path) -> anyhow::Result<(UnixListener, OwnSocket)> {
    let dir = match path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        Some(dir) => dir,
        None => Path::new("."),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => anyhow::bail!(
            "{} exists and is not a socket: not deleting it; choose another --socket",
            path.display()
        ),
        Ok(_) if std::os::unix::net::UnixStream::connect(path).is_ok() => anyhow::bail!(
            "a daemon is already listening on {}: stop it first, or choose another --socket",
            path.display()
        ),
        Ok(_) => {
            info!("removing the stale socket {}", path.display());
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        Err(_) => {}
    }
    let private = tempfile::Builder::new()
        .prefix(".blocker-socket.")
        .tempdir_in(dir)
        .with_context(|| format!("creating a private directory in {}", dir.display()))?;
    let unlinked = private.path().join("socket");
    let listener = UnixListener::bind(&unlinked)
        .with_context(|| format!("listening on {}", path.display()))?;
    std::fs::set_permissions(&unlinked, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    // A link, unlike a rename, fails if another daemon bound `path` since the checks above.
    std::fs::hard_link(&unlinked, path).with_context(|| {
        format!(
            "listening on {}: it appeared while this daemon bound it; choose another --socket",
            path.display()
        )
    })?;
    private
        .close()
        .with_context(|| format!("removing the private directory in {}", dir.display()))?;
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((
        listener,
        OwnSocket {
            path: path.to_path_buf(),
            identity: identity(&meta),
        },
    ))
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use tokio::net::{TcpSocket, TcpStream};

    use super::*;

    /// A server of `/` (a short answer) and `/big` (1 MB) on 127.0.0.1 with `limits`.
    async fn serving(limits: Limits) -> std::net::SocketAddr {
        let app = Router::new()
            .route("/", get(|| async { "ok" }))
            .route("/big", get(|| async { vec![b'x'; 1 << 20] }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, "test".into(), app, limits));
        addr
    }

    async fn connect_from(source: &str, server: std::net::SocketAddr) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        socket.connect(server).await.unwrap()
    }

    /// The status of `GET /` on a new connection from `source`.
    async fn status_from(source: &str, server: std::net::SocketAddr) -> String {
        let mut stream = connect_from(source, server).await;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer));
        read.await.expect("no answer").unwrap();
        answer.lines().next().unwrap_or_default().to_string()
    }

    #[tokio::test]
    async fn one_address_holds_a_bounded_share_of_the_connections() {
        let limits = Limits {
            per_loopback: 3,
            ..Limits::new(16)
        };
        assert_eq!(limits.per_peer("192.0.2.1".parse().unwrap()), 16);
        assert_eq!(Limits::new(512).per_peer("192.0.2.1".parse().unwrap()), 32);
        assert_eq!(Limits::new(512).per_peer("::1".parse().unwrap()), 256);
        let server = serving(limits).await;
        let mut idle = Vec::new();
        for _ in 0..3 {
            idle.push(connect_from("127.0.0.1", server).await);
        }
        assert_eq!(
            status_from("127.0.0.1", server).await,
            "HTTP/1.1 503 Service Unavailable"
        );
        // Every loopback address is the same client: a local user cannot bind more of 127/8
        // to take more slots. A closed connection frees its client's slot.
        assert_eq!(
            status_from("127.0.0.2", server).await,
            "HTTP/1.1 503 Service Unavailable"
        );
        drop(idle.pop());
        let deadline = Instant::now() + Duration::from_secs(5);
        while status_from("127.0.0.2", server).await != "HTTP/1.1 200 OK" {
            assert!(Instant::now() < deadline, "the slot was not given back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[test]
    fn an_ipv6_client_counts_as_its_64_and_loopback_as_one_client() {
        let client = |addr: &str| client_of(addr.parse().unwrap());
        assert_eq!(client("2001:db8:1:2::7"), client("2001:db8:1:2:ffff::1"));
        assert_ne!(client("2001:db8:1:2::7"), client("2001:db8:1:3::7"));
        assert_eq!(client("127.0.0.1"), client("127.9.8.7"));
        assert_eq!(client("127.0.0.1"), client("::1"));
        assert_ne!(client("192.0.2.1"), client("192.0.2.2"));
    }

    #[tokio::test]
    async fn a_client_that_pipelines_and_never_reads_is_cut_off() {
        let limits = Limits {
            write_timeout: Duration::from_millis(300),
            ..Limits::new(16)
        };
        let server = serving(limits).await;
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(server).await.unwrap();
        // 50 MB of answers: far more than the socket buffers hold.
        let requests = 50;
        let request = b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".repeat(requests);
        stream.write_all(&request).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        // What was sent before the daemon gave up arrives, then the end.
        let mut answers = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answers.extend_from_slice(&buf[..n]),
                }
            }
        });
        read.await.expect("the connection is still open");
        let answered = answers.windows(12).filter(|w| w == b"HTTP/1.1 200").count();
        assert!(answered < requests, "all {answered} answers were sent");
    }

    /// Watches `path` in a tight loop while binding it again and again: the socket must
    /// never show up with a mode other than 0660, not even between the bind and a chmod.
    #[tokio::test]
    async fn the_socket_is_never_seen_with_another_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        let modes = crate::test_support::modes_seen_while(&path, || {
            for _ in 0..300 {
                let (listener, owner) = bind_unix(&path).unwrap();
                drop(listener);
                drop(owner);
            }
        });
        let seen: Vec<String> = modes.iter().map(|mode| format!("{mode:o}")).collect();
        assert!(
            modes.iter().all(|&mode| mode == 0o660),
            "modes seen: {seen:?}"
        );
    }

    #[tokio::test]
    async fn only_stale_sockets_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "keep").unwrap();
        let err = bind_unix(&file).err().expect("refused").to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");

        let path = dir.path().join("sock");
        let (live, owner) = bind_unix(&path).unwrap();
        let err = bind_unix(&path).err().expect("refused").to_string();
        assert!(err.contains("already listening"), "{err}");
        drop(live);
        // Change times are coarse (a clock tick): a daemon does not restart faster.
        std::thread::sleep(Duration::from_millis(20));
        // The listener is closed but the file stays: stale, so it is replaced.
        let (_again, second) = bind_unix(&path).unwrap();
        // The first owner's drop must not remove the second daemon's socket.
        drop(owner);
        assert!(path.exists());
        drop(second);
        assert!(!path.exists());
    }
}

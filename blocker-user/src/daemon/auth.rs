//! Who may use the TCP API. A bearer token, generated at first start into `api.token` beside
//! the state file (mode 0600; `--token-file` puts it elsewhere; an existing file must belong
//! to root or to the daemon's user and be closed to group and others), guards everything but
//! `/metrics` and `/healthz`, which scrapers read without one. Requests a browser could send
//! for a web page (an `Origin` header, or a `Host` that names another site, as after DNS
//! rebinding) are refused whatever they carry: a `Host` must be `localhost`, a loopback
//! address, the listen address (any address when listening on all of them: an address is
//! never a name an attacker's DNS answers for) or exactly this machine's name, with or
//! without a port. The Unix socket keeps file-permission auth.

use std::{
    fs::{self, OpenOptions},
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr},
    os::unix::fs::MetadataExt,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::{
    extract::{Request, State as AxumState},
    http::{header, HeaderMap, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use tracing::info;

use super::api::ApiError;
use crate::{Error, Result};

/// The token file's name beside the state file.
pub const TOKEN_FILE: &str = "api.token";

/// Paths anyone who can reach the listener may read.
const OPEN_PATHS: [&str; 2] = ["/metrics", "/healthz"];

/// Random bytes in a new token.
const TOKEN_BYTES: usize = 32;

/// Where the token lives when `--token-file` does not say.
pub fn default_token_path(state_path: &Path) -> PathBuf {
    state_path.with_file_name(TOKEN_FILE)
}

/// Reads the token at `path`, or creates it (mode 0600) with fresh random bytes. A file
/// another user owns, or that group or others may read or write, is refused: its token may
/// be known, or chosen, by someone else.
pub fn load_or_create_token(path: &Path) -> Result<String> {
    let token = match read_secret_file(path, "API token") {
        Ok(token) => token,
        Err(Error::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
            return create_token(path)
        }
        Err(err) => return Err(err),
    };
    if token.len() < 16 || !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err(Error::InvalidConfig {
            path: path.to_path_buf(),
            message: "the API token must be at least 16 printable characters; delete \
                      the file to have a new one generated"
                .into(),
        });
    }
    Ok(token)
}

/// The secret (trimmed) in the file at `path`, a regular file of root or this user that group
/// and others may neither read nor write; `what` names it in errors.
pub fn read_secret_file(path: &Path, what: &'static str) -> Result<String> {
    let io = |err| Error::io(format!("reading the {what} {}", path.display()))(err);
    let mut file = fs::File::open(path).map_err(io)?;
    // The metadata of the file opened, so it cannot be swapped after the check.
    let meta = file.metadata().map_err(io)?;
    check_secret_file(path, &meta, nix::unistd::geteuid().as_raw(), what)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(io)?;
    Ok(text.trim().to_string())
}

/// A secret file must be a regular file of root or `euid`, closed to group and others.
fn check_secret_file(
    path: &Path,
    meta: &fs::Metadata,
    euid: u32,
    what: &'static str,
) -> Result<()> {
    let refuse = |why: String| {
        Err(Error::UnsafeSecretFile {
            what,
            path: path.to_path_buf(),
            why,
        })
    };
    if !meta.is_file() {
        return refuse("it is not a regular file".into());
    }
    if meta.uid() != 0 && meta.uid() != euid {
        return refuse(format!(
            "it belongs to uid {}, not to root or this user ({euid}); check it, then `chown \
             root {}`",
            meta.uid(),
            path.display()
        ));
    }
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return refuse(format!(
            "group or others may read or write it (mode {:o}); check it, then `chmod 600 {}`",
            mode & 0o777,
            path.display()
        ));
    }
    Ok(())
}

fn create_token(path: &Path) -> Result<String> {
    let mut random = [0u8; TOKEN_BYTES];
    fs::File::open("/dev/urandom")
        .and_then(|mut urandom| urandom.read_exact(&mut random))
        .map_err(Error::io("reading /dev/urandom"))?;
    let token: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(format!("{token}\n").as_bytes()))
        .map_err(Error::io(format!(
            "writing the API token {}",
            path.display()
        )))?;
    info!("wrote a new API token to {}", path.display());
    Ok(token)
}

/// The checks of the TCP listener.
pub struct Guard {
    token: String,
    /// This machine's name, which a `Host` header may carry.
    hostname: String,
    /// Where the TCP listener listens.
    listen: IpAddr,
}

impl Guard {
    pub fn new(token: String, listen: SocketAddr) -> Arc<Self> {
        let hostname = fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_ascii_lowercase())
            .unwrap_or_default();
        Arc::new(Self {
            token,
            hostname,
            listen: listen.ip(),
        })
    }

    /// Passes a request, or says why not.
    pub fn check(&self, path: &str, headers: &HeaderMap) -> Result<(), ApiError> {
        if headers.contains_key(header::ORIGIN) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "requests from web pages (with an Origin header) are refused",
            ));
        }
        if let Some(host) = headers.get(header::HOST) {
            let host = host.to_str().unwrap_or("");
            if !self.is_this_host(host) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("Host {host:?} does not name this machine: use its address, localhost or its host name"),
                ));
            }
        }
        if OPEN_PATHS.contains(&path) {
            return Ok(());
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or("");
        if same_secret(presented.trim().as_bytes(), self.token.as_bytes()) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "send the token of the daemon's token file as `Authorization: Bearer TOKEN`, \
                 or use the Unix socket",
            ))
        }
    }

    /// See the module documentation.
    fn is_this_host(&self, host: &str) -> bool {
        let name = match host.rsplit_once(':') {
            // An IPv6 literal is bracketed; a bare one (no port) has colons too.
            Some((name, port))
                if port.chars().all(|c| c.is_ascii_digit()) && !name.ends_with(':') =>
            {
                name
            }
            _ => host,
        };
        let name = name.trim_start_matches('[').trim_end_matches(']');
        if let Ok(addr) = name.parse::<IpAddr>().or_else(|_| host.parse()) {
            return addr.is_loopback() || addr == self.listen || self.listen.is_unspecified();
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        name == "localhost" || (!self.hostname.is_empty() && name == self.hostname)
    }
}

/// Compares without stopping at the first difference, so timing does not reveal the token.
fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    given.len() == secret.len()
        && given
            .iter()
            .zip(secret)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// Middleware of the TCP router.
pub(super) async fn guard_requests(
    AxumState(guard): AxumState<Arc<Guard>>,
    request: Request,
    next: Next,
) -> Response {
    match guard.check(request.uri().path(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(err) => err.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn guard() -> Guard {
        guard_on("127.0.0.1")
    }

    fn guard_on(listen: &str) -> Guard {
        Guard {
            token: "0123456789abcdef0123".into(),
            hostname: "gate".into(),
            listen: listen.parse().unwrap(),
        }
    }

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn status(path: &str, pairs: &[(header::HeaderName, &str)]) -> u16 {
        match guard().check(path, &headers(pairs)) {
            Ok(()) => 200,
            Err(err) => err.status().as_u16(),
        }
    }

    #[test]
    fn the_token_is_needed_except_for_probes() {
        let auth = (header::AUTHORIZATION, "Bearer 0123456789abcdef0123");
        assert_eq!(status("/v1/offenses", std::slice::from_ref(&auth)), 200);
        assert_eq!(status("/v1/offenses", &[]), 401);
        assert_eq!(
            status(
                "/v1/bans",
                &[(header::AUTHORIZATION, "Bearer 0123456789abcdef012")]
            ),
            401
        );
        assert_eq!(
            status(
                "/v1/bans",
                &[(header::AUTHORIZATION, "Basic 0123456789abcdef0123")]
            ),
            401
        );
        assert_eq!(status("/metrics", &[]), 200);
        assert_eq!(status("/healthz", &[]), 200);
    }

    #[test]
    fn hosts_must_name_this_machine_and_origins_are_refused() {
        let auth = (header::AUTHORIZATION, "Bearer 0123456789abcdef0123");
        for host in [
            "127.0.0.1:9977",
            "127.0.0.2",
            "[::1]:9977",
            "::1",
            "localhost",
            "localhost.:9977",
            "gate:9977",
            "GATE",
        ] {
            assert_eq!(
                status("/v1/bans", &[auth.clone(), (header::HOST, host)]),
                200,
                "{host}"
            );
        }
        for host in [
            "evil.example",
            "gateway:9977",
            "127.0.0.1.evil.example",
            "localhost.evil",
            "evil.localhost",
            // DNS rebinding under a name that starts or holds this machine's.
            "gate.evil.example",
            "gate.example.org:9977",
            "evil.gate.example",
            // An address this listener does not listen on.
            "10.0.0.1",
            "[2001:db8::1]:9977",
        ] {
            assert_eq!(status("/metrics", &[(header::HOST, host)]), 403, "{host}");
        }
        let host_status = |listen: &str, host: &str| match guard_on(listen)
            .check("/metrics", &headers(&[(header::HOST, host)]))
        {
            Ok(()) => 200,
            Err(err) => err.status().as_u16(),
        };
        assert_eq!(host_status("10.0.0.1", "10.0.0.1:9977"), 200);
        assert_eq!(host_status("10.0.0.1", "10.0.0.2:9977"), 403);
        assert_eq!(host_status("0.0.0.0", "10.0.0.2:9977"), 200);
        assert_eq!(host_status("::", "[2001:db8::1]:9977"), 200);
        assert_eq!(host_status("0.0.0.0", "gate.evil.example"), 403);
        assert_eq!(
            status("/healthz", &[(header::ORIGIN, "http://127.0.0.1:9977")]),
            403
        );
    }

    #[test]
    fn a_token_is_created_once_private_and_then_reread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(TOKEN_FILE);
        let token = load_or_create_token(&path).unwrap();
        assert_eq!(token.len(), 2 * TOKEN_BYTES);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load_or_create_token(&path).unwrap(), token);
        fs::write(&path, "short\n").unwrap();
        assert!(load_or_create_token(&path).unwrap_err().is_bad_input());
    }

    #[test]
    fn a_token_file_others_may_read_or_write_or_another_user_owns_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        let token = load_or_create_token(&path).unwrap();
        for mode in [0o644, 0o640, 0o602] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = load_or_create_token(&path).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("refusing the API token file {}", path.display()))
                    && err.contains(&format!("mode {mode:o}"))
                    && !err.contains('\n'),
                "{err}"
            );
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(load_or_create_token(&path).unwrap(), token);

        let owner = fs::metadata(&path).unwrap().uid();
        let (foreign, euid) = if owner == 0 {
            // Root runs the tests: give the file to nobody.
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            (65534, 0)
        } else {
            (owner, owner + 1)
        };
        if owner == 0 {
            assert!(
                load_or_create_token(&path).is_err(),
                "nobody's file was trusted"
            );
        }
        let meta = fs::metadata(&path).unwrap();
        let err = check_secret_file(&path, &meta, euid, "API token")
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("belongs to uid {foreign}")), "{err}");
        check_secret_file(&path, &meta, foreign, "API token").unwrap();
        let err = check_secret_file(
            dir.path(),
            &fs::metadata(dir.path()).unwrap(),
            owner,
            "API token",
        )
        .unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn a_secret_others_may_read_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nats.token");
        fs::write(&path, "s3cret-token-for-the-bucket\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret_file(&path, "NATS token")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("NATS token") && err.contains("mode 644"),
            "{err}"
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            read_secret_file(&path, "NATS token").unwrap(),
            "s3cret-token-for-the-bucket"
        );
    }
}

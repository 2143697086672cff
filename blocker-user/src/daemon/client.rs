//! The client side of the Unix socket: `blocker report` through a running daemon. The socket
//! is guarded by its file mode, so no token is needed.

use std::path::Path;

use axum::http::header;

/// Sends an offense to a running daemon over its Unix socket; returns the status and body.
pub async fn report_via_socket(
    socket: &Path,
    report: &serde_json::Value,
) -> anyhow::Result<(u16, String)> {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::post("/v1/offenses")
        .header(header::HOST, "localhost")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(serde_json::to_vec(report)?)))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Each jail's status from a running daemon, over its Unix socket.
pub async fn jails_via_socket(socket: &Path) -> anyhow::Result<Vec<super::JailStatus>> {
    get_via_socket(socket, "/v1/jails").await
}

/// The fleet link of a running daemon (`None` when it has no fleet), over its Unix socket.
pub async fn fleet_via_socket(socket: &Path) -> anyhow::Result<Option<crate::fleet::LinkStatus>> {
    get_via_socket(socket, "/v1/fleet").await
}

/// `GET path` on a running daemon's Unix socket, as JSON.
async fn get_via_socket<T: serde::de::DeserializeOwned>(
    socket: &Path,
    path: &str,
) -> anyhow::Result<T> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(header::HOST, "localhost")
        .body(Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    anyhow::ensure!(status.is_success(), "GET {path}: {status}");
    Ok(serde_json::from_slice(&body)?)
}

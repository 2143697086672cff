//! One conditional GET of a feed: `If-None-Match` / `If-Modified-Since` from the last good
//! fetch, the body spooled to a temporary file and cut off past the feed's size limit.

use std::io::Write as _;

use reqwest::{header, StatusCode};

use super::{status::FeedStatus, FeedConfig};

pub enum Fetched {
    /// 304: the last good list still holds.
    NotModified,
    Body {
        file: tempfile::NamedTempFile,
        etag: Option<String>,
        last_modified: Option<String>,
    },
}

pub async fn fetch(
    client: &reqwest::Client,
    feed: &FeedConfig,
    status: &FeedStatus,
) -> Result<Fetched, String> {
    // The HTTP client is built without a TLS stack (reqwest's default features are off
    // workspace-wide): say so rather than fail with a builder error.
    if feed.url.starts_with("https://") {
        return Err(
            "https:// feeds need a build with TLS (reqwest's rustls-tls feature); \
                    this one fetches http:// only"
                .to_string(),
        );
    }
    let mut request = client.get(&feed.url);
    if let Some(etag) = &status.etag {
        request = request.header(header::IF_NONE_MATCH, etag);
    }
    if let Some(modified) = &status.last_modified {
        request = request.header(header::IF_MODIFIED_SINCE, modified);
    }
    let mut response = request
        .send()
        .await
        .map_err(|err| format!("fetching: {err}"))?;
    match response.status() {
        StatusCode::NOT_MODIFIED => return Ok(Fetched::NotModified),
        StatusCode::OK => {}
        other => return Err(format!("the server answered {other}")),
    }
    let too_big = || format!("the list is larger than max_bytes = {}", feed.max_bytes);
    if response
        .content_length()
        .is_some_and(|length| length > feed.max_bytes)
    {
        return Err(too_big());
    }
    let header_text = |name| {
        response
            .headers()
            .get(name)
            .and_then(|value: &header::HeaderValue| value.to_str().ok())
            .map(str::to_string)
    };
    let (etag, last_modified) = (
        header_text(header::ETAG),
        header_text(header::LAST_MODIFIED),
    );
    let mut file = tempfile::NamedTempFile::new().map_err(|err| err.to_string())?;
    let mut size = 0u64;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| format!("reading: {err}"))?
    {
        size += chunk.len() as u64;
        if size > feed.max_bytes {
            return Err(too_big());
        }
        file.write_all(&chunk).map_err(|err| err.to_string())?;
    }
    Ok(Fetched::Body {
        file,
        etag,
        last_modified,
    })
}

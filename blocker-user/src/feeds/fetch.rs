//! One conditional GET of a feed: `If-None-Match` / `If-Modified-Since` from the last good
//! fetch, the body spooled to a temporary file and cut off past the feed's size limit.
//! https is checked against the system's CA store, plus the feed's `ca_file` when it has one.

use std::{io::Write as _, path::Path, time::Duration};

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

/// The HTTP client for `feed`: system roots, and the feed's own CA when it names one.
pub fn client(feed: &FeedConfig) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .user_agent(concat!("blocker/", env!("CARGO_PKG_VERSION")))
        .redirect(redirects(feed.url.starts_with("https://")));
    if let Some(path) = &feed.ca_file {
        for certificate in ca_certificates(path)? {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder
        .build()
        .map_err(|err| format!("building the HTTP client: {}", with_causes(&err)))
}

/// Follows a redirect unless [`refused_redirect`] says why not.
fn redirects(https: bool) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        match refused_redirect(https, attempt.url().scheme(), attempt.previous().len()) {
            Some(why) => attempt.error(why),
            None => attempt.follow(),
        }
    })
}

/// Redirects a fetch follows.
const MAX_REDIRECTS: usize = 5;

/// Why the redirect to a `scheme` URL after `hops` requests is not followed: past
/// [`MAX_REDIRECTS`], or from an `https://` feed to anything else, since a plain-http hop
/// would let anyone on the path rewrite the list.
fn refused_redirect(https: bool, scheme: &str, hops: usize) -> Option<String> {
    if https && scheme != "https" {
        Some(format!("a redirect from https to {scheme}"))
    } else if hops > MAX_REDIRECTS {
        Some("too many redirects".into())
    } else {
        None
    }
}

/// The certificates of a PEM file; an unreadable file or one without a certificate is an error.
fn ca_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path)
        .map_err(|err| format!("ca_file {}: cannot read it: {err}", path.display()))?;
    let not_pem = |why: String| format!("ca_file {}: not a PEM certificate: {why}", path.display());
    let certificates =
        reqwest::Certificate::from_pem_bundle(&pem).map_err(|err| not_pem(err.to_string()))?;
    if certificates.is_empty() {
        return Err(not_pem("no BEGIN CERTIFICATE block".into()));
    }
    Ok(certificates)
}

/// An error with the causes under it: reqwest's own text does not say why TLS failed.
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// Fetches `feed`'s list; `server` is set to the address that answered, if any did.
pub async fn fetch(
    client: &reqwest::Client,
    feed: &FeedConfig,
    status: &FeedStatus,
    server: &mut Option<std::net::IpAddr>,
) -> Result<Fetched, String> {
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
        // Without the URL, whose query may hold a key: the error is stored and shown.
        .map_err(|err| format!("fetching: {}", with_causes(&err.without_url())))?;
    *server = response.remote_addr().map(|addr| addr.ip());
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
        .map_err(|err| format!("reading: {}", with_causes(&err.without_url())))?
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_https_feed_never_follows_a_redirect_to_plain_http() {
        assert!(refused_redirect(true, "http", 1).is_some());
        assert_eq!(refused_redirect(true, "https", 1), None);
        assert_eq!(refused_redirect(false, "http", 1), None);
        assert_eq!(refused_redirect(false, "https", 1), None);
        assert!(refused_redirect(false, "http", MAX_REDIRECTS + 1).is_some());
    }
}

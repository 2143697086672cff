//! The HTTP API: routes, request parsing and the one place errors become HTTP answers. Every
//! error, including unknown paths and methods and oversized bodies, is a JSON
//! `{"error": "..."}`.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{RawQuery, State as AxumState},
    http::{header, HeaderMap, StatusCode},
    middleware,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{auth, feed, metrics, offenses::OffenseQueue, Daemon};
use crate::{
    listing::{self, BanFilter},
    offense::Severity,
    state::Listed,
    Error,
};

/// Largest request body accepted.
pub const MAX_BODY: usize = 16 * 1024;
/// How long a client may take to send a request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers share.
#[derive(Clone)]
pub struct Api {
    pub daemon: Daemon,
    pub offenses: OffenseQueue,
}

/// An offense report: `POST /v1/offenses`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OffenseReport {
    pub addr: String,
    pub severity: Severity,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub key: Option<String>,
}

/// The answer to an offense report.
#[derive(Debug, Serialize, Deserialize)]
pub struct OffenseAnswer {
    /// The prefix the source is scored as.
    pub prefix: String,
    pub score: f64,
    pub banned: bool,
    pub expires_at: Option<Timestamp>,
}

/// An error answer: a status and a JSON `{"error": message}` body.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    #[cfg(test)]
    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        let status = if err.is_bad_input() {
            StatusCode::UNPROCESSABLE_ENTITY
        } else if matches!(err, Error::State { .. }) {
            // Enforcement goes on; writes wait until the operator fixes the file.
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        ApiError::new(status, err.to_string())
    }
}

/// Runs blocking work (files, maps) off the threads that serve HTTP.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> crate::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?
        .map_err(ApiError::from)
}

/// Parses an offense request: JSON only (415), well-formed (400). The report is validated
/// against the scoring settings later, with them at hand.
pub fn parse_offense(content_type: Option<&str>, body: &[u8]) -> Result<OffenseReport, ApiError> {
    let is_json = content_type
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the offense as JSON with Content-Type: application/json",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|err| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid offense: {err}")))
}

/// Reads a body of at most [`MAX_BODY`] bytes within [`BODY_TIMEOUT`].
async fn read_body(body: Body) -> Result<bytes::Bytes, ApiError> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "the request body came too slowly",
        )),
        Ok(Err(_)) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {MAX_BODY} bytes, or was cut short"),
        )),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

async fn post_offense(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<OffenseAnswer>, ApiError> {
    if let Some(broken) = api.daemon.state_health.broken() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, broken));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok());
    let body = read_body(body).await?;
    let report = parse_offense(content_type, &body)?;
    let label = super::offenses::severity_label(report.severity);
    let answer = api.offenses.record(report).await?;
    api.daemon.count_offense(label);
    Ok(Json(answer))
}

/// Bans per page when the request names no `limit`, and the most one may ask for.
const DEFAULT_PAGE: u64 = 1_000;
const MAX_PAGE: u64 = 10_000;

/// The bans in force, with the fields of `blocker list --json`, filtered by the query
/// parameters `kind`, `source`, `reason`, `since` (as `blocker list`) and paginated: `limit`
/// bans (1,000 by default, 10,000 at most) after `cursor`; the `Next-Cursor` header holds
/// the cursor of the next page while there is one.
async fn get_bans(
    AxumState(api): AxumState<Api>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let filter = ban_filter(query.as_deref().unwrap_or(""), Timestamp::now())?;
    let state_path = api.daemon.state_path.clone();
    let (bans, next) = blocking(move || {
        let mut bans: Vec<Listed> = Vec::new();
        let next = listing::bans(&state_path, &filter, Timestamp::now(), |listed| {
            bans.push(listed);
            Ok(())
        })?;
        Ok((bans, next))
    })
    .await?;
    let mut response = Json(bans).into_response();
    if let Some(next) = next.and_then(|next| header::HeaderValue::from_str(&next).ok()) {
        response.headers_mut().insert("next-cursor", next);
    }
    Ok(response)
}

/// The listing filter of a `/v1/bans` query string.
fn ban_filter(query: &str, now: Timestamp) -> Result<BanFilter, ApiError> {
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, message);
    let mut filter = BanFilter {
        limit: Some(DEFAULT_PAGE),
        ..BanFilter::default()
    };
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value).ok_or_else(|| bad(format!("{name}: bad encoding")))?;
        match name {
            "kind" => filter.kind = Some(value),
            "source" => filter.source = Some(value),
            "reason" => filter.reason = Some(value),
            "since" => {
                filter.since =
                    Some(listing::parse_since(&value, now).map_err(|err| bad(err.to_string()))?)
            }
            "cursor" => filter.after = Some(value),
            "limit" => {
                let limit: u64 = value
                    .parse()
                    .ok()
                    .filter(|limit| (1..=MAX_PAGE).contains(limit))
                    .ok_or_else(|| bad(format!("limit must be 1 to {MAX_PAGE}")))?;
                filter.limit = Some(limit);
            }
            other => return Err(bad(format!("unknown parameter {other:?}"))),
        }
    }
    filter.check().map_err(|err| bad(err.to_string()))?;
    Ok(filter)
}

/// Decodes `%XX` escapes and `+` (space) of a query string value.
fn percent_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.bytes();
    while let Some(byte) = rest.next() {
        bytes.push(match byte {
            b'+' => b' ',
            b'%' => {
                let hex = [rest.next()?, rest.next()?];
                u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?
            }
            other => other,
        });
    }
    String::from_utf8(bytes).ok()
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such path: see the README for the API",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this path",
    )
}

/// The routes. With a `guard` (the TCP listener), every request passes it first.
/// `GET /v1/jails`: each jail's sources, positions and failures in the current window.
async fn get_jails(AxumState(api): AxumState<Api>) -> Json<Vec<super::JailStatus>> {
    Json(api.daemon.jail_status())
}

/// `GET /v1/fleet`: the fleet link, or `null` without a fleet.
async fn get_fleet(AxumState(api): AxumState<Api>) -> Json<Option<crate::fleet::LinkStatus>> {
    Json(api.daemon.fleet_status())
}

pub fn router(api: Api, guard: Option<Arc<auth::Guard>>) -> Router {
    let router = Router::new()
        .route("/v1/offenses", post(post_offense))
        .route("/v1/bans", get(get_bans))
        .route("/v1/bans.atom", get(feed::get_bans_atom))
        .route("/v1/jails", get(get_jails))
        .route("/v1/fleet", get(get_fleet))
        .route("/metrics", get(metrics::get_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(api);
    match guard {
        Some(guard) => router.layer(middleware::from_fn_with_state(guard, auth::guard_requests)),
        None => router,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        daemon::offenses::{validate, ValidOffense},
        offense::{OffenseBook, OffenseConfig},
    };
    use proptest::prelude::*;

    /// Parsing then validating, as the daemon does before the store is touched.
    fn accept(content_type: Option<&str>, body: &[u8]) -> Result<ValidOffense, ApiError> {
        let report = parse_offense(content_type, body)?;
        validate(&report, &OffenseConfig::default()).map_err(ApiError::from)
    }

    fn assert_client_error(err: &ApiError) {
        assert!(err.status().is_client_error(), "{err:?}");
        let body = serde_json::json!({ "error": err.message() }).to_string();
        assert!(serde_json::from_str::<serde_json::Value>(&body).is_ok());
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
                .map_or(serde_json::Value::Null, serde_json::Value::Number)),
            any::<i64>().prop_map(serde_json::Value::from),
            prop_oneof![
                Just("minor".to_string()),
                Just("critical".to_string()),
                Just("0.0.0.0/0".to_string()),
                Just("::/0".to_string()),
                Just("192.0.2.1".to_string()),
                Just("2001:db8::1/64".to_string()),
                "\\PC{0,40}",
            ]
            .prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("addr".to_string()),
                        Just("severity".to_string()),
                        Just("reason".to_string()),
                        Just("key".to_string()),
                        "[a-z]{1,6}",
                    ],
                    inner,
                    0..5
                )
                .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_bytes_are_refused_with_a_json_4xx_or_accepted(body in prop::collection::vec(any::<u8>(), 0..300)) {
            if let Err(err) = accept(Some("application/json"), &body) {
                assert_client_error(&err);
            }
        }

        #[test]
        fn any_json_is_refused_with_a_json_4xx_or_scores_a_host_with_a_bounded_weight(value in json_value()) {
            let body = value.to_string();
            match accept(Some("application/json; charset=utf-8"), body.as_bytes()) {
                Err(err) => assert_client_error(&err),
                Ok(offense) => {
                    let config = OffenseConfig::default();
                    let mut book = OffenseBook::default();
                    let now = Timestamp::from_second(1_800_000_000).unwrap();
                    let verdict = book.offend(&config, offense.net, offense.severity, &offense.reason, offense.key.as_deref(), now);
                    prop_assert!(verdict.is_ok(), "{verdict:?}");
                    let mask = match offense.net {
                        ipnet::IpNet::V4(_) => config.mask,
                        ipnet::IpNet::V6(net) => crate::addr::v6_key_len(net.addr(), config.mask6),
                    };
                    prop_assert!(offense.net.prefix_len() >= mask, "{}", offense.net);
                }
            }
        }

        #[test]
        fn offenses_that_are_not_json_are_415(content_type in "[a-z/+; =-]{0,30}", body in "\\PC{0,60}") {
            prop_assume!(!content_type.trim_start().to_ascii_lowercase().starts_with("application/json"));
            let err = accept(Some(&content_type), body.as_bytes()).unwrap_err();
            prop_assert_eq!(err.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        }
    }

    #[test]
    fn the_reports_of_the_issue_are_refused() {
        for (body, status) in [
            (r#"{"addr":"0.0.0.0/0","severity":"critical"}"#, 422),
            (r#"{"addr":"::/0","severity":1e300}"#, 422),
            (r#"{"addr":"192.0.2.0/31","severity":"minor"}"#, 422),
            // A link-local source is scored alone: a range of them is a network.
            (
                r#"{"addr":"fe80::8000:0:0:0/65","severity":"critical"}"#,
                422,
            ),
            (r#"{"addr":"fe80::/127","severity":"minor"}"#, 422),
            (r#"{"addr":"192.0.2.1","severity":10.01}"#, 422),
            (r#"{"addr":"192.0.2.1","severity":"minor","reason":1}"#, 400),
        ] {
            assert_eq!(
                accept(Some("application/json"), body.as_bytes())
                    .unwrap_err()
                    .status()
                    .as_u16(),
                status,
                "{body}"
            );
        }
        assert_eq!(
            accept(Some("text/plain"), b"{}")
                .unwrap_err()
                .status()
                .as_u16(),
            415
        );
        assert_eq!(accept(None, b"{}").unwrap_err().status().as_u16(), 415);
        let ok = accept(
            Some("application/json"),
            br#"{"addr":"2001:db8:1:2::/64","severity":10}"#,
        )
        .unwrap();
        assert_eq!(ok.net.to_string(), "2001:db8:1:2::/64");
    }
}

//! HTTP plumbing shared by every route: errors answered as the Open Inference Protocol's
//! `{"error": "…"}` with the right status (axum's own rejections, unknown routes and panics
//! included), request bodies read under a size limit, and the middleware that writes one log
//! line per request and counts it in the metrics.
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use super::{AppState, Buffered};

/// A request that cannot be served, answered as `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds for a `Retry-After` header (503 when the queue is full).
    pub retry_after: Option<u32>,
    /// Close the connection after answering (the body was not read to its end).
    pub close: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), retry_after: None, close: false }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// 503 with `Retry-After`.
    pub fn busy(message: impl Into<String>, retry_after: u32) -> ApiError {
        ApiError { retry_after: Some(retry_after), ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(serde_json::json!({ "error": self.message }))).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
        }
        if self.close {
            r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }
}

/// Images a response was about, as a response extension (for the log line).
#[derive(Clone, Copy, Debug)]
pub struct Images(pub usize);

/// The route template that served a request, as a response extension (for the metrics).
#[derive(Clone, Debug)]
struct Route(String);

/// A request body read whole, and the room it holds in the server's body budget.
pub struct ReadBody {
    pub parts: Parts,
    pub bytes: Bytes,
    pub room: Buffered,
}

/// Reads a request's body, at most `max_body` bytes, within the body timeout, holding room
/// for it in the body budget (`--max-buffered-mb`; 503 when full) before any byte is kept.
/// A larger body is refused with 413 after reading on (and dropping) up to a few times the
/// limit, so that the client, still sending, gets to read the answer instead of a reset
/// connection. A body still arriving when the server is told to stop gets a 503.
pub async fn read_body(state: &AppState, req: Request) -> Result<ReadBody, ApiError> {
    let limit = state.limits.max_body;
    let (parts, body) = req.into_parts();
    let declared = parts.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let drain = limit.saturating_mul(4).max(64 << 20);
    let too_large = || ApiError { close: true, ..ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is more than {limit} bytes (--max-body-mb)")) };
    if declared.is_some_and(|n| n > drain as u64) {
        return Err(too_large());
    }
    // Room for what the client declared (within the limit), or for the limit when it did not say.
    let expected = declared.map_or(limit, |n| (n as usize).min(limit));
    let room = state.reserve_body(expected)?;
    let read = async {
        let mut body = body;
        let mut buf = Vec::with_capacity(expected.min(1 << 20));
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ApiError { close: true, ..ApiError::bad_request(format!("cannot read the request body: {e}")) })?;
            let Ok(data) = frame.into_data() else { continue };
            seen = seen.saturating_add(data.len());
            if seen > limit || seen > expected {
                if seen > drain {
                    break;
                }
                continue;
            }
            buf.extend_from_slice(&data);
        }
        if seen > limit {
            return Err(too_large());
        }
        if seen > expected {
            return Err(ApiError { close: true, ..ApiError::bad_request(format!("the request body is longer than its Content-Length ({expected} bytes)")) });
        }
        Ok(Bytes::from(buf))
    };
    let timeout = state.limits.body_timeout;
    tokio::select! {
        r = tokio::time::timeout(timeout, read) => match r {
            Ok(r) => r.map(|bytes| ReadBody { parts, bytes, room }),
            Err(_) => Err(ApiError { close: true, ..ApiError::new(StatusCode::REQUEST_TIMEOUT, format!("the request body took more than {} s to arrive (--body-timeout-s)", timeout.as_secs_f64())) }),
        },
        _ = state.stopped() => Err(ApiError { close: true, ..ApiError::busy("the server is shutting down: the request body was not complete", 5) }),
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json"))
}

/// Turns every error response that is not JSON yet (axum's rejections, 405s, tower-http's
/// answers) into `{"error": "…"}`, keeping the status and the text.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    if resp.status().as_u16() < 400 || is_json(resp.headers()) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10).await.map(|b| String::from_utf8_lossy(&b).trim().to_string()).unwrap_or_default();
    let message = if text.is_empty() { parts.status.canonical_reason().unwrap_or("error").to_lowercase() } else { text };
    parts.headers.remove(CONTENT_LENGTH);
    parts.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let body = serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default();
    Response::from_parts(parts, Body::from(body))
}

/// A handler that panicked answers 500 (the server goes on).
pub fn panic_response(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = err.downcast_ref::<String>().map(String::as_str).or_else(|| err.downcast_ref::<&str>().copied()).unwrap_or("unknown panic");
    ApiError::internal(format!("internal error: the handler panicked ({what})")).into_response()
}

/// Records which route template served the request (route layer: runs after routing).
pub async fn name_route(matched: MatchedPath, req: Request, next: Next) -> Response {
    let route = Route(matched.as_str().to_string());
    let mut resp = next.run(req).await;
    resp.extensions_mut().insert(route);
    resp
}

/// One log line and one metrics count per request: method, path, status, images, milliseconds.
pub async fn track(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = super::metrics::method_label(req.method());
    // The path as logged: at most 200 characters, so that a client cannot flood the log.
    let path: String = req.uri().path().chars().take(200).collect();
    let resp = next.run(req).await;
    let seconds = start.elapsed().as_secs_f64();
    let route = resp.extensions().get::<Route>().map_or("unmatched", |r| r.0.as_str());
    let images = resp.extensions().get::<Images>().map_or(0, |n| n.0);
    let status = resp.status().as_u16();
    state.metrics.request(route, method, status, seconds);
    if let Some(log) = &state.log {
        log(&format!("{method} {path} {status} {images} image{} {:.1} ms", if images == 1 { "" } else { "s" }, seconds * 1e3));
    }
    resp
}

/// Unknown routes.
pub async fn fallback(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route {} {}: the server answers /v2 (Open Inference Protocol), /v2/models/{{name}}[/versions/{{version}}][/ready|/infer|/config], /v1/identify and /metrics",
        super::metrics::method_label(req.method()),
        req.uri().path().chars().take(200).collect::<String>()
    ))
}

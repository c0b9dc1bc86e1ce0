//! The gate in front of the gRPC service: an `infer` message takes its room in the body budget
//! (`--max-buffered-mb`) from its 5-byte gRPC length prefix, before tonic reads the message,
//! and must arrive whole within `--body-timeout-s`. Without it, tonic would buffer every
//! message up to `--max-body-mb` before the service could refuse it, and a client uploading
//! slowly would hold its stream for as long as it liked.
//!
//! The room travels to the handler in the request's extensions ([`Room`]) and is held until
//! the message's floats have run. A message whose room the budget cannot give is refused with
//! UNAVAILABLE before its bytes are read; one that declares more than `--max-body-mb` is left
//! to tonic, which refuses it with RESOURCE_EXHAUSTED without reading it either. The gate's own
//! refusals are counted in `sorbier_grpc_requests_total`; a message that tonic cannot decode
//! (cut off at the deadline, malformed, too large) never reaches the service and is not.
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Frame;
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Bytes, Service};
use tonic::server::NamedService;
use tonic::Status;

use super::super::{AppState, Buffered};
use super::{code_name, status};

/// The path of the one method whose messages are large.
const INFER_PATH: &str = "/inference.GRPCInferenceService/ModelInfer";

/// A message's room in the body budget, taken by the gate (shared, as request extensions must
/// be `Clone`; freed when the handler drops the last handle).
#[derive(Clone)]
pub struct Room(#[allow(dead_code)] Arc<Buffered>);

/// The service `S` behind the gate.
#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    state: Arc<AppState>,
}

impl<S> Gate<S> {
    pub fn new(inner: S, state: Arc<AppState>) -> Gate<S> {
        Gate { inner, state }
    }
}

impl<S: NamedService> NamedService for Gate<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Gate<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<http::Response<Body>, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The clone that was made ready serves this call (tower's rule for cloned services).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let state = self.state.clone();
        Box::pin(async move {
            if req.uri().path() != INFER_PATH {
                return inner.call(req).await;
            }
            let start = std::time::Instant::now();
            match admit(req, &state).await {
                Ok(req) => inner.call(req).await,
                Err(refusal) => {
                    state.metrics.grpc_request("ModelInfer", code_name(refusal.code()), start.elapsed().as_secs_f64());
                    Ok(refusal.into_http())
                }
            }
        })
    }
}

/// Reads the message's length prefix, reserves its room and hands the request on with the
/// bytes read so far put back in front of the rest, under the body deadline.
async fn admit(req: http::Request<Body>, state: &AppState) -> Result<http::Request<Body>, Status> {
    let limits = &state.limits;
    let deadline = tokio::time::Instant::now() + limits.body_timeout;
    let (mut parts, mut body) = req.into_parts();
    let mut head: VecDeque<Frame<Bytes>> = VecDeque::new();
    let mut prefix: Vec<u8> = Vec::with_capacity(5);
    while prefix.len() < 5 {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(late(limits.body_timeout)),
            Ok(None) => break,
            Ok(Some(frame)) => frame?,
        };
        if let Some(data) = frame.data_ref() {
            prefix.extend(data.iter().take(5 - prefix.len()));
        }
        head.push_back(frame);
    }
    if prefix.len() == 5 {
        let declared = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        // Beyond --max-body-mb tonic refuses the message unread; within it, the room is taken now.
        if declared <= limits.max_body {
            let room = state.reserve_body(declared).map_err(status)?;
            parts.extensions.insert(Room(Arc::new(room)));
        }
    }
    let rest = Replay { head, rest: body, deadline: Box::pin(tokio::time::sleep_until(deadline)), timeout: limits.body_timeout };
    Ok(http::Request::from_parts(parts, Body::new(rest)))
}

/// The refusal of a message still incomplete at the body deadline.
fn late(timeout: Duration) -> Status {
    Status::deadline_exceeded(format!("the request message did not arrive within {} s (--body-timeout-s)", timeout.as_secs_f64()))
}

/// The frames already read, then the rest of the body, cut off at the deadline.
struct Replay {
    head: VecDeque<Frame<Bytes>>,
    rest: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl hyper::body::Body for Replay {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(frame) = self.head.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Poll::Ready(next) = Pin::new(&mut self.rest).poll_frame(cx) {
            return Poll::Ready(next);
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(late(self.timeout)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_empty() && self.rest.is_end_stream()
    }
}

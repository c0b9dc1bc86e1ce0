//! Connections: the accept loop and HTTP/1.1 on hyper's connection builder, for the limits
//! `axum::serve` does not offer (after hyper's own `server::conn::http1` and hyper-util's
//! graceful-shutdown example):
//!
//! - at most `max_connections` open at once: beyond, new ones wait in the kernel's accept
//!   queue until one closes (nothing more is accepted, so file descriptors stay bounded);
//! - `header_timeout`: a request head must be complete this long after the connection opened
//!   or the previous answer was sent (hyper's `header_read_timeout`); a client that sends
//!   nothing, or one byte every few seconds, is closed;
//! - `idle_timeout`: a connection that carries no request and moves no byte for this long is
//!   closed (keep-alive);
//! - request heads of at most [`MAX_HEAD`] bytes;
//! - on stop: idle connections close at once, the others after their answer (the body of a
//!   request still being uploaded is cut short with a 503, see [`super::http::read_body`]).
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::AppState;

/// The largest request head (request line and headers), in bytes.
pub const MAX_HEAD: usize = 64 << 10;

/// Connection limits and timeouts.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> ConnLimits {
        ConnLimits { max_connections: 256, header_timeout: Duration::from_secs(10), idle_timeout: Duration::from_secs(30) }
    }
}

/// When a connection last moved a byte, and how many requests it is serving.
struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
    busy: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity { epoch: Instant::now(), last_ms: AtomicU64::new(0), busy: AtomicUsize::new(0) }
    }

    fn touch(&self) {
        self.last_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long the connection has been idle (zero while it serves a request).
    fn idle_for(&self) -> Duration {
        if self.busy.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        self.epoch.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Counts a request as in progress until dropped.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(a: &Arc<Activity>) -> Busy {
        a.busy.fetch_add(1, Ordering::SeqCst);
        Busy(a.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A stream that records its activity.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accepts connections until the server is told to stop, then waits for the open ones to
/// finish (the caller bounds that wait).
pub async fn serve_http(listener: TcpListener, app: Router, state: Arc<AppState>, limits: ConnLimits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut open = tokio::task::JoinSet::new();
    loop {
        let slot = tokio::select! {
            _ = state.stopped() => break,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = state.stopped() => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // pause instead of spinning.
                    if let Some(log) = &state.log {
                        log(&format!("accept failed: {e}"));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        while open.try_join_next().is_some() {}
        open.spawn(connection(stream, slot, app.clone(), state.clone(), limits));
    }
    drop(listener);
    while open.join_next().await.is_some() {}
}

/// Serves one connection under `limits`, until it closes or the server stops.
async fn connection(stream: TcpStream, _slot: OwnedSemaphorePermit, app: Router, state: Arc<AppState>, limits: ConnLimits) {
    let _ = stream.set_nodelay(true);
    state.metrics.connections.inc();
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked { inner: stream, activity: activity.clone() });
    let svc = TowerToHyperService::new(app);
    let seen = activity.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let busy = Busy::new(&seen);
        let answer = svc.call(req);
        async move {
            let r = answer.await;
            drop(busy);
            r
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        let wait = limits.idle_timeout.saturating_sub(activity.idle_for()).max(Duration::from_millis(10));
        tokio::select! {
            _ = conn.as_mut() => break,
            _ = state.stopped(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tokio::time::sleep(wait), if !closing => {
                if activity.idle_for() >= limits.idle_timeout {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
    state.metrics.connections.dec();
}

//! `predictor serve`: an inference server for exported models, speaking the Open Inference
//! Protocol (KServe v2, as Triton and MLServer do) over HTTP ([`oip`]) and gRPC ([`grpc`]), and a
//! plant identification endpoint shaped like Pl@ntNet's ([`identify`]), with dynamic batching.
//!
//! - [`models`]: the served model names, versions and tensor shapes;
//! - [`batcher`]: the inference thread that owns the ONNX Runtime sessions and batches jobs;
//! - [`prepare`]: decoding and preprocessing on a bounded worker pool within a decoding-memory
//!   budget, with the `predict` pipeline's per-image steps;
//! - [`infer`]: a tensor request's checks and run, shared by both protocols;
//! - [`oip`], [`identify`], [`grpc`]: the routes and the gRPC service;
//! - [`conn`]: the accept loop, connection limits and timeouts;
//! - [`http`]: `{"error": …}` answers, bounded body reading, one log line per request;
//! - [`metrics`]: `GET /metrics` (Prometheus text format), labels from closed sets.
//!
//! A request's way through: its connection is one of at most `max_connections`, its head
//! arrives within the header timeout; its body is read within the body timeout, holding room in
//! the body budget (`max_buffered`) and at most `max_body` bytes (413 beyond); it is parsed and
//! checked on the blocking pool, every declared size with checked arithmetic before anything of
//! that size exists; it is admitted if the images in flight stay within `max_queue` (else 503
//! with `Retry-After`) — and stays admitted until its work is done or dropped, whether or not
//! its client is still there; its photos are decoded within the decoding budget on the worker
//! pool, or its tensor is split into images; the images go to the inference thread as one job
//! and come back as rows, which are encoded on the blocking pool. On SIGINT or SIGTERM the
//! server stops accepting connections, cuts short bodies still being uploaded (503), finishes
//! the requests in flight (for at most [`GRACE`]) and the jobs queued, and returns.
//! docs/serving.md lists every limit and what each bad input gets.
//!
//! Built on tokio, hyper and axum (HTTP/1.1, routing, multipart), tonic (gRPC), tower-http
//! (a panicking handler answers 500) and the `prometheus` crate.
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::engine::ModelOptions;

pub mod batcher;
pub mod conn;
pub mod grpc;
pub mod http;
pub mod identify;
pub mod infer;
pub mod metrics;
pub mod models;
pub mod oip;
pub mod prepare;

use batcher::{BatchConfig, Batcher, Item, Reply, Submitter, Target};
pub use conn::ConnLimits;
use http::ApiError;
use metrics::Metrics;
use models::Catalog;
use prepare::Prep;

/// The longest the server waits, once told to stop, for the requests in flight.
pub const GRACE: Duration = Duration::from_secs(30);

/// Where log lines go (the binary prints them to stderr).
pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

/// What `predictor serve` does.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The models and how to run and combine them, as `predict` takes them;
    /// `model.batch_size` is the most images in one dynamic batch.
    pub model: ModelOptions,
    /// Name of the primary model [None: the file stem, or `ensemble` for several].
    pub name: Option<String>,
    /// Address to listen on (`host:port`; port 0 picks a free one).
    pub listen: String,
    /// The longest an image waits for others to fill its batch.
    pub max_delay: Duration,
    /// The most images admitted at once (decoding, queued or in inference).
    pub max_queue: usize,
    /// The largest request body, in bytes.
    pub max_body: usize,
    /// The most photos in one `/v1/identify` request.
    pub max_images: usize,
    /// Images whose header claims more pixels are refused before decoding.
    pub max_image_pixels: u64,
    /// Decoding budget across the workers, in bytes: what the images being decoded at once may
    /// take (decoder output and RGB copies, estimated from their headers).
    pub decode_budget: usize,
    /// The most request body bytes held in memory at once, across all connections.
    pub max_buffered: usize,
    /// Connection limits and timeouts.
    pub conn: ConnLimits,
    /// The most a client may take to send a request body.
    pub body_timeout: Duration,
    /// Address for the Open Inference Protocol over gRPC, if any.
    pub grpc_listen: Option<String>,
    /// One log line per request.
    pub log_requests: bool,
}

impl ServeOptions {
    /// `models` with the server's defaults, listening on `listen`.
    pub fn new(models: Vec<std::path::PathBuf>, listen: &str) -> ServeOptions {
        ServeOptions {
            model: ModelOptions::new(models),
            name: None,
            listen: listen.to_string(),
            max_delay: Duration::from_millis(5),
            max_queue: 256,
            max_body: 32 << 20,
            max_images: 8,
            max_image_pixels: sorbier::transforms::DEFAULT_MAX_PIXELS,
            decode_budget: 1 << 30,
            max_buffered: 256 << 20,
            conn: ConnLimits::default(),
            body_timeout: Duration::from_secs(30),
            grpc_listen: None,
            log_requests: true,
        }
    }

    fn check(&self) -> Result<()> {
        if self.model.batch_size == 0 || self.max_queue == 0 || self.max_body == 0 || self.max_images == 0 || self.max_image_pixels == 0 {
            bail!("--max-batch, --max-queue, --max-body-mb, --max-images and --max-image-pixels must be at least 1");
        }
        if self.decode_budget == 0 || self.max_buffered == 0 || self.conn.max_connections == 0 {
            bail!("--decode-budget-mb, --max-buffered-mb and --max-connections must be at least 1");
        }
        if self.max_body > self.max_buffered {
            bail!("--max-body-mb ({} bytes) is more than --max-buffered-mb ({} bytes): such a body could never be read", self.max_body, self.max_buffered);
        }
        if [self.conn.header_timeout, self.conn.idle_timeout, self.body_timeout].iter().any(Duration::is_zero) {
            bail!("--header-timeout-s, --idle-timeout-s and --body-timeout-s must be more than 0");
        }
        if self.max_images > self.max_queue {
            bail!("--max-images ({}) is more than --max-queue ({}): such a request could never be admitted", self.max_images, self.max_queue);
        }
        Ok(())
    }
}

/// Request limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_body: usize,
    pub max_images: usize,
    pub max_queue: usize,
    pub body_timeout: Duration,
}

/// What every handler shares.
pub struct AppState {
    pub catalog: Catalog,
    pub prep: Arc<Prep>,
    pub submitter: Submitter,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub batch: BatchConfig,
    /// Images admitted and not yet answered (or dropped) hold its permits.
    admission: Arc<Semaphore>,
    /// Request body bytes held in memory, in KiB: each body holds its share while it is read,
    /// parsed and turned into tensors.
    buffered: Arc<Semaphore>,
    /// Set once the server is told to stop.
    stop: tokio::sync::watch::Sender<bool>,
    pub log: Option<Log>,
}

/// Images admitted into the server. Its places are freed when the last holder drops it: the
/// handler, and the decoding and inference work done for it — so a client that hangs up does
/// not free places while its images are still being decoded or run. That work is skipped where
/// it has not started yet ([`Ticket::cancelled`]).
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
    n: i64,
    cancelled: AtomicBool,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.metrics.in_flight.sub(self.n);
        if self.cancelled() {
            self.metrics.cancelled.inc_by(self.n as u64);
        }
    }
}

/// A share of an [`Admission`], carried by the work done for it.
pub type Ticket = Arc<Admission>;

impl Admission {
    /// Whether the request was abandoned (its client left before the answer).
    pub fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
}

/// The handler's hold on its admission: dropping it before [`Admitted::done`] (the client
/// left, and the handler's future was dropped) marks the work cancelled.
pub struct Admitted {
    ticket: Ticket,
    done: bool,
}

impl Admitted {
    pub fn ticket(&self) -> Ticket {
        self.ticket.clone()
    }

    /// The answer is ready: nothing to cancel.
    pub fn done(mut self) {
        self.done = true;
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if !self.done {
            self.ticket.cancelled.store(true, Ordering::SeqCst);
        }
    }
}

/// Request body bytes held in memory (see [`AppState::reserve_body`]).
pub struct Buffered(#[allow(dead_code)] OwnedSemaphorePermit);

impl AppState {
    /// Admits `n` images, or answers 503 + `Retry-After` when the queue is full (413 when `n`
    /// alone is more than it holds).
    pub fn admit(&self, n: usize) -> Result<Admitted, ApiError> {
        let max = self.limits.max_queue;
        if n > max {
            return Err(ApiError::new(axum::http::StatusCode::PAYLOAD_TOO_LARGE, format!("{n} images in one request, more than the server admits at once ({max}, --max-queue)")));
        }
        match self.admission.clone().try_acquire_many_owned(n as u32) {
            Ok(permit) => {
                self.metrics.in_flight.add(n as i64);
                let ticket = Arc::new(Admission { _permit: permit, metrics: self.metrics.clone(), n: n as i64, cancelled: AtomicBool::new(false) });
                Ok(Admitted { ticket, done: false })
            }
            Err(TryAcquireError::NoPermits) => Err(ApiError::busy(
                format!("the server is busy: {} images in flight, at most {max} (--max-queue); retry later", max - self.admission.available_permits()),
                1,
            )),
            Err(TryAcquireError::Closed) => Err(ApiError::busy("the server is shutting down", 5)),
        }
    }

    /// Reserves room for a request body of `bytes`, or answers 503 + `Retry-After` when the
    /// bodies already held leave too little (`--max-buffered-mb`).
    pub fn reserve_body(&self, bytes: usize) -> Result<Buffered, ApiError> {
        let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        match self.buffered.clone().try_acquire_many_owned(kib) {
            Ok(p) => Ok(Buffered(p)),
            Err(_) => Err(ApiError { close: true, ..ApiError::busy("the server is busy: too many request bodies held at once (--max-buffered-mb); retry later", 1) }),
        }
    }

    /// Runs `items` on the inference thread and waits for their rows.
    pub async fn run(&self, target: Target, items: Vec<Item>, ticket: Ticket) -> Result<Reply, ApiError> {
        let rx = self.submitter.submit(target, items, ticket)?;
        match rx.await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(ApiError::internal(e)),
            Err(_) => Err(ApiError::internal("the inference thread stopped before answering")),
        }
    }

    /// Whether the server was told to stop.
    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Resolves once the server is told to stop.
    pub async fn stopped(&self) {
        let mut rx = self.stop.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// Runs `f` on tokio's blocking pool: parsing and encoding request and response bodies, which
/// would otherwise hold the async threads that answer health checks.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(format!("a worker task failed: {e}")))?
}

/// The routes and their middleware.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v2", get(oip::server_metadata))
        .route("/v2/health/live", get(oip::live))
        .route("/v2/health/ready", get(oip::ready))
        .route("/v2/repository/index", post(oip::repository_index))
        .route("/v2/models/{name}", get(oip::model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(oip::model_metadata))
        .route("/v2/models/{name}/ready", get(oip::model_ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(oip::model_ready))
        .route("/v2/models/{name}/config", get(oip::model_config))
        .route("/v2/models/{name}/versions/{version}/config", get(oip::model_config))
        .route("/v2/models/{name}/infer", post(oip::infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(oip::infer))
        .route("/v1/identify", post(identify::identify))
        .route("/metrics", get(render_metrics))
        .route_layer(axum::middleware::from_fn(http::name_route))
        .fallback(http::fallback)
        // Bodies are read (and limited) by the routes themselves: see http::read_body.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(http::json_errors))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(http::panic_response))
        .layer(axum::middleware::from_fn_with_state(state.clone(), http::track))
        .with_state(state)
}

async fn render_metrics(axum::extract::State(state): axum::extract::State<Arc<AppState>>) -> Result<axum::response::Response, ApiError> {
    let text = state.metrics.render().map_err(|e| ApiError::internal(format!("{e:#}")))?;
    Ok(([(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
}

use axum::response::IntoResponse;

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            // Without a SIGTERM handler only Ctrl-C stops the server.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Loads the models, listens, and serves until `shutdown` resolves; then stops accepting,
/// finishes what is in flight and returns. `log` gets the start-up lines (the last one is
/// `listening on http://ADDR`) and, when `opts.log_requests`, one line per request.
pub fn run(opts: &ServeOptions, log: Log, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
    opts.check()?;
    let ens = opts.model.open()?;
    for n in &ens.notes {
        log(n);
    }
    log(&ens.summary());
    let catalog = Catalog::new(&ens, opts.name.as_deref(), opts.model.tta)?;
    let metrics = Arc::new(Metrics::new()?);
    let batch = BatchConfig { max_batch: opts.model.batch_size, max_delay: opts.max_delay };
    let workers = opts.model.pipeline().workers;
    let prep = Arc::new(Prep::new(workers, ens.preprocesses.clone(), opts.model.tta.variants(), opts.max_image_pixels, opts.decode_budget));
    let batcher = Batcher::start(ens, batch, opts.max_queue, metrics.clone())?;
    let submitter = batcher.submitter().context("the inference thread has no channel")?;
    let state = Arc::new(AppState {
        catalog,
        prep,
        submitter,
        metrics,
        limits: Limits { max_body: opts.max_body, max_images: opts.max_images, max_queue: opts.max_queue, body_timeout: opts.body_timeout },
        batch,
        admission: Arc::new(Semaphore::new(opts.max_queue)),
        buffered: Arc::new(Semaphore::new(opts.max_buffered.div_ceil(1024))),
        stop: tokio::sync::watch::channel(false).0,
        log: opts.log_requests.then(|| log.clone()),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("serve-http")
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let listen = opts.listen.clone();
    let served = state.catalog.names().join(", ");
    let app = router(state.clone());
    let conn_limits = opts.conn;
    let grpc_listen = opts.grpc_listen.clone();
    let st = state.clone();
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr().context("cannot read the listening address")?;
        let grpc = match &grpc_listen {
            Some(a) => Some(grpc::bind(a, st.clone()).await?),
            None => None,
        };
        log(&format!("models: {served}"));
        if let Some(g) = &grpc {
            log(&format!("grpc listening on {}", g.addr));
        }
        log(&format!("listening on http://{addr}"));
        let http = conn::serve_http(listener, app, st.clone(), conn_limits);
        let grpc_served = async move {
            match grpc {
                Some(g) => g.serve(conn_limits).await,
                None => Ok(()),
            }
        };
        let stopping = st.clone();
        let told = async move {
            shutdown.await;
            log(&format!("shutting down: finishing {} image(s) in flight", stopping.metrics.in_flight.get()));
            stopping.stop.send_replace(true);
            tokio::time::sleep(GRACE).await;
            log(&format!("requests still open after {} s: closing them", GRACE.as_secs()));
        };
        tokio::select! {
            (_, g) = async { tokio::join!(http, grpc_served) } => g,
            _ = told => Ok(()),
        }
    });
    // Dropping the runtime ends the connection tasks; dropping the last state drops the last
    // submitter, so the inference thread finishes the queued jobs and stops.
    runtime.shutdown_timeout(Duration::from_secs(5));
    drop(state);
    batcher.join()?;
    result
}

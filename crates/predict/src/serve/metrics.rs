//! The server's Prometheus metrics, kept in one registry of the `prometheus` crate and exposed
//! by `GET /metrics` in the text exposition format (version 0.0.4): requests by route, method
//! and status, request latency, the size and duration of each inference batch, the images
//! waiting for the inference thread (queue depth) and in flight, images per second, open
//! connections and images dropped because their client left.
//!
//! Every label value comes from a closed set, never from the request's text: `route` is a
//! route template of the router (`unmatched` for the rest), `method` one of the standard HTTP
//! methods (`other` for any other), `status` the code the server itself answered, and gRPC's
//! `method` one of the service's methods (`unknown` for the rest) — so no client can grow the
//! number of series.
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use prometheus::{exponential_buckets, Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// The window over which `sorbier_images_per_second` is averaged.
const RATE_WINDOW: Duration = Duration::from_secs(10);

pub struct Metrics {
    registry: Registry,
    /// `sorbier_http_requests_total{route, method, status}`.
    requests: IntCounterVec,
    /// `sorbier_http_request_duration_seconds{route}`: from the request head to the response head.
    latency: HistogramVec,
    /// `sorbier_batch_size`: images in each batch the models ran.
    batch_size: Histogram,
    /// `sorbier_batch_duration_seconds`: inference time of each batch (every member, every TTA variant).
    batch_seconds: Histogram,
    /// `sorbier_queue_depth`: images submitted to the inference thread and not yet in a batch.
    pub queue_depth: IntGauge,
    /// `sorbier_images_in_flight`: images admitted and not yet answered (decoding, queued or
    /// in inference); `--max-queue` bounds it.
    pub in_flight: IntGauge,
    /// `sorbier_images_total`: images run through the models.
    images: IntCounter,
    /// `sorbier_images_per_second`: over the last 10 s (set when /metrics is read).
    images_per_s: Gauge,
    /// `sorbier_open_connections`: HTTP connections open now (bounded by --max-connections).
    pub connections: IntGauge,
    /// `sorbier_cancelled_images_total`: images admitted whose client left before the answer
    /// (the work not yet started for them is skipped).
    pub cancelled: IntCounter,
    /// `sorbier_grpc_requests_total{method, code}`.
    grpc: IntCounterVec,
    recent: Mutex<Recent>,
}

/// The label for an HTTP method: its name for the standard ones, `other` for the rest.
pub fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    for known in [Method::GET, Method::POST, Method::HEAD, Method::PUT, Method::DELETE, Method::OPTIONS, Method::PATCH, Method::TRACE, Method::CONNECT] {
        if *m == known {
            return match known {
                Method::GET => "GET",
                Method::POST => "POST",
                Method::HEAD => "HEAD",
                Method::PUT => "PUT",
                Method::DELETE => "DELETE",
                Method::OPTIONS => "OPTIONS",
                Method::PATCH => "PATCH",
                Method::TRACE => "TRACE",
                _ => "CONNECT",
            };
        }
    }
    "other"
}

/// Images inferred in the last [`RATE_WINDOW`], batch by batch.
struct Recent {
    start: Instant,
    batches: VecDeque<(Instant, usize)>,
}

impl Recent {
    fn prune(&mut self, now: Instant) {
        while self.batches.front().is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW) {
            self.batches.pop_front();
        }
    }
}

impl Metrics {
    pub fn new() -> Result<Metrics> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(Opts::new("sorbier_http_requests_total", "HTTP requests by route, method and status"), &["route", "method", "status"])?;
        let latency = HistogramVec::new(
            HistogramOpts::new("sorbier_http_request_duration_seconds", "HTTP request latency, request head to response head").buckets(exponential_buckets(0.001, 2.0, 15)?),
            &["route"],
        )?;
        let batch_size = Histogram::with_opts(HistogramOpts::new("sorbier_batch_size", "Images per inference batch").buckets(exponential_buckets(1.0, 2.0, 10)?))?;
        let batch_seconds = Histogram::with_opts(
            HistogramOpts::new("sorbier_batch_duration_seconds", "Inference time per batch (every member and TTA variant)").buckets(exponential_buckets(0.001, 2.0, 14)?),
        )?;
        let queue_depth = IntGauge::new("sorbier_queue_depth", "Images waiting for the inference thread")?;
        let in_flight = IntGauge::new("sorbier_images_in_flight", "Images admitted and not yet answered (bounded by --max-queue)")?;
        let images = IntCounter::new("sorbier_images_total", "Images run through the models")?;
        let images_per_s = Gauge::new("sorbier_images_per_second", "Images run through the models per second, over the last 10 s")?;
        let connections = IntGauge::new("sorbier_open_connections", "HTTP connections open (bounded by --max-connections)")?;
        let cancelled = IntCounter::new("sorbier_cancelled_images_total", "Images admitted whose client left before the answer (work not started for them is skipped)")?;
        let grpc = IntCounterVec::new(Opts::new("sorbier_grpc_requests_total", "gRPC requests by method and status code"), &["method", "code"])?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(cancelled.clone()))?;
        registry.register(Box::new(grpc.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(batch_seconds.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(images.clone()))?;
        registry.register(Box::new(images_per_s.clone()))?;
        let recent = Mutex::new(Recent { start: Instant::now(), batches: VecDeque::new() });
        Ok(Metrics { registry, requests, latency, batch_size, batch_seconds, queue_depth, in_flight, images, images_per_s, connections, cancelled, grpc, recent })
    }

    /// Counts one answered request.
    pub fn request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.requests.with_label_values(&[route, method, &status.to_string()]).inc();
        self.latency.with_label_values(&[route]).observe(seconds);
    }

    /// Counts one gRPC request; `method` must be one of the service's method names.
    pub fn grpc_request(&self, method: &'static str, code: &'static str, seconds: f64) {
        self.grpc.with_label_values(&[method, code]).inc();
        self.latency.with_label_values(&[method]).observe(seconds);
    }

    /// Counts one inference batch of `images` that took `took`.
    pub fn batch(&self, images: usize, took: Duration) {
        self.batch_size.observe(images as f64);
        self.batch_seconds.observe(took.as_secs_f64());
        self.images.inc_by(images as u64);
        if let Ok(mut r) = self.recent.lock() {
            let now = Instant::now();
            r.batches.push_back((now, images));
            r.prune(now);
        }
    }

    /// Images per second over the last [`RATE_WINDOW`] (or since start, when shorter).
    fn rate(&self) -> f64 {
        let Ok(mut r) = self.recent.lock() else { return 0.0 };
        let now = Instant::now();
        r.prune(now);
        let span = now.duration_since(r.start).min(RATE_WINDOW).as_secs_f64();
        let n: usize = r.batches.iter().map(|b| b.1).sum();
        if span > 0.0 { n as f64 / span } else { 0.0 }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Result<String> {
        self.images_per_s.set(self.rate());
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).context("cannot encode the metrics")?;
        String::from_utf8(out).context("the metrics are not UTF-8")
    }
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_in_the_text_format() {
        let m = Metrics::new().unwrap();
        m.request("/v1/identify", "POST", 200, 0.012);
        m.request("/v1/identify", "POST", 400, 0.001);
        m.request("/v1/identify", "POST", 200, 0.020);
        m.batch(3, Duration::from_millis(8));
        m.queue_depth.set(2);
        let text = m.render().unwrap();
        assert!(text.contains(r#"sorbier_http_requests_total{method="POST",route="/v1/identify",status="200"} 2"#), "{text}");
        assert!(text.contains(r#"sorbier_http_requests_total{method="POST",route="/v1/identify",status="400"} 1"#), "{text}");
        assert!(text.contains(r#"sorbier_http_request_duration_seconds_count{route="/v1/identify"} 3"#), "{text}");
        assert!(text.contains("sorbier_batch_size_sum 3") && text.contains("sorbier_batch_size_count 1"), "{text}");
        assert!(text.contains("sorbier_images_total 3") && text.contains("sorbier_queue_depth 2"), "{text}");
        assert_eq!(method_label(&axum::http::Method::POST), "POST");
        assert_eq!(method_label(&axum::http::Method::from_bytes(b"XYZZY").unwrap()), "other");
        let long = "M".repeat(60_000);
        assert_eq!(method_label(&axum::http::Method::from_bytes(long.as_bytes()).unwrap()), "other");
        let rate: f64 = text.lines().find_map(|l| l.strip_prefix("sorbier_images_per_second ")).unwrap().parse().unwrap();
        assert!(rate > 0.0, "{text}");
    }
}

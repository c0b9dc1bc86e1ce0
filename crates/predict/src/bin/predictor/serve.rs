//! `predictor serve`: its arguments (the doc comments are the `--help` text); the server is
//! [`sorbier_predict::serve`].
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use sorbier_predict::serve::{self, ConnLimits, ServeOptions};

use crate::cli::ModelArgs;

#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    /// The models, how they are combined and run, exactly as `predict` takes them.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Name of the served model [default: the file stem; `ensemble` for several models].
    #[arg(long)]
    pub name: Option<String>,
    /// Address to listen on (port 0: any free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: String,
    /// The longest an image waits for others to fill its batch, in milliseconds.
    #[arg(long, default_value_t = 5)]
    pub max_delay_ms: u64,
    /// The most images admitted at once (decoding, queued or in inference); beyond, 503 with Retry-After.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// The largest request body, in MiB (413 beyond).
    #[arg(long, default_value_t = 32)]
    pub max_body_mb: usize,
    /// The most photos in one /v1/identify request.
    #[arg(long, default_value_t = 8)]
    pub max_images: usize,
    /// Images whose header claims more pixels are refused (400) before decoding [default: Pillow's limit].
    #[arg(long, default_value_t = sorbier::transforms::DEFAULT_MAX_PIXELS)]
    pub max_image_pixels: u64,
    /// Decoding memory across all workers, in MiB (decoder output and RGB copies, estimated from each image's header); an image needing more alone gets 413.
    #[arg(long, default_value_t = 1024)]
    pub decode_budget_mb: usize,
    /// Request body bytes held in memory at once across all connections, in MiB; beyond, 503 with Retry-After.
    #[arg(long, default_value_t = 256)]
    pub max_buffered_mb: usize,
    /// The most open HTTP connections; further clients wait in the accept queue.
    #[arg(long, default_value_t = 256)]
    pub max_connections: usize,
    /// Seconds a client has to send a complete request head, from connecting or from the previous answer.
    #[arg(long, default_value_t = 10.0)]
    pub header_timeout_s: f64,
    /// Seconds a client has to send a request body (408 beyond).
    #[arg(long, default_value_t = 30.0)]
    pub body_timeout_s: f64,
    /// Seconds a keep-alive connection may stay idle (no request, no byte) before it is closed.
    #[arg(long, default_value_t = 30.0)]
    pub idle_timeout_s: f64,
    /// Also serve the Open Inference Protocol over gRPC (KServe v2 `inference.GRPCInferenceService`) on this address (`host:port`; port 0: any free port).
    #[arg(long)]
    pub grpc_listen: Option<String>,
}

/// Seconds as a duration (a negative or non-finite value becomes 0, which the server refuses).
fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::ZERO)
}

impl ServeArgs {
    pub fn options(&self) -> ServeOptions {
        ServeOptions {
            model: self.model.options(),
            name: self.name.clone(),
            listen: self.listen.clone(),
            max_delay: Duration::from_millis(self.max_delay_ms),
            max_queue: self.max_queue,
            max_body: self.max_body_mb.saturating_mul(1 << 20),
            max_images: self.max_images,
            max_image_pixels: self.max_image_pixels,
            decode_budget: self.decode_budget_mb.saturating_mul(1 << 20),
            max_buffered: self.max_buffered_mb.saturating_mul(1 << 20),
            conn: ConnLimits { max_connections: self.max_connections, header_timeout: seconds(self.header_timeout_s), idle_timeout: seconds(self.idle_timeout_s) },
            body_timeout: seconds(self.body_timeout_s),
            grpc_listen: self.grpc_listen.clone(),
            log_requests: !self.model.quiet,
        }
    }
}

pub fn serve(args: &ServeArgs) -> Result<()> {
    // A log line that cannot be written (stderr closed) is dropped; the server goes on.
    let log = |line: &str| {
        use std::io::Write;
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    };
    serve::run(&args.options(), Arc::new(log), serve::shutdown_signal())
}

//! `predictor serve`: its arguments (the doc comments are the `--help` text); the server is
//! [`sorbier_predict::serve`].
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use sorbier_predict::serve::{self, ServeOptions};

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

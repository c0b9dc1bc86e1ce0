//! Load benchmark of `predictor serve` on loopback, beside the batch predictor, in one run:
//! - batch: the predictor's pipeline over the same photos (`predictor predict`'s images/s) and
//!   one forward pass of one image (the floor of a single request's latency);
//! - one client: sequential `POST /v1/identify` requests (raw JPEG bodies), latency;
//! - N clients: concurrent requests for a fixed time (and at most a fixed number of requests),
//!   throughput, p50/p95/p99 latency, mean dynamic-batch size (from `/metrics`), errors, and
//!   the server's peak RSS — with photos (`/v1/identify`, decoded by the server), and with
//!   preprocessed tensors over the Open Inference Protocol, HTTP (binary tensors) beside gRPC
//!   (`ModelInfer`, raw contents), one image a request, the same N clients; each load runs
//!   `--rounds` times, the three interleaved, and its row sums the rounds.
//!
//! The model has seeded random weights (speed does not depend on them). Everything stops by
//! itself; only 127.0.0.1 is used.
//!
//! `cargo run --release -p sorbier-predict --example bench_serve -- --help` lists the options
//! and their defaults (tools/bench-serve.sh builds the release predictor and runs it).
fn main() -> anyhow::Result<()> {
    bench::main()
}

#[path = "common/mod.rs"]
mod common;
#[path = "../tests/common/server.rs"]
mod server;

mod bench {
    use std::path::PathBuf;
    use std::process::Command;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use anyhow::{bail, Context, Result};
    use clap::Parser;
    use ndarray::Array4;
    use sorbier::arch::Arch;
    use sorbier::cli::spelled;
    use sorbier::transforms::Preprocess;
    use sorbier_predict::engine::ensemble::{Average, Ensemble};
    use sorbier_predict::engine::pipeline::PipelineConfig;
    use sorbier_predict::engine::runtime::{Device, Runtime};

    use super::common;
    use super::server::Server;

    /// Load benchmark of `predictor serve` on loopback, beside the batch predictor.
    #[derive(Parser)]
    struct Opts {
        /// The photos the clients send (a flat folder).
        #[arg(long, default_value_os_t = common::root().join("../shared/data/flowers/test"))]
        images: PathBuf,
        /// The network (seeded random weights).
        #[arg(long, value_parser = spelled::<Arch>(), default_value_t = Arch::Resnet18)]
        arch: Arch,
        #[arg(long, default_value_t = 224)]
        size: u32,
        /// Concurrent clients in the loaded runs.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Length of each loaded run.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Rounds of the loaded runs (photos, HTTP tensors, gRPC tensors interleaved).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// At most this many requests in each loaded run.
        #[arg(long, default_value_t = 20_000)]
        max_requests: usize,
        /// Sequential requests of the one-client run.
        #[arg(long, default_value_t = 40)]
        single: usize,
        /// The server's --max-batch and the batch predictor's batch size.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        #[arg(long, default_value_t = 5)]
        max_delay_ms: u64,
        /// ONNX Runtime threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Decoding workers.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// At most this many photos (0: all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
        /// Where the random-weight models are cached.
        #[arg(long, default_value_os_t = common::root().join("target/bench-predict"))]
        models: PathBuf,
        /// The predictor to serve with.
        #[arg(long, default_value_os_t = common::root().join("target/release/predictor"))]
        exe: PathBuf,
    }

    /// One request: its latency, or why it failed.
    fn identify(agent: &ureq::Agent, url: &str, photo: &[u8]) -> std::result::Result<Duration, String> {
        let t = Instant::now();
        match agent.post(url).header("content-type", "image/jpeg").send(photo) {
            Ok(mut r) => {
                let status = r.status().as_u16();
                let body = r.body_mut().read_to_string().unwrap_or_default();
                if status == 200 && body.contains("\"results\"") {
                    Ok(t.elapsed())
                } else {
                    Err(format!("status {status}: {body}"))
                }
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// One image's tensor through the Open Inference Protocol over HTTP, binary both ways.
    fn infer_http(agent: &ureq::Agent, url: &str, x: &[f32], size: u32) -> std::result::Result<Duration, String> {
        let t = Instant::now();
        let head = serde_json::json!({
            "inputs": [{ "name": "input", "shape": [1, 3, size, size], "datatype": "FP32", "parameters": { "binary_data_size": x.len() * 4 } }],
            "parameters": { "binary_data_output": true },
        });
        let mut body = serde_json::to_vec(&head).map_err(|e| e.to_string())?;
        let len = body.len().to_string();
        body.extend(x.iter().flat_map(|v| v.to_le_bytes()));
        match agent.post(url).header("content-type", "application/octet-stream").header("inference-header-content-length", &len).send(&body[..]) {
            Ok(mut r) if r.status() == 200 => {
                r.body_mut().read_to_vec().map_err(|e| e.to_string())?;
                Ok(t.elapsed())
            }
            Ok(mut r) => Err(format!("status {}: {}", r.status(), r.body_mut().read_to_string().unwrap_or_default())),
            Err(e) => Err(e.to_string()),
        }
    }

    type GrpcClient = sorbier_predict::serve::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient<tonic::transport::Channel>;

    /// One gRPC connection per client, driven from a small tokio runtime.
    struct GrpcClients {
        runtime: tokio::runtime::Runtime,
        clients: Vec<GrpcClient>,
        model: String,
    }

    impl GrpcClients {
        fn new(url: &str, n: usize, model: &std::path::Path) -> Result<GrpcClients> {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            let clients = runtime.block_on(async {
                let mut v = Vec::new();
                for _ in 0..n {
                    let channel = tonic::transport::Endpoint::from_shared(url.to_string())?.connect().await?;
                    v.push(GrpcClient::new(channel).max_decoding_message_size(64 << 20));
                }
                anyhow::Ok(v)
            })?;
            Ok(GrpcClients { runtime, clients, model: model.file_stem().map_or_else(String::new, |s| s.to_string_lossy().into_owned()) })
        }

        /// One image's tensor through `ModelInfer`, raw contents both ways (on client `i % n`).
        fn infer(&self, i: usize, x: &[f32], size: u32) -> std::result::Result<Duration, String> {
            use sorbier_predict::serve::grpc::pb::{model_infer_request::InferInputTensor, ModelInferRequest};
            let t = Instant::now();
            let req = ModelInferRequest {
                model_name: self.model.clone(),
                inputs: vec![InferInputTensor { name: "input".into(), datatype: "FP32".into(), shape: vec![1, 3, i64::from(size), i64::from(size)], ..Default::default() }],
                raw_input_contents: vec![x.iter().flat_map(|v| v.to_le_bytes()).collect()],
                ..Default::default()
            };
            let mut client = self.clients[i % self.clients.len()].clone();
            let r = self.runtime.block_on(client.model_infer(req)).map_err(|e| e.to_string())?;
            if r.get_ref().raw_output_contents.len() != 1 {
                return Err(format!("{} raw outputs", r.get_ref().raw_output_contents.len()));
            }
            Ok(t.elapsed())
        }
    }

    fn percentile(sorted: &[Duration], p: f64) -> f64 {
        if sorted.is_empty() {
            return f64::NAN;
        }
        let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[i].as_secs_f64() * 1e3
    }

    /// The batch predictor on the photos (images/s), one image's forward pass and one photo's
    /// decode + transform (medians, ms); also the decoded batches, whose tensors the tensor
    /// clients send.
    fn batch_figures(o: &Opts, model: &std::path::Path, paths: &Arc<[PathBuf]>, photos: &[Vec<u8>]) -> Result<(Vec<Array4<f32>>, f64, f64, f64)> {
        // The batch predictor on the same photos, and one image's forward pass.
        let rt = Runtime::load(None)?;
        let pre = Preprocess::for_crop(o.size);
        let cfg = PipelineConfig { batch_size: o.batch, workers: o.workers, prefetch: 2 };
        let batches = common::decode(paths, &pre, &cfg)?;
        let (_, out) = common::throughput(&rt, model, Device::Cpu, o.threads, &batches, paths, &cfg)?;
        let batch_rate = out.images_per_s;
        let forward_ms = {
            let mut ens = Ensemble::open(&rt, &[model.to_path_buf()], None, Average::Logits, Device::Cpu, o.threads)?;
            let c = ens.classes.len();
            let one: Array4<f32> = batches[0].slice(ndarray::s![0..1, .., .., ..]).to_owned();
            ens.members[0].forward(one.view(), c)?;
            let mut t: Vec<Duration> = (0..10)
                .map(|_| {
                    let s = Instant::now();
                    ens.members[0].forward(one.view(), c).map(|_| s.elapsed())
                })
                .collect::<Result<_>>()?;
            t.sort();
            percentile(&t, 0.5)
        };
        drop(rt);
        // Decoding and transforming one photo (the rest of a lone request's work), median over
        // the photos the clients send.
        let prep_ms = {
            let mut t: Vec<Duration> = photos
                .iter()
                .take(40)
                .map(|bytes| {
                    let s = Instant::now();
                    let img = sorbier::transforms::decode_rgb(bytes, "photo")?;
                    let mut x = vec![0.0; sorbier::transforms::eval_tensor_len(&pre)];
                    sorbier::transforms::eval_into(&img, &pre, &mut x)?;
                    Ok(s.elapsed())
                })
                .collect::<Result<_>>()?;
            t.sort();
            percentile(&t, 0.5)
        };

        Ok((batches, batch_rate, forward_ms, prep_ms))
    }

    /// Runs `send(i)` from `o.clients` threads for `o.seconds` (at most `o.max_requests` in all):
    /// the latencies (sorted), the errors, and the seconds it took.
    fn load(o: &Opts, send: &(dyn Fn(usize) -> std::result::Result<Duration, String> + Sync)) -> Run {
        let next = AtomicUsize::new(0);
        let deadline = Instant::now() + Duration::from_secs_f64(o.seconds);
        let t = Instant::now();
        let results: Vec<(Vec<Duration>, Vec<String>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..o.clients)
                .map(|_| {
                    let next = &next;
                    scope.spawn(move || {
                        let (mut ok, mut errors) = (Vec::new(), Vec::new());
                        while Instant::now() < deadline {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= o.max_requests {
                                break;
                            }
                            match send(i) {
                                Ok(d) => ok.push(d),
                                Err(e) => errors.push(e),
                            }
                        }
                        (ok, errors)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("client thread panicked")).collect()
        });
        let elapsed = t.elapsed().as_secs_f64();
        let mut lat: Vec<Duration> = results.iter().flat_map(|(ok, _)| ok.iter().copied()).collect();
        lat.sort();
        (lat, results.into_iter().flat_map(|(_, e)| e).collect(), elapsed)
    }

    #[derive(Clone, Copy)]
    struct Figures {
        batch_rate: f64,
        forward_ms: f64,
        prep_ms: f64,
        rss: f64,
    }

    type Run = (Vec<Duration>, Vec<String>, f64);

    /// The rounds of one load as one run: every latency (sorted) and error, the seconds summed.
    fn summed(runs: Vec<Run>) -> Run {
        let mut all: Run = (Vec::new(), Vec::new(), 0.0);
        for (lat, errors, secs) in runs {
            all.0.extend(lat);
            all.1.extend(errors);
            all.2 += secs;
        }
        all.0.sort();
        all
    }

    /// The table: one client's latency, then each loaded run (name, run, mean batch).
    fn print_table(f: &Figures, single: &[Duration], single_errors: usize, runs: &[(String, &Run, String)]) {
        let Figures { batch_rate, forward_ms, prep_ms, rss } = *f;
        println!(
            "batch predictor (same photos, same threads): {batch_rate:.1} img/s; one image: forward pass {forward_ms:.1} ms, decode + transform {prep_ms:.1} ms"
        );
        println!(
            "{:<26} {:>9} {:>10} {:>9} {:>9} {:>9} {:>10} {:>7} {:>9} {:>10}",
            "load", "requests", "img/s", "p50 ms", "p95 ms", "p99 ms", "mean batch", "errors", "RSS MiB", "vs batch"
        );
        println!(
            "{:<26} {:>9} {:>10.1} {:>9.1} {:>9.1} {:>9.1} {:>10} {:>7} {:>9} {:>10}",
            "1 client, photos",
            single.len(),
            single.len() as f64 / single.iter().map(Duration::as_secs_f64).sum::<f64>(),
            percentile(single, 0.5),
            percentile(single, 0.95),
            percentile(single, 0.99),
            "-",
            single_errors,
            "-",
            format!("{:.2}× fwd+prep", percentile(single, 0.5) / (forward_ms + prep_ms))
        );
        let row = |what: String, (lat, errors, elapsed): &Run, batch: String| {
            let rate = lat.len() as f64 / elapsed;
            println!(
                "{:<26} {:>9} {:>10.1} {:>9.1} {:>9.1} {:>9.1} {:>10} {:>7} {:>9.0} {:>10.2}",
                what,
                lat.len(),
                rate,
                percentile(lat, 0.5),
                percentile(lat, 0.95),
                percentile(lat, 0.99),
                batch,
                errors.len(),
                rss,
                rate / batch_rate
            );
            if let Some(e) = errors.first() {
                println!("  first error: {e}");
            }
        };
        for (what, run, batch) in runs {
            row(what.clone(), run, batch.clone());
        }
    }

    pub fn main() -> Result<()> {
        let o = Opts::parse();
        if o.clients == 0 || o.seconds.is_nan() || o.seconds <= 0.0 || o.max_requests == 0 || o.rounds == 0 {
            bail!("--clients, --seconds, --max-requests and --rounds must be positive");
        }
        let exe = o.exe.clone();
        if !exe.exists() {
            bail!("{} is missing: build it with `cargo build --release --bin predictor` (tools/bench-serve.sh does)", exe.display());
        }
        let names = common::images(&o.images, o.limit)?;
        if names.is_empty() {
            bail!("no images in {}", o.images.display());
        }
        let photos: Arc<Vec<Vec<u8>>> = Arc::new(names.iter().map(std::fs::read).collect::<std::io::Result<_>>()?);
        let n = names.len();
        let paths: Arc<[PathBuf]> = names.into();
        let model = common::random_model(&o.models, o.arch, o.size)?;
        let cpus = sorbier::data::pool::default_threads();
        println!(
            "{n} photos from {}, {} {}px, batch ≤ {}, delay ≤ {} ms, {} ORT threads, {} workers, cpu, {cpus} cores",
            o.images.display(),
            o.arch.name(),
            o.size,
            o.batch,
            o.max_delay_ms,
            o.threads,
            o.workers
        );

        let (batches, batch_rate, forward_ms, prep_ms) = batch_figures(&o, &model, &paths, &photos)?;

        let mut cmd = Command::new(&exe);
        cmd.arg("serve").args(["--model", &model.display().to_string(), "--device", "cpu", "--quiet"]);
        cmd.args(["--threads", &o.threads.to_string(), "--workers", &o.workers.to_string()]);
        cmd.args(["--max-batch", &o.batch.to_string(), "--max-delay-ms", &o.max_delay_ms.to_string()]);
        cmd.args(["--max-queue", &(o.clients * 4).max(256).to_string()]);
        cmd.args(["--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"]);
        let server = Server::try_spawn(cmd)?;
        let url = format!("{}/v1/identify?top_k=5", server.base);
        let agent = super::server::agent();

        // One client: sequential requests after a short warm-up.
        for p in photos.iter().take(3) {
            identify(&agent, &url, p).map_err(anyhow::Error::msg).context("warm-up request failed")?;
        }
        let mut single: Vec<Duration> = Vec::new();
        let mut single_errors = 0;
        for i in 0..o.single {
            match identify(&agent, &url, &photos[i % n]) {
                Ok(d) => single.push(d),
                Err(_) => single_errors += 1,
            }
        }
        single.sort();

        // Each load runs `--rounds` times, the three kinds interleaved and their order rotated
        // every round, so that a drift of the machine touches them alike; a row sums its rounds.
        let batch_sizes = || server.histogram("sorbier_batch_size").context("no sorbier_batch_size histogram in /metrics");
        let tensors: Vec<Vec<f32>> = (0..n.min(64)).map(|i| batches[i / o.batch].slice(ndarray::s![i % o.batch, .., .., ..]).iter().copied().collect()).collect();
        let infer_url = format!("{}/v2/models/{}/infer", server.base, model.file_stem().map_or_else(String::new, |s| s.to_string_lossy().into_owned()));
        let grpc_url = server.grpc.clone().context("the server did not announce its gRPC listener")?;
        let grpc = GrpcClients::new(&grpc_url, o.clients, &model)?;
        let mut rounds: [Vec<Run>; 3] = Default::default();
        let (mut batch_sum, mut batch_count) = (0.0, 0.0);
        for round in 0..o.rounds {
            for k in 0..3 {
                let kind = (k + round) % 3;
                let run = match kind {
                    0 => {
                        let (sum0, count0) = batch_sizes()?;
                        let run = load(&o, &|i| identify(&agent, &url, &photos[i % n]));
                        let (sum1, count1) = batch_sizes()?;
                        (batch_sum, batch_count) = (batch_sum + sum1 - sum0, batch_count + count1 - count0);
                        run
                    }
                    1 => load(&o, &|i| infer_http(&agent, &infer_url, &tensors[i % tensors.len()], o.size)),
                    _ => load(&o, &|i| grpc.infer(i, &tensors[i % tensors.len()], o.size)),
                };
                rounds[kind].push(run);
            }
        }
        let [photos_run, http_run, grpc_run] = rounds.map(summed);
        let rss = server.peak_rss_kib()? as f64 / 1024.0;
        let status = server.stop();
        let mean_batch = if batch_count > 0.0 { batch_sum / batch_count } else { f64::NAN };

        let figures = Figures { batch_rate, forward_ms, prep_ms, rss };
        let runs = [
            (format!("{} clients, photos", o.clients), &photos_run, format!("{mean_batch:.1}")),
            (format!("{} clients, tensors HTTP", o.clients), &http_run, "-".to_string()),
            (format!("{} clients, tensors gRPC", o.clients), &grpc_run, "-".to_string()),
        ];
        print_table(&figures, &single, single_errors, &runs);
        if !status.success() {
            bail!("the server exited with {status} after SIGTERM");
        }
        Ok(())
    }
}

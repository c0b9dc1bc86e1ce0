//! `predictor serve` against hostile clients, on loopback: requests that declare more than
//! they carry, non-finite numbers and weights, decoding-memory hogs, label floods, slow and
//! stalled connections, clients that hang up after sending, a stop during a stalled upload, and
//! a property test throwing generated requests at a live server. Every count and wait here is
//! bounded; latencies are printed, and asserted only generously (the machines are shared).
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sorbier::transforms::{eval_into, eval_tensor_len, load_rgb, Preprocess};

mod common;
use common::*;
#[path = "common/server.rs"]
mod server;
use server::{multipart, Server};

const SERVE_FAST: [&str; 6] = ["--device", "cpu", "--threads", "1", "--workers", "1"];

fn start(extra: &[&str]) -> Server {
    let f = fixtures();
    let mut args = vec!["--model", s(&f.a)];
    args.extend(SERVE_FAST);
    args.extend(extra);
    Server::start(&args)
}

fn addr(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_string()
}

/// A raw connection to the server (reads time out after `read_timeout`).
fn connect(server: &Server, read_timeout: Duration) -> TcpStream {
    let s = TcpStream::connect(addr(server)).unwrap();
    s.set_read_timeout(Some(read_timeout)).unwrap();
    s
}

/// Writes `bytes` (a whole request with `Connection: close`) and reads until the server closes.
fn exchange(server: &Server, bytes: &[u8]) -> (u16, String) {
    let mut s = connect(server, Duration::from_secs(60));
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

/// Waits (at most `limit`) until the server closes `s`, reading and dropping what it sends;
/// returns how long that took, or `None` if it stayed open.
fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

/// The model's input tensor for flowers test photo `name`.
fn tensor(name: &str) -> Vec<f32> {
    let pre = Preprocess::for_crop(64);
    let img = load_rgb(&flowers().join("test").join(name)).unwrap();
    let mut t = vec![0.0; eval_tensor_len(&pre)];
    eval_into(&img, &pre, &mut t).unwrap();
    t
}

/// A binary-tensor infer: the JSON `head`, then `tail`; the header length is the JSON's
/// unless `header_len` says otherwise.
fn post_binary(server: &Server, head: &Value, tail: &[u8], header_len: Option<&str>) -> server::Resp {
    let mut body = serde_json::to_vec(head).unwrap();
    let len = body.len().to_string();
    body.extend_from_slice(tail);
    let headers = [("content-type", "application/octet-stream"), ("inference-header-content-length", header_len.unwrap_or(&len))];
    server.post_with("/v2/models/a64/infer", &headers, &body)
}

/// A PNG of `w × h` 16-bit RGBA pixels (all zero: it compresses to almost nothing).
fn png16(w: u32, h: u32) -> Vec<u8> {
    let img = image::ImageBuffer::<image::Rgba<u16>, Vec<u16>>::new(w, h);
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn hostile_requests_are_refused_before_anything_is_allocated() {
    let server = start(&["--decode-budget-mb", "16"]);
    let good = photo("t0000.jpg");
    let baseline = server.identify(&good, "").json()["results"].clone();
    let rss_before = server.peak_rss_kib().unwrap();
    let x = tensor("t0000.jpg");
    let nan: Vec<u8> = x.iter().enumerate().flat_map(|(i, v)| if i == 777 { f32::NAN } else { *v }.to_le_bytes()).collect();
    let inf: Vec<u8> = x.iter().enumerate().flat_map(|(i, v)| if i == 5 { f32::INFINITY } else { *v }.to_le_bytes()).collect();
    let head = |n: i64, size: u64| json!({ "inputs": [{ "name": "input", "shape": [n, 3, 64, 64], "datatype": "FP32", "parameters": { "binary_data_size": size } }] });
    let big_png = png16(1500, 1500);
    let (two_ct, two) = multipart(&[("images", Some("a.jpg"), &good), ("images", Some("b.jpg"), &good), ("weights", None, b"1e308,1e308")]);
    let infer = |body: &str| server.post("/v2/models/a64/infer", "application/json", body.as_bytes());
    type Case<'a> = (&'a str, Box<dyn Fn() -> server::Resp + 'a>, u16, &'a str);
    let cases: Vec<Case> = vec![
        // The 120-byte request that used to abort the process (15 TB allocation).
        ("the 120-byte abort", Box::new(|| infer(r#"{"inputs":[{"name":"input","shape":[100000000,3,112,112],"datatype":"FP32","data":[0]}]}"#)), 400, "has shape [100000000, 3, 112, 112]"),
        ("a huge batch with one value", Box::new(|| infer(r#"{"inputs":[{"name":"input","shape":[100000000,3,64,64],"datatype":"FP32","data":[0]}]}"#)), 400, "has 1 values; shape [100000000, 3, 64, 64] needs 1228800000000"),
        ("an overflowing shape", Box::new(|| infer(r#"{"inputs":[{"name":"input","shape":[9223372036854775807,3,64,64],"datatype":"FP32","data":[0]}]}"#)), 400, "more elements than this machine can count"),
        ("a batch beyond the queue, fully sent", Box::new(|| post_binary(&server, &head(300, 300 * 12288 * 4), &vec![0u8; 300 * 12288 * 4], None)), 413, "300 images in one request"),
        ("binary_data_size beyond the body", Box::new(|| post_binary(&server, &head(1, u64::MAX), &[0u8; 16], None)), 400, "binary_data_size is 18446744073709551615 bytes"),
        ("binary_data_size short of the shape", Box::new(|| post_binary(&server, &head(2, 12288 * 4), &nan[..], None)), 400, "needs 98304"),
        ("a header length past the body", Box::new(|| post_binary(&server, &head(1, 12288 * 4), &nan, Some("99999999999999999999"))), 400, "inference-header-content-length"),
        ("NaN in a binary tensor", Box::new(|| post_binary(&server, &head(1, 12288 * 4), &nan, None)), 400, "not a finite float32 (NaN) at element 777"),
        ("inf in a binary tensor", Box::new(|| post_binary(&server, &head(1, 12288 * 4), &inf, None)), 400, "at element 5"),
        ("a JSON number beyond float32", Box::new(|| infer(&json!({ "inputs": [{ "name": "input", "shape": [1, 3, 64, 64], "datatype": "FP32", "data": x.iter().enumerate().map(|(i, v)| if i == 9 { json!(1e39) } else { json!(v) }).collect::<Vec<_>>() }] }).to_string())), 400, "at element 9"),
        ("a JSON number beyond f64", Box::new(|| infer(r#"{"inputs":[{"name":"input","shape":[1,3,64,64],"datatype":"FP32","data":[1e400]}]}"#)), 400, "malformed inference request JSON"),
        ("strings as data", Box::new(|| infer(r#"{"inputs":[{"name":"input","shape":[1,3,64,64],"datatype":"FP32","data":["a"]}]}"#)), 400, "numbers"),
        ("weights whose sum overflows", Box::new(|| server.post("/v1/identify", &two_ct, &two)), 400, "add up to more than a float can hold"),
        ("a NaN weight", Box::new(|| server.identify(&good, "?weights=NaN")), 400, "positive numbers"),
        ("an infinite weight", Box::new(|| server.identify(&good, "?weights=inf")), 400, "positive numbers"),
        ("a photo beyond the decoding budget", Box::new(|| server.identify(&big_png, "")), 413, "decoding budget of 16 MiB"),
    ];
    for (what, send, status, needle) in &cases {
        let r = send();
        assert_eq!(r.status, *status, "{what}: {}", r.text());
        let msg = r.error();
        assert!(msg.contains(needle), "{what}: {msg:?} does not mention {needle:?}");
        assert_eq!(server.get("/v2/health/ready").status, 200, "not ready after {what}");
        let again = server.identify(&good, "");
        assert_eq!((again.status, &again.json()["results"]), (200, &baseline), "right after {what}");
    }
    // A photo within the budget decodes (the budget is not a blanket refusal).
    let small = png16(300, 300);
    assert_eq!(server.identify(&small, "").status, 200);

    // Methods nobody uses, one of 60,000 characters: one `other` series, a bounded log line.
    let long = "M".repeat(60_000);
    let mut methods: Vec<String> = (0..40).map(|i| format!("XM{i}Q")).collect();
    methods.push(long.clone());
    for m in &methods {
        let (status, _) = exchange(&server, format!("{m} /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes());
        assert!((400..500).contains(&status), "method {}…: status {status}", &m[..m.len().min(8)]);
    }
    let text = server.get("/metrics").text();
    assert!(!text.contains("XM1Q") && !text.contains("MMMMMMMM"), "a method became a label value");
    assert!(text.contains(r#"method="other""#), "{text}");
    assert!(text.len() < 64 << 10, "/metrics is {} bytes", text.len());
    assert!(server.log.lock().unwrap().iter().all(|l| l.len() < 1000), "a log line echoes the request");
    let grown = server.peak_rss_kib().unwrap().saturating_sub(rss_before);
    println!("peak RSS grew by {} MiB over the hostile requests", grown >> 10);
    assert!(grown < 256 << 10, "peak RSS grew by {grown} KiB");
    assert_eq!(server.metric("sorbier_images_in_flight"), Some(0.0));
    assert!(!server.log_text().contains("panicked"), "{}", server.log_text());
    drop(cases);
    assert!(server.stop().success());
}

/// `predict --weights` refuses weights whose sum overflows, as the server does.
#[test]
fn offline_predict_refuses_weights_that_cannot_average() {
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let (images, sample, _) = small_test_set(tmp.path(), 2);
    for (weights, needle) in [("1e308,1e308", "add up to more than a float can hold"), ("1,NaN", "positive numbers"), ("1,inf", "positive numbers")] {
        let o = predict_with(&[&f.a, &f.b], &images, &sample, &tmp.path().join("sub.csv"), &["--weights", weights]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(needle), "--weights {weights}: {err}");
    }
}

/// The next request line of a slow-header client, one byte at a time.
const SLOW_HEAD: &[u8] = b"POST /v1/identify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";

#[test]
fn slow_and_abusive_clients_are_bounded_in_count_and_time() {
    let server = start(&["--header-timeout-s", "1", "--idle-timeout-s", "1", "--body-timeout-s", "2", "--max-connections", "64", "--quiet"]);
    let good = photo("t0003.jpg");
    let timed = |f: &dyn Fn() -> u16| {
        let t = Instant::now();
        let status = f();
        (status, t.elapsed())
    };
    let p99 = |mut v: Vec<Duration>| {
        v.sort();
        v[((v.len() as f64 - 1.0) * 0.99).round() as usize]
    };
    let quiet: Vec<Duration> = (0..20).map(|_| timed(&|| server.identify(&good, "").status)).inspect(|(s, _)| assert_eq!(*s, 200)).map(|x| x.1).collect();
    let quiet_p99 = p99(quiet);

    const N: usize = 16;
    let (under_load, health, abusers) = std::thread::scope(|scope| {
        // N silent connections, N slow-header ones (a byte every 150 ms), N stalled bodies.
        let silent: Vec<_> = (0..N).map(|_| scope.spawn(|| closed_within(&mut connect(&server, Duration::from_secs(1)), Duration::from_secs(8)))).collect();
        let slow: Vec<_> = (0..N)
            .map(|_| {
                scope.spawn(|| {
                    let mut s = connect(&server, Duration::from_secs(1));
                    let start = Instant::now();
                    for b in SLOW_HEAD {
                        if s.write_all(&[*b]).is_err() || start.elapsed() > Duration::from_secs(8) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(150));
                    }
                    closed_within(&mut s, Duration::from_secs(8).saturating_sub(start.elapsed())).map(|_| start.elapsed())
                })
            })
            .collect();
        let stalled: Vec<_> = (0..N)
            .map(|_| {
                scope.spawn(|| {
                    let mut s = connect(&server, Duration::from_secs(1));
                    s.write_all(b"POST /v1/identify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n").unwrap();
                    s.write_all(&[0xFF; 100]).unwrap();
                    let start = Instant::now();
                    let mut out = Vec::new();
                    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
                    let _ = s.read_to_end(&mut out);
                    (String::from_utf8_lossy(&out).split(' ').nth(1).map(str::to_string), start.elapsed())
                })
            })
            .collect();
        // A flood of clients that hang up right after sending four photos.
        let (ct, form) = multipart(&[("images", Some("a.jpg"), &good), ("images", Some("b.jpg"), &good), ("images", Some("c.jpg"), &good), ("images", Some("d.jpg"), &good)]);
        let srv = &server;
        let flood = scope.spawn(move || {
            for _ in 0..40 {
                let mut s = connect(srv, Duration::from_secs(1));
                let head = format!("POST /v1/identify HTTP/1.1\r\nHost: x\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n", form.len());
                let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(&form));
            }
        });
        std::thread::sleep(Duration::from_millis(200));
        // The good client meanwhile.
        let mut lat = Vec::new();
        let mut health = Vec::new();
        for _ in 0..20 {
            let (status, d) = timed(&|| server.identify(&good, "").status);
            assert!(status == 200 || status == 503, "good client: status {status}");
            if status == 200 {
                lat.push(d);
            }
            let (status, h) = timed(&|| server.get("/v2/health/ready").status);
            assert_eq!(status, 200, "health under load");
            health.push(h);
        }
        flood.join().unwrap();
        let silent: Vec<Option<Duration>> = silent.into_iter().map(|h| h.join().unwrap()).collect();
        let slow: Vec<Option<Duration>> = slow.into_iter().map(|h| h.join().unwrap()).collect();
        let stalled: Vec<(Option<String>, Duration)> = stalled.into_iter().map(|h| h.join().unwrap()).collect();
        (lat, health, (silent, slow, stalled))
    });
    let (silent, slow, stalled) = abusers;
    let worst_health = health.iter().max().copied().unwrap_or_default();
    println!(
        "good client: quiet p99 {:.1} ms, under load p99 {:.1} ms ({} of 20 answered 200); health worst {:.1} ms",
        quiet_p99.as_secs_f64() * 1e3,
        under_load.iter().copied().max().unwrap_or_default().as_secs_f64() * 1e3,
        under_load.len(),
        worst_health.as_secs_f64() * 1e3
    );
    println!("silent closed after {:?}", silent.iter().flatten().max());
    println!("slow-header closed after {:?}", slow.iter().flatten().max());
    println!("stalled bodies answered {:?} after {:?}", stalled.iter().map(|s| s.0.clone()).collect::<std::collections::BTreeSet<_>>(), stalled.iter().map(|s| s.1).max());
    // Every abusive connection was closed by the server, within its timeout and some slack.
    assert!(silent.iter().all(|c| c.is_some_and(|d| d < Duration::from_secs(4))), "silent connections: {silent:?}");
    assert!(slow.iter().all(|c| c.is_some_and(|d| d < Duration::from_secs(5))), "slow-header connections: {slow:?}");
    assert!(stalled.iter().all(|(status, d)| status.as_deref() == Some("408") && *d < Duration::from_secs(6)), "stalled bodies: {stalled:?}");
    assert!(!under_load.is_empty(), "the good client was never served");
    assert!(worst_health < Duration::from_secs(2), "health took {worst_health:?}");
    // Afterwards nothing is left open or admitted.
    let start = Instant::now();
    while server.metric("sorbier_images_in_flight") != Some(0.0) || server.metric("sorbier_open_connections").unwrap() > 1.0 {
        assert!(start.elapsed() < Duration::from_secs(30), "in flight {:?}, connections {:?}", server.metric("sorbier_images_in_flight"), server.metric("sorbier_open_connections"));
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("images skipped because their client left: {:?}", server.metric("sorbier_cancelled_images_total"));
    assert!(server.stop().success());
}

/// Beyond `--max-connections`, new clients wait in the accept queue (nothing more is accepted)
/// and are served once a place frees up.
#[test]
fn connections_beyond_the_limit_wait_for_a_place() {
    let server = start(&["--max-connections", "3", "--header-timeout-s", "2", "--idle-timeout-s", "2"]);
    assert_eq!(server.get("/v2/health/live").status, 200);
    // ureq keeps its connection alive: let it time out so the three below hold every place.
    std::thread::sleep(Duration::from_millis(2500));
    let silent: Vec<TcpStream> = (0..3).map(|_| connect(&server, Duration::from_secs(1))).collect();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let (status, _) = exchange(&server, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let waited = t.elapsed();
    println!("a fourth client waited {waited:?} for one of 3 places");
    assert_eq!(status, 200);
    assert!(waited >= Duration::from_millis(1200) && waited < Duration::from_secs(10), "waited {waited:?}");
    drop(silent);
    assert!(server.stop().success());
}

/// Starts an 8-image-per-variant request that takes a while (D4 TTA) on another connection and
/// returns it once the server counts its images in flight.
fn raw_infer(server: &Server, n: usize, first: usize) -> TcpStream {
    let x: Vec<f32> = (first..first + n).flat_map(|i| tensor(&format!("t{i:04}.jpg"))).collect();
    let head = json!({ "inputs": [{ "name": "input", "shape": [n, 3, 64, 64], "datatype": "FP32", "parameters": { "binary_data_size": x.len() * 4 } }] });
    let mut body = serde_json::to_vec(&head).unwrap();
    let json_len = body.len();
    body.extend(x.iter().flat_map(|v| v.to_le_bytes()));
    let mut s = connect(server, Duration::from_secs(60));
    let req = format!(
        "POST /v2/models/a64/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nInference-Header-Content-Length: {json_len}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(&body).unwrap();
    s
}

fn wait_in_flight(server: &Server, n: f64) {
    let start = Instant::now();
    while server.metric("sorbier_images_in_flight") != Some(n) {
        assert!(start.elapsed() < Duration::from_secs(30), "never {n} in flight: {:?}", server.metric("sorbier_images_in_flight"));
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_client_that_leaves_frees_its_place_and_its_work_is_skipped() {
    let server = start(&["--tta", "d4", "--max-queue", "40"]);
    // A: 32 images through 8 variants, runs for a while. B: 8 images queued behind it, whose
    // client leaves while A runs: B's images stay counted until its job is dropped, and are
    // never run.
    let mut a = raw_infer(&server, 32, 0);
    wait_in_flight(&server, 32.0);
    let b = raw_infer(&server, 8, 32);
    wait_in_flight(&server, 40.0);
    // Admission holds while B's client is still there: the queue is full.
    assert_eq!(server.identify(&photo("t0001.jpg"), "").status, 503);
    drop(b);
    let mut out = Vec::new();
    a.read_to_end(&mut out).unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&out[..out.len().min(300)]));
    wait_in_flight(&server, 0.0);
    assert_eq!(server.metric("sorbier_images_total"), Some(32.0), "B's images ran");
    assert_eq!(server.metric("sorbier_cancelled_images_total"), Some(8.0));
    assert_eq!(server.identify(&photo("t0001.jpg"), "").status, 200);
    assert!(server.stop().success());
}

#[test]
fn sigterm_does_not_wait_for_a_stalled_upload() {
    let mut server = start(&[]);
    let mut s = connect(&server, Duration::from_secs(20));
    s.write_all(b"POST /v1/identify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1000000\r\n\r\n").unwrap();
    s.write_all(&[0xFF; 1000]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    server.terminate();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let status = server.wait();
    let took = t.elapsed();
    println!("stopped {took:?} after SIGTERM with a stalled upload open");
    assert!(status.success(), "{}", server.log_text());
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 503"), "the stalled client got: {}", String::from_utf8_lossy(&out));
    assert!(took < Duration::from_secs(10), "stopping took {took:?} (the grace period is 30 s)");
}

/// What a generated request is.
#[derive(Clone, Debug)]
enum Gen {
    /// An infer with JSON data: shape, datatype, how many values (cycled from the pool's
    /// tensors), nested or flat.
    Json { shape: Vec<i64>, datatype: String, values: usize },
    /// An infer with binary data: shape, datatype, bytes sent, binary_data_size declared, and
    /// the header length (`None`: the right one).
    Binary { shape: Vec<i64>, datatype: String, bytes: usize, declared: u64, header: Option<String> },
    /// A photo as the raw body: a pool photo, mutated at `flips` positions, cut to `keep` bytes.
    Photo { which: usize, flips: Vec<(usize, u8)>, keep: usize, top_k: Option<String> },
    /// A multipart form of fields `(name, content kind)`.
    Form { fields: Vec<(String, usize)> },
    /// Random bytes as an image.
    Noise { bytes: Vec<u8> },
}

fn gen_strategy() -> impl proptest::strategy::Strategy<Value = Gen> {
    use proptest::prelude::*;
    let dim = prop_oneof![Just(1i64), Just(2), Just(3), Just(64), 0i64..5, -3i64..0, Just(i64::MAX), Just(1 << 40), Just(100_000_000), 1i64..100];
    let shape = prop_oneof![proptest::collection::vec(dim, 0..6), (1i64..4).prop_map(|n| vec![n, 3, 64, 64])];
    let datatype = prop_oneof![4 => Just("FP32".to_string()), 1 => Just("FP64".to_string()), 1 => Just("BYTES".to_string()), 1 => "[A-Z0-9]{0,6}"];
    let values = prop_oneof![0usize..20, Just(12288), Just(2 * 12288), Just(3 * 12288), 12280usize..12300];
    let header = prop_oneof![4 => Just(None), 1 => (0u64..100_000).prop_map(|n| Some(n.to_string())), 1 => "[0-9a-z -]{0,12}".prop_map(Some), 1 => Just(Some("18446744073709551616".to_string()))];
    let declared = prop_oneof![Just(u64::MAX), 0u64..200_000, Just(12288 * 4), Just(2 * 12288 * 4)];
    let field = ("(images|image|top_k|weights|organs|x)", 0usize..5);
    prop_oneof![
        (shape.clone(), datatype.clone(), values.clone()).prop_map(|(shape, datatype, values)| Gen::Json { shape, datatype, values }),
        (shape, datatype, values, declared, header).prop_map(|(shape, datatype, v, declared, header)| Gen::Binary { shape, datatype, bytes: v * 4, declared, header }),
        (0usize..3, proptest::collection::vec((0usize..200_000, any::<u8>()), 0..4), 0usize..200_000, proptest::option::of("[0-9a-z]{0,3}"))
            .prop_map(|(which, flips, keep, top_k)| Gen::Photo { which, flips, keep, top_k }),
        proptest::collection::vec(field, 0..6).prop_map(|fields| Gen::Form { fields }),
        proptest::collection::vec(any::<u8>(), 0..3000).prop_map(|bytes| Gen::Noise { bytes }),
    ]
}

/// The pool the generated requests draw from: three photos, their tensors, and the server's
/// answers for them (taken once, before the generated requests).
struct Pool {
    photos: Vec<Vec<u8>>,
    tensors: Vec<f32>,
    rows: Vec<Vec<f32>>,
    results: Vec<Value>,
}

/// Sends `g`; checks the answer is a 4xx, or a 200 whose content is right.
fn throw(server: &Server, pool: &Pool, g: &Gen) -> Result<u16, String> {
    let cycle = |n: usize| -> Vec<f32> { pool.tensors.iter().copied().cycle().take(n).collect() };
    let (r, rows_of) = match g {
        Gen::Json { shape, datatype, values } => {
            let body = json!({ "inputs": [{ "name": "input", "shape": shape, "datatype": datatype, "data": cycle(*values) }] });
            (server.post_json("/v2/models/a64/infer", &body), Some(*values / 12288))
        }
        Gen::Binary { shape, datatype, bytes, declared, header } => {
            let head = json!({ "inputs": [{ "name": "input", "shape": shape, "datatype": datatype, "parameters": { "binary_data_size": declared } }] });
            let tail: Vec<u8> = cycle(bytes / 4).iter().flat_map(|v| v.to_le_bytes()).collect();
            (post_binary(server, &head, &tail, header.as_deref()), Some(bytes / 4 / 12288))
        }
        Gen::Photo { which, flips, keep, top_k } => {
            let mut p = pool.photos[*which].clone();
            for &(at, b) in flips {
                let at = at % p.len();
                p[at] = b;
            }
            p.truncate(*keep);
            let query = top_k.as_ref().map_or_else(String::new, |k| format!("?top_k={k}"));
            let r = server.identify(&p, &query);
            if r.status == 200 && flips.is_empty() && p.len() == pool.photos[*which].len() && top_k.is_none() && r.json()["results"] != pool.results[*which] {
                return Err(format!("an intact photo got {} instead of {}", r.json()["results"], pool.results[*which]));
            }
            (r, None)
        }
        Gen::Form { fields } => {
            let parts: Vec<(String, Option<&str>, Vec<u8>)> = fields
                .iter()
                .map(|(name, kind)| match kind {
                    0 | 1 | 2 => (name.clone(), Some("p.jpg"), pool.photos[*kind].clone()),
                    3 => (name.clone(), None, b"2".to_vec()),
                    _ => (name.clone(), Some("x.bin"), vec![0u8; 17]),
                })
                .collect();
            let refs: Vec<(&str, Option<&str>, &[u8])> = parts.iter().map(|(n, f, c)| (n.as_str(), *f, c.as_slice())).collect();
            let (ct, body) = multipart(&refs);
            (server.post("/v1/identify", &ct, &body), None)
        }
        Gen::Noise { bytes } => (server.identify(bytes, ""), None),
    };
    match r.status {
        200 => {}
        s if (400..500).contains(&s) => {
            let v: Value = serde_json::from_slice(&r.body).map_err(|e| format!("{s} without a JSON body ({e})"))?;
            return if v["error"].is_string() { Ok(s) } else { Err(format!("{s} without an error message: {v}")) };
        }
        s => return Err(format!("status {s}: {}", r.text())),
    }
    let v = r.json();
    match rows_of {
        // A 200 infer: one row per image sent, each the pool image's row.
        Some(n) => {
            let data: Vec<f32> = v["outputs"][0]["data"].as_array().ok_or(format!("no data: {v}"))?.iter().map(|x| x.as_f64().unwrap_or(f64::NAN) as f32).collect();
            if data.len() != n * 5 {
                return Err(format!("{} values for {n} images", data.len()));
            }
            for (i, row) in data.chunks(5).enumerate() {
                let want = &pool.rows[i % pool.rows.len()];
                if row.iter().zip(want).any(|(a, b)| (a - b).abs() > 1e-5) {
                    return Err(format!("row {i}: {row:?} vs {want:?}"));
                }
            }
        }
        None => {
            let results = v["results"].as_array().ok_or(format!("no results: {v}"))?;
            let scores: Vec<f64> = results.iter().map(|r| r["score"].as_f64().unwrap_or(f64::NAN)).collect();
            if results.is_empty() || scores.iter().any(|s| !(0.0..=1.0).contains(s)) || scores.iter().sum::<f64>() > 1.0 + 1e-6 {
                return Err(format!("bad results: {v}"));
            }
        }
    }
    Ok(200)
}

/// Generated requests of every kind at one live server: every answer is a 4xx with a message
/// or a correct 200; the server stays ready; its peak RSS stays under 512 MiB.
#[test]
fn generated_requests_get_a_4xx_or_a_correct_200() {
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    let server = start(&["--max-body-mb", "4", "--max-buffered-mb", "64", "--quiet"]);
    let names = ["t0000.jpg", "t0001.jpg", "t0002.jpg"];
    let photos: Vec<Vec<u8>> = names.iter().map(|n| photo(n)).collect();
    let tensors: Vec<f32> = names.iter().flat_map(|n| tensor(n)).collect();
    let r = server.post_json("/v2/models/a64/infer", &json!({ "inputs": [{ "name": "input", "shape": [3, 3, 64, 64], "datatype": "FP32", "data": tensors }] }));
    let rows: Vec<Vec<f32>> = r.json()["outputs"][0]["data"].as_array().unwrap().chunks(5).map(|c| c.iter().map(|x| x.as_f64().unwrap() as f32).collect()).collect();
    let results = photos.iter().map(|p| server.identify(p, "").json()["results"].clone()).collect();
    let pool = Pool { photos, tensors, rows, results };
    let cases = std::env::var("SORBIER_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let statuses = std::cell::RefCell::new(std::collections::BTreeMap::new());
    let outcome = runner.run(&gen_strategy(), |g| {
        let status = throw(&server, &pool, &g).map_err(TestCaseError::fail)?;
        *statuses.borrow_mut().entry(status).or_insert(0usize) += 1;
        if server.get("/v2/health/ready").status != 200 {
            return Err(TestCaseError::fail("the server is not ready"));
        }
        Ok(())
    });
    let statuses = statuses.into_inner();
    let rss = server.peak_rss_kib().unwrap();
    println!("{cases} generated requests: statuses {statuses:?}; peak RSS {} MiB", rss >> 10);
    if let Err(e) = outcome {
        panic!("{e}\nserver log:\n{}", server.log_text());
    }
    assert!(statuses.get(&200).is_some_and(|&n| n > 0) && statuses.keys().any(|&s| s >= 400), "the generator never reached both outcomes: {statuses:?}");
    assert!(rss < 512 << 10, "peak RSS {} MiB", rss >> 10);
    assert_eq!(server.metric("sorbier_images_in_flight"), Some(0.0));
    assert!(server.stop().success());
}

/// The gRPC status of one answer: from the headers of a trailers-only answer, else from the
/// trailers after the messages (whose bytes are returned).
async fn grpc_answer(answer: h2::client::ResponseFuture) -> (i32, String, Vec<u8>) {
    let response = answer.await.expect("an HTTP/2 answer");
    // tonic's own reading of the status headers (the message is percent-decoded).
    let read = |h: &tonic::codegen::http::HeaderMap| tonic::Status::from_header_map(h).map(|st| (st.code() as i32, st.message().to_string()));
    if let Some((code, message)) = read(response.headers()) {
        return (code, message, Vec::new());
    }
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("answer data");
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.expect("trailers").expect("grpc-status trailers");
    let (code, message) = read(&trailers).expect("grpc-status in the trailers");
    (code, message, bytes)
}

/// Opens a `ModelInfer` stream and sends `bytes` of its body, ending the stream if `end`.
fn grpc_send(client: &mut h2::client::SendRequest<tonic::codegen::Bytes>, bytes: Vec<u8>, end: bool) -> (h2::client::ResponseFuture, h2::SendStream<tonic::codegen::Bytes>) {
    let request = tonic::codegen::http::Request::post("http://localhost/inference.GRPCInferenceService/ModelInfer")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (answer, mut stream) = client.send_request(request, false).unwrap();
    stream.reserve_capacity(bytes.len());
    stream.send_data(bytes.into(), end).unwrap();
    (answer, stream)
}

/// A gRPC frame declaring `declared` message bytes, followed by the first `sent` of them.
fn grpc_frame_head(declared: u32, sent: usize) -> Vec<u8> {
    let mut b = vec![0u8];
    b.extend(declared.to_be_bytes());
    b.extend(std::iter::repeat_n(7u8, sent));
    b
}

/// gRPC `infer` messages take their room in the body budget from their length prefix, before
/// tonic reads them, and must arrive within `--body-timeout-s`: while one client uploads a
/// message that fills the budget, another is refused at once with UNAVAILABLE; the stalled
/// upload is cut off with DEADLINE_EXCEEDED; then a whole request is served again.
#[test]
fn grpc_messages_take_their_budget_before_they_are_read_and_stalls_are_cut_off() {
    let server = start(&["--grpc-listen", "127.0.0.1:0", "--max-body-mb", "1", "--max-buffered-mb", "1", "--body-timeout-s", "1.5"]);
    let grpc = server.grpc.clone().expect("the gRPC address").trim_start_matches("http://").to_string();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(&grpc).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();

        // A message declared at the whole budget (1 MiB), of which 1 KiB arrives, then nothing.
        let started = Instant::now();
        let (stalled, _keep_open) = grpc_send(&mut client, grpc_frame_head(1 << 20, 1024), false);
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Another small message finds the budget taken, before sending its bytes.
        let mut client = client.ready().await.unwrap();
        let (refused, _second) = grpc_send(&mut client, grpc_frame_head(64 << 10, 16), false);
        let (code, message, _) = tokio::time::timeout(Duration::from_secs(5), grpc_answer(refused)).await.expect("the second message was not refused within 5 s");
        assert_eq!(code, 14, "UNAVAILABLE expected: {message}");
        assert!(message.contains("--max-buffered-mb"), "{message}");

        // The stalled upload is cut off at the body deadline (1.5 s), not left to hold the budget.
        let (code, message, _) = tokio::time::timeout(Duration::from_secs(10), grpc_answer(stalled)).await.expect("the stalled upload was not cut off within 10 s");
        let waited = started.elapsed();
        println!("stalled gRPC upload cut off after {waited:?}: {code} {message}");
        assert_eq!(code, 4, "DEADLINE_EXCEEDED expected: {message}");
        assert!(message.contains("--body-timeout-s"), "{message}");
        assert!(waited >= Duration::from_millis(1400), "cut off before the deadline: {waited:?}");

        // The budget is free again: a whole request of one 64×64 image is answered.
        let x = vec![0.25f32; 3 * 64 * 64];
        let request = sorbier_predict::serve::grpc::pb::ModelInferRequest {
            model_name: "a64".into(),
            inputs: vec![sorbier_predict::serve::grpc::pb::model_infer_request::InferInputTensor { name: "input".into(), datatype: "FP32".into(), shape: vec![1, 3, 64, 64], ..Default::default() }],
            raw_input_contents: vec![x.iter().flat_map(|v| v.to_le_bytes()).collect()],
            ..Default::default()
        };
        let message = prost::Message::encode_to_vec(&request);
        let mut whole = vec![0u8];
        whole.extend((message.len() as u32).to_be_bytes());
        whole.extend(message);
        let mut client = client.ready().await.unwrap();
        let (answer, _stream) = grpc_send(&mut client, whole, true);
        let (code, message, bytes) = tokio::time::timeout(Duration::from_secs(30), grpc_answer(answer)).await.expect("no answer within 30 s");
        assert_eq!(code, 0, "OK expected: {message}");
        assert!(bytes.len() > 5, "an OK answer carries a response message");
    });
    let metrics = server.get("/metrics").text();
    assert!(metrics.contains(r#"sorbier_grpc_requests_total{code="OK",method="ModelInfer"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"sorbier_grpc_requests_total{code="UNAVAILABLE",method="ModelInfer"} 1"#), "{metrics}");
}

/// A copy of the fixture model `a` whose classifier bias holds a NaN: its every output is NaN.
fn nan_model(dir: &std::path::Path) -> std::path::PathBuf {
    let mut model = sorbier::export::read_model(&fixtures().a).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let bias = graph.initializer.iter_mut().find(|t| t.name.as_deref() == Some("fc.bias")).expect("an fc.bias initializer");
    match bias.raw_data.as_mut() {
        Some(raw) if !raw.is_empty() => raw[..4].copy_from_slice(&f32::NAN.to_le_bytes()),
        _ => bias.float_data[0] = f32::NAN,
    }
    let path = dir.join("nan64.onnx");
    sorbier::export::write_model(&model, &path).unwrap();
    path
}

/// A model that answers NaN is an error naming it — in `predict`, and in `serve` as a 500 for
/// the requests it ran, while the other served model and the health check keep answering.
#[test]
fn a_model_that_answers_nan_is_an_error_naming_it_and_the_others_keep_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let nan = nan_model(tmp.path());
    let f = fixtures();

    let out_csv = tmp.path().join("submission.csv");
    let out = run(&["predict", "--model", s(&nan), "--images", s(&flowers().join("test")), "--out", s(&out_csv), "--device", "cpu"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "predict with a NaN model succeeded: {err}");
    assert!(err.contains("nan64.onnx") && err.contains("not finite"), "{err}");
    assert!(!out_csv.exists(), "a submission was written from NaN outputs");

    let mut args = vec!["--model", s(&f.a), "--model", s(&nan)];
    args.extend(SERVE_FAST);
    let server = Server::start(&args);
    let head = json!({ "inputs": [{ "name": "input", "shape": [1, 3, 64, 64], "datatype": "FP32", "parameters": { "binary_data_size": 3 * 64 * 64 * 4 } }] });
    let tensor: Vec<u8> = std::iter::repeat_n(0.25f32.to_le_bytes(), 3 * 64 * 64).flatten().collect();
    let mut body = serde_json::to_vec(&head).unwrap();
    let len = body.len().to_string();
    body.extend_from_slice(&tensor);
    let headers = [("content-type", "application/octet-stream"), ("inference-header-content-length", len.as_str())];
    for round in 0..2 {
        let r = server.post_with("/v2/models/nan64/infer", &headers, &body);
        assert_eq!(r.status, 500, "round {round}: {}", r.text());
        assert!(r.error().contains("nan64.onnx") && r.error().contains("not finite"), "{}", r.error());
        let r = server.identify(&photo("t0000.jpg"), "");
        assert_eq!(r.status, 500, "the ensemble holds the NaN model: {}", r.text());
        let good = server.post_with("/v2/models/a64/infer", &headers, &body);
        assert_eq!(good.status, 200, "{}", good.text());
        assert_eq!(server.get("/v2/health/live").status, 200);
    }
}

//! `predictor serve` against real servers: each test starts the binary on a loopback ephemeral
//! port and talks to it with a real HTTP client (ureq), sending real flowers photos, with
//! models exported by the project's exporter (seeded random ResNet-18s, see `common`).
//!
//! What `predict` says is the reference: a served answer for a photo must be the `predict`
//! row for the same file (same decode, eval transform, TTA and averaging code). The two run in
//! different processes and batch the images differently, and ONNX Runtime's CPU kernels may
//! round a row differently inside another batch, so logits are compared to [`LOGITS_TOL`].
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sorbier::transforms::{eval_into, eval_tensor_len, load_rgb, Preprocess};
use sorbier_predict::engine::ensemble::softmax;
use sorbier_predict::output::logits::SavedLogits;

mod common;
use common::*;
#[path = "common/server.rs"]
mod server;
use server::{multipart, Server};

/// Served vs predicted values (logits of magnitude ≲ 10, probabilities): f32 rounding of one
/// batch against another is ~1e-6 here; 1e-5 leaves room and still catches any real difference
/// (a wrong transform or a wrong weight moves them by 1e-2 or more).
const LOGITS_TOL: f32 = 1e-5;

const SERVE_FAST: [&str; 6] = ["--device", "cpu", "--threads", "1", "--workers", "1"];

fn args<'a>(models: &[&'a Path], extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = Vec::new();
    for m in models {
        v.extend(["--model", s(m)]);
    }
    v.extend(SERVE_FAST);
    v.extend(extra);
    v
}

/// `predictor predict --save-logits` on the first `n` flowers test photos (all when `n` is
/// 250), read back; also returns the photo names in row order and the submission rows.
fn predicted(dir: &Path, models: &[&Path], n: usize, extra: &[&str]) -> (Vec<String>, SavedLogits, Vec<Vec<String>>) {
    let (images, sample) = if n == 250 {
        (flowers().join("test"), flowers().join("sample_submission.csv"))
    } else {
        let (i, s, _) = small_test_set(dir, n);
        (i, s)
    };
    let logits = dir.join("logits.safetensors");
    let sub = dir.join("submission.csv");
    let mut more = vec!["--save-logits", s(&logits), "--top-k", "3"];
    more.extend(extra);
    let o = predict_with(models, &images, &sample, &sub, &more);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let saved = sorbier_predict::output::logits::load(&logits).unwrap();
    let rows = read_csv(&sub);
    (saved.names.clone(), saved, rows)
}

/// The model's input tensors for photos `names`, made as the predictor makes them.
fn preprocessed(names: &[String], crop: u32) -> Vec<f32> {
    let pre = Preprocess::for_crop(crop);
    let mut out = Vec::new();
    for name in names {
        let img = load_rgb(&flowers().join("test").join(name)).unwrap();
        let mut t = vec![0.0; eval_tensor_len(&pre)];
        eval_into(&img, &pre, &mut t).unwrap();
        out.extend(t);
    }
    out
}

/// Softmax in f64, written here so that expected scores do not come from the server's code.
fn softmax64(row: &[f64]) -> Vec<f64> {
    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = row.iter().map(|v| (v - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst <= tol, "{what}: max difference {worst} > {tol}\n got {got:?}\nwant {want:?}");
}

fn infer_body(input: &str, n: usize, crop: u32, data: &[f32]) -> Value {
    json!({ "inputs": [{ "name": input, "shape": [n, 3, crop, crop], "datatype": "FP32", "data": data }] })
}

/// A tensor request in the binary tensor data extension: the JSON header, then the raw floats.
fn binary_infer(server: &Server, model: &str, n: usize, crop: u32, data: &[f32], outputs: Value) -> server::Resp {
    let head = json!({
        "inputs": [{ "name": "input", "shape": [n, 3, crop, crop], "datatype": "FP32", "parameters": { "binary_data_size": data.len() * 4 } }],
        "outputs": outputs,
    });
    let mut body = serde_json::to_vec(&head).unwrap();
    let len = body.len().to_string();
    body.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    server.post_with(&format!("/v2/models/{model}/infer"), &[("content-type", "application/octet-stream"), ("inference-header-content-length", &len)], &body)
}

#[test]
fn every_endpoint_answers_as_the_protocol_says() {
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let (names, saved, _) = predicted(tmp.path(), &[&f.a], 4, &[]);
    let server = Server::start(&args(&[&f.a], &["--max-delay-ms", "2"]));

    // Health: 200 and an empty body.
    for path in ["/v2/health/live", "/v2/health/ready", "/v2/models/a64/ready"] {
        let r = server.get(path);
        assert_eq!((r.status, r.body.len()), (200, 0), "{path}: {}", r.text());
    }
    assert_eq!(server.get("/v2/models/nope/ready").status, 404);

    let meta = server.get("/v2").json();
    assert_eq!(meta["name"], "sorbier");
    assert_eq!(meta["version"], sorbier::VERSION);
    assert!(meta["extensions"].as_array().unwrap().contains(&json!("binary_tensor_data")), "{meta}");

    let m = server.get("/v2/models/a64").json();
    assert_eq!(m["name"], "a64");
    assert_eq!(m["platform"], "onnxruntime_onnx");
    assert_eq!(m["inputs"], json!([{ "name": "input", "datatype": "FP32", "shape": [-1, 3, 64, 64] }]));
    assert_eq!(m["outputs"], json!([{ "name": "logits", "datatype": "FP32", "shape": [-1, 5] }]));
    assert_eq!(m["parameters"]["classes"], json!(train_classes()));
    let version = m["versions"][0].as_str().unwrap().to_string();
    assert!(version.len() == 12 && version.chars().all(|c| c.is_ascii_hexdigit()), "{version}");
    assert_eq!(server.get(&format!("/v2/models/a64/versions/{version}")).json(), m);
    assert_eq!(server.get(&format!("/v2/models/a64/versions/{version}/ready")).status, 200);
    let r = server.get("/v2/models/a64/versions/1");
    assert!(r.status == 404 && r.error().contains("no version \"1\""), "{}", r.text());
    let cfg = server.get("/v2/models/a64/config").json();
    assert_eq!((cfg["max_batch_size"].as_u64(), cfg["input"][0]["dims"].clone()), (Some(32), json!([3, 64, 64])), "{cfg}");
    let index = server.post("/v2/repository/index", "application/json", b"{}").json();
    assert_eq!(index, json!([{ "name": "a64", "version": version, "state": "READY" }]));

    // Inference with JSON tensors, flat and nested: the predictor's logits.
    let x = preprocessed(&names, 64);
    let r = server.post_json("/v2/models/a64/infer", &json!({ "id": "req-7", "inputs": infer_body("input", 4, 64, &x)["inputs"] }));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!((v["model_name"].as_str(), v["model_version"].as_str(), v["id"].as_str()), (Some("a64"), Some(version.as_str()), Some("req-7")));
    assert_eq!(v["outputs"][0]["shape"], json!([4, 5]));
    assert_eq!(v["outputs"][0]["datatype"], "FP32");
    let logits = f32s(&v["outputs"][0]["data"]);
    assert_close(&logits, saved.mean.as_slice().unwrap(), LOGITS_TOL, "infer vs predict");
    let nested: Vec<Value> = x.chunks(64).map(|row| json!(row)).collect();
    let nested: Vec<Value> = nested.chunks(64).map(|plane| json!(plane)).collect();
    let nested: Vec<Value> = nested.chunks(3).map(|img| json!(img)).collect();
    let r = server.post_json("/v2/models/a64/infer", &json!({ "inputs": [{ "name": "input", "shape": [4, 3, 64, 64], "datatype": "FP32", "data": nested }] }));
    assert_eq!(f32s(&r.json()["outputs"][0]["data"]), logits, "nested data is the same tensor");

    // Binary tensors and the classification extension.
    let r = binary_infer(&server, "a64", 4, 64, &x, json!([{ "name": "logits", "parameters": { "binary_data": true } }, { "name": "logits", "parameters": { "classification": 2 } }]));
    assert_eq!(r.status, 200, "{}", r.text());
    let split: usize = r.header("inference-header-content-length").unwrap().parse().unwrap();
    let head: Value = serde_json::from_slice(&r.body[..split]).unwrap();
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], json!(4 * 5 * 4));
    let raw: Vec<f32> = r.body[split..].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    assert_eq!(raw, logits, "binary output is the JSON output");
    assert_eq!(head["outputs"][1]["datatype"], "BYTES");
    assert_eq!(head["outputs"][1]["shape"], json!([4, 2]));
    let classes = train_classes();
    for (i, pair) in head["outputs"][1]["data"].as_array().unwrap().chunks(2).enumerate() {
        let row = &logits[i * 5..(i + 1) * 5];
        let top = sorbier_predict::engine::ensemble::top_k(row, 2);
        for (label, &j) in pair.iter().zip(&top) {
            assert_eq!(label.as_str().unwrap(), format!("{}:{j}:{}", row[j], classes[j]));
        }
    }

    // /v1/identify, raw body and multipart, equals the predictor's top-3 scores.
    let (names, rows) = (&saved.names, saved.mean.rows().into_iter().map(|r| softmax(&r.to_vec())).collect::<Vec<_>>());
    let r = server.identify(&photo(&names[0]), "?top_k=3");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let top = sorbier_predict::engine::ensemble::top_k(&rows[0], 3);
    assert_eq!(v["bestMatch"], json!(classes[top[0]]));
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    for (res, &j) in results.iter().zip(&top) {
        assert_eq!(res["species"], json!(classes[j]));
        assert!((res["score"].as_f64().unwrap() as f32 - rows[0][j]).abs() <= LOGITS_TOL, "{res}");
    }
    assert_eq!((v["model"]["name"].as_str(), v["model"]["version"].as_str()), (Some("a64"), Some(version.as_str())));
    // Each stage is a part of the request's wall time, which is not zero.
    let ms = |t: &str| v["timing_ms"][t].as_f64().unwrap();
    assert!(ms("total") > 0.0 && ms("total").is_finite(), "{v}");
    for t in ["decode", "queue", "inference"] {
        assert!((0.0..=ms("total")).contains(&ms(t)), "{t} outside 0..total: {v}");
    }
    assert_eq!((v["images"][0]["width"].as_u64(), v["images"][0]["height"].is_u64()), (Some(load_rgb(&flowers().join("test").join(&names[0])).unwrap().width() as u64), true));
    let (ct, body) = multipart(&[("images", Some("one.jpg"), &photo(&names[1])), ("top_k", None, b"2")]);
    let v = server.post("/v1/identify", &ct, &body).json();
    assert_eq!(v["results"].as_array().unwrap().len(), 2);
    assert_eq!(v["images"][0]["name"], "one.jpg");
    let top = sorbier_predict::engine::ensemble::top_k(&rows[1], 1);
    assert_eq!(v["bestMatch"], json!(classes[top[0]]));

    // Metrics count what happened; one log line per request.
    let text = server.get("/metrics").text();
    assert!(text.contains(r#"sorbier_http_requests_total{method="POST",route="/v1/identify",status="200"} 2"#), "{text}");
    assert!(text.contains(r#"sorbier_http_requests_total{method="POST",route="/v2/models/{name}/infer",status="200"} 3"#), "{text}");
    assert!(text.contains(r#"sorbier_http_requests_total{method="GET",route="/v2/models/{name}/versions/{version}",status="404"} 1"#), "{text}");
    assert!(text.contains("sorbier_http_request_duration_seconds_bucket"), "{text}");
    for name in ["sorbier_batch_size_count", "sorbier_queue_depth", "sorbier_images_in_flight", "sorbier_images_per_second"] {
        assert!(text.lines().any(|l| l.starts_with(name)), "{name} missing:\n{text}");
    }
    assert_eq!(server.metric("sorbier_images_total"), Some(4.0 * 3.0 + 2.0));
    assert_eq!(server.metric("sorbier_batch_size_sum"), Some(14.0));
    assert_eq!(server.metric("sorbier_queue_depth"), Some(0.0));
    let log = server.log_text();
    assert!(log.lines().any(|l| l.starts_with("POST /v1/identify 200 1 image ") && l.ends_with(" ms")), "{log}");
    assert!(log.lines().any(|l| l.starts_with("POST /v2/models/a64/infer 200 4 images ")), "{log}");
    assert!(log.lines().any(|l| l.starts_with("GET /v2/health/live 200 0 images ")), "{log}");
    assert!(server.stop().success());
}

#[test]
fn served_top1_equals_predict_for_every_flowers_test_photo() {
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let (names, saved, rows) = predicted(tmp.path(), &[&f.a], 250, &[]);
    assert_eq!(names.len(), 250);
    let server = Server::start(&args(&[&f.a], &["--max-batch", "8", "--max-delay-ms", "20", "--quiet"]));
    // Four clients at once, so that the server batches photos from different requests.
    let answers: Vec<(usize, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let (server, names) = (&server, &names);
                scope.spawn(move || {
                    (t..names.len()).step_by(4).map(|i| {
                        let r = server.identify(&photo(&names[i]), "?top_k=1");
                        assert_eq!(r.status, 200, "{}: {}", names[i], r.text());
                        (i, r.json())
                    }).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(answers.len(), 250);
    for (i, v) in answers {
        assert_eq!(rows[i + 1][0], names[i]);
        assert_eq!(v["bestMatch"].as_str().unwrap(), rows[i + 1][1], "row {i} ({}): served top-1 differs from predict", names[i]);
        let probs = softmax(&saved.mean.row(i).to_vec());
        let best = sorbier_predict::engine::ensemble::top_k(&probs, 1)[0];
        assert!((v["results"][0]["score"].as_f64().unwrap() as f32 - probs[best]).abs() <= LOGITS_TOL, "row {i}: {v}");
    }
    // Every photo went through the models once; batches never exceed --max-batch; and photos
    // from different requests (each request is one photo) were merged: fewer batches than
    // requests, and some batch held several (a batcher that never merges has 250 batches of 1).
    assert_eq!(server.metric("sorbier_images_total"), Some(250.0));
    assert_eq!(server.metric("sorbier_batch_size_sum"), Some(250.0));
    let batches = server.metric("sorbier_batch_size_count").unwrap();
    assert_eq!(server.metric("sorbier_batch_size_bucket{le=\"8\"}"), Some(batches));
    let singles = server.metric("sorbier_batch_size_bucket{le=\"1\"}").unwrap();
    println!("250 one-photo requests from 4 clients ran in {batches} batches ({singles} of one photo), mean {:.2}", 250.0 / batches);
    assert!(batches <= 200.0 && singles < batches, "requests from different clients were not batched together: {batches} batches, {singles} of one photo");
    assert!(server.stop().success());
}

#[test]
fn an_ensemble_served_equals_the_ensemble_predicted() {
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let flags = ["--weights", "1,3", "--tta", "hflip"];
    let (names, saved, _) = predicted(tmp.path(), &[&f.a, &f.b], 6, &flags);
    let server = Server::start(&args(&[&f.a, &f.b], &flags));
    let classes = train_classes();

    let meta = server.get("/v2/models/ensemble").json();
    assert_eq!(meta["platform"], "ensemble");
    assert_eq!(meta["inputs"], json!([]), "members preprocess differently: no tensor input");
    assert_eq!(meta["parameters"]["members"], json!(["a64", "b48"]));
    let r = server.post_json("/v2/models/ensemble/infer", &infer_body("input", 1, 64, &preprocessed(&names[..1], 64)));
    assert_eq!(r.status, 400);
    assert!(r.error().contains("preprocess their inputs differently") && r.error().contains("a64, b48"), "{}", r.error());

    // Photos: the ensemble's logits, (1·a + 3·b) / 4 of the members' outputs, computed here
    // in f64 from the predictor's member rows (not with the code the server runs).
    assert_eq!(saved.members.len(), 2);
    for (i, name) in names.iter().enumerate() {
        let v = server.identify(&photo(name), "?top_k=5").json();
        let mean: Vec<f64> = (0..classes.len()).map(|j| (f64::from(saved.members[0][[i, j]]) + 3.0 * f64::from(saved.members[1][[i, j]])) / 4.0).collect();
        let probs = softmax64(&mean);
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), 5, "{name}: {v}");
        let mut seen = std::collections::BTreeSet::new();
        for res in results {
            let j = res["index"].as_u64().unwrap() as usize;
            assert!(seen.insert(j), "{name}: class {j} twice");
            assert_eq!(res["species"], json!(classes[j]));
            assert!((res["score"].as_f64().unwrap() - probs[j]).abs() <= f64::from(LOGITS_TOL), "{name}: {res} vs {}", probs[j]);
        }
        assert_eq!(v["model"]["name"], "ensemble");
        assert_eq!(v["model"]["tta"], "hflip");
    }
    // Each member, fed its own tensors, is the predictor's member output (TTA included).
    for (k, (member, crop)) in [("a64", 64), ("b48", 48)].into_iter().enumerate() {
        let r = server.post_json(&format!("/v2/models/{member}/infer"), &infer_body("input", names.len(), crop, &preprocessed(&names, crop)));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_close(&f32s(&r.json()["outputs"][0]["data"]), saved.members[k].as_slice().unwrap(), LOGITS_TOL, member);
    }
    // Several photos of one plant, weighted: averaged like ensemble members, then softmax.
    let (ct, body) = multipart(&[
        ("images", Some("p0.jpg"), &photo(&names[0])),
        ("images", Some("p1.jpg"), &photo(&names[1])),
        ("images", Some("p2.jpg"), &photo(&names[2])),
        ("weights", None, b"1,2,3"),
        ("organs", None, b"flower"),
    ]);
    let v = server.post("/v1/identify", &ct, &body).json();
    // (1·p0 + 2·p1 + 3·p2) / 6 of the predicted rows, in f64, then softmax.
    let combined: Vec<f64> = (0..classes.len()).map(|j| (1..=3).map(|w| w as f64 * f64::from(saved.mean[[w - 1, j]])).sum::<f64>() / 6.0).collect();
    let want = softmax64(&combined);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 5, "{v}");
    for res in results {
        let j = res["index"].as_u64().unwrap() as usize;
        assert!((res["score"].as_f64().unwrap() - want[j]).abs() <= f64::from(LOGITS_TOL), "{res} vs {}", want[j]);
    }
    assert_eq!(v["images"].as_array().unwrap().iter().map(|i| i["weight"].as_f64().unwrap()).collect::<Vec<_>>(), [1.0, 2.0, 3.0]);
    assert!(server.stop().success());
}

/// What a conformance script (`tools/triton_*_check.py`) returned: its JSON summary, and the
/// float32 tensors it wrote.
struct Conformance {
    summary: Value,
    tensors: std::collections::HashMap<String, Vec<f32>>,
}

/// Writes the preprocessed batch of `names` where a conformance script reads it, runs `script`
/// against the server at `url`, and reads back what it wrote (the server's log goes into the
/// failure message).
fn conformance(script: &str, url: &str, tmp: &Path, names: &[String], server: &Server) -> Conformance {
    let x = preprocessed(names, 64);
    let input = tmp.join("input.safetensors");
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![names.len(), 3, 64, 64], &bytes).unwrap();
    safetensors::serialize_to_file([("input", view)], None, &input).unwrap();
    let out = tmp.join("out.safetensors");
    let o = std::process::Command::new(python())
        .arg(manifest().join("tools").join(script))
        .args(["--url", url, "--model", "a64", "--input", s(&input), "--out", s(&out), "--top-k", "3"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{script} failed:\n{}\n{}\nserver log:\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr), server.log_text());
    let summary: Value = serde_json::from_slice(o.stdout.trim_ascii()).unwrap();
    let got = std::fs::read(&out).unwrap();
    let got = safetensors::SafeTensors::deserialize(&got).unwrap();
    let tensors = got.tensors().into_iter().map(|(name, t)| (name, t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())).collect();
    Conformance { summary, tensors }
}

#[test]
fn tritonclient_drives_the_server_and_gets_the_predictors_logits() {
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let (names, saved, _) = predicted(tmp.path(), &[&f.a], 8, &[]);
    let server = Server::start(&args(&[&f.a], &[]));
    let addr = server.base.trim_start_matches("http://").to_string();
    let Conformance { summary, tensors } = conformance("triton_client_check.py", &addr, tmp.path(), &names, &server);
    let (binary, as_json) = (&tensors["binary"], &tensors["json"]);
    // The client's numbers are the Rust predictor's logits (the issue asks for 1e-4).
    assert_close(binary, saved.mean.as_slice().unwrap(), 1e-4, "tritonclient binary infer vs predict");
    assert_eq!(binary, as_json, "binary and JSON tensors carry the same floats");
    let classes = train_classes();
    for (i, labels) in summary["classification"].as_array().unwrap().iter().enumerate() {
        let row = saved.mean.row(i).to_vec();
        let top = sorbier_predict::engine::ensemble::top_k(&row, 3);
        let got: Vec<(usize, String)> = labels
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                let p: Vec<&str> = l.as_str().unwrap().splitn(3, ':').collect();
                (p[1].parse().unwrap(), p[2].to_string())
            })
            .collect();
        assert_eq!(got, top.iter().map(|&j| (j, classes[j].clone())).collect::<Vec<_>>(), "row {i}");
    }
    assert!(summary["shape_error"].as_str().unwrap().contains("[-1, 3, 64, 64]"), "{summary}");
    assert!(server.stop().success());
}

/// `predictor serve --grpc-listen` driven by tritonclient[grpc]: the same logits as `predict`.
#[test]
fn tritonclient_grpc_drives_the_server_and_gets_the_predictors_logits() {
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let (names, saved, _) = predicted(tmp.path(), &[&f.a], 8, &[]);
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("serve").args(args(&[&f.a], &[])).args(["--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"]);
    let server = Server::spawn(cmd);
    let grpc = server.grpc.as_deref().expect("no gRPC address in the log").trim_start_matches("http://").to_string();
    let Conformance { summary, tensors } = conformance("triton_grpc_check.py", &grpc, tmp.path(), &names, &server);
    assert_close(&tensors["grpc"], saved.mean.as_slice().unwrap(), 1e-4, "tritonclient[grpc] infer vs predict");
    let classes = train_classes();
    let labels = summary["classification"].as_array().unwrap();
    assert_eq!(labels.len(), names.len());
    for (i, row_labels) in labels.iter().enumerate() {
        let top = sorbier_predict::engine::ensemble::top_k(&saved.mean.row(i).to_vec(), 3);
        let got: Vec<String> = row_labels.as_array().unwrap().iter().map(|l| l.as_str().unwrap().splitn(2, ':').nth(1).unwrap().to_string()).collect();
        assert_eq!(got, top.iter().map(|&j| format!("{j}:{}", classes[j])).collect::<Vec<_>>(), "row {i}");
    }
    assert!(summary["shape_error"].as_str().unwrap().contains("[-1, 3, 64, 64]"), "{summary}");
    let metrics = server.get("/metrics").text();
    assert!(metrics.contains(r#"sorbier_grpc_requests_total{code="OK",method="ModelInfer"} 2"#), "{metrics}");
    assert!(metrics.contains(r#"sorbier_grpc_requests_total{code="INVALID_ARGUMENT",method="ModelInfer"} 1"#), "{metrics}");
    assert!(server.stop().success());
}

#[test]
fn bad_input_gets_a_clear_4xx_and_the_next_request_is_served() {
    let f = fixtures();
    let server = Server::start(&args(&[&f.a], &["--max-body-mb", "1"]));
    let good = photo("t0000.jpg");
    let baseline = server.identify(&good, "").json()["results"].clone();
    let bombs = manifest().join("tests/corpus/bombs");
    let jpeg = photo("t0001.jpg");
    let x = preprocessed(&["t0000.jpg".to_string()], 64);
    let rss_before = server.peak_rss_kib().unwrap();
    let (empty_ct, empty_form) = multipart(&[("images", Some("empty.jpg"), b"")]);
    let (none_ct, none_form) = multipart(&[("top_k", None, b"3")]);
    let (odd_ct, odd_form) = multipart(&[("picture", Some("x.jpg"), &good)]);
    let oversized = vec![0xABu8; 1536 << 10];
    let infer = |body: &Value| server.post_json("/v2/models/a64/infer", body);
    // Each case is sent, then a good request at once: after each refusal the next request gets
    // its full, unchanged answer (a refusal that left state behind would show right there).
    type Case<'a> = (&'a str, Box<dyn Fn() -> server::Resp + 'a>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("not an image", Box::new(|| server.identify(b"this is not a photo at all", "")), 400, "unrecognised image format"),
        ("truncated JPEG", Box::new(|| server.identify(&jpeg[..jpeg.len() / 2], "")), 400, "cannot decode image"),
        ("zero-byte body", Box::new(|| server.identify(b"", "")), 400, "no photo"),
        ("zero-byte upload", Box::new(|| server.post("/v1/identify", &empty_ct, &empty_form)), 400, "the file is empty"),
        ("form without a photo", Box::new(|| server.post("/v1/identify", &none_ct, &none_form)), 400, "no photo"),
        ("unknown form field", Box::new(|| server.post("/v1/identify", &odd_ct, &odd_form)), 400, "unknown form field \"picture\""),
        ("PNG bomb", Box::new(|| server.identify(&std::fs::read(bombs.join("png_50000x50000.png")).unwrap(), "")), 400, "50000 × 50000 = 2500000000 pixels"),
        ("JPEG bomb", Box::new(|| server.identify(&std::fs::read(bombs.join("jpeg_50000x50000.jpg")).unwrap(), "")), 400, "more than the limit"),
        ("top_k 0", Box::new(|| server.identify(&good, "?top_k=0")), 400, "top_k must be"),
        ("weights for 2 photos", Box::new(|| server.identify(&good, "?weights=1,2")), 400, "2 weights given for 1 photos"),
        ("oversized body", Box::new(|| server.identify(&oversized, "")), 413, "more than 1048576 bytes"),
        ("wrong tensor shape", Box::new(|| infer(&infer_body("input", 1, 32, &x[..3 * 32 * 32]))), 400, "has shape [1, 3, 32, 32]"),
        ("wrong datatype", Box::new(|| infer(&json!({ "inputs": [{ "name": "input", "shape": [1, 3, 64, 64], "datatype": "FP64", "data": x }] }))), 400, "datatype FP64"),
        ("too few values", Box::new(|| infer(&infer_body("input", 2, 64, &x))), 400, "needs 24576"),
        ("wrong input name", Box::new(|| infer(&infer_body("pixels", 1, 64, &x))), 400, "unknown input \"pixels\""),
        ("unknown output", Box::new(|| infer(&json!({ "inputs": infer_body("input", 1, 64, &x)["inputs"], "outputs": [{ "name": "scores" }] }))), 400, "unknown output"),
        ("malformed JSON", Box::new(|| server.post("/v2/models/a64/infer", "application/json", b"{\"inputs\": [{\"name\": ")), 400, "malformed inference request JSON"),
        ("unknown model infer", Box::new(|| server.post_json("/v2/models/nope/infer", &infer_body("input", 1, 64, &x))), 404, "unknown model \"nope\""),
        ("unknown model metadata", Box::new(|| server.get("/v2/models/nope")), 404, "serves a64"),
        ("unknown route", Box::new(|| server.get("/v3/whatever")), 404, "no route GET /v3/whatever"),
        ("wrong method", Box::new(|| server.get("/v1/identify")), 405, "method not allowed"),
    ];
    for (what, send, status, needle) in &cases {
        let r = send();
        assert_eq!(r.status, *status, "{what}: {}", r.text());
        assert!(r.header("content-type").unwrap_or("").starts_with("application/json"), "{what}: not JSON");
        let msg = r.error();
        assert!(msg.contains(needle), "{what}: {msg:?} does not mention {needle:?}");
        let again = server.identify(&good, "");
        assert_eq!(again.status, 200, "right after {what}: {}", again.text());
        assert_eq!(again.json()["results"], baseline, "right after {what}");
    }
    // The bombs were refused from their headers: memory did not grow by their 7.5 GB.
    let grown = server.peak_rss_kib().unwrap().saturating_sub(rss_before);
    assert!(grown < 256 << 10, "peak RSS grew by {grown} KiB while refusing bad inputs");
    // Nothing lost, nothing counted twice: every good request answered 200, and only those ran.
    let ok = cases.len() + 1;
    assert_eq!(server.metric(r#"sorbier_http_requests_total{method="POST",route="/v1/identify",status="200"}"#), Some(ok as f64));
    assert_eq!(server.metric("sorbier_images_total"), Some(ok as f64));
    assert_eq!(server.metric(r#"sorbier_http_requests_total{method="POST",route="/v1/identify",status="400"}"#), Some(10.0));
    assert_eq!(server.metric("sorbier_images_in_flight"), Some(0.0));
    assert!(!server.log_text().contains("panicked"), "{}", server.log_text());
    drop(cases);
    assert!(server.stop().success());
}

/// Starts a slow request (a batch through every D4 variant) on another thread and waits until
/// the server counts its images in flight; returns its handle.
fn slow_request<'a>(scope: &'a std::thread::Scope<'a, '_>, server: &'a Server, n: usize) -> std::thread::ScopedJoinHandle<'a, server::Resp> {
    let names: Vec<String> = (0..n).map(|i| format!("t{i:04}.jpg")).collect();
    let x = preprocessed(&names, 64);
    let h = scope.spawn(move || server.post_json("/v2/models/a64/infer", &infer_body("input", n, 64, &x)));
    let start = Instant::now();
    while server.metric("sorbier_images_in_flight") != Some(n as f64) {
        assert!(!h.is_finished(), "the slow request finished before it was seen in flight: make it slower");
        assert!(start.elapsed() < Duration::from_secs(30), "the slow request never showed in flight");
        std::thread::sleep(Duration::from_millis(2));
    }
    h
}

#[test]
fn a_full_queue_answers_503_with_retry_after_then_serves_again() {
    let f = fixtures();
    let server = Server::start(&args(&[&f.a], &["--max-queue", "32", "--max-images", "4", "--tta", "d4"]));
    let good = photo("t0005.jpg");
    std::thread::scope(|scope| {
        let slow = slow_request(scope, &server, 32);
        let r = server.identify(&good, "");
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.header("retry-after"), Some("1"));
        assert!(r.error().contains("busy") && r.error().contains("32 images in flight"), "{}", r.error());
        let done = slow.join().unwrap();
        assert_eq!(done.status, 200, "{}", done.text());
        assert_eq!(done.json()["outputs"][0]["shape"], json!([32, 5]));
    });
    assert_eq!(server.identify(&good, "").status, 200, "served again once the queue drained");
    // A request larger than the whole queue can never be admitted: 413, not 503.
    let names: Vec<String> = (0..33).map(|i| format!("t{i:04}.jpg")).collect();
    let r = server.post_json("/v2/models/a64/infer", &infer_body("input", 33, 64, &preprocessed(&names, 64)));
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.error().contains("33 images in one request"), "{}", r.error());
    assert!(server.stop().success());
}

#[test]
fn sigterm_finishes_the_request_in_flight_and_exits_0() {
    let f = fixtures();
    let mut server = Server::start(&args(&[&f.a], &["--tta", "d4"]));
    let base = server.base.clone();
    let done = std::thread::scope(|scope| {
        let slow = slow_request(scope, &server, 24);
        server.terminate();
        slow.join().unwrap()
    });
    assert_eq!(done.status, 200, "the request in flight was finished: {}", done.text());
    assert_eq!(done.json()["outputs"][0]["shape"], json!([24, 5]));
    let status = server.wait();
    assert!(status.success(), "exit status {status:?}\n{}", server.log_text());
    assert!(server.log_text().contains("shutting down: finishing 24 image(s) in flight"), "{}", server.log_text());
    // Nothing listens any more.
    let r = server::agent().get(format!("{base}/v2/health/live")).call();
    assert!(r.is_err(), "the server still answers after exiting");
}

/// The archive's predictor is tested in tests/predictor.rs; this checks the option values the
/// server refuses before loading anything.
#[test]
fn bad_options_are_refused_with_a_message() {
    let f = fixtures();
    let o = run(&["serve", "--model", s(&f.a), "--max-images", "10", "--max-queue", "4"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--max-images (10) is more than --max-queue (4)"));
    let o = run(&["serve", "--model", s(&f.a), "--name", "bad name", "--device", "cpu", "--listen", "127.0.0.1:0"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("model name \"bad name\""));
    let missing = PathBuf::from("/nonexistent/model.onnx");
    let o = run(&["serve", "--model", s(&missing)]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("does not exist"));
}

/// A lone request does not wait out `--max-delay-ms` for company that cannot come (nothing else
/// is admitted): with a 3 s delay its time in the queue stays far below it. Requests sent
/// together, which do wait for each other, all get their complete answers.
#[test]
fn a_lone_request_is_not_held_for_the_batching_delay() {
    let f = fixtures();
    let server = Server::start(&args(&[&f.a], &["--max-delay-ms", "3000"]));
    let good = photo("t0000.jpg");
    for _ in 0..3 {
        let v = server.identify(&good, "").json();
        let queue = v["timing_ms"]["queue"].as_f64().unwrap();
        assert!(queue < 1500.0, "a lone request waited {queue} ms for a batch: {v}");
        assert_eq!(v["batch_size"], 1, "{v}");
    }
    // Two photos in one multipart request are one job; four such requests at once are four
    // jobs that the batcher may merge (within the 3 s): every answer is complete.
    let (ct, form) = multipart(&[("images", Some("a.jpg"), &good), ("images", Some("b.jpg"), &good)]);
    let answers: Vec<server::Resp> = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..4).map(|_| scope.spawn(|| server.post("/v1/identify", &ct, &form))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &answers {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["images"].as_array().unwrap().len(), 2);
    }
    assert!(server.stop().success());
}

//! A `predictor serve` child process on loopback ephemeral ports (`--listen 127.0.0.1:0`, the
//! addresses read from its log), and a blocking HTTP client (ureq) to talk to it. One helper for
//! the server tests (`#[path = "common/server.rs"] mod server;`) and the load benchmark
//! (`#[path = "../tests/common/server.rs"] mod server;`); it depends on nothing of either.
#![allow(dead_code)]
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The predictor built beside the running test or example: `target/PROFILE/predictor` (tests
/// run from `target/PROFILE/deps`, examples from `target/PROFILE/examples`).
pub fn exe() -> PathBuf {
    let me = std::env::current_exe().expect("the path of the running executable");
    let dir = me.parent().expect("an executable lives in a folder");
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("deps" | "examples") => dir.parent().expect("target/PROFILE"),
        _ => dir,
    };
    profile.join("predictor")
}

/// A running server; killed when dropped (a test that wants a clean stop calls [`Server::stop`]).
pub struct Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// `http://127.0.0.1:PORT` of the gRPC listener, when the command line asked for one.
    pub grpc: Option<String>,
    /// Every line the server wrote to stderr so far.
    pub log: Arc<Mutex<Vec<String>>>,
    agent: ureq::Agent,
}

/// An HTTP response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("status {}: body is not JSON ({e}): {}", self.status, String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The `error` message of a JSON error answer (asserting it is one).
    pub fn error(&self) -> String {
        let v = self.json();
        v["error"].as_str().unwrap_or_else(|| panic!("not an error object: {v}")).to_string()
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(120))).build().into()
}

fn read(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Resp {
    let mut r = r.unwrap_or_else(|e| panic!("HTTP request failed: {e}"));
    let status = r.status().as_u16();
    let headers = r.headers().iter().map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())).collect();
    let body = r.body_mut().with_config().limit(256 << 20).read_to_vec().unwrap();
    Resp { status, headers, body }
}

impl Server {
    /// `predictor serve ARGS --listen 127.0.0.1:0` from this build.
    pub fn start(args: &[&str]) -> Server {
        let mut cmd = Command::new(exe());
        cmd.arg("serve").args(args).args(["--listen", "127.0.0.1:0"]);
        Server::spawn(cmd)
    }

    /// [`Server::try_spawn`], panicking with the server's log if it does not start.
    pub fn spawn(cmd: Command) -> Server {
        Server::try_spawn(cmd).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Starts `cmd` (a `serve` command line with its own `--listen …:0`, and optionally
    /// `--grpc-listen …:0`) and waits until it says where it listens.
    pub fn try_spawn(mut cmd: Command) -> anyhow::Result<Server> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().with_context(|| format!("cannot start {program}"))?;
        let stderr = child.stderr.take().context("the server's stderr is not piped")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = log.clone();
        // Drains stderr for the server's whole life, so that logging never blocks it. The gRPC
        // listener is announced before the HTTP one.
        std::thread::spawn(move || {
            let mut grpc = None;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("grpc listening on ") {
                    grpc = Some(format!("http://{addr}"));
                } else if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send((addr.to_string(), grpc.clone()));
                }
                lines.lock().unwrap().push(line);
            }
        });
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok((base, grpc)) => Ok(Server { child: Some(child), base, grpc, log, agent: agent() }),
            Err(_) => {
                let status = child.try_wait()?;
                let _ = child.kill();
                bail!("the server did not start ({status:?}):\n{}", log.lock().unwrap().join("\n"))
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> Resp {
        read(self.agent.get(self.url(path)).call())
    }

    pub fn post(&self, path: &str, content_type: &str, body: &[u8]) -> Resp {
        read(self.agent.post(self.url(path)).header("content-type", content_type).send(body))
    }

    pub fn post_with(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let mut req = self.agent.post(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        read(req.send(body))
    }

    pub fn post_json(&self, path: &str, v: &serde_json::Value) -> Resp {
        self.post(path, "application/json", &serde_json::to_vec(v).unwrap())
    }

    /// One photo as the raw body of `/v1/identify`.
    pub fn identify(&self, photo: &[u8], query: &str) -> Resp {
        self.post(&format!("/v1/identify{query}"), "image/jpeg", photo)
    }

    /// The value of one sample of `/metrics` (e.g. `sorbier_queue_depth`), if present.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let text = self.get("/metrics").text();
        text.lines().find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')).map(|v| v.trim().parse().unwrap()))
    }

    /// `(sum, count)` of a histogram of `/metrics` (e.g. `sorbier_batch_size`).
    pub fn histogram(&self, name: &str) -> Option<(f64, f64)> {
        Some((self.metric(&format!("{name}_sum"))?, self.metric(&format!("{name}_count"))?))
    }

    /// The server's peak resident memory (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let kib = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).with_context(|| format!("no VmHWM in {path}"))?;
        kib.trim().trim_end_matches("kB").trim().parse().with_context(|| format!("VmHWM {kib:?} is not a number"))
    }

    /// Sends SIGTERM (a clean stop).
    pub fn terminate(&self) {
        assert!(Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().unwrap().success());
    }

    /// SIGTERM, then waits (at most a minute) for the process to exit.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate();
        self.wait()
    }

    pub fn wait(&mut self) -> ExitStatus {
        let child = self.child.as_mut().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "the server did not exit within a minute");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A multipart/form-data body: `(field, file name or None for a text field, content)`.
pub fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "sorbier-test-boundary-7d1f3a";
    let mut body = Vec::new();
    for (name, file, content) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some(f) => body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: image/jpeg\r\n\r\n").as_bytes()),
            None => body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes()),
        }
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

//! The inference thread and dynamic batching. ONNX Runtime sessions need `&mut` to run, so one
//! thread owns the [`Ensemble`] and runs every batch; handlers submit jobs (one request's
//! preprocessed images) through a bounded channel and wait for their rows on a oneshot
//! channel.
//!
//! Batching follows Triton's dynamic batcher: a batch closes when it holds `max_batch` images
//! or when `max_delay` has passed since its oldest job was submitted, whichever comes first —
//! and, unlike Triton, at once when no other admitted image is still being decoded (a lone
//! client's request never waits out the delay for company that cannot come);
//! a job whose client has left is dropped unrun; jobs are never split across rounds unless one alone is larger than `max_batch` (then it
//! runs in chunks). While a batch runs, the next requests are decoded on the worker pool, as
//! `predict` overlaps decoding with inference. Batches go through
//! [`Ensemble::forward_prepared`] and [`weighted_mean`], the code `predict` runs, so a served
//! row equals the `predict` row for the same image.
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use ndarray::{s, Array2, Array4};
use tokio::sync::oneshot;

use super::http::ApiError;
use super::metrics::Metrics;
use super::Ticket;
use crate::engine::ensemble::{weighted_mean, Ensemble};

/// What a job runs: the whole ensemble, or one member alone (its own Open Inference Protocol model).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Ensemble,
    Member(usize),
}

/// One preprocessed image: `tensors[p][v]` is its `3 × s × s` CHW float32 tensor under the
/// ensemble's preprocess `p` and TTA variant `v` (empty for preprocesses the target does not use).
#[derive(Debug)]
pub struct Item {
    pub tensors: Vec<Vec<Vec<f32>>>,
}

/// A job's answer.
#[derive(Debug)]
pub struct Reply {
    /// One row per image, in the ensemble's averaging space (logits or probabilities).
    pub rows: Array2<f32>,
    /// From submission to the start of its batch.
    pub queue_ms: f64,
    /// Inference time of the batch(es) it ran in.
    pub inference_ms: f64,
    /// Images in the (first) batch it ran in.
    pub batch_images: usize,
}

struct Job {
    target: Target,
    items: Vec<Item>,
    submitted: Instant,
    reply: oneshot::Sender<std::result::Result<Reply, String>>,
    /// The request's admission: its images stay counted until the job is answered or dropped.
    _ticket: Ticket,
}

impl Job {
    /// Its client left: nobody waits for the answer.
    fn abandoned(&self) -> bool {
        self.reply.is_closed() || self._ticket.cancelled()
    }
}

/// Dynamic batching settings.
#[derive(Clone, Copy, Debug)]
pub struct BatchConfig {
    /// The most images in one batch (≥ 1).
    pub max_batch: usize,
    /// The longest a job waits for others to join its batch.
    pub max_delay: Duration,
}

/// The inference thread; [`Batcher::join`] waits for it to finish the jobs already submitted.
pub struct Batcher {
    tx: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
    metrics: Arc<Metrics>,
}

/// A handle for submitting jobs (one per server; cheap to clone).
#[derive(Clone)]
pub struct Submitter {
    tx: SyncSender<Job>,
    metrics: Arc<Metrics>,
}

impl Batcher {
    /// Moves `ens` to a new inference thread; at most `capacity` jobs wait in its channel.
    pub fn start(ens: Ensemble, cfg: BatchConfig, capacity: usize, metrics: Arc<Metrics>) -> Result<Batcher> {
        let (tx, rx) = sync_channel(capacity.max(1));
        let worker = Worker { ens, cfg: BatchConfig { max_batch: cfg.max_batch.max(1), ..cfg }, metrics: metrics.clone() };
        let thread = std::thread::Builder::new().name("inference".into()).spawn(move || worker.run(rx)).context("cannot start the inference thread")?;
        Ok(Batcher { tx: Some(tx), thread: Some(thread), metrics })
    }

    pub fn submitter(&self) -> Option<Submitter> {
        self.tx.clone().map(|tx| Submitter { tx, metrics: self.metrics.clone() })
    }

    /// Closes this handle's side of the channel and waits until the thread has answered every
    /// job submitted (it stops once every [`Submitter`] is dropped too).
    pub fn join(mut self) -> Result<()> {
        drop(self.tx.take());
        match self.thread.take().map(JoinHandle::join) {
            Some(Err(_)) => Err(anyhow!("the inference thread panicked")),
            _ => Ok(()),
        }
    }
}

impl Submitter {
    /// Queues `items` for `target`; the receiver gets the rows (or the inference error).
    pub fn submit(&self, target: Target, items: Vec<Item>, ticket: Ticket) -> std::result::Result<oneshot::Receiver<std::result::Result<Reply, String>>, ApiError> {
        let (reply, rx) = oneshot::channel();
        let n = items.len() as i64;
        let job = Job { target, items, submitted: Instant::now(), reply, _ticket: ticket };
        self.metrics.queue_depth.add(n);
        match self.tx.try_send(job) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.metrics.queue_depth.sub(n);
                Err(match e {
                    TrySendError::Full(_) => ApiError::busy("the inference queue is full; retry later", 1),
                    TrySendError::Disconnected(_) => ApiError::busy("the inference thread has stopped (the server is shutting down)", 5),
                })
            }
        }
    }
}

struct Worker {
    ens: Ensemble,
    cfg: BatchConfig,
    metrics: Arc<Metrics>,
}

impl Worker {
    /// Forms rounds until every sender is gone and the channel is empty.
    fn run(mut self, rx: Receiver<Job>) {
        let mut carry: Option<Job> = None;
        loop {
            let first = match carry.take() {
                Some(job) => job,
                None => match rx.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                },
            };
            let deadline = first.submitted + self.cfg.max_delay;
            let mut images = first.items.len();
            let mut round = vec![first];
            while images < self.cfg.max_batch {
                // Jobs already waiting always join; past the deadline nothing more is waited for,
                // nor when every image admitted into the server is already in this round (none is
                // being decoded that could join it: waiting would only add latency).
                let next = match rx.try_recv() {
                    Ok(job) => Ok(job),
                    Err(TryRecvError::Disconnected) => Err(()),
                    Err(TryRecvError::Empty) if self.metrics.in_flight.get() <= images as i64 => Err(()),
                    Err(TryRecvError::Empty) => match deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
                        Some(wait) => rx.recv_timeout(wait).map_err(|_| ()),
                        None => Err(()),
                    },
                };
                let Ok(job) = next else { break };
                if images + job.items.len() > self.cfg.max_batch {
                    carry = Some(job);
                    break;
                }
                images += job.items.len();
                round.push(job);
            }
            self.metrics.queue_depth.sub(images as i64);
            // Jobs whose clients left are dropped unrun (which frees their admission).
            let (abandoned, round): (Vec<Job>, Vec<Job>) = round.into_iter().partition(Job::abandoned);
            drop(abandoned);
            self.run_round(round);
        }
    }

    /// Runs a round's jobs, grouped by target, in chunks of at most `max_batch` images.
    fn run_round(&mut self, mut round: Vec<Job>) {
        let started = Instant::now();
        while let Some(target) = round.first().map(|j| j.target) {
            let (jobs, rest): (Vec<Job>, Vec<Job>) = round.into_iter().partition(|j| j.target == target);
            round = rest;
            self.run_group(target, jobs, started);
        }
    }

    fn run_group(&mut self, target: Target, jobs: Vec<Job>, started: Instant) {
        let items: Vec<&Item> = jobs.iter().flat_map(|j| &j.items).collect();
        let c = self.ens.classes.len();
        let mut rows = Array2::<f32>::zeros((items.len(), c));
        let mut outcome = Ok(());
        let mut first_batch = 0;
        let t = Instant::now();
        for (b, chunk) in items.chunks(self.cfg.max_batch).enumerate() {
            let bt = Instant::now();
            let out = catch_unwind(AssertUnwindSafe(|| self.forward(target, chunk))).unwrap_or_else(|_| Err(anyhow!("inference panicked")));
            match out {
                Ok(out) => {
                    let at = b * self.cfg.max_batch;
                    rows.slice_mut(s![at..at + chunk.len(), ..]).assign(&out);
                }
                Err(e) => {
                    outcome = Err(format!("inference failed: {e:#}"));
                    break;
                }
            }
            self.metrics.batch(chunk.len(), bt.elapsed());
            if b == 0 {
                first_batch = chunk.len();
            }
        }
        let inference_ms = t.elapsed().as_secs_f64() * 1e3;
        let mut at = 0;
        for job in jobs {
            let k = job.items.len();
            let reply = outcome.clone().map(|()| Reply {
                rows: rows.slice(s![at..at + k, ..]).to_owned(),
                queue_ms: started.saturating_duration_since(job.submitted).as_secs_f64() * 1e3,
                inference_ms,
                batch_images: first_batch,
            });
            // The job's admission is given back before its answer goes out: a client that has
            // its answer must find its images' places free.
            let Job { reply: tx, _ticket: ticket, .. } = job;
            drop(ticket);
            // The client may have gone away meanwhile; its rows are simply dropped.
            let _ = tx.send(reply);
            at += k;
        }
    }

    /// The target's `k × c` output for one chunk of images.
    fn forward(&mut self, target: Target, chunk: &[&Item]) -> Result<Array2<f32>> {
        let ens = &mut self.ens;
        let k = chunk.len();
        let variants = chunk.first().and_then(|it| it.tensors.iter().map(Vec::len).max()).unwrap_or(0);
        let stack = |p: usize, v: usize, s: usize| -> Result<Array4<f32>> {
            let mut flat = Vec::with_capacity(k * 3 * s * s);
            for it in chunk {
                flat.extend_from_slice(&it.tensors[p][v]);
            }
            Array4::from_shape_vec((k, 3, s, s), flat).map_err(|e| anyhow!("batch tensor shape: {e}"))
        };
        let crops: Vec<usize> = ens.preprocesses.iter().map(|p| p.crop as usize).collect();
        match target {
            Target::Ensemble => {
                let tensors = crops.iter().enumerate().map(|(p, &s)| (0..variants).map(|v| stack(p, v, s)).collect()).collect::<Result<Vec<Vec<_>>>>()?;
                let members = ens.forward_prepared(&tensors)?;
                Ok(weighted_mean(&members, &ens.weights()))
            }
            Target::Member(m) => {
                let (c, average) = (ens.classes.len(), ens.average);
                let member = ens.members.get_mut(m).ok_or_else(|| anyhow!("no member {m}"))?;
                let p = member.preprocess;
                let tensors = (0..variants).map(|v| stack(p, v, crops[p])).collect::<Result<Vec<_>>>()?;
                member.forward_variants(&tensors, c, average)
            }
        }
    }
}

//! The ordered prefetching worker pool behind both input pipelines: the training/validation
//! [`Loader`](super::Loader) and the predictor's inference pipeline.
//!
//! Jobs `0..num_jobs` are claimed in increasing order from a shared counter by `workers`
//! threads (like a PyTorch `DataLoader` with `num_workers` processes, each worker builds whole
//! batches), travel through a bounded channel, and are put back in order with a small reorder
//! buffer, so results come out in job order whatever the number of workers. A worker may not
//! start job k until the consumer has taken job `k − window` (window = prefetch + workers):
//! memory stays bounded even when one slow job holds up the others. Dropping the pool stops
//! the workers (a job can poll [`Stop`] to give up early).
//!
//! A job that panics does not end the iteration silently: the consumer gets an error for it.
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use anyhow::{anyhow, Result};

/// Threads to use when the user does not say: every core the process may run on.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Set when the pool is dropped; long jobs poll it to give up early.
pub struct Stop(AtomicBool);

impl Stop {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The job function: `job(k, stop)` builds result k, or `None` when it gave up because `stop`
/// was set.
pub type Job<T> = dyn Fn(usize, &Stop) -> Option<T> + Send + Sync;

struct Shared<T> {
    job: Box<Job<T>>,
    num_jobs: usize,
    window: usize,
    next_job: AtomicUsize,
    stop: Stop,
    /// Number of results the consumer has taken; workers wait on it (the reorder window).
    taken: Mutex<usize>,
    taken_cv: Condvar,
}

/// What a worker sends: job k's result, or the panic message of job k.
type Sent<T> = (usize, std::result::Result<T, String>);

impl<T: Send + 'static> Shared<T> {
    fn worker(&self, tx: SyncSender<Sent<T>>) {
        loop {
            if self.stop.is_set() {
                return;
            }
            let k = self.next_job.fetch_add(1, Ordering::Relaxed);
            if k >= self.num_jobs {
                return;
            }
            // Jobs are claimed in increasing order, so the job the consumer waits for is never
            // held back here: no deadlock.
            {
                let Ok(mut taken) = self.taken.lock() else { return };
                while k >= *taken + self.window && !self.stop.is_set() {
                    taken = match self.taken_cv.wait(taken) {
                        Ok(t) => t,
                        Err(_) => return,
                    };
                }
            }
            let result = match catch_unwind(AssertUnwindSafe(|| (self.job)(k, &self.stop))) {
                Ok(Some(r)) => Ok(r),
                Ok(None) => return, // stopped
                Err(panic) => Err(panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into())),
            };
            let failed = result.is_err();
            if tx.send((k, result)).is_err() || failed {
                return; // the pool was dropped, or this worker's state is suspect after a panic
            }
        }
    }
}

/// Iterator over the jobs' results in job order; dropping it stops the workers.
pub struct OrderedPool<T> {
    shared: Arc<Shared<T>>,
    rx: Option<Receiver<Sent<T>>>,
    handles: Vec<JoinHandle<()>>,
    pending: BTreeMap<usize, std::result::Result<T, String>>,
    next: usize,
}

impl<T: Send + 'static> OrderedPool<T> {
    /// Runs `job(0..num_jobs)` on `workers` threads (named `{name}-{i}`), at most `prefetch`
    /// results waiting for the consumer.
    pub fn new(name: &str, num_jobs: usize, workers: usize, prefetch: usize, job: Box<Job<T>>) -> OrderedPool<T> {
        let workers = workers.max(1);
        let prefetch = prefetch.max(1);
        let shared = Arc::new(Shared {
            job,
            num_jobs,
            window: prefetch + workers,
            next_job: AtomicUsize::new(0),
            stop: Stop(AtomicBool::new(false)),
            taken: Mutex::new(0),
            taken_cv: Condvar::new(),
        });
        let (tx, rx) = sync_channel(prefetch);
        let mut handles = Vec::with_capacity(workers);
        for i in 0..workers.min(num_jobs.max(1)) {
            let (s, tx) = (Arc::clone(&shared), tx.clone());
            let spawned = std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || s.worker(tx));
            // A thread that cannot be spawned leaves the others to do its share.
            if let Ok(h) = spawned {
                handles.push(h);
            }
        }
        OrderedPool { shared, rx: Some(rx), handles, pending: BTreeMap::new(), next: 0 }
    }

    /// Number of results this pool yields.
    pub fn len(&self) -> usize {
        self.shared.num_jobs
    }

    pub fn is_empty(&self) -> bool {
        self.shared.num_jobs == 0
    }
}

impl<T: Send + 'static> Iterator for OrderedPool<T> {
    type Item = Result<T>;
    fn next(&mut self) -> Option<Result<T>> {
        if self.next >= self.shared.num_jobs {
            return None;
        }
        loop {
            if let Some(result) = self.pending.remove(&self.next) {
                let k = self.next;
                self.next += 1;
                if let Ok(mut taken) = self.shared.taken.lock() {
                    *taken = self.next;
                }
                self.shared.taken_cv.notify_all();
                // After a failure the iteration ends: the caller stops at the first error.
                if result.is_err() {
                    self.next = self.shared.num_jobs;
                }
                return Some(result.map_err(|msg| anyhow!("worker panicked on batch {k}: {msg}")));
            }
            let received = self.rx.as_ref().map(|rx| rx.recv());
            match received {
                Some(Ok((k, result))) => {
                    self.pending.insert(k, result);
                }
                // Every worker has exited without this job: threads could not be spawned, or
                // the ones left stopped after a panic. Say so rather than end early.
                _ => {
                    let k = self.next;
                    self.next = self.shared.num_jobs;
                    return Some(Err(anyhow!("no worker left to produce batch {k} of {}", self.shared.num_jobs)));
                }
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.shared.num_jobs.saturating_sub(self.next);
        (left, Some(left))
    }
}

impl<T> Drop for OrderedPool<T> {
    fn drop(&mut self) {
        self.shared.stop.0.store(true, Ordering::Relaxed);
        drop(self.shared.taken.lock());
        self.shared.taken_cv.notify_all();
        self.rx = None;
        self.pending.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn results_come_in_job_order_whatever_the_worker_count() {
        for workers in [1, 2, 5] {
            // Early jobs are the slowest, so later ones finish first and must wait.
            let job: Box<Job<usize>> = Box::new(|k, _| {
                std::thread::sleep(Duration::from_millis(((10 - k.min(10)) * 2) as u64));
                Some(k * k)
            });
            let got: Vec<usize> = OrderedPool::new("t", 12, workers, 2, job).map(|r| r.unwrap()).collect();
            assert_eq!(got, (0..12).map(|k| k * k).collect::<Vec<_>>());
        }
    }

    #[test]
    fn at_most_a_window_of_jobs_runs_ahead_of_the_consumer() {
        let started = Arc::new(AtomicUsize::new(0));
        let s = started.clone();
        let job: Box<Job<usize>> = Box::new(move |k, _| {
            s.fetch_max(k + 1, Ordering::SeqCst);
            Some(k)
        });
        let mut pool = OrderedPool::new("t", 100, 2, 1, job);
        assert_eq!(pool.next().unwrap().unwrap(), 0);
        std::thread::sleep(Duration::from_millis(50));
        // window = prefetch + workers = 3 after one result taken: jobs 0..=3 at most.
        assert!(started.load(Ordering::SeqCst) <= 4, "{} jobs started", started.load(Ordering::SeqCst));
    }

    #[test]
    fn a_panicking_job_is_an_error_not_a_short_iteration() {
        let job: Box<Job<usize>> = Box::new(|k, _| if k == 3 { panic!("bad item") } else { Some(k) });
        let got: Vec<Result<usize>> = OrderedPool::new("t", 6, 1, 1, job).collect();
        assert_eq!(got.len(), 4, "jobs 0..=2, then the error for 3, then the end");
        assert_eq!(got[2].as_ref().unwrap(), &2);
        let err = got[3].as_ref().unwrap_err().to_string();
        assert!(err.contains("batch 3") && err.contains("bad item"), "{err}");
    }

    #[test]
    fn dropping_early_stops_long_jobs_through_the_stop_flag() {
        let job: Box<Job<usize>> = Box::new(|k, stop| {
            for _ in 0..1000 {
                if stop.is_set() {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Some(k)
        });
        let mut pool = OrderedPool::new("t", 50, 2, 1, job);
        let t = std::time::Instant::now();
        drop(pool.next());
        drop(pool);
        assert!(t.elapsed() < Duration::from_secs(5), "drop must return promptly");
    }
}

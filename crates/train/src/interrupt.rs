//! Stopping a long run well (burn's `Interrupter` idea): SIGINT (Ctrl-C) or SIGTERM (what
//! `kill`, Slurm's time limit, Kubernetes and `torchrun` send first) asks the training loop to
//! stop; the loop finishes the step it is in, commits a resumable checkpoint and returns
//! [`Interrupted`], which the binary turns into exit status [`EXIT_INTERRUPTED`]. A second
//! signal while the first is being honoured ends the process at once, as a second Ctrl-C does
//! in most tools (the last committed checkpoint is still whole: every commit is atomic).
use std::sync::atomic::{AtomicI32, Ordering};

/// The exit status of a run stopped by a signal after committing its checkpoint: 128 + the
/// signal number is what shells report for a process killed by one; a stopped run is a
/// success of a kind, so it gets its own: EX_TEMPFAIL ("try again": `--resume` continues).
pub const EXIT_INTERRUPTED: u8 = 75;

/// The signal that asked the run to stop (0: none yet).
static REQUESTED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    // Only async-signal-safe calls here: an atomic swap, and _exit on the second signal.
    if REQUESTED.swap(signal, Ordering::SeqCst) != 0 {
        // SAFETY: _exit is async-signal-safe; the status is the shell's for a signal death.
        unsafe { libc::_exit(128 + signal) };
    }
}

/// The run's view of the stop request.
#[derive(Clone, Copy, Debug, Default)]
pub struct Interrupter;

impl Interrupter {
    /// Installs the SIGINT and SIGTERM handlers (once per process is enough; again is harmless).
    pub fn install() -> std::io::Result<Interrupter> {
        for signal in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: `on_signal` only touches an atomic and calls _exit; sigaction with an
            // empty mask and SA_RESTART so that interrupted reads and writes are resumed.
            let rc = unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as *const () as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(signal, &action, std::ptr::null_mut())
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(Interrupter)
    }

    /// The signal that asked the run to stop, if one did.
    pub fn requested(&self) -> Option<i32> {
        match REQUESTED.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }
}

/// The run stopped on request after committing a resumable checkpoint.
#[derive(Debug)]
pub struct Interrupted {
    pub signal: i32,
    /// Completed epochs.
    pub epoch: usize,
    /// Completed steps of the epoch after them (0: stopped between epochs).
    pub step: usize,
    pub run_dir: std::path::PathBuf,
}

/// `SIGINT`, `SIGTERM` or the number.
pub fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        s => format!("signal {s}"),
    }
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = if self.step == 0 { format!("after epoch {}", self.epoch) } else { format!("after step {} of epoch {}", self.step, self.epoch + 1) };
        write!(
            f,
            "stopped by {} {at}; the state is saved in {d}: continue with `trainer train --resume {d}` (same flags)",
            signal_name(self.signal),
            d = self.run_dir.display()
        )
    }
}

impl std::error::Error for Interrupted {}

//! glibc `malloc` settings for libtorch's CPU tensors.
//!
//! libtorch allocates every CPU tensor with the C library's `posix_memalign`. glibc serves
//! blocks above its mmap threshold (at most 32 MiB) with a fresh `mmap` and gives them back
//! with `munmap` when they are freed, and it trims the top of its heaps as soon as they are
//! free. A training step at 224 px allocates and frees activations of tens to hundreds of
//! MiB each time, so every step faults in and zeroes its working set again: on 2 cores an
//! EfficientNet-Lite0 step spent about a third of its time in the kernel's page-fault path
//! (`perf`: `exc_page_fault`, `clear_page_erms`, `memcg_commit_charge`), in PyTorch as in
//! sorbier. PyTorch's CPU tuning guide answers this with jemalloc or tcmalloc through
//! `LD_PRELOAD`; the same effect in-process is two `mallopt` calls, made once at start:
//! no `mmap` for large blocks (`M_MMAP_MAX = 0`) and no trimming (`M_TRIM_THRESHOLD = -1`),
//! so freed activations stay in the process and the next step reuses them.
//!
//! The cost is that the resident size stays at the peak of the run instead of falling between
//! steps, which a training process reaches every step anyway. `SORBIER_MALLOC=default`
//! keeps glibc's defaults. Other C libraries (musl) and other systems are left alone.

/// The environment variable that turns [`tune_for_tensors`] off (`SORBIER_MALLOC=default`).
pub const ENV: &str = "SORBIER_MALLOC";

/// What [`tune_for_tensors`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tuning {
    /// Large blocks come from the heap and freed memory stays in the process.
    Retain,
    /// `SORBIER_MALLOC=default`: glibc's defaults kept.
    Default,
    /// Not glibc: nothing to do.
    Unsupported,
}

/// Keeps freed memory in the process for reuse by the next training step (see the module
/// documentation), unless `SORBIER_MALLOC=default`. Call it first thing in `main`; calling it
/// again is harmless. It covers what the main thread allocates (the training step; its
/// blocks come from the main heap): glibc's per-thread arenas still `mmap` blocks larger than
/// their 64 MiB heaps.
///
/// # Errors
/// When `SORBIER_MALLOC` holds anything but `retain` or `default`, or glibc refuses a setting.
pub fn tune_for_tensors() -> anyhow::Result<Tuning> {
    if wants_retain(std::env::var(ENV).ok().as_deref())? {
        retain()
    } else {
        Ok(Tuning::Default)
    }
}

/// Whether the value of `SORBIER_MALLOC` asks for the tuning (unset, empty or `retain`).
fn wants_retain(value: Option<&str>) -> anyhow::Result<bool> {
    match value {
        None | Some("") | Some("retain") => Ok(true),
        Some("default") => Ok(false),
        Some(other) => anyhow::bail!("{ENV}={other:?}: expected `retain` (the default) or `default` (glibc's own settings)"),
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn retain() -> anyhow::Result<Tuning> {
    // SAFETY: mallopt only changes the allocator's parameters (under its own lock); -1 for
    // M_TRIM_THRESHOLD is glibc's documented "never trim".
    let (mmap, trim) = unsafe { (libc::mallopt(libc::M_MMAP_MAX, 0), libc::mallopt(libc::M_TRIM_THRESHOLD, -1)) };
    if mmap != 1 || trim != 1 {
        anyhow::bail!("glibc refused mallopt (M_MMAP_MAX → {mmap}, M_TRIM_THRESHOLD → {trim}); set {ENV}=default to skip it");
    }
    Ok(Tuning::Retain)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn retain() -> anyhow::Result<Tuning> {
    Ok(Tuning::Unsupported)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The page faults themselves are checked in tests/malloc.rs, on the main thread: the
    // allocations of libtorch's training step are made there, and glibc's per-thread arenas
    // (where test threads allocate) still map blocks above their 64 MiB heap size.

    #[test]
    fn the_setting_is_read_strictly() {
        for on in [None, Some(""), Some("retain")] {
            assert!(wants_retain(on).unwrap(), "{on:?}");
        }
        assert!(!wants_retain(Some("default")).unwrap());
        let err = wants_retain(Some("retian")).unwrap_err().to_string();
        assert!(err.contains("SORBIER_MALLOC=\"retian\"") && err.contains("`default`"), "{err}");
    }
}

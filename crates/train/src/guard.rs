//! Errors instead of panics around libtorch calls.
//!
//! Most of tch's API panics when libtorch throws (an allocation that fails, a shape that does
//! not fit). The training step and the validation pass run under [`guarded`], which turns such
//! a panic into an error that says what happened and, when memory ran out, what to try — and
//! whose [`OutOfMemory`] payload lets the binary exit with its own status.
use std::panic::{catch_unwind, AssertUnwindSafe};

use anyhow::{anyhow, Result};

/// libtorch could not allocate memory (CUDA or CPU).
#[derive(Debug)]
pub struct OutOfMemory {
    /// What was running (e.g. "training step 3 of epoch 1").
    pub what: String,
    /// libtorch's own message, first line.
    pub message: String,
}

impl std::fmt::Display for OutOfMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "out of memory during {}: {}. Try a smaller --batch-size, mixed precision (--amp on CUDA, \
             --amp --amp-dtype bf16 on recent CPUs), --channels-last, or a smaller --image-size; \
             completed epochs are kept (--resume continues from the last one)",
            self.what, self.message
        )
    }
}

impl std::error::Error for OutOfMemory {}

/// True when a libtorch message reports a failed allocation (CUDA's caching allocator, the
/// CPU allocator, cuBLAS/cuDNN workspace allocations).
pub fn is_out_of_memory(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    ["out of memory", "not enough memory", "can't allocate memory", "cannot allocate memory", "cublas_status_alloc_failed", "cudnn_status_alloc_failed"]
        .iter()
        .any(|p| m.contains(p))
}

/// Runs `f`, turning a panic inside it (tch's way of reporting a libtorch exception) into an
/// error naming `what`; allocation failures become [`OutOfMemory`]. The default panic message
/// is silenced while `f` runs, since the error says it all.
pub fn guarded<T>(what: impl Fn() -> String, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    match result {
        Ok(r) => r,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            let first = message.lines().next().unwrap_or("").to_string();
            if is_out_of_memory(&message) {
                Err(anyhow::Error::new(OutOfMemory { what: what(), message: first }))
            } else {
                Err(anyhow!("libtorch failed during {}: {first}", what()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn a_real_failed_allocation_is_an_out_of_memory_error() {
        // 2^42 floats = 16 TiB: libtorch's CPU allocator refuses it on any machine.
        let err = guarded(|| "a test step".into(), || Ok(Tensor::zeros([1i64 << 42], (Kind::Float, tch::Device::Cpu)))).unwrap_err();
        let oom = err.downcast_ref::<OutOfMemory>().unwrap_or_else(|| panic!("not an OutOfMemory: {err:#}"));
        assert_eq!(oom.what, "a test step");
        let text = err.to_string();
        assert!(text.contains("--batch-size") && text.contains("--resume"), "{text}");
    }

    #[test]
    fn other_libtorch_failures_are_errors_naming_the_step() {
        let a = Tensor::zeros([2, 3], (Kind::Float, tch::Device::Cpu));
        let b = Tensor::zeros([4, 5], (Kind::Float, tch::Device::Cpu));
        let err = guarded(|| "validation".into(), || Ok(a.matmul(&b))).unwrap_err();
        assert!(err.downcast_ref::<OutOfMemory>().is_none());
        let text = err.to_string();
        assert!(text.contains("libtorch failed during validation"), "{text}");
        // Ordinary errors pass through unchanged.
        let err = guarded(|| "x".into(), || -> Result<()> { Err(anyhow!("plain")) }).unwrap_err();
        assert_eq!(err.to_string(), "plain");
    }

    #[test]
    fn recognises_the_allocators_messages() {
        assert!(is_out_of_memory("CUDA out of memory. Tried to allocate 2.00 GiB"));
        assert!(is_out_of_memory("DefaultCPUAllocator: not enough memory: you tried to allocate 1 bytes."));
        assert!(is_out_of_memory("CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)"));
        assert!(!is_out_of_memory("mat1 and mat2 shapes cannot be multiplied"));
    }
}

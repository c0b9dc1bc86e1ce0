//! What the Rust side of `csrc/` shares: every shim function takes pointers to the heap
//! `at::Tensor`s that tch tensors hold, returns NULL or a strdup'd C++ exception message, and
//! hands out new tensors as `new at::Tensor` pointers.
use std::ffi::{c_char, c_void, CStr};

use anyhow::{bail, Result};
use tch::Tensor;

extern "C" {
    fn sorbier_free_error(error: *mut c_char);
}

/// Turns a shim's return value into a `Result`: `what()`, then the message's first line (the
/// rest of a C++ exception message is a libtorch stack trace). Frees the message.
pub(crate) fn check(error: *mut c_char, what: impl FnOnce() -> String) -> Result<()> {
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string from strdup, ours to free once.
    let msg = unsafe { CStr::from_ptr(error) }.to_string_lossy().lines().next().unwrap_or("").to_string();
    unsafe { sorbier_free_error(error) };
    bail!("{}: {msg}", what())
}

/// The C++ object behind a tch tensor, as the shim functions take it.
pub(crate) fn raw(t: &Tensor) -> *mut c_void {
    t.as_ptr() as *mut c_void
}

/// Takes ownership of a tensor the shim allocated; tch deletes it on drop.
///
/// # Safety
/// `ptr` must come from `new at::Tensor` in a shim function and be adopted once.
pub(crate) unsafe fn adopt(ptr: *mut c_void) -> Tensor {
    Tensor::from_ptr(ptr as *mut torch_sys::C_tensor)
}

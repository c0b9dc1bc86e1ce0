//! Mixed precision: autocast regions on CPU or CUDA in float16 or bfloat16, through
//! `csrc/autocast.cpp` (tch's `autocast` only toggles CUDA float16). The region is what
//! `with torch.autocast(device_type, dtype):` does, and the previous state is restored when
//! the closure returns or panics.
//!
//! float16 needs loss scaling (the trainer does it) and CUDA here; bfloat16 has float32's
//! range, needs no scaling, and runs on CUDA (Ampere and later) and on CPU (fast only where
//! the CPU has bf16 instructions).
use std::ffi::{c_char, c_int};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::Device;

use super::shim;

extern "C" {
    fn sorbier_autocast_enter(cuda: c_int, bf16: c_int, prev_enabled: *mut c_int, prev_dtype: *mut c_int) -> *mut c_char;
    fn sorbier_autocast_exit(cuda: c_int, prev_enabled: c_int, prev_dtype: c_int) -> *mut c_char;
}

/// The lower precision of a mixed-precision region (`--amp-dtype`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AmpDtype {
    /// float16 with dynamic loss scaling (CUDA).
    #[default]
    Fp16,
    /// bfloat16, no loss scaling (CUDA Ampere or later, or CPU).
    Bf16,
}

sorbier::spelled!(AmpDtype, "autocast dtype", [Fp16, Bf16]);

/// Restores the autocast state on drop (also while unwinding).
struct Region {
    cuda: c_int,
    prev_enabled: c_int,
    prev_dtype: c_int,
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: plain values; the shim catches every C++ exception.
        let e = unsafe { sorbier_autocast_exit(self.cuda, self.prev_enabled, self.prev_dtype) };
        if let Err(e) = shim::check(e, || "leaving autocast".into()) {
            eprintln!("warning: {e:#}");
        }
    }
}

/// Runs `f` with autocast to `dtype` enabled for `device`'s type.
pub fn autocast<T>(device: Device, dtype: AmpDtype, f: impl FnOnce() -> T) -> Result<T> {
    let cuda = device.is_cuda() as c_int;
    let (mut prev_enabled, mut prev_dtype) = (0, 0);
    // SAFETY: the out-pointers are live locals.
    let e = unsafe { sorbier_autocast_enter(cuda, (dtype == AmpDtype::Bf16) as c_int, &mut prev_enabled, &mut prev_dtype) };
    shim::check(e, || format!("cannot enter {dtype} autocast on {device:?}"))?;
    let _region = Region { cuda, prev_enabled, prev_dtype };
    Ok(f())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn cpu_bf16_autocast_runs_matmuls_in_bf16_and_restores_the_state() {
        let a = Tensor::ones([4, 8], (Kind::Float, Device::Cpu));
        let b = Tensor::ones([8, 2], (Kind::Float, Device::Cpu));
        let inside = autocast(Device::Cpu, AmpDtype::Bf16, || a.matmul(&b)).unwrap();
        assert_eq!(inside.kind(), Kind::BFloat16);
        assert_eq!(Vec::<f32>::try_from(inside.to_kind(Kind::Float).view([-1])).unwrap(), vec![8.0; 8]);
        // Nested regions unwind to the outer state, and the outer one to "off".
        let (inner, after_inner) = autocast(Device::Cpu, AmpDtype::Bf16, || {
            let inner = autocast(Device::Cpu, AmpDtype::Bf16, || a.matmul(&b).kind()).unwrap();
            (inner, a.matmul(&b).kind())
        })
        .unwrap();
        assert_eq!((inner, after_inner), (Kind::BFloat16, Kind::BFloat16));
        assert_eq!(a.matmul(&b).kind(), Kind::Float, "autocast is off again");
        // Restored after a panic inside the region, too.
        let caught = std::panic::catch_unwind(|| autocast(Device::Cpu, AmpDtype::Bf16, || panic!("inside")));
        assert!(caught.is_err());
        assert_eq!(a.matmul(&b).kind(), Kind::Float);
    }
}

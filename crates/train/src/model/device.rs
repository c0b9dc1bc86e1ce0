//! `--device auto|cpu|cuda|cuda:N` → `tch::Device`. An explicit CUDA request that cannot be
//! honoured is an error naming what was found; only `auto` may choose the CPU, and the caller
//! prints the choice (no silent fallback).
use anyhow::{bail, Context, Result};
use tch::{Cuda, Device};

/// Parses a device request. `auto` picks `cuda:0` when libtorch sees a GPU, else the CPU.
pub fn select_device(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    match spec.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(if Cuda::is_available() { Device::Cuda(0) } else { Device::Cpu }),
        "cuda" => cuda(0),
        s => match s.strip_prefix("cuda:") {
            Some(n) => {
                let index: usize = n
                    .parse()
                    .with_context(|| format!("device {spec:?}: {n:?} is not a GPU index (expected cuda:N)"))?;
                cuda(index)
            }
            None => bail!("unknown device {spec:?}: expected auto, cpu, cuda or cuda:N"),
        },
    }
}

fn cuda(index: usize) -> Result<Device> {
    if !Cuda::is_available() {
        bail!(
            "cuda:{index} was requested but libtorch sees no usable CUDA device \
             (cuda available: false, device count: {}, cudnn available: {}); use --device cpu or auto",
            Cuda::device_count(),
            Cuda::cudnn_is_available()
        );
    }
    let count = Cuda::device_count().max(0) as usize;
    if index >= count {
        bail!("cuda:{index} was requested but only {count} CUDA device(s) are visible (cuda:0..cuda:{})", count.saturating_sub(1));
    }
    Ok(Device::Cuda(index))
}

/// Native bf16 arithmetic on this CPU (AVX512-BF16 or AMX-BF16, from `/proc/cpuinfo`'s
/// flags): where oneDNN's bf16 kernels run at full speed, so `--amp --amp-dtype bf16` pays
/// (1.6× fp32 for ResNet-18 on this project's AVX512-BF16 development CPU). Elsewhere bf16 is
/// emulated and slower than fp32.
pub fn cpu_has_native_bf16() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").map(|s| cpuinfo_has_native_bf16(&s)).unwrap_or(false)
}

fn cpuinfo_has_native_bf16(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .is_some_and(|l| l.split_whitespace().any(|f| f == "avx512_bf16" || f == "amx_bf16"))
}

/// What the trainer advises for precision and layout on `device` when the user chose none
/// (None: nothing to add).
pub fn precision_advice(device: Device, amp: bool, channels_last: bool) -> Option<String> {
    match device {
        Device::Cpu if !amp && cpu_has_native_bf16() => Some(format!(
            "note: this CPU computes bf16 natively (AVX512-BF16/AMX): --amp --amp-dtype bf16{} trains about 1.6× faster than fp32",
            if channels_last { "" } else { " --channels-last" }
        )),
        Device::Cuda(_) if !amp => Some("note: on CUDA, --amp (fp16, or --amp-dtype bf16 on Ampere or later) with --channels-last uses the tensor cores".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_bf16_flags() {
        assert!(cpuinfo_has_native_bf16("processor : 0\nflags : fpu avx512f avx512_bf16 avx512_vnni\n"));
        assert!(cpuinfo_has_native_bf16("flags : fpu amx_bf16 amx_tile\n"));
        assert!(!cpuinfo_has_native_bf16("flags : fpu avx2 avx512f avx512_vnni\n"));
        assert!(precision_advice(Device::Cpu, true, false).is_none(), "no advice once --amp is chosen");
    }

    #[test]
    fn parses_requests() {
        assert_eq!(select_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(select_device(" CPU ").unwrap(), Device::Cpu);
        let auto = select_device("auto").unwrap();
        assert_eq!(auto, if Cuda::is_available() { Device::Cuda(0) } else { Device::Cpu });
        let err = format!("{:#}", select_device("gpu").unwrap_err());
        assert!(err.contains("unknown device"), "{err}");
        let err = format!("{:#}", select_device("cuda:x").unwrap_err());
        assert!(err.contains("not a GPU index"), "{err}");
        if !Cuda::is_available() {
            let err = format!("{:#}", select_device("cuda").unwrap_err());
            assert!(err.contains("no usable CUDA device") && err.contains("device count: 0"), "{err}");
        } else {
            let err = format!("{:#}", select_device("cuda:999").unwrap_err());
            assert!(err.contains("only"), "{err}");
        }
    }
}

//! `--device auto|cpu|cuda|cuda:N` → `tch::Device`. An explicit CUDA request that cannot be
//! honoured is an error naming what was found; only `auto` may choose the CPU, and the caller
//! prints the choice (no silent fallback).
use anyhow::{bail, Context, Result};
use tch::{Cuda, Device};

use sorbier::arch::Family;

use super::autocast::AmpDtype;

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

/// What bf16 and NHWC buy a family on a CPU with native bf16, as `tools/bench-train.sh`
/// measured them on 2 cores with AMX-BF16, batch 32 (img/s on pre-made tensors).
struct CpuGains {
    /// bf16 autocast against fp32, in the layout advised with it.
    bf16: &'static str,
    /// `--channels-last` on top of bf16; None where it buys nothing.
    channels_last: Option<&'static str>,
}

fn cpu_gains(family: Family) -> CpuGains {
    match family {
        // ResNet-18, 112 px: fp32 ≈ 69, bf16 ≈ 105, bf16 + channels-last ≈ 123 (oneDNN's bf16
        // convolutions run in NHWC).
        Family::ResNet => CpuGains { bf16: "about 1.6-1.8×", channels_last: Some("about 1.2×") },
        // EfficientNet-Lite0, 224 px: fp32 ≈ 17.6, bf16 ≈ 19.5, bf16 + channels-last ≈ 19.5
        // (its depthwise and narrow 1×1 convolutions gain little from the matrix units).
        Family::EfficientNetLite => CpuGains { bf16: "about 1.1×", channels_last: None },
    }
}

/// What the trainer advises for precision and layout on `device`, given the architecture
/// family, the mixed precision it will actually run (`amp`, after the fp16-needs-CUDA check)
/// and whether this CPU computes bf16 natively (None: nothing to add).
pub fn precision_advice(family: Family, device: Device, amp: Option<AmpDtype>, channels_last: bool, native_bf16: bool) -> Option<String> {
    let gains = cpu_gains(family);
    let cl = if channels_last || gains.channels_last.is_none() { "" } else { " --channels-last" };
    match (device, amp) {
        (Device::Cpu, None) if native_bf16 => Some(format!(
            "note: this CPU computes bf16 natively (AVX512-BF16/AMX): --amp --amp-dtype bf16{cl} trains {} faster than fp32 for this network",
            gains.bf16
        )),
        (Device::Cpu, Some(AmpDtype::Bf16)) if !native_bf16 => Some(
            "note: this CPU has no native bf16 (neither AVX512-BF16 nor AMX-BF16 in /proc/cpuinfo): bf16 is emulated and usually slower than fp32; drop --amp".into(),
        ),
        (Device::Cpu, Some(AmpDtype::Bf16)) if !channels_last => gains.channels_last.map(|gain| {
            format!("note: with bf16 on this CPU, --channels-last is {gain} faster still for this network (oneDNN's bf16 convolutions run in NHWC)")
        }),
        (Device::Cuda(_), None) => Some("note: on CUDA, --amp (fp16, or --amp-dtype bf16 on Ampere or later) with --channels-last uses the tensor cores".into()),
        (Device::Cuda(_), Some(_)) if !channels_last => Some("note: on CUDA, mixed precision is fastest with --channels-last (cuDNN's tensor-core kernels want NHWC)".into()),
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
        let bf16 = Some(AmpDtype::Bf16);
        assert!(precision_advice(Family::ResNet, Device::Cpu, None, false, true).is_some_and(|a| a.contains("--amp-dtype bf16 --channels-last")));
        assert!(precision_advice(Family::ResNet, Device::Cpu, None, false, true).is_some_and(|a| a.contains("1.6-1.8×")));
        let lite = precision_advice(Family::EfficientNetLite, Device::Cpu, None, false, true).unwrap();
        assert!(lite.contains("--amp-dtype bf16 trains about 1.1×"), "{lite}");
        assert!(precision_advice(Family::EfficientNetLite, Device::Cpu, bf16, false, true).is_none(), "NHWC buys EfficientNet-Lite nothing on a CPU");
        assert!(precision_advice(Family::ResNet, Device::Cpu, None, false, false).is_none(), "fp32 is right without native bf16");
        assert!(precision_advice(Family::ResNet, Device::Cpu, bf16, false, false).is_some_and(|a| a.contains("emulated")));
        assert!(precision_advice(Family::ResNet, Device::Cpu, bf16, false, true).is_some_and(|a| a.contains("--channels-last is about 1.2×")));
        assert!(precision_advice(Family::ResNet, Device::Cpu, bf16, true, true).is_none(), "nothing to add to the fastest choice");
        assert!(precision_advice(Family::ResNet, Device::Cuda(0), bf16, true, false).is_none());
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

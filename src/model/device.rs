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

#[cfg(test)]
mod tests {
    use super::*;

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

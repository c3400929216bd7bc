//! `--device auto|cpu|cuda|cuda:N` → a tch device, with a clear error when CUDA is asked for and
//! absent.

use crate::error::{Error, Result};
use tch::{Device, Tensor};

pub fn parse_device(spec: &str) -> Result<Device> {
    let s = spec.trim().to_ascii_lowercase();
    let want_cuda = |idx: usize| -> Result<Device> {
        let n = tch::Cuda::device_count() as usize;
        if n == 0 {
            return Err(Error::usage(format!(
                "--device {spec}: CUDA is not available on this machine (libtorch {}); use --device cpu or --device auto",
                libtorch_version()
            )));
        }
        if idx >= n {
            return Err(Error::usage(format!(
                "--device {spec}: only {n} CUDA device(s) found (cuda:0..cuda:{})",
                n - 1
            )));
        }
        Ok(Device::Cuda(idx))
    };
    match s.as_str() {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" | "gpu" => want_cuda(0),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => want_cuda(i),
            _ => Err(Error::usage(format!(
                "--device {spec}: expected auto, cpu, cuda or cuda:N"
            ))),
        },
    }
}

/// `t` on `dev`. A CPU tensor bound for a GPU is page-locked first and copied without blocking
/// the host: the copy queues on the stream ahead of the kernels that read it, and the host goes
/// on preparing the next step. Elsewhere a plain `to_device` (no copy when already there).
pub fn upload(t: &Tensor, dev: Device) -> Tensor {
    if dev.is_cuda() && t.device() == Device::Cpu {
        t.pin_memory(dev).to_device_(dev, t.kind(), true, false)
    } else {
        t.to_device(dev)
    }
}

/// The libtorch version the binary was built against (read by build.rs from torch's version.py).
pub fn libtorch_version() -> &'static str {
    option_env!("ANOMALYNCD_LIBTORCH_VERSION").unwrap_or("unknown")
}

pub fn version_text() -> String {
    format!(
        "anomalyncd {}\nlibtorch {}\nCUDA available: {}{}",
        env!("CARGO_PKG_VERSION"),
        libtorch_version(),
        if tch::Cuda::is_available() {
            "yes"
        } else {
            "no"
        },
        if tch::Cuda::is_available() {
            format!(" ({} device(s))", tch::Cuda::device_count())
        } else {
            String::new()
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_specs() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(parse_device("CPU").unwrap(), Device::Cpu);
        assert!(parse_device("tpu").is_err());
        assert!(parse_device("cuda:x").is_err());
        if !tch::Cuda::is_available() {
            let e = parse_device("cuda").unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().contains("--device cuda"));
        }
    }
}

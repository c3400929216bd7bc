//! `--device auto|cpu|cuda|cuda:N` → a tch device, with a clear error when CUDA is asked for and
//! absent.

use crate::error::{Error, Result};
use tch::Device;

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

/// The libtorch version the binary was built against (read by build.rs from torch's version.py).
/// `--threads N`: libtorch's intra-op threads and rayon's global pool (decoding, MEBin, data
/// preparation) both get `n`. Without the flag both keep their own defaults (libtorch: the
/// physical cores; rayon: the logical ones), so results stay those of earlier runs.
pub fn configure_threads(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::usage("--threads 0: give at least 1"));
    }
    tch::set_num_threads(n as i32);
    // Fails only when the pool already exists, i.e. when called twice; the first call won.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    Ok(())
}

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

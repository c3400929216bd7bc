//! Which floating-point kind the frozen part of the backbone runs in.
//!
//! tch has no CPU autocast, so bf16 is done by hand: the frozen blocks get bf16 copies of their
//! weights and run on bf16 activations; the trainable blocks, the final norm and the projector
//! stay in f32 (their master weights never change kind). fp32 is the reference path.

use tch::{Device, Kind};

use crate::config::Precision;

/// The kind of the frozen prefix for a precision setting on a device. `auto` picks bf16 on CUDA
/// and on CPUs with native bf16 matrix units (AMX-BF16 or AVX512-BF16), f32 elsewhere: without
/// them libtorch's bf16 matmul is far slower than f32 (0.7 vs 30 GFLOP/s measured on an AVX2
/// EPYC).
pub fn frozen_kind(p: Precision, device: Device) -> Kind {
    match p {
        Precision::Fp32 => Kind::Float,
        Precision::Bf16 => Kind::BFloat16,
        Precision::Auto => {
            if device.is_cuda() || (device == Device::Cpu && cpu_has_fast_bf16()) {
                Kind::BFloat16
            } else {
                Kind::Float
            }
        }
    }
}

/// Whether this CPU has native bf16 matrix tiles (Linux x86-64: the `amx_bf16` flag of
/// /proc/cpuinfo). `avx512_bf16` alone (dot products only) is not enough: on such a Xeon the
/// detector's ViT forward ran 1.1x slower in bf16 than in fp32.
pub fn cpu_has_fast_bf16() -> bool {
    static FAST: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FAST.get_or_init(|| {
        std::fs::read_to_string("/proc/cpuinfo")
            .map(|s| cpuinfo_has_fast_bf16(&s))
            .unwrap_or(false)
    })
}

fn cpuinfo_has_fast_bf16(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .is_some_and(|l| l.split_whitespace().any(|f| f == "amx_bf16"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_settings_win_and_auto_follows_the_cpu() {
        assert_eq!(frozen_kind(Precision::Fp32, Device::Cpu), Kind::Float);
        assert_eq!(frozen_kind(Precision::Bf16, Device::Cpu), Kind::BFloat16);
        let auto = frozen_kind(Precision::Auto, Device::Cpu);
        assert_eq!(auto == Kind::BFloat16, cpu_has_fast_bf16());
        assert!(cpuinfo_has_fast_bf16(
            "processor: 0\nflags\t: fpu avx2 amx_bf16 amx_tile\n"
        ));
        assert!(!cpuinfo_has_fast_bf16("flags\t: fpu avx2 fma\n"));
        assert!(!cpuinfo_has_fast_bf16("flags\t: fpu avx512f avx512_bf16\n"));
    }
}

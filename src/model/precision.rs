//! Which floating-point kind the frozen part of the backbone runs in.
//!
//! tch has no CPU autocast, so bf16 is done by hand: the frozen blocks get bf16 copies of their
//! weights and run on bf16 activations; the trainable blocks, the final norm and the projector
//! stay in f32 (their master weights never change kind). fp32 is the reference path.
//!
//! `auto` on the CPU is decided by timing libtorch's GEMMs at the model's own shapes
//! ([`gemm::measure`]), not by CPU flags, because the flags do not predict it: on an Intel Xeon
//! with AVX512-BF16 the detector's ViT ran 1.1× slower in bf16; on an AMD EPYC with AVX512-BF16
//! and no AMX, bf16 GEMMs ran 2.3–2.7× faster; with AMX-BF16 bf16 is faster; with AVX2 alone
//! libtorch's bf16 matmul is about 40× slower. The decision is stored once per machine (CPU
//! model, libtorch version, thread count) in the user's cache folder, so a run does not pay
//! for the measurement again, and memoised per process, so a run never changes its mind
//! halfway (the token cache's key holds the resolved kind).

pub mod auto;
pub mod gemm;

use std::sync::OnceLock;

use tch::{Device, Kind};

use crate::config::Precision;
use auto::{Decision, Machine};

/// A kind as the records name it (`float`, `bfloat16`): `detect.json` and the fingerprints.
pub fn kind_name(kind: Kind) -> String {
    format!("{kind:?}").to_lowercase()
}

/// The kind of the frozen prefix for a precision setting on a device. `fp32` and `bf16` are
/// taken as given; `auto` is bf16 on CUDA, measured on the CPU ([`auto_cpu`]), f32 elsewhere.
pub fn frozen_kind(p: Precision, device: Device) -> Kind {
    resolve(p, device, || auto_cpu().kind)
}

fn resolve(p: Precision, device: Device, auto_cpu: impl FnOnce() -> Kind) -> Kind {
    match p {
        Precision::Fp32 => Kind::Float,
        Precision::Bf16 => Kind::BFloat16,
        Precision::Auto if device.is_cuda() => Kind::BFloat16,
        Precision::Auto if device == Device::Cpu => auto_cpu(),
        Precision::Auto => Kind::Float,
    }
}

/// What `auto` runs in on this CPU: measured at most once per process (or read from the
/// machine's stored decision) and logged at info level the first time.
pub fn auto_cpu() -> &'static Decision {
    static DECISION: OnceLock<Decision> = OnceLock::new();
    DECISION.get_or_init(|| {
        let machine = Machine::this();
        // Unit tests must not write into the user's cache folder; they test `decide` directly.
        let store = if cfg!(test) {
            None
        } else {
            machine.store_dir()
        };
        let busy = auto::busy_cores(std::env::var(auto::BUSY_CORES_ENV).ok().as_deref());
        let d = auto::decide(store.as_deref(), &machine, busy, || {
            let t = std::time::Instant::now();
            let (r, others) = crate::threads::others_during(gemm::measure);
            log::debug!(
                "precision auto: GEMMs timed in {:.0} ms, other processes on {:?} cores",
                t.elapsed().as_secs_f64() * 1e3,
                others
            );
            Ok(auto::Measured { rates: r?, others })
        });
        log::info!("{d}");
        d
    })
}

/// Whether bf16 is the faster kind on this CPU (the `auto` decision), for the benchmarks.
pub fn cpu_bf16_is_faster() -> bool {
    auto_cpu().kind == Kind::BFloat16
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn a_forced_precision_is_never_overridden_nor_measured() {
        let measured = Cell::new(false);
        let bf16_faster = || {
            measured.set(true);
            Kind::BFloat16
        };
        let fp32_faster = || {
            measured.set(true);
            Kind::Float
        };
        for dev in [Device::Cpu, Device::Cuda(0)] {
            assert_eq!(resolve(Precision::Fp32, dev, bf16_faster), Kind::Float);
            assert_eq!(resolve(Precision::Bf16, dev, fp32_faster), Kind::BFloat16);
        }
        assert!(!measured.get(), "a forced precision ran the measurement");
    }

    #[test]
    fn auto_measures_on_the_cpu_only() {
        let measured = Cell::new(0);
        let fake = |k: Kind| {
            measured.set(measured.get() + 1);
            k
        };
        assert_eq!(
            resolve(Precision::Auto, Device::Cpu, || fake(Kind::BFloat16)),
            Kind::BFloat16
        );
        assert_eq!(
            resolve(Precision::Auto, Device::Cpu, || fake(Kind::Float)),
            Kind::Float
        );
        assert_eq!(
            resolve(Precision::Auto, Device::Cuda(0), || fake(Kind::Float)),
            Kind::BFloat16
        );
        assert_eq!(
            resolve(Precision::Auto, Device::Mps, || fake(Kind::BFloat16)),
            Kind::Float
        );
        assert_eq!(measured.get(), 2);
    }
}

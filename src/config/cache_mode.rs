//! `training.cache_frozen`: `true`, `false`, or `auto` (the cache where a step is slow, the CPU;
//! fresh views through the whole backbone where it is fast, a GPU).
//!
//! Why `auto`: at equal epochs, uncached training (fresh augmentations every step, as the
//! reference) clustered MTD better than the 4-view cache (README, "What the cache costs"), but
//! on an idle 2-core CPU an uncached 50-epoch MTD run takes about 2 hours against 10 minutes cached.

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tch::Device;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheFrozen {
    /// The reference's training: every step through the whole backbone.
    #[default]
    Off,
    On,
    /// On for a CPU device, off for CUDA.
    Auto,
}

impl CacheFrozen {
    /// Whether a run on `device` trains on the cache.
    pub fn enabled(self, device: Device) -> bool {
        match self {
            Self::On => true,
            Self::Off => false,
            Self::Auto => !device.is_cuda(),
        }
    }
}

impl Serialize for CacheFrozen {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::On => s.serialize_bool(true),
            Self::Off => s.serialize_bool(false),
            Self::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for CacheFrozen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = CacheFrozen;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false or auto")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<CacheFrozen, E> {
                Ok(if v { CacheFrozen::On } else { CacheFrozen::Off })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CacheFrozen, E> {
                match v.to_ascii_lowercase().as_str() {
                    "auto" => Ok(CacheFrozen::Auto),
                    "true" => Ok(CacheFrozen::On),
                    "false" => Ok(CacheFrozen::Off),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_booleans_and_auto_and_writes_them_back() {
        for (text, want) in [
            ("true", CacheFrozen::On),
            ("True", CacheFrozen::On),
            ("false", CacheFrozen::Off),
            ("auto", CacheFrozen::Auto),
        ] {
            let got: CacheFrozen = serde_yaml::from_str(text).unwrap();
            assert_eq!(got, want, "{text}");
            let back: CacheFrozen =
                serde_yaml::from_str(&serde_yaml::to_string(&got).unwrap()).unwrap();
            assert_eq!(back, want);
        }
        let e = serde_yaml::from_str::<CacheFrozen>("sometimes").unwrap_err();
        assert!(e.to_string().contains("true, false or auto"), "{e}");
    }

    #[test]
    fn auto_caches_on_the_cpu_only() {
        assert!(CacheFrozen::Auto.enabled(Device::Cpu));
        assert!(!CacheFrozen::Auto.enabled(Device::Cuda(0)));
        assert!(CacheFrozen::On.enabled(Device::Cuda(0)));
        assert!(!CacheFrozen::Off.enabled(Device::Cpu));
    }
}

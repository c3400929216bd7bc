//! The `precision: auto` decision on the CPU: bf16 when its GEMMs are clearly faster than
//! fp32's, kept in a small JSON file per machine so that later runs reuse it. The file is a
//! convenience: a missing, corrupt or unwritable one only means measuring again.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Kind;

use crate::error::{Error, IoContext, Result};

/// bf16 must be at least this much faster: below it, rounding costs accuracy for a gain that
/// the conversions around the frozen blocks and run-to-run noise can eat.
pub const MIN_SPEEDUP: f64 = 1.3;

/// The stored decision's file name in the cache folder.
pub const FILE: &str = "precision.json";

/// GEMM rates in GFLOP/s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    pub fp32: f64,
    pub bf16: f64,
}

impl Rates {
    fn usable(&self) -> bool {
        [self.fp32, self.bf16]
            .iter()
            .all(|r| r.is_finite() && *r > 0.0)
    }

    fn kind(&self) -> Kind {
        if self.bf16 >= MIN_SPEEDUP * self.fp32 {
            Kind::BFloat16
        } else {
            Kind::Float
        }
    }
}

/// Other processes keeping this many cores busy while the GEMMs are timed make the rates too
/// low to keep: the decision is used for the run but not stored. A stored rate taken beside a
/// build read 23 GFLOP/s on a CPU that does 66 alone, and `discover`'s estimates follow it.
/// [`BUSY_CORES_ENV`] sets another threshold (a machine that is never idle stores anyway).
pub const BUSY_CORES: f64 = 0.5;
/// The environment variable that replaces [`BUSY_CORES`].
pub const BUSY_CORES_ENV: &str = "ANOMALYNCD_PRECISION_BUSY_CORES";

/// The threshold from the environment's [`BUSY_CORES_ENV`] value, if set: a bad value is
/// warned about (naming the variable) and the default kept, since the decision cannot fail.
pub fn busy_cores(value: Option<&str>) -> f64 {
    let Some(v) = value else { return BUSY_CORES };
    match v.trim().parse::<f64>() {
        Ok(x) if x >= 0.0 => x,
        _ => {
            log::warn!(
                "{BUSY_CORES_ENV}={v}: expected a number of cores >= 0 (e.g. 0.5, or 100 to store \
                 whatever the load); using {BUSY_CORES}"
            );
            BUSY_CORES
        }
    }
}

/// One timing of the GEMMs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    pub rates: Rates,
    /// The cores other processes kept busy meanwhile (None where that cannot be seen).
    pub others: Option<f64>,
}

/// What a stored decision must match to be reused: another CPU, libtorch or thread count can
/// turn the ratio around.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    /// `model name` of /proc/cpuinfo; None where there is none (then nothing is stored).
    pub cpu: Option<String>,
    pub libtorch: String,
    pub threads: i64,
}

impl Machine {
    /// This process: the CPU, the libtorch it was built against, libtorch's threads now.
    pub fn this() -> Machine {
        Machine {
            cpu: std::fs::read_to_string("/proc/cpuinfo")
                .ok()
                .and_then(|s| cpu_model(&s)),
            libtorch: crate::device::libtorch_version().to_string(),
            threads: i64::from(tch::get_num_threads()),
        }
    }

    /// The folder to store the decision in (see [`crate::fsutil::user_cache_dir`]); None when
    /// the CPU is unknown, since a decision from some other unknown CPU would be reused.
    pub fn store_dir(&self) -> Option<PathBuf> {
        self.cpu.as_ref().and(crate::fsutil::user_cache_dir())
    }
}

fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == "model name").then(|| value.trim().to_string())
        })
        .filter(|m| !m.is_empty())
}

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Timed in this process; `saved` is where the decision went (None: not stored).
    Measured {
        saved: Option<PathBuf>,
    },
    /// Timed in this process while other processes kept `others` cores busy: used for this
    /// run, not stored.
    Busy {
        others: f64,
    },
    Stored(PathBuf),
}

/// The kind `auto` runs the frozen blocks in, with the rates it was decided by.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub kind: Kind,
    pub rates: Rates,
    pub threads: i64,
    pub source: Source,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "precision auto: {} (bf16 {:.0} GFLOP/s, fp32 {:.0} GFLOP/s, {} thread{}; ",
            kind_name(self.kind),
            self.rates.bf16,
            self.rates.fp32,
            self.threads,
            if self.threads == 1 { "" } else { "s" }
        )?;
        match &self.source {
            Source::Measured { saved: None } => write!(f, "measured)"),
            Source::Measured { saved: Some(p) } => write!(f, "measured, saved in {})", p.display()),
            Source::Busy { others } => write!(
                f,
                "measured beside other work keeping {others:.1} cores busy: not stored, timed \
                 again next run; {BUSY_CORES_ENV} sets that threshold)"
            ),
            Source::Stored(p) => write!(f, "stored in {})", p.display()),
        }
    }
}

fn kind_name(k: Kind) -> &'static str {
    if k == Kind::BFloat16 {
        "bf16"
    } else {
        "fp32"
    }
}

/// The file's content.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    cpu: String,
    libtorch: String,
    threads: i64,
    fp32_gflops: f64,
    bf16_gflops: f64,
    precision: Choice,
    /// The rows the fp32 rate was timed at: files from before it was always the full size
    /// (0 here) hold a probe's lower rate, which `discover`'s estimates would inherit.
    #[serde(default)]
    fp32_rows: i64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Choice {
    Fp32,
    Bf16,
}

/// The decision for `machine`: the one stored in `store` (a folder) when it was made on the
/// same CPU model, libtorch and thread count; otherwise `measure`'s, then stored there unless
/// other processes kept `busy_cores` ([`BUSY_CORES`]) or more busy meanwhile. A failing
/// measurement gives fp32 (logged at debug, not stored).
pub fn decide(
    store: Option<&Path>,
    machine: &Machine,
    busy_cores: f64,
    measure: impl FnOnce() -> Result<Measured>,
) -> Decision {
    let path = store.map(|d| d.join(FILE));
    if let Some(p) = &path {
        match load(p, machine) {
            Ok(Some(d)) => return d,
            Ok(None) => {}
            Err(e) => log::debug!("precision auto: not using {}: {e}", p.display()),
        }
    }
    let (rates, others) = match measure() {
        Ok(m) if m.rates.usable() => (m.rates, m.others),
        Ok(m) => {
            log::debug!("precision auto: unusable rates {:?}; fp32", m.rates);
            return fallback(machine);
        }
        Err(e) => {
            log::debug!("precision auto: the GEMM timing failed ({e}); fp32");
            return fallback(machine);
        }
    };
    let kind = rates.kind();
    if let Some(others) = others.filter(|&o| o >= busy_cores) {
        return Decision {
            kind,
            rates,
            threads: machine.threads,
            source: Source::Busy { others },
        };
    }
    let saved = path.filter(|p| match save(p, machine, rates, kind) {
        Ok(()) => true,
        Err(e) => {
            log::debug!("precision auto: decision not stored: {e}");
            false
        }
    });
    Decision {
        kind,
        rates,
        threads: machine.threads,
        source: Source::Measured { saved },
    }
}

fn fallback(machine: &Machine) -> Decision {
    Decision {
        kind: Kind::Float,
        rates: Rates {
            fp32: f64::NAN,
            bf16: f64::NAN,
        },
        threads: machine.threads,
        source: Source::Measured { saved: None },
    }
}

/// The stored decision when it applies to `machine`; Ok(None) when there is none or it is
/// another machine's.
fn load(path: &Path, machine: &Machine) -> Result<Option<Decision>> {
    let text = match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        r => r.at(path)?,
    };
    let s: Stored = serde_json::from_str(&text).map_err(|e| Error::input(path, e.to_string()))?;
    let rates = Rates {
        fp32: s.fp32_gflops,
        bf16: s.bf16_gflops,
    };
    if !rates.usable() {
        return Err(Error::input(path, "rates are not positive numbers"));
    }
    if s.fp32_rows != super::gemm::ROWS {
        log::debug!(
            "precision auto: {} timed fp32 at {} rows, not {}; measuring again",
            path.display(),
            s.fp32_rows,
            super::gemm::ROWS
        );
        return Ok(None);
    }
    let same = machine.cpu.as_deref() == Some(s.cpu.as_str())
        && machine.libtorch == s.libtorch
        && machine.threads == s.threads;
    if !same {
        log::debug!(
            "precision auto: {} was measured on {} (libtorch {}, {} threads); measuring again",
            path.display(),
            s.cpu,
            s.libtorch,
            s.threads
        );
        return Ok(None);
    }
    Ok(Some(Decision {
        kind: match s.precision {
            Choice::Fp32 => Kind::Float,
            Choice::Bf16 => Kind::BFloat16,
        },
        rates,
        threads: s.threads,
        source: Source::Stored(path.to_path_buf()),
    }))
}

fn save(path: &Path, machine: &Machine, rates: Rates, kind: Kind) -> Result<()> {
    let Some(cpu) = &machine.cpu else {
        return Err(Error::runtime("unknown CPU model"));
    };
    let s = Stored {
        cpu: cpu.clone(),
        libtorch: machine.libtorch.clone(),
        threads: machine.threads,
        fp32_gflops: rates.fp32,
        bf16_gflops: rates.bf16,
        precision: if kind == Kind::BFloat16 {
            Choice::Bf16
        } else {
            Choice::Fp32
        },
        fp32_rows: super::gemm::ROWS,
    };
    let json = serde_json::to_string_pretty(&s).map_err(|e| Error::runtime(e.to_string()))?;
    crate::fsutil::atomic_write(path, json.as_bytes())
}

#[cfg(test)]
#[path = "auto_tests.rs"]
mod tests;

//! Helpers shared by the benchmarks (included with `#[path]`, as benches are separate crates).

/// Peak resident memory since the last reset, in MiB (Linux; 0 elsewhere).
pub fn peak_rss_mib() -> f64 {
    anomalyncd::logging::peak_rss_mib().unwrap_or(0.0)
}

/// Resets the kernel's peak-RSS counter to the current RSS.
pub fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

//! Logging to stderr and, once a run folder is known, to its `log.txt`; progress bars that do not
//! garble the log. Hand-written because it is small and needs to share the terminal with indicatif.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use log::{Level, LevelFilter, Log, Metadata, Record};

struct Logger {
    start: Instant,
    file: Mutex<Option<File>>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();
static BARS: OnceLock<MultiProgress> = OnceLock::new();

fn bars() -> &'static MultiProgress {
    BARS.get_or_init(MultiProgress::new)
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level() && metadata.target().starts_with("anomalyncd")
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = match record.level() {
            Level::Error => format!("error: {}", record.args()),
            Level::Warn => format!("warning: {}", record.args()),
            _ => format!("{}", record.args()),
        };
        bars().suspend(|| eprintln!("{line}"));
        if let Ok(mut guard) = self.file.lock() {
            if let Some(f) = guard.as_mut() {
                let t = self.start.elapsed().as_secs_f64();
                let _ = writeln!(f, "[{t:9.2}s {:5}] {}", record.level(), record.args());
            }
        }
    }

    fn flush(&self) {
        if let Ok(mut guard) = self.file.lock() {
            if let Some(f) = guard.as_mut() {
                let _ = f.flush();
            }
        }
    }
}

/// Installs the logger; `verbose`/`quiet` are the counts of -v / -q.
pub fn init(verbose: u8, quiet: u8) {
    let level = match (verbose, quiet) {
        (0, 0) => LevelFilter::Info,
        (1, _) => LevelFilter::Debug,
        (v, _) if v >= 2 => LevelFilter::Trace,
        (_, 1) => LevelFilter::Warn,
        _ => LevelFilter::Error,
    };
    let logger = LOGGER.get_or_init(|| Logger {
        start: Instant::now(),
        file: Mutex::new(None),
    });
    let _ = log::set_logger(logger);
    log::set_max_level(level);
    if quiet > 0 {
        bars().set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
}

/// From now on the log also goes to `path` (appended), e.g. the run folder's `log.txt`.
pub fn add_log_file(path: &Path) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    if let Some(l) = LOGGER.get() {
        if let Ok(mut g) = l.file.lock() {
            *g = Some(f);
        }
    }
    Ok(())
}

pub fn flush() {
    if let Some(l) = LOGGER.get() {
        l.flush();
    }
}

/// A progress bar, hidden when `show` is false.
pub(crate) fn progress_bar(len: usize, what: &str, show: bool) -> indicatif::ProgressBar {
    let pb = progress(len as u64, what);
    if !show {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    pb
}

/// A progress bar over `len` items, hidden when stderr is not a terminal or with -q.
pub fn progress(len: u64, what: &str) -> ProgressBar {
    let pb = bars().add(ProgressBar::new(len));
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>12} [{bar:30}] {pos}/{len} {msg} ({rate}, eta {eta})",
        )
        .expect("static template")
        .with_key(
            "rate",
            |st: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&rate_text(st.per_sec()));
            },
        )
        .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}

/// `12 s`, `3 min`, `1 h 5 min`.
pub fn duration_text(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..=89 => format!("{s} s"),
        90..=3599 => format!("{} min", (s + 30) / 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600 + 30) / 60),
    }
}

/// A rate with at most one decimal (indicatif's `{per_sec}` prints four): `12/s`, `3.4/s`, and
/// below one item a second the seconds per item, `2.5 s/it`.
pub fn rate_text(per_sec: f64) -> String {
    if !per_sec.is_finite() || per_sec <= 0.0 {
        "-/s".to_string()
    } else if per_sec >= 10.0 {
        format!("{per_sec:.0}/s")
    } else if per_sec >= 1.0 {
        format!("{per_sec:.1}/s")
    } else {
        format!("{:.1} s/it", 1.0 / per_sec)
    }
}

/// The process's peak resident memory so far in MiB (`VmHWM` of `/proc/self/status`), for the
/// run summaries; None where there is no such file (off Linux).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&status)
}

/// The process's resident memory now in MiB (`VmRSS`); None off Linux.
pub fn rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_status_kib(&status, "VmRSS:")
}

fn parse_vm_hwm(status: &str) -> Option<f64> {
    parse_status_kib(status, "VmHWM:")
}

fn parse_status_kib(status: &str, key: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rates_have_at_most_one_decimal() {
        use super::rate_text;
        assert_eq!(rate_text(1234.5678), "1235/s");
        assert_eq!(rate_text(3.4567), "3.5/s");
        assert_eq!(rate_text(0.4), "2.5 s/it");
        assert_eq!(rate_text(0.0), "-/s");
        assert_eq!(rate_text(f64::NAN), "-/s");
    }

    #[test]
    fn the_peak_memory_is_read_from_vm_hwm() {
        let status = "Name:\tanomalyncd\nVmPeak:\t 4096 kB\nVmHWM:\t  2048 kB\nVmRSS:\t 1024 kB\n";
        assert_eq!(super::parse_vm_hwm(status), Some(2.0));
        assert_eq!(super::parse_vm_hwm("VmRSS:\t 1024 kB\n"), None);
        assert_eq!(super::parse_status_kib(status, "VmRSS:"), Some(1.0));
        if cfg!(target_os = "linux") {
            assert!(super::peak_rss_mib().is_some_and(|m| m > 0.0));
            // Freed pages handed back: resident memory never above the peak.
            let big = vec![1u8; 64 << 20];
            drop(std::hint::black_box(big));
            crate::malloc::release_freed_memory();
            let (now, peak) = (super::rss_mib().unwrap(), super::peak_rss_mib().unwrap());
            assert!(now > 0.0 && now <= peak, "{now} {peak}");
        }
    }
}

//! The thread policy: `--threads auto` (the default) lets libtorch's intra-op threads follow the
//! cores that other processes leave free; `--threads N` fixes both libtorch's threads and rayon's
//! pool at N.
//!
//! Why: the training step is many small parallel regions, and each waits at its barrier for its
//! slowest thread. With as many threads as cores and one core taken by another process, every
//! region waits for a thread that is not running, and throughput fell to 29 % of idle beside a
//! single busy process (`experiments/thread_probe.sh`). One thread fewer than the cores keeps about
//! 60 %.
//!
//! How: [`tick`], called once per step by the long loops (training, the frozen-prefix cache,
//! evaluation), samples the machine's busy time (`/proc/stat`) and the process's own
//! (`/proc/self/stat`) at most every [`WINDOW`]. What the others used over the window, in cores,
//! rounded, is taken off the core count ([`choose`]). An idle machine keeps libtorch's own count,
//! so results there are those of a fixed count; a run whose machine got busy may differ in the
//! last bits (reductions split differently), which is why a fixed `--threads N` exists.
//!
//! Hand-written: no crate reads another process's CPU share cheaply and portably enough to be
//! worth a dependency; off Linux (no `/proc`) or inside a CPU-limited container (where
//! `/proc/stat` lists more CPUs than this process may use) the policy does nothing.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The shortest window over which the load of other processes is measured.
pub const WINDOW: Duration = Duration::from_secs(2);
/// Clock ticks per second of `/proc/stat` and `/proc/self/stat` (`USER_HZ`, 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

/// `--threads`: `auto`, or a fixed count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadSetting {
    Auto,
    Fixed(usize),
}

impl std::str::FromStr for ThreadSetting {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Self::Auto);
        }
        match s.parse::<usize>() {
            Ok(0) => Err("give at least 1 thread, or `auto`".into()),
            Ok(n) => Ok(Self::Fixed(n)),
            Err(_) => Err(format!(
                "expected a whole number of threads or `auto`, got `{s}`"
            )),
        }
    }
}

/// Applies the setting (once per process, before any parallel work).
pub fn configure(setting: ThreadSetting) -> Result<()> {
    match setting {
        ThreadSetting::Fixed(0) => Err(Error::usage("--threads 0: give at least 1")),
        ThreadSetting::Fixed(n) => {
            tch::set_num_threads(n as i32);
            // Fails only when the pool already exists, i.e. when called twice; the first won.
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global();
            *governor() = None;
            Ok(())
        }
        ThreadSetting::Auto => {
            *governor() = Governor::new();
            Ok(())
        }
    }
}

/// Adjusts libtorch's threads to the free cores when a window has passed (see the module doc).
/// Cheap between windows: one clock read and an uncontended lock.
pub fn tick() {
    let mut g = governor();
    if let Some(gov) = g.as_mut() {
        gov.tick(Instant::now());
    }
}

/// The intra-op threads for `others` cores busy with other processes on `cores` cores, at most
/// `max` (libtorch's own count): the cores left free, at least 1.
pub fn choose(others: f64, cores: usize, max: usize) -> usize {
    let busy = (others.max(0.0) + 0.5).floor() as usize;
    cores.saturating_sub(busy).clamp(1, max.max(1))
}

static GOVERNOR: Mutex<Option<Governor>> = Mutex::new(None);

fn governor() -> std::sync::MutexGuard<'static, Option<Governor>> {
    GOVERNOR.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
struct Governor {
    cores: usize,
    max: usize,
    current: usize,
    last: Option<Sample>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    /// Busy ticks of the whole machine.
    busy: u64,
    /// Ticks of this process (all its threads).
    own: u64,
}

impl Governor {
    /// `None` where the policy cannot see the load (no `/proc`, a CPU-limited container, one core).
    fn new() -> Option<Self> {
        let (_, listed) = parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)?;
        let cores = std::thread::available_parallelism().ok()?.get();
        if listed != cores || cores < 2 {
            log::debug!("thread policy off: {listed} CPUs in /proc/stat, {cores} usable");
            return None;
        }
        let max = tch::get_num_threads().max(1) as usize;
        Some(Self {
            cores,
            max,
            current: max,
            last: None,
        })
    }

    fn sample(at: Instant) -> Option<Sample> {
        let (busy, _) = parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)?;
        let own = parse_self_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
        Some(Sample { at, busy, own })
    }

    fn tick(&mut self, now: Instant) {
        if self.last.is_some_and(|l| now.duration_since(l.at) < WINDOW) {
            return;
        }
        let Some(s) = Self::sample(now) else { return };
        if let Some(want) = self.observe(s) {
            tch::set_num_threads(want as i32);
        }
    }

    /// Takes a sample; returns the new thread count when the window since the last one calls
    /// for a change.
    fn observe(&mut self, s: Sample) -> Option<usize> {
        let l = self.last.replace(s)?;
        let others = others_between(l, s)?;
        let secs = s.at.duration_since(l.at).as_secs_f64();
        let want = choose(others, self.cores, self.max);
        log::debug!("threads: other processes used {others:.2} cores over {secs:.1} s");
        if want == self.current {
            return None;
        }
        log::info!(
            "threads: {} -> {want} (other processes kept {others:.1} of the {} cores busy; \
             --threads N fixes the count)",
            self.current,
            self.cores
        );
        self.current = want;
        Some(want)
    }
}

/// The cores other processes kept busy on average from `a` to `b`; None over no time.
fn others_between(a: Sample, b: Sample) -> Option<f64> {
    let secs = b.at.duration_since(a.at).as_secs_f64();
    (secs > 0.0).then(|| {
        (b.busy.saturating_sub(a.busy) as f64 - b.own.saturating_sub(a.own) as f64)
            / TICKS_PER_S
            / secs
    })
}

/// Runs `f` and says how many cores other processes kept busy meanwhile: for timings that
/// should not be kept when taken beside other work. None where `/proc` cannot tell, as for the
/// policy: no `/proc`, or a CPU-limited container, whose `/proc/stat` counts the host's other
/// tenants. The counters tick every 10 ms, so over a fraction of a second the figure is coarse.
pub fn others_during<T>(f: impl FnOnce() -> T) -> (T, Option<f64>) {
    let seen = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| parse_proc_stat(&t))
        .is_some_and(|(_, listed)| {
            std::thread::available_parallelism().is_ok_and(|n| n.get() == listed)
        });
    if !seen {
        return (f(), None);
    }
    let before = Governor::sample(Instant::now());
    let out = f();
    let after = Governor::sample(Instant::now());
    let others = before.zip(after).and_then(|(a, b)| others_between(a, b));
    (out, others)
}

/// (busy ticks of all CPUs, number of `cpuN` lines) from `/proc/stat`: user + nice + system +
/// irq + softirq + steal (idle and iowait are not busy; guest time is inside user).
fn parse_proc_stat(text: &str) -> Option<(u64, usize)> {
    let mut lines = text.lines();
    let first = lines.next()?;
    let mut f = first.split_whitespace();
    if f.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = f.filter_map(|x| x.parse().ok()).collect();
    if v.len() < 4 {
        return None;
    }
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    let cpus = lines
        .filter(|l| {
            l.strip_prefix("cpu")
                .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count();
    Some((busy, cpus))
}

/// utime + stime (ticks, all threads) from `/proc/self/stat`; the command name in parentheses
/// may hold spaces, so the fields are counted after its closing parenthesis.
fn parse_self_stat(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14 and stime field 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse() {
        assert_eq!("auto".parse::<ThreadSetting>(), Ok(ThreadSetting::Auto));
        assert_eq!("3".parse::<ThreadSetting>(), Ok(ThreadSetting::Fixed(3)));
        assert!("0".parse::<ThreadSetting>().is_err());
        assert!("two".parse::<ThreadSetting>().unwrap_err().contains("two"));
    }

    #[test]
    fn the_free_cores_are_used_never_fewer_than_one_nor_more_than_the_default() {
        // Idle (system noise below half a core): the default count.
        assert_eq!(choose(0.0, 2, 2), 2);
        assert_eq!(choose(0.3, 2, 2), 2);
        // One busy process, squeezed to two thirds of a core by our spinning threads, or whole.
        assert_eq!(choose(0.67, 2, 2), 1);
        assert_eq!(choose(1.0, 2, 2), 1);
        // Everything busy: still one thread.
        assert_eq!(choose(3.0, 2, 2), 1);
        assert_eq!(choose(1.2, 8, 8), 7);
        assert_eq!(choose(2.6, 8, 4), 4);
        assert_eq!(choose(-0.5, 4, 4), 4);
    }

    #[test]
    fn others_are_the_machines_busy_time_less_our_own_over_the_interval() {
        let t0 = Instant::now();
        let at = |ms: u64, busy: u64, own: u64| Sample {
            at: t0 + Duration::from_millis(ms),
            busy,
            own,
        };
        // 0.5 s: the machine busy for 100 ticks, 60 of them ours: 0.8 cores of others.
        let o = others_between(at(0, 1000, 500), at(500, 1100, 560)).unwrap();
        assert!((o - 0.8).abs() < 1e-9, "{o}");
        assert_eq!(others_between(at(0, 0, 0), at(0, 5, 0)), None);
        // Whatever /proc says here, the closure's value comes back.
        let (v, others) = others_during(|| 7);
        assert_eq!(v, 7);
        assert!(others.is_none_or(f64::is_finite));
    }

    #[test]
    fn a_busy_neighbour_takes_a_thread_and_gives_it_back_when_it_stops() {
        let t0 = Instant::now();
        let mut g = Governor {
            cores: 2,
            max: 2,
            current: 2,
            last: None,
        };
        let at = |s: u64, busy: u64, own: u64| Sample {
            at: t0 + Duration::from_secs(s),
            busy,
            own,
        };
        assert_eq!(
            g.observe(at(0, 0, 0)),
            None,
            "the first sample only starts a window"
        );
        // Both cores busy for 2 s, a third of it by another process.
        assert_eq!(g.observe(at(2, 400, 267)), Some(1));
        // Now one core each: no change.
        assert_eq!(g.observe(at(4, 800, 467)), None);
        // The neighbour stopped: our thread alone on the busy core.
        assert_eq!(g.observe(at(6, 1000, 667)), Some(2));
        assert_eq!(g.current, 2);
    }

    #[test]
    fn proc_files_parse() {
        let stat = "cpu  100 5 30 900 7 1 2 3 0 0\ncpu0 50 2 15 450 3 0 1 1 0 0\ncpu1 50 3 15 450 4 1 1 2 0 0\nintr 1 2\n";
        assert_eq!(parse_proc_stat(stat), Some((100 + 5 + 30 + 1 + 2 + 3, 2)));
        assert_eq!(parse_proc_stat("intr 1 2\n"), None);
        let me = "4242 (my (odd) name) R 1 2 3 4 5 6 7 8 9 10 250 40 0 0 20 0 3 0";
        assert_eq!(parse_self_stat(me), Some(290));
        assert_eq!(parse_self_stat("4242 (x) R 1"), None);
        // This machine's own files, where there are any.
        if let Ok(t) = std::fs::read_to_string("/proc/stat") {
            assert!(parse_proc_stat(&t).is_some());
            let own = std::fs::read_to_string("/proc/self/stat").unwrap();
            assert!(parse_self_stat(&own).is_some());
        }
    }
}

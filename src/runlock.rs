//! One process at a time in a run folder. Two runs writing the same checkpoint, stage records
//! and maps would silently corrupt each other, so a command that works in a folder holds an
//! exclusive OS lock on `DIR/.anomalyncd.lock` for as long as it works there; the file names
//! the holder (PID, start time, command) for the message the next process prints.
//!
//! The OS lock, not the file, decides: the kernel releases it when the holder dies, however it
//! dies, so a lock file left by a killed process is recognised as stale (it names a PID but
//! nobody holds its lock) and taken over. `flock` locks belong to an open file description, so
//! a second acquire in the same process conflicts too.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

/// The lock file's name in the locked folder (a dot file: image listings skip it).
pub const LOCK_FILE: &str = ".anomalyncd.lock";

/// Who holds (or held) a lock: the lock file's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    /// Seconds since the Unix epoch.
    #[serde(default)]
    pub started: u64,
    /// What it does there (`discover`, `train`).
    #[serde(default)]
    pub command: String,
    /// Its command line.
    #[serde(default)]
    pub args: Vec<String>,
}

impl Holder {
    fn this_process(what: &str) -> Holder {
        Holder {
            pid: std::process::id(),
            started: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            command: what.to_string(),
            args: std::env::args_os()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
        }
    }

    /// `PID 1234 (discover, started 2026-05-01 16:03:12 UTC)`.
    fn describe(&self) -> String {
        let mut what = Vec::new();
        if !self.command.is_empty() {
            what.push(self.command.clone());
        }
        if self.started > 0 {
            what.push(format!("started {}", utc_text(self.started)));
        }
        match what.is_empty() {
            true => format!("PID {}", self.pid),
            false => format!("PID {} ({})", self.pid, what.join(", ")),
        }
    }
}

/// An exclusive lock on a run folder, released (and its file removed) on drop.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    /// None where the file system cannot lock (the run goes on unguarded, with a warning).
    file: Option<File>,
}

impl RunLock {
    /// Locks `dir` (which must exist) for this process doing `what`. Another live process
    /// holding it is a usage error (exit 2) naming the folder and that process; a lock left by
    /// a process that died is taken over with a warning.
    pub fn acquire(dir: &Path, what: &str) -> Result<RunLock> {
        let (lock, stale) = acquire_as(dir, &Holder::this_process(what))?;
        if let Some(old) = stale {
            log::warn!(
                "{}: taking over the lock of anomalyncd process {}, which ended without releasing it",
                dir.display(),
                old.describe()
            );
        }
        Ok(lock)
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            // Removed while still locked: a process that opened the file meanwhile finds, once
            // it gets the lock, that the path no longer leads to it, and starts over.
            let _ = std::fs::remove_file(&self.path);
            drop(file);
        }
    }
}

/// The lock, and the holder a stale lock file named.
fn acquire_as(dir: &Path, me: &Holder) -> Result<(RunLock, Option<Holder>)> {
    let path = dir.join(LOCK_FILE);
    // Each round loses only to a holder that removed its file between our open and our lock,
    // i.e. one that just finished: a few rounds suffice.
    for _ in 0..10 {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .at(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(in_use(dir, &path)),
            Err(TryLockError::Error(e)) if e.kind() == ErrorKind::Unsupported => {
                log::warn!(
                    "{}: the file system cannot lock files ({e}); nothing stops a second process from working in this folder at the same time",
                    path.display()
                );
                return Ok((RunLock { path, file: None }, None));
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        if !still_linked(&file, &path) {
            continue;
        }
        let stale = read_holder(&mut file);
        let body = serde_json::to_vec_pretty(me).expect("a lock holder serialises");
        let write = |f: &mut File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.seek(SeekFrom::Start(0))?;
            f.write_all(&body)?;
            f.sync_data()
        };
        write(&mut file).at(&path)?;
        return Ok((
            RunLock {
                path,
                file: Some(file),
            },
            stale,
        ));
    }
    Err(Error::runtime(format!(
        "{}: could not lock it (its lock file keeps being replaced); try again",
        dir.display()
    )))
}

/// The error for a folder another process holds, naming that process.
fn in_use(dir: &Path, path: &Path) -> Error {
    // The holder writes its name right after it takes the lock: give it a moment.
    let mut holder = None;
    for _ in 0..25 {
        holder = File::open(path).ok().and_then(|mut f| read_holder(&mut f));
        if holder.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let who = match holder {
        Some(h) => format!("anomalyncd process {}", h.describe()),
        None => format!("another anomalyncd process (see {})", path.display()),
    };
    Error::usage(format!(
        "{} is in use by {who}; wait for it to finish or stop it",
        dir.display()
    ))
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether `path` still names the file we hold open (the previous holder may have removed it).
#[cfg(unix)]
fn still_linked(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Elsewhere an open file cannot be removed, so the path always names it.
#[cfg(not(unix))]
fn still_linked(_file: &File, path: &Path) -> bool {
    path.is_file()
}

/// `2026-05-01 16:03:12 UTC` for seconds since the Unix epoch.
fn utc_text(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_acquire_is_refused_naming_the_holder_until_the_first_is_dropped() {
        let d = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(d.path(), "discover").unwrap();
        assert!(first.path().is_file());
        let e = RunLock::acquire(d.path(), "discover").unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        let msg = e.to_string();
        let pid = format!("PID {}", std::process::id());
        for part in [&d.path().display().to_string(), &pid, "discover", "in use"] {
            assert!(msg.contains(part), "`{part}` missing from: {msg}");
        }
        drop(first);
        assert!(!d.path().join(LOCK_FILE).exists(), "removed on drop");
        let again = RunLock::acquire(d.path(), "train").unwrap();
        drop(again);
    }

    #[test]
    fn a_lock_file_left_by_a_dead_process_is_taken_over() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(LOCK_FILE);
        let dead = Holder {
            pid: 999_999,
            started: 1_700_000_000,
            command: "discover".into(),
            args: vec!["anomalyncd".into(), "discover".into()],
        };
        std::fs::write(&path, serde_json::to_vec(&dead).unwrap()).unwrap();
        let me = Holder::this_process("discover");
        let (lock, stale) = acquire_as(d.path(), &me).unwrap();
        assert_eq!(stale, Some(dead));
        let now: Holder = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(now.pid, std::process::id());
        // Taken over for real: a second acquire is refused with the new holder's PID.
        let msg = RunLock::acquire(d.path(), "discover")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(&format!("PID {}", std::process::id())),
            "{msg}"
        );
        drop(lock);
        // An empty or garbled lock file (a crash while writing it) is no holder either.
        std::fs::write(&path, b"{\"pid\": 12").unwrap();
        let (_lock, stale) = acquire_as(d.path(), &me).unwrap();
        assert_eq!(stale, None);
    }

    #[test]
    fn a_missing_folder_is_an_error_naming_the_lock_file() {
        let d = tempfile::tempdir().unwrap();
        let gone = d.path().join("gone");
        let e = RunLock::acquire(&gone, "train").unwrap_err();
        assert!(e.to_string().contains(LOCK_FILE), "{e}");
    }

    #[test]
    fn utc_text_is_the_civil_date() {
        assert_eq!(utc_text(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_text(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_text(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }
}

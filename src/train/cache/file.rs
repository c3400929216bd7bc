//! The token cache's file: a header naming its key, then the sections at fixed offsets.
//!
//! ```text
//! "ANCDTOK1"  u64 header length  header (JSON)
//! guide of the augmented rows    [N·R, L] u8
//! guide of the plain rows        [N, L] u8
//! augmented rows                 [N·R, L, D] f16
//! plain rows                     [N, L, D] f32
//! "ANCDEND1"
//! ```
//!
//! A file is trusted only when its magic, its key, its exact length and its end marker all
//! agree; it is written under a temporary name and renamed into place when complete, so a
//! killed build or two runs building the same cache at once never leave a half-written file
//! under the final name.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::key::BankKey;
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"ANCDTOK1";
const END: &[u8; 8] = b"ANCDEND1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub digest: String,
    pub key: BankKey,
    /// Tokens per row (class token included) and their width.
    pub tokens: i64,
    pub dim: i64,
}

/// Byte offsets of the sections.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Layout {
    pub guide_aug: u64,
    pub guide_plain: u64,
    pub aug: u64,
    pub plain: u64,
    pub end: u64,
    pub total: u64,
    /// Bytes of one augmented (f16) and one plain (f32) row.
    pub aug_row: u64,
    pub plain_row: u64,
}

impl Layout {
    pub fn new(header_len: u64, items: u64, views: u64, tokens: u64, dim: u64) -> Self {
        let guide_aug = 16 + header_len;
        let guide_plain = guide_aug + items * views * tokens;
        let aug = guide_plain + items * tokens;
        let aug_row = tokens * dim * 2;
        let plain = aug + items * views * aug_row;
        let plain_row = tokens * dim * 4;
        let end = plain + items * plain_row;
        Self {
            guide_aug,
            guide_plain,
            aug,
            plain,
            end,
            total: end + END.len() as u64,
            aug_row,
            plain_row,
        }
    }

    fn of(header: &Header, header_len: u64) -> Self {
        let k = &header.key;
        Self::new(
            header_len,
            k.num_crops as u64,
            k.views as u64,
            header.tokens as u64,
            header.dim as u64,
        )
    }
}

/// The cache file of `key` in `dir`.
pub fn path_in(dir: &Path, key: &BankKey) -> PathBuf {
    dir.join(format!("tokens-{}.bin", key.digest()))
}

/// Bytes the file of `header` takes.
pub fn file_bytes(header: &Header) -> u64 {
    Layout::of(header, header_bytes(header).len() as u64).total
}

fn header_bytes(header: &Header) -> Vec<u8> {
    serde_json::to_vec(header).expect("a cache header serialises")
}

/// A valid cache file of `key`, opened: `Ok(None)` when there is none; `Err(why)` when the file
/// is there but cannot be trusted (truncated, foreign, of another key).
pub fn open(
    path: &Path,
    key: &BankKey,
) -> std::result::Result<Option<(File, Header, Layout)>, String> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot be opened ({e})")),
    };
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut head = [0u8; 16];
    if len < 16 || file.read_exact_at(&mut head, 0).is_err() || &head[..8] != MAGIC {
        return Err("is not an anomalyncd token cache".into());
    }
    let header_len = u64::from_le_bytes(head[8..].try_into().expect("8 bytes"));
    if header_len > len.saturating_sub(16) || header_len > 1 << 20 {
        return Err("is truncated (its header runs past its end)".into());
    }
    let mut text = vec![0u8; header_len as usize];
    file.read_exact_at(&mut text, 16)
        .map_err(|e| format!("cannot be read ({e})"))?;
    let header: Header =
        serde_json::from_slice(&text).map_err(|e| format!("has an unreadable header ({e})"))?;
    if &header.key != key || header.digest != key.digest() {
        return Err("was built for other crops or settings".into());
    }
    let layout = Layout::of(&header, header_len);
    if len != layout.total {
        return Err(format!(
            "is truncated or padded ({len} bytes where {} were expected)",
            layout.total
        ));
    }
    let mut end = [0u8; 8];
    file.read_exact_at(&mut end, layout.end)
        .map_err(|e| format!("cannot be read ({e})"))?;
    if &end != END {
        return Err("was not finished (no end marker)".into());
    }
    Ok(Some((file, header, layout)))
}

/// A cache file being written: under `tmp` until [`Writer::finish`] renames it to `path`.
pub struct Writer {
    pub file: File,
    pub tmp: PathBuf,
    pub path: PathBuf,
    pub layout: Layout,
}

impl Writer {
    pub fn create(path: &Path, header: &Header) -> Result<Self> {
        let text = header_bytes(header);
        let layout = Layout::of(header, text.len() as u64);
        let name = path
            .file_name()
            .map_or_else(|| "tokens".into(), |n| n.to_string_lossy().into_owned());
        remove_abandoned(path, &name);
        let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        let w = Self {
            file,
            tmp,
            path: path.to_path_buf(),
            layout,
        };
        w.at(0, MAGIC)?;
        w.at(8, &(text.len() as u64).to_le_bytes())?;
        w.at(16, &text)?;
        Ok(w)
    }

    /// Writes `bytes` at `offset`.
    pub fn at(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all_at(bytes, offset)
            .map_err(|e| Error::io(&self.tmp, e))
    }

    /// Writes the hidden-token sections and the end marker, flushes, and renames the file into
    /// place. `rename` false keeps it under its temporary name (a cache for this run only).
    pub fn finish(
        self,
        guide_aug: &[u8],
        guide_plain: &[u8],
        rename: bool,
    ) -> Result<(File, PathBuf)> {
        self.at(self.layout.guide_aug, guide_aug)?;
        self.at(self.layout.guide_plain, guide_plain)?;
        self.at(self.layout.end, END)?;
        if !rename {
            return Ok((self.file, self.tmp));
        }
        self.file.sync_data().map_err(|e| Error::io(&self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        Ok((self.file, self.path))
    }
}

/// Removes the temporary files that builds of the same cache left when they were killed (their
/// process is gone); a build still running elsewhere keeps its file.
fn remove_abandoned(path: &Path, name: &str) {
    let Some(dir) = path.parent() else { return };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{name}.");
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = file
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".tmp"))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            log::info!(
                "removing {}, left by a build that was stopped",
                e.path().display()
            );
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Bytes free for an unprivileged writer on the file system of `dir`; `None` when unknown.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` a properly sized out-parameter that
    // statvfs fills on success; it is read only then.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so `st` is initialised.
    let st = unsafe { st.assume_init() };
    // The fields are narrower than u64 on some platforms.
    #[allow(clippy::unnecessary_cast)]
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

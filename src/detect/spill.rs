//! The float maps of the test images, spilled to a hidden file in OUT as they are scored: the
//! 8-bit maps need the scale over all of them, and holding them in memory would cost
//! 4 bytes a map pixel with no bound (about 600 KB a map at 448). Removed when dropped.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};

pub(crate) struct MapSpill {
    path: PathBuf,
    file: Mutex<std::fs::File>,
    /// (offset in floats, width, height) of each map, in push order.
    index: Vec<(u64, u32, u32)>,
    next: u64,
    pub(crate) lo: f32,
    pub(crate) hi: f32,
}

impl MapSpill {
    pub(crate) const FILE: &'static str = ".anomalyncd-detect-maps.f32";

    /// A spill file `name` in `dir` ([`Self::FILE`] for the detector's maps; other names for a
    /// second detector's beside them).
    pub(crate) fn create_named(dir: &Path, name: &str) -> Result<MapSpill> {
        let path = dir.join(name);
        let file = std::fs::File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(MapSpill {
            path,
            file: Mutex::new(file),
            index: Vec::new(),
            next: 0,
            lo: f32::INFINITY,
            hi: f32::NEG_INFINITY,
        })
    }

    /// Appends a `width`×`height` map (row-major).
    pub(crate) fn push(&mut self, map: &[f32], width: u32, height: u32) -> Result<()> {
        use std::io::Write;
        debug_assert_eq!(map.len(), (width * height) as usize);
        for &v in map {
            self.lo = self.lo.min(v);
            self.hi = self.hi.max(v);
        }
        let bytes: Vec<u8> = map.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(&bytes).map_err(|e| Error::io(&self.path, e))?;
        self.index.push((self.next, width, height));
        self.next += map.len() as u64;
        Ok(())
    }

    /// Map `i` in push order: its values, width and height.
    pub(crate) fn read(&self, i: usize) -> Result<(Vec<f32>, u32, u32)> {
        use std::io::{Read, Seek, SeekFrom};
        let &(off, w, h) = self.index.get(i).ok_or_else(|| {
            Error::runtime(format!(
                "map {i} of {} requested from {}",
                self.index.len(),
                self.path.display()
            ))
        })?;
        let mut bytes = vec![0u8; (w * h) as usize * 4];
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.seek(SeekFrom::Start(off * 4))
            .and_then(|_| f.read_exact(&mut bytes))
            .map_err(|e| Error::io(&self.path, e))?;
        let v = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok((v, w, h))
    }
}

impl Drop for MapSpill {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_of_different_sizes_come_back_and_the_file_goes() {
        let d = tempfile::tempdir().unwrap();
        let mut s = MapSpill::create_named(d.path(), MapSpill::FILE).unwrap();
        s.push(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3, 2).unwrap();
        s.push(&[-1.0, 9.0], 1, 2).unwrap();
        assert_eq!(s.read(1).unwrap(), (vec![-1.0, 9.0], 1, 2));
        assert_eq!(s.read(0).unwrap().0, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!((s.lo, s.hi), (-1.0, 9.0));
        assert!(s.read(2).is_err());
        let p = d.path().join(MapSpill::FILE);
        assert!(p.is_file());
        drop(s);
        assert!(!p.exists());
    }
}

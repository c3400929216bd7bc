//! Reads PyTorch `torch.save` checkpoints (`.pth`, the zip format of torch >= 1.6): unpickles
//! `<archive>/data.pkl` (see [`crate::model::pickle`]) and reads tensor storages from
//! `<archive>/data/<key>` on demand.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use tch::Tensor;

use crate::error::{Error, Result};
use crate::model::pickle::{unpickle, TensorRef, Value};

/// An opened `.pth` file: its unpickled root object and access to its storages.
pub struct PthFile {
    path: PathBuf,
    archive: zip::ZipArchive<File>,
    /// Folder inside the zip that holds `data.pkl` (the name torch.save chose, e.g. `archive/`).
    prefix: String,
    pub root: Value,
    storages: HashMap<String, Tensor>,
}

impl PthFile {
    /// Opens a zip-format checkpoint and unpickles its `data.pkl`.
    pub fn open(path: &Path) -> Result<PthFile> {
        let bad = |m: String| Error::input(path, m);
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut archive = zip::ZipArchive::new(file).map_err(|e| {
            bad(format!(
                "not a zip-format PyTorch checkpoint ({e}); files saved by torch < 1.6 must be re-saved \
                 with a newer torch or converted to .safetensors"
            ))
        })?;
        let pkl_name = archive
            .file_names()
            .filter_map(|n| n.ok().map(|n| n.into_owned()))
            .filter(|n| n.ends_with("data.pkl"))
            .min_by_key(|n| n.len())
            .ok_or_else(|| bad("zip has no data.pkl: not a torch.save checkpoint".into()))?;
        let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
        if let Ok(mut f) = archive.by_name(&format!("{prefix}byteorder")) {
            let mut order = String::new();
            let _ = f.read_to_string(&mut order);
            if order.trim() == "big" {
                return Err(bad("big-endian checkpoints are not supported".into()));
            }
        }
        let mut bytes = Vec::new();
        archive
            .by_name(&pkl_name)
            .and_then(|mut f| f.read_to_end(&mut bytes).map_err(Into::into))
            .map_err(|e| bad(format!("cannot read {pkl_name}: {e}")))?;
        let root = unpickle(&bytes).map_err(|m| bad(format!("cannot unpickle {pkl_name}: {m}")))?;
        Ok(PthFile {
            path: path.to_path_buf(),
            archive,
            prefix,
            root,
            storages: HashMap::new(),
        })
    }

    /// Materialises a tensor (contiguous, on the CPU, in the file's dtype).
    pub fn tensor(&mut self, t: &TensorRef) -> Result<Tensor> {
        let key = &t.storage.key;
        if !self.storages.contains_key(key) {
            let name = format!("{}data/{key}", self.prefix);
            let mut bytes = Vec::new();
            self.archive
                .by_name(&name)
                .and_then(|mut f| f.read_to_end(&mut bytes).map_err(Into::into))
                .map_err(|e| {
                    Error::input(&self.path, format!("cannot read storage {name}: {e}"))
                })?;
            let elt = t.storage.kind.elt_size_in_bytes() as i64;
            if (bytes.len() as i64) < t.storage.numel * elt {
                return Err(Error::input(
                    &self.path,
                    format!(
                        "storage {name} is truncated ({} bytes for {} elements)",
                        bytes.len(),
                        t.storage.numel
                    ),
                ));
            }
            let n = bytes.len() as i64 / elt;
            let storage =
                Tensor::f_from_data_size(&bytes[..(n * elt) as usize], &[n], t.storage.kind)?;
            self.storages.insert(key.clone(), storage);
        }
        let storage = &self.storages[key];
        let numel = storage.size()[0];
        // The largest element the view touches must lie inside the storage.
        let last = t.offset
            + t.size
                .iter()
                .zip(&t.stride)
                .map(|(s, st)| (s - 1).max(0) * st)
                .sum::<i64>();
        let empty = t.size.contains(&0);
        if t.offset < 0 || (!empty && last >= numel) || t.stride.iter().any(|s| *s < 0) {
            return Err(Error::input(
                &self.path,
                format!(
                    "tensor view {:?} at offset {} lies outside its storage of {numel} elements",
                    t.size, t.offset
                ),
            ));
        }
        Ok(storage
            .f_as_strided(&t.size, &t.stride, t.offset)?
            .contiguous())
    }
}

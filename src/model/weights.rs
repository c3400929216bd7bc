//! Loading pretrained weights into a [`tch::nn::VarStore`]: `.safetensors` files and PyTorch
//! `.pth` state dicts (also DINO training checkpoints that wrap them), matched strictly by name
//! and shape. The format is told by the file's first bytes, not its extension.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use tch::{nn::VarStore, Kind, Tensor};

use crate::error::{Error, IoContext, Result};
use crate::model::pickle::{TensorRef, Value};
use crate::model::pth::PthFile;

/// Keys under which training checkpoints keep the weights, tried in this order (DINO's
/// evaluation code reads `teacher`).
const WRAPPER_KEYS: &[&str] = &["teacher", "state_dict", "model", "module", "student"];

/// Named tensors in file order.
pub type NamedTensors = Vec<(String, Tensor)>;

/// What [`load_into`] did, for logs.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    pub loaded: usize,
    /// File tensors outside the model that were skipped on purpose (a training wrapper's heads,
    /// names listed as ignorable).
    pub skipped: Vec<String>,
}

/// Reads every tensor of a weights file, unwrapping the common checkpoint forms: `{'teacher':
/// …}` / `{'state_dict': …}` / `{'model': …}`, and the `module.` and `backbone.` name prefixes of
/// DINO's training wrappers (when `backbone.` names exist, only those are kept). Returns the
/// tensors and the names dropped with the wrapper's other parts.
pub fn read_tensors(path: &Path) -> Result<(NamedTensors, Vec<String>)> {
    let mut magic = [0u8; 9];
    {
        use std::io::Read;
        let mut f = std::fs::File::open(path).at(path)?;
        let n = f.read(&mut magic).at(path)?;
        if n < magic.len() {
            return Err(Error::input(path, "file too short to be a weights file"));
        }
    }
    let raw = if magic.starts_with(b"PK\x03\x04") {
        read_pth(path)?
    } else if magic[8] == b'{' {
        read_safetensors(path)?
    } else if magic.starts_with(&[0x80, 0x02, 0x8a, 0x0a]) {
        // A pickled magic number first: the pre-zip format of torch.save.
        return Err(Error::input(
            path,
            "a legacy PyTorch file (saved by torch < 1.6); re-save it with a newer torch \
             (torch.save(torch.load(f), f2)) or convert it to .safetensors",
        ));
    } else {
        return Err(Error::input(
            path,
            "not a weights file: expected .safetensors or a PyTorch .pth (zip) state dict",
        ));
    };
    Ok(strip_prefixes(raw))
}

fn read_safetensors(path: &Path) -> Result<NamedTensors> {
    let bytes = std::fs::read(path).at(path)?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::input(path, format!("bad safetensors file: {e}")))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        use safetensors::Dtype as D;
        let kind = match view.dtype() {
            D::F32 => Kind::Float,
            D::F16 => Kind::Half,
            D::BF16 => Kind::BFloat16,
            D::F64 => Kind::Double,
            D::I64 => Kind::Int64,
            D::I32 => Kind::Int,
            D::U8 => Kind::Uint8,
            D::BOOL => Kind::Bool,
            other => {
                return Err(Error::input(
                    path,
                    format!("tensor `{name}` has unsupported dtype {other:?}"),
                ))
            }
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)?;
        out.push((name, t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn read_pth(path: &Path) -> Result<NamedTensors> {
    let mut file = PthFile::open(path)?;
    let refs = find_state_dict(&file.root, 0).map_err(|m| Error::input(path, m))?;
    let mut out = Vec::with_capacity(refs.len());
    for (name, r) in refs {
        out.push((name, file.tensor(&r)?));
    }
    Ok(out)
}

/// The dict of tensors inside a checkpoint's root object.
fn find_state_dict(
    v: &Value,
    depth: usize,
) -> std::result::Result<Vec<(String, TensorRef)>, String> {
    let entries = v
        .dict_entries()
        .ok_or("the checkpoint is not a dict of tensors")?;
    let tensors: Vec<(String, TensorRef)> = entries
        .iter()
        .filter_map(|(k, v)| match v {
            Value::Tensor(t) => Some((k.clone(), t.clone())),
            _ => None,
        })
        .collect();
    if !tensors.is_empty() && tensors.len() * 2 >= entries.len() {
        return Ok(tensors);
    }
    if depth < 3 {
        for key in WRAPPER_KEYS {
            if let Some((_, inner)) = entries.iter().find(|(k, _)| k == key) {
                if let Ok(t) = find_state_dict(inner, depth + 1) {
                    return Ok(t);
                }
            }
        }
    }
    let keys: Vec<&str> = entries.iter().take(8).map(|(k, _)| k.as_str()).collect();
    Err(format!(
        "no state dict found: top-level keys are [{}]; expected a dict of tensors or a checkpoint \
         with a {} entry",
        keys.join(", "),
        WRAPPER_KEYS
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join("/")
    ))
}

/// Drops DataParallel's `module.`; when `backbone.` names exist keeps only those (DINO's
/// MultiCropWrapper holds `backbone` and `head`). Returns the tensors and the skipped names.
fn strip_prefixes(raw: NamedTensors) -> (NamedTensors, Vec<String>) {
    let unmodule: Vec<(String, Tensor)> = raw
        .into_iter()
        .map(|(k, t)| {
            (
                k.strip_prefix("module.").map(str::to_string).unwrap_or(k),
                t,
            )
        })
        .collect();
    if !unmodule.iter().any(|(k, _)| k.starts_with("backbone.")) {
        return (unmodule, Vec::new());
    }
    let mut kept = Vec::new();
    let mut skipped = Vec::new();
    for (k, t) in unmodule {
        match k.strip_prefix("backbone.") {
            Some(s) => kept.push((s.to_string(), t)),
            None => skipped.push(k),
        }
    }
    (kept, skipped)
}

/// Copies a weights file into the variables of `vs` under `prefix` (`""` for all, or e.g.
/// `"backbone"`). Strict: a variable with no tensor, a tensor with no variable (except the names
/// in `ignore`) or a shape mismatch is an error naming the tensor and the file. Floating-point
/// tensors are converted to the variables' kind. `what` names the model in messages.
pub fn load_into(
    vs: &VarStore,
    prefix: &str,
    path: &Path,
    ignore: &[&str],
    what: &str,
) -> Result<LoadReport> {
    let (tensors, mut skipped) = read_tensors(path)?;
    let vars: BTreeMap<String, Tensor> = vs
        .variables()
        .into_iter()
        .filter_map(|(name, t)| {
            if prefix.is_empty() {
                Some((name, t))
            } else {
                name.strip_prefix(prefix)
                    .and_then(|s| s.strip_prefix('.'))
                    .map(|s| (s.to_string(), t))
            }
        })
        .collect();
    let file: HashMap<&str, &Tensor> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();

    let list = |names: &[&str]| -> String {
        let shown: Vec<String> = names.iter().take(5).map(|n| format!("`{n}`")).collect();
        let more = names.len().saturating_sub(5);
        if more > 0 {
            format!("{} (and {more} more)", shown.join(", "))
        } else {
            shown.join(", ")
        }
    };
    let missing: Vec<&str> = vars
        .keys()
        .map(String::as_str)
        .filter(|k| !file.contains_key(k))
        .collect();
    if !missing.is_empty() {
        return Err(Error::input(
            path,
            format!(
                "missing tensor {} for the {what} ({} of {} tensors found); is this a weights file for {what}?",
                list(&missing),
                vars.len() - missing.len(),
                vars.len()
            ),
        ));
    }
    let mut extra: Vec<&str> = Vec::new();
    for (k, _) in &tensors {
        if vars.contains_key(k) {
            continue;
        }
        if ignore.contains(&k.as_str()) {
            skipped.push(k.clone());
        } else {
            extra.push(k);
        }
    }
    if !extra.is_empty() {
        return Err(Error::input(
            path,
            format!("unexpected tensor {} that the {what} does not have; is this a weights file for {what}?", list(&extra)),
        ));
    }
    for (name, var) in &vars {
        let src = file[name.as_str()];
        if src.size() != var.size() {
            return Err(Error::input(
                path,
                format!(
                    "tensor `{name}` has shape {:?} but the {what} expects {:?}; the weights are for another architecture",
                    src.size(),
                    var.size()
                ),
            ));
        }
        if !src.is_floating_point() {
            return Err(Error::input(
                path,
                format!(
                    "tensor `{name}` has dtype {:?}; expected floating-point weights",
                    src.kind()
                ),
            ));
        }
        // A NaN or Inf weight poisons every output; training would only fail epochs later.
        if src.f_isfinite()?.f_all()?.f_int64_value(&[])? == 0 {
            return Err(Error::input(
                path,
                format!("tensor `{name}` holds NaN or Inf values; the weights file is damaged: download or export it again"),
            ));
        }
        let mut var = var.shallow_clone();
        tch::no_grad(|| var.f_copy_(&src.to_kind(var.kind())))?;
    }
    // The caller named these as expected extras (BatchNorm counters, DINOv2's mask token).
    if !skipped.is_empty() {
        log::debug!(
            "{}: ignored {} tensor(s) outside the {what}: {}",
            path.display(),
            skipped.len(),
            {
                let s: Vec<&str> = skipped.iter().map(String::as_str).collect();
                list(&s)
            }
        );
    }
    Ok(LoadReport {
        loaded: vars.len(),
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: f32) -> Tensor {
        Tensor::from_slice(&[v])
    }

    #[test]
    fn nan_or_inf_weights_are_refused_naming_the_tensor_and_file() {
        let d = tempfile::tempdir().unwrap();
        let vs = VarStore::new(tch::Device::Cpu);
        let _w = vs.root().zeros("w", &[3]);
        for bad in [f32::NAN, f32::INFINITY] {
            let p = d.path().join("w.safetensors");
            let bytes: Vec<u8> = [1.0f32, bad, 2.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![3], &bytes)
                    .unwrap();
            std::fs::write(&p, safetensors::serialize([("w", view)], &None).unwrap()).unwrap();
            let e = load_into(&vs, "", &p, &[], "test model").unwrap_err();
            assert_eq!(e.exit_code(), 2);
            let msg = e.to_string();
            assert!(msg.contains("w.safetensors") && msg.contains("`w`") && msg.contains("NaN"));
        }
    }

    #[test]
    fn training_wrappers_keep_only_the_backbone() {
        let raw = vec![
            ("module.backbone.a".to_string(), t(1.0)),
            ("module.head.w".to_string(), t(2.0)),
            ("backbone.b".to_string(), t(3.0)),
        ];
        let (kept, skipped) = strip_prefixes(raw);
        let names: Vec<&str> = kept.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(skipped, ["head.w"]);
        let (plain, skipped) = strip_prefixes(vec![("norm.weight".into(), t(1.0))]);
        assert_eq!(plain[0].0, "norm.weight");
        assert!(skipped.is_empty());
    }
}

//! What determines the frozen-prefix token cache. Everything that changes a cached token is a
//! field of [`BankKey`]; what only changes training (the training seed, K, the epochs, the loss)
//! is not, so runs that differ only there share one cache.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::config::Config;
use crate::data::CropSet;
use crate::digest::Fnv;
use crate::error::{Error, Result};

/// Bumped when the file layout or the way views and tokens are made changes, so that older
/// cache files are rebuilt rather than trusted. 2: token guides are u8 levels (soft guidance),
/// not hidden flags.
pub const FORMAT_VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BankKey {
    pub format: u32,
    /// Digest of the crops in order: each crop's id and the bytes of its image and mask (or
    /// map) files (what guides the blocks of the prefix).
    pub crops: String,
    pub num_crops: usize,
    /// Augmented views per crop (`training.cache_views`), besides the one un-augmented view.
    pub views: usize,
    /// `training.view_seed` (else `experiment.seed`).
    pub view_seed: u64,
    /// `models.grad_from_block`: the tokens entering this block are cached.
    pub block: usize,
    pub backbone: String,
    /// The weights file (absolute path, size, modification time).
    pub weights: Option<String>,
    /// Random weights (tests): the libtorch seed they were drawn with.
    pub random_init_seed: Option<u64>,
    /// The kind the frozen prefix runs in on this device (`models.precision` resolved).
    pub precision: String,
    pub device: String,
    pub image_size: usize,
    /// The mask guidance inside the prefix.
    pub mask_layers: usize,
    pub thin_mask_fallback: bool,
    /// `models.guidance` and its λ ([`crate::model::GuideSettings`]: `hard`, `soft(λ=8)`,
    /// `masked soft(λ=8)`).
    pub guidance: String,
}

impl BankKey {
    /// The key of `set`'s cache under `cfg` with `weights` (the resolved file; `None`: random
    /// weights drawn after `tch::manual_seed(experiment.seed)`) on `device`.
    pub fn new(
        cfg: &Config,
        set: &CropSet,
        weights: Option<&Path>,
        device: Device,
    ) -> Result<Self> {
        let m = &cfg.models;
        Ok(Self {
            format: FORMAT_VERSION,
            crops: crops_digest(set)?,
            num_crops: set.len(),
            views: cfg.training.cache_views,
            view_seed: cfg.training.view_seed(&cfg.experiment),
            block: m.grad_from_block,
            backbone: m.pretrained_backbone.clone(),
            weights: weights.map(file_identity).transpose()?,
            random_init_seed: weights.is_none().then_some(cfg.experiment.seed),
            precision: format!(
                "{:?}",
                crate::model::precision::frozen_kind(m.precision, device)
            ),
            device: if device.is_cuda() { "cuda" } else { "cpu" }.into(),
            image_size: m.image_size,
            mask_layers: m.mask_layers,
            thin_mask_fallback: m.thin_mask_fallback,
            guidance: crate::model::GuideSettings::of(m).to_string(),
        })
    }

    /// The digest that names the cache file.
    pub fn digest(&self) -> String {
        let text = serde_json::to_string(self).expect("a cache key serialises");
        crate::digest::fnv(text.as_bytes())
    }
}

fn crops_digest(set: &CropSet) -> Result<String> {
    let mut h = Fnv::default();
    for item in &set.items {
        h.update(item.id.as_bytes()).update(&[0]);
        // The map, when it guides the prefix instead of the mask.
        for path in [&item.image, item.map.as_ref().unwrap_or(&item.mask)] {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            h.update(&(bytes.len() as u64).to_le_bytes()).update(&bytes);
        }
    }
    Ok(h.hex())
}

/// A weights file's absolute path, size and modification time: a replaced file changes it
/// without reading 100 MB on every run.
fn file_identity(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok(format!(
        "{}|{}|{mtime}",
        crate::fsutil::absolute(path).display(),
        meta.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> BankKey {
        BankKey {
            format: FORMAT_VERSION,
            crops: "0123".into(),
            num_crops: 10,
            views: 8,
            view_seed: 1,
            block: 11,
            backbone: "dinov2_vits14".into(),
            weights: Some("/w|1|2".into()),
            random_init_seed: None,
            precision: "Float".into(),
            device: "cpu".into(),
            image_size: 224,
            mask_layers: 9,
            thin_mask_fallback: true,
            guidance: "hard".into(),
        }
    }

    #[test]
    fn every_field_changes_the_digest() {
        let base = key();
        assert_eq!(base.digest(), key().digest());
        let changes: Vec<fn(&mut BankKey)> = vec![
            |k| k.format += 1,
            |k| k.crops = "4567".into(),
            |k| k.num_crops += 1,
            |k| k.views += 1,
            |k| k.view_seed += 1,
            |k| k.block -= 1,
            |k| k.backbone = "dino_vitb8".into(),
            |k| k.weights = Some("/w|1|3".into()),
            |k| k.random_init_seed = Some(0),
            |k| k.precision = "BFloat16".into(),
            |k| k.device = "cuda".into(),
            |k| k.image_size = 448,
            |k| k.mask_layers = 10,
            |k| k.thin_mask_fallback = false,
            |k| k.guidance = "soft(λ=8)".into(),
        ];
        // One change per field: a new field must get its line here.
        let fields = serde_json::to_value(&base)
            .unwrap()
            .as_object()
            .unwrap()
            .len();
        assert_eq!(changes.len(), fields);
        for change in changes {
            let mut k = key();
            change(&mut k);
            assert_ne!(k.digest(), base.digest(), "{k:?}");
        }
    }

    /// A set of one crop whose image and mask files are in `dir`.
    fn one_crop(dir: &Path) -> (CropSet, std::path::PathBuf) {
        let (img, mask) = (dir.join("a.png"), dir.join("m.png"));
        std::fs::write(&img, b"image").unwrap();
        std::fs::write(&mask, b"mask").unwrap();
        let set = CropSet {
            items: vec![crate::data::CropItem {
                image: img.clone(),
                mask,
                label: Some(0),
                labelled: false,
                score: 1.0,
                id: "x/a.png".into(),
                map: None,
                map_within_mask: false,
            }],
            base_classes: Vec::new(),
            novel_types: vec!["x".into()],
            num_novel_clusters: 1,
        };
        (set, img)
    }

    #[test]
    fn training_only_settings_leave_the_key_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (set, img) = one_crop(dir.path());
        let mut cfg = Config::default();
        cfg.training.view_seed = Some(5);
        let k = |cfg: &Config| BankKey::new(cfg, &set, None, Device::Cpu).unwrap();
        let base = k(&cfg);
        let mut other = cfg.clone();
        other.experiment.seed = 1;
        other.training.epochs = 3;
        other.training.lr = 0.1;
        other.loss.sup_weight = 0.9;
        // Random weights depend on the libtorch seed, so that seed is part of their key.
        assert_eq!(k(&other).random_init_seed, Some(1));
        let mut other_key = k(&other);
        other_key.random_init_seed = base.random_init_seed;
        assert_eq!(other_key, base);
        // The crops' bytes are.
        std::fs::write(&img, b"imagf").unwrap();
        assert_ne!(k(&cfg).crops, base.crops);
    }

    #[test]
    fn guidance_keys_are_those_existing_caches_were_written_with() {
        use crate::config::GuidanceMode;
        let dir = tempfile::tempdir().unwrap();
        let (set, _) = one_crop(dir.path());
        for (mode, want) in [
            (GuidanceMode::Hard, "hard"),
            (GuidanceMode::Soft, "soft(λ=8)"),
            (GuidanceMode::SoftMasked, "masked soft(λ=8)"),
        ] {
            let mut cfg = Config::default();
            cfg.models.guidance = mode;
            let key = BankKey::new(&cfg, &set, None, Device::Cpu).unwrap();
            assert_eq!(key.guidance, want);
        }
    }
}

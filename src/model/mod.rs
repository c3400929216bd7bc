//! The mask-guided ViT backbone, the multi-head projector and weight loading.

pub mod arch;

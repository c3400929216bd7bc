//! Training of the mask-guided ViT and projector (mask-guided representation learning, the
//! reference's `MGRL` step). [`losses`] holds every loss term of one batch.

pub mod cache;
pub mod interrupt;
pub mod losses;
pub mod optim;
pub mod trainer;

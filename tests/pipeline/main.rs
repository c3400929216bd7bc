//! The library's training-data path without the binary: crop sets, augmentations, sampler and
//! loaders ([`data_pipeline`]) and the frozen-prefix token bank ([`frozen_cache`]), on small crop
//! folders written by `data_fixture` (shared with the `data` and `train` benchmarks).

#[path = "../data_fixture/mod.rs"]
mod data_fixture;

mod data_pipeline;
mod frozen_cache;

//! `--cache-dir` / `--no-token-cache`, shared by `train` and `discover`.

use std::path::PathBuf;

use clap::Args;

use anomalyncd::pipeline::TokenCache;

#[derive(Debug, Args)]
pub struct TokenCacheArgs {
    /// Keep the frozen-prefix token cache in DIR, shared by runs: a run with the same crops,
    /// views, view seed and prefix settings reuses it (another training seed, K or epoch count
    /// does not rebuild it). Default: RUN/token_cache.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Build the token cache for this run only (in memory, or a file removed at the end).
    #[arg(long, conflicts_with = "cache_dir")]
    pub no_token_cache: bool,
}

impl TokenCacheArgs {
    pub fn setting(&self) -> TokenCache {
        match (&self.cache_dir, self.no_token_cache) {
            (_, true) => TokenCache::Off,
            (Some(d), false) => TokenCache::Dir(d.clone()),
            (None, false) => TokenCache::InRunFolder,
        }
    }
}

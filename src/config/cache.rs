//! The block cache: its memory tiers and its disk tier.

use super::{FileConfig, StoreConfig};
use crate::cli::ServeArgs;

#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// `cache_bytes`: the tail tier's memory (recently written and read object chunks).
    pub memory_bytes: usize,
    /// `replay_cache_bytes`: memory for reads the tail cache misses (replays and
    /// catch-up reads).
    pub replay_memory_bytes: usize,
    /// `cache_disk_bytes`: the disk tier under `<data_dir>/cache` (0: memory only).
    pub disk_bytes: usize,
}

impl CacheConfig {
    /// The disk tier's default follows the store's kind.
    pub fn load(args: &ServeArgs, file: &FileConfig, store: &StoreConfig) -> Self {
        // A disk tier in front of a store that is itself a local directory would only
        // copy it; it pays off in front of S3.
        let default_disk_bytes = if store.url.starts_with("file:") {
            0
        } else {
            1 << 30
        };
        Self {
            memory_bytes: args.cache_bytes.or(file.cache_bytes).unwrap_or(256 << 20),
            replay_memory_bytes: args
                .replay_cache_bytes
                .or(file.replay_cache_bytes)
                .unwrap_or(64 << 20),
            disk_bytes: args
                .cache_disk_bytes
                .or(file.cache_disk_bytes)
                .unwrap_or(default_disk_bytes),
        }
    }
}

//! The fetch path's cache of object chunks, keyed by (object, position), the unit the
//! index points at. Two budgets, so that a replay never evicts the tail:
//!
//! - the **tail** tier (memory): the flush path writes every uploaded chunk through it, so
//!   tail reads never touch the store;
//! - the **replay** tier (a foyer hybrid cache: its own memory, then a local disk
//!   directory): everything read that was not in the tail tier, i.e. catch-up reads,
//!   replays of an archive from the start or a timestamp, footers. However much of the
//!   log a replay reads, it churns only this tier's memory.
//!
//! Concurrent misses for one chunk are coalesced into a single ranged GET.

use std::future::Future;
use std::path::PathBuf;

use bytes::Bytes;
use foyer::{
    BlockEngineConfig, Cache, CacheBuilder, DeviceBuilder, FsDeviceBuilder, HybridCache,
    HybridCacheBuilder, HybridCachePolicy, LruConfig,
};

#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// The tail tier.
    pub memory_bytes: usize,
    /// The replay tier's memory.
    pub replay_memory_bytes: usize,
    /// Where the disk tier lives, and its size; None or 0 bytes: memory only.
    pub disk_dir: Option<PathBuf>,
    pub disk_bytes: usize,
    /// The largest chunk the disk tier holds (it allocates in blocks of this size).
    pub max_chunk_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot open the cache in {dir}: {message} (check --data-dir is writable, or set cache_disk_bytes = 0)")]
pub struct CacheError {
    dir: String,
    message: String,
}

pub struct BlockCache {
    tail: Cache<String, Bytes>,
    replay: HybridCache<String, Bytes>,
}

fn key(object: &str, position: u64) -> String {
    format!("{object}@{position}")
}

impl BlockCache {
    pub async fn open(config: CacheOptions) -> Result<Self, CacheError> {
        let tail = CacheBuilder::new(config.memory_bytes.max(1 << 20))
            // Few shards: each gets an equal slice of the capacity, and chunks are large
            // (about a megabyte), so many shards leave some full while others sit empty.
            .with_shards(2)
            // Plain LRU: foyer's default keeps 90% for entries read twice, which would leave
            // write-through chunks (read once, by tail consumers) only a tenth of memory.
            .with_eviction_config(LruConfig {
                high_priority_pool_ratio: 0.0,
            })
            .with_weighter(|k: &String, v: &Bytes| k.len() + v.len())
            .build();
        let builder = HybridCacheBuilder::new()
            .with_name("strata-replay")
            // Chunks loaded from the store go to disk as they arrive, so a catch-up
            // reader re-reading them (or another consumer group) stays local.
            .with_policy(HybridCachePolicy::WriteOnInsertion)
            .memory(config.replay_memory_bytes.max(1 << 20))
            .with_shards(2)
            .with_eviction_config(LruConfig {
                high_priority_pool_ratio: 0.0,
            })
            .with_weighter(|k: &String, v: &Bytes| k.len() + v.len())
            .storage();
        let dir = config.disk_dir.clone().unwrap_or_default();
        let error = |message: String| CacheError {
            dir: dir.display().to_string(),
            message,
        };
        let builder = match &config.disk_dir {
            Some(disk_dir) if config.disk_bytes > 0 => {
                std::fs::create_dir_all(disk_dir).map_err(|e| error(e.to_string()))?;
                let device = FsDeviceBuilder::new(disk_dir)
                    .with_capacity(config.disk_bytes)
                    .build()
                    .map_err(|e| error(e.to_string()))?;
                let block = config.max_chunk_bytes.next_power_of_two().max(1 << 20);
                builder.with_engine_config(BlockEngineConfig::new(device).with_block_size(block))
            }
            _ => builder,
        };
        let replay = builder.build().await.map_err(|e| error(e.to_string()))?;
        Ok(Self { tail, replay })
    }

    /// A cache for tests: memory only.
    pub async fn in_memory(bytes: usize) -> Self {
        let config = CacheOptions {
            memory_bytes: bytes,
            replay_memory_bytes: bytes,
            disk_dir: None,
            disk_bytes: 0,
            max_chunk_bytes: 1 << 20,
        };
        match Self::open(config).await {
            Ok(cache) => cache,
            Err(e) => panic!("memory cache: {e}"),
        }
    }

    /// Write-through from the flush path: the tail tier, memory only. Tail readers read it
    /// while it is hot; writing every produced byte to the disk tier too would double the
    /// broker's disk writes for data that is in the store already.
    pub fn insert(&self, object: &str, position: u64, data: Bytes) {
        self.tail.insert(key(object, position), data);
    }

    pub fn contains(&self, object: &str, position: u64) -> bool {
        let key = key(object, position);
        self.tail.contains(&key) || self.replay.contains(&key)
    }

    /// The chunk from the tail tier, else from the replay tier's memory or disk, else
    /// from `load` (called once however many readers miss at the same time) into the
    /// replay tier.
    pub async fn get_or_load<F, E>(
        &self,
        object: &str,
        position: u64,
        load: F,
    ) -> Result<Bytes, String>
    where
        F: Future<Output = Result<Bytes, E>> + Send + 'static,
        E: std::fmt::Display,
    {
        use crate::telemetry::{CACHE_HITS, CACHE_HIT_BYTES, CACHE_MISSES};
        let key = key(object, position);
        if let Some(hit) = self.tail.get(&key) {
            metrics::counter!(CACHE_HITS, "tier" => "tail").increment(1);
            metrics::counter!(CACHE_HIT_BYTES, "tier" => "tail")
                .increment(hit.value().len() as u64);
            return Ok(hit.value().clone());
        }
        metrics::counter!(CACHE_MISSES, "tier" => "tail").increment(1);
        // Whether this reader's own load ran: a reader coalesced onto another's load
        // counts as a hit, as it sent no request of its own.
        let loaded = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let loading = loaded.clone();
        let entry = self
            .replay
            .get_or_fetch(&key, || async move {
                loading.store(true, std::sync::atomic::Ordering::Relaxed);
                load.await.map_err(|e| anyhow::anyhow!("{e}"))
            })
            .await
            .map_err(|e| e.to_string())?;
        if loaded.load(std::sync::atomic::Ordering::Relaxed) {
            metrics::counter!(CACHE_MISSES, "tier" => "replay").increment(1);
        } else {
            metrics::counter!(CACHE_HITS, "tier" => "replay").increment(1);
            metrics::counter!(CACHE_HIT_BYTES, "tier" => "replay")
                .increment(entry.value().len() as u64);
        }
        Ok(entry.value().clone())
    }

    /// Bytes held by each tier's memory now: (tail, replay).
    pub fn usage(&self) -> (usize, usize) {
        (self.tail.usage(), self.replay.memory().usage())
    }

    /// Each tier's memory budget: (tail, replay).
    pub fn capacity(&self) -> (usize, usize) {
        (self.tail.capacity(), self.replay.memory().capacity())
    }

    pub async fn close(&self) {
        let _ = self.replay.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn misses_load_once_and_hits_after() {
        let cache = BlockCache::in_memory(1 << 20).await;
        let got = cache
            .get_or_load("a", 0, async {
                Ok::<_, String>(Bytes::from_static(b"xyz"))
            })
            .await
            .unwrap();
        assert_eq!(&got[..], b"xyz");
        assert!(cache.contains("a", 0));
        let again = cache
            .get_or_load("a", 0, async { Err::<Bytes, _>("must not load twice") })
            .await
            .unwrap();
        assert_eq!(&again[..], b"xyz");
        let err = cache
            .get_or_load("b", 0, async { Err::<Bytes, _>("store down") })
            .await
            .unwrap_err();
        assert!(err.contains("store down"), "{err}");
    }

    #[tokio::test]
    async fn disk_tier_serves_what_memory_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlockCache::open(CacheOptions {
            memory_bytes: 1 << 20,
            replay_memory_bytes: 1 << 20,
            disk_dir: Some(dir.path().to_path_buf()),
            disk_bytes: 64 << 20,
            max_chunk_bytes: 1 << 20,
        })
        .await
        .unwrap();
        // Chunks loaded from the store go to disk as well as memory.
        for i in 0..8u64 {
            let chunk = Bytes::from(vec![i as u8; 400 << 10]);
            cache
                .get_or_load("o", i, async move { Ok::<_, String>(chunk) })
                .await
                .unwrap();
        }
        // Give the disk writer a moment, then read the first chunk back.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let first = cache
            .get_or_load("o", 0, async { Err::<Bytes, _>("not from the store") })
            .await
            .unwrap();
        assert_eq!(first.len(), 400 << 10);
        assert!(first.iter().all(|b| *b == 0));
        cache.close().await;
    }
}

#[cfg(test)]
mod write_through_tests {
    use super::*;

    #[tokio::test]
    async fn write_through_chunks_are_served_from_memory() {
        let cache = BlockCache::in_memory(256 << 20).await;
        for i in 0..200u64 {
            cache.insert("o", i, Bytes::from(vec![1u8; 1 << 20]));
        }
        let mut misses = 0;
        for i in 0..200u64 {
            let r = cache
                .get_or_load("o", i, async { Err::<Bytes, _>("miss") })
                .await;
            if r.is_err() {
                misses += 1;
            }
        }
        assert_eq!(misses, 0);
    }

    #[tokio::test]
    async fn a_replay_never_evicts_the_tail() {
        let cache = BlockCache::open(CacheOptions {
            memory_bytes: 16 << 20,
            replay_memory_bytes: 4 << 20,
            disk_dir: None,
            disk_bytes: 0,
            max_chunk_bytes: 1 << 20,
        })
        .await
        .unwrap();
        for i in 0..8u64 {
            cache.insert("tail", i, Bytes::from(vec![1u8; 1 << 20]));
        }
        // A replay reads 64 MiB, four times the whole memory budget, from the store.
        for i in 0..64u64 {
            cache
                .get_or_load("archive", i, async {
                    Ok::<_, String>(Bytes::from(vec![2u8; 1 << 20]))
                })
                .await
                .unwrap();
        }
        for i in 0..8u64 {
            let hit = cache
                .get_or_load("tail", i, async { Err::<Bytes, _>("the tail was evicted") })
                .await;
            assert!(hit.is_ok(), "tail chunk {i}: {hit:?}");
        }
    }
}

//! The stats file: `<data-dir>/stats.json`, rewritten atomically every few seconds with
//! the sizes of the metadata and what the store and the background work did. The soak
//! benchmark reads it; so can an operator (`cat`), until metrics have an endpoint.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::cleaner::CleanerCounters;
use super::compaction::CompactionCounters;
use super::gc::GcCounters;
use crate::metadata::shipping::ShippedMark;
use crate::metadata::state::StateStats;
use crate::metadata::Metadata;
use crate::storage::store::{Purpose, RequestKind};
use crate::storage::ObjectStorage;
use crate::telemetry::ConnectionGauges;

const EVERY: Duration = Duration::from_secs(5);
/// Encoding the whole state to measure it is not free: do it less often.
const STATE_BYTES_EVERY: u32 = 6;

#[derive(Serialize)]
struct Stats<'a> {
    time_ms: i64,
    #[serde(flatten)]
    state: &'a StateStats,
    state_bytes: u64,
    snapshot_bytes: u64,
    store_puts: u64,
    store_gets: u64,
    store_deletes: u64,
    store_lists: u64,
    /// Requests by purpose and kind: `{"data": {"put": n, ...}, ...}`.
    store_requests: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    compaction_jobs: u64,
    compaction_refused: u64,
    compaction_failed: u64,
    compaction_bytes_read: u64,
    compaction_bytes_written: u64,
    compaction_shared_objects: u64,
    cleaner_passes: u64,
    cleaner_refused: u64,
    cleaner_failed: u64,
    cleaner_bytes_read: u64,
    cleaner_bytes_written: u64,
    cleaner_batches_rewritten: u64,
    gc_deleted: u64,
    open_connections: u64,
    inflight_request_bytes: u64,
    /// Heap in use and memory the allocator holds (jemalloc; 0 without it).
    heap_allocated_bytes: u64,
    heap_resident_bytes: u64,
}

/// What the stats file reads from.
pub struct StatsSources {
    pub metadata: Arc<Metadata>,
    pub storage: ObjectStorage,
    pub compaction: Arc<CompactionCounters>,
    pub cleaner: Arc<CleanerCounters>,
    pub gc: Arc<GcCounters>,
    pub shipped: Arc<ShippedMark>,
    pub connections: Arc<ConnectionGauges>,
}

/// Rewrites the stats file at `path` every few seconds, forever.
pub async fn run(path: PathBuf, sources: StatsSources) {
    let StatsSources {
        metadata,
        storage,
        compaction,
        cleaner,
        gc,
        shipped,
        connections,
    } = sources;
    let mut round = 0u32;
    let mut state_bytes = 0u64;
    loop {
        tokio::time::sleep(EVERY).await;
        let (stats, state) = metadata.read(|s| {
            let take = round.is_multiple_of(STATE_BYTES_EVERY);
            (s.stats(), take.then(|| s.clone()))
        });
        round = round.wrapping_add(1);
        if let Some(state) = state {
            // The clone shares partitions with the live state; encoding happens off the
            // runtime's threads.
            let encoded = tokio::task::spawn_blocking(move || {
                postcard::to_stdvec(&state).map_or(0, |v| v.len() as u64)
            })
            .await;
            state_bytes = encoded.unwrap_or(state_bytes);
        }
        let load = Ordering::Relaxed;
        let counters = storage.counters();
        let (heap_allocated_bytes, heap_resident_bytes) = crate::telemetry::heap();
        let stats = Stats {
            time_ms: crate::clock::now_ms(),
            state: &stats,
            state_bytes,
            snapshot_bytes: shipped.bytes.load(load),
            store_puts: counters.puts.load(load),
            store_gets: counters.gets.load(load),
            store_deletes: counters.deletes.load(load),
            store_lists: counters.lists.load(load),
            store_requests: Purpose::ALL
                .iter()
                .map(|p| {
                    let kinds = RequestKind::ALL
                        .iter()
                        .map(|k| (k.name(), counters.of(*p, *k)))
                        .collect();
                    (p.name(), kinds)
                })
                .collect(),
            compaction_jobs: compaction.jobs.load(load),
            compaction_refused: compaction.refused.load(load),
            compaction_failed: compaction.failed.load(load),
            compaction_bytes_read: compaction.bytes_read.load(load),
            compaction_bytes_written: compaction.bytes_written.load(load),
            compaction_shared_objects: compaction.shared_objects.load(load),
            cleaner_passes: cleaner.passes.load(load),
            cleaner_refused: cleaner.refused.load(load),
            cleaner_failed: cleaner.failed.load(load),
            cleaner_bytes_read: cleaner.bytes_read.load(load),
            cleaner_bytes_written: cleaner.bytes_written.load(load),
            cleaner_batches_rewritten: cleaner.batches_rewritten.load(load),
            gc_deleted: gc.deleted.load(load),
            open_connections: connections.open.load(load),
            inflight_request_bytes: connections.inflight_request_bytes.load(load),
            heap_allocated_bytes,
            heap_resident_bytes,
        };
        let Ok(json) = serde_json::to_vec_pretty(&stats) else {
            continue;
        };
        let tmp = path.with_extension("json.tmp");
        let written = tokio::fs::write(&tmp, &json).await;
        if written.is_ok() {
            let _ = tokio::fs::rename(&tmp, &path).await;
        }
    }
}

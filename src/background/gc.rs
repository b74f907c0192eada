//! Garbage collection through the state machine: objects whose last index reference went
//! (compacted away, deleted topics, records deleted) wait in the state's deletion queue
//! for a grace period that covers reads in flight, then the Raft leader deletes them from
//! the store and proposes [`Command::ForgetObjects`]. A crash between the two only
//! repeats a delete, which is harmless.
//!
//! An object is deleted only once the snapshot shipped to the bucket no longer refers to
//! it, so a cluster rebuilt from the bucket never points at a deleted object.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::metadata::shipping::{self, ShippedMark};
use crate::metadata::state::Command;
use crate::metadata::Metadata;
use crate::storage::ObjectStorage;

/// Objects forgotten per Raft command.
const FORGET_BATCH: usize = 1000;

/// What garbage collection did, for the stats file and the metrics.
#[derive(Debug, Default)]
pub struct GcCounters {
    /// Garbage objects deleted.
    pub deleted: AtomicU64,
}

/// Runs collection passes forever (on the leader). It deletes only what the bucket's
/// newest snapshot (`shipped`) no longer names.
pub async fn run(
    metadata: Arc<Metadata>,
    storage: ObjectStorage,
    grace: Duration,
    shipped: Arc<ShippedMark>,
    counters: Arc<GcCounters>,
) {
    let every = (grace / 4).clamp(Duration::from_millis(100), Duration::from_secs(15));
    let mut last_forced_ship: Option<tokio::time::Instant> = None;
    loop {
        tokio::time::sleep(every).await;
        if !metadata.is_leader() {
            continue;
        }
        // Garbage past its grace that only waits for the bucket's snapshot to catch up:
        // ship one now (at most once per grace period) rather than wait for the
        // shipper's next round.
        let now_ms = crate::clock::now_ms();
        let grace_ms = grace.as_millis() as i64;
        let shipped_ms = shipped.clock_ms.load(Ordering::Acquire);
        let waiting = metadata.read(|s| {
            let due = s.objects().garbage_due(now_ms, grace_ms, i64::MAX).len();
            due > s.objects().garbage_due(now_ms, grace_ms, shipped_ms).len()
        });
        let may_ship = last_forced_ship.is_none_or(|t| t.elapsed() >= grace);
        if waiting && may_ship {
            last_forced_ship = Some(tokio::time::Instant::now());
            if let Err(e) = shipping::ship_and_record(&metadata, &storage, &shipped).await {
                warn!(error = %e, "shipping the snapshot before collecting garbage failed");
            }
        }
        let shipped_ms = shipped.clock_ms.load(Ordering::Acquire);
        match collect_once(&metadata, &storage, grace, shipped_ms).await {
            Ok(0) => {}
            Ok(n) => {
                counters.deleted.fetch_add(n as u64, Ordering::Relaxed);
                info!(deleted = n, "garbage objects deleted");
            }
            Err(e) => warn!(error = %e, "garbage collection failed; will retry"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error(transparent)]
    Metadata(#[from] crate::metadata::MetadataError),
}

/// One pass: deletes the garbage whose grace is over and which the shipped snapshot
/// (taken at state clock `shipped_clock_ms`) already counts as garbage.
pub async fn collect_once(
    metadata: &Metadata,
    storage: &ObjectStorage,
    grace: Duration,
    shipped_clock_ms: i64,
) -> Result<usize, GcError> {
    let now_ms = crate::clock::now_ms();
    let due = metadata.read(|s| {
        s.objects()
            .garbage_due(now_ms, grace.as_millis() as i64, shipped_clock_ms)
    });
    let mut forgotten = 0;
    for batch in due.chunks(FORGET_BATCH) {
        for (_, name) in batch {
            storage.delete(name).await?;
        }
        let ids = batch.iter().map(|(id, _)| *id).collect();
        metadata.propose(Command::ForgetObjects { ids }).await?;
        forgotten += batch.len();
    }
    Ok(forgotten)
}

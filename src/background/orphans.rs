//! The slow sweep for true orphans: objects under `segments/` or `compacted/` that the
//! state does not know at all (an upload whose commit never came, a compaction output
//! whose swap never came), deleted once older than a grace period. Objects the state
//! knows, live or garbage, are never touched here: garbage goes through [`super::gc`].
//! A commit arriving after half the grace is refused by the state machine, so the sweep
//! can never delete an object whose commit is on its way. A flush object that carried
//! metadata log entries (`metadata/ride.rs`) waits, besides, for a snapshot to cover them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use super::compaction::COMPACTED_PREFIX;
use crate::metadata::shipping::{self, SEGMENTS_PREFIX};
use crate::metadata::Metadata;
use crate::storage::{ObjectStorage, StorageError};

pub async fn collect_orphans(metadata: Arc<Metadata>, storage: ObjectStorage, grace: Duration) {
    // Scan a few times per grace period, but not more than every few seconds.
    let every = (grace / 2).clamp(Duration::from_secs(1), Duration::from_secs(300));
    loop {
        tokio::time::sleep(every).await;
        // The leader's state is the most advanced, so it never mistakes a freshly
        // committed object for an orphan.
        if !metadata.is_leader() {
            continue;
        }
        match collect_once(&metadata, &storage, grace).await {
            Ok(0) => {}
            Ok(deleted) => info!(deleted, "orphan objects deleted"),
            Err(e) => warn!(error = %e, "orphan collection failed; will retry"),
        }
    }
}

/// One pass; returns how many objects were deleted.
pub async fn collect_once(
    metadata: &Metadata,
    storage: &ObjectStorage,
    grace: Duration,
) -> Result<usize, StorageError> {
    let now = SystemTime::now();
    let mut deleted = 0;
    let old_enough =
        |written: SystemTime| now.duration_since(written).is_ok_and(|age| age >= grace);
    // Read once per pass, and only if needed.
    let mut newest = None;
    for prefix in [SEGMENTS_PREFIX, COMPACTED_PREFIX] {
        for object in storage.list(prefix).await? {
            if !old_enough(object.last_modified)
                || metadata.read(|s| s.objects().is_known(&object.path))
            {
                continue;
            }
            // A flush object that carried metadata log entries also serves recovery
            // until a snapshot covers them.
            if shipping::parse_ride_path(&object.path).is_some() {
                if newest.is_none() {
                    newest = Some(shipping::newest_snapshot(storage).await?);
                }
                if !shipping::ride_covered(&object.path, newest.flatten()) {
                    continue;
                }
            }
            storage.delete(&object.path).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

//! The slow sweep for true orphans: objects under `segments/` or `compacted/` that the
//! state does not know at all (an upload whose commit never came, a compaction output
//! whose swap never came), deleted once older than a grace period. Objects the state
//! knows, live or garbage, are never touched here: garbage goes through [`super::gc`].
//! A commit arriving after half the grace is refused by the state machine, so the sweep
//! can never delete an object whose commit is on its way.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use super::compaction::COMPACTED_PREFIX;
use crate::metadata::shipping::SEGMENTS_PREFIX;
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
    for prefix in [SEGMENTS_PREFIX, COMPACTED_PREFIX] {
        for object in storage.list(prefix).await? {
            let old_enough = now
                .duration_since(object.last_modified)
                .is_ok_and(|age| age >= grace);
            if old_enough && !metadata.read(|s| s.objects().is_known(&object.path)) {
                storage.delete(&object.path).await?;
                deleted += 1;
            }
        }
    }
    Ok(deleted)
}

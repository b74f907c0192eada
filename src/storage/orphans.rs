//! Orphan collection: segment objects that no committed index entry names (a crash
//! between upload and commit, or a deleted topic) are deleted once older than a grace
//! period. Objects still referenced are never touched.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use super::ObjectStorage;
use crate::metadata::shipping::SEGMENTS_PREFIX;
use crate::metadata::Metadata;

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
            Ok(deleted) => info!(deleted, "orphan segment objects deleted"),
            Err(e) => warn!(error = %e, "orphan collection failed; will retry"),
        }
    }
}

/// One pass; returns how many objects were deleted.
pub async fn collect_once(
    metadata: &Metadata,
    storage: &ObjectStorage,
    grace: Duration,
) -> Result<usize, super::StorageError> {
    let now = SystemTime::now();
    let mut deleted = 0;
    for object in storage.list(SEGMENTS_PREFIX).await? {
        let old_enough = now
            .duration_since(object.last_modified)
            .is_ok_and(|age| age >= grace);
        if old_enough && metadata.read(|s| s.object_refs(&object.path)) == 0 {
            storage.delete(&object.path).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

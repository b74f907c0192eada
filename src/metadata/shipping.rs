//! The bucket as the last copy of the metadata: snapshots shipped to the object store,
//! and a cluster rebuilt from them plus the segment objects written after.
//!
//! Offsets are assigned at commit, so objects alone cannot say which offsets they hold;
//! the shipped snapshot can. Objects newer than the snapshot are re-committed in the
//! order of their names (which start with the upload time), which is the order their
//! commits were proposed in, so their records come back at the same offsets unless an
//! object between them was lost or never committed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::state::{Command, MetadataState, Response, SegmentCommit};
use super::{Metadata, MetadataError};
use crate::background::stats::Gauges;
use crate::storage::segment::{decode_footer, locate_footer, Footer, TRAILER_BYTES};
use crate::storage::{ObjectStorage, StorageError};

pub const SNAPSHOT_PATH: &str = "_strata/metadata/snapshot.json";
pub const SEGMENTS_PREFIX: &str = "segments";

#[derive(Debug, thiserror::Error)]
pub enum ShippingError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("metadata snapshot in the store is not valid: {0}")]
    BadSnapshot(String),
}

#[derive(Serialize, Deserialize)]
struct ShippedSnapshot {
    format: u32,
    /// Raft index of the last command applied to `state`.
    applied: u64,
    taken_ms: u64,
    state: MetadataState,
}

/// Copies the metadata snapshot to the store every `interval` while it changes.
pub async fn ship_snapshots(
    metadata: Arc<Metadata>,
    storage: ObjectStorage,
    interval: Duration,
    gauges: Arc<Gauges>,
) {
    let mut shipped = 0;
    loop {
        tokio::time::sleep(interval).await;
        // One shipper per cluster: the Raft leader, whose state is the most advanced.
        if !metadata.is_leader() {
            // A new leader collects garbage only after its own first shipment.
            gauges
                .shipped_clock_ms
                .store(i64::MIN, std::sync::atomic::Ordering::Release);
            shipped = 0;
            continue;
        }
        match ship_once(&metadata, &storage, shipped).await {
            Ok(Some(done)) => {
                shipped = done.applied;
                record(&gauges, done);
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "shipping the metadata snapshot failed; will retry"),
        }
    }
}

fn record(gauges: &Gauges, done: Shipped) {
    use std::sync::atomic::Ordering;
    gauges.snapshot_bytes.store(done.bytes, Ordering::Relaxed);
    gauges
        .shipped_clock_ms
        .fetch_max(done.clock_ms, Ordering::AcqRel);
}

/// Ships a snapshot now and records it (for the garbage collector, which deletes only
/// what the bucket's snapshot no longer names).
pub async fn ship_and_record(
    metadata: &Metadata,
    storage: &ObjectStorage,
    gauges: &Gauges,
) -> Result<(), ShippingError> {
    if let Some(done) = ship_once(metadata, storage, 0).await? {
        record(gauges, done);
    }
    Ok(())
}

/// What a shipment wrote.
#[derive(Debug, Clone, Copy)]
pub struct Shipped {
    /// Raft index of the last command in the snapshot.
    pub applied: u64,
    pub bytes: u64,
    /// The state's clock in the snapshot: garbage recorded before it is garbage there.
    pub clock_ms: i64,
}

/// Ships the snapshot if anything was applied since `shipped`.
pub async fn ship_once(
    metadata: &Metadata,
    storage: &ObjectStorage,
    shipped: u64,
) -> Result<Option<Shipped>, ShippingError> {
    let applied = *metadata.subscribe().borrow();
    if applied == shipped {
        return Ok(None);
    }
    let (json, clock_ms) = metadata.read(|state| {
        let json = serde_json::to_vec(&ShippedSnapshot {
            format: 1,
            applied,
            taken_ms: now_ms(),
            state: state.clone(),
        });
        (json, state.clock_ms())
    });
    let json = json.map_err(|e| ShippingError::BadSnapshot(e.to_string()))?;
    let bytes = json.len() as u64;
    storage.put(SNAPSHOT_PATH, Bytes::from(json)).await?;
    Ok(Some(Shipped {
        applied,
        bytes,
        clock_ms,
    }))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The upload time in an object's name (`segments/<ms>-…`), if it has one.
pub fn object_time_ms(path: &str) -> Option<u64> {
    let name = path.rsplit('/').next()?;
    name.split('-').next()?.parse().ok()
}

/// What a recovery brought back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub from_snapshot: bool,
    pub objects_replayed: usize,
    pub topics_created: usize,
}

/// Rebuilds an empty metadata log from the store. `margin` covers objects uploaded
/// shortly before the snapshot whose commit landed after it.
pub async fn recover(
    metadata: &Metadata,
    storage: &ObjectStorage,
    margin: Duration,
) -> Result<Recovered, ShippingError> {
    let mut recovered = Recovered::default();
    let snapshot = match storage.get_opt(SNAPSHOT_PATH).await? {
        Some(json) => Some(
            serde_json::from_slice::<ShippedSnapshot>(&json)
                .map_err(|e| ShippingError::BadSnapshot(e.to_string()))?,
        ),
        None => None,
    };
    let mut state = MetadataState::default();
    let mut since_ms = 0;
    if let Some(snapshot) = snapshot {
        since_ms = snapshot.taken_ms.saturating_sub(margin.as_millis() as u64);
        state = snapshot.state;
        recovered.from_snapshot = true;
        metadata
            .propose(Command::Restore {
                state: Box::new(state.clone()),
            })
            .await?;
    }
    let mut objects = storage.list(SEGMENTS_PREFIX).await?;
    objects.sort_by(|a, b| a.path.cmp(&b.path));
    for object in objects {
        let newer = object_time_ms(&object.path).is_some_and(|t| t >= since_ms);
        if !newer || state.objects().is_known(&object.path) {
            continue;
        }
        let chunks = match read_footer(storage, &object.path, object.size).await {
            Ok(Footer::Flush { chunks }) => chunks,
            Ok(Footer::Compacted(_)) => continue,
            Err(e) => {
                warn!(object = %object.path, error = %e, "skipping unreadable segment object");
                continue;
            }
        };
        // Topics created after the snapshot are known only from the objects: bring them
        // back with as many partitions as the objects show (their configs are lost).
        let mut wanted: BTreeMap<&str, i32> = BTreeMap::new();
        for chunk in &chunks {
            let needed = wanted.entry(&chunk.topic).or_insert(0);
            *needed = (*needed).max(chunk.partition + 1);
        }
        for (topic, partitions) in wanted {
            if metadata.read(|s| s.topic(topic).is_some()) {
                continue;
            }
            let cmd = Command::CreateTopic {
                name: topic.to_owned(),
                topic_id: *uuid::Uuid::new_v4().as_bytes(),
                partitions,
                configs: BTreeMap::new(),
                now_ms: now_ms() as i64,
            };
            if let Response::Topic(Ok(())) = metadata.propose(cmd).await? {
                recovered.topics_created += 1;
            }
        }
        let uploaded_ms = object_time_ms(&object.path).unwrap_or(0) as i64;
        metadata
            .propose(Command::CommitSegments {
                segments: vec![SegmentCommit {
                    object: object.path.clone(),
                    object_size: object.size,
                    uploaded_ms,
                    entries: chunks,
                }],
                now_ms: now_ms() as i64,
                max_age_ms: 0,
            })
            .await?;
        recovered.objects_replayed += 1;
    }
    info!(?recovered, "metadata recovered from the object store");
    Ok(recovered)
}

async fn read_footer(
    storage: &ObjectStorage,
    path: &str,
    size: u64,
) -> Result<crate::storage::segment::Footer, String> {
    if size < TRAILER_BYTES {
        return Err("too short".into());
    }
    let trailer = storage
        .get_range(path, size - TRAILER_BYTES..size)
        .await
        .map_err(|e| e.to_string())?;
    let location = locate_footer(size, &trailer).map_err(|e| e.to_string())?;
    let json = storage
        .get_range(path, location.start..location.end)
        .await
        .map_err(|e| e.to_string())?;
    decode_footer(&json, &location).map_err(|e| e.to_string())
}

//! The bucket as the last copy of the metadata: snapshots shipped to the object store,
//! and a cluster rebuilt from them plus the segment objects written after.
//!
//! Offsets are assigned at commit, so objects alone cannot say which offsets they hold;
//! the shipped snapshot can. Objects newer than the snapshot are re-committed in the
//! order of their names (which start with the upload time), which is the order their
//! commits were proposed in, so their records come back at the same offsets unless an
//! object between them was lost or never committed.
//!
//! The snapshot is `_strata/metadata/snapshot.bin`, in the metadata codec (kind shipped
//! snapshot). Buckets written before it hold `snapshot.json` (format 1), which recovery
//! still reads when there is no `snapshot.bin`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::codec::{self, CodecError, Kind};
use super::legacy::{self, LegacyError};
use super::state::{Command, MetadataState, Response, SegmentCommit};
use super::{Metadata, MetadataError};
use crate::background::stats::Gauges;
use crate::storage::segment::{decode_footer, locate_footer, Footer, TRAILER_BYTES};
use crate::storage::{ObjectStorage, StorageError};

pub const SNAPSHOT_PATH: &str = "_strata/metadata/snapshot.bin";
/// Format 1 (JSON), written by builds before the binary codec; read, never written.
pub const LEGACY_SNAPSHOT_PATH: &str = "_strata/metadata/snapshot.json";
pub const SEGMENTS_PREFIX: &str = "segments";

#[derive(Debug, thiserror::Error)]
pub enum ShippingError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("metadata snapshot {SNAPSHOT_PATH} in the store is not valid: {0}")]
    BadSnapshot(#[from] CodecError),
    #[error("metadata snapshot {LEGACY_SNAPSHOT_PATH} in the store is not valid: {0}")]
    BadLegacySnapshot(#[from] LegacyError),
    #[error("encoding the metadata snapshot did not finish: {0}")]
    Encode(#[from] tokio::task::JoinError),
}

/// The format version is in the codec header, not here.
#[derive(Serialize, Deserialize)]
struct ShippedSnapshot {
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
    // Only the clone happens under the lock (appliers wait on it); encoding a large state
    // takes long enough that it must not hold up an async worker either.
    let (state, clock_ms) = metadata.read(|state| (state.clone(), state.clock_ms()));
    let snapshot = ShippedSnapshot {
        applied,
        taken_ms: now_ms(),
        state,
    };
    let bytes =
        tokio::task::spawn_blocking(move || codec::encode(Kind::ShippedSnapshot, &snapshot))
            .await??;
    let len = bytes.len() as u64;
    storage.put(SNAPSHOT_PATH, Bytes::from(bytes)).await?;
    Ok(Some(Shipped {
        applied,
        bytes: len,
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
    let snapshot = fetch_snapshot(storage).await?;
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
                preferred: Vec::new(),
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

/// The shipped snapshot, in the current format or, failing that, format 1.
async fn fetch_snapshot(storage: &ObjectStorage) -> Result<Option<ShippedSnapshot>, ShippingError> {
    if let Some(bytes) = storage.get_opt(SNAPSHOT_PATH).await? {
        let snapshot =
            tokio::task::spawn_blocking(move || codec::decode(Kind::ShippedSnapshot, &bytes))
                .await??;
        return Ok(Some(snapshot));
    }
    let Some(json) = storage.get_opt(LEGACY_SNAPSHOT_PATH).await? else {
        return Ok(None);
    };
    let snapshot = tokio::task::spawn_blocking(move || {
        legacy::parse_v1_snapshot(&json).map(|v1| ShippedSnapshot {
            applied: v1.applied(),
            taken_ms: v1.taken_ms(),
            state: legacy::upgrade_v1(v1.into_state()),
        })
    })
    .await??;
    info!(
        path = LEGACY_SNAPSHOT_PATH,
        "read a format 1 (JSON) metadata snapshot; the next one is shipped as {SNAPSHOT_PATH}"
    );
    Ok(Some(snapshot))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::RaftOptions;

    const FIXTURE: &[u8] = include_bytes!("../../tests/fixtures/snapshot-v1.json");

    #[tokio::test]
    async fn recovers_from_format_1_then_ships_and_recovers_binary() -> anyhow::Result<()> {
        let storage = ObjectStorage::open("memory://")?;
        storage
            .put(LEGACY_SNAPSHOT_PATH, Bytes::from_static(FIXTURE))
            .await?;
        let dir = tempfile::tempdir()?;
        let old = Metadata::open(&dir.path().join("a"), RaftOptions::single(1, 1000)).await?;
        let recovered = recover(&old, &storage, Duration::ZERO).await?;
        assert!(recovered.from_snapshot);
        let next = |m: &Metadata| {
            m.read(|s| {
                (0..3)
                    .map(|p| s.partition("fixture", p).map(|p| p.next_offset))
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(next(&old), [Some(9), Some(3), Some(5)]);

        let shipped = ship_once(&old, &storage, 0).await?;
        assert!(shipped.is_some_and(|s| s.applied > 0));
        let shipped = storage.get(SNAPSHOT_PATH).await?;
        assert_eq!(&shipped[..6], b"STSH\x03\x00");

        // The binary snapshot wins over the JSON one still in the bucket.
        storage
            .put(LEGACY_SNAPSHOT_PATH, Bytes::from_static(b"not json"))
            .await?;
        let new = Metadata::open(&dir.path().join("b"), RaftOptions::single(1, 1000)).await?;
        recover(&new, &storage, Duration::ZERO).await?;
        assert_eq!(next(&new), next(&old));
        assert_eq!(
            new.read(|s| s
                .committed_offset("fixture-group", "fixture", 0)
                .map(|c| c.offset)),
            Some(7)
        );
        let same = old.read(|a| new.read(|b| a == b));
        assert!(same);
        old.shutdown().await?;
        new.shutdown().await?;
        Ok(())
    }

    #[tokio::test]
    async fn a_foreign_snapshot_is_refused_by_name() -> anyhow::Result<()> {
        let storage = ObjectStorage::open("memory://")?;
        storage
            .put(SNAPSHOT_PATH, Bytes::from_static(b"{\"format\":1}"))
            .await?;
        let dir = tempfile::tempdir()?;
        let m = Metadata::open(dir.path(), RaftOptions::single(1, 1000)).await?;
        let err = recover(&m, &storage, Duration::ZERO)
            .await
            .err()
            .map(|e| e.to_string());
        m.shutdown().await?;
        let err = err.unwrap_or_default();
        assert!(err.contains(SNAPSHOT_PATH), "{err}");
        assert!(
            err.contains("not a Strata shipped metadata snapshot"),
            "{err}"
        );
        Ok(())
    }
}

//! The bucket as the last copy of the metadata: snapshots and the committed Raft log
//! shipped to the object store, and a cluster rebuilt from them alone.
//!
//! Offsets are assigned at commit, so objects alone cannot say which offsets they hold,
//! nor which commands (a topic deleted, records deleted, an offset committed) came after
//! them. The Raft leader therefore ships every committed entry: a snapshot when it
//! becomes leader and every `store_snapshot_interval`, and in between the entries after
//! it, in log chunks, one PUT per round (group commit: entries committed while a chunk
//! is in flight go in the next one). The leader acknowledges a proposal only once its
//! entry is shipped, so recovery (the newest snapshot, then the chunks that follow it)
//! rebuilds exactly the acknowledged state: nothing acknowledged is missing, nothing
//! unacknowledged (an upload whose commit never happened) appears, and nothing deleted
//! comes back.
//!
//! Names: `_strata/metadata/snapshots/<generation>-<applied>.bin` and
//! `_strata/metadata/log/<generation>/<first>-<last>.bin`, numbers zero-padded so that
//! names sort in order. A cluster rebuilt from the bucket restarts its Raft log at index
//! 1, so it ships under the next generation. Older snapshots and chunks covered by a
//! newer snapshot are deleted after it is written; a stale leader's late snapshot is
//! older by name and never chosen. Buckets written before log shipping hold
//! `snapshot.bin` (format 2) or `snapshot.json` (format 1), which recovery still reads.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::{Entry, EntryPayload};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::codec::{self, CodecError, Kind};
use super::legacy::{self, LegacyError};
use super::raft::TypeConfig;
use super::state::{Command, MetadataState};
use super::{Metadata, MetadataError};
use crate::storage::store::Purpose;
use crate::storage::{ObjectStorage, StorageError};

pub const METADATA_PREFIX: &str = "_strata/metadata";
pub const SNAPSHOTS_PREFIX: &str = "_strata/metadata/snapshots";
pub const LOG_PREFIX: &str = "_strata/metadata/log";
/// The single snapshot of builds before log shipping; read, never written.
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
    #[error("metadata object in the store is not valid: {0}")]
    Bad(#[from] CodecError),
    #[error("metadata snapshot {path} in the store is not valid: {source}")]
    BadSnapshot { path: String, source: CodecError },
    #[error("metadata snapshot {LEGACY_SNAPSHOT_PATH} in the store is not valid: {0}")]
    BadLegacySnapshot(#[from] LegacyError),
    #[error("encoding or decoding metadata did not finish: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// The format version is in the codec header, not here.
#[derive(Serialize, Deserialize)]
struct ShippedSnapshot {
    /// Raft index of the last command applied to `state`.
    applied: u64,
    taken_ms: u64,
    state: MetadataState,
}

pub fn snapshot_path(generation: u64, applied: u64) -> String {
    format!("{SNAPSHOTS_PREFIX}/{generation:010}-{applied:020}.bin")
}

pub fn chunk_path(generation: u64, first: u64, last: u64) -> String {
    format!("{LOG_PREFIX}/{generation:010}/{first:020}-{last:020}.bin")
}

/// `(generation, applied)` of a snapshot name.
fn parse_snapshot_path(path: &str) -> Option<(u64, u64)> {
    let name = path.strip_prefix(SNAPSHOTS_PREFIX)?.strip_prefix('/')?;
    let (generation, applied) = name.strip_suffix(".bin")?.split_once('-')?;
    Some((generation.parse().ok()?, applied.parse().ok()?))
}

/// `(generation, first, last)` of a log chunk name.
fn parse_chunk_path(path: &str) -> Option<(u64, u64, u64)> {
    let rest = path.strip_prefix(LOG_PREFIX)?.strip_prefix('/')?;
    let (generation, name) = rest.split_once('/')?;
    let (first, last) = name.strip_suffix(".bin")?.split_once('-')?;
    Some((
        generation.parse().ok()?,
        first.parse().ok()?,
        last.parse().ok()?,
    ))
}

/// What the bucket's newest snapshot covers, as this broker shipped it while leader.
/// Garbage collection trusts it: an object is deleted only once a shipped snapshot no
/// longer names it, so recovery from the bucket never meets a missing object.
#[derive(Debug, Default)]
pub struct ShippedMark {
    /// Bytes of the last snapshot shipped.
    pub bytes: AtomicU64,
    /// The state's clock in the last shipped snapshot; `i64::MIN` until this broker,
    /// as leader, has shipped one.
    pub clock_ms: AtomicI64,
}

/// Ships the metadata while this broker is the Raft leader: a snapshot on becoming
/// leader and every `interval` while the state changes, committed entries in between.
pub async fn ship_metadata(
    metadata: Arc<Metadata>,
    storage: ObjectStorage,
    interval: Duration,
    shipped_snapshot: Arc<ShippedMark>,
) {
    // Shipped while leader: the last entry in the bucket, and the last snapshot's index.
    let mut shipped: Option<u64> = None;
    let mut snapshot_applied = 0;
    let mut last_snapshot = tokio::time::Instant::now();
    let mut failures = 0u32;
    let mut applied_rx = metadata.subscribe();
    // Clean-up runs beside the shipping (one at a time): a minute of chunks can be
    // thousands of DELETEs, and acknowledgements wait on this loop.
    let mut cleanup: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        if !metadata.is_leader() {
            if shipped.take().is_some() {
                // A new leader collects garbage only after its own first shipment.
                shipped_snapshot.clock_ms.store(i64::MIN, Ordering::Release);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        if failures > 0 {
            // A store that refuses writes: retry, but not in a tight loop.
            let pause = Duration::from_millis(50 << failures.min(5));
            tokio::time::sleep(pause).await;
        }
        let applied = *applied_rx.borrow_and_update();
        let snapshot_due = match shipped {
            None => true,
            Some(_) => last_snapshot.elapsed() >= interval && applied > snapshot_applied,
        };
        let entries = match shipped {
            Some(from) if !snapshot_due && applied > from => {
                // Purged behind a local snapshot (this node was slow to ship): a shipped
                // snapshot covers them instead.
                metadata.log_entries(from + 1, applied)
            }
            _ => None,
        };
        if snapshot_due || (shipped.is_some_and(|from| applied > from) && entries.is_none()) {
            match ship_snapshot(&metadata, &storage).await {
                Ok(done) => {
                    failures = 0;
                    snapshot_applied = done.applied;
                    last_snapshot = tokio::time::Instant::now();
                    shipped = Some(shipped.unwrap_or(0).max(done.applied));
                    metadata.mark_shipped(done.applied);
                    record(&shipped_snapshot, done);
                    if cleanup.as_ref().is_none_or(|c| c.is_finished()) {
                        let storage = storage.clone();
                        cleanup = Some(tokio::spawn(async move {
                            if let Err(e) =
                                delete_covered(&storage, done.generation, done.applied).await
                            {
                                warn!(error = %e, "deleting shipped metadata covered by the new snapshot failed");
                            }
                        }));
                    }
                }
                Err(e) => {
                    failures += 1;
                    warn!(error = %e, "shipping the metadata snapshot failed; will retry");
                }
            }
            continue;
        }
        let Some(entries) = entries else {
            // Nothing new: wait for a commit, but look up now and then (leadership, the
            // snapshot interval).
            let _ = tokio::time::timeout(Duration::from_millis(100), applied_rx.changed()).await;
            continue;
        };
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            continue;
        };
        let (first, last) = (first.log_id.index, last.log_id.index);
        let generation = metadata.read(MetadataState::log_generation);
        match ship_chunk(&storage, generation, &entries).await {
            Ok(()) => {
                failures = 0;
                shipped = Some(last);
                metadata.mark_shipped(last);
            }
            Err(e) => {
                failures += 1;
                warn!(first, last, error = %e, "shipping metadata log entries failed; will retry");
            }
        }
    }
}

async fn ship_chunk(
    storage: &ObjectStorage,
    generation: u64,
    entries: &[Entry<TypeConfig>],
) -> Result<(), ShippingError> {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return Ok(());
    };
    let path = chunk_path(generation, first.log_id.index, last.log_id.index);
    let bytes = codec::encode(Kind::LogChunk, entries)?;
    storage.put(&path, Bytes::from(bytes)).await?;
    Ok(())
}

/// Deletes the snapshots and log chunks that the snapshot `(generation, applied)` makes
/// unnecessary, and the single-file snapshots of older builds.
async fn delete_covered(
    storage: &ObjectStorage,
    generation: u64,
    applied: u64,
) -> Result<usize, ShippingError> {
    let mut deleted = 0;
    for object in storage.list(METADATA_PREFIX).await? {
        let path = object.path.as_str();
        let covered = if let Some(key) = parse_snapshot_path(path) {
            key < (generation, applied)
        } else if let Some((g, _, last)) = parse_chunk_path(path) {
            g < generation || (g == generation && last <= applied)
        } else {
            path == SNAPSHOT_PATH || path == LEGACY_SNAPSHOT_PATH
        };
        if covered {
            storage.delete(path).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

fn record(shipped: &ShippedMark, done: Shipped) {
    shipped.bytes.store(done.bytes, Ordering::Relaxed);
    shipped.clock_ms.fetch_max(done.clock_ms, Ordering::AcqRel);
}

/// Ships a snapshot now and records it (for the garbage collector, which deletes only
/// what the bucket's snapshot no longer names).
pub async fn ship_and_record(
    metadata: &Metadata,
    storage: &ObjectStorage,
    shipped: &ShippedMark,
) -> Result<(), ShippingError> {
    let done = ship_snapshot(metadata, storage).await?;
    metadata.mark_shipped(done.applied);
    record(shipped, done);
    Ok(())
}

/// What a shipment wrote.
#[derive(Debug, Clone, Copy)]
pub struct Shipped {
    pub generation: u64,
    /// Raft index of the last command in the snapshot.
    pub applied: u64,
    pub bytes: u64,
    /// The state's clock in the snapshot: garbage recorded before it is garbage there.
    pub clock_ms: i64,
}

/// Ships a snapshot of the applied state.
pub async fn ship_snapshot(
    metadata: &Metadata,
    storage: &ObjectStorage,
) -> Result<Shipped, ShippingError> {
    let storage = &storage.for_purpose(Purpose::Snapshot);
    // Only the clone happens under the lock (appliers wait on it); encoding a large state
    // takes long enough that it must not hold up an async worker either.
    let (state, applied) = metadata.state_at_index();
    let clock_ms = state.clock_ms();
    let generation = state.log_generation();
    let snapshot = ShippedSnapshot {
        applied,
        taken_ms: u64::try_from(crate::clock::now_ms()).unwrap_or(0),
        state,
    };
    let bytes =
        tokio::task::spawn_blocking(move || codec::encode(Kind::ShippedSnapshot, &snapshot))
            .await??;
    let len = bytes.len() as u64;
    storage
        .put(&snapshot_path(generation, applied), Bytes::from(bytes))
        .await?;
    Ok(Shipped {
        generation,
        applied,
        bytes: len,
        clock_ms,
    })
}

/// The upload time in an object's name (`segments/<ms>-…`), if it has one.
pub fn object_time_ms(path: &str) -> Option<u64> {
    let name = path.rsplit('/').next()?;
    name.split('-').next()?.parse().ok()
}

/// The last Raft index the bucket holds for the newest generation (snapshot or log
/// chunk); 0 when it holds none.
pub async fn last_shipped_index(storage: &ObjectStorage) -> Result<u64, ShippingError> {
    let listed = storage.list(METADATA_PREFIX).await?;
    let Some((generation, applied)) = listed
        .iter()
        .filter_map(|o| parse_snapshot_path(&o.path))
        .max()
    else {
        return Ok(0);
    };
    let chunks = listed
        .iter()
        .filter_map(|o| parse_chunk_path(&o.path))
        .filter(|(g, _, _)| *g == generation)
        .map(|(_, _, last)| last);
    Ok(chunks.fold(applied, u64::max))
}

/// What a recovery brought back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub from_snapshot: bool,
    /// Committed entries replayed from log chunks after the snapshot.
    pub entries_replayed: u64,
    /// The generation the rebuilt cluster ships under.
    pub generation: u64,
}

/// Rebuilds an empty metadata log from the store: the newest snapshot, then the shipped
/// log after it, applied in order with the same pure state machine, then restored into
/// this cluster in one command.
pub async fn recover(
    metadata: &Metadata,
    storage: &ObjectStorage,
) -> Result<Recovered, ShippingError> {
    let mut recovered = Recovered::default();
    let listed = storage.list(METADATA_PREFIX).await?;
    let newest = listed
        .iter()
        .filter_map(|o| parse_snapshot_path(&o.path).map(|key| (key, o.path.clone())))
        .max();
    let (mut state, generation, applied) = match newest {
        Some(((generation, applied), path)) => {
            let bytes = storage.get(&path).await?;
            let snapshot: ShippedSnapshot =
                tokio::task::spawn_blocking(move || codec::decode(Kind::ShippedSnapshot, &bytes))
                    .await?
                    .map_err(|source| ShippingError::BadSnapshot { path, source })?;
            recovered.from_snapshot = true;
            (snapshot.state, generation, applied)
        }
        None => match fetch_single_snapshot(storage).await? {
            Some(snapshot) => {
                recovered.from_snapshot = true;
                let generation = snapshot.state.log_generation();
                (snapshot.state, generation, snapshot.applied)
            }
            None => (MetadataState::default(), 0, 0),
        },
    };
    let mut chunks: Vec<(u64, u64, String)> = listed
        .iter()
        .filter_map(|o| {
            let (g, first, last) = parse_chunk_path(&o.path)?;
            (g == generation && last > applied).then(|| (first, last, o.path.clone()))
        })
        .collect();
    chunks.sort();
    let mut next = applied + 1;
    'chunks: for (first, last, path) in chunks {
        if last < next {
            continue;
        }
        if first > next {
            warn!(missing_from = next, next_chunk = %path, "the shipped metadata log has a gap; recovering up to it");
            break;
        }
        let bytes = storage.get(&path).await?;
        let entries: Vec<Entry<TypeConfig>> =
            tokio::task::spawn_blocking(move || codec::decode(Kind::LogChunk, &bytes)).await??;
        for entry in entries {
            if entry.log_id.index < next {
                continue;
            }
            if entry.log_id.index > next {
                warn!(missing_from = next, chunk = %path, "the shipped metadata log has a gap; recovering up to it");
                break 'chunks;
            }
            if let EntryPayload::Normal(cmd) = &entry.payload {
                state.apply(cmd);
            }
            next += 1;
            recovered.entries_replayed += 1;
        }
    }
    recovered.generation = generation;
    if recovered.from_snapshot || recovered.entries_replayed > 0 {
        recovered.generation = generation + 1;
        state.set_log_generation(recovered.generation);
        metadata
            .propose(Command::Restore {
                state: Box::new(state),
            })
            .await?;
    }
    info!(?recovered, "metadata recovered from the object store");
    Ok(recovered)
}

/// The snapshot of a build before log shipping: `snapshot.bin`, else format 1's JSON.
async fn fetch_single_snapshot(
    storage: &ObjectStorage,
) -> Result<Option<ShippedSnapshot>, ShippingError> {
    if let Some(bytes) = storage.get_opt(SNAPSHOT_PATH).await? {
        let snapshot =
            tokio::task::spawn_blocking(move || codec::decode(Kind::ShippedSnapshot, &bytes))
                .await?
                .map_err(|source| ShippingError::BadSnapshot {
                    path: SNAPSHOT_PATH.to_owned(),
                    source,
                })?;
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
        "read a format 1 (JSON) metadata snapshot; the next one is shipped under {SNAPSHOTS_PREFIX}"
    );
    Ok(Some(snapshot))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::metadata::state::OffsetCommit;
    use crate::metadata::RaftOptions;

    const FIXTURE: &[u8] = include_bytes!("../../tests/fixtures/snapshot-v1.json");

    /// Equal but for the generation, which every recovery advances.
    fn same_state(a: &Metadata, b: &Metadata) -> bool {
        let (mut a, _) = a.state_at_index();
        let (b, _) = b.state_at_index();
        a.set_log_generation(b.log_generation());
        a == b
    }

    #[tokio::test]
    async fn recovers_from_format_1_then_ships_and_recovers_binary() -> anyhow::Result<()> {
        let storage = ObjectStorage::open("memory://")?;
        storage
            .put(LEGACY_SNAPSHOT_PATH, Bytes::from_static(FIXTURE))
            .await?;
        let dir = tempfile::tempdir()?;
        let old = Metadata::open(&dir.path().join("a"), RaftOptions::single(1, 1000)).await?;
        let recovered = recover(&old, &storage).await?;
        assert!(recovered.from_snapshot);
        assert_eq!(recovered.generation, 1);
        let next = |m: &Metadata| {
            m.read(|s| {
                (0..3)
                    .map(|p| s.partition("fixture", p).map(|p| p.next_offset))
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(next(&old), [Some(9), Some(3), Some(5)]);

        let shipped = ship_snapshot(&old, &storage).await?;
        assert_eq!(shipped.generation, 1);
        let path = snapshot_path(1, shipped.applied);
        let bytes = storage.get(&path).await?;
        assert_eq!(&bytes[..4], b"STSH");
        assert_eq!(
            bytes[4..6],
            crate::metadata::codec::FORMAT_VERSION.to_le_bytes()
        );
        assert_eq!(delete_covered(&storage, 1, shipped.applied).await?, 1);
        assert!(storage.get_opt(LEGACY_SNAPSHOT_PATH).await?.is_none());

        let new = Metadata::open(&dir.path().join("b"), RaftOptions::single(1, 1000)).await?;
        let recovered = recover(&new, &storage).await?;
        assert_eq!(recovered.generation, 2);
        assert_eq!(next(&new), next(&old));
        assert_eq!(
            new.read(|s| s
                .committed_offset("fixture-group", "fixture", 0)
                .map(|c| c.offset)),
            Some(7)
        );
        assert!(same_state(&old, &new));
        old.shutdown().await?;
        new.shutdown().await?;
        Ok(())
    }

    #[tokio::test]
    async fn a_foreign_snapshot_is_refused_by_name() -> anyhow::Result<()> {
        let storage = ObjectStorage::open("memory://")?;
        let path = snapshot_path(0, 5);
        storage
            .put(&path, Bytes::from_static(b"{\"format\":1}"))
            .await?;
        let dir = tempfile::tempdir()?;
        let m = Metadata::open(dir.path(), RaftOptions::single(1, 1000)).await?;
        let err = recover(&m, &storage).await.err().map(|e| e.to_string());
        m.shutdown().await?;
        let err = err.unwrap_or_default();
        assert!(err.contains(&path), "{err}");
        assert!(
            err.contains("not a Strata shipped metadata snapshot"),
            "{err}"
        );
        Ok(())
    }

    fn create(name: &str) -> Command {
        Command::CreateTopic {
            name: name.to_owned(),
            topic_id: *uuid::Uuid::new_v4().as_bytes(),
            partitions: 2,
            configs: BTreeMap::new(),
            now_ms: 1,
            preferred: Vec::new(),
        }
    }

    fn commit(group: &str, offset: i64) -> Command {
        Command::CommitOffsets {
            group: group.to_owned(),
            offsets: vec![OffsetCommit {
                topic: "kept".to_owned(),
                partition: 1,
                offset,
                leader_epoch: -1,
                metadata: None,
                commit_ms: 2,
            }],
        }
    }

    /// Every acknowledged command comes back, deleted things stay deleted, and the
    /// rebuilt cluster ships under the next generation, twice over.
    #[tokio::test]
    async fn acknowledged_commands_are_exactly_what_recovery_rebuilds() -> anyhow::Result<()> {
        let storage = ObjectStorage::open("memory://")?;
        let dir = tempfile::tempdir()?;
        let gauges = Arc::new(ShippedMark::default());
        let mut previous: Option<Arc<Metadata>> = None;
        for (round, name) in ["a", "b", "c"].into_iter().enumerate() {
            let m = Arc::new(
                Metadata::open(&dir.path().join(name), RaftOptions::single(1, 1000)).await?,
            );
            let recovered = recover(&m, &storage).await?;
            assert_eq!(recovered.generation, round as u64);
            if let Some(previous) = previous.take() {
                // Only the acknowledged commands, in order: nothing lost, nothing extra.
                assert!(same_state(&previous, &m));
                assert!(m.read(|s| s.topic("gone").is_none()));
                previous.shutdown().await?;
            }
            m.ack_after_shipping();
            // A long interval: after the first snapshot everything goes out as log chunks.
            let shipper = tokio::spawn(ship_metadata(
                m.clone(),
                storage.clone(),
                Duration::from_secs(3600),
                gauges.clone(),
            ));
            m.propose(create("kept")).await?;
            m.propose(create("gone")).await?;
            m.propose(commit("g", 10 + round as i64)).await?;
            m.propose(Command::DeleteTopic {
                name: "gone".to_owned(),
            })
            .await?;
            m.propose(commit("g", 500 + round as i64)).await?;
            shipper.abort();
            let listed = storage.list(LOG_PREFIX).await?;
            assert!(!listed.is_empty(), "nothing shipped as log chunks");
            assert!(listed
                .iter()
                .all(|o| parse_chunk_path(&o.path).is_some_and(|(g, _, _)| g == round as u64)));
            previous = Some(m);
        }
        if let Some(m) = previous {
            assert_eq!(
                m.read(|s| s.committed_offset("g", "kept", 1).map(|c| c.offset)),
                Some(502)
            );
            m.shutdown().await?;
        }
        Ok(())
    }

    #[test]
    fn names_sort_in_order_and_parse_back() {
        assert!(snapshot_path(1, 99) < snapshot_path(1, 100));
        assert!(snapshot_path(1, 100) < snapshot_path(2, 3));
        assert_eq!(
            parse_snapshot_path(&snapshot_path(7, 1234)),
            Some((7, 1234))
        );
        assert_eq!(parse_chunk_path(&chunk_path(7, 5, 9)), Some((7, 5, 9)));
        assert_eq!(parse_chunk_path(&snapshot_path(7, 5)), None);
        assert_eq!(
            parse_snapshot_path("_strata/metadata/snapshots/x-1.bin"),
            None
        );
    }
}

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
use tokio::sync::watch;
use tracing::{info, warn};

use super::codec::{self, CodecError, Kind};
use super::legacy::{self, LegacyError};
use super::raft::TypeConfig;
use super::ride::Claim;
use super::state::{Command, MetadataState};
use super::{Metadata, MetadataError};
use crate::storage::budget::Class;
use crate::storage::store::Purpose;
use crate::storage::{segment, ObjectStorage, StorageError};

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

/// The name of a flush object carrying log entries `first..=last` (`ride.rs`): its own
/// name under `segments/` with the range added, so that recovery finds it by listing the
/// flush objects (only the tail not yet compacted).
pub fn ride_path(object: &str, generation: u64, first: u64, last: u64) -> String {
    let stem = object.strip_suffix(".seg").unwrap_or(object);
    format!("{stem}-log-{generation}-{first}-{last}.seg")
}

/// `(generation, first, last)` of a flush object carrying log entries.
pub fn parse_ride_path(path: &str) -> Option<(u64, u64, u64)> {
    let name = path.strip_prefix(SEGMENTS_PREFIX)?.strip_prefix('/')?;
    let (_, range) = name.strip_suffix(".seg")?.rsplit_once("-log-")?;
    let mut parts = range.splitn(3, '-').map(str::parse::<u64>);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(g)), Some(Ok(first)), Some(Ok(last))) => Some((g, first, last)),
        _ => None,
    }
}

/// `(generation, first, last)` of a log chunk, or of a flush object carrying one.
fn parse_shipped_path(path: &str) -> Option<(u64, u64, u64)> {
    parse_chunk_path(path).or_else(|| parse_ride_path(path))
}

/// Whether the snapshot `newest` (`(generation, applied)`) makes the entries a flush
/// object carries unnecessary to recovery; true for one that carries none. Until then
/// the orphan sweep keeps it even if its data was never committed.
pub fn ride_covered(path: &str, newest: Option<(u64, u64)>) -> bool {
    match parse_ride_path(path) {
        None => true,
        Some((g, _, last)) => newest.is_some_and(|n| (g, last) <= n),
    }
}

/// `(generation, applied)` of the newest snapshot in the bucket.
pub async fn newest_snapshot(storage: &ObjectStorage) -> Result<Option<(u64, u64)>, StorageError> {
    Ok(storage
        .list(SNAPSHOTS_PREFIX)
        .await?
        .iter()
        .filter_map(|o| parse_snapshot_path(&o.path))
        .max())
}

/// What recovery reads: the metadata, and the flush objects not yet compacted (some
/// carry log entries).
async fn list_shipped(
    storage: &ObjectStorage,
) -> Result<Vec<crate::storage::store::ListedObject>, StorageError> {
    let mut listed = storage.list(METADATA_PREFIX).await?;
    listed.extend(
        storage
            .list(SEGMENTS_PREFIX)
            .await?
            .into_iter()
            .filter(|o| parse_ride_path(&o.path).is_some()),
    );
    Ok(listed)
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

/// How long the shipper lets committed entries wait for a forming round of data to carry
/// them (a round forms for at most a few flush intervals without a PUT budget).
const RIDE_WAIT: Duration = Duration::from_millis(100);
/// The longest wait under a PUT budget: riding is then what keeps the metadata log from
/// taking half the budget.
const RIDE_WAIT_BUDGET_MAX: Duration = Duration::from_secs(1);
/// Under a PUT budget with fewer foreground tokens than this, the shipper waits for a
/// round of data even before one forms.
const RIDE_TOKENS: f64 = 2.0;
/// How long entries nobody waits for (lease renewals) may wait for one that somebody
/// does, or for a round of data, before they go out alone.
const LAZY_SHIP: Duration = Duration::from_secs(5);
/// A claim in flight this long (a data PUT retrying against a slow store) is shipped
/// again by the shipper rather than holding every acknowledgement.
const RIDE_STALE: Duration = Duration::from_secs(2);

/// Ships the metadata while this broker is the Raft leader: a snapshot on becoming
/// leader and every `interval` while the state changes, committed entries in between,
/// in a round of data when one is forming (`ride.rs`), else in a chunk of their own.
pub async fn ship_metadata(
    metadata: Arc<Metadata>,
    storage: ObjectStorage,
    interval: Duration,
    shipped_snapshot: Arc<ShippedMark>,
) {
    // Whether this broker, as leader, has shipped its first snapshot.
    let mut leading = false;
    let mut need_snapshot = false;
    let mut snapshot_applied = 0;
    let mut last_snapshot = tokio::time::Instant::now();
    let mut failures = 0u32;
    let mut pending_since: Option<tokio::time::Instant> = None;
    let mut lazy_since: Option<tokio::time::Instant> = None;
    let mut applied_rx = metadata.subscribe();
    let mut wanted_rx = metadata.shipping_wanted();
    // Under a PUT budget, a PUT of its own costs a token the data rounds then wait for:
    // when tokens are scarce, wait up to two of the foreground's tokens for a ride.
    let budget = storage.put_budget();
    let ride_wait = storage.put_budget().map_or(RIDE_WAIT, |b| {
        Duration::from_secs_f64(2.0 / b.class_rate(Class::Foreground))
            .clamp(RIDE_WAIT, RIDE_WAIT_BUDGET_MAX)
    });
    // Clean-up runs beside the shipping (one at a time): a minute of chunks can be
    // thousands of DELETEs, and acknowledgements wait on this loop.
    let mut cleanup: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        if !metadata.is_leader() {
            if leading {
                leading = false;
                metadata.ride().with(|r| r.close());
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
        let snapshot_due = !leading
            || need_snapshot
            || (last_snapshot.elapsed() >= interval && applied > snapshot_applied);
        if snapshot_due {
            match ship_snapshot(&metadata, &storage).await {
                Ok(done) => {
                    failures = 0;
                    need_snapshot = false;
                    snapshot_applied = done.applied;
                    last_snapshot = tokio::time::Instant::now();
                    if !leading {
                        leading = true;
                        metadata.ride().with(|r| r.open(done.applied));
                    }
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
        let ride = metadata.ride();
        let wanted = (*wanted_rx.borrow_and_update()).min(applied);
        let (urgent, any) = ride.with(|r| (r.pending(wanted), r.pending(applied)));
        if !urgent {
            pending_since = None;
        }
        // How far new entries may be claimed now (failed and stuck claims always are).
        let mut upto = applied;
        if !any {
            lazy_since = None;
        } else if !urgent {
            // Nobody waits for these (lease renewals): they go with the next entry that
            // somebody waits for, or after a while.
            let since = *lazy_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() < LAZY_SHIP {
                upto = 0;
            }
        } else if ride.is_forming()
            || budget.is_some_and(|b| b.available(Class::Foreground) < RIDE_TOKENS)
        {
            // A round of data is gathering requests (or, tokens being scarce under a
            // budget, the next one is worth waiting for): it carries the entries.
            let since = *pending_since.get_or_insert_with(tokio::time::Instant::now);
            let left = ride_wait.saturating_sub(since.elapsed());
            if !left.is_zero() {
                ride.wait_claimed(left.min(Duration::from_millis(20))).await;
                continue;
            }
        }
        let claim = ride.with(|r| r.claim(upto, tokio::time::Instant::now(), Some(RIDE_STALE)));
        let Some(claim) = claim else {
            idle(&mut applied_rx, &mut wanted_rx).await;
            continue;
        };
        pending_since = None;
        lazy_since = None;
        let Some(entries) = metadata.log_entries(claim.first, claim.last) else {
            // Purged behind a local snapshot (this node was slow to ship): a shipped
            // snapshot covers them instead.
            metadata.finish_ride(claim, false);
            need_snapshot = true;
            continue;
        };
        let generation = metadata.read(MetadataState::log_generation);
        match ship_chunk(&storage, generation, &entries).await {
            Ok(()) => {
                failures = 0;
                metrics::counter!(crate::telemetry::LOG_CHUNKS, "carrier" => "alone").increment(1);
                metadata.finish_ride(claim, true);
            }
            Err(e) => {
                failures += 1;
                metadata.finish_ride(claim, false);
                warn!(first = claim.first, last = claim.last, error = %e, "shipping metadata log entries failed; will retry");
            }
        }
    }
}

/// Nothing to ship: waits for a commit or for someone to wait for one, but looks up now
/// and then (leadership, the snapshot interval, a claim stuck in flight).
async fn idle(applied: &mut watch::Receiver<u64>, wanted: &mut watch::Receiver<u64>) {
    tokio::select! {
        _ = applied.changed() => {}
        _ = wanted.changed() => {}
        () = tokio::time::sleep(Duration::from_millis(100)) => {}
    }
}

/// Committed entries riding in a flush object: its name (saying which entries it
/// carries) and the encoded entries, which go before its first chunk.
pub struct Riding {
    pub claim: Claim,
    pub path: String,
    pub log: Vec<u8>,
}

/// On the leader, as a round of data starts its upload: claims the committed entries not
/// yet in the bucket for it to carry. None on a follower or when nothing waits.
pub fn board(metadata: &Metadata, object: &str) -> Option<Riding> {
    let claim = metadata.ride().claim_for_round(metadata.applied_index())?;
    let encoded = metadata
        .log_entries(claim.first, claim.last)
        .and_then(|entries| codec::encode(Kind::LogChunk, &entries).ok());
    let Some(log) = encoded else {
        // Purged, or unencodable: the shipper deals with it.
        metadata.finish_ride(claim, false);
        return None;
    };
    let generation = metadata.read(MetadataState::log_generation);
    Some(Riding {
        claim,
        path: ride_path(object, generation, claim.first, claim.last),
        log,
    })
}

/// How a round's PUT carrying entries ended.
pub fn landed(metadata: &Metadata, claim: Claim, ok: bool) {
    if ok {
        metrics::counter!(crate::telemetry::LOG_CHUNKS, "carrier" => "data").increment(1);
    }
    metadata.finish_ride(claim, ok);
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
    let listed = list_shipped(storage).await?;
    let Some((generation, applied)) = listed
        .iter()
        .filter_map(|o| parse_snapshot_path(&o.path))
        .max()
    else {
        return Ok(0);
    };
    let chunks = listed
        .iter()
        .filter_map(|o| parse_shipped_path(&o.path))
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
    let listed = list_shipped(storage).await?;
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
            let (g, first, last) = parse_shipped_path(&o.path)?;
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
        let ride = parse_ride_path(&path).is_some();
        let decoded = tokio::task::spawn_blocking(move || decode_chunk(&bytes, ride)).await?;
        let entries = decoded?;
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

/// The entries of a log chunk, or of a flush object carrying them before its first chunk.
fn decode_chunk(bytes: &[u8], ride: bool) -> Result<Vec<Entry<TypeConfig>>, ShippingError> {
    let log = if ride {
        segment::leading_bytes(bytes).map_err(|e| CodecError::Corrupt {
            kind: Kind::LogChunk.name(),
            reason: e.to_string(),
        })?
    } else {
        bytes
    };
    Ok(codec::decode(Kind::LogChunk, log)?)
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

    /// Entries carried by a flush object (a round of data forming on the leader) are
    /// acknowledged once it lands, rebuilt by recovery from it, and kept by the snapshot
    /// clean-up, which leaves such objects to garbage collection and the orphan sweep.
    #[tokio::test]
    async fn entries_riding_in_a_data_object_are_acknowledged_and_recovered() -> anyhow::Result<()>
    {
        let storage = ObjectStorage::open("memory://")?;
        let dir = tempfile::tempdir()?;
        let m =
            Arc::new(Metadata::open(&dir.path().join("a"), RaftOptions::single(1, 1000)).await?);
        m.ack_after_shipping();
        let shipper = tokio::spawn(ship_metadata(
            m.clone(),
            storage.clone(),
            Duration::from_secs(3600),
            Arc::new(ShippedMark::default()),
        ));
        m.propose(create("kept")).await?;
        let mut rides = Vec::new();
        for round in 1..=3u64 {
            let forming = m.ride().forming();
            let proposer = m.clone();
            let proposal =
                tokio::spawn(async move { proposer.propose(commit("g", round as i64)).await });
            // Committed, and waiting for a ride: nothing goes out alone meanwhile.
            let riding = loop {
                if let Some(riding) = board(&m, &format!("segments/{round}-1-0-{round}.seg")) {
                    break riding;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            };
            drop(forming);
            assert!(
                !proposal.is_finished(),
                "acknowledged before its entry was in the bucket"
            );
            let mut builder = segment::SegmentBuilder::new();
            builder.add_leading(&riding.log);
            builder.add_chunk("kept", 0, &[Bytes::from_static(b"data")], 1, 0, None);
            let (object, _) = builder.finish();
            storage.put(&riding.path, object).await?;
            landed(&m, riding.claim, true);
            proposal.await??;
            rides.push(riding.path);
        }
        shipper.abort();
        assert!(rides.iter().all(|p| parse_ride_path(p).is_some()));
        let newest = newest_snapshot(&storage).await?;
        assert!(
            !rides.iter().any(|p| ride_covered(p, newest)),
            "no snapshot covers them yet"
        );

        let new = Metadata::open(&dir.path().join("b"), RaftOptions::single(1, 1000)).await?;
        let recovered = recover(&new, &storage).await?;
        assert!(recovered.entries_replayed >= 3, "{recovered:?}");
        assert!(same_state(&m, &new));
        assert_eq!(
            new.read(|s| s.committed_offset("g", "kept", 1).map(|c| c.offset)),
            Some(3)
        );
        ship_snapshot(&new, &storage).await?;
        let newest = newest_snapshot(&storage).await?;
        assert!(rides.iter().all(|p| ride_covered(p, newest)));
        delete_covered(&storage, 1, u64::MAX).await?;
        for path in &rides {
            assert!(
                storage.get_opt(path).await?.is_some(),
                "a ride is not the clean-up's"
            );
        }
        m.shutdown().await?;
        new.shutdown().await?;
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
        let ride = ride_path("segments/0001764000000000-3-000000007-11.seg", 7, 5, 9);
        assert_eq!(parse_ride_path(&ride), Some((7, 5, 9)));
        assert_eq!(parse_shipped_path(&ride), Some((7, 5, 9)));
        assert_eq!(object_time_ms(&ride), Some(1_764_000_000_000));
        assert_eq!(
            parse_ride_path("segments/0001764000000000-3-000000007-11.seg"),
            None
        );
        assert_eq!(parse_ride_path(&chunk_path(7, 5, 9)), None);
        assert!(ride_covered(&ride, Some((7, 9))) && !ride_covered(&ride, Some((7, 8))));
        assert!(!ride_covered(&ride, None) && ride_covered("segments/1-2-3-4.seg", None));
        assert_eq!(parse_chunk_path(&snapshot_path(7, 5)), None);
        assert_eq!(
            parse_snapshot_path("_strata/metadata/snapshots/x-1.bin"),
            None
        );
    }
}

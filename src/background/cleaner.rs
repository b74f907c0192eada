//! Log compaction (`cleanup.policy=compact`): each broker cleans the compacted partitions
//! it is preferred for, keeping the latest record of every key, as Kafka's log cleaner
//! does.
//!
//! A partition's index is `[clean][dirty][active]`: cleaned segments (written by an
//! earlier pass), then everything written since, then the newest data, which is not
//! cleanable yet. The active part follows Kafka's segment roll: the index is cut into
//! segments of at most `segment.bytes` and `segment.ms`, and the last of them is active,
//! as is data younger than `min.compaction.lag.ms` and the unsegmented tail (flush chunks
//! that object compaction has not rewritten yet). A pass runs when the dirty part is at
//! least `min.cleanable.dirty.ratio` of the cleanable bytes, when its oldest data passed
//! `max.compaction.lag.ms`, or when kept tombstones reached their delete horizon.
//!
//! A pass maps every key of the dirty part to its latest offset (capped in memory; a
//! larger dirty part is cleaned in several passes), then rewrites the clean and mapped
//! dirty entries into new segments of about the object compaction's size, leaving out
//! each record whose key has a later record, keyless records, and tombstones whose batch's
//! delete horizon (KIP-534, stamped on the first pass that kept them) has passed. Offsets
//! never change. Each output replaces exactly the entries it was made from with one
//! [`Command::Clean`], which the state machine refuses if they changed meanwhile (a
//! retention pass, a DeleteRecords, a topic deleted); the output is then deleted.
//!
//! Transactions (KIP-98): nothing at or past the partition's last stable offset is
//! cleanable (an open transaction's outcome is not known yet). Records of aborted
//! transactions (transactional batches inside an [`AbortedTxn`] of their producer) are
//! dropped and never enter the key map, so they can never hide a committed record.
//! A marker goes when Kafka's cleaner would drop it: once a pass finds no batch of its
//! transaction before it, the marker is stamped with a delete horizon, and a pass after
//! that horizon removes it (KIP-534). The state machine forgets an aborted transaction
//! once a cleaned output holds its marker, since its records are gone by then.
//!
//! Which partitions to clean, and what, is decided by [`plan`], a pure function of the
//! state, the topics' settings and a time.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn, Instrument};

use crate::fetch::{FetchReader, Piece, PlannedEntry};
use crate::metadata::state::objects::ObjectKind;
use crate::metadata::state::partition::{IndexEntry, Partition};
use crate::metadata::state::transactions::AbortedTxn;
use crate::metadata::state::{Command, MetadataState, Response};
use crate::metadata::Metadata;
use crate::record::batch::{
    batch_max_timestamp, ATTRIBUTES, CONTROL, HEADER_LEN, PRODUCER_ID, TRANSACTIONAL,
};
use crate::record::records::{
    batch_info, for_each_record, rewrite, stamp_horizon, RecordView, RecordsError, Rewritten,
};
use crate::storage::segment::CompactedBuilder;
use crate::storage::ObjectStorage;
use crate::topic_config::{TopicDefaults, TopicSettings};

use super::compaction::{compacted_name, discard_refused, read_entry, CompactionError, Swap};

/// The memory one pass's key map may take (key bytes plus a per-key overhead), as Kafka's
/// `log.cleaner.dedupe.buffer.size`: a dirty part with more keys is cleaned over passes.
const MAP_BYTES: usize = 64 << 20;
/// What one key costs in the map besides its bytes.
const MAP_ENTRY_OVERHEAD: usize = 64;

/// A compacted topic's settings, as effective for one broker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub segment_ms: i64,
    pub segment_bytes: u64,
    pub min_lag_ms: i64,
    pub max_lag_ms: i64,
    pub min_dirty_ratio: f64,
    pub delete_retention_ms: i64,
}

impl Settings {
    /// The settings of a topic whose `cleanup.policy` includes `compact`; None otherwise.
    pub fn of_topic(topic: &TopicSettings) -> Option<Self> {
        topic.compact.then_some(Self {
            segment_ms: topic.segment_ms,
            segment_bytes: topic.segment_bytes,
            min_lag_ms: topic.min_compaction_lag_ms,
            max_lag_ms: topic.max_compaction_lag_ms,
            min_dirty_ratio: topic.min_cleanable_dirty_ratio,
            delete_retention_ms: topic.delete_retention_ms,
        })
    }
}

/// One partition's pass: the entries to rewrite (from the log start to the end of the
/// cleanable part), of which those from `first_dirty` on are mapped.
#[derive(Debug, Clone)]
pub struct Job {
    pub topic: String,
    pub topic_id: [u8; 16],
    pub partition: i32,
    pub log_start: i64,
    pub entries: Vec<PlannedEntry>,
    pub first_dirty: usize,
    pub settings: Settings,
    /// The partition's aborted transactions overlapping the entries.
    pub aborted: Vec<AbortedTxn>,
}

/// Why a partition is cleaned now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    DirtyRatio,
    MaxLag,
    DeleteHorizon,
}

/// Where Kafka would have rolled segments over `index[start..]`: the positions of the
/// entries that begin one (`start` first, when there are entries); the last begins the
/// active segment. A segment rolls at `segment.bytes`, or at the first entry written
/// `segment.ms` after the segment's first; `max.compaction.lag.ms` rolls too, so that old
/// data does not wait for segment.ms. Object compaction never merges across these
/// positions, so a record that rolls the segment stays an entry of its own and what is
/// before it becomes cleanable without waiting for another write.
pub fn segment_starts(index: &[IndexEntry], start: usize, settings: &Settings) -> Vec<usize> {
    let roll_ms = settings.segment_ms.min(settings.max_lag_ms);
    let mut starts = Vec::new();
    let mut bytes = 0u64;
    for (i, e) in index.iter().enumerate().skip(start) {
        let Some(&first) = starts.last() else {
            starts.push(i);
            bytes = e.length;
            continue;
        };
        let first: &IndexEntry = &index[first];
        let too_big = bytes > 0 && bytes + e.length > settings.segment_bytes;
        let too_old = e.max_timestamp.saturating_sub(first.max_timestamp) >= roll_ms;
        if too_big || too_old {
            starts.push(i);
            bytes = 0;
        }
        bytes += e.length;
    }
    starts
}

/// The cleanable run of `p`: `(start, first dirty, end)` as index positions, or None.
/// `horizon_due` says kept tombstones may be removable now (a pass with nothing dirty).
pub fn cleanable(
    p: &Partition,
    kind: impl Fn(usize) -> Option<ObjectKind>,
    settings: &Settings,
    now_ms: i64,
    horizon_due: bool,
) -> Option<(usize, usize, usize, Reason)> {
    let index = &p.index;
    let start = index.partition_point(|e| e.end_offset() <= p.log_start_offset);
    let active = segment_starts(index, start, settings)
        .last()
        .copied()
        .unwrap_or(start);
    let mut end = active;
    // Not rewritten into a segment yet: object compaction's, not ours.
    if let Some(flush) = (start..end).find(|&i| kind(i) == Some(ObjectKind::Flush)) {
        end = flush;
    }
    // Records younger than the minimum lag stay as written.
    let young =
        index.partition_point(|e| e.max_timestamp <= now_ms.saturating_sub(settings.min_lag_ms));
    end = end.min(young.max(start));
    // Nothing at or past the last stable offset: an open transaction may still abort.
    let lso = p.last_stable_offset();
    let stable = index.partition_point(|e| e.end_offset() <= lso);
    end = end.min(stable.max(start));
    if end <= start {
        return None;
    }
    let first_dirty = (start..end)
        .find(|&i| kind(i) != Some(ObjectKind::Cleaned))
        .unwrap_or(end);
    let clean: u64 = index[start..first_dirty].iter().map(|e| e.length).sum();
    let dirty: u64 = index[first_dirty..end].iter().map(|e| e.length).sum();
    let reason = if first_dirty < end {
        let ratio = dirty as f64 / (clean + dirty).max(1) as f64;
        let oldest = index[first_dirty].max_timestamp;
        if ratio >= settings.min_dirty_ratio {
            Some(Reason::DirtyRatio)
        } else if now_ms.saturating_sub(oldest) >= settings.max_lag_ms {
            Some(Reason::MaxLag)
        } else {
            None
        }
    } else {
        None
    };
    let reason = reason.or(horizon_due.then_some(Reason::DeleteHorizon))?;
    Some((start, first_dirty, end, reason))
}

/// The passes broker `owner` runs at `now_ms`, for the compacted partitions it is
/// preferred for. `horizon_due` says, for a partition, whether tombstones it kept may
/// have reached their delete horizon.
pub fn plan(
    state: &MetadataState,
    owner: u64,
    defaults: &TopicDefaults,
    now_ms: i64,
    mut horizon_due: impl FnMut(&str, i32, &Settings) -> bool,
) -> Vec<(Job, Reason)> {
    let mut jobs = Vec::new();
    for (name, topic) in state.topics() {
        let topic_settings = state
            .config_layers(owner, defaults)
            .settings(&topic.configs);
        let Some(settings) = Settings::of_topic(&topic_settings) else {
            continue;
        };
        for (i, p) in topic.partitions.iter().enumerate() {
            let index = i as i32;
            if state.preferred_broker(name, index) != Some(owner) {
                continue;
            }
            let kind = |at: usize| {
                let e = p.index.get(at)?;
                state.objects().get(e.object).map(|info| info.kind)
            };
            let due = horizon_due(name, index, &settings);
            let Some((start, first_dirty, end, reason)) =
                cleanable(p, kind, &settings, now_ms, due)
            else {
                continue;
            };
            let entries: Option<Vec<PlannedEntry>> = p.index[start..end]
                .iter()
                .map(|e| PlannedEntry::resolve(state, e))
                .collect();
            if let Some(entries) = entries {
                let from = entries.first().map_or(0, |e| e.entry.base_offset);
                let to = entries.last().map_or(0, |e| e.entry.end_offset());
                jobs.push((
                    Job {
                        aborted: p.txns.aborted_in(from, to),
                        topic: name.clone(),
                        topic_id: topic.id,
                        partition: index,
                        log_start: p.log_start_offset,
                        entries,
                        first_dirty: first_dirty - start,
                        settings,
                    },
                    reason,
                ));
            }
        }
    }
    jobs
}

/// What cleaning did since start, for the stats file.
#[derive(Debug, Default)]
pub struct CleanerCounters {
    pub passes: AtomicU64,
    pub refused: AtomicU64,
    pub failed: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub batches_rewritten: AtomicU64,
}

#[derive(Debug, Clone)]
pub struct CleanerConfig {
    pub interval: Duration,
    pub node_id: u64,
    /// The size output segments grow to (the object compaction's).
    pub output_bytes: u64,
    pub upload_timeout: Duration,
    /// The static broker defaults of topic configs.
    pub topic_defaults: TopicDefaults,
}

/// Runs cleaning rounds forever, one partition at a time (a pass holds its key map and
/// one output segment in memory).
pub async fn run(
    metadata: Arc<Metadata>,
    storage: ObjectStorage,
    fetcher: Arc<FetchReader>,
    config: CleanerConfig,
    counters: Arc<CleanerCounters>,
) {
    // When each partition's kept tombstones may go; a partition not seen yet (after a
    // start, or a new owner) is given one delete retention from now, the latest any
    // tombstone cleaned before could be due.
    let mut horizons: HashMap<(String, i32), i64> = HashMap::new();
    let mut seq = 0u64;
    loop {
        tokio::time::sleep(config.interval).await;
        if !super::compaction::may_spend_puts(&storage) {
            continue;
        }
        let now_ms = crate::clock::now_ms();
        let mut seen = Vec::new();
        let jobs = metadata.read(|s| {
            plan(
                s,
                config.node_id,
                &config.topic_defaults,
                now_ms,
                |topic, partition, settings| {
                    let key = (topic.to_owned(), partition);
                    let due = *horizons
                        .entry(key.clone())
                        .or_insert(now_ms.saturating_add(settings.delete_retention_ms));
                    seen.push(key);
                    due <= now_ms
                },
            )
        });
        // Forget partitions this broker no longer cleans, so the map stays bounded.
        let seen: std::collections::HashSet<_> = seen.into_iter().collect();
        horizons.retain(|k, _| seen.contains(k));
        for (job, reason) in jobs {
            seq += 1;
            let key = (job.topic.clone(), job.partition);
            let span = tracing::info_span!("clean", topic = %job.topic, partition = job.partition);
            match clean(
                &metadata, &storage, &fetcher, &config, &counters, job, reason, seq,
            )
            .instrument(span)
            .await
            {
                Ok(next) => {
                    horizons.insert(key, next.unwrap_or(i64::MAX));
                }
                Err(e) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    warn!(topic = %key.0, partition = key.1, error = %e, "log cleaning failed; will retry");
                }
            }
        }
    }
}

/// The aborted transactions of a pass, by producer: each one's offset ranges (first
/// offset to marker), sorted.
#[derive(Debug, Default)]
struct AbortedRanges {
    by_producer: HashMap<i64, Vec<(i64, i64)>>,
}

impl AbortedRanges {
    fn new(aborted: &[AbortedTxn]) -> Self {
        let mut by_producer: HashMap<i64, Vec<(i64, i64)>> = HashMap::new();
        for a in aborted {
            by_producer
                .entry(a.producer_id)
                .or_default()
                .push((a.first_offset, a.last_offset));
        }
        for ranges in by_producer.values_mut() {
            ranges.sort_unstable();
        }
        Self { by_producer }
    }

    /// Whether a batch at `base` with header `txn` ([`txn_header`]) holds aborted records.
    fn holds_batch(&self, txn: Option<(i64, bool)>, base: i64) -> bool {
        txn.is_some_and(|(producer_id, control)| !control && self.holds(producer_id, base))
    }

    /// Whether `offset` lies in an aborted transaction of `producer_id`.
    fn holds(&self, producer_id: i64, offset: i64) -> bool {
        let Some(ranges) = self.by_producer.get(&producer_id) else {
            return false;
        };
        // A producer's transactions on a partition follow one another: the last range
        // starting at or before the offset is the only one that can hold it.
        let at = ranges.partition_point(|(first, _)| *first <= offset);
        at > 0 && ranges.get(at - 1).is_some_and(|(_, last)| offset <= *last)
    }
}

/// A transactional batch's producer id and whether it is a control batch (a marker);
/// None for a batch outside transactions or a header too short to say.
fn txn_header(bytes: &[u8]) -> Option<(i64, bool)> {
    if bytes.len() < HEADER_LEN {
        return None;
    }
    let attributes = i16::from_be_bytes(bytes.get(ATTRIBUTES..ATTRIBUTES + 2)?.try_into().ok()?);
    if attributes & TRANSACTIONAL == 0 {
        return None;
    }
    let producer_id = i64::from_be_bytes(bytes.get(PRODUCER_ID..PRODUCER_ID + 8)?.try_into().ok()?);
    Some((producer_id, attributes & CONTROL != 0))
}

/// Whether the batch `bytes` at offset `base` holds records of an aborted transaction:
/// transactional, not a control batch (markers go by their own rule), and within an
/// aborted transaction of its producer. A header too short to say is not aborted.
fn aborted_batch(bytes: &[u8], base: i64, aborted: &AbortedRanges) -> bool {
    !aborted.by_producer.is_empty() && aborted.holds_batch(txn_header(bytes), base)
}

/// The producers a pass has read a transactional batch of since their last marker
/// (Kafka's `CleanedTransactionMetadata`): a marker whose producer is not here has no
/// records of its transaction left before it, and may go after its delete horizon.
#[derive(Debug, Default)]
struct SeenTxns(HashSet<i64>);

/// The key map of a pass: each key's latest offset in the mapped part.
struct KeyMap {
    latest: HashMap<Box<[u8]>, i64>,
    bytes: usize,
}

impl KeyMap {
    fn supersedes(&self, record: &RecordView<'_>, offset: i64) -> bool {
        record
            .key
            .and_then(|k| self.latest.get(k))
            .is_some_and(|latest| *latest > offset)
    }
}

/// Adds one entry's keys to the map, unless that would pass the memory cap (and the map
/// already holds something): then false, and the map is unchanged.
fn map_entry(
    map: &mut KeyMap,
    piece: &Piece,
    data: &[u8],
    log_start: i64,
    aborted: &AbortedRanges,
) -> bool {
    let mut found: Vec<(Box<[u8]>, i64)> = Vec::new();
    for (batch, base) in piece.batches(data) {
        let bytes = &data[batch.start..batch.start + batch.len];
        // Markers map nothing; neither do aborted records, which the pass drops.
        if batch_info(bytes).is_ok_and(|info| info.control) || aborted_batch(bytes, base, aborted) {
            continue;
        }
        // A batch that cannot be read maps nothing: its records are kept as they are.
        let _ = for_each_record(bytes, |r| {
            let offset = base + i64::from(r.offset_delta);
            if let (Some(key), true) = (r.key, offset >= log_start) {
                found.push((key.into(), offset));
            }
        });
    }
    let added: usize = found
        .iter()
        .map(|(k, _)| k.len() + MAP_ENTRY_OVERHEAD)
        .sum();
    if !map.latest.is_empty() && map.bytes + added > MAP_BYTES {
        return false;
    }
    map.bytes += added;
    map.latest.extend(found);
    true
}

/// One entry's batches after cleaning.
#[derive(Debug, Default)]
struct CleanedEntry {
    /// (batch, base offset, offsets spanned), in offset order.
    batches: Vec<(Vec<u8>, i64, u32)>,
    /// Batches rewritten or dropped.
    changed: u64,
    /// The earliest delete horizon of the tombstones and markers kept.
    tombstones_until: Option<i64>,
    /// Batches kept as they were because they could not be read.
    unreadable: Vec<(i64, RecordsError)>,
}

impl CleanedEntry {
    /// Something kept (a tombstone, a marker) may go at `horizon`.
    fn keep_until(&mut self, horizon: i64) {
        self.tombstones_until = Some(self.tombstones_until.map_or(horizon, |u| u.min(horizon)));
    }
}

/// Cleans one entry's batches (pure but for `seen`, which carries the pass's
/// transactions from entry to entry): leaves out records below the log start, batches of
/// aborted transactions, keyless records, records `map` has a later offset for,
/// tombstones whose batch's delete horizon is before `now_ms`, and markers past their
/// horizon with no records of their transaction before them; a batch keeping a
/// tombstone, or such a marker, gets `horizon` if it has none.
fn clean_entry(
    piece: &Piece,
    data: &[u8],
    map: &KeyMap,
    (log_start, aborted, seen): (i64, &AbortedRanges, &mut SeenTxns),
    now_ms: i64,
    horizon: i64,
) -> CleanedEntry {
    let mut out = CleanedEntry::default();
    for (batch, base) in piece.batches(data) {
        let bytes = &data[batch.start..batch.start + batch.len];
        let span = batch.offset_span;
        if base + i64::from(span) <= log_start {
            out.changed += 1;
            continue;
        }
        let txn = txn_header(bytes);
        if let Some((producer_id, false)) = txn {
            seen.0.insert(producer_id);
        }
        if aborted.holds_batch(txn, base) {
            out.changed += 1;
            continue;
        }
        let info = match batch_info(bytes) {
            Ok(info) if info.control => {
                let emptied = txn.is_some_and(|(producer_id, _)| !seen.0.remove(&producer_id));
                if !emptied {
                    // Records of its transaction are still before it (or this pass
                    // just dropped them): the marker stays as it is.
                    out.batches.push((bytes.to_vec(), base, span));
                    continue;
                }
                match info.delete_horizon {
                    Some(h) if h <= now_ms => out.changed += 1,
                    Some(h) => {
                        out.keep_until(h);
                        out.batches.push((bytes.to_vec(), base, span));
                    }
                    None => match stamp_horizon(bytes, horizon) {
                        Ok(stamped) => {
                            out.keep_until(horizon);
                            out.changed += 1;
                            out.batches.push((stamped, base, span));
                        }
                        Err(e) => {
                            out.unreadable.push((base, e));
                            out.batches.push((bytes.to_vec(), base, span));
                        }
                    },
                }
                continue;
            }
            Ok(info) => info,
            Err(e) => {
                out.unreadable.push((base, e));
                out.batches.push((bytes.to_vec(), base, span));
                continue;
            }
        };
        let horizon_passed = info.delete_horizon.is_some_and(|h| h <= now_ms);
        let keep = |r: &RecordView<'_>| {
            let offset = base + i64::from(r.offset_delta);
            r.key.is_some()
                && offset >= log_start
                && !map.supersedes(r, offset)
                && !(r.tombstone && horizon_passed)
        };
        match rewrite(bytes, keep, horizon) {
            Ok(r) => {
                if let Some(t) = r.tombstones_until {
                    out.keep_until(t);
                }
                match r.batch {
                    Rewritten::Unchanged => out.batches.push((bytes.to_vec(), base, span)),
                    Rewritten::New(b) => {
                        out.changed += 1;
                        out.batches.push((b, base, span));
                    }
                    Rewritten::Empty => out.changed += 1,
                }
            }
            Err(e) => {
                out.unreadable.push((base, e));
                out.batches.push((bytes.to_vec(), base, span));
            }
        }
    }
    out
}

/// One output segment being written: the entries it replaces and its builder.
struct Output {
    builder: CompactedBuilder,
    inputs: Vec<PlannedEntry>,
}

#[allow(clippy::too_many_arguments)]
async fn clean(
    metadata: &Metadata,
    storage: &ObjectStorage,
    fetcher: &FetchReader,
    config: &CleanerConfig,
    counters: &CleanerCounters,
    job: Job,
    reason: Reason,
    seq: u64,
) -> Result<Option<i64>, CompactionError> {
    let now_ms = crate::clock::now_ms();
    let piece_of = |planned: &PlannedEntry| Piece {
        offsets_in_headers: planned.kind != ObjectKind::Flush,
        ..Piece::chunk(planned)
    };
    // Map the dirty part, entry by entry, as far as the memory cap allows.
    let mut map = KeyMap {
        latest: HashMap::new(),
        bytes: 0,
    };
    // The state's aborted transactions, and those compaction moved into the footers of
    // the pass's segments (a cleaned segment has none: its aborted records are gone).
    let mut aborted = job.aborted.clone();
    for planned in &job.entries {
        if matches!(planned.kind, ObjectKind::Segment | ObjectKind::Shared) {
            aborted.extend(fetcher.frame_index(planned).await?.aborted);
        }
    }
    let aborted = AbortedRanges::new(&aborted);
    let mut mapped_end = job.first_dirty;
    for planned in &job.entries[job.first_dirty..] {
        let data = read_entry(storage, fetcher, planned).await?;
        counters
            .bytes_read
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        if !map_entry(&mut map, &piece_of(planned), &data, job.log_start, &aborted) {
            break;
        }
        mapped_end += 1;
    }
    let horizon = now_ms.saturating_add(job.settings.delete_retention_ms);
    let mut seen = SeenTxns::default();
    let mut tombstones_until: Option<i64> = None;
    let (mut bytes_before, mut bytes_after, mut removed, mut outputs) = (0u64, 0u64, 0u64, 0u64);
    let mut output: Option<Output> = None;
    for planned in &job.entries[..mapped_end] {
        let data = read_entry(storage, fetcher, planned).await?;
        counters
            .bytes_read
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        bytes_before += planned.entry.length;
        let out = output.get_or_insert_with(|| Output {
            builder: CompactedBuilder::new(
                &job.topic,
                job.topic_id,
                job.partition,
                planned.entry.base_offset,
                config.output_bytes as usize,
            ),
            inputs: Vec::new(),
        });
        let cleaned = clean_entry(
            &piece_of(planned),
            &data,
            &map,
            (job.log_start, &aborted, &mut seen),
            now_ms,
            horizon,
        );
        for (base, e) in &cleaned.unreadable {
            warn!(object = %planned.object, base, error = %e, "a batch the cleaner cannot read is kept as it is");
        }
        removed += cleaned.changed;
        if let Some(t) = cleaned.tombstones_until {
            tombstones_until = Some(tombstones_until.map_or(t, |u| u.min(t)));
        }
        for (b, base, span) in &cleaned.batches {
            out.builder
                .push_batch(b, *base, *span, batch_max_timestamp(b));
        }
        out.inputs.push(planned.clone());
        if out.builder.data_len() >= config.output_bytes {
            if let Some(out) = output.take() {
                bytes_after +=
                    swap_in(metadata, storage, config, counters, &job, out, seq, outputs).await?;
                outputs += 1;
            }
        }
    }
    if let Some(out) = output.take() {
        bytes_after +=
            swap_in(metadata, storage, config, counters, &job, out, seq, outputs).await?;
        outputs += 1;
    }
    counters.passes.fetch_add(1, Ordering::Relaxed);
    counters
        .batches_rewritten
        .fetch_add(removed, Ordering::Relaxed);
    info!(
        ?reason,
        entries = mapped_end,
        keys = map.latest.len(),
        bytes_before,
        bytes_after,
        batches_changed = removed,
        objects_written = outputs,
        "log cleaning pass"
    );
    Ok(tombstones_until)
}

/// Uploads one output and swaps it in for its inputs; its size. A refused swap (the input
/// changed) deletes the output and ends the pass.
#[allow(clippy::too_many_arguments)]
async fn swap_in(
    metadata: &Metadata,
    storage: &ObjectStorage,
    config: &CleanerConfig,
    counters: &CleanerCounters,
    job: &Job,
    mut out: Output,
    seq: u64,
    part: u64,
) -> Result<u64, CompactionError> {
    let Some(last) = out.inputs.last() else {
        return Ok(0);
    };
    out.builder.extend_to(last.entry.end_offset());
    let (object_bytes, position, length) = out.builder.finish();
    let object = compacted_name(config.node_id, &format!("c{seq}-{part}"));
    let swap = Swap {
        topic: (&job.topic, job.topic_id, job.partition),
        inputs: &out.inputs,
        object: &object,
        bytes: &object_bytes,
        data: (position, length),
    };
    let response = swap
        .upload_and_propose(
            (metadata, storage, config.upload_timeout),
            &counters.bytes_written,
            "crash-after-clean-put",
            Command::Clean,
        )
        .await?;
    match response {
        Response::Compacted(Ok(_)) => Ok(object_bytes.len() as u64),
        other => {
            discard_refused(metadata, storage, &object, &other, &counters.refused).await;
            Err(CompactionError::Refused)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::state::partition::IndexEntry;
    use crate::record::compression::Codec;
    use crate::testing::keyed_batch;
    use proptest::prelude::*;

    /// A record of the model: its key (None: keyless) and whether it is a tombstone.
    type Model = (Option<u8>, bool);

    /// Entries of batches of records, numbered from offset 0; each record's value names
    /// its offset.
    fn build(entries: &[Vec<(Vec<Model>, u8)>]) -> Vec<(Piece, Vec<u8>)> {
        let mut offset = 0i64;
        let mut out = Vec::new();
        for (n, batches) in entries.iter().enumerate() {
            let base_offset = offset;
            let mut data = Vec::new();
            for (records, codec) in batches {
                let keys: Vec<(Option<String>, Option<String>)> = records
                    .iter()
                    .enumerate()
                    .map(|(i, (k, tomb))| {
                        let value = (!tomb).then(|| format!("v{}", offset + i as i64));
                        (k.map(|k| format!("k{k}")), value)
                    })
                    .collect();
                let refs: Vec<_> = keys
                    .iter()
                    .map(|(k, v)| (k.as_deref(), v.as_deref(), 1_000))
                    .collect();
                let codec =
                    [Codec::None, Codec::Gzip, Codec::Lz4, Codec::Zstd][*codec as usize % 4];
                data.extend(keyed_batch(offset, &refs, codec));
                offset += records.len() as i64;
            }
            let piece = Piece {
                object: format!("o{n}"),
                position: 0,
                length: data.len() as u64,
                base_offset,
                end_offset: offset,
                offsets_in_headers: true,
            };
            out.push((piece, data));
        }
        out
    }

    /// (offset, key, tombstone) of every record in cleaned batches.
    fn records_of(batches: &[(Vec<u8>, i64, u32)]) -> Vec<(i64, Option<Vec<u8>>, bool)> {
        let mut out = Vec::new();
        let mut last_end = i64::MIN;
        for (b, base, span) in batches {
            assert!(*base >= last_end, "batches overlap or go back");
            last_end = base + i64::from(*span);
            for_each_record(b, |r| {
                out.push((
                    base + i64::from(r.offset_delta),
                    r.key.map(<[u8]>::to_vec),
                    r.tombstone,
                ))
            })
            .expect("a cleaned batch reads back");
        }
        out
    }

    fn entries() -> impl Strategy<Value = Vec<Vec<(Vec<Model>, u8)>>> {
        let record = (
            proptest::option::weighted(0.95, 0u8..6),
            proptest::bool::weighted(0.15),
        );
        let batch = (proptest::collection::vec(record, 1..6), 0u8..4);
        proptest::collection::vec(proptest::collection::vec(batch, 1..4), 1..6)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the log, a pass keeps the latest record of every key at its offset,
        /// removes every record a mapped later record supersedes, never invents or moves
        /// a record, and a later pass past the delete horizon removes the tombstones.
        #[test]
        fn a_pass_keeps_exactly_the_latest_record_of_each_key(
            log in entries(),
            dirty_from in 0usize..6,
            log_start_pick in 0u32..100,
        ) {
            let pieces = build(&log);
            let total = pieces.last().map_or(0, |(p, _)| p.end_offset);
            let log_start = i64::from(log_start_pick) % (total + 1);
            let first_dirty = dirty_from.min(pieces.len());
            let mut map = KeyMap { latest: HashMap::new(), bytes: 0 };
            for (piece, data) in &pieces[first_dirty..] {
                prop_assert!(map_entry(&mut map, piece, data, log_start, &AbortedRanges::default()));
            }
            let input: Vec<_> = pieces.iter().flat_map(|(piece, data)| {
                records_of(&piece.batches(data).into_iter().map(|(b, base)| {
                    (data[b.start..b.start + b.len].to_vec(), base, b.offset_span)
                }).collect::<Vec<_>>())
            }).collect();
            let mapped_from = pieces.get(first_dirty).map_or(total, |(p, _)| p.base_offset);

            let (now, horizon) = (1_000, 5_000);
            let cleaned: Vec<_> = pieces.iter().map(|(piece, data)| clean_entry(piece, data, &map, (log_start, &AbortedRanges::default(), &mut SeenTxns::default()), now, horizon)).collect();
            let output: Vec<_> = cleaned.iter().flat_map(|c| records_of(&c.batches)).collect();
            for c in &cleaned {
                prop_assert!(c.unreadable.is_empty());
            }
            // Nothing invented or moved.
            for r in &output {
                prop_assert!(input.contains(r), "{:?} was not in the input", r);
            }
            for (offset, key, tombstone) in &input {
                let kept = output.iter().any(|r| r.0 == *offset);
                let Some(key) = key else {
                    prop_assert!(!kept, "keyless record {} kept", offset);
                    continue;
                };
                let later_mapped = input.iter().any(|(o, k, _)| {
                    *o > *offset && *o >= mapped_from && k.as_ref() == Some(key)
                });
                let want = *offset >= log_start && !later_mapped;
                prop_assert_eq!(kept, want, "offset {} key {:?} tombstone {}", offset, key, tombstone);
            }
            // The latest record of each key (from the log start) is always there.
            let mut latest: HashMap<Vec<u8>, i64> = HashMap::new();
            for (o, k, _) in &input {
                if let (Some(k), true) = (k, *o >= log_start) {
                    latest.insert(k.clone(), *o);
                }
            }
            for (k, o) in &latest {
                prop_assert!(output.iter().any(|r| r.0 == *o && r.1.as_ref() == Some(k)));
            }

            // Passes over the output: before the horizon tombstones stay, after it they go.
            let again = |now_ms: i64| -> Vec<_> {
                let empty = KeyMap { latest: HashMap::new(), bytes: 0 };
                cleaned.iter().flat_map(|c| {
                    let data: Vec<u8> = c.batches.iter().flat_map(|(b, _, _)| b.clone()).collect();
                    let piece = Piece { object: "x".into(), position: 0, length: data.len() as u64, base_offset: 0, end_offset: total, offsets_in_headers: true };
                    records_of(&clean_entry(&piece, &data, &empty, (log_start, &AbortedRanges::default(), &mut SeenTxns::default()), now_ms, now_ms + 4_000).batches)
                }).collect()
            };
            prop_assert_eq!(&again(horizon - 1), &output);
            let after: Vec<_> = output.iter().filter(|r| !r.2).cloned().collect();
            prop_assert_eq!(again(horizon), after);
        }
    }

    /// A partition of `(kind, bytes, max timestamp)` entries of 10 offsets each; the
    /// object id is the entry's position.
    fn partition(entries: &[(ObjectKind, u64, i64)]) -> (Partition, Vec<ObjectKind>) {
        let mut p = Partition::default();
        let mut running = i64::MIN;
        for (i, (_, length, ts)) in entries.iter().enumerate() {
            running = running.max(*ts);
            p.index.push(IndexEntry {
                base_offset: i as i64 * 10,
                offset_count: 10,
                object: i as u64,
                position: 8,
                length: *length,
                max_timestamp: running,
            });
        }
        p.next_offset = entries.len() as i64 * 10;
        (p, entries.iter().map(|e| e.0).collect())
    }

    fn from_lookup(value: impl Fn(&str) -> Option<String>) -> Option<Settings> {
        Settings::of_topic(&TopicSettings::from_lookup(value))
    }

    fn settings() -> Settings {
        from_lookup(|key| match key {
            "cleanup.policy" => Some("compact".into()),
            "segment.bytes" => Some("100".into()),
            _ => None,
        })
        .expect("compacted")
    }

    fn run(
        entries: &[(ObjectKind, u64, i64)],
        s: &Settings,
        now: i64,
        due: bool,
    ) -> Option<(usize, usize, usize, Reason)> {
        let (p, kinds) = partition(entries);
        cleanable(&p, |i| kinds.get(i).copied(), s, now, due)
    }

    use ObjectKind::{Cleaned as C, Flush as F, Segment as S};

    #[test]
    fn only_compacted_topics_have_settings() {
        assert!(from_lookup(|_| None).is_none());
        let both = from_lookup(|k| (k == "cleanup.policy").then(|| "compact,delete".into()));
        assert_eq!(both.map(|s| s.min_dirty_ratio), Some(0.5));
    }

    #[test]
    fn the_active_segment_and_the_unsegmented_tail_are_never_cleaned() {
        let s = settings();
        // One segment's worth: all active.
        assert_eq!(run(&[(S, 50, 1), (S, 40, 2)], &s, 10, false), None);
        // The third entry rolls a new segment; the first two are cleanable.
        assert_eq!(
            run(&[(S, 50, 1), (S, 40, 2), (S, 50, 3)], &s, 10, false),
            Some((0, 0, 2, Reason::DirtyRatio))
        );
        // A flush chunk stops the cleanable part.
        assert_eq!(
            run(&[(S, 50, 1), (F, 60, 2), (S, 50, 3)], &s, 10, false),
            Some((0, 0, 1, Reason::DirtyRatio))
        );
        // segment.ms rolls by time.
        let timed = Settings {
            segment_ms: 5,
            segment_bytes: u64::MAX,
            ..s
        };
        assert_eq!(
            run(
                &[(S, 10, 1), (S, 10, 3), (S, 10, 6), (S, 10, 7)],
                &timed,
                100,
                false
            ),
            Some((0, 0, 2, Reason::DirtyRatio))
        );
    }

    #[test]
    fn the_dirty_ratio_max_lag_and_delete_horizon_trigger_a_pass() {
        let s = settings();
        // 300 clean bytes, 100 dirty: a ratio of 0.25 waits.
        let log = [
            (C, 100, 1),
            (C, 100, 2),
            (C, 100, 3),
            (S, 100, 4),
            (S, 100, 5),
        ];
        assert_eq!(run(&log, &s, 10, false), None);
        let eager = Settings {
            min_dirty_ratio: 0.2,
            ..s
        };
        assert_eq!(
            run(&log, &eager, 10, false),
            Some((0, 3, 4, Reason::DirtyRatio))
        );
        let lagging = Settings { max_lag_ms: 5, ..s };
        assert_eq!(
            run(&log, &lagging, 10, false).map(|r| r.3),
            Some(Reason::MaxLag)
        );
        // Nothing dirty, but tombstones are due.
        let clean = [(C, 100, 1), (C, 100, 2), (S, 100, 3)];
        assert_eq!(run(&clean, &s, 10, false), None);
        assert_eq!(
            run(&clean, &s, 10, true),
            Some((0, 2, 2, Reason::DeleteHorizon))
        );
    }

    #[test]
    fn records_younger_than_the_minimum_lag_wait() {
        let s = Settings {
            min_lag_ms: 100,
            ..settings()
        };
        let log = [(S, 100, 1000), (S, 100, 1050), (S, 100, 1100)];
        assert_eq!(run(&log, &s, 1090, false), None);
        assert_eq!(
            run(&log, &s, 1120, false),
            Some((0, 0, 1, Reason::DirtyRatio))
        );
        assert_eq!(
            run(&log, &s, 9999, false),
            Some((0, 0, 2, Reason::DirtyRatio))
        );
    }

    #[test]
    fn entries_below_the_log_start_are_not_counted() {
        let (mut p, kinds) = partition(&[(S, 100, 1), (S, 100, 2), (S, 100, 3)]);
        p.log_start_offset = 10;
        assert_eq!(
            cleanable(&p, |i| kinds.get(i).copied(), &settings(), 10, false),
            Some((1, 1, 2, Reason::DirtyRatio))
        );
    }

    /// A one-record batch at `offset` (key `k`, value `v`) with the given attribute bits
    /// and producer id, its CRC recomputed.
    fn txn_batch(offset: i64, k: &str, v: &str, attributes: i16, producer_id: i64) -> Vec<u8> {
        let mut b = keyed_batch(offset, &[(Some(k), Some(v), 1_000)], Codec::None);
        b[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
        b[PRODUCER_ID..PRODUCER_ID + 8].copy_from_slice(&producer_id.to_be_bytes());
        let crc = crc32c::crc32c(&b[ATTRIBUTES..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// Batches `data` as one entry of offsets `[0, end_offset)` (offsets in the headers).
    fn one_object(data: &[u8], end_offset: i64) -> Piece {
        Piece {
            object: "o".into(),
            position: 0,
            length: data.len() as u64,
            base_offset: 0,
            end_offset,
            offsets_in_headers: true,
        }
    }

    fn empty_map() -> KeyMap {
        KeyMap {
            latest: HashMap::new(),
            bytes: 0,
        }
    }

    fn aborted(producer_id: i64, first_offset: i64, last_offset: i64) -> AbortedTxn {
        AbortedTxn {
            producer_id,
            first_offset,
            last_offset,
        }
    }

    #[test]
    fn aborted_ranges_hold_only_their_producers_offsets() {
        let r = AbortedRanges::new(&[aborted(1, 30, 40), aborted(2, 15, 25), aborted(1, 10, 20)]);
        for (pid, offset, want) in [
            (1, 9, false),
            (1, 10, true),
            (1, 20, true),
            (1, 21, false),
            (1, 29, false),
            (1, 35, true),
            (1, 41, false),
            (2, 14, false),
            (2, 15, true),
            (3, 15, false),
        ] {
            assert_eq!(r.holds(pid, offset), want, "producer {pid} offset {offset}");
        }
        assert!(!AbortedRanges::default().holds(1, 10));
    }

    #[test]
    fn only_transactional_data_batches_of_an_aborted_transaction_are_aborted() {
        const TXN: i16 = TRANSACTIONAL;
        const MARKER: i16 = TRANSACTIONAL | CONTROL;
        let r = AbortedRanges::new(&[aborted(1, 10, 20)]);
        assert!(aborted_batch(&txn_batch(12, "k", "v", TXN, 1), 12, &r));
        // Compressed or not, the attribute bits of the codec do not matter.
        assert!(aborted_batch(
            &txn_batch(12, "k", "v", TXN | 0x04, 1),
            12,
            &r
        ));
        // The marker stays; so do plain records of the same producer id, another
        // producer's records, and records outside the transaction.
        assert!(!aborted_batch(&txn_batch(20, "k", "v", MARKER, 1), 20, &r));
        assert!(!aborted_batch(&txn_batch(12, "k", "v", 0, 1), 12, &r));
        assert!(!aborted_batch(&txn_batch(12, "k", "v", TXN, 2), 12, &r));
        assert!(!aborted_batch(&txn_batch(21, "k", "v", TXN, 1), 21, &r));
        // A truncated header says nothing.
        assert!(!aborted_batch(
            &txn_batch(12, "k", "v", TXN, 1)[..40],
            12,
            &r
        ));
    }

    #[test]
    fn aborted_records_are_dropped_and_never_win_the_key_map() {
        const TXN: i16 = TRANSACTIONAL;
        const MARKER: i16 = TRANSACTIONAL | CONTROL;
        // 0: k1 plain; 1: k1 in producer 1's aborted transaction, 2: its abort marker;
        // 3: k2 in producer 2's committed transaction, 4: its commit marker.
        let batches = [
            txn_batch(0, "k1", "committed", 0, -1),
            txn_batch(1, "k1", "aborted", TXN, 1),
            txn_batch(2, "m", "abort", MARKER, 1),
            txn_batch(3, "k2", "committed", TXN, 2),
            txn_batch(4, "m", "commit", MARKER, 2),
        ];
        let data: Vec<u8> = batches.concat();
        let piece = one_object(&data, 5);
        let ranges = AbortedRanges::new(&[aborted(1, 1, 2)]);
        let mut map = empty_map();
        assert!(map_entry(&mut map, &piece, &data, 0, &ranges));
        assert_eq!(map.latest.get(&b"k1"[..]), Some(&0));
        assert_eq!(map.latest.get(&b"k2"[..]), Some(&3));
        assert!(!map.latest.contains_key(&b"m"[..]));
        let cleaned = clean_entry(
            &piece,
            &data,
            &map,
            (0, &ranges, &mut SeenTxns::default()),
            1_000,
            5_000,
        );
        assert!(cleaned.unreadable.is_empty());
        let kept: Vec<i64> = cleaned.batches.iter().map(|(_, base, _)| *base).collect();
        assert_eq!(kept, vec![0, 2, 3, 4]);
        assert_eq!(cleaned.changed, 1);
        // Without the aborted transaction, its record would supersede offset 0.
        let mut plain = empty_map();
        let none = AbortedRanges::default();
        assert!(map_entry(&mut plain, &piece, &data, 0, &none));
        assert_eq!(plain.latest.get(&b"k1"[..]), Some(&1));
    }

    /// Kafka's marker rule: a marker stays while its transaction has records before it,
    /// then is stamped with a delete horizon, and the first pass after it removes it.
    #[test]
    fn markers_go_after_their_records_and_a_delete_horizon() {
        const TXN: i16 = TRANSACTIONAL;
        const MARKER: i16 = TRANSACTIONAL | CONTROL;
        // 0: k1 in producer 1's committed transaction, 1: its commit marker, 2: k1 plain
        // (supersedes 0), 3: k2 in producer 2's aborted transaction, 4: its abort marker.
        let batches = [
            txn_batch(0, "k1", "committed", TXN, 1),
            txn_batch(1, "m", "commit", MARKER, 1),
            txn_batch(2, "k1", "plain", 0, -1),
            txn_batch(3, "k2", "aborted", TXN, 2),
            txn_batch(4, "m", "abort", MARKER, 2),
        ];
        let ranges = AbortedRanges::new(&[aborted(2, 3, 4)]);
        let pass = |data: &[u8], now_ms: i64| {
            let mut map = empty_map();
            assert!(map_entry(&mut map, &one_object(data, 5), data, 0, &ranges));
            let mut seen = SeenTxns::default();
            clean_entry(
                &one_object(data, 5),
                data,
                &map,
                (0, &ranges, &mut seen),
                now_ms,
                now_ms + 4_000,
            )
        };
        let bases = |c: &CleanedEntry| {
            c.batches
                .iter()
                .map(|(_, base, _)| *base)
                .collect::<Vec<_>>()
        };
        let join = |c: &CleanedEntry| {
            c.batches
                .iter()
                .flat_map(|(b, _, _)| b.clone())
                .collect::<Vec<u8>>()
        };

        // First pass: the records go, the markers stay untouched (their records were there).
        let first = pass(&batches.concat(), 1_000);
        assert_eq!(bases(&first), vec![1, 2, 4]);
        assert_eq!(first.tombstones_until, None);
        let horizons = |c: &CleanedEntry| {
            c.batches
                .iter()
                .filter_map(|(b, _, _)| {
                    batch_info(b)
                        .ok()
                        .filter(|i| i.control)
                        .map(|i| i.delete_horizon)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(horizons(&first), vec![None, None]);
        // Second: nothing of theirs is left, so they are stamped with a horizon.
        let second = pass(&join(&first), 2_000);
        assert_eq!(bases(&second), vec![1, 2, 4]);
        assert_eq!(horizons(&second), vec![Some(6_000), Some(6_000)]);
        assert_eq!(second.tombstones_until, Some(6_000));
        assert!(second.unreadable.is_empty());
        // Before the horizon they stay, with their first horizon.
        let early = pass(&join(&second), 5_999);
        assert_eq!(bases(&early), vec![1, 2, 4]);
        assert_eq!(horizons(&early), vec![Some(6_000), Some(6_000)]);
        // At the horizon they go; the plain record stays.
        let last = pass(&join(&second), 6_000);
        assert_eq!(bases(&last), vec![2]);
        assert_eq!(last.tombstones_until, None);
    }

    #[test]
    fn nothing_at_or_past_the_last_stable_offset_is_cleaned(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let s = settings();
        let log = [(S, 50, 1), (S, 40, 2), (S, 50, 3)];
        let (mut p, kinds) = partition(&log);
        assert_eq!(
            cleanable(&p, |i| kinds.get(i).copied(), &s, 10, false),
            Some((0, 0, 2, Reason::DirtyRatio))
        );
        // A transaction open from offset 10 (the second entry's start) holds it back.
        p.txns.record_transactional_batch(7, 10)?;
        assert_eq!(p.last_stable_offset(), 10);
        assert_eq!(
            cleanable(&p, |i| kinds.get(i).copied(), &s, 10, false),
            Some((0, 0, 1, Reason::DirtyRatio))
        );
        // One open from inside the first entry: nothing is cleanable.
        let (mut p, kinds) = partition(&log);
        p.txns.record_transactional_batch(7, 5)?;
        assert_eq!(
            cleanable(&p, |i| kinds.get(i).copied(), &s, 10, false),
            None
        );
        // Once it ends, the run is cleanable again.
        p.txns.marker(7, false, 29);
        assert_eq!(
            cleanable(&p, |i| kinds.get(i).copied(), &s, 10, false),
            Some((0, 0, 2, Reason::DirtyRatio))
        );
        Ok(())
    }
}

//! Object compaction: each broker rewrites the partitions it is preferred for from small
//! flush chunks (the tail) into per-partition segment objects, and merges small segments
//! into larger ones, so that a partition's index holds about `bytes kept / segment size`
//! entries plus a short tail, however many flushes wrote it.
//!
//! A job reads a run of index entries, writes their batches (byte for byte, with their
//! assigned offsets in the headers) into a new object under `compacted/`, uploads it,
//! and proposes one [`Command::Compact`]. The state machine swaps it in only if the run
//! is still exactly what was read; otherwise the new object is deleted. A crash at any
//! step leaves either the old entries (and an orphan the sweep removes) or the new one
//! (and garbage the collector removes): never a gap, never a duplicate.
//!
//! Which runs to compact is decided by [`plan`], a pure function of the state.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tracing::{debug, info, warn, Instrument};

use crate::fetch::{FetchReader, Piece, PlannedEntry};
use crate::metadata::state::cluster::partition_hash;
use crate::metadata::state::objects::ObjectKind;
use crate::metadata::state::partition::IndexEntry;
use crate::metadata::state::{Command, CompactionSwap, MetadataState, Response, StateError};
use crate::metadata::Metadata;
use crate::record::batch::batch_max_timestamp;
use crate::storage::budget::Class;
use crate::storage::segment::CompactedBuilder;
use crate::storage::ObjectStorage;

/// Where compacted segments live; the recovery replay of flush objects never looks here.
pub const COMPACTED_PREFIX: &str = "compacted";
/// Segments merged at once (see `merge_run`).
const FAN_IN: usize = 4;
/// Jobs one broker runs per round; the rest wait for the next round.
const MAX_JOBS_PER_ROUND: usize = 256;

#[derive(Debug, Clone)]
pub struct CompactionPolicy {
    /// The size segments grow towards.
    pub segment_bytes: u64,
    /// Tail older than this is compacted however small (light partitions).
    pub age: Duration,
}

#[derive(Debug, Clone)]
pub struct CompactionConfig {
    pub policy: CompactionPolicy,
    pub interval: Duration,
    pub node_id: u64,
    pub upload_timeout: Duration,
}

/// What compaction did since start, for the stats file.
#[derive(Debug, Default)]
pub struct CompactionCounters {
    pub jobs: AtomicU64,
    pub refused: AtomicU64,
    pub failed: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
}

/// One run of index entries to rewrite as one segment.
#[derive(Debug, Clone)]
pub struct Job {
    pub topic: String,
    pub topic_id: [u8; 16],
    pub partition: i32,
    pub entries: Vec<PlannedEntry>,
}

impl Job {
    fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.entry.length).sum()
    }
}

/// The jobs for the partitions `owner` is preferred for, at `now_ms`: at most one per
/// partition, tail first.
pub fn plan(state: &MetadataState, owner: u64, now_ms: i64, policy: &CompactionPolicy) -> Vec<Job> {
    let age_ms = policy.age.as_millis() as i64;
    let mut jobs = Vec::new();
    for (name, topic) in state.topics() {
        for (i, partition) in topic.partitions.iter().enumerate() {
            if jobs.len() >= MAX_JOBS_PER_ROUND {
                return jobs;
            }
            let index = i as i32;
            if state.preferred_broker(name, index) != Some(owner) {
                continue;
            }
            let entries = &partition.index;
            // Each partition waits between half and all of the age, by its hash: partitions
            // created together do not all compact in the same round, so the work, the
            // index and the deletion queue stay even instead of rising and falling together.
            let spread = partition_hash(name, index) % (age_ms as u64 / 2).max(1);
            let age_ms = age_ms - spread as i64;
            let Some(run) = tail_run(entries, state, now_ms, age_ms, policy.segment_bytes)
                .or_else(|| merge_run(entries, state, policy.segment_bytes))
            else {
                continue;
            };
            let resolved: Option<Vec<PlannedEntry>> = entries[run]
                .iter()
                .map(|e| PlannedEntry::resolve(state, e))
                .collect();
            if let Some(entries) = resolved {
                jobs.push(Job {
                    topic: name.clone(),
                    topic_id: topic.id,
                    partition: index,
                    entries,
                });
            }
        }
    }
    jobs
}

fn kind(state: &MetadataState, e: &IndexEntry) -> Option<ObjectKind> {
    state.objects().get(e.object).map(|info| info.kind)
}

/// The first run of flush chunks that is full or old enough.
fn tail_run(
    entries: &[IndexEntry],
    state: &MetadataState,
    now_ms: i64,
    age_ms: i64,
    segment_bytes: u64,
) -> Option<Range<usize>> {
    let is_flush = |e: &IndexEntry| kind(state, e) == Some(ObjectKind::Flush);
    let mut start = 0;
    while start < entries.len() {
        if !is_flush(&entries[start]) {
            start += 1;
            continue;
        }
        let mut end = start;
        let mut bytes = 0;
        let mut oldest = i64::MAX;
        while end < entries.len() && is_flush(&entries[end]) && bytes < segment_bytes {
            bytes += entries[end].length;
            if let Some(info) = state.objects().get(entries[end].object) {
                oldest = oldest.min(info.created_ms);
            }
            end += 1;
        }
        if bytes >= segment_bytes || now_ms.saturating_sub(oldest) >= age_ms {
            return Some(start..end);
        }
        start = end;
    }
    None
}

/// The first `FAN_IN` consecutive segments that fit in one segment and of which none
/// outweighs the others together. Equal segments merge four at a time, so a slow
/// partition's segments grow by powers of four (each byte is rewritten about once per
/// power of four up to the segment size), and a large segment is not rewritten for the
/// sake of a few small ones beside it (which would rewrite it over and over).
fn merge_run(
    entries: &[IndexEntry],
    state: &MetadataState,
    segment_bytes: u64,
) -> Option<Range<usize>> {
    let start = entries.windows(FAN_IN).position(|run| {
        let total: u64 = run.iter().map(|e| e.length).sum();
        let largest = run.iter().map(|e| e.length).max().unwrap_or(0);
        run.iter()
            .all(|e| kind(state, e) == Some(ObjectKind::Segment))
            && total <= segment_bytes
            && largest <= total - largest
    })?;
    Some(start..start + FAN_IN)
}

/// Whether background work may start a round of PUTs now: always without a PUT budget;
/// with one, when the background's bucket has a token (a round may run it into debt,
/// which the next rounds wait out).
pub(crate) fn may_spend_puts(storage: &ObjectStorage) -> bool {
    storage
        .put_budget()
        .is_none_or(|b| b.available(Class::Background) >= 1.0)
}

/// Jobs in flight at once: enough to hide PUT and commit latency (tens of
/// milliseconds on S3) for thousands of light partitions.
const CONCURRENT_JOBS: usize = 4;

/// Runs compaction rounds forever. Jobs run a few at a time, and the bytes they hold in
/// memory are capped at about one segment.
pub async fn run(
    metadata: Arc<Metadata>,
    storage: ObjectStorage,
    fetcher: Arc<FetchReader>,
    config: CompactionConfig,
    counters: Arc<CompactionCounters>,
) {
    let memory_kib = u32::try_from(config.policy.segment_bytes.div_ceil(1024)).unwrap_or(u32::MAX);
    let memory = Arc::new(tokio::sync::Semaphore::new(memory_kib as usize));
    let mut seq = 0u64;
    loop {
        tokio::time::sleep(config.interval).await;
        if !may_spend_puts(&storage) {
            continue;
        }
        let now_ms = crate::clock::now_ms();
        let jobs = metadata.read(|s| plan(s, config.node_id, now_ms, &config.policy));
        let jobs = jobs.into_iter().map(|job| {
            seq += 1;
            (job, seq)
        });
        futures::stream::iter(jobs)
            .for_each_concurrent(CONCURRENT_JOBS, |(job, seq)| {
                let (metadata, storage, fetcher, config, counters, memory) = (
                    &metadata, &storage, &fetcher, &config, &counters, &memory,
                );
                async move {
                    let want = u32::try_from(job.bytes().div_ceil(1024))
                        .unwrap_or(u32::MAX)
                        .clamp(1, memory_kib);
                    let Ok(_permit) = memory.acquire_many(want).await else {
                        return;
                    };
                    let span = tracing::debug_span!("compact", topic = %job.topic, partition = job.partition, inputs = job.entries.len());
                    let result = compact(metadata, storage, fetcher, config, counters, job, seq)
                        .instrument(span)
                        .await;
                    if let Err(e) = result {
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                        warn!(error = %e, "compaction job failed; will retry");
                    }
                }
            })
            .await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CompactionError {
    #[error("reading the input: {0}")]
    Read(#[from] crate::fetch::FetchError),
    #[error("input {object} holds {found} offsets where the index says {expected}")]
    Mismatch {
        object: String,
        found: i64,
        expected: i64,
    },
    #[error("uploading the segment: {0}")]
    Upload(#[from] crate::storage::StorageError),
    #[error("proposing the swap: {0}")]
    Propose(#[from] crate::metadata::MetadataError),
    #[error("the input changed meanwhile")]
    Refused,
}

async fn compact(
    metadata: &Metadata,
    storage: &ObjectStorage,
    fetcher: &FetchReader,
    config: &CompactionConfig,
    counters: &CompactionCounters,
    job: Job,
    seq: u64,
) -> Result<(), CompactionError> {
    let (Some(first), Some(last)) = (job.entries.first(), job.entries.last()) else {
        return Ok(());
    };
    let base_offset = first.entry.base_offset;
    let end_offset = last.entry.end_offset();
    let mut builder = CompactedBuilder::new(
        &job.topic,
        job.topic_id,
        job.partition,
        base_offset,
        job.bytes() as usize,
    );
    for planned in &job.entries {
        let data = read_entry(storage, fetcher, planned).await?;
        counters
            .bytes_read
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let piece = Piece {
            offsets_in_headers: planned.kind != ObjectKind::Flush,
            ..Piece::chunk(planned)
        };
        let mut next = planned.entry.base_offset;
        for (batch, base) in piece.batches(&data) {
            if base < next {
                return Err(CompactionError::Mismatch {
                    object: planned.object.clone(),
                    found: base - planned.entry.base_offset,
                    expected: next - planned.entry.base_offset,
                });
            }
            let bytes = &data[batch.start..batch.start + batch.len];
            builder.push_batch(bytes, base, batch.offset_span, batch_max_timestamp(bytes));
            next = base + i64::from(batch.offset_span);
        }
        // A flush chunk spans its entry exactly; a segment's batches end at or before the
        // entry's end (the log cleaner may have emptied its last offsets).
        let exact = planned.kind == ObjectKind::Flush;
        let end = planned.entry.end_offset();
        if (exact && next != end) || next > end {
            return Err(CompactionError::Mismatch {
                object: planned.object.clone(),
                found: next - planned.entry.base_offset,
                expected: i64::from(planned.entry.offset_count),
            });
        }
    }
    let frames = builder.frames().to_vec();
    let (object_bytes, position, length) = builder.finish();
    let object = compacted_name(config.node_id, &seq.to_string());
    let swap = Swap {
        topic: (&job.topic, job.topic_id, job.partition),
        inputs: &job.entries,
        object: &object,
        bytes: &object_bytes,
        data: (position, length),
    };
    let response = swap
        .upload_and_propose(
            (metadata, storage, config.upload_timeout),
            &counters.bytes_written,
            "crash-after-compaction-put",
            Command::Compact,
        )
        .await?;
    match response {
        Response::Compacted(Ok(_)) => {
            counters.jobs.fetch_add(1, Ordering::Relaxed);
            // A tail job rewrote what tail readers are reading (it was in the cache):
            // put the new frames there too, as the flush path does, so that they keep
            // reading from memory after the swap. Merged old segments stay out.
            if job.entries.iter().all(|e| e.kind == ObjectKind::Flush) {
                for frame in &frames {
                    let start = frame.position as usize;
                    let end = start + frame.length as usize;
                    if end <= object_bytes.len() {
                        fetcher.keep(&object, frame.position, object_bytes.slice(start..end));
                    }
                }
            }
            debug!(%object, base_offset, end_offset, bytes = object_bytes.len(), "segment swapped in");
            if crate::failpoint::on("crash-after-compaction-swap") {
                warn!(%object, "failpoint crash-after-compaction-swap: aborting");
                std::process::abort();
            }
        }
        other => discard_refused(storage, &object, &other, &counters.refused).await,
    }
    Ok(())
}

/// An entry's bytes: a flush chunk through the cache (the uploader wrote it there), a
/// segment's data with one ranged read.
pub(crate) async fn read_entry(
    storage: &ObjectStorage,
    fetcher: &FetchReader,
    planned: &PlannedEntry,
) -> Result<Bytes, CompactionError> {
    let range = planned.entry.position..planned.entry.position + planned.entry.length;
    match planned.kind {
        ObjectKind::Flush => Ok(fetcher.load(&Piece::chunk(planned)).await?),
        ObjectKind::Segment | ObjectKind::Cleaned => {
            Ok(storage.get_range(&planned.object, range).await?)
        }
    }
}

/// A rewritten run of one partition's entries, ready to upload and swap in.
pub(crate) struct Swap<'a> {
    pub topic: (&'a str, [u8; 16], i32),
    /// The entries replaced, in order.
    pub inputs: &'a [PlannedEntry],
    pub object: &'a str,
    pub bytes: &'a Bytes,
    /// Where the data lies in the object: (position, length).
    pub data: (u64, u64),
}

impl Swap<'_> {
    /// Uploads the object, then proposes `command` (a compaction's or the cleaner's swap);
    /// the state's answer. `failpoint` aborts the process between the two.
    pub async fn upload_and_propose(
        &self,
        (metadata, storage, timeout): (&Metadata, &ObjectStorage, Duration),
        bytes_written: &AtomicU64,
        failpoint_name: &str,
        command: fn(CompactionSwap) -> Command,
    ) -> Result<Response, CompactionError> {
        storage
            .put_background(self.object, self.bytes, timeout)
            .await?;
        bytes_written.fetch_add(self.bytes.len() as u64, Ordering::Relaxed);
        if crate::failpoint::on(failpoint_name) {
            warn!(object = self.object, "failpoint {failpoint_name}: aborting");
            std::process::abort();
        }
        let (topic, topic_id, partition) = self.topic;
        let swap = CompactionSwap {
            topic: topic.to_owned(),
            topic_id,
            partition,
            base_offset: self.inputs.first().map_or(0, |e| e.entry.base_offset),
            end_offset: self.inputs.last().map_or(0, |e| e.entry.end_offset()),
            inputs: self
                .inputs
                .iter()
                .map(|e| (e.entry.object, e.entry.position))
                .collect(),
            object: self.object.to_owned(),
            object_size: self.bytes.len() as u64,
            position: self.data.0,
            length: self.data.1,
            now_ms: crate::clock::now_ms(),
        };
        Ok(metadata.propose(command(swap)).await?)
    }
}

/// A refused swap: the run changed under the rewrite (new data is fine; a delete, a
/// retention pass or another rewrite is not), so the new object is nobody's: drop it now.
pub(crate) async fn discard_refused(
    storage: &ObjectStorage,
    object: &str,
    answer: &Response,
    refused: &AtomicU64,
) {
    refused.fetch_add(1, Ordering::Relaxed);
    if !matches!(
        answer,
        Response::Compacted(Err(StateError::StaleCompaction))
    ) {
        warn!(?answer, "unexpected answer to a swap");
    }
    info!(%object, "swap refused: the input changed; deleting the new object");
    if let Err(e) = storage.delete(object).await {
        warn!(%object, error = %e, "could not delete a refused swap's object (the orphan sweep will)");
    }
}

/// A new object's name under `compacted/`: time, node, nanoseconds and `tag` keep
/// names unique across brokers and restarts.
pub(crate) fn compacted_name(node_id: u64, tag: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{COMPACTED_PREFIX}/{:013}-{node_id}-{:09}-{tag}.seg",
        now.as_millis(),
        now.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::metadata::state::cluster::ClusterCommand;
    use crate::metadata::state::{SegmentCommit, SegmentEntry};

    fn state_with(owner: u64) -> MetadataState {
        let mut s = MetadataState::default();
        s.apply(&Command::Cluster(ClusterCommand::Register {
            id: owner,
            host: "h".into(),
            port: 1,
            rack: None,
            now_ms: 0,
        }));
        s.apply(&Command::CreateTopic {
            name: "t".into(),
            topic_id: [1; 16],
            partitions: 2,
            configs: BTreeMap::new(),
            now_ms: 0,
            preferred: Vec::new(),
        });
        s
    }

    fn flush(s: &mut MetadataState, name: &str, at_ms: i64, length: u64) {
        let entry = |partition| SegmentEntry {
            topic: "t".into(),
            partition,
            position: 8 + partition as u64 * length,
            length,
            offset_count: 3,
            max_timestamp: at_ms,
            producer: None,
        };
        s.apply(&Command::CommitSegments {
            segments: vec![SegmentCommit {
                txn: Vec::new(),
                object: name.into(),
                object_size: 2 * length + 8,
                uploaded_ms: at_ms,
                entries: vec![entry(0), entry(1)],
            }],
            now_ms: at_ms,
            max_age_ms: 0,
        });
    }

    fn swap(s: &mut MetadataState, job: &Job, name: &str) {
        let length = job.entries.iter().map(|e| e.entry.length).sum();
        let r = s.apply(&Command::Compact(CompactionSwap {
            topic: job.topic.clone(),
            topic_id: job.topic_id,
            partition: job.partition,
            base_offset: job.entries[0].entry.base_offset,
            end_offset: job.entries[job.entries.len() - 1].entry.end_offset(),
            inputs: job
                .entries
                .iter()
                .map(|e| (e.entry.object, e.entry.position))
                .collect(),
            object: name.into(),
            object_size: length + 100,
            position: 8,
            length,
            now_ms: 0,
        }));
        assert!(matches!(r, Response::Compacted(Ok(_))), "{r:?}");
    }

    fn policy(segment_bytes: u64) -> CompactionPolicy {
        CompactionPolicy {
            segment_bytes,
            age: Duration::from_secs(60),
        }
    }

    #[test]
    fn the_tail_is_compacted_when_old_or_full_and_only_by_its_owner() {
        let mut s = state_with(1);
        flush(&mut s, "segments/a", 0, 100);
        flush(&mut s, "segments/b", 30_000, 100);
        // Young and small: nothing to do.
        assert!(plan(&s, 1, 29_999, &policy(1 << 20)).is_empty());
        // Each partition waits between half and all of the age: at a minute, both went.
        let jobs = plan(&s, 1, 60_000, &policy(1 << 20));
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].entries.len(), 2);
        // Another broker is not preferred for these partitions.
        assert!(plan(&s, 2, 60_000, &policy(1 << 20)).is_empty());
        // Full before it is old: a run stops at the segment size.
        let jobs = plan(&s, 1, 0, &policy(100));
        assert_eq!(jobs[0].entries.len(), 1);
    }

    #[test]
    fn small_segments_merge_four_at_a_time_but_not_into_a_larger_one() {
        let mut s = state_with(1);
        let p = policy(1 << 20);
        let mut n = 0;
        let mut compact_tail = |s: &mut MetadataState| {
            n += 1;
            flush(s, &format!("segments/{n}"), n * 100_000, 100);
            for job in plan(s, 1, n * 100_000 + 60_000, &p) {
                swap(s, &job, &format!("compacted/{n}-{}", job.partition));
            }
        };
        for _ in 0..3 {
            compact_tail(&mut s);
        }
        assert_eq!(s.partition("t", 0).map(|p| p.index.len()), Some(3));
        compact_tail(&mut s);
        // Four equal segments: one merge job per partition.
        let jobs = plan(&s, 1, 0, &p);
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].entries.len(), FAN_IN);
        for job in &jobs {
            swap(&mut s, job, &format!("compacted/m{}", job.partition));
        }
        assert_eq!(s.partition("t", 0).map(|p| p.index.len()), Some(1));
        assert!(plan(&s, 1, 0, &p).is_empty());
        // A large segment is not rewritten for the sake of small ones beside it.
        for _ in 0..3 {
            compact_tail(&mut s);
        }
        assert_eq!(s.partition("t", 0).map(|p| p.index.len()), Some(4));
        assert!(plan(&s, 1, 0, &p).is_empty());
    }
}

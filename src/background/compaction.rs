//! Object compaction: each broker rewrites the partitions it is preferred for from small
//! flush chunks (the tail) into compacted objects, and merges small ones into larger
//! ones, so that a partition's index holds about `bytes kept / segment size` entries plus
//! a short tail, however many flushes wrote it.
//!
//! A job reads a run of one partition's index entries and writes their batches (byte for
//! byte, with their assigned offsets in the headers). A large output becomes a segment of
//! its own under `compacted/`, swapped in with one [`Command::Compact`]. The small
//! outputs of one round (the tails of light partitions, their first merges) go together
//! into one shared object, a section per partition, swapped in with one
//! [`Command::CompactShared`]: one PUT and one Raft entry for many partitions. The state
//! machine takes each swap only if its run is still exactly what was read; a refused
//! segment is deleted at once, a shared object keeps the sections taken (none: it is
//! garbage). A crash at any step leaves either the old entries (and an orphan the sweep
//! removes) or the new ones (and garbage the collector removes): never a gap, never a
//! duplicate.
//!
//! Which runs to compact, and which share an object, is decided by [`plan`], a pure
//! function of the state. How many objects a round may write is asked of a
//! [`PutAllowance`], the one place a broker-wide PUT budget plugs in.

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
use crate::metadata::state::{
    Command, CompactionSwap, MetadataState, Response, SectionSwap, SharedCompaction, StateError,
};
use crate::metadata::Metadata;
use crate::topic_config::TopicDefaults;

use super::cleaner;
use crate::record::batch::batch_max_timestamp;
use crate::storage::budget::Class;
use crate::storage::segment::{AbortedTxn, CompactedBuilder, SharedBuilder, WrittenSection};
use crate::storage::ObjectStorage;

/// Where compacted segments live; the recovery replay of flush objects never looks here.
pub const COMPACTED_PREFIX: &str = "compacted";
/// Segments merged at once (see `merge_run`).
const FAN_IN: usize = 4;
/// Jobs one broker plans per round; the rest wait for the next round.
const MAX_JOBS_PER_ROUND: usize = 4096;
/// Sections in one shared object: bounds its footer and the Raft entry swapping it in.
pub const MAX_SECTIONS: usize = 1024;
/// An output smaller than `segment_bytes / SHARED_FRACTION` goes into a shared object.
/// What is larger is near its final size (at most a few more merges, each rewriting at
/// least a quarter segment per PUT), so it gets a segment of its own and never keeps a
/// shared object, and the dead sections beside it, alive.
const SHARED_FRACTION: u64 = 4;

#[derive(Debug, Clone)]
pub struct CompactionPolicy {
    /// The size segments grow towards.
    pub segment_bytes: u64,
    /// Tail older than this is compacted however small (light partitions).
    pub age: Duration,
    /// The static broker defaults of topic configs (a compacted topic's segment roll).
    pub topic_defaults: TopicDefaults,
}

impl CompactionPolicy {
    /// Outputs below this size share an object; the others get one of their own.
    pub fn shared_below(&self) -> u64 {
        (self.segment_bytes / SHARED_FRACTION).max(1)
    }

    /// The data one shared object holds at most (a whole output below
    /// [`Self::shared_below`] always fits).
    pub fn shared_object_bytes(&self) -> u64 {
        self.segment_bytes
    }
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
    /// Runs swapped in (a segment, or one section of a shared object).
    pub jobs: AtomicU64,
    pub refused: AtomicU64,
    pub failed: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    /// Shared objects written.
    pub shared_objects: AtomicU64,
}

/// How many PUTs a compaction round may spend: the one point where a broker-wide PUT
/// budget (a token bucket all of a broker's PUTs draw from) meets compaction. A round
/// asks once, with the objects its plan would write, and writes at most the objects it
/// is granted (shared objects first, then segments of their own); what is left waits for
/// a later round, where it is planned again.
pub trait PutAllowance: Send + Sync {
    /// Of `wanted` PUTs (one per object), how many this round may make now.
    fn grant(&self, wanted: usize) -> usize;
}

/// No budget: a round writes everything it planned.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unlimited;

impl PutAllowance for Unlimited {
    fn grant(&self, wanted: usize) -> usize {
        wanted
    }
}

/// One run of index entries to rewrite as one segment or one section.
#[derive(Debug, Clone)]
pub struct Job {
    pub topic: String,
    pub topic_id: [u8; 16],
    pub partition: i32,
    pub entries: Vec<PlannedEntry>,
    /// The aborted transactions the state moves into the output's footer
    /// (`PartitionTxns::archivable` over the run); the inputs' own footers add theirs.
    pub aborted: Vec<AbortedTxn>,
}

impl Job {
    pub fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.entry.length).sum()
    }

    /// Whether the run is tail data (flush chunks), which tail readers hold in the cache.
    fn is_tail(&self) -> bool {
        self.entries.iter().all(|e| e.kind == ObjectKind::Flush)
    }
}

/// A round's work: shared objects (each the sections of many partitions) and segments of
/// their own, one object each.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Jobs whose output is small, grouped by the shared object they go into (at most
    /// [`CompactionPolicy::shared_object_bytes`] of input and [`MAX_SECTIONS`] each).
    pub shared: Vec<Vec<Job>>,
    /// Jobs whose output gets its own segment.
    pub own: Vec<Job>,
}

impl Plan {
    /// The objects, so the PUTs, the plan writes.
    pub fn puts(&self) -> usize {
        self.shared.len() + self.own.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shared.is_empty() && self.own.is_empty()
    }

    /// The plan cut to `puts` objects: shared objects first (each swaps in many
    /// partitions' runs for one PUT), then segments of their own.
    pub fn limit(mut self, puts: usize) -> Self {
        self.shared.truncate(puts);
        self.own.truncate(puts - self.shared.len());
        self
    }
}

/// The round of `owner` at `now_ms`, for the partitions it is preferred for: at most one
/// job per partition (tail first, else a merge), the small ones grouped into shared
/// objects.
pub fn plan(state: &MetadataState, owner: u64, now_ms: i64, policy: &CompactionPolicy) -> Plan {
    group(jobs(state, owner, now_ms, policy), policy)
}

/// The jobs of a round, in topic and partition order.
fn jobs(state: &MetadataState, owner: u64, now_ms: i64, policy: &CompactionPolicy) -> Vec<Job> {
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
            // A compacted topic's runs stop where Kafka would roll a segment (the
            // cleaner's active segment starts at one of them).
            let rolls = cleaner::Settings::of_topic(
                &state
                    .config_layers(owner, &policy.topic_defaults)
                    .settings(&topic.configs),
            )
            .map(|settings| {
                let start =
                    entries.partition_point(|e| e.end_offset() <= partition.log_start_offset);
                cleaner::segment_starts(entries, start, &settings)
            })
            .unwrap_or_default();
            let rolls_at = |i: usize| rolls.binary_search(&i).is_ok();
            // Each partition waits between half and all of the age, by its hash: partitions
            // created together do not all compact in the same round, so the work, the
            // index and the deletion queue stay even instead of rising and falling together.
            let spread = partition_hash(name, index) % (age_ms as u64 / 2).max(1);
            let age_ms = age_ms - spread as i64;
            let Some(run) = tail_run(
                entries,
                state,
                now_ms,
                age_ms,
                policy.segment_bytes,
                rolls_at,
            )
            .or_else(|| merge_run(entries, state, policy.segment_bytes, rolls_at)) else {
                continue;
            };
            let resolved: Option<Vec<PlannedEntry>> = entries[run]
                .iter()
                .map(|e| PlannedEntry::resolve(state, e))
                .collect();
            if let Some(entries) = resolved {
                let base = entries.first().map_or(0, |e| e.entry.base_offset);
                let end = entries.last().map_or(0, |e| e.entry.end_offset());
                jobs.push(Job {
                    topic: name.clone(),
                    topic_id: topic.id,
                    partition: index,
                    aborted: partition.txns.archivable(base, end),
                    entries,
                });
            }
        }
    }
    jobs
}

/// Splits jobs into those with an output of their own (at least
/// [`CompactionPolicy::shared_below`]) and shared objects, filled in order up to their
/// size and section bounds.
fn group(jobs: Vec<Job>, policy: &CompactionPolicy) -> Plan {
    let mut plan = Plan::default();
    let mut current: Vec<Job> = Vec::new();
    let mut bytes = 0u64;
    for job in jobs {
        let size = job.bytes();
        if size >= policy.shared_below() {
            plan.own.push(job);
            continue;
        }
        let full = bytes + size > policy.shared_object_bytes() || current.len() >= MAX_SECTIONS;
        if !current.is_empty() && full {
            plan.shared.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(job);
    }
    if !current.is_empty() {
        plan.shared.push(current);
    }
    plan
}

fn kind(state: &MetadataState, e: &IndexEntry) -> Option<ObjectKind> {
    state.objects().get(e.object).map(|info| info.kind)
}

/// The first run of flush chunks that is full or old enough; a run ends before an entry
/// that `rolls_at`.
fn tail_run(
    entries: &[IndexEntry],
    state: &MetadataState,
    now_ms: i64,
    age_ms: i64,
    segment_bytes: u64,
    rolls_at: impl Fn(usize) -> bool,
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
        while end < entries.len()
            && is_flush(&entries[end])
            && bytes < segment_bytes
            && (end == start || !rolls_at(end))
        {
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

/// The first `FAN_IN` consecutive segments (of their own or sections of shared objects)
/// that fit in one segment and of which none outweighs the others together. Equal
/// segments merge four at a time, so a slow partition's segments grow by powers of four
/// (each byte is rewritten about once per power of four up to the segment size), and a
/// large segment is not rewritten for the sake of a few small ones beside it (which would
/// rewrite it over and over). Cleaned segments are the log cleaner's, never merged here.
fn merge_run(
    entries: &[IndexEntry],
    state: &MetadataState,
    segment_bytes: u64,
    rolls_at: impl Fn(usize) -> bool,
) -> Option<Range<usize>> {
    let start = entries.windows(FAN_IN).enumerate().position(|(at, run)| {
        if (at + 1..at + FAN_IN).any(&rolls_at) {
            return false;
        }
        let total: u64 = run.iter().map(|e| e.length).sum();
        let largest = run.iter().map(|e| e.length).max().unwrap_or(0);
        run.iter().all(|e| {
            matches!(
                kind(state, e),
                Some(ObjectKind::Segment | ObjectKind::Shared)
            )
        }) && total <= segment_bytes
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

/// Objects written at once: enough to hide PUT and commit latency (tens of milliseconds
/// on S3).
const CONCURRENT_JOBS: usize = 4;
/// Runs a shared object's writer reads at once (ranged GETs of merged sections).
const CONCURRENT_READS: usize = 4;

/// One object's worth of a round.
enum Work {
    Own(Job),
    Shared(Vec<Job>),
}

impl Work {
    fn bytes(&self) -> u64 {
        match self {
            Work::Own(job) => job.bytes(),
            Work::Shared(jobs) => jobs.iter().map(Job::bytes).sum(),
        }
    }
}

/// Runs compaction rounds forever. A round plans its work, asks `allowance` how many
/// objects it may write, and writes them a few at a time; the bytes they hold in memory
/// are capped at about one segment.
pub async fn run(
    metadata: Arc<Metadata>,
    storage: ObjectStorage,
    fetcher: Arc<FetchReader>,
    config: CompactionConfig,
    counters: Arc<CompactionCounters>,
    allowance: Arc<dyn PutAllowance>,
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
        let plan = metadata.read(|s| plan(s, config.node_id, now_ms, &config.policy));
        if plan.is_empty() {
            continue;
        }
        // The round's one question to the PUT budget.
        let wanted = plan.puts();
        let granted = allowance.grant(wanted).min(wanted);
        if granted < wanted {
            debug!(
                wanted,
                granted, "compaction round held back by the PUT budget"
            );
        }
        let plan = plan.limit(granted);
        let work = plan
            .shared
            .into_iter()
            .map(Work::Shared)
            .chain(plan.own.into_iter().map(Work::Own))
            .map(|work| {
                seq += 1;
                (work, seq)
            });
        futures::stream::iter(work)
            .for_each_concurrent(CONCURRENT_JOBS, |(work, seq)| {
                let (metadata, storage, fetcher, config, counters, memory) = (
                    &metadata, &storage, &fetcher, &config, &counters, &memory,
                );
                async move {
                    let want = u32::try_from(work.bytes().div_ceil(1024))
                        .unwrap_or(u32::MAX)
                        .clamp(1, memory_kib);
                    let Ok(_permit) = memory.acquire_many(want).await else {
                        return;
                    };
                    let ctx = Context {
                        metadata,
                        storage,
                        fetcher,
                        config,
                        counters,
                    };
                    let result = match work {
                        Work::Own(job) => {
                            let span = tracing::debug_span!("compact", topic = %job.topic, partition = job.partition, inputs = job.entries.len());
                            compact(&ctx, job, seq).instrument(span).await
                        }
                        Work::Shared(jobs) => {
                            let span = tracing::debug_span!("compact_shared", sections = jobs.len());
                            compact_shared(&ctx, jobs, seq).instrument(span).await
                        }
                    };
                    if let Err(e) = result {
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                        warn!(error = %e, "compaction job failed; will retry");
                    }
                }
            })
            .await;
    }
}

/// What a compaction job works with.
struct Context<'a> {
    metadata: &'a Metadata,
    storage: &'a ObjectStorage,
    fetcher: &'a FetchReader,
    config: &'a CompactionConfig,
    counters: &'a CompactionCounters,
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

/// One batch of a run: its bytes, first offset and the offsets it spans.
type RunBatch = (Bytes, i64, u32);

/// A run read whole (the runs of a shared object are read concurrently, then written in
/// order): its batches, and the aborted transactions its output's footer holds.
struct Run {
    batches: Vec<RunBatch>,
    aborted: Vec<AbortedTxn>,
}

/// Reads a run entry by entry, handing each batch to `push` as it goes, so a job holds
/// one input entry at a time besides its output (flush chunks through the cache,
/// compacted entries with one ranged read each), checked against the index: in offset
/// order, none before its entry's base, a flush chunk spanning its entry exactly. Returns
/// the aborted transactions the output's footer holds: the job's, from the state, and
/// those of the compacted inputs' footers, which lie wholly inside the run.
async fn read_run(
    ctx: &Context<'_>,
    job: &Job,
    mut push: impl FnMut(Bytes, i64, u32),
) -> Result<Vec<AbortedTxn>, CompactionError> {
    let mut aborted = job.aborted.clone();
    for planned in &job.entries {
        if planned.kind.is_compacted() {
            aborted.extend(ctx.fetcher.frame_index(planned).await?.aborted);
        }
        let data = read_entry(ctx.storage, ctx.fetcher, planned).await?;
        ctx.counters
            .bytes_read
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let piece = Piece {
            offsets_in_headers: planned.kind.is_compacted(),
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
            push(
                data.slice(batch.start..batch.start + batch.len),
                base,
                batch.offset_span,
            );
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
    Ok(aborted)
}

/// Writes one job's run as a segment of its own and swaps it in.
async fn compact(ctx: &Context<'_>, job: Job, seq: u64) -> Result<(), CompactionError> {
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
    let aborted = read_run(ctx, &job, |batch, base, span| {
        builder.push_batch(&batch, base, span, batch_max_timestamp(&batch));
    })
    .await?;
    // Only the state's entries leave it; the inputs' are in their footers already.
    let archiving = !job.aborted.is_empty();
    builder.set_aborted(aborted);
    let frames = builder.frames().to_vec();
    let (object_bytes, position, length) = builder.finish();
    let object = compacted_name(ctx.config.node_id, &seq.to_string());
    let swap = Swap {
        topic: (&job.topic, job.topic_id, job.partition),
        inputs: &job.entries,
        object: &object,
        bytes: &object_bytes,
        data: (position, length),
    };
    let response = swap
        .upload_and_propose(
            (ctx.metadata, ctx.storage, ctx.config.upload_timeout),
            &ctx.counters.bytes_written,
            "crash-after-compaction-put",
            if archiving {
                Command::CompactArchiving
            } else {
                Command::Compact
            },
        )
        .await?;
    match response {
        Response::Compacted(Ok(_)) => {
            ctx.counters.jobs.fetch_add(1, Ordering::Relaxed);
            // A tail job rewrote what tail readers are reading (it was in the cache):
            // put the new frames there too, as the flush path does, so that they keep
            // reading from memory after the swap. Merged old segments stay out.
            if job.is_tail() {
                for frame in &frames {
                    let start = frame.position as usize;
                    let end = start + frame.length as usize;
                    if end <= object_bytes.len() {
                        ctx.fetcher
                            .keep_copy(&object, frame.position, &object_bytes[start..end]);
                    }
                }
            }
            debug!(%object, base_offset, end_offset, bytes = object_bytes.len(), "segment swapped in");
            crate::failpoint::crash("crash-after-compaction-swap").await;
        }
        other => {
            discard_refused(
                ctx.metadata,
                ctx.storage,
                &object,
                &other,
                &ctx.counters.refused,
            )
            .await
        }
    }
    Ok(())
}

/// Writes the runs of `jobs` as the sections of one shared object and swaps them in
/// with one command. A run that cannot be read is left out (and tried again in a later
/// round); a section refused by the state machine leaves the others in.
async fn compact_shared(
    ctx: &Context<'_>,
    jobs: Vec<Job>,
    seq: u64,
) -> Result<(), CompactionError> {
    let capacity = jobs.iter().map(Job::bytes).sum::<u64>() as usize;
    let mut builder = SharedBuilder::new(capacity);
    let mut written: Vec<(&Job, WrittenSection)> = Vec::with_capacity(jobs.len());
    // The futures are made up front: a closure in `map` borrowing `ctx` would not be
    // general enough over lifetimes for the spawned round.
    let reads: Vec<_> = jobs.iter().map(|job| read_job(ctx, job)).collect();
    let mut reads = futures::stream::iter(reads).buffered(CONCURRENT_READS);
    while let Some((job, read)) = reads.next().await {
        let Run { batches, aborted } = match read {
            Ok(run) => run,
            Err(e) => {
                ctx.counters.failed.fetch_add(1, Ordering::Relaxed);
                warn!(topic = %job.topic, partition = job.partition, error = %e, "a compaction run could not be read; will retry");
                continue;
            }
        };
        let (Some(first), Some(last)) = (job.entries.first(), job.entries.last()) else {
            continue;
        };
        let mut section = builder.section(
            &job.topic,
            job.topic_id,
            job.partition,
            first.entry.base_offset,
        );
        for (batch, base, span) in &batches {
            section.push_batch(batch, *base, *span, batch_max_timestamp(batch));
        }
        section.extend_to(last.entry.end_offset());
        section.set_aborted(aborted);
        written.push((job, section.finish()));
    }
    drop(reads);
    if written.is_empty() {
        return Ok(());
    }
    let object_bytes = builder.finish();
    let object = compacted_name(ctx.config.node_id, &format!("s{seq}"));
    ctx.storage
        .put_background(&object, &object_bytes, ctx.config.upload_timeout)
        .await?;
    ctx.counters
        .bytes_written
        .fetch_add(object_bytes.len() as u64, Ordering::Relaxed);
    ctx.counters.shared_objects.fetch_add(1, Ordering::Relaxed);
    crate::failpoint::crash("crash-after-compaction-put").await;
    let sections = written
        .iter()
        .map(|(job, w)| SectionSwap {
            topic: job.topic.clone(),
            topic_id: job.topic_id,
            partition: job.partition,
            base_offset: w.section.base_offset,
            end_offset: w.section.end_offset,
            inputs: job
                .entries
                .iter()
                .map(|e| (e.entry.object, e.entry.position))
                .collect(),
            position: w.section.position,
            length: w.section.length,
        })
        .collect();
    let shared = SharedCompaction {
        object: object.clone(),
        object_size: object_bytes.len() as u64,
        sections,
        now_ms: crate::clock::now_ms(),
    };
    let command = if written.iter().any(|(job, _)| !job.aborted.is_empty()) {
        Command::CompactSharedArchiving(shared)
    } else {
        Command::CompactShared(shared)
    };
    let results = match ctx.metadata.propose(command).await? {
        Response::SharedCompacted(results) => results,
        other => {
            // Not an answer to this command: whether it was applied is not known, so the
            // object is left to the orphan sweep or the collector.
            warn!(?other, %object, "unexpected answer to a shared compaction");
            return Ok(());
        }
    };
    let mut taken = 0u64;
    for ((job, w), result) in written.iter().zip(&results) {
        if result.is_err() {
            ctx.counters.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        taken += 1;
        // As for a segment: tail readers keep reading the rewritten tail from memory,
        // the section's index included.
        if job.is_tail() {
            keep_section(ctx.fetcher, &object, &object_bytes, w);
        }
    }
    ctx.counters.jobs.fetch_add(taken, Ordering::Relaxed);
    let refused = written.len() as u64 - taken;
    if refused > 0 {
        info!(%object, taken, refused, "shared compaction: sections refused (their input changed)");
    }
    debug!(%object, sections = written.len(), taken, bytes = object_bytes.len(), "shared object swapped in");
    if taken > 0 {
        crate::failpoint::crash("crash-after-compaction-swap").await;
    }
    Ok(())
}

/// A job with its run's batches.
async fn read_job<'j>(ctx: &Context<'_>, job: &'j Job) -> (&'j Job, Result<Run, CompactionError>) {
    let mut batches = Vec::new();
    let read = read_run(ctx, job, |batch, base, span| {
        batches.push((batch, base, span))
    })
    .await;
    (job, read.map(|aborted| Run { batches, aborted }))
}

/// Puts a section's frames and index into the cache's tail tier.
fn keep_section(fetcher: &FetchReader, object: &str, object_bytes: &Bytes, w: &WrittenSection) {
    for frame in &w.index.frames {
        let start = frame.position as usize;
        let end = start + frame.length as usize;
        if end <= object_bytes.len() {
            fetcher.keep_copy(object, frame.position, &object_bytes[start..end]);
        }
    }
    fetcher.keep_section_index(
        object,
        w.section.position + w.section.length,
        w.index_bytes.clone(),
    );
}

/// An entry's bytes: a flush chunk through the cache (the uploader wrote it there), a
/// compacted entry's data (a segment's, or a section's) with one ranged read.
pub(crate) async fn read_entry(
    storage: &ObjectStorage,
    fetcher: &FetchReader,
    planned: &PlannedEntry,
) -> Result<Bytes, CompactionError> {
    let range = planned.entry.position..planned.entry.position + planned.entry.length;
    match planned.kind {
        ObjectKind::Flush => Ok(fetcher.load(&Piece::chunk(planned)).await?),
        ObjectKind::Segment | ObjectKind::Cleaned | ObjectKind::Shared => {
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
    /// the state's answer. `failpoint` stops the process between the two.
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
        crate::failpoint::crash(failpoint_name).await;
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
/// Unless the state knows the object: then the proposal was applied once already (a
/// retry after a change of leader hears the run it replaced is gone), the object is in
/// the index or the deletion queue, and only the collector may delete it.
pub(crate) async fn discard_refused(
    metadata: &Metadata,
    storage: &ObjectStorage,
    object: &str,
    answer: &Response,
    refused: &AtomicU64,
) {
    if metadata.read(|s| s.objects().is_known(object)) {
        info!(%object, "swap answered as refused, but the state holds the object (a retried proposal); leaving it");
        return;
    }
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

    use proptest::prelude::*;

    use super::*;
    use crate::metadata::state::cluster::ClusterCommand;
    use crate::metadata::state::{SegmentCommit, SegmentEntry};

    fn state_with(owner: u64, partitions: i32) -> MetadataState {
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
            partitions,
            configs: BTreeMap::new(),
            now_ms: 0,
            preferred: Vec::new(),
        });
        s
    }

    /// One flush object at `at_ms` holding a chunk of `lengths[p]` bytes for each
    /// partition `p` with a non-zero length.
    fn flush_sizes(s: &mut MetadataState, name: &str, at_ms: i64, lengths: &[u64]) {
        let mut position = 8;
        let mut entries = Vec::new();
        for (partition, length) in lengths.iter().enumerate() {
            if *length == 0 {
                continue;
            }
            entries.push(SegmentEntry {
                topic: "t".into(),
                partition: partition as i32,
                position,
                length: *length,
                offset_count: 3,
                max_timestamp: at_ms,
                producer: None,
            });
            position += length;
        }
        s.apply(&Command::CommitSegments {
            segments: vec![SegmentCommit {
                txn: Vec::new(),
                object: name.into(),
                object_size: position,
                uploaded_ms: at_ms,
                entries,
            }],
            now_ms: at_ms,
            max_age_ms: 0,
        });
    }

    fn flush(s: &mut MetadataState, name: &str, at_ms: i64, length: u64) {
        flush_sizes(s, name, at_ms, &[length, length]);
    }

    fn inputs(job: &Job) -> Vec<(u64, u64)> {
        job.entries
            .iter()
            .map(|e| (e.entry.object, e.entry.position))
            .collect()
    }

    /// Applies a round's plan as the compactor would (every swap honest): each shared
    /// group as one shared object, each other job as a segment. Object names start with
    /// `name`.
    fn apply_plan(s: &mut MetadataState, plan: &Plan, name: &str, now_ms: i64) {
        for (g, jobs) in plan.shared.iter().enumerate() {
            let mut position = 8;
            let sections = jobs
                .iter()
                .map(|job| {
                    let length = job.bytes();
                    let section = SectionSwap {
                        topic: job.topic.clone(),
                        topic_id: job.topic_id,
                        partition: job.partition,
                        base_offset: job.entries[0].entry.base_offset,
                        end_offset: job.entries[job.entries.len() - 1].entry.end_offset(),
                        inputs: inputs(job),
                        position,
                        length,
                    };
                    position += length + 100;
                    section
                })
                .collect::<Vec<_>>();
            let n = sections.len();
            let r = s.apply(&Command::CompactShared(SharedCompaction {
                object: format!("{name}-s{g}"),
                object_size: position,
                sections,
                now_ms,
            }));
            assert_eq!(r, Response::SharedCompacted(vec![Ok(()); n]));
        }
        for job in &plan.own {
            swap(s, job, &format!("{name}-{}", job.partition));
        }
    }

    fn swap(s: &mut MetadataState, job: &Job, name: &str) {
        let length = job.bytes();
        let r = s.apply(&Command::Compact(CompactionSwap {
            topic: job.topic.clone(),
            topic_id: job.topic_id,
            partition: job.partition,
            base_offset: job.entries[0].entry.base_offset,
            end_offset: job.entries[job.entries.len() - 1].entry.end_offset(),
            inputs: inputs(job),
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
            topic_defaults: TopicDefaults::default(),
        }
    }

    /// Every job of a plan, shared or not.
    fn all(plan: &Plan) -> Vec<&Job> {
        plan.shared.iter().flatten().chain(&plan.own).collect()
    }

    #[test]
    fn the_tail_is_compacted_when_old_or_full_and_only_by_its_owner() {
        let mut s = state_with(1, 2);
        flush(&mut s, "segments/a", 0, 100);
        flush(&mut s, "segments/b", 30_000, 100);
        // Young and small: nothing to do.
        assert!(plan(&s, 1, 29_999, &policy(1 << 20)).is_empty());
        // Each partition waits between half and all of the age: at a minute, both went,
        // into one shared object.
        let p = plan(&s, 1, 60_000, &policy(1 << 20));
        assert_eq!((p.shared.len(), p.own.len()), (1, 0));
        assert_eq!(p.shared[0].len(), 2);
        assert_eq!(p.shared[0][0].entries.len(), 2);
        // Another broker is not preferred for these partitions.
        assert!(plan(&s, 2, 60_000, &policy(1 << 20)).is_empty());
        // Full before it is old: a run stops at the segment size, and a full run gets a
        // segment of its own.
        let p = plan(&s, 1, 0, &policy(100));
        assert_eq!((p.shared.len(), p.own.len()), (0, 2));
        assert_eq!(p.own[0].entries.len(), 1);
    }

    #[test]
    fn a_compacted_topics_runs_stop_where_its_segment_rolls() {
        // segment.ms = 1 s: a burst at 0-200 ms, then one record 3 s later (Kafka rolls
        // the segment on it), then silence.
        let mut s = state_with(1, 2);
        let compact: BTreeMap<String, Option<String>> =
            [("cleanup.policy", "compact"), ("segment.ms", "1000")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), Some(v.to_string())))
                .collect();
        s.apply(&Command::AlterTopicConfigs {
            name: "t".into(),
            replace: false,
            changes: compact,
        });
        for (n, at) in [0, 100, 200, 3_200].into_iter().enumerate() {
            flush(&mut s, &format!("segments/{n}"), at, 100);
        }
        let planned = jobs(&s, 1, 120_000, &policy(1 << 20));
        // The burst is one run; the roll record is left to a run of its own.
        assert_eq!(planned.len(), 2);
        assert_eq!(planned[0].entries.len(), 3);
        for job in &planned {
            swap(&mut s, job, &format!("compacted/{}", job.partition));
        }
        let planned = jobs(&s, 1, 120_000, &policy(1 << 20));
        assert_eq!(planned[0].entries.len(), 1, "the roll record's chunk");
        assert_eq!(planned[0].entries[0].entry.max_timestamp, 3_200);
        // Merges stop at the roll too: two segments are never one.
        for job in &planned {
            swap(&mut s, job, &format!("compacted/r{}", job.partition));
        }
        assert_eq!(s.partition("t", 0).map(|p| p.index.len()), Some(2));
        assert!(jobs(&s, 1, 120_000, &policy(1 << 20)).is_empty());
    }

    #[test]
    fn small_segments_merge_four_at_a_time_but_not_into_a_larger_one() {
        let mut s = state_with(1, 2);
        let p = policy(1 << 20);
        let mut n = 0;
        let mut compact_tail = |s: &mut MetadataState| {
            n += 1;
            flush(s, &format!("segments/{n}"), n * 100_000, 100);
            let round = plan(s, 1, n * 100_000 + 60_000, &p);
            apply_plan(s, &round, &format!("compacted/{n}"), n * 100_000 + 60_000);
        };
        for _ in 0..3 {
            compact_tail(&mut s);
        }
        assert_eq!(s.partition("t", 0).map(|p| p.index.len()), Some(3));
        compact_tail(&mut s);
        // Four equal sections: one merge job per partition, both in one shared object.
        let round = plan(&s, 1, 0, &p);
        assert_eq!(all(&round).len(), 2);
        assert_eq!(round.shared.len(), 1);
        assert_eq!(all(&round)[0].entries.len(), FAN_IN);
        apply_plan(&mut s, &round, "compacted/m", 0);
        assert_eq!(s.partition("t", 0).map(|p| p.index.len()), Some(1));
        assert!(plan(&s, 1, 0, &p).is_empty());
        // A large segment is not rewritten for the sake of small ones beside it.
        for _ in 0..3 {
            compact_tail(&mut s);
        }
        assert_eq!(s.partition("t", 0).map(|p| p.index.len()), Some(4));
        assert!(plan(&s, 1, 0, &p).is_empty());
        // Four flush objects and the merges' inputs are all gone: four shared objects
        // remain, each holding both partitions' sections.
        let stats = s.stats();
        assert_eq!((stats.flush_objects, stats.shared_objects), (0, 4));
        assert_eq!(stats.shared_sections, 8);
    }

    #[test]
    fn small_outputs_share_objects_within_their_bounds_and_large_ones_get_their_own() {
        let seg = 1 << 20;
        let p = policy(seg);
        let below = p.shared_below();
        assert_eq!(below, seg / 4);
        // Partition 0 just below a quarter segment, 1 at it, 2 full, the rest small.
        let mut s = state_with(1, 8);
        flush_sizes(
            &mut s,
            "segments/a",
            0,
            &[below - 1, below, seg, 10, 10, 10, 10, 10],
        );
        let round = plan(&s, 1, 60_000, &p);
        let own: Vec<i32> = round.own.iter().map(|j| j.partition).collect();
        assert_eq!(own, vec![1, 2]);
        assert_eq!(round.shared.len(), 1);
        let shared: Vec<i32> = round.shared[0].iter().map(|j| j.partition).collect();
        assert_eq!(shared, vec![0, 3, 4, 5, 6, 7]);
        // A shared object holds at most a segment of data: five outputs just below a
        // quarter segment need two.
        let mut s = state_with(1, 5);
        flush_sizes(&mut s, "segments/b", 0, &[below - 1; 5]);
        let round = plan(&s, 1, 60_000, &p);
        let groups: Vec<usize> = round.shared.iter().map(Vec::len).collect();
        assert_eq!(groups, vec![4, 1]);
        // And at most MAX_SECTIONS sections per object.
        let parts = MAX_SECTIONS as i32 + 10;
        let mut s = state_with(1, parts);
        flush_sizes(&mut s, "segments/c", 0, &vec![10; parts as usize]);
        let round = plan(&s, 1, 60_000, &p);
        let groups: Vec<usize> = round.shared.iter().map(Vec::len).collect();
        assert_eq!(groups, vec![MAX_SECTIONS, 10]);
        assert_eq!(round.puts(), 2);
    }

    #[test]
    fn a_round_limited_by_the_put_allowance_writes_shared_objects_first() {
        let seg = 1 << 20;
        let mut s = state_with(1, 4);
        flush_sizes(&mut s, "segments/a", 0, &[seg, 10, seg, 10]);
        let round = plan(&s, 1, 60_000, &policy(seg));
        assert_eq!(round.puts(), 3);
        let one = round.clone().limit(1);
        assert_eq!((one.shared.len(), one.own.len()), (1, 0));
        let two = round.clone().limit(2);
        assert_eq!((two.shared.len(), two.own.len()), (1, 1));
        assert!(round.clone().limit(0).is_empty());
        assert_eq!(round.limit(usize::MAX).puts(), 3);
        assert_eq!(Unlimited.grant(7), 7);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Over many rounds of light and heavy partitions, every run is compacted or
        /// merged as planned, a partition's index stays within a bound set by its bytes
        /// (levels of four), never by the number of rounds, and live objects never
        /// outnumber index entries (each holds at least one); once writes stop, rounds
        /// converge to nothing to do.
        #[test]
        fn entries_per_partition_stay_bounded_over_many_rounds(
            rates in prop::collection::vec(prop_oneof![3 => 50u64..400, 1 => 5_000u64..40_000], 2..7),
            periods in 40usize..120,
        ) {
            let seg: u64 = 256 << 10;
            let p = policy(seg);
            let parts = rates.len();
            let mut s = state_with(1, parts as i32);
            let mut now = 0i64;
            let mut max_entries = 0;
            for period in 0..periods {
                now += 60_000;
                flush_sizes(&mut s, &format!("segments/{period}"), now, &rates);
                // Rounds until the tail is compacted and no merge is left (a period is
                // long against the round interval).
                for round in 0..20 {
                    let work = plan(&s, 1, now + 60_000, &p);
                    if work.is_empty() {
                        break;
                    }
                    prop_assert!(round < 19, "rounds never run out of work");
                    for jobs in &work.shared {
                        prop_assert!(jobs.len() <= MAX_SECTIONS);
                        prop_assert!(jobs.iter().map(Job::bytes).sum::<u64>() <= p.shared_object_bytes());
                        prop_assert!(jobs.iter().all(|j| j.bytes() < p.shared_below()));
                    }
                    prop_assert!(work.own.iter().all(|j| j.bytes() >= p.shared_below()));
                    apply_plan(&mut s, &work, &format!("compacted/{period}-{round}"), now + 60_000);
                }
                let ids: Vec<u64> = s.objects().garbage().map(|(id, _)| id).collect();
                s.apply(&Command::ForgetObjects { ids });
                let stats = s.stats();
                prop_assert!(stats.objects <= stats.index_entries, "{stats:?}");
                prop_assert_eq!(stats.flush_objects, 0);
                for (i, rate) in rates.iter().enumerate() {
                    let entries = s.partition("t", i as i32).map_or(0, |p| p.index.len());
                    let kept = rate * (period as u64 + 1);
                    // Levels of four from one flush up to the bytes kept (or a
                    // segment), each holding at most three entries before they merge,
                    // plus the entries too large to merge again (four in a row always
                    // hold more than a segment).
                    let mut levels = 1;
                    while rate << (2 * levels) <= kept.min(seg) {
                        levels += 1;
                    }
                    let bound = 3 * levels + (4 * kept / seg) as usize + 4;
                    prop_assert!(entries <= bound, "partition {} at {} B/period: {} entries after {} periods (bound {})", i, rate, entries, period + 1, bound);
                    max_entries = max_entries.max(entries);
                }
            }
            prop_assert!(max_entries > 0);
        }
    }

    // ---------------------------------------------------------------------------------
    // The compactor end to end: a replica, a memory store, the fetch path.

    mod end_to_end {
        use super::*;
        use crate::fetch::{Isolation, PartitionData};
        use crate::metadata::state::transactions::TopicPartition;
        use crate::metadata::state::{ChunkTxn, ProducerBatch, TxnReply};
        use crate::record::batch::{ATTRIBUTES, PRODUCER_ID};
        use crate::storage::BlockCache;
        use crate::testing::make_batch;

        /// A batch of `count` records at `ts`, with attribute bits and a producer id.
        fn batch(count: i32, ts: i64, attributes: i16, producer_id: i64) -> Bytes {
            let mut b = make_batch(count, ts).to_vec();
            b[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
            b[PRODUCER_ID..PRODUCER_ID + 8].copy_from_slice(&producer_id.to_be_bytes());
            Bytes::from(b)
        }

        /// Uploads `batch` as an object of its own at position 8 and commits it.
        async fn commit(
            metadata: &Metadata,
            storage: &ObjectStorage,
            object: &str,
            (topic, batch): (&str, Bytes),
            producer: Option<ProducerBatch>,
            txn: ChunkTxn,
        ) -> anyhow::Result<()> {
            let count = u32::try_from(crate::record::batch::record_count(&batch))?;
            let length = batch.len() as u64;
            let mut object_bytes = b"STRATA01".to_vec();
            object_bytes.extend_from_slice(&batch);
            storage.put(object, Bytes::from(object_bytes)).await?;
            let r = metadata
                .propose(Command::CommitSegments {
                    segments: vec![SegmentCommit {
                        object: object.into(),
                        object_size: length + 8,
                        uploaded_ms: crate::clock::now_ms(),
                        entries: vec![SegmentEntry {
                            topic: topic.into(),
                            partition: 0,
                            position: 8,
                            length,
                            offset_count: count,
                            max_timestamp: crate::record::batch::batch_max_timestamp(&batch),
                            producer,
                        }],
                        txn: vec![txn],
                    }],
                    now_ms: crate::clock::now_ms(),
                    max_age_ms: 0,
                })
                .await?;
            match r {
                Response::Segments(r) if r.iter().flatten().all(Result::is_ok) => Ok(()),
                other => anyhow::bail!("commit refused: {other:?}"),
            }
        }

        async fn txn(metadata: &Metadata, cmd: Command) -> anyhow::Result<TxnReply> {
            match metadata.propose(cmd).await? {
                Response::Txn(r) => r.map_err(|e| anyhow::anyhow!("{e:?}")),
                other => anyhow::bail!("unexpected {other:?}"),
            }
        }

        /// Everything a reader sees of topic `t` and `u`: each read from offset 0 under
        /// both isolation levels, and a timestamp look-up per record time.
        async fn view(reader: &Arc<FetchReader>) -> anyhow::Result<Vec<String>> {
            let mut out = Vec::new();
            for topic in ["t", "u"] {
                for isolation in [Isolation::ReadCommitted, Isolation::ReadUncommitted] {
                    for offset in [0, 2, 5] {
                        let PartitionData {
                            records,
                            high_watermark,
                            last_stable_offset,
                            aborted,
                            ..
                        } = reader
                            .read(topic, 0, offset, 1 << 20, true, isolation)
                            .await?;
                        out.push(format!(
                            "{topic} {isolation:?} @{offset}: {records:?} hw {high_watermark} lso {last_stable_offset} aborted {aborted:?}"
                        ));
                    }
                }
                for ts in [0, 1_000, 1_001, 2_000, 3_001, 4_000, 9_000] {
                    let found = reader.offset_for_timestamp(topic, 0, ts).await?;
                    out.push(format!("{topic} ts {ts}: {found:?}"));
                }
            }
            Ok(out)
        }

        /// A reader with a cold cache.
        async fn fresh(metadata: &Arc<Metadata>, storage: &ObjectStorage) -> Arc<FetchReader> {
            let cache = Arc::new(BlockCache::in_memory(1 << 20).await);
            Arc::new(FetchReader::new(metadata.clone(), storage.clone(), cache))
        }

        /// Every entry of each topic's partition, as jobs.
        fn whole_logs(metadata: &Metadata, topics: &[&str]) -> Vec<Job> {
            metadata.read(|s| {
                topics
                    .iter()
                    .filter_map(|topic| {
                        let p = s.partition(topic, 0)?;
                        Some(Job {
                            topic: (*topic).to_owned(),
                            topic_id: s.topic(topic)?.id,
                            partition: 0,
                            aborted: p.txns.archivable(0, p.next_offset),
                            entries: p
                                .index
                                .iter()
                                .filter_map(|e| PlannedEntry::resolve(s, e))
                                .collect(),
                        })
                    })
                    .collect()
            })
        }

        /// A shared object of two partitions' runs (transactions, an abort, an open
        /// transaction, timestamps) reads exactly as the flush chunks did, by offset, by
        /// time and under read_committed, from the cache the compactor filled and from a
        /// cold one; merged again with new data, the same.
        #[tokio::test]
        async fn sections_read_as_the_chunks_they_replaced() -> anyhow::Result<()> {
            let dir = tempfile::tempdir()?;
            let metadata = crate::testing::metadata_with_topic(dir.path()).await?;
            metadata
                .propose(Command::CreateTopic {
                    name: "u".into(),
                    topic_id: [8; 16],
                    partitions: 1,
                    configs: BTreeMap::new(),
                    now_ms: crate::clock::now_ms(),
                    preferred: Vec::new(),
                })
                .await?;
            let storage = ObjectStorage::open("memory://")?;
            let reader = fresh(&metadata, &storage).await;
            let now = crate::clock::now_ms();
            // t: 0-1 plain, 2 an aborted transaction's record, 3 plain, 4 its abort
            // marker, 5 plain, 6 an open transaction's record.
            commit(
                &metadata,
                &storage,
                "segments/0",
                ("t", batch(2, 1_000, 0, -1)),
                None,
                ChunkTxn::None,
            )
            .await?;
            let TxnReply::Ready { producer_id, epoch } = txn(
                &metadata,
                Command::InitTransactional {
                    txn_id: "x".into(),
                    timeout_ms: 60_000,
                    current: None,
                    now_ms: now,
                },
            )
            .await?
            else {
                anyhow::bail!("no producer id");
            };
            let add = |now_ms| Command::AddPartitionsToTxn {
                txn_id: "x".into(),
                producer_id,
                epoch,
                partitions: vec![TopicPartition::new("t", 0)],
                now_ms,
            };
            txn(&metadata, add(now)).await?;
            let producer = |sequence: i32| {
                Some(ProducerBatch {
                    producer_id,
                    epoch,
                    first_sequence: sequence,
                    last_sequence: sequence,
                })
            };
            commit(
                &metadata,
                &storage,
                "segments/1",
                ("t", batch(1, 2_000, 0x10, producer_id)),
                producer(0),
                ChunkTxn::Data,
            )
            .await?;
            commit(
                &metadata,
                &storage,
                "segments/2",
                ("t", batch(1, 3_000, 0, -1)),
                None,
                ChunkTxn::None,
            )
            .await?;
            txn(
                &metadata,
                Command::EndTxn {
                    txn_id: "x".into(),
                    producer_id,
                    epoch,
                    commit: false,
                    now_ms: now,
                },
            )
            .await?;
            commit(
                &metadata,
                &storage,
                "segments/3",
                ("t", batch(1, 3_500, 0x30, producer_id)),
                Some(ProducerBatch {
                    producer_id,
                    epoch,
                    first_sequence: -1,
                    last_sequence: -1,
                }),
                ChunkTxn::Marker {
                    txn_id: "x".into(),
                    commit: false,
                },
            )
            .await?;
            commit(
                &metadata,
                &storage,
                "segments/4",
                ("t", batch(1, 4_000, 0, -1)),
                None,
                ChunkTxn::None,
            )
            .await?;
            let TxnReply::Ready { producer_id, epoch } = txn(
                &metadata,
                Command::InitTransactional {
                    txn_id: "y".into(),
                    timeout_ms: 60_000,
                    current: None,
                    now_ms: now,
                },
            )
            .await?
            else {
                anyhow::bail!("no producer id");
            };
            txn(
                &metadata,
                Command::AddPartitionsToTxn {
                    txn_id: "y".into(),
                    producer_id,
                    epoch,
                    partitions: vec![TopicPartition::new("t", 0)],
                    now_ms: now,
                },
            )
            .await?;
            commit(
                &metadata,
                &storage,
                "segments/5",
                ("t", batch(1, 5_000, 0x10, producer_id)),
                Some(ProducerBatch {
                    producer_id,
                    epoch,
                    first_sequence: 0,
                    last_sequence: 0,
                }),
                ChunkTxn::Data,
            )
            .await?;
            // u: plain records.
            for (i, ts) in [1_000, 2_000, 4_000].into_iter().enumerate() {
                commit(
                    &metadata,
                    &storage,
                    &format!("segments/u{i}"),
                    ("u", batch(3, ts, 0, -1)),
                    None,
                    ChunkTxn::None,
                )
                .await?;
            }
            let before = view(&reader).await?;
            assert!(
                before
                    .iter()
                    .any(|l| l.contains("lso 6") && l.contains("aborted [AbortedTxn")),
                "{before:#?}"
            );

            let config = CompactionConfig {
                policy: policy(1 << 20),
                interval: Duration::from_secs(1),
                node_id: 1,
                upload_timeout: Duration::from_secs(10),
            };
            let counters = CompactionCounters::default();
            let ctx = Context {
                metadata: &metadata,
                storage: &storage,
                fetcher: &reader,
                config: &config,
                counters: &counters,
            };
            compact_shared(&ctx, whole_logs(&metadata, &["t", "u"]), 1).await?;
            assert_eq!(counters.jobs.load(Ordering::Relaxed), 2);
            let (kinds, stats) = metadata.read(|s| {
                let kinds: Vec<_> = ["t", "u"]
                    .iter()
                    .flat_map(|t| {
                        s.partition(t, 0)
                            .map(|p| p.index.clone())
                            .unwrap_or_default()
                    })
                    .map(|e| s.objects().get(e.object).map(|o| o.kind))
                    .collect();
                (kinds, s.stats())
            });
            assert_eq!(kinds, vec![Some(ObjectKind::Shared); 2]);
            assert_eq!(
                (
                    stats.shared_objects,
                    stats.shared_sections,
                    stats.flush_objects
                ),
                (1, 2, 0)
            );
            assert_eq!(
                view(&reader).await?,
                before,
                "after the swap, from the cache the compactor filled"
            );
            assert_eq!(
                view(&fresh(&metadata, &storage).await).await?,
                before,
                "from a cold cache"
            );
            // The aborted transaction moved into t's section index, out of the state.
            let held = |s: &MetadataState| s.partition("t", 0).map(|p| p.txns.aborted().len());
            assert_eq!(metadata.read(held), Some(0));

            // t's section merged with a new chunk into a segment of its own: the section's
            // aborted transaction moves into the segment's footer.
            commit(
                &metadata,
                &storage,
                "segments/t9",
                ("t", batch(2, 6_000, 0, -1)),
                None,
                ChunkTxn::None,
            )
            .await?;
            let before_t = view(&fresh(&metadata, &storage).await).await?;
            for job in whole_logs(&metadata, &["t"]) {
                compact(&ctx, job, 7).await?;
            }
            let kinds = metadata.read(|s| {
                s.partition("t", 0).map(|p| {
                    p.index
                        .iter()
                        .map(|e| s.objects().get(e.object).map(|o| o.kind))
                        .collect::<Vec<_>>()
                })
            });
            assert_eq!(kinds, Some(vec![Some(ObjectKind::Segment)]));
            assert_eq!(
                view(&fresh(&metadata, &storage).await).await?,
                before_t,
                "after a merge into a segment of its own"
            );
            assert_eq!(metadata.read(held), Some(0));

            // New data, then the section and the new chunk merged into a new section.
            commit(
                &metadata,
                &storage,
                "segments/u3",
                ("u", batch(2, 6_000, 0, -1)),
                None,
                ChunkTxn::None,
            )
            .await?;
            let before = view(&fresh(&metadata, &storage).await).await?;
            compact_shared(&ctx, whole_logs(&metadata, &["u"]), 2).await?;
            assert_eq!(counters.jobs.load(Ordering::Relaxed), 4);
            assert_eq!(metadata.read(|s| s.stats().shared_objects), 1);
            assert_eq!(
                view(&fresh(&metadata, &storage).await).await?,
                before,
                "after a merge of a section"
            );
            metadata.shutdown().await?;
            Ok(())
        }
    }
}

//! The write buffer: accepts validated batches from any number of produce requests and
//! flushes them, by time or size, into one segment object for many partitions.
//!
//! A flush is two stages. Uploads run concurrently (a few at a time, which bounds memory
//! and applies backpressure to producers); commits run strictly in flush order, so two
//! requests to the same partition keep their order even when a later upload finishes
//! first. A request is answered only after its object is durable and committed.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indexmap::IndexMap;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn, Instrument};

use super::validate::ValidatedBatches;
use crate::metadata::shipping::{self, Riding};
use crate::metadata::state::{ChunkTxn, Command, Response, SegmentCommit, StateError};
use crate::metadata::Metadata;
use crate::storage::budget::Class;
use crate::storage::segment::SegmentBuilder;
use crate::storage::{BlockCache, ObjectStorage};

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProduceError {
    #[error("object store write failed: {0}")]
    Storage(String),
    #[error("metadata commit failed: {0}")]
    Commit(String),
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    #[error("refused by the metadata log: {0}")]
    Rejected(StateError),
    #[error("broker is shutting down")]
    ShuttingDown,
    #[error("timed out waiting for the commit")]
    TimedOut,
}

pub use crate::config::FlushIdle;

#[derive(Debug, Clone)]
pub struct BufferConfig {
    pub flush_interval: Duration,
    /// What happens when no upload is in flight; while one is, the buffer always fills
    /// for at least `flush_interval` (and up to four of them while uploads stay busy).
    pub flush_idle: FlushIdle,
    pub flush_bytes: usize,
    /// Uploads in flight at once; past this, flushing (and so producers) waits.
    pub max_inflight_uploads: usize,
    /// Record bytes accepted but not yet answered. Past this, produce requests wait (and
    /// time out) instead of growing memory without bound while the store is unreachable.
    pub max_buffered_bytes: usize,
    /// How long an upload is retried before its requests are failed.
    pub upload_timeout: Duration,
    pub node_id: u64,
    /// An upload not committed within this is refused by the state machine (and its
    /// requests fail): the orphan sweep may take it for garbage after twice as long.
    pub max_commit_age: Duration,
}

/// The largest round that carries metadata log entries: a larger one takes long enough
/// to upload that the acknowledgements waiting for those entries would wait for it (under
/// bulk load, measured: 12 % less produce throughput), so the shipper PUTs them alone.
const RIDE_MAX_BYTES: usize = 1 << 20;

type Reply = oneshot::Sender<Result<i64, ProduceError>>;

struct Pending {
    topic: String,
    partition: i32,
    batches: ValidatedBatches,
    reply: Reply,
    /// Held until the request is answered: the memory cap.
    permit: OwnedSemaphorePermit,
}

/// A request waiting for its commit: offsets it spans, where to answer, its memory.
struct Waiter {
    offset_count: u32,
    reply: Reply,
    _permit: OwnedSemaphorePermit,
}

impl Waiter {
    fn answer(self, result: Result<i64, ProduceError>) {
        let _ = self.reply.send(result);
    }
}

/// One partition's requests inside an uploaded object, in arrival order.
struct ChunkWaiters {
    waiters: Vec<Waiter>,
}

struct Uploaded {
    object: String,
    size: u64,
    uploaded_ms: i64,
    command_entries: Vec<crate::metadata::state::SegmentEntry>,
    /// Each entry's part in a transaction; empty when none has one.
    command_txn: Vec<ChunkTxn>,
    chunks: Vec<ChunkWaiters>,
    /// It carried metadata log entries (`metadata/ride.rs`).
    carried_log: bool,
}

impl ChunkWaiters {
    /// Every request of the chunk stopped waiting: it was answered with an error (its
    /// broker fenced, or its timeout passed) and its client retries elsewhere.
    fn abandoned(&self) -> bool {
        self.waiters.iter().all(|w| w.reply.is_closed())
    }
}

impl Uploaded {
    /// Leaves out the chunks no request waits for any more: committing them after their
    /// clients heard an error would give a retried record a second offset.
    fn drop_abandoned(&mut self) {
        if !self.chunks.iter().any(ChunkWaiters::abandoned) {
            return;
        }
        let keep: Vec<bool> = self.chunks.iter().map(|c| !c.abandoned()).collect();
        // Entries (and their transaction parts, when any) match chunks one to one.
        keep_marked(&mut self.chunks, &keep);
        keep_marked(&mut self.command_entries, &keep);
        if !self.command_txn.is_empty() {
            keep_marked(&mut self.command_txn, &keep);
        }
    }
}

fn keep_marked<T>(items: &mut Vec<T>, keep: &[bool]) {
    *items = std::mem::take(items)
        .into_iter()
        .zip(keep)
        .filter_map(|(item, keep)| keep.then_some(item))
        .collect();
}

/// Resolves once no request waits for any chunk of `uploads` (checked every 100 ms).
async fn all_abandoned(uploads: &[Uploaded]) {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if uploads
            .iter()
            .all(|u| u.chunks.iter().all(ChunkWaiters::abandoned))
        {
            return;
        }
    }
}

/// The answer to an enqueued request: its base offset once committed.
pub struct Committed {
    rx: oneshot::Receiver<Result<i64, ProduceError>>,
}

impl std::future::Future for Committed {
    type Output = Result<i64, ProduceError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ProduceError::ShuttingDown)))
    }
}

#[derive(Clone)]
pub struct WriteBuffer {
    tx: mpsc::Sender<Pending>,
    memory: Arc<Semaphore>,
    capacity_kib: u32,
}

/// The memory cap counts in KiB so that a permit count fits the semaphore's u32.
fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

impl WriteBuffer {
    pub fn start(
        config: BufferConfig,
        storage: ObjectStorage,
        metadata: Arc<Metadata>,
        cache: Arc<BlockCache>,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(4096);
        let capacity_kib = kib(config.max_buffered_bytes).max(1);
        let memory = Arc::new(Semaphore::new(capacity_kib as usize));
        let (commit_tx, commit_rx) = mpsc::channel(config.max_inflight_uploads.max(1));
        let max_commit_age = config.max_commit_age;
        let flusher = tokio::spawn(flush_loop(
            config,
            rx,
            commit_tx,
            storage,
            cache,
            metadata.clone(),
        ));
        let committer = tokio::spawn(commit_loop(commit_rx, metadata, max_commit_age));
        let handle = tokio::spawn(async move {
            let _ = flusher.await;
            let _ = committer.await;
        });
        (
            Self {
                tx,
                memory,
                capacity_kib,
            },
            handle,
        )
    }

    /// Buffers one partition's batches; the returned future resolves with their base
    /// offset once committed. Calls made in sequence get offsets in that sequence.
    pub async fn enqueue(
        &self,
        topic: &str,
        partition: i32,
        batches: ValidatedBatches,
    ) -> Result<Committed, ProduceError> {
        let (reply, rx) = oneshot::channel();
        // A request larger than the whole cap still goes through, alone.
        let want = kib(batches.bytes).min(self.memory_capacity());
        let permit = self
            .memory
            .clone()
            .acquire_many_owned(want)
            .await
            .map_err(|_| ProduceError::ShuttingDown)?;
        let pending = Pending {
            topic: topic.to_owned(),
            partition,
            batches,
            reply,
            permit,
        };
        self.tx
            .send(pending)
            .await
            .map_err(|_| ProduceError::ShuttingDown)?;
        Ok(Committed { rx })
    }

    /// Buffers and waits for the commit.
    pub async fn append(
        &self,
        topic: &str,
        partition: i32,
        batches: ValidatedBatches,
    ) -> Result<i64, ProduceError> {
        self.enqueue(topic, partition, batches).await?.await
    }

    fn memory_capacity(&self) -> u32 {
        self.capacity_kib
    }

    /// Bytes buffered, uploading or waiting for their commit (in whole KiB per request),
    /// and the cap on them.
    pub fn buffered_bytes(&self) -> (u64, u64) {
        let free = self.memory.available_permits() as u64;
        let cap = u64::from(self.capacity_kib);
        (cap.saturating_sub(free) * 1024, cap * 1024)
    }

    /// Waits until every request buffered so far is answered (committed, or failed), for
    /// at most `bound`; false if time ran out first. A request holds its share of the
    /// memory cap until it is answered, so the whole cap being free means nothing is
    /// buffered, uploading or waiting for its commit.
    pub async fn drain(&self, bound: Duration) -> bool {
        let all = self.memory.acquire_many(self.capacity_kib);
        matches!(tokio::time::timeout(bound, all).await, Ok(Ok(_)))
    }
}

async fn flush_loop(
    config: BufferConfig,
    mut rx: mpsc::Receiver<Pending>,
    commit_tx: mpsc::Sender<JoinHandle<Option<Uploaded>>>,
    storage: ObjectStorage,
    cache: Arc<BlockCache>,
    metadata: Arc<Metadata>,
) {
    let mut seq: u64 = 0;
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Ends when every WriteBuffer handle is dropped: what is buffered is still flushed.
    while let Some(first) = rx.recv().await {
        // On the leader the shipper lets committed entries wait for this round (a PUT
        // saved) while it forms.
        let mut forming = Some(metadata.ride().forming());
        let started = Instant::now();
        let mut deadline = started + config.flush_interval;
        let mut bytes = first.batches.bytes;
        let mut pending = vec![first];
        let immediate = config.flush_idle == FlushIdle::Immediate
            && in_flight.load(std::sync::atomic::Ordering::Relaxed) == 0;
        if immediate {
            // Nothing is uploading, so waiting would only add latency: flush at once,
            // with what the other connections have already queued (let them run once
            // so that requests arriving together share the object).
            tokio::task::yield_now().await;
            while bytes < config.flush_bytes {
                match rx.try_recv() {
                    Ok(p) => {
                        bytes += p.batches.bytes;
                        pending.push(p);
                    }
                    Err(_) => break,
                }
            }
        }
        // Otherwise fill the object for the interval.
        while !immediate && bytes < config.flush_bytes {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(p) => {
                        bytes += p.batches.bytes;
                        pending.push(p);
                        if bytes >= RIDE_MAX_BYTES {
                            forming = None;
                        }
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    // Adaptive size: while earlier uploads are still going (heavy load), a
                    // new object would only queue behind them, so keep filling this one,
                    // for up to four intervals. Otherwise flush on the interval.
                    let busy = in_flight.load(std::sync::atomic::Ordering::Relaxed) > 0;
                    if busy && deadline < started + config.flush_interval * 4 {
                        deadline += config.flush_interval;
                        continue;
                    }
                    break;
                }
            }
        }
        if bytes >= RIDE_MAX_BYTES {
            forming = None;
        }
        // Under the PUT budget, an object that is not full waits for a token and keeps
        // filling meanwhile: at a trickle, requests share PUTs instead of the bill
        // growing with them. A full object goes at once (the budget lends it a token).
        if let Some(budget) = storage.put_budget() {
            while bytes < config.flush_bytes && budget.available(Class::Foreground) < 1.0 {
                tokio::select! {
                    next = rx.recv() => match next {
                        Some(p) => {
                            bytes += p.batches.bytes;
                            pending.push(p);
                        }
                        None => break,
                    },
                    () = budget.ready(Class::Foreground) => break,
                }
            }
        }
        // A place in the commit queue. While the committer is still busy with earlier
        // uploads (a slow store, a slow commit: every one of them waits for a PUT of the
        // metadata log), keep filling this object instead of leaving the requests queued
        // behind it: the next commit then carries everything that arrived meanwhile, and
        // throughput follows the load, not the store's latency.
        let slot = match commit_tx.try_reserve() {
            Ok(slot) => Some(slot),
            Err(mpsc::error::TrySendError::Closed(())) => None,
            Err(mpsc::error::TrySendError::Full(())) => {
                // Waiting for the committer, which may itself wait for entries to be
                // shipped: not a round the shipper should wait for.
                forming = None;
                loop {
                    if bytes >= config.flush_bytes {
                        break commit_tx.reserve().await.ok();
                    }
                    tokio::select! {
                        biased;
                        slot = commit_tx.reserve() => break slot.ok(),
                        next = rx.recv() => match next {
                            Some(p) => {
                                bytes += p.batches.bytes;
                                pending.push(p);
                            }
                            None => break commit_tx.reserve().await.ok(),
                        },
                    }
                }
            }
        };
        let Some(slot) = slot else {
            break;
        };
        seq += 1;
        let uploaded_ms = crate::clock::now_ms();
        let plain = object_name(config.node_id, seq);
        let riding = if bytes < RIDE_MAX_BYTES {
            shipping::board(&metadata, &plain)
        } else {
            None
        };
        drop(forming);
        let object = riding.as_ref().map_or(plain, |r| r.path.clone());
        let span = tracing::debug_span!("upload", %object, bytes, requests = pending.len());
        in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let uploading = in_flight.clone();
        let work = upload(
            object,
            uploaded_ms,
            pending,
            riding.map(|r| (r, metadata.clone())),
            storage.clone(),
            cache.clone(),
            config.upload_timeout,
        );
        let upload = tokio::spawn(
            async move {
                let uploaded = work.await;
                uploading.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                uploaded
            }
            .instrument(span),
        );
        slot.send(upload);
    }
}

fn object_name(node_id: u64, seq: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    // Time first, so a listing is in write order; nanos keep restarts from colliding.
    format!(
        "segments/{:013}-{node_id}-{:09}-{seq}.seg",
        now.as_millis(),
        now.subsec_nanos()
    )
}

async fn upload(
    object: String,
    uploaded_ms: i64,
    pending: Vec<Pending>,
    riding: Option<(Riding, Arc<Metadata>)>,
    storage: ObjectStorage,
    cache: Arc<BlockCache>,
    upload_timeout: Duration,
) -> Option<Uploaded> {
    // One chunk per partition; an idempotent request gets a chunk of its own, so the
    // state machine can refuse it (a duplicate, a sequence gap) without touching others.
    let mut by_partition: IndexMap<(String, i32, Option<usize>), Vec<Pending>> = IndexMap::new();
    let data_bytes: usize = pending.iter().map(|p| p.batches.bytes).sum();
    for (i, p) in pending.into_iter().enumerate() {
        let own_chunk = p.batches.producer.map(|_| i);
        by_partition
            .entry((p.topic.clone(), p.partition, own_chunk))
            .or_default()
            .push(p);
    }
    // Sized to fit: the write-through cache keeps slices of this buffer, and so the whole
    // allocation, alive; slack would be memory the cache does not count.
    let footer_bytes: usize = by_partition.keys().map(|(t, _, _)| t.len() + 48).sum();
    let log_bytes = riding.as_ref().map_or(0, |(r, _)| r.log.len());
    let mut builder = SegmentBuilder::with_capacity(log_bytes + data_bytes + footer_bytes + 16);
    if let Some((r, _)) = &riding {
        builder.add_leading(&r.log);
    }
    let mut chunks = Vec::with_capacity(by_partition.len());
    let mut command_txn = Vec::with_capacity(by_partition.len());
    for ((topic, partition, _), requests) in by_partition {
        let producer = requests.first().and_then(|p| p.batches.producer);
        command_txn.push(
            requests
                .first()
                .map(|p| p.batches.txn.clone())
                .unwrap_or_default(),
        );
        let batches: Vec<_> = requests
            .iter()
            .flat_map(|p| p.batches.batches.iter().cloned())
            .collect();
        let offset_count = requests.iter().map(|p| p.batches.offset_count).sum();
        let max_timestamp = requests
            .iter()
            .map(|p| p.batches.max_timestamp)
            .max()
            .unwrap_or(-1);
        builder.add_chunk(
            &topic,
            partition,
            &batches,
            offset_count,
            max_timestamp,
            producer,
        );
        chunks.push(ChunkWaiters {
            waiters: requests
                .into_iter()
                .map(|p| Waiter {
                    offset_count: p.batches.offset_count,
                    reply: p.reply,
                    _permit: p.permit,
                })
                .collect(),
        });
    }
    let (data, entries) = builder.finish();
    if command_txn.iter().all(|t| *t == ChunkTxn::None) {
        command_txn.clear();
    }
    let size = data.len() as u64;
    let started = Instant::now();
    let put = storage.put_with_retry(&object, &data, upload_timeout).await;
    let carried_log = riding.is_some();
    if let Some((r, metadata)) = riding {
        shipping::landed(&metadata, r.claim, put.is_ok());
    }
    if let Err(e) = put {
        metrics::counter!(crate::telemetry::FLUSH_FAILURES).increment(1);
        warn!(error = %e, "segment upload failed; failing its requests");
        let err = ProduceError::Storage(e.to_string());
        for waiter in chunks.into_iter().flat_map(|c| c.waiters) {
            waiter.answer(Err(err.clone()));
        }
        return None;
    }
    metrics::counter!(crate::telemetry::FLUSHES).increment(1);
    metrics::histogram!(crate::telemetry::FLUSH_BYTES).record(size as f64);
    metrics::histogram!(crate::telemetry::FLUSH_SECONDS).record(started.elapsed().as_secs_f64());
    // Write-through: the uploader's own cache serves tail reads of what it just wrote.
    for entry in &entries {
        let start = entry.position as usize;
        cache.insert(
            &object,
            entry.position,
            data.slice(start..start + entry.length as usize),
        );
    }
    debug!(size, "segment uploaded");
    Some(Uploaded {
        object,
        size,
        uploaded_ms,
        command_entries: entries,
        command_txn,
        chunks,
        carried_log,
    })
}

async fn commit_loop(
    mut rx: mpsc::Receiver<JoinHandle<Option<Uploaded>>>,
    metadata: Arc<Metadata>,
    max_commit_age: Duration,
) {
    // Test-only crash window: die after an upload, before its commit, leaving an orphan.
    let crash_before_commit = crate::failpoint::on("crash-before-commit");
    // Die after the 20th PUT that carried metadata log entries (some records are
    // acknowledged by then), before its data is committed.
    let crash_after_ride = crate::failpoint::on("crash-after-ride");
    let mut rides = 0usize;
    while let Some(first) = rx.recv().await {
        // Everything queued behind the first upload rides in the same Raft entry: one
        // commit round trip (and fsync) for many objects when load is heavy.
        let mut handles = vec![first];
        while let Ok(next) = rx.try_recv() {
            handles.push(next);
        }
        let mut uploads = Vec::with_capacity(handles.len());
        for handle in handles {
            if let Ok(Some(mut uploaded)) = handle.await {
                // What nobody waits for is left uncommitted; the orphan collector
                // deletes an object none of whose chunks was committed.
                uploaded.drop_abandoned();
                if !uploaded.chunks.is_empty() {
                    uploads.push(uploaded);
                }
            }
        }
        if uploads.is_empty() {
            continue;
        }
        if crash_before_commit {
            warn!(object = %uploads[0].object, "failpoint crash-before-commit: aborting");
            std::process::abort();
        }
        rides += uploads.iter().filter(|u| u.carried_log).count();
        if let Some(ride) = uploads
            .iter()
            .find(|u| u.carried_log && crash_after_ride && rides >= 20)
        {
            // The entries it carried are shipped: let their acknowledgements go out, then
            // die before this round's own commit.
            tokio::time::sleep(Duration::from_millis(300)).await;
            warn!(object = %ride.object, "failpoint crash-after-ride: aborting");
            std::process::abort();
        }
        let segments = uploads
            .iter_mut()
            .map(|u| SegmentCommit {
                txn: std::mem::take(&mut u.command_txn),
                object: u.object.clone(),
                object_size: u.size,
                uploaded_ms: u.uploaded_ms,
                entries: std::mem::take(&mut u.command_entries),
            })
            .collect();
        let commit = Command::CommitSegments {
            segments,
            now_ms: crate::clock::now_ms(),
            max_age_ms: max_commit_age.as_millis() as i64,
        };
        // A proposal retries (a leader change, a cut-off leader) for up to its timeout;
        // once every request it carries has been answered with an error, it stops.
        let proposed = tokio::select! {
            proposed = metadata.propose(commit) => proposed,
            () = all_abandoned(&uploads) => {
                warn!(objects = uploads.len(), "segment commit given up: every request it carried was answered with an error");
                continue;
            }
        };
        let results = match proposed {
            Ok(Response::Segments(results)) => results,
            Ok(other) => {
                warn!(?other, "unexpected response to CommitSegments");
                Vec::new()
            }
            Err(e) => {
                warn!(error = %e, objects = uploads.len(), "segment commit failed");
                let err = ProduceError::Commit(e.to_string());
                for waiter in uploads
                    .into_iter()
                    .flat_map(|u| u.chunks)
                    .flat_map(|c| c.waiters)
                {
                    waiter.answer(Err(err.clone()));
                }
                continue;
            }
        };
        let mut results = results.into_iter();
        for uploaded in uploads {
            answer_waiters(uploaded.chunks, results.next().unwrap_or_default());
        }
    }
}

/// Gives each request its base offset: its chunk's base plus the offsets of the requests
/// before it in the chunk.
fn answer_waiters(chunks: Vec<ChunkWaiters>, results: Vec<Result<i64, StateError>>) {
    for (i, chunk) in chunks.into_iter().enumerate() {
        let result = results
            .get(i)
            .cloned()
            .unwrap_or(Err(StateError::UnknownTopicOrPartition));
        let mut next = match result {
            Ok(base) => base,
            // A retry of a committed batch: the producer hears its original offset.
            Err(StateError::DuplicateSequence(base)) => base,
            Err(e) => {
                let err = match e {
                    StateError::UnknownTopicOrPartition => ProduceError::UnknownTopicOrPartition,
                    other => ProduceError::Rejected(other),
                };
                for waiter in chunk.waiters {
                    waiter.answer(Err(err.clone()));
                }
                continue;
            }
        };
        for waiter in chunk.waiters {
            let count = waiter.offset_count;
            waiter.answer(Ok(next));
            next += i64::from(count);
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::produce::validate::validate;
    use crate::testing::make_batch;

    /// A write buffer on a memory store, with a flush interval far longer than any
    /// wait below, and a one-partition topic `t`.
    async fn buffer(
        dir: &std::path::Path,
        flush_idle: FlushIdle,
    ) -> anyhow::Result<(WriteBuffer, Arc<Metadata>)> {
        let metadata = crate::testing::metadata_with_topic(dir).await?;
        let (buffer, _) = WriteBuffer::start(
            BufferConfig {
                flush_interval: Duration::from_secs(3),
                flush_idle,
                flush_bytes: 1 << 20,
                max_inflight_uploads: 4,
                max_buffered_bytes: 64 << 20,
                upload_timeout: Duration::from_secs(10),
                node_id: 1,
                max_commit_age: Duration::from_secs(3600),
            },
            ObjectStorage::open("memory://")?,
            metadata.clone(),
            Arc::new(BlockCache::in_memory(1 << 20).await),
        );
        Ok((buffer, metadata))
    }

    #[tokio::test]
    async fn with_nothing_uploading_an_immediate_buffer_flushes_at_once() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (buffer, metadata) = buffer(dir.path(), FlushIdle::Immediate).await?;
        for expected in [0, 2, 4] {
            let batches = validate(&make_batch(2, 1000))?;
            let base = tokio::time::timeout(Duration::from_secs(2), buffer.append("t", 0, batches))
                .await
                .map_err(|_| anyhow::anyhow!("an idle buffer waited for its flush interval"))??;
            assert_eq!(base, expected);
        }
        metadata.shutdown().await?;
        Ok(())
    }

    #[tokio::test]
    async fn an_interval_buffer_waits_out_the_interval() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (buffer, metadata) = buffer(dir.path(), FlushIdle::Interval).await?;
        let mut committed = buffer
            .enqueue("t", 0, validate(&make_batch(1, 1000))?)
            .await?;
        assert!(
            tokio::time::timeout(Duration::from_secs(1), &mut committed)
                .await
                .is_err(),
            "flushed before its interval"
        );
        let base = tokio::time::timeout(Duration::from_secs(10), committed).await??;
        assert_eq!(base, 0);
        metadata.shutdown().await?;
        Ok(())
    }

    #[tokio::test]
    async fn a_request_nobody_waits_for_is_not_committed() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (buffer, metadata) = buffer(dir.path(), FlushIdle::Interval).await?;
        // Its client heard an error (a fenced broker, a timeout) and retries elsewhere.
        let abandoned = buffer
            .enqueue("t", 0, validate(&make_batch(2, 1000))?)
            .await?;
        drop(abandoned);
        tokio::time::sleep(Duration::from_millis(3500)).await;
        let retried = buffer
            .enqueue("t", 0, validate(&make_batch(2, 1000))?)
            .await?;
        let base = tokio::time::timeout(Duration::from_secs(10), retried).await??;
        assert_eq!(base, 0, "the abandoned request was committed first");
        metadata.shutdown().await?;
        Ok(())
    }

    #[test]
    fn the_setting_parses() {
        assert_eq!("immediate".parse(), Ok(FlushIdle::Immediate));
        assert_eq!("interval".parse(), Ok(FlushIdle::Interval));
        assert_eq!("soon".parse::<FlushIdle>(), Err(()));
        assert_eq!(FlushIdle::default(), FlushIdle::Immediate);
    }
}

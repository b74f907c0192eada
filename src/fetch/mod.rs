//! The fetch path: index look-up in the local metadata replica, then the pieces of
//! objects that hold the offsets (a flush chunk, or a frame of a compacted segment found
//! through the segment's footer, or of a shared object's section found through the
//! section's own index), each from the cache or a ranged read of the object, with the
//! assigned offsets written into each batch header.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::metadata::state::objects::ObjectKind;
use crate::metadata::state::partition::IndexEntry;
use crate::metadata::state::transactions::AbortedTxn;
use crate::metadata::state::MetadataState;
use crate::metadata::Metadata;
use crate::record::batch::{
    batch_base_offset, batch_max_timestamp, record_timestamps, set_base_offset, stored_batches,
    StoredBatch,
};
use crate::storage::segment::{
    decode_section_index, decode_tail, section_index_len, CompactedFooter, Footer, Frame,
    SECTION_INDEX_READ,
};
use crate::storage::{BlockCache, ObjectStorage};

/// Index entries looked at per partition per fetch; each is at least one batch.
const MAX_ENTRIES_PER_READ: usize = 256;
/// Pieces loaded ahead of a reader that missed the cache.
const READ_AHEAD_PIECES: usize = 4;
/// The cache key position of a compacted segment's footer (no piece starts there).
const FOOTER_KEY: u64 = u64::MAX;
/// Set in the cache key position of a shared object's section index, which is the
/// position where the section's data ends (no piece starts at such a high position):
/// one key per section.
const SECTION_INDEX_KEY: u64 = 1 << 63;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FetchError {
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    #[error("offset out of range")]
    OffsetOutOfRange,
    /// This broker fenced itself: its view may be stale; read elsewhere.
    #[error("not the leader: this broker is fenced")]
    NotLeaderOrFollower,
    #[error("object store read failed: {0}")]
    Storage(String),
    #[error("segment object {0} is not valid: {1}")]
    Corrupt(String, String),
}

#[derive(Debug, Clone, Default)]
pub struct PartitionData {
    pub records: Bytes,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    /// The last stable offset (the high watermark when no transaction is ongoing).
    pub last_stable_offset: i64,
    /// read_committed: the aborted transactions overlapping the returned records (Fetch's
    /// `aborted_transactions`); always empty for read_uncommitted.
    pub aborted: Vec<AbortedTxn>,
}

/// Fetch's `isolation_level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// Everything up to the high watermark (0).
    #[default]
    ReadUncommitted,
    /// Only below the last stable offset, with the aborted transactions in range (1).
    ReadCommitted,
}

impl Isolation {
    /// From the request field: 1 is read_committed, anything else read_uncommitted.
    pub fn from_level(level: i8) -> Self {
        if level == 1 {
            Self::ReadCommitted
        } else {
            Self::ReadUncommitted
        }
    }
}

/// What one metadata read gives a fetch: the entries to read and the partition's offsets.
#[derive(Debug, Clone, Default)]
struct Plan {
    entries: Vec<PlannedEntry>,
    high_watermark: i64,
    log_start_offset: i64,
    last_stable_offset: i64,
    /// read_committed: the aborted transactions overlapping the planned offsets below
    /// the last stable offset.
    aborted: Vec<AbortedTxn>,
}

/// The offset a fetch may read up to (exclusive) under `isolation`.
fn read_bound(isolation: Isolation, high_watermark: i64, last_stable_offset: i64) -> i64 {
    match isolation {
        Isolation::ReadUncommitted => high_watermark,
        Isolation::ReadCommitted => last_stable_offset.min(high_watermark),
    }
}

/// The aborted transactions to answer for records read over `[from, read_up_to)`: those
/// of `found` (gathered over the planned ranges, possibly repeated) overlapping it,
/// once each, in order of their markers.
fn aborted_for(mut found: Vec<AbortedTxn>, from: i64, read_up_to: i64) -> Vec<AbortedTxn> {
    found.retain(|a| a.last_offset >= from && a.first_offset < read_up_to);
    found.sort_by_key(|a| (a.last_offset, a.producer_id, a.first_offset));
    found.dedup();
    found
}

/// An index entry with what the read needs of its object.
#[derive(Debug, Clone)]
pub struct PlannedEntry {
    pub entry: IndexEntry,
    pub object: String,
    pub object_size: u64,
    pub kind: ObjectKind,
}

impl PlannedEntry {
    /// The entry with its object's name, size and kind; None if the object is unknown
    /// (which a consistent state never has).
    pub fn resolve(state: &MetadataState, entry: &IndexEntry) -> Option<Self> {
        let info = state.objects().get(entry.object)?;
        Some(Self {
            entry: *entry,
            object: info.name.clone(),
            object_size: info.size,
            kind: info.kind,
        })
    }
}

/// A range of an object read and cached whole: a flush chunk or a compacted frame.
#[derive(Debug, Clone)]
pub struct Piece {
    pub object: String,
    pub position: u64,
    pub length: u64,
    /// The offset of its first batch.
    pub base_offset: i64,
    /// The offset after the last one it covers (its batches may end before: gaps).
    pub end_offset: i64,
    /// Whether its batch headers carry their offsets (a segment's do: they were written
    /// at compaction, and the log cleaner leaves gaps between them); a flush chunk's
    /// batches are numbered densely from `base_offset`.
    pub offsets_in_headers: bool,
}

impl Piece {
    /// A flush chunk as one piece.
    pub fn chunk(planned: &PlannedEntry) -> Self {
        Self {
            object: planned.object.clone(),
            position: planned.entry.position,
            length: planned.entry.length,
            base_offset: planned.entry.base_offset,
            end_offset: planned.entry.end_offset(),
            offsets_in_headers: false,
        }
    }

    /// One frame of a compacted entry (a segment or a section).
    fn frame(planned: &PlannedEntry, footer: &CompactedFooter, frame: &Frame) -> Self {
        Self {
            object: planned.object.clone(),
            position: frame.position,
            length: frame.length,
            base_offset: frame.base_offset,
            end_offset: footer
                .frame_end(frame)
                .min(planned.entry.end_offset())
                .max(frame.base_offset),
            offsets_in_headers: true,
        }
    }

    /// The batches of this piece's bytes, each with its first offset.
    pub fn batches(&self, bytes: &[u8]) -> Vec<(StoredBatch, i64)> {
        let mut next = self.base_offset;
        stored_batches(bytes)
            .into_iter()
            .map(|batch| {
                let base = if self.offsets_in_headers {
                    batch_base_offset(&bytes[batch.start..])
                } else {
                    next
                };
                next = base + i64::from(batch.offset_span);
                (batch, base)
            })
            .collect()
    }
}

/// Fetch rounds a read may take past pieces that hold nothing at or after its offset (a
/// stretch the log cleaner emptied), before answering with no records.
const EMPTY_ROUNDS: usize = 8;

pub struct FetchReader {
    metadata: Arc<Metadata>,
    storage: ObjectStorage,
    cache: Arc<BlockCache>,
}

impl FetchReader {
    pub fn new(metadata: Arc<Metadata>, storage: ObjectStorage, cache: Arc<BlockCache>) -> Self {
        Self {
            metadata,
            storage,
            cache,
        }
    }

    /// The entries holding `offset` and after, up to about `max_bytes`, with their
    /// objects; plus the partition's offsets and, for read_committed, the aborted
    /// transactions over the planned offsets (all under one metadata read).
    fn plan(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: usize,
        max_entries: usize,
        isolation: Isolation,
    ) -> Option<Plan> {
        self.metadata.read(|s| {
            let p = s.partition(topic, partition)?;
            // Clone only the entries this read can use: enough bytes to fill max_bytes.
            let mut budget = 0u64;
            let entries: Vec<PlannedEntry> = p
                .entries_from(offset, max_entries)
                .iter()
                .take_while(|e| {
                    let take = budget < max_bytes as u64;
                    budget += e.length;
                    take
                })
                .filter_map(|e| PlannedEntry::resolve(s, e))
                .collect();
            let last_stable_offset = p.last_stable_offset();
            let aborted = match isolation {
                Isolation::ReadCommitted => {
                    let planned_end = entries.last().map_or(offset, |e| e.entry.end_offset());
                    p.txns
                        .aborted_in(offset, planned_end.min(last_stable_offset))
                }
                Isolation::ReadUncommitted => Vec::new(),
            };
            Some(Plan {
                entries,
                high_watermark: p.next_offset,
                log_start_offset: p.log_start_offset,
                last_stable_offset,
                aborted,
            })
        })
    }

    /// Whole record batches from `offset`, at most `max_bytes` of them, except that with
    /// `min_one` the first batch is returned even when it is larger (KIP-74: so that a
    /// consumer can't get stuck behind a batch larger than its limit). Without `min_one`,
    /// a first batch that does not fit means no records. read_committed returns only
    /// whole batches below the last stable offset, with the aborted transactions they
    /// overlap.
    pub async fn read(
        self: &Arc<Self>,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
        isolation: Isolation,
    ) -> Result<PartitionData, FetchError> {
        let plan_bytes = if min_one { max_bytes.max(1) } else { max_bytes };
        let Plan {
            entries,
            high_watermark,
            log_start_offset,
            last_stable_offset,
            aborted,
        } = self
            .plan(
                topic,
                partition,
                offset,
                plan_bytes,
                MAX_ENTRIES_PER_READ,
                isolation,
            )
            .ok_or(FetchError::UnknownTopicOrPartition)?;
        if offset < log_start_offset || offset > high_watermark {
            return Err(FetchError::OffsetOutOfRange);
        }
        let nothing = PartitionData {
            records: Bytes::new(),
            high_watermark,
            log_start_offset,
            last_stable_offset,
            aborted: Vec::new(),
        };
        // read_committed stops at the last stable offset; at or past it there is nothing
        // to return yet (the fetch waits as at the end of the log).
        let upper = read_bound(isolation, high_watermark, last_stable_offset);
        if plan_bytes == 0 || offset >= upper {
            return Ok(nothing);
        }
        let mut found_aborted = aborted;
        let committed = isolation == Isolation::ReadCommitted;
        let mut pieces = self
            .pieces(
                &entries,
                offset,
                plan_bytes,
                committed.then_some(&mut found_aborted),
            )
            .await?;
        let missed = pieces
            .first()
            .is_some_and(|p| !self.cache.contains(&p.object, p.position));
        let mut out = BytesMut::new();
        let mut read_up_to = offset;
        let mut full = false;
        for round in 0.. {
            'pieces: for piece in &pieces {
                let bytes = self.load(piece).await?;
                for (batch, base) in piece.batches(&bytes) {
                    let end = base + i64::from(batch.offset_span);
                    if end > upper {
                        full = true;
                        break 'pieces;
                    }
                    if end > offset {
                        if (!out.is_empty() || !min_one) && out.len() + batch.len > max_bytes {
                            full = true;
                            break 'pieces;
                        }
                        let at = out.len();
                        out.extend_from_slice(&bytes[batch.start..batch.start + batch.len]);
                        set_base_offset(&mut out[at..], base);
                        read_up_to = end;
                    }
                }
                if out.len() >= max_bytes {
                    break;
                }
            }
            // Cleaned segments have gaps: a read that found nothing yet goes on past the
            // pieces it was planned with, or a consumer at a gap would wait forever.
            let covered = pieces.last().map_or(offset, |p| p.end_offset);
            if full || !out.is_empty() || covered >= upper || round >= EMPTY_ROUNDS {
                break;
            }
            let Some(next) = self.plan(
                topic,
                partition,
                covered,
                plan_bytes,
                MAX_ENTRIES_PER_READ,
                isolation,
            ) else {
                break;
            };
            found_aborted.extend(next.aborted);
            pieces = self
                .pieces(
                    &next.entries,
                    covered,
                    plan_bytes,
                    committed.then_some(&mut found_aborted),
                )
                .await?;
            if pieces.is_empty() {
                break;
            }
        }
        if missed {
            self.read_ahead(topic, partition, read_up_to);
        }
        let aborted = if out.is_empty() {
            Vec::new()
        } else {
            aborted_for(found_aborted, offset, read_up_to)
        };
        Ok(PartitionData {
            records: out.freeze(),
            aborted,
            ..nothing
        })
    }

    /// The pieces of `entries` from `offset`, about `max_bytes` of them (at least one).
    /// With `aborted`, the aborted transactions in the footers of the compacted entries
    /// the pieces come from are added to it: with the state's, they are every aborted
    /// transaction the pieces overlap (see `PartitionTxns::archivable`).
    async fn pieces(
        &self,
        entries: &[PlannedEntry],
        offset: i64,
        max_bytes: usize,
        mut aborted: Option<&mut Vec<AbortedTxn>>,
    ) -> Result<Vec<Piece>, FetchError> {
        let mut pieces = Vec::new();
        let mut bytes = 0u64;
        for planned in entries {
            if !pieces.is_empty() && bytes >= max_bytes as u64 {
                break;
            }
            match planned.kind {
                ObjectKind::Flush => {
                    bytes += planned.entry.length;
                    pieces.push(Piece::chunk(planned));
                }
                ObjectKind::Segment | ObjectKind::Cleaned | ObjectKind::Shared => {
                    let footer = self.frame_index(planned).await?;
                    if let Some(found) = aborted.as_deref_mut() {
                        found.extend_from_slice(&footer.aborted);
                    }
                    for frame in footer.frames_from(offset.max(planned.entry.base_offset)) {
                        if !pieces.is_empty() && bytes >= max_bytes as u64 {
                            break;
                        }
                        bytes += frame.length;
                        pieces.push(Piece::frame(planned, &footer, frame));
                    }
                }
            }
        }
        Ok(pieces)
    }

    /// Kafka's ListOffsets by timestamp: the first offset whose record timestamp is at
    /// or after `timestamp`, with that timestamp. Exact for uncompressed batches; for a
    /// compressed batch it is the batch's first offset. Binary searches: the index's
    /// running maximum, then the segment footer's (or the section index's).
    pub async fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: i32,
        timestamp: i64,
    ) -> Result<Option<(i64, i64)>, FetchError> {
        let planned = self
            .metadata
            .read(|s| {
                let p = s.partition(topic, partition)?;
                let Some(e) = p.entry_for_timestamp(timestamp) else {
                    return Some(None);
                };
                Some(Some(PlannedEntry::resolve(s, e)?))
            })
            .ok_or(FetchError::UnknownTopicOrPartition)?;
        let Some(planned) = planned else {
            return Ok(None);
        };
        let piece = match planned.kind {
            ObjectKind::Flush => Piece::chunk(&planned),
            ObjectKind::Segment | ObjectKind::Cleaned | ObjectKind::Shared => {
                let footer = self.frame_index(&planned).await?;
                let Some(frame) = footer.frame_for_timestamp(timestamp) else {
                    return Ok(Some((
                        planned.entry.max_timestamp,
                        planned.entry.base_offset,
                    )));
                };
                Piece::frame(&planned, &footer, frame)
            }
        };
        let bytes = self.load(&piece).await?;
        for (batch, base) in piece.batches(&bytes) {
            let batch_bytes = &bytes[batch.start..batch.start + batch.len];
            match record_timestamps(batch_bytes) {
                Some(records) => {
                    if let Some((delta, ts)) = records.into_iter().find(|(_, ts)| *ts >= timestamp)
                    {
                        return Ok(Some((ts, base + delta)));
                    }
                }
                None => {
                    let max = batch_max_timestamp(batch_bytes);
                    if max >= timestamp {
                        return Ok(Some((max, base)));
                    }
                }
            }
        }
        // The index said this piece reaches the timestamp; fall back to its start.
        Ok(Some((planned.entry.max_timestamp, piece.base_offset)))
    }

    /// A compacted entry's sparse offset and timestamp index: a segment's footer, or a
    /// shared object's section index.
    pub async fn frame_index(&self, planned: &PlannedEntry) -> Result<CompactedFooter, FetchError> {
        match planned.kind {
            ObjectKind::Shared => self.section_index(planned).await,
            _ => self.footer(planned).await,
        }
    }

    /// A section's index, from where the section's data ends: one ranged GET of
    /// [`SECTION_INDEX_READ`] bytes (a second one for the rest of a longer index), kept
    /// in the cache under the section's own key.
    async fn section_index(&self, planned: &PlannedEntry) -> Result<CompactedFooter, FetchError> {
        let corrupt = |e: crate::storage::segment::SegmentError| {
            FetchError::Corrupt(planned.object.clone(), e.to_string())
        };
        let data = (planned.entry.position, planned.entry.length);
        let at = data.0 + data.1;
        let size = planned.object_size;
        if at >= size {
            return Err(corrupt(crate::storage::segment::SegmentError::TooShort));
        }
        let storage = self.storage.clone();
        let object = planned.object.clone();
        let bytes = self
            .cache
            .get_or_load(&planned.object, SECTION_INDEX_KEY | at, async move {
                let first = storage
                    .get_range(&object, at..(at + SECTION_INDEX_READ).min(size))
                    .await?;
                // The header says how long the index is; what the first read missed.
                match section_index_len(&first) {
                    Ok(len) if len > first.len() as u64 && at + len <= size => {
                        storage.get_range(&object, at..at + len).await
                    }
                    _ => Ok(first),
                }
            })
            .await
            .map_err(FetchError::Storage)?;
        decode_section_index(&bytes, data).map_err(corrupt)
    }

    /// A compacted segment's footer: its sparse offset and timestamp index, read with
    /// one ranged GET of the object's tail and kept in the cache.
    async fn footer(&self, planned: &PlannedEntry) -> Result<CompactedFooter, FetchError> {
        let storage = self.storage.clone();
        let object = planned.object.clone();
        let size = planned.object_size;
        let tail_start = planned.entry.position + planned.entry.length;
        let tail = self
            .cache
            .get_or_load(&planned.object, FOOTER_KEY, async move {
                storage.get_range(&object, tail_start..size).await
            })
            .await
            .map_err(FetchError::Storage)?;
        match decode_tail(size, &tail) {
            Ok(Footer::Compacted(footer)) => Ok(footer),
            Ok(Footer::Flush { .. } | Footer::Shared { .. }) => Err(FetchError::Corrupt(
                planned.object.clone(),
                "another kind of footer where a compacted segment was expected".into(),
            )),
            Err(e) => Err(FetchError::Corrupt(planned.object.clone(), e.to_string())),
        }
    }

    /// Puts a piece into the cache's memory tier (write-through of data just written).
    pub fn keep(&self, object: &str, position: u64, data: Bytes) {
        self.cache.insert(object, position, data);
    }

    /// [`Self::keep`] for a frame of a large buffer (a compacted object): kept as a copy,
    /// since a slice would hold the whole buffer in memory for as long as any one of its
    /// frames stays cached, while the cache counts only the frame.
    pub fn keep_copy(&self, object: &str, position: u64, frame: &[u8]) {
        self.keep(object, position, Bytes::copy_from_slice(frame));
    }

    /// Puts a section's index (as stored at `at`, where its data ends) into the cache's
    /// memory tier, where a reader of the section looks first.
    pub fn keep_section_index(&self, object: &str, at: u64, index: Bytes) {
        self.cache.insert(object, SECTION_INDEX_KEY | at, index);
    }

    /// A piece from the cache, or from the store (coalesced with concurrent misses).
    pub async fn load(&self, piece: &Piece) -> Result<Bytes, FetchError> {
        let storage = self.storage.clone();
        let object = piece.object.clone();
        let range = piece.position..piece.position + piece.length;
        self.cache
            .get_or_load(&piece.object, piece.position, async move {
                storage.get_range(&object, range).await
            })
            .await
            .map_err(FetchError::Storage)
    }

    /// Sequential read-ahead for catch-up readers: start loading the pieces that follow
    /// what a fetch just read, so the next fetch finds them in the cache.
    fn read_ahead(self: &Arc<Self>, topic: &str, partition: i32, after: i64) {
        let Some(Plan { entries, .. }) = self.plan(
            topic,
            partition,
            after,
            usize::MAX,
            READ_AHEAD_PIECES,
            Isolation::ReadUncommitted,
        ) else {
            return;
        };
        let reader = self.clone();
        tokio::spawn(async move {
            let budget = READ_AHEAD_PIECES * crate::storage::segment::FRAME_BYTES;
            let Ok(pieces) = reader.pieces(&entries, after, budget, None).await else {
                return;
            };
            for piece in pieces.into_iter().take(READ_AHEAD_PIECES) {
                if reader.cache.contains(&piece.object, piece.position) {
                    continue;
                }
                let reader = reader.clone();
                tokio::spawn(async move {
                    let _ = reader.load(&piece).await;
                });
            }
        });
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::metadata::state::transactions::TopicPartition;
    use crate::metadata::state::{
        ChunkTxn, Command, ProducerBatch, Response, SegmentCommit, SegmentEntry, TxnReply,
    };
    use crate::record::batch::{ATTRIBUTES, PRODUCER_ID};
    use crate::testing::make_batch;

    fn txn(producer_id: i64, first_offset: i64, last_offset: i64) -> AbortedTxn {
        AbortedTxn {
            producer_id,
            first_offset,
            last_offset,
        }
    }

    #[test]
    fn read_committed_reads_below_the_lso() {
        assert_eq!(read_bound(Isolation::ReadUncommitted, 10, 4), 10);
        assert_eq!(read_bound(Isolation::ReadCommitted, 10, 4), 4);
        assert_eq!(read_bound(Isolation::ReadCommitted, 10, 12), 10);
        assert_eq!(Isolation::from_level(1), Isolation::ReadCommitted);
        assert_eq!(Isolation::from_level(0), Isolation::ReadUncommitted);
    }

    #[test]
    fn the_aborted_transactions_answered_overlap_what_was_read() {
        // Gathered over two planned ranges: one repeated, one past what was read.
        let found = vec![
            txn(1, 0, 4),
            txn(2, 3, 9),
            txn(2, 3, 9),
            txn(3, 20, 25),
            txn(4, 1, 2),
        ];
        assert_eq!(
            aborted_for(found.clone(), 5, 20),
            vec![txn(2, 3, 9)],
            "ended before the fetch offset, or began at or after the read end: left out"
        );
        assert_eq!(
            aborted_for(found, 0, 21),
            vec![txn(4, 1, 2), txn(1, 0, 4), txn(2, 3, 9), txn(3, 20, 25)]
        );
        assert!(aborted_for(Vec::new(), 0, 100).is_empty());
    }

    /// A metadata replica with topic `t` (one partition), a memory store and a reader.
    async fn reader(
        dir: &std::path::Path,
    ) -> anyhow::Result<(Arc<Metadata>, ObjectStorage, Arc<FetchReader>)> {
        let metadata = crate::testing::metadata_with_topic(dir).await?;
        let storage = ObjectStorage::open("memory://")?;
        let cache = Arc::new(BlockCache::in_memory(1 << 20).await);
        let reader = Arc::new(FetchReader::new(metadata.clone(), storage.clone(), cache));
        Ok((metadata, storage, reader))
    }

    /// Uploads `batch` as its own object and commits it; its base offset.
    async fn commit(
        metadata: &Metadata,
        storage: &ObjectStorage,
        object: &str,
        batch: Bytes,
        producer: Option<ProducerBatch>,
        kind: ChunkTxn,
    ) -> anyhow::Result<i64> {
        let count = u32::try_from(crate::record::batch::record_count(&batch))?;
        let length = batch.len() as u64;
        storage.put(object, batch).await?;
        let r = metadata
            .propose(Command::CommitSegments {
                segments: vec![SegmentCommit {
                    object: object.into(),
                    object_size: length,
                    uploaded_ms: crate::clock::now_ms(),
                    entries: vec![SegmentEntry {
                        topic: "t".into(),
                        partition: 0,
                        position: 0,
                        length,
                        offset_count: count,
                        max_timestamp: 1_000,
                        producer,
                    }],
                    txn: vec![kind],
                }],
                now_ms: crate::clock::now_ms(),
                max_age_ms: 0,
            })
            .await?;
        match r {
            Response::Segments(r) => r
                .into_iter()
                .flatten()
                .next()
                .ok_or_else(|| anyhow::anyhow!("no result"))?
                .map_err(|e| anyhow::anyhow!("commit refused: {e:?}")),
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }

    async fn txn_command(metadata: &Metadata, cmd: Command) -> anyhow::Result<TxnReply> {
        match metadata.propose(cmd).await? {
            Response::Txn(r) => r.map_err(|e| anyhow::anyhow!("{e:?}")),
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }

    /// A batch of `count` records with the given attribute bits and producer id.
    fn batch(count: i32, attributes: i16, producer_id: i64) -> Bytes {
        let mut b = make_batch(count, 1_000).to_vec();
        b[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
        b[PRODUCER_ID..PRODUCER_ID + 8].copy_from_slice(&producer_id.to_be_bytes());
        Bytes::from(b)
    }

    /// The base offsets of the batches a read returned.
    fn bases(data: &PartitionData) -> Vec<i64> {
        stored_batches(&data.records)
            .iter()
            .map(|b| batch_base_offset(&data.records[b.start..]))
            .collect()
    }

    #[tokio::test]
    async fn read_committed_stops_at_the_lso_and_lists_aborted_transactions() -> anyhow::Result<()>
    {
        let dir = tempfile::tempdir()?;
        let (metadata, storage, reader) = reader(dir.path()).await?;
        let now = crate::clock::now_ms();
        // 0-1 plain.
        commit(
            &metadata,
            &storage,
            "o0",
            batch(2, 0, -1),
            None,
            ChunkTxn::None,
        )
        .await?;
        let TxnReply::Ready { producer_id, epoch } = txn_command(
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
        txn_command(
            &metadata,
            Command::AddPartitionsToTxn {
                txn_id: "x".into(),
                producer_id,
                epoch,
                partitions: vec![TopicPartition::new("t", 0)],
                now_ms: now,
            },
        )
        .await?;
        // 2: transactional; 3: plain.
        let producer = |first_sequence: i32, last_sequence: i32| {
            Some(ProducerBatch {
                producer_id,
                epoch,
                first_sequence,
                last_sequence,
            })
        };
        let at = commit(
            &metadata,
            &storage,
            "o1",
            batch(1, 0x10, producer_id),
            producer(0, 0),
            ChunkTxn::Data,
        )
        .await?;
        assert_eq!(at, 2);
        commit(
            &metadata,
            &storage,
            "o2",
            batch(1, 0, -1),
            None,
            ChunkTxn::None,
        )
        .await?;

        let committed = Isolation::ReadCommitted;
        let uncommitted = Isolation::ReadUncommitted;
        let r = reader.read("t", 0, 0, 1 << 20, true, committed).await?;
        assert_eq!((r.high_watermark, r.last_stable_offset), (4, 2));
        assert_eq!(bases(&r), vec![0]);
        assert!(r.aborted.is_empty());
        // At the LSO: nothing yet, not out of range.
        let r = reader.read("t", 0, 2, 1 << 20, true, committed).await?;
        assert!(r.records.is_empty());
        assert_eq!(r.last_stable_offset, 2);
        let r = reader.read("t", 0, 3, 1 << 20, true, committed).await?;
        assert!(r.records.is_empty());
        // read_uncommitted sees everything, and the real LSO.
        let r = reader.read("t", 0, 0, 1 << 20, true, uncommitted).await?;
        assert_eq!(bases(&r), vec![0, 2, 3]);
        assert_eq!(r.last_stable_offset, 2);
        assert!(r.aborted.is_empty());

        // Abort: the marker lands at 4 and the LSO moves to the end.
        let mut applied = metadata.subscribe();
        applied.borrow_and_update();
        txn_command(
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
        let at = commit(
            &metadata,
            &storage,
            "o3",
            batch(1, 0x30, producer_id),
            producer(-1, -1),
            ChunkTxn::Marker {
                txn_id: "x".into(),
                commit: false,
            },
        )
        .await?;
        assert_eq!(at, 4);
        // The marker's commit wakes a waiting fetch like any commit.
        assert!(applied.has_changed()?);
        let r = reader.read("t", 0, 2, 1 << 20, true, committed).await?;
        assert_eq!((r.high_watermark, r.last_stable_offset), (5, 5));
        assert_eq!(bases(&r), vec![2, 3, 4]);
        assert_eq!(r.aborted, vec![txn(producer_id, 2, 4)]);
        let r = reader.read("t", 0, 0, 1 << 20, true, committed).await?;
        assert_eq!(bases(&r), vec![0, 2, 3, 4]);
        assert_eq!(r.aborted, vec![txn(producer_id, 2, 4)]);
        // A read that stops before the transaction does not list it.
        let first = r.records.len().min(stored_batches(&r.records)[0].len);
        let r = reader.read("t", 0, 0, first, true, committed).await?;
        assert_eq!(bases(&r), vec![0]);
        assert!(r.aborted.is_empty());
        // Nor does one that starts after its marker.
        commit(
            &metadata,
            &storage,
            "o4",
            batch(1, 0, -1),
            None,
            ChunkTxn::None,
        )
        .await?;
        let r = reader.read("t", 0, 5, 1 << 20, true, committed).await?;
        assert_eq!(bases(&r), vec![5]);
        assert!(r.aborted.is_empty());
        // read_uncommitted never lists aborted transactions.
        let r = reader.read("t", 0, 0, 1 << 20, true, uncommitted).await?;
        assert!(r.aborted.is_empty());
        metadata.shutdown().await?;
        Ok(())
    }
}

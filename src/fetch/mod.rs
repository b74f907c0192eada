//! The fetch path: index look-up in the local metadata replica, then the pieces of
//! objects that hold the offsets (a flush chunk, or a frame of a compacted segment found
//! through the segment's footer), each from the cache or a ranged read of the object,
//! with the assigned offsets written into each batch header.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::metadata::state::{IndexEntry, MetadataState, ObjectKind};
use crate::metadata::Metadata;
use crate::produce::batch::{
    batch_base_offset, batch_max_timestamp, record_timestamps, set_base_offset, stored_batches,
    StoredBatch,
};
use crate::storage::segment::{decode_tail, CompactedFooter, Footer, Frame};
use crate::storage::{BlockCache, ObjectStorage};

/// Index entries looked at per partition per fetch; each is at least one batch.
const MAX_ENTRIES_PER_READ: usize = 256;
/// Pieces loaded ahead of a reader that missed the cache.
const READ_AHEAD_PIECES: usize = 4;
/// The cache key position of a compacted segment's footer (no piece starts there).
const FOOTER_KEY: u64 = u64::MAX;

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

    /// One frame of a segment entry.
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
    /// objects; plus the high watermark and log start.
    fn plan(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: usize,
        max_entries: usize,
    ) -> Option<(Vec<PlannedEntry>, i64, i64)> {
        self.metadata.read(|s| {
            let p = s.partition(topic, partition)?;
            // Clone only the entries this read can use: enough bytes to fill max_bytes.
            let mut budget = 0u64;
            let entries = p
                .entries_from(offset, max_entries)
                .iter()
                .take_while(|e| {
                    let take = budget < max_bytes as u64;
                    budget += e.length;
                    take
                })
                .filter_map(|e| PlannedEntry::resolve(s, e))
                .collect();
            Some((entries, p.next_offset, p.log_start_offset))
        })
    }

    /// Whole record batches from `offset`, at most `max_bytes` of them, except that with
    /// `min_one` the first batch is returned even when it is larger (KIP-74: so that a
    /// consumer can't get stuck behind a batch larger than its limit). Without `min_one`,
    /// a first batch that does not fit means no records.
    pub async fn read(
        self: &Arc<Self>,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
    ) -> Result<PartitionData, FetchError> {
        let plan_bytes = if min_one { max_bytes.max(1) } else { max_bytes };
        let (entries, high_watermark, log_start_offset) = self
            .plan(topic, partition, offset, plan_bytes, MAX_ENTRIES_PER_READ)
            .ok_or(FetchError::UnknownTopicOrPartition)?;
        if offset < log_start_offset || offset > high_watermark {
            return Err(FetchError::OffsetOutOfRange);
        }
        if plan_bytes == 0 {
            return Ok(PartitionData {
                records: Bytes::new(),
                high_watermark,
                log_start_offset,
            });
        }
        let mut pieces = self.pieces(&entries, offset, plan_bytes).await?;
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
            if full || !out.is_empty() || covered >= high_watermark || round >= EMPTY_ROUNDS {
                break;
            }
            let Some((entries, _, _)) =
                self.plan(topic, partition, covered, plan_bytes, MAX_ENTRIES_PER_READ)
            else {
                break;
            };
            pieces = self.pieces(&entries, covered, plan_bytes).await?;
            if pieces.is_empty() {
                break;
            }
        }
        if missed {
            self.read_ahead(topic, partition, read_up_to);
        }
        Ok(PartitionData {
            records: out.freeze(),
            high_watermark,
            log_start_offset,
        })
    }

    /// The pieces of `entries` from `offset`, about `max_bytes` of them (at least one).
    async fn pieces(
        &self,
        entries: &[PlannedEntry],
        offset: i64,
        max_bytes: usize,
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
                ObjectKind::Segment | ObjectKind::Cleaned => {
                    let footer = self.footer(planned).await?;
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
    /// running maximum, then the segment footer's.
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
            ObjectKind::Segment | ObjectKind::Cleaned => {
                let footer = self.footer(&planned).await?;
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

    /// A compacted segment's footer: its sparse offset and timestamp index, read with
    /// one ranged GET of the object's tail and kept in the cache.
    pub async fn footer(&self, planned: &PlannedEntry) -> Result<CompactedFooter, FetchError> {
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
            Ok(Footer::Flush { .. }) => Err(FetchError::Corrupt(
                planned.object.clone(),
                "a flush footer where a compacted segment was expected".into(),
            )),
            Err(e) => Err(FetchError::Corrupt(planned.object.clone(), e.to_string())),
        }
    }

    /// Puts a piece into the cache's memory tier (write-through of data just written).
    pub fn keep(&self, object: &str, position: u64, data: Bytes) {
        self.cache.insert(object, position, data);
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
        let Some((entries, _, _)) =
            self.plan(topic, partition, after, usize::MAX, READ_AHEAD_PIECES)
        else {
            return;
        };
        let reader = self.clone();
        tokio::spawn(async move {
            let budget = READ_AHEAD_PIECES * crate::storage::segment::FRAME_BYTES;
            let Ok(pieces) = reader.pieces(&entries, after, budget).await else {
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

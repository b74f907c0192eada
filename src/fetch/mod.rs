//! The fetch path: index look-up in the local metadata replica, chunk from the cache or
//! a ranged read of the object, and the assigned offsets written into each batch header.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::metadata::state::IndexEntry;
use crate::metadata::Metadata;
use crate::produce::batch::{record_timestamps, set_base_offset, stored_batches};
use crate::storage::{BlockCache, ObjectStorage};

/// Index entries looked at per partition per fetch; each is at least one batch.
const MAX_ENTRIES_PER_READ: usize = 256;
/// Chunks loaded ahead of a reader that missed the cache.
const READ_AHEAD_CHUNKS: usize = 4;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FetchError {
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    #[error("offset out of range")]
    OffsetOutOfRange,
    #[error("object store read failed: {0}")]
    Storage(String),
}

#[derive(Debug, Clone, Default)]
pub struct PartitionData {
    pub records: Bytes,
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

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

    /// Record batches from `offset`, up to `max_bytes` (but always the first batch, so a
    /// consumer can't get stuck behind a batch larger than its limit).
    pub async fn read(
        self: &Arc<Self>,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: usize,
    ) -> Result<PartitionData, FetchError> {
        let (entries, high_watermark, log_start_offset) = self
            .metadata
            .read(|s| {
                let p = s.partition(topic, partition)?;
                // Clone only the entries this read can use: enough bytes to fill max_bytes.
                let mut budget = 0u64;
                let entries = p
                    .entries_from(offset, MAX_ENTRIES_PER_READ)
                    .iter()
                    .take_while(|e| {
                        let take = budget < max_bytes as u64;
                        budget += e.length;
                        take
                    })
                    .cloned()
                    .collect::<Vec<_>>();
                Some((entries, p.next_offset, p.log_start_offset))
            })
            .ok_or(FetchError::UnknownTopicOrPartition)?;
        if offset < log_start_offset || offset > high_watermark {
            return Err(FetchError::OffsetOutOfRange);
        }
        let missed = entries
            .first()
            .is_some_and(|e| !self.cache.contains(&e.object, e.position));
        let mut out = BytesMut::new();
        let mut read_up_to = offset;
        'entries: for entry in &entries {
            let chunk = self.chunk(entry).await?;
            let mut next = entry.base_offset;
            for batch in stored_batches(&chunk) {
                let end = next + i64::from(batch.offset_span);
                if end > offset {
                    if !out.is_empty() && out.len() + batch.len > max_bytes {
                        break 'entries;
                    }
                    let at = out.len();
                    out.extend_from_slice(&chunk[batch.start..batch.start + batch.len]);
                    set_base_offset(&mut out[at..], next);
                    read_up_to = end;
                }
                next = end;
            }
            if out.len() >= max_bytes {
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

    /// Kafka's ListOffsets by timestamp: the first offset whose record timestamp is at
    /// or after `timestamp`, with that timestamp. Exact for uncompressed batches; for a
    /// compressed batch it is the batch's first offset.
    pub async fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: i32,
        timestamp: i64,
    ) -> Result<Option<(i64, i64)>, FetchError> {
        let entries = self
            .metadata
            .read(|s| {
                let p = s.partition(topic, partition)?;
                Some(
                    p.index
                        .iter()
                        .filter(|e| {
                            e.max_timestamp >= timestamp && e.end_offset() > p.log_start_offset
                        })
                        .take(1)
                        .cloned()
                        .collect::<Vec<_>>(),
                )
            })
            .ok_or(FetchError::UnknownTopicOrPartition)?;
        let Some(entry) = entries.first() else {
            return Ok(None);
        };
        let chunk = self.chunk(entry).await?;
        let mut base = entry.base_offset;
        for batch in stored_batches(&chunk) {
            let bytes = &chunk[batch.start..batch.start + batch.len];
            match record_timestamps(bytes) {
                Some(records) => {
                    if let Some((delta, ts)) = records.into_iter().find(|(_, ts)| *ts >= timestamp)
                    {
                        return Ok(Some((ts, base + delta)));
                    }
                }
                None => {
                    let max = i64::from_be_bytes(bytes[35..43].try_into().unwrap_or_default());
                    if max >= timestamp {
                        return Ok(Some((max, base)));
                    }
                }
            }
            base += i64::from(batch.offset_span);
        }
        // The index said this chunk reaches the timestamp; fall back to its start.
        Ok(Some((entry.max_timestamp, entry.base_offset)))
    }

    async fn chunk(&self, entry: &IndexEntry) -> Result<Bytes, FetchError> {
        let storage = self.storage.clone();
        let object = entry.object.clone();
        let range = entry.position..entry.position + entry.length;
        self.cache
            .get_or_load(&entry.object, entry.position, async move {
                storage.get_range(&object, range).await
            })
            .await
            .map_err(FetchError::Storage)
    }

    /// Sequential read-ahead for catch-up readers: start loading the chunks that follow
    /// what a fetch just read, so the next fetch finds them in the cache.
    fn read_ahead(self: &Arc<Self>, topic: &str, partition: i32, after: i64) {
        let entries = self.metadata.read(|s| {
            s.partition(topic, partition)
                .map(|p| p.entries_from(after, READ_AHEAD_CHUNKS).to_vec())
                .unwrap_or_default()
        });
        for entry in entries {
            if self.cache.contains(&entry.object, entry.position) {
                continue;
            }
            let reader = self.clone();
            tokio::spawn(async move {
                let _ = reader.chunk(&entry).await;
            });
        }
    }
}

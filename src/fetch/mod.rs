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
        &self,
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
        let mut out = BytesMut::new();
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
                }
                next = end;
            }
            if out.len() >= max_bytes {
                break;
            }
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
        if let Some(hit) = self.cache.get(&entry.object, entry.position) {
            return Ok(hit);
        }
        let data = self
            .storage
            .get_range(&entry.object, entry.position..entry.position + entry.length)
            .await
            .map_err(|e| FetchError::Storage(e.to_string()))?;
        self.cache
            .insert(&entry.object, entry.position, data.clone());
        Ok(data)
    }
}

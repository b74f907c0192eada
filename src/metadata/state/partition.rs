//! One partition in the metadata state: its offsets, its index of where each offset range
//! lives, and the idempotent producers writing to it (their rules are in `producers.rs`).
//! Pure, like the rest of the state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::objects::ObjectId;
use super::producers::{check_sequence, ProducerState};
use super::transactions::PartitionTxns;
use super::{SegmentEntry, StateError};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Partition {
    /// The high watermark: the offset the next committed batch will get.
    pub next_offset: i64,
    pub log_start_offset: i64,
    /// Sorted by `base_offset`, contiguous.
    pub index: Vec<IndexEntry>,
    pub size_bytes: u64,
    /// Idempotent producers writing here: their epoch and last few batches.
    pub producers: BTreeMap<i64, ProducerState>,
    /// A manual replica assignment's first replica: the preferred broker while alive.
    pub preferred: Option<u64>,
    /// Ongoing and aborted transactions here (format 6): the last stable offset and
    /// Fetch's `aborted_transactions`.
    #[serde(deserialize_with = "crate::metadata::codec::since_format_6")]
    pub txns: PartitionTxns,
}

/// Where a run of offsets lives: `length` bytes at `position` in an object. The unit is
/// a flush chunk (the tail) or a whole compacted segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub base_offset: i64,
    pub offset_count: u32,
    pub object: ObjectId,
    pub position: u64,
    pub length: u64,
    /// The largest record timestamp up to and including this entry (a running maximum,
    /// like Kafka's time index), so that a timestamp look-up is a binary search.
    pub max_timestamp: i64,
}

impl IndexEntry {
    pub fn end_offset(&self) -> i64 {
        self.base_offset + i64::from(self.offset_count)
    }
}

impl Partition {
    /// Gives a chunk its offsets (after the idempotence checks) and indexes it.
    pub(super) fn append(
        &mut self,
        object: ObjectId,
        entry: &SegmentEntry,
        now_ms: i64,
    ) -> Result<i64, StateError> {
        let base_offset = self.next_offset;
        if let Some(producer) = &entry.producer {
            check_sequence(&mut self.producers, producer, base_offset, now_ms)?;
        }
        let running_max = self.index.last().map_or(entry.max_timestamp, |e| {
            e.max_timestamp.max(entry.max_timestamp)
        });
        self.next_offset += i64::from(entry.offset_count);
        self.size_bytes += entry.length;
        self.index.push(IndexEntry {
            base_offset,
            offset_count: entry.offset_count,
            object,
            position: entry.position,
            length: entry.length,
            max_timestamp: running_max,
        });
        Ok(base_offset)
    }

    /// The last stable offset: read_committed consumers read below it.
    pub fn last_stable_offset(&self) -> i64 {
        self.txns.last_stable_offset(self.next_offset)
    }

    /// Moves the log start forward; returns the entries now wholly below it.
    pub(super) fn advance_log_start(&mut self, target: i64) -> Vec<IndexEntry> {
        self.log_start_offset = target;
        self.txns.truncate_before(target);
        let dropped = self.index.partition_point(|e| e.end_offset() <= target);
        let released: Vec<IndexEntry> = self.index.drain(..dropped).collect();
        for e in &released {
            self.size_bytes = self.size_bytes.saturating_sub(e.length);
        }
        released
    }

    /// The index positions of the run `base..end` if it is exactly the entries `inputs`
    /// (same objects and positions, in order); None if anything changed.
    pub(super) fn run_matching(
        &self,
        base: i64,
        end: i64,
        inputs: &[(ObjectId, u64)],
    ) -> Option<std::ops::Range<usize>> {
        if inputs.is_empty() || base >= end {
            return None;
        }
        let start = self.index.partition_point(|e| e.base_offset < base);
        let run = self.index.get(start..start.checked_add(inputs.len())?)?;
        let same = run.first()?.base_offset == base
            && run.last()?.end_offset() == end
            && run
                .iter()
                .zip(inputs)
                .all(|(e, (object, position))| e.object == *object && e.position == *position);
        same.then_some(start..start + inputs.len())
    }

    /// Replaces the entries in `range` with one entry; returns the replaced entries.
    pub(super) fn replace_run(
        &mut self,
        range: std::ops::Range<usize>,
        object: ObjectId,
        position: u64,
        length: u64,
    ) -> Vec<IndexEntry> {
        let (Some(first), Some(last)) = (
            self.index.get(range.start).copied(),
            self.index.get(range.end.saturating_sub(1)).copied(),
        ) else {
            return Vec::new();
        };
        let merged = IndexEntry {
            base_offset: first.base_offset,
            offset_count: u32::try_from(last.end_offset() - first.base_offset).unwrap_or(u32::MAX),
            object,
            position,
            length,
            // The running maximum at the end of the run is unchanged by the swap.
            max_timestamp: last.max_timestamp,
        };
        let replaced: Vec<IndexEntry> = self.index.splice(range, std::iter::once(merged)).collect();
        let old_bytes: u64 = replaced.iter().map(|e| e.length).sum();
        self.size_bytes = self.size_bytes.saturating_sub(old_bytes) + length;
        replaced
    }

    /// The index entries that hold `offset` and what follows it, up to `max` entries.
    pub fn entries_from(&self, offset: i64, max: usize) -> &[IndexEntry] {
        let start = self.index.partition_point(|e| e.end_offset() <= offset);
        let end = (start + max).min(self.index.len());
        &self.index[start..end]
    }

    /// The first entry (at or after the log start) holding a record timestamp at or
    /// after `timestamp`: a binary search over the running maximum.
    pub fn entry_for_timestamp(&self, timestamp: i64) -> Option<&IndexEntry> {
        let first = self
            .index
            .partition_point(|e| e.end_offset() <= self.log_start_offset);
        let rest = self.index.get(first..)?;
        rest.get(rest.partition_point(|e| e.max_timestamp < timestamp))
    }

    /// The first offset whose chunk holds a timestamp at or after `timestamp`, or None.
    /// Entry granularity: the fetch path refines it inside the entry.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Option<i64> {
        self.entry_for_timestamp(timestamp)
            .map(|e| e.base_offset.max(self.log_start_offset))
    }

    /// The largest timestamp, and the first entry that reaches it.
    pub fn max_timestamp(&self) -> Option<(i64, i64)> {
        let max = self.index.last()?.max_timestamp;
        self.entry_for_timestamp(max)
            .map(|e| (max, e.base_offset.max(self.log_start_offset)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-memory cost of the index: one entry per flush chunk in the tail and per
    /// compacted segment (the soak's target is at most 100 bytes an entry).
    #[test]
    fn an_index_entry_is_small() {
        assert!(std::mem::size_of::<IndexEntry>() <= 48);
    }
}

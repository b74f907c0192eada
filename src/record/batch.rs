//! Record batch (magic 2) headers: the field layout, stored batches read back, offset
//! patching on fetch. Produce validation (`produce::validate`) reads the same fields.
//!
//! Only the 61-byte header is parsed on the hot path; the records stay compressed and
//! untouched. The CRC-32C covers everything from `attributes` to the end of the batch.

use serde::{Deserialize, Serialize};

/// The idempotence fields of a request's batches (all from one producer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerBatch {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_sequence: i32,
    pub last_sequence: i32,
}

/// Offsets of header fields inside a record batch.
pub(crate) const BASE_OFFSET: usize = 0;
pub(crate) const BATCH_LENGTH: usize = 8;
pub(crate) const MAGIC: usize = 16;
pub(crate) const CRC: usize = 17;
pub(crate) const ATTRIBUTES: usize = 21;
pub(crate) const LAST_OFFSET_DELTA: usize = 23;
pub(crate) const BASE_TIMESTAMP: usize = 27;
pub(crate) const MAX_TIMESTAMP: usize = 35;
pub(crate) const PRODUCER_ID: usize = 43;
pub(crate) const PRODUCER_EPOCH: usize = 51;
pub(crate) const BASE_SEQUENCE: usize = 53;
/// A batch written inside a transaction.
pub(crate) const TRANSACTIONAL: i16 = 0x10;
/// A control batch (a transaction marker): written by coordinators, never by clients.
pub(crate) const CONTROL: i16 = 0x20;
pub(crate) const RECORDS_COUNT: usize = 57;
pub const HEADER_LEN: usize = 61;
/// baseOffset and batchLength are not counted by batchLength itself.
pub(crate) const LOG_OVERHEAD: usize = 12;

pub(crate) fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

pub(crate) fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// A batch as found in a stored chunk: where it is and the offsets it spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredBatch {
    pub start: usize,
    pub len: usize,
    pub offset_span: u32,
}

/// Walks the batches of a stored chunk (which were validated on produce). Stops at the
/// first malformed header rather than trusting it.
pub fn stored_batches(chunk: &[u8]) -> Vec<StoredBatch> {
    let mut out = Vec::new();
    let mut at = 0;
    while chunk.len() - at >= HEADER_LEN {
        let rest = &chunk[at..];
        let Some(total) = usize::try_from(be_i32(rest, BATCH_LENGTH))
            .ok()
            .and_then(|l| l.checked_add(LOG_OVERHEAD))
            .filter(|t| *t >= HEADER_LEN && *t <= rest.len())
        else {
            break;
        };
        let span = be_i32(rest, LAST_OFFSET_DELTA).max(0) as u32 + 1;
        out.push(StoredBatch {
            start: at,
            len: total,
            offset_span: span,
        });
        at += total;
    }
    out
}

/// The records the batches of a stored chunk hold, from their headers (compaction can
/// leave fewer records than a batch's offset span).
pub fn record_count(chunk: &[u8]) -> u64 {
    stored_batches(chunk)
        .iter()
        .map(|b| u64::try_from(be_i32(&chunk[b.start..], RECORDS_COUNT)).unwrap_or(0))
        .sum()
}

/// Each record's (offset delta, timestamp) in an uncompressed batch; None when the batch
/// is compressed (records unreadable without inflating) or malformed.
pub fn record_timestamps(batch: &[u8]) -> Option<Vec<(i64, i64)>> {
    let attributes = be_i16(batch, ATTRIBUTES);
    if attributes & 0x07 != 0 {
        return None;
    }
    let max_timestamp = be_i64(batch, MAX_TIMESTAMP);
    // LogAppendTime: every record carries the batch's max timestamp.
    let log_append_time = attributes & 0x08 != 0;
    let base_timestamp = be_i64(batch, BASE_TIMESTAMP);
    let count = usize::try_from(be_i32(batch, RECORDS_COUNT)).ok()?;
    let mut out = Vec::with_capacity(count.min(4096));
    let mut at = HEADER_LEN;
    for _ in 0..count {
        let len = usize::try_from(varint(batch, &mut at)?).ok()?;
        let end = at.checked_add(len)?;
        if end > batch.len() {
            return None;
        }
        let mut p = at + 1; // attributes
        let timestamp_delta = varint(batch, &mut p)?;
        let offset_delta = varint(batch, &mut p)?;
        let timestamp = if log_append_time {
            max_timestamp
        } else {
            base_timestamp.wrapping_add(timestamp_delta)
        };
        out.push((offset_delta, timestamp));
        at = end;
    }
    Some(out)
}

/// A zigzag varint (Kafka's varint and varlong), advancing `at`.
pub(crate) fn varint(buf: &[u8], at: &mut usize) -> Option<i64> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    None
}

/// A stored batch's max timestamp (from its header).
pub fn batch_max_timestamp(batch: &[u8]) -> i64 {
    if batch.len() < HEADER_LEN {
        return -1;
    }
    be_i64(batch, MAX_TIMESTAMP)
}

/// The base offset in a batch header (a stored segment's batches carry their own).
pub fn batch_base_offset(batch: &[u8]) -> i64 {
    if batch.len() < HEADER_LEN {
        return -1;
    }
    be_i64(batch, BASE_OFFSET)
}

/// Writes the assigned base offset into a batch header; the field lies outside the CRC.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::make_batch;

    #[test]
    fn record_timestamps_are_read_from_uncompressed_batches() {
        let b = make_batch(3, 1000);
        let ts = record_timestamps(&b).unwrap();
        assert_eq!(ts, vec![(0, 1000), (1, 1000), (2, 1000)]);
        let mut compressed = b.to_vec();
        compressed[ATTRIBUTES + 1] = 1;
        assert_eq!(record_timestamps(&compressed), None);
    }
}

//! Record batch (magic 2) headers: validation on produce, offset patching on fetch.
//!
//! Only the 61-byte header is parsed on the hot path; the records stay compressed and
//! untouched. The CRC-32C covers everything from `attributes` to the end of the batch.

use bytes::Bytes;

use crate::metadata::state::{ChunkTxn, ProducerBatch};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("record batch is truncated")]
    Truncated,
    #[error("record batch has magic {0}; only magic 2 is supported")]
    UnsupportedMagic(i8),
    #[error("record batch CRC mismatch")]
    CrcMismatch,
    #[error("record batch header is inconsistent")]
    Invalid,
    #[error("no record batches")]
    Empty,
    #[error("control batches are written by the transaction coordinator, not by clients")]
    Control,
    #[error("a request's batches must all be transactional or all not, with a producer id")]
    MixedTransactional,
}

/// The batches of one partition in one produce request, checked and split.
#[derive(Debug, Clone)]
pub struct ValidatedBatches {
    pub batches: Vec<Bytes>,
    /// Offsets these batches span once committed.
    pub offset_count: u32,
    pub max_timestamp: i64,
    pub bytes: usize,
    /// The idempotent producer that wrote them, if any.
    pub producer: Option<ProducerBatch>,
    /// Their part in a transaction: transactional records, or a coordinator's marker.
    pub txn: ChunkTxn,
}

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

/// Splits `records` into batches and checks each one; any error rejects them all, as
/// Kafka rejects the whole partition's data.
pub fn validate(records: &Bytes) -> Result<ValidatedBatches, BatchError> {
    let mut batches = Vec::new();
    let mut offset_count: u32 = 0;
    let mut max_timestamp = i64::MIN;
    let mut producer: Option<ProducerBatch> = None;
    let mut transactional = None;
    let mut at = 0;
    while at < records.len() {
        let rest = &records[at..];
        if rest.len() < HEADER_LEN {
            return Err(BatchError::Truncated);
        }
        let batch_length = be_i32(rest, BATCH_LENGTH);
        let total = usize::try_from(batch_length)
            .ok()
            .and_then(|l| l.checked_add(LOG_OVERHEAD))
            .ok_or(BatchError::Invalid)?;
        if total < HEADER_LEN {
            return Err(BatchError::Invalid);
        }
        if rest.len() < total {
            return Err(BatchError::Truncated);
        }
        let magic = rest[MAGIC] as i8;
        if magic != 2 {
            return Err(BatchError::UnsupportedMagic(magic));
        }
        let batch = &rest[..total];
        let crc = u32::from_be_bytes([batch[CRC], batch[CRC + 1], batch[CRC + 2], batch[CRC + 3]]);
        if crc32c::crc32c(&batch[ATTRIBUTES..]) != crc {
            return Err(BatchError::CrcMismatch);
        }
        let last_offset_delta = be_i32(batch, LAST_OFFSET_DELTA);
        let records_count = be_i32(batch, RECORDS_COUNT);
        // Offsets are reassigned densely, so the batch must describe a dense range.
        if records_count <= 0 || last_offset_delta != records_count - 1 {
            return Err(BatchError::Invalid);
        }
        let attributes = be_i16(batch, ATTRIBUTES);
        if attributes & CONTROL != 0 {
            return Err(BatchError::Control);
        }
        let this = attributes & TRANSACTIONAL != 0;
        if *transactional.get_or_insert(this) != this {
            return Err(BatchError::MixedTransactional);
        }
        let producer_id = be_i64(batch, PRODUCER_ID);
        let base_sequence = be_i32(batch, BASE_SEQUENCE);
        if producer_id >= 0 && base_sequence >= 0 {
            let last_sequence = base_sequence.wrapping_add(last_offset_delta);
            let epoch = be_i16(batch, PRODUCER_EPOCH);
            producer = match producer {
                None if batches.is_empty() => Some(ProducerBatch {
                    producer_id,
                    epoch,
                    first_sequence: base_sequence,
                    last_sequence,
                }),
                // Later batches of one request must continue the same producer's sequence.
                Some(p)
                    if p.producer_id == producer_id
                        && p.epoch == epoch
                        && p.last_sequence.wrapping_add(1) == base_sequence =>
                {
                    Some(ProducerBatch { last_sequence, ..p })
                }
                _ => return Err(BatchError::Invalid),
            };
        } else if producer.is_some() {
            return Err(BatchError::Invalid);
        }
        offset_count = offset_count
            .checked_add(records_count as u32)
            .ok_or(BatchError::Invalid)?;
        max_timestamp = max_timestamp.max(be_i64(batch, MAX_TIMESTAMP));
        batches.push(records.slice(at..at + total));
        at += total;
    }
    if batches.is_empty() {
        return Err(BatchError::Empty);
    }
    let transactional = transactional == Some(true);
    if transactional && producer.is_none() {
        return Err(BatchError::MixedTransactional);
    }
    Ok(ValidatedBatches {
        batches,
        offset_count,
        max_timestamp,
        bytes: records.len(),
        producer,
        txn: if transactional {
            ChunkTxn::Data
        } else {
            ChunkTxn::None
        },
    })
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
pub mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    /// A minimal valid batch of `count` empty records, for tests.
    pub fn make_batch(count: i32, timestamp: i64) -> Bytes {
        let mut body = BytesMut::new();
        body.put_i16(0); // attributes
        body.put_i32(count - 1); // last offset delta
        body.put_i64(timestamp); // base timestamp
        body.put_i64(timestamp); // max timestamp
        body.put_i64(-1); // producer id
        body.put_i16(-1); // producer epoch
        body.put_i32(-1); // base sequence
        body.put_i32(count);
        for i in 0..count {
            // length, attributes, timestamp delta, offset delta, key -1, value len 0, headers 0
            let rec = [0u8, 0, (i as u8) << 1, 1, 0, 0];
            body.put_u8((rec.len() as u8) << 1);
            body.put_slice(&rec);
        }
        let mut b = BytesMut::new();
        b.put_i64(0);
        b.put_i32((body.len() + 4 + 1 + 4) as i32);
        b.put_i32(0); // partition leader epoch
        b.put_i8(2);
        b.put_u32(crc32c::crc32c(&body));
        b.put_slice(&body);
        b.freeze()
    }

    #[test]
    fn valid_batches_are_split_and_counted() {
        let mut data = BytesMut::new();
        data.put_slice(&make_batch(3, 10));
        data.put_slice(&make_batch(2, 20));
        let v = validate(&data.freeze()).unwrap();
        assert_eq!(v.batches.len(), 2);
        assert_eq!(v.offset_count, 5);
        assert_eq!(v.max_timestamp, 20);
        let joined: Vec<u8> = v.batches.concat();
        let stored = stored_batches(&joined);
        assert_eq!(
            stored.iter().map(|s| s.offset_span).collect::<Vec<_>>(),
            vec![3, 2]
        );
    }

    #[test]
    fn bad_batches_are_rejected() {
        let good = make_batch(1, 0);
        let mut bad_crc = good.to_vec();
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 0xff;
        assert_eq!(
            validate(&Bytes::from(bad_crc)).unwrap_err(),
            BatchError::CrcMismatch
        );
        let mut magic1 = good.to_vec();
        magic1[MAGIC] = 1;
        assert_eq!(
            validate(&Bytes::from(magic1)).unwrap_err(),
            BatchError::UnsupportedMagic(1)
        );
        assert_eq!(
            validate(&good.slice(..good.len() - 1)).unwrap_err(),
            BatchError::Truncated
        );
        assert_eq!(validate(&Bytes::new()).unwrap_err(), BatchError::Empty);
        let mut huge = good.to_vec();
        huge[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(
            validate(&Bytes::from(huge)).unwrap_err(),
            BatchError::Truncated
        );
    }

    #[test]
    fn record_timestamps_are_read_from_uncompressed_batches() {
        let b = make_batch(3, 1000);
        let ts = record_timestamps(&b).unwrap();
        assert_eq!(ts, vec![(0, 1000), (1, 1000), (2, 1000)]);
        let mut compressed = b.to_vec();
        compressed[ATTRIBUTES + 1] = 1;
        assert_eq!(record_timestamps(&compressed), None);
    }

    #[test]
    fn patching_the_base_offset_keeps_the_crc_valid() {
        let mut b = make_batch(2, 0).to_vec();
        set_base_offset(&mut b, 1234);
        let v = validate(&Bytes::from(b)).unwrap();
        assert_eq!(be_i64(&v.batches[0], 0), 1234);
    }
}

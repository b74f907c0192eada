//! Produce-side checks of record batches (magic 2): sizes, CRC-32C, dense offsets, one
//! producer's continuous sequence, all transactional or none, no control batches. Only
//! the 61-byte header of each batch is read; the records stay compressed and untouched.

use bytes::Bytes;

use crate::metadata::state::ChunkTxn;
use crate::record::batch::{
    be_i16, be_i32, be_i64, ProducerBatch, ATTRIBUTES, BASE_SEQUENCE, BATCH_LENGTH, CONTROL, CRC,
    HEADER_LEN, LAST_OFFSET_DELTA, LOG_OVERHEAD, MAGIC, MAX_TIMESTAMP, PRODUCER_EPOCH, PRODUCER_ID,
    RECORDS_COUNT, TRANSACTIONAL,
};

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

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};

    use super::*;
    use crate::record::batch::{be_i64, set_base_offset, stored_batches, BATCH_LENGTH, MAGIC};
    use crate::testing::make_batch;

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
    fn patching_the_base_offset_keeps_the_crc_valid() {
        let mut b = make_batch(2, 0).to_vec();
        set_base_offset(&mut b, 1234);
        let v = validate(&Bytes::from(b)).unwrap();
        assert_eq!(be_i64(&v.batches[0], 0), 1234);
    }
}

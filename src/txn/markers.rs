//! Transaction markers: the control batches that end a transaction on a partition.
//!
//! A marker is a one-record batch with the control and transactional attribute bits, the
//! transaction's producer id and epoch, and the key `[version 0][type]` (0 abort, 1
//! commit) with the value `[version 0][coordinator epoch]`, exactly as Kafka writes it,
//! so every client recognises and skips it. Its offset comes from the state machine like
//! any chunk's.

use bytes::{BufMut, Bytes, BytesMut};

use crate::metadata::state::{ChunkTxn, ProducerBatch};
use crate::produce::ValidatedBatches;
use crate::record::batch::{CONTROL, TRANSACTIONAL};

/// Kafka's control record types.
const ABORT: i16 = 0;
const COMMIT: i16 = 1;

/// The marker batch (base offset 0: the fetch path writes the real one).
pub fn control_batch(
    producer_id: i64,
    epoch: i16,
    commit: bool,
    coordinator_epoch: i32,
    timestamp: i64,
) -> Bytes {
    let mut record = BytesMut::with_capacity(20);
    record.put_i8(0); // attributes
    record.put_u8(0); // timestamp delta (zigzag varint 0)
    record.put_u8(0); // offset delta
    record.put_u8(8); // key length 4, zigzag
    record.put_i16(0);
    record.put_i16(if commit { COMMIT } else { ABORT });
    record.put_u8(12); // value length 6, zigzag
    record.put_i16(0);
    record.put_i32(coordinator_epoch);
    record.put_u8(0); // no headers
    let mut batch = BytesMut::with_capacity(61 + 1 + record.len());
    batch.put_i64(0); // base offset
    batch.put_i32(0); // batch length, below
    batch.put_i32(0); // partition leader epoch
    batch.put_i8(2); // magic
    batch.put_u32(0); // crc, below
    batch.put_i16(CONTROL | TRANSACTIONAL);
    batch.put_i32(0); // last offset delta
    batch.put_i64(timestamp);
    batch.put_i64(timestamp);
    batch.put_i64(producer_id);
    batch.put_i16(epoch);
    batch.put_i32(-1); // base sequence
    batch.put_i32(1); // records
                      // The record's length as a zigzag varint: it is 16 bytes, one varint byte.
    batch.put_u8((record.len() as u8) << 1);
    batch.put_slice(&record);
    let length = (batch.len() - 12) as i32;
    batch[8..12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    batch.freeze()
}

/// The marker as the write buffer takes it: its own chunk, tagged with its transaction.
pub fn marker_batches(
    txn_id: &str,
    producer_id: i64,
    epoch: i16,
    commit: bool,
    coordinator_epoch: i32,
    timestamp: i64,
) -> ValidatedBatches {
    let batch = control_batch(producer_id, epoch, commit, coordinator_epoch, timestamp);
    ValidatedBatches {
        bytes: batch.len(),
        batches: vec![batch],
        offset_count: 1,
        max_timestamp: timestamp,
        producer: Some(ProducerBatch {
            producer_id,
            epoch,
            first_sequence: -1,
            last_sequence: -1,
        }),
        txn: ChunkTxn::Marker {
            txn_id: txn_id.to_owned(),
            commit,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::batch::{be_i16, be_i32, be_i64, ATTRIBUTES, CRC};

    #[test]
    fn a_marker_is_a_valid_control_batch() {
        let b = control_batch(7, 3, true, 5, 1_000);
        assert_eq!(be_i32(&b, 8) as usize, b.len() - 12);
        let crc = u32::from_be_bytes([b[CRC], b[CRC + 1], b[CRC + 2], b[CRC + 3]]);
        assert_eq!(crc32c::crc32c(&b[ATTRIBUTES..]), crc);
        assert_eq!(be_i16(&b, ATTRIBUTES), 0x30);
        assert_eq!((be_i64(&b, 43), be_i16(&b, 51)), (7, 3));
        // One record: length 16, then attributes, deltas, key (version, type COMMIT).
        assert_eq!(b[61], 32);
        assert_eq!(&b[66..70], &[0, 0, 0, 1]);
        assert_eq!(b.len(), 61 + 1 + 16);
        let abort = control_batch(7, 3, false, 5, 1_000);
        assert_eq!(&abort[66..70], &[0, 0, 0, 0]);
    }
}

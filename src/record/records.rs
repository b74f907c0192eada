//! The records inside a batch: read for their keys and values, and a batch rewritten
//! with some of its records left out. Only compacted topics need this (the keyless check
//! at produce and the log cleaner); everything else moves batches without opening them.
//!
//! A rewritten batch keeps what Kafka's cleaner keeps: its base offset, its last offset
//! delta (so that a producer's last sequence survives and a consumer skips the gap), its
//! producer id, epoch and base sequence, its timestamps, and its codec. Kept records are
//! copied byte for byte unless the batch gets a delete horizon (KIP-534), which becomes
//! the base timestamp and so rebases each record's timestamp delta.

use super::compression::{Codec, CodecError};

use super::batch::{
    be_i16, be_i32, be_i64, ATTRIBUTES, BASE_TIMESTAMP, BATCH_LENGTH, CONTROL, CRC, HEADER_LEN,
    LAST_OFFSET_DELTA, LOG_OVERHEAD, RECORDS_COUNT,
};

/// KIP-534: the base timestamp is the time after which this batch's tombstones go.
pub const DELETE_HORIZON: i16 = 0x40;
/// The most a batch's records may inflate to when opened.
pub const MAX_INFLATED_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordsError {
    #[error("batch is shorter than its header says")]
    Truncated,
    #[error("a record is malformed")]
    BadRecord,
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// One record as the cleaner and the keyless check see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub offset_delta: i32,
    /// Added to the batch's base timestamp: the record's CreateTime.
    pub timestamp_delta: i64,
    pub key: Option<&'a [u8]>,
    /// A null value: a tombstone.
    pub tombstone: bool,
}

/// A batch's header fields the cleaner decides with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    pub base_offset: i64,
    pub last_offset_delta: i32,
    pub control: bool,
    /// KIP-534's delete horizon, if this batch was cleaned with tombstones before.
    pub delete_horizon: Option<i64>,
}

/// The header of a whole batch (as `stored_batches` or `validate` delimit it).
pub fn batch_info(batch: &[u8]) -> Result<BatchInfo, RecordsError> {
    if batch.len() < HEADER_LEN {
        return Err(RecordsError::Truncated);
    }
    let attributes = be_i16(batch, ATTRIBUTES);
    Ok(BatchInfo {
        base_offset: be_i64(batch, 0),
        last_offset_delta: be_i32(batch, LAST_OFFSET_DELTA),
        control: attributes & CONTROL != 0,
        delete_horizon: (attributes & DELETE_HORIZON != 0).then(|| be_i64(batch, BASE_TIMESTAMP)),
    })
}

/// A batch's records, inflated: the bytes after the header, decompressed.
pub fn inflate(batch: &[u8]) -> Result<(Codec, Vec<u8>), RecordsError> {
    if batch.len() < HEADER_LEN {
        return Err(RecordsError::Truncated);
    }
    let data = &batch[HEADER_LEN..];
    let codec = Codec::from_attributes((be_i16(batch, ATTRIBUTES) & 0x07) as u8, data)?;
    Ok((codec, codec.decompress(data, MAX_INFLATED_BYTES)?))
}

/// One record found in inflated record bytes: its view and where it lies.
struct Located<'a> {
    view: RecordView<'a>,
    /// The whole record, length prefix included.
    whole: std::ops::Range<usize>,
    /// Where the timestamp delta starts and ends (after the attributes byte).
    timestamp_delta: std::ops::Range<usize>,
}

/// Walks `count` records of inflated record bytes.
fn locate(records: &[u8], count: usize) -> Result<Vec<Located<'_>>, RecordsError> {
    let mut out = Vec::with_capacity(count.min(1 << 16));
    let mut at = 0;
    for _ in 0..count {
        let start = at;
        let len =
            usize::try_from(varint(records, &mut at)?).map_err(|_| RecordsError::BadRecord)?;
        let end = at.checked_add(len).filter(|e| *e <= records.len());
        let end = end.ok_or(RecordsError::BadRecord)?;
        let body = &records[..end];
        let mut p = at + 1; // attributes
        let ts_start = p;
        let timestamp_delta = varint(body, &mut p)?;
        let ts_end = p;
        let offset_delta =
            i32::try_from(varint(body, &mut p)?).map_err(|_| RecordsError::BadRecord)?;
        let key = bytes_field(body, &mut p)?;
        let value = bytes_field(body, &mut p)?;
        out.push(Located {
            view: RecordView {
                offset_delta,
                timestamp_delta,
                key,
                tombstone: value.is_none(),
            },
            whole: start..end,
            timestamp_delta: ts_start..ts_end,
        });
        at = end;
    }
    Ok(out)
}

/// A nullable bytes field (varint length, -1 for null).
fn bytes_field<'a>(buf: &'a [u8], at: &mut usize) -> Result<Option<&'a [u8]>, RecordsError> {
    let len = varint(buf, at)?;
    if len < 0 {
        return Ok(None);
    }
    let len = usize::try_from(len).map_err(|_| RecordsError::BadRecord)?;
    let end = at.checked_add(len).filter(|e| *e <= buf.len());
    let end = end.ok_or(RecordsError::BadRecord)?;
    let field = &buf[*at..end];
    *at = end;
    Ok(Some(field))
}

fn varint(buf: &[u8], at: &mut usize) -> Result<i64, RecordsError> {
    super::batch::varint(buf, at).ok_or(RecordsError::BadRecord)
}

pub(crate) fn put_varint(out: &mut Vec<u8>, value: i64) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn record_count(batch: &[u8]) -> usize {
    usize::try_from(be_i32(batch, RECORDS_COUNT)).unwrap_or(0)
}

/// Calls `f` for each record of a batch (inflating it if compressed).
pub fn for_each_record(
    batch: &[u8],
    mut f: impl FnMut(RecordView<'_>),
) -> Result<(), RecordsError> {
    let (_, records) = inflate(batch)?;
    for r in locate(&records, record_count(batch))? {
        f(r.view);
    }
    Ok(())
}

/// What became of a batch in a rewrite.
#[derive(Debug, PartialEq, Eq)]
pub enum Rewritten {
    /// Every record kept and nothing to change: use the batch as it is.
    Unchanged,
    /// No record kept: the batch goes.
    Empty,
    /// The batch with only the kept records.
    New(Vec<u8>),
}

/// A rewrite's result, and the delete horizon of the tombstones it kept (None if it
/// kept none): when a later pass could remove them.
#[derive(Debug, PartialEq, Eq)]
pub struct Rewrite {
    pub batch: Rewritten,
    pub tombstones_until: Option<i64>,
}

/// The batch with only the records `keep` says yes to. A batch that keeps a tombstone
/// and has no delete horizon yet is stamped with `horizon` (KIP-534: its tombstones stay
/// readable until then, however often it is cleaned again).
pub fn rewrite(
    batch: &[u8],
    keep: impl FnMut(&RecordView<'_>) -> bool,
    horizon: i64,
) -> Result<Rewrite, RecordsError> {
    rewrite_stamped(batch, keep, horizon, false)
}

/// The batch, all records kept, stamped with delete horizon `horizon` (a transaction
/// marker that may go once the horizon passes, as KIP-534 stamps it).
pub fn stamp_horizon(batch: &[u8], horizon: i64) -> Result<Vec<u8>, RecordsError> {
    match rewrite_stamped(batch, |_| true, horizon, true)?.batch {
        Rewritten::New(b) => Ok(b),
        Rewritten::Unchanged | Rewritten::Empty => Ok(batch.to_vec()),
    }
}

fn rewrite_stamped(
    batch: &[u8],
    mut keep: impl FnMut(&RecordView<'_>) -> bool,
    horizon: i64,
    force_stamp: bool,
) -> Result<Rewrite, RecordsError> {
    let info = batch_info(batch)?;
    let (codec, records) = inflate(batch)?;
    let located = locate(&records, record_count(batch))?;
    let kept: Vec<&Located<'_>> = located.iter().filter(|r| keep(&r.view)).collect();
    let has_tombstone = kept.iter().any(|r| r.view.tombstone);
    let stamp =
        Some(horizon).filter(|_| (has_tombstone || force_stamp) && info.delete_horizon.is_none());
    let tombstones_until = has_tombstone.then(|| info.delete_horizon.unwrap_or(horizon));
    let done = |batch| {
        Ok(Rewrite {
            batch,
            tombstones_until,
        })
    };
    if kept.is_empty() {
        return done(Rewritten::Empty);
    }
    if kept.len() == located.len() && stamp.is_none() {
        return done(Rewritten::Unchanged);
    }
    let old_base = be_i64(batch, BASE_TIMESTAMP);
    let mut body = Vec::with_capacity(records.len());
    for r in &kept {
        match stamp {
            None => body.extend_from_slice(&records[r.whole.clone()]),
            Some(new_base) => {
                let mut p = r.timestamp_delta.start;
                let delta = varint(&records, &mut p)?;
                let timestamp = old_base.wrapping_add(delta);
                let mut inner = vec![records[r.timestamp_delta.start - 1]]; // attributes
                put_varint(&mut inner, timestamp.wrapping_sub(new_base));
                inner.extend_from_slice(&records[r.timestamp_delta.end..r.whole.end]);
                put_varint(&mut body, inner.len() as i64);
                body.extend_from_slice(&inner);
            }
        }
    }
    let data = codec.compress(&body)?;
    let mut out = Vec::with_capacity(HEADER_LEN + data.len());
    out.extend_from_slice(&batch[..HEADER_LEN]);
    out.extend_from_slice(&data);
    let batch_length = (out.len() - LOG_OVERHEAD) as i32;
    out[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&batch_length.to_be_bytes());
    out[RECORDS_COUNT..RECORDS_COUNT + 4].copy_from_slice(&(kept.len() as i32).to_be_bytes());
    if let Some(new_base) = stamp {
        let attributes = be_i16(batch, ATTRIBUTES) | DELETE_HORIZON;
        out[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
        out[BASE_TIMESTAMP..BASE_TIMESTAMP + 8].copy_from_slice(&new_base.to_be_bytes());
    }
    let crc = crc32c::crc32c(&out[ATTRIBUTES..]);
    out[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
    done(Rewritten::New(out))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::produce::validate::validate;
    use crate::record::batch::record_timestamps;
    use crate::testing::keyed_batch;

    fn crc_ok(batch: &[u8]) -> bool {
        crc32c::crc32c(&batch[ATTRIBUTES..]).to_be_bytes() == batch[CRC..CRC + 4]
    }

    fn views(batch: &[u8]) -> Vec<(i32, Option<String>, bool)> {
        let mut out = Vec::new();
        for_each_record(batch, |r| {
            out.push((
                r.offset_delta,
                r.key.map(|k| String::from_utf8_lossy(k).into_owned()),
                r.tombstone,
            ))
        })
        .unwrap();
        out
    }

    #[test]
    fn a_rewrite_keeps_offsets_sequences_codec_and_a_valid_crc() {
        for codec in [
            Codec::None,
            Codec::Gzip,
            Codec::Snappy { framed: true },
            Codec::Lz4,
            Codec::Zstd,
        ] {
            let batch = keyed_batch(
                40,
                &[
                    (Some("a"), Some("1"), 1000),
                    (Some("b"), Some("2"), 1001),
                    (Some("a"), None, 1002),
                ],
                codec,
            );
            let r = rewrite(&batch, |r| r.offset_delta != 0, 9_000).unwrap();
            assert_eq!(r.tombstones_until, Some(9_000));
            let Rewritten::New(out) = r.batch else {
                panic!("expected a new batch");
            };
            assert_eq!(batch_info(&out).unwrap().delete_horizon, Some(9_000));
            assert_eq!(
                views(&out),
                vec![(1, Some("b".into()), false), (2, Some("a".into()), true)]
            );
            assert_eq!(out[..8], batch[..8], "base offset");
            assert_eq!(out[23..27], batch[23..27], "last offset delta");
            assert_eq!(
                out[43..57],
                batch[43..57],
                "producer id, epoch, base sequence"
            );
            assert_eq!(out[22] & 0x07, batch[22] & 0x07, "codec");
            assert!(crc_ok(&out));
        }
    }

    #[test]
    fn all_kept_is_unchanged_none_kept_is_empty() {
        let batch = keyed_batch(0, &[(Some("a"), Some("1"), 5)], Codec::None);
        let kept = rewrite(&batch, |_| true, 100).unwrap();
        assert_eq!(kept.batch, Rewritten::Unchanged);
        assert_eq!(kept.tombstones_until, None, "no tombstone, no horizon");
        assert_eq!(
            rewrite(&batch, |_| false, 100).unwrap().batch,
            Rewritten::Empty
        );
    }

    #[test]
    fn a_delete_horizon_rebases_timestamps_and_is_set_once() {
        let batch = keyed_batch(
            0,
            &[(Some("a"), None, 5000), (Some("b"), Some("x"), 5007)],
            Codec::None,
        );
        let Rewritten::New(out) = rewrite(&batch, |_| true, 90_000).unwrap().batch else {
            panic!("expected a new batch");
        };
        let info = batch_info(&out).unwrap();
        assert_eq!(info.delete_horizon, Some(90_000));
        assert_eq!(record_timestamps(&out), Some(vec![(0, 5000), (1, 5007)]));
        assert!(crc_ok(&out));
        assert!(
            validate(&Bytes::from(out.clone())).is_ok(),
            "still a dense batch"
        );
        // A second pass keeps the first horizon.
        let again = rewrite(&out, |_| true, 200_000).unwrap();
        assert_eq!(again.batch, Rewritten::Unchanged);
        assert_eq!(again.tombstones_until, Some(90_000));
    }

    #[test]
    fn malformed_records_are_errors() {
        let mut batch = keyed_batch(0, &[(Some("key"), Some("value"), 1)], Codec::None);
        let n = batch.len();
        batch.truncate(n - 4);
        assert!(for_each_record(&batch, |_| {}).is_err());
        assert!(for_each_record(&batch[..20], |_| {}).is_err());
    }
}

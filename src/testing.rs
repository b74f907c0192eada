//! Fixtures shared by the unit tests of several modules: record batches as clients
//! write them, and a metadata replica over an in-memory store.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::metadata::state::Command;
use crate::metadata::{Metadata, RaftOptions};

use crate::record::batch::{ATTRIBUTES, CRC, HEADER_LEN, LOG_OVERHEAD};
use crate::record::compression::Codec;
use crate::record::records::put_varint;

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

/// A batch of records `(key, value, timestamp)` at `base_offset`, with `codec`.
pub fn keyed_batch(
    base_offset: i64,
    records: &[(Option<&str>, Option<&str>, i64)],
    codec: Codec,
) -> Vec<u8> {
    let base_ts = records.first().map_or(0, |r| r.2);
    let mut body = Vec::new();
    for (i, (key, value, ts)) in records.iter().enumerate() {
        let mut r = vec![0u8];
        put_varint(&mut r, ts - base_ts);
        put_varint(&mut r, i as i64);
        for field in [key, value] {
            match field {
                Some(s) => {
                    put_varint(&mut r, s.len() as i64);
                    r.extend_from_slice(s.as_bytes());
                }
                None => put_varint(&mut r, -1),
            }
        }
        put_varint(&mut r, 0);
        put_varint(&mut body, r.len() as i64);
        body.extend_from_slice(&r);
    }
    let data = codec.compress(&body).unwrap();
    let bits: i16 = match codec {
        Codec::None => 0,
        Codec::Gzip => 1,
        Codec::Snappy { .. } => 2,
        Codec::Lz4 => 3,
        Codec::Zstd => 4,
    };
    let mut b = Vec::new();
    b.extend_from_slice(&base_offset.to_be_bytes());
    b.extend_from_slice(&((HEADER_LEN - LOG_OVERHEAD + data.len()) as i32).to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes()); // leader epoch
    b.push(2);
    b.extend_from_slice(&[0; 4]); // crc
    b.extend_from_slice(&bits.to_be_bytes());
    b.extend_from_slice(&(records.len() as i32 - 1).to_be_bytes());
    b.extend_from_slice(&base_ts.to_be_bytes());
    let max_ts = records.iter().map(|r| r.2).max().unwrap_or(0);
    b.extend_from_slice(&max_ts.to_be_bytes());
    b.extend_from_slice(&7i64.to_be_bytes()); // producer id
    b.extend_from_slice(&1i16.to_be_bytes()); // epoch
    b.extend_from_slice(&100i32.to_be_bytes()); // base sequence
    b.extend_from_slice(&(records.len() as i32).to_be_bytes());
    b.extend_from_slice(&data);
    let crc = crc32c::crc32c(&b[ATTRIBUTES..]);
    b[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
    b
}

/// A one-voter metadata replica in `dir` holding topic `t` (one partition, id `[7; 16]`).
pub async fn metadata_with_topic(dir: &std::path::Path) -> anyhow::Result<Arc<Metadata>> {
    let metadata = Arc::new(Metadata::open(dir, RaftOptions::single(1, 1000)).await?);
    metadata
        .propose(Command::CreateTopic {
            name: "t".into(),
            topic_id: [7; 16],
            partitions: 1,
            configs: BTreeMap::new(),
            now_ms: crate::clock::now_ms(),
            preferred: Vec::new(),
        })
        .await?;
    Ok(metadata)
}

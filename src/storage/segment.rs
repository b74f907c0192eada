//! The segment object: record batches for many partitions in one object.
//!
//! ```text
//! "STRATA01"                       8-byte header magic
//! chunk*                           each chunk: one partition's record batches, as produced
//! footer                           JSON list of chunks (topic, partition, position, length, offsets)
//! footer_len u32 | crc32c u32 | "STRATAFT"   16-byte trailer
//! ```
//! The footer makes an object self-describing, so a bucket can be re-indexed and verified
//! without the metadata log. Offsets are not stored: they are assigned at commit.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::metadata::state::{ProducerBatch, SegmentEntry};

const HEADER_MAGIC: &[u8; 8] = b"STRATA01";
const TRAILER_MAGIC: &[u8; 8] = b"STRATAFT";
const TRAILER_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Footer {
    pub chunks: Vec<SegmentEntry>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SegmentError {
    #[error("object too short for a segment")]
    TooShort,
    #[error("bad magic")]
    BadMagic,
    #[error("footer checksum mismatch")]
    BadChecksum,
    #[error("footer is not valid: {0}")]
    BadFooter(String),
    #[error("chunk {0} lies outside the object")]
    ChunkOutOfBounds(usize),
}

/// Builds one segment object from chunks appended in order.
pub struct SegmentBuilder {
    buf: BytesMut,
    chunks: Vec<SegmentEntry>,
}

impl Default for SegmentBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl SegmentBuilder {
    pub fn new() -> Self {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        buf.put_slice(HEADER_MAGIC);
        Self {
            buf,
            chunks: Vec::new(),
        }
    }

    /// Appends one partition's batches; returns the chunk's byte position.
    pub fn add_chunk(
        &mut self,
        topic: &str,
        partition: i32,
        batches: &[Bytes],
        offset_count: u32,
        max_timestamp: i64,
        producer: Option<ProducerBatch>,
    ) -> u64 {
        let position = self.buf.len() as u64;
        for batch in batches {
            self.buf.put_slice(batch);
        }
        self.chunks.push(SegmentEntry {
            topic: topic.to_owned(),
            partition,
            position,
            length: self.buf.len() as u64 - position,
            offset_count,
            max_timestamp,
            producer,
        });
        position
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// The finished object and the entries to commit for it.
    pub fn finish(mut self) -> (Bytes, Vec<SegmentEntry>) {
        let footer = Footer {
            chunks: self.chunks,
        };
        // Serializing plain strings and integers cannot fail.
        let json = serde_json::to_vec(&footer).unwrap_or_default();
        self.buf.put_slice(&json);
        self.buf.put_u32(json.len() as u32);
        self.buf.put_u32(crc32c::crc32c(&json));
        self.buf.put_slice(TRAILER_MAGIC);
        (self.buf.freeze(), footer.chunks)
    }
}

/// Reads and verifies a whole segment object's footer.
pub fn read_footer(object: &[u8]) -> Result<Footer, SegmentError> {
    if object.len() < HEADER_MAGIC.len() + TRAILER_LEN {
        return Err(SegmentError::TooShort);
    }
    if &object[..8] != HEADER_MAGIC {
        return Err(SegmentError::BadMagic);
    }
    let trailer = &object[object.len() - TRAILER_LEN..];
    let location = locate_footer(object.len() as u64, trailer)?;
    let json = &object[location.start as usize..location.end as usize];
    decode_footer(json, &location)
}

/// Where the footer lies, from the object's size and its last 16 bytes (so a reader
/// needs two small ranged reads, not the whole object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FooterLocation {
    pub start: u64,
    pub end: u64,
    crc: u32,
}

pub const TRAILER_BYTES: u64 = TRAILER_LEN as u64;

pub fn locate_footer(object_size: u64, trailer: &[u8]) -> Result<FooterLocation, SegmentError> {
    if trailer.len() != TRAILER_LEN || object_size < (HEADER_MAGIC.len() + TRAILER_LEN) as u64 {
        return Err(SegmentError::TooShort);
    }
    if &trailer[8..] != TRAILER_MAGIC {
        return Err(SegmentError::BadMagic);
    }
    let footer_len = u64::from(u32::from_be_bytes([
        trailer[0], trailer[1], trailer[2], trailer[3],
    ]));
    let crc = u32::from_be_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
    let end = object_size - TRAILER_BYTES;
    let start = end
        .checked_sub(footer_len)
        .filter(|s| *s >= HEADER_MAGIC.len() as u64)
        .ok_or(SegmentError::TooShort)?;
    Ok(FooterLocation { start, end, crc })
}

pub fn decode_footer(json: &[u8], location: &FooterLocation) -> Result<Footer, SegmentError> {
    if crc32c::crc32c(json) != location.crc {
        return Err(SegmentError::BadChecksum);
    }
    let footer: Footer =
        serde_json::from_slice(json).map_err(|e| SegmentError::BadFooter(e.to_string()))?;
    for (i, chunk) in footer.chunks.iter().enumerate() {
        let end = chunk.position.checked_add(chunk.length);
        if chunk.position < HEADER_MAGIC.len() as u64 || end.is_none_or(|end| end > location.start)
        {
            return Err(SegmentError::ChunkOutOfBounds(i));
        }
    }
    Ok(footer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn write_then_read_back_gives_the_same_chunks(
            chunks in prop::collection::vec(
                ("[a-z]{1,8}", 0..8i32, prop::collection::vec(prop::collection::vec(any::<u8>(), 1..200), 1..4), 1..100u32),
                1..10)
        ) {
            let mut builder = SegmentBuilder::new();
            for (topic, partition, batches, count) in &chunks {
                let batches: Vec<Bytes> = batches.iter().map(|b| Bytes::from(b.clone())).collect();
                builder.add_chunk(topic, *partition, &batches, *count, 42, None);
            }
            let (object, entries) = builder.finish();
            let footer = read_footer(&object).unwrap();
            prop_assert_eq!(&footer.chunks, &entries);
            for ((_, _, batches, _), entry) in chunks.iter().zip(&entries) {
                let start = entry.position as usize;
                let got = &object[start..start + entry.length as usize];
                let want = batches.concat();
                prop_assert_eq!(got, want.as_slice());
            }
        }

        #[test]
        fn garbage_never_panics(data in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = read_footer(&data);
        }
    }

    #[test]
    fn a_flipped_footer_byte_is_detected() {
        let mut builder = SegmentBuilder::new();
        builder.add_chunk("t", 0, &[Bytes::from_static(b"abc")], 1, 0, None);
        let (object, _) = builder.finish();
        let mut bad = object.to_vec();
        let i = bad.len() - TRAILER_LEN - 3;
        bad[i] ^= 1;
        assert_eq!(read_footer(&bad), Err(SegmentError::BadChecksum));
    }
}

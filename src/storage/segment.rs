//! Segment objects: a flush of the write buffer (chunks of many partitions), or a
//! compacted segment (one partition's batches, offsets known).
//!
//! ```text
//! "STRATA01"                       8-byte header magic
//! data                             record batches, as produced
//! footer                           FOOTER_VERSION, then the postcard-encoded Footer
//!                                  (format 1, JSON `{"chunks": [..]}`, is still read)
//! footer_len u32 | crc32c u32 | "STRATAFT"   16-byte trailer
//! ```
//! The footer makes an object self-describing, so a bucket can be re-indexed and verified
//! without the metadata log. A flush object's footer lists its chunks (offsets are not
//! known yet: they are assigned at commit). A compacted segment's footer holds its
//! offsets and a sparse offset and timestamp index (a frame every [`FRAME_BYTES`]), and
//! its batch headers carry their assigned offsets.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::record::ProducerBatch;

const HEADER_MAGIC: &[u8; 8] = b"STRATA01";
const TRAILER_MAGIC: &[u8; 8] = b"STRATAFT";
const TRAILER_LEN: usize = 16;
/// The first byte of a binary footer; a JSON footer (format 1) starts with `{`.
const FOOTER_VERSION: u8 = 2;
/// The sparse index's step inside a compacted segment, and the unit a fetch reads and
/// caches: large enough that a catch-up read is a few big GETs, small enough that a
/// consumer near the end of a segment does not pull the whole of it.
pub const FRAME_BYTES: usize = 1 << 20;
/// Where the data of every object starts.
pub const DATA_START: u64 = HEADER_MAGIC.len() as u64;

/// One partition's chunk inside a segment object: contiguous record batches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentEntry {
    pub topic: String,
    pub partition: i32,
    /// Byte position of the chunk inside the object.
    pub position: u64,
    pub length: u64,
    /// Offsets the chunk spans: the sum of `last_offset_delta + 1` over its batches.
    pub offset_count: u32,
    pub max_timestamp: i64,
    /// Set when the chunk is one idempotent producer's request: checked for duplicates
    /// and sequence gaps before it gets offsets.
    pub producer: Option<ProducerBatch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Footer {
    /// A flush: one chunk per partition (or per idempotent request).
    Flush { chunks: Vec<SegmentEntry> },
    /// A compacted segment of one partition.
    Compacted(CompactedFooter),
}

/// Format 1 footers: JSON.
#[derive(Deserialize)]
struct LegacyFooter {
    chunks: Vec<SegmentEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactedFooter {
    pub topic: String,
    pub topic_id: [u8; 16],
    pub partition: i32,
    pub base_offset: i64,
    pub end_offset: i64,
    /// The sparse offset and timestamp index, in offset order.
    pub frames: Vec<Frame>,
}

/// A run of whole batches inside a compacted segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub base_offset: i64,
    pub position: u64,
    pub length: u64,
    /// The largest timestamp up to the end of this frame (a running maximum).
    pub max_timestamp: i64,
}

impl CompactedFooter {
    /// The frames holding `offset` and after.
    pub fn frames_from(&self, offset: i64) -> &[Frame] {
        let next = self.frames.partition_point(|f| f.base_offset <= offset);
        &self.frames[next.saturating_sub(1)..]
    }

    /// The first frame holding a timestamp at or after `timestamp`.
    pub fn frame_for_timestamp(&self, timestamp: i64) -> Option<&Frame> {
        self.frames
            .get(self.frames.partition_point(|f| f.max_timestamp < timestamp))
    }

    /// The offset where `frame` ends.
    pub fn frame_end(&self, frame: &Frame) -> i64 {
        let next = self
            .frames
            .partition_point(|f| f.base_offset <= frame.base_offset);
        self.frames
            .get(next)
            .map_or(self.end_offset, |f| f.base_offset)
    }
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
    #[error("footer format {0} is newer than this broker reads")]
    NewerFooter(u8),
    #[error("chunk {0} lies outside the object")]
    ChunkOutOfBounds(usize),
}

/// Appends the footer and trailer to an object's data.
fn seal(mut buf: BytesMut, footer: &Footer) -> Bytes {
    let mut encoded = vec![FOOTER_VERSION];
    // Plain strings and integers always encode.
    let body = postcard::to_stdvec(footer).unwrap_or_default();
    encoded.extend_from_slice(&body);
    buf.put_slice(&encoded);
    buf.put_u32(encoded.len() as u32);
    buf.put_u32(crc32c::crc32c(&encoded));
    buf.put_slice(TRAILER_MAGIC);
    buf.freeze()
}

/// Builds one flush object from chunks appended in order.
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
        Self::with_capacity(64 * 1024)
    }

    /// A builder whose buffer holds `bytes` (data and footer) without growing.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = BytesMut::with_capacity(bytes + HEADER_MAGIC.len() + TRAILER_LEN);
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
    pub fn finish(self) -> (Bytes, Vec<SegmentEntry>) {
        let footer = Footer::Flush {
            chunks: self.chunks,
        };
        let object = seal(self.buf, &footer);
        let Footer::Flush { chunks } = footer else {
            return (object, Vec::new());
        };
        (object, chunks)
    }
}

/// Builds a compacted segment from one partition's batches, in offset order.
pub struct CompactedBuilder {
    buf: BytesMut,
    footer: CompactedFooter,
}

impl CompactedBuilder {
    pub fn new(
        topic: &str,
        topic_id: [u8; 16],
        partition: i32,
        base_offset: i64,
        capacity: usize,
    ) -> Self {
        let mut buf = BytesMut::with_capacity(capacity + 4096);
        buf.put_slice(HEADER_MAGIC);
        Self {
            buf,
            footer: CompactedFooter {
                topic: topic.to_owned(),
                topic_id,
                partition,
                base_offset,
                end_offset: base_offset,
                frames: Vec::new(),
            },
        }
    }

    /// Appends a stored batch holding `span` offsets from `base_offset`, writing that
    /// offset into its header (outside the CRC).
    pub fn push_batch(&mut self, batch: &[u8], base_offset: i64, span: u32, max_timestamp: i64) {
        let position = self.buf.len() as u64;
        let running_max = self
            .footer
            .frames
            .last()
            .map_or(max_timestamp, |f| f.max_timestamp.max(max_timestamp));
        let new_frame = self
            .footer
            .frames
            .last()
            .is_none_or(|f| f.length >= FRAME_BYTES as u64);
        if new_frame {
            self.footer.frames.push(Frame {
                base_offset,
                position,
                length: 0,
                max_timestamp: running_max,
            });
        }
        self.buf.put_slice(batch);
        let at = position as usize;
        crate::record::batch::set_base_offset(&mut self.buf[at..], base_offset);
        if let Some(frame) = self.footer.frames.last_mut() {
            frame.length += batch.len() as u64;
            frame.max_timestamp = running_max;
        }
        self.footer.end_offset = base_offset + i64::from(span);
    }

    /// The frames so far (the pieces a reader will ask for).
    pub fn frames(&self) -> &[Frame] {
        &self.footer.frames
    }

    pub fn data_len(&self) -> u64 {
        self.buf.len() as u64 - DATA_START
    }

    pub fn end_offset(&self) -> i64 {
        self.footer.end_offset
    }

    /// Makes the segment cover offsets up to `end` even where its last batches end
    /// before (the log cleaner emptied them): the footer then agrees with the index.
    pub fn extend_to(&mut self, end: i64) {
        self.footer.end_offset = self.footer.end_offset.max(end);
    }

    /// The object, and where its data lies in it (position, length).
    pub fn finish(self) -> (Bytes, u64, u64) {
        let length = self.data_len();
        (
            seal(self.buf, &Footer::Compacted(self.footer)),
            DATA_START,
            length,
        )
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
    let bytes = &object[location.start as usize..location.end as usize];
    decode_footer(bytes, &location)
}

/// Decodes the footer from the object's last bytes: the footer and the trailer, as read
/// by one ranged GET from `object_size - tail.len()` to the end.
pub fn decode_tail(object_size: u64, tail: &[u8]) -> Result<Footer, SegmentError> {
    if tail.len() < TRAILER_LEN {
        return Err(SegmentError::TooShort);
    }
    let location = locate_footer(object_size, &tail[tail.len() - TRAILER_LEN..])?;
    let tail_start = object_size - tail.len() as u64;
    let start = location
        .start
        .checked_sub(tail_start)
        .ok_or(SegmentError::TooShort)? as usize;
    let end = (location.end - tail_start) as usize;
    decode_footer(&tail[start..end], &location)
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

pub fn decode_footer(bytes: &[u8], location: &FooterLocation) -> Result<Footer, SegmentError> {
    if crc32c::crc32c(bytes) != location.crc {
        return Err(SegmentError::BadChecksum);
    }
    let footer = match bytes.first() {
        Some(b'{') => {
            let legacy: LegacyFooter = serde_json::from_slice(bytes)
                .map_err(|e| SegmentError::BadFooter(e.to_string()))?;
            Footer::Flush {
                chunks: legacy.chunks,
            }
        }
        Some(&FOOTER_VERSION) => {
            postcard::from_bytes(&bytes[1..]).map_err(|e| SegmentError::BadFooter(e.to_string()))?
        }
        Some(&v) => return Err(SegmentError::NewerFooter(v)),
        None => return Err(SegmentError::BadFooter("empty".into())),
    };
    let in_bounds = |i: usize, position: u64, length: u64| {
        let end = position.checked_add(length);
        if position < HEADER_MAGIC.len() as u64 || end.is_none_or(|end| end > location.start) {
            return Err(SegmentError::ChunkOutOfBounds(i));
        }
        Ok(())
    };
    match &footer {
        Footer::Flush { chunks } => {
            for (i, chunk) in chunks.iter().enumerate() {
                in_bounds(i, chunk.position, chunk.length)?;
            }
        }
        Footer::Compacted(c) => {
            for (i, frame) in c.frames.iter().enumerate() {
                in_bounds(i, frame.position, frame.length)?;
            }
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
            prop_assert_eq!(&footer, &Footer::Flush { chunks: entries.clone() });
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
    fn a_compacted_segment_indexes_frames_by_offset_and_time() {
        use crate::record::batch::stored_batches;
        use crate::testing::make_batch;
        let batch = make_batch(10, 0);
        let per_frame = FRAME_BYTES.div_ceil(batch.len()) as i64;
        let mut builder = CompactedBuilder::new("t", [3; 16], 2, 1000, 1 << 20);
        let batches = per_frame * 2 + 5;
        for i in 0..batches {
            builder.push_batch(
                &batch,
                1000 + i * 10,
                10,
                if i == per_frame + 1 { 7 } else { 5 },
            );
        }
        let (object, position, length) = builder.finish();
        assert_eq!(position, DATA_START);
        let Footer::Compacted(footer) = read_footer(&object).unwrap() else {
            panic!("not compacted")
        };
        assert_eq!(
            (footer.base_offset, footer.end_offset),
            (1000, 1000 + batches * 10)
        );
        assert_eq!(footer.frames.len(), 3);
        assert_eq!(footer.frames[1].base_offset, 1000 + per_frame * 10);
        assert_eq!(footer.frames.iter().map(|f| f.length).sum::<u64>(), length);
        // Offsets are in the batch headers.
        let data = &object[position as usize..(position + length) as usize];
        let first = stored_batches(data)[1];
        assert_eq!(&data[first.start..first.start + 8], &1010i64.to_be_bytes());
        // Look-ups: by offset, by time (running maximum), and the tail alone.
        assert_eq!(
            footer.frames_from(1000 + per_frame * 10 + 3)[0],
            footer.frames[1]
        );
        assert_eq!(footer.frames_from(999)[0], footer.frames[0]);
        assert_eq!(footer.frame_for_timestamp(6), Some(&footer.frames[1]));
        assert_eq!(footer.frame_for_timestamp(8), None);
        assert_eq!(footer.frame_end(&footer.frames[2]), footer.end_offset);
        let tail = &object[(position + length) as usize..];
        assert_eq!(
            decode_tail(object.len() as u64, tail),
            Ok(Footer::Compacted(footer))
        );
    }

    #[test]
    fn a_format_1_json_footer_is_still_read() {
        let mut object = HEADER_MAGIC.to_vec();
        object.extend_from_slice(b"abc");
        let json = br#"{"chunks":[{"topic":"t","partition":0,"position":8,"length":3,"offset_count":1,"max_timestamp":5}]}"#;
        object.extend_from_slice(json);
        object.extend_from_slice(&(json.len() as u32).to_be_bytes());
        object.extend_from_slice(&crc32c::crc32c(json).to_be_bytes());
        object.extend_from_slice(TRAILER_MAGIC);
        let Footer::Flush { chunks } = read_footer(&object).unwrap() else {
            panic!("not a flush footer")
        };
        assert_eq!(chunks.len(), 1);
        assert_eq!((chunks[0].position, chunks[0].producer), (8, None));
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

//! Segment objects: a flush of the write buffer (chunks of many partitions), a
//! compacted segment (one partition's batches, offsets known), or a shared object (the
//! small compaction outputs of many partitions, a section each).
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
//!
//! A shared object's data is a run of sections, each one partition's batches (offsets in
//! their headers, as in a compacted segment) followed at once by that section's own
//! index:
//!
//! ```text
//! section data                     record batches of one partition
//! "STRATASX" | index_len u32 | crc32c u32   16-byte section index header
//! index                            SECTION_VERSION, then the postcard-encoded
//!                                  CompactedFooter of the section (frames at object positions)
//! ```
//! An index entry pointing at a section names its data's position and length, so a
//! reader finds the section's index at the end of the data without the object's footer
//! (one ranged read: [`SECTION_INDEX_READ`] bytes from there hold it whole in practice;
//! the header says how long it is, so a longer one takes a second read). The object's
//! footer ([`Footer::Shared`], written with [`SHARED_FOOTER_VERSION`]) lists every
//! section (partition, offsets, data range), so the object still describes itself whole.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::record::ProducerBatch;

const HEADER_MAGIC: &[u8; 8] = b"STRATA01";
const TRAILER_MAGIC: &[u8; 8] = b"STRATAFT";
const TRAILER_LEN: usize = 16;
/// The first byte of a binary footer; a JSON footer (format 1) starts with `{`.
const FOOTER_VERSION: u8 = 2;
/// The first byte of a shared object's footer: the same encoding, but a broker that
/// knows no shared objects reports it as a newer footer rather than as garbage.
const SHARED_FOOTER_VERSION: u8 = 3;
/// The first byte of a compacted segment's footer that carries aborted transactions: the
/// version 2 encoding, then the postcard-encoded list. Written only when the list is not
/// empty, so segments without aborts stay readable by a broker that predates it.
const ABORTS_FOOTER_VERSION: u8 = 4;
/// What opens a section's index, right after the section's data.
const SECTION_MAGIC: &[u8; 8] = b"STRATASX";
/// The section index header: magic, index length, CRC-32C of the index.
pub const SECTION_HEADER_BYTES: u64 = 16;
/// The first byte of a section's index.
const SECTION_VERSION: u8 = 1;
/// A section index carrying aborted transactions (as [`ABORTS_FOOTER_VERSION`]).
const ABORTS_SECTION_VERSION: u8 = 2;
/// What a reader reads from the end of a section's data to get its index in one request:
/// a section of a whole segment (128 frames) has an index of about 4 KiB.
pub const SECTION_INDEX_READ: u64 = 8 << 10;
/// The largest section index a reader accepts (a header claiming more is corrupt).
const MAX_SECTION_INDEX: u64 = 16 << 20;
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
    /// A shared object: one section per partition (each with its own index after its
    /// data).
    Shared { sections: Vec<SectionRef> },
}

/// One section of a shared object, as its footer lists it: enough to index it again
/// without reading the section's own index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionRef {
    pub topic: String,
    pub topic_id: [u8; 16],
    pub partition: i32,
    pub base_offset: i64,
    pub end_offset: i64,
    /// The section's data (its index follows at `position + length`).
    pub position: u64,
    pub length: u64,
    /// The largest record timestamp in the section.
    pub max_timestamp: i64,
}

/// Format 1 footers: JSON.
#[derive(Deserialize)]
struct LegacyFooter {
    chunks: Vec<SegmentEntry>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactedFooter {
    pub topic: String,
    pub topic_id: [u8; 16],
    pub partition: i32,
    pub base_offset: i64,
    pub end_offset: i64,
    /// The sparse offset and timestamp index, in offset order.
    pub frames: Vec<Frame>,
    /// The aborted transactions whose abort marker lies in this segment and whose first
    /// offset is at or after its base (Kafka's `.txnindex`), by marker offset. Encoded
    /// after the footer, only when not empty (see [`ABORTS_FOOTER_VERSION`]).
    #[serde(skip)]
    pub aborted: Vec<AbortedTxn>,
}

/// An aborted transaction on a partition: an entry of Fetch's `aborted_transactions`.
/// Kept in the metadata state until the compaction that writes its marker into a segment
/// moves it into that segment's footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    /// The abort marker's offset.
    pub last_offset: i64,
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
    #[error("section index is not valid: {0}")]
    BadSection(String),
}

/// Appends the footer and trailer to an object's data.
fn seal(mut buf: BytesMut, footer: &Footer) -> Bytes {
    let aborted = match footer {
        Footer::Compacted(c) => c.aborted.as_slice(),
        Footer::Flush { .. } | Footer::Shared { .. } => &[],
    };
    let version = match footer {
        Footer::Shared { .. } => SHARED_FOOTER_VERSION,
        Footer::Compacted(_) if !aborted.is_empty() => ABORTS_FOOTER_VERSION,
        Footer::Flush { .. } | Footer::Compacted(_) => FOOTER_VERSION,
    };
    let mut encoded = vec![version];
    // Plain strings and integers always encode.
    let body = postcard::to_stdvec(footer).unwrap_or_default();
    encoded.extend_from_slice(&body);
    if !aborted.is_empty() {
        encoded.extend_from_slice(&postcard::to_stdvec(aborted).unwrap_or_default());
    }
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

    /// Bytes no chunk references, right after the header: the metadata log entries a
    /// flush carries on the Raft leader (`metadata/ride.rs`). Must come before any chunk.
    pub fn add_leading(&mut self, bytes: &[u8]) {
        debug_assert!(self.chunks.is_empty());
        self.buf.put_slice(bytes);
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
                aborted: Vec::new(),
            },
        }
    }

    /// Appends a stored batch holding `span` offsets from `base_offset`, writing that
    /// offset into its header (outside the CRC).
    pub fn push_batch(&mut self, batch: &[u8], base_offset: i64, span: u32, max_timestamp: i64) {
        append_batch(
            &mut self.buf,
            &mut self.footer,
            batch,
            (base_offset, span),
            max_timestamp,
        );
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

    /// The aborted transactions the segment's footer indexes (see
    /// [`CompactedFooter::aborted`]).
    pub fn set_aborted(&mut self, mut aborted: Vec<AbortedTxn>) {
        aborted.sort_by_key(|a| (a.last_offset, a.producer_id));
        self.footer.aborted = aborted;
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

/// Appends one batch to `buf`, indexing it in `footer`: a new frame every
/// [`FRAME_BYTES`], the running maximum timestamp, the batch's offset in its header.
fn append_batch(
    buf: &mut BytesMut,
    footer: &mut CompactedFooter,
    batch: &[u8],
    (base_offset, span): (i64, u32),
    max_timestamp: i64,
) {
    let position = buf.len() as u64;
    let running_max = footer
        .frames
        .last()
        .map_or(max_timestamp, |f| f.max_timestamp.max(max_timestamp));
    let new_frame = footer
        .frames
        .last()
        .is_none_or(|f| f.length >= FRAME_BYTES as u64);
    if new_frame {
        footer.frames.push(Frame {
            base_offset,
            position,
            length: 0,
            max_timestamp: running_max,
        });
    }
    buf.put_slice(batch);
    let at = position as usize;
    crate::record::batch::set_base_offset(&mut buf[at..], base_offset);
    if let Some(frame) = footer.frames.last_mut() {
        frame.length += batch.len() as u64;
        frame.max_timestamp = running_max;
    }
    footer.end_offset = base_offset + i64::from(span);
}

/// Builds a shared object: sections of many partitions, appended one after another.
pub struct SharedBuilder {
    buf: BytesMut,
    sections: Vec<SectionRef>,
}

/// One section of a shared object, as written: where its data and index lie and what
/// its index holds (the compactor caches both for tail readers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenSection {
    pub section: SectionRef,
    pub index: CompactedFooter,
    /// The section index as stored (header and index), at `section.position +
    /// section.length`: what a reader's first read of it returns, cut to its length.
    pub index_bytes: Bytes,
}

impl SharedBuilder {
    /// A builder whose buffer holds `capacity` bytes of data without growing.
    pub fn new(capacity: usize) -> Self {
        let mut buf = BytesMut::with_capacity(capacity + 4096);
        buf.put_slice(HEADER_MAGIC);
        Self {
            buf,
            sections: Vec::new(),
        }
    }

    /// Starts the next section: one partition's batches from `base_offset` on.
    pub fn section(
        &mut self,
        topic: &str,
        topic_id: [u8; 16],
        partition: i32,
        base_offset: i64,
    ) -> SectionBuilder<'_> {
        let start = self.buf.len();
        SectionBuilder {
            shared: self,
            start,
            index: CompactedFooter {
                topic: topic.to_owned(),
                topic_id,
                partition,
                base_offset,
                end_offset: base_offset,
                frames: Vec::new(),
                aborted: Vec::new(),
            },
        }
    }

    /// The bytes written so far (sections and their indexes).
    pub fn len(&self) -> u64 {
        self.buf.len() as u64 - DATA_START
    }

    pub fn is_empty(&self) -> bool {
        self.sections.is_empty()
    }

    pub fn sections(&self) -> usize {
        self.sections.len()
    }

    /// The object.
    pub fn finish(self) -> Bytes {
        seal(
            self.buf,
            &Footer::Shared {
                sections: self.sections,
            },
        )
    }
}

/// A section being written. Dropped without [`SectionBuilder::finish`], it leaves no
/// trace in the object.
pub struct SectionBuilder<'a> {
    shared: &'a mut SharedBuilder,
    start: usize,
    index: CompactedFooter,
}

impl SectionBuilder<'_> {
    /// Appends a stored batch holding `span` offsets from `base_offset` (as
    /// [`CompactedBuilder::push_batch`]).
    pub fn push_batch(&mut self, batch: &[u8], base_offset: i64, span: u32, max_timestamp: i64) {
        append_batch(
            &mut self.shared.buf,
            &mut self.index,
            batch,
            (base_offset, span),
            max_timestamp,
        );
    }

    /// Makes the section cover offsets up to `end` (as [`CompactedBuilder::extend_to`]).
    pub fn extend_to(&mut self, end: i64) {
        self.index.end_offset = self.index.end_offset.max(end);
    }

    /// The aborted transactions the section's index holds (as
    /// [`CompactedBuilder::set_aborted`]).
    pub fn set_aborted(&mut self, mut aborted: Vec<AbortedTxn>) {
        aborted.sort_by_key(|a| (a.last_offset, a.producer_id));
        self.index.aborted = aborted;
    }

    pub fn data_len(&self) -> u64 {
        (self.shared.buf.len() - self.start) as u64
    }

    /// Writes the section's index after its data; the section as written.
    pub fn finish(mut self) -> WrittenSection {
        let buf = &mut self.shared.buf;
        let position = self.start as u64;
        let length = buf.len() as u64 - position;
        let aborted = &self.index.aborted;
        let mut encoded = vec![if aborted.is_empty() {
            SECTION_VERSION
        } else {
            ABORTS_SECTION_VERSION
        }];
        // Plain strings and integers always encode.
        encoded.extend_from_slice(&postcard::to_stdvec(&self.index).unwrap_or_default());
        if !aborted.is_empty() {
            encoded.extend_from_slice(&postcard::to_stdvec(aborted).unwrap_or_default());
        }
        let index_start = buf.len();
        buf.put_slice(SECTION_MAGIC);
        buf.put_u32(encoded.len() as u32);
        buf.put_u32(crc32c::crc32c(&encoded));
        buf.put_slice(&encoded);
        let index_bytes = Bytes::copy_from_slice(&buf[index_start..]);
        let section = SectionRef {
            topic: self.index.topic.clone(),
            topic_id: self.index.topic_id,
            partition: self.index.partition,
            base_offset: self.index.base_offset,
            end_offset: self.index.end_offset,
            position,
            length,
            max_timestamp: self
                .index
                .frames
                .last()
                .map_or(i64::MIN, |f| f.max_timestamp),
        };
        self.shared.sections.push(section.clone());
        // Written: nothing for Drop to take back.
        self.start = self.shared.buf.len();
        WrittenSection {
            section,
            index: std::mem::take(&mut self.index),
            index_bytes,
        }
    }
}

impl Drop for SectionBuilder<'_> {
    fn drop(&mut self) {
        self.shared.buf.truncate(self.start);
    }
}

/// The length of a section's index, header included, from the first bytes read at the
/// end of the section's data (at least [`SECTION_HEADER_BYTES`] of them).
pub fn section_index_len(head: &[u8]) -> Result<u64, SegmentError> {
    let header = head
        .get(..SECTION_HEADER_BYTES as usize)
        .ok_or(SegmentError::TooShort)?;
    if &header[..8] != SECTION_MAGIC {
        return Err(SegmentError::BadMagic);
    }
    let len = u64::from(u32::from_be_bytes([
        header[8], header[9], header[10], header[11],
    ]));
    if len == 0 || len > MAX_SECTION_INDEX {
        return Err(SegmentError::BadSection(format!("index length {len}")));
    }
    Ok(SECTION_HEADER_BYTES + len)
}

/// Decodes and checks a section's index from the bytes read at the end of its data
/// (`data`: the section's position and length in the object), at least
/// [`section_index_len`] of them: the checksum, the version, and frames that lie within
/// the data, in order.
pub fn decode_section_index(
    bytes: &[u8],
    data: (u64, u64),
) -> Result<CompactedFooter, SegmentError> {
    let total = section_index_len(bytes)?;
    let body = bytes
        .get(SECTION_HEADER_BYTES as usize..total as usize)
        .ok_or(SegmentError::TooShort)?;
    let crc = u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    if crc32c::crc32c(body) != crc {
        return Err(SegmentError::BadChecksum);
    }
    let bad = |e: postcard::Error| SegmentError::BadSection(e.to_string());
    let index: CompactedFooter = match body.first() {
        Some(&SECTION_VERSION) => postcard::from_bytes(&body[1..]).map_err(bad)?,
        Some(&ABORTS_SECTION_VERSION) => {
            let (mut index, rest): (CompactedFooter, _) =
                postcard::take_from_bytes(&body[1..]).map_err(bad)?;
            index.aborted = postcard::from_bytes(rest).map_err(bad)?;
            index
        }
        Some(&v) => return Err(SegmentError::NewerFooter(v)),
        None => return Err(SegmentError::BadSection("empty".into())),
    };
    let (position, length) = data;
    let end = position
        .checked_add(length)
        .ok_or(SegmentError::ChunkOutOfBounds(0))?;
    let mut next = position;
    for (i, frame) in index.frames.iter().enumerate() {
        let frame_end = frame.position.checked_add(frame.length);
        if frame.position < next || frame_end.is_none_or(|e| e > end) {
            return Err(SegmentError::ChunkOutOfBounds(i));
        }
        next = frame.position + frame.length;
    }
    if index.end_offset < index.base_offset {
        return Err(SegmentError::BadSection("offsets run backwards".into()));
    }
    Ok(index)
}

/// Every section of a whole shared object with its index, checked against the footer:
/// what re-indexing a bucket reads.
pub fn read_sections(object: &[u8]) -> Result<Vec<(SectionRef, CompactedFooter)>, SegmentError> {
    let Footer::Shared { sections } = read_footer(object)? else {
        return Err(SegmentError::BadSection("not a shared object".into()));
    };
    let footer_start =
        locate_footer(object.len() as u64, &object[object.len() - TRAILER_LEN..])?.start;
    let mut out = Vec::with_capacity(sections.len());
    for (i, section) in sections.into_iter().enumerate() {
        let index_at = section.position + section.length;
        let bytes = object
            .get(index_at as usize..footer_start as usize)
            .ok_or(SegmentError::ChunkOutOfBounds(i))?;
        let index = decode_section_index(bytes, (section.position, section.length))?;
        let agrees = index.topic == section.topic
            && index.topic_id == section.topic_id
            && index.partition == section.partition
            && index.base_offset == section.base_offset
            && index.end_offset == section.end_offset;
        if !agrees {
            return Err(SegmentError::BadSection(format!(
                "section {i}'s index disagrees with the footer"
            )));
        }
        out.push((section, index));
    }
    Ok(out)
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

/// The bytes of a flush object before its first chunk (see [`SegmentBuilder::add_leading`]).
pub fn leading_bytes(object: &[u8]) -> Result<&[u8], SegmentError> {
    let Footer::Flush { chunks } = read_footer(object)? else {
        return Err(SegmentError::BadFooter("not a flush object".into()));
    };
    let end = chunks
        .iter()
        .map(|c| c.position)
        .min()
        .ok_or_else(|| SegmentError::BadFooter("a flush object with no chunk".into()))?;
    object
        .get(DATA_START as usize..end as usize)
        .ok_or(SegmentError::ChunkOutOfBounds(0))
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
        Some(&(FOOTER_VERSION | SHARED_FOOTER_VERSION)) => {
            postcard::from_bytes(&bytes[1..]).map_err(|e| SegmentError::BadFooter(e.to_string()))?
        }
        Some(&ABORTS_FOOTER_VERSION) => {
            let bad = |e: postcard::Error| SegmentError::BadFooter(e.to_string());
            let (footer, rest): (Footer, _) =
                postcard::take_from_bytes(&bytes[1..]).map_err(bad)?;
            let Footer::Compacted(mut c) = footer else {
                return Err(SegmentError::BadFooter(
                    "aborted transactions in a footer that is not a segment's".into(),
                ));
            };
            c.aborted = postcard::from_bytes(rest).map_err(bad)?;
            Footer::Compacted(c)
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
        Footer::Shared { sections } => {
            for (i, section) in sections.iter().enumerate() {
                // The data, then at least the section index's header.
                in_bounds(
                    i,
                    section.position,
                    section.length.saturating_add(SECTION_HEADER_BYTES),
                )?;
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
                1..10),
            leading in prop::collection::vec(any::<u8>(), 0..64)
        ) {
            let mut builder = SegmentBuilder::new();
            builder.add_leading(&leading);
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
            prop_assert_eq!(leading_bytes(&object).unwrap(), leading.as_slice());
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

    /// A shared object of `sections` (partition, batches of (records, timestamp)), with
    /// offsets numbered from 100 in each section.
    fn shared_object(sections: &[(i32, Vec<(i32, i64)>)]) -> (Bytes, Vec<WrittenSection>) {
        use crate::testing::make_batch;
        let mut builder = SharedBuilder::new(1 << 16);
        let mut written = Vec::new();
        for (partition, batches) in sections {
            let mut section = builder.section("topic", [7; 16], *partition, 100);
            let mut offset = 100;
            for (records, ts) in batches {
                let batch = make_batch(*records, *ts);
                section.push_batch(&batch, offset, *records as u32, *ts);
                offset += i64::from(*records);
            }
            section.extend_to(offset + 1);
            written.push(section.finish());
        }
        (builder.finish(), written)
    }

    proptest! {
        /// Every section reads back, through the footer and through its own index found
        /// from its data range alone, with its batches where the index says.
        #[test]
        fn shared_sections_read_back_through_their_own_index(
            sections in prop::collection::vec(
                (0..1000i32, prop::collection::vec((1..20i32, 0..1_000_000i64), 0..6)),
                1..8)
        ) {
            let (object, written) = shared_object(&sections);
            let read = read_sections(&object).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(read.len(), sections.len());
            let Footer::Shared { sections: listed } = read_footer(&object).map_err(|e| TestCaseError::fail(e.to_string()))? else {
                return Err(TestCaseError::fail("not a shared footer"));
            };
            for (((section, index), w), (partition, batches)) in read.iter().zip(&written).zip(&sections) {
                prop_assert_eq!(section, &w.section);
                prop_assert_eq!(index, &w.index);
                prop_assert!(listed.contains(section));
                prop_assert_eq!(section.partition, *partition);
                let records: i64 = batches.iter().map(|(r, _)| i64::from(*r)).sum();
                prop_assert_eq!((section.base_offset, section.end_offset), (100, 100 + records + 1));
                let max_ts = batches.iter().map(|(_, t)| *t).max().unwrap_or(i64::MIN);
                prop_assert_eq!(section.max_timestamp, max_ts);
                // Found from the data range alone: the first SECTION_INDEX_READ bytes
                // after the data hold the whole index.
                let at = (section.position + section.length) as usize;
                let head = &object[at..(at + SECTION_INDEX_READ as usize).min(object.len())];
                let len = section_index_len(head).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(len as usize, w.index_bytes.len());
                prop_assert_eq!(&head[..len as usize], &w.index_bytes[..]);
                prop_assert_eq!(&decode_section_index(head, (section.position, section.length)).map_err(|e| TestCaseError::fail(e.to_string()))?, index);
                prop_assert_eq!(&decode_section_index(&w.index_bytes, (section.position, section.length)).map_err(|e| TestCaseError::fail(e.to_string()))?, index);
                // Frames tile the data.
                prop_assert_eq!(index.frames.iter().map(|f| f.length).sum::<u64>(), section.length);
                let mut next = section.position;
                for frame in &index.frames {
                    prop_assert_eq!(frame.position, next);
                    next += frame.length;
                }
            }
        }

        /// Whatever bytes are read where a section index should be, and whatever a
        /// shared object's bytes become, reading them gives an error or a checked index,
        /// never a panic.
        #[test]
        fn corrupt_sections_are_errors_not_panics(
            garbage in prop::collection::vec(any::<u8>(), 0..300),
            flips in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..4),
            data in (any::<u64>(), any::<u64>()),
        ) {
            let _ = section_index_len(&garbage);
            let _ = decode_section_index(&garbage, data);
            let mut with_header = SECTION_MAGIC.to_vec();
            with_header.extend_from_slice(&garbage);
            let _ = decode_section_index(&with_header, data);
            let _ = read_sections(&garbage);
            let (object, written) = shared_object(&[(1, vec![(3, 5)]), (2, vec![(2, 9), (4, 1)])]);
            let mut bad = object.to_vec();
            for (at, bit) in &flips {
                let i = at.index(bad.len());
                bad[i] ^= 1 << bit;
            }
            let _ = read_footer(&bad);
            let _ = read_sections(&bad);
            for w in &written {
                let at = (w.section.position + w.section.length) as usize;
                let _ = decode_section_index(&bad[at..], (w.section.position, w.section.length));
                // Cut short anywhere: an error.
                for cut in 0..w.index_bytes.len() {
                    prop_assert!(decode_section_index(&w.index_bytes[..cut], (w.section.position, w.section.length)).is_err());
                }
            }
        }
    }

    #[test]
    fn aborted_transactions_ride_in_footers_and_section_indexes_only_when_there_are_some() {
        use crate::testing::make_batch;
        let txn = |pid, first, last| AbortedTxn {
            producer_id: pid,
            first_offset: first,
            last_offset: last,
        };
        let batch = make_batch(3, 0);
        let segment = |aborted: Vec<AbortedTxn>| {
            let mut b = CompactedBuilder::new("t", [1; 16], 0, 10, 1024);
            b.push_batch(&batch, 10, 3, 5);
            b.set_aborted(aborted);
            b.finish().0
        };
        // None: the footer keeps the format an older broker reads.
        let plain = segment(Vec::new());
        let location = locate_footer(plain.len() as u64, &plain[plain.len() - TRAILER_LEN..]);
        assert_eq!(
            location.map(|l| plain[l.start as usize]),
            Ok(FOOTER_VERSION)
        );
        // Some: sorted by marker, read back with the frames.
        let object = segment(vec![txn(7, 11, 12), txn(3, 10, 11)]);
        let Ok(Footer::Compacted(footer)) = read_footer(&object) else {
            panic!("not a compacted footer");
        };
        assert_eq!(footer.aborted, vec![txn(3, 10, 11), txn(7, 11, 12)]);
        assert_eq!(footer.frames.len(), 1);
        let tail = &object[object.len().saturating_sub(100)..];
        assert_eq!(
            decode_tail(object.len() as u64, tail),
            Ok(Footer::Compacted(footer))
        );

        let mut shared = SharedBuilder::new(1024);
        let mut section = shared.section("t", [1; 16], 0, 10);
        section.push_batch(&batch, 10, 3, 5);
        section.set_aborted(vec![txn(3, 10, 12)]);
        let w = section.finish();
        assert_eq!(
            w.index_bytes[SECTION_HEADER_BYTES as usize],
            ABORTS_SECTION_VERSION
        );
        let index = decode_section_index(&w.index_bytes, (w.section.position, w.section.length));
        assert_eq!(index.map(|i| i.aborted), Ok(vec![txn(3, 10, 12)]));
        let mut section = shared.section("u", [2; 16], 0, 0);
        section.push_batch(&batch, 0, 3, 5);
        let w = section.finish();
        assert_eq!(
            w.index_bytes[SECTION_HEADER_BYTES as usize],
            SECTION_VERSION
        );
        let sections = read_sections(&shared.finish());
        assert_eq!(
            sections.map(|s| s.iter().map(|(_, i)| i.aborted.len()).collect::<Vec<_>>()),
            Ok(vec![1, 0])
        );
    }

    #[test]
    fn a_damaged_section_index_is_an_error() {
        let (object, written) = shared_object(&[(1, vec![(3, 5)]), (2, vec![(2, 9)])]);
        let w = &written[1];
        let data = (w.section.position, w.section.length);
        let mut bytes = w.index_bytes.to_vec();
        // A flipped byte of the index: the checksum.
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(
            decode_section_index(&bytes, data),
            Err(SegmentError::BadChecksum)
        );
        // Not where the data ends.
        assert_eq!(
            decode_section_index(&object[w.section.position as usize..], data),
            Err(SegmentError::BadMagic)
        );
        // An index whose frames lie outside the data it is read for.
        assert!(matches!(
            decode_section_index(&w.index_bytes, (data.0 + 1, data.1)),
            Err(SegmentError::ChunkOutOfBounds(0))
        ));
        // A header claiming a huge index.
        let mut huge = w.index_bytes.to_vec();
        huge[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            section_index_len(&huge),
            Err(SegmentError::BadSection(_))
        ));
        // A flipped byte in the object's footer: its checksum.
        let mut bad = object.to_vec();
        let i = bad.len() - TRAILER_LEN - 2;
        bad[i] ^= 1;
        assert_eq!(read_sections(&bad), Err(SegmentError::BadChecksum));
        // A flush or compacted object is not a shared one.
        let mut flush = SegmentBuilder::new();
        flush.add_chunk("t", 0, &[Bytes::from_static(b"abc")], 1, 0, None);
        assert!(matches!(
            read_sections(&flush.finish().0),
            Err(SegmentError::BadSection(_))
        ));
        // A section dropped before it is finished leaves nothing behind.
        let mut builder = SharedBuilder::new(1024);
        let mut section = builder.section("t", [0; 16], 0, 0);
        section.push_batch(&crate::testing::make_batch(1, 0), 0, 1, 0);
        drop(section);
        assert_eq!((builder.len(), builder.sections()), (0, 0));
    }

    #[test]
    fn a_shared_footer_is_a_newer_footer_to_a_reader_of_version_2() {
        let (object, _) = shared_object(&[(0, vec![(1, 1)])]);
        let location = locate_footer(object.len() as u64, &object[object.len() - TRAILER_LEN..])
            .expect("trailer");
        assert_eq!(object[location.start as usize], SHARED_FOOTER_VERSION);
        // Flush and compacted objects keep version 2, which older brokers read.
        let mut flush = SegmentBuilder::new();
        flush.add_chunk("t", 0, &[Bytes::from_static(b"abc")], 1, 0, None);
        let (flush, _) = flush.finish();
        let location = locate_footer(flush.len() as u64, &flush[flush.len() - TRAILER_LEN..])
            .expect("trailer");
        assert_eq!(flush[location.start as usize], FOOTER_VERSION);
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

//! Bounded decoding: a walk over a request body, before kafka-protocol decodes it, that
//! refuses any frame whose decode would allocate more than the frame can justify.
//!
//! kafka-protocol sizes every array from the wire (`Vec::with_capacity(n)`) before reading
//! a single element, so a 28-byte Metadata request claiming 2^31 topics aborts the process
//! on a 150 GB allocation. We may not patch the crate, so every body is first walked
//! against `schema.rs`, a table generated from the crate's own decoders
//! (`scripts/gen_request_schema.py`): every array count, string and bytes length is
//! checked against the bytes left, in exactly the order and under exactly the version
//! conditions the crate reads them. A body that passes decodes in memory proportional to
//! its length; the walk also returns what that decode will allocate, for a memory budget.

#[rustfmt::skip]
mod schema;
#[cfg(test)]
mod tests;

use kafka_protocol::messages::ApiKey;

/// Decoded allocations may be at most this many times the body's length, plus
/// [`DECODE_SLACK`]. The per-array rule (a count no larger than the bytes left divided by
/// the smallest encoding of an element) already bounds them: the densest element of the
/// schema, a flexible LeaveGroup MemberIdentity with empty strings, is 3 bytes on the
/// wire and 120 in memory (40x, `tests::densest_elements`). That still lets a 100 MiB
/// frame ask for 4 GB, so this backstop is tighter: real requests stay far below 16x (a
/// Fetch partition is about 2.5x, a Metadata topic with a 5-byte name 10x), and only
/// bodies of thousands of elements whose strings are all one or two bytes long reach it.
pub const DECODE_FACTOR: usize = 16;
/// Fixed allowance on top of [`DECODE_FACTOR`], so that small bodies are never refused.
pub const DECODE_SLACK: usize = 64 * 1024;
/// Largest count accepted for an array whose element may encode in 0 bytes (no such
/// element exists in kafka-protocol 0.18, a test checks; kept for a future schema).
const ZERO_SIZE_ELEMENTS: usize = 64;
/// What an unknown tagged field costs once decoded: its share of the nodes of a
/// `BTreeMap<i32, Bytes>` (at least 5 of a leaf's 11 entries in use, plus internal nodes)...
const UNKNOWN_TAG_COST: usize = 128;
/// ...and the first one of a struct allocates that map's first leaf (408 bytes on 64-bit).
const TAG_MAP_NODE: usize = 512;

/// Why a request body was refused before decoding.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BoundsError {
    #[error("no request schema for API key {0:?}")]
    UnknownApi(ApiKey),
    #[error("{name} does not decode version {version}")]
    UnsupportedVersion { name: &'static str, version: i16 },
    #[error("{need} bytes needed at offset {at}, {left} left")]
    Truncated { at: usize, need: u64, left: usize },
    #[error("negative length {len} at offset {at}")]
    NegativeLength { at: usize, len: i64 },
    #[error("array of {count} elements at offset {at}, at most {max} fit in what is left")]
    TooManyElements { at: usize, count: u64, max: u64 },
    #[error("decoding would allocate about {estimate} bytes, more than {limit} for this frame")]
    TooLarge { estimate: usize, limit: usize },
    #[error("tagged field {tag} of {name} is not valid in version {version}")]
    InvalidTag {
        name: &'static str,
        tag: u32,
        version: i16,
    },
    #[error("tagged field {tag} of {name} declares {declared} bytes but holds {used}")]
    TagSize {
        name: &'static str,
        tag: u32,
        declared: usize,
        used: usize,
    },
}

/// What a walk found: the bytes it read, what the crate's decode will allocate, and the
/// string and bytes payloads the decoded request will hold (views of the frame, as
/// kafka-protocol decodes `Bytes` without copying, so they cost no new memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walked {
    pub consumed: usize,
    pub heap: usize,
    pub borrowed: usize,
}

/// Checks a request body (the frame after its header) and returns an estimate of the heap
/// its decode allocates (the arrays' buffers and the unknown tagged fields' map entries).
pub fn check(key: ApiKey, version: i16, body: &[u8]) -> Result<usize, BoundsError> {
    walk(key, version, body).map(|w| w.heap)
}

/// Upper bound of decoded allocations for a body of `len` bytes.
pub fn limit(len: usize) -> usize {
    len.saturating_mul(DECODE_FACTOR)
        .saturating_add(DECODE_SLACK)
}

/// Walks a request body as `RequestKind::decode(key, _, version)` would read it. Bytes
/// after the request are left alone (the crate ignores them too).
pub fn walk(key: ApiKey, version: i16, body: &[u8]) -> Result<Walked, BoundsError> {
    let def = request_def(key).ok_or(BoundsError::UnknownApi(key))?;
    let bit = version_bit(version).ok_or(BoundsError::UnsupportedVersion {
        name: def.name,
        version,
    })?;
    let mut walker = Walker {
        buf: body,
        pos: 0,
        end: body.len(),
        heap: 0,
        borrowed: 0,
        limit: limit(body.len()),
        version,
        bit,
    };
    walker.walk_struct(def)?;
    Ok(Walked {
        consumed: walker.pos,
        heap: walker.heap,
        borrowed: walker.borrowed,
    })
}

fn request_def(key: ApiKey) -> Option<&'static StructDef> {
    schema::REQUESTS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, i)| &schema::STRUCTS[usize::from(*i)])
}

fn version_bit(version: i16) -> Option<u64> {
    u32::try_from(version)
        .ok()
        .and_then(|v| 1u64.checked_shl(v))
}

/// One struct of the schema: a message or one of its nested structs. Version sets are
/// bit masks (bit v = version v).
pub(crate) struct StructDef {
    pub name: &'static str,
    /// Versions the crate decodes (any other fails its decode).
    pub versions: u64,
    /// Versions ending in a tagged-field section.
    pub flexible: u64,
    /// `size_of` the decoded struct: what one array element costs.
    pub size: usize,
    /// Fields in wire order, each with the versions it is on the wire in.
    pub fields: &'static [Op],
    /// Tagged fields the crate decodes into a field (any other is kept as raw bytes).
    pub tags: &'static [TagDef],
}

pub(crate) struct TagDef {
    pub tag: u32,
    /// Versions this tag is valid in (the crate refuses it in any other).
    pub versions: u64,
    pub fields: &'static [Op],
}

#[derive(Clone, Copy)]
pub(crate) struct Op {
    pub versions: u64,
    pub kind: Kind,
}

pub(crate) const fn op(versions: u64, kind: Kind) -> Op {
    Op { versions, kind }
}

/// How a field is encoded.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Bool,
    Int8,
    Int16,
    UInt16,
    Int32,
    Int64,
    Float64,
    Uuid,
    /// i16 length, -1 for null.
    String,
    /// Unsigned varint length + 1, 0 for null.
    CompactString,
    /// i32 length, -1 for null.
    Bytes,
    CompactBytes,
    /// A nested struct (index into the schema), same version.
    Struct(u16),
    /// An i8 presence marker (1 = present), then the struct.
    OptionStruct(u16),
    /// i32 count, -1 for null.
    Array(Elem),
    /// Unsigned varint count + 1, 0 for null.
    CompactArray(Elem),
}

/// An array element; primitives carry `size_of` the type they decode into.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Elem {
    Int8(usize),
    Int32(usize),
    Int64(usize),
    Uuid(usize),
    String(usize),
    CompactString(usize),
    Struct(u16),
}

impl Elem {
    fn kind(self) -> Kind {
        match self {
            Elem::Int8(_) => Kind::Int8,
            Elem::Int32(_) => Kind::Int32,
            Elem::Int64(_) => Kind::Int64,
            Elem::Uuid(_) => Kind::Uuid,
            Elem::String(_) => Kind::String,
            Elem::CompactString(_) => Kind::CompactString,
            Elem::Struct(i) => Kind::Struct(i),
        }
    }

    fn size(self) -> usize {
        match self {
            Elem::Int8(s)
            | Elem::Int32(s)
            | Elem::Int64(s)
            | Elem::Uuid(s)
            | Elem::String(s)
            | Elem::CompactString(s) => s,
            Elem::Struct(i) => def(i).size,
        }
    }
}

fn def(i: u16) -> &'static StructDef {
    &schema::STRUCTS[usize::from(i)]
}

impl Kind {
    /// Bytes of the fixed-size kinds.
    fn fixed(self) -> Option<usize> {
        match self {
            Kind::Bool | Kind::Int8 => Some(1),
            Kind::Int16 | Kind::UInt16 => Some(2),
            Kind::Int32 => Some(4),
            Kind::Int64 | Kind::Float64 => Some(8),
            Kind::Uuid => Some(16),
            _ => None,
        }
    }

    /// The fewest bytes this field can encode in at `bit`'s version.
    fn min_size(self, bit: u64) -> usize {
        if let Some(n) = self.fixed() {
            return n;
        }
        match self {
            Kind::String => 2,
            Kind::Bytes | Kind::Array(_) => 4,
            Kind::CompactString | Kind::CompactBytes | Kind::CompactArray(_) => 1,
            Kind::OptionStruct(_) => 1,
            Kind::Struct(i) => struct_min_size(def(i), bit),
            _ => 0,
        }
    }
}

fn struct_min_size(s: &StructDef, bit: u64) -> usize {
    let fields: usize = s
        .fields
        .iter()
        .filter(|f| f.versions & bit != 0)
        .map(|f| f.kind.min_size(bit))
        .sum();
    fields + usize::from(s.flexible & bit != 0)
}

struct Walker<'a> {
    buf: &'a [u8],
    pos: usize,
    /// End of what the current field may read: the body, or a tagged field's declared size.
    end: usize,
    heap: usize,
    borrowed: usize,
    limit: usize,
    version: i16,
    bit: u64,
}

impl Walker<'_> {
    fn left(&self) -> usize {
        self.end - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&[u8], BoundsError> {
        if n > self.left() {
            return Err(BoundsError::Truncated {
                at: self.pos,
                need: n as u64,
                left: self.left(),
            });
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn skip_payload(&mut self, n: u64) -> Result<(), BoundsError> {
        let n = usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.left())
            .ok_or(BoundsError::Truncated {
                at: self.pos,
                need: n,
                left: self.left(),
            })?;
        self.pos += n;
        self.borrowed += n;
        Ok(())
    }

    fn i8(&mut self) -> Result<i8, BoundsError> {
        Ok(i8::from_be_bytes([self.take(1)?[0]]))
    }

    fn i16(&mut self) -> Result<i16, BoundsError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, BoundsError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// kafka-protocol's UnsignedVarInt: at most 5 bytes, bits past 32 dropped.
    fn uvarint(&mut self) -> Result<u32, BoundsError> {
        let mut value = 0u32;
        for i in 0..5 {
            let b = u32::from(self.take(1)?[0]);
            value |= (b & 0x7f).wrapping_shl(i * 7);
            if b < 0x80 {
                break;
            }
        }
        Ok(value)
    }

    fn charge(&mut self, bytes: usize) -> Result<(), BoundsError> {
        self.heap = self.heap.saturating_add(bytes);
        if self.heap > self.limit {
            return Err(BoundsError::TooLarge {
                estimate: self.heap,
                limit: self.limit,
            });
        }
        Ok(())
    }

    fn walk_struct(&mut self, s: &'static StructDef) -> Result<(), BoundsError> {
        if s.versions & self.bit == 0 {
            return Err(BoundsError::UnsupportedVersion {
                name: s.name,
                version: self.version,
            });
        }
        self.walk_fields(s.fields)?;
        if s.flexible & self.bit != 0 {
            self.walk_tags(s)?;
        }
        Ok(())
    }

    fn walk_fields(&mut self, fields: &'static [Op]) -> Result<(), BoundsError> {
        let bit = self.bit;
        for field in fields.iter().filter(|f| f.versions & bit != 0) {
            self.walk_kind(field.kind)?;
        }
        Ok(())
    }

    fn walk_tags(&mut self, s: &'static StructDef) -> Result<(), BoundsError> {
        // Each tag takes at least two bytes, so the loop ends with the input.
        let count = self.uvarint()?;
        let mut map_allocated = false;
        for _ in 0..count {
            let tag = self.uvarint()?;
            let size = self.uvarint()?;
            match s.tags.iter().find(|t| t.tag == tag) {
                Some(known) => {
                    if known.versions & self.bit == 0 {
                        return Err(BoundsError::InvalidTag {
                            name: s.name,
                            tag,
                            version: self.version,
                        });
                    }
                    // The crate reads a known tag from the body, ignoring its size; holding
                    // the walk to that size keeps the two in step for any body we accept.
                    let declared = size as usize;
                    if declared > self.left() {
                        return Err(BoundsError::Truncated {
                            at: self.pos,
                            need: u64::from(size),
                            left: self.left(),
                        });
                    }
                    let (outer_end, start) = (self.end, self.pos);
                    self.end = start + declared;
                    self.walk_fields(known.fields)?;
                    let used = self.pos - start;
                    self.end = outer_end;
                    if used != declared {
                        return Err(BoundsError::TagSize {
                            name: s.name,
                            tag,
                            declared,
                            used,
                        });
                    }
                }
                None => {
                    self.skip_payload(u64::from(size))?;
                    let node = if map_allocated { 0 } else { TAG_MAP_NODE };
                    map_allocated = true;
                    self.charge(UNKNOWN_TAG_COST + node)?;
                }
            }
        }
        Ok(())
    }

    fn walk_kind(&mut self, kind: Kind) -> Result<(), BoundsError> {
        if let Some(n) = kind.fixed() {
            self.take(n)?;
            return Ok(());
        }
        let at = self.pos;
        match kind {
            Kind::String => match self.i16()? {
                -1 => {}
                n if n >= 0 => self.skip_payload(n as u64)?,
                n => return Err(BoundsError::NegativeLength { at, len: n.into() }),
            },
            Kind::Bytes => match self.i32()? {
                -1 => {}
                n if n >= 0 => self.skip_payload(n as u64)?,
                n => return Err(BoundsError::NegativeLength { at, len: n.into() }),
            },
            Kind::CompactString | Kind::CompactBytes => match self.uvarint()? {
                0 => {}
                n => self.skip_payload(u64::from(n - 1))?,
            },
            Kind::Struct(i) => self.walk_struct(def(i))?,
            // The guard reads the presence marker; an absent struct ends in `_` below.
            Kind::OptionStruct(i) if self.i8()? == 1 => self.walk_struct(def(i))?,
            Kind::Array(elem) => match self.i32()? {
                -1 => {}
                n if n >= 0 => self.walk_array(at, n as u64, elem)?,
                n => return Err(BoundsError::NegativeLength { at, len: n.into() }),
            },
            Kind::CompactArray(elem) => match self.uvarint()? {
                0 => {}
                n => self.walk_array(at, u64::from(n - 1), elem)?,
            },
            // Fixed sizes, read above, and an absent OptionStruct.
            _ => {}
        }
        Ok(())
    }

    fn walk_array(&mut self, at: usize, count: u64, elem: Elem) -> Result<(), BoundsError> {
        let kind = elem.kind();
        let min = kind.min_size(self.bit);
        let max = self
            .left()
            .checked_div(min)
            .map_or(ZERO_SIZE_ELEMENTS as u64, |n| n as u64);
        if count > max {
            return Err(BoundsError::TooManyElements { at, count, max });
        }
        // count <= left, so this fits in usize.
        let count = count as usize;
        // The crate's Vec::with_capacity(count), before any element is read.
        self.charge(count.saturating_mul(elem.size()))?;
        if let Some(n) = kind.fixed() {
            self.take(count * n)?;
            return Ok(());
        }
        for _ in 0..count {
            self.walk_kind(kind)?;
        }
        Ok(())
    }
}

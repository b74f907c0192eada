//! The schema table against the crate: bodies built from the table for every API key and
//! version must be decoded by kafka-protocol to the last byte the walker read, and what the
//! crate encodes must walk to its end. Then mutants of all of them: whatever the walker
//! accepts, the crate decodes within the estimate (measured by a counting allocator).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestKind};

use super::*;

/// Counts what the current thread allocates while `measure` runs.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // try_with: the allocator also runs while thread-locals are torn down.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCATED.try_with(|a| a.set(a.get().saturating_add(size)));
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

// A counting allocator is the one way to see what decoding allocates.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f`, returning its result with the bytes it allocated and its largest allocation.
fn measure<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    ALLOCATED.with(|a| a.set(0));
    LARGEST.with(|l| l.set(0));
    COUNTING.with(|c| c.set(true));
    let out = f();
    COUNTING.with(|c| c.set(false));
    (out, ALLOCATED.with(Cell::get), LARGEST.with(Cell::get))
}

#[derive(Clone, Copy, PartialEq)]
enum Fill {
    /// Zeros, empty strings and arrays, no tagged fields: close to the crate's defaults.
    Empty,
    /// Two elements per array, non-empty strings, every known tag valid in the version and
    /// one unknown tag.
    Full,
}

const UNKNOWN_TAG: u32 = 1000;

fn put_uvarint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Encodes a body from the table alone.
fn synth_struct(s: &StructDef, bit: u64, fill: Fill, out: &mut Vec<u8>) {
    synth_fields(s.fields, bit, fill, out);
    if s.flexible & bit == 0 {
        return;
    }
    if fill == Fill::Empty {
        out.push(0);
        return;
    }
    let known: Vec<&TagDef> = s.tags.iter().filter(|t| t.versions & bit != 0).collect();
    put_uvarint(out, known.len() as u32 + 1);
    for t in known {
        let mut value = Vec::new();
        synth_fields(t.fields, bit, fill, &mut value);
        put_uvarint(out, t.tag);
        put_uvarint(out, value.len() as u32);
        out.extend_from_slice(&value);
    }
    put_uvarint(out, UNKNOWN_TAG);
    put_uvarint(out, 3);
    out.extend_from_slice(b"xyz");
}

fn synth_fields(fields: &[Op], bit: u64, fill: Fill, out: &mut Vec<u8>) {
    for f in fields.iter().filter(|f| f.versions & bit != 0) {
        synth_kind(f.kind, bit, fill, out);
    }
}

fn synth_kind(kind: Kind, bit: u64, fill: Fill, out: &mut Vec<u8>) {
    let full = fill == Fill::Full;
    match kind {
        Kind::Bool | Kind::Int8 => out.push(u8::from(full)),
        Kind::Int16 | Kind::UInt16 => out.extend_from_slice(&(7 * i16::from(full)).to_be_bytes()),
        Kind::Int32 => out.extend_from_slice(&(7 * i32::from(full)).to_be_bytes()),
        Kind::Int64 => out.extend_from_slice(&(7 * i64::from(full)).to_be_bytes()),
        Kind::Float64 => out.extend_from_slice(&(1.5 * f64::from(u8::from(full))).to_be_bytes()),
        Kind::Uuid => out.extend_from_slice(&[u8::from(full) * 0x11; 16]),
        Kind::String => {
            let s: &[u8] = if full { b"ab" } else { b"" };
            out.extend_from_slice(&(s.len() as i16).to_be_bytes());
            out.extend_from_slice(s);
        }
        Kind::CompactString => {
            let s: &[u8] = if full { b"ab" } else { b"" };
            put_uvarint(out, s.len() as u32 + 1);
            out.extend_from_slice(s);
        }
        Kind::Bytes => {
            let b: &[u8] = if full { b"\x01\x02\x03" } else { b"" };
            out.extend_from_slice(&(b.len() as i32).to_be_bytes());
            out.extend_from_slice(b);
        }
        Kind::CompactBytes => {
            let b: &[u8] = if full { b"\x01\x02\x03" } else { b"" };
            put_uvarint(out, b.len() as u32 + 1);
            out.extend_from_slice(b);
        }
        Kind::Struct(i) => synth_struct(def(i), bit, fill, out),
        Kind::OptionStruct(i) => {
            if full {
                out.push(1);
                synth_struct(def(i), bit, fill, out);
            } else {
                out.push(0xff);
            }
        }
        Kind::Array(elem) | Kind::CompactArray(elem) => {
            let n = if full { 2 } else { 0 };
            if matches!(kind, Kind::Array(_)) {
                out.extend_from_slice(&(n as i32).to_be_bytes());
            } else {
                put_uvarint(out, n + 1);
            }
            for _ in 0..n {
                synth_kind(elem.kind(), bit, fill, out);
            }
        }
    }
}

/// Every (key, version) the crate knows.
fn all_versions() -> Vec<(ApiKey, i16)> {
    ApiKey::iter()
        .flat_map(|key| {
            let range = key.valid_versions();
            (range.min..=range.max).map(move |v| (key, v))
        })
        .collect()
}

/// Bodies the walker and the crate must agree on: built from the table, and re-encoded by
/// the crate.
fn valid_bodies() -> Vec<(ApiKey, i16, Bytes)> {
    let mut out = Vec::new();
    for (key, version) in all_versions() {
        let s = request_def(key).unwrap_or_else(|| panic!("no schema for {key:?}"));
        let bit = version_bit(version).expect("version below 64");
        if s.versions & bit == 0 {
            // ApiKey::valid_versions and the message's decoder disagree (OffsetCommit v10
            // in 0.18): the crate refuses the version outright, and so does the walker.
            let mut any = Bytes::from(vec![0u8; 64]);
            assert!(
                RequestKind::decode(key, &mut any, version).is_err(),
                "{key:?} v{version}"
            );
            assert!(matches!(
                walk(key, version, &any),
                Err(BoundsError::UnsupportedVersion { .. })
            ));
            continue;
        }
        for fill in [Fill::Empty, Fill::Full] {
            let mut body = Vec::new();
            synth_struct(s, bit, fill, &mut body);
            let body = Bytes::from(body);
            let mut buf = body.clone();
            let decoded = RequestKind::decode(key, &mut buf, version)
                .unwrap_or_else(|e| panic!("{key:?} v{version}: the crate refuses {body:?}: {e}"));
            let walked = walk(key, version, &body)
                .unwrap_or_else(|e| panic!("{key:?} v{version}: walker refuses {body:?}: {e}"));
            assert_eq!(
                walked.consumed,
                body.len() - buf.len(),
                "{key:?} v{version}: walker and crate read different lengths of {body:?}"
            );
            assert_eq!(walked.consumed, body.len(), "{key:?} v{version}");
            let mut encoded = BytesMut::new();
            decoded
                .encode(&mut encoded, version)
                .unwrap_or_else(|e| panic!("{key:?} v{version}: re-encode: {e}"));
            let encoded = encoded.freeze();
            let rewalked = walk(key, version, &encoded).unwrap_or_else(|e| {
                panic!("{key:?} v{version}: walker refuses crate's {encoded:?}: {e}")
            });
            assert_eq!(rewalked.consumed, encoded.len(), "{key:?} v{version}");
            if fill == Fill::Full {
                assert_eq!(
                    encoded, body,
                    "{key:?} v{version}: crate re-encodes differently"
                );
            }
            out.push((key, version, body));
        }
    }
    out
}

/// Every (struct, version) a request can contain, and whether it is an array element.
fn reachable() -> Vec<(u16, i16, bool)> {
    fn visit(i: u16, v: i16, element: bool, out: &mut Vec<(u16, i16, bool)>) {
        let bit = 1u64 << v;
        if def(i).versions & bit == 0 || out.contains(&(i, v, element)) {
            return;
        }
        out.push((i, v, element));
        let s = def(i);
        let nested = s
            .fields
            .iter()
            .chain(s.tags.iter().flat_map(|t| t.fields.iter()))
            .filter(|f| f.versions & bit != 0)
            .filter_map(|f| match f.kind {
                Kind::Struct(j) | Kind::OptionStruct(j) => Some((j, false)),
                Kind::Array(Elem::Struct(j)) | Kind::CompactArray(Elem::Struct(j)) => {
                    Some((j, true))
                }
                _ => None,
            });
        for (j, element) in nested.collect::<Vec<_>>() {
            visit(j, v, element, out);
        }
    }
    let mut out = Vec::new();
    for (key, i) in schema::REQUESTS.iter() {
        let range = key.valid_versions();
        for v in range.min..=range.max {
            visit(*i, v, false, &mut out);
        }
    }
    out
}

#[test]
fn schema_covers_every_api_key() {
    for key in ApiKey::iter() {
        assert!(request_def(key).is_some(), "{key:?} has no schema");
    }
    assert_eq!(schema::REQUESTS.len(), ApiKey::iter().count());
}

#[test]
fn walker_and_crate_agree_on_every_api_and_version() {
    let bodies = valid_bodies();
    // Two bodies per version of each of the crate's 87 request types.
    assert!(bodies.len() > 500, "{}", bodies.len());
}

#[test]
fn no_struct_contains_itself() {
    fn visit(i: u16, path: &mut Vec<u16>) {
        assert!(
            !path.contains(&i),
            "{} nests itself: walks would recurse with the input",
            def(i).name
        );
        path.push(i);
        let s = def(i);
        let nested = s
            .fields
            .iter()
            .chain(s.tags.iter().flat_map(|t| t.fields.iter()))
            .filter_map(|f| match f.kind {
                Kind::Struct(j) | Kind::OptionStruct(j) | Kind::Array(Elem::Struct(j)) => Some(j),
                Kind::CompactArray(Elem::Struct(j)) => Some(j),
                _ => None,
            });
        for j in nested {
            visit(j, path);
        }
        path.pop();
    }
    for (_, i) in schema::REQUESTS.iter() {
        visit(*i, &mut Vec::new());
    }
}

/// The largest ratio of decoded size to encoded size of any array element: how much an
/// attacker gains by packing a frame with the smallest elements, which the per-array rule
/// alone allows. No element may encode in nothing (the walker would then cap its count at
/// ZERO_SIZE_ELEMENTS), and a new crate whose elements are much denser needs a look.
#[test]
fn densest_elements() {
    let mut worst = (0.0f64, "", 0i16);
    for (i, v, _) in reachable().into_iter().filter(|r| r.2) {
        let s = def(i);
        let min = struct_min_size(s, 1 << v);
        assert!(min > 0, "{} v{v} may encode in 0 bytes", s.name);
        let ratio = s.size as f64 / min as f64;
        if ratio > worst.0 {
            worst = (ratio, s.name, v);
        }
    }
    println!(
        "densest element: {} v{} at {:.1}x",
        worst.1, worst.2, worst.0
    );
    assert!(
        worst.0 <= 48.0,
        "{} v{} is {:.1}x its encoding",
        worst.1,
        worst.2,
        worst.0
    );
}

/// Issue 10: Metadata v1 whose topics array claims 0x7fffffff entries.
#[test]
fn huge_array_count_is_refused() {
    let frame = hex("000000180003000100000001000a7374726174612d7261777fffffff");
    let body = &frame[4 + 8 + 2 + 10..];
    assert_eq!(
        check(ApiKey::Metadata, 1, body),
        Err(BoundsError::TooManyElements {
            at: 0,
            count: 0x7fff_ffff,
            max: 0
        })
    );
}

#[test]
fn lengths_beyond_the_body_are_refused() {
    // Metadata v1: one topic whose name claims 100 bytes.
    let body = [0, 0, 0, 1, 0, 100, b'a'];
    assert!(matches!(
        check(ApiKey::Metadata, 1, &body),
        Err(BoundsError::Truncated {
            at: 6,
            need: 100,
            left: 1
        })
    ));
    // Flexible Metadata v12: topics count as a varint of 2^32 - 1.
    let body = [0xff, 0xff, 0xff, 0xff, 0x0f];
    assert!(matches!(
        check(ApiKey::Metadata, 12, &body),
        Err(BoundsError::TooManyElements { .. })
    ));
    // Negative string length.
    let body = [0, 0, 0, 1, 0xff, 0xfe];
    assert!(matches!(
        check(ApiKey::Metadata, 1, &body),
        Err(BoundsError::NegativeLength { at: 4, len: -2 })
    ));
}

#[test]
fn known_tag_must_fill_its_declared_size() {
    // Fetch v12 with tag 0 (cluster_id) declaring 5 bytes around a 3-byte string.
    let mut body = Vec::new();
    body.extend_from_slice(&[0; 4 * 4 + 1 + 4 * 2]); // replica..session_epoch
    body.extend_from_slice(&[1, 1, 1]); // no topics, no forgotten topics, empty rack
    body.extend_from_slice(&[1, 0, 5, 3, b'a', b'b', 0, 0]);
    assert!(matches!(
        check(ApiKey::Fetch, 12, &body),
        Err(BoundsError::TagSize {
            tag: 0,
            declared: 5,
            used: 3,
            ..
        })
    ));
    // Tag 1 (replica_state) only exists from v15.
    let mut body = body[..body.len() - 8].to_vec();
    body.extend_from_slice(&[1, 1, 13, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    assert!(matches!(
        check(ApiKey::Fetch, 12, &body),
        Err(BoundsError::InvalidTag { tag: 1, .. })
    ));
    let mut v15 = body[4..].to_vec(); // no replica_id from v15
    assert_eq!(
        walk(ApiKey::Fetch, 15, &v15).map(|w| w.consumed),
        Ok(v15.len())
    );
    v15.pop();
    assert!(walk(ApiKey::Fetch, 15, &v15).is_err());
}

#[test]
fn estimate_counts_array_buffers() {
    // Metadata v1 with three topics: one Vec of three MetadataRequestTopic.
    let body = [0, 0, 0, 3, 0, 1, b'a', 0, 1, b'b', 0xff, 0xff];
    let w = walk(ApiKey::Metadata, 1, &body).expect("valid");
    let topic =
        std::mem::size_of::<kafka_protocol::messages::metadata_request::MetadataRequestTopic>();
    assert_eq!(w.heap, 3 * topic);
    assert_eq!(w.borrowed, 2);
    let mut buf = Bytes::copy_from_slice(&body);
    let (decoded, allocated, _) = measure(|| RequestKind::decode(ApiKey::Metadata, &mut buf, 1));
    assert!(decoded.is_ok());
    // The first split of a Vec-backed `Bytes` allocates its shared header.
    assert!(allocated <= w.heap + 64, "{allocated} > {}", w.heap);
}

/// A tiny deterministic generator, so the mutation test is the same on every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut XorShift, body: &[u8]) -> Vec<u8> {
    let mut m = body.to_vec();
    let at = rng.below(m.len() + 1);
    match rng.below(7) {
        0 if !m.is_empty() => {
            let i = rng.below(m.len());
            m[i] ^= 1 << rng.below(8);
        }
        1 => m.truncate(at),
        2 => {
            let huge: &[u8] = match rng.below(5) {
                0 => &[0x7f, 0xff, 0xff, 0xff],
                1 => &[0xff, 0xff, 0xff, 0xff],
                2 => &[0x80, 0x00, 0x00, 0x00],
                3 => &[0xff, 0xff, 0xff, 0xff, 0x0f],
                _ => &[0x00, 0x10, 0x00, 0x00],
            };
            let end = (at + huge.len()).min(m.len());
            m.splice(at..end, huge.iter().copied());
        }
        3 => {
            let n = 1 + rng.below(8);
            let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            m.splice(at..at, junk);
        }
        4 if !m.is_empty() => {
            let i = rng.below(m.len());
            m[i] = rng.next() as u8;
        }
        5 => {
            // A varint with its continuation bit set on every byte.
            m.splice(at..at, [0x80, 0x80, 0x80, 0x80, 0x10]);
        }
        _ => {
            if !m.is_empty() {
                let i = rng.below(m.len());
                m.remove(i);
            }
        }
    }
    m
}

/// Whatever the walker accepts, the crate decodes without a large allocation: never more
/// than the walker's estimate plus a little (error messages, map nodes).
#[test]
fn mutants_accepted_decode_within_the_estimate() {
    let bodies = valid_bodies();
    let mut rng = XorShift(0x05ee_d0f5_7a7a);
    let (mut accepted, mut refused, mut cases, mut decoded) = (0usize, 0, 0, 0);
    for round in 0..10 {
        for (key, version, body) in &bodies {
            let mut m = mutate(&mut rng, body);
            if round >= 5 {
                // Stack mutations for a wider spread.
                m = mutate(&mut rng, &m);
                m = mutate(&mut rng, &m);
            }
            cases += 1;
            match walk(*key, *version, &m) {
                Err(_) => refused += 1,
                Ok(w) => {
                    accepted += 1;
                    let mut buf = Bytes::from(m.clone());
                    let (ok, allocated, largest) =
                        measure(|| RequestKind::decode(*key, &mut buf, *version).is_ok());
                    decoded += usize::from(ok);
                    // The first split of a Vec-backed `Bytes` allocates its shared header;
                    // a failed decode allocates its error (and a backtrace when
                    // RUST_BACKTRACE is set).
                    let bound = w.heap + if ok { 64 } else { 256 * 1024 };
                    assert!(
                        allocated <= bound && largest <= limit(m.len()),
                        "{key:?} v{version}: {m:?} allocated {allocated} (largest {largest}), \
                         estimate {}",
                        w.heap
                    );
                }
            }
        }
    }
    assert!(cases > 5000, "{cases}");
    println!("{cases} mutants: {refused} refused, {accepted} accepted, {decoded} decoded");
    assert!(
        accepted > 500 && refused > 500,
        "accepted {accepted}, refused {refused}"
    );
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

//! The binary encoding of everything the metadata writes or sends: Raft log records, local
//! snapshots, the snapshot shipped to the bucket, and Raft RPC frames.
//!
//! Every blob is `[4-byte magic][u16 LE format version][postcard payload]`. The magic says
//! what the blob is, so that a file or frame handed to the wrong reader (or a JSON file of
//! format 1) is refused with a message naming it instead of being misread; the version
//! lets a later build change the layout and still tell old from new.
//!
//! postcard is not self-describing: fields are written in declaration order with no names
//! or tags, so `#[serde(default)]`, `skip_serializing_if`, `untagged` and `flatten` must not
//! be used on any type that goes through here. A change to such a type's fields is a new
//! format version.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Format 1 was JSON with no header; 2 is this header + postcard; 3 adds enum variants
/// at the end (`Command::CommitGroupOffsets`, `ClusterCommand::ExpireSilent`,
/// `StateError::NotCoordinator`) and changes nothing else; 4 appends `Command::Clean` and
/// `ObjectKind::Cleaned` (the log cleaner) in the same way; 5 appends the security and
/// listener commands and one trailing field to the state (`MetadataState::access`), which
/// a format 2–4 blob does not hold: [`decoding_format`] tells that field's decoder; 6
/// appends the transaction commands and fields (`MetadataState::txns`,
/// `Partition::txns`, `SegmentCommit::txn`) the same way; 7 appends variants only
/// (`Command::CompactShared`, `Response::SharedCompacted`, `ObjectKind::Shared`: shared
/// compacted objects), so a format 6 blob decodes unchanged; 8 appends
/// `ClusterCommand::Forget` and the `Members` Raft request and reply (a fleet's dead
/// brokers and learners are forgotten) the same way; 9 appends
/// `Command::CompactArchiving` and `Command::CompactSharedArchiving` (compactions that move
/// aborted transactions out of the state into segment footers) the same way; 10 appends
/// `Command::PutConsumerGroup` and one trailing field to the state
/// (`MetadataState::consumer_groups`, KIP-848 groups), read as empty from older blobs; 11
/// appends `Command::AlterGroupConfigs` and one trailing field to the state
/// (`MetadataState::group_configs`, GROUP config resources) the same way.
pub const FORMAT_VERSION: u16 = 11;
/// The oldest format this build decodes as the current one. postcard writes an enum
/// variant as its index, so a format 2 or 3 blob, which cannot hold the variants later
/// formats appended, decodes unchanged with the current types: old logs, snapshots and frames
/// are read as they are (and rewritten in the current format when next written). An older
/// build refuses newer blobs, so the brokers of one cluster must all run the new format
/// before any of them writes a new variant.
pub const OLDEST_READABLE: u16 = 2;
/// Magic + version.
pub const HEADER_LEN: usize = 6;

/// What a blob holds; each has its own magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One record of `raft.log`.
    LogRecord,
    /// `snapshot.bin` in the Raft directory, also the bytes of an InstallSnapshot.
    LocalSnapshot,
    /// The snapshot copied to the object store.
    ShippedSnapshot,
    /// A frame on the Raft network.
    RaftRpc,
    /// Committed Raft entries shipped to the object store after a snapshot.
    LogChunk,
}

impl Kind {
    pub const fn magic(self) -> [u8; 4] {
        match self {
            Kind::LogRecord => *b"STLG",
            Kind::LocalSnapshot => *b"STSN",
            Kind::ShippedSnapshot => *b"STSH",
            Kind::RaftRpc => *b"STRP",
            Kind::LogChunk => *b"STLC",
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Kind::LogRecord => "metadata log record",
            Kind::LocalSnapshot => "metadata snapshot",
            Kind::ShippedSnapshot => "shipped metadata snapshot",
            Kind::RaftRpc => "raft message",
            Kind::LogChunk => "shipped metadata log chunk",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("not a Strata {expected} (found {found})")]
    WrongMagic {
        expected: &'static str,
        found: String,
    },
    #[error(
        "{kind} written by a newer Strata (format {version}, this build reads up to {FORMAT_VERSION})"
    )]
    Newer { kind: &'static str, version: u16 },
    #[error(
        "{kind} has unsupported format {version} (this build reads formats {OLDEST_READABLE} to {FORMAT_VERSION})"
    )]
    Unsupported { kind: &'static str, version: u16 },
    #[error("corrupt {kind}: {reason}")]
    Corrupt { kind: &'static str, reason: String },
    #[error("cannot encode {kind}: {reason}")]
    Encode { kind: &'static str, reason: String },
}

pub fn encode<T: Serialize + ?Sized>(kind: Kind, value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&kind.magic());
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    postcard::to_extend(value, out).map_err(|e| CodecError::Encode {
        kind: kind.name(),
        reason: e.to_string(),
    })
}

/// Decodes a whole blob; trailing bytes are corruption.
pub fn decode<T: DeserializeOwned>(kind: Kind, bytes: &[u8]) -> Result<T, CodecError> {
    let (value, rest) = decode_prefix(kind, bytes)?;
    if !rest.is_empty() {
        return Err(CodecError::Corrupt {
            kind: kind.name(),
            reason: format!("{} unexpected bytes at the end", rest.len()),
        });
    }
    Ok(value)
}

/// Decodes a `T` from the start of the payload and returns the bytes after it: reads the
/// leading fields of a larger struct (a snapshot's meta) without decoding the rest.
pub fn decode_prefix<T: DeserializeOwned>(
    kind: Kind,
    bytes: &[u8],
) -> Result<(T, &[u8]), CodecError> {
    let (version, payload) = check_header(kind, bytes)?;
    let _format = DecodingFormat::set(version);
    postcard::take_from_bytes(payload).map_err(|e| CodecError::Corrupt {
        kind: kind.name(),
        reason: e.to_string(),
    })
}

thread_local! {
    static DECODING: std::cell::Cell<u16> = const { std::cell::Cell::new(FORMAT_VERSION) };
}

/// The format of the blob being decoded on this thread (the current format outside a
/// [`decode`]): lets a field added by a later format read as its default from an older
/// blob, which postcard, with no field names or lengths, cannot tell by itself.
pub fn decoding_format() -> u16 {
    DECODING.with(|d| d.get())
}

/// Sets [`decoding_format`] for one decode; restores the previous value when dropped (a
/// decode may nest: a Raft frame carrying a snapshot's bytes).
struct DecodingFormat(u16);

impl DecodingFormat {
    fn set(version: u16) -> Self {
        Self(DECODING.with(|d| d.replace(version)))
    }
}

impl Drop for DecodingFormat {
    fn drop(&mut self) {
        DECODING.with(|d| d.set(self.0));
    }
}

/// For a field appended in format `N`: decoded only from a blob of format `N` or later,
/// else its default, without reading a byte.
fn since<'de, const N: u16, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de> + Default,
{
    if decoding_format() < N {
        Ok(T::default())
    } else {
        T::deserialize(deserializer)
    }
}

/// A field appended in format 5 ([`since`]).
pub fn since_format_5<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de> + Default,
{
    since::<5, D, T>(deserializer)
}

/// A field appended in format 6 ([`since`]).
pub fn since_format_6<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de> + Default,
{
    since::<6, D, T>(deserializer)
}

/// A field appended in format 10 ([`since`]).
pub fn since_format_10<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de> + Default,
{
    since::<10, D, T>(deserializer)
}

/// A field appended in format 11 ([`since`]).
pub fn since_format_11<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de> + Default,
{
    since::<11, D, T>(deserializer)
}

fn check_header(kind: Kind, bytes: &[u8]) -> Result<(u16, &[u8]), CodecError> {
    let magic = kind.magic();
    if bytes.get(..4) != Some(&magic[..]) {
        let head = &bytes[..bytes.len().min(4)];
        let found = if head.is_empty() {
            "nothing".to_owned()
        } else {
            format!("\"{}\"", head.escape_ascii())
        };
        return Err(CodecError::WrongMagic {
            expected: kind.name(),
            found,
        });
    }
    let Some(&[lo, hi]) = bytes.get(4..HEADER_LEN) else {
        return Err(CodecError::Corrupt {
            kind: kind.name(),
            reason: "truncated header".to_owned(),
        });
    };
    match u16::from_le_bytes([lo, hi]) {
        version @ OLDEST_READABLE..=FORMAT_VERSION => Ok((version, &bytes[HEADER_LEN..])),
        version if version > FORMAT_VERSION => Err(CodecError::Newer {
            kind: kind.name(),
            version,
        }),
        version => Err(CodecError::Unsupported {
            kind: kind.name(),
            version,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Sample {
        name: String,
        values: Vec<i64>,
        map: BTreeMap<i32, Option<String>>,
        id: [u8; 16],
    }

    fn sample() -> Sample {
        Sample {
            name: "fixture".into(),
            values: vec![0, -1, i64::MAX],
            map: BTreeMap::from([(0, None), (7, Some("meta".into()))]),
            id: [9; 16],
        }
    }

    #[test]
    fn round_trip() -> Result<(), CodecError> {
        for kind in [
            Kind::LogRecord,
            Kind::LocalSnapshot,
            Kind::ShippedSnapshot,
            Kind::RaftRpc,
        ] {
            let bytes = encode(kind, &sample())?;
            assert_eq!(&bytes[..4], &kind.magic());
            assert_eq!(decode::<Sample>(kind, &bytes)?, sample());
        }
        Ok(())
    }

    #[test]
    fn wrong_magic_names_both() -> Result<(), CodecError> {
        let bytes = encode(Kind::LogRecord, &sample())?;
        let err = decode::<Sample>(Kind::ShippedSnapshot, &bytes)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("not a Strata shipped metadata snapshot (found \"STLG\")")
        );
        let json = br#"{"format":1}"#;
        let err = decode::<Sample>(Kind::ShippedSnapshot, json)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("not a Strata shipped metadata snapshot (found \"{\\\"fo\")")
        );
        Ok(())
    }

    #[test]
    fn newer_version_is_refused() -> Result<(), CodecError> {
        let mut bytes = encode(Kind::LocalSnapshot, &sample())?;
        bytes[4..6].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        match decode::<Sample>(Kind::LocalSnapshot, &bytes) {
            Err(e @ CodecError::Newer { version: 12, .. }) => assert_eq!(
                e.to_string(),
                "metadata snapshot written by a newer Strata (format 12, this build reads up to 11)"
            ),
            other => panic!("expected Newer, got {other:?}"),
        }
        bytes[4..6].copy_from_slice(&1u16.to_le_bytes());
        assert!(matches!(
            decode::<Sample>(Kind::LocalSnapshot, &bytes),
            Err(CodecError::Unsupported { version: 1, .. })
        ));
        Ok(())
    }

    /// Format 3 only appended enum variants: a format 2 blob decodes with today's types.
    #[test]
    fn format_2_blobs_are_read() -> Result<(), CodecError> {
        let mut bytes = encode(Kind::RaftRpc, &sample())?;
        bytes[4..6].copy_from_slice(&2u16.to_le_bytes());
        assert_eq!(decode::<Sample>(Kind::RaftRpc, &bytes)?, sample());
        Ok(())
    }

    #[test]
    fn trailing_bytes_are_corrupt_but_prefix_reads_them() -> Result<(), CodecError> {
        let mut bytes = encode(Kind::RaftRpc, &sample())?;
        bytes.extend_from_slice(b"xyz");
        assert!(matches!(
            decode::<Sample>(Kind::RaftRpc, &bytes),
            Err(CodecError::Corrupt { .. })
        ));
        let (value, rest) = decode_prefix::<Sample>(Kind::RaftRpc, &bytes)?;
        assert_eq!(value, sample());
        assert_eq!(rest, b"xyz");
        Ok(())
    }

    #[test]
    fn every_truncation_is_an_error() -> Result<(), CodecError> {
        let bytes = encode(Kind::LogRecord, &sample())?;
        for len in 0..bytes.len() {
            assert!(decode::<Sample>(Kind::LogRecord, &bytes[..len]).is_err());
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn garbage_never_panics(payload in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut bytes = Kind::LogRecord.magic().to_vec();
            bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
            bytes.extend_from_slice(&payload);
            let _ = decode::<Sample>(Kind::LogRecord, &bytes);
            let _ = decode::<Sample>(Kind::LogRecord, &payload);
        }

        #[test]
        fn flipped_bytes_never_panic(pos in 0usize..4096, bit in 0u8..8) {
            let bytes = encode(Kind::LogRecord, &sample()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut bytes = bytes;
            let pos = pos % bytes.len();
            bytes[pos] ^= 1 << bit;
            let _ = decode::<Sample>(Kind::LogRecord, &bytes);
        }
    }
}

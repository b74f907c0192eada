//! The record codecs of Kafka's batch format (attributes bits 0–2), with decompression
//! bounded: a stored or produced batch is only inflated by the log cleaner and by the
//! keyless-record check of compacted topics, and neither may be made to allocate more than
//! `limit` bytes by a small, hostile batch.

use std::io::{Read, Write};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("unknown compression codec {0}")]
    Unknown(u8),
    #[error("records inflate beyond {0} bytes")]
    TooLarge(usize),
    #[error("{codec} data is not valid: {message}")]
    Invalid {
        codec: &'static str,
        message: String,
    },
}

/// A batch's compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None,
    Gzip,
    /// Raw snappy, or xerial's framing (what the Java client writes); kept as found.
    Snappy {
        framed: bool,
    },
    Lz4,
    Zstd,
}

/// xerial snappy-java's stream header.
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_LEN: usize = 16;
const XERIAL_BLOCK: usize = 32 * 1024;

impl Codec {
    /// The codec of a batch whose attributes carry `bits` (0–4), given its record bytes
    /// (snappy's framing is told by them).
    pub fn from_attributes(bits: u8, data: &[u8]) -> Result<Self, CodecError> {
        Ok(match bits {
            0 => Codec::None,
            1 => Codec::Gzip,
            2 => Codec::Snappy {
                framed: data.starts_with(XERIAL_MAGIC),
            },
            3 => Codec::Lz4,
            4 => Codec::Zstd,
            other => return Err(CodecError::Unknown(other)),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Codec::None => "uncompressed",
            Codec::Gzip => "gzip",
            Codec::Snappy { .. } => "snappy",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        }
    }

    fn invalid(self, e: impl std::fmt::Display) -> CodecError {
        CodecError::Invalid {
            codec: self.name(),
            message: e.to_string(),
        }
    }

    /// The records of a batch, inflated; refused past `limit` bytes.
    pub fn decompress(self, data: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
        match self {
            Codec::None => {
                if data.len() > limit {
                    return Err(CodecError::TooLarge(limit));
                }
                Ok(data.to_vec())
            }
            Codec::Gzip => read_bounded(flate2::read::GzDecoder::new(data), limit, self),
            Codec::Lz4 => read_bounded(lz4_flex::frame::FrameDecoder::new(data), limit, self),
            Codec::Zstd => {
                let decoder =
                    zstd::stream::read::Decoder::new(data).map_err(|e| self.invalid(e))?;
                read_bounded(decoder, limit, self)
            }
            Codec::Snappy { framed: false } => snappy_block(data, limit, Vec::new(), self),
            Codec::Snappy { framed: true } => {
                let mut out = Vec::new();
                let mut rest = data
                    .get(XERIAL_HEADER_LEN..)
                    .ok_or_else(|| self.invalid("xerial header cut short"))?;
                while !rest.is_empty() {
                    let (len, body) = rest
                        .split_at_checked(4)
                        .ok_or_else(|| self.invalid("xerial block length cut short"))?;
                    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                    let (block, after) = body
                        .split_at_checked(len)
                        .ok_or_else(|| self.invalid("xerial block cut short"))?;
                    out = snappy_block(block, limit, out, self)?;
                    rest = after;
                }
                Ok(out)
            }
        }
    }

    /// Records compressed with this codec (the same framing as was read).
    pub fn compress(self, data: &[u8]) -> Result<Vec<u8>, CodecError> {
        match self {
            Codec::None => Ok(data.to_vec()),
            Codec::Gzip => {
                let mut e =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(data).map_err(|e| self.invalid(e))?;
                e.finish().map_err(|e| self.invalid(e))
            }
            Codec::Lz4 => {
                let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
                e.write_all(data).map_err(|e| self.invalid(e))?;
                e.finish().map_err(|e| self.invalid(e))
            }
            Codec::Zstd => zstd::stream::encode_all(data, 0).map_err(|e| self.invalid(e)),
            Codec::Snappy { framed: false } => snap::raw::Encoder::new()
                .compress_vec(data)
                .map_err(|e| self.invalid(e)),
            Codec::Snappy { framed: true } => {
                // xerial's header: magic, version 1, compatible version 1.
                let mut out = XERIAL_MAGIC.to_vec();
                out.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
                for block in data.chunks(XERIAL_BLOCK) {
                    let compressed = snap::raw::Encoder::new()
                        .compress_vec(block)
                        .map_err(|e| self.invalid(e))?;
                    out.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
                    out.extend_from_slice(&compressed);
                }
                Ok(out)
            }
        }
    }
}

fn read_bounded(reader: impl Read, limit: usize, codec: Codec) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| codec.invalid(e))?;
    if out.len() > limit {
        return Err(CodecError::TooLarge(limit));
    }
    Ok(out)
}

/// One raw snappy block appended to `out`; its inflated size is in its header, checked
/// before anything is allocated.
fn snappy_block(
    block: &[u8],
    limit: usize,
    mut out: Vec<u8>,
    codec: Codec,
) -> Result<Vec<u8>, CodecError> {
    let len = snap::raw::decompress_len(block).map_err(|e| codec.invalid(e))?;
    if out.len().saturating_add(len) > limit {
        return Err(CodecError::TooLarge(limit));
    }
    let at = out.len();
    out.resize(at + len, 0);
    let written = snap::raw::Decoder::new()
        .decompress(block, &mut out[at..])
        .map_err(|e| codec.invalid(e))?;
    out.truncate(at + written);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> [Codec; 6] {
        [
            Codec::None,
            Codec::Gzip,
            Codec::Snappy { framed: false },
            Codec::Snappy { framed: true },
            Codec::Lz4,
            Codec::Zstd,
        ]
    }

    #[test]
    fn every_codec_round_trips_and_is_recognised() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for codec in all() {
            let packed = codec.compress(&data).unwrap();
            let bits = match codec {
                Codec::None => 0,
                Codec::Gzip => 1,
                Codec::Snappy { .. } => 2,
                Codec::Lz4 => 3,
                Codec::Zstd => 4,
            };
            assert_eq!(Codec::from_attributes(bits, &packed).unwrap(), codec);
            assert_eq!(codec.decompress(&packed, data.len()).unwrap(), data);
        }
    }

    #[test]
    fn inflation_past_the_limit_is_refused() {
        let zeros = vec![0u8; 1 << 20];
        for codec in all() {
            let packed = codec.compress(&zeros).unwrap();
            assert_eq!(
                codec.decompress(&packed, 1000).unwrap_err(),
                CodecError::TooLarge(1000),
                "{codec:?}"
            );
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let junk = [
            0x82u8, b'S', b'N', b'A', b'P', b'P', b'Y', 0, 1, 2, 3, 4, 5, 6, 7, 8, 255, 255, 255,
            255, 1,
        ];
        for codec in all() {
            if codec != Codec::None {
                assert!(codec.decompress(&junk, 1 << 20).is_err(), "{codec:?}");
                assert!(codec.decompress(&junk[..3], 1 << 20).is_err(), "{codec:?}");
            }
        }
        assert_eq!(Codec::from_attributes(5, &[]), Err(CodecError::Unknown(5)));
    }
}

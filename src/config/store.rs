//! The object store's settings that other modules read as types.

/// Server-side encryption S3 applies to every object Strata writes (PUTs and multipart
/// uploads alike). Built from the checked `s3_sse*` settings, so a KMS mode always has
/// its key and a bucket key only goes with SSE-KMS (DSSE-KMS has none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ServerSideEncryption {
    /// No encryption headers: the bucket's default encryption applies.
    #[default]
    None,
    /// SSE-S3 (`AES256`), keys managed by S3.
    S3,
    /// SSE-KMS (`aws:kms`) with this key id, alias or ARN; `bucket_key` overrides the
    /// bucket's S3 Bucket Key setting when given.
    Kms {
        key_id: String,
        bucket_key: Option<bool>,
    },
    /// Dual-layer DSSE-KMS (`aws:kms:dsse`) with this key id, alias or ARN.
    DsseKms { key_id: String },
}

impl ServerSideEncryption {
    /// The `x-amz-server-side-encryption` value S3 reports back, for logs.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Self::None => "bucket default",
            Self::S3 => "AES256",
            Self::Kms { .. } => "aws:kms",
            Self::DsseKms { .. } => "aws:kms:dsse",
        }
    }
}

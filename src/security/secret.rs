//! The cluster secret that authenticates the Raft port (`metadata::raft::auth` proves it and
//! keys each connection's frame MACs with it). Read from `--cluster-secret-file`.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// A secret shorter than this is refused: it could be guessed.
pub const MIN_SECRET_LEN: usize = 16;

/// The cluster secret; Debug never prints it.
#[derive(Clone)]
pub struct ClusterSecret(Arc<[u8]>);

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read it: {0}")]
    Read(#[from] io::Error),
    #[error(
        "it holds {0} bytes; use at least {MIN_SECRET_LEN} (e.g. `openssl rand -hex 32 > FILE`)"
    )]
    TooShort(usize),
}

impl ClusterSecret {
    /// Reads the secret from `path`; trailing whitespace (an editor's newline) is not part
    /// of it, so the same file works whichever way it was written.
    pub fn load(path: &Path) -> Result<Self, SecretError> {
        let bytes = std::fs::read(path)?;
        let len = bytes
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        Self::from_bytes(&bytes[..len])
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SecretError> {
        if bytes.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort(bytes.len()));
        }
        Ok(Self(bytes.into()))
    }

    /// The key material, for the MACs that prove it (`metadata::raft::auth`).
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

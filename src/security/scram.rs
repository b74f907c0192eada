//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677) as Kafka uses them.

use serde::{Deserialize, Serialize};

/// The SCRAM mechanisms, with Kafka's `ScramMechanism` wire codes
/// (DescribeUserScramCredentials / AlterUserScramCredentials).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Mechanism {
    Sha256 = 1,
    Sha512 = 2,
}

/// What the server keeps for a user and mechanism: never the password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredential {
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
    pub iterations: u32,
}

/// Kafka's accepted iteration counts for AlterUserScramCredentials.
pub const MIN_ITERATIONS: u32 = 4096;
pub const MAX_ITERATIONS: u32 = 16384;

impl Mechanism {
    /// `SCRAM-SHA-256` / `SCRAM-SHA-512`.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Sha256 => "SCRAM-SHA-256",
            Mechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_code(code: i8) -> Option<Self> {
        match code {
            1 => Some(Mechanism::Sha256),
            2 => Some(Mechanism::Sha512),
            _ => None,
        }
    }
}

impl ScramCredential {
    /// From what AlterUserScramCredentials sends: the salt and SaltedPassword
    /// (Hi(password, salt, iterations)). Stub until the real derivation lands.
    pub fn from_salted_password(
        _mechanism: Mechanism,
        salted_password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> Self {
        Self {
            salt: salt.to_vec(),
            stored_key: salted_password.to_vec(),
            server_key: salted_password.to_vec(),
            iterations,
        }
    }

    /// From a password (the bootstrap admin user), with a fresh random salt. Stub.
    pub fn from_password(mechanism: Mechanism, password: &str, iterations: u32) -> Self {
        Self::from_salted_password(mechanism, password.as_bytes(), b"stub-salt", iterations)
    }
}

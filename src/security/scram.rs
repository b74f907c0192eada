//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677) as Kafka uses them.

use hmac::{EagerHash, Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};

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

    /// H(data).
    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Mechanism::Sha256 => Sha256::digest(data).to_vec(),
            Mechanism::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// HMAC(key, data).
    pub fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            Mechanism::Sha256 => hmac_with::<Sha256>(key, data),
            Mechanism::Sha512 => hmac_with::<Sha512>(key, data),
        }
    }

    /// Hi(password, salt, iterations) of RFC 5802 (PBKDF2 with a single output block).
    pub fn hi(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            Mechanism::Sha256 => hi_with::<Sha256>(password, salt, iterations),
            Mechanism::Sha512 => hi_with::<Sha512>(password, salt, iterations),
        }
    }
}

fn keyed<D: EagerHash>(key: &[u8]) -> Hmac<D> {
    match <Hmac<D> as KeyInit>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    }
}

fn hmac_with<D: EagerHash>(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = keyed::<D>(key);
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hi_with<D: EagerHash>(password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    // Key the HMAC once and clone it per round: the password's key schedule is the
    // same every iteration, and re-keying would double the cost of each round.
    let prf = keyed::<D>(password);
    let mut mac = prf.clone();
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut u = mac.finalize().into_bytes().to_vec();
    let mut result = u.clone();
    for _ in 1..iterations {
        let mut mac = prf.clone();
        mac.update(&u);
        u = mac.finalize().into_bytes().to_vec();
        for (r, x) in result.iter_mut().zip(&u) {
            *r ^= x;
        }
    }
    result
}

impl ScramCredential {
    /// From what AlterUserScramCredentials sends: the salt and SaltedPassword
    /// (Hi(password, salt, iterations)).
    pub fn from_salted_password(
        mechanism: Mechanism,
        salted_password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> Self {
        let client_key = mechanism.hmac(salted_password, b"Client Key");
        Self {
            salt: salt.to_vec(),
            stored_key: mechanism.hash(&client_key),
            server_key: mechanism.hmac(salted_password, b"Server Key"),
            iterations,
        }
    }

    /// From a password (the bootstrap admin user), with a fresh random 32-byte salt.
    #[allow(clippy::expect_used)] // see below: no OS random source, no broker
    pub fn from_password(mechanism: Mechanism, password: &str, iterations: u32) -> Self {
        let mut salt = [0u8; 32];
        // Only reached at startup for the bootstrap user; without an OS random
        // source the broker cannot make nonces either, so stopping is right.
        getrandom::fill(&mut salt).expect("the OS random source is available");
        let salted = mechanism.hi(password.as_bytes(), &salt, iterations);
        Self::from_salted_password(mechanism, &salted, &salt, iterations)
    }

    /// Whether `password` is the one this credential was made from.
    pub fn verify_password(&self, mechanism: Mechanism, password: &[u8]) -> bool {
        let salted = mechanism.hi(password, &self.salt, self.iterations);
        let client_key = mechanism.hmac(&salted, b"Client Key");
        constant_time_eq(&mechanism.hash(&client_key), &self.stored_key)
    }
}

/// Equality whose time depends only on the lengths, so a proof or key comparison does
/// not tell an attacker how many leading bytes were right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648 section 4), as SCRAM uses.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Strict standard base64 with padding: `None` for anything else, including non-zero
/// trailing bits, so each value has exactly one accepted encoding.
pub fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let value = |c: u8| B64.iter().position(|&x| x == c).map(|p| p as u32);
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let groups = text.len() / 4;
    for (g, chunk) in text.chunks(4).enumerate() {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && g + 1 != groups) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        let keep = 3 - pad;
        // The bits below the last kept byte must be zero.
        if bytes[keep..].iter().any(|&b| b != 0) {
            return None;
        }
        out.extend_from_slice(&bytes[..keep]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn hex(data: &[u8]) -> String {
        data.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn base64_round_trips_and_rejects_junk() -> TestResult {
        for (raw, enc) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(raw), enc);
            assert_eq!(base64_decode(enc.as_bytes()).ok_or("decode")?, raw);
        }
        for bad in ["Zg=", "Zh==", "Z===", "Zg==Zg==", "Zm9*", "Zm 9"] {
            assert_eq!(base64_decode(bad.as_bytes()), None, "{bad}");
        }
        Ok(())
    }

    #[test]
    fn hi_matches_pbkdf2_hmac_sha256_vector() {
        // RFC 7914 section 11, PBKDF2-HMAC-SHA256 with c = 1 (first 32 bytes).
        let out = Mechanism::Sha256.hi(b"passwd", b"salt", 1);
        assert_eq!(
            hex(&out),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
        );
    }

    #[test]
    fn hi_matches_pbkdf2_hmac_sha512_vector() {
        // PBKDF2-HMAC-SHA512("password", "salt", 2), first 64 bytes.
        let out = Mechanism::Sha512.hi(b"password", b"salt", 2);
        assert_eq!(
            hex(&out),
            "e1d9c16aa681708a45f5c7c4e215ceb66e011a2e9f0040713f18aefdb866d53c\
             f76cab2868a39b9f7840edce4fef5a82be67335c77a6068e04112754f27ccf4e"
        );
    }

    #[test]
    fn credential_from_password_verifies_only_that_password() {
        for mechanism in [Mechanism::Sha256, Mechanism::Sha512] {
            let cred = ScramCredential::from_password(mechanism, "secret", MIN_ITERATIONS);
            assert_eq!(cred.salt.len(), 32);
            assert_eq!(cred.iterations, MIN_ITERATIONS);
            assert!(cred.verify_password(mechanism, b"secret"));
            assert!(!cred.verify_password(mechanism, b"Secret"));
            let other = ScramCredential::from_password(mechanism, "secret", MIN_ITERATIONS);
            assert_ne!(cred.salt, other.salt, "each credential gets a fresh salt");
        }
    }

    #[test]
    fn mechanism_codes() {
        assert_eq!(Mechanism::from_code(1), Some(Mechanism::Sha256));
        assert_eq!(Mechanism::from_code(2), Some(Mechanism::Sha512));
        assert_eq!(Mechanism::from_code(0), None);
        assert_eq!(Mechanism::Sha512.name(), "SCRAM-SHA-512");
    }
}

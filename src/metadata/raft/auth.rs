//! Authentication of the Raft port by a shared cluster secret.
//!
//! When `--cluster-secret-file` is set, every Raft connection starts with a mutual
//! challenge-response before any Raft frame:
//!
//! ```text
//! client -> server  HELLO  "STAH" | version | role | node id (u64 BE) | client nonce (32)
//! server -> client  HELLO  "STAH" | version | role | node id (u64 BE) | server nonce (32)
//!                          | HMAC(secret, "server" context | client nonce | server nonce | role | id)
//! client -> server  PROOF  HMAC(secret, "client" context | client nonce | server nonce | role | id)
//! server -> client  VERDICT 1 (accepted) or 0 (refused, then closed)
//! ```
//!
//! Each side proves the secret over a nonce the other just chose, so a recorded handshake
//! cannot be replayed; the two contexts differ, so one side's proof cannot be reflected
//! back as the other's. MACs are compared in constant time (`Mac::verify_slice`). The
//! secret never crosses the wire.
//!
//! Every frame after the handshake carries a MAC (`FrameMac`) under a key per direction
//! derived from the secret and both nonces, over its sequence number and bytes: an
//! attacker on the path can read frames (unless `raft_tls` wraps the connection in TLS)
//! but not alter, inject, drop, reorder or replay them without the connection being
//! closed.

use std::fmt;
use std::io;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::NodeId;
pub use crate::security::secret::{ClusterSecret, SecretError};

pub const MAGIC: [u8; 4] = *b"STAH";
const VERSION: u8 = 1;
const NONCE_LEN: usize = 32;
const MAC_LEN: usize = 32;
const HELLO_LEN: usize = 4 + 1 + 1 + 8 + NONCE_LEN;
const CLIENT_CONTEXT: &[u8] = b"strata raft handshake v1 client";
const SERVER_CONTEXT: &[u8] = b"strata raft handshake v1 server";
const CLIENT_FRAMES: &[u8] = b"strata raft frames v1 client to server";
const SERVER_FRAMES: &[u8] = b"strata raft frames v1 server to client";
/// Bytes of the MAC after each frame.
pub const FRAME_MAC_LEN: usize = MAC_LEN;
/// Shorter secrets are guessable offline from one recorded handshake.
/// A peer that opens a connection and stalls holds a task only this long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const ACCEPTED: u8 = 1;
const REFUSED: u8 = 0;

/// The MACs a cluster secret keys: the handshake's proofs and the frame keys.
trait SecretMacs {
    fn mac(&self, context: &[u8], client: &[u8], server: &[u8], who: Identity) -> Hmac<Sha256>;
    fn frame_mac(&self, client: &[u8], server: &[u8], is_client: bool) -> FrameMac;
}

impl SecretMacs for ClusterSecret {
    fn mac(&self, context: &[u8], client: &[u8], server: &[u8], who: Identity) -> Hmac<Sha256> {
        let mut mac = keyed(self.bytes());
        mac.update(context);
        mac.update(client);
        mac.update(server);
        mac.update(&who.encode());
        mac
    }

    /// The frame keys of one connection, one per direction.
    fn frame_mac(&self, client: &[u8], server: &[u8], is_client: bool) -> FrameMac {
        let key = |context: &[u8]| -> [u8; MAC_LEN] {
            let mut mac = keyed(self.bytes());
            mac.update(context);
            mac.update(client);
            mac.update(server);
            mac.finalize().into_bytes().into()
        };
        let (c2s, s2c) = (key(CLIENT_FRAMES), key(SERVER_FRAMES));
        let (send, recv) = if is_client { (c2s, s2c) } else { (s2c, c2s) };
        FrameMac {
            send,
            recv,
            sent: 0,
            received: 0,
        }
    }
}

fn keyed(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; this cannot fail.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts any key length"),
    }
}

/// MACs of one authenticated connection's frames: HMAC(direction key, sequence number ||
/// frame). The sequence numbers make a dropped, replayed or reordered frame fail.
pub struct FrameMac {
    send: [u8; MAC_LEN],
    recv: [u8; MAC_LEN],
    sent: u64,
    received: u64,
}

impl fmt::Debug for FrameMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FrameMac(sent {}, received {})",
            self.sent, self.received
        )
    }
}

impl FrameMac {
    fn tag(key: &[u8], seq: u64, frame: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = keyed(key);
        mac.update(&seq.to_be_bytes());
        for part in frame {
            mac.update(part);
        }
        mac
    }

    /// The MAC to send after `frame` (its length prefix and body, in parts so that a
    /// large body is not copied).
    pub fn seal(&mut self, frame: &[&[u8]]) -> [u8; MAC_LEN] {
        let tag = Self::tag(&self.send, self.sent, frame);
        self.sent += 1;
        tag.finalize().into_bytes().into()
    }

    /// Checks the MAC that came after `frame`.
    pub fn open(&mut self, frame: &[&[u8]], mac: &[u8]) -> Result<(), HandshakeError> {
        Self::tag(&self.recv, self.received, frame)
            .verify_slice(mac)
            .map_err(|_| HandshakeError::BadFrameMac)?;
        self.received += 1;
        Ok(())
    }
}

/// Who is at one end of an authenticated connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// A broker, by node id.
    Node(NodeId),
    /// An operator's tool (`strata voters`): may change voters, not take part in Raft.
    Operator,
}

impl Identity {
    fn encode(self) -> [u8; 9] {
        let (role, id) = match self {
            Identity::Node(id) => (0u8, id),
            Identity::Operator => (1u8, 0),
        };
        let mut out = [0u8; 9];
        out[0] = role;
        out[1..].copy_from_slice(&id.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8; 9]) -> Result<Self, HandshakeError> {
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[1..]);
        match bytes[0] {
            0 => Ok(Identity::Node(u64::from_be_bytes(id))),
            1 => Ok(Identity::Operator),
            role => Err(HandshakeError::Malformed(format!("unknown role {role}"))),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Node(id) => write!(f, "node {id}"),
            Identity::Operator => f.write_str("operator"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("connection failed during the handshake: {0}")]
    Io(#[from] io::Error),
    #[error(
        "the peer closed the connection during the handshake (it has no cluster secret, or a different one)"
    )]
    Closed,
    #[error(
        "the peer did not start a cluster-secret handshake (it is not a Strata broker, or has no --cluster-secret-file)"
    )]
    NotAHandshake,
    #[error("malformed handshake: {0}")]
    Malformed(String),
    #[error(
        "the peer's proof does not match our cluster secret (different --cluster-secret-file?)"
    )]
    BadProof,
    #[error("the peer refused our proof of the cluster secret (different --cluster-secret-file?)")]
    Refused,
    #[error("a frame's MAC does not match (altered, replayed or injected)")]
    BadFrameMac,
    #[error("the handshake timed out")]
    TimedOut,
    #[error("no randomness for a nonce: {0}")]
    Random(String),
}

fn nonce() -> Result<[u8; NONCE_LEN], HandshakeError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| HandshakeError::Random(e.to_string()))?;
    Ok(nonce)
}

fn hello(who: Identity, nonce: &[u8; NONCE_LEN]) -> [u8; HELLO_LEN] {
    let mut out = [0u8; HELLO_LEN];
    out[..4].copy_from_slice(&MAGIC);
    out[4] = VERSION;
    out[5..14].copy_from_slice(&who.encode());
    out[14..].copy_from_slice(nonce);
    out
}

/// Checks a HELLO after its magic; returns the sender and its nonce.
fn parse_hello(rest: &[u8; HELLO_LEN - 4]) -> Result<(Identity, [u8; NONCE_LEN]), HandshakeError> {
    if rest[0] != VERSION {
        return Err(HandshakeError::Malformed(format!(
            "handshake version {} (this build speaks {VERSION})",
            rest[0]
        )));
    }
    let mut who = [0u8; 9];
    who.copy_from_slice(&rest[1..10]);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&rest[10..]);
    Ok((Identity::decode(&who)?, nonce))
}

/// EOF in the middle of a handshake is the peer hanging up on it.
async fn read_exact<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
) -> Result<(), HandshakeError> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(HandshakeError::Closed),
        Err(e) => Err(e.into()),
    }
}

/// The connecting side's handshake; returns who answered.
pub async fn client<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    secret: &ClusterSecret,
    me: Identity,
) -> Result<(Identity, FrameMac), HandshakeError> {
    let result = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let mine = nonce()?;
        stream.write_all(&hello(me, &mine)).await?;
        stream.flush().await?;
        let mut magic = [0u8; 4];
        read_exact(stream, &mut magic).await?;
        if magic != MAGIC {
            return Err(HandshakeError::NotAHandshake);
        }
        let mut rest = [0u8; HELLO_LEN - 4 + MAC_LEN];
        read_exact(stream, &mut rest).await?;
        let (hello_rest, proof) = rest.split_at(HELLO_LEN - 4);
        let mut fixed = [0u8; HELLO_LEN - 4];
        fixed.copy_from_slice(hello_rest);
        let (server, theirs) = parse_hello(&fixed)?;
        secret
            .mac(SERVER_CONTEXT, &mine, &theirs, server)
            .verify_slice(proof)
            .map_err(|_| HandshakeError::BadProof)?;
        let proof = secret.mac(CLIENT_CONTEXT, &mine, &theirs, me).finalize();
        stream.write_all(&proof.into_bytes()).await?;
        stream.flush().await?;
        let mut verdict = [0u8; 1];
        read_exact(stream, &mut verdict)
            .await
            .map_err(|e| match e {
                HandshakeError::Closed => HandshakeError::Refused,
                e => e,
            })?;
        if verdict[0] != ACCEPTED {
            return Err(HandshakeError::Refused);
        }
        Ok((server, secret.frame_mac(&mine, &theirs, true)))
    })
    .await;
    result.map_err(|_| HandshakeError::TimedOut)?
}

/// The accepting side's handshake, `magic` being the first 4 bytes already read; returns
/// who connected. A peer that fails is told so (where it got far enough) before the
/// caller closes the connection.
pub async fn server<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    magic: [u8; 4],
    secret: &ClusterSecret,
    me: Identity,
) -> Result<(Identity, FrameMac), HandshakeError> {
    let result = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        if magic != MAGIC {
            return Err(HandshakeError::NotAHandshake);
        }
        let mut rest = [0u8; HELLO_LEN - 4];
        read_exact(stream, &mut rest).await?;
        let (client, theirs) = parse_hello(&rest)?;
        let mine = nonce()?;
        let proof = secret.mac(SERVER_CONTEXT, &theirs, &mine, me).finalize();
        let mut answer = Vec::with_capacity(HELLO_LEN + MAC_LEN);
        answer.extend_from_slice(&hello(me, &mine));
        answer.extend_from_slice(&proof.into_bytes());
        stream.write_all(&answer).await?;
        stream.flush().await?;
        let mut proof = [0u8; MAC_LEN];
        read_exact(stream, &mut proof).await?;
        if secret
            .mac(CLIENT_CONTEXT, &theirs, &mine, client)
            .verify_slice(&proof)
            .is_err()
        {
            let _ = stream.write_all(&[REFUSED]).await;
            let _ = stream.flush().await;
            return Err(HandshakeError::BadProof);
        }
        stream.write_all(&[ACCEPTED]).await?;
        stream.flush().await?;
        Ok((client, secret.frame_mac(&theirs, &mine, false)))
    })
    .await;
    result.map_err(|_| HandshakeError::TimedOut)?
}

/// At most one log line per `interval`, counting the ones it held back, so that a
/// scanner hammering the Raft port cannot flood the log.
pub struct LogLimiter {
    interval: Duration,
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl LogLimiter {
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Some(number held back since the last line) if a line may be logged now.
    pub fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|t| now.duration_since(t) < self.interval) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;

    use super::*;
    use tokio::io::duplex;

    fn secret(s: &str) -> ClusterSecret {
        ClusterSecret::from_bytes(s.as_bytes()).expect("test setup")
    }

    async fn server_side<S: AsyncRead + AsyncWrite + Unpin>(
        stream: S,
        secret: ClusterSecret,
    ) -> Result<Identity, HandshakeError> {
        Ok(server_session(stream, secret).await?.0)
    }

    async fn server_session<S: AsyncRead + AsyncWrite + Unpin>(
        mut stream: S,
        secret: ClusterSecret,
    ) -> Result<(Identity, FrameMac), HandshakeError> {
        let mut magic = [0u8; 4];
        stream.read_exact(&mut magic).await?;
        server(&mut stream, magic, &secret, Identity::Node(1)).await
    }

    #[tokio::test]
    async fn right_secret_authenticates_both_sides() -> TestResult {
        let (mut a, b) = duplex(1024);
        let srv = tokio::spawn(server_side(b, secret("0123456789abcdef-cluster")));
        let (peer, _) = client(
            &mut a,
            &secret("0123456789abcdef-cluster"),
            Identity::Node(7),
        )
        .await?;
        assert_eq!(peer, Identity::Node(1));
        assert_eq!(srv.await??, Identity::Node(7));
        Ok(())
    }

    /// Frames after the handshake: each direction's MACs check on the other side, in
    /// order; an altered, reordered, replayed or reflected frame fails.
    #[tokio::test]
    async fn frame_macs_catch_tampering() -> TestResult {
        let (mut a, b) = duplex(1024);
        let srv = tokio::spawn(server_session(b, secret("0123456789abcdef")));
        let (_, mut c) = client(&mut a, &secret("0123456789abcdef"), Identity::Node(2)).await?;
        let (_, mut s) = srv.await??;
        let one = c.seal(&[b"frame one".as_slice()]);
        let two = c.seal(&[b"frame two".as_slice()]);
        assert!(matches!(
            s.open(&[b"frame ONE".as_slice()], &one),
            Err(HandshakeError::BadFrameMac)
        ));
        assert!(s.open(&[b"frame two".as_slice()], &two).is_err());
        s.open(&[b"frame one".as_slice()], &one)?;
        assert!(s.open(&[b"frame one".as_slice()], &one).is_err());
        s.open(&[b"frame two".as_slice()], &two)?;
        let reply = s.seal(&[b"reply".as_slice()]);
        c.open(&[b"reply".as_slice()], &reply)?;
        // A client's frame reflected back to it: the directions' keys differ.
        let mine = c.seal(&[b"frame three".as_slice()]);
        assert!(c.open(&[b"frame three".as_slice()], &mine).is_err());
        // Another connection's keys differ (its nonces do).
        let (mut a, b) = duplex(1024);
        let srv = tokio::spawn(server_session(b, secret("0123456789abcdef")));
        let _ = client(&mut a, &secret("0123456789abcdef"), Identity::Node(2)).await?;
        let (_, mut other) = srv.await??;
        assert!(other.open(&[b"frame one".as_slice()], &one).is_err());
        Ok(())
    }

    #[tokio::test]
    async fn operator_identity_round_trips() -> TestResult {
        let (mut a, b) = duplex(1024);
        let srv = tokio::spawn(server_side(b, secret("0123456789abcdef")));
        let _ = client(&mut a, &secret("0123456789abcdef"), Identity::Operator).await?;
        assert_eq!(srv.await??, Identity::Operator);
        Ok(())
    }

    #[tokio::test]
    async fn wrong_secret_fails_on_both_sides() -> TestResult {
        let (mut a, b) = duplex(1024);
        let srv = tokio::spawn(server_side(b, secret("the-real-cluster-secret")));
        let err = client(&mut a, &secret("a-guessed-wrong-secret"), Identity::Node(7))
            .await
            .unwrap_err();
        // The client sees first that the server does not know its secret.
        assert!(matches!(err, HandshakeError::BadProof), "{err}");
        drop(a);
        let err = srv.await?.unwrap_err();
        assert!(matches!(err, HandshakeError::Closed), "{err}");
        Ok(())
    }

    /// A client that skips checking the server's proof still cannot get in.
    #[tokio::test]
    async fn wrong_client_proof_is_refused() -> TestResult {
        let (mut a, b) = duplex(1024);
        let srv = tokio::spawn(server_side(b, secret("the-real-cluster-secret")));
        a.write_all(&hello(Identity::Node(9), &[7u8; NONCE_LEN]))
            .await?;
        let mut answer = [0u8; HELLO_LEN + MAC_LEN];
        a.read_exact(&mut answer).await?;
        a.write_all(&[0u8; MAC_LEN]).await?;
        let mut verdict = [9u8; 1];
        a.read_exact(&mut verdict).await?;
        assert_eq!(verdict[0], REFUSED);
        assert!(matches!(srv.await?.unwrap_err(), HandshakeError::BadProof));
        Ok(())
    }

    #[tokio::test]
    async fn garbage_and_truncated_handshakes_are_refused() -> TestResult {
        let s = secret("0123456789abcdef");
        // A plain Raft frame (a broker without the secret) or any other protocol.
        let (mut a, b) = duplex(1024);
        let srv = tokio::spawn(server_side(b, s.clone()));
        a.write_all(b"\x00\x00\x00\x10STRP garbage").await?;
        assert!(matches!(
            srv.await?.unwrap_err(),
            HandshakeError::NotAHandshake
        ));
        // The right magic, then a hang-up halfway through the hello.
        let (mut a, b) = duplex(1024);
        let srv = tokio::spawn(server_side(b, s.clone()));
        a.write_all(b"STAH\x01\x00\x00").await?;
        drop(a);
        assert!(matches!(srv.await?.unwrap_err(), HandshakeError::Closed));
        // An unknown version or role.
        for bad in [&b"STAH\x09"[..], &b"STAH\x01\x05"[..]] {
            let (mut a, b) = duplex(1024);
            let srv = tokio::spawn(server_side(b, s.clone()));
            let mut msg = bad.to_vec();
            msg.resize(HELLO_LEN, 0);
            a.write_all(&msg).await?;
            assert!(matches!(
                srv.await?.unwrap_err(),
                HandshakeError::Malformed(_)
            ));
        }
        // A server that answers with garbage is refused by the client.
        let (mut a, mut b) = duplex(1024);
        tokio::spawn(async move {
            let mut hello = [0u8; HELLO_LEN];
            let _ = b.read_exact(&mut hello).await;
            let _ = b.write_all(&[0xffu8; 100]).await;
        });
        let err = client(&mut a, &s, Identity::Node(2)).await.unwrap_err();
        assert!(matches!(err, HandshakeError::NotAHandshake), "{err}");
        Ok(())
    }

    /// Replaying a recorded client's messages to a new connection fails: the server's
    /// nonce is new, so the recorded proof no longer matches.
    #[tokio::test]
    async fn replayed_handshake_is_refused() -> TestResult {
        let s = secret("0123456789abcdef");
        // Record a good handshake's client side.
        let (mut a, b) = duplex(1024);
        let srv = tokio::spawn(server_side(b, s.clone()));
        let mine = [42u8; NONCE_LEN];
        let recorded_hello = hello(Identity::Node(3), &mine);
        a.write_all(&recorded_hello).await?;
        let mut answer = [0u8; HELLO_LEN + MAC_LEN];
        a.read_exact(&mut answer).await?;
        let theirs = &answer[14..HELLO_LEN];
        let recorded_proof = s
            .mac(CLIENT_CONTEXT, &mine, theirs, Identity::Node(3))
            .finalize()
            .into_bytes();
        a.write_all(&recorded_proof).await?;
        let mut verdict = [0u8; 1];
        a.read_exact(&mut verdict).await?;
        assert_eq!(verdict[0], ACCEPTED);
        assert_eq!(srv.await??, Identity::Node(3));
        // Replay it.
        let (mut a, b) = duplex(1024);
        let srv = tokio::spawn(server_side(b, s.clone()));
        a.write_all(&recorded_hello).await?;
        a.read_exact(&mut answer).await?;
        a.write_all(&recorded_proof).await?;
        a.read_exact(&mut verdict).await?;
        assert_eq!(verdict[0], REFUSED);
        assert!(matches!(srv.await?.unwrap_err(), HandshakeError::BadProof));
        // Reflecting the server's own proof back as the client's fails too.
        let (mut a, b) = duplex(1024);
        let srv = tokio::spawn(server_side(b, s.clone()));
        a.write_all(&hello(Identity::Node(1), &mine)).await?;
        a.read_exact(&mut answer).await?;
        a.write_all(&answer[HELLO_LEN..]).await?;
        a.read_exact(&mut verdict).await?;
        assert_eq!(verdict[0], REFUSED);
        assert!(srv.await?.is_err());
        Ok(())
    }

    #[test]
    fn secret_file_is_trimmed_and_checked() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("secret");
        std::fs::write(&path, "0123456789abcdef\n")?;
        let s = ClusterSecret::load(&path)?;
        assert_eq!(s.bytes(), b"0123456789abcdef");
        assert_eq!(format!("{s:?}"), "ClusterSecret(..)");
        std::fs::write(&path, "short\n")?;
        assert!(matches!(
            ClusterSecret::load(&path),
            Err(SecretError::TooShort(5))
        ));
        assert!(matches!(
            ClusterSecret::load(&dir.path().join("missing")),
            Err(SecretError::Read(_))
        ));
        Ok(())
    }

    #[test]
    fn limiter_holds_back_and_counts() -> TestResult {
        let l = LogLimiter::new(Duration::from_secs(60));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        *l.last.lock().map_err(|_| "poisoned")? = Some(Instant::now() - Duration::from_secs(61));
        assert_eq!(l.allow(), Some(2));
        Ok(())
    }
}

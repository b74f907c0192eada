//! The metadata Raft's network: frames over TCP between brokers' `--raft-listen`
//! addresses, each a big-endian u32 length then the message in the metadata codec
//! (`codec.rs`, kind raft RPC).
//!
//! Besides Raft's own RPCs it carries two broker requests: `Propose` (a broker that is not
//! the leader forwards its command) and `Join` (a new learner asks to be added).
//!
//! With a cluster secret (`--cluster-secret-file`), every connection first passes the
//! mutual handshake of `auth.rs`, and requests are checked against who sent them (see
//! `Handler`). Without one, the port is open to anyone who reaches it, as before.
//!
//! With `raft_tls`, every connection is TLS first (the broker's `tls_cert_file`, peers
//! checked against `tls_ca_file`, client certificates when `tls_client_auth=required`);
//! the handshake and frame MACs above then run inside it.
//!
//! A test-only switch isolates a node: while the file `ISOLATE` exists in its Raft
//! directory, it refuses incoming Raft traffic and sends none, as if its Raft port were
//! cut off from the network (in builds with the `failpoints` feature only).

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};
use rustls_pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::auth::{self, ClusterSecret, FrameMac, HandshakeError, Identity, LogLimiter};
use super::{NodeId, TypeConfig};
use crate::metadata::codec::{self, Kind};
use crate::metadata::state::{Command, Response};
use crate::tls::{self, ClientAuth, TlsAcceptor, TlsError, TlsSettings};

/// Raft frames carry whole log batches and snapshot chunks, far below this. Checked
/// before allocating, so a bad length (or a peer speaking something else) cannot make a
/// broker reserve gigabytes.
const MAX_FRAME: usize = 256 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Replication to an unreachable peer pauses this long after the first failure, doubling
/// up to `BACKOFF_MAX` (openraft drops the back-off on the next success). Without it,
/// openraft retries at once: a peer whose port answers with EOF cost 300,000 log lines
/// in 25 s.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The pauses before successive retries to an unreachable peer.
pub fn backoff_delays() -> impl Iterator<Item = Duration> + Send + 'static {
    std::iter::successors(Some(BACKOFF_FIRST), |d| Some((*d * 2).min(BACKOFF_MAX)))
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    Propose(Command),
    Join {
        node_id: NodeId,
        addr: String,
    },
    /// An operator's membership change (`strata voters`): promote learners, demote
    /// voters to learners; both empty only asks for the current voters.
    ChangeVoters {
        add: Vec<NodeId>,
        remove: Vec<NodeId>,
    },
    /// A follower's read barrier (`read.rs`): the leader's commit index, once it knows it
    /// is still the leader. Only ever sent to the leader; appended last, so every other
    /// frame encodes as before and an older build, which cannot decode this one, closes
    /// the connection (the follower then reads as older builds did).
    ReadIndex,
    /// The membership as this node knows it: voters and learners (`strata voters`).
    /// Appended last (format 8), like `ReadIndex`.
    Members,
    /// A broker started with `--node-id auto` asks for its id (format 8); it has none
    /// yet, so it is not a member: a cluster secret is its credential.
    AllocateNodeId {
        host: String,
        port: i32,
        rack: Option<String>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RaftReply {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// The state machine's answer and the entry's log index.
    Propose(Result<(Response, u64), String>),
    Join(Result<(), String>),
    /// The voters after the change.
    ChangeVoters(Result<Vec<NodeId>, String>),
    /// Every entry committed before the request arrived is at or below this index.
    ReadIndex(Result<u64, String>),
    /// Voters, then learners.
    Members(Result<(Vec<NodeId>, Vec<NodeId>), String>),
    AllocateNodeId(Result<NodeId, String>),
}

/// Refusals on the Raft port, logged at most this often (with a count of the rest).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(5);
static REFUSED_PEERS: LogLimiter = LogLimiter::new(REFUSAL_LOG_INTERVAL);
static REFUSED_BY_PEERS: LogLimiter = LogLimiter::new(REFUSAL_LOG_INTERVAL);

/// How this end identifies itself on the Raft port, the secret it proves, if any, and
/// the TLS it speaks, if any.
#[derive(Debug, Clone)]
pub struct Auth {
    pub secret: Option<ClusterSecret>,
    pub me: Identity,
    pub tls: Option<RaftTls>,
}

/// TLS on the Raft port: the acceptor of incoming connections (the Kafka listener's,
/// reloaded when the files change) and the connector of outgoing ones.
#[derive(Clone)]
pub struct RaftTls {
    acceptor: Option<Arc<TlsAcceptor>>,
    connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for RaftTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftTls")
            .field("server", &self.acceptor.is_some())
            .finish_non_exhaustive()
    }
}

impl RaftTls {
    /// A broker's: serves with its certificate, trusts peers chaining to `tls_ca_file`
    /// (which `raft_tls` requires), and presents its certificate when client
    /// certificates are required.
    pub fn broker(settings: &TlsSettings) -> Result<Self, TlsError> {
        let ca_file = settings
            .ca_file
            .as_deref()
            .ok_or_else(|| TlsError::Invalid {
                setting: "tls_ca_file",
                path: String::new(),
                reason: "raft_tls checks peers' certificates against it: set it to a PEM CA bundle"
                    .into(),
            })?;
        let identity = (settings.client_auth == ClientAuth::Required)
            .then_some((settings.cert_file.as_path(), settings.key_file.as_path()));
        Ok(Self {
            acceptor: Some(Arc::new(TlsAcceptor::load(settings.clone())?)),
            connector: tls::client_config(ca_file, identity)?.into(),
        })
    }

    /// A client's only (`strata voters`): trusts `ca_file`, presents `identity` if given.
    pub fn client(
        ca_file: &std::path::Path,
        identity: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<Self, TlsError> {
        Ok(Self {
            acceptor: None,
            connector: tls::client_config(ca_file, identity)?.into(),
        })
    }
}

/// What a Raft connection runs over: TCP, or TLS over TCP.
pub trait RaftIo: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> RaftIo for T {}
type Stream = Box<dyn RaftIo>;

/// A Raft connection: the stream, and with a secret, its frames' MACs.
pub struct Link {
    stream: Stream,
    mac: Option<FrameMac>,
}

/// The TLS server name of a Raft address `host:port` (an IP address or a DNS name).
fn server_name(addr: &str) -> io::Result<ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("raft address {addr}: {e}"),
        )
    })
}

/// Connects to a peer's Raft port and, with TLS, checks its certificate and, with a
/// secret, authenticates both ends.
pub async fn connect(addr: &str, auth: &Auth) -> io::Result<Link> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = tcp.set_nodelay(true);
    let mut stream: Stream = match &auth.tls {
        None => Box::new(tcp),
        Some(tls) => {
            let name = server_name(addr)?;
            let handshake = tls.connector.connect(name, tcp);
            match tokio::time::timeout(auth::HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(stream)) => Box::new(stream),
                Ok(Err(e)) => {
                    if let Some(held_back) = REFUSED_BY_PEERS.allow() {
                        warn!(peer = %addr, error = %e, held_back, "raft peer failed the TLS handshake");
                    }
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("raft peer {addr}: TLS handshake: {e} (does it have raft_tls on, and a certificate from tls_ca_file?)"),
                    ));
                }
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("raft peer {addr}: TLS handshake timed out"),
                    ))
                }
            }
        }
    };
    let mut mac = None;
    if let Some(secret) = &auth.secret {
        match auth::client(&mut stream, secret, auth.me).await {
            Ok((_, frames)) => mac = Some(frames),
            Err(e) => {
                if let Some(held_back) = REFUSED_BY_PEERS.allow() {
                    warn!(peer = %addr, error = %e, held_back, "raft peer failed the cluster-secret handshake");
                }
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("raft peer {addr}: {e}"),
                ));
            }
        }
    }
    Ok(Link { stream, mac })
}

/// Logs a refused peer, rate-limited.
fn log_refusal(peer: &std::net::SocketAddr, reason: &dyn std::fmt::Display) {
    if let Some(held_back) = REFUSED_PEERS.allow() {
        warn!(%peer, %reason, held_back, "raft connection refused");
    }
}

/// Whether this node is (test-only) cut off from Raft traffic.
#[derive(Debug, Clone)]
pub struct Isolation {
    switch: Arc<PathBuf>,
}

impl Isolation {
    pub fn new(raft_dir: &std::path::Path) -> Self {
        Self {
            switch: Arc::new(raft_dir.join("ISOLATE")),
        }
    }

    pub fn isolated(&self) -> bool {
        crate::failpoint::switch_on(&self.switch)
    }
}

/// Sends one request and reads its reply on `stream`.
pub async fn call(link: &mut Link, request: &RaftRequest) -> io::Result<RaftReply> {
    write_frame(link, request).await?;
    let reply = read_frame(link).await?;
    codec::decode(Kind::RaftRpc, &reply).map_err(io::Error::other)
}

/// `call` on a new connection: a peer that hangs up without answering most likely
/// demands a handshake this end did not make.
async fn first_call(
    link: &mut Link,
    addr: &str,
    request: &RaftRequest,
    auth: &Auth,
) -> io::Result<RaftReply> {
    match call(link, request).await {
        // A peer that closes with our request unread resets the connection instead.
        Err(e)
            if auth.secret.is_none()
                && matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::BrokenPipe
                ) =>
        {
            let e = io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the connection without answering (does it require a cluster \
                 secret or TLS? then set --cluster-secret-file or --raft-tls here too)",
            );
            if let Some(held_back) = REFUSED_BY_PEERS.allow() {
                warn!(peer = %addr, error = %e, held_back, "raft peer hung up");
            }
            Err(e)
        }
        other => other,
    }
}

/// A frame is `[u32 length][body]`, followed on an authenticated connection by the MAC
/// of both.
async fn write_frame<T: Serialize>(link: &mut Link, message: &T) -> io::Result<()> {
    let body = codec::encode(Kind::RaftRpc, message).map_err(io::Error::other)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&len| len as usize <= MAX_FRAME)
        .ok_or_else(|| {
            io::Error::other(format!("raft frame of {} bytes is too large", body.len()))
        })?;
    let head = len.to_be_bytes();
    link.stream.write_all(&head).await?;
    link.stream.write_all(&body).await?;
    if let Some(mac) = &mut link.mac {
        let tag = mac.seal(&[&head, &body]);
        link.stream.write_all(&tag).await?;
    }
    // TLS may hold the end of the frame back until flushed.
    link.stream.flush().await
}

async fn read_frame(link: &mut Link) -> io::Result<Vec<u8>> {
    let len = link.stream.read_u32().await?;
    read_frame_body(link, len).await
}

async fn read_frame_body(link: &mut Link, len: u32) -> io::Result<Vec<u8>> {
    let body_len = len as usize;
    if body_len > MAX_FRAME {
        return Err(io::Error::other(format!(
            "raft frame of {body_len} bytes is too large"
        )));
    }
    let mut body = vec![0u8; body_len];
    link.stream.read_exact(&mut body).await?;
    if let Some(mac) = &mut link.mac {
        let mut tag = [0u8; auth::FRAME_MAC_LEN];
        link.stream.read_exact(&mut tag).await?;
        mac.open(&[&len.to_be_bytes(), &body], &tag)
            .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))?;
    }
    Ok(body)
}

/// Connects to `addr` and makes one call.
pub async fn call_once(
    addr: &str,
    auth: &Auth,
    request: &RaftRequest,
    timeout: Duration,
) -> io::Result<RaftReply> {
    tokio::time::timeout(timeout, async {
        let mut link = connect(addr, auth).await?;
        first_call(&mut link, addr, request, auth).await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "raft call timed out"))?
}

/// What serves the requests a connection receives.
pub trait Handler: Send + Sync + 'static {
    /// `peer` is who the handshake proved sent it (None without a cluster secret). An
    /// Err refuses the request by closing the connection, for a sender that has no
    /// business sending it; the reason is logged.
    fn handle(
        &self,
        peer: Option<Identity>,
        request: RaftRequest,
    ) -> impl std::future::Future<Output = Result<RaftReply, String>> + Send;
}

/// Accepts Raft connections until the listener fails.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    isolation: Isolation,
    auth: Auth,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "raft accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handler = handler.clone();
        let isolation = isolation.clone();
        let auth = auth.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_connection(stream, peer, handler, isolation, auth).await {
                debug!(%peer, error = %e, "raft connection closed");
            }
        });
    }
}

async fn serve_connection<H: Handler>(
    tcp: TcpStream,
    addr: std::net::SocketAddr,
    handler: Arc<H>,
    isolation: Isolation,
    auth: Auth,
) -> io::Result<()> {
    let _ = tcp.set_nodelay(true);
    let stream: Stream = match auth.tls.as_ref().and_then(|tls| tls.acceptor.as_ref()) {
        None => Box::new(tcp),
        Some(acceptor) => {
            let handshake = tokio_rustls::TlsAcceptor::from(acceptor.current()).accept(tcp);
            match tokio::time::timeout(auth::HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(stream)) => Box::new(stream),
                Ok(Err(e)) => {
                    log_refusal(&addr, &format_args!("TLS handshake failed: {e}"));
                    return Err(io::Error::new(io::ErrorKind::PermissionDenied, e));
                }
                Err(_) => {
                    log_refusal(&addr, &"no TLS handshake in time");
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "no TLS handshake"));
                }
            }
        }
    };
    let mut link = Link { stream, mac: None };
    let mut peer = None;
    let mut first = true;
    loop {
        let read = link.stream.read_u32();
        // Before the handshake, a silent peer holds its task only briefly.
        let head = if first && auth.secret.is_some() {
            match tokio::time::timeout(auth::HANDSHAKE_TIMEOUT, read).await {
                Ok(head) => head,
                Err(_) => {
                    log_refusal(&addr, &HandshakeError::TimedOut);
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "no handshake"));
                }
            }
        } else {
            read.await
        };
        let head = match head {
            Ok(head) => head,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        if isolation.isolated() {
            return Err(io::Error::other("isolated: dropping raft traffic"));
        }
        if first {
            first = false;
            if let Some(secret) = &auth.secret {
                // Nothing but the handshake is read until it has passed.
                match auth::server(&mut link.stream, head.to_be_bytes(), secret, auth.me).await {
                    Ok((who, frames)) => {
                        debug!(%addr, %who, "raft peer authenticated");
                        peer = Some(who);
                        link.mac = Some(frames);
                        continue;
                    }
                    Err(e) => {
                        log_refusal(&addr, &e);
                        return Err(io::Error::new(io::ErrorKind::PermissionDenied, e));
                    }
                }
            }
            if head.to_be_bytes() == auth::MAGIC {
                log_refusal(
                    &addr,
                    &"the peer starts a cluster-secret handshake, but this broker has no \
                      --cluster-secret-file",
                );
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    HandshakeError::NotAHandshake,
                ));
            }
        }
        let frame = match read_frame_body(&mut link, head).await {
            Ok(frame) => frame,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                log_refusal(&addr, &e);
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let request: RaftRequest =
            codec::decode(Kind::RaftRpc, &frame).map_err(io::Error::other)?;
        match handler.handle(peer, request).await {
            Ok(reply) => write_frame(&mut link, &reply).await?,
            Err(reason) => {
                log_refusal(&addr, &reason);
                return Err(io::Error::new(io::ErrorKind::PermissionDenied, reason));
            }
        }
    }
}

/// Builds a connection per peer; each keeps one TCP stream and reconnects on error.
#[derive(Clone)]
pub struct TcpNetwork {
    pub isolation: Isolation,
    pub auth: Auth,
    pub acks: QuorumAcks,
}

/// When each peer last showed that it still follows this node: for each, the term and
/// the send time of the latest AppendEntries it accepted. A follower that accepts an
/// AppendEntries refuses its vote to anyone else for a while after (openraft's leader
/// lease), so while a majority accepted one sent recently, no other leader can exist
/// (`read.rs`).
#[derive(Debug, Clone, Default)]
pub struct QuorumAcks(
    Arc<std::sync::Mutex<std::collections::HashMap<NodeId, (u64, std::time::Instant)>>>,
);

impl QuorumAcks {
    fn record(&self, peer: NodeId, term: u64, sent: std::time::Instant) {
        let mut acks = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = acks.entry(peer).or_insert((term, sent));
        if (term, sent) > *entry {
            *entry = (term, sent);
        }
    }

    /// Keeps only the peers `keep` accepts (the current members), so that the map is
    /// bounded by the membership, not by every node that ever was one.
    pub fn retain(&self, keep: impl Fn(NodeId) -> bool) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|id, _| keep(*id));
    }

    /// The latest time by which a majority of `voters` (this node, `me`, counting as
    /// now) had accepted an AppendEntries of `term` sent then; None if no majority has.
    pub fn quorum_since(
        &self,
        voters: impl IntoIterator<Item = NodeId>,
        me: NodeId,
        term: u64,
        now: std::time::Instant,
    ) -> Option<std::time::Instant> {
        let acks = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut times: Vec<Option<std::time::Instant>> = voters
            .into_iter()
            .map(|v| {
                if v == me {
                    Some(now)
                } else {
                    acks.get(&v).filter(|(t, _)| *t == term).map(|(_, at)| *at)
                }
            })
            .collect();
        // Newest first; the majority-th is the time a majority had acknowledged by.
        times.sort_unstable_by(|a, b| b.cmp(a));
        let majority = times.len() / 2 + 1;
        times.get(majority - 1).copied().flatten()
    }
}

pub struct TcpConnection {
    target: NodeId,
    addr: String,
    stream: Option<Link>,
    isolation: Isolation,
    auth: Auth,
    acks: QuorumAcks,
}

impl RaftNetworkFactory<TypeConfig> for TcpNetwork {
    type Network = TcpConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        TcpConnection {
            target,
            addr: node.addr.clone(),
            stream: None,
            isolation: self.isolation.clone(),
            auth: self.auth.clone(),
            acks: self.acks.clone(),
        }
    }
}

type RpcError<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl TcpConnection {
    async fn send<E: std::error::Error>(
        &mut self,
        request: RaftRequest,
        option: &RPCOption,
    ) -> Result<RaftReply, RpcError<E>> {
        if self.isolation.isolated() {
            let e = io::Error::other("isolated: not sending raft traffic");
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        }
        let attempt = async {
            let reply;
            let stream = match self.stream.take() {
                Some(mut stream) => {
                    reply = call(&mut stream, &request).await?;
                    stream
                }
                None => {
                    let mut stream = connect(&self.addr, &self.auth).await?;
                    reply = first_call(&mut stream, &self.addr, &request, &self.auth).await?;
                    stream
                }
            };
            Ok::<_, io::Error>((stream, reply))
        };
        match tokio::time::timeout(option.hard_ttl(), attempt).await {
            Ok(Ok((stream, reply))) => {
                self.stream = Some(stream);
                Ok(reply)
            }
            // Every transport failure (refused, reset, EOF, timeout) is `Unreachable`:
            // openraft backs off after it (see `backoff`), while a `Network` error
            // would be retried at once, in a tight loop if the peer keeps failing.
            Ok(Err(e)) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(_) => {
                let e = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("raft rpc to node {} timed out", self.target),
                );
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
        }
    }

    fn unexpected<E: std::error::Error>(&self) -> RpcError<E> {
        RPCError::Network(NetworkError::new(&io::Error::other(
            "unexpected raft reply",
        )))
    }
}

impl RaftNetwork<TypeConfig> for TcpConnection {
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(backoff_delays())
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        let sent = std::time::Instant::now();
        let term = rpc.vote.leader_id().term;
        match self.send(RaftRequest::AppendEntries(rpc), &option).await? {
            RaftReply::AppendEntries(Ok(r)) => {
                // Anything but a higher vote: the peer still follows this term's leader.
                if !matches!(r, AppendEntriesResponse::HigherVote(_)) {
                    self.acks.record(self.target, term, sent);
                }
                Ok(r)
            }
            RaftReply::AppendEntries(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>> {
        match self
            .send(RaftRequest::InstallSnapshot(rpc), &option)
            .await?
        {
            RaftReply::InstallSnapshot(Ok(r)) => Ok(r),
            RaftReply::InstallSnapshot(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        match self.send(RaftRequest::Vote(rpc), &option).await? {
            RaftReply::Vote(Ok(r)) => Ok(r),
            RaftReply::Vote(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(self.unexpected()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// Answers every request with the voters `[1]`.
    struct Echo;

    impl Handler for Echo {
        async fn handle(
            &self,
            _peer: Option<Identity>,
            _request: RaftRequest,
        ) -> Result<RaftReply, String> {
            Ok(RaftReply::ChangeVoters(Ok(vec![1])))
        }
    }

    /// A CA and a broker certificate for 127.0.0.1 it signed, as PEM files in `dir`.
    fn certificates(
        dir: &std::path::Path,
        client_auth: ClientAuth,
    ) -> Result<TlsSettings, Box<dyn std::error::Error>> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key)?;
        let key = rcgen::KeyPair::generate()?;
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])?
            .signed_by(&key, &ca, &ca_key)?;
        let settings = TlsSettings {
            cert_file: dir.join("broker.pem"),
            key_file: dir.join("broker.key"),
            client_auth,
            ca_file: Some(dir.join("ca.pem")),
        };
        std::fs::write(&settings.cert_file, cert.pem())?;
        std::fs::write(&settings.key_file, key.serialize_pem())?;
        std::fs::write(dir.join("ca.pem"), ca.pem())?;
        Ok(settings)
    }

    /// Serves `Echo` on a loopback port with `auth`; returns its address.
    async fn server(
        dir: &std::path::Path,
        auth: Auth,
    ) -> Result<String, Box<dyn std::error::Error>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        tokio::spawn(serve(listener, Arc::new(Echo), Isolation::new(dir), auth));
        Ok(addr)
    }

    fn ask() -> RaftRequest {
        RaftRequest::ChangeVoters {
            add: vec![],
            remove: vec![],
        }
    }

    const WAIT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_tls_raft_port_answers_tls_and_refuses_plaintext() -> TestResult {
        let dir = tempfile::tempdir()?;
        let settings = certificates(dir.path(), ClientAuth::None)?;
        let node = |tls: Option<RaftTls>| Auth {
            secret: None,
            me: Identity::Node(1),
            tls,
        };
        let addr = server(dir.path(), node(Some(RaftTls::broker(&settings)?))).await?;

        let reply = call_once(
            &addr,
            &node(Some(RaftTls::broker(&settings)?)),
            &ask(),
            WAIT,
        )
        .await?;
        assert!(matches!(reply, RaftReply::ChangeVoters(Ok(v)) if v == [1]));
        let ca = settings.ca_file.as_deref().expect("set above");
        let operator = RaftTls::client(ca, None)?;
        let reply = call_once(&addr, &node(Some(operator)), &ask(), WAIT).await?;
        assert!(matches!(reply, RaftReply::ChangeVoters(Ok(_))));

        // A plaintext frame is not a TLS handshake: the connection is closed.
        let refused = call_once(&addr, &node(None), &ask(), WAIT).await;
        assert!(refused.is_err(), "{refused:?}");
        // A client that does not trust the server's CA refuses it.
        let other = tempfile::tempdir()?;
        let stranger = certificates(other.path(), ClientAuth::None)?;
        let refused = call_once(
            &addr,
            &node(Some(RaftTls::broker(&stranger)?)),
            &ask(),
            WAIT,
        )
        .await;
        assert!(
            matches!(&refused, Err(e) if e.kind() == io::ErrorKind::PermissionDenied),
            "{refused:?}"
        );
        // The server still answers.
        call_once(
            &addr,
            &node(Some(RaftTls::broker(&settings)?)),
            &ask(),
            WAIT,
        )
        .await?;
        Ok(())
    }

    #[tokio::test]
    async fn mutual_tls_and_the_cluster_secret_work_together() -> TestResult {
        let dir = tempfile::tempdir()?;
        let settings = certificates(dir.path(), ClientAuth::Required)?;
        let secret = ClusterSecret::from_bytes(b"0123456789abcdef-raft-tls-test")?;
        let node = |id, tls: Option<RaftTls>| Auth {
            secret: Some(secret.clone()),
            me: Identity::Node(id),
            tls,
        };
        let addr = server(dir.path(), node(1, Some(RaftTls::broker(&settings)?))).await?;

        // A broker presents its certificate and proves the secret inside TLS.
        let reply = call_once(
            &addr,
            &node(2, Some(RaftTls::broker(&settings)?)),
            &ask(),
            WAIT,
        )
        .await?;
        assert!(matches!(reply, RaftReply::ChangeVoters(Ok(_))));
        // Many frames on one connection, each flushed through TLS.
        let mut link = connect(&addr, &node(2, Some(RaftTls::broker(&settings)?))).await?;
        for _ in 0..20 {
            tokio::time::timeout(WAIT, call(&mut link, &ask())).await??;
        }

        // Without a client certificate the server ends the handshake.
        let ca = settings.ca_file.as_deref().expect("set above");
        let anonymous = node(2, Some(RaftTls::client(ca, None)?));
        let refused = call_once(&addr, &anonymous, &ask(), WAIT).await;
        assert!(refused.is_err(), "{refused:?}");
        // With it but without the secret, the secret's handshake refuses.
        let no_secret = Auth {
            secret: None,
            ..node(2, Some(RaftTls::broker(&settings)?))
        };
        let refused = call_once(&addr, &no_secret, &ask(), WAIT).await;
        assert!(refused.is_err(), "{refused:?}");
        Ok(())
    }

    #[test]
    fn server_names_are_the_host_of_the_raft_address() -> TestResult {
        assert!(matches!(
            server_name("127.0.0.1:9093")?,
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:9093")?,
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("broker-1.example:9093")?,
            ServerName::DnsName(_)
        ));
        Ok(())
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let delays: Vec<u64> = backoff_delays()
            .take(8)
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(delays, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
    }
}

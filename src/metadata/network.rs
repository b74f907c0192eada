//! The metadata Raft's network: frames over TCP between brokers' `--raft-listen`
//! addresses, each a big-endian u32 length then the message in the metadata codec
//! (`codec.rs`, kind raft RPC).
//!
//! Besides Raft's own RPCs it carries two broker requests: `Propose` (a broker that is not
//! the leader forwards its command) and `Join` (a new learner asks to be added).
//!
//! A test-only switch isolates a node: while the file `ISOLATE` exists in its Raft
//! directory, it refuses incoming Raft traffic and sends none, as if its Raft port were
//! cut off from the network.

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
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::codec::{self, Kind};
use super::raft::{NodeId, TypeConfig};
use super::state::{Command, Response};

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
        self.switch.exists()
    }
}

/// Sends one request and reads its reply on `stream`.
pub async fn call(stream: &mut TcpStream, request: &RaftRequest) -> io::Result<RaftReply> {
    write_frame(stream, request).await?;
    let reply = read_frame(stream).await?;
    codec::decode(Kind::RaftRpc, &reply).map_err(io::Error::other)
}

async fn write_frame<T: Serialize>(stream: &mut TcpStream, message: &T) -> io::Result<()> {
    let body = codec::encode(Kind::RaftRpc, message).map_err(io::Error::other)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&len| len as usize <= MAX_FRAME)
        .ok_or_else(|| {
            io::Error::other(format!("raft frame of {} bytes is too large", body.len()))
        })?;
    stream.write_u32(len).await?;
    stream.write_all(&body).await
}

async fn read_frame(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let len = stream.read_u32().await? as usize;
    if len > MAX_FRAME {
        return Err(io::Error::other(format!(
            "raft frame of {len} bytes is too large"
        )));
    }
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Connects to `addr` and makes one call.
pub async fn call_once(
    addr: &str,
    request: &RaftRequest,
    timeout: Duration,
) -> io::Result<RaftReply> {
    tokio::time::timeout(timeout, async {
        let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        call(&mut stream, request).await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "raft call timed out"))?
}

/// What serves the requests a connection receives.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: RaftRequest) -> impl std::future::Future<Output = RaftReply> + Send;
}

/// Accepts Raft connections until the listener fails.
pub async fn serve<H: Handler>(listener: TcpListener, handler: Arc<H>, isolation: Isolation) {
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
        tokio::spawn(async move {
            if let Err(e) = serve_connection(stream, handler, isolation).await {
                debug!(%peer, error = %e, "raft connection closed");
            }
        });
    }
}

async fn serve_connection<H: Handler>(
    mut stream: TcpStream,
    handler: Arc<H>,
    isolation: Isolation,
) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    loop {
        let frame = match read_frame(&mut stream).await {
            Ok(frame) => frame,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        if isolation.isolated() {
            return Err(io::Error::other("isolated: dropping raft traffic"));
        }
        let request: RaftRequest =
            codec::decode(Kind::RaftRpc, &frame).map_err(io::Error::other)?;
        let reply = handler.handle(request).await;
        write_frame(&mut stream, &reply).await?;
    }
}

/// Builds a connection per peer; each keeps one TCP stream and reconnects on error.
#[derive(Clone)]
pub struct TcpNetwork {
    pub isolation: Isolation,
}

pub struct TcpConnection {
    target: NodeId,
    addr: String,
    stream: Option<TcpStream>,
    isolation: Isolation,
}

impl RaftNetworkFactory<TypeConfig> for TcpNetwork {
    type Network = TcpConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        TcpConnection {
            target,
            addr: node.addr.clone(),
            stream: None,
            isolation: self.isolation.clone(),
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
            let stream = match self.stream.take() {
                Some(stream) => stream,
                None => {
                    let stream =
                        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr))
                            .await
                            .map_err(|_| {
                                io::Error::new(io::ErrorKind::TimedOut, "connect timed out")
                            })??;
                    let _ = stream.set_nodelay(true);
                    stream
                }
            };
            let mut stream = stream;
            let reply = call(&mut stream, &request).await?;
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
        match self.send(RaftRequest::AppendEntries(rpc), &option).await? {
            RaftReply::AppendEntries(Ok(r)) => Ok(r),
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

    #[test]
    fn backoff_doubles_to_a_cap() {
        let delays: Vec<u64> = backoff_delays()
            .take(8)
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(delays, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
    }
}

//! openraft (0.9, storage-v2) glue for the metadata log.
//!
//! Layout of the Raft directory:
//! - `raft.log`: append-only records `[u32 len][u32 crc32c][payload]`, the payload in the
//!   metadata codec (`codec.rs`, kind log record); an optional leading `Purged` record
//!   remembers how far the log was purged, so purge/truncate stay a single atomic rewrite.
//! - `snapshot.bin` (codec, kind local snapshot; also the bytes InstallSnapshot carries),
//!   `vote.json`, `committed.json` (tiny, kept readable): replaced atomically (tmp + rename).
//!
//! Format 1 kept JSON in `raft.log` and `snapshot.json`; such a directory is refused at
//! open rather than misread (see `log_store::check_not_legacy`).
//!
//! Files: this one holds the types (openraft's type config, the options, status and
//! errors, the node handle); `node.rs` starts the node and proposes, and tracks its
//! progress and the leader; `serve.rs` serves peers' requests, refusing senders that may
//! not send them; `membership.rs` adds learners and changes voters. `network.rs` carries
//! the frames between brokers and `auth.rs` authenticates them; `read.rs` is the read
//! barrier (Raft's read index) that keeps answers about a log's end fresh. `log_store.rs` is the log,
//! `state_machine.rs` applies entries and builds and installs snapshots, `files.rs` holds
//! the atomic-write helpers. `tests.rs` runs the node end to end.

use std::collections::BTreeMap;
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openraft::{BasicNode, StorageError};
use tokio::sync::watch;

use self::auth::ClusterSecret;
use self::network::{Auth, Isolation, QuorumAcks};
use super::state::{Command, MetadataState, Response};

pub mod auth;
mod files;
mod log_store;
mod membership;
pub mod network;
mod node;
mod read;
mod serve;
mod state_machine;

pub use membership::{request_node_id, AUTO_ID_BASE};
#[cfg(test)]
mod suite_tests;
#[cfg(test)]
mod tests;

use log_store::*;
use state_machine::*;

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
type Raft = openraft::Raft<TypeConfig>;
type StorageResult<T> = Result<T, StorageError<NodeId>>;

const LOG_FILE: &str = "raft.log";
const VOTE_FILE: &str = "vote.json";
const COMMITTED_FILE: &str = "committed.json";
const SNAPSHOT_FILE: &str = "snapshot.bin";
/// Format 1's snapshot; its presence means the directory was written by an older build.
const LEGACY_SNAPSHOT_FILE: &str = "snapshot.json";
/// How long a proposal keeps looking for a leader (elections take well under a second).
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Record header: u32 payload length + u32 crc32c of the payload.
const HEADER_LEN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum RaftGlueError {
    #[error("cannot open raft log in {dir}: {source}")]
    Open { dir: PathBuf, source: io::Error },
    #[error("i/o error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("corrupt raft file {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "metadata log in {} was written by an older Strata (JSON format); move it aside or \
         start with --recover-from-store to rebuild it from the bucket",
        dir.display()
    )]
    LegacyFormat { dir: PathBuf },
    #[error("invalid raft config: {0}")]
    Config(String),
    #[error("raft node failed to start: {0}")]
    Start(String),
    #[error("raft node did not become leader within {0:?}: {1}")]
    LeaderTimeout(Duration, String),
    #[error("this node is not the metadata leader (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    #[error("metadata proposal failed: {0}")]
    Propose(String),
    #[error("raft shutdown failed: {0}")]
    Shutdown(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RaftGlueError + '_ {
    move |source| RaftGlueError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where this node sits in the metadata cluster.
#[derive(Debug, Clone)]
pub struct RaftOptions {
    pub node_id: NodeId,
    pub snapshot_every: u64,
    /// This node's Raft address as peers reach it.
    pub addr: String,
    /// Bind here for peers' Raft traffic; None for a lone voter that needs no network.
    pub listen: Option<String>,
    /// The voters (controllers) by id and Raft address. A node not among them is a learner.
    pub voters: BTreeMap<NodeId, String>,
    /// The broker lease: membership expiry, and how long this node may go without
    /// renewing it before it fences itself (`fence.rs`).
    pub lease: Duration,
    /// The last index the bucket holds, for a voter whose Raft directory is new (0:
    /// none). Until its own log reaches it, the voter grants its vote only to a candidate
    /// whose log does too, or to one with an empty log, which rebuilds from the bucket:
    /// a wiped disk forgot what it promised, and the bucket remembers it.
    pub vote_floor: u64,
    /// The shared secret that authenticates the Raft port (`auth.rs`); None: open.
    pub secret: Option<ClusterSecret>,
    /// With `raft_tls`: the TLS files of the Raft port and of connections to peers.
    pub tls: Option<crate::tls::TlsSettings>,
}

impl RaftOptions {
    /// A single voter with no network: one broker on one machine.
    pub fn single(node_id: NodeId, snapshot_every: u64) -> Self {
        Self {
            node_id,
            snapshot_every,
            addr: String::new(),
            listen: None,
            voters: BTreeMap::from([(node_id, String::new())]),
            lease: Duration::from_secs(5),
            vote_floor: 0,
            secret: None,
            tls: None,
        }
    }
}

/// A snapshot of this node's Raft progress (see [`MetadataRaft::status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStatus {
    pub role: &'static str,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: u64,
    /// The highest index this node knows to be committed.
    pub committed: u64,
    /// The highest index applied to this node's state.
    pub applied: u64,
}

/// Handle to the running metadata Raft node; cheap to clone.
#[derive(Clone)]
pub struct MetadataRaft {
    inner: Arc<Inner>,
}

struct Inner {
    raft: Raft,
    state: Arc<RwLock<MetadataState>>,
    applied: watch::Receiver<u64>,
    /// The test-only network cut also stops forwarded proposals and joins.
    isolation: Isolation,
    /// How this node authenticates its own calls to peers.
    auth: Auth,
    /// A reader of the log, for shipping committed entries to the bucket.
    log: LogStore,
    /// See [`RaftOptions::vote_floor`]; 0 once this node's log has reached it.
    vote_floor: AtomicU64,
    /// The last index whose entry is in the bucket (a shipped snapshot or log chunk).
    shipped: watch::Sender<u64>,
    /// The last index an acknowledgement waits to see shipped.
    wanted: watch::Sender<u64>,
    /// Whether the leader answers a proposal only once its entry is in the bucket.
    ack_after_shipping: AtomicBool,
    /// When this node last accepted replication from a leader, as milliseconds after
    /// `started` plus one (0: never).
    leader_contact: AtomicU64,
    started: Instant,
    /// As leader: when each voter last accepted its AppendEntries (the read lease).
    acks: QuorumAcks,
    /// Read-index rounds (`read.rs`).
    reads: read::ReadRounds,
}

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
//! Files: this one runs the node (start, propose, peers' requests); `log_store.rs` is the
//! log, `state_machine.rs` applies entries and builds and installs snapshots, `files.rs`
//! holds the atomic-write helpers.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs;
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, Config, SnapshotPolicy, StorageError};
use tokio::sync::watch;

use self::auth::{ClusterSecret, Identity};
use self::network::{Auth, Isolation, RaftReply, RaftRequest, RaftTls, TcpNetwork};
use super::state::{Command, MetadataState, Response};

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
/// Generous because a restart may have to replay a long log, or wait for a quorum of
/// voters to come up.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a proposal keeps looking for a leader (elections take well under a second).
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Entries kept behind a snapshot so a briefly lagging follower (later) can catch up from the
/// log instead of a full snapshot transfer.
const LOGS_TO_KEEP_AFTER_SNAPSHOT: u64 = 8;
/// How far behind the leader's log a learner may be and still be promoted to voter.
const CAUGHT_UP_SLACK: u64 = 16;
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
    /// Whether the leader answers a proposal only once its entry is in the bucket.
    ack_after_shipping: std::sync::atomic::AtomicBool,
    /// When this node last accepted replication from a leader, as milliseconds after
    /// `started` plus one (0: never).
    leader_contact: AtomicU64,
    started: Instant,
}

impl MetadataRaft {
    /// Start (or restart) a single-node Raft whose log, vote and snapshots live in `dir`.
    pub async fn start(
        node_id: u64,
        dir: &Path,
        snapshot_every: u64,
    ) -> Result<Self, RaftGlueError> {
        Self::start_with(dir, RaftOptions::single(node_id, snapshot_every)).await
    }

    /// Start (or restart) this node of the metadata cluster; returns once a leader is
    /// known and this node has applied the log it holds.
    pub async fn start_with(dir: &Path, options: RaftOptions) -> Result<Self, RaftGlueError> {
        let node_id = options.node_id;
        let snapshot_every = options.snapshot_every;
        fs::create_dir_all(dir).map_err(|source| RaftGlueError::Open {
            dir: dir.to_path_buf(),
            source,
        })?;
        check_not_legacy(dir)?;
        let log_store = LogStore::open(dir)?;
        let (sm, state, applied) = StateMachineStore::open(dir)?;
        let fresh = {
            let inner = log_store.lock();
            inner.vote.is_none() && inner.last_log_id().is_none()
        };

        let config = Config {
            cluster_name: "strata-metadata".to_string(),
            heartbeat_interval: 100,
            election_timeout_min: 300,
            election_timeout_max: 600,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_every.max(1)),
            max_in_snapshot_log_to_keep: LOGS_TO_KEEP_AFTER_SNAPSHOT,
            purge_batch_size: 1,
            ..Default::default()
        }
        .validate()
        .map_err(|e| RaftGlueError::Config(e.to_string()))?;

        let isolation = Isolation::new(dir);
        let tls = options
            .tls
            .as_ref()
            .map(RaftTls::broker)
            .transpose()
            .map_err(|e| RaftGlueError::Start(format!("raft_tls: {e}")))?;
        let auth = Auth {
            secret: options.secret.clone(),
            me: Identity::Node(node_id),
            tls,
        };
        let network = TcpNetwork {
            isolation: isolation.clone(),
            auth: auth.clone(),
        };
        let log_reader = log_store.clone();
        let raft = Raft::new(node_id, Arc::new(config), network, log_store, sm)
            .await
            .map_err(|e| RaftGlueError::Start(e.to_string()))?;
        let this = Self {
            inner: Arc::new(Inner {
                raft: raft.clone(),
                state,
                applied,
                isolation: isolation.clone(),
                auth: auth.clone(),
                log: log_reader,
                vote_floor: AtomicU64::new(options.vote_floor),
                shipped: watch::channel(0).0,
                ack_after_shipping: std::sync::atomic::AtomicBool::new(false),
                leader_contact: AtomicU64::new(0),
                started: Instant::now(),
            }),
        };
        let auth_for_join = auth.clone();
        if let Some(listen) = &options.listen {
            let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
                RaftGlueError::Start(format!(
                    "cannot listen for raft on {listen}: {e} (pass --raft-listen with a free HOST:PORT)"
                ))
            })?;
            let mutual_tls = options
                .tls
                .as_ref()
                .is_some_and(|t| t.client_auth == crate::tls::ClientAuth::Required);
            if auth.secret.is_none() && !mutual_tls {
                tracing::warn!(
                    %listen,
                    "the Raft port is unauthenticated: anyone who reaches it can rewrite the \
                     metadata; set --cluster-secret-file (or --raft-tls with \
                     --tls-client-auth required) on every broker"
                );
            }
            tokio::spawn(network::serve(
                listener,
                Arc::new(this.clone()),
                isolation,
                auth,
            ));
        }

        if let Err(e) = Self::wait_ready(&raft, &options, fresh, auth_for_join).await {
            // Don't leave a half-started node running against this directory.
            if let Err(err) = raft.shutdown().await {
                tracing::warn!(error = %err, "shutting down failed metadata raft");
            }
            return Err(e);
        }
        Ok(this)
    }

    async fn wait_ready(
        raft: &Raft,
        options: &RaftOptions,
        fresh: bool,
        auth: Auth,
    ) -> Result<(), RaftGlueError> {
        let node_id = options.node_id;
        let is_voter = options.voters.contains_key(&node_id);
        if fresh && is_voter && options.voters.keys().next() == Some(&node_id) {
            // The lowest-numbered voter founds the cluster; the others wait to hear from it.
            let members = options
                .voters
                .iter()
                .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
                .collect::<BTreeMap<_, _>>();
            match raft.initialize(members).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(RaftGlueError::Start(e.to_string())),
            }
        }
        if fresh && !is_voter {
            tokio::spawn(join_as_learner(raft.clone(), options.clone(), auth));
        }
        if options.voters.len() > 1 || !is_voter {
            tracing::info!(node_id, voter = is_voter, "waiting for the metadata leader");
        }
        let metrics = raft
            .wait(Some(START_TIMEOUT))
            .metrics(
                |m| m.current_leader.is_some() && m.last_log_index.is_some(),
                "metadata leader known",
            )
            .await
            .map_err(|e| {
                RaftGlueError::LeaderTimeout(
                    START_TIMEOUT,
                    format!(
                        "{e} (check --controllers and that a majority of the voters is running)"
                    ),
                )
            })?;
        // Leadership alone does not mean the replayed log is applied; wait for the new
        // leader's blank entry so `state()` reflects everything acknowledged before restart.
        raft.wait(Some(START_TIMEOUT))
            .applied_index_at_least(metrics.last_log_index, "metadata raft replay")
            .await
            .map_err(|e| RaftGlueError::LeaderTimeout(START_TIMEOUT, e.to_string()))?;
        Ok(())
    }

    /// Propose a command; returns the state machine's Response once committed and
    /// applied. A follower or learner forwards it to the leader, and answers only once
    /// it has applied the entry itself: what a broker acknowledged, it then serves
    /// (a topic it created is in its Metadata, a record it took is below its high
    /// watermark).
    pub async fn propose(&self, cmd: Command) -> Result<Response, RaftGlueError> {
        Ok(self.propose_applied(cmd).await?.0)
    }

    /// `propose`, also saying whether this node applied the entry in time (a lease is
    /// renewed only by a heartbeat this node has applied: then its state is as recent).
    pub async fn propose_applied(&self, cmd: Command) -> Result<(Response, bool), RaftGlueError> {
        let (response, index) = self.propose_indexed(cmd).await?;
        let mut applied = self.inner.applied.clone();
        if tokio::time::timeout(PROPOSE_TIMEOUT, applied.wait_for(|i| *i >= index))
            .await
            .is_err()
        {
            tracing::warn!(index, "committed entry not applied locally in time");
            return Ok((response, false));
        }
        Ok((response, true))
    }

    /// When this node (a follower or learner) last accepted an AppendEntries or
    /// InstallSnapshot from a leader; None if never.
    pub fn last_leader_contact(&self) -> Option<Instant> {
        match self.inner.leader_contact.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.inner.started + Duration::from_millis(ms - 1)),
        }
    }

    fn record_leader_contact(&self) {
        let ms = self.inner.started.elapsed().as_millis() as u64 + 1;
        self.inner.leader_contact.fetch_max(ms, Ordering::Relaxed);
    }

    /// `propose`, also returning the entry's log index.
    async fn propose_indexed(&self, cmd: Command) -> Result<(Response, u64), RaftGlueError> {
        let deadline = tokio::time::Instant::now() + PROPOSE_TIMEOUT;
        let started = Instant::now();
        loop {
            // A leader cut off from its followers never learns it was deposed: bound the
            // wait so that the caller gets an error instead of hanging.
            let write =
                tokio::time::timeout_at(deadline, self.inner.raft.client_write(cmd.clone()));
            let Ok(result) = write.await else {
                return Err(RaftGlueError::Propose(format!(
                    "not committed within {PROPOSE_TIMEOUT:?} (no quorum reachable?)"
                )));
            };
            let last_error = match result {
                Ok(resp) => {
                    self.wait_shipped(resp.log_id.index, deadline).await?;
                    metrics::histogram!(crate::telemetry::RAFT_COMMIT_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                    return Ok((resp.data, resp.log_id.index));
                }
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))
                    if self.inner.isolation.isolated() =>
                {
                    "isolated: not forwarding the proposal to the leader".to_owned()
                }
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    match f.leader_node.filter(|n| !n.addr.is_empty()) {
                        Some(leader) => {
                            let request = RaftRequest::Propose(cmd.clone());
                            match network::call_once(
                                &leader.addr,
                                &self.inner.auth,
                                &request,
                                PROPOSE_TIMEOUT,
                            )
                            .await
                            {
                                Ok(RaftReply::Propose(Ok(answer))) => return Ok(answer),
                                Ok(RaftReply::Propose(Err(e))) => e,
                                Ok(_) => "unexpected reply to a forwarded proposal".to_owned(),
                                Err(e) => format!("forwarding to leader {:?}: {e}", f.leader_id),
                            }
                        }
                        None => "no metadata leader elected yet".to_owned(),
                    }
                }
                Err(e) => return Err(RaftGlueError::Propose(e.to_string())),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(RaftGlueError::Propose(last_error));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// On the leader, with shipping required: waits until the entry at `index` is in the
    /// bucket, so that whatever the proposal acknowledges survives the loss of every disk.
    async fn wait_shipped(
        &self,
        index: u64,
        deadline: tokio::time::Instant,
    ) -> Result<(), RaftGlueError> {
        use std::sync::atomic::Ordering;
        if !self.inner.ack_after_shipping.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut shipped = self.inner.shipped.subscribe();
        let reached = tokio::time::timeout_at(deadline, shipped.wait_for(|s| *s >= index))
            .await
            .is_ok_and(|r| r.is_ok());
        if reached {
            return Ok(());
        }
        Err(RaftGlueError::Propose(format!(
            "committed, but not in the object store within {PROPOSE_TIMEOUT:?} (is the store reachable?)"
        )))
    }

    /// A voter on a new disk refuses a candidate that lacks what the bucket holds (see
    /// [`RaftOptions::vote_floor`]); None lets Raft decide as usual.
    fn refuse_vote(
        &self,
        rpc: &openraft::raft::VoteRequest<NodeId>,
    ) -> Option<openraft::raft::VoteResponse<NodeId>> {
        use std::sync::atomic::Ordering;
        let floor = self.inner.vote_floor.load(Ordering::Acquire);
        if floor == 0 {
            return None;
        }
        let metrics = self.inner.raft.metrics().borrow().clone();
        if metrics.last_log_index.unwrap_or(0) >= floor {
            self.inner.vote_floor.store(0, Ordering::Release);
            tracing::info!(floor, "caught up with the bucket: voting again");
            return None;
        }
        let candidate = rpc.last_log_id.map_or(0, |l| l.index);
        if candidate == 0 || candidate >= floor {
            return None;
        }
        tracing::warn!(
            candidate = rpc.vote.leader_id().voted_for(),
            candidate_last_index = candidate,
            floor,
            "refusing my vote: the candidate's log lacks entries the bucket holds (this voter's disk is new)"
        );
        Some(openraft::raft::VoteResponse::new(
            metrics.vote,
            metrics.last_applied,
            false,
        ))
    }

    /// From now on the leader acknowledges a proposal only once it is shipped.
    pub fn ack_after_shipping(&self) {
        self.inner
            .ack_after_shipping
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Records that every entry up to `index` is in the bucket.
    pub fn mark_shipped(&self, index: u64) {
        self.inner.shipped.send_if_modified(|s| {
            let advanced = index > *s;
            *s = (*s).max(index);
            advanced
        });
    }

    /// Committed entries `from..=to` from the local log, or None if some of them were
    /// already purged behind a snapshot.
    pub fn log_entries(&self, from: u64, to: u64) -> Option<Vec<openraft::Entry<TypeConfig>>> {
        let inner = self.inner.log.lock();
        let entries: Vec<_> = inner
            .cache
            .range(from..=to)
            .map(|(_, e)| e.clone())
            .collect();
        let complete = entries.first().is_some_and(|e| e.log_id.index == from)
            && entries.len() as u64 == to.saturating_sub(from) + 1;
        complete.then_some(entries)
    }

    /// The applied state and the index of the last entry in it, read together.
    pub fn state_at_index(&self) -> (MetadataState, u64) {
        let state = self
            .inner
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (state.clone(), *self.inner.applied.borrow())
    }

    /// This node's id, and the current leader's if one is known.
    pub fn leader(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow().current_leader
    }

    /// Role, term and log positions, for metrics and readiness.
    pub fn status(&self) -> RaftStatus {
        let (role, term, leader, last_log_index) = {
            let metrics = self.inner.raft.metrics();
            let m = metrics.borrow();
            let role = match m.state {
                openraft::ServerState::Leader => "leader",
                openraft::ServerState::Follower => "follower",
                openraft::ServerState::Candidate => "candidate",
                openraft::ServerState::Learner => "learner",
                openraft::ServerState::Shutdown => "shutdown",
            };
            (role, m.current_term, m.current_leader, m.last_log_index)
        };
        let committed = self.inner.log.lock().committed.map_or(0, |c| c.index);
        RaftStatus {
            role,
            term,
            leader,
            last_log_index: last_log_index.unwrap_or(0),
            committed,
            applied: *self.inner.applied.borrow(),
        }
    }

    pub fn is_leader(&self) -> bool {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        m.current_leader == Some(m.id)
    }

    /// Read access to the applied state.
    pub fn state(&self) -> Arc<RwLock<MetadataState>> {
        self.inner.state.clone()
    }

    /// Changes whenever entries are applied; the value is the last applied log index.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.inner.applied.clone()
    }

    /// Resolves when the Raft core has stopped on its own (a storage error, a panic in the
    /// core), with the reason. A broker in that state can serve only stale metadata and
    /// commit nothing, so the binary exits rather than stay up half-working.
    pub async fn fatal(&self) -> String {
        let mut metrics = self.inner.raft.metrics();
        loop {
            if let Err(fatal) = &metrics.borrow_and_update().running_state {
                if !matches!(fatal, openraft::error::Fatal::Stopped) {
                    return fatal.to_string();
                }
            }
            if metrics.changed().await.is_err() {
                // The core is gone without a final report: the same as a fatal stop.
                return "the raft core stopped".to_owned();
            }
        }
    }

    pub async fn shutdown(&self) -> Result<(), RaftGlueError> {
        self.inner
            .raft
            .shutdown()
            .await
            .map_err(|e| RaftGlueError::Shutdown(e.to_string()))
    }
}

pub mod auth;
mod files;
mod log_store;
pub mod network;
mod state_machine;
#[cfg(test)]
mod suite_tests;

use log_store::*;
use state_machine::*;

// ---------------------------------------------------------------------------------------------
// Serving peers' requests

impl network::Handler for MetadataRaft {
    async fn handle(
        &self,
        peer: Option<Identity>,
        request: RaftRequest,
    ) -> Result<RaftReply, String> {
        if let Some(refusal) = self.refuse_sender(peer, &request) {
            return match request {
                RaftRequest::Propose(_) => Ok(RaftReply::Propose(Err(refusal))),
                RaftRequest::Join { .. } => Ok(RaftReply::Join(Err(refusal))),
                RaftRequest::ChangeVoters { .. } => Ok(RaftReply::ChangeVoters(Err(refusal))),
                _ => Err(refusal),
            };
        }
        let raft = &self.inner.raft;
        Ok(match request {
            RaftRequest::AppendEntries(rpc) => {
                let reply = raft.append_entries(rpc).await;
                // Anything but a refusal of the sender's term means a current leader
                // reached this node.
                if matches!(&reply, Ok(r) if !matches!(r, openraft::raft::AppendEntriesResponse::HigherVote(_)))
                {
                    self.record_leader_contact();
                }
                RaftReply::AppendEntries(reply)
            }
            RaftRequest::Vote(rpc) => match self.refuse_vote(&rpc) {
                Some(refusal) => RaftReply::Vote(Ok(refusal)),
                None => RaftReply::Vote(raft.vote(rpc).await),
            },
            RaftRequest::InstallSnapshot(rpc) => {
                let reply = raft.install_snapshot(rpc).await;
                if reply.is_ok() {
                    self.record_leader_contact();
                }
                RaftReply::InstallSnapshot(reply)
            }
            RaftRequest::Propose(cmd) => {
                RaftReply::Propose(self.propose_indexed(cmd).await.map_err(|e| e.to_string()))
            }
            RaftRequest::ChangeVoters { add, remove } => {
                RaftReply::ChangeVoters(self.change_voters(add, remove).await)
            }
            RaftRequest::Join { node_id, addr } => {
                RaftReply::Join(self.add_learner(node_id, addr).await)
            }
        })
    }
}

impl MetadataRaft {
    /// Whether `id` is a registered member: a voter or learner of the Raft membership,
    /// or a broker the metadata knows.
    fn is_member(&self, id: NodeId) -> bool {
        let in_raft = self
            .inner
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .is_some();
        in_raft
            || self
                .inner
                .state
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .cluster()
                .broker(id)
                .is_some()
    }

    /// Why an authenticated sender may not send `request`, if it may not. Without a
    /// cluster secret nobody is authenticated and everything is accepted, as before.
    fn refuse_sender(&self, peer: Option<Identity>, request: &RaftRequest) -> Option<String> {
        let peer = peer?;
        let member = |id| self.is_member(id);
        match (peer, request) {
            // A joining node asks for itself; a member may forward another's join.
            (Identity::Node(id), RaftRequest::Join { node_id, .. })
                if id == *node_id || member(id) =>
            {
                None
            }
            (Identity::Node(id), RaftRequest::Join { node_id, .. }) => Some(format!(
                "node {id} may not ask for node {node_id} to join (it is not a member)"
            )),
            (Identity::Operator, RaftRequest::ChangeVoters { .. }) => None,
            (Identity::Operator, _) => {
                Some("an operator may only change voters, not take part in Raft".into())
            }
            // Raft's own RPCs: openraft judges them by term and membership.
            (
                Identity::Node(_),
                RaftRequest::AppendEntries(_)
                | RaftRequest::Vote(_)
                | RaftRequest::InstallSnapshot(_),
            ) => None,
            (Identity::Node(id), RaftRequest::Propose(_) | RaftRequest::ChangeVoters { .. }) => {
                (!member(id)).then(|| {
                    format!(
                        "refused: node {id} is not a registered member of this cluster (start it \
                         so that it joins first)"
                    )
                })
            }
        }
    }
}

impl MetadataRaft {
    /// Adds a learner (on the leader; a follower forwards to it).
    /// Promotes learners to voters and demotes voters to learners, on the leader (a
    /// follower forwards). A learner is promoted only once it has caught up, so that it
    /// counts toward a quorum only when it holds what the quorum acknowledged.
    async fn change_voters(
        &self,
        add: Vec<NodeId>,
        remove: Vec<NodeId>,
    ) -> Result<Vec<NodeId>, String> {
        use openraft::ChangeMembers;
        let metrics = self.inner.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(metrics.id) {
            if self.inner.isolation.isolated() {
                return Err("isolated: not forwarding the membership change".into());
            }
            let leader = metrics
                .current_leader
                .and_then(|id| {
                    metrics
                        .membership_config
                        .membership()
                        .get_node(&id)
                        .cloned()
                })
                .filter(|n| !n.addr.is_empty())
                .ok_or("no metadata leader elected yet")?;
            let request = RaftRequest::ChangeVoters { add, remove };
            return match network::call_once(
                &leader.addr,
                &self.inner.auth,
                &request,
                PROPOSE_TIMEOUT,
            )
            .await
            {
                Ok(RaftReply::ChangeVoters(result)) => result,
                Ok(_) => Err("unexpected reply to a forwarded membership change".into()),
                Err(e) => Err(format!("forwarding to the leader: {e}")),
            };
        }
        let last = metrics.last_log_index.unwrap_or(0);
        for id in &add {
            let matched = metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .map_or(0, |l| l.index);
            if !metrics
                .membership_config
                .membership()
                .learner_ids()
                .any(|l| l == *id)
            {
                return Err(format!(
                    "node {id} is not a learner of this cluster (start it first: it joins as a learner)"
                ));
            }
            if matched + CAUGHT_UP_SLACK < last {
                return Err(format!(
                    "node {id} has not caught up yet (it holds up to index {matched} of {last}); retry shortly"
                ));
            }
        }
        let changes = [
            (!add.is_empty()).then(|| ChangeMembers::AddVoterIds(add.iter().copied().collect())),
            (!remove.is_empty())
                .then(|| ChangeMembers::RemoveVoters(remove.iter().copied().collect())),
        ];
        for change in changes.into_iter().flatten() {
            // `retain`: a demoted voter stays a learner and still serves clients.
            self.inner
                .raft
                .change_membership(change, true)
                .await
                .map_err(|e| e.to_string())?;
        }
        let voters: Vec<NodeId> = self
            .inner
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        if !add.is_empty() || !remove.is_empty() {
            tracing::info!(?add, ?remove, ?voters, "metadata voters changed");
        }
        Ok(voters)
    }

    async fn add_learner(&self, node_id: NodeId, addr: String) -> Result<(), String> {
        match self
            .inner
            .raft
            .add_learner(node_id, BasicNode { addr: addr.clone() }, false)
            .await
        {
            Ok(_) => {
                tracing::info!(node_id, %addr, "learner added to the metadata cluster");
                Ok(())
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))
                if self.inner.isolation.isolated() =>
            {
                Err("isolated: not forwarding the join to the leader".into())
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                let leader = f.leader_node.ok_or("no metadata leader elected yet")?;
                match network::call_once(
                    &leader.addr,
                    &self.inner.auth,
                    &RaftRequest::Join { node_id, addr },
                    PROPOSE_TIMEOUT,
                )
                .await
                {
                    Ok(RaftReply::Join(result)) => result,
                    Ok(_) => Err("unexpected reply to a forwarded join".into()),
                    Err(e) => Err(e.to_string()),
                }
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

/// A new learner asks the voters, in turn, to add it until one (or its leader) does.
async fn join_as_learner(raft: Raft, options: RaftOptions, auth: Auth) {
    let request = RaftRequest::Join {
        node_id: options.node_id,
        addr: options.addr.clone(),
    };
    loop {
        for addr in options.voters.values() {
            match network::call_once(addr, &auth, &request, PROPOSE_TIMEOUT).await {
                Ok(RaftReply::Join(Ok(()))) => return,
                Ok(RaftReply::Join(Err(e))) => tracing::debug!(%addr, error = %e, "join refused"),
                Ok(_) => {}
                // A wrong secret is logged (rate-limited) where the handshake failed.
                Err(e) => tracing::debug!(%addr, error = %e, "voter unreachable"),
            }
        }
        if raft.metrics().borrow().current_leader.is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write;
    use std::sync::PoisonError;

    use openraft::{
        Entry, EntryPayload, LogId, SnapshotMeta, StorageIOError, StoredMembership, Vote,
    };

    use super::super::codec::{self, Kind};
    use super::*;

    /// The only test code that knows `Command`'s shape: adapt it if the variants change.
    /// Any deterministic command works, since results are compared against a plain
    /// `MetadataState` that applied the same sequence.
    /// Topic creations, some of which fail (a repeated name): any deterministic command will do.
    fn add(i: u64) -> Command {
        Command::CreateTopic {
            name: format!("t{}", i % 7),
            topic_id: [i as u8; 16],
            partitions: 1 + (i % 3) as i32,
            configs: Default::default(),
            now_ms: i as i64,
            preferred: Vec::new(),
        }
    }

    /// Compared as JSON so the state types need no `PartialEq`.
    fn snapshot_of(r: &MetadataRaft) -> serde_json::Value {
        let state = r.state();
        let guard = state.read().unwrap_or_else(PoisonError::into_inner);
        serde_json::to_value(&*guard).unwrap_or_default()
    }

    fn expected(n: u64) -> serde_json::Value {
        let mut s = MetadataState::default();
        for i in 0..n {
            s.apply(&add(i));
        }
        serde_json::to_value(&s).unwrap_or_default()
    }

    async fn propose_range(r: &MetadataRaft, range: std::ops::Range<u64>) -> anyhow::Result<()> {
        for i in range {
            r.propose(add(i)).await?;
        }
        Ok(())
    }

    #[tokio::test]
    async fn only_members_propose_and_only_nodes_join() -> anyhow::Result<()> {
        use crate::metadata::state::cluster::ClusterCommand;
        use network::Handler;
        let dir = tempfile::tempdir()?;
        let r = MetadataRaft::start(1, dir.path(), 1000).await?;
        let propose = || RaftRequest::Propose(add(1));
        let join = |node_id| RaftRequest::Join {
            node_id,
            addr: "127.0.0.1:1".into(),
        };
        let change = || RaftRequest::ChangeVoters {
            add: vec![],
            remove: vec![],
        };
        let stranger = Some(Identity::Node(9));
        // Without a secret nobody is authenticated: as before, nothing is refused here.
        assert_eq!(r.refuse_sender(None, &propose()), None);
        // A voter may propose; a node that is not a member may not, and is told why.
        assert_eq!(r.refuse_sender(Some(Identity::Node(1)), &propose()), None);
        let refusal = r.refuse_sender(stranger, &propose());
        assert!(
            refusal
                .as_deref()
                .is_some_and(|e| e.contains("node 9 is not a registered member")),
            "{refusal:?}"
        );
        assert!(r.refuse_sender(stranger, &change()).is_some());
        // The handler answers a refused proposal with an error, not by applying it.
        match r.handle(stranger, propose()).await {
            Ok(RaftReply::Propose(Err(e))) => assert!(e.contains("not a registered member")),
            other => panic!("{other:?}"),
        }
        // A new node may ask to join for itself only; a member may forward a join.
        assert_eq!(r.refuse_sender(stranger, &join(9)), None);
        assert!(r.refuse_sender(stranger, &join(10)).is_some());
        assert_eq!(r.refuse_sender(Some(Identity::Node(1)), &join(10)), None);
        // The operator (`strata voters`) changes voters and nothing else.
        assert_eq!(r.refuse_sender(Some(Identity::Operator), &change()), None);
        assert!(r
            .refuse_sender(Some(Identity::Operator), &propose())
            .is_some());
        assert!(r
            .handle(
                Some(Identity::Operator),
                RaftRequest::Vote(openraft::raft::VoteRequest::new(Vote::new(1, 1), None),)
            )
            .await
            .is_err());
        // A broker the metadata knows is a member even outside the Raft membership.
        r.propose(Command::Cluster(ClusterCommand::Register {
            id: 9,
            host: "h".into(),
            port: 1,
            rack: None,
            now_ms: 0,
        }))
        .await?;
        assert_eq!(r.refuse_sender(stranger, &propose()), None);
        r.shutdown().await?;
        Ok(())
    }

    #[tokio::test]
    async fn restart_restores_state() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let r = MetadataRaft::start(1, dir.path(), 1000).await?;
        let mut applied = r.applied();
        r.propose(add(0)).await?;
        assert!(applied.has_changed()?);
        applied.borrow_and_update();
        propose_range(&r, 1..20).await?;
        let before = snapshot_of(&r);
        assert_eq!(before, expected(20));
        r.shutdown().await?;
        drop(r);

        let r = MetadataRaft::start(1, dir.path(), 1000).await?;
        assert_eq!(snapshot_of(&r), before);
        // And it keeps working after restart.
        propose_range(&r, 20..25).await?;
        assert_eq!(snapshot_of(&r), expected(25));
        r.shutdown().await?;
        Ok(())
    }

    #[tokio::test]
    async fn restart_after_snapshot_and_purge() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let r = MetadataRaft::start(1, dir.path(), 10).await?;
        propose_range(&r, 0..35).await?;
        let m = r
            .inner
            .raft
            .wait(Some(Duration::from_secs(10)))
            .metrics(|m| m.purged.is_some() && m.snapshot.is_some(), "purge")
            .await?;
        assert!(m.snapshot.map(|s| s.index).unwrap_or(0) >= 20);
        let before = snapshot_of(&r);
        assert_eq!(before, expected(35));
        r.shutdown().await?;
        drop(r);

        assert!(dir.path().join(SNAPSHOT_FILE).exists());
        {
            let log = LogStore::open(dir.path())?;
            let inner = log.lock();
            let purged = inner.last_purged.map(|l| l.index);
            assert!(purged.is_some());
            assert!(inner.cache.keys().all(|k| Some(*k) > purged));
        }

        let r = MetadataRaft::start(1, dir.path(), 10).await?;
        assert_eq!(snapshot_of(&r), before);
        assert!(*r.applied().borrow() >= 36);
        propose_range(&r, 35..50).await?;
        r.shutdown().await?;
        drop(r);

        let r = MetadataRaft::start(1, dir.path(), 10).await?;
        assert_eq!(snapshot_of(&r), expected(50));
        r.shutdown().await?;
        Ok(())
    }

    /// Dropping the runtime kills every task mid-flight without a graceful shutdown, which is
    /// as close to SIGKILL as an in-process test gets.
    #[test]
    fn abrupt_stop_keeps_acknowledged_entries() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let runtime = || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
        };
        let before = runtime()?.block_on(async {
            let r = MetadataRaft::start(1, dir.path(), 5).await?;
            propose_range(&r, 0..23).await?;
            anyhow::Ok(snapshot_of(&r))
        })?;
        assert_eq!(before, expected(23));

        runtime()?.block_on(async {
            let r = MetadataRaft::start(1, dir.path(), 5).await?;
            assert_eq!(snapshot_of(&r), before);
            r.shutdown().await?;
            anyhow::Ok(())
        })
    }

    /// A node in `dir` that applied 12 entries and stopped: its state and its log file.
    async fn stopped_after_12(dir: &Path) -> anyhow::Result<(serde_json::Value, PathBuf)> {
        let r = MetadataRaft::start(1, dir, 1000).await?;
        propose_range(&r, 0..12).await?;
        let state = snapshot_of(&r);
        r.shutdown().await?;
        Ok((state, dir.join(LOG_FILE)))
    }

    #[tokio::test]
    async fn torn_tail_is_discarded() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (before, log_path) = stopped_after_12(dir.path()).await?;
        let clean_len = fs::metadata(&log_path)?.len();
        // A half-written record: plausible header, truncated payload.
        let mut torn = Vec::new();
        encode_record(&Record::Purged(LogId::default()), &mut torn)?;
        torn.truncate(torn.len() - 3);
        torn.extend_from_slice(b"\0\0garbage");
        OpenOptions::new()
            .append(true)
            .open(&log_path)?
            .write_all(&torn)?;

        let r = MetadataRaft::start(1, dir.path(), 1000).await?;
        assert_eq!(snapshot_of(&r), before);
        propose_range(&r, 12..15).await?;
        assert_eq!(snapshot_of(&r), expected(15));
        r.shutdown().await?;
        drop(r);
        assert!(fs::metadata(&log_path)?.len() > clean_len);

        let r = MetadataRaft::start(1, dir.path(), 1000).await?;
        assert_eq!(snapshot_of(&r), expected(15));
        r.shutdown().await?;
        Ok(())
    }

    #[tokio::test]
    async fn damage_in_the_middle_refuses_to_start_and_zeros_are_a_torn_tail() -> anyhow::Result<()>
    {
        let dir = tempfile::tempdir()?;
        let (before, log_path) = stopped_after_12(dir.path()).await?;
        let clean = fs::read(&log_path)?;

        // A zero-filled tail (the file grew, its data never reached the disk) is cut.
        let mut zeros = clean.clone();
        zeros.extend_from_slice(&[0u8; 300]);
        fs::write(&log_path, &zeros)?;
        let r = MetadataRaft::start(1, dir.path(), 1000).await?;
        assert_eq!(snapshot_of(&r), before);
        r.shutdown().await?;
        drop(r);
        assert_eq!(fs::read(&log_path)?, clean);

        // One flipped bit in the second record's payload, with good records behind it.
        let (_, first) = decode_record(&clean)?.ok_or_else(|| anyhow::anyhow!("empty log"))?;
        let mut damaged = clean.clone();
        damaged[first + HEADER_LEN + 2] ^= 0x10;
        fs::write(&log_path, &damaged)?;
        let err = start_error(dir.path(), "a log damaged in the middle").await?;
        let message = err.to_string();
        assert!(message.contains(&format!("byte {first}")), "{message}");
        assert!(message.contains("damaged"), "{message}");
        // Nothing was cut.
        assert_eq!(fs::read(&log_path)?, damaged);
        Ok(())
    }

    /// A record as format 1 wrote it: the same framing around a JSON payload.
    fn json_record(json: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(json).to_le_bytes());
        out.extend_from_slice(json);
        out
    }

    /// The error a start on `dir` must fail with (`why` names what should stop it).
    async fn start_error(dir: &Path, why: &str) -> anyhow::Result<RaftGlueError> {
        match MetadataRaft::start(1, dir, 1000).await {
            Ok(r) => {
                r.shutdown().await?;
                anyhow::bail!("start must fail on {why}")
            }
            Err(e) => Ok(e),
        }
    }

    #[tokio::test]
    async fn old_format_directory_is_refused() -> anyhow::Result<()> {
        // A JSON log, as format 1 wrote it.
        let dir = tempfile::tempdir()?;
        let mut log = json_record(br#"{"Purged":{"leader_id":{"term":1,"node_id":1},"index":4}}"#);
        log.extend(json_record(br#"{"Entry":{"log_id":{"leader_id":{"term":1,"node_id":1},"index":5},"payload":"Blank"}}"#));
        fs::write(dir.path().join(LOG_FILE), &log)?;
        let err = start_error(dir.path(), "a format 1 directory").await?;
        assert!(matches!(err, RaftGlueError::LegacyFormat { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains("older Strata (JSON format)"), "{message}");
        assert!(message.contains("--recover-from-store"), "{message}");
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
        // Nothing was truncated or rewritten.
        assert_eq!(fs::read(dir.path().join(LOG_FILE))?, log);

        // A JSON snapshot alone is enough to tell.
        let dir = tempfile::tempdir()?;
        fs::write(dir.path().join(LEGACY_SNAPSHOT_FILE), b"{}")?;
        let err = start_error(dir.path(), "a format 1 directory").await?;
        assert!(matches!(err, RaftGlueError::LegacyFormat { .. }), "{err}");
        Ok(())
    }

    #[tokio::test]
    async fn undecodable_whole_record_is_an_error_not_a_torn_tail() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let r = MetadataRaft::start(1, dir.path(), 1000).await?;
        propose_range(&r, 0..3).await?;
        r.shutdown().await?;
        drop(r);
        let log_path = dir.path().join(LOG_FILE);
        let mut payload = codec::encode(Kind::LogRecord, &Record::Purged(LogId::default()))?;
        payload[4..6].copy_from_slice(&9u16.to_le_bytes());
        let before = fs::read(&log_path)?;
        let mut log = before.clone();
        log.extend(json_record(&payload));
        fs::write(&log_path, &log)?;
        let err = start_error(dir.path(), "a record from a newer format").await?;
        let message = err.to_string();
        assert!(message.contains("newer Strata (format 9"), "{message}");
        assert!(
            message.contains(&format!("byte {}", before.len())),
            "{message}"
        );
        Ok(())
    }

    fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(openraft::CommittedLeaderId::new(term, 1), index)
    }

    fn sample_command() -> Command {
        Command::CommitSegments {
            now_ms: 2,
            max_age_ms: 0,
            segments: vec![super::super::state::SegmentCommit {
                txn: Vec::new(),
                object: "segments/1-1-1-1.seg".into(),
                object_size: 4096,
                uploaded_ms: 1,
                entries: vec![super::super::state::SegmentEntry {
                    topic: "t".into(),
                    partition: 2,
                    position: 8,
                    length: 100,
                    offset_count: 3,
                    max_timestamp: -1,
                    producer: Some(super::super::state::ProducerBatch {
                        producer_id: 7,
                        epoch: 1,
                        first_sequence: 0,
                        last_sequence: 2,
                    }),
                }],
            }],
        }
    }

    fn sample_entries() -> Vec<Entry<TypeConfig>> {
        let membership = openraft::Membership::new(
            vec![[1, 2, 3].into_iter().collect()],
            BTreeMap::from([
                (1, BasicNode::new("a:1")),
                (2, BasicNode::new("b:2")),
                (3, BasicNode::new("c:3")),
                (4, BasicNode::new("learner:4")),
            ]),
        );
        vec![
            Entry {
                log_id: log_id(2, 10),
                payload: EntryPayload::Normal(sample_command()),
            },
            Entry {
                log_id: log_id(2, 11),
                payload: EntryPayload::Membership(membership),
            },
            Entry {
                log_id: log_id(3, 12),
                payload: EntryPayload::Blank,
            },
        ]
    }

    /// openraft's types have no `PartialEq` for every config; their Debug form shows
    /// every field.
    fn same<T: Debug>(a: &T, b: &T) {
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }

    #[test]
    fn openraft_types_round_trip_through_the_codec() -> anyhow::Result<()> {
        for entry in sample_entries() {
            let mut buf = Vec::new();
            encode_record(&Record::Entry(entry.clone()), &mut buf)?;
            match decode_record(&buf)? {
                Some((Record::Entry(back), used)) => {
                    assert_eq!(used, buf.len());
                    same(&back, &entry);
                }
                _ => anyhow::bail!("entry did not decode"),
            }
        }
        let vote = Vote::new_committed(4, 2);
        same(
            &codec::decode::<Vote<NodeId>>(Kind::RaftRpc, &codec::encode(Kind::RaftRpc, &vote)?)?,
            &vote,
        );
        let meta = SnapshotMeta {
            last_log_id: Some(log_id(2, 11)),
            last_membership: StoredMembership::new(
                Some(log_id(2, 11)),
                openraft::Membership::new(
                    vec![[1].into_iter().collect()],
                    BTreeMap::from([(1, BasicNode::new("a:1"))]),
                ),
            ),
            snapshot_id: "2-1-11".into(),
        };
        let back: SnapshotMeta<NodeId, BasicNode> = codec::decode(
            Kind::LocalSnapshot,
            &codec::encode(Kind::LocalSnapshot, &meta)?,
        )?;
        same(&back, &meta);
        Ok(())
    }

    #[test]
    fn raft_messages_round_trip_through_the_codec() -> anyhow::Result<()> {
        use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest};
        let requests = [
            RaftRequest::AppendEntries(AppendEntriesRequest {
                vote: Vote::new_committed(3, 1),
                prev_log_id: Some(log_id(2, 9)),
                entries: sample_entries(),
                leader_commit: Some(log_id(2, 9)),
            }),
            RaftRequest::InstallSnapshot(InstallSnapshotRequest {
                vote: Vote::new_committed(3, 1),
                meta: SnapshotMeta::default(),
                offset: 0,
                data: vec![0, 1, 2, 255],
                done: true,
            }),
            RaftRequest::Propose(sample_command()),
            RaftRequest::Join {
                node_id: 4,
                addr: "learner:4".into(),
            },
            RaftRequest::ChangeVoters {
                add: vec![4],
                remove: vec![3],
            },
        ];
        for request in &requests {
            let back: RaftRequest =
                codec::decode(Kind::RaftRpc, &codec::encode(Kind::RaftRpc, request)?)?;
            same(&back, request);
        }
        let fatal = openraft::error::Fatal::StorageError(
            StorageIOError::<NodeId>::write_logs(&io::Error::other("disk full")).into(),
        );
        let replies = [
            RaftReply::AppendEntries(Ok(AppendEntriesResponse::Success)),
            RaftReply::AppendEntries(Err(RaftError::Fatal(fatal))),
            RaftReply::Propose(Ok((
                Response::Segments(vec![vec![
                    Ok(5),
                    Err(super::super::state::StateError::DuplicateSequence(3)),
                ]]),
                12,
            ))),
            RaftReply::Join(Err("no leader".into())),
        ];
        for reply in &replies {
            let back: RaftReply =
                codec::decode(Kind::RaftRpc, &codec::encode(Kind::RaftRpc, reply)?)?;
            same(&back, reply);
        }
        Ok(())
    }

    /// A state exercising every optional part (producers, cluster, group metadata) comes
    /// back equal from a snapshot file.
    #[test]
    fn snapshot_file_round_trips_a_full_state() -> anyhow::Result<()> {
        let mut state = MetadataState::default();
        for i in 0..5 {
            state.apply(&add(i));
        }
        state.apply(&Command::CreateTopic {
            name: "t".into(),
            topic_id: [3; 16],
            partitions: 3,
            configs: BTreeMap::from([("cleanup.policy".into(), "delete".into())]),
            now_ms: 1,
            preferred: Vec::new(),
        });
        state.apply(&Command::InitProducer { current: None });
        state.apply(&sample_command());
        state.apply(&Command::CommitOffsets {
            group: "g".into(),
            offsets: vec![super::super::state::OffsetCommit {
                topic: "t".into(),
                partition: 2,
                offset: 3,
                leader_epoch: -1,
                metadata: None,
                commit_ms: 9,
            }],
        });
        state.apply(&Command::Cluster(
            super::super::state::cluster::ClusterCommand::Register {
                id: 1,
                host: "h".into(),
                port: 9092,
                rack: Some("az1".into()),
                now_ms: 5,
            },
        ));
        assert!(state
            .partition("t", 2)
            .is_some_and(|p| !p.producers.is_empty()));
        let file = SnapshotFile {
            meta: SnapshotMeta::default(),
            state: state.clone(),
        };
        let bytes = codec::encode(Kind::LocalSnapshot, &file)?;
        let back: SnapshotFile = codec::decode(Kind::LocalSnapshot, &bytes)?;
        assert_eq!(back.state, state);
        let (meta, _) =
            codec::decode_prefix::<SnapshotMeta<NodeId, BasicNode>>(Kind::LocalSnapshot, &bytes)?;
        same(&meta, &file.meta);
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn garbage_log_and_frames_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = decode_record(&bytes);
            let mut framed = Kind::LogRecord.magic().to_vec();
            framed.extend_from_slice(&codec::FORMAT_VERSION.to_le_bytes());
            framed.extend_from_slice(&bytes);
            let _ = codec::decode::<Record>(Kind::LogRecord, &framed);
            framed[..4].copy_from_slice(&Kind::RaftRpc.magic());
            let _ = codec::decode::<RaftRequest>(Kind::RaftRpc, &framed);
            let _ = codec::decode::<RaftReply>(Kind::RaftRpc, &framed);
            framed[..4].copy_from_slice(&Kind::LocalSnapshot.magic());
            let _ = codec::decode::<SnapshotFile>(Kind::LocalSnapshot, &framed);
        }
    }

    #[tokio::test]
    async fn corrupt_vote_file_names_path() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        fs::write(dir.path().join(VOTE_FILE), b"{not json")?;
        let err = match MetadataRaft::start(1, dir.path(), 10).await {
            Ok(_) => anyhow::bail!("start must fail on a corrupt vote file"),
            Err(e) => e,
        };
        assert!(err.to_string().contains(VOTE_FILE), "{err}");
        Ok(())
    }
}

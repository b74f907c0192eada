//! The running node: starting it on its Raft directory (founding the cluster, or waiting
//! for the leader and joining as a learner), proposing commands (a follower forwards them
//! to the leader, and answers once it applied them itself), and what the node knows of
//! its progress and of the leader: status, the applied index, the last leader contact
//! (for fencing), and how far the log is shipped to the bucket.

use std::collections::BTreeMap;
use std::fs;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, Config, SnapshotPolicy};
use tokio::sync::watch;

use super::auth::Identity;
use super::membership::keep_membership;
use super::network::{self, RaftReply, RaftRequest, RaftTls, TcpNetwork};
use super::*;

/// Generous because a restart may have to replay a long log, or wait for a quorum of
/// voters to come up.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a leader that stepped down holds its own elections back, waiting for the new
/// leader to reach it (see `hold_elections_after_stepping_down`): several of the leader's
/// retries to a peer it could not reach (each after a pause of up to 2 s, and the first
/// over a new connection may time out too). The other voters still elect meanwhile.
const STEP_DOWN_HOLD: Duration = Duration::from_secs(8);
/// Raft's refusal of a write on this node (ForwardToLeader on a follower).
type WriteRefused = RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>;

/// Entries kept behind a snapshot so a briefly lagging follower (later) can catch up from the
/// log instead of a full snapshot transfer.
const LOGS_TO_KEEP_AFTER_SNAPSHOT: u64 = 8;

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
        let acks = network::QuorumAcks::default();
        let network = TcpNetwork {
            isolation: isolation.clone(),
            auth: auth.clone(),
            acks: acks.clone(),
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
                wanted: watch::channel(0).0,
                ack_after_shipping: std::sync::atomic::AtomicBool::new(false),
                leader_contact: AtomicU64::new(0),
                started: Instant::now(),
                acks,
                reads: Default::default(),
            }),
        };
        if let Some(listen) = &options.listen {
            this.serve_peers(listen, options.tls.as_ref(), isolation, auth.clone())
                .await?;
            tokio::spawn(this.clone().hold_elections_after_stepping_down());
        }

        if !options.voters.contains_key(&node_id) {
            tokio::spawn(keep_membership(
                Arc::downgrade(&this.inner),
                options.clone(),
                auth.clone(),
                fresh,
            ));
        }
        if let Err(e) = Self::wait_ready(&raft, &options, fresh).await {
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
    /// A leader counts as in contact while a majority of the voters follows it, so one
    /// that steps down (a candidate with a higher term reached it) is not taken for one
    /// that heard from no leader since before it led.
    pub fn last_leader_contact(&self) -> Option<Instant> {
        let quorum = {
            let metrics = self.inner.raft.metrics();
            let m = metrics.borrow();
            (m.current_leader == Some(m.id))
                .then(|| {
                    let voters = m.membership_config.membership().voter_ids();
                    self.inner
                        .acks
                        .quorum_since(voters, m.id, m.current_term, Instant::now())
                })
                .flatten()
        };
        if let Some(at) = quorum {
            self.record_contact_at(at);
        }
        match self.inner.leader_contact.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.inner.started + Duration::from_millis(ms - 1)),
        }
    }

    pub(super) fn record_leader_contact(&self) {
        self.record_contact_at(Instant::now());
    }

    fn record_contact_at(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.inner.started).as_millis() as u64 + 1;
        self.inner.leader_contact.fetch_max(ms, Ordering::Relaxed);
    }

    /// `propose`, also returning the entry's log index.
    pub(super) async fn propose_indexed(
        &self,
        cmd: Command,
    ) -> Result<(Response, u64), RaftGlueError> {
        let deadline = tokio::time::Instant::now() + PROPOSE_TIMEOUT;
        loop {
            let last_error = match self.write_here(cmd.clone(), deadline).await? {
                Ok(answer) => return Ok(answer),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))
                    if self.inner.isolation.isolated() =>
                {
                    "isolated: not forwarding the proposal to the leader".to_owned()
                }
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    match f.leader_node.filter(|n| !n.addr.is_empty()) {
                        Some(leader) => {
                            let request = RaftRequest::Propose(cmd.clone());
                            // Not past this proposer's deadline: once it gives up, its
                            // caller hears so (a produce is answered with an error).
                            let call = tokio::time::timeout_at(
                                deadline,
                                network::call_once(
                                    &leader.addr,
                                    &self.inner.auth,
                                    &request,
                                    PROPOSE_TIMEOUT,
                                ),
                            );
                            // A leader that froze or was cut off holds the call open; once
                            // another is elected, the proposal goes there at once. Sending
                            // it twice is safe: a segment commits once (a retry hears its
                            // first offsets), heartbeats only renew.
                            tokio::select! {
                                reply = call => match reply {
                                    Ok(Ok(RaftReply::Propose(Ok(answer)))) => return Ok(answer),
                                    Ok(Ok(RaftReply::Propose(Err(e)))) => e,
                                    Ok(Ok(_)) => "unexpected reply to a forwarded proposal".to_owned(),
                                    Ok(Err(e)) => format!("forwarding to leader {:?}: {e}", f.leader_id),
                                    Err(_) => format!(
                                        "not committed within {PROPOSE_TIMEOUT:?} (forwarded to leader {:?})",
                                        f.leader_id
                                    ),
                                },
                                () = self.leader_moved(f.leader_id) => {
                                    tracing::debug!(from = ?f.leader_id, "metadata leader changed: forwarding the proposal to the new one");
                                    continue;
                                }
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

    /// Appends `cmd` to this node's log and waits for it to commit (and ship, if it must)
    /// by `deadline`. The inner error is Raft's refusal (ForwardToLeader on a follower).
    async fn write_here(
        &self,
        cmd: Command,
        deadline: tokio::time::Instant,
    ) -> Result<Result<(Response, u64), WriteRefused>, RaftGlueError> {
        let started = Instant::now();
        let needs_shipping = cmd.needs_shipping();
        // A leader cut off from its followers never learns it was deposed: bound the
        // wait so that the caller gets an error instead of hanging.
        let write = tokio::time::timeout_at(deadline, self.inner.raft.client_write(cmd));
        let Ok(result) = write.await else {
            return Err(RaftGlueError::Propose(format!(
                "not committed within {PROPOSE_TIMEOUT:?} (no quorum reachable?)"
            )));
        };
        match result {
            Ok(resp) => {
                if needs_shipping {
                    self.wait_shipped(resp.log_id.index, deadline).await?;
                }
                metrics::histogram!(crate::telemetry::RAFT_COMMIT_SECONDS)
                    .record(started.elapsed().as_secs_f64());
                Ok(Ok((resp.data, resp.log_id.index)))
            }
            Err(e) => Ok(Err(e)),
        }
    }

    /// A proposal another node forwarded: written here if this node leads, else refused
    /// at once. It is never forwarded again: a proposal passed on would outlive its
    /// proposer, which gives up at its own deadline and tells its client the write failed
    /// (a produce retried elsewhere), and could then commit the same records a second time.
    pub(super) async fn propose_forwarded(
        &self,
        cmd: Command,
    ) -> Result<(Response, u64), RaftGlueError> {
        let deadline = tokio::time::Instant::now() + PROPOSE_TIMEOUT;
        match self.write_here(cmd, deadline).await? {
            Ok(answer) => Ok(answer),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(RaftGlueError::Propose(format!(
                    "not the metadata leader (the leader is {:?}); the proposer retries",
                    f.leader_id
                )))
            }
            Err(e) => Err(RaftGlueError::Propose(e.to_string())),
        }
    }

    /// A leader that steps down because another was elected with a higher term (it was
    /// frozen, or cut off, and is back) may wait a while for that leader to reach it (its
    /// retries to a peer that was unreachable back off up to 2 s), longer than this
    /// node's election timeout: campaigning then would only depose a working leader and
    /// stall every commit for an election. So it holds its own elections back until the
    /// leader replicates to it, or for [`STEP_DOWN_HOLD`] at most (it still votes). Only
    /// when it knows that vote is committed: a leader deposed by a mere candidate (a
    /// follower that was cut off and campaigned) campaigns at once, as the node most
    /// likely to win.
    async fn hold_elections_after_stepping_down(self) {
        let mut metrics = self.inner.raft.metrics();
        let mut was_leader = false;
        let mut stepped_down: Option<Instant> = None;
        let mut held_since: Option<Instant> = None;
        loop {
            let changed = tokio::time::timeout(Duration::from_millis(100), metrics.changed());
            if let Ok(Err(_)) = changed.await {
                return; // the Raft core stopped
            }
            let (is_leader, other_elected) = {
                let m = metrics.borrow_and_update();
                let other_elected =
                    m.vote.is_committed() && m.vote.leader_id().voted_for() != Some(m.id);
                (m.current_leader == Some(m.id), other_elected)
            };
            if was_leader && !is_leader {
                stepped_down = Some(Instant::now());
            }
            was_leader = is_leader;
            if let Some(at) = stepped_down {
                let reached = self.last_leader_contact().is_some_and(|c| c > at);
                if is_leader || reached || at.elapsed() >= STEP_DOWN_HOLD {
                    stepped_down = None;
                } else if other_elected && held_since.is_none() {
                    tracing::info!(
                        "stepped down as metadata leader: holding elections back until the new leader reaches this node"
                    );
                    self.inner.raft.runtime_config().elect(false);
                    held_since = Some(at);
                }
            }
            if let Some(since) = held_since {
                let reached = self.last_leader_contact().is_some_and(|c| c > since);
                if reached || since.elapsed() >= STEP_DOWN_HOLD || is_leader {
                    self.inner.raft.runtime_config().elect(true);
                    held_since = None;
                }
            }
        }
    }

    /// Resolves once this node knows of a leader other than `from`.
    pub(super) async fn leader_moved(&self, from: Option<NodeId>) {
        let mut metrics = self.inner.raft.metrics();
        let stopped = metrics
            .wait_for(|m| m.current_leader.is_some() && m.current_leader != from)
            .await
            .is_err();
        if stopped {
            // The Raft core stopped: nothing will move again.
            std::future::pending::<()>().await;
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
        // Tells the shipper someone waits, before waiting.
        self.inner.wanted.send_if_modified(|w| {
            let later = index > *w;
            *w = (*w).max(index);
            later
        });
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

    /// From now on the leader acknowledges a proposal only once it is shipped.
    pub fn ack_after_shipping(&self) {
        self.inner
            .ack_after_shipping
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// The last index an acknowledgement waits to see shipped: entries after it (lease
    /// renewals, say) may wait for company.
    pub fn shipping_wanted(&self) -> watch::Receiver<u64> {
        self.inner.wanted.subscribe()
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

    /// The last applied index now.
    pub fn applied_index(&self) -> u64 {
        *self.inner.applied.borrow()
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

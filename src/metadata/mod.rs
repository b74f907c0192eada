//! Metadata: the pure state machine and the Raft log that orders its commands.

pub mod codec;
pub mod fence;
pub mod legacy;
pub mod raft;
pub mod ride;
pub mod shipping;
pub mod state;

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use tokio::sync::watch;

use self::raft::{MetadataRaft, RaftGlueError};
pub use self::raft::{RaftOptions, RaftStatus};
use self::state::{Command, MetadataState, Response};

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error(transparent)]
    Raft(#[from] RaftGlueError),
}

/// Where a partition's log starts and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    pub high_watermark: i64,
    pub log_start: i64,
    /// The last stable offset: the first offset of the earliest ongoing transaction,
    /// else the high watermark.
    pub last_stable: i64,
}

/// The broker's view of the metadata: propose through Raft, read the local replica.
pub struct Metadata {
    raft: MetadataRaft,
    state: Arc<RwLock<MetadataState>>,
    lease: fence::Lease,
    /// A lone voter without a Raft network is the whole cluster: nobody can take over
    /// from it, so it never fences itself.
    alone: bool,
    /// Claims on committed entries not yet in the bucket (see `ride.rs`).
    ride: ride::LogRide,
}

impl Metadata {
    pub async fn open(dir: &Path, options: RaftOptions) -> Result<Self, MetadataError> {
        let lease = fence::Lease::new(options.lease);
        let alone = options.listen.is_none() && options.voters.len() <= 1;
        let raft = MetadataRaft::start_with(dir, options).await?;
        let state = raft.state();
        Ok(Self {
            raft,
            state,
            lease,
            alone,
            ride: ride::LogRide::default(),
        })
    }

    /// Proposes a lease renewal (a heartbeat) started at `started`; once committed and
    /// applied here, the lease counts from `started`.
    pub async fn renew_lease(&self, cmd: Command, started: Instant) -> Result<(), MetadataError> {
        let (_, applied) = self.raft.propose_applied(cmd).await?;
        if applied {
            self.lease.renew(started);
        }
        Ok(())
    }

    /// Whether this broker has fenced itself: it could not renew its lease, or (not
    /// being the Raft leader) heard from no leader, for longer than the lease. A fenced
    /// broker's state may be stale and the others may already have taken its partitions
    /// and groups, so it leads and coordinates nothing (see `fence.rs`).
    pub fn fenced(&self) -> bool {
        self.fence_cause().is_some()
    }

    /// Why this broker is fenced now; None while it is not (see [`Self::fenced`]).
    pub fn fence_cause(&self) -> Option<fence::FenceCause> {
        if self.alone {
            return None;
        }
        fence::fence_cause(
            Instant::now(),
            self.lease.duration(),
            self.lease.renewed(),
            self.raft.last_leader_contact(),
            self.raft.is_leader(),
        )
    }

    /// Waits until this broker's replica holds everything committed before the call (a
    /// read index, see `raft/read.rs`), so that what it then says about a log's end is at
    /// least what was acknowledged before; false if it cannot tell within `timeout` (no
    /// leader, or the leader out of reach) and must not answer from its replica. A lone
    /// voter is the whole cluster and always can.
    pub async fn read_barrier(&self, timeout: std::time::Duration) -> bool {
        if self.alone {
            return true;
        }
        match self.raft.read_barrier(timeout).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "read barrier failed: refusing the read");
                false
            }
        }
    }

    /// Whether this broker is the metadata Raft leader: it runs the cluster-wide chores
    /// (liveness expiry, snapshot shipping, orphan collection).
    pub fn is_leader(&self) -> bool {
        self.raft.is_leader()
    }

    /// Role, term and log positions of this node's Raft.
    pub fn raft_status(&self) -> RaftStatus {
        self.raft.status()
    }

    pub fn leader(&self) -> Option<u64> {
        self.raft.leader()
    }

    /// The Raft learners (members that do not vote), as this node knows them.
    pub fn learners(&self) -> Vec<u64> {
        self.raft.members().1
    }

    /// Drops per-peer bookkeeping of nodes that left the Raft membership.
    pub fn forget_departed_peers(&self) {
        self.raft.forget_departed_peers();
    }

    /// On the leader: stops replicating to these learners (see
    /// [`MetadataRaft::remove_learners`]).
    pub async fn remove_learners(&self, ids: Vec<u64>) -> Result<(), MetadataError> {
        Ok(self.raft.remove_learners(ids).await?)
    }

    /// See [`MetadataRaft::ack_after_shipping`].
    pub fn ack_after_shipping(&self) {
        self.raft.ack_after_shipping();
    }

    /// A snapshot up to `index` is in the bucket.
    pub fn mark_shipped(&self, index: u64) {
        self.ride.with(|r| r.cover(index));
        self.raft.mark_shipped(index);
    }

    /// The last index an acknowledgement waits to see shipped.
    pub fn shipping_wanted(&self) -> watch::Receiver<u64> {
        self.raft.shipping_wanted()
    }

    /// The claims on entries not yet shipped, shared by the shipper and the write buffer.
    pub fn ride(&self) -> &ride::LogRide {
        &self.ride
    }

    /// Records how a claim's PUT ended and advances the shipped mark if it may.
    pub fn finish_ride(&self, claim: ride::Claim, ok: bool) {
        if let Some(shipped) = self.ride.with(|r| r.finish(claim, ok)) {
            self.raft.mark_shipped(shipped);
        }
    }

    pub fn log_entries(
        &self,
        from: u64,
        to: u64,
    ) -> Option<Vec<openraft::Entry<raft::TypeConfig>>> {
        self.raft.log_entries(from, to)
    }

    /// The applied state and the index of its last entry, consistent with each other.
    pub fn state_at_index(&self) -> (MetadataState, u64) {
        self.raft.state_at_index()
    }

    /// Resolves only if the Raft core stops by itself; see [`MetadataRaft::fatal`].
    pub async fn fatal(&self) -> String {
        self.raft.fatal().await
    }

    pub async fn propose(&self, cmd: Command) -> Result<Response, MetadataError> {
        Ok(self.raft.propose(cmd).await?)
    }

    /// Runs `f` on the applied state. Keep `f` short: appliers wait on this lock.
    pub fn read<R>(&self, f: impl FnOnce(&MetadataState) -> R) -> R {
        let guard = self.state.read().unwrap_or_else(|p| p.into_inner());
        f(&guard)
    }

    /// A partition's high watermark, log start and last stable offsets (typed queries
    /// keep request handlers out of the state's fields).
    pub fn offsets(&self, topic: &str, partition: i32) -> Option<Offsets> {
        self.read(|s| {
            s.partition(topic, partition).map(|p| Offsets {
                high_watermark: p.next_offset,
                log_start: p.log_start_offset,
                last_stable: p.last_stable_offset(),
            })
        })
    }

    /// The broker coordinating `key` (a group or a transactional id, placed by hashing
    /// over the live brokers) as broker `me` sees it. A fenced broker names another live
    /// one (None: it knows of none), so clients go where the cluster is.
    pub fn coordinator(&self, key: &str, me: u64) -> Option<u64> {
        let fenced = self.fenced();
        self.read(|s| {
            let cluster = s.cluster();
            if fenced {
                return cluster.coordinator_excluding(key, Some(me));
            }
            Some(cluster.coordinator(key).unwrap_or(me))
        })
    }

    /// Changes whenever committed entries are applied; long-poll fetches wait on it.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.raft.applied()
    }

    /// The last applied index now, without a receiver of one's own.
    pub fn applied_index(&self) -> u64 {
        self.raft.applied_index()
    }

    pub async fn shutdown(&self) -> Result<(), MetadataError> {
        Ok(self.raft.shutdown().await?)
    }
}

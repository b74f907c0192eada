//! The broker: what a request handler works with, behind typed accessors.
//!
//! One `Broker` per process, shared by every connection. Its parts stay private:
//! handlers read the local metadata replica and propose commands through
//! [`Broker::read`] and [`Broker::propose`], reach the write buffer, the fetch reader and
//! the coordinators through their accessors, and read only the settings they need.
//!
//! - `start.rs`: opening the store, the metadata log, the cache and the write buffer,
//!   and the background work, in order.
//! - `liveness.rs`: registration, the lease heartbeat, expiry of silent brokers,
//!   deregistration.
//! - `shutdown.rs`: a graceful stop that drains the write buffer.
//! - `placement.rs`: live brokers, preferred brokers, read replicas, coordinators.
//! - `topics.rs`: topic look-ups, creation and deletion, effective topic settings.

mod liveness;
mod placement;
mod shutdown;
mod start;
mod topics;

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use self::placement::{client_zone, LiveBroker};
pub use self::start::{BrokerTasks, StartError};
pub use self::topics::TopicLookup;
use crate::background::cleaner::CleanerCounters;
use crate::background::compaction::CompactionCounters;
use crate::background::gc::GcCounters;
use crate::config::{Config, SecurityConfig};
use crate::fetch::FetchReader;
use crate::group::GroupCoordinator;
use crate::metadata::shipping::ShippedMark;
use crate::metadata::state::{Command, MetadataState, Response, StateError};
use crate::metadata::{Metadata, MetadataError, Offsets, RaftStatus};
use crate::produce::WriteBuffer;
use crate::storage::{BlockCache, ObjectStorage};
use crate::telemetry::ConnectionGauges;
use crate::topic_config::TopicDefaults;
use crate::txn::TxnCoordinator;

/// How long a read waits for its read index before it is refused (a leader election
/// takes well under it).
const READ_BARRIER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{0}")]
    State(StateError),
    #[error("metadata unavailable: {0}")]
    Metadata(#[from] MetadataError),
}

/// What the background work and the listener count, for the stats file and `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// What the bucket's newest snapshot covers (garbage collection waits for it).
    pub shipped: Arc<ShippedMark>,
    /// The listener's connections and request bytes.
    pub connections: Arc<ConnectionGauges>,
    pub compaction: Arc<CompactionCounters>,
    pub cleaner: Arc<CleanerCounters>,
    pub gc: Arc<GcCounters>,
}

pub struct Broker {
    config: Config,
    cluster_id: String,
    metadata: Arc<Metadata>,
    buffer: WriteBuffer,
    fetcher: Arc<FetchReader>,
    groups: Arc<GroupCoordinator>,
    storage: ObjectStorage,
    cache: Arc<BlockCache>,
    counters: Counters,
    /// The transaction coordinator: markers, timeouts, unfinished transactions.
    txn: Arc<TxnCoordinator>,
    /// Set by a graceful stop: the broker has left the cluster and takes nothing new.
    draining: std::sync::atomic::AtomicBool,
}

impl Broker {
    pub fn node_id(&self) -> i32 {
        i32::try_from(self.config.node.id).unwrap_or(i32::MAX)
    }

    /// The node id, as the metadata state keys brokers.
    pub fn id(&self) -> u64 {
        self.config.node.id
    }

    /// The cluster id clients see (from the store's URL, so every broker agrees).
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// Runs `f` on the local metadata replica. Keep `f` short: appliers wait on it.
    pub fn read<R>(&self, f: impl FnOnce(&MetadataState) -> R) -> R {
        self.metadata.read(f)
    }

    /// Proposes a command through the metadata log; its response once applied here.
    pub async fn propose(&self, cmd: Command) -> Result<Response, MetadataError> {
        self.metadata.propose(cmd).await
    }

    /// A partition's high watermark, log start and last stable offsets.
    pub fn offsets(&self, topic: &str, partition: i32) -> Option<Offsets> {
        self.metadata.offsets(topic, partition)
    }

    /// Changes whenever committed entries are applied; long-poll fetches wait on it.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.metadata.subscribe()
    }

    /// Role, term and log positions of this node's metadata Raft.
    pub fn raft_status(&self) -> RaftStatus {
        self.metadata.raft_status()
    }

    /// The metadata Raft leader, which Metadata and DescribeCluster report as the
    /// controller; this broker when none is known, or when the leader is not a live
    /// broker (one still starting has not registered): clients look the controller up
    /// among the brokers listed beside it, and wait for one that is not there.
    pub fn controller_id(&self) -> i32 {
        let me = self.node_id();
        match self.metadata.leader() {
            Some(id)
                if self
                    .metadata
                    .read(|s| s.cluster().broker(id).is_some_and(|b| b.alive)) =>
            {
                i32::try_from(id).unwrap_or(i32::MAX)
            }
            _ => me,
        }
    }

    /// Whether this broker takes no new work: it has fenced itself (cut off from the
    /// metadata cluster, see `metadata/fence.rs`) or is draining (stopping). It names
    /// other brokers as leaders and coordinators and refuses produce, group and
    /// producer-id requests with retriable errors, so clients go where the cluster is.
    pub fn fenced(&self) -> bool {
        self.metadata.fenced() || self.draining()
    }

    /// Fenced in the strict sense: its lease lapsed, so a commit may never come.
    pub fn cut_off(&self) -> bool {
        self.metadata.fenced()
    }

    /// A graceful stop is under way (see `shutdown.rs`).
    pub fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether this broker may answer where a log ends (ListOffsets, a Fetch's high
    /// watermark, OffsetForLeaderEpoch): it is not fenced, and its replica holds every
    /// entry committed before the call (a read index), so the answer is at least what
    /// any broker acknowledged before the request. False: answer NOT_LEADER_OR_FOLLOWER.
    pub async fn fresh_for_reads(&self) -> bool {
        self.fresh_for_reads_within(READ_BARRIER_TIMEOUT).await
    }

    /// [`Self::fresh_for_reads`], waiting up to `wait` for the read index if that is
    /// longer (a Fetch may wait its `max_wait_ms` anyway).
    pub async fn fresh_for_reads_within(&self, wait: std::time::Duration) -> bool {
        !self.fenced()
            && self
                .metadata
                .read_barrier(wait.max(READ_BARRIER_TIMEOUT))
                .await
    }

    pub fn write_buffer(&self) -> &WriteBuffer {
        &self.buffer
    }

    pub fn fetcher(&self) -> &Arc<FetchReader> {
        &self.fetcher
    }

    pub fn groups(&self) -> &GroupCoordinator {
        &self.groups
    }

    /// Brings a consumer-protocol group up to what the metadata log holds of it (a
    /// coordinator taking the group over continues from there).
    pub fn load_consumer_group(&self, group: &str) {
        // On every heartbeat: look at the write's number before copying the record.
        // (The state's lock is let go before the groups' is taken.)
        let seq = self.read(|s| s.consumer_group(group).map(|r| r.seq));
        if !seq.is_some_and(|seq| self.groups.consumer().is_behind(group, seq)) {
            return;
        }
        let stored = self.read(|s| s.consumer_group(group).cloned());
        if let Some(record) = stored {
            self.groups
                .consumer()
                .load(group, record.seq, &record.bytes);
        }
    }

    /// Takes up the stored consumer-protocol groups this broker coordinates and holds
    /// no newer copy of. A group whose coordinator died together with its members (or
    /// whose members never came back) would otherwise keep its record in the metadata
    /// log forever, since only a request about the group loads it. Loaded, its members
    /// get a session from now; if none heartbeats, the ticker fences them and the
    /// group's removal is written. Returns how many were taken up.
    pub fn adopt_consumer_groups(&self) -> usize {
        if self.fenced() {
            return 0;
        }
        let me = self.config.node.id;
        let stored: Vec<(String, u64)> = self.read(|s| {
            let cluster = s.cluster();
            s.consumer_group_seqs()
                .filter(|(g, _)| cluster.coordinator(g).is_none_or(|c| c == me))
                .map(|(g, seq)| (g.clone(), seq))
                .collect()
        });
        // The state's lock is let go before the groups' is taken (as on a heartbeat).
        let consumer = self.groups.consumer();
        let mut adopted = 0;
        for (group, seq) in stored {
            if consumer.is_behind(&group, seq) {
                self.load_consumer_group(&group);
                adopted += 1;
            }
        }
        adopted
    }

    /// Commits a consumer-protocol group's write to the metadata log, as its coordinator
    /// at the current cluster epoch. NOT_COORDINATOR when this broker no longer
    /// coordinates the group, COORDINATOR_NOT_AVAILABLE when the log cannot take it.
    pub async fn write_consumer_group(
        &self,
        group: &str,
        write: crate::group::consumer::Write,
    ) -> Result<(), kafka_protocol::error::ResponseError> {
        use kafka_protocol::error::ResponseError;
        let epoch = self
            .coordinator_epoch(group)
            .ok_or(ResponseError::NotCoordinator)?;
        match self
            .propose(Command::PutConsumerGroup {
                group: group.to_owned(),
                seq: write.seq,
                bytes: write.bytes,
                coordinator: self.id(),
                epoch,
            })
            .await
        {
            Ok(Response::Group(Ok(()))) => Ok(()),
            Ok(Response::Group(Err(StateError::NotCoordinator))) => {
                Err(ResponseError::NotCoordinator)
            }
            _ => Err(ResponseError::CoordinatorNotAvailable),
        }
    }

    pub fn txn(&self) -> &TxnCoordinator {
        &self.txn
    }

    /// The object store, for health probes.
    pub fn storage(&self) -> &ObjectStorage {
        &self.storage
    }

    /// The block cache, for its usage figures.
    pub fn cache(&self) -> &BlockCache {
        &self.cache
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// SASL mechanisms, the authorizer's settings and the bootstrap admin.
    pub fn security(&self) -> &SecurityConfig {
        &self.config.security
    }

    /// This broker's static topic config defaults (flags, variables, file).
    pub fn topic_defaults(&self) -> &TopicDefaults {
        &self.config.topics.defaults
    }

    /// Kafka's `auto.create.topics.enable`.
    pub fn auto_create_topics(&self) -> bool {
        self.config.topics.auto_create
    }

    /// This broker's address on its first listener.
    pub fn advertised(&self) -> (&str, i32) {
        let listener = &self.config.listener;
        (listener.advertise_host(), listener.advertise_port())
    }

    /// The broker configs fixed at start-up, as DescribeConfigs reports them (name,
    /// value); `num.partitions` is dynamic and reported with the dynamic ones.
    pub fn static_broker_configs(&self) -> Vec<(&'static str, String)> {
        let c = &self.config;
        vec![
            (
                "auto.create.topics.enable",
                c.topics.auto_create.to_string(),
            ),
            (
                "socket.request.max.bytes",
                c.listener.max_request_bytes.to_string(),
            ),
            (
                "advertised.listeners",
                format!(
                    "{}://{}:{}",
                    if c.listener.tls.is_some() {
                        "SSL"
                    } else {
                        "PLAINTEXT"
                    },
                    c.listener.advertise_host(),
                    c.listener.advertise_port()
                ),
            ),
            ("broker.id", c.node.id.to_string()),
        ]
    }

    /// The static partition count of auto-created topics (`default_partitions`).
    pub fn static_default_partitions(&self) -> i32 {
        self.config.topics.default_partitions
    }

    /// Resolves only if the metadata Raft core stops by itself (a bug or a dead disk);
    /// the reason. The process should then exit and be restarted clean.
    pub async fn fatal(&self) -> String {
        self.metadata.fatal().await
    }

    /// The transaction coordinator loop (`TxnCoordinator::run`).
    pub fn spawn_transactions(self: &Arc<Self>) -> JoinHandle<()> {
        tokio::spawn(self.txn.clone().run())
    }
}

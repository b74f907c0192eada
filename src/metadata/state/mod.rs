//! The metadata state machine: pure and deterministic.
//!
//! Every broker applies the same committed [`Command`]s in the same order and so reaches
//! the same [`MetadataState`]. Nothing in here reads a clock, a disk or the network: values
//! that depend on time (creation times, commit times) are chosen by the proposer and carried
//! inside the command, so replaying the log reproduces the state exactly. The state keeps
//! its own clock, the largest time any command carried, for the times it records itself
//! (when an object became garbage).
//!
//! What it holds grows with partitions and with the bytes kept, not with time: the tail
//! of each partition's index is compacted into large segments ([`Command::Compact`]), and
//! objects are named once, in the object table, and by a numeric id everywhere else.
//!
//! Files: `command.rs` is the vocabulary the log carries (commands, responses, errors).
//! This file holds [`MetadataState`] itself, which hands each command to the part of the
//! state it concerns, each part with its own apply logic and tests: `topics.rs` (topics,
//! partitions, configs), `log_index.rs` (segment commits, DeleteRecords, compaction
//! swaps), `offsets.rs` (consumer groups' offsets), `producers.rs` (idempotence),
//! `transactions/`, `access.rs` (SCRAM, ACLs, listeners) and `cluster.rs` (brokers,
//! leases, placement). `partition.rs` and `objects.rs` are the per-partition index and
//! the object table. `tests.rs` holds the properties of the whole machine and the format
//! tests.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use self::access::AccessState;
use self::cluster::{ClusterCommand, ClusterState};
use self::objects::{ObjectKind, Objects};
use self::offsets::GroupOffsets;
use self::topics::Topic;
use self::transactions::Transactions;
use crate::metadata::codec;

pub use self::command::*;

pub mod access;
pub mod cluster;
mod command;
#[cfg(test)]
mod fixtures;
mod log_index;
pub mod objects;
pub mod offsets;
pub mod partition;
pub mod producers;
#[cfg(test)]
mod tests;
pub mod topics;
pub mod transactions;

/// A `broker_configs` scope for what the cluster records about itself. Client scopes are
/// "" or a broker id, so no request can name it; keeping such values there leaves the
/// encoded state's layout (format 2) unchanged.
const INTERNAL_SCOPE: &str = "#strata";
const LOG_GENERATION_KEY: &str = "metadata.log.generation";
/// The lowest automatic node id not yet given out: ids are never given twice, even once
/// their broker is forgotten (it might come back on its old disk).
const NEXT_AUTO_ID_KEY: &str = "node.id.next.auto";

/// Everything the metadata log decides, as of some log index.
///
/// Partitions and groups sit behind `Arc`s so that a snapshot clones the state in time
/// proportional to their number, not to the index entries they hold; a command copies
/// only the partition or group it changes (`Arc::make_mut`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetadataState {
    topics: BTreeMap<String, Topic>,
    groups: BTreeMap<String, Arc<GroupOffsets>>,
    objects: Objects,
    /// Producer ids handed out so far, and each one's current epoch.
    next_producer_id: i64,
    producer_epochs: BTreeMap<i64, i16>,
    cluster: ClusterState,
    /// The largest time carried by any command applied so far.
    clock_ms: i64,
    /// Dynamic broker configs: "" holds the cluster-wide defaults, a broker id's
    /// decimal string that broker's own.
    broker_configs: BTreeMap<String, BTreeMap<String, String>>,
    /// Credentials, ACLs and listeners (format 5; empty when read from an older blob).
    #[serde(deserialize_with = "codec::since_format_5")]
    access: AccessState,
    /// Every transactional id's transaction (format 6).
    #[serde(deserialize_with = "codec::since_format_6")]
    txns: Transactions,
    /// Consumer-protocol groups (format 10), as their coordinators encode them.
    #[serde(deserialize_with = "codec::since_format_10")]
    consumer_groups: BTreeMap<String, offsets::ConsumerGroupRecord>,
    /// Dynamic configs of GROUP resources, by group id (format 11).
    #[serde(deserialize_with = "codec::since_format_11")]
    group_configs: BTreeMap<String, BTreeMap<String, String>>,
}

/// Sizes of the state, for the stats file and the soak benchmark.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StateStats {
    pub topics: usize,
    pub partitions: usize,
    pub index_entries: usize,
    pub max_index_entries_per_partition: usize,
    pub objects: usize,
    pub flush_objects: usize,
    /// Objects under `compacted/`: segments, cleaned segments and shared objects.
    pub segment_objects: usize,
    /// Of those, the shared ones.
    pub shared_objects: usize,
    /// Index entries pointing into shared objects.
    pub shared_sections: usize,
    pub garbage_objects: usize,
    pub groups: usize,
    /// Consumer-protocol groups' stored records (KIP-848).
    pub consumer_groups: usize,
    pub producer_ids: usize,
    pub transactional_ids: usize,
    /// Aborted transactions the state holds (the rest are in segment footers).
    pub aborted_txns: usize,
}

impl MetadataState {
    /// Credentials, ACLs and listeners.
    pub fn access(&self) -> &AccessState {
        &self.access
    }

    /// Every transactional id's transaction.
    pub fn transactions(&self) -> &Transactions {
        &self.txns
    }

    /// Applies one committed command: the whole of what a log entry does to the state,
    /// and the same on every replica. Each command goes to the part of the state it
    /// concerns; the clock moves first, to the time the command carries.
    pub fn apply(&mut self, cmd: &Command) -> Response {
        if let Some(now_ms) = cmd.time_ms() {
            self.clock_ms = self.clock_ms.max(now_ms);
        }
        match cmd {
            Command::CreateTopic { .. }
            | Command::DeleteTopic { .. }
            | Command::CreatePartitions { .. }
            | Command::AlterTopicConfigs { .. }
            | Command::AlterBrokerConfigs { .. }
            | Command::AlterGroupConfigs { .. } => self.apply_topics(cmd),
            Command::CommitSegments { .. }
            | Command::DeleteRecords { .. }
            | Command::Compact(_)
            | Command::Clean(_)
            | Command::CompactShared(_)
            | Command::CompactArchiving(_)
            | Command::CompactSharedArchiving(_)
            | Command::ForgetObjects { .. } => self.apply_log(cmd),
            Command::CommitOffsets { .. }
            | Command::CommitGroupOffsets { .. }
            | Command::DeleteGroupOffsets { .. }
            | Command::DeleteGroup { .. }
            | Command::PutConsumerGroup { .. } => self.apply_offsets(cmd),
            Command::InitProducer { current } => Response::Producer(self.init_producer(*current)),
            Command::Cluster(cmd @ ClusterCommand::Allocate { .. }) => {
                let next = self.internal(NEXT_AUTO_ID_KEY).unwrap_or(0);
                let id = self.cluster.allocate(cmd, next);
                self.set_internal(NEXT_AUTO_ID_KEY, id + 1);
                Response::NodeId(id)
            }
            Command::Cluster(cmd) => {
                self.cluster.apply(cmd);
                // A broker that leaves the cluster takes its listeners with it.
                match cmd {
                    ClusterCommand::Deregister { id } => self.access.forget_broker(*id),
                    ClusterCommand::Forget { .. } => {
                        let gone: Vec<u64> = self
                            .access
                            .broker_ids()
                            .filter(|id| self.cluster.broker(*id).is_none())
                            .collect();
                        for id in gone {
                            self.access.forget_broker(id);
                        }
                    }
                    _ => {}
                }
                Response::Empty
            }
            Command::AlterScram { .. }
            | Command::CreateAcls { .. }
            | Command::DeleteAcls { .. }
            | Command::RegisterListeners { .. } => self.access.apply(cmd),
            Command::Restore { state } => self.restore(state),
            Command::InitTransactional { .. }
            | Command::AddPartitionsToTxn { .. }
            | Command::AddOffsetsToTxn { .. }
            | Command::TxnOffsetCommit { .. }
            | Command::EndTxn { .. }
            | Command::AbortTimedOutTxn { .. }
            | Command::ExpireTransactionalIds { .. } => Response::Txn(self.apply_txn(cmd)),
        }
    }

    /// Replaces the whole state with a snapshot's, for a cluster rebuilt from the bucket.
    /// Only an empty state may be replaced: a restore must never roll back a cluster that
    /// already has metadata.
    fn restore(&mut self, state: &MetadataState) -> Response {
        if self.is_empty() {
            let clock_ms = self.clock_ms.max(state.clock_ms);
            *self = state.clone();
            self.clock_ms = clock_ms;
        }
        Response::Empty
    }

    /// A state put together whole, for format upgrades (see `legacy.rs`).
    pub(super) fn from_parts(
        topics: BTreeMap<String, Topic>,
        groups: BTreeMap<String, Arc<GroupOffsets>>,
        objects: Objects,
        next_producer_id: i64,
        producer_epochs: BTreeMap<i64, i16>,
        clock_ms: i64,
    ) -> Self {
        Self {
            topics,
            groups,
            objects,
            next_producer_id,
            producer_epochs,
            cluster: ClusterState::default(),
            clock_ms,
            broker_configs: BTreeMap::new(),
            access: AccessState::default(),
            txns: Transactions::default(),
            consumer_groups: BTreeMap::new(),
            group_configs: BTreeMap::new(),
        }
    }

    /// Which run of Raft log indexes the log shipped to the bucket belongs to. A cluster
    /// rebuilt from the bucket starts its Raft log again at index 1, so its shipped log
    /// goes under the next generation and never mixes with the one it was rebuilt from.
    pub fn log_generation(&self) -> u64 {
        self.internal(LOG_GENERATION_KEY).unwrap_or(0)
    }

    /// Set on a state about to be restored into a new cluster (outside `apply`).
    pub fn set_log_generation(&mut self, generation: u64) {
        self.set_internal(LOG_GENERATION_KEY, generation);
    }

    /// A number the cluster records about itself (kept with the broker configs, under a
    /// scope no client can name, so that it needs no field of its own).
    fn internal(&self, key: &str) -> Option<u64> {
        self.broker_configs
            .get(INTERNAL_SCOPE)
            .and_then(|c| c.get(key))
            .and_then(|v| v.parse().ok())
    }

    fn set_internal(&mut self, key: &str, value: u64) {
        self.broker_configs
            .entry(INTERNAL_SCOPE.to_owned())
            .or_default()
            .insert(key.to_owned(), value.to_string());
    }

    pub fn cluster(&self) -> &ClusterState {
        &self.cluster
    }

    pub fn objects(&self) -> &Objects {
        &self.objects
    }

    /// The state's clock: the largest time any applied command carried.
    pub fn clock_ms(&self) -> i64 {
        self.clock_ms
    }

    pub fn is_empty(&self) -> bool {
        self.topics.is_empty() && self.groups.is_empty() && self.objects.is_empty()
    }

    pub fn object_refs(&self, object: &str) -> u32 {
        self.objects.refs(object)
    }

    pub fn stats(&self) -> StateStats {
        let mut stats = StateStats {
            topics: self.topics.len(),
            groups: self.groups.len(),
            consumer_groups: self.consumer_groups.len(),
            producer_ids: self.producer_epochs.len(),
            transactional_ids: self.txns.len(),
            garbage_objects: self.objects.garbage_count(),
            ..StateStats::default()
        };
        for p in self.topics.values().flat_map(|t| t.partitions.iter()) {
            stats.partitions += 1;
            stats.index_entries += p.index.len();
            stats.max_index_entries_per_partition =
                stats.max_index_entries_per_partition.max(p.index.len());
            stats.aborted_txns += p.txns.aborted().len();
        }
        for (_, info) in self.objects.live() {
            stats.objects += 1;
            match info.kind {
                ObjectKind::Flush => stats.flush_objects += 1,
                ObjectKind::Segment | ObjectKind::Cleaned => stats.segment_objects += 1,
                ObjectKind::Shared => {
                    stats.segment_objects += 1;
                    stats.shared_objects += 1;
                    stats.shared_sections += info.refs as usize;
                }
            }
        }
        stats
    }
}

//! The command vocabulary of the metadata state machine: every [`Command`] the Raft log
//! orders, the [`Response`] applying one gives, why one is refused ([`StateError`]), and
//! the payload types they carry, including the ones defined by the part of the state they
//! concern (re-exported here, so that a proposer needs only `metadata::state`).
//!
//! Everything here is encoded in the metadata log, snapshots and Raft frames (postcard:
//! enum variants by index, struct fields by position). Variants and fields are only ever
//! appended, each with the format that added it; see `codec.rs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use super::access::{AccessError, ScramChange};
use super::cluster::ClusterCommand;
pub use super::objects::ObjectId;
use super::transactions::{PendingOffset, TopicPartition, TxnError};
use super::MetadataState;
use crate::metadata::codec;
pub use crate::record::ProducerBatch;
use crate::security::acl::AclBinding;
pub use crate::storage::segment::SegmentEntry;

/// A change to the metadata, proposed through Raft.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    CreateTopic {
        name: String,
        /// Chosen by the proposer (random) so every replica agrees on it.
        topic_id: [u8; 16],
        partitions: i32,
        configs: BTreeMap<String, String>,
        now_ms: i64,
        /// A manual replica assignment's first replica per partition: the preferred-broker
        /// hint (empty: none; else one per partition, each a registered broker).
        preferred: Vec<u64>,
    },
    DeleteTopic {
        name: String,
    },
    /// Segment objects durable in the store, in upload order; give their chunks offsets.
    /// Under load the write buffer commits whatever finished uploading while the previous
    /// commit was in flight in one entry.
    CommitSegments {
        segments: Vec<SegmentCommit>,
        now_ms: i64,
        /// An object uploaded longer ago than this is refused (0: no limit, for a
        /// recovery), so the orphan sweep, which deletes unknown objects older than its
        /// grace period, can never delete an object whose commit is on its way.
        max_age_ms: i64,
    },
    CommitOffsets {
        group: String,
        offsets: Vec<OffsetCommit>,
    },
    /// Replace the whole state: the first command of a cluster rebuilt from the object
    /// store's snapshot.
    Restore {
        state: Box<MetadataState>,
    },
    /// InitProducerId for an idempotent producer: a new id, or the next epoch of the id
    /// the producer already holds (KIP-360).
    InitProducer {
        current: Option<(i64, i16)>,
    },
    /// Broker membership and liveness.
    Cluster(ClusterCommand),
    /// CreatePartitions: grow a topic to `count` partitions (never shrink).
    CreatePartitions {
        name: String,
        count: i32,
        /// Preferred-broker hints for the new partitions (empty: none).
        preferred: Vec<u64>,
    },
    /// AlterConfigs (`replace`: the new set is exactly `changes`) and
    /// IncrementalAlterConfigs (`changes` applied on top: None deletes a key).
    AlterTopicConfigs {
        name: String,
        replace: bool,
        changes: BTreeMap<String, Option<String>>,
    },
    /// DeleteRecords: advance the log start offset (-1 means the high watermark).
    DeleteRecords {
        topic: String,
        partition: i32,
        offset: i64,
    },
    /// OffsetDelete: forget a group's committed offsets for these partitions.
    DeleteGroupOffsets {
        group: String,
        partitions: Vec<(String, i32)>,
    },
    /// DeleteGroups: forget every committed offset of the group.
    DeleteGroup {
        group: String,
    },
    /// A compactor rewrote a run of index entries into one segment object: swap it in,
    /// unless the run changed since the compactor read it.
    Compact(CompactionSwap),
    /// Garbage objects the leader deleted from the store: forget them.
    ForgetObjects {
        ids: Vec<ObjectId>,
    },
    /// AlterConfigs / IncrementalAlterConfigs on a BROKER resource: dynamic broker
    /// configs, cluster-wide (`broker` None, resource name "") or for one broker.
    AlterBrokerConfigs {
        broker: Option<u64>,
        replace: bool,
        changes: BTreeMap<String, Option<String>>,
    },
    /// OffsetCommit from a group's coordinator (format 3): refused with NotCoordinator
    /// unless `coordinator` still coordinates the group at cluster epoch `epoch`, the
    /// one it decided with. A broker cut off from Raft while coordinating cannot have a
    /// late commit land over one made through the group's next coordinator.
    CommitGroupOffsets {
        group: String,
        offsets: Vec<OffsetCommit>,
        coordinator: u64,
        epoch: i32,
    },
    /// The log cleaner rewrote a run of a compacted topic's index entries, keeping the
    /// latest record of each key (format 4): swapped in as [`Command::Compact`] is, but
    /// the new object is a [`ObjectKind::Cleaned`](super::objects::ObjectKind::Cleaned) segment.
    Clean(CompactionSwap),
    /// AlterUserScramCredentials and the bootstrap admin (format 5): one result each.
    AlterScram {
        changes: Vec<ScramChange>,
    },
    /// CreateAcls (format 5).
    CreateAcls {
        bindings: Vec<AclBinding>,
    },
    /// DeleteAcls (format 5): exactly these bindings (the proposer matched the filters).
    DeleteAcls {
        bindings: Vec<AclBinding>,
    },
    /// A broker's named listeners and their advertised addresses (format 5), proposed
    /// after its `Register`.
    RegisterListeners {
        id: u64,
        listeners: Vec<(String, String, i32)>,
    },
    /// InitProducerId with a transactional id (format 6; the transaction commands below
    /// are all format 6 and answer [`Response::Txn`]). `current` is the producer's own
    /// id and epoch when it asks for a bump (KIP-360).
    InitTransactional {
        txn_id: String,
        timeout_ms: i64,
        current: Option<(i64, i16)>,
        now_ms: i64,
    },
    AddPartitionsToTxn {
        txn_id: String,
        producer_id: i64,
        epoch: i16,
        partitions: Vec<TopicPartition>,
        now_ms: i64,
    },
    AddOffsetsToTxn {
        txn_id: String,
        producer_id: i64,
        epoch: i16,
        group: String,
        now_ms: i64,
    },
    /// Offsets held by the transaction until it commits.
    TxnOffsetCommit {
        txn_id: String,
        producer_id: i64,
        epoch: i16,
        group: String,
        offsets: Vec<(TopicPartition, PendingOffset)>,
        now_ms: i64,
    },
    EndTxn {
        txn_id: String,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        now_ms: i64,
    },
    /// A coordinator's abort of a transaction past its timeout (checked again here).
    AbortTimedOutTxn {
        txn_id: String,
        now_ms: i64,
    },
    /// Forget transactional ids idle longer than `expiration_ms`.
    ExpireTransactionalIds {
        now_ms: i64,
        expiration_ms: i64,
    },
    /// A compaction round wrote the small outputs of many partitions into one shared
    /// object, a section each (format 7): the object is added once, each section is
    /// swapped in as [`Command::Compact`] would (refused alone if its run changed), and
    /// the object holds one reference per section taken (none: it is garbage at once).
    /// Answers [`Response::SharedCompacted`].
    CompactShared(SharedCompaction),
    /// [`Command::Compact`] whose segment's footer holds the aborted transactions of its
    /// run (format 9): swapped in, they leave the state (see `PartitionTxns::archivable`).
    /// Proposed only when the run has some, so a cluster without aborts writes no new
    /// variant.
    CompactArchiving(CompactionSwap),
    /// [`Command::CompactShared`] whose sections' indexes hold their runs' aborted
    /// transactions (format 9), as [`Command::CompactArchiving`].
    CompactSharedArchiving(SharedCompaction),
    /// A consumer-protocol group's state from its coordinator (format 10; KIP-848), as the
    /// coordinator encodes it: stored unless `coordinator` no longer coordinates the group
    /// at cluster epoch `epoch` (NotCoordinator) or the state holds a later write of it
    /// (`seq`; such a write is dropped). `bytes` None forgets the group. Answers
    /// [`Response::Group`].
    PutConsumerGroup {
        group: String,
        seq: u64,
        bytes: Option<Vec<u8>>,
        coordinator: u64,
        epoch: i32,
    },
    /// IncrementalAlterConfigs / AlterConfigs on a GROUP resource (format 11; appended
    /// last, as postcard numbers variants in order): a group's own `consumer.*` configs,
    /// validated by the broker that proposes them.
    AlterGroupConfigs {
        group: String,
        replace: bool,
        changes: BTreeMap<String, Option<String>>,
    },
}

/// How a chunk of [`Command::CommitSegments`] takes part in transactions (format 6).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkTxn {
    /// Plain or idempotent records.
    #[default]
    None,
    /// Transactional records of the entry's producer: written only inside its ongoing
    /// transaction, which must hold the partition.
    Data,
    /// The commit or abort marker (control batch) of `txn_id`'s transaction, with the
    /// transaction's producer id and epoch in the entry's `producer`.
    Marker { txn_id: String, commit: bool },
}

/// What a transaction command decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnReply {
    /// InitProducerId's answer.
    Ready { producer_id: i64, epoch: i16 },
    /// The transaction is in Prepare*: these partitions wait for their marker.
    Markers {
        commit: bool,
        producer_id: i64,
        epoch: i16,
        partitions: Vec<TopicPartition>,
    },
    /// Done, nothing to write.
    Done,
}

/// One uploaded segment object and its chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentCommit {
    pub object: String,
    pub object_size: u64,
    /// When the upload started (the time in the object's name).
    pub uploaded_ms: i64,
    pub entries: Vec<SegmentEntry>,
    /// Per entry, its part in a transaction (format 6); missing entries are
    /// [`ChunkTxn::None`], so a commit without transactions leaves it empty.
    #[serde(deserialize_with = "codec::since_format_6")]
    pub txn: Vec<ChunkTxn>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetCommit {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The leader epoch the committed offset was read in (KIP-320); -1 for none.
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_ms: i64,
}

/// A compactor's proposal: the index entries `inputs` (exactly the run
/// `base_offset..end_offset` of the partition, as it read them) become one entry
/// pointing at `object`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionSwap {
    pub topic: String,
    /// A topic deleted and re-created under the same name is another topic.
    pub topic_id: [u8; 16],
    pub partition: i32,
    pub base_offset: i64,
    pub end_offset: i64,
    /// (object, position) of each replaced entry, in offset order.
    pub inputs: Vec<(ObjectId, u64)>,
    pub object: String,
    pub object_size: u64,
    /// Where the records lie inside the new object.
    pub position: u64,
    pub length: u64,
    pub now_ms: i64,
}

/// A compaction round's shared object and the swaps of its sections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedCompaction {
    pub object: String,
    pub object_size: u64,
    /// In the order the sections lie in the object.
    pub sections: Vec<SectionSwap>,
    pub now_ms: i64,
}

/// One section of a [`SharedCompaction`]: the run it replaces (as in [`CompactionSwap`])
/// and where its data lies in the shared object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionSwap {
    pub topic: String,
    pub topic_id: [u8; 16],
    pub partition: i32,
    pub base_offset: i64,
    pub end_offset: i64,
    /// (object, position) of each replaced entry, in offset order.
    pub inputs: Vec<(ObjectId, u64)>,
    /// The section's data (its own index follows it in the object).
    pub position: u64,
    pub length: u64,
}

/// Why a command (or one entry of it) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StateError {
    #[error("topic already exists")]
    TopicAlreadyExists,
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    #[error("invalid number of partitions")]
    InvalidPartitions,
    #[error("invalid topic name")]
    InvalidTopic,
    /// A retry of a batch already committed at this base offset: answered as success.
    #[error("duplicate sequence number (already at offset {0})")]
    DuplicateSequence(i64),
    #[error("out of order sequence number")]
    OutOfOrderSequence,
    #[error("producer epoch is fenced by a newer one")]
    InvalidProducerEpoch,
    #[error("unknown producer id")]
    UnknownProducerId,
    #[error("segment object already committed")]
    ObjectAlreadyCommitted,
    #[error("segment object uploaded too long ago to be committed")]
    ObjectTooOld,
    #[error("offset out of range")]
    OffsetOutOfRange,
    #[error("group id not found")]
    GroupIdNotFound,
    #[error("the compacted range changed since it was read")]
    StaleCompaction,
    #[error("replica assignment names an unknown broker or has the wrong partition count")]
    InvalidReplicaAssignment,
    /// The proposer no longer coordinates the group (or the cluster epoch moved on).
    #[error("not the group's coordinator at the current cluster epoch")]
    NotCoordinator,
    /// A transactional write or transaction command refused (format 6).
    #[error("{0}")]
    Txn(TxnError),
    /// A marker no transaction waits for (already written, or from a former
    /// coordinator): dropped.
    #[error("transaction marker not expected")]
    StaleMarker,
}

/// The outcome of applying one command.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Blank and membership log entries.
    #[default]
    Empty,
    Topic(Result<(), StateError>),
    /// One result per [`OffsetCommit`], in order.
    Offsets(Vec<Result<(), StateError>>),
    Producer(Result<(i64, i16), StateError>),
    /// Per object of a [`Command::CommitSegments`], per entry: the base offset it got.
    Segments(Vec<Vec<Result<i64, StateError>>>),
    /// DeleteRecords: the partition's new log start offset.
    LogStart(Result<i64, StateError>),
    /// DeleteGroup.
    Group(Result<(), StateError>),
    /// Compact: the new object's id.
    Compacted(Result<ObjectId, StateError>),
    /// AlterScram: one result per change.
    Scram(Vec<Result<(), AccessError>>),
    /// CreateAcls, RegisterListeners.
    Access(Result<(), AccessError>),
    /// DeleteAcls: the bindings that were there.
    AclsDeleted(Vec<AclBinding>),
    /// The transaction commands.
    Txn(Result<TxnReply, TxnError>),
    /// CompactShared (format 7): one result per section, in order.
    SharedCompacted(Vec<Result<(), StateError>>),
    /// `ClusterCommand::Allocate` (format 8): the id given.
    NodeId(u64),
}

impl Command {
    /// Whether acknowledging this command must wait until it is in the bucket: anything
    /// whose loss, with every disk, would take back what a client was told (records,
    /// offsets, topics, transactions, ACLs). Liveness is not: a cluster rebuilt from the
    /// bucket hears its brokers register again, and a slow bucket must not stop the
    /// heartbeats that keep every broker from fencing itself. The log is shipped in
    /// order, so what follows a liveness entry carries it to the bucket all the same.
    pub fn needs_shipping(&self) -> bool {
        // An automatic id must survive a rebuild from the bucket, or it could be given
        // out twice.
        !matches!(self, Command::Cluster(c) if !matches!(c, ClusterCommand::Allocate { .. }))
    }

    /// The time the command carries, which advances the state's clock.
    pub(super) fn time_ms(&self) -> Option<i64> {
        match self {
            Command::CreateTopic { now_ms, .. } | Command::CommitSegments { now_ms, .. } => {
                Some(*now_ms)
            }
            Command::Compact(swap) | Command::Clean(swap) | Command::CompactArchiving(swap) => {
                Some(swap.now_ms)
            }
            Command::CompactShared(shared) | Command::CompactSharedArchiving(shared) => {
                Some(shared.now_ms)
            }
            Command::InitTransactional { now_ms, .. }
            | Command::AddPartitionsToTxn { now_ms, .. }
            | Command::AddOffsetsToTxn { now_ms, .. }
            | Command::TxnOffsetCommit { now_ms, .. }
            | Command::EndTxn { now_ms, .. }
            | Command::AbortTimedOutTxn { now_ms, .. }
            | Command::ExpireTransactionalIds { now_ms, .. } => Some(*now_ms),
            Command::Cluster(
                ClusterCommand::Register { now_ms, .. }
                | ClusterCommand::Heartbeat { now_ms, .. }
                | ClusterCommand::Expire { now_ms, .. }
                | ClusterCommand::Allocate { now_ms, .. },
            ) => Some(*now_ms),
            _ => None,
        }
    }
}

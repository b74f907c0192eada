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

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use self::access::AccessState;
use self::cluster::{ClusterCommand, ClusterState};
pub use self::objects::{ObjectInfo, ObjectKind, Objects};
use self::offsets::GroupOffsets;
pub use self::partition::{IndexEntry, Partition};
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
pub mod topics;
pub mod transactions;

/// Partitions and groups sit behind `Arc`s so that a snapshot clones the state in time
/// proportional to their number, not to the index entries they hold; a command copies
/// only the partition or group it changes (`Arc::make_mut`).
/// A `broker_configs` scope for what the cluster records about itself. Client scopes are
/// "" or a broker id, so no request can name it; keeping such values there leaves the
/// encoded state's layout (format 2) unchanged.
const INTERNAL_SCOPE: &str = "#strata";
const LOG_GENERATION_KEY: &str = "metadata.log.generation";

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
    pub segment_objects: usize,
    pub garbage_objects: usize,
    pub groups: usize,
    pub producer_ids: usize,
    pub transactional_ids: usize,
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

    pub fn apply(&mut self, cmd: &Command) -> Response {
        if let Some(now_ms) = cmd.time_ms() {
            self.clock_ms = self.clock_ms.max(now_ms);
        }
        match cmd {
            Command::CreateTopic { .. }
            | Command::DeleteTopic { .. }
            | Command::CreatePartitions { .. }
            | Command::AlterTopicConfigs { .. }
            | Command::AlterBrokerConfigs { .. } => self.apply_topics(cmd),
            Command::CommitSegments { .. }
            | Command::DeleteRecords { .. }
            | Command::Compact(_)
            | Command::Clean(_)
            | Command::ForgetObjects { .. } => self.apply_log(cmd),
            Command::CommitOffsets { .. }
            | Command::CommitGroupOffsets { .. }
            | Command::DeleteGroupOffsets { .. }
            | Command::DeleteGroup { .. } => self.apply_offsets(cmd),
            // Only an empty state may be replaced: a restore must never roll back a
            // cluster that already has metadata.
            Command::Restore { state } if self.is_empty() => {
                let clock_ms = self.clock_ms.max(state.clock_ms);
                *self = (**state).clone();
                self.clock_ms = clock_ms;
                Response::Empty
            }
            Command::Restore { .. } => Response::Empty,
            Command::InitProducer { current } => Response::Producer(self.init_producer(*current)),
            Command::Cluster(cmd) => {
                self.cluster.apply(cmd);
                if let ClusterCommand::Deregister { id } = cmd {
                    self.access.forget_broker(*id);
                }
                Response::Empty
            }
            Command::AlterScram { changes } => Response::Scram(
                changes
                    .iter()
                    .map(|c| self.access.change_scram(c))
                    .collect(),
            ),
            Command::CreateAcls { bindings } => Response::Access(self.access.create_acls(bindings)),
            Command::DeleteAcls { bindings } => {
                Response::AclsDeleted(self.access.delete_acls(bindings))
            }
            Command::RegisterListeners { id, listeners } => {
                Response::Access(self.access.register_listeners(*id, listeners))
            }
            Command::InitTransactional { .. }
            | Command::AddPartitionsToTxn { .. }
            | Command::AddOffsetsToTxn { .. }
            | Command::TxnOffsetCommit { .. }
            | Command::EndTxn { .. }
            | Command::AbortTimedOutTxn { .. }
            | Command::ExpireTransactionalIds { .. } => Response::Txn(self.apply_txn(cmd)),
        }
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
        }
    }

    /// Which run of Raft log indexes the log shipped to the bucket belongs to. A cluster
    /// rebuilt from the bucket starts its Raft log again at index 1, so its shipped log
    /// goes under the next generation and never mixes with the one it was rebuilt from.
    pub fn log_generation(&self) -> u64 {
        self.broker_configs
            .get(INTERNAL_SCOPE)
            .and_then(|c| c.get(LOG_GENERATION_KEY))
            .and_then(|g| g.parse().ok())
            .unwrap_or(0)
    }

    /// Set on a state about to be restored into a new cluster (outside `apply`).
    pub fn set_log_generation(&mut self, generation: u64) {
        self.broker_configs
            .entry(INTERNAL_SCOPE.to_owned())
            .or_default()
            .insert(LOG_GENERATION_KEY.to_owned(), generation.to_string());
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
        }
        for (_, info) in self.objects.live() {
            stats.objects += 1;
            match info.kind {
                ObjectKind::Flush => stats.flush_objects += 1,
                ObjectKind::Segment | ObjectKind::Cleaned => stats.segment_objects += 1,
            }
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{create, entry, one_segment};
    use super::*;
    use proptest::prelude::*;

    fn arb_command() -> impl Strategy<Value = Command> {
        let topic = prop::sample::select(vec!["a", "b", "c"]);
        prop_oneof![
            (topic.clone(), 0..4i32).prop_map(|(t, p)| create(t, p)),
            topic
                .clone()
                .prop_map(|t| Command::DeleteTopic { name: t.into() }),
            (
                prop::collection::vec((topic.clone(), 0..4i32, 1..50u32), 0..6),
                0..8u8
            )
                .prop_map(|(es, n)| {
                    // A few names, so some commits repeat an object and must be refused.
                    one_segment(
                        format!("obj{n}"),
                        es.into_iter().map(|(t, p, c)| entry(t, p, c)).collect(),
                    )
                }),
            (topic.clone(), 0..6i32).prop_map(|(t, c)| Command::CreatePartitions {
                name: t.into(),
                count: c,
                preferred: Vec::new(),
            }),
            (topic.clone(), any::<bool>(), 0..3u8).prop_map(|(t, replace, v)| {
                Command::AlterTopicConfigs {
                    name: t.into(),
                    replace,
                    changes: [("retention.ms".to_string(), (v > 0).then(|| v.to_string()))]
                        .into_iter()
                        .collect(),
                }
            }),
            (topic.clone(), 0..4i32, -1..200i64).prop_map(|(t, p, o)| Command::DeleteRecords {
                topic: t.into(),
                partition: p,
                offset: o,
            }),
            (topic.clone(), 0..4i32).prop_map(|(t, p)| Command::DeleteGroupOffsets {
                group: "g".into(),
                partitions: vec![(t.into(), p)],
            }),
            Just(Command::DeleteGroup { group: "g".into() }),
            (topic.clone(), 1..4usize, 1..4u64).prop_map(|(t, n, id)| Command::CreateTopic {
                name: t.into(),
                topic_id: [3; 16],
                partitions: n as i32,
                configs: BTreeMap::new(),
                now_ms: 0,
                preferred: vec![id; n],
            }),
            (1..3u64).prop_map(|id| Command::Cluster(ClusterCommand::Register {
                id,
                host: "h".into(),
                port: 1,
                rack: None,
                now_ms: 0,
            })),
            (any::<bool>(), 0..3u8).prop_map(|(replace, v)| Command::AlterBrokerConfigs {
                broker: (v == 2).then_some(1),
                replace,
                changes: [("num.partitions".to_string(), (v > 0).then(|| v.to_string()))]
                    .into_iter()
                    .collect(),
            }),
            (topic.clone(), 0..4i32, 0..1000i64).prop_map(|(t, p, o)| Command::CommitOffsets {
                group: "g".into(),
                offsets: vec![OffsetCommit {
                    topic: t.into(),
                    partition: p,
                    offset: o,
                    leader_epoch: -1,
                    metadata: None,
                    commit_ms: 0,
                }],
            }),
            (topic, 0..1000i64, 1..3u64, 0..4i32).prop_map(|(t, o, coordinator, epoch)| {
                Command::CommitGroupOffsets {
                    group: "g".into(),
                    offsets: vec![OffsetCommit {
                        topic: t.into(),
                        partition: 0,
                        offset: o,
                        leader_epoch: -1,
                        metadata: None,
                        commit_ms: 0,
                    }],
                    coordinator,
                    epoch,
                }
            }),
            (1..3u64, 0..2i64).prop_map(|(id, seen)| Command::Cluster(
                ClusterCommand::ExpireSilent {
                    brokers: vec![(id, seen)]
                }
            )),
            (1..3u64, 0..2i64).prop_map(|(id, now_ms)| Command::Cluster(
                ClusterCommand::Heartbeat { id, now_ms }
            )),
        ]
    }

    proptest! {
        /// Replaying the same log gives the same state and responses (determinism), and
        /// every partition's index stays contiguous from its log start to its high watermark
        /// (DeleteRecords included).
        #[test]
        fn replay_is_deterministic_and_index_contiguous(cmds in prop::collection::vec(arb_command(), 0..60)) {
            let mut a = MetadataState::default();
            let mut b = MetadataState::default();
            for cmd in &cmds {
                prop_assert_eq!(a.apply(cmd), b.apply(cmd));
            }
            prop_assert_eq!(&a, &b);
            // A state survives a snapshot round trip unchanged.
            let json = serde_json::to_string(&a).unwrap();
            let restored: MetadataState = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(&a, &restored);
            for topic in a.topics().values() {
                for p in &topic.partitions {
                    // The first chunk holds the log start offset (it may begin below it).
                    let mut next = match p.index.first() {
                        Some(first) => {
                            prop_assert!(first.base_offset <= p.log_start_offset);
                            prop_assert!(p.log_start_offset < first.end_offset());
                            first.base_offset
                        }
                        None => p.log_start_offset,
                    };
                    for e in &p.index {
                        prop_assert_eq!(e.base_offset, next);
                        next = e.end_offset();
                    }
                    prop_assert_eq!(next, p.next_offset);
                }
            }
        }
    }
}

#[cfg(test)]
mod format_tests {
    use super::*;
    use crate::metadata::codec::{self, Kind};
    use crate::security::scram::{Mechanism, ScramCredential};

    /// Format 4 and 5 snapshots (no `access`, no `txns` fields) still decode, as empty
    /// access and transaction states, and the state after them reads on as before.
    #[test]
    fn format_4_and_5_states_decode_without_later_fields() -> Result<(), codec::CodecError> {
        let mut state = MetadataState::default();
        state.apply(&Command::AlterBrokerConfigs {
            broker: None,
            replace: false,
            changes: BTreeMap::from([("log.retention.ms".to_owned(), Some("5".to_owned()))]),
        });
        let current = codec::encode(Kind::LocalSnapshot, &(state.clone(), 7u64))?;
        // An empty access state is three empty collections, an empty transaction state
        // two: one zero length byte each, right before the trailing u64 (one byte).
        let end = current.len() - 1;
        assert_eq!(&current[end - 5..end], &[0, 0, 0, 0, 0]);
        for (format, strip) in [(4u16, 5), (5, 2)] {
            let mut bytes = current.clone();
            bytes.drain(end - strip..end);
            bytes[4..6].copy_from_slice(&format.to_le_bytes());
            let (decoded, trailing): (MetadataState, u64) =
                codec::decode(Kind::LocalSnapshot, &bytes)?;
            assert_eq!(decoded, state, "format {format}");
            assert_eq!(trailing, 7);
        }
        // A format 5 partition has no transactions field.
        let partition = Partition {
            next_offset: 3,
            ..Partition::default()
        };
        let mut bytes = codec::encode(Kind::LocalSnapshot, &partition)?;
        assert_eq!(bytes[bytes.len() - 2..], [0, 0]);
        bytes.truncate(bytes.len() - 2);
        bytes[4..6].copy_from_slice(&5u16.to_le_bytes());
        assert_eq!(
            codec::decode::<Partition>(Kind::LocalSnapshot, &bytes)?,
            partition
        );

        state.apply(&Command::AlterScram {
            changes: vec![ScramChange::Upsert {
                user: "admin".into(),
                mechanism: Mechanism::Sha512,
                credential: ScramCredential {
                    salt: vec![1],
                    stored_key: vec![2],
                    server_key: vec![3],
                    iterations: 4096,
                },
                only_if_missing: true,
            }],
        });
        let bytes = codec::encode(Kind::LocalSnapshot, &state)?;
        let decoded: MetadataState = codec::decode(Kind::LocalSnapshot, &bytes)?;
        assert!(decoded
            .access()
            .credential("admin", Mechanism::Sha512)
            .is_some());
        assert_eq!(decoded, state);
        Ok(())
    }
}

//! Format 1 of the shipped metadata snapshot: JSON, as builds before the binary codec wrote
//! `_strata/metadata/snapshot.json`. Read only, so that a bucket written by an older build
//! can still rebuild a cluster.
//!
//! The `V1…` types are frozen copies of the state types as they were serialized then
//! (field names, order and serde attributes included). They must not follow later changes
//! to `state.rs`: that is the point of keeping them here. Only [`upgrade_v1`] knows both
//! shapes.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::cluster::ClusterCommand;
use super::state::{
    Command, MetadataState, OffsetCommit, ProducerBatch, SegmentCommit, SegmentEntry,
};

#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    #[error("format 1 metadata snapshot is not valid: {0}")]
    Json(#[from] serde_json::Error),
    #[error("expected a format 1 metadata snapshot, found format {0}")]
    Format(u32),
}

#[derive(Debug, Deserialize)]
pub struct V1Snapshot {
    pub(crate) format: u32,
    /// Raft index of the last command applied to `state`.
    pub(crate) applied: u64,
    pub(crate) taken_ms: u64,
    pub(crate) state: V1MetadataState,
}

#[derive(Debug, Default, Deserialize)]
pub struct V1MetadataState {
    pub(crate) topics: BTreeMap<String, V1Topic>,
    pub(crate) groups: BTreeMap<String, BTreeMap<String, BTreeMap<i32, V1CommittedOffset>>>,
    // Part of the format; the upgrade recomputes it from the commands it replays.
    #[allow(dead_code)]
    pub(crate) object_refs: BTreeMap<String, u32>,
    #[serde(default)]
    pub(crate) next_producer_id: i64,
    #[serde(default)]
    pub(crate) producer_epochs: BTreeMap<i64, i16>,
    #[serde(default)]
    pub(crate) cluster: V1ClusterState,
}

#[derive(Debug, Deserialize)]
pub struct V1Topic {
    pub(crate) id: [u8; 16],
    pub(crate) configs: BTreeMap<String, String>,
    pub(crate) created_ms: i64,
    pub(crate) partitions: Vec<V1Partition>,
}

#[derive(Debug, Default, Deserialize)]
pub struct V1Partition {
    pub(crate) next_offset: i64,
    pub(crate) log_start_offset: i64,
    /// Sorted by `base_offset`, contiguous.
    pub(crate) index: Vec<V1IndexEntry>,
    // Part of the format; the upgrade recomputes it from the commands it replays.
    #[allow(dead_code)]
    pub(crate) size_bytes: u64,
    #[serde(default)]
    pub(crate) producers: BTreeMap<i64, V1ProducerState>,
}

#[derive(Debug, Default, Deserialize)]
pub struct V1ProducerState {
    pub(crate) epoch: i16,
    /// (first sequence, last sequence, base offset), oldest first.
    pub(crate) batches: Vec<(i32, i32, i64)>,
}

#[derive(Debug, Deserialize)]
pub struct V1IndexEntry {
    pub(crate) base_offset: i64,
    pub(crate) offset_count: u32,
    pub(crate) object: String,
    pub(crate) position: u64,
    pub(crate) length: u64,
    pub(crate) max_timestamp: i64,
}

#[derive(Debug, Deserialize)]
pub struct V1CommittedOffset {
    pub(crate) offset: i64,
    pub(crate) metadata: Option<String>,
    pub(crate) commit_ms: i64,
}

#[derive(Debug, Default, Deserialize)]
pub struct V1ClusterState {
    pub(crate) brokers: BTreeMap<u64, V1BrokerInfo>,
    // Part of the format; the upgrade recomputes it from the commands it replays.
    #[allow(dead_code)]
    pub(crate) epoch: i32,
}

#[derive(Debug, Deserialize)]
pub struct V1BrokerInfo {
    pub(crate) host: String,
    pub(crate) port: i32,
    pub(crate) rack: Option<String>,
    pub(crate) last_heartbeat_ms: i64,
    pub(crate) alive: bool,
}

impl V1Snapshot {
    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn taken_ms(&self) -> u64 {
        self.taken_ms
    }

    pub fn into_state(self) -> V1MetadataState {
        self.state
    }
}

pub fn parse_v1_snapshot(json: &[u8]) -> Result<V1Snapshot, LegacyError> {
    let snapshot: V1Snapshot = serde_json::from_slice(json)?;
    if snapshot.format != 1 {
        return Err(LegacyError::Format(snapshot.format));
    }
    Ok(snapshot)
}

/// Rebuilds a current state from a format 1 one by applying commands, so that this file
/// needs only the public command set and not the state's internals.
///
/// TODO(state rewrite): this is the best the current `Command` set allows; adapt it to the
/// new state. What it restores exactly: topics (id, configs, created_ms, partition count),
/// each partition's index (object, position, length, offset count, max timestamp),
/// `log_start_offset` (via DeleteRecords), `size_bytes` (follows from the index), group
/// offsets (metadata and commit time included), producer ids and epochs, the idempotence
/// window of producers whose remembered batches start at sequence 0, live brokers.
/// What it does NOT restore:
/// - offsets of a partition whose index does not start at 0 (records deleted by retention
///   or DeleteRecords before the snapshot): commits hand out offsets from 0, so they come
///   back shifted down, and `next_offset` of a partition with an empty index comes back 0;
/// - idempotence windows that do not start at sequence 0 (a retry of those batches after
///   the upgrade is refused as out of order instead of de-duplicated);
/// - the cluster epoch (counted again from the re-registered brokers) and dead brokers.
pub fn upgrade_v1(v1: V1MetadataState) -> MetadataState {
    let mut state = MetadataState::default();
    let mut apply = |cmd: Command| {
        state.apply(&cmd);
    };

    for (name, topic) in &v1.topics {
        apply(Command::CreateTopic {
            name: name.clone(),
            topic_id: topic.id,
            partitions: i32::try_from(topic.partitions.len()).unwrap_or(i32::MAX),
            configs: topic.configs.clone(),
            now_ms: topic.created_ms,
        });
        for (p, partition) in topic.partitions.iter().enumerate() {
            let starts_at_zero = partition.index.first().is_none_or(|e| e.base_offset == 0)
                && (!partition.index.is_empty() || partition.next_offset == 0);
            if !starts_at_zero {
                tracing::warn!(
                    topic = %name,
                    partition = p,
                    "format 1 upgrade: partition does not start at offset 0; its offsets shift"
                );
            }
        }
    }

    for object in commit_order(&v1.topics) {
        let uploaded_ms = upload_time_ms(&object.name);
        apply(Command::CommitSegments {
            segments: vec![SegmentCommit {
                object: object.name,
                // Not in format 1. TODO(state rewrite): 0 makes the object look tiny to
                // anything that weighs objects by size (stats, compaction choices).
                object_size: 0,
                uploaded_ms,
                entries: object.entries,
            }],
            // The state's clock then follows the upload times, as it did when the objects
            // were first committed.
            now_ms: uploaded_ms,
            max_age_ms: 0,
        });
    }

    for (name, topic) in &v1.topics {
        for (p, partition) in topic.partitions.iter().enumerate() {
            if partition.log_start_offset > 0 {
                apply(Command::DeleteRecords {
                    topic: name.clone(),
                    partition: i32::try_from(p).unwrap_or(i32::MAX),
                    offset: partition.log_start_offset,
                });
            }
        }
    }

    for (group, topics) in &v1.groups {
        let offsets = topics
            .iter()
            .flat_map(|(topic, partitions)| {
                partitions.iter().map(|(partition, c)| OffsetCommit {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: c.offset,
                    metadata: c.metadata.clone(),
                    commit_ms: c.commit_ms,
                })
            })
            .collect();
        apply(Command::CommitOffsets {
            group: group.clone(),
            offsets,
        });
    }

    // Ids are handed out in order from 0, each at epoch 0; then every epoch is bumped to
    // where it was.
    for _ in 0..v1.next_producer_id.max(0) {
        apply(Command::InitProducer { current: None });
    }
    for (&id, &epoch) in &v1.producer_epochs {
        for e in 0..epoch.max(0) {
            apply(Command::InitProducer {
                current: Some((id, e)),
            });
        }
    }

    for (&id, broker) in v1.cluster.brokers.iter().filter(|(_, b)| b.alive) {
        apply(Command::Cluster(ClusterCommand::Register {
            id,
            host: broker.host.clone(),
            port: broker.port,
            rack: broker.rack.clone(),
            now_ms: broker.last_heartbeat_ms,
        }));
    }

    state
}

/// The upload time in an object's name (`segments/<ms>-…`), 0 if it has none.
fn upload_time_ms(path: &str) -> i64 {
    path.rsplit('/')
        .next()
        .and_then(|name| name.split('-').next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0)
}

struct ObjectCommit {
    name: String,
    entries: Vec<SegmentEntry>,
}

/// Orders the objects so that every partition gets its chunks in index order, which is
/// what gives them their offsets again: an object may be committed once all the chunks
/// before its own, in every partition it holds, are. Among objects that are ready, name
/// order (= upload time) decides, so the result is deterministic. The order the objects
/// were really committed in satisfies this, so on a consistent snapshot the loop never
/// gets stuck; if it does, the smallest remaining name goes first.
fn commit_order(topics: &BTreeMap<String, V1Topic>) -> Vec<ObjectCommit> {
    // Per partition, its objects in index order (consecutive chunks of one object merged).
    let mut sequences: Vec<Vec<&str>> = Vec::new();
    let mut entries: BTreeMap<&str, Vec<SegmentEntry>> = BTreeMap::new();
    for (name, topic) in topics {
        for (p, partition) in topic.partitions.iter().enumerate() {
            let p = i32::try_from(p).unwrap_or(i32::MAX);
            let producers = producer_batches(partition);
            let mut sequence: Vec<&str> = Vec::new();
            for e in &partition.index {
                if sequence.last() != Some(&e.object.as_str()) {
                    sequence.push(&e.object);
                }
                entries.entry(&e.object).or_default().push(SegmentEntry {
                    topic: name.clone(),
                    partition: p,
                    position: e.position,
                    length: e.length,
                    offset_count: e.offset_count,
                    max_timestamp: e.max_timestamp,
                    producer: producers.get(&e.base_offset).copied(),
                });
            }
            if !sequence.is_empty() {
                sequences.push(sequence);
            }
        }
    }

    // How many partitions each object still waits in (not yet at the head of).
    let mut waiting: BTreeMap<&str, usize> = entries.keys().map(|o| (*o, 0)).collect();
    let mut holders: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (s, sequence) in sequences.iter().enumerate() {
        for (i, object) in sequence.iter().enumerate() {
            holders.entry(object).or_default().push(s);
            if i > 0 {
                *waiting.entry(object).or_default() += 1;
            }
        }
    }
    let mut heads = vec![0usize; sequences.len()];
    let mut ready: BTreeSet<&str> = waiting
        .iter()
        .filter(|(_, w)| **w == 0)
        .map(|(o, _)| *o)
        .collect();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let total = entries.len();
    let mut order = Vec::with_capacity(total);
    while done.len() < total {
        let next = match ready.pop_first() {
            Some(object) => object,
            None => {
                let Some(object) = waiting.keys().find(|o| !done.contains(*o)).copied() else {
                    break;
                };
                tracing::warn!(
                    %object,
                    "format 1 upgrade: segment objects out of order; offsets may shift"
                );
                object
            }
        };
        if !done.insert(next) {
            continue;
        }
        for &s in holders.get(next).map(Vec::as_slice).unwrap_or_default() {
            let sequence = &sequences[s];
            // Skip past `next` (and anything forced out of order before it).
            while heads[s] < sequence.len() && done.contains(sequence[heads[s]]) {
                heads[s] += 1;
                if let Some(&head) = sequence.get(heads[s]) {
                    if let Some(w) = waiting.get_mut(head) {
                        *w = w.saturating_sub(1);
                        if *w == 0 && !done.contains(head) {
                            ready.insert(head);
                        }
                    }
                }
            }
        }
        order.push(ObjectCommit {
            name: next.to_owned(),
            entries: entries.remove(next).unwrap_or_default(),
        });
    }
    order
}

/// The batches of the partition's idempotence window, by base offset, when the state
/// machine will accept them on replay: a producer's window must start at sequence 0 and
/// be gap-free, or the first replayed batch would be refused and its chunk lost.
fn producer_batches(partition: &V1Partition) -> BTreeMap<i64, ProducerBatch> {
    let mut out = BTreeMap::new();
    for (&producer_id, producer) in &partition.producers {
        let mut expected = 0;
        let replayable = producer.batches.iter().all(|&(first, last, _)| {
            let ok = first == expected && last >= first;
            expected = last.wrapping_add(1);
            ok
        });
        if !replayable {
            continue;
        }
        for &(first_sequence, last_sequence, base_offset) in &producer.batches {
            out.insert(
                base_offset,
                ProducerBatch {
                    producer_id,
                    epoch: producer.epoch,
                    first_sequence,
                    last_sequence,
                },
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by the broker before the codec (see the commit that added it): topic
    /// `fixture` with 3 partitions, 10 records round-robin, 5 more to partition 0, two from
    /// an idempotent producer to partition 2, and group `fixture-group` at 7 (p0) and 2 (p1).
    const FIXTURE: &[u8] = include_bytes!("../../tests/fixtures/snapshot-v1.json");

    #[test]
    fn fixture_parses() -> Result<(), LegacyError> {
        let v1 = parse_v1_snapshot(FIXTURE)?;
        assert_eq!(v1.format, 1);
        assert_eq!(v1.applied, 32);
        let state = v1.state;
        let topic = &state.topics["fixture"];
        assert_eq!(topic.partitions.len(), 3);
        assert_eq!(
            topic.configs.get("retention.ms").map(String::as_str),
            Some("86400000")
        );
        let next: Vec<i64> = topic.partitions.iter().map(|p| p.next_offset).collect();
        assert_eq!(next, [9, 3, 5]);
        assert_eq!(topic.partitions[0].index.len(), 5);
        assert_eq!(topic.partitions[0].index[4].base_offset, 4);
        assert_eq!(topic.partitions[0].index[4].offset_count, 5);
        assert_eq!(topic.partitions[0].size_bytes, 394);
        let producer = &topic.partitions[2].producers[&0];
        assert_eq!(producer.batches, [(0, 1, 3)]);
        let group = &state.groups["fixture-group"]["fixture"];
        assert_eq!(group[&0].offset, 7);
        assert_eq!(group[&1].offset, 2);
        assert_eq!(group[&0].metadata.as_deref(), Some(""));
        assert!(!group.contains_key(&2));
        assert_eq!(state.object_refs.len(), 12);
        assert_eq!(state.next_producer_id, 1);
        assert_eq!(state.producer_epochs.get(&0), Some(&0));
        assert_eq!(state.cluster.epoch, 2);
        assert!(state.cluster.brokers.is_empty());
        Ok(())
    }

    #[test]
    fn fixture_upgrades_to_the_same_offsets() -> Result<(), LegacyError> {
        let v1 = parse_v1_snapshot(FIXTURE)?;
        let expected = &v1.state.topics["fixture"];
        let expected_id = expected.id;
        // (base offset, offset count, object name, position) per chunk, per partition.
        type Chunk = (i64, u32, Option<String>, u64);
        let expected_index: Vec<Vec<Chunk>> = expected
            .partitions
            .iter()
            .map(|p| {
                p.index
                    .iter()
                    .map(|e| {
                        let object = Some(e.object.clone());
                        (e.base_offset, e.offset_count, object, e.position)
                    })
                    .collect()
            })
            .collect();
        let sizes: Vec<u64> = expected.partitions.iter().map(|p| p.size_bytes).collect();

        let state = upgrade_v1(v1.state);
        let topic = state.topic("fixture").expect("topic upgraded");
        assert_eq!(topic.id, expected_id);
        assert_eq!(topic.created_ms, 1795663303317);
        assert_eq!(
            topic.configs.get("retention.ms").map(String::as_str),
            Some("86400000")
        );
        for (p, want) in expected_index.iter().enumerate() {
            let got = &topic.partitions[p];
            let index: Vec<_> = got
                .index
                .iter()
                .map(|e| {
                    let object = state.objects().get(e.object).map(|o| o.name.clone());
                    (e.base_offset, e.offset_count, object, e.position)
                })
                .collect();
            assert_eq!(&index, want, "partition {p}");
            assert_eq!(got.size_bytes, sizes[p], "partition {p}");
        }
        assert_eq!(topic.partitions[0].next_offset, 9);
        assert_eq!(topic.partitions[2].producers[&0].batches, [(0, 1, 3)]);
        let committed = |p| state.committed_offset("fixture-group", "fixture", p);
        assert_eq!(committed(0).map(|c| c.offset), Some(7));
        assert_eq!(committed(1).map(|c| c.offset), Some(2));
        assert!(committed(2).is_none());
        assert_eq!(
            state
                .objects()
                .refs("segments/1795663306144-1-144651092-12.seg"),
            1
        );
        // Producer id 0 is taken: the next idempotent producer gets 1.
        let mut state = state;
        assert_eq!(
            state.apply(&Command::InitProducer { current: None }),
            super::super::state::Response::Producer(Ok((1, 0)))
        );
        Ok(())
    }

    /// Objects holding chunks of several partitions must be committed in an order that
    /// keeps every partition's chunks in index order, whatever their names say.
    #[test]
    fn commit_order_follows_every_partition() {
        let entry = |base_offset, object: &str| V1IndexEntry {
            base_offset,
            offset_count: 1,
            object: object.into(),
            position: 0,
            length: 1,
            max_timestamp: 0,
        };
        let partition = |index| V1Partition {
            next_offset: 2,
            index,
            ..V1Partition::default()
        };
        // "a" sorts first but must follow "b" in partition 1.
        let topic = V1Topic {
            id: [1; 16],
            configs: BTreeMap::new(),
            created_ms: 0,
            partitions: vec![
                partition(vec![entry(0, "b"), entry(1, "c")]),
                partition(vec![entry(0, "b"), entry(1, "a")]),
                partition(vec![entry(0, "a"), entry(1, "c")]),
            ],
        };
        let topics = BTreeMap::from([("t".to_owned(), topic)]);
        let order: Vec<String> = commit_order(&topics).into_iter().map(|o| o.name).collect();
        assert_eq!(order, ["b", "a", "c"]);
    }

    #[test]
    fn other_formats_are_refused() {
        assert!(matches!(
            parse_v1_snapshot(br#"{"format":2,"applied":0,"taken_ms":0,"state":{"topics":{},"groups":{},"object_refs":{}}}"#),
            Err(LegacyError::Format(2))
        ));
        assert!(matches!(
            parse_v1_snapshot(b"STSH\x02\x00"),
            Err(LegacyError::Json(_))
        ));
    }
}

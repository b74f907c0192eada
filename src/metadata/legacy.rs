//! Format 1 of the shipped metadata snapshot: JSON, as builds before the binary codec wrote
//! `_strata/metadata/snapshot.json`. Read only, so that a bucket written by an older build
//! can still rebuild a cluster.
//!
//! The `V1…` types are frozen copies of the state types as they were serialized then
//! (field names, order and serde attributes included). They must not follow later changes
//! to `state/`: that is the point of keeping them here. Only [`upgrade_v1`] knows both
//! shapes.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use std::sync::Arc;

use super::state::cluster::ClusterCommand;
use super::state::objects::{ObjectKind, Objects};
use super::state::offsets::{CommittedOffset, GroupOffsets};
use super::state::partition::{IndexEntry, Partition};
use super::state::producers::ProducerState;
use super::state::topics::Topic;
use super::state::{Command, MetadataState};

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

/// Rebuilds a current state from a format 1 one, exactly: every partition keeps its
/// offsets, log start, index, size and idempotence windows; objects get ids in name
/// (= upload) order; groups and producer ids are copied; live brokers re-register.
/// Format 1 did not record object sizes (0 here: only compacted segments, which format 1
/// never had, need theirs) nor the cluster epoch (counted again from the registrations).
pub fn upgrade_v1(v1: V1MetadataState) -> MetadataState {
    let (mut objects, clock_ms) = upgrade_objects(&v1.topics);
    let mut topics = BTreeMap::new();
    for (name, topic) in v1.topics {
        let partitions = topic
            .partitions
            .into_iter()
            .map(|p| Arc::new(upgrade_partition(p, &mut objects, clock_ms)))
            .collect();
        let topic = Topic {
            id: topic.id,
            configs: topic.configs,
            created_ms: topic.created_ms,
            partitions,
        };
        topics.insert(name, topic);
    }
    let groups = upgrade_groups(v1.groups);
    let mut state = MetadataState::from_parts(
        topics,
        groups,
        objects,
        v1.next_producer_id,
        v1.producer_epochs,
        clock_ms,
    );
    for (&id, broker) in v1.cluster.brokers.iter().filter(|(_, b)| b.alive) {
        state.apply(&Command::Cluster(ClusterCommand::Register {
            id,
            host: broker.host.clone(),
            port: broker.port,
            rack: broker.rack.clone(),
            now_ms: broker.last_heartbeat_ms,
        }));
    }
    state
}

/// The object table of every object the index names, with no references yet, and the
/// latest upload time among them (the upgraded state's clock).
fn upgrade_objects(topics: &BTreeMap<String, V1Topic>) -> (Objects, i64) {
    let mut objects = Objects::default();
    // Ids in name order, so that the upgrade is deterministic.
    let names: BTreeSet<&str> = topics
        .values()
        .flat_map(|t| t.partitions.iter())
        .flat_map(|p| p.index.iter())
        .map(|e| e.object.as_str())
        .collect();
    let mut clock_ms = 0;
    for name in names {
        let uploaded_ms = upload_time_ms(name);
        clock_ms = clock_ms.max(uploaded_ms);
        objects.add(name, 0, ObjectKind::Flush, uploaded_ms);
    }
    (objects, clock_ms)
}

/// One partition, its index entries now naming objects by id (each taking a reference)
/// and carrying the running maximum timestamp.
fn upgrade_partition(p: V1Partition, objects: &mut Objects, clock_ms: i64) -> Partition {
    let mut running_max = i64::MIN;
    let index = p
        .index
        .iter()
        .filter_map(|e| {
            let object = objects.id_of(&e.object)?;
            objects.acquire(object);
            running_max = running_max.max(e.max_timestamp);
            Some(IndexEntry {
                base_offset: e.base_offset,
                offset_count: e.offset_count,
                object,
                position: e.position,
                length: e.length,
                max_timestamp: running_max,
            })
        })
        .collect();
    let producers = p
        .producers
        .into_iter()
        .map(|(id, s)| {
            let state = ProducerState {
                epoch: s.epoch,
                batches: s.batches,
                last_ms: clock_ms,
            };
            (id, state)
        })
        .collect();
    Partition {
        txns: Default::default(),
        next_offset: p.next_offset,
        log_start_offset: p.log_start_offset,
        index,
        size_bytes: p.size_bytes,
        producers,
        preferred: None,
    }
}

fn upgrade_groups(
    groups: BTreeMap<String, BTreeMap<String, BTreeMap<i32, V1CommittedOffset>>>,
) -> BTreeMap<String, Arc<GroupOffsets>> {
    groups
        .into_iter()
        .map(|(group, offsets)| {
            let offsets = offsets
                .into_iter()
                .map(|(topic, partitions)| {
                    let partitions = partitions
                        .into_iter()
                        .map(|(p, c)| {
                            let committed = CommittedOffset {
                                offset: c.offset,
                                // Format 1 did not keep it.
                                leader_epoch: -1,
                                metadata: c.metadata,
                                commit_ms: c.commit_ms,
                            };
                            (p, committed)
                        })
                        .collect();
                    (topic, partitions)
                })
                .collect();
            (group, Arc::new(offsets))
        })
        .collect()
}

/// The upload time in an object's name (`segments/<ms>-…`), 0 if it has none.
fn upload_time_ms(path: &str) -> i64 {
    path.rsplit('/')
        .next()
        .and_then(|name| name.split('-').next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0)
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
        assert_eq!(committed(0).map(|c| c.leader_epoch), Some(-1));
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

    /// A partition whose records were partly deleted keeps its offsets, log start and
    /// running-maximum timestamps exactly.
    #[test]
    fn offsets_after_delete_records_are_kept() {
        let entry = |base_offset, object: &str, max_timestamp| V1IndexEntry {
            base_offset,
            offset_count: 10,
            object: object.into(),
            position: 8,
            length: 100,
            max_timestamp,
        };
        let partition = V1Partition {
            next_offset: 120,
            log_start_offset: 105,
            index: vec![
                entry(100, "segments/2-a", 50),
                entry(110, "segments/1-b", 40),
            ],
            size_bytes: 200,
            producers: BTreeMap::new(),
        };
        let topic = V1Topic {
            id: [1; 16],
            configs: BTreeMap::new(),
            created_ms: 0,
            partitions: vec![partition, V1Partition::default()],
        };
        let v1 = V1MetadataState {
            topics: BTreeMap::from([("t".to_owned(), topic)]),
            ..V1MetadataState::default()
        };
        let mut state = upgrade_v1(v1);
        let p = state.partition("t", 0).expect("partition");
        assert_eq!((p.next_offset, p.log_start_offset), (120, 105));
        assert_eq!(
            p.index
                .iter()
                .map(|e| (e.base_offset, e.max_timestamp))
                .collect::<Vec<_>>(),
            [(100, 50), (110, 50)]
        );
        assert_eq!(p.offset_for_timestamp(45), Some(105));
        // The clock follows the newest upload; writes continue at the high watermark.
        assert_eq!(state.clock_ms(), 2);
        let r = state.apply(&Command::CommitSegments {
            segments: vec![super::super::state::SegmentCommit {
                txn: Vec::new(),
                object: "segments/3-c".into(),
                object_size: 1,
                uploaded_ms: 3,
                entries: vec![super::super::state::SegmentEntry {
                    topic: "t".into(),
                    partition: 0,
                    position: 8,
                    length: 1,
                    offset_count: 1,
                    max_timestamp: 0,
                    producer: None,
                }],
            }],
            now_ms: 3,
            max_age_ms: 0,
        });
        assert_eq!(
            r,
            super::super::state::Response::Segments(vec![vec![Ok(120)]])
        );
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

//! Consumer groups' committed offsets in the state machine: OffsetCommit (plain, or from
//! the group's coordinator at its cluster epoch), OffsetDelete and DeleteGroups. The
//! group membership itself is not here: the coordinator keeps it in memory (`group/`).
//!
//! An offset is committed only for a partition that exists, so the offsets a group holds
//! never outlive their topic (deleting a topic forgets them too).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Command, MetadataState, OffsetCommit, Response, StateError};

/// A consumer group's committed offsets, by topic then partition.
pub type GroupOffsets = BTreeMap<String, BTreeMap<i32, CommittedOffset>>;

/// A consumer-protocol group (KIP-848) as its coordinator wrote it: opaque here, so the
/// state machine does not depend on the coordinator's types. `seq` orders one group's
/// writes across coordinators (each continues from the stored one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerGroupRecord {
    pub seq: u64,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    pub offset: i64,
    /// As committed (KIP-320); -1 for none.
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_ms: i64,
}

impl MetadataState {
    /// The consumer group commands, as routed by [`MetadataState::apply`].
    pub(super) fn apply_offsets(&mut self, cmd: &Command) -> Response {
        match cmd {
            Command::CommitOffsets { group, offsets } => {
                Response::Offsets(self.commit_offsets(group, offsets))
            }
            Command::CommitGroupOffsets {
                group,
                offsets,
                coordinator,
                epoch,
            } => Response::Offsets(self.commit_group_offsets(group, offsets, *coordinator, *epoch)),
            Command::DeleteGroupOffsets { group, partitions } => {
                Response::Offsets(self.delete_group_offsets(group, partitions))
            }
            Command::DeleteGroup { group } => {
                let members = self.consumer_groups.remove(group).is_some();
                let offsets = self.groups.remove(group).is_some();
                Response::Group(if members || offsets {
                    Ok(())
                } else {
                    Err(StateError::GroupIdNotFound)
                })
            }
            Command::PutConsumerGroup {
                group,
                seq,
                bytes,
                coordinator,
                epoch,
            } => Response::Group(self.put_consumer_group(group, *seq, bytes, *coordinator, *epoch)),
            // `apply` routes no other command here.
            _ => Response::Empty,
        }
    }

    pub(super) fn commit_offsets(
        &mut self,
        group: &str,
        offsets: &[OffsetCommit],
    ) -> Vec<Result<(), StateError>> {
        let mut results = Vec::with_capacity(offsets.len());
        for commit in offsets {
            if self.partition(&commit.topic, commit.partition).is_none() {
                results.push(Err(StateError::UnknownTopicOrPartition));
                continue;
            }
            let group = self.groups.entry(group.to_owned()).or_default();
            Arc::make_mut(group)
                .entry(commit.topic.clone())
                .or_default()
                .insert(
                    commit.partition,
                    CommittedOffset {
                        offset: commit.offset,
                        leader_epoch: commit.leader_epoch,
                        metadata: commit.metadata.clone(),
                        commit_ms: commit.commit_ms,
                    },
                );
            results.push(Ok(()));
        }
        results
    }

    /// Whether `coordinator` coordinates `group` at cluster epoch `epoch`. With no live
    /// broker at all (every lease lapsed) any broker may, as every broker then answers
    /// for itself.
    fn coordinates(&self, group: &str, coordinator: u64, epoch: i32) -> bool {
        epoch == self.cluster.epoch()
            && self
                .cluster
                .coordinator(group)
                .is_none_or(|c| c == coordinator)
    }

    fn put_consumer_group(
        &mut self,
        group: &str,
        seq: u64,
        bytes: &Option<Vec<u8>>,
        coordinator: u64,
        epoch: i32,
    ) -> Result<(), StateError> {
        if !self.coordinates(group, coordinator, epoch) {
            return Err(StateError::NotCoordinator);
        }
        if self
            .consumer_groups
            .get(group)
            .is_some_and(|stored| stored.seq >= seq)
        {
            return Ok(());
        }
        match bytes {
            Some(bytes) => {
                self.consumer_groups.insert(
                    group.to_owned(),
                    ConsumerGroupRecord {
                        seq,
                        bytes: bytes.clone(),
                    },
                );
            }
            None => {
                self.consumer_groups.remove(group);
            }
        }
        Ok(())
    }

    /// A consumer-protocol group as its coordinator last wrote it.
    pub fn consumer_group(&self, group: &str) -> Option<&ConsumerGroupRecord> {
        self.consumer_groups.get(group)
    }

    /// Every stored consumer-protocol group, with the number of its last write.
    pub fn consumer_group_seqs(&self) -> impl Iterator<Item = (&String, u64)> {
        self.consumer_groups.iter().map(|(g, r)| (g, r.seq))
    }

    /// A commit from the group's coordinator, which must still coordinate the group at
    /// the cluster epoch it decided with (see [`Command::CommitGroupOffsets`]).
    fn commit_group_offsets(
        &mut self,
        group: &str,
        offsets: &[OffsetCommit],
        coordinator: u64,
        epoch: i32,
    ) -> Vec<Result<(), StateError>> {
        if self.coordinates(group, coordinator, epoch) {
            self.commit_offsets(group, offsets)
        } else {
            vec![Err(StateError::NotCoordinator); offsets.len()]
        }
    }

    fn delete_group_offsets(
        &mut self,
        group: &str,
        partitions: &[(String, i32)],
    ) -> Vec<Result<(), StateError>> {
        let Some(offsets) = self.groups.get_mut(group) else {
            return vec![Err(StateError::GroupIdNotFound); partitions.len()];
        };
        let offsets = Arc::make_mut(offsets);
        let results = partitions
            .iter()
            .map(|(topic, partition)| {
                if let Some(by_partition) = offsets.get_mut(topic) {
                    by_partition.remove(partition);
                    if by_partition.is_empty() {
                        offsets.remove(topic);
                    }
                }
                Ok(())
            })
            .collect();
        if offsets.is_empty() {
            self.groups.remove(group);
        }
        results
    }

    /// Drops every group's committed offsets of a deleted topic.
    pub(super) fn forget_topic_offsets(&mut self, topic: &str) {
        for offsets in self.groups.values_mut() {
            if offsets.contains_key(topic) {
                Arc::make_mut(offsets).remove(topic);
            }
        }
    }

    pub fn committed_offset(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
    ) -> Option<&CommittedOffset> {
        self.groups.get(group)?.get(topic)?.get(&partition)
    }

    /// Every committed offset of a group, by topic then partition.
    pub fn group_offsets(&self, group: &str) -> Option<&GroupOffsets> {
        self.groups.get(group).map(Arc::as_ref)
    }

    pub fn group_ids(&self) -> impl Iterator<Item = &String> {
        self.groups.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::super::cluster::ClusterCommand;
    use super::super::fixtures::create;
    use super::*;

    /// Brokers 1..=n, live.
    fn register(s: &mut MetadataState, n: u64) {
        for id in 1..=n {
            s.apply(&Command::Cluster(ClusterCommand::Register {
                id,
                host: "h".into(),
                port: 1,
                rack: None,
                now_ms: 0,
            }));
        }
    }

    #[test]
    fn consumer_group_writes_keep_the_latest_from_the_current_coordinator() {
        let mut s = MetadataState::default();
        register(&mut s, 2);
        let epoch = s.cluster().epoch();
        let coordinator = s.cluster().coordinator("g").unwrap();
        let other = 3 - coordinator;
        let put = |seq, bytes: Option<&[u8]>, coordinator| Command::PutConsumerGroup {
            group: "g".into(),
            seq,
            bytes: bytes.map(<[u8]>::to_vec),
            coordinator,
            epoch,
        };
        let ok = Response::Group(Ok(()));
        assert_eq!(s.apply(&put(2, Some(b"two"), coordinator)), ok);
        // An older write arriving late is dropped; another broker's is refused.
        assert_eq!(s.apply(&put(1, Some(b"one"), coordinator)), ok);
        assert_eq!(
            s.apply(&put(3, Some(b"x"), other)),
            Response::Group(Err(StateError::NotCoordinator))
        );
        let stored = s.consumer_group("g").map(|r| (r.seq, r.bytes.clone()));
        assert_eq!(stored, Some((2, b"two".to_vec())));
        // Removed with its last member; DeleteGroups removes it too.
        assert_eq!(s.apply(&put(3, None, coordinator)), ok);
        assert!(s.consumer_group("g").is_none());
        s.apply(&put(4, Some(b"four"), coordinator));
        assert_eq!(s.apply(&Command::DeleteGroup { group: "g".into() }), ok);
        assert!(s.consumer_group("g").is_none());
        // And it survives a snapshot.
        s.apply(&put(5, Some(b"five"), coordinator));
        let bytes = crate::metadata::codec::encode(crate::metadata::codec::Kind::LocalSnapshot, &s)
            .unwrap();
        let back: MetadataState =
            crate::metadata::codec::decode(crate::metadata::codec::Kind::LocalSnapshot, &bytes)
                .unwrap();
        assert_eq!(back.consumer_group("g").map(|r| r.seq), Some(5));
    }

    #[test]
    fn offset_commits_need_the_current_coordinator_and_epoch() {
        let mut s = MetadataState::default();
        s.apply(&create("t", 1));
        register(&mut s, 3);
        let epoch = s.cluster().epoch();
        let coordinator = s.cluster().coordinator("g").unwrap();
        let other = (1..=3).find(|id| *id != coordinator).unwrap();
        let commit = |offset, coordinator, epoch| Command::CommitGroupOffsets {
            group: "g".into(),
            offsets: vec![OffsetCommit {
                topic: "t".into(),
                partition: 0,
                offset,
                leader_epoch: -1,
                metadata: None,
                commit_ms: 5,
            }],
            coordinator,
            epoch,
        };
        assert_eq!(
            s.apply(&commit(10, coordinator, epoch)),
            Response::Offsets(vec![Ok(())])
        );
        let refused = Response::Offsets(vec![Err(StateError::NotCoordinator)]);
        assert_eq!(s.apply(&commit(11, other, epoch)), refused);
        // The coordinator is cut off and expires; its next coordinator commits 500.
        s.apply(&Command::Cluster(ClusterCommand::ExpireSilent {
            brokers: vec![(coordinator, 0)],
        }));
        let next = s.cluster().coordinator("g").unwrap();
        let new_epoch = s.cluster().epoch();
        assert_eq!(
            s.apply(&commit(500, next, new_epoch)),
            Response::Offsets(vec![Ok(())])
        );
        // A late commit from the old coordinator, decided at the old epoch, is refused,
        // even once it is back and coordinates again.
        assert_eq!(s.apply(&commit(10, coordinator, epoch)), refused);
        s.apply(&Command::Cluster(ClusterCommand::Heartbeat {
            id: coordinator,
            now_ms: 1,
        }));
        assert_eq!(s.cluster().coordinator("g"), Some(coordinator));
        assert_eq!(s.apply(&commit(10, coordinator, epoch)), refused);
        assert_eq!(s.committed_offset("g", "t", 0).map(|c| c.offset), Some(500));
    }

    #[test]
    fn group_offsets_need_an_existing_partition() {
        let mut s = MetadataState::default();
        s.apply(&create("t", 1));
        let commit = |p| OffsetCommit {
            topic: "t".into(),
            partition: p,
            offset: 7,
            leader_epoch: 4,
            metadata: Some("m".into()),
            commit_ms: 1,
        };
        let r = s.apply(&Command::CommitOffsets {
            group: "g".into(),
            offsets: vec![commit(0), commit(3)],
        });
        assert_eq!(
            r,
            Response::Offsets(vec![Ok(()), Err(StateError::UnknownTopicOrPartition)])
        );
        assert_eq!(s.group_ids().collect::<Vec<_>>(), vec!["g"]);
        assert_eq!(s.committed_offset("g", "t", 0).unwrap().leader_epoch, 4);
    }

    #[test]
    fn group_offsets_can_be_deleted_per_partition_or_whole() {
        let mut s = MetadataState::default();
        s.apply(&create("t", 2));
        let offset = |p| OffsetCommit {
            topic: "t".into(),
            partition: p,
            offset: 1,
            leader_epoch: -1,
            metadata: None,
            commit_ms: 0,
        };
        s.apply(&Command::CommitOffsets {
            group: "g".into(),
            offsets: vec![offset(0), offset(1)],
        });
        let r = s.apply(&Command::DeleteGroupOffsets {
            group: "g".into(),
            partitions: vec![("t".into(), 0)],
        });
        assert_eq!(r, Response::Offsets(vec![Ok(())]));
        assert!(s.committed_offset("g", "t", 0).is_none());
        assert!(s.committed_offset("g", "t", 1).is_some());
        assert_eq!(
            s.apply(&Command::DeleteGroupOffsets {
                group: "nope".into(),
                partitions: vec![("t".into(), 0)],
            }),
            Response::Offsets(vec![Err(StateError::GroupIdNotFound)])
        );
        assert_eq!(
            s.apply(&Command::DeleteGroup { group: "g".into() }),
            Response::Group(Ok(()))
        );
        assert!(s.group_offsets("g").is_none());
        assert_eq!(
            s.apply(&Command::DeleteGroup { group: "g".into() }),
            Response::Group(Err(StateError::GroupIdNotFound))
        );
    }
}

//! OffsetCommit, OffsetFetch and OffsetDelete: committed group offsets live in the metadata log.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{
    OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse,
    OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::authz::Authz;
use super::str_bytes;
use crate::broker::Broker;
use crate::clock::now_ms;
use crate::metadata::state::transactions::{GroupPartition, Transactions};
use crate::metadata::state::{Command, OffsetCommit, Response, StateError};
use crate::security::acl::Operation;

const TOPIC_AUTHORIZATION_FAILED: i16 = ResponseError::TopicAuthorizationFailed.code();
const UNSTABLE_OFFSET_COMMIT: i16 = ResponseError::UnstableOffsetCommit.code();

/// The (topic, partition)s for which `group` has an offset committed inside a
/// transaction that is not complete yet (Ongoing or Prepare*): KIP-447's pending
/// offsets, which OffsetFetch with `require_stable` answers UNSTABLE_OFFSET_COMMIT for.
fn pending_txn_offsets(txns: &Transactions, group: &str) -> BTreeSet<(String, i32)> {
    let from: GroupPartition = (group.to_owned(), String::new(), i32::MIN);
    let mut pending = BTreeSet::new();
    for (_, meta) in txns.iter() {
        if meta.state.is_idle() || !meta.groups.contains(group) {
            continue;
        }
        let range = meta
            .pending_offsets
            .range((Bound::Included(&from), Bound::Unbounded));
        for ((g, topic, partition), _) in range {
            if g != group {
                break;
            }
            pending.insert((topic.clone(), *partition));
        }
    }
    pending
}

/// The group's READ was checked before (`coordinator::refuse_unauthorized`); each topic
/// needs READ too, else its partitions get TOPIC_AUTHORIZATION_FAILED and are not
/// committed.
pub async fn commit(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    req: OffsetCommitRequest,
    version: i16,
) -> OffsetCommitResponse {
    let group = req.group_id.as_str().to_owned();
    broker.load_consumer_group(&group);
    let refusal = broker.groups().check_offset_commit(
        &group,
        req.generation_id_or_member_epoch,
        req.member_id.as_str(),
        req.group_instance_id.as_ref().map(|s| s.as_str()),
        // v9 is KIP-848's: the field holds a consumer-protocol member's epoch.
        version >= 9,
    );
    let now = now_ms();
    let readable: Vec<bool> = req
        .topics
        .iter()
        .map(|t| authz.topic(Operation::Read, t.name.as_str()))
        .collect();
    let mut commits = Vec::new();
    for (topic, _) in req.topics.iter().zip(&readable).filter(|(_, r)| **r) {
        for p in &topic.partitions {
            commits.push(OffsetCommit {
                topic: topic.name.as_str().to_owned(),
                partition: p.partition_index,
                offset: p.committed_offset,
                // KIP-320: v6+ carries the epoch the offset was read in.
                leader_epoch: if version >= 6 {
                    p.committed_leader_epoch
                } else {
                    -1
                },
                metadata: p.committed_metadata.as_ref().map(|m| m.as_str().to_owned()),
                commit_ms: now,
            });
        }
    }
    // The epoch this broker coordinates the group at: the state machine refuses the
    // commit if the group moved since (a broker cut off from Raft cannot overwrite what
    // the group's next coordinator committed).
    let epoch = broker.coordinator_epoch(&group);
    let codes: Vec<i16> = match (refusal, epoch) {
        (Some(error), _) => vec![error.code(); commits.len()],
        (None, None) => vec![ResponseError::NotCoordinator.code(); commits.len()],
        (None, Some(epoch)) => match broker
            .propose(Command::CommitGroupOffsets {
                group,
                offsets: commits.clone(),
                coordinator: broker.id(),
                epoch,
            })
            .await
        {
            Ok(Response::Offsets(results)) => results
                .iter()
                .map(|r| match r {
                    Ok(()) => 0,
                    Err(StateError::NotCoordinator) => ResponseError::NotCoordinator.code(),
                    Err(_) => ResponseError::UnknownTopicOrPartition.code(),
                })
                .collect(),
            _ => vec![ResponseError::CoordinatorNotAvailable.code(); commits.len()],
        },
    };
    let mut codes = codes.into_iter();
    let topics = req
        .topics
        .into_iter()
        .zip(readable)
        .map(|(topic, readable)| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let code = if readable {
                        codes.next().unwrap_or(0)
                    } else {
                        TOPIC_AUTHORIZATION_FAILED
                    };
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// The group's DESCRIBE was checked before; topics the principal may not describe are
/// left out of "every partition" and answered TOPIC_AUTHORIZATION_FAILED when named.
pub fn fetch(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    req: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    let group = req.group_id.as_str();
    let all = req.topics.is_none();
    let require_stable = version >= 7 && req.require_stable;
    let topics: Vec<OffsetFetchResponseTopic> = broker.read(|s| {
        let pending = if require_stable {
            pending_txn_offsets(s.transactions(), group)
        } else {
            BTreeSet::new()
        };
        // A null topic list (v2+) asks for every partition the group has committed.
        let wanted: Vec<(TopicName, Vec<i32>)> = match &req.topics {
            Some(topics) => topics
                .iter()
                .map(|t| (t.name.clone(), t.partition_indexes.clone()))
                .collect(),
            None => s
                .group_offsets(group)
                .map(|by_topic: &BTreeMap<_, BTreeMap<i32, _>>| {
                    by_topic
                        .iter()
                        .map(|(t, parts)| {
                            (
                                TopicName(StrBytes::from_string(t.clone())),
                                parts.keys().copied().collect(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
        };
        wanted
            .into_iter()
            .map(|(name, partitions)| {
                let partitions = partitions
                    .into_iter()
                    .map(|partition| {
                        if !pending.is_empty()
                            && pending.contains(&(name.as_str().to_owned(), partition))
                        {
                            return OffsetFetchResponsePartition::default()
                                .with_partition_index(partition)
                                .with_committed_offset(-1)
                                .with_committed_leader_epoch(-1)
                                .with_metadata(Some(str_bytes("")))
                                .with_error_code(UNSTABLE_OFFSET_COMMIT);
                        }
                        let committed = s.committed_offset(group, name.as_str(), partition);
                        OffsetFetchResponsePartition::default()
                            .with_partition_index(partition)
                            .with_committed_offset(committed.map_or(-1, |c| c.offset))
                            .with_committed_leader_epoch(committed.map_or(-1, |c| c.leader_epoch))
                            .with_metadata(Some(str_bytes(
                                committed.and_then(|c| c.metadata.as_deref()).unwrap_or(""),
                            )))
                    })
                    .collect();
                OffsetFetchResponseTopic::default()
                    .with_name(name)
                    .with_partitions(partitions)
            })
            .collect()
    });
    // Checked after the read: the authorizer reads the state itself.
    let topics = topics
        .into_iter()
        .filter_map(|mut topic| {
            if authz.topic(Operation::Describe, topic.name.as_str()) {
                return Some(topic);
            }
            if all {
                return None;
            }
            for p in &mut topic.partitions {
                p.committed_offset = -1;
                p.committed_leader_epoch = -1;
                p.error_code = TOPIC_AUTHORIZATION_FAILED;
            }
            Some(topic)
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

/// OffsetDelete: forget committed offsets of partitions the group no longer consumes.
/// Partitions of topics an active member subscribes to answer GROUP_SUBSCRIBED_TO_TOPIC.
pub async fn delete(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    req: OffsetDeleteRequest,
    _version: i16,
) -> OffsetDeleteResponse {
    let group = req.group_id.as_str().to_owned();
    let top_error = |e: ResponseError| OffsetDeleteResponse::default().with_error_code(e.code());
    if !authz.group(Operation::Delete, &group) {
        return top_error(ResponseError::GroupAuthorizationFailed);
    }
    let readable: Vec<bool> = req
        .topics
        .iter()
        .map(|t| authz.topic(Operation::Read, t.name.as_str()))
        .collect();
    let active = broker.groups().active_subscriptions(&group);
    let has_offsets = broker.read(|s| s.group_offsets(&group).is_some());
    let subscribed = match active {
        None if !has_offsets => return top_error(ResponseError::GroupIdNotFound),
        None => Default::default(),
        Some((protocol_type, _)) if protocol_type.as_deref() != Some("consumer") => {
            return top_error(ResponseError::NonEmptyGroup)
        }
        Some((_, topics)) => topics,
    };
    // (topic, partition, error) in request order; deletable ones go to the state.
    let mut outcome: Vec<(usize, i32, Option<ResponseError>)> = Vec::new();
    let mut deletable = Vec::new();
    broker.read(|s| {
        for (t, topic) in req.topics.iter().enumerate() {
            for p in &topic.partitions {
                let name = topic.name.as_str();
                let error = if !readable[t] {
                    Some(ResponseError::TopicAuthorizationFailed)
                } else if s.partition(name, p.partition_index).is_none() {
                    Some(ResponseError::UnknownTopicOrPartition)
                } else if subscribed.contains(name) {
                    Some(ResponseError::GroupSubscribedToTopic)
                } else {
                    deletable.push((name.to_owned(), p.partition_index));
                    None
                };
                outcome.push((t, p.partition_index, error));
            }
        }
    });
    if !deletable.is_empty() && has_offsets {
        let cmd = Command::DeleteGroupOffsets {
            group,
            partitions: deletable,
        };
        match broker.propose(cmd).await {
            Ok(Response::Offsets(_)) => {}
            _ => return top_error(ResponseError::CoordinatorNotAvailable),
        }
    }
    let topics = req
        .topics
        .iter()
        .enumerate()
        .map(|(t, topic)| {
            let partitions = outcome
                .iter()
                .filter(|(i, _, _)| *i == t)
                .map(|(_, partition, error)| {
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(*partition)
                        .with_error_code(error.map_or(0, |e| e.code()))
                })
                .collect();
            OffsetDeleteResponseTopic::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    OffsetDeleteResponse::default().with_topics(topics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::state::transactions::{InitOutcome, PendingOffset, TopicPartition};

    fn offset(at: i64) -> PendingOffset {
        PendingOffset {
            offset: at,
            leader_epoch: -1,
            metadata: None,
        }
    }

    #[test]
    fn only_offsets_of_unfinished_transactions_are_pending(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let mut txns = Transactions::default();
        for (id, pid) in [("a", 1), ("b", 2)] {
            let got = txns.init_producer(id, 60_000, 0, None, || pid)?;
            assert_eq!(
                got,
                InitOutcome::Ready {
                    producer_id: pid,
                    epoch: 0
                }
            );
        }
        assert!(pending_txn_offsets(&txns, "g").is_empty());
        // "a" commits offsets of g and of another group inside its transaction.
        txns.add_offsets("a", 1, 0, "g", 1)?;
        txns.add_offsets("a", 1, 0, "h", 1)?;
        txns.txn_offset_commit(
            "a",
            1,
            0,
            "g",
            [
                (TopicPartition::new("t", 0), offset(5)),
                (TopicPartition::new("u", 3), offset(9)),
            ],
        )?;
        txns.txn_offset_commit("a", 1, 0, "h", [(TopicPartition::new("t", 1), offset(5))])?;
        // "b" is in a group whose name sorts before g's, with the same topic.
        txns.add_offsets("b", 2, 0, "f", 1)?;
        txns.txn_offset_commit("b", 2, 0, "f", [(TopicPartition::new("t", 2), offset(1))])?;
        let want: BTreeSet<(String, i32)> = [("t".to_owned(), 0), ("u".to_owned(), 3)].into();
        assert_eq!(pending_txn_offsets(&txns, "g"), want);
        assert_eq!(
            pending_txn_offsets(&txns, "f"),
            [("t".to_owned(), 2)].into()
        );
        assert!(pending_txn_offsets(&txns, "other").is_empty());
        // Still pending while the commit is being prepared (no partitions: it completes
        // at once, so add one to go through PrepareCommit).
        txns.add_partitions("a", 1, 0, &[TopicPartition::new("t", 0)], 2)?;
        txns.end_txn("a", 1, 0, true, 3)?;
        assert_eq!(pending_txn_offsets(&txns, "g"), want);
        // Complete: the offsets are the group's now, nothing pending.
        txns.marker_written("a", 1, 0, &TopicPartition::new("t", 0));
        assert!(pending_txn_offsets(&txns, "g").is_empty());
        // An aborted transaction leaves nothing pending either.
        txns.end_txn("b", 2, 0, false, 4)?;
        assert!(pending_txn_offsets(&txns, "f").is_empty());
        Ok(())
    }
}

//! OffsetCommit and OffsetFetch: committed group offsets live in the metadata log.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::{now_ms, str_bytes};
use crate::broker::Broker;
use crate::metadata::state::{Command, OffsetCommit, Response};

pub async fn commit(
    broker: &Arc<Broker>,
    req: OffsetCommitRequest,
    _version: i16,
) -> OffsetCommitResponse {
    let group = req.group_id.as_str().to_owned();
    let refusal = broker.groups.check_offset_commit(
        &group,
        req.generation_id_or_member_epoch,
        req.member_id.as_str(),
        req.group_instance_id.as_ref().map(|s| s.as_str()),
    );
    let now = now_ms();
    let mut commits = Vec::new();
    for topic in &req.topics {
        for p in &topic.partitions {
            commits.push(OffsetCommit {
                topic: topic.name.as_str().to_owned(),
                partition: p.partition_index,
                offset: p.committed_offset,
                metadata: p.committed_metadata.as_ref().map(|m| m.as_str().to_owned()),
                commit_ms: now,
            });
        }
    }
    let codes: Vec<i16> = match refusal {
        Some(error) => vec![error.code(); commits.len()],
        None => match broker
            .metadata
            .propose(Command::CommitOffsets {
                group,
                offsets: commits.clone(),
            })
            .await
        {
            Ok(Response::Offsets(results)) => results
                .iter()
                .map(|r| match r {
                    Ok(()) => 0,
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
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(codes.next().unwrap_or(0))
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

pub fn fetch(broker: &Arc<Broker>, req: OffsetFetchRequest, _version: i16) -> OffsetFetchResponse {
    let group = req.group_id.as_str();
    let topics = broker.metadata.read(|s| {
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
                        let committed = s.committed_offset(group, name.as_str(), partition);
                        OffsetFetchResponsePartition::default()
                            .with_partition_index(partition)
                            .with_committed_offset(committed.map_or(-1, |c| c.offset))
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
    OffsetFetchResponse::default().with_topics(topics)
}

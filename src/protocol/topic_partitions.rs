//! DescribeTopicPartitions (KIP-966): the partitions of the topics named (or of every
//! topic), in name order, with leader, replicas and ISR as Metadata reports them, paged by
//! `response_partition_limit` with a cursor.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_topic_partitions_response::{
    Cursor, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse, TopicName,
};

use super::str_bytes;
use crate::broker::Broker;

/// Kafka's `max.request.partition.size.limit`: the most partitions in one response.
pub const MAX_PARTITIONS_PER_RESPONSE: i32 = 2000;

pub fn describe(
    broker: &Arc<Broker>,
    authz: &super::authz::Authz<'_>,
    req: DescribeTopicPartitionsRequest,
    _version: i16,
    zone: Option<&str>,
) -> DescribeTopicPartitionsResponse {
    let all = req.topics.is_empty();
    let mut names: Vec<String> = if all {
        broker.read(|s| s.topics().keys().cloned().collect())
    } else {
        req.topics
            .iter()
            .map(|t| t.name.as_str().to_owned())
            .collect()
    };
    names.sort();
    names.dedup();
    let (cursor_topic, cursor_partition) = match &req.cursor {
        Some(c) => (
            Some(c.topic_name.as_str().to_owned()),
            c.partition_index.max(0),
        ),
        None => (None, 0),
    };
    if let Some(first) = &cursor_topic {
        names.retain(|n| n >= first);
    }
    let limit = match req.response_partition_limit {
        n if n <= 0 => MAX_PARTITIONS_PER_RESPONSE,
        n => n.min(MAX_PARTITIONS_PER_RESPONSE),
    };
    let mut remaining = limit;
    let mut topics = Vec::new();
    let mut next_cursor = None;
    for name in names {
        // As Metadata: left out of "every topic", refused when named.
        if !authz.topic(crate::security::acl::Operation::Describe, &name) {
            if !all {
                topics.push(
                    DescribeTopicPartitionsResponseTopic::default()
                        .with_name(Some(TopicName(str_bytes(&name))))
                        .with_error_code(ResponseError::TopicAuthorizationFailed.code()),
                );
            }
            continue;
        }
        let start = if cursor_topic.as_deref() == Some(name.as_str()) {
            cursor_partition
        } else {
            0
        };
        let found = broker.read(|s| s.topic(&name).map(|t| (t.id, t.partitions.len() as i32)));
        let topic = DescribeTopicPartitionsResponseTopic::default()
            .with_name(Some(TopicName(str_bytes(&name))));
        let Some((id, count)) = found else {
            topics.push(topic.with_error_code(ResponseError::UnknownTopicOrPartition.code()));
            continue;
        };
        if remaining == 0 {
            next_cursor = Some(
                Cursor::default()
                    .with_topic_name(TopicName(str_bytes(&name)))
                    .with_partition_index(start),
            );
            break;
        }
        let end = count.min(start.saturating_add(remaining));
        let partitions: Vec<_> = (start..end)
            .map(|index| {
                let (leader, epoch) = broker.preferred_broker(&name, index, zone);
                let node = BrokerId(leader.unwrap_or(-1));
                let error = match leader {
                    Some(_) => 0,
                    None => kafka_protocol::error::ResponseError::LeaderNotAvailable.code(),
                };
                DescribeTopicPartitionsResponsePartition::default()
                    .with_partition_index(index)
                    .with_error_code(error)
                    .with_leader_id(node)
                    .with_leader_epoch(epoch)
                    .with_replica_nodes(vec![node])
                    .with_isr_nodes(vec![node])
                    .with_eligible_leader_replicas(Some(Vec::new()))
                    .with_last_known_elr(Some(Vec::new()))
            })
            .collect();
        remaining -= (end - start).max(0);
        topics.push(
            topic
                .with_topic_id(uuid::Uuid::from_bytes(id))
                .with_partitions(partitions),
        );
        if end < count {
            next_cursor = Some(
                Cursor::default()
                    .with_topic_name(TopicName(str_bytes(&name)))
                    .with_partition_index(end),
            );
            break;
        }
    }
    DescribeTopicPartitionsResponse::default()
        .with_topics(topics)
        .with_next_cursor(next_cursor)
}

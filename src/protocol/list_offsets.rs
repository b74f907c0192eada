//! ListOffsets: earliest (-2), latest (-1), max timestamp (-3) and by timestamp.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use super::authz::Authz;
use crate::broker::Broker;
use crate::fetch::FetchError;
use crate::security::acl::Operation;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

pub async fn handle(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    req: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    // Only a replica that holds everything committed before the request may answer (a
    // fenced broker's copy may be stale and stay so; a follower's may trail the leader's
    // commits): otherwise the client is sent to where the cluster is.
    let fenced = !broker.fresh_for_reads().await;
    // v2+: read_committed's latest offset is the last stable offset.
    let read_committed = version >= 2 && req.isolation_level == 1;
    let mut topics = Vec::with_capacity(req.topics.len());
    for topic in req.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        let describable = authz.topic(Operation::Describe, topic.name.as_str());
        for p in &topic.partitions {
            let name = topic.name.as_str();
            if !describable {
                partitions.push(
                    ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(ResponseError::TopicAuthorizationFailed.code()),
                );
                continue;
            }
            if fenced {
                partitions.push(
                    ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(ResponseError::NotLeaderOrFollower.code()),
                );
                continue;
            }
            let found = match p.timestamp {
                LATEST => broker.offsets(name, p.partition_index).map(|o| {
                    let latest = if read_committed {
                        o.last_stable
                    } else {
                        o.high_watermark
                    };
                    (-1, latest)
                }),
                EARLIEST => broker
                    .offsets(name, p.partition_index)
                    .map(|o| (-1, o.log_start)),
                MAX_TIMESTAMP => broker.read(|s| {
                    let part = s.partition(name, p.partition_index)?;
                    Some(part.max_timestamp().unwrap_or((-1, -1)))
                }),
                ts => match broker
                    .fetcher()
                    .offset_for_timestamp(name, p.partition_index, ts)
                    .await
                {
                    // As Kafka: read_committed finds no offset at or past the LSO.
                    Ok(Some((_, offset)))
                        if read_committed
                            && broker
                                .offsets(name, p.partition_index)
                                .is_some_and(|o| offset >= o.last_stable) =>
                    {
                        Some((-1, -1))
                    }
                    Ok(Some(found)) => Some(found),
                    // Kafka answers "no record that late" with offset -1.
                    Ok(None) => Some((-1, -1)),
                    Err(FetchError::UnknownTopicOrPartition) => None,
                    Err(_) => Some((-1, -1)),
                },
            };
            let response =
                ListOffsetsPartitionResponse::default().with_partition_index(p.partition_index);
            partitions.push(match found {
                Some((timestamp, offset)) => response
                    .with_timestamp(timestamp)
                    .with_offset(offset)
                    .with_leader_epoch(if version >= 4 { 0 } else { -1 }),
                None => response.with_error_code(ResponseError::UnknownTopicOrPartition.code()),
            });
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

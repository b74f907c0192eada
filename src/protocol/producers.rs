//! DescribeProducers: the idempotent producers the state machine tracks per partition,
//! with the first offset of each one's open transaction there (what Kafka's
//! `kafka-transactions.sh find-hanging` looks for).

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{DescribeProducersRequest, DescribeProducersResponse, ProducerId};

use super::str_bytes;
use crate::broker::Broker;

pub fn describe(
    broker: &Arc<Broker>,
    authz: &super::authz::Authz<'_>,
    req: DescribeProducersRequest,
    _version: i16,
) -> DescribeProducersResponse {
    // READ on each topic (Kafka's rule), checked outside the state read below.
    let readable: Vec<bool> = req
        .topics
        .iter()
        .map(|t| authz.topic(crate::security::acl::Operation::Read, t.name.as_str()))
        .collect();
    // A fenced broker's copy may be stale: the client asks elsewhere.
    let fenced = broker.fenced();
    let topics = broker.read(|s| {
        req.topics
            .iter()
            .zip(readable)
            .map(|(topic, readable)| {
                let partitions = topic
                    .partition_indexes
                    .iter()
                    .map(|&index| {
                        let out = PartitionResponse::default().with_partition_index(index);
                        if !readable {
                            return out
                                .with_error_code(ResponseError::TopicAuthorizationFailed.code());
                        }
                        if fenced {
                            return out.with_error_code(ResponseError::NotLeaderOrFollower.code());
                        }
                        let Some(p) = s.partition(topic.name.as_str(), index) else {
                            return out
                                .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                                .with_error_message(Some(str_bytes(
                                    "This server does not host this topic-partition.",
                                )));
                        };
                        let producers = p
                            .producers
                            .iter()
                            .map(|(&id, state)| {
                                ProducerState::default()
                                    .with_producer_id(ProducerId(id))
                                    .with_producer_epoch(i32::from(state.epoch))
                                    .with_last_sequence(state.batches.last().map_or(-1, |b| b.1))
                                    // Not tracked: append times stay outside the state.
                                    .with_last_timestamp(-1)
                                    .with_coordinator_epoch(-1)
                                    .with_current_txn_start_offset(
                                        p.txns.ongoing().get(&id).copied().unwrap_or(-1),
                                    )
                            })
                            .collect();
                        out.with_active_producers(producers)
                    })
                    .collect();
                TopicResponse::default()
                    .with_name(topic.name.clone())
                    .with_partitions(partitions)
            })
            .collect()
    });
    DescribeProducersResponse::default().with_topics(topics)
}

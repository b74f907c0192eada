//! DescribeCluster and OffsetForLeaderEpoch.
//!
//! Every partition has a single leader epoch, 0: the log is shared and never truncated,
//! so the end offset of epoch 0 is the high watermark.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse,
};

use super::str_bytes;
use crate::broker::Broker;

/// Kafka's endpoint types (KIP-919): 1 brokers, 2 controllers.
const ENDPOINT_BROKERS: i8 = 1;

pub fn describe(
    broker: &Arc<Broker>,
    req: DescribeClusterRequest,
    version: i16,
) -> DescribeClusterResponse {
    let node = BrokerId(broker.node_id());
    let resp = DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(&broker.cluster_id))
        .with_controller_id(node);
    if version >= 1 && req.endpoint_type != ENDPOINT_BROKERS {
        return resp
            .with_error_code(ResponseError::UnsupportedEndpointType.code())
            .with_error_message(Some(str_bytes("only broker endpoints are served")))
            .with_endpoint_type(req.endpoint_type);
    }
    resp.with_brokers(vec![DescribeClusterBroker::default()
        .with_broker_id(node)
        .with_host(str_bytes(&broker.config.advertise_host))
        .with_port(broker.config.advertise_port)])
}

pub fn offset_for_leader_epoch(
    broker: &Arc<Broker>,
    req: OffsetForLeaderEpochRequest,
    _version: i16,
) -> OffsetForLeaderEpochResponse {
    let topics = req
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let hw = broker.metadata.read(|s| {
                        s.partition(topic.topic.as_str(), p.partition)
                            .map(|part| part.next_offset)
                    });
                    let out = EpochEndOffset::default().with_partition(p.partition);
                    match hw {
                        None => out
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                            .with_leader_epoch(-1)
                            .with_end_offset(-1),
                        // A client that believes in a later epoch than ours is ahead of us.
                        Some(_) if p.current_leader_epoch > 0 => out
                            .with_error_code(ResponseError::UnknownLeaderEpoch.code())
                            .with_leader_epoch(-1)
                            .with_end_offset(-1),
                        Some(hw) if p.leader_epoch == 0 => {
                            out.with_leader_epoch(0).with_end_offset(hw)
                        }
                        // Epochs we never had: UNDEFINED_EPOCH / UNDEFINED_EPOCH_OFFSET.
                        Some(_) => out.with_leader_epoch(-1).with_end_offset(-1),
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic)
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}

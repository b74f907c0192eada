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

use super::authz::{Authz, CLUSTER_NAME};
use super::str_bytes;
use crate::broker::{Broker, LiveBroker};
use crate::security::acl::{Operation, ResourceType};

/// Kafka's endpoint types (KIP-919): 1 brokers, 2 controllers.
const ENDPOINT_BROKERS: i8 = 1;

pub fn describe(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    req: DescribeClusterRequest,
    version: i16,
) -> DescribeClusterResponse {
    if !authz.cluster(Operation::Describe) {
        return DescribeClusterResponse::default()
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
            .with_endpoint_type(req.endpoint_type);
    }
    // As in Metadata: the live brokers, and the metadata Raft leader as controller.
    let controller = broker.controller_id();
    let resp = DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(broker.cluster_id()))
        .with_controller_id(BrokerId(controller))
        .with_cluster_authorized_operations(authz.reported(
            req.include_cluster_authorized_operations,
            ResourceType::Cluster,
            CLUSTER_NAME,
        ));
    if version >= 1 && req.endpoint_type != ENDPOINT_BROKERS {
        return resp
            .with_error_code(ResponseError::UnsupportedEndpointType.code())
            .with_error_message(Some(str_bytes("only broker endpoints are served")))
            .with_endpoint_type(req.endpoint_type);
    }
    let brokers = broker
        .live_brokers(authz.listener())
        .into_iter()
        .map(
            |LiveBroker {
                 id,
                 host,
                 port,
                 rack,
             }| {
                DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(id))
                    .with_host(str_bytes(&host))
                    .with_port(port)
                    .with_rack(rack.map(|r| str_bytes(&r)))
            },
        )
        .collect();
    resp.with_brokers(brokers)
}

pub async fn offset_for_leader_epoch(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    req: OffsetForLeaderEpochRequest,
    _version: i16,
) -> OffsetForLeaderEpochResponse {
    // Strata's partitions never diverge or truncate: offsets are assigned once, by the
    // metadata Raft, whichever broker wrote them. So every epoch up to the cluster epoch
    // (served as the leader epoch in Metadata) ends, as far as a client can tell, at the
    // log end offset, and a client validating its position after a leader move never
    // finds a truncation.
    let epoch = broker.read(|s| s.cluster().epoch());
    // A fenced broker's copy may be stale, a follower's may trail the leader's commits:
    // only a replica that holds what was acknowledged before answers; else the client
    // asks elsewhere.
    let fenced = !broker.fresh_for_reads().await;
    let topics = req
        .topics
        .into_iter()
        .map(|topic| {
            let describable = authz.topic(Operation::Describe, topic.topic.as_str());
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    if !describable {
                        return EpochEndOffset::default()
                            .with_partition(p.partition)
                            .with_error_code(ResponseError::TopicAuthorizationFailed.code())
                            .with_leader_epoch(-1)
                            .with_end_offset(-1);
                    }
                    if fenced {
                        return EpochEndOffset::default()
                            .with_partition(p.partition)
                            .with_error_code(ResponseError::NotLeaderOrFollower.code())
                            .with_leader_epoch(-1)
                            .with_end_offset(-1);
                    }
                    let hw = broker
                        .offsets(topic.topic.as_str(), p.partition)
                        .map(|o| o.high_watermark);
                    let out = EpochEndOffset::default().with_partition(p.partition);
                    match hw {
                        None => out
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                            .with_leader_epoch(-1)
                            .with_end_offset(-1),
                        // A client that believes in a later epoch than ours is ahead of
                        // this broker's replica of the metadata: it retries.
                        Some(_) if p.current_leader_epoch > epoch => out
                            .with_error_code(ResponseError::UnknownLeaderEpoch.code())
                            .with_leader_epoch(-1)
                            .with_end_offset(-1),
                        Some(hw) if (0..=epoch).contains(&p.leader_epoch) => {
                            out.with_leader_epoch(p.leader_epoch).with_end_offset(hw)
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

//! ElectLeaders: every broker serves every partition and the preferred broker is chosen
//! by the metadata (a manual assignment's first replica, else hashing over live brokers),
//! so an election is a successful no-op for each partition that exists.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse, TopicName};

use super::str_bytes;
use crate::broker::Broker;

pub fn elect(
    broker: &Arc<Broker>,
    req: ElectLeadersRequest,
    _version: i16,
) -> ElectLeadersResponse {
    let results = broker.read(|s| {
        // None asks for every partition of every topic.
        let wanted: Vec<(String, Vec<i32>)> = match &req.topic_partitions {
            None => s
                .topics()
                .iter()
                .map(|(name, t)| (name.clone(), (0..t.partitions.len() as i32).collect()))
                .collect(),
            Some(topics) => topics
                .iter()
                .map(|t| (t.topic.as_str().to_owned(), t.partitions.clone()))
                .collect(),
        };
        wanted
            .into_iter()
            .map(|(name, partitions)| {
                let results =
                    partitions
                        .into_iter()
                        .map(|index| {
                            let result = PartitionResult::default()
                                .with_partition_id(index)
                                .with_error_message(None);
                            if s.partition(&name, index).is_some() {
                                result
                            } else {
                                let e = ResponseError::UnknownTopicOrPartition;
                                result.with_error_code(e.code()).with_error_message(Some(
                                    str_bytes("This server does not host this topic-partition."),
                                ))
                            }
                        })
                        .collect();
                ReplicaElectionResult::default()
                    .with_topic(TopicName(str_bytes(&name)))
                    .with_partition_result(results)
            })
            .collect()
    });
    ElectLeadersResponse::default().with_replica_election_results(results)
}

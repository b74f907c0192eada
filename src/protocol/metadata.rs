//! Metadata: brokers, topics and partition leaders. A single broker leads everything.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::str_bytes;
use crate::broker::{Broker, TopicLookup};

pub async fn handle(broker: &Arc<Broker>, req: MetadataRequest, version: i16) -> MetadataResponse {
    // Before v4 there is no flag and Kafka always auto-created.
    let allow_create = version < 4 || req.allow_auto_topic_creation;
    let names: Vec<String> = match &req.topics {
        // v0 used an empty list to mean "all topics".
        Some(topics) if !(version == 0 && topics.is_empty()) => topics
            .iter()
            .filter_map(|t| t.name.as_ref().map(|n| n.as_str().to_owned()))
            .collect(),
        _ => broker
            .metadata
            .read(|s| s.topics().keys().cloned().collect()),
    };
    let mut topics = Vec::with_capacity(names.len());
    for name in names {
        let lookup = broker.lookup_or_create_topic(&name, allow_create).await;
        topics.push(topic_metadata(broker, &name, lookup, version));
    }
    let node = BrokerId(broker.node_id());
    MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(node)
            .with_host(str_bytes(&broker.config.advertise_host))
            .with_port(broker.config.advertise_port)])
        .with_cluster_id((version >= 2).then(|| str_bytes(&broker.cluster_id)))
        .with_controller_id(if version >= 1 { node } else { BrokerId(-1) })
        .with_topics(topics)
}

fn topic_metadata(
    broker: &Broker,
    name: &str,
    lookup: TopicLookup,
    version: i16,
) -> MetadataResponseTopic {
    let topic = MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(name.to_owned()))));
    match lookup {
        TopicLookup::Found { id, partitions } => {
            let node = BrokerId(broker.node_id());
            let partitions = (0..partitions)
                .map(|index| {
                    MetadataResponsePartition::default()
                        .with_partition_index(index)
                        .with_leader_id(node)
                        .with_leader_epoch(if version >= 7 { 0 } else { -1 })
                        .with_replica_nodes(vec![node])
                        .with_isr_nodes(vec![node])
                })
                .collect();
            let topic = topic.with_partitions(partitions);
            if version >= 10 {
                topic.with_topic_id(uuid::Uuid::from_bytes(id))
            } else {
                topic
            }
        }
        TopicLookup::Invalid => topic.with_error_code(ResponseError::InvalidTopicException.code()),
        TopicLookup::Missing | TopicLookup::Unavailable => {
            topic.with_error_code(ResponseError::UnknownTopicOrPartition.code())
        }
    }
}

//! Metadata: brokers, topics and partition leaders. Any broker serves any partition; the
//! one named leader is where placement (or, for a `strata_az=` client, its zone) sends it.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::authz::Authz;
use super::str_bytes;
use crate::broker::{Broker, LiveBroker, TopicLookup};
use crate::security::acl::{Operation, ResourceType};

pub async fn handle(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    req: MetadataRequest,
    version: i16,
    zone: Option<&str>,
) -> MetadataResponse {
    // Before v4 there is no flag and Kafka always auto-created.
    let allow_create = version < 4 || req.allow_auto_topic_creation;
    // v10+ may name a topic by id alone (KIP-516; a KIP-848 consumer resolves its
    // assignment this way); an id no topic has is UNKNOWN_TOPIC_ID.
    let mut unknown_ids = Vec::new();
    let (names, all): (Vec<String>, bool) = match &req.topics {
        // v0 used an empty list to mean "all topics".
        Some(topics) if !(version == 0 && topics.is_empty()) => {
            let mut names = Vec::with_capacity(topics.len());
            for t in topics {
                match &t.name {
                    Some(n) => names.push(n.as_str().to_owned()),
                    None if !t.topic_id.is_nil() => {
                        let id = *t.topic_id.as_bytes();
                        match broker.read(|s| {
                            s.topics()
                                .iter()
                                .find(|(_, topic)| topic.id == id)
                                .map(|(name, _)| name.clone())
                        }) {
                            Some(name) => names.push(name),
                            None => unknown_ids.push(t.topic_id),
                        }
                    }
                    None => {}
                }
            }
            (names, false)
        }
        _ => (broker.read(|s| s.topics().keys().cloned().collect()), true),
    };
    // As Kafka: topics the principal may not describe are left out of "all topics" and
    // answered TOPIC_AUTHORIZATION_FAILED when named.
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let describable = authz.allowed_each(Operation::Describe, ResourceType::Topic, &refs);
    let may_create_any = authz.cluster(Operation::Create);
    // v8+ (KIP-430): the caller's operations on each topic, and v8-v10 on the cluster.
    let topic_ops_requested = version >= 8 && req.include_topic_authorized_operations;
    let cluster_ops = authz.reported(
        (8..=10).contains(&version) && req.include_cluster_authorized_operations,
        ResourceType::Cluster,
        super::authz::CLUSTER_NAME,
    );
    let mut topics = Vec::with_capacity(names.len());
    for (name, describable) in names.iter().zip(describable) {
        if !describable {
            if !all {
                topics.push(refused(name));
            }
            continue;
        }
        let create = allow_create && (may_create_any || authz.topic(Operation::Create, name));
        let lookup = broker.lookup_or_create_topic(name, create).await;
        if allow_create && !create && matches!(lookup, TopicLookup::Missing) {
            topics.push(refused(name));
            continue;
        }
        let ops = authz.reported(topic_ops_requested, ResourceType::Topic, name);
        topics.push(
            topic_metadata(broker, name, lookup, version, zone)
                .with_topic_authorized_operations(ops),
        );
    }
    topics.extend(unknown_ids.into_iter().map(|id| {
        MetadataResponseTopic::default()
            .with_topic_id(id)
            .with_error_code(ResponseError::UnknownTopicId.code())
    }));
    let brokers = broker
        .leader_brokers(authz.listener())
        .into_iter()
        .map(
            |LiveBroker {
                 id,
                 host,
                 port,
                 rack,
             }| {
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(id))
                    .with_host(str_bytes(&host))
                    .with_port(port)
                    .with_rack(if version >= 1 {
                        rack.map(|r| str_bytes(&r))
                    } else {
                        None
                    })
            },
        )
        .collect();
    let controller = broker.controller_id();
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id((version >= 2).then(|| str_bytes(broker.cluster_id())))
        .with_controller_id(if version >= 1 {
            BrokerId(controller)
        } else {
            BrokerId(-1)
        })
        .with_topics(topics)
        .with_cluster_authorized_operations(cluster_ops)
}

fn refused(name: &str) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(name.to_owned()))))
        .with_error_code(ResponseError::TopicAuthorizationFailed.code())
}

fn topic_metadata(
    broker: &Broker,
    name: &str,
    lookup: TopicLookup,
    version: i16,
    zone: Option<&str>,
) -> MetadataResponseTopic {
    let topic = MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(name.to_owned()))));
    match lookup {
        TopicLookup::Found { id, partitions } => {
            // Every broker serves every partition; the preferred one is named leader so
            // producers and tail consumers meet where the cache is warm.
            let partitions = (0..partitions)
                .map(|index| {
                    // A fenced broker names another (or none: LEADER_NOT_AVAILABLE).
                    let (leader, epoch) = broker.partition_leader(name, index, zone);
                    let node = BrokerId(leader.unwrap_or(-1));
                    let error = match leader {
                        Some(_) => 0,
                        None => ResponseError::LeaderNotAvailable.code(),
                    };
                    MetadataResponsePartition::default()
                        .with_partition_index(index)
                        .with_error_code(error)
                        .with_leader_id(node)
                        .with_leader_epoch(if version >= 7 { epoch } else { -1 })
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

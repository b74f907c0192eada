//! CreateTopics and DeleteTopics.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    BrokerId, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    TopicName,
};

use super::authz::Authz;
use super::str_bytes;
use crate::broker::{Broker, BrokerError};
use crate::metadata::state::StateError;
use crate::security::acl::Operation;

/// CREATE on the cluster, or else on each topic (Kafka's rule).
pub async fn create(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    req: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let may_create_any = authz.cluster(Operation::Create);
    let mut results = Vec::with_capacity(req.topics.len());
    for topic in req.topics {
        let name = topic.name.as_str().to_owned();
        if !may_create_any && !authz.topic(Operation::Create, &name) {
            let mut result = CreatableTopicResult::default()
                .with_name(topic.name.clone())
                .with_error_code(ResponseError::TopicAuthorizationFailed.code());
            if version >= 1 {
                result = result.with_error_message(Some(str_bytes(&format!(
                    "Authorization failed: may not create topic {name}"
                ))));
            }
            results.push(result);
            continue;
        }
        let assigned = (!topic.assignments.is_empty()).then(|| {
            // Kafka wants both -1 with an assignment; a count or factor that agrees with
            // the assignment is accepted too (kafka-python sends them).
            let count = topic.assignments.len();
            if topic.num_partitions != -1 && i64::from(topic.num_partitions) != count as i64 {
                return Err((
                    ResponseError::InvalidRequest,
                    format!(
                        "numPartitions {} disagrees with the replica assignment of {count} partitions",
                        topic.num_partitions
                    ),
                ));
            }
            let factor = i64::from(topic.replication_factor);
            if factor != -1
                && topic
                    .assignments
                    .iter()
                    .any(|a| a.broker_ids.len() as i64 != factor)
            {
                return Err((
                    ResponseError::InvalidReplicaAssignment,
                    format!("replicationFactor {factor} disagrees with the replica assignment"),
                ));
            }
            let mut by_index: Vec<_> = topic
                .assignments
                .iter()
                .map(|a| (a.partition_index, a.broker_ids.as_slice()))
                .collect();
            by_index.sort_by_key(|(index, _)| *index);
            if by_index
                .iter()
                .enumerate()
                .any(|(i, (index, _))| i64::from(*index) != i as i64)
            {
                return Err((
                    ResponseError::InvalidReplicaAssignment,
                    "Partitions should be a consecutive 0-based integer sequence".to_owned(),
                ));
            }
            assignment_hints(broker, by_index.into_iter().map(|(_, ids)| ids))
        });
        let (partitions, preferred) = match assigned {
            Some(Ok(hints)) => (hints.len() as i32, Ok(hints)),
            Some(Err(e)) => (0, Err(e)),
            None => match topic.num_partitions {
                -1 => (broker.default_partitions(), Ok(Vec::new())),
                n => (n, Ok(Vec::new())),
            },
        };
        let configs: BTreeMap<String, String> = topic
            .configs
            .iter()
            .filter_map(|c| {
                Some((
                    c.name.as_str().to_owned(),
                    c.value.as_ref()?.as_str().to_owned(),
                ))
            })
            .collect();
        let mut result = CreatableTopicResult::default().with_name(topic.name.clone());
        let bad_config = configs
            .iter()
            .find_map(|(k, v)| crate::topic_config::validate_topic_config(k, v).err());
        let outcome = if let Some(message) = bad_config {
            Err((ResponseError::InvalidConfig, message))
        } else if let Err(e) = preferred {
            Err(e)
        } else if req.validate_only {
            Ok(None)
        } else {
            let preferred = preferred.unwrap_or_default();
            match broker
                .create_topic(&name, partitions, configs, preferred)
                .await
            {
                Ok(id) => Ok(Some(id)),
                Err(e) => Err(create_error(&e)),
            }
        };
        match outcome {
            Ok(id) => {
                if version >= 5 {
                    result = result
                        .with_num_partitions(partitions)
                        .with_replication_factor(1)
                        .with_configs(Some(Vec::new()));
                }
                if version >= 7 {
                    if let Some(id) = id {
                        result = result.with_topic_id(uuid::Uuid::from_bytes(id));
                    }
                }
            }
            Err((code, message)) => {
                result = result.with_error_code(code.code());
                if version >= 1 {
                    result = result.with_error_message(Some(str_bytes(&message)));
                }
            }
        }
        results.push(result);
    }
    CreateTopicsResponse::default().with_topics(results)
}

/// A manual replica assignment, one broker list per partition in order, as
/// preferred-broker hints (each partition's first replica). Storage is shared, so any
/// registered broker can hold any partition; only unknown ids are refused.
pub(super) fn assignment_hints<'a>(
    broker: &Broker,
    assignments: impl Iterator<Item = &'a [BrokerId]>,
) -> Result<Vec<u64>, (ResponseError, String)> {
    let invalid = |m: String| (ResponseError::InvalidReplicaAssignment, m);
    let mut hints = Vec::new();
    for (partition, ids) in assignments.enumerate() {
        let Some(first) = ids.first() else {
            return Err(invalid(format!(
                "Replica assignment of partition {partition} is empty"
            )));
        };
        for (i, id) in ids.iter().enumerate() {
            if ids[..i].contains(id) {
                return Err(invalid(format!(
                    "Duplicate brokers not allowed in replica assignment: {ids:?}"
                )));
            }
            let known = u64::try_from(id.0)
                .ok()
                .is_some_and(|id| broker.read(|s| s.cluster().broker(id).is_some()));
            if !known {
                return Err(invalid(format!(
                    "Unknown broker id {} in the replica assignment of partition {partition}",
                    id.0
                )));
            }
        }
        hints.push(first.0 as u64);
    }
    Ok(hints)
}

fn create_error(e: &BrokerError) -> (ResponseError, String) {
    let code = match e {
        BrokerError::State(StateError::TopicAlreadyExists) => ResponseError::TopicAlreadyExists,
        BrokerError::State(StateError::InvalidPartitions) => ResponseError::InvalidPartitions,
        BrokerError::State(StateError::InvalidTopic) => ResponseError::InvalidTopicException,
        BrokerError::State(StateError::UnknownTopicOrPartition) => {
            ResponseError::UnknownTopicOrPartition
        }
        BrokerError::State(StateError::InvalidReplicaAssignment) => {
            ResponseError::InvalidReplicaAssignment
        }
        BrokerError::State(_) => ResponseError::InvalidRequest,
        BrokerError::Metadata(_) => ResponseError::RequestTimedOut,
    };
    (code, e.to_string())
}

pub async fn delete(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    req: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    // v6 names topics in `topics`; earlier versions in `topic_names`.
    let names: Vec<Option<TopicName>> = if version >= 6 {
        req.topics.into_iter().map(|t| t.name).collect()
    } else {
        req.topic_names.into_iter().map(Some).collect()
    };
    let mut responses = Vec::with_capacity(names.len());
    for name in names {
        let mut result = DeletableTopicResult::default().with_name(name.clone());
        let error = match name {
            None => Some(ResponseError::UnknownTopicId),
            Some(name) if !authz.topic(Operation::Delete, name.as_str()) => {
                Some(ResponseError::TopicAuthorizationFailed)
            }
            Some(name) => broker
                .delete_topic(name.as_str())
                .await
                .err()
                .map(|e| create_error(&e).0),
        };
        if let Some(code) = error {
            result = result.with_error_code(code.code());
        }
        responses.push(result);
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

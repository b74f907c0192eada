//! CreateTopics and DeleteTopics.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, TopicName,
};

use super::str_bytes;
use crate::broker::{Broker, BrokerError};
use crate::metadata::state::StateError;

pub async fn create(
    broker: &Arc<Broker>,
    req: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(req.topics.len());
    for topic in req.topics {
        let name = topic.name.as_str().to_owned();
        let partitions = match topic.num_partitions {
            -1 => broker.config.default_partitions,
            n => n,
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
            .find_map(|(k, v)| super::configs::validate_topic_config(k, v).err());
        let outcome = if let Some(message) = bad_config {
            Err((ResponseError::InvalidConfig, message))
        } else if !topic.assignments.is_empty() {
            Err((
                ResponseError::InvalidReplicaAssignment,
                "manual replica assignment is not supported: storage is shared".to_owned(),
            ))
        } else if req.validate_only {
            Ok(None)
        } else {
            match broker.create_topic(&name, partitions, configs).await {
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

fn create_error(e: &BrokerError) -> (ResponseError, String) {
    let code = match e {
        BrokerError::State(StateError::TopicAlreadyExists) => ResponseError::TopicAlreadyExists,
        BrokerError::State(StateError::InvalidPartitions) => ResponseError::InvalidPartitions,
        BrokerError::State(StateError::InvalidTopic) => ResponseError::InvalidTopicException,
        BrokerError::State(StateError::UnknownTopicOrPartition) => {
            ResponseError::UnknownTopicOrPartition
        }
        BrokerError::State(_) => ResponseError::InvalidRequest,
        BrokerError::Metadata(_) => ResponseError::RequestTimedOut,
    };
    (code, e.to_string())
}

pub async fn delete(
    broker: &Arc<Broker>,
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

//! CreatePartitions: grow a topic. Storage is shared, so a replica assignment only names
//! each new partition's preferred broker (its first replica).

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};

use super::str_bytes;
use crate::broker::Broker;
use crate::metadata::state::{Command, Response, StateError};
use crate::topic_config::MAX_PARTITIONS;

pub async fn create(
    broker: &Arc<Broker>,
    authz: &super::authz::Authz<'_>,
    req: CreatePartitionsRequest,
    _version: i16,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(req.topics.len());
    for topic in &req.topics {
        let name = topic.name.as_str();
        let duplicate = req.topics.iter().filter(|t| t.name == topic.name).count() > 1;
        let outcome = if duplicate {
            Err((
                ResponseError::InvalidRequest,
                "Duplicate topic in request".to_owned(),
            ))
        } else if !authz.topic(crate::security::acl::Operation::Alter, name) {
            Err((
                ResponseError::TopicAuthorizationFailed,
                format!("Authorization failed: may not alter topic {name}"),
            ))
        } else {
            let hints = match &topic.assignments {
                None => Ok(Vec::new()),
                Some(a) => super::topics::assignment_hints(
                    broker,
                    a.iter().map(|a| a.broker_ids.as_slice()),
                ),
            };
            match hints {
                Ok(hints) => grow(broker, name, topic.count, hints, req.validate_only).await,
                Err(e) => Err(e),
            }
        };
        let mut result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
        if let Err((code, message)) = outcome {
            result = result
                .with_error_code(code.code())
                .with_error_message(Some(str_bytes(&message)));
        }
        results.push(result);
    }
    CreatePartitionsResponse::default().with_results(results)
}

async fn grow(
    broker: &Arc<Broker>,
    name: &str,
    count: i32,
    preferred: Vec<u64>,
    validate_only: bool,
) -> Result<(), (ResponseError, String)> {
    let current = broker.read(|s| s.topic(name).map(|t| t.partitions.len() as i32));
    let unknown = || {
        (
            ResponseError::UnknownTopicOrPartition,
            format!("The topic '{name}' does not exist."),
        )
    };
    let current = current.ok_or_else(unknown)?;
    if count <= current {
        return Err((
            ResponseError::InvalidPartitions,
            format!("Topic currently has {current} partitions, which is higher than or equal to the requested {count}."),
        ));
    }
    if count > MAX_PARTITIONS {
        return Err((
            ResponseError::InvalidPartitions,
            format!("At most {MAX_PARTITIONS} partitions per topic."),
        ));
    }
    if !preferred.is_empty() && preferred.len() as i64 != i64::from(count) - i64::from(current) {
        return Err((
            ResponseError::InvalidReplicaAssignment,
            format!(
                "Increasing the number of partitions by {} but {} assignments provided.",
                count - current,
                preferred.len()
            ),
        ));
    }
    if validate_only {
        return Ok(());
    }
    let cmd = Command::CreatePartitions {
        name: name.to_owned(),
        count,
        preferred,
    };
    match broker.propose(cmd).await {
        Ok(Response::Topic(Ok(()))) => {
            tracing::info!(topic = name, partitions = count, "partitions added");
            Ok(())
        }
        Ok(Response::Topic(Err(StateError::UnknownTopicOrPartition))) => Err(unknown()),
        Ok(Response::Topic(Err(StateError::InvalidReplicaAssignment))) => Err((
            ResponseError::InvalidReplicaAssignment,
            "the replica assignment names an unknown broker".to_owned(),
        )),
        Ok(Response::Topic(Err(_))) => Err((
            ResponseError::InvalidPartitions,
            "the partition count changed concurrently".to_owned(),
        )),
        Ok(other) => Err((ResponseError::UnknownServerError, format!("{other:?}"))),
        Err(e) => Err((ResponseError::RequestTimedOut, e.to_string())),
    }
}

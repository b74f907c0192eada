//! DeleteRecords: advance a partition's log start offset. Fetches below it answer
//! OFFSET_OUT_OF_RANGE and ListOffsets(earliest) returns it.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use crate::broker::Broker;
use crate::metadata::state::{Command, Response, StateError};

pub async fn delete(
    broker: &Arc<Broker>,
    authz: &super::authz::Authz<'_>,
    req: DeleteRecordsRequest,
    _version: i16,
) -> DeleteRecordsResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for topic in req.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        let deletable = authz.topic(crate::security::acl::Operation::Delete, topic.name.as_str());
        for p in &topic.partitions {
            if !deletable {
                partitions.push(
                    DeleteRecordsPartitionResult::default()
                        .with_partition_index(p.partition_index)
                        .with_low_watermark(-1)
                        .with_error_code(ResponseError::TopicAuthorizationFailed.code()),
                );
                continue;
            }
            let cmd = Command::DeleteRecords {
                topic: topic.name.as_str().to_owned(),
                partition: p.partition_index,
                offset: p.offset,
            };
            let outcome = match broker.propose(cmd).await {
                Ok(Response::LogStart(Ok(low))) => Ok(low),
                Ok(Response::LogStart(Err(StateError::OffsetOutOfRange))) => {
                    Err(ResponseError::OffsetOutOfRange)
                }
                Ok(Response::LogStart(Err(StateError::UnknownTopicOrPartition))) => {
                    Err(ResponseError::UnknownTopicOrPartition)
                }
                Ok(_) => Err(ResponseError::UnknownServerError),
                Err(_) => Err(ResponseError::RequestTimedOut),
            };
            let result =
                DeleteRecordsPartitionResult::default().with_partition_index(p.partition_index);
            partitions.push(match outcome {
                Ok(low) => result.with_low_watermark(low),
                Err(code) => result.with_low_watermark(-1).with_error_code(code.code()),
            });
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}

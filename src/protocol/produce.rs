//! Produce: validate every partition's batches, hand them to the write buffer, and answer
//! once they are in the object store and committed (acks=1 is served like acks=all).
//!
//! Two phases. [`enqueue`] runs in the connection's read loop, in request order, so
//! pipelined requests to one partition enter the write buffer (and so get offsets) in
//! the order the client sent them. [`PendingProduce::finish`] then waits for the commit
//! concurrently with whatever the client sends next.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use tokio::time::Instant;
use tracing::debug;

use super::str_bytes;
use crate::broker::{Broker, TopicLookup};
use crate::metadata::state::StateError;
use crate::produce::batch::{self, BatchError};
use crate::produce::buffer::Committed;
use crate::produce::ProduceError;

type PartitionError = (ResponseError, String);
/// Each partition of a topic: enqueued (waiting for its commit) or already refused.
type QueuedPartitions = Vec<(i32, Result<Committed, PartitionError>)>;

/// A produce request whose batches are in the write buffer (or were refused).
pub struct PendingProduce {
    acks: i16,
    version: i16,
    deadline: Instant,
    topics: Vec<(TopicName, QueuedPartitions)>,
}

pub async fn enqueue(broker: &Arc<Broker>, req: ProduceRequest, version: i16) -> PendingProduce {
    // Kafka's request timeout: past it the client hears REQUEST_TIMED_OUT (retriable).
    let timeout = Duration::from_millis(
        u64::try_from(req.timeout_ms)
            .unwrap_or(0)
            .clamp(100, 300_000),
    );
    let deadline = Instant::now() + timeout;
    let transactional = req.transactional_id.is_some();
    let mut topics = Vec::with_capacity(req.topic_data.len());
    for topic in req.topic_data {
        let name = topic.name.as_str().to_owned();
        let lookup = if transactional {
            TopicLookup::Missing
        } else {
            broker
                .lookup_or_create_topic(&name, broker.config.auto_create_topics)
                .await
        };
        let mut partitions = Vec::with_capacity(topic.partition_data.len());
        for p in topic.partition_data {
            let result = if transactional {
                Err((
                    ResponseError::TransactionalIdAuthorizationFailed,
                    "transactions are not supported".to_owned(),
                ))
            } else {
                tokio::time::timeout_at(
                    deadline,
                    enqueue_partition(broker, &name, &lookup, p.index, p.records),
                )
                .await
                .unwrap_or_else(|_| Err(timed_out()))
            };
            partitions.push((p.index, result));
        }
        topics.push((topic.name, partitions));
    }
    PendingProduce {
        acks: req.acks,
        version,
        deadline,
        topics,
    }
}

fn timed_out() -> PartitionError {
    (
        ResponseError::RequestTimedOut,
        "timed out waiting for the object store".into(),
    )
}

impl PendingProduce {
    /// Waits for every partition's commit; None for acks=0, which gets no answer.
    pub async fn finish(self) -> Option<ProduceResponse> {
        let (acks, version, deadline) = (self.acks, self.version, self.deadline);
        let topics = join_all(
            self.topics
                .into_iter()
                .map(|(name, partitions)| async move {
                    let partitions =
                        join_all(partitions.into_iter().map(|(index, queued)| async move {
                            let result = match queued {
                                Ok(committed) => tokio::time::timeout_at(deadline, committed)
                                    .await
                                    .unwrap_or(Err(ProduceError::TimedOut))
                                    .map_err(produce_error),
                                Err(e) => Err(e),
                            };
                            partition_response(index, result, version)
                        }))
                        .await;
                    TopicProduceResponse::default()
                        .with_name(name)
                        .with_partition_responses(partitions)
                }),
        )
        .await;
        (acks != 0).then(|| ProduceResponse::default().with_responses(topics))
    }
}

async fn enqueue_partition(
    broker: &Broker,
    topic: &str,
    lookup: &TopicLookup,
    partition: i32,
    records: Option<bytes::Bytes>,
) -> Result<Committed, PartitionError> {
    match lookup {
        TopicLookup::Found { partitions, .. } if (0..*partitions).contains(&partition) => {}
        TopicLookup::Invalid => {
            return Err((
                ResponseError::InvalidTopicException,
                "invalid topic name".into(),
            ));
        }
        _ => {
            return Err((
                ResponseError::UnknownTopicOrPartition,
                format!("{topic}-{partition} does not exist"),
            ))
        }
    }
    let records = records.unwrap_or_default();
    let batches = batch::validate(&records).map_err(|e| {
        debug!(topic, partition, error = %e, "rejected produce");
        let code = match e {
            BatchError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat,
            BatchError::Invalid | BatchError::Empty => ResponseError::InvalidRecord,
            BatchError::CrcMismatch | BatchError::Truncated => ResponseError::CorruptMessage,
            BatchError::Transactional => ResponseError::TransactionalIdAuthorizationFailed,
        };
        (code, e.to_string())
    })?;
    if batches.bytes > broker.max_message_bytes(topic) {
        return Err((
            ResponseError::MessageTooLarge,
            "batch exceeds max.message.bytes".into(),
        ));
    }
    broker
        .buffer
        .enqueue(topic, partition, batches)
        .await
        .map_err(produce_error)
}

fn produce_error(e: ProduceError) -> PartitionError {
    let code = match e {
        ProduceError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition,
        ProduceError::Rejected(StateError::OutOfOrderSequence) => {
            ResponseError::OutOfOrderSequenceNumber
        }
        ProduceError::Rejected(StateError::InvalidProducerEpoch) => {
            ResponseError::InvalidProducerEpoch
        }
        ProduceError::Rejected(StateError::UnknownProducerId) => ResponseError::UnknownProducerId,
        ProduceError::Rejected(_) => ResponseError::UnknownServerError,
        ProduceError::Storage(_) => ResponseError::KafkaStorageError,
        ProduceError::Commit(_) | ProduceError::ShuttingDown | ProduceError::TimedOut => {
            ResponseError::RequestTimedOut
        }
    };
    (code, e.to_string())
}

fn partition_response(
    index: i32,
    result: Result<i64, PartitionError>,
    version: i16,
) -> PartitionProduceResponse {
    let response = PartitionProduceResponse::default().with_index(index);
    match result {
        Ok(base_offset) => response
            .with_base_offset(base_offset)
            .with_log_start_offset(if version >= 5 { 0 } else { -1 }),
        Err((code, message)) => {
            let response = response.with_error_code(code.code()).with_base_offset(-1);
            if version >= 8 {
                response.with_error_message(Some(str_bytes(&message)))
            } else {
                response
            }
        }
    }
}

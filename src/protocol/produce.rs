//! Produce: validate every partition's batches, hand them to the write buffer, and answer
//! once they are in the object store and committed (acks=1 is served like acks=all).

use std::sync::Arc;

use futures::future::join_all;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use tracing::debug;

use super::str_bytes;
use crate::broker::{Broker, TopicLookup};
use crate::metadata::state::StateError;
use crate::produce::batch::{self, BatchError};
use crate::produce::ProduceError;

pub async fn handle(
    broker: &Arc<Broker>,
    req: ProduceRequest,
    version: i16,
) -> Option<ProduceResponse> {
    let acks = req.acks;
    // Kafka's request.timeout: past it the client hears REQUEST_TIMED_OUT (retriable).
    let timeout = std::time::Duration::from_millis(
        u64::try_from(req.timeout_ms)
            .unwrap_or(0)
            .clamp(100, 300_000),
    );
    if req.transactional_id.is_some() {
        return Some(reject_all(
            req,
            ResponseError::TransactionalIdAuthorizationFailed,
        ));
    }
    let mut topic_futures = Vec::with_capacity(req.topic_data.len());
    for topic in req.topic_data {
        let name = topic.name.as_str().to_owned();
        let lookup = broker
            .lookup_or_create_topic(&name, broker.config.auto_create_topics)
            .await;
        let broker = broker.clone();
        topic_futures.push(async move {
            let partitions = join_all(topic.partition_data.into_iter().map(|p| {
                let broker = broker.clone();
                let name = name.clone();
                let lookup = lookup.clone();
                async move {
                    let produce = produce_partition(&broker, &name, &lookup, p.index, p.records);
                    let result =
                        tokio::time::timeout(timeout, produce)
                            .await
                            .unwrap_or_else(|_| {
                                Err((
                                    ResponseError::RequestTimedOut,
                                    "timed out waiting for the object store".into(),
                                ))
                            });
                    partition_response(p.index, result, version)
                }
            }))
            .await;
            TopicProduceResponse::default()
                .with_name(topic.name)
                .with_partition_responses(partitions)
        });
    }
    let responses = join_all(topic_futures).await;
    if acks == 0 {
        return None;
    }
    Some(ProduceResponse::default().with_responses(responses))
}

async fn produce_partition(
    broker: &Broker,
    topic: &str,
    lookup: &TopicLookup,
    partition: i32,
    records: Option<bytes::Bytes>,
) -> Result<i64, (ResponseError, String)> {
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
            BatchError::Transactional => ResponseError::TransactionalIdAuthorizationFailed,
            BatchError::CrcMismatch | BatchError::Truncated => ResponseError::CorruptMessage,
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
        .append(topic, partition, batches)
        .await
        .map_err(|e| {
            let code = match e {
                ProduceError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition,
                ProduceError::Rejected(StateError::OutOfOrderSequence) => {
                    ResponseError::OutOfOrderSequenceNumber
                }
                ProduceError::Rejected(StateError::InvalidProducerEpoch) => {
                    ResponseError::InvalidProducerEpoch
                }
                ProduceError::Rejected(StateError::UnknownProducerId) => {
                    ResponseError::UnknownProducerId
                }
                ProduceError::Rejected(_) => ResponseError::UnknownServerError,
                ProduceError::Storage(_) => ResponseError::KafkaStorageError,
                ProduceError::Commit(_) | ProduceError::ShuttingDown => {
                    ResponseError::RequestTimedOut
                }
            };
            (code, e.to_string())
        })
}

fn partition_response(
    index: i32,
    result: Result<i64, (ResponseError, String)>,
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

fn reject_all(req: ProduceRequest, code: ResponseError) -> ProduceResponse {
    let responses = req
        .topic_data
        .into_iter()
        .map(|t| {
            TopicProduceResponse::default()
                .with_partition_responses(
                    t.partition_data
                        .iter()
                        .map(|p| {
                            PartitionProduceResponse::default()
                                .with_index(p.index)
                                .with_error_code(code.code())
                                .with_base_offset(-1)
                        })
                        .collect(),
                )
                .with_name(t.name)
        })
        .collect();
    ProduceResponse::default().with_responses(responses)
}

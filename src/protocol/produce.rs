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
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use tokio::time::Instant;
use tracing::debug;

use super::authz::{Authz, RequestContext};
use super::str_bytes;
use crate::broker::{Broker, TopicLookup};
use crate::metadata::state::transactions::TxnError;
use crate::metadata::state::{ChunkTxn, StateError};
use crate::produce::buffer::Committed;
use crate::produce::validate::{self, BatchError, ValidatedBatches};
use crate::produce::ProduceError;
use crate::record::batch::{be_i64, BASE_TIMESTAMP};
use crate::record::records;
use crate::security::acl::Operation;
use crate::telemetry;
use crate::topic_config::TopicSettings;

/// Why a partition's batches were refused: Kafka's error code, a message for the client
/// (v8+), and KIP-467's record errors (each record's index in its batch, and why).
#[derive(Debug)]
struct PartitionError {
    code: ResponseError,
    message: String,
    record_errors: Vec<(i32, String)>,
}

fn fail(code: ResponseError, message: String) -> PartitionError {
    PartitionError {
        code,
        message,
        record_errors: Vec::new(),
    }
}
/// Each partition of a topic: enqueued (waiting for its commit) or already refused.
/// A queued partition carries its LogAppendTime, when the topic uses it, and its size.
type QueuedPartitions = Vec<(i32, Result<Queued, PartitionError>)>;

/// A partition's batches in the write buffer.
struct Queued {
    committed: Committed,
    append_time: Option<i64>,
    bytes: usize,
    records: u32,
}

/// A produce request whose batches are in the write buffer (or were refused).
pub struct PendingProduce {
    broker: Arc<Broker>,
    acks: i16,
    version: i16,
    deadline: Instant,
    topics: Vec<(TopicName, QueuedPartitions)>,
}

pub async fn enqueue(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    req: ProduceRequest,
    version: i16,
) -> PendingProduce {
    let authz = Authz::new(broker, ctx);
    // Kafka's request timeout: past it the client hears REQUEST_TIMED_OUT (retriable).
    let timeout = Duration::from_millis(
        u64::try_from(req.timeout_ms)
            .unwrap_or(0)
            .clamp(100, 300_000),
    );
    let deadline = Instant::now() + timeout;
    let transactional_id = req.transactional_id.as_ref().map(|t| t.as_str().to_owned());
    // Kafka's rule: a transactional produce needs WRITE on its transactional id.
    let txn_refused = transactional_id
        .as_deref()
        .is_some_and(|id| !authz.transactional_id(Operation::Write, id));
    // A fenced broker cannot commit, and the others may already lead its partitions:
    // NOT_LEADER_OR_FOLLOWER makes clients refresh metadata and go there.
    let fenced = broker.fenced();
    let mut topics = Vec::with_capacity(req.topic_data.len());
    for topic in req.topic_data {
        let name = topic.name.as_str().to_owned();
        let writable = authz.topic(Operation::Write, &name);
        let lookup = if txn_refused || fenced || !writable {
            TopicLookup::Missing
        } else {
            let create = broker.auto_create_topics()
                && (authz.cluster(Operation::Create) || authz.topic(Operation::Create, &name));
            broker.lookup_or_create_topic(&name, create).await
        };
        let mut partitions = Vec::with_capacity(topic.partition_data.len());
        for p in topic.partition_data {
            let result = if !writable {
                Err(fail(
                    ResponseError::TopicAuthorizationFailed,
                    format!("{} may not write to topic {name}", ctx.principal),
                ))
            } else if txn_refused {
                Err(fail(
                    ResponseError::TransactionalIdAuthorizationFailed,
                    format!("{} may not write transactionally", ctx.principal),
                ))
            } else if fenced {
                Err(not_leader())
            } else {
                let target = Target {
                    topic: &name,
                    lookup: &lookup,
                    partition: p.index,
                    transactional_id: transactional_id.as_deref(),
                };
                tokio::time::timeout_at(deadline, enqueue_partition(broker, target, p.records))
                    .await
                    .unwrap_or_else(|_| Err(timed_out()))
            };
            partitions.push((p.index, result));
        }
        topics.push((topic.name, partitions));
    }
    PendingProduce {
        broker: broker.clone(),
        acks: req.acks,
        version,
        deadline,
        topics,
    }
}

fn not_leader() -> PartitionError {
    fail(
        ResponseError::NotLeaderOrFollower,
        "this broker is fenced (cut off from the metadata cluster)".into(),
    )
}

/// Resolves once the broker has fenced itself (checked every 250 ms). Not on a drain:
/// a draining broker still commits what it took, and answers it.
async fn until_fenced(broker: &Broker) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if broker.cut_off() {
            return;
        }
    }
}

fn timed_out() -> PartitionError {
    fail(
        ResponseError::RequestTimedOut,
        "timed out waiting for the object store".into(),
    )
}

impl PendingProduce {
    /// Waits for every partition's commit; None for acks=0, which gets no answer.
    pub async fn finish(self) -> Option<ProduceResponse> {
        let (acks, version, deadline) = (self.acks, self.version, self.deadline);
        let broker = &self.broker;
        let topics = join_all(
            self.topics
                .into_iter()
                .map(|(name, partitions)| async move {
                    let topic = name.as_str().to_owned();
                    let topic = &topic;
                    let partitions =
                        join_all(partitions.into_iter().map(|(index, queued)| async move {
                            let (result, append_time) = match queued {
                                // Fenced while waiting: the commit may never come; the
                                // client retries where the cluster is (an idempotent
                                // producer's retry is deduplicated if it did land).
                                Ok(queued) => {
                                    let result = tokio::select! {
                                        r = tokio::time::timeout_at(deadline, queued.committed) => r
                                            .unwrap_or(Err(ProduceError::TimedOut))
                                            .map_err(produce_error),
                                        () = until_fenced(broker) => Err(not_leader()),
                                    };
                                    if result.is_ok() {
                                        let topic = topic.clone();
                                        telemetry::load::count_produced(queued.bytes as u64);
                                        metrics::counter!(telemetry::PRODUCE_BYTES, "topic" => topic.clone())
                                            .increment(queued.bytes as u64);
                                        metrics::counter!(telemetry::PRODUCE_RECORDS, "topic" => topic)
                                            .increment(u64::from(queued.records));
                                    }
                                    (result, queued.append_time)
                                }
                                Err(e) => (Err(e), None),
                            };
                            // Kafka reports the partition's log start offset after the append.
                            let log_start = broker.offsets(topic, index)
                                .map_or(0, |o| o.log_start);
                            partition_response(index, result, append_time, log_start, version)
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

/// Where a partition's batches go, and for whom.
struct Target<'a> {
    topic: &'a str,
    lookup: &'a TopicLookup,
    partition: i32,
    transactional_id: Option<&'a str>,
}

async fn enqueue_partition(
    broker: &Broker,
    target: Target<'_>,
    records: Option<bytes::Bytes>,
) -> Result<Queued, PartitionError> {
    let Target {
        topic,
        lookup,
        partition,
        transactional_id,
    } = target;
    match lookup {
        TopicLookup::Found { partitions, .. } if (0..*partitions).contains(&partition) => {}
        TopicLookup::Invalid => {
            return Err(fail(
                ResponseError::InvalidTopicException,
                "invalid topic name".into(),
            ));
        }
        _ => {
            return Err(fail(
                ResponseError::UnknownTopicOrPartition,
                format!("{topic}-{partition} does not exist"),
            ))
        }
    }
    let records = records.unwrap_or_default();
    let mut batches = validate::validate(&records).map_err(|e| {
        debug!(topic, partition, error = %e, "rejected produce");
        let code = match e {
            BatchError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat,
            BatchError::Invalid | BatchError::Empty => ResponseError::InvalidRecord,
            BatchError::CrcMismatch | BatchError::Truncated => ResponseError::CorruptMessage,
            BatchError::Control | BatchError::MixedTransactional => ResponseError::InvalidRecord,
        };
        fail(code, e.to_string())
    })?;
    check_transactional(broker, &batches, transactional_id)?;
    let settings = broker.topic_settings(topic).ok_or_else(|| {
        fail(
            ResponseError::UnknownTopicOrPartition,
            format!("{topic}-{partition} does not exist"),
        )
    })?;
    if batches.bytes > settings.max_message_bytes {
        return Err(fail(
            ResponseError::MessageTooLarge,
            "batch exceeds max.message.bytes".into(),
        ));
    }
    check_records(&batches, &settings, topic, partition)?;
    // The broker's clock (this proposer's), never the state machine's.
    // Batches record counts are checked against their offset spans in `validate`.
    let (bytes, records) = (batches.bytes, batches.offset_count);
    let append_time = settings.log_append_time.then(crate::clock::now_ms);
    if let Some(now) = append_time {
        set_log_append_time(&mut batches, now);
    }
    broker
        .write_buffer()
        .enqueue(topic, partition, batches)
        .await
        .map(|committed| Queued {
            committed,
            append_time,
            bytes,
            records,
        })
        .map_err(produce_error)
}

/// Kafka's rules for transactional produce: transactional batches come with the
/// transactional id whose producer id they carry, and only with it. Whether the
/// transaction holds the partition is checked when the chunk commits.
fn check_transactional(
    broker: &Broker,
    batches: &ValidatedBatches,
    transactional_id: Option<&str>,
) -> Result<(), PartitionError> {
    let transactional = batches.txn == ChunkTxn::Data;
    let Some(id) = transactional_id else {
        if transactional {
            return Err(fail(
                ResponseError::InvalidRecord,
                "transactional batches need a transactional id".into(),
            ));
        }
        return Ok(());
    };
    if !transactional {
        return Err(fail(
            ResponseError::InvalidRecord,
            "a produce with a transactional id must hold transactional batches".into(),
        ));
    }
    let producer_id = batches.producer.map_or(-1, |p| p.producer_id);
    let holder = broker.read(|s| s.transactions().get(id).map(|m| m.producer_id));
    if holder != Some(producer_id) {
        return Err(fail(
            ResponseError::InvalidProducerIdMapping,
            format!("producer id {producer_id} is not the one transactional id {id} holds"),
        ));
    }
    Ok(())
}

/// Kafka's per-record rules (LogValidator): on a compacted topic every record has a key;
/// a CreateTime lies within `message.timestamp.{before,after}.max.ms` of the broker's
/// clock. Every offending record is named (KIP-467), so the client can tell the records
/// that failed from the ones refused only for sharing their batch. The batches are opened
/// for this (within `records::MAX_INFLATED_BYTES`) only when a rule applies.
fn check_records(
    batches: &ValidatedBatches,
    settings: &TopicSettings,
    topic: &str,
    partition: i32,
) -> Result<(), PartitionError> {
    let bounded_time = !settings.log_append_time
        && (settings.timestamp_before_max_ms < i64::MAX
            || settings.timestamp_after_max_ms < i64::MAX);
    if !settings.compact && !bounded_time {
        return Ok(());
    }
    let now = crate::clock::now_ms();
    let earliest = now.saturating_sub(settings.timestamp_before_max_ms);
    let latest = now.saturating_add(settings.timestamp_after_max_ms);
    let mut errors = Vec::new();
    let mut bad_timestamp = false;
    let mut index = 0i32;
    for b in &batches.batches {
        let base_timestamp = be_i64(b, BASE_TIMESTAMP);
        records::for_each_record(b, |r| {
            if settings.compact && r.key.is_none() {
                errors.push((
                    index,
                    format!(
                        "Compacted topic cannot accept message without key in topic partition {topic}-{partition}."
                    ),
                ));
            } else if bounded_time {
                let timestamp = base_timestamp.wrapping_add(r.timestamp_delta);
                if !(earliest..=latest).contains(&timestamp) {
                    bad_timestamp = true;
                    errors.push((
                        index,
                        format!(
                            "Timestamp {timestamp} of message with offset {} is out of range. \
                             The timestamp should be within [{earliest}, {latest}]",
                            r.offset_delta
                        ),
                    ));
                }
            }
            index = index.saturating_add(1);
        })
        .map_err(|e| {
            debug!(topic, partition, error = %e, "rejected produce: unreadable records");
            fail(ResponseError::CorruptMessage, e.to_string())
        })?;
    }
    if errors.is_empty() {
        return Ok(());
    }
    // Kafka's messages (LogValidator.processRecordErrors).
    let (code, message) = if bad_timestamp {
        (
            ResponseError::InvalidTimestamp,
            "One or more records have been rejected due to invalid timestamp".to_owned(),
        )
    } else {
        let shown: Vec<String> = errors
            .iter()
            .take(3)
            .map(|(i, m)| format!("RecordError(batchIndex={i}, message='{m}')"))
            .collect();
        (
            ResponseError::InvalidRecord,
            format!(
                "One or more records have been rejected due to {} record errors in total, and only \
                 showing the first three errors at most: [{}]",
                errors.len(),
                shown.join(", ")
            ),
        )
    };
    debug!(topic, partition, records = errors.len(), %message, "rejected produce");
    Err(PartitionError {
        code,
        message,
        record_errors: errors,
    })
}

/// Record batch header positions used to stamp LogAppendTime.
const CRC: usize = 17;
const ATTRIBUTES: usize = 21;
const MAX_TIMESTAMP: usize = 35;
const TIMESTAMP_TYPE_BIT: u8 = 0x08;

/// Kafka's LogAppendTime: each batch's timestamp-type attribute is set and its max
/// timestamp becomes the append time (what consumers then see on every record); the
/// CRC-32C over attributes..end is recomputed. Records stay untouched (compressed or not).
fn set_log_append_time(batches: &mut ValidatedBatches, now: i64) {
    for b in &mut batches.batches {
        let mut out = bytes::BytesMut::from(&b[..]);
        // The low byte of the big-endian i16 attributes.
        out[ATTRIBUTES + 1] |= TIMESTAMP_TYPE_BIT;
        out[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&now.to_be_bytes());
        let crc = crc32c::crc32c(&out[ATTRIBUTES..]);
        out[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
        *b = out.freeze();
    }
    batches.max_timestamp = now;
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
        // Kafka answers a fenced transactional producer's writes INVALID_PRODUCER_EPOCH.
        ProduceError::Rejected(StateError::Txn(TxnError::ProducerFenced)) => {
            ResponseError::InvalidProducerEpoch
        }
        ProduceError::Rejected(StateError::Txn(e)) => {
            ResponseError::try_from_code(e.code()).unwrap_or(ResponseError::UnknownServerError)
        }
        ProduceError::Rejected(_) => ResponseError::UnknownServerError,
        ProduceError::Storage(_) => ResponseError::KafkaStorageError,
        ProduceError::Commit(_) | ProduceError::ShuttingDown | ProduceError::TimedOut => {
            ResponseError::RequestTimedOut
        }
    };
    fail(code, e.to_string())
}

fn partition_response(
    index: i32,
    result: Result<i64, PartitionError>,
    append_time: Option<i64>,
    log_start: i64,
    version: i16,
) -> PartitionProduceResponse {
    let response = PartitionProduceResponse::default().with_index(index);
    match result {
        Ok(base_offset) => response
            .with_base_offset(base_offset)
            .with_log_append_time_ms(append_time.filter(|_| version >= 2).unwrap_or(-1))
            .with_log_start_offset(if version >= 5 { log_start } else { -1 }),
        Err(e) => {
            let response = response.with_error_code(e.code.code()).with_base_offset(-1);
            if version >= 8 {
                let record_errors = e
                    .record_errors
                    .iter()
                    .map(|(index, message)| {
                        BatchIndexAndErrorMessage::default()
                            .with_batch_index(*index)
                            .with_batch_index_error_message(Some(str_bytes(message)))
                    })
                    .collect();
                response
                    .with_error_message(Some(str_bytes(&e.message)))
                    .with_record_errors(record_errors)
            } else {
                response
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::make_batch;

    #[test]
    fn log_append_time_sets_the_type_bit_and_max_timestamp_with_a_valid_crc() {
        let raw = make_batch(3, 1_000);
        let mut batches = validate::validate(&raw).expect("valid batch");
        set_log_append_time(&mut batches, 123_456);
        assert_eq!(batches.max_timestamp, 123_456);
        let stamped = batches.batches[0].clone();
        // Still a valid batch (CRC recomputed), now LogAppendTime.
        let again = validate::validate(&stamped).expect("still valid after stamping");
        assert_eq!(again.max_timestamp, 123_456);
        assert_eq!(
            stamped[ATTRIBUTES + 1] & TIMESTAMP_TYPE_BIT,
            TIMESTAMP_TYPE_BIT
        );
        let timestamps = crate::record::batch::record_timestamps(&stamped).expect("uncompressed");
        assert!(timestamps.iter().all(|(_, ts)| *ts == 123_456));
    }
}

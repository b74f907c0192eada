//! Fetch: sessionless reads, long-polling on the applied metadata log when there is less
//! than `min_bytes` to return.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::FetchPartition;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, ProducerId};
use tokio::time::Instant;
use tracing::warn;

use super::authz::Authz;
use crate::broker::Broker;
use crate::fetch::{FetchError, Isolation};
use crate::security::acl::Operation;

/// Clients ask for up to this long; more would only tie up the connection.
const MAX_WAIT_CAP: Duration = Duration::from_secs(30);

pub async fn handle(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    req: FetchRequest,
    version: i16,
) -> FetchResponse {
    // READ on each topic, checked once for the whole long poll.
    let readable: Vec<bool> = req
        .topics
        .iter()
        .map(|t| authz.topic(Operation::Read, t.topic.as_str()))
        .collect();
    let wait = Duration::from_millis(u64::try_from(req.max_wait_ms).unwrap_or(0)).min(MAX_WAIT_CAP);
    let deadline = Instant::now() + wait;
    let min_bytes = usize::try_from(req.min_bytes).unwrap_or(0);
    // The replica must hold everything committed before the request, so that the high
    // watermark it reports is at least what was acknowledged (a read index); a broker
    // that cannot tell answers as a fenced one does.
    let fresh = broker.fresh_for_reads_within(wait).await;
    let mut applied = broker.applied();
    loop {
        applied.borrow_and_update();
        let last = Instant::now() >= deadline;
        let (responses, bytes, errors) =
            read_once(broker, &req, &readable, version, last, fresh).await;
        if bytes >= min_bytes.max(1) || errors || last {
            return answer(responses);
        }
        tokio::select! {
            changed = applied.changed() => if changed.is_err() {
                return answer(responses);
            },
            _ = tokio::time::sleep_until(deadline) => {
                let (responses, _, _) =
                    read_once(broker, &req, &readable, version, true, fresh).await;
                return answer(responses);
            }
        }
    }
}

/// The response, counted per topic: the bytes sent and the records their batch
/// headers hold.
fn answer(responses: Vec<FetchableTopicResponse>) -> FetchResponse {
    for topic in &responses {
        let (mut bytes, mut records) = (0u64, 0u64);
        for p in &topic.partitions {
            if let Some(data) = &p.records {
                bytes += data.len() as u64;
                records += crate::record::batch::record_count(data);
            }
        }
        if bytes > 0 {
            crate::telemetry::load::count_fetched(bytes);
            let name = topic.topic.as_str().to_owned();
            metrics::counter!(crate::telemetry::FETCH_BYTES, "topic" => name.clone())
                .increment(bytes);
            metrics::counter!(crate::telemetry::FETCH_RECORDS, "topic" => name).increment(records);
        }
    }
    FetchResponse::default().with_responses(responses)
}

/// One pass over every requested partition: (responses, record bytes, any error).
///
/// An offset above this broker's high watermark may exist already: another broker
/// acknowledged it and this one has not applied it yet. Until `last` (the wait is over)
/// such a partition answers nothing, and the fetch waits for applies like a long poll;
/// only then is it OFFSET_OUT_OF_RANGE. A fenced broker, whose state may be stale and
/// stay so, serves nothing from it (no records, no high watermark, no log start): every
/// partition answers NOT_LEADER_OR_FOLLOWER, so the consumer refreshes its metadata and
/// reads where the cluster is. So does a broker whose read barrier failed (`fresh`
/// false): it cannot tell whether its replica holds what was acknowledged.
async fn read_once(
    broker: &Broker,
    req: &FetchRequest,
    readable: &[bool],
    version: i16,
    last: bool,
    fresh: bool,
) -> (Vec<FetchableTopicResponse>, usize, bool) {
    let mut pass = Pass::new(broker, req, version, last, fresh);
    let mut topics = Vec::with_capacity(req.topics.len());
    for (topic, readable) in req.topics.iter().zip(readable) {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let data = if *readable {
                pass.partition(broker, req, topic.topic.as_str(), p).await
            } else {
                pass.errors = true;
                PartitionData::default()
                    .with_partition_index(p.partition)
                    .with_error_code(ResponseError::TopicAuthorizationFailed.code())
                    .with_high_watermark(-1)
                    .with_last_stable_offset(-1)
                    .with_log_start_offset(-1)
                    .with_records(Some(bytes::Bytes::new()))
            };
            partitions.push(data);
        }
        topics.push(
            FetchableTopicResponse::default()
                .with_topic(topic.topic.clone())
                .with_partitions(partitions),
        );
    }
    (topics, pass.total, pass.errors)
}

/// One pass's state, carried from partition to partition.
struct Pass {
    fenced: bool,
    isolation: Isolation,
    version: i16,
    /// The wait is over: an offset above the high watermark is out of range now.
    last: bool,
    /// The response limit (v3+) and the record bytes gathered so far.
    max_total: usize,
    total: usize,
    errors: bool,
    /// KIP-74: until some partition has returned records, a partition's first batch is
    /// returned even when it is larger than what is left of the limits (so a consumer
    /// can make progress); after that, a partition whose next batch does not fit returns
    /// none. Before v3 there was no response limit and Kafka cut an oversized batch
    /// short; whole batches are all Strata returns, so there the first batch always comes.
    first_non_empty: bool,
}

impl Pass {
    fn new(broker: &Broker, req: &FetchRequest, version: i16, last: bool, fresh: bool) -> Self {
        Self {
            fenced: !fresh || broker.fenced(),
            // v4+: read_committed stops at the last stable offset.
            isolation: if version >= 4 {
                Isolation::from_level(req.isolation_level)
            } else {
                Isolation::ReadUncommitted
            },
            version,
            last,
            max_total: if version >= 3 {
                usize::try_from(req.max_bytes).unwrap_or(0)
            } else {
                usize::MAX
            },
            total: 0,
            errors: false,
            first_non_empty: true,
        }
    }

    async fn partition(
        &mut self,
        broker: &Broker,
        req: &FetchRequest,
        topic: &str,
        p: &FetchPartition,
    ) -> PartitionData {
        let data = PartitionData::default().with_partition_index(p.partition);
        // A consumer that names its rack is sent to a broker in it (KIP-392, v11+).
        if self.version >= 11 && !self.fenced {
            if let Some(replica) =
                broker.read_replica_elsewhere(topic, p.partition, req.rack_id.as_str())
            {
                let (hw, lso, start) = offsets_or_unknown(broker, topic, p.partition);
                return data
                    .with_high_watermark(hw)
                    .with_last_stable_offset(lso)
                    .with_log_start_offset(start)
                    .with_preferred_read_replica(BrokerId(replica))
                    .with_records(Some(bytes::Bytes::new()));
            }
        }
        // A fenced broker's copy may be stale (its high watermark, its end): nothing
        // is served from it, and the consumer refreshes its metadata.
        let read = if self.fenced {
            Err(FetchError::NotLeaderOrFollower)
        } else {
            self.read(broker, topic, p).await
        };
        match read {
            Ok(read) => self.found(data, read),
            Err(e) => {
                self.errors = true;
                let code = match &e {
                    FetchError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition,
                    FetchError::OffsetOutOfRange => ResponseError::OffsetOutOfRange,
                    FetchError::NotLeaderOrFollower => ResponseError::NotLeaderOrFollower,
                    FetchError::Storage(_) | FetchError::Corrupt(..) => {
                        warn!(error = %e, "fetch read failed");
                        ResponseError::KafkaStorageError
                    }
                };
                let (hw, lso, start) = if self.fenced {
                    (-1, -1, -1)
                } else {
                    offsets_or_unknown(broker, topic, p.partition)
                };
                let data = data
                    .with_error_code(code.code())
                    .with_high_watermark(hw)
                    .with_last_stable_offset(lso)
                    .with_records(Some(bytes::Bytes::new()));
                if self.version >= 5 {
                    data.with_log_start_offset(start)
                } else {
                    data
                }
            }
        }
    }

    /// Reads one partition within what is left of the limits.
    async fn read(
        &self,
        broker: &Broker,
        topic: &str,
        p: &FetchPartition,
    ) -> Result<crate::fetch::PartitionData, FetchError> {
        let budget = usize::try_from(p.partition_max_bytes)
            .unwrap_or(0)
            .min(self.max_total.saturating_sub(self.total));
        let min_one = self.first_non_empty || self.version < 3;
        let read = broker
            .fetcher()
            .read(
                topic,
                p.partition,
                p.fetch_offset,
                budget,
                min_one,
                self.isolation,
            )
            .await;
        match read {
            Err(FetchError::OffsetOutOfRange) => match broker.offsets(topic, p.partition) {
                Some(o) if p.fetch_offset > o.high_watermark => {
                    if self.last {
                        Err(FetchError::OffsetOutOfRange)
                    } else {
                        // Perhaps not applied here yet: wait for it.
                        Ok(crate::fetch::PartitionData {
                            records: bytes::Bytes::new(),
                            high_watermark: o.high_watermark,
                            log_start_offset: o.log_start,
                            last_stable_offset: o.last_stable,
                            aborted: Vec::new(),
                        })
                    }
                }
                _ => Err(FetchError::OffsetOutOfRange),
            },
            other => other,
        }
    }

    /// A partition's answer with what was read.
    fn found(&mut self, data: PartitionData, read: crate::fetch::PartitionData) -> PartitionData {
        self.total += read.records.len();
        if !read.records.is_empty() {
            self.first_non_empty = false;
        }
        let mut data = data
            .with_high_watermark(read.high_watermark)
            .with_last_stable_offset(read.last_stable_offset)
            .with_records(Some(read.records));
        if self.version >= 5 {
            data = data.with_log_start_offset(read.log_start_offset);
        }
        if self.version >= 4 {
            let aborted = read
                .aborted
                .iter()
                .map(|a| {
                    AbortedTransaction::default()
                        .with_producer_id(ProducerId(a.producer_id))
                        .with_first_offset(a.first_offset)
                })
                .collect();
            data = data.with_aborted_transactions(Some(aborted));
        }
        data
    }
}

/// (high watermark, last stable offset, log start) of a partition, -1 each if unknown.
fn offsets_or_unknown(broker: &Broker, topic: &str, partition: i32) -> (i64, i64, i64) {
    broker
        .offsets(topic, partition)
        .map(|o| (o.high_watermark, o.last_stable, o.log_start))
        .unwrap_or((-1, -1, -1))
}

//! Metrics, health and log output.
//!
//! Hot-path counters and histograms go through the `metrics` facade (a no-op until
//! [`install`] sets the Prometheus recorder, so tests and `metrics_listen = "none"` pay
//! nothing). Figures read from the metadata state (topic sizes, consumer lag, Raft
//! indexes) and the stats counters are written straight into the scrape by
//! `server::scrape::render_state` instead: computed once per scrape, never per request, and a
//! deleted topic or group leaves no stale series behind.

pub mod load;
pub mod logs;

use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;
use std::time::Duration;

use kafka_protocol::messages::ResponseKind;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

/// A counter not updated for this long is dropped from the exporter (see `install`).
const COUNTER_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

// Names of the hot-path series (the scrape-time ones are in `server/scrape.rs`).
pub const REQUESTS: &str = "strata_requests_total";
pub const REQUEST_ERRORS: &str = "strata_request_errors_total";
pub const REQUEST_SECONDS: &str = "strata_request_duration_seconds";
pub const PRODUCE_BYTES: &str = "strata_produce_bytes_total";
pub const PRODUCE_RECORDS: &str = "strata_produce_records_total";
pub const FETCH_BYTES: &str = "strata_fetch_bytes_total";
pub const FETCH_RECORDS: &str = "strata_fetch_records_total";
pub const FLUSHES: &str = "strata_flushes_total";
pub const FLUSH_FAILURES: &str = "strata_flush_failures_total";
pub const LOG_CHUNKS: &str = "strata_metadata_log_chunks_total";
pub const FLUSH_BYTES: &str = "strata_flush_bytes";
pub const FLUSH_SECONDS: &str = "strata_flush_duration_seconds";
pub const STORE_REQUESTS: &str = "strata_store_requests_total";
pub const STORE_ERRORS: &str = "strata_store_errors_total";
pub const STORE_SECONDS: &str = "strata_store_request_duration_seconds";
pub const CACHE_HITS: &str = "strata_cache_hits_total";
pub const CACHE_MISSES: &str = "strata_cache_misses_total";
pub const CACHE_HIT_BYTES: &str = "strata_cache_hit_bytes_total";
pub const RAFT_COMMIT_SECONDS: &str = "strata_raft_commit_duration_seconds";
pub const SASL_AUTHENTICATIONS: &str = "strata_sasl_authentications_total";
pub const TRANSACTIONS: &str = "strata_transactions_total";
pub const BROKER_FENCES: &str = "strata_broker_fences_total";

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot set up the metrics recorder: {0}")]
    Recorder(String),
}

/// Seconds: request, store and commit latencies, 0.5 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Bytes: flush objects, 1 KiB to 256 MiB by powers of four.
const SIZE_BUCKETS: &[f64] = &[
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The client connections' share of the broker's resources, kept by the listener
/// (`server::limits`) and read by the stats file and the scrape.
#[derive(Debug, Default)]
pub struct ConnectionGauges {
    /// Client connections open now.
    pub open: AtomicU64,
    /// Request bytes being read or handled now (charged to `max_inflight_request_bytes`).
    pub inflight_request_bytes: AtomicU64,
}

/// jemalloc's view of the heap: (allocated, resident); zeros when it cannot say.
pub fn heap() -> (u64, u64) {
    use tikv_jemalloc_ctl::{epoch, stats};
    if epoch::advance().is_err() {
        return (0, 0);
    }
    let allocated = stats::allocated::read().unwrap_or(0) as u64;
    let resident = stats::resident::read().unwrap_or(0) as u64;
    (allocated, resident)
}

/// Installs the Prometheus recorder as the process's global one (once) and returns the
/// handle that renders it.
pub fn install() -> Result<PrometheusHandle, TelemetryError> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = builder(COUNTER_IDLE_TIMEOUT)?
        .install_recorder()
        .map_err(recorder_error)?;
    describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn recorder_error(e: metrics_exporter_prometheus::BuildError) -> TelemetryError {
    TelemetryError::Recorder(e.to_string())
}

/// The exporter's settings: histogram buckets, and idle counters dropped after
/// `counter_idle`. Per-topic counters of a topic no longer written or read (deleted,
/// say) leave the exporter then, so the series set follows the topics in use rather than
/// every topic ever seen; one that comes back restarts from 0, which Prometheus reads as
/// a counter reset.
fn builder(counter_idle: Duration) -> Result<PrometheusBuilder, TelemetryError> {
    PrometheusBuilder::new()
        .idle_timeout(MetricKindMask::COUNTER, Some(counter_idle))
        .set_buckets(LATENCY_BUCKETS)
        .map_err(recorder_error)?
        .set_buckets_for_metric(Matcher::Full(FLUSH_BYTES.into()), SIZE_BUCKETS)
        .map_err(recorder_error)
}

fn describe() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(REQUESTS, "Kafka requests handled, by API");
    describe_counter!(
        TRANSACTIONS,
        "Transactions this broker decided, by outcome (commit, abort, timeout, fenced: an open one aborted by a new producer)"
    );
    describe_counter!(
        BROKER_FENCES,
        "Times this broker fenced itself (cut off from the metadata cluster; each logged with its cause)"
    );
    describe_counter!(
        SASL_AUTHENTICATIONS,
        "SASL exchanges that ended, by mechanism and outcome (ok, reauthenticated, failed)"
    );
    describe_counter!(
        REQUEST_ERRORS,
        "Error codes in Kafka responses (one per failed partition or group), by API and error; error=\"protocol\" when the connection was closed instead"
    );
    describe_histogram!(
        REQUEST_SECONDS,
        Unit::Seconds,
        "Kafka request latency, by API"
    );
    describe_counter!(
        PRODUCE_BYTES,
        Unit::Bytes,
        "Record batch bytes committed, by topic"
    );
    describe_counter!(PRODUCE_RECORDS, "Records committed, by topic");
    describe_counter!(
        FETCH_BYTES,
        Unit::Bytes,
        "Record batch bytes returned to fetches, by topic"
    );
    describe_counter!(
        FETCH_RECORDS,
        "Records returned to fetches (from batch headers), by topic"
    );
    describe_counter!(FLUSHES, "Write-buffer flush objects uploaded");
    describe_counter!(
        LOG_CHUNKS,
        "Metadata log chunks shipped by the Raft leader, by carrier (data: in a flush object, alone: a PUT of its own)"
    );
    describe_counter!(
        FLUSH_FAILURES,
        "Write-buffer flush objects whose upload failed after retries"
    );
    describe_histogram!(FLUSH_BYTES, Unit::Bytes, "Size of each flush object");
    describe_histogram!(
        FLUSH_SECONDS,
        Unit::Seconds,
        "Time from a flush object's upload start to its end (retries included)"
    );
    describe_counter!(
        STORE_REQUESTS,
        "Object-store requests, by kind (get, put, delete, list)"
    );
    describe_counter!(
        STORE_ERRORS,
        "Object-store requests that failed (not-found excluded), by kind"
    );
    describe_histogram!(
        STORE_SECONDS,
        Unit::Seconds,
        "Object-store request latency, by kind"
    );
    describe_counter!(
        CACHE_HITS,
        "Chunk reads served by the cache, by tier (tail, replay)"
    );
    describe_counter!(
        CACHE_MISSES,
        "Chunk reads a tier did not hold (a tail miss goes on to the replay tier; a replay miss reads the store)"
    );
    describe_counter!(
        CACHE_HIT_BYTES,
        Unit::Bytes,
        "Bytes served by the cache, by tier"
    );
    describe_histogram!(
        RAFT_COMMIT_SECONDS,
        Unit::Seconds,
        "Time for a metadata proposal to be committed (and shipped, when required)"
    );
}

/// Renders the global recorder's series; empty when none is installed.
pub fn render_recorded() -> String {
    HANDLE
        .get()
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

/// Drains histogram samples into their buckets now and then, so that memory stays
/// bounded between scrapes (the exporter leaves that to its user).
pub async fn upkeep() {
    let Some(handle) = HANDLE.get() else { return };
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

/// Counts one handled Kafka request: its latency, and every non-zero error code in the
/// response (or `protocol` when the connection is closed instead of answered).
pub fn record_request(api: &'static str, elapsed: Duration, response: Option<&ResponseKind>) {
    metrics::counter!(REQUESTS, "api" => api).increment(1);
    metrics::histogram!(REQUEST_SECONDS, "api" => api).record(elapsed.as_secs_f64());
    if let Some(response) = response {
        error_codes(response, &mut |code| {
            metrics::counter!(REQUEST_ERRORS, "api" => api, "error" => error_name(code))
                .increment(1);
        });
    }
}

/// A request that ended the connection instead of being answered (undecodable,
/// refused): counted, with error `protocol`.
pub fn record_refused(api: &'static str) {
    metrics::counter!(REQUESTS, "api" => api).increment(1);
    record_protocol_error(api);
}

/// One SASL exchange that ended: `outcome` is `ok`, `reauthenticated` or `failed`.
pub fn record_sasl(mechanism: &'static str, outcome: &'static str) {
    metrics::counter!(SASL_AUTHENTICATIONS, "mechanism" => mechanism, "outcome" => outcome)
        .increment(1);
}

/// A transaction decided here: `commit`, `abort`, `timeout` or `fenced`.
pub fn record_transaction(outcome: &'static str) {
    metrics::counter!(TRANSACTIONS, "outcome" => outcome).increment(1);
}

/// A counted request whose response could not be sent (it failed to encode).
pub fn record_protocol_error(api: &'static str) {
    metrics::counter!(REQUEST_ERRORS, "api" => api, "error" => "protocol").increment(1);
}

/// Kafka's name for an error code (`UnknownTopicOrPartition`); the number if unknown.
/// Bounded: the codes come from Strata's own responses.
pub fn error_name(code: i16) -> String {
    match kafka_protocol::error::ResponseError::try_from_code(code) {
        Some(e) => format!("{e:?}"),
        None => code.to_string(),
    }
}

/// Calls `f` with each non-zero error code of the response, at the level Kafka reports
/// it (per partition, per topic, per group or for the whole request). APIs not listed
/// here are counted in `strata_requests_total` only.
pub fn error_codes(response: &ResponseKind, f: &mut impl FnMut(i16)) {
    let mut each = |code: i16| {
        if code != 0 {
            f(code);
        }
    };
    match response {
        ResponseKind::Produce(r) => r
            .responses
            .iter()
            .flat_map(|t| &t.partition_responses)
            .for_each(|p| each(p.error_code)),
        ResponseKind::Fetch(r) => {
            each(r.error_code);
            r.responses
                .iter()
                .flat_map(|t| &t.partitions)
                .for_each(|p| each(p.error_code));
        }
        ResponseKind::ListOffsets(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| each(p.error_code)),
        ResponseKind::Metadata(r) => r.topics.iter().for_each(|t| each(t.error_code)),
        ResponseKind::OffsetCommit(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| each(p.error_code)),
        ResponseKind::OffsetFetch(r) => {
            each(r.error_code);
            r.topics
                .iter()
                .flat_map(|t| &t.partitions)
                .for_each(|p| each(p.error_code));
            for g in &r.groups {
                each(g.error_code);
                g.topics
                    .iter()
                    .flat_map(|t| &t.partitions)
                    .for_each(|p| each(p.error_code));
            }
        }
        ResponseKind::FindCoordinator(r) => {
            each(r.error_code);
            r.coordinators.iter().for_each(|c| each(c.error_code));
        }
        ResponseKind::JoinGroup(r) => each(r.error_code),
        ResponseKind::SyncGroup(r) => each(r.error_code),
        ResponseKind::Heartbeat(r) => each(r.error_code),
        ResponseKind::LeaveGroup(r) => each(r.error_code),
        ResponseKind::ListGroups(r) => each(r.error_code),
        ResponseKind::InitProducerId(r) => each(r.error_code),
        ResponseKind::DescribeGroups(r) => r.groups.iter().for_each(|g| each(g.error_code)),
        ResponseKind::CreateTopics(r) => r.topics.iter().for_each(|t| each(t.error_code)),
        ResponseKind::DeleteTopics(r) => r.responses.iter().for_each(|t| each(t.error_code)),
        _ => {}
    }
}

/// The API's name as a label (`Produce`, `Fetch`), without allocating per request.
pub fn api_name(key: kafka_protocol::messages::ApiKey) -> &'static str {
    static NAMES: OnceLock<std::collections::HashMap<i16, &'static str>> = OnceLock::new();
    let names = NAMES.get_or_init(|| {
        // Every key the crate knows is below 200.
        (0..200i16)
            .filter_map(|raw| {
                kafka_protocol::messages::ApiKey::try_from(raw)
                    .ok()
                    .map(|k| (raw, &*Box::leak(format!("{k:?}").into_boxed_str())))
            })
            .collect()
    });
    names.get(&(key as i16)).copied().unwrap_or("Unknown")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::produce_response::{
        PartitionProduceResponse, TopicProduceResponse,
    };
    use kafka_protocol::messages::{ApiKey, ProduceResponse};

    #[test]
    fn api_names_are_kafkas() {
        assert_eq!(api_name(ApiKey::Produce), "Produce");
        assert_eq!(api_name(ApiKey::Fetch), "Fetch");
        assert_eq!(api_name(ApiKey::OffsetCommit), "OffsetCommit");
    }

    #[test]
    fn error_codes_are_found_per_partition() {
        let partition = |code| PartitionProduceResponse::default().with_error_code(code);
        let response = ResponseKind::Produce(ProduceResponse::default().with_responses(vec![
            TopicProduceResponse::default().with_partition_responses(vec![
                partition(0),
                partition(3),
                partition(3),
            ]),
        ]));
        let mut codes = Vec::new();
        error_codes(&response, &mut |c| codes.push(c));
        assert_eq!(codes, [3, 3]);
        assert_eq!(error_name(3), "UnknownTopicOrPartition");
        assert_eq!(error_name(-42), "Unknown(-42)");
    }

    /// A deleted topic's counters leave the exporter once idle; live ones stay.
    #[test]
    fn idle_topic_counters_are_dropped() -> Result<(), TelemetryError> {
        let recorder = builder(Duration::from_millis(300))?.build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!(PRODUCE_BYTES, "topic" => "deleted").increment(5);
            metrics::counter!(PRODUCE_BYTES, "topic" => "live").increment(5);
        });
        assert!(handle.render().contains("topic=\"deleted\"} 5"));
        for _ in 0..6 {
            std::thread::sleep(Duration::from_millis(100));
            metrics::with_local_recorder(&recorder, || {
                metrics::counter!(PRODUCE_BYTES, "topic" => "live").increment(1);
            });
        }
        let text = handle.render();
        assert!(!text.contains("topic=\"deleted\""), "{text}");
        assert!(text.contains("topic=\"live\"} 11"), "{text}");
        Ok(())
    }

    #[test]
    fn requests_are_counted_with_their_errors() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let response = ResponseKind::Produce(ProduceResponse::default().with_responses(vec![
                TopicProduceResponse::default().with_partition_responses(vec![
                    PartitionProduceResponse::default().with_error_code(6),
                ]),
            ]));
            record_request("Produce", Duration::from_millis(3), Some(&response));
            record_refused("Fetch");
        });
        let text = handle.render();
        assert!(
            text.contains("strata_requests_total{api=\"Produce\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "strata_request_errors_total{api=\"Produce\",error=\"NotLeaderOrFollower\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("strata_request_errors_total{api=\"Fetch\",error=\"protocol\"} 1"),
            "{text}"
        );
    }
}

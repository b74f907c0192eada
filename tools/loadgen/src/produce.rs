//! `produce`: records flat out or at a rate from one or more producer instances, each
//! on its own thread (librdkafka adds its own I/O threads to each).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Args;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use serde_json::json;

use crate::{
    client_config, cpu_seconds, emit, latency_json, parse_size, ready_and_wait, round3, versions,
    Common, Ctx, Failure, Result,
};

#[derive(Args, Clone)]
pub struct ProduceArgs {
    /// Records to produce (over all producers)
    #[arg(long)]
    pub records: Option<u64>,
    /// Bytes of values to produce (e.g. 2GiB), rounded down to whole records
    #[arg(long, value_parser = parse_size)]
    pub bytes: Option<u64>,
    /// Seconds to produce for (with --records or --bytes too: whichever ends first)
    #[arg(long)]
    pub duration: Option<f64>,
    /// MB/s (10^6 bytes of values) over all producers; 0 = as fast as they go
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Bytes per record value (no key)
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Producer instances, one thread each, each with its own connections
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Spread records round-robin over partitions 0..N (default: librdkafka's partitioner,
    /// sticky for null keys)
    #[arg(long)]
    pub partitions: Option<i32>,
    #[arg(long, default_value = "all")]
    pub acks: String,
    /// enable.idempotence=true
    #[arg(long)]
    pub idempotence: bool,
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    #[arg(long, default_value_t = 1_000_000)]
    pub batch_size: u64,
    /// none, gzip, snappy, lz4, zstd
    #[arg(long, default_value = "none")]
    pub compression: String,
    /// Seconds to wait for the last deliveries
    #[arg(long, default_value_t = 600.0)]
    pub flush_timeout: f64,
}

impl ProduceArgs {
    pub fn defaults(&self) -> Vec<(&'static str, String)> {
        vec![
            ("acks", self.acks.clone()),
            ("linger.ms", self.linger_ms.to_string()),
            ("batch.size", self.batch_size.to_string()),
            (
                "message.max.bytes",
                (self.batch_size + 65536).max(1_000_000).to_string(),
            ),
            ("compression.type", self.compression.clone()),
            ("queue.buffering.max.kbytes", "1048576".into()),
            ("queue.buffering.max.messages", "1000000".into()),
            ("enable.idempotence", self.idempotence.to_string()),
        ]
    }
}

/// A producer's context: delivery reports counted, and the latency of each (enqueue to
/// report; the opaque is the enqueue time in ns since `start`) kept when `measure` says so.
pub struct ProdCtx {
    pub base: Ctx,
    pub start: Instant,
    pub ok: AtomicU64,
    pub ok_bytes: AtomicU64,
    pub failed: AtomicU64,
    pub last_fail: Mutex<String>,
    pub lat_us: Mutex<Vec<u32>>,
}

/// Opaque bit: this record's latency is not sampled (a warm-up record).
pub const NO_SAMPLE: usize = 1 << 63;

impl ProdCtx {
    pub fn new(name: String, start: Instant) -> Self {
        ProdCtx {
            base: Ctx::new(name),
            start,
            ok: AtomicU64::new(0),
            ok_bytes: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_fail: Mutex::new(String::new()),
            lat_us: Mutex::new(Vec::new()),
        }
    }
    pub fn stamp(&self) -> usize {
        self.start.elapsed().as_nanos() as usize & !NO_SAMPLE
    }
}

impl ClientContext for ProdCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        self.base.log(level, fac, msg)
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.base.error(error, reason)
    }
}

impl ProducerContext for ProdCtx {
    type DeliveryOpaque = usize;

    fn delivery(&self, r: &DeliveryResult<'_>, sent: usize) {
        match r {
            Ok(m) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                self.ok_bytes.fetch_add(
                    (m.payload_len() + m.key().map_or(0, |k| k.len())) as u64,
                    Ordering::Relaxed,
                );
                if sent & NO_SAMPLE == 0 {
                    let now = self.start.elapsed().as_nanos() as usize;
                    let us = (now.saturating_sub(sent) / 1000).min(u32::MAX as usize) as u32;
                    self.lat_us.lock().unwrap().push(us);
                }
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                *self.last_fail.lock().unwrap() = e.to_string();
            }
        }
    }
}

pub type Prod = BaseProducer<ProdCtx>;

/// A producer instance, connected: the topic's metadata fetched. Returns it and the
/// topic's partition count.
pub fn connect(
    common: &Common,
    a: &ProduceArgs,
    name: String,
    start: Instant,
) -> Result<(Prod, i32)> {
    let p: Prod = client_config(common, &a.defaults())
        .create_with_context(ProdCtx::new(name, start))
        .map_err(|e| Failure::config(format!("producer config: {e}")))?;
    let md = p
        .client()
        .fetch_metadata(Some(&common.topic), Duration::from_secs(20))
        .map_err(|e| {
            Failure::run(format!(
                "metadata of topic {} from {}: {e}",
                common.topic, common.bootstrap
            ))
        })?;
    let parts = md
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len() as i32);
    if parts == 0 {
        let err = md
            .topics()
            .first()
            .and_then(|t| t.error())
            .map(|e| format!(" ({e:?})"))
            .unwrap_or_default();
        return Err(Failure::run(format!(
            "topic {} has no partitions{err}",
            common.topic
        )));
    }
    Ok((p, parts))
}

/// Runs `f` while a thread serves `p`'s delivery reports (librdkafka wakes it as each
/// arrives, so their latency is taken when they come). The sending thread never polls:
/// BaseProducer::poll with a timeout spins through its last millisecond.
pub fn with_poller<R>(p: &Prod, f: impl FnOnce() -> R) -> R {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                p.poll(Duration::from_millis(50));
            }
        });
        let r = f();
        stop.store(true, Ordering::Relaxed);
        r
    })
}

/// Sleeps until `t0 + at`, but 1 ms at a time (the records that came due meanwhile go
/// out together, as the Python producers' 1 ms poll sends them; a sleep per record would
/// cost more CPU than the records).
pub fn pace(t0: Instant, at: Duration) {
    let wait = at.saturating_sub(t0.elapsed());
    if !wait.is_zero() {
        std::thread::sleep(
            wait.max(Duration::from_millis(1))
                .min(Duration::from_millis(1)),
        );
    }
}

/// Enqueues one record; waits while the local queue is full (the poller serves the
/// delivery reports that free it). The opaque is taken when the record is accepted, so
/// latency counts from then.
pub fn send(
    p: &Prod,
    topic: &str,
    value: &[u8],
    partition: Option<i32>,
    sample: bool,
) -> Result<()> {
    loop {
        let mut stamp = p.context().stamp();
        if !sample {
            stamp |= NO_SAMPLE;
        }
        let mut rec = BaseRecord::<(), [u8], usize>::with_opaque_to(topic, stamp).payload(value);
        rec.partition = partition;
        match p.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                std::thread::sleep(Duration::from_micros(500))
            }
            Err((e, _)) => return Err(Failure::run(format!("produce: {e}"))),
        }
    }
}

struct ThreadResult {
    end: Instant,
    sent: u64,
    undelivered: i32,
    error: Option<String>,
}

pub fn run(common: &Common, a: &ProduceArgs) -> Result<()> {
    if a.records.is_none() && a.bytes.is_none() && a.duration.is_none() {
        return Err(Failure::config(
            "produce: give --records, --bytes or --duration",
        ));
    }
    if a.record_size == 0 || a.producers == 0 {
        return Err(Failure::config(
            "produce: --record-size and --producers must be at least 1",
        ));
    }
    let total: u64 = [a.records, a.bytes.map(|b| b / a.record_size as u64)]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(u64::MAX);
    let n = a.producers as u64;
    let shares: Vec<u64> = (0..n)
        .map(|i| {
            if total == u64::MAX {
                total
            } else {
                total / n + u64::from(i < total % n)
            }
        })
        .collect();
    let start = Instant::now();
    let mut producers = Vec::new();
    for i in 0..a.producers {
        producers.push(connect(common, a, format!("producer-{i}"), start)?);
    }
    let values = crate::random_values(a.record_size, 64);
    let rate_rps = if a.rate > 0.0 {
        a.rate * 1e6 / a.record_size as f64 / n as f64
    } else {
        0.0
    };
    let duration = a.duration.map(Duration::from_secs_f64);
    ready_and_wait(common)?;
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let results: Vec<ThreadResult> = std::thread::scope(|s| {
        let hs: Vec<_> = producers
            .iter()
            .enumerate()
            .map(|(i, (p, parts))| {
                let (values, share) = (&values, shares[i]);
                let nparts = a.partitions.map(|n| n.min(*parts).max(1));
                s.spawn(move || {
                    produce_loop(
                        p,
                        &common.topic,
                        values,
                        share,
                        nparts,
                        rate_rps,
                        t0,
                        duration,
                        a.flush_timeout,
                        i,
                    )
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("producer thread panicked"))
            .collect()
    });
    let cpu = cpu_seconds() - cpu0;
    let end = results.iter().map(|r| r.end).max().unwrap_or(t0);
    let secs = end.duration_since(t0).as_secs_f64().max(1e-9);
    let ctxs: Vec<&ProdCtx> = producers
        .iter()
        .map(|(p, _)| p.context().as_ref())
        .collect();
    let ok: u64 = ctxs.iter().map(|c| c.ok.load(Ordering::Relaxed)).sum();
    let ok_bytes: u64 = ctxs
        .iter()
        .map(|c| c.ok_bytes.load(Ordering::Relaxed))
        .sum();
    let failed: u64 = ctxs.iter().map(|c| c.failed.load(Ordering::Relaxed)).sum();
    let sent: u64 = results.iter().map(|r| r.sent).sum();
    let undelivered: i64 = results.iter().map(|r| r.undelivered as i64).sum();
    let mut lat: Vec<u32> = ctxs
        .iter()
        .flat_map(|c| std::mem::take(&mut *c.lat_us.lock().unwrap()))
        .collect();
    let mut errs: Vec<String> = results.iter().filter_map(|r| r.error.clone()).collect();
    errs.extend(
        ctxs.iter()
            .map(|c| c.last_fail.lock().unwrap().clone())
            .filter(|e| !e.is_empty()),
    );
    let last_error = errs.last().cloned().unwrap_or_default();
    emit(&json!({
        "command": "produce", "records": ok, "bytes": ok_bytes, "sent": sent, "seconds": round3(secs),
        "mb_per_s": round3(ok_bytes as f64 / secs / 1e6), "records_per_s": round3(ok as f64 / secs),
        "errors": failed, "undelivered": undelivered, "last_error": last_error,
        "latency_ms": latency_json(&mut lat), "cpu_s": round3(cpu),
        "producers": a.producers, "record_size": a.record_size, "acks": a.acks, "idempotence": a.idempotence,
        "linger_ms": a.linger_ms, "batch_size": a.batch_size, "compression": a.compression,
        "rate_target_mb_per_s": a.rate, "client": versions(),
    }));
    if failed > 0 || undelivered > 0 || results.iter().any(|r| r.error.is_some()) {
        return Err(Failure::run(format!(
            "produce: {failed} delivery errors, {undelivered} undelivered; last error: {last_error}"
        )));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn produce_loop(
    p: &Prod,
    topic: &str,
    values: &[Vec<u8>],
    share: u64,
    nparts: Option<i32>,
    rate_rps: f64,
    t0: Instant,
    duration: Option<Duration>,
    flush_timeout: f64,
    idx: usize,
) -> ThreadResult {
    let mut sent: u64 = 0;
    let mut error = None;
    // Spread the producers' round-robin starting points, so they do not all fill one
    // partition at a time.
    let mut part = (idx as i32 * 7) % nparts.unwrap_or(1);
    let (undelivered, end) = with_poller(p, || {
        while sent < share {
            if sent & 1023 == 0 && duration.is_some_and(|d| t0.elapsed() >= d) {
                break;
            }
            if rate_rps > 0.0 {
                // Paced: catch up to the schedule, then sleep until the next record is due.
                let due = (t0.elapsed().as_secs_f64() * rate_rps) as u64;
                if sent >= due {
                    pace(t0, Duration::from_secs_f64((sent + 1) as f64 / rate_rps));
                    if duration.is_some_and(|d| t0.elapsed() >= d) {
                        break;
                    }
                    continue;
                }
            }
            let partition = nparts.map(|n| {
                part = (part + 1) % n;
                part
            });
            if let Err(f) = send(p, topic, &values[(sent & 63) as usize], partition, true) {
                error = Some(f.msg);
                break;
            }
            sent += 1;
        }
        let undelivered = match p.flush(Duration::from_secs_f64(flush_timeout)) {
            Ok(()) => 0,
            Err(_) => p.in_flight_count(),
        };
        (undelivered, Instant::now())
    });
    ThreadResult {
        end,
        sent,
        undelivered,
        error,
    }
}

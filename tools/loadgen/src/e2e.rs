//! `e2e`: one producer paced at --rate, each value starting with its send time (8 bytes,
//! ns on this process's monotonic clock) and a flag byte (1 = measured, 0 = warm-up), and
//! one consumer in the same process reading every partition from its end: produce latency
//! (enqueue to delivery report) and end-to-end latency (enqueue to receipt).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

use crate::produce::{self, ProduceArgs};
use crate::{
    client_config, cpu_seconds, emit, latency_json, ready_and_wait, round3, us_between, versions,
    Common, Ctx, Failure, Result,
};

#[derive(Args, Clone)]
pub struct E2eArgs {
    /// MB/s (10^6 bytes of values)
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Measured seconds
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Seconds before the measured part (records sent but not sampled)
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Bytes per record value (at least 9)
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    #[arg(long, default_value = "all")]
    pub acks: String,
    #[arg(long)]
    pub idempotence: bool,
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    #[arg(long, default_value_t = 1_000_000)]
    pub batch_size: u64,
    #[arg(long, default_value = "none")]
    pub compression: String,
    /// The consumer's fetch.wait.max.ms
    #[arg(long, default_value_t = 500)]
    pub fetch_wait_ms: u64,
}

pub fn run(common: &Common, a: &E2eArgs) -> Result<()> {
    if a.record_size < 9 || a.rate <= 0.0 {
        return Err(Failure::config(
            "e2e: --record-size must be at least 9 and --rate above 0",
        ));
    }
    let pa = ProduceArgs {
        records: None,
        bytes: None,
        duration: None,
        rate: a.rate,
        record_size: a.record_size,
        producers: 1,
        partitions: None,
        acks: a.acks.clone(),
        idempotence: a.idempotence,
        linger_ms: a.linger_ms,
        batch_size: a.batch_size,
        compression: a.compression.clone(),
        flush_timeout: 120.0,
    };
    let start = Instant::now();
    let (p, nparts) = produce::connect(common, &pa, "e2e-producer".into(), start)?;
    let c: BaseConsumer<Ctx> = client_config(
        common,
        &[
            (
                "group.id",
                format!("strata-loadgen-e2e-{}", std::process::id()),
            ),
            ("enable.auto.commit", "false".into()),
            ("enable.auto.offset.store", "false".into()),
            ("fetch.wait.max.ms", a.fetch_wait_ms.to_string()),
            ("enable.partition.eof", "false".into()),
        ],
    )
    .create_with_context(Ctx::new("e2e-consumer"))
    .map_err(|e| Failure::config(format!("consumer config: {e}")))?;
    let mut tpl = TopicPartitionList::new();
    for part in 0..nparts {
        let (_, hi) = c
            .fetch_watermarks(&common.topic, part, Duration::from_secs(20))
            .map_err(|e| Failure::run(format!("watermarks of {}/{part}: {e}", common.topic)))?;
        tpl.add_partition_offset(&common.topic, part, Offset::Offset(hi))?;
    }
    c.assign(&tpl)?;
    // Let the consumer's first fetches go out before the producer starts.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_millis(500) {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(50)) {
            return Err(Failure::run(format!(
                "e2e: topic {} is being written by someone else",
                common.topic
            )));
        }
    }
    ready_and_wait(common)?;
    let cpu0 = cpu_seconds();
    let done = AtomicBool::new(false);
    let measured_sent = AtomicU64::new(0);
    let rate_rps = a.rate * 1e6 / a.record_size as f64;
    let (warm, total) = (
        Duration::from_secs_f64(a.warmup),
        Duration::from_secs_f64(a.warmup + a.duration),
    );
    let body = crate::random_values(a.record_size, 1).pop().unwrap();
    let (e2e, received, (sent, behind_max, achieved, err)) = std::thread::scope(|s| {
        let cons = s.spawn(|| consume_loop(&c, start, &done, &measured_sent));
        let mut value = body.clone();
        let t0 = Instant::now();
        let (mut sent, mut measured, mut behind_max) = (0u64, 0u64, 0u64);
        let mut err = None;
        let achieved = produce::with_poller(&p, || {
            'outer: loop {
                let el = t0.elapsed();
                if el >= total {
                    break;
                }
                let target = (el.as_secs_f64() * rate_rps) as u64;
                behind_max = behind_max.max(target.saturating_sub(sent));
                let sample = el >= warm;
                while sent < target {
                    let ts = start.elapsed().as_nanos() as u64;
                    value[..8].copy_from_slice(&ts.to_le_bytes());
                    value[8] = u8::from(sample);
                    if let Err(f) = produce::send(&p, &common.topic, &value, None, sample) {
                        err = Some(f.msg);
                        break 'outer;
                    }
                    sent += 1;
                    measured += u64::from(sample);
                }
                produce::pace(t0, Duration::from_secs_f64((sent + 1) as f64 / rate_rps));
            }
            let achieved = sent as f64 / t0.elapsed().as_secs_f64();
            measured_sent.store(measured, Ordering::Relaxed);
            let _ = p.flush(Duration::from_secs(120));
            achieved
        });
        done.store(true, Ordering::Relaxed);
        let (lat, received) = cons.join().expect("consumer thread panicked");
        (lat, received, (sent, behind_max, achieved, err))
    });
    let cpu = cpu_seconds() - cpu0;
    let ctx = p.context();
    let mut plat = std::mem::take(&mut *ctx.lat_us.lock().unwrap());
    let mut elat = e2e;
    let measured = measured_sent.load(Ordering::Relaxed);
    let failed = ctx.failed.load(Ordering::Relaxed);
    let last_fail = ctx.last_fail.lock().unwrap().clone();
    emit(&json!({
        "command": "e2e", "sent": sent, "measured": measured, "received_measured": received,
        "rate_target_mb_per_s": a.rate, "rate_achieved_mb_per_s": round3(achieved * a.record_size as f64 / 1e6),
        "behind_max_records": behind_max,
        "produce_latency_ms": latency_json(&mut plat), "e2e_latency_ms": latency_json(&mut elat),
        "errors": failed, "last_error": err.clone().unwrap_or(last_fail.clone()), "cpu_s": round3(cpu),
        "client": versions(),
    }));
    if let Some(e) = err {
        return Err(Failure::run(e));
    }
    if failed > 0 || received < measured {
        return Err(Failure::run(format!(
            "e2e: {failed} delivery errors, {received} of {measured} measured records received; last error: {last_fail}"
        )));
    }
    Ok(())
}

/// Receipt latencies (µs) of the measured records and their count; ends once the producer
/// is done and every measured record came, or nothing came for 3 s.
fn consume_loop(
    c: &BaseConsumer<Ctx>,
    start: Instant,
    done: &AtomicBool,
    measured_sent: &AtomicU64,
) -> (Vec<u32>, u64) {
    let mut lat = Vec::new();
    let mut idle_since: Option<Instant> = None;
    loop {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let now = Instant::now();
                idle_since = None;
                if let Some(v) = m.payload() {
                    if v.len() >= 9 && v[8] == 1 {
                        let ts = u64::from_le_bytes(v[..8].try_into().unwrap());
                        lat.push(us_between(start + Duration::from_nanos(ts), now));
                    }
                }
            }
            Some(Err(e)) => eprintln!("strata-loadgen: e2e consumer: {e}"),
            None => {}
        }
        if done.load(Ordering::Relaxed) {
            if lat.len() as u64 >= measured_sent.load(Ordering::Relaxed) {
                break;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(3) {
                break;
            }
        }
    }
    let n = lat.len() as u64;
    (lat, n)
}

//! `consume`: one or more consumer instances (one thread each), the topic's partitions
//! dealt round-robin between them, manual assignment (no group rebalance), offsets from
//! --from or --offsets, until the end offsets seen at the start, a count, a time or idle.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

use crate::{
    client_config, cpu_seconds, emit, parse_size, ready_and_wait, round3, versions, Common, Ctx,
    Failure, Result,
};

#[derive(Args, Clone)]
pub struct ConsumeArgs {
    /// Where each partition starts: earliest, latest, or tail:N (N records before its end)
    #[arg(long, default_value = "earliest")]
    pub from: String,
    /// Explicit partitions and offsets, P=START[:END] comma-separated (only these are read;
    /// END exclusive, and with it the partition ends there)
    #[arg(long)]
    pub offsets: Option<String>,
    /// Stop each partition at its end offset (high watermark) as seen at the start
    #[arg(long)]
    pub to_end: bool,
    /// Stop after this many records (over all consumers)
    #[arg(long)]
    pub records: Option<u64>,
    /// Stop after this many seconds
    #[arg(long)]
    pub duration: Option<f64>,
    /// Stop when no record came for this many seconds (0: never)
    #[arg(long, default_value_t = 10.0)]
    pub idle_timeout: f64,
    /// Consumer instances, one thread each, each with its own connections
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// fetch.max.bytes
    #[arg(long, value_parser = parse_size, default_value = "52428800")]
    pub fetch_max_bytes: u64,
    /// max.partition.fetch.bytes
    #[arg(long, value_parser = parse_size, default_value = "4MiB")]
    pub partition_fetch_bytes: u64,
    /// fetch.wait.max.ms
    #[arg(long, default_value_t = 500)]
    pub fetch_wait_ms: u64,
    /// queued.max.messages.kbytes (prefetch buffer of each consumer)
    #[arg(long, default_value_t = 262144)]
    pub queued_max_kbytes: u64,
}

/// A partition to read: from `start`, up to `end` (exclusive) if known.
#[derive(Clone, Copy, Debug)]
struct Range {
    start: Offset,
    end: Option<i64>,
}

type Cons = BaseConsumer<Ctx>;

fn consumer(common: &Common, a: &ConsumeArgs, name: String) -> Result<Cons> {
    let defaults = vec![
        ("group.id", format!("strata-loadgen-{}", std::process::id())),
        ("enable.auto.commit", "false".into()),
        ("enable.auto.offset.store", "false".into()),
        ("auto.offset.reset", "earliest".into()),
        ("fetch.max.bytes", a.fetch_max_bytes.to_string()),
        (
            "max.partition.fetch.bytes",
            a.partition_fetch_bytes.to_string(),
        ),
        ("fetch.wait.max.ms", a.fetch_wait_ms.to_string()),
        (
            "queued.max.messages.kbytes",
            a.queued_max_kbytes.to_string(),
        ),
        ("enable.partition.eof", "true".into()),
    ];
    client_config(common, &defaults)
        .create_with_context(Ctx::new(name))
        .map_err(|e| Failure::config(format!("consumer config: {e}")))
}

/// The partitions to read and their ranges, from the topic's metadata and watermarks.
fn plan(c: &Cons, common: &Common, a: &ConsumeArgs) -> Result<BTreeMap<i32, Range>> {
    let timeout = Duration::from_secs(20);
    let md = c
        .fetch_metadata(Some(&common.topic), timeout)
        .map_err(|e| {
            Failure::run(format!(
                "metadata of topic {} from {}: {e}",
                common.topic, common.bootstrap
            ))
        })?;
    let nparts = md
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len() as i32);
    if nparts == 0 {
        return Err(Failure::run(format!(
            "topic {} has no partitions",
            common.topic
        )));
    }
    let wm = |p: i32| {
        c.fetch_watermarks(&common.topic, p, timeout)
            .map_err(|e| Failure::run(format!("watermarks of {}/{p}: {e}", common.topic)))
    };
    let mut out = BTreeMap::new();
    if let Some(spec) = &a.offsets {
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let bad =
                || Failure::config(format!("--offsets: expected P=START[:END], got {item:?}"));
            let (p, range) = item.split_once('=').ok_or_else(bad)?;
            let p: i32 = p.trim().parse().map_err(|_| bad())?;
            if p < 0 || p >= nparts {
                return Err(Failure::config(format!(
                    "--offsets: topic {} has no partition {p}",
                    common.topic
                )));
            }
            let (s, e) = match range.split_once(':') {
                Some((s, e)) => (s, Some(e)),
                None => (range, None),
            };
            let start: i64 = s.trim().parse().map_err(|_| bad())?;
            let mut end = e
                .map(|e| e.trim().parse::<i64>())
                .transpose()
                .map_err(|_| bad())?;
            if end.is_none() && a.to_end {
                end = Some(wm(p)?.1);
            }
            out.insert(
                p,
                Range {
                    start: Offset::Offset(start),
                    end,
                },
            );
        }
        return Ok(out);
    }
    let tail: Option<i64> = match a.from.as_str() {
        "earliest" | "beginning" => None,
        "latest" | "end" => Some(0),
        t => Some(
            t.strip_prefix("tail:")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| {
                    Failure::config(format!("--from: earliest, latest or tail:N, not {t:?}"))
                })?,
        ),
    };
    for p in 0..nparts {
        let (lo, hi) = if a.to_end || tail.is_some() {
            wm(p)?
        } else {
            (0, 0)
        };
        let start = match tail {
            None if a.to_end => Offset::Offset(lo),
            None => Offset::Beginning,
            Some(n) => Offset::Offset((hi - n).max(lo)),
        };
        out.insert(
            p,
            Range {
                start,
                end: a.to_end.then_some(hi),
            },
        );
    }
    Ok(out)
}

#[derive(Default)]
struct ThreadResult {
    first: Option<Instant>,
    last: Option<Instant>,
    first_bytes: u64,
    bytes: u64,
    records: u64,
    errors: u64,
    last_error: String,
    unfinished: usize,
}

pub fn run(common: &Common, a: &ConsumeArgs) -> Result<()> {
    if a.consumers == 0 {
        return Err(Failure::config("consume: --consumers must be at least 1"));
    }
    let mut consumers = Vec::new();
    for i in 0..a.consumers {
        consumers.push(consumer(common, a, format!("consumer-{i}"))?);
    }
    let ranges = plan(&consumers[0], common, a)?;
    // Partitions already at their end are not read at all.
    let todo: Vec<(i32, Range)> = ranges
        .iter()
        .filter(|(_, r)| !matches!((r.start, r.end), (Offset::Offset(s), Some(e)) if s >= e))
        .map(|(p, r)| (*p, *r))
        .collect();
    let groups: Vec<Vec<(i32, Range)>> = (0..a.consumers)
        .map(|i| todo.iter().skip(i).step_by(a.consumers).copied().collect())
        .collect();
    // Each instance connects (metadata) before the clock starts.
    for c in &consumers[1..] {
        c.fetch_metadata(Some(&common.topic), Duration::from_secs(20))
            .map_err(|e| Failure::run(format!("metadata of topic {}: {e}", common.topic)))?;
    }
    ready_and_wait(common)?;
    let cpu0 = cpu_seconds();
    let go = Instant::now();
    let total = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let results: Vec<Result<ThreadResult>> = std::thread::scope(|s| {
        let hs: Vec<_> = consumers
            .iter()
            .zip(&groups)
            .filter(|(_, g)| !g.is_empty())
            .map(|(c, g)| {
                let (total, stop) = (&total, &stop);
                s.spawn(move || read_loop(c, &common.topic, g, a, go, total, stop))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("consumer thread panicked"))
            .collect()
    });
    let cpu = cpu_seconds() - cpu0;
    let results: Vec<ThreadResult> = results.into_iter().collect::<Result<_>>()?;
    let first = results.iter().filter_map(|r| r.first).min();
    let last = results.iter().filter_map(|r| r.last).max();
    let bytes: u64 = results.iter().map(|r| r.bytes).sum();
    let first_bytes: u64 = results.iter().map(|r| r.first_bytes).sum();
    let records: u64 = results.iter().map(|r| r.records).sum();
    let errors: u64 = results.iter().map(|r| r.errors).sum();
    let unfinished: usize = results.iter().map(|r| r.unfinished).sum();
    let last_error = results
        .iter()
        .rev()
        .map(|r| r.last_error.clone())
        .find(|e| !e.is_empty())
        .unwrap_or_default();
    let secs = match (first, last) {
        (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
        _ => 0.0,
    };
    let first_ms = first.map(|f| f.duration_since(go).as_secs_f64() * 1000.0);
    let since_go = last.map_or(0.0, |l| l.duration_since(go).as_secs_f64());
    emit(&json!({
        "command": "consume", "records": records, "bytes": bytes, "seconds": round3(secs),
        // Timed from the first record (its bytes excluded), as the bench's Python consumers are.
        "mb_per_s": if secs > 0.0 { round3((bytes - first_bytes) as f64 / secs / 1e6) } else { 0.0 },
        "records_per_s": if secs > 0.0 { round3(records.saturating_sub(1) as f64 / secs) } else { 0.0 },
        "first_record_ms": first_ms.map(round3), "seconds_incl_first": round3(since_go),
        "mb_per_s_incl_first": if since_go > 0.0 { round3(bytes as f64 / since_go / 1e6) } else { 0.0 },
        "first_bytes": first_bytes,
        "errors": errors, "last_error": last_error, "unfinished": unfinished,
        "partitions": todo.len(), "consumers": a.consumers, "cpu_s": round3(cpu), "client": versions(),
    }));
    if unfinished > 0 || errors > 0 {
        return Err(Failure::run(format!(
            "consume: {unfinished} partitions not read to their end, {errors} errors; last error: {last_error}"
        )));
    }
    if records == 0 && (a.to_end && !todo.is_empty() || a.records.is_some_and(|n| n > 0)) {
        return Err(Failure::run("consume: no record received"));
    }
    Ok(())
}

fn read_loop(
    c: &Cons,
    topic: &str,
    parts: &[(i32, Range)],
    a: &ConsumeArgs,
    go: Instant,
    total: &AtomicU64,
    stop: &AtomicBool,
) -> Result<ThreadResult> {
    let mut tpl = TopicPartitionList::new();
    for (p, r) in parts {
        tpl.add_partition_offset(topic, *p, r.start)?;
    }
    c.assign(&tpl)?;
    // Partitions still to finish, with their end (exclusive); none when reading unbounded.
    let mut ends: HashMap<i32, i64> = parts
        .iter()
        .filter_map(|(p, r)| r.end.map(|e| (*p, e)))
        .collect();
    let bounds = ends.clone();
    let bounded = !ends.is_empty();
    // A partition read to its end stops fetching (what was prefetched past it is skipped).
    let finish = |p: i32, ends: &mut HashMap<i32, i64>| {
        if ends.remove(&p).is_some() {
            let mut t = TopicPartitionList::new();
            t.add_partition(topic, p);
            let _ = c.pause(&t);
        }
    };
    let mut r = ThreadResult::default();
    let idle = (a.idle_timeout > 0.0).then(|| Duration::from_secs_f64(a.idle_timeout));
    let duration = a.duration.map(Duration::from_secs_f64);
    let mut last_progress = go;
    let mut n: u64 = 0;
    loop {
        if bounded && ends.is_empty() {
            break;
        }
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if bounds
                    .get(&m.partition())
                    .is_some_and(|&end| m.offset() >= end)
                {
                    continue;
                }
                let now = Instant::now();
                let len = (m.payload_len() + m.key().map_or(0, |k| k.len())) as u64;
                if r.first.is_none() {
                    r.first = Some(now);
                    r.first_bytes = len;
                }
                r.last = Some(now);
                last_progress = now;
                r.bytes += len;
                r.records += 1;
                if ends
                    .get(&m.partition())
                    .is_some_and(|&end| m.offset() >= end - 1)
                {
                    finish(m.partition(), &mut ends);
                }
                n += 1;
                if let Some(max) = a.records {
                    if total.fetch_add(1, Ordering::Relaxed) + 1 >= max {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
                if stop.load(Ordering::Relaxed)
                    || (n & 255 == 0 && duration.is_some_and(|d| go.elapsed() >= d))
                {
                    break;
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                // At the high watermark: with --to-end that is the end (a transactional
                // log's last offset is a marker, never delivered).
                finish(p, &mut ends);
            }
            Some(Err(e)) => {
                r.errors += 1;
                r.last_error = e.to_string();
                last_progress = Instant::now();
            }
            None => {
                if stop.load(Ordering::Relaxed) || duration.is_some_and(|d| go.elapsed() >= d) {
                    break;
                }
                if idle.is_some_and(|d| last_progress.elapsed() >= d) {
                    if r.records == 0 && !c.context().last_error.lock().unwrap().is_empty() {
                        r.last_error = c.context().last_error.lock().unwrap().clone();
                    }
                    break;
                }
            }
        }
    }
    r.unfinished = ends.len();
    Ok(r)
}

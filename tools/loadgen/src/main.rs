//! strata-loadgen: a Kafka load generator on librdkafka (the `rdkafka` crate), for the
//! benchmark (scripts/bench.sh) and for driving any Kafka-compatible broker by hand.
//!
//! Subcommands (`strata-loadgen <cmd> --help` for all options):
//!
//! * `produce`: records of --record-size bytes, a number (--records), a volume (--bytes) or
//!   for a time (--duration), flat out or at --rate MB/s, from --producers client instances
//!   (one thread each); prints one JSON line: records, bytes, seconds, MB/s, records/s and
//!   the produce latency percentiles from the delivery reports.
//! * `consume`: reads from --from (earliest, latest, tail:N) or explicit --offsets, until
//!   the end offsets seen at the start (--to-end), N records (--records), a time
//!   (--duration) or --idle-timeout seconds without a record, with --consumers client
//!   instances over the partitions; prints bytes, records, seconds, MB/s.
//! * `e2e`: a paced producer whose values carry their send time and a consumer in the
//!   same process: produce and end-to-end latency percentiles.
//! * `version`: the rdkafka and librdkafka versions, as JSON.
//!
//! Every librdkafka property can be set with `-X key=value` (after the built-in settings,
//! so it wins). Errors go to stderr, one line each; the exit code is 0 on success, 1 when
//! the run failed (delivery errors, partitions not read to their end, no broker), 2 on a
//! bad command line or configuration. With --wait-go the command connects, prints
//! `{"ready":true}` and waits for a line on stdin before it starts its clock, so a caller
//! can sample the broker around exactly the measured part.

mod consume;
mod e2e;
mod produce;

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "strata-loadgen",
    version,
    about = "Kafka load generator on librdkafka (produce, consume, e2e)"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Options every subcommand takes.
#[derive(Args, Clone)]
pub struct Common {
    /// bootstrap.servers
    #[arg(short, long, global = true, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// Topic to produce to / consume from
    #[arg(short, long, global = true, default_value = "bench")]
    pub topic: String,
    /// A librdkafka property, key=value (repeatable; applied last, to every client instance)
    #[arg(short = 'X', value_name = "KEY=VALUE", global = true, value_parser = parse_kv)]
    pub config: Vec<(String, String)>,
    /// Connect, print {"ready":true}, then wait for a line on stdin before starting the clock
    #[arg(long, global = true)]
    pub wait_go: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Produce records, flat out or at a rate; JSON with throughput and delivery latency
    Produce(produce::ProduceArgs),
    /// Consume from the beginning, the end, a tail or given offsets; JSON with throughput
    Consume(consume::ConsumeArgs),
    /// Produce at a rate with send times in the values and consume them: produce and
    /// end-to-end latency percentiles
    E2e(e2e::E2eArgs),
    /// Print the rdkafka and librdkafka versions as JSON
    Version,
}

fn parse_kv(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("expected key=value, got {s:?}")),
    }
}

/// A size: plain bytes or with a unit (k, M, G = powers of 1000; KiB, MiB, GiB = of 1024).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("bad size {s:?} (e.g. 1048576, 256MiB, 2GiB, 1GB)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().trim_end_matches('b') {
        "" => 1.0,
        "k" => 1e3,
        "ki" => 1024.0,
        "m" => 1e6,
        "mi" => 1024.0 * 1024.0,
        "g" => 1e9,
        "gi" => 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "bad size unit in {s:?} (use k, M, G, KiB, MiB, GiB)"
            ))
        }
    };
    Ok((n * mult) as u64)
}

/// A failure: printed as one line on stderr, exit code `code`.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub msg: String,
}

impl Failure {
    pub fn run(msg: impl Into<String>) -> Self {
        Failure {
            code: 1,
            msg: msg.into(),
        }
    }
    pub fn config(msg: impl Into<String>) -> Self {
        Failure {
            code: 2,
            msg: msg.into(),
        }
    }
}

impl From<KafkaError> for Failure {
    fn from(e: KafkaError) -> Self {
        Failure::run(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Failure>;

/// The client context of every instance: librdkafka's warnings and errors to stderr (one
/// line each, as librdkafka prints them itself), global errors counted.
pub struct Ctx {
    pub name: String,
    pub errors: AtomicU64,
    pub last_error: Mutex<String>,
}

impl Ctx {
    pub fn new(name: impl Into<String>) -> Self {
        Ctx {
            name: name.into(),
            errors: AtomicU64::new(0),
            last_error: Mutex::new(String::new()),
        }
    }
    pub fn note_error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap() = e;
    }
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        if (level as i32) <= (RDKafkaLogLevel::Warning as i32) {
            eprintln!("%{}|{}|{}| {}", level as i32, self.name, fac, msg);
        }
    }
    fn error(&self, error: KafkaError, reason: &str) {
        // Transport errors are also logged by librdkafka (and retried); they count as
        // errors of the run only when they are what it ends with (no broker at all).
        *self.last_error.lock().unwrap() = format!("{error}: {reason}");
    }
}

impl ConsumerContext for Ctx {}

/// Built-in settings, then `-X` overrides.
pub fn client_config(common: &Common, defaults: &[(&str, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &common.bootstrap);
    c.set("log.connection.close", "false");
    for (k, v) in defaults {
        c.set(*k, v);
    }
    for (k, v) in &common.config {
        c.set(k, v);
    }
    c
}

/// --wait-go: tell the caller we are connected, then wait for its line on stdin.
pub fn ready_and_wait(common: &Common) -> Result<()> {
    if !common.wait_go {
        return Ok(());
    }
    emit(&json!({"ready": true}));
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Failure::run(format!("reading the go line from stdin: {e}")))?;
    Ok(())
}

/// One JSON line on stdout.
pub fn emit(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// This process's user + system CPU seconds.
pub fn cpu_seconds() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return f64::NAN;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Nearest-rank percentile of sorted microseconds, in ms (the bench's `pct`).
pub fn pct_ms(sorted_us: &[u32], p: f64) -> Value {
    if sorted_us.is_empty() {
        return Value::Null;
    }
    let n = sorted_us.len() as f64;
    let i =
        ((p / 100.0 * n + 0.5).round() as i64 - 1).clamp(0, sorted_us.len() as i64 - 1) as usize;
    json!(round3(sorted_us[i] as f64 / 1000.0))
}

/// p50, p99, p999, max (ms) and the sample count of a latency sample (µs, sorted here).
pub fn latency_json(lat_us: &mut [u32]) -> Value {
    lat_us.sort_unstable();
    json!({
        "p50": pct_ms(lat_us, 50.0), "p99": pct_ms(lat_us, 99.0), "p999": pct_ms(lat_us, 99.9),
        "max": lat_us.last().map(|&v| json!(round3(v as f64 / 1000.0))).unwrap_or(Value::Null),
        "samples": lat_us.len(),
    })
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Distinct pseudo-random values (xorshift; the broker must not see one repeated value).
pub fn random_values(size: usize, n: usize) -> Vec<Vec<u8>> {
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15
        ^ (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1));
    (0..n)
        .map(|_| {
            (0..size)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s >> 24) as u8
                })
                .collect()
        })
        .collect()
}

/// Microseconds between two instants, saturated into u32 (71 minutes).
pub fn us_between(a: Instant, b: Instant) -> u32 {
    b.saturating_duration_since(a)
        .as_micros()
        .min(u32::MAX as u128) as u32
}

pub fn versions() -> Value {
    let (_, v) = rdkafka::util::get_rdkafka_version();
    json!({"loadgen": env!("CARGO_PKG_VERSION"), "librdkafka": v})
}

fn main() {
    let cli = Cli::parse();
    let res = match &cli.cmd {
        Cmd::Produce(a) => produce::run(&cli.common, a),
        Cmd::Consume(a) => consume::run(&cli.common, a),
        Cmd::E2e(a) => e2e::run(&cli.common, a),
        Cmd::Version => {
            emit(&versions());
            Ok(())
        }
    };
    if let Err(f) = res {
        eprintln!("strata-loadgen: {}", f.msg.replace('\n', " "));
        std::process::exit(f.code);
    }
}

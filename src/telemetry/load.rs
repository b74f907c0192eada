//! The scaling signals an autoscaler reads off `/metrics`: the process's CPU
//! utilisation and the produce and fetch bytes per second. They are gauges averaged over
//! a window of at least [`WINDOW`], so a plain threshold rule (KEDA, a Prometheus
//! adapter, a custom controller) can scale on them without a `rate()` of its own.
//!
//! Rates are computed when scraped, from the previous window's sample: no task runs for
//! them, and several scrapers only make the windows end sooner, never shorter than
//! [`WINDOW`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The shortest window a rate is averaged over.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Linux reports process times in USER_HZ ticks, 100 per second on every architecture
/// (it is part of the kernel's ABI, unlike the scheduler's HZ).
const USER_HZ: f64 = 100.0;

static PRODUCED: AtomicU64 = AtomicU64::new(0);
static FETCHED: AtomicU64 = AtomicU64::new(0);
static WINDOWS: Mutex<Option<Windows>> = Mutex::new(None);

/// Record bytes acknowledged to producers.
pub fn count_produced(bytes: u64) {
    PRODUCED.fetch_add(bytes, Ordering::Relaxed);
}

/// Record bytes sent to consumers.
pub fn count_fetched(bytes: u64) {
    FETCHED.fetch_add(bytes, Ordering::Relaxed);
}

/// One reading of the process's cumulative figures.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    cpu_seconds: f64,
    produced: u64,
    fetched: u64,
}

/// The signals as last computed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Load {
    /// CPU time the process has used, user and system, since it started.
    pub cpu_seconds: f64,
    /// The cores the process may use (its cgroup's CPU quota, else the machine's).
    pub cores: f64,
    /// Share of `cores` used over the last window, 0 to 1.
    pub cpu_utilisation: f64,
    pub produce_bytes_per_second: f64,
    pub fetch_bytes_per_second: f64,
}

#[derive(Debug)]
struct Windows {
    start: Sample,
    last: Load,
}

/// The signals now: rates over the last complete window (zeros until one has passed).
pub fn read() -> Load {
    let now = sample(Instant::now());
    let cores = cores();
    let mut windows = WINDOWS.lock().unwrap_or_else(|e| e.into_inner());
    let w = windows.get_or_insert(Windows {
        start: now,
        last: Load::default(),
    });
    if now.at.duration_since(w.start.at) >= WINDOW {
        w.last = rates(&w.start, &now, cores);
        w.start = now;
    }
    Load {
        cpu_seconds: now.cpu_seconds,
        cores,
        ..w.last
    }
}

fn sample(at: Instant) -> Sample {
    Sample {
        at,
        cpu_seconds: process_cpu_seconds().unwrap_or(0.0),
        produced: PRODUCED.load(Ordering::Relaxed),
        fetched: FETCHED.load(Ordering::Relaxed),
    }
}

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// The rates between two samples.
fn rates(from: &Sample, to: &Sample, cores: f64) -> Load {
    let secs = to.at.duration_since(from.at).as_secs_f64();
    if secs <= 0.0 {
        return Load::default();
    }
    let per_second = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
    Load {
        cpu_seconds: to.cpu_seconds,
        cores,
        cpu_utilisation: ((to.cpu_seconds - from.cpu_seconds).max(0.0) / secs / cores.max(1.0))
            .clamp(0.0, 1.0),
        produce_bytes_per_second: per_second(from.produced, to.produced),
        fetch_bytes_per_second: per_second(from.fetched, to.fetched),
    }
}

/// User plus system CPU seconds of this process, from `/proc/self/stat`; None where
/// there is no procfs.
fn process_cpu_seconds() -> Option<f64> {
    parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// utime and stime are the 14th and 15th fields; the command name (2nd) is in
/// parentheses and may hold spaces, so fields are counted after its closing one.
fn parse_stat(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_the_command_name() {
        let stat = "4242 (strata (x) y) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 130 0 0 20 0 9 0";
        assert_eq!(parse_stat(stat), Some(3.8));
        assert_eq!(parse_stat("4242 (strata) S 1"), None);
        assert_eq!(parse_stat("garbage"), None);
        #[cfg(target_os = "linux")]
        assert!(process_cpu_seconds().is_some());
    }

    #[test]
    fn rates_are_per_second_and_utilisation_is_a_share_of_the_cores() {
        let t0 = Instant::now();
        let from = Sample {
            at: t0,
            cpu_seconds: 10.0,
            produced: 1_000,
            fetched: 0,
        };
        let to = Sample {
            at: t0 + Duration::from_secs(10),
            cpu_seconds: 15.0,
            produced: 51_000,
            fetched: 200_000,
        };
        let load = rates(&from, &to, 2.0);
        assert_eq!(load.produce_bytes_per_second, 5_000.0);
        assert_eq!(load.fetch_bytes_per_second, 20_000.0);
        assert_eq!(load.cpu_utilisation, 0.25);
        // No time passed: no rate, never a division by zero.
        assert_eq!(rates(&from, &from, 2.0), Load::default());
    }
}

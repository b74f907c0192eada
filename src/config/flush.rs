//! The write buffer: when it flushes, how large its objects grow, how much it holds.

use std::time::Duration;

use super::{in_range, ConfigError, FileConfig};
use crate::cli::ServeArgs;

#[derive(Debug, Clone)]
pub struct FlushConfig {
    /// `flush_interval_ms`: a write buffer flushes at least this often.
    pub interval: Duration,
    /// `flush_idle`: when a write buffer with no upload in flight flushes.
    pub idle: FlushIdle,
    /// `flush_bytes`: a write buffer holding this much flushes at once.
    pub bytes: usize,
    /// `buffer_max_bytes`: produce data held while uploads are slow; producers wait
    /// beyond it.
    pub buffer_max_bytes: usize,
}

impl FlushConfig {
    pub fn load(args: &ServeArgs, file: &FileConfig) -> Result<Self, ConfigError> {
        let interval_ms = in_range(
            "flush_interval_ms",
            args.flush_interval_ms
                .or(file.flush_interval_ms)
                .unwrap_or(10),
            1..=10_000,
            "use 1 to 10000 milliseconds",
        )?;
        let idle_text = args
            .flush_idle
            .clone()
            .or(file.flush_idle.clone())
            .unwrap_or_else(|| "immediate".into());
        let idle = idle_text.parse().map_err(|_| ConfigError::Invalid {
            key: "flush_idle",
            value: idle_text.clone(),
            hint: "use immediate or interval",
        })?;
        // 16 MiB objects keep a fully loaded broker near 60 PUTs per GB; light load
        // flushes on the interval long before this.
        let bytes = in_range(
            "flush_bytes",
            args.flush_bytes.or(file.flush_bytes).unwrap_or(16 << 20),
            1024..=(1 << 30),
            "use 1024 to 1073741824 bytes",
        )?;
        let buffer_max_bytes = in_range(
            "buffer_max_bytes",
            args.buffer_max_bytes
                .or(file.buffer_max_bytes)
                .unwrap_or(256 << 20),
            (1 << 20)..=usize::MAX,
            "use at least 1048576 bytes",
        )?;
        Ok(Self {
            interval: Duration::from_millis(interval_ms),
            idle,
            bytes,
            buffer_max_bytes,
        })
    }
}

/// When a write buffer with nothing uploading flushes (`flush_idle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlushIdle {
    /// At once, with whatever requests are already queued: the lowest latency, at the
    /// price of one PUT per produce request (or per group of concurrent ones) when load
    /// is a trickle.
    #[default]
    Immediate,
    /// After `flush_interval`, like under load: at most one PUT per interval.
    Interval,
}

impl std::str::FromStr for FlushIdle {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "immediate" => Ok(Self::Immediate),
            "interval" => Ok(Self::Interval),
            _ => Err(()),
        }
    }
}

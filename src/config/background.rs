//! The background work: compaction, retention, garbage and orphan collection.

use std::time::Duration;

use super::{in_range, millis, ConfigError, FileConfig};
use crate::cli::ServeArgs;

#[derive(Debug, Clone)]
pub struct BackgroundConfig {
    /// `compaction_interval_ms`: how often each broker looks for compaction work.
    pub compaction_interval: Duration,
    /// `compaction_age_ms`: tail data older than this is compacted into segments
    /// however small.
    pub compaction_age: Duration,
    /// `segment_bytes`: the size compacted segments grow towards.
    pub segment_bytes: u64,
    /// `retention_check_interval_ms`: how often the Raft leader applies `retention.ms`
    /// and `retention.bytes`.
    pub retention_check_interval: Duration,
    /// `gc_grace_ms`: garbage objects are deleted this long after their last reference
    /// went.
    pub gc_grace: Duration,
    /// `orphan_grace_ms`: uncommitted objects younger than this are never deleted (their
    /// commit may be on its way).
    pub orphan_grace: Duration,
}

impl BackgroundConfig {
    pub fn load(args: &ServeArgs, file: &FileConfig) -> Result<Self, ConfigError> {
        let orphan_grace = millis(
            "orphan_grace_ms",
            args.orphan_grace_ms
                .or(file.orphan_grace_ms)
                .unwrap_or(3_600_000),
            1000..=u64::MAX,
            "use at least 1000 ms, longer than any upload-to-commit delay",
        )?;
        let compaction_interval = millis(
            "compaction_interval_ms",
            args.compaction_interval_ms
                .or(file.compaction_interval_ms)
                .unwrap_or(5000),
            10..=3_600_000,
            "use 10 to 3600000 milliseconds",
        )?;
        let retention_check_interval = millis(
            "retention_check_interval_ms",
            args.retention_check_interval_ms
                .or(file.retention_check_interval_ms)
                .unwrap_or(30_000),
            10..=86_400_000,
            "use 10 to 86400000 milliseconds",
        )?;
        let compaction_age = millis(
            "compaction_age_ms",
            args.compaction_age_ms
                .or(file.compaction_age_ms)
                .unwrap_or(60_000),
            0..=86_400_000,
            "use 0 to 86400000 milliseconds",
        )?;
        let gc_grace = millis(
            "gc_grace_ms",
            args.gc_grace_ms.or(file.gc_grace_ms).unwrap_or(60_000),
            0..=86_400_000,
            "use 0 to 86400000 milliseconds (longer than the slowest fetch)",
        )?;
        let segment_bytes = in_range(
            "segment_bytes",
            args.segment_bytes
                .or(file.segment_bytes)
                .unwrap_or(128 << 20),
            (1 << 10)..=(1 << 32),
            "use 1024 to 4294967296 bytes",
        )?;
        Ok(Self {
            compaction_interval,
            compaction_age,
            segment_bytes,
            retention_check_interval,
            gc_grace,
            orphan_grace,
        })
    }
}

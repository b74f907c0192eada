//! Topics: whether unknown ones are created, with how many partitions, and the
//! broker-wide defaults of topic configs (Kafka's static `log.*` configs).

use super::{in_range, ConfigError, FileConfig};
use crate::cli::ServeArgs;
use crate::topic_config::TopicDefaults;

#[derive(Debug, Clone)]
pub struct TopicsConfig {
    /// `auto_create_topics`: create unknown topics on Metadata and Produce (Kafka's
    /// `auto.create.topics.enable`).
    pub auto_create: bool,
    /// `default_partitions`: partitions of an auto-created topic (Kafka's
    /// `num.partitions`).
    pub default_partitions: i32,
    /// Broker-wide defaults of topic configs set here (`retention_ms`, `cleanup_policy`…).
    pub defaults: TopicDefaults,
}

impl TopicsConfig {
    pub fn load(args: &ServeArgs, file: &FileConfig) -> Result<Self, ConfigError> {
        let defaults = topic_defaults(args, file)?;
        let default_partitions = in_range(
            "default_partitions",
            args.default_partitions
                .or(file.default_partitions)
                .unwrap_or(1),
            1..=crate::topic_config::MAX_PARTITIONS,
            "use 1 to 10000",
        )?;
        Ok(Self {
            auto_create: args
                .auto_create_topics
                .or(file.auto_create_topics)
                .unwrap_or(true),
            default_partitions,
            defaults,
        })
    }
}

/// An integer topic default: (file key, topic config, value, allowed range, hint).
type LongDefault = (
    &'static str,
    &'static str,
    Option<i64>,
    std::ops::RangeInclusive<i64>,
    &'static str,
);

/// Reads and checks the broker-wide topic defaults: flags and variables over the file.
/// Ranges are Kafka's for the `log.*` broker configs.
fn topic_defaults(args: &ServeArgs, file: &FileConfig) -> Result<TopicDefaults, ConfigError> {
    let mut defaults = TopicDefaults::default();
    for (key, topic_key, value, range, hint) in long_defaults(args, file) {
        let Some(value) = value else { continue };
        if !range.contains(&value) {
            return Err(ConfigError::Invalid {
                key,
                value: value.to_string(),
                hint,
            });
        }
        defaults = defaults.with(topic_key, value.to_string());
    }
    // Kafka refuses a minimum lag above the maximum; compare the effective pair.
    let lag = |key| defaults.get(key).and_then(|v| v.parse::<i64>().ok());
    let min_lag = lag("min.compaction.lag.ms").unwrap_or(0);
    let max_lag = lag("max.compaction.lag.ms").unwrap_or(i64::MAX);
    if min_lag > max_lag {
        return Err(ConfigError::Invalid {
            key: "min_compaction_lag_ms",
            value: min_lag.to_string(),
            hint: "use at most max_compaction_lag_ms",
        });
    }
    if let Some(ratio) = args
        .min_cleanable_dirty_ratio
        .or(file.min_cleanable_dirty_ratio)
    {
        if !(0.0..=1.0).contains(&ratio) {
            return Err(ConfigError::Invalid {
                key: "min_cleanable_dirty_ratio",
                value: ratio.to_string(),
                hint: "use a number from 0 to 1, e.g. 0.5",
            });
        }
        // Debug keeps the decimal point (1 shows as "1.0", as Kafka's double does).
        defaults = defaults.with("min.cleanable.dirty.ratio", format!("{ratio:?}"));
    }
    if let Some(policy) = args
        .cleanup_policy
        .as_ref()
        .or(file.cleanup_policy.as_ref())
    {
        defaults = defaults.with("cleanup.policy", cleanup_policy(policy)?);
    }
    Ok(defaults)
}

/// The integer topic defaults as set (flags and variables over the file), with their
/// keys and ranges.
fn long_defaults(args: &ServeArgs, file: &FileConfig) -> [LongDefault; 7] {
    [
        (
            "retention_ms",
            "retention.ms",
            args.retention_ms.or(file.retention_ms),
            -1..=i64::MAX,
            "use -1 (keep forever) or a number of milliseconds",
        ),
        (
            "retention_bytes",
            "retention.bytes",
            args.retention_bytes.or(file.retention_bytes),
            -1..=i64::MAX,
            "use -1 (no limit) or a number of bytes per partition",
        ),
        (
            "segment_ms",
            "segment.ms",
            args.segment_ms.or(file.segment_ms),
            1..=i64::MAX,
            "use at least 1 millisecond",
        ),
        (
            "log_segment_bytes",
            "segment.bytes",
            args.log_segment_bytes.or(file.log_segment_bytes),
            14..=i64::from(i32::MAX),
            "use 14 to 2147483647 bytes",
        ),
        (
            "delete_retention_ms",
            "delete.retention.ms",
            args.delete_retention_ms.or(file.delete_retention_ms),
            0..=i64::MAX,
            "use 0 or more milliseconds",
        ),
        (
            "min_compaction_lag_ms",
            "min.compaction.lag.ms",
            args.min_compaction_lag_ms.or(file.min_compaction_lag_ms),
            0..=i64::MAX,
            "use 0 or more milliseconds",
        ),
        (
            "max_compaction_lag_ms",
            "max.compaction.lag.ms",
            args.max_compaction_lag_ms.or(file.max_compaction_lag_ms),
            1..=i64::MAX,
            "use at least 1 millisecond",
        ),
    ]
}

/// `delete`, `compact` or both, each once, in the order given.
fn cleanup_policy(policy: &str) -> Result<String, ConfigError> {
    let mut items: Vec<&str> = Vec::new();
    for item in policy.split(',').map(str::trim) {
        if !matches!(item, "delete" | "compact") {
            return Err(ConfigError::Invalid {
                key: "cleanup_policy",
                value: policy.to_owned(),
                hint: "use delete, compact or compact,delete",
            });
        }
        if !items.contains(&item) {
            items.push(item);
        }
    }
    Ok(items.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn topic_defaults_are_read_checked_and_only_set_ones_kept() {
        let c = Config::load(&ServeArgs::default()).unwrap();
        assert_eq!(c.topics.defaults, TopicDefaults::default());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(
            &path,
            "retention_ms = 1000\nlog_segment_bytes = 1048576\nmin_cleanable_dirty_ratio = 1\n\
             cleanup_policy = \"compact, delete\"\n",
        )
        .unwrap();
        let c = Config::load(&ServeArgs {
            config: Some(path),
            retention_ms: Some(-1),
            retention_bytes: Some(5000),
            max_compaction_lag_ms: Some(10),
            ..Default::default()
        })
        .unwrap();
        let d = &c.topics.defaults;
        assert_eq!(d.get("retention.ms"), Some("-1")); // the flag wins
        assert_eq!(d.get("retention.bytes"), Some("5000"));
        assert_eq!(d.get("segment.bytes"), Some("1048576"));
        assert_eq!(d.get("min.cleanable.dirty.ratio"), Some("1.0"));
        assert_eq!(d.get("cleanup.policy"), Some("compact,delete"));
        assert_eq!(d.get("max.compaction.lag.ms"), Some("10"));
        assert_eq!(d.get("segment.ms"), None);
        // Strata's own segment_bytes (compacted objects) is not the topic default.
        assert_eq!(c.background.segment_bytes, 128 << 20);

        let refused = |args: ServeArgs| Config::load(&args).unwrap_err().to_string();
        for (args, start) in [
            (
                ServeArgs {
                    retention_ms: Some(-2),
                    ..Default::default()
                },
                "retention_ms = \"-2\" is not valid",
            ),
            (
                ServeArgs {
                    segment_ms: Some(0),
                    ..Default::default()
                },
                "segment_ms = \"0\" is not valid",
            ),
            (
                ServeArgs {
                    log_segment_bytes: Some(1 << 31),
                    ..Default::default()
                },
                "log_segment_bytes = \"2147483648\" is not valid",
            ),
            (
                ServeArgs {
                    min_cleanable_dirty_ratio: Some(1.5),
                    ..Default::default()
                },
                "min_cleanable_dirty_ratio = \"1.5\" is not valid",
            ),
            (
                ServeArgs {
                    cleanup_policy: Some("shred".into()),
                    ..Default::default()
                },
                "cleanup_policy = \"shred\" is not valid",
            ),
            (
                ServeArgs {
                    cleanup_policy: Some(String::new()),
                    ..Default::default()
                },
                "cleanup_policy = \"\" is not valid",
            ),
            (
                ServeArgs {
                    min_compaction_lag_ms: Some(100),
                    max_compaction_lag_ms: Some(10),
                    ..Default::default()
                },
                "min_compaction_lag_ms = \"100\" is not valid: use at most max_compaction_lag_ms",
            ),
        ] {
            let e = refused(args);
            assert!(e.starts_with(start), "{e}");
        }
    }

    #[test]
    fn negative_topic_defaults_parse_as_flags() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "strata",
            "serve",
            "--retention-ms",
            "-1",
            "--retention-bytes",
            "-1",
        ])
        .unwrap();
        let crate::cli::Command::Serve(args) = cli.command else {
            panic!("serve");
        };
        assert_eq!(
            (args.retention_ms, args.retention_bytes),
            (Some(-1), Some(-1))
        );
    }

    #[test]
    fn default_partitions_out_of_range_is_refused_not_clamped() {
        let refused = |args: ServeArgs| Config::load(&args).unwrap_err().to_string();
        let e = refused(ServeArgs {
            default_partitions: Some(0),
            ..Default::default()
        });
        assert!(
            e.starts_with("default_partitions = \"0\" is not valid: use 1 to 10000"),
            "{e}"
        );
        let c = Config::load(&ServeArgs {
            default_partitions: Some(3),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.topics.default_partitions, 3);
    }
}

//! Topic configs: Kafka's names, types and defaults, their validation, and how a
//! topic's effective value is resolved (the topic's own value, then the dynamic broker
//! configs, then the static broker defaults, then Kafka's default), with a typed
//! [`TopicSettings`] for the produce path, retention and the cleaner.
//!
//! Pure: the layers are passed in (the metadata state holds the dynamic ones, the
//! broker's configuration the static ones), so nothing here reads the state or a clock.

use std::collections::BTreeMap;

/// The most partitions a topic may have (CreateTopics, CreatePartitions, `num.partitions`):
/// far above any sane topic, low enough that a typo can't allocate gigabytes.
pub const MAX_PARTITIONS: i32 = 10_000;

/// Kafka's config sources.
pub const TOPIC_CONFIG: i8 = 1;
pub const DYNAMIC_BROKER_CONFIG: i8 = 2;
pub const DYNAMIC_DEFAULT_BROKER_CONFIG: i8 = 3;
pub const STATIC_BROKER_CONFIG: i8 = 4;
pub const DEFAULT_CONFIG: i8 = 5;
/// Set on a GROUP resource (KIP-848).
pub const GROUP_CONFIG: i8 = 8;

/// Topic-level defaults a client may ask about, as Kafka names them.
pub const TOPIC_DEFAULTS: &[(&str, &str)] = &[
    ("cleanup.policy", "delete"),
    ("compression.type", "producer"),
    ("delete.retention.ms", "86400000"),
    ("max.compaction.lag.ms", "9223372036854775807"),
    ("max.message.bytes", "1048588"),
    ("message.timestamp.type", "CreateTime"),
    ("min.cleanable.dirty.ratio", "0.5"),
    ("min.compaction.lag.ms", "0"),
    ("min.insync.replicas", "1"),
    ("retention.bytes", "-1"),
    ("retention.ms", "604800000"),
    ("segment.bytes", "1073741824"),
    ("segment.ms", "604800000"),
];

/// Broker configs that can change at run time (AlterConfigs on a BROKER resource), with
/// the type of their value, Kafka's default, and the topic config each is the default of.
/// `num.partitions` sets the partition count of auto-created topics and `message.max.bytes`
/// the default `max.message.bytes`; the others are stored and described.
pub const DYNAMIC_BROKER_CONFIGS: &[(&str, Kind, &str, Option<&str>)] = &[
    (
        "log.cleaner.delete.retention.ms",
        Kind::Long { min: 0 },
        "86400000",
        Some("delete.retention.ms"),
    ),
    (
        "log.cleaner.max.compaction.lag.ms",
        Kind::Long { min: 1 },
        "9223372036854775807",
        Some("max.compaction.lag.ms"),
    ),
    (
        "log.cleaner.min.cleanable.ratio",
        Kind::Double,
        "0.5",
        Some("min.cleanable.dirty.ratio"),
    ),
    (
        "log.cleaner.min.compaction.lag.ms",
        Kind::Long { min: 0 },
        "0",
        Some("min.compaction.lag.ms"),
    ),
    (
        "log.cleanup.policy",
        Kind::List(&["compact", "delete"]),
        "delete",
        Some("cleanup.policy"),
    ),
    (
        "log.retention.bytes",
        Kind::Long { min: -1 },
        "-1",
        Some("retention.bytes"),
    ),
    (
        "log.retention.ms",
        Kind::Long { min: -1 },
        "604800000",
        Some("retention.ms"),
    ),
    (
        "log.roll.ms",
        Kind::Long { min: 1 },
        "604800000",
        Some("segment.ms"),
    ),
    (
        "log.segment.bytes",
        Kind::Long { min: 14 },
        "1073741824",
        Some("segment.bytes"),
    ),
    (
        "message.max.bytes",
        Kind::Long { min: 0 },
        "1048588",
        Some("max.message.bytes"),
    ),
    ("num.partitions", Kind::Long { min: 1 }, "1", None),
];

/// The other broker configs Kafka lets AlterConfigs change at run time (its
/// `DynamicBrokerConfig`: TLS and SASL settings, thread pools, the cleaner's I/O, quotas,
/// connection limits, log defaults Strata has no use for). Strata accepts, stores and
/// describes them so that tools applying a standard broker config set do not fail on the
/// first; none of them takes effect (docs/compatibility.md). The listener configs are
/// left out: Strata's listeners are fixed at start-up, and describing an address that
/// does not apply would mislead. Names prefixed
/// `listener.name.<listener>.` are accepted as Kafka's per-listener overrides.
pub const STORED_BROKER_CONFIGS: &[(&str, Kind)] = &[
    ("background.threads", Kind::Long { min: 1 }),
    ("compression.gzip.level", Kind::Long { min: -1 }),
    ("compression.lz4.level", Kind::Long { min: 1 }),
    ("compression.type", Kind::Text),
    ("compression.zstd.level", Kind::Long { min: -131_072 }),
    ("follower.replication.throttled.rate", Kind::Long { min: 0 }),
    ("leader.replication.throttled.rate", Kind::Long { min: 0 }),
    ("log.cleaner.backoff.ms", Kind::Long { min: 0 }),
    ("log.cleaner.dedupe.buffer.size", Kind::Long { min: 0 }),
    ("log.cleaner.io.buffer.load.factor", Kind::Double),
    ("log.cleaner.io.buffer.size", Kind::Long { min: 0 }),
    ("log.cleaner.io.max.bytes.per.second", Kind::Double),
    ("log.cleaner.threads", Kind::Long { min: 0 }),
    ("log.flush.interval.messages", Kind::Long { min: 1 }),
    ("log.flush.interval.ms", Kind::Long { min: 0 }),
    ("log.index.interval.bytes", Kind::Long { min: 0 }),
    ("log.index.size.max.bytes", Kind::Long { min: 4 }),
    ("log.local.retention.bytes", Kind::Long { min: -2 }),
    ("log.local.retention.ms", Kind::Long { min: -2 }),
    ("log.message.downconversion.enable", Kind::Bool),
    ("log.message.timestamp.after.max.ms", Kind::Long { min: 0 }),
    ("log.message.timestamp.before.max.ms", Kind::Long { min: 0 }),
    (
        "log.message.timestamp.difference.max.ms",
        Kind::Long { min: 0 },
    ),
    (
        "log.message.timestamp.type",
        Kind::OneOf(&["CreateTime", "LogAppendTime"]),
    ),
    ("log.preallocate", Kind::Bool),
    ("log.roll.jitter.ms", Kind::Long { min: 0 }),
    ("log.segment.delete.delay.ms", Kind::Long { min: 0 }),
    ("max.connection.creation.rate", Kind::Long { min: 0 }),
    ("max.connections", Kind::Long { min: 0 }),
    ("max.connections.per.ip", Kind::Long { min: 0 }),
    ("max.connections.per.ip.overrides", Kind::Text),
    ("metric.reporters", Kind::Text),
    ("min.insync.replicas", Kind::Long { min: 1 }),
    ("num.io.threads", Kind::Long { min: 1 }),
    ("num.network.threads", Kind::Long { min: 1 }),
    ("num.recovery.threads.per.data.dir", Kind::Long { min: 1 }),
    ("num.replica.fetchers", Kind::Long { min: 1 }),
    ("producer.id.expiration.ms", Kind::Long { min: 1 }),
    (
        "remote.log.index.file.cache.total.size.bytes",
        Kind::Long { min: 1 },
    ),
    (
        "remote.log.manager.copy.max.bytes.per.second",
        Kind::Long { min: 1 },
    ),
    (
        "remote.log.manager.fetch.max.bytes.per.second",
        Kind::Long { min: 1 },
    ),
    (
        "replica.alter.log.dirs.io.max.bytes.per.second",
        Kind::Long { min: 0 },
    ),
    ("sasl.enabled.mechanisms", Kind::Text),
    ("sasl.jaas.config", Kind::Text),
    ("sasl.kerberos.kinit.cmd", Kind::Text),
    (
        "sasl.kerberos.min.time.before.relogin",
        Kind::Long { min: 0 },
    ),
    ("sasl.kerberos.principal.to.local.rules", Kind::Text),
    ("sasl.kerberos.service.name", Kind::Text),
    ("sasl.kerberos.ticket.renew.jitter", Kind::Double),
    ("sasl.kerberos.ticket.renew.window.factor", Kind::Double),
    ("sasl.login.refresh.buffer.seconds", Kind::Long { min: 0 }),
    (
        "sasl.login.refresh.min.period.seconds",
        Kind::Long { min: 0 },
    ),
    ("sasl.login.refresh.window.factor", Kind::Double),
    ("sasl.login.refresh.window.jitter", Kind::Double),
    ("ssl.cipher.suites", Kind::Text),
    (
        "ssl.client.auth",
        Kind::OneOf(&["required", "requested", "none"]),
    ),
    ("ssl.enabled.protocols", Kind::Text),
    ("ssl.endpoint.identification.algorithm", Kind::Text),
    ("ssl.engine.factory.class", Kind::Text),
    ("ssl.key.password", Kind::Text),
    ("ssl.keymanager.algorithm", Kind::Text),
    ("ssl.keystore.certificate.chain", Kind::Text),
    ("ssl.keystore.key", Kind::Text),
    ("ssl.keystore.location", Kind::Text),
    ("ssl.keystore.password", Kind::Text),
    ("ssl.keystore.type", Kind::Text),
    ("ssl.protocol", Kind::Text),
    ("ssl.provider", Kind::Text),
    ("ssl.secure.random.implementation", Kind::Text),
    ("ssl.trustmanager.algorithm", Kind::Text),
    ("ssl.truststore.certificates", Kind::Text),
    ("ssl.truststore.location", Kind::Text),
    ("ssl.truststore.password", Kind::Text),
    ("ssl.truststore.type", Kind::Text),
    ("transaction.partition.verification.enable", Kind::Bool),
    ("unclean.leader.election.enable", Kind::Bool),
];

/// How a stored (no-effect) dynamic broker config's value is checked, if `key` is one:
/// by its own name, or by the name after Kafka's `listener.name.<listener>.` prefix.
pub fn stored_broker_config_kind(key: &str) -> Option<Kind> {
    let find = |k: &str| {
        STORED_BROKER_CONFIGS
            .iter()
            .find(|(name, _)| *name == k)
            .map(|(_, kind)| *kind)
    };
    find(key).or_else(|| {
        let rest = key.strip_prefix("listener.name.")?;
        let (listener, name) = rest.split_once('.')?;
        (!listener.is_empty()).then_some(())?;
        find(name).or_else(|| {
            // Per-listener SASL settings: listener.name.<l>.<mechanism>.sasl.jaas.config.
            let (_mechanism, name) = name.split_once('.')?;
            find(name)
        })
    })
}

/// The topic configs that have a broker-wide default set by flag, variable or file, by
/// topic config name (`retention.ms`), as text like a topic's own configs. In a topic's
/// effective value they rank below its own value and the dynamic broker configs, above
/// Kafka's defaults; one not set here is not in the map, so DescribeConfigs can tell a
/// static default (STATIC_BROKER_CONFIG) from Kafka's (DEFAULT_CONFIG).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopicDefaults(BTreeMap<&'static str, String>);

impl TopicDefaults {
    /// The static default of topic config `topic_key`, if one is set.
    pub fn get(&self, topic_key: &str) -> Option<&str> {
        self.0.get(topic_key).map(String::as_str)
    }

    /// Sets the default of topic config `topic_key` (already validated).
    pub fn with(mut self, topic_key: &'static str, value: impl Into<String>) -> Self {
        self.0.insert(topic_key, value.into());
        self
    }
}

/// Kafka's default of topic config `key`, if it has one.
pub fn kafka_default(key: &str) -> Option<&'static str> {
    TOPIC_DEFAULTS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| *v)
}

/// What a topic's configs resolve through below its own values, as one broker sees them.
#[derive(Debug, Clone, Copy)]
pub struct ConfigLayers<'a> {
    /// This broker's own dynamic broker configs.
    pub broker: Option<&'a BTreeMap<String, String>>,
    /// The cluster-wide dynamic broker configs.
    pub cluster: Option<&'a BTreeMap<String, String>>,
    /// This broker's static defaults (flags, variables, file).
    pub defaults: &'a TopicDefaults,
}

impl ConfigLayers<'_> {
    /// A topic config's effective value and its source, from the topic's own `configs`.
    pub fn value(&self, configs: &BTreeMap<String, String>, key: &str) -> Option<(String, i8)> {
        if let Some(value) = configs.get(key) {
            return Some((value.clone(), TOPIC_CONFIG));
        }
        self.dynamic_topic_default(key)
            .or_else(|| {
                self.defaults
                    .get(key)
                    .map(|v| (v.to_owned(), STATIC_BROKER_CONFIG))
            })
            .or_else(|| kafka_default(key).map(|v| (v.to_owned(), DEFAULT_CONFIG)))
    }

    /// The dynamic broker value that stands in for a topic config's default.
    fn dynamic_topic_default(&self, topic_key: &str) -> Option<(String, i8)> {
        let (broker_key, ..) = DYNAMIC_BROKER_CONFIGS
            .iter()
            .find(|(.., topic)| *topic == Some(topic_key))?;
        self.broker_value(broker_key)
    }

    /// A dynamic broker config's value: this broker's own, else the cluster default.
    pub fn broker_value(&self, key: &str) -> Option<(String, i8)> {
        if let Some(v) = self.broker.and_then(|c| c.get(key)) {
            return Some((v.clone(), DYNAMIC_BROKER_CONFIG));
        }
        self.cluster
            .and_then(|c| c.get(key))
            .map(|v| (v.clone(), DYNAMIC_DEFAULT_BROKER_CONFIG))
    }

    /// The typed settings of a topic whose own configs are `configs`.
    pub fn settings(&self, configs: &BTreeMap<String, String>) -> TopicSettings {
        TopicSettings::from_lookup(|key| self.value(configs, key).map(|(v, _)| v))
    }
}

/// The topic configs Strata acts on, parsed; a value that does not parse (it was
/// validated when set, so only an older build's could) counts as Kafka's default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopicSettings {
    /// `cleanup.policy` includes `delete`: retention applies.
    pub delete: bool,
    /// `cleanup.policy` includes `compact`: every record needs a key, the cleaner runs.
    pub compact: bool,
    /// `retention.ms`; None keeps forever (-1).
    pub retention_ms: Option<i64>,
    /// `retention.bytes` per partition; None for no limit (-1).
    pub retention_bytes: Option<u64>,
    pub segment_ms: i64,
    pub segment_bytes: u64,
    pub min_compaction_lag_ms: i64,
    pub max_compaction_lag_ms: i64,
    pub min_cleanable_dirty_ratio: f64,
    pub delete_retention_ms: i64,
    /// The largest record batch accepted (`max.message.bytes`).
    pub max_message_bytes: usize,
    /// Batches are stamped with the broker's time (`message.timestamp.type`).
    pub log_append_time: bool,
    /// How far a CreateTime may lie before and after the broker's clock
    /// (`message.timestamp.before.max.ms` / `after.max.ms`, else the older
    /// `message.timestamp.difference.max.ms`); i64::MAX when unbounded, Kafka's default.
    pub timestamp_before_max_ms: i64,
    pub timestamp_after_max_ms: i64,
}

impl TopicSettings {
    /// The settings from a topic's effective values by name.
    pub fn from_lookup(value: impl Fn(&str) -> Option<String>) -> Self {
        let policy = value("cleanup.policy").unwrap_or_default();
        let has = |p: &str| policy.split(',').any(|q| q.trim() == p);
        let long = |key: &str| value(key).and_then(|v| v.trim().parse::<i64>().ok());
        let default = |key: &str| {
            kafka_default(key)
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or_default()
        };
        let long_or_default = |key: &str| long(key).unwrap_or_else(|| default(key));
        Self {
            delete: has("delete"),
            compact: has("compact"),
            retention_ms: long("retention.ms").filter(|v| *v >= 0),
            retention_bytes: long("retention.bytes")
                .filter(|v| *v >= 0)
                .map(|v| v as u64),
            segment_ms: long_or_default("segment.ms").max(1),
            segment_bytes: long_or_default("segment.bytes").max(1) as u64,
            min_compaction_lag_ms: long_or_default("min.compaction.lag.ms").max(0),
            max_compaction_lag_ms: long_or_default("max.compaction.lag.ms").max(1),
            min_cleanable_dirty_ratio: value("min.cleanable.dirty.ratio")
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|r| r.is_finite())
                .unwrap_or(0.5),
            delete_retention_ms: long_or_default("delete.retention.ms").max(0),
            max_message_bytes: long_or_default("max.message.bytes").max(0) as usize,
            log_append_time: value("message.timestamp.type").is_some_and(|v| v == "LogAppendTime"),
            timestamp_before_max_ms: long("message.timestamp.before.max.ms")
                .or_else(|| long("message.timestamp.difference.max.ms"))
                .map_or(i64::MAX, |v| v.max(0)),
            timestamp_after_max_ms: long("message.timestamp.after.max.ms")
                .or_else(|| long("message.timestamp.difference.max.ms"))
                .map_or(i64::MAX, |v| v.max(0)),
        }
    }
}

/// How a topic config's value is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Long { min: i64 },
    Double,
    Bool,
    OneOf(&'static [&'static str]),
    List(&'static [&'static str]),
    Text,
}

/// Every topic config Kafka knows, with the type of its value. Strata stores and
/// describes them all; which ones it enforces, and why the others do not apply to it, is
/// in the table of `docs/compatibility.md` (keep the two in step).
const TOPIC_CONFIGS: &[(&str, Kind)] = &[
    ("cleanup.policy", Kind::List(&["compact", "delete"])),
    (
        "compression.type",
        Kind::OneOf(&["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"]),
    ),
    ("delete.retention.ms", Kind::Long { min: 0 }),
    ("file.delete.delay.ms", Kind::Long { min: 0 }),
    ("flush.messages", Kind::Long { min: 1 }),
    ("flush.ms", Kind::Long { min: 0 }),
    ("follower.replication.throttled.replicas", Kind::List(&[])),
    ("index.interval.bytes", Kind::Long { min: 0 }),
    ("leader.replication.throttled.replicas", Kind::List(&[])),
    ("local.retention.bytes", Kind::Long { min: -2 }),
    ("local.retention.ms", Kind::Long { min: -2 }),
    ("max.compaction.lag.ms", Kind::Long { min: 1 }),
    ("max.message.bytes", Kind::Long { min: 0 }),
    ("message.downconversion.enable", Kind::Bool),
    ("message.format.version", Kind::Text),
    ("message.timestamp.after.max.ms", Kind::Long { min: 0 }),
    ("message.timestamp.before.max.ms", Kind::Long { min: 0 }),
    ("message.timestamp.difference.max.ms", Kind::Long { min: 0 }),
    (
        "message.timestamp.type",
        Kind::OneOf(&["CreateTime", "LogAppendTime"]),
    ),
    ("min.cleanable.dirty.ratio", Kind::Double),
    ("min.compaction.lag.ms", Kind::Long { min: 0 }),
    ("min.insync.replicas", Kind::Long { min: 1 }),
    ("preallocate", Kind::Bool),
    ("remote.storage.enable", Kind::Bool),
    ("retention.bytes", Kind::Long { min: -1 }),
    ("retention.ms", Kind::Long { min: -1 }),
    ("segment.bytes", Kind::Long { min: 14 }),
    ("segment.index.bytes", Kind::Long { min: 4 }),
    ("segment.jitter.ms", Kind::Long { min: 0 }),
    ("segment.ms", Kind::Long { min: 1 }),
    ("unclean.leader.election.enable", Kind::Bool),
];

/// The type of topic config `key`; None for a name Kafka does not define.
pub fn kind(key: &str) -> Option<Kind> {
    TOPIC_CONFIGS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, kind)| *kind)
}

/// Checks one topic config as Kafka's LogConfig does: the key must be known and the
/// value must parse as its type. The error text is what the client shows.
pub fn validate_topic_config(key: &str, value: &str) -> Result<(), String> {
    let kind = kind(key).ok_or_else(|| format!("Unknown topic config name: {key}"))?;
    validate(kind, key, value)
}

/// Checks `value` as a `kind` value of config `key`; the error text is the client's.
pub fn validate(kind: Kind, key: &str, value: &str) -> Result<(), String> {
    let bad = || format!("Invalid value {value} for configuration {key}");
    match kind {
        Kind::Long { min } => match value.trim().parse::<i64>() {
            Ok(v) if v >= min => Ok(()),
            Ok(_) => Err(format!("{} (must be at least {min})", bad())),
            Err(_) => Err(format!("{}: Not a number of type LONG", bad())),
        },
        Kind::Double => value.trim().parse::<f64>().map(|_| ()).map_err(|_| bad()),
        Kind::Bool => match value.trim().to_ascii_lowercase().as_str() {
            "true" | "false" => Ok(()),
            _ => Err(format!(
                "{}: Expected value to be either true or false",
                bad()
            )),
        },
        Kind::OneOf(allowed) => {
            if allowed.contains(&value.trim()) {
                Ok(())
            } else {
                Err(format!("{}: must be one of {allowed:?}", bad()))
            }
        }
        Kind::List(allowed) => {
            let items = value.split(',').map(str::trim).filter(|s| !s.is_empty());
            match items
                .clone()
                .find(|i| !allowed.is_empty() && !allowed.contains(i))
            {
                Some(_) => Err(format!("{}: items must be among {allowed:?}", bad())),
                None => Ok(()),
            }
        }
        Kind::Text => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/compatibility.md has a row for every topic config, with Kafka's default
    /// where this module knows it.
    #[test]
    fn compatibility_doc_lists_every_topic_config() {
        let doc = include_str!("../docs/compatibility.md");
        for (key, _) in TOPIC_CONFIGS {
            let row = match kafka_default(key) {
                Some(default) => format!("| `{key}` | `{default}` |"),
                None => format!("| `{key}` |"),
            };
            assert!(doc.contains(&row), "docs/compatibility.md lacks {row}");
        }
    }

    #[test]
    fn topic_configs_are_validated_by_type() {
        assert!(validate_topic_config("retention.ms", "1000").is_ok());
        assert!(validate_topic_config("retention.ms", "-1").is_ok());
        assert!(validate_topic_config("retention.ms", "soon").is_err());
        assert!(validate_topic_config("retention.ms", "-5").is_err());
        assert!(validate_topic_config("no.such.key", "1").is_err());
        assert!(validate_topic_config("message.timestamp.type", "LogAppendTime").is_ok());
        assert!(validate_topic_config("message.timestamp.type", "Wallclock").is_err());
        assert!(validate_topic_config("cleanup.policy", "compact,delete").is_ok());
        assert!(validate_topic_config("cleanup.policy", "shred").is_err());
        assert!(validate_topic_config("preallocate", "TRUE").is_ok());
        assert!(validate_topic_config("min.cleanable.dirty.ratio", "x").is_err());
    }
}

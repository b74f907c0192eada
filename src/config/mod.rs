//! Broker configuration: defaults, then the TOML file, then `STRATA_…` variables and
//! flags. Unknown keys are rejected, and every bad value is reported in one line that
//! says what to change.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::ServeArgs;

mod file;
mod flush;
mod listener;
mod security;
mod store;

use self::file::FileConfig;
pub use self::listener::Listener;
use self::listener::ListenerInput;
use crate::tls::{ClientAuth, TlsSettings};
pub use crate::topic_config::TopicDefaults;
pub use flush::FlushIdle;
pub use security::{AdminUser, SecurityConfig};
pub use store::ServerSideEncryption;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("cluster_secret_file {path}: {source}")]
    Secret {
        path: String,
        source: crate::security::secret::SecretError,
    },
    #[error("{key} = {value:?} is not valid: {hint}")]
    Invalid {
        key: &'static str,
        value: String,
        hint: &'static str,
    },
    #[error("sasl_oauthbearer_jwks_file: {0}")]
    Jwks(String),
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The first listener's address and advertised address (what `Register` carries
    /// for clients of a build that knows no listener names).
    pub listen: SocketAddr,
    pub advertise_host: String,
    pub advertise_port: i32,
    /// Every listener, the first being the one above.
    pub listeners: Vec<Listener>,
    /// SASL mechanisms, the authorizer's settings and the bootstrap admin.
    pub security: SecurityConfig,
    pub data_dir: PathBuf,
    pub store: String,
    /// Server-side encryption S3 applies to the objects written (s3:// stores only).
    pub s3_sse: ServerSideEncryption,
    pub node_id: u64,
    pub auto_create_topics: bool,
    pub default_partitions: i32,
    pub flush_interval: Duration,
    /// When a write buffer with no upload in flight flushes.
    pub flush_idle: FlushIdle,
    pub flush_bytes: usize,
    pub max_request_bytes: usize,
    pub cache_bytes: usize,
    /// Memory for reads the tail cache misses (replays and catch-up reads).
    pub replay_cache_bytes: usize,
    /// The cache's disk tier under `<data_dir>/cache` (0: memory only).
    pub cache_disk_bytes: usize,
    pub snapshot_every: u64,
    pub group_initial_rebalance_delay: Duration,
    pub buffer_max_bytes: usize,
    pub upload_timeout: Duration,
    /// How often the metadata snapshot is copied to the object store.
    pub store_snapshot_interval: Duration,
    /// Uncommitted objects younger than this are never deleted (their commit may be on its way).
    pub orphan_grace: Duration,
    /// Rebuild the metadata from the store's snapshot and objects, even if the data
    /// directory has a metadata log (it is set aside).
    pub recover_from_store: bool,
    /// Acknowledge without waiting for the metadata to reach the bucket (unsafe).
    pub unsafe_ack_before_shipping: bool,
    /// Where peers' Raft traffic arrives; None for a lone broker.
    pub raft_listen: Option<String>,
    /// The Raft voters by node id and Raft address.
    pub controllers: std::collections::BTreeMap<u64, String>,
    /// The secret that authenticates the Raft port (read from `cluster_secret_file`).
    pub cluster_secret: Option<crate::security::secret::ClusterSecret>,
    /// TLS on the Raft port and to peers' Raft ports, with the files of `tls`.
    pub raft_tls: bool,
    pub rack: Option<String>,
    pub broker_lease: Duration,
    /// How often each broker looks for compaction work.
    pub compaction_interval: Duration,
    /// How often the Raft leader applies `retention.ms` and `retention.bytes`.
    pub retention_check_interval: Duration,
    /// Tail data older than this is compacted into segments however small.
    pub compaction_age: Duration,
    /// The size compacted segments grow towards.
    pub segment_bytes: u64,
    /// Garbage objects are deleted this long after their last reference went.
    pub gc_grace: Duration,
    /// Request bytes being read or handled at once over all connections (at least
    /// `max_request_bytes`, so that any single frame is admitted eventually).
    pub max_inflight_request_bytes: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// How long a frame may take to arrive once its size prefix is read.
    pub frame_read_timeout: Duration,
    /// A connection with nothing in flight and nothing arriving this long is closed.
    pub connections_max_idle: Duration,
    /// TLS for the SSL and SASL_SSL listeners; None: none configured.
    pub tls: Option<TlsSettings>,
    /// Broker-wide defaults of topic configs set here (Kafka's static `log.*` configs).
    pub topic_defaults: TopicDefaults,
    /// Where `/metrics`, `/health` and `/ready` are served; None: nowhere.
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: crate::telemetry::logs::LogFormat,
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
    let longs: [LongDefault; 7] = [
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
    ];
    for (key, topic_key, value, range, hint) in longs {
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
        let mut items: Vec<&str> = Vec::new();
        for item in policy.split(',').map(str::trim) {
            if !matches!(item, "delete" | "compact") {
                return Err(ConfigError::Invalid {
                    key: "cleanup_policy",
                    value: policy.clone(),
                    hint: "use delete, compact or compact,delete",
                });
            }
            if !items.contains(&item) {
                items.push(item);
            }
        }
        defaults = defaults.with("cleanup.policy", items.join(","));
    }
    Ok(defaults)
}

/// The S3 server-side encryption settings, checked together: a wrong combination would
/// otherwise surface as every upload failing (or, worse, as objects silently written
/// with the bucket's default instead of the key the operator asked for).
fn server_side_encryption(
    mode: Option<String>,
    key_id: Option<String>,
    bucket_key: Option<bool>,
    store: &str,
) -> Result<ServerSideEncryption, ConfigError> {
    use self::ServerSideEncryption as Sse;
    let mode = mode.unwrap_or_else(|| "none".into());
    if !matches!(mode.as_str(), "none" | "s3" | "kms" | "dsse-kms") {
        return Err(ConfigError::Invalid {
            key: "s3_sse",
            value: mode,
            hint: "use none, s3 (SSE-S3), kms (SSE-KMS) or dsse-kms",
        });
    }
    // An empty key id counts as unset, so a deployment template may pass an empty
    // variable when it has no key.
    let key_id = key_id
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty());
    if let Some(id) = &key_id {
        // It travels as an HTTP header value.
        if !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::Invalid {
                key: "s3_sse_kms_key_id",
                value: id.clone(),
                hint: "use a KMS key id, alias/NAME or key ARN, without spaces",
            });
        }
    }
    let invalid = |key, value: String, hint| Err(ConfigError::Invalid { key, value, hint });
    if !store.starts_with("s3://") {
        let only_s3 = "server-side encryption applies only to an s3:// store; remove this setting or use --store s3://BUCKET/PREFIX";
        if mode != "none" {
            return invalid("s3_sse", mode, only_s3);
        }
        if let Some(id) = key_id {
            return invalid("s3_sse_kms_key_id", id, only_s3);
        }
        if let Some(enabled) = bucket_key {
            return invalid("s3_bucket_key", enabled.to_string(), only_s3);
        }
    }
    let needs_key = "s3_sse = kms and dsse-kms need a KMS key: set --s3-sse-kms-key-id (STRATA_S3_SSE_KMS_KEY_ID) to a key id, alias/NAME or ARN";
    let no_bucket_key =
        "an S3 Bucket Key goes only with s3_sse = kms; set --s3-sse kms or remove s3_bucket_key";
    match (mode.as_str(), key_id, bucket_key) {
        ("none" | "s3", Some(id), _) => invalid(
            "s3_sse_kms_key_id",
            id,
            "a KMS key is used only with s3_sse = kms or dsse-kms; set --s3-sse kms or remove the key id",
        ),
        ("none" | "s3" | "dsse-kms", _, Some(enabled)) => {
            invalid("s3_bucket_key", enabled.to_string(), no_bucket_key)
        }
        ("none", None, None) => Ok(Sse::None),
        ("s3", None, None) => Ok(Sse::S3),
        ("kms" | "dsse-kms", None, _) => invalid("s3_sse_kms_key_id", String::new(), needs_key),
        ("kms", Some(key_id), bucket_key) => Ok(Sse::Kms { key_id, bucket_key }),
        ("dsse-kms", Some(key_id), None) => Ok(Sse::DsseKms { key_id }),
        _ => invalid("s3_sse", mode, "use none, s3, kms or dsse-kms"),
    }
}

impl Config {
    pub fn load(args: &ServeArgs) -> Result<Self, ConfigError> {
        let file = FileConfig::read(args.config.as_deref())?;
        let topic_defaults = topic_defaults(args, &file)?;
        let tls = tls_settings(args, &file)?;
        let raft_tls = args.raft_tls.or(file.raft_tls).unwrap_or(false);
        if raft_tls {
            match &tls {
                None => {
                    return Err(ConfigError::Invalid {
                        key: "raft_tls",
                        value: "true".into(),
                        hint: "TLS on the Raft port needs a certificate: set tls_cert_file, tls_key_file and tls_ca_file too",
                    })
                }
                Some(t) if t.ca_file.is_none() => {
                    return Err(ConfigError::Invalid {
                        key: "tls_ca_file",
                        value: String::new(),
                        hint: "raft_tls checks peers' certificates against it: set it to the PEM CA bundle the brokers' certificates chain to",
                    })
                }
                Some(_) => {}
            }
        }
        let listeners = listener::listeners(&ListenerInput::new(args, &file, tls.is_some()))?;
        let security_input = security::SecurityInput {
            sasl_enabled_mechanisms: args
                .sasl_enabled_mechanisms
                .clone()
                .or(file.sasl_enabled_mechanisms.clone()),
            super_users: args.super_users.clone().or(file.super_users.clone()),
            allow_everyone_if_no_acl_found: args
                .allow_everyone_if_no_acl_found
                .or(file.allow_everyone_if_no_acl_found),
            admin_user: args.admin_user.clone().or(file.admin_user.clone()),
            admin_password: args.admin_password.clone().or(file.admin_password.clone()),
            connections_max_reauth_ms: args
                .connections_max_reauth_ms
                .or(file.connections_max_reauth_ms),
            sasl_oauthbearer_jwks_file: args
                .sasl_oauthbearer_jwks_file
                .clone()
                .or(file.sasl_oauthbearer_jwks_file.clone()),
            sasl_oauthbearer_expected_issuer: args
                .sasl_oauthbearer_expected_issuer
                .clone()
                .or(file.sasl_oauthbearer_expected_issuer.clone()),
            sasl_oauthbearer_expected_audience: args
                .sasl_oauthbearer_expected_audience
                .clone()
                .or(file.sasl_oauthbearer_expected_audience.clone()),
            sasl_oauthbearer_sub_claim_name: args
                .sasl_oauthbearer_sub_claim_name
                .clone()
                .or(file.sasl_oauthbearer_sub_claim_name.clone()),
            client_auth: tls
                .as_ref()
                .is_some_and(|t| t.client_auth != ClientAuth::None),
        };
        let security = security::security(&security_input, &listeners)?;
        let first = &listeners[0];
        let (listen, advertise_host, advertise_port) = (
            first.bind,
            first.advertise_host.clone(),
            first.advertise_port,
        );
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./data"));
        let store = match args.store.clone().or(file.store) {
            Some(store) => store,
            None => default_store(&data_dir)?,
        };
        let s3_sse = server_side_encryption(
            args.s3_sse.clone().or(file.s3_sse),
            args.s3_sse_kms_key_id.clone().or(file.s3_sse_kms_key_id),
            args.s3_bucket_key.or(file.s3_bucket_key),
            &store,
        )?;
        let flush_interval_ms = args
            .flush_interval_ms
            .or(file.flush_interval_ms)
            .unwrap_or(10);
        if !(1..=10_000).contains(&flush_interval_ms) {
            return Err(ConfigError::Invalid {
                key: "flush_interval_ms",
                value: flush_interval_ms.to_string(),
                hint: "use 1 to 10000 milliseconds",
            });
        }
        let flush_idle_text = args
            .flush_idle
            .clone()
            .or(file.flush_idle)
            .unwrap_or_else(|| "immediate".into());
        let flush_idle = flush_idle_text.parse().map_err(|_| ConfigError::Invalid {
            key: "flush_idle",
            value: flush_idle_text.clone(),
            hint: "use immediate or interval",
        })?;
        // 16 MiB objects keep a fully loaded broker near 60 PUTs per GB; light load
        // flushes on the interval long before this.
        let flush_bytes = args.flush_bytes.or(file.flush_bytes).unwrap_or(16 << 20);
        if !(1024..=(1 << 30)).contains(&flush_bytes) {
            return Err(ConfigError::Invalid {
                key: "flush_bytes",
                value: flush_bytes.to_string(),
                hint: "use 1024 to 1073741824 bytes",
            });
        }
        let default_partitions = args
            .default_partitions
            .or(file.default_partitions)
            .unwrap_or(1);
        if !(1..=crate::topic_config::MAX_PARTITIONS).contains(&default_partitions) {
            return Err(ConfigError::Invalid {
                key: "default_partitions",
                value: default_partitions.to_string(),
                hint: "use 1 to 10000",
            });
        }
        let max_request_bytes = args
            .max_request_bytes
            .or(file.max_request_bytes)
            .unwrap_or(100 << 20);
        if !(1024..=(1 << 30)).contains(&max_request_bytes) {
            return Err(ConfigError::Invalid {
                key: "max_request_bytes",
                value: max_request_bytes.to_string(),
                hint: "use 1024 to 1073741824 bytes",
            });
        }
        let snapshot_every = args
            .snapshot_every
            .or(file.snapshot_every)
            .unwrap_or(10_000);
        if snapshot_every == 0 {
            return Err(ConfigError::Invalid {
                key: "snapshot_every",
                value: "0".into(),
                hint: "use a positive number of log entries",
            });
        }
        let buffer_max_bytes = args
            .buffer_max_bytes
            .or(file.buffer_max_bytes)
            .unwrap_or(256 << 20);
        if buffer_max_bytes < (1 << 20) {
            return Err(ConfigError::Invalid {
                key: "buffer_max_bytes",
                value: buffer_max_bytes.to_string(),
                hint: "use at least 1048576 bytes",
            });
        }
        let orphan_grace_ms = args
            .orphan_grace_ms
            .or(file.orphan_grace_ms)
            .unwrap_or(3_600_000);
        if orphan_grace_ms < 1000 {
            return Err(ConfigError::Invalid {
                key: "orphan_grace_ms",
                value: orphan_grace_ms.to_string(),
                hint: "use at least 1000 ms, longer than any upload-to-commit delay",
            });
        }
        let node_id = args.node_id.or(file.node_id).unwrap_or(1);
        let raft_listen = args.raft_listen.clone().or(file.raft_listen);
        if let Some(addr) = &raft_listen {
            if split_host_port(addr).is_none() {
                return Err(ConfigError::Invalid {
                    key: "raft_listen",
                    value: addr.clone(),
                    hint: "use HOST:PORT that the other brokers can reach, e.g. 10.0.0.5:9093",
                });
            }
        }
        let controllers = match args.controllers.clone().or(file.controllers) {
            Some(list) => parse_controllers(&list)?,
            None => std::collections::BTreeMap::from([(
                node_id,
                raft_listen.clone().unwrap_or_default(),
            )]),
        };
        let lone_voter = controllers.len() == 1 && controllers.contains_key(&node_id);
        if !lone_voter && raft_listen.is_none() {
            return Err(ConfigError::Invalid {
                key: "raft_listen",
                value: String::new(),
                hint: "a broker in a cluster needs --raft-listen HOST:PORT for the metadata Raft traffic",
            });
        }
        if let (Some(listen), Some(mine)) = (&raft_listen, controllers.get(&node_id)) {
            if listen != mine {
                return Err(ConfigError::Invalid {
                    key: "controllers",
                    value: format!("{node_id}@{mine}"),
                    hint: "this broker's entry must be its --raft-listen address",
                });
            }
        }
        let cluster_secret = args
            .cluster_secret_file
            .clone()
            .or(file.cluster_secret_file)
            .map(|path| load_secret(&path))
            .transpose()?;
        let broker_lease_ms = args
            .broker_lease_ms
            .or(file.broker_lease_ms)
            .unwrap_or(5000);
        if !(500..=600_000).contains(&broker_lease_ms) {
            return Err(ConfigError::Invalid {
                key: "broker_lease_ms",
                value: broker_lease_ms.to_string(),
                hint: "use 500 to 600000 milliseconds",
            });
        }
        let millis = |key: &'static str, value: u64, range: std::ops::RangeInclusive<u64>, hint| {
            if range.contains(&value) {
                Ok(Duration::from_millis(value))
            } else {
                Err(ConfigError::Invalid {
                    key,
                    value: value.to_string(),
                    hint,
                })
            }
        };
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
        let upload_timeout = millis(
            "upload_timeout_ms",
            args.upload_timeout_ms
                .or(file.upload_timeout_ms)
                .unwrap_or(60_000),
            1000..=86_400_000,
            "use 1000 to 86400000 milliseconds",
        )?;
        let store_snapshot_interval = millis(
            "store_snapshot_interval_ms",
            args.store_snapshot_interval_ms
                .or(file.store_snapshot_interval_ms)
                .unwrap_or(60_000),
            100..=86_400_000,
            "use 100 to 86400000 milliseconds",
        )?;
        let group_initial_rebalance_delay = millis(
            "group_initial_rebalance_delay_ms",
            args.group_initial_rebalance_delay_ms
                .or(file.group_initial_rebalance_delay_ms)
                .unwrap_or(300),
            0..=300_000,
            "use 0 to 300000 milliseconds",
        )?;
        let segment_bytes = args
            .segment_bytes
            .or(file.segment_bytes)
            .unwrap_or(128 << 20);
        if !((1 << 10)..=(1 << 32)).contains(&segment_bytes) {
            return Err(ConfigError::Invalid {
                key: "segment_bytes",
                value: segment_bytes.to_string(),
                hint: "use 1024 to 4294967296 bytes",
            });
        }
        // The default follows a larger max_request_bytes; a value set below it is refused:
        // a frame larger than the whole budget could never be read.
        let max_inflight_request_bytes = args
            .max_inflight_request_bytes
            .or(file.max_inflight_request_bytes)
            .unwrap_or(max_request_bytes.max(256 << 20));
        if !(max_request_bytes..=(1 << 40)).contains(&max_inflight_request_bytes) {
            return Err(ConfigError::Invalid {
                key: "max_inflight_request_bytes",
                value: max_inflight_request_bytes.to_string(),
                hint: "use at least max_request_bytes (the largest frame must fit) and at most 1099511627776 bytes",
            });
        }
        let count = |key: &'static str, value: usize| {
            if (1..=1_000_000).contains(&value) {
                Ok(value)
            } else {
                Err(ConfigError::Invalid {
                    key,
                    value: value.to_string(),
                    hint: "use 1 to 1000000 connections",
                })
            }
        };
        let max_connections = count(
            "max_connections",
            args.max_connections
                .or(file.max_connections)
                .unwrap_or(10_000),
        )?;
        let max_connections_per_ip = count(
            "max_connections_per_ip",
            args.max_connections_per_ip
                .or(file.max_connections_per_ip)
                .unwrap_or(1000),
        )?;
        let frame_read_timeout = millis(
            "frame_read_timeout_ms",
            args.frame_read_timeout_ms
                .or(file.frame_read_timeout_ms)
                .unwrap_or(30_000),
            100..=3_600_000,
            "use 100 to 3600000 milliseconds",
        )?;
        let connections_max_idle = millis(
            "connections_max_idle_ms",
            args.connections_max_idle_ms
                .or(file.connections_max_idle_ms)
                .unwrap_or(600_000),
            100..=86_400_000,
            "use 100 to 86400000 milliseconds",
        )?;
        // Fixed default and name: deployment files (compose, terraform) rely on them.
        let metrics_text = args
            .metrics_listen
            .clone()
            .or(file.metrics_listen)
            .unwrap_or_else(|| "127.0.0.1:9644".into());
        let metrics_listen = match metrics_text.trim() {
            "none" => None,
            text => Some(text.parse().map_err(|_| ConfigError::Invalid {
                key: "metrics_listen",
                value: metrics_text.clone(),
                hint: "use HOST:PORT with a numeric IP, e.g. 0.0.0.0:9644, or none to turn metrics off",
            })?),
        };
        if metrics_listen == Some(listen) {
            return Err(ConfigError::Invalid {
                key: "metrics_listen",
                value: metrics_text,
                hint: "use a port other than the Kafka listener's",
            });
        }
        let log_format_text = args
            .log_format
            .clone()
            .or(file.log_format)
            .unwrap_or_else(|| "text".into());
        let log_format = log_format_text.parse().map_err(|()| ConfigError::Invalid {
            key: "log_format",
            value: log_format_text.clone(),
            hint: "use text or json",
        })?;
        let default_disk_cache = if store.starts_with("file:") {
            0
        } else {
            1 << 30
        };
        Ok(Self {
            metrics_listen,
            log_format,
            raft_listen,
            controllers,
            cluster_secret,
            raft_tls,
            rack: args.rack.clone().or(file.rack),
            broker_lease: Duration::from_millis(broker_lease_ms),
            compaction_interval,
            retention_check_interval,
            compaction_age,
            segment_bytes,
            gc_grace,
            max_inflight_request_bytes,
            max_connections,
            max_connections_per_ip,
            frame_read_timeout,
            connections_max_idle,
            tls,
            buffer_max_bytes,
            upload_timeout,
            store_snapshot_interval,
            orphan_grace: Duration::from_millis(orphan_grace_ms),
            recover_from_store: args.recover_from_store || file.recover_from_store.unwrap_or(false),
            unsafe_ack_before_shipping: args.unsafe_ack_before_shipping
                || file.unsafe_ack_before_shipping.unwrap_or(false),
            listen,
            advertise_host,
            advertise_port,
            listeners,
            security,
            data_dir,
            store,
            s3_sse,
            node_id,
            auto_create_topics: args
                .auto_create_topics
                .or(file.auto_create_topics)
                .unwrap_or(true),
            default_partitions,
            flush_interval: Duration::from_millis(flush_interval_ms),
            flush_idle,
            flush_bytes,
            max_request_bytes,
            cache_bytes: args.cache_bytes.or(file.cache_bytes).unwrap_or(256 << 20),
            replay_cache_bytes: args
                .replay_cache_bytes
                .or(file.replay_cache_bytes)
                .unwrap_or(64 << 20),
            // A disk tier in front of a store that is itself a local directory would
            // only copy it; it pays off in front of S3.
            cache_disk_bytes: args
                .cache_disk_bytes
                .or(file.cache_disk_bytes)
                .unwrap_or(default_disk_cache),
            snapshot_every,
            group_initial_rebalance_delay,
            topic_defaults,
        })
    }
}

/// The listener's TLS settings, checked for consistency (the files are read at start-up,
/// by `tls`).
fn tls_settings(args: &ServeArgs, file: &FileConfig) -> Result<Option<TlsSettings>, ConfigError> {
    let path = |arg: &Option<PathBuf>, file: &Option<PathBuf>| {
        arg.clone()
            .or(file.clone())
            .filter(|p| !p.as_os_str().is_empty())
    };
    let cert_file = path(&args.tls_cert_file, &file.tls_cert_file);
    let key_file = path(&args.tls_key_file, &file.tls_key_file);
    let ca_file = path(&args.tls_ca_file, &file.tls_ca_file);
    let client_auth_text = args
        .tls_client_auth
        .clone()
        .or(file.tls_client_auth.clone())
        .unwrap_or_else(|| "none".into());
    let client_auth: ClientAuth = client_auth_text
        .parse()
        .map_err(|()| ConfigError::Invalid {
            key: "tls_client_auth",
            value: client_auth_text.clone(),
            hint: "use none, requested or required",
        })?;
    let (cert_file, key_file) = match (cert_file, key_file) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) => {
            if client_auth != ClientAuth::None || ca_file.is_some() {
                return Err(ConfigError::Invalid {
                    key: "tls_client_auth",
                    value: client_auth_text,
                    hint: "client certificates need TLS: set tls_cert_file and tls_key_file too",
                });
            }
            return Ok(None);
        }
        (Some(_), None) => {
            return Err(ConfigError::Invalid {
                key: "tls_key_file",
                value: String::new(),
                hint: "tls_cert_file is set: set tls_key_file to its PEM private key too",
            })
        }
        (None, Some(_)) => {
            return Err(ConfigError::Invalid {
                key: "tls_cert_file",
                value: String::new(),
                hint: "tls_key_file is set: set tls_cert_file to its PEM certificate too",
            })
        }
    };
    if client_auth != ClientAuth::None && ca_file.is_none() {
        return Err(ConfigError::Invalid {
            key: "tls_ca_file",
            value: String::new(),
            hint: "tls_client_auth requested or required checks client certificates against it: set it to a PEM CA bundle",
        });
    }
    Ok(Some(TlsSettings {
        cert_file,
        key_file,
        client_auth,
        ca_file,
    }))
}

/// `1@host:port,2@host:port`: the Raft voters.
fn parse_controllers(list: &str) -> Result<std::collections::BTreeMap<u64, String>, ConfigError> {
    let invalid = || {
        ConfigError::Invalid {
        key: "controllers",
        value: list.to_owned(),
        hint: "use ID@HOST:PORT entries separated by commas, e.g. 1@10.0.0.1:9093,2@10.0.0.2:9093,3@10.0.0.3:9093",
    }
    };
    let mut voters = std::collections::BTreeMap::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, addr) = entry.split_once('@').ok_or_else(invalid)?;
        let id: u64 = id.parse().map_err(|_| invalid())?;
        split_host_port(addr).ok_or_else(invalid)?;
        if voters.insert(id, addr.to_owned()).is_some() {
            return Err(invalid());
        }
    }
    if voters.is_empty() {
        return Err(invalid());
    }
    Ok(voters)
}

fn invalid(key: &'static str, value: &str, hint: &'static str) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_owned(),
        hint,
    }
}

/// Reads the cluster secret (also for `strata voters`).
pub fn load_secret(path: &Path) -> Result<crate::security::secret::ClusterSecret, ConfigError> {
    crate::security::secret::ClusterSecret::load(path).map_err(|source| ConfigError::Secret {
        path: path.display().to_string(),
        source,
    })
}

fn split_host_port(s: &str) -> Option<(String, i32)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty() && port != 0).then(|| (host.to_owned(), i32::from(port)))
}

/// `file://<data-dir>/objects`: a local directory, so one machine needs nothing else.
fn default_store(data_dir: &Path) -> Result<String, ConfigError> {
    let absolute = std::path::absolute(data_dir).map_err(|_| ConfigError::Invalid {
        key: "data_dir",
        value: data_dir.display().to_string(),
        hint: "use a path the broker can resolve",
    })?;
    let url = url::Url::from_directory_path(absolute.join("objects")).map_err(|_| {
        ConfigError::Invalid {
            key: "data_dir",
            value: data_dir.display().to_string(),
            hint: "use a path the broker can resolve",
        }
    })?;
    Ok(url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_serve_one_machine() {
        let c = Config::load(&ServeArgs::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9092");
        assert_eq!(
            (c.advertise_host.as_str(), c.advertise_port),
            ("127.0.0.1", 9092)
        );
        assert!(c.store.starts_with("file:///") && c.store.ends_with("/data/objects/"));
    }

    #[test]
    fn metrics_and_log_settings() {
        use crate::telemetry::logs::LogFormat;
        let c = Config::load(&ServeArgs::default()).unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9644".parse().unwrap()));
        assert_eq!(c.log_format, LogFormat::Text);
        let c = Config::load(&ServeArgs {
            metrics_listen: Some("none".into()),
            log_format: Some("json".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((c.metrics_listen, c.log_format), (None, LogFormat::Json));
        let refused = |args: ServeArgs| Config::load(&args).unwrap_err().to_string();
        let e = refused(ServeArgs {
            metrics_listen: Some("localhost".into()),
            ..Default::default()
        });
        assert!(
            e.starts_with("metrics_listen = \"localhost\" is not valid"),
            "{e}"
        );
        let e = refused(ServeArgs {
            metrics_listen: Some("127.0.0.1:9092".into()),
            ..Default::default()
        });
        assert!(e.contains("other than the Kafka listener's"), "{e}");
        let e = refused(ServeArgs {
            log_format: Some("xml".into()),
            ..Default::default()
        });
        assert!(
            e.starts_with("log_format = \"xml\" is not valid: use text or json"),
            "{e}"
        );
    }

    #[test]
    fn cluster_secret_file_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        let toml = dir.path().join("strata.toml");
        std::fs::write(
            &toml,
            format!("cluster_secret_file = {:?}\n", path.display().to_string()),
        )
        .unwrap();
        let c = Config::load(&ServeArgs {
            config: Some(toml),
            ..Default::default()
        })
        .unwrap();
        assert!(c.cluster_secret.is_some());
        assert!(Config::load(&ServeArgs::default())
            .unwrap()
            .cluster_secret
            .is_none());
        let refused = |file: &Path| {
            Config::load(&ServeArgs {
                cluster_secret_file: Some(file.to_path_buf()),
                ..Default::default()
            })
            .unwrap_err()
            .to_string()
        };
        std::fs::write(&path, "tooshort\n").unwrap();
        let e = refused(&path);
        assert!(
            e.starts_with("cluster_secret_file ") && e.contains("8 bytes"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        let e = refused(&dir.path().join("missing"));
        assert!(e.contains("cannot read it"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let args = ServeArgs {
            listen: Some("nonsense".into()),
            ..Default::default()
        };
        let e = Config::load(&args).unwrap_err().to_string();
        assert!(e.starts_with("listen = \"nonsense\" is not valid"), "{e}");
    }

    #[test]
    fn the_example_config_is_valid_and_complete() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/strata.toml");
        let args = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        let c = Config::load(&args).unwrap();
        assert_eq!(c.segment_bytes, 128 << 20);
        assert_eq!(c.gc_grace, Duration::from_secs(60));
        assert_eq!(c.compaction_age, Duration::from_secs(60));
        // Its topic defaults are commented out: topics describe Kafka's, as DEFAULT_CONFIG.
        assert_eq!(c.topic_defaults, TopicDefaults::default());
    }

    #[test]
    fn out_of_range_values_are_refused_not_clamped() {
        let refused = |args: ServeArgs| Config::load(&args).unwrap_err().to_string();
        let e = refused(ServeArgs {
            upload_timeout_ms: Some(10),
            ..Default::default()
        });
        assert!(
            e.starts_with("upload_timeout_ms = \"10\" is not valid"),
            "{e}"
        );
        let e = refused(ServeArgs {
            store_snapshot_interval_ms: Some(5),
            ..Default::default()
        });
        assert!(
            e.starts_with("store_snapshot_interval_ms = \"5\" is not valid"),
            "{e}"
        );
        let c = Config::load(&ServeArgs {
            upload_timeout_ms: Some(1000),
            store_snapshot_interval_ms: Some(100),
            default_partitions: Some(3),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.upload_timeout, Duration::from_secs(1));
        assert_eq!(c.store_snapshot_interval, Duration::from_millis(100));
        assert_eq!(c.default_partitions, 3);
    }

    #[test]
    fn connection_bounds_are_checked() {
        let refused = |args: ServeArgs| Config::load(&args).unwrap_err().to_string();
        let c = Config::load(&ServeArgs::default()).unwrap();
        assert_eq!(c.max_inflight_request_bytes, 256 << 20);
        assert_eq!(
            (c.max_connections, c.max_connections_per_ip),
            (10_000, 1000)
        );
        assert_eq!(c.frame_read_timeout, Duration::from_secs(30));
        assert_eq!(c.connections_max_idle, Duration::from_secs(600));
        // The default budget grows with a larger frame limit; a set one below it is refused.
        let c = Config::load(&ServeArgs {
            max_request_bytes: Some(512 << 20),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.max_inflight_request_bytes, 512 << 20);
        let e = refused(ServeArgs {
            max_request_bytes: Some(200 << 20),
            max_inflight_request_bytes: Some(100 << 20),
            ..Default::default()
        });
        assert!(
            e.starts_with("max_inflight_request_bytes = \"104857600\" is not valid: use at least max_request_bytes"),
            "{e}"
        );
        let e = refused(ServeArgs {
            max_connections_per_ip: Some(0),
            ..Default::default()
        });
        assert!(
            e.starts_with("max_connections_per_ip = \"0\" is not valid"),
            "{e}"
        );
        let e = refused(ServeArgs {
            max_connections: Some(2_000_000),
            ..Default::default()
        });
        assert!(
            e.starts_with("max_connections = \"2000000\" is not valid"),
            "{e}"
        );
        let e = refused(ServeArgs {
            frame_read_timeout_ms: Some(10),
            ..Default::default()
        });
        assert!(
            e.starts_with("frame_read_timeout_ms = \"10\" is not valid"),
            "{e}"
        );
        let e = refused(ServeArgs {
            connections_max_idle_ms: Some(0),
            ..Default::default()
        });
        assert!(
            e.starts_with("connections_max_idle_ms = \"0\" is not valid"),
            "{e}"
        );
    }

    #[test]
    fn topic_defaults_are_read_checked_and_only_set_ones_kept() {
        let c = Config::load(&ServeArgs::default()).unwrap();
        assert_eq!(c.topic_defaults, TopicDefaults::default());
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
        let d = &c.topic_defaults;
        assert_eq!(d.get("retention.ms"), Some("-1")); // the flag wins
        assert_eq!(d.get("retention.bytes"), Some("5000"));
        assert_eq!(d.get("segment.bytes"), Some("1048576"));
        assert_eq!(d.get("min.cleanable.dirty.ratio"), Some("1.0"));
        assert_eq!(d.get("cleanup.policy"), Some("compact,delete"));
        assert_eq!(d.get("max.compaction.lag.ms"), Some("10"));
        assert_eq!(d.get("segment.ms"), None);
        // Strata's own segment_bytes (compacted objects) is not the topic default.
        assert_eq!(c.segment_bytes, 128 << 20);

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
    fn tls_settings_are_checked_for_consistency() {
        let refused = |args: ServeArgs| Config::load(&args).unwrap_err().to_string();
        assert!(Config::load(&ServeArgs::default()).unwrap().tls.is_none());
        let e = refused(ServeArgs {
            tls_cert_file: Some("c.pem".into()),
            ..Default::default()
        });
        assert!(
            e.starts_with("tls_key_file = \"\" is not valid: tls_cert_file is set"),
            "{e}"
        );
        let e = refused(ServeArgs {
            tls_key_file: Some("k.pem".into()),
            ..Default::default()
        });
        assert!(e.starts_with("tls_cert_file = \"\" is not valid"), "{e}");
        let e = refused(ServeArgs {
            tls_cert_file: Some("c.pem".into()),
            tls_key_file: Some("k.pem".into()),
            tls_client_auth: Some("always".into()),
            ..Default::default()
        });
        assert!(e.contains("use none, requested or required"), "{e}");
        let e = refused(ServeArgs {
            tls_cert_file: Some("c.pem".into()),
            tls_key_file: Some("k.pem".into()),
            tls_client_auth: Some("required".into()),
            ..Default::default()
        });
        assert!(e.starts_with("tls_ca_file = \"\" is not valid"), "{e}");
        let e = refused(ServeArgs {
            tls_client_auth: Some("requested".into()),
            tls_ca_file: Some("ca.pem".into()),
            ..Default::default()
        });
        assert!(e.contains("set tls_cert_file and tls_key_file"), "{e}");

        let e = refused(ServeArgs {
            raft_tls: Some(true),
            ..Default::default()
        });
        assert!(e.starts_with("raft_tls = \"true\" is not valid"), "{e}");
        let e = refused(ServeArgs {
            raft_tls: Some(true),
            tls_cert_file: Some("c.pem".into()),
            tls_key_file: Some("k.pem".into()),
            ..Default::default()
        });
        assert!(
            e.starts_with("tls_ca_file = \"\" is not valid: raft_tls"),
            "{e}"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(
            &path,
            "tls_cert_file = \"c.pem\"\ntls_key_file = \"k.pem\"\ntls_client_auth = \"requested\"\ntls_ca_file = \"ca.pem\"\n",
        )
        .unwrap();
        let c = Config::load(&ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            c.tls,
            Some(TlsSettings {
                cert_file: "c.pem".into(),
                key_file: "k.pem".into(),
                client_auth: ClientAuth::Requested,
                ca_file: Some("ca.pem".into()),
            })
        );
    }

    #[test]
    fn s3_server_side_encryption_settings() {
        use crate::config::ServerSideEncryption as Sse;
        let s3 = |sse: Option<&str>, key: Option<&str>, bucket_key: Option<bool>| ServeArgs {
            store: Some("s3://bucket/prefix".into()),
            s3_sse: sse.map(Into::into),
            s3_sse_kms_key_id: key.map(Into::into),
            s3_bucket_key: bucket_key,
            ..Default::default()
        };
        let loaded = |args: ServeArgs| Config::load(&args).map(|c| c.s3_sse);
        assert_eq!(loaded(ServeArgs::default()).unwrap(), Sse::None);
        assert_eq!(loaded(s3(None, None, None)).unwrap(), Sse::None);
        assert_eq!(loaded(s3(Some("s3"), None, None)).unwrap(), Sse::S3);
        assert_eq!(
            loaded(s3(Some("kms"), Some(" alias/strata "), Some(true))).unwrap(),
            Sse::Kms {
                key_id: "alias/strata".into(),
                bucket_key: Some(true)
            }
        );
        assert_eq!(
            loaded(s3(Some("dsse-kms"), Some("k-1"), None)).unwrap(),
            Sse::DsseKms {
                key_id: "k-1".into()
            }
        );
        // An empty key id (a template's empty variable) is no key.
        assert_eq!(loaded(s3(Some("s3"), Some(""), None)).unwrap(), Sse::S3);

        let refused = |args: ServeArgs| loaded(args).unwrap_err().to_string();
        for (args, start) in [
            (
                s3(Some("aes256"), None, None),
                "s3_sse = \"aes256\" is not valid: use none, s3 (SSE-S3), kms (SSE-KMS) or dsse-kms",
            ),
            (
                s3(Some("kms"), None, None),
                "s3_sse_kms_key_id = \"\" is not valid: s3_sse = kms and dsse-kms need a KMS key: set --s3-sse-kms-key-id",
            ),
            (
                s3(Some("dsse-kms"), Some("   "), None),
                "s3_sse_kms_key_id = \"\" is not valid: s3_sse = kms and dsse-kms need",
            ),
            (
                s3(Some("kms"), Some("my key"), None),
                "s3_sse_kms_key_id = \"my key\" is not valid: use a KMS key id",
            ),
            (
                s3(Some("s3"), Some("k-1"), None),
                "s3_sse_kms_key_id = \"k-1\" is not valid: a KMS key is used only with s3_sse = kms",
            ),
            (
                s3(None, Some("k-1"), None),
                "s3_sse_kms_key_id = \"k-1\" is not valid: a KMS key is used only",
            ),
            (
                s3(Some("s3"), None, Some(true)),
                "s3_bucket_key = \"true\" is not valid: an S3 Bucket Key goes only with s3_sse = kms",
            ),
            (
                s3(Some("dsse-kms"), Some("k-1"), Some(false)),
                "s3_bucket_key = \"false\" is not valid: an S3 Bucket Key goes only",
            ),
            (
                ServeArgs {
                    s3_sse: Some("kms".into()),
                    s3_sse_kms_key_id: Some("k-1".into()),
                    ..Default::default()
                },
                "s3_sse = \"kms\" is not valid: server-side encryption applies only to an s3:// store",
            ),
            (
                ServeArgs {
                    store: Some("memory://".into()),
                    s3_sse_kms_key_id: Some("k-1".into()),
                    ..Default::default()
                },
                "s3_sse_kms_key_id = \"k-1\" is not valid: server-side encryption applies only",
            ),
            (
                ServeArgs {
                    s3_bucket_key: Some(true),
                    ..Default::default()
                },
                "s3_bucket_key = \"true\" is not valid: server-side encryption applies only",
            ),
        ] {
            let e = refused(args);
            assert!(e.starts_with(start), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }

        // The file keys work too, and a flag wins over them.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(
            &path,
            "store = \"s3://b/p\"\ns3_sse = \"kms\"\ns3_sse_kms_key_id = \"k-file\"\ns3_bucket_key = false\n",
        )
        .unwrap();
        let c = Config::load(&ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            c.s3_sse,
            Sse::Kms {
                key_id: "k-file".into(),
                bucket_key: Some(false)
            }
        );
        let c = Config::load(&ServeArgs {
            config: Some(path),
            s3_sse_kms_key_id: Some("k-flag".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(matches!(c.s3_sse, Sse::Kms { key_id, .. } if key_id == "k-flag"));
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:1000\"\nnode_id = 7\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            listen: Some("127.0.0.1:2000".into()),
            ..Default::default()
        };
        let c = Config::load(&args).unwrap();
        assert_eq!(c.listen.port(), 2000);
        assert_eq!(c.node_id, 7);
    }
}

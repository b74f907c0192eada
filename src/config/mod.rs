//! Broker configuration: defaults, then the TOML file, then `STRATA_…` variables and
//! flags. Unknown keys are rejected, and every bad value is reported in one line that
//! says what to change.
//!
//! The keys, flags and variables are flat (`cli.rs`, `file.rs`); the checked `Config`
//! is nested, one section per component, each loaded and checked by its own file:
//!
//! - `node.rs`: node id, data directory, rack;
//! - `listener.rs`: the Kafka listeners, their TLS, connection and request bounds;
//! - `security.rs`: SASL, the authorizer, the bootstrap admin;
//! - `store.rs`: the object store and its server-side encryption;
//! - `cache.rs`: the block cache's tiers;
//! - `flush.rs`: the write buffer;
//! - `raft.rs`: the metadata Raft, its voters, secret and TLS;
//! - `background.rs`: compaction, retention, garbage and orphan collection;
//! - `topics.rs`: auto-creation and the broker-wide topic config defaults;
//! - `groups.rs`: the group coordinator;
//! - `telemetry.rs`: metrics and logs;
//! - `placement.rs`: how Metadata presents partition leaders to clients.
//!
//! A check that spans sections sits in the loader of the later one, which is handed
//! the sections it depends on.

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::cli::ServeArgs;

mod background;
mod cache;
mod file;
mod flush;
pub(crate) mod groups;
mod listener;
mod node;
mod placement;
mod raft;
mod security;
mod store;
mod telemetry;
mod topics;

pub use self::background::BackgroundConfig;
pub use self::cache::CacheConfig;
use self::file::FileConfig;
pub use self::flush::{FlushConfig, FlushIdle};
pub use self::groups::GroupConfig;
pub use self::listener::{Listener, ListenerConfig};
pub use self::node::NodeConfig;
pub use self::placement::PlacementConfig;
pub use self::raft::{load_secret, RaftConfig};
pub use self::security::{AdminUser, SecurityConfig};
pub use self::store::{ServerSideEncryption, StoreConfig};
pub use self::telemetry::TelemetryConfig;
pub use self::topics::TopicsConfig;
pub use crate::topic_config::TopicDefaults;

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

/// The broker's configuration, one section per component.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: NodeConfig,
    pub listener: ListenerConfig,
    pub security: SecurityConfig,
    pub store: StoreConfig,
    pub cache: CacheConfig,
    pub flush: FlushConfig,
    pub raft: RaftConfig,
    pub background: BackgroundConfig,
    pub topics: TopicsConfig,
    pub groups: GroupConfig,
    pub telemetry: TelemetryConfig,
    pub placement: PlacementConfig,
}

impl Config {
    /// Reads the file (if any) once, then each section from the flags and variables
    /// over it; the first bad value stops the load.
    pub fn load(args: &ServeArgs) -> Result<Self, ConfigError> {
        let file = FileConfig::read(args.config.as_deref())?;
        let topics = TopicsConfig::load(args, &file)?;
        let listener = ListenerConfig::load(args, &file)?;
        let security = SecurityConfig::load(args, &file, &listener)?;
        let node = NodeConfig::load(args, &file)?;
        let store = StoreConfig::load(args, &file, &node)?;
        let flush = FlushConfig::load(args, &file)?;
        let raft = RaftConfig::load(args, &file, &node, listener.tls.as_ref())?;
        let background = BackgroundConfig::load(args, &file)?;
        let groups = GroupConfig::load(args, &file)?;
        let telemetry = TelemetryConfig::load(args, &file, &listener)?;
        let cache = CacheConfig::load(args, &file, &store);
        let placement = PlacementConfig::load(args, &file)?;
        Ok(Self {
            placement,
            node,
            listener,
            security,
            store,
            cache,
            flush,
            raft,
            background,
            topics,
            groups,
            telemetry,
        })
    }
}

fn invalid(key: &'static str, value: &str, hint: &'static str) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_owned(),
        hint,
    }
}

/// `value` if `range` holds it; else the one-line error naming `key` and the range.
fn in_range<T: PartialOrd + ToString>(
    key: &'static str,
    value: T,
    range: RangeInclusive<T>,
    hint: &'static str,
) -> Result<T, ConfigError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(invalid(key, &value.to_string(), hint))
    }
}

/// A number of milliseconds in `range`, as a duration.
fn millis(
    key: &'static str,
    value: u64,
    range: RangeInclusive<u64>,
    hint: &'static str,
) -> Result<Duration, ConfigError> {
    in_range(key, value, range, hint).map(Duration::from_millis)
}

fn split_host_port(s: &str) -> Option<(String, i32)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty() && port != 0).then(|| (host.to_owned(), i32::from(port)))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn defaults_serve_one_machine() {
        let c = Config::load(&ServeArgs::default()).unwrap();
        assert_eq!(c.listener.listen().to_string(), "127.0.0.1:9092");
        assert_eq!(
            (c.listener.advertise_host(), c.listener.advertise_port()),
            ("127.0.0.1", 9092)
        );
        assert!(c.store.url.starts_with("file:///") && c.store.url.ends_with("/data/objects/"));
    }

    #[test]
    fn s3_has_a_put_budget_by_default_a_directory_none_and_0_lifts_it() {
        let c = Config::load(&ServeArgs::default()).unwrap();
        assert_eq!(c.store.max_puts_per_second, None);
        let on_s3 = |budget: Option<f64>| ServeArgs {
            store: Some("s3://bucket/prefix".into()),
            max_puts_per_second: budget,
            ..Default::default()
        };
        let c = Config::load(&on_s3(None)).unwrap();
        assert_eq!(
            c.store.max_puts_per_second,
            Some(store::DEFAULT_S3_PUTS_PER_SECOND)
        );
        let c = Config::load(&on_s3(Some(0.0))).unwrap();
        assert_eq!(c.store.max_puts_per_second, None);
        let c = Config::load(&on_s3(Some(50.0))).unwrap();
        assert_eq!(c.store.max_puts_per_second, Some(50.0));
    }

    #[test]
    fn the_example_config_is_valid_and_complete() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/strata.toml");
        let args = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        let c = Config::load(&args).unwrap();
        assert_eq!(c.background.segment_bytes, 128 << 20);
        assert_eq!(c.background.gc_grace, Duration::from_secs(60));
        assert_eq!(c.background.compaction_age, Duration::from_secs(60));
        // Its topic defaults are commented out: topics describe Kafka's, as DEFAULT_CONFIG.
        assert_eq!(c.topics.defaults, TopicDefaults::default());
    }

    #[test]
    fn a_consumer_heartbeat_interval_must_be_below_the_session_timeout() {
        let args = ServeArgs {
            group_consumer_session_timeout_ms: Some(2_000),
            group_consumer_heartbeat_interval_ms: Some(2_000),
            ..Default::default()
        };
        match Config::load(&args) {
            Err(ConfigError::Invalid { key, .. }) => {
                assert_eq!(key, "group_consumer_heartbeat_interval_ms")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        let args = ServeArgs {
            group_consumer_heartbeat_interval_ms: Some(1_999),
            ..args
        };
        let c = Config::load(&args).unwrap();
        assert_eq!(c.groups.consumer_session_timeout, Duration::from_secs(2));
    }

    #[test]
    fn consumer_assignors_are_known_names_default_first() {
        let args = |list: &str| ServeArgs {
            group_consumer_assignors: Some(list.into()),
            ..Default::default()
        };
        let c = Config::load(&args(" range , uniform ")).unwrap();
        assert_eq!(c.groups.consumer_assignors, ["range", "uniform"]);
        for bad in ["", "sticky", "range,cooperative"] {
            match Config::load(&args(bad)) {
                Err(ConfigError::Invalid { key, .. }) => {
                    assert_eq!(key, "group_consumer_assignors")
                }
                other => panic!("{bad:?}: expected a refusal, got {other:?}"),
            }
        }
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
        assert_eq!(c.listener.listen().port(), 2000);
        assert_eq!(c.node.id, 7);
    }

    #[test]
    fn an_automatic_node_id_needs_voters_to_ask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, "node_id = \"auto\"\n").unwrap();
        let alone = ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        let err = Config::load(&alone).unwrap_err().to_string();
        assert!(err.contains("give --controllers"), "{err}");
        let joining = ServeArgs {
            config: Some(path),
            controllers: Some("1@127.0.0.1:9093".into()),
            raft_listen: Some("127.0.0.1:9094".into()),
            ..Default::default()
        };
        let c = Config::load(&joining).unwrap();
        assert!(c.node.auto_id && c.node.id == 0);
        assert_eq!(
            "sometimes".parse::<crate::cli::NodeIdArg>(),
            Err("\"sometimes\" is neither a node id (a number) nor auto".into())
        );
    }
}

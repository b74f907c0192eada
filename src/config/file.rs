//! The TOML file, as flat as its keys: every key optional, unknown keys refused. Each
//! section's loader reads its own keys from it (after the flags and variables).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

/// The TOML file: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub advertise: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub store: Option<String>,
    pub s3_sse: Option<String>,
    pub s3_sse_kms_key_id: Option<String>,
    pub s3_bucket_key: Option<bool>,
    pub node_id: Option<crate::cli::NodeIdArg>,
    pub auto_create_topics: Option<bool>,
    pub default_partitions: Option<i32>,
    pub flush_interval_ms: Option<u64>,
    pub flush_idle: Option<String>,
    pub flush_bytes: Option<usize>,
    pub max_request_bytes: Option<usize>,
    pub cache_bytes: Option<usize>,
    pub replay_cache_bytes: Option<usize>,
    pub cache_disk_bytes: Option<usize>,
    pub snapshot_every: Option<u64>,
    pub max_puts_per_second: Option<f64>,
    pub leader_ids: Option<u32>,
    pub group_initial_rebalance_delay_ms: Option<u64>,
    pub group_consumer_session_timeout_ms: Option<u64>,
    pub group_consumer_heartbeat_interval_ms: Option<u64>,
    pub group_consumer_assignors: Option<String>,
    pub buffer_max_bytes: Option<usize>,
    pub upload_timeout_ms: Option<u64>,
    pub store_snapshot_interval_ms: Option<u64>,
    pub orphan_grace_ms: Option<u64>,
    pub recover_from_store: Option<bool>,
    pub unsafe_ack_before_shipping: Option<bool>,
    pub raft_listen: Option<String>,
    pub raft_advertise: Option<String>,
    pub controllers: Option<String>,
    pub cluster_secret_file: Option<PathBuf>,
    pub raft_tls: Option<bool>,
    pub rack: Option<String>,
    pub metrics_listen: Option<String>,
    pub log_format: Option<String>,
    pub broker_lease_ms: Option<u64>,
    pub broker_forget_after_ms: Option<u64>,
    pub shutdown_timeout_ms: Option<u64>,
    pub compaction_interval_ms: Option<u64>,
    pub retention_check_interval_ms: Option<u64>,
    pub compaction_age_ms: Option<u64>,
    pub segment_bytes: Option<u64>,
    pub gc_grace_ms: Option<u64>,
    pub max_inflight_request_bytes: Option<usize>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub frame_read_timeout_ms: Option<u64>,
    pub connections_max_idle_ms: Option<u64>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub tls_client_auth: Option<String>,
    pub tls_ca_file: Option<PathBuf>,
    pub listeners: Option<String>,
    pub advertised_listeners: Option<String>,
    pub listener_security_protocol_map: Option<String>,
    pub sasl_enabled_mechanisms: Option<String>,
    pub super_users: Option<String>,
    pub allow_everyone_if_no_acl_found: Option<bool>,
    pub admin_user: Option<String>,
    pub admin_password: Option<String>,
    pub connections_max_reauth_ms: Option<u64>,
    pub sasl_oauthbearer_jwks_file: Option<PathBuf>,
    pub sasl_oauthbearer_expected_issuer: Option<String>,
    pub sasl_oauthbearer_expected_audience: Option<String>,
    pub sasl_oauthbearer_sub_claim_name: Option<String>,
    pub retention_ms: Option<i64>,
    pub retention_bytes: Option<i64>,
    pub segment_ms: Option<i64>,
    pub log_segment_bytes: Option<i64>,
    pub delete_retention_ms: Option<i64>,
    pub min_compaction_lag_ms: Option<i64>,
    pub max_compaction_lag_ms: Option<i64>,
    pub min_cleanable_dirty_ratio: Option<f64>,
    pub cleanup_policy: Option<String>,
}

impl FileConfig {
    /// The file at `path`, or all keys unset when there is none.
    pub fn read(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.message().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ServeArgs;
    use crate::config::Config;

    #[test]
    fn unknown_file_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:1\"\nlisten_typo = 3\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        let e = Config::load(&args).unwrap_err().to_string();
        assert!(e.contains("unknown field `listen_typo`"), "{e}");
    }

    /// Every key of the file, as serde lists them: `deserialize_struct` is handed the
    /// struct's field names, and this deserializer returns them as its error.
    fn file_keys() -> &'static [&'static str] {
        #[derive(Debug)]
        struct Keys(&'static [&'static str]);
        impl std::fmt::Display for Keys {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
        impl std::error::Error for Keys {}
        impl serde::de::Error for Keys {
            fn custom<T: std::fmt::Display>(_: T) -> Self {
                Keys(&[])
            }
        }
        struct Probe;
        impl<'de> serde::Deserializer<'de> for Probe {
            type Error = Keys;
            fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Keys> {
                Err(Keys(&[]))
            }
            fn deserialize_struct<V: serde::de::Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Keys> {
                Err(Keys(fields))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
                byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
                enum identifier ignored_any
            }
        }
        match FileConfig::deserialize(Probe) {
            Err(Keys(keys)) => keys,
            Ok(_) => unreachable!("the probe yields no values"),
        }
    }

    /// A key added to the file without its flag and variable fails here.
    #[test]
    fn every_file_key_is_a_flag_and_a_variable() {
        use clap::Args;
        let keys = file_keys();
        assert!(keys.len() >= 27 && keys.contains(&"default_partitions"));
        let command = ServeArgs::augment_args(clap::Command::new("serve"));
        for key in keys {
            let flag = key.replace('_', "-");
            let arg = command
                .get_arguments()
                .find(|a| a.get_long() == Some(flag.as_str()))
                .unwrap_or_else(|| panic!("config key {key} has no --{flag} flag"));
            let env = format!("STRATA_{}", key.to_uppercase());
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(env.as_str()),
                "--{flag} needs variable {env}"
            );
        }
        // And the README's table names every one of them.
        let readme = include_str!("../../README.md");
        for key in keys {
            let row = format!("| `--{}", key.replace('_', "-"));
            assert!(readme.contains(&row), "README.md lacks a row {row}…");
        }
    }
}

//! The object store: where the log lives, how S3 encrypts it, how long an upload may take.

use std::path::Path;
use std::time::Duration;

use super::{millis, ConfigError, FileConfig, NodeConfig};
use crate::cli::ServeArgs;

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `store`: the object store's URL (file://, s3:// or memory://).
    pub url: String,
    /// `s3_sse`, `s3_sse_kms_key_id`, `s3_bucket_key`: server-side encryption S3
    /// applies to the objects written (s3:// stores only).
    pub s3_sse: ServerSideEncryption,
    /// `upload_timeout_ms`: how long one upload may take.
    pub upload_timeout: Duration,
    /// `recover_from_store`: rebuild the metadata from the store's snapshot and objects,
    /// even if the data directory has a metadata log (it is set aside).
    pub recover_from_store: bool,
    /// `max_puts_per_second`: this broker's PUTs per second, averaged over a minute;
    /// None for no bound.
    pub max_puts_per_second: Option<f64>,
}

/// The PUT budget on an `s3://` store unless one is given.
pub const DEFAULT_S3_PUTS_PER_SECOND: f64 = 10.0;

impl StoreConfig {
    /// The store defaults to a directory under the node's `data_dir`.
    pub fn load(
        args: &ServeArgs,
        file: &FileConfig,
        node: &NodeConfig,
    ) -> Result<Self, ConfigError> {
        let url = match args.store.clone().or(file.store.clone()) {
            Some(url) => url,
            None => default_store(&node.data_dir)?,
        };
        let s3_sse = server_side_encryption(
            args.s3_sse.clone().or(file.s3_sse.clone()),
            args.s3_sse_kms_key_id
                .clone()
                .or(file.s3_sse_kms_key_id.clone()),
            args.s3_bucket_key.or(file.s3_bucket_key),
            &url,
        )?;
        let upload_timeout = millis(
            "upload_timeout_ms",
            args.upload_timeout_ms
                .or(file.upload_timeout_ms)
                .unwrap_or(60_000),
            1000..=86_400_000,
            "use 1000 to 86400000 milliseconds",
        )?;
        // S3 bills every PUT: on s3:// a broker keeps to 10 a second (about $130 a month)
        // unless told otherwise; a local directory pays nothing per PUT. With the metadata
        // log riding in data objects and light partitions sharing compaction objects,
        // nearly every token goes to data (docs/performance.md, "The PUT budget").
        let puts = args
            .max_puts_per_second
            .or(file.max_puts_per_second)
            .unwrap_or(if url.starts_with("s3://") {
                DEFAULT_S3_PUTS_PER_SECOND
            } else {
                0.0
            });
        if !(puts == 0.0 || (1.0..=100_000.0).contains(&puts)) {
            return Err(ConfigError::Invalid {
                key: "max_puts_per_second",
                value: puts.to_string(),
                hint: "use 0 (no bound) or 1 to 100000",
            });
        }
        Ok(Self {
            max_puts_per_second: (puts > 0.0).then_some(puts),
            url,
            s3_sse,
            upload_timeout,
            recover_from_store: args.recover_from_store || file.recover_from_store.unwrap_or(false),
        })
    }
}

/// Server-side encryption S3 applies to every object Strata writes (PUTs and multipart
/// uploads alike). Built from the checked `s3_sse*` settings, so a KMS mode always has
/// its key and a bucket key only goes with SSE-KMS (DSSE-KMS has none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ServerSideEncryption {
    /// No encryption headers: the bucket's default encryption applies.
    #[default]
    None,
    /// SSE-S3 (`AES256`), keys managed by S3.
    S3,
    /// SSE-KMS (`aws:kms`) with this key id, alias or ARN; `bucket_key` overrides the
    /// bucket's S3 Bucket Key setting when given.
    Kms {
        key_id: String,
        bucket_key: Option<bool>,
    },
    /// Dual-layer DSSE-KMS (`aws:kms:dsse`) with this key id, alias or ARN.
    DsseKms { key_id: String },
}

impl ServerSideEncryption {
    /// The `x-amz-server-side-encryption` value S3 reports back, for logs.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Self::None => "bucket default",
            Self::S3 => "AES256",
            Self::Kms { .. } => "aws:kms",
            Self::DsseKms { .. } => "aws:kms:dsse",
        }
    }
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
    use ServerSideEncryption as Sse;
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
    use crate::config::Config;

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
        let loaded = |args: ServeArgs| Config::load(&args).map(|c| c.store.s3_sse);
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
            c.store.s3_sse,
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
        assert!(matches!(c.store.s3_sse, Sse::Kms { key_id, .. } if key_id == "k-flag"));
    }

    #[test]
    fn upload_timeout_out_of_range_is_refused_not_clamped() {
        let refused = |args: ServeArgs| Config::load(&args).unwrap_err().to_string();
        let e = refused(ServeArgs {
            upload_timeout_ms: Some(10),
            ..Default::default()
        });
        assert!(
            e.starts_with("upload_timeout_ms = \"10\" is not valid"),
            "{e}"
        );
        let c = Config::load(&ServeArgs {
            upload_timeout_ms: Some(1000),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.store.upload_timeout, Duration::from_secs(1));
    }
}

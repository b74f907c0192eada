//! The object store behind a URL: `file:///dir`, `s3://bucket/prefix`, `memory://`.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::TryStreamExt;

use bytes::Bytes;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, AwsCredential};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    BackoffConfig, ClientOptions, CredentialProvider, ObjectStore, ObjectStoreExt, PutPayload,
    RetryConfig,
};
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("store URL {url:?} is not valid: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot use local store directory {dir}: {source}")]
    LocalDir { dir: String, source: std::io::Error },
    #[error("object store error on {path}: {source}")]
    Store {
        path: String,
        source: object_store::Error,
    },
    #[error("object {path} is not a valid segment: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("S3 server-side encryption cannot be used with store {url:?}: {reason}")]
    Encryption { url: String, reason: String },
}

/// Sets the builder so that every write request carries the encryption headers.
fn apply_sse(
    sse: &ServerSideEncryption,
    builder: AmazonS3Builder,
) -> object_store::Result<AmazonS3Builder> {
    Ok(match sse {
        ServerSideEncryption::None => builder,
        // object_store has no method for SSE-S3 and does not export the key enum.
        ServerSideEncryption::S3 => builder.with_config(
            "aws_server_side_encryption".parse::<AmazonS3ConfigKey>()?,
            "AES256",
        ),
        ServerSideEncryption::Kms { key_id, bucket_key } => {
            let builder = builder.with_sse_kms_encryption(key_id);
            match bucket_key {
                Some(enabled) => builder.with_bucket_key(*enabled),
                None => builder,
            }
        }
        ServerSideEncryption::DsseKms { key_id } => builder.with_dsse_kms_encryption(key_id),
    })
}

pub use crate::config::ServerSideEncryption;
use crate::storage::budget::{Class, PutBudget};

/// What a store request is for: requests are counted by purpose and kind, so that the
/// bill can be read by what causes it (`strata_store_requests_total{purpose, kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Flush objects of the write buffer.
    Data,
    /// Reads for consumers.
    Fetch,
    /// Metadata log chunks shipped to the bucket, and their recovery.
    Metadata,
    /// Metadata snapshots shipped to the bucket.
    Snapshot,
    /// Compaction of flush objects into segments.
    Compaction,
    /// The log cleaner (key compaction).
    Cleaner,
    /// Garbage and orphan collection.
    Gc,
    /// Anything else: the start-up probe, readiness checks.
    Other,
}

impl Purpose {
    /// Which PUT budget bucket its PUTs (and LISTs, billed alike) are charged to.
    pub fn budget_class(self) -> Class {
        match self {
            Purpose::Compaction | Purpose::Cleaner | Purpose::Gc => Class::Background,
            _ => Class::Foreground,
        }
    }

    pub const ALL: [Purpose; 8] = [
        Purpose::Data,
        Purpose::Fetch,
        Purpose::Metadata,
        Purpose::Snapshot,
        Purpose::Compaction,
        Purpose::Cleaner,
        Purpose::Gc,
        Purpose::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Purpose::Data => "data",
            Purpose::Fetch => "fetch",
            Purpose::Metadata => "metadata",
            Purpose::Snapshot => "snapshot",
            Purpose::Compaction => "compaction",
            Purpose::Cleaner => "cleaner",
            Purpose::Gc => "gc",
            Purpose::Other => "other",
        }
    }
}

/// The kinds of request, as S3 prices them (PUT, COPY, POST and LIST share a price).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Put,
    Get,
    List,
    Delete,
}

impl RequestKind {
    pub const ALL: [RequestKind; 4] = [
        RequestKind::Put,
        RequestKind::Get,
        RequestKind::List,
        RequestKind::Delete,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RequestKind::Put => "put",
            RequestKind::Get => "get",
            RequestKind::List => "list",
            RequestKind::Delete => "delete",
        }
    }
}

/// A handle on the bucket (or directory) that holds every segment object, tagged with
/// what its requests are for ([`ObjectStorage::for_purpose`] gives each component its
/// own tag on the same store).
#[derive(Clone, Debug)]
pub struct ObjectStorage {
    inner: Arc<dyn ObjectStore>,
    description: String,
    counters: Arc<RequestCounters>,
    purpose: Purpose,
    /// The PUT budget every handle on this store shares; None: no bound.
    budget: Option<Arc<PutBudget>>,
    /// Whether large objects use multipart upload (S3; a local directory gains nothing).
    multipart: bool,
    /// The directory of a `file://` store, for writes that pace their own flushing.
    local_root: Option<std::path::PathBuf>,
}

/// Objects this large are uploaded in parallel parts. Each part (plus the create and
/// complete calls) is a billed request, so only objects well above the default 16 MiB
/// flush size (a larger `flush_bytes`) go this way; S3 parts must be at least 5 MiB.
const MULTIPART_THRESHOLD: usize = 48 << 20;
const MULTIPART_PART: usize = 16 << 20;

/// Requests sent to the store, for the request-cost figures (PUTs and GETs per GB).
#[derive(Debug, Default)]
pub struct RequestCounters {
    pub puts: AtomicU64,
    pub gets: AtomicU64,
    pub lists: AtomicU64,
    pub deletes: AtomicU64,
    /// By purpose (in `Purpose::ALL` order) and kind (in `RequestKind::ALL` order).
    by_purpose: [[AtomicU64; 4]; 8],
    /// Whether the last request that completed failed (not-found is an answer, not a
    /// failure): readiness reports a store this broker cannot reach.
    pub last_failed: std::sync::atomic::AtomicBool,
}

impl RequestCounters {
    fn count(&self, purpose: Purpose, kind: RequestKind) {
        let total = match kind {
            RequestKind::Put => &self.puts,
            RequestKind::Get => &self.gets,
            RequestKind::List => &self.lists,
            RequestKind::Delete => &self.deletes,
        };
        total.fetch_add(1, Ordering::Relaxed);
        self.by_purpose[purpose as usize][kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests of `kind` made for `purpose` since start.
    pub fn of(&self, purpose: Purpose, kind: RequestKind) -> u64 {
        self.by_purpose[purpose as usize][kind as usize].load(Ordering::Relaxed)
    }
}

impl ObjectStorage {
    /// The same store, its requests counted as made for `purpose`.
    pub fn for_purpose(&self, purpose: Purpose) -> Self {
        Self {
            purpose,
            ..self.clone()
        }
    }

    /// The same store with its PUTs bounded by `budget` (every handle derived from it
    /// shares the one budget).
    pub fn with_put_budget(self, budget: Option<Arc<PutBudget>>) -> Self {
        Self { budget, ..self }
    }

    /// The PUT budget, if the store has one.
    pub fn put_budget(&self) -> Option<&PutBudget> {
        self.budget.as_deref()
    }

    /// Counts a request about to be sent (and charges a PUT to the budget).
    fn count(&self, kind: RequestKind) {
        self.counters.count(self.purpose, kind);
        if kind == RequestKind::Put || kind == RequestKind::List {
            if let Some(budget) = &self.budget {
                budget.charge(self.purpose.budget_class());
            }
        }
    }

    /// Times a store request, counted already, and notes its outcome.
    async fn observed<T>(
        &self,
        kind: RequestKind,
        request: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> object_store::Result<T> {
        let started = std::time::Instant::now();
        let result = request.await;
        // Not-found is an answer from a reachable store, not a failure.
        let failed = result
            .as_ref()
            .is_err_and(|e| !matches!(e, object_store::Error::NotFound { .. }));
        self.note(kind, started, failed);
        result
    }

    fn note(&self, kind: RequestKind, started: std::time::Instant, failed: bool) {
        use crate::telemetry::{STORE_ERRORS, STORE_REQUESTS, STORE_SECONDS};
        let (kind, purpose) = (kind.name(), self.purpose.name());
        metrics::counter!(STORE_REQUESTS, "kind" => kind, "purpose" => purpose).increment(1);
        metrics::histogram!(STORE_SECONDS, "kind" => kind).record(started.elapsed().as_secs_f64());
        if failed {
            metrics::counter!(STORE_ERRORS, "kind" => kind, "purpose" => purpose).increment(1);
        }
        self.counters.last_failed.store(failed, Ordering::Relaxed);
    }
}

/// An object found by listing.
#[derive(Debug, Clone)]
pub struct ListedObject {
    pub path: String,
    pub size: u64,
    pub last_modified: SystemTime,
}

impl ObjectStorage {
    pub fn open(url: &str) -> Result<Self, StorageError> {
        Self::open_with_encryption(url, &ServerSideEncryption::None)
    }

    /// Opens the store; `sse` is applied to every write and needs an `s3://` store.
    pub fn open_with_encryption(
        url: &str,
        sse: &ServerSideEncryption,
    ) -> Result<Self, StorageError> {
        let bad = |reason: &str| StorageError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let parsed = Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        if *sse != ServerSideEncryption::None && parsed.scheme() != "s3" {
            return Err(StorageError::Encryption {
                url: url.to_owned(),
                reason: "it applies only to an s3:// store".into(),
            });
        }
        let mut local_root = None;
        let inner: Arc<dyn ObjectStore> = match parsed.scheme() {
            "file" => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|_| bad("use file:///absolute/path"))?;
                std::fs::create_dir_all(&dir).map_err(|source| StorageError::LocalDir {
                    dir: dir.display().to_string(),
                    source,
                })?;
                let fs = LocalFileSystem::new_with_prefix(&dir).map_err(|e| bad(&e.to_string()))?;
                local_root = Some(dir.clone());
                Arc::new(fs)
            }
            "memory" => Arc::new(InMemory::new()),
            "s3" => {
                let bucket = parsed
                    .host_str()
                    .ok_or_else(|| bad("use s3://bucket/prefix"))?;
                let encryption = |e: object_store::Error| StorageError::Encryption {
                    url: url.to_owned(),
                    reason: e.to_string(),
                };
                let s3 = apply_sse(sse, s3_builder(bucket))
                    .map_err(encryption)?
                    .build()
                    .map_err(|e| bad(&e.to_string()))?;
                tracing::info!(
                    sse = sse.algorithm(),
                    "S3 server-side encryption for written objects"
                );
                let prefix = parsed.path().trim_matches('/');
                if prefix.is_empty() {
                    Arc::new(s3)
                } else {
                    Arc::new(PrefixStore::new(s3, prefix))
                }
            }
            other => {
                return Err(bad(&format!(
                    "scheme {other:?} is not supported; use file://, s3:// or memory://"
                )))
            }
        };
        Ok(Self {
            inner,
            description: url.to_owned(),
            counters: Arc::default(),
            purpose: Purpose::Other,
            budget: None,
            multipart: parsed.scheme() == "s3",
            local_root,
        })
    }

    pub fn counters(&self) -> &RequestCounters {
        &self.counters
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    pub async fn put(&self, path: &str, data: Bytes) -> Result<(), StorageError> {
        if self.multipart && data.len() >= MULTIPART_THRESHOLD {
            return self.put_multipart(path, data).await;
        }
        self.count(RequestKind::Put);
        let location = Path::from(path);
        let put = self.inner.put(&location, PutPayload::from(data));
        self.observed(RequestKind::Put, put)
            .await
            .map(|_| ())
            .map_err(|source| store_error(path, source))
    }

    /// Large objects go up as parts in parallel: a single PUT stream to S3 tops out far
    /// below what several connections carry. (Counted as one PUT per part.)
    async fn put_multipart(&self, path: &str, data: Bytes) -> Result<(), StorageError> {
        let location = Path::from(path);
        // Creating and completing the upload are billed requests too.
        self.count(RequestKind::Put);
        self.count(RequestKind::Put);
        let mut upload = self
            .inner
            .put_multipart(&location)
            .await
            .map_err(|source| store_error(path, source))?;
        let parts: Vec<_> = (0..data.len())
            .step_by(MULTIPART_PART)
            .map(|start| {
                self.count(RequestKind::Put);
                self.observed(
                    RequestKind::Put,
                    upload.put_part(PutPayload::from(
                        data.slice(start..(start + MULTIPART_PART).min(data.len())),
                    )),
                )
            })
            .collect();
        if let Err(source) = futures::future::try_join_all(parts).await {
            let _ = upload.abort().await;
            return Err(store_error(path, source));
        }
        upload
            .complete()
            .await
            .map(|_| ())
            .map_err(|source| store_error(path, source))
    }

    pub async fn get_range(&self, path: &str, range: Range<u64>) -> Result<Bytes, StorageError> {
        self.count(RequestKind::Get);
        let location = Path::from(path);
        let get = self.inner.get_range(&location, range);
        self.observed(RequestKind::Get, get)
            .await
            .map_err(|source| store_error(path, source))
    }

    pub async fn get(&self, path: &str) -> Result<Bytes, StorageError> {
        self.count(RequestKind::Get);
        let get = async {
            let result = self.inner.get(&Path::from(path)).await?;
            result.bytes().await
        };
        self.observed(RequestKind::Get, get)
            .await
            .map_err(|source| store_error(path, source))
    }
}

impl ObjectStorage {
    /// None when the object does not exist.
    pub async fn get_opt(&self, path: &str) -> Result<Option<Bytes>, StorageError> {
        match self.get(path).await {
            Ok(data) => Ok(Some(data)),
            Err(StorageError::Store {
                source: object_store::Error::NotFound { .. },
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<ListedObject>, StorageError> {
        self.count(RequestKind::List);
        let list = self.inner.list(Some(&Path::from(prefix))).try_collect();
        let objects: Vec<_> = self
            .observed(RequestKind::List, list)
            .await
            .map_err(|source| store_error(prefix, source))?;
        Ok(objects
            .into_iter()
            .map(|o| ListedObject {
                path: o.location.to_string(),
                size: o.size,
                last_modified: SystemTime::from(o.last_modified),
            })
            .collect())
    }

    /// A large upload from background work (compaction), written so that it does not
    /// stall the foreground: on a local directory, in chunks each flushed to disk before
    /// the next, since a burst of dirty pages makes every fsync behind it (the Raft log's,
    /// on the produce path) wait for all of it; elsewhere, an ordinary upload with retries.
    pub async fn put_background(
        &self,
        path: &str,
        data: &Bytes,
        timeout: Duration,
    ) -> Result<(), StorageError> {
        let Some(root) = &self.local_root else {
            return self.put_with_retry(path, data, timeout).await;
        };
        self.count(RequestKind::Put);
        let target = root.join(path);
        let data = data.clone();
        let started = std::time::Instant::now();
        let written = tokio::task::spawn_blocking(move || write_paced(&target, &data)).await;
        self.note(RequestKind::Put, started, !matches!(written, Ok(Ok(()))));
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StorageError::LocalDir {
                dir: root.join(path).display().to_string(),
                source: e,
            }),
            Err(e) => Err(StorageError::LocalDir {
                dir: root.join(path).display().to_string(),
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }

    /// Retries an upload with capped exponential backoff and jitter until `timeout`: the
    /// store may be throttling (503 SlowDown), restarting or briefly unreachable.
    pub async fn put_with_retry(
        &self,
        path: &str,
        data: &Bytes,
        timeout: Duration,
    ) -> Result<(), StorageError> {
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.put(path, data.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) if started.elapsed() + backoff >= timeout => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, object = path, retry_in_ms = backoff.as_millis() as u64, "upload failed; retrying");
                    tokio::time::sleep(backoff + jitter(backoff)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    pub async fn delete(&self, path: &str) -> Result<(), StorageError> {
        self.count(RequestKind::Delete);
        let location = Path::from(path);
        let delete = self.inner.delete(&location);
        match self.observed(RequestKind::Delete, delete).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(store_error(path, source)),
        }
    }
}

/// Writes `data` to a temporary file beside `target` in chunks, flushing each to disk,
/// then renames it into place (a reader never sees a partial object).
fn write_paced(target: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    const CHUNK: usize = 4 << 20;
    let dir = target
        .parent()
        .ok_or_else(|| std::io::Error::other("object path has no directory"))?;
    std::fs::create_dir_all(dir)?;
    let mut tmp_name = target.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp_name);
    let mut file = std::fs::File::create(&tmp)?;
    for chunk in data.chunks(CHUNK) {
        file.write_all(chunk)?;
        file.sync_data()?;
    }
    drop(file);
    std::fs::rename(&tmp, target)
}

/// Up to half of `d`, from the clock's nanoseconds: spreads retries without a RNG.
fn jitter(d: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    d.mul_f64(f64::from(nanos % 1000) / 2000.0)
}

/// S3 settings from the standard `AWS_*` variables (`AWS_ENDPOINT_URL`, `AWS_REGION`,
/// `AWS_ACCESS_KEY_ID`, …). An `http://` endpoint given explicitly is allowed, as MinIO
/// and other local servers need. Requests are path-style, which every S3-compatible
/// server accepts.
fn s3_builder(bucket: &str) -> AmazonS3Builder {
    let endpoint = std::env::var("AWS_ENDPOINT_URL_S3")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .or_else(|_| std::env::var("AWS_ENDPOINT"))
        .ok();
    let allow_http = endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"))
        || std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v == "true" || v == "1");
    let region = std::env::var("AWS_REGION")
        .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
        .ok()
        .or_else(region_from_chain)
        .unwrap_or_else(|| "us-east-1".into());
    // Each request retries briefly; the write buffer retries whole uploads on top, so a
    // long outage turns into produce timeouts rather than requests stuck for minutes.
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 4,
        retry_timeout: Duration::from_secs(10),
    };
    let builder = AmazonS3Builder::from_env();
    // Keys in the environment are read by object_store itself (above); otherwise the
    // standard AWS chain (profile files, SSO, web identity, ECS, instance metadata).
    let builder = if std::env::var_os("AWS_ACCESS_KEY_ID").is_some() {
        builder
    } else {
        builder.with_credentials(Arc::new(AwsChainCredentials::default()))
    };
    builder
        .with_bucket_name(bucket)
        .with_region(region)
        .with_retry(retry)
        .with_client_options(
            ClientOptions::new()
                .with_allow_http(allow_http)
                .with_connect_timeout(Duration::from_secs(3))
                .with_timeout(Duration::from_secs(30)),
        )
}

/// The region from aws-config's chain (profile files, then instance metadata), for when
/// `AWS_REGION` is unset. The chain is async and `open` is not, so it runs on a thread of
/// its own with a small runtime; this works whatever runtime (if any) the caller is on.
fn region_from_chain() -> Option<String> {
    std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            aws_config::default_provider::region::DefaultRegionChain::builder()
                .build()
                .region()
                .await
                .map(|r| r.to_string())
        })
    })
    .join()
    .ok()
    .flatten()
}

/// Credentials from aws-config's default chain, handed to object_store. The chain is built
/// on first use (it is async); the credentials are cached and fetched again
/// `REFRESH_BEFORE_EXPIRY` before they expire (static ones are kept for good).
#[derive(Default)]
struct AwsChainCredentials {
    chain:
        tokio::sync::OnceCell<aws_config::default_provider::credentials::DefaultCredentialsChain>,
    cached: tokio::sync::Mutex<Option<(Arc<AwsCredential>, Option<SystemTime>)>>,
}

const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(300);

impl std::fmt::Debug for AwsChainCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AwsChainCredentials")
    }
}

#[async_trait::async_trait]
impl CredentialProvider for AwsChainCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        use aws_credential_types::provider::ProvideCredentials;
        let mut cached = self.cached.lock().await;
        if let Some((credential, expiry)) = cached.as_ref() {
            let fresh = expiry.is_none_or(|at| SystemTime::now() + REFRESH_BEFORE_EXPIRY < at);
            if fresh {
                return Ok(credential.clone());
            }
        }
        let chain = self
            .chain
            .get_or_init(|| {
                aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                    .build()
            })
            .await;
        let c = chain
            .provide_credentials()
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: format!("no AWS credentials from the environment, profile, web identity or instance metadata: {e}").into(),
            })?;
        let credential = Arc::new(AwsCredential {
            key_id: c.access_key_id().to_owned(),
            secret_key: c.secret_access_key().to_owned(),
            token: c.session_token().map(str::to_owned),
        });
        *cached = Some((credential.clone(), c.expiry()));
        Ok(credential)
    }
}

fn store_error(path: &str, source: object_store::Error) -> StorageError {
    StorageError::Store {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(builder: &AmazonS3Builder, key: &str) -> Option<String> {
        builder.get_config_value(&key.parse().unwrap())
    }

    #[test]
    fn encryption_reaches_the_builder() {
        let none = apply_sse(&ServerSideEncryption::None, AmazonS3Builder::new()).unwrap();
        assert_eq!(setting(&none, "aws_server_side_encryption"), None);
        let s3 = apply_sse(&ServerSideEncryption::S3, AmazonS3Builder::new()).unwrap();
        assert_eq!(
            setting(&s3, "aws_server_side_encryption").as_deref(),
            Some("AES256")
        );
        let kms = apply_sse(
            &ServerSideEncryption::Kms {
                key_id: "alias/strata".into(),
                bucket_key: Some(true),
            },
            AmazonS3Builder::new(),
        )
        .unwrap();
        assert_eq!(
            setting(&kms, "aws_server_side_encryption").as_deref(),
            Some("aws:kms")
        );
        assert_eq!(
            setting(&kms, "aws_sse_kms_key_id").as_deref(),
            Some("alias/strata")
        );
        assert_eq!(
            setting(&kms, "aws_sse_bucket_key_enabled").as_deref(),
            Some("true")
        );
        let dsse = apply_sse(
            &ServerSideEncryption::DsseKms {
                key_id: "k-1".into(),
            },
            AmazonS3Builder::new(),
        )
        .unwrap();
        assert_eq!(
            setting(&dsse, "aws_server_side_encryption").as_deref(),
            Some("aws:kms:dsse")
        );
        assert_eq!(setting(&dsse, "aws_sse_bucket_key_enabled"), None);
    }

    #[test]
    fn encryption_needs_an_s3_store() {
        let e = ObjectStorage::open_with_encryption("memory://", &ServerSideEncryption::S3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("applies only to an s3:// store"), "{e}");
        assert!(
            ObjectStorage::open_with_encryption("memory://", &ServerSideEncryption::None).is_ok()
        );
    }
}

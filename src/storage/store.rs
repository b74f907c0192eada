//! The object store behind a URL: `file:///dir`, `s3://bucket/prefix`, `memory://`.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
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
}

/// A handle on the bucket (or directory) that holds every segment object.
#[derive(Clone, Debug)]
pub struct ObjectStorage {
    inner: Arc<dyn ObjectStore>,
    description: String,
}

impl ObjectStorage {
    pub fn open(url: &str) -> Result<Self, StorageError> {
        let bad = |reason: &str| StorageError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let parsed = Url::parse(url).map_err(|e| bad(&e.to_string()))?;
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
                Arc::new(fs)
            }
            "memory" => Arc::new(InMemory::new()),
            "s3" => {
                let bucket = parsed
                    .host_str()
                    .ok_or_else(|| bad("use s3://bucket/prefix"))?;
                let s3 = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(|e| bad(&e.to_string()))?;
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
        })
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    pub async fn put(&self, path: &str, data: Bytes) -> Result<(), StorageError> {
        self.inner
            .put(&Path::from(path), PutPayload::from(data))
            .await
            .map(|_| ())
            .map_err(|source| store_error(path, source))
    }

    pub async fn get_range(&self, path: &str, range: Range<u64>) -> Result<Bytes, StorageError> {
        self.inner
            .get_range(&Path::from(path), range)
            .await
            .map_err(|source| store_error(path, source))
    }

    pub async fn get(&self, path: &str) -> Result<Bytes, StorageError> {
        let result = self
            .inner
            .get(&Path::from(path))
            .await
            .map_err(|source| store_error(path, source))?;
        result
            .bytes()
            .await
            .map_err(|source| store_error(path, source))
    }
}

fn store_error(path: &str, source: object_store::Error) -> StorageError {
    StorageError::Store {
        path: path.to_owned(),
        source,
    }
}

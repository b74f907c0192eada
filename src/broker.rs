//! The broker: everything a request handler needs, started in the right order.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::task::JoinHandle;
use tracing::info;

use crate::config::Config;
use crate::fetch::FetchReader;
use crate::group::{GroupConfig, GroupCoordinator};
use crate::metadata::state::{valid_topic_name, Command, Response, StateError};
use crate::metadata::{shipping, Metadata, MetadataError};
use crate::produce::buffer::BufferConfig;
use crate::produce::WriteBuffer;
use crate::storage::{orphans, BlockCache, ObjectStorage, StorageError};

/// Why the broker could not start; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "cannot create data directory {dir}: {source} (set --data-dir to a writable directory)"
    )]
    DataDir { dir: String, source: std::io::Error },
    #[error("{0}")]
    Store(#[from] StorageError),
    #[error("object store {url} is not usable: {source} (check the bucket exists and the credentials may write to it)")]
    StoreProbe { url: String, source: StorageError },
    #[error("cannot open the metadata log: {0}")]
    Metadata(#[from] MetadataError),
    #[error("cannot recover the metadata from the object store: {0}")]
    Recovery(#[from] crate::metadata::shipping::ShippingError),
    #[error("cannot set the old metadata log {dir} aside: {source}")]
    SetAside { dir: String, source: std::io::Error },
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{0}")]
    State(StateError),
    #[error("metadata unavailable: {0}")]
    Metadata(#[from] MetadataError),
}

/// What a request learns about a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicLookup {
    Found {
        id: [u8; 16],
        partitions: i32,
    },
    Missing,
    Invalid,
    /// It should exist (auto-create) but the metadata log could not be reached.
    Unavailable,
}

pub struct Broker {
    pub config: Config,
    pub cluster_id: String,
    pub metadata: Arc<Metadata>,
    pub buffer: WriteBuffer,
    pub fetcher: FetchReader,
    pub groups: Arc<GroupCoordinator>,
    pub storage: ObjectStorage,
}

/// Background work owned by a running broker.
pub struct BrokerTasks {
    pub flusher: JoinHandle<()>,
    pub snapshot_shipper: JoinHandle<()>,
    pub orphan_collector: JoinHandle<()>,
}

impl BrokerTasks {
    pub fn abort(&self) {
        self.snapshot_shipper.abort();
        self.orphan_collector.abort();
    }
}

impl Broker {
    pub async fn start(config: Config) -> Result<(Arc<Self>, BrokerTasks), StartError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            dir: config.data_dir.display().to_string(),
            source,
        })?;
        let storage = ObjectStorage::open(&config.store)?;
        // Fail at start-up, in one line, rather than on the first produce.
        storage
            .put("_strata/probe", Bytes::from_static(b"ok"))
            .await
            .map_err(|source| StartError::StoreProbe {
                url: config.store.clone(),
                source,
            })?;
        let raft_dir = config.data_dir.join("raft");
        let has_log = raft_dir.join("raft.log").exists();
        if has_log && config.recover_from_store {
            let aside = config.data_dir.join(format!(
                "raft.before-recovery-{}",
                crate::protocol::now_ms()
            ));
            std::fs::rename(&raft_dir, &aside).map_err(|source| StartError::SetAside {
                dir: raft_dir.display().to_string(),
                source,
            })?;
            info!(aside = %aside.display(), "old metadata log set aside for recovery");
        }
        let metadata =
            Arc::new(Metadata::open(config.node_id, &raft_dir, config.snapshot_every).await?);
        // A broker with no metadata log of its own (a new machine, a wiped disk) rebuilds
        // it from the bucket: the store is the only durable copy.
        if (!has_log || config.recover_from_store) && metadata.read(|s| s.is_empty()) {
            shipping::recover(&metadata, &storage, config.upload_timeout * 2).await?;
        }
        let cache = Arc::new(BlockCache::new(config.cache_bytes));
        let (buffer, flusher) = WriteBuffer::start(
            BufferConfig {
                flush_interval: config.flush_interval,
                flush_bytes: config.flush_bytes,
                max_inflight_uploads: 4,
                max_buffered_bytes: config.buffer_max_bytes,
                upload_timeout: config.upload_timeout,
                node_id: config.node_id,
            },
            storage.clone(),
            metadata.clone(),
            cache.clone(),
        );
        let snapshot_shipper = tokio::spawn(shipping::ship_snapshots(
            metadata.clone(),
            storage.clone(),
            config.store_snapshot_interval,
        ));
        let orphan_collector = tokio::spawn(orphans::collect_orphans(
            metadata.clone(),
            storage.clone(),
            config.orphan_grace,
        ));
        let fetcher = FetchReader::new(metadata.clone(), storage.clone(), cache);
        let groups = GroupCoordinator::new(GroupConfig {
            initial_rebalance_delay: config.group_initial_rebalance_delay,
            ..GroupConfig::default()
        });
        let cluster_id = format!("strata-{:08x}", crc32c::crc32c(config.store.as_bytes()));
        let topics = metadata.read(|s| s.topics().len());
        info!(topics, store = %config.store, "metadata loaded");
        let broker = Arc::new(Self {
            config,
            cluster_id,
            metadata,
            buffer,
            fetcher,
            groups,
            storage,
        });
        let tasks = BrokerTasks {
            flusher,
            snapshot_shipper,
            orphan_collector,
        };
        Ok((broker, tasks))
    }

    pub fn node_id(&self) -> i32 {
        i32::try_from(self.config.node_id).unwrap_or(i32::MAX)
    }

    pub fn lookup_topic(&self, name: &str) -> TopicLookup {
        self.metadata.read(|s| match s.topic(name) {
            Some(t) => TopicLookup::Found {
                id: t.id,
                partitions: t.partitions.len() as i32,
            },
            None => TopicLookup::Missing,
        })
    }

    /// Looks a topic up, creating it with the default partition count when allowed
    /// (Kafka's auto.create.topics.enable).
    pub async fn lookup_or_create_topic(&self, name: &str, allow_create: bool) -> TopicLookup {
        match self.lookup_topic(name) {
            TopicLookup::Missing if !valid_topic_name(name) => TopicLookup::Invalid,
            TopicLookup::Missing if allow_create && self.config.auto_create_topics => {
                match self
                    .create_topic(name, self.config.default_partitions, BTreeMap::new())
                    .await
                {
                    Ok(_) | Err(BrokerError::State(StateError::TopicAlreadyExists)) => {
                        self.lookup_topic(name)
                    }
                    Err(BrokerError::State(_)) => TopicLookup::Invalid,
                    Err(BrokerError::Metadata(_)) => TopicLookup::Unavailable,
                }
            }
            found => found,
        }
    }

    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<[u8; 16], BrokerError> {
        let topic_id = *uuid::Uuid::new_v4().as_bytes();
        let cmd = Command::CreateTopic {
            name: name.to_owned(),
            topic_id,
            partitions,
            configs,
            now_ms: crate::protocol::now_ms(),
        };
        match self.metadata.propose(cmd).await? {
            Response::Topic(Ok(())) => {
                info!(topic = name, partitions, "topic created");
                Ok(topic_id)
            }
            Response::Topic(Err(e)) => Err(BrokerError::State(e)),
            _ => Err(BrokerError::State(StateError::InvalidTopic)),
        }
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), BrokerError> {
        match self
            .metadata
            .propose(Command::DeleteTopic {
                name: name.to_owned(),
            })
            .await?
        {
            Response::Topic(Ok(())) => {
                info!(topic = name, "topic deleted");
                Ok(())
            }
            Response::Topic(Err(e)) => Err(BrokerError::State(e)),
            _ => Err(BrokerError::State(StateError::UnknownTopicOrPartition)),
        }
    }

    /// The topic's `max.message.bytes`, or Kafka's default (1 MiB plus batch overhead).
    pub fn max_message_bytes(&self, topic: &str) -> usize {
        self.metadata
            .read(|s| {
                s.topic(topic)
                    .and_then(|t| t.configs.get("max.message.bytes"))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(1_048_588)
    }
}

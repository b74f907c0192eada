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
use crate::metadata::{Metadata, MetadataError};
use crate::produce::buffer::BufferConfig;
use crate::produce::WriteBuffer;
use crate::storage::{BlockCache, ObjectStorage, StorageError};

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
}

/// Background work owned by a running broker.
pub struct BrokerTasks {
    pub flusher: JoinHandle<()>,
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
        let metadata = Arc::new(
            Metadata::open(
                config.node_id,
                &config.data_dir.join("raft"),
                config.snapshot_every,
            )
            .await?,
        );
        let cache = Arc::new(BlockCache::new(config.cache_bytes));
        let (buffer, flusher) = WriteBuffer::start(
            BufferConfig {
                flush_interval: config.flush_interval,
                flush_bytes: config.flush_bytes,
                max_inflight_uploads: 4,
                node_id: config.node_id,
            },
            storage.clone(),
            metadata.clone(),
            cache.clone(),
        );
        let fetcher = FetchReader::new(metadata.clone(), storage, cache);
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
        });
        Ok((broker, BrokerTasks { flusher }))
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

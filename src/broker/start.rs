//! Starting a broker: the object store (probed at once, so a missing bucket is one clear
//! line), the metadata log (rebuilt from the bucket when this disk has none), the block
//! cache and the write buffer, then the background work, in the order each needs the last.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;
use tracing::info;

use super::{Broker, Counters};
use crate::background::cleaner::{self, CleanerConfig};
use crate::background::compaction::{self, CompactionConfig, CompactionPolicy};
use crate::background::stats::StatsSources;
use crate::background::{gc, orphans, retention, stats};
use crate::config::{Config, NodeConfig, RaftConfig, StoreConfig};
use crate::fetch::FetchReader;
use crate::group::{GroupCoordinator, GroupOptions};
use crate::metadata::{shipping, Metadata, MetadataError, RaftOptions};
use crate::produce::buffer::BufferConfig;
use crate::produce::WriteBuffer;
use crate::storage::budget::PutBudget;
use crate::storage::cache::{CacheError, CacheOptions};
use crate::storage::store::Purpose;
use crate::storage::{BlockCache, ObjectStorage, StorageError};
use crate::txn::TxnCoordinator;

/// Uploads the write buffer keeps in flight at once.
const MAX_INFLIGHT_UPLOADS: usize = 4;
/// How often stored consumer groups nobody asked about are looked for (or each session
/// timeout, if shorter).
const ADOPT_EVERY: Duration = Duration::from_secs(30);

/// Why the broker could not start; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "cannot create data directory {dir}: {source} (set --data-dir to a writable directory)"
    )]
    DataDir { dir: String, source: std::io::Error },
    #[error("{0}")]
    Store(#[from] StorageError),
    #[error("object store {url} is not usable: {detail} (check the bucket exists and the credentials may write to it)")]
    StoreProbe { url: String, detail: String },
    #[error("object store {url}: bucket {bucket:?} does not exist (create it, or fix --store)")]
    NoSuchBucket { url: String, bucket: String },
    #[error("object store {url}: access to bucket {bucket:?} denied: {detail} (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the role's permissions)")]
    StoreAccessDenied {
        url: String,
        bucket: String,
        detail: String,
    },
    #[error("cannot open the metadata log: {0}")]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("cannot recover the metadata from the object store: {0}")]
    Recovery(#[from] crate::metadata::shipping::ShippingError),
    #[error("cannot set the old metadata log {dir} aside: {source}")]
    SetAside { dir: String, source: std::io::Error },
    #[error(
        "automatic node id file {path}: {detail} (fix or delete it: a deleted file gets a new id)"
    )]
    NodeId { path: String, detail: String },
}

/// How long a broker started with `--node-id auto` waits for the voters to give it an id.
const AUTO_ID_TIMEOUT: Duration = Duration::from_secs(120);

/// Background work owned by a running broker.
pub struct BrokerTasks {
    pub flusher: JoinHandle<()>,
    pub snapshot_shipper: JoinHandle<()>,
    pub chores: Vec<JoinHandle<()>>,
}

impl BrokerTasks {
    /// Stops the background chores; the metadata shipper keeps running, since the
    /// leader acknowledges a proposal (a graceful stop's deregistration too) only once
    /// it is shipped.
    pub fn abort_chores(&self) {
        for chore in &self.chores {
            chore.abort();
        }
    }

    pub fn abort(&self) {
        self.abort_chores();
        self.snapshot_shipper.abort();
    }
}

impl Broker {
    /// Opens everything the broker serves from and starts its background work; the
    /// broker registers itself (`register`) once the caller is ready to serve.
    pub async fn start(mut config: Config) -> Result<(Arc<Self>, BrokerTasks), StartError> {
        let data_dir = &config.node.data_dir;
        std::fs::create_dir_all(data_dir).map_err(|source| StartError::DataDir {
            dir: data_dir.display().to_string(),
            source,
        })?;
        if config.node.auto_id {
            config.node.id = automatic_node_id(&config).await?;
        }
        let storage = open_store(&config.store).await?;
        let metadata = open_metadata(&config.node, &config.store, &config.raft, &storage).await?;
        let cache = Arc::new(BlockCache::open(cache_options(&config)).await?);
        let (buffer, flusher) = WriteBuffer::start(
            buffer_options(&config),
            storage.for_purpose(Purpose::Data),
            metadata.clone(),
            cache.clone(),
        );
        let counters = Counters::default();
        let snapshot_shipper = tokio::spawn(shipping::ship_metadata(
            metadata.clone(),
            storage.for_purpose(Purpose::Metadata),
            config.raft.store_snapshot_interval,
            counters.shipped.clone(),
        ));
        let fetcher = Arc::new(FetchReader::new(
            metadata.clone(),
            storage.for_purpose(Purpose::Fetch),
            cache.clone(),
        ));
        let chores = spawn_chores(&config, &metadata, &storage, &cache, &counters);
        let txn = TxnCoordinator::new(metadata.clone(), buffer.clone(), config.node.id);
        let groups = GroupCoordinator::new(GroupOptions {
            initial_rebalance_delay: config.groups.initial_rebalance_delay,
            consumer: crate::group::consumer::Settings {
                heartbeat_interval_ms: i32::try_from(
                    config.groups.consumer_heartbeat_interval.as_millis(),
                )
                .unwrap_or(i32::MAX),
                session_timeout_ms: i64::try_from(
                    config.groups.consumer_session_timeout.as_millis(),
                )
                .unwrap_or(i64::MAX),
                assignors: config.groups.consumer_assignors.clone(),
                ..Default::default()
            },
            ..GroupOptions::default()
        });
        let cluster_id = format!("strata-{:08x}", crc32c::crc32c(config.store.url.as_bytes()));
        let topics = metadata.read(|s| s.topics().len());
        info!(topics, store = %config.store.url, "metadata loaded");
        let broker = Arc::new(Self {
            config,
            cluster_id,
            metadata,
            buffer,
            fetcher,
            groups,
            storage,
            cache,
            counters,
            txn,
            draining: Default::default(),
        });
        // Members the ticker fences leave the group in the metadata log too.
        let weak = Arc::downgrade(&broker);
        broker
            .groups()
            .set_consumer_writer(Box::new(move |group, write| {
                if let Some(broker) = weak.upgrade() {
                    tokio::spawn(async move {
                        if let Err(e) = broker.write_consumer_group(&group, write).await {
                            tracing::debug!(%group, error = ?e, "a fenced member's leave was not written");
                        }
                    });
                }
            }));
        // Stored groups nobody asks about are taken up, so their fenced members leave.
        let weak = Arc::downgrade(&broker);
        let every = broker
            .config
            .groups
            .consumer_session_timeout
            .min(ADOPT_EVERY);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(broker) = weak.upgrade() else { break };
                let adopted = broker.adopt_consumer_groups();
                if adopted > 0 {
                    tracing::info!(
                        adopted,
                        "took up stored consumer groups that no member has come back to"
                    );
                }
            }
        });
        let tasks = BrokerTasks {
            flusher,
            snapshot_shipper,
            chores,
        };
        Ok((broker, tasks))
    }
}

/// The block cache's options: the cache section, with the disk tier under the data
/// directory and the write buffer's `flush_bytes` as the largest chunk.
fn cache_options(config: &Config) -> CacheOptions {
    CacheOptions {
        memory_bytes: config.cache.memory_bytes,
        replay_memory_bytes: config.cache.replay_memory_bytes,
        disk_dir: Some(config.node.data_dir.join("cache")),
        disk_bytes: config.cache.disk_bytes,
        max_chunk_bytes: config.flush.bytes,
    }
}

/// The write buffer's options: the flush section, with the node id, the store's upload
/// timeout and a commit age well inside the orphan collector's grace.
fn buffer_options(config: &Config) -> BufferConfig {
    let flush = &config.flush;
    BufferConfig {
        flush_interval: flush.interval,
        flush_idle: flush.idle,
        flush_bytes: flush.bytes,
        max_inflight_uploads: MAX_INFLIGHT_UPLOADS,
        max_buffered_bytes: flush.buffer_max_bytes,
        upload_timeout: config.store.upload_timeout,
        node_id: config.node.id,
        max_commit_age: config.background.orphan_grace / 2,
    }
}

/// `--node-id auto`: the id kept in the data directory, else a new one from the
/// metadata leader, kept there before it is used (a restart on the same disk keeps it,
/// a new disk gets a new one).
async fn automatic_node_id(config: &Config) -> Result<u64, StartError> {
    let path = config.node.data_dir.join(NodeConfig::AUTO_ID_FILE);
    let bad_file = |detail: String| StartError::NodeId {
        path: path.display().to_string(),
        detail,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text
                .trim()
                .parse()
                .map_err(|_| bad_file(format!("{:?} is not a node id", text.trim())))?;
            info!(id, "automatic node id, kept in the data directory");
            return Ok(id);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bad_file(e.to_string())),
    }
    let listener = (
        config.listener.advertise_host().to_owned(),
        config.listener.advertise_port(),
        config.node.rack.clone(),
    );
    let options = raft_options(&config.node, &config.raft);
    let id = crate::metadata::raft::request_node_id(&options, listener, AUTO_ID_TIMEOUT)
        .await
        .map_err(MetadataError::from)?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{id}\n"))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| bad_file(e.to_string()))?;
    info!(id, "automatic node id from the metadata leader");
    Ok(id)
}

/// Opens the object store and proves it takes writes.
async fn open_store(store: &StoreConfig) -> Result<ObjectStorage, StartError> {
    let budget = store
        .max_puts_per_second
        .map(|rate| Arc::new(PutBudget::new(rate)));
    let storage =
        ObjectStorage::open_with_encryption(&store.url, &store.s3_sse)?.with_put_budget(budget);
    // Fail at start-up, in one line, rather than on the first produce.
    storage
        .put("_strata/probe", Bytes::from_static(b"ok"))
        .await
        .map_err(|source| probe_error(&store.url, source))?;
    Ok(storage)
}

/// Opens the metadata log. A broker with no log of its own (a new machine, a wiped disk)
/// that founds the cluster rebuilds it from the bucket, the only durable copy.
async fn open_metadata(
    node: &NodeConfig,
    store: &StoreConfig,
    raft: &RaftConfig,
    storage: &ObjectStorage,
) -> Result<Arc<Metadata>, StartError> {
    let raft_dir = node.data_dir.join("raft");
    let has_log = raft_dir.join("raft.log").exists();
    if has_log && store.recover_from_store {
        let aside = node
            .data_dir
            .join(format!("raft.before-recovery-{}", crate::clock::now_ms()));
        std::fs::rename(&raft_dir, &aside).map_err(|source| StartError::SetAside {
            dir: raft_dir.display().to_string(),
            source,
        })?;
        info!(aside = %aside.display(), "old metadata log set aside for recovery");
    }
    let mut options = raft_options(node, raft);
    if !has_log && raft.controllers.len() > 1 && raft.controllers.contains_key(&node.id) {
        // A voter on a new (or wiped) disk: it must not help elect a leader that lacks
        // what was acknowledged, which the bucket holds.
        options.vote_floor = shipping::last_shipped_index(storage).await?;
        if options.vote_floor > 0 {
            info!(floor = options.vote_floor, "new metadata disk on a voter: voting only for candidates with the bucket's entries until caught up");
        }
    }
    let metadata = Arc::new(Metadata::open(&raft_dir, options).await?);
    // Only the broker that founds the metadata cluster may rebuild it: anyone else with
    // an empty log is joining a cluster that already has its metadata.
    let founder = raft.controllers.keys().next() == Some(&node.id);
    if founder && (!has_log || store.recover_from_store) && metadata.read(|s| s.is_empty()) {
        shipping::recover(&metadata, storage).await?;
    }
    if !raft.unsafe_ack_before_shipping {
        metadata.ack_after_shipping();
    }
    Ok(metadata)
}

/// Compaction, the log cleaner, retention, garbage and orphan collection, the stats file:
/// the background section, with the node id, the store's upload timeout and the topic
/// defaults (the cleaner and retention resolve topic configs).
fn spawn_chores(
    config: &Config,
    metadata: &Arc<Metadata>,
    storage: &ObjectStorage,
    cache: &Arc<BlockCache>,
    counters: &Counters,
) -> Vec<JoinHandle<()>> {
    let background = &config.background;
    // Each chore's requests are counted under its own purpose, reads included.
    let tagged = |purpose| {
        let storage = storage.for_purpose(purpose);
        let reader = Arc::new(FetchReader::new(
            metadata.clone(),
            storage.clone(),
            cache.clone(),
        ));
        (storage, reader)
    };
    let (compaction_store, compaction_reader) = tagged(Purpose::Compaction);
    let (cleaner_store, cleaner_reader) = tagged(Purpose::Cleaner);
    let gc_store = storage.for_purpose(Purpose::Gc);
    let node_id = config.node.id;
    let upload_timeout = config.store.upload_timeout;
    vec![
        tokio::spawn(orphans::collect_orphans(
            metadata.clone(),
            gc_store.clone(),
            background.orphan_grace,
        )),
        tokio::spawn(compaction::run(
            metadata.clone(),
            compaction_store,
            compaction_reader,
            CompactionConfig {
                policy: CompactionPolicy {
                    segment_bytes: background.segment_bytes,
                    age: background.compaction_age,
                    topic_defaults: config.topics.defaults.clone(),
                },
                interval: background.compaction_interval,
                node_id,
                upload_timeout,
            },
            counters.compaction.clone(),
            // No PUT budget yet: a round writes all it plans.
            Arc::new(compaction::Unlimited),
        )),
        tokio::spawn(cleaner::run(
            metadata.clone(),
            cleaner_store,
            cleaner_reader,
            CleanerConfig {
                interval: background.compaction_interval,
                node_id,
                output_bytes: background.segment_bytes,
                upload_timeout,
                topic_defaults: config.topics.defaults.clone(),
            },
            counters.cleaner.clone(),
        )),
        tokio::spawn(retention::run(
            metadata.clone(),
            background.retention_check_interval,
            node_id,
            config.topics.defaults.clone(),
        )),
        tokio::spawn(gc::run(
            metadata.clone(),
            gc_store,
            background.gc_grace,
            counters.shipped.clone(),
            counters.gc.clone(),
        )),
        tokio::spawn(stats::run(
            config.node.data_dir.join("stats.json"),
            StatsSources {
                metadata: metadata.clone(),
                storage: storage.clone(),
                compaction: counters.compaction.clone(),
                cleaner: counters.cleaner.clone(),
                gc: counters.gc.clone(),
                shipped: counters.shipped.clone(),
                connections: counters.connections.clone(),
            },
        )),
    ]
}

/// The metadata Raft's options: its section, and the node id.
fn raft_options(node: &NodeConfig, raft: &RaftConfig) -> RaftOptions {
    let addr = raft
        .controllers
        .get(&node.id)
        .cloned()
        .or_else(|| raft.advertise.clone())
        .unwrap_or_default();
    RaftOptions {
        node_id: node.id,
        snapshot_every: raft.snapshot_every,
        addr,
        listen: raft.listen.clone(),
        voters: raft.controllers.clone(),
        lease: raft.broker_lease,
        vote_floor: 0,
        secret: raft.cluster_secret.clone(),
        tls: raft.tls.clone(),
    }
}

/// The start-up probe's failure as one line: a missing bucket or refused access said
/// plainly; anything else with the store's own message, flattened to one line.
fn probe_error(url: &str, source: StorageError) -> StartError {
    let bucket = url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    let one_line = |e: &dyn std::fmt::Display| {
        let text = e.to_string();
        // S3 error bodies are XML over several lines; keep the first line of it.
        text.lines().next().unwrap_or_default().trim().to_owned()
    };
    match &source {
        // A PUT answered 404 means the bucket is missing (S3 NoSuchBucket).
        StorageError::Store {
            source: object_store::Error::NotFound { .. },
            ..
        } => StartError::NoSuchBucket {
            url: url.to_owned(),
            bucket,
        },
        StorageError::Store {
            source:
                e @ (object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }),
            ..
        } => StartError::StoreAccessDenied {
            url: url.to_owned(),
            bucket,
            detail: one_line(e),
        },
        _ => StartError::StoreProbe {
            url: url.to_owned(),
            detail: one_line(&source),
        },
    }
}

//! The broker: everything a request handler needs, started in the right order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::task::JoinHandle;
use tracing::info;

use crate::background::cleaner::{self, CleanerConfig, CleanerCounters};
use crate::background::compaction::{self, CompactionConfig, CompactionCounters, CompactionPolicy};
use crate::background::gc::GcCounters;
use crate::background::stats::StatsSources;
use crate::background::{gc, orphans, retention, stats};
use crate::config::Config;
use crate::fetch::FetchReader;
use crate::group::{GroupConfig, GroupCoordinator};
use crate::metadata::fence::{ExpiryTracker, WarnLimiter};
use crate::metadata::shipping::{self, ShippedMark};
use crate::metadata::state::cluster::ClusterCommand;
use crate::metadata::state::topics::valid_topic_name;
use crate::metadata::state::{Command, Response, ScramChange, StateError};
use crate::metadata::{Metadata, MetadataError, RaftOptions};
use crate::produce::buffer::BufferConfig;
use crate::produce::WriteBuffer;
use crate::security::scram::{Mechanism, ScramCredential};
use crate::storage::cache::{CacheConfig, CacheError};
use crate::storage::{BlockCache, ObjectStorage, StorageError};
use crate::telemetry::ConnectionGauges;
use crate::topic_config::TopicSettings;
use crate::txn::TxnCoordinator;

/// A repeated warning (a heartbeat that keeps failing) is logged at most this often.
/// PBKDF2 iterations of the bootstrap admin's credentials (Kafka's minimum and the
/// default of its tools).
const ADMIN_ITERATIONS: u32 = 4096;

const WARN_EVERY: Duration = Duration::from_secs(10);
/// How often the Raft leader looks for heartbeats: expiry comes at most this late.
const EXPIRY_POLL: Duration = Duration::from_millis(100);

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
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{0}")]
    State(StateError),
    #[error("metadata unavailable: {0}")]
    Metadata(#[from] MetadataError),
}

fn raft_options(config: &Config) -> RaftOptions {
    let addr = config
        .controllers
        .get(&config.node_id)
        .cloned()
        .or_else(|| config.raft_listen.clone())
        .unwrap_or_default();
    RaftOptions {
        node_id: config.node_id,
        snapshot_every: config.snapshot_every,
        addr,
        listen: config.raft_listen.clone(),
        voters: config.controllers.clone(),
        lease: config.broker_lease,
        vote_floor: 0,
        secret: config.cluster_secret.clone(),
        tls: if config.raft_tls {
            config.tls.clone()
        } else {
            None
        },
    }
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
    pub fetcher: Arc<FetchReader>,
    pub groups: Arc<GroupCoordinator>,
    pub storage: ObjectStorage,
    pub cache: Arc<BlockCache>,
    /// What the bucket's newest snapshot covers (garbage collection waits for it).
    pub shipped: Arc<ShippedMark>,
    /// The listener's connections and request bytes.
    pub connections: Arc<ConnectionGauges>,
    /// What compaction, the cleaner and garbage collection did, for the stats file and
    /// the metrics.
    pub compaction_counters: Arc<CompactionCounters>,
    pub cleaner_counters: Arc<CleanerCounters>,
    pub gc_counters: Arc<GcCounters>,
    /// The transaction coordinator: markers, timeouts, unfinished transactions.
    pub txn: Arc<TxnCoordinator>,
}

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

impl Broker {
    pub async fn start(config: Config) -> Result<(Arc<Self>, BrokerTasks), StartError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            dir: config.data_dir.display().to_string(),
            source,
        })?;
        let storage = ObjectStorage::open_with_encryption(&config.store, &config.s3_sse)?;
        // Fail at start-up, in one line, rather than on the first produce.
        storage
            .put("_strata/probe", Bytes::from_static(b"ok"))
            .await
            .map_err(|source| probe_error(&config.store, source))?;
        let raft_dir = config.data_dir.join("raft");
        let has_log = raft_dir.join("raft.log").exists();
        if has_log && config.recover_from_store {
            let aside = config
                .data_dir
                .join(format!("raft.before-recovery-{}", crate::clock::now_ms()));
            std::fs::rename(&raft_dir, &aside).map_err(|source| StartError::SetAside {
                dir: raft_dir.display().to_string(),
                source,
            })?;
            info!(aside = %aside.display(), "old metadata log set aside for recovery");
        }
        let mut options = raft_options(&config);
        if !has_log
            && config.controllers.len() > 1
            && config.controllers.contains_key(&config.node_id)
        {
            // A voter on a new (or wiped) disk: it must not help elect a leader that lacks
            // what was acknowledged, which the bucket holds.
            options.vote_floor = shipping::last_shipped_index(&storage).await?;
            if options.vote_floor > 0 {
                info!(floor = options.vote_floor, "new metadata disk on a voter: voting only for candidates with the bucket's entries until caught up");
            }
        }
        let metadata = Arc::new(Metadata::open(&raft_dir, options).await?);
        // A broker with no metadata log of its own (a new machine, a wiped disk) rebuilds
        // it from the bucket: the store is the only durable copy.
        // Only the broker that founds the metadata cluster may rebuild it: anyone else
        // with an empty log is joining a cluster that already has its metadata.
        let founder = config.controllers.keys().next() == Some(&config.node_id);
        if founder && (!has_log || config.recover_from_store) && metadata.read(|s| s.is_empty()) {
            shipping::recover(&metadata, &storage).await?;
        }
        if !config.unsafe_ack_before_shipping {
            metadata.ack_after_shipping();
        }
        let cache = Arc::new(
            BlockCache::open(CacheConfig {
                memory_bytes: config.cache_bytes,
                replay_memory_bytes: config.replay_cache_bytes,
                disk_dir: Some(config.data_dir.join("cache")),
                disk_bytes: config.cache_disk_bytes,
                max_chunk_bytes: config.flush_bytes,
            })
            .await?,
        );
        let (buffer, flusher) = WriteBuffer::start(
            BufferConfig {
                flush_interval: config.flush_interval,
                flush_idle: config.flush_idle,
                flush_bytes: config.flush_bytes,
                max_inflight_uploads: 4,
                max_buffered_bytes: config.buffer_max_bytes,
                upload_timeout: config.upload_timeout,
                node_id: config.node_id,
                max_commit_age: config.orphan_grace / 2,
            },
            storage.clone(),
            metadata.clone(),
            cache.clone(),
        );
        let shipped = Arc::new(ShippedMark::default());
        let connections = Arc::new(ConnectionGauges::default());
        let gc_counters = Arc::new(GcCounters::default());
        let snapshot_shipper = tokio::spawn(shipping::ship_metadata(
            metadata.clone(),
            storage.clone(),
            config.store_snapshot_interval,
            shipped.clone(),
        ));
        let fetcher = Arc::new(FetchReader::new(
            metadata.clone(),
            storage.clone(),
            cache.clone(),
        ));
        let compaction_counters = Arc::new(CompactionCounters::default());
        let cleaner_counters = Arc::new(CleanerCounters::default());
        let chores = vec![
            tokio::spawn(orphans::collect_orphans(
                metadata.clone(),
                storage.clone(),
                config.orphan_grace,
            )),
            tokio::spawn(compaction::run(
                metadata.clone(),
                storage.clone(),
                fetcher.clone(),
                CompactionConfig {
                    policy: CompactionPolicy {
                        segment_bytes: config.segment_bytes,
                        age: config.compaction_age,
                    },
                    interval: config.compaction_interval,
                    node_id: config.node_id,
                    upload_timeout: config.upload_timeout,
                },
                compaction_counters.clone(),
            )),
            tokio::spawn(cleaner::run(
                metadata.clone(),
                storage.clone(),
                fetcher.clone(),
                CleanerConfig {
                    interval: config.compaction_interval,
                    node_id: config.node_id,
                    output_bytes: config.segment_bytes,
                    upload_timeout: config.upload_timeout,
                    topic_defaults: config.topic_defaults.clone(),
                },
                cleaner_counters.clone(),
            )),
            tokio::spawn(retention::run(
                metadata.clone(),
                config.retention_check_interval,
                config.node_id,
                config.topic_defaults.clone(),
            )),
            tokio::spawn(gc::run(
                metadata.clone(),
                storage.clone(),
                config.gc_grace,
                shipped.clone(),
                gc_counters.clone(),
            )),
            tokio::spawn(stats::run(
                config.data_dir.join("stats.json"),
                StatsSources {
                    metadata: metadata.clone(),
                    storage: storage.clone(),
                    compaction: compaction_counters.clone(),
                    cleaner: cleaner_counters.clone(),
                    gc: gc_counters.clone(),
                    shipped: shipped.clone(),
                    connections: connections.clone(),
                },
            )),
        ];
        let txn = TxnCoordinator::new(metadata.clone(), buffer.clone(), config.node_id);
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
            cache,
            shipped,
            connections,
            compaction_counters,
            cleaner_counters,
            gc_counters,
            txn,
        });
        let tasks = BrokerTasks {
            flusher,
            snapshot_shipper,
            chores,
        };
        Ok((broker, tasks))
    }

    /// Announces this broker to the cluster and takes its lease, then its listeners and
    /// the bootstrap admin's credentials.
    pub async fn register(self: &Arc<Self>) -> Result<(), BrokerError> {
        let register = ClusterCommand::Register {
            id: self.config.node_id,
            host: self.config.advertise_host.clone(),
            port: self.config.advertise_port,
            rack: self.config.rack.clone(),
            now_ms: crate::clock::now_ms(),
        };
        let started = Instant::now();
        self.metadata
            .renew_lease(Command::Cluster(register), started)
            .await?;
        let listeners = self
            .config
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.advertise_host.clone(), l.advertise_port))
            .collect();
        self.metadata
            .propose(Command::RegisterListeners {
                id: self.config.node_id,
                listeners,
            })
            .await?;
        if let Some(admin) = &self.config.security.admin {
            // Every broker proposes it at start; the first credential of each mechanism
            // stays (a password changed later through the admin APIs is kept).
            let changes = [Mechanism::Sha256, Mechanism::Sha512]
                .into_iter()
                .map(|mechanism| ScramChange::Upsert {
                    user: admin.user.clone(),
                    mechanism,
                    credential: ScramCredential::from_password(
                        mechanism,
                        &admin.password,
                        ADMIN_ITERATIONS,
                    ),
                    only_if_missing: true,
                })
                .collect();
            self.metadata
                .propose(Command::AlterScram { changes })
                .await?;
        }
        Ok(())
    }

    /// Keeps this broker's lease (a heartbeat every quarter lease) and, while this broker
    /// is the Raft leader, expires the brokers whose heartbeats stopped.
    /// The transaction coordinator loop (`crate::txn::run`).
    pub fn spawn_transactions(self: &Arc<Self>) -> JoinHandle<()> {
        tokio::spawn(self.txn.clone().run())
    }

    pub fn spawn_liveness(self: &Arc<Self>) -> JoinHandle<()> {
        let lease = self.config.broker_lease;
        let heartbeats = Self::heartbeats(Arc::downgrade(self), lease);
        let expiry = Self::expire_silent(Arc::downgrade(self), lease);
        tokio::spawn(async move {
            tokio::join!(heartbeats, expiry);
        })
    }

    async fn heartbeats(broker: std::sync::Weak<Self>, lease: Duration) {
        let mut tick = tokio::time::interval(lease / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warn = WarnLimiter::new(WARN_EVERY);
        // The heartbeat value only has to change at every heartbeat (the leader compares
        // it for change, never with its own clock); strictly increasing even if the wall
        // clock steps back.
        let mut last_value = i64::MIN;
        loop {
            tick.tick().await;
            let Some(broker) = broker.upgrade() else {
                return;
            };
            let now_ms = crate::clock::now_ms().max(last_value.saturating_add(1));
            last_value = now_ms;
            let id = broker.config.node_id;
            let heartbeat = Command::Cluster(ClusterCommand::Heartbeat { id, now_ms });
            let started = Instant::now();
            match broker.metadata.renew_lease(heartbeat, started).await {
                Ok(()) => warn.reset(),
                Err(e) => {
                    if let Some(held_back) = warn.hit(Instant::now()) {
                        tracing::warn!(error = %e, held_back, "broker heartbeat failed");
                    }
                }
            }
        }
    }

    async fn expire_silent(broker: std::sync::Weak<Self>, lease: Duration) {
        let mut tick = tokio::time::interval(EXPIRY_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tracker = ExpiryTracker::default();
        let mut warn = WarnLimiter::new(WARN_EVERY);
        loop {
            tick.tick().await;
            let Some(broker) = broker.upgrade() else {
                return;
            };
            if !broker.metadata.is_leader() {
                tracker.observe(Instant::now(), lease, false, []);
                continue;
            }
            let brokers: Vec<(u64, i64, bool)> = broker.metadata.read(|s| {
                s.cluster()
                    .brokers()
                    .map(|(id, b)| (id, b.last_heartbeat_ms, b.alive))
                    .collect()
            });
            let silent = tracker.observe(Instant::now(), lease, true, brokers);
            if silent.is_empty() {
                continue;
            }
            tracing::info!(brokers = ?silent, "expiring brokers silent for a lease");
            let expire = Command::Cluster(ClusterCommand::ExpireSilent { brokers: silent });
            if let Err(e) = broker.metadata.propose(expire).await {
                if let Some(held_back) = warn.hit(Instant::now()) {
                    tracing::warn!(error = %e, held_back, "expiring broker leases failed");
                }
            }
        }
    }

    /// Leaves the cluster gracefully: its partitions and groups move at once.
    pub async fn deregister(&self) {
        let cmd = Command::Cluster(ClusterCommand::Deregister {
            id: self.config.node_id,
        });
        if let Err(e) = self.metadata.propose(cmd).await {
            tracing::warn!(error = %e, "leaving the cluster failed");
        }
    }

    /// The live brokers clients of `listener` may use: (id, host, port, rack); this
    /// broker at least. A broker is named by its address on that listener; one that
    /// registered listeners without it is left out (as Kafka does), one that registered
    /// none (an older build) by its one address.
    pub fn live_brokers(&self, listener: &str) -> Vec<(i32, String, i32, Option<String>)> {
        let me = self.node_id();
        let mut brokers: Vec<_> = self.metadata.read(|s| {
            s.cluster()
                .live()
                .filter(|(id, _)| *id as i32 != me)
                .filter_map(|(id, b)| {
                    let (host, port) = match s.access().listener(id, listener) {
                        Some((host, port)) => (host.to_owned(), port),
                        None if s.access().has_listeners(id) => return None,
                        None => (b.host.clone(), b.port),
                    };
                    Some((id as i32, host, port, b.rack.clone()))
                })
                .collect()
        });
        let own = self
            .config
            .listeners
            .iter()
            .find(|l| l.name == listener)
            .unwrap_or(&self.config.listeners[0]);
        brokers.push((
            me,
            own.advertise_host.clone(),
            own.advertise_port,
            self.config.rack.clone(),
        ));
        brokers.sort();
        brokers
    }

    /// Whether this broker has fenced itself (see `metadata/fence.rs`): it names other
    /// brokers as leaders and coordinators and refuses produce, group and producer-id
    /// requests with retriable errors, so clients go where the cluster is.
    pub fn fenced(&self) -> bool {
        self.metadata.fenced()
    }

    /// The broker clients should use for a partition (None: no live broker but a fenced
    /// self), and the leader epoch to report.
    pub fn preferred_broker(&self, topic: &str, partition: i32) -> (Option<i32>, i32) {
        let fenced = self.fenced();
        self.metadata.read(|s| {
            let epoch = s.cluster().epoch();
            if fenced {
                let own = Some(self.config.node_id);
                let id = s.preferred_broker_excluding(topic, partition, own);
                return (id.map(|id| id as i32), epoch);
            }
            let id = s
                .preferred_broker(topic, partition)
                .map_or(self.node_id(), |id| id as i32);
            (Some(id), epoch)
        })
    }

    /// KIP-392: the broker a consumer in `rack` should fetch this partition from, when
    /// that is not this broker.
    pub fn read_replica_elsewhere(&self, topic: &str, partition: i32, rack: &str) -> Option<i32> {
        if rack.is_empty() {
            return None;
        }
        let replica = self
            .metadata
            .read(|s| s.read_replica(topic, partition, rack))?;
        (replica as i32 != self.node_id()).then_some(replica as i32)
    }

    /// The broker coordinating `group`; a fenced broker names another live one (None:
    /// it knows of none).
    pub fn coordinator(&self, group: &str) -> Option<i32> {
        self.metadata
            .coordinator(group, self.config.node_id)
            .map(|id| i32::try_from(id).unwrap_or(i32::MAX))
    }

    pub fn is_coordinator(&self, group: &str) -> bool {
        self.coordinator(group) == Some(self.node_id())
    }

    /// The cluster epoch at which this broker coordinates `group`, read together with
    /// the placement; None when it does not (or is fenced). OffsetCommit proposals carry
    /// it, so the state machine refuses them if the group moved meanwhile.
    pub fn coordinator_epoch(&self, group: &str) -> Option<i32> {
        if self.fenced() {
            return None;
        }
        let id = self.config.node_id;
        self.metadata.read(|s| {
            let cluster = s.cluster();
            (cluster.coordinator(group).is_none_or(|c| c == id)).then(|| cluster.epoch())
        })
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
                    .create_topic(name, self.default_partitions(), BTreeMap::new(), Vec::new())
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
        preferred: Vec<u64>,
    ) -> Result<[u8; 16], BrokerError> {
        let topic_id = *uuid::Uuid::new_v4().as_bytes();
        let cmd = Command::CreateTopic {
            name: name.to_owned(),
            topic_id,
            partitions,
            configs,
            now_ms: crate::clock::now_ms(),
            preferred,
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

    /// A topic's configs as they take effect here, read in one look-up with the
    /// effective precedence (topic, dynamic broker, static default, Kafka's default);
    /// None for an unknown topic.
    pub fn topic_settings(&self, topic: &str) -> Option<TopicSettings> {
        let node = self.config.node_id;
        self.metadata.read(|s| {
            let t = s.topic(topic)?;
            Some(
                s.config_layers(node, &self.config.topic_defaults)
                    .settings(&t.configs),
            )
        })
    }

    /// The partition count of auto-created topics (and CreateTopics without one): the
    /// dynamic broker config `num.partitions`, else the static `default_partitions`.
    pub fn default_partitions(&self) -> i32 {
        let node = self.config.node_id;
        self.metadata
            .read(|s| {
                s.broker_config(node, "num.partitions")
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(self.config.default_partitions)
    }
}

//! Command line: `strata serve` and its flags. Every flag is also a `STRATA_…`
//! environment variable and a key of the TOML config file (flags win over the
//! environment, which wins over the file).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "strata",
    version,
    about = "Kafka-compatible broker whose log lives in object storage"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a broker.
    Serve(Box<ServeArgs>),
    /// List, add or remove metadata voters of a running cluster. A broker to add must
    /// have joined (as a learner) and caught up; a removed voter stays a learner.
    Voters(VotersArgs),
}

#[derive(Debug, Args)]
pub struct VotersArgs {
    /// The Raft address (`--raft-listen`) of any broker of the cluster.
    #[arg(long)]
    pub raft: String,
    /// Promote this broker (node id) to voter; repeatable.
    #[arg(long)]
    pub add: Vec<u64>,
    /// Demote this voter (node id) to learner; repeatable.
    #[arg(long)]
    pub remove: Vec<u64>,
    /// The cluster's shared secret, if the brokers have one (as `strata serve`).
    #[arg(long, env = "STRATA_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// Speak TLS to the Raft port, trusting --tls-ca-file (as `strata serve`).
    #[arg(long, env = "STRATA_RAFT_TLS")]
    pub raft_tls: Option<bool>,
    /// PEM bundle of the CAs the brokers' certificates chain to.
    #[arg(long, env = "STRATA_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM certificate to present, for brokers with --tls-client-auth required.
    #[arg(long, env = "STRATA_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "STRATA_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// TOML configuration file (see config/strata.toml).
    #[arg(long, env = "STRATA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to accept Kafka clients on [default: 127.0.0.1:9092].
    #[arg(long, env = "STRATA_LISTEN")]
    pub listen: Option<String>,
    /// Address given to clients in Metadata [default: the listen address].
    #[arg(long, env = "STRATA_ADVERTISE")]
    pub advertise: Option<String>,
    /// Local directory for the Raft log, snapshots and cache [default: ./data].
    #[arg(long, env = "STRATA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Object store URL: file:///dir, s3://bucket/prefix or memory:// [default: file://<data-dir>/objects].
    #[arg(long, env = "STRATA_STORE")]
    pub store: Option<String>,
    /// S3 server-side encryption of every object written: `none` (the bucket's default
    /// encryption applies), `s3` (SSE-S3, AES256), `kms` (SSE-KMS) or `dsse-kms`
    /// (dual-layer SSE-KMS) [default: none].
    #[arg(long, env = "STRATA_S3_SSE")]
    pub s3_sse: Option<String>,
    /// The KMS key id, alias (`alias/NAME`) or ARN for `--s3-sse kms` or `dsse-kms`
    /// (required with them, refused otherwise).
    #[arg(long, env = "STRATA_S3_SSE_KMS_KEY_ID")]
    pub s3_sse_kms_key_id: Option<String>,
    /// With `--s3-sse kms`: use an S3 Bucket Key (`true`, fewer KMS calls) or not
    /// (`false`) [default: the bucket's setting].
    #[arg(long, env = "STRATA_S3_BUCKET_KEY")]
    pub s3_bucket_key: Option<bool>,
    /// This broker's id, or `auto` for a broker that is not a voter: a cluster-unique id
    /// from the metadata leader, kept in the data directory [default: 1].
    #[arg(long, env = "STRATA_NODE_ID")]
    pub node_id: Option<NodeIdArg>,
    /// Create unknown topics on Metadata and Produce, like auto.create.topics.enable [default: true].
    #[arg(long, env = "STRATA_AUTO_CREATE_TOPICS")]
    pub auto_create_topics: Option<bool>,
    /// Flush the write buffer after this many milliseconds [default: 10].
    #[arg(long, env = "STRATA_FLUSH_INTERVAL_MS")]
    pub flush_interval_ms: Option<u64>,
    /// When nothing is uploading: flush at once (`immediate`) or after the flush interval
    /// (`interval`: fewer PUTs for a trickle of small requests) [default: immediate].
    #[arg(long, env = "STRATA_FLUSH_IDLE")]
    pub flush_idle: Option<String>,
    /// Flush the write buffer once it holds this many bytes [default: 16777216].
    #[arg(long, env = "STRATA_FLUSH_BYTES")]
    pub flush_bytes: Option<usize>,
    /// Partitions of an auto-created topic, like Kafka's num.partitions [default: 1].
    #[arg(long, env = "STRATA_DEFAULT_PARTITIONS")]
    pub default_partitions: Option<i32>,
    /// Largest request frame accepted, like socket.request.max.bytes [default: 104857600].
    #[arg(long, env = "STRATA_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Memory for recently written and read object chunks [default: 268435456].
    #[arg(long, env = "STRATA_CACHE_BYTES")]
    pub cache_bytes: Option<usize>,
    /// Memory for reads the tail cache misses (replays, catch-up reads), a separate budget
    /// so that they never evict the tail [default: 67108864].
    #[arg(long, env = "STRATA_REPLAY_CACHE_BYTES")]
    pub replay_cache_bytes: Option<usize>,
    /// The cache's disk tier in <data-dir>/cache, 0 for none [default: 1073741824 in
    /// front of S3, 0 in front of a local directory].
    #[arg(long, env = "STRATA_CACHE_DISK_BYTES")]
    pub cache_disk_bytes: Option<usize>,
    /// Bound on this broker's PUT requests per second, averaged over a minute: data,
    /// metadata, compaction and snapshots together; 0 for none [default: 10 on s3://
    /// (near $130 a month in S3 PUTs), 0 on a local directory]; see docs/performance.md
    /// for what it costs in latency.
    #[arg(long, env = "STRATA_MAX_PUTS_PER_SECOND")]
    pub max_puts_per_second: Option<f64>,
    /// Broker ids Metadata spreads partition leadership over: each live broker answers
    /// as ceil(N / live brokers) ids at its own address, so clients that cap requests in
    /// flight per connection (idempotent producers: 5) keep enough of them in flight when
    /// each takes an object-store round trip (on S3, about a producer's requests per
    /// second over 20) [default: 1]. kafkajs folds ids that share
    /// an address into one connection, so raise it only for other clients.
    #[arg(long, env = "STRATA_LEADER_IDS")]
    pub leader_ids: Option<u32>,
    /// Take a metadata snapshot after this many Raft log entries [default: 10000].
    #[arg(long, env = "STRATA_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<u64>,
    /// How long a new group waits for more members before its first rebalance, like
    /// group.initial.rebalance.delay.ms [default: 300].
    #[arg(long, env = "STRATA_GROUP_INITIAL_REBALANCE_DELAY_MS")]
    pub group_initial_rebalance_delay_ms: Option<u64>,
    /// How long a member of a consumer-protocol group (KIP-848) may go without a
    /// heartbeat before it is fenced, like group.consumer.session.timeout.ms [default: 45000].
    #[arg(long, env = "STRATA_GROUP_CONSUMER_SESSION_TIMEOUT_MS")]
    pub group_consumer_session_timeout_ms: Option<u64>,
    /// How often members of a consumer-protocol group heartbeat, like
    /// group.consumer.heartbeat.interval.ms [default: 5000].
    #[arg(long, env = "STRATA_GROUP_CONSUMER_HEARTBEAT_INTERVAL_MS")]
    pub group_consumer_heartbeat_interval_ms: Option<u64>,
    /// The server-side assignors consumer-protocol members may ask for, the default
    /// first, like group.consumer.assignors [default: uniform,range].
    #[arg(long, env = "STRATA_GROUP_CONSUMER_ASSIGNORS")]
    pub group_consumer_assignors: Option<String>,
    /// Produce data held while uploads are slow; producers wait beyond it [default: 268435456].
    #[arg(long, env = "STRATA_BUFFER_MAX_BYTES")]
    pub buffer_max_bytes: Option<usize>,
    /// How long one segment upload is retried before its produce requests fail [default: 60000].
    #[arg(long, env = "STRATA_UPLOAD_TIMEOUT_MS")]
    pub upload_timeout_ms: Option<u64>,
    /// Copy the metadata snapshot to the object store this often [default: 60000].
    #[arg(long, env = "STRATA_STORE_SNAPSHOT_INTERVAL_MS")]
    pub store_snapshot_interval_ms: Option<u64>,
    /// Delete uncommitted (orphan) objects once older than this [default: 3600000].
    #[arg(long, env = "STRATA_ORPHAN_GRACE_MS")]
    pub orphan_grace_ms: Option<u64>,
    /// Rebuild the metadata from the object store (its newest snapshot plus the shipped log).
    /// Happens by itself when the data directory has no metadata log.
    #[arg(long, env = "STRATA_RECOVER_FROM_STORE")]
    pub recover_from_store: bool,
    /// UNSAFE: acknowledge before the metadata entry is shipped to the object store (lower
    /// latency; losing every broker's disk then loses the last acknowledged commits).
    #[arg(long, env = "STRATA_UNSAFE_ACK_BEFORE_SHIPPING")]
    pub unsafe_ack_before_shipping: bool,
    /// Address serving Prometheus `/metrics`, `/health` and `/ready` over HTTP, or `none`
    /// [default: 127.0.0.1:9644].
    #[arg(long, env = "STRATA_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Log output: `text`, or `json` (one object per line); `RUST_LOG` filters either
    /// [default: text].
    #[arg(long, env = "STRATA_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Address for the metadata Raft traffic of other brokers (needed in a cluster).
    #[arg(long, env = "STRATA_RAFT_LISTEN")]
    pub raft_listen: Option<String>,
    /// Address the other brokers reach this broker's Raft port at, when it is not
    /// --raft-listen (a DNS name, a Kubernetes Service, a proxy); this broker's entry in
    /// --controllers must equal it [default: the --raft-listen address].
    #[arg(long, env = "STRATA_RAFT_ADVERTISE")]
    pub raft_advertise: Option<String>,
    /// The Raft voters: `1@host:port,2@host:port,3@host:port`. A broker not in the list
    /// is a learner and joins through them [default: this broker alone].
    #[arg(long, env = "STRATA_CONTROLLERS")]
    pub controllers: Option<String>,
    /// File holding the cluster's shared secret (at least 16 bytes; trailing whitespace
    /// ignored), the same on every broker: Raft connections must prove it before any
    /// traffic [default: none, the Raft port is unauthenticated].
    #[arg(long, env = "STRATA_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// TLS on the Raft port and to peers' Raft ports, with --tls-cert-file and
    /// --tls-key-file; peers' certificates must chain to --tls-ca-file, and with
    /// --tls-client-auth required brokers present theirs (mTLS) [default: false].
    #[arg(long, env = "STRATA_RAFT_TLS")]
    pub raft_tls: Option<bool>,
    /// Rack (availability zone) of this broker, shown to clients.
    #[arg(long, env = "STRATA_RACK")]
    pub rack: Option<String>,
    /// A broker silent this long is marked dead and its partitions move [default: 5000].
    #[arg(long, env = "STRATA_BROKER_LEASE_MS")]
    pub broker_lease_ms: Option<u64>,
    /// A dead broker silent this long leaves the metadata (and, a learner, the Raft
    /// membership) [default: 3600000].
    #[arg(long, env = "STRATA_BROKER_FORGET_AFTER_MS")]
    pub broker_forget_after_ms: Option<u64>,
    /// The longest a graceful stop (SIGTERM) drains: the broker stops advertising
    /// itself at once, answers what is in flight, then exits [default: 30000].
    #[arg(long, env = "STRATA_SHUTDOWN_TIMEOUT_MS")]
    pub shutdown_timeout_ms: Option<u64>,
    /// How often each broker looks for compaction work [default: 5000].
    #[arg(long, env = "STRATA_COMPACTION_INTERVAL_MS")]
    pub compaction_interval_ms: Option<u64>,
    /// How often retention.ms and retention.bytes are applied [default: 30000].
    #[arg(long, env = "STRATA_RETENTION_CHECK_INTERVAL_MS")]
    pub retention_check_interval_ms: Option<u64>,
    /// Tail data older than this is rewritten into per-partition segments, however
    /// small [default: 60000].
    #[arg(long, env = "STRATA_COMPACTION_AGE_MS")]
    pub compaction_age_ms: Option<u64>,
    /// The size compacted segments grow towards; smaller ones are merged [default: 134217728].
    #[arg(long, env = "STRATA_SEGMENT_BYTES")]
    pub segment_bytes: Option<u64>,
    /// An object no index entry refers to any more is deleted after this [default: 60000].
    #[arg(long, env = "STRATA_GC_GRACE_MS")]
    pub gc_grace_ms: Option<u64>,
    /// Bytes of requests being read or handled at once, over all connections; a
    /// connection waits (stops reading) until its next frame fits [default: 268435456,
    /// or max-request-bytes if larger].
    #[arg(long, env = "STRATA_MAX_INFLIGHT_REQUEST_BYTES")]
    pub max_inflight_request_bytes: Option<usize>,
    /// Client connections open at once; more are accepted and closed at once [default: 10000].
    #[arg(long, env = "STRATA_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Client connections open at once from one IP address, like max.connections.per.ip
    /// [default: 1000].
    #[arg(long, env = "STRATA_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// Once a frame's size is read and it fits the request budget, the rest must arrive
    /// within this, else the connection is closed [default: 30000].
    #[arg(long, env = "STRATA_FRAME_READ_TIMEOUT_MS")]
    pub frame_read_timeout_ms: Option<u64>,
    /// A connection with nothing in flight and nothing arriving for this long is closed,
    /// like connections.max.idle.ms [default: 600000].
    #[arg(long, env = "STRATA_CONNECTIONS_MAX_IDLE_MS")]
    pub connections_max_idle_ms: Option<u64>,
    /// PEM certificate chain of the SSL and SASL_SSL listeners (with only --listen, it
    /// makes that listener SSL). Reloaded when the file changes.
    #[arg(long, env = "STRATA_TLS_CERT_FILE", alias = "ssl-cert-file")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file (unencrypted PKCS#8, RSA or EC).
    #[arg(long, env = "STRATA_TLS_KEY_FILE", alias = "ssl-key-file")]
    pub tls_key_file: Option<PathBuf>,
    /// Client certificates, like ssl.client.auth: none, requested or required (checked
    /// against --tls-ca-file); the principal is the certificate's subject [default: none].
    #[arg(long, env = "STRATA_TLS_CLIENT_AUTH", alias = "ssl-client-auth")]
    pub tls_client_auth: Option<String>,
    /// PEM bundle of the CAs that client certificates must chain to.
    #[arg(long, env = "STRATA_TLS_CA_FILE", alias = "ssl-ca-file")]
    pub tls_ca_file: Option<PathBuf>,
    /// Listeners, like Kafka's listeners: NAME://HOST:PORT,... where the names
    /// PLAINTEXT, SSL, SASL_PLAINTEXT and SASL_SSL are those protocols and others are
    /// mapped by --listener-security-protocol-map (replaces --listen).
    #[arg(long, env = "STRATA_LISTENERS")]
    pub listeners: Option<String>,
    /// What clients of each listener are told to connect to: NAME://HOST:PORT,...
    /// [default: each listener's own address].
    #[arg(long, env = "STRATA_ADVERTISED_LISTENERS")]
    pub advertised_listeners: Option<String>,
    /// NAME:PROTOCOL,... for listener names that are not a protocol's name.
    #[arg(long, env = "STRATA_LISTENER_SECURITY_PROTOCOL_MAP")]
    pub listener_security_protocol_map: Option<String>,
    /// SASL mechanisms the SASL listeners offer: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512,
    /// OAUTHBEARER [default: SCRAM-SHA-256,SCRAM-SHA-512].
    #[arg(long, env = "STRATA_SASL_ENABLED_MECHANISMS")]
    pub sasl_enabled_mechanisms: Option<String>,
    /// Principals allowed everything, separated by semicolons: 'User:admin;User:ops'.
    #[arg(long, env = "STRATA_SUPER_USERS")]
    pub super_users: Option<String>,
    /// Allow an operation on a resource that has no ACL at all [default: false once a
    /// SASL listener or client certificates are configured, else true].
    #[arg(long, env = "STRATA_ALLOW_EVERYONE_IF_NO_ACL_FOUND")]
    pub allow_everyone_if_no_acl_found: Option<bool>,
    /// A bootstrap admin: SCRAM credentials for it are created at first start, and it is a
    /// super user. Set its password with STRATA_ADMIN_PASSWORD.
    #[arg(long, env = "STRATA_ADMIN_USER")]
    pub admin_user: Option<String>,
    /// The bootstrap admin's password (prefer the variable to the flag: flags show in `ps`).
    #[arg(long, env = "STRATA_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// KIP-368: SASL clients must re-authenticate within this many ms, like
    /// connections.max.reauth.ms (0: never) [default: 0].
    #[arg(long, env = "STRATA_CONNECTIONS_MAX_REAUTH_MS")]
    pub connections_max_reauth_ms: Option<u64>,
    /// OAUTHBEARER: the JWKS file (RFC 7517) whose keys sign clients' JWTs (RS256,
    /// RS384, RS512, ES256); re-read when it changes. Required with OAUTHBEARER.
    #[arg(long, env = "STRATA_SASL_OAUTHBEARER_JWKS_FILE")]
    pub sasl_oauthbearer_jwks_file: Option<PathBuf>,
    /// OAUTHBEARER: tokens' `iss` must be this [default: not checked].
    #[arg(long, env = "STRATA_SASL_OAUTHBEARER_EXPECTED_ISSUER")]
    pub sasl_oauthbearer_expected_issuer: Option<String>,
    /// OAUTHBEARER: tokens' `aud` must contain this [default: not checked].
    #[arg(long, env = "STRATA_SASL_OAUTHBEARER_EXPECTED_AUDIENCE")]
    pub sasl_oauthbearer_expected_audience: Option<String>,
    /// OAUTHBEARER: the claim naming the principal [default: sub].
    #[arg(long, env = "STRATA_SASL_OAUTHBEARER_SUB_CLAIM_NAME")]
    pub sasl_oauthbearer_sub_claim_name: Option<String>,
    // Broker-wide defaults of topic configs (Kafka's static `log.*` broker configs): a
    // topic without its own value, and with no dynamic broker config set, uses these.
    /// Default retention.ms, like log.retention.ms; -1 keeps forever [default: 604800000].
    #[arg(long, env = "STRATA_RETENTION_MS", allow_negative_numbers = true)]
    pub retention_ms: Option<i64>,
    /// Default retention.bytes per partition, like log.retention.bytes; -1 for no limit
    /// [default: -1].
    #[arg(long, env = "STRATA_RETENTION_BYTES", allow_negative_numbers = true)]
    pub retention_bytes: Option<i64>,
    /// Default segment.ms, like log.roll.ms [default: 604800000].
    #[arg(long, env = "STRATA_SEGMENT_MS")]
    pub segment_ms: Option<i64>,
    /// Default segment.bytes, like log.segment.bytes (not --segment-bytes, the size of
    /// Strata's compacted objects) [default: 1073741824].
    #[arg(long, env = "STRATA_LOG_SEGMENT_BYTES")]
    pub log_segment_bytes: Option<i64>,
    /// Default delete.retention.ms (how long tombstones stay), like
    /// log.cleaner.delete.retention.ms [default: 86400000].
    #[arg(long, env = "STRATA_DELETE_RETENTION_MS")]
    pub delete_retention_ms: Option<i64>,
    /// Default min.compaction.lag.ms, like log.cleaner.min.compaction.lag.ms [default: 0].
    #[arg(long, env = "STRATA_MIN_COMPACTION_LAG_MS")]
    pub min_compaction_lag_ms: Option<i64>,
    /// Default max.compaction.lag.ms, like log.cleaner.max.compaction.lag.ms
    /// [default: 9223372036854775807].
    #[arg(long, env = "STRATA_MAX_COMPACTION_LAG_MS")]
    pub max_compaction_lag_ms: Option<i64>,
    /// Default min.cleanable.dirty.ratio, like log.cleaner.min.cleanable.ratio [default: 0.5].
    #[arg(long, env = "STRATA_MIN_CLEANABLE_DIRTY_RATIO")]
    pub min_cleanable_dirty_ratio: Option<f64>,
    /// Default cleanup.policy, like log.cleanup.policy: delete, compact or compact,delete
    /// [default: delete].
    #[arg(long, env = "STRATA_CLEANUP_POLICY")]
    pub cleanup_policy: Option<String>,
}

/// `--node-id`: a number, or `auto` (an id from the metadata leader at the first start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeIdArg {
    Id(u64),
    Auto,
}

impl std::str::FromStr for NodeIdArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Self::Auto);
        }
        s.parse()
            .map(Self::Id)
            .map_err(|_| format!("{s:?} is neither a node id (a number) nor auto"))
    }
}

impl<'de> serde::Deserialize<'de> for NodeIdArg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(id) => Ok(Self::Id(id)),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

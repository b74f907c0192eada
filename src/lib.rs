//! Strata: a Kafka-compatible broker whose log lives in object storage.
//!
//! # Layout
//!
//! - [`server`]: the TCP listener and the per-connection loop (ordered responses).
//! - [`protocol`]: the Kafka front end: frame decoding, the supported-versions table,
//!   one handler file per API family.
//! - [`produce`]: batch validation and the write buffer that flushes segment objects and
//!   commits them through the metadata log.
//! - [`fetch`]: index look-ups, cached or ranged object reads, offset patching.
//! - [`storage`]: the object store (local directory, S3, memory), the segment object
//!   formats (flush objects and compacted segments) and the block cache.
//! - [`metadata`]: the pure state machine ([`metadata::state`]: the command vocabulary,
//!   then one file per part of the state: topics, the log index, group offsets,
//!   producers, transactions, access, cluster, with the object table and partitions) and
//!   its Raft glue ([`metadata::raft`]: the node, serving peers, membership, the network
//!   and its authentication, the log and snapshot stores).
//! - [`group`]: the consumer group coordinator (classic protocol, in memory).
//! - [`config`] and [`cli`]: settings from flags, `STRATA_…` variables and TOML.
//! - [`background`]: compaction of the tail into segments, garbage collection, the
//!   orphan sweep, the stats file.
//! - [`telemetry`]: the Prometheus `/metrics`, `/health` and `/ready` listener, and log
//!   output (text or JSON).
//! - [`broker`]: wires the parts together.

pub mod background;
pub mod broker;
pub mod cli;
pub mod clock;
pub mod config;
pub mod failpoint;
pub mod fetch;
pub mod group;
pub mod metadata;
pub mod produce;
pub mod protocol;
pub mod record;
pub mod reload;
pub mod security;
pub mod server;
pub mod storage;
pub mod telemetry;
#[cfg(test)]
pub(crate) mod testing;
pub mod tls;
pub mod topic_config;
pub mod txn;

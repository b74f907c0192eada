//! Strata: a Kafka-compatible broker whose log lives in object storage.
//!
//! # Layout
//!
//! Top-level modules form layers, each importing only those below it
//! (`scripts/check_layers.py` checks it; `docs/architecture.md` draws it).
//!
//! - [`server`]: the TCP/TLS listeners, the per-connection loop (ordered responses),
//!   SASL, connection limits, and the metrics HTTP listener with its scrape.
//! - [`protocol`]: the Kafka front end: frame decoding, the supported-versions table,
//!   dispatch by API family, one handler file per family.
//! - [`broker`]: the request context handlers work with (typed accessors), and the
//!   broker's start, liveness and graceful stop.
//! - [`txn`]: the transaction coordinator's background work (markers, timeouts).
//! - [`background`]: compaction of the tail into segments, the log cleaner, retention,
//!   garbage and orphan collection, the stats file.
//! - [`produce`]: batch validation and the write buffer that flushes segment objects and
//!   commits them through the metadata log.
//! - [`fetch`]: index look-ups, cached or ranged object reads, offset patching.
//! - [`group`]: the consumer group coordinator (classic protocol, in memory).
//! - [`metadata`]: the pure state machine ([`metadata::state`]: the command vocabulary,
//!   then one file per part of the state: topics, the log index, group offsets,
//!   producers, transactions, access, cluster, with the object table and partitions) and
//!   its Raft glue ([`metadata::raft`]: the node, serving peers, membership, the network
//!   and its authentication, the log and snapshot stores), shipping to the bucket and
//!   self-fencing.
//! - [`storage`]: the object store (local directory, S3, memory), the segment object
//!   formats (flush objects and compacted segments) and the block cache.
//!
//! The ground floor, which imports nothing above it:
//! - [`config`] and [`cli`]: settings from flags, `STRATA_…` variables and TOML, one
//!   section per component.
//! - [`tls`] (certificates for the Kafka and Raft listeners), [`security`] (SASL, SCRAM,
//!   OAuth, ACLs, the cluster secret), [`telemetry`] (metric names and recorders, log
//!   output), [`topic_config`] (topic config names, defaults, validation, resolution).
//! - [`record`] (Kafka's record batch format and codecs), [`clock`] (the one wall
//!   clock), [`reload`] (files re-read when they change), [`failpoint`] (test-only
//!   failure injection).

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

//! The part of a scrape computed from the broker's state when Prometheus asks: Raft
//! progress, brokers, topics, consumer lag, the stats-file counters and cache usage.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::broker::Broker;
use crate::metadata::state::MetadataState;

/// Above this many (group, partition) pairs with a committed offset, per-partition lag
/// series are not exported (only their count and each group's total): Prometheus keeps
/// every series, and a cluster with very many groups would bloat it with lag nobody
/// graphs one by one.
pub const MAX_LAG_SERIES: usize = 10_000;

/// Prometheus text format, written by hand for the state-derived families.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Into<f64>) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"");
                for c in value.chars() {
                    match c {
                        '\\' => self.out.push_str("\\\\"),
                        '"' => self.out.push_str("\\\""),
                        '\n' => self.out.push_str("\\n"),
                        c => self.out.push(c),
                    }
                }
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", value.into());
    }

    /// A family with a single unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: impl Into<f64>) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// Consumer lag of one group on one partition.
struct Lag {
    group: String,
    topic: String,
    partition: i32,
    lag: i64,
    /// Against the last stable offset: what a read_committed consumer has left to read.
    stable_lag: i64,
}

/// Everything read from the state in one short lock.
struct StateView {
    live_brokers: usize,
    registered_brokers: usize,
    /// (topic, partitions, bytes kept)
    topics: Vec<(String, usize, u64)>,
    lags: Vec<Lag>,
    /// (group, total lag over its partitions)
    group_lag: Vec<(String, i64)>,
    lag_pairs: usize,
    stats: crate::metadata::state::StateStats,
}

fn read_state(broker: &Broker) -> StateView {
    broker.read(|s| {
        let topics = s
            .topics()
            .iter()
            .map(|(name, t)| {
                let bytes = t.partitions.iter().map(|p| p.size_bytes).sum();
                (name.clone(), t.partitions.len(), bytes)
            })
            .collect();
        let (lags, group_lag, lag_pairs) = consumer_lag(s, MAX_LAG_SERIES);
        StateView {
            live_brokers: s.cluster().live().count(),
            registered_brokers: s.cluster().brokers().count(),
            topics,
            lags,
            group_lag,
            lag_pairs,
            stats: s.stats(),
        }
    })
}

/// Per-partition lag, each group's total and the number of committed (group, partition)
/// offsets; the first two are left empty above `cap` offsets.
fn consumer_lag(s: &MetadataState, cap: usize) -> (Vec<Lag>, Vec<(String, i64)>, usize) {
    let lag_pairs: usize = s
        .group_ids()
        .filter_map(|g| s.group_offsets(g))
        .map(|o| o.values().map(|p| p.len()).sum::<usize>())
        .sum();
    let mut lags = Vec::new();
    let mut group_lag = Vec::new();
    if lag_pairs > cap {
        return (lags, group_lag, lag_pairs);
    }
    for group in s.group_ids() {
        let Some(offsets) = s.group_offsets(group) else {
            continue;
        };
        let mut total = 0i64;
        for (topic, partitions) in offsets {
            for (&partition, committed) in partitions {
                // Offsets of a deleted topic or partition have no lag to report.
                let Some(p) = s.partition(topic, partition) else {
                    continue;
                };
                let lag = (p.next_offset - committed.offset).max(0);
                total = total.saturating_add(lag);
                lags.push(Lag {
                    group: group.clone(),
                    topic: topic.clone(),
                    partition,
                    lag,
                    stable_lag: (p.last_stable_offset() - committed.offset).max(0),
                });
            }
        }
        group_lag.push((group.clone(), total));
    }
    (lags, group_lag, lag_pairs)
}

/// Renders the state-derived families.
pub fn render_state(broker: &Broker) -> String {
    let mut x = Exposition::default();
    raft_families(&mut x, broker);
    let view = read_state(broker);
    topic_and_lag_families(&mut x, &view);
    state_size_families(&mut x, &view.stats);
    counter_families(&mut x, broker);
    memory_families(&mut x, broker);
    load_families(&mut x, broker);
    x.finish()
}

/// What an autoscaler scales on (see docs/operations.md): CPU, traffic, buffered bytes.
fn load_families(x: &mut Exposition, broker: &Broker) {
    let load = crate::telemetry::load::read();
    x.single(
        "process_cpu_seconds_total",
        "counter",
        "CPU time the broker process has used, user and system",
        load.cpu_seconds,
    );
    x.single(
        "strata_cpu_cores",
        "gauge",
        "Cores the broker may use (its cgroup quota, else the machine's)",
        load.cores,
    );
    x.single(
        "strata_cpu_utilisation",
        "gauge",
        "Share of strata_cpu_cores the broker used over the last 10 s or more, 0 to 1",
        load.cpu_utilisation,
    );
    x.single(
        "strata_produce_bytes_per_second",
        "gauge",
        "Record bytes acknowledged to producers per second, over the last 10 s or more",
        load.produce_bytes_per_second,
    );
    x.single(
        "strata_fetch_bytes_per_second",
        "gauge",
        "Record bytes sent to consumers per second, over the last 10 s or more",
        load.fetch_bytes_per_second,
    );
    let (buffered, cap) = broker.write_buffer().buffered_bytes();
    x.single(
        "strata_write_buffer_bytes",
        "gauge",
        "Produced bytes buffered, uploading or waiting for their commit",
        buffered as f64,
    );
    x.single(
        "strata_write_buffer_capacity_bytes",
        "gauge",
        "The cap on strata_write_buffer_bytes (--buffer-max-bytes)",
        cap as f64,
    );
}

/// This node's metadata Raft and whether it is fenced.
fn raft_families(x: &mut Exposition, broker: &Broker) {
    let raft = broker.raft_status();
    x.family(
        "strata_raft_role",
        "gauge",
        "1 for this node's current metadata Raft role",
    );
    for role in ["leader", "follower", "candidate", "learner", "shutdown"] {
        x.sample(
            "strata_raft_role",
            &[("role", role)],
            u8::from(raft.role == role),
        );
    }
    x.single(
        "strata_raft_term",
        "gauge",
        "Current metadata Raft term",
        raft.term as f64,
    );
    x.single(
        "strata_raft_commit_index",
        "gauge",
        "Highest metadata log index this node knows is committed",
        raft.committed as f64,
    );
    x.single(
        "strata_raft_applied_index",
        "gauge",
        "Highest metadata log index applied to this node's state",
        raft.applied as f64,
    );
    x.single(
        "strata_raft_last_log_index",
        "gauge",
        "Last index in this node's metadata log",
        raft.last_log_index as f64,
    );
    x.single(
        "strata_raft_apply_lag",
        "gauge",
        "Committed metadata entries not yet applied here",
        raft.committed.saturating_sub(raft.applied) as f64,
    );
    x.single(
        "strata_raft_leader",
        "gauge",
        "Node id of the metadata Raft leader, -1 when none is known",
        raft.leader.map_or(-1.0, |l| l as f64),
    );
    x.single(
        "strata_broker_fenced",
        "gauge",
        "1 while this broker has fenced itself (cut off from the metadata cluster)",
        u8::from(broker.cut_off()),
    );
    x.single(
        "strata_broker_draining",
        "gauge",
        "1 once a graceful stop began: the broker takes nothing new",
        u8::from(broker.draining()),
    );
}

/// Brokers, topics and consumer lag, from one read of the state.
fn topic_and_lag_families(x: &mut Exposition, view: &StateView) {
    x.single(
        "strata_brokers_live",
        "gauge",
        "Brokers whose lease is current",
        view.live_brokers as f64,
    );
    x.single(
        "strata_brokers_registered",
        "gauge",
        "Brokers known to the metadata, live or not",
        view.registered_brokers as f64,
    );
    x.family(
        "strata_topic_partitions",
        "gauge",
        "Partitions of each topic",
    );
    for (topic, partitions, _) in &view.topics {
        x.sample(
            "strata_topic_partitions",
            &[("topic", topic)],
            *partitions as f64,
        );
    }
    x.family(
        "strata_topic_bytes",
        "gauge",
        "Bytes kept (after retention and compaction) over each topic's partitions",
    );
    for (topic, _, bytes) in &view.topics {
        x.sample("strata_topic_bytes", &[("topic", topic)], *bytes as f64);
    }
    x.single(
        "strata_consumer_group_partitions",
        "gauge",
        "Committed (group, partition) offsets; per-partition lag is exported only up to 10000 of them",
        view.lag_pairs as f64,
    );
    x.family(
        "strata_consumer_lag",
        "gauge",
        "High watermark minus committed offset, by group and partition",
    );
    for l in &view.lags {
        let partition = l.partition.to_string();
        x.sample(
            "strata_consumer_lag",
            &[
                ("group", &l.group),
                ("topic", &l.topic),
                ("partition", &partition),
            ],
            l.lag as f64,
        );
    }
    // The broker does not know a group's isolation level: read_committed consumers read
    // up to the last stable offset, so their lag is this one.
    x.family(
        "strata_consumer_lag_stable",
        "gauge",
        "Last stable offset minus committed offset, by group and partition (the lag of read_committed consumers)",
    );
    for l in &view.lags {
        let partition = l.partition.to_string();
        x.sample(
            "strata_consumer_lag_stable",
            &[
                ("group", &l.group),
                ("topic", &l.topic),
                ("partition", &partition),
            ],
            l.stable_lag as f64,
        );
    }
    x.family(
        "strata_consumer_group_lag",
        "gauge",
        "Sum of a group's lag over its partitions",
    );
    for (group, lag) in &view.group_lag {
        x.sample(
            "strata_consumer_group_lag",
            &[("group", group)],
            *lag as f64,
        );
    }
}

/// The sizes of the metadata state.
fn state_size_families(x: &mut Exposition, st: &crate::metadata::state::StateStats) {
    for (name, help, value) in [
        ("strata_state_topics", "Topics in the metadata", st.topics),
        (
            "strata_state_partitions",
            "Partitions in the metadata",
            st.partitions,
        ),
        (
            "strata_state_index_entries",
            "Index entries over all partitions",
            st.index_entries,
        ),
        (
            "strata_state_aborted_txns",
            "Aborted transactions held in the metadata (compaction moves them into segment footers)",
            st.aborted_txns,
        ),
        (
            "strata_state_objects",
            "Live objects in the store",
            st.objects,
        ),
        (
            "strata_state_flush_objects",
            "Live flush objects",
            st.flush_objects,
        ),
        (
            "strata_state_segment_objects",
            "Live compacted objects (segments and shared objects)",
            st.segment_objects,
        ),
        (
            "strata_state_shared_objects",
            "Live shared compacted objects",
            st.shared_objects,
        ),
        (
            "strata_state_shared_sections",
            "Index entries pointing into shared objects",
            st.shared_sections,
        ),
        (
            "strata_state_garbage_objects",
            "Objects waiting for deletion",
            st.garbage_objects,
        ),
        (
            "strata_state_groups",
            "Groups with committed offsets",
            st.groups,
        ),
        (
            "strata_state_producer_ids",
            "Producer ids remembered",
            st.producer_ids,
        ),
    ] {
        x.single(name, "gauge", help, value as f64);
    }
}

/// What compaction, the cleaner, garbage collection and the listener counted.
fn counter_families(x: &mut Exposition, broker: &Broker) {
    let load = Ordering::Relaxed;
    let (c, k) = (&broker.counters().compaction, &broker.counters().cleaner);
    for (name, help, value) in [
        (
            "strata_compaction_jobs_total",
            "Compaction jobs committed",
            &c.jobs,
        ),
        (
            "strata_compaction_refused_total",
            "Compaction jobs the state machine refused",
            &c.refused,
        ),
        (
            "strata_compaction_failed_total",
            "Compaction jobs that failed",
            &c.failed,
        ),
        (
            "strata_compaction_shared_objects_total",
            "Shared objects compaction wrote",
            &c.shared_objects,
        ),
        (
            "strata_compaction_read_bytes_total",
            "Bytes compaction read",
            &c.bytes_read,
        ),
        (
            "strata_compaction_written_bytes_total",
            "Bytes compaction wrote",
            &c.bytes_written,
        ),
        (
            "strata_cleaner_passes_total",
            "Log cleaner passes committed",
            &k.passes,
        ),
        (
            "strata_cleaner_refused_total",
            "Cleaner passes the state machine refused",
            &k.refused,
        ),
        (
            "strata_cleaner_failed_total",
            "Cleaner passes that failed",
            &k.failed,
        ),
        (
            "strata_cleaner_read_bytes_total",
            "Bytes the cleaner read",
            &k.bytes_read,
        ),
        (
            "strata_cleaner_written_bytes_total",
            "Bytes the cleaner wrote",
            &k.bytes_written,
        ),
        (
            "strata_cleaner_batches_rewritten_total",
            "Batches the cleaner rewrote",
            &k.batches_rewritten,
        ),
        (
            "strata_gc_deleted_total",
            "Garbage objects deleted",
            &broker.counters().gc.deleted,
        ),
    ] {
        x.single(name, "counter", help, value.load(load) as f64);
    }
    let g = &broker.counters().connections;
    for (name, help, value) in [
        (
            "strata_connections_open",
            "Client connections open",
            g.open.load(load),
        ),
        (
            "strata_inflight_request_bytes",
            "Request bytes being read or handled",
            g.inflight_request_bytes.load(load),
        ),
        (
            "strata_snapshot_bytes",
            "Size of the last metadata snapshot shipped to the store",
            broker.counters().shipped.bytes.load(load),
        ),
    ] {
        x.single(name, "gauge", help, value as f64);
    }
}

/// The heap and the cache tiers.
fn memory_families(x: &mut Exposition, broker: &Broker) {
    let (allocated, resident) = crate::telemetry::heap();
    x.single(
        "strata_heap_allocated_bytes",
        "gauge",
        "Heap in use (jemalloc)",
        allocated as f64,
    );
    x.single(
        "strata_heap_resident_bytes",
        "gauge",
        "Memory the allocator holds (jemalloc)",
        resident as f64,
    );
    let (tail, replay) = broker.cache().usage();
    let (tail_cap, replay_cap) = broker.cache().capacity();
    x.family(
        "strata_cache_bytes",
        "gauge",
        "Bytes held in each cache tier's memory",
    );
    x.sample("strata_cache_bytes", &[("tier", "tail")], tail as f64);
    x.sample("strata_cache_bytes", &[("tier", "replay")], replay as f64);
    x.family(
        "strata_cache_capacity_bytes",
        "gauge",
        "Each cache tier's memory budget",
    );
    x.sample(
        "strata_cache_capacity_bytes",
        &[("tier", "tail")],
        tail_cap as f64,
    );
    x.sample(
        "strata_cache_capacity_bytes",
        &[("tier", "replay")],
        replay_cap as f64,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::state::{Command, OffsetCommit};

    #[test]
    fn lag_series_stop_at_the_cap() {
        let mut s = MetadataState::default();
        s.apply(&Command::CreateTopic {
            name: "t".into(),
            topic_id: [1; 16],
            partitions: 2,
            configs: Default::default(),
            now_ms: 1,
            preferred: Vec::new(),
        });
        for group in ["a", "b"] {
            let offsets = (0..2)
                .map(|partition| OffsetCommit {
                    topic: "t".into(),
                    partition,
                    offset: 0,
                    leader_epoch: -1,
                    metadata: None,
                    commit_ms: 1,
                })
                .collect();
            s.apply(&Command::CommitOffsets {
                group: group.into(),
                offsets,
            });
        }
        let (lags, groups, pairs) = consumer_lag(&s, 4);
        assert_eq!((lags.len(), groups.len(), pairs), (4, 2, 4));
        assert!(lags
            .iter()
            .all(|l| l.lag == 0 && l.stable_lag == 0 && l.topic == "t"));
        let (lags, groups, pairs) = consumer_lag(&s, 3);
        assert_eq!((lags.len(), groups.len(), pairs), (0, 0, 4));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut x = Exposition::default();
        x.family("m", "gauge", "help");
        x.sample("m", &[("group", "a\"b\\c\nd"), ("topic", "t")], 2u8);
        assert_eq!(
            x.finish(),
            "# HELP m help\n# TYPE m gauge\nm{group=\"a\\\"b\\\\c\\nd\",topic=\"t\"} 2\n"
        );
    }
}

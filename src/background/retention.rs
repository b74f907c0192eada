//! Time and size retention (`retention.ms`, `retention.bytes`, for topics whose
//! `cleanup.policy` includes `delete`), as Kafka's log cleaner deletes old segments.
//!
//! The Raft leader looks at every partition every `retention_check_interval_ms`. Whole
//! index entries (flush chunks and compacted segments, Strata's segments) past a limit
//! go: the log start moves to the end of the last of them through a `DeleteRecords`
//! command, and the objects they held are released to the garbage collector. Only
//! committed entries are in the index, so nothing buffered or uncommitted is touched.
//! Planning is a pure function of the state and a time.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tracing::{info, warn};

use crate::metadata::state::partition::Partition;
use crate::metadata::state::{Command, MetadataState, Response};
use crate::metadata::Metadata;
use crate::topic_config::TopicDefaults;

/// Retention proposals in flight at once.
const PROPOSALS_IN_FLIGHT: usize = 32;

/// A partition's limits; `None` keeps everything on that count (`-1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub ms: Option<i64>,
    pub bytes: Option<u64>,
}

/// The log start retention moves `p` to, if it moves. By time: every entry whose records
/// are all older than `now_ms - ms` (the running-maximum timestamp is monotonic, so a
/// binary search). By size: the oldest entries as long as what stays is at least `bytes`
/// (Kafka drops a segment only if the log is still over the limit without it).
pub fn new_log_start(p: &Partition, limits: Limits, now_ms: i64) -> Option<i64> {
    let mut drop = 0;
    if let Some(ms) = limits.ms {
        let cutoff = now_ms.saturating_sub(ms);
        drop = p.index.partition_point(|e| e.max_timestamp < cutoff);
    }
    if let Some(bytes) = limits.bytes {
        let mut over = p.size_bytes.saturating_sub(bytes);
        let mut by_size = 0;
        for e in &p.index {
            if e.length > over {
                break;
            }
            over -= e.length;
            by_size += 1;
        }
        drop = drop.max(by_size);
    }
    let start = p.index.get(drop.checked_sub(1)?)?.end_offset();
    (start > p.log_start_offset).then_some(start)
}

/// The retention limits of topic `name` as broker `node`, with its static `defaults`,
/// sees them.
fn limits(
    state: &MetadataState,
    node: u64,
    defaults: &TopicDefaults,
    name: &str,
) -> Option<Limits> {
    let topic = state.topic(name)?;
    let settings = state.config_layers(node, defaults).settings(&topic.configs);
    if !settings.delete {
        return None;
    }
    let limits = Limits {
        ms: settings.retention_ms,
        bytes: settings.retention_bytes,
    };
    (limits.ms.is_some() || limits.bytes.is_some()).then_some(limits)
}

/// One pass: `(topic, partition, new log start, bytes dropped)` for every partition whose
/// log start moves.
pub fn plan(
    state: &MetadataState,
    node: u64,
    defaults: &TopicDefaults,
    now_ms: i64,
) -> Vec<(String, i32, i64, u64)> {
    let mut moves = Vec::new();
    for (name, topic) in state.topics() {
        let Some(limits) = limits(state, node, defaults, name) else {
            continue;
        };
        for (i, p) in topic.partitions.iter().enumerate() {
            if let Some(start) = new_log_start(p, limits, now_ms) {
                let bytes = p
                    .index
                    .iter()
                    .take_while(|e| e.end_offset() <= start)
                    .map(|e| e.length)
                    .sum();
                moves.push((name.clone(), i as i32, start, bytes));
            }
        }
    }
    moves
}

/// Runs the retention passes on whichever broker is the Raft leader, with that broker's
/// static topic defaults (so brokers should share them, as Kafka's should).
pub async fn run(metadata: Arc<Metadata>, interval: Duration, node: u64, defaults: TopicDefaults) {
    loop {
        tokio::time::sleep(interval).await;
        if !metadata.is_leader() {
            continue;
        }
        let now_ms = crate::clock::now_ms();
        let moves = metadata.read(|s| plan(s, node, &defaults, now_ms));
        if moves.is_empty() {
            continue;
        }
        // Several in flight, so that they share Raft rounds and shipped chunks.
        let results: Vec<_> = futures::stream::iter(moves)
            .map(|(topic, partition, offset, dropped)| {
                let metadata = &metadata;
                async move {
                    let cmd = Command::DeleteRecords {
                        topic: topic.clone(),
                        partition,
                        offset,
                    };
                    (topic, partition, dropped, metadata.propose(cmd).await)
                }
            })
            .buffer_unordered(PROPOSALS_IN_FLIGHT)
            .collect()
            .await;
        let (mut partitions, mut bytes) = (0usize, 0u64);
        for (topic, partition, dropped, result) in results {
            match result {
                Ok(Response::LogStart(Ok(_))) => {
                    partitions += 1;
                    bytes += dropped;
                }
                Ok(other) => warn!(%topic, partition, ?other, "retention: log start not moved"),
                Err(e) => {
                    warn!(%topic, partition, error = %e, "retention: proposal failed; next pass retries")
                }
            }
        }
        if partitions > 0 {
            info!(
                partitions,
                bytes, "retention pass: log start moved, old data released for deletion"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::state::partition::IndexEntry;
    use crate::metadata::state::ObjectId;

    fn partition(entries: &[(i64, u32, u64, i64)]) -> Partition {
        let index: Vec<IndexEntry> = entries
            .iter()
            .map(
                |&(base_offset, offset_count, length, max_timestamp)| IndexEntry {
                    base_offset,
                    offset_count,
                    object: ObjectId::default(),
                    position: 0,
                    length,
                    max_timestamp,
                },
            )
            .collect();
        Partition {
            next_offset: index.last().map_or(0, IndexEntry::end_offset),
            log_start_offset: index.first().map_or(0, |e| e.base_offset),
            size_bytes: index.iter().map(|e| e.length).sum(),
            index,
            ..Partition::default()
        }
    }

    const KEEP: Limits = Limits {
        ms: None,
        bytes: None,
    };

    #[test]
    fn time_drops_whole_entries_whose_records_are_all_old() {
        // Running-maximum timestamps: 100, 200, 200, 900.
        let p = partition(&[
            (0, 10, 5, 100),
            (10, 5, 5, 200),
            (15, 5, 5, 200),
            (20, 5, 5, 900),
        ]);
        let by_time = |ms, now| {
            new_log_start(
                &p,
                Limits {
                    ms: Some(ms),
                    ..KEEP
                },
                now,
            )
        };
        assert_eq!(by_time(1000, 1050), None);
        assert_eq!(by_time(1000, 1150), Some(10));
        assert_eq!(by_time(1000, 1201), Some(20));
        // Everything past the limit goes, the newest entry too (Kafka rolls and deletes
        // the active segment): the log is empty, its start at the high watermark.
        assert_eq!(by_time(1000, 5000), Some(25));
        assert_eq!(new_log_start(&p, KEEP, i64::MAX), None);
    }

    #[test]
    fn size_keeps_at_least_the_limit() {
        let p = partition(&[(0, 1, 40, 1), (1, 1, 30, 1), (2, 1, 20, 1), (3, 1, 10, 1)]);
        let by_size = |bytes| {
            new_log_start(
                &p,
                Limits {
                    bytes: Some(bytes),
                    ..KEEP
                },
                0,
            )
        };
        assert_eq!(by_size(100), None);
        assert_eq!(by_size(99), None); // dropping 40 would leave 60 < 99
        assert_eq!(by_size(60), Some(1));
        assert_eq!(by_size(30), Some(2));
        assert_eq!(by_size(0), Some(4));
    }

    #[test]
    fn the_further_of_the_two_wins_and_the_start_never_goes_back() {
        let mut p = partition(&[(0, 1, 40, 100), (1, 1, 30, 200), (2, 1, 20, 300)]);
        let both = Limits {
            ms: Some(1000),
            bytes: Some(20),
        };
        assert_eq!(new_log_start(&p, both, 1150), Some(2)); // size: 2 entries, time: 1
        assert_eq!(new_log_start(&p, both, 1250), Some(2));
        p.log_start_offset = 2;
        assert_eq!(new_log_start(&p, both, 1250), None);
    }
}

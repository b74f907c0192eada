//! Command builders shared by the state's unit tests: a topic, a chunk, a commit of one
//! object. Fixed values everywhere else (topic id, times, sizes), so that a test states
//! only what it is about.

use std::collections::BTreeMap;

use super::{Command, MetadataState, Response, SegmentCommit, SegmentEntry, StateError};

/// CreateTopic with no configs and no assignment hints.
pub(super) fn create(name: &str, partitions: i32) -> Command {
    Command::CreateTopic {
        name: name.into(),
        topic_id: [1; 16],
        partitions,
        configs: BTreeMap::new(),
        now_ms: 0,
        preferred: Vec::new(),
    }
}

/// A plain chunk of `count` records, 100 bytes at position 0.
pub(super) fn entry(topic: &str, partition: i32, count: u32) -> SegmentEntry {
    SegmentEntry {
        topic: topic.into(),
        partition,
        position: 0,
        length: 100,
        offset_count: count,
        max_timestamp: 10,
        producer: None,
    }
}

/// CommitSegments of one object holding `entries`, no limit on its age.
pub(super) fn one_segment(object: String, entries: Vec<SegmentEntry>) -> Command {
    Command::CommitSegments {
        segments: vec![SegmentCommit {
            txn: Vec::new(),
            object,
            object_size: 1,
            uploaded_ms: 0,
            entries,
        }],
        now_ms: 0,
        max_age_ms: 0,
    }
}

/// Commits `e` alone in a new object; its result.
pub(super) fn commit(s: &mut MetadataState, e: SegmentEntry) -> Result<i64, StateError> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match s.apply(&one_segment(format!("o{n}"), vec![e])) {
        Response::Segments(mut r) => r.remove(0).remove(0),
        other => panic!("{other:?}"),
    }
}

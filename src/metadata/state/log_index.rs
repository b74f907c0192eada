//! The partitions' logs in the state machine: commits of uploaded objects give their
//! chunks offsets and index them (transactional chunks and markers go through
//! `transactions/apply.rs`), DeleteRecords moves a log start forward, compactor and
//! cleaner swaps replace a run of index entries with one segment (or, for a shared
//! object, each of many partitions' runs with one section), and the objects nothing
//! refers to any more are forgotten once the leader deleted them.
//!
//! Invariants: each partition's index is contiguous from its log start to its high
//! watermark; offsets, once given, never move (a swap replaces exactly the run it read, or
//! is refused); every index entry holds a reference on its object, so an object becomes
//! garbage exactly when the last entry pointing at it goes (or at once, if none of its
//! chunks got in).

use super::objects::{ObjectId, ObjectKind};
use super::{
    ChunkTxn, Command, CompactionSwap, MetadataState, Response, SectionSwap, SegmentCommit,
    SharedCompaction, StateError,
};

impl MetadataState {
    /// The commands on partitions' logs, as routed by [`MetadataState::apply`].
    pub(super) fn apply_log(&mut self, cmd: &Command) -> Response {
        match cmd {
            Command::CommitSegments {
                segments,
                now_ms,
                max_age_ms,
            } => Response::Segments(
                segments
                    .iter()
                    .map(|s| self.commit_segment(s, *now_ms, *max_age_ms))
                    .collect(),
            ),
            Command::DeleteRecords {
                topic,
                partition,
                offset,
            } => Response::LogStart(self.delete_records(topic, *partition, *offset)),
            Command::Compact(swap) => Response::Compacted(self.compact(swap, ObjectKind::Segment)),
            Command::Clean(swap) => Response::Compacted(self.compact(swap, ObjectKind::Cleaned)),
            Command::CompactShared(shared) => {
                Response::SharedCompacted(self.compact_shared(shared))
            }
            Command::CompactArchiving(swap) => {
                let result = self.compact(swap, ObjectKind::Segment);
                if result.is_ok() {
                    self.archive_aborted(
                        &swap.topic,
                        swap.partition,
                        swap.base_offset,
                        swap.end_offset,
                    );
                }
                Response::Compacted(result)
            }
            Command::CompactSharedArchiving(shared) => {
                // A retried proposal answers as the first one did, which archived already.
                let retried = self.objects.id_of(&shared.object).is_some();
                let results = self.compact_shared(shared);
                if !retried {
                    for (s, result) in shared.sections.iter().zip(&results) {
                        if result.is_ok() {
                            self.archive_aborted(
                                &s.topic,
                                s.partition,
                                s.base_offset,
                                s.end_offset,
                            );
                        }
                    }
                }
                Response::SharedCompacted(results)
            }
            Command::ForgetObjects { ids } => {
                self.objects.forget(ids);
                Response::Empty
            }
            // `apply` routes no other command here.
            _ => Response::Empty,
        }
    }

    /// Gives the chunks of one uploaded object their offsets, in order; one result each.
    fn commit_segment(
        &mut self,
        segment: &SegmentCommit,
        now_ms: i64,
        max_age_ms: i64,
    ) -> Vec<Result<i64, StateError>> {
        let object = segment.object.as_str();
        // An object is committed once: a replay (a recovery racing a live cluster, a
        // retried proposal) must not give its records a second set of offsets.
        if let Some(id) = self.objects.id_of(object) {
            // A retried proposal (its first answer lost with a failed leader) hears the
            // offsets each entry got the first time, as a retried idempotent batch does.
            return segment
                .entries
                .iter()
                .map(|entry| {
                    self.partition(&entry.topic, entry.partition)
                        .and_then(|p| {
                            p.index
                                .iter()
                                .rev()
                                .find(|i| i.object == id && i.position == entry.position)
                        })
                        .map_or(Err(StateError::ObjectAlreadyCommitted), |i| {
                            Err(StateError::DuplicateSequence(i.base_offset))
                        })
                })
                .collect();
        }
        if max_age_ms > 0 && now_ms.saturating_sub(segment.uploaded_ms) > max_age_ms {
            return vec![Err(StateError::ObjectTooOld); segment.entries.len()];
        }
        let Some(id) = self.objects.add(
            object,
            segment.object_size,
            ObjectKind::Flush,
            segment.uploaded_ms,
        ) else {
            return vec![Err(StateError::ObjectAlreadyCommitted); segment.entries.len()];
        };
        let clock_ms = self.clock_ms;
        let mut results = Vec::with_capacity(segment.entries.len());
        for (i, entry) in segment.entries.iter().enumerate() {
            let result = match segment.txn.get(i).unwrap_or(&ChunkTxn::None) {
                ChunkTxn::None => match self.partition_mut(&entry.topic, entry.partition) {
                    Some(partition) => partition.append(id, entry, clock_ms),
                    None => Err(StateError::UnknownTopicOrPartition),
                },
                ChunkTxn::Data => self.append_transactional(id, entry, clock_ms),
                ChunkTxn::Marker { txn_id, commit } => {
                    self.append_marker(id, entry, txn_id, *commit, now_ms)
                }
            };
            if result.is_ok() {
                self.objects.acquire(id);
            }
            results.push(result);
        }
        self.objects.retire_if_unused(id, clock_ms);
        results
    }

    /// DeleteRecords: moves the log start up to `offset` (-1: the high watermark).
    fn delete_records(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<i64, StateError> {
        let p = self
            .partition_mut(topic, partition)
            .ok_or(StateError::UnknownTopicOrPartition)?;
        let target = if offset == -1 { p.next_offset } else { offset };
        if target < 0 || target > p.next_offset {
            return Err(StateError::OffsetOutOfRange);
        }
        if target <= p.log_start_offset {
            return Ok(p.log_start_offset);
        }
        let released = p.advance_log_start(target);
        let now_ms = self.clock_ms;
        for e in released {
            self.objects.release(e.object, now_ms);
        }
        Ok(target)
    }

    /// Swaps a compactor's or the cleaner's output (`kind`) in for the run of index
    /// entries it read, unless that run changed since.
    fn compact(&mut self, swap: &CompactionSwap, kind: ObjectKind) -> Result<ObjectId, StateError> {
        let range = self
            .run_to_replace(
                (&swap.topic, swap.topic_id, swap.partition),
                (swap.base_offset, swap.end_offset),
                &swap.inputs,
            )
            .ok_or(StateError::StaleCompaction)?;
        let id = self
            .objects
            .add(&swap.object, swap.object_size, kind, swap.now_ms)
            .ok_or(StateError::StaleCompaction)?;
        self.replace(
            (&swap.topic, swap.partition),
            range,
            (id, swap.position, swap.length),
        );
        if kind == ObjectKind::Cleaned {
            if let Some(p) = self.partition_mut(&swap.topic, swap.partition) {
                p.txns.cleaned(swap.base_offset, swap.end_offset);
            }
        }
        Ok(id)
    }

    /// A swapped-in compaction of `[base, end)` wrote the run's aborted transactions into
    /// its output: they leave the state.
    fn archive_aborted(&mut self, topic: &str, partition: i32, base: i64, end: i64) {
        if let Some(p) = self.partition_mut(topic, partition) {
            p.txns.archive(base, end);
        }
    }

    /// A compaction round's shared object: added once, each section swapped in alone
    /// (refused if its run changed, like a [`CompactionSwap`]), one reference per section
    /// taken; an object no section got into is garbage at once. A retried proposal (the
    /// object is known already) changes nothing and hears, per section, whether the
    /// first one took it.
    fn compact_shared(&mut self, shared: &SharedCompaction) -> Vec<Result<(), StateError>> {
        if let Some(id) = self.objects.id_of(&shared.object) {
            return shared
                .sections
                .iter()
                .map(|s| {
                    let indexed = self.partition(&s.topic, s.partition).is_some_and(|p| {
                        p.entries_from(s.base_offset, 1).first().is_some_and(|e| {
                            e.object == id
                                && e.position == s.position
                                && e.base_offset == s.base_offset
                        })
                    });
                    if indexed {
                        Ok(())
                    } else {
                        Err(StateError::StaleCompaction)
                    }
                })
                .collect();
        }
        let Some(id) = self.objects.add(
            &shared.object,
            shared.object_size,
            ObjectKind::Shared,
            shared.now_ms,
        ) else {
            return vec![Err(StateError::StaleCompaction); shared.sections.len()];
        };
        let results = shared
            .sections
            .iter()
            .map(|s: &SectionSwap| {
                let range = self
                    .run_to_replace(
                        (&s.topic, s.topic_id, s.partition),
                        (s.base_offset, s.end_offset),
                        &s.inputs,
                    )
                    .ok_or(StateError::StaleCompaction)?;
                self.replace((&s.topic, s.partition), range, (id, s.position, s.length));
                Ok(())
            })
            .collect();
        self.objects.retire_if_unused(id, self.clock_ms);
        results
    }

    /// The index positions of a swap's run, if it is still exactly `inputs` in the
    /// partition of the same topic (by id: a topic deleted and re-created is another).
    fn run_to_replace(
        &self,
        (topic, topic_id, partition): (&str, [u8; 16], i32),
        (base_offset, end_offset): (i64, i64),
        inputs: &[(ObjectId, u64)],
    ) -> Option<std::ops::Range<usize>> {
        let topic = self.topics.get(topic).filter(|t| t.id == topic_id)?;
        let p = usize::try_from(partition)
            .ok()
            .and_then(|i| topic.partitions.get(i))?;
        p.run_matching(base_offset, end_offset, inputs)
    }

    /// Replaces the entries `range` of a partition with one entry at `(object, position,
    /// length)`, which takes a reference; the replaced entries release theirs.
    fn replace(
        &mut self,
        (topic, partition): (&str, i32),
        range: std::ops::Range<usize>,
        (object, position, length): (ObjectId, u64, u64),
    ) {
        let Some(p) = self.partition_mut(topic, partition) else {
            return;
        };
        let replaced = p.replace_run(range, object, position, length);
        self.objects.acquire(object);
        let now_ms = self.clock_ms;
        for e in replaced {
            self.objects.release(e.object, now_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{commit, create, entry, one_segment};
    use std::collections::BTreeMap;

    use super::super::{MetadataState, SegmentEntry};
    use super::*;

    /// The swap of a partition's whole index as a section at `position`.
    fn section(s: &MetadataState, topic: &str, partition: i32, position: u64) -> SectionSwap {
        let p = s.partition(topic, partition).expect("partition");
        SectionSwap {
            topic: topic.into(),
            topic_id: s.topic(topic).expect("topic").id,
            partition,
            base_offset: p.index[0].base_offset,
            end_offset: p.next_offset,
            inputs: p.index.iter().map(|e| (e.object, e.position)).collect(),
            position,
            length: p.index.iter().map(|e| e.length).sum(),
        }
    }

    fn shared(object: &str, sections: Vec<SectionSwap>) -> Command {
        Command::CompactShared(SharedCompaction {
            object: object.into(),
            object_size: 1000,
            sections,
            now_ms: 50,
        })
    }

    #[test]
    fn a_shared_object_swaps_each_section_alone_and_counts_the_ones_taken() {
        let mut s = MetadataState::default();
        s.apply(&create("t", 3));
        for object in ["a", "b"] {
            s.apply(&one_segment(
                object.into(),
                vec![entry("t", 0, 2), entry("t", 1, 3), entry("t", 2, 4)],
            ));
        }
        let mut stale = section(&s, "t", 2, 8 + 400);
        stale.end_offset += 1;
        let sections = vec![section(&s, "t", 0, 8), section(&s, "t", 1, 8 + 200), stale];
        let cmd = shared("compacted/s1", sections);
        assert_eq!(
            s.apply(&cmd),
            Response::SharedCompacted(vec![Ok(()), Ok(()), Err(StateError::StaleCompaction)])
        );
        let id = s.objects().id_of("compacted/s1").expect("added");
        assert_eq!(
            s.objects().get(id).map(|o| (o.kind, o.refs)),
            Some((ObjectKind::Shared, 2))
        );
        for (partition, position, count) in [(0, 8, 4), (1, 208, 6)] {
            let p = s.partition("t", partition).expect("p");
            assert_eq!(p.index.len(), 1);
            assert_eq!(
                (
                    p.index[0].object,
                    p.index[0].position,
                    p.index[0].offset_count
                ),
                (id, position, count)
            );
        }
        assert_eq!(s.partition("t", 2).map(|p| p.index.len()), Some(2));
        // The flush objects still hold partition 2's chunks.
        assert_eq!((s.object_refs("a"), s.object_refs("b")), (1, 1));
        let stats = s.stats();
        assert_eq!((stats.shared_objects, stats.shared_sections), (1, 2));

        // A retried proposal changes nothing and hears what the first one did.
        let before = s.clone();
        assert_eq!(
            s.apply(&cmd),
            Response::SharedCompacted(vec![Ok(()), Ok(()), Err(StateError::StaleCompaction)])
        );
        assert_eq!(s, before);

        // A section leaves the object when its entry is replaced; the last one makes it
        // garbage.
        let merged = shared("compacted/s2", vec![section(&s, "t", 0, 8)]);
        assert_eq!(s.apply(&merged), Response::SharedCompacted(vec![Ok(())]));
        assert_eq!(s.object_refs("compacted/s1"), 1);
        s.apply(&Command::DeleteRecords {
            topic: "t".into(),
            partition: 1,
            offset: -1,
        });
        assert!(s
            .objects()
            .id_of("compacted/s1")
            .is_some_and(|id| s.objects().get(id).is_none()));
        assert_eq!(s.stats().garbage_objects, 1);
    }

    #[test]
    fn a_shared_object_no_section_got_into_is_garbage_at_once() {
        let mut s = MetadataState::default();
        s.apply(&create("t", 1));
        s.apply(&one_segment("a".into(), vec![entry("t", 0, 2)]));
        let mut stale = section(&s, "t", 0, 8);
        stale.topic_id = [9; 16];
        assert_eq!(
            s.apply(&shared("compacted/s", vec![stale])),
            Response::SharedCompacted(vec![Err(StateError::StaleCompaction)])
        );
        assert!(s.objects().is_known("compacted/s"));
        assert_eq!(
            s.objects()
                .garbage()
                .map(|(_, g)| (g.name.clone(), g.since_ms))
                .collect::<Vec<_>>(),
            vec![("compacted/s".to_string(), 50)]
        );
        assert_eq!(s.object_refs("a"), 1);
        // Two sections of one partition apply in order, each against what the one before
        // left.
        let first = section(&s, "t", 0, 8);
        s.apply(&one_segment("b".into(), vec![entry("t", 0, 3)]));
        let p = s.partition("t", 0).expect("p");
        let second = SectionSwap {
            base_offset: 2,
            inputs: vec![(p.index[1].object, p.index[1].position)],
            position: 300,
            length: 100,
            ..section(&s, "t", 0, 0)
        };
        assert_eq!(
            s.apply(&shared("compacted/s3", vec![first, second])),
            Response::SharedCompacted(vec![Ok(()), Ok(())])
        );
        assert_eq!(s.object_refs("compacted/s3"), 2);
        assert_eq!(s.stats().flush_objects, 0);
    }

    #[test]
    fn offsets_are_assigned_in_commit_order() {
        let mut s = MetadataState::default();
        assert_eq!(s.apply(&create("t", 2)), Response::Topic(Ok(())));
        let r = s.apply(&one_segment(
            "a".into(),
            vec![
                entry("t", 0, 3),
                entry("t", 1, 5),
                entry("nope", 0, 1),
                entry("t", 2, 1),
            ],
        ));
        assert_eq!(
            r,
            Response::Segments(vec![vec![
                Ok(0),
                Ok(0),
                Err(StateError::UnknownTopicOrPartition),
                Err(StateError::UnknownTopicOrPartition)
            ]])
        );
        let r = s.apply(&one_segment("b".into(), vec![entry("t", 0, 2)]));
        assert_eq!(r, Response::Segments(vec![vec![Ok(3)]]));
        let p = s.partition("t", 0).unwrap();
        assert_eq!(p.next_offset, 5);
        assert_eq!(
            Some(p.entries_from(4, 10)[0].object),
            s.objects().id_of("b")
        );
        assert_eq!(p.entries_from(0, 10).len(), 2);
        assert_eq!(p.entries_from(5, 10).len(), 0);
        assert_eq!(s.object_refs("a"), 2);
        // An object is committed once, however often it is proposed; a retry hears the
        // offsets of the first commit.
        let r = s.apply(&one_segment("b".into(), vec![entry("t", 0, 2)]));
        assert_eq!(
            r,
            Response::Segments(vec![vec![Err(StateError::DuplicateSequence(3))]])
        );
        assert_eq!(s.partition("t", 0).unwrap().next_offset, 5);
        // Several objects in one entry get offsets in order.
        let r = s.apply(&Command::CommitSegments {
            segments: vec![
                SegmentCommit {
                    txn: Vec::new(),
                    object: "c".into(),
                    object_size: 1,
                    uploaded_ms: 0,
                    entries: vec![entry("t", 0, 4)],
                },
                SegmentCommit {
                    txn: Vec::new(),
                    object: "d".into(),
                    object_size: 1,
                    uploaded_ms: 0,
                    entries: vec![entry("t", 0, 1), entry("t", 1, 1)],
                },
            ],
            now_ms: 0,
            max_age_ms: 0,
        });
        assert_eq!(r, Response::Segments(vec![vec![Ok(5)], vec![Ok(9), Ok(5)]]));
    }

    #[test]
    fn timestamp_lookup_uses_batch_max_timestamp() {
        let mut s = MetadataState::default();
        s.apply(&create("t", 1));
        for (i, ts) in [100, 200, 300].into_iter().enumerate() {
            let mut e = entry("t", 0, 2);
            e.max_timestamp = ts;
            e.position = i as u64;
            s.apply(&one_segment(format!("o{i}"), vec![e]));
        }
        let p = s.partition("t", 0).unwrap();
        assert_eq!(p.offset_for_timestamp(0), Some(0));
        assert_eq!(p.offset_for_timestamp(150), Some(2));
        assert_eq!(p.offset_for_timestamp(300), Some(4));
        assert_eq!(p.offset_for_timestamp(301), None);
        assert_eq!(p.max_timestamp(), Some((300, 4)));
    }

    #[test]
    fn delete_records_advances_the_log_start() {
        let mut s = MetadataState::default();
        s.apply(&create("t", 1));
        for (object, ts) in [("a", 100), ("b", 200), ("c", 300)] {
            let mut e = entry("t", 0, 10);
            e.max_timestamp = ts;
            s.apply(&one_segment(object.into(), vec![e]));
        }
        let delete = |offset| Command::DeleteRecords {
            topic: "t".into(),
            partition: 0,
            offset,
        };
        assert_eq!(s.apply(&delete(15)), Response::LogStart(Ok(15)));
        let p = s.partition("t", 0).unwrap();
        assert_eq!(p.log_start_offset, 15);
        // The chunk wholly below 15 is gone and its object released; the one holding 15 stays.
        assert_eq!(p.index.len(), 2);
        assert_eq!(p.size_bytes, 200);
        assert_eq!(s.object_refs("a"), 0);
        assert_eq!(s.object_refs("b"), 1);
        assert_eq!(p.offset_for_timestamp(0), Some(15));
        // Going backwards is a no-op that reports the current start.
        assert_eq!(s.apply(&delete(3)), Response::LogStart(Ok(15)));
        assert_eq!(
            s.apply(&delete(31)),
            Response::LogStart(Err(StateError::OffsetOutOfRange))
        );
        assert_eq!(
            s.apply(&Command::DeleteRecords {
                topic: "t".into(),
                partition: 1,
                offset: 0
            }),
            Response::LogStart(Err(StateError::UnknownTopicOrPartition))
        );
        // -1 means the high watermark: everything goes.
        assert_eq!(s.apply(&delete(-1)), Response::LogStart(Ok(30)));
        let p = s.partition("t", 0).unwrap();
        assert!(p.index.is_empty());
        assert_eq!(p.entries_from(30, 10).len(), 0);
        // Writes continue at the high watermark.
        assert_eq!(commit(&mut s, entry("t", 0, 1)), Ok(30));
    }

    #[test]
    fn a_swap_replaces_a_run_and_queues_its_objects_for_deletion() {
        let mut s = MetadataState::default();
        let id = [7; 16];
        s.apply(&Command::CreateTopic {
            name: "t".into(),
            topic_id: id,
            partitions: 1,
            configs: BTreeMap::new(),
            now_ms: 0,
            preferred: Vec::new(),
        });
        for (i, ts) in [(0, 100), (1, 50), (2, 300)] {
            s.apply(&Command::CommitSegments {
                segments: vec![SegmentCommit {
                    txn: Vec::new(),
                    object: format!("segments/{i}"),
                    object_size: 100,
                    uploaded_ms: 0,
                    entries: vec![SegmentEntry {
                        topic: "t".into(),
                        partition: 0,
                        position: 8,
                        length: 10,
                        offset_count: 5,
                        max_timestamp: ts,
                        producer: None,
                    }],
                }],
                now_ms: 1,
                max_age_ms: 0,
            });
        }
        let inputs: Vec<_> = s
            .partition("t", 0)
            .expect("p")
            .index
            .iter()
            .take(2)
            .map(|e| (e.object, e.position))
            .collect();
        let swap = CompactionSwap {
            topic: "t".into(),
            topic_id: id,
            partition: 0,
            base_offset: 0,
            end_offset: 10,
            inputs,
            object: "compacted/a".into(),
            object_size: 60,
            position: 8,
            length: 20,
            now_ms: 42,
        };
        assert!(matches!(
            s.apply(&Command::Compact(swap.clone())),
            Response::Compacted(Ok(_))
        ));
        let p = s.partition("t", 0).expect("p");
        assert_eq!(p.index.len(), 2);
        assert_eq!((p.index[0].base_offset, p.index[0].offset_count), (0, 10));
        assert_eq!(p.index[0].max_timestamp, 100, "running max kept");
        assert_eq!(p.offset_for_timestamp(60), Some(0));
        assert_eq!(p.offset_for_timestamp(200), Some(10));
        assert_eq!(p.max_timestamp(), Some((300, 10)));
        assert_eq!(s.stats().garbage_objects, 2);
        assert_eq!(
            s.objects()
                .garbage()
                .map(|(_, g)| g.since_ms)
                .collect::<Vec<_>>(),
            vec![42, 42]
        );
        // The same swap again: its input is gone.
        let again = CompactionSwap {
            object: "compacted/b".into(),
            ..swap
        };
        assert_eq!(
            s.apply(&Command::Compact(again)),
            Response::Compacted(Err(StateError::StaleCompaction))
        );
        // A commit of an object the sweep could already have taken for an orphan is refused.
        let late = Command::CommitSegments {
            segments: vec![SegmentCommit {
                txn: Vec::new(),
                object: "segments/late".into(),
                object_size: 1,
                uploaded_ms: 0,
                entries: vec![SegmentEntry {
                    topic: "t".into(),
                    partition: 0,
                    position: 8,
                    length: 10,
                    offset_count: 5,
                    max_timestamp: 0,
                    producer: None,
                }],
            }],
            now_ms: 1_000_000,
            max_age_ms: 1000,
        };
        assert_eq!(
            s.apply(&late),
            Response::Segments(vec![vec![Err(StateError::ObjectTooOld)]])
        );
        assert!(!s.objects().is_known("segments/late"));
    }
}

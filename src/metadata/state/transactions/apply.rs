//! How [`MetadataState`] applies transactions: the coordinator commands, and the
//! transactional chunks and markers of `CommitSegments`. Inside `state` so that it
//! reaches the state's fields; the rules themselves are the parent module's.

use super::{
    Completion, EndOutcome, InitOutcome, MarkerOutcome, TopicPartition, TxnError, TxnState,
};
use crate::metadata::state::objects::ObjectId;
use crate::metadata::state::{
    Command, MetadataState, OffsetCommit, SegmentEntry, StateError, TxnReply,
};

impl MetadataState {
    pub(in crate::metadata::state) fn apply_txn(
        &mut self,
        cmd: &Command,
    ) -> Result<TxnReply, TxnError> {
        match cmd {
            Command::InitTransactional {
                txn_id,
                timeout_ms,
                current,
                now_ms,
            } => {
                let next = &mut self.next_producer_id;
                let outcome =
                    self.txns
                        .init_producer(txn_id, *timeout_ms, *now_ms, *current, || {
                            let id = *next;
                            *next += 1;
                            id
                        })?;
                Ok(match outcome {
                    InitOutcome::Ready { producer_id, epoch } => {
                        TxnReply::Ready { producer_id, epoch }
                    }
                    InitOutcome::MustAbortFirst {
                        producer_id,
                        epoch,
                        markers,
                    } => TxnReply::Markers {
                        commit: false,
                        producer_id,
                        epoch,
                        partitions: markers,
                    },
                })
            }
            Command::AddPartitionsToTxn {
                txn_id,
                producer_id,
                epoch,
                partitions,
                now_ms,
            } => self
                .txns
                .add_partitions(txn_id, *producer_id, *epoch, partitions, *now_ms)
                .map(|()| TxnReply::Done),
            Command::AddOffsetsToTxn {
                txn_id,
                producer_id,
                epoch,
                group,
                now_ms,
            } => self
                .txns
                .add_offsets(txn_id, *producer_id, *epoch, group, *now_ms)
                .map(|()| TxnReply::Done),
            Command::TxnOffsetCommit {
                txn_id,
                producer_id,
                epoch,
                group,
                offsets,
                ..
            } => self
                .txns
                .txn_offset_commit(txn_id, *producer_id, *epoch, group, offsets.iter().cloned())
                .map(|()| TxnReply::Done),
            Command::EndTxn {
                txn_id,
                producer_id,
                epoch,
                commit,
                now_ms,
            } => {
                let outcome = self
                    .txns
                    .end_txn(txn_id, *producer_id, *epoch, *commit, *now_ms)?;
                Ok(self.ended(outcome, *now_ms))
            }
            Command::AbortTimedOutTxn { txn_id, now_ms } => {
                let outcome = self.txns.abort_expired(txn_id, *now_ms)?;
                Ok(self.ended(outcome, *now_ms))
            }
            Command::ExpireTransactionalIds {
                now_ms,
                expiration_ms,
            } => {
                self.txns.expire_ids(*now_ms, *expiration_ms);
                Ok(TxnReply::Done)
            }
            _ => Err(TxnError::InvalidRequest),
        }
    }

    /// The reply to an EndTxn or timeout abort; a transaction with nothing to mark is
    /// complete already, and its offsets apply now.
    fn ended(&mut self, outcome: EndOutcome, now_ms: i64) -> TxnReply {
        match outcome {
            EndOutcome::Prepared {
                commit,
                producer_id,
                epoch,
                markers,
            } => TxnReply::Markers {
                commit,
                producer_id,
                epoch,
                partitions: markers,
            },
            EndOutcome::Completed(completion) => {
                self.apply_completion(completion, now_ms);
                TxnReply::Done
            }
            EndOutcome::AlreadyEnded => TxnReply::Done,
        }
    }

    /// A committed transaction's offsets reach their groups.
    fn apply_completion(&mut self, completion: Completion, now_ms: i64) {
        let mut by_group: std::collections::BTreeMap<String, Vec<OffsetCommit>> =
            std::collections::BTreeMap::new();
        for ((group, topic, partition), o) in completion.offsets {
            by_group.entry(group).or_default().push(OffsetCommit {
                topic,
                partition,
                offset: o.offset,
                leader_epoch: o.leader_epoch,
                metadata: o.metadata,
                commit_ms: now_ms,
            });
        }
        for (group, offsets) in by_group {
            // A partition deleted meanwhile is skipped, as a plain commit would be.
            self.commit_offsets(&group, &offsets);
        }
    }

    /// A transactional chunk: only inside its producer's ongoing transaction, which must
    /// hold the partition, so no write can open a transaction that nothing will end.
    pub(in crate::metadata::state) fn append_transactional(
        &mut self,
        object: ObjectId,
        entry: &SegmentEntry,
        clock_ms: i64,
    ) -> Result<i64, StateError> {
        let producer = entry
            .producer
            .ok_or(StateError::Txn(TxnError::InvalidTxnState))?;
        let tp = TopicPartition::new(entry.topic.clone(), entry.partition);
        self.txns
            .check_write(producer.producer_id, producer.epoch, &tp)
            .map_err(StateError::Txn)?;
        let partition = self
            .partition_mut(&entry.topic, entry.partition)
            .ok_or(StateError::UnknownTopicOrPartition)?;
        partition
            .txns
            .may_record(producer.producer_id)
            .map_err(StateError::Txn)?;
        let base = partition.append(object, entry, clock_ms)?;
        partition
            .txns
            .record_transactional_batch(producer.producer_id, base)
            .map_err(StateError::Txn)?;
        Ok(base)
    }

    /// A marker: appended only when its transaction waits for it on this partition
    /// (never twice, never from a former coordinator after the transaction moved on);
    /// the last one completes the transaction and applies its offsets.
    pub(in crate::metadata::state) fn append_marker(
        &mut self,
        object: ObjectId,
        entry: &SegmentEntry,
        txn_id: &str,
        commit: bool,
        now_ms: i64,
    ) -> Result<i64, StateError> {
        let producer = entry.producer.ok_or(StateError::StaleMarker)?;
        let expected = match self.txns.get(txn_id).map(|m| m.state) {
            Some(TxnState::PrepareCommit) => commit,
            Some(TxnState::PrepareAbort) => !commit,
            _ => false,
        };
        if !expected {
            return Err(StateError::StaleMarker);
        }
        let tp = TopicPartition::new(entry.topic.clone(), entry.partition);
        let MarkerOutcome::Written { commit, completed } =
            self.txns
                .marker_written(txn_id, producer.producer_id, producer.epoch, &tp)
        else {
            return Err(StateError::StaleMarker);
        };
        let clock_ms = self.clock_ms;
        // A deleted partition needs no marker: the transaction still completes.
        let result = match self.partition_mut(&entry.topic, entry.partition) {
            Some(partition) => {
                let plain = SegmentEntry {
                    producer: None,
                    ..entry.clone()
                };
                let base = partition.append(object, &plain, clock_ms)?;
                partition.txns.marker(producer.producer_id, commit, base);
                Ok(base)
            }
            None => Err(StateError::UnknownTopicOrPartition),
        };
        if let Some(completion) = completed {
            self.apply_completion(completion, now_ms);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::PendingOffset;
    use super::*;
    use crate::metadata::state::{ChunkTxn, ProducerBatch, Response, SegmentCommit};

    fn state() -> MetadataState {
        let mut s = MetadataState::default();
        s.apply(&Command::CreateTopic {
            name: "t".into(),
            topic_id: [1; 16],
            partitions: 2,
            configs: BTreeMap::new(),
            now_ms: 0,
            preferred: vec![],
        });
        s
    }

    fn txn(s: &mut MetadataState, cmd: Command) -> Result<TxnReply, TxnError> {
        match s.apply(&cmd) {
            Response::Txn(r) => r,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// One chunk of `count` records in its own object.
    fn commit(
        s: &mut MetadataState,
        object: &str,
        partition: i32,
        count: u32,
        producer: Option<ProducerBatch>,
        kind: ChunkTxn,
    ) -> Result<i64, StateError> {
        let r = s.apply(&Command::CommitSegments {
            segments: vec![SegmentCommit {
                object: object.into(),
                object_size: 100,
                uploaded_ms: 1,
                entries: vec![SegmentEntry {
                    topic: "t".into(),
                    partition,
                    position: 0,
                    length: 100,
                    offset_count: count,
                    max_timestamp: 1,
                    producer,
                }],
                txn: vec![kind],
            }],
            now_ms: 10,
            max_age_ms: 0,
        });
        let Response::Segments(mut r) = r else {
            panic!("unexpected {r:?}")
        };
        r.remove(0).remove(0)
    }

    fn batch(pid: i64, epoch: i16, seq: i32, count: i32) -> Option<ProducerBatch> {
        Some(ProducerBatch {
            producer_id: pid,
            epoch,
            first_sequence: seq,
            last_sequence: seq + count - 1,
        })
    }

    fn marker(txn_id: &str, commit: bool) -> ChunkTxn {
        ChunkTxn::Marker {
            txn_id: txn_id.into(),
            commit,
        }
    }

    fn init(s: &mut MetadataState, id: &str) -> (i64, i16) {
        match txn(
            s,
            Command::InitTransactional {
                txn_id: id.into(),
                timeout_ms: 60_000,
                current: None,
                now_ms: 1,
            },
        ) {
            Ok(TxnReply::Ready { producer_id, epoch }) => (producer_id, epoch),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn add(s: &mut MetadataState, id: &str, (pid, epoch): (i64, i16), partitions: &[i32]) {
        let r = txn(
            s,
            Command::AddPartitionsToTxn {
                txn_id: id.into(),
                producer_id: pid,
                epoch,
                partitions: partitions
                    .iter()
                    .map(|p| TopicPartition::new("t", *p))
                    .collect(),
                now_ms: 2,
            },
        );
        assert_eq!(r, Ok(TxnReply::Done));
    }

    fn end(s: &mut MetadataState, id: &str, (pid, epoch): (i64, i16), commit: bool) -> TxnReply {
        txn(
            s,
            Command::EndTxn {
                txn_id: id.into(),
                producer_id: pid,
                epoch,
                commit,
                now_ms: 3,
            },
        )
        .expect("end")
    }

    fn lso(s: &MetadataState, p: i32) -> i64 {
        s.partition("t", p).expect("partition").last_stable_offset()
    }

    #[test]
    fn a_committed_transaction_moves_the_lso_and_applies_its_offsets() {
        let mut s = state();
        commit(&mut s, "o0", 0, 2, None, ChunkTxn::None).expect("plain");
        let p = init(&mut s, "x");
        add(&mut s, "x", p, &[0, 1]);
        let r = txn(
            &mut s,
            Command::AddOffsetsToTxn {
                txn_id: "x".into(),
                producer_id: p.0,
                epoch: p.1,
                group: "g".into(),
                now_ms: 2,
            },
        );
        assert_eq!(r, Ok(TxnReply::Done));
        let r = txn(
            &mut s,
            Command::TxnOffsetCommit {
                txn_id: "x".into(),
                producer_id: p.0,
                epoch: p.1,
                group: "g".into(),
                offsets: vec![(
                    TopicPartition::new("t", 1),
                    PendingOffset {
                        offset: 42,
                        leader_epoch: -1,
                        metadata: None,
                    },
                )],
                now_ms: 2,
            },
        );
        assert_eq!(r, Ok(TxnReply::Done));
        assert_eq!(
            commit(&mut s, "o1", 0, 3, batch(p.0, p.1, 0, 3), ChunkTxn::Data),
            Ok(2)
        );
        commit(&mut s, "o2", 0, 1, None, ChunkTxn::None).expect("plain");
        assert_eq!(lso(&s, 0), 2);
        assert_eq!(s.partition("t", 0).map(|p| p.next_offset), Some(6));
        // The offsets wait for the commit.
        assert!(s.committed_offset("g", "t", 1).is_none());
        let TxnReply::Markers {
            commit: true,
            partitions,
            ..
        } = end(&mut s, "x", p, true)
        else {
            panic!("expected markers")
        };
        assert_eq!(
            partitions,
            vec![TopicPartition::new("t", 0), TopicPartition::new("t", 1)]
        );
        // A transactional write after the decision is refused.
        assert_eq!(
            commit(&mut s, "o3", 0, 1, batch(p.0, p.1, 3, 1), ChunkTxn::Data),
            Err(StateError::Txn(TxnError::InvalidTxnState))
        );
        // An abort marker for a committing transaction is stale.
        assert_eq!(
            commit(
                &mut s,
                "o4",
                0,
                1,
                batch(p.0, p.1, -1, 1),
                marker("x", false)
            ),
            Err(StateError::StaleMarker)
        );
        assert_eq!(
            commit(
                &mut s,
                "o5",
                0,
                1,
                batch(p.0, p.1, -1, 1),
                marker("x", true)
            ),
            Ok(6)
        );
        assert_eq!(lso(&s, 0), 7);
        // Written once only.
        assert_eq!(
            commit(
                &mut s,
                "o6",
                0,
                1,
                batch(p.0, p.1, -1, 1),
                marker("x", true)
            ),
            Err(StateError::StaleMarker)
        );
        assert!(s.committed_offset("g", "t", 1).is_none());
        assert_eq!(
            commit(
                &mut s,
                "o7",
                1,
                1,
                batch(p.0, p.1, -1, 1),
                marker("x", true)
            ),
            Ok(0)
        );
        assert_eq!(s.committed_offset("g", "t", 1).map(|c| c.offset), Some(42));
        assert!(s
            .partition("t", 0)
            .is_some_and(|p| p.txns.aborted().is_empty()));
    }

    #[test]
    fn an_aborted_transaction_is_indexed_and_a_fenced_producer_cannot_write() {
        let mut s = state();
        let old = init(&mut s, "x");
        add(&mut s, "x", old, &[0]);
        assert_eq!(
            commit(
                &mut s,
                "o1",
                0,
                2,
                batch(old.0, old.1, 0, 2),
                ChunkTxn::Data
            ),
            Ok(0)
        );
        // A new producer with the same id fences the old one and aborts its transaction.
        let r = txn(
            &mut s,
            Command::InitTransactional {
                txn_id: "x".into(),
                timeout_ms: 60_000,
                current: None,
                now_ms: 5,
            },
        );
        let Ok(TxnReply::Markers {
            commit: false,
            producer_id,
            epoch,
            ..
        }) = r
        else {
            panic!("expected abort markers, got {r:?}")
        };
        assert_eq!((producer_id, epoch), (old.0, old.1 + 1));
        assert_eq!(
            commit(
                &mut s,
                "o2",
                0,
                1,
                batch(old.0, old.1, 2, 1),
                ChunkTxn::Data
            ),
            Err(StateError::Txn(TxnError::ProducerFenced))
        );
        assert_eq!(lso(&s, 0), 0);
        assert_eq!(
            commit(
                &mut s,
                "o3",
                0,
                1,
                batch(producer_id, epoch, -1, 1),
                marker("x", false)
            ),
            Ok(2)
        );
        assert_eq!(lso(&s, 0), 3);
        let aborted = s.partition("t", 0).map(|p| p.txns.aborted_in(0, 3));
        assert_eq!(aborted.map(|a| a.len()), Some(1));
        // The retry now gets the producer going.
        let r = txn(
            &mut s,
            Command::InitTransactional {
                txn_id: "x".into(),
                timeout_ms: 60_000,
                current: None,
                now_ms: 6,
            },
        );
        assert!(matches!(r, Ok(TxnReply::Ready { .. })), "{r:?}");
        // A transactional write to a partition never added is refused.
        let new = init(&mut s, "y");
        assert_eq!(
            commit(
                &mut s,
                "o4",
                1,
                1,
                batch(new.0, new.1, 0, 1),
                ChunkTxn::Data
            ),
            Err(StateError::Txn(TxnError::InvalidTxnState))
        );
    }

    #[test]
    fn a_timed_out_transaction_is_aborted_and_the_log_start_trims_the_index() {
        let mut s = state();
        let p = init(&mut s, "x");
        add(&mut s, "x", p, &[0]);
        commit(&mut s, "o1", 0, 2, batch(p.0, p.1, 0, 2), ChunkTxn::Data).expect("data");
        let early = txn(
            &mut s,
            Command::AbortTimedOutTxn {
                txn_id: "x".into(),
                now_ms: 1_000,
            },
        );
        assert_eq!(early, Err(TxnError::InvalidTxnState));
        let r = txn(
            &mut s,
            Command::AbortTimedOutTxn {
                txn_id: "x".into(),
                now_ms: 100_000,
            },
        );
        let Ok(TxnReply::Markers { epoch, .. }) = r else {
            panic!("{r:?}")
        };
        commit(
            &mut s,
            "o2",
            0,
            1,
            batch(p.0, epoch, -1, 1),
            marker("x", false),
        )
        .expect("marker");
        assert_eq!(lso(&s, 0), 3);
        s.apply(&Command::DeleteRecords {
            topic: "t".into(),
            partition: 0,
            offset: 3,
        });
        assert!(s
            .partition("t", 0)
            .is_some_and(|p| p.txns.aborted().is_empty()));
    }

    /// A cleaned output holding an abort marker drops the transaction from the index (the
    /// cleaner dropped its records); object compaction, which keeps them, does not.
    #[test]
    fn a_cleaned_abort_marker_leaves_the_index() {
        let mut s = state();
        let p = init(&mut s, "x");
        add(&mut s, "x", p, &[0]);
        commit(&mut s, "o1", 0, 2, batch(p.0, p.1, 0, 2), ChunkTxn::Data).expect("data");
        end(&mut s, "x", p, false);
        commit(
            &mut s,
            "o2",
            0,
            1,
            batch(p.0, p.1, -1, 1),
            marker("x", false),
        )
        .expect("marker");
        let aborted = |s: &MetadataState| s.partition("t", 0).map_or(0, |p| p.txns.aborted().len());
        assert_eq!(aborted(&s), 1);
        let swap = |s: &MetadataState, object: &str| {
            let index = s
                .partition("t", 0)
                .map(|p| p.index.clone())
                .unwrap_or_default();
            crate::metadata::state::CompactionSwap {
                topic: "t".into(),
                topic_id: [1; 16],
                partition: 0,
                base_offset: 0,
                end_offset: 3,
                inputs: index.iter().map(|e| (e.object, e.position)).collect(),
                object: object.into(),
                object_size: 10,
                position: 0,
                length: 10,
                now_ms: 20,
            }
        };
        let r = s.apply(&Command::Compact(swap(&s, "c1")));
        assert!(matches!(r, Response::Compacted(Ok(_))), "{r:?}");
        assert_eq!(aborted(&s), 1);
        let r = s.apply(&Command::Clean(swap(&s, "c2")));
        assert!(matches!(r, Response::Compacted(Ok(_))), "{r:?}");
        assert_eq!(aborted(&s), 0);
        assert_eq!(lso(&s, 0), 3);
    }
}

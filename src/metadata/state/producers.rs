//! Idempotent producers in the state machine: the producer ids and epochs InitProducerId
//! hands out without a transactional id (a transactional producer takes its id from the
//! same counter, and its epoch lives in `transactions/`), and per partition the window of
//! recent batches each producer wrote, which de-duplicates retries and refuses gaps, as
//! Kafka's idempotence rules do.
//!
//! Both are bounded: the most recent [`MAX_PRODUCER_IDS`] ids are remembered, the last
//! [`PRODUCER_BATCHES_KEPT`] batches per producer, and a producer silent for
//! [`PRODUCER_EXPIRY_MS`] is forgotten by the partition.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{MetadataState, ProducerBatch, StateError};

/// Producer ids remembered for epoch bumps; far more producers than any cluster runs at
/// once, so only ids long gone are forgotten.
pub const MAX_PRODUCER_IDS: usize = 100_000;

/// How many recent batches per producer are remembered for de-duplication; matches
/// the most requests a Kafka producer keeps in flight with idempotence on.
pub const PRODUCER_BATCHES_KEPT: usize = 5;

/// A producer silent this long is forgotten, as with Kafka's default
/// `producer.id.expiration.ms`; it must start its sequence again.
pub const PRODUCER_EXPIRY_MS: i64 = 24 * 3600 * 1000;

/// Above this many producers on one partition, idle ones are looked for at each write.
const PRODUCERS_BEFORE_EXPIRY: usize = 8;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerState {
    pub epoch: i16,
    /// (first sequence, last sequence, base offset), oldest first.
    pub batches: Vec<(i32, i32, i64)>,
    /// The state's clock at this producer's last write.
    pub last_ms: i64,
}

impl MetadataState {
    /// InitProducerId without a transactional id: a new producer id, or the next epoch
    /// of the one the producer holds (KIP-360).
    pub(super) fn init_producer(
        &mut self,
        current: Option<(i64, i16)>,
    ) -> Result<(i64, i16), StateError> {
        if let Some((id, epoch)) = current {
            let known = self
                .producer_epochs
                .get_mut(&id)
                .ok_or(StateError::UnknownProducerId)?;
            if *known != epoch {
                return Err(StateError::InvalidProducerEpoch);
            }
            // An exhausted epoch moves the producer to a fresh id, as Kafka does.
            if *known < i16::MAX - 1 {
                *known += 1;
                return Ok((id, *known));
            }
        }
        let id = self.next_producer_id;
        self.next_producer_id += 1;
        self.producer_epochs.insert(id, 0);
        // Every producer start takes an id: remember only the most recent ones, so the
        // state does not grow with restarts. A forgotten id asking for a new epoch gets
        // UNKNOWN_PRODUCER_ID and starts over with a fresh id, as after Kafka's
        // producer.id.expiration.ms.
        while self.producer_epochs.len() > MAX_PRODUCER_IDS {
            self.producer_epochs.pop_first();
        }
        Ok((id, 0))
    }
}

/// Kafka's idempotence rules for a batch about to get `base_offset` in a partition with
/// these `producers`; on success the batch is remembered for de-duplicating retries.
pub(super) fn check_sequence(
    producers: &mut BTreeMap<i64, ProducerState>,
    batch: &ProducerBatch,
    base_offset: i64,
    now_ms: i64,
) -> Result<(), StateError> {
    if producers.len() > PRODUCERS_BEFORE_EXPIRY {
        producers.retain(|_, p| now_ms.saturating_sub(p.last_ms) <= PRODUCER_EXPIRY_MS);
    }
    let state = producers.entry(batch.producer_id).or_default();
    let fresh = state.batches.is_empty();
    if !fresh && batch.epoch < state.epoch {
        return Err(StateError::InvalidProducerEpoch);
    }
    if fresh || batch.epoch > state.epoch {
        // A new producer (or epoch) starts its sequence at zero.
        if batch.first_sequence != 0 {
            if fresh {
                producers.remove(&batch.producer_id);
            }
            return Err(StateError::OutOfOrderSequence);
        }
        state.epoch = batch.epoch;
        state.batches.clear();
    } else {
        if let Some(&(_, _, offset)) = state
            .batches
            .iter()
            .find(|(first, last, _)| *first == batch.first_sequence && *last == batch.last_sequence)
        {
            return Err(StateError::DuplicateSequence(offset));
        }
        let last = state.batches.last().map_or(-1, |b| b.1);
        let expected = if last == i32::MAX { 0 } else { last + 1 };
        if batch.first_sequence != expected {
            return Err(StateError::OutOfOrderSequence);
        }
    }
    state.last_ms = state.last_ms.max(now_ms);
    state
        .batches
        .push((batch.first_sequence, batch.last_sequence, base_offset));
    if state.batches.len() > PRODUCER_BATCHES_KEPT {
        state.batches.remove(0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{commit, create, entry};
    use super::super::{Command, Response, SegmentEntry};
    use super::*;

    fn idempotent(count: u32, producer_id: i64, epoch: i16, first_sequence: i32) -> SegmentEntry {
        SegmentEntry {
            producer: Some(ProducerBatch {
                producer_id,
                epoch,
                first_sequence,
                last_sequence: first_sequence + count as i32 - 1,
            }),
            ..entry("t", 0, count)
        }
    }

    #[test]
    fn idempotent_retries_are_deduplicated_and_gaps_refused() {
        let mut s = MetadataState::default();
        s.apply(&create("t", 1));
        let Response::Producer(Ok((pid, 0))) = s.apply(&Command::InitProducer { current: None })
        else {
            panic!()
        };
        assert_eq!(commit(&mut s, idempotent(3, pid, 0, 0)), Ok(0));
        assert_eq!(commit(&mut s, idempotent(2, pid, 0, 3)), Ok(3));
        // A retry of an acknowledged batch gets its original offset back, no new offsets.
        assert_eq!(
            commit(&mut s, idempotent(3, pid, 0, 0)),
            Err(StateError::DuplicateSequence(0))
        );
        assert_eq!(s.partition("t", 0).unwrap().next_offset, 5);
        assert_eq!(
            commit(&mut s, idempotent(1, pid, 0, 9)),
            Err(StateError::OutOfOrderSequence)
        );
        // A new producer must start at sequence zero.
        assert_eq!(
            commit(&mut s, idempotent(1, 77, 0, 4)),
            Err(StateError::OutOfOrderSequence)
        );
        // Bumping the epoch fences the old one.
        assert_eq!(
            s.apply(&Command::InitProducer {
                current: Some((pid, 0))
            }),
            Response::Producer(Ok((pid, 1)))
        );
        assert_eq!(commit(&mut s, idempotent(1, pid, 1, 0)), Ok(5));
        assert_eq!(
            commit(&mut s, idempotent(1, pid, 0, 5)),
            Err(StateError::InvalidProducerEpoch)
        );
        assert_eq!(
            s.apply(&Command::InitProducer {
                current: Some((pid, 0))
            }),
            Response::Producer(Err(StateError::InvalidProducerEpoch))
        );
        assert_eq!(
            s.apply(&Command::InitProducer { current: None }),
            Response::Producer(Ok((pid + 1, 0)))
        );
    }
}

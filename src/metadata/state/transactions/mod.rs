//! Transactions: the pure state machine of Strata's leaderless transaction design. This
//! file holds the rules; `apply.rs` is how [`super::MetadataState`] applies them, for the
//! transaction commands and for the transactional chunks and markers of `CommitSegments`.
//!
//! Strata has no partition leaders, so all transaction state lives in the Raft state and
//! is applied identically on every broker:
//!
//! - [`Transactions`] is the coordinator side, keyed by transactional id: the producer id
//!   and epoch, Kafka's transaction states, the partitions and groups in the transaction,
//!   the offsets committed inside it, and which partitions still wait for their marker.
//! - [`PartitionTxns`] is the partition side: the first offset of each ongoing
//!   transaction (for the last stable offset) and the index of aborted transactions (for
//!   read_committed fetches).
//!
//! Like the rest of the state it is pure: no clock, no I/O; times travel in the calls.
//! Everything it holds is bounded: transactional ids ([`MAX_TRANSACTIONAL_IDS`], with
//! [`Transactions::expire_ids`] for the idle ones), partitions, groups and offsets per
//! transaction, and aborted transactions per partition.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::error::ResponseError;
use serde::{Deserialize, Serialize};

mod apply;

/// A topic and partition index. Encoded as the pair it once was (postcard writes a
/// struct's fields in order, as it writes a tuple's).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

/// (group, topic, partition) of an offset committed inside a transaction.
pub type GroupPartition = (String, String, i32);

/// At most this many transactional ids are remembered; InitProducerId for a new one is
/// refused beyond it (idle ids go with [`Transactions::expire_ids`]).
pub const MAX_TRANSACTIONAL_IDS: usize = 100_000;
/// At most this many partitions in one transaction.
pub const MAX_PARTITIONS_PER_TXN: usize = 10_000;
/// At most this many groups in one transaction.
pub const MAX_GROUPS_PER_TXN: usize = 1_000;
/// At most this many (group, topic, partition) offsets committed in one transaction.
pub const MAX_PENDING_OFFSETS_PER_TXN: usize = 100_000;
/// At most this many aborted plus ongoing transactions held in the state per partition; a
/// new transaction on a full partition is refused until compaction moves aborted ones
/// into segment footers (within a compaction round) or retention frees them. The state
/// holds only aborts whose marker is not compacted yet, or whose transaction began in an
/// earlier segment, so the bound is met only by more aborts per compaction round.
pub const MAX_ABORTED_PER_PARTITION: usize = 10_000;
/// Kafka's default `transaction.max.timeout.ms` (15 minutes).
pub const MAX_TXN_TIMEOUT_MS: i64 = 15 * 60 * 1000;
/// Kafka's default `transactional.id.expiration.ms` (7 days).
pub const TRANSACTIONAL_ID_EXPIRATION_MS: i64 = 7 * 24 * 3600 * 1000;
/// From this epoch on a producer id is exhausted: the next bump allocates a new producer
/// id (Kafka's `isProducerEpochExhausted`, `epoch >= Short.MaxValue - 1`). Fencing may
/// still raise an exhausted epoch once, to at most `i16::MAX`.
const EXHAUSTED_EPOCH: i16 = i16::MAX - 1;

/// Kafka's transaction states (the names DescribeTransactions and ListTransactions use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnState {
    /// Initialised, no transaction yet.
    Empty,
    /// Partitions or groups were added; the producer may write.
    Ongoing,
    /// EndTxn(commit) decided; commit markers are being written.
    PrepareCommit,
    /// EndTxn(abort), a timeout or a fencing InitProducerId decided; abort markers are
    /// being written.
    PrepareAbort,
    /// Every commit marker is written and the transaction's offsets applied.
    CompleteCommit,
    /// Every abort marker is written.
    CompleteAbort,
}

impl TxnState {
    pub fn is_prepare(self) -> bool {
        matches!(self, Self::PrepareCommit | Self::PrepareAbort)
    }

    /// No transaction in progress: a new one may start.
    pub fn is_idle(self) -> bool {
        matches!(
            self,
            Self::Empty | Self::CompleteCommit | Self::CompleteAbort
        )
    }

    /// The name Kafka's admin APIs report.
    pub fn name(self) -> &'static str {
        match self {
            Self::Empty => "Empty",
            Self::Ongoing => "Ongoing",
            Self::PrepareCommit => "PrepareCommit",
            Self::PrepareAbort => "PrepareAbort",
            Self::CompleteCommit => "CompleteCommit",
            Self::CompleteAbort => "CompleteAbort",
        }
    }
}

/// An offset committed by TxnOffsetCommit, applied to the group only at CompleteCommit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingOffset {
    pub offset: i64,
    /// As committed (KIP-320); -1 for none.
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

/// One transactional id's coordinator state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnMeta {
    pub producer_id: i64,
    pub epoch: i16,
    pub state: TxnState,
    /// The partitions written in the current transaction.
    pub partitions: BTreeSet<TopicPartition>,
    /// The groups added with AddOffsetsToTxn.
    pub groups: BTreeSet<String>,
    /// Offsets committed with TxnOffsetCommit, latest per (group, topic, partition).
    pub pending_offsets: BTreeMap<GroupPartition, PendingOffset>,
    pub timeout_ms: i64,
    /// When the current (or last) transaction added its first partition or group.
    pub started_ms: i64,
    pub last_update_ms: i64,
    /// In Prepare*: the partitions whose marker is not written yet.
    pub markers_pending: BTreeSet<TopicPartition>,
    /// The (producer id, epoch) the last epoch change replaced, when that change came
    /// from the producer itself (InitProducerId with its current id and epoch) or from a
    /// timeout: KIP-360 lets that producer retry InitProducerId with it and get the
    /// current epoch. `None` after a fresh InitProducerId, which fences the old one.
    pub previous: Option<(i64, i16)>,
}

/// Errors of the coordinator and partition operations, each a Kafka error code
/// ([`TxnError::code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum TxnError {
    /// An empty transactional id: INVALID_REQUEST (42).
    #[error("invalid request: empty transactional id")]
    InvalidRequest,
    /// A timeout not in `1..=transaction.max.timeout.ms`: INVALID_TRANSACTION_TIMEOUT (50).
    #[error("transaction timeout out of range")]
    InvalidTimeout,
    /// The transaction is completing (Prepare*): CONCURRENT_TRANSACTIONS (51), retriable;
    /// also returned by InitProducerId that had to abort an ongoing transaction first.
    #[error("a transaction with this id is completing")]
    ConcurrentTransactions,
    /// A newer producer with the same transactional id exists, or the epoch does not
    /// match: PRODUCER_FENCED (90). The handler answers INVALID_PRODUCER_EPOCH (47)
    /// instead to InitProducerId below v4 and to produce requests, as Kafka does.
    #[error("producer fenced by a newer epoch")]
    ProducerFenced,
    /// The producer id is not the one the transactional id holds (or the id is unknown):
    /// INVALID_PRODUCER_ID_MAPPING (49).
    #[error("producer id not assigned to this transactional id")]
    InvalidProducerIdMapping,
    /// The operation is not valid in the transaction's state (EndTxn in Empty, EndTxn of
    /// the opposite outcome, TxnOffsetCommit for a group not added, a transactional write
    /// to a partition not added): INVALID_TXN_STATE (48).
    #[error("invalid transaction state")]
    InvalidTxnState,
    /// [`MAX_TRANSACTIONAL_IDS`] reached. No Kafka code fits: POLICY_VIOLATION (44).
    #[error("too many transactional ids (at most {MAX_TRANSACTIONAL_IDS})")]
    TooManyTransactionalIds,
    /// A per-transaction bound ([`MAX_PARTITIONS_PER_TXN`], [`MAX_GROUPS_PER_TXN`],
    /// [`MAX_PENDING_OFFSETS_PER_TXN`]) reached: POLICY_VIOLATION (44).
    #[error("transaction too large")]
    TransactionTooLarge,
    /// The partition indexes [`MAX_ABORTED_PER_PARTITION`] transactions already; a new one
    /// waits for retention: POLICY_VIOLATION (44).
    #[error("too many aborted transactions kept on this partition")]
    AbortedIndexFull,
}

impl TxnError {
    /// The Kafka error code to answer with.
    pub fn code(&self) -> i16 {
        match self {
            Self::InvalidRequest => ResponseError::InvalidRequest.code(),
            Self::InvalidTimeout => ResponseError::InvalidTransactionTimeout.code(),
            Self::ConcurrentTransactions => ResponseError::ConcurrentTransactions.code(),
            Self::ProducerFenced => ResponseError::ProducerFenced.code(),
            Self::InvalidProducerIdMapping => ResponseError::InvalidProducerIdMapping.code(),
            Self::InvalidTxnState => ResponseError::InvalidTxnState.code(),
            Self::TooManyTransactionalIds | Self::TransactionTooLarge | Self::AbortedIndexFull => {
                ResponseError::PolicyViolation.code()
            }
        }
    }
}

/// What InitProducerId did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitOutcome {
    /// The producer id and epoch to answer with.
    Ready { producer_id: i64, epoch: i16 },
    /// An ongoing transaction was moved to PrepareAbort with a bumped epoch (fencing its
    /// producer). The caller writes these abort markers ([`Transactions::marker_written`])
    /// and answers CONCURRENT_TRANSACTIONS; the client retries. Empty when the
    /// transaction had no partitions: it is already CompleteAbort.
    MustAbortFirst {
        producer_id: i64,
        epoch: i16,
        markers: Vec<TopicPartition>,
    },
}

/// A finished transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Completion {
    pub committed: bool,
    /// On commit: the offsets to apply to the groups now. Empty on abort.
    pub offsets: BTreeMap<GroupPartition, PendingOffset>,
}

/// What EndTxn (or a timeout abort) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndOutcome {
    /// Prepare*: these markers are to be written (the producer id and epoch are the
    /// transaction's, which [`Transactions::marker_written`] checks).
    Prepared {
        commit: bool,
        producer_id: i64,
        epoch: i16,
        markers: Vec<TopicPartition>,
    },
    /// No partition to mark: completed at once.
    Completed(Completion),
    /// A retry of an EndTxn that completed with this outcome: success, nothing to do.
    /// (A retry while its markers are still being written is CONCURRENT_TRANSACTIONS,
    /// as in Kafka: the client retries until the transaction is complete.)
    AlreadyEnded,
}

/// What a marker write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkerOutcome {
    /// The marker is expected: the caller appends it to the partition (in the same Raft
    /// entry) and applies it to [`PartitionTxns::marker`] with `commit`.
    Written {
        commit: bool,
        /// Some when this was the last marker: the transaction is Complete*.
        completed: Option<Completion>,
    },
    /// Not expected (already written, a late write from a former coordinator, another
    /// epoch or transaction): the caller drops the marker and writes nothing, so a late
    /// marker can never end a newer transaction of the same producer on that partition.
    Stale,
}

/// The coordinator side: every transactional id's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transactions {
    ids: BTreeMap<String, TxnMeta>,
    /// Producer id → transactional id, to check transactional writes.
    by_producer: BTreeMap<i64, String>,
}

/// Checks the producer id and epoch of a client request against the transaction's.
fn check_producer(meta: &TxnMeta, producer_id: i64, epoch: i16) -> Result<(), TxnError> {
    if meta.producer_id != producer_id {
        Err(TxnError::InvalidProducerIdMapping)
    } else if meta.epoch != epoch {
        Err(TxnError::ProducerFenced)
    } else {
        Ok(())
    }
}

/// Ends the transaction: Complete*, returning the offsets to apply on commit and
/// clearing what belonged to it.
fn complete(meta: &mut TxnMeta, commit: bool) -> Completion {
    meta.state = if commit {
        TxnState::CompleteCommit
    } else {
        TxnState::CompleteAbort
    };
    meta.partitions.clear();
    meta.groups.clear();
    meta.markers_pending.clear();
    let offsets = std::mem::take(&mut meta.pending_offsets);
    Completion {
        committed: commit,
        offsets: if commit { offsets } else { BTreeMap::new() },
    }
}

/// Moves an ongoing transaction to Prepare*, or straight to Complete* without partitions.
fn prepare(meta: &mut TxnMeta, commit: bool) -> EndOutcome {
    if meta.partitions.is_empty() {
        return EndOutcome::Completed(complete(meta, commit));
    }
    meta.state = if commit {
        TxnState::PrepareCommit
    } else {
        TxnState::PrepareAbort
    };
    meta.markers_pending = meta.partitions.clone();
    EndOutcome::Prepared {
        commit,
        producer_id: meta.producer_id,
        epoch: meta.epoch,
        markers: meta.markers_pending.iter().cloned().collect(),
    }
}

/// Raises the epoch of an ongoing transaction's producer to fence it. Epochs handed to
/// producers are at most [`EXHAUSTED_EPOCH`] (an exhausted id moves to a new one at
/// its next InitProducerId), so this never saturates.
fn fence(meta: &mut TxnMeta) {
    meta.epoch = meta.epoch.saturating_add(1);
}

/// Whether an InitProducerId naming its own pair (KIP-360) is a retry: true for
/// [`TxnMeta::previous`], false for the current pair or none; any other pair is fenced.
fn is_retry(meta: &TxnMeta, current: Option<(i64, i16)>) -> Result<bool, TxnError> {
    match current {
        Some(cur) if cur != (meta.producer_id, meta.epoch) => {
            if meta.previous == Some(cur) {
                Ok(true)
            } else {
                Err(TxnError::ProducerFenced)
            }
        }
        _ => Ok(false),
    }
}

/// InitProducerId during an ongoing transaction: fences its producer and moves the
/// transaction to PrepareAbort; the caller writes the abort markers first.
fn abort_for_init(meta: &mut TxnMeta, current: Option<(i64, i16)>, now_ms: i64) -> InitOutcome {
    fence(meta);
    meta.previous = current;
    meta.last_update_ms = now_ms;
    let (producer_id, epoch) = (meta.producer_id, meta.epoch);
    let markers = match prepare(meta, false) {
        EndOutcome::Prepared { markers, .. } => markers,
        EndOutcome::Completed(_) | EndOutcome::AlreadyEnded => Vec::new(),
    };
    InitOutcome::MustAbortFirst {
        producer_id,
        epoch,
        markers,
    }
}

impl Transactions {
    pub fn get(&self, txn_id: &str) -> Option<&TxnMeta> {
        self.ids.get(txn_id)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Every transactional id, in order (ListTransactions).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &TxnMeta)> {
        self.ids.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The transactional id holding a producer id.
    pub fn transactional_id(&self, producer_id: i64) -> Option<&str> {
        self.by_producer.get(&producer_id).map(String::as_str)
    }

    /// InitProducerId with a transactional id (KIP-360 and KIP-890 epoch bumps).
    ///
    /// - A new id gets `allocate()` and epoch 0 ([`TxnError::TooManyTransactionalIds`]
    ///   beyond the cap).
    /// - Empty or Complete*: the epoch is bumped, fencing older producers; an exhausted
    ///   epoch moves to a new producer id with epoch 0.
    /// - Ongoing: the transaction is aborted first (PrepareAbort with a bumped epoch,
    ///   [`InitOutcome::MustAbortFirst`]).
    /// - Prepare*: [`TxnError::ConcurrentTransactions`].
    ///
    /// `current` is the producer's id and epoch when it asks for a bump of its own
    /// (KIP-360): it must be the id's current pair, or [`TxnMeta::previous`] (a retry, or
    /// a producer whose transaction timed out), which gets the current epoch without a
    /// further bump; anything else is [`TxnError::ProducerFenced`].
    pub fn init_producer(
        &mut self,
        txn_id: &str,
        timeout_ms: i64,
        now_ms: i64,
        current: Option<(i64, i16)>,
        allocate: impl FnOnce() -> i64,
    ) -> Result<InitOutcome, TxnError> {
        if txn_id.is_empty() {
            return Err(TxnError::InvalidRequest);
        }
        if !(1..=MAX_TXN_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(TxnError::InvalidTimeout);
        }
        let Some(meta) = self.ids.get_mut(txn_id) else {
            return self.register(txn_id, timeout_ms, now_ms, allocate);
        };
        let retry = is_retry(meta, current)?;
        match meta.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                Err(TxnError::ConcurrentTransactions)
            }
            // The previous pair's holder lost to a producer that started a transaction.
            TxnState::Ongoing if retry => Err(TxnError::ProducerFenced),
            TxnState::Ongoing => Ok(abort_for_init(meta, current, now_ms)),
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                meta.timeout_ms = timeout_ms;
                meta.last_update_ms = now_ms;
                if retry && meta.epoch < EXHAUSTED_EPOCH {
                    return Ok(InitOutcome::Ready {
                        producer_id: meta.producer_id,
                        epoch: meta.epoch,
                    });
                }
                if meta.epoch >= EXHAUSTED_EPOCH {
                    let producer_id = allocate();
                    self.by_producer.remove(&meta.producer_id);
                    self.by_producer.insert(producer_id, txn_id.to_owned());
                    meta.producer_id = producer_id;
                    meta.epoch = 0;
                } else {
                    meta.epoch += 1;
                }
                // The requester's pair (the previous one on a retry), so that a retry of
                // this very call gets the same answer.
                meta.previous = current;
                meta.state = TxnState::Empty;
                Ok(InitOutcome::Ready {
                    producer_id: meta.producer_id,
                    epoch: meta.epoch,
                })
            }
        }
    }

    /// An unknown transactional id (new, or expired) starts afresh with `allocate()` and
    /// epoch 0, whatever pair the producer says it holds, as Kafka's metadata with no
    /// epoch accepts any expected pair.
    fn register(
        &mut self,
        txn_id: &str,
        timeout_ms: i64,
        now_ms: i64,
        allocate: impl FnOnce() -> i64,
    ) -> Result<InitOutcome, TxnError> {
        if self.ids.len() >= MAX_TRANSACTIONAL_IDS {
            return Err(TxnError::TooManyTransactionalIds);
        }
        let producer_id = allocate();
        self.ids.insert(
            txn_id.to_owned(),
            TxnMeta {
                producer_id,
                epoch: 0,
                state: TxnState::Empty,
                partitions: BTreeSet::new(),
                groups: BTreeSet::new(),
                pending_offsets: BTreeMap::new(),
                timeout_ms,
                started_ms: -1,
                last_update_ms: now_ms,
                markers_pending: BTreeSet::new(),
                previous: None,
            },
        );
        self.by_producer.insert(producer_id, txn_id.to_owned());
        Ok(InitOutcome::Ready {
            producer_id,
            epoch: 0,
        })
    }

    /// Looks a transaction up for a client request and checks its producer.
    fn for_request(
        &mut self,
        txn_id: &str,
        producer_id: i64,
        epoch: i16,
    ) -> Result<&mut TxnMeta, TxnError> {
        let meta = self
            .ids
            .get_mut(txn_id)
            .ok_or(TxnError::InvalidProducerIdMapping)?;
        check_producer(meta, producer_id, epoch)?;
        Ok(meta)
    }

    /// Starts the transaction (from Empty or Complete*) or keeps it going.
    fn begin(meta: &mut TxnMeta, now_ms: i64) -> Result<(), TxnError> {
        match meta.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                Err(TxnError::ConcurrentTransactions)
            }
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                meta.state = TxnState::Ongoing;
                meta.started_ms = now_ms;
                meta.last_update_ms = now_ms;
                Ok(())
            }
            TxnState::Ongoing => {
                meta.last_update_ms = now_ms;
                Ok(())
            }
        }
    }

    /// AddPartitionsToTxn: unknown id or another producer id is
    /// INVALID_PRODUCER_ID_MAPPING, another epoch PRODUCER_FENCED, Prepare*
    /// CONCURRENT_TRANSACTIONS, more than [`MAX_PARTITIONS_PER_TXN`] partitions
    /// [`TxnError::TransactionTooLarge`] (nothing added). Empty or Complete* starts a
    /// transaction (Ongoing, `started_ms = now_ms`).
    pub fn add_partitions(
        &mut self,
        txn_id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[TopicPartition],
        now_ms: i64,
    ) -> Result<(), TxnError> {
        let meta = self.for_request(txn_id, producer_id, epoch)?;
        if meta.state.is_prepare() {
            return Err(TxnError::ConcurrentTransactions);
        }
        let new: BTreeSet<&TopicPartition> = partitions
            .iter()
            .filter(|tp| !meta.partitions.contains(*tp))
            .collect();
        if meta.partitions.len() + new.len() > MAX_PARTITIONS_PER_TXN {
            return Err(TxnError::TransactionTooLarge);
        }
        Self::begin(meta, now_ms)?;
        meta.partitions.extend(new.into_iter().cloned());
        Ok(())
    }

    /// AddOffsetsToTxn: the same checks and transitions as [`Self::add_partitions`] (Kafka
    /// adds the group's offsets partition); the group's offsets need no marker here, they
    /// are applied by the state machine at CompleteCommit.
    pub fn add_offsets(
        &mut self,
        txn_id: &str,
        producer_id: i64,
        epoch: i16,
        group: &str,
        now_ms: i64,
    ) -> Result<(), TxnError> {
        let meta = self.for_request(txn_id, producer_id, epoch)?;
        if meta.state.is_prepare() {
            return Err(TxnError::ConcurrentTransactions);
        }
        if !meta.groups.contains(group) && meta.groups.len() >= MAX_GROUPS_PER_TXN {
            return Err(TxnError::TransactionTooLarge);
        }
        Self::begin(meta, now_ms)?;
        meta.groups.insert(group.to_owned());
        Ok(())
    }

    /// TxnOffsetCommit: remembers the offsets until the transaction ends. Unknown id or
    /// another producer id is INVALID_PRODUCER_ID_MAPPING, another epoch PRODUCER_FENCED
    /// (the Java client treats it and INVALID_PRODUCER_EPOCH alike: fenced); a
    /// transaction not Ongoing or a group not added with AddOffsetsToTxn is
    /// INVALID_TXN_STATE, as for Kafka's unverified transactional writes (KIP-890).
    pub fn txn_offset_commit(
        &mut self,
        txn_id: &str,
        producer_id: i64,
        epoch: i16,
        group: &str,
        offsets: impl IntoIterator<Item = (TopicPartition, PendingOffset)>,
    ) -> Result<(), TxnError> {
        let meta = self.for_request(txn_id, producer_id, epoch)?;
        if meta.state != TxnState::Ongoing || !meta.groups.contains(group) {
            return Err(TxnError::InvalidTxnState);
        }
        let offsets: BTreeMap<GroupPartition, PendingOffset> = offsets
            .into_iter()
            .map(|(tp, o)| ((group.to_owned(), tp.topic, tp.partition), o))
            .collect();
        let new = offsets
            .keys()
            .filter(|k| !meta.pending_offsets.contains_key(*k))
            .count();
        if meta.pending_offsets.len() + new > MAX_PENDING_OFFSETS_PER_TXN {
            return Err(TxnError::TransactionTooLarge);
        }
        meta.pending_offsets.extend(offsets);
        Ok(())
    }

    /// EndTxn. Ongoing → Prepare* with every partition's marker pending, or Complete* at
    /// once without partitions. A retry of the decided outcome is CONCURRENT_TRANSACTIONS
    /// while its markers are being written (Prepare*) and [`EndOutcome::AlreadyEnded`]
    /// once complete, as Kafka's coordinator answers; the opposite outcome, or Empty, is
    /// INVALID_TXN_STATE. Producer checks as [`Self::add_partitions`].
    pub fn end_txn(
        &mut self,
        txn_id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        now_ms: i64,
    ) -> Result<EndOutcome, TxnError> {
        let meta = self.for_request(txn_id, producer_id, epoch)?;
        match (meta.state, commit) {
            (TxnState::Ongoing, _) => {
                meta.last_update_ms = now_ms;
                Ok(prepare(meta, commit))
            }
            (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
                Err(TxnError::ConcurrentTransactions)
            }
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => {
                Ok(EndOutcome::AlreadyEnded)
            }
            _ => Err(TxnError::InvalidTxnState),
        }
    }

    /// A marker for `partition` of the transaction prepared with `producer_id` and
    /// `epoch`. Only a marker still pending is [`MarkerOutcome::Written`]; the last one
    /// completes the transaction. Anything else is [`MarkerOutcome::Stale`] and must
    /// leave the partition untouched.
    pub fn marker_written(
        &mut self,
        txn_id: &str,
        producer_id: i64,
        epoch: i16,
        partition: &TopicPartition,
    ) -> MarkerOutcome {
        let Some(meta) = self.ids.get_mut(txn_id) else {
            return MarkerOutcome::Stale;
        };
        if meta.producer_id != producer_id
            || meta.epoch != epoch
            || !meta.state.is_prepare()
            || !meta.markers_pending.remove(partition)
        {
            return MarkerOutcome::Stale;
        }
        let commit = meta.state == TxnState::PrepareCommit;
        let completed = meta
            .markers_pending
            .is_empty()
            .then(|| complete(meta, commit));
        MarkerOutcome::Written { commit, completed }
    }

    /// Ongoing transactions past their timeout at `now_ms`, counted from their start as
    /// Kafka does (`txnStartTimestamp + transaction.timeout.ms < now`). The Raft leader
    /// proposes [`Self::abort_expired`] for each.
    pub fn expired(&self, now_ms: i64) -> Vec<String> {
        self.ids
            .iter()
            .filter(|(_, m)| {
                m.state == TxnState::Ongoing && m.started_ms.saturating_add(m.timeout_ms) < now_ms
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Aborts a transaction past its timeout: PrepareAbort (or CompleteAbort without
    /// partitions) with a bumped epoch, fencing the zombie producer; it may recover with
    /// InitProducerId and its old pair (KIP-360). Checked again at apply time: a
    /// transaction that ended or moved on since the proposal is INVALID_TXN_STATE, and
    /// the proposer ignores it.
    pub fn abort_expired(&mut self, txn_id: &str, now_ms: i64) -> Result<EndOutcome, TxnError> {
        let meta = self
            .ids
            .get_mut(txn_id)
            .ok_or(TxnError::InvalidProducerIdMapping)?;
        if meta.state != TxnState::Ongoing
            || meta.started_ms.saturating_add(meta.timeout_ms) >= now_ms
        {
            return Err(TxnError::InvalidTxnState);
        }
        meta.previous = Some((meta.producer_id, meta.epoch));
        fence(meta);
        meta.last_update_ms = now_ms;
        Ok(prepare(meta, false))
    }

    /// Transactions in Prepare*: what a coordinator taking over must finish by writing
    /// the markers still pending.
    pub fn in_prepare(&self) -> impl Iterator<Item = (&str, &TxnMeta)> {
        self.ids
            .iter()
            .filter(|(_, m)| m.state.is_prepare())
            .map(|(k, v)| (k.as_str(), v))
    }

    /// Forgets ids idle (Empty or Complete*) for longer than `expiration_ms`
    /// (`transactional.id.expiration.ms`, [`TRANSACTIONAL_ID_EXPIRATION_MS`] by default),
    /// so the map does not grow with time; returns them. A forgotten id's producer gets
    /// INVALID_PRODUCER_ID_MAPPING and starts over with InitProducerId.
    pub fn expire_ids(&mut self, now_ms: i64, expiration_ms: i64) -> Vec<String> {
        let gone: Vec<String> = self
            .ids
            .iter()
            .filter(|(_, m)| {
                m.state.is_idle() && m.last_update_ms.saturating_add(expiration_ms) < now_ms
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            if let Some(meta) = self.ids.remove(id) {
                self.by_producer.remove(&meta.producer_id);
            }
        }
        gone
    }

    /// Whether a transactional batch of `producer_id` at `epoch` may be written to
    /// `partition` (checked when its chunk is committed, so no write outside an ongoing
    /// transaction can hang a partition's LSO): an unknown producer id is
    /// INVALID_PRODUCER_ID_MAPPING, another epoch PRODUCER_FENCED, a transaction not
    /// Ongoing or a partition not added INVALID_TXN_STATE.
    pub fn check_write(
        &self,
        producer_id: i64,
        epoch: i16,
        partition: &TopicPartition,
    ) -> Result<(), TxnError> {
        let meta = self
            .by_producer
            .get(&producer_id)
            .and_then(|id| self.ids.get(id))
            .ok_or(TxnError::InvalidProducerIdMapping)?;
        check_producer(meta, producer_id, epoch)?;
        if meta.state != TxnState::Ongoing || !meta.partitions.contains(partition) {
            return Err(TxnError::InvalidTxnState);
        }
        Ok(())
    }
}

pub use crate::storage::segment::AbortedTxn;

/// The partition side: ongoing transactions and the aborted-transaction index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionTxns {
    /// Producer id → first offset of its ongoing transaction here.
    ongoing: BTreeMap<i64, i64>,
    /// Sorted by `last_offset`.
    aborted: Vec<AbortedTxn>,
}

impl PartitionTxns {
    pub fn ongoing(&self) -> &BTreeMap<i64, i64> {
        &self.ongoing
    }

    pub fn aborted(&self) -> &[AbortedTxn] {
        &self.aborted
    }

    /// A transactional batch committed at `base_offset`: the first one of the producer's
    /// transaction sets its first offset, later ones leave it. A new transaction is
    /// refused ([`TxnError::AbortedIndexFull`]) while ongoing plus aborted transactions
    /// fill [`MAX_ABORTED_PER_PARTITION`], so every abort marker has room.
    pub fn record_transactional_batch(
        &mut self,
        producer_id: i64,
        base_offset: i64,
    ) -> Result<(), TxnError> {
        self.record_capped(producer_id, base_offset, MAX_ABORTED_PER_PARTITION)
    }

    /// Whether [`Self::record_transactional_batch`] would accept a batch of
    /// `producer_id` (checked before the batch gets its offsets).
    pub fn may_record(&self, producer_id: i64) -> Result<(), TxnError> {
        if self.ongoing.contains_key(&producer_id)
            || self.ongoing.len() + self.aborted.len() < MAX_ABORTED_PER_PARTITION
        {
            Ok(())
        } else {
            Err(TxnError::AbortedIndexFull)
        }
    }

    fn record_capped(
        &mut self,
        producer_id: i64,
        base_offset: i64,
        cap: usize,
    ) -> Result<(), TxnError> {
        if self.ongoing.contains_key(&producer_id) {
            return Ok(());
        }
        if self.ongoing.len() + self.aborted.len() >= cap {
            return Err(TxnError::AbortedIndexFull);
        }
        self.ongoing.insert(producer_id, base_offset);
        Ok(())
    }

    /// A commit or abort marker at `marker_offset`: the producer's transaction here ends;
    /// an abort is indexed. A marker for a producer with no ongoing transaction changes
    /// nothing. Returns whether it ended a transaction.
    pub fn marker(&mut self, producer_id: i64, commit: bool, marker_offset: i64) -> bool {
        let Some(first_offset) = self.ongoing.remove(&producer_id) else {
            return false;
        };
        if !commit {
            let at = self
                .aborted
                .partition_point(|a| a.last_offset <= marker_offset);
            self.aborted.insert(
                at,
                AbortedTxn {
                    producer_id,
                    first_offset,
                    last_offset: marker_offset,
                },
            );
        }
        true
    }

    /// The last stable offset: the first offset of the earliest ongoing transaction, else
    /// the high watermark (never above it).
    pub fn last_stable_offset(&self, high_watermark: i64) -> i64 {
        self.ongoing
            .values()
            .min()
            .map_or(high_watermark, |first| (*first).min(high_watermark))
    }

    /// Fetch's `aborted_transactions` for a read_committed fetch of `[fetch_offset,
    /// upto)`: the aborted transactions overlapping it (`last_offset >= fetch_offset` and
    /// `first_offset < upto`).
    pub fn aborted_in(&self, fetch_offset: i64, upto: i64) -> Vec<AbortedTxn> {
        let start = self
            .aborted
            .partition_point(|a| a.last_offset < fetch_offset);
        self.aborted
            .get(start..)
            .unwrap_or_default()
            .iter()
            .filter(|a| a.first_offset < upto)
            .copied()
            .collect()
    }

    /// The aborted transactions a compaction of `[base, end)` moves into its output's
    /// footer: those whose marker lies there and whose first offset is at or after
    /// `base`. So every aborted transaction a read of some range needs is either here or
    /// in the footer of a segment that range overlaps (its first offset and marker both
    /// lie in that segment); one that began in an earlier segment stays here.
    pub fn archivable(&self, base: i64, end: i64) -> Vec<AbortedTxn> {
        let start = self.aborted.partition_point(|a| a.last_offset < base);
        self.aborted
            .get(start..)
            .unwrap_or_default()
            .iter()
            .take_while(|a| a.last_offset < end)
            .filter(|a| a.first_offset >= base)
            .copied()
            .collect()
    }

    /// A compaction of `[base, end)` that wrote [`Self::archivable`] into its output
    /// was swapped in: those entries leave the state.
    pub fn archive(&mut self, base: i64, end: i64) {
        self.aborted
            .retain(|a| !(a.last_offset >= base && a.last_offset < end && a.first_offset >= base));
    }

    /// The log cleaner replaced `[from, to)` with its output: an aborted transaction whose
    /// marker lies there has no records left (a pass drops them all, and its outputs
    /// cover everything from the log start), so no fetch needs it in the index.
    pub fn cleaned(&mut self, from: i64, to: i64) {
        let start = self.aborted.partition_point(|a| a.last_offset < from);
        let end = self.aborted.partition_point(|a| a.last_offset < to);
        self.aborted.drain(start..end.max(start));
    }

    /// The log start moved to `log_start` (retention, DeleteRecords): aborted
    /// transactions wholly below it are forgotten, and ongoing ones that began below it
    /// count from it (Kafka keeps the first unstable offset at or above the log start).
    pub fn truncate_before(&mut self, log_start: i64) {
        let gone = self.aborted.partition_point(|a| a.last_offset < log_start);
        self.aborted.drain(..gone);
        for first in self.ongoing.values_mut() {
            *first = (*first).max(log_start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: i64 = 60_000;

    fn tp(topic: &str, p: i32) -> TopicPartition {
        TopicPartition::new(topic, p)
    }

    /// Format 6 stored partitions as `(String, i32)` pairs: the struct reads them.
    #[test]
    fn a_topic_partition_encodes_as_the_pair_it_was() {
        let pair = postcard::to_stdvec(&("orders".to_owned(), 7i32)).expect("encodes");
        let tp = postcard::to_stdvec(&tp("orders", 7)).expect("encodes");
        assert_eq!(pair, tp);
        let back: TopicPartition = postcard::from_bytes(&pair).expect("decodes");
        assert_eq!(back, self::tp("orders", 7));
    }

    fn ready(outcome: InitOutcome) -> Result<(i64, i16), String> {
        match outcome {
            InitOutcome::Ready { producer_id, epoch } => Ok((producer_id, epoch)),
            other => Err(format!("expected Ready, got {other:?}")),
        }
    }

    /// A coordinator with one initialised id "t" (producer id 7, epoch 0).
    fn with_producer() -> Result<Transactions, String> {
        let mut txns = Transactions::default();
        let got = ready(
            txns.init_producer("t", MIN, 0, None, || 7)
                .map_err(|e| e.to_string())?,
        )?;
        assert_eq!(got, (7, 0));
        Ok(txns)
    }

    fn state(txns: &Transactions) -> TxnState {
        txns.get("t").map_or(TxnState::Empty, |m| m.state)
    }

    fn offset(o: i64) -> PendingOffset {
        PendingOffset {
            offset: o,
            leader_epoch: -1,
            metadata: None,
        }
    }

    #[test]
    fn commit_with_markers_applies_offsets_at_the_end() -> Result<(), Box<dyn std::error::Error>> {
        let mut txns = with_producer()?;
        txns.add_partitions("t", 7, 0, &[tp("a", 0), tp("a", 1)], 10)?;
        assert_eq!(state(&txns), TxnState::Ongoing);
        assert_eq!(txns.get("t").map(|m| m.started_ms), Some(10));
        // A second add keeps the start time.
        txns.add_partitions("t", 7, 0, &[tp("a", 0)], 20)?;
        assert_eq!(txns.get("t").map(|m| m.started_ms), Some(10));
        txns.check_write(7, 0, &tp("a", 1))?;
        assert_eq!(
            txns.check_write(7, 0, &tp("b", 0)),
            Err(TxnError::InvalidTxnState)
        );
        // Offsets for a group not added are refused.
        assert_eq!(
            txns.txn_offset_commit("t", 7, 0, "g", [(tp("in", 0), offset(5))]),
            Err(TxnError::InvalidTxnState)
        );
        txns.add_offsets("t", 7, 0, "g", 30)?;
        txns.txn_offset_commit("t", 7, 0, "g", [(tp("in", 0), offset(5))])?;
        txns.txn_offset_commit("t", 7, 0, "g", [(tp("in", 0), offset(9))])?;

        let end = txns.end_txn("t", 7, 0, true, 40)?;
        assert_eq!(
            end,
            EndOutcome::Prepared {
                commit: true,
                producer_id: 7,
                epoch: 0,
                markers: vec![tp("a", 0), tp("a", 1)],
            }
        );
        assert_eq!(txns.in_prepare().count(), 1);
        // Retries: the same outcome waits for the markers (Kafka's
        // CONCURRENT_TRANSACTIONS), the opposite is refused.
        assert_eq!(
            txns.end_txn("t", 7, 0, true, 41),
            Err(TxnError::ConcurrentTransactions)
        );
        assert_eq!(
            txns.end_txn("t", 7, 0, false, 41),
            Err(TxnError::InvalidTxnState)
        );
        // No new transaction while markers are pending.
        assert_eq!(
            txns.add_partitions("t", 7, 0, &[tp("a", 0)], 42),
            Err(TxnError::ConcurrentTransactions)
        );
        assert_eq!(
            txns.init_producer("t", MIN, 42, None, || 99),
            Err(TxnError::ConcurrentTransactions)
        );

        // A marker from the wrong epoch, or for a partition not in it, is stale.
        assert_eq!(
            txns.marker_written("t", 7, 1, &tp("a", 0)),
            MarkerOutcome::Stale
        );
        assert_eq!(
            txns.marker_written("t", 7, 0, &tp("z", 0)),
            MarkerOutcome::Stale
        );
        assert_eq!(
            txns.marker_written("t", 7, 0, &tp("a", 0)),
            MarkerOutcome::Written {
                commit: true,
                completed: None
            }
        );
        // The same marker again (a coordinator retrying after a takeover) is stale.
        assert_eq!(
            txns.marker_written("t", 7, 0, &tp("a", 0)),
            MarkerOutcome::Stale
        );
        let last = txns.marker_written("t", 7, 0, &tp("a", 1));
        let mut offsets = BTreeMap::new();
        offsets.insert(("g".to_owned(), "in".to_owned(), 0), offset(9));
        assert_eq!(
            last,
            MarkerOutcome::Written {
                commit: true,
                completed: Some(Completion {
                    committed: true,
                    offsets
                })
            }
        );
        let meta = txns.get("t").ok_or("t is known")?;
        assert_eq!(meta.state, TxnState::CompleteCommit);
        assert!(meta.partitions.is_empty() && meta.groups.is_empty());
        assert!(meta.pending_offsets.is_empty() && meta.markers_pending.is_empty());
        assert_eq!(txns.in_prepare().count(), 0);
        assert_eq!(txns.end_txn("t", 7, 0, true, 50)?, EndOutcome::AlreadyEnded);
        // The next transaction starts from CompleteCommit.
        txns.add_partitions("t", 7, 0, &[tp("a", 2)], 60)?;
        assert_eq!(txns.get("t").map(|m| m.started_ms), Some(60));
        Ok(())
    }

    #[test]
    fn abort_drops_offsets_and_empty_transactions_complete_at_once(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let mut txns = with_producer()?;
        assert_eq!(
            txns.end_txn("t", 7, 0, true, 1),
            Err(TxnError::InvalidTxnState)
        );
        txns.add_offsets("t", 7, 0, "g", 1)?;
        txns.txn_offset_commit("t", 7, 0, "g", [(tp("in", 0), offset(5))])?;
        assert_eq!(
            txns.end_txn("t", 7, 0, false, 2)?,
            EndOutcome::Completed(Completion {
                committed: false,
                offsets: BTreeMap::new()
            })
        );
        assert_eq!(state(&txns), TxnState::CompleteAbort);
        assert_eq!(txns.end_txn("t", 7, 0, false, 3)?, EndOutcome::AlreadyEnded);
        assert_eq!(
            txns.end_txn("t", 7, 0, true, 3),
            Err(TxnError::InvalidTxnState)
        );
        // Groups only, committed: the offsets come back at once.
        txns.add_offsets("t", 7, 0, "g", 4)?;
        txns.txn_offset_commit("t", 7, 0, "g", [(tp("in", 0), offset(6))])?;
        match txns.end_txn("t", 7, 0, true, 5)? {
            EndOutcome::Completed(c) => {
                assert!(c.committed);
                assert_eq!(c.offsets.len(), 1);
            }
            other => return Err(format!("expected Completed, got {other:?}").into()),
        }
        Ok(())
    }

    #[test]
    fn producer_checks_map_to_kafka_errors() -> Result<(), Box<dyn std::error::Error>> {
        let mut txns = with_producer()?;
        let add = |t: &mut Transactions, id: &str, pid, epoch| {
            t.add_partitions(id, pid, epoch, &[tp("a", 0)], 1)
        };
        assert_eq!(
            add(&mut txns, "nope", 7, 0),
            Err(TxnError::InvalidProducerIdMapping)
        );
        assert_eq!(
            add(&mut txns, "t", 8, 0),
            Err(TxnError::InvalidProducerIdMapping)
        );
        assert_eq!(add(&mut txns, "t", 7, 1), Err(TxnError::ProducerFenced));
        // A new producer bumps the epoch; the old one is fenced everywhere.
        assert_eq!(
            ready(txns.init_producer("t", MIN, 2, None, || 99)?)?,
            (7, 1)
        );
        assert_eq!(add(&mut txns, "t", 7, 0), Err(TxnError::ProducerFenced));
        assert_eq!(
            txns.end_txn("t", 7, 0, true, 3),
            Err(TxnError::ProducerFenced)
        );
        assert_eq!(
            txns.init_producer("t", MIN, 3, Some((7, 0)), || 99),
            Err(TxnError::ProducerFenced)
        );
        assert_eq!(
            txns.init_producer("t", MIN, 3, Some((8, 1)), || 99),
            Err(TxnError::ProducerFenced)
        );
        assert_eq!(
            txns.check_write(7, 0, &tp("a", 0)),
            Err(TxnError::ProducerFenced)
        );
        assert_eq!(
            txns.check_write(123, 0, &tp("a", 0)),
            Err(TxnError::InvalidProducerIdMapping)
        );
        // Request validation.
        assert_eq!(
            txns.init_producer("", MIN, 3, None, || 99),
            Err(TxnError::InvalidRequest)
        );
        assert_eq!(
            txns.init_producer("t", 0, 3, None, || 99),
            Err(TxnError::InvalidTimeout)
        );
        assert_eq!(
            txns.init_producer("t", MAX_TXN_TIMEOUT_MS + 1, 3, None, || 99),
            Err(TxnError::InvalidTimeout)
        );
        // The codes clients see.
        assert_eq!(TxnError::ConcurrentTransactions.code(), 51);
        assert_eq!(TxnError::ProducerFenced.code(), 90);
        assert_eq!(TxnError::InvalidProducerIdMapping.code(), 49);
        assert_eq!(TxnError::InvalidTxnState.code(), 48);
        assert_eq!(TxnError::InvalidTimeout.code(), 50);
        assert_eq!(TxnError::TransactionTooLarge.code(), 44);
        Ok(())
    }

    #[test]
    fn kip_360_bump_with_current_and_its_retry() -> Result<(), Box<dyn std::error::Error>> {
        let mut txns = with_producer()?;
        assert_eq!(
            ready(txns.init_producer("t", MIN, 1, Some((7, 0)), || 99)?)?,
            (7, 1)
        );
        // The response was lost: the retry with the old pair gets the same epoch.
        assert_eq!(
            ready(txns.init_producer("t", MIN, 2, Some((7, 0)), || 99)?)?,
            (7, 1)
        );
        // A bump from the current pair moves on.
        assert_eq!(
            ready(txns.init_producer("t", MIN, 3, Some((7, 1)), || 99)?)?,
            (7, 2)
        );
        // A fresh start forgets the previous pair.
        assert_eq!(
            ready(txns.init_producer("t", MIN, 4, None, || 99)?)?,
            (7, 3)
        );
        assert_eq!(
            txns.init_producer("t", MIN, 5, Some((7, 2)), || 99),
            Err(TxnError::ProducerFenced)
        );
        Ok(())
    }

    #[test]
    fn init_while_ongoing_aborts_first_and_fences() -> Result<(), Box<dyn std::error::Error>> {
        let mut txns = with_producer()?;
        txns.add_partitions("t", 7, 0, &[tp("a", 0)], 1)?;
        let out = txns.init_producer("t", MIN, 2, None, || 99)?;
        assert_eq!(
            out,
            InitOutcome::MustAbortFirst {
                producer_id: 7,
                epoch: 1,
                markers: vec![tp("a", 0)]
            }
        );
        assert_eq!(state(&txns), TxnState::PrepareAbort);
        // The zombie can neither end nor extend its transaction.
        assert_eq!(
            txns.end_txn("t", 7, 0, true, 3),
            Err(TxnError::ProducerFenced)
        );
        assert_eq!(
            txns.init_producer("t", MIN, 3, None, || 99),
            Err(TxnError::ConcurrentTransactions)
        );
        assert_eq!(
            txns.marker_written("t", 7, 1, &tp("a", 0)),
            MarkerOutcome::Written {
                commit: false,
                completed: Some(Completion::default())
            }
        );
        // The retry bumps again.
        assert_eq!(
            ready(txns.init_producer("t", MIN, 4, None, || 99)?)?,
            (7, 2)
        );
        // Without partitions the abort is complete at once.
        txns.add_offsets("t", 7, 2, "g", 5)?;
        assert_eq!(
            txns.init_producer("t", MIN, 6, None, || 99)?,
            InitOutcome::MustAbortFirst {
                producer_id: 7,
                epoch: 3,
                markers: vec![]
            }
        );
        assert_eq!(state(&txns), TxnState::CompleteAbort);
        Ok(())
    }

    #[test]
    fn exhausted_epoch_moves_to_a_new_producer_id() -> Result<(), Box<dyn std::error::Error>> {
        let mut txns = with_producer()?;
        if let Some(meta) = txns.ids.get_mut("t") {
            meta.epoch = i16::MAX - 2;
        }
        assert_eq!(
            ready(txns.init_producer("t", MIN, 1, None, || 99)?)?,
            (7, i16::MAX - 1)
        );
        // Fencing an exhausted epoch still raises it, to i16::MAX at most.
        txns.add_partitions("t", 7, i16::MAX - 1, &[tp("a", 0)], 2)?;
        txns.abort_expired("t", 2 + MIN + 1)?;
        assert_eq!(txns.get("t").map(|m| m.epoch), Some(i16::MAX));
        txns.marker_written("t", 7, i16::MAX, &tp("a", 0));
        // The producer recovering with its old pair (KIP-360) gets a new id.
        assert_eq!(
            ready(txns.init_producer("t", MIN, 3, Some((7, i16::MAX - 1)), || 99)?)?,
            (99, 0)
        );
        assert_eq!(txns.transactional_id(99), Some("t"));
        assert_eq!(txns.transactional_id(7), None);
        // A retry of that call gets the same answer.
        assert_eq!(
            ready(txns.init_producer("t", MIN, 4, Some((7, i16::MAX - 1)), || 100)?)?,
            (99, 0)
        );
        Ok(())
    }

    #[test]
    fn timeouts_abort_and_fence_the_zombie() -> Result<(), Box<dyn std::error::Error>> {
        let mut txns = with_producer()?;
        txns.add_partitions("t", 7, 0, &[tp("a", 0)], 100)?;
        assert!(txns.expired(100 + MIN).is_empty());
        assert_eq!(txns.expired(100 + MIN + 1), vec!["t".to_owned()]);
        // Proposed too early (or after the producer ended it): refused.
        assert_eq!(
            txns.abort_expired("t", 100 + MIN),
            Err(TxnError::InvalidTxnState)
        );
        assert_eq!(
            txns.abort_expired("t", 100 + MIN + 1)?,
            EndOutcome::Prepared {
                commit: false,
                producer_id: 7,
                epoch: 1,
                markers: vec![tp("a", 0)]
            }
        );
        assert!(txns.expired(i64::MAX).is_empty());
        assert_eq!(
            txns.abort_expired("t", i64::MAX),
            Err(TxnError::InvalidTxnState)
        );
        assert_eq!(
            txns.add_partitions("t", 7, 0, &[tp("a", 0)], 200_000),
            Err(TxnError::ProducerFenced)
        );
        // A coordinator taking over finds the marker to write.
        let pending: Vec<_> = txns
            .in_prepare()
            .map(|(id, m)| (id.to_owned(), m.markers_pending.clone()))
            .collect();
        assert_eq!(pending.len(), 1);
        txns.marker_written("t", 7, 1, &tp("a", 0));
        // The timed-out producer recovers with its old pair (KIP-360).
        assert_eq!(
            ready(txns.init_producer("t", MIN, 300_000, Some((7, 0)), || 99)?)?,
            (7, 1)
        );
        Ok(())
    }

    #[test]
    fn bounds_and_id_expiry() -> Result<(), Box<dyn std::error::Error>> {
        let mut txns = with_producer()?;
        let many: Vec<TopicPartition> = (0..=MAX_PARTITIONS_PER_TXN)
            .map(|p| tp("a", i32::try_from(p).unwrap_or(i32::MAX)))
            .collect();
        assert_eq!(
            txns.add_partitions("t", 7, 0, &many, 1),
            Err(TxnError::TransactionTooLarge)
        );
        assert_eq!(state(&txns), TxnState::Empty);
        txns.add_partitions("t", 7, 0, &many[..MAX_PARTITIONS_PER_TXN], 1)?;
        // Re-adding partitions already in does not count twice.
        txns.add_partitions("t", 7, 0, &many[..10], 1)?;
        assert_eq!(
            txns.add_partitions("t", 7, 0, &many[MAX_PARTITIONS_PER_TXN..], 1),
            Err(TxnError::TransactionTooLarge)
        );

        for (pid, i) in (100..).zip(1..MAX_TRANSACTIONAL_IDS) {
            txns.init_producer(&format!("id-{i}"), MIN, 10, None, || pid)?;
        }
        assert_eq!(txns.len(), MAX_TRANSACTIONAL_IDS);
        assert_eq!(
            txns.init_producer("one-more", MIN, 10, None, || 0),
            Err(TxnError::TooManyTransactionalIds)
        );
        // Idle ids expire; the ongoing one stays whatever its age.
        assert!(txns
            .expire_ids(
                10 + TRANSACTIONAL_ID_EXPIRATION_MS,
                TRANSACTIONAL_ID_EXPIRATION_MS
            )
            .is_empty());
        let gone = txns.expire_ids(
            11 + TRANSACTIONAL_ID_EXPIRATION_MS,
            TRANSACTIONAL_ID_EXPIRATION_MS,
        );
        assert_eq!(gone.len(), MAX_TRANSACTIONAL_IDS - 1);
        assert_eq!(txns.len(), 1);
        assert_eq!(txns.by_producer.len(), 1);
        assert_eq!(txns.transactional_id(7), Some("t"));
        Ok(())
    }

    #[test]
    fn serde_round_trip() -> Result<(), Box<dyn std::error::Error>> {
        let mut txns = with_producer()?;
        txns.add_partitions("t", 7, 0, &[tp("a", 0)], 1)?;
        txns.add_offsets("t", 7, 0, "g", 1)?;
        let json = serde_json::to_string(&txns)?;
        let back: Transactions = serde_json::from_str(&json)?;
        assert_eq!(back, txns);
        let mut p = PartitionTxns::default();
        p.record_transactional_batch(7, 3)?;
        p.marker(7, false, 5);
        let back: PartitionTxns = serde_json::from_str(&serde_json::to_string(&p)?)?;
        assert_eq!(back, p);
        Ok(())
    }

    #[test]
    fn partition_lso_and_aborted_index() -> Result<(), Box<dyn std::error::Error>> {
        let mut p = PartitionTxns::default();
        assert_eq!(p.last_stable_offset(10), 10);
        p.record_transactional_batch(1, 10)?;
        p.record_transactional_batch(2, 12)?;
        p.record_transactional_batch(1, 14)?; // does not move pid 1's first offset
        assert_eq!(p.last_stable_offset(20), 10);
        assert!(p.marker(1, false, 20));
        assert_eq!(p.last_stable_offset(21), 12);
        // A second marker (a retry after a takeover) changes nothing.
        assert!(!p.marker(1, false, 21));
        assert!(p.marker(2, true, 22));
        assert_eq!(p.last_stable_offset(23), 23);
        let a = AbortedTxn {
            producer_id: 1,
            first_offset: 10,
            last_offset: 20,
        };
        assert_eq!(p.aborted(), &[a]);
        assert_eq!(p.aborted_in(0, 10), vec![]);
        assert_eq!(p.aborted_in(0, 11), vec![a]);
        assert_eq!(p.aborted_in(20, 30), vec![a]);
        assert_eq!(p.aborted_in(21, 30), vec![]);
        // An ongoing transaction below a moved log start counts from it.
        p.record_transactional_batch(3, 23)?;
        p.truncate_before(20);
        assert_eq!(p.aborted(), &[a]);
        p.truncate_before(25);
        assert!(p.aborted().is_empty());
        assert_eq!(p.last_stable_offset(30), 25);
        Ok(())
    }

    #[test]
    fn compaction_archives_the_aborts_that_lie_wholly_in_its_run() -> Result<(), TxnError> {
        let mut p = PartitionTxns::default();
        // 1 aborts over [2, 5], 2 over [8, 12], 3 over [9, 20].
        for (pid, first, marker) in [(1, 2, 5), (2, 8, 12), (3, 9, 20)] {
            p.record_transactional_batch(pid, first)?;
            p.marker(pid, false, marker);
        }
        let t = |pid, first, last| AbortedTxn {
            producer_id: pid,
            first_offset: first,
            last_offset: last,
        };
        // [0, 10) holds 1 wholly; 2 and 3 end later.
        assert_eq!(p.archivable(0, 10), vec![t(1, 2, 5)]);
        // [10, 15) holds 2's marker, but 2 began before: it stays.
        assert_eq!(p.archivable(10, 15), vec![]);
        p.archive(0, 10);
        assert_eq!(p.aborted(), &[t(2, 8, 12), t(3, 9, 20)]);
        p.archive(10, 15);
        assert_eq!(p.aborted(), &[t(2, 8, 12), t(3, 9, 20)]);
        // A later merge of [0, 25) takes both.
        assert_eq!(p.archivable(0, 25), vec![t(2, 8, 12), t(3, 9, 20)]);
        p.archive(0, 25);
        assert!(p.aborted().is_empty());
        // The state's room is freed for new transactions.
        assert_eq!(p.record_capped(4, 30, 1), Ok(()));
        Ok(())
    }

    #[test]
    fn partition_cap_leaves_room_for_every_abort() -> Result<(), Box<dyn std::error::Error>> {
        let mut p = PartitionTxns::default();
        p.record_capped(1, 0, 2)?;
        p.record_capped(2, 1, 2)?;
        assert_eq!(p.record_capped(3, 2, 2), Err(TxnError::AbortedIndexFull));
        // An ongoing producer's later batches are fine.
        p.record_capped(1, 3, 2)?;
        p.marker(1, false, 4);
        p.marker(2, false, 5);
        assert_eq!(p.aborted().len(), 2);
        assert_eq!(p.record_capped(3, 6, 2), Err(TxnError::AbortedIndexFull));
        p.truncate_before(5);
        p.record_capped(3, 6, 2)?;
        Ok(())
    }

    /// A step of the partition property test.
    #[derive(Debug, Clone)]
    enum Step {
        Batch { pid: i64, count: i64 },
        Marker { pid: i64, commit: bool },
        Truncate { by: i64 },
    }

    fn arb_step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0..5i64, 1..4i64).prop_map(|(pid, count)| Step::Batch { pid, count }),
            3 => (0..5i64, any::<bool>()).prop_map(|(pid, commit)| Step::Marker { pid, commit }),
            1 => (0..8i64).prop_map(|by| Step::Truncate { by }),
        ]
    }

    const CAP: usize = 6;

    proptest! {
        /// Against a straightforward model: LSO is the earliest ongoing first offset (else
        /// the high watermark) and never above it; aborted transactions are exactly the
        /// model's, sorted, within the cap, never a committed one; `aborted_in` returns
        /// exactly the aborted transactions overlapping the range.
        #[test]
        fn partition_matches_model(
            steps in prop::collection::vec(arb_step(), 0..80),
            ranges in prop::collection::vec((0..120i64, 0..120i64), 1..8),
        ) {
            let mut p = PartitionTxns::default();
            let mut hw = 0i64;
            let mut log_start = 0i64;
            let mut ongoing: BTreeMap<i64, i64> = BTreeMap::new();
            let mut aborted: Vec<AbortedTxn> = Vec::new();
            let mut committed: Vec<AbortedTxn> = Vec::new();
            for step in &steps {
                match *step {
                    Step::Batch { pid, count } => {
                        let full = !ongoing.contains_key(&pid) && ongoing.len() + aborted.len() >= CAP;
                        let got = p.record_capped(pid, hw, CAP);
                        prop_assert_eq!(got.is_err(), full);
                        if !full {
                            ongoing.entry(pid).or_insert(hw);
                            hw += count;
                        }
                    }
                    Step::Marker { pid, commit } => {
                        let ended = p.marker(pid, commit, hw);
                        prop_assert_eq!(ended, ongoing.contains_key(&pid));
                        if let Some(first_offset) = ongoing.remove(&pid) {
                            let t = AbortedTxn { producer_id: pid, first_offset, last_offset: hw };
                            if commit { committed.push(t) } else { aborted.push(t) }
                        }
                        hw += 1;
                    }
                    Step::Truncate { by } => {
                        log_start = (log_start + by).min(hw);
                        p.truncate_before(log_start);
                        aborted.retain(|a| a.last_offset >= log_start);
                        for first in ongoing.values_mut() {
                            *first = (*first).max(log_start);
                        }
                    }
                }
                let lso = p.last_stable_offset(hw);
                prop_assert!(lso <= hw);
                prop_assert!(lso >= log_start);
                prop_assert_eq!(lso, ongoing.values().copied().min().unwrap_or(hw));
                prop_assert_eq!(p.ongoing(), &ongoing);
                prop_assert_eq!(p.aborted(), aborted.as_slice());
                prop_assert!(p.aborted().windows(2).all(|w| w[0].last_offset <= w[1].last_offset));
                prop_assert!(p.aborted().len() + p.ongoing().len() <= CAP);
                for a in p.aborted() {
                    prop_assert!(!committed.iter().any(|c| c.last_offset == a.last_offset));
                }
            }
            for &(from, len) in &ranges {
                let upto = from + len;
                let want: Vec<AbortedTxn> = aborted
                    .iter()
                    .filter(|a| a.last_offset >= from && a.first_offset < upto)
                    .copied()
                    .collect();
                prop_assert_eq!(p.aborted_in(from, upto), want);
            }
        }
    }

    /// A step of the aborted-index property test: a transaction's batch or marker (each
    /// its own flush entry), or a compaction of a run of entries.
    #[derive(Debug, Clone)]
    enum LogStep {
        Batch { pid: i64 },
        Marker { pid: i64, commit: bool },
        Compact { at: prop::sample::Index, len: usize },
    }

    fn arb_log_step() -> impl Strategy<Value = LogStep> {
        prop_oneof![
            4 => (0..4i64).prop_map(|pid| LogStep::Batch { pid }),
            3 => (0..4i64, any::<bool>()).prop_map(|(pid, commit)| LogStep::Marker { pid, commit }),
            2 => (any::<prop::sample::Index>(), 1..5usize).prop_map(|(at, len)| LogStep::Compact { at, len }),
        ]
    }

    proptest! {
        /// Compaction moves aborted transactions from the state into the footers of its
        /// outputs (`archivable`, then `archive`; inputs' footers carried over): for any
        /// range, the state's entries plus the footers of the entries the range overlaps
        /// give exactly the aborted transactions overlapping it, as one index would.
        #[test]
        fn the_state_and_the_footers_answer_as_one_index(
            steps in prop::collection::vec(arb_log_step(), 0..120),
            ranges in prop::collection::vec((0..150i64, 1..40i64), 1..10),
        ) {
            let mut p = PartitionTxns::default();
            // (base, end, footer) per index entry, in offset order.
            let mut log: Vec<(i64, i64, Vec<AbortedTxn>)> = Vec::new();
            let mut ongoing: BTreeMap<i64, i64> = BTreeMap::new();
            let mut model: Vec<AbortedTxn> = Vec::new();
            let mut hw = 0i64;
            for step in &steps {
                match step {
                    LogStep::Batch { pid } => {
                        p.record_capped(*pid, hw, usize::MAX)?;
                        ongoing.entry(*pid).or_insert(hw);
                        log.push((hw, hw + 2, Vec::new()));
                        hw += 2;
                    }
                    LogStep::Marker { pid, commit } => {
                        p.marker(*pid, *commit, hw);
                        if let Some(first_offset) = ongoing.remove(pid) {
                            if !commit {
                                model.push(AbortedTxn { producer_id: *pid, first_offset, last_offset: hw });
                            }
                        }
                        log.push((hw, hw + 1, Vec::new()));
                        hw += 1;
                    }
                    LogStep::Compact { at, len } => {
                        if log.is_empty() {
                            continue;
                        }
                        let start = at.index(log.len());
                        let end = (start + len).min(log.len());
                        let run: Vec<_> = log.drain(start..end).collect();
                        let (base, to) = (run[0].0, run[run.len() - 1].1);
                        let mut footer: Vec<AbortedTxn> =
                            run.into_iter().flat_map(|(_, _, f)| f).collect();
                        footer.extend(p.archivable(base, to));
                        p.archive(base, to);
                        for a in &footer {
                            prop_assert!(a.first_offset >= base && a.last_offset < to);
                        }
                        log.insert(start, (base, to, footer));
                    }
                }
            }
            for &(from, len) in &ranges {
                let upto = from + len;
                let overlaps = |a: &AbortedTxn| a.last_offset >= from && a.first_offset < upto;
                let mut got = p.aborted_in(from, upto);
                for (base, end, footer) in &log {
                    if *base < upto && *end > from {
                        got.extend(footer.iter().filter(|a| overlaps(a)));
                    }
                }
                got.sort_by_key(|a| (a.last_offset, a.producer_id));
                let mut want: Vec<AbortedTxn> = model.iter().filter(|a| overlaps(a)).copied().collect();
                want.sort_by_key(|a| (a.last_offset, a.producer_id));
                prop_assert_eq!(got, want);
            }
        }
    }

    /// A step of the coordinator property test: client calls from a few producers of two
    /// transactional ids, markers, timeouts and id expiry, with times moving forward.
    #[derive(Debug, Clone)]
    enum Call {
        Init { id: usize, with_current: bool },
        Add { id: usize, part: i32 },
        Offsets { id: usize },
        End { id: usize, commit: bool },
        Marker { id: usize, part: i32 },
        Expire,
        ExpireIds,
    }

    fn arb_call() -> impl Strategy<Value = Call> {
        prop_oneof![
            1 => (0..2usize, any::<bool>()).prop_map(|(id, with_current)| Call::Init { id, with_current }),
            3 => (0..2usize, 0..3i32).prop_map(|(id, part)| Call::Add { id, part }),
            1 => (0..2usize).prop_map(|id| Call::Offsets { id }),
            2 => (0..2usize, any::<bool>()).prop_map(|(id, commit)| Call::End { id, commit }),
            3 => (0..2usize, 0..3i32).prop_map(|(id, part)| Call::Marker { id, part }),
            1 => Just(Call::Expire),
            1 => Just(Call::ExpireIds),
        ]
    }

    proptest! {
        /// Invariants of the coordinator under any sequence of calls: idle and Complete*
        /// states hold nothing; markers pending only in Prepare*, within the partitions;
        /// epochs of an id never go back for one producer id; producer ids map back to
        /// their transactional id; the operations are deterministic.
        #[test]
        fn coordinator_invariants(calls in prop::collection::vec((arb_call(), 0..40_000i64), 0..100)) {
            let ids = ["a", "b"];
            let mut txns = Transactions::default();
            let mut twin = Transactions::default();
            let mut now = 0i64;
            let mut next_pid = 0i64;
            // What each id's producer believes it holds.
            let mut held: [Option<(i64, i16)>; 2] = [None, None];
            let mut seen: BTreeMap<i64, i16> = BTreeMap::new();
            for (call, dt) in &calls {
                now += dt;
                let run = |t: &mut Transactions, held: &mut [Option<(i64, i16)>; 2], next_pid: &mut i64| {
                    match *call {
                        Call::Init { id, with_current } => {
                            let current = if with_current { held[id] } else { None };
                            let pid = *next_pid;
                            if let Ok(InitOutcome::Ready { producer_id, epoch }) =
                                t.init_producer(ids[id], 20_000, now, current, || pid)
                            {
                                if producer_id == pid {
                                    *next_pid += 1;
                                }
                                held[id] = Some((producer_id, epoch));
                            }
                        }
                        Call::Add { id, part } => {
                            if let Some((pid, e)) = held[id] {
                                let _ = t.add_partitions(ids[id], pid, e, &[tp("x", part)], now);
                            }
                        }
                        Call::Offsets { id } => {
                            if let Some((pid, e)) = held[id] {
                                let _ = t.add_offsets(ids[id], pid, e, "g", now);
                                let _ = t.txn_offset_commit(ids[id], pid, e, "g", [(tp("in", 0), offset(now))]);
                            }
                        }
                        Call::End { id, commit } => {
                            if let Some((pid, e)) = held[id] {
                                let _ = t.end_txn(ids[id], pid, e, commit, now);
                            }
                        }
                        Call::Marker { id, part } => {
                            if let Some(m) = t.get(ids[id]).cloned() {
                                let _ = t.marker_written(ids[id], m.producer_id, m.epoch, &tp("x", part));
                            }
                        }
                        Call::Expire => {
                            for id in t.expired(now) {
                                let _ = t.abort_expired(&id, now);
                            }
                        }
                        Call::ExpireIds => {
                            let _ = t.expire_ids(now, 100_000);
                        }
                    }
                };
                let mut held_twin = held;
                let mut next_twin = next_pid;
                run(&mut txns, &mut held, &mut next_pid);
                run(&mut twin, &mut held_twin, &mut next_twin);
                prop_assert_eq!(&txns, &twin);
                prop_assert_eq!(held, held_twin);

                prop_assert_eq!(txns.by_producer.len(), txns.len());
                for (id, m) in txns.iter() {
                    prop_assert_eq!(txns.transactional_id(m.producer_id), Some(id));
                    if m.state.is_idle() {
                        prop_assert!(m.partitions.is_empty() && m.groups.is_empty());
                        prop_assert!(m.pending_offsets.is_empty());
                    }
                    if m.state.is_prepare() {
                        prop_assert!(!m.markers_pending.is_empty());
                        prop_assert!(m.markers_pending.is_subset(&m.partitions));
                    } else {
                        prop_assert!(m.markers_pending.is_empty());
                    }
                    let last = seen.entry(m.producer_id).or_insert(m.epoch);
                    prop_assert!(m.epoch >= *last);
                    *last = m.epoch;
                }
            }
        }
    }
}

//! The transaction coordinator's background work: writing markers, aborting
//! transactions past their timeout, finishing what a failed broker left in Prepare*, and
//! forgetting idle transactional ids.
//!
//! Nothing here holds state that matters: every decision is in the metadata state, and a
//! marker is taken by the state machine only while its transaction waits for it on that
//! partition. Two brokers writing the same marker (a coordinator that moved, a retried
//! EndTxn) therefore cost one wasted chunk, never a second marker.

pub mod markers;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use tracing::{debug, info, warn};

use crate::metadata::state::transactions::{TopicPartition, TRANSACTIONAL_ID_EXPIRATION_MS};
use crate::metadata::state::{Command, Response, StateError, TxnReply};
use crate::metadata::Metadata;
use crate::produce::{ProduceError, WriteBuffer};

/// How often the coordinator loop looks for timed-out and unfinished transactions.
const TICK: Duration = Duration::from_millis(500);
/// How often the Raft leader looks for idle transactional ids.
const EXPIRY_CHECK: Duration = Duration::from_secs(600);
/// Transactions this broker finishes at once from its loop.
const MAX_FINISHING: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum MarkerError {
    #[error("marker for {topic}-{partition} not written: {source}")]
    Write {
        topic: String,
        partition: i32,
        source: ProduceError,
    },
}

/// The markers a transaction in Prepare* still needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerPlan {
    pub commit: bool,
    pub producer_id: i64,
    pub epoch: i16,
    pub partitions: Vec<TopicPartition>,
}

/// Transactions whose markers this broker is writing now; the loop leaves them alone.
#[derive(Debug, Default)]
struct Finishing(Mutex<HashSet<String>>);

impl Finishing {
    fn claim(&self, txn_id: &str) -> bool {
        let mut set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        set.len() < MAX_FINISHING && set.insert(txn_id.to_owned())
    }

    fn release(&self, txn_id: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(txn_id);
    }

    fn contains(&self, txn_id: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(txn_id)
    }
}

/// One broker's transaction coordinator: what it needs to write markers and to act on
/// the transactions it coordinates. Requests (EndTxn, InitProducerId) and the loop share it.
pub struct TxnCoordinator {
    metadata: Arc<Metadata>,
    buffer: WriteBuffer,
    node_id: u64,
    finishing: Finishing,
}

impl TxnCoordinator {
    pub fn new(metadata: Arc<Metadata>, buffer: WriteBuffer, node_id: u64) -> Arc<Self> {
        Arc::new(Self {
            metadata,
            buffer,
            node_id,
            finishing: Finishing::default(),
        })
    }

    /// The markers `txn_id` still waits for, if it is in Prepare*.
    pub fn pending_plan(&self, txn_id: &str) -> Option<MarkerPlan> {
        self.metadata.read(|s| {
            let meta = s.transactions().get(txn_id)?;
            meta.state.is_prepare().then(|| MarkerPlan {
                commit: meta.state == crate::metadata::state::transactions::TxnState::PrepareCommit,
                producer_id: meta.producer_id,
                epoch: meta.epoch,
                partitions: meta.markers_pending.iter().cloned().collect(),
            })
        })
    }

    /// Writes the markers of `plan` and waits for their commit; the coordinator loop
    /// leaves the transaction alone meanwhile.
    pub async fn finish(&self, txn_id: &str, plan: MarkerPlan) -> Result<(), MarkerError> {
        let claimed = self.finishing.claim(txn_id);
        let result = self.write_markers(txn_id, plan).await;
        if claimed {
            self.finishing.release(txn_id);
        }
        result
    }

    /// Writes the markers of `plan` through the write buffer and waits for their commit.
    /// A marker the state machine no longer expects (written by someone else meanwhile)
    /// or for a deleted partition counts as done.
    async fn write_markers(&self, txn_id: &str, plan: MarkerPlan) -> Result<(), MarkerError> {
        let now = crate::clock::now_ms();
        let coordinator_epoch = self.metadata.read(|s| s.cluster().epoch());
        let mut waits = Vec::with_capacity(plan.partitions.len());
        for TopicPartition { topic, partition } in plan.partitions {
            let batches = markers::marker_batches(
                txn_id,
                plan.producer_id,
                plan.epoch,
                plan.commit,
                coordinator_epoch,
                now,
            );
            let queued = self.buffer.enqueue(&topic, partition, batches).await;
            waits.push(async move {
                let result = match queued {
                    Ok(committed) => committed.await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(_)
                    | Err(ProduceError::Rejected(StateError::StaleMarker))
                    | Err(ProduceError::UnknownTopicOrPartition) => Ok(()),
                    Err(source) => Err(MarkerError::Write {
                        topic,
                        partition,
                        source,
                    }),
                }
            });
        }
        join_all(waits).await.into_iter().collect()
    }

    /// [`Self::finish`] unless this broker is already at it.
    async fn finish_once(&self, txn_id: &str, plan: MarkerPlan) {
        if !self.finishing.claim(txn_id) {
            return;
        }
        if let Err(e) = self.write_markers(txn_id, plan).await {
            warn!(txn_id, error = %e, "transaction markers not written; retrying");
        }
        self.finishing.release(txn_id);
    }

    /// Whether this broker coordinates `txn_id` and is not finishing it already.
    fn owns(&self, txn_id: &str) -> bool {
        self.metadata.coordinator(txn_id, self.node_id) == Some(self.node_id)
            && !self.finishing.contains(txn_id)
    }

    /// The coordinator loop of one broker: for the transactions it coordinates, aborts
    /// those past their timeout and finishes those left in Prepare* (by a failed broker,
    /// or an EndTxn whose markers failed). The Raft leader also forgets idle
    /// transactional ids.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A transaction seen in Prepare* on the previous tick too: its EndTxn handler
        // (here or on another broker) has had its chance.
        let mut preparing: HashSet<String> = HashSet::new();
        let mut last_expiry = Instant::now();
        loop {
            tick.tick().await;
            if self.metadata.fenced() {
                continue;
            }
            let now = crate::clock::now_ms();
            let (prepare, expired) = self.metadata.read(|s| {
                let t = s.transactions();
                let prepare: Vec<String> = t.in_prepare().map(|(id, _)| id.to_owned()).collect();
                (prepare, t.expired(now))
            });
            let seen = std::mem::take(&mut preparing);
            for id in prepare {
                if self.owns(&id) && seen.contains(&id) {
                    if let Some(plan) = self.pending_plan(&id) {
                        let me = self.clone();
                        tokio::spawn(async move { me.finish_once(&id, plan).await });
                    }
                } else {
                    preparing.insert(id);
                }
            }
            for id in expired {
                if !self.owns(&id) {
                    continue;
                }
                let me = self.clone();
                tokio::spawn(async move { me.abort_timed_out(id, now).await });
            }
            if self.metadata.is_leader() && last_expiry.elapsed() >= EXPIRY_CHECK {
                last_expiry = Instant::now();
                self.expire_ids(now).await;
            }
        }
    }

    async fn abort_timed_out(&self, txn_id: String, now_ms: i64) {
        let cmd = Command::AbortTimedOutTxn {
            txn_id: txn_id.clone(),
            now_ms,
        };
        match self.metadata.propose(cmd).await {
            Ok(Response::Txn(Ok(TxnReply::Markers {
                commit,
                producer_id,
                epoch,
                partitions,
            }))) => {
                info!(
                    txn_id,
                    producer_id, "aborting a transaction past its timeout"
                );
                let plan = MarkerPlan {
                    commit,
                    producer_id,
                    epoch,
                    partitions,
                };
                self.finish_once(&txn_id, plan).await;
            }
            Ok(Response::Txn(Ok(_))) => {
                info!(txn_id, "aborted a transaction past its timeout");
                crate::telemetry::record_transaction("timeout");
            }
            // Ended or moved on since: nothing to do.
            Ok(_) => {}
            Err(e) => debug!(txn_id, error = %e, "timeout abort not committed"),
        }
    }

    async fn expire_ids(&self, now_ms: i64) {
        let idle = self.metadata.read(|s| {
            s.transactions().iter().any(|(_, m)| {
                m.state.is_idle()
                    && m.last_update_ms
                        .saturating_add(TRANSACTIONAL_ID_EXPIRATION_MS)
                        < now_ms
            })
        });
        if !idle {
            return;
        }
        let cmd = Command::ExpireTransactionalIds {
            now_ms,
            expiration_ms: TRANSACTIONAL_ID_EXPIRATION_MS,
        };
        if let Err(e) = self.metadata.propose(cmd).await {
            debug!(error = %e, "transactional id expiry not committed");
        }
    }
}

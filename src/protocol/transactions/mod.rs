//! The transaction coordinator's APIs: InitProducerId with a transactional id,
//! AddPartitionsToTxn, AddOffsetsToTxn, EndTxn and TxnOffsetCommit.
//!
//! Every transaction's state is in the metadata state machine, so any broker can answer
//! for any transaction: clients find "the" coordinator with FindCoordinator (placed like
//! group coordinators), but a broker that is not it serves the request all the same, and
//! one that takes over after a failure has nothing to load. Each request is one Raft
//! proposal; the markers a decision needs go through this broker's write buffer
//! (`crate::txn`).

pub mod describe;

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, EndTxnRequest, EndTxnResponse, InitProducerIdRequest,
    InitProducerIdResponse, ProducerId, TransactionalId, TxnOffsetCommitRequest,
    TxnOffsetCommitResponse,
};
use tracing::debug;

use crate::broker::Broker;
use crate::clock::now_ms;
use crate::metadata::state::transactions::{PendingOffset, TopicPartition, TxnError};
use crate::metadata::state::{Command, Response, TxnReply};
use crate::protocol::authz::Authz;
use crate::security::acl::Operation;

const TXN_ID_REFUSED: i16 = ResponseError::TransactionalIdAuthorizationFailed.code();

/// The Kafka code for a refusal. Before KIP-588's versions (`fenced_since`) a fenced
/// producer hears INVALID_PRODUCER_EPOCH.
fn code(e: TxnError, version: i16, fenced_since: i16) -> i16 {
    if e == TxnError::ProducerFenced && version < fenced_since {
        ResponseError::InvalidProducerEpoch.code()
    } else {
        e.code()
    }
}

/// Proposes one transaction command. A broker cut off from Raft answers NOT_COORDINATOR
/// (the client asks FindCoordinator again, which names a live broker).
async fn propose(broker: &Broker, cmd: Command) -> Result<Result<TxnReply, TxnError>, i16> {
    if broker.fenced() {
        return Err(ResponseError::NotCoordinator.code());
    }
    match broker.propose(cmd).await {
        Ok(Response::Txn(r)) => Ok(r),
        Ok(other) => {
            debug!(?other, "unexpected response to a transaction command");
            Err(ResponseError::UnknownServerError.code())
        }
        Err(e) => {
            debug!(error = %e, "transaction command not committed");
            Err(ResponseError::NotCoordinator.code())
        }
    }
}

/// InitProducerId with a transactional id (KIP-360 epoch bumps with v3+).
pub async fn init(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    txn_id: &str,
    req: &InitProducerIdRequest,
    version: i16,
) -> InitProducerIdResponse {
    let response = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    if !authz.transactional_id(Operation::Write, txn_id) {
        return response.with_error_code(TXN_ID_REFUSED);
    }
    let current = (req.producer_id.0 >= 0).then_some((req.producer_id.0, req.producer_epoch));
    let cmd = || Command::InitTransactional {
        txn_id: txn_id.to_owned(),
        timeout_ms: i64::from(req.transaction_timeout_ms),
        current,
        now_ms: now_ms(),
    };
    let mut outcome = propose(broker, cmd()).await;
    // An ongoing transaction is aborted first: write its markers, then ask again (the
    // retry with the same `current` gets the bumped epoch), so the client does not
    // have to come back after CONCURRENT_TRANSACTIONS.
    if let Ok(Ok(TxnReply::Markers {
        commit,
        producer_id,
        epoch,
        partitions,
    })) = outcome
    {
        crate::telemetry::record_transaction("fenced");
        let plan = crate::txn::MarkerPlan {
            commit,
            producer_id,
            epoch,
            partitions,
        };
        if broker.txn().finish(txn_id, plan).await.is_ok() {
            outcome = propose(broker, cmd()).await;
        } else {
            outcome = Ok(Err(TxnError::ConcurrentTransactions));
        }
    }
    match outcome {
        Ok(Ok(TxnReply::Ready { producer_id, epoch })) => response
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(epoch),
        Ok(Ok(_)) => response.with_error_code(ResponseError::ConcurrentTransactions.code()),
        Ok(Err(e)) => response.with_error_code(code(e, version, 4)),
        Err(code) => response.with_error_code(code),
    }
}

/// AddPartitionsToTxn: v0–v3 carry one transaction, v4 a batch of them (KIP-890, sent
/// by brokers; `verify_only` checks without adding).
pub async fn add_partitions(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    req: AddPartitionsToTxnRequest,
    version: i16,
) -> AddPartitionsToTxnResponse {
    if version <= 3 {
        let topics = add_one(
            broker,
            authz,
            &req.v3_and_below_transactional_id,
            req.v3_and_below_producer_id.0,
            req.v3_and_below_producer_epoch,
            &req.v3_and_below_topics,
            false,
            version,
        )
        .await;
        return AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(topics);
    }
    if !authz.cluster(Operation::ClusterAction) {
        return AddPartitionsToTxnResponse::default()
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code());
    }
    let mut results = Vec::with_capacity(req.transactions.len());
    for t in &req.transactions {
        let topics = add_one(
            broker,
            authz,
            &t.transactional_id,
            t.producer_id.0,
            t.producer_epoch,
            &t.topics,
            t.verify_only,
            version,
        )
        .await;
        results.push(
            AddPartitionsToTxnResult::default()
                .with_transactional_id(t.transactional_id.clone())
                .with_topic_results(topics),
        );
    }
    AddPartitionsToTxnResponse::default().with_results_by_transaction(results)
}

/// One transaction's partitions: every partition gets the same code, except that
/// refused or unknown ones make the others OPERATION_NOT_ATTEMPTED (Kafka's rule).
#[allow(clippy::too_many_arguments)]
async fn add_one(
    broker: &Broker,
    authz: &Authz<'_>,
    txn_id: &TransactionalId,
    producer_id: i64,
    epoch: i16,
    topics: &[AddPartitionsToTxnTopic],
    verify_only: bool,
    version: i16,
) -> Vec<AddPartitionsToTxnTopicResult> {
    let partitions: Vec<TopicPartition> = topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| TopicPartition::new(t.name.as_str(), *p))
        })
        .collect();
    let txn_allowed = authz.transactional_id(Operation::Write, txn_id.as_str());
    // Per partition: Some(code) when it is refused before any proposal.
    let refused: Vec<Option<i16>> = partitions
        .iter()
        .map(
            |TopicPartition {
                 topic,
                 partition: p,
             }| {
                if !txn_allowed {
                    Some(TXN_ID_REFUSED)
                } else if !authz.topic(Operation::Write, topic) {
                    Some(ResponseError::TopicAuthorizationFailed.code())
                } else if broker.read(|s| s.partition(topic, *p).is_none()) {
                    Some(ResponseError::UnknownTopicOrPartition.code())
                } else {
                    None
                }
            },
        )
        .collect();
    let codes: Vec<i16> = if refused.iter().any(Option::is_some) {
        let not_attempted = ResponseError::OperationNotAttempted.code();
        refused.iter().map(|r| r.unwrap_or(not_attempted)).collect()
    } else if verify_only {
        let added = broker.read(|s| {
            s.transactions()
                .get(txn_id.as_str())
                .filter(|m| m.producer_id == producer_id && m.epoch == epoch)
                .map(|m| m.partitions.clone())
        });
        partitions
            .iter()
            .map(|tp| match &added {
                Some(set) if set.contains(tp) => 0,
                _ => ResponseError::InvalidTxnState.code(),
            })
            .collect()
    } else {
        let result = propose(
            broker,
            Command::AddPartitionsToTxn {
                txn_id: txn_id.as_str().to_owned(),
                producer_id,
                epoch,
                partitions: partitions.clone(),
                now_ms: now_ms(),
            },
        )
        .await;
        let code = match result {
            Ok(Ok(_)) => 0,
            Ok(Err(e)) => code(e, version, 2),
            Err(code) => code,
        };
        vec![code; partitions.len()]
    };
    let mut codes = codes.into_iter();
    topics
        .iter()
        .map(|t| {
            AddPartitionsToTxnTopicResult::default()
                .with_name(t.name.clone())
                .with_results_by_partition(
                    t.partitions
                        .iter()
                        .map(|p| {
                            AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(*p)
                                .with_partition_error_code(codes.next().unwrap_or(0))
                        })
                        .collect(),
                )
        })
        .collect()
}

pub async fn add_offsets(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    req: AddOffsetsToTxnRequest,
    version: i16,
) -> AddOffsetsToTxnResponse {
    let response = AddOffsetsToTxnResponse::default();
    if !authz.transactional_id(Operation::Write, req.transactional_id.as_str()) {
        return response.with_error_code(TXN_ID_REFUSED);
    }
    if !authz.group(Operation::Read, req.group_id.as_str()) {
        return response.with_error_code(ResponseError::GroupAuthorizationFailed.code());
    }
    let result = propose(
        broker,
        Command::AddOffsetsToTxn {
            txn_id: req.transactional_id.as_str().to_owned(),
            producer_id: req.producer_id.0,
            epoch: req.producer_epoch,
            group: req.group_id.as_str().to_owned(),
            now_ms: now_ms(),
        },
    )
    .await;
    response.with_error_code(match result {
        Ok(Ok(_)) => 0,
        Ok(Err(e)) => code(e, version, 2),
        Err(code) => code,
    })
}

/// EndTxn: the decision is durable once proposed; the markers are then written and
/// waited for, so that the producer's next transaction does not meet
/// CONCURRENT_TRANSACTIONS. Should a marker fail, the answer is still success (the
/// coordinator loop finishes the transaction), as Kafka answers once the decision is in
/// its log. A retry while the markers are still being written is CONCURRENT_TRANSACTIONS
/// (the client retries), and success once the transaction is complete, as in Kafka.
pub async fn end(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    req: EndTxnRequest,
    version: i16,
) -> EndTxnResponse {
    let response = EndTxnResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let txn_id = req.transactional_id.as_str();
    if !authz.transactional_id(Operation::Write, txn_id) {
        return response.with_error_code(TXN_ID_REFUSED);
    }
    let result = propose(
        broker,
        Command::EndTxn {
            txn_id: txn_id.to_owned(),
            producer_id: req.producer_id.0,
            epoch: req.producer_epoch,
            commit: req.committed,
            now_ms: now_ms(),
        },
    )
    .await;
    let plan = match result {
        Ok(Ok(TxnReply::Markers {
            commit,
            producer_id,
            epoch,
            partitions,
        })) => {
            crate::telemetry::record_transaction(if commit { "commit" } else { "abort" });
            Some(crate::txn::MarkerPlan {
                commit,
                producer_id,
                epoch,
                partitions,
            })
        }
        // Nothing to mark, or a retry of a transaction already complete.
        Ok(Ok(_)) => None,
        Ok(Err(e)) => return response.with_error_code(code(e, version, 2)),
        Err(code) => return response.with_error_code(code),
    };
    if let Some(plan) = plan {
        if let Err(e) = broker.txn().finish(txn_id, plan).await {
            debug!(txn_id, error = %e, "markers not all written yet; the coordinator loop retries");
        }
    }
    response
}

/// TxnOffsetCommit: sent to the group's coordinator, which checks the member's
/// generation (KIP-447, v3+) as for OffsetCommit; the offsets wait in the transaction
/// and reach the group when it commits.
pub async fn offset_commit(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    req: TxnOffsetCommitRequest,
    version: i16,
) -> TxnOffsetCommitResponse {
    let group = req.group_id.as_str();
    let txn_code = if !authz.transactional_id(Operation::Write, req.transactional_id.as_str()) {
        Some(TXN_ID_REFUSED)
    } else if !authz.group(Operation::Read, group) {
        Some(ResponseError::GroupAuthorizationFailed.code())
    } else if !broker.is_coordinator(group) {
        Some(ResponseError::NotCoordinator.code())
    } else if version >= 3 && (req.generation_id >= 0 || !req.member_id.is_empty()) {
        broker.load_consumer_group(group);
        broker
            .groups()
            .check_offset_commit(
                group,
                req.generation_id,
                req.member_id.as_str(),
                req.group_instance_id.as_ref().map(|s| s.as_str()),
                true,
            )
            .map(|e| e.code())
    } else {
        None
    };
    let readable: Vec<bool> = req
        .topics
        .iter()
        .map(|t| authz.topic(Operation::Read, t.name.as_str()))
        .collect();
    let offsets: Vec<(TopicPartition, PendingOffset)> = req
        .topics
        .iter()
        .zip(&readable)
        .filter(|(_, r)| **r)
        .flat_map(|(t, _)| {
            t.partitions.iter().map(|p| {
                (
                    TopicPartition::new(t.name.as_str(), p.partition_index),
                    PendingOffset {
                        offset: p.committed_offset,
                        leader_epoch: if version >= 2 {
                            p.committed_leader_epoch
                        } else {
                            -1
                        },
                        metadata: p.committed_metadata.as_ref().map(|m| m.as_str().to_owned()),
                    },
                )
            })
        })
        .collect();
    let unknown = broker.read(|s| {
        offsets
            .iter()
            .any(|(tp, _)| s.partition(&tp.topic, tp.partition).is_none())
    });
    let shared = match txn_code {
        Some(code) => code,
        None if unknown => ResponseError::UnknownTopicOrPartition.code(),
        None if offsets.is_empty() => 0,
        None => {
            let result = propose(
                broker,
                Command::TxnOffsetCommit {
                    txn_id: req.transactional_id.as_str().to_owned(),
                    producer_id: req.producer_id.0,
                    epoch: req.producer_epoch,
                    group: group.to_owned(),
                    offsets,
                    now_ms: now_ms(),
                },
            )
            .await;
            match result {
                Ok(Ok(_)) => 0,
                Ok(Err(e)) => code(e, version, 3),
                Err(code) => code,
            }
        }
    };
    let topics = req
        .topics
        .iter()
        .zip(readable)
        .map(|(t, readable)| {
            let code = if readable {
                shared
            } else {
                ResponseError::TopicAuthorizationFailed.code()
            };
            TxnOffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            TxnOffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    TxnOffsetCommitResponse::default().with_topics(topics)
}

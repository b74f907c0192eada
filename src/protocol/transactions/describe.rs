//! DescribeTransactions and ListTransactions (KIP-664): what the transaction state
//! machine holds, readable from any broker.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::list_transactions_response::TransactionState as ListedState;
use kafka_protocol::messages::{
    DescribeTransactionsRequest, DescribeTransactionsResponse, ListTransactionsRequest,
    ListTransactionsResponse, ProducerId, TopicName,
};

use crate::broker::Broker;
use crate::clock::now_ms;
use crate::metadata::state::transactions::{TopicPartition, TxnMeta, TxnState};
use crate::protocol::authz::Authz;
use crate::protocol::str_bytes;
use crate::security::acl::Operation;

const STATES: [TxnState; 6] = [
    TxnState::Empty,
    TxnState::Ongoing,
    TxnState::PrepareCommit,
    TxnState::PrepareAbort,
    TxnState::CompleteCommit,
    TxnState::CompleteAbort,
];

pub fn describe(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    req: DescribeTransactionsRequest,
    _version: i16,
) -> DescribeTransactionsResponse {
    // A fenced broker's copy may be stale: the client finds the coordinator again.
    let fenced = broker.fenced();
    let states = req
        .transactional_ids
        .into_iter()
        .map(|id| {
            let described = TransactionState::default()
                .with_transactional_id(id.clone())
                .with_transaction_state(str_bytes(""))
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
                .with_transaction_start_time_ms(-1);
            if !authz.transactional_id(Operation::Describe, id.as_str()) {
                return described
                    .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code());
            }
            if fenced {
                return described.with_error_code(ResponseError::NotCoordinator.code());
            }
            let meta = broker.read(|s| s.transactions().get(id.as_str()).cloned());
            let Some(meta) = meta else {
                return described.with_error_code(ResponseError::TransactionalIdNotFound.code());
            };
            described
                .with_transaction_state(str_bytes(meta.state.name()))
                .with_transaction_timeout_ms(i32::try_from(meta.timeout_ms).unwrap_or(i32::MAX))
                .with_transaction_start_time_ms(start_time(&meta))
                .with_producer_id(ProducerId(meta.producer_id))
                .with_producer_epoch(meta.epoch)
                .with_topics(topics(&meta))
        })
        .collect();
    DescribeTransactionsResponse::default().with_transaction_states(states)
}

/// When the current transaction started; -1 when none is in progress, as Kafka says.
fn start_time(meta: &TxnMeta) -> i64 {
    if meta.state.is_idle() {
        -1
    } else {
        meta.started_ms
    }
}

fn topics(meta: &TxnMeta) -> Vec<TopicData> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for TopicPartition { topic, partition } in &meta.partitions {
        by_topic.entry(topic).or_default().push(*partition);
    }
    by_topic
        .into_iter()
        .map(|(topic, partitions)| {
            TopicData::default()
                .with_topic(TopicName(str_bytes(topic)))
                .with_partitions(partitions)
        })
        .collect()
}

pub fn list(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    req: ListTransactionsRequest,
    version: i16,
) -> ListTransactionsResponse {
    let mut wanted = Vec::new();
    let mut unknown = Vec::new();
    for f in &req.state_filters {
        match STATES.iter().find(|s| s.name() == f.as_str()) {
            Some(s) => wanted.push(*s),
            None => unknown.push(f.clone()),
        }
    }
    let producers: Vec<i64> = req.producer_id_filters.iter().map(|p| p.0).collect();
    // v1 (KIP-994): only transactions running for longer than this.
    let min_duration = if version >= 1 {
        req.duration_filter
    } else {
        -1
    };
    let now = now_ms();
    let listed: Vec<(String, i64, TxnState)> = broker.read(|s| {
        s.transactions()
            .iter()
            .filter(|(_, m)| wanted.is_empty() || wanted.contains(&m.state))
            .filter(|(_, m)| producers.is_empty() || producers.contains(&m.producer_id))
            .filter(|(_, m)| {
                min_duration < 0
                    || (!m.state.is_idle() && now.saturating_sub(m.started_ms) > min_duration)
            })
            .map(|(id, m)| (id.to_owned(), m.producer_id, m.state))
            .collect()
    });
    let states = listed
        .into_iter()
        .filter(|(id, _, _)| authz.transactional_id(Operation::Describe, id))
        .map(|(id, producer_id, state)| {
            ListedState::default()
                .with_transactional_id(str_bytes(&id).into())
                .with_producer_id(ProducerId(producer_id))
                .with_transaction_state(str_bytes(state.name()))
        })
        .collect();
    ListTransactionsResponse::default()
        .with_unknown_state_filters(unknown)
        .with_transaction_states(states)
}

//! InitProducerId: ids and epochs for idempotent producers, allocated by the metadata log
//! so they are unique across brokers and restarts. With a transactional id the
//! transaction coordinator answers (`txn.rs`).

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use crate::broker::Broker;
use crate::metadata::state::{Command, Response, StateError};

pub async fn init(
    broker: &Arc<Broker>,
    authz: &super::authz::Authz<'_>,
    req: InitProducerIdRequest,
    version: i16,
) -> InitProducerIdResponse {
    let response = InitProducerIdResponse::default();
    if let Some(txn_id) = req.transactional_id.as_ref().filter(|t| !t.is_empty()) {
        return super::transactions::init(broker, authz, txn_id.as_str(), &req, version).await;
    }
    // KIP-679: IDEMPOTENT_WRITE on the cluster, or WRITE on some topic.
    if !authz.cluster(crate::security::acl::Operation::IdempotentWrite)
        && !authz.may_write_some_topic()
    {
        return response.with_error_code(ResponseError::ClusterAuthorizationFailed.code());
    }
    // A fenced broker cannot commit an allocation; the client retries elsewhere at once
    // instead of waiting out a proposal that cannot succeed.
    if broker.fenced() {
        return response.with_error_code(ResponseError::CoordinatorNotAvailable.code());
    }
    let current = (req.producer_id.0 >= 0).then_some((req.producer_id.0, req.producer_epoch));
    match broker.propose(Command::InitProducer { current }).await {
        Ok(Response::Producer(Ok((id, epoch)))) => response
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(epoch),
        Ok(Response::Producer(Err(StateError::InvalidProducerEpoch))) => {
            response.with_error_code(ResponseError::InvalidProducerEpoch.code())
        }
        Ok(Response::Producer(Err(_))) => {
            response.with_error_code(ResponseError::UnknownProducerId.code())
        }
        _ => response.with_error_code(ResponseError::CoordinatorNotAvailable.code()),
    }
}

//! FindCoordinator, ListGroups and DeleteGroups; the membership APIs go straight to the coordinator.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, ListGroupsRequest, ListGroupsResponse,
};

use super::authz::Authz;
use super::str_bytes;
use crate::broker::Broker;
use crate::metadata::state::{Command, Response};
use crate::security::acl::{Operation, ResourceType};

/// FindCoordinator's key types.
const KEY_TYPE_TRANSACTION: i8 = 1;

/// Each group's coordinator is picked among the live brokers by hashing its id, so
/// every broker gives the same answer and a dead broker's groups move by themselves.
const UNAVAILABLE: i16 = ResponseError::CoordinatorNotAvailable.code();

pub fn find_coordinator(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let brokers = broker.live_brokers(authz.listener());
    let (resource_type, refused) = if req.key_type == KEY_TYPE_TRANSACTION {
        (
            ResourceType::TransactionalId,
            ResponseError::TransactionalIdAuthorizationFailed.code(),
        )
    } else {
        (
            ResourceType::Group,
            ResponseError::GroupAuthorizationFailed.code(),
        )
    };
    // A fenced broker names another live one; knowing none, it answers
    // COORDINATOR_NOT_AVAILABLE and the client asks again (elsewhere).
    let locate = |key: &str| {
        if !authz.allowed(Operation::Describe, resource_type, key) {
            return Err(refused);
        }
        let id = broker.coordinator(key).ok_or(UNAVAILABLE)?;
        let (host, port) = brokers
            .iter()
            .find(|b| b.id == id)
            .map(|b| (b.host.clone(), b.port))
            .unwrap_or_else(|| {
                let (host, port) = broker.advertised();
                (host.to_owned(), port)
            });
        Ok((BrokerId(id), str_bytes(&host), port))
    };
    if version >= 4 {
        let coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| match locate(key.as_str()) {
                Ok((node, host, port)) => Coordinator::default()
                    .with_key(key)
                    .with_node_id(node)
                    .with_host(host)
                    .with_port(port),
                Err(code) => Coordinator::default()
                    .with_key(key)
                    .with_node_id(BrokerId(-1))
                    .with_port(-1)
                    .with_error_code(code),
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    match locate(req.key.as_str()) {
        Ok((node, host, port)) => FindCoordinatorResponse::default()
            .with_node_id(node)
            .with_host(host)
            .with_port(port),
        Err(code) => FindCoordinatorResponse::default()
            .with_node_id(BrokerId(-1))
            .with_port(-1)
            .with_error_code(code),
    }
}

/// The groups this broker coordinates; without DESCRIBE on the cluster, only those the
/// principal may describe (Kafka's rule).
pub fn list_groups(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    req: ListGroupsRequest,
    version: i16,
) -> ListGroupsResponse {
    let with_offsets: Vec<String> = broker.read(|s| s.group_ids().cloned().collect());
    let all = authz.cluster(Operation::Describe);
    broker
        .groups()
        .list_groups(req, version, &with_offsets, |group| {
            broker.is_coordinator(group) && (all || authz.group(Operation::Describe, group))
        })
}

/// DeleteGroups: NON_EMPTY_GROUP while members are active; otherwise the group and its
/// committed offsets go, and GROUP_ID_NOT_FOUND when neither existed.
pub async fn delete_groups(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    req: DeleteGroupsRequest,
    _version: i16,
) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(req.groups_names.len());
    for group in req.groups_names {
        let id = group.as_str().to_owned();
        let error = if id.is_empty() {
            Some(ResponseError::InvalidGroupId)
        } else if !authz.group(Operation::Delete, &id) {
            Some(ResponseError::GroupAuthorizationFailed)
        } else {
            match broker.groups().delete_group(&id) {
                Err(e) => Some(e),
                Ok(known) => match broker.propose(Command::DeleteGroup { group: id }).await {
                    Ok(Response::Group(Ok(()))) => None,
                    Ok(Response::Group(Err(_))) if known => None,
                    Ok(Response::Group(Err(_))) => Some(ResponseError::GroupIdNotFound),
                    Ok(_) => Some(ResponseError::UnknownServerError),
                    Err(_) => Some(ResponseError::CoordinatorNotAvailable),
                },
            }
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(group)
                .with_error_code(error.map_or(0, |e| e.code())),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}

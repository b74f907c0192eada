//! FindCoordinator, ListGroups and DeleteGroups; the membership APIs go straight to the coordinator.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, ListGroupsRequest, ListGroupsResponse,
};

use super::str_bytes;
use crate::broker::Broker;
use crate::metadata::state::{Command, Response};

/// Each group's coordinator is picked among the live brokers by hashing its id, so
/// every broker gives the same answer and a dead broker's groups move by themselves.
pub fn find_coordinator(
    broker: &Arc<Broker>,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let brokers = broker.live_brokers();
    // A fenced broker names another live one; knowing none, it answers
    // COORDINATOR_NOT_AVAILABLE and the client asks again (elsewhere).
    let locate = |key: &str| {
        let id = broker.coordinator(key)?;
        let (host, port) = brokers
            .iter()
            .find(|b| b.0 == id)
            .map(|b| (b.1.clone(), b.2))
            .unwrap_or_else(|| {
                (
                    broker.config.advertise_host.clone(),
                    broker.config.advertise_port,
                )
            });
        Some((BrokerId(id), str_bytes(&host), port))
    };
    let unavailable = ResponseError::CoordinatorNotAvailable.code();
    if version >= 4 {
        let coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| match locate(key.as_str()) {
                Some((node, host, port)) => Coordinator::default()
                    .with_key(key)
                    .with_node_id(node)
                    .with_host(host)
                    .with_port(port),
                None => Coordinator::default()
                    .with_key(key)
                    .with_node_id(BrokerId(-1))
                    .with_port(-1)
                    .with_error_code(unavailable),
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    match locate(req.key.as_str()) {
        Some((node, host, port)) => FindCoordinatorResponse::default()
            .with_node_id(node)
            .with_host(host)
            .with_port(port),
        None => FindCoordinatorResponse::default()
            .with_node_id(BrokerId(-1))
            .with_port(-1)
            .with_error_code(unavailable),
    }
}

pub fn list_groups(
    broker: &Arc<Broker>,
    req: ListGroupsRequest,
    version: i16,
) -> ListGroupsResponse {
    let with_offsets: Vec<String> = broker.metadata.read(|s| s.group_ids().cloned().collect());
    broker
        .groups
        .list_groups(req, version, &with_offsets, |group| {
            broker.is_coordinator(group)
        })
}

/// DeleteGroups: NON_EMPTY_GROUP while members are active; otherwise the group and its
/// committed offsets go, and GROUP_ID_NOT_FOUND when neither existed.
pub async fn delete_groups(
    broker: &Arc<Broker>,
    req: DeleteGroupsRequest,
    _version: i16,
) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(req.groups_names.len());
    for group in req.groups_names {
        let id = group.as_str().to_owned();
        let error = if id.is_empty() {
            Some(ResponseError::InvalidGroupId)
        } else {
            match broker.groups.delete_group(&id) {
                Err(e) => Some(e),
                Ok(known) => match broker
                    .metadata
                    .propose(Command::DeleteGroup { group: id })
                    .await
                {
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

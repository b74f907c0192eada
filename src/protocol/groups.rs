//! FindCoordinator and ListGroups; the membership APIs go straight to the coordinator.

use std::sync::Arc;

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{
    BrokerId, FindCoordinatorRequest, FindCoordinatorResponse, ListGroupsRequest,
    ListGroupsResponse,
};

use super::str_bytes;
use crate::broker::Broker;

/// A single broker coordinates every group (and, later, every transaction).
pub fn find_coordinator(
    broker: &Arc<Broker>,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let node = BrokerId(broker.node_id());
    let host = str_bytes(&broker.config.advertise_host);
    let port = broker.config.advertise_port;
    if version >= 4 {
        let coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| {
                Coordinator::default()
                    .with_key(key)
                    .with_node_id(node)
                    .with_host(host.clone())
                    .with_port(port)
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    FindCoordinatorResponse::default()
        .with_node_id(node)
        .with_host(host)
        .with_port(port)
}

pub fn list_groups(
    broker: &Arc<Broker>,
    req: ListGroupsRequest,
    version: i16,
) -> ListGroupsResponse {
    let with_offsets: Vec<String> = broker.metadata.read(|s| s.group_ids().cloned().collect());
    broker.groups.list_groups(req, version, &with_offsets)
}

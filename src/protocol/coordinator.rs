//! Requests for a group this broker does not coordinate get NOT_COORDINATOR, which sends
//! clients back to FindCoordinator (Kafka's behaviour when a coordinator moves).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{
    DescribeGroupsResponse, HeartbeatResponse, JoinGroupResponse, LeaveGroupResponse,
    OffsetCommitResponse, OffsetFetchResponse, RequestKind, ResponseKind, SyncGroupResponse,
};

use crate::broker::Broker;

const NOT_COORDINATOR: i16 = ResponseError::NotCoordinator.code();

/// The NOT_COORDINATOR answer when `request` names a group another broker coordinates.
pub fn redirect(broker: &Broker, request: &RequestKind, version: i16) -> Option<ResponseKind> {
    let mine = |group: &str| broker.is_coordinator(group);
    Some(match request {
        RequestKind::JoinGroup(r) if !mine(&r.group_id) => {
            ResponseKind::JoinGroup(JoinGroupResponse::default().with_error_code(NOT_COORDINATOR))
        }
        RequestKind::SyncGroup(r) if !mine(&r.group_id) => {
            ResponseKind::SyncGroup(SyncGroupResponse::default().with_error_code(NOT_COORDINATOR))
        }
        RequestKind::Heartbeat(r) if !mine(&r.group_id) => {
            ResponseKind::Heartbeat(HeartbeatResponse::default().with_error_code(NOT_COORDINATOR))
        }
        RequestKind::LeaveGroup(r) if !mine(&r.group_id) => {
            ResponseKind::LeaveGroup(LeaveGroupResponse::default().with_error_code(NOT_COORDINATOR))
        }
        RequestKind::OffsetCommit(r) if !mine(&r.group_id) => {
            let topics = r
                .topics
                .iter()
                .map(|t| {
                    OffsetCommitResponseTopic::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    OffsetCommitResponsePartition::default()
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(NOT_COORDINATOR)
                                })
                                .collect(),
                        )
                })
                .collect();
            ResponseKind::OffsetCommit(OffsetCommitResponse::default().with_topics(topics))
        }
        RequestKind::OffsetFetch(r) if !mine(&r.group_id) => {
            // v2+ carries a top-level error; v1 only per partition.
            let topics = r
                .topics
                .iter()
                .flatten()
                .map(|t| {
                    OffsetFetchResponseTopic::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            t.partition_indexes
                                .iter()
                                .map(|p| {
                                    OffsetFetchResponsePartition::default()
                                        .with_partition_index(*p)
                                        .with_committed_offset(-1)
                                        .with_error_code(NOT_COORDINATOR)
                                })
                                .collect(),
                        )
                })
                .collect();
            let response = OffsetFetchResponse::default().with_topics(topics);
            ResponseKind::OffsetFetch(if version >= 2 {
                response.with_error_code(NOT_COORDINATOR)
            } else {
                response
            })
        }
        RequestKind::DescribeGroups(r) if r.groups.iter().any(|g| !mine(g)) => {
            // Clients describe one coordinator's groups per request; answer each group.
            let groups = r
                .groups
                .iter()
                .map(|g| {
                    DescribedGroup::default()
                        .with_group_id(g.clone())
                        .with_error_code(if mine(g) {
                            ResponseError::CoordinatorNotAvailable.code()
                        } else {
                            NOT_COORDINATOR
                        })
                })
                .collect();
            ResponseKind::DescribeGroups(DescribeGroupsResponse::default().with_groups(groups))
        }
        _ => return None,
    })
}

//! Requests for a group this broker does not coordinate get NOT_COORDINATOR, which sends
//! clients back to FindCoordinator (Kafka's behaviour when a coordinator moves). Before
//! that, as in Kafka, a group the principal may not use gets GROUP_AUTHORIZATION_FAILED.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{
    ConsumerGroupHeartbeatResponse, DescribeGroupsResponse, HeartbeatResponse, JoinGroupResponse,
    LeaveGroupResponse, OffsetCommitResponse, OffsetFetchResponse, RequestKind, ResponseKind,
    SyncGroupResponse,
};

use super::authz::Authz;
use crate::broker::Broker;
use crate::security::acl::Operation;

const NOT_COORDINATOR: i16 = ResponseError::NotCoordinator.code();

/// GROUP_AUTHORIZATION_FAILED for a group request the principal may not make: READ for
/// membership and commits, DESCRIBE for OffsetFetch (Kafka's rules). DescribeGroups
/// checks each group in its handler.
pub fn refuse_unauthorized(
    authz: &Authz<'_>,
    request: &RequestKind,
    version: i16,
) -> Option<ResponseKind> {
    let op = match request {
        RequestKind::OffsetFetch(_) => Operation::Describe,
        _ => Operation::Read,
    };
    group_error(
        request,
        version,
        ResponseError::GroupAuthorizationFailed.code(),
        |group| !authz.group(op, group),
    )
}

/// The NOT_COORDINATOR answer when `request` names a group another broker coordinates.
pub fn redirect(broker: &Broker, request: &RequestKind, version: i16) -> Option<ResponseKind> {
    let mine = |group: &str| broker.is_coordinator(group);
    if let RequestKind::DescribeGroups(r) = request {
        if r.groups.iter().all(|g| mine(g)) {
            return None;
        }
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
        return Some(ResponseKind::DescribeGroups(
            DescribeGroupsResponse::default().with_groups(groups),
        ));
    }
    group_error(request, version, NOT_COORDINATOR, |group| !mine(group))
}

/// `code` for a request about one group when `refused(group)`, in the request's own
/// response shape.
fn group_error(
    request: &RequestKind,
    version: i16,
    code: i16,
    refused: impl Fn(&str) -> bool,
) -> Option<ResponseKind> {
    let mine = |group: &str| !refused(group);
    Some(match request {
        RequestKind::JoinGroup(r) if !mine(&r.group_id) => {
            ResponseKind::JoinGroup(JoinGroupResponse::default().with_error_code(code))
        }
        RequestKind::SyncGroup(r) if !mine(&r.group_id) => {
            ResponseKind::SyncGroup(SyncGroupResponse::default().with_error_code(code))
        }
        RequestKind::Heartbeat(r) if !mine(&r.group_id) => {
            ResponseKind::Heartbeat(HeartbeatResponse::default().with_error_code(code))
        }
        RequestKind::ConsumerGroupHeartbeat(r) if !mine(&r.group_id) => {
            ResponseKind::ConsumerGroupHeartbeat(
                ConsumerGroupHeartbeatResponse::default()
                    .with_error_code(code)
                    .with_member_epoch(-1),
            )
        }
        RequestKind::LeaveGroup(r) if !mine(&r.group_id) => {
            ResponseKind::LeaveGroup(LeaveGroupResponse::default().with_error_code(code))
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
                                        .with_error_code(code)
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
                                        .with_error_code(code)
                                })
                                .collect(),
                        )
                })
                .collect();
            let response = OffsetFetchResponse::default().with_topics(topics);
            ResponseKind::OffsetFetch(if version >= 2 {
                response.with_error_code(code)
            } else {
                response
            })
        }
        _ => return None,
    })
}

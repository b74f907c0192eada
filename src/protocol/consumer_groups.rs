//! ConsumerGroupHeartbeat and ConsumerGroupDescribe: the consumer group protocol of
//! KIP-848 (`group.protocol=consumer`), whose assignments the broker computes
//! (`group::consumer`). Group authorization and NOT_COORDINATOR are the group gate's.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::consumer_group_describe_response::{
    self as describe, DescribedGroup,
};
use kafka_protocol::messages::consumer_group_heartbeat_response::{
    Assignment as HeartbeatAssignment, TopicPartitions,
};
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatRequest,
    ConsumerGroupHeartbeatResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::authz::Authz;
use super::str_bytes;
use crate::broker::Broker;
use crate::group::consumer::{
    assign, Assignment, Caller, Heartbeat, HeartbeatError, Overrides, TopicId, JOIN_EPOCH,
};
use crate::security::acl::{Operation, ResourceType};

/// The cluster's topics as the state machine takes them: name → (id, partitions).
fn topics(broker: &Broker) -> BTreeMap<String, (TopicId, i32)> {
    broker.read(|s| {
        s.topics()
            .iter()
            .map(|(name, t)| {
                let partitions = i32::try_from(t.partitions.len()).unwrap_or(i32::MAX);
                (name.clone(), (t.id, partitions))
            })
            .collect()
    })
}

pub async fn heartbeat(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    client_id: &str,
    req: ConsumerGroupHeartbeatRequest,
    version: i16,
) -> ConsumerGroupHeartbeatResponse {
    let fail = |code: ResponseError, message: String| {
        ConsumerGroupHeartbeatResponse::default()
            .with_error_code(code.code())
            .with_error_message(Some(str_bytes(&message)))
            .with_member_epoch(-1)
    };
    let group = req.group_id.as_str();
    if group.is_empty() {
        return fail(
            ResponseError::InvalidRequest,
            "GroupId can't be empty.".into(),
        );
    }
    if broker.groups().is_active_classic(group) {
        return fail(
            ResponseError::GroupIdNotFound,
            format!("Group {group} is not a consumer group."),
        );
    }
    // As Kafka: every topic named in a subscription must be one the principal may
    // describe; a pattern matches only such topics.
    if let Some(names) = &req.subscribed_topic_names {
        let names: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
        if authz
            .allowed_each(Operation::Describe, ResourceType::Topic, &names)
            .contains(&false)
        {
            return fail(
                ResponseError::TopicAuthorizationFailed,
                "Not authorized to describe every subscribed topic.".into(),
            );
        }
    }
    let mut member_id = req.member_id.to_string();
    // v0: the coordinator names a joining member; v1 (KIP-1082): the client does.
    if version == 0 && req.member_epoch == JOIN_EPOCH && member_id.is_empty() {
        member_id = uuid::Uuid::new_v4().to_string();
    }
    let owned: Option<Assignment> = req.topic_partitions.as_ref().map(|tps| {
        let mut owned = Assignment::new();
        for tp in tps {
            owned
                .entry(*tp.topic_id.as_bytes())
                .or_default()
                .extend(tp.partitions.iter().copied());
        }
        owned
    });
    let text = |s: &Option<StrBytes>| s.as_ref().map(|s| s.to_string()).filter(|s| !s.is_empty());
    let hb = Heartbeat {
        member_id,
        member_epoch: req.member_epoch,
        instance_id: text(&req.instance_id),
        rack_id: text(&req.rack_id),
        rebalance_timeout_ms: (req.rebalance_timeout_ms >= 0)
            .then_some(i64::from(req.rebalance_timeout_ms)),
        subscribed_topics: req
            .subscribed_topic_names
            .as_ref()
            .map(|names| names.iter().map(|n| n.as_str().to_owned()).collect()),
        server_assignor: text(&req.server_assignor),
        owned,
    };
    let regex = if version >= 1 {
        req.subscribed_topic_regex.as_ref().map(|r| r.as_str())
    } else {
        None
    };
    let topics = topics(broker);
    let groups = broker.groups().consumer();
    // From the change until its write is committed (so a group's writes land in order);
    // the answer waits for the write, as Kafka's does.
    let _writing = groups.write_lock(group).await;
    broker.load_consumer_group(group);
    let (result, write) = {
        let may_describe = |topic: &str| authz.topic(Operation::Describe, topic);
        let caller = Caller {
            client_id,
            host: authz.host(),
            may_describe: &may_describe,
        };
        let overrides = broker.read(|s| s.group_configs(group).map(Overrides::from_configs));
        groups.heartbeat(
            group,
            hb,
            regex,
            &topics,
            &caller,
            overrides.unwrap_or_default(),
        )
    };
    if let Some(write) = write {
        if let Err(code) = broker.write_consumer_group(group, write).await {
            return fail(code, "the group's state could not be written".into());
        }
    }
    match result {
        Ok(reply) => ConsumerGroupHeartbeatResponse::default()
            .with_member_id(Some(str_bytes(&reply.member_id)))
            .with_member_epoch(reply.member_epoch)
            .with_heartbeat_interval_ms(reply.heartbeat_interval_ms)
            .with_assignment(reply.assignment.map(|a| {
                HeartbeatAssignment::default().with_topic_partitions(
                    a.into_iter()
                        .map(|(id, parts)| {
                            TopicPartitions::default()
                                .with_topic_id(uuid::Uuid::from_bytes(id))
                                .with_partitions(parts.into_iter().collect())
                        })
                        .collect(),
                )
            })),
        Err(e) => {
            let message = match &e {
                HeartbeatError::InvalidRequest(m) => (*m).to_owned(),
                HeartbeatError::UnknownMemberId => {
                    format!("Member {} is not a member of group {group}.", req.member_id)
                }
                other => other.to_string(),
            };
            fail(e.code(), message)
        }
    }
}

/// Groups of the consumer protocol as Kafka describes them. A classic group (or one
/// known only by its offsets) is GROUP_ID_NOT_FOUND "not a consumer group", which sends
/// admin clients to DescribeGroups, as with Kafka.
pub fn describe(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    req: ConsumerGroupDescribeRequest,
    _version: i16,
) -> ConsumerGroupDescribeResponse {
    let topics = topics(broker);
    let names: BTreeMap<TopicId, &str> = topics
        .iter()
        .map(|(name, (id, _))| (*id, name.as_str()))
        .collect();
    let to_wire = |a: &Assignment| {
        describe::Assignment::default().with_topic_partitions(
            a.iter()
                .map(|(id, parts)| {
                    describe::TopicPartitions::default()
                        .with_topic_id(uuid::Uuid::from_bytes(*id))
                        .with_topic_name(TopicName(str_bytes(
                            names.get(id).copied().unwrap_or_default(),
                        )))
                        .with_partitions(parts.iter().copied().collect())
                })
                .collect(),
        )
    };
    let groups = req
        .group_ids
        .iter()
        .map(|id| {
            let group_id = id.as_str();
            let error = |code: ResponseError, message: String| {
                DescribedGroup::default()
                    .with_group_id(id.clone())
                    .with_error_code(code.code())
                    .with_error_message(Some(str_bytes(&message)))
                    .with_authorized_operations(crate::security::acl::NOT_REQUESTED)
            };
            if !authz.group(Operation::Describe, group_id) {
                return error(
                    ResponseError::GroupAuthorizationFailed,
                    format!("Not authorized to describe group {group_id}."),
                );
            }
            if !broker.is_coordinator(group_id) {
                return error(ResponseError::NotCoordinator, String::new());
            }
            broker.load_consumer_group(group_id);
            let Some(d) = broker.groups().consumer().describe(group_id) else {
                let classic = broker.groups().is_active_classic(group_id)
                    || broker.read(|s| s.group_offsets(group_id).is_some());
                let message = if classic {
                    format!("Group {group_id} is not a consumer group.")
                } else {
                    format!("Group {group_id} not found.")
                };
                return error(ResponseError::GroupIdNotFound, message);
            };
            let assignor = d
                .group
                .members
                .values()
                .find_map(|m| m.server_assignor.clone())
                .or_else(|| {
                    let settings = broker.groups().consumer().settings();
                    settings.assignors.first().cloned()
                })
                .unwrap_or_else(|| assign::ASSIGNORS[0].to_owned());
            let members = d
                .group
                .members
                .values()
                .map(|m| {
                    let target = d
                        .group
                        .target
                        .get(&m.member_id)
                        .cloned()
                        .unwrap_or_default();
                    let (client_id, client_host) =
                        d.clients.get(&m.member_id).cloned().unwrap_or_default();
                    describe::Member::default()
                        .with_member_id(str_bytes(&m.member_id))
                        .with_instance_id(m.instance_id.as_deref().map(str_bytes))
                        .with_rack_id(m.rack_id.as_deref().map(str_bytes))
                        .with_member_epoch(m.member_epoch)
                        .with_client_id(str_bytes(&client_id))
                        .with_client_host(str_bytes(&client_host))
                        .with_subscribed_topic_names(
                            m.subscribed_topics
                                .iter()
                                .map(|t| TopicName(str_bytes(t)))
                                .collect(),
                        )
                        .with_subscribed_topic_regex(
                            d.patterns.get(&m.member_id).map(|p| str_bytes(p)),
                        )
                        .with_assignment(to_wire(&m.assigned))
                        .with_target_assignment(to_wire(&target))
                        // 1: a member of the consumer protocol (0 would be classic).
                        .with_member_type(1)
                })
                .collect();
            let ops = authz.reported(
                req.include_authorized_operations,
                ResourceType::Group,
                group_id,
            );
            DescribedGroup::default()
                .with_group_id(id.clone())
                .with_group_state(str_bytes(d.group.state().as_str()))
                .with_group_epoch(d.group.group_epoch)
                .with_assignment_epoch(d.group.assignment_epoch)
                .with_assignor_name(str_bytes(&assignor))
                .with_members(members)
                .with_authorized_operations(ops)
        })
        .collect();
    ConsumerGroupDescribeResponse::default().with_groups(groups)
}

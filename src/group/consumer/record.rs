//! A group as it goes through the metadata log: what a coordinator taking the group over
//! needs (epochs, subscriptions and patterns, assignments, the target), and nothing that
//! moves with every heartbeat (heartbeat times), so that a heartbeat which changes nothing
//! writes nothing. The state machine stores the bytes without reading them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{Assignment, ConsumerGroup, Member, MemberState, TopicId};

/// The first byte of a record; a later layout takes the next number.
const VERSION: u8 = 1;

#[derive(Serialize, Deserialize)]
struct Record {
    group_epoch: i32,
    assignment_epoch: i32,
    members: Vec<MemberRecord>,
    target: BTreeMap<String, Assignment>,
    subscribed: BTreeMap<String, (TopicId, i32)>,
    /// Members subscribed by pattern: member id → pattern.
    patterns: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct MemberRecord {
    member_id: String,
    instance_id: Option<String>,
    rack_id: Option<String>,
    subscribed_topics: BTreeSet<String>,
    server_assignor: Option<String>,
    rebalance_timeout_ms: i64,
    member_epoch: i32,
    previous_member_epoch: i32,
    /// 0 stable, 1 unrevoked, 2 unreleased.
    state: u8,
    assigned: Assignment,
    pending_revocation: Assignment,
    revoking: bool,
}

pub(super) fn encode(group: &ConsumerGroup, patterns: &BTreeMap<String, String>) -> Vec<u8> {
    let record = Record {
        group_epoch: group.group_epoch,
        assignment_epoch: group.assignment_epoch,
        members: group
            .members
            .values()
            .map(|m| MemberRecord {
                member_id: m.member_id.clone(),
                instance_id: m.instance_id.clone(),
                rack_id: m.rack_id.clone(),
                subscribed_topics: m.subscribed_topics.clone(),
                server_assignor: m.server_assignor.clone(),
                rebalance_timeout_ms: m.rebalance_timeout_ms,
                member_epoch: m.member_epoch,
                previous_member_epoch: m.previous_member_epoch,
                state: match m.state {
                    MemberState::Stable => 0,
                    MemberState::UnrevokedPartitions => 1,
                    MemberState::UnreleasedPartitions => 2,
                },
                assigned: m.assigned.clone(),
                pending_revocation: m.pending_revocation.clone(),
                revoking: m.revoking_since_ms.is_some(),
            })
            .collect(),
        target: group.target.clone(),
        subscribed: group.subscribed.clone(),
        patterns: patterns.clone(),
    };
    let mut out = vec![VERSION];
    // Encoding plain data into a Vec cannot fail; an empty record would only be refused
    // by `decode`, never misread.
    out.extend(postcard::to_allocvec(&record).unwrap_or_default());
    out
}

/// The group a record holds, with every member's session starting at `now_ms` (the new
/// coordinator gives each member a full session to reach it); None for bytes this build
/// cannot read.
pub(super) fn decode(
    bytes: &[u8],
    now_ms: i64,
) -> Option<(ConsumerGroup, BTreeMap<String, String>)> {
    let (&version, rest) = bytes.split_first()?;
    if version != VERSION {
        return None;
    }
    let record: Record = postcard::from_bytes(rest).ok()?;
    let mut group = ConsumerGroup {
        group_epoch: record.group_epoch,
        assignment_epoch: record.assignment_epoch,
        target: record.target,
        subscribed: record.subscribed,
        ..ConsumerGroup::default()
    };
    for m in record.members {
        let state = match m.state {
            0 => MemberState::Stable,
            1 => MemberState::UnrevokedPartitions,
            _ => MemberState::UnreleasedPartitions,
        };
        for (topic, parts) in m.assigned.iter().chain(m.pending_revocation.iter()) {
            for p in parts {
                group.owners.insert((*topic, *p), m.member_id.clone());
            }
        }
        group.members.insert(
            m.member_id.clone(),
            Member {
                member_id: m.member_id,
                instance_id: m.instance_id,
                rack_id: m.rack_id,
                subscribed_topics: m.subscribed_topics,
                server_assignor: m.server_assignor,
                rebalance_timeout_ms: m.rebalance_timeout_ms,
                member_epoch: m.member_epoch,
                previous_member_epoch: m.previous_member_epoch,
                state,
                assigned: m.assigned,
                pending_revocation: m.pending_revocation,
                last_heartbeat_ms: now_ms,
                revoking_since_ms: m.revoking.then_some(now_ms),
            },
        );
    }
    Some((group, record.patterns))
}

//! DescribeGroups / ListGroups views of the group map.

use std::collections::HashMap;

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsResponse};

use super::responses::s;
use super::state::{Group, GroupState};

/// Kafka's GroupMetadata.summary: metadata/assignments are only shown when Stable.
/// `has_offsets`: the group has committed offsets (it may have no members here).
pub(super) fn describe(
    group: Option<&Group>,
    group_id: &GroupId,
    version: i16,
    has_offsets: bool,
) -> DescribedGroup {
    let out = DescribedGroup::default().with_group_id(group_id.clone());
    let Some(g) = group else {
        // A group known only by its committed offsets is Empty, as Kafka loads it from
        // its offsets (and as ListGroups lists it); an unknown group is Dead, with no
        // error, as Kafka's classic coordinator reports it.
        if has_offsets {
            return out
                .with_group_state(s(GroupState::Empty.as_str()))
                .with_protocol_type(s("consumer"));
        }
        return out.with_group_state(s(GroupState::Dead.as_str()));
    };
    let stable = g.state == GroupState::Stable;
    let protocol = if stable {
        g.protocol_name.clone().unwrap_or_default()
    } else {
        String::new()
    };
    let members = g
        .members
        .iter()
        .map(|m| {
            let mut d = DescribedGroupMember::default()
                .with_member_id(s(&m.id))
                .with_client_id(s(&m.client_id))
                .with_client_host(s(&m.client_host));
            if version >= 4 {
                d = d.with_group_instance_id(m.instance_id.as_deref().map(s));
            }
            if stable {
                d = d
                    .with_member_metadata(m.metadata_for(&protocol))
                    .with_member_assignment(m.assignment.clone());
            }
            d
        })
        .collect();
    out.with_group_state(s(g.state.as_str()))
        .with_protocol_type(s(g.protocol_type.as_deref().unwrap_or_default()))
        .with_protocol_data(s(&protocol))
        .with_members(members)
}

/// `consumer_groups`: the consumer-protocol groups here, with their states.
pub(super) fn list(
    groups: &HashMap<String, Group>,
    consumer_groups: &[(String, &'static str)],
    states_filter: &[String],
    types_filter: &[String],
    groups_with_offsets: &[String],
    mine: impl Fn(&str) -> bool,
    version: i16,
) -> ListGroupsResponse {
    // (id, protocol type, state, group type)
    let mut rows: Vec<(String, String, &'static str, &'static str)> = groups
        .values()
        // A group whose coordinator moved away may linger here until it expires.
        .filter(|g| mine(&g.id))
        .map(|g| {
            let ptype = g.protocol_type.clone().unwrap_or_else(|| "consumer".into());
            (g.id.clone(), ptype, g.state.as_str(), "classic")
        })
        .collect();
    for (id, state) in consumer_groups {
        if mine(id) {
            rows.push((id.clone(), "consumer".into(), state, "consumer"));
        }
    }
    for id in groups_with_offsets {
        let live = groups.contains_key(id) || consumer_groups.iter().any(|(c, _)| c == id);
        if !live && mine(id) {
            rows.push((
                id.clone(),
                "consumer".into(),
                GroupState::Empty.as_str(),
                "classic",
            ));
        }
    }
    rows.sort();
    rows.dedup_by(|a, b| a.0 == b.0);
    let listed = rows
        .into_iter()
        .filter(|(_, _, state, _)| {
            states_filter.is_empty() || states_filter.iter().any(|f| f.eq_ignore_ascii_case(state))
        })
        .filter(|(_, _, _, gtype)| {
            types_filter.is_empty() || types_filter.iter().any(|t| t.eq_ignore_ascii_case(gtype))
        })
        .map(|(id, ptype, state, gtype)| {
            let mut g = ListedGroup::default()
                .with_group_id(GroupId(s(&id)))
                .with_protocol_type(s(&ptype));
            if version >= 4 {
                g = g.with_group_state(s(state));
            }
            if version >= 5 {
                g = g.with_group_type(s(gtype));
            }
            g
        })
        .collect();
    ListGroupsResponse::default().with_groups(listed)
}

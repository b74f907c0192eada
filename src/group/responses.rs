//! Version-aware response builders. kafka-protocol refuses to encode a field the
//! negotiated version lacks, so every optional field is gated on `version` here.

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{HeartbeatResponse, JoinGroupResponse, SyncGroupResponse};
use kafka_protocol::protocol::StrBytes;

pub(super) fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// Pre-v7 clients treat the protocol name as non-nullable, so send "" there.
fn protocol_name_field(version: i16, name: Option<&str>) -> Option<StrBytes> {
    match name {
        Some(n) => Some(s(n)),
        None if version < 7 => Some(StrBytes::default()),
        None => None,
    }
}

pub(super) fn join_error(version: i16, err: ResponseError, member_id: &str) -> JoinGroupResponse {
    JoinGroupResponse::default()
        .with_error_code(err.code())
        .with_generation_id(-1)
        .with_protocol_name(protocol_name_field(version, None))
        .with_member_id(s(member_id))
}

pub(super) struct JoinOk<'a> {
    pub generation: i32,
    pub protocol_type: Option<&'a str>,
    pub protocol_name: Option<&'a str>,
    pub leader: &'a str,
    pub member_id: &'a str,
    /// (member_id, group_instance_id, metadata); only the leader gets these.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

pub(super) fn join_ok(version: i16, ok: JoinOk<'_>) -> JoinGroupResponse {
    let members = ok
        .members
        .into_iter()
        .map(|(id, instance, metadata)| {
            let m = JoinGroupResponseMember::default()
                .with_member_id(s(&id))
                .with_metadata(metadata);
            if version >= 5 {
                m.with_group_instance_id(instance.as_deref().map(s))
            } else {
                m
            }
        })
        .collect();
    let resp = JoinGroupResponse::default()
        .with_generation_id(ok.generation)
        .with_protocol_name(protocol_name_field(version, ok.protocol_name))
        .with_leader(s(ok.leader))
        .with_member_id(s(ok.member_id))
        .with_members(members);
    if version >= 7 {
        resp.with_protocol_type(ok.protocol_type.map(s))
    } else {
        resp
    }
}

pub(super) fn sync_error(err: ResponseError) -> SyncGroupResponse {
    SyncGroupResponse::default().with_error_code(err.code())
}

pub(super) fn sync_ok(
    version: i16,
    protocol_type: Option<&str>,
    protocol_name: Option<&str>,
    assignment: Bytes,
) -> SyncGroupResponse {
    let resp = SyncGroupResponse::default().with_assignment(assignment);
    if version >= 5 {
        resp.with_protocol_type(protocol_type.map(s))
            .with_protocol_name(protocol_name.map(s))
    } else {
        resp
    }
}

pub(super) fn heartbeat(err: Option<ResponseError>) -> HeartbeatResponse {
    HeartbeatResponse::default().with_error_code(err.map_or(0, |e| e.code()))
}

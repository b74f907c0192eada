//! End-to-end tests of the coordinator through its public API. They run on real
//! time with short timeouts (tokio's test-util/pause is not a dependency here).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    DescribeGroupsRequest, GroupId, HeartbeatRequest, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, ListGroupsRequest, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use tokio::time::{sleep, Duration};

use super::{GroupCoordinator, GroupOptions};

const G: &str = "g1";

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn gid(v: &str) -> GroupId {
    GroupId(s(v))
}

fn coord() -> Arc<GroupCoordinator> {
    GroupCoordinator::new(GroupOptions {
        initial_rebalance_delay: Duration::from_millis(20),
        min_session_timeout: Duration::from_millis(10),
        ..GroupOptions::default()
    })
}

/// Session timeout for most tests: long enough never to lapse by accident.
const LONG: i32 = 10_000;

fn join_req(member_id: &str, meta: &'static [u8]) -> JoinGroupRequest {
    join_req_s(member_id, meta, LONG)
}

fn join_req_s(member_id: &str, meta: &'static [u8], session_ms: i32) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(gid(G))
        .with_session_timeout_ms(session_ms)
        .with_rebalance_timeout_ms(30_000)
        .with_member_id(s(member_id))
        .with_protocol_type(s("consumer"))
        .with_protocols(vec![JoinGroupRequestProtocol::default()
            .with_name(s("range"))
            .with_metadata(Bytes::from_static(meta))])
}

fn encodes<T: Encodable>(msg: &T, version: i16) {
    let mut buf = BytesMut::new();
    if let Err(e) = msg.encode(&mut buf, version) {
        panic!("encode v{version} failed: {e}");
    }
}

/// Full v5 join: MEMBER_ID_REQUIRED round trip, then wait for the generation.
async fn join(c: &Arc<GroupCoordinator>, client: &str, meta: &'static [u8]) -> JoinGroupResponse {
    join_s(c, client, meta, LONG).await
}

async fn join_s(
    c: &Arc<GroupCoordinator>,
    client: &str,
    meta: &'static [u8],
    session_ms: i32,
) -> JoinGroupResponse {
    let first = c
        .join_group(join_req_s("", meta, session_ms), 5, client, "/127.0.0.1")
        .await;
    assert_eq!(first.error_code, ResponseError::MemberIdRequired.code());
    assert!(first.member_id.starts_with(client));
    encodes(&first, 5);
    let resp = c
        .join_group(
            join_req_s(&first.member_id, meta, session_ms),
            5,
            client,
            "/127.0.0.1",
        )
        .await;
    encodes(&resp, 5);
    resp
}

fn spawn_join(
    c: &Arc<GroupCoordinator>,
    member_id: &str,
    client: &str,
    meta: &'static [u8],
) -> tokio::task::JoinHandle<JoinGroupResponse> {
    spawn_join_s(c, member_id, client, meta, LONG)
}

fn spawn_join_s(
    c: &Arc<GroupCoordinator>,
    member_id: &str,
    client: &str,
    meta: &'static [u8],
    session_ms: i32,
) -> tokio::task::JoinHandle<JoinGroupResponse> {
    let (c, m, client) = (c.clone(), member_id.to_string(), client.to_string());
    tokio::spawn(async move {
        if m.is_empty() {
            join_s(&c, &client, meta, session_ms).await
        } else {
            c.join_group(join_req_s(&m, meta, session_ms), 5, &client, "h")
                .await
        }
    })
}

fn sync_req(
    member_id: &str,
    generation: i32,
    assignments: &[(&str, &'static [u8])],
) -> SyncGroupRequest {
    SyncGroupRequest::default()
        .with_group_id(gid(G))
        .with_generation_id(generation)
        .with_member_id(s(member_id))
        .with_assignments(
            assignments
                .iter()
                .map(|(m, a)| {
                    SyncGroupRequestAssignment::default()
                        .with_member_id(s(m))
                        .with_assignment(Bytes::from_static(a))
                })
                .collect(),
        )
}

fn spawn_sync(
    c: &Arc<GroupCoordinator>,
    req: SyncGroupRequest,
) -> tokio::task::JoinHandle<SyncGroupResponse> {
    let c = c.clone();
    tokio::spawn(async move { c.sync_group(req, 5).await })
}

async fn hb(c: &GroupCoordinator, member_id: &str, generation: i32) -> i16 {
    let req = HeartbeatRequest::default()
        .with_group_id(gid(G))
        .with_generation_id(generation)
        .with_member_id(s(member_id));
    c.heartbeat(req, 4).await.error_code
}

fn state(c: &GroupCoordinator) -> String {
    let d = c.describe_groups(
        DescribeGroupsRequest::default().with_groups(vec![gid(G)]),
        5,
        |_| Some(i32::MIN),
        |_| false,
    );
    d.groups[0].group_state.to_string()
}

/// Two members joined concurrently and synced; returns (leader, follower, generation).
async fn stable_pair(c: &Arc<GroupCoordinator>) -> (String, String, i32) {
    stable_pair_s(c, LONG).await
}

async fn stable_pair_s(c: &Arc<GroupCoordinator>, session_ms: i32) -> (String, String, i32) {
    let a = spawn_join_s(c, "", "a", b"ma", session_ms);
    let b = spawn_join_s(c, "", "b", b"mb", session_ms);
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!(a.generation_id, b.generation_id);
    let (leader, follower) = if a.leader == a.member_id {
        (a, b)
    } else {
        (b, a)
    };
    let gen = leader.generation_id;
    let (l, f) = (leader.member_id.to_string(), follower.member_id.to_string());
    let fs = spawn_sync(c, sync_req(&f, gen, &[]));
    let ls = c
        .sync_group(
            sync_req(&l, gen, &[(l.as_str(), b"al"), (f.as_str(), b"af")]),
            5,
        )
        .await;
    assert_eq!(ls.error_code, 0);
    assert_eq!(fs.await.unwrap().assignment, Bytes::from_static(b"af"));
    (l, f, gen)
}

#[tokio::test]
async fn single_member_join_sync_heartbeat() {
    let c = coord();
    let j = join(&c, "c1", b"meta").await;
    assert_eq!(j.error_code, 0);
    assert_eq!(j.generation_id, 1);
    assert_eq!(j.leader, j.member_id);
    assert_eq!(j.protocol_name.as_deref(), Some("range"));
    assert_eq!(j.members.len(), 1);
    assert_eq!(j.members[0].metadata, Bytes::from_static(b"meta"));
    assert_eq!(state(&c), "CompletingRebalance");

    let m = j.member_id.to_string();
    let sync = c
        .sync_group(sync_req(&m, 1, &[(m.as_str(), b"assign")]), 5)
        .await;
    assert_eq!(sync.error_code, 0);
    assert_eq!(sync.assignment, Bytes::from_static(b"assign"));
    assert_eq!(sync.protocol_name.as_deref(), Some("range"));
    encodes(&sync, 5);
    encodes(&sync, 0);
    assert_eq!(state(&c), "Stable");
    assert_eq!(hb(&c, &m, 1).await, 0);
    assert_eq!(hb(&c, &m, 7).await, ResponseError::IllegalGeneration.code());
    assert_eq!(
        hb(&c, "nobody", 1).await,
        ResponseError::UnknownMemberId.code()
    );
    // A follower-less leader rejoining while Stable triggers a new generation.
    let again = c.join_group(join_req(&m, b"meta"), 5, "c1", "h").await;
    assert_eq!(again.generation_id, 2);
    c.shutdown();
}

#[tokio::test]
async fn member_id_required_only_from_v4() {
    let c = coord();
    let r = c.join_group(join_req("", b"m"), 4, "cl", "h").await;
    assert_eq!(r.error_code, ResponseError::MemberIdRequired.code());
    assert!(r.member_id.starts_with("cl-"));
    for v in 0..=9 {
        encodes(&r, v);
    }
    // Old clients get a member directly.
    let old = c
        .join_group(
            join_req("", b"m").with_rebalance_timeout_ms(-1),
            3,
            "old",
            "h",
        )
        .await;
    assert_eq!(old.error_code, 0);
    assert!(old.member_id.starts_with("old-"));
    for v in 0..=9 {
        encodes(&old, v);
    }
    // Unknown ids are rejected, also on unknown groups.
    let bad = c.join_group(join_req("made-up", b"m"), 5, "cl", "h").await;
    assert_eq!(bad.error_code, ResponseError::UnknownMemberId.code());
    let bad_timeout = c
        .join_group(join_req("", b"m").with_session_timeout_ms(1), 5, "cl", "h")
        .await;
    assert_eq!(
        bad_timeout.error_code,
        ResponseError::InvalidSessionTimeout.code()
    );
}

#[tokio::test]
async fn two_members_share_a_generation_and_follower_waits_for_leader() {
    let c = coord();
    let a = spawn_join(&c, "", "a", b"ma");
    let b = spawn_join(&c, "", "b", b"mb");
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!((a.error_code, b.error_code), (0, 0));
    assert_eq!(a.generation_id, 1);
    assert_eq!(b.generation_id, 1);
    assert_eq!(a.leader, b.leader);
    let (leader, follower) = if a.leader == a.member_id {
        (a, b)
    } else {
        (b, a)
    };
    let mut metas: Vec<Bytes> = leader.members.iter().map(|m| m.metadata.clone()).collect();
    metas.sort();
    assert_eq!(
        metas,
        vec![Bytes::from_static(b"ma"), Bytes::from_static(b"mb")]
    );
    assert!(follower.members.is_empty());

    let (l, f) = (leader.member_id.to_string(), follower.member_id.to_string());
    let fs = spawn_sync(&c, sync_req(&f, 1, &[]));
    sleep(Duration::from_millis(200)).await;
    assert!(
        !fs.is_finished(),
        "follower must wait for the leader's assignment"
    );
    let ls = c
        .sync_group(sync_req(&l, 1, &[(f.as_str(), b"for-f")]), 5)
        .await;
    assert_eq!(ls.error_code, 0);
    assert!(ls.assignment.is_empty(), "leader left itself out");
    let fs = fs.await.unwrap();
    assert_eq!(fs.error_code, 0);
    assert_eq!(fs.assignment, Bytes::from_static(b"for-f"));
    assert_eq!(state(&c), "Stable");
    // Follower rejoining with unchanged metadata just gets the current generation.
    let same = c
        .join_group(
            join_req(&f, if f.starts_with('a') { b"ma" } else { b"mb" }),
            5,
            "x",
            "h",
        )
        .await;
    assert_eq!(same.generation_id, 1);
    assert_eq!(state(&c), "Stable");
}

#[tokio::test]
async fn new_member_triggers_rebalance_for_everyone() {
    let c = coord();
    let (l, f, gen) = stable_pair(&c).await;
    let third = spawn_join(&c, "", "c", b"mc");
    sleep(Duration::from_millis(10)).await;
    assert_eq!(state(&c), "PreparingRebalance");
    assert_eq!(
        hb(&c, &l, gen).await,
        ResponseError::RebalanceInProgress.code()
    );
    assert_eq!(
        hb(&c, &f, gen).await,
        ResponseError::RebalanceInProgress.code()
    );
    // Sync of the old generation during the rebalance is refused too.
    let s = c.sync_group(sync_req(&f, gen, &[]), 5).await;
    assert_eq!(s.error_code, ResponseError::RebalanceInProgress.code());
    let rl = spawn_join(&c, &l, "a", b"ma");
    let rf = spawn_join(&c, &f, "b", b"mb");
    let (rl, rf, rc) = (rl.await.unwrap(), rf.await.unwrap(), third.await.unwrap());
    for r in [&rl, &rf, &rc] {
        assert_eq!(r.error_code, 0);
        assert_eq!(r.generation_id, gen + 1);
        assert_eq!(r.leader.as_str(), l, "existing leader is kept");
    }
    assert_eq!(rl.members.len(), 3);
    assert!(rf.members.is_empty() && rc.members.is_empty());
}

#[tokio::test]
async fn leave_triggers_rebalance_and_empties_group() {
    let c = coord();
    let (l, f, gen) = stable_pair(&c).await;
    let leave = LeaveGroupRequest::default()
        .with_group_id(gid(G))
        .with_members(vec![
            MemberIdentity::default().with_member_id(s(&f)),
            MemberIdentity::default().with_member_id(s("ghost")),
        ]);
    let resp = c.leave_group(leave, 3).await;
    encodes(&resp, 3);
    assert_eq!(resp.error_code, 0);
    assert_eq!(resp.members[0].error_code, 0);
    assert_eq!(
        resp.members[1].error_code,
        ResponseError::UnknownMemberId.code()
    );
    assert_eq!(
        hb(&c, &l, gen).await,
        ResponseError::RebalanceInProgress.code()
    );
    let r = c.join_group(join_req(&l, b"ma"), 5, "a", "h").await;
    assert_eq!(r.generation_id, gen + 1);
    assert_eq!(r.members.len(), 1);
    // v0 leave of the last member empties the group.
    let resp = c
        .leave_group(
            LeaveGroupRequest::default()
                .with_group_id(gid(G))
                .with_member_id(s(&l)),
            0,
        )
        .await;
    encodes(&resp, 0);
    assert_eq!(resp.error_code, 0);
    assert_eq!(state(&c), "Empty");
    let resp = c
        .leave_group(
            LeaveGroupRequest::default()
                .with_group_id(gid(G))
                .with_member_id(s(&l)),
            1,
        )
        .await;
    assert_eq!(resp.error_code, ResponseError::UnknownMemberId.code());
}

#[tokio::test]
async fn silent_member_expires() {
    let c = coord();
    let (l, f, gen) = stable_pair_s(&c, 300).await;
    // Only the leader heartbeats; the follower's 300ms session lapses.
    for _ in 0..10 {
        sleep(Duration::from_millis(60)).await;
        let e = hb(&c, &l, gen).await;
        if e != 0 {
            assert_eq!(e, ResponseError::RebalanceInProgress.code());
            break;
        }
    }
    assert_eq!(hb(&c, &f, gen).await, ResponseError::UnknownMemberId.code());
    let r = c.join_group(join_req_s(&l, b"ma", 300), 5, "a", "h").await;
    assert_eq!(r.generation_id, gen + 1);
    assert_eq!(r.members.len(), 1);
    // A member that never syncs nor heartbeats is dropped once its session lapses.
    sleep(Duration::from_millis(500)).await;
    assert_eq!(state(&c), "Empty");
}

#[tokio::test]
async fn offset_commit_checks() {
    let c = coord();
    assert_eq!(c.check_offset_commit(G, -1, "", None, true), None);
    assert_eq!(
        c.check_offset_commit(G, 3, "m", None, true),
        Some(ResponseError::IllegalGeneration)
    );
    let j = join(&c, "c", b"m").await;
    let m = j.member_id.to_string();
    assert_eq!(
        c.check_offset_commit(G, 1, &m, None, true),
        Some(ResponseError::RebalanceInProgress)
    );
    c.sync_group(sync_req(&m, 1, &[]), 5).await;
    assert_eq!(c.check_offset_commit(G, 1, &m, None, true), None);
    assert_eq!(
        c.check_offset_commit(G, 2, &m, None, true),
        Some(ResponseError::IllegalGeneration)
    );
    assert_eq!(
        c.check_offset_commit(G, 1, "x", None, true),
        Some(ResponseError::UnknownMemberId)
    );
    assert_eq!(
        c.check_offset_commit(G, -1, "", None, true),
        Some(ResponseError::UnknownMemberId)
    );
    c.leave_group(
        LeaveGroupRequest::default()
            .with_group_id(gid(G))
            .with_member_id(s(&m)),
        1,
    )
    .await;
    assert_eq!(c.check_offset_commit(G, -1, "", None, true), None);
}

#[tokio::test]
async fn describe_and_list() {
    let c = coord();
    let (l, _f, _) = stable_pair(&c).await;
    let d = c.describe_groups(
        DescribeGroupsRequest::default().with_groups(vec![gid(G), gid("nope")]),
        5,
        |_| Some(i32::MIN),
        |_| false,
    );
    let g = &d.groups[0];
    assert_eq!(g.group_state.as_str(), "Stable");
    assert_eq!(g.protocol_type.as_str(), "consumer");
    assert_eq!(g.protocol_data.as_str(), "range");
    assert_eq!(g.members.len(), 2);
    let lm = g
        .members
        .iter()
        .find(|m| m.member_id.as_str() == l)
        .unwrap();
    assert_eq!(lm.member_assignment, Bytes::from_static(b"al"));
    assert_eq!(lm.client_id.as_str(), "a");
    assert_eq!(d.groups[1].group_state.as_str(), "Dead");
    // A group known only by committed offsets is Empty, not Dead.
    let offsets_only = c.describe_groups(
        DescribeGroupsRequest::default().with_groups(vec![gid("committed")]),
        5,
        |_| Some(i32::MIN),
        |g| g == "committed",
    );
    assert_eq!(offsets_only.groups[0].group_state.as_str(), "Empty");
    assert_eq!(offsets_only.groups[0].protocol_type.as_str(), "consumer");
    assert_eq!(offsets_only.groups[0].error_code, 0);
    assert_eq!(g.authorized_operations, i32::MIN, "only when asked");
    let asked = c.describe_groups(
        DescribeGroupsRequest::default()
            .with_groups(vec![gid(G)])
            .with_include_authorized_operations(true),
        5,
        |_| Some(0b1_0100_1000),
        |_| false,
    );
    // READ, DELETE, DESCRIBE (bits 3, 6, 8), as the authorizer reported them.
    assert_eq!(asked.groups[0].authorized_operations, 0b1_0100_1000);
    let refused = c.describe_groups(
        DescribeGroupsRequest::default().with_groups(vec![gid(G)]),
        5,
        |_| None,
        |_| false,
    );
    assert_eq!(
        refused.groups[0].error_code, 30,
        "GROUP_AUTHORIZATION_FAILED"
    );
    assert!(refused.groups[0].members.is_empty());
    for v in 0..=6 {
        let d = c.describe_groups(
            DescribeGroupsRequest::default().with_groups(vec![gid(G)]),
            v,
            |_| Some(i32::MIN),
            |_| false,
        );
        encodes(&d, v);
    }

    let offsets = vec!["only-offsets".to_string(), G.to_string()];
    let all = c.list_groups(ListGroupsRequest::default(), 4, &offsets, |_| true);
    let rows: Vec<(String, String, String)> = all
        .groups
        .iter()
        .map(|g| {
            (
                g.group_id.to_string(),
                g.protocol_type.to_string(),
                g.group_state.to_string(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (G.into(), "consumer".into(), "Stable".into()),
            ("only-offsets".into(), "consumer".into(), "Empty".into()),
        ]
    );
    let stable_only = c.list_groups(
        ListGroupsRequest::default().with_states_filter(vec![s("stable")]),
        4,
        &offsets,
        |_| true,
    );
    assert_eq!(stable_only.groups.len(), 1);
    let consumer_type = c.list_groups(
        ListGroupsRequest::default().with_types_filter(vec![s("consumer")]),
        5,
        &offsets,
        |_| true,
    );
    assert!(
        consumer_type.groups.is_empty(),
        "type filter is about classic/consumer group types"
    );
    for v in 0..=5 {
        encodes(
            &c.list_groups(ListGroupsRequest::default(), v, &offsets, |_| true),
            v,
        );
    }
    // A broker lists only the groups it coordinates, live or known by offsets alone.
    let ids = |mine: &dyn Fn(&str) -> bool| -> Vec<String> {
        c.list_groups(ListGroupsRequest::default(), 4, &offsets, mine)
            .groups
            .iter()
            .map(|g| g.group_id.to_string())
            .collect()
    };
    assert_eq!(ids(&|g| g == G), vec![G.to_string()]);
    assert_eq!(ids(&|g| g == "only-offsets"), vec!["only-offsets"]);
    assert!(ids(&|_| false).is_empty());
}

#[tokio::test]
async fn shutdown_fails_parked_requests() {
    let c = coord();
    let r = c.join_group(join_req("", b"m"), 5, "c", "h").await;
    let pending = spawn_join(&c, &r.member_id, "c", b"m");
    sleep(Duration::from_millis(1)).await;
    c.shutdown();
    let resp = pending.await.unwrap();
    assert_eq!(
        resp.error_code,
        ResponseError::CoordinatorNotAvailable.code()
    );
}

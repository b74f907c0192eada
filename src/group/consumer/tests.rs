//! The consumer group state machine against simulated clients: members join, heartbeat
//! with what they own, leave, crash; topics grow. No partition is ever owned by two
//! live clients, the coordinator's ownership agrees with the members', and once the
//! clients keep heartbeating every subscribed partition is owned and the group is stable.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

const T1: TopicId = [1; 16];
const T2: TopicId = [2; 16];

fn topics(a: i32, b: i32) -> BTreeMap<String, (TopicId, i32)> {
    [("a".to_owned(), (T1, a)), ("b".to_owned(), (T2, b))].into()
}

fn subs(names: &[&str]) -> Option<BTreeSet<String>> {
    Some(names.iter().map(|n| (*n).to_owned()).collect())
}

/// A client of the protocol: it owns what its last answer said.
#[derive(Debug, Clone, Default)]
struct Client {
    epoch: i32,
    owned: Assignment,
}

impl Client {
    fn heartbeat(&self, id: &str) -> Heartbeat {
        Heartbeat {
            member_id: id.to_owned(),
            member_epoch: self.epoch,
            owned: Some(self.owned.clone()),
            ..Heartbeat::default()
        }
    }

    fn apply(&mut self, reply: &HeartbeatReply) {
        self.epoch = reply.member_epoch;
        if let Some(a) = &reply.assignment {
            self.owned = a.clone();
        }
    }
}

fn join(id: &str, names: &[&str]) -> Heartbeat {
    Heartbeat {
        member_id: id.to_owned(),
        member_epoch: JOIN_EPOCH,
        rebalance_timeout_ms: Some(30_000),
        subscribed_topics: subs(names),
        owned: Some(Assignment::new()),
        ..Heartbeat::default()
    }
}

fn count(a: &Assignment) -> usize {
    a.values().map(BTreeSet::len).sum()
}

#[test]
fn a_partition_moves_only_after_its_owner_gives_it_up() -> Result<(), HeartbeatError> {
    let s = Settings::default();
    let t = topics(4, 0);
    let mut g = ConsumerGroup::default();
    let mut a = Client::default();
    a.apply(&g.heartbeat(join("a", &["a"]), &t, &s, 0)?);
    assert_eq!(count(&a.owned), 4);
    assert_eq!(g.state(), GroupState::Stable);
    // b joins: the target splits 2/2, but b gets nothing a still owns.
    let mut b = Client::default();
    b.apply(&g.heartbeat(join("b", &["a"]), &t, &s, 1)?);
    assert_eq!(count(&b.owned), 0);
    assert_eq!(g.members["b"].state, MemberState::UnreleasedPartitions);
    // a is told to keep two, at its old epoch.
    let epoch_a = a.epoch;
    a.apply(&g.heartbeat(a.heartbeat("a"), &t, &s, 2)?);
    assert_eq!((count(&a.owned), a.epoch), (2, epoch_a));
    assert_eq!(g.members["a"].state, MemberState::UnrevokedPartitions);
    assert_eq!(g.state(), GroupState::Reconciling);
    // b still waits: a has not said it let go.
    b.apply(&g.heartbeat(b.heartbeat("b"), &t, &s, 3)?);
    assert_eq!(count(&b.owned), 0);
    // a reports two: revoked; it moves to the new epoch, and b gets the two.
    a.apply(&g.heartbeat(a.heartbeat("a"), &t, &s, 4)?);
    assert_eq!(a.epoch, g.assignment_epoch);
    b.apply(&g.heartbeat(b.heartbeat("b"), &t, &s, 5)?);
    assert_eq!(count(&b.owned), 2);
    assert_eq!(g.state(), GroupState::Stable);
    Ok(())
}

#[test]
fn epochs_fence_stale_members_and_forgive_a_lost_answer() -> Result<(), HeartbeatError> {
    let s = Settings::default();
    let t = topics(2, 0);
    let mut g = ConsumerGroup::default();
    let mut a = Client::default();
    a.apply(&g.heartbeat(join("a", &["a"]), &t, &s, 0)?);
    let mut hb = a.heartbeat("a");
    hb.member_epoch += 1;
    assert_eq!(
        g.heartbeat(hb, &t, &s, 1),
        Err(HeartbeatError::FencedMemberEpoch)
    );
    let mut hb = a.heartbeat("x");
    hb.member_epoch = 3;
    assert_eq!(
        g.heartbeat(hb, &t, &s, 1),
        Err(HeartbeatError::UnknownMemberId)
    );
    // b joins and a's answer moving it to the next epoch is lost: a's previous epoch,
    // owning no more than it was given, is accepted.
    let mut b = Client::default();
    b.apply(&g.heartbeat(join("b", &["a"]), &t, &s, 2)?);
    a.apply(&g.heartbeat(a.heartbeat("a"), &t, &s, 3)?);
    let revoked = a.clone();
    a.apply(&g.heartbeat(a.heartbeat("a"), &t, &s, 4)?);
    assert!(a.epoch > revoked.epoch);
    assert!(g.heartbeat(revoked.heartbeat("a"), &t, &s, 5).is_ok());
    // Leaving frees the partitions for b.
    let left = g.heartbeat(
        Heartbeat {
            member_id: "a".into(),
            member_epoch: LEAVE_EPOCH,
            ..Heartbeat::default()
        },
        &t,
        &s,
        6,
    )?;
    assert_eq!(left.member_epoch, LEAVE_EPOCH);
    b.apply(&g.heartbeat(b.heartbeat("b"), &t, &s, 7)?);
    assert_eq!(count(&b.owned), 2);
    Ok(())
}

#[test]
fn a_static_member_returns_to_its_assignment() -> Result<(), HeartbeatError> {
    let s = Settings::default();
    let t = topics(3, 0);
    let mut g = ConsumerGroup::default();
    let mut hb = join("a1", &["a"]);
    hb.instance_id = Some("i".into());
    let first = g.heartbeat(hb.clone(), &t, &s, 0)?;
    // Another member with the same instance id is refused while the first is there.
    hb.member_id = "a2".into();
    assert_eq!(
        g.heartbeat(hb.clone(), &t, &s, 1),
        Err(HeartbeatError::UnreleasedInstanceId)
    );
    g.heartbeat(
        Heartbeat {
            member_id: "a1".into(),
            member_epoch: STATIC_LEAVE_EPOCH,
            ..Heartbeat::default()
        },
        &t,
        &s,
        2,
    )?;
    let epoch = g.group_epoch;
    let back = g.heartbeat(hb, &t, &s, 3)?;
    assert_eq!(back.assignment, first.assignment);
    assert_eq!(
        g.group_epoch, epoch,
        "a static member's return is no rebalance"
    );
    assert!(!g.members.contains_key("a1"));
    Ok(())
}

#[test]
fn sessions_and_rebalance_timeouts_fence_members() -> Result<(), HeartbeatError> {
    let s = Settings::default();
    let t = topics(2, 0);
    let mut g = ConsumerGroup::default();
    let mut a = Client::default();
    a.apply(&g.heartbeat(join("a", &["a"]), &t, &s, 0)?);
    let mut b = Client::default();
    b.apply(&g.heartbeat(join("b", &["a"]), &t, &s, 1_000)?);
    // a is told to give one up and never does: fenced after its rebalance timeout.
    a.apply(&g.heartbeat(a.heartbeat("a"), &t, &s, 2_000)?);
    assert_eq!(g.expire(&s, 20_000), Vec::<String>::new());
    b.apply(&g.heartbeat(b.heartbeat("b"), &t, &s, 30_000)?);
    assert_eq!(g.expire(&s, 32_001), vec!["a".to_owned()]);
    b.apply(&g.heartbeat(b.heartbeat("b"), &t, &s, 33_000)?);
    assert_eq!(count(&b.owned), 2);
    // b stops heartbeating: gone after the session timeout.
    assert_eq!(g.expire(&s, 33_000 + 45_001), vec!["b".to_owned()]);
    assert_eq!(g.state(), GroupState::Empty);
    Ok(())
}

#[test]
fn bad_requests_are_refused() {
    let s = Settings::default();
    let t = topics(1, 0);
    let mut g = ConsumerGroup::default();
    let mut hb = join("", &["a"]);
    assert!(matches!(
        g.heartbeat(hb.clone(), &t, &s, 0),
        Err(HeartbeatError::InvalidRequest(_))
    ));
    hb.member_id = "m".into();
    hb.server_assignor = Some("sticky".into());
    assert_eq!(
        g.heartbeat(hb.clone(), &t, &s, 0),
        Err(HeartbeatError::UnsupportedAssignor)
    );
    hb.server_assignor = None;
    hb.subscribed_topics = None;
    assert!(matches!(
        g.heartbeat(hb, &t, &s, 0),
        Err(HeartbeatError::InvalidRequest(_))
    ));
    let full = Settings {
        max_size: 0,
        ..Settings::default()
    };
    assert_eq!(
        g.heartbeat(join("m", &["a"]), &t, &full, 0),
        Err(HeartbeatError::GroupMaxSizeReached)
    );
}

#[derive(Debug, Clone)]
enum Op {
    Join { client: usize, topics: u8 },
    Heartbeat { client: usize },
    Leave { client: usize },
    Crash { client: usize },
    Grow { a: i32, b: i32 },
    Tick { ms: i64 },
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..5usize, 1..4u8).prop_map(|(client, topics)| Op::Join { client, topics }),
        8 => (0..5usize).prop_map(|client| Op::Heartbeat { client }),
        1 => (0..5usize).prop_map(|client| Op::Leave { client }),
        1 => (0..5usize).prop_map(|client| Op::Crash { client }),
        1 => (0..3i32, 0..3i32).prop_map(|(a, b)| Op::Grow { a, b }),
        1 => (1..20_000i64).prop_map(|ms| Op::Tick { ms }),
    ]
}

proptest! {
    #[test]
    fn no_partition_is_owned_twice_and_every_one_is_owned_in_the_end(
        ops in prop::collection::vec(arb_op(), 0..120),
        assignor in prop::sample::select(assign::ASSIGNORS.to_vec()),
    ) {
        let s = Settings::default();
        let mut g = ConsumerGroup::default();
        let (mut na, mut nb) = (3, 2);
        let mut now = 0i64;
        // Live clients (a crashed one is gone; its member is left to expire).
        let mut clients: BTreeMap<String, Client> = BTreeMap::new();
        for op in &ops {
            let t = topics(na, nb);
            match op {
                Op::Join { client, topics } => {
                    let id = format!("c{client}");
                    if clients.contains_key(&id) {
                        continue;
                    }
                    let names: Vec<&str> = [(1, "a"), (2, "b")]
                        .iter()
                        .filter(|(bit, _)| topics & bit != 0)
                        .map(|(_, n)| *n)
                        .collect();
                    let mut hb = join(&id, &names);
                    hb.server_assignor = Some(assignor.to_owned());
                    // A member id still in the group (a crash not yet expired) rejoins.
                    let mut c = Client::default();
                    c.apply(&g.heartbeat(hb, &t, &s, now).map_err(|e| TestCaseError::fail(e.to_string()))?);
                    clients.insert(id, c);
                }
                Op::Heartbeat { client } => {
                    let id = format!("c{client}");
                    let Some(c) = clients.get_mut(&id) else { continue };
                    match g.heartbeat(c.heartbeat(&id), &t, &s, now) {
                        Ok(reply) => c.apply(&reply),
                        // Fenced (expired while it was quiet): it loses everything.
                        Err(HeartbeatError::UnknownMemberId | HeartbeatError::FencedMemberEpoch) => {
                            clients.remove(&id);
                        }
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                }
                Op::Leave { client } => {
                    let id = format!("c{client}");
                    if clients.remove(&id).is_some() {
                        let leave = Heartbeat { member_id: id, member_epoch: LEAVE_EPOCH, ..Heartbeat::default() };
                        prop_assert!(g.heartbeat(leave, &t, &s, now).is_ok());
                    }
                }
                Op::Crash { client } => {
                    clients.remove(&format!("c{client}"));
                }
                Op::Grow { a, b } => {
                    na += a;
                    nb += b;
                }
                Op::Tick { ms } => {
                    now += ms;
                    for id in g.expire(&s, now) {
                        clients.remove(&id);
                    }
                }
            }
            // No partition owned by two live clients.
            let mut seen = BTreeSet::new();
            for c in clients.values() {
                for key in partitions(&c.owned) {
                    prop_assert!(seen.insert(key), "{key:?} owned twice: {clients:?}");
                }
            }
            // The coordinator's owners are exactly its members' holdings.
            let mut held = 0;
            for (id, m) in &g.members {
                for key in partitions(&m.assigned).chain(partitions(&m.pending_revocation)) {
                    prop_assert_eq!(g.owner(key.0, key.1), Some(id.as_str()));
                    held += 1;
                }
            }
            prop_assert_eq!(held, g.owners.len());
        }
        // Quiet: the live clients heartbeat every 10 s (within their session and
        // rebalance timeouts) until the crashed members have expired, then a few more.
        let t = topics(na, nb);
        for round in 0..10 {
            for (id, c) in clients.iter_mut() {
                let reply = g.heartbeat(c.heartbeat(id), &t, &s, now).map_err(|e| TestCaseError::fail(format!("{id}: {e}")))?;
                c.apply(&reply);
            }
            if round < 6 {
                now += 10_000;
            }
            for id in g.expire(&s, now) {
                prop_assert!(!clients.contains_key(&id), "live client {id} fenced");
            }
        }
        if clients.is_empty() {
            prop_assert_eq!(g.state(), GroupState::Empty);
        } else {
            prop_assert_eq!(g.state(), GroupState::Stable);
        }
        for (id, c) in &clients {
            prop_assert_eq!(c.epoch, g.group_epoch);
            prop_assert_eq!(&c.owned, &g.members[id].assigned);
        }
        for (name, (topic, n)) in &t {
            let subscribed = g.members.values().any(|m| m.subscribed_topics.contains(name));
            for p in 0..*n {
                prop_assert_eq!(g.owner(*topic, p).is_some(), subscribed, "{} {}", name, p);
            }
        }
    }
}

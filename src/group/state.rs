//! One consumer group's state machine (classic protocol). No I/O: every method
//! takes `now`, and pending JoinGroup/SyncGroup requests are parked as
//! [`Waiter`]s that are answered when the group transitions.

use std::collections::HashMap;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{JoinGroupResponse, SyncGroupResponse};
use tokio::sync::oneshot;
use tokio::time::{Duration, Instant};

use super::responses::{self, JoinOk};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// A parked request: the reply channel plus the api version to encode for.
pub(super) struct Waiter<T> {
    tx: oneshot::Sender<T>,
    version: i16,
}

impl<T> Waiter<T> {
    pub fn new(tx: oneshot::Sender<T>, version: i16) -> Self {
        Waiter { tx, version }
    }

    fn send(self, build: impl FnOnce(i16) -> T) {
        // The requester may have gone away (connection closed); nothing to do then.
        let _ = self.tx.send(build(self.version));
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Protocol {
    pub name: String,
    pub metadata: Bytes,
}

pub(super) struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocols: Vec<Protocol>,
    pub assignment: Bytes,
    pub last_seen: Instant,
    join: Option<Waiter<JoinGroupResponse>>,
    sync: Option<Waiter<SyncGroupResponse>>,
}

impl Member {
    pub fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|p| p.name == protocol)
            .map(|p| p.metadata.clone())
            .unwrap_or_default()
    }

    fn supports(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|p| p.name == protocol)
    }
}

/// Everything a JoinGroup request contributes to a member.
pub(super) struct JoinParams {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    pub protocols: Vec<Protocol>,
}

/// Kafka's InitialDelayedJoin: a group rebalancing out of Empty waits a little
/// (extended while new members keep arriving) so that consumers started
/// together land in the same generation.
struct InitialDelay {
    delay: Duration,
    remaining: Duration,
    new_member_added: bool,
}

pub(super) struct Group {
    pub id: String,
    pub state: GroupState,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: Option<String>,
    /// In join order; the first one becomes leader when a new one is needed.
    pub members: Vec<Member>,
    /// Ids handed out with MEMBER_ID_REQUIRED, mapped to when they expire.
    pending: HashMap<String, Instant>,
    join_deadline: Option<Instant>,
    initial_delay: Option<InitialDelay>,
    initial_delay_cfg: Duration,
}

impl Group {
    pub fn new(id: String, initial_delay_cfg: Duration) -> Self {
        Group {
            id,
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: Vec::new(),
            pending: HashMap::new(),
            join_deadline: None,
            initial_delay: None,
            initial_delay_cfg,
        }
    }

    fn idx(&self, member_id: &str) -> Option<usize> {
        self.members.iter().position(|m| m.id == member_id)
    }

    fn idx_by_instance(&self, instance_id: &str) -> Option<usize> {
        self.members
            .iter()
            .position(|m| m.instance_id.as_deref() == Some(instance_id))
    }

    /// Common membership validation (Kafka's validateCurrentMember, minus generation).
    fn find_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<usize, ResponseError> {
        if let Some(inst) = instance_id {
            if let Some(i) = self.idx_by_instance(inst) {
                if self.members[i].id != member_id {
                    return Err(ResponseError::FencedInstanceId);
                }
            }
        }
        self.idx(member_id).ok_or(ResponseError::UnknownMemberId)
    }

    /// A joining member must speak the group's protocol type and share at least
    /// one protocol with every other member.
    fn is_compatible(&self, p: &JoinParams) -> bool {
        let others: Vec<&Member> = self
            .members
            .iter()
            .filter(|m| m.id != p.member_id)
            .collect();
        if others.is_empty() {
            return true;
        }
        self.protocol_type.as_deref() == Some(p.protocol_type.as_str())
            && p.protocols
                .iter()
                .any(|proto| others.iter().all(|m| m.supports(&proto.name)))
    }

    pub fn join(
        &mut self,
        p: JoinParams,
        require_known_id: bool,
        new_id: impl FnOnce() -> String,
        now: Instant,
        reply: Waiter<JoinGroupResponse>,
    ) {
        if self.state == GroupState::Dead {
            let id = p.member_id.clone();
            return reply
                .send(|v| responses::join_error(v, ResponseError::CoordinatorNotAvailable, &id));
        }
        if !self.is_compatible(&p) {
            let id = p.member_id.clone();
            return reply
                .send(|v| responses::join_error(v, ResponseError::InconsistentGroupProtocol, &id));
        }
        if p.member_id.is_empty() {
            let id = new_id();
            if let Some(i) = p
                .instance_id
                .as_deref()
                .and_then(|x| self.idx_by_instance(x))
            {
                // A static member restarted: its new incarnation replaces (fences) the old.
                return self.replace_static_member(
                    i,
                    JoinParams { member_id: id, ..p },
                    now,
                    reply,
                );
            }
            if require_known_id {
                self.pending.insert(id.clone(), now + p.session_timeout);
                return reply
                    .send(|v| responses::join_error(v, ResponseError::MemberIdRequired, &id));
            }
            return self.add_member(JoinParams { member_id: id, ..p }, now, reply);
        }
        if self.pending.remove(&p.member_id).is_some() {
            return self.add_member(p, now, reply);
        }
        match self.find_member(&p.member_id, p.instance_id.as_deref()) {
            Err(e) => {
                let id = p.member_id.clone();
                reply.send(|v| responses::join_error(v, e, &id))
            }
            Ok(i) => self.rejoin(i, p, now, reply),
        }
    }

    fn add_member(&mut self, p: JoinParams, now: Instant, reply: Waiter<JoinGroupResponse>) {
        if self.members.is_empty() {
            self.protocol_type = Some(p.protocol_type.clone());
        }
        self.members.push(Member {
            id: p.member_id,
            instance_id: p.instance_id,
            client_id: p.client_id,
            client_host: p.client_host,
            session_timeout: p.session_timeout,
            rebalance_timeout: p.rebalance_timeout,
            protocols: p.protocols,
            assignment: Bytes::new(),
            last_seen: now,
            join: Some(reply),
            sync: None,
        });
        if self.state == GroupState::PreparingRebalance {
            if let Some(d) = self.initial_delay.as_mut() {
                d.new_member_added = true;
            }
        } else {
            self.prepare_rebalance(now);
        }
        self.try_complete_join(now);
    }

    /// Kafka's updateStaticMemberAndRebalance: the new member id takes over the old
    /// member's place (and assignment). A Stable group whose selected protocol stays the
    /// same does not rebalance; the new incarnation gets the current generation back, with
    /// the *old* leader id so that a restarted leader doesn't compute a fresh assignment.
    fn replace_static_member(
        &mut self,
        i: usize,
        p: JoinParams,
        now: Instant,
        reply: Waiter<JoinGroupResponse>,
    ) {
        let current_leader = self.leader.clone().unwrap_or_default();
        let m = &mut self.members[i];
        let old_id = std::mem::replace(&mut m.id, p.member_id.clone());
        if let Some(w) = m.join.take() {
            w.send(|v| responses::join_error(v, ResponseError::FencedInstanceId, &old_id));
        }
        if let Some(w) = m.sync.take() {
            w.send(|_| responses::sync_error(ResponseError::FencedInstanceId));
        }
        m.client_id = p.client_id;
        m.client_host = p.client_host;
        m.session_timeout = p.session_timeout;
        m.rebalance_timeout = p.rebalance_timeout;
        m.protocols = p.protocols;
        m.last_seen = now;
        if self.leader.as_deref() == Some(old_id.as_str()) {
            self.leader = Some(p.member_id.clone());
        }
        match self.state {
            GroupState::Stable if self.select_protocol() == self.protocol_name => {
                let member_id = p.member_id;
                reply.send(|v| {
                    responses::join_ok(
                        v,
                        JoinOk {
                            generation: self.generation,
                            protocol_type: self.protocol_type.as_deref(),
                            protocol_name: self.protocol_name.as_deref(),
                            leader: &current_leader,
                            member_id: &member_id,
                            members: Vec::new(),
                        },
                    )
                })
            }
            GroupState::PreparingRebalance => {
                self.members[i].join = Some(reply);
                self.try_complete_join(now);
            }
            _ => {
                self.members[i].join = Some(reply);
                self.prepare_rebalance(now);
                self.try_complete_join(now);
            }
        }
    }

    fn rejoin(&mut self, i: usize, p: JoinParams, now: Instant, reply: Waiter<JoinGroupResponse>) {
        let is_leader = self.leader.as_deref() == Some(p.member_id.as_str());
        let m = &mut self.members[i];
        m.last_seen = now;
        let unchanged = m.protocols == p.protocols;
        match self.state {
            GroupState::Empty | GroupState::Dead => reply
                .send(|v| responses::join_error(v, ResponseError::UnknownMemberId, &p.member_id)),
            // Retried join with nothing new: resend this generation's answer.
            GroupState::CompletingRebalance if unchanged => {
                reply.send(|v| self.join_response(v, &p.member_id))
            }
            GroupState::Stable if unchanged && !is_leader => {
                reply.send(|v| self.join_response(v, &p.member_id))
            }
            state => {
                m.protocols = p.protocols;
                m.session_timeout = p.session_timeout;
                m.rebalance_timeout = p.rebalance_timeout;
                m.join = Some(reply);
                if state != GroupState::PreparingRebalance {
                    self.prepare_rebalance(now);
                }
                self.try_complete_join(now);
            }
        }
    }

    /// The JoinGroup answer for the current generation; only the leader sees members.
    fn join_response(&self, version: i16, member_id: &str) -> JoinGroupResponse {
        let leader = self.leader.as_deref().unwrap_or_default();
        let members = if leader == member_id {
            let proto = self.protocol_name.as_deref().unwrap_or_default();
            self.members
                .iter()
                .map(|m| (m.id.clone(), m.instance_id.clone(), m.metadata_for(proto)))
                .collect()
        } else {
            Vec::new()
        };
        responses::join_ok(
            version,
            JoinOk {
                generation: self.generation,
                protocol_type: self.protocol_type.as_deref(),
                protocol_name: self.protocol_name.as_deref(),
                leader,
                member_id,
                members,
            },
        )
    }

    fn prepare_rebalance(&mut self, now: Instant) {
        if self.state == GroupState::CompletingRebalance {
            // The assignment being synced is now stale; followers waiting for it must rejoin.
            for m in &mut self.members {
                m.assignment = Bytes::new();
                if let Some(w) = m.sync.take() {
                    w.send(|_| responses::sync_error(ResponseError::RebalanceInProgress));
                }
            }
        }
        let rebalance_timeout = self
            .members
            .iter()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        if self.state == GroupState::Empty {
            let delay = self.initial_delay_cfg.min(rebalance_timeout);
            self.initial_delay = Some(InitialDelay {
                delay,
                remaining: rebalance_timeout.saturating_sub(delay),
                new_member_added: false,
            });
            self.join_deadline = Some(now + delay);
        } else {
            self.initial_delay = None;
            self.join_deadline = Some(now + rebalance_timeout);
        }
        self.state = GroupState::PreparingRebalance;
    }

    /// Finish the join phase if everyone is in, or if the deadline passed.
    fn try_complete_join(&mut self, now: Instant) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let deadline_passed = self.join_deadline.is_some_and(|d| now >= d);
        if let Some(d) = self.initial_delay.as_mut() {
            if !self.members.is_empty() {
                if !deadline_passed {
                    return;
                }
                if d.new_member_added && !d.remaining.is_zero() {
                    let delay = d.delay.min(d.remaining);
                    d.remaining -= delay;
                    d.new_member_added = false;
                    self.join_deadline = Some(now + delay);
                    return;
                }
            }
        } else {
            let all_joined =
                self.members.iter().all(|m| m.join.is_some()) && self.pending.is_empty();
            if !all_joined && !deadline_passed {
                return;
            }
        }
        self.complete_join(now);
    }

    fn complete_join(&mut self, now: Instant) {
        self.initial_delay = None;
        self.join_deadline = None;
        // Members that did not rejoin within the rebalance timeout are dropped.
        let (joined, gone): (Vec<Member>, Vec<Member>) = std::mem::take(&mut self.members)
            .into_iter()
            .partition(|m| m.join.is_some());
        self.members = joined;
        for m in gone {
            Self::fail_waiters(m, ResponseError::UnknownMemberId);
        }
        self.generation = self.generation.wrapping_add(1);
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol_name = None;
            self.leader = None;
            return;
        }
        self.protocol_name = self.select_protocol();
        let keep_leader = self
            .leader
            .as_deref()
            .is_some_and(|l| self.idx(l).is_some());
        if !keep_leader {
            self.leader = self.members.first().map(|m| m.id.clone());
        }
        self.state = GroupState::CompletingRebalance;
        let waiters: Vec<(String, Waiter<JoinGroupResponse>)> = self
            .members
            .iter_mut()
            .filter_map(|m| {
                m.last_seen = now;
                m.join.take().map(|w| (m.id.clone(), w))
            })
            .collect();
        for (id, w) in waiters {
            w.send(|v| self.join_response(v, &id));
        }
    }

    /// Kafka's vote: among protocols every member supports, each member votes for
    /// its most preferred one; most votes wins (ties go to the leader's order).
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.first()?;
        let candidates: Vec<&str> = first
            .protocols
            .iter()
            .map(|p| p.name.as_str())
            .filter(|name| self.members.iter().all(|m| m.supports(name)))
            .collect();
        let mut votes = vec![0usize; candidates.len()];
        for m in &self.members {
            let pick = m
                .protocols
                .iter()
                .find_map(|p| candidates.iter().position(|c| *c == p.name));
            if let Some(i) = pick {
                votes[i] += 1;
            }
        }
        let mut best: Option<(usize, usize)> = None;
        for (i, v) in votes.iter().enumerate() {
            if best.is_none_or(|(_, bv)| *v > bv) {
                best = Some((i, *v));
            }
        }
        best.map(|(i, _)| candidates[i].to_string())
    }

    fn fail_waiters(m: Member, err: ResponseError) {
        if let Some(w) = m.join {
            w.send(|v| responses::join_error(v, err, &m.id));
        }
        if let Some(w) = m.sync {
            w.send(|_| responses::sync_error(err));
        }
    }

    fn remove_member(&mut self, i: usize, now: Instant) {
        let m = self.members.remove(i);
        Self::fail_waiters(m, ResponseError::UnknownMemberId);
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now);
                self.try_complete_join(now);
            }
            GroupState::PreparingRebalance => self.try_complete_join(now),
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn sync(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        protocol_type: Option<&str>,
        protocol_name: Option<&str>,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
        reply: Waiter<SyncGroupResponse>,
    ) {
        let i = match self.find_member(member_id, instance_id) {
            Ok(i) => i,
            Err(e) => return reply.send(|_| responses::sync_error(e)),
        };
        if generation != self.generation {
            return reply.send(|_| responses::sync_error(ResponseError::IllegalGeneration));
        }
        let type_mismatch = protocol_type.is_some_and(|t| Some(t) != self.protocol_type.as_deref());
        let name_mismatch = protocol_name.is_some_and(|n| Some(n) != self.protocol_name.as_deref());
        if type_mismatch || name_mismatch {
            return reply.send(|_| responses::sync_error(ResponseError::InconsistentGroupProtocol));
        }
        self.members[i].last_seen = now;
        match self.state {
            GroupState::Empty | GroupState::Dead => {
                reply.send(|_| responses::sync_error(ResponseError::UnknownMemberId))
            }
            GroupState::PreparingRebalance => {
                reply.send(|_| responses::sync_error(ResponseError::RebalanceInProgress))
            }
            GroupState::Stable => {
                let assignment = self.members[i].assignment.clone();
                reply.send(|v| self.sync_response(v, assignment))
            }
            GroupState::CompletingRebalance => {
                self.members[i].sync = Some(reply);
                if self.leader.as_deref() == Some(member_id) {
                    self.apply_assignments(assignments);
                }
            }
        }
    }

    fn sync_response(&self, version: i16, assignment: Bytes) -> SyncGroupResponse {
        responses::sync_ok(
            version,
            self.protocol_type.as_deref(),
            self.protocol_name.as_deref(),
            assignment,
        )
    }

    /// The leader's assignment makes the group Stable; members it left out get nothing.
    fn apply_assignments(&mut self, assignments: Vec<(String, Bytes)>) {
        let mut by_member: HashMap<String, Bytes> = assignments.into_iter().collect();
        let mut waiters = Vec::new();
        for m in &mut self.members {
            m.assignment = by_member.remove(&m.id).unwrap_or_default();
            if let Some(w) = m.sync.take() {
                waiters.push((w, m.assignment.clone()));
            }
        }
        self.state = GroupState::Stable;
        for (w, assignment) in waiters {
            w.send(|v| self.sync_response(v, assignment));
        }
    }

    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> Option<ResponseError> {
        match self.state {
            GroupState::Dead => return Some(ResponseError::CoordinatorNotAvailable),
            GroupState::Empty => return Some(ResponseError::UnknownMemberId),
            _ => {}
        }
        let i = match self.find_member(member_id, instance_id) {
            Ok(i) => i,
            Err(e) => return Some(e),
        };
        if generation != self.generation {
            return Some(ResponseError::IllegalGeneration);
        }
        self.members[i].last_seen = now;
        match self.state {
            GroupState::PreparingRebalance => Some(ResponseError::RebalanceInProgress),
            _ => None,
        }
    }

    /// Remove one member (LeaveGroup). Identified by instance id when given.
    pub fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        now: Instant,
    ) -> Option<ResponseError> {
        let found = match instance_id {
            Some(inst) => match self.idx_by_instance(inst) {
                Some(i) if !member_id.is_empty() && self.members[i].id != member_id => {
                    return Some(ResponseError::FencedInstanceId)
                }
                found => found,
            },
            None => {
                if self.pending.remove(member_id).is_some() {
                    self.try_complete_join(now);
                    return None;
                }
                self.idx(member_id)
            }
        };
        match found {
            Some(i) => {
                self.remove_member(i, now);
                None
            }
            None => Some(ResponseError::UnknownMemberId),
        }
    }

    /// Expire silent members and pending ids, then fire any due join deadline.
    pub fn tick(&mut self, now: Instant) {
        // Members parked in a join or sync are alive by definition (Kafka's shouldKeepAlive).
        while let Some(i) = self.members.iter().position(|m| {
            m.join.is_none() && m.sync.is_none() && now >= m.last_seen + m.session_timeout
        }) {
            tracing::info!(group = %self.id, member = %self.members[i].id, "session timed out");
            self.remove_member(i, now);
        }
        self.pending.retain(|_, expiry| *expiry > now);
        self.try_complete_join(now);
    }

    /// Kafka's OffsetCommit membership validation for this group.
    pub fn check_offset_commit(
        &self,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Option<ResponseError> {
        if self.state == GroupState::Dead {
            return Some(ResponseError::CoordinatorNotAvailable);
        }
        if generation >= 0 || !member_id.is_empty() || instance_id.is_some() {
            if let Err(e) = self.find_member(member_id, instance_id) {
                return Some(e);
            }
            if generation != self.generation {
                return Some(ResponseError::IllegalGeneration);
            }
            if self.state == GroupState::CompletingRebalance {
                return Some(ResponseError::RebalanceInProgress);
            }
            return None;
        }
        // A standalone (non-member) commit is only allowed while nobody owns the group.
        if self.state != GroupState::Empty {
            return Some(ResponseError::UnknownMemberId);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(id: &str, proto: &str) -> JoinParams {
        JoinParams {
            member_id: id.into(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "h".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            protocol_type: "consumer".into(),
            protocols: vec![Protocol {
                name: proto.into(),
                metadata: Bytes::new(),
            }],
        }
    }

    fn waiter() -> (
        Waiter<JoinGroupResponse>,
        oneshot::Receiver<JoinGroupResponse>,
    ) {
        let (tx, rx) = oneshot::channel();
        (Waiter::new(tx, 5), rx)
    }

    fn static_params(id: &str, instance: &str, meta: &'static [u8]) -> JoinParams {
        JoinParams {
            instance_id: Some(instance.into()),
            protocols: vec![Protocol {
                name: "range".into(),
                metadata: Bytes::from_static(meta),
            }],
            ..params(id, "range")
        }
    }

    /// A restarted static member (same instance id, new member id) takes the old one's
    /// place in a Stable group without a rebalance; the old id is fenced.
    #[test]
    fn static_member_rejoin_keeps_generation() {
        let t0 = Instant::now();
        let mut g = Group::new("g".into(), Duration::from_millis(100));
        let (w1, mut r1) = waiter();
        g.join(static_params("", "i1", b"m"), false, || "a".into(), t0, w1);
        let (w2, mut r2) = waiter();
        g.join(static_params("", "i2", b"m"), false, || "b".into(), t0, w2);
        g.tick(t0 + Duration::from_millis(100));
        g.tick(t0 + Duration::from_millis(200));
        assert_eq!(r1.try_recv().map(|r| r.generation_id).ok(), Some(1));
        assert_eq!(r2.try_recv().map(|r| r.generation_id).ok(), Some(1));
        let (stx, _srx) = oneshot::channel();
        let assignments = vec![
            ("a".to_string(), Bytes::from_static(b"for-a")),
            ("b".to_string(), Bytes::from_static(b"for-b")),
        ];
        g.sync(
            "a",
            Some("i1"),
            1,
            None,
            None,
            assignments,
            t0,
            Waiter::new(stx, 5),
        );
        assert_eq!(g.state, GroupState::Stable);

        // "b" restarts: same instance id, no member id.
        let (w, mut r) = waiter();
        g.join(static_params("", "i2", b"m"), false, || "b2".into(), t0, w);
        let resp = r.try_recv().expect("answered at once");
        assert_eq!(resp.error_code, 0);
        assert_eq!(resp.generation_id, 1);
        assert_eq!(resp.member_id.as_str(), "b2");
        assert_eq!(resp.leader.as_str(), "a");
        assert_eq!(g.state, GroupState::Stable);
        // The new incarnation syncs into its predecessor's assignment.
        let (stx, mut srx) = oneshot::channel();
        g.sync(
            "b2",
            Some("i2"),
            1,
            None,
            None,
            vec![],
            t0,
            Waiter::new(stx, 5),
        );
        assert_eq!(
            srx.try_recv().map(|r| r.assignment).ok(),
            Some(Bytes::from_static(b"for-b"))
        );
        // The old incarnation is fenced.
        assert_eq!(
            g.heartbeat("b", Some("i2"), 1, t0),
            Some(ResponseError::FencedInstanceId)
        );
        assert_eq!(g.heartbeat("b2", Some("i2"), 1, t0), None);

        // The leader restarting keeps the old leader id in its answer (no reassignment).
        let (w, mut r) = waiter();
        g.join(static_params("", "i1", b"m"), false, || "a2".into(), t0, w);
        let resp = r.try_recv().expect("answered at once");
        assert_eq!((resp.generation_id, resp.leader.as_str()), (1, "a"));
        assert!(resp.members.is_empty());
        assert_eq!(g.leader.as_deref(), Some("a2"));
        assert_eq!(g.state, GroupState::Stable);
    }

    /// Driven purely by explicit `now`: initial delay is extended by a late
    /// arrival, and a member that skips the next rebalance is dropped at the
    /// rebalance timeout.
    #[test]
    fn deadlines_follow_now() {
        let t0 = Instant::now();
        let mut g = Group::new("g".into(), Duration::from_millis(100));
        let (w1, mut r1) = waiter();
        g.join(params("", "range"), false, || "a".into(), t0, w1);
        let (w2, mut r2) = waiter();
        g.join(
            params("", "range"),
            false,
            || "b".into(),
            t0 + Duration::from_millis(50),
            w2,
        );
        g.tick(t0 + Duration::from_millis(100));
        assert!(
            r1.try_recv().is_err(),
            "a new member extends the initial delay"
        );
        g.tick(t0 + Duration::from_millis(200));
        assert_eq!(r1.try_recv().map(|r| r.generation_id).ok(), Some(1));
        assert_eq!(r2.try_recv().map(|r| r.members.len()).ok(), Some(0));

        // An incompatible protocol is refused outright.
        let (w, mut r) = waiter();
        g.join(params("", "other"), false, || "x".into(), t0, w);
        assert_eq!(
            r.try_recv().map(|r| r.error_code).ok(),
            Some(ResponseError::InconsistentGroupProtocol.code())
        );

        let (stx, mut srx) = oneshot::channel();
        let t_sync = t0 + Duration::from_millis(300);
        g.sync(
            "a",
            None,
            1,
            None,
            None,
            vec![],
            t_sync,
            Waiter::new(stx, 5),
        );
        assert_eq!(srx.try_recv().map(|r| r.error_code).ok(), Some(0));
        assert_eq!(g.state, GroupState::Stable);

        // "a" rejoins (leader → rebalance); "b" stays silent past the rebalance timeout.
        let t1 = t0 + Duration::from_secs(1);
        let (w, mut r) = waiter();
        g.join(params("a", "range"), false, || unreachable!(), t1, w);
        assert_eq!(g.state, GroupState::PreparingRebalance);
        assert_eq!(
            g.heartbeat("b", None, 1, t1),
            Some(ResponseError::RebalanceInProgress)
        );
        // "b" keeps heartbeating (so its session holds) but never rejoins.
        for k in 1..=5 {
            let t = t1 + Duration::from_secs(5 * k);
            g.heartbeat("b", None, 1, t);
            g.tick(t);
            assert!(r.try_recv().is_err());
        }
        g.tick(t1 + Duration::from_secs(30));
        let resp = r
            .try_recv()
            .expect("join completes at the rebalance timeout");
        assert_eq!((resp.generation_id, resp.members.len()), (2, 1));
        assert_eq!(g.members.len(), 1);
    }
}

//! The consumer group protocol of KIP-848 (`group.protocol=consumer`): the broker
//! computes assignments, and each member reconciles towards its share through one
//! heartbeat RPC, with no stop-the-world rebalance.
//!
//! This is the pure state machine of one group, as Kafka defines it
//! (`GroupMetadataManager`, `CurrentAssignmentBuilder`): no I/O, no clock (times travel
//! in the calls), so it can be applied identically wherever a group's state is kept and
//! property-tested against a model of the clients.
//!
//! - Three epochs. The group epoch moves whenever what the assignment depends on
//!   changes (members, subscriptions, the subscribed topics' partitions); the
//!   target-assignment epoch catches up with it when the assignor runs; each member's
//!   epoch catches up with the target's as the member reconciles.
//! - A member gives up a partition before anyone else gets it. A member losing
//!   partitions stays at its epoch, told to keep only the rest (UNREVOKED_PARTITIONS),
//!   until a heartbeat shows it no longer owns them; a member gaining a partition still
//!   owned by another waits for it (UNRELEASED_PARTITIONS). So no partition is ever owned
//!   by two members at once.
//! - Member epochs in requests: 0 joins, -1 leaves, -2 leaves for now (a static member
//!   keeps its assignment until its session times out); otherwise the member's epoch,
//!   or the one before it when the last answer was lost.

pub mod assign;
mod groups;
mod record;

pub use self::groups::{Caller, ConsumerGroups, Described, Write};

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::error::ResponseError;

/// A topic's id (Kafka's UUID).
pub type TopicId = [u8; 16];
/// Partitions by topic id.
pub type Assignment = BTreeMap<TopicId, BTreeSet<i32>>;

/// Member epoch of a join request.
pub const JOIN_EPOCH: i32 = 0;
/// Member epoch of a leave request.
pub const LEAVE_EPOCH: i32 = -1;
/// Member epoch of a static member leaving for now.
pub const STATIC_LEAVE_EPOCH: i32 = -2;

/// Broker-level settings of consumer groups (Kafka's `group.consumer.*`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub heartbeat_interval_ms: i32,
    pub session_timeout_ms: i64,
    /// Members per group.
    pub max_size: usize,
    /// The assignors members may ask for (Kafka's `group.consumer.assignors`); the first
    /// is the default.
    pub assignors: Vec<String>,
}

/// A group's own `consumer.session.timeout.ms` (Kafka's GROUP config resource).
pub const SESSION_TIMEOUT_CONFIG: &str = "consumer.session.timeout.ms";
/// A group's own `consumer.heartbeat.interval.ms`.
pub const HEARTBEAT_INTERVAL_CONFIG: &str = "consumer.heartbeat.interval.ms";

/// What a group's own configs replace of the broker's [`Settings`]; they take effect at
/// the group's next heartbeat, as in Kafka.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    pub heartbeat_interval_ms: Option<i32>,
    pub session_timeout_ms: Option<i64>,
}

impl Overrides {
    /// From the configs set on the group (validated when they were set; anything that
    /// does not parse is left to the broker's setting).
    pub fn from_configs(configs: &BTreeMap<String, String>) -> Self {
        Self {
            heartbeat_interval_ms: configs
                .get(HEARTBEAT_INTERVAL_CONFIG)
                .and_then(|v| v.trim().parse().ok()),
            session_timeout_ms: configs
                .get(SESSION_TIMEOUT_CONFIG)
                .and_then(|v| v.trim().parse().ok()),
        }
    }
}

impl Settings {
    /// The settings for a group with `overrides`: borrowed when it has none.
    pub fn with(&self, overrides: Overrides) -> std::borrow::Cow<'_, Settings> {
        if overrides == Overrides::default() {
            return std::borrow::Cow::Borrowed(self);
        }
        let mut settings = self.clone();
        if let Some(ms) = overrides.heartbeat_interval_ms {
            settings.heartbeat_interval_ms = ms;
        }
        if let Some(ms) = overrides.session_timeout_ms {
            settings.session_timeout_ms = ms;
        }
        std::borrow::Cow::Owned(settings)
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 5_000,
            session_timeout_ms: 45_000,
            max_size: 1_000,
            assignors: assign::ASSIGNORS.iter().map(|a| (*a).to_owned()).collect(),
        }
    }
}

/// A member's reconciliation state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// At the target epoch, owning its whole target.
    Stable,
    /// Must give up `pending_revocation` before moving to the target epoch.
    UnrevokedPartitions,
    /// At the target epoch, waiting for partitions other members still own.
    UnreleasedPartitions,
}

/// The group's state, as ConsumerGroupDescribe reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    Assigning,
    Reconciling,
    Stable,
}

impl GroupState {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::Assigning => "Assigning",
            GroupState::Reconciling => "Reconciling",
            GroupState::Stable => "Stable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub subscribed_topics: BTreeSet<String>,
    pub server_assignor: Option<String>,
    pub rebalance_timeout_ms: i64,
    pub member_epoch: i32,
    pub previous_member_epoch: i32,
    pub state: MemberState,
    /// What the member may own now.
    pub assigned: Assignment,
    /// What it must give up before taking more.
    pub pending_revocation: Assignment,
    pub last_heartbeat_ms: i64,
    /// Since when it has had partitions to give up (the rebalance timeout counts from here).
    pub revoking_since_ms: Option<i64>,
}

/// One heartbeat's fields; `None` is Kafka's null, "unchanged since the last one".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Heartbeat {
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub rebalance_timeout_ms: Option<i64>,
    pub subscribed_topics: Option<BTreeSet<String>>,
    pub server_assignor: Option<String>,
    /// The partitions the member owns now.
    pub owned: Option<Assignment>,
}

/// A heartbeat's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatReply {
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval_ms: i32,
    /// Sent when it changed (or on a join): what the member should own.
    pub assignment: Option<Assignment>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatError {
    #[error("the member is not known in the group")]
    UnknownMemberId,
    #[error("the member epoch is not the member's current epoch")]
    FencedMemberEpoch,
    #[error("{0}")]
    InvalidRequest(&'static str),
    #[error("the server assignor is not supported")]
    UnsupportedAssignor,
    #[error("the instance id is in use by another member")]
    UnreleasedInstanceId,
    #[error("the group has reached its maximum size")]
    GroupMaxSizeReached,
    #[error("the subscription's regular expression is not valid")]
    InvalidRegularExpression,
    #[error("the group is not a consumer group")]
    NotConsumerGroup,
}

impl HeartbeatError {
    pub fn code(&self) -> ResponseError {
        match self {
            Self::UnknownMemberId => ResponseError::UnknownMemberId,
            Self::FencedMemberEpoch => ResponseError::FencedMemberEpoch,
            Self::InvalidRequest(_) => ResponseError::InvalidRequest,
            Self::UnsupportedAssignor => ResponseError::UnsupportedAssignor,
            Self::UnreleasedInstanceId => ResponseError::UnreleasedInstanceId,
            Self::GroupMaxSizeReached => ResponseError::GroupMaxSizeReached,
            Self::InvalidRegularExpression => ResponseError::InvalidRegularExpression,
            Self::NotConsumerGroup => ResponseError::GroupIdNotFound,
        }
    }
}

/// One consumer group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerGroup {
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    pub members: BTreeMap<String, Member>,
    /// Each member's target assignment, at `assignment_epoch`.
    pub target: BTreeMap<String, Assignment>,
    /// The subscribed topics the target was computed for: name → (id, partitions).
    subscribed: BTreeMap<String, (TopicId, i32)>,
    /// Owner of every partition some member holds (assigned or pending revocation).
    owners: BTreeMap<(TopicId, i32), String>,
}

impl ConsumerGroup {
    pub fn state(&self) -> GroupState {
        if self.members.is_empty() {
            GroupState::Empty
        } else if self.assignment_epoch < self.group_epoch {
            GroupState::Assigning
        } else if self
            .members
            .values()
            .any(|m| m.member_epoch != self.assignment_epoch || m.state != MemberState::Stable)
        {
            GroupState::Reconciling
        } else {
            GroupState::Stable
        }
    }

    /// The member holding `partition`, if any.
    pub fn owner(&self, topic: TopicId, partition: i32) -> Option<&str> {
        self.owners.get(&(topic, partition)).map(String::as_str)
    }

    /// Applies one heartbeat. `topics` are the cluster's topics (name → id, partition
    /// count); `now_ms` the coordinator's clock.
    pub fn heartbeat(
        &mut self,
        hb: Heartbeat,
        topics: &BTreeMap<String, (TopicId, i32)>,
        settings: &Settings,
        now_ms: i64,
    ) -> Result<HeartbeatReply, HeartbeatError> {
        if hb.member_id.is_empty() {
            return Err(HeartbeatError::InvalidRequest("MemberId can't be empty."));
        }
        if let Some(a) = &hb.server_assignor {
            if !settings.assignors.iter().any(|known| known == a) {
                return Err(HeartbeatError::UnsupportedAssignor);
            }
        }
        match hb.member_epoch {
            LEAVE_EPOCH => return Ok(self.leave(&hb.member_id, settings)),
            STATIC_LEAVE_EPOCH => {
                let Some(m) = self.members.get_mut(&hb.member_id) else {
                    return Err(HeartbeatError::UnknownMemberId);
                };
                // Kept, with its partitions, until the session times out or it returns.
                m.member_epoch = STATIC_LEAVE_EPOCH;
                m.last_heartbeat_ms = now_ms;
                return Ok(HeartbeatReply {
                    member_id: hb.member_id,
                    member_epoch: STATIC_LEAVE_EPOCH,
                    heartbeat_interval_ms: 0,
                    assignment: None,
                });
            }
            JOIN_EPOCH => self.join(&hb, settings, now_ms)?,
            epoch if epoch > 0 => self.check_epoch(&hb)?,
            _ => return Err(HeartbeatError::InvalidRequest("MemberEpoch is invalid.")),
        }
        let joined = hb.member_epoch == JOIN_EPOCH;
        let Some(member) = self.members.get_mut(&hb.member_id) else {
            return Err(HeartbeatError::UnknownMemberId);
        };
        member.last_heartbeat_ms = now_ms;
        let mut changed = false;
        if let Some(topics) = hb.subscribed_topics {
            changed |= member.subscribed_topics != topics;
            member.subscribed_topics = topics;
        }
        if hb.server_assignor.is_some() && member.server_assignor != hb.server_assignor {
            member.server_assignor = hb.server_assignor;
            changed = true;
        }
        if hb.rack_id.is_some() {
            member.rack_id = hb.rack_id;
        }
        if let Some(ms) = hb.rebalance_timeout_ms.filter(|ms| *ms > 0) {
            member.rebalance_timeout_ms = ms;
        }
        if changed {
            self.group_epoch += 1;
        }
        self.refresh_subscription(topics);
        if self.assignment_epoch < self.group_epoch {
            self.compute_target(settings);
        }
        let before = self.members.get(&hb.member_id).map(|m| m.assigned.clone());
        self.reconcile(&hb.member_id, hb.owned.as_ref(), now_ms);
        let member = self
            .members
            .get(&hb.member_id)
            .ok_or(HeartbeatError::UnknownMemberId)?;
        let send = joined || before.as_ref() != Some(&member.assigned);
        Ok(HeartbeatReply {
            member_id: member.member_id.clone(),
            member_epoch: member.member_epoch,
            heartbeat_interval_ms: settings.heartbeat_interval_ms,
            assignment: send.then(|| member.assigned.clone()),
        })
    }

    /// Members whose session (`settings.session_timeout_ms` since their last heartbeat)
    /// or whose rebalance timeout (for giving up partitions) ran out are fenced: removed,
    /// their partitions freed. Returns them.
    pub fn expire(&mut self, settings: &Settings, now_ms: i64) -> Vec<String> {
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| {
                now_ms.saturating_sub(m.last_heartbeat_ms) > settings.session_timeout_ms
                    || m.revoking_since_ms
                        .is_some_and(|since| now_ms.saturating_sub(since) > m.rebalance_timeout_ms)
            })
            .map(|m| m.member_id.clone())
            .collect();
        for id in &gone {
            self.remove(id);
        }
        gone
    }

    fn join(
        &mut self,
        hb: &Heartbeat,
        settings: &Settings,
        now_ms: i64,
    ) -> Result<(), HeartbeatError> {
        if hb.subscribed_topics.is_none() {
            return Err(HeartbeatError::InvalidRequest(
                "SubscribedTopicNames must be set in first request.",
            ));
        }
        if hb.rebalance_timeout_ms.is_none() {
            return Err(HeartbeatError::InvalidRequest(
                "RebalanceTimeoutMs must be provided in first request.",
            ));
        }
        // A static member coming back takes over its previous self, assignment included.
        let previous = hb.instance_id.as_ref().and_then(|instance| {
            self.members
                .values()
                .find(|m| m.instance_id.as_ref() == Some(instance))
                .map(|m| (m.member_id.clone(), m.member_epoch))
        });
        if let Some((old_id, old_epoch)) = previous {
            if old_id != hb.member_id && old_epoch != STATIC_LEAVE_EPOCH {
                return Err(HeartbeatError::UnreleasedInstanceId);
            }
            if let Some(mut old) = self.members.remove(&old_id) {
                let target = self.target.remove(&old_id);
                for key in partitions(&old.assigned).chain(partitions(&old.pending_revocation)) {
                    self.owners.insert(key, hb.member_id.clone());
                }
                old.member_id = hb.member_id.clone();
                old.member_epoch = old.previous_member_epoch.max(0);
                old.last_heartbeat_ms = now_ms;
                if let Some(t) = target {
                    self.target.insert(hb.member_id.clone(), t);
                }
                self.members.insert(hb.member_id.clone(), old);
                return Ok(());
            }
        }
        if let Some(m) = self.members.get(&hb.member_id) {
            // A member that rejoins with epoch 0 starts over: it lost what it had.
            if m.member_epoch != JOIN_EPOCH {
                self.remove(&hb.member_id);
            } else {
                return Ok(());
            }
        }
        if self.members.len() >= settings.max_size {
            return Err(HeartbeatError::GroupMaxSizeReached);
        }
        self.members.insert(
            hb.member_id.clone(),
            Member {
                member_id: hb.member_id.clone(),
                instance_id: hb.instance_id.clone(),
                rack_id: None,
                subscribed_topics: BTreeSet::new(),
                server_assignor: None,
                rebalance_timeout_ms: 0,
                member_epoch: JOIN_EPOCH,
                previous_member_epoch: JOIN_EPOCH,
                state: MemberState::Stable,
                assigned: Assignment::new(),
                pending_revocation: Assignment::new(),
                last_heartbeat_ms: now_ms,
                revoking_since_ms: None,
            },
        );
        self.group_epoch += 1;
        Ok(())
    }

    /// Kafka's epoch check: the member's epoch, or the one before it when the member
    /// owns nothing beyond what it was given (the last answer was lost).
    fn check_epoch(&self, hb: &Heartbeat) -> Result<(), HeartbeatError> {
        let m = self
            .members
            .get(&hb.member_id)
            .ok_or(HeartbeatError::UnknownMemberId)?;
        if hb.member_epoch == m.member_epoch {
            return Ok(());
        }
        let owned_within = hb.owned.as_ref().is_some_and(|owned| {
            partitions(owned).all(|(t, p)| m.assigned.get(&t).is_some_and(|s| s.contains(&p)))
        });
        if hb.member_epoch == m.previous_member_epoch && owned_within {
            return Ok(());
        }
        Err(HeartbeatError::FencedMemberEpoch)
    }

    fn leave(&mut self, member_id: &str, settings: &Settings) -> HeartbeatReply {
        self.remove(member_id);
        HeartbeatReply {
            member_id: member_id.to_owned(),
            member_epoch: LEAVE_EPOCH,
            heartbeat_interval_ms: settings.heartbeat_interval_ms,
            assignment: None,
        }
    }

    fn remove(&mut self, member_id: &str) {
        if self.members.remove(member_id).is_some() {
            self.owners.retain(|_, owner| owner != member_id);
            self.target.remove(member_id);
            self.group_epoch += 1;
        }
    }

    /// The subscribed topics as the cluster has them now; a change (a topic created,
    /// deleted or given partitions) moves the group epoch.
    fn refresh_subscription(&mut self, topics: &BTreeMap<String, (TopicId, i32)>) {
        let names: BTreeSet<&String> = self
            .members
            .values()
            .flat_map(|m| m.subscribed_topics.iter())
            .collect();
        let now: BTreeMap<String, (TopicId, i32)> = names
            .into_iter()
            .filter_map(|n| topics.get(n).map(|t| (n.clone(), *t)))
            .collect();
        if now != self.subscribed {
            self.subscribed = now;
            self.group_epoch += 1;
        }
    }

    fn compute_target(&mut self, settings: &Settings) {
        let ids: BTreeMap<&String, TopicId> = self
            .subscribed
            .iter()
            .map(|(n, (id, _))| (n, *id))
            .collect();
        let specs: BTreeMap<String, assign::MemberSpec<'_>> = self
            .members
            .iter()
            .map(|(id, m)| {
                let topics = m
                    .subscribed_topics
                    .iter()
                    .filter_map(|n| ids.get(n).copied())
                    .collect();
                (
                    id.clone(),
                    assign::MemberSpec {
                        topics,
                        previous: self.target.get(id),
                    },
                )
            })
            .collect();
        let counts: BTreeMap<TopicId, i32> = self.subscribed.values().copied().collect();
        // The most requested assignor among the members, else the default.
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some(a) = &m.server_assignor {
                *votes.entry(a.as_str()).or_default() += 1;
            }
        }
        let assignor = votes
            .iter()
            .max_by_key(|(name, n)| (**n, std::cmp::Reverse(**name)))
            .map_or(
                settings
                    .assignors
                    .first()
                    .map_or(assign::ASSIGNORS[0], String::as_str),
                |(name, _)| name,
            );
        self.target = assign::assign(assignor, &specs, &counts);
        self.assignment_epoch = self.group_epoch;
    }

    /// Moves one member towards its target (Kafka's `CurrentAssignmentBuilder`).
    fn reconcile(&mut self, member_id: &str, owned: Option<&Assignment>, now_ms: i64) {
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let epoch = self.assignment_epoch;
        let Some(m) = self.members.get(member_id) else {
            return;
        };
        // Revocations the member has done (it no longer reports those partitions) free them.
        if m.state == MemberState::UnrevokedPartitions {
            let still_owned = owned.is_none_or(|owned| {
                partitions(&m.pending_revocation)
                    .any(|(t, p)| owned.get(&t).is_some_and(|s| s.contains(&p)))
            });
            if still_owned {
                return;
            }
            let freed: Vec<(TopicId, i32)> = partitions(&m.pending_revocation).collect();
            for key in freed {
                self.owners.remove(&key);
            }
            if let Some(m) = self.members.get_mut(member_id) {
                // Done: a further revocation gets its own rebalance timeout.
                m.pending_revocation = Assignment::new();
                m.revoking_since_ms = None;
            }
        } else if m.state == MemberState::Stable && m.member_epoch == epoch {
            return;
        }
        let Some(m) = self.members.get(member_id) else {
            return;
        };
        let mut kept = Assignment::new();
        let mut revoking = Assignment::new();
        let mut unreleased = false;
        for (topic, current) in &m.assigned {
            let want = target.get(topic);
            for &p in current {
                let to = if want.is_some_and(|w| w.contains(&p)) {
                    &mut kept
                } else {
                    &mut revoking
                };
                to.entry(*topic).or_default().insert(p);
            }
        }
        let mut gained = Vec::new();
        for (topic, want) in &target {
            for &p in want {
                if kept.get(topic).is_some_and(|s| s.contains(&p)) {
                    continue;
                }
                match self.owners.get(&(*topic, p)) {
                    Some(other) if other != member_id => unreleased = true,
                    _ => gained.push((*topic, p)),
                }
            }
        }
        let Some(m) = self.members.get_mut(member_id) else {
            return;
        };
        if !revoking.is_empty() {
            // Give up first, at the same epoch.
            m.assigned = kept;
            m.pending_revocation = revoking;
            m.state = MemberState::UnrevokedPartitions;
            m.revoking_since_ms.get_or_insert(now_ms);
            return;
        }
        for &(topic, p) in &gained {
            kept.entry(topic).or_default().insert(p);
        }
        m.assigned = kept;
        m.pending_revocation = Assignment::new();
        m.revoking_since_ms = None;
        if m.member_epoch != epoch {
            m.previous_member_epoch = m.member_epoch;
            m.member_epoch = epoch;
        }
        m.state = if unreleased {
            MemberState::UnreleasedPartitions
        } else {
            MemberState::Stable
        };
        for key in gained {
            self.owners.insert(key, member_id.to_owned());
        }
    }
}

fn partitions(a: &Assignment) -> impl Iterator<Item = (TopicId, i32)> + '_ {
    a.iter()
        .flat_map(|(t, ps)| ps.iter().map(move |p| (*t, *p)))
}

#[cfg(test)]
mod tests;

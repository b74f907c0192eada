//! Consumer group coordinator for Kafka's classic group protocol
//! (JoinGroup/SyncGroup/Heartbeat/LeaveGroup/DescribeGroups/ListGroups).
//!
//! The state machine lives in [`state`] and is pure (it takes `now`); this
//! module is the async shell: it owns the group map, parks JoinGroup/SyncGroup
//! callers on oneshot channels and runs a ticker that expires sessions and
//! fires rebalance deadlines.

pub mod consumer;
mod describe;
mod member_id;
mod responses;
mod state;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{
    DescribeGroupsRequest, DescribeGroupsResponse, HeartbeatRequest, HeartbeatResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
    ListGroupsResponse, SyncGroupRequest, SyncGroupResponse,
};
use tokio::sync::oneshot;
use tokio::time::{Duration, Instant};

pub use self::state::GroupState;
use self::state::{Group, JoinParams, Protocol, Waiter};

/// How often the background task checks session expiry and join deadlines.
const TICK: Duration = Duration::from_millis(50);

#[derive(Clone, Debug)]
pub struct GroupOptions {
    /// Kafka's group.initial.rebalance.delay.ms. Kafka defaults to 3s; we use
    /// 100ms: enough for consumers started together (each doing the
    /// MEMBER_ID_REQUIRED round trip) to land in one generation — the delay is
    /// extended while new members keep arriving — without making every fresh
    /// single consumer wait seconds for its first assignment.
    pub initial_rebalance_delay: Duration,
    /// group.min.session.timeout.ms (6s).
    pub min_session_timeout: Duration,
    /// group.max.session.timeout.ms (30 min).
    pub max_session_timeout: Duration,
    /// The consumer protocol's `group.consumer.*` settings.
    pub consumer: consumer::Settings,
}

impl Default for GroupOptions {
    fn default() -> Self {
        GroupOptions {
            initial_rebalance_delay: Duration::from_millis(100),
            min_session_timeout: Duration::from_secs(6),
            max_session_timeout: Duration::from_secs(30 * 60),
            consumer: consumer::Settings::default(),
        }
    }
}

/// Takes a consumer-protocol group's write to the metadata log (in the background).
pub type ConsumerWriter = Box<dyn Fn(String, consumer::Write) + Send + Sync>;

pub struct GroupCoordinator {
    config: GroupOptions,
    groups: Mutex<HashMap<String, Group>>,
    /// Groups of the consumer protocol (KIP-848), in their own map: a group id is one or
    /// the other.
    consumer: consumer::ConsumerGroups,
    /// Where the ticker's consumer-group writes (members fenced) go: the broker sets it.
    consumer_writer: std::sync::OnceLock<ConsumerWriter>,
    shut_down: AtomicBool,
}

fn opt_str(v: &Option<kafka_protocol::protocol::StrBytes>) -> Option<&str> {
    v.as_ref().map(|s| s.as_str())
}

impl GroupCoordinator {
    /// Spawns the expiry ticker if called inside a tokio runtime; the ticker
    /// only holds a `Weak` and stops on shutdown or when the coordinator drops.
    pub fn new(config: GroupOptions) -> Arc<Self> {
        let this = Arc::new(GroupCoordinator {
            consumer: consumer::ConsumerGroups::new(config.consumer.clone()),
            config,
            groups: Mutex::new(HashMap::new()),
            consumer_writer: std::sync::OnceLock::new(),
            shut_down: AtomicBool::new(false),
        });
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(Self::ticker(Arc::downgrade(&this)));
            }
            Err(_) => tracing::warn!("no tokio runtime: group session expiry disabled"),
        }
        this
    }

    async fn ticker(weak: Weak<Self>) {
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let Some(this) = weak.upgrade() else { break };
            if this.shut_down.load(Ordering::Relaxed) {
                break;
            }
            this.tick(Instant::now());
        }
    }

    /// Drive timeouts for every group (exposed to tests for deterministic time).
    fn tick(&self, now: Instant) {
        for g in self.lock().values_mut() {
            g.tick(now);
        }
        for (group, write) in self.consumer.expire(now) {
            if let Some(writer) = self.consumer_writer.get() {
                writer(group, write);
            }
        }
    }

    /// Sets where fenced members' writes go (once; later calls are ignored).
    pub fn set_consumer_writer(&self, writer: ConsumerWriter) {
        let _ = self.consumer_writer.set(writer);
    }

    /// The consumer-protocol groups this broker coordinates.
    pub fn consumer(&self) -> &consumer::ConsumerGroups {
        &self.consumer
    }

    /// Whether `group` is a classic group with members (a consumer-protocol member may
    /// not join it).
    pub fn is_active_classic(&self, group: &str) -> bool {
        self.lock()
            .get(group)
            .is_some_and(|g| !g.members.is_empty())
    }

    /// A poisoned lock only means another request panicked; the map is still usable.
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Group>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub async fn join_group(
        &self,
        req: JoinGroupRequest,
        version: i16,
        client_id: &str,
        client_host: &str,
    ) -> JoinGroupResponse {
        let member_id = req.member_id.to_string();
        let fail = |e: ResponseError| responses::join_error(version, e, &member_id);
        if self.shut_down.load(Ordering::Relaxed) {
            return fail(ResponseError::CoordinatorNotAvailable);
        }
        let group_id = req.group_id.0.to_string();
        if group_id.is_empty() {
            return fail(ResponseError::InvalidGroupId);
        }
        let session_timeout = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
        if session_timeout < self.config.min_session_timeout
            || session_timeout > self.config.max_session_timeout
        {
            return fail(ResponseError::InvalidSessionTimeout);
        }
        // A group of the consumer protocol takes no classic members (Kafka's answer
        // when it cannot convert the group).
        if req.protocol_type.is_empty()
            || req.protocols.is_empty()
            || self.consumer.contains(&group_id)
        {
            return fail(ResponseError::InconsistentGroupProtocol);
        }
        // v0 has no rebalance timeout; Kafka uses the session timeout then.
        let rebalance_timeout = if req.rebalance_timeout_ms > 0 {
            Duration::from_millis(req.rebalance_timeout_ms as u64)
        } else {
            session_timeout
        };
        let instance_id = opt_str(&req.group_instance_id).map(str::to_string);
        // Kafka skips the MEMBER_ID_REQUIRED round trip for static members.
        let require_known_id = version >= 4 && instance_id.is_none();
        let params = JoinParams {
            member_id: member_id.clone(),
            instance_id,
            client_id: client_id.to_string(),
            client_host: client_host.to_string(),
            session_timeout,
            rebalance_timeout,
            protocol_type: req.protocol_type.to_string(),
            protocols: req
                .protocols
                .into_iter()
                .map(|p| Protocol {
                    name: p.name.to_string(),
                    metadata: p.metadata,
                })
                .collect(),
        };
        let (tx, rx) = oneshot::channel();
        {
            let mut groups = self.lock();
            if !groups.contains_key(&group_id) && !member_id.is_empty() {
                return fail(ResponseError::UnknownMemberId);
            }
            let delay = self.config.initial_rebalance_delay;
            let group = groups
                .entry(group_id.clone())
                .or_insert_with(|| Group::new(group_id, delay));
            group.join(
                params,
                require_known_id,
                || member_id::generate(client_id),
                Instant::now(),
                Waiter::new(tx, version),
            );
        }
        // A dropped waiter means the coordinator went away mid-join.
        rx.await
            .unwrap_or_else(|_| fail(ResponseError::CoordinatorNotAvailable))
    }

    pub async fn sync_group(&self, req: SyncGroupRequest, version: i16) -> SyncGroupResponse {
        if self.shut_down.load(Ordering::Relaxed) {
            return responses::sync_error(ResponseError::CoordinatorNotAvailable);
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut groups = self.lock();
            let Some(group) = groups.get_mut(req.group_id.as_str()) else {
                return responses::sync_error(ResponseError::UnknownMemberId);
            };
            let assignments: Vec<(String, Bytes)> = req
                .assignments
                .into_iter()
                .map(|a| (a.member_id.to_string(), a.assignment))
                .collect();
            group.sync(
                &req.member_id,
                opt_str(&req.group_instance_id),
                req.generation_id,
                opt_str(&req.protocol_type),
                opt_str(&req.protocol_name),
                assignments,
                Instant::now(),
                Waiter::new(tx, version),
            );
        }
        rx.await
            .unwrap_or_else(|_| responses::sync_error(ResponseError::CoordinatorNotAvailable))
    }

    pub async fn heartbeat(&self, req: HeartbeatRequest, _version: i16) -> HeartbeatResponse {
        if self.shut_down.load(Ordering::Relaxed) {
            return responses::heartbeat(Some(ResponseError::CoordinatorNotAvailable));
        }
        let mut groups = self.lock();
        let err = match groups.get_mut(req.group_id.as_str()) {
            None => Some(ResponseError::UnknownMemberId),
            Some(g) => g.heartbeat(
                &req.member_id,
                opt_str(&req.group_instance_id),
                req.generation_id,
                Instant::now(),
            ),
        };
        responses::heartbeat(err)
    }

    pub async fn leave_group(&self, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
        // v0-2 name one member; v3+ carry a batch with per-member results.
        let leaving: Vec<(String, Option<String>)> = if version >= 3 {
            req.members
                .iter()
                .map(|m| {
                    (
                        m.member_id.to_string(),
                        opt_str(&m.group_instance_id).map(str::to_string),
                    )
                })
                .collect()
        } else {
            vec![(req.member_id.to_string(), None)]
        };
        let now = Instant::now();
        let mut groups = self.lock();
        let group = groups.get_mut(req.group_id.as_str());
        let results: Vec<(String, Option<String>, Option<ResponseError>)> = match group {
            None => leaving
                .into_iter()
                .map(|(m, i)| (m, i, Some(ResponseError::UnknownMemberId)))
                .collect(),
            Some(g) => leaving
                .into_iter()
                .map(|(m, i)| {
                    let err = g.leave(&m, i.as_deref(), now);
                    (m, i, err)
                })
                .collect(),
        };
        drop(groups);
        let code = |e: Option<ResponseError>| e.map_or(0, |e| e.code());
        if version >= 3 {
            let members = results
                .into_iter()
                .map(|(m, i, e)| {
                    MemberResponse::default()
                        .with_member_id(responses::s(&m))
                        .with_group_instance_id(i.as_deref().map(responses::s))
                        .with_error_code(code(e))
                })
                .collect();
            // Kafka reports per-member errors here, even for an unknown group.
            LeaveGroupResponse::default().with_members(members)
        } else {
            let err = results.into_iter().next().and_then(|(_, _, e)| e);
            LeaveGroupResponse::default().with_error_code(code(err))
        }
    }

    /// `access(group)`: None when the principal may not describe it
    /// (GROUP_AUTHORIZATION_FAILED), else its KIP-430 operations field.
    /// `has_offsets(group)`: the group has committed offsets, so a group without members
    /// here is Empty rather than Dead.
    pub fn describe_groups(
        &self,
        req: DescribeGroupsRequest,
        version: i16,
        access: impl Fn(&str) -> Option<i32>,
        has_offsets: impl Fn(&str) -> bool,
    ) -> DescribeGroupsResponse {
        let groups = self.lock();
        let described = req
            .groups
            .iter()
            .map(|id| match access(id.as_str()) {
                // As Kafka: DescribeGroups is the classic protocol's; a consumer group is
                // described by ConsumerGroupDescribe.
                Some(ops) if self.consumer.contains(id.as_str()) => DescribedGroup::default()
                    .with_group_id(id.clone())
                    .with_error_code(ResponseError::GroupIdNotFound.code())
                    .with_error_message(Some(kafka_protocol::protocol::StrBytes::from_string(
                        format!("Group {} is not a classic group.", id.as_str()),
                    )))
                    .with_authorized_operations(ops),
                Some(ops) => {
                    let group = groups.get(id.as_str());
                    let offsets = group.is_none() && has_offsets(id.as_str());
                    describe::describe(group, id, version, offsets).with_authorized_operations(ops)
                }
                None => DescribedGroup::default()
                    .with_group_id(id.clone())
                    .with_error_code(ResponseError::GroupAuthorizationFailed.code())
                    .with_authorized_operations(crate::security::acl::NOT_REQUESTED),
            })
            .collect();
        DescribeGroupsResponse::default().with_groups(described)
    }

    /// Groups known only through committed offsets are listed as Empty "consumer" groups.
    /// Only the groups `mine` accepts (those this broker coordinates) are listed, as Kafka
    /// lists only its own coordinator's, so a client merging every broker's list sees each
    /// group once.
    pub fn list_groups(
        &self,
        req: ListGroupsRequest,
        version: i16,
        groups_with_offsets: &[String],
        mine: impl Fn(&str) -> bool,
    ) -> ListGroupsResponse {
        let states: Vec<String> = if version >= 4 {
            req.states_filter.iter().map(|s| s.to_string()).collect()
        } else {
            Vec::new()
        };
        let types: Vec<String> = if version >= 5 {
            req.types_filter.iter().map(|s| s.to_string()).collect()
        } else {
            Vec::new()
        };
        let consumer: Vec<(String, &'static str)> = self
            .consumer
            .list()
            .into_iter()
            .map(|(id, state)| (id, state.as_str()))
            .collect();
        describe::list(
            &self.lock(),
            &consumer,
            &states,
            &types,
            groups_with_offsets,
            mine,
            version,
        )
    }

    /// Validate an OffsetCommit against group membership, as Kafka does.
    /// generation -1 + empty member id is a standalone commit, allowed only
    /// while the group has no members. `None` means the commit may proceed.
    /// `consumer_version_ok`: the request may come from a consumer-protocol member
    /// (OffsetCommit v9+, or a transactional commit).
    pub fn check_offset_commit(
        &self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
        consumer_version_ok: bool,
    ) -> Option<ResponseError> {
        if let Some(refusal) = self.consumer.check_offset_commit(
            group_id,
            member_id,
            generation_id,
            consumer_version_ok,
        ) {
            return refusal;
        }
        match self.lock().get(group_id) {
            Some(g) => g.check_offset_commit(generation_id, member_id, group_instance_id),
            // Unknown group: fine for standalone commits, stale otherwise.
            None if generation_id < 0 => None,
            None => Some(ResponseError::IllegalGeneration),
        }
    }

    /// DeleteGroups: a group with members is NON_EMPTY_GROUP; an Empty one is dropped
    /// from memory. Ok(true) when the group was known here (its committed offsets, if
    /// any, are the caller's to delete).
    pub fn delete_group(&self, group_id: &str) -> Result<bool, ResponseError> {
        if self.consumer.contains(group_id) {
            return Err(ResponseError::NonEmptyGroup);
        }
        let mut groups = self.lock();
        match groups.get(group_id) {
            None => Ok(false),
            Some(g) if g.state != GroupState::Empty || !g.members.is_empty() => {
                Err(ResponseError::NonEmptyGroup)
            }
            Some(_) => {
                groups.remove(group_id);
                Ok(true)
            }
        }
    }

    /// What OffsetDelete needs to know about a live group: None when the group has no
    /// members here; otherwise its protocol type and the topics its members subscribe to
    /// (read from the consumer protocol's subscription metadata).
    pub fn active_subscriptions(
        &self,
        group_id: &str,
    ) -> Option<(Option<String>, std::collections::BTreeSet<String>)> {
        if let Some(d) = self.consumer.describe(group_id) {
            let topics = d
                .group
                .members
                .values()
                .flat_map(|m| m.subscribed_topics.iter().cloned())
                .collect();
            return Some((Some("consumer".to_owned()), topics));
        }
        let groups = self.lock();
        let g = groups.get(group_id)?;
        if g.members.is_empty() {
            return None;
        }
        let topics = g
            .members
            .iter()
            .flat_map(|m| m.protocols.iter())
            .flat_map(|p| subscribed_topics(&p.metadata))
            .collect();
        Some((g.protocol_type.clone(), topics))
    }

    /// Stop the ticker and fail every parked request (they see COORDINATOR_NOT_AVAILABLE).
    pub fn shutdown(&self) {
        self.shut_down.store(true, Ordering::Relaxed);
        self.lock().clear();
        self.consumer.clear();
    }
}

/// The topics of a consumer protocol Subscription (version, then an array of topic
/// names); anything unparseable yields no topics.
pub(crate) fn subscribed_topics(metadata: &[u8]) -> Vec<String> {
    fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if buf.len() < n {
            return None;
        }
        let (head, rest) = buf.split_at(n);
        *buf = rest;
        Some(head)
    }
    fn parse(mut buf: &[u8]) -> Option<Vec<String>> {
        let _version = take(&mut buf, 2)?;
        let count = take(&mut buf, 4)?;
        let count = i32::from_be_bytes([count[0], count[1], count[2], count[3]]);
        let mut topics = Vec::new();
        for _ in 0..count.max(0) {
            let len = take(&mut buf, 2)?;
            let len = usize::try_from(i16::from_be_bytes([len[0], len[1]])).ok()?;
            let name = take(&mut buf, len)?;
            topics.push(String::from_utf8_lossy(name).into_owned());
        }
        Some(topics)
    }
    parse(metadata).unwrap_or_default()
}

#[cfg(test)]
mod subscription_tests {
    #[test]
    fn subscription_topics_are_parsed_and_garbage_ignored() {
        let mut meta = vec![0, 1, 0, 0, 0, 2, 0, 1, b'a', 0, 2, b'b', b'c'];
        meta.extend_from_slice(&[0, 0, 0, 0]); // user data
        assert_eq!(super::subscribed_topics(&meta), vec!["a", "bc"]);
        assert!(super::subscribed_topics(&[0, 1, 0, 0, 0, 9, 0]).is_empty());
        assert!(super::subscribed_topics(&[]).is_empty());
    }
}

//! The groups of the consumer protocol this broker coordinates: the shell around the
//! pure [`ConsumerGroup`], kept in memory as classic groups are, with its own monotonic
//! clock (milliseconds since the coordinator started) for sessions and rebalance
//! timeouts.
//!
//! A group lives while it has members; its committed offsets live in the metadata log,
//! so an empty group is dropped and memory follows the members, not the groups ever
//! seen. A group lost with its coordinator (a broker's death, a move) is rebuilt by its
//! members: a heartbeat for a member this coordinator does not know gets
//! UNKNOWN_MEMBER_ID and the client joins again at epoch 0.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use kafka_protocol::error::ResponseError;
use tokio::time::Instant;

use super::{
    ConsumerGroup, GroupState, Heartbeat, HeartbeatError, HeartbeatReply, Settings, TopicId,
    JOIN_EPOCH,
};

/// A subscription pattern of one member (KIP-848's `SubscribedTopicRegex`), matched
/// against whole topic names as Kafka's RE2/J `matches()` does.
struct Pattern {
    source: String,
    regex: regex::Regex,
}

#[derive(Default)]
struct Entry {
    group: ConsumerGroup,
    /// Members subscribed by pattern: re-evaluated against the topics at each of their
    /// heartbeats, so a topic created later joins the subscription within an interval.
    patterns: HashMap<String, Pattern>,
}

/// What describing a group needs beyond the state machine: each member's pattern.
pub struct Described {
    pub group: ConsumerGroup,
    pub patterns: BTreeMap<String, String>,
}

pub struct ConsumerGroups {
    settings: Settings,
    groups: Mutex<HashMap<String, Entry>>,
    start: Instant,
}

/// Compiles a subscription pattern with full-match semantics.
pub fn compile(pattern: &str) -> Result<regex::Regex, HeartbeatError> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|_| HeartbeatError::InvalidRegularExpression)
}

impl ConsumerGroups {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            groups: Mutex::new(HashMap::new()),
            start: Instant::now(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn now_ms(&self, now: Instant) -> i64 {
        i64::try_from(now.saturating_duration_since(self.start).as_millis()).unwrap_or(i64::MAX)
    }

    /// A poisoned lock only means another request panicked; the map is still usable.
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `group` is a consumer-protocol group with members here.
    pub fn contains(&self, group: &str) -> bool {
        self.lock().contains_key(group)
    }

    /// One heartbeat. `regex` is the request's `SubscribedTopicRegex` (v1): `Some("")`
    /// clears a pattern, as Kafka treats an empty one.
    pub fn heartbeat(
        &self,
        group_id: &str,
        mut hb: Heartbeat,
        regex: Option<&str>,
        topics: &BTreeMap<String, (TopicId, i32)>,
    ) -> Result<HeartbeatReply, HeartbeatError> {
        let now_ms = self.now_ms(Instant::now());
        let pattern = match regex {
            Some(p) if !p.is_empty() => Some(Pattern {
                source: p.to_owned(),
                regex: compile(p)?,
            }),
            _ => None,
        };
        let mut groups = self.lock();
        if hb.member_epoch != JOIN_EPOCH && !groups.contains_key(group_id) {
            return Err(HeartbeatError::UnknownMemberId);
        }
        let entry = groups.entry(group_id.to_owned()).or_default();
        match (pattern, regex) {
            (Some(p), _) => {
                entry.patterns.insert(hb.member_id.clone(), p);
            }
            (None, Some(_)) => {
                entry.patterns.remove(&hb.member_id);
            }
            (None, None) => {}
        }
        if let Some(p) = entry.patterns.get(&hb.member_id) {
            // A member subscribes by names or by pattern (Kafka's clients send one or
            // the other); with a pattern, the names are what it matches now.
            let matched: BTreeSet<String> = topics
                .keys()
                .filter(|name| p.regex.is_match(name))
                .cloned()
                .collect();
            hb.subscribed_topics = Some(matched);
        }
        let member_id = hb.member_id.clone();
        let result = entry.group.heartbeat(hb, topics, &self.settings, now_ms);
        if !entry.group.members.contains_key(&member_id) {
            entry.patterns.remove(&member_id);
        }
        if entry.group.members.is_empty() {
            groups.remove(group_id);
        }
        result
    }

    /// Fences members whose session or rebalance timeout ran out.
    pub fn expire(&self, now: Instant) {
        let now_ms = self.now_ms(now);
        let mut groups = self.lock();
        for entry in groups.values_mut() {
            for gone in entry.group.expire(&self.settings, now_ms) {
                tracing::info!(member = %gone, "consumer group member fenced: its session or rebalance timeout ran out");
                entry.patterns.remove(&gone);
            }
        }
        groups.retain(|_, e| !e.group.members.is_empty());
    }

    /// Kafka's OffsetCommit check for a consumer-protocol group: None when `group` is not
    /// one here; otherwise the refusal, if any. A commit without a member (epoch < 0, no
    /// member id) is an admin's and passes; a member must use OffsetCommit v9+ (or a
    /// transactional commit) and its current epoch: an older epoch is STALE_MEMBER_EPOCH,
    /// a newer one FENCED_MEMBER_EPOCH.
    pub fn check_offset_commit(
        &self,
        group_id: &str,
        member_id: &str,
        member_epoch: i32,
        version_ok: bool,
    ) -> Option<Option<ResponseError>> {
        let groups = self.lock();
        let entry = groups.get(group_id)?;
        if member_epoch < 0 && member_id.is_empty() {
            return Some(None);
        }
        let Some(member) = entry.group.members.get(member_id) else {
            return Some(Some(ResponseError::UnknownMemberId));
        };
        if !version_ok {
            return Some(Some(ResponseError::UnsupportedVersion));
        }
        Some(match member_epoch.cmp(&member.member_epoch) {
            std::cmp::Ordering::Equal => None,
            std::cmp::Ordering::Less => Some(ResponseError::StaleMemberEpoch),
            std::cmp::Ordering::Greater => Some(ResponseError::FencedMemberEpoch),
        })
    }

    /// A copy of `group` for ConsumerGroupDescribe.
    pub fn describe(&self, group_id: &str) -> Option<Described> {
        let groups = self.lock();
        let entry = groups.get(group_id)?;
        Some(Described {
            group: entry.group.clone(),
            patterns: entry
                .patterns
                .iter()
                .map(|(m, p)| (m.clone(), p.source.clone()))
                .collect(),
        })
    }

    /// Every group here with its state, for ListGroups.
    pub fn list(&self) -> Vec<(String, GroupState)> {
        self.lock()
            .iter()
            .map(|(id, e)| (id.clone(), e.group.state()))
            .collect()
    }

    pub fn clear(&self) {
        self.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: TopicId = [1; 16];
    const T2: TopicId = [2; 16];

    fn join(id: &str, names: &[&str]) -> Heartbeat {
        Heartbeat {
            member_id: id.to_owned(),
            member_epoch: JOIN_EPOCH,
            rebalance_timeout_ms: Some(30_000),
            subscribed_topics: Some(names.iter().map(|n| (*n).to_owned()).collect()),
            owned: Some(Default::default()),
            ..Heartbeat::default()
        }
    }

    #[test]
    fn commits_are_checked_against_the_member_epoch() {
        let groups = ConsumerGroups::new(Settings::default());
        let topics = [("a".to_owned(), (T1, 2))].into();
        assert_eq!(groups.check_offset_commit("g", "m", 1, true), None);
        let reply = groups.heartbeat("g", join("m", &["a"]), None, &topics);
        let epoch = reply.map(|r| r.member_epoch).unwrap_or_default();
        assert!(epoch > 0);
        let check = |member: &str, e: i32, v9: bool| groups.check_offset_commit("g", member, e, v9);
        assert_eq!(check("m", epoch, true), Some(None));
        assert_eq!(
            check("m", epoch - 1, true),
            Some(Some(ResponseError::StaleMemberEpoch))
        );
        assert_eq!(
            check("m", epoch + 1, true),
            Some(Some(ResponseError::FencedMemberEpoch))
        );
        assert_eq!(
            check("x", epoch, true),
            Some(Some(ResponseError::UnknownMemberId))
        );
        assert_eq!(
            check("m", epoch, false),
            Some(Some(ResponseError::UnsupportedVersion))
        );
        // An admin's commit names no member.
        assert_eq!(check("", -1, false), Some(None));
        // The last member's leave drops the group.
        let leave = Heartbeat {
            member_epoch: super::super::LEAVE_EPOCH,
            ..join("m", &["a"])
        };
        assert!(groups.heartbeat("g", leave, None, &topics).is_ok());
        assert!(!groups.contains("g"));
        assert_eq!(
            groups.heartbeat(
                "g",
                Heartbeat {
                    member_epoch: epoch,
                    ..join("m", &[])
                },
                None,
                &topics
            ),
            Err(HeartbeatError::UnknownMemberId)
        );
    }

    #[test]
    fn a_pattern_matches_whole_names_and_follows_new_topics() {
        let groups = ConsumerGroups::new(Settings::default());
        let mut topics: BTreeMap<String, (TopicId, i32)> = [("orders".to_owned(), (T1, 1))].into();
        topics.insert("orders-eu".to_owned(), (T2, 1));
        assert_eq!(
            groups.heartbeat("g", join("m", &[]), Some("orders("), &topics),
            Err(HeartbeatError::InvalidRegularExpression)
        );
        let reply = groups.heartbeat("g", join("m", &[]), Some("orders"), &topics);
        let reply = reply.expect("join");
        // Full match: "orders" does not take "orders-eu".
        assert_eq!(reply.assignment, Some([(T1, [0].into())].into()));
        let described = groups.describe("g").expect("group");
        assert_eq!(
            described.patterns.get("m").map(String::as_str),
            Some("orders")
        );

        let reply = groups.heartbeat("g", join("n", &[]), Some("orders.*"), &topics);
        assert!(reply.is_ok());
        let subscribed = |g: &ConsumerGroups, m: &str| {
            g.describe("g")
                .and_then(|d| d.group.members.get(m).map(|m| m.subscribed_topics.clone()))
                .unwrap_or_default()
        };
        assert_eq!(subscribed(&groups, "n").len(), 2);
        // A topic created later is in the subscription at the member's next heartbeat.
        topics.insert("orders-us".to_owned(), ([3; 16], 1));
        let epoch = groups
            .describe("g")
            .and_then(|d| d.group.members.get("n").map(|m| m.member_epoch));
        let hb = Heartbeat {
            member_id: "n".into(),
            member_epoch: epoch.unwrap_or_default(),
            ..Heartbeat::default()
        };
        assert!(groups.heartbeat("g", hb, None, &topics).is_ok());
        assert!(subscribed(&groups, "n").contains("orders-us"));
    }
}

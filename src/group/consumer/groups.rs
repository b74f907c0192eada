//! The groups of the consumer protocol this broker coordinates: the shell around the
//! pure [`ConsumerGroup`], kept in memory as classic groups are, with its own monotonic
//! clock (milliseconds since the coordinator started) for sessions and rebalance
//! timeouts.
//!
//! A group lives while it has members; an empty group is dropped, so memory follows the
//! members, not the groups ever seen. Every change but a heartbeat's time is a [`Write`]
//! for the metadata log (`record.rs`), numbered per group; the coordinator that takes a
//! group over (after a broker's death or a move) loads the last one, so members keep
//! their epochs and assignments. Writes of one group are made one at a time (the
//! caller holds [`ConsumerGroups::write_lock`] from the change until its write is
//! committed), so they reach the log in the order they were made.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, MutexGuard};

use kafka_protocol::error::ResponseError;
use tokio::time::Instant;

use super::{
    record, ConsumerGroup, GroupState, Heartbeat, HeartbeatError, HeartbeatReply, Overrides,
    Settings, TopicId, JOIN_EPOCH,
};

/// Stripes of the per-group write lock: bounded, whatever the number of groups.
const WRITE_STRIPES: usize = 64;

/// A group's state for the metadata log: the `seq`-th write of it; `bytes` None when the
/// group is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub seq: u64,
    pub bytes: Option<Vec<u8>>,
}

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
    /// The number of the last write made (or loaded) of this group, and its bytes.
    seq: u64,
    written: Option<Vec<u8>>,
    /// Each member's client id and host, as its last heartbeat came (not written: the
    /// next heartbeat brings them to a new coordinator).
    clients: HashMap<String, (String, String)>,
    /// The group's own configs as of its last heartbeat (kept in the metadata state;
    /// each heartbeat brings them).
    overrides: Overrides,
}

impl Entry {
    fn pattern_sources(&self) -> BTreeMap<String, String> {
        self.patterns
            .iter()
            .map(|(m, p)| (m.clone(), p.source.clone()))
            .collect()
    }

    /// The write this entry's changes call for, if any.
    fn write(&mut self) -> Option<Write> {
        let bytes = record::encode(&self.group, &self.pattern_sources());
        if self.written.as_ref() == Some(&bytes) {
            return None;
        }
        self.seq += 1;
        self.written = Some(bytes.clone());
        Some(Write {
            seq: self.seq,
            bytes: Some(bytes),
        })
    }

    /// The write removing a group that was written before.
    fn removal(&self) -> Option<Write> {
        self.written.is_some().then(|| Write {
            seq: self.seq + 1,
            bytes: None,
        })
    }
}

/// What describing a group needs beyond the state machine: each member's pattern, and
/// its client id and host.
pub struct Described {
    pub group: ConsumerGroup,
    pub patterns: BTreeMap<String, String>,
    pub clients: BTreeMap<String, (String, String)>,
}

/// Who sent a heartbeat: the client id and host, and which topics a pattern may match
/// (those the principal may describe, as Kafka filters a pattern's matches).
pub struct Caller<'a> {
    pub client_id: &'a str,
    pub host: &'a str,
    pub may_describe: &'a dyn Fn(&str) -> bool,
}

pub struct ConsumerGroups {
    settings: Settings,
    groups: Mutex<HashMap<String, Entry>>,
    start: Instant,
    writes: Vec<tokio::sync::Mutex<()>>,
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
            writes: (0..WRITE_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    /// Held from a change of `group` until its write is committed, so one group's
    /// writes are made and committed in order.
    pub async fn write_lock(&self, group: &str) -> tokio::sync::MutexGuard<'_, ()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        group.hash(&mut hasher);
        let stripe = usize::try_from(hasher.finish() % WRITE_STRIPES as u64).unwrap_or(0);
        self.writes[stripe].lock().await
    }

    /// Takes `group` as the metadata log holds it (its `seq`-th write) unless this
    /// coordinator already has that write or a later one: a coordinator taking a group
    /// over, or getting it back after it moved away and on, continues from the log.
    /// Whether the write `seq` of `group` is newer than what this broker holds: only then
    /// is the stored record worth reading.
    pub fn is_behind(&self, group: &str, seq: u64) -> bool {
        self.lock().get(group).is_none_or(|e| e.seq < seq)
    }

    pub fn load(&self, group: &str, seq: u64, bytes: &[u8]) {
        let mut groups = self.lock();
        if groups.get(group).is_some_and(|e| e.seq >= seq) {
            return;
        }
        let Some((loaded, patterns)) = record::decode(bytes, self.now_ms(Instant::now())) else {
            tracing::warn!(group, "a consumer group's record in the metadata log is not readable by this build; the group starts again");
            return;
        };
        let patterns = patterns
            .into_iter()
            .filter_map(|(member, source)| {
                compile(&source)
                    .ok()
                    .map(|regex| (member, Pattern { source, regex }))
            })
            .collect();
        groups.insert(
            group.to_owned(),
            Entry {
                group: loaded,
                patterns,
                seq,
                written: Some(bytes.to_vec()),
                clients: HashMap::new(),
                overrides: Overrides::default(),
            },
        );
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
    /// clears a pattern, as Kafka treats an empty one. `overrides`: the group's own
    /// configs now.
    pub fn heartbeat(
        &self,
        group_id: &str,
        mut hb: Heartbeat,
        regex: Option<&str>,
        topics: &BTreeMap<String, (TopicId, i32)>,
        caller: &Caller<'_>,
        overrides: Overrides,
    ) -> (Result<HeartbeatReply, HeartbeatError>, Option<Write>) {
        let now_ms = self.now_ms(Instant::now());
        let pattern = match regex {
            Some(p) if !p.is_empty() => match compile(p) {
                Ok(regex) => Some(Pattern {
                    source: p.to_owned(),
                    regex,
                }),
                Err(e) => return (Err(e), None),
            },
            _ => None,
        };
        let mut groups = self.lock();
        if hb.member_epoch != JOIN_EPOCH && !groups.contains_key(group_id) {
            return (Err(HeartbeatError::UnknownMemberId), None);
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
                .filter(|name| p.regex.is_match(name) && (caller.may_describe)(name))
                .cloned()
                .collect();
            hb.subscribed_topics = Some(matched);
        }
        let member_id = hb.member_id.clone();
        entry.overrides = overrides;
        let settings = self.settings.with(overrides);
        let result = entry.group.heartbeat(hb, topics, &settings, now_ms);
        if entry.group.members.contains_key(&member_id) {
            entry.clients.insert(
                member_id.clone(),
                (caller.client_id.to_owned(), caller.host.to_owned()),
            );
        } else {
            entry.patterns.remove(&member_id);
            entry.clients.remove(&member_id);
        }
        let write = if entry.group.members.is_empty() {
            let removal = entry.removal();
            groups.remove(group_id);
            removal
        } else {
            entry.write()
        };
        (result, write)
    }

    /// Fences members whose session or rebalance timeout ran out; the writes that calls
    /// for, by group.
    pub fn expire(&self, now: Instant) -> Vec<(String, Write)> {
        let now_ms = self.now_ms(now);
        let mut groups = self.lock();
        let mut writes = Vec::new();
        for (id, entry) in groups.iter_mut() {
            let gone = entry
                .group
                .expire(&self.settings.with(entry.overrides), now_ms);
            if gone.is_empty() {
                continue;
            }
            for member in &gone {
                tracing::info!(group = %id, %member, "consumer group member fenced: its session or rebalance timeout ran out");
                entry.patterns.remove(member);
                entry.clients.remove(member);
            }
            let write = if entry.group.members.is_empty() {
                entry.removal()
            } else {
                entry.write()
            };
            writes.extend(write.map(|w| (id.clone(), w)));
        }
        groups.retain(|_, e| !e.group.members.is_empty());
        writes
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
            patterns: entry.pattern_sources(),
            clients: entry
                .clients
                .iter()
                .map(|(m, c)| (m.clone(), c.clone()))
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
    use super::super::Assignment;
    use super::*;

    fn anyone(_: &str) -> bool {
        true
    }

    const ANYONE: Caller<'static> = Caller {
        client_id: "client",
        host: "127.0.0.1",
        may_describe: &anyone,
    };
    const NONE: Overrides = Overrides {
        heartbeat_interval_ms: None,
        session_timeout_ms: None,
    };

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
    fn a_groups_own_configs_set_its_interval_and_session() {
        let groups = ConsumerGroups::new(Settings::default());
        let topics = [("a".to_owned(), (T1, 2))].into();
        let own = Overrides {
            heartbeat_interval_ms: Some(2_000),
            session_timeout_ms: Some(10_000),
        };
        let reply = groups
            .heartbeat("g", join("m", &["a"]), None, &topics, &ANYONE, own)
            .0
            .map(|r| r.heartbeat_interval_ms);
        assert_eq!(reply, Ok(2_000));
        let reply = groups
            .heartbeat("h", join("m", &["a"]), None, &topics, &ANYONE, NONE)
            .0
            .map(|r| r.heartbeat_interval_ms);
        assert_eq!(reply, Ok(5_000));
        // Past g's own session and within the broker's: only g's member is fenced.
        let fenced = groups.expire(Instant::now() + std::time::Duration::from_secs(11));
        let fenced: Vec<&str> = fenced.iter().map(|(g, _)| g.as_str()).collect();
        assert_eq!(fenced, ["g"]);
        assert!(!groups.contains("g"));
        assert!(groups.contains("h"));
    }

    #[test]
    fn commits_are_checked_against_the_member_epoch() {
        let groups = ConsumerGroups::new(Settings::default());
        let topics = [("a".to_owned(), (T1, 2))].into();
        assert_eq!(groups.check_offset_commit("g", "m", 1, true), None);
        let reply = groups
            .heartbeat("g", join("m", &["a"]), None, &topics, &ANYONE, NONE)
            .0;
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
        assert!(groups
            .heartbeat("g", leave, None, &topics, &ANYONE, NONE)
            .0
            .is_ok());
        assert!(!groups.contains("g"));
        assert_eq!(
            groups
                .heartbeat(
                    "g",
                    Heartbeat {
                        member_epoch: epoch,
                        ..join("m", &[])
                    },
                    None,
                    &topics,
                    &ANYONE,
                    NONE,
                )
                .0,
            Err(HeartbeatError::UnknownMemberId)
        );
    }

    #[test]
    fn a_pattern_matches_whole_names_and_follows_new_topics() {
        let groups = ConsumerGroups::new(Settings::default());
        let mut topics: BTreeMap<String, (TopicId, i32)> = [("orders".to_owned(), (T1, 1))].into();
        topics.insert("orders-eu".to_owned(), (T2, 1));
        assert_eq!(
            groups
                .heartbeat("g", join("m", &[]), Some("orders("), &topics, &ANYONE, NONE)
                .0,
            Err(HeartbeatError::InvalidRegularExpression)
        );
        let reply = groups
            .heartbeat("g", join("m", &[]), Some("orders"), &topics, &ANYONE, NONE)
            .0;
        let reply = reply.expect("join");
        // Full match: "orders" does not take "orders-eu".
        assert_eq!(reply.assignment, Some([(T1, [0].into())].into()));
        let described = groups.describe("g").expect("group");
        assert_eq!(
            described.patterns.get("m").map(String::as_str),
            Some("orders")
        );

        let reply = groups
            .heartbeat(
                "g",
                join("n", &[]),
                Some("orders.*"),
                &topics,
                &ANYONE,
                NONE,
            )
            .0;
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
        assert!(groups
            .heartbeat("g", hb, None, &topics, &ANYONE, NONE)
            .0
            .is_ok());
        assert!(subscribed(&groups, "n").contains("orders-us"));
    }

    #[test]
    fn only_the_configured_assignors_are_served_the_first_by_default() {
        let groups = ConsumerGroups::new(Settings {
            assignors: vec!["range".into()],
            ..Settings::default()
        });
        let topics = [("a".to_owned(), (T1, 1)), ("b".to_owned(), (T2, 1))].into();
        let asking = |assignor: &str| Heartbeat {
            server_assignor: Some(assignor.into()),
            ..join("m", &["a", "b"])
        };
        let refused = groups
            .heartbeat("g", asking("uniform"), None, &topics, &ANYONE, NONE)
            .0;
        assert_eq!(refused, Err(HeartbeatError::UnsupportedAssignor));
        // Without a preference, range: partition 0 of each topic to the first member
        // (uniform would give each member one).
        for member in ["m", "n"] {
            let reply =
                groups.heartbeat("g", join(member, &["a", "b"]), None, &topics, &ANYONE, NONE);
            assert!(reply.0.is_ok());
        }
        let counts: Vec<usize> = groups
            .describe("g")
            .map(|d| {
                d.group
                    .target
                    .values()
                    .map(|a| a.values().map(BTreeSet::len).sum())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(counts, [2, 0]);
    }

    #[test]
    fn a_new_coordinator_continues_from_the_last_write() {
        let first = ConsumerGroups::new(Settings::default());
        let topics: BTreeMap<String, (TopicId, i32)> =
            [("a".to_owned(), (T1, 4)), ("b".to_owned(), (T2, 1))].into();
        let mut last = None;
        let (reply, write) = first.heartbeat("g", join("m", &["a"]), None, &topics, &ANYONE, NONE);
        let m_epoch = reply.map(|r| r.member_epoch).unwrap_or_default();
        last = write.or(last);
        let (reply, write) =
            first.heartbeat("g", join("n", &[]), Some("b"), &topics, &ANYONE, NONE);
        let n_epoch = reply.map(|r| r.member_epoch).unwrap_or_default();
        last = write.or(last);
        let Some(Write {
            seq,
            bytes: Some(bytes),
        }) = last
        else {
            panic!("joins write the group")
        };
        assert_eq!(seq, 2);
        // A heartbeat that changes nothing writes nothing.
        let hb = |id: &str, epoch: i32| Heartbeat {
            member_id: id.into(),
            member_epoch: epoch,
            ..Heartbeat::default()
        };
        let (reply, write) = first.heartbeat("g", hb("n", n_epoch), None, &topics, &ANYONE, NONE);
        assert!(reply.is_ok() && write.is_none(), "{reply:?} {write:?}");

        let next = ConsumerGroups::new(Settings::default());
        next.load("g", seq, &bytes);
        let before = first
            .describe("g")
            .map(|d| (d.group.group_epoch, d.patterns));
        let after = next
            .describe("g")
            .map(|d| (d.group.group_epoch, d.patterns));
        assert_eq!(before, after);
        let owned: Assignment = first
            .describe("g")
            .and_then(|d| d.group.members.get("m").map(|m| m.assigned.clone()))
            .unwrap_or_default();
        // Both members carry on at their epochs, with what they own.
        let (reply, _) = next.heartbeat(
            "g",
            Heartbeat {
                owned: Some(owned.clone()),
                ..hb("m", m_epoch)
            },
            None,
            &topics,
            &ANYONE,
            NONE,
        );
        // As the old coordinator would have answered: neither fenced nor unknown.
        let (same, _) = first.heartbeat(
            "g",
            Heartbeat {
                owned: Some(owned.clone()),
                ..hb("m", m_epoch)
            },
            None,
            &topics,
            &ANYONE,
            NONE,
        );
        assert_eq!(reply, same);
        let m_now = reply.map(|r| r.member_epoch).unwrap_or_default();
        assert!(m_now >= m_epoch);
        let n_reply = next
            .heartbeat("g", hb("n", n_epoch), None, &topics, &ANYONE, NONE)
            .0;
        assert_eq!(
            n_reply,
            first
                .heartbeat("g", hb("n", n_epoch), None, &topics, &ANYONE, NONE)
                .0
        );
        assert!(n_reply.is_ok());
        assert_eq!(next.check_offset_commit("g", "m", m_now, true), Some(None));
        // An older write does not replace what the coordinator has.
        next.load("g", seq - 1, &bytes);
        assert_eq!(next.describe("g").map(|d| d.group.members.len()), Some(2));
        // The last member's leave removes the group from the log.
        let leave = |id: &str| hb(id, crate::group::consumer::LEAVE_EPOCH);
        assert!(next
            .heartbeat("g", leave("m"), None, &topics, &ANYONE, NONE)
            .1
            .is_some_and(|w| w.bytes.is_some()));
        let (_, gone) = next.heartbeat("g", leave("n"), None, &topics, &ANYONE, NONE);
        assert!(gone.is_some_and(|w| w.bytes.is_none() && w.seq > seq));
    }
}

//! Server-side assignors of the consumer group protocol (KIP-848): `uniform`, the
//! default, and `range`. Pure functions of the members' subscriptions, the topics and
//! the previous target assignment, so every coordinator computes the same result.

use std::collections::{BTreeMap, BTreeSet};

use super::{Assignment, TopicId};

/// The assignor names a client may ask for (`group.remote.assignor`), default first.
pub const ASSIGNORS: [&str; 2] = ["uniform", "range"];

/// What an assignor knows of one member.
#[derive(Debug, Clone)]
pub struct MemberSpec<'a> {
    /// The subscribed topics that exist, by id.
    pub topics: BTreeSet<TopicId>,
    /// The member's previous target assignment (stickiness).
    pub previous: Option<&'a Assignment>,
}

/// Computes the target assignment of every member: `topics` gives each subscribed
/// topic's partition count. A partition goes to at most one member, and only to a
/// member subscribed to its topic.
pub fn assign(
    assignor: &str,
    members: &BTreeMap<String, MemberSpec<'_>>,
    topics: &BTreeMap<TopicId, i32>,
) -> BTreeMap<String, Assignment> {
    match assignor {
        "range" => range(members, topics),
        _ => uniform(members, topics),
    }
}

/// Every subscribed partition to one subscribed member, as evenly as the subscriptions
/// allow (with identical subscriptions, counts differ by at most one), keeping each
/// partition where it was whenever balance permits.
fn uniform(
    members: &BTreeMap<String, MemberSpec<'_>>,
    topics: &BTreeMap<TopicId, i32>,
) -> BTreeMap<String, Assignment> {
    let eligible = |topic: &TopicId| -> Vec<&String> {
        members
            .iter()
            .filter(|(_, m)| m.topics.contains(topic))
            .map(|(id, _)| id)
            .collect()
    };
    let mut owner: BTreeMap<(TopicId, i32), &String> = BTreeMap::new();
    let mut load: BTreeMap<&String, usize> = members.keys().map(|id| (id, 0)).collect();
    // Sticky first: a partition stays with its previous owner if still subscribed.
    for (id, m) in members {
        for (topic, partitions) in m.previous.into_iter().flatten() {
            let Some(&count) = topics.get(topic) else {
                continue;
            };
            if !m.topics.contains(topic) {
                continue;
            }
            for &p in partitions.iter().filter(|&&p| p < count) {
                if let std::collections::btree_map::Entry::Vacant(e) = owner.entry((*topic, p)) {
                    e.insert(id);
                    *load.entry(id).or_default() += 1;
                }
            }
        }
    }
    // Then every other partition to its least loaded subscribed member.
    for (topic, &count) in topics {
        let candidates = eligible(topic);
        for p in 0..count {
            if owner.contains_key(&(*topic, p)) {
                continue;
            }
            if let Some(id) = least_loaded(&candidates, &load) {
                owner.insert((*topic, p), id);
                *load.entry(id).or_default() += 1;
            }
        }
    }
    // Then balance: move a partition from its owner to a subscribed member carrying at
    // least two fewer, until none can move. Each move lowers the sum of squared loads,
    // so this ends; the bound only guards against a mistake.
    let partitions: Vec<(TopicId, i32)> = owner.keys().copied().collect();
    let mut moves = partitions.len() * members.len().max(1);
    loop {
        let mut moved = false;
        for key in &partitions {
            let Some(&from) = owner.get(key) else {
                continue;
            };
            let candidates = eligible(&key.0);
            let Some(to) = least_loaded(&candidates, &load) else {
                continue;
            };
            if load[from] >= load[to] + 2 && moves > 0 {
                owner.insert(*key, to);
                *load.entry(from).or_default() -= 1;
                *load.entry(to).or_default() += 1;
                moves -= 1;
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    collect(members, owner)
}

/// Kafka's range: per topic, its subscribed members in member id order take contiguous
/// ranges, the first `partitions % members` one more partition each.
fn range(
    members: &BTreeMap<String, MemberSpec<'_>>,
    topics: &BTreeMap<TopicId, i32>,
) -> BTreeMap<String, Assignment> {
    let mut owner: BTreeMap<(TopicId, i32), &String> = BTreeMap::new();
    for (topic, &count) in topics {
        let subscribed: Vec<&String> = members
            .iter()
            .filter(|(_, m)| m.topics.contains(topic))
            .map(|(id, _)| id)
            .collect();
        if subscribed.is_empty() || count <= 0 {
            continue;
        }
        let n = subscribed.len() as i32;
        let (each, extra) = (count / n, count % n);
        let mut next = 0;
        for (i, id) in subscribed.into_iter().enumerate() {
            let take = each + i32::from((i as i32) < extra);
            for p in next..next + take {
                owner.insert((*topic, p), id);
            }
            next += take;
        }
    }
    collect(members, owner)
}

fn least_loaded<'a>(
    candidates: &[&'a String],
    load: &BTreeMap<&'a String, usize>,
) -> Option<&'a String> {
    candidates
        .iter()
        .copied()
        .min_by_key(|id| (load.get(id).copied().unwrap_or(0), *id))
}

fn collect(
    members: &BTreeMap<String, MemberSpec<'_>>,
    owner: BTreeMap<(TopicId, i32), &String>,
) -> BTreeMap<String, Assignment> {
    let mut out: BTreeMap<String, Assignment> = members
        .keys()
        .map(|id| (id.clone(), Assignment::new()))
        .collect();
    for ((topic, p), id) in owner {
        if let Some(a) = out.get_mut(id) {
            a.entry(topic).or_default().insert(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(topics: &[u8]) -> MemberSpec<'static> {
        MemberSpec {
            topics: topics.iter().map(|t| [*t; 16]).collect(),
            previous: None,
        }
    }

    fn counts(out: &BTreeMap<String, Assignment>) -> Vec<usize> {
        out.values()
            .map(|a| a.values().map(BTreeSet::len).sum())
            .collect()
    }

    #[test]
    fn range_gives_contiguous_ranges_in_member_order() {
        let members: BTreeMap<String, MemberSpec<'_>> =
            [("a".into(), spec(&[1])), ("b".into(), spec(&[1]))].into();
        let out = assign("range", &members, &[([1; 16], 5)].into());
        assert_eq!(out["a"][&[1; 16]], [0, 1, 2].into());
        assert_eq!(out["b"][&[1; 16]], [3, 4].into());
    }

    #[test]
    fn uniform_keeps_what_it_can_when_a_member_joins() {
        let t = [1u8; 16];
        let members: BTreeMap<String, MemberSpec<'_>> =
            [("a".into(), spec(&[1])), ("b".into(), spec(&[1]))].into();
        let first = assign("uniform", &members, &[(t, 6)].into());
        assert_eq!(counts(&first), vec![3, 3]);
        let mut members: BTreeMap<String, MemberSpec<'_>> = first
            .iter()
            .map(|(id, a)| {
                (
                    id.clone(),
                    MemberSpec {
                        topics: [t].into(),
                        previous: Some(a),
                    },
                )
            })
            .collect();
        members.insert("c".into(), spec(&[1]));
        let second = assign("uniform", &members, &[(t, 6)].into());
        assert_eq!(counts(&second), vec![2, 2, 2]);
        // a and b each gave up one partition and kept two.
        for id in ["a", "b"] {
            assert_eq!(second[id][&t].intersection(&first[id][&t]).count(), 2);
        }
    }

    #[test]
    fn the_config_knows_every_assignor() {
        assert_eq!(ASSIGNORS, crate::config::groups::ASSIGNORS);
    }

    proptest! {
        /// Any subscriptions: each partition of a subscribed topic goes to exactly one
        /// member subscribed to it; with identical subscriptions, counts differ by at most
        /// one; the same inputs give the same output.
        #[test]
        fn assignments_are_exclusive_complete_and_balanced(
            subs in prop::collection::vec(prop::collection::btree_set(0u8..4, 0..4), 1..6),
            partitions in prop::collection::vec(0i32..9, 4),
            same in any::<bool>(),
            assignor in prop::sample::select(ASSIGNORS.to_vec()),
        ) {
            let members: BTreeMap<String, MemberSpec<'_>> = subs
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let topics: Vec<u8> = if same { subs[0].iter().copied().collect() } else { s.iter().copied().collect() };
                    (format!("m{i}"), spec(&topics))
                })
                .collect();
            let topics: BTreeMap<TopicId, i32> =
                partitions.iter().enumerate().map(|(t, &n)| ([t as u8; 16], n)).collect();
            let out = assign(assignor, &members, &topics);
            prop_assert_eq!(&out, &assign(assignor, &members, &topics));
            let mut seen = BTreeSet::new();
            for (id, a) in &out {
                for (topic, ps) in a {
                    prop_assert!(members[id].topics.contains(topic));
                    for p in ps {
                        prop_assert!(*p < topics[topic]);
                        prop_assert!(seen.insert((*topic, *p)), "partition given twice");
                    }
                }
            }
            for (topic, &n) in &topics {
                if members.values().any(|m| m.topics.contains(topic)) {
                    for p in 0..n {
                        prop_assert!(seen.contains(&(*topic, p)), "partition left out");
                    }
                }
            }
            if same && assignor == "uniform" {
                let c = counts(&out);
                prop_assert!(c.iter().max().unwrap_or(&0) - c.iter().min().unwrap_or(&0) <= 1, "{:?}", c);
            }
        }
    }
}

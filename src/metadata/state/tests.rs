//! Properties of the whole state machine, which no one part owns, and its formats.
//!
//! - Replay: the same log gives the same state and responses, and every partition's
//!   index stays contiguous from its log start to its high watermark.
//! - Compaction swaps, interleaved with commits, retried uploads, deletes, re-created
//!   topics and DeleteRecords: a swap either replaces exactly what it read or is refused;
//!   offsets never move; the records a read plan finds at each offset are the same before
//!   and after; replay is deterministic; garbage is exactly the objects nothing refers to.
//! - Formats: snapshots of older formats still decode.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::cluster::ClusterCommand;
use super::fixtures::{create, entry, one_segment};
use super::partition::Partition;
use super::*;
use crate::metadata::codec::{self, Kind};
use crate::security::scram::{Mechanism, ScramCredential};

// ---------------------------------------------------------------------------------------
// Replay

fn arb_command() -> impl Strategy<Value = Command> {
    let topic = prop::sample::select(vec!["a", "b", "c"]);
    prop_oneof![
        (topic.clone(), 0..4i32).prop_map(|(t, p)| create(t, p)),
        topic
            .clone()
            .prop_map(|t| Command::DeleteTopic { name: t.into() }),
        (
            prop::collection::vec((topic.clone(), 0..4i32, 1..50u32), 0..6),
            0..8u8
        )
            .prop_map(|(es, n)| {
                // A few names, so some commits repeat an object and must be refused.
                one_segment(
                    format!("obj{n}"),
                    es.into_iter().map(|(t, p, c)| entry(t, p, c)).collect(),
                )
            }),
        (topic.clone(), 0..6i32).prop_map(|(t, c)| Command::CreatePartitions {
            name: t.into(),
            count: c,
            preferred: Vec::new(),
        }),
        (topic.clone(), any::<bool>(), 0..3u8).prop_map(|(t, replace, v)| {
            Command::AlterTopicConfigs {
                name: t.into(),
                replace,
                changes: [("retention.ms".to_string(), (v > 0).then(|| v.to_string()))]
                    .into_iter()
                    .collect(),
            }
        }),
        (topic.clone(), 0..4i32, -1..200i64).prop_map(|(t, p, o)| Command::DeleteRecords {
            topic: t.into(),
            partition: p,
            offset: o,
        }),
        (topic.clone(), 0..4i32).prop_map(|(t, p)| Command::DeleteGroupOffsets {
            group: "g".into(),
            partitions: vec![(t.into(), p)],
        }),
        Just(Command::DeleteGroup { group: "g".into() }),
        (topic.clone(), 1..4usize, 1..4u64).prop_map(|(t, n, id)| Command::CreateTopic {
            name: t.into(),
            topic_id: [3; 16],
            partitions: n as i32,
            configs: BTreeMap::new(),
            now_ms: 0,
            preferred: vec![id; n],
        }),
        (1..3u64).prop_map(|id| Command::Cluster(ClusterCommand::Register {
            id,
            host: "h".into(),
            port: 1,
            rack: None,
            now_ms: 0,
        })),
        (any::<bool>(), 0..3u8).prop_map(|(replace, v)| Command::AlterBrokerConfigs {
            broker: (v == 2).then_some(1),
            replace,
            changes: [("num.partitions".to_string(), (v > 0).then(|| v.to_string()))]
                .into_iter()
                .collect(),
        }),
        (any::<bool>(), 0..3u8).prop_map(|(replace, v)| Command::AlterGroupConfigs {
            group: "g".into(),
            replace,
            changes: [(
                "consumer.session.timeout.ms".to_string(),
                (v > 0).then(|| (45_000 + u32::from(v)).to_string()),
            )]
            .into_iter()
            .collect(),
        }),
        (topic.clone(), 0..4i32, 0..1000i64).prop_map(|(t, p, o)| Command::CommitOffsets {
            group: "g".into(),
            offsets: vec![OffsetCommit {
                topic: t.into(),
                partition: p,
                offset: o,
                leader_epoch: -1,
                metadata: None,
                commit_ms: 0,
            }],
        }),
        (topic, 0..1000i64, 1..3u64, 0..4i32).prop_map(|(t, o, coordinator, epoch)| {
            Command::CommitGroupOffsets {
                group: "g".into(),
                offsets: vec![OffsetCommit {
                    topic: t.into(),
                    partition: 0,
                    offset: o,
                    leader_epoch: -1,
                    metadata: None,
                    commit_ms: 0,
                }],
                coordinator,
                epoch,
            }
        }),
        (1..3u64, 0..2i64).prop_map(|(id, seen)| Command::Cluster(ClusterCommand::ExpireSilent {
            brokers: vec![(id, seen)]
        })),
        (1..3u64, 0..2i64)
            .prop_map(|(id, now_ms)| Command::Cluster(ClusterCommand::Heartbeat { id, now_ms })),
        (1..3u64, 0..2i64).prop_map(|(id, seen)| Command::Cluster(ClusterCommand::Forget {
            brokers: vec![(id, seen)]
        })),
    ]
}

proptest! {
    /// Replaying the same log gives the same state and responses (determinism), and
    /// every partition's index stays contiguous from its log start to its high watermark
    /// (DeleteRecords included).
    #[test]
    fn replay_is_deterministic_and_index_contiguous(cmds in prop::collection::vec(arb_command(), 0..60)) {
        let mut a = MetadataState::default();
        let mut b = MetadataState::default();
        for cmd in &cmds {
            prop_assert_eq!(a.apply(cmd), b.apply(cmd));
        }
        prop_assert_eq!(&a, &b);
        // A state survives a snapshot round trip unchanged.
        let json = serde_json::to_string(&a).unwrap();
        let restored: MetadataState = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&a, &restored);
        for topic in a.topics().values() {
            for p in &topic.partitions {
                // The first chunk holds the log start offset (it may begin below it).
                let mut next = match p.index.first() {
                    Some(first) => {
                        prop_assert!(first.base_offset <= p.log_start_offset);
                        prop_assert!(p.log_start_offset < first.end_offset());
                        first.base_offset
                    }
                    None => p.log_start_offset,
                };
                for e in &p.index {
                    prop_assert_eq!(e.base_offset, next);
                    next = e.end_offset();
                }
                prop_assert_eq!(next, p.next_offset);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Compaction swaps

/// What the records of an object range are, as a list of (origin object, origin
/// position, record number) per offset: the simulated store's bytes.
type Content = Vec<(String, u64, u32)>;

#[derive(Default)]
struct Store {
    /// (object name, position) -> the records it holds there.
    pieces: BTreeMap<(String, u64), Content>,
}

impl Store {
    fn read(
        &self,
        state: &MetadataState,
        topic: &str,
        partition: i32,
    ) -> BTreeMap<i64, (String, u64, u32)> {
        let mut out = BTreeMap::new();
        let Some(p) = state.partition(topic, partition) else {
            return out;
        };
        for e in &p.index {
            let info = state
                .objects()
                .get(e.object)
                .expect("indexed object is live");
            let content = self
                .pieces
                .get(&(info.name.clone(), e.position))
                .expect("indexed piece exists");
            assert_eq!(content.len() as u32, e.offset_count);
            for (i, record) in content.iter().enumerate() {
                out.insert(e.base_offset + i as i64, record.clone());
            }
        }
        out
    }
}

#[derive(Debug, Clone)]
enum Step {
    Create(u8, i32),
    Delete(u8),
    /// (topic, partition, records) chunks in one object; `name` picks from a few names,
    /// so some are retries.
    Commit(u8, Vec<(u8, i32, u32)>),
    DeleteRecords(u8, i32, u8),
    /// Compact `len` entries from entry `at` of a partition; `stale` tampers with it.
    Compact(u8, i32, u8, u8, Option<u8>),
    /// One shared object with a section per pick, each picked as `Compact` is.
    CompactShared(Vec<(u8, i32, u8, u8, Option<u8>)>),
    /// The last shared compaction applied again (a proposal retried after a change of
    /// leader), however much has happened since.
    RetryShared,
    Forget,
}

fn topic_name(t: u8) -> String {
    format!("t{}", t % 3)
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (any::<u8>(), 1..4i32).prop_map(|(t, p)| Step::Create(t, p)),
        any::<u8>().prop_map(Step::Delete),
        (
            any::<u8>(),
            prop::collection::vec((any::<u8>(), 0..4i32, 1..20u32), 1..5)
        )
            .prop_map(|(n, c)| Step::Commit(n, c)),
        (any::<u8>(), 0..4i32, any::<u8>()).prop_map(|(t, p, o)| Step::DeleteRecords(t, p, o)),
        (
            any::<u8>(),
            0..4i32,
            any::<u8>(),
            1..6u8,
            prop::option::weighted(0.2, 0..3u8)
        )
            .prop_map(|(t, p, at, len, stale)| Step::Compact(t, p, at, len, stale)),
        prop::collection::vec(
            (
                any::<u8>(),
                0..4i32,
                any::<u8>(),
                1..6u8,
                prop::option::weighted(0.2, 0..3u8)
            ),
            1..5
        )
        .prop_map(Step::CompactShared),
        Just(Step::RetryShared),
        Just(Step::Forget),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn swaps_keep_offsets_records_and_garbage_exact(steps in prop::collection::vec(arb_step(), 1..80)) {
        let mut state = MetadataState::default();
        let mut store = Store::default();
        let mut applied = Vec::new();
        let mut responses = Vec::new();
        let mut names = 0u32;
        for (clock, step) in steps.into_iter().enumerate() {
            let now_ms = clock as i64 * 10;
            let mut honest_swap = None;
            let mut honest_sections: Option<Vec<bool>> = None;
            let mut retry = false;
            let cmd = match step {
                Step::Create(t, p) => Command::CreateTopic {
                    name: topic_name(t),
                    topic_id: [t % 3, clock as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    partitions: p,
                    configs: BTreeMap::new(),
                    now_ms,
                    preferred: Vec::new(),
                },
                Step::Delete(t) => Command::DeleteTopic { name: topic_name(t) },
                Step::Commit(n, chunks) => {
                    // A few names, so some commits repeat an object: a retried upload.
                    let object = format!("segments/o{}", n % 6);
                    let mut entries = Vec::new();
                    for (i, (t, p, count)) in chunks.into_iter().enumerate() {
                        let position = 8 + i as u64 * 100;
                        let content: Content = (0..count).map(|r| (object.clone(), position, r)).collect();
                        store.pieces.entry((object.clone(), position)).or_insert(content);
                        let count = store.pieces[&(object.clone(), position)].len() as u32;
                        entries.push(SegmentEntry {
                            topic: topic_name(t),
                            partition: p,
                            position,
                            length: u64::from(count) * 10,
                            offset_count: count,
                            max_timestamp: now_ms,
                            producer: None,
                        });
                    }
                    Command::CommitSegments {
                        segments: vec![SegmentCommit { object, object_size: 1000, uploaded_ms: now_ms, entries, txn: Vec::new() }],
                        now_ms,
                        max_age_ms: 0,
                    }
                }
                Step::DeleteRecords(t, p, o) => {
                    let topic = topic_name(t);
                    let hw = state.partition(&topic, p).map_or(0, |p| p.next_offset);
                    Command::DeleteRecords { topic, partition: p, offset: i64::from(o) % (hw + 1) }
                }
                Step::Compact(t, p, at, len, stale) => {
                    let topic = topic_name(t);
                    let Some((topic_id, index)) = state.topic(&topic).and_then(|tp| {
                        Some((tp.id, state.partition(&topic, p)?.index.clone()))
                    }) else { continue };
                    if index.is_empty() { continue; }
                    let at = usize::from(at) % index.len();
                    let run = &index[at..(at + usize::from(len)).min(index.len())];
                    names += 1;
                    let object = format!("compacted/c{names}");
                    let mut content = Content::new();
                    for e in run {
                        let name = &state.objects().get(e.object).expect("live").name;
                        content.extend(store.pieces[&(name.clone(), e.position)].iter().cloned());
                    }
                    store.pieces.insert((object.clone(), 8), content);
                    let mut swap = CompactionSwap {
                        topic,
                        topic_id,
                        partition: p,
                        base_offset: run[0].base_offset,
                        end_offset: run[run.len() - 1].end_offset(),
                        inputs: run.iter().map(|e| (e.object, e.position)).collect(),
                        object,
                        object_size: 1000,
                        position: 8,
                        length: run.iter().map(|e| e.length).sum(),
                        now_ms,
                    };
                    honest_swap = Some(stale.is_none());
                    match stale {
                        Some(0) => swap.inputs[0].1 += 1,
                        Some(1) => swap.topic_id[15] ^= 1,
                        Some(_) => swap.end_offset += 1,
                        None => {}
                    }
                    // The log cleaner's swap is taken or refused by the same rule.
                    if names.is_multiple_of(2) { Command::Compact(swap) } else { Command::Clean(swap) }
                }
                Step::CompactShared(picks) => {
                    names += 1;
                    let object = format!("compacted/s{names}");
                    let mut sections = Vec::new();
                    let mut honest = Vec::new();
                    for (i, (t, p, at, len, stale)) in picks.into_iter().enumerate() {
                        let topic = topic_name(t);
                        // One section per partition, as the compactor plans.
                        if sections.iter().any(|s: &SectionSwap| s.topic == topic && s.partition == p) {
                            continue;
                        }
                        let Some((topic_id, index)) = state.topic(&topic).and_then(|tp| {
                            Some((tp.id, state.partition(&topic, p)?.index.clone()))
                        }) else { continue };
                        if index.is_empty() { continue; }
                        let at = usize::from(at) % index.len();
                        let run = &index[at..(at + usize::from(len)).min(index.len())];
                        let position = 8 + i as u64 * 1000;
                        let mut content = Content::new();
                        for e in run {
                            let name = &state.objects().get(e.object).expect("live").name;
                            content.extend(store.pieces[&(name.clone(), e.position)].iter().cloned());
                        }
                        store.pieces.insert((object.clone(), position), content);
                        let mut section = SectionSwap {
                            topic,
                            topic_id,
                            partition: p,
                            base_offset: run[0].base_offset,
                            end_offset: run[run.len() - 1].end_offset(),
                            inputs: run.iter().map(|e| (e.object, e.position)).collect(),
                            position,
                            length: run.iter().map(|e| e.length).sum(),
                        };
                        honest.push(stale.is_none());
                        match stale {
                            Some(0) => section.inputs[0].1 += 1,
                            Some(1) => section.topic_id[15] ^= 1,
                            Some(_) => section.end_offset += 1,
                            None => {}
                        }
                        sections.push(section);
                    }
                    honest_sections = Some(honest);
                    Command::CompactShared(SharedCompaction { object, object_size: 5000, sections, now_ms })
                }
                Step::RetryShared => {
                    let Some(last) = applied.iter().rev().find(|c| matches!(c, Command::CompactShared(_))) else {
                        continue;
                    };
                    retry = true;
                    last.clone()
                }
                Step::Forget => {
                    let ids = state.objects().garbage_due(now_ms, 0, i64::MAX).into_iter().map(|(id, _)| id).collect();
                    Command::ForgetObjects { ids }
                }
            };
            let before: Vec<_> = state.topics().iter().flat_map(|(name, t)| {
                (0..t.partitions.len() as i32).map(move |p| (name.clone(), p))
            }).map(|(name, p)| {
                let records = store.read(&state, &name, p);
                let hw = state.partition(&name, p).map(|p| (p.next_offset, p.log_start_offset));
                (name, p, records, hw)
            }).collect();
            let indexes_before: Vec<_> = state.topics().values().map(|t| t.partitions.iter().map(|p| p.index.clone()).collect::<Vec<_>>()).collect();
            let response = state.apply(&cmd);
            if retry {
                // A retry never swaps anything in again (nor out): no index changes, and
                // an object forgotten since comes back as garbage only, never live.
                let indexes_after: Vec<_> = state.topics().values().map(|t| t.partitions.iter().map(|p| p.index.clone()).collect::<Vec<_>>()).collect();
                prop_assert_eq!(indexes_after, indexes_before);
            }
            if let (Command::Compact(swap) | Command::Clean(swap), Response::Compacted(result)) = (&cmd, &response) {
                // A tampered swap is always refused; an honest one always taken.
                prop_assert_eq!(Some(result.is_ok()), honest_swap, "{:?} -> {:?}", swap, result);
                for (name, p, records, hw) in &before {
                    if name == &swap.topic && *p == swap.partition {
                        // Offsets and the records at each offset are untouched by a swap.
                        prop_assert_eq!(&store.read(&state, name, *p), records);
                        prop_assert_eq!(state.partition(name, *p).map(|p| (p.next_offset, p.log_start_offset)), *hw);
                    }
                }
            }
            if let (Command::CompactShared(shared), Response::SharedCompacted(results), false) = (&cmd, &response, retry) {
                // Each section is taken or refused alone, by the same rule as a swap.
                let taken: Vec<bool> = results.iter().map(Result::is_ok).collect();
                prop_assert_eq!(Some(taken.clone()), honest_sections.clone(), "{:?} -> {:?}", shared, results);
                let refs = taken.iter().filter(|t| **t).count() as u32;
                prop_assert_eq!(state.object_refs(&shared.object), refs);
                prop_assert!(state.objects().is_known(&shared.object), "added even if empty");
                for (name, p, records, hw) in &before {
                    if shared.sections.iter().any(|s| &s.topic == name && s.partition == *p) {
                        prop_assert_eq!(&store.read(&state, name, *p), records);
                        prop_assert_eq!(state.partition(name, *p).map(|p| (p.next_offset, p.log_start_offset)), *hw);
                    }
                }
            }
            applied.push(cmd);
            responses.push(response);
            check_invariants(&state)?;
        }
        // Replaying the log gives the same state and the same answers.
        let mut replay = MetadataState::default();
        for (cmd, response) in applied.iter().zip(&responses) {
            prop_assert_eq!(&replay.apply(cmd), response);
        }
        prop_assert_eq!(&replay, &state);
        // And survives the binary snapshot encoding unchanged.
        let bytes = postcard::to_stdvec(&state).expect("encodes");
        let decoded: MetadataState = postcard::from_bytes(&bytes).expect("decodes");
        prop_assert_eq!(&decoded, &state);
    }
}

/// Every index is contiguous from its log start to its high watermark; every live
/// object's reference count is the number of entries naming it; garbage has none.
fn check_invariants(state: &MetadataState) -> Result<(), TestCaseError> {
    let mut refs: BTreeMap<ObjectId, u32> = BTreeMap::new();
    for topic in state.topics().values() {
        for p in &topic.partitions {
            let mut next = match p.index.first() {
                Some(first) => {
                    prop_assert!(first.base_offset <= p.log_start_offset);
                    prop_assert!(p.log_start_offset < first.end_offset());
                    first.base_offset
                }
                None => p.log_start_offset,
            };
            let mut ts = i64::MIN;
            for e in &p.index {
                prop_assert_eq!(e.base_offset, next);
                prop_assert!(e.max_timestamp >= ts, "running max timestamp");
                ts = e.max_timestamp;
                next = e.end_offset();
                *refs.entry(e.object).or_default() += 1;
            }
            prop_assert_eq!(next, p.next_offset);
        }
    }
    let live: BTreeMap<ObjectId, u32> = state
        .objects()
        .live()
        .map(|(id, info)| (id, info.refs))
        .collect();
    prop_assert_eq!(live, refs);
    let garbage: BTreeSet<ObjectId> = state.objects().garbage().map(|(id, _)| id).collect();
    for id in &garbage {
        prop_assert!(state.objects().get(*id).is_none());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Formats

/// Format 4 and 5 snapshots (no `access`, no `txns` fields) still decode, as empty
/// access and transaction states, and the state after them reads on as before.
#[test]
fn format_4_and_5_states_decode_without_later_fields() -> Result<(), codec::CodecError> {
    let mut state = MetadataState::default();
    state.apply(&Command::AlterBrokerConfigs {
        broker: None,
        replace: false,
        changes: BTreeMap::from([("log.retention.ms".to_owned(), Some("5".to_owned()))]),
    });
    let current = codec::encode(Kind::LocalSnapshot, &(state.clone(), 7u64))?;
    // An empty access state is three empty collections, an empty transaction state
    // two, no consumer groups one, no group configs one: one zero length byte each,
    // right before the trailing u64 (one byte).
    let end = current.len() - 1;
    assert_eq!(&current[end - 7..end], &[0, 0, 0, 0, 0, 0, 0]);
    for (format, strip) in [(4u16, 7), (5, 4), (9, 2), (10, 1)] {
        let mut bytes = current.clone();
        bytes.drain(end - strip..end);
        bytes[4..6].copy_from_slice(&format.to_le_bytes());
        let (decoded, trailing): (MetadataState, u64) = codec::decode(Kind::LocalSnapshot, &bytes)?;
        assert_eq!(decoded, state, "format {format}");
        assert_eq!(trailing, 7);
    }
    // A format 5 partition has no transactions field.
    let partition = Partition {
        next_offset: 3,
        ..Partition::default()
    };
    let mut bytes = codec::encode(Kind::LocalSnapshot, &partition)?;
    assert_eq!(bytes[bytes.len() - 2..], [0, 0]);
    bytes.truncate(bytes.len() - 2);
    bytes[4..6].copy_from_slice(&5u16.to_le_bytes());
    assert_eq!(
        codec::decode::<Partition>(Kind::LocalSnapshot, &bytes)?,
        partition
    );

    state.apply(&Command::AlterScram {
        changes: vec![ScramChange::Upsert {
            user: "admin".into(),
            mechanism: Mechanism::Sha512,
            credential: ScramCredential {
                salt: vec![1],
                stored_key: vec![2],
                server_key: vec![3],
                iterations: 4096,
            },
            only_if_missing: true,
        }],
    });
    let bytes = codec::encode(Kind::LocalSnapshot, &state)?;
    let decoded: MetadataState = codec::decode(Kind::LocalSnapshot, &bytes)?;
    assert!(decoded
        .access()
        .credential("admin", Mechanism::Sha512)
        .is_some());
    assert_eq!(decoded, state);
    Ok(())
}

/// Format 7 only appended variants (shared compaction): a format 6 blob decodes as it
/// did, and the new variants are numbered after every earlier one (postcard writes a
/// variant as its index), so nothing a format 6 build wrote changes meaning.
#[test]
fn format_6_blobs_decode_and_format_7_variants_come_last() -> Result<(), codec::CodecError> {
    let mut state = MetadataState::default();
    state.apply(&create("t", 2));
    state.apply(&one_segment(
        "segments/a".into(),
        vec![entry("t", 0, 3), entry("t", 1, 2)],
    ));
    let mut bytes = codec::encode(Kind::LocalSnapshot, &state)?;
    // Format 10's consumer groups and format 11's group configs, empty here: one zero
    // byte each at the end.
    assert_eq!(bytes.pop(), Some(0));
    assert_eq!(bytes.pop(), Some(0));
    bytes[4..6].copy_from_slice(&6u16.to_le_bytes());
    assert_eq!(
        codec::decode::<MetadataState>(Kind::LocalSnapshot, &bytes)?,
        state
    );

    // The new variants: after the 28 commands, 12 responses and 3 object kinds before.
    let shared = Command::CompactShared(SharedCompaction {
        object: "compacted/s".into(),
        object_size: 10,
        sections: Vec::new(),
        now_ms: 1,
    });
    let first_byte = |bytes: Vec<u8>| bytes[codec::HEADER_LEN];
    assert_eq!(first_byte(codec::encode(Kind::LogRecord, &shared)?), 28);
    let answer = Response::SharedCompacted(vec![Ok(())]);
    assert_eq!(first_byte(codec::encode(Kind::LogRecord, &answer)?), 12);
    assert_eq!(
        first_byte(codec::encode(Kind::LogRecord, &ObjectKind::Shared)?),
        3
    );
    assert_eq!(
        first_byte(codec::encode(
            Kind::LogRecord,
            &Command::ExpireTransactionalIds {
                now_ms: 0,
                expiration_ms: 0
            }
        )?),
        27
    );
    // Format 11's command comes after format 10's (31), last.
    assert_eq!(
        first_byte(codec::encode(
            Kind::LogRecord,
            &Command::AlterGroupConfigs {
                group: "g".into(),
                replace: false,
                changes: BTreeMap::new()
            }
        )?),
        32
    );

    // A state holding a shared object survives the current format.
    let p = state.partition("t", 0).expect("p").clone();
    let section = SectionSwap {
        topic: "t".into(),
        topic_id: [1; 16],
        partition: 0,
        base_offset: 0,
        end_offset: p.next_offset,
        inputs: p.index.iter().map(|e| (e.object, e.position)).collect(),
        position: 8,
        length: 100,
    };
    let cmd = Command::CompactShared(SharedCompaction {
        object: "compacted/s".into(),
        object_size: 200,
        sections: vec![section],
        now_ms: 5,
    });
    let decoded: Command = codec::decode(Kind::LogRecord, &codec::encode(Kind::LogRecord, &cmd)?)?;
    assert_eq!(decoded, cmd);
    assert_eq!(state.apply(&cmd), Response::SharedCompacted(vec![Ok(())]));
    let bytes = codec::encode(Kind::LocalSnapshot, &state)?;
    assert_eq!(
        codec::decode::<MetadataState>(Kind::LocalSnapshot, &bytes)?,
        state
    );
    Ok(())
}

/// An automatic id is never given twice: not after its broker is forgotten, which it
/// may survive on its old disk.
#[test]
fn automatic_ids_are_never_given_twice() {
    let mut s = MetadataState::default();
    let allocate = |now_ms| {
        Command::Cluster(ClusterCommand::Allocate {
            floor: 1000,
            host: "10.0.0.9".into(),
            port: 9092,
            rack: None,
            now_ms,
        })
    };
    assert_eq!(s.apply(&allocate(1)), Response::NodeId(1000));
    assert_eq!(s.apply(&allocate(2)), Response::NodeId(1001));
    // 1001 dies and is forgotten; the next broker still gets a new id.
    s.apply(&Command::Cluster(ClusterCommand::ExpireSilent {
        brokers: vec![(1001, 2)],
    }));
    s.apply(&Command::Cluster(ClusterCommand::Forget {
        brokers: vec![(1001, 2)],
    }));
    assert!(s.cluster().broker(1001).is_none());
    assert_eq!(s.apply(&allocate(3)), Response::NodeId(1002));
    // The record rides in the state: a snapshot carries it.
    let mut restored = MetadataState::default();
    restored.apply(&Command::Restore {
        state: Box::new(s.clone()),
    });
    assert_eq!(restored.apply(&allocate(4)), Response::NodeId(1003));
}

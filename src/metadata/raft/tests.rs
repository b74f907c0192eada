//! The node end to end, and everything Raft writes or sends: restarts (with and without
//! a snapshot, graceful or abrupt), torn and damaged logs, directories of an older format
//! refused, and round trips through the codec of log records, Raft messages and snapshot
//! files.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::PoisonError;
use std::time::Duration;

use openraft::error::RaftError;
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, SnapshotMeta, StorageIOError, StoredMembership, Vote,
};

use super::network::{RaftReply, RaftRequest};
use super::*;
use crate::metadata::codec::{self, Kind};
use crate::metadata::state::cluster::ClusterCommand;
use crate::metadata::state::{
    OffsetCommit, ProducerBatch, SegmentCommit, SegmentEntry, StateError,
};

/// The only test code that knows `Command`'s shape: adapt it if the variants change.
/// Any deterministic command works, since results are compared against a plain
/// `MetadataState` that applied the same sequence.
/// Topic creations, some of which fail (a repeated name): any deterministic command will do.
pub(super) fn add(i: u64) -> Command {
    Command::CreateTopic {
        name: format!("t{}", i % 7),
        topic_id: [i as u8; 16],
        partitions: 1 + (i % 3) as i32,
        configs: Default::default(),
        now_ms: i as i64,
        preferred: Vec::new(),
    }
}

/// Compared as JSON so the state types need no `PartialEq`.
fn snapshot_of(r: &MetadataRaft) -> serde_json::Value {
    let state = r.state();
    let guard = state.read().unwrap_or_else(PoisonError::into_inner);
    serde_json::to_value(&*guard).unwrap_or_default()
}

fn expected(n: u64) -> serde_json::Value {
    let mut s = MetadataState::default();
    for i in 0..n {
        s.apply(&add(i));
    }
    serde_json::to_value(&s).unwrap_or_default()
}

async fn propose_range(r: &MetadataRaft, range: std::ops::Range<u64>) -> anyhow::Result<()> {
    for i in range {
        r.propose(add(i)).await?;
    }
    Ok(())
}

#[tokio::test]
async fn restart_restores_state() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let r = MetadataRaft::start(1, dir.path(), 1000).await?;
    let mut applied = r.applied();
    r.propose(add(0)).await?;
    assert!(applied.has_changed()?);
    applied.borrow_and_update();
    propose_range(&r, 1..20).await?;
    let before = snapshot_of(&r);
    assert_eq!(before, expected(20));
    r.shutdown().await?;
    drop(r);

    let r = MetadataRaft::start(1, dir.path(), 1000).await?;
    assert_eq!(snapshot_of(&r), before);
    // And it keeps working after restart.
    propose_range(&r, 20..25).await?;
    assert_eq!(snapshot_of(&r), expected(25));
    r.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn restart_after_snapshot_and_purge() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let r = MetadataRaft::start(1, dir.path(), 10).await?;
    propose_range(&r, 0..35).await?;
    let m = r
        .inner
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.purged.is_some() && m.snapshot.is_some(), "purge")
        .await?;
    assert!(m.snapshot.map(|s| s.index).unwrap_or(0) >= 20);
    let before = snapshot_of(&r);
    assert_eq!(before, expected(35));
    r.shutdown().await?;
    drop(r);

    assert!(dir.path().join(SNAPSHOT_FILE).exists());
    {
        let log = LogStore::open(dir.path())?;
        let inner = log.lock();
        let purged = inner.last_purged.map(|l| l.index);
        assert!(purged.is_some());
        assert!(inner.cache.keys().all(|k| Some(*k) > purged));
    }

    let r = MetadataRaft::start(1, dir.path(), 10).await?;
    assert_eq!(snapshot_of(&r), before);
    assert!(*r.applied().borrow() >= 36);
    propose_range(&r, 35..50).await?;
    r.shutdown().await?;
    drop(r);

    let r = MetadataRaft::start(1, dir.path(), 10).await?;
    assert_eq!(snapshot_of(&r), expected(50));
    r.shutdown().await?;
    Ok(())
}

/// Dropping the runtime kills every task mid-flight without a graceful shutdown, which is
/// as close to SIGKILL as an in-process test gets.
#[test]
fn abrupt_stop_keeps_acknowledged_entries() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    };
    let before = runtime()?.block_on(async {
        let r = MetadataRaft::start(1, dir.path(), 5).await?;
        propose_range(&r, 0..23).await?;
        anyhow::Ok(snapshot_of(&r))
    })?;
    assert_eq!(before, expected(23));

    runtime()?.block_on(async {
        let r = MetadataRaft::start(1, dir.path(), 5).await?;
        assert_eq!(snapshot_of(&r), before);
        r.shutdown().await?;
        anyhow::Ok(())
    })
}

/// A node in `dir` that applied 12 entries and stopped: its state and its log file.
async fn stopped_after_12(dir: &Path) -> anyhow::Result<(serde_json::Value, PathBuf)> {
    let r = MetadataRaft::start(1, dir, 1000).await?;
    propose_range(&r, 0..12).await?;
    let state = snapshot_of(&r);
    r.shutdown().await?;
    Ok((state, dir.join(LOG_FILE)))
}

#[tokio::test]
async fn torn_tail_is_discarded() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (before, log_path) = stopped_after_12(dir.path()).await?;
    let clean_len = fs::metadata(&log_path)?.len();
    // A half-written record: plausible header, truncated payload.
    let mut torn = Vec::new();
    encode_record(&Record::Purged(LogId::default()), &mut torn)?;
    torn.truncate(torn.len() - 3);
    torn.extend_from_slice(b"\0\0garbage");
    OpenOptions::new()
        .append(true)
        .open(&log_path)?
        .write_all(&torn)?;

    let r = MetadataRaft::start(1, dir.path(), 1000).await?;
    assert_eq!(snapshot_of(&r), before);
    propose_range(&r, 12..15).await?;
    assert_eq!(snapshot_of(&r), expected(15));
    r.shutdown().await?;
    drop(r);
    assert!(fs::metadata(&log_path)?.len() > clean_len);

    let r = MetadataRaft::start(1, dir.path(), 1000).await?;
    assert_eq!(snapshot_of(&r), expected(15));
    r.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn damage_in_the_middle_refuses_to_start_and_zeros_are_a_torn_tail() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (before, log_path) = stopped_after_12(dir.path()).await?;
    let clean = fs::read(&log_path)?;

    // A zero-filled tail (the file grew, its data never reached the disk) is cut.
    let mut zeros = clean.clone();
    zeros.extend_from_slice(&[0u8; 300]);
    fs::write(&log_path, &zeros)?;
    let r = MetadataRaft::start(1, dir.path(), 1000).await?;
    assert_eq!(snapshot_of(&r), before);
    r.shutdown().await?;
    drop(r);
    assert_eq!(fs::read(&log_path)?, clean);

    // One flipped bit in the second record's payload, with good records behind it.
    let (_, first) = decode_record(&clean)?.ok_or_else(|| anyhow::anyhow!("empty log"))?;
    let mut damaged = clean.clone();
    damaged[first + HEADER_LEN + 2] ^= 0x10;
    fs::write(&log_path, &damaged)?;
    let err = start_error(dir.path(), "a log damaged in the middle").await?;
    let message = err.to_string();
    assert!(message.contains(&format!("byte {first}")), "{message}");
    assert!(message.contains("damaged"), "{message}");
    // Nothing was cut.
    assert_eq!(fs::read(&log_path)?, damaged);
    Ok(())
}

/// A record as format 1 wrote it: the same framing around a JSON payload.
fn json_record(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(json).to_le_bytes());
    out.extend_from_slice(json);
    out
}

/// The error a start on `dir` must fail with (`why` names what should stop it).
async fn start_error(dir: &Path, why: &str) -> anyhow::Result<RaftGlueError> {
    match MetadataRaft::start(1, dir, 1000).await {
        Ok(r) => {
            r.shutdown().await?;
            anyhow::bail!("start must fail on {why}")
        }
        Err(e) => Ok(e),
    }
}

#[tokio::test]
async fn old_format_directory_is_refused() -> anyhow::Result<()> {
    // A JSON log, as format 1 wrote it.
    let dir = tempfile::tempdir()?;
    let mut log = json_record(br#"{"Purged":{"leader_id":{"term":1,"node_id":1},"index":4}}"#);
    log.extend(json_record(
        br#"{"Entry":{"log_id":{"leader_id":{"term":1,"node_id":1},"index":5},"payload":"Blank"}}"#,
    ));
    fs::write(dir.path().join(LOG_FILE), &log)?;
    let err = start_error(dir.path(), "a format 1 directory").await?;
    assert!(matches!(err, RaftGlueError::LegacyFormat { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("older Strata (JSON format)"), "{message}");
    assert!(message.contains("--recover-from-store"), "{message}");
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
    // Nothing was truncated or rewritten.
    assert_eq!(fs::read(dir.path().join(LOG_FILE))?, log);

    // A JSON snapshot alone is enough to tell.
    let dir = tempfile::tempdir()?;
    fs::write(dir.path().join(LEGACY_SNAPSHOT_FILE), b"{}")?;
    let err = start_error(dir.path(), "a format 1 directory").await?;
    assert!(matches!(err, RaftGlueError::LegacyFormat { .. }), "{err}");
    Ok(())
}

#[tokio::test]
async fn undecodable_whole_record_is_an_error_not_a_torn_tail() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let r = MetadataRaft::start(1, dir.path(), 1000).await?;
    propose_range(&r, 0..3).await?;
    r.shutdown().await?;
    drop(r);
    let log_path = dir.path().join(LOG_FILE);
    let mut payload = codec::encode(Kind::LogRecord, &Record::Purged(LogId::default()))?;
    payload[4..6].copy_from_slice(&(codec::FORMAT_VERSION + 1).to_le_bytes());
    let before = fs::read(&log_path)?;
    let mut log = before.clone();
    log.extend(json_record(&payload));
    fs::write(&log_path, &log)?;
    let err = start_error(dir.path(), "a record from a newer format").await?;
    let message = err.to_string();
    let newer = format!("newer Strata (format {}", codec::FORMAT_VERSION + 1);
    assert!(message.contains(&newer), "{message}");
    assert!(
        message.contains(&format!("byte {}", before.len())),
        "{message}"
    );
    Ok(())
}

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(openraft::CommittedLeaderId::new(term, 1), index)
}

fn sample_command() -> Command {
    Command::CommitSegments {
        now_ms: 2,
        max_age_ms: 0,
        segments: vec![SegmentCommit {
            txn: Vec::new(),
            object: "segments/1-1-1-1.seg".into(),
            object_size: 4096,
            uploaded_ms: 1,
            entries: vec![SegmentEntry {
                topic: "t".into(),
                partition: 2,
                position: 8,
                length: 100,
                offset_count: 3,
                max_timestamp: -1,
                producer: Some(ProducerBatch {
                    producer_id: 7,
                    epoch: 1,
                    first_sequence: 0,
                    last_sequence: 2,
                }),
            }],
        }],
    }
}

fn sample_entries() -> Vec<Entry<TypeConfig>> {
    let membership = openraft::Membership::new(
        vec![[1, 2, 3].into_iter().collect()],
        BTreeMap::from([
            (1, BasicNode::new("a:1")),
            (2, BasicNode::new("b:2")),
            (3, BasicNode::new("c:3")),
            (4, BasicNode::new("learner:4")),
        ]),
    );
    vec![
        Entry {
            log_id: log_id(2, 10),
            payload: EntryPayload::Normal(sample_command()),
        },
        Entry {
            log_id: log_id(2, 11),
            payload: EntryPayload::Membership(membership),
        },
        Entry {
            log_id: log_id(3, 12),
            payload: EntryPayload::Blank,
        },
    ]
}

/// openraft's types have no `PartialEq` for every config; their Debug form shows
/// every field.
fn same<T: Debug>(a: &T, b: &T) {
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}

#[test]
fn openraft_types_round_trip_through_the_codec() -> anyhow::Result<()> {
    for entry in sample_entries() {
        let mut buf = Vec::new();
        encode_record(&Record::Entry(entry.clone()), &mut buf)?;
        match decode_record(&buf)? {
            Some((Record::Entry(back), used)) => {
                assert_eq!(used, buf.len());
                same(&back, &entry);
            }
            _ => anyhow::bail!("entry did not decode"),
        }
    }
    let vote = Vote::new_committed(4, 2);
    same(
        &codec::decode::<Vote<NodeId>>(Kind::RaftRpc, &codec::encode(Kind::RaftRpc, &vote)?)?,
        &vote,
    );
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(2, 11)),
        last_membership: StoredMembership::new(
            Some(log_id(2, 11)),
            openraft::Membership::new(
                vec![[1].into_iter().collect()],
                BTreeMap::from([(1, BasicNode::new("a:1"))]),
            ),
        ),
        snapshot_id: "2-1-11".into(),
    };
    let back: SnapshotMeta<NodeId, BasicNode> = codec::decode(
        Kind::LocalSnapshot,
        &codec::encode(Kind::LocalSnapshot, &meta)?,
    )?;
    same(&back, &meta);
    Ok(())
}

#[test]
fn raft_messages_round_trip_through_the_codec() -> anyhow::Result<()> {
    use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest};
    let requests = [
        RaftRequest::AppendEntries(AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(log_id(2, 9)),
            entries: sample_entries(),
            leader_commit: Some(log_id(2, 9)),
        }),
        RaftRequest::InstallSnapshot(InstallSnapshotRequest {
            vote: Vote::new_committed(3, 1),
            meta: SnapshotMeta::default(),
            offset: 0,
            data: vec![0, 1, 2, 255],
            done: true,
        }),
        RaftRequest::Propose(sample_command()),
        RaftRequest::Join {
            node_id: 4,
            addr: "learner:4".into(),
        },
        RaftRequest::ChangeVoters {
            add: vec![4],
            remove: vec![3],
        },
    ];
    for request in &requests {
        let back: RaftRequest =
            codec::decode(Kind::RaftRpc, &codec::encode(Kind::RaftRpc, request)?)?;
        same(&back, request);
    }
    let fatal = openraft::error::Fatal::StorageError(
        StorageIOError::<NodeId>::write_logs(&io::Error::other("disk full")).into(),
    );
    let replies = [
        RaftReply::AppendEntries(Ok(AppendEntriesResponse::Success)),
        RaftReply::AppendEntries(Err(RaftError::Fatal(fatal))),
        RaftReply::Propose(Ok((
            Response::Segments(vec![vec![Ok(5), Err(StateError::DuplicateSequence(3))]]),
            12,
        ))),
        RaftReply::Join(Err("no leader".into())),
    ];
    for reply in &replies {
        let back: RaftReply = codec::decode(Kind::RaftRpc, &codec::encode(Kind::RaftRpc, reply)?)?;
        same(&back, reply);
    }
    Ok(())
}

/// A state exercising every optional part (producers, cluster, group metadata) comes
/// back equal from a snapshot file.
#[test]
fn snapshot_file_round_trips_a_full_state() -> anyhow::Result<()> {
    let mut state = MetadataState::default();
    for i in 0..5 {
        state.apply(&add(i));
    }
    state.apply(&Command::CreateTopic {
        name: "t".into(),
        topic_id: [3; 16],
        partitions: 3,
        configs: BTreeMap::from([("cleanup.policy".into(), "delete".into())]),
        now_ms: 1,
        preferred: Vec::new(),
    });
    state.apply(&Command::InitProducer { current: None });
    state.apply(&sample_command());
    state.apply(&Command::CommitOffsets {
        group: "g".into(),
        offsets: vec![OffsetCommit {
            topic: "t".into(),
            partition: 2,
            offset: 3,
            leader_epoch: -1,
            metadata: None,
            commit_ms: 9,
        }],
    });
    state.apply(&Command::Cluster(ClusterCommand::Register {
        id: 1,
        host: "h".into(),
        port: 9092,
        rack: Some("az1".into()),
        now_ms: 5,
    }));
    assert!(state
        .partition("t", 2)
        .is_some_and(|p| !p.producers.is_empty()));
    let file = SnapshotFile {
        meta: SnapshotMeta::default(),
        state: state.clone(),
    };
    let bytes = codec::encode(Kind::LocalSnapshot, &file)?;
    let back: SnapshotFile = codec::decode(Kind::LocalSnapshot, &bytes)?;
    assert_eq!(back.state, state);
    let (meta, _) =
        codec::decode_prefix::<SnapshotMeta<NodeId, BasicNode>>(Kind::LocalSnapshot, &bytes)?;
    same(&meta, &file.meta);
    Ok(())
}

proptest::proptest! {
    #[test]
    fn garbage_log_and_frames_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
        let _ = decode_record(&bytes);
        let mut framed = Kind::LogRecord.magic().to_vec();
        framed.extend_from_slice(&codec::FORMAT_VERSION.to_le_bytes());
        framed.extend_from_slice(&bytes);
        let _ = codec::decode::<Record>(Kind::LogRecord, &framed);
        framed[..4].copy_from_slice(&Kind::RaftRpc.magic());
        let _ = codec::decode::<RaftRequest>(Kind::RaftRpc, &framed);
        let _ = codec::decode::<RaftReply>(Kind::RaftRpc, &framed);
        framed[..4].copy_from_slice(&Kind::LocalSnapshot.magic());
        let _ = codec::decode::<SnapshotFile>(Kind::LocalSnapshot, &framed);
    }
}

#[tokio::test]
async fn corrupt_vote_file_names_path() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    fs::write(dir.path().join(VOTE_FILE), b"{not json")?;
    let err = match MetadataRaft::start(1, dir.path(), 10).await {
        Ok(_) => anyhow::bail!("start must fail on a corrupt vote file"),
        Err(e) => e,
    };
    assert!(err.to_string().contains(VOTE_FILE), "{err}");
    Ok(())
}

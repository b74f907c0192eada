//! Reads as fresh as the cluster: a read barrier for answers that say where a log ends
//! (ListOffsets, a Fetch's high watermark, OffsetForLeaderEpoch).
//!
//! A produce is acknowledged once its entry is committed by the leader (and applied by
//! the broker that answers), so another broker's replica may not hold it yet: a follower
//! learns of a commit with the leader's next AppendEntries, and a leader that was frozen
//! or cut off may not know that it was deposed. Raft's read index closes the gap. Before
//! answering, a broker gets an index that covers every entry committed before the
//! request arrived, and waits until its replica has applied it:
//!
//! - **The leader** gives its commit index, once it knows it is still the leader: a
//!   majority of the voters accepted one of its AppendEntries sent within the last
//!   [`READ_LEASE`] (each of them then refuses its vote to any other candidate for
//!   openraft's leader lease, the election timeout's maximum, so no other leader can
//!   have been elected meanwhile), and it has committed an entry of its own term (its
//!   commit index is then the cluster's). Otherwise openraft confirms the leadership with
//!   a round of heartbeats (`get_read_log_id`).
//! - **A follower or learner** asks the leader for it ([`RaftRequest::ReadIndex`], on a
//!   connection it keeps), following a new leader at once.
//!
//! Requests that arrive together share one round, and a request waits for a round that
//! started after it arrived. A barrier that cannot complete within its time (no leader,
//! the leader out of reach) refuses the read: the client asks again, or elsewhere. An
//! older leader, which cannot decode `ReadIndex`, closes the connection; the follower
//! then answers from its replica, as older builds do.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::network::{self, Link, RaftReply, RaftRequest};
use super::*;

/// How recently a majority must have accepted the leader's AppendEntries for it to
/// answer from its commit index alone: below openraft's leader lease (the election
/// timeout's maximum, 600 ms), during which those voters refuse any other candidate.
pub(super) const READ_LEASE: Duration = Duration::from_millis(450);
/// How long one round keeps trying (a new leader is elected well within it).
const ROUND_TIMEOUT: Duration = Duration::from_secs(2);
/// The pause before a barrier with time left starts another round after a failed one.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// What a round found.
#[derive(Debug, Clone)]
pub(super) enum ReadIndex {
    /// Every entry committed before the round started is at or below it.
    At(u64),
    /// The leader cannot answer read-index requests (an older build): read as before.
    Unsupported,
}

/// The rounds of read-index requests, shared by the requests that wait on them.
pub(super) struct ReadRounds {
    state: std::sync::Mutex<RoundState>,
    done: watch::Sender<(u64, Result<ReadIndex, String>)>,
    /// The connection to the leader a follower's rounds use (only the round in progress
    /// touches it).
    link: tokio::sync::Mutex<Option<(NodeId, Link)>>,
}

#[derive(Debug, Default)]
struct RoundState {
    /// The last round started; rounds are numbered from 1.
    started: u64,
    /// The highest round a waiting request needs.
    wanted: u64,
    running: bool,
}

impl Default for ReadRounds {
    fn default() -> Self {
        Self {
            state: std::sync::Mutex::new(RoundState::default()),
            done: watch::channel((0, Err(String::new()))).0,
            link: tokio::sync::Mutex::new(None),
        }
    }
}

impl MetadataRaft {
    /// Waits until this node's replica holds every entry committed before the call, for
    /// at most `timeout`. Err: it could not tell (no leader, the leader out of reach), and
    /// the caller must not answer from the replica.
    pub async fn read_barrier(&self, timeout: Duration) -> Result<(), RaftGlueError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // A round gives up after ROUND_TIMEOUT; a caller that may wait longer (a long-poll
        // Fetch) tries again, so a broker back from a short cut still answers.
        let index = loop {
            let round = tokio::time::timeout_at(deadline, self.read_index())
                .await
                .map_err(|_| RaftGlueError::Propose(format!("no read index within {timeout:?}")))?;
            match round {
                Ok(index) => break index,
                Err(e) if tokio::time::Instant::now() + RETRY_PAUSE >= deadline => {
                    return Err(RaftGlueError::Propose(e));
                }
                Err(_) => tokio::time::sleep(RETRY_PAUSE).await,
            }
        };
        let ReadIndex::At(index) = index else {
            return Ok(());
        };
        let mut applied = self.inner.applied.clone();
        let caught_up = tokio::time::timeout_at(deadline, applied.wait_for(|a| *a >= index))
            .await
            .is_ok_and(|r| r.is_ok());
        if caught_up {
            return Ok(());
        }
        Err(RaftGlueError::Propose(format!(
            "entry {index} not applied here within {timeout:?}"
        )))
    }

    /// The read index of a round that started after this call.
    async fn read_index(&self) -> Result<ReadIndex, String> {
        let rounds = &self.inner.reads;
        let mut done = rounds.done.subscribe();
        let want = {
            let mut state = rounds
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let want = state.started + 1;
            state.wanted = state.wanted.max(want);
            if !state.running {
                state.running = true;
                state.started = want;
                tokio::spawn(self.clone().run_rounds());
            }
            want
        };
        let reached = done.wait_for(|(round, _)| *round >= want).await;
        match reached {
            Ok(done) => done.1.clone(),
            Err(_) => Err("the metadata node stopped".to_owned()),
        }
    }

    /// Runs rounds while requests wait for them.
    async fn run_rounds(self) {
        let rounds = &self.inner.reads;
        loop {
            let round = rounds
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .started;
            let result = self.read_index_round().await;
            let _previous = rounds.done.send_replace((round, result));
            let mut state = rounds
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if state.wanted > state.started {
                state.started += 1;
            } else {
                state.running = false;
                return;
            }
        }
    }

    /// One round: from this node if it leads, else from the leader.
    async fn read_index_round(&self) -> Result<ReadIndex, String> {
        let deadline = tokio::time::Instant::now() + ROUND_TIMEOUT;
        let mut last_error = String::from("no metadata leader known");
        loop {
            // Cut off (the test switch): like a leader out of reach, keep trying until the
            // deadline, so a broker that is back within it still answers.
            let isolated = self.inner.isolation.isolated();
            if isolated {
                last_error = "isolated: no read index".into();
            }
            let (me, leader, addr) = {
                let metrics = self.inner.raft.metrics();
                let m = metrics.borrow();
                let addr = m.current_leader.and_then(|l| {
                    m.membership_config
                        .membership()
                        .get_node(&l)
                        .map(|n| n.addr.clone())
                });
                (m.id, m.current_leader, addr)
            };
            match leader.filter(|_| !isolated) {
                Some(l) if l == me => {
                    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match self.leader_read_index(remaining).await {
                        Ok(index) => return Ok(ReadIndex::At(index)),
                        Err(e) => last_error = e,
                    }
                }
                Some(l) => match addr.filter(|a| !a.is_empty()) {
                    Some(addr) => {
                        let ask = self.ask_leader(l, &addr, deadline);
                        tokio::select! {
                            answer = ask => match answer {
                                Ok(found) => return Ok(found),
                                Err(e) => last_error = e,
                            },
                            // A leader that froze holds the call; ask the next one at once.
                            () = self.leader_moved(Some(l)) => continue,
                        }
                    }
                    None => last_error = format!("no address for the metadata leader {l}"),
                },
                None => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(last_error);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// On the leader: its commit index, once it knows no other leader can exist.
    pub(super) async fn leader_read_index(&self, timeout: Duration) -> Result<u64, String> {
        let (me, term, voters) = {
            let metrics = self.inner.raft.metrics();
            let m = metrics.borrow();
            if m.current_leader != Some(m.id) {
                return Err(format!(
                    "not the metadata leader (the leader is {:?})",
                    m.current_leader
                ));
            }
            let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
            (m.id, m.current_term, voters)
        };
        let committed = self.inner.log.lock().committed;
        let now = Instant::now();
        let leased = self
            .inner
            .acks
            .quorum_since(voters, me, term, now)
            .is_some_and(|t| now.saturating_duration_since(t) < READ_LEASE);
        if let Some(committed) = committed.filter(|c| leased && c.leader_id.get_term() == term) {
            return Ok(committed.index);
        }
        // Not sure: openraft confirms the leadership with heartbeats to a majority.
        match tokio::time::timeout(timeout, self.inner.raft.get_read_log_id()).await {
            Ok(Ok((read, _applied))) => Ok(read.map_or(0, |l| l.index)),
            Ok(Err(e)) => Err(format!("leadership not confirmed: {e}")),
            Err(_) => Err(format!("leadership not confirmed within {timeout:?}")),
        }
    }

    /// On a follower: the leader's read index, on the connection kept for it (made
    /// again once if it broke since the last round).
    async fn ask_leader(
        &self,
        leader: NodeId,
        addr: &str,
        deadline: tokio::time::Instant,
    ) -> Result<ReadIndex, String> {
        let mut link = self.inner.reads.link.lock().await;
        if link.as_ref().is_some_and(|(id, _)| *id != leader) {
            *link = None;
        }
        let mut reused = link.is_some();
        loop {
            let attempt = async {
                if link.is_none() {
                    *link = Some((leader, network::connect(addr, &self.inner.auth).await?));
                }
                let Some((_, stream)) = link.as_mut() else {
                    return Err(std::io::Error::other("no connection"));
                };
                network::call(stream, &RaftRequest::ReadIndex).await
            };
            let reply = tokio::time::timeout_at(deadline, attempt).await;
            if !matches!(reply, Ok(Ok(RaftReply::ReadIndex(_)))) {
                *link = None;
            }
            return match reply {
                Ok(Ok(RaftReply::ReadIndex(Ok(index)))) => Ok(ReadIndex::At(index)),
                Ok(Ok(RaftReply::ReadIndex(Err(e)))) => Err(e),
                Ok(Ok(_)) => Err("unexpected reply to a read-index request".into()),
                Ok(Err(_)) if reused => {
                    reused = false;
                    continue;
                }
                // Connected, asked, and the leader hung up: it cannot decode the request.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    Ok(ReadIndex::Unsupported)
                }
                Ok(Err(e)) => Err(format!(
                    "asking the metadata leader {leader} for a read index: {e}"
                )),
                Err(_) => Err(format!(
                    "the metadata leader {leader} did not answer in time"
                )),
            };
        }
    }
}

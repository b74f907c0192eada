//! Who is in the metadata cluster: a new node joins as a learner (asking the voters in
//! turn until one, or its leader, adds it), and the operator (`strata voters`) promotes
//! learners to voters and demotes voters to learners. Both run on the leader; a follower
//! forwards them.

use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::BasicNode;

use super::network::{self, RaftReply, RaftRequest};
use super::*;

/// How far behind the leader's log a learner may be and still be promoted to voter.
const CAUGHT_UP_SLACK: u64 = 16;

impl MetadataRaft {
    /// Promotes learners to voters and demotes voters to learners, on the leader (a
    /// follower forwards). A learner is promoted only once it has caught up, so that it
    /// counts toward a quorum only when it holds what the quorum acknowledged.
    pub(super) async fn change_voters(
        &self,
        add: Vec<NodeId>,
        remove: Vec<NodeId>,
    ) -> Result<Vec<NodeId>, String> {
        use openraft::ChangeMembers;
        let metrics = self.inner.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(metrics.id) {
            if self.inner.isolation.isolated() {
                return Err("isolated: not forwarding the membership change".into());
            }
            let leader = metrics
                .current_leader
                .and_then(|id| {
                    metrics
                        .membership_config
                        .membership()
                        .get_node(&id)
                        .cloned()
                })
                .filter(|n| !n.addr.is_empty())
                .ok_or("no metadata leader elected yet")?;
            let request = RaftRequest::ChangeVoters { add, remove };
            return match network::call_once(
                &leader.addr,
                &self.inner.auth,
                &request,
                PROPOSE_TIMEOUT,
            )
            .await
            {
                Ok(RaftReply::ChangeVoters(result)) => result,
                Ok(_) => Err("unexpected reply to a forwarded membership change".into()),
                Err(e) => Err(format!("forwarding to the leader: {e}")),
            };
        }
        let last = metrics.last_log_index.unwrap_or(0);
        for id in &add {
            let matched = metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .map_or(0, |l| l.index);
            if !metrics
                .membership_config
                .membership()
                .learner_ids()
                .any(|l| l == *id)
            {
                return Err(format!(
                    "node {id} is not a learner of this cluster (start it first: it joins as a learner)"
                ));
            }
            if matched + CAUGHT_UP_SLACK < last {
                return Err(format!(
                    "node {id} has not caught up yet (it holds up to index {matched} of {last}); retry shortly"
                ));
            }
        }
        let changes = [
            (!add.is_empty()).then(|| ChangeMembers::AddVoterIds(add.iter().copied().collect())),
            (!remove.is_empty())
                .then(|| ChangeMembers::RemoveVoters(remove.iter().copied().collect())),
        ];
        for change in changes.into_iter().flatten() {
            // `retain`: a demoted voter stays a learner and still serves clients.
            self.inner
                .raft
                .change_membership(change, true)
                .await
                .map_err(|e| e.to_string())?;
        }
        let voters: Vec<NodeId> = self
            .inner
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        if !add.is_empty() || !remove.is_empty() {
            tracing::info!(?add, ?remove, ?voters, "metadata voters changed");
        }
        Ok(voters)
    }

    /// The membership as this node knows it: voters, then learners (not voters).
    pub fn members(&self) -> (Vec<NodeId>, Vec<NodeId>) {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let learners = membership
            .learner_ids()
            .filter(|id| !voters.contains(id))
            .collect();
        (voters, learners)
    }

    /// Drops what this node keeps per peer for nodes no longer in the membership.
    pub fn forget_departed_peers(&self) {
        let metrics = self.inner.raft.metrics();
        let members: Vec<NodeId> = metrics
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect();
        self.inner.acks.retain(|id| members.contains(&id));
    }

    /// Removes learners from the membership, on the leader: the leader stops replicating
    /// to them. A removed node that comes back asks to join again (see
    /// [`join_as_learner`]). Voters are never removed here.
    pub async fn remove_learners(&self, ids: Vec<NodeId>) -> Result<(), RaftGlueError> {
        use openraft::ChangeMembers;
        let (voters, learners) = self.members();
        let ids: std::collections::BTreeSet<NodeId> = ids
            .into_iter()
            .filter(|id| learners.contains(id) && !voters.contains(id))
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let removed: Vec<NodeId> = ids.iter().copied().collect();
        let change = self
            .inner
            .raft
            .change_membership(ChangeMembers::RemoveNodes(ids), false);
        match tokio::time::timeout(PROPOSE_TIMEOUT, change).await {
            Ok(Ok(_)) => {
                tracing::info!(?removed, "learners removed from the metadata cluster");
                self.forget_departed_peers();
                Ok(())
            }
            Ok(Err(e)) => Err(RaftGlueError::Propose(e.to_string())),
            Err(_) => Err(RaftGlueError::Propose(format!(
                "learner removal not committed within {PROPOSE_TIMEOUT:?}"
            ))),
        }
    }

    /// Gives a broker started with `--node-id auto` its id: a `ClusterCommand::Allocate`
    /// proposed (forwarded to the leader if need be) with a floor above every Raft member
    /// and [`AUTO_ID_BASE`], so hand-picked ids below it never meet an automatic one.
    pub(super) async fn allocate_node_id(
        &self,
        host: String,
        port: i32,
        rack: Option<String>,
    ) -> Result<NodeId, String> {
        use crate::metadata::state::cluster::ClusterCommand;
        let (voters, learners) = self.members();
        let floor = voters
            .iter()
            .chain(&learners)
            .map(|id| id + 1)
            .fold(AUTO_ID_BASE, u64::max);
        let cmd = Command::Cluster(ClusterCommand::Allocate {
            floor,
            host,
            port,
            rack,
            now_ms: crate::clock::now_ms(),
        });
        match self.propose(cmd).await {
            Ok(Response::NodeId(id)) => {
                tracing::info!(id, "automatic node id given out");
                Ok(id)
            }
            Ok(other) => Err(format!("unexpected answer to an id allocation: {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Adds a learner (on the leader; a follower forwards to it).
    pub(super) async fn add_learner(&self, node_id: NodeId, addr: String) -> Result<(), String> {
        match self
            .inner
            .raft
            .add_learner(node_id, BasicNode { addr: addr.clone() }, false)
            .await
        {
            Ok(_) => {
                tracing::info!(node_id, %addr, "learner added to the metadata cluster");
                Ok(())
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))
                if self.inner.isolation.isolated() =>
            {
                Err("isolated: not forwarding the join to the leader".into())
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                let leader = f.leader_node.ok_or("no metadata leader elected yet")?;
                match network::call_once(
                    &leader.addr,
                    &self.inner.auth,
                    &RaftRequest::Join { node_id, addr },
                    PROPOSE_TIMEOUT,
                )
                .await
                {
                    Ok(RaftReply::Join(result)) => result,
                    Ok(_) => Err("unexpected reply to a forwarded join".into()),
                    Err(e) => Err(e.to_string()),
                }
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Automatic node ids start here; hand-picked ids (voters, fixed brokers) stay below.
pub const AUTO_ID_BASE: NodeId = 1000;

/// Asks the voters in turn for an automatic node id until one answers (a broker
/// started with `--node-id auto` on a new disk), for `timeout` at most. `options` are
/// the broker's Raft options (its id still 0): the voters, the secret and the TLS.
pub async fn request_node_id(
    options: &RaftOptions,
    (host, port, rack): (String, i32, Option<String>),
    timeout: Duration,
) -> Result<NodeId, RaftGlueError> {
    let tls = options
        .tls
        .as_ref()
        .map(network::RaftTls::broker)
        .transpose()
        .map_err(|e| RaftGlueError::Start(format!("raft_tls: {e}")))?;
    let auth = Auth {
        secret: options.secret.clone(),
        me: auth::Identity::Node(0),
        tls,
    };
    let auth = &auth;
    let voters = &options.voters;
    let request = RaftRequest::AllocateNodeId { host, port, rack };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::from("no voter answered");
    while tokio::time::Instant::now() < deadline {
        for addr in voters.values() {
            match network::call_once(addr, auth, &request, PROPOSE_TIMEOUT).await {
                Ok(RaftReply::AllocateNodeId(Ok(id))) => return Ok(id),
                Ok(RaftReply::AllocateNodeId(Err(e))) => last = format!("{addr}: {e}"),
                Ok(_) => last = format!("{addr}: unexpected reply"),
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(RaftGlueError::Start(format!(
        "no automatic node id from the voters within {timeout:?} ({last}; check --controllers \
         and that a majority of the voters is running)"
    )))
}

/// A learner that hears from no leader for this long asks to join again: the leader may
/// have removed it (a broker down for longer than `--broker-forget-after-ms`).
const REJOIN_AFTER: Duration = Duration::from_secs(10);

/// A learner asks the voters, in turn, to add it until one (or its leader) does: at once
/// when its disk is new, and again whenever no leader has reached it for
/// [`REJOIN_AFTER`] (it was removed while it was away). Ends when the node stops.
pub(super) async fn keep_membership(
    node: std::sync::Weak<Inner>,
    options: RaftOptions,
    auth: Auth,
    fresh: bool,
) {
    let request = RaftRequest::Join {
        node_id: options.node_id,
        addr: options.addr.clone(),
    };
    let mut joining = fresh;
    let mut wait = Duration::ZERO;
    loop {
        tokio::time::sleep(wait).await;
        wait = Duration::from_millis(if joining { 500 } else { 2000 });
        let Some(inner) = node.upgrade() else {
            return;
        };
        let this = MetadataRaft { inner };
        let silent = this
            .last_leader_contact()
            .map_or(this.inner.started.elapsed(), |at| at.elapsed());
        if joining && this.inner.raft.metrics().borrow().current_leader.is_some() {
            joining = false;
        }
        if !joining && silent < REJOIN_AFTER {
            continue;
        }
        if !joining {
            tracing::info!(
                ?silent,
                "no metadata leader has reached this learner: asking to join again"
            );
        }
        drop(this);
        for addr in options.voters.values() {
            match network::call_once(addr, &auth, &request, PROPOSE_TIMEOUT).await {
                Ok(RaftReply::Join(Ok(()))) => {
                    joining = false;
                    break;
                }
                Ok(RaftReply::Join(Err(e))) => tracing::debug!(%addr, error = %e, "join refused"),
                Ok(_) => {}
                // A wrong secret is logged (rate-limited) where the handshake failed.
                Err(e) => tracing::debug!(%addr, error = %e, "voter unreachable"),
            }
        }
    }
}

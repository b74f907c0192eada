//! Serving peers: this node's [`network::Handler`]. Raft's own RPCs go to openraft (a
//! voter on a new disk first checks a candidate against the bucket), and a forwarded
//! proposal, a join or a voter change to the node. With a cluster secret, every request is
//! first checked against who sent it: only members propose, a node joins only for itself,
//! and the operator only changes voters.

use std::sync::Arc;

use openraft::raft::AppendEntriesResponse;

use super::auth::Identity;
use super::network::{self, RaftReply, RaftRequest};
use super::*;
use crate::tls::{ClientAuth, TlsSettings};

impl MetadataRaft {
    /// Serves peers' Raft traffic on `listen`, from now on, in the background.
    pub(super) async fn serve_peers(
        &self,
        listen: &str,
        tls: Option<&TlsSettings>,
        isolation: Isolation,
        auth: Auth,
    ) -> Result<(), RaftGlueError> {
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
            RaftGlueError::Start(format!(
                "cannot listen for raft on {listen}: {e} (pass --raft-listen with a free HOST:PORT)"
            ))
        })?;
        let mutual_tls = tls.is_some_and(|t| t.client_auth == ClientAuth::Required);
        if auth.secret.is_none() && !mutual_tls {
            tracing::warn!(
                %listen,
                "the Raft port is unauthenticated: anyone who reaches it can rewrite the \
                 metadata; set --cluster-secret-file (or --raft-tls with \
                 --tls-client-auth required) on every broker"
            );
        }
        tokio::spawn(network::serve(
            listener,
            Arc::new(self.clone()),
            isolation,
            auth,
        ));
        Ok(())
    }
}

impl network::Handler for MetadataRaft {
    async fn handle(
        &self,
        peer: Option<Identity>,
        request: RaftRequest,
    ) -> Result<RaftReply, String> {
        if let Some(refusal) = self.refuse_sender(peer, &request) {
            return match request {
                RaftRequest::Propose(_) => Ok(RaftReply::Propose(Err(refusal))),
                RaftRequest::Join { .. } => Ok(RaftReply::Join(Err(refusal))),
                RaftRequest::ChangeVoters { .. } => Ok(RaftReply::ChangeVoters(Err(refusal))),
                RaftRequest::ReadIndex => Ok(RaftReply::ReadIndex(Err(refusal))),
                RaftRequest::Members => Ok(RaftReply::Members(Err(refusal))),
                RaftRequest::AllocateNodeId { .. } => Ok(RaftReply::AllocateNodeId(Err(refusal))),
                _ => Err(refusal),
            };
        }
        let raft = &self.inner.raft;
        Ok(match request {
            RaftRequest::AppendEntries(rpc) => {
                let reply = raft.append_entries(rpc).await;
                // Anything but a refusal of the sender's term means a current leader
                // reached this node.
                if matches!(&reply, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
                    self.record_leader_contact();
                }
                RaftReply::AppendEntries(reply)
            }
            RaftRequest::Vote(rpc) => match self.refuse_vote(&rpc) {
                Some(refusal) => RaftReply::Vote(Ok(refusal)),
                None => RaftReply::Vote(raft.vote(rpc).await),
            },
            RaftRequest::InstallSnapshot(rpc) => {
                let reply = raft.install_snapshot(rpc).await;
                if reply.is_ok() {
                    self.record_leader_contact();
                }
                RaftReply::InstallSnapshot(reply)
            }
            RaftRequest::Propose(cmd) => {
                RaftReply::Propose(self.propose_forwarded(cmd).await.map_err(|e| e.to_string()))
            }
            RaftRequest::ChangeVoters { add, remove } => {
                RaftReply::ChangeVoters(self.change_voters(add, remove).await)
            }
            RaftRequest::Join { node_id, addr } => {
                RaftReply::Join(self.add_learner(node_id, addr).await)
            }
            RaftRequest::ReadIndex => {
                RaftReply::ReadIndex(self.leader_read_index(read::READ_LEASE * 2).await)
            }
            RaftRequest::Members => RaftReply::Members(Ok(self.members())),
            RaftRequest::AllocateNodeId { host, port, rack } => {
                RaftReply::AllocateNodeId(self.allocate_node_id(host, port, rack).await)
            }
        })
    }
}

impl MetadataRaft {
    /// A voter on a new disk refuses a candidate that lacks what the bucket holds (see
    /// [`RaftOptions::vote_floor`]); None lets Raft decide as usual.
    fn refuse_vote(
        &self,
        rpc: &openraft::raft::VoteRequest<NodeId>,
    ) -> Option<openraft::raft::VoteResponse<NodeId>> {
        use std::sync::atomic::Ordering;
        let floor = self.inner.vote_floor.load(Ordering::Acquire);
        if floor == 0 {
            return None;
        }
        let metrics = self.inner.raft.metrics().borrow().clone();
        if metrics.last_log_index.unwrap_or(0) >= floor {
            self.inner.vote_floor.store(0, Ordering::Release);
            tracing::info!(floor, "caught up with the bucket: voting again");
            return None;
        }
        let candidate = rpc.last_log_id.map_or(0, |l| l.index);
        if candidate == 0 || candidate >= floor {
            return None;
        }
        tracing::warn!(
            candidate = rpc.vote.leader_id().voted_for(),
            candidate_last_index = candidate,
            floor,
            "refusing my vote: the candidate's log lacks entries the bucket holds (this voter's disk is new)"
        );
        Some(openraft::raft::VoteResponse::new(
            metrics.vote,
            metrics.last_applied,
            false,
        ))
    }

    /// Whether `id` is a registered member: a voter or learner of the Raft membership,
    /// or a broker the metadata knows.
    fn is_member(&self, id: NodeId) -> bool {
        let in_raft = self
            .inner
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .is_some();
        in_raft
            || self
                .inner
                .state
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .cluster()
                .broker(id)
                .is_some()
    }

    /// Why an authenticated sender may not send `request`, if it may not. Without a
    /// cluster secret nobody is authenticated and everything is accepted, as before.
    fn refuse_sender(&self, peer: Option<Identity>, request: &RaftRequest) -> Option<String> {
        let peer = peer?;
        let member = |id| self.is_member(id);
        match (peer, request) {
            // A joining node asks for itself; a member may forward another's join.
            (Identity::Node(id), RaftRequest::Join { node_id, .. })
                if id == *node_id || member(id) =>
            {
                None
            }
            // Holding the secret is enough: the node has no id to be known by yet.
            (Identity::Node(_), RaftRequest::AllocateNodeId { .. }) => None,
            (Identity::Node(id), RaftRequest::Join { node_id, .. }) => Some(format!(
                "node {id} may not ask for node {node_id} to join (it is not a member)"
            )),
            (Identity::Operator, RaftRequest::ChangeVoters { .. } | RaftRequest::Members) => None,
            (Identity::Operator, _) => {
                Some("an operator may only change voters, not take part in Raft".into())
            }
            // Raft's own RPCs: openraft judges them by term and membership.
            (
                Identity::Node(_),
                RaftRequest::AppendEntries(_)
                | RaftRequest::Vote(_)
                | RaftRequest::InstallSnapshot(_),
            ) => None,
            (
                Identity::Node(id),
                RaftRequest::Propose(_)
                | RaftRequest::ChangeVoters { .. }
                | RaftRequest::ReadIndex
                | RaftRequest::Members,
            ) => (!member(id)).then(|| {
                format!(
                    "refused: node {id} is not a registered member of this cluster (start it \
                         so that it joins first)"
                )
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::Vote;

    use super::super::tests::add;
    use super::*;
    use crate::metadata::state::cluster::ClusterCommand;
    use network::Handler;

    #[tokio::test]
    async fn only_members_propose_and_only_nodes_join() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let r = MetadataRaft::start(1, dir.path(), 1000).await?;
        let propose = || RaftRequest::Propose(add(1));
        let join = |node_id| RaftRequest::Join {
            node_id,
            addr: "127.0.0.1:1".into(),
        };
        let change = || RaftRequest::ChangeVoters {
            add: vec![],
            remove: vec![],
        };
        let stranger = Some(Identity::Node(9));
        // Without a secret nobody is authenticated: as before, nothing is refused here.
        assert_eq!(r.refuse_sender(None, &propose()), None);
        // A voter may propose; a node that is not a member may not, and is told why.
        assert_eq!(r.refuse_sender(Some(Identity::Node(1)), &propose()), None);
        let refusal = r.refuse_sender(stranger, &propose());
        assert!(
            refusal
                .as_deref()
                .is_some_and(|e| e.contains("node 9 is not a registered member")),
            "{refusal:?}"
        );
        assert!(r.refuse_sender(stranger, &change()).is_some());
        // The handler answers a refused proposal with an error, not by applying it.
        match r.handle(stranger, propose()).await {
            Ok(RaftReply::Propose(Err(e))) => assert!(e.contains("not a registered member")),
            other => panic!("{other:?}"),
        }
        // A new node may ask to join for itself only; a member may forward a join.
        assert_eq!(r.refuse_sender(stranger, &join(9)), None);
        assert!(r.refuse_sender(stranger, &join(10)).is_some());
        assert_eq!(r.refuse_sender(Some(Identity::Node(1)), &join(10)), None);
        // The operator (`strata voters`) changes voters and nothing else.
        assert_eq!(r.refuse_sender(Some(Identity::Operator), &change()), None);
        assert!(r
            .refuse_sender(Some(Identity::Operator), &propose())
            .is_some());
        assert!(r
            .handle(
                Some(Identity::Operator),
                RaftRequest::Vote(openraft::raft::VoteRequest::new(Vote::new(1, 1), None),)
            )
            .await
            .is_err());
        // A broker the metadata knows is a member even outside the Raft membership.
        r.propose(Command::Cluster(ClusterCommand::Register {
            id: 9,
            host: "h".into(),
            port: 1,
            rack: None,
            now_ms: 0,
        }))
        .await?;
        assert_eq!(r.refuse_sender(stranger, &propose()), None);
        r.shutdown().await?;
        Ok(())
    }
}

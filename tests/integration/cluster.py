"""The names tests import from `cluster`: the cluster launcher (tests/harness/cluster.py,
where its usage is described) and its `make_cluster` fixture."""

from harness.cluster import (READY_LINE, START_TIMEOUT, STOP_TIMEOUT, Background, Cluster, ClusterError, Node,
                             broker_of)
from harness.fixtures import make_cluster
from harness.process import REPO_ROOT, STRATA_BIN

__all__ = [
    "READY_LINE", "REPO_ROOT", "START_TIMEOUT", "STOP_TIMEOUT", "STRATA_BIN", "Background", "Cluster",
    "ClusterError", "Node", "broker_of", "make_cluster",
]

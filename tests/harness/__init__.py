"""The one launcher of `strata` processes, shared by the integration tests
(tests/integration) and the benchmark (scripts/bench).

* `harness.process`: the binary (STRATA_BIN), free ports, `StrataProcess` (launch with
  the log captured, stop with SIGKILL escalation, CPU/RSS/disk reads from /proc);
* `harness.broker`: `Broker`, a single broker (local, moto-S3 or caller-given store);
* `harness.cluster`: `Node` and `Cluster`, Raft clusters of brokers;
* `harness.s3`: moto's S3 server; `harness.proxy`: `TcpProxy`, a relay that can be cut;
* `harness.s3proxy`: `S3Proxy`, an HTTP proxy in front of moto that adds S3-like latency,
  injects 503 SlowDown brownouts and counts requests by the kind S3 bills;
* `harness.fixtures`: the pytest fixtures (`broker`, `make_cluster`, ...) and `supervise`.

Everything but `harness.fixtures` needs only the standard library at import time (the
benchmark's virtualenv has no pytest)."""

from harness.broker import Broker, BrokerError
from harness.process import REPO_ROOT, STRATA_BIN, StrataProcess, free_port

__all__ = ["REPO_ROOT", "STRATA_BIN", "Broker", "BrokerError", "StrataProcess", "free_port"]

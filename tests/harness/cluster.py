"""A Strata cluster of real `strata` processes on loopback (tests/integration/test_cluster.py
and the other multi-broker tests).

Every node gets a free Kafka port and a free Raft port on 127.0.0.1 and a data dir of its
own; all share one local object store directory (file://).  Nodes 1..voters are the Raft
voters (`--controllers`); any node added later with `add_learner()` is a learner.

    c = Cluster(tmp_path, voters=3)
    c.start_all()              # voters start in parallel (a broker waits for a leader)
    c.kill(2, signal.SIGKILL)  # or SIGTERM (graceful)
    c.start(2)
    n = c.add_learner()
    c.leader()                 # the Raft leader, as Metadata's controller_id says
    c.isolate(1) / c.heal(1)   # the test-only switch: <data-dir>/raft/ISOLATE
    c.close()                  # SIGKILL everything

Options: `store_url` and `env` put every node on another store (an S3 bucket, with the
AWS_* variables in `env`); `raft_relays=True` puts a relay (`harness.raftproxy`) in front
of each node's Raft port, advertised with `--raft-advertise`, and a cluster secret on
every node, so that `c.relays.partition(1)` cuts node 1's Raft traffic both ways while its
Kafka port stays reachable; `metrics=True` gives each node a `/metrics` listener.

A node counts as started when its log says "strata is serving" (the Kafka port is bound
before the node has joined the metadata cluster, so a TCP connect proves nothing).
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from harness.process import StrataProcess, free_port

# A broker waits up to 120 s for a metadata leader; on a loaded 2-core machine starting
# three debug brokers at once takes a few seconds.
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
READY_LINE = "strata is serving"


# Metadata may name a broker under several leader ids (`--leader-ids`, opt-in): its
# own id plus multiples of this.
LEADER_ID_STRIDE = 1 << 20


def broker_of(leader_id: int) -> int:
    """The broker a Metadata leader id stands for."""
    return leader_id % LEADER_ID_STRIDE if leader_id >= LEADER_ID_STRIDE else leader_id


class ClusterError(RuntimeError):
    pass


class Node(StrataProcess):
    """One cluster member. `env` is extra environment (e.g. STRATA_TEST_CLOCK_OFFSET_MS);
    `listener_args` replaces --listen/--advertise (e.g. --listeners ... --advertised-listeners ...)."""

    ENV_DEFAULTS = {
        "RUST_LOG": "info,openraft=warn",
        # Many brokers share this machine: no metrics listener unless a test asks for one
        # (a --metrics-listen flag wins over the variable).
        "STRATA_METRICS_LISTEN": "none",
        "RUST_BACKTRACE": "1",
        "NO_COLOR": "1",
    }
    STOP_TIMEOUT = STOP_TIMEOUT
    LOG_TAIL_LINES = 60

    def __init__(self, cluster: "Cluster", node_id: int):
        super().__init__(cluster.base_dir / f"node{node_id}")
        self.cluster = cluster
        self.id = node_id
        self.kafka_port = free_port()
        self.raft_port = free_port()
        # Where peers reach its Raft port: a relay's port, else the port itself.
        self.raft_advertised_port = self.raft_port
        self.metrics_port = free_port() if cluster.metrics else None
        self.env: dict[str, str] = {}
        self.listener_args: list[str] | None = None
        # "auto": started with `--node-id auto` (its id is then `auto_id()`).
        self.node_id_arg: str | None = None

    def auto_id(self) -> int:
        """The id a `--node-id auto` node was given (kept in its data directory)."""
        return int((self.data_dir / "node_id").read_text().strip())

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def raft_addr(self) -> str:
        return f"127.0.0.1:{self.raft_port}"

    @property
    def raft_advertised(self) -> str:
        return f"127.0.0.1:{self.raft_advertised_port}"

    def metrics(self, timeout: float = 5.0) -> dict[str, float]:
        """This node's unlabelled /metrics samples (needs `metrics=True`)."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=timeout) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, _, value = line.partition(" ")
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
        return out

    def log_size(self) -> int:
        """Bytes in its log now (a mark for `fence_lines`)."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def fence_lines(self, start: int = 0, end: int | None = None) -> list[str]:
        """The lines of its log between byte marks `start` and `end` (default: all of it,
        every start) saying that it fenced itself."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(start)
                text = f.read(None if end is None else max(end - start, 0)).decode(errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if "broker fenced" in line]

    def command(self) -> list[str]:
        cmd = [
            str(self.binary), "serve",
            "--node-id", self.node_id_arg or str(self.id),
            *(self.listener_args if self.listener_args is not None
              else ["--listen", self.bootstrap, "--advertise", self.bootstrap]),
            "--data-dir", str(self.data_dir),
            "--store", self.cluster.store_url,
            "--raft-listen", self.raft_addr,
            "--controllers", self.cluster.controllers,
        ]
        if self.raft_advertised_port != self.raft_port:
            cmd += ["--raft-advertise", self.raft_advertised]
        if self.cluster.secret_path is not None:
            cmd += ["--cluster-secret-file", str(self.cluster.secret_path)]
        if self.metrics_port is not None:
            cmd += ["--metrics-listen", f"127.0.0.1:{self.metrics_port}"]
        if self.cluster.config_path is not None:
            cmd += ["--config", str(self.cluster.config_path)]
        if self.id in self.cluster.racks:
            cmd += ["--rack", self.cluster.racks[self.id]]
        return cmd + self.cluster.extra_args

    def environment(self) -> dict[str, str]:
        env = self.base_environment()
        env.update(self.cluster.env)
        env.update(self.env)
        return env

    def launch(self) -> None:
        """Starts the process without waiting for it to be ready."""
        if self.running:
            raise ClusterError(f"node {self.id} already running")
        self.check_binary(ClusterError)
        super().launch()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                rc = None if self.proc is None else self.proc.returncode
                raise ClusterError(f"node {self.id} exited with {rc} before serving\n{self.log_tail()}")
            if READY_LINE in self.log_since_start():
                return
            time.sleep(0.1)
        raise ClusterError(f"node {self.id} not serving within {timeout}s\n{self.log_tail()}")


class Cluster:
    def __init__(self, base_dir: Path, voters: int = 3, extra_args: list[str] | None = None,
                 config: str | None = None, racks: dict[int, str] | None = None,
                 store_url: str | None = None, env: dict[str, str] | None = None,
                 raft_relays: bool = False, metrics: bool = False):
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.objects_dir = self.base_dir / "objects"
        self.objects_dir.mkdir(exist_ok=True)
        self._store_url = store_url
        self.env = dict(env or {})
        self.metrics = metrics
        self.extra_args = list(extra_args or [])
        self.racks = dict(racks or {})
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = self.base_dir / "strata.toml"
            self.config_path.write_text(config)
        self.secret_path: Path | None = None
        self.relays = None
        if raft_relays:
            from harness.raftproxy import RaftRelays

            self.secret_path = self.base_dir / "cluster.secret"
            self.secret_path.write_text("strata-test-cluster-secret-0123456789\n")
            self.relays = RaftRelays(self.base_dir / "raft-relays.log")
        self.nodes: dict[int, Node] = {}
        for i in range(1, voters + 1):
            self.nodes[i] = Node(self, i)
            if self.relays is not None:
                self.nodes[i].raft_advertised_port = self.relays.add(i, self.nodes[i].raft_port)
        self.voter_ids = list(self.nodes)
        self.controllers = ",".join(f"{n.id}@{n.raft_advertised}" for n in self.nodes.values())

    @property
    def store_url(self) -> str:
        if self._store_url is not None:
            return self._store_url
        return f"file://{self.objects_dir.resolve()}"

    def node(self, n: int) -> Node:
        return self.nodes[n]

    def bootstrap(self, *ids: int) -> str:
        """Bootstrap list of the given nodes (default: every running node)."""
        ids = ids or tuple(i for i, n in self.nodes.items() if n.running)
        return ",".join(self.nodes[i].bootstrap for i in ids)

    def running_ids(self) -> list[int]:
        return [i for i, n in self.nodes.items() if n.running]

    # ------------------------------------------------------------- lifecycle
    def start_all(self, timeout: float = START_TIMEOUT) -> "Cluster":
        """Starts every stopped node at once (voters must start together) and waits."""
        todo = [n for n in self.nodes.values() if not n.running]
        for n in todo:
            n.launch()
        for n in todo:
            n.wait_ready(timeout)
        return self

    def start(self, n: int, timeout: float = START_TIMEOUT) -> Node:
        node = self.nodes[n]
        node.launch()
        node.wait_ready(timeout)
        return node

    def kill(self, n: int, sig: int = signal.SIGKILL) -> int | None:
        return self.nodes[n].stop(sig)

    def stop_all(self, sig: int = signal.SIGTERM) -> dict[int, int | None]:
        """Signals every running node at once, then waits for each."""
        running = [n for n in self.nodes.values() if n.running]
        for n in running:
            n.proc.send_signal(sig)
        return {n.id: n.stop(sig) for n in running}

    def add_learner(self, wait: bool = True) -> int:
        node_id = max(self.nodes) + 1
        self.nodes[node_id] = Node(self, node_id)
        if self.relays is not None:
            self.nodes[node_id].raft_advertised_port = self.relays.add(node_id, self.nodes[node_id].raft_port)
        if wait:
            self.start(node_id)
        else:
            self.nodes[node_id].launch()
        return node_id

    def add_auto_broker(self) -> int:
        """Starts a broker with `--node-id auto` (a learner); returns its slot here, not
        its id (see `Node.auto_id`)."""
        slot = max(self.nodes) + 1
        self.nodes[slot] = Node(self, slot)
        self.nodes[slot].node_id_arg = "auto"
        self.start(slot)
        return slot

    def isolate(self, n: int) -> None:
        path = self.nodes[n].data_dir / "raft" / "ISOLATE"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()

    def heal(self, n: int) -> None:
        (self.nodes[n].data_dir / "raft" / "ISOLATE").unlink(missing_ok=True)

    def close(self) -> None:
        for n in self.nodes.values():
            if n.running:
                # A stopped (SIGSTOP) process must be continued to die promptly.
                n.proc.send_signal(signal.SIGCONT)
            n.stop(signal.SIGKILL)
        if self.relays is not None:
            self.relays.close()

    # -------------------------------------------------------------- metadata
    def metadata(self, via: int | None = None, topic: str | None = None, timeout: float = 10.0):
        """ClusterMetadata from confluent-kafka, asking node `via` (default: any running)."""
        from confluent_kafka.admin import AdminClient

        bootstrap = self.nodes[via].bootstrap if via is not None else self.bootstrap()
        admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout * 1000)})
        if topic is None:
            return admin.list_topics(timeout=timeout)
        return admin.list_topics(topic=topic, timeout=timeout)

    def leader(self, via: int | None = None, timeout: float = 10.0) -> int:
        """The Raft leader (Metadata's controller_id) as node `via` (default: any) sees it."""
        return self.metadata(via=via, timeout=timeout).controller_id

    def wait_leader(self, among: list[int] | None = None, not_: int | None = None,
                    timeout: float = 30.0) -> int:
        """Waits until every running node in `among` (default: all running) reports the
        same controller, which is not `not_`; returns it."""
        among = among or self.running_ids()
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                seen = {self.leader(via=i, timeout=5) for i in among}
                last = seen
                if len(seen) == 1:
                    (leader,) = seen
                    if leader >= 0 and leader != not_ and leader in among:
                        return leader
            except Exception as e:  # noqa: BLE001 - a node may be busy; retry
                last = e
            time.sleep(0.2)
        raise ClusterError(f"no agreed Raft leader among {among} (not {not_}) within {timeout}s: {last}")

    def partition_leaders(self, topic: str, via: int | None = None) -> dict[int, int]:
        md = self.metadata(via=via, topic=topic)
        t = md.topics[topic]
        if t.error is not None:
            raise ClusterError(f"metadata for {topic}: {t.error}")
        return {p: broker_of(pm.leader) for p, pm in t.partitions.items()}

    def live_brokers(self, via: int | None = None) -> set[int]:
        return {broker_of(b) for b in self.metadata(via=via).brokers}

    def wait_live(self, ids: set[int], via: int | None = None, timeout: float = 30.0) -> float:
        """Waits until Metadata lists exactly `ids` as brokers; returns the seconds it took."""
        t0 = time.monotonic()
        last = None
        while time.monotonic() - t0 < timeout:
            try:
                last = self.live_brokers(via=via)
                if last == set(ids):
                    return time.monotonic() - t0
            except Exception as e:  # noqa: BLE001
                last = e
            time.sleep(0.2)
        raise ClusterError(f"brokers never became {sorted(ids)} within {timeout}s (last: {last})")

    def report(self, lines: int = 60) -> str:
        out = []
        for n in self.nodes.values():
            out.append(f"--- node {n.id} log tail ({n.log_path}) ---\n{n.log_tail(lines)}")
        return "\n".join(out)

    def panics(self) -> list[str]:
        return [f"node {n.id}" for n in self.nodes.values() if "panicked at" in n.log_text()]


class Background(threading.Thread):
    """A daemon thread that records the exception its target raised."""

    def __init__(self, target, *args, name: str | None = None):
        super().__init__(daemon=True, name=name)
        self._target_fn = target
        self._args = args
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn(*self._args)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

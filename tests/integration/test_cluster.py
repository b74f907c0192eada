"""A Strata cluster of real processes (tests/integration/cluster.py) driven by real clients:
any broker as bootstrap, SIGKILL of a broker and of the Raft leader under load, a broker
joining mid-load, a voter cut off, a full restart, and a learner catching up from a
snapshot.

Recovery figures are printed (run pytest with -s to see them) as `CLUSTER-FIGURE ...`.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections import defaultdict

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import kwire
from cluster import STRATA_BIN, Background, Cluster, REPO_ROOT, broker_of, make_cluster  # noqa: F401 (fixture)

TUTORIAL = REPO_ROOT / "tests" / "js" / "tutorial.js"
RECOVERY_LIMIT = 15.0  # seconds, from the issue


def figure(name: str, value: float) -> None:
    print(f"CLUSTER-FIGURE {name} = {value:.2f} s", flush=True)




def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    fs = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)],
                             operation_timeout=30)
    fs[topic].result(timeout=60)


def produce_keyed(bootstrap: str, topic: str, n: int, prefix: str = "", extra: dict | None = None) -> dict:
    """Produces n keyed records; returns {(partition, offset): (key, value)}."""
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, **(extra or {})})
    acked, errors = {}, []

    def cb(err, msg):
        if err is not None:
            errors.append(err)
        else:
            acked[(msg.partition(), msg.offset())] = (msg.key().decode(), msg.value().decode())

    for i in range(n):
        p.produce(topic, key=f"{prefix}key-{i % 17}", value=f"{prefix}value-{i}", on_delivery=cb)
        p.poll(0)
    assert p.flush(60) == 0, "records not delivered within 60 s"
    assert not errors, errors[:5]
    assert len(acked) == n, f"{len(acked)} distinct offsets acknowledged for {n} records"
    return acked


def consume_all(bootstrap: str, topic: str, want: int, group: str | None = None,
                timeout: float = 60.0, extra: dict | None = None) -> dict:
    """Consumes from the beginning until `want` records; returns {(partition, offset): (key, value)}."""
    conf = {"bootstrap.servers": bootstrap, "group.id": group or f"reader-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest", "enable.auto.commit": False, **(extra or {})}
    c = Consumer(conf)
    try:
        c.subscribe([topic])
        got = {}
        deadline = time.monotonic() + timeout
        while len(got) < want and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            got[(msg.partition(), msg.offset())] = (msg.key().decode(), msg.value().decode())
        if group is not None:
            c.commit(asynchronous=False)
        return got
    finally:
        c.close()


# ------------------------------------------------------------------ raw wire helpers
def raw_call(bootstrap: str, api_key: int, version: int, body: bytes, timeout: float) -> bytes:
    with kwire.connect(bootstrap, timeout=timeout) as s:
        s.sendall(kwire.request(api_key, version, 11, body))
        cid, resp = kwire.read_response(s)
        assert cid == 11
        return resp


def raw_produce(bootstrap: str, topic: str, partition: int, value: bytes, timeout: float = 40.0) -> int:
    """One record straight to this broker (no client-side routing); returns the error code."""
    batch = kwire.encode_batch([(b"raw", value)])
    body = kwire.produce_v3_body(topic, partition, batch, acks=-1, timeout_ms=int(timeout * 1000))
    resp = kwire.parse_produce_v3(raw_call(bootstrap, kwire.API_PRODUCE, 3, body, timeout))
    return resp[0]["error_code"]


def raw_fetch(bootstrap: str, topic: str, partition: int, offset: int) -> tuple[int, int, list]:
    """Fetch v4 from this broker only: (error_code, high_watermark, [(offset, key, value)])."""
    body = struct.pack(">iiiib", -1, 100, 1, 8 << 20, 0) + struct.pack(">i", 1) + kwire.kstring(topic) \
        + struct.pack(">i", 1) + struct.pack(">iqi", partition, offset, 4 << 20)
    r = kwire.Reader(raw_call(bootstrap, kwire.API_FETCH, 4, body, 30.0))
    r.i32()  # throttle
    assert r.i32() == 1 and r.string() == topic and r.i32() == 1
    assert r.i32() == partition
    err, hw = r.i16(), r.i64()
    r.i64()  # last stable offset
    n_aborted = r.i32()
    for _ in range(max(n_aborted, 0)):
        r.i64(), r.i64()
    size = r.i32()
    data = r.data[r.pos:r.pos + max(size, 0)]
    return err, hw, parse_batches(data)


def parse_batches(data: bytes) -> list:
    """Every record of the uncompressed batches in a Fetch answer: [(offset, key, value)]."""
    return [rec for b in kwire.parse_batch_headers(data) for rec in (b["records"] or [])]


def raw_read_partition(bootstrap: str, topic: str, partition: int) -> tuple[int, list]:
    """Every record of a partition, fetched from this broker only: (high watermark, records)."""
    records, offset, hw = [], 0, None
    for _ in range(10_000):
        err, hw, recs = raw_fetch(bootstrap, topic, partition, offset)
        assert err == 0, f"fetch {topic}/{partition}@{offset} from {bootstrap}: error {err}"
        recs = [r for r in recs if r[0] >= offset]
        records += recs
        if recs:
            offset = recs[-1][0] + 1
        if offset >= hw:
            return hw, records
    raise AssertionError("fetch loop did not finish")


# ------------------------------------------------------------------ load
class Load:
    """Continuous acks=all production (one producer thread) and a consumer group of
    three committing consumers (threads), with every event timestamped."""

    def __init__(self, bootstrap: str, topic: str, group: str, rate: float = 200.0):
        self.bootstrap, self.topic, self.group, self.rate = bootstrap, topic, group, rate
        self.lock = threading.Lock()
        self.acked: dict[tuple[int, int], str] = {}
        self.ack_events: list[tuple[float, int, int]] = []  # (time, partition, seq)
        self.sent_at: dict[int, float] = {}
        self.dup_acks: list = []
        self.delivery_errors: list = []
        self.consumed: dict[tuple[int, int], set[str]] = defaultdict(set)
        self.consume_events: list[tuple[float, int, int]] = []  # (time, partition, seq)
        self.commit_errors = 0
        self.assignments: dict[int, list[int]] = {}
        self.log: list = []  # consumer events, for failure messages
        self.stop_producing = threading.Event()
        self.stop_consuming = threading.Event()
        self.producer = Background(self._produce, name="producer")
        self.consumers = [Background(self._consume, i, name=f"consumer-{i}") for i in range(3)]

    def start(self) -> "Load":
        self.producer.start()
        for c in self.consumers:
            c.start()
        return self

    def _produce(self) -> None:
        p = Producer({"bootstrap.servers": self.bootstrap, "acks": "all", "linger.ms": 5,
                      "message.timeout.ms": 120_000, "topic.metadata.refresh.interval.ms": 5000})

        def cb(err, msg):
            now = time.monotonic()
            seq = int(msg.value().decode()[1:])
            with self.lock:
                if err is not None:
                    self.delivery_errors.append((seq, str(err)))
                    return
                key = (msg.partition(), msg.offset())
                if key in self.acked:
                    self.dup_acks.append((key, self.acked[key], msg.value().decode()))
                self.acked[key] = msg.value().decode()
                self.ack_events.append((now, msg.partition(), seq))

        seq = 0
        interval = 1.0 / self.rate
        next_t = time.monotonic()
        while not self.stop_producing.is_set():
            value = f"v{seq}"
            self.sent_at[seq] = time.monotonic()
            while True:
                try:
                    p.produce(self.topic, key=f"k{seq % 64}", value=value, on_delivery=cb)
                    break
                except BufferError:
                    p.poll(0.1)
            seq += 1
            p.poll(0)
            next_t += interval
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_t = time.monotonic()
        left = p.flush(150)
        assert left == 0, f"{left} records still undelivered 150 s after production stopped"

    def _consume(self, i: int) -> None:
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group,
                      "client.id": f"member-{i}", "auto.offset.reset": "earliest",
                      "enable.auto.commit": False, "session.timeout.ms": 10_000,
                      "heartbeat.interval.ms": 1000, "topic.metadata.refresh.interval.ms": 5000})
        def on_assign(_c, tps):
            with self.lock:
                self.assignments[i] = sorted(tp.partition for tp in tps)
                self.log.append((round(time.monotonic(), 2), i, "assigned", self.assignments[i]))

        def on_revoke(_c, tps):
            with self.lock:
                self.assignments[i] = []
                self.log.append((round(time.monotonic(), 2), i, "revoked", sorted(tp.partition for tp in tps)))

        c.subscribe([self.topic], on_assign=on_assign, on_revoke=on_revoke)
        last_commit = time.monotonic()
        dirty = False

        def commit():
            nonlocal dirty
            try:
                c.commit(asynchronous=False)
                dirty = False
            except KafkaException as e:
                with self.lock:
                    self.commit_errors += 1
                    self.log.append((round(time.monotonic(), 2), i, "commit", str(e)))

        try:
            while not self.stop_consuming.is_set():
                msg = c.poll(0.3)
                if msg is not None and msg.error():
                    with self.lock:
                        self.log.append((round(time.monotonic(), 2), i, "error", str(msg.error())))
                if msg is not None and not msg.error():
                    now = time.monotonic()
                    value = msg.value().decode()
                    with self.lock:
                        self.consumed[(msg.partition(), msg.offset())].add(value)
                        self.consume_events.append((now, msg.partition(), int(value[1:])))
                    dirty = True
                if dirty and time.monotonic() - last_commit > 0.5:
                    commit()
                    last_commit = time.monotonic()
            if dirty:
                commit()
        finally:
            c.close()

    # -------------------------------------------------------------- measures
    def acks_since(self, t: float) -> int:
        with self.lock:
            return sum(1 for e in self.ack_events if e[0] >= t)

    def recovery(self, t_kill: float, partitions: int) -> tuple[float | None, float | None, float | None]:
        """(first ack after the kill, every partition acknowledging a record sent after the
        kill, every partition consuming a record produced after the kill), in seconds."""
        with self.lock:
            acks = [e for e in self.ack_events if e[0] >= t_kill]
            cons = [e for e in self.consume_events if e[0] >= t_kill]
        first = min((e[0] for e in acks), default=None)
        per_part_ack, per_part_cons = {}, {}
        for t, p, seq in acks:
            if self.sent_at.get(seq, 0) >= t_kill and p not in per_part_ack:
                per_part_ack[p] = t
        for t, p, seq in cons:
            if self.sent_at.get(seq, 0) >= t_kill and p not in per_part_cons:
                per_part_cons[p] = t
        all_ack = max(per_part_ack.values()) - t_kill if len(per_part_ack) == partitions else None
        all_cons = max(per_part_cons.values()) - t_kill if len(per_part_cons) == partitions else None
        return (None if first is None else first - t_kill), all_ack, all_cons

    def wait_recovered(self, t_kill: float, partitions: int, timeout: float = 40.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            first, all_ack, all_cons = self.recovery(t_kill, partitions)
            if all_ack is not None and all_cons is not None:
                return first, all_ack, all_cons
            self.check_threads()
            time.sleep(0.2)
        return self.recovery(t_kill, partitions)

    def describe(self, since: float) -> str:
        with self.lock:
            last_cons = {}
            for t, p, _s in self.consume_events:
                last_cons[p] = round(t - since, 2)
            last_ack = {}
            for t, p, _s in self.ack_events:
                last_ack[p] = round(t - since, 2)
            log = [e for e in self.log if e[0] >= since - 1][-40:]
            log = [(round(e[0] - since, 2), *e[1:]) for e in log]
            return (f"assignments {self.assignments}; last consume per partition (s after "
                    f"event) {last_cons}; last ack {last_ack}; consumer log {log}")

    def check_threads(self) -> None:
        for t in [self.producer, *self.consumers]:
            if t.error is not None:
                raise AssertionError(f"{t.name} failed: {t.error!r}")

    def finish(self, cluster: Cluster, partitions: int, timeout: float = 120.0) -> dict[int, int]:
        """Stops producing, lets the group consume to the end, stops it; returns the end
        offsets (high watermarks)."""
        self.stop_producing.set()
        self.producer.join(180)
        assert not self.producer.is_alive(), "producer did not finish"
        self.check_threads()
        ends = high_watermarks(cluster.bootstrap(), self.topic, partitions)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                done = all((p, ends[p] - 1) in self.consumed or ends[p] == 0 for p in ends)
            if done:
                break
            self.check_threads()
            time.sleep(0.3)
        time.sleep(1.5)  # let the members commit what they consumed last
        self.stop_consuming.set()
        for c in self.consumers:
            c.join(60)
            assert not c.is_alive(), f"{c.name} did not finish"
        self.check_threads()
        return ends

    def verify(self, cluster: Cluster, ends: dict[int, int]) -> None:
        assert not self.delivery_errors, f"delivery errors: {self.delivery_errors[:5]}"
        assert not self.dup_acks, f"two acknowledgements for one offset: {self.dup_acks[:5]}"
        assert len(self.acked) > 0
        with self.lock:
            consumed = dict(self.consumed)
        # No two different records at one offset.
        multi = {k: v for k, v in consumed.items() if len(v) != 1}
        assert not multi, f"offsets consumed with different records: {list(multi.items())[:5]}"
        # Every acknowledged record consumed, at exactly its acknowledged offset.
        missing = [k for k in self.acked if k not in consumed]
        assert not missing, f"{len(missing)} acknowledged records never consumed, e.g. {missing[:5]}"
        wrong = [(k, v, consumed[k]) for k, v in self.acked.items() if consumed[k] != {v}]
        assert not wrong, f"offsets holding other records than acknowledged: {wrong[:5]}"
        # No gaps: every offset below the end was consumed.
        for p, end in ends.items():
            got = sorted(o for (q, o) in consumed if q == p)
            assert got == list(range(end)), \
                f"partition {p}: consumed offsets are not 0..{end - 1} (first gaps: " \
                f"{sorted(set(range(end)) - set(got))[:10]})"
        # The group finished: its committed offsets are the end offsets.
        committed = committed_offsets(cluster.bootstrap(), self.group, self.topic, list(ends))
        assert committed == ends, f"group committed {committed}, end offsets {ends}"
        # Offsets nobody acknowledged hold retries of records acknowledged elsewhere
        # (a broker died after committing, before answering; the producer resent).
        acked_values = set(self.acked.values())
        extra = {k: v for k, v in consumed.items() if k not in self.acked}
        strays = [(k, v) for k, v in extra.items() if not v <= acked_values]
        assert not strays, f"records in the log that were never acknowledged anywhere: {strays[:5]}"
        unacked = len(extra)
        print(f"load: {len(self.acked)} acknowledged, {len(consumed)} offsets consumed "
              f"({unacked} written by retried, unacknowledged sends), "
              f"{self.commit_errors} failed commits during failover", flush=True)


def coordinator(cluster: Cluster, group: str) -> int:
    """The broker FindCoordinator names for `group`."""
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap()})
    desc = admin.describe_consumer_groups([group], request_timeout=20)[group].result(timeout=30)
    return desc.coordinator.id


def high_watermarks(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks"})
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
                for p in range(partitions)}
    finally:
        c.close()


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: list[int]) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        for _ in range(30):
            try:
                tps = c.committed([TopicPartition(topic, p) for p in partitions], timeout=20)
                return {tp.partition: tp.offset for tp in tps}
            except KafkaException:
                time.sleep(1)  # coordinator moving
        raise AssertionError("could not read committed offsets")
    finally:
        c.close()


# ====================================================================== tests
@pytest.mark.timeout(400)
def test_any_broker_serves_clients(make_cluster):
    """Three voters and a learner: kafkajs tutorial through the learner and through a
    voter; confluent-kafka keyed produce through one broker, consume through each."""
    c = make_cluster(3)
    c.start_all()
    learner = c.add_learner()
    assert c.wait_live({1, 2, 3, learner}, timeout=30) >= 0
    leader = c.wait_leader()
    assert leader in (1, 2, 3), "a learner must never lead"

    node = shutil.which("node")
    assert node, "node is not installed"
    for via in (learner, 2):
        env = {"TUTORIAL_TOPIC": f"user-events-{via}", "TUTORIAL_GROUP": f"notification-{via}",
               "TUTORIAL_ANY_LEADER": "1", "PATH": "/usr/bin:/bin"}
        proc = subprocess.run([node, str(TUTORIAL), c.node(via).bootstrap], cwd=str(TUTORIAL.parent),
                              capture_output=True, text=True, timeout=150, env=env)
        out = f"via node {via}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        assert proc.returncode == 0, out
        result = json.loads([l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][0][7:])
        assert result["received"]["key"] == "user-1", out
        assert result["produced_partition"] == kwire.kafkajs_legacy_partition(b"user-1", 3), out

    # confluent-kafka: 6 partitions spread over the four brokers.
    topic = "keyed"
    create_topic(c.node(learner).bootstrap, topic, 6)
    leaders = c.partition_leaders(topic, via=1)
    assert set(leaders.values()) <= {1, 2, 3, learner}
    assert len(set(leaders.values())) >= 2, f"all partitions on one broker: {leaders}"
    for via in (1, 3):  # Metadata from any broker agrees
        assert c.partition_leaders(topic, via=via) == leaders
    acked = produce_keyed(c.node(3).bootstrap, topic, 600)
    for via in (learner, 1, 2):
        got = consume_all(c.node(via).bootstrap, topic, len(acked), group=f"g-via-{via}")
        assert got == acked, f"via node {via}: {len(got)} of {len(acked)} records, or different ones"
    # Keys keep their partition.
    by_key = defaultdict(set)
    for (p, _o), (k, _v) in acked.items():
        by_key[k].add(p)
    assert all(len(ps) == 1 for ps in by_key.values())
    # Read-your-writes on every broker: once a broker acknowledged a produce, its own
    # Fetch answer has it (a follower or learner waits until it applied the commit).
    for round_ in range(3):
        for via in (1, 2, 3, learner):
            err, hw_before, _ = raw_fetch(c.node(via).bootstrap, topic, 1, 0)
            assert err == 0
            assert raw_produce(c.node(via).bootstrap, topic, 1, f"ryw-{via}-{round_}".encode()) == 0
            err, hw_after, _ = raw_fetch(c.node(via).bootstrap, topic, 1, hw_before)
            assert hw_after >= hw_before + 1, f"node {via} does not serve the record it acknowledged"
            acked[(1, hw_after - 1)] = ("raw", f"ryw-{via}-{round_}")
    # DescribeCluster agrees with Metadata: every live broker, the Raft leader as controller.
    admin = AdminClient({"bootstrap.servers": c.node(learner).bootstrap})
    desc = admin.describe_cluster(request_timeout=30).result(timeout=60)
    assert {n.id for n in desc.nodes} == {1, 2, 3, learner}
    assert desc.controller.id == c.wait_leader()
    # Each broker's own answer for one partition, read with raw Fetch.
    for via in (1, 2, 3, learner):
        hw, recs = raw_read_partition(c.node(via).bootstrap, topic, 0)
        assert hw == sum(1 for (p, _o) in acked if p == 0)
        assert [(o, v.decode()) for o, _k, v in recs] == sorted(
            (o, v) for (p, o), (_k, v) in acked.items() if p == 0)


@pytest.mark.timeout(600)
def test_sigkill_broker_then_leader_under_load(make_cluster):
    c = make_cluster(3)
    c.start_all()
    learner = c.add_learner()
    c.wait_live({1, 2, 3, learner})
    topic, parts = "under-load", 8
    create_topic(c.bootstrap(), topic, parts)
    leader = c.wait_leader()
    placement = c.partition_leaders(topic)
    # The first victim: a voter that is not the Raft leader, preferably one that leads
    # partitions; and the group is one it coordinates, so that the group has to move.
    victim = max((i for i in (1, 2, 3) if i != leader),
                 key=lambda i: sum(1 for b in placement.values() if b == i))
    group = next(g for g in (f"load-group-{i}" for i in range(200)) if coordinator(c, g) == victim)
    print(f"partition leaders {placement}; Raft leader {leader}; group {group} on {victim}")
    load = Load(c.bootstrap(), topic, group).start()
    time.sleep(8)
    load.check_threads()
    assert load.acks_since(time.monotonic() - 4) > 100, "no steady production before the kill"

    # 1. SIGKILL a broker that is not the Raft leader (a voter: the quorum keeps 2 of 3).
    assert c.wait_leader() == leader
    t_kill = time.monotonic()
    c.kill(victim, signal.SIGKILL)
    first, all_ack, all_cons = load.wait_recovered(t_kill, parts)
    print(f"killed broker {victim} (leader was {leader})")
    assert first is not None, "no acknowledgement after the kill"
    figure("broker-kill first-ack", first)
    assert all_ack is not None, f"some partition never acknowledged a record after the broker kill: {load.describe(t_kill)}"
    assert all_cons is not None, f"some partition never consumed again after the broker kill: {load.describe(t_kill)}"
    figure("broker-kill all-partitions-produce", all_ack)
    figure("broker-kill all-partitions-consume", all_cons)
    assert all_ack < RECOVERY_LIMIT and all_cons < RECOVERY_LIMIT
    assert victim not in c.live_brokers(via=leader)

    # It comes back (after SIGKILL), so that the quorum survives losing the leader next.
    assert coordinator(c, group) != victim, "the group did not move off the dead broker"
    c.start(victim)
    c.wait_live({1, 2, 3, learner}, timeout=30)
    time.sleep(3)

    # 2. SIGKILL the Raft leader.
    leader = c.wait_leader()
    print(f"partition leaders {c.partition_leaders(topic)}; Raft leader {leader}; "
          f"group on {coordinator(c, group)}")
    t_kill = time.monotonic()
    c.kill(leader, signal.SIGKILL)
    new_leader = c.wait_leader(not_=leader, timeout=30)
    figure("leader-kill new-raft-leader", time.monotonic() - t_kill)
    first, all_ack, all_cons = load.wait_recovered(t_kill, parts)
    print(f"killed Raft leader {leader}; new leader {new_leader}")
    assert first is not None
    figure("leader-kill first-ack", first)
    assert all_ack is not None, f"some partition never acknowledged a record after the leader kill: {load.describe(t_kill)}"
    assert all_cons is not None, f"some partition never consumed again after the leader kill: {load.describe(t_kill)}"
    figure("leader-kill all-partitions-produce", all_ack)
    figure("leader-kill all-partitions-consume", all_cons)
    assert all_ack < RECOVERY_LIMIT and all_cons < RECOVERY_LIMIT

    time.sleep(3)
    ends = load.finish(c, parts)
    load.verify(c, ends)


@pytest.mark.timeout(500)
def test_new_broker_takes_partitions_mid_load(make_cluster):
    c = make_cluster(3)
    c.start_all()
    topic, parts = "scale-out", 12
    create_topic(c.bootstrap(), topic, parts)
    before = c.partition_leaders(topic)
    assert set(before.values()) <= {1, 2, 3}
    load = Load(c.bootstrap(), topic, "scale-group").start()
    time.sleep(6)
    rate_before = load.acks_since(time.monotonic() - 4) / 4

    t_launch = time.monotonic()
    new = c.add_learner(wait=False)
    c.node(new).wait_ready()
    t_serving = time.monotonic()
    taken = None
    while time.monotonic() - t_launch < 60:
        leaders = c.partition_leaders(topic, via=1)
        if new in leaders.values():
            taken = time.monotonic()
            break
        time.sleep(0.1)
    assert taken is not None, f"node {new} never became preferred for any partition: {leaders}"
    figure("new-broker launch-to-partitions", taken - t_launch)
    figure("new-broker serving-to-partitions", taken - t_serving)
    moved = {p: (before[p], leaders[p]) for p in leaders if before[p] != leaders[p]}
    print(f"partitions moved to node {new}: {sorted(moved)}")
    # Rendezvous hashing: only partitions moving to the new broker move.
    assert all(to == new for _frm, to in moved.values()), moved
    assert 1 <= len(moved) <= 9
    # Every broker agrees, the new one included.
    for via in (2, 3, new):
        assert c.partition_leaders(topic, via=via) == leaders

    # Throughput continues: acknowledgements in every 2-second window after the join,
    # including for the partitions the new broker took.
    t0 = time.monotonic()
    time.sleep(8)
    with load.lock:
        events = [e for e in load.ack_events if e[0] >= t0]
    windows = [sum(1 for e in events if t0 + 2 * i <= e[0] < t0 + 2 * i + 2) for i in range(4)]
    print(f"acks/s before {rate_before:.0f}; per 2 s window after the join: {windows}")
    assert all(w > 0 for w in windows), windows
    assert {p for _t, p, _s in events} >= set(moved), "a moved partition stopped taking records"
    ends = load.finish(c, parts)
    load.verify(c, ends)


@pytest.mark.timeout(500)
def test_isolated_voter_cannot_commit(make_cluster):
    c = make_cluster(3)
    c.start_all()
    create_topic(c.bootstrap(), "before", 3)
    old = c.wait_leader()
    others = [i for i in (1, 2, 3) if i != old]

    c.isolate(old)
    t_cut = time.monotonic()
    new = c.wait_leader(among=others, not_=old, timeout=30)
    figure("isolated-leader new-raft-leader", time.monotonic() - t_cut)

    # Proposals through the isolated voter fail: a produce sent straight to it, and a
    # CreateTopics sent straight to it (raw requests, so no client reroutes them).
    t0 = time.monotonic()
    try:
        code = raw_produce(c.node(old).bootstrap, "before", 0, b"through-the-cut-off-voter", timeout=40)
    except (socket.timeout, TimeoutError, ConnectionError) as e:
        code = repr(e)
    print(f"produce through the isolated voter: {code!r} after {time.monotonic() - t0:.1f} s")
    assert code != 0, "the isolated voter acknowledged a produce"
    admin = AdminClient({"bootstrap.servers": c.node(old).bootstrap})
    with pytest.raises(Exception):
        admin.create_topics([NewTopic("through-isolated", 1, 1)],
                            operation_timeout=15)["through-isolated"].result(timeout=40)

    # The rest keep committing.
    create_topic(c.bootstrap(*others), "during", 3)
    c.wait_live(set(others), via=new, timeout=30)  # the cut-off broker's lease expires
    acked = produce_keyed(c.bootstrap(*others), "during", 300)
    for p in range(3):
        assert raw_produce(c.node(others[0]).bootstrap, "before", p, b"majority", timeout=30) == 0

    # Healed, it catches up: it sees what the others committed and serves again.
    c.heal(old)
    c.wait_live({1, 2, 3}, via=new, timeout=30)
    assert c.wait_leader(timeout=30) in (1, 2, 3)
    # It serves again once it has caught up and renewed its lease; until then it is
    # fenced and refuses the produce (NOT_LEADER_OR_FOLLOWER, nothing written).
    deadline = time.monotonic() + 30
    while (code := raw_produce(c.node(old).bootstrap, "before", 0, b"after-heal", timeout=30)) != 0:
        assert code == 6 and time.monotonic() < deadline, f"produce after heal: {code}"
        time.sleep(0.2)
    md = c.metadata(via=old)
    assert "during" in md.topics and "through-isolated" not in md.topics
    hw_total = 0
    for p in range(3):
        hw, recs = raw_read_partition(c.node(old).bootstrap, "during", p)
        hw_total += hw
        want = sorted((o, v) for (q, o), (_k, v) in acked.items() if q == p)
        assert [(o, v.decode()) for o, _k, v in recs] == want
    assert hw_total == len(acked)
    # "before"/0 holds the majority's record, then this one; the cut-off voter's attempt is
    # not there.
    _hw, recs = raw_read_partition(c.node(old).bootstrap, "before", 0)
    assert [v for _o, _k, v in recs] == [b"majority", b"after-heal"]


@pytest.mark.timeout(500)
def test_restart_all_brokers(make_cluster):
    c = make_cluster(3)
    c.start_all()
    learner = c.add_learner()
    topics = {"restart-a": 3, "restart-b": 5}
    acked = {}
    for t, n in topics.items():
        create_topic(c.bootstrap(), t, n)
        acked[t] = produce_keyed(c.bootstrap(), t, 400, prefix=t)
    # A group that consumed part of restart-a and committed.
    got = consume_all(c.bootstrap(), "restart-a", 400, group="restart-group")
    assert len(got) == 400
    committed_before = committed_offsets(c.bootstrap(), "restart-group", "restart-a", [0, 1, 2])
    assert sum(committed_before.values()) == 400

    codes = c.stop_all(signal.SIGTERM)
    assert all(rc == 0 for rc in codes.values()), f"exit codes after SIGTERM: {codes}"
    c.start_all()
    c.wait_live({1, 2, 3, learner}, timeout=30)
    md = c.metadata()
    for t, n in topics.items():
        assert t in md.topics and len(md.topics[t].partitions) == n
    for t in topics:
        again = consume_all(c.bootstrap(), t, len(acked[t]))
        assert again == acked[t], f"{t}: {len(again)} of {len(acked[t])} records back"
    assert committed_offsets(c.bootstrap(), "restart-group", "restart-a", [0, 1, 2]) == committed_before
    # And the cluster takes new writes at the next offsets.
    more = produce_keyed(c.bootstrap(), "restart-a", 30, prefix="after")
    for (p, o) in more:
        assert o >= committed_before[p]


@pytest.mark.timeout(500)
def test_new_learner_catches_up_from_snapshot(make_cluster):
    c = make_cluster(3, config="snapshot_every = 50\n")
    c.start_all()
    topic = "snapshotted"
    create_topic(c.bootstrap(), topic, 3)
    # Many small commits: every flush is one Raft entry.
    p = Producer({"bootstrap.servers": c.bootstrap(), "acks": "all", "linger.ms": 0})
    acked, errors = {}, []

    def cb(err, msg):
        if err:
            errors.append(err)
        else:
            acked[(msg.partition(), msg.offset())] = msg.value()

    for i in range(300):
        p.produce(topic, key=f"k{i}", value=f"snap-{i}", on_delivery=cb)
        if i % 2 == 0:
            p.flush(30)
    assert p.flush(60) == 0 and not errors and len(acked) == 300
    # The voters have compacted their logs behind a snapshot several times over.
    leader = c.wait_leader()
    snap = c.node(leader).data_dir / "raft"
    assert any(f.name.startswith("snapshot") for f in snap.iterdir()), sorted(snap.iterdir())

    learner = c.add_learner()
    c.wait_live({1, 2, 3, learner}, timeout=30)
    log = c.node(learner).log_text()
    assert "installed a metadata snapshot from the leader" in log, c.node(learner).log_tail()
    # Everything, read through the learner alone.
    total = 0
    for part in range(3):
        hw, recs = raw_read_partition(c.node(learner).bootstrap, topic, part)
        want = sorted((o, v) for (q, o), v in acked.items() if q == part)
        assert [(o, v) for o, _k, v in recs] == want
        total += hw
    assert total == 300
    got = consume_all(c.node(learner).bootstrap, topic, 300)
    assert {k: v[1].encode() for k, v in got.items()} == acked


def test_consumers_fetch_from_their_rack(make_cluster):
    """KIP-392: brokers in racks a, a, b. Metadata reports the racks, and a consumer with
    client.rack=b, bootstrapped through a rack-a broker, is sent to the rack-b broker for
    partitions led in rack a and still reads every record exactly."""
    cluster = make_cluster(racks={1: "a", 2: "a", 3: "b"}).start_all()
    topic = "racked"
    create_topic(cluster.bootstrap(1), topic, 6)
    produced = produce_keyed(cluster.bootstrap(2), topic, 600)
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap(1)})
    described = admin.describe_cluster().result(timeout=10)
    assert {n.id: n.rack for n in described.nodes} == {1: "a", 2: "a", 3: "b"}
    leaders = cluster.partition_leaders(topic, via=1)
    in_a = [p for p, leader in leaders.items() if leader in (1, 2)]
    assert in_a, f"no partition led in rack a: {leaders}"
    # Raw Fetch v11 with rack_id "b" to broker 1: it names broker 3 as the read replica.
    for p in in_a:
        assert raw_fetch_v11_replica(cluster.bootstrap(1), topic, p, "b") == 3
        assert raw_fetch_v11_replica(cluster.bootstrap(1), topic, p, "") == -1
    got = consume_all(cluster.bootstrap(1), topic, len(produced),
                      extra={"client.rack": "b", "fetch.wait.max.ms": 100})
    assert got == produced, f"rack-b consumer read {len(got)} of {len(produced)} records, or different ones"


def zone_leaders(bootstrap: str, topic: str, client_id: str) -> dict[int, int]:
    """Partition leaders as Metadata names them to a client with this client.id."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "client.id": client_id})
    t = admin.list_topics(topic=topic, timeout=10).topics[topic]
    assert t.error is None, t.error
    return {p: broker_of(pm.leader) for p, pm in t.partitions.items()}


def test_zone_hint_in_client_id_keeps_clients_in_their_zone(make_cluster):
    """Issue 25: brokers in zones a, a, b and (a learner) c. A client whose client.id
    carries `strata_az=<zone>` is named only that zone's brokers as leaders, spread over
    them, whichever broker it asks; produce and consume through them work; when its zone
    empties (the c broker drains) it falls back to the whole fleet."""
    cluster = make_cluster(racks={1: "a", 2: "a", 3: "b", 4: "c"}).start_all()
    c4 = cluster.add_learner()
    assert c4 == 4
    cluster.wait_live({1, 2, 3, 4})
    topic = "zoned"
    create_topic(cluster.bootstrap(1), topic, 12)
    plain = zone_leaders(cluster.bootstrap(1), topic, "plain-client")
    assert set(plain.values()) <= {1, 2, 3, 4} and len(set(plain.values())) > 1, plain
    for via in (1, 3, 4):
        assert set(zone_leaders(cluster.bootstrap(via), topic, "app,strata_az=a;x").values()) == {1, 2}
        assert set(zone_leaders(cluster.bootstrap(via), topic, "strata_az=b").values()) == {3}
        assert set(zone_leaders(cluster.bootstrap(via), topic, "svc strata_az=c").values()) == {4}
        # An unknown zone falls back to placement itself.
        assert zone_leaders(cluster.bootstrap(via), topic, "strata_az=nowhere") == plain
    # Where placement already picks a zone-a broker, the zone-a client gets that one.
    in_a = zone_leaders(cluster.bootstrap(2), topic, "strata_az=a")
    assert all(in_a[p] == leader for p, leader in plain.items() if leader in (1, 2)), (in_a, plain)

    # A zone-c producer and consumer, through zone c's broker.
    zone_c = "orders,strata_az=c"
    acked = produce_keyed(cluster.bootstrap(1), topic, 300,
                          extra={"client.id": zone_c, "enable.idempotence": True})
    got = consume_all(cluster.bootstrap(1), topic, 300, extra={"client.id": zone_c})
    assert got == acked

    # Zone c empties: its clients fall back to the fleet's placement without broker 4.
    assert cluster.kill(4, signal.SIGTERM) == 0
    cluster.wait_live({1, 2, 3}, via=1)
    fallback = zone_leaders(cluster.bootstrap(1), topic, zone_c)
    assert fallback == cluster.partition_leaders(topic, via=1), fallback
    assert set(fallback.values()) <= {1, 2, 3}


def raw_fetch_v11_replica(bootstrap: str, topic: str, partition: int, rack: str) -> int:
    """Fetch v11 from offset 0 naming `rack`; returns the preferred read replica (-1: none)."""
    body = struct.pack(">iiiibii", -1, 0, 1, 8 << 20, 0, 0, -1) + struct.pack(">i", 1) + kwire.kstring(topic) \
        + struct.pack(">i", 1) + struct.pack(">iiqqi", partition, -1, 0, -1, 1 << 20) \
        + struct.pack(">i", 0) + kwire.kstring(rack)
    r = kwire.Reader(raw_call(bootstrap, kwire.API_FETCH, 11, body, 30.0))
    r.i32(), r.i16(), r.i32()  # throttle, error, session
    assert r.i32() == 1 and r.string() == topic and r.i32() == 1
    assert r.i32() == partition
    err = r.i16()
    assert err == 0, f"fetch error {err}"
    r.i64(), r.i64(), r.i64()  # high watermark, last stable, log start
    n_aborted = r.i32()
    for _ in range(max(n_aborted, 0)):
        r.i64(), r.i64()
    return r.i32()


def assert_serves(c: Cluster, node: int, topic: str, part: int, want: list, timeout: float = 30.0):
    """Broker `node` alone serves exactly `want` ([(offset, value)]) for the partition,
    within `timeout` (it may still be catching up)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _hw, recs = raw_read_partition(c.node(node).bootstrap, topic, part)
        except AssertionError as e:
            # NOT_LEADER_OR_FOLLOWER: it cannot yet vouch that its replica holds what was
            # acknowledged (fenced, or its read barrier did not complete): not yet.
            if "error 6" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
            continue
        got = [(o, v.decode()) for o, _k, v in recs]
        if got == want or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert got == want, f"node {node} {topic}/{part}: {len(got)} records, want {len(want)}"


def test_wiped_voter_does_not_elect_a_lagging_voter(make_cluster):
    """Issue 10: voter 3 is cut off while 1 and 2 acknowledge records; 1 and 2 die, 1's
    disk is wiped, 3 is healed. Voter 1 comes back with an empty log: it must not vote for
    3, whose log lacks what was acknowledged (the bucket tells it how far the cluster got).
    Once 2 is back, everything acknowledged is served, at its offsets, by every broker."""
    c = make_cluster(3)
    c.start_all()
    create_topic(c.bootstrap(), "wiped-voter", 2)
    c.isolate(3)
    c.wait_leader(among=[1, 2], not_=3, timeout=30)
    acked = produce_keyed(c.bootstrap(1, 2), "wiped-voter", 1000)
    assert len(acked) == 1000

    c.kill(1)
    c.kill(2)
    shutil.rmtree(c.node(1).data_dir)
    c.node(1).data_dir.mkdir()
    c.heal(3)
    c.node(1).launch()
    time.sleep(8)
    log1 = c.node(1).log_since_start()
    assert "voting only for candidates with the bucket's entries" in log1, c.node(1).log_tail()
    assert "refusing my vote" in log1, c.node(1).log_tail()
    assert "strata is serving" not in log1, "voters 1 (wiped) and 3 (lagging) elected a leader on their own"

    c.node(2).launch()
    c.node(2).wait_ready(60)
    if not c.node(1).running:  # it may have given up waiting for a leader; restart it
        c.node(1).stop()
        c.node(1).launch()
    c.node(1).wait_ready(60)
    assert c.wait_leader(timeout=30) in (1, 2)
    for node in (1, 2, 3):
        for p in range(2):
            want = sorted((o, v) for (q, o), (_k, v) in acked.items() if q == p)
            assert_serves(c, node, "wiped-voter", p, want)
    # New records go after them.
    more = produce_keyed(c.bootstrap(1, 2, 3), "wiped-voter", 10, prefix="after-")
    assert all(o >= 1 + max(oo for (q, oo) in acked if q == p) for (p, o) in more)


@pytest.mark.timeout(400)
def test_repeated_wipes_of_one_voter(make_cluster):
    """Issue 10: wiping the same voter's disk again and again (with frequent snapshots,
    so that it catches up by InstallSnapshot) never makes it unstartable, and the
    cluster loses nothing."""
    c = make_cluster(3, config="snapshot_every = 50\n")
    c.start_all()
    create_topic(c.bootstrap(), "rewiped", 2)
    acked = {}
    for round_ in range(3):
        # Many small commits, so that the log is purged behind snapshots between wipes.
        p = Producer({"bootstrap.servers": c.bootstrap(2, 3), "acks": "all", "linger.ms": 0})
        errors = []

        def cb(err, msg):
            if err:
                errors.append(err)
            else:
                acked[(msg.partition(), msg.offset())] = msg.value().decode()

        for i in range(120):
            p.produce("rewiped", value=f"r{round_}-{i}", on_delivery=cb)
            if i % 2 == 0:
                p.flush(30)
        assert p.flush(60) == 0 and not errors
        c.kill(1)
        shutil.rmtree(c.node(1).data_dir)
        c.node(1).data_dir.mkdir()
        c.start(1, timeout=60)
        c.wait_live({1, 2, 3}, timeout=30)
    assert len(acked) == 360
    for node in (1, 2, 3):
        for part in range(2):
            want = sorted((o, v) for (q, o), v in acked.items() if q == part)
            assert_serves(c, node, "rewiped", part, want)
    assert c.node(1).log_text().count("strata is serving") == 4


def strata_voters(raft_addr: str, *args: str) -> tuple[int, str, str]:
    """Runs `strata voters --raft ADDR ARGS…`; returns (exit code, stdout, stderr)."""
    out = subprocess.run([str(STRATA_BIN), "voters", "--raft", raft_addr, *args],
                         capture_output=True, text=True, timeout=60)
    return out.returncode, out.stdout.strip(), out.stderr.strip()


@pytest.mark.timeout(400)
def test_voters_added_and_removed_under_load(make_cluster):
    """Issue 10: an operator promotes a learner and demotes a voter while producers run
    (`strata voters`); then the demoted broker and one more old voter die, and the new
    majority (one old voter and the promoted learner) carries on. Every acknowledged
    record is read back at its offset, once."""
    c = make_cluster(3)
    c.start_all()
    learner = c.add_learner()
    c.wait_live({1, 2, 3, learner}, timeout=30)
    create_topic(c.bootstrap(), "reconfig", 4)
    assert strata_voters(c.node(2).raft_addr) == (0, f"voters: 1,2,3\nlearners: {learner}", "")
    rc, _out, err = strata_voters(c.node(2).raft_addr, "--add", "99")
    assert rc != 0 and "not a learner" in err, err

    acked, sent, errors = {}, set(), []
    stop = threading.Event()

    def load():
        p = Producer({"bootstrap.servers": c.bootstrap(1, 2, learner), "acks": "all",
                      "linger.ms": 5, "enable.idempotence": True})

        def cb(err, msg):
            if err is not None:
                errors.append(err)
            else:
                acked[(msg.partition(), msg.offset())] = msg.value().decode()

        i = 0
        while not stop.is_set():
            value = f"reconfig-{i}"
            sent.add(value)
            p.produce("reconfig", value=value, on_delivery=cb)
            p.poll(0)
            i += 1
            time.sleep(0.003)
        p.flush(60)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    time.sleep(3)
    deadline = time.monotonic() + 30
    while (r := strata_voters(c.node(2).raft_addr, "--add", str(learner)))[0] != 0:
        assert "caught up" in r[2] and time.monotonic() < deadline, r
        time.sleep(0.5)
    assert r[1].splitlines()[0] == f"voters: 1,2,3,{learner}", r
    assert strata_voters(c.node(1).raft_addr, "--remove", "3")[1] == f"voters: 1,2,{learner}\nlearners: 3"
    time.sleep(2)
    c.kill(3)
    c.kill(1)
    t_kill = time.monotonic()
    c.wait_leader(among=[2, learner], timeout=30)
    before = len(acked)
    while len(acked) < before + 200:
        assert time.monotonic() - t_kill < 60, f"no progress after the kills: {len(acked) - before}"
        time.sleep(0.2)
    stop.set()
    t.join(90)
    assert not errors, errors[:5]
    for part in range(4):
        _hw, recs = raw_read_partition(c.node(learner).bootstrap, "reconfig", part)
        got = {o: v.decode() for o, _k, v in recs}
        want = {o: v for (q, o), v in acked.items() if q == part}
        assert all(got.get(o) == v for o, v in want.items()), f"partition {part}: acknowledged records missing"
        assert set(got.values()) <= sent and len(set(got.values())) == len(got), f"partition {part}: strays or duplicates"


def wait_for(what: str, check, timeout: float):
    """Polls `check()` until it returns a true value (returned), or fails naming `what`
    with the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if last or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert last, f"{what}: not within {timeout}s (last: {last!r})"
    return last


@pytest.mark.timeout(300)
def test_departed_brokers_and_learners_are_forgotten(make_cluster):
    """Issue 25: a learner that dies is forgotten once dead for --broker-forget-after-ms
    (its registration, listeners and Raft membership), so a fleet that keeps starting new
    machines does not grow the metadata. Started again on its disk it joins again and
    serves; stopped with SIGTERM, its learner membership goes too."""
    c = make_cluster(3, metrics=True,
                     extra_args=["--broker-lease-ms", "1000", "--broker-forget-after-ms", "4000"])
    c.start_all()
    learner = c.add_learner()
    c.wait_live({1, 2, 3, learner}, timeout=30)

    def registered(node: int) -> float:
        return c.node(node).metrics().get("strata_brokers_registered", -1)

    def members(node: int = 2) -> str:
        rc, out, err = strata_voters(c.node(node).raft_addr)
        assert rc == 0, err
        return out

    assert members() == f"voters: 1,2,3\nlearners: {learner}"
    assert registered(1) == 4

    c.kill(learner, signal.SIGKILL)
    c.wait_live({1, 2, 3}, timeout=30)
    for node in (1, 2, 3):
        wait_for(f"node {node} forgets broker {learner}", lambda: registered(node) == 3, 30)
    wait_for("the dead learner leaves the Raft membership",
             lambda: members() == "voters: 1,2,3\nlearners: none", 30)
    assert any("forgetting brokers dead for longer" in c.node(n).log_text() for n in (1, 2, 3))

    # Back on its own disk, after it was removed: it asks to join again and serves.
    c.start(learner, timeout=90)
    c.wait_live({1, 2, 3, learner}, timeout=30)
    assert members() == f"voters: 1,2,3\nlearners: {learner}"
    assert "asking to join again" in c.node(learner).log_text(), c.node(learner).log_tail()
    create_topic(c.bootstrap(), "forgotten", 2)
    acked = produce_keyed(c.node(learner).bootstrap, "forgotten", 200)
    for p in range(2):
        want = sorted((o, v) for (q, o), (_k, v) in acked.items() if q == p)
        assert_serves(c, learner, "forgotten", p, want)

    # A graceful stop deregisters at once; its membership follows after the grace.
    c.kill(learner, signal.SIGTERM)
    wait_for("the stopped broker deregisters", lambda: registered(1) == 3, 30)
    wait_for("the stopped learner leaves the Raft membership",
             lambda: members() == "voters: 1,2,3\nlearners: none", 30)


@pytest.mark.timeout(300)
def test_auto_node_ids_are_unique_kept_and_forgotten(make_cluster):
    """Issue 25: identical brokers started with --node-id auto get cluster-unique ids
    from the metadata leader (at or above 1000, above every member), keep theirs across
    a restart on the same disk, and a new disk gets a new id while the old one is
    forgotten once dead for --broker-forget-after-ms."""
    c = make_cluster(3, metrics=True,
                     extra_args=["--broker-lease-ms", "1000", "--broker-forget-after-ms", "4000"])
    c.start_all()
    a, b = c.add_auto_broker(), c.add_auto_broker()
    id_a, id_b = c.node(a).auto_id(), c.node(b).auto_id()
    assert id_a != id_b and min(id_a, id_b) >= 1000, (id_a, id_b)
    c.wait_live({1, 2, 3, id_a, id_b}, timeout=30)
    assert "automatic node id from the metadata leader" in c.node(a).log_text()

    # A restart on the same disk keeps the id.
    c.kill(a, signal.SIGTERM)
    c.start(a)
    assert c.node(a).auto_id() == id_a
    assert "automatic node id, kept in the data directory" in c.node(a).log_text()
    c.wait_live({1, 2, 3, id_a, id_b}, timeout=30)

    # A new disk gets a new id; the old one is forgotten.
    c.kill(b, signal.SIGKILL)
    shutil.rmtree(c.node(b).data_dir)
    c.node(b).data_dir.mkdir()
    c.start(b)
    id_b2 = c.node(b).auto_id()
    assert id_b2 not in (1, 2, 3, id_a, id_b), id_b2
    c.wait_live({1, 2, 3, id_a, id_b2}, timeout=30)
    wait_for(f"broker {id_b} forgotten",
             lambda: c.node(1).metrics().get("strata_brokers_registered") == 5, 30)
    create_topic(c.bootstrap(), "auto-ids", 2)
    acked = produce_keyed(c.node(b).bootstrap, "auto-ids", 100)
    for p in range(2):
        want = sorted((o, v) for (q, o), (_k, v) in acked.items() if q == p)
        assert_serves(c, b, "auto-ids", p, want)


# ------------------------------------------------------------------ the Raft port's secret
def _raft_handshake(addr: str, secret: bytes, node_id: int = 9, then: bytes = b"",
                    good_mac: bool = True) -> tuple[int | None, bytes]:
    """A cluster-secret handshake (src/metadata/auth.rs) as a client, then the Raft frame
    body `then` sent with its MAC (or a wrong one); returns the server's verdict byte
    (None if it hung up first) and what it sent after."""
    import hashlib
    import hmac
    import os

    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        who = struct.pack(">BQ", 0, node_id)
        mine = os.urandom(32)
        s.sendall(b"STAH\x01" + who + mine)
        answer = b""
        while len(answer) < 46 + 32:
            chunk = s.recv(78 - len(answer))
            if not chunk:
                return None, answer
            answer += chunk
        theirs = answer[14:46]
        proof = hmac.new(secret, b"strata raft handshake v1 client" + mine + theirs + who,
                         hashlib.sha256).digest()
        s.sendall(proof)
        verdict = s.recv(1)
        if verdict == b"\x01" and then:
            key = hmac.new(secret, b"strata raft frames v1 client to server" + mine + theirs,
                           hashlib.sha256).digest()
            frame = struct.pack(">I", len(then)) + then
            tag = hmac.new(key, struct.pack(">Q", 0) + frame, hashlib.sha256).digest()
            s.sendall(frame + (tag if good_mac else bytes(32)))
            reply = b""
            try:
                while len(reply) < 4 or len(reply) < 4 + struct.unpack(">I", reply[:4])[0] + 32:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
            except ConnectionResetError:
                pass
            return 1, reply
        if verdict != b"\x00":
            return (verdict[0] if verdict else None), b""
        return 0, s.recv(100)  # refused: then closed


def _refused_by_raft_port(addr: str, payload: bytes) -> bool:
    """Sends `payload` and reports whether the port hangs up without answering."""
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(payload)
        try:
            return s.recv(100) == b""
        except ConnectionResetError:
            return True


def test_cluster_secret_guards_the_raft_port(make_cluster, tmp_path):
    """Three voters sharing a secret file serve clients; garbage, a wrong-secret handshake,
    a broker without the secret's help (`strata voters` without it) and a broker with the
    wrong secret are all refused and logged, and the cluster keeps serving."""
    secret = tmp_path / "cluster.secret"
    secret.write_text("3f6c1e0a9b2d4c7e8f1a2b3c4d5e6f70\n")
    c = make_cluster(3, extra_args=["--cluster-secret-file", str(secret)])
    c.start_all()
    for i in (1, 2, 3):
        assert "Raft port is unauthenticated" not in c.node(i).log_text()
    create_topic(c.bootstrap(1), "guarded", 2)
    acked = produce_keyed(c.bootstrap(1), "guarded", 40)
    assert consume_all(c.bootstrap(3), "guarded", 40) == acked

    # Garbage (here an HTTP request) and a plain Raft frame from a broker without the secret.
    assert _refused_by_raft_port(c.node(1).raft_addr, b"GET / HTTP/1.0\r\n\r\n")
    # A wrong secret: the server's proof arrives, ours is refused with verdict 0.
    assert _raft_handshake(c.node(2).raft_addr, b"not-the-cluster-secret") == (0, b"")
    # The right one (the test plays node 9, not a member: it may connect, not propose).
    verdict, _ = _raft_handshake(c.node(2).raft_addr, b"3f6c1e0a9b2d4c7e8f1a2b3c4d5e6f70")
    assert verdict == 1
    # Authenticated as node 9, which is not a member: its request (ChangeVoters, asking
    # only for the voters: variant 5, two empty lists) is refused with a clear error; the
    # same frame with a wrong MAC is not answered at all.
    change_voters = b"STRP\x04\x00" + bytes([5, 0, 0])
    verdict, reply = _raft_handshake(c.node(2).raft_addr, b"3f6c1e0a9b2d4c7e8f1a2b3c4d5e6f70",
                                     then=change_voters)
    assert verdict == 1 and b"node 9 is not a registered member" in reply, reply
    assert _raft_handshake(c.node(2).raft_addr, b"3f6c1e0a9b2d4c7e8f1a2b3c4d5e6f70",
                           then=change_voters, good_mac=False) == (1, b"")

    # `strata voters` proves the secret too; without it, it fails clearly.
    rc, out, err = strata_voters(c.node(3).raft_addr, "--cluster-secret-file", str(secret))
    assert (rc, out) == (0, "voters: 1,2,3\nlearners: none"), err
    rc, _out, err = strata_voters(c.node(3).raft_addr)
    assert rc != 0 and "cluster secret" in err, err

    # A broker with the wrong secret cannot join, and says why.
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("this-is-some-other-secret-entirely\n")
    from cluster import Node
    intruder = Node(c, 4)
    c.nodes[4] = intruder
    intruder.env["STRATA_CLUSTER_SECRET_FILE"] = str(wrong)
    c.extra_args = []  # the flag would win over the variable
    intruder.launch()
    deadline = time.monotonic() + 20
    while "failed the cluster-secret handshake" not in intruder.log_text():
        assert time.monotonic() < deadline, intruder.log_tail()
        time.sleep(0.2)
    assert "strata is serving" not in intruder.log_text()
    intruder.stop(signal.SIGKILL)

    voter_logs = "".join(c.node(i).log_text() for i in (1, 2, 3))
    assert "raft connection refused" in c.node(1).log_text()
    assert "raft connection refused" in c.node(2).log_text()
    assert "peer=127.0.0.1:" in voter_logs
    # Still serving: one leader, three live brokers, produce and consume.
    c.wait_leader(among=[1, 2, 3])
    assert c.live_brokers(via=2) == {1, 2, 3}
    more = produce_keyed(c.bootstrap(2), "guarded", 20, prefix="after-")
    got = consume_all(c.bootstrap(1), "guarded", 60)
    assert set(acked) | set(more) == set(got)
    # A broker with the right secret joins as a learner, registers and serves.
    c.extra_args = ["--cluster-secret-file", str(secret)]
    learner = c.add_learner()
    c.wait_live({1, 2, 3, learner}, via=1)
    got = consume_all(c.bootstrap(learner), "guarded", 60)
    assert set(acked) | set(more) == set(got)


# ------------------------------------------------------------------ TLS on the Raft port
from test_tls import pki  # noqa: E402,F401  (a fixture: a throwaway CA and certificates)


def _forged_frame_closed(addr: str, frame: bytes) -> bytes:
    """Sends `frame` in plaintext; returns what came back before the port hung up (at
    most a TLS alert), failing if it stays open."""
    host, port = addr.rsplit(":", 1)
    reply = b""
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(frame)
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    return reply
                reply += chunk
        except ConnectionResetError:
            return reply


def test_raft_tls_encrypts_the_raft_port(make_cluster, pki):
    """Three voters with --raft-tls elect a leader over TLS and serve a produce and consume;
    a plaintext forged Raft frame is refused (connection closed, no Raft answer) and
    logged, and the cluster keeps working."""
    tls = ["--tls-cert-file", str(pki / "server.pem"), "--tls-key-file", str(pki / "server.key"),
           "--tls-ca-file", str(pki / "ca.pem")]
    c = make_cluster(3, extra_args=["--raft-tls", "true", *tls])
    c.start_all()
    # The Kafka listener is SSL too (TLS files with --listen), so clients speak TLS.
    voters_tls = ["--raft-tls", "true", "--tls-ca-file", str(pki / "ca.pem")]
    rc, out, err = strata_voters(c.node(2).raft_addr, *voters_tls)
    assert (rc, out) == (0, "voters: 1,2,3\nlearners: none"), err
    # Without TLS, `strata voters` gets no answer.
    rc, _out, err = strata_voters(c.node(2).raft_addr)
    assert rc != 0, err

    conf = {"bootstrap.servers": c.node(1).bootstrap, "security.protocol": "SSL",
            "ssl.ca.location": str(pki / "ca.pem")}
    admin = AdminClient(conf)
    for f in admin.create_topics([NewTopic("raft-tls", num_partitions=1, replication_factor=1)]).values():
        f.result(30)
    deadline = time.monotonic() + 30
    while len({broker_of(b) for b in admin.list_topics(timeout=10).brokers}) < 3:
        assert time.monotonic() < deadline, "not every broker registered over TLS Raft"
        time.sleep(0.5)

    def produce_consume(n: int, prefix: str, total: int) -> list[str]:
        """Produces n records through node 1; returns the partition's first `total`."""
        p = Producer({**conf, "acks": "all", "linger.ms": 5})
        for i in range(n):
            p.produce("raft-tls", key=f"k{i}".encode(), value=f"{prefix}{i}".encode())
        assert p.flush(30) == 0
        cons = Consumer({**conf, "group.id": f"g-{prefix}", "enable.auto.commit": False})
        cons.assign([TopicPartition("raft-tls", 0, 0)])
        got = []
        deadline = time.monotonic() + 30
        while len(got) < total and time.monotonic() < deadline:
            m = cons.poll(0.5)
            if m is not None and m.error() is None:
                got.append(m.value().decode())
        cons.close()
        return got

    got = produce_consume(20, "before-", 20)
    assert got == [f"before-{i}" for i in range(20)]

    # A forged Raft frame in plaintext (ChangeVoters asking for the voters, which an open
    # port would answer) is not a TLS handshake: closed with at most a TLS alert.
    change_voters = b"STRP\x04\x00" + bytes([5, 0, 0])
    frame = struct.pack(">I", len(change_voters)) + change_voters
    for i in (1, 2, 3):
        reply = _forged_frame_closed(c.node(i).raft_addr, frame)
        assert reply == b"" or reply[0] == 0x15, reply  # 0x15: a TLS alert record
        assert b"voters" not in reply and b"STRP" not in reply, reply
    deadline = time.monotonic() + 10
    while "TLS handshake failed" not in c.node(1).log_text():
        assert time.monotonic() < deadline, c.node(1).log_tail()
        time.sleep(0.2)
    assert "raft connection refused" in c.node(1).log_text()
    for i in (1, 2, 3):
        assert "Raft port is unauthenticated" in c.node(i).log_text()  # TLS without mTLS or a secret

    # Still working: the voters answer, and a second produce and consume succeed.
    rc, out, err = strata_voters(c.node(3).raft_addr, *voters_tls)
    assert (rc, out) == (0, "voters: 1,2,3\nlearners: none"), err
    got = produce_consume(20, "after-", 40)
    assert got == [f"before-{i}" for i in range(20)] + [f"after-{i}" for i in range(20)]

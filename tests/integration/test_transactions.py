"""Kafka transactions and exactly-once against Strata (issue 13), with real clients.

Covered:

* confluent-kafka transactional producer: commit, abort, commit on a keyed 3-partition
  topic.  read_committed sees exactly the committed records, in order per partition;
  read_uncommitted sees all of them.  A raw Fetch v4 (read_committed) lists the aborted
  transaction as (producer id, first offset) covering exactly the aborted records, and the
  partition holds control batches (attributes 0x20, COMMIT/ABORT) at the gaps between the
  transactions' offsets.
* The last stable offset: with a transaction open, ListOffsets v2 read_committed answers
  the open transaction's first offset (below the high watermark); a read_committed consumer
  stops there, even for later non-transactional records, until the commit.
* Consume-transform-produce with send_offsets_to_transaction, SIGKILL of the broker
  mid-stream and restart (one broker), and SIGKILL of the transaction coordinator's broker
  in a 3-broker Raft cluster: the output holds every input record exactly once (read
  committed) and the group's committed offsets equal the input's end offsets.
* kafkajs (tests/js/transactions.js): producer.transaction(), send, sendOffsets, commit,
  abort; offsets of the aborted transaction vanish.
* kafka-python 3.0.12's transactional producer, read back with isolation_level=read_committed.
* Fencing: a second producer with the same transactional.id fences the first (a fatal
  PRODUCER_FENCED / INVALID_PRODUCER_EPOCH / _FENCED); the first's records never show.
* transaction.timeout.ms: an abandoned transaction is aborted by the coordinator and
  read_committed readers move on; a producer SIGKILLed between AddPartitionsToTxn and
  EndTxn does not hold the LSO forever.
* Durability of transaction state: SIGKILL of the broker with a transaction open, restart,
  then commit with the same producer: the records show exactly once.
* Log compaction with transactions: the cleaner drops aborted records (and the index forgets
  the aborted transaction), and removes a marker only once none of its transaction's
  records are left and its delete horizon passed; markers of live records stay.

The consume-transform-produce processor runs in a child process (SupervisedProcessor): one
that dies or makes no commit for 30 s is SIGKILLed and replaced by a new one with the same
group and transactional.id, as a deployment would restart it.  Its producer sets
metadata.recovery.strategy=none: with librdkafka 2.16's default (rebootstrap), the kill of
the only broker decommissions it, and send_offsets_to_transaction() then hangs past its
timeout (librdkafka #5511).  In the 3-broker test the same hang can follow the group
coordinator's broker leaving the Metadata answer.  Every replacement is printed
(`PROCESSOR RESTART`); the exactly-once checks do not change.
TXN_TEST_DEBUG=1 turns on librdkafka's eos/protocol debug log for the processor's producer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter, defaultdict

import pytest
from confluent_kafka import (Consumer, KafkaError, KafkaException, Producer, TopicPartition,
                             OFFSET_BEGINNING)
from confluent_kafka.admin import AdminClient, NewTopic

import kwire
from cluster import Background, Cluster, make_cluster  # noqa: F401 (fixture)
from conftest import REPO_ROOT, TEST_STORE, Broker, free_port, supervise
from test_log_compaction import FAST, COMPACT, create, kcat_read, lbroker, produce_keyed, wait_segmented  # noqa: F401
from test_metrics import scrape, value

TXN_JS = REPO_ROOT / "tests" / "js" / "transactions.js"
FENCED_CODES = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}


# ====================================================================== helpers
def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    fs = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)],
                             operation_timeout=30)
    fs[topic].result(timeout=60)


def txn_producer(bootstrap: str, tid: str, **extra) -> Producer:
    conf = {"bootstrap.servers": bootstrap, "transactional.id": tid, "linger.ms": 5,
            "partitioner": "murmur2_random", "transaction.timeout.ms": 30000}
    conf.update(extra)
    return Producer(conf)


def plain_produce(bootstrap: str, topic: str, partition: int, values: list[str]) -> list[int]:
    """Non-transactional (idempotent) produce; returns the offsets, in order."""
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    got, errs = {}, []

    def cb(err, msg):
        if err is not None:
            errs.append(err)
        else:
            got[msg.value().decode()] = msg.offset()

    for v in values:
        p.produce(topic, value=v.encode(), key=b"plain", partition=partition, on_delivery=cb)
    assert p.flush(60) == 0 and not errs, errs
    return [got[v] for v in values]


def read_topic(bootstrap: str, topic: str, partitions: int, isolation: str,
               timeout: float = 30.0) -> dict[int, list[tuple[int, str]]]:
    """Everything a fresh consumer with `isolation` sees from offset 0 to the end it reports
    (the LSO for read_committed): {partition: [(offset, value)]}."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{time.monotonic_ns()}",
                  "enable.auto.commit": False, "isolation.level": isolation,
                  "enable.partition.eof": True, "fetch.wait.max.ms": 100})
    out: dict[int, list] = {p: [] for p in range(partitions)}
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        eof: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(eof) < partitions:
            assert time.monotonic() < deadline, f"{isolation} read of {topic}: EOF on {eof} only"
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
                    continue
                raise KafkaException(m.error())
            eof.discard(m.partition())
            out[m.partition()].append((m.offset(), m.value().decode()))
    finally:
        c.close()
    return out


def values_of(read: dict[int, list]) -> list[str]:
    return [v for recs in read.values() for _, v in recs]


def raw_call(bootstrap: str, api_key: int, version: int, body: bytes, timeout: float = 20.0) -> bytes:
    with kwire.connect(bootstrap, timeout=timeout) as s:
        s.sendall(kwire.request(api_key, version, 17, body))
        cid, resp = kwire.read_response(s)
        assert cid == 17
        return resp


def raw_fetch(bootstrap: str, topic: str, partition: int, offset: int, isolation: int) -> dict:
    body = kwire.fetch_v4_isolated_body(topic, partition, offset, isolation)
    return kwire.parse_fetch_v4_full(raw_call(bootstrap, kwire.API_FETCH, 4, body))[(topic, partition)]


def raw_batches(bootstrap: str, topic: str, partition: int, isolation: int = 0) -> tuple[dict, list, list]:
    """Every batch of the partition from 0 (raw Fetch v4), to the HW (read_uncommitted) or the
    LSO (read_committed): (last fetch answer, batches, union of the aborted_transactions)."""
    batches, aborted, offset, ans = [], [], 0, None
    for _ in range(1000):
        ans = raw_fetch(bootstrap, topic, partition, offset, isolation)
        assert ans["error_code"] == 0, ans
        for a in ans["aborted_transactions"] or []:
            if a not in aborted:
                aborted.append(a)
        end = ans["last_stable_offset"] if isolation else ans["high_watermark"]
        new = [b for b in kwire.parse_batch_headers(ans["records"]) if b["last_offset"] >= offset]
        batches += new
        if new:
            offset = new[-1]["last_offset"] + 1
        if offset >= end or not new:
            return ans, batches, sorted(aborted)
    raise AssertionError("fetch loop did not finish")


def list_offset(bootstrap: str, topic: str, partition: int, isolation: int, timestamp: int = -1) -> int:
    body = kwire.list_offsets_v2_body(topic, [partition], timestamp, isolation)
    err, _ts, off = kwire.parse_list_offsets_v2(raw_call(bootstrap, kwire.API_LIST_OFFSETS, 2, body))[(topic, partition)]
    assert err == 0, f"ListOffsets {topic}/{partition} isolation={isolation}: error {err}"
    return off


def find_txn_coordinator(bootstrap: str, tid: str) -> dict:
    body = kwire.find_coordinator_v1_body(tid, 1)
    return kwire.parse_find_coordinator_v1(raw_call(bootstrap, kwire.API_FIND_COORDINATOR, 1, body))


def wait_for(what: str, cond, timeout: float, every: float = 0.25):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = cond()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        for _ in range(30):
            try:
                tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=20)
                return {tp.partition: tp.offset for tp in tps}
            except KafkaException:
                time.sleep(1)
        raise AssertionError("could not read committed offsets")
    finally:
        c.close()


def high_watermarks(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks"})
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in range(partitions)}
    finally:
        c.close()


def keys_covering(partitions: int, n: int) -> list[str]:
    """n keys whose murmur2 partitions cover every partition (round-robin)."""
    by_part = defaultdict(list)
    i = 0
    while min((len(by_part[p]) for p in range(partitions)), default=0) < n:
        k = f"key-{i}"
        by_part[kwire.murmur2_partition(k.encode(), partitions)].append(k)
        i += 1
    return [by_part[j % partitions][j // partitions] for j in range(n * partitions)]


# ====================================================================== 1. commit, abort, commit
def test_confluent_commit_abort_commit(broker, unique_topic):
    topic, parts = unique_topic, 3
    create_topic(broker.bootstrap, topic, parts)
    keys = keys_covering(parts, 4)  # 12 keys, 4 per partition
    p = txn_producer(broker.bootstrap, f"tid-{topic}")
    p.init_transactions(30)

    delivered: dict[str, tuple[int, int]] = {}  # value -> (partition, offset)
    errors = []

    def cb(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered[msg.value().decode()] = (msg.partition(), msg.offset())

    txns = {}
    for name, end in (("txn1", "commit"), ("txn2", "abort"), ("txn3", "commit")):
        p.begin_transaction()
        vals = [f"{name}-{i}" for i in range(len(keys))]
        for k, v in zip(keys, vals):
            p.produce(topic, key=k.encode(), value=v.encode(), on_delivery=cb)
        p.flush(30)
        if end == "commit":
            p.commit_transaction(30)
        else:
            p.abort_transaction(30)
        txns[name] = vals
    assert not errors, errors
    assert set(delivered) == {v for vs in txns.values() for v in vs}, "not every record was acknowledged"
    for v, (part, _) in delivered.items():
        k = keys[int(v.split("-")[1])]
        assert part == kwire.murmur2_partition(k.encode(), parts), f"{v} ({k}) landed in partition {part}"

    def expected(names):
        out = {}
        for part in range(parts):
            vs = [(off, v) for v, (pp, off) in delivered.items() if pp == part and v.split("-")[0] in names]
            out[part] = sorted(vs)
        return out

    committed = read_topic(broker.bootstrap, topic, parts, "read_committed")
    assert committed == expected({"txn1", "txn3"}), "read_committed must see exactly txn1 and txn3"
    assert len(values_of(committed)) == 2 * len(keys)
    uncommitted = read_topic(broker.bootstrap, topic, parts, "read_uncommitted")
    assert uncommitted == expected({"txn1", "txn2", "txn3"}), "read_uncommitted must see every record"

    # Raw: aborted transactions index and control batches.
    for part in range(parts):
        offs = {name: sorted(off for v, (pp, off) in delivered.items() if pp == part and v.startswith(name + "-"))
                for name in txns}
        assert all(offs.values()), f"partition {part} lacks records of a transaction: {offs}"
        ans, batches, _ = raw_batches(broker.bootstrap, topic, part, isolation=kwire.READ_UNCOMMITTED)
        hw = ans["high_watermark"]
        assert ans["last_stable_offset"] == hw, f"partition {part}: LSO {ans['last_stable_offset']} != HW {hw} with no open transaction"
        data = [b for b in batches if not b["attributes"] & kwire.ATTR_CONTROL]
        control = [b for b in batches if b["attributes"] & kwire.ATTR_CONTROL]
        assert all(b["attributes"] & kwire.ATTR_TRANSACTIONAL for b in data), "data batches must be transactional"
        pids = {b["producer_id"] for b in data}
        assert len(pids) == 1 and -1 not in pids, f"partition {part}: producer ids {pids}"
        (pid,) = pids
        # One marker right after each transaction's last record: the offsets have gaps there.
        want_markers = [(offs["txn1"][-1] + 1, 1), (offs["txn2"][-1] + 1, 0), (offs["txn3"][-1] + 1, 1)]
        got_markers = [(b["base_offset"], b["control_type"]) for b in control]
        assert got_markers == want_markers, f"partition {part}: control batches {got_markers}, want {want_markers}"
        assert all(b["attributes"] & kwire.ATTR_TRANSACTIONAL and b["producer_id"] == pid and b["count"] == 1
                   for b in control), control
        assert offs["txn2"][0] == offs["txn1"][-1] + 2 and offs["txn3"][0] == offs["txn2"][-1] + 2, offs
        assert hw == offs["txn3"][-1] + 2
        data_offsets = sorted(r[0] for b in data for r in b["records"])
        assert data_offsets == sorted(offs["txn1"] + offs["txn2"] + offs["txn3"])

        rc, rc_batches, aborted = raw_batches(broker.bootstrap, topic, part, isolation=kwire.READ_COMMITTED)
        assert rc["last_stable_offset"] == hw, rc
        assert aborted == [(pid, offs["txn2"][0])], \
            f"partition {part}: aborted_transactions {aborted}, want [({pid}, {offs['txn2'][0]})]"
        # The aborted range [first offset, abort marker) holds exactly txn2's records.
        abort_marker = offs["txn2"][-1] + 1
        in_range = [o for o in data_offsets if offs["txn2"][0] <= o < abort_marker]
        assert in_range == offs["txn2"]
        # A fetch starting past the aborted transaction does not list it.
        later = raw_fetch(broker.bootstrap, topic, part, offs["txn3"][0], kwire.READ_COMMITTED)
        assert not later["aborted_transactions"], later["aborted_transactions"]


# ====================================================================== 2. the LSO
def test_open_transaction_holds_the_lso(broker, unique_topic):
    topic = unique_topic
    create_topic(broker.bootstrap, topic, 1)
    pre = plain_produce(broker.bootstrap, topic, 0, [f"pre-{i}" for i in range(3)])
    assert pre == [0, 1, 2]

    t = txn_producer(broker.bootstrap, f"tid-{topic}")
    t.init_transactions(30)
    t.begin_transaction()
    for i in range(5):
        t.produce(topic, value=f"open-{i}".encode(), partition=0)
    assert t.flush(30) == 0
    post = plain_produce(broker.bootstrap, topic, 0, [f"post-{i}" for i in range(4)])
    assert post == [8, 9, 10, 11], post

    hw = list_offset(broker.bootstrap, topic, 0, kwire.READ_UNCOMMITTED)
    lso = list_offset(broker.bootstrap, topic, 0, kwire.READ_COMMITTED)
    assert hw == 12
    assert lso == 3, f"ListOffsets read_committed = {lso}; the open transaction starts at 3 (HW {hw})"
    ans = raw_fetch(broker.bootstrap, topic, 0, 0, kwire.READ_COMMITTED)
    assert ans["high_watermark"] == 12 and ans["last_stable_offset"] == 3, ans

    # A live read_committed consumer stops at the LSO ...
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"g-{topic}",
                  "isolation.level": "read_committed", "enable.auto.commit": False,
                  "fetch.wait.max.ms": 100})
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        seen = []
        t_end = time.monotonic() + 4
        while time.monotonic() < t_end:
            m = c.poll(0.3)
            if m is not None and not m.error():
                seen.append(m.value().decode())
        assert seen == ["pre-0", "pre-1", "pre-2"], f"read_committed saw {seen} with the transaction open"
        assert values_of(read_topic(broker.bootstrap, topic, 1, "read_uncommitted")) == \
            [f"pre-{i}" for i in range(3)] + [f"open-{i}" for i in range(5)] + [f"post-{i}" for i in range(4)]

        # ... and moves on at the commit.
        t.commit_transaction(30)
        want = [f"open-{i}" for i in range(5)] + [f"post-{i}" for i in range(4)]
        t_end = time.monotonic() + 20
        while len(seen) < 12 and time.monotonic() < t_end:
            m = c.poll(0.3)
            if m is not None and not m.error():
                seen.append(m.value().decode())
        assert seen[3:] == want, f"after the commit read_committed saw {seen[3:]}"
    finally:
        c.close()
    hw2 = list_offset(broker.bootstrap, topic, 0, kwire.READ_UNCOMMITTED)
    assert hw2 == 13  # + the commit marker
    assert list_offset(broker.bootstrap, topic, 0, kwire.READ_COMMITTED) == hw2


# ====================================================================== 3/4. consume-transform-produce
class Processor:
    """A consume-transform-produce loop (confluent-kafka consumer group, read_committed, and
    a transactional producer; send_offsets_to_transaction; a commit every `batch` records),
    recovering as confluent-kafka's transactional examples do: retriable -> retry, abortable
    -> abort and rewind to the committed offsets, fatal -> a new producer with the same
    transactional.id.  Runs in a thread until the group's offsets reach `ends`."""

    def __init__(self, bootstrap: str, src: str, dst: str, group: str, tid: str, ends: dict[int, int],
                 batch: int = 100, pause: float = 0.05):
        self.bootstrap, self.src, self.dst, self.group, self.tid = bootstrap, src, dst, group, tid
        self.ends, self.batch, self.pause = ends, batch, pause
        self.commits = 0
        self.aborts = 0
        self.fatal = 0
        self.retries = 0
        self.errors: list[str] = []
        self.state = "starting"
        self.expect: dict[int, int] = {}  # partition -> offset the next message must have (after a rewind)
        self.consumed = 0
        self.done = threading.Event()
        self.stop = threading.Event()
        self.thread = Background(self._run, name="processor")

    def start(self) -> "Processor":
        self.thread.start()
        return self

    def _conf(self) -> dict:
        # metadata.recovery.strategy=none: with its default (rebootstrap), librdkafka 2.16
        # decommissions every known broker when the only one goes down, and a
        # decommissioned broker left cached as the group coordinator makes
        # send_offsets_to_transaction() hang past its timeout (librdkafka #5511, #5456).
        conf = {"bootstrap.servers": self.bootstrap, "transactional.id": self.tid, "linger.ms": 5,
                "transaction.timeout.ms": 20000, "message.timeout.ms": 20000,
                "metadata.recovery.strategy": os.environ.get("TXN_TEST_RECOVERY", "none")}
        if os.environ.get("TXN_TEST_DEBUG"):  # librdkafka's eos/protocol log, on stderr (run with -s)
            conf["debug"] = os.environ.get("TXN_TEST_DEBUG_CONTEXTS", "eos,protocol")
        return conf

    def _producer(self) -> Producer:
        p = Producer(self._conf())
        for attempt in range(40):
            try:
                p.init_transactions(20)
                return p
            except KafkaException as e:
                self.errors.append(f"init: {e.args[0]}")
                if self.stop.is_set() or attempt == 39:
                    raise
                if e.args[0].fatal():
                    p = Producer(self._conf())
                time.sleep(0.5)

    def _run(self) -> None:
        need_rewind = threading.Event()

        def on_revoke(_c, parts):
            self.errors.append(f"revoked: {[tp.partition for tp in parts]}")
            self.expect.clear()
            need_rewind.set()

        def on_assign(_c, parts):
            self.errors.append(f"assigned: {[tp.partition for tp in parts]}")
            self.expect.clear()

        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group,
                      "isolation.level": "read_committed", "enable.auto.commit": False,
                      "auto.offset.reset": "earliest", "session.timeout.ms": 10000,
                      "heartbeat.interval.ms": 500, "fetch.wait.max.ms": 100})
        c.subscribe([self.src], on_assign=on_assign, on_revoke=on_revoke)
        last_committed: dict[int, int] = {}
        for _ in range(10):  # a replacement processor: is everything committed already?
            try:
                for tp in c.committed([TopicPartition(self.src, q) for q in self.ends], timeout=10):
                    if tp.offset >= 0:
                        last_committed[tp.partition] = tp.offset
                break
            except KafkaException:
                time.sleep(1)
        if all(last_committed.get(q, 0) >= e for q, e in self.ends.items()):
            self.done.set()
            c.close()
            return
        p = self._producer()
        p.begin_transaction()
        pending = 0
        try:
            while not self.stop.is_set():
                if need_rewind.is_set():
                    need_rewind.clear()
                    if pending:
                        p, _ = self._abort(p, c)
                        pending = 0
                self.state = f"poll (pending {pending}, assignment {[(tp.partition) for tp in c.assignment()]})"
                m = c.poll(0.2)
                if m is not None and not m.error():
                    exp = self.expect.pop(m.partition(), None)
                    if exp is not None and m.offset() != exp:
                        # The rewind's (asynchronous) seek did not take: seek again.  The
                        # offset itself came from the broker (committed()), so a wrong
                        # committed offset still shows as loss or duplicates.
                        self.errors.append(f"seek lost: partition {m.partition()} expected {exp}, got {m.offset()}")
                        c.seek(TopicPartition(self.src, m.partition(), exp))
                        self.expect[m.partition()] = exp
                        continue
                    self.consumed += 1
                    try:
                        p.produce(self.dst, key=m.key(), value=m.value())
                        pending += 1
                    except BufferError:
                        p.poll(0.2)
                        p.produce(self.dst, key=m.key(), value=m.value())
                        pending += 1
                    except KafkaException as e:
                        self.errors.append(f"produce: {e.args[0]}")
                        p, _ = self._abort(p, c)
                        pending = 0
                        continue
                elif m is not None:
                    self.errors.append(f"consumer: {m.error()}")
                if pending >= self.batch or (pending and m is None):
                    positions = [tp for tp in c.position(c.assignment()) if tp.offset >= 0]
                    self.state = f"commit {[(tp.partition, tp.offset) for tp in positions]}"
                    ok, p = self._commit(p, c, positions)
                    pending = 0
                    if ok:
                        self.commits += 1
                        for tp in positions:
                            last_committed[tp.partition] = tp.offset
                        time.sleep(self.pause)
                        p.begin_transaction()
                    if all(last_committed.get(q, 0) >= e for q, e in self.ends.items()):
                        self.done.set()
                        return
        finally:
            try:
                p.abort_transaction(5)
            except Exception:  # noqa: BLE001
                pass
            c.close()

    def _commit(self, p: Producer, c: Consumer, positions) -> tuple[bool, Producer]:
        """Sends the offsets and commits; (committed?, producer to go on with)."""
        for _ in range(60):
            try:
                if positions:
                    cgm = c.consumer_group_metadata()
                    p.send_offsets_to_transaction(positions, cgm, 20)
                p.commit_transaction(20)
                return True, p
            except KafkaException as e:
                err = e.args[0]
                self.errors.append(f"commit: {err}")
                if err.retriable():
                    self.retries += 1
                    time.sleep(0.2)
                    continue
                return self._abort(p, c, err)
        raise AssertionError(f"commit did not succeed after 60 retries: {self.errors[-5:]}")

    def _abort(self, p: Producer, c: Consumer, err: KafkaError | None = None) -> tuple[bool, Producer]:
        """Aborts the open transaction (or replaces a fatally failed producer), rewinds the
        consumer and begins the next transaction."""
        if err is None or not err.fatal():
            for _ in range(30):
                try:
                    p.abort_transaction(20)
                    self.aborts += 1
                    break
                except KafkaException as e:
                    self.errors.append(f"abort: {e.args[0]}")
                    if e.args[0].fatal():
                        err = e.args[0]
                        break
                    time.sleep(0.3)
        if err is not None and err.fatal():
            self.fatal += 1
            p = self._producer()
        self._rewind(c)
        p.begin_transaction()
        return False, p

    def _rewind(self, c: Consumer) -> None:
        """Back to the group's committed offsets (what the aborted transaction did not move)."""
        for _ in range(60):
            try:
                assignment = c.assignment()
                if not assignment:
                    return  # the next assignment starts from the committed offsets
                committed = c.committed(assignment, timeout=10)
                self.expect = {tp.partition: tp.offset for tp in committed if tp.offset >= 0}
                for tp in committed:
                    if tp.offset < 0:
                        tp.offset = OFFSET_BEGINNING
                    c.seek(tp)
                self.errors.append(f"rewound to: {[(tp.partition, tp.offset) for tp in committed]}")
                return
            except KafkaException as e:
                self.errors.append(f"rewind: {e.args[0]}")
                time.sleep(0.5)
        raise AssertionError("could not rewind the consumer")


def _processor_child(args: tuple, shared, done) -> None:
    """Entry point of a processor process (multiprocessing, spawn): runs Processor's loop in
    its main thread and mirrors its counters into `shared` (commits, aborts, fatal, retries).
    SIGUSR1 dumps every thread's Python stack to stderr (faulthandler)."""
    import faulthandler

    faulthandler.register(signal.SIGUSR1, all_threads=True)
    proc = Processor(*args)

    def mirror():
        shared[0], shared[1], shared[2], shared[3] = proc.commits, proc.aborts, proc.fatal, proc.retries

    def mirror_loop():
        while True:
            mirror()
            time.sleep(0.1)

    threading.Thread(target=mirror_loop, daemon=True).start()
    try:
        proc._run()
    finally:
        mirror()
        kinds = Counter(e.split(":")[0] for e in proc.errors)
        sys.stderr.write(f"PROCESSOR pid {os.getpid()}: {proc.commits} commits, {proc.aborts} aborts, "
                         f"{proc.fatal} fatal, {proc.retries} retries, errors {dict(kinds)}, "
                         f"last {proc.errors[-12:]}\n")
        sys.stderr.flush()
    if proc.done.is_set():
        done.set()


class SupervisedProcessor:
    """Runs a Processor in a child process, as a deployment would: a processor that dies, or
    makes no progress for `stall` seconds (a wedged client call), is SIGKILLed and replaced
    by a new one with the same group and transactional.id, which fences the old one.  Every
    restart is counted and printed; exactly-once must hold regardless."""

    def __init__(self, bootstrap: str, src: str, dst: str, group: str, tid: str, ends: dict[int, int],
                 stall: float = 30.0, max_restarts: int = 2):
        import multiprocessing

        self.ctx = multiprocessing.get_context("spawn")
        self.args = (bootstrap, src, dst, group, tid, ends)
        self.stall, self.max_restarts = stall, max_restarts
        self.done = self.ctx.Event()
        self.shared = None
        self.base = [0, 0, 0, 0]  # counters of the processes already replaced
        self.child = None
        self.restarts: list[str] = []

    def _counter(self, i: int) -> int:
        return self.base[i] + (self.shared[i] if self.shared is not None else 0)

    commits = property(lambda self: self._counter(0))
    aborts = property(lambda self: self._counter(1))
    fatal = property(lambda self: self._counter(2))
    retries = property(lambda self: self._counter(3))

    @property
    def error(self) -> str | None:
        if self.child is not None and not self.child.is_alive() and not self.done.is_set():
            return f"processor exited with {self.child.exitcode} before finishing"
        return None

    def start(self) -> "SupervisedProcessor":
        if self.shared is not None:
            self.base = [self.base[i] + self.shared[i] for i in range(4)]
        self.shared = self.ctx.Array("i", 4)
        self.child = self.ctx.Process(target=_processor_child, args=(self.args, self.shared, self.done),
                                      daemon=True)
        self.child.start()
        return self

    def _replace(self, why: str) -> None:
        self.restarts.append(why)
        print(f"PROCESSOR RESTART #{len(self.restarts)}: {why}", flush=True)
        assert len(self.restarts) <= self.max_restarts, f"processor restarted too often: {self.restarts}"
        if self.child.is_alive():
            os.kill(self.child.pid, signal.SIGUSR1)  # Python stacks to stderr
            time.sleep(1)
            self.child.kill()
        self.child.join(10)
        self.start()

    def wait(self, timeout: float, until=None) -> None:
        """Supervises the processor until it is done (or `until()` holds), replacing one that
        died or is wedged."""
        deadline = time.monotonic() + timeout
        last, last_change = self.commits, time.monotonic()
        while not self.done.is_set():
            assert time.monotonic() < deadline, \
                f"processor not done within {timeout}s: {self.commits} commits, restarts {self.restarts}"
            time.sleep(0.5)
            if self.commits != last:
                last, last_change = self.commits, time.monotonic()
            if self.done.is_set():
                break
            if until is not None and until():
                return
            if not self.child.is_alive():
                self._replace(f"exited with {self.child.exitcode} after {self.commits} commits")
                last_change = time.monotonic()
            elif time.monotonic() - last_change > self.stall:
                self._replace(f"no commit for {self.stall:.0f}s after {self.commits} commits (wedged)")
                last_change = time.monotonic()
        self.child.join(30)

    def close(self) -> None:
        if self.child is not None and self.child.is_alive():
            self.child.kill()
            self.child.join(10)

    def summary(self) -> str:
        return (f"{self.commits} commits, {self.aborts} aborts, {self.fatal} fatal, {self.retries} retries, "
                f"{len(self.restarts)} processor restarts {self.restarts}")


def fill_input(bootstrap: str, topic: str, n: int) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for i in range(n):
        p.produce(topic, key=f"k{i % 31}".encode(), value=f"in-{i:05d}".encode())
        if i % 500 == 0:
            p.poll(0)
    assert p.flush(60) == 0


def check_exactly_once(bootstrap: str, src: str, dst: str, group: str, n: int, parts: int) -> None:
    ends = high_watermarks(bootstrap, src, parts)
    assert sum(ends.values()) == n
    out = read_topic(bootstrap, dst, parts, "read_committed", timeout=60)
    counts = Counter(values_of(out))
    dup = {v: k for v, k in counts.items() if k > 1}
    missing = [f"in-{i:05d}" for i in range(n) if f"in-{i:05d}" not in counts]
    stray = [v for v in counts if not v.startswith("in-")]
    assert not dup, f"{len(dup)} input records appear more than once in the output, e.g. {list(dup.items())[:5]}"
    assert not missing, f"{len(missing)} input records missing from the output, e.g. {missing[:5]}"
    assert not stray and len(counts) == n
    committed = committed_offsets(bootstrap, group, src, parts)
    assert committed == ends, f"group offsets {committed} != input end offsets {ends}"


def test_consume_transform_produce_sigkill_broker(broker, unique_topic):
    src, dst, parts, n = f"{unique_topic}-in", f"{unique_topic}-out", 3, 3000
    create_topic(broker.bootstrap, src, parts)
    create_topic(broker.bootstrap, dst, parts)
    fill_input(broker.bootstrap, src, n)
    ends = high_watermarks(broker.bootstrap, src, parts)
    assert sum(ends.values()) == n
    group, tid = f"g-{unique_topic}", f"tid-{unique_topic}"
    proc = SupervisedProcessor(broker.bootstrap, src, dst, group, tid, ends).start()
    try:
        wait_for("5 transactions committed", lambda: proc.commits >= 5 or proc.error, timeout=60)
        assert proc.error is None, proc.error
        assert not proc.done.is_set(), "the processor finished before the kill; slow it down"
        killed_at = proc.commits
        broker.kill()
        time.sleep(1)
        broker.start()
        proc.wait(timeout=180)
    finally:
        proc.close()
    assert proc.commits > killed_at
    print(f"\nkilled the broker after {killed_at} commits; {proc.summary()}")
    check_exactly_once(broker.bootstrap, src, dst, group, n, parts)




@pytest.mark.timeout(400)
def test_consume_transform_produce_three_brokers_sigkill_coordinator(make_cluster, unique_topic):
    c = make_cluster(3)
    c.start_all()
    c.wait_leader()
    bootstrap = c.bootstrap()
    src, dst, parts, n = f"{unique_topic}-in", f"{unique_topic}-out", 3, 3000
    create_topic(bootstrap, src, parts)
    create_topic(bootstrap, dst, parts)
    fill_input(bootstrap, src, n)
    ends = high_watermarks(bootstrap, src, parts)
    assert sum(ends.values()) == n
    group, tid = f"g-{unique_topic}", f"tid-{unique_topic}"
    coords = {i: find_txn_coordinator(c.node(i).bootstrap, tid) for i in c.running_ids()}
    assert all(a["error_code"] == 0 for a in coords.values()), coords
    assert len({a["node_id"] for a in coords.values()}) == 1, f"brokers disagree on the coordinator: {coords}"
    victim = coords[1]["node_id"]
    assert victim in c.nodes, coords
    assert coords[1]["port"] == c.node(victim).kafka_port

    proc = SupervisedProcessor(bootstrap, src, dst, group, tid, ends).start()
    try:
        wait_for("5 transactions committed", lambda: proc.commits >= 5 or proc.error, timeout=90)
        assert proc.error is None, proc.error
        assert not proc.done.is_set(), "the processor finished before the kill; slow it down"
        killed_at = proc.commits
        c.kill(victim, signal.SIGKILL)
        survivors = [i for i in c.nodes if i != victim]
        # Another broker takes the coordinator role while the victim is down.
        t0 = time.monotonic()
        wait_for("a live transaction coordinator",
                 lambda: all((a := find_txn_coordinator(c.node(i).bootstrap, tid))["error_code"] == 0
                             and a["node_id"] in survivors for i in survivors), timeout=45)
        print(f"\ncoordinator moved off node {victim} in {time.monotonic() - t0:.1f} s")
        # Supervised: librdkafka can wedge here too (#5511: the group coordinator's broker
        # left the metadata while cached as the coordinator); the processor is replaced.
        proc.wait(timeout=120, until=lambda: proc.commits > killed_at + 2)
        c.start(victim)
        proc.wait(timeout=200)
    finally:
        proc.close()
    assert proc.commits > killed_at
    print(f"killed node {victim} after {killed_at} commits; {proc.summary()}")
    check_exactly_once(c.bootstrap(), src, dst, group, n, parts)


# ====================================================================== 5. kafkajs
def test_kafkajs_transactions(broker, unique_topic):
    node = shutil.which("node")
    assert node, "node is not installed"
    assert (REPO_ROOT / "tests" / "js" / "node_modules" / "kafkajs").is_dir(), "kafkajs not installed"
    src, dst, group = f"{unique_topic}-in", f"{unique_topic}-out", f"g-{unique_topic}"
    create_topic(broker.bootstrap, src, 2)
    create_topic(broker.bootstrap, dst, 2)
    for part in range(2):
        plain_produce(broker.bootstrap, src, part, [f"x{part}-{i}" for i in range(10)])
    try:
        proc = subprocess.run([node, str(TXN_JS), broker.bootstrap, dst, src, group, f"tid-{unique_topic}"],
                              cwd=str(TXN_JS.parent), capture_output=True, text=True, timeout=150)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"transactions.js hung\nstdout:\n{e.stdout}\nstderr:\n{e.stderr}")
    out = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, out
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert len(lines) == 1, out
    result = json.loads(lines[0][len("RESULT "):])
    assert [s["txn"] for s in result["steps"]] == ["c1", "a", "c2"], result

    committed = values_of(read_topic(broker.bootstrap, dst, 2, "read_committed"))
    want = sorted([f"c1-{i}" for i in range(10)] + [f"c2-{i}" for i in range(10)])
    assert sorted(committed) == want, f"read_committed saw {sorted(committed)}"
    uncommitted = values_of(read_topic(broker.bootstrap, dst, 2, "read_uncommitted"))
    assert sorted(uncommitted) == sorted(want + [f"a-{i}" for i in range(10)])
    # sendOffsets of the committed transaction stand; the aborted one's vanished.
    assert committed_offsets(broker.bootstrap, group, src, 2) == {0: 5, 1: 7}


# ====================================================================== 6. kafka-python
def test_kafka_python_transactions(broker, unique_topic):
    from kafka import KafkaConsumer, KafkaProducer
    from kafka import TopicPartition as KTP
    from kafka.structs import OffsetAndMetadata

    topic, src, group = unique_topic, f"{unique_topic}-in", f"g-{unique_topic}"
    create_topic(broker.bootstrap, topic, 2)
    create_topic(broker.bootstrap, src, 1)
    plain_produce(broker.bootstrap, src, 0, [f"x-{i}" for i in range(10)])

    p = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=f"tid-{topic}",
                      request_timeout_ms=30000, max_block_ms=30000)
    try:
        p.init_transactions()
        p.begin_transaction()
        futs = [p.send(topic, key=f"k{i % 3}".encode(), value=f"c1-{i}".encode()) for i in range(10)]
        p.send_offsets_to_transaction({KTP(src, 0): OffsetAndMetadata(4, "", -1)}, group)
        p.commit_transaction()
        assert all(f.get(timeout=10) for f in futs)

        p.begin_transaction()
        for i in range(10):
            p.send(topic, key=f"k{i % 3}".encode(), value=f"a-{i}".encode())
        p.flush(30)
        p.send_offsets_to_transaction({KTP(src, 0): OffsetAndMetadata(9, "", -1)}, group)
        p.abort_transaction()

        p.begin_transaction()
        for i in range(10):
            p.send(topic, key=f"k{i % 3}".encode(), value=f"c2-{i}".encode())
        p.commit_transaction()
    finally:
        p.close(timeout=10)

    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, isolation_level="read_committed",
                      auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=3000)
    try:
        c.assign([KTP(topic, 0), KTP(topic, 1)])
        c.seek_to_beginning()
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 20 and time.monotonic() < deadline:
            for _tp, msgs in c.poll(timeout_ms=500).items():
                got += [m.value.decode() for m in msgs]
        # nothing further arrives
        for _ in range(4):
            for _tp, msgs in c.poll(timeout_ms=500).items():
                got += [m.value.decode() for m in msgs]
    finally:
        c.close()
    assert sorted(got) == sorted([f"c1-{i}" for i in range(10)] + [f"c2-{i}" for i in range(10)]), got
    assert sorted(values_of(read_topic(broker.bootstrap, topic, 2, "read_committed"))) == sorted(got)
    assert len(values_of(read_topic(broker.bootstrap, topic, 2, "read_uncommitted"))) == 30
    assert committed_offsets(broker.bootstrap, group, src, 1) == {0: 4}


# ====================================================================== 7. fencing
def test_fencing_same_transactional_id(broker, unique_topic):
    topic, tid = unique_topic, f"tid-{unique_topic}"
    create_topic(broker.bootstrap, topic, 1)
    a_errors = []
    a = txn_producer(broker.bootstrap, tid, error_cb=lambda e: a_errors.append(e))
    a.init_transactions(30)
    a.begin_transaction()
    for i in range(5):
        a.produce(topic, value=f"A-{i}".encode(), partition=0)
    assert a.flush(30) == 0

    b = txn_producer(broker.bootstrap, tid)
    b.init_transactions(30)  # fences A (and aborts its transaction)

    # A is fenced: producing and committing fail with a fatal fencing error.
    def attempt(fn):
        try:
            fn()
        except KafkaException as e:
            return e.args[0]
        except SystemError as e:  # confluent-kafka: a fatal error raised inside flush()'s callbacks
            if isinstance(e.__cause__, KafkaException):
                return e.__cause__.args[0]
            raise
        return None

    def produce_more():
        for i in range(5, 10):
            a.produce(topic, value=f"A-{i}".encode(), partition=0)
        a.flush(15)

    raised_produce = attempt(produce_more)
    raised = attempt(lambda: a.commit_transaction(20))
    assert raised is not None, f"the fenced producer committed (produce: {raised_produce})"
    codes = {raised.code()} | {e.code() for e in a_errors} | ({raised_produce.code()} if raised_produce else set())
    assert raised.fatal() or any(e.fatal() for e in a_errors), f"fencing must be fatal: {raised}, {a_errors}"
    assert codes & FENCED_CODES, f"no fencing error code among {codes} ({raised}; {a_errors})"

    b.begin_transaction()
    for i in range(5):
        b.produce(topic, value=f"B-{i}".encode(), partition=0)
    b.commit_transaction(30)

    seen = values_of(read_topic(broker.bootstrap, topic, 1, "read_committed"))
    assert seen == [f"B-{i}" for i in range(5)], f"read_committed saw {seen}"
    all_seen = values_of(read_topic(broker.bootstrap, topic, 1, "read_uncommitted"))
    assert [v for v in all_seen if v.startswith("A-")][:5] == [f"A-{i}" for i in range(5)]
    assert list_offset(broker.bootstrap, topic, 0, kwire.READ_COMMITTED) == \
        list_offset(broker.bootstrap, topic, 0, kwire.READ_UNCOMMITTED)


# ====================================================================== 8. timeout
def test_transaction_timeout_aborts(broker, unique_topic):
    topic = unique_topic
    create_topic(broker.bootstrap, topic, 1)
    stale = txn_producer(broker.bootstrap, f"tid-{topic}-stale", **{"transaction.timeout.ms": 3000})
    stale.init_transactions(30)
    stale.begin_transaction()
    for i in range(5):
        stale.produce(topic, value=f"stale-{i}".encode(), partition=0)
    assert stale.flush(30) == 0
    t_open = time.monotonic()
    assert list_offset(broker.bootstrap, topic, 0, kwire.READ_COMMITTED) == 0

    fresh = txn_producer(broker.bootstrap, f"tid-{topic}-fresh")
    fresh.init_transactions(30)
    fresh.begin_transaction()
    for i in range(5):
        fresh.produce(topic, value=f"fresh-{i}".encode(), partition=0)
    fresh.commit_transaction(30)

    def committed_visible():
        return values_of(read_topic(broker.bootstrap, topic, 1, "read_committed", timeout=10))

    seen = wait_for("the committed records behind the abandoned transaction",
                    lambda: (v := committed_visible()) and "fresh-4" in v and v, timeout=25, every=1)
    took = time.monotonic() - t_open
    print(f"\nabandoned transaction aborted within {took:.1f} s")
    assert seen == [f"fresh-{i}" for i in range(5)], seen
    wait_for("LSO == HW", lambda: list_offset(broker.bootstrap, topic, 0, kwire.READ_COMMITTED)
             == list_offset(broker.bootstrap, topic, 0, kwire.READ_UNCOMMITTED), timeout=10)
    ans, batches, _ = raw_batches(broker.bootstrap, topic, 0)
    aborts = [b for b in batches if b["attributes"] & kwire.ATTR_CONTROL and b["control_type"] == 0]
    assert aborts, "no ABORT marker for the timed-out transaction"
    # The stale producer's commit now fails (its epoch was bumped or its transaction is gone).
    with pytest.raises(KafkaException):
        stale.produce(topic, value=b"stale-late", partition=0)
        stale.flush(10)
        stale.commit_transaction(15)
    wait_for("LSO == HW after the stale producer's last attempt",
             lambda: list_offset(broker.bootstrap, topic, 0, kwire.READ_COMMITTED)
             == list_offset(broker.bootstrap, topic, 0, kwire.READ_UNCOMMITTED), timeout=15)
    final = values_of(read_topic(broker.bootstrap, topic, 1, "read_committed"))
    assert not [v for v in final if v.startswith("stale")], final


# ====================================================================== 9. hanging transaction
HANGING = textwrap.dedent("""
    import sys, time
    from confluent_kafka import Producer
    bootstrap, topic, tid = sys.argv[1:4]
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": tid,
                  "transaction.timeout.ms": 3000, "linger.ms": 5})
    p.init_transactions(30)
    p.begin_transaction()
    for i in range(5):
        p.produce(topic, value=f"hung-{i}".encode(), partition=0)
    assert p.flush(30) == 0
    print("READY", flush=True)
    time.sleep(600)
""")


def test_hanging_transaction_of_killed_producer(broker, unique_topic):
    topic = unique_topic
    create_topic(broker.bootstrap, topic, 1)
    plain_produce(broker.bootstrap, topic, 0, ["before"])
    child = subprocess.Popen([sys.executable, "-c", HANGING, broker.bootstrap, topic, f"tid-{topic}"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        if line.strip() != "READY":
            child.kill()
            _, err = child.communicate(timeout=10)
            pytest.fail(f"the transactional child did not get ready: {line!r}\n{err[-3000:]}")
        assert list_offset(broker.bootstrap, topic, 0, kwire.READ_COMMITTED) == 1
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        t_kill = time.monotonic()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    after = plain_produce(broker.bootstrap, topic, 0, [f"after-{i}" for i in range(3)])
    assert after[0] >= 6
    seen = wait_for("read_committed past the hanging transaction",
                    lambda: (v := values_of(read_topic(broker.bootstrap, topic, 1, "read_committed", timeout=10)))
                    and "after-2" in v and v, timeout=30, every=1)
    print(f"\nLSO freed {time.monotonic() - t_kill:.1f} s after the producer died")
    assert seen == ["before"] + [f"after-{i}" for i in range(3)], seen
    wait_for("LSO == HW", lambda: list_offset(broker.bootstrap, topic, 0, kwire.READ_COMMITTED)
             == list_offset(broker.bootstrap, topic, 0, kwire.READ_UNCOMMITTED), timeout=10)
    _, _, aborted = raw_batches(broker.bootstrap, topic, 0, kwire.READ_COMMITTED)
    assert [first for _pid, first in aborted] == [1], aborted


# ====================================================================== 10. durability
def test_open_transaction_survives_broker_sigkill(broker, unique_topic):
    topic, parts, tid = unique_topic, 3, f"tid-{unique_topic}"
    create_topic(broker.bootstrap, topic, parts)
    p = txn_producer(broker.bootstrap, tid, **{"transaction.timeout.ms": 60000, "message.timeout.ms": 60000})
    p.init_transactions(30)
    p.begin_transaction()
    for i in range(30):
        p.produce(topic, key=f"k{i}".encode(), value=f"early-{i}".encode())
    p.commit_transaction(30)

    def run_txn(prod: Producer, kill: bool) -> None:
        prod.begin_transaction()
        for i in range(60):
            prod.produce(topic, key=f"k{i}".encode(), value=f"d-{i}".encode())
        assert prod.flush(30) == 0
        if kill:
            broker.kill()
            broker.start()
        prod.commit_transaction(60)

    outcome = "committed"
    try:
        run_txn(p, kill=True)
    except KafkaException as e:
        err = e.args[0]
        outcome = f"{err.name()} (fatal={err.fatal()}, abortable={err.txn_requires_abort()}, retriable={err.retriable()})"
        for _ in range(10):
            if not err.retriable():
                break
            try:  # a retriable commit error: the commit is retried (librdkafka's contract)
                p.commit_transaction(30)
                err = None
                outcome += " -> committed on retry"
                break
            except KafkaException as e2:
                err = e2.args[0]
        if err is not None:
            if err.txn_requires_abort():
                p.abort_transaction(60)
            else:
                p = txn_producer(broker.bootstrap, tid)
                p.init_transactions(60)
            run_txn(p, kill=False)
    print(f"\ncommit after the restart: {outcome}")

    got = values_of(read_topic(broker.bootstrap, topic, parts, "read_committed"))
    counts = Counter(got)
    assert sorted(counts) == sorted([f"early-{i}" for i in range(30)] + [f"d-{i}" for i in range(60)]), \
        f"missing {set(f'd-{i}' for i in range(60)) - set(counts)}"
    assert all(k == 1 for k in counts.values()), {v: k for v, k in counts.items() if k > 1}
    for part in range(parts):
        assert list_offset(broker.bootstrap, topic, part, kwire.READ_COMMITTED) == \
            list_offset(broker.bootstrap, topic, part, kwire.READ_UNCOMMITTED)


# ====================================================================== 11. log compaction
def test_cleaner_drops_aborted_records_then_markers(lbroker):
    """A compacted topic with committed and aborted transactions: the cleaner drops the
    aborted records (and the index forgets the aborted transaction), keeps the latest
    committed record of each key, and removes a marker as Kafka does: only once a pass finds
    none of its transaction's records before it, and after its delete horizon.  Markers of
    transactions with live records stay."""
    b = lbroker.start()
    topic = "lc-txn"
    create(b, topic, 1, COMPACT)
    p = txn_producer(b.bootstrap, "tid-lc-txn")
    p.init_transactions(30)
    delivered: list[tuple[int, bytes, bytes]] = []

    def cb(err, msg):
        assert err is None, err
        delivered.append((msg.offset(), msg.key(), msg.value()))

    keys = [f"k{i}".encode() for i in range(5)]
    # c1 writes every key; ab is aborted; c3 and c4 supersede all of c1's records.
    plan = (("c1", keys, True), ("ab", keys, False), ("c3", keys[:3], True), ("c4", keys[3:], True))
    marker_of = {}
    for name, ks, commit in plan:
        p.begin_transaction()
        for k in ks:
            p.produce(topic, key=k, value=f"{name}-{k.decode()}".encode(), partition=0, on_delivery=cb)
        assert p.flush(30) == 0
        p.commit_transaction(30) if commit else p.abort_transaction(30)
        marker_of[name] = max(o for o, _, v in delivered if v.startswith(f"{name}-".encode())) + 1
    assert len(delivered) == 15
    _, before, aborted = raw_batches(b.bootstrap, topic, 0, kwire.READ_COMMITTED)
    assert len(aborted) == 1
    assert [x["base_offset"] for x in before if x["attributes"] & kwire.ATTR_CONTROL] == list(marker_of.values())
    wait_segmented(b)
    time.sleep(1.1)  # rolls the segment: the transactions are cleanable
    tails = produce_keyed(b, topic, 0, [(b"tail", b"tail-0")])

    def uncommitted() -> tuple[list, list]:
        """(data records [(offset, key, value)], control batch offsets), read_uncommitted."""
        _, batches, _ = raw_batches(b.bootstrap, topic, 0, kwire.READ_UNCOMMITTED)
        data = [(r[0], r[1], r[2]) for x in batches if not x["attributes"] & kwire.ATTR_CONTROL
                for r in x["records"]]
        return data, [x["base_offset"] for x in batches if x["attributes"] & kwire.ATTR_CONTROL]

    def want_data():
        latest = {}
        for o, k, v in sorted([r for r in delivered if not r[2].startswith(b"ab-")] + tails):
            latest[k] = (o, k, v)
        return sorted(latest.values())

    wait_for("aborted and superseded records to be cleaned", lambda: uncommitted()[0] == want_data(), 30)
    _, _, aborted = raw_batches(b.bootstrap, topic, 0, kwire.READ_COMMITTED)
    assert aborted == [], f"the index still lists {aborted} after the cleaner dropped its records"

    # The emptied markers go over later passes (stamped once nothing of theirs is left,
    # removed after delete.retention.ms); new records keep the cleaner passing meanwhile.
    def markers() -> list:
        nonlocal tails
        tails = tails + produce_keyed(b, topic, 0, [(b"tail", f"tail-{len(tails)}".encode())])
        return uncommitted()[1]

    live = [marker_of["c3"], marker_of["c4"]]
    wait_for("the emptied markers to be removed", lambda: markers() == live, 60, every=1.2)
    data, control = uncommitted()
    no_tail = [r for r in want_data() if r[1] != b"tail"]
    assert control == live and data[:len(no_tail)] == no_tail and data[-1] == tails[-1], data
    # Offsets never change; kcat and a read_committed consumer read the same records (the
    # tail records, still being cleaned, aside).
    assert [r for r in kcat_read(b, topic, 0) if r[1] != b"tail"] == no_tail
    got = read_topic(b.bootstrap, topic, 1, "read_committed")[0]
    assert [(o, v.encode()) for o, v in got if not v.startswith("tail-")] == [(o, v) for o, _, v in no_tail]
    assert list_offset(b.bootstrap, topic, 0, kwire.READ_COMMITTED) == tails[-1][0] + 1


@pytest.fixture
def fast_compacting_broker(request, tmp_path):
    """A broker that compacts within a second, with its metrics on a port of its own."""
    port = free_port()
    b = Broker(tmp_path / "strata", extra_args=[*FAST, "--metrics-listen", f"127.0.0.1:{port}"])
    b.metrics_port = port
    yield from supervise(request, b)


# The index moves between the state and footers the same way on either store; the S3
# pass's compaction of aborts is test_cleaner_drops_aborted_records_then_markers.
@pytest.mark.skipif(TEST_STORE == "s3", reason="runs in the local pass only (CI time)")
def test_aborted_index_past_the_cap(fast_compacting_broker):
    """11,008 aborted transactions on one partition of a deleting topic, past the 10,000
    the metadata state could once hold per partition: compaction moves each aborted transaction
    into the footer of the segment its marker is compacted into (Kafka's `.txnindex`), so
    the state holds only the last compaction round's aborts, new transactions are still
    accepted, and read_committed returns exactly the committed records."""
    b = fast_compacting_broker
    port = b.metrics_port
    topic = "aborts"
    create_topic(b.bootstrap, topic, 1)
    producers, aborts_each, commit_every = 32, 344, 125
    held = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            held.append(int(value(scrape(port), "strata_state_aborted_txns")))
            time.sleep(0.25)

    committed: list[str] = []
    failures: list[BaseException] = []

    def run(i: int) -> None:
        try:
            p = txn_producer(b.bootstrap, f"tid-abort-{i}", **{"linger.ms": 0})
            p.init_transactions(30)
            for j in range(aborts_each + aborts_each // commit_every):
                v = f"{i}-{j}"
                p.begin_transaction()
                p.produce(topic, value=v.encode(), partition=0)
                assert p.flush(30) == 0  # sent before the abort, so the abort has a marker
                if j % (commit_every + 1) == commit_every:
                    p.commit_transaction(30)
                    committed.append(v)
                else:
                    p.abort_transaction(30)
        except BaseException as e:  # noqa: BLE001 (reported by the main thread)
            failures.append(e)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - started
    stop.set()
    sampler.join()
    assert not failures, failures
    aborts = producers * aborts_each
    assert aborts > 10_000 and len(committed) == producers * (aborts_each // commit_every)
    print(f"{aborts} aborts in {took:.1f} s; aborted transactions the state held: max {max(held)}")
    # The state never approached the cap: it held one compaction round's aborts at most.
    assert max(held) < 5_000, max(held)
    # A new transaction is accepted on the partition.
    p = txn_producer(b.bootstrap, "tid-abort-last")
    p.init_transactions(30)
    p.begin_transaction()
    p.produce(topic, value=b"last", partition=0)
    p.commit_transaction(30)
    committed.append("last")
    # Once compacted, the state holds only aborts that began in an earlier segment than
    # their marker's: at most one per producer per segment boundary.
    def settled() -> bool:
        series = scrape(port)
        kept = value(series, "strata_state_aborted_txns")
        return kept <= producers * max(value(series, "strata_state_index_entries") - 1, 0)

    wait_for("compaction to move the aborts into segment footers", settled, 30)
    print(f"after compaction the state holds {int(value(scrape(port), 'strata_state_aborted_txns'))}")
    # read_committed: exactly the committed records; read_uncommitted: every record.
    got = read_topic(b.bootstrap, topic, 1, "read_committed")
    assert sorted(values_of(got)) == sorted(committed)
    assert len(read_topic(b.bootstrap, topic, 1, "read_uncommitted")[0]) == aborts + len(committed)
    # Raw read_committed fetches over the whole partition list every aborted transaction
    # (from the segment footers, and the state), each once, at its first offset.
    _, batches, aborted = raw_batches(b.bootstrap, topic, 0, kwire.READ_COMMITTED)
    firsts = {}
    for x in batches:
        if not x["attributes"] & kwire.ATTR_CONTROL:
            firsts.setdefault(x["producer_id"], []).append(x["base_offset"])
    assert len(aborted) == aborts
    assert all(first in firsts.get(pid, []) for pid, first in aborted)
    markers = [x["control_type"] for x in batches if x["attributes"] & kwire.ATTR_CONTROL]
    assert (markers.count(0), markers.count(1)) == (aborts, len(committed))

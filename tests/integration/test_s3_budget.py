"""Issue 23: idempotent producers on S3-like latency, within the PUT budget.

One broker on moto behind the S3 proxy (`harness.s3proxy`), which adds 30 ms to every PUT
(S3 Standard's order) and counts every request. Idempotent confluent-kafka producers
trickle one small request at a time (linger.ms=0, acks=all) over many partitions, the
shape that cost 50-60 PUTs a second before the budget. Checked:

* the broker's PUTs, counted by the proxy over a steady window, stay within
  `--max-puts-per-second` (its token buckets allow a burst of a few seconds);
* the broker is SIGKILLed mid-load and restarted: every acknowledged record is read back
  once, at its offset, in the order each producer sent it (the idempotent producers'
  retries are deduplicated), and nothing was refused.

Latency and the monthly bill are measured by `scripts/bench.sh --s3-trickle`, not here.
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections import defaultdict
from contextlib import contextmanager

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import TEST_STORE, Broker
from harness.s3proxy import S3Proxy

pytestmark = pytest.mark.skipif(TEST_STORE != "local", reason="brings its own S3 server; runs in the local pass")

PARTITIONS = 24
BUDGET = 10
PUT_DELAY_MS = 30


def _trickle(bootstrap: str, topic: str, stop: threading.Event, acked: dict, errors: list, tag: str) -> None:
    """One record per partition every 0.5 s, each request alone; acknowledged records
    by partition, in delivery order."""
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                  "linger.ms": 0, "message.timeout.ms": 120_000})

    def on_dr(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            acked[msg.partition()].append((msg.offset(), msg.value().decode()))

    seq = 0
    while not stop.is_set():
        for part in range(PARTITIONS):
            p.produce(topic, value=f"{tag}-{part}-{seq}", partition=part, on_delivery=on_dr)
        seq += 1
        p.poll(0)
        stop.wait(0.5)
    assert p.flush(120) == 0


def _read_all(bootstrap: str, topic: str) -> dict[int, list[tuple[int, str]]]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{time.monotonic_ns()}",
                  "enable.auto.commit": False, "enable.partition.eof": True})
    out: dict[int, list] = {p: [] for p in range(PARTITIONS)}
    try:
        c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        eof: set[int] = set()
        deadline = time.monotonic() + 60
        while len(eof) < PARTITIONS:
            assert time.monotonic() < deadline, f"EOF on {sorted(eof)} only"
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                eof.add(m.partition())
                continue
            eof.discard(m.partition())
            out[m.partition()].append((m.offset(), m.value().decode()))
    finally:
        c.close()
    return out


@contextmanager
def _trickling(tmp_path, topic: str, extra_args: list[str]):
    """A broker on moto behind the PUT-delaying proxy, and two producers trickling into
    `topic` until `stop` is set; yields (broker, proxy, stop, acked, errors, producers)."""
    broker = Broker(tmp_path / "b", store="s3", extra_args=extra_args)
    proxy = S3Proxy(broker.s3.endpoint, tmp_path / "proxy.log", put_delay_ms=PUT_DELAY_MS)
    broker.s3_endpoint = proxy.endpoint
    stop = threading.Event()
    try:
        broker.start()
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        for f in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
            f.result(30)
        acked: dict[int, list] = defaultdict(list)
        errors: list[str] = []
        producers = [threading.Thread(target=_trickle, args=(broker.bootstrap, topic, stop, acked, errors, t))
                     for t in ("a", "b")]
        for t in producers:
            t.start()
        yield broker, proxy, stop, acked, errors, producers
    finally:
        stop.set()
        broker.stop(timeout=30)
        proxy.stop()


@pytest.mark.timeout(240)
def test_idempotent_trickle_on_slow_puts_stays_in_budget_and_survives_sigkill(tmp_path):
    args = ["--max-puts-per-second", str(BUDGET)]
    with _trickling(tmp_path, "trickle", args) as (broker, proxy, stop, acked, errors, producers):
        time.sleep(8)  # the buckets' burst is spent
        before = proxy.stats()
        t0 = time.monotonic()
        time.sleep(15)
        after = proxy.stats()
        puts_per_s = (after["put"] - before["put"]) / (time.monotonic() - t0)
        print(f"PUTs per second under the trickle: {puts_per_s:.1f} (budget {BUDGET})")
        # Each foreground PUT takes a token or runs up debt the next one pays: the rate
        # over a window holds to the budget, with a little room for the window's edges.
        assert puts_per_s <= BUDGET * 1.25, puts_per_s
        assert sum(len(v) for v in acked.values()) > 0, "nothing acknowledged"

        broker.stop(sig=signal.SIGKILL)
        broker.start()
        time.sleep(6)
        stop.set()
        for t in producers:
            t.join(timeout=150)
            assert not t.is_alive(), "a producer did not finish"
        assert not errors, errors[:5]

        stored = _read_all(broker.bootstrap, "trickle")
        for part in range(PARTITIONS):
            offsets = [o for o, _ in stored[part]]
            assert offsets == sorted(set(offsets)), f"partition {part}: offsets repeat or go back"
            values = [v for _, v in stored[part]]
            assert len(values) == len(set(values)), f"partition {part}: a record is stored twice"
            by_offset = dict(stored[part])
            for offset, value in acked[part]:
                assert by_offset.get(offset) == value, f"partition {part}: acked {value}@{offset} not stored"
            # Each producer's records are in the order it sent them.
            for tag in ("a", "b"):
                seqs = [int(v.rsplit("-", 1)[1]) for v in values if v.startswith(f"{tag}-")]
                assert seqs == sorted(seqs), f"partition {part}: {tag}'s records out of order"


@pytest.mark.timeout(240)
def test_metadata_log_rides_in_data_objects_and_a_wiped_broker_recovers_from_them(tmp_path):
    """At a trickle on slow PUTs the Raft leader ships its committed metadata log entries
    inside the next data object rather than in a PUT of their own (`metadata/ride.rs`),
    here under the default PUT budget of an s3:// store. With no snapshot after start-up,
    a SIGKILL and a wiped data directory leave recovery only the snapshot, the chunks and
    those data objects, and it brings back every acknowledged record at its offset."""
    args = ["--store-snapshot-interval-ms", "3600000"]
    with _trickling(tmp_path, "rides", args) as (broker, _proxy, stop, acked, errors, producers):
        time.sleep(10)
        stop.set()
        for t in producers:
            t.join(timeout=150)
            assert not t.is_alive(), "a producer did not finish"
        assert not errors, errors[:5]
        assert sum(len(v) for v in acked.values()) > 0, "nothing acknowledged"

        segments = broker.s3.list_keys(broker.bucket, "strata/segments/")
        rides = [k for k in segments if "-log-" in k]
        alone = broker.s3.list_keys(broker.bucket, "strata/_strata/metadata/log/")
        print(f"metadata log chunks: {len(rides)} riding in data objects, {len(alone)} alone; "
              f"{len(segments)} data objects")
        # Measured 83 riding against 17 alone here (67-86 against 98-126 with no budget,
        # where only a round already forming carries them); the bill's figures are the
        # benchmark's (`scripts/bench.sh --s3-trickle`).
        assert len(rides) * 3 > len(alone), (len(rides), len(alone))

        broker.stop(sig=signal.SIGKILL)
        shutil.rmtree(broker.data_dir)
        broker.data_dir.mkdir()
        broker.start()
        assert "metadata recovered from the object store" in broker.log_text()
        stored = _read_all(broker.bootstrap, "rides")
        for part in range(PARTITIONS):
            assert [o for o, _ in stored[part]] == list(range(len(stored[part]))), f"partition {part}: a gap"
            by_offset = dict(stored[part])
            for offset, value in acked[part]:
                assert by_offset.get(offset) == value, f"partition {part}: acked {value}@{offset} not recovered"
            assert len(stored[part]) == len(acked[part]), f"partition {part}: unacknowledged records came back"

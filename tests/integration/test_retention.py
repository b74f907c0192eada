"""Time and size retention (issue 11): `retention.ms` and `retention.bytes` drop whole
segments, move the log start (ListOffsets earliest, Fetch below it), release the objects
for deletion from the store, and leave `-1` topics alone."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource,
                                   ConfigSource, NewTopic)

from conftest import Broker, supervise
from test_compaction import store_objects


@pytest.fixture
def rbroker(request, tmp_path):
    b = Broker(tmp_path / "strata", extra_args=[
        "--retention-check-interval-ms", "300", "--gc-grace-ms", "1000",
        "--compaction-age-ms", "600000"])
    yield from supervise(request, b)


def produce(b: Broker, topic: str, n: int, tag: str, size: int = 1000, every: int = 10) -> dict:
    """n records in flushes of `every`; {offset: value}."""
    acked = {}
    p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all", "linger.ms": 0})

    def cb(err, msg):
        assert err is None, err
        acked[msg.offset()] = msg.value()

    for i in range(n):
        p.produce(topic, value=f"{tag}-{i}-".encode() + b"x" * size, on_delivery=cb)
        if i % every == every - 1:
            assert p.flush(30) == 0
    assert p.flush(30) == 0 and len(acked) == n
    return acked


def watermarks(b: Broker, topic: str) -> tuple[int, int]:
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "wm"})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)
    finally:
        c.close()


def wait_for(what: str, check, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what} within {timeout}s"
        time.sleep(0.2)


def test_time_and_size_retention(rbroker):
    b = rbroker
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    topics = [NewTopic("ret-time", 1, 1, config={"retention.ms": "4000"}),
              NewTopic("ret-size", 1, 1, config={"retention.bytes": "20000"}),
              NewTopic("ret-forever", 1, 1, config={"retention.ms": "-1"})]
    for f in admin.create_topics(topics).values():
        f.result(30)
    before = set(store_objects(b, "segments/"))
    old = produce(b, "ret-time", 100, "old")
    time_objects = set(store_objects(b, "segments/")) - before
    assert time_objects
    forever = produce(b, "ret-forever", 50, "forever")
    sized = produce(b, "ret-size", 100, "sized")

    # A consumer reads part of ret-time, then pauses.
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "ret-reader",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.assign([TopicPartition("ret-time", 0, 0)])
    seen = []
    deadline = time.monotonic() + 30
    while len(seen) < 30:
        assert time.monotonic() < deadline
        m = c.poll(1.0)
        if m is not None and not m.error():
            seen.append(m.offset())
    assert seen == list(range(30))
    # It stops there, its position committed (what it prefetched is not what it read).
    c.commit(offsets=[TopicPartition("ret-time", 0, 30)], asynchronous=False)
    c.close()

    # ret-time: everything is older than 4 s after a while; the log start moves to the end.
    # (Entries expire one by one as they pass 4 s: wait for the last of them.)
    lo, hi = wait_for("ret-time's log start to reach its end", lambda: (w := watermarks(b, "ret-time"))[0] == 100 and w)
    assert (lo, hi) == (100, 100), (lo, hi)
    # Its objects (written before the other topics') go from the store.
    wait_for("ret-time's objects to be deleted",
             lambda: not (time_objects & set(store_objects(b, "segments/"))))

    # The consumer continues from the new start: its committed offset 30 is below the
    # log start, so it resets (earliest) and gets only new records.
    new = produce(b, "ret-time", 5, "new", every=5)
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "ret-reader",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.assign([TopicPartition("ret-time", 0)])
    got = []
    deadline = time.monotonic() + 30
    while len(got) < 5:
        assert time.monotonic() < deadline, got
        m = c.poll(1.0)
        if m is not None and not m.error():
            got.append((m.offset(), m.value()))
    c.close()
    assert got == sorted(new.items())

    # ret-size: the oldest segments went; at least retention.bytes is kept.
    lo, hi = watermarks(b, "ret-size")
    assert hi == 100 and 0 < lo <= 100 - 20, (lo, hi)
    # ret-forever keeps everything.
    assert watermarks(b, "ret-forever") == (0, 50)
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "ret-check",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.assign([TopicPartition("ret-forever", 0, 0)])
    back = {}
    deadline = time.monotonic() + 30
    while len(back) < 50:
        assert time.monotonic() < deadline
        m = c.poll(1.0)
        if m is not None and not m.error():
            back[m.offset()] = m.value()
    c.close()
    assert back == forever
    assert sized and old
    assert "retention pass: log start moved" in b.log_text()



@pytest.fixture
def sbroker(request, tmp_path):
    """A broker whose broker-wide retention.ms (3 s) comes from its environment."""
    b = Broker(tmp_path / "strata", extra_args=[
        "--retention-check-interval-ms", "200", "--compaction-age-ms", "600000"],
        extra_env={"STRATA_RETENTION_MS": "3000"})
    yield from supervise(request, b)


def test_static_broker_default_retention(sbroker):
    """The broker-wide retention.ms applies to a topic that sets none and shows in
    DescribeConfigs as STATIC_BROKER_CONFIG (on the topic, and as the broker's
    log.retention.ms); a topic's own value and a dynamic broker config win over it."""
    b = sbroker
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    topics = [NewTopic("static-ret", 1, 1),
              NewTopic("static-own", 1, 1, config={"retention.ms": "-1"})]
    for f in admin.create_topics(topics).values():
        f.result(30)

    def describe(rtype, name) -> dict:
        res = ConfigResource(rtype, name)
        entries = admin.describe_configs([res])[res].result(30)
        return {k: (e.value, e.source) for k, e in entries.items()}

    topic = describe(ConfigResource.Type.TOPIC, "static-ret")
    assert topic["retention.ms"] == ("3000", ConfigSource.STATIC_BROKER_CONFIG.value)
    assert topic["retention.bytes"] == ("-1", ConfigSource.DEFAULT_CONFIG.value)
    own = describe(ConfigResource.Type.TOPIC, "static-own")
    assert own["retention.ms"] == ("-1", ConfigSource.DYNAMIC_TOPIC_CONFIG.value)
    broker = describe(ConfigResource.Type.BROKER, "1")
    assert broker["log.retention.ms"] == ("3000", ConfigSource.STATIC_BROKER_CONFIG.value)
    assert broker["log.retention.bytes"] == ("-1", ConfigSource.DEFAULT_CONFIG.value)

    produce(b, "static-ret", 20, "old")
    produce(b, "static-own", 20, "own")
    # After 3 s every record of static-ret is past the limit: the log start moves to the
    # end. static-own keeps everything.
    lo, hi = wait_for("static-ret's log start to move",
                      lambda: (w := watermarks(b, "static-ret"))[0] > 0 and w)
    assert (lo, hi) == (20, 20), (lo, hi)
    assert watermarks(b, "static-own") == (0, 20)

    # A dynamic broker config wins over the static one (librdkafka refuses the
    # cluster-wide "" resource; test_admin_wire.py covers that one on the wire).
    res = ConfigResource(ConfigResource.Type.BROKER, "1", incremental_configs=[
        ConfigEntry("log.retention.ms", "-1", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([res])[res].result(30)
    topic = describe(ConfigResource.Type.TOPIC, "static-ret")
    assert topic["retention.ms"] == ("-1", ConfigSource.DYNAMIC_BROKER_CONFIG.value)

"""confluent-kafka (librdkafka): admin, 10k keyed produce, group consume with manual
commit, broker restart (SIGTERM / SIGKILL), resume exactly at committed offsets."""

import signal
import time
from collections import defaultdict

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

N_KEYS = 100
PER_KEY = 100
TOTAL = N_KEYS * PER_KEY  # 10,000
PARTITIONS = 3


def create_topic(bootstrap, topic, partitions):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)],
                                  operation_timeout=30)
    futures[topic].result(timeout=60)  # raises on error
    md = admin.list_topics(topic=topic, timeout=30)
    assert topic in md.topics and md.topics[topic].error is None, md.topics.get(topic)
    assert len(md.topics[topic].partitions) == partitions
    return admin


def produce_all(bootstrap, topic):
    """Produce keys key-0..key-99, 100 each, value 'key-K:SEQ'. Returns {(key, seq): (partition, offset)}."""
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    delivered = {}
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append((msg.key(), err))
        else:
            k = msg.key().decode()
            seq = int(msg.value().decode().split(":")[1])
            delivered[(k, seq)] = (msg.partition(), msg.offset())

    for seq in range(PER_KEY):
        for k in range(N_KEYS):
            key = f"key-{k}"
            while True:
                try:
                    p.produce(topic, key=key, value=f"{key}:{seq}", on_delivery=on_delivery)
                    break
                except BufferError:
                    p.poll(0.1)
        p.poll(0)
    remaining = p.flush(60)
    assert remaining == 0, f"{remaining} messages not delivered after flush"
    assert not errors, f"delivery errors: {errors[:5]} (+{len(errors)})"
    assert len(delivered) == TOTAL
    # offsets are unique per partition and contiguous from 0
    per_part = defaultdict(list)
    for (_k, _s), (part, off) in delivered.items():
        per_part[part].append(off)
    for part, offs in per_part.items():
        assert sorted(offs) == list(range(len(offs))), f"partition {part} offsets not contiguous"
    return delivered


def make_consumer(bootstrap, group):
    return Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
    })


def consume(consumer, want, timeout=120.0):
    """Poll until `want` messages are collected. Returns list of (partition, offset, key, seq)."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < want:
        assert time.monotonic() < deadline, f"timed out: got {len(out)}/{want} messages"
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        if msg.error():
            assert msg.error().code() == KafkaError._PARTITION_EOF, f"consumer error: {msg.error()}"
            continue
        k = msg.key().decode()
        vk, seq = msg.value().decode().split(":")
        assert vk == k, f"value {msg.value()!r} does not belong to key {k}"
        out.append((msg.partition(), msg.offset(), k, int(seq)))
    return out


def check_order(msgs, last_seq=None):
    """Per key, sequence numbers strictly increase (continuing from last_seq)."""
    last = dict(last_seq or {})
    for part, off, k, seq in msgs:
        assert seq > last.get(k, -1), f"key {k}: seq {seq} after {last.get(k)} (partition {part} offset {off})"
        last[k] = seq
    return last


def assert_no_extra(consumer, seconds=3.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            pytest.fail(f"unexpected extra message p{msg.partition()}@{msg.offset()} key={msg.key()}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_group_consume_commit_restart_resume(broker, sig):
    topic = f"orders-{sig.name.lower()}"
    group = f"billing-{sig.name.lower()}"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    delivered = produce_all(broker.bootstrap, topic)
    assert {p for p, _ in delivered.values()} == set(range(PARTITIONS)), "keys did not spread over all partitions"

    # ---- phase 1: consume about half, commit synchronously, close ----
    c1 = make_consumer(broker.bootstrap, group)
    c1.subscribe([topic])
    half = consume(c1, TOTAL // 2)
    last_seq = check_order(half)
    next_off = {p: 0 for p in range(PARTITIONS)}
    for part, off, k, seq in half:
        assert delivered[(k, seq)] == (part, off), f"{k}:{seq} consumed at {part}@{off}, produced at {delivered[(k, seq)]}"
        assert off >= next_off[part], f"partition {part} went backwards: {off} < {next_off[part]}"
        next_off[part] = off + 1
    to_commit = [TopicPartition(topic, p, o) for p, o in sorted(next_off.items())]
    committed = c1.commit(offsets=to_commit, asynchronous=False)
    assert all(tp.error is None for tp in committed), committed
    got = c1.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=30)
    assert {tp.partition: tp.offset for tp in got} == next_off
    c1.close()

    # ---- restart the broker ----
    rc = broker.stop(sig)
    if sig == signal.SIGTERM:
        assert rc == 0, f"SIGTERM should be a graceful stop with exit code 0, got {rc}"
    broker.start()

    # ---- phase 2: a new member of the same group resumes at the committed offsets ----
    c2 = make_consumer(broker.bootstrap, group)
    got = c2.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=30)
    assert {tp.partition: tp.offset for tp in got} == next_off, "committed offsets lost across restart"
    c2.subscribe([topic])
    rest = consume(c2, TOTAL - len(half))
    check_order(rest, last_seq)
    first_seen = {}
    for part, off, k, seq in rest:
        first_seen.setdefault(part, off)
        assert delivered[(k, seq)] == (part, off), f"{k}:{seq} consumed at {part}@{off}, produced at {delivered[(k, seq)]}"
    for part, off in first_seen.items():
        assert off == next_off[part], f"partition {part}: resumed at {off}, committed {next_off[part]}"
    assert_no_extra(c2)
    c2.close()

    # ---- totals: every record exactly once across both phases ----
    seen = [(k, s) for _, _, k, s in half + rest]
    assert len(seen) == TOTAL
    assert set(seen) == set(delivered), "consumed set differs from produced set"

"""Admin-side APIs with confluent-kafka: DeleteTopics (durable across restart),
ListGroups / DescribeGroups, ListOffsets by timestamp."""

import time

from confluent_kafka import Consumer, ConsumerGroupState, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def admin(b):
    return AdminClient({"bootstrap.servers": b.bootstrap})


def create(b, topics, config=None):
    a = admin(b)  # keep the client alive until the futures resolve
    fs = a.create_topics([NewTopic(t, num_partitions=n, replication_factor=1, config=config or {})
                          for t, n in topics.items()])
    for f in fs.values():
        f.result(timeout=60)


def produce(b, topic, n, partition=0, ts0=None):
    p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all"})
    offs = []

    def cb(err, msg):
        assert err is None, err
        offs.append(msg.offset())

    for i in range(n):
        kw = {"timestamp": ts0 + 1000 * i} if ts0 is not None else {}
        p.produce(topic, key=f"k{i}", value=f"{topic}-{i}", partition=partition, on_delivery=cb, **kw)
    assert p.flush(30) == 0
    return sorted(offs)


def topics(b):
    return admin(b).list_topics(timeout=30).topics


def watermarks(b, topic, partition=0):
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "wm-probe"})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
    finally:
        c.close()


def test_delete_topic_is_durable_and_recreate_starts_empty(broker):
    create(broker, {"to-delete": 2, "to-keep": 1})
    produce(broker, "to-delete", 5)
    assert produce(broker, "to-keep", 7) == list(range(7))

    a = admin(broker)
    fs = a.delete_topics(["to-delete"], operation_timeout=30)
    fs["to-delete"].result(timeout=60)
    deadline = time.monotonic() + 15
    while "to-delete" in topics(broker):
        assert time.monotonic() < deadline, "deleted topic still listed"
        time.sleep(0.2)

    broker.restart()
    t = topics(broker)
    assert "to-delete" not in t, "deleted topic came back after restart"
    assert "to-keep" in t
    assert watermarks(broker, "to-keep") == (0, 7)

    # re-creating the name gives a fresh, empty topic (old records are not resurrected)
    create(broker, {"to-delete": 1})
    assert len(topics(broker)["to-delete"].partitions) == 1
    assert watermarks(broker, "to-delete") == (0, 0)
    assert produce(broker, "to-delete", 2) == [0, 1]


def test_list_and_describe_groups(broker):
    topic, group = "grp-topic", "grp-admin"
    create(broker, {topic: 2})
    produce(broker, topic, 4, partition=0)
    produce(broker, topic, 4, partition=1)

    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "client.id": "grp-client",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    got = 0
    deadline = time.monotonic() + 60
    while got < 8:
        assert time.monotonic() < deadline, f"consumed {got}/8"
        m = c.poll(1.0)
        if m is not None and not m.error():
            got += 1
    c.commit(asynchronous=False)

    a = admin(broker)
    listed = a.list_consumer_groups(request_timeout=30).result(timeout=60)
    assert group in {g.group_id for g in listed.valid}, listed.valid
    desc = a.describe_consumer_groups([group], request_timeout=30)[group].result(timeout=60)
    assert desc.group_id == group
    assert desc.state == ConsumerGroupState.STABLE, desc.state
    assert len(desc.members) == 1, desc.members
    m = desc.members[0]
    assert m.client_id == "grp-client"
    assert sorted((tp.topic, tp.partition) for tp in m.assignment.topic_partitions) == [(topic, 0), (topic, 1)]
    assert desc.coordinator.id == 1

    c.close()  # LeaveGroup
    deadline = time.monotonic() + 30
    while True:
        desc = a.describe_consumer_groups([group], request_timeout=30)[group].result(timeout=60)
        if desc.state == ConsumerGroupState.EMPTY and not desc.members:
            break
        assert time.monotonic() < deadline, f"group still {desc.state} with {len(desc.members)} members after close"
        time.sleep(0.5)

    # committed offsets are visible through the admin API too
    offs = a.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group)])[group].result(timeout=60)
    assert sorted((tp.partition, tp.offset) for tp in offs.topic_partitions if tp.topic == topic) == [(0, 4), (1, 4)]


def test_list_offsets_by_timestamp(broker):
    topic = "ts-topic"
    # 2023 timestamps: older than the default retention, so keep them for the test.
    create(broker, {topic: 1}, config={"retention.ms": "-1"})
    ts0 = 1_700_000_000_000
    assert produce(broker, topic, 10, ts0=ts0) == list(range(10))
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "ts-probe"})
    try:
        q = [TopicPartition(topic, 0, ts0 + 3500)]  # first record with timestamp >= t is offset 4
        r = c.offsets_for_times(q, timeout=30)
        assert r[0].error is None and r[0].offset == 4, r
        r = c.offsets_for_times([TopicPartition(topic, 0, ts0)], timeout=30)
        assert r[0].offset == 0, r
        r = c.offsets_for_times([TopicPartition(topic, 0, ts0 + 60_000)], timeout=30)
        assert r[0].offset in (-1, 10), r  # past the last timestamp: no offset (Kafka: -1 / end)
    finally:
        c.close()

"""The consumer group protocol of KIP-848 (`group.protocol=consumer`) with
confluent-kafka (librdkafka 2.16): the broker computes the assignment, members
reconcile through ConsumerGroupHeartbeat, commits carry the member epoch
(OffsetCommit v9), and the assignment's topic ids resolve through Metadata."""

import time

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

try:  # confluent-kafka 2.6+
    from confluent_kafka import ConsumerGroupType
except ImportError:  # pragma: no cover - the pinned version has it
    ConsumerGroupType = None


def create_topic(bootstrap, topic, partitions):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    fs = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)],
                             operation_timeout=30)
    fs[topic].result(timeout=60)
    return admin


def produce(bootstrap, topic, count, partitions, prefix="v"):
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    errors = []

    def done(err, _msg):
        if err is not None:
            errors.append(err)

    for i in range(count):
        p.produce(topic, key=f"k{i}", value=f"{prefix}-{i}", partition=i % partitions,
                  on_delivery=done)
        p.poll(0)
    assert p.flush(60) == 0
    assert not errors, errors[:3]


def consumer(bootstrap, group, **extra):
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "group.protocol": "consumer",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }
    conf.update(extra)
    return Consumer(conf)


def owned(c):
    return {(tp.topic, tp.partition) for tp in c.assignment()}


def test_consume_and_commit_exactly_once(broker, unique_topic):
    """Two consumers one after the other in one group read every record once: the
    first commits synchronously (OffsetCommit v9 with its member epoch), the second
    starts where it stopped. While the first is in the group, the admin client
    describes it as a consumer-protocol group, Stable, owning all three partitions."""
    topic, group = unique_topic, f"{unique_topic}-g"
    admin = create_topic(broker.bootstrap, topic, 3)
    produce(broker.bootstrap, topic, 300, 3)

    seen = []
    c1 = consumer(broker.bootstrap, group)
    c1.subscribe([topic])
    deadline = time.monotonic() + 60
    while len(seen) < 150:
        assert time.monotonic() < deadline, f"only {len(seen)} records in 60 s"
        m = c1.poll(0.5)
        if m is None:
            continue
        assert m.error() is None, m.error()
        seen.append(m.value().decode())
        if len(seen) % 50 == 0:
            c1.commit(asynchronous=False)
    assert owned(c1) == {(topic, p) for p in range(3)}

    desc = admin.describe_consumer_groups([group], request_timeout=30)[group].result(timeout=60)
    assert desc.group_id == group
    assert str(desc.state).endswith("STABLE"), desc.state
    if ConsumerGroupType is not None:
        assert desc.type == ConsumerGroupType.CONSUMER, desc.type
    assert len(desc.members) == 1, desc.members
    assigned = {(tp.topic, tp.partition) for tp in desc.members[0].assignment.topic_partitions}
    assert assigned == {(topic, p) for p in range(3)}
    listed = admin.list_consumer_groups(request_timeout=30).result(timeout=60)
    assert group in {g.group_id for g in listed.valid}, listed.valid
    c1.close()

    c2 = consumer(broker.bootstrap, group)
    c2.subscribe([topic])
    deadline = time.monotonic() + 60
    while len(seen) < 300:
        assert time.monotonic() < deadline, f"only {len(seen)} records in 60 s"
        m = c2.poll(0.5)
        if m is None:
            continue
        assert m.error() is None, m.error()
        seen.append(m.value().decode())
    # Nothing more arrives: every record was read once.
    end = time.monotonic() + 3
    while time.monotonic() < end:
        m = c2.poll(0.5)
        assert m is None or m.error() is not None, f"record read twice: {m.value()}"
    c2.close()
    assert sorted(seen) == sorted(f"v-{i}" for i in range(300))


def test_members_join_and_leave_owning_each_partition_once(broker, unique_topic):
    """A second member takes half of six partitions only after the first gave them up;
    at every step no partition is owned by both; when it leaves, the first takes all
    six back."""
    topic, group = unique_topic, f"{unique_topic}-g"
    create_topic(broker.bootstrap, topic, 6)
    every = {(topic, p) for p in range(6)}
    a = consumer(broker.bootstrap, group)
    a.subscribe([topic])
    deadline = time.monotonic() + 60
    while owned(a) != every:
        assert time.monotonic() < deadline, f"first member owns {owned(a)}"
        a.poll(0.2)

    b = consumer(broker.bootstrap, group)
    b.subscribe([topic])
    deadline = time.monotonic() + 60
    steps = 0
    while not (len(owned(a)) == 3 and len(owned(b)) == 3):
        assert time.monotonic() < deadline, f"no split: {owned(a)} / {owned(b)}"
        a.poll(0.1)
        b.poll(0.1)
        oa, ob = owned(a), owned(b)
        assert not oa & ob, f"owned twice: {oa & ob}"
        steps += 1
    assert owned(a) | owned(b) == every

    b.close()
    deadline = time.monotonic() + 60
    while owned(a) != every:
        assert time.monotonic() < deadline, f"after the leave the first member owns {owned(a)}"
        a.poll(0.2)
    a.close()


def test_pattern_subscription_takes_a_topic_created_later(broker, unique_topic):
    """A `^prefix.*` subscription is evaluated on the broker (v1's SubscribedTopicRegex)
    and re-evaluated as topics appear: a record in a topic created after the member
    joined is delivered."""
    prefix = f"{unique_topic}-rx"
    create_topic(broker.bootstrap, f"{prefix}-a", 2)
    produce(broker.bootstrap, f"{prefix}-a", 4, 2, prefix="a")
    c = consumer(broker.bootstrap, f"{unique_topic}-g")
    c.subscribe([f"^{prefix}-.*"])
    got = set()
    deadline = time.monotonic() + 60
    while len(got) < 4:
        assert time.monotonic() < deadline, f"got {got}"
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got.add(m.value().decode())
    create_topic(broker.bootstrap, f"{prefix}-b", 1)
    produce(broker.bootstrap, f"{prefix}-b", 3, 1, prefix="b")
    deadline = time.monotonic() + 60
    while len(got) < 7:
        assert time.monotonic() < deadline, f"the later topic's records never came: {got}"
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got.add(m.value().decode())
    assert got == {f"a-{i}" for i in range(4)} | {f"b-{i}" for i in range(3)}
    assert (f"{prefix}-b", 0) in owned(c)
    c.close()


def test_a_classic_group_refuses_a_consumer_protocol_member(broker, unique_topic):
    """A group id in use by classic members is not a consumer group: the new-protocol
    member gets GROUP_ID_NOT_FOUND (Kafka's answer when it cannot convert the group)
    and the classic member keeps its partitions."""
    topic, group = unique_topic, f"{unique_topic}-g"
    create_topic(broker.bootstrap, topic, 2)
    classic = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                        "auto.offset.reset": "earliest"})
    classic.subscribe([topic])
    deadline = time.monotonic() + 60
    while len(classic.assignment()) != 2:
        assert time.monotonic() < deadline, "classic member never assigned"
        classic.poll(0.2)
    errors = []
    new = consumer(broker.bootstrap, group, error_cb=errors.append)
    new.subscribe([topic])
    deadline = time.monotonic() + 8
    while not errors and time.monotonic() < deadline:
        new.poll(0.2)
        classic.poll(0.1)
    assert not new.assignment(), new.assignment()
    assert len(classic.assignment()) == 2
    new.close()
    classic.close()

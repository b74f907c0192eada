"""Admin APIs of issue 6 from confluent-kafka's AdminClient (plus raw wire for the two
APIs it doesn't expose: OffsetDelete and DescribeProducers)."""

import struct
import time
import uuid

import pytest
from confluent_kafka import (
    Consumer,
    ConsumerGroupState,
    KafkaException,
    Producer,
    TopicPartition,
    OFFSET_BEGINNING,
)
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

import kwire

pytestmark = pytest.mark.timeout(120)


def admin(broker) -> AdminClient:
    return AdminClient({"bootstrap.servers": broker.bootstrap})


def wait(futures: dict, timeout: float = 30):
    return {k: f.result(timeout=timeout) for k, f in futures.items()}


def create(broker, topic: str, partitions: int = 1, config: dict | None = None):
    a = admin(broker)  # kept alive until the futures complete
    wait(a.create_topics([NewTopic(topic, partitions, config=config or {})]))


def produce(broker, topic: str, n: int, partition: int = 0, **extra):
    p = Producer({"bootstrap.servers": broker.bootstrap, **extra})
    for i in range(n):
        p.produce(topic, value=str(i).encode(), partition=partition)
    assert p.flush(30) == 0


def topic_configs(a: AdminClient, topic: str) -> dict:
    res = ConfigResource(ResourceType.TOPIC, topic)
    entries = wait(a.describe_configs([res]))[res]
    return {k: v.value for k, v in entries.items()}


def test_create_partitions(broker, unique_topic):
    a = admin(broker)
    create(broker, unique_topic, 2)
    wait(a.create_partitions([NewPartitions(unique_topic, 5)]))
    md = a.list_topics(unique_topic, timeout=10)
    assert len(md.topics[unique_topic].partitions) == 5
    # Shrinking (or staying) is INVALID_PARTITIONS; an unknown topic is UNKNOWN_TOPIC_OR_PART.
    with pytest.raises(KafkaException) as e:
        wait(a.create_partitions([NewPartitions(unique_topic, 3)]))
    assert "INVALID_PARTITIONS" in str(e.value)
    with pytest.raises(KafkaException) as e:
        wait(a.create_partitions([NewPartitions("no-such-topic-" + uuid.uuid4().hex, 3)]))
    assert "UNKNOWN_TOPIC" in str(e.value)
    # validate_only changes nothing.
    wait(a.create_partitions([NewPartitions(unique_topic, 9)], validate_only=True))
    assert len(a.list_topics(unique_topic, timeout=10).topics[unique_topic].partitions) == 5
    # The new partitions take writes.
    produce(broker, unique_topic, 3, partition=4)


@pytest.mark.filterwarnings("ignore:alter_configs has been deprecated:DeprecationWarning")
def test_alter_configs_and_incremental(broker, unique_topic):
    a = admin(broker)
    create(broker, unique_topic, 1, {"retention.ms": "1000"})
    res = ConfigResource(ResourceType.TOPIC, unique_topic)

    # Incremental: SET and DELETE on top of what is set.
    res.add_incremental_config(ConfigEntry("retention.bytes", "12345",
                                           incremental_operation=AlterConfigOpType.SET))
    res.add_incremental_config(ConfigEntry("retention.ms", None,
                                           incremental_operation=AlterConfigOpType.DELETE))
    wait(a.incremental_alter_configs([res]))
    configs = topic_configs(a, unique_topic)
    assert configs["retention.bytes"] == "12345"
    assert configs["retention.ms"] == "604800000"  # back to the default

    # APPEND on a list config.
    res = ConfigResource(ResourceType.TOPIC, unique_topic)
    res.add_incremental_config(ConfigEntry("cleanup.policy", "compact",
                                           incremental_operation=AlterConfigOpType.APPEND))
    wait(a.incremental_alter_configs([res]))
    assert topic_configs(a, unique_topic)["cleanup.policy"] == "delete,compact"

    # Legacy AlterConfigs replaces the whole set.
    res = ConfigResource(ResourceType.TOPIC, unique_topic, set_config={"max.message.bytes": "2000000"})
    wait(a.alter_configs([res]))
    configs = topic_configs(a, unique_topic)
    assert configs["max.message.bytes"] == "2000000"
    assert configs["retention.bytes"] == "-1"

    # Validation: unknown keys and non-numeric values are INVALID_CONFIG.
    for key, value in [("no.such.config", "1"), ("retention.ms", "soon"),
                       ("message.timestamp.type", "Whenever")]:
        res = ConfigResource(ResourceType.TOPIC, unique_topic)
        res.add_incremental_config(ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET))
        with pytest.raises(KafkaException) as e:
            wait(a.incremental_alter_configs([res]))
        assert "INVALID_CONFIG" in str(e.value), (key, value, e.value)
    # An unknown topic.
    res = ConfigResource(ResourceType.TOPIC, "nope-" + uuid.uuid4().hex, set_config={"retention.ms": "1"})
    with pytest.raises(KafkaException) as e:
        wait(a.alter_configs([res]))
    assert "UNKNOWN_TOPIC" in str(e.value)
    # CreateTopics validates too.
    with pytest.raises(KafkaException) as e:
        create(broker, unique_topic + "-bad", 1, {"retention.ms": "x"})
    assert "INVALID_CONFIG" in str(e.value)


def test_broker_configs_kafka_accepts_are_stored(broker):
    """librdkafka's 0081_admin (do_test_AlterConfigs) alters a BROKER resource with
    sasl.kerberos.min.time.before.relogin: Kafka's dynamic broker configs are accepted and
    described (a password without its value); read-only and unknown names are refused."""
    a = admin(broker)
    res = ConfigResource(ResourceType.BROKER, "1", set_config={
        "sasl.kerberos.min.time.before.relogin": "58000",
        "listener.name.plaintext.ssl.keystore.password": "secret"})
    wait(a.alter_configs([res]))
    described = wait(a.describe_configs([ConfigResource(ResourceType.BROKER, "1")]))
    entries = next(iter(described.values()))
    assert entries["sasl.kerberos.min.time.before.relogin"].value == "58000"
    password = entries["listener.name.plaintext.ssl.keystore.password"]
    assert password.is_sensitive and password.value is None
    for key, value in [("broker.id", "7"), ("no.such.broker.config", "1"),
                       ("sasl.kerberos.min.time.before.relogin", "soon")]:
        res = ConfigResource(ResourceType.BROKER, "1")
        res.add_incremental_config(ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET))
        with pytest.raises(KafkaException) as e:
            wait(a.incremental_alter_configs([res]))
        assert "INVALID_CONFIG" in str(e.value), (key, value, e.value)


def test_group_known_only_by_offsets_is_empty(broker, unique_topic):
    """A group with committed offsets and no members here (after a restart, say) is
    described as Empty, as Kafka loads it from its offsets, not Dead."""
    a = admin(broker)
    create(broker, unique_topic)
    group = "offsets-only-" + uuid.uuid4().hex
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
    c.commit(offsets=[TopicPartition(unique_topic, 0, 3)], asynchronous=False)
    c.close()
    broker.restart()
    [d] = wait(a.describe_consumer_groups([group])).values()
    assert d.state == ConsumerGroupState.EMPTY, d.state


def test_max_message_bytes_is_enforced_after_alter(broker, unique_topic):
    a = admin(broker)
    create(broker, unique_topic)
    res = ConfigResource(ResourceType.TOPIC, unique_topic)
    res.add_incremental_config(ConfigEntry("max.message.bytes", "2000",
                                           incremental_operation=AlterConfigOpType.SET))
    wait(a.incremental_alter_configs([res]))
    errors = []
    p = Producer({"bootstrap.servers": broker.bootstrap, "message.max.bytes": 100000,
                  "compression.type": "none"})
    p.produce(unique_topic, value=b"x" * 5000, on_delivery=lambda err, msg: errors.append(err))
    p.flush(30)
    assert errors and errors[0] is not None and "MSG_SIZE_TOO_LARGE" in str(errors[0])


def test_describe_cluster(broker):
    a = admin(broker)
    desc = a.describe_cluster(request_timeout=10).result(timeout=30)
    assert desc.cluster_id.startswith("strata-")
    assert len(desc.nodes) == 1
    node = desc.nodes[0]
    assert f"{node.host}:{node.port}" == broker.bootstrap
    assert desc.controller.id == node.id


def test_delete_records(broker, unique_topic):
    a = admin(broker)
    create(broker, unique_topic)
    produce(broker, unique_topic, 10)
    tp = TopicPartition(unique_topic, 0, 4)
    result = wait(a.delete_records([tp]))
    assert result[tp].low_watermark == 4
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "g-" + uuid.uuid4().hex,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    lo, hi = c.get_watermark_offsets(TopicPartition(unique_topic, 0), timeout=10)
    assert (lo, hi) == (4, 10)
    # Fetching from below the log start resets (OFFSET_OUT_OF_RANGE) to the earliest: 4.
    c.assign([TopicPartition(unique_topic, 0, 1)])
    got = []
    deadline = time.time() + 30
    while len(got) < 6 and time.time() < deadline:
        m = c.poll(1)
        if m is not None and m.error() is None:
            got.append((m.offset(), m.value()))
    c.close()
    assert got == [(i, str(i).encode()) for i in range(4, 10)]
    # Beyond the high watermark is OFFSET_OUT_OF_RANGE.
    with pytest.raises(KafkaException) as e:
        wait(a.delete_records([TopicPartition(unique_topic, 0, 11)]))
    assert "OFFSET_OUT_OF_RANGE" in str(e.value)


def _consume_some(broker, topic, group, n, **extra):
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "session.timeout.ms": 6000, **extra})
    c.subscribe([topic])
    got = 0
    deadline = time.time() + 30
    while got < n and time.time() < deadline:
        m = c.poll(1)
        if m is not None and m.error() is None:
            got += 1
    assert got == n
    c.commit(asynchronous=False)
    return c


def test_groups_list_filter_describe_delete(broker, unique_topic):
    a = admin(broker)
    create(broker, unique_topic)
    produce(broker, unique_topic, 5)
    group = "g-" + uuid.uuid4().hex
    c = _consume_some(broker, unique_topic, group, 5)

    stable = a.list_consumer_groups(states={ConsumerGroupState.STABLE}).result(timeout=30)
    assert group in [g.group_id for g in stable.valid]
    empty = a.list_consumer_groups(states={ConsumerGroupState.EMPTY}).result(timeout=30)
    assert group not in [g.group_id for g in empty.valid]

    # NON_EMPTY_GROUP while the member is active.
    with pytest.raises(KafkaException) as e:
        wait(a.delete_consumer_groups([group]))
    assert "NON_EMPTY_GROUP" in str(e.value)
    c.close()

    empty = a.list_consumer_groups(states={ConsumerGroupState.EMPTY}).result(timeout=30)
    assert group in [g.group_id for g in empty.valid]
    listed = wait(a.list_consumer_group_offsets([
        __import__("confluent_kafka").ConsumerGroupTopicPartitions(group)]))
    assert [tp.offset for tp in listed[group].topic_partitions] == [5]

    wait(a.delete_consumer_groups([group]))
    all_groups = a.list_consumer_groups().result(timeout=30)
    assert group not in [g.group_id for g in all_groups.valid]
    with pytest.raises(KafkaException) as e:
        wait(a.delete_consumer_groups([group]))
    assert "GROUP_ID_NOT_FOUND" in str(e.value)


# ----------------------------------------------------------------- raw wire helpers

API_OFFSET_DELETE = 47
API_DESCRIBE_PRODUCERS = 61


def offset_delete(bootstrap, group, topic, partitions):
    body = (kwire.kstring(group) + struct.pack(">i", 1) + kwire.kstring(topic)
            + struct.pack(">i", len(partitions)) + b"".join(struct.pack(">i", p) for p in partitions))
    r = kwire.Reader(kwire.roundtrip(bootstrap, API_OFFSET_DELETE, 0, body))
    top = r.i16()
    r.i32()
    out = {}
    for _ in range(r.i32()):
        name = r.string()
        for _ in range(r.i32()):
            p = r.i32()
            out[(name, p)] = r.i16()
    return top, out


def _compact_string(s: str) -> bytes:
    b = s.encode()
    return kwire.uvarint(len(b) + 1) + b


def _read_uvarint(r: kwire.Reader) -> int:
    shift = value = 0
    while True:
        b = r.data[r.pos]
        r.pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value
        shift += 7


def describe_producers(bootstrap, topic, partitions):
    """DescribeProducers v0 (flexible: request header v2, response header v1)."""
    body = (kwire.uvarint(2) + _compact_string(topic) + kwire.uvarint(len(partitions) + 1)
            + b"".join(struct.pack(">i", p) for p in partitions) + b"\x00" + b"\x00")
    header = struct.pack(">hhi", API_DESCRIBE_PRODUCERS, 0, 9) + kwire.kstring("raw") + b"\x00"
    with kwire.connect(bootstrap) as s:
        s.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
        cid, resp = kwire.read_response(s)
    assert cid == 9
    r = kwire.Reader(resp)
    assert _read_uvarint(r) == 0  # header tags
    r.i32()  # throttle
    out = {}
    for _ in range(_read_uvarint(r) - 1):
        n = _read_uvarint(r) - 1
        r.pos += n
        for _ in range(_read_uvarint(r) - 1):
            p, err = r.i32(), r.i16()
            n = _read_uvarint(r) - 1
            if n >= 0:
                r.pos += n
            producers = []
            for _ in range(_read_uvarint(r) - 1):
                pid, epoch, last_seq = r.i64(), r.i32(), r.i32()
                r.i64(), r.i32(), r.i64()
                assert _read_uvarint(r) == 0
                producers.append((pid, epoch, last_seq))
            assert _read_uvarint(r) == 0
            out[p] = (err, producers)
        assert _read_uvarint(r) == 0
    return out


def test_offset_delete(broker, unique_topic):
    create(broker, unique_topic, 2)
    other = unique_topic + "-other"
    create(broker, other, 1)
    produce(broker, unique_topic, 3)
    produce(broker, other, 3)
    group = "g-" + uuid.uuid4().hex
    c = _consume_some(broker, unique_topic, group, 3)
    # Commit an offset for a topic the group does not subscribe to.
    c.commit(offsets=[TopicPartition(other, 0, 2)], asynchronous=False)
    top, parts = offset_delete(broker.bootstrap, group, unique_topic, [0])
    assert top == 0 and parts[(unique_topic, 0)] == 86  # GROUP_SUBSCRIBED_TO_TOPIC
    top, parts = offset_delete(broker.bootstrap, group, other, [0])
    assert top == 0 and parts[(other, 0)] == 0
    committed = c.committed([TopicPartition(other, 0), TopicPartition(unique_topic, 0)], timeout=10)
    assert [tp.offset for tp in committed][0] < 0  # gone
    assert committed[1].offset == 3
    c.close()
    top, _ = offset_delete(broker.bootstrap, "no-such-group-" + uuid.uuid4().hex, other, [0])
    assert top == 69  # GROUP_ID_NOT_FOUND


def test_describe_producers(broker, unique_topic):
    create(broker, unique_topic, 1)
    produce(broker, unique_topic, 5, **{"enable.idempotence": True})
    out = describe_producers(broker.bootstrap, unique_topic, [0, 7])
    err, producers = out[0]
    assert err == 0 and len(producers) == 1
    pid, epoch, last_seq = producers[0]
    assert pid >= 0 and epoch >= 0 and last_seq == 4
    assert out[7][0] == 3  # UNKNOWN_TOPIC_OR_PARTITION

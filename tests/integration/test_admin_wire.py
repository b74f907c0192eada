"""Issue 14's admin surface: manual replica assignments (preferred-broker hints), dynamic
broker configs, and the APIs admin UIs and Cruise Control call (DescribeLogDirs,
ListPartitionReassignments, ElectLeaders, DescribeTopicPartitions, DescribeClientQuotas),
from confluent-kafka's AdminClient and the raw wire."""

import struct
import time

import pytest
from confluent_kafka import KafkaException, Producer
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

INVALID_REPLICA_ASSIGNMENT = 39
UNKNOWN_TOPIC_OR_PARTITION = 3


def admin(broker) -> AdminClient:
    return AdminClient({"bootstrap.servers": broker.bootstrap})


def wait(futures: dict, timeout: float = 30):
    return {k: f.result(timeout=timeout) for k, f in futures.items()}


def leaders(a: AdminClient, topic: str) -> dict:
    md = a.list_topics(topic, timeout=10)
    t = md.topics[topic]
    assert t.error is None, t.error
    return {p.id: (p.leader, list(p.replicas), list(p.isrs)) for p in t.partitions.values()}


# ------------------------------------------------------------------ manual assignments


def test_manual_assignments_are_preferred_broker_hints(broker, unique_topic):
    a = admin(broker)
    wait(a.create_topics([NewTopic(unique_topic, 3, replica_assignment=[[1], [1], [1]])]))
    assert leaders(a, unique_topic) == {p: (1, [1], [1]) for p in range(3)}
    wait(a.create_partitions([NewPartitions(unique_topic, 5, replica_assignment=[[1], [1]])]))
    assert leaders(a, unique_topic) == {p: (1, [1], [1]) for p in range(5)}
    # The topic is usable.
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(5):
        p.produce(unique_topic, b"v", partition=i)
    assert p.flush(30) == 0


def test_unknown_broker_in_an_assignment_is_refused(broker, unique_topic):
    a = admin(broker)
    fut = a.create_topics([NewTopic(unique_topic, 2, replica_assignment=[[1], [42]])])[unique_topic]
    with pytest.raises(KafkaException) as e:
        fut.result(timeout=30)
    assert e.value.args[0].code() == INVALID_REPLICA_ASSIGNMENT
    assert "42" in e.value.args[0].str()
    assert unique_topic not in a.list_topics(timeout=10).topics
    wait(a.create_topics([NewTopic(unique_topic, 1)]))
    fut = a.create_partitions([NewPartitions(unique_topic, 3, replica_assignment=[[1], [7]])])[unique_topic]
    with pytest.raises(KafkaException) as e:
        fut.result(timeout=30)
    assert e.value.args[0].code() == INVALID_REPLICA_ASSIGNMENT
    assert len(a.list_topics(unique_topic, timeout=10).topics[unique_topic].partitions) == 1


# ------------------------------------------------------------------ dynamic broker configs


def describe_broker(a: AdminClient, name: str) -> dict:
    res = ConfigResource(ResourceType.BROKER, name)
    return wait(a.describe_configs([res]))[res]


BROKER = 4


def incremental_alter_raw(bootstrap: str, name: str, changes: list[tuple[str, int, str | None]]) -> tuple:
    """IncrementalAlterConfigs v0 on BROKER `name` (librdkafka refuses the "" resource)."""
    body = struct.pack(">i", 1) + struct.pack(">b", BROKER) + kwire.kstring(name) + struct.pack(">i", len(changes))
    for key, op, value in changes:
        body += kwire.kstring(key) + struct.pack(">b", op) + kwire.kstring(value)
    body += b"\x00"  # validate_only
    r = kwire.Reader(kwire.roundtrip(bootstrap, 44, 0, body))
    r.i32()
    assert r.i32() == 1
    return r.i16(), r.string()


def alter_raw(bootstrap: str, name: str, configs: dict) -> int:
    """AlterConfigs v0 on BROKER `name`: the set replaces what was there."""
    body = struct.pack(">i", 1) + struct.pack(">b", BROKER) + kwire.kstring(name) + struct.pack(">i", len(configs))
    for key, value in configs.items():
        body += kwire.kstring(key) + kwire.kstring(value)
    body += b"\x00"
    r = kwire.Reader(kwire.roundtrip(bootstrap, 33, 0, body))
    r.i32()
    assert r.i32() == 1
    return r.i16()


def describe_raw(bootstrap: str, name: str) -> dict:
    """DescribeConfigs v1 on BROKER `name`: {key: (value, source, read_only)}."""
    body = struct.pack(">i", 1) + struct.pack(">b", BROKER) + kwire.kstring(name) + struct.pack(">i", -1) + b"\x00"
    r = kwire.Reader(kwire.roundtrip(bootstrap, 32, 1, body))
    r.i32()
    assert r.i32() == 1
    assert r.i16() == 0
    r.string(), r.i8(), r.string()
    out = {}
    for _ in range(r.i32()):
        key, value, read_only, source, _sensitive = r.string(), r.string(), r.i8(), r.i8(), r.i8()
        for _ in range(r.i32()):
            r.string(), r.string(), r.i8()
        out[key] = (value, source, bool(read_only))
    return out


SET, DELETE = 0, 1


def test_dynamic_broker_configs(broker, unique_topic):
    a = admin(broker)
    assert incremental_alter_raw(
        broker.bootstrap,
        "",
        [("num.partitions", SET, "4"), ("log.retention.ms", SET, "3600000"), ("message.max.bytes", SET, "2000")],
    ) == (0, None)
    got = describe_raw(broker.bootstrap, "")
    assert got == {
        "num.partitions": ("4", 3, False),  # DYNAMIC_DEFAULT_BROKER_CONFIG
        "log.retention.ms": ("3600000", 3, False),
        "message.max.bytes": ("2000", 3, False),
    }
    one = describe_broker(a, "1")
    assert one["num.partitions"].value == "4" and one["num.partitions"].source == 3
    assert one["broker.id"].value == "1" and one["broker.id"].is_read_only
    assert one["log.segment.bytes"].source == 5  # DEFAULT_CONFIG
    # A per-broker value (confluent-kafka's IncrementalAlterConfigs) wins over the default.
    mine = ConfigResource(
        ResourceType.BROKER,
        "1",
        incremental_configs=[
            ConfigEntry("log.retention.ms", "60000", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    wait(a.incremental_alter_configs([mine]))
    one = describe_broker(a, "1")
    assert one["log.retention.ms"].value == "60000" and one["log.retention.ms"].source == 2

    # num.partitions is the partition count of an auto-created topic.
    p = Producer({"bootstrap.servers": broker.bootstrap})
    p.produce(unique_topic, b"small")
    assert p.flush(30) == 0
    assert len(leaders(a, unique_topic)) == 4
    # message.max.bytes is the default max.message.bytes: a larger batch is refused.
    delivered = []
    p.produce(unique_topic, b"x" * 5000, partition=0, on_delivery=lambda err, msg: delivered.append(err))
    p.flush(30)
    assert delivered and delivered[0] is not None and delivered[0].code() == 10  # MSG_SIZE_TOO_LARGE
    # A topic describes the dynamic values as its defaults.
    res = ConfigResource(ResourceType.TOPIC, unique_topic)
    topic = wait(a.describe_configs([res]))[res]
    assert topic["retention.ms"].value == "60000"
    assert topic["max.message.bytes"].value == "2000"

    # Unknown keys, keys that cannot change at run time and bad values are refused.
    for key, value in (("broker.id", "1"), ("no.such.config", "1"), ("num.partitions", "many")):
        code, message = incremental_alter_raw(broker.bootstrap, "", [(key, SET, value)])
        assert code == 40 and message  # INVALID_CONFIG
    bad = ConfigResource(
        ResourceType.BROKER,
        "1",
        incremental_configs=[ConfigEntry("advertised.listeners", "x", incremental_operation=AlterConfigOpType.SET)],
    )
    with pytest.raises(KafkaException) as e:
        wait(a.incremental_alter_configs([bad]))
    assert e.value.args[0].code() == 40
    # DELETE restores the static value; AlterConfigs replaces the whole set.
    assert incremental_alter_raw(broker.bootstrap, "", [("num.partitions", DELETE, None)])[0] == 0
    assert describe_raw(broker.bootstrap, "1")["num.partitions"][1] == 4  # STATIC_BROKER_CONFIG
    assert alter_raw(broker.bootstrap, "", {"log.segment.bytes": "1048576"}) == 0
    assert describe_raw(broker.bootstrap, "") == {"log.segment.bytes": ("1048576", 3, False)}


# ------------------------------------------------------------------ raw wire helpers


def flexible_request(api_key: int, version: int, correlation_id: int, body: bytes) -> bytes:
    # Request header v2: v1 plus an empty tagged-field section.
    header = struct.pack(">hhi", api_key, version, correlation_id) + kwire.kstring("strata-raw") + b"\x00"
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def flexible_roundtrip(bootstrap: str, api_key: int, version: int, body: bytes) -> bytes:
    with kwire.connect(bootstrap) as s:
        s.sendall(flexible_request(api_key, version, 11, body))
        cid, resp = kwire.read_response(s)
        assert cid == 11
        assert resp[0] == 0  # response header v1: empty tagged fields
        return resp[1:]


class FlexReader(kwire.Reader):
    def uvarint(self) -> int:
        shift = n = 0
        while True:
            b = self.data[self.pos]
            self.pos += 1
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return n
            shift += 7

    def cstring(self):
        n = self.uvarint() - 1
        if n < 0:
            return None
        s = self.data[self.pos:self.pos + n].decode()
        self.pos += n
        return s

    def carray(self, item):
        n = self.uvarint() - 1
        return None if n < 0 else [item() for _ in range(n)]

    def tags(self):
        assert self.uvarint() == 0

    def bool(self):
        return self.i8() != 0


def cstr(s: str) -> bytes:
    b = s.encode()
    return kwire.uvarint(len(b) + 1) + b


# ------------------------------------------------------------------ the new admin APIs


def test_api_versions_advertise_the_admin_apis(broker):
    keys = kwire.parse_api_versions_v0(kwire.roundtrip(broker.bootstrap, 18, 0, b""))["api_keys"]
    assert keys[35] == (1, 4)  # DescribeLogDirs
    assert keys[43] == (0, 2)  # ElectLeaders
    assert keys[46] == (0, 0)  # ListPartitionReassignments
    assert keys[48] == (0, 1)  # DescribeClientQuotas
    assert keys[75] == (0, 0)  # DescribeTopicPartitions


def produce_bytes(broker, topic: str, partition: int, n: int):
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for _ in range(n):
        p.produce(topic, b"x" * 1000, partition=partition)
    assert p.flush(30) == 0


def describe_log_dirs(bootstrap: str, topics) -> list:
    if topics is None:
        body = struct.pack(">i", -1)
    else:
        body = struct.pack(">i", len(topics)) + b"".join(
            kwire.kstring(t) + struct.pack(">i", len(ps)) + b"".join(struct.pack(">i", p) for p in ps)
            for t, ps in topics
        )
    r = kwire.Reader(kwire.roundtrip(bootstrap, 35, 1, body))
    r.i32()  # throttle
    dirs = []
    for _ in range(r.i32()):
        err, path = r.i16(), r.string()
        topics_out = {}
        for _ in range(r.i32()):
            name = r.string()
            parts = {}
            for _ in range(r.i32()):
                index, size, lag, future = r.i32(), r.i64(), r.i64(), r.i8()
                parts[index] = (size, lag, future)
            topics_out[name] = parts
        dirs.append((err, path, topics_out))
    assert r.remaining() == 0
    return dirs


def test_describe_log_dirs_reports_bytes_in_the_store(broker, unique_topic):
    a = admin(broker)
    wait(a.create_topics([NewTopic(unique_topic, 2)]))
    produce_bytes(broker, unique_topic, 0, 20)
    [(err, path, topics)] = describe_log_dirs(broker.bootstrap, None)
    assert err == 0 and path == "/strata"
    parts = topics[unique_topic]
    assert parts[0][0] >= 20 * 1000 and parts[0][1:] == (0, 0)
    assert parts[1] == (0, 0, 0)
    [(_, _, topics)] = describe_log_dirs(broker.bootstrap, [(unique_topic, [1, 9]), ("nope", [0])])
    assert topics == {unique_topic: {1: (0, 0, 0)}}


def test_list_partition_reassignments_is_empty(broker):
    body = struct.pack(">i", 30000) + b"\x00" + b"\x00"  # timeout, topics = null, tags
    r = FlexReader(flexible_roundtrip(broker.bootstrap, 46, 0, body))
    r.i32()  # throttle
    assert r.i16() == 0
    assert r.cstring() is None
    assert r.carray(lambda: None) == []
    r.tags()
    assert r.remaining() == 0


def test_elect_leaders_is_a_successful_no_op(broker, unique_topic):
    a = admin(broker)
    wait(a.create_topics([NewTopic(unique_topic, 2)]))
    body = (
        struct.pack(">i", 2)
        + kwire.kstring(unique_topic) + struct.pack(">iii", 2, 0, 1)
        + kwire.kstring("no-such-topic") + struct.pack(">ii", 1, 0)
        + struct.pack(">i", 30000)
    )
    r = kwire.Reader(kwire.roundtrip(broker.bootstrap, 43, 0, body))
    r.i32()  # throttle
    results = {}
    for _ in range(r.i32()):
        topic = r.string()
        for _ in range(r.i32()):
            partition, err, _msg = r.i32(), r.i16(), r.string()
            results[(topic, partition)] = err
    assert results == {
        (unique_topic, 0): 0,
        (unique_topic, 1): 0,
        ("no-such-topic", 0): UNKNOWN_TOPIC_OR_PARTITION,
    }


def describe_client_quotas(bootstrap: str, version: int) -> tuple:
    # One component: every user (match type 2 = any); not strict.
    body = struct.pack(">i", 1) + kwire.kstring("user") + struct.pack(">b", 2) + kwire.kstring(None) + b"\x00"
    if version == 0:
        r = kwire.Reader(kwire.roundtrip(bootstrap, 48, 0, body))
        r.i32()
        return r.i16(), r.string(), r.i32()
    body = kwire.uvarint(2) + cstr("user") + struct.pack(">b", 2) + b"\x00" + b"\x00" + b"\x00" + b"\x00"
    r = FlexReader(flexible_roundtrip(bootstrap, 48, 1, body))
    r.i32()
    return r.i16(), r.cstring(), len(r.carray(lambda: None))


def test_describe_client_quotas_is_empty(broker):
    assert describe_client_quotas(broker.bootstrap, 0) == (0, None, 0)
    assert describe_client_quotas(broker.bootstrap, 1) == (0, None, 0)


def describe_topic_partitions(bootstrap: str, topics: list[str], limit: int, cursor=None):
    body = kwire.uvarint(len(topics) + 1) + b"".join(cstr(t) + b"\x00" for t in topics)
    body += struct.pack(">i", limit)
    if cursor is None:
        body += struct.pack(">b", -1)
    else:
        body += struct.pack(">b", 1) + cstr(cursor[0]) + struct.pack(">i", cursor[1]) + b"\x00"
    body += b"\x00"
    r = FlexReader(flexible_roundtrip(bootstrap, 75, 0, body))
    r.i32()  # throttle

    def partition():
        p = {
            "error": r.i16(),
            "index": r.i32(),
            "leader": r.i32(),
            "epoch": r.i32(),
            "replicas": r.carray(r.i32),
            "isr": r.carray(r.i32),
            "elr": r.carray(r.i32),
            "last_elr": r.carray(r.i32),
            "offline": r.carray(r.i32),
        }
        r.tags()
        return p

    def topic():
        t = {"error": r.i16(), "name": r.cstring()}
        r.pos += 16  # topic id
        t["internal"] = r.bool()
        t["partitions"] = r.carray(partition)
        r.i32()  # authorized operations
        r.tags()
        return t

    out = r.carray(topic)
    next_cursor = None
    if r.i8() >= 0:
        next_cursor = (r.cstring(), r.i32())
        r.tags()
    r.tags()
    assert r.remaining() == 0
    return out, next_cursor


def test_describe_topic_partitions_pages_with_a_cursor(broker, unique_topic):
    a = admin(broker)
    t1, t2 = unique_topic + "-a", unique_topic + "-b"
    wait(a.create_topics([NewTopic(t1, 3, replica_assignment=[[1]] * 3), NewTopic(t2, 2)]))
    topics, cursor = describe_topic_partitions(broker.bootstrap, [t2, t1, "zz-nope"], 2)
    # Topics in name order ("zz-nope" sorts after both); two partitions, then a cursor.
    assert [t["name"] for t in topics] == [t1]
    assert [p["index"] for p in topics[0]["partitions"]] == [0, 1]
    assert all(p["leader"] == 1 and p["replicas"] == [1] and p["isr"] == [1] for p in topics[0]["partitions"])
    assert cursor == (t1, 2)
    topics, cursor = describe_topic_partitions(broker.bootstrap, [t2, t1, "zz-nope"], 2, cursor)
    assert [(t["name"], [p["index"] for p in t["partitions"]]) for t in topics] == [(t1, [2]), (t2, [0])]
    assert cursor == (t2, 1)
    topics, cursor = describe_topic_partitions(broker.bootstrap, [t2, t1, "zz-nope"], 2, cursor)
    assert [(t["name"], t["error"], [p["index"] for p in t["partitions"]]) for t in topics] == [
        (t2, 0, [1]),
        ("zz-nope", UNKNOWN_TOPIC_OR_PARTITION, []),
    ]
    assert cursor is None
    # No limit: everything in one answer.
    topics, cursor = describe_topic_partitions(broker.bootstrap, [t1, t2], 0)
    assert [len(t["partitions"]) for t in topics] == [3, 2] and cursor is None

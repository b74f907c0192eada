"""Fields clients write and read back (issue 14): the committed leader epoch (KIP-320),
authorized operations (KIP-430), ListGroups per coordinator, and settings given as
STRATA_ variables."""

from __future__ import annotations

import subprocess
import uuid

import pytest
from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AclOperation, AdminClient, NewTopic

import kwire
from cluster import Cluster
from conftest import STRATA_BIN, Broker, free_port, supervise


def wait(futures: dict, timeout: float = 30):
    return {k: f.result(timeout=timeout) for k, f in futures.items()}


def create(bootstrap: str, topic: str, partitions: int = 1) -> None:
    a = AdminClient({"bootstrap.servers": bootstrap})
    wait(a.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)]))


def produce(bootstrap: str, topic: str, n: int, partitions: int) -> None:
    p = Producer({"bootstrap.servers": bootstrap})
    for i in range(n):
        p.produce(topic, value=b"v%d" % i, partition=i % partitions)
    assert p.flush(30) == 0


# ----------------------------------------------------------- committed leader epoch

def test_committed_leader_epoch_round_trips(broker, unique_topic):
    bootstrap = broker.bootstrap
    create(bootstrap, unique_topic, partitions=2)
    produce(bootstrap, unique_topic, 10, partitions=2)
    group = "g-" + uuid.uuid4().hex
    a = AdminClient({"bootstrap.servers": bootstrap})

    # AdminClient's alter, then list: offsets and epochs as written.
    wait(a.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, [
        TopicPartition(unique_topic, 0, 3, leader_epoch=7),
        TopicPartition(unique_topic, 1, 2, leader_epoch=5),
    ])]))
    listed = wait(a.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)]))
    got = {(tp.partition, tp.offset, tp.leader_epoch)
           for tp in listed[group].topic_partitions}
    assert got == {(0, 3, 7), (1, 2, 5)}

    # A consumer's commit, read back by OffsetFetch (committed()).
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        c.commit(offsets=[TopicPartition(unique_topic, 0, 4, leader_epoch=2)],
                 asynchronous=False)
        committed = c.committed([TopicPartition(unique_topic, 0),
                                 TopicPartition(unique_topic, 1)], timeout=30)
        assert [(tp.offset, tp.leader_epoch) for tp in committed] == [(4, 2), (2, 5)]
    finally:
        c.close()


# ------------------------------------------------------------ authorized operations

TOPIC_OPS = {AclOperation.READ, AclOperation.WRITE, AclOperation.CREATE, AclOperation.DELETE,
             AclOperation.ALTER, AclOperation.DESCRIBE, AclOperation.DESCRIBE_CONFIGS,
             AclOperation.ALTER_CONFIGS}
GROUP_OPS = {AclOperation.READ, AclOperation.DESCRIBE, AclOperation.DELETE}
CLUSTER_OPS = {AclOperation.CREATE, AclOperation.ALTER, AclOperation.DESCRIBE,
               AclOperation.CLUSTER_ACTION, AclOperation.DESCRIBE_CONFIGS,
               AclOperation.ALTER_CONFIGS, AclOperation.IDEMPOTENT_WRITE}


def test_authorized_operations(broker, unique_topic):
    bootstrap = broker.bootstrap
    create(bootstrap, unique_topic)
    produce(bootstrap, unique_topic, 1, partitions=1)
    a = AdminClient({"bootstrap.servers": bootstrap})

    cluster = a.describe_cluster(include_authorized_operations=True).result(timeout=30)
    assert set(cluster.authorized_operations or []) == CLUSTER_OPS
    plain = a.describe_cluster().result(timeout=30)
    assert not plain.authorized_operations, "only when asked"

    topics = a.describe_topics(TopicCollection([unique_topic]),
                               include_authorized_operations=True)
    topic = topics[unique_topic].result(timeout=30)
    assert set(topic.authorized_operations or []) == TOPIC_OPS
    plain = a.describe_topics(TopicCollection([unique_topic]))[unique_topic].result(timeout=30)
    assert not plain.authorized_operations

    group = "g-" + uuid.uuid4().hex
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "auto.offset.reset": "earliest"})
    try:
        c.subscribe([unique_topic])
        msg = None
        for _ in range(60):
            msg = c.poll(1.0)
            if msg is not None and not msg.error():
                break
        assert msg is not None and not msg.error()
        described = a.describe_consumer_groups([group], include_authorized_operations=True)
        g = described[group].result(timeout=30)
        assert set(g.authorized_operations or []) == GROUP_OPS
        plain = a.describe_consumer_groups([group])[group].result(timeout=30)
        assert not plain.authorized_operations
    finally:
        c.close()


# --------------------------------------------------------- ListGroups per coordinator

API_LIST_GROUPS = 16


def list_groups_v0(bootstrap: str) -> list[str]:
    r = kwire.Reader(kwire.roundtrip(bootstrap, API_LIST_GROUPS, 0, b""))
    assert r.i16() == 0
    groups = []
    for _ in range(r.i32()):
        groups.append(r.string())
        r.string()  # protocol type
    return groups


@pytest.fixture
def two_brokers(request, tmp_path):
    c = Cluster(tmp_path / "cluster", voters=2)
    try:
        c.start_all()
        c.wait_live({1, 2})
        yield c
    finally:
        if any(getattr(request.node, f"rep_{w}", None) is not None
               and getattr(request.node, f"rep_{w}").failed for w in ("setup", "call")):
            print(c.report(80))
        panics = c.panics()
        c.close()
    assert not panics, f"strata panicked: {panics}"


def test_list_groups_reports_only_coordinated_groups(two_brokers, unique_topic):
    c = two_brokers
    bootstrap = c.bootstrap()
    create(bootstrap, unique_topic)
    produce(bootstrap, unique_topic, 3, partitions=1)
    a = AdminClient({"bootstrap.servers": bootstrap})
    groups = [f"lg-{unique_topic}-{i}" for i in range(12)]
    # Groups with committed offsets only (no members): Empty, at their coordinator.
    for g in groups:
        wait(a.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(
            g, [TopicPartition(unique_topic, 0, 1)])]))

    mine = {n: set(list_groups_v0(c.node(n).bootstrap)) & set(groups) for n in (1, 2)}
    assert mine[1] and mine[2], f"12 groups all on one broker? {mine}"
    assert not mine[1] & mine[2], f"listed by both brokers: {mine[1] & mine[2]}"
    assert mine[1] | mine[2] == set(groups)

    listed = a.list_consumer_groups().result(timeout=30)
    ids = [g.group_id for g in listed.valid if g.group_id in groups]
    assert sorted(ids) == sorted(groups), "each group exactly once in the merged list"


# ------------------------------------------------------------ settings by variable

def test_strata_variable_sets_default_partitions(request, tmp_path, unique_topic):
    b = Broker(tmp_path / "strata", extra_env={"STRATA_DEFAULT_PARTITIONS": "3"})
    for started in supervise(request, b):
        a = AdminClient({"bootstrap.servers": started.bootstrap})
        # Metadata auto-creates the topic with default_partitions.
        md = a.list_topics(topic=unique_topic, timeout=30)
        assert len(md.topics[unique_topic].partitions) == 3


def test_out_of_range_value_stops_start_up_with_one_line(tmp_path):
    proc = subprocess.run(
        [str(STRATA_BIN), "serve", "--data-dir", str(tmp_path / "d"), "--listen", f"127.0.0.1:{free_port()}"],
        env={"STRATA_UPLOAD_TIMEOUT_MS": "10", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        'strata: upload_timeout_ms = "10" is not valid: use 1000 to 86400000 milliseconds'
    ], proc.stderr

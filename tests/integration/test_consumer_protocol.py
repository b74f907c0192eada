"""The consumer group protocol of KIP-848 (`group.protocol=consumer`) with
confluent-kafka (librdkafka 2.16): the broker computes the assignment, members
reconcile through ConsumerGroupHeartbeat, commits carry the member epoch
(OffsetCommit v9), and the assignment's topic ids resolve through Metadata."""

import json
import signal
import struct
import subprocess
import sys
import threading
import time

import kwire
import pytest
from confluent_kafka import (Consumer, ConsumerGroupTopicPartitions, KafkaError, KafkaException, Producer,
                             TopicPartition)
from confluent_kafka.admin import AdminClient, NewTopic
from harness.broker import Broker
from harness.fixtures import supervise
from cluster import make_cluster  # noqa: F401 (fixture)

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
    c1 = consumer(broker.bootstrap, group, **{"client.id": "kip848-client"})
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
    assert desc.members[0].client_id == "kip848-client", desc.members[0].client_id
    assert desc.members[0].host.endswith("127.0.0.1"), desc.members[0].host
    assigned = {(tp.topic, tp.partition) for tp in desc.members[0].assignment.topic_partitions}
    assert assigned == {(topic, p) for p in range(3)}
    listed = admin.list_consumer_groups(request_timeout=30).result(timeout=60)
    assert group in {g.group_id for g in listed.valid}, listed.valid
    # A group with members is not deleted (NON_EMPTY_GROUP).
    with pytest.raises(KafkaException) as refused:
        admin.delete_consumer_groups([group], request_timeout=30)[group].result(timeout=60)
    assert refused.value.args[0].code() == KafkaError.NON_EMPTY_GROUP, refused.value
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
    # Empty now: deleted with its offsets.
    admin.delete_consumer_groups([group], request_timeout=30)[group].result(timeout=60)
    offsets = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(60)
    assert all(tp.offset < 0 for tp in offsets.topic_partitions), offsets.topic_partitions


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
    deadline = time.monotonic() + 4
    while not errors and time.monotonic() < deadline:
        new.poll(0.2)
        classic.poll(0.1)
    assert not new.assignment(), new.assignment()
    assert len(classic.assignment()) == 2
    new.close()
    classic.close()


# ------------------------------------------------------------ raw wire (flexible versions)

def _cstr(s):
    if s is None:
        return kwire.uvarint(0)
    b = s.encode()
    return kwire.uvarint(len(b) + 1) + b


def _carray(items):
    return kwire.uvarint(len(items) + 1) + b"".join(items)


def _flexible(bootstrap, api_key, version, body):
    """One flexible request (header v2) and its body after the response header v1."""
    header = struct.pack(">hhi", api_key, version, 11) + kwire.kstring("strata-raw") + b"\x00"
    payload = header + body
    with kwire.connect(bootstrap) as s:
        s.sendall(struct.pack(">i", len(payload)) + payload)
        cid, resp = kwire.read_response(s)
    assert cid == 11
    assert resp[0] == 0, "response header tags"
    return kwire.Reader(resp[1:])


def _read_cstr(r):
    n = 0
    shift = 0
    while True:
        b = r.data[r.pos]
        r.pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    if n == 0:
        return None
    s = r.data[r.pos:r.pos + n - 1].decode()
    r.pos += n - 1
    return s


def heartbeat_v0(bootstrap, group, member_id, epoch, topics, interval=False):
    body = (_cstr(group) + _cstr(member_id) + struct.pack(">i", epoch) + _cstr(None) + _cstr(None)
            + struct.pack(">i", 30000 if epoch == 0 else -1)
            + (_carray([_cstr(t) for t in topics]) if topics is not None else kwire.uvarint(0))
            + _cstr(None) + (_carray([]) if epoch == 0 else kwire.uvarint(0)) + b"\x00")
    r = _flexible(bootstrap, 68, 0, body)
    r.i32()  # throttle
    error = r.i16()
    _read_cstr(r)  # message
    member = _read_cstr(r)
    epoch = r.i32()
    if interval:
        return error, member, epoch, r.i32()
    return error, member, epoch


def commit(bootstrap, group, member_id, epoch, topic, version=9):
    part = struct.pack(">iqi", 0, 5, -1) + _cstr(None) + b"\x00"
    body = (_cstr(group) + struct.pack(">i", epoch) + _cstr(member_id) + _cstr(None)
            + _carray([_cstr(topic) + _carray([part]) + b"\x00"]) + b"\x00")
    r = _flexible(bootstrap, 8, version, body)
    r.i32()  # throttle
    r.pos += 1  # one topic
    _read_cstr(r)
    r.pos += 1  # one partition
    r.i32()
    return r.i16()


def test_commits_are_checked_against_the_member_epoch(broker, unique_topic):
    """OffsetCommit v9 from a consumer-protocol member: its epoch commits; an older
    epoch is STALE_MEMBER_EPOCH, a newer one FENCED_MEMBER_EPOCH, an unknown member
    UNKNOWN_MEMBER_ID, and a member committing with v8 UNSUPPORTED_VERSION (Kafka's
    checks)."""
    topic, group = unique_topic, f"{unique_topic}-g"
    create_topic(broker.bootstrap, topic, 1)
    error, member, epoch = heartbeat_v0(broker.bootstrap, group, "", 0, [topic])
    assert error == 0 and member and epoch >= 1, (error, member, epoch)
    assert commit(broker.bootstrap, group, member, epoch, topic) == 0
    assert commit(broker.bootstrap, group, member, epoch - 1, topic) == 113  # STALE_MEMBER_EPOCH
    assert commit(broker.bootstrap, group, member, epoch + 1, topic) == 110  # FENCED_MEMBER_EPOCH
    assert commit(broker.bootstrap, group, "nobody", epoch, topic) == 25  # UNKNOWN_MEMBER_ID
    assert commit(broker.bootstrap, group, member, epoch, topic, version=8) == 35  # UNSUPPORTED_VERSION
    # A heartbeat at a wrong epoch is fenced; at the right one it keeps the member.
    assert heartbeat_v0(broker.bootstrap, group, member, epoch + 5, None)[0] == 110
    assert heartbeat_v0(broker.bootstrap, group, member, epoch, None)[0] == 0
    # Leaving (-1) ends the membership: the next commit names an unknown member.
    assert heartbeat_v0(broker.bootstrap, group, member, -1, None)[0] == 0
    assert commit(broker.bootstrap, group, member, epoch, topic) == 22  # ILLEGAL_GENERATION: no group


# ------------------------------------------------------------ timeouts, static members, range

QUICK = ["--group-consumer-session-timeout-ms=4000", "--group-consumer-heartbeat-interval-ms=500"]


@pytest.fixture
def quick_broker(request, tmp_path):
    """A broker whose consumer-protocol sessions end after 4 s (heartbeats every 0.5 s)."""
    yield from supervise(request, Broker(tmp_path / "strata", extra_args=QUICK))


def test_a_groups_own_configs_set_its_heartbeat_interval_and_session(quick_broker, unique_topic):
    """IncrementalAlterConfigs on a GROUP resource (KIP-848) through confluent-kafka's
    admin client: the group's own `consumer.heartbeat.interval.ms` is what its heartbeats
    are told, and its own `consumer.session.timeout.ms` keeps a silent member past the
    broker's 4 s session. Out-of-bounds values, an interval not below the session and an
    unknown name are INVALID_CONFIG; DescribeConfigs tells what is set from the defaults."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType
    b, topic, group = quick_broker, unique_topic, f"{unique_topic}-g"
    create_topic(b.bootstrap, topic, 1)
    admin = AdminClient({"bootstrap.servers": b.bootstrap})

    def alter(**configs):
        entries = [ConfigEntry(k.replace("_", "."), v, incremental_operation=AlterConfigOpType.SET)
                   for k, v in configs.items()]
        res = ConfigResource(ResourceType.GROUP, group, incremental_configs=entries)
        [f] = admin.incremental_alter_configs([res]).values()
        try:
            f.result(timeout=30)
            return KafkaError.NO_ERROR
        except KafkaException as e:
            return e.args[0].code()

    assert alter(consumer_session_timeout_ms="20000", consumer_heartbeat_interval_ms="1500") == KafkaError.NO_ERROR
    assert alter(consumer_session_timeout_ms="100") == KafkaError.INVALID_CONFIG
    assert alter(consumer_heartbeat_interval_ms="20000") == KafkaError.INVALID_CONFIG
    assert alter(share_session_timeout_ms="20000") == KafkaError.INVALID_CONFIG
    [f] = admin.describe_configs([ConfigResource(ResourceType.GROUP, group)]).values()
    described = {n: (c.value, int(c.source)) for n, c in f.result(timeout=30).items()}
    assert described == {"consumer.session.timeout.ms": ("20000", 8),  # GROUP_CONFIG
                         "consumer.heartbeat.interval.ms": ("1500", 8)}, described
    [f] = admin.describe_configs([ConfigResource(ResourceType.GROUP, f"{group}-other")]).values()
    other = {n: (c.value, int(c.source)) for n, c in f.result(timeout=30).items()}
    assert other["consumer.session.timeout.ms"] == ("4000", 5), other  # the broker's, DEFAULT_CONFIG

    error, member, epoch, interval = heartbeat_v0(b.bootstrap, group, "", 0, [topic], interval=True)
    assert error == 0 and epoch >= 1, (error, member, epoch)
    assert interval == 1500
    # Silent for twice the broker's session, within the group's own: still a member.
    time.sleep(8)
    error, _, still, interval = heartbeat_v0(b.bootstrap, group, member, epoch, None, interval=True)
    assert (error, still, interval) == (0, epoch, 1500)
    # Another group keeps the broker's settings.
    error, _, _, interval = heartbeat_v0(b.bootstrap, f"{group}-other", "", 0, [topic], interval=True)
    assert (error, interval) == (0, 500)


def stored_consumer_groups(b):
    """The consumer-protocol groups the metadata state holds, from the stats file."""
    try:
        return json.loads((b.data_dir / "stats.json").read_text()).get("consumer_groups")
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def test_a_group_no_member_returns_to_leaves_the_metadata(quick_broker, unique_topic):
    """A coordinator that dies with its group's members leaves the group's record in the
    metadata log, and only a request about the group would load it again. The restarted
    broker takes such groups up by itself (every session timeout, at most 30 s), fences
    the members after their session and writes the removal: the record does not stay
    forever."""
    b, topic, group = quick_broker, unique_topic, f"{unique_topic}-g"
    create_topic(b.bootstrap, topic, 1)
    error, member, epoch = heartbeat_v0(b.bootstrap, group, "", 0, [topic])
    assert error == 0 and epoch >= 1, (error, member, epoch)
    # The member heartbeats until the stats file shows its group stored.
    deadline = time.monotonic() + 20
    while stored_consumer_groups(b) != 1:
        assert time.monotonic() < deadline, f"stats.json: {stored_consumer_groups(b)}"
        time.sleep(0.5)
        error, _, epoch = heartbeat_v0(b.bootstrap, group, member, epoch, None)
        assert error == 0
    b.stop(signal.SIGKILL)
    b.start()
    # Nobody heartbeats or asks about the group from here on.
    deadline = time.monotonic() + 40
    while stored_consumer_groups(b) != 0:
        assert time.monotonic() < deadline, f"the dead group is still stored: {stored_consumer_groups(b)}"
        time.sleep(0.5)


MEMBER = """
import sys, time
from confluent_kafka import Consumer
c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": sys.argv[2],
              "group.protocol": "consumer", "auto.offset.reset": "earliest"})
c.subscribe([sys.argv[3]])
while True:
    c.poll(0.2)
    if c.assignment():
        print("assigned", flush=True)
"""


def test_a_killed_member_is_fenced_after_its_session(quick_broker, unique_topic):
    """A member SIGKILLed (no leave) keeps its partitions until its session times out;
    then the survivor owns them all."""
    b, topic, group = quick_broker, unique_topic, f"{unique_topic}-g"
    create_topic(b.bootstrap, topic, 4)
    every = {(topic, p) for p in range(4)}
    victim = subprocess.Popen([sys.executable, "-c", MEMBER, b.bootstrap, group, topic],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert victim.stdout.readline().strip() == "assigned"
        survivor = consumer(b.bootstrap, group)
        survivor.subscribe([topic])
        deadline = time.monotonic() + 60
        while len(owned(survivor)) != 2:
            assert time.monotonic() < deadline, f"survivor owns {owned(survivor)}"
            survivor.poll(0.2)
    finally:
        victim.kill()
        victim.wait()
    killed = time.monotonic()
    deadline = killed + 30
    while owned(survivor) != every:
        assert time.monotonic() < deadline, f"after the kill the survivor owns {owned(survivor)}"
        survivor.poll(0.2)
    took = time.monotonic() - killed
    # Not before the session (4 s) has run out, and soon after it.
    assert took > 3.0, f"partitions moved {took:.1f} s after the kill, before the session ended"
    survivor.close()


def test_a_static_member_returns_to_its_assignment(quick_broker, unique_topic):
    """A static member (group.instance.id) that closes leaves for now (epoch -2): its
    partitions wait for it, and when it comes back within its session it gets the same
    ones while the other member's stay put."""
    b, topic, group = quick_broker, unique_topic, f"{unique_topic}-g"
    create_topic(b.bootstrap, topic, 4)
    one = consumer(b.bootstrap, group, **{"group.instance.id": "static-1"})
    two = consumer(b.bootstrap, group, **{"group.instance.id": "static-2"})
    one.subscribe([topic])
    two.subscribe([topic])
    deadline = time.monotonic() + 60
    while not (len(owned(one)) == 2 and len(owned(two)) == 2):
        assert time.monotonic() < deadline, f"no split: {owned(one)} / {owned(two)}"
        one.poll(0.1)
        two.poll(0.1)
    first, kept = owned(one), owned(two)
    one.close()
    back = consumer(b.bootstrap, group, **{"group.instance.id": "static-1"})
    back.subscribe([topic])
    deadline = time.monotonic() + 30
    while owned(back) != first:
        assert time.monotonic() < deadline, f"returned with {owned(back)}, had {first}"
        back.poll(0.1)
        two.poll(0.1)
        assert owned(two) == kept, f"the other member's partitions moved: {owned(two)}"
    back.close()
    two.close()


def test_the_range_assignor(broker, unique_topic):
    """`group.remote.assignor=range`: each member owns a contiguous range of the topic's
    partitions, and the group describes itself with that assignor."""
    topic, group = unique_topic, f"{unique_topic}-g"
    admin = create_topic(broker.bootstrap, topic, 6)
    members = [consumer(broker.bootstrap, group, **{"group.remote.assignor": "range"})
               for _ in range(2)]
    for m in members:
        m.subscribe([topic])
    deadline = time.monotonic() + 60
    while sorted(len(owned(m)) for m in members) != [3, 3]:
        assert time.monotonic() < deadline, [owned(m) for m in members]
        for m in members:
            m.poll(0.1)
    ranges = sorted(sorted(p for _, p in owned(m)) for m in members)
    assert ranges == [[0, 1, 2], [3, 4, 5]], ranges
    desc = admin.describe_consumer_groups([group], request_timeout=30)[group].result(timeout=60)
    assert desc.partition_assignor == "range", desc.partition_assignor
    for m in members:
        m.close()


def test_consume_transform_produce_under_the_consumer_protocol(broker, unique_topic):
    """A transactional processor whose consumer uses `group.protocol=consumer`: its
    offsets go with its output through send_offsets_to_transaction (TxnOffsetCommit with
    the member's epoch); the output holds every input once and the group's committed
    offsets are the input's ends."""
    src, dst, group = f"{unique_topic}-in", f"{unique_topic}-out", f"{unique_topic}-g"
    create_topic(broker.bootstrap, src, 2)
    create_topic(broker.bootstrap, dst, 1)
    produce(broker.bootstrap, src, 200, 2)
    c = consumer(broker.bootstrap, group, **{"isolation.level": "read_committed"})
    c.subscribe([src])
    p = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": f"{unique_topic}-tx"})
    p.init_transactions(30)
    done = 0
    deadline = time.monotonic() + 90
    while done < 200:
        assert time.monotonic() < deadline, f"processed {done} of 200"
        batch = [m for m in c.consume(50, 1.0) if m.error() is None]
        if not batch:
            continue
        p.begin_transaction()
        for m in batch:
            p.produce(dst, key=m.key(), value=b"out-" + m.value())
        p.send_offsets_to_transaction(c.position(c.assignment()), c.consumer_group_metadata(), 30)
        p.commit_transaction(30)
        done += len(batch)
    c.close()

    check = consumer(broker.bootstrap, f"{group}-check", **{"isolation.level": "read_committed"})
    check.subscribe([dst])
    out = []
    deadline = time.monotonic() + 60
    while len(out) < 200:
        assert time.monotonic() < deadline, f"read {len(out)} of 200"
        m = check.poll(0.5)
        if m is not None and m.error() is None:
            out.append(m.value().decode())
    check.close()
    assert sorted(out) == sorted(f"out-v-{i}" for i in range(200))
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    offsets = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(60)
    assert sorted((tp.partition, tp.offset) for tp in offsets.topic_partitions) == [(0, 100), (1, 100)]


# ------------------------------------------------------------ the coordinator's death

def find_coordinator(bootstrap, group):
    """The broker FindCoordinator (v0, raw) names for `group`."""
    r = kwire.Reader(kwire.roundtrip(bootstrap, 10, 0, kwire.kstring(group)))
    assert r.i16() == 0
    return r.i32()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("protocol", ["consumer", "classic"])
def test_the_group_goes_on_when_its_coordinator_is_killed(make_cluster, unique_topic, protocol, request):
    """Three brokers; two `group.protocol=consumer` members commit as they read. The
    broker coordinating the group is SIGKILLed: the members find the next coordinator,
    join it again (groups live in their coordinator's memory) and read on from their
    committed offsets: every record is read, none lost, and only records read after the
    last commit before the kill are read twice. With --measure, the same with the
    classic protocol (cooperative-sticky) for comparison."""
    if protocol == "classic" and not request.config.getoption("--measure"):
        pytest.skip("the classic side of the comparison runs with --measure")
    c = make_cluster(3)
    c.start_all()
    c.wait_live({1, 2, 3})
    topic = unique_topic
    create_topic(c.bootstrap(), topic, 4)
    produce(c.bootstrap(), topic, 800, 4)
    leader = c.wait_leader()
    # A group another broker than the Raft leader coordinates, so the quorum survives.
    via = c.node(leader).bootstrap
    group = next(g for g in (f"{topic}-g{i}" for i in range(200))
                 if find_coordinator(via, g) != leader)
    victim = find_coordinator(via, group)
    extra = {"max.partition.fetch.bytes": 512}
    if protocol == "classic":
        extra.update({"group.protocol": "classic",
                      "partition.assignment.strategy": "cooperative-sticky"})
    members = [consumer(c.bootstrap(), group, **extra) for _ in range(2)]
    for m in members:
        m.subscribe([topic])
    seen = []
    committed_at_kill = None
    killed_at = None
    first_after = None
    deadline = time.monotonic() + 200
    while len(set(seen)) < 800:
        assert time.monotonic() < deadline, f"read {len(set(seen))} of 800"
        for m in members:
            msg = m.poll(0.1)
            if msg is None or msg.error() is not None:
                continue
            seen.append(msg.value().decode())
            if killed_at is not None and first_after is None:
                first_after = time.monotonic() - killed_at
            try:
                m.commit(message=msg, asynchronous=False)
            except Exception:  # noqa: BLE001 - commits fail while the coordinator moves
                pass
        if killed_at is None and len(set(seen)) >= 200:
            committed_at_kill = len(seen)
            c.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
    recovered = time.monotonic() - killed_at
    for m in members:
        m.close()
    assert set(seen) == {f"v-{i}" for i in range(800)}
    twice = len(seen) - len(set(seen))
    print(f"{protocol}: coordinator {victim} killed after {committed_at_kill} reads; first read "
          f"{first_after:.1f} s later, all {recovered:.1f} s later; {twice} read twice")
    assert find_coordinator(via, group) != victim
    # Only what was read after a commit that failed can come again: at most the fetches
    # in flight when the coordinator died, per partition.
    assert twice <= 4 * 8, f"{twice} records read twice"


# ------------------------------------------------------------ a rolling rebalance (measured)

@pytest.mark.timeout(900)
@pytest.mark.parametrize("protocol", ["consumer", "classic"])
def test_rolling_rebalance(broker, unique_topic, protocol, request):
    """Issue 27's scenario, run with --measure (CI runs a short one of the consumer
    protocol, 2 members on 6 partitions): members are added one at a time up to `top` and
    removed one at a time,
    on 48 partitions under continuous produce; each member commits what it read before
    giving a partition up. Per step: the time until every member owns its share. Over
    the run: records delivered twice (0 expected), and the longest time a partition a
    member kept went without a delivery (no stop-the-world)."""
    measure = request.config.getoption("--measure")
    if protocol == "classic" and not measure:
        pytest.skip("the classic side of the comparison runs with --measure")
    top, partitions = (6, 48) if measure else (2, 6)
    topic, group = unique_topic, f"{unique_topic}-g"
    create_topic(broker.bootstrap, topic, partitions)
    stop = threading.Event()
    produced = [0]

    def produce_forever():
        p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
        i = 0
        while not stop.is_set():
            for _ in range(partitions):
                p.produce(topic, value=f"{i}", partition=i % partitions)
                i += 1
            p.poll(0)
            time.sleep(0.05)
        p.flush(30)
        produced[0] = i

    producer = threading.Thread(target=produce_forever, daemon=True)
    producer.start()
    delivered = {}  # value -> times
    last_seen = {}  # partition -> monotonic time of its last delivery
    kept_gap = [0.0]
    members = []

    def make():
        extra = {"enable.auto.commit": False}
        if protocol == "classic":
            extra.update({"group.protocol": "classic", "session.timeout.ms": 10000,
                          "partition.assignment.strategy": "cooperative-sticky"})
        c = consumer(broker.bootstrap, group, **extra)
        positions = {}

        def on_revoke(cons, parts):
            mine = [TopicPartition(topic, tp.partition, positions[tp.partition])
                    for tp in parts if tp.partition in positions]
            if mine:
                cons.commit(offsets=mine, asynchronous=False)
            for tp in parts:
                positions.pop(tp.partition, None)

        c.subscribe([topic], on_revoke=on_revoke)
        return c, positions

    def poll_all(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for c, positions in members:
                for msg in c.consume(100, 0.02):
                    if msg.error() is not None:
                        continue
                    now = time.monotonic()
                    part = msg.partition()
                    if part in last_seen and (part, id(c)) in owners_before:
                        kept_gap[0] = max(kept_gap[0], now - last_seen[part])
                    last_seen[part] = now
                    v = msg.value().decode()
                    delivered[v] = delivered.get(v, 0) + 1
                    positions[part] = msg.offset() + 1

    def balanced():
        counts = sorted(len(c.assignment()) for c, _ in members)
        share = partitions // len(members)
        return sum(counts) == partitions and counts[0] >= share and counts[-1] <= share + 1

    steps = []
    owners_before = set()
    plan = [+1] * top + [-1] * (top - 1)
    for step in plan:
        # Partitions each member owned before the step: a gap in those is a stall of a
        # kept partition (if the member keeps it).
        owners_before = {(tp.partition, id(c)) for c, _ in members for tp in c.assignment()}
        start = time.monotonic()
        if step > 0:
            members.append(make())
        else:
            c, positions = members.pop(0)
            c.close()
        while not balanced():
            assert time.monotonic() - start < 120, f"{len(members)} members not balanced in 120 s"
            poll_all(0.1)
        took = time.monotonic() - start
        steps.append((len(members), took))
        poll_all(1.0)
    stop.set()
    producer.join(60)
    poll_all(5.0)
    for c, _ in members:
        c.close()
    twice = sum(1 for n in delivered.values() if n > 1)
    print(f"{protocol}: members/seconds to balance {[(n, round(t, 1)) for n, t in steps]}; "
          f"{len(delivered)} records read, {twice} twice; longest stall of a kept partition "
          f"{kept_gap[0]:.1f} s")
    assert twice == 0, f"{twice} records delivered twice"
    assert len(delivered) >= produced[0] * 0.9


@pytest.mark.timeout(200)
def test_members_keep_their_epochs_when_the_coordinator_dies(make_cluster, unique_topic):
    """The group's state is in the metadata log: after its coordinator is SIGKILLed, the
    next coordinator knows the member at the epoch it had (heartbeats and commits at it
    succeed, an older epoch is still STALE_MEMBER_EPOCH), with no rejoin."""
    c = make_cluster(3)
    c.start_all()
    c.wait_live({1, 2, 3})
    topic = unique_topic
    create_topic(c.bootstrap(), topic, 2)
    leader = c.wait_leader()
    via = c.node(leader).bootstrap
    group = next(g for g in (f"{topic}-g{i}" for i in range(200)) if find_coordinator(via, g) != leader)
    victim = find_coordinator(via, group)
    error, member, epoch = heartbeat_v0(c.node(victim).bootstrap, group, "", 0, [topic])
    assert error == 0 and epoch >= 1, (error, epoch)
    assert commit(c.node(victim).bootstrap, group, member, epoch, topic) == 0
    c.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, "the group never moved off the dead broker"
        successor = find_coordinator(via, group)
        if successor != victim:
            nb = c.node(successor).bootstrap
            answer = heartbeat_v0(nb, group, member, epoch, None)
            if answer[0] not in (15, 16):  # the move still settling: ask again
                break
        time.sleep(0.5)
    assert answer == (0, member, epoch), f"on broker {successor}: {answer} (epoch was {epoch})"
    assert commit(nb, group, member, epoch, topic) == 0
    assert commit(nb, group, member, epoch - 1, topic) == 113  # STALE_MEMBER_EPOCH

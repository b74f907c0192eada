"""Requests pipelined on one connection take effect in request order (issue 14).

Kafka handles the requests of one connection one at a time. An async committer relies on
it: librdkafka sends every `commit(asynchronous=True)` at once on the coordinator
connection, and the last offset sent must be the one that stays committed.
"""

from __future__ import annotations

import struct
import time

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import kwire
from kwire import Reader, kbytes, kstring

API_OFFSET_COMMIT = 8
API_OFFSET_FETCH = 9
API_JOIN_GROUP = 11

COMMITS = 200
RUNS = 5


def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    fs = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    for f in fs.values():
        f.result(timeout=30)


def test_pipelined_async_commits_end_at_the_last_offset(broker, unique_topic):
    bootstrap = broker.bootstrap
    create_topic(bootstrap, unique_topic)
    for run in range(RUNS):
        group = f"{unique_topic}-g{run}"
        answered = []
        c = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "on_commit": lambda err, partitions: answered.append(err),
        })
        try:
            # Issued before the coordinator is known: librdkafka queues them and sends
            # them back to back once it is, all in one burst on one connection.
            for offset in range(1, COMMITS + 1):
                c.commit(offsets=[TopicPartition(unique_topic, 0, offset)], asynchronous=True)
            deadline = time.monotonic() + 60
            while len(answered) < COMMITS and time.monotonic() < deadline:
                c.poll(0.1)
            assert len(answered) == COMMITS, f"run {run}: {len(answered)} of {COMMITS} commits answered"
            assert all(err is None for err in answered), [e for e in answered if e is not None][:3]
            got = c.committed([TopicPartition(unique_topic, 0)], timeout=30)[0].offset
            assert got == COMMITS, f"run {run}: committed() is {got} after async commits 1..{COMMITS}"
        finally:
            c.close()


# ------------------------------------------------------------------ raw wire


def offset_commit_v2(group: str, topic: str, partition: int, offset: int) -> bytes:
    return (
        kstring(group)
        + struct.pack(">i", -1)  # generation: a simple (member-less) commit
        + kstring("")  # member id
        + struct.pack(">q", -1)  # retention: the broker's
        + struct.pack(">i", 1) + kstring(topic)
        + struct.pack(">i", 1) + struct.pack(">iq", partition, offset) + kstring("")
    )


def parse_offset_commit_v2(body: bytes) -> list[int]:
    r = Reader(body)
    errors = []
    for _ in range(r.i32()):
        r.string()
        for _ in range(r.i32()):
            r.i32()
            errors.append(r.i16())
    return errors


def offset_fetch_v1(group: str, topic: str, partition: int) -> bytes:
    return kstring(group) + struct.pack(">i", 1) + kstring(topic) + struct.pack(">ii", 1, partition)


def parse_offset_fetch_v1(body: bytes) -> tuple[int, int]:
    r = Reader(body)
    assert r.i32() == 1
    r.string()
    assert r.i32() == 1
    r.i32()
    offset = r.i64()
    r.string()
    return offset, r.i16()


def join_group_v1(group: str) -> bytes:
    return (
        kstring(group)
        + struct.pack(">ii", 10000, 10000)  # session, rebalance timeouts
        + kstring("")  # member id: new member
        + kstring("consumer")
        + struct.pack(">i", 1) + kstring("range") + kbytes(b"\x00\x00\x00\x00\x00\x00")
    )


def parse_join_group_v1(body: bytes) -> tuple[int, int, str]:
    r = Reader(body)
    error = r.i16()
    generation = r.i32()
    r.string()  # protocol
    r.string()  # leader
    return error, generation, r.string() or ""


def test_interleaved_requests_on_one_connection_answer_and_act_in_order(broker, unique_topic):
    bootstrap = broker.bootstrap
    create_topic(bootstrap, unique_topic)
    commits_group = f"{unique_topic}-commits"
    join_group = f"{unique_topic}-join"

    # (api, version, body, what to check) in the order sent. The JoinGroup waits out the
    # group's initial rebalance delay: everything behind it must wait for it too.
    requests = []
    last = None
    for i in range(1, 61):
        requests.append((API_OFFSET_COMMIT, 2, offset_commit_v2(commits_group, unique_topic, 0, i), ("commit",)))
        last = i
        if i % 5 == 0:
            requests.append((API_OFFSET_FETCH, 1, offset_fetch_v1(commits_group, unique_topic, 0), ("fetch", last)))
        if i == 20:
            requests.append((API_JOIN_GROUP, 1, join_group_v1(join_group), ("join",)))
        if i % 15 == 0:
            requests.append((kwire.API_METADATA, 1, kwire.metadata_v1_body([unique_topic]), ("metadata",)))
    # A lower offset sent later wins: effects follow request order, not values.
    requests.append((API_OFFSET_COMMIT, 2, offset_commit_v2(commits_group, unique_topic, 0, 7), ("commit",)))
    requests.append((API_OFFSET_FETCH, 1, offset_fetch_v1(commits_group, unique_topic, 0), ("fetch", 7)))

    with kwire.connect(bootstrap, timeout=30) as s:
        frames = b"".join(
            kwire.request(api, version, 1000 + n, body) for n, (api, version, body, _) in enumerate(requests)
        )
        s.sendall(frames)  # all at once, without waiting for any answer
        for n, (api, _, _, check) in enumerate(requests):
            cid, body = kwire.read_response(s)
            assert cid == 1000 + n, f"answer {n}: correlation id {cid}, expected {1000 + n}"
            if check[0] == "commit":
                assert parse_offset_commit_v2(body) == [0], f"answer {n}: commit errors {parse_offset_commit_v2(body)}"
            elif check[0] == "fetch":
                offset, error = parse_offset_fetch_v1(body)
                assert error == 0
                assert offset == check[1], f"answer {n}: OffsetFetch saw {offset}, the last commit before it was {check[1]}"
            elif check[0] == "join":
                error, generation, member = parse_join_group_v1(body)
                assert error == 0 and generation >= 1 and member, (error, generation, member)

    # And on a fresh connection, the last commit stands.
    body = kwire.roundtrip(bootstrap, API_OFFSET_FETCH, 1, offset_fetch_v1(commits_group, unique_topic, 0))
    assert parse_offset_fetch_v1(body) == (7, 0)

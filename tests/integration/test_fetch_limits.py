"""Fetch obeys fetch.max.bytes and max.partition.fetch.bytes as KIP-74 words it (issue 14).

A response's record bytes stay within the request's max_bytes, and a partition's within its
partition_max_bytes, except that the first partition to return anything may return one
batch larger than what is left (so a consumer never gets stuck behind a big batch). Any
later partition whose next batch does not fit returns no records.
"""

from __future__ import annotations

import os
import struct
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import kwire
from kwire import Reader, kstring

PARTITIONS = 3
PER_PARTITION = 4
RECORD = 900_000
FETCH_MAX = 1_000_000


def produce_big_records(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    fs = admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
    for f in fs.values():
        f.result(timeout=30)
    p = Producer({
        "bootstrap.servers": bootstrap,
        "message.max.bytes": 2_000_000,
        "linger.ms": 0,
        "acks": "all",
    })
    errors = []
    for i in range(PER_PARTITION):
        for part in range(PARTITIONS):
            p.produce(topic, value=os.urandom(RECORD), key=f"{part}-{i}".encode(), partition=part,
                      on_delivery=lambda err, msg: err and errors.append(err))
            p.poll(0)
    assert p.flush(60) == 0
    assert not errors, errors


def test_confluent_consumer_with_fetch_max_bytes_reads_everything(broker, unique_topic):
    bootstrap = broker.bootstrap
    produce_big_records(bootstrap, unique_topic)
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"{unique_topic}-g",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "fetch.max.bytes": FETCH_MAX,
        # The least librdkafka allows with this fetch.max.bytes: a response that
        # overshoots the limit by more than a header is refused ("Invalid response size").
        "receive.message.max.bytes": FETCH_MAX + 512,
    })
    got = {p: [] for p in range(PARTITIONS)}
    errors = []
    try:
        c.assign([TopicPartition(unique_topic, p, 0) for p in range(PARTITIONS)])
        deadline = time.monotonic() + 90
        while sum(len(v) for v in got.values()) < PARTITIONS * PER_PARTITION and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                errors.append(str(m.error()))
                continue
            assert len(m.value()) == RECORD
            got[m.partition()].append(m.offset())
    finally:
        c.close()
    assert {p: v for p, v in got.items()} == {p: list(range(PER_PARTITION)) for p in range(PARTITIONS)}, (got, errors)


# ------------------------------------------------------------------ raw wire


def fetch_v4(topic: str, offsets: dict[int, int], max_bytes: int, partition_max: int) -> bytes:
    body = struct.pack(">iiiib", -1, 100, 1, max_bytes, 0)  # replica, max wait, min bytes, max bytes, isolation
    body += struct.pack(">i", 1) + kstring(topic) + struct.pack(">i", len(offsets))
    for part, offset in offsets.items():
        body += struct.pack(">iqi", part, offset, partition_max)
    return body


def parse_fetch_v4(body: bytes) -> dict[int, tuple[int, list[int]]]:
    """partition -> (error code, the size of each whole batch in its records)."""
    r = Reader(body)
    r.i32()  # throttle
    out = {}
    for _ in range(r.i32()):
        r.string()
        for _ in range(r.i32()):
            part, error = r.i32(), r.i16()
            r.i64(), r.i64()  # high watermark, last stable offset
            aborted = r.i32()
            for _ in range(max(aborted, 0)):
                r.i64(), r.i64()
            size = r.i32()
            records = r.data[r.pos:r.pos + max(size, 0)]
            r.pos += max(size, 0)
            sizes = []
            pos = 0
            while pos + 12 <= len(records):
                (length,) = struct.unpack_from(">i", records, pos + 8)
                sizes.append(12 + length)
                pos += 12 + length
            assert pos == len(records), f"partition {part}: a partial batch in the response"
            out[part] = (error, sizes)
    return out


def check_kip74(resp: dict[int, tuple[int, list[int]]], order: list[int], max_bytes: int, partition_max: int) -> int:
    """Checks the KIP-74 rule on one response; returns the record bytes in it."""
    remaining = max_bytes
    first = True
    total = 0
    for part in order:
        error, sizes = resp[part]
        assert error == 0, f"partition {part}: error {error}"
        size = sum(sizes)
        if first and sizes:
            # The first non-empty partition: one batch may exceed what is left; any
            # further batches must fit in both limits.
            limit = min(partition_max, remaining)
            assert sizes[0] <= limit or len(sizes) == 1, f"partition {part}: {sizes} over {limit} with more than one batch"
            assert size <= max(limit, sizes[0]), f"partition {part}: {sizes} over {limit}"
            first = False
        else:
            assert size <= min(partition_max, remaining), (
                f"partition {part}: {size} bytes ({sizes}) with {remaining} left of {max_bytes}"
                f" and partition_max {partition_max}"
            )
        remaining = max(0, remaining - size)
        total += size
    return total


def test_raw_fetch_responses_stay_within_the_limits(broker, unique_topic):
    bootstrap = broker.bootstrap
    produce_big_records(bootstrap, unique_topic)
    order = list(range(PARTITIONS))
    cases = [
        (FETCH_MAX, 1_048_576),  # the consumer above: one batch per response
        (2_000_000, 1_048_576),  # room for a second partition's batch, not a third
        (FETCH_MAX, 100_000),  # partition limit below a batch: only the first gets one
        (10_000_000, 1_048_576),  # every partition, one batch each (two exceed 1 MiB)
    ]
    with kwire.connect(bootstrap, timeout=30) as s:
        cid = 0
        for max_bytes, partition_max in cases:
            offsets = {p: 0 for p in order}
            responses = 0
            while any(o < PER_PARTITION for o in offsets.values()):
                cid += 1
                s.sendall(kwire.request(kwire.API_FETCH, 4, cid, fetch_v4(unique_topic, offsets, max_bytes, partition_max)))
                got_cid, body = kwire.read_response(s)
                assert got_cid == cid
                resp = parse_fetch_v4(body)
                total = check_kip74(resp, order, max_bytes, partition_max)
                assert total > 0, f"no progress at {offsets} with max_bytes {max_bytes}"
                for part in order:
                    offsets[part] += len(resp[part][1])  # one record per batch
                responses += 1
                assert responses < 100
            # The exact shape of the first responses.
            if (max_bytes, partition_max) == (FETCH_MAX, 1_048_576):
                assert responses == PARTITIONS * PER_PARTITION
            if (max_bytes, partition_max) == (2_000_000, 1_048_576):
                # Partitions 0 and 1 together, then partition 2 alone.
                assert responses == 2 * PER_PARTITION
            if (max_bytes, partition_max) == (10_000_000, 1_048_576):
                assert responses == PER_PARTITION

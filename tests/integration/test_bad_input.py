"""Malformed and hostile input on raw sockets.

One broker for the whole module: 10 records are produced first with
confluent-kafka; every bad-input case then checks that the broker still serves
a new connection; the last test checks the 10 records are intact at their
offsets and nothing was appended by the rejected requests.
"""

import os
import socket
import struct
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import kwire
from conftest import Broker, check_health

KEEP = "keep-me"  # 1 partition, holds the 10 seed records
GOOD = "raw-good"  # target of hand-encoded valid produces


@pytest.fixture(scope="module")
def mbroker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("bad-input") / "strata")
    b.start()
    yield b
    problems = check_health(b)
    b.stop()
    if problems:
        print(f"\n--- strata log tail ({b.log_path}) ---\n{b.log_tail(150)}")
        pytest.fail("; ".join(problems))


@pytest.fixture(autouse=True)
def _log_on_failure(request, mbroker):
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(f"\n--- strata log tail ({mbroker.log_path}) ---\n{mbroker.log_tail(120)}")


@pytest.fixture(scope="module")
def seeded(mbroker):
    admin = AdminClient({"bootstrap.servers": mbroker.bootstrap})
    fs = admin.create_topics([NewTopic(KEEP, num_partitions=1, replication_factor=1),
                              NewTopic(GOOD, num_partitions=1, replication_factor=1)])
    for f in fs.values():
        f.result(timeout=60)
    p = Producer({"bootstrap.servers": mbroker.bootstrap, "acks": "all"})
    acked = {}

    def cb(err, msg):
        assert err is None, err
        acked[msg.offset()] = (msg.key(), msg.value())

    for i in range(10):
        p.produce(KEEP, key=f"seed-{i}".encode(), value=f"seed-value-{i}".encode() * 3, partition=0, on_delivery=cb)
    assert p.flush(30) == 0
    assert sorted(acked) == list(range(10)), acked
    return acked


def assert_api_versions_ok(bootstrap):
    """A fresh connection still gets a sane ApiVersions v0 answer."""
    body = kwire.roundtrip(bootstrap, kwire.API_API_VERSIONS, 0, b"", correlation_id=4242)
    resp = kwire.parse_api_versions_v0(body)
    assert resp["error_code"] == 0, resp
    for key in (0, 1, 3, 18):  # Produce, Fetch, Metadata, ApiVersions
        assert key in resp["api_keys"], f"api key {key} missing from {resp['api_keys']}"
    lo, hi = resp["api_keys"][18]
    assert lo == 0 and hi >= 0


def send_and_expect_close(bootstrap, data, what):
    s = kwire.connect(bootstrap)
    try:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return  # closed while we were still writing: that's a close
        try:
            kwire.wait_closed(s, timeout=10)
        except AssertionError as e:
            pytest.fail(f"{what}: {e}")
    finally:
        s.close()


# ---------------------------------------------------------------- cases


def test_api_versions_baseline(mbroker, seeded):
    assert_api_versions_ok(mbroker.bootstrap)


def test_truncated_frame_then_close(mbroker, seeded):
    frame = kwire.request(kwire.API_METADATA, 1, 1, kwire.metadata_v1_body(None))
    for cut in (2, 4, 7, len(frame) - 1):
        s = kwire.connect(mbroker.bootstrap)
        s.sendall(frame[:cut])
        s.close()
    # half-closed: truncated body then shutdown(WR); broker must not hang the socket forever
    s = kwire.connect(mbroker.bootstrap)
    s.sendall(struct.pack(">i", 100) + b"\x00\x03\x00\x01")
    s.shutdown(socket.SHUT_WR)
    kwire.wait_closed(s, timeout=10)
    s.close()
    assert_api_versions_ok(mbroker.bootstrap)


def test_huge_size_field_closes(mbroker, seeded):
    # ~2 GB (0x7ffffff0) declared size, far above the 100 MiB limit: no 2 GB allocation, just a close
    send_and_expect_close(mbroker.bootstrap, struct.pack(">i", 0x7FFFFFF0) + b"\x00\x12\x00\x00\x00\x00\x00\x01",
                          "2 GB frame size")
    # just over the limit
    send_and_expect_close(mbroker.bootstrap, struct.pack(">i", 100 * 1024 * 1024 + 1) + b"\x00" * 16,
                          "100 MiB + 1 frame size")
    assert_api_versions_ok(mbroker.bootstrap)


def test_negative_size_closes(mbroker, seeded):
    send_and_expect_close(mbroker.bootstrap, struct.pack(">i", -1) + b"\x00" * 16, "size -1")
    send_and_expect_close(mbroker.bootstrap, struct.pack(">i", -(2 ** 31)) + b"\x00" * 16, "size -2^31")
    assert_api_versions_ok(mbroker.bootstrap)


def test_unknown_api_key_closes(mbroker, seeded):
    send_and_expect_close(mbroker.bootstrap, kwire.request(999, 0, 5, b""), "api key 999")
    assert_api_versions_ok(mbroker.bootstrap)


def test_api_versions_unsupported_version_gets_error_35(mbroker, seeded):
    with kwire.connect(mbroker.bootstrap) as s:
        s.sendall(kwire.request(kwire.API_API_VERSIONS, 99, 31337, b""))
        cid, body = kwire.read_response(s)
        assert cid == 31337
        resp = kwire.parse_api_versions_v0(body)
        assert resp["error_code"] == 35, resp
        # the connection stays usable: a supported ApiVersions on the same socket works
        s.sendall(kwire.request(kwire.API_API_VERSIONS, 0, 31338, b""))
        cid, body = kwire.read_response(s)
        assert cid == 31338
        assert kwire.parse_api_versions_v0(body)["error_code"] == 0
    assert_api_versions_ok(mbroker.bootstrap)


def test_metadata_unsupported_version_closes(mbroker, seeded):
    send_and_expect_close(mbroker.bootstrap, kwire.request(kwire.API_METADATA, 99, 6, kwire.metadata_v1_body(None)),
                          "Metadata v99")
    assert_api_versions_ok(mbroker.bootstrap)


def test_garbage_closes(mbroker, seeded):
    # HTTP request: 'GET ' as a size is ~1.1 GB
    send_and_expect_close(mbroker.bootstrap, b"GET / HTTP/1.1\r\nHost: strata\r\n\r\n", "HTTP garbage")
    # plausible size, nonsense header (api key -1)
    send_and_expect_close(mbroker.bootstrap, struct.pack(">i", 32) + b"\xff" * 32, "0xff garbage")
    # random bytes with a small valid size: unknown key / bad string lengths
    rnd = os.urandom(60)
    send_and_expect_close(mbroker.bootstrap, struct.pack(">i", 64) + struct.pack(">h", 555) + b"\x00\x00" + rnd,
                          "random body")
    assert_api_versions_ok(mbroker.bootstrap)


def produce_v3(bootstrap, topic, partition, batch, cid=77):
    body = kwire.roundtrip(bootstrap, kwire.API_PRODUCE, 3, kwire.produce_v3_body(topic, partition, batch),
                           correlation_id=cid)
    parts = kwire.parse_produce_v3(body)
    assert len(parts) == 1, parts
    assert parts[0]["topic"] == topic and parts[0]["partition"] == partition, parts
    return parts[0]


def test_produce_bad_crc_is_corrupt_message(mbroker, seeded):
    batch = kwire.encode_batch([(b"evil", b"must-not-be-stored")], corrupt_crc=True)
    res = produce_v3(mbroker.bootstrap, KEEP, 0, batch)
    assert res["error_code"] == 2, res  # CORRUPT_MESSAGE
    assert_api_versions_ok(mbroker.bootstrap)


def test_produce_unknown_partition(mbroker, seeded):
    batch = kwire.encode_batch([(b"k", b"nowhere")])
    res = produce_v3(mbroker.bootstrap, KEEP, 99, batch)
    assert res["error_code"] == 3, res  # UNKNOWN_TOPIC_OR_PARTITION
    assert_api_versions_ok(mbroker.bootstrap)


def test_produce_valid_hand_encoded(mbroker, seeded):
    recs1 = [(b"raw-k0", b"raw-v0")]
    recs2 = [(b"raw-k1", b"raw-v1"), (None, b"raw-v2-null-key"), (b"raw-k3", b"")]
    r1 = produce_v3(mbroker.bootstrap, GOOD, 0, kwire.encode_batch(recs1))
    assert r1["error_code"] == 0 and r1["base_offset"] == 0, r1
    r2 = produce_v3(mbroker.bootstrap, GOOD, 0, kwire.encode_batch(recs2))
    assert r2["error_code"] == 0 and r2["base_offset"] == 1, r2
    got = read_partition(mbroker.bootstrap, GOOD, 4)
    assert got == {i: (k, v) for i, (k, v) in enumerate(recs1 + recs2)}


def read_partition(bootstrap, topic, expect):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"verify-{topic}-{time.time()}",
                  "enable.auto.commit": False})
    try:
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)
        assert (lo, hi) == (0, expect), f"{topic} watermarks {(lo, hi)}, expected (0, {expect})"
        c.assign([TopicPartition(topic, 0, 0)])
        out = {}
        deadline = time.monotonic() + 30
        while len(out) < expect:
            assert time.monotonic() < deadline, f"read {len(out)}/{expect} of {topic}"
            m = c.poll(1.0)
            if m is None:
                continue
            assert not m.error(), m.error()
            out[m.offset()] = (m.key(), m.value())
        return out
    finally:
        c.close()


def test_zz_seed_records_intact(mbroker, seeded):
    """Runs last: the 10 seed records are exactly where they were, nothing was appended."""
    assert mbroker.running, "broker process died during the bad-input tests"
    got = read_partition(mbroker.bootstrap, KEEP, 10)
    assert got == seeded
    assert_api_versions_ok(mbroker.bootstrap)

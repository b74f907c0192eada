"""Issue 26, KIP-467: a batch refused for some of its records names them.

The first test holds librdkafka's own assertions from `0011_produce_batch`
(`test_message_single_partition_record_fail`), reproduced with confluent-kafka: 100
records in one batch to a compacted topic, every tenth without a key. The keyless ten fail
with INVALID_RECORD and Kafka's per-record message; the other ninety fail too (a batch is
written whole or not at all) with librdkafka's _INVALID_DIFFERENT_RECORD, which it can
tell only from the response's `record_errors`. confluent-kafka hands a producer's delivery reports
only the error code (its Message_new0 keeps librdkafka's per-message string for
consumers), so the names are read from the Produce v8 response itself.
"""

from __future__ import annotations

import time

from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic

import kwire
from conftest import Broker

KEYLESS = "Compacted topic cannot accept message without key"


def _create(bootstrap: str, topic: str, config: dict[str, str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, 1, 1, config=config)]).values():
        f.result(30)


def _produce_one_batch(bootstrap: str, topic: str, records: list[dict]) -> list[tuple[int, KafkaError | None]]:
    """Sends `records` to partition 0 in one batch; each record's (index, error)."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2000, "batch.num.messages": 10_000,
                  "enable.idempotence": False, "retries": 0, "acks": "all"})
    results: list[tuple[int, KafkaError | None]] = []
    for i, r in enumerate(records):
        p.produce(topic, partition=0, on_delivery=lambda err, _m, i=i: results.append((i, err)), **r)
    assert p.flush(60) == 0
    return sorted(results, key=lambda x: x[0])


def _produce_v8(bootstrap: str, topic: str, batch: bytes) -> dict:
    body = kwire.roundtrip(bootstrap, kwire.API_PRODUCE, 8, kwire.produce_v3_body(topic, 0, batch))
    [partition] = kwire.parse_produce_v8(body)
    return partition


def test_keyless_records_on_a_compacted_topic_are_named(broker: Broker, unique_topic: str) -> None:
    _create(broker.bootstrap, unique_topic, {"cleanup.policy": "compact"})
    records = [{"value": f"v{i}"} if i % 10 == 0 else {"key": f"k{i}", "value": f"v{i}"} for i in range(100)]
    results = _produce_one_batch(broker.bootstrap, unique_topic, records)
    assert len(results) == 100
    keyless = [(i, e) for i, e in results if i % 10 == 0]
    others = [(i, e) for i, e in results if i % 10 != 0]
    # librdkafka reads record_errors: the named records failed, the others failed with them.
    for i, err in keyless:
        assert err is not None and err.code() == KafkaError.INVALID_RECORD, (i, err)
    for i, err in others:
        assert err is not None and err.code() == KafkaError._INVALID_DIFFERENT_RECORD, (i, err)
    # On the wire: the ten keyless records are named, with Kafka's message, by their index.
    batch = kwire.encode_batch([(None if i % 10 == 0 else f"k{i}".encode(), f"v{i}".encode())
                                for i in range(100)])
    p = _produce_v8(broker.bootstrap, unique_topic, batch)
    assert p["error_code"] == KafkaError.INVALID_RECORD, p
    assert [i for i, _ in p["record_errors"]] == list(range(0, 100, 10)), p
    assert all(KEYLESS in m for _, m in p["record_errors"]), p
    assert p["error_message"].startswith("One or more records have been rejected due to 10 record errors"), p
    # Nothing of the refused batches was written, and the topic still takes keyed records.
    ok = _produce_one_batch(broker.bootstrap, unique_topic, [{"key": "k", "value": "after"}])
    assert ok == [(0, None)], ok


def test_timestamps_out_of_range_are_named(broker: Broker, unique_topic: str) -> None:
    """`message.timestamp.before.max.ms`: a CreateTime two days old is INVALID_TIMESTAMP,
    named among its batch; the same batch within range is written."""
    _create(broker.bootstrap, unique_topic, {"message.timestamp.before.max.ms": "3600000"})
    now = int(time.time() * 1000)
    old = now - 2 * 86_400_000
    records = [{"value": f"v{i}", "timestamp": old if i == 3 else now} for i in range(5)]
    results = _produce_one_batch(broker.bootstrap, unique_topic, records)
    assert [e.code() if e else None for _, e in results] == [KafkaError.INVALID_TIMESTAMP] * 5, results
    batch = kwire.encode_batch([(None, b"a"), (None, b"b"), (None, b"c")], base_timestamp=now,
                               ts_deltas=[0, -2 * 86_400_000, 0])
    p = _produce_v8(broker.bootstrap, unique_topic, batch)
    assert p["error_code"] == KafkaError.INVALID_TIMESTAMP, p
    assert [i for i, _ in p["record_errors"]] == [1], p
    assert p["record_errors"][0][1].startswith(f"Timestamp {old}"), p
    ok = _produce_one_batch(broker.bootstrap, unique_topic, [{"value": "now", "timestamp": now}])
    assert ok == [(0, None)], ok
